//! Users and their rules, in Redis's ACL language (`acl.c`), without I/O.
//!
//! A user is built by applying its rules in order, exactly as `ACL SETUSER` does, starting from
//! a fresh user (`off`, no passwords, no permissions). Only SHA-256 hashes of passwords are
//! kept; `>password` is hashed while the rules are applied and the clear text is dropped.
//!
//! The point is to refuse a request *before* it reaches Redis with exactly the verdict and
//! error text redis-server 7.0 would give:
//!
//! * [`rules`]: the rule language (`ACLSetUser`, `ACLSetSelector`), commands tracked as a
//!   bitmap over the command table like Redis, selectors, Redis's error texts;
//! * [`glob`]: `stringmatchlen`, the glob used for key and channel patterns;
//! * `keys`: which arguments are keys (`getKeysFromCommandWithSpecs` and the getkeys procs);
//! * `check`: [`check`] (`ACLCheckAllUserCommandPerm`), the `-NOPERM` replies and
//!   `ACL DRYRUN`'s replies ([`dryrun`]);
//! * `describe`: [`describe`], the `ACL LIST` line (`ACLDescribeUser`).
//!
//! Redis 7.0.15 is the reference, as shipped by Debian (which carries the CVE-2024-31227
//! `%~` fix and the CVE-2024-31228 glob nesting limit); `tests/acl_dryrun.rs` compares this
//! module with a live redis-server.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod check;
mod describe;
pub mod glob;
mod keys;
pub mod rules;
mod sort;
#[cfg(test)]
mod tests;

pub(crate) use check::selector_allows;
pub use check::{check, dryrun, Denied};
pub use describe::{describe, describe_selector_commands, permission_rules, selector_rules};
pub use glob::stringmatch;
pub use keys::{command_keys, KeyRef};
pub use rules::{
    command_id, parse_user, parse_user_args, setuser, KeyPattern, RuleError, Selector,
    UNKNOWN_COMMAND_IN_ACL,
};
pub use sort::sort_refusal;

/// Whether a user name has a space or NUL byte (`ACLStringHasSpaces`): refused.
pub fn rules_has_spaces(name: &[u8]) -> bool {
    rules::has_spaces(name)
}

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A redward user, as Redis's `user` struct keeps it (`acl.c`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// `on` / `off`: a disabled user cannot authenticate (`USER_FLAG_DISABLED`).
    pub enabled: bool,
    /// `nopass`: any password is accepted (`USER_FLAG_NOPASS`).
    pub nopass: bool,
    /// SHA-256 of each accepted password, in the order they were added.
    pub passwords: Vec<[u8; 32]>,
    /// Fast path: the root selector allows every command (`+@all`, or every bit set), all
    /// keys (`allkeys`) and all channels (`allchannels`), and there are no other selectors.
    pub unrestricted: bool,
    /// `skip-sanitize-payload` (`Some(false)`) / `sanitize-payload` (`Some(true)`); `None`
    /// until either is given. Only shown by [`describe`]; redward does not act on it.
    pub sanitize_payload: Option<bool>,
    /// The root selector: the permissions given outside parentheses.
    pub root: Selector,
    /// The `(...)` selectors, in the order they were added.
    pub selectors: Vec<Selector>,
}

impl User {
    /// A fresh user as `ACL SETUSER name` creates it (`ACLCreateUser`): `off`, no passwords,
    /// no commands, no keys, no channels (`acl-pubsub-default` is `resetchannels` in 7.0).
    pub fn new(name: &str) -> User {
        User {
            name: name.to_owned(),
            enabled: false,
            nopass: false,
            passwords: Vec::new(),
            unrestricted: false,
            sanitize_payload: None,
            root: Selector::new(),
            selectors: Vec::new(),
        }
    }

    /// Redis's `ACLCheckUserCredentials`: disabled users never pass; `nopass` users always do;
    /// otherwise the password's SHA-256 must equal a stored hash. Every stored hash is compared
    /// in constant time, and all of them are compared, so timing does not tell which matched.
    pub fn check_password(&self, password: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        if self.nopass {
            return true;
        }
        let digest: [u8; 32] = Sha256::digest(password).into();
        let mut found = subtle::Choice::from(0);
        for stored in &self.passwords {
            found |= stored.ct_eq(&digest);
        }
        found.into()
    }
}

/// SHA-256 of a password, as `#<hex>` rules and Redis's `ACLHashPassword` spell it.
pub fn hash_password(password: &[u8]) -> String {
    hex::encode(Sha256::digest(password))
}
