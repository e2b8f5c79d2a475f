//! The bound on what all clients together make redward buffer: `limits.max_client_memory`,
//! redward's `maxmemory-clients`.
//!
//! Each client's buffers are bounded one by one (read buffer, pipeline, replies, shared
//! inbox), but their sum is not: a few dozen clients that each leave tens of MiB of replies
//! unread take the process to gigabytes. As in Redis (`evictClients` in `networking.c`, fed
//! by `updateClientMemUsageAndBucket`), every client reports the bytes it holds; when the
//! total passes the limit, the client holding the most is disconnected, and the next, until
//! the total is back under it. Well-behaved clients hold a few KiB and are never chosen
//! while a hog exists.
//!
//! Reporting is cheap on the hot path: a session reports its own buffers once per turn of
//! its loop, rounded to 4 KiB, so an unchanged client costs one comparison; the shared
//! connection's task reports what it puts in a client's inbox as it delivers it (a client
//! that never reads never wakes up to report).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tracing::debug;

/// Own-buffer reports are rounded up to this, so small changes cost nothing.
const GRAIN: usize = 4096;
/// A client holding this much or less is never evicted: it is what an ordinary client holds
/// (a read buffer, a pipeline's replies), and evicting it frees next to nothing.
const NEVER_EVICT_BELOW: usize = 64 * 1024;

/// All clients' memory, and the registry eviction picks from.
#[derive(Debug)]
pub struct ClientMemory {
    /// `limits.max_client_memory`; 0 = no bound. Reloadable.
    limit: AtomicUsize,
    /// The sum of every client's bytes (also the `redward_client_memory_bytes` metric).
    total: Gauge,
    /// Bytes of clients already told to go: not counted again when choosing the next.
    leaving: AtomicUsize,
    clients: Mutex<HashMap<u64, Arc<Usage>>>,
    next_id: AtomicU64,
    evicted: Counter,
    /// Evictions are caused by clients: a few log lines per burst, then a count.
    pub log_lines: crate::throttle::Throttle,
    /// What redward keeps about clients rather than for them (the ACL LOG and audit queue:
    /// `audit.rs`), counted in the total but never evicted: it only makes room shrink.
    overhead: AtomicUsize,
}

/// One client's bytes, and the signal that tells it to go.
#[derive(Debug, Default)]
pub struct Usage {
    bytes: AtomicUsize,
    evicted: AtomicBool,
    /// What this client added to [`ClientMemory::leaving`] when it was chosen.
    leaving: AtomicUsize,
    notify: Notify,
}

impl Usage {
    /// Whether this client was chosen for eviction.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Resolves once this client is chosen for eviction.
    pub async fn evicted(&self) {
        while !self.is_evicted() {
            self.notify.notified().await;
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl ClientMemory {
    pub fn new(limit: usize, total: Gauge, evicted: Counter) -> Self {
        ClientMemory {
            limit: AtomicUsize::new(limit),
            total,
            leaving: AtomicUsize::new(0),
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            evicted,
            log_lines: crate::throttle::Throttle::default(),
            overhead: AtomicUsize::new(0),
        }
    }

    /// Sets the bytes kept about clients (see `overhead`); past the limit, the clients
    /// holding the most are evicted as for any other growth.
    pub fn set_overhead(&self, bytes: usize) {
        let old = self.overhead.swap(bytes, Ordering::Relaxed);
        if bytes > old {
            let n = bytes - old;
            let before = self.total.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
            let now = usize::try_from(before).unwrap_or(0).saturating_add(n);
            let limit = self.limit.load(Ordering::Relaxed);
            if limit != 0 && now.saturating_sub(self.leaving.load(Ordering::Relaxed)) > limit {
                self.evict(limit);
            }
        } else if old > bytes {
            self.total
                .dec_by(i64::try_from(old - bytes).unwrap_or(i64::MAX));
        }
    }

    /// A new limit (reload); enforced at the next report.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> usize {
        usize::try_from(self.total.get()).unwrap_or(0)
    }

    /// Registers a client; its bytes leave the total when the returned account drops.
    pub fn register(self: &Arc<Self>) -> Account {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let usage = Arc::new(Usage::default());
        lock(&self.clients).insert(id, Arc::clone(&usage));
        Account {
            memory: Arc::clone(self),
            usage,
            id,
            own: 0,
        }
    }

    /// Adds `n` bytes to `usage` (and the total); evicts if that crosses the limit.
    pub fn add(&self, usage: &Usage, n: usize) {
        if n == 0 {
            return;
        }
        usage.bytes.fetch_add(n, Ordering::Relaxed);
        let before = self.total.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        let now = usize::try_from(before).unwrap_or(0).saturating_add(n);
        let limit = self.limit.load(Ordering::Relaxed);
        if limit != 0 && now.saturating_sub(self.leaving.load(Ordering::Relaxed)) > limit {
            self.evict(limit);
        }
    }

    /// Takes `n` bytes off `usage` (and the total).
    pub fn sub(&self, usage: &Usage, n: usize) {
        if n == 0 {
            return;
        }
        usage.bytes.fetch_sub(n, Ordering::Relaxed);
        self.total.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Chooses the clients holding the most, until what stays is under `limit`.
    fn evict(&self, limit: usize) {
        let clients = lock(&self.clients);
        loop {
            let staying = self
                .total()
                .saturating_sub(self.leaving.load(Ordering::Relaxed));
            if staying <= limit {
                return;
            }
            let Some(victim) = clients
                .values()
                .filter(|u| !u.is_evicted())
                .max_by_key(|u| u.bytes())
            else {
                return;
            };
            let bytes = victim.bytes();
            if bytes <= NEVER_EVICT_BELOW {
                // Only ordinary clients are left: disconnecting them would free little and
                // hurt the well-behaved. The bound is then up to the per-client caps.
                return;
            }
            victim.evicted.store(true, Ordering::Release);
            victim.leaving.store(bytes, Ordering::Relaxed);
            victim.notify.notify_one();
            self.leaving.fetch_add(bytes, Ordering::Relaxed);
            self.evicted.inc();
            debug!(
                client_bytes = bytes,
                total = staying,
                limit,
                "client memory over limits.max_client_memory; disconnecting the client holding the most"
            );
        }
    }
}

/// A client's registration: reports its own buffers, and leaves the registry (with its bytes)
/// when dropped.
#[derive(Debug)]
pub struct Account {
    memory: Arc<ClientMemory>,
    usage: Arc<Usage>,
    id: u64,
    /// The session's own buffers as last reported (rounded to [`GRAIN`]).
    own: usize,
}

impl Account {
    /// Reports the bytes the session's own buffers hold now.
    pub fn report(&mut self, bytes: usize) {
        let rounded = bytes.div_ceil(GRAIN) * GRAIN;
        if rounded == self.own {
            return;
        }
        if rounded > self.own {
            self.memory.add(&self.usage, rounded - self.own);
        } else {
            self.memory.sub(&self.usage, self.own - rounded);
        }
        self.own = rounded;
    }

    /// The handle others (the shared connection's inbox) report this client's bytes through.
    pub fn charge(&self) -> Charge {
        Charge {
            memory: Arc::clone(&self.memory),
            usage: Arc::clone(&self.usage),
        }
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// A handle on this client's usage that does not borrow the account (for a future that
    /// waits for eviction while the account keeps reporting).
    pub fn usage_handle(&self) -> Arc<Usage> {
        Arc::clone(&self.usage)
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let mut clients = lock(&self.memory.clients);
        clients.remove(&self.id);
        drop(clients);
        // The session's own buffers go now; an inbox that outlives the session for a moment
        // takes its bytes off when it drops (through its `Charge`).
        let own = std::mem::take(&mut self.own);
        self.memory.sub(&self.usage, own);
        let leaving = self.usage.leaving.swap(0, Ordering::Relaxed);
        let _ = self
            .memory
            .leaving
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                Some(l.saturating_sub(leaving))
            });
    }
}

/// Lets a buffer outside the session (a shared connection's inbox) count toward its client.
#[derive(Debug, Clone)]
pub struct Charge {
    memory: Arc<ClientMemory>,
    usage: Arc<Usage>,
}

impl Charge {
    /// Whether the client was chosen for eviction (its buffers should stop growing).
    pub fn is_evicted(&self) -> bool {
        self.usage.is_evicted()
    }

    pub fn add(&self, n: usize) {
        self.memory.add(&self.usage, n);
    }

    pub fn sub(&self, n: usize) {
        self.memory.sub(&self.usage, n);
    }
}

/// A poisoned lock only means another thread panicked mid-update of a map; carry on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(limit: usize) -> Arc<ClientMemory> {
        Arc::new(ClientMemory::new(
            limit,
            Gauge::default(),
            Counter::default(),
        ))
    }

    #[test]
    fn the_client_holding_the_most_is_evicted_and_small_ones_are_not() {
        let m = memory(1 << 20);
        let mut small: Vec<Account> = (0..10).map(|_| m.register()).collect();
        for a in &mut small {
            a.report(8 * 1024);
        }
        let mut hog = m.register();
        let mut mid = m.register();
        mid.report(300 * 1024);
        hog.report(600 * 1024);
        assert!(!hog.usage().is_evicted(), "under the limit");
        let inbox = hog.charge();
        inbox.add(200 * 1024);
        assert!(hog.usage().is_evicted());
        assert!(!mid.usage().is_evicted());
        assert!(small.iter().all(|a| !a.usage().is_evicted()));
        assert_eq!(m.evicted.get(), 1);
        // The hog leaves: its bytes go, and nobody else is chosen.
        inbox.sub(200 * 1024);
        drop(hog);
        assert_eq!(m.total(), 10 * 8 * 1024 + 300 * 1024);
        assert_eq!(m.leaving.load(Ordering::Relaxed), 0);
        mid.report(400 * 1024);
        assert!(!mid.usage().is_evicted());
    }

    #[test]
    fn reports_round_to_the_grain_and_zero_means_unbounded() {
        let m = memory(0);
        let mut a = m.register();
        a.report(1);
        assert_eq!(m.total(), GRAIN);
        a.report(GRAIN);
        assert_eq!(m.total(), GRAIN);
        a.report(1 << 30);
        assert!(!a.usage().is_evicted());
        drop(a);
        assert_eq!(m.total(), 0);
    }
}
