//! Promise: redward follows the server behind when it changes. A Redis restarted as another
//! version or flavor (here Redis 7.0 → Valkey 8.1 on the same port) is learned again at the
//! next upstream connection: its command table, its ACL checks and its error texts.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What `user` gets for `script` on a new connection (one reply per command, AUTH's first).
async fn ask(proxy: &Proxy, user: &str, password: &str, script: &[&[&str]]) -> String {
    let mut c = proxy.raw().await;
    let mut bytes = cmd(&["AUTH", user, password]);
    for args in script {
        bytes.extend(cmd(args));
    }
    c.send(&bytes).await;
    text(&c.replies(script.len() + 1).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_into_valkey_changes_the_table_the_checks_and_the_texts() {
    if let Err(e) = ServerKind::Valkey.binary() {
        eprintln!("skipping: {e}");
        return;
    }
    let mut redis = Redis::start();
    let proxy = proxy()
        .user("limited", "on >pw ~* -@all +ping")
        .start(&redis)
        .await;
    let capa: &[&str] = &["CLIENT", "CAPA", "redirect"];
    // Redis 7.0: no CLIENT CAPA, and its NOPERM wording.
    let before = ask(&proxy, APP_USER, APP_PASSWORD, &[capa]).await;
    assert_eq!(
        before,
        "+OK\r\n-ERR unknown subcommand 'CAPA'. Try CLIENT HELP.\r\n"
    );
    let denied = ask(&proxy, "limited", "pw", &[&["GET", "k"]]).await;
    assert_eq!(
        denied,
        "+OK\r\n-NOPERM this user has no permissions to run the 'get' command\r\n"
    );

    redis.restart_as(ServerKind::Valkey);
    // The next requests reconnect redward's upstream connections; the server is learned again
    // in the background. Asked until it shows (bounded: no timing is asserted).
    let deadline = Instant::now() + Duration::from_secs(30);
    let valkey_noperm =
        "+OK\r\n-NOPERM User limited has no permissions to run the 'get' command\r\n";
    loop {
        let _ = ask(&proxy, APP_USER, APP_PASSWORD, &[&["PING"]]).await;
        let got = ask(&proxy, "limited", "pw", &[&["GET", "k"]]).await;
        if got == valkey_noperm {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redward did not learn the new server within 30 s: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Valkey's CLIENT CAPA is known now, and reaches the server.
    let after = ask(&proxy, APP_USER, APP_PASSWORD, &[capa]).await;
    assert_eq!(after, "+OK\r\n+OK\r\n");
    // A well-behaved client on the new server is served as before.
    let ok = ask(
        &proxy,
        APP_USER,
        APP_PASSWORD,
        &[&["SET", "a", "1"], &["GET", "a"]],
    )
    .await;
    assert_eq!(ok, "+OK\r\n+OK\r\n$1\r\n1\r\n");
}
