//! Promise: under `upstream.identity: per_user` (the default) Redis itself enforces each
//! client's rules, so a narrow user's scripts and functions are confined as they would be
//! against Redis's own ACLs, with Redis's own errors; under `shared`, scripting is refused to
//! every user narrower than `+@all ~* &*`.

mod common;

use std::time::Duration;

use common::*;

const NARROW: &str = "narrow";
const NARROW_PW: &str = "narrow-pw";
const NARROW_RULES: &str = "~app:* &app:* +@all -@dangerous";

fn narrow_rules() -> String {
    format!("on >{NARROW_PW} {NARROW_RULES}")
}

/// Redis with the narrow user defined directly too: the oracle for every reply.
fn redis_with_narrow(kind: ServerKind) -> Result<Redis, String> {
    Redis::start_kind(
        kind,
        vec![
            "user default off".to_owned(),
            format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
            format!("user {APP_USER} on >{APP_PASSWORD} ~* &* +@all"),
            format!("user {NARROW} {}", narrow_rules()),
        ],
    )
}

async fn login(c: &mut Raw, user: &str, pw: &str) {
    c.send(&cmd(&["AUTH", user, pw])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
}

/// Each request's reply, directly as `user` and through redward as `user`, normalized.
async fn side_by_side(redis: &Redis, proxy: &Proxy, user: &str, pw: &str, reqs: &[Vec<u8>]) {
    let mut direct = Raw::plain(&redis.addr()).await;
    login(&mut direct, user, pw).await;
    let mut via = proxy.raw().await;
    login(&mut via, user, pw).await;
    for req in reqs {
        direct.send(req).await;
        let d = normalize(&direct.replies(1).await);
        via.send(req).await;
        let v = normalize(&via.replies(1).await);
        assert_eq!(v, d, "{}", String::from_utf8_lossy(req));
    }
}

fn eval(script: &str, keys: &[&str]) -> Vec<u8> {
    let n = keys.len().to_string();
    let mut args = vec!["EVAL", script, &n];
    args.extend_from_slice(keys);
    cmd(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_users_scripts_get_redis_own_errors_outside_its_rules() {
    for kind in ServerKind::ALL {
        let redis = match redis_with_narrow(kind) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipping {}: {e}", kind.name());
                continue;
            }
        };
        let mut admin = redis.admin();
        let _: () = redis::cmd("SET")
            .arg("secret")
            .arg("s3cr3t")
            .query(&mut admin)
            .expect("SET");
        let proxy = proxy().user(NARROW, &narrow_rules()).start(&redis).await;
        let reqs = [
            eval("return redis.call('GET','secret')", &[]),
            eval("return redis.call('SET','other','x')", &[]),
            eval("return redis.call('FLUSHALL')", &[]),
            eval("return redis.call('PUBLISH','news','x')", &[]),
            eval("return redis.call('SET',KEYS[1],'v')", &["app:1"]),
            eval("return redis.call('GET',KEYS[1])", &["app:1"]),
            eval("return redis.pcall('GET','secret')", &[]),
        ];
        side_by_side(&redis, &proxy, NARROW, NARROW_PW, &reqs).await;
        let got: Option<String> = redis::cmd("GET")
            .arg("secret")
            .query(&mut admin)
            .expect("GET");
        assert_eq!(got.as_deref(), Some("s3cr3t"), "{}", kind.name());
        let other: Option<String> = redis::cmd("GET")
            .arg("other")
            .query(&mut admin)
            .expect("GET");
        assert_eq!(other, None, "{}", kind.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_runs_with_the_callers_rights_not_the_loaders() {
    let redis = redis_with_narrow(ServerKind::Redis).expect("redis");
    let proxy = proxy().user(NARROW, &narrow_rules()).start(&redis).await;
    // Loaded by an all-powerful user, called by the narrow one.
    let mut app = proxy.raw().await;
    login(&mut app, APP_USER, APP_PASSWORD).await;
    let lib = "#!lua name=lib\n\
               redis.register_function('peek', function(keys, args) return redis.call('GET', args[1]) end)\n\
               redis.register_function('wipe', function(keys, args) return redis.call('FLUSHALL') end)";
    app.send(&cmd(&["FUNCTION", "LOAD", lib])).await;
    assert_eq!(app.replies(1).await, b"$3\r\nlib\r\n");
    app.send(&cmd(&["SET", "secret", "s3cr3t"])).await;
    assert_eq!(app.replies(1).await, b"+OK\r\n");
    app.send(&cmd(&["SET", "app:k", "mine"])).await;
    assert_eq!(app.replies(1).await, b"+OK\r\n");
    let reqs = [
        cmd(&["FCALL", "peek", "0", "secret"]),
        cmd(&["FCALL", "wipe", "0"]),
        cmd(&["FCALL", "peek", "0", "app:k"]),
    ];
    side_by_side(&redis, &proxy, NARROW, NARROW_PW, &reqs).await;
    let mut admin = redis.admin();
    let got: Option<String> = redis::cmd("GET")
        .arg("secret")
        .query(&mut admin)
        .expect("GET");
    assert_eq!(got.as_deref(), Some("s3cr3t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_own_client_list_and_acl_log_name_the_user() {
    let redis = redis_with_narrow(ServerKind::Redis).expect("redis");
    let proxy = proxy()
        .user(NARROW, &narrow_rules())
        .yaml("admin:\n  address: \"127.0.0.1:0\"\n")
        .start(&redis)
        .await;
    let mut c = proxy.raw().await;
    login(&mut c, NARROW, NARROW_PW).await;
    // BLPOP rides a connection of the client's own; a script is denied inside Redis.
    c.send(&eval("return redis.call('GET','secret')", &[]))
        .await;
    let denied = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    assert!(denied.starts_with('-'), "{denied}");
    c.send(&cmd(&["BLPOP", "app:list", "0.2"])).await;
    let _ = c.replies(1).await;
    let mut admin = redis.admin();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut admin)
        .expect("CLIENT LIST");
    assert!(list.contains("user=redward:narrow"), "{list}");
    let log: redis::Value = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut admin)
        .expect("ACL LOG");
    let log = format!("{log:?}");
    assert!(log.contains("redward:narrow"), "{log}");
    // The upstream user's rules are the narrow user's, and it never has a client's password.
    let rules: Vec<String> = redis::cmd("ACL")
        .arg("LIST")
        .query(&mut admin)
        .expect("ACL LIST");
    let mine = rules
        .iter()
        .find(|r| r.starts_with("user redward:narrow "))
        .expect("upstream user");
    assert!(
        mine.contains("~app:*") && mine.contains("-@dangerous"),
        "{mine}"
    );
    assert!(
        !mine.contains(&redward::acl::hash_password(NARROW_PW.as_bytes())),
        "{mine}"
    );
    // redward's metrics count the upstream users and the connections of each.
    let metrics = admin_metrics(proxy.admin.expect("admin")).await;
    assert!(metrics.contains("redward_upstream_users 2"), "{metrics}");
    let narrow_conns = metrics
        .lines()
        .find(|l| l.starts_with("redward_upstream_user_connections{user=\"redward:narrow\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .unwrap_or(0);
    assert!(narrow_conns >= 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_identity_refuses_scripts_to_narrow_users_only() {
    let redis = redis_with_narrow(ServerKind::Redis).expect("redis");
    let proxy = proxy()
        .user(NARROW, &narrow_rules())
        .upstream_option("identity: shared")
        .start(&redis)
        .await;
    let mut narrow = proxy.raw().await;
    login(&mut narrow, NARROW, NARROW_PW).await;
    for req in [
        eval("return 1", &[]),
        cmd(&["EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"]),
        cmd(&["EVAL_RO", "return 1", "0"]),
        cmd(&["FCALL", "f", "0"]),
        cmd(&["FCALL_RO", "f", "0"]),
    ] {
        narrow.send(&req).await;
        let got = String::from_utf8_lossy(&narrow.replies(1).await).into_owned();
        assert!(
            got.starts_with("-NOPERM") && got.contains("upstream.identity"),
            "{got}"
        );
    }
    // Inline and inside MULTI alike.
    narrow.send(b"EVAL \"return 1\" 0\r\n").await;
    let got = String::from_utf8_lossy(&narrow.replies(1).await).into_owned();
    assert!(got.starts_with("-NOPERM"), "{got}");
    narrow
        .send(b"MULTI\r\nEVAL \"return 1\" 0\r\nEXEC\r\n")
        .await;
    let got = String::from_utf8_lossy(&narrow.replies(3).await).into_owned();
    assert!(
        got.contains("-NOPERM") && got.contains("EXECABORT"),
        "{got}"
    );
    let mut app = proxy.raw().await;
    login(&mut app, APP_USER, APP_PASSWORD).await;
    app.send(&eval("return 1", &[])).await;
    assert_eq!(app.replies(1).await, b":1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_without_acl_permission_refuses_to_start_naming_the_field() {
    let redis = Redis::start_with_acl(vec![
        "user default off".to_owned(),
        format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all -acl"),
    ]);
    let certs = Certs::new();
    let text = proxy().config_text(&redis, &certs);
    let path = certs.dir.path().join("redward.yaml");
    std::fs::write(&path, &text).expect("write");
    let cfg = redward::config::load(&path).expect("config");
    let err = redward::Server::bind(&cfg)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("upstream.identity") && err.contains("+acl") && !err.contains('\n'),
        "{err}"
    );
    assert!(!err.contains(UPSTREAM_PASSWORD), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_removed_by_reload_is_removed_upstream_and_a_changed_one_follows() {
    let redis = Redis::start();
    let proxy = proxy().user(NARROW, &narrow_rules()).start(&redis).await;
    let mut c = proxy.raw().await;
    login(&mut c, NARROW, NARROW_PW).await;
    c.send(&eval("return redis.call('SET','wide:1','x')", &[]))
        .await;
    let got = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    assert!(got.starts_with('-'), "{got}");
    // Widened by a reload: the script may now write `wide:*`, on the live connection.
    let text = std::fs::read_to_string(&proxy.config_path).expect("read");
    let widened = text.replace("~app:* &app:*", "~app:* ~wide:* &app:*");
    std::fs::write(&proxy.config_path, &widened).expect("write");
    proxy.reloader.reload().expect("reload");
    let mut admin = redis.admin();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        c.send(&eval("return redis.call('SET','wide:1','x')", &[]))
            .await;
        let got = c.replies(1).await;
        if got == b"+OK\r\n" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Removed by a reload: gone from Redis too.
    let without: String = widened
        .lines()
        .filter(|l| !l.contains(NARROW))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&proxy.config_path, &without).expect("write");
    proxy.reloader.reload().expect("reload");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query(&mut admin)
            .expect("ACL USERS");
        if !users.iter().any(|u| u == "redward:narrow") {
            assert!(users.iter().any(|u| u == "redward:app"), "{users:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{users:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SHARED_STATE: &str = "limits:\n  shared_state: upstream\n  auth_failures_per_minute: 3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_beside_shared_state_and_reach_none_of_it() {
    let redis = Redis::start();
    let proxy = proxy()
        .user("odd", "on >oddpw ~*:x +@all")
        .yaml(SHARED_STATE)
        .start(&redis)
        .await;
    let canary = Canary::start(&proxy).await;
    // Real state first: three failed logins from 127.0.0.9 lock it out.
    for _ in 0..3 {
        let mut c = Raw::tls_from(
            std::net::SocketAddr::from(([127, 0, 0, 1], proxy.port())),
            &proxy.certs.ca(),
            Some("127.0.0.9"),
        )
        .await;
        c.send(&cmd(&["AUTH", APP_USER, "wrong"])).await;
        let _ = c.replies(1).await;
    }
    let mut state = redis.admin();
    let _: () = redis::cmd("SELECT")
        .arg(15)
        .query(&mut state)
        .expect("SELECT");
    // The shared users' first write (`redward:users:version`) comes from a task of its own:
    // the state is compared once it is there, or a slow start would look like a change.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let before: Vec<String> = loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("redward:*")
            .query(&mut state)
            .expect("KEYS");
        if keys.iter().any(|k| k == "redward:users:version") || std::time::Instant::now() > deadline
        {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        before.iter().any(|k| k.starts_with("redward:lock:")),
        "{before:?}"
    );
    // The app user has ~* &* +@all: its scripts run, and every way into the state fails.
    let mut app = proxy.raw().await;
    login(&mut app, APP_USER, APP_PASSWORD).await;
    let attacks = [
        "return redis.call('GET', 'redward:lock:127.0.0.9')",
        "return redis.call('SET', 'redward:lock:127.0.0.1', '1')",
        "return redis.call('DEL', 'redward:signing-key')",
        "return redis.call('SELECT', '15')",
        "return redis.call('SWAPDB', '0', '15')",
        "return redis.call('FLUSHALL')",
        "return redis.call('MOVE', 'redward:lock:127.0.0.9', '0')",
        "return redis.call('COPY', 'app:x', 'redward:lock:127.0.0.2', 'DB', '15')",
        "return redis.call('RENAME', 'app:x', 'redward:lock:127.0.0.2')",
    ];
    let _ = redis::cmd("SET")
        .arg("app:x")
        .arg("1")
        .query::<()>(&mut redis.admin());
    for script in attacks {
        for req in [
            eval(script, &[]),
            format!("EVAL \"{script}\" 0\r\n").into_bytes(),
        ] {
            app.send(&req).await;
            let got = String::from_utf8_lossy(&app.replies(1).await).into_owned();
            assert!(got.starts_with('-'), "{script}: {got}");
        }
        // Inside MULTI too.
        app.send(&[cmd(&["MULTI"]), eval(script, &[]), cmd(&["EXEC"])].concat())
            .await;
        let got = String::from_utf8_lossy(&app.replies(3).await).into_owned();
        assert!(
            got.starts_with("+OK\r\n+QUEUED\r\n*1\r\n-"),
            "{script}: {got}"
        );
    }
    // A function likewise (a library spelling the prefix out is refused as it loads, so
    // this one builds the name at run time).
    let lib = "#!lua name=evil\n\
               redis.register_function('steal', function(k, a) return redis.call('GET', 'red' .. 'ward:lock:127.0.0.9') end)";
    app.send(&cmd(&["FUNCTION", "LOAD", lib])).await;
    assert_eq!(app.replies(1).await, b"$4\r\nevil\r\n");
    app.send(&cmd(&["FCALL", "steal", "0"])).await;
    let got = String::from_utf8_lossy(&app.replies(1).await).into_owned();
    assert!(got.starts_with('-'), "{got}");
    // Publishing on the channel from a script: delivered, and ignored (unsigned).
    app.send(&eval(
        "return redis.call('PUBLISH', 'redward:lockouts', '127.0.0.1')",
        &[],
    ))
    .await;
    let got = String::from_utf8_lossy(&app.replies(1).await).into_owned();
    assert!(got.starts_with(':'), "{got}");
    // Scripts within the user's keys work.
    app.send(&eval("return redis.call('INCR', KEYS[1])", &["app:n"]))
        .await;
    assert_eq!(app.replies(1).await, b":1\r\n");
    // A pattern Redis cannot be told to narrow keeps that user's scripts refused.
    let mut odd = proxy.raw().await;
    login(&mut odd, "odd", "oddpw").await;
    odd.send(&eval("return 1", &[])).await;
    let got = String::from_utf8_lossy(&odd.replies(1).await).into_owned();
    assert!(got.starts_with("-NOPERM"), "{got}");
    // The state is as it was, and 127.0.0.1 still logs in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<String> = redis::cmd("KEYS")
        .arg("redward:*")
        .query(&mut state)
        .expect("KEYS");
    let mut a = after.clone();
    let mut b = before.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let mut c = proxy.raw().await;
    login(&mut c, APP_USER, APP_PASSWORD).await;
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_start_and_reload_in_turn_without_an_error() {
    let redis = Redis::start();
    let a = proxy().user(NARROW, &narrow_rules()).start(&redis).await;
    let canary_a = Canary::start(&a).await;
    let mut narrow_a = a.raw().await;
    login(&mut narrow_a, NARROW, NARROW_PW).await;
    // The second instance starts: it sets the same users (same secrets, from the same
    // credential) while the first one's clients are busy.
    let b = proxy().user(NARROW, &narrow_rules()).start(&redis).await;
    let canary_b = Canary::start(&b).await;
    let mut narrow_b = b.raw().await;
    login(&mut narrow_b, NARROW, NARROW_PW).await;
    let script = eval("return redis.call('INCR', KEYS[1])", &["app:n"]);
    let mut n = 0;
    for step in 0..4 {
        // Each reloads in turn (a user added, then the same again).
        let which = if step % 2 == 0 { &a } else { &b };
        let text = std::fs::read_to_string(&which.config_path).expect("read");
        let text = if text.contains("extra") {
            text
        } else {
            text + "  - name: extra\n    rules: \"on >extrapw ~extra:* +@read\"\n"
        };
        std::fs::write(&which.config_path, &text).expect("write");
        which.reloader.reload().expect("reload");
        for c in [&mut narrow_a, &mut narrow_b] {
            c.send(&script).await;
            n += 1;
            let got = String::from_utf8_lossy(&c.replies(1).await).into_owned();
            assert_eq!(got, format!(":{n}\r\n"));
        }
        // New connections on both, logged in as the narrow user, keep working too.
        for p in [&a, &b] {
            let mut c = p.raw().await;
            login(&mut c, NARROW, NARROW_PW).await;
            c.send(&script).await;
            n += 1;
            assert_eq!(
                String::from_utf8_lossy(&c.replies(1).await),
                format!(":{n}\r\n")
            );
        }
    }
    canary_a.finish().await;
    canary_b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_logs_in_again_runs_as_the_new_user_upstream() {
    let redis = redis_with_narrow(ServerKind::Redis).expect("redis");
    let _: () = redis::cmd("SET")
        .arg("secret")
        .arg("s3cr3t")
        .query(&mut redis.admin())
        .expect("SET");
    let proxy = proxy().user(NARROW, &narrow_rules()).start(&redis).await;
    let peek = eval("return redis.call('GET','secret')", &[]);
    let mut c = proxy.raw().await;
    login(&mut c, NARROW, NARROW_PW).await;
    // WATCH gives the client a connection of its own; then it logs in as others on it.
    c.send(&cmd(&["WATCH", "app:w"])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
    c.send(&peek).await;
    let got = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    assert!(got.starts_with("-ERR"), "narrow: {got}");
    login(&mut c, APP_USER, APP_PASSWORD).await;
    c.send(&peek).await;
    assert_eq!(c.replies(1).await, b"$6\r\ns3cr3t\r\n");
    // Back to the narrow user (pipelined with the script), then RESET and HELLO AUTH.
    c.send(&[cmd(&["AUTH", NARROW, NARROW_PW]), peek.clone()].concat())
        .await;
    let got = String::from_utf8_lossy(&c.replies(2).await).into_owned();
    assert!(got.starts_with("+OK\r\n-ERR"), "narrow again: {got}");
    c.send(&cmd(&["RESET"])).await;
    assert_eq!(c.replies(1).await, b"+RESET\r\n");
    c.send(&peek).await;
    let got = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    assert!(got.starts_with("-NOAUTH"), "after RESET: {got}");
    c.send(&cmd(&["HELLO", "2", "AUTH", NARROW, NARROW_PW]))
        .await;
    let _ = c.replies(1).await;
    c.send(&peek).await;
    let got = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    assert!(got.starts_with("-ERR"), "after HELLO AUTH: {got}");
    // A bystander is served throughout.
    let mut b = proxy.raw().await;
    login(&mut b, APP_USER, APP_PASSWORD).await;
    b.send(&cmd(&["PING"])).await;
    assert_eq!(b.replies(1).await, b"+PONG\r\n");
}
