//! Promise: in front of a cluster, redward sends its upstream credential only to a node
//! address it admits (`node_listeners.allow`, by default the seeds' own addresses) and only
//! after the server there has confirmed the node's id where it answers before a login; a node
//! keeps one listener and port while it exists, whatever it announces; a node that leaves
//! loses its listener, and its sessions are closed, never left hanging.
//!
//! The attacks go through redward, as a client allowed `CONFIG SET` would send them. A fake
//! node (a small listener in this file) records every byte it gets, to show the credential
//! never reaches it, while a client alongside keeps getting correct replies.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::cluster::{listener_ports, RedisCluster};
use common::*;

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn login(proxy: &Proxy, port: u16) -> Raw {
    let mut c = Raw::tls(at(port), &proxy.certs.ca()).await;
    c.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
    c
}

async fn metrics(proxy: &Proxy) -> String {
    let admin = proxy.admin.expect("admin endpoint");
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Polls `metric` until `ok` holds (bounded; no timing asserted).
async fn until_metric(proxy: &Proxy, name: &str, ok: impl Fn(u64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics(proxy).await;
        if ok(metric(&text, name)) {
            return;
        }
        assert!(Instant::now() < deadline, "{name}: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// redward in front of `cluster`, with `more` `node_listeners` keys and the admin endpoint.
async fn start(cluster: &RedisCluster, ports: (u16, u16), more: &str) -> Proxy {
    proxy()
        .cluster_with(&[cluster.nodes[0].port], ports, more)
        .yaml("admin:\n  address: \"127.0.0.1:0\"\n")
        .start(&cluster.nodes[0])
        .await
}

/// A key served by node `i` (asked of the node itself).
fn key_of(cluster: &RedisCluster, i: usize) -> String {
    (0..1000)
        .map(|j| format!("app:o{j}"))
        .find(|k| {
            redis::cmd("EXISTS")
                .arg(k)
                .query::<i64>(&mut cluster.nodes[i].admin())
                .is_ok()
        })
        .expect("a key on that node")
}

/// The port of redward's listener for node `id` (`CLUSTER NODES` through redward).
async fn listener_of(proxy: &Proxy, id: &str) -> u16 {
    let mut c = login(proxy, proxy.port()).await;
    c.send(&cmd(&["CLUSTER", "NODES"])).await;
    let nodes = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    nodes
        .lines()
        .find(|l| l.contains(id))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|a| a.split('@').next()?.rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{id} in {nodes}"))
}

/// Waits until node 0 itself redirects `key` to `addr`: the cluster has heard what a node
/// announces now.
async fn until_cluster_moves(cluster: &RedisCluster, key: &str, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let moved = redis::cmd("GET")
            .arg(key)
            .query::<Option<String>>(&mut cluster.nodes[0].admin())
            .map_or_else(|e| e.to_string(), |v| format!("{v:?}"));
        // `addr` as a whole word (not `127.0.0.1:1` within `127.0.0.1:12345`).
        let named = moved.match_indices(addr).any(|(i, _)| {
            let next = moved[i + addr.len()..].chars().next();
            moved[..i].ends_with(' ') && !next.is_some_and(|c| c.is_ascii_digit())
        });
        if named {
            return;
        }
        assert!(Instant::now() < deadline, "{key}: {moved}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the entry's `MOVED` for `key` (a key of another node than the entry's) names
/// `port`: redward has read the topology in which that node announces what it does now.
async fn until_moved_to(proxy: &Proxy, key: &str, port: u16) {
    let want = format!(" 127.0.0.1:{port}\r\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = login(proxy, proxy.port()).await;
        c.send(&cmd(&["GET", key])).await;
        let got = String::from_utf8_lossy(&c.replies(1).await).into_owned();
        if got.starts_with("-MOVED ") && got.ends_with(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "{key}: {got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A well-behaved client: SET and GET of `keys` through the entry, following `MOVED` to
/// redward's node listeners; every reply must be correct.
async fn well_behaved(proxy: &Proxy, round: usize, keys: &[String]) {
    for key in keys {
        let value = format!("{round}-{key}");
        let mut entry = login(proxy, proxy.port()).await;
        entry.send(&cmd(&["SET", key, &value])).await;
        let reply = String::from_utf8_lossy(&entry.replies(1).await).into_owned();
        let mut c = match reply.strip_prefix("-MOVED ") {
            None => {
                assert_eq!(reply, "+OK\r\n", "{key}");
                entry
            }
            Some(rest) => {
                let port: u16 = rest
                    .trim_end()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("{reply}"));
                assert_ne!(port, 0, "{key} sent nowhere: {reply}");
                let mut c = login(proxy, port).await;
                c.send(&cmd(&["SET", key, &value])).await;
                assert_eq!(c.replies(1).await, b"+OK\r\n", "{key}");
                c
            }
        };
        c.send(&cmd(&["GET", key])).await;
        assert_eq!(
            String::from_utf8_lossy(&c.replies(1).await),
            format!("${}\r\n{value}\r\n", value.len()),
            "{key}"
        );
    }
}

/// How a fake node answers.
#[derive(Clone, Copy)]
enum Fake {
    /// Like a node with a login: `-NOAUTH` to everything until `AUTH`, then the real node's
    /// id to `CLUSTER MYID` (an id is public: `CLUSTER NODES` shows it).
    Impostor,
    /// Like a Redis without a login that is not the node: another id to `CLUSTER MYID`.
    Stranger,
}

/// A fake node: a listener that records every byte it receives.
struct FakeNode {
    port: u16,
    connections: Arc<AtomicUsize>,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl FakeNode {
    async fn start(addr: &str, kind: Fake, id: &str) -> FakeNode {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("fake node bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (count, record, id) = (Arc::clone(&connections), Arc::clone(&bytes), id.to_owned());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(fake_node(s, kind, id.clone(), Arc::clone(&record)));
            }
        });
        FakeNode {
            port,
            connections,
            bytes,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn saw(&self, what: &str) -> bool {
        let bytes = self.bytes.lock().unwrap();
        bytes
            .windows(what.len())
            .any(|w| w.eq_ignore_ascii_case(what.as_bytes()))
    }
}

/// Serves one connection: each request is an array of bulk strings (redward's own).
async fn fake_node(
    mut s: tokio::net::TcpStream,
    kind: Fake,
    id: String,
    record: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut logged_in = false;
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        record.lock().unwrap().extend_from_slice(&chunk[..n]);
        while let Some((args, used)) = request(&buf) {
            buf.drain(..used);
            let word = |i: usize| args.get(i).map(|a| a.to_ascii_uppercase());
            let reply = match (kind, word(0).as_deref(), word(1).as_deref()) {
                (Fake::Impostor, Some(b"AUTH"), _) => {
                    logged_in = true;
                    "+OK\r\n".to_owned()
                }
                (Fake::Impostor, ..) if !logged_in => {
                    "-NOAUTH Authentication required.\r\n".to_owned()
                }
                (Fake::Impostor, Some(b"CLUSTER"), Some(b"MYID")) => {
                    format!("${}\r\n{id}\r\n", id.len())
                }
                (Fake::Stranger, Some(b"CLUSTER"), Some(b"MYID")) => {
                    let other = "f".repeat(40);
                    format!("$40\r\n{other}\r\n")
                }
                _ => "+OK\r\n".to_owned(),
            };
            if s.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// One complete request at the start of `buf`: its arguments and its length.
fn request(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let rest = buf.get(at..)?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        Some((&rest[..end], at + end + 2))
    };
    let (head, mut at) = line(0)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::new();
    for _ in 0..n {
        let (len, next) = line(at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        args.push(buf.get(next..next + len)?.to_vec());
        at = next + len + 2;
    }
    (at <= buf.len()).then_some((args, at))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pointed_outside_the_seeds_addresses_never_gets_the_credential() {
    let cluster = RedisCluster::start(3);
    let ports = listener_ports(16);
    // No `allow`: the seeds' own address (127.0.0.1/32) is the only one admitted.
    let proxy = start(&cluster, ports, "").await;
    let keys: Vec<String> = (0..3).map(|i| key_of(&cluster, i)).collect();
    well_behaved(&proxy, 0, &keys).await;

    // The attack: through redward's listener for node 1, its announced address is pointed
    // at a fake node on 127.0.0.2, same port, that answers as the node would.
    let id = cluster.id(1);
    let victim = listener_of(&proxy, &id).await;
    let fake = FakeNode::start(
        &format!("127.0.0.2:{}", cluster.nodes[1].port),
        Fake::Impostor,
        &id,
    )
    .await;
    let mut attacker = login(&proxy, victim).await;
    attacker
        .send(&cmd(&["CONFIG", "SET", "cluster-announce-ip", "127.0.0.2"]))
        .await;
    assert_eq!(attacker.replies(1).await, b"+OK\r\n");
    // Once the entry node says node 1 is at 127.0.0.2, redward reads it too (its MOVED
    // names a listener again, not `:0`).
    let fake_addr = format!("127.0.0.2:{}", cluster.nodes[1].port);
    until_cluster_moves(&cluster, &keys[1], &fake_addr).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = login(&proxy, proxy.port()).await;
        c.send(&cmd(&["GET", &keys[1]])).await;
        let got = String::from_utf8_lossy(&c.replies(1).await).into_owned();
        if got.starts_with("-MOVED ") && !got.ends_with(":0\r\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Clients on every port of the range and the entry, logged in, sending requests.
    for port in std::iter::once(proxy.port()).chain(ports.0..=ports.1) {
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            Raw::try_tls_from(at(port), &proxy.certs.ca(), None),
        )
        .await;
        if let Ok(Ok(mut c)) = connected {
            let mut script = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
            for k in &keys {
                script.extend(cmd(&["GET", k]));
            }
            script.extend(cmd(&["CLUSTER", "SHARDS"]));
            // A transaction: a new upstream connection of its own, dialled now.
            for a in [&["MULTI"][..], &["GET", &keys[1]], &["EXEC"]] {
                script.extend(cmd(a));
            }
            c.send(&script).await;
            c.replies(5 + keys.len()).await;
        }
    }
    assert!(
        !fake.saw(UPSTREAM_PASSWORD),
        "the fake node got redward's credential"
    );
    assert_eq!(fake.connections(), 0, "redward dialled the fake node");
    // Refused, and the cluster's MOVED naming 127.0.0.2 is written as node 1's listener,
    // which still dials 127.0.0.1: the client alongside gets every key, node 1's included.
    until_metric(&proxy, "redward_cluster_nodes_refused_total", |n| n > 0).await;
    until_moved_to(&proxy, &keys[1], victim).await;
    well_behaved(&proxy, 1, &keys).await;
    assert_eq!(fake.connections(), 0, "redward dialled the fake node");
    let text = metrics(&proxy).await;
    assert_eq!(metric(&text, "redward_cluster_nodes"), 3, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycling_a_nodes_announced_port_keeps_its_one_listener() {
    let cluster = RedisCluster::start(3);
    // Three nodes, one port to spare: before, each new announced port took one.
    let ports = listener_ports(4);
    let proxy = start(&cluster, ports, "").await;
    let keys: Vec<String> = (0..3).map(|i| key_of(&cluster, i)).collect();
    let id = cluster.id(2);
    let listener = listener_of(&proxy, &id).await;
    let node2 = cluster.nodes[2].port;
    for announce in [1, 2, 3, 4, 5, node2] {
        let mut c = login(&proxy, listener).await;
        c.send(&cmd(&[
            "CONFIG",
            "SET",
            "cluster-announce-port",
            &announce.to_string(),
        ]))
        .await;
        let reply = c.replies(1).await;
        // The first change moves the listener away from the node itself: later ones are
        // sent straight to it.
        if reply != b"+OK\r\n" {
            let out = cluster
                .cli()
                .args(["-p", &node2.to_string(), "CONFIG", "SET"])
                .args(["cluster-announce-port", &announce.to_string()])
                .output()
                .expect("redis-cli");
            assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
        }
        // Once the cluster says node 2 is at `127.0.0.1:<announce>`, redward writes that
        // as node 2's one listener.
        until_cluster_moves(&cluster, &keys[2], &format!("127.0.0.1:{announce}")).await;
        until_moved_to(&proxy, &keys[2], listener).await;
    }
    let text = metrics(&proxy).await;
    assert_eq!(metric(&text, "redward_cluster_nodes"), 3, "{text}");
    assert_eq!(
        metric(&text, "redward_cluster_nodes_added_total"),
        3,
        "{text}"
    );
    well_behaved(&proxy, 1, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_at_an_admitted_address_is_refused_before_the_credential() {
    let cluster = RedisCluster::start(3);
    let proxy = start(&cluster, listener_ports(8), "").await;
    let keys: Vec<String> = (0..3).map(|i| key_of(&cluster, i)).collect();
    let id = cluster.id(1);
    let victim = listener_of(&proxy, &id).await;
    // A server on the seeds' own address (admitted) that answers without a login, and is
    // not node 1. Node 1's announced port is pointed at it.
    let fake = FakeNode::start("127.0.0.1:0", Fake::Stranger, &id).await;
    let mut attacker = login(&proxy, victim).await;
    attacker
        .send(&cmd(&[
            "CONFIG",
            "SET",
            "cluster-announce-port",
            &fake.port.to_string(),
        ]))
        .await;
    assert_eq!(attacker.replies(1).await, b"+OK\r\n");
    until_cluster_moves(&cluster, &keys[1], &format!("127.0.0.1:{}", fake.port)).await;
    until_moved_to(&proxy, &keys[1], victim).await;
    // Node 1's listener now dials the stranger (clients there are sent until it does).
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.connections() == 0 {
        assert!(Instant::now() < deadline, "the stranger was never dialled");
        // MULTI takes a new upstream connection of its own, dialled now.
        let mut c = login(&proxy, victim).await;
        c.send(&cmd(&["MULTI"])).await;
        c.replies(1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It did not confirm node 1's id: closed before AUTH, and the client was told Redis's
    // retryable error.
    assert!(
        !fake.saw(UPSTREAM_PASSWORD),
        "the stranger got redward's credential"
    );
    assert!(fake.saw("MYID") && !fake.saw("AUTH"));
    let mut c = login(&proxy, victim).await;
    c.send(&cmd(&["GET", &keys[1]])).await;
    assert_eq!(
        String::from_utf8_lossy(&c.replies(1).await),
        "-ERR upstream Redis unavailable, try again later\r\n"
    );
    until_metric(&proxy, "redward_cluster_node_unconfirmed_total", |n| n > 0).await;
    // Alongside, the other nodes' keys are served.
    well_behaved(&proxy, 1, &[keys[0].clone(), keys[2].clone()]).await;
    // Put back, node 1 is served through the same listener.
    let out = cluster
        .cli()
        .args(["-p", &cluster.nodes[1].port.to_string(), "CONFIG", "SET"])
        .args(["cluster-announce-port", &cluster.nodes[1].port.to_string()])
        .output()
        .expect("redis-cli");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    until_cluster_moves(&cluster, &keys[1], &cluster.nodes[1].addr()).await;
    until_moved_to(&proxy, &keys[1], victim).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = login(&proxy, victim).await;
        c.send(&cmd(&["SET", &keys[1], "back"])).await;
        if c.replies(1).await == b"+OK\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 not served again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    well_behaved(&proxy, 2, &keys).await;
    assert!(!fake.saw(UPSTREAM_PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_loses_its_listener_and_its_sessions_are_closed() {
    let mut cluster = RedisCluster::start(3);
    let ports = listener_ports(8);
    let proxy = start(&cluster, ports, "").await;
    cluster.add_node(None);
    let id = cluster.id(3);
    until_metric(&proxy, "redward_cluster_nodes", |n| n == 4).await;
    let port = listener_of(&proxy, &id).await;
    // A client on shared connections and a subscriber (a connection of its own).
    let mut idle = login(&proxy, port).await;
    idle.send(&cmd(&["PING"])).await;
    assert_eq!(idle.replies(1).await, b"+PONG\r\n");
    let mut subscriber = login(&proxy, port).await;
    subscriber.send(&cmd(&["SUBSCRIBE", "news"])).await;
    subscriber.replies(1).await;

    let out = cluster
        .cli_cluster(&["del-node", &cluster.nodes[0].addr(), &id])
        .output()
        .expect("redis-cli --cluster del-node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // After the grace period (15 s, three readings), the listener closes.
    until_metric(&proxy, "redward_cluster_nodes_removed_total", |n| n == 1).await;
    let text = metrics(&proxy).await;
    assert_eq!(metric(&text, "redward_cluster_nodes"), 3, "{text}");
    assert_eq!(
        metric(&text, "redward_cluster_nodes_added_total"),
        4,
        "{text}"
    );
    // Its sessions are closed (bounded wait: never left hanging), and the port refuses.
    let _ = idle.try_send(&cmd(&["PING"])).await;
    let rest = idle.until_close().await;
    assert!(rest.is_empty() || rest.starts_with(b"-"), "{rest:?}");
    subscriber.until_close().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(at(port)).await.is_ok() {
        assert!(Instant::now() < deadline, "{port} still accepts");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The others are served, and the node is gone from redward's replies.
    let keys: Vec<String> = (0..3).map(|i| key_of(&cluster, i)).collect();
    well_behaved(&proxy, 1, &keys).await;
    let mut c = login(&proxy, proxy.port()).await;
    c.send(&cmd(&["CLUSTER", "NODES"])).await;
    let nodes = String::from_utf8_lossy(&c.replies(1).await).into_owned();
    assert!(!nodes.contains(&format!(":{port}@")), "{nodes}");
}
