//! The per-connection state the phases share, owning no sockets so it can be driven and
//! tested alone: who is logged in ([`LoggedIn`]), what Redis keeps for this client as redward
//! sees it ([`ClientState`]), where the loop is ([`Flow`]), the bytes waiting to go each way
//! ([`Outbox`]) and the reply order ([`Slots`]).

use super::*;
use crate::clients::{LastCommand, Registration};

/// `CLIENT REPLY` state (`CLIENT_REPLY_OFF`, `_SKIP`, `_SKIP_NEXT` in `networking.c`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ReplyMode {
    pub(super) off: bool,
    pub(super) skip_this: bool,
    pub(super) skip_next: bool,
}

/// What Redis keeps in its `client` struct for this connection, as far as redward follows it
/// (from the requests it forwards and the replies that answer them).
#[derive(Debug, Default)]
pub(super) struct ClientState {
    pub(super) reply_mode: ReplyMode,
    /// Inside MULTI (as dispatched): commands are queued and get one reply each.
    pub(super) in_multi: bool,
    /// A command inside this MULTI was refused by redward: EXEC must fail with EXECABORT, as
    /// Redis's `CLIENT_DIRTY_EXEC` makes it (Redis itself never saw the refused command).
    pub(super) multi_dirty: bool,
    /// Requests forwarded inside this MULTI, and which of them were `CLUSTER` requests whose
    /// replies name nodes (their place in EXEC's reply), behind a cluster.
    pub(super) multi_queued: usize,
    pub(super) multi_topology: crate::upstream::kind::QueuedTopology,
    /// After MONITOR's +OK: upstream frames answer no request.
    pub(super) monitor: bool,
    /// The protocol of the replies Redis is sending now (stream order).
    pub(super) resp3: bool,
    pub(super) subs: Subscriptions,
    /// (P|S)(UN)SUBSCRIBE requests sent whose confirmations are not all in yet.
    pub(super) pubsub_pending: u32,
    /// redward's id for this client (`CLIENT ID`), kept across moves between connections.
    pub(super) id: u64,
    /// `CLIENT SETNAME` / `HELLO ... SETNAME`, `CLIENT SETINFO`: kept here, not in Redis.
    pub(super) name: Vec<u8>,
    pub(super) lib_name: Vec<u8>,
    pub(super) lib_ver: Vec<u8>,
    /// The database selected (as far as redward knows: SELECT inside MULTI or on a
    /// connection of the client's own is Redis's business).
    pub(super) db: u32,
    /// The shared connections this client rides: their protocol and database.
    pub(super) setup: Setup,
    /// The last command, for `CLIENT LIST`.
    pub(super) last_cmd: LastCommand,
    /// Something `CLIENT LIST` shows besides the last command changed.
    pub(super) changed: bool,
    /// The flags `CLIENT LIST` shows, as far as redward follows them (`Flags::blocked` is
    /// derived from `blocking`), and `CLIENT TRACKING`'s redirection (-1: not tracking).
    pub(super) flags: crate::clients::Flags,
    pub(super) redir: i64,
    /// Blocking commands forwarded whose replies are not in yet.
    pub(super) blocking: u32,
    /// Buffer sizes as of the last turn, for `CLIENT LIST` (`qbuf`, `omem`, `tot-mem`).
    pub(super) buffers: (usize, usize, usize),
}

impl ClientState {
    /// Bytes the state kept here holds (a name or library info can be as long as a request
    /// allows): counted toward `limits.max_client_memory` like the buffers.
    pub(super) fn held(&self) -> usize {
        self.name.capacity() + self.lib_name.capacity() + self.lib_ver.capacity()
    }
}

/// A request admitted but not yet done (it waits for replies, a reattach or a connection of
/// its own). Routing is safe to run again; the command rate and the admission step run once
/// per request. The request's bytes are fingerprinted, so a verdict never carries over to
/// another request: a mismatch means admission runs afresh.
#[derive(Debug, Clone, Copy)]
pub(super) struct Admitted {
    pub(super) spec: Option<&'static crate::commands::CommandSpec>,
    /// [`Admitted::fingerprint`] of the request's bytes; 0 until the request first waits.
    pub(super) request: u64,
}

impl Admitted {
    /// Set only when a request waits, and checked when it comes back: never on the path of a
    /// request answered at once.
    pub(super) fn fingerprint(raw: &[u8]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        raw.hash(&mut h);
        h.finish() | 1
    }
}

/// Where the connection's loop stands.
#[derive(Debug, Default)]
pub(super) struct Flow {
    /// No more requests are read (QUIT, protocol error, a removed user).
    pub(super) closing: bool,
    /// The close slot was reached: write what is owed, then close.
    pub(super) closed: bool,
    /// SYNC/PSYNC was sent: the connection becomes a replication stream ([`replicate`]).
    pub(super) handover: bool,
    /// A request waits for every earlier reply to come in (to move off the shared connection,
    /// or to be answered once the state those replies report is known).
    pub(super) pin_wait: bool,
    /// The request being dispatched was admitted (rate charged, admission passed) and had to
    /// wait: routing runs again, admission does not ([`Admitted`]).
    pub(super) admitted: Option<Admitted>,
    /// This client had a large reply: it moves to its own connection at its next request.
    pub(super) prefer_own: bool,
    /// Shutting down: no more requests are read; the session ends once what is in flight is
    /// answered.
    pub(super) draining: bool,
    /// The own connection about to be opened is for a command Redis takes while a script is
    /// busy (`SCRIPT KILL`, `FUNCTION KILL`): it is set up in database 0, since Redis answers
    /// `SELECT` with `-BUSY` then, and the client's database is selected before its next
    /// request ([`State::select_owed`]).
    pub(super) busy_safe: bool,
    /// The own connection about to be opened is for `WAIT`/`WAITAOF` from a client whose
    /// writes rode shared connections: it is fenced (`Connector::with_wait_fence`).
    pub(super) wait_fence: bool,
}

/// Bytes waiting to be written, each way.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// Replies ready for the client, in order.
    pub(super) cout: BytesMut,
    /// Requests to send to Redis.
    pub(super) uout: BytesMut,
    /// Replies owed for the requests in `uout` (shared connection only).
    pub(super) shared_unsent: u32,
    /// The client socket holds written bytes that still need a flush (TLS records).
    pub(super) client_flush: bool,
    /// A reply waiting for its reply hook to see it whole (`reply_hook.rs`).
    pub(super) held: BytesMut,
}

impl Outbox {
    /// Bytes held, for the memory bound.
    pub(super) fn capacity(&self) -> usize {
        self.cout.capacity() + self.uout.capacity() + self.held.capacity()
    }
}

/// Commands counted for the metrics: one atomic add per turn of the loop, not per command.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Requests forwarded / refused (ACL, rate) on this connection.
    pub(super) forwarded: u64,
    pub(super) refused: u64,
    /// Upstream replies completed, for sampling the latency histogram.
    pub(super) completed: u64,
    pub(super) reported_forwarded: u64,
    pub(super) unreported_local: u64,
}

/// Per-connection protocol state; owns no sockets so it can be driven and tested alone.
pub(super) struct State {
    pub(super) shared: Arc<Shared>,
    /// The configuration this connection currently runs with (see `refresh`).
    pub(super) live: Arc<Live>,
    /// The time of this turn of the loop, read at most once per turn (see [`State::now`]).
    pub(super) now: Option<Instant>,
    pub(super) peer: SocketAddr,
    /// The proof of login; `None` while authentication is required.
    pub(super) login: Option<LoggedIn>,
    pub(super) slots: Slots,
    pub(super) out: Outbox,
    pub(super) client: ClientState,
    pub(super) flow: Flow,
    pub(super) counts: Counts,
    /// This client's place among redward's clients (`CLIENT LIST`, `CLIENT KILL`).
    pub(super) registration: Registration,
    /// What a shared connection's inbox charges this client's memory through.
    pub(super) charge: Option<crate::memory::Charge>,
    /// When the registry was last told about this client.
    pub(super) published: Instant,
    /// Something the registry shows changed since then (a command ran, a reply came in):
    /// published at the next turn [`PUBLISH_EVERY`] after the last, a timer makes sure of it.
    pub(super) publish_owed: bool,
    /// For a Sentinel-followed master: fires when the master this client's own connection
    /// goes to is no longer the master. The client is closed then, as Redis closes clients
    /// of a demoted master (its transaction, watches and subscriptions are gone).
    pub(super) epoch: Option<tokio_util::sync::CancellationToken>,
    /// On a cluster node's listener, the node this client's requests go to.
    pub(super) node: Option<Arc<crate::upstream::Connector>>,
    /// `upstream.identity: per_user`: the identity of the user last looked up, kept while
    /// the login is that same user (`identity.rs`).
    pub(super) identity: Option<(Arc<crate::acl::User>, crate::upstream::identity::Tag)>,
    /// The client's database, still to be selected on its own connection (opened in
    /// database 0 for a `SCRIPT KILL` while Redis was busy: [`Flow::busy_safe`]).
    pub(super) select_owed: Option<u32>,
    /// The per-user gauge this client's own upstream connection counts in, while it has one.
    pub(super) own_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

/// How stale `CLIENT LIST` may be for a busy client.
pub(super) const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl State {
    pub(super) fn new(shared: Arc<Shared>, addrs: Addrs, login: Option<LoggedIn>) -> Self {
        let live = shared.live.load_full();
        let login = login.or_else(|| LoggedIn::implicit(&live.users));
        let user = login.as_ref().map_or("", |l| l.user().name.as_str());
        let registration = shared.clients.register(addrs.peer, addrs.local, user);
        let client = ClientState {
            id: registration.entry.id,
            redir: -1,
            ..ClientState::default()
        };
        let peer = addrs.peer;
        let addrs_node = addrs.node;
        State {
            live,
            now: None,
            shared,
            peer,
            login,
            slots: Slots::default(),
            out: Outbox::default(),
            client,
            flow: Flow::default(),
            counts: Counts::default(),
            registration,
            charge: None,
            published: Instant::now(),
            publish_owed: false,
            epoch: None,
            node: addrs_node,
            identity: None,
            select_owed: None,
            own_gauge: None,
        }
    }

    /// What this client's upstream's kind (fixed, Sentinel, cluster) does on its reply path.
    pub(super) fn upstream(&self) -> crate::upstream::kind::Kind<'_> {
        crate::upstream::kind::Kind::new(self.connector().target(), self.shared.cluster.get())
    }

    /// Where this client's requests go: its listener's cluster node, or the upstream.
    pub(super) fn connector(&self) -> &crate::upstream::Connector {
        self.node.as_deref().unwrap_or(&self.shared.connector)
    }

    /// Adds this connection's command counts to the shared metrics, and tells the registry
    /// about a turn that ran commands.
    pub(super) fn report_commands(&mut self) {
        let forwarded = self.counts.forwarded - self.counts.reported_forwarded;
        // The registry shows the last command, idle seconds and the client's state: a busy
        // client publishes them every 100 ms at most (one uncontended lock), a change of name
        // or database at once. What a turn leaves unpublished is owed, and the main loop's
        // timer brings a turn 100 ms after the last publish (so a client that blocks right
        // after a publish still shows `b` within 100 ms).
        if forwarded > 0 || self.counts.unreported_local > 0 {
            self.publish_owed = true;
        }
        if self.client.changed
            || (self.publish_owed
                && self.now().saturating_duration_since(self.published) >= PUBLISH_EVERY)
        {
            self.published = self.now();
            self.publish_owed = false;
            self.publish();
        }
        if forwarded > 0 {
            self.shared.metrics.commands_forwarded.inc_by(forwarded);
            self.counts.reported_forwarded = self.counts.forwarded;
        }
        if self.counts.unreported_local > 0 {
            self.shared
                .metrics
                .commands_local
                .inc_by(self.counts.unreported_local);
            self.counts.unreported_local = 0;
        }
    }

    /// This turn's time: request timestamps and deadlines share one clock read per wake-up.
    pub(super) fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    /// A subscriber or MONITOR connection: the upstream sends without being asked.
    pub(super) fn streaming(&self) -> bool {
        self.client.subs.any() || self.client.monitor
    }

    /// Replies buffered for the client before redward stops reading from Redis. Request and
    /// reply traffic is held back (Redis keeps the data); a stream would only make Redis drop
    /// redward's connection at its own limit, so it is buffered here up to the output limit.
    pub(super) fn client_out_cap(&self) -> usize {
        if self.streaming() {
            self.live.limits.output_hard
        } else {
            CLIENT_OUT_HIGH
        }
    }

    pub(super) fn frame_limits(&self) -> Limits {
        let l = &self.live.limits;
        Limits::new(l.max_bulk_len, l.max_inline_len, self.login.is_some())
    }

    /// Whether the reply to the command being dispatched is suppressed by CLIENT REPLY.
    pub(super) fn suppressed(&self) -> bool {
        self.client.reply_mode.off || self.client.reply_mode.skip_this
    }

    /// Queues a reply redward wrote itself, unless CLIENT REPLY suppresses it.
    pub(super) fn local(&mut self, reply: Bytes) {
        if self.suppressed() {
            return;
        }
        if self.slots.is_empty() {
            self.out.cout.extend_from_slice(&reply);
        } else {
            self.slots.push(Slot::Local(reply));
        }
    }

    /// Queues a reply that differs between RESP2 and RESP3; the protocol in force when it is
    /// written decides.
    pub(super) fn local_proto(&mut self, reply: acl_cmd::Reply) {
        if self.suppressed() {
            return;
        }
        if self.slots.is_empty() {
            let bytes = if self.client.resp3 {
                &reply.resp3
            } else {
                &reply.resp2
            };
            self.out.cout.extend_from_slice(bytes);
        } else {
            self.slots.push(Slot::LocalProto {
                resp2: Bytes::from(reply.resp2),
                resp3: Bytes::from(reply.resp3),
            });
        }
    }

    /// Refuses a command the way Redis's `rejectCommand` does: an error reply, and inside
    /// MULTI the transaction is doomed to EXECABORT.
    pub(super) fn reject(&mut self, reply: Bytes) {
        if self.client.in_multi {
            self.client.multi_dirty = true;
        }
        self.local(reply);
    }

    pub(super) fn context(&self) -> &'static str {
        if self.client.in_multi {
            "multi"
        } else {
            "toplevel"
        }
    }

    pub(super) fn audit_auth_failure(&self, req: &Request<'_>, username: String) {
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

    pub(super) fn audit_denied(
        &self,
        user: &User,
        spec: &commands::CommandSpec,
        req: &Request<'_>,
        d: Denied,
    ) {
        let (reason, object) = match d {
            Denied::Command => (Reason::Command, spec.name.to_owned()),
            Denied::Key { arg } => (Reason::Key, crate::audit::bounded(req.arg(arg))),
            Denied::Channel { arg } => (Reason::Channel, crate::audit::bounded(req.arg(arg))),
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

    pub(super) fn close_after_replies(&mut self) {
        self.flow.closing = true;
        if self.slots.is_empty() {
            self.flow.closed = true;
        } else {
            self.slots.push(Slot::Close);
        }
    }

    /// Redis's `resetClient` after every command (and every empty request): a pending
    /// `CLIENT REPLY SKIP` applies to the next one.
    pub(super) fn end_of_command(&mut self) {
        self.client.reply_mode.skip_this = false;
        if self.client.reply_mode.skip_next {
            self.client.reply_mode.skip_this = true;
            self.client.reply_mode.skip_next = false;
        }
    }

    /// Picks up a reloaded configuration before the next command, as Redis applies changed ACL
    /// rules to connected clients: the user's new rules from now on; a user that was removed
    /// or disabled is disconnected.
    pub(super) fn refresh(&mut self) {
        if self.shared.generation() == self.live.generation {
            return;
        }
        self.live = self.shared.live.load_full();
        let Some(login) = &self.login else { return };
        let renewed = if self.live.disconnect_disabled {
            login.renewed(&self.live.users)
        } else {
            login.renewed_even_if_disabled(&self.live.users)
        };
        match renewed {
            Some(renewed) => self.login = Some(renewed),
            None => {
                info!(peer = %self.peer, user = %login.user().name, "user removed or disabled by reload; closing");
                self.login = None;
                self.close_after_replies();
            }
        }
    }
}
