//! Promise: redward stands in front of a whole Redis Cluster (`upstream.cluster`). Cluster
//! clients (`redis-cli -c`, redis-py's `RedisCluster`) find every node through redward's
//! listeners, no reply names a node's own address, every node listener applies the ACLs,
//! MULTI/EXEC, Lua and pub/sub keep working within a slot, and a live reshard under traffic
//! loses nothing. A reply forged to look like a redirection opens nothing.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{listener_ports, RedisCluster};
use common::*;

async fn start(cluster: &RedisCluster, ports: (u16, u16)) -> Proxy {
    proxy()
        .user("limited", "on >limited-secret ~app:* &* +@all")
        .cluster(&[cluster.nodes[0].port], ports)
        .start(&cluster.nodes[0])
        .await
}

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A TLS connection to one of redward's listeners, logged in as `user`.
async fn login(proxy: &Proxy, port: u16, user: &str, password: &str) -> Raw {
    let mut c = Raw::tls(at(port), &proxy.certs.ca()).await;
    c.send(&cmd(&["AUTH", user, password])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
    c
}

/// The node listeners' ports, as `CLUSTER NODES` through redward names them.
async fn node_ports(proxy: &Proxy) -> Vec<u16> {
    let mut c = login(proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    c.send(&cmd(&["CLUSTER", "NODES"])).await;
    let text = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    let mut ports: Vec<u16> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter_map(|a| a.split('@').next()?.rsplit(':').next()?.parse().ok())
        .collect();
    ports.sort_unstable();
    ports
}

/// The port of redward's listener for the node serving `key` (following one -MOVED).
async fn port_for(proxy: &Proxy, key: &str) -> u16 {
    let mut c = login(proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    c.send(&cmd(&["EXISTS", key])).await;
    let reply = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    match reply.strip_prefix("-MOVED ") {
        Some(rest) => rest
            .trim_end()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{reply}")),
        None => proxy.port(),
    }
}

/// The port of redward's listener for the node with this id (`CLUSTER NODES` through it).
async fn listener_port_of(proxy: &Proxy, id: &str) -> u16 {
    let mut c = login(proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    c.send(&cmd(&["CLUSTER", "NODES"])).await;
    let text = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    text.lines()
        .find(|l| l.contains(id))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|a| a.split('@').next()?.rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no listener for {id}: {text}"))
}

/// The node listener of the master serving `key`, and that of another master (from
/// `CLUSTER KEYSLOT` and `CLUSTER NODES` through redward).
async fn owner_and_other(proxy: &Proxy, key: &str) -> (u16, u16) {
    let mut c = login(proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    c.send(
        &[
            cmd(&["CLUSTER", "KEYSLOT", key]),
            cmd(&["CLUSTER", "NODES"]),
        ]
        .concat(),
    )
    .await;
    let text = String::from_utf8_lossy(&c.replies(2).await).into_owned();
    let slot: u16 = text
        .strip_prefix(':')
        .and_then(|t| t.split("\r\n").next()?.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    let mut owner = None;
    let mut other = None;
    for line in text.lines().filter(|l| l.contains("master")) {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(port) = fields
            .get(1)
            .and_then(|a| a.split('@').next()?.rsplit(':').next()?.parse::<u16>().ok())
        else {
            continue;
        };
        let serves = fields.iter().skip(8).any(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
        });
        if serves {
            owner = Some(port);
        } else {
            other = Some(port);
        }
    }
    (owner.expect("owner"), other.expect("another master"))
}

fn redis_py(proxy: &Proxy, mode: &str, arg: &str) -> std::process::Child {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/redis_py_cluster.py");
    Command::new("python3")
        .arg(script)
        .arg(proxy.port().to_string())
        .arg(proxy.certs.ca())
        .args([APP_USER, APP_PASSWORD, mode, arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

/// `ops N errors E missing M written W` from the script.
fn outcome(child: std::process::Child) -> (u64, u64, u64, u64) {
    let out = child.wait_with_output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    let n: Vec<u64> = stdout
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(n.len(), 4, "{stdout}{stderr}");
    assert_eq!(n[1], 0, "errors: {stderr}");
    (n[0], n[1], n[2], n[3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_clients_read_and_write_hundreds_of_keys_across_slots() {
    let cluster = RedisCluster::start(3);
    let ports = listener_ports(16);
    let proxy = start(&cluster, ports).await;
    let nodes = node_ports(&proxy).await;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|p| (ports.0..=ports.1).contains(p)));

    // redis-cli -c --tls, following redirections to redward's node listeners.
    let mut script = String::new();
    for i in 0..200 {
        script.push_str(&format!("SET app:cli{i} v{i}\n"));
    }
    for i in 0..200 {
        script.push_str(&format!("GET app:cli{i}\n"));
    }
    let mut child = Command::new("redis-cli")
        .args(["-c", "--tls", "--cacert"])
        .arg(proxy.certs.ca())
        .args(["-h", "127.0.0.1", "-p", &proxy.port().to_string()])
        .args([
            "--user",
            APP_USER,
            "--pass",
            APP_PASSWORD,
            "--no-auth-warning",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(script.as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let answers: Vec<&str> = text.lines().filter(|l| !l.starts_with("-> ")).collect();
    assert_eq!(answers.len(), 400, "{text}");
    assert!(answers[..200].iter().all(|l| *l == "OK"), "{text}");
    for (i, l) in answers[200..].iter().enumerate() {
        assert_eq!(*l, format!("v{i}"));
    }
    // Redirected, and only ever to redward.
    let redirects: Vec<&str> = text.lines().filter(|l| l.starts_with("-> ")).collect();
    assert!(!redirects.is_empty());
    for r in redirects {
        let port: u16 = r.rsplit(':').next().and_then(|p| p.parse().ok()).expect(r);
        assert!(nodes.contains(&port), "{r}");
    }

    // redis-py's RedisCluster over TLS: 300 keys written, read back in a pipeline.
    let (ops, _, missing, _) = outcome(redis_py(&proxy, "rw", "300"));
    assert_eq!((ops, missing), (300, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_address_appears_in_any_reply() {
    no_upstream_address_on(ServerKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_address_appears_in_any_reply_of_valkey() {
    if let Err(why) = ServerKind::Valkey.binary() {
        assert!(std::env::var_os("REDWARD_VALKEY_SERVER").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    no_upstream_address_on(ServerKind::Valkey).await;
}

async fn no_upstream_address_on(kind: ServerKind) {
    let cluster = RedisCluster::start_kind(kind, 3);
    let proxy = start(&cluster, listener_ports(16)).await;
    let nodes = node_ports(&proxy).await;
    let id = cluster.id(1);
    let mut seen = String::new();
    for port in std::iter::once(proxy.port()).chain(nodes.iter().copied()) {
        for resp3 in [false, true] {
            let mut c = login(&proxy, port, APP_USER, APP_PASSWORD).await;
            let mut script = Vec::new();
            if resp3 {
                script.extend(cmd(&["HELLO", "3"]));
            }
            for sub in [
                &["SLOTS"][..],
                &["SHARDS"],
                &["NODES"],
                &["REPLICAS", &id],
                &["SLAVES", &id],
            ] {
                let mut args = vec!["CLUSTER"];
                args.extend_from_slice(sub);
                script.extend(cmd(&args));
            }
            // Keys all over the slots: most get -MOVED from this node.
            for i in 0..30 {
                script.extend(cmd(&["GET", &format!("app:k{i}")]));
            }
            // The same replies inside a transaction, within EXEC's.
            for a in [
                &["MULTI"][..],
                &["CLUSTER", "NODES"],
                &["PING"],
                &["CLUSTER", "SHARDS"],
                &["CLUSTER", "SLOTS"],
                &["CLUSTER", "REPLICAS", &id],
                &["EXEC"],
            ] {
                script.extend(cmd(a));
            }
            c.send(&script).await;
            let got = c.replies(usize::from(resp3) + 5 + 30 + 7).await;
            seen.push_str(&String::from_utf8_lossy(&got));
        }
    }
    assert!(seen.contains("-MOVED "), "{seen}");
    for p in cluster.upstream_ports() {
        for pattern in [format!(":{p}"), format!("@{p}"), format!("\n{p}\r")] {
            assert!(!seen.contains(&pattern), "{pattern} in {seen}");
        }
    }
    for p in &nodes {
        assert!(
            seen.contains(&format!("127.0.0.1:{p}")),
            "{p} not announced"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_app_keys_is_refused_elsewhere_on_every_node() {
    let cluster = RedisCluster::start(3);
    let proxy = start(&cluster, listener_ports(16)).await;
    let nodes = node_ports(&proxy).await;
    for port in std::iter::once(proxy.port()).chain(nodes.iter().copied()) {
        let mut c = login(&proxy, port, "limited", "limited-secret").await;
        let mut script = Vec::new();
        for i in 0..10 {
            script.extend(cmd(&["GET", &format!("other:{i}")]));
            script.extend(cmd(&["SET", &format!("app:{i}"), "1"]));
        }
        c.send(&script).await;
        let got = String::from_utf8_lossy(&c.replies(20).await).into_owned();
        let lines: Vec<&str> = got.split("\r\n").filter(|l| !l.is_empty()).collect();
        for pair in lines.chunks(2) {
            assert_eq!(
                pair[0],
                "-NOPERM this user has no permissions to access one of the keys used as arguments"
            );
            assert!(pair[1] == "+OK" || pair[1].starts_with("-MOVED "), "{got}");
        }
    }
    // Without logging in, nothing on any node listener.
    for port in nodes {
        let mut c = Raw::tls(at(port), &proxy.certs.ca()).await;
        c.send(&cmd(&["GET", "app:1"])).await;
        assert_eq!(
            c.replies(1).await,
            b"-NOAUTH Authentication required.\r\n".to_vec()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_lua_and_pubsub_work_within_a_slot() {
    let cluster = RedisCluster::start(3);
    let proxy = start(&cluster, listener_ports(16)).await;
    let (port, other) = owner_and_other(&proxy, "app:{u1}").await;
    let mut c = login(&proxy, port, APP_USER, APP_PASSWORD).await;
    let mut script = Vec::new();
    for a in [
        &["MULTI"][..],
        &["SET", "app:{u1}:a", "1"],
        &["INCR", "app:{u1}:b"],
        &["EXEC"],
        &[
            "EVAL",
            "return redis.call('INCRBY', KEYS[1], ARGV[1])",
            "1",
            "app:{u1}:c",
            "5",
        ],
        // Across slots, the cluster's own error passes unchanged.
        &["MSET", "app:{u1}:x", "1", "app:{u2}:y", "2"],
    ] {
        script.extend(cmd(a));
    }
    c.send(&script).await;
    assert_eq!(
        String::from_utf8_lossy(&c.replies(6).await),
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:1\r\n:5\r\n\
         -CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );

    // Sharded pub/sub on the slot's node; classic pub/sub across nodes.
    let mut sub = login(&proxy, port, APP_USER, APP_PASSWORD).await;
    sub.send(&cmd(&["SSUBSCRIBE", "app:{u1}"])).await;
    sub.replies(1).await;
    let mut classic = login(&proxy, other, APP_USER, APP_PASSWORD).await;
    classic.send(&cmd(&["SUBSCRIBE", "news"])).await;
    classic.replies(1).await;
    let mut publisher = login(&proxy, port, APP_USER, APP_PASSWORD).await;
    publisher
        .send(
            &[
                cmd(&["SPUBLISH", "app:{u1}", "hi"]),
                cmd(&["PUBLISH", "news", "all"]),
            ]
            .concat(),
        )
        .await;
    assert_eq!(publisher.replies(2).await, b":1\r\n:0\r\n".to_vec());
    assert_eq!(
        String::from_utf8_lossy(&sub.replies(1).await),
        "*3\r\n$8\r\nsmessage\r\n$8\r\napp:{u1}\r\n$2\r\nhi\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&classic.replies(1).await),
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$3\r\nall\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_reshard_of_500_slots_under_traffic_leaves_every_key_readable() {
    let cluster = RedisCluster::start(3);
    let proxy = start(&cluster, listener_ports(16)).await;
    let traffic = redis_py(&proxy, "traffic", "12");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut reshard = cluster.cli_cluster(&["reshard", &cluster.nodes[0].addr()]);
    reshard
        .args([
            "--cluster-from",
            &cluster.id(0),
            "--cluster-to",
            &cluster.id(1),
        ])
        .args(["--cluster-slots", "500", "--cluster-yes"]);
    let reshard = tokio::task::spawn_blocking(move || reshard.output())
        .await
        .expect("join")
        .expect("redis-cli --cluster reshard");
    assert!(
        reshard.status.success(),
        "{}",
        String::from_utf8_lossy(&reshard.stderr)
    );
    let (ops, _, _, written) = tokio::task::spawn_blocking(move || outcome(traffic))
        .await
        .expect("join");
    assert!(ops > 0);
    eprintln!("reshard of 500 slots under traffic: {ops} SET+GET pairs, 0 errors");
    // Every key written is readable through redward afterwards.
    let (_, _, missing, _) = outcome(redis_py(&proxy, "check", &written.to_string()));
    assert_eq!(missing, 0);
    // And the slots really moved.
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut cluster.nodes[0].admin())
        .expect("CLUSTER SLOTS");
    assert!(slots.len() >= 4, "{slots:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_redirection_opens_no_listener_and_others_are_unaffected() {
    let cluster = RedisCluster::start(3);
    let ports = listener_ports(16);
    let proxy = start(&cluster, ports).await;
    let nodes = node_ports(&proxy).await;
    let mut bystander = login(&proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    let mut attacker = login(&proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    let mut script = Vec::new();
    for target in ["10.9.9.9:6379", "127.0.0.1:1", "evil.example.com:6379"] {
        script.extend(cmd(&[
            "EVAL",
            &format!("return redis.error_reply('MOVED 1 {target}')"),
            "0",
        ]));
        script.extend(cmd(&[
            "EVAL",
            &format!("return redis.error_reply('ASK 1 {target}')"),
            "0",
        ]));
    }
    attacker.send(&script).await;
    let got = String::from_utf8_lossy(&attacker.replies(6).await).into_owned();
    assert_eq!(
        got,
        "-MOVED 1 127.0.0.1:0\r\n-ASK 1 127.0.0.1:0\r\n".repeat(3)
    );
    bystander.send(&cmd(&["PING"])).await;
    assert_eq!(bystander.replies(1).await, b"+PONG\r\n".to_vec());
    // Still three node listeners, after the topology was read again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(node_ports(&proxy).await, nodes);
    for p in ports.0..=ports.1 {
        if !nodes.contains(&p) {
            assert!(
                tokio::net::TcpStream::connect(at(p)).await.is_err(),
                "{p} listens"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_node_listener_ports_refuse_to_start_naming_the_field() {
    let cluster = RedisCluster::start(3);
    let certs = Certs::new();
    let (first, _) = listener_ports(2);
    let text = proxy()
        .cluster(&[cluster.nodes[0].port], (first, first + 1))
        .config_text(&cluster.nodes[0], &certs);
    let path = certs.dir.path().join("redward.yaml");
    std::fs::write(&path, text).expect("write");
    let cfg = redward::config::load(&path).expect("config");
    let err = redward::Server::bind(&cfg)
        .await
        .err()
        .expect("three nodes, two ports")
        .to_string();
    assert!(
        err.contains("upstream.cluster.node_listeners.ports") && !err.contains('\n'),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_announces_the_nodes_from_its_map() {
    let cluster = RedisCluster::start(3);
    let map: Vec<String> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("\"{}\": \"redis-{i}.example.com:6380\"", n.addr()))
        .collect();
    let proxy = proxy()
        .upstream_addr(&cluster.nodes[0].addr())
        .upstream_option(&format!("cluster_announce: {{ {} }}", map.join(", ")))
        .start(&cluster.nodes[0])
        .await;
    let mut c = login(&proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    let mut script = cmd(&["CLUSTER", "NODES"]);
    for i in 0..30 {
        script.extend(cmd(&["GET", &format!("app:k{i}")]));
    }
    c.send(&script).await;
    let got = String::from_utf8_lossy(&c.replies(31).await).into_owned();
    assert!(got.contains("-MOVED "), "{got}");
    for p in cluster.upstream_ports() {
        assert!(!got.contains(&format!(":{p}")), "{p} in {got}");
    }
    for i in 0..3 {
        assert!(
            got.contains(&format!("redis-{i}.example.com:6380")),
            "{got}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_point_outlives_its_first_seed() {
    let mut cluster = RedisCluster::start(3);
    let proxy = start(&cluster, listener_ports(16)).await;
    // A key the first seed (the entry's node: no MOVED there) does not serve, and its node.
    let mut key = String::new();
    let mut owner = 0;
    for i in 0..100 {
        let k = format!("app:e{i}");
        let port = port_for(&proxy, &k).await;
        if port != proxy.port() {
            (key, owner) = (k, port);
            break;
        }
    }
    let served_there = format!("127.0.0.1:{owner}\r\n");
    cluster.nodes[0].kill();
    // Within the refresh period (5 s) plus a connect timeout, the entry goes to a live node;
    // asked until it does (bounded; no timing asserted).
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        if let Ok(mut c) = Raw::try_tls_from(proxy.addr, &proxy.certs.ca(), None).await {
            let mut script = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
            script.extend(cmd(&["EXISTS", &key]));
            c.send(&script).await;
            let got = String::from_utf8_lossy(&c.replies(2).await).into_owned();
            // A live node answers: the key's own (`:0`), or another sending it there.
            if got.starts_with("+OK\r\n")
                && (got.ends_with(&served_there) || got.ends_with(":0\r\n"))
            {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the entry still goes to the dead seed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_join_and_fail_over_are_followed() {
    let mut cluster = RedisCluster::start(3);
    let ports = listener_ports(16);
    let proxy = start(&cluster, ports).await;
    // A replica of node 0 joins, then an empty master that takes 200 slots from node 1.
    cluster.add_node(Some(0));
    cluster.add_node(None);
    let out = cluster.reshard(1, 4, 200);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    cluster.wait_ok();
    // redward reads the topology again (every 5 s, or at once when a reply names a node it
    // does not know): asked until it lists five nodes on its own ports (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let nodes = loop {
        let nodes = node_ports(&proxy).await;
        if nodes.len() == 5 && !nodes.contains(&0) {
            break nodes;
        }
        assert!(std::time::Instant::now() < deadline, "{nodes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(nodes.iter().all(|p| (ports.0..=ports.1).contains(p)));
    let (ops, _, missing, _) = outcome(redis_py(&proxy, "rw", "300"));
    assert_eq!((ops, missing), (300, 0));
    // The master that joined was given redward's upstream users before it served: the
    // client's commands there ran as `redward:app` (`upstream.identity: per_user`), and a
    // narrow user's script on its listener is confined by it.
    let joined = &cluster.nodes[4];
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query(&mut joined.admin())
        .expect("ACL USERS");
    assert!(users.iter().any(|u| u == "redward:app"), "{users:?}");
    let joined_port = listener_port_of(&proxy, &cluster.id(4)).await;
    let mut limited = login(&proxy, joined_port, "limited", "limited-secret").await;
    limited
        .send(&cmd(&["EVAL", "return redis.call('DBSIZE')", "0"]))
        .await;
    let got = String::from_utf8_lossy(&limited.replies(1).await).into_owned();
    assert!(got.starts_with(':'), "{got}");
    limited
        .send(&cmd(&["EVAL", "return redis.call('GET', 'other')", "0"]))
        .await;
    let got = String::from_utf8_lossy(&limited.replies(1).await).into_owned();
    assert!(got.contains("user executing the script"), "{got}");
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query(&mut joined.admin())
        .expect("ACL USERS");
    assert!(users.iter().any(|u| u == "redward:limited"), "{users:?}");

    // READONLY on the replica's listener: reads there, per connection.
    let replica_port = {
        let mut c = login(&proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
        c.send(&cmd(&["CLUSTER", "REPLICAS", &cluster.id(0)])).await;
        let text = String::from_utf8_lossy(&c.replies(1).await).into_owned();
        let port: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|a| a.split('@').next()?.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        port
    };
    // The entry goes to the first seed, node 0: a key it serves is answered without MOVED.
    let mut key = None;
    for i in 0..200 {
        let k = format!("app:r{i}");
        if port_for(&proxy, &k).await == proxy.port() {
            key = Some(k);
            break;
        }
    }
    let key = key.expect("a key on node 0");
    let mut writer = login(&proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    writer.send(&cmd(&["SET", &key, "before"])).await;
    assert_eq!(writer.replies(1).await, b"+OK\r\n".to_vec());
    let mut reader = login(&proxy, replica_port, APP_USER, APP_PASSWORD).await;
    let mut script = cmd(&["GET", &key]);
    script.extend(cmd(&["READONLY"]));
    script.extend(cmd(&["WAIT", "0", "0"]));
    reader.send(&script).await;
    let got = String::from_utf8_lossy(&reader.replies(3).await).into_owned();
    assert!(got.starts_with("-MOVED "), "{got}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        reader.send(&cmd(&["GET", &key])).await;
        if reader.replies(1).await == b"$6\r\nbefore\r\n" {
            break; // replicated, read on the replica
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never served the read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The replica takes over from node 0; writes go to it through redward.
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query(&mut cluster.nodes[3].admin())
        .expect("CLUSTER FAILOVER");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query(&mut cluster.nodes[3].admin())
            .expect("ROLE");
        if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.wait_ok();
    let (ops, _, missing, _) = outcome(redis_py(&proxy, "rw", "300"));
    assert_eq!((ops, missing), (300, 0));
    // A write to the old master's slots, followed through redward, lands on the new master.
    let port = port_for(&proxy, &key).await;
    let mut w = login(&proxy, port, APP_USER, APP_PASSWORD).await;
    w.send(&cmd(&["SET", &key, "after"])).await;
    assert_eq!(w.replies(1).await, b"+OK\r\n".to_vec());
    let stored: String = redis::cmd("GET")
        .arg(&key)
        .query(&mut cluster.nodes[3].admin())
        .expect("GET on the new master");
    assert_eq!(stored, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_node_listener_share_its_upstream_connections() {
    let cluster = RedisCluster::start(3);
    let proxy = start(&cluster, listener_ports(16)).await;
    let port = port_for(&proxy, "app:{s}").await;
    let node = cluster
        .nodes
        .iter()
        .position(|n| {
            redis::cmd("EXISTS")
                .arg("app:{s}")
                .query::<i64>(&mut n.admin())
                .is_ok()
        })
        .expect("the node serving app:{s}");
    let before = cluster.nodes[node].client_count();
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = login(&proxy, port, APP_USER, APP_PASSWORD).await;
        c.send(&cmd(&["SET", "app:{s}", &i.to_string()])).await;
        assert_eq!(c.replies(1).await, b"+OK\r\n".to_vec());
        clients.push(c);
    }
    // Twenty clients held open, each served: the node sees redward's shared connection(s).
    let during = cluster.nodes[node].client_count();
    assert!(
        during <= before + 2,
        "{before} -> {during} connections for 20 clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redward_starts_before_its_seed_and_finds_the_cluster_when_it_answers() {
    let mut cluster = RedisCluster::start(3);
    cluster.nodes[0].kill();
    let proxy = start(&cluster, listener_ports(16)).await;
    let mut c = login(&proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    c.send(&cmd(&["SET", "app:x", "1"])).await;
    assert_eq!(
        String::from_utf8_lossy(&c.replies(1).await),
        "-ERR upstream Redis unavailable, try again later\r\n"
    );
    cluster.nodes[0].restart();
    // Asked every second until a seed answers; then the entry serves (bounded, untimed).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Raw::try_tls_from(proxy.addr, &proxy.certs.ca(), None).await {
            let mut script = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
            script.extend(cmd(&["SET", "app:x", "1"]));
            c.send(&script).await;
            let got = String::from_utf8_lossy(&c.replies(2).await).into_owned();
            if got == "+OK\r\n+OK\r\n" || got.starts_with("+OK\r\n-MOVED ") {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster was never found"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(node_ports(&proxy).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_cluster_is_reached_at_its_tls_ports() {
    let certs = Certs::new();
    let cluster = RedisCluster::start_tls(3, &certs);
    let proxy = proxy()
        .upstream_option(&format!(
            "tls: {{ ca: {}, server_name: localhost }}",
            certs.ca().display()
        ))
        .cluster(&[cluster.nodes[0].port], listener_ports(16))
        .start(&cluster.nodes[0])
        .await;
    let nodes = node_ports(&proxy).await;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let mut c = login(&proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    let mut script = Vec::new();
    for sub in ["SLOTS", "SHARDS", "NODES"] {
        script.extend(cmd(&["CLUSTER", sub]));
    }
    for i in 0..30 {
        script.extend(cmd(&["SET", &format!("app:k{i}"), "1"]));
    }
    c.send(&script).await;
    let seen = String::from_utf8_lossy(&c.replies(33).await).into_owned();
    assert!(seen.contains("-MOVED "), "{seen}");
    assert!(seen.contains("tls-port"), "{seen}");
    for p in cluster.upstream_ports() {
        for pattern in [format!(":{p}"), format!("@{p}"), format!("\n{p}\r")] {
            assert!(!seen.contains(&pattern), "{pattern} in {seen}");
        }
    }
    let (ops, _, missing, _) = outcome(redis_py(&proxy, "rw", "100"));
    assert_eq!((ops, missing), (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirections_to_an_unknown_endpoint_name_the_node_listener() {
    let cluster = RedisCluster::start(3);
    let proxy = start(&cluster, listener_ports(16)).await;
    let nodes = node_ports(&proxy).await;
    // `MOVED <slot> ?:<port>`: "the host you asked, at this port".
    for n in &cluster.nodes {
        let out = cluster
            .cli()
            .args(["-p", &n.port.to_string()])
            .args([
                "CONFIG",
                "SET",
                "cluster-preferred-endpoint-type",
                "unknown-endpoint",
            ])
            .output()
            .expect("CONFIG SET");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }
    let mut c = login(&proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
    let mut script = Vec::new();
    for i in 0..20 {
        script.extend(cmd(&["GET", &format!("app:k{i}")]));
    }
    c.send(&script).await;
    let got = String::from_utf8_lossy(&c.replies(20).await).into_owned();
    let moved: Vec<&str> = got.lines().filter(|l| l.starts_with("-MOVED ")).collect();
    assert!(!moved.is_empty(), "{got}");
    for m in moved {
        let port: u16 = m.rsplit(':').next().and_then(|p| p.parse().ok()).expect(m);
        assert!(nodes.contains(&port) && m.contains(" 127.0.0.1:"), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_map_of_hostnames_covers_every_reply() {
    // Kubernetes-style: each node announces a stable hostname, the map lists those names.
    let cluster = RedisCluster::start(3);
    for (i, n) in cluster.nodes.iter().enumerate() {
        let out = cluster
            .cli()
            .args(["-p", &n.port.to_string(), "CONFIG", "SET"])
            .args(["cluster-announce-hostname", &format!("redis-{i}.internal")])
            .args(["cluster-preferred-endpoint-type", "hostname"])
            .output()
            .expect("CONFIG SET");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }
    let map: Vec<String> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "\"redis-{i}.internal:{}\": \"redis-{i}.example.com:6380\"",
                n.port
            )
        })
        .collect();
    let proxy = proxy()
        .upstream_addr(&cluster.nodes[0].addr())
        .upstream_option(&format!("cluster_announce: {{ {} }}", map.join(", ")))
        .start(&cluster.nodes[0])
        .await;
    // Until every node has heard the others' hostnames over the bus (bounded, untimed).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        let mut c = login(&proxy, proxy.port(), APP_USER, APP_PASSWORD).await;
        let mut script = Vec::new();
        for sub in ["SLOTS", "SHARDS", "NODES"] {
            script.extend(cmd(&["CLUSTER", sub]));
        }
        for i in 0..30 {
            script.extend(cmd(&["GET", &format!("app:k{i}")]));
        }
        c.send(&script).await;
        let got = String::from_utf8_lossy(&c.replies(33).await).into_owned();
        if (0..3).all(|i| got.matches(&format!("redis-{i}.example.com")).count() >= 3) {
            break got;
        }
        assert!(std::time::Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(got.contains("-MOVED "), "{got}");
    // No node left unknown (written as port 0).
    assert!(!got.contains(":0@0"), "{got}");
    assert!(
        got.lines()
            .filter(|l| l.starts_with("-MOVED "))
            .all(|l| !l.ends_with(":0")),
        "{got}"
    );
    for p in cluster.upstream_ports() {
        for pattern in [format!(":{p}"), format!("@{p}"), format!("\n{p}\r")] {
            assert!(!got.contains(&pattern), "{pattern} in {got}");
        }
    }
}
