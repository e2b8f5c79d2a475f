//! Dispatch: each request in order: the protocol check, login, the command rate, the
//! admission step (`admission.rs`: every policy decision, as one pure function), the commands
//! redward answers itself (AUTH, HELLO, ACL, CLIENT REPLY, RESET, QUIT), and the route to
//! Redis: the shared connection, or the client's own.

use super::*;

/// `SCRIPT KILL` and `FUNCTION KILL`: what Redis answers while a script is busy, in whatever
/// database (`allow-busy`; `SHUTDOWN` never reaches Redis through redward).
fn taken_while_busy(req: &Request<'_>) -> bool {
    let name = req.name();
    req.argc() == 2
        && (name.eq_ignore_ascii_case(b"script") || name.eq_ignore_ascii_case(b"function"))
        && req.arg(1).eq_ignore_ascii_case(b"kill")
}

/// What redward answers or hands over itself, by command name.
#[derive(Debug, Clone, Copy)]
enum Local {
    /// AUTH: checked against redward's users.
    Auth,
    /// HELLO: the protocol and login, on a connection set up for it.
    Hello,
    /// QUIT: `+OK`, then close.
    Quit,
    /// RESET (no arguments): the connection's state, as `resetCommand` leaves it.
    Reset,
    /// CLIENT REPLY, and the CLIENT subcommands of `client_cmd.rs`.
    Client,
    /// SELECT on a shared connection: a move to that database's shared connections.
    Select,
    /// SYNC/PSYNC on the client's own connection: the replication handover.
    Sync,
}

/// The commands [`State::answer_locally`] looks at; any other goes to Redis as usual.
const LOCAL: &[(&str, Local)] = &[
    ("auth", Local::Auth),
    ("hello", Local::Hello),
    ("quit", Local::Quit),
    ("reset", Local::Reset),
    ("client", Local::Client),
    ("select", Local::Select),
    ("sync", Local::Sync),
    ("psync", Local::Sync),
];

impl State {
    pub(super) fn dispatch(&mut self, req: &Request<'_>, raw: &[u8], conn: ConnKind) -> Outcome {
        self.refresh();
        if self.flow.closing {
            return Outcome::Done;
        }
        let before = self.counts.forwarded + self.counts.refused;
        let sub = (req.argc() > 1).then(|| req.arg(1));
        self.client.last_cmd.set(req.name(), sub);
        let outcome = self.dispatch_inner(req, raw, conn);
        if outcome != Outcome::Done {
            // The same request comes back: its admission holds for it alone.
            if let Some(a) = self.flow.admitted.as_mut() {
                a.request = Admitted::fingerprint(raw);
            }
        } else {
            self.flow.admitted = None;
            if self.counts.forwarded + self.counts.refused == before {
                self.counts.unreported_local += 1;
            }
            self.end_of_command();
        }
        outcome
    }

    pub(super) fn dispatch_inner(
        &mut self,
        req: &Request<'_>,
        raw: &[u8],
        conn: ConnKind,
    ) -> Outcome {
        let name = req.name();
        // processCommand's "possible security attack" check: an HTTP request sent to Redis
        // (cross-protocol scripting). Redis closes without a reply.
        if name.eq_ignore_ascii_case(b"host:") || name.eq_ignore_ascii_case(b"post") {
            warn!(peer = %self.peer, "HTTP request on a Redis port (cross-protocol attack?); closing");
            self.close_after_replies();
            return Outcome::Done;
        }
        let Some(user) = self.login.as_ref().map(|l| Arc::clone(l.user())) else {
            return self.dispatch_unauthenticated(req, raw, conn);
        };
        let is_acl = name.eq_ignore_ascii_case(b"acl");
        let resolved = match self.flow.admitted.take() {
            // Back after a wait: admitted already, the route is found again.
            Some(a) if a.request == Admitted::fingerprint(raw) => a.spec,
            _ => match self.admit(&user, req, is_acl) {
                Ok(spec) => spec,
                Err(outcome) => return outcome,
            },
        };
        self.flow.admitted = Some(Admitted {
            spec: resolved,
            request: 0,
        });
        if is_acl {
            if let Some(outcome) = self.acl_admin(req, &user) {
                return outcome;
            }
            match acl_cmd::answer(req, &user, &self.live.users, &self.shared.audit) {
                acl_cmd::Answer::Local(reply) => {
                    self.local_proto(reply);
                    return Outcome::Done;
                }
                acl_cmd::Answer::Forward => {}
            }
        }
        if self.client.in_multi
            && self.client.multi_dirty
            && name.eq_ignore_ascii_case(b"exec")
            && req.argc() == 1
        {
            if conn != ConnKind::Dedicated {
                return Outcome::NeedUpstream;
            }
            // Redis never saw the refused command, so it would run the transaction: end it
            // with DISCARD (reply swallowed) and answer EXEC as Redis would have.
            self.end_transaction_upstream();
            self.local(Bytes::from_static(replies::EXECABORT));
            return Outcome::Done;
        }
        if let Some(outcome) = self.answer_locally(req, raw, conn) {
            return outcome;
        }
        if let Some(outcome) = self.ready_connection(&user, req, conn, resolved) {
            return outcome;
        }
        if name.eq_ignore_ascii_case(b"client") {
            if let Some(args) = client_cmd::with_upstream_ids(req, &self.shared.clients) {
                return self.forward_args(conn, req, &args);
            }
            if let Some(hook) =
                client_cmd::redirect_id(req, &self.shared.clients, self.client.redir)
            {
                let outcome = self.forward_to(conn, req, raw);
                self.slots.set_rewrite_last(hook);
                return outcome;
            }
        }
        let outcome = self.forward_to(conn, req, raw);
        if let Some(hook) = self.cluster_reply(req) {
            self.slots.set_rewrite_last(hook);
        } else if self.client.in_multi || self.client.monitor {
            // The reply comes within EXEC's, or not as one reply.
        } else if let Some(hook) = client_views::hook(req, &self.shared) {
            self.slots.set_rewrite_last(hook);
        }
        outcome
    }

    /// Once per request: the wait for a subscriber's state where it decides, the command
    /// rate, then the admission step (`admission.rs`: every policy decision, in Redis's
    /// order). `Err`: the request waits, or was refused and answered.
    fn admit(
        &mut self,
        user: &Arc<User>,
        req: &Request<'_>,
        is_acl: bool,
    ) -> Result<Option<&'static commands::CommandSpec>, Outcome> {
        if (self.client.subs.any() || self.client.pubsub_pending > 0)
            && admission::answered_here(req, is_acl)
            && self.slots.upstream_pending() > 0
        {
            // Whether the client is in a RESP2 subscriber's context, where Redis refuses
            // what redward would answer itself, is known once the (un)subscribe
            // confirmations before it are in. Nothing is charged before that wait.
            return Err(Outcome::WaitForReplies);
        }
        if !self.charge_command_rate(user) {
            return Err(Outcome::Done);
        }
        let ctx = self.admission_context(user, req);
        match admission::admit(user, req, &ctx) {
            admission::Verdict::Admit(spec) => Ok(spec),
            admission::Verdict::Refuse(r) => {
                self.refuse(user, req, r);
                Err(Outcome::Done)
            }
        }
    }

    /// What the admission step needs to know of where this client is.
    fn admission_context(&mut self, user: &Arc<User>, req: &Request<'_>) -> admission::Context {
        let reserved = self
            .shared
            .reserved_names
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| crate::shared_limits::Guard {
                state_db: self.shared.state_db(),
                // Asked only of scripts, the one place it counts: not a lookup per request.
                scripts_confined: admission::runs_a_script(req.name())
                    && self.scripts_confined(user),
            });
        admission::Context {
            in_multi: self.client.in_multi,
            pubsub_context: self.pubsub_context(),
            identity_shared: self.shared.connector.identities().is_none(),
            reserved,
            logs_in_as_default: self.shared.connector.logs_in_as_default(),
        }
    }

    /// Carries out a refusal: the reply (as `rejectCommand` for an unknown command or an ACL
    /// denial), the counts, the metrics and the audit trail.
    fn refuse(&mut self, user: &User, req: &Request<'_>, refusal: admission::Refusal) {
        use admission::Refusal;
        match refusal {
            Refusal::Unknown(reply) => self.refuse_before_run(req, Bytes::from(reply)),
            Refusal::Acl {
                spec,
                denied,
                reply,
            } => {
                self.counts.refused += 1;
                self.shared.metrics.commands_denied.inc();
                match denied {
                    Denied::Command => self.shared.metrics.acl_denied_command.inc(),
                    Denied::Key { .. } => self.shared.metrics.acl_denied_key.inc(),
                    Denied::Channel { .. } => self.shared.metrics.acl_denied_channel.inc(),
                };
                self.audit_denied(user, spec, req, denied);
                self.refuse_before_run(req, Bytes::from(reply));
            }
            Refusal::Sort(text) => self.local(Bytes::from_static(text)),
            Refusal::Policy(reply) => {
                self.counts.refused += 1;
                self.shared.metrics.commands_denied.inc();
                self.reject(Bytes::from(reply));
            }
            Refusal::Context { reply, counted } => {
                if counted {
                    self.counts.refused += 1;
                }
                self.reject(Bytes::from(reply));
            }
        }
    }

    /// The connection the request rides, ready for it: its own opened if it needs one (set
    /// up as the user's identity), the shared or own one logged in as that identity
    /// (`identity.rs`), and a database owed after a busy-time `SCRIPT KILL` selected.
    /// `Some`: the request waits or was answered.
    fn ready_connection(
        &mut self,
        user: &Arc<User>,
        req: &Request<'_>,
        conn: ConnKind,
        resolved: Option<&'static commands::CommandSpec>,
    ) -> Option<Outcome> {
        let name = req.name();
        match conn {
            ConnKind::Dedicated => {}
            ConnKind::Shared
                if !self.flow.prefer_own
                    && !route::needs_own_connection(
                        resolved.or_else(|| commands::lookup(name)),
                        &self.shared.pause,
                    ) => {}
            _ => {
                // The connection opened for it is set up as the user's identity.
                if let Some(outcome) = self.follow_identity(user, ConnKind::None) {
                    return Some(outcome);
                }
                self.flow.busy_safe = taken_while_busy(req);
                self.flow.wait_fence = conn == ConnKind::Shared
                    && !self.client.in_multi
                    && !self.shared.pause.writes_held()
                    && (name.eq_ignore_ascii_case(b"wait")
                        || name.eq_ignore_ascii_case(b"waitaof"));
                return Some(Outcome::NeedUpstream);
            }
        }
        if let Some(outcome) = self.follow_identity(user, conn) {
            return Some(outcome);
        }
        if conn == ConnKind::Dedicated && !taken_while_busy(req) {
            if let Some(db) = self.select_owed.take() {
                let mut select = Vec::with_capacity(24);
                let db = db.to_string();
                encode_command(&mut select, [&b"SELECT"[..], db.as_bytes()].into_iter());
                self.send_own(&select, Hook::UpstreamAuth, false);
            }
        }
        None
    }

    /// Ends the transaction Redis holds for this client, DISCARD's reply swallowed (redward
    /// refused something in it, or its EXEC, which Redis never saw).
    fn end_transaction_upstream(&mut self) {
        self.client.in_multi = false;
        self.client.multi_dirty = false;
        let mut discard = Vec::with_capacity(16);
        encode_command(&mut discard, [&b"DISCARD"[..]].into_iter());
        self.send_own(&discard, Hook::None, false);
    }

    /// The commands redward answers itself, or hands over itself ([`LOCAL`]). `None`: the
    /// request goes to Redis as usual.
    fn answer_locally(&mut self, req: &Request<'_>, raw: &[u8], conn: ConnKind) -> Option<Outcome> {
        let name = req.name();
        let local = LOCAL
            .iter()
            .find(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()))?
            .1;
        match local {
            Local::Auth => {
                match commands::resolve(req) {
                    Ok(_) => self.do_auth(req),
                    Err(e) => self.local(Bytes::from(e.reply(req))),
                }
                Some(Outcome::Done)
            }
            Local::Hello => Some(self.do_hello(req, raw, conn)),
            Local::Quit => {
                self.client.flags.closing = true;
                self.client.changed = true;
                self.local(Bytes::from_static(replies::OK));
                self.close_after_replies();
                Some(Outcome::Done)
            }
            Local::Reset if req.argc() == 1 => Some(self.do_reset(raw, conn)),
            Local::Client if req.argc() == 3 && req.arg(1).eq_ignore_ascii_case(b"reply") => {
                self.client_reply(req.arg(2));
                Some(Outcome::Done)
            }
            Local::Client => self.client_command(req),
            Local::Select if conn == ConnKind::Shared && !self.flow.prefer_own => {
                self.select_shared(req, raw)
            }
            Local::Sync if conn == ConnKind::Dedicated && !self.client.in_multi => {
                // Every earlier reply goes to the client first; then the bytes are Redis's.
                if self.slots.upstream_pending() > 0 {
                    return Some(Outcome::WaitForReplies);
                }
                self.release_front();
                self.forward(req, raw);
                self.flow.handover = true;
                Some(Outcome::Done)
            }
            Local::Reset | Local::Select | Local::Sync => None,
        }
    }

    /// Refuses a request before it runs, as Redis's `rejectCommand` does: an `EXEC` refused
    /// (arity, ACL) also ends the transaction, and its error reads `-EXECABORT Transaction
    /// discarded because of: <error>` (`execCommandAbort` in multi.c). Redis never saw a
    /// refusal, so a transaction it holds is ended with a DISCARD whose reply is swallowed.
    fn refuse_before_run(&mut self, req: &Request<'_>, reply: Bytes) {
        if !req.name().eq_ignore_ascii_case(b"exec") {
            self.reject(reply);
            return;
        }
        if self.client.in_multi {
            self.end_transaction_upstream();
        }
        let text = reply.strip_prefix(b"-").unwrap_or(&reply);
        let mut out = b"-EXECABORT Transaction discarded because of: ".to_vec();
        out.extend_from_slice(text);
        self.local(Bytes::from(out));
    }

    /// The command rate, charged first for every command: one the ACL denies, or one Redis
    /// does not know, costs a token too, or refusals would be a free way to make redward burn
    /// CPU and write the audit trail. This instance's share first, then the user's rate across
    /// instances (when shared). `false`: refused, and answered.
    fn charge_command_rate(&mut self, user: &User) -> bool {
        let Some(rate) = self.live.command_rates.get(&user.name) else {
            return true;
        };
        let shared_ok = || {
            let Some(rates) = self.shared.shared_rates.get() else {
                return true;
            };
            rates.budget(&user.name).is_none_or(|b| b.admit(rates))
        };
        if rate.check().is_ok() && shared_ok() {
            return true;
        }
        self.counts.refused += 1;
        self.shared.metrics.commands_rate_limited.inc();
        self.reject(Bytes::from_static(replies::COMMAND_RATE_EXCEEDED));
        false
    }

    /// Forwards a request redward rewrote (`args`), encoded afresh: the ids of `CLIENT
    /// UNBLOCK` / `TRACKING ... REDIRECT` as Redis knows the connections they name.
    fn forward_args(&mut self, conn: ConnKind, req: &Request<'_>, args: &[Vec<u8>]) -> Outcome {
        let mut data = Vec::new();
        let mut ranges = Vec::with_capacity(args.len());
        for a in args {
            ranges.push(data.len()..data.len() + a.len());
            data.extend_from_slice(a);
        }
        self.forward_as(conn, req, &Request::built(&data, &ranges), &[])
    }

    /// The reply hook the upstream's kind wants for this request (behind a cluster, a
    /// `CLUSTER` request whose reply names nodes, or the EXEC of a transaction that queued
    /// one: `upstream/kind.rs`). A MONITOR client's replies are not rewritten.
    fn cluster_reply(&mut self, req: &Request<'_>) -> Option<std::sync::Arc<dyn super::Rewrite>> {
        if self.client.monitor {
            return None;
        }
        // The places are lent out for the call: `upstream()` borrows the whole state.
        let mut topology = std::mem::take(&mut self.client.multi_topology);
        let txn = crate::upstream::kind::Txn {
            in_multi: self.client.in_multi,
            queued: self.client.multi_queued,
            topology: &mut topology,
        };
        let hook = self.upstream().reply_hook(req, txn);
        self.client.multi_topology = topology;
        hook
    }

    /// Forwards a request on the connection of kind `conn` and expects its replies.
    pub(super) fn forward_to(&mut self, conn: ConnKind, req: &Request<'_>, raw: &[u8]) -> Outcome {
        self.forward_as(conn, req, req, raw)
    }

    /// Sends `sent` (with `raw`, its bytes as read, if any) for the client's request `req`:
    /// what the reply means to the client's state is read from `req`, so a translated id
    /// (`with_upstream_ids`) is not taken for the client's own words.
    fn forward_as(
        &mut self,
        conn: ConnKind,
        req: &Request<'_>,
        sent: &Request<'_>,
        raw: &[u8],
    ) -> Outcome {
        if conn == ConnKind::Shared {
            self.out.shared_unsent += 1;
        }
        let queued = self.client.in_multi;
        let (expect, mut hook) = self.expectation(req);
        if hook == Hook::None && conn == ConnKind::Dedicated && !queued {
            // Blocking commands and flag changes run on a connection of the client's own.
            hook = self.state_hook(req);
        }
        self.forward(sent, raw);
        let forward = !self.suppressed();
        self.expect(expect, hook, forward);
        Outcome::Done
    }

    /// The hook that follows what `CLIENT LIST` shows of a request on the client's own
    /// connection: a blocking command (`b` until its reply), or a change of flags once Redis
    /// accepts it (`CLIENT TRACKING`, `NO-EVICT`, `NO-TOUCH`, `READONLY`, `READWRITE`).
    fn state_hook(&mut self, req: &Request<'_>) -> Hook {
        let name = req.name();
        let argc = req.argc();
        let is = |i: usize, s: &[u8]| req.arg(i).eq_ignore_ascii_case(s);
        let on_off = |i: usize| {
            if is(i, b"on") {
                Some(true)
            } else if is(i, b"off") {
                Some(false)
            } else {
                None
            }
        };
        if commands::lookup(name).is_some_and(|s| s.flags & commands::FLAG_BLOCKING != 0) {
            self.client.blocking += 1;
            return Hook::Blocking;
        }
        if argc == 1 && (is(0, b"readonly") || is(0, b"readwrite")) {
            return Hook::Sets(FlagChange::ReadOnly(is(0, b"readonly")));
        }
        if !is(0, b"client") || argc < 2 {
            return Hook::None;
        }
        if is(1, b"unpause") && argc == 2 {
            return Hook::Pause(None);
        }
        if is(1, b"pause") && matches!(argc, 3 | 4) {
            let ms =
                crate::resp::request::string2ll(req.arg(2)).and_then(|ms| u64::try_from(ms).ok());
            let write_only = argc == 4 && is(3, b"write");
            return ms.map_or(Hook::None, |ms| {
                Hook::Pause(Some((std::time::Duration::from_millis(ms), write_only)))
            });
        }
        if argc < 3 {
            return Hook::None;
        }
        let change = if is(1, b"tracking") {
            let redir = (3..argc)
                .find(|&i| is(i, b"redirect"))
                .and_then(|i| crate::resp::request::string2ll(req.arg(i + 1)));
            on_off(2).map(|on| FlagChange::Tracking {
                on,
                bcast: (3..argc).any(|i| is(i, b"bcast")),
                redir: redir.unwrap_or(0),
            })
        } else if is(1, b"no-evict") && argc == 3 {
            on_off(2).map(FlagChange::NoEvict)
        } else if is(1, b"no-touch") && argc == 3 {
            on_off(2).map(FlagChange::NoTouch)
        } else {
            None
        };
        change.map_or(Hook::None, Hook::Sets)
    }

    /// A RESP2 connection with subscriptions: Redis allows it only (P|S)(UN)SUBSCRIBE, PING,
    /// QUIT and RESET. (Exact once every earlier reply is in.)
    pub(super) fn pubsub_context(&self) -> bool {
        !self.client.resp3 && self.client.subs.any()
    }

    /// `CLIENT REPLY ON|OFF|SKIP` is carried out by redward (`clientCommand` in
    /// `networking.c`): Redis keeps answering everything and redward drops the replies the
    /// client asked not to get, its own included. Redis is never out of step with redward
    /// about which replies exist, even when a later command is answered locally.
    pub(super) fn client_reply(&mut self, mode: &[u8]) {
        // Inside MULTI it was refused (`client_cmd::refused_in_multi`): Redis would switch modes
        // inside EXEC, where replies can no longer be matched to requests.
        if mode.eq_ignore_ascii_case(b"on") {
            self.client.reply_mode = ReplyMode::default();
            self.local(Bytes::from_static(replies::OK));
        } else if mode.eq_ignore_ascii_case(b"off") {
            self.client.reply_mode.off = true;
        } else if mode.eq_ignore_ascii_case(b"skip") {
            if !self.client.reply_mode.off {
                self.client.reply_mode.skip_next = true;
            }
        } else {
            self.local(Bytes::from_static(replies::SYNTAX));
        }
    }

    pub(super) fn forward(&mut self, req: &Request<'_>, raw: &[u8]) {
        self.counts.forwarded += 1;

        if req.is_inline() {
            // Inline requests are re-encoded so Redis sees exactly the arguments checked here.
            let mut buf = Vec::with_capacity(raw.len() + 16);
            encode_command(&mut buf, req.args().collect::<Vec<_>>().into_iter());
            self.out.uout.extend_from_slice(&buf);
        } else {
            self.out.uout.extend_from_slice(raw);
        }
    }
}
