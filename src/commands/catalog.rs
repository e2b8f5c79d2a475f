//! The command table in force: the generated Redis 7.0 table, amended by what the server
//! behind redward says about itself (its `COMMAND` reply and `INFO server`).
//!
//! Why process-wide: every request resolves its command through [`super::resolve`], which
//! returns `&'static CommandSpec` and is called from the session, the ACL engine and the
//! tests alike; the server redward fronts is one per process. The catalog is swapped whole
//! ([`install`], an `ArcSwap`), so a request sees either the old server's table or the new
//! one, never a mix, and a restart of the upstream into another version (Redis 7.0 → 7.4,
//! Redis → Valkey) is followed at the next learning (see `learn.rs`).
//!
//! Learned specs must be `'static` like the generated ones. They are interned
//! (`intern`): a spec equal to one learned before is that same allocation, so re-learning
//! an unchanged server allocates nothing, and what is kept is bounded by the number of
//! distinct command specs the upstream ever showed (not by the number of reconnects).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use arc_swap::ArcSwap;

use super::CommandSpec;

/// Which server implementation is behind redward (`INFO server`: Valkey writes
/// `server_name:valkey`, Redis does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Redis,
    Valkey,
}

/// A `major.minor.patch` version; parts that do not parse are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    /// Parses `7.2.4` (extra parts and suffixes ignored; missing parts are 0).
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.trim().split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u16>().ok()
        });
        let major = parts.next().flatten()?;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Version(major, minor, patch))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// What the server behind says it is, from `INFO server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub flavor: Flavor,
    /// `redis_version` (Valkey 8 reports the Redis version it is compatible with, 7.2.4).
    pub redis_version: Version,
    /// `valkey_version`, on Valkey.
    pub valkey_version: Option<Version>,
}

/// Which wording Redis uses for ACL refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclTexts {
    /// Redis 7.0 (`acl.c` `aclCommand` DRYRUN, `server.c` `processCommand`): `This user has no
    /// permissions ...`, and NOPERM errors naming neither the user nor the key.
    Redis70,
    /// Redis 7.2+ and Valkey (`getAclErrorMessage` in `acl.c`): `User <name> has no
    /// permissions ...` (DRYRUN and command NOPERM), `No permissions to access a key` (key and
    /// channel NOPERM), arguments printed whole with `%S`.
    Redis72,
}

/// The server learned is not the one a new connection met (see [`observe_hello`]), or an
/// upstream connection failed: the server should be learned again (`learn::after_connect`).
static STALE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks the catalog as possibly out of date.
pub fn mark_stale() {
    STALE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Takes the mark: `true` once after [`mark_stale`].
pub fn take_stale() -> bool {
    STALE.swap(false, std::sync::atomic::Ordering::Relaxed)
}

/// What a new upstream connection's `HELLO` said of the server (`server`, `version`: the
/// flavor's own version, `helloCommand` in networking.c); marks the catalog stale when that
/// is not the server the catalog was learned from (Redis restarted as another version, or
/// replaced by Valkey, while no connection noticed a failure).
pub fn observe_hello(server: &str, version: &str) {
    let current = self::server();
    let (flavor, version) = match (server, Version::parse(version)) {
        (s, Some(v)) if s.eq_ignore_ascii_case("valkey") => (Flavor::Valkey, v),
        (_, Some(v)) => (Flavor::Redis, v),
        (_, None) => return,
    };
    let same = match flavor {
        Flavor::Valkey => {
            current.flavor == Flavor::Valkey && current.valkey_version == Some(version)
        }
        Flavor::Redis => current.flavor == Flavor::Redis && current.redis_version == version,
    };
    if !same {
        mark_stale();
    }
}

impl ServerInfo {
    /// The server the generated table was made from: Redis 7.0.15. Used until the upstream
    /// has been asked, and when it cannot be.
    pub const BUILTIN: ServerInfo = ServerInfo {
        flavor: Flavor::Redis,
        redis_version: Version(7, 0, 15),
        valkey_version: None,
    };

    /// Reads `INFO server`'s `key:value` lines. Without a usable `redis_version`, the built-in
    /// Redis 7.0.15 is assumed.
    pub fn from_info(text: &str) -> ServerInfo {
        let field = |key: &str| {
            text.lines().find_map(|l| {
                l.trim_end_matches('\r')
                    .strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix(':'))
            })
        };
        let valkey_version = field("valkey_version").and_then(Version::parse);
        let flavor = if field("server_name").is_some_and(|n| n.eq_ignore_ascii_case("valkey"))
            || valkey_version.is_some()
        {
            Flavor::Valkey
        } else {
            Flavor::Redis
        };
        ServerInfo {
            flavor,
            redis_version: field("redis_version")
                .and_then(Version::parse)
                .unwrap_or(ServerInfo::BUILTIN.redis_version),
            valkey_version,
        }
    }

    /// The ACL refusal wording of this server: Redis 7.2 changed it (`getAclErrorMessage`),
    /// and every Valkey release descends from 7.2.
    pub fn acl_texts(&self) -> AclTexts {
        if self.flavor == Flavor::Valkey || self.redis_version >= Version(7, 2, 0) {
            AclTexts::Redis72
        } else {
            AclTexts::Redis70
        }
    }
}

impl ServerInfo {
    /// Whether `CLIENT KILL` takes `MAXAGE` (Redis 7.4, Valkey 8; `clientKillCommand`).
    pub fn client_kill_maxage(&self) -> bool {
        match self.flavor {
            Flavor::Valkey => self.valkey_version.is_none_or(|v| v >= Version(8, 0, 0)),
            Flavor::Redis => self.redis_version >= Version(7, 4, 0),
        }
    }
}

impl std::fmt::Display for ServerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.flavor, self.valkey_version) {
            (Flavor::Valkey, Some(v)) => write!(f, "Valkey {v}"),
            (Flavor::Valkey, None) => write!(f, "Valkey (redis_version {})", self.redis_version),
            (Flavor::Redis, _) => write!(f, "Redis {}", self.redis_version),
        }
    }
}

/// The table in force: the generated one, with the server's differences.
#[derive(Debug)]
pub struct Catalog {
    pub server: ServerInfo,
    /// Top-level commands the server describes differently from the generated table, or that
    /// the table lacks, by lowercase name (their subcommands inside them).
    pub(super) changed: HashMap<Box<str>, &'static CommandSpec>,
    /// Generated commands the server does not have (an older server, `rename-command`).
    pub(super) absent: HashSet<&'static str>,
}

impl Catalog {
    /// The generated table alone, as Redis 7.0.15.
    pub fn builtin() -> Catalog {
        Catalog {
            server: ServerInfo::BUILTIN,
            changed: HashMap::new(),
            absent: HashSet::new(),
        }
    }

    /// Whether this is the generated table unchanged (the fast path of every lookup).
    pub fn is_builtin_table(&self) -> bool {
        self.changed.is_empty() && self.absent.is_empty()
    }

    /// Commands added or changed relative to the generated table, sorted by name.
    pub fn changed(&self) -> Vec<&'static CommandSpec> {
        let mut v: Vec<_> = self.changed.values().copied().collect();
        v.sort_by_key(|c| c.name);
        v
    }

    /// Generated commands the server lacks, sorted.
    pub fn absent(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.absent.iter().copied().collect();
        v.sort_unstable();
        v
    }
}

static CURRENT: LazyLock<ArcSwap<Catalog>> =
    LazyLock::new(|| ArcSwap::from_pointee(Catalog::builtin()));

/// The catalog in force (one atomic load; keep the guard short).
pub fn current() -> arc_swap::Guard<Arc<Catalog>> {
    CURRENT.load()
}

/// The server in force (copied out of the catalog).
pub fn server() -> ServerInfo {
    CURRENT.load().server
}

/// What changed when a catalog was installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The server before.
    pub was: ServerInfo,
    /// Whether the tables differ (names added, changed or removed).
    pub table_changed: bool,
}

/// Makes `catalog` the one in force, atomically; returns what it replaced.
pub fn install(catalog: Catalog) -> Installed {
    let old = CURRENT.swap(Arc::new(catalog));
    let new = CURRENT.load();
    let same = old.absent == new.absent
        && old.changed.len() == new.changed.len()
        && old
            .changed
            .iter()
            .all(|(k, v)| new.changed.get(k).is_some_and(|n| std::ptr::eq(*n, *v)));
    Installed {
        was: old.server,
        table_changed: !same,
    }
}

/// Interned learned specs, by their `Debug` rendering (which spells out every field).
static INTERNED: LazyLock<Mutex<HashMap<String, &'static CommandSpec>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The one `'static` copy of a spec equal to `build()`'s: the first time, `build` leaks it;
/// afterwards the same allocation is returned. `key` must identify the spec completely
/// (`discover` passes the `Debug` rendering of its owned draft).
pub(super) fn intern(key: String, build: impl FnOnce() -> CommandSpec) -> &'static CommandSpec {
    // A poisoned lock only means another thread panicked while inserting; the map is still
    // a valid map of leaked specs.
    let mut map = INTERNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry(key)
        .or_insert_with(|| &*Box::leak(Box::new(build())))
}

/// How many distinct learned specs were ever interned (tests: re-learning must not grow it).
pub fn interned_count() -> usize {
    INTERNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_tells_valkey_from_redis() {
        let v = ServerInfo::from_info(
            "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.8\r\n",
        );
        assert_eq!(v.flavor, Flavor::Valkey);
        assert_eq!(v.valkey_version, Some(Version(8, 1, 8)));
        assert_eq!(v.acl_texts(), AclTexts::Redis72);
        assert_eq!(v.to_string(), "Valkey 8.1.8");
        let r =
            ServerInfo::from_info("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n");
        assert_eq!(r, ServerInfo::BUILTIN);
        assert_eq!(r.acl_texts(), AclTexts::Redis70);
        let r74 = ServerInfo::from_info("redis_version:7.4.1\n");
        assert_eq!(r74.acl_texts(), AclTexts::Redis72);
        assert_eq!(ServerInfo::from_info("garbage"), ServerInfo::BUILTIN);
        assert_eq!(Version::parse("8.0.0-rc1"), Some(Version(8, 0, 0)));
        assert_eq!(Version::parse("x"), None);
    }
}
