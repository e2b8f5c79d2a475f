//! Per-user command rates shared by several redward instances (`limits.shared_state:
//! upstream` with `commands_per_second`): one rate for the user across every instance, kept
//! in the Redis behind them.
//!
//! Counting every command in Redis would add a Redis round trip per command. Instead each
//! instance leases tokens in blocks (a tenth of a second's worth) from a GCRA kept in one
//! key per user (`redward:rate:<user>`, in the hidden state database): one script call per
//! block, in the background, asked for before the instance runs out. A command costs two
//! atomic operations here.
//!
//! - The local limiter (`commands_per_second` per instance) still applies first, so no instance
//!   exceeds the rate alone.
//! - An instance out of tokens while a lease is on its way admits up to two blocks on credit,
//!   which the lease pays back (it asks for the debt plus a block). So the shared rate can be
//!   exceeded by at most two blocks per instance, once, before Redis refuses; and a user idle
//!   for a while is not refused its first commands. A burst within one read of the client's
//!   (one turn) gets what is leased plus the credit, a fifth of a second's worth: stricter
//!   than the local limiter's burst of one second's worth.
//! - Once Redis refuses a lease (the user's shared rate is used up), commands are refused
//!   until a lease succeeds, and leases are asked for again no sooner than Redis says tokens
//!   come back.
//! - Redis unreachable: fail-open for the shared rate (a block is granted locally), fail-safe
//!   for the local one, as for login lockouts (`shared_limits.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::resp::encode_command;
use crate::upstream::Connector;

/// Lease requests waiting for the task; one per user at most is in flight.
const QUEUE: usize = 1024;

/// GCRA over Redis's clock (`TIME`): `KEYS[1]` holds the theoretical arrival time in µs.
/// ARGV: emission interval (µs per token), burst tolerance (µs), tokens asked. Returns
/// `{granted, wait_us}`: as many tokens as fit under the tolerance, and when none do, how
/// long until one does.
const SCRIPT: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) \
    local step, tol, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]) \
    local tat = tonumber(redis.call('GET', KEYS[1]) or now) \
    if tat < now then tat = now end \
    local fit = math.floor((now + tol - tat) / step) \
    if fit <= 0 then return {0, math.ceil(tat + step - now - tol)} end \
    if fit > want then fit = want end \
    tat = tat + fit * step \
    redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000) \
    return {fit, 0}";

/// One user's share of its rate on this instance.
#[derive(Debug)]
pub struct Budget {
    user: String,
    per_second: u32,
    block: i64,
    /// Tokens leased and not spent; negative: spent on credit.
    tokens: AtomicI64,
    /// A lease is asked for and not answered.
    leasing: AtomicBool,
    /// The last lease was refused: no credit until one succeeds.
    refused: AtomicBool,
    /// Not before this (ms since `epoch`) ask again after a refusal.
    retry_at_ms: AtomicU64,
    epoch: Instant,
}

impl Budget {
    fn new(user: &str, per_second: u32) -> Budget {
        Budget {
            user: user.to_owned(),
            per_second,
            block: i64::from((per_second / 10).max(1)),
            tokens: AtomicI64::new(0),
            leasing: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Spends a token for one command, asking for more when running low; `false`: refused.
    pub fn admit(self: &Arc<Self>, rates: &SharedRates) -> bool {
        let left = self.tokens.fetch_sub(1, Ordering::AcqRel) - 1;
        if left < self.block / 2 {
            self.ask(rates);
        }
        if left >= 0 {
            return true;
        }
        if !self.refused.load(Ordering::Acquire) && left >= -2 * self.block {
            return true; // on credit, until the lease comes
        }
        self.tokens.fetch_add(1, Ordering::AcqRel); // not spent after all
        false
    }

    fn ask(self: &Arc<Self>, rates: &SharedRates) {
        if self.refused.load(Ordering::Acquire) {
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            if now < self.retry_at_ms.load(Ordering::Acquire) {
                return;
            }
        }
        if !self.leasing.swap(true, Ordering::AcqRel)
            && rates.tx.try_send(Arc::clone(self)).is_err()
        {
            self.leasing.store(false, Ordering::Release);
        }
    }

    fn granted(&self, n: i64, wait: Duration) {
        if n > 0 {
            self.tokens.fetch_add(n, Ordering::AcqRel);
            self.refused.store(false, Ordering::Release);
        } else {
            let at = self.epoch.elapsed() + wait;
            self.retry_at_ms.store(
                u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
                Ordering::Release,
            );
            self.refused.store(true, Ordering::Release);
        }
        self.leasing.store(false, Ordering::Release);
    }
}

/// The lease task's handle, and every rated user's budget.
#[derive(Debug)]
pub struct SharedRates {
    tx: mpsc::Sender<Arc<Budget>>,
    budgets: HashMap<String, Arc<Budget>>,
}

impl SharedRates {
    /// Budgets for these users' rates, and the lease task (until `stop`).
    pub fn start(
        connector: Connector,
        rates: &HashMap<String, std::num::NonZeroU32>,
        stop: CancellationToken,
    ) -> SharedRates {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(lease(connector, rx, stop));
        let budgets = rates
            .iter()
            .map(|(u, r)| (u.clone(), Arc::new(Budget::new(u, r.get()))))
            .collect();
        SharedRates { tx, budgets }
    }

    /// `user`'s budget, if it has a rate. (A user whose rate a reload adds is rated per
    /// instance until the next start.)
    pub fn budget(&self, user: &str) -> Option<&Arc<Budget>> {
        self.budgets.get(user)
    }
}

/// Leases blocks, one script call each, on a connection of its own.
async fn lease(connector: Connector, mut rx: mpsc::Receiver<Arc<Budget>>, stop: CancellationToken) {
    let mut conn = None;
    let mut buf = BytesMut::new();
    loop {
        let budget = tokio::select! {
            b = rx.recv() => match b { Some(b) => b, None => return },
            () = stop.cancelled() => return,
        };
        let step = 1_000_000 / u64::from(budget.per_second.max(1));
        let mut req = Vec::new();
        let key = format!("redward:rate:{}", budget.user);
        let debt = (-budget.tokens.load(Ordering::Acquire)).max(0);
        let (step, tol, want) = (
            step.to_string(),
            "1000000".to_owned(),
            (debt + budget.block).to_string(),
        );
        encode_command(
            &mut req,
            ["EVAL", SCRIPT, "1", &key, &step, &tol, &want]
                .iter()
                .map(|a| a.as_bytes()),
        );
        let reply = crate::shared_limits::call(&connector, &mut conn, &mut buf, &req).await;
        match reply {
            Some(OwnedFrame::Array(parts)) => {
                let int = |i: usize| match parts.get(i) {
                    Some(OwnedFrame::Integer(n)) => *n,
                    _ => 0,
                };
                let (granted, wait_us) = (int(0), int(1));
                debug!(user = %budget.user, granted, wait_us, "shared command rate lease");
                budget.granted(
                    granted,
                    Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
                );
            }
            other => {
                warn!(user = %budget.user, reply = ?other, "shared command rate: upstream unavailable; rated per instance");
                conn = None;
                budget.granted(budget.block, Duration::ZERO); // fail-open for the shared rate
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(per_second: u32) -> (SharedRates, mpsc::Receiver<Arc<Budget>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let budgets = [("u".to_owned(), Arc::new(Budget::new("u", per_second)))]
            .into_iter()
            .collect();
        (SharedRates { tx, budgets }, rx)
    }

    #[test]
    fn credit_covers_the_wait_for_a_lease_and_no_more() {
        let (rates, mut rx) = rates(100); // blocks of 10
        let b = Arc::clone(rates.budget("u").unwrap());
        // Idle: two blocks on credit, one lease asked for.
        assert!((0..20).all(|_| b.admit(&rates)));
        assert!(!b.admit(&rates));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "one lease in flight at a time");
        // The lease pays the debt and a block.
        b.granted(30, Duration::ZERO);
        assert!((0..10).all(|_| b.admit(&rates)));
    }

    #[test]
    fn a_refused_lease_refuses_commands_until_one_succeeds() {
        let (rates, mut rx) = rates(100);
        let b = Arc::clone(rates.budget("u").unwrap());
        assert!(b.admit(&rates));
        let _ = rx.try_recv();
        b.granted(0, Duration::from_secs(60));
        assert!(!b.admit(&rates), "no credit once Redis refused");
        assert!(rx.try_recv().is_err(), "not asked again before Redis said");
        b.granted(10, Duration::ZERO);
        assert!(b.admit(&rates));
    }
}
