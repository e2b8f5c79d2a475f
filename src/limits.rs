//! Abuse limits checked where they are cheap: connection caps and per-address connection rate
//! at accept (before any TLS work), failed logins per address (brute-force lockout), and
//! per-user command rates. Built on governor (GCRA), generic over its clock so tests can use a
//! fake one.
//!
//! Lockout is per source address, never per account: an attacker guessing `app`'s password
//! from one address cannot lock `app` out for everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("address not allowed on this listener")]
    NotAllowed,
    #[error("max_connections reached")]
    TooManyConnections,
    #[error("max_connections_per_ip reached")]
    TooManyFromAddress,
    #[error("connections_per_second_per_ip exceeded")]
    RateExceeded,
    #[error("peer may not send a PROXY header (not in proxy_protocol.trusted)")]
    UntrustedProxy,
    #[error("no valid PROXY header in time")]
    ProxyHeader,
}

impl Refused {
    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refused::NotAllowed => "not_allowed",
            Refused::TooManyConnections => "max_connections",
            Refused::TooManyFromAddress => "max_connections_per_ip",
            Refused::RateExceeded => "connection_rate",
            Refused::UntrustedProxy => "untrusted_proxy",
            Refused::ProxyHeader => "proxy_header",
        }
    }
}

/// Limit settings (from `limits:` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub connections_per_second_per_ip: Option<NonZeroU32>,
    pub auth_failures_per_minute: Option<NonZeroU32>,
    pub auth_lockout: Duration,
}

/// The most addresses locked out at once (a few MiB at most). Reaching it takes that many
/// addresses each failing the login quota, or as many lockouts reported by other instances.
pub const MAX_LOCKOUTS: usize = 65_536;

/// Per-address rate state kept before it is pruned at once rather than at the next minute's
/// housekeeping: many source addresses (an IPv6 prefix) within a minute cannot grow it further.
const MAX_RATE_KEYS: usize = 65_536;

/// Prunes `rate` when it holds more than [`MAX_RATE_KEYS`] addresses: an address whose bucket
/// is full again is indistinguishable from one never seen, so dropping it changes nothing.
fn bound_keys<C: Clock + Clone>(rate: &KeyedLimiter<C>) {
    if rate.len() > MAX_RATE_KEYS {
        rate.retain_recent();
    }
}

type KeyedLimiter<C> =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Process-wide limits. Settings are replaced whole by a reload ([`Limiter::update`]): caps
/// apply to the next connection, a changed rate starts from a fresh bucket, and lockouts in
/// force stay in force.
pub struct Limiter<C: Clock + Clone = DefaultClock> {
    settings: ArcSwap<LimitSettings>,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    conn_rate: ArcSwapOption<KeyedLimiter<C>>,
    auth_rate: ArcSwapOption<KeyedLimiter<C>>,
    lockouts: Mutex<HashMap<IpAddr, C::Instant>>,
    clock: C,
}

impl<C: Clock + Clone> std::fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("settings", &self.settings.load())
            .finish_non_exhaustive()
    }
}

fn keyed<C: Clock + Clone>(
    rate: Option<NonZeroU32>,
    per_minute: bool,
    clock: &C,
) -> Option<Arc<KeyedLimiter<C>>> {
    rate.map(|r| {
        let quota = if per_minute {
            Quota::per_minute(r)
        } else {
            Quota::per_second(r)
        };
        Arc::new(RateLimiter::dashmap_with_clock(quota, clock.clone()))
    })
}

impl Limiter<DefaultClock> {
    pub fn new(settings: LimitSettings) -> Self {
        Limiter::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    pub fn with_clock(settings: LimitSettings, clock: C) -> Self {
        Limiter {
            settings: ArcSwap::from_pointee(settings),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            conn_rate: ArcSwapOption::new(keyed(
                settings.connections_per_second_per_ip,
                false,
                &clock,
            )),
            auth_rate: ArcSwapOption::new(keyed(settings.auth_failures_per_minute, true, &clock)),
            lockouts: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Applies reloaded settings (see the type's doc).
    pub fn update(&self, new: LimitSettings) {
        let old = **self.settings.load();
        if old == new {
            return;
        }
        if old.connections_per_second_per_ip != new.connections_per_second_per_ip {
            self.conn_rate
                .store(keyed(new.connections_per_second_per_ip, false, &self.clock));
        }
        if old.auth_failures_per_minute != new.auth_failures_per_minute {
            self.auth_rate
                .store(keyed(new.auth_failures_per_minute, true, &self.clock));
        }
        self.settings.store(Arc::new(new));
    }

    /// The settings in force.
    pub fn settings(&self) -> LimitSettings {
        **self.settings.load()
    }

    /// Admits a new connection from `ip` (global cap, then that address's rate and cap) or
    /// says why not. The guard releases the counts when the connection ends.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard<C>, Refused> {
        let mut guard = self.admit_any()?;
        guard.admit_address(ip)?;
        Ok(guard)
    }

    /// Admits a connection under the global cap only: for a load balancer's connection,
    /// whose client is known once its PROXY header is read ([`ConnGuard::admit_address`]).
    pub fn admit_any(self: &Arc<Self>) -> Result<ConnGuard<C>, Refused> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.settings.load().max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::TooManyConnections);
        }
        Ok(ConnGuard {
            limiter: Arc::clone(self),
            counted: [None; 2],
        })
    }

    /// Counts one more connection from `ip` against its rate and cap.
    fn admit_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if let Some(rate) = &*self.conn_rate.load() {
            bound_keys(rate);
            if rate.check_key(&ip).is_err() {
                return Err(Refused::RateExceeded);
            }
        }
        let cap = self.settings.load().max_connections_per_ip;
        let Ok(mut per_ip) = self.per_ip.lock() else {
            return Err(Refused::TooManyConnections);
        };
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return Err(Refused::TooManyFromAddress);
        }
        *n += 1;
        Ok(())
    }

    /// Whether logins from `ip` are refused right now (without checking any password).
    pub fn auth_locked(&self, ip: IpAddr) -> bool {
        let now = self.clock.now();
        let Ok(mut lockouts) = self.lockouts.lock() else {
            return true;
        };
        match lockouts.get(&ip) {
            Some(until) if *until > now => true,
            Some(_) => {
                lockouts.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Locks `ip` out for `auth_lockout` because the shared count says so (several redward
    /// instances together saw too many failures: `shared_limits.rs`).
    pub fn lock(&self, ip: IpAddr) {
        let until = self.clock.now() + self.settings.load().auth_lockout.into();
        if let Ok(mut lockouts) = self.lockouts.lock() {
            self.insert_lockout(&mut lockouts, ip, until);
        }
    }

    /// Records a lockout, keeping the map within [`MAX_LOCKOUTS`]: expired entries go first;
    /// if every one is still in force, the one that ends soonest makes room. A flood of
    /// lockouts (over IPv6, one address each) costs a bounded map, never unbounded memory.
    fn insert_lockout(
        &self,
        lockouts: &mut HashMap<IpAddr, C::Instant>,
        ip: IpAddr,
        until: C::Instant,
    ) {
        if lockouts.len() >= MAX_LOCKOUTS && !lockouts.contains_key(&ip) {
            let now = self.clock.now();
            lockouts.retain(|_, t| *t > now);
            if lockouts.len() >= MAX_LOCKOUTS {
                let soonest = lockouts.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k);
                if let Some(k) = soonest {
                    lockouts.remove(&k);
                }
            }
        }
        lockouts.insert(ip, until);
    }

    /// The failed logins per minute and the lockout period in force.
    pub fn auth_policy(&self) -> (Option<std::num::NonZeroU32>, std::time::Duration) {
        let s = self.settings.load();
        (s.auth_failures_per_minute, s.auth_lockout)
    }

    /// Counts a failed login from `ip`; past the quota the address is locked out for
    /// `auth_lockout`. Returns whether it is now locked.
    pub fn auth_failed(&self, ip: IpAddr) -> bool {
        let Some(rate) = &*self.auth_rate.load() else {
            return false;
        };
        bound_keys(rate);
        if rate.check_key(&ip).is_ok() {
            return false;
        }
        let until = self.clock.now() + self.settings.load().auth_lockout.into();
        if let Ok(mut lockouts) = self.lockouts.lock() {
            self.insert_lockout(&mut lockouts, ip, until);
        }
        true
    }

    /// Drops rate-limiter state for addresses that have been quiet (call periodically).
    pub fn housekeeping(&self) {
        if let Some(r) = &*self.conn_rate.load() {
            r.retain_recent();
        }
        if let Some(r) = &*self.auth_rate.load() {
            r.retain_recent();
        }
        let now = self.clock.now();
        if let Ok(mut l) = self.lockouts.lock() {
            l.retain(|_, t| *t > now);
        }
    }

    fn release_global(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    fn release_ip(&self, ip: IpAddr) {
        if let Ok(mut per_ip) = self.per_ip.lock() {
            if let Some(n) = per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Proof that a connection was admitted; releases its slots on drop.
pub struct ConnGuard<C: Clock + Clone = DefaultClock> {
    limiter: Arc<Limiter<C>>,
    /// The addresses counted against the per-address cap: the TCP peer, and the client a
    /// PROXY header named (when the peer may be anyone, both count).
    counted: [Option<IpAddr>; 2],
}

impl<C: Clock + Clone> ConnGuard<C> {
    /// Counts this connection against `ip`'s rate and cap (the TCP peer, or the address a
    /// PROXY header named). An address already counted for it is not counted again.
    pub fn admit_address(&mut self, ip: IpAddr) -> Result<(), Refused> {
        if self.counted.contains(&Some(ip)) {
            return Ok(());
        }
        let Some(slot) = self.counted.iter_mut().find(|s| s.is_none()) else {
            return Ok(());
        };
        self.limiter.admit_ip(ip)?;
        *slot = Some(ip);
        Ok(())
    }
}

impl<C: Clock + Clone> Drop for ConnGuard<C> {
    fn drop(&mut self) {
        self.limiter.release_global();
        for ip in self.counted.iter().flatten() {
            self.limiter.release_ip(*ip);
        }
    }
}

/// A user's command rate (`commands_per_second`).
pub type CommandRate = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

pub fn command_rate(per_second: NonZeroU32) -> CommandRate {
    RateLimiter::direct(Quota::per_second(per_second))
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn settings() -> LimitSettings {
        LimitSettings {
            max_connections: 3,
            max_connections_per_ip: 2,
            connections_per_second_per_ip: NonZeroU32::new(100),
            auth_failures_per_minute: NonZeroU32::new(3),
            auth_lockout: Duration::from_secs(300),
        }
    }

    #[test]
    fn connection_caps_are_global_and_per_address_and_released_on_drop() {
        let l = Arc::new(Limiter::with_clock(
            settings(),
            FakeRelativeClock::default(),
        ));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = l.admit(a).unwrap();
        let _g2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err(), Some(Refused::TooManyFromAddress));
        let _g3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).err(), Some(Refused::TooManyConnections));
        drop(g1);
        assert!(l.admit(b).is_ok());
    }

    #[test]
    fn per_address_rate_state_is_pruned_past_its_bound() {
        let clock = FakeRelativeClock::default();
        let s = LimitSettings {
            max_connections: usize::MAX,
            max_connections_per_ip: usize::MAX,
            ..settings()
        };
        let l = Arc::new(Limiter::with_clock(s, clock.clone()));
        let addr = |i: u128| IpAddr::V6(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | i));
        let mut guards = Vec::new();
        for i in 0..=MAX_RATE_KEYS as u128 {
            guards.push(l.admit(addr(i)).unwrap());
        }
        drop(guards);
        let rate = l.conn_rate.load_full().unwrap();
        assert_eq!(rate.len(), MAX_RATE_KEYS + 1);
        // Their buckets are full again a second later: the next new address prunes them all.
        clock.advance(Duration::from_secs(2));
        drop(l.admit(addr(u128::MAX)).unwrap());
        assert!(rate.len() <= 1, "{}", rate.len());
    }

    #[test]
    fn the_lockout_map_is_bounded_however_many_addresses_are_reported() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(settings(), clock.clone());
        let first: IpAddr = "2001:db8::".parse().unwrap();
        l.lock(first);
        clock.advance(Duration::from_secs(1));
        for i in 1..(MAX_LOCKOUTS as u128 + 1000) {
            l.lock(IpAddr::V6(std::net::Ipv6Addr::from(
                0x2001_0db8_u128 << 96 | i,
            )));
        }
        assert_eq!(l.lockouts.lock().unwrap().len(), MAX_LOCKOUTS);
        // The one that ended soonest made room; the newest are in force.
        assert!(!l.auth_locked(first));
        assert!(l.auth_locked(IpAddr::V6(std::net::Ipv6Addr::from(
            0x2001_0db8_u128 << 96 | (MAX_LOCKOUTS as u128 + 999)
        ))));
    }

    #[test]
    fn failed_logins_lock_out_one_address_for_the_lockout_period() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(settings(), clock.clone());
        let bad: IpAddr = "10.0.0.1".parse().unwrap();
        let good: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!l.auth_failed(bad));
        }
        assert!(l.auth_failed(bad));
        assert!(l.auth_locked(bad));
        assert!(!l.auth_locked(good));
        clock.advance(Duration::from_secs(299));
        assert!(l.auth_locked(bad));
        clock.advance(Duration::from_secs(2));
        assert!(!l.auth_locked(bad));
    }

    #[test]
    fn a_balancer_connection_takes_a_global_slot_then_its_client_address_is_counted() {
        let l = Arc::new(Limiter::with_clock(
            settings(),
            FakeRelativeClock::default(),
        ));
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let mut a = l.admit_any().unwrap();
        let mut b = l.admit_any().unwrap();
        let mut c = l.admit_any().unwrap();
        assert_eq!(l.admit_any().err(), Some(Refused::TooManyConnections));
        a.admit_address(client).unwrap();
        b.admit_address(client).unwrap();
        assert_eq!(
            c.admit_address(client).err(),
            Some(Refused::TooManyFromAddress)
        );
        drop(c);
        drop(a);
        assert!(l.admit(client).is_ok(), "slots come back on drop");
    }

    #[test]
    fn from_any_peer_both_the_peer_and_the_carried_address_are_counted() {
        let mut s = settings();
        s.max_connections = 100;
        let l = Arc::new(Limiter::with_clock(s, FakeRelativeClock::default()));
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let mut a = l.admit(peer).unwrap();
        a.admit_address("203.0.113.1".parse().unwrap()).unwrap();
        let mut b = l.admit(peer).unwrap();
        b.admit_address(peer).unwrap(); // a LOCAL header names the peer: counted once
        assert_eq!(l.admit(peer).err(), Some(Refused::TooManyFromAddress));
        drop(a);
        let mut c = l.admit(peer).unwrap();
        assert!(c.admit_address("203.0.113.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn reloaded_caps_apply_to_the_next_connection_and_lockouts_stay() {
        let l = Arc::new(Limiter::with_clock(
            settings(),
            FakeRelativeClock::default(),
        ));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..4 {
            l.auth_failed(a);
        }
        assert!(l.auth_locked(a));
        let _g = l.admit(a).unwrap();
        let mut s = settings();
        s.max_connections_per_ip = 1;
        s.auth_failures_per_minute = NonZeroU32::new(100);
        l.update(s);
        assert_eq!(l.admit(a).err(), Some(Refused::TooManyFromAddress));
        assert!(l.auth_locked(a), "a lockout in force stays in force");
        assert_eq!(l.settings(), s);
    }

    #[test]
    fn connection_rate_is_per_address() {
        let mut s = settings();
        s.max_connections = 1000;
        s.max_connections_per_ip = 1000;
        s.connections_per_second_per_ip = NonZeroU32::new(5);
        let clock = FakeRelativeClock::default();
        let l = Arc::new(Limiter::with_clock(s, clock.clone()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut guards = Vec::new();
        for _ in 0..5 {
            guards.push(l.admit(a).unwrap());
        }
        assert_eq!(l.admit(a).err(), Some(Refused::RateExceeded));
        assert!(l.admit("10.0.0.9".parse().unwrap()).is_ok());
        clock.advance(Duration::from_secs(1));
        assert!(l.admit(a).is_ok());
    }
}
