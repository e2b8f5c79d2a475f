//! The reply path: what each forwarded request is owed (reply counts, (un)subscribe
//! confirmations), and moving Redis's replies and redward's own to the client in request
//! order, following pub/sub, MONITOR, HELLO and RESET as they go by.

use super::*;
use crate::upstream::kind::ErrorReply;

/// Counts of subscriptions Redis holds for this connection, as its confirmations report them.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Subscriptions {
    channels: i64,
    patterns: i64,
    shard: i64,
    /// channels + patterns as last reported (Redis's count in (P)SUBSCRIBE confirmations).
    last_total: i64,
}

impl Subscriptions {
    pub(super) fn any(&self) -> bool {
        self.channels + self.patterns + self.shard > 0
    }

    /// Learns from a confirmation: its count is the new total for its family group.
    pub(super) fn observe(&mut self, kind: PubSub, count: Option<i64>) {
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

    /// Channels, patterns and shard channels, as `CLIENT LIST` shows them.
    pub(super) fn counts(&self) -> (i64, i64, i64) {
        (self.channels, self.patterns, self.shard)
    }

    pub(super) fn count(&self, family: Family) -> i64 {
        match family {
            Family::Channel => self.channels,
            Family::Pattern => self.patterns,
            Family::Shard => self.shard,
        }
    }
}

pub(super) fn confirmation_family(kind: PubSub) -> Option<Family> {
    match kind {
        PubSub::Subscribe | PubSub::Unsubscribe => Some(Family::Channel),
        PubSub::PSubscribe | PubSub::PUnsubscribe => Some(Family::Pattern),
        PubSub::SSubscribe | PubSub::SUnsubscribe => Some(Family::Shard),
        _ => None,
    }
}

impl State {
    pub(super) fn expect(&mut self, expect: Expect, hook: Hook, forward: bool) {
        if matches!(expect, Expect::Replies(0) | Expect::Confirms(_, 0)) {
            return;
        }
        if self.client.monitor {
            // Monitor lines and replies cannot be told apart; pass everything through.
            return;
        }
        if hook == Hook::PubSub {
            self.client.pubsub_pending += 1;
        }
        self.owed(expect, hook, forward);
    }

    /// Writes a request of redward's own to Redis (`forward: false` swallows its reply).
    pub(super) fn send_own(&mut self, request: &[u8], hook: Hook, forward: bool) {
        self.out.uout.extend_from_slice(request);
        self.owed(Expect::Replies(1), hook, forward);
    }

    /// Pushes the slot for replies Redis owes, timed from this turn.
    fn owed(&mut self, expect: Expect, hook: Hook, forward: bool) {
        let sent = self.now();
        self.slots.push(Slot::Upstream {
            expect,
            forward,
            hook,
            sent,
            rewrite: None,
        });
    }

    /// How many replies Redis owes for a forwarded request, following the commands that change
    /// that count ((UN)SUBSCRIBE family, MONITOR) and MULTI queueing.
    pub(super) fn expectation(&mut self, req: &Request<'_>) -> (Expect, Hook) {
        let name = req.name();
        let argc = req.argc();
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if self.client.in_multi {
            if is(b"exec") || is(b"discard") {
                self.client.in_multi = false;
                self.client.multi_dirty = false;
            } else {
                self.client.multi_queued += 1;
            }
            return (Expect::Replies(1), Hook::None);
        }
        if is(b"multi") {
            self.client.in_multi = argc == 1;
            self.client.multi_dirty = false;
            self.client.multi_queued = 0;
            self.client.multi_topology.clear();
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
    pub(super) fn take_replies(
        &mut self,
        scanner: &mut ReplyScanner,
        uin: &mut BytesMut,
    ) -> Result<(), SessionError> {
        loop {
            self.release_front();
            if self.flow.closed || uin.is_empty() || self.out.cout.len() >= self.client_out_cap() {
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
            // And a reply hook, if the request has one (`reply_hook.rs`), sees what is not
            // swallowed. One look at the front slot per reply decides both.
            let (swallow, rewrite) = match self.slots.front() {
                Some(Slot::Upstream {
                    forward,
                    expect,
                    rewrite,
                    ..
                }) if kind != Some(b'>') => {
                    let confirmation = kind == Some(b'*')
                        && matches!(expect, Expect::Confirms(..) | Expect::UnsubscribeAll(_));
                    let swallow = !*forward && !confirmation;
                    (swallow, rewrite.as_ref().filter(|_| !swallow))
                }
                _ => (false, None),
            };
            let bytes = uin.get(..consumed).unwrap_or(&[]);
            match (rewrite, info) {
                (None, Some(info)) if info.is_error() => self.pass_error(bytes, swallow),
                (None, _) if !swallow => self.out.cout.extend_from_slice(bytes),
                (None, Some(info)) if info.kind == b':' => self.note_upstream_id(bytes),
                (None, _) => {}
                // The reply hook: this reply is held until complete, then replaced whole.
                (Some(_), None) => {
                    if self.out.held.len() + bytes.len() > reply_hook::MAX_HELD {
                        return Err(SessionError::ReplyTooLarge);
                    }
                    self.out.held.extend_from_slice(bytes);
                }
                (Some(hook), Some(info)) => {
                    self.out.held.extend_from_slice(bytes);
                    hook.rewrite(&self.out.held, &info, &mut self.out.cout);
                    self.out.held.clear();
                }
            }
            uin.advance(consumed);
            match info {
                Some(info) => self.on_reply(info)?,
                None => return Ok(()),
            }
        }
    }

    /// An error reply from Redis on its way to the client (`swallow`: redward's own request's,
    /// which the client does not get). The upstream's kind sees it first (a cluster's
    /// redirection is rewritten, a `-READONLY` has the master checked); then a per-user
    /// upstream identity's name in it is replaced by the client's own.
    fn pass_error(&mut self, bytes: &[u8], swallow: bool) {
        let by_kind = self
            .upstream()
            .error_reply(bytes, &self.shared.metrics.cluster_redirections);
        if swallow {
            return;
        }
        match by_kind {
            ErrorReply::Redirect(rewritten) => {
                self.out
                    .cout
                    .extend_from_slice(rewritten.as_deref().unwrap_or(bytes));
            }
            ErrorReply::Pass if self.client.setup.user.is_some() => {
                // Redis 7.2+ and Valkey name the upstream user: the client sees its own.
                let own = self.login.as_ref().and_then(|l| {
                    crate::upstream::identity::own_name_in_error(bytes, &l.user().name)
                });
                self.out
                    .cout
                    .extend_from_slice(own.as_deref().unwrap_or(bytes));
            }
            ErrorReply::Pass => self.out.cout.extend_from_slice(bytes),
        }
    }

    /// A subscriber or MONITOR client that does not read: Redis's
    /// `client-output-buffer-limit` (`checkClientOutputBufferLimits` in networking.c), applied
    /// here: the hard cap at once, the soft cap after `output_soft_seconds` over it.
    pub(super) fn check_output_limits(
        &self,
        soft_since: &mut Option<Instant>,
    ) -> Result<(), SessionError> {
        if !self.streaming() {
            return Ok(());
        }
        let limits = &self.live.limits;
        let buffered = self.out.cout.len();
        if buffered >= limits.output_hard {
            warn!(peer = %self.peer, buffered, "output buffer hard limit reached; closing");
            return Err(SessionError::OutputLimit);
        }
        if buffered > limits.output_soft {
            let since = *soft_since.get_or_insert_with(Instant::now);
            if since.elapsed().as_secs() >= limits.output_soft_seconds {
                warn!(peer = %self.peer, buffered, "output buffer soft limit exceeded for too long; closing");
                return Err(SessionError::OutputLimit);
            }
        } else {
            *soft_since = None;
        }
        Ok(())
    }

    /// A flag change Redis accepted, for `CLIENT LIST`.
    fn apply(&mut self, change: FlagChange) {
        let f = &mut self.client.flags;
        match change {
            FlagChange::Tracking { on, bcast, redir } => {
                f.tracking = on;
                f.bcast = on && bcast;
                self.client.redir = if on { redir } else { -1 };
            }
            FlagChange::NoEvict(on) => f.no_evict = on,
            FlagChange::NoTouch(on) => f.no_touch = on,
            FlagChange::ReadOnly(on) => f.readonly = on,
        }
        self.publish_owed = true;
    }

    /// A swallowed integer reply: if it answers redward's own `CLIENT ID`, Redis's id for
    /// this client's own connection, which the registry keeps (`Hook::UpstreamId`).
    fn note_upstream_id(&self, reply: &[u8]) {
        let ours = matches!(
            self.slots.front(),
            Some(Slot::Upstream {
                hook: Hook::UpstreamId,
                ..
            })
        );
        let id = reply
            .strip_prefix(b":")
            .and_then(|r| r.strip_suffix(b"\r\n"))
            .and_then(crate::resp::request::string2ll)
            .and_then(|id| u64::try_from(id).ok());
        if let (true, Some(id)) = (ours, id) {
            self.registration.entry.set_upstream_id(id);
        }
    }

    /// Accounts one complete top-level frame from Redis against the slots.
    pub(super) fn on_reply(&mut self, info: FrameInfo) -> Result<(), SessionError> {
        if self.client.monitor {
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
                self.client.subs.observe(kind, info.count);
                self.publish_owed = true;
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
        } else if !self.client.resp3
            && self.client.subs.any()
            && pubsub.is_some_and(PubSub::is_message)
        {
            return Ok(()); // a RESP2 pub/sub message
        }
        let Some(Slot::Upstream {
            expect,
            hook,
            sent,
            forward,
            ..
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
        if forward && self.counts.completed.is_multiple_of(8) {
            let took = self.now().saturating_duration_since(sent);
            self.shared
                .metrics
                .request_duration
                .observe(took.as_secs_f64());
        }
        self.counts.completed = self.counts.completed.wrapping_add(1);
        self.slots.pop();
        if hook != Hook::None {
            self.after_hooked_reply(hook, &info)?;
        }
        Ok(())
    }

    /// What a reply whose request carried a hook changes in the client's state (only on
    /// success, but for redward's own re-login, whose failure ends the session).
    fn after_hooked_reply(&mut self, hook: Hook, info: &FrameInfo) -> Result<(), SessionError> {
        match hook {
            Hook::None => {}
            Hook::Hello => match info.kind {
                b'%' => self.client.resp3 = true,
                b'*' => self.client.resp3 = false,
                _ => {}
            },
            Hook::Reset => {
                if !info.is_error() {
                    self.client.resp3 = false;
                    self.client.monitor = false;
                    self.client.subs = Subscriptions::default();
                    // `clearClientConnectionState` (networking.c): tracking, no-evict,
                    // no-touch and READONLY are off again.
                    self.client.flags = crate::clients::Flags::default();
                    self.client.redir = -1;
                    self.client.changed = true;
                }
            }
            Hook::Monitor => {
                if !info.is_error() {
                    self.client.monitor = true;
                }
            }
            Hook::UpstreamAuth => {
                if info.is_error() {
                    return Err(SessionError::UpstreamReauth);
                }
            }
            Hook::PubSub => {
                self.client.pubsub_pending = self.client.pubsub_pending.saturating_sub(1)
            }
            Hook::UpstreamId => {} // recorded as it passed (`take_replies`)
            Hook::Blocking => {
                self.client.blocking = self.client.blocking.saturating_sub(1);
                self.publish_owed = true;
            }
            Hook::Sets(change) => {
                if !info.is_error() {
                    self.apply(change);
                }
            }
            Hook::Pause(lasts) => match lasts {
                _ if info.is_error() => {}
                Some((lasts, write_only)) => self.shared.pause.begin(lasts, write_only),
                None => self.shared.pause.end(),
            },
        }
        Ok(())
    }

    /// Writes every local reply now at the front and resolves an UNSUBSCRIBE-all that reached
    /// the front (all earlier confirmations have been seen, so the count is Redis's).
    pub(super) fn release_front(&mut self) {
        loop {
            match self.slots.front_mut() {
                Some(Slot::Local(_)) => {
                    if let Some(Slot::Local(bytes)) = self.slots.pop() {
                        self.out.cout.extend_from_slice(&bytes);
                    }
                }
                Some(Slot::LocalProto { .. }) => {
                    if let Some(Slot::LocalProto { resp2, resp3 }) = self.slots.pop() {
                        self.out.cout.extend_from_slice(if self.client.resp3 {
                            &resp3
                        } else {
                            &resp2
                        });
                    }
                }
                Some(Slot::Close) => {
                    self.slots.pop();
                    self.flow.closed = true;
                    return;
                }
                Some(Slot::Upstream { expect, .. }) => {
                    if let Expect::UnsubscribeAll(family) = *expect {
                        let n = self.client.subs.count(family).max(1);
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
    pub(super) fn shared_unavailable(&mut self, n: u32) {
        // The connect error is counted once, by the shared connection's task.
        let unavailable = Bytes::from_static(replies::UPSTREAM_UNAVAILABLE);
        self.slots.fail_upstream(n, &unavailable);
    }

    /// The upstream failed: every request still waiting gets an error (unless a reply was cut
    /// in half, which cannot be repaired), then the client connection closes.
    pub(super) fn upstream_failed(
        &mut self,
        scanner: &ReplyScanner,
        error: SessionError,
    ) -> Result<(), SessionError> {
        if error.side() == Side::Upstream {
            // The server may come back as another version: learn it at the next connection.
            crate::learn::upstream_failed();
        }
        if !scanner.in_frame() {
            for slot in self.slots.drain() {
                match slot {
                    Slot::Local(bytes) => self.out.cout.extend_from_slice(&bytes),
                    Slot::LocalProto { resp2, resp3 } => self
                        .out
                        .cout
                        .extend_from_slice(if self.client.resp3 { &resp3 } else { &resp2 }),
                    Slot::Upstream { forward: true, .. } => {
                        if let Some(reply) = error.owed_reply() {
                            self.out.cout.extend_from_slice(reply);
                        }
                    }
                    Slot::Upstream { .. } => {}
                    Slot::Close => break,
                }
            }
        }
        Err(error)
    }
}
