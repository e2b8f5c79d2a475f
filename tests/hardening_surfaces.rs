//! Promise: the surfaces added since the first hardening round hold against the attacks tried
//! on them (the second round), each with a well-behaved client alongside that keeps getting
//! correct replies:
//! - reserved names are checked on the arguments Redis will see: an inline request's escapes
//!   (`"\x72edward:"`) reach them no more than the array form does;
//! - what redward keeps about a denial is a bounded prefix of each name, marked as cut, so
//!   denials cannot grow the process;
//! - `CLIENT` and `ACL` subcommands redward answers itself are refused inside MULTI, and a
//!   client id queued there is redward's too (`tests/client_ids.rs`);
//! - the shared state never lives in database 0: without a database of its own, start-up is
//!   refused naming the field.
//!
//! The Sentinel and cluster holes (a rogue Sentinel, a node's announced address) are in
//! `tests/sentinel_quorum.rs` and `tests/cluster_hardening.rs`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::Process;
use common::*;

const SHARED: &str = "limits:\n  shared_state: upstream\n  auth_failures_per_minute: 6\n";

async fn connect_from(proxy: &Proxy, source: &str) -> Raw {
    let addr = SocketAddr::from(([127, 0, 0, 1], proxy.port()));
    Raw::tls_from(addr, &proxy.certs.ca(), Some(source)).await
}

async fn logged_in(proxy: &Proxy, source: &str) -> Raw {
    let mut c = connect_from(proxy, source).await;
    c.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_escapes_do_not_reach_reserved_names() {
    let redis = Redis::start();
    let proxy = proxy().yaml(SHARED).start(&redis).await;
    let canary = Canary::start(&proxy).await;
    let mut attacker = logged_in(&proxy, "127.0.0.2").await;
    // Inline requests whose arguments are `redward:...` only once unescaped, as Redis's
    // `sdssplitargs` unescapes them; each followed by a well-behaved one.
    let attacks: [&[u8]; 6] = [
        b"PUBLISH \"\\x72edward:lockouts\" 127.0.0.1\r\n",
        b"SET \"\\x72edward:lock:127.0.0.3\" 1\r\n",
        b"GET \"\\x72edward:auth:127.0.0.1\"\r\n",
        b"SUBSCRIBE \"r\\x65dward:lockouts\"\r\n",
        b"SORT list BY \"\\x72edward:*\"\r\n",
        b"SCRIPT LOAD \"return redis.call('GET','\\x72edward:x')\"\r\n",
    ];
    for attack in attacks {
        attacker.send(attack).await;
        let got = String::from_utf8_lossy(&attacker.replies(1).await).into_owned();
        assert!(
            got.starts_with("-NOPERM"),
            "{}: {got}",
            String::from_utf8_lossy(attack)
        );
    }
    // Inside MULTI (refused while queued: EXEC aborts) and from a script, likewise.
    attacker
        .send(b"MULTI\r\nPUBLISH \"\\x72edward:lockouts\" 127.0.0.1\r\nEXEC\r\n")
        .await;
    let got = String::from_utf8_lossy(&attacker.replies(3).await).into_owned();
    assert!(
        got.starts_with("+OK\r\n-NOPERM")
            && got.ends_with("-EXECABORT Transaction discarded because of previous errors.\r\n"),
        "{got}"
    );
    // From a script (confined by Redis under `upstream.identity: per_user`): the message may
    // be delivered, and is ignored, unsigned (`shared_signing.rs`); checked below.
    attacker
        .send(b"EVAL \"return redis.call('PUBLISH','\\x72edward:lockouts','127.0.0.1')\" 0\r\n")
        .await;
    let got = String::from_utf8_lossy(&attacker.replies(1).await).into_owned();
    assert!(got.starts_with("-NOPERM") || got.starts_with(':'), "{got}");
    attacker
        .send(b"SET note \"\\x72edward:value\"\r\nGET note\r\n")
        .await;
    assert_eq!(
        attacker.replies(2).await,
        b"+OK\r\n$13\r\nredward:value\r\n".to_vec()
    );
    // Nobody was locked out: 127.0.0.1 logs in, on this instance and through Redis's state.
    let mut c = connect_from(&proxy, "127.0.0.1").await;
    c.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
    let mut direct = redis.admin();
    let keys: Vec<String> = redis::cmd("SELECT")
        .arg(15)
        .query::<()>(&mut direct)
        .and_then(|()| redis::cmd("KEYS").arg("redward:lock:*").query(&mut direct))
        .expect("KEYS");
    assert!(keys.is_empty(), "{keys:?}");
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_redward_keeps_about_denials_is_a_bounded_prefix_of_each_name() {
    let redis = Redis::start();
    let certs = Certs::new();
    let audit = certs.dir.path().join("audit.jsonl");
    let text = proxy()
        .user("narrow", "on >narrowpw ~app:* +@all")
        .yaml(&format!("audit:\n  file: {}\n", audit.display()))
        .config_text(&redis, &certs);
    let process = Process::start(&certs, &text);
    let mut well = Raw::tls(process.addr, &certs.ca()).await;
    well.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(well.replies(1).await, b"+OK\r\n");
    let mut c = Raw::tls(process.addr, &certs.ca()).await;
    c.send(&cmd(&["AUTH", "narrow", "narrowpw"])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
    let before = process.rss_bytes();
    // 100 GETs of distinct 4 MiB key names the user may not read (400 MiB of names).
    const N: usize = 100;
    const LEN: usize = 4 << 20;
    for i in 0..N {
        let mut key = format!("secret:{i}:").into_bytes();
        key.resize(LEN, b'x');
        let mut req = b"*2\r\n$3\r\nGET\r\n".to_vec();
        req.extend(format!("${LEN}\r\n").into_bytes());
        req.extend(&key);
        req.extend(b"\r\n");
        c.send(&req).await;
        let got = c.replies(1).await;
        assert!(
            got.starts_with(b"-NOPERM"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        if i % 20 == 0 {
            well.send(&cmd(&["SET", "app:1", &i.to_string()])).await;
            well.send(&cmd(&["GET", "app:1"])).await;
            let want = format!("+OK\r\n${}\r\n{i}\r\n", i.to_string().len());
            assert_eq!(String::from_utf8_lossy(&well.replies(2).await), want);
        }
    }
    let grown = process.rss_bytes().saturating_sub(before);
    eprintln!(
        "denials: {N} x {} MiB names; RSS grew by {:.1} MiB",
        LEN >> 20,
        grown as f64 / f64::from(1 << 20)
    );
    // Before: the ACL LOG and the audit queue held every name whole (over 400 MiB).
    assert!(grown < 96 << 20, "RSS grew by {grown} bytes");
    // ACL LOG keeps the first 256 bytes of each name and says how long it was.
    let log = proxy_cli_acl_log(&mut well).await;
    assert!(
        log.contains("...(cut, 4194304 bytes)"),
        "{}",
        &log[..log.len().min(2000)]
    );
    assert!(
        log.len() < 128 * 1024,
        "ACL LOG reply of {} bytes",
        log.len()
    );
    // So does the audit file, a line per denial.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let n = text.lines().filter(|l| l.contains("acl_denied")).count();
        if n >= N || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let denied: Vec<&str> = lines.lines().filter(|l| l.contains("acl_denied")).collect();
    assert_eq!(denied.len(), N);
    assert!(denied
        .iter()
        .all(|l| l.len() < 1024 && l.contains("(cut, ")));
}

/// `ACL LOG 128` on `c` (a user allowed it), as text.
async fn proxy_cli_acl_log(c: &mut Raw) -> String {
    c.send(&cmd(&["ACL", "LOG", "128"])).await;
    String::from_utf8_lossy(&c.replies(1).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_acl_commands_queued_in_multi_never_reach_redis_as_sent() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let canary = Canary::start(&proxy).await;
    // Redis's view before: redward's shared connections, the canary's among them.
    let upstream_before = redis.client_count();
    let mut c = proxy.raw().await;
    c.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
    // Array and inline forms; each transaction is refused whole.
    let killers: [Vec<u8>; 4] = [
        cmd(&["CLIENT", "KILL", "USER", "proxy"]),
        b"CLIENT KILL USER proxy\r\n".to_vec(),
        cmd(&["CLIENT", "KILL", "SKIPME", "no"]),
        cmd(&["CLIENT", "LIST"]),
    ];
    for killer in killers {
        let mut script = cmd(&["MULTI"]);
        script.extend(killer);
        script.extend(cmd(&["SET", "k", "v"]));
        script.extend(cmd(&["EXEC"]));
        c.send(&script).await;
        let got = String::from_utf8_lossy(&c.replies(4).await).into_owned();
        assert!(
            got.starts_with("+OK\r\n-ERR redward answers CLIENT ")
                && got.ends_with(
                    "+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n"
                ),
            "{got}"
        );
    }
    // ACL subcommands, AUTH, HELLO and CLIENT REPLY, which redward answers itself, likewise.
    for (req, what) in [
        (cmd(&["ACL", "LOG", "RESET"]), "ACL LOG"),
        (cmd(&["ACL", "WHOAMI"]), "ACL WHOAMI"),
        (cmd(&["AUTH", APP_USER, APP_PASSWORD]), "AUTH"),
        (b"hello 3\r\n".to_vec(), "HELLO"),
        (cmd(&["CLIENT", "REPLY", "OFF"]), "CLIENT REPLY"),
    ] {
        let mut script = cmd(&["MULTI"]);
        script.extend(req);
        script.extend(cmd(&["EXEC"]));
        c.send(&script).await;
        let got = String::from_utf8_lossy(&c.replies(3).await).into_owned();
        assert_eq!(
            got,
            format!(
                "+OK\r\n-ERR redward answers {what} itself; send it outside MULTI\r\n\
                 -EXECABORT Transaction discarded because of previous errors.\r\n"
            )
        );
    }
    // Ids are redward's, inside MULTI too: one that names no client of redward's gets
    // Redis's answer for a client that does not exist (tests/client_ids.rs has the rest).
    let mut script = cmd(&["MULTI"]);
    script.extend(b"CLIENT UNBLOCK 999999 ERROR\r\n");
    script.extend(cmd(&["EXEC"]));
    c.send(&script).await;
    assert_eq!(
        String::from_utf8_lossy(&c.replies(3).await),
        "+OK\r\n+QUEUED\r\n*1\r\n:0\r\n"
    );
    // A transaction without them still runs, on the same connection.
    let mut script = cmd(&["MULTI"]);
    script.extend(cmd(&["SET", "k", "v"]));
    script.extend(cmd(&["CLIENT", "GETREDIR"]));
    script.extend(cmd(&["EXEC"]));
    c.send(&script).await;
    assert_eq!(
        String::from_utf8_lossy(&c.replies(4).await),
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:-1\r\n"
    );
    // Redis's clients were never killed: at least as many as before (this client's own
    // transaction connection added one).
    assert!(
        redis.client_count() >= upstream_before,
        "redward's connections were killed"
    );
    canary.finish().await;
}

fn refused_start(redis_args: &[&str], yaml: &str) -> (String, Duration) {
    let redis = Redis::start_with(
        RedisOptions::with_acl(vec![
            "user default off".to_owned(),
            format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
        ])
        .args(redis_args.iter().copied()),
    );
    let certs = Certs::new();
    let mut text = proxy().yaml(yaml).config_text(&redis, &certs);
    if redis_args.is_empty() {
        // Redis down at start: the address of a port nobody listens on.
        text = text.replace(&redis.addr(), &format!("127.0.0.1:{}", free_port()));
    }
    let path = certs.dir.path().join("redward.yaml");
    std::fs::write(&path, text).expect("write");
    let start = Instant::now();
    let log = certs.dir.path().join("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_redward"))
        .arg("--config")
        .arg(&path)
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("run");
    // A redward that starts anyway would serve forever: give it a minute, then fail.
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "redward started: {stderr}"
    );
    (
        stderr.lines().last().unwrap_or_default().to_owned(),
        start.elapsed(),
    )
}

#[test]
fn the_shared_state_never_falls_back_to_database_0() {
    // A Redis with a single database: nowhere to hide the state.
    let (last, _) = refused_start(&["--databases", "1"], SHARED);
    assert!(
        last.contains("limits.shared_state_database") && last.contains("database 0 only"),
        "{last}"
    );
    // Redis down at start: redward waits a while, then refuses, naming the field.
    let (last, waited) = refused_start(&[], SHARED);
    assert!(
        last.contains("limits.shared_state_database") && last.contains("could not learn"),
        "{last}"
    );
    eprintln!("refused after {:.1} s", waited.as_secs_f64());
}
