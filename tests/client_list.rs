//! Promise: `CLIENT LIST` through redward says what each of redward's clients is doing, in
//! the server's own terms: the same `flags` (`b` blocked, `x` in MULTI, `P` subscribed, `t`/`B`
//! tracking, ...), `multi` count, `sub`/`psub`/`ssub`, `cmd`, `db`, `redir` and `resp` as the
//! server shows for the same clients connected to it directly, on Redis 7.0 and Valkey 8.

mod common;

use common::*;

fn auth() -> Vec<u8> {
    cmd(&["AUTH", APP_USER, APP_PASSWORD])
}

/// The fields of `CLIENT LIST` that say what a client is doing, from the line of the client
/// named `name` (ids, addresses, ages and buffer sizes differ by nature).
fn doing(list: &str, name: &str) -> Option<Vec<String>> {
    let line = list
        .lines()
        .find(|l| l.split(' ').any(|f| f == format!("name={name}")))?;
    let keep = [
        "flags", "db", "sub", "psub", "ssub", "multi", "cmd", "user", "redir", "resp",
    ];
    Some(
        line.split(' ')
            .filter(|f| keep.iter().any(|k| f.starts_with(&format!("{k}="))))
            .map(str::to_owned)
            .collect(),
    )
}

/// Runs each scripted client on connections made by `connect`, leaves them in their state,
/// and returns what `CLIENT LIST` (from `observer`) says each is doing, once it says so for
/// all of them (redward publishes within 100 ms; asked until then, bounded).
async fn scripted_clients(
    mut connect: impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = Raw>>>,
    want: Option<&[Vec<String>]>,
) -> (Vec<Vec<String>>, Vec<Raw>) {
    let scripts: [(&str, &[&[&str]], usize); 8] = [
        ("blocked", &[&["BLPOP", "nothing:here", "0"]], 0),
        (
            "queued",
            &[&["MULTI"], &["SET", "x", "1"], &["INCR", "y"]],
            3,
        ),
        (
            "subscriber",
            &[&["SUBSCRIBE", "a", "b"], &["PSUBSCRIBE", "p*"]],
            3,
        ),
        (
            "tracking",
            &[&["CLIENT", "TRACKING", "on", "BCAST"], &["GET", "k"]],
            2,
        ),
        ("selected", &[&["SELECT", "3"], &["CLIENT", "GETNAME"]], 2),
        ("idle", &[&["PING"]], 1),
        // `e` where the server shows it (Valkey); READONLY refused outside a cluster: no `r`.
        ("noevict", &[&["CLIENT", "NO-EVICT", "on"]], 1),
        ("readonly", &[&["READONLY"]], 1),
    ];
    let mut kept = Vec::new();
    for (name, commands, replies) in scripts {
        let mut c = connect().await;
        let mut bytes = auth();
        bytes.extend(cmd(&["CLIENT", "SETNAME", name]));
        for args in commands {
            bytes.extend(cmd(args));
        }
        c.send(&bytes).await;
        c.replies(2 + replies).await;
        kept.push(c);
    }
    let mut observer = connect().await;
    observer.send(&auth()).await;
    observer.replies(1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        observer.send(&cmd(&["CLIENT", "LIST"])).await;
        let list = String::from_utf8_lossy(&observer.replies(1).await).into_owned();
        let got: Option<Vec<Vec<String>>> = scripts
            .iter()
            .map(|(name, _, _)| doing(&list, name))
            .collect();
        if let Some(got) = got {
            if want.is_none_or(|w| w == got.as_slice()) || std::time::Instant::now() > deadline {
                kept.push(observer);
                return (got, kept);
            }
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The same clients straight against `kind` and through redward in front of it.
async fn compare(kind: ServerKind) {
    let Some(redis) = matrix_server(kind) else {
        return;
    };
    let proxy = proxy().start(&redis).await;
    let addr = redis.addr();
    let (direct, _kept) = scripted_clients(
        || {
            let addr = addr.clone();
            Box::pin(async move { Raw::plain(&addr).await })
        },
        None,
    )
    .await;
    // Redis's own view, for the record: blocked `b`, MULTI `x` with 2 queued, subscribed `P`
    // with its counts, tracking `tB`.
    assert!(direct[0].contains(&"flags=b".to_owned()), "{direct:?}");
    let (at, ca) = (proxy.addr, proxy.certs.ca());
    let (via, _kept) = scripted_clients(
        move || {
            let ca = ca.clone();
            Box::pin(async move { Raw::tls(at, &ca).await })
        },
        Some(&direct),
    )
    .await;
    for (d, v) in direct.iter().zip(&via) {
        assert_eq!(v, d, "through redward vs straight to {}", kind.name());
    }
}

// One test for both servers, one after the other: the command table redward learns is the
// process's, and the two servers' `CLIENT LIST` lines differ (`lib-name`, `e`, `T`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_shows_what_each_client_is_doing_as_the_server_does() {
    compare(ServerKind::Redis).await;
    compare(ServerKind::Valkey).await;
}

/// The fields of `SLOWLOG GET`'s entry for the command `args`: (client address, name).
fn slowlog_client(reply: &redis::Value, args: &[&str]) -> Option<(String, String)> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    };
    let redis::Value::Array(entries) = reply else {
        return None;
    };
    entries.iter().find_map(|e| {
        let redis::Value::Array(fields) = e else {
            return None;
        };
        let redis::Value::Array(argv) = fields.get(3)? else {
            return None;
        };
        let argv: Vec<String> = argv.iter().map(text).collect();
        if argv != args {
            return None;
        }
        Some((text(fields.get(4)?), text(fields.get(5)?)))
    })
}

/// `SLOWLOG GET` through redward names the client that sent a slow command from its own
/// connection (its address and name, as `CLIENT INFO` shows them); a command that rode a
/// shared connection keeps what Redis recorded, which names no client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowlog_names_the_client_where_redward_knows_it() {
    for kind in ServerKind::ALL {
        let Some(redis) = matrix_server(kind) else {
            continue;
        };
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(0)
            .query(&mut redis.admin())
            .expect("CONFIG SET");
        let proxy = proxy().start(&redis).await;
        let mut own = as_app(&proxy).await;
        assert_eq!(
            ask(&mut own, &["CLIENT", "SETNAME", "alice"]).await,
            "+OK\r\n"
        );
        // WATCH moves it to a connection of its own.
        assert_eq!(ask(&mut own, &["WATCH", "w"]).await, "+OK\r\n");
        assert_eq!(ask(&mut own, &["SET", "slow:own", "1"]).await, "+OK\r\n");
        let info = ask(&mut own, &["CLIENT", "INFO"]).await;
        let addr = info
            .split(' ')
            .find_map(|f| f.strip_prefix("addr="))
            .expect("addr in CLIENT INFO")
            .to_owned();
        let mut shared = as_app(&proxy).await;
        assert_eq!(
            ask(&mut shared, &["CLIENT", "SETNAME", "bob"]).await,
            "+OK\r\n"
        );
        assert_eq!(
            ask(&mut shared, &["SET", "slow:shared", "1"]).await,
            "+OK\r\n"
        );

        let client = proxy.client();
        let mut c = client.get_connection().expect("connect");
        let _: () = redis::cmd("AUTH")
            .arg(APP_USER)
            .arg(APP_PASSWORD)
            .query(&mut c)
            .expect("AUTH");
        let log: redis::Value = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(100)
            .query(&mut c)
            .expect("SLOWLOG GET");
        let name = kind.name();
        let mine = slowlog_client(&log, &["SET", "slow:own", "1"]);
        assert_eq!(mine, Some((addr, "alice".to_owned())), "{name}: {log:?}");
        let (shared_addr, shared_name) =
            slowlog_client(&log, &["SET", "slow:shared", "1"]).expect("the shared entry");
        assert_eq!(shared_name, "", "{name}");
        assert!(
            shared_addr.starts_with("127.0.0.1:"),
            "{name}: {shared_addr}"
        );
    }
}

/// `INFO clients` through redward counts redward's clients, the ones `CLIENT KILL` acts on:
/// `connected_clients` equals what `CLIENT KILL ... SKIPME no` closes, and `maxclients` is
/// redward's `limits.max_connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_clients_counts_the_clients_client_kill_closes() {
    let redis = Redis::start();
    let proxy = proxy()
        .yaml("limits:\n  max_connections: 321\n")
        .start(&redis)
        .await;
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(as_app(&proxy).await);
    }
    let mut me = as_app(&proxy).await;
    let info = ask(&mut me, &["INFO", "clients"]).await;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {info}"))
            .to_owned()
    };
    assert_eq!(field("connected_clients:"), "5", "{info}");
    assert_eq!(field("maxclients:"), "321", "{info}");
    let killed = ask(
        &mut me,
        &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"],
    )
    .await;
    assert_eq!(killed, ":5\r\n");
}
