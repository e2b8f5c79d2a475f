//! Login: the commands that can change who the client is (AUTH, HELLO with AUTH, RESET) and
//! the requests of a client not yet logged in. The only way into the session's
//! [`LoggedIn`] proof is [`State::log_in`] with one that `auth` made; [`State::log_out`] is
//! RESET's way back out.

use super::*;

impl State {
    /// A failed login from this client's address: counted here, and across redward
    /// instances when `limits.shared_state: upstream`.
    fn login_failed(&self) {
        let ip = self.peer.ip();
        self.shared.limiter.auth_failed(ip);
        if let Some(shared) = self.shared.shared_limits.get() {
            shared.failed(ip);
        }
    }

    pub(super) fn log_in(&mut self, proof: LoggedIn, how: &'static str) {
        debug!(peer = %self.peer, user = %proof.user().name, how, "authenticated");
        self.login = Some(proof);
        self.client.changed = true; // CLIENT LIST shows the user
    }

    /// RESET logs the client out, back to the implicit `default` login if it is `nopass`
    /// (`clearClientConnectionState` in networking.c).
    pub(super) fn log_out(&mut self) {
        self.login = LoggedIn::implicit(&self.live.users);
        self.client.changed = true;
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
            AuthOutcome::LoggedIn(proof) => {
                self.log_in(proof, "AUTH");
                self.local(Bytes::from_static(replies::OK));
            }
            AuthOutcome::Refused { reply, failed_user } => {
                if let Some(u) = failed_user {
                    self.audit_auth_failure(req, u);
                    self.login_failed();
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
        let out = auth::hello(&self.live.users, req, self.login.is_some());
        let fwd = match out.result {
            Err(reply) => {
                if let Some(u) = out.failed_user {
                    self.audit_auth_failure(req, u);
                    self.login_failed();
                }
                if let Some(proof) = out.login {
                    // Redis applies HELLO's options in order: an AUTH before a bad option
                    // stays done.
                    self.log_in(proof, "HELLO");
                }
                self.local(reply);
                return Outcome::Done;
            }
            Ok(fwd) => fwd,
        };
        if conn == ConnKind::Shared && !self.flow.prefer_own && !self.client.in_multi {
            // Nothing changed yet. The protocol rides shared connections set up for it, the
            // name stays here (`client_cmd.rs`).
            return self.hello_shared(fwd.version, fwd.setname, out.login);
        }
        if conn != ConnKind::Dedicated {
            // Nothing changed yet: connect, then come back to this same request.
            return Outcome::NeedUpstream;
        }
        if let Some(name) = fwd.setname {
            self.client.name = name.to_vec();
            self.client.changed = true;
        }
        if let Some(proof) = out.login {
            self.log_in(proof, "HELLO");
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
            self.out.uout.extend_from_slice(&buf);
        } else {
            self.out.uout.extend_from_slice(raw);
        }
        let forward = !self.suppressed();
        self.expect(Expect::Replies(1), Hook::Hello, forward);
        // The reply's `id` is the client's, as on shared connections and in CLIENT ID.
        self.slots
            .set_rewrite_last(client_cmd::hello_id(self.client.id));
        Outcome::Done
    }

    /// RESET: Redis resets the connection (and logs it out upstream too), so redward forwards
    /// it for Redis's own reply and state, then logs the upstream connection back in as
    /// itself; the client is logged out of redward, as `clearClientConnectionState` does.
    pub(super) fn do_reset(&mut self, raw: &[u8], conn: ConnKind) -> Outcome {
        if conn == ConnKind::Shared && self.client.setup != Setup::default() {
            // Back to RESP2 and database 0: on the shared connections set up that way.
            return Outcome::Reattach(Setup::default());
        }
        self.log_out();
        // `clearClientConnectionState` (networking.c): database 0, RESP2, no name.
        self.client.name.clear();
        self.client.db = 0;
        self.client.changed = true;
        self.client.in_multi = false;
        self.client.multi_dirty = false;
        // RESET clears CLIENT REPLY OFF/SKIP before replying, so its reply is always sent.
        self.client.reply_mode = ReplyMode::default();
        if conn != ConnKind::Dedicated {
            // No connection, or a shared one: Redis holds no state of this client to reset.
            self.local(Bytes::from_static(replies::RESET));
            return Outcome::Done;
        }
        self.send_own(raw, Hook::Reset, true);
        let shared = Arc::clone(&self.shared);
        if let Some(auth) = shared.connector.auth_request() {
            self.send_own(auth, Hook::UpstreamAuth, false);
        }
        // Logged in upstream as redward again: the next forwarded request logs the
        // connection in as the client's identity (`identity.rs`).
        self.client.setup.user = None;
        // RESET selects database 0 itself.
        self.select_owed = None;
        Outcome::Done
    }
}
