//! Promise: users are managed at run time through redward with `ACL SETUSER`, `DELUSER`,
//! `SAVE` and `LOAD`, with Redis's replies and semantics: rules change for live connections at
//! once, `DELUSER` closes the user's connections, `SETUSER ... off` does not; `SAVE` writes
//! hashed passwords only and `LOAD` is all or nothing; the upstream users follow; users of the
//! configuration's `users:` list are left to the configuration.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_made_at_run_time_logs_in_follows_changes_and_is_closed_when_deleted() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut admin = as_app(&proxy).await;
    let canary = Canary::start(&proxy).await;
    assert_eq!(
        ask(
            &mut admin,
            &[
                "ACL",
                "SETUSER",
                "bob",
                "on",
                ">bobpw",
                "~bob:*",
                "+@all",
                "-@dangerous"
            ]
        )
        .await,
        "+OK\r\n"
    );
    let mut bob = proxy.raw().await;
    assert_eq!(ask(&mut bob, &["AUTH", "bob", "bobpw"]).await, "+OK\r\n");
    assert_eq!(ask(&mut bob, &["SET", "bob:1", "x"]).await, "+OK\r\n");
    assert!(ask(&mut bob, &["GET", "other"])
        .await
        .starts_with("-NOPERM"));
    // Its scripts are confined by its own upstream user, made at once.
    let got = ask(&mut bob, &["EVAL", "return redis.call('GET','other')", "0"]).await;
    assert!(got.starts_with("-ERR") && got.contains("script"), "{got}");
    // A change applies to the live connection at its next command.
    assert_eq!(
        ask(&mut admin, &["ACL", "SETUSER", "bob", "-set"]).await,
        "+OK\r\n"
    );
    assert!(ask(&mut bob, &["SET", "bob:1", "y"])
        .await
        .starts_with("-NOPERM"));
    // `off`: no new login, the live connection stays (Redis's semantics).
    assert_eq!(
        ask(&mut admin, &["ACL", "SETUSER", "bob", "off"]).await,
        "+OK\r\n"
    );
    assert_eq!(ask(&mut bob, &["GET", "bob:1"]).await, "$1\r\nx\r\n");
    let mut again = proxy.raw().await;
    assert!(ask(&mut again, &["AUTH", "bob", "bobpw"])
        .await
        .starts_with("-WRONGPASS"));
    // DELUSER: the user's connections close; Redis's upstream user goes too.
    assert_eq!(
        ask(&mut admin, &["ACL", "DELUSER", "bob", "nobody"]).await,
        ":1\r\n"
    );
    bob.send(&cmd(&["PING"])).await;
    let rest = bob.until_close().await;
    assert!(!String::from_utf8_lossy(&rest).contains("PONG"), "{rest:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query(&mut redis.admin())
            .expect("ACL USERS");
        if !users.iter().any(|u| u == "redward:bob") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{users:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The configuration's users are its own; `default` cannot go, as in Redis.
    let got = ask(&mut admin, &["ACL", "SETUSER", APP_USER, "-get"]).await;
    assert!(
        got.starts_with("-ERR redward: user 'app' is defined"),
        "{got}"
    );
    let got = ask(&mut admin, &["ACL", "DELUSER", APP_USER]).await;
    assert!(
        got.starts_with("-ERR redward: user 'app' is defined"),
        "{got}"
    );
    assert_eq!(
        ask(&mut admin, &["ACL", "DELUSER", "default"]).await,
        "-ERR The 'default' user cannot be removed\r\n"
    );
    // Inside MULTI it is refused, like every ACL subcommand redward answers.
    admin
        .send(
            &[
                cmd(&["MULTI"]),
                cmd(&["ACL", "SETUSER", "eve", "on"]),
                cmd(&["EXEC"]),
            ]
            .concat(),
        )
        .await;
    let got = String::from_utf8_lossy(&admin.replies(3).await).into_owned();
    assert!(got.contains("EXECABORT"), "{got}");
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_save_writes_hashes_restart_keeps_users_and_a_bad_load_changes_nothing() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("users.acl");
    std::fs::write(&file, "").expect("write");
    let yaml = format!("acl_file: {}\n", file.display());
    let proxy = proxy().yaml(&yaml).start(&redis).await;
    let mut admin = as_app(&proxy).await;
    assert_eq!(
        ask(
            &mut admin,
            &["ACL", "SETUSER", "carol", "on", ">carolpw", "~c:*", "+get"]
        )
        .await,
        "+OK\r\n"
    );
    assert_eq!(ask(&mut admin, &["ACL", "SAVE"]).await, "+OK\r\n");
    let saved = std::fs::read_to_string(&file).expect("read");
    assert!(saved.starts_with("user carol on #"), "{saved}");
    assert!(
        !saved.contains("carolpw") && !saved.contains("user app "),
        "{saved}"
    );
    // A file with one bad line: Redis's text naming the line, and nothing changes.
    std::fs::write(&file, format!("{saved}user dave on >x +nosuchcommand\n")).expect("write");
    let got = ask(&mut admin, &["ACL", "LOAD"]).await;
    assert!(
        got.contains(":2: Unknown command or category name in ACL. WARNING: ACL errors detected, no change to the previously active ACL rules was performed"),
        "{got}"
    );
    let mut carol = proxy.raw().await;
    assert_eq!(
        ask(&mut carol, &["AUTH", "carol", "carolpw"]).await,
        "+OK\r\n"
    );
    let mut dave = proxy.raw().await;
    assert!(ask(&mut dave, &["AUTH", "dave", "x"])
        .await
        .starts_with("-WRONGPASS"));
    // A good file replaces the run-time users (carol goes, dave comes).
    std::fs::write(&file, "user dave on >davepw ~d:* +get\n").expect("write");
    assert_eq!(ask(&mut admin, &["ACL", "LOAD"]).await, "+OK\r\n");
    assert_eq!(ask(&mut dave, &["AUTH", "dave", "davepw"]).await, "+OK\r\n");
    let rest = {
        carol.send(&cmd(&["PING"])).await;
        carol.until_close().await
    };
    assert!(!String::from_utf8_lossy(&rest).contains("PONG"));
    // Saved, then a new process from the same configuration: still there.
    assert_eq!(
        ask(
            &mut admin,
            &["ACL", "SETUSER", "erin", "on", ">erinpw", "+ping"]
        )
        .await,
        "+OK\r\n"
    );
    assert_eq!(ask(&mut admin, &["ACL", "SAVE"]).await, "+OK\r\n");
    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    let certs = Certs::new();
    let path = certs.dir.path().join("again.yaml");
    std::fs::write(&path, &text).expect("write");
    let cfg = redward::config::load(&path).expect("config");
    let again = redward::Server::bind(&cfg).await.expect("bind");
    let users = redward::acl::describe(cfg.users.get(b"erin").expect("erin is in the saved file"));
    assert!(users.starts_with("user erin on #"), "{users}");
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_acl_file_or_the_permission_redis_own_errors() {
    let redis = Redis::start_with_acl(vec![
        "user default off".to_owned(),
        format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
        format!("user {APP_USER} on >{APP_PASSWORD} ~* &* +@all"),
        "user ops on >opspw ~* &* +@all -@dangerous".to_owned(),
    ]);
    let proxy = proxy()
        .user("ops", "on >opspw ~* &* +@all -@dangerous")
        .start(&redis)
        .await;
    let mut admin = as_app(&proxy).await;
    let got = ask(&mut admin, &["ACL", "SAVE"]).await;
    assert!(
        got.starts_with("-ERR This Redis instance is not configured to use an ACL file."),
        "{got}"
    );
    for args in [
        &["ACL", "SETUSER", "x", "on"][..],
        &["ACL", "DELUSER", "x"],
        &["ACL", "SAVE"],
        &["ACL", "LOAD"],
    ] {
        let mut direct = Raw::plain(&redis.addr()).await;
        direct.send(&cmd(&["AUTH", "ops", "opspw"])).await;
        direct.replies(1).await;
        direct.send(&cmd(args)).await;
        let want = String::from_utf8_lossy(&direct.replies(1).await).into_owned();
        let mut ops = proxy.raw().await;
        ops.send(&cmd(&["AUTH", "ops", "opspw"])).await;
        ops.replies(1).await;
        assert_eq!(ask(&mut ops, args).await, want, "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_setuser_input_gets_an_error_or_works_within_bounds() {
    let redis = Redis::start();
    let certs = Certs::new();
    let text = proxy()
        .yaml("limits:\n  max_users: 1000\n")
        .config_text(&redis, &certs);
    let process = common::process::Process::start(&certs, &text);
    let connect = || async {
        let mut c = Raw::tls(process.addr, &certs.ca()).await;
        c.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
        assert_eq!(c.replies(1).await, b"+OK\r\n");
        c
    };
    let mut admin = connect().await;
    let mut well = connect().await;
    // 10,000 rules in one request.
    let mut args: Vec<String> = vec!["ACL".into(), "SETUSER".into(), "many".into()];
    args.extend((0..10_000).map(|i| format!("~k{i}")));
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(ask(&mut admin, &args_ref).await, "+OK\r\n");
    // A 1 MiB rule.
    let big = format!("~{}", "a".repeat(1 << 20));
    assert_eq!(
        ask(&mut admin, &["ACL", "SETUSER", "big", &big]).await,
        "+OK\r\n"
    );
    // Names: spaces and NUL refused as Redis refuses them; other control bytes work.
    assert_eq!(
        ask(&mut admin, &["ACL", "SETUSER", "a b", "on"]).await,
        "-ERR Usernames can't contain spaces or null characters\r\n"
    );
    assert_eq!(
        ask(&mut admin, &["ACL", "SETUSER", "ctl\u{1}x", "on"]).await,
        "+OK\r\n"
    );
    let mut bad = b"*4\r\n$3\r\nACL\r\n$7\r\nSETUSER\r\n$2\r\n\xff\xfe\r\n$2\r\non\r\n".to_vec();
    admin.send(&bad).await;
    let got = String::from_utf8_lossy(&admin.replies(1).await).into_owned();
    assert!(
        got.starts_with("-ERR redward: user names must be UTF-8"),
        "{got}"
    );
    bad.clear();
    // Users created in a loop, pipelined 500 at a time, up to the bound and past it: each
    // gets +OK or the bound's error, and a well-behaved client is answered in between.
    let before = process.rss_bytes();
    let mut over = 0;
    let mut slowest = Duration::ZERO;
    for batch in 0..3 {
        let mut pipeline = Vec::new();
        for i in 0..500 {
            let name = format!("loop{}", batch * 500 + i);
            pipeline.extend(cmd(&["ACL", "SETUSER", &name, "on", ">pw", "~x:*", "+get"]));
        }
        admin.send(&pipeline).await;
        let got = String::from_utf8_lossy(&admin.replies(500).await).into_owned();
        over += got.matches("at most 1000 users").count();
        assert_eq!(
            got.matches("+OK\r\n").count() + got.matches("at most 1000 users").count(),
            500,
            "{}",
            &got[..got.len().min(300)]
        );
        let t = std::time::Instant::now();
        well.send(&cmd(&["PING"])).await;
        assert_eq!(well.replies(1).await, b"+PONG\r\n");
        slowest = slowest.max(t.elapsed());
    }
    let grown = process.rss_bytes().saturating_sub(before);
    eprintln!(
        "acl_runtime: 1,500 SETUSER in a loop (limits.max_users 1000): {over} refused past the bound, RSS grew {} MiB, slowest PING in between {slowest:?}",
        grown >> 20
    );
    assert!(over > 0, "the bound was never reached");
    assert!(grown < 512 << 20, "grew {} MiB", grown >> 20);
}

const SHARED_STATE: &str = "limits:\n  shared_state: upstream\n";

/// Polls `check` every 100 ms for up to 5 s (the promise), failing with `what`.
async fn within_5s<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 5 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_changed_through_one_instance_reach_every_instance_within_5_seconds() {
    let redis = Redis::start();
    let a = proxy().yaml(SHARED_STATE).start(&redis).await;
    let b = proxy().yaml(SHARED_STATE).start(&redis).await;
    let mut admin_a = as_app(&a).await;
    let mut admin_b = as_app(&b).await;
    // Created through A, logged in through B.
    assert_eq!(
        ask(
            &mut admin_a,
            &["ACL", "SETUSER", "frank", "on", ">fpw", "~f:*", "+@all"]
        )
        .await,
        "+OK\r\n"
    );
    // (Asked as an admin: failed logins while waiting would lock the address out.)
    within_5s("frank exists on B", || async {
        let mut c = as_app(&b).await;
        ask(&mut c, &["ACL", "GETUSER", "frank"])
            .await
            .starts_with('*')
    })
    .await;
    // Changed through A: a live connection on B follows.
    let mut frank_b = b.raw().await;
    assert_eq!(
        ask(&mut frank_b, &["AUTH", "frank", "fpw"]).await,
        "+OK\r\n"
    );
    assert_eq!(ask(&mut frank_b, &["SET", "f:1", "x"]).await, "+OK\r\n");
    assert_eq!(
        ask(&mut admin_a, &["ACL", "SETUSER", "frank", "-set"]).await,
        "+OK\r\n"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ask(&mut frank_b, &["SET", "f:1", "y"])
        .await
        .starts_with("-NOPERM")
    {
        assert!(std::time::Instant::now() < deadline, "frank on B kept SET");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Deleted through B: its connections on A close.
    let mut frank_a = a.raw().await;
    assert_eq!(
        ask(&mut frank_a, &["AUTH", "frank", "fpw"]).await,
        "+OK\r\n"
    );
    assert_eq!(
        ask(&mut admin_b, &["ACL", "DELUSER", "frank"]).await,
        ":1\r\n"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let gone = frank_a.try_send(&cmd(&["PING"])).await.is_err()
            || !String::from_utf8_lossy(&frank_a.drain_for(Duration::from_millis(200)).await)
                .contains("PONG");
        if gone {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "frank on A stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Changed at once through both: they end up agreeing.
    let (ra, rb) = tokio::join!(
        ask(&mut admin_a, &["ACL", "SETUSER", "hank", "on", "+get"]),
        ask(&mut admin_b, &["ACL", "SETUSER", "hank", "on", "+set"]),
    );
    assert_eq!((ra.as_str(), rb.as_str()), ("+OK\r\n", "+OK\r\n"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ask(&mut admin_a, &["ACL", "GETUSER", "hank"]).await
        != ask(&mut admin_b, &["ACL", "GETUSER", "hank"]).await
    {
        assert!(
            std::time::Instant::now() < deadline,
            "A and B disagree on hank"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An instance that starts later comes up with the current users.
    let c = proxy().yaml(SHARED_STATE).start(&redis).await;
    within_5s("hank exists on C", || async {
        let mut x = as_app(&c).await;
        ask(&mut x, &["ACL", "GETUSER", "hank"])
            .await
            .starts_with("*")
    })
    .await;
    // No client writes the shared users, as a command or from a script.
    let got = ask(
        &mut admin_a,
        &[
            "HSET",
            "redward:users",
            "evil",
            "user evil on nopass ~* +@all",
        ],
    )
    .await;
    assert!(got.starts_with("-NOPERM"), "{got}");
    let got = ask(
        &mut admin_a,
        &["EVAL", "redis.call('SELECT', '15') return redis.call('HSET', 'red'..'ward:users', 'evil', 'user evil on nopass +@all')", "0"],
    )
    .await;
    assert!(got.starts_with("-ERR"), "{got}");
    let mut evil = c.raw().await;
    assert!(ask(&mut evil, &["AUTH", "evil", "x"])
        .await
        .starts_with("-WRONGPASS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_reload_keeps_users_made_at_run_time() {
    let redis = Redis::start();
    let proxy = proxy().user("ops", "on >opspw +ping").start(&redis).await;
    let mut admin = as_app(&proxy).await;
    assert_eq!(
        ask(
            &mut admin,
            &["ACL", "SETUSER", "ivy", "on", ">ivypw", "+ping"]
        )
        .await,
        "+OK\r\n"
    );
    // The `users:` list changes (ops may GET now); ivy, unsaved, stays.
    let text = std::fs::read_to_string(&proxy.config_path).expect("read");
    std::fs::write(
        &proxy.config_path,
        text.replace("on >opspw +ping", "on >opspw +ping +get ~*"),
    )
    .expect("write");
    proxy.reloader.reload().expect("reload");
    let mut ivy = proxy.raw().await;
    assert_eq!(ask(&mut ivy, &["AUTH", "ivy", "ivypw"]).await, "+OK\r\n");
    let mut ops = proxy.raw().await;
    assert_eq!(ask(&mut ops, &["AUTH", "ops", "opspw"]).await, "+OK\r\n");
    assert_eq!(ask(&mut ops, &["GET", "k"]).await, "$-1\r\n");
}
