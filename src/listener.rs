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

use crate::config::{ClientAuth, ClientIdentity, ListenerConfig};
use crate::limits::{ConnGuard, Refused};
use crate::proxy_header;
use crate::session::{self, Shared};

/// Pause after a failed accept, so a persistent error (EMFILE) does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub struct Listener {
    tcp: TcpListener,
    /// Swapped by a reload (new certificates take effect for new connections).
    tls: Option<Arc<arc_swap::ArcSwap<TlsAcceptor>>>,
    addr: SocketAddr,
    cfg: ListenerConfig,
}

impl Listener {
    /// The acceptor and, for mTLS, how certificates log clients in.
    fn tls_mode(&self) -> Option<(TlsAcceptor, Option<(ClientAuth, ClientIdentity)>)> {
        let acceptor = TlsAcceptor::clone(&self.tls.as_ref()?.load());
        let mtls = self
            .cfg
            .tls
            .as_ref()
            .and_then(|t| t.client_certs.as_ref())
            .map(|c| (c.auth, c.identity));
        Some((acceptor, mtls))
    }
}

impl Listener {
    pub fn new(
        tcp: TcpListener,
        tls: Option<Arc<arc_swap::ArcSwap<TlsAcceptor>>>,
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
            if self.cfg.proxy_protocol {
                // The real client is only known once the header is read: read it (bounded by
                // the handshake timeout) in the connection's task, then make the same checks.
                let (tls, shared, stop, cfg) = (
                    self.tls_mode(),
                    Arc::clone(&shared),
                    stop.clone(),
                    self.cfg.clone(),
                );
                tasks.spawn(async move {
                    let mut tcp = tcp;
                    let header =
                        tokio::time::timeout(shared.live.load().limits.handshake_timeout, proxy_header::read(&mut tcp, peer));
                    let client = match header.await {
                        Ok(Ok(client)) => client,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "PROXY header refused");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "PROXY header timed out");
                            return;
                        }
                    };
                    match admit(&cfg, &shared, client) {
                        Ok(guard) => serve_admitted(tcp, client, tls, shared, stop, guard).await,
                        Err(why) => debug!(%client, via = %peer, reason = why.label(), "connection refused: {why}"),
                    }
                });
                continue;
            }
            // Cheap refusals first, before any TLS work: the allow-list, then the caps.
            let guard = match admit(&self.cfg, &shared, peer) {
                Ok(guard) => guard,
                Err(why) => {
                    refused.log(why, peer);
                    continue; // dropping the socket closes it
                }
            };
            let (tls, shared, stop) = (self.tls_mode(), Arc::clone(&shared), stop.clone());
            tasks.spawn(serve_admitted(tcp, peer, tls, shared, stop, guard));
        }
        info!(addr = %self.addr, "stopped accepting");
    }
}

/// The allow-list, then the connection caps; counts refusals in the metrics.
fn admit(cfg: &ListenerConfig, shared: &Shared, peer: SocketAddr) -> Result<ConnGuard, Refused> {
    let result = if cfg.admits(peer.ip()) {
        shared.limiter.admit(peer.ip())
    } else {
        Err(Refused::NotAllowed)
    };
    if let Err(why) = result {
        shared.metrics.refused(why);
    }
    result
}

/// An admitted connection's task: the session, with the open-connection gauge and the
/// limiter's slot held for exactly its lifetime.
async fn serve_admitted(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<(TlsAcceptor, Option<(ClientAuth, ClientIdentity)>)>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    guard: ConnGuard,
) {
    shared.metrics.connections_accepted.inc();
    shared.metrics.connections_open.inc();
    let metrics = Arc::clone(&shared.metrics);
    let span = tracing::debug_span!("conn", %peer);
    handle(tcp, peer, tls, shared, stop).instrument(span).await;
    metrics.connections_open.dec();
    drop(guard);
}

/// The enabled redward user a verified client certificate names, if any (mTLS login, as
/// Redis 8's `tls-auth-clients-user` does).
fn certificate_user(
    stream: &tokio_rustls::server::TlsStream<TcpStream>,
    field: ClientIdentity,
    shared: &Shared,
) -> Option<Arc<crate::acl::User>> {
    let cert = stream.get_ref().1.peer_certificates()?.first()?;
    let name = crate::tls::client_identity(cert, field)?;
    let user = shared
        .live
        .load()
        .users
        .get(name.as_bytes())
        .filter(|u| u.enabled)
        .cloned();
    debug!(identity = %name, found = user.is_some(), "client certificate identity");
    user
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
    tls: Option<(TlsAcceptor, Option<(ClientAuth, ClientIdentity)>)>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    // Redis traffic is request/response; Nagle would add delay to every small reply.
    let _ = tcp.set_nodelay(true);
    let result = match tls {
        Some((acceptor, mtls)) => {
            let handshake = tokio::time::timeout(
                shared.live.load().limits.handshake_timeout,
                acceptor.accept(tcp),
            );
            match handshake.await {
                Ok(Ok(stream)) => {
                    let login = match mtls {
                        None => None,
                        Some((auth, field)) => match certificate_user(&stream, field, &shared) {
                            Some(user) => Some(user),
                            None if auth == ClientAuth::Required => {
                                shared.metrics.tls_handshake_failures.inc();
                                warn!(%peer, "client certificate names no enabled user; closing");
                                return;
                            }
                            None => None,
                        },
                    };
                    session::serve(stream, peer, shared, stop, login).await
                }
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
        None => session::serve(tcp, peer, shared, stop, None).await,
    };
    match result {
        Ok(()) => debug!(%peer, "connection closed"),
        Err(e) if e.is_upstream() => {
            error!(%peer, error = %e, "connection closed: upstream failure")
        }
        Err(e) => debug!(%peer, error = %e, "connection closed"),
    }
}
