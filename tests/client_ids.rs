//! Promise: the ids redward gives its clients (`CLIENT ID`, `HELLO`, `CLIENT LIST`) work where
//! Redis takes a client id: `CLIENT UNBLOCK <id>` unblocks the client named, and `CLIENT
//! TRACKING on REDIRECT <id>` sends invalidations to it (RESP2 client-side caching). An id
//! that is none of redward's clients gets Redis's own answer for a client that does not
//! exist, and never reaches one of redward's own upstream connections.

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn logged_in(proxy: &Proxy) -> Raw {
    let mut c = proxy.raw().await;
    c.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
    c
}

async fn client_id(c: &mut Raw) -> String {
    c.send(&cmd(&["CLIENT", "ID"])).await;
    let reply = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    reply
        .strip_prefix(':')
        .and_then(|r| r.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("CLIENT ID: {reply}"))
        .to_owned()
}

/// `CLIENT UNBLOCK` with `extra` (none, TIMEOUT or ERROR) from another client, until the
/// blocked one is unblocked (`:1`; the BLPOP may not have reached Redis yet at first).
async fn unblock(by: &mut Raw, id: &str, extra: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut args = vec!["CLIENT", "UNBLOCK", id];
    args.extend_from_slice(extra);
    loop {
        by.send(&cmd(&args)).await;
        let got = by.replies(1).await;
        if got == b":1\r\n" {
            return;
        }
        assert_eq!(got, b":0\r\n");
        assert!(Instant::now() < deadline, "client {id} was never unblocked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_unblock_takes_redwards_ids() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let canary = Canary::start(&proxy).await;
    let mut blocked = logged_in(&proxy).await;
    let mut other = logged_in(&proxy).await;
    let id = client_id(&mut blocked).await;
    // TIMEOUT (the default): the blocked client gets the reply of a timeout.
    blocked.send(&cmd(&["BLPOP", "nothing:here", "0"])).await;
    unblock(&mut other, &id, &[]).await;
    assert_eq!(blocked.replies(1).await, b"*-1\r\n");
    // ERROR, inline: Redis's own error text.
    blocked.send(&cmd(&["BLPOP", "nothing:here", "0"])).await;
    unblock(&mut other, &id, &["ERROR"]).await;
    assert_eq!(
        String::from_utf8_lossy(&blocked.replies(1).await),
        "-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
    );
    // The unblocked client goes on as usual.
    blocked.send(&cmd(&["PING"])).await;
    assert_eq!(blocked.replies(1).await, b"+PONG\r\n");
    canary.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_redirect_takes_redwards_ids_and_invalidations_arrive() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    // RESP2 client-side caching: one connection receives the invalidations, another reads.
    let mut inval = logged_in(&proxy).await;
    let id = client_id(&mut inval).await;
    inval
        .send(&cmd(&["SUBSCRIBE", "__redis__:invalidate"]))
        .await;
    assert_eq!(
        String::from_utf8_lossy(&inval.replies(1).await),
        "*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n"
    );
    let mut reader = logged_in(&proxy).await;
    reader
        .send(
            b"CLIENT TRACKING on REDIRECT "
                .iter()
                .chain(id.as_bytes())
                .chain(b"\r\n")
                .copied()
                .collect::<Vec<u8>>()
                .as_slice(),
        )
        .await;
    assert_eq!(reader.replies(1).await, b"+OK\r\n");
    reader.send(&cmd(&["GET", "cached:k"])).await;
    assert_eq!(reader.replies(1).await, b"$-1\r\n");
    let mut writer = logged_in(&proxy).await;
    writer.send(&cmd(&["SET", "cached:k", "v"])).await;
    assert_eq!(writer.replies(1).await, b"+OK\r\n");
    assert_eq!(
        String::from_utf8_lossy(&inval.replies(1).await),
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$8\r\ncached:k\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_not_redwards_clients_never_reach_its_own_connections() {
    let redis = Redis::start();
    // Redis's ids for redward's connections then start past 50, far from redward's own ids.
    for _ in 0..50 {
        drop(redis.admin());
    }
    let proxy = proxy().start(&redis).await;
    let canary = Canary::start(&proxy).await;
    let mut attacker = logged_in(&proxy).await;
    // Every connection Redis has now is redward's (shared, learning, the canary's).
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.admin())
        .expect("CLIENT LIST");
    let ids: Vec<&str> = list
        .lines()
        .filter_map(|l| l.strip_prefix("id="))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(!ids.is_empty());
    for id in ids.iter().copied().chain(["999999"]) {
        attacker.send(&cmd(&["CLIENT", "UNBLOCK", id])).await;
        assert_eq!(attacker.replies(1).await, b":0\r\n", "UNBLOCK {id}");
        attacker
            .send(&cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", id]))
            .await;
        assert_eq!(
            String::from_utf8_lossy(&attacker.replies(1).await),
            "-ERR The client ID you want redirect to does not exist\r\n",
            "REDIRECT {id}"
        );
    }
    // Malformed ids get Redis's own errors.
    attacker.send(&cmd(&["CLIENT", "UNBLOCK", "abc"])).await;
    assert_eq!(
        String::from_utf8_lossy(&attacker.replies(1).await),
        "-ERR value is not an integer or out of range\r\n"
    );
    canary.finish().await;
}

/// A connection straight to `redis`, logged in as the app user.
async fn direct(redis: &Redis) -> Raw {
    let mut c = Raw::plain(&redis.addr()).await;
    assert_eq!(
        ask(&mut c, &["AUTH", APP_USER, APP_PASSWORD]).await,
        "+OK\r\n"
    );
    c
}

/// What `CLIENT GETREDIR` and `CLIENT TRACKINGINFO` say of a client redirecting to
/// `target`'s id, before and after the target leaves, with `<target>` for that id.
async fn redirect_views(mut target: Raw, mut reader: Raw) -> Vec<String> {
    let id = client_id(&mut target).await;
    // The target listens for invalidations, as RESP2 client-side caching has it.
    target
        .send(&cmd(&["SUBSCRIBE", "__redis__:invalidate"]))
        .await;
    target.replies(1).await;
    let mut views = vec![ask(&mut reader, &["CLIENT", "GETREDIR"]).await];
    views.push(ask(&mut reader, &["CLIENT", "TRACKING", "on", "REDIRECT", &id]).await);
    views.push(ask(&mut reader, &["CLIENT", "GETREDIR"]).await);
    views.push(ask(&mut reader, &["CLIENT", "TRACKINGINFO"]).await);
    // The target goes; Redis keeps naming it.
    drop(target);
    tokio::time::sleep(Duration::from_millis(300)).await;
    views.push(ask(&mut reader, &["CLIENT", "GETREDIR"]).await);
    views.push(ask(&mut reader, &["CLIENT", "TRACKINGINFO"]).await);
    let id = format!(":{id}\r\n");
    views
        .iter()
        .map(|v| v.replace(&id, ":<target>\r\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getredir_and_trackinginfo_name_redwards_ids() {
    for kind in ServerKind::ALL {
        let Some(redis) = matrix_server(kind) else {
            continue;
        };
        let proxy = proxy().start(&redis).await;
        let straight = redirect_views(direct(&redis).await, direct(&redis).await).await;
        let through = redirect_views(logged_in(&proxy).await, logged_in(&proxy).await).await;
        assert!(
            straight[2].starts_with(':'),
            "{}: {straight:?}",
            kind.name()
        );
        assert_eq!(through, straight, "{}", kind.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_maxage_acts_on_redwards_clients_where_the_server_takes_it() {
    for kind in ServerKind::ALL {
        let Some(redis) = matrix_server(kind) else {
            continue;
        };
        let proxy = proxy().start(&redis).await;
        let mut straight = direct(&redis).await;
        let mut old = logged_in(&proxy).await;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let mut me = logged_in(&proxy).await;
        // Redis's own texts, whether the server knows MAXAGE (Valkey 8) or not (Redis 7.0).
        for bad in [&["MAXAGE", "0"][..], &["MAXAGE", "-3"], &["MAXAGE", "x"]] {
            let args: Vec<&str> = ["CLIENT", "KILL"].iter().chain(bad).copied().collect();
            assert_eq!(
                ask(&mut me, &args).await,
                ask(&mut straight, &args).await,
                "{}: {bad:?}",
                kind.name()
            );
        }
        let killed = ask(&mut me, &["CLIENT", "KILL", "MAXAGE", "1", "SKIPME", "no"]).await;
        if kind == ServerKind::Valkey {
            // Only the client connected for more than a second.
            assert_eq!(killed, ":1\r\n", "{}", kind.name());
            assert_eq!(old.until_close().await, b"");
            assert_eq!(ask(&mut me, &["PING"]).await, "+PONG\r\n");
        } else {
            assert_eq!(killed, "-ERR syntax error\r\n", "{}", kind.name());
            assert_eq!(ask(&mut old, &["PING"]).await, "+PONG\r\n");
        }
    }
}
