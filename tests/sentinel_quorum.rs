//! Promise: one Sentinel does not decide. redward believes a master only when a quorum of
//! Sentinels (`upstream.sentinel.quorum`, default a majority) names it, takes a Sentinel's
//! `+switch-master` or `+promoted-slave` as a reason to ask the quorum again, and lets a
//! failover event hold writes back at most once a minute. A rogue Sentinel (a small listener
//! in the test, listed first) that names a fake master never gets redward to send that
//! master anything, its credential least of all; a well-behaved client keeps being served.

mod common;

use std::time::{Duration, Instant};

use common::fake::{FakeSentinel, FakeServer};
use common::sentinel::{Sentinel, MASTER};
use common::*;

/// A real master watched by two real Sentinels, a rogue Sentinel naming a fake master, and
/// redward asking the rogue first.
struct World {
    master: Redis,
    _sentinels: Vec<Sentinel>,
    fake_master: FakeServer,
    rogue: FakeSentinel,
    proxy: Proxy,
}

async fn world() -> World {
    let master = Redis::start();
    let sentinels: Vec<Sentinel> = (0..2).map(|_| Sentinel::start(master.port)).collect();
    let fake_master = FakeServer::start("127.0.0.1").await;
    let rogue = FakeSentinel::start(fake_master.addr).await;
    let ports = [rogue.port, sentinels[0].port, sentinels[1].port];
    let proxy = proxy().sentinel(MASTER, &ports).start(&master).await;
    // redward follows the rogue's events too (every Sentinel's, as it must).
    rogue.followed().await;
    World {
        master,
        _sentinels: sentinels,
        fake_master,
        rogue,
        proxy,
    }
}

/// One `SET` through redward on a connection of its own: whether it was `+OK`.
async fn set_once(proxy: &Proxy, i: usize) -> bool {
    let mut c = proxy.raw().await;
    let mut script = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
    script.extend(cmd(&["SET", "quorum:k", &i.to_string()]));
    c.send(&script).await;
    c.replies(2).await == b"+OK\r\n+OK\r\n"
}

fn assert_untouched(fake: &FakeServer) {
    let (credential, connections) = fake.saw(UPSTREAM_PASSWORD);
    assert!(!credential, "the fake master got redward's credential");
    assert_eq!(connections, 0, "redward connected to the fake master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_sentinel_neither_names_the_master_nor_moves_redward() {
    let w = world().await;
    let canary = Canary::start(&w.proxy).await;
    // Its switch messages, many times over: a reason to ask the quorum, which says no.
    let fake = w.fake_master.addr;
    let real = w.master.port;
    for _ in 0..10 {
        w.rogue.publish(
            "+switch-master",
            &format!("{MASTER} 127.0.0.1 {real} {} {}", fake.ip(), fake.port()),
        );
        w.rogue.publish(
            "+promoted-slave",
            &format!(
                "slave {fake} {} {} @ {MASTER} 127.0.0.1 {real}",
                fake.ip(),
                fake.port()
            ),
        );
    }
    // Time for redward to ask, and be told no (a wait, not a timing assertion).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..20 {
        assert!(set_once(&w.proxy, i).await, "SET {i} failed");
    }
    canary.finish().await;
    assert_untouched(&w.fake_master);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failover_events_from_one_sentinel_hold_writes_at_most_once() {
    let w = world().await;
    let promoting = format!(
        "slave 127.0.0.1:1 127.0.0.1 1 @ {MASTER} 127.0.0.1 {}",
        w.master.port
    );
    // The first event holds writes back (as a real failover's first step must)...
    w.rogue
        .publish("+failover-state-send-slaveof-noone", &promoting);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while set_once(&w.proxy, i).await {
        assert!(
            Instant::now() < deadline,
            "the first event never held writes"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... for a bounded time, after which the quorum's master is used again.
    while !set_once(&w.proxy, i).await {
        assert!(Instant::now() < deadline, "writes stayed held");
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same event again and again within the minute holds nothing.
    for _ in 0..20 {
        w.rogue
            .publish("+failover-state-send-slaveof-noone", &promoting);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for j in 0..50 {
        assert!(
            set_once(&w.proxy, i + j).await,
            "SET {j} after the repeats failed"
        );
    }
    assert_untouched(&w.fake_master);
}

#[test]
fn a_quorum_outside_one_to_the_number_of_sentinels_is_refused_naming_the_field() {
    let certs = Certs::new();
    for quorum in ["0", "4"] {
        let text = format!(
            "listen:\n  - address: \"127.0.0.1:0\"\n    tls: {{ cert: {}, key: {} }}\n\
             upstream:\n  sentinel: {{ master: m, addresses: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"], quorum: {quorum} }}\n\
             \x20 username: u\n  password: p\nusers:\n  - name: a\n    rules: \"on >x ~* +@all\"\n",
            certs.cert().display(),
            certs.key().display(),
        );
        let path = certs.dir.path().join("q.yaml");
        std::fs::write(&path, text).unwrap();
        let err = redward::config::load(&path)
            .expect_err("accepted")
            .to_string();
        assert!(
            err.contains("upstream.sentinel.quorum") && err.contains(quorum),
            "{err}"
        );
    }
}
