//! Shared upstream connections: the requests of many clients over one Redis connection.
//!
//! Why: with a Redis connection per client, every request at `-P 1` costs redward a `send`
//! and a `recv` on its upstream side and costs Redis a read and a write of its own; that is
//! more than half of the CPU a request costs the server side. Sharing one connection lets the
//! requests of every client that became ready in one wake-up go to Redis in one write, and
//! their replies come back in one read: Redis sees a pipeline (`scripts/bench.sh`, README).
//! And while one write's replies are still coming, new requests gather for the next write
//! (`WRITES_IN_FLIGHT`): under load the batches grow by themselves, with no timer, and each
//! upstream `send` (which on loopback also runs Redis's receive and wakes it) carries more
//! requests. An idle connection writes at once, so a lone client waits for nothing.
//!
//! Which clients share: a client starts on a shared connection and stays there while it only
//! sends commands whose meaning does not depend on the connection; `SELECT` and `HELLO` move
//! it to the pool set up for that database and protocol, and the `CLIENT` subcommands about
//! itself are answered by the session. The first command that gives the connection state
//! (MULTI, WATCH, blocking commands, pub/sub, MONITOR, tracking: see `session::route`) moves
//! it, once its shared replies are in, to a connection of its own for the rest of its life.
//! So nothing a client can observe through its own connection changes.
//!
//! Replies are routed back by order: Redis answers one connection's requests in order, one
//! reply each, and each queued batch of requests carries the client's inbox and its reply
//! count. Replies are streamed into the inbox as they arrive (a large bulk is not held whole).
//! A client that stops reading does not stop the shared connection: its unread replies are
//! held in its inbox up to `limits.shared_reply_buffer`, past which that client is
//! disconnected, as Redis's `client-output-buffer-limit` would.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::sync::Notify;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::memory::Charge;
use crate::metrics::Metrics;
use crate::resp::{ReplyScanner, Step};
use crate::upstream::{Connector, Setup, Target, UpstreamStream};

/// Bytes read from the shared connection at a time.
const READ_CHUNK: usize = 64 * 1024;
/// An emptied inbox keeps a buffer up to this size for the next replies; a larger one (left
/// by a burst) is freed.
const INBOX_KEEP: usize = 64 * 1024;
/// Requests queued for the next write beyond which clients wait (and stop reading their own
/// sockets): Redis not keeping up holds memory here, not without bound.
const QUEUE_HIGH: usize = 4 * 1024 * 1024;
/// Writes whose replies are not all in, past which requests wait in the queue for the next
/// write. One: at `-P 16` with 50 clients this cut the upstream hop's CPU enough to move
/// redward from 0.65-0.78x to 0.76-0.83x Redis's own TLS (`compare.sh --quick`, the README);
/// two measured the same as one, within noise. Redis would only queue the extra requests in
/// its socket buffer behind the ones it is running, so the wait adds little to a reply.
const WRITES_IN_FLIGHT: usize = 1;

/// Why a shared connection was dropped. Every cause is the upstream's side: redward's own
/// requests on it are well-formed by construction, so a reply out of turn is Redis's (or the
/// network's) doing.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("closed by Redis")]
    Closed,
    #[error("Redis sent a reply no request was waiting for")]
    UnexpectedReply,
    #[error("Redis sent a push on the shared connection")]
    UnexpectedPush,
    #[error("reply: {0}")]
    Protocol(#[from] crate::resp::ReplyError),
    #[error("Sentinel switched the master")]
    MasterChanged,
}

/// Fires when `token` does; never without one.
pub(crate) async fn fired(token: Option<&CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

impl MuxError {
    pub fn side(&self) -> crate::fault::Side {
        crate::fault::Side::Upstream
    }
}

/// Shared connections, one [`Pool`] per upstream [`Target`] and [`Setup`] (protocol and
/// database): a client that said `HELLO 3` or `SELECT 1` rides connections already in that
/// state. Pools start on first use; how many can exist is bounded by the targets times the
/// databases Redis has (`databases`, 16 by default) times two protocols.
#[derive(Debug)]
pub struct Pools {
    /// Connections per pool (`upstream.shared_connections`).
    per_pool: usize,
    connector: Connector,
    metrics: Arc<Metrics>,
    /// The configured target's default set-up (RESP2, database 0): where every client starts,
    /// handed out without a lock or a key.
    default: Arc<Pool>,
    by_key: Mutex<std::collections::HashMap<(Target, Setup), Arc<Pool>>>,
}

impl Pools {
    /// `n` shared connections per pool to `connector`'s target; the default set-up's pool
    /// starts now, the others on first use. Must run inside the runtime.
    pub fn start(n: usize, connector: &Connector, metrics: &Arc<Metrics>) -> Self {
        Pools {
            per_pool: n,
            connector: connector.clone(),
            metrics: Arc::clone(metrics),
            default: Arc::new(Pool::start(n, connector, metrics)),
            // The other set-ups' pools; the default one is `default`, never in here.
            by_key: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The pool of shared connections to `target` set up as `setup`, started if need be.
    pub fn get(&self, target: &Target, setup: Setup) -> Arc<Pool> {
        if setup == Setup::default() && target == self.connector.target() {
            return Arc::clone(&self.default);
        }
        let mut by_key = lock(&self.by_key);
        let key = (target.clone(), setup);
        if let Some(pool) = by_key.get(&key) {
            return Arc::clone(pool);
        }
        let connector = self.connector.to_target(target.clone()).with_setup(setup);
        let pool = Arc::new(Pool::start(self.per_pool, &connector, &self.metrics));
        by_key.insert(key, Arc::clone(&pool));
        pool
    }
}

impl Pools {
    /// Stops the pools of upstream users that are gone (`upstream.identity: per_user`): Redis
    /// closed their connections (`ACL DELUSER`), and no session will ask for them again.
    pub fn retire(&self, tags: &[crate::upstream::identity::Tag]) {
        if tags.is_empty() {
            return;
        }
        lock(&self.by_key).retain(|(_, setup), _| setup.user.is_none_or(|t| !tags.contains(&t)));
    }
}

/// The shared connections to one target, and which one the next client gets.
#[derive(Debug)]
pub struct Pool {
    muxes: Vec<Arc<Mux>>,
    next: AtomicUsize,
    /// Stops the connection tasks when the pool (so every session) is gone.
    stop: CancellationToken,
}

impl Pool {
    /// Starts `n` shared connections (each connects on first use). Must run inside the runtime.
    pub fn start(n: usize, connector: &Connector, metrics: &Arc<Metrics>) -> Self {
        let stop = CancellationToken::new();
        let muxes = (0..n.max(1))
            .map(|_| {
                let mux = Arc::new(Mux::default());
                tokio::spawn(run(
                    Arc::clone(&mux),
                    connector.clone(),
                    Arc::clone(metrics),
                    stop.clone(),
                ));
                mux
            })
            .collect();
        Pool {
            muxes,
            next: AtomicUsize::new(0),
            stop,
        }
    }

    /// A new client's handle on one of the shared connections (round robin); `reply_limit`
    /// is `limits.shared_reply_buffer`, and what waits in the inbox counts toward the
    /// client's memory through `charge` (`limits.max_client_memory`).
    pub fn attach(&self, reply_limit: usize, charge: Option<Charge>) -> Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.muxes.len();
        let mux = Arc::clone(&self.muxes[i]);
        Handle {
            mux,
            inbox: Arc::new(Inbox {
                state: Mutex::new(InboxState::default()),
                limit: reply_limit,
                charge,
            }),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One client's end of a shared connection.
#[derive(Debug)]
pub struct Handle {
    mux: Arc<Mux>,
    inbox: Arc<Inbox>,
}

/// What a client finds in its inbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Reply bytes (in order) were appended to the caller's buffer.
    Data(usize),
    /// This many of the oldest requests were never sent: Redis could not be reached.
    Unavailable(u32),
    /// The shared connection broke with requests of this client in flight.
    Lost,
    /// Unread replies went over `shared_reply_buffer`; the rest were dropped.
    Overflow,
}

impl Handle {
    /// Queues `requests` (whole commands, owed `replies` replies) to be written with everyone
    /// else's on the shared connection's next write, and empties it; or, while the queue is
    /// full, registers to be woken when it is taken.
    pub fn poll_send(
        &self,
        cx: &mut Context<'_>,
        requests: &mut BytesMut,
        replies: u32,
    ) -> Poll<()> {
        let wake = {
            let mut q = lock(&self.mux.queue);
            if q.out.len() >= QUEUE_HIGH {
                q.waiting.push(cx.waker().clone());
                return Poll::Pending;
            }
            let was_idle = q.out.is_empty();
            q.out.extend_from_slice(requests);
            requests.clear();
            match q.routes.back_mut() {
                Some(r) if Arc::ptr_eq(&r.inbox, &self.inbox) => r.replies += replies,
                _ => q.routes.push_back(Route {
                    inbox: Arc::clone(&self.inbox),
                    replies,
                }),
            }
            was_idle
        };
        if wake {
            self.mux.notify.notify_one();
        }
        Poll::Ready(())
    }

    /// Moves what arrived for this client into `buf`, or registers to be woken when something
    /// does. Replies come before failures, so a failure concerns only requests still owed.
    pub fn poll_take(&self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<Taken> {
        let mut st = lock(&self.inbox.state);
        if !st.data.is_empty() {
            let n = st.data.len();
            if buf.is_empty() {
                std::mem::swap(buf, &mut st.data);
            } else {
                buf.extend_from_slice(&st.data);
                st.data.clear();
            }
            if st.data.capacity() > INBOX_KEEP {
                // A burst's buffer is not kept (and counted) while the inbox is empty.
                st.data = BytesMut::new();
            }
            self.inbox.settle(&mut st);
            return Poll::Ready(Taken::Data(n));
        }
        if st.overflow {
            return Poll::Ready(Taken::Overflow);
        }
        if st.lost {
            return Poll::Ready(Taken::Lost);
        }
        if st.unavailable > 0 {
            return Poll::Ready(Taken::Unavailable(std::mem::take(&mut st.unavailable)));
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Handle {
    /// The client is gone: what its inbox holds, and replies still on their way to it, are
    /// dropped rather than held (and counted) until the routes that name it are done.
    fn drop(&mut self) {
        self.inbox.update(|st| {
            st.closed = true;
            st.data = BytesMut::new();
            self.inbox.settle(st);
        });
    }
}

#[derive(Debug, Default)]
struct Mux {
    queue: Mutex<Queue>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    out: BytesMut,
    routes: VecDeque<Route>,
    /// Clients waiting for room in `out`.
    waiting: Vec<Waker>,
}

/// `replies` replies in a row belong to `inbox`.
#[derive(Debug)]
struct Route {
    inbox: Arc<Inbox>,
    replies: u32,
}

#[derive(Debug)]
struct Inbox {
    state: Mutex<InboxState>,
    limit: usize,
    /// The client's memory account: inbox bytes count toward `limits.max_client_memory`.
    charge: Option<Charge>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let held = lock(&self.state).charged;
        if let Some(c) = &self.charge {
            c.sub(held);
        }
    }
}

#[derive(Debug, Default)]
struct InboxState {
    data: BytesMut,
    /// What this inbox has counted toward its client's memory (`data`'s capacity then).
    charged: usize,
    /// Its client is gone (or going): replies still owed to it are dropped on arrival.
    closed: bool,
    unavailable: u32,
    lost: bool,
    overflow: bool,
    waker: Option<Waker>,
}

impl Inbox {
    fn update(&self, f: impl FnOnce(&mut InboxState)) {
        let waker = {
            let mut st = lock(&self.state);
            f(&mut st);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn deliver(&self, bytes: &[u8]) {
        self.update(|st| {
            if st.overflow || st.closed {
                return;
            }
            if self.charge.as_ref().is_some_and(Charge::is_evicted) {
                // Its client is being disconnected for holding too much: hold no more.
                st.data = BytesMut::new();
                st.closed = true;
            } else if st.data.len() + bytes.len() > self.limit {
                st.overflow = true;
                st.data = BytesMut::new();
            } else {
                st.data.extend_from_slice(bytes);
            }
            self.settle(st);
        });
    }

    /// Brings the client's memory account up to date with what the inbox holds (its
    /// buffer's capacity: the memory it really takes).
    fn settle(&self, st: &mut InboxState) {
        let now = st.data.capacity();
        if let Some(c) = &self.charge {
            if now > st.charged {
                c.add(now - st.charged);
            } else {
                c.sub(st.charged - now);
            }
        }
        st.charged = now;
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain buffers; carry on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Event {
    Wrote(std::io::Result<()>),
    Read(std::io::Result<usize>),
    /// The Sentinel-named master changed: this connection goes to the old one.
    MasterChanged,
}

/// One shared connection's life: take queued requests, write them in one go, route replies.
async fn run(mux: Arc<Mux>, connector: Connector, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut conn: Option<UpstreamStream> = None;
    let mut wbuf = BytesMut::new();
    let mut rbuf = BytesMut::new();
    let mut inflight: VecDeque<Route> = VecDeque::new();
    // Replies still owed for each write on the wire, oldest first.
    let mut writes: VecDeque<u64> = VecDeque::new();
    let mut scanner = ReplyScanner::new();
    let mut needs_flush = false;
    // For a Sentinel-followed master: fires when the master changes (the connection goes).
    let mut epoch: Option<CancellationToken> = None;
    let per_user = metrics.user_connections(connector.identity_name().as_deref());
    loop {
        if wbuf.is_empty() && writes.len() < WRITES_IN_FLIGHT {
            take_queued(&mux, &mut wbuf, &mut inflight, &mut writes);
        }
        if conn.is_none() {
            if wbuf.is_empty() {
                tokio::select! {
                    () = mux.notify.notified() => continue,
                    () = stop.cancelled() => return,
                }
            }
            let next_epoch = connector.target().epoch();
            match connector.connect().await {
                Ok(stream) => {
                    epoch = next_epoch;
                    debug!("shared upstream connection opened");
                    crate::learn::after_connect(&connector);
                    metrics.upstream_shared.inc();
                    per_user.inc();
                    conn = Some(stream);
                    scanner = ReplyScanner::new();
                    rbuf.clear();
                    needs_flush = false;
                }
                Err(e) => {
                    metrics.upstream_connect_errors.inc();
                    crate::learn::upstream_failed();
                    if matches!(e, crate::upstream::UpstreamError::FailoverInProgress(_)) {
                        // Expected for the second or two a Sentinel failover takes; the
                        // switch itself is logged once (`upstream/sentinel.rs`).
                        debug!(error = %e, "upstream held back (shared connection)");
                    } else {
                        warn!(error = %e, "upstream unavailable (shared connection)");
                    }
                    unavailable(&mux, &mut wbuf, &mut inflight);
                    writes.clear();
                    continue;
                }
            }
        }
        let Some(stream) = conn.as_mut() else {
            continue;
        };
        let event = tokio::select! {
            biased;
            ev = poll_fn(|cx| poll_io(cx, stream, &mut wbuf, &mut rbuf, &mut needs_flush)) => ev,
            () = mux.notify.notified(), if wbuf.is_empty() && !needs_flush => continue,
            () = fired(epoch.as_ref()) => Event::MasterChanged,
            () = stop.cancelled() => {
                metrics.upstream_shared.dec();
                per_user.dec();
                return;
            }
        };
        let failed = match event {
            Event::Wrote(Ok(())) => None,
            Event::Wrote(Err(e)) | Event::Read(Err(e)) => Some(MuxError::Io(e)),
            Event::Read(Ok(0)) => Some(MuxError::Closed),
            Event::Read(Ok(_)) => match route(&mut rbuf, &mut scanner, &mut inflight) {
                Ok(done) => {
                    settle_writes(&mut writes, done);
                    None
                }
                Err(e) => Some(e),
            },
            Event::MasterChanged => Some(MuxError::MasterChanged),
        };
        if let Some(why) = failed {
            lost(&why, &mut inflight, &metrics);
            writes.clear();
            wbuf.clear();
            conn = None;
            metrics.upstream_shared.dec();
            per_user.dec();
        }
    }
}

/// Everything queued goes in one write (each client bounds its own share by its pipeline
/// limit); its routes join those in flight, and clients waiting for room are woken.
fn take_queued(
    mux: &Mux,
    wbuf: &mut BytesMut,
    inflight: &mut VecDeque<Route>,
    writes: &mut VecDeque<u64>,
) {
    let mut q = lock(&mux.queue);
    if q.out.is_empty() {
        return;
    }
    std::mem::swap(wbuf, &mut q.out);
    let owed: u64 = q.routes.iter().map(|r| u64::from(r.replies)).sum();
    if owed > 0 {
        writes.push_back(owed);
    }
    inflight.extend(q.routes.drain(..));
    for w in q.waiting.drain(..) {
        w.wake();
    }
}

/// The connection could not be opened, so nothing was sent: every request written for it or
/// queued is answered as unavailable, and clients waiting for room in the queue are woken.
fn unavailable(mux: &Mux, wbuf: &mut BytesMut, inflight: &mut VecDeque<Route>) {
    wbuf.clear();
    let mut q = lock(&mux.queue);
    q.out.clear();
    for w in q.waiting.drain(..) {
        w.wake();
    }
    let routes: Vec<Route> = inflight.drain(..).chain(q.routes.drain(..)).collect();
    drop(q);
    for r in routes {
        r.inbox.update(|st| st.unavailable += r.replies);
    }
}

/// The connection broke (`why`): requests written, or partly written, are lost for their
/// clients; queued ones go on a new connection.
fn lost(why: &MuxError, inflight: &mut VecDeque<Route>, metrics: &Metrics) {
    crate::learn::upstream_failed();
    if inflight.is_empty() {
        debug!(reason = %why, "idle shared upstream connection closed");
    } else {
        metrics.upstream_stream_errors.inc();
        warn!(side = %why.side(), reason = %why, in_flight = inflight.len(), "shared upstream connection lost");
    }
    for r in inflight.drain(..) {
        r.inbox.update(|st| st.lost = true);
    }
}

fn poll_io(
    cx: &mut Context<'_>,
    stream: &mut UpstreamStream,
    wbuf: &mut BytesMut,
    rbuf: &mut BytesMut,
    needs_flush: &mut bool,
) -> Poll<Event> {
    if !wbuf.is_empty() || *needs_flush {
        if let Poll::Ready(r) = crate::net_io::poll_write_out(cx, stream, wbuf, needs_flush) {
            return Poll::Ready(Event::Wrote(r));
        }
    }
    rbuf.reserve(READ_CHUNK);
    poll_read_buf(Pin::new(stream), cx, rbuf).map(Event::Read)
}

/// `done` more replies came in: the writes they complete are off the wire.
fn settle_writes(writes: &mut VecDeque<u64>, mut done: u64) {
    while let Some(front) = writes.front_mut() {
        if *front > done {
            *front -= done;
            return;
        }
        done -= *front;
        writes.pop_front();
    }
}

/// Hands the replies in `rbuf` to the clients they belong to, in order; a reply still
/// arriving is handed over as far as it came. One inbox update per run of replies. Returns
/// how many replies were complete.
fn route(
    rbuf: &mut BytesMut,
    scanner: &mut ReplyScanner,
    inflight: &mut VecDeque<Route>,
) -> Result<u64, MuxError> {
    let mut done = 0u64;
    let mut span = 0usize;
    while span < rbuf.len() {
        let Some(front) = inflight.front_mut() else {
            return Err(MuxError::UnexpectedReply);
        };
        let rest = rbuf.get(span..).unwrap_or(&[]);
        match scanner.advance(rest)? {
            Step::Partial { consumed } => {
                span += consumed;
                break;
            }
            Step::Complete { consumed, info } => {
                if info.is_push() {
                    return Err(MuxError::UnexpectedPush);
                }
                span += consumed;
                done += 1;
                front.replies -= 1;
                if front.replies == 0 {
                    if let Some(done) = inflight.pop_front() {
                        done.inbox.deliver(rbuf.get(..span).unwrap_or(&[]));
                    }
                    rbuf.advance(span);
                    span = 0;
                }
            }
        }
    }
    if span > 0 {
        if let Some(front) = inflight.front() {
            front.inbox.deliver(rbuf.get(..span).unwrap_or(&[]));
        }
        rbuf.advance(span);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn inbox() -> Arc<Inbox> {
        Arc::new(Inbox {
            state: Mutex::new(InboxState::default()),
            limit: 1 << 20,
            charge: None,
        })
    }

    fn data(inbox: &Inbox) -> Vec<u8> {
        lock(&inbox.state).data.to_vec()
    }

    /// Replies reach the client they belong to, whatever the read boundaries: every split
    /// point of a stream of replies for three clients (a large bulk among them).
    #[test]
    fn replies_are_routed_by_order_across_any_read_boundary() {
        let big = format!("${}\r\n{}\r\n", 300, "x".repeat(300));
        let a_part = format!("+OK\r\n{big}");
        let b_part = "*2\r\n$1\r\nk\r\n:-1\r\n-ERR no\r\n".to_owned();
        let c_part = "$-1\r\n".to_owned();
        let stream = format!("{a_part}{b_part}{c_part}");
        for cut in 0..=stream.len() {
            let (a, b, c) = (inbox(), inbox(), inbox());
            let mut inflight: VecDeque<Route> = [(&a, 2), (&b, 2), (&c, 1)]
                .into_iter()
                .map(|(i, n)| Route {
                    inbox: Arc::clone(i),
                    replies: n,
                })
                .collect();
            let mut scanner = ReplyScanner::new();
            let mut rbuf = BytesMut::from(&stream.as_bytes()[..cut]);
            route(&mut rbuf, &mut scanner, &mut inflight).unwrap();
            rbuf.extend_from_slice(&stream.as_bytes()[cut..]);
            route(&mut rbuf, &mut scanner, &mut inflight).unwrap();
            assert!(rbuf.is_empty() && inflight.is_empty(), "cut {cut}");
            assert_eq!(data(&a), a_part.as_bytes(), "cut {cut}");
            assert_eq!(data(&b), b_part.as_bytes(), "cut {cut}");
            assert_eq!(data(&c), c_part.as_bytes(), "cut {cut}");
        }
    }

    /// Replies complete writes in order, across reads that end mid-write or span several.
    #[test]
    fn replies_complete_the_writes_they_answer_in_order() {
        let mut writes: VecDeque<u64> = [3, 1, 2].into_iter().collect();
        settle_writes(&mut writes, 2);
        assert_eq!(writes, [1, 1, 2]);
        settle_writes(&mut writes, 2);
        assert_eq!(writes, [2]);
        settle_writes(&mut writes, 0);
        assert_eq!(writes, [2]);
        settle_writes(&mut writes, 5);
        assert!(writes.is_empty());
    }

    #[test]
    fn a_reply_nobody_asked_for_breaks_the_connection() {
        let mut inflight = VecDeque::new();
        let mut rbuf = BytesMut::from(&b"+OK\r\n"[..]);
        assert!(route(&mut rbuf, &mut ReplyScanner::new(), &mut inflight).is_err());
    }

    #[test]
    fn an_inbox_counts_the_memory_it_holds_toward_its_client_and_gives_it_back() {
        let memory = Arc::new(crate::memory::ClientMemory::new(
            0,
            prometheus_client::metrics::gauge::Gauge::default(),
            prometheus_client::metrics::counter::Counter::default(),
        ));
        let account = memory.register();
        let inbox = Arc::new(Inbox {
            state: Mutex::new(InboxState::default()),
            limit: 1 << 24,
            charge: Some(account.charge()),
        });
        let handle = Handle {
            mux: Arc::new(Mux::default()),
            inbox: Arc::clone(&inbox),
        };
        let chunk = vec![b'x'; 300 * 1024];
        inbox.deliver(&chunk);
        inbox.deliver(&chunk);
        assert!(memory.total() >= 600 * 1024, "{}", memory.total());
        assert_eq!(memory.total(), account.usage().bytes());
        let mut buf = BytesMut::from(&b"+OK\r\n"[..]);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(
            handle.poll_take(&mut cx, &mut buf),
            Poll::Ready(Taken::Data(600 * 1024))
        );
        assert_eq!(memory.total(), 0, "a burst's buffer is freed, not kept");
        inbox.deliver(b"+OK\r\n");
        drop(handle);
        assert_eq!(memory.total(), 0, "a departed client's inbox holds nothing");
        drop(inbox);
        assert_eq!(memory.total(), 0);
    }

    #[test]
    fn an_inbox_over_its_limit_drops_everything_and_says_so() {
        let small = Arc::new(Inbox {
            state: Mutex::new(InboxState::default()),
            limit: 8,
            charge: None,
        });
        small.deliver(b"+OK\r\n");
        small.deliver(b"+OK\r\n");
        let st = lock(&small.state);
        assert!(st.overflow);
        assert!(st.data.is_empty());
    }
}

#[cfg(test)]
mod props {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use proptest::prelude::*;

    /// Replies of every RESP2 and RESP3 shape Redis sends on a plain connection.
    fn reply() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"+OK\r\n".to_vec()),
            Just(b"-ERR wrong\r\n".to_vec()),
            Just(b":12345\r\n".to_vec()),
            Just(b"$-1\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
            (0usize..3000).prop_map(|n| format!("${n}\r\n{}\r\n", "v".repeat(n)).into_bytes()),
            Just(b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$0\r\n\r\n+x\r\n".to_vec()),
            Just(b"%1\r\n+k\r\n_\r\n".to_vec()),
            Just(b"*0\r\n".to_vec()),
        ]
    }

    proptest! {
        /// Whatever the replies, the clients' shares and the read boundaries, each client's
        /// inbox ends up with exactly its own replies, in order.
        #[test]
        fn every_client_gets_exactly_its_replies(
            plan in proptest::collection::vec((1u32..4, proptest::collection::vec(reply(), 3)), 1..8),
            cuts in proptest::collection::vec(1usize..700, 1..40),
        ) {
            let mut stream = Vec::new();
            let mut inflight = VecDeque::new();
            let mut expected = Vec::new();
            for (n, replies) in &plan {
                let inbox = Arc::new(Inbox { state: Mutex::new(InboxState::default()), limit: 1 << 24, charge: None });
                let mut mine = Vec::new();
                for r in replies.iter().take(*n as usize) {
                    mine.extend_from_slice(r);
                }
                stream.extend_from_slice(&mine);
                inflight.push_back(Route { inbox: Arc::clone(&inbox), replies: *n });
                expected.push((inbox, mine));
            }
            let mut scanner = ReplyScanner::new();
            let mut rbuf = BytesMut::new();
            let mut pos = 0;
            let mut cut = cuts.iter().cycle();
            while pos < stream.len() {
                let end = (pos + cut.next().copied().unwrap_or(1)).min(stream.len());
                rbuf.extend_from_slice(&stream[pos..end]);
                pos = end;
                route(&mut rbuf, &mut scanner, &mut inflight).unwrap();
            }
            prop_assert!(inflight.is_empty());
            prop_assert!(rbuf.is_empty());
            for (inbox, mine) in expected {
                prop_assert_eq!(lock(&inbox.state).data.to_vec(), mine);
            }
        }
    }
}
