//! Promise: upstream failures are clear. Redis down at connect: a retryable error. Redis dying
//! mid-stream: pending requests fail, the connection closes, and redward serves new clients as
//! soon as Redis is back.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_at_connect_gives_an_error_and_the_client_can_retry() {
    let mut redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    redis.kill();
    let mut raw = proxy.raw().await;
    raw.send(&[cmd(&["AUTH", APP_USER, APP_PASSWORD]), cmd(&["PING"])].concat())
        .await;
    assert_eq!(
        raw.replies(2).await,
        b"+OK\r\n-ERR upstream Redis unavailable, try again later\r\n"
    );
    redis.restart();
    raw.send(&cmd(&["PING"])).await;
    assert_eq!(
        raw.replies(1).await,
        b"+PONG\r\n",
        "the same connection works once Redis is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_stream_fails_pending_requests_and_new_clients_work_after_restart() {
    let mut redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(
        &[
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["BLPOP", "never", "0"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(raw.replies(1).await, b"+OK\r\n");
    // Let BLPOP reach Redis, then kill Redis under it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while redis.client_count() < 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    redis.kill();
    assert_eq!(
        raw.until_close().await,
        b"-ERR upstream Redis connection lost\r\n"
    );

    redis.restart();
    let mut con = proxy
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_rejecting_redwards_credential_is_reported_not_forwarded() {
    // Redis without the `proxy` user: redward's own AUTH fails.
    let redis = Redis::start_with_acl(vec![
        "user default off".into(),
        format!("user {APP_USER} on >{APP_PASSWORD} ~* &* +@all"),
    ]);
    let proxy = proxy().start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(&[cmd(&["AUTH", APP_USER, APP_PASSWORD]), cmd(&["PING"])].concat())
        .await;
    assert_eq!(
        raw.replies(2).await,
        b"+OK\r\n-ERR upstream Redis unavailable, try again later\r\n"
    );
}
