//! Hot reload: on SIGHUP, and when the config file or a certificate, key, CA or CRL file it
//! names changes, the configuration is loaded and checked again and, if it is good, swapped in
//! whole: users and rules, limits (caps, rates, lockout, client memory), command rates, and
//! every listener setting (allow/deny, proxy_protocol, certificates, TLS versions, mTLS).
//! Connections stay up; each picks the new users up at its next command (removed or disabled
//! users are disconnected), and each new connection is admitted and handshaken with the new
//! listener settings. A bad new configuration is logged and the running one stays.
//!
//! What cannot change in a running process (a listen address, the upstream, the admin
//! endpoint, `workers`, the audit file, logging, `shutdown_grace`) is named, setting by
//! setting, in a warning: it takes effect at the next restart. Nothing is ignored in silence.
//!
//! Reading files and building TLS configs is blocking work: the watcher runs it on tokio's
//! blocking pool, never on the async workers that serve clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::listener::ListenerSettings;
use crate::shared::Shared;

/// How often watched files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

/// A running listener: the address the file gave it (port 0 means any), the address it is
/// bound to, and its settings.
struct Slot {
    configured: SocketAddr,
    bound: SocketAddr,
    settings: Arc<ArcSwap<ListenerSettings>>,
}

impl Slot {
    /// Whether a listener of a new configuration is this one.
    fn is(&self, addr: SocketAddr) -> bool {
        addr == self.configured || addr == self.bound
    }
}

struct Inner {
    shared: Arc<Shared>,
    listeners: Vec<Slot>,
    path: Mutex<Option<PathBuf>>,
    /// The configuration the process started with: restart-only settings are compared with
    /// it, so the warning repeats at every reload until a restart applies them.
    startup: Config,
}

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to reload from")]
    NoPath,
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("listen[{index}].tls: {source}")]
    Tls {
        index: usize,
        source: crate::tls::TlsError,
    },
}

/// The settings that differ between `running` and `new` but only take effect at a restart,
/// each named as the config file names it.
/// (Listen addresses are compared by the reloader, which knows the bound ones.)
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let (u, v) = (&running.upstream, &new.upstream);
    let mut field = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_owned());
        }
    };
    field("upstream.address", u.addr != v.addr);
    field("upstream.sentinel", u.sentinel != v.sentinel);
    field("upstream.username", u.username != v.username);
    field("upstream.password", u.password != v.password);
    field(
        "upstream.connect_timeout",
        u.connect_timeout != v.connect_timeout,
    );
    field(
        "upstream.tls",
        u.tls.as_ref().map(|t| (&t.ca, &t.server_name))
            != v.tls.as_ref().map(|t| (&t.ca, &t.server_name)),
    );
    field(
        "upstream.shared_connections",
        u.shared_connections != v.shared_connections,
    );
    field("admin.address", running.admin_address != new.admin_address);
    field("workers", running.workers != new.workers);
    field("audit.file", running.audit_file != new.audit_file);
    field("log.level", running.log_level != new.log_level);
    field("log.format", running.log_format != new.log_format);
    field("log.color", running.log_color != new.log_color);
    field(
        "shutdown_grace",
        running.shutdown_grace != new.shutdown_grace,
    );
    changed
}

impl Reloader {
    /// `listeners`: each configured listener's bound address and settings, in config order.
    pub fn new(
        shared: Arc<Shared>,
        listeners: Vec<(SocketAddr, Arc<ArcSwap<ListenerSettings>>)>,
        cfg: &Config,
    ) -> Self {
        Reloader {
            inner: Arc::new(Inner {
                shared,
                listeners: cfg
                    .listeners
                    .iter()
                    .zip(listeners)
                    .map(|(l, (bound, settings))| Slot {
                        configured: l.addr,
                        bound,
                        settings,
                    })
                    .collect(),
                path: Mutex::new(None),
                startup: cfg.clone(),
            }),
        }
    }

    pub fn set_path(&mut self, path: PathBuf) {
        if let Ok(mut p) = self.inner.path.lock() {
            *p = Some(path);
        }
    }

    fn path(&self) -> Option<PathBuf> {
        self.inner.path.lock().ok().and_then(|p| p.clone())
    }

    /// Loads, checks and applies the configuration file; on any error nothing changes.
    /// Returns the settings that changed but need a restart (also logged). Blocking: file
    /// reads and TLS set-up (the watcher calls it on the blocking pool).
    ///
    /// # Errors
    /// The [`ReloadError`] that kept the new configuration out.
    pub fn reload(&self) -> Result<Vec<String>, ReloadError> {
        let path = self.path().ok_or(ReloadError::NoPath)?;
        let cfg = config::load(&path)?;
        // Build every new listener setting before swapping anything: all or nothing.
        let mut updates = Vec::with_capacity(self.inner.listeners.len());
        let mut restart = Vec::new();
        for (index, l) in cfg.listeners.iter().enumerate() {
            let Some(slot) = self.inner.listeners.iter().find(|s| s.is(l.addr)) else {
                restart.push(format!("listen[{index}].address: new address {}", l.addr));
                continue;
            };
            let tls = match &l.tls {
                Some(t) => Some(TlsAcceptor::from(
                    crate::tls::server_config(t)
                        .map_err(|source| ReloadError::Tls { index, source })?,
                )),
                None => None,
            };
            updates.push((
                Arc::clone(&slot.settings),
                ListenerSettings {
                    cfg: l.clone(),
                    tls,
                },
            ));
        }
        for slot in &self.inner.listeners {
            if !cfg.listeners.iter().any(|l| slot.is(l.addr)) {
                restart.push(format!(
                    "listen: {} removed (it keeps listening, with its last settings, until a restart)",
                    slot.bound
                ));
            }
        }
        restart.extend(restart_only_changes(&self.inner.startup, &cfg));
        for setting in &restart {
            warn!(setting = %setting, "changed in the configuration, but takes effect only at the next restart");
        }
        for (slot, settings) in updates {
            slot.store(Arc::new(settings));
        }
        let generation = self.inner.shared.next_generation();
        self.inner.shared.publish(&cfg, generation);
        info!(
            generation,
            users = cfg.users.len(),
            "configuration reloaded"
        );
        Ok(restart)
    }

    /// Reloads on the blocking pool and logs the outcome.
    async fn reload_logged(&self, why: &'static str) {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.reload()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => error!(
                trigger = why,
                "reload refused, keeping the running configuration: {e}"
            ),
            Err(e) => error!(trigger = why, "reload failed: {e}"),
        }
    }

    /// Reloads on SIGHUP and on file changes until `stop` fires.
    pub async fn watch(self, stop: CancellationToken) {
        if self.path().is_none() {
            return;
        }
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = self.stamps().await;
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.reload_logged("SIGHUP").await;
                    seen = self.stamps().await;
                }
                _ = tick.tick() => {
                    let now = self.stamps().await;
                    if now != seen {
                        seen = now;
                        self.reload_logged("file change").await;
                    }
                }
            }
        }
    }

    /// Modification times of the config file and every file it names for TLS (read on the
    /// blocking pool).
    async fn stamps(&self) -> Vec<Option<SystemTime>> {
        let Some(path) = self.path() else {
            return Vec::new();
        };
        tokio::task::spawn_blocking(move || stamps_of(&path))
            .await
            .unwrap_or_default()
    }
}

fn stamps_of(path: &std::path::Path) -> Vec<Option<SystemTime>> {
    let mut files = vec![path.to_owned()];
    if let Ok(cfg) = config::load(path) {
        for l in &cfg.listeners {
            if let Some(t) = &l.tls {
                files.push(t.cert.clone());
                files.push(t.key.clone());
                if let Some(cc) = &t.client_certs {
                    files.push(cc.ca.clone());
                    files.extend(cc.crls.iter().cloned());
                }
            }
        }
    }
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}
