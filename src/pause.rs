//! `CLIENT PAUSE` as redward follows it, so that a pause holds only what Redis holds.
//!
//! Under `CLIENT PAUSE <ms> WRITE` Redis keeps serving reads and holds every client that sends
//! a command flagged `write` or `may-replicate` (`processCommand` in server.c: EVAL, PUBLISH,
//! PFCOUNT among them); under `ALL` it holds everyone. On a shared upstream connection, one
//! client's held write would hold every other client's reads queued behind it, and Redis
//! would count one blocked client where there are many. So while a pause a client of redward's
//! asked for is in force, such a command moves its client to a connection of its own first
//! (`session/dispatch.rs`), where Redis holds it alone, as it would hold that client directly.
//!
//! What redward cannot see: a pause set straight on Redis (an operator, `FAILOVER`, a cluster
//! failover) or through another redward instance. Shared clients' writes then wait behind it,
//! with reads queued after them on the same connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When the pauses in force end (ms since the Unix epoch; 0: none).
#[derive(Debug, Default)]
pub struct Pause {
    write_until_ms: AtomicU64,
    all_until_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Pause {
    /// Redis accepted `CLIENT PAUSE <ms> [WRITE|ALL]`. A pause does not cut an earlier one
    /// short (`pauseActions` keeps the later end of the same purpose).
    pub fn begin(&self, lasts: Duration, write_only: bool) {
        let until = now_ms().saturating_add(u64::try_from(lasts.as_millis()).unwrap_or(u64::MAX));
        let which = if write_only {
            &self.write_until_ms
        } else {
            &self.all_until_ms
        };
        which.fetch_max(until, Ordering::Relaxed);
    }

    /// Redis accepted `CLIENT UNPAUSE`.
    pub fn end(&self) {
        self.write_until_ms.store(0, Ordering::Relaxed);
        self.all_until_ms.store(0, Ordering::Relaxed);
    }

    /// Whether a `WRITE` pause is in force and no `ALL` one: one atomic load, then the clock
    /// only during a pause. (Under `ALL` Redis holds every command, a new connection's set-up
    /// included, so nothing is gained by moving.)
    pub fn writes_held(&self) -> bool {
        let until = self.write_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        let now = now_ms();
        now < until && self.all_until_ms.load(Ordering::Relaxed) <= now
    }
}

/// Whether Redis holds `spec`'s command during a `WRITE` pause: flagged `write`, or
/// `may-replicate` (`is_may_replicate_command` in `processCommand`). `COMMAND INFO` does not
/// show `may-replicate`, so those are named: PUBLISH, SPUBLISH, PFCOUNT, and the scripts that
/// may write (EVAL, EVALSHA, FCALL; `getCommandFlags` makes a script without a `no-writes`
/// shebang a write), as Redis 7.0.15 and Valkey 8.1.8 hold them.
pub fn held_by_write_pause(spec: &crate::commands::CommandSpec) -> bool {
    const MAY_REPLICATE: [&str; 6] = ["eval", "evalsha", "fcall", "publish", "spublish", "pfcount"];
    spec.flags & (crate::commands::FLAG_WRITE | crate::commands::FLAG_MAY_REPLICATE) != 0
        || MAY_REPLICATE.contains(&spec.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_pause_is_in_force_until_it_ends_or_is_lifted() {
        let p = Pause::default();
        assert!(!p.writes_held());
        p.begin(Duration::from_secs(60), true);
        assert!(p.writes_held());
        // A shorter pause does not cut a longer one short.
        p.begin(Duration::from_millis(1), true);
        assert!(p.writes_held());
        // Under ALL, nothing moves.
        p.begin(Duration::from_secs(60), false);
        assert!(!p.writes_held());
        p.end();
        assert!(!p.writes_held());
        p.begin(Duration::ZERO, true);
        assert!(!p.writes_held());
    }

    #[test]
    fn writes_and_may_replicate_commands_are_held() {
        use crate::commands::lookup;
        let held = |n: &str| lookup(n.as_bytes()).is_some_and(held_by_write_pause);
        for name in [
            "set", "eval", "evalsha", "publish", "spublish", "pfcount", "del", "fcall",
        ] {
            assert!(held(name), "{name}");
        }
        for name in [
            "get",
            "eval_ro",
            "evalsha_ro",
            "fcall_ro",
            "mget",
            "ping",
            "select",
        ] {
            assert!(!held(name), "{name}");
        }
    }
}
