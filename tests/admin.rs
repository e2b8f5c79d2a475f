//! Promise: operators can alert on redward: `/metrics` in Prometheus text format, `/healthz`
//! while the process serves, `/readyz` only while the upstream is reachable and authenticated.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_tell_the_truth() {
    let mut redis = Redis::start();
    let proxy = proxy()
        .user("ro", "on >ropw %R~cache:* -@all +get")
        .yaml("admin:\n  address: \"127.0.0.1:0\"\n")
        .start(&redis)
        .await;
    let admin = proxy.admin.expect("admin endpoint");
    assert_eq!(get(admin, "/healthz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 200);
    assert_eq!(get(admin, "/nope").await.0, 404);

    let mut raw = proxy.raw().await;
    raw.send(
        &[
            cmd(&["AUTH", "ro", "wrong"]),
            cmd(&["AUTH", "ro", "ropw"]),
            cmd(&["GET", "cache:1"]),
            cmd(&["GET", "other"]),
            cmd(&["SET", "cache:1", "v"]),
        ]
        .concat(),
    )
    .await;
    let _ = raw.replies(5).await;
    let (status, metrics) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "redward_connections_accepted_total 1",
        "redward_connections_open 1",
        "redward_auth_failures_total 1",
        "redward_commands_total{result=\"forwarded\"} 1",
        "redward_commands_total{result=\"denied\"} 2",
        "redward_acl_denials_total{reason=\"key\"} 1",
        "redward_acl_denials_total{reason=\"command\"} 1",
        "redward_request_duration_seconds_count 1",
        // The forwarded GET went over the shared upstream connection.
        "redward_upstream_connections{kind=\"shared\"} 1",
        "redward_upstream_connections{kind=\"own\"} 0",
        "redward_upstream_moves_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing `{line}` in:\n{metrics}"
        );
    }

    redis.kill();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // past the readiness cache
    assert_eq!(get(admin, "/readyz").await.0, 503);
    assert_eq!(get(admin, "/healthz").await.0, 200);
    redis.restart();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get(admin, "/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_headers_without_a_body_and_idle_connections_are_bounded() {
    let redis = Redis::start();
    let proxy = proxy()
        .yaml("admin:\n  address: \"127.0.0.1:0\"\n")
        .start(&redis)
        .await;
    let admin = proxy.admin.expect("admin endpoint");
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("Content-Length: 3\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "HEAD has no body: {out:?}");

    // 100 connections that send nothing: at most 32 are held (each for 5 s at most); the
    // rest are closed at once.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    let mut closed = 0;
    for c in &mut idle {
        let mut b = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), c.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 60,
        "only {closed} of 100 idle admin connections were closed"
    );
    drop(idle);
    // Once they are gone, probes are answered again.
    let mut ok = false;
    for _ in 0..100 {
        if get(admin, "/healthz").await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok);
}
