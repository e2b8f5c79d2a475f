//! Promise: new users, rules, limits and certificates take effect without dropping
//! established connections; changed rules apply to a connection's next command; a removed or
//! disabled user's connections are closed; a bad new configuration is refused and the running
//! one stays.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_rules_apply_to_the_next_command_and_removed_users_are_disconnected() {
    let redis = Redis::start();
    let proxy = proxy()
        .user("temp", "on >temppw ~* &* +@all")
        .start(&redis)
        .await;
    let mut app = proxy.raw().await;
    app.send(
        &[
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["SET", "k", "1"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(app.replies(2).await, b"+OK\r\n+OK\r\n");
    let mut temp = proxy.raw().await;
    temp.send(&[cmd(&["AUTH", "temp", "temppw"]), cmd(&["PING"])].concat())
        .await;
    assert_eq!(temp.replies(2).await, b"+OK\r\n+PONG\r\n");

    // New config: app becomes read-only, temp is gone, newbie appears.
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let text = text
        .replace(
            &format!("on >{APP_PASSWORD} ~* &* +@all"),
            &format!("on >{APP_PASSWORD} ~* &* -@all +get"),
        )
        .replace(
            "  - name: temp\n    rules: \"on >temppw ~* &* +@all\"\n",
            "  - name: newbie\n    rules: \"on >newpw ~* &* +@all\"\n",
        );
    std::fs::write(&proxy.config_path, text).unwrap();
    proxy.reloader.reload().expect("reload");

    app.send(&[cmd(&["SET", "k", "2"]), cmd(&["GET", "k"])].concat())
        .await;
    assert_eq!(
        String::from_utf8(app.replies(2).await).unwrap(),
        "-NOPERM this user has no permissions to run the 'set' command\r\n$1\r\n1\r\n"
    );
    temp.send(&cmd(&["PING"])).await;
    assert_eq!(
        temp.until_close().await,
        b"",
        "a removed user's connection must close"
    );
    let mut newbie = proxy.raw().await;
    newbie
        .send(&[cmd(&["AUTH", "newbie", "newpw"]), cmd(&["PING"])].concat())
        .await;
    assert_eq!(newbie.replies(2).await, b"+OK\r\n+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_new_configuration_is_refused_and_the_running_one_stays() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let good = std::fs::read_to_string(&proxy.config_path).unwrap();
    for bad in [
        good.clone() + "bogus_field: 1\n",
        good.replace("server.key", "missing.key"),
        good.replace("+@all", "+nosuchcommand"),
    ] {
        std::fs::write(&proxy.config_path, bad).unwrap();
        assert!(proxy.reloader.reload().is_err());
        let mut raw = proxy.raw().await;
        raw.send(
            &[
                cmd(&["AUTH", APP_USER, APP_PASSWORD]),
                cmd(&["SET", "k", "v"]),
            ]
            .concat(),
        )
        .await;
        assert_eq!(raw.replies(2).await, b"+OK\r\n+OK\r\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_while_old_ones_continue() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut old = proxy.raw().await;
    old.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(old.replies(1).await, b"+OK\r\n");
    // A client pipelining SET/GET the whole time, over a connection made before the rotation.
    let canary = Canary::start(&proxy).await;
    // A new CA and server certificate, written over the files the config names: the watcher
    // notices within a few seconds (bounded wait, no timing assertion).
    let fresh = Certs::new();
    std::fs::copy(fresh.cert(), proxy.certs.cert()).unwrap();
    std::fs::copy(fresh.key(), proxy.certs.key()).unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        if Raw::try_tls_from(proxy.addr, &fresh.ca(), None)
            .await
            .is_ok()
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "the new certificate was never served");
    assert!(
        Raw::try_tls_from(proxy.addr, &proxy.certs.ca(), None)
            .await
            .is_err(),
        "old CA still verifies"
    );
    old.send(&cmd(&["PING"])).await;
    assert_eq!(
        old.replies(1).await,
        b"+PONG\r\n",
        "the established connection survives"
    );
    canary.finish().await;
}
