//! Promise: several redward instances enforce one login limit (`limits.shared_state:
//! upstream`). Failed logins are counted in the Redis behind them; an address over the limit
//! is locked out on every instance; another address is not; and the keys and channel that
//! counting uses are out of every client's reach, whatever its ACL.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const LIMITS: &str = "limits:\n  shared_state: upstream\n  auth_failures_per_minute: 6\n";

async fn connect_from(proxy: &Proxy, source: &str) -> Raw {
    let addr = SocketAddr::from(([127, 0, 0, 1], proxy.port()));
    Raw::tls_from(addr, &proxy.certs.ca(), Some(source)).await
}

async fn login(proxy: &Proxy, source: &str, password: &str) -> Vec<u8> {
    let mut c = connect_from(proxy, source).await;
    c.send(&cmd(&["AUTH", APP_USER, password])).await;
    c.replies(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_on_two_instances_lock_the_address_out_on_both_and_only_that_address() {
    let redis = Redis::start();
    let a = proxy().yaml(LIMITS).start(&redis).await;
    let b = proxy().yaml(LIMITS).start(&redis).await;
    // Three failures on each: under the limit of 6 for either instance alone.
    for proxy in [&a, &b] {
        for _ in 0..3 {
            assert!(login(proxy, "127.0.0.1", "wrong")
                .await
                .starts_with(b"-WRONGPASS"));
        }
    }
    // Together they reach it: the right password is refused on both (asked until the lockout
    // has travelled through Redis; bounded, no timing asserted).
    let locked = b"-ERR too many failed authentication attempts, try again later\r\n";
    let deadline = Instant::now() + Duration::from_secs(20);
    for proxy in [&a, &b] {
        loop {
            if login(proxy, "127.0.0.1", APP_PASSWORD).await == locked {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "127.0.0.1 was not locked out on both"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Another address logs in on both.
    for proxy in [&a, &b] {
        assert_eq!(login(proxy, "127.0.0.2", APP_PASSWORD).await, b"+OK\r\n");
    }
    // The lockout is in Redis, under redward's reserved names.
    let mut direct = redis.admin();
    let lock: bool = redis::cmd("EXISTS")
        .arg("redward:lock:127.0.0.1")
        .query(&mut direct)
        .expect("EXISTS");
    assert!(lock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_reaches_the_shared_state_whatever_its_acl() {
    let redis = Redis::start();
    let proxy = proxy().yaml(LIMITS).start(&redis).await;
    let mut c = connect_from(&proxy, "127.0.0.2").await;
    // The app user has ~* &* +@all.
    let attempts: [&[&str]; 10] = [
        &["GET", "redward:lock:127.0.0.1"],
        &["SET", "redward:lock:127.0.0.9", "1"],
        &["DEL", "redward:auth:127.0.0.1"],
        &["MSET", "ok", "1", "redward:x", "2"],
        &["PUBLISH", "redward:lockouts", "127.0.0.3"],
        &["SUBSCRIBE", "redward:lockouts"],
        &["PSUBSCRIBE", "*"],
        &["EVAL", "return 1", "1", "redward:x"],
        &[
            "EVAL",
            "return redis.call('GET', 'redward:lock:127.0.0.1')",
            "0",
        ],
        &["SORT", "list", "BY", "redward:auth:*"],
    ];
    let mut script = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
    for a in attempts {
        script.extend(cmd(a));
    }
    // A well-behaved command after them, and a value that merely mentions the prefix.
    script.extend(cmd(&["SET", "note", "redward:is-a-value"]));
    script.extend(cmd(&["GET", "note"]));
    c.send(&script).await;
    let got = String::from_utf8_lossy(&c.replies(1 + attempts.len() + 2).await).into_owned();
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert_eq!(lines[0], "+OK");
    let refusals = lines.iter().filter(|l| l.starts_with("-NOPERM")).count();
    assert_eq!(refusals, attempts.len(), "{got}");
    assert!(
        got.ends_with("+OK\r\n$18\r\nredward:is-a-value\r\n"),
        "{got}"
    );
}
