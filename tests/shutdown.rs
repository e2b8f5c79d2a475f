//! Promise: on SIGTERM/SIGINT redward stops accepting, lets requests in flight finish within the
//! grace period, then closes.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_answers_requests_in_flight() {
    let redis = Redis::start();
    let mut proxy = proxy().yaml("shutdown_grace: 10s\n").start(&redis).await;
    let mut raw = proxy.raw().await;
    // A request in flight when shutdown starts: BLPOP that an admin will satisfy.
    raw.send(
        &[
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["BLPOP", "sq", "0"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(raw.replies(1).await, b"+OK\r\n");
    let addr = proxy.addr;
    let shutdown = tokio::spawn(async move {
        proxy.shutdown().await;
        proxy
    });
    // New connections are refused once the listener has stopped.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "listener still accepting after shutdown");
    let mut c = redis.admin();
    let _: () = redis::cmd("RPUSH")
        .arg("sq")
        .arg("v")
        .query(&mut c)
        .unwrap();
    assert_eq!(raw.until_close().await, b"*2\r\n$2\r\nsq\r\n$1\r\nv\r\n");
    let _ = shutdown.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_cleanly_on_sigterm() {
    let redis = Redis::start();
    let certs = Certs::new();
    let port = free_port();
    let text = proxy()
        .config_text(&redis, &certs)
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = certs.dir.path().join("redward.yaml");
    std::fs::write(&path, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_redward"))
        .arg("--config")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..250 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "redward did not start listening");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut status = None;
    for _ in 0..500 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("redward did not exit after SIGTERM")
    });
    assert!(status.success(), "{status:?}");
}
