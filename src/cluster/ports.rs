//! The ports of `node_listeners.ports`, handed to nodes as they appear. A port never used is
//! handed out first; a port freed by a node that left (or one that could not be bound) comes
//! back only after a quarantine, so a client still holding an old slot map does not reach
//! another node at once, and only when no never-used port is left. Pure: the caller passes
//! the time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(super) struct Ports {
    /// The next never-used port, and the last of the range.
    next: u32,
    last: u16,
    /// Freed ports and when each may be handed out again, oldest first.
    freed: VecDeque<(Instant, u16)>,
    quarantine: Duration,
}

impl Ports {
    pub(super) fn new((first, last): (u16, u16), quarantine: Duration) -> Self {
        Ports {
            next: u32::from(first),
            last,
            freed: VecDeque::new(),
            quarantine,
        }
    }

    /// The next port to try, if any is free now.
    pub(super) fn take(&mut self, now: Instant) -> Option<u16> {
        if let Some(p) = u16::try_from(self.next).ok().filter(|p| *p <= self.last) {
            self.next += 1;
            return Some(p);
        }
        match self.freed.front() {
            Some((at, p)) if *at <= now => {
                let p = *p;
                self.freed.pop_front();
                Some(p)
            }
            _ => None,
        }
    }

    /// `port` is no longer used: it may be handed out again once the quarantine has passed.
    pub(super) fn release(&mut self, port: u16, now: Instant) {
        self.freed.push_back((now + self.quarantine, port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_port_comes_back_only_after_the_quarantine_and_the_unused_ones() {
        let q = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut ports = Ports::new((7101, 7103), q);
        assert_eq!(ports.take(t0), Some(7101));
        assert_eq!(ports.take(t0), Some(7102));
        ports.release(7101, t0);
        // A never-used port first, even though 7101 is free.
        assert_eq!(ports.take(t0 + q * 2), Some(7103));
        ports.release(7102, t0 + q);
        // Nothing free during the quarantine...
        assert_eq!(ports.take(t0 + q / 2), None);
        // ...then the freed ports, oldest first; none twice.
        assert_eq!(ports.take(t0 + q * 2), Some(7101));
        assert_eq!(ports.take(t0 + q * 2), Some(7102));
        assert_eq!(ports.take(t0 + q * 3), None);
    }

    #[test]
    fn the_range_ends_at_its_last_port_even_at_65535() {
        let mut ports = Ports::new((65535, 65535), Duration::from_secs(1));
        let now = Instant::now();
        assert_eq!(ports.take(now), Some(65535));
        assert_eq!(ports.take(now), None);
    }
}
