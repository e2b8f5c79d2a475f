//! `upstream.identity: per_user`: each redward user has a Redis user of its own on every
//! server behind, with the same command, key and channel rules, and that user's traffic rides
//! connections logged in as it. Redis then checks what a script or function runs
//! (`redis.call`) against the client's own rules, as it would for that user directly.
//!
//! * **Names.** `redward:<name>`: a name space of redward's own, never `default`.
//! * **Secrets.** HMAC-SHA-256 of the name, keyed by a digest of redward's own upstream
//!   credential, so every instance with that credential derives the same secret without
//!   talking to the others, and one instance's start or reload never breaks another's
//!   logins. Redis is sent only the SHA-256 (`#<hash>`), and a password is only added
//!   (no `resetpass`), so instances with different credentials coexist. Without an upstream
//!   password the key is random per process. No secret is ever logged or a client's.
//! * **Where.** Every new connection for a user is set up as redward's own user first (ROLE,
//!   CLUSTER MYID, HELLO, SELECT), then `ACL SETUSER` and `AUTH` as the user, in one write:
//!   a promoted replica, a cluster node that joined, or a restarted Redis gets the user
//!   before it carries a command for it. On reload, changed users are set again and removed
//!   ones deleted (`ACL DELUSER`, which closes their connections) on every server seen.
//!
//! The upstream user also gets `+client|id` and `+discard`: redward's own bookkeeping on a
//! client's connection (neither can run from a script, and redward answers `CLIENT ID`
//! itself, so no client reaches more through them).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::acl::User;
use crate::resp::encode_command;

use super::confine::{confined_rules, Confine, Confined};
use super::Target;

/// The prefix of every upstream user redward manages.
pub const PREFIX: &str = "redward:";

/// The rules redward's own bookkeeping needs on a client's connection.
const BOOKKEEPING: [&str; 2] = ["+client|id", "+discard"];

/// A small handle for one redward user's upstream identity, kept in [`super::Setup`]: the
/// same name keeps the same tag across reloads, so pools stay put when only rules change.
pub type Tag = u32;

/// One redward user's upstream user: its name and the requests that create and log in as it.
pub struct Identity {
    pub tag: Tag,
    /// The redward user's own name.
    pub user: String,
    /// `redward:<name>`.
    pub upstream: String,
    /// `ACL SETUSER redward:<name> on #<hash> clearselectors resetkeys resetchannels -@all
    /// <rules...> +client|id +discard`.
    setuser: Vec<u8>,
    /// A digest of `setuser`: which version of the rules a server was given.
    version: [u8; 32],
    /// `AUTH redward:<name> <secret>`.
    auth: Vec<u8>,
    /// Whether the rules keep this user's scripts and functions away from the shared state
    /// (`confine.rs`): always, without `limits.shared_state: upstream`.
    pub scripts_confined: bool,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// `ACL SETUSER`: makes this user exist with its current rules.
    pub fn setuser_request(&self) -> &[u8] {
        &self.setuser
    }

    /// `AUTH` as this user.
    pub fn auth_request(&self) -> &[u8] {
        &self.auth
    }
}

/// Every redward user's upstream identity, and the servers they were made on.
pub struct Identities {
    key: [u8; 32],
    /// Grows only: a name keeps its tag for the process's life.
    tags: Mutex<HashMap<String, Tag>>,
    by_name: ArcSwap<HashMap<String, Arc<Identity>>>,
    by_tag: ArcSwap<HashMap<Tag, Arc<Identity>>>,
    /// Targets identity connections were opened to: where a reload's changes go.
    seen: Mutex<HashSet<Target>>,
    /// (server address, user) -> the rules version this process set there: a connection
    /// to a server that has the user's current rules logs in with `AUTH` alone (which Redis
    /// answers even while a script is busy; `ACL SETUSER` it does not).
    given: Mutex<HashMap<(String, Tag), [u8; 32]>>,
    /// `limits.shared_state: upstream`: where the state is, to keep the users from it.
    confine: Mutex<Option<Confine>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("users", &self.by_name.load().len())
            .finish_non_exhaustive()
    }
}

/// What a reload changed: the upstream users to set again, and those to delete.
#[derive(Debug, Default)]
pub struct Changes {
    pub set: Vec<Arc<Identity>>,
    pub removed: Vec<(Tag, String)>,
}

impl Identities {
    /// Identities for `users`, their secrets keyed by redward's own upstream credential
    /// (`username`, `password`); a random key when there is no password.
    pub fn new<'a>(
        username: Option<&str>,
        password: Option<&str>,
        users: impl IntoIterator<Item = &'a User>,
    ) -> Identities {
        let key: [u8; 32] = match password {
            Some(p) => {
                let mut h = Sha256::new();
                h.update(b"redward upstream identity v1\0");
                h.update(username.unwrap_or("default").as_bytes());
                h.update(b"\0");
                h.update(p.as_bytes());
                h.finalize().into()
            }
            None => random_key(),
        };
        let ids = Identities {
            key,
            tags: Mutex::new(HashMap::new()),
            by_name: ArcSwap::from_pointee(HashMap::new()),
            by_tag: ArcSwap::from_pointee(HashMap::new()),
            seen: Mutex::new(HashSet::new()),
            given: Mutex::new(HashMap::new()),
            confine: Mutex::new(None),
        };
        ids.update(users);
        ids
    }

    /// Keeps every upstream user from the shared state from the next [`Identities::update`].
    pub fn confine(&self, c: Confine) {
        *lock(&self.confine) = Some(c);
    }

    /// The identity of the redward user `name`, if it has one.
    pub fn of(&self, name: &str) -> Option<Arc<Identity>> {
        self.by_name.load().get(name).cloned()
    }

    /// The identity a connection set up for `tag` logs in as; `None` once that user is gone.
    pub fn by_tag(&self, tag: Tag) -> Option<Arc<Identity>> {
        self.by_tag.load().get(&tag).cloned()
    }

    /// How many upstream users redward keeps.
    pub fn len(&self) -> usize {
        self.by_name.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every identity now in force.
    pub fn all(&self) -> Vec<Arc<Identity>> {
        self.by_name.load().values().cloned().collect()
    }

    /// Installs the identities for a new set of users and says what changed.
    pub fn update<'a>(&self, users: impl IntoIterator<Item = &'a User>) -> Changes {
        let old = self.by_name.load_full();
        let mut by_name = HashMap::new();
        let mut changes = Changes::default();
        {
            let mut tags = lock(&self.tags);
            for user in users {
                let next = Tag::try_from(tags.len()).unwrap_or(Tag::MAX);
                let tag = *tags.entry(user.name.clone()).or_insert(next);
                let id = Arc::new(self.identity(tag, user));
                if old.get(&user.name).is_none_or(|o| o.setuser != id.setuser) {
                    changes.set.push(Arc::clone(&id));
                }
                by_name.insert(user.name.clone(), id);
            }
        }
        for (name, id) in old.iter() {
            if !by_name.contains_key(name) {
                changes.removed.push((id.tag, id.upstream.clone()));
            }
        }
        let by_tag = by_name.values().map(|i| (i.tag, Arc::clone(i))).collect();
        self.by_name.store(Arc::new(by_name));
        self.by_tag.store(Arc::new(by_tag));
        changes
    }

    /// Sets the identities of `set` (created or changed users) and removes those of
    /// `removed`, the others untouched: one user's change costs one description, however
    /// many users there are.
    pub fn update_some(&self, set: &[Arc<User>], removed: &[String]) -> Changes {
        let mut by_name = (*self.by_name.load_full()).clone();
        let mut changes = Changes::default();
        {
            let mut tags = lock(&self.tags);
            for user in set {
                let next = Tag::try_from(tags.len()).unwrap_or(Tag::MAX);
                let tag = *tags.entry(user.name.clone()).or_insert(next);
                let id = Arc::new(self.identity(tag, user));
                // A new user is made on each server by its first connection there; only a
                // changed one must be pushed to the servers that have it.
                if by_name.insert(user.name.clone(), Arc::clone(&id)).is_some() {
                    changes.set.push(id);
                }
            }
        }
        for name in removed {
            if let Some(id) = by_name.remove(name) {
                changes.removed.push((id.tag, id.upstream.clone()));
            }
        }
        let by_tag = by_name.values().map(|i| (i.tag, Arc::clone(i))).collect();
        self.by_name.store(Arc::new(by_name));
        self.by_tag.store(Arc::new(by_tag));
        changes
    }

    /// Notes that identity connections go to `target` (at most 4,096 kept: a cluster's
    /// nodes and a Sentinel master's successors).
    pub fn saw(&self, target: &Target) {
        let mut seen = lock(&self.seen);
        if seen.len() < 4096 && !seen.contains(target) {
            seen.insert(target.clone());
        }
    }

    /// Whether the server at `addr` was given `id`'s current rules by this process.
    pub fn has_current(&self, addr: &str, id: &Identity) -> bool {
        lock(&self.given).get(&(addr.to_owned(), id.tag)) == Some(&id.version)
    }

    /// Records (`true`) or forgets that the server at `addr` has `id`'s current rules (at
    /// most 65,536 pairs remembered: past that, each server is given them again once).
    pub fn set_current(&self, addr: &str, id: &Identity, current: bool) {
        let mut given = lock(&self.given);
        let key = (addr.to_owned(), id.tag);
        if !current {
            given.remove(&key);
            return;
        }
        if given.len() >= 65_536 {
            given.clear();
        }
        given.insert(key, id.version);
    }

    /// The targets identities were made on.
    pub fn seen(&self) -> Vec<Target> {
        lock(&self.seen).iter().cloned().collect()
    }

    fn identity(&self, tag: Tag, user: &User) -> Identity {
        let upstream = format!("{PREFIX}{}", user.name);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(upstream.as_bytes());
        let secret = hex::encode(mac.finalize().into_bytes());
        let hash = format!("#{}", crate::acl::hash_password(secret.as_bytes()));
        let mut args: Vec<String> = [
            "ACL",
            "SETUSER",
            upstream.as_str(),
            "on",
            hash.as_str(),
            "clearselectors",
            "resetkeys",
            "resetchannels",
            "-@all",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let confine = *lock(&self.confine);
        let (rules, scripts_confined) = match confine.map(|c| confined_rules(user, &c)) {
            None => (crate::acl::permission_rules(user), true),
            Some(Confined::Rules(rules)) => (rules, true),
            Some(Confined::Not { pattern }) => {
                tracing::warn!(
                    user = %user.name,
                    pattern,
                    "this key pattern may match redward's reserved keys and cannot be narrowed \
                     for Redis: the user's scripts and functions stay refused while \
                     limits.shared_state is upstream"
                );
                (crate::acl::permission_rules(user), false)
            }
        };
        args.extend(rules);
        args.extend(BOOKKEEPING.iter().map(|s| (*s).to_owned()));
        let mut setuser = Vec::new();
        encode_command(&mut setuser, args.iter().map(String::as_bytes));
        let version: [u8; 32] = Sha256::digest(&setuser).into();
        let mut auth = Vec::new();
        encode_command(
            &mut auth,
            [&b"AUTH"[..], upstream.as_bytes(), secret.as_bytes()].into_iter(),
        );
        Identity {
            tag,
            user: user.name.clone(),
            upstream,
            setuser,
            version,
            auth,
            scripts_confined,
        }
    }
}

/// An error reply with the client's own user name where Redis 7.2+ and Valkey name the
/// upstream user (`User redward:app has no permissions ...`, also inside a script's error):
/// `None` when the reply does not name it.
pub fn own_name_in_error(reply: &[u8], user: &str) -> Option<Vec<u8>> {
    let needle = format!("User {PREFIX}{user} ");
    let finder = memchr::memmem::Finder::new(needle.as_bytes());
    finder.find(reply)?;
    let with = format!("User {user} ");
    let mut out = Vec::with_capacity(reply.len());
    let mut rest = reply;
    while let Some(i) = finder.find(rest) {
        out.extend_from_slice(rest.get(..i).unwrap_or(&[]));
        out.extend_from_slice(with.as_bytes());
        rest = rest.get(i + needle.len()..).unwrap_or(&[]);
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// 32 bytes from the operating system's generator (through rustls's crypto provider).
fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    if provider.secure_random.fill(&mut key).is_err() {
        // No randomness at all: a per-process key from the clock and the process id still
        // differs between instances; the secret is never a client's password either way.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        key = Sha256::digest(seed.as_bytes()).into();
    }
    key
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, rules: &str) -> User {
        crate::acl::parse_user(name, rules).expect("rules")
    }

    #[test]
    fn instances_with_one_credential_agree_on_every_secret() {
        let u = [user("app", "on >pw ~app:* +@all -@dangerous")];
        let a = Identities::new(Some("rw"), Some("s3cret"), &u);
        let b = Identities::new(Some("rw"), Some("s3cret"), &u);
        let c = Identities::new(Some("rw"), Some("other"), &u);
        let (a, b, c) = (
            a.of("app").expect("a"),
            b.of("app").expect("b"),
            c.of("app").expect("c"),
        );
        assert_eq!(a.auth, b.auth);
        assert_ne!(a.auth, c.auth);
        let text = String::from_utf8_lossy(&a.setuser);
        assert!(text.contains("redward:app"), "{text}");
        // Neither the client's password nor the secret is in the SETUSER request.
        assert!(!text.contains("pw\r\n") && !text.contains(">"), "{text}");
        let secret = String::from_utf8_lossy(&a.auth);
        let secret = secret.rsplit("\r\n").nth(1).expect("secret");
        assert!(!text.contains(secret));
    }

    #[test]
    fn errors_name_the_clients_own_user() {
        let reply = b"-ERR ACL failure in script: User redward:app has no permissions to run the 'flushall' command script: x\r\n";
        assert_eq!(
            own_name_in_error(reply, "app").expect("named"),
            b"-ERR ACL failure in script: User app has no permissions to run the 'flushall' command script: x\r\n"
        );
        assert!(own_name_in_error(reply, "ap").is_none());
        assert!(own_name_in_error(b"-ERR no such key\r\n", "app").is_none());
    }

    #[test]
    fn a_reload_sets_changed_users_again_and_removes_the_gone() {
        let ids = Identities::new(
            None,
            None,
            &[
                user("a", "on nopass ~a:* +get"),
                user("b", "on nopass +get"),
            ],
        );
        let tag_a = ids.of("a").expect("a").tag;
        let changes = ids.update(&[user("a", "on nopass ~a:* +get +set")]);
        assert_eq!(changes.set.len(), 1);
        assert_eq!(changes.removed, vec![(1, "redward:b".to_owned())]);
        assert_eq!(ids.of("a").expect("a").tag, tag_a);
        assert!(ids.of("b").is_none());
        let again = ids.update(&[user("a", "on nopass ~a:* +get +set")]);
        assert!(again.set.is_empty() && again.removed.is_empty());
    }
}
