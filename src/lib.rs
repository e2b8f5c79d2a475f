//! redward: a proxy that stands in front of Redis and makes an exposed Redis safe.
//!
//! # Layout
//! - [`config`]: the YAML file, checked into a [`Config`]; errors name the field or file.
//! - [`tls`]: rustls server/client configs, development certificates.
//! - [`listener`]: bind, accept, TLS handshake under a deadline, spawn a session.
//! - [`session`]: one client's life, as phases: login, dispatch, route, the reply path.
//! - [`shared`]: what every session shares (the reloadable part, pools, limiter, metrics).
//! - [`fault`]: whose fault an error is. [`net_io`]: the write helper sessions and `mux` share.
//! - [`resp`]: request framing and reply scanning (no I/O), Redis's own reply texts.
//! - [`commands`]: Redis's command table (generated), existence and arity like Redis, and the
//!   catalog in force (amended by the server behind). [`learn`]: asking that server.
//! - [`auth`]: AUTH and HELLO against redward's users. [`acl`]: users and rules.
//! - [`upstream`]: connections to a target Redis, authenticated with redward's own credential,
//!   then (`upstream.identity: per_user`) as the client's own upstream user; what a fixed,
//!   Sentinel or cluster target changes on a session's reply path (`upstream::kind`).
//! - [`mux`]: shared upstream connections, a pool per target (many clients' requests in one
//!   write).
//! - [`limits`]: connection caps and rates, login lockout, command rates. [`memory`]: the
//!   bound on what all clients together buffer. [`throttle`]: log lines an attacker can cause.
//! - [`shared_limits`], [`shared_rates`], [`shared_signing`], [`shared_users`]:
//!   `limits.shared_state: upstream` (lockouts, command rates, signed lockout messages, users
//!   changed at run time) kept in the Redis behind.
//! - [`runtime_users`]: users changed at run time (`ACL SETUSER`, `DELUSER`, `SAVE`, `LOAD`)
//!   beside the configuration's. [`audit`]: denials, failed logins and user changes (log,
//!   `ACL LOG`, JSON lines). [`clients`]: the registry `CLIENT LIST`/`KILL` read.
//! - [`cluster`]: `upstream.cluster`, a listener per node on the port every instance agrees
//!   on (a map kept in the cluster); [`announce`]: the rewriting of what a cluster says about
//!   its nodes (pure).
//! - [`admin`]: the metrics and health endpoint. [`notify`]: the service manager's readiness
//!   notification. [`stunnel`]: reading an stunnel.conf into a redward configuration.
//! - [`pause`]: `CLIENT PAUSE` as redward follows it. [`proxy_header`]: the PROXY protocol
//!   header. [`reload`]: SIGHUP and file changes.
//! - [`shutdown`]: the signal future.

#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod announce;
pub mod audit;
pub mod auth;
pub mod clients;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod learn;
pub mod limits;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod mux;
pub mod net_io;
pub mod notify;
pub mod pause;
pub mod proxy_header;
pub mod reload;
pub mod resp;
pub mod runtime_users;
pub mod session;
pub mod shared;
pub mod shared_limits;
pub mod shared_rates;
pub mod shared_signing;
pub mod shared_users;
pub mod shutdown;
pub mod stunnel;
pub mod throttle;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// Why redward could not start. Each is one line naming the culprit.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("listen[{index}].tls: {source}")]
    Tls { index: usize, source: tls::TlsError },
    #[error("upstream.tls: {0}")]
    UpstreamTls(tls::TlsError),
    #[error("admin.address {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("audit.file: {path}: {source}")]
    Audit {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// `upstream.cluster`: a node got no listener.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// `upstream.cluster` needs a listener whose settings the node listeners take.
    #[error("listen: upstream.cluster needs at least one listener")]
    NoListener,
    /// `upstream.identity: per_user`: Redis refused the upstream users.
    #[error(transparent)]
    Identity(#[from] upstream::provision::ProvisionError),
    #[error("listen[{index}].address {addr}: {source}")]
    Bind {
        index: usize,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The database `limits.shared_state: upstream` hides its state in: the one configured
/// (which must exist, where Redis says how many it has), else Redis's last. Never database 0
/// by default: there `KEYS`, `SCAN` and `FLUSHDB` would reach it, so when Redis has a single
/// database, or cannot say how many, start-up is refused naming the field.
fn state_database(configured: Option<u32>, databases: Option<u32>) -> Result<u32, StartError> {
    let refuse = |why: String| {
        Err(StartError::Config(config::ConfigError::invalid(
            "limits.shared_state_database",
            why,
        )))
    };
    match (configured, databases) {
        (Some(db), Some(n)) if db >= n => refuse(format!(
            "{db}: Redis has databases 0 to {}",
            n.saturating_sub(1)
        )),
        (Some(db), _) => Ok(db),
        (None, Some(n)) if n >= 2 => Ok(n - 1),
        (None, Some(_)) => refuse(
            "Redis has database 0 only; the shared state needs one of its own \
             (set databases 2 or more in redis.conf)"
                .to_owned(),
        ),
        (None, None) => refuse(format!(
            "could not learn how many databases Redis has within {}s (Redis down, or SELECT \
             refused to redward's user); start Redis first or set this field",
            STATE_PROBE_WAIT.as_secs()
        )),
    }
}

/// How long start-up waits for Redis to say how many databases it has, when the shared
/// state's database depends on it (a sidecar's Redis may start a moment after redward).
const STATE_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every second: the failover metrics, the audit log's flush, the counts of log lines a burst
/// kept back; every minute: forget rate-limiter state of addresses that went quiet, so it
/// stays bounded. Runs until aborted at shutdown.
async fn housekeeping(shared: Arc<shared::Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut n: u64 = 0;
    // What the failover metrics last showed (Sentinel-followed upstream only).
    let (mut failovers, mut master): (u64, Option<String>) = (0, None);
    loop {
        tick.tick().await;
        if let upstream::Target::Sentinel(s) = shared.connector.target() {
            let now = s.failovers();
            shared
                .metrics
                .upstream_failovers
                .inc_by(now.saturating_sub(failovers));
            failovers = now;
            let current = s.current().map(|a| a.to_string());
            if current.is_some() && current != master {
                if let Some(c) = &current {
                    shared.metrics.master_is(c, master.as_deref());
                }
                master = current;
            }
        }
        shared.audit.flush_log();
        // A drained audit file queue gives its bytes back to the memory bound.
        shared.audit.settle();
        if let Some((count, over)) = shared.memory.log_lines.flush() {
            warn!(
                count,
                seconds = over.as_secs_f64(),
                "clients disconnected over limits.max_client_memory, not logged one by one (burst)"
            );
        }
        if let Some((count, over)) = shared.refusal_lines.flush() {
            warn!(
                count,
                seconds = over.as_secs_f64(),
                "connections refused (or TLS failures) not logged one by one (burst)"
            );
        }
        n += 1;
        if n.is_multiple_of(60) {
            shared.limiter.housekeeping();
        }
    }
}

/// A cluster behind (`upstream.cluster`, or the sidecar's `cluster_announce`): what replies
/// naming nodes are rewritten with. With the shared port map, names under `redward:` are
/// no client's (`cluster/port_map.rs`) and the upstream users' key patterns leave them out.
fn announce_cluster(
    shared: &shared::Shared,
    cfg: &Config,
    cluster: Option<&Arc<cluster::Cluster>>,
    identities: Option<&Arc<upstream::identity::Identities>>,
) {
    let Some(cluster) = cluster else {
        if !cfg.upstream.cluster_announce.is_empty() {
            let fixed = announce::Fixed::new(&cfg.upstream.cluster_announce);
            let _ = shared.cluster.set(Arc::new(fixed));
        }
        return;
    };
    let _ = shared.cluster.set(Arc::clone(cluster) as _);
    if !cfg
        .upstream
        .cluster
        .as_ref()
        .is_some_and(|c| c.shared_ports)
    {
        return;
    }
    shared
        .reserved_names
        .store(true, std::sync::atomic::Ordering::Relaxed);
    if let (Some(ids), false) = (identities, cfg.shared_state_upstream) {
        ids.confine(upstream::confine::Confine {
            state_db: u32::MAX,
            databases: 1,
        });
    }
}

/// `limits.shared_state: upstream`: lockouts, run-time users and command rates kept in
/// database `db` of the Redis behind, each followed by a task of its own until `stop`.
async fn start_shared_state(
    shared: &Arc<shared::Shared>,
    db: u32,
    command_rates: &std::collections::HashMap<String, std::num::NonZeroU32>,
    stop: &CancellationToken,
) {
    let state = upstream::Setup {
        resp3: false,
        db,
        user: None,
    };
    let limits = shared_limits::SharedLimits::start(
        shared.connector.with_setup(state),
        Arc::clone(&shared.limiter),
        stop.clone(),
    );
    let _ = shared.shared_limits.set(limits);
    // Users changed at run time, shared through Redis (`shared_users.rs`).
    let install: shared_users::Install = {
        let shared = Arc::clone(shared);
        Arc::new(
            move |lines: &[Vec<u8>]| match shared.runtime_users.replace_from_lines(lines) {
                Ok(Some(changed)) => shared.publish_users(&changed),
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "shared users: Redis holds users this instance cannot read; keeping its own")
                }
            },
        )
    };
    let users = shared_users::SharedUsers::start(
        shared.connector.with_setup(state),
        shared.runtime_users.runtime_lines(),
        install,
        stop.clone(),
    )
    .await;
    let _ = shared.shared_users.set(users);
    if !command_rates.is_empty() {
        let rates = shared_rates::SharedRates::start(
            shared.connector.with_setup(state),
            command_rates,
            stop.clone(),
        );
        let _ = shared.shared_rates.set(rates);
    }
}

/// A cluster behind (`upstream.cluster`): its nodes found, a listener for each (with the
/// first listener's settings), and the connector's target made the entry node, whichever
/// answers (`cluster.rs`). Without one, the connector as it was.
async fn follow_cluster(
    cfg: &Config,
    slots: &[ListenerSlot],
    connector: upstream::Connector,
    metrics: &Arc<metrics::Metrics>,
) -> Result<(upstream::Connector, Option<Arc<cluster::Cluster>>), StartError> {
    let Some(c) = &cfg.upstream.cluster else {
        return Ok((connector, None));
    };
    let settings = slots
        .first()
        .map(|(_, s)| Arc::clone(s))
        .ok_or(StartError::NoListener)?;
    let cluster = cluster::Cluster::discover(c, settings, connector.clone(), metrics).await?;
    for (port, node) in cluster.listeners() {
        tracing::info!(port, %node, "cluster node listener");
    }
    let connector = connector.to_target(upstream::Target::Chosen(Arc::clone(&cluster) as _));
    Ok((connector, Some(cluster)))
}

/// The audit trail: `audit_file` opened for appending, or the log and `ACL LOG` only.
async fn open_audit(cfg: &Config) -> Result<audit::Audit, StartError> {
    match &cfg.audit_file {
        Some(path) => audit::Audit::with_file(path)
            .await
            .map_err(|source| StartError::Audit {
                path: path.clone(),
                source,
            }),
        None => Ok(audit::Audit::default()),
    }
}

/// A listener's address as bound and the settings its sessions read (swapped by a reload).
type ListenerSlot = (
    std::net::SocketAddr,
    Arc<arc_swap::ArcSwap<listener::ListenerSettings>>,
);

/// Every `listen` entry bound, with its TLS configuration loaded; the first error names the
/// listener by its place in the list.
fn bind_listeners(
    cfg: &Config,
) -> Result<(Vec<listener::Listener>, Vec<ListenerSlot>), StartError> {
    let mut listeners = Vec::with_capacity(cfg.listeners.len());
    let mut slots = Vec::with_capacity(cfg.listeners.len());
    for (index, l) in cfg.listeners.iter().enumerate() {
        let tls = match &l.tls {
            Some(t) => Some(TlsAcceptor::from(
                tls::server_config(t).map_err(|source| StartError::Tls { index, source })?,
            )),
            None => None,
        };
        let settings = Arc::new(arc_swap::ArcSwap::from_pointee(
            listener::ListenerSettings {
                cfg: l.clone(),
                tls,
            },
        ));
        let tcp = bind(l.addr).map_err(|source| StartError::Bind {
            index,
            addr: l.addr,
            source,
        })?;
        slots.push((tcp.local_addr().unwrap_or(l.addr), Arc::clone(&settings)));
        let listener =
            listener::Listener::new(tcp, settings).map_err(|source| StartError::Bind {
                index,
                addr: l.addr,
                source,
            })?;
        listeners.push(listener);
    }
    Ok((listeners, slots))
}

/// Redis's number of databases, asked again every second for up to [`STATE_PROBE_WAIT`].
async fn probe_databases(connector: &upstream::Connector) -> Option<u32> {
    let deadline = tokio::time::Instant::now() + STATE_PROBE_WAIT;
    loop {
        if let Some(n) = connector.databases().await {
            return Some(n);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        warn!("limits.shared_state: upstream: waiting for Redis to say how many databases it has");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Listen backlog: a burst of new connections waits in the kernel instead of being dropped
/// (with SYN cookies a dropped one looks connected to the client but is not).
const LISTEN_BACKLOG: u32 = 4096;

pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A bound, ready-to-run proxy. Binding is separate from running so that every start-up
/// failure happens before anyone is served, and so tests can bind port 0 and read the port.
pub struct Server {
    listeners: Vec<listener::Listener>,
    admin: Option<(TcpListener, Arc<admin::Admin>)>,
    reloader: reload::Reloader,
    shared: Arc<shared::Shared>,
    grace: std::time::Duration,
    /// `limits.shared_state: upstream`.
    shared_state_upstream: bool,
    /// `upstream.cluster`: the nodes' listeners and the topology's refresh, started by `run`.
    cluster: Option<Arc<cluster::Cluster>>,
    /// With `shared_state: upstream`, the users' `commands_per_second`, shared by lease.
    command_rates: std::collections::HashMap<String, std::num::NonZeroU32>,
}

impl Server {
    /// Loads certificates, prepares the upstream connector and binds every listener.
    ///
    /// # Errors
    /// A [`StartError`] naming the listener, file or address at fault.
    pub async fn bind(cfg: &Config) -> Result<Server, StartError> {
        for w in cfg.warnings() {
            warn!("{w}");
        }
        let connector = upstream::Connector::new(&cfg.upstream).map_err(StartError::UpstreamTls)?;
        let audit = Arc::new(open_audit(cfg).await?);
        let (listeners, slots) = bind_listeners(cfg)?;
        let metrics = Arc::new(metrics::Metrics::new());
        // `upstream.identity: per_user`: every connection made from here on (node listeners'
        // included) can log in as a redward user's own upstream user; the users' rules are
        // written once the server behind is known (`describe` follows its flavor).
        let identities = (cfg.upstream.identity == config::IdentityMode::PerUser).then(|| {
            Arc::new(upstream::Identities::new(
                cfg.upstream.username.as_deref(),
                cfg.upstream.password.as_ref().map(config::Secret::expose),
                [],
            ))
        });
        let connector = match &identities {
            Some(ids) => connector.with_identities(Arc::clone(ids)),
            None => connector,
        };
        let (connector, cluster) = follow_cluster(cfg, &slots, connector, &metrics).await?;
        // The server behind: its command table, flavor and version (`learn`). Redis may be
        // down when redward starts: then the generated Redis 7.0 table is used, and that is
        // logged; every later upstream (re)connect may learn again.
        learn::learn_and_log(&connector, cfg.upstream.connect_timeout).await;
        let admin = match cfg.admin_address {
            Some(addr) => Some((
                admin::bind(addr)
                    .await
                    .map_err(|source| StartError::Admin { addr, source })?,
                Arc::new(admin::Admin::new(Arc::clone(&metrics), connector.clone())),
            )),
            None => None,
        };
        let pool = (cfg.upstream.shared_connections > 0)
            .then(|| mux::Pools::start(cfg.upstream.shared_connections, &connector, &metrics));
        let in_cluster =
            cfg.upstream.cluster.is_some() || !cfg.upstream.cluster_announce.is_empty();
        let databases = if in_cluster {
            // A cluster node has database 0 alone and refuses every other SELECT ("not
            // allowed in cluster mode"): nothing to probe, and 255 refusals in its error
            // counters otherwise.
            None
        } else if cfg.shared_state_upstream && cfg.shared_state_database.is_none() {
            probe_databases(&connector).await
        } else {
            connector.databases().await
        };
        let shared = shared::Shared::new(cfg, connector, pool, audit, Arc::clone(&metrics));
        if let Some(n) = databases {
            // SELECT rides shared connections only for a database known to exist.
            shared
                .databases
                .store(n, std::sync::atomic::Ordering::Relaxed);
        }
        announce_cluster(&shared, cfg, cluster.as_ref(), identities.as_ref());
        if cfg.shared_state_upstream {
            let db = state_database(cfg.shared_state_database, databases)?;
            shared
                .state_db
                .store(db, std::sync::atomic::Ordering::Relaxed);
            // Guarded from the first client on: the listeners accept before the shared
            // state's tasks have started (`run`).
            shared
                .reserved_names
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(ids) = &identities {
                ids.confine(upstream::confine::Confine {
                    state_db: db,
                    databases: databases.unwrap_or(db + 1).max(db + 1),
                });
            }
        }
        if let Some(ids) = &identities {
            ids.update(cfg.users.iter());
            metrics
                .upstream_users
                .set(i64::try_from(ids.len()).unwrap_or(i64::MAX));
            upstream::provision::at_start(&shared.connector).await?;
        }
        let reloader = reload::Reloader::new(Arc::clone(&shared), slots, cfg);
        Ok(Server {
            listeners,
            admin,
            shared,
            reloader,
            grace: cfg.shutdown_grace,
            shared_state_upstream: cfg.shared_state_upstream,
            cluster,
            command_rates: cfg.command_rates.clone(),
        })
    }

    /// Reloads from this file on SIGHUP and whenever it or a certificate file it names
    /// changes. Without it the configuration is fixed for the process's life.
    pub fn reload_from(mut self, path: std::path::PathBuf) -> Self {
        self.reloader.set_path(path);
        self
    }

    /// The reload handle (tests trigger reloads with it).
    pub fn reloader(&self) -> reload::Reloader {
        self.reloader.clone()
    }

    /// The admin endpoint's address, when one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The bound addresses, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(listener::Listener::local_addr)
            .collect()
    }

    /// Serves until `shutdown` resolves, then stops accepting and gives connections the grace
    /// period to finish the requests in flight.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        for l in self.listeners {
            tasks.spawn(l.accept_loop(Arc::clone(&self.shared), stop.clone(), tasks.clone()));
        }
        if let Some((listener, admin)) = self.admin {
            tokio::spawn(admin.serve(listener, stop.clone()));
        }
        // `bind` refused to start without a database of the state's own, so with
        // `shared_state: upstream` there is one.
        if let Some(db) = self
            .shared
            .state_db()
            .filter(|_| self.shared_state_upstream)
        {
            start_shared_state(&self.shared, db, &self.command_rates, &stop).await;
        }
        if let Some(cluster) = &self.cluster {
            cluster.run(&self.shared, stop.clone(), tasks.clone());
        }
        if let upstream::Target::Sentinel(sentinel) = self.shared.connector.target() {
            // `+switch-master` and the periodic re-check (`upstream/sentinel.rs`).
            tokio::spawn(Arc::clone(sentinel).watch(stop.clone()));
        }
        let housekeeping = tokio::spawn(housekeeping(Arc::clone(&self.shared)));
        let watcher = tokio::spawn(self.reloader.clone().watch(stop.clone()));
        shutdown.await;
        watcher.abort();
        housekeeping.abort();
        stop.cancel();
        tasks.close();
        if tokio::time::timeout(self.grace, tasks.wait())
            .await
            .is_err()
        {
            warn!(grace = ?self.grace, "shutdown grace period over; closing remaining connections");
        } else {
            info!("all connections closed");
        }
    }
}
