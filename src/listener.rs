//! Listening sockets: accept, admit, read a PROXY header where one is expected, TLS handshake
//! under a deadline, then hand the connection to a session.
//!
//! Admission comes before any work a client could make expensive, in this order:
//! 1. at accept, the TCP peer: on a `proxy_protocol` listener it must be a trusted proxy and
//!    not denied, and takes a slot under `max_connections` (with `proxy_protocol: true`, where
//!    any peer is "trusted", its own rate and per-address cap apply too); elsewhere it is the
//!    client, and the allow/deny lists, the global cap and its own rate and cap apply;
//! 2. after a PROXY header, the address it carries is the client: allow/deny and that
//!    address's rate and cap apply, and the session (lockout, ACL LOG, audit) uses it.
//!
//! Every listener setting (allow/deny, proxy_protocol, TLS and mTLS) lives in a
//! [`ListenerSettings`] that a reload replaces whole; each connection uses the settings in
//! force when it was accepted.
//!
//! Accept errors (out of file descriptors, a connection reset before accept) are logged and
//! backed off, never fatal: the proxy stays up for everyone else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::config::{ClientAuth, ClientIdentity, ListenerConfig, ProxyProtocol};
use crate::limits::{ConnGuard, Refused};
use crate::proxy_header;
use crate::session;
use crate::shared::Shared;
use crate::throttle::Verdict;
use crate::upstream::Connector;

/// Pause after a failed accept, so a persistent error (EMFILE) does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listener's reloadable settings: its configuration and the TLS acceptor built from it.
pub struct ListenerSettings {
    pub cfg: ListenerConfig,
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

pub struct Listener {
    tcp: TcpListener,
    addr: SocketAddr,
    /// Replaced whole by a reload; read once per accepted connection.
    settings: Arc<ArcSwap<ListenerSettings>>,
    /// A cluster node listener's node (`cluster.rs`); `None`: the configured upstream.
    node: Option<Arc<Connector>>,
}

/// How a connection's TLS is set up: the acceptor and, for mTLS, how certificates log
/// clients in.
type TlsMode = Option<(TlsAcceptor, Option<(ClientAuth, ClientIdentity)>)>;

fn tls_mode(s: &ListenerSettings) -> TlsMode {
    let acceptor = s.tls.clone()?;
    let mtls = s
        .cfg
        .tls
        .as_ref()
        .and_then(|t| t.client_certs.as_ref())
        .map(|c| (c.auth, c.identity));
    Some((acceptor, mtls))
}

impl Listener {
    pub fn new(
        tcp: TcpListener,
        settings: Arc<ArcSwap<ListenerSettings>>,
    ) -> std::io::Result<Self> {
        let addr = tcp.local_addr()?;
        Ok(Listener {
            tcp,
            addr,
            settings,
            node: None,
        })
    }

    /// This listener's sessions go to one cluster node, through `connector`.
    pub fn for_node(mut self, connector: Arc<Connector>) -> Self {
        self.node = Some(connector);
        self
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
        info!(addr = %self.addr, tls = self.settings.load().tls.is_some(), "listening");
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
            let settings = self.settings.load_full();
            // Cheap refusals first, before any TLS work or header parsing.
            let guard = match admit_peer(&settings.cfg, &shared, peer) {
                Ok(guard) => guard,
                Err(why) => {
                    log_refused(&shared, why, peer, None);
                    continue; // dropping the socket closes it
                }
            };
            let (shared, stop) = (Arc::clone(&shared), stop.clone());
            let addrs = session::Addrs {
                peer,
                local: None,
                node: self.node.clone(),
            };
            if settings.cfg.proxy_protocol == ProxyProtocol::Off {
                tasks.spawn(serve_admitted(
                    tcp,
                    addrs,
                    tls_mode(&settings),
                    shared,
                    stop,
                    guard,
                ));
            } else {
                tasks.spawn(serve_proxied(tcp, addrs, settings, shared, stop, guard));
            }
        }
        info!(addr = %self.addr, "stopped accepting");
    }
}

/// Admission of the TCP peer at accept; counts refusals in the metrics.
fn admit_peer(
    cfg: &ListenerConfig,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<ConnGuard, Refused> {
    let result = if cfg.proxy_protocol == ProxyProtocol::Off {
        if cfg.admits(peer.ip()) {
            shared.limiter.admit(peer.ip())
        } else {
            Err(Refused::NotAllowed)
        }
    } else if !cfg.trusts_proxy(peer.ip()) {
        Err(Refused::UntrustedProxy)
    } else if cfg.denies(peer.ip()) {
        Err(Refused::NotAllowed)
    } else if cfg.proxy_protocol == ProxyProtocol::AnyPeer {
        // Any peer may send a header, so the peer may be anyone: its own rate and cap apply
        // now, and the carried address's again once the header is read.
        shared.limiter.admit(peer.ip())
    } else {
        // A named load balancer carries many clients: the per-address rate and cap apply to
        // the address its header names, once it is read.
        shared.limiter.admit_any()
    };
    if let Err(why) = result {
        shared.metrics.refused(why);
    }
    result
}

/// Refused connections are logged a few per second, with a count of the rest
/// ([`Throttle`]): a flood must not flood the log.
fn log_refused(shared: &Shared, why: Refused, peer: SocketAddr, client: Option<SocketAddr>) {
    if let Verdict::Log { suppressed } = shared.refusal_lines.event() {
        match client {
            Some(client) => {
                warn!(%client, via = %peer, reason = why.label(), also_refused = suppressed, "connection refused: {why}")
            }
            None => {
                warn!(%peer, reason = why.label(), also_refused = suppressed, "connection refused: {why}")
            }
        }
    }
}

/// A connection from a trusted proxy: its PROXY header (within the handshake timeout), the
/// admission of the client it names, then the session.
async fn serve_proxied(
    mut tcp: TcpStream,
    mut addrs: session::Addrs,
    settings: Arc<ListenerSettings>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    mut guard: ConnGuard,
) {
    let peer = addrs.peer;
    let timeout = shared.live.load().limits.handshake_timeout;
    let header = tokio::select! {
        r = tokio::time::timeout(timeout, proxy_header::read(&mut tcp, peer)) => r,
        () = stop.cancelled() => return,
    };
    let client = match header {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            shared.metrics.refused(Refused::ProxyHeader);
            debug!(%peer, error = %e, "PROXY header refused");
            return;
        }
        Err(_) => {
            shared.metrics.refused(Refused::ProxyHeader);
            debug!(%peer, "PROXY header timed out");
            return;
        }
    };
    let admitted = if settings.cfg.admits(client.ip()) {
        guard.admit_address(client.ip())
    } else {
        Err(Refused::NotAllowed)
    };
    if let Err(why) = admitted {
        shared.metrics.refused(why);
        log_refused(&shared, why, peer, Some(client));
        return;
    }
    addrs.peer = client;
    serve_admitted(tcp, addrs, tls_mode(&settings), shared, stop, guard).await;
}

/// An admitted connection's task: the session, with the open-connection gauge and the
/// limiter's slot held for exactly its lifetime.
async fn serve_admitted(
    tcp: TcpStream,
    addrs: session::Addrs,
    tls: TlsMode,
    shared: Arc<Shared>,
    stop: CancellationToken,
    guard: ConnGuard,
) {
    shared.metrics.connections_accepted.inc();
    shared.metrics.connections_open.inc();
    let metrics = Arc::clone(&shared.metrics);
    let span = tracing::debug_span!("conn", peer = %addrs.peer);
    handle(tcp, addrs, tls, shared, stop).instrument(span).await;
    metrics.connections_open.dec();
    drop(guard);
}

/// The enabled redward user a verified client certificate names, if any (mTLS login, as
/// Redis 8's `tls-auth-clients-user` does).
fn certificate_user(
    stream: &tokio_rustls::server::TlsStream<TcpStream>,
    field: ClientIdentity,
    shared: &Shared,
) -> Option<crate::auth::LoggedIn> {
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
    user.map(crate::auth::LoggedIn::by_certificate)
}

/// Why a client certificate was refused, when the handshake failed over one: an operator can
/// fix these (an X.509 v1 certificate, a missing clientAuth extended key usage, an unknown
/// issuer, an expired or revoked certificate), so they are worth a warning.
fn certificate_problem(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::InvalidCertificate(why) => Some(why.to_string()),
        rustls::Error::NoCertificatesPresented => {
            Some("no client certificate presented".to_owned())
        }
        _ => None,
    }
}

/// One connection: TLS handshake within `handshake_timeout`, then the session.
async fn handle(
    tcp: TcpStream,
    mut addrs: session::Addrs,
    tls: TlsMode,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    // Redis traffic is request/response; Nagle would add delay to every small reply.
    let _ = tcp.set_nodelay(true);
    addrs.local = tcp.local_addr().ok();
    let peer = addrs.peer;
    let result = match tls {
        Some((acceptor, mtls)) => {
            let handshake = tokio::time::timeout(
                shared.live.load().limits.handshake_timeout,
                acceptor.accept(tcp),
            );
            let handshake = tokio::select! {
                r = handshake => r,
                () = stop.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    let login = match mtls {
                        None => None,
                        Some((auth, field)) => match certificate_user(&stream, field, &shared) {
                            Some(user) => Some(user),
                            None if auth == ClientAuth::Required => {
                                shared.metrics.tls_handshake_failures.inc();
                                if let Verdict::Log { suppressed } = shared.refusal_lines.event() {
                                    warn!(%peer, also_refused = suppressed, "client certificate names no enabled user; closing");
                                }
                                return;
                            }
                            None => None,
                        },
                    };
                    session::serve(stream, addrs, shared, stop, login).await
                }
                Ok(Err(e)) => {
                    shared.metrics.tls_handshake_failures.inc();
                    match certificate_problem(&e) {
                        Some(reason) => {
                            if let Verdict::Log { suppressed } = shared.refusal_lines.event() {
                                warn!(%peer, %reason, also_refused = suppressed, "client certificate refused");
                            }
                        }
                        None => debug!(%peer, error = %e, "TLS handshake failed"),
                    }
                    return;
                }
                Err(_) => {
                    shared.metrics.tls_handshake_failures.inc();
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
        None => session::serve(tcp, addrs, shared, stop, None).await,
    };
    match result {
        Ok(()) => debug!(%peer, "connection closed"),
        Err(e) => match e.side() {
            crate::fault::Side::Client => debug!(%peer, error = %e, "connection closed"),
            side => error!(%peer, %side, error = %e, "connection closed: {side} failure"),
        },
    }
}
