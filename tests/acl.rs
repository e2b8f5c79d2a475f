//! Promise: Redis ACL rules, enforced by redward before anything reaches Redis, with Redis's
//! own verdicts and texts; ACL commands answered from redward's users; every denial audited.

mod common;

use common::*;
use redis::AsyncCommands;

const RO_RULES: &str = "on >ropw %R~cache:* resetchannels -@all +@read -@dangerous";

/// A Redis with the same users as redward, so every reply can be compared.
fn redis_with(users: &[(&str, &str)]) -> Redis {
    let mut acl = vec![
        "user default off".to_owned(),
        format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
        format!("user {APP_USER} on >{APP_PASSWORD} ~* &* +@all"),
    ];
    for (name, rules) in users {
        acl.push(format!("user {name} {rules}"));
    }
    Redis::start_with_acl(acl)
}

fn login(user: &str, pw: &str, cmds: &[&[&str]]) -> Vec<u8> {
    let mut out = cmd(&["AUTH", user, pw]);
    for c in cmds {
        out.extend(cmd(c));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_user_on_cache_keys_gets_exactly_what_redis_allows() {
    let redis = redis_with(&[("ro", RO_RULES)]);
    let proxy = proxy().user("ro", RO_RULES).start(&redis).await;
    let script = login(
        "ro",
        "ropw",
        &[
            &["GET", "cache:1"],
            &["SCAN", "0", "MATCH", "cache:*"],
            &["SET", "cache:1", "x"],
            &["GET", "other:1"],
            &["MGET", "cache:1", "other:2"],
            &["KEYS", "*"],
            &["CONFIG", "GET", "maxmemory"],
            &["FLUSHALL"],
            &["DEBUG", "SLEEP", "0"],
            &["SUBSCRIBE", "news"],
            &["NOSUCHCMD", "a"],
            &["GET"],
            &["ACL", "WHOAMI"],
            &["QUIT"],
        ],
    );
    let (direct, via) = both(&redis, &proxy, &script, 15).await;
    assert_eq!(via, direct);
    assert!(
        via.contains("-NOPERM this user has no permissions to run the 'set' command"),
        "{via}"
    );
    assert!(
        via.contains("-NOPERM this user has no permissions to access one of the keys"),
        "{via}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_never_reach_redis() {
    let redis = redis_with(&[]);
    let proxy = proxy().user("ro", RO_RULES).start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(&login(
        "ro",
        "ropw",
        &[&["SET", "cache:1", "x"], &["FLUSHALL"], &["GET", "cache:1"]],
    ))
    .await;
    let r = String::from_utf8(raw.replies(4).await).unwrap();
    assert!(r.ends_with("$-1\r\n"), "{r}");
    let mut c = redis.admin();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    assert!(
        !info.contains("cmdstat_set:") && !info.contains("cmdstat_flushall:"),
        "{info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_command_inside_multi_aborts_exec() {
    let rules = "on >wpw ~* &* +@all -flushall";
    let redis = redis_with(&[("w", rules)]);
    let proxy = proxy().user("w", rules).start(&redis).await;
    let script = login(
        "w",
        "wpw",
        &[
            &["MULTI"],
            &["SET", "m", "1"],
            &["FLUSHALL"],
            &["INCR", "m"],
            &["EXEC"],
            &["GET", "m"],
            &["MULTI"],
            &["SET", "m", "2"],
            &["EXEC"],
            &["QUIT"],
        ],
    );
    let (direct, via) = both(&redis, &proxy, &script, 11).await;
    assert_eq!(via, direct);
    assert!(via.contains("-EXECABORT"), "{via}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_denied_commands_in_the_middle_keeps_order() {
    let redis = redis_with(&[("ro", RO_RULES)]);
    let proxy = proxy().user("ro", RO_RULES).start(&redis).await;
    let mut cmds: Vec<Vec<String>> = Vec::new();
    for i in 0..500 {
        let c = match i % 4 {
            0 => vec!["GET".into(), format!("cache:{i}")],
            1 => vec!["SET".into(), format!("cache:{i}"), "v".into()],
            2 => vec!["EXISTS".into(), format!("other:{i}")],
            _ => vec!["PING".into()],
        };
        cmds.push(c);
    }
    let mut script = cmd(&["AUTH", "ro", "ropw"]);
    for c in &cmds {
        script.extend(cmd(&c.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    script.extend(cmd(&["QUIT"]));
    let (direct, via) = both(&redis, &proxy, &script, 502).await;
    assert_eq!(via, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_client_sees_noperm_for_denied_writes() {
    let redis = redis_with(&[]);
    let proxy = proxy().user("ro", RO_RULES).start(&redis).await;
    let mut admin = redis.admin();
    let _: () = redis::cmd("SET")
        .arg("cache:a")
        .arg("1")
        .query(&mut admin)
        .unwrap();
    let mut con = proxy
        .client_as("ro", "ropw")
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let v: String = con.get("cache:a").await.unwrap();
    assert_eq!(v, "1");
    let err = con.set::<_, _, ()>("cache:a", "2").await.unwrap_err();
    assert!(err.to_string().contains("NOPERM"), "{err}");
    let err = con.get::<_, String>("other:a").await.unwrap_err();
    assert!(err.to_string().contains("NOPERM"), "{err}");
    let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("cache:*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(keys.contains(&"cache:a".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_commands_answer_from_redwards_users_like_redis() {
    let users = [
        ("ro", RO_RULES),
        ("ops", "on >opspw ~* &* +@all -@dangerous +info"),
    ];
    let redis = redis_with(&users);
    let mut builder = proxy().user(
        UPSTREAM_USER,
        &format!("on >{UPSTREAM_PASSWORD} ~* &* +@all"),
    );
    for (n, r) in users {
        builder = builder.user(n, r);
    }
    // The direct server must hold exactly redward's users for `ACL USERS` to compare: no
    // upstream users of redward's own there (`tests/identity.rs` covers those).
    let proxy = builder
        .upstream_option("identity: shared")
        .start(&redis)
        .await;
    let script = login(
        APP_USER,
        APP_PASSWORD,
        &[
            &["ACL", "WHOAMI"],
            &["ACL", "USERS"],
            &["ACL", "DRYRUN", "ro", "GET", "cache:1"],
            &["ACL", "DRYRUN", "ro", "SET", "cache:1", "v"],
            &["ACL", "DRYRUN", "ro", "GET", "other"],
            &["ACL", "DRYRUN", "nobody", "GET", "x"],
            &["ACL", "DRYRUN", "ro", "NOSUCH"],
            &["ACL", "CAT"],
            &["ACL", "CAT", "nosuchcat"],
            &["ACL", "GETUSER", "nobody"],
            &["ACL", "NOSUCHSUB"],
            &["ACL"],
            &["QUIT"],
        ],
    );
    let (direct, via) = both(&redis, &proxy, &script, 14).await;
    // `default` exists in Redis but not in redward's table: compare the rest.
    let direct = direct.replace(
        "*5\r\n$3\r\napp\r\n$7\r\ndefault\r\n",
        "*4\r\n$3\r\napp\r\n",
    );
    assert_eq!(via, direct);
    let mut raw = proxy.raw().await;
    raw.send(&login(
        APP_USER,
        APP_PASSWORD,
        &[&["ACL", "SETUSER", "ro", "on"]],
    ))
    .await;
    // Users of the configuration's `users:` list stay the configuration's
    // (`tests/acl_runtime.rs` has the rest of ACL SETUSER).
    let r = String::from_utf8(raw.replies(2).await).unwrap();
    assert!(
        r.contains("-ERR redward: user 'ro' is defined in redward's configuration (users:)"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_log_and_audit_file_record_denials_and_failed_logins_without_secrets() {
    let redis = redis_with(&[]);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = proxy()
        .user("ro", RO_RULES)
        .yaml(&format!("audit:\n  file: {}\n", audit.display()))
        .start(&redis)
        .await;
    let mut raw = proxy.raw().await;
    raw.send(&login("ro", "wrong-password-123", &[])).await;
    raw.send(&login(
        "ro",
        "ropw",
        &[&["SET", "cache:1", "secret-value"], &["GET", "other:9"]],
    ))
    .await;
    let _ = raw.replies(4).await;
    let mut admin = proxy.raw().await;
    admin
        .send(&login(APP_USER, APP_PASSWORD, &[&["ACL", "LOG"]]))
        .await;
    let log = String::from_utf8_lossy(&admin.replies(2).await).into_owned();
    for needle in ["auth", "command", "key", "other:9", "set", "toplevel"] {
        assert!(log.contains(needle), "{needle} missing from {log}");
    }
    // The file is written by a background task: give it a moment (bounded).
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&audit).unwrap_or_default();
        if text.lines().count() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains("\"event\":\"auth_failed\"") && text.contains("\"object\":\"other:9\""),
        "{text}"
    );
    assert!(
        !text.contains("wrong-password-123") && !text.contains("secret-value"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aclfile_saved_by_redis_loads_and_behaves_the_same() {
    let redis = redis_with(&[]);
    let mut admin = redis.admin();
    for (name, rules) in [
        ("ro", RO_RULES),
        ("w", "on >wpw ~app:* &chan:* +@all -@dangerous -flushdb"),
        (
            "sel",
            "on >selpw %R~r:* -@all +get +set (~w:* +set) (%W~x:* +@write)",
        ),
    ] {
        let mut c = redis::cmd("ACL");
        c.arg("SETUSER").arg(name);
        for r in rules.split(' ') {
            c.arg(r);
        }
        let _: () = c.query(&mut admin).unwrap();
    }
    let _: () = redis::cmd("ACL").arg("SAVE").query(&mut admin).unwrap();
    let dir: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("aclfile")
        .query(&mut admin)
        .unwrap();
    let saved = std::fs::read_to_string(&dir[1]).unwrap();
    // redward serves those users from the very file Redis wrote (minus `default` and `app`,
    // which redward's config defines itself).
    let tmp = tempfile::tempdir().unwrap();
    let aclfile = tmp.path().join("users.acl");
    let kept: Vec<&str> = saved
        .lines()
        .filter(|l| !l.starts_with("user default ") && !l.starts_with("user app "))
        .collect();
    std::fs::write(&aclfile, kept.join("\n")).unwrap();
    let proxy = proxy()
        .yaml(&format!("acl_file: {}\n", aclfile.display()))
        .start(&redis)
        .await;
    let script = login(
        "sel",
        "selpw",
        &[
            &["GET", "r:1"],
            &["SET", "r:1", "v"],
            &["SET", "w:1", "v"],
            &["SET", "x:1", "v"],
            &["GET", "x:1"],
            &["DEL", "x:1"],
            &["AUTH", "w", "wpw"],
            &["SET", "app:1", "v"],
            &["FLUSHDB"],
            &["PUBLISH", "chan:1", "m"],
            &["PUBLISH", "other", "m"],
            &["QUIT"],
        ],
    );
    let (direct, via) = both(&redis, &proxy, &script, 13).await;
    assert_eq!(via, direct);
}
