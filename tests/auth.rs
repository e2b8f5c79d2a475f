//! Promise: authentication works like Redis 7 (AUTH, AUTH user pass, HELLO ... AUTH), with
//! Redis's own texts, and nothing an unauthenticated client sends reaches Redis.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_command_gets_noauth_and_never_reaches_upstream() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let before = redis.client_count();
    let mut raw = proxy.raw().await;
    raw.send(&cmd(&["GET", "k"])).await;
    raw.send(b"SET k v\r\n").await;
    assert_eq!(
        raw.replies(2).await,
        b"-NOAUTH Authentication required.\r\n-NOAUTH Authentication required.\r\n"
    );
    // The connection is open, yet Redis has no connection for it.
    assert_eq!(redis.client_count(), before);
    let mut c = redis.admin();
    let exists: i64 = redis::cmd("EXISTS").arg("k").query(&mut c).unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_wrongpass() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(&cmd(&["AUTH", APP_USER, "nope"])).await;
    raw.send(&cmd(&["AUTH", "nobody", APP_PASSWORD])).await;
    let want = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_eq!(raw.replies(2).await, [&want[..], &want[..]].concat());
    let err = proxy
        .client_as(APP_USER, "nope")
        .get_multiplexed_async_connection()
        .await
        .err();
    let err = err.expect("login must fail").to_string();
    assert!(
        err.contains("WRONGPASS") || err.contains("AuthenticationFailed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_texts_equal_redis_for_every_form() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    // Each script ends with QUIT so both sides close after the same replies.
    let cases: Vec<Vec<&str>> = vec![
        vec!["AUTH"],
        vec!["AUTH", "a", "b", "c"],
        vec!["AUTH", "only-password"],
        vec!["AUTH", APP_USER, APP_PASSWORD],
        vec!["HELLO"],
        vec!["HELLO", "3"],
        vec!["HELLO", "2"],
        vec!["HELLO", "4"],
        vec!["HELLO", "1"],
        vec!["HELLO", "x"],
        vec!["HELLO", "03"],
        vec!["HELLO", "3", "AUTH", APP_USER],
        vec!["HELLO", "3", "AUTH", APP_USER, "bad"],
        vec!["HELLO", "3", "FOO"],
        vec!["HELLO", "3", "SETNAME"],
        vec!["HELLO", "3", "SETNAME", "bad name"],
        vec![
            "HELLO",
            "3",
            "SETNAME",
            "ok",
            "AUTH",
            APP_USER,
            APP_PASSWORD,
        ],
        vec![
            "HELLO",
            "2",
            "AUTH",
            APP_USER,
            APP_PASSWORD,
            "SETNAME",
            "x y",
        ],
        vec!["HELLO", "3", "AUTH", APP_USER, APP_PASSWORD],
        vec!["PING"],
        vec!["NOSUCHCOMMAND", "a", "b"],
        vec!["GET"],
        vec!["CLIENT"],
        vec!["CLIENT", "NOSUCH"],
        vec!["RESET"],
        vec!["QUIT", "extra"],
    ];
    for case in cases {
        let mut script = cmd(&case);
        script.extend(cmd(&["PING"]));
        script.extend(cmd(&["QUIT"]));
        let (direct, via) = both(&redis, &proxy, &script, 3).await;
        assert_eq!(via, direct, "for {case:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_auth_logs_in_and_returns_redis_own_hello_reply() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let script = [
        cmd(&[
            "HELLO",
            "3",
            "AUTH",
            APP_USER,
            APP_PASSWORD,
            "SETNAME",
            "c1",
        ]),
        cmd(&["CLIENT", "GETNAME"]),
        cmd(&["SET", "k", "v"]),
        cmd(&["GET", "k"]),
        cmd(&["QUIT"]),
    ]
    .concat();
    let (direct, via) = both(&redis, &proxy, &script, 5).await;
    assert_eq!(via, direct);
    assert!(
        via.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
        "{via}"
    );
    // The client's credentials never reached Redis: its connection is logged in as `proxy`.
    let mut c = redis.admin();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    assert!(!list.contains(&format!("user={APP_USER} ")), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_frames_get_redis_pre_auth_limits() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    for script in [
        b"*11\r\n".to_vec(),
        format!("*1\r\n${}\r\n", 16385).into_bytes(),
        b"*1\r\n:1\r\n".to_vec(),
        b"*abc\r\n".to_vec(),
    ] {
        let mut direct = Raw::plain(&redis.addr()).await;
        direct.send(&script).await;
        let mut via = proxy.raw().await;
        via.send(&script).await;
        assert_eq!(
            via.until_close().await,
            direct.until_close().await,
            "for {script:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_user_with_nopass_starts_authenticated() {
    let redis = Redis::start();
    let proxy = proxy()
        .user("default", "on nopass ~* &* +@all")
        .start(&redis)
        .await;
    let mut raw = proxy.raw().await;
    raw.send(&cmd(&["SET", "k", "1"])).await;
    raw.send(&cmd(&["AUTH", "whatever"])).await;
    assert_eq!(
        String::from_utf8(raw.replies(2).await).unwrap(),
        "+OK\r\n-ERR AUTH <password> called without any password configured for the default user. \
         Are you sure your configuration is correct?\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_password_form_logs_in_as_default() {
    let redis = Redis::start();
    let proxy = proxy()
        .user("default", "on >defpw ~* &* +@all")
        .start(&redis)
        .await;
    let mut raw = proxy.raw().await;
    raw.send(
        &[
            cmd(&["GET", "k"]),
            cmd(&["AUTH", "defpw"]),
            cmd(&["GET", "k"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        raw.replies(3).await,
        b"-NOAUTH Authentication required.\r\n+OK\r\n$-1\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_user_cannot_log_in() {
    let redis = Redis::start();
    let proxy = proxy()
        .user("old", "off >oldpw ~* &* +@all")
        .start(&redis)
        .await;
    let mut raw = proxy.raw().await;
    raw.send(&cmd(&["AUTH", "old", "oldpw"])).await;
    assert_eq!(
        raw.replies(1).await,
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_logs_the_client_out() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let script = [
        cmd(&["AUTH", APP_USER, APP_PASSWORD]),
        cmd(&["SELECT", "1"]),
        cmd(&["RESET"]),
        cmd(&["GET", "k"]),
        cmd(&["AUTH", APP_USER, APP_PASSWORD]),
        cmd(&["SET", "k", "v"]),
        cmd(&["QUIT"]),
    ]
    .concat();
    let (direct, via) = both(&redis, &proxy, &script, 7).await;
    assert_eq!(via, direct);
    assert_eq!(
        via,
        "+OK\r\n+OK\r\n+RESET\r\n-NOAUTH Authentication required.\r\n+OK\r\n+OK\r\n+OK\r\n"
    );
    // After RESET, SET went to db 0 (RESET selects db 0, in Redis itself).
    let mut c = redis.admin();
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut c).unwrap();
    assert_eq!(v.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sees_noauth_and_wrongpass() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let out = tokio::task::spawn_blocking({
        let port = proxy.port();
        let ca = proxy.certs.ca();
        move || {
            let base = |user: &str, pass: &str| {
                let mut c = std::process::Command::new("redis-cli");
                c.args(["--tls", "--cacert"]).arg(&ca);
                c.args([
                    "-p",
                    &port.to_string(),
                    "--no-auth-warning",
                    "--user",
                    user,
                    "--pass",
                    pass,
                    "PING",
                ]);
                String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
                    + &String::from_utf8_lossy(&c.output().unwrap().stderr)
            };
            (base(APP_USER, APP_PASSWORD), base(APP_USER, "bad"))
        }
    })
    .await
    .unwrap();
    assert_eq!(out.0.trim(), "PONG");
    assert!(out.1.contains("WRONGPASS"), "{}", out.1);
    let noauth = proxy.cli(false, &["GET", "x"]);
    assert!(String::from_utf8_lossy(&noauth.stdout).contains("NOAUTH"));
}
