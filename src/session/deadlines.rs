//! Every wait a session makes has a deadline: the login deadline, the idle timeout, the
//! client write timeout, and the output buffer's soft limit. One timer serves them all,
//! re-armed only when an earlier deadline appears: building a fresh timer per deadline on
//! every turn of the loop cost ~5 % of the CPU at `-P 16`.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::SessionError;

pub(super) struct Deadlines {
    login: Instant,
    idle_timeout: Duration,
    idle: Instant,
    write_timeout: Duration,
    /// Set while replies wait to be written to the client.
    write: Option<Instant>,
    /// Since when a subscriber's output has been over the soft limit.
    pub(super) soft_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    /// The deadline the timer is set to, if it is armed.
    armed: Option<Instant>,
    /// What applied when the timer was armed (see [`Deadlines::arm`]).
    login_applies: bool,
    idle_applies: bool,
    /// When the registry is owed this client's state (`State::report_commands`): not a
    /// deadline that ends anything, only a turn of the loop.
    publish: Option<Instant>,
}

/// What the session is doing this turn, as far as its deadlines care.
#[derive(Debug, Clone, Copy)]
pub(super) struct Waiting {
    /// Not logged in (and not closing): the login deadline applies.
    pub(super) for_login: bool,
    /// Nothing going on (no request in flight, not a subscriber or MONITOR): idle applies.
    pub(super) idle: bool,
    /// Replies are waiting to be written to the client.
    pub(super) to_write: bool,
}

impl Deadlines {
    pub(super) fn new(
        now: Instant,
        auth_timeout: Duration,
        idle_timeout: Duration,
        write_timeout: Duration,
    ) -> Self {
        Deadlines {
            login: now + auth_timeout,
            idle_timeout,
            idle: now + idle_timeout,
            write_timeout,
            write: None,
            soft_since: None,
            timer: Box::pin(tokio::time::sleep_until(now)),
            armed: None,
            login_applies: false,
            idle_applies: false,
            publish: None,
        }
    }

    /// Wants a turn of the loop at `at` (or none), to publish the client's state.
    pub(super) fn publish_at(&mut self, at: Option<Instant>) {
        self.publish = at;
    }

    /// The client sent something: the idle timeout starts again. (`now` is called only if
    /// an idle timeout is set: the clock is read at most once per turn, and only if needed.)
    pub(super) fn client_read(&mut self, now: impl FnOnce() -> Instant) {
        if !self.idle_timeout.is_zero() {
            self.idle = now() + self.idle_timeout;
        }
    }

    /// The client took what was written.
    pub(super) fn client_wrote(&mut self) {
        self.write = None;
    }

    /// Sets the timer for the earliest deadline that applies now (`now` is called only when
    /// a write deadline starts).
    pub(super) fn arm(&mut self, now: impl FnOnce() -> Instant, waiting: Waiting) {
        if !waiting.to_write {
            self.write = None;
        } else if self.write.is_none() {
            self.write = Some(now() + self.write_timeout);
        }
        self.login_applies = waiting.for_login;
        self.idle_applies = waiting.idle && !self.idle_timeout.is_zero();
        let next = [
            self.login_applies.then_some(self.login),
            self.idle_applies.then_some(self.idle),
            self.write,
            self.publish,
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(next) = next {
            if self.armed.is_none_or(|a| next < a) {
                self.timer.as_mut().reset(next);
                self.armed = Some(next);
            }
        }
    }

    /// Fires when the armed deadline passes (never, if none is armed).
    pub(super) async fn fired(&mut self) {
        match self.armed {
            Some(_) => self.timer.as_mut().await,
            None => std::future::pending().await,
        }
    }

    /// After the timer fired: the error for a deadline that passed, or `None` for one that
    /// moved later (re-armed on the next turn).
    pub(super) fn expired(&mut self, now: Instant) -> Option<SessionError> {
        self.armed = None;
        if self.login_applies && now >= self.login {
            return Some(SessionError::AuthTimeout);
        }
        if self.idle_applies && now >= self.idle {
            return Some(SessionError::IdleTimeout);
        }
        if self.write.is_some_and(|d| now >= d) {
            return Some(SessionError::WriteTimeout);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_logs_in_is_timed_out_at_the_login_deadline() {
        let mut d = Deadlines::new(Instant::now(), 10 * SEC, Duration::ZERO, 60 * SEC);
        let waiting = Waiting {
            for_login: true,
            idle: true,
            to_write: false,
        };
        d.arm(Instant::now, waiting);
        d.fired().await;
        assert!(Instant::now() >= d.login);
        assert!(matches!(
            d.expired(Instant::now()),
            Some(SessionError::AuthTimeout)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn reading_from_the_client_pushes_the_idle_deadline_back() {
        let start = Instant::now();
        let mut d = Deadlines::new(start, 10 * SEC, 5 * SEC, 60 * SEC);
        let idle = Waiting {
            for_login: false,
            idle: true,
            to_write: false,
        };
        d.arm(|| start, idle);
        tokio::time::advance(4 * SEC).await;
        d.client_read(Instant::now);
        d.fired().await; // the old deadline: moved later, not expired
        assert!(d.expired(Instant::now()).is_none());
        d.arm(Instant::now, idle);
        d.fired().await;
        assert!(matches!(
            d.expired(Instant::now()),
            Some(SessionError::IdleTimeout)
        ));
        assert_eq!(Instant::now() - start, 9 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_idle_but_an_unread_reply_times_out() {
        let start = Instant::now();
        let mut d = Deadlines::new(start, 10 * SEC, SEC, 3 * SEC);
        d.arm(
            || start,
            Waiting {
                for_login: false,
                idle: false,
                to_write: true,
            },
        );
        d.fired().await;
        assert!(matches!(
            d.expired(Instant::now()),
            Some(SessionError::WriteTimeout)
        ));
        assert_eq!(Instant::now() - start, 3 * SEC);
    }
}
