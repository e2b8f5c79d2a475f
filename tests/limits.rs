//! Promise: hostile clients meet a clear, cheap refusal (Redis's error text, or a closed
//! connection), while a well-behaved client on the same proxy keeps getting correct answers.
//! Every wait here is bounded; nothing asserts timing.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the peer closes; `true` if it closed within `within`.
async fn closes_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_plaintext_resp_on_the_tls_port_are_closed() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let canary = Canary::start(&proxy).await;
    for junk in [
        &b"*1\r\n$4\r\nPING\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0][..],
        &[0u8; 3000][..],
    ] {
        let mut s = Raw::tcp_from(proxy.addr, None).await.unwrap();
        let _ = s.write_all(junk).await;
        assert!(
            closes_within(&mut s, Duration::from_secs(15)).await,
            "not closed for {junk:?}"
        );
    }
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_and_a_slowloris_login_are_closed_at_their_deadlines() {
    let redis = Redis::start();
    let proxy = proxy()
        .yaml("limits:\n  handshake_timeout: 1s\n  auth_timeout: 2s\n")
        .start(&redis)
        .await;
    let canary = Canary::start(&proxy).await;
    // TCP connected, TLS never started.
    let mut stalled = Raw::tcp_from(proxy.addr, None).await.unwrap();
    // Half a ClientHello, then silence.
    let mut half = Raw::tcp_from(proxy.addr, None).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    assert!(closes_within(&mut stalled, Duration::from_secs(15)).await);
    assert!(closes_within(&mut half, Duration::from_secs(15)).await);
    // Slowloris: a login trickled one byte every 250 ms never completes before auth_timeout.
    let mut slow = proxy.raw().await;
    let login = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
    let mut closed = false;
    for b in login.iter().cycle().take(200) {
        if slow.try_send(std::slice::from_ref(b)).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !slow.drain_for(Duration::from_millis(1)).await.is_empty() {
            // Only an error or nothing may come back before the close.
        }
    }
    assert!(
        closed || slow.until_close().await.is_empty(),
        "slowloris kept its connection"
    );
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_redis_protocol_errors_before_and_after_login() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let canary = Canary::start(&proxy).await;
    let login = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
    let big = format!("*2\r\n$4\r\nAUTH\r\n$100000\r\n{}\r\n", "x".repeat(100_000));
    let nested = "*1\r\n".repeat(50);
    let cases: Vec<(bool, Vec<u8>)> = vec![
        (false, b"*2147483647\r\n".to_vec()),
        (true, b"*1\r\n$-2\r\n".to_vec()),
        (true, b"*1\r\n$99999999999\r\n".to_vec()),
        (true, b"*1\r\n$-1\r\n".to_vec()),
        (true, b"*1\r\n$abc\r\n".to_vec()),
        (true, b"*-5\r\nPING\r\n".to_vec()),
        (true, b"*x\r\n".to_vec()),
        (true, nested.clone().into_bytes()),
        (false, nested.into_bytes()),
        (true, b"*2\r\n$4\r\nGE\0T\r\n$1\r\nk\r\nPING\r\n".to_vec()),
        (false, big.into_bytes()),
        (true, b"SET k \"unbalanced\r\n".to_vec()),
        (true, vec![b'a'; 70_000]),
    ];
    for (logged_in, bytes) in cases {
        let mut script = if logged_in { login.clone() } else { Vec::new() };
        script.extend_from_slice(&bytes);
        let mut direct = Raw::plain(&redis.addr()).await;
        let _ = direct.try_send(&script).await;
        let d = direct.drain_for(Duration::from_millis(500)).await;
        let mut via = proxy.raw().await;
        let _ = via.try_send(&script).await;
        let v = via.drain_for(Duration::from_millis(500)).await;
        assert_eq!(
            String::from_utf8_lossy(&v),
            String::from_utf8_lossy(&d),
            "for {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        );
    }
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_command_pipeline_sent_without_reading_is_answered_in_full() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let canary = Canary::start(&proxy).await;
    const N: usize = 1_000_000;
    let mut raw = proxy.raw().await;
    raw.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(raw.replies(1).await, b"+OK\r\n");
    let (mut rd, mut wr) = match raw {
        Raw::Tls(s) => tokio::io::split(*s),
        Raw::Plain(_) => unreachable!(),
    };
    let writer = tokio::spawn(async move {
        let chunk = cmd(&["PING"]).repeat(10_000);
        for _ in 0..N / 10_000 {
            wr.write_all(&chunk).await.expect("write");
        }
        wr.flush().await.expect("flush");
        wr
    });
    // Nobody reads for a while: redward must push back instead of buffering 14 MB of requests
    // and their replies.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let mut carry = 0usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while got < N {
        assert!(
            std::time::Instant::now() < deadline,
            "only {got} of {N} replies"
        );
        let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf[carry..]))
            .await
            .expect("replies stalled")
            .expect("read");
        assert!(n > 0, "connection closed after {got} replies");
        let end = carry + n;
        let whole = end / 7 * 7; // every reply is "+PONG\r\n"
        assert!(
            buf[..whole].chunks(7).all(|c| c == b"+PONG\r\n"),
            "unexpected reply"
        );
        got += whole / 7;
        buf.copy_within(whole..end, 0);
        carry = end - whole;
    }
    assert_eq!(got, N);
    let _ = writer.await;
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_connections_past_max_connections_are_closed_and_the_rest_work() {
    let redis = Redis::start();
    let proxy = proxy()
        .yaml("limits:\n  max_connections: 200\n  max_connections_per_ip: 200\n  connections_per_second_per_ip: 100000\n  handshake_timeout: 60s\n")
        .start(&redis)
        .await;
    let canary = Canary::start(&proxy).await; // holds one of the 200
                                              // 3,000 connections in waves of 500 at once (more than the kernel's SYN backlog at once
                                              // would turn into SYN-cookie phantoms the server never sees).
    let mut opens = Vec::new();
    for _ in 0..6 {
        let wave: Vec<_> = (0..500)
            .map(|_| {
                let addr = proxy.addr;
                tokio::spawn(async move { Raw::tcp_from(addr, None).await })
            })
            .collect();
        for w in wave {
            opens.push(w.await);
        }
    }
    let mut streams = Vec::new();
    let mut not_connected = 0;
    for o in opens {
        match o {
            Ok(Ok(s)) => streams.push(s),
            _ => not_connected += 1,
        }
    }
    // Each refused connection is closed at once; the admitted ones stay open (TLS pending).
    let checks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move { (closes_within(&mut s, Duration::from_secs(3)).await, s) })
        })
        .collect();
    let (mut closed, mut open) = (0, Vec::new());
    for c in checks {
        let (was_closed, s) = c.await.unwrap();
        if was_closed {
            closed += 1;
        } else {
            open.push(s);
        }
    }
    assert!(open.len() <= 200, "{} connections admitted past max_connections ({closed} closed, {not_connected} not connected)", open.len());
    assert_eq!(closed + open.len() + not_connected, 3000);
    assert!(
        closed >= 2000,
        "only {closed} refused connections were closed"
    );
    drop(open);
    // Capacity comes back once they are gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut con = proxy
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect after the flood");
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_wrong_passwords_lock_out_that_address_only() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let canary = Canary::start(&proxy).await;
    let mut attacker = Raw::tls_from(proxy.addr, &proxy.certs.ca(), Some("127.0.0.3")).await;
    let mut script = Vec::new();
    for i in 0..1000 {
        script.extend(cmd(&["AUTH", APP_USER, &format!("guess-{i}")]));
    }
    attacker.send(&script).await;
    let replies = String::from_utf8(attacker.replies(1000).await).unwrap();
    let wrongpass = replies.matches("-WRONGPASS").count();
    let locked = replies
        .matches("-ERR too many failed authentication attempts, try again later")
        .count();
    assert_eq!(wrongpass + locked, 1000);
    assert!(
        wrongpass <= 11 && locked >= 989,
        "wrongpass={wrongpass} locked={locked}"
    );
    // Even the right password is refused from the locked address, unchecked.
    attacker.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(
        attacker.replies(1).await,
        b"-ERR too many failed authentication attempts, try again later\r\n"
    );
    // Another address logs in as the same user.
    let mut other = Raw::tls_from(proxy.addr, &proxy.certs.ca(), Some("127.0.0.4")).await;
    other
        .send(&[cmd(&["AUTH", APP_USER, APP_PASSWORD]), cmd(&["PING"])].concat())
        .await;
    assert_eq!(other.replies(2).await, b"+OK\r\n+PONG\r\n");
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_the_allow_list_is_closed_before_tls() {
    let redis = Redis::start();
    let certs = Certs::new();
    let mut text = proxy().config_text(&redis, &certs);
    text = text.replacen(
        "    tls: {",
        "    allow: [\"127.0.0.1/32\", \"::1/128\"]\n    deny: [\"127.0.0.1/32\"]\n    tls: {",
        1,
    );
    // 127.0.0.1 is allowed, then denied; 127.0.0.0/8 others are not allowed at all.
    text = text.replacen(
        "allow: [\"127.0.0.1/32\", \"::1/128\"]",
        "allow: [\"127.0.0.0/8\"]",
        1,
    );
    let addr = serve_config_text(&certs, &text).await;
    let mut denied = Raw::tcp_from(addr, Some("127.0.0.1")).await.unwrap();
    assert!(closes_within(&mut denied, Duration::from_secs(10)).await);
    assert!(Raw::try_tls_from(addr, &certs.ca(), Some("127.0.0.1"))
        .await
        .is_err());
    let mut allowed = Raw::tls_from(addr, &certs.ca(), Some("127.0.0.5")).await;
    allowed
        .send(&[cmd(&["AUTH", APP_USER, APP_PASSWORD]), cmd(&["PING"])].concat())
        .await;
    assert_eq!(allowed.replies(2).await, b"+OK\r\n+PONG\r\n");
}

/// Serves redward with the usual users plus `slow` (password `slowpw`, every permission)
/// limited to `per_second` commands.
async fn serve_with_slow_user(
    redis: &Redis,
    certs: &Certs,
    per_second: u32,
) -> std::net::SocketAddr {
    let text = proxy()
        .user("slow", "on >slowpw ~* &* +@all")
        .config_text(redis, certs)
        .replace(
            "  - name: slow\n    rules: \"on >slowpw ~* &* +@all\"\n",
            &format!(
                "  - name: slow\n    rules: \"on >slowpw ~* &* +@all\"\n    commands_per_second: {per_second}\n"
            ),
        );
    serve_config_text(certs, &text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_its_command_rate_is_refused_and_others_are_not() {
    let redis = Redis::start();
    let certs = Certs::new();
    let addr = serve_with_slow_user(&redis, &certs, 5).await;
    let mut slow = Raw::tls(addr, &certs.ca()).await;
    let mut script = cmd(&["AUTH", "slow", "slowpw"]);
    for _ in 0..50 {
        script.extend(cmd(&["PING"]));
    }
    slow.send(&script).await;
    let r = String::from_utf8(slow.replies(51).await).unwrap();
    let limited = r
        .matches("-ERR command rate limit exceeded for this user, try again later")
        .count();
    assert!(limited >= 40, "{r}");
    assert!(r.matches("+PONG").count() >= 1);
    let mut app = Raw::tls(addr, &certs.ca()).await;
    let mut script = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
    for _ in 0..50 {
        script.extend(cmd(&["PING"]));
    }
    app.send(&script).await;
    let r = String::from_utf8(app.replies(51).await).unwrap();
    assert_eq!(r.matches("+PONG").count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_but_subscribers_and_blocked_clients_stay() {
    let redis = Redis::start();
    let proxy = proxy()
        .yaml("limits:\n  idle_timeout: 1s\n")
        .start(&redis)
        .await;
    let mut idle = proxy.raw().await;
    idle.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    let mut sub = proxy.raw().await;
    sub.send(
        &[
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["SUBSCRIBE", "ch"]),
        ]
        .concat(),
    )
    .await;
    let mut blocked = proxy.raw().await;
    blocked
        .send(
            &[
                cmd(&["AUTH", APP_USER, APP_PASSWORD]),
                cmd(&["BLPOP", "bq", "0"]),
            ]
            .concat(),
        )
        .await;
    assert_eq!(idle.replies(1).await, b"+OK\r\n");
    assert_eq!(
        sub.replies(2).await.len(),
        b"+OK\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n".len()
    );
    assert_eq!(blocked.replies(1).await, b"+OK\r\n");
    assert_eq!(idle.until_close().await, b"");
    let mut c = redis.admin();
    let _: () = redis::cmd("PUBLISH")
        .arg("ch")
        .arg("still here")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("bq")
        .arg("v")
        .query(&mut c)
        .unwrap();
    assert!(String::from_utf8_lossy(&sub.replies(1).await).contains("still here"));
    assert_eq!(blocked.replies(1).await, b"*2\r\n$2\r\nbq\r\n$1\r\nv\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_disconnected_at_its_output_limit() {
    let redis = Redis::start();
    let proxy = proxy()
        .yaml("limits:\n  output_buffer_limit: { hard: 1mb, soft: 512kb, soft_seconds: 60 }\n")
        .start(&redis)
        .await;
    let canary = Canary::start(&proxy).await;
    let mut sub = proxy.raw().await;
    sub.send(
        &[
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["SUBSCRIBE", "flood"]),
        ]
        .concat(),
    )
    .await;
    let _ = sub.replies(2).await;
    // Publish ~40 MB without the subscriber reading a byte.
    let mut c = redis.admin();
    let payload = "x".repeat(64 * 1024);
    for _ in 0..640 {
        let _: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg("flood")
            .arg(&payload)
            .query(&mut c);
    }
    // The subscriber's connection is closed after at most what socket buffers plus 1 MB hold.
    let got = tokio::time::timeout(Duration::from_secs(60), sub.until_close())
        .await
        .expect("not disconnected");
    assert!(got.len() < 20 * 1024 * 1024, "received {} bytes", got.len());
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_to_its_own_upstream_connection_costs_a_rate_limited_user_no_extra_command() {
    let redis = Redis::start();
    let certs = Certs::new();
    let addr = serve_with_slow_user(&redis, &certs, 2).await;
    let mut slow = Raw::tls(addr, &certs.ca()).await;
    // SET rides the shared connection; SELECT waits for it, then moves (dispatched twice).
    slow.send(
        &[
            cmd(&["AUTH", "slow", "slowpw"]),
            cmd(&["SET", "a", "1"]),
            cmd(&["SELECT", "1"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(slow.replies(3).await, b"+OK\r\n+OK\r\n+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_unknown_commands_count_toward_the_command_rate() {
    let redis = Redis::start();
    let certs = Certs::new();
    let text = proxy()
        .user("narrow", "on >narrowpw ~n:* +get")
        .config_text(&redis, &certs)
        .replace(
            "  - name: narrow\n    rules: \"on >narrowpw ~n:* +get\"\n",
            "  - name: narrow\n    rules: \"on >narrowpw ~n:* +get\"\n    commands_per_second: 100\n",
        );
    let addr = serve_config_text(&certs, &text).await;
    let mut attacker = Raw::tls(addr, &certs.ca()).await;
    let mut script = cmd(&["AUTH", "narrow", "narrowpw"]);
    for i in 0..2000 {
        script.extend(if i % 2 == 0 {
            cmd(&["CONFIG", "GET", "*"])
        } else {
            cmd(&["NOSUCHCOMMAND"])
        });
    }
    attacker.send(&script).await;
    let r = String::from_utf8(attacker.replies(2001).await).unwrap();
    let limited = r
        .matches("-ERR command rate limit exceeded for this user, try again later")
        .count();
    // The bucket holds 100; a few more refill while the pipeline is worked through.
    assert!(
        limited >= 1500,
        "only {limited} of 2000 refusals were charged:\n{}",
        &r[..500]
    );
    // Another user is unaffected.
    let mut app = Raw::tls(addr, &certs.ca()).await;
    app.send(&[cmd(&["AUTH", APP_USER, APP_PASSWORD]), cmd(&["PING"])].concat())
        .await;
    assert_eq!(app.replies(2).await, b"+OK\r\n+PONG\r\n");
}
