//! Promise: through redward a client cannot tell it is not talking to Redis (same replies, same
//! order), for transactions, pub/sub, RESP3, CLIENT REPLY, MONITOR, RESET, QUIT and big values.
//! Most tests send the same bytes to Redis directly and through redward and compare.

mod common;

use common::*;
use redis::AsyncCommands;

fn login() -> Vec<u8> {
    cmd(&["AUTH", APP_USER, APP_PASSWORD])
}

fn script(cmds: &[&[&str]]) -> Vec<u8> {
    let mut out = login();
    for c in cmds {
        out.extend(cmd(c));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_and_watch_behave_as_in_redis() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let s = script(&[
        &["MULTI"],
        &["SET", "t", "1"],
        &["INCR", "t"],
        &["NOSUCH"],
        &["EXEC"],
        &["MULTI"],
        &["MULTI"],
        &["DISCARD"],
        &["WATCH", "w"],
        &["MULTI"],
        &["SET", "w", "x"],
        &["EXEC"],
        &["MULTI"],
        &["INCR", "t2"],
        &["GET", "t2"],
        &["EXEC"],
        &["QUIT"],
    ]);
    let (direct, via) = both(&redis, &proxy, &s, 18).await;
    assert_eq!(via, direct);
    assert!(via.contains("EXECABORT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_and_skip_in_a_pipeline() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let s = script(&[
        &["SET", "a", "1"],
        &["CLIENT", "REPLY", "SKIP"],
        &["GET", "a"],
        &["GET", "a"],
        &["CLIENT", "REPLY", "OFF"],
        &["GET", "a"],
        &["NOSUCH"],
        &["CLIENT", "REPLY", "SKIP"],
        &["INCR", "a"],
        &["CLIENT", "REPLY", "ON"],
        &["GET", "a"],
        &["CLIENT", "REPLY", "BOGUS"],
        &["CLIENT", "REPLY", "SKIP"],
        &["AUTH", APP_USER, "wrong"],
        &["PING"],
        &["QUIT"],
    ]);
    let (direct, via) = both(&redis, &proxy, &s, 9).await;
    assert_eq!(via, direct);
    assert_eq!(
        via,
        "+OK\r\n+OK\r\n$1\r\n1\r\n+OK\r\n$1\r\n2\r\n-ERR syntax error\r\n+PONG\r\n+OK\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_messages_in_resp2_and_resp3() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    for hello in [&["HELLO", "2"][..], &["HELLO", "3"][..]] {
        let mut sub = proxy.raw().await;
        let s = script(&[
            hello,
            &["SUBSCRIBE", "ch1", "ch2"],
            &["PSUBSCRIBE", "c*"],
            &["PING"],
        ]);
        sub.send(&s).await;
        let head = sub.replies(6).await;
        let mut direct = Raw::plain(&redis.addr()).await;
        direct.send(&s).await;
        let dhead = direct.replies(6).await;
        assert_eq!(normalize(&head), normalize(&dhead));

        let mut c = redis.admin();
        let n: i64 = redis::cmd("PUBLISH")
            .arg("ch1")
            .arg("hello")
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 4, "both subscribers (direct and proxied), on ch1 and c*");
        let got = sub.replies(2).await;
        let dgot = direct.replies(2).await;
        assert_eq!(got, dgot);
        // Then unsubscribe everything, with a local reply (failed AUTH) pipelined behind.
        let tail = [
            cmd(&["UNSUBSCRIBE"]),
            cmd(&["PUNSUBSCRIBE"]),
            cmd(&["AUTH", APP_USER, "bad"]),
            cmd(&["PING"]),
        ]
        .concat();
        sub.send(&tail).await;
        direct.send(&tail).await;
        assert_eq!(sub.replies(5).await, direct.replies(5).await, "{hello:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tracking_invalidation_pushes_in_resp3() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(&script(&[
        &["HELLO", "3"],
        &["CLIENT", "TRACKING", "ON"],
        &["GET", "tk"],
    ]))
    .await;
    let r = raw.replies(4).await;
    assert!(
        String::from_utf8_lossy(&r).ends_with("+OK\r\n_\r\n"),
        "{:?}",
        String::from_utf8_lossy(&r)
    );
    let mut c = redis.admin();
    let _: () = redis::cmd("SET")
        .arg("tk")
        .arg("changed")
        .query(&mut c)
        .unwrap();
    let push = raw.replies(1).await;
    assert_eq!(push, b">2\r\n$10\r\ninvalidate\r\n*1\r\n$2\r\ntk\r\n");
    raw.send(&cmd(&["PING"])).await;
    assert_eq!(raw.replies(1).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_then_pipelined_commands_keep_order() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(&script(&[
        &["BLPOP", "q", "0"],
        &["SET", "after", "1"],
        &["AUTH", "x", "y"],
        &["GET", "after"],
    ]))
    .await;
    assert_eq!(raw.replies(1).await, b"+OK\r\n");
    // Nothing else comes while BLPOP blocks: the later commands wait behind it, as in Redis.
    assert_eq!(
        raw.drain_for(std::time::Duration::from_millis(200)).await,
        b""
    );
    let mut c = redis.admin();
    let _: () = redis::cmd("RPUSH")
        .arg("q")
        .arg("item")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        String::from_utf8(raw.replies(4).await).unwrap(),
        "*2\r\n$1\r\nq\r\n$4\r\nitem\r\n+OK\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n$1\r\n1\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_streams_commands() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(&script(&[&["MONITOR"]])).await;
    assert_eq!(raw.replies(2).await, b"+OK\r\n+OK\r\n");
    let mut c = redis.admin();
    let _: () = redis::cmd("SET").arg("mon").arg("1").query(&mut c).unwrap();
    // The admin connection's own AUTH may be monitored first: read lines until the SET.
    let mut seen = String::new();
    for _ in 0..5 {
        let line = String::from_utf8(raw.replies(1).await).unwrap();
        assert!(line.starts_with('+'), "{line}");
        seen.push_str(&line);
        if line.contains("\"SET\" \"mon\" \"1\"") {
            break;
        }
    }
    assert!(seen.contains("\"SET\" \"mon\" \"1\""), "{seen}");
    raw.send(&cmd(&["RESET"])).await;
    let after = String::from_utf8(raw.replies(1).await).unwrap();
    // Monitor lines may still precede RESET's own reply; RESET's reply ends the stream.
    assert!(
        after.contains("+RESET\r\n") || after.starts_with('+'),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_ends_the_connection_and_later_pipelined_commands_are_ignored() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let s = script(&[&["SET", "q1", "1"], &["QUIT"], &["SET", "q2", "2"]]);
    let mut via = proxy.raw().await;
    via.send(&s).await;
    assert_eq!(via.until_close().await, b"+OK\r\n+OK\r\n+OK\r\n");
    let mut c = redis.admin();
    let q2: Option<String> = redis::cmd("GET").arg("q2").query(&mut c).unwrap();
    assert_eq!(q2, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_replies_come_from_redis_in_resp3() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let s = script(&[
        &["HELLO", "3"],
        &["HSET", "h", "f", "v"],
        &["HGETALL", "h"],
        &["ZADD", "z", "1.5", "m"],
        &["ZSCORE", "z", "m"],
        &["SMEMBERS", "nosuch"],
        &["HELLO", "2"],
        &["HGETALL", "h"],
        &["QUIT"],
    ]);
    let (direct, via) = both(&redis, &proxy, &s, 10).await;
    assert_eq!(via, direct);
    assert!(via.contains("%1\r\n$1\r\nf\r\n$1\r\nv\r\n"), "{via}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_work_like_redis() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let s = format!(
        "AUTH {APP_USER} {APP_PASSWORD}\r\nSET \"in line\" 'it''s'\r\nGET \"in line\"\r\n\r\nset k \"a\\x41\"\nGET k\r\nQUIT\r\n"
    );
    let mut direct = Raw::plain(&redis.addr()).await;
    direct.send(s.as_bytes()).await;
    let mut via = proxy.raw().await;
    via.send(s.as_bytes()).await;
    assert_eq!(via.until_close().await, direct.until_close().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_value_goes_both_ways() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let value: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut con = proxy
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = con.set("big", &value).await.unwrap();
    let back: Vec<u8> = con.get("big").await.unwrap();
    assert!(back == value, "64 MiB value came back different");
    let len: i64 = redis::cmd("STRLEN")
        .arg("big")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(len, 64 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_round_trips_over_tls() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut con = proxy
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    let _: () = con.set("k", "v").await.unwrap();
    let v: String = con.get("k").await.unwrap();
    assert_eq!(v, "v");
    let out = proxy.cli(true, &["GET", "k"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_confirmations_arrive_whatever_the_client_reply_mode() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    // Redis sends (un)subscribe confirmations as pushes, which CLIENT REPLY does not silence.
    for (s, n) in [
        (
            // (CLIENT REPLY ON is refused in a subscriber's context, silently: replies are off.)
            script(&[
                &["CLIENT", "REPLY", "OFF"],
                &["SUBSCRIBE", "a", "b"],
                &["PSUBSCRIBE", "c*"],
                &["UNSUBSCRIBE", "a"],
                &["CLIENT", "REPLY", "ON"],
                &["PING"],
                &["PUNSUBSCRIBE"],
            ]),
            6,
        ),
        (
            script(&[
                &["SUBSCRIBE", "a"],
                &["CLIENT", "REPLY", "OFF"],
                &["ACL", "WHOAMI"],
                &["AUTH", APP_USER, APP_PASSWORD],
                &["PING"],
            ]),
            6,
        ),
        (
            script(&[&["CLIENT", "REPLY", "SKIP"], &["SUBSCRIBE", "a"], &["PING"]]),
            3,
        ),
        (
            script(&[
                &["HELLO", "3"],
                &["CLIENT", "REPLY", "OFF"],
                &["SUBSCRIBE", "a"],
                &["UNSUBSCRIBE"],
                &["CLIENT", "REPLY", "ON"],
                &["PING"],
            ]),
            6,
        ),
    ] {
        let (direct, via) = both(&redis, &proxy, &s, n).await;
        assert_eq!(direct, via);
        assert!(via.contains("subscribe"), "{via}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_nested_thousands_deep_passes_and_the_stream_stays_in_step() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    // A Lua table that contains itself: Redis replies with ~8,000 nested arrays, then an
    // error. The replies after it must still line up.
    let lua = "local a = {}; local b = {a}; a[1] = b; return a";
    let s = script(&[&["EVAL", lua, "0"], &["SET", "k", "v"], &["GET", "k"]]);
    let (direct, via) = both(&redis, &proxy, &s, 4).await;
    assert!(
        direct.contains("-ERR reached lua stack limit"),
        "{}",
        &direct[..100]
    );
    assert_eq!(direct, via);
}
