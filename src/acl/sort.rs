//! SORT's own ACL rule (`sortCommandGeneric` in Redis 7.0's `sort.c`): a `BY` pattern with `*`
//! and any `GET` read keys that no key spec names, so Redis allows them only to a user with
//! unrestricted read access to keys for the command. Redis refuses them while parsing options,
//! left to right; redward walks the options the same way so the same request gets the same
//! refusal (and an earlier syntax error is left to Redis, which reports it itself).

use super::check::selector_allows;
use super::rules::{Selector, KEY_READ};
use super::User;
use crate::commands::{Argv, CommandSpec};
use crate::resp::request::string2ll;

pub const SORT_BY_DENIED: &[u8] =
    b"-ERR BY option of SORT denied due to insufficient ACL permissions.\r\n";
pub const SORT_GET_DENIED: &[u8] =
    b"-ERR GET option of SORT denied due to insufficient ACL permissions.\r\n";

/// The refusal Redis would write for this SORT / SORT_RO, if any.
pub fn sort_refusal<A: Argv + ?Sized>(
    user: &User,
    cmd: &'static CommandSpec,
    argv: &A,
) -> Option<&'static [u8]> {
    let readonly = match cmd.name {
        "sort" => false,
        "sort_ro" => true,
        _ => return None,
    };
    if user.unrestricted {
        return None;
    }
    let mut full_access: Option<bool> = None;
    let mut full = || *full_access.get_or_insert_with(|| full_key_access(user, cmd, argv));
    let argc = argv.argc();
    let mut j = 2;
    while j < argc {
        let left = argc - j - 1;
        let opt = argv.arg(j);
        let is = |name: &[u8]| c_eq(opt, name);
        if is(b"asc") || is(b"desc") || is(b"alpha") {
        } else if is(b"limit") && left >= 2 {
            if string2ll(argv.arg(j + 1)).is_none() || string2ll(argv.arg(j + 2)).is_none() {
                return None; // Redis reports the bad number itself.
            }
            j += 2;
        } else if !readonly && is(b"store") && left >= 1 {
            j += 1;
        } else if is(b"by") && left >= 1 {
            let pattern = argv.arg(j + 1);
            let pattern = pattern.split(|&b| b == 0).next().unwrap_or(&[]);
            if pattern.contains(&b'*') && !full() {
                return Some(SORT_BY_DENIED);
            }
            j += 1;
        } else if is(b"get") && left >= 1 {
            if !full() {
                return Some(SORT_GET_DENIED);
            }
            j += 1;
        } else {
            return None; // syntax error: Redis answers it
        }
        j += 1;
    }
    None
}

/// `ACLUserCheckCmdWithUnrestrictedKeyAccess(..., CMD_KEY_ACCESS)`: some selector allows the
/// command and can read every key (`allkeys`, or a read pattern that is exactly `*`).
fn full_key_access<A: Argv + ?Sized>(user: &User, cmd: &'static CommandSpec, argv: &A) -> bool {
    std::iter::once(&user.root)
        .chain(user.selectors.iter())
        .any(|s: &Selector| {
            selector_allows(s, cmd, argv)
                && (s.all_keys
                    || s.patterns
                        .iter()
                        .any(|p| p.flags & KEY_READ == KEY_READ && p.pattern == b"*"))
        })
}

/// `strcasecmp` on a C string: the argument ends at its first NUL.
fn c_eq(arg: &[u8], name: &[u8]) -> bool {
    arg.split(|&b| b == 0)
        .next()
        .unwrap_or(&[])
        .eq_ignore_ascii_case(name)
}
