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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_under_the_shared_connection_fails_the_requests_in_flight_only() {
    // The GET behind the script is held by redward, not Redis: a shared connection keeps one
    // write in flight (`mux.rs`). It was never run, so it is told to try again, not lost.
    let mut redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let login = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
    // An idle client on the shared connection, one with a request in flight on it (a script
    // that never ends), and one with a GET queued behind it.
    let mut idle = proxy.raw().await;
    idle.send(&[login.clone(), cmd(&["PING"])].concat()).await;
    assert_eq!(idle.replies(2).await, b"+OK\r\n+PONG\r\n");
    let mut busy = proxy.raw().await;
    busy.send(&login).await;
    assert_eq!(busy.replies(1).await, b"+OK\r\n");
    busy.send(&cmd(&["EVAL", "while true do end", "0"])).await;
    let mut queued = proxy.raw().await;
    queued.send(&login).await;
    assert_eq!(queued.replies(1).await, b"+OK\r\n");
    // Wait until Redis is inside the script, then send the GET behind it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut c = redis.admin();
        let busy_now = redis::cmd("PING").query::<String>(&mut c).is_err();
        if busy_now || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    queued.send(&cmd(&["GET", "k"])).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    redis.kill();
    let lost = b"-ERR upstream Redis connection lost\r\n";
    assert_eq!(busy.until_close().await, lost);
    assert_eq!(
        queued.replies(1).await,
        b"-ERR upstream Redis unavailable, try again later\r\n"
    );

    redis.restart();
    let mut pong = Vec::new();
    for _ in 0..50 {
        idle.send(&cmd(&["PING"])).await;
        pong = idle.replies(1).await;
        if pong == b"+PONG\r\n" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(pong, b"+PONG\r\n", "the idle client never noticed");
}
