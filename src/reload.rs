//! Hot reload: on SIGHUP, and when the config file or a certificate, key, CA or CRL file it
//! names changes, the configuration is loaded and checked again and, if it is good, swapped in
//! whole: users and rules, limits, command rates, listener certificates. Connections stay up;
//! each picks the new users up at its next command (removed or disabled users are
//! disconnected). A bad new configuration is logged and the running one stays.
//!
//! Listener addresses, the upstream, the admin endpoint and connection caps are fixed at
//! start-up; a change to those is reported as needing a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::session::{Live, Shared};

/// How often watched files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The reloadable part of a configuration.
pub fn live(cfg: &Config, generation: u64) -> Live {
    Live {
        users: cfg.users.clone(),
        limits: cfg.limits,
        command_rates: cfg
            .command_rates
            .iter()
            .map(|(name, rate)| (name.clone(), Arc::new(crate::limits::command_rate(*rate))))
            .collect(),
        generation,
    }
}

#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tls: Vec<Option<Arc<ArcSwap<TlsAcceptor>>>>,
    path: Mutex<Option<PathBuf>>,
    /// Listener addresses at start-up (changing them needs a restart).
    addrs: Vec<std::net::SocketAddr>,
    /// The upstream settings at start-up (changing them needs a restart too).
    upstream: String,
    generation: AtomicU64,
}

/// The restart-only upstream settings, for noticing a change (never the password).
fn upstream_summary(cfg: &Config) -> String {
    let u = &cfg.upstream;
    format!(
        "{} {:?} {:?} {} {}",
        u.addr,
        u.username,
        u.connect_timeout,
        u.tls.is_some(),
        u.shared_connections
    )
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

impl Reloader {
    pub fn new(
        shared: Arc<Shared>,
        tls: Vec<Option<Arc<ArcSwap<TlsAcceptor>>>>,
        cfg: &Config,
    ) -> Self {
        Reloader {
            inner: Arc::new(Inner {
                shared,
                tls,
                path: Mutex::new(None),
                addrs: cfg.listeners.iter().map(|l| l.addr).collect(),
                upstream: upstream_summary(cfg),
                generation: AtomicU64::new(0),
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
    ///
    /// # Errors
    /// The [`ReloadError`] that kept the new configuration out.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let path = self.path().ok_or(ReloadError::NoPath)?;
        let cfg = config::load(&path)?;
        // Build every new TLS config before swapping anything: all or nothing.
        let mut acceptors = Vec::with_capacity(cfg.listeners.len());
        for (index, l) in cfg.listeners.iter().enumerate() {
            acceptors.push(match &l.tls {
                Some(t) => Some(TlsAcceptor::from(
                    crate::tls::server_config(t)
                        .map_err(|source| ReloadError::Tls { index, source })?,
                )),
                None => None,
            });
        }
        let addrs: Vec<_> = cfg.listeners.iter().map(|l| l.addr).collect();
        if addrs != self.inner.addrs {
            warn!("listener addresses changed in the configuration; they take effect at the next restart");
        }
        if upstream_summary(&cfg) != self.inner.upstream {
            warn!("upstream settings changed in the configuration; they take effect at the next restart");
        }
        for (slot, acceptor) in self.inner.tls.iter().zip(acceptors) {
            if let (Some(slot), Some(acceptor)) = (slot, acceptor) {
                slot.store(Arc::new(acceptor));
            }
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.inner
            .shared
            .live
            .store(Arc::new(live(&cfg, generation)));
        // Published after the new configuration, so a session that sees the new number
        // also sees what it numbers.
        self.inner
            .shared
            .generation
            .store(generation, Ordering::Release);
        info!(
            generation,
            users = cfg.users.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    fn reload_logged(&self, why: &str) {
        if let Err(e) = self.reload() {
            error!(
                trigger = why,
                "reload refused, keeping the running configuration: {e}"
            );
        }
    }

    /// Reloads on SIGHUP and on file changes until `stop` fires.
    pub async fn watch(self, stop: CancellationToken) {
        if self.path().is_none() {
            return;
        }
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = self.stamps();
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.reload_logged("SIGHUP");
                    seen = self.stamps();
                }
                _ = tick.tick() => {
                    let now = self.stamps();
                    if now != seen {
                        seen = now;
                        self.reload_logged("file change");
                    }
                }
            }
        }
    }

    /// Modification times of the config file and every file it names for TLS.
    fn stamps(&self) -> Vec<Option<SystemTime>> {
        let Some(path) = self.path() else {
            return Vec::new();
        };
        let mut files = vec![path.clone()];
        if let Ok(cfg) = config::load(&path) {
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
}
