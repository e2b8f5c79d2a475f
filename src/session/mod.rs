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
//!
//! This file holds the per-connection state and the loop (`serve`); `dispatch.rs` the checks
//! and routing of each request, `reply_path.rs` the replies' way back, `io.rs` the sockets,
//! `slots.rs` the reply order, `acl_cmd.rs` the ACL subcommands, `offline.rs` the in-memory
//! path for benchmarks.

mod acl_cmd;
mod dispatch;
mod io;
mod offline;
mod reply_path;
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

pub use offline::Offline;
pub use slots::{Expect, Family, Hook, Slot, Slots};

pub(crate) use io::poll_write_out;
use io::{poll_io, replicate, Conn, ConnKind, IoEvent, Want};
use reply_path::Subscriptions;

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
}
