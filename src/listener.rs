//! Listening sockets: bind (failing start-up with the address named), accept, TLS handshake
//! under a deadline, then hand the connection to a session.
//!
//! Accept errors (out of file descriptors, a connection reset before accept) are logged and
//! backed off, never fatal: the proxy stays up for everyone else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::config::ListenerConfig;
use crate::limits::Refused;
use crate::session::{self, Shared};

/// Pause after a failed accept, so a persistent error (EMFILE) does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    addr: SocketAddr,
    cfg: ListenerConfig,
}

impl Listener {
    pub fn new(
        tcp: TcpListener,
        tls: Option<TlsAcceptor>,
        cfg: ListenerConfig,
    ) -> std::io::Result<Self> {
        let addr = tcp.local_addr()?;
        Ok(Listener {
            tcp,
            tls,
            addr,
            cfg,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts until `stop` fires; every connection runs as a task on `tasks`.
    pub async fn accept_loop(
        self,
        shared: Arc<Shared>,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) {
        info!(addr = %self.addr, tls = self.tls.is_some(), "listening");
        let mut refused = RefusalLog::default();
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                r = self.tcp.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(addr = %self.addr, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Cheap refusals first, before any TLS work: the allow-list, then the caps.
            if !self.cfg.admits(peer.ip()) {
                shared.metrics.refused(Refused::NotAllowed);
                refused.log(Refused::NotAllowed, peer);
                continue; // dropping the socket closes it
            }
            let guard = match shared.limiter.admit(peer.ip()) {
                Ok(guard) => guard,
                Err(why) => {
                    shared.metrics.refused(why);
                    refused.log(why, peer);
                    continue;
                }
            };
            shared.metrics.connections_accepted.inc();
            shared.metrics.connections_open.inc();
            let span = tracing::debug_span!("conn", %peer);
            let (tls, shared, stop) = (self.tls.clone(), Arc::clone(&shared), stop.clone());
            tasks.spawn(
                async move {
                    let metrics = Arc::clone(&shared.metrics);
                    handle(tcp, peer, tls, shared, stop).await;
                    metrics.connections_open.dec();
                    drop(guard);
                }
                .instrument(span),
            );
        }
        info!(addr = %self.addr, "stopped accepting");
    }
}

/// Logs refused connections without letting a flood flood the log: the first of each second
/// is logged with the number refused since the last line.
#[derive(Default)]
struct RefusalLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn log(&mut self, why: Refused, peer: SocketAddr) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        warn!(%peer, reason = why.label(), also_refused = self.suppressed, "connection refused: {why}");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// One connection: TLS handshake within `handshake_timeout`, then the session.
async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    // Redis traffic is request/response; Nagle would add delay to every small reply.
    let _ = tcp.set_nodelay(true);
    let result = match tls {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(tcp));
            match handshake.await {
                Ok(Ok(stream)) => session::serve(stream, peer, shared, stop).await,
                Ok(Err(e)) => {
                    shared.metrics.tls_handshake_failures.inc();
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.tls_handshake_failures.inc();
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
        None => session::serve(tcp, peer, shared, stop).await,
    };
    match result {
        Ok(()) => debug!(%peer, "connection closed"),
        Err(e) if e.is_upstream() => {
            error!(%peer, error = %e, "connection closed: upstream failure")
        }
        Err(e) => debug!(%peer, error = %e, "connection closed"),
    }
}
