//! One client's life, from the first byte after the TLS handshake to close.
//!
//! The order of operations is the security model:
//! 1. Requests are framed with Redis's pre-authentication limits until the client logs in.
//! 2. Before login only AUTH, HELLO, QUIT and RESET are served, by redward; everything else is
//!    answered with Redis's own NOAUTH text, and no upstream connection exists yet.
//! 3. After login, requests are forwarded byte for byte: over a shared upstream connection
//!    (`mux.rs`) while they do not depend on connection state, and from the first one that
//!    does (MULTI, WATCH, SELECT, HELLO, CLIENT, blocking commands, pub/sub, MONITOR) over
//!    this client's own connection (opened then, authenticated with redward's credential), so
//!    they keep their meaning.
//! 4. Replies that redward writes itself are slotted between Redis's replies in request order
//!    (`slots.rs`); replies are scanned for boundaries only, and streamed through.
//!
//! Every wait is bounded: the login deadline, the client write timeout, the upstream connect
//! timeout; every buffer is capped, and a full one stops reading on the other side.

mod acl_cmd;
mod slots;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::acl::{self, Denied, User};
use crate::audit::{Audit, Event, Reason};
use crate::auth::{self, AuthOutcome};
use crate::commands;
use crate::config::{ProtocolLimits, Users};
use crate::mux::Taken;
use crate::resp::replies;
use crate::resp::{
    encode_command, Frame, FrameInfo, Limits, PubSub, ReplyScanner, Request, RequestParser, Step,
};
use crate::upstream::{Connector, UpstreamStream};

pub use slots::{Expect, Family, Hook, Slot, Slots};

/// Bytes read from a socket at a time (and the read buffer's minimum spare room).
const READ_CHUNK: usize = 16 * 1024;
/// A new client's first reads: enough for AUTH and ordinary commands.
const FIRST_READ_CHUNK: usize = 2 * 1024;
/// Replies buffered for the client beyond which redward stops reading from Redis: a client
/// that does not read makes Redis hold the data (and apply its own output limits), not us.
const CLIENT_OUT_HIGH: usize = 1024 * 1024;
/// Requests buffered for Redis beyond which redward stops reading from the client.
const UPSTREAM_OUT_HIGH: usize = 1024 * 1024;
/// An idle connection's buffers are shrunk back when they grew past this.
const IDLE_BUFFER_KEEP: usize = 64 * 1024;

/// What every session shares: the reloadable part ([`Live`]), the upstream connector, the
/// audit sink, the limiter and the metrics.
#[derive(Debug)]
pub struct Shared {
    /// Swapped whole by a reload; sessions pick up the new one at their next command.
    pub live: arc_swap::ArcSwap<Live>,
    /// `live`'s generation, readable with one atomic load per command (cheaper than loading
    /// `live` itself to find out that nothing changed).
    pub generation: std::sync::atomic::AtomicU64,
    pub connector: Connector,
    /// Shared upstream connections (`upstream.shared_connections`); `None`: a connection per
    /// client.
    pub pool: Option<crate::mux::Pool>,
    pub audit: Arc<Audit>,
    pub limiter: Arc<crate::limits::Limiter>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What all clients buffer, and who is disconnected past `limits.max_client_memory`.
    pub memory: Arc<crate::memory::ClientMemory>,
    /// Refused connections and TLS failures: a few log lines per second, then a count.
    pub refusal_lines: crate::throttle::Throttle,
}

/// The part of the configuration a reload replaces without dropping connections.
#[derive(Debug)]
pub struct Live {
    pub users: Users,
    pub limits: ProtocolLimits,
    /// `commands_per_second`, by user name.
    pub command_rates: std::collections::HashMap<String, Arc<crate::limits::CommandRate>>,
    /// Increases with every reload.
    pub generation: u64,
}

/// Why a session ended abnormally (the peer hanging up is not an error).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client I/O: {0}")]
    ClientIo(std::io::Error),
    #[error("upstream I/O: {0}")]
    UpstreamIo(std::io::Error),
    #[error("upstream closed the connection")]
    UpstreamClosed,
    #[error("upstream protocol: {0}")]
    UpstreamProtocol(#[from] crate::resp::ReplyError),
    #[error("upstream sent a reply no request was waiting for")]
    UnexpectedReply,
    #[error("upstream rejected redward's AUTH after RESET")]
    UpstreamReauth,
    #[error("client did not authenticate in time")]
    AuthTimeout,
    #[error("client stopped reading replies")]
    WriteTimeout,
    #[error("subscriber output buffer over its limit")]
    OutputLimit,
    #[error("idle timeout")]
    IdleTimeout,
    #[error("evicted: all clients together over limits.max_client_memory")]
    ClientMemory,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl SessionError {
    /// Whether the fault lies with the upstream side (logged louder: it affects every client).
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            SessionError::UpstreamIo(_)
                | SessionError::UpstreamClosed
                | SessionError::UpstreamProtocol(_)
                | SessionError::UnexpectedReply
                | SessionError::UpstreamReauth
                | SessionError::Internal(_)
        )
    }
}

/// Serves one client connection until it closes, the upstream fails, or `shutdown` fires and
/// the requests in flight are answered.
///
/// # Errors
/// A [`SessionError`] saying why the connection was closed by redward.
pub async fn serve<S>(
    mut client: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    login: Option<Arc<User>>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut st = State::new(shared, peer);
    if login.is_some() {
        // A verified client certificate already named the user (mTLS): no AUTH needed.
        st.user = login;
    }
    let mut parser = RequestParser::new();
    // Client reads start small (most connections send short commands, and idle ones should
    // cost little) and grow to READ_CHUNK once a read fills what was offered.
    let mut cin_chunk = FIRST_READ_CHUNK;
    let mut cin = BytesMut::with_capacity(cin_chunk);
    let mut uin = BytesMut::new();
    let mut scanner = ReplyScanner::new();
    // What this client's buffers hold counts toward `limits.max_client_memory`; past it, the
    // client holding the most is told to go (`memory.rs`).
    let mut account = st.shared.memory.register();
    let usage = account.usage_handle();
    let evicted = usage.evicted();
    tokio::pin!(evicted);
    let mut conn = match &st.shared.pool {
        Some(pool) => {
            Conn::Shared(pool.attach(st.live.limits.shared_reply_buffer, Some(account.charge())))
        }
        None => Conn::None,
    };
    let mut client_flush = false;
    let mut draining = false;
    let login_deadline = Instant::now() + st.live.limits.auth_timeout;
    let idle_timeout = st.live.limits.idle_timeout;
    let mut idle_deadline = Instant::now() + idle_timeout;
    let mut soft_since: Option<Instant> = None;
    // Created once: re-creating it every turn would re-register a waiter each time.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut write_deadline: Option<Instant> = None;
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    // The deadline the timer is set to, if it is armed.
    let mut armed: Option<Instant> = None;

    let result = 'session: loop {
        // At most one clock read per turn (not per request), and only if something needs it.
        st.now = None;
        // 1. Requests already read: frame, check and dispatch as many as the bounds allow.
        while !st.closing
            && !draining
            && !st.pin_wait
            && !st.handover
            && st.slots.len() < st.live.limits.max_pipeline
            && st.uout.len() < UPSTREAM_OUT_HIGH
        {
            let limits = st.frame_limits();
            let frame = match parser.parse(&cin, &limits) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "protocol error from client");
                    st.local(Bytes::from(e.reply()));
                    st.close_after_replies();
                    break;
                }
            };
            let len = frame.len();
            let outcome = match frame {
                Frame::Empty { .. } => {
                    st.end_of_command();
                    Outcome::Done
                }
                Frame::Command { .. } => {
                    let req = parser.request(&cin, &frame);
                    st.dispatch(&req, cin.get(..len).unwrap_or(&[]), conn.kind())
                }
            };
            if outcome == Outcome::WaitForReplies {
                st.retrying = true;
                st.pin_wait = true;
                break;
            }
            if outcome == Outcome::NeedUpstream {
                // The same request comes back once connected: it is not a new command.
                st.retrying = true;
                if matches!(conn, Conn::Dedicated(_)) {
                    // dispatch asked for a connection it already has: a bug, never a loop.
                    break 'session Err(SessionError::Internal(
                        "dispatch requested an upstream twice",
                    ));
                }
                if st.slots.upstream_pending() > 0 {
                    // Moving off the shared connection: its replies must all be in first, or
                    // they could come after the new connection's. The request waits in `cin`.
                    st.pin_wait = true;
                    break;
                }
                match st.shared.connector.connect().await {
                    Ok(stream) => {
                        debug!(%peer, "upstream connected");
                        if matches!(conn, Conn::Shared(_)) {
                            st.shared.metrics.upstream_moves.inc();
                        }
                        st.shared.metrics.upstream_own.inc();
                        conn = Conn::Dedicated(stream);
                        continue; // dispatch the same request again, now with an upstream
                    }
                    Err(e) => {
                        st.shared.metrics.upstream_connect_errors.inc();
                        warn!(%peer, error = %e, "upstream unavailable");
                        st.local(Bytes::from_static(replies::UPSTREAM_UNAVAILABLE));
                        st.end_of_command();
                        st.retrying = false;
                    }
                }
            }
            cin.advance(len);
        }

        st.report_commands();
        if st.handover {
            // SYNC/PSYNC went out: from here on the connection is a replication stream.
            break Ok(());
        }
        // 2. Replies already read: find their ends and move them, in slot order, to the client.
        if let Err(e) = st.take_replies(&mut scanner, &mut uin) {
            break Err(e);
        }
        if st.pin_wait && st.slots.upstream_pending() == 0 {
            // The shared connection's replies are all in: dispatch the waiting request.
            st.pin_wait = false;
            continue;
        }
        // A subscriber or MONITOR client that does not read: Redis's
        // client-output-buffer-limit, applied here (hard cap, or soft cap for too long).
        if st.streaming() {
            let limits = &st.live.limits;
            if st.cout.len() >= limits.output_hard {
                warn!(%peer, buffered = st.cout.len(), "output buffer hard limit reached; closing");
                break Err(SessionError::OutputLimit);
            }
            if st.cout.len() > limits.output_soft {
                let since = *soft_since.get_or_insert_with(Instant::now);
                if since.elapsed().as_secs() >= limits.output_soft_seconds {
                    warn!(%peer, buffered = st.cout.len(), "output buffer soft limit exceeded for too long; closing");
                    break Err(SessionError::OutputLimit);
                }
            } else {
                soft_since = None;
            }
        }

        // 3. Done? (QUIT or a protocol error answered, or a drain finished.)
        if st.closed && st.cout.is_empty() && !client_flush {
            break Ok(());
        }
        if draining && st.slots.is_empty() && st.cout.is_empty() && !client_flush {
            break Ok(());
        }
        if cin.is_empty() && uin.is_empty() && st.slots.is_empty() {
            shrink(&mut cin);
            shrink(&mut uin);
        }
        account.report(cin.capacity() + uin.capacity() + st.cout.capacity() + st.uout.capacity());

        // 4. Wait for the next thing to do.
        let read_client = !st.closing
            && !draining
            && !st.pin_wait
            && st.slots.len() < st.live.limits.max_pipeline
            && st.uout.len() < UPSTREAM_OUT_HIGH;
        let read_upstream = !matches!(conn, Conn::None) && st.cout.len() < st.client_out_cap();
        // The idle timeout never applies to subscribers, MONITOR, or a client waiting for a
        // reply (a blocking command): only to a connection with nothing going on.
        let idle_applies = !idle_timeout.is_zero() && st.slots.is_empty() && !st.streaming();
        let logged_in = st.user.is_some();
        if st.cout.is_empty() && !client_flush {
            write_deadline = None;
        } else if write_deadline.is_none() {
            write_deadline = Some(st.now() + st.live.limits.client_write_timeout);
        }
        // One timer for every deadline, re-armed only when an earlier one appears: building
        // a fresh timer per deadline on every turn of the loop cost ~5 % of the CPU at -P 16.
        let next_deadline = [
            (!logged_in && !st.closing).then_some(login_deadline),
            idle_applies.then_some(idle_deadline),
            write_deadline,
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(next) = next_deadline {
            if armed.is_none_or(|a| next < a) {
                timer.as_mut().reset(next);
                armed = Some(next);
            }
        }
        if read_client {
            cin.reserve(cin_chunk);
        }
        // A shared connection's replies arrive in a buffer of their own (swapped in whole).
        if read_upstream && matches!(conn, Conn::Dedicated(_)) {
            uin.reserve(READ_CHUNK);
        }
        let want = Want {
            write_client: !st.cout.is_empty() || client_flush,
            write_upstream: !st.uout.is_empty(),
            read_client,
            read_upstream,
        };
        let io = std::future::poll_fn(|cx| {
            poll_io(
                cx,
                &mut client,
                &mut conn,
                &mut st.cout,
                &mut st.uout,
                &mut st.shared_unsent,
                &mut cin,
                &mut uin,
                &mut client_flush,
                want,
            )
        });
        let event = tokio::select! {
            biased;
            ev = io => ev,
            () = &mut timer, if armed.is_some() => {
                armed = None;
                let now = Instant::now();
                if !logged_in && !st.closing && now >= login_deadline {
                    break Err(SessionError::AuthTimeout);
                }
                if idle_applies && now >= idle_deadline {
                    break Err(SessionError::IdleTimeout);
                }
                if write_deadline.is_some_and(|d| now >= d) {
                    break Err(SessionError::WriteTimeout);
                }
                continue; // a deadline that moved later: re-arm on the next turn
            }
            () = &mut cancelled, if !draining => {
                draining = true;
                continue;
            }
            () = &mut evicted => {
                let memory = &st.shared.memory;
                if let crate::throttle::Verdict::Log { suppressed } = memory.log_lines.event() {
                    warn!(%peer, held = usage.bytes(), total = memory.total(), limit = memory.limit(), also_evicted = suppressed, "disconnected: all clients together over limits.max_client_memory, and this one held the most");
                }
                break Err(SessionError::ClientMemory);
            }
        };
        match event {
            IoEvent::ClientWrote(Ok(())) => write_deadline = None,
            IoEvent::ClientWrote(Err(e)) => break Err(SessionError::ClientIo(e)),
            IoEvent::UpstreamWrote(Ok(())) => {}
            IoEvent::UpstreamWrote(Err(e)) => {
                break st.upstream_failed(&scanner, SessionError::UpstreamIo(e));
            }
            // The client hung up; Redis drops a closed client's pending replies too.
            IoEvent::ClientRead(Ok(0)) => break Ok(()),
            IoEvent::ClientRead(Ok(n)) => {
                if n >= cin_chunk {
                    cin_chunk = READ_CHUNK;
                }
                if !idle_timeout.is_zero() {
                    idle_deadline = st.now() + idle_timeout;
                }
            }
            IoEvent::ClientRead(Err(e)) => break Err(SessionError::ClientIo(e)),
            IoEvent::UpstreamRead(Ok(0)) => {
                break st.upstream_failed(&scanner, SessionError::UpstreamClosed);
            }
            IoEvent::UpstreamRead(Ok(_)) => {
                if uin.len() > CLIENT_OUT_HIGH && !st.prefer_own {
                    // Large replies: give this client its own connection from its next
                    // request that can move, so its reading speed stops mattering to others.
                    st.prefer_own = true;
                }
            }
            IoEvent::SharedUnavailable(n) => st.shared_unavailable(n),
            IoEvent::SharedOverflow => {
                warn!(%peer, "unread replies over limits.shared_reply_buffer; closing");
                break Err(SessionError::OutputLimit);
            }
            IoEvent::UpstreamRead(Err(e)) => {
                break st.upstream_failed(&scanner, SessionError::UpstreamIo(e));
            }
        }
    };

    if st.handover {
        if let Conn::Dedicated(upstream) = conn {
            let result = replicate(client, upstream, &st.uout, &cin, &st.cout, &shutdown).await;
            st.shared.metrics.upstream_own.dec();
            return result;
        }
    }
    if matches!(conn, Conn::Dedicated(_)) {
        st.shared.metrics.upstream_own.dec();
    }
    if matches!(result, Err(SessionError::ClientMemory)) {
        // Evicted for holding too much: it is not reading, and what it holds must go now,
        // not after a goodbye it would not read (the socket is simply closed).
        return result;
    }
    // Whatever ended the session, give the client what is already owed, briefly.
    if !st.cout.is_empty() || client_flush {
        let grace = st
            .live
            .limits
            .client_write_timeout
            .min(std::time::Duration::from_secs(5));
        let _ = tokio::time::timeout(grace, async {
            client.write_all(&st.cout).await?;
            client.flush().await
        })
        .await;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.shutdown()).await;
    result
}

/// Replication through redward (`SYNC`/`PSYNC`, for `redis-cli --rdb`, `--replica` and real
/// replicas): Redis answers with an RDB payload that is not a RESP reply (`$<len>` without a
/// trailing CRLF, or the diskless `$EOF:<mark>` form, `replicationSetupSlaveForFullResync`
/// and `rdbSaveToSlavesSockets` in replication.c), and then streams commands, so the
/// connection is handed over to a plain byte copy in both directions, as stunnel would do.
/// What was owed first goes first: the replies before SYNC to the client, SYNC and anything
/// the client sent after it to Redis. It ends when either side closes or redward shuts down.
async fn replicate<S>(
    mut client: S,
    mut upstream: UpstreamStream,
    to_upstream: &[u8],
    after: &[u8],
    to_client: &[u8],
    shutdown: &CancellationToken,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    debug!("replication stream: copying bytes both ways");
    client
        .write_all(to_client)
        .await
        .map_err(SessionError::ClientIo)?;
    client.flush().await.map_err(SessionError::ClientIo)?;
    upstream
        .write_all(to_upstream)
        .await
        .map_err(SessionError::UpstreamIo)?;
    upstream
        .write_all(after)
        .await
        .map_err(SessionError::UpstreamIo)?;
    upstream.flush().await.map_err(SessionError::UpstreamIo)?;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok(_) => Ok(()),
            // Either side may go away; which one is not worth telling apart here.
            Err(e) => Err(SessionError::ClientIo(e)),
        },
        () = shutdown.cancelled() => Ok(()),
    }
}

/// Which directions the session wants to make progress in.
#[derive(Clone, Copy, Debug)]
struct Want {
    write_client: bool,
    write_upstream: bool,
    read_client: bool,
    read_upstream: bool,
}

#[derive(Debug)]
enum IoEvent {
    ClientWrote(std::io::Result<()>),
    UpstreamWrote(std::io::Result<()>),
    ClientRead(std::io::Result<usize>),
    UpstreamRead(std::io::Result<usize>),
    /// The shared connection could not be opened: this many requests were never sent.
    SharedUnavailable(u32),
    /// Too many unread replies held for this client on the shared connection.
    SharedOverflow,
}

/// This client's way to Redis.
enum Conn {
    /// Not connected (no shared connections configured, or not needed yet).
    None,
    /// A shared connection (`mux.rs`), until a request needs its own.
    Shared(crate::mux::Handle),
    /// The client's own connection.
    Dedicated(UpstreamStream),
}

/// [`Conn`] without the connection, for dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnKind {
    None,
    Shared,
    Dedicated,
}

impl Conn {
    fn kind(&self) -> ConnKind {
        match self {
            Conn::None => ConnKind::None,
            Conn::Shared(_) => ConnKind::Shared,
            Conn::Dedicated(_) => ConnKind::Dedicated,
        }
    }
}

/// Polls both sockets in one future (one task, no locks, no split streams): writes first, so
/// replies drain before more requests are taken in, then reads. Returns the first event;
/// every poll is cancel-safe because buffers are only changed by completed operations.
#[allow(clippy::too_many_arguments)]
fn poll_io<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    client: &mut S,
    conn: &mut Conn,
    cout: &mut BytesMut,
    uout: &mut BytesMut,
    shared_unsent: &mut u32,
    cin: &mut BytesMut,
    uin: &mut BytesMut,
    client_flush: &mut bool,
    want: Want,
) -> Poll<IoEvent> {
    if want.write_client {
        if let Poll::Ready(r) = poll_write_out(cx, client, cout, client_flush) {
            return Poll::Ready(IoEvent::ClientWrote(r));
        }
    }
    if want.write_upstream {
        match &mut *conn {
            Conn::Dedicated(up) => {
                let mut flush = false;
                if let Poll::Ready(r) = poll_write_out(cx, up, uout, &mut flush) {
                    return Poll::Ready(IoEvent::UpstreamWrote(r));
                }
            }
            Conn::Shared(handle) => {
                if handle.poll_send(cx, uout, *shared_unsent).is_ready() {
                    *shared_unsent = 0;
                    return Poll::Ready(IoEvent::UpstreamWrote(Ok(())));
                }
            }
            Conn::None => {}
        }
    }
    if want.read_client {
        if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut *client), cx, cin) {
            return Poll::Ready(IoEvent::ClientRead(r));
        }
    }
    if want.read_upstream {
        match conn {
            Conn::Dedicated(up) => {
                if let Poll::Ready(r) = poll_read_buf(Pin::new(up), cx, uin) {
                    return Poll::Ready(IoEvent::UpstreamRead(r));
                }
            }
            Conn::Shared(handle) => {
                if let Poll::Ready(taken) = handle.poll_take(cx, uin) {
                    return Poll::Ready(match taken {
                        Taken::Data(n) => IoEvent::UpstreamRead(Ok(n)),
                        // Handled as the end of a connection of its own would be.
                        Taken::Lost => IoEvent::UpstreamRead(Ok(0)),
                        Taken::Unavailable(n) => IoEvent::SharedUnavailable(n),
                        Taken::Overflow => IoEvent::SharedOverflow,
                    });
                }
            }
            Conn::None => {}
        }
    }
    Poll::Pending
}

/// Writes as much of `out` as the socket takes, then flushes once it is empty (TLS holds
/// records until flushed; `needs_flush` remembers that across wake-ups).
pub(crate) fn poll_write_out<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    w: &mut W,
    out: &mut BytesMut,
    needs_flush: &mut bool,
) -> Poll<std::io::Result<()>> {
    let mut progressed = false;
    while !out.is_empty() {
        match Pin::new(&mut *w).poll_write(cx, out) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                out.advance(n);
                *needs_flush = true;
                progressed = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending if progressed => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    }
    *needs_flush = true;
    match Pin::new(&mut *w).poll_flush(cx) {
        Poll::Ready(Ok(())) => {
            *needs_flush = false;
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending if progressed => Poll::Ready(Ok(())),
        Poll::Pending => Poll::Pending,
    }
}

/// Redis 7.0's refusal of a protected command (`processCommand`, `CMD_PROTECTED`) when
/// `enable-debug-command` / `enable-module-command` are left at their default, `no`.
fn protected_refusal(fullname: &str) -> Option<&'static [u8]> {
    let base = fullname.split('|').next().unwrap_or(fullname);
    match base {
        "debug" => Some(replies::DEBUG_NOT_ALLOWED),
        "module" => Some(replies::MODULE_NOT_ALLOWED),
        _ => None,
    }
}

/// Whether a command must run on the client's own upstream connection: it gives the connection
/// state Redis keeps per client (`client` struct in `server.h`: transaction, watched keys,
/// database, protocol, name, tracking, subscriptions, monitor, cluster flags), or it may hold the
/// connection (blocking commands, WAIT), or it is a module's and could do either; or it must
/// not wait behind another client's busy script (SCRIPT, FUNCTION, SHUTDOWN: `SCRIPT KILL` is
/// how a busy Redis is freed). Commands unknown to Redis get the same error on any
/// connection, so they can share.
fn needs_own_connection(spec: Option<&commands::CommandSpec>) -> bool {
    let Some(spec) = spec else {
        return false;
    };
    // A subcommand's name is `parent|sub`; byte-wise, as a `str` split costs a char search.
    let name = spec.name.as_bytes();
    let base = name
        .iter()
        .position(|&b| b == b'|')
        .and_then(|i| name.get(..i))
        .unwrap_or(name);
    spec.flags & (commands::FLAG_BLOCKING | commands::FLAG_MODULE) != 0
        || matches!(
            base,
            b"multi"
                | b"exec"
                | b"discard"
                | b"watch"
                | b"unwatch"
                | b"select"
                | b"hello"
                | b"reset"
                | b"client"
                | b"subscribe"
                | b"psubscribe"
                | b"ssubscribe"
                | b"unsubscribe"
                | b"punsubscribe"
                | b"sunsubscribe"
                | b"monitor"
                | b"sync"
                | b"psync"
                | b"replconf"
                | b"readonly"
                | b"readwrite"
                | b"asking"
                | b"wait"
                | b"waitaof"
                // Must reach Redis while a script or function blocks it: queued behind the
                // busy command on a shared connection they would wait for it to end.
                | b"script"
                | b"function"
                | b"shutdown"
        )
}

/// Commands redward answers itself that Redis refuses in a RESP2 subscriber's context (the
/// others reach Redis, which refuses them with its own text).
fn answered_here(req: &Request<'_>, is_acl: bool) -> bool {
    let name = req.name();
    is_acl
        || name.eq_ignore_ascii_case(b"auth")
        || name.eq_ignore_ascii_case(b"hello")
        || (name.eq_ignore_ascii_case(b"client")
            && req.argc() == 3
            && req.arg(1).eq_ignore_ascii_case(b"reply"))
}

/// Gives back memory a burst left behind, so idle connections stay small.
fn shrink(buf: &mut BytesMut) {
    if buf.capacity() > IDLE_BUFFER_KEEP {
        *buf = BytesMut::new();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    /// The request must go to Redis over a connection of this client's own, which it does not
    /// have yet: connect (after the shared connection's replies are in), then dispatch it
    /// again (nothing was changed by the first attempt).
    NeedUpstream,
    /// The answer depends on connection state Redis reports in replies still on their way
    /// (subscriptions, the protocol): once every earlier reply is in, dispatch it again
    /// (nothing was changed by the first attempt).
    WaitForReplies,
}

/// Counts of subscriptions Redis holds for this connection, as its confirmations report them.
#[derive(Debug, Default, Clone, Copy)]
struct Subscriptions {
    channels: i64,
    patterns: i64,
    shard: i64,
    /// channels + patterns as last reported (Redis's count in (P)SUBSCRIBE confirmations).
    last_total: i64,
}

impl Subscriptions {
    fn any(&self) -> bool {
        self.channels + self.patterns + self.shard > 0
    }

    /// Learns from a confirmation: its count is the new total for its family group.
    fn observe(&mut self, kind: PubSub, count: Option<i64>) {
        let Some(count) = count else { return };
        match kind {
            PubSub::Subscribe | PubSub::Unsubscribe => {
                self.channels = (self.channels + count - self.last_total).max(0);
                self.last_total = count;
            }
            PubSub::PSubscribe | PubSub::PUnsubscribe => {
                self.patterns = (self.patterns + count - self.last_total).max(0);
                self.last_total = count;
            }
            PubSub::SSubscribe | PubSub::SUnsubscribe => self.shard = count.max(0),
            _ => {}
        }
    }

    fn count(&self, family: Family) -> i64 {
        match family {
            Family::Channel => self.channels,
            Family::Pattern => self.patterns,
            Family::Shard => self.shard,
        }
    }
}

fn confirmation_family(kind: PubSub) -> Option<Family> {
    match kind {
        PubSub::Subscribe | PubSub::Unsubscribe => Some(Family::Channel),
        PubSub::PSubscribe | PubSub::PUnsubscribe => Some(Family::Pattern),
        PubSub::SSubscribe | PubSub::SUnsubscribe => Some(Family::Shard),
        _ => None,
    }
}

/// `CLIENT REPLY` state (`CLIENT_REPLY_OFF`, `_SKIP`, `_SKIP_NEXT` in `networking.c`).
#[derive(Debug, Default, Clone, Copy)]
struct ReplyMode {
    off: bool,
    skip_this: bool,
    skip_next: bool,
}

/// Per-connection protocol state; owns no sockets so it can be driven and tested alone.
struct State {
    shared: Arc<Shared>,
    /// The configuration this connection currently runs with (see `refresh`).
    live: Arc<Live>,
    /// The time of this turn of the loop, read at most once per turn (see [`State::now`]).
    now: Option<Instant>,
    peer: SocketAddr,
    /// The logged-in user; `None` while authentication is required.
    user: Option<Arc<User>>,
    slots: Slots,
    /// Requests to send to Redis.
    uout: BytesMut,
    /// Replies ready for the client, in order.
    cout: BytesMut,
    reply_mode: ReplyMode,
    /// Inside MULTI (as dispatched): commands are queued and get one reply each.
    in_multi: bool,
    /// A command inside this MULTI was refused by redward: EXEC must fail with EXECABORT, as
    /// Redis's `CLIENT_DIRTY_EXEC` makes it (Redis itself never saw the refused command).
    multi_dirty: bool,
    /// After MONITOR's +OK: upstream frames answer no request.
    monitor: bool,
    /// The protocol of the replies Redis is sending now (stream order).
    resp3: bool,
    subs: Subscriptions,
    /// (P|S)(UN)SUBSCRIBE requests sent whose confirmations are not all in yet.
    pubsub_pending: u32,
    /// SYNC/PSYNC was sent: the connection becomes a replication stream ([`replicate`]).
    handover: bool,
    /// No more requests are read (QUIT, protocol error).
    closing: bool,
    /// Requests forwarded / refused (ACL, rate) on this connection, for the metrics.
    forwarded: u64,
    refused: u64,
    /// Upstream replies completed, for sampling the latency histogram.
    completed: u64,
    /// Commands counted here but not yet added to the shared metrics: one atomic add per turn
    /// of the loop instead of one per command.
    reported_forwarded: u64,
    unreported_local: u64,
    /// The close slot was reached: write what is owed, then close.
    closed: bool,
    /// Replies owed for the requests in `uout` (shared connection only).
    shared_unsent: u32,
    /// A request needs a connection of its own and waits for the shared replies to come in.
    pin_wait: bool,
    /// This client had a large reply: it moves to its own connection at its next request.
    prefer_own: bool,
    /// The request being dispatched was dispatched before and had to wait for a connection:
    /// its command-rate token is already taken.
    retrying: bool,
}

impl State {
    fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
        let live = shared.live.load_full();
        let user = live.users.implicit_default().cloned();
        State {
            live,
            now: None,
            shared,
            peer,
            user,
            slots: Slots::default(),
            uout: BytesMut::new(),
            cout: BytesMut::new(),
            reply_mode: ReplyMode::default(),
            in_multi: false,
            multi_dirty: false,
            monitor: false,
            resp3: false,
            subs: Subscriptions::default(),
            pubsub_pending: 0,
            handover: false,
            closing: false,
            closed: false,
            forwarded: 0,
            refused: 0,
            completed: 0,
            reported_forwarded: 0,
            unreported_local: 0,
            shared_unsent: 0,
            pin_wait: false,
            prefer_own: false,
            retrying: false,
        }
    }

    /// Adds this connection's command counts to the shared metrics.
    fn report_commands(&mut self) {
        let forwarded = self.forwarded - self.reported_forwarded;
        if forwarded > 0 {
            self.shared.metrics.commands_forwarded.inc_by(forwarded);
            self.reported_forwarded = self.forwarded;
        }
        if self.unreported_local > 0 {
            self.shared
                .metrics
                .commands_local
                .inc_by(self.unreported_local);
            self.unreported_local = 0;
        }
    }

    /// This turn's time: request timestamps and deadlines share one clock read per wake-up.
    fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    /// A subscriber or MONITOR connection: the upstream sends without being asked.
    fn streaming(&self) -> bool {
        self.subs.any() || self.monitor
    }

    /// Replies buffered for the client before redward stops reading from Redis. Request and
    /// reply traffic is held back (Redis keeps the data); a stream would only make Redis drop
    /// redward's connection at its own limit, so it is buffered here up to the output limit.
    fn client_out_cap(&self) -> usize {
        if self.streaming() {
            self.live.limits.output_hard
        } else {
            CLIENT_OUT_HIGH
        }
    }

    fn frame_limits(&self) -> Limits {
        let l = &self.live.limits;
        Limits::new(l.max_bulk_len, l.max_inline_len, self.user.is_some())
    }

    /// Whether the reply to the command being dispatched is suppressed by CLIENT REPLY.
    fn suppressed(&self) -> bool {
        self.reply_mode.off || self.reply_mode.skip_this
    }

    /// Queues a reply redward wrote itself, unless CLIENT REPLY suppresses it.
    fn local(&mut self, reply: Bytes) {
        if self.suppressed() {
            return;
        }
        if self.slots.is_empty() {
            self.cout.extend_from_slice(&reply);
        } else {
            self.slots.push(Slot::Local(reply));
        }
    }

    /// Queues a reply that differs between RESP2 and RESP3; the protocol in force when it is
    /// written decides.
    fn local_proto(&mut self, reply: acl_cmd::Reply) {
        if self.suppressed() {
            return;
        }
        if self.slots.is_empty() {
            let bytes = if self.resp3 {
                &reply.resp3
            } else {
                &reply.resp2
            };
            self.cout.extend_from_slice(bytes);
        } else {
            self.slots.push(Slot::LocalProto {
                resp2: Bytes::from(reply.resp2),
                resp3: Bytes::from(reply.resp3),
            });
        }
    }

    /// Refuses a command the way Redis's `rejectCommand` does: an error reply, and inside
    /// MULTI the transaction is doomed to EXECABORT.
    fn reject(&mut self, reply: Bytes) {
        if self.in_multi {
            self.multi_dirty = true;
        }
        self.local(reply);
    }

    fn context(&self) -> &'static str {
        if self.in_multi {
            "multi"
        } else {
            "toplevel"
        }
    }

    fn audit_auth_failure(&self, req: &Request<'_>, username: String) {
        self.shared.metrics.auth_failures.inc();
        self.shared.audit.record(&Event {
            reason: Reason::Auth,
            context: self.context(),
            username,
            peer: self.peer,
            object: String::from_utf8_lossy(req.name()).into_owned(),
            command: String::from_utf8_lossy(req.name()).to_ascii_lowercase(),
        });
    }

    fn audit_denied(
        &self,
        user: &User,
        spec: &commands::CommandSpec,
        req: &Request<'_>,
        d: Denied,
    ) {
        let (reason, object) = match d {
            Denied::Command => (Reason::Command, spec.name.to_owned()),
            Denied::Key { arg } => (
                Reason::Key,
                String::from_utf8_lossy(req.arg(arg)).into_owned(),
            ),
            Denied::Channel { arg } => (
                Reason::Channel,
                String::from_utf8_lossy(req.arg(arg)).into_owned(),
            ),
        };
        self.shared.audit.record(&Event {
            reason,
            context: self.context(),
            username: user.name.clone(),
            peer: self.peer,
            object,
            command: spec.name.to_owned(),
        });
    }

    fn close_after_replies(&mut self) {
        self.closing = true;
        if self.slots.is_empty() {
            self.closed = true;
        } else {
            self.slots.push(Slot::Close);
        }
    }

    /// Redis's `resetClient` after every command (and every empty request): a pending
    /// `CLIENT REPLY SKIP` applies to the next one.
    fn end_of_command(&mut self) {
        self.reply_mode.skip_this = false;
        if self.reply_mode.skip_next {
            self.reply_mode.skip_this = true;
            self.reply_mode.skip_next = false;
        }
    }

    /// Picks up a reloaded configuration before the next command, as Redis applies changed ACL
    /// rules to connected clients: the user's new rules from now on; a user that was removed
    /// or disabled is disconnected.
    fn refresh(&mut self) {
        if self
            .shared
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
            == self.live.generation
        {
            return;
        }
        self.live = self.shared.live.load_full();
        if let Some(user) = &self.user {
            match self.live.users.get(user.name.as_bytes()) {
                Some(new) if new.enabled => self.user = Some(Arc::clone(new)),
                _ => {
                    info!(peer = %self.peer, user = %user.name, "user removed or disabled by reload; closing");
                    self.user = None;
                    self.close_after_replies();
                }
            }
        }
    }

    fn dispatch(&mut self, req: &Request<'_>, raw: &[u8], conn: ConnKind) -> Outcome {
        self.refresh();
        if self.closing {
            return Outcome::Done;
        }
        let before = self.forwarded + self.refused;
        let outcome = self.dispatch_inner(req, raw, conn);
        if outcome == Outcome::Done {
            self.retrying = false;
            if self.forwarded + self.refused == before {
                self.unreported_local += 1;
            }
            self.end_of_command();
        }
        outcome
    }

    fn dispatch_inner(&mut self, req: &Request<'_>, raw: &[u8], conn: ConnKind) -> Outcome {
        let name = req.name();
        // processCommand's "possible security attack" check: an HTTP request sent to Redis
        // (cross-protocol scripting). Redis closes without a reply.
        if name.eq_ignore_ascii_case(b"host:") || name.eq_ignore_ascii_case(b"post") {
            warn!(peer = %self.peer, "HTTP request on a Redis port (cross-protocol attack?); closing");
            self.close_after_replies();
            return Outcome::Done;
        }
        let Some(user) = self.user.clone() else {
            return self.dispatch_unauthenticated(req, raw, conn);
        };
        // The command rate is charged first, for every command: one the ACL denies, or one
        // Redis does not know, costs a token too, or refusals would be a free way to make
        // redward burn CPU and write the audit trail.
        if let Some(rate) = self
            .live
            .command_rates
            .get(&user.name)
            .filter(|_| !self.retrying)
        {
            if rate.check().is_err() {
                self.refused += 1;
                self.shared.metrics.commands_rate_limited.inc();
                self.reject(Bytes::from_static(replies::COMMAND_RATE_EXCEEDED));
                return Outcome::Done;
            }
        }
        // Redis's order (`processCommand`): existence, arity, then the ACL check. A user with
        // every permission takes the fast path: Redis makes the same checks with the same
        // texts, and commands unknown to redward's table (newer Redis, modules) still work.
        let is_acl = name.eq_ignore_ascii_case(b"acl");
        // Resolved once here when the ACL check needs it; the shared-connection decision
        // below reuses it.
        let mut resolved = None;
        if !user.unrestricted || is_acl {
            let spec = match commands::resolve(req) {
                Ok(spec) => spec,
                Err(e) => {
                    // Unknown to redward means refused: it cannot be checked.
                    self.reject(Bytes::from(e.reply(req)));
                    return Outcome::Done;
                }
            };
            resolved = Some(spec);
            if let Err(d) = acl::check(&user, spec, req) {
                self.refused += 1;
                self.shared.metrics.commands_denied.inc();
                match d {
                    Denied::Command => self.shared.metrics.acl_denied_command.inc(),
                    Denied::Key { .. } => self.shared.metrics.acl_denied_key.inc(),
                    Denied::Channel { .. } => self.shared.metrics.acl_denied_channel.inc(),
                };
                self.audit_denied(&user, spec, req, d);
                // Redis refuses DEBUG and MODULE as protected commands before its ACL check
                // (`processCommand`, with the default enable-*-command no): same text here.
                let reply = match protected_refusal(spec.name) {
                    Some(text) => Bytes::from_static(text),
                    None => Bytes::from(d.reply(spec, req)),
                };
                self.reject(reply);
                return Outcome::Done;
            }
            if let Some(refusal) = acl::sort_refusal(&user, spec, req) {
                // Redis refuses these inside SORT itself (not a NOPERM, not in ACL LOG).
                self.local(Bytes::from_static(refusal));
                return Outcome::Done;
            }
        }
        if (self.subs.any() || self.pubsub_pending > 0) && answered_here(req, is_acl) {
            // Redis refuses these in a RESP2 subscriber's context (`processCommand`); redward
            // would otherwise answer them itself. Whether the client is a subscriber then is
            // known once the (un)subscribe confirmations before it are in.
            if self.slots.upstream_pending() > 0 {
                return Outcome::WaitForReplies;
            }
        }
        if self.pubsub_context() && answered_here(req, is_acl) {
            let fullname = commands::resolve(req).map_or("", |s| s.name);
            self.reject(Bytes::from(format!(
                "-ERR Can't execute '{fullname}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
            )));
            return Outcome::Done;
        }
        if name.eq_ignore_ascii_case(b"config") && self.changes_own_credential(req) {
            self.reject(Bytes::from_static(replies::OWN_CREDENTIAL));
            return Outcome::Done;
        }
        if is_acl {
            match acl_cmd::answer(req, &user, &self.live.users, &self.shared.audit) {
                acl_cmd::Answer::Local(reply) => {
                    self.local_proto(reply);
                    return Outcome::Done;
                }
                acl_cmd::Answer::Forward => {}
            }
        }
        if self.in_multi
            && self.multi_dirty
            && name.eq_ignore_ascii_case(b"exec")
            && req.argc() == 1
        {
            if conn != ConnKind::Dedicated {
                return Outcome::NeedUpstream;
            }
            // Redis never saw the refused command, so it would run the transaction: end it
            // with DISCARD (reply swallowed) and answer EXEC as Redis would have.
            self.in_multi = false;
            self.multi_dirty = false;
            let mut discard = Vec::with_capacity(16);
            encode_command(&mut discard, [&b"DISCARD"[..]].into_iter());
            self.uout.extend_from_slice(&discard);
            let sent = self.now();
            self.slots.push(Slot::Upstream {
                expect: Expect::Replies(1),
                forward: false,
                hook: Hook::None,
                sent,
            });
            self.local(Bytes::from_static(replies::EXECABORT));
            return Outcome::Done;
        }
        if name.eq_ignore_ascii_case(b"auth") {
            match commands::resolve(req) {
                Ok(_) => self.do_auth(req),
                Err(e) => self.local(Bytes::from(e.reply(req))),
            }
            return Outcome::Done;
        }
        if name.eq_ignore_ascii_case(b"hello") {
            return self.do_hello(req, raw, conn);
        }
        if name.eq_ignore_ascii_case(b"quit") {
            self.local(Bytes::from_static(replies::OK));
            self.close_after_replies();
            return Outcome::Done;
        }
        if name.eq_ignore_ascii_case(b"reset") && req.argc() == 1 {
            return self.do_reset(raw, conn);
        }
        if name.eq_ignore_ascii_case(b"client")
            && req.argc() == 3
            && req.arg(1).eq_ignore_ascii_case(b"reply")
        {
            self.client_reply(req.arg(2));
            return Outcome::Done;
        }
        if (name.eq_ignore_ascii_case(b"sync") || name.eq_ignore_ascii_case(b"psync"))
            && conn == ConnKind::Dedicated
            && !self.in_multi
        {
            // Every earlier reply goes to the client first; then the bytes are Redis's.
            if self.slots.upstream_pending() > 0 {
                return Outcome::WaitForReplies;
            }
            self.release_front();
            self.forward(req, raw);
            self.handover = true;
            return Outcome::Done;
        }
        match conn {
            ConnKind::Dedicated => {}
            ConnKind::Shared
                if !self.prefer_own
                    && !needs_own_connection(resolved.or_else(|| commands::lookup(name))) =>
            {
                self.shared_unsent += 1;
            }
            _ => return Outcome::NeedUpstream,
        }
        let (expect, hook) = self.expectation(req);
        self.forward(req, raw);
        let forward = !self.suppressed();
        self.expect(expect, hook, forward);
        Outcome::Done
    }

    /// A RESP2 connection with subscriptions: Redis allows it only (P|S)(UN)SUBSCRIBE, PING,
    /// QUIT and RESET. (Exact once every earlier reply is in.)
    fn pubsub_context(&self) -> bool {
        !self.resp3 && self.subs.any()
    }

    /// Whether a CONFIG request would change the credential redward logs in to Redis with:
    /// `CONFIG SET requirepass` (in any of its parameter pairs) while redward is Redis's
    /// `default` user. Every later upstream connection would fail, for every client; ACL
    /// SETUSER and friends are refused for the same reason (`acl_cmd.rs`).
    fn changes_own_credential(&self, req: &Request<'_>) -> bool {
        req.argc() >= 4
            && req.arg(1).eq_ignore_ascii_case(b"set")
            && self.shared.connector.logs_in_as_default()
            && (2..req.argc())
                .step_by(2)
                .any(|i| req.arg(i).eq_ignore_ascii_case(b"requirepass"))
    }

    /// `CLIENT REPLY ON|OFF|SKIP` is carried out by redward (`clientCommand` in
    /// `networking.c`): Redis keeps answering everything and redward drops the replies the
    /// client asked not to get, its own included. Redis is never out of step with redward
    /// about which replies exist, even when a later command is answered locally.
    fn client_reply(&mut self, mode: &[u8]) {
        if self.in_multi {
            // Redis would queue it and switch modes inside EXEC, where replies can no longer be
            // matched to requests; refuse rather than risk a desynchronised stream.
            self.local(Bytes::from_static(
                b"-ERR CLIENT REPLY inside MULTI is not supported by redward\r\n",
            ));
        } else if mode.eq_ignore_ascii_case(b"on") {
            self.reply_mode = ReplyMode::default();
            self.local(Bytes::from_static(replies::OK));
        } else if mode.eq_ignore_ascii_case(b"off") {
            self.reply_mode.off = true;
        } else if mode.eq_ignore_ascii_case(b"skip") {
            if !self.reply_mode.off {
                self.reply_mode.skip_next = true;
            }
        } else {
            self.local(Bytes::from_static(replies::SYNTAX));
        }
    }

    /// Before login Redis checks existence and arity first, then `CMD_NO_AUTH`
    /// (`processCommand`), so those errors come before NOAUTH.
    fn dispatch_unauthenticated(
        &mut self,
        req: &Request<'_>,
        raw: &[u8],
        conn: ConnKind,
    ) -> Outcome {
        let spec = match commands::resolve(req) {
            Ok(spec) => spec,
            Err(e) => {
                self.local(Bytes::from(e.reply(req)));
                return Outcome::Done;
            }
        };
        if spec.flags & commands::FLAG_NO_AUTH == 0 {
            self.local(Bytes::from_static(replies::NOAUTH));
            return Outcome::Done;
        }
        match spec.name {
            "auth" => self.do_auth(req),
            "hello" => return self.do_hello(req, raw, conn),
            "quit" => {
                self.local(Bytes::from_static(replies::OK));
                self.close_after_replies();
            }
            "reset" => self.local(Bytes::from_static(replies::RESET)),
            _ => self.local(Bytes::from_static(replies::NOAUTH)),
        }
        Outcome::Done
    }

    /// Brute-force defence: an address over its failed-login quota is refused without the
    /// password being looked at.
    fn auth_locked_out(&mut self, req: &Request<'_>) -> bool {
        if !self.shared.limiter.auth_locked(self.peer.ip()) {
            return false;
        }
        self.shared.metrics.auth_lockouts.inc();
        self.audit_auth_failure(req, "(locked out)".to_owned());
        self.local(Bytes::from_static(replies::AUTH_LOCKED));
        true
    }

    fn do_auth(&mut self, req: &Request<'_>) {
        if req.argc() <= 3 && self.auth_locked_out(req) {
            return;
        }
        match auth::auth(&self.live.users, req) {
            AuthOutcome::LoggedIn(user) => {
                debug!(peer = %self.peer, user = %user.name, "authenticated");
                self.user = Some(user);
                self.local(Bytes::from_static(replies::OK));
            }
            AuthOutcome::Refused { reply, failed_user } => {
                if let Some(u) = failed_user {
                    self.audit_auth_failure(req, u);
                    self.shared.limiter.auth_failed(self.peer.ip());
                }
                self.local(reply);
            }
        }
    }

    fn do_hello(&mut self, req: &Request<'_>, raw: &[u8], conn: ConnKind) -> Outcome {
        if let Err(e) = commands::resolve(req) {
            self.local(Bytes::from(e.reply(req)));
            return Outcome::Done;
        }
        let has_auth = req.args().skip(2).any(|a| a.eq_ignore_ascii_case(b"auth"));
        if has_auth && self.auth_locked_out(req) {
            return Outcome::Done;
        }
        let out = auth::hello(&self.live.users, req, self.user.is_some());
        let fwd = match out.result {
            Err(reply) => {
                if let Some(u) = out.failed_user {
                    self.audit_auth_failure(req, u);
                    self.shared.limiter.auth_failed(self.peer.ip());
                }
                if let Some(user) = out.login {
                    self.user = Some(user);
                }
                self.local(reply);
                return Outcome::Done;
            }
            Ok(fwd) => fwd,
        };
        if conn != ConnKind::Dedicated {
            // Nothing changed yet: connect, then come back to this same request. (HELLO sets
            // the protocol and names the connection: never on a shared one.)
            return Outcome::NeedUpstream;
        }
        if let Some(user) = out.login {
            debug!(peer = %self.peer, user = %user.name, "authenticated (HELLO)");
            self.user = Some(user);
        }
        if fwd.had_auth || req.is_inline() {
            let mut args: Vec<&[u8]> = vec![b"HELLO"];
            if let Some(v) = fwd.version {
                args.push(v);
            }
            if let Some(n) = fwd.setname {
                args.push(b"SETNAME");
                args.push(n);
            }
            let mut buf = Vec::with_capacity(64);
            encode_command(&mut buf, args.into_iter());
            self.uout.extend_from_slice(&buf);
        } else {
            self.uout.extend_from_slice(raw);
        }
        let forward = !self.suppressed();
        self.expect(Expect::Replies(1), Hook::Hello, forward);
        Outcome::Done
    }

    /// RESET: Redis resets the connection (and logs it out upstream too), so redward forwards
    /// it for Redis's own reply and state, then logs the upstream connection back in as
    /// itself; the client is logged out of redward, as `clearClientConnectionState` does.
    fn do_reset(&mut self, raw: &[u8], conn: ConnKind) -> Outcome {
        self.user = self.live.users.implicit_default().cloned();
        self.in_multi = false;
        self.multi_dirty = false;
        // RESET clears CLIENT REPLY OFF/SKIP before replying, so its reply is always sent.
        self.reply_mode = ReplyMode::default();
        if conn != ConnKind::Dedicated {
            // No connection, or a shared one: Redis holds no state of this client to reset.
            self.local(Bytes::from_static(replies::RESET));
            return Outcome::Done;
        }
        self.uout.extend_from_slice(raw);
        let sent = self.now();
        self.slots.push(Slot::Upstream {
            expect: Expect::Replies(1),
            forward: true,
            hook: Hook::Reset,
            sent,
        });
        if let Some(auth) = self.shared.connector.auth_request() {
            self.uout.extend_from_slice(auth);
            let sent = self.now();
            self.slots.push(Slot::Upstream {
                expect: Expect::Replies(1),
                forward: false,
                hook: Hook::UpstreamAuth,
                sent,
            });
        }
        Outcome::Done
    }

    fn forward(&mut self, req: &Request<'_>, raw: &[u8]) {
        self.forwarded += 1;

        if req.is_inline() {
            // Inline requests are re-encoded so Redis sees exactly the arguments checked here.
            let mut buf = Vec::with_capacity(raw.len() + 16);
            encode_command(&mut buf, req.args().collect::<Vec<_>>().into_iter());
            self.uout.extend_from_slice(&buf);
        } else {
            self.uout.extend_from_slice(raw);
        }
    }

    fn expect(&mut self, expect: Expect, hook: Hook, forward: bool) {
        if matches!(expect, Expect::Replies(0) | Expect::Confirms(_, 0)) {
            return;
        }
        if self.monitor {
            // Monitor lines and replies cannot be told apart; pass everything through.
            return;
        }
        if hook == Hook::PubSub {
            self.pubsub_pending += 1;
        }
        let sent = self.now();
        self.slots.push(Slot::Upstream {
            expect,
            forward,
            hook,
            sent,
        });
    }

    /// How many replies Redis owes for a forwarded request, following the commands that change
    /// that count ((UN)SUBSCRIBE family, MONITOR) and MULTI queueing.
    fn expectation(&mut self, req: &Request<'_>) -> (Expect, Hook) {
        let name = req.name();
        let argc = req.argc();
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if self.in_multi {
            if is(b"exec") || is(b"discard") {
                self.in_multi = false;
                self.multi_dirty = false;
            }
            return (Expect::Replies(1), Hook::None);
        }
        if is(b"multi") {
            self.in_multi = argc == 1;
            self.multi_dirty = false;
            return (Expect::Replies(1), Hook::None);
        }
        if is(b"monitor") && argc == 1 {
            return (Expect::Replies(1), Hook::Monitor);
        }
        let family = if is(b"subscribe") || is(b"unsubscribe") {
            Some(Family::Channel)
        } else if is(b"psubscribe") || is(b"punsubscribe") {
            Some(Family::Pattern)
        } else if is(b"ssubscribe") || is(b"sunsubscribe") {
            Some(Family::Shard)
        } else {
            None
        };
        if let Some(family) = family {
            let unsubscribe = name.len() > 2
                && (name
                    .get(..5)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"unsub"))
                    || name
                        .get(1..6)
                        .is_some_and(|p| p.eq_ignore_ascii_case(b"unsub")));
            let n = u32::try_from(argc.saturating_sub(1)).unwrap_or(u32::MAX);
            if unsubscribe && n == 0 {
                return (Expect::UnsubscribeAll(family), Hook::PubSub);
            }
            if n > 0 {
                return (Expect::Confirms(family, n), Hook::PubSub);
            }
        }
        (Expect::Replies(1), Hook::None)
    }

    /// Moves complete (or streaming) replies from `uin` to the client, in slot order.
    fn take_replies(
        &mut self,
        scanner: &mut ReplyScanner,
        uin: &mut BytesMut,
    ) -> Result<(), SessionError> {
        loop {
            self.release_front();
            if self.closed || uin.is_empty() || self.cout.len() >= self.client_out_cap() {
                return Ok(());
            }
            let step = scanner.advance(uin)?;
            let (consumed, info) = match step {
                Step::Partial { consumed } => (consumed, None),
                Step::Complete { consumed, info } => (consumed, Some(info)),
            };
            let kind = info.map(|i| i.kind).or(scanner.current_kind());
            // CLIENT REPLY OFF/SKIP silences replies, not pushes: RESP3 pushes, and the
            // (un)subscribe confirmations Redis sends as pushes in RESP2 too (`CLIENT_PUSHING`
            // in networking.c's `prepareClientToWrite`), always reach the client.
            let swallow = kind != Some(b'>')
                && match self.slots.front() {
                    Some(Slot::Upstream {
                        forward: false,
                        expect,
                        ..
                    }) => {
                        !(kind == Some(b'*')
                            && matches!(expect, Expect::Confirms(..) | Expect::UnsubscribeAll(_)))
                    }
                    _ => false,
                };
            if !swallow {
                self.cout
                    .extend_from_slice(uin.get(..consumed).unwrap_or(&[]));
            }
            uin.advance(consumed);
            match info {
                Some(info) => self.on_reply(info)?,
                None => return Ok(()),
            }
        }
    }

    /// Accounts one complete top-level frame from Redis against the slots.
    fn on_reply(&mut self, info: FrameInfo) -> Result<(), SessionError> {
        if self.monitor {
            // Monitor lines answer no request; only RESET's own reply ends the mode.
            let reset_reply = info.kind == b'+' && info.head.as_bytes() == Some(&b"RESET"[..]);
            let reset_front = matches!(
                self.slots.front(),
                Some(Slot::Upstream {
                    hook: Hook::Reset,
                    ..
                })
            );
            if !(reset_reply && reset_front) {
                return Ok(());
            }
        }
        let pubsub = info.pubsub();
        if let Some(kind) = pubsub {
            if confirmation_family(kind).is_some() {
                self.subs.observe(kind, info.count);
            }
        }
        let confirms_front = |slots: &Slots, fam: Option<Family>| match (slots.front(), fam) {
            (
                Some(Slot::Upstream {
                    expect: Expect::Confirms(f, _),
                    ..
                }),
                Some(fam),
            ) => *f == fam,
            _ => false,
        };
        let family = pubsub.and_then(confirmation_family);
        if info.is_push() {
            // RESP3 pushes answer no request, except (un)subscribe confirmations, which
            // belong to the (un)subscribe request at the front.
            if !confirms_front(&self.slots, family) {
                return Ok(());
            }
        } else if !self.resp3 && self.subs.any() && pubsub.is_some_and(PubSub::is_message) {
            return Ok(()); // a RESP2 pub/sub message
        }
        let Some(Slot::Upstream {
            expect,
            hook,
            sent,
            forward,
        }) = self.slots.front_mut()
        else {
            return Err(SessionError::UnexpectedReply);
        };
        let done = match expect {
            Expect::Replies(n) | Expect::Confirms(_, n) => {
                if info.is_error() {
                    true
                } else {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
            }
            Expect::UnsubscribeAll(_) => true, // resolved in release_front; unreachable
        };
        if !done {
            return Ok(());
        }
        let (hook, sent, forward) = (*hook, *sent, *forward);
        // The latency histogram samples one reply in eight: enough for its quantiles, and
        // cheaper than an observation (a float CAS loop) per request.
        if forward && self.completed.is_multiple_of(8) {
            let took = self.now().saturating_duration_since(sent);
            self.shared
                .metrics
                .request_duration
                .observe(took.as_secs_f64());
        }
        self.completed = self.completed.wrapping_add(1);
        self.slots.pop();
        match hook {
            Hook::None => {}
            Hook::Hello => match info.kind {
                b'%' => self.resp3 = true,
                b'*' => self.resp3 = false,
                _ => {}
            },
            Hook::Reset => {
                if !info.is_error() {
                    self.resp3 = false;
                    self.monitor = false;
                    self.subs = Subscriptions::default();
                }
            }
            Hook::Monitor => {
                if !info.is_error() {
                    self.monitor = true;
                }
            }
            Hook::UpstreamAuth => {
                if info.is_error() {
                    return Err(SessionError::UpstreamReauth);
                }
            }
            Hook::PubSub => self.pubsub_pending = self.pubsub_pending.saturating_sub(1),
        }
        Ok(())
    }

    /// Writes every local reply now at the front and resolves an UNSUBSCRIBE-all that reached
    /// the front (all earlier confirmations have been seen, so the count is Redis's).
    fn release_front(&mut self) {
        loop {
            match self.slots.front_mut() {
                Some(Slot::Local(_)) => {
                    if let Some(Slot::Local(bytes)) = self.slots.pop() {
                        self.cout.extend_from_slice(&bytes);
                    }
                }
                Some(Slot::LocalProto { .. }) => {
                    if let Some(Slot::LocalProto { resp2, resp3 }) = self.slots.pop() {
                        self.cout
                            .extend_from_slice(if self.resp3 { &resp3 } else { &resp2 });
                    }
                }
                Some(Slot::Close) => {
                    self.slots.pop();
                    self.closed = true;
                    return;
                }
                Some(Slot::Upstream { expect, .. }) => {
                    if let Expect::UnsubscribeAll(family) = *expect {
                        let n = self.subs.count(family).max(1);
                        *expect = Expect::Confirms(family, u32::try_from(n).unwrap_or(u32::MAX));
                    }
                    return;
                }
                None => return,
            }
        }
    }

    /// The shared connection could not be opened: the `n` oldest requests owed by Redis were
    /// never sent, and are answered as a failed connect of a client's own would be.
    fn shared_unavailable(&mut self, n: u32) {
        // The connect error is counted once, by the shared connection's task.
        let unavailable = Bytes::from_static(replies::UPSTREAM_UNAVAILABLE);
        self.slots.fail_upstream(n, &unavailable);
    }

    /// The upstream failed: every request still waiting gets an error (unless a reply was cut
    /// in half, which cannot be repaired), then the client connection closes.
    fn upstream_failed(
        &mut self,
        scanner: &ReplyScanner,
        error: SessionError,
    ) -> Result<(), SessionError> {
        if !scanner.in_frame() {
            for slot in self.slots.drain() {
                match slot {
                    Slot::Local(bytes) => self.cout.extend_from_slice(&bytes),
                    Slot::LocalProto { resp2, resp3 } => self
                        .cout
                        .extend_from_slice(if self.resp3 { &resp3 } else { &resp2 }),
                    Slot::Upstream { forward: true, .. } => {
                        self.cout.extend_from_slice(replies::UPSTREAM_LOST)
                    }
                    Slot::Upstream { .. } => {}
                    Slot::Close => break,
                }
            }
        }
        Err(error)
    }
}

impl Shared {
    /// Everything sessions share, for `cfg`, without listeners, admin endpoint or shared
    /// upstream connections: for driving sessions in memory ([`Offline`]).
    ///
    /// # Errors
    /// A [`crate::tls::TlsError`] when the upstream TLS settings cannot be loaded.
    pub fn offline(cfg: &crate::config::Config) -> Result<Arc<Shared>, crate::tls::TlsError> {
        Ok(Shared::new(
            cfg,
            Connector::new(&cfg.upstream)?,
            None,
            Arc::new(Audit::default()),
            Arc::new(crate::metrics::Metrics::new()),
        ))
    }

    /// What the sessions of a server started from `cfg` share (generation 0 of the
    /// reloadable part).
    pub fn new(
        cfg: &crate::config::Config,
        connector: Connector,
        pool: Option<crate::mux::Pool>,
        audit: Arc<Audit>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Shared> {
        let memory = Arc::new(crate::memory::ClientMemory::new(
            cfg.limits.max_client_memory,
            metrics.client_memory.clone(),
            metrics.clients_evicted.clone(),
        ));
        Arc::new(Shared {
            live: arc_swap::ArcSwap::from_pointee(crate::reload::live(cfg, 0)),
            generation: std::sync::atomic::AtomicU64::new(0),
            connector,
            pool,
            audit,
            limiter: Arc::new(crate::limits::Limiter::new(cfg.connection_limits)),
            metrics,
            memory,
            refusal_lines: crate::throttle::Throttle::default(),
        })
    }
}

/// One session's per-request work without sockets: framing, the ACL check, forwarding, reply
/// scanning and ordering, exactly as [`serve`] does them between a read and a write. For
/// `benches/path.rs`, which sets it beside a plain copy of the same bytes.
pub struct Offline {
    st: State,
    parser: RequestParser,
    scanner: ReplyScanner,
}

impl Offline {
    /// A logged-in session of `user`, forwarding as on a shared upstream connection.
    pub fn new(shared: Arc<Shared>, user: Arc<User>) -> Self {
        let mut st = State::new(shared, SocketAddr::from(([127, 0, 0, 1], 0)));
        st.user = Some(user);
        Offline {
            st,
            parser: RequestParser::new(),
            scanner: ReplyScanner::new(),
        }
    }

    /// Takes every complete request from `cin`; appends what goes to Redis to `upstream`.
    pub fn requests(&mut self, cin: &mut BytesMut, upstream: &mut BytesMut) {
        let st = &mut self.st;
        st.now = None;
        loop {
            let limits = st.frame_limits();
            let Ok(Some(frame)) = self.parser.parse(cin, &limits) else {
                break;
            };
            let len = frame.len();
            if let Frame::Command { .. } = frame {
                let req = self.parser.request(cin, &frame);
                let raw = cin.get(..len).unwrap_or(&[]);
                // As on the shared connection (the default); a command that needs a
                // connection of its own is dispatched as if it had one.
                match st.dispatch(&req, raw, ConnKind::Shared) {
                    Outcome::NeedUpstream => {
                        st.retrying = true;
                        st.dispatch(&req, raw, ConnKind::Dedicated);
                    }
                    // (Replies come only through `replies`: a subscriber's state waits.)
                    Outcome::WaitForReplies => break,
                    Outcome::Done => {}
                }
            }
            cin.advance(len);
        }
        upstream.extend_from_slice(&st.uout);
        st.uout.clear();
        st.shared_unsent = 0;
    }

    /// Takes Redis's replies from `uin`; appends what goes to the client to `client`.
    ///
    /// # Errors
    /// As a session would fail on them (a malformed or unexpected reply).
    pub fn replies(
        &mut self,
        uin: &mut BytesMut,
        client: &mut BytesMut,
    ) -> Result<(), SessionError> {
        self.st.take_replies(&mut self.scanner, uin)?;
        client.extend_from_slice(&self.st.cout);
        self.st.cout.clear();
        Ok(())
    }
}
