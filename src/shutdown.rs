//! The process's shutdown signal: the first SIGTERM or SIGINT starts a graceful shutdown (stop
//! accepting, let requests in flight finish within the grace period); a second one exits at
//! once.
//!
//! Handlers are installed before the listeners are bound ([`Signals::install`]): a SIGTERM
//! that arrives while start-up is still talking to Redis must drain, not kill the process.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};

pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the SIGTERM and SIGINT handlers now.
    ///
    /// # Errors
    /// The I/O error from registering a handler (needs a running tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first signal, and arms a second-signal hard exit.
    pub async fn first(mut self) {
        self.recv().await;
        info!("shutdown requested; draining connections (signal again to exit now)");
        tokio::spawn(async move {
            self.recv().await;
            warn!("second signal; exiting now");
            std::process::exit(130);
        });
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
