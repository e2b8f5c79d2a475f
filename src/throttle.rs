//! Log lines that an attacker can cause, kept to a few per second: the first events of a
//! window are logged in full, the rest are only counted, and the count is logged as one line
//! (by the next event after the window, or by [`Throttle::flush`] from a periodic task), so a
//! burst of 20,000 denials is a handful of lines, never 20,000, and nothing goes uncounted.
//!
//! Used for failed logins and ACL denials (`audit.rs`), refused connections and TLS
//! failures (`listener.rs`). Metrics, `ACL LOG` and the audit file still see every event.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Events logged in full per window.
const FULL_PER_WINDOW: u32 = 5;
const WINDOW: Duration = Duration::from_secs(1);

/// What an event may do with the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it in full; `suppressed` events were counted (not logged) before it.
    Log { suppressed: u64 },
    /// Only counted: a later line reports it.
    Count,
}

#[derive(Debug)]
pub struct Throttle {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
    /// When the first suppressed event of the pending count happened.
    since: Option<Instant>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            state: Mutex::new(State {
                window_start: None,
                logged: 0,
                suppressed: 0,
                since: None,
            }),
        }
    }
}

impl Throttle {
    /// Decides for an event happening now.
    pub fn event(&self) -> Verdict {
        self.event_at(Instant::now())
    }

    fn event_at(&self, now: Instant) -> Verdict {
        let Ok(mut st) = self.state.lock() else {
            return Verdict::Count;
        };
        if st
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= WINDOW)
        {
            st.window_start = Some(now);
            st.logged = 0;
        }
        if st.logged < FULL_PER_WINDOW {
            st.logged += 1;
            st.since = None;
            return Verdict::Log {
                suppressed: std::mem::take(&mut st.suppressed),
            };
        }
        st.suppressed += 1;
        st.since.get_or_insert(now);
        Verdict::Count
    }

    /// Takes the count of events not logged since the last line, once their window is over:
    /// `(count, how long the burst has been going)`.
    pub fn flush(&self) -> Option<(u64, Duration)> {
        self.flush_at(Instant::now())
    }

    fn flush_at(&self, now: Instant) -> Option<(u64, Duration)> {
        let mut st = self.state.lock().ok()?;
        let over = st
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= WINDOW);
        if st.suppressed == 0 || !over {
            return None;
        }
        let since = st.since.take().unwrap_or(now);
        Some((
            std::mem::take(&mut st.suppressed),
            now.saturating_duration_since(since),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_a_few_lines_and_a_count() {
        let t = Throttle::default();
        let start = Instant::now();
        let mut logged = 0;
        for i in 0..20_000u64 {
            let at = start + Duration::from_micros(i * 7); // 0.14 s
            if matches!(t.event_at(at), Verdict::Log { .. }) {
                logged += 1;
            }
        }
        assert_eq!(logged, FULL_PER_WINDOW);
        assert_eq!(t.flush_at(start + Duration::from_millis(500)), None);
        let (count, _) = t.flush_at(start + WINDOW).expect("a count");
        assert_eq!(count, 20_000 - u64::from(FULL_PER_WINDOW));
        assert_eq!(t.flush_at(start + WINDOW * 2), None, "counted once");
    }

    #[test]
    fn the_next_logged_event_carries_the_count() {
        let t = Throttle::default();
        let start = Instant::now();
        for _ in 0..(FULL_PER_WINDOW + 3) {
            t.event_at(start);
        }
        assert_eq!(t.event_at(start + WINDOW), Verdict::Log { suppressed: 3 });
    }
}
