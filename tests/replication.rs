//! Promise: replication passes through redward for users allowed to run it: after `SYNC` or
//! `PSYNC` the connection carries Redis's RDB payload (in either form) and then its command
//! stream, untouched, so `redis-cli --rdb` and a real replica work through redward as they do
//! through stunnel, while other clients carry on.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `redis-cli --tls` to redward on `port`, logged in as `app`.
fn redis_cli_as_app(ca: &std::path::Path, port: u16) -> Command {
    let mut cli = Command::new("redis-cli");
    cli.args(["--tls", "--cacert"])
        .arg(ca)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--no-auth-warning",
        ])
        .args(["--user", APP_USER, "--pass", APP_PASSWORD]);
    cli
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_rdb_through_redward_saves_the_whole_dataset() {
    let redis = Redis::start();
    let mut admin = redis.admin();
    for i in 0..500 {
        redis::cmd("SET")
            .arg(format!("dump:{i}"))
            .arg(i)
            .exec(&mut admin)
            .unwrap();
    }
    let proxy = proxy().start(&redis).await;
    let canary = Canary::start(&proxy).await;
    let path = proxy.certs.dir.path().join("dump.rdb");
    let out = tokio::task::spawn_blocking({
        let (ca, port, path) = (proxy.certs.ca(), proxy.port(), path.clone());
        move || {
            redis_cli_as_app(&ca, port)
                .arg("--rdb")
                .arg(path)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rdb = std::fs::read(&path).unwrap();
    assert!(rdb.starts_with(b"REDIS"), "not an RDB file");
    assert!(rdb.windows(8).any(|w| w == b"dump:499"));
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_replica_follows_its_master_through_redward() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let master_port = proxy.port().to_string();
    let replica = Redis::start_with(
        RedisOptions::open()
            .args(["--replicaof", "127.0.0.1", &master_port])
            .args(["--masteruser", APP_USER, "--masterauth", APP_PASSWORD])
            .args(["--tls-replication", "yes"])
            .tls_files(&proxy.certs),
    );
    let port = replica.port;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut via = proxy
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0u64;
    let followed = loop {
        i += 1;
        let _: () = redis::cmd("SET")
            .arg("replicated")
            .arg(i)
            .query_async(&mut via)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got: Option<u64> = client
            .get_connection()
            .ok()
            .and_then(|mut c| redis::cmd("GET").arg("replicated").query(&mut c).ok());
        if got == Some(i) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    drop(replica);
    assert!(followed, "the replica never caught up through redward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_users_allowed_to_replicate_get_the_stream() {
    let redis = Redis::start();
    let proxy = proxy()
        .user("ro", "on >ropw ~* -@all +get")
        .start(&redis)
        .await;
    let mut ro = proxy.raw().await;
    ro.send(
        &[
            cmd(&["AUTH", "ro", "ropw"]),
            cmd(&["SYNC"]),
            cmd(&["PSYNC", "?", "-1"]),
            cmd(&["GET", "k"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        String::from_utf8(ro.replies(4).await).unwrap(),
        "+OK\r\n-NOPERM this user has no permissions to run the 'sync' command\r\n\
         -NOPERM this user has no permissions to run the 'psync' command\r\n$-1\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_replica_through_redward_shows_the_command_stream() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut cli = redis_cli_as_app(&proxy.certs.ca(), proxy.port())
        .arg("--replica")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // redis-cli prints the replication stream one command a line until it is killed.
    let stdout = cli.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut via = proxy
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0u64;
    let mut seen = Vec::new();
    let streamed = 'wait: loop {
        i += 1;
        let _: () = redis::cmd("SET")
            .arg("streamed")
            .arg(format!("value-{i}"))
            .query_async(&mut via)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok(line) = rx.try_recv() {
            if line.contains("\"SET\",\"streamed\"") {
                break 'wait true;
            }
            seen.push(line);
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    let _ = cli.kill();
    let _ = cli.wait();
    assert!(streamed, "no SET in the stream: {seen:?}");
}

/// The pid a server reports (`INFO server`).
fn pid(redis: &Redis) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut redis.admin())
        .expect("INFO server");
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("process_id")
        .trim()
        .to_owned()
}

fn signal(pid: &str, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// `WAIT` counts the replicas that have the client's writes, as against Redis: writes that
/// rode a shared connection before `WAIT` moved the client to its own are counted too (Redis
/// counts from the offset of the connection's own last write, which a new connection does
/// not have). With the replica stopped, `WAIT 1 300` answers 0, not 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_counts_only_replicas_that_have_the_clients_writes() {
    for kind in ServerKind::ALL {
        let Some(master) = matrix_server(kind) else {
            continue;
        };
        let replica = Redis::start_with(RedisOptions {
            server: kind,
            ..RedisOptions::with_acl(matrix_acl()).args([
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                master.port.to_string(),
                "--masteruser".to_owned(),
                UPSTREAM_USER.to_owned(),
                "--masterauth".to_owned(),
                UPSTREAM_PASSWORD.to_owned(),
            ])
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut master.admin())
                .unwrap_or_default();
            if info.contains("state=online") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no replica: {info}",
                kind.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let proxy = proxy().start(&master).await;
        let mut c = as_app(&proxy).await;
        assert_eq!(ask(&mut c, &["SET", "before-wait", "1"]).await, "+OK\r\n");
        let replica_pid = pid(&replica);
        signal(&replica_pid, "-STOP");
        let stopped = ask(&mut c, &["WAIT", "1", "300"]).await;
        signal(&replica_pid, "-CONT");
        assert_eq!(stopped, ":0\r\n", "{}", kind.name());
        // Once the replica runs again, it acknowledges the write.
        assert_eq!(ask(&mut c, &["WAIT", "1", "10000"]).await, ":1\r\n");
    }
}
