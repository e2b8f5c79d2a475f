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

/// A direct connection to the database the shared state lives in (Redis's last: 15).
fn state_db(redis: &Redis) -> redis::Connection {
    let mut direct = redis.admin();
    redis::cmd("SELECT")
        .arg(15)
        .query::<()>(&mut direct)
        .expect("SELECT");
    direct
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
    // The lockout is in Redis, under redward's reserved names, in its last database.
    let mut direct = state_db(&redis);
    let lock: bool = redis::cmd("EXISTS")
        .arg("redward:lock:127.0.0.1")
        .query(&mut direct)
        .expect("EXISTS");
    assert!(lock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_reaches_the_shared_state_whatever_its_acl() {
    let redis = Redis::start();
    // `upstream.identity: shared`: scripts are refused outright; under `per_user` they run,
    // confined by Redis (`tests/identity.rs`).
    let proxy = proxy()
        .yaml(LIMITS)
        .upstream_option("identity: shared")
        .start(&redis)
        .await;
    let mut c = connect_from(&proxy, "127.0.0.2").await;
    // The app user has ~* &* +@all.
    let attempts: [&[&str]; 20] = [
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
        // Names built at run time, and databases selected there.
        &["EVAL", "return redis.call('KEYS', 'red' .. 'ward:*')", "0"],
        &[
            "EVAL",
            "redis.call('SELECT', 15) return redis.call('FLUSHDB')",
            "0",
        ],
        &["EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"],
        &["EVAL_RO", "return 1", "0"],
        &["FCALL", "f", "0"],
        // Everything at once, or everything watched.
        &["FLUSHALL"],
        &["MONITOR"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["SYNC"],
        &["DEBUG", "RELOAD"],
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_state_database_does_not_exist_for_clients() {
    let redis = Redis::start();
    let proxy = proxy().yaml(LIMITS).start(&redis).await;
    // A lockout in the state database, so there is something to find.
    for _ in 0..6 {
        login(&proxy, "127.0.0.1", "wrong").await;
    }
    let mut c = connect_from(&proxy, "127.0.0.2").await;
    let mut script = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
    let hidden: [&[&str]; 6] = [
        &["SELECT", "15"],
        &["SWAPDB", "0", "15"],
        &["SWAPDB", "15", "1"],
        &["MOVE", "note", "15"],
        &["COPY", "note", "copy", "DB", "15"],
        &["COPY", "note", "copy", "REPLACE", "DB", "15"],
    ];
    for a in hidden {
        script.extend(cmd(a));
    }
    // What Redis itself says first stays Redis's; the other databases work as before.
    for a in [
        &["SWAPDB", "x", "15"][..],
        &["COPY", "note", "copy", "DB", "15", "BOGUS"],
        &["SET", "note", "1"],
        &["COPY", "note", "copy", "DB", "14"],
        &["SELECT", "14"],
        &["GET", "copy"],
        &["SELECT", "0"],
        &["KEYS", "*"],
        &["DBSIZE"],
    ] {
        script.extend(cmd(a));
    }
    c.send(&script).await;
    let got = String::from_utf8_lossy(&c.replies(1 + hidden.len() + 9).await).into_owned();
    let out_of_range = "-ERR DB index is out of range\r\n".repeat(hidden.len());
    // SWAPDB moves whole databases, so the upstream user may not run it at all while the
    // state is shared (`upstream/confine.rs`): Redis's own NOPERM, before its syntax check.
    assert_eq!(
        got,
        format!(
            "+OK\r\n{out_of_range}-NOPERM this user has no permissions to run the 'swapdb' command\r\n-ERR syntax error\r\n\
             +OK\r\n:1\r\n+OK\r\n$1\r\n1\r\n+OK\r\n*1\r\n$4\r\nnote\r\n:1\r\n"
        )
    );
    // The lockout is there all the same, where no client looked.
    let mut direct = state_db(&redis);
    // (Counted in the background: asked until it is there; bounded, no timing asserted.)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut direct)
            .expect("KEYS");
        if keys.iter().any(|k| k.starts_with("redward:")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no state in database 15: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_shared_state_database_redis_lacks_refuses_to_start_naming_the_field() {
    let redis = Redis::start();
    let certs = Certs::new();
    let text = proxy()
        .yaml("limits:\n  shared_state: upstream\n  shared_state_database: 16\n")
        .config_text(&redis, &certs);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("redward.yaml");
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redward"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("limits.shared_state_database") && last.contains("0 to 15"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_command_rate_holds_across_instances() {
    let redis = Redis::start();
    let rule = "  - name: slow\n    rules: \"on >slowpw ~* &* +@all\"\n";
    let rated = format!("{rule}    commands_per_second: 40\n");
    let mut addrs = Vec::new();
    let mut certs_kept = Vec::new();
    for _ in 0..2 {
        let certs = Certs::new();
        let text = proxy()
            .user("slow", "on >slowpw ~* &* +@all")
            .yaml("limits:\n  shared_state: upstream\n")
            .config_text(&redis, &certs)
            .replace(rule, &rated);
        addrs.push(serve_config_text(&certs, &text).await);
        certs_kept.push(certs);
    }
    let mut clients = Vec::new();
    for (addr, certs) in addrs.iter().zip(&certs_kept) {
        let mut c = Raw::tls(*addr, &certs.ca()).await;
        c.send(&cmd(&["AUTH", "slow", "slowpw"])).await;
        assert_eq!(c.replies(1).await, b"+OK\r\n".to_vec());
        clients.push(c);
    }
    // One PING at a time, alternating between the instances: each would allow 40 a second
    // alone (80 together); shared, the two together get 40 a second.
    let start = Instant::now();
    let mut admitted = [0u32; 2];
    for i in 0..240 {
        let c = &mut clients[i % 2];
        c.send(&cmd(&["PING"])).await;
        if c.replies(1).await == b"+PONG\r\n" {
            admitted[i % 2] += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = f64::from(admitted[0] + admitted[1]);
    // The shared rate's bound: a second's burst, the rate over the time taken, and at most two
    // blocks (4 tokens each) on credit per instance. (No timing is asserted: a slower run
    // only loosens the bound.)
    let bound = 40.0 * (1.0 + elapsed) + 16.0;
    eprintln!(
        "shared command rate: admitted {admitted:?} of 240 in {elapsed:.2} s (bound {bound:.0})"
    );
    assert!(
        total <= bound,
        "admitted {admitted:?} in {elapsed:.2} s, over {bound:.0}"
    );
    assert!(
        total >= 30.0,
        "the shared rate starved the user: {admitted:?}"
    );
    assert!(admitted.iter().all(|n| *n > 0), "{admitted:?}");
    // The rate lives in Redis, in the hidden state database.
    let mut direct = state_db(&redis);
    let exists: bool = redis::cmd("EXISTS")
        .arg("redward:rate:slow")
        .query(&mut direct)
        .expect("EXISTS");
    assert!(exists);
}
