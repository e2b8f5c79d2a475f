//! From the file as written to the checked configuration: durations and sizes resolved,
//! defaults applied (each named and explained in `docs/defaults.md`), secrets read, users parsed,
//! and every choice that would weaken the proxy refused unless spelled out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{socket_addr, ConfigError, RawConfig};
use crate::acl::{self, User};

/// A TLS handshake that has not finished by then is dropped: a stalled handshake holds a
/// socket and a task, and costs an attacker nothing.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that has not authenticated by then is closed (Redis has no such limit; an
/// unauthenticated connection is pure cost on an exposed port).
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream connect deadline: long enough for a loaded Redis, short enough that a client gets
/// a clear error instead of hanging.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that accepts no bytes for this long while replies wait is disconnected.
pub const DEFAULT_CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for in-flight requests to finish on SIGTERM before connections are closed.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Requests awaiting replies per connection before redward stops reading more from the client
/// (backpressure); deep enough for any sane pipeline.
pub const DEFAULT_MAX_PIPELINE: usize = 64 * 1024;
/// Connections over all listeners (Redis's `maxclients` default).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Connections from one address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
/// New connections per second from one address (burst of the same size).
pub const DEFAULT_CONNECTIONS_PER_SECOND_PER_IP: u32 = 5000;
/// Failed logins per minute from one address before it is locked out.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 10;
/// How long a locked-out address stays locked out.
pub const DEFAULT_AUTH_LOCKOUT: Duration = Duration::from_secs(300);
/// Unread output a subscriber/MONITOR client may have before it is disconnected (hard), or
/// may keep above `soft` for `soft_seconds`.
pub const DEFAULT_OUTPUT_HARD: usize = 64 * 1024 * 1024;
/// One shared connection already carries every request one worker can produce; more only
/// spread Redis's per-connection work.
pub const DEFAULT_SHARED_CONNECTIONS: usize = 1;
pub const MAX_SHARED_CONNECTIONS: usize = 64;
/// As much as the subscriber hard limit: a reply larger than this, read slower than Redis
/// sends it, disconnects a client on a shared connection.
pub const DEFAULT_SHARED_REPLY_BUFFER: usize = 64 * 1024 * 1024;
/// What all clients together may make redward buffer (Redis's `maxmemory-clients`, which is
/// off by default there; on here, because a proxy's memory is what an attacker fills first).
/// Four clients at the 64 MiB per-client caps fit, and so do 10,000 idle clients (2 KiB of
/// read buffer each); a few dozen clients leaving large replies unread do not. It keeps
/// redward inside a 512 MiB container limit with room for TLS state (`docs/defaults.md`).
pub const DEFAULT_MAX_CLIENT_MEMORY: usize = 256 * 1024 * 1024;
pub const DEFAULT_OUTPUT_SOFT: usize = 16 * 1024 * 1024;
pub const DEFAULT_OUTPUT_SOFT_SECONDS: u64 = 60;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub upstream: UpstreamConfig,
    pub users: Users,
    /// The names the `users:` list defines: fixed by the configuration, never changed or
    /// removed by `ACL SETUSER`/`DELUSER` (`runtime_users.rs`).
    pub configured_users: std::collections::HashSet<String>,
    /// `acl_file`, resolved: where `ACL SAVE` writes and `ACL LOAD` reads.
    pub acl_file: Option<PathBuf>,
    pub limits: ProtocolLimits,
    pub shutdown_grace: Duration,
    /// Runtime worker threads (0 = one per core).
    pub workers: usize,
    pub log_level: Option<String>,
    pub log_format: LogFormat,
    pub log_color: LogColor,
    /// Where audit events are appended as JSON lines, if anywhere.
    pub audit_file: Option<PathBuf>,
    pub connection_limits: crate::limits::LimitSettings,
    /// The admin endpoint's address, if enabled.
    pub admin_address: Option<SocketAddr>,
    /// `commands_per_second` by user name.
    pub command_rates: HashMap<String, std::num::NonZeroU32>,
    /// `limits.shared_state: upstream`: login lockouts counted in Redis, across instances.
    pub shared_state_upstream: bool,
    /// `limits.shared_state_database`: where that state lives (default: Redis's last
    /// database, found at start-up).
    pub shared_state_database: Option<u32>,
}

impl Config {
    /// Settings that are allowed but weaken the proxy: `redward check` prints them and start-up
    /// logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.proxy_protocol == ProxyProtocol::AnyPeer && !l.addr.ip().is_loopback() {
                out.push(format!(
                    "listen[{i}].proxy_protocol: true on {}: any peer that reaches this address may send a PROXY header \
                     and claim any client address (allow/deny, per-address limits and the login lockout then trust it); \
                     name the load balancers with `proxy_protocol: {{ trusted: [CIDR, ...] }}`",
                    l.addr
                ));
            }
        }
        if self.limits.max_client_memory == 0 {
            out.push(
                "limits.max_client_memory: 0: what all clients together buffer is unbounded"
                    .to_owned(),
            );
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether log lines carry ANSI colour codes (`log.color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogColor {
    /// Only when stderr is a terminal: never in a file, journald or `docker logs`.
    Auto,
    Always,
    Never,
}

impl LogColor {
    /// Whether to write colour codes to stderr.
    pub fn enabled(self) -> bool {
        use std::io::IsTerminal;
        match self {
            LogColor::Auto => std::io::stderr().is_terminal(),
            LogColor::Always => true,
            LogColor::Never => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    /// `None` only when the file says `tls: off`.
    pub tls: Option<ClientTls>,
    /// Empty = every address; otherwise the peer must be in one of these networks.
    pub allow: Vec<ipnet::IpNet>,
    /// Refused even when allowed.
    pub deny: Vec<ipnet::IpNet>,
    /// Whether a PROXY protocol header comes first and names the real client.
    pub proxy_protocol: ProxyProtocol,
}

/// Who may send a PROXY protocol header on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header: the TCP peer is the client.
    Off,
    /// Every peer must send one (`proxy_protocol: true`): anyone who can reach the port can
    /// name any address, so `redward check` warns about it off loopback.
    AnyPeer,
    /// Only these peers (the load balancers) may connect, and they must send one.
    Trusted(Vec<ipnet::IpNet>),
}

/// An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d; networks are written in v4.
fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

impl ListenerConfig {
    /// Whether a client address may use this listener (`allow`, then `deny`).
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical(ip);
        (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
            && !self.deny.iter().any(|n| n.contains(&ip))
    }

    /// Whether `deny` names this address.
    pub fn denies(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical(ip);
        self.deny.iter().any(|n| n.contains(&ip))
    }

    /// Whether this TCP peer may send this listener a PROXY header.
    pub fn trusts_proxy(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical(ip);
        match &self.proxy_protocol {
            ProxyProtocol::Off => false,
            ProxyProtocol::AnyPeer => true,
            ProxyProtocol::Trusted(nets) => nets.iter().any(|n| n.contains(&ip)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Only TLS 1.3 when true; TLS 1.2 and 1.3 otherwise.
    pub tls13_only: bool,
    pub session_tickets: bool,
    /// Client certificates (mTLS), when configured.
    pub client_certs: Option<ClientCerts>,
}

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A verified certificate that names a user logs in as that user; without one (or with
    /// one that names nobody) the client uses AUTH.
    Optional,
    /// A verified certificate naming an enabled user is required; nothing else is served.
    Required,
}

/// The certificate field that names the redward user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIdentity {
    CommonName,
    Dns,
    Uri,
}

#[derive(Debug, Clone)]
pub struct ClientCerts {
    pub ca: PathBuf,
    pub crls: Vec<PathBuf>,
    pub auth: ClientAuth,
    pub identity: ClientIdentity,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `upstream.address`; with `upstream.sentinel`, the first Sentinel's (for messages only:
    /// Redis's address is the master the Sentinels name).
    pub addr: UpstreamAddr,
    /// `upstream.sentinel`: follow the master these Sentinels name.
    pub sentinel: Option<SentinelConfig>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub connect_timeout: Duration,
    pub tls: Option<UpstreamTls>,
    /// 0: a connection per client.
    pub shared_connections: usize,
    /// `upstream.cluster`: a listener per node of this cluster.
    pub cluster: Option<ClusterConfig>,
    /// `upstream.cluster_announce`: node `host:port` -> announced `host:port` (sidecar shape).
    pub cluster_announce: Vec<AnnouncePair>,
    /// `upstream.identity`: as whom Redis sees each client's commands.
    pub identity: IdentityMode,
}

/// `upstream.identity` (`upstream/identity.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdentityMode {
    /// Each redward user has a Redis user of its own with the same rules, so Redis itself
    /// confines what its scripts and functions run.
    #[default]
    PerUser,
    /// One upstream user for all (redward's own); scripts are refused to every user narrower
    /// than `+@all ~* &*`.
    Shared,
}

/// A node's `(host, port)` and the `(host, port)` announced for it.
pub type AnnouncePair = ((String, u16), (String, u16));

/// `upstream.cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Any nodes, asked in turn for the topology.
    pub seeds: Vec<(String, u16)>,
    /// `node_listeners.bind`.
    pub bind: std::net::IpAddr,
    /// `node_listeners.ports`: first and last.
    pub ports: (u16, u16),
    /// `node_listeners.announce_host`.
    pub announce_host: String,
    /// `node_listeners.allow`: the networks node addresses must be in; empty: the seeds'
    /// own addresses, each a host route (`cluster/admit.rs`).
    pub allow: Vec<ipnet::IpNet>,
    /// `node_listeners.port_map: cluster` (the default): the ports are agreed with every other
    /// instance through a map kept in the cluster (`cluster/port_map.rs`); `false`: `local`.
    pub shared_ports: bool,
    /// `node_listeners.grace` (default 15 s).
    pub grace: std::time::Duration,
    /// `node_listeners.quarantine` (default 60 s).
    pub quarantine: std::time::Duration,
}

/// `upstream.sentinel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// The name the Sentinels monitor (`sentinel monitor <name> ...`).
    pub master: String,
    /// The Sentinels, asked in turn.
    pub addresses: Vec<(String, u16)>,
    /// For Sentinels that need a login (`requirepass` / ACL users on the Sentinels).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// TLS to the Sentinels; `server_name` defaults to the first Sentinel's host.
    pub tls: Option<UpstreamTls>,
    /// How many Sentinels must name the same master before redward believes it (and sends
    /// it the upstream credential): `upstream.sentinel.quorum`, default a majority of
    /// `addresses`.
    pub quorum: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            UpstreamAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            UpstreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub server_name: String,
}

/// A secret (upstream password). Never printed: `Debug` says `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Limits on what one client may make redward hold or wait for.
#[derive(Debug, Clone, Copy)]
pub struct ProtocolLimits {
    pub handshake_timeout: Duration,
    pub auth_timeout: Duration,
    pub max_bulk_len: i64,
    pub max_inline_len: usize,
    pub client_write_timeout: Duration,
    pub max_pipeline: usize,
    /// 0 = off. Never applied to subscribers, MONITOR, or clients waiting for a reply.
    pub idle_timeout: Duration,
    pub output_hard: usize,
    pub output_soft: usize,
    pub output_soft_seconds: u64,
    pub shared_reply_buffer: usize,
    /// Bytes buffered for all clients together; 0 = unbounded.
    pub max_client_memory: usize,
    /// `limits.max_users`: the most users `ACL SETUSER` may bring the total to.
    pub max_users: usize,
}

impl Default for ProtocolLimits {
    fn default() -> Self {
        ProtocolLimits {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            max_bulk_len: crate::resp::request::DEFAULT_MAX_BULK_LEN,
            max_inline_len: crate::resp::request::PROTO_INLINE_MAX_SIZE,
            client_write_timeout: DEFAULT_CLIENT_WRITE_TIMEOUT,
            max_pipeline: DEFAULT_MAX_PIPELINE,
            idle_timeout: Duration::ZERO,
            output_hard: DEFAULT_OUTPUT_HARD,
            output_soft: DEFAULT_OUTPUT_SOFT,
            output_soft_seconds: DEFAULT_OUTPUT_SOFT_SECONDS,
            shared_reply_buffer: DEFAULT_SHARED_REPLY_BUFFER,
            max_client_memory: DEFAULT_MAX_CLIENT_MEMORY,
            max_users: DEFAULT_MAX_USERS,
        }
    }
}

/// `limits.max_users` by default: the most users `ACL SETUSER` or `ACL LOAD` may bring the
/// total to (configured and run-time together); about 1 KiB each.
pub const DEFAULT_MAX_USERS: usize = 10_000;

/// The user table. `default` is Redis's default user; when the file does not define it, it
/// exists but is `off`, so `AUTH <password>` always fails (as Redis with `user default off`).
#[derive(Debug, Clone, Default)]
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
}

impl Users {
    pub fn from_users(users: impl IntoIterator<Item = User>) -> Self {
        Users {
            by_name: users
                .into_iter()
                .map(|u| (u.name.clone(), Arc::new(u)))
                .collect(),
        }
    }

    /// A set of users already shared (`runtime_users.rs` rebuilds sets without copying users).
    pub fn from_arcs(users: impl IntoIterator<Item = Arc<User>>) -> Self {
        Users {
            by_name: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
        }
    }

    /// Every user, shared.
    pub fn arcs(&self) -> impl Iterator<Item = &Arc<User>> {
        self.by_name.values()
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<User>> {
        std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.by_name.get(n))
    }

    /// The `default` user if it starts connections authenticated (`nopass` and `on`), as
    /// Redis's `authRequired()` decides.
    pub fn implicit_default(&self) -> Option<&Arc<User>> {
        self.by_name
            .get("default")
            .filter(|u| u.nopass && u.enabled)
    }

    /// Whether `default` has `nopass` (even if `off`): `AUTH <password>` then errors in Redis.
    pub fn default_is_nopass(&self) -> bool {
        self.by_name.get("default").is_some_and(|u| u.nopass)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.by_name.values().map(|u| u.as_ref())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

pub(super) fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let listeners = super::listen::listeners(raw.listen, base)?;
    let upstream = super::upstream::upstream(raw.upstream, base)?;
    let UserSet {
        users,
        command_rates,
        configured_users,
        acl_file,
    } = users(raw.users, raw.acl_file.as_ref(), base)?;
    let shared_state_database = raw.limits.shared_state_database;
    let (limits, connection_limits, shared_state_upstream) = limits(raw.limits)?;
    let (log_format, log_color) = log_settings(&raw.log)?;
    if shared_state_upstream
        && (upstream.cluster.is_some() || !upstream.cluster_announce.is_empty())
    {
        // Its keys would live in one slot, on one node: every other node answers MOVED.
        return Err(ConfigError::invalid(
            "limits.shared_state",
            "upstream is not for a Redis Cluster (the state would live on one node's slots); use local",
        ));
    }
    Ok(Config {
        listeners,
        upstream,
        users: Users::from_users(users),
        configured_users,
        acl_file,
        limits,
        shutdown_grace: raw.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        workers: raw.workers.unwrap_or(0),
        log_level: raw.log.level,
        log_format,
        log_color,
        audit_file: raw.audit.and_then(|a| a.file).map(|f| resolve(base, &f)),
        connection_limits,
        command_rates,
        shared_state_upstream,
        shared_state_database,
        admin_address: match raw.admin {
            Some(a) => Some(socket_addr("admin.address", &a.address)?),
            None => None,
        },
    })
}

/// The users a configuration defines: `users:` and `acl_file`'s, with the rates.
struct UserSet {
    users: Vec<User>,
    command_rates: HashMap<String, std::num::NonZeroU32>,
    configured_users: std::collections::HashSet<String>,
    acl_file: Option<PathBuf>,
}

/// `users:` (each name once, rules parsed) and `acl_file` (no name of `users:` again).
fn users(
    raw_users: Vec<super::RawUser>,
    raw_acl_file: Option<&PathBuf>,
    base: &Path,
) -> Result<UserSet, ConfigError> {
    let mut users = Vec::with_capacity(raw_users.len());
    let mut command_rates = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (i, u) in raw_users.into_iter().enumerate() {
        let field = format!("users[{i}]");
        if u.name.is_empty()
            || u.name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(ConfigError::invalid(
                format!("{field}.name"),
                "must be non-empty without spaces",
            ));
        }
        if !seen.insert(u.name.clone()) {
            return Err(ConfigError::invalid(
                format!("{field}.name"),
                format!("user '{}' is defined twice", u.name),
            ));
        }
        let rules = expand_env(&format!("{field}.rules"), &u.rules)?;
        let user = acl::parse_user(&u.name, &rules)
            .map_err(|e| ConfigError::invalid(format!("{field}.rules"), e.to_string()))?;
        if let Some(rate) = u.commands_per_second {
            let rate = std::num::NonZeroU32::new(rate).ok_or_else(|| {
                ConfigError::invalid(
                    format!("{field}.commands_per_second"),
                    "must be greater than 0",
                )
            })?;
            command_rates.insert(u.name.clone(), rate);
        }
        users.push(user);
    }
    let configured_users = seen.clone();
    let acl_file = raw_acl_file.as_ref().map(|p| resolve(base, p));
    if let Some(path) = &acl_file {
        let path = path.clone();
        for user in super::aclfile::load_acl_file(&path)? {
            if !seen.insert(user.name.clone()) {
                return Err(ConfigError::file(
                    "acl_file",
                    &path,
                    format!("user '{}' is also defined in users", user.name),
                ));
            }
            users.push(user);
        }
    }
    Ok(UserSet {
        users,
        command_rates,
        configured_users,
        acl_file,
    })
}

/// `limits:`: the protocol limits, the connection limits, and whether state is shared.
fn limits(
    l: super::RawLimits,
) -> Result<(ProtocolLimits, crate::limits::LimitSettings, bool), ConfigError> {
    let limits = protocol_limits(&l)?;
    let (connection_limits, shared_state_upstream) = connection_limits(&l)?;
    let limits = buffer_limits(l, limits)?;
    Ok((limits, connection_limits, shared_state_upstream))
}

/// What a request may be: its size, the pipeline depth, and the time a handshake, a login and
/// a write may take.
fn protocol_limits(l: &super::RawLimits) -> Result<ProtocolLimits, ConfigError> {
    let d = ProtocolLimits::default();
    let max_bulk_len = match l.max_bulk_len {
        None => d.max_bulk_len,
        Some(n) if n >= 1024 && n <= i64::MAX as u64 => n as i64,
        Some(_) => {
            return Err(ConfigError::invalid(
                "limits.max_bulk_len",
                "must be at least 1kb",
            ))
        }
    };
    let max_inline_len = match l.max_inline_len {
        None => d.max_inline_len,
        Some(n) if (1024..=16 * 1024 * 1024).contains(&n) => n as usize,
        Some(_) => {
            return Err(ConfigError::invalid(
                "limits.max_inline_len",
                "must be between 1kb and 16mb",
            ))
        }
    };
    Ok(ProtocolLimits {
        handshake_timeout: nonzero(
            "limits.handshake_timeout",
            l.handshake_timeout,
            d.handshake_timeout,
        )?,
        auth_timeout: nonzero("limits.auth_timeout", l.auth_timeout, d.auth_timeout)?,
        max_bulk_len,
        max_inline_len,
        client_write_timeout: nonzero(
            "limits.client_write_timeout",
            l.client_write_timeout,
            d.client_write_timeout,
        )?,
        max_pipeline: match l.max_pipeline {
            Some(0) => {
                return Err(ConfigError::invalid(
                    "limits.max_pipeline",
                    "must be greater than 0",
                ))
            }
            Some(n) => n,
            None => d.max_pipeline,
        },
        ..d
    })
}

/// What may be buffered: replies per client (hard and soft), a shared connection's inbox per
/// client, all clients together, and how many users there may be.
fn buffer_limits(
    l: super::RawLimits,
    limits: ProtocolLimits,
) -> Result<ProtocolLimits, ConfigError> {
    let out = l.output_buffer_limit.unwrap_or_default();
    let size = |field: &str, v: Option<u64>, default: usize| match v {
        Some(n) if n >= 1024 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(_) => Err(ConfigError::invalid(field, "must be at least 1kb")),
        None => Ok(default),
    };
    Ok(ProtocolLimits {
        idle_timeout: l.idle_timeout.unwrap_or(Duration::ZERO),
        output_hard: size(
            "limits.output_buffer_limit.hard",
            out.hard,
            DEFAULT_OUTPUT_HARD,
        )?,
        output_soft: size(
            "limits.output_buffer_limit.soft",
            out.soft,
            DEFAULT_OUTPUT_SOFT,
        )?,
        output_soft_seconds: out.soft_seconds.unwrap_or(DEFAULT_OUTPUT_SOFT_SECONDS),
        shared_reply_buffer: size(
            "limits.shared_reply_buffer",
            l.shared_reply_buffer,
            DEFAULT_SHARED_REPLY_BUFFER,
        )?,
        max_client_memory: match l.max_client_memory {
            Some(0) => 0,
            Some(n) if n < 1024 * 1024 => {
                return Err(ConfigError::invalid(
                    "limits.max_client_memory",
                    "must be at least 1mb (or 0 for no bound)",
                ))
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => DEFAULT_MAX_CLIENT_MEMORY,
        },
        max_users: match l.max_users {
            Some(0) => {
                return Err(ConfigError::invalid(
                    "limits.max_users",
                    "must be at least 1",
                ))
            }
            Some(n) => n,
            None => DEFAULT_MAX_USERS,
        },
        ..limits
    })
}

/// A duration that must not be zero, or its default.
fn nonzero(field: &str, v: Option<Duration>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        Some(d) if d.is_zero() => Err(ConfigError::invalid(field, "must be greater than 0")),
        Some(d) => Ok(d),
        None => Ok(default),
    }
}

/// The connection caps, rates and lockout of `limits:`, and whether state is shared.
fn connection_limits(
    l: &super::RawLimits,
) -> Result<(crate::limits::LimitSettings, bool), ConfigError> {
    let positive = |field: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(ConfigError::invalid(field, "must be greater than 0")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let rate = |field: &str, v: Option<u32>, default: u32| match v {
        Some(0) => Err(ConfigError::invalid(field, "must be greater than 0")),
        Some(n) => Ok(std::num::NonZeroU32::new(n)),
        None => Ok(std::num::NonZeroU32::new(default)),
    };
    let shared_state_upstream = match l.shared_state.as_deref() {
        None | Some("local") => false,
        Some("upstream") => true,
        Some(other) => {
            return Err(ConfigError::invalid(
                "limits.shared_state",
                format!("`{other}`: local or upstream"),
            ))
        }
    };
    if l.shared_state_database.is_some() && !shared_state_upstream {
        return Err(ConfigError::invalid(
            "limits.shared_state_database",
            "only with limits.shared_state: upstream",
        ));
    }
    if l.shared_state_database == Some(0) {
        return Err(ConfigError::invalid(
            "limits.shared_state_database",
            "must not be 0: every client starts in database 0",
        ));
    }
    let connection_limits = crate::limits::LimitSettings {
        max_connections: positive(
            "limits.max_connections",
            l.max_connections,
            DEFAULT_MAX_CONNECTIONS,
        )?,
        max_connections_per_ip: positive(
            "limits.max_connections_per_ip",
            l.max_connections_per_ip,
            DEFAULT_MAX_CONNECTIONS_PER_IP,
        )?,
        connections_per_second_per_ip: rate(
            "limits.connections_per_second_per_ip",
            l.connections_per_second_per_ip,
            DEFAULT_CONNECTIONS_PER_SECOND_PER_IP,
        )?,
        auth_failures_per_minute: rate(
            "limits.auth_failures_per_minute",
            l.auth_failures_per_minute,
            DEFAULT_AUTH_FAILURES_PER_MINUTE,
        )?,
        auth_lockout: nonzero("limits.auth_lockout", l.auth_lockout, DEFAULT_AUTH_LOCKOUT)?,
    };
    Ok((connection_limits, shared_state_upstream))
}

/// `log.format` and `log.color`.
fn log_settings(log: &super::RawLog) -> Result<(LogFormat, LogColor), ConfigError> {
    let log_format = match log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(ConfigError::invalid(
                "log.format",
                format!("`{other}`: use text or json"),
            ))
        }
    };

    let log_color = match log.color.as_deref() {
        None | Some("auto") => LogColor::Auto,
        Some("always") => LogColor::Always,
        Some("never") => LogColor::Never,
        Some(other) => {
            return Err(ConfigError::invalid(
                "log.color",
                format!("`{other}`: use auto, always or never"),
            ))
        }
    };
    Ok((log_format, log_color))
}

/// Relative paths in the file are relative to the file's own directory, so a config works
/// the same whatever the working directory (systemd starts services in `/`).
pub(super) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Replaces every `${NAME}` with the environment variable NAME; an unset one is an error naming
/// the field (the value is never echoed: it may be a secret).
pub(super) fn expand_env(field: &str, s: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError::invalid(field, "unterminated ${...}"))?;
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| {
            ConfigError::invalid(field, format!("environment variable {name} is not set"))
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
