//! Promise: redward follows the master Sentinel names. With a master, a replica and three real
//! Sentinels (`redis-server --sentinel`) on loopback, a `SENTINEL FAILOVER` while a client
//! writes through redward moves every later write to the promoted replica; the client sees a
//! few retryable errors, never a `-READONLY`, and no acknowledged write is lost, also when the
//! old master comes back empty and calls itself master (split brain).

mod common;

use std::time::{Duration, Instant};

use common::sentinel::{wait_until, Sentinel, MASTER};
use common::*;

/// [`wait_until`] without blocking the runtime.
async fn wait_until_async(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn info(redis: &Redis, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query(&mut redis.admin())
        .unwrap_or_default()
}

/// redward following `MASTER` through the Sentinels on `ports`, with its admin endpoint.
async fn following(master: &Redis, ports: &[u16]) -> Proxy {
    proxy()
        .user("narrow", "on >narrowpw ~app:* &app:* +@all -@dangerous")
        .sentinel(MASTER, ports)
        .yaml("admin:\n  address: \"127.0.0.1:0\"\n")
        .start(master)
        .await
}

/// A master, its replica in sync, and three Sentinels that know both.
fn start_group() -> (Redis, Redis, Vec<Sentinel>) {
    let master = Redis::start();
    let replica = Redis::start_with(
        RedisOptions::with_acl(vec![
            "user default off".to_owned(),
            format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
            format!("user {APP_USER} on >{APP_PASSWORD} ~* &* +@all"),
        ])
        .args([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port.to_string(),
            "--masteruser".to_owned(),
            UPSTREAM_USER.to_owned(),
            "--masterauth".to_owned(),
            UPSTREAM_PASSWORD.to_owned(),
        ]),
    );
    wait_until("the replica is in sync", || {
        info(&replica, "replication").contains("master_link_status:up")
            // and the master streams to it: writes before that are not on the replica
            && info(&master, "replication").contains("state=online")
    });
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(master.port)).collect();
    wait_until("every Sentinel knows the replica", || {
        sentinels.iter().all(|s| s.replicas() == 1)
    });
    (master, replica, sentinels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_moves_every_write_to_the_promoted_replica_even_when_the_old_master_returns(
) {
    let (mut master, replica, sentinels) = start_group();
    let ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
    let proxy = following(&master, &ports).await;

    // A writer through redward: one SET at a time, each acknowledged write remembered, until
    // told to stop.
    let client = proxy.client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (stop, acked_count) = (stop.clone(), acked_count.clone());
        tokio::task::spawn_blocking(move || {
            use std::sync::atomic::Ordering;
            let mut acked = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            let mut conn = None;
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if conn.is_none() {
                    conn = client.get_connection().ok();
                }
                let Some(c) = conn.as_mut() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let key = format!("w:{i}");
                match redis::cmd("SET").arg(&key).arg(i).query::<()>(c) {
                    Ok(()) => {
                        acked.push(key);
                        acked_count.store(acked.len(), Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        conn = None; // a new connection, as client libraries retry
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (acked, errors)
        })
    };
    wait_until_async("the writer is going", || {
        acked_count.load(std::sync::atomic::Ordering::Relaxed) >= 50
    })
    .await;
    let switch_started = Instant::now();
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(MASTER)
        .query(&mut sentinels[0].conn())
        .expect("SENTINEL FAILOVER");
    let replica_port = replica.port;
    let sentinels = tokio::task::spawn_blocking(move || {
        wait_until("the Sentinels name the promoted replica", || {
            sentinels
                .iter()
                .all(|s| s.master_port() == Some(replica_port))
        });
        sentinels
    })
    .await
    .expect("wait");
    let switched_after = switch_started.elapsed();
    // Then 300 more acknowledged writes: the writes after the switch get through.
    let at_switch = acked_count.load(std::sync::atomic::Ordering::Relaxed);
    wait_until_async("writes go through after the switch", || {
        acked_count.load(std::sync::atomic::Ordering::Relaxed) >= at_switch + 300
    })
    .await;
    let recovered_after = switch_started.elapsed();
    // Split brain: the old master restarts empty and says `role:master` until the Sentinels
    // demote it. Writes acknowledged meanwhile must still land on the master they name.
    master.restart();
    assert!(info(&master, "replication").contains("role:master"));
    let at_restart = acked_count.load(std::sync::atomic::Ordering::Relaxed);
    wait_until_async("writes go on while the old master is back", || {
        acked_count.load(std::sync::atomic::Ordering::Relaxed) >= at_restart + 300
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, errors) = writer.await.expect("writer");
    drop(sentinels);

    // Every acknowledged write is on the master Sentinel names now.
    let mut promoted = replica.admin();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|k| {
            !redis::cmd("EXISTS")
                .arg(*k)
                .query::<bool>(&mut promoted)
                .unwrap_or(false)
        })
        .collect();
    eprintln!(
        "failover: Sentinels switched {switched_after:?} after SENTINEL FAILOVER, 300 writes through by {recovered_after:?}; {} writes acknowledged, {} errors: {:?}",
        acked.len(),
        errors.len(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing: {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        errors.iter().all(|e| !e.contains("READONLY")),
        "a write reached the demoted master: {errors:?}"
    );
    // The last writes went to the promoted replica through redward's new connections.
    assert!(info(&replica, "replication").contains("role:master"));
    // A narrow user's scripts are confined on the promoted master as on the old one: its
    // upstream user was made there before it carried a command (`upstream.identity`).
    let mut narrow = proxy.raw().await;
    narrow.send(&cmd(&["AUTH", "narrow", "narrowpw"])).await;
    assert_eq!(narrow.replies(1).await, b"+OK\r\n");
    narrow
        .send(&cmd(&[
            "EVAL",
            "return redis.call('GET', KEYS[1])",
            "1",
            "app:1",
        ]))
        .await;
    assert_eq!(narrow.replies(1).await, b"$-1\r\n");
    narrow
        .send(&cmd(&["EVAL", "return redis.call('GET', 'w:1')", "0"]))
        .await;
    let denied = String::from_utf8_lossy(&narrow.replies(1).await).into_owned();
    assert!(
        denied.starts_with("-ERR") && denied.contains("script"),
        "{denied}"
    );
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query(&mut replica.admin())
        .expect("ACL USERS");
    assert!(users.iter().any(|u| u == "redward:narrow"), "{users:?}");
    // The metrics say so: one failover, and which address is the master now.
    let admin = proxy.admin.expect("admin endpoint");
    let want = format!("upstream_master{{address=\"127.0.0.1:{replica_port}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = admin_metrics(admin).await;
        if metrics.contains("upstream_failovers_total 1") && metrics.contains(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the failover:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_faking_readonly_replies_cannot_make_redward_drop_the_master() {
    let (master, _replica, sentinels) = start_group();
    let ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
    let proxy = following(&master, &ports).await;
    // A well-behaved client with one connection for the whole test.
    let mut calm = proxy.raw().await;
    calm.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(calm.replies(1).await, b"+OK\r\n");
    // The attacker: a script whose error text is Redis's -READONLY, 500 times.
    let mut hostile = proxy.raw().await;
    let fake = cmd(&["EVAL", "return redis.error_reply('READONLY fake')", "0"]);
    hostile.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    hostile.replies(1).await;
    for round in 0..50 {
        hostile.send(&fake.repeat(10)).await;
        assert_eq!(hostile.replies(10).await, b"-READONLY fake\r\n".repeat(10));
        let key = format!("calm:{round}");
        calm.send(&[cmd(&["SET", &key, "1"]), cmd(&["GET", &key])].concat())
            .await;
        assert_eq!(
            calm.replies(2).await,
            b"+OK\r\n$1\r\n1\r\n",
            "round {round}"
        );
    }
    // No failover was counted; the master is where it was.
    let metrics = admin_metrics(proxy.admin.expect("admin")).await;
    assert!(metrics.contains("upstream_failovers_total 0"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "upstream_master{{address=\"127.0.0.1:{}\"}} 1",
            master.port
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redward_finds_the_master_through_sentinels_that_speak_tls_only() {
    let master = Redis::start();
    let certs = Certs::new();
    let sentinels: Vec<Sentinel> = (0..2)
        .map(|_| Sentinel::start_with(master.port, Some(&certs)))
        .collect();
    let ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
    let proxy = proxy()
        .sentinel_tls(MASTER, &ports, &certs.ca())
        .start(&master)
        .await;
    let mut c = proxy.raw().await;
    c.send(
        &[
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["SET", "through", "tls-sentinels"]),
            cmd(&["GET", "through"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        c.replies(3).await,
        b"+OK\r\n+OK\r\n$13\r\ntls-sentinels\r\n"
    );
    let on_master: String = redis::cmd("GET")
        .arg("through")
        .query(&mut master.admin())
        .expect("GET on the master");
    assert_eq!(on_master, "tls-sentinels");
}
