//! The YAML configuration: serde types exactly as an operator writes them ([`RawConfig`]), and
//! the checked [`Config`] the proxy runs with (`validate.rs`).
//!
//! YAML is read with serde-saphyr (the maintained successor of the archived serde_yaml), with
//! duplicate keys and unknown fields refused: a typo must never silently drop a setting on a
//! security proxy. Every error is one line that names the field or the file.

mod aclfile;
mod listen;
mod upstream;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use aclfile::read_acl_file_for_load;
pub use validate::DEFAULT_MAX_USERS;
pub use validate::{
    AnnouncePair, ClientAuth, ClientCerts, ClientIdentity, ClientTls, ClusterConfig, Config,
    IdentityMode, ListenerConfig, LogColor, LogFormat, ProtocolLimits, ProxyProtocol, Secret,
    SentinelConfig, UpstreamAddr, UpstreamConfig, UpstreamTls, Users,
};

/// A configuration that cannot be used. Its `Display` is the one line redward prints before
/// exiting non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{field}: {path}: {message}")]
    File {
        field: String,
        path: PathBuf,
        message: String,
    },
}

impl ConfigError {
    /// Whether a user's rules name a command (or category) the built-in Redis 7.0 table does
    /// not have: a newer server's, Valkey's or a module's may, once redward has asked it.
    pub fn names_unknown_command(&self) -> bool {
        match self {
            ConfigError::Invalid { message, .. } | ConfigError::File { message, .. } => {
                message.contains(crate::acl::UNKNOWN_COMMAND_IN_ACL)
            }
            _ => false,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn file(
        field: impl Into<String>,
        path: &Path,
        message: impl std::fmt::Display,
    ) -> Self {
        ConfigError::File {
            field: field.into(),
            path: path.to_owned(),
            message: message.to_string(),
        }
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Vec<RawListener>,
    pub upstream: RawUpstream,
    #[serde(default)]
    pub users: Vec<RawUser>,
    /// A Redis aclfile (`user NAME rules...` lines), loaded beside `users`.
    #[serde(default)]
    pub acl_file: Option<PathBuf>,
    #[serde(default)]
    pub audit: Option<RawAudit>,
    /// `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub limits: RawLimits,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(default, deserialize_with = "duration")]
    pub shutdown_grace: Option<Duration>,
    /// Runtime worker threads; 0 or absent means one per core.
    #[serde(default)]
    pub workers: Option<usize>,
    #[serde(default)]
    pub log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    pub tls: RawTls,
    /// A plaintext listener on a non-loopback address exposes Redis's protocol (and AUTH
    /// passwords) to the network; it must be asked for by name.
    #[serde(default)]
    pub allow_plaintext_non_loopback: bool,
    /// Networks allowed to connect (default: everyone); checked right after accept.
    #[serde(default)]
    pub allow: Vec<ipnet::IpNet>,
    /// Networks refused even if allowed.
    #[serde(default)]
    pub deny: Vec<ipnet::IpNet>,
    /// Expect a PROXY protocol v1/v2 header first (behind a load balancer): `true` (from any
    /// peer) or `{ trusted: [CIDR, ...] }` (only from those peers).
    #[serde(default)]
    pub proxy_protocol: RawProxyProtocol,
}

/// `proxy_protocol: false | true | { trusted: [CIDR, ...] }`.
#[derive(Debug, Default)]
pub enum RawProxyProtocol {
    #[default]
    Off,
    AnyPeer,
    Trusted(Vec<ipnet::IpNet>),
}

impl<'de> Deserialize<'de> for RawProxyProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Trusted {
            trusted: Vec<ipnet::IpNet>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Flag(bool),
            Map(Trusted),
        }
        match Either::deserialize(d) {
            Ok(Either::Flag(false)) => Ok(RawProxyProtocol::Off),
            Ok(Either::Flag(true)) => Ok(RawProxyProtocol::AnyPeer),
            Ok(Either::Map(t)) => Ok(RawProxyProtocol::Trusted(t.trusted)),
            Err(_) => Err(serde::de::Error::custom(
                "expected true, false or `{ trusted: [CIDR, ...] }` (the load balancers allowed to send a PROXY header)",
            )),
        }
    }
}

/// `tls: off`, or the listener's certificate settings.
#[derive(Debug)]
pub enum RawTls {
    Off,
    On(RawServerTls),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// "1.2" (default) or "1.3".
    #[serde(default)]
    pub min_version: Option<String>,
    /// Stateless session tickets (resumption); on by default.
    #[serde(default)]
    pub session_tickets: Option<bool>,
    /// CA bundle for client certificates (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `none` (default), `optional` or `required`.
    #[serde(default)]
    pub client_auth: Option<String>,
    /// Which certificate field names the redward user: `cn` (default), `dns` or `uri`.
    #[serde(default)]
    pub client_identity: Option<String>,
    /// Certificate revocation lists (PEM) for client certificates.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
}

impl<'de> Deserialize<'de> for RawTls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Word(String),
            Flag(bool),
            Files(RawServerTls),
        }
        match Either::deserialize(d) {
            Ok(Either::Word(w)) if w == "off" => Ok(RawTls::Off),
            Ok(Either::Flag(false)) => Ok(RawTls::Off),
            Ok(Either::Files(f)) => Ok(RawTls::On(f)),
            Ok(_) => Err(serde::de::Error::custom(
                "expected `off` or a map with `cert` and `key`",
            )),
            Err(_) => Err(serde::de::Error::custom(
                "expected `off` or a map with `cert`, `key` and optionally `min_version`, `session_tickets`, \
                 `client_ca`, `client_auth`, `client_identity`, `crl` (no other fields)",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `host:port` or `unix:/path/to/redis.sock`; or, instead, `sentinel`.
    #[serde(default)]
    pub address: Option<String>,
    /// Follow the master a set of Sentinels name.
    #[serde(default)]
    pub sentinel: Option<RawSentinel>,
    /// A Redis Cluster: discover its nodes and open a listener for each.
    #[serde(default)]
    pub cluster: Option<RawCluster>,
    /// A sidecar in front of one cluster node: each node's `host:port` and the endpoint
    /// written for it in MOVED/ASK and CLUSTER replies.
    #[serde(default)]
    pub cluster_announce: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
    /// Upstream connections that clients share until they need one of their own (0: every
    /// client gets its own, as a plain TCP proxy would).
    #[serde(default)]
    pub shared_connections: Option<usize>,
    /// `per_user` (the default) or `shared`: as whom Redis sees each client's commands.
    #[serde(default)]
    pub identity: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `host:port` of any nodes; the rest are discovered.
    pub seeds: Vec<String>,
    pub node_listeners: RawNodeListeners,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodeListeners {
    /// The address node listeners bind.
    pub bind: String,
    /// `first-last` (or one port): taken in order as nodes appear.
    pub ports: String,
    /// The host written into MOVED/ASK and CLUSTER replies.
    pub announce_host: String,
    /// Networks a node's address must be in before redward dials it (CIDR, or an address);
    /// default: the seeds' own addresses (`cluster/admit.rs`).
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Where the node -> port map lives: `cluster` (default: in the cluster itself, shared by
    /// every instance, `cluster/port_map.rs`) or `local` (this process only).
    #[serde(default)]
    pub port_map: Option<String>,
    /// How long a node may be missing from the topology before its listener closes.
    #[serde(default, deserialize_with = "duration")]
    pub grace: Option<Duration>,
    /// How long a freed port waits before another node may get it.
    #[serde(default, deserialize_with = "duration")]
    pub quarantine: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    /// The name the Sentinels monitor.
    pub master: String,
    /// `host:port` of each Sentinel.
    pub addresses: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to the Sentinels (`tls-port` on them).
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
    /// Sentinels that must agree on the master (default: a majority of `addresses`).
    #[serde(default)]
    pub quorum: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// CA bundle that signs the upstream's certificate; the system/webpki roots otherwise.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Name to verify the upstream certificate against; the address's host otherwise.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    pub rules: String,
    /// Optional per-user command rate; over it commands are refused, not forwarded.
    #[serde(default)]
    pub commands_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// IP:port; keep it on loopback or a pod-local address.
    pub address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Append-only JSON-lines file of auth failures and ACL denials.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default, deserialize_with = "duration")]
    pub handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub auth_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "size")]
    pub max_bulk_len: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub max_inline_len: Option<u64>,
    #[serde(default, deserialize_with = "duration")]
    pub client_write_timeout: Option<Duration>,
    /// Requests in flight per connection before redward stops reading from the client.
    #[serde(default)]
    pub max_pipeline: Option<usize>,
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    #[serde(default)]
    pub connections_per_second_per_ip: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(default)]
    pub auth_failures_per_minute: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub auth_lockout: Option<Duration>,
    /// `local` (the default: each instance counts alone) or `upstream` (login lockouts are
    /// counted in the Redis behind, so several redward instances enforce one limit).
    #[serde(default)]
    pub shared_state: Option<String>,
    /// With `shared_state: upstream`: the database the shared state lives in, hidden from
    /// every client. Default: Redis's last database.
    #[serde(default)]
    pub shared_state_database: Option<u32>,
    #[serde(default)]
    pub output_buffer_limit: Option<RawOutputLimit>,
    /// Unread replies a client on a shared upstream connection may leave before it is
    /// disconnected (the shared connection never waits for one client).
    #[serde(default, deserialize_with = "size")]
    pub shared_reply_buffer: Option<u64>,
    /// Bytes buffered for all clients together (Redis's `maxmemory-clients`); past it the
    /// client holding the most is disconnected. `0` turns the bound off.
    #[serde(default, deserialize_with = "size")]
    pub max_client_memory: Option<u64>,
    /// The most users `ACL SETUSER` may bring the total to (configured ones included).
    #[serde(default)]
    pub max_users: Option<usize>,
}

/// Like Redis's `client-output-buffer-limit pubsub`: what a subscriber or MONITOR client may
/// leave unread before it is disconnected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutputLimit {
    #[serde(default, deserialize_with = "size")]
    pub hard: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub soft: Option<u64>,
    #[serde(default)]
    pub soft_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    /// `auto` (colour only when stderr is a terminal), `always` or `never`.
    #[serde(default)]
    pub color: Option<String>,
}

/// Reads, parses and checks a configuration file.
///
/// # Errors
/// A [`ConfigError`] naming the file or the field at fault.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_text(&text, path)
}

/// Reads only the `upstream:` part of a configuration file: enough to ask the server behind
/// for its command table before the users' rules are checked against it.
///
/// # Errors
/// A [`ConfigError`] naming the file or the field at fault.
pub fn load_upstream(path: &Path) -> Result<UpstreamConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let raw = parse(&text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })?;
    upstream::upstream(raw.upstream, path.parent().unwrap_or(Path::new(".")))
}

/// Parses and checks configuration text as if read from `path` (relative file names in it
/// are taken from `path`'s folder).
///
/// # Errors
/// A [`ConfigError`] naming the file or the field at fault.
pub fn from_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw = parse(text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    validate::validate(raw, base)
}

/// Parses YAML text into the raw form. The error is a single line.
pub fn parse(text: &str) -> Result<RawConfig, String> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: true,
    };
    // The field an error is about, as a path (`upstream.cluster.node_listeners.quarantine`):
    // a value's own error (a bad duration, size or address) does not know its field's name.
    let mut field = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field = e.path().to_string();
            e.into_inner()
        })
    });
    parsed.map_err(|e| {
        let message = e
            .to_string()
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        if field.is_empty() || field == "." {
            message
        } else {
            format!("{field}: {message}")
        }
    })
}

/// `10s`, `500ms`, `1m 30s` (humantime), for every duration field.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim())
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e}")))
}

/// Sizes the way redis.conf writes them (`memtoull` in `util.c`): `512mb`, `64kb`, `1gb`,
/// `100k` (1000s), or plain bytes.
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(Some(n)),
        NumOrStr::Str(s) => parse_size(&s).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid size `{s}` (e.g. 512mb, 64kb)"))
        }),
    }
}

pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// Resolves `host:port` when it is a literal socket address (listeners must be).
pub(crate) fn socket_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::invalid(
            field,
            format!("`{s}` is not an IP:port address (e.g. 127.0.0.1:6380, [::1]:6380)"),
        )
    })
}

#[cfg(test)]
mod tests;
