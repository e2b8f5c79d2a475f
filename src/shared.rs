//! What every session shares, process-wide: the reloadable part of the configuration
//! ([`Live`]), the upstream connector and shared connections, the audit sink, the limiter, the
//! memory bound and the metrics.
//!
//! It lives apart from the per-connection code (`session`) and from the code that replaces
//! it (`reload`), so neither depends on the other: a session reads `Shared`, a reload
//! [`publishes`](Shared::publish) into it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::audit::Audit;
use crate::clients::Clients;
use crate::config::{Config, ProtocolLimits, Users};
use crate::limits::{CommandRate, Limiter};
use crate::memory::ClientMemory;
use crate::metrics::Metrics;
use crate::mux::{Pool, Pools};
use crate::throttle::Throttle;
use crate::upstream::{Connector, Setup};

/// What every session shares: the reloadable part ([`Live`]), the upstream connector, the
/// audit sink, the limiter and the metrics.
#[derive(Debug)]
pub struct Shared {
    /// Swapped whole by a reload; sessions pick up the new one at their next command.
    pub live: ArcSwap<Live>,
    /// `live`'s generation, readable with one atomic load per command (cheaper than loading
    /// `live` itself to find out that nothing changed).
    pub generation: AtomicU64,
    pub connector: Connector,
    /// Shared upstream connections (`upstream.shared_connections`), by target; `None`: a
    /// connection per client.
    pub pools: Option<Pools>,
    pub audit: Arc<Audit>,
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<Metrics>,
    /// What all clients buffer, and who is disconnected past `limits.max_client_memory`.
    pub memory: Arc<ClientMemory>,
    /// Refused connections and TLS failures: a few log lines per second, then a count.
    pub refusal_lines: Throttle,
    /// redward's own clients, for `CLIENT LIST`, `CLIENT INFO` and `CLIENT KILL`.
    pub clients: Arc<Clients>,
    /// A `CLIENT PAUSE` one of redward's clients set (`pause.rs`).
    pub pause: crate::pause::Pause,
    /// `limits.shared_state: upstream`: failed logins also counted in Redis, and the names
    /// that counting uses reserved (`shared_limits.rs`). Set once, when the server runs.
    pub shared_limits: std::sync::OnceLock<crate::shared_limits::SharedLimits>,
    /// Names under `redward:` are no client's (`shared_limits::reserved`): set with shared
    /// state, and in front of a cluster whose port map redward keeps in it
    /// (`cluster/port_map.rs`).
    pub reserved_names: std::sync::atomic::AtomicBool,
    /// Redis's number of databases (probed with `SELECT` at start-up, `Connector::databases`);
    /// 0 until learned. `SELECT`
    /// rides shared connections only for a database known to exist.
    pub databases: std::sync::atomic::AtomicU32,
    /// With `limits.shared_state: upstream`, the database that state lives in, hidden from
    /// clients (`shared_limits::reserved`); `u32::MAX` without shared state (`bind` refuses to
    /// start it without a database of its own).
    pub state_db: std::sync::atomic::AtomicU32,
    /// A Redis Cluster behind (`upstream.cluster` or `cluster_announce`): what replies that
    /// name nodes are rewritten with. Set once, at start-up.
    pub cluster: std::sync::OnceLock<Arc<dyn crate::announce::Announce>>,
    /// `limits.shared_state: upstream` with `commands_per_second`: each rated user's budget,
    /// leased from Redis (`shared_rates.rs`). Set once, when the server runs.
    pub shared_rates: std::sync::OnceLock<crate::shared_rates::SharedRates>,
    /// The users in force, as the configuration and `ACL SETUSER`/`DELUSER`/`LOAD` left them
    /// (`runtime_users.rs`).
    pub runtime_users: crate::runtime_users::RuntimeUsers,
    /// `limits.shared_state: upstream`: run-time user changes passed to the other instances
    /// (`shared_users.rs`). Set once, when the server runs.
    pub shared_users: std::sync::OnceLock<crate::shared_users::SharedUsers>,
    /// Hands out generations to reloads and user changes alike.
    next_generation: AtomicU64,
}

/// The part of the configuration a reload replaces without dropping connections.
#[derive(Debug)]
pub struct Live {
    pub users: Users,
    pub limits: ProtocolLimits,
    /// `commands_per_second`, by user name.
    pub command_rates: HashMap<String, Arc<CommandRate>>,
    /// Increases with every reload and every change of users at run time.
    pub generation: u64,
    /// Whether a user disabled since is disconnected at its next command: a configuration
    /// reload's choice; `ACL SETUSER ... off` leaves connections up, as Redis does.
    pub disconnect_disabled: bool,
}

impl Live {
    /// The reloadable part of `cfg`, numbered `generation`.
    pub fn from_config(cfg: &Config, generation: u64) -> Live {
        Live {
            users: cfg.users.clone(),
            limits: cfg.limits,
            command_rates: cfg
                .command_rates
                .iter()
                .map(|(name, rate)| (name.clone(), Arc::new(crate::limits::command_rate(*rate))))
                .collect(),
            generation,
            disconnect_disabled: true,
        }
    }
}

impl Shared {
    /// What the sessions of a server started from `cfg` share (generation 0 of the
    /// reloadable part).
    pub fn new(
        cfg: &Config,
        connector: Connector,
        pools: Option<Pools>,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
    ) -> Arc<Shared> {
        let memory = Arc::new(ClientMemory::new(
            cfg.limits.max_client_memory,
            metrics.client_memory.clone(),
            metrics.clients_evicted.clone(),
        ));
        audit.count_toward(Arc::clone(&memory));
        Arc::new(Shared {
            live: ArcSwap::from_pointee(Live::from_config(cfg, 0)),
            generation: AtomicU64::new(0),
            connector,
            pools,
            audit,
            limiter: Arc::new(Limiter::new(cfg.connection_limits)),
            metrics,
            memory,
            refusal_lines: Throttle::default(),
            clients: Arc::new(Clients::default()),
            pause: crate::pause::Pause::default(),
            shared_limits: std::sync::OnceLock::new(),
            reserved_names: std::sync::atomic::AtomicBool::new(false),
            databases: std::sync::atomic::AtomicU32::new(0),
            state_db: std::sync::atomic::AtomicU32::new(u32::MAX),
            cluster: std::sync::OnceLock::new(),
            shared_rates: std::sync::OnceLock::new(),
            runtime_users: crate::runtime_users::RuntimeUsers::new(cfg),
            shared_users: std::sync::OnceLock::new(),
            next_generation: AtomicU64::new(0),
        })
    }

    /// Everything sessions share, for `cfg`, without listeners, admin endpoint or shared
    /// upstream connections: for driving sessions in memory (`session::Offline`).
    ///
    /// # Errors
    /// A [`crate::tls::TlsError`] when the upstream TLS settings cannot be loaded.
    pub fn offline(cfg: &Config) -> Result<Arc<Shared>, crate::tls::TlsError> {
        Ok(Shared::new(
            cfg,
            Connector::new(&cfg.upstream)?,
            None,
            Arc::new(Audit::default()),
            Arc::new(Metrics::new()),
        ))
    }

    /// Installs a reloaded configuration: limits and memory bound at once, users, protocol
    /// limits and command rates for every session's next command.
    pub fn publish(&self, cfg: &Config, generation: u64) {
        self.limiter.update(cfg.connection_limits);
        self.memory.set_limit(cfg.limits.max_client_memory);
        // Run-time user changes not yet saved stay on top of the reloaded users.
        let users = self.runtime_users.reloaded(cfg);
        let cfg = &Config {
            users,
            ..cfg.clone()
        };
        // The upstream users follow the users, before any session sees the new ones.
        if let Some(ids) = self.connector.identities() {
            let changes = ids.update(cfg.users.iter());
            self.identities_changed(ids, changes);
        }
        self.live
            .store(Arc::new(Live::from_config(cfg, generation)));
        // Published after the new configuration, so a session that sees the new number also
        // sees what it numbers.
        self.generation.store(generation, Ordering::Release);
    }

    /// After the upstream identities changed: the metric, the pools of removed users
    /// stopped, and the changes made on the servers behind (`upstream/provision.rs`).
    fn identities_changed(
        &self,
        ids: &Arc<crate::upstream::Identities>,
        changes: crate::upstream::identity::Changes,
    ) {
        self.metrics
            .upstream_users
            .set(i64::try_from(ids.len()).unwrap_or(i64::MAX));
        if let Some(pools) = &self.pools {
            let gone: Vec<_> = changes.removed.iter().map(|(tag, _)| *tag).collect();
            pools.retire(&gone);
        }
        crate::upstream::provision::apply(&self.connector, ids, changes);
    }

    /// A generation number no reload or user change has used.
    pub fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Installs users changed at run time (`ACL SETUSER`, `DELUSER`, `LOAD`): every session
    /// picks them up at its next command; a removed user's sessions close, a disabled one's
    /// stay (Redis's semantics). The upstream users follow.
    pub fn publish_users(&self, changed: &crate::runtime_users::Changed) {
        if let Some(ids) = self.connector.identities() {
            let changes = ids.update_some(&changed.set, &changed.removed);
            self.identities_changed(ids, changes);
        }
        let generation = self.next_generation();
        let old = self.live.load_full();
        self.live.store(Arc::new(Live {
            users: changed.users.clone(),
            limits: old.limits,
            command_rates: old.command_rates.clone(),
            generation,
            disconnect_disabled: false,
        }));
        self.generation.store(generation, Ordering::Release);
    }

    /// The shared connections to `connector`'s target (the configured upstream, or a cluster
    /// node) set up as `setup` (a client's protocol and database), if shared connections are
    /// on.
    pub fn pool(&self, connector: &Connector, setup: Setup) -> Option<Arc<Pool>> {
        Some(self.pools.as_ref()?.get(connector.target(), setup))
    }

    /// The database `limits.shared_state: upstream` keeps its state in, if one is hidden.
    pub fn state_db(&self) -> Option<u32> {
        Some(self.state_db.load(Ordering::Relaxed)).filter(|d| *d != u32::MAX)
    }

    /// Redis's number of databases, 0 if not known.
    pub fn databases(&self) -> u32 {
        self.databases.load(Ordering::Relaxed)
    }

    /// The generation of the configuration in force (one atomic load).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
