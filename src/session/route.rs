//! Routing: which upstream connection a request takes. Requests ride a shared connection
//! (`mux.rs`) until one needs the client's own, decided by a property of the command in the
//! table ([`commands::FLAG_OWN_CONNECTION`], generated and learned alike), or the client had a
//! large reply. Moving waits for every reply owed on the shared connection, so replies keep
//! their order; then the same request is dispatched again on the new connection.

use super::*;

/// Whether a command must run on the client's own upstream connection (see
/// [`commands::FLAG_OWN_CONNECTION`]), or must now: during a `CLIENT PAUSE`, one Redis holds
/// (`pause.rs`; outside a pause that costs one atomic load). Commands unknown to Redis get the
/// same error on any connection, so they can share.
pub(super) fn needs_own_connection(
    spec: Option<&commands::CommandSpec>,
    pause: &crate::pause::Pause,
) -> bool {
    spec.is_some_and(|s| {
        s.flags & commands::FLAG_OWN_CONNECTION != 0
            || (pause.writes_held() && crate::pause::held_by_write_pause(s))
    })
}

impl State {
    /// Phase 1 of a turn: frames, checks and dispatches the requests already read, as many as
    /// the bounds allow (pipeline depth, bytes owed to Redis), opening the client's own
    /// connection when one needs it.
    ///
    /// # Errors
    /// Only a bug: dispatch asking twice for a connection it already has.
    pub(super) async fn take_requests(
        &mut self,
        inb: &mut Inbound,
        conn: &mut Conn,
    ) -> Result<(), SessionError> {
        while self.reading_requests() {
            let limits = self.frame_limits();
            let frame = match inb.parser.parse(&inb.cin, &limits) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    debug!(peer = %self.peer, error = %e, "protocol error from client");
                    self.local(Bytes::from(e.reply()));
                    self.close_after_replies();
                    break;
                }
            };
            let len = frame.len();
            let outcome = match frame {
                Frame::Empty { .. } => {
                    self.end_of_command();
                    Outcome::Done
                }
                Frame::Command { .. } => {
                    let req = inb.parser.request(&inb.cin, &frame);
                    self.dispatch(&req, inb.cin.get(..len).unwrap_or(&[]), conn.kind())
                }
            };
            match outcome {
                Outcome::Done => {}
                Outcome::WaitForReplies => {
                    // The same request comes back once the replies are in: not a new command.
                    self.flow.pin_wait = true;
                    break;
                }
                Outcome::Reattach(setup) => {
                    if self.slots.upstream_pending() > 0 {
                        // Moving between shared connections: every reply owed on the old ones
                        // comes first. The request waits.
                        self.flow.pin_wait = true;
                        break;
                    }
                    self.reattach(conn, setup);
                    continue; // dispatch the same request again, on the new connections
                }
                Outcome::NeedUpstream => {
                    if matches!(conn, Conn::Dedicated(_)) {
                        // dispatch asked for a connection it already has: a bug, never a loop.
                        return Err(SessionError::Internal(
                            "dispatch requested an upstream twice",
                        ));
                    }
                    if self.slots.upstream_pending() > 0 {
                        // Moving off the shared connection: its replies must all be in first,
                        // or they could come after the new connection's. The request waits.
                        self.flow.pin_wait = true;
                        break;
                    }
                    if self.connect_own(conn).await {
                        continue; // dispatch the same request again, now with an upstream
                    }
                }
            }
            inb.cin.advance(len);
        }
        Ok(())
    }

    /// Whether requests are taken in: not closing or draining, no request waiting for replies,
    /// the pipeline and the bytes owed to Redis under their bounds.
    pub(super) fn reading_requests(&self) -> bool {
        !self.flow.closing
            && !self.flow.draining
            && !self.flow.pin_wait
            && !self.flow.handover
            && self.slots.len() < self.live.limits.max_pipeline
            && self.out.uout.len() < UPSTREAM_OUT_HIGH
    }

    /// Moves a client on shared connections to those set up as `setup` (nothing is owed on
    /// the old ones: the caller waited for every reply).
    fn reattach(&mut self, conn: &mut Conn, setup: Setup) {
        if let (Conn::Shared(_), Some(pool)) = (&*conn, self.shared.pool(self.connector(), setup)) {
            let limit = self.live.limits.shared_reply_buffer;
            *conn = Conn::Shared(pool.attach(limit, self.charge.clone()));
        }
        self.client.setup = setup;
        self.client.resp3 = setup.resp3;
        self.client.db = setup.db;
        self.client.changed = true;
    }

    /// Opens the client's own upstream connection, in the protocol and database the client
    /// had on the shared ones. `false`: it failed, and the request was answered with Redis's
    /// retryable error.
    async fn connect_own(&mut self, conn: &mut Conn) -> bool {
        let mut setup = self.client.setup;
        if std::mem::take(&mut self.flow.busy_safe) && setup.db != 0 {
            // Redis busy with a script answers SELECT with -BUSY: database 0 for the KILL,
            // the client's own selected before its next request.
            self.select_owed = Some(setup.db);
            setup.db = 0;
        }
        let fence = std::mem::take(&mut self.flow.wait_fence);
        let connector = self.connector().with_setup(setup).with_wait_fence(fence);
        let epoch = connector.target().epoch();
        match connector.connect().await {
            Ok(stream) => {
                debug!(peer = %self.peer, "upstream connected");
                crate::learn::after_connect(&self.shared.connector);
                if matches!(conn, Conn::Shared(_)) {
                    self.shared.metrics.upstream_moves.inc();
                }
                self.shared.metrics.upstream_own.inc();
                let gauge =
                    (self.shared.metrics).user_connections(connector.identity_name().as_deref());
                gauge.inc();
                if let Some(old) = self.own_gauge.replace(gauge) {
                    old.dec();
                }
                self.epoch = epoch;
                self.registration
                    .entry
                    .set_upstream_addr(stream.local_addr());
                *conn = Conn::Dedicated(stream);
                // Redis's id for it, so other clients can name this one by redward's id
                // (`CLIENT UNBLOCK`, `CLIENT TRACKING ... REDIRECT`): one more request in the
                // same write as the one that needed the connection.
                self.registration.entry.set_upstream_id(0);
                let mut ask = Vec::with_capacity(24);
                encode_command(&mut ask, [&b"CLIENT"[..], b"ID"].into_iter());
                self.send_own(&ask, Hook::UpstreamId, false);
                true
            }
            Err(e) => {
                self.shared.metrics.upstream_connect_errors.inc();
                crate::learn::upstream_failed();
                if matches!(e, crate::upstream::UpstreamError::FailoverInProgress(_)) {
                    debug!(peer = %self.peer, error = %e, "upstream held back");
                } else {
                    warn!(peer = %self.peer, side = %e.side(), error = %e, "upstream unavailable");
                }
                self.local(Bytes::from_static(e.client_reply()));
                self.end_of_command();
                self.flow.admitted = None;
                false
            }
        }
    }
}
