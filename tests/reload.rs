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

/// TLS from `source` with only `versions` offered, optionally after a PROXY `header`.
async fn try_tls(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    source: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    header: Option<&[u8]>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_after_header(addr, ca, Some(source), header.unwrap_or(b""), versions).await?;
    // Served means answered: (TLS 1.3 reports a refused client only after its handshake.)
    tls.write_all(&cmd(&["PING"])).await?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        _ => Err(std::io::ErrorKind::ConnectionReset.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_setting_and_cap_applies_on_reload_setting_by_setting() {
    use rustls::version::{TLS12, TLS13};
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let canary = Canary::start(&proxy).await;
    let (addr, ca) = (proxy.addr, proxy.certs.ca());
    // The file as started, with the bound port written in (a reload matches listeners by
    // address).
    let base = std::fs::read_to_string(&proxy.config_path)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{}", proxy.port()));
    // Rewrites the file with extra listener keys, TLS options and top-level YAML; reloads.
    let reload = |listener: &str, tls: &str, top: &str| {
        let text = base
            .replacen("    tls: {", &format!("{listener}    tls: {{"), 1)
            .replacen(" }\nupstream:", &format!("{tls} }}\nupstream:"), 1)
            + top;
        std::fs::write(&proxy.config_path, text).unwrap();
        proxy.reloader.reload().expect("reload")
    };
    let served = |source: &'static str| {
        let ca = ca.clone();
        async move {
            try_tls(addr, &ca, source, &[&TLS13, &TLS12], None)
                .await
                .is_ok()
        }
    };
    assert!(served("127.0.0.3").await);

    // allow / deny
    reload("    deny: [\"127.0.0.3/32\"]\n", "", "");
    assert!(!served("127.0.0.3").await, "deny applies on reload");
    assert!(served("127.0.0.2").await);
    reload("    allow: [\"127.0.0.1/32\"]\n", "", "");
    assert!(!served("127.0.0.2").await, "allow applies on reload");
    assert!(served("127.0.0.1").await);

    // proxy_protocol: now a header is required, and only from the trusted balancer.
    reload(
        "    proxy_protocol: { trusted: [\"127.0.0.1/32\"] }\n",
        "",
        "",
    );
    assert!(!served("127.0.0.1").await, "a header is now required");
    let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6380\r\n";
    assert!(try_tls(addr, &ca, "127.0.0.1", &[&TLS13], Some(header))
        .await
        .is_ok());
    assert!(try_tls(addr, &ca, "127.0.0.2", &[&TLS13], Some(header))
        .await
        .is_err());
    reload("", "", "");
    assert!(served("127.0.0.2").await);

    // TLS: min_version, then client certificates required.
    reload("", ", min_version: \"1.3\"", "");
    assert!(try_tls(addr, &ca, "127.0.0.1", &[&TLS12], None)
        .await
        .is_err());
    assert!(try_tls(addr, &ca, "127.0.0.1", &[&TLS13], None)
        .await
        .is_ok());
    reload(
        "",
        &format!(", client_ca: {}, client_auth: required", ca.display()),
        "",
    );
    assert!(!served("127.0.0.1").await, "client_auth: required applies");
    reload("", "", "");
    assert!(try_tls(addr, &ca, "127.0.0.1", &[&TLS12], None)
        .await
        .is_ok());

    // Caps: the per-address cap, then the global one (the canary holds one connection).
    reload("", "", "limits:\n  max_connections_per_ip: 1\n");
    let held = Raw::tls_from(addr, &ca, Some("127.0.0.4")).await;
    assert!(!served("127.0.0.4").await, "max_connections_per_ip applies");
    drop(held);
    reload("", "", "limits:\n  max_connections: 1\n");
    let mut refused = false;
    for _ in 0..50 {
        // Connections the checks above opened close asynchronously.
        if !served("127.0.0.5").await {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "max_connections applies");

    // What needs a restart is named, not ignored.
    let warnings = reload(
        "",
        "",
        "workers: 3\nlog: { color: never }\nshutdown_grace: 3s\n",
    );
    for setting in ["workers", "log.color", "shutdown_grace"] {
        assert!(
            warnings.iter().any(|w| w == setting),
            "{setting} not named in {warnings:?}"
        );
    }
    reload("", "", "");
    assert!(served("127.0.0.5").await);
    canary.finish().await;
}
