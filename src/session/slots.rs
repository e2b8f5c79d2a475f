//! Reply slots: one per request that gets a reply, in request order.
//!
//! A slot is either answered by redward itself (its bytes are ready now) or by Redis (it waits
//! for a number of upstream replies). Replies go to the client strictly in slot order, so a
//! refusal redward writes at request 5 of a 10,000-deep pipeline reaches the client between
//! Redis's replies 4 and 6, exactly where Redis would have put it.

use std::collections::VecDeque;

use bytes::Bytes;

/// Which subscription family a (un)subscribe request and its confirmations belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Channel,
    Pattern,
    Shard,
}

/// How many upstream replies a forwarded request is owed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Plain replies (almost every command: one).
    Replies(u32),
    /// (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE with arguments: one confirmation per argument
    /// (`pubsub.c` replies once per channel, duplicates included). An error ends it early.
    Confirms(Family, u32),
    /// (P|S)UNSUBSCRIBE with no argument: one confirmation per subscription held when Redis
    /// runs it, or one if there is none. Resolved when the slot reaches the front, when every
    /// earlier confirmation has been seen.
    UnsubscribeAll(Family),
}

/// What to learn from a request's reply once it is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    None,
    /// HELLO: a map reply means RESP3 from now on, an array RESP2.
    Hello,
    /// RESET: Redis dropped subscriptions, MONITOR and RESP3.
    Reset,
    /// MONITOR: after its +OK the stream carries monitor lines answering no request.
    Monitor,
    /// redward's own AUTH after a RESET: swallowed; anything but +OK breaks the connection.
    UpstreamAuth,
    /// (P|S)(UN)SUBSCRIBE: until its confirmations are in, whether the client is a subscriber
    /// is not known.
    PubSub,
    /// redward's own `CLIENT ID` on a new connection of the client's own: swallowed, and its
    /// integer recorded in the registry ([`crate::clients::Entry::set_upstream_id`]).
    UpstreamId,
    /// A blocking command (`BLPOP`, `XREAD BLOCK`, `WAIT`, ...): the client shows `b` in
    /// `CLIENT LIST` until its reply is in.
    Blocking,
    /// A command that changes a client flag `CLIENT LIST` shows, once Redis says `+OK`.
    Sets(FlagChange),
    /// `CLIENT PAUSE <ms> [WRITE]` (`Some`, with whether `WRITE`) or `CLIENT UNPAUSE`
    /// (`None`): once Redis says `+OK`, what redward follows of it (`pause.rs`).
    Pause(Option<(std::time::Duration, bool)>),
}

/// What a `CLIENT TRACKING`, `CLIENT NO-EVICT`, `CLIENT NO-TOUCH`, `READONLY` or `READWRITE`
/// changes in the client's flags when Redis accepts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagChange {
    /// On (with `BCAST`, redirected to redward's client `redir`, 0 for none) or off.
    Tracking {
        on: bool,
        bcast: bool,
        redir: i64,
    },
    NoEvict(bool),
    NoTouch(bool),
    ReadOnly(bool),
}

#[derive(Debug)]
pub enum Slot {
    /// A reply redward wrote itself.
    Local(Bytes),
    /// A reply redward wrote itself whose encoding depends on the protocol (maps, sets, nulls);
    /// the one in force when it reaches the client is used.
    LocalProto { resp2: Bytes, resp3: Bytes },
    /// Replies owed by Redis. `forward: false` swallows them (redward's own requests);
    /// `sent` times the request for the latency histogram.
    Upstream {
        expect: Expect,
        forward: bool,
        sent: tokio::time::Instant,
        hook: Hook,
        /// Replaces each reply before the client sees it (`reply_hook.rs`); `None` for
        /// almost every request, whose replies stream through.
        rewrite: Option<std::sync::Arc<dyn super::Rewrite>>,
    },
    /// Close the connection once everything before is written (QUIT, protocol error).
    Close,
}

/// The queue of slots. Bounded by the caller (`max_pipeline`): when full, redward stops
/// reading requests until replies drain.
#[derive(Debug, Default)]
pub struct Slots {
    queue: VecDeque<Slot>,
    /// How many of the slots are `Upstream`.
    upstream: usize,
}

impl Slots {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Slots still waiting for Redis.
    pub fn upstream_pending(&self) -> usize {
        self.upstream
    }

    pub fn push(&mut self, slot: Slot) {
        if matches!(slot, Slot::Upstream { .. }) {
            self.upstream += 1;
        }
        self.queue.push_back(slot);
    }

    /// Gives the newest slot, if Redis owes it replies, a reply hook.
    pub fn set_rewrite_last(&mut self, hook: std::sync::Arc<dyn super::Rewrite>) {
        if let Some(Slot::Upstream { rewrite, .. }) = self.queue.back_mut() {
            *rewrite = Some(hook);
        }
    }

    pub fn front(&self) -> Option<&Slot> {
        self.queue.front()
    }

    pub fn front_mut(&mut self) -> Option<&mut Slot> {
        self.queue.front_mut()
    }

    pub fn pop(&mut self) -> Option<Slot> {
        let slot = self.queue.pop_front();
        if matches!(slot, Some(Slot::Upstream { .. })) {
            self.upstream -= 1;
        }
        slot
    }

    pub fn drain(&mut self) -> impl Iterator<Item = Slot> + '_ {
        self.upstream = 0;
        self.queue.drain(..)
    }

    /// The `n` oldest slots waiting for Redis will get no reply from it: each is answered with
    /// `reply` instead (or dropped, if its reply was to be swallowed).
    pub fn fail_upstream(&mut self, n: u32, reply: &Bytes) {
        let mut left = n;
        let old = std::mem::take(&mut self.queue);
        for slot in old {
            match slot {
                Slot::Upstream { forward, .. } if left > 0 => {
                    left -= 1;
                    self.upstream -= 1;
                    if forward {
                        self.queue.push_back(Slot::Local(reply.clone()));
                    }
                }
                other => self.queue.push_back(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(forward: bool) -> Slot {
        Slot::Upstream {
            expect: Expect::Replies(1),
            forward,
            sent: tokio::time::Instant::now(),
            hook: Hook::None,
            rewrite: None,
        }
    }

    #[test]
    fn slots_count_what_redis_still_owes() {
        let mut slots = Slots::default();
        slots.push(upstream(true));
        slots.push(Slot::Local(Bytes::from_static(b"+OK\r\n")));
        slots.push(upstream(false));
        assert_eq!((slots.len(), slots.upstream_pending()), (3, 2));
        assert!(matches!(slots.pop(), Some(Slot::Upstream { .. })));
        assert_eq!(slots.upstream_pending(), 1);
        assert!(matches!(slots.pop(), Some(Slot::Local(_))));
        assert_eq!(slots.upstream_pending(), 1);
        slots.drain().for_each(drop);
        assert_eq!((slots.len(), slots.upstream_pending()), (0, 0));
    }

    #[test]
    fn requests_never_sent_get_the_error_in_their_place_and_swallowed_ones_vanish() {
        let mut slots = Slots::default();
        slots.push(upstream(true));
        slots.push(Slot::Local(Bytes::from_static(b"-NOPERM\r\n")));
        slots.push(upstream(false)); // redward's own request: nothing to answer
        slots.push(upstream(true));
        slots.push(upstream(true)); // beyond the `n` that failed: still owed by Redis
        let err = Bytes::from_static(b"-ERR unavailable\r\n");
        slots.fail_upstream(3, &err);
        let kinds: Vec<String> = slots
            .drain()
            .map(|s| match s {
                Slot::Local(b) => String::from_utf8_lossy(&b).into_owned(),
                Slot::Upstream { .. } => "upstream".to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "-ERR unavailable\r\n",
                "-NOPERM\r\n",
                "-ERR unavailable\r\n",
                "upstream"
            ]
        );
    }
}
