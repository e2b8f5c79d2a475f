//! The process's shutdown signal: the first SIGTERM or SIGINT starts a graceful shutdown (stop
//! accepting, let requests in flight finish within the grace period); a second one exits at
//! once.

use tracing::{info, warn};

/// Resolves on the first SIGTERM or SIGINT, and arms a second-signal hard exit.
pub async fn signal() {
    wait_one().await;
    info!("shutdown requested; draining connections (signal again to exit now)");
    tokio::spawn(async {
        wait_one().await;
        warn!("second signal; exiting now");
        std::process::exit(130);
    });
}

async fn wait_one() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers (should not happen on Unix) fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
