//! Dispatch: each request's checks in Redis's order (existence and arity, login, command
//! rate, ACL), the commands redward answers itself (AUTH, HELLO, ACL, CLIENT REPLY, RESET,
//! QUIT), and the route to Redis: the shared connection, or the client's own.

use super::*;

/// Redis 7.0's refusal of a protected command (`processCommand`, `CMD_PROTECTED`) when
/// `enable-debug-command` / `enable-module-command` are left at their default, `no`.
pub(super) fn protected_refusal(fullname: &str) -> Option<&'static [u8]> {
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
pub(super) fn needs_own_connection(spec: Option<&commands::CommandSpec>) -> bool {
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
pub(super) fn answered_here(req: &Request<'_>, is_acl: bool) -> bool {
    let name = req.name();
    is_acl
        || name.eq_ignore_ascii_case(b"auth")
        || name.eq_ignore_ascii_case(b"hello")
        || (name.eq_ignore_ascii_case(b"client")
            && req.argc() == 3
            && req.arg(1).eq_ignore_ascii_case(b"reply"))
}

impl State {
    pub(super) fn dispatch(&mut self, req: &Request<'_>, raw: &[u8], conn: ConnKind) -> Outcome {
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
    pub(super) fn pubsub_context(&self) -> bool {
        !self.resp3 && self.subs.any()
    }

    /// Whether a CONFIG request would change the credential redward logs in to Redis with:
    /// `CONFIG SET requirepass` (in any of its parameter pairs) while redward is Redis's
    /// `default` user. Every later upstream connection would fail, for every client; ACL
    /// SETUSER and friends are refused for the same reason (`acl_cmd.rs`).
    pub(super) fn changes_own_credential(&self, req: &Request<'_>) -> bool {
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
    pub(super) fn client_reply(&mut self, mode: &[u8]) {
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
    pub(super) fn dispatch_unauthenticated(
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
    pub(super) fn auth_locked_out(&mut self, req: &Request<'_>) -> bool {
        if !self.shared.limiter.auth_locked(self.peer.ip()) {
            return false;
        }
        self.shared.metrics.auth_lockouts.inc();
        self.audit_auth_failure(req, "(locked out)".to_owned());
        self.local(Bytes::from_static(replies::AUTH_LOCKED));
        true
    }

    pub(super) fn do_auth(&mut self, req: &Request<'_>) {
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

    pub(super) fn do_hello(&mut self, req: &Request<'_>, raw: &[u8], conn: ConnKind) -> Outcome {
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
    pub(super) fn do_reset(&mut self, raw: &[u8], conn: ConnKind) -> Outcome {
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

    pub(super) fn forward(&mut self, req: &Request<'_>, raw: &[u8]) {
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
}
