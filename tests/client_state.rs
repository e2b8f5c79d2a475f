//! Promise: connection state that can live in redward does. Clients that open the way
//! today's libraries do (`HELLO 3`, `CLIENT SETINFO` + `CLIENT SETNAME`, `SELECT 1`) keep
//! riding shared upstream connections (ones already in their protocol and database) and
//! still see what Redis would show them; `CLIENT LIST`, `CLIENT INFO` and `CLIENT KILL`
//! describe and act on redward's own clients.

mod common;

use common::*;

fn auth() -> Vec<u8> {
    cmd(&["AUTH", APP_USER, APP_PASSWORD])
}

/// 20 clients run `opening` then a few commands, concurrently and all kept open; each
/// transcript must equal the same script run straight against Redis (HELLO's `id` aside);
/// returns how many connections Redis then has.
async fn twenty_clients(opening: &[&[&str]], replies: usize) -> usize {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut tasks = Vec::new();
    for c in 0..20 {
        let mut script = auth();
        for args in opening {
            script.extend(cmd(args));
        }
        let key = format!("k:{c}");
        script.extend(cmd(&["SET", &key, "v"]));
        script.extend(cmd(&["GET", &key]));
        script.extend(cmd(&["CLIENT", "GETNAME"]));
        script.extend(cmd(&["PING"]));
        let mut via = proxy.raw().await;
        let mut direct = Raw::plain(&redis.addr()).await;
        let n = replies + 5;
        tasks.push(tokio::spawn(async move {
            direct.send(&script).await;
            let d = normalize(&direct.replies(n).await);
            via.send(&script).await;
            let v = normalize(&via.replies(n).await);
            assert_eq!(v, d, "client {c}: through redward vs straight to Redis");
            (via, direct)
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await.expect("client task"));
    }
    // Redis's connections: the 20 direct ones, the admin one asking, and redward's.
    let upstream = redis.client_count() - 20;
    drop(open);
    upstream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_opening_with_hello_3_share_a_few_upstream_connections() {
    let upstream = twenty_clients(&[&["HELLO", "3"]], 1).await;
    assert!(
        upstream <= 3,
        "redward holds {upstream} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_opening_with_client_setinfo_and_setname_share_a_few_upstream_connections() {
    // redis-py 5+, Jedis 5+, go-redis v9 and Lettuce open like this. Redis 7.0 does not know
    // SETINFO: its error, then the name, as Redis itself would answer.
    let upstream = twenty_clients(
        &[
            &["CLIENT", "SETINFO", "LIB-NAME", "redis-py"],
            &["CLIENT", "SETINFO", "LIB-VER", "5.0.1"],
            &["CLIENT", "SETNAME", "worker"],
        ],
        3,
    )
    .await;
    assert!(
        upstream <= 3,
        "redward holds {upstream} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_in_database_1_share_a_few_upstream_connections() {
    let upstream = twenty_clients(&[&["SELECT", "1"]], 1).await;
    assert!(
        upstream <= 3,
        "redward holds {upstream} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_and_protocol_stick_to_the_client_across_shared_and_own_connections() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    // HELLO 3 and SELECT 2 on shared connections, then a transaction on the client's own
    // connection, then RESET back to RESP2 and database 0: same replies as Redis gives.
    let script = [
        auth(),
        cmd(&["HELLO", "3"]),
        cmd(&["SELECT", "2"]),
        cmd(&["SET", "a", "in-2"]),
        cmd(&["HGETALL", "nothing"]),
        cmd(&["MULTI"]),
        cmd(&["GET", "a"]),
        cmd(&["EXEC"]),
        cmd(&["SELECT", "9"]),
        cmd(&["GET", "a"]),
        cmd(&["RESET"]),
        cmd(&["AUTH", APP_USER, APP_PASSWORD]),
        cmd(&["GET", "a"]),
        cmd(&["HGETALL", "nothing"]),
        cmd(&["SELECT", "99"]),
        cmd(&["SELECT", "x"]),
    ]
    .concat();
    let (direct, via) = both(&redis, &proxy, &script, 16).await;
    assert_eq!(via, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_info_and_list_describe_redwards_own_clients() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut a = proxy.raw().await;
    let mut b = proxy.raw().await;
    a.send(
        &[
            auth(),
            cmd(&["CLIENT", "SETNAME", "alpha"]),
            cmd(&["CLIENT", "ID"]),
        ]
        .concat(),
    )
    .await;
    let a_replies = String::from_utf8_lossy(&a.replies(3).await).into_owned();
    let a_id: u64 = a_replies
        .rsplit(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .expect("CLIENT ID is an integer");
    b.send(&[auth(), cmd(&["HELLO", "3"]), cmd(&["CLIENT", "INFO"])].concat())
        .await;
    let b_replies = String::from_utf8_lossy(&b.replies(3).await).into_owned();
    // RESP3: CLIENT INFO is a verbatim string, as Redis sends it.
    assert!(
        b_replies.contains("=") && b_replies.contains("txt:id="),
        "{b_replies}"
    );
    assert!(b_replies.contains(" resp=3"), "{b_replies}");
    // A client that only logged in is listed with its user too.
    let mut c = proxy.raw().await;
    c.send(&[auth(), cmd(&["PING"])].concat()).await;
    assert_eq!(c.replies(2).await, b"+OK\r\n+PONG\r\n");
    a.send(&cmd(&["CLIENT", "LIST"])).await;
    let list = String::from_utf8_lossy(&a.replies(1).await).into_owned();
    let lines: Vec<&str> = list.lines().filter(|l| l.contains("id=")).collect();
    assert_eq!(lines.len(), 3, "{list}");
    for line in &lines {
        assert!(line.contains(&format!(" user={APP_USER} ")), "{line}");
    }
    let alpha = lines
        .iter()
        .find(|l| l.contains(" name=alpha "))
        .expect("alpha is listed");
    assert!(alpha.contains(&format!("id={a_id} ")), "{alpha}");
    assert!(alpha.contains(&format!(" user={APP_USER} ")), "{alpha}");
    assert!(alpha.contains(" cmd=client|list "), "{alpha}");
    assert!(
        alpha.contains(&format!("laddr=127.0.0.1:{} ", proxy.port())),
        "{alpha}"
    );
    // Redis's own CLIENT LIST is not shown: no line names Redis's port.
    assert!(!list.contains(&format!(
        ":{} ",
        redis.addr().rsplit(':').next().unwrap_or("")
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_closes_the_clients_it_names_and_only_those() {
    let redis = Redis::start();
    let proxy = proxy()
        .user("viewer", "on >viewer-secret ~* &* +@all -client|kill")
        .start(&redis)
        .await;
    let mut victim = proxy.raw().await;
    victim
        .send(
            &[
                auth(),
                cmd(&["CLIENT", "SETNAME", "victim"]),
                cmd(&["CLIENT", "ID"]),
            ]
            .concat(),
        )
        .await;
    let r = String::from_utf8_lossy(&victim.replies(3).await).into_owned();
    let id = r.rsplit(':').next().map(str::trim).unwrap_or("").to_owned();
    let mut bystander = proxy.raw().await;
    bystander.send(&auth()).await;
    bystander.replies(1).await;
    // A user without +client|kill is refused with Redis's NOPERM text.
    let mut viewer = proxy.raw().await;
    viewer
        .send(
            &[
                cmd(&["AUTH", "viewer", "viewer-secret"]),
                cmd(&["CLIENT", "KILL", "ID", &id]),
            ]
            .concat(),
        )
        .await;
    let refused = String::from_utf8_lossy(&viewer.replies(2).await).into_owned();
    assert!(refused.contains("-NOPERM"), "{refused}");
    // Redis's errors for malformed filters.
    let mut killer = proxy.raw().await;
    killer
        .send(
            &[
                auth(),
                cmd(&["CLIENT", "KILL", "ID", "0"]),
                cmd(&["CLIENT", "KILL", "TYPE", "bogus"]),
                cmd(&["CLIENT", "KILL", "USER", "nobody"]),
                cmd(&["CLIENT", "KILL", "1.2.3.4:5"]),
                cmd(&["CLIENT", "KILL", "ID", &id]),
            ]
            .concat(),
        )
        .await;
    let got = String::from_utf8_lossy(&killer.replies(6).await).into_owned();
    assert_eq!(
        got,
        "+OK\r\n-ERR client-id should be greater than 0\r\n-ERR Unknown client type 'bogus'\r\n\
         -ERR No such user 'nobody'\r\n-ERR No such client\r\n:1\r\n"
    );
    let rest = victim.until_close().await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // Everyone else is still served.
    bystander.send(&cmd(&["PING"])).await;
    assert_eq!(bystander.replies(1).await, b"+PONG\r\n");
    killer.send(&cmd(&["PING"])).await;
    assert_eq!(killer.replies(1).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cycling_databases_and_protocols_costs_a_bounded_number_of_connections() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut hostile = proxy.raw().await;
    let mut script = auth();
    for round in 0..5 {
        for db in 0..16 {
            script.extend(cmd(&["SELECT", &db.to_string()]));
            script.extend(cmd(&[
                "HELLO",
                if (db + round) % 2 == 0 { "2" } else { "3" },
            ]));
        }
    }
    hostile.send(&script).await;
    hostile.replies(1 + 5 * 16 * 2).await;
    let mut calm = proxy.raw().await;
    calm.send(&[auth(), cmd(&["SET", "x", "1"]), cmd(&["GET", "x"])].concat())
        .await;
    assert_eq!(calm.replies(3).await, b"+OK\r\n+OK\r\n$1\r\n1\r\n");
    // At most one shared connection per database and protocol (Redis's 16 databases × 2)
    // for the user, however often the client switches, and the one of redward's own user
    // every client starts on (`upstream.identity: per_user`).
    let upstream = redis.client_count();
    assert!(upstream <= 32 + 1, "{upstream} upstream connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeps_its_id_in_hello_and_client_id_on_shared_and_own_connections() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut c = proxy.raw().await;
    let hello_id = |reply: &[u8]| {
        let text = String::from_utf8_lossy(reply).into_owned();
        let rest = text.split("$2\r\nid\r\n:").nth(1).unwrap_or("").to_owned();
        rest.split("\r\n").next().unwrap_or("").to_owned()
    };
    // HELLO 3 on a shared connection.
    c.send(&[auth(), cmd(&["HELLO", "3"])].concat()).await;
    let first = hello_id(&c.replies(2).await);
    c.send(&cmd(&["CLIENT", "ID"])).await;
    assert_eq!(c.replies(1).await, format!(":{first}\r\n").into_bytes());
    // WATCH moves the client to a connection of its own; HELLO there says the same id.
    c.send(&[cmd(&["WATCH", "w"]), cmd(&["HELLO", "3"])].concat())
        .await;
    assert_eq!(hello_id(&c.replies(2).await), first);
    c.send(&cmd(&["CLIENT", "ID"])).await;
    assert_eq!(c.replies(1).await, format!(":{first}\r\n").into_bytes());
}
