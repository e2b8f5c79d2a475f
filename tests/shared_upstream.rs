//! Promise: clients share upstream connections without being able to tell. Requests that do
//! not depend on connection state ride one shared Redis connection (Redis sees one pipeline
//! instead of a connection per client); the first that does (MULTI, SELECT, CLIENT, HELLO,
//! blocking commands, pub/sub, ...) moves the client, in order, to a connection of its own.
//! A client that stops reading is cut off at `limits.shared_reply_buffer`, never holding up
//! the others; `upstream.shared_connections: 0` gives every client its own connection.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn auth() -> Vec<u8> {
    cmd(&["AUTH", APP_USER, APP_PASSWORD])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_one_upstream_connection_and_each_gets_its_own_replies() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut clients = Vec::new();
    for c in 0..40 {
        let mut raw = proxy.raw().await;
        clients.push(tokio::spawn(async move {
            let mut script = auth();
            let mut expected = b"+OK\r\n".to_vec();
            for j in 0..100 {
                let (k, v) = (format!("k:{c}:{j}"), format!("v:{c}:{j}"));
                script.extend(cmd(&["SET", &k, &v]));
                script.extend(cmd(&["GET", &k]));
                expected.extend(format!("+OK\r\n${}\r\n{v}\r\n", v.len()).as_bytes());
            }
            raw.send(&script).await;
            let got = raw.replies(201).await;
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&expected),
                "client {c}"
            );
            raw
        }));
    }
    let mut open = Vec::new();
    for c in clients {
        open.push(c.await.expect("client task"));
    }
    // All 40 clients are still connected: Redis sees redward's shared connection only.
    let upstream = redis.client_count();
    assert!(
        upstream <= 2,
        "40 clients should share one upstream connection, Redis has {upstream}"
    );
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_moves_to_its_own_connection_keeps_order_and_state() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    // Shared commands, then one that needs connection state, all in one write; then state
    // that must stick (transaction, database, name) on the client's own connection.
    let script = [
        auth(),
        cmd(&["SET", "a", "1"]),
        cmd(&["INCR", "a"]),
        cmd(&["MULTI"]),
        cmd(&["INCR", "a"]),
        cmd(&["GET", "a"]),
        cmd(&["EXEC"]),
        cmd(&["GET", "a"]),
        cmd(&["SELECT", "1"]),
        cmd(&["GET", "a"]),
        cmd(&["SET", "a", "db1"]),
        cmd(&["CLIENT", "SETNAME", "moved"]),
        cmd(&["CLIENT", "GETNAME"]),
        cmd(&["SELECT", "0"]),
        cmd(&["GET", "a"]),
        cmd(&["RESET"]),
    ]
    .concat();
    let (direct, via) = both(&redis, &proxy, &script, 16).await;
    assert_eq!(via, direct);
    assert!(via.contains("*2\r\n:3\r\n$1\r\n3\r\n"), "EXEC ran: {via}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_unknown_commands_on_a_shared_connection_answer_as_redis() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let script = [
        auth(),
        cmd(&["SET", "x", "1"]),
        cmd(&["NOSUCHCOMMAND", "x"]),
        cmd(&["GET", "x"]),
        cmd(&["PING"]),
        cmd(&["ECHO", "hi"]),
        cmd(&["EXISTS", "x", "y"]),
    ]
    .concat();
    let (direct, via) = both(&redis, &proxy, &script, 7).await;
    assert_eq!(via, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_does_not_hold_up_the_shared_connection() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut blocked = proxy.raw().await;
    blocked
        .send(
            &[
                auth(),
                cmd(&["SET", "k", "v"]),
                cmd(&["BLPOP", "queue", "0"]),
            ]
            .concat(),
        )
        .await;
    assert_eq!(blocked.replies(2).await, b"+OK\r\n+OK\r\n");
    let mut other = proxy.raw().await;
    other
        .send(&[auth(), cmd(&["GET", "k"]), cmd(&["RPUSH", "queue", "job"])].concat())
        .await;
    assert_eq!(other.replies(3).await, b"+OK\r\n$1\r\nv\r\n:1\r\n");
    assert_eq!(
        blocked.replies(1).await,
        b"*2\r\n$5\r\nqueue\r\n$3\r\njob\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_the_others_carry_on() {
    let redis = Redis::start();
    let proxy = proxy()
        .yaml("limits:\n  shared_reply_buffer: 1mb\n")
        .start(&redis)
        .await;
    {
        let mut c = redis.admin();
        let big = "x".repeat(512 * 1024);
        let _: () = redis::cmd("SET")
            .arg("big")
            .arg(big)
            .query(&mut c)
            .expect("SET big");
    }
    let canary = Canary::start(&proxy).await;
    let mut hog = proxy.raw().await;
    let mut script = auth();
    for _ in 0..200 {
        script.extend(cmd(&["GET", "big"]));
    }
    hog.send(&script).await;
    // The hog reads nothing for a while: 100 MiB of replies are owed to it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    canary.finish().await;
    let got = hog.until_close().await;
    let frames = count_frames(&got);
    assert!(
        frames < 201,
        "the hog should have been disconnected, got all {frames} replies"
    );
    // redward itself is fine.
    let mut after = proxy.raw().await;
    after
        .send(&[auth(), cmd(&["STRLEN", "big"])].concat())
        .await;
    assert_eq!(after.replies(2).await, b"+OK\r\n:524288\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_on_the_shared_connection_survives_a_redis_restart() {
    let mut redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(&[auth(), cmd(&["PING"])].concat()).await;
    assert_eq!(raw.replies(2).await, b"+OK\r\n+PONG\r\n");
    redis.kill();
    redis.restart();
    // The shared connection noticed Redis going away while it owed nothing to anyone; the
    // next request opens a new one.
    let mut reply = Vec::new();
    for _ in 0..50 {
        raw.send(&cmd(&["PING"])).await;
        reply = raw.replies(1).await;
        if reply == b"+PONG\r\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reply, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_connections_zero_gives_every_client_its_own() {
    let redis = Redis::start();
    let proxy = proxy()
        .upstream_option("shared_connections: 0")
        .start(&redis)
        .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut raw = proxy.raw().await;
        raw.send(&[auth(), cmd(&["PING"])].concat()).await;
        assert_eq!(raw.replies(2).await, b"+OK\r\n+PONG\r\n");
        clients.push(raw);
    }
    let upstream = redis.client_count();
    assert!(
        upstream >= 5,
        "one upstream connection per client, Redis has {upstream}"
    );
    let script = [
        auth(),
        cmd(&["SET", "a", "1"]),
        cmd(&["MULTI"]),
        cmd(&["INCR", "a"]),
        cmd(&["EXEC"]),
    ]
    .concat();
    let (direct, via) = both(&redis, &proxy, &script, 5).await;
    assert_eq!(via, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_while_redis_is_paused_all_arrive_in_order() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(&auth()).await;
    assert_eq!(raw.replies(1).await, b"+OK\r\n");
    {
        let mut c = redis.admin();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1500)
            .arg("ALL")
            .query(&mut c)
            .expect("CLIENT PAUSE");
    }
    // 16 MiB of requests, more than the shared queue holds: redward must stop reading this
    // client and resume, losing nothing.
    let value = "v".repeat(256 * 1024);
    let mut script = Vec::new();
    for i in 0..64 {
        script.extend(cmd(&["SET", &format!("big:{i}"), &value]));
    }
    script.extend(cmd(&["DBSIZE"]));
    let writer = tokio::spawn(async move {
        raw.send(&script).await;
        raw.replies(65).await
    });
    let got = writer.await.expect("writer");
    let expected = [b"+OK\r\n".repeat(64), b":64\r\n".to_vec()].concat();
    assert_eq!(got, expected);
}

/// A small deterministic generator (no dependency needed for a script mix).
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One client's script: shared-safe commands on its own keys, with, at random points, the
/// commands that move it to its own connection (a transaction, another database, a name).
fn mixed_script(client: u64, rng: &mut Xorshift) -> (Vec<u8>, usize) {
    let k = |i: u64| format!("c{client}:k{i}");
    let mut script = auth();
    let mut n = 1;
    let mut push = |script: &mut Vec<u8>, args: &[&str]| {
        script.extend(cmd(args));
        n += 1;
    };
    for _ in 0..60 {
        let key = k(rng.next(4));
        match rng.next(12) {
            0..=3 => push(&mut script, &["SET", &key, &format!("v{}", rng.next(1000))]),
            4..=6 => push(&mut script, &["GET", &key]),
            7 => push(&mut script, &["INCR", &format!("{key}:n")]),
            8 => push(&mut script, &["LPUSH", &format!("{key}:l"), "x", "y"]),
            9 => {
                push(&mut script, &["MULTI"]);
                push(&mut script, &["INCR", &format!("{key}:n")]);
                push(&mut script, &["GET", &key]);
                push(&mut script, &["EXEC"]);
            }
            10 => {
                push(&mut script, &["SELECT", "1"]);
                push(&mut script, &["SET", &key, "db1"]);
                push(&mut script, &["GET", &key]);
                push(&mut script, &["SELECT", "0"]);
            }
            _ => push(&mut script, &["CLIENT", "SETNAME", &format!("c{client}")]),
        }
    }
    (script, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_moving_off_the_shared_connection_get_redis_s_replies() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    let scripts: Vec<(Vec<u8>, usize)> = (0..30)
        .map(|c| mixed_script(c, &mut Xorshift(seed.wrapping_add(c * 7919) | 1)))
        .collect();
    // Expected: each script alone, directly against Redis (keys are per client, so the
    // interleaving through redward cannot change any reply).
    let flush = || {
        let mut c = redis.admin();
        let _: () = redis::cmd("FLUSHALL").query(&mut c).expect("FLUSHALL");
    };
    flush();
    let mut expected = Vec::new();
    for (script, n) in &scripts {
        let mut direct = Raw::plain(&redis.addr()).await;
        direct.send(script).await;
        expected.push(direct.replies(*n).await);
    }
    flush();
    let mut tasks = Vec::new();
    for (script, n) in scripts.clone() {
        let mut raw = proxy.raw().await;
        tasks.push(tokio::spawn(async move {
            // Half the clients send their script in pieces, so moves happen mid-stream too.
            let cut = script.len() / 2;
            raw.send(&script[..cut]).await;
            tokio::task::yield_now().await;
            raw.send(&script[cut..]).await;
            raw.replies(n).await
        }));
    }
    for (i, (task, want)) in tasks.into_iter().zip(expected).enumerate() {
        let got = task.await.expect("client task");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "client {i} (seed {seed})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_kill_reaches_redis_past_a_busy_script_on_the_shared_connection() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut busy = proxy.raw().await;
    busy.send(&[auth(), cmd(&["EVAL", "while true do end", "0"])].concat())
        .await;
    assert_eq!(busy.replies(1).await, b"+OK\r\n");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Redis takes SCRIPT KILL once the script has run past lua-time-limit (5 s); it must not
    // be queued behind the script on the shared connection.
    let mut admin = proxy.raw().await;
    admin.send(&auth()).await;
    assert_eq!(admin.replies(1).await, b"+OK\r\n");
    let mut reply = Vec::new();
    for _ in 0..50 {
        admin.send(&cmd(&["SCRIPT", "KILL"])).await;
        reply = admin.replies(1).await;
        if !reply.starts_with(b"-NOTBUSY") {
            break; // -NOTBUSY: the script had not started yet
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reply, b"+OK\r\n");
    let killed = busy.replies(1).await;
    assert!(
        killed.starts_with(b"-ERR Error running script")
            || killed.starts_with(b"-ERR Script killed"),
        "{}",
        String::from_utf8_lossy(&killed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_kill_reaches_a_busy_redis_from_a_database_other_than_0() {
    for kind in ServerKind::ALL {
        let redis = match Redis::start_kind(
            kind,
            vec![
                "user default off".to_owned(),
                format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
            ],
        ) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipping {}: {e}", kind.name());
                continue;
            }
        };
        let proxy = proxy().start(&redis).await;
        // A client in database 9 (selected before the script starts, as Redis itself answers
        // SELECT with -BUSY while it runs). Its new connection cannot SELECT while Redis is
        // busy, so the KILL goes on one in database 0, and its database is selected after.
        let mut admin = proxy.raw().await;
        admin.send(&[auth(), cmd(&["SELECT", "9"])].concat()).await;
        assert_eq!(admin.replies(2).await, b"+OK\r\n+OK\r\n");
        let mut busy = proxy.raw().await;
        busy.send(
            &[
                auth(),
                cmd(&["SELECT", "9"]),
                cmd(&["EVAL", "while true do end", "0"]),
            ]
            .concat(),
        )
        .await;
        assert_eq!(busy.replies(2).await, b"+OK\r\n+OK\r\n");
        // Until the script has run past the busy threshold (5 s) the server answers nobody,
        // so a new connection may time out: retried, as a client library retries.
        let mut reply = Vec::new();
        for _ in 0..100 {
            admin.send(&cmd(&["SCRIPT", "KILL"])).await;
            reply = admin.replies(1).await;
            if !reply.starts_with(b"-NOTBUSY") && !reply.starts_with(b"-ERR upstream") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_eq!(reply, b"+OK\r\n", "{}", kind.name());
        let killed = busy.replies(1).await;
        assert!(
            killed.starts_with(b"-ERR"),
            "{}",
            String::from_utf8_lossy(&killed)
        );
        // The killer's next write lands in database 9, as it asked.
        admin.send(&cmd(&["SET", "after-kill", "1"])).await;
        assert_eq!(admin.replies(1).await, b"+OK\r\n");
        let mut direct = redis.admin();
        let _: () = redis::cmd("SELECT")
            .arg(9)
            .query(&mut direct)
            .expect("SELECT");
        let got: Option<String> = redis::cmd("GET")
            .arg("after-kill")
            .query(&mut direct)
            .expect("GET");
        assert_eq!(got.as_deref(), Some("1"), "{}", kind.name());
    }
}

/// Under `CLIENT PAUSE <ms> WRITE` (sent through redward) Redis holds each writer and serves
/// readers. Through redward, writers on the shared connection must not hold other clients'
/// reads, read-only scripts or read-only transactions behind them, and Redis holds each
/// writer as one client of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_pause_holds_the_writers_alone_and_shared_reads_flow() {
    for kind in ServerKind::ALL {
        let Some(redis) = matrix_server(kind) else {
            continue;
        };
        // One shared connection: without care, a held write holds everyone on it.
        let proxy = proxy()
            .upstream_option("shared_connections: 1")
            .start(&redis)
            .await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut c = as_app(&proxy).await;
            assert_eq!(ask(&mut c, &["GET", "k"]).await, "$-1\r\n");
            clients.push(c);
        }
        let mut reader = clients.pop().expect("reader");
        let mut pauser = as_app(&proxy).await;
        let paused = ask(&mut pauser, &["CLIENT", "PAUSE", "60000", "WRITE"]).await;
        assert_eq!(paused, "+OK\r\n", "{}", kind.name());
        // A write, and a script (Redis holds every script that may write).
        let writes = [
            cmd(&["SET", "w:0", "v"]),
            cmd(&["EVAL", "return redis.call('SET', KEYS[1], 'v')", "1", "w:1"]),
        ];
        for (w, write) in clients.iter_mut().zip(&writes) {
            w.send(write).await;
        }
        // Reads flow (a held one would time out here: the pause lasts a minute).
        assert_eq!(ask(&mut reader, &["GET", "k"]).await, "$-1\r\n");
        let script = "return redis.call('GET', KEYS[1])";
        let ro = ask(&mut reader, &["EVAL_RO", script, "1", "k"]).await;
        assert_eq!(ro, "$-1\r\n", "{}", kind.name());
        reader
            .send(&[cmd(&["MULTI"]), cmd(&["GET", "k"]), cmd(&["EXEC"])].concat())
            .await;
        assert_eq!(
            reader.replies(3).await,
            b"+OK\r\n+QUEUED\r\n*1\r\n$-1\r\n",
            "{}",
            kind.name()
        );
        // Redis holds the two writers, each on a connection of its own.
        let mut admin = redis.admin();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query(&mut admin)
                .expect("CLIENT LIST");
            let held = list
                .lines()
                .filter(|l| l.contains(" cmd=set ") || l.contains(" cmd=eval "))
                .count();
            if held == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {list}", kind.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for w in &mut clients {
            assert_eq!(w.drain_for(Duration::from_millis(100)).await, b"");
        }
        assert_eq!(ask(&mut pauser, &["CLIENT", "UNPAUSE"]).await, "+OK\r\n");
        for w in &mut clients {
            assert_eq!(w.replies(1).await, b"+OK\r\n", "{}", kind.name());
        }
        // Once unpaused, the writes are there.
        assert_eq!(ask(&mut reader, &["EXISTS", "w:0", "w:1"]).await, ":2\r\n");
    }
}

/// A shared connection keeps one write in flight: while a large reply streams back, the other
/// clients' requests gather for the next write. Every client still gets exactly its own
/// replies, in order, whether it wrote inline (empty lines among them, which Redis does not
/// answer) or multibulk, and a client that fetches the large value again and again holds up
/// nobody's replies but its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_gathered_behind_a_large_reply_reach_their_own_clients() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let big = "x".repeat(2 << 20);
    let mut seed = proxy.raw().await;
    seed.send(&[auth(), cmd(&["SET", "big", &big])].concat())
        .await;
    assert_eq!(seed.replies(2).await, b"+OK\r\n+OK\r\n");
    let big_reply = format!("${}\r\n{big}\r\n", big.len());
    let mut clients = Vec::new();
    for c in 0..16 {
        let mut raw = proxy.raw().await;
        let big_reply = big_reply.clone();
        clients.push(tokio::spawn(async move {
            let mut script = auth();
            let mut expected = b"+OK\r\n".to_vec();
            for j in 0..60 {
                let (k, v) = (format!("k:{c}:{j}"), format!("v{c}x{j}"));
                if c % 4 == 0 && j % 15 == 0 {
                    script.extend(cmd(&["GET", "big"]));
                    expected.extend(big_reply.as_bytes());
                } else if j % 2 == 0 {
                    // Empty inline lines get no reply from Redis: none may be owed for them.
                    script.extend(format!("\r\n  \r\nSET {k} {v}\r\nGET {k}\r\n").as_bytes());
                    expected.extend(format!("+OK\r\n${}\r\n{v}\r\n", v.len()).as_bytes());
                } else {
                    script.extend(cmd(&["SET", &k, &v]));
                    script.extend(cmd(&["GET", &k]));
                    expected.extend(format!("+OK\r\n${}\r\n{v}\r\n", v.len()).as_bytes());
                }
            }
            let owed = if c % 4 == 0 { 1 + 4 + 56 * 2 } else { 1 + 120 };
            raw.send(&script).await;
            let got = raw.replies(owed).await;
            assert!(
                got == expected,
                "client {c}: its replies differ from its own requests'"
            );
        }));
    }
    for c in clients {
        c.await.expect("client task");
    }
    assert!(redis.client_count() <= 3, "the clients shared the upstream");
}
