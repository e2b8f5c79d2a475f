//! Promise: however deep the pipeline, replies come back complete and in request order, with
//! redward's own answers (here: failed AUTHs) slotted exactly where Redis would put them.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_commands_with_local_replies_interleaved_come_back_in_order() {
    let redis = Redis::start();
    // ~1,400 failed logins from one address would trip the brute-force lockout (tested in
    // tests/limits.rs); here they only serve as locally answered requests.
    let proxy = proxy()
        .yaml("limits:\n  auth_failures_per_minute: 1000000\n")
        .start(&redis)
        .await;
    let mut script = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
    let mut want = b"+OK\r\n".to_vec();
    for i in 0..10_000 {
        if i % 7 == 3 {
            script.extend(cmd(&["AUTH", APP_USER, "wrong"]));
            want.extend_from_slice(
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            );
        } else if i % 2 == 0 {
            let v = i.to_string();
            script.extend(cmd(&["SET", &format!("k{i}"), &v]));
            want.extend_from_slice(b"+OK\r\n");
        } else {
            script.extend(cmd(&["INCR", "counter"]));
            let n = (0..=i).filter(|j| j % 7 != 3 && j % 2 == 1).count();
            want.extend_from_slice(format!(":{n}\r\n").as_bytes());
        }
    }
    // The whole pipeline is written before a single reply is read (~300 KB of requests,
    // ~70 KB of replies): redward must keep reading while replies wait.
    let mut raw = proxy.raw().await;
    raw.send(&script).await;
    let got = raw.replies(10_001).await;
    assert_eq!(got.len(), want.len());
    assert!(got == want, "replies differ from the expected order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_split_at_every_byte_boundary_are_answered() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let script = [
        cmd(&["AUTH", APP_USER, APP_PASSWORD]),
        cmd(&["SET", "a", "hello world"]),
        b"GET a\r\n".to_vec(),
        cmd(&["ECHO", "x\r\ny"]),
        cmd(&["QUIT"]),
    ]
    .concat();
    let mut raw = proxy.raw().await;
    for b in &script {
        raw.send(std::slice::from_ref(b)).await;
    }
    assert_eq!(
        String::from_utf8(raw.until_close().await).unwrap(),
        "+OK\r\n+OK\r\n$11\r\nhello world\r\n$4\r\nx\r\ny\r\n+OK\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_through_redward_finishes_without_errors() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let port = proxy.port().to_string();
    let ca = proxy.certs.ca();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-benchmark")
            .args(["--tls", "--cacert"])
            .arg(&ca)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "--user",
                APP_USER,
                "-a",
                APP_PASSWORD,
            ])
            .args(["-c", "8", "-n", "4000", "-P", "16", "-t", "set,get", "-q"])
            .output()
            .expect("run redis-benchmark (apt-get install redis-tools)")
    })
    .await
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SET:") && text.contains("GET:"), "{text}");
    assert!(!text.to_lowercase().contains("error"), "{text}");
    // Every request reached Redis.
    let mut c = redis.admin();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    let calls = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{name}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|s| s.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(calls("set") >= 4000 && calls("get") >= 4000, "{info}");
}
