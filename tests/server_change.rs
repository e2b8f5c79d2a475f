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

/// Starts the redward binary on `config`; `Ok(child)` once it serves, or `Err((exit code,
/// stderr))` if it exits first.
fn start_binary(
    config: &std::path::Path,
    port: u16,
) -> Result<std::process::Child, (Option<i32>, String)> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_redward"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redward");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return Err((status.code(), text(&out.stderr)));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(child);
        }
        assert!(
            Instant::now() < deadline,
            "redward neither served nor exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_a_command_only_the_server_behind_knows_starts_in_front_of_that_server() {
    if let Err(e) = ServerKind::Valkey.binary() {
        eprintln!("skipping: {e}");
        return;
    }
    let acl = vec![
        "user default off".to_owned(),
        format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |upstream: u16, listen: u16| {
        format!(
            "listen:\n  - address: \"127.0.0.1:{listen}\"\n    tls: off\n\
             upstream:\n  address: \"127.0.0.1:{upstream}\"\n  username: {UPSTREAM_USER}\n  password: \"{UPSTREAM_PASSWORD}\"\n\
             users:\n  - name: aof\n    rules: \"on >pw ~* -@all +ping +waitaof\"\n"
        )
    };
    // Redis 7.0 has no WAITAOF: refused, one line naming the user's rules.
    let redis = Redis::start_kind(ServerKind::Redis, acl.clone()).expect("redis");
    let path = dir.path().join("redis.yaml");
    let port = free_port();
    std::fs::write(&path, config(redis.port, port)).expect("write");
    match start_binary(&path, port) {
        Ok(mut child) => {
            let _ = child.kill();
            panic!("started with +waitaof in front of Redis 7.0");
        }
        Err((code, stderr)) => {
            assert_eq!(code, Some(78), "{stderr}"); // EX_CONFIG
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(
                stderr.contains("users[0].rules") && stderr.contains("Unknown command"),
                "{stderr}"
            );
        }
    }
    // Valkey 8.1 has it (Redis 7.2's): the rule is accepted and WAITAOF is allowed.
    let valkey = Redis::start_kind(ServerKind::Valkey, acl).expect("valkey");
    let path = dir.path().join("valkey.yaml");
    let port = free_port();
    std::fs::write(&path, config(valkey.port, port)).expect("write");
    let mut child = start_binary(&path, port).unwrap_or_else(|e| panic!("refused: {e:?}"));
    let mut c = Raw::plain(&format!("127.0.0.1:{port}")).await;
    c.send(
        &[
            cmd(&["AUTH", "aof", "pw"]),
            cmd(&["WAITAOF", "0", "0", "0"]),
            cmd(&["GET", "k"]),
        ]
        .concat(),
    )
    .await;
    let got = text(&c.replies(3).await);
    let _ = child.kill();
    let _ = child.wait();
    assert!(got.starts_with("+OK\r\n*2\r\n:0\r\n:0\r\n"), "{got}");
    assert!(
        got.ends_with("-NOPERM User aof has no permissions to run the 'get' command\r\n"),
        "{got}"
    );
}

/// The same restart noticed by RESP3 clients alone: the server is learned again over a
/// connection of redward's own in RESP2, not the RESP3 pool that reconnected (whose replies
/// the learning does not read), nor a narrow user's identity (which may not run `COMMAND`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_into_valkey_is_learned_when_only_resp3_clients_reconnect() {
    if let Err(e) = ServerKind::Valkey.binary() {
        eprintln!("skipping: {e}");
        return;
    }
    let mut redis = Redis::start();
    let proxy = proxy()
        .user("limited", "on >pw ~* -@all +ping")
        .start(&redis)
        .await;
    let resp3 = |user: &'static str, pw: &'static str, args: &'static [&'static str]| {
        let proxy = &proxy;
        async move {
            let mut c = proxy.raw().await;
            c.send(&cmd(&["HELLO", "3", "AUTH", user, pw])).await;
            c.replies(1).await;
            c.send(&cmd(args)).await;
            text(&c.replies(1).await)
        }
    };
    assert_eq!(
        resp3("limited", "pw", &["GET", "k"]).await,
        "-NOPERM this user has no permissions to run the 'get' command\r\n"
    );
    redis.restart_as(ServerKind::Valkey);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = resp3(APP_USER, APP_PASSWORD, &["PING"]).await;
        let _ = resp3("limited", "pw", &["PING"]).await;
        let got = resp3("limited", "pw", &["GET", "k"]).await;
        if got == "-NOPERM User limited has no permissions to run the 'get' command\r\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not learned within 30 s: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
