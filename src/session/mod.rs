//! One client's life, from the first byte after the TLS handshake to close.
//!
//! The order of operations is the security model:
//! 1. Requests are framed with Redis's pre-authentication limits until the client logs in.
//! 2. Before login only AUTH, HELLO, QUIT and RESET are served, by redward; everything else is
//!    answered with Redis's own NOAUTH text, and no upstream connection exists yet.
//! 3. After login, requests are forwarded byte for byte: over shared upstream connections
//!    (`mux.rs`, one pool per protocol, database and upstream user) while they do not depend
//!    on connection state; `SELECT` and `HELLO` move the client between those pools, and the
//!    `CLIENT` subcommands about the client itself are answered here (`client_cmd.rs`). From
//!    the first request that gives the connection state (MULTI, WATCH, blocking commands,
//!    pub/sub, MONITOR, tracking, ...: `route.rs`) it rides this client's own connection
//!    (opened then, logged in as redward and then as the client's upstream user:
//!    `identity.rs`), so they keep their meaning.
//! 4. Replies that redward writes itself are slotted between Redis's replies in request order
//!    (`slots.rs`); replies are scanned for boundaries only, and streamed through.
//!
//! Every wait is bounded: the login deadline, the client write timeout, the upstream connect
//! timeout; every buffer is capped, and a full one stops reading on the other side.
//!
//! The phases, each in the file named for it (as pingora's proxy phases are methods a reader
//! finds by name, and mini-redis keeps the loop apart from the connection):
//! - this file: [`serve`], the driver loop, which reads top to bottom: take requests, take
//!   replies, check bounds, wait for the next event, and say goodbye;
//! - `login.rs`: AUTH, HELLO, RESET and the requests of a client not yet logged in; the only
//!   way to the session's [`LoggedIn`] proof;
//! - `dispatch.rs`: each request framed, admitted once (`admission.rs`: a pure verdict of
//!   user, request and connection state holding all policy), answered here if it is one of
//!   redward's own commands (its `LOCAL` table), else routed and forwarded;
//! - `route.rs`: which upstream connection a request takes, and moving to the client's own;
//! - `reply_path.rs`: Redis's replies and redward's own back to the client in request order,
//!   with the reply hook (`reply_hook.rs`) on the one path every reply takes. What a fixed,
//!   Sentinel-followed or cluster upstream changes there is asked of the upstream's kind
//!   (`upstream/kind.rs`), never decided in the session;
//! - `state.rs`: the state the phases share; `deadlines.rs`: every wait's deadline;
//!   `io.rs`: the sockets; `error.rs`: why a session ended and whose fault that was;
//!   `slots.rs`: reply order; `acl_cmd.rs`: the ACL subcommands; `offline.rs`: the same
//!   path without sockets, for benchmarks and tests; `client_views.rs`: `SLOWLOG GET` and
//!   `INFO` clients naming and counting redward's clients.

mod acl_admin;
mod acl_cmd;
mod admission;
mod client_cmd;
mod client_views;
mod deadlines;
mod dispatch;
mod error;
mod identity;
mod io;
mod login;
mod offline;
mod reply_hook;
mod reply_path;
mod route;
mod slots;
mod state;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::acl::{Denied, User};
use crate::audit::{Event, Reason};
use crate::auth::{self, AuthOutcome, LoggedIn};
use crate::commands;
use crate::fault::Side;
use crate::mux::Taken;
use crate::net_io::poll_write_out;
use crate::resp::replies;
use crate::resp::{
    encode_command, Frame, FrameInfo, Limits, PubSub, ReplyScanner, Request, RequestParser, Step,
};
use crate::shared::{Live, Shared};
use crate::upstream::{Setup, UpstreamStream};

pub use error::SessionError;
pub use offline::Offline;
pub use reply_hook::Rewrite;
pub use slots::{Expect, Family, FlagChange, Hook, Slot, Slots};

use deadlines::{Deadlines, Waiting};
use io::{poll_io, replicate, Conn, ConnKind, Inbound, IoEvent, Want};
use reply_path::Subscriptions;
use state::{Admitted, ReplyMode, State};

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

/// What a request's dispatch came to.
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
    /// The request must ride shared connections set up differently (`SELECT`, `HELLO`,
    /// `RESET`): once every earlier reply is in, move to them and dispatch it again.
    Reattach(Setup),
}

/// The two ends of a client's connection: its address (as the PROXY header gave it, if one
/// did) and redward's; and where its requests go.
#[derive(Debug, Clone)]
pub struct Addrs {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    /// On a cluster node's listener, that node (`cluster.rs`); `None`: the configured
    /// upstream.
    pub node: Option<Arc<crate::upstream::Connector>>,
}

/// Serves one client connection until it closes, the upstream fails, or `shutdown` fires and
/// the requests in flight are answered. `login` is the proof a verified client certificate
/// gave (mTLS), if any.
///
/// # Errors
/// A [`SessionError`] saying why the connection was closed by redward.
pub async fn serve<S>(
    mut client: S,
    addrs: Addrs,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    login: Option<LoggedIn>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = addrs.peer;
    let mut st = State::new(shared, addrs, login);
    let mut inb = Inbound::new();
    // What this client's buffers hold counts toward `limits.max_client_memory`; past it, the
    // client holding the most is told to go (`memory.rs`).
    let mut account = st.shared.memory.register();
    let usage = account.usage_handle();
    let evicted = usage.evicted();
    tokio::pin!(evicted);
    st.charge = Some(account.charge());
    let mut conn = match st.shared.pool(st.connector(), Setup::default()) {
        Some(pool) => {
            Conn::Shared(pool.attach(st.live.limits.shared_reply_buffer, st.charge.clone()))
        }
        None => Conn::None,
    };
    let killed = st.registration.entry.kill.clone();
    let killed = killed.cancelled();
    tokio::pin!(killed);
    let limits = &st.live.limits;
    let mut deadlines = Deadlines::new(
        Instant::now(),
        limits.auth_timeout,
        limits.idle_timeout,
        limits.client_write_timeout,
    );
    // Created once: re-creating it every turn would re-register a waiter each time.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);

    let result = loop {
        // At most one clock read per turn (not per request), and only if something needs it.
        st.now = None;
        // 1-3. What was read: requests dispatched, replies moved to the client; done?
        match st.work(&mut inb, &mut conn, &mut deadlines).await {
            Turn::Wait => {}
            Turn::Again => continue,
            Turn::End(result) => break result,
        }
        inb.shrink_if_idle(st.slots.is_empty());
        let held = inb.capacity() + st.out.capacity() + st.client.held();
        account.report(held);
        st.client.buffers = (inb.cin.len(), st.out.cout.len(), held);

        // 4. Wait for the next thing to do.
        let want = st.arm_wait(&mut inb, &conn, &mut deadlines);
        let io = std::future::poll_fn(|cx| {
            poll_io(cx, &mut client, &mut conn, &mut st.out, &mut inb, want)
        });
        let event = tokio::select! {
            biased;
            ev = io => ev,
            () = deadlines.fired() => match deadlines.expired(Instant::now()) {
                Some(e) => break Err(e),
                None => continue, // a deadline that moved later: re-armed on the next turn
            },
            () = &mut cancelled, if !st.flow.draining => {
                st.flow.draining = true;
                continue;
            }
            () = crate::mux::fired(st.epoch.as_ref()) => {
                let why = st.connector().target().change();
                warn!(%peer, "{why}; closing this client's connection to the old one");
                break Err(SessionError::MasterChanged);
            }
            () = &mut killed => {
                debug!(%peer, "killed by CLIENT KILL");
                break Err(SessionError::Killed);
            }
            () = &mut evicted => {
                let memory = &st.shared.memory;
                if let crate::throttle::Verdict::Log { suppressed } = memory.log_lines.event() {
                    warn!(%peer, held = usage.bytes(), total = memory.total(), limit = memory.limit(), also_evicted = suppressed, "disconnected: all clients together over limits.max_client_memory, and this one held the most");
                }
                break Err(SessionError::ClientMemory);
            }
        };
        if let ControlFlow::Break(result) = st.on_io(event, &mut inb, &mut deadlines) {
            break result;
        }
    };

    // 5. Goodbye: hand over to replication, or write what is owed, briefly, and close.
    goodbye(client, conn, st, &inb, result, &shutdown).await
}

/// What a turn of the session loop does after its work on what was read.
enum Turn {
    /// Wait for I/O, a deadline or a signal.
    Wait,
    /// Work again at once (a request that waited can be dispatched now).
    Again,
    /// The session ends.
    End(Result<(), SessionError>),
}

impl State {
    /// Phases 1-3 of a turn. 1: requests already read, framed, checked and dispatched as far
    /// as the bounds allow. 2: replies already read, moved in slot order to the client.
    /// 3: done? (QUIT or a protocol error answered, a drain finished, a handover.)
    async fn work(
        &mut self,
        inb: &mut Inbound,
        conn: &mut Conn,
        deadlines: &mut Deadlines,
    ) -> Turn {
        if let Err(e) = self.take_requests(inb, conn).await {
            return Turn::End(Err(e));
        }
        self.report_commands();
        if self.flow.handover {
            // SYNC/PSYNC went out: from here on the connection is a replication stream.
            return Turn::End(Ok(()));
        }
        if let Err(e) = self.take_replies(&mut inb.scanner, &mut inb.uin) {
            return Turn::End(Err(e));
        }
        if self.flow.pin_wait && self.slots.upstream_pending() == 0 {
            // Every reply the waiting request waited for is in: dispatch it again.
            self.flow.pin_wait = false;
            return Turn::Again;
        }
        if let Err(e) = self.check_output_limits(&mut deadlines.soft_since) {
            return Turn::End(Err(e));
        }
        if self.finished() {
            return Turn::End(Ok(()));
        }
        Turn::Wait
    }

    /// Phase 4's preparation: what to wait for, the deadlines that apply while waiting, and
    /// room to read into.
    fn arm_wait(&mut self, inb: &mut Inbound, conn: &Conn, deadlines: &mut Deadlines) -> Want {
        let want = Want {
            write_client: !self.out.cout.is_empty() || self.out.client_flush,
            write_upstream: !self.out.uout.is_empty(),
            read_client: self.reading_requests(),
            read_upstream: !matches!(conn, Conn::None)
                && self.out.cout.len() < self.client_out_cap(),
        };
        let waiting = Waiting {
            for_login: self.login.is_none() && !self.flow.closing,
            // Never for subscribers, MONITOR, or a client waiting for a reply (a blocking
            // command): only for a connection with nothing going on.
            idle: self.slots.is_empty() && !self.streaming(),
            to_write: want.write_client,
        };
        deadlines.publish_at(
            self.publish_owed
                .then(|| self.published + state::PUBLISH_EVERY),
        );
        deadlines.arm(|| self.now(), waiting);
        inb.reserve(want, conn);
        want
    }
}

/// The last phase: a SYNC/PSYNC handover becomes a plain replication stream; otherwise the
/// upstream gauges are given back and, unless the session ended without a word to say (a
/// dead socket), what is owed is written within a short grace and the client closed.
async fn goodbye<S>(
    mut client: S,
    conn: Conn,
    mut st: State,
    inb: &Inbound,
    result: Result<(), SessionError>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if st.flow.handover {
        if let Conn::Dedicated(upstream) = conn {
            let result = replicate(
                client,
                upstream,
                &st.out.uout,
                &inb.cin,
                &st.out.cout,
                shutdown,
            )
            .await;
            st.shared.metrics.upstream_own.dec();
            if let Some(g) = st.own_gauge.take() {
                g.dec();
            }
            return result;
        }
    }
    if matches!(conn, Conn::Dedicated(_)) {
        st.shared.metrics.upstream_own.dec();
    }
    if let Some(g) = st.own_gauge.take() {
        g.dec();
    }
    if result.as_ref().is_err_and(|e| !e.says_goodbye()) {
        return result;
    }
    if !st.out.cout.is_empty() || st.out.client_flush {
        let grace = st
            .live
            .limits
            .client_write_timeout
            .min(std::time::Duration::from_secs(5));
        let _ = tokio::time::timeout(grace, async {
            client.write_all(&st.out.cout).await?;
            client.flush().await
        })
        .await;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.shutdown()).await;
    result
}

impl State {
    /// Whether the session is over: the close slot reached (QUIT, a protocol error), or a
    /// shutdown's drain finished, and everything owed is written.
    fn finished(&self) -> bool {
        let written = self.out.cout.is_empty() && !self.out.client_flush;
        written && (self.flow.closed || (self.flow.draining && self.slots.is_empty()))
    }

    /// Applies what the sockets did; `Break` ends the session with that result.
    fn on_io(
        &mut self,
        event: IoEvent,
        inb: &mut Inbound,
        deadlines: &mut Deadlines,
    ) -> ControlFlow<Result<(), SessionError>> {
        match event {
            IoEvent::ClientWrote(Ok(())) => deadlines.client_wrote(),
            IoEvent::ClientWrote(Err(e)) => {
                return ControlFlow::Break(Err(SessionError::ClientIo(e)))
            }
            IoEvent::UpstreamWrote(Ok(())) => {}
            IoEvent::UpstreamWrote(Err(e)) => {
                return ControlFlow::Break(
                    self.upstream_failed(&inb.scanner, SessionError::UpstreamIo(e)),
                );
            }
            // The client hung up; Redis drops a closed client's pending replies too.
            IoEvent::ClientRead(Ok(0)) => return ControlFlow::Break(Ok(())),
            IoEvent::ClientRead(Ok(n)) => {
                inb.client_read(n);
                deadlines.client_read(|| self.now());
            }
            IoEvent::ClientRead(Err(e)) => {
                return ControlFlow::Break(Err(SessionError::ClientIo(e)))
            }
            IoEvent::UpstreamRead(Ok(0)) => {
                return ControlFlow::Break(
                    self.upstream_failed(&inb.scanner, SessionError::UpstreamClosed),
                );
            }
            IoEvent::UpstreamRead(Ok(_)) => {
                if inb.uin.len() > CLIENT_OUT_HIGH && !self.flow.prefer_own {
                    // Large replies: give this client its own connection from its next
                    // request that can move, so its reading speed stops mattering to others.
                    self.flow.prefer_own = true;
                }
            }
            IoEvent::UpstreamRead(Err(e)) => {
                return ControlFlow::Break(
                    self.upstream_failed(&inb.scanner, SessionError::UpstreamIo(e)),
                );
            }
            IoEvent::SharedUnavailable(n) => self.shared_unavailable(n),
            IoEvent::SharedOverflow => {
                warn!(peer = %self.peer, "unread replies over limits.shared_reply_buffer; closing");
                return ControlFlow::Break(Err(SessionError::OutputLimit));
            }
        }
        ControlFlow::Continue(())
    }
}
