//! Log lines that an attacker can cause, kept to a handful per burst: the first events of a
//! burst are logged in full, the rest are only counted, and the count is logged as one line
//! every 10 s while the burst goes on and once it stops ([`Throttle::flush`], called every
//! second). A burst of 20,000 denials is a handful of lines, a ten-minute flood about 65, and
//! nothing goes uncounted.
//!
//! Used for failed logins and ACL denials (`audit.rs`), refused connections and TLS
//! failures (`listener.rs`). Metrics, `ACL LOG` and the audit file still see every event.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Events logged in full at the start of a burst.
const FULL_PER_BURST: u32 = 5;
/// A quiet gap this long ends a burst: the next event starts a new one (logged in full).
const QUIET: Duration = Duration::from_secs(10);
/// While a burst goes on, its count is logged this often...
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// ...and once it pauses this long.
const PAUSE: Duration = Duration::from_secs(1);

/// What an event may do with the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it in full; `suppressed` events were counted (not logged) before it.
    Log { suppressed: u64 },
    /// Only counted: a later line reports it.
    Count,
}

#[derive(Debug, Default)]
pub struct Throttle {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_event: Option<Instant>,
    full_in_burst: u32,
    suppressed: u64,
    /// When the first event of the pending count happened.
    since: Option<Instant>,
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
            .last_event
            .is_none_or(|t| now.saturating_duration_since(t) >= QUIET)
        {
            st.full_in_burst = 0;
        }
        st.last_event = Some(now);
        if st.full_in_burst < FULL_PER_BURST {
            st.full_in_burst += 1;
            st.since = None;
            return Verdict::Log {
                suppressed: std::mem::take(&mut st.suppressed),
            };
        }
        st.suppressed += 1;
        st.since.get_or_insert(now);
        Verdict::Count
    }

    /// Takes the count of events not logged since the last line, when it is due (every
    /// `SUMMARY_EVERY` during a burst, or once the burst pauses): `(count, over how long)`.
    pub fn flush(&self) -> Option<(u64, Duration)> {
        self.flush_at(Instant::now())
    }

    fn flush_at(&self, now: Instant) -> Option<(u64, Duration)> {
        let mut st = self.state.lock().ok()?;
        let since = st.since?;
        let paused = st
            .last_event
            .is_none_or(|t| now.saturating_duration_since(t) >= PAUSE);
        if st.suppressed == 0 || !(paused || now.saturating_duration_since(since) >= SUMMARY_EVERY)
        {
            return None;
        }
        st.since = None;
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
        assert_eq!(logged, FULL_PER_BURST);
        assert_eq!(t.flush_at(start + Duration::from_millis(500)), None);
        let (count, _) = t.flush_at(start + Duration::from_secs(2)).expect("a count");
        assert_eq!(count, 20_000 - u64::from(FULL_PER_BURST));
        assert_eq!(
            t.flush_at(start + Duration::from_secs(3)),
            None,
            "counted once"
        );
    }

    #[test]
    fn a_ten_minute_flood_is_a_line_per_ten_seconds() {
        let t = Throttle::default();
        let start = Instant::now();
        let mut lines = 0;
        for ms in (0..600_000u64).step_by(10) {
            let at = start + Duration::from_millis(ms);
            if matches!(t.event_at(at), Verdict::Log { .. }) {
                lines += 1;
            }
            if ms % 1000 == 0 && t.flush_at(at).is_some() {
                lines += 1;
            }
        }
        assert!(lines <= 70, "{lines} lines");
    }

    #[test]
    fn after_a_quiet_gap_events_are_logged_in_full_again() {
        let t = Throttle::default();
        let start = Instant::now();
        for _ in 0..(FULL_PER_BURST + 3) {
            t.event_at(start);
        }
        assert!(t.flush_at(start + PAUSE).is_some());
        assert_eq!(t.event_at(start + QUIET), Verdict::Log { suppressed: 0 });
    }
}
