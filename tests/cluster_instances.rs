//! Promise: several redward instances in front of one Redis Cluster (behind a load balancer
//! or a Kubernetes Service) announce every node on the same port, whatever order they
//! discovered the nodes in, whichever seed they started from, across restarts of any instance
//! or node (`node_listeners.port_map: cluster`, the default). A node that leaves loses its
//! listener on every instance, and its port goes to no other node until the quarantine has
//! passed. A cluster client balanced across the instances reads and writes without an error.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{listener_ports, RedisCluster};
use common::*;

/// The host every instance announces, as a Service name would be.
const ANNOUNCED: &str = "redward.test";

/// One redward instance on its own loopback address, stopped on [`Instance::stop`] or drop.
struct Instance {
    ip: &'static str,
    entry: SocketAddr,
    admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Instance {
    /// redward on `ip`, seeded with `seed`, node listeners on `ports` (both inclusive).
    async fn start(
        certs: &Certs,
        ip: &'static str,
        seed: u16,
        ports: (u16, u16),
        more: &str,
    ) -> Instance {
        let text = format!(
            "listen:\n  - address: \"{ip}:0\"\n    tls: {{ cert: {}, key: {} }}\n\
             admin:\n  address: \"{ip}:0\"\n\
             upstream:\n  cluster: {{ seeds: [\"127.0.0.1:{seed}\"], node_listeners: {{ bind: \"{ip}\", \
             ports: \"{}-{}\", announce_host: \"{ANNOUNCED}\"{more} }} }}\n\
             \x20 username: {UPSTREAM_USER}\n  password: \"{UPSTREAM_PASSWORD}\"\n\
             users:\n  - name: {APP_USER}\n    rules: \"on >{APP_PASSWORD} ~* &* +@all\"\n",
            certs.cert().display(),
            certs.key().display(),
            ports.0,
            ports.1,
        );
        let path = certs.dir.path().join(format!("{ip}.yaml"));
        std::fs::write(&path, &text).expect("write config");
        let cfg = redward::config::load(&path).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
        let server = redward::Server::bind(&cfg).await.expect("bind");
        let entry = server.local_addrs()[0];
        let admin = server.admin_addr().expect("admin");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Instance {
            ip,
            entry,
            admin,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }

    /// A logged-in TLS connection to `port` on this instance's address.
    async fn login(&self, certs: &Certs, port: u16) -> Raw {
        let addr: SocketAddr = format!("{}:{port}", self.ip).parse().expect("address");
        let mut c = Raw::tls(addr, &certs.ca()).await;
        c.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
        assert_eq!(c.replies(1).await, b"+OK\r\n");
        c
    }

    /// Each node's port as `CLUSTER NODES` through this instance's entry names it, by id.
    async fn ports(&self, certs: &Certs) -> BTreeMap<String, u16> {
        let mut c = self.login(certs, self.entry.port()).await;
        let text = ask(&mut c, &["CLUSTER", "NODES"]).await;
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let id = f.next()?.trim();
                let port = f
                    .next()?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                (id.len() == 40).then(|| (id.to_owned(), port))
            })
            .collect()
    }

    /// Until this instance announces `n` nodes (bounded); then their ports by id.
    async fn until_nodes(&self, certs: &Certs, n: usize) -> BTreeMap<String, u16> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ports = self.ports(certs).await;
            if ports.len() == n && ports.values().all(|p| *p != 0) {
                return ports;
            }
            assert!(Instant::now() < deadline, "{}: {ports:?}", self.ip);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = admin_metrics(self.admin).await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }

    /// Whether this instance accepts connections on `port`.
    async fn accepts(&self, port: u16) -> bool {
        tokio::net::TcpStream::connect((self.ip, port))
            .await
            .is_ok()
    }
}

/// Certificates that name both instances' addresses.
fn certs() -> Certs {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["127.0.0.2", "127.0.0.3", ANNOUNCED].map(String::from);
    redward::tls::generate_dev_certs(dir.path(), &names).expect("generate certs");
    Certs { dir }
}

/// A range of `n` ports free on both instances' addresses.
fn shared_range(n: u16) -> (u16, u16) {
    loop {
        let (first, last) = listener_ports(n);
        let free = |ip: &str| (first..=last).all(|p| std::net::TcpListener::bind((ip, p)).is_ok());
        if free("127.0.0.2") && free("127.0.0.3") {
            return (first, last);
        }
    }
}

/// Until `until` holds, or panics with `what` after 40 s.
async fn within<F, Fut>(what: &str, until: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(40);
    while !until().await {
        assert!(Instant::now() < deadline, "not within 40 s: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// redis-py's RedisCluster across both instances (`redis_py_balanced.py`): `(errors,
/// missing, connections per instance)`.
fn redis_py_balanced(certs: &Certs, a: &Instance, n: usize) -> (u64, u64, Vec<u64>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/redis_py_balanced.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(a.ip)
        .arg(a.entry.port().to_string())
        .arg(certs.ca())
        .args([
            APP_USER,
            APP_PASSWORD,
            &n.to_string(),
            "127.0.0.2",
            "127.0.0.3",
        ])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    let numbers = |line: &str| -> Vec<u64> {
        line.split([' ', '='])
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    let mut lines = stdout.lines();
    let counts = numbers(lines.next().unwrap_or_default());
    assert_eq!(counts.len(), 3, "{stdout}{stderr}");
    let conns = numbers(lines.next().unwrap_or_default());
    assert_eq!(counts[0], 2 * n as u64, "{stdout}{stderr}");
    assert_eq!(counts[1], 0, "errors: {stderr}");
    (counts[1], counts[2], conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_announces_every_node_on_the_same_port_across_restarts() {
    same_ports_across_restarts(ServerKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_announces_every_node_on_the_same_port_across_restarts_on_valkey() {
    if let Err(e) = ServerKind::Valkey.binary() {
        eprintln!("skipping: {e}");
        return;
    }
    same_ports_across_restarts(ServerKind::Valkey).await;
}

async fn same_ports_across_restarts(kind: ServerKind) {
    let certs = certs();
    let mut cluster = RedisCluster::start_kind(kind, 3);
    let range = shared_range(8);
    let a = Instance::start(&certs, "127.0.0.2", cluster.nodes[0].port, range, "").await;
    let before = a.until_nodes(&certs, 3).await;

    // A node joins (a replica of the first shard) while only A runs: A puts it last; B,
    // started after, from another seed, discovers it within the first shard.
    cluster.add_node_kind(kind, Some(0));
    let joined = cluster.id(3);
    let on_a = a.until_nodes(&certs, 4).await;
    for (id, port) in &before {
        assert_eq!(
            on_a.get(id),
            Some(port),
            "a node's port changed when another joined"
        );
    }
    let mut b = Instance::start(&certs, "127.0.0.3", cluster.nodes[2].port, range, "").await;
    let on_b = b.until_nodes(&certs, 4).await;
    assert_eq!(on_a, on_b, "A and B announce different ports");

    // B restarted, from a third seed: unchanged.
    b.stop().await;
    let mut b = Instance::start(&certs, "127.0.0.3", cluster.nodes[1].port, range, "").await;
    assert_eq!(b.until_nodes(&certs, 4).await, on_a, "B after its restart");

    // The joined node comes back at a new port with its nodes.conf: the same redward port,
    // on both, and that port reaches it.
    let port = on_a[&joined];
    cluster.nodes[3].restart_at(free_port());
    cluster.wait_ok();
    let (certs, joined, on_a) = (&certs, &joined, &on_a);
    for instance in [&a, &b] {
        within(
            "the moved node is reached at its new address",
            move || async move {
                if instance.until_nodes(certs, 4).await != *on_a {
                    return false;
                }
                let mut c = instance.login(certs, port).await;
                ask(&mut c, &["CLUSTER", "MYID"])
                    .await
                    .contains(joined.as_str())
            },
        )
        .await;
    }

    // A cluster client balanced over both instances, 1,000 keys.
    let (_, missing, conns) = redis_py_balanced(certs, &a, 1000);
    assert_eq!(missing, 0);
    assert!(conns.iter().all(|c| *c > 0), "not balanced: {conns:?}");

    // A restarted too: still the same map; nothing disagreed or failed along the way.
    let mut a = a;
    a.stop().await;
    let a = Instance::start(certs, "127.0.0.2", cluster.nodes[2].port, range, "").await;
    assert_eq!(a.until_nodes(certs, 4).await, *on_a, "A after its restart");
    for i in [&a, &b] {
        assert_eq!(i.metric("redward_cluster_port_map_errors_total").await, 0);
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_frees_its_port_on_every_instance_only_after_the_quarantine() {
    let certs = certs();
    let mut cluster = RedisCluster::start(3);
    cluster.add_node(None);
    // Four ports for four nodes: a node that joins later can only get a freed one.
    let range = shared_range(4);
    let quarantine = ", quarantine: 20s";
    let a = Instance::start(
        &certs,
        "127.0.0.2",
        cluster.nodes[0].port,
        range,
        quarantine,
    )
    .await;
    let b = Instance::start(
        &certs,
        "127.0.0.3",
        cluster.nodes[1].port,
        range,
        quarantine,
    )
    .await;
    let ports = a.until_nodes(&certs, 4).await;
    assert_eq!(b.until_nodes(&certs, 4).await, ports);
    let leaving = cluster.id(3);
    let port = ports[&leaving];
    // A well-behaved client of the node that stays, alongside.
    let stays = cluster.id(0);
    let mut bystander = b.login(&certs, ports[&stays]).await;

    // Forgotten by every node and shut down.
    let out = cluster
        .cli_cluster(&["del-node", &cluster.nodes[0].addr(), &leaving])
        .output()
        .expect("redis-cli --cluster del-node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    cluster.nodes[3].kill();
    let left = Instant::now();
    for i in [&a, &b] {
        within("the leaving node's listener closes", move || async move {
            !i.accepts(port).await
        })
        .await;
    }
    assert!(
        left.elapsed() < Duration::from_secs(30),
        "{:?}",
        left.elapsed()
    );
    // The first instance freed the port at most one reading (5 s) before the last closed,
    // so its 20 s quarantine lasts at least 15 s from here.
    let closed = Instant::now();
    assert_eq!(ask(&mut bystander, &["PING"]).await, "+PONG\r\n");

    // A node joins during the quarantine: no port for it anywhere until the quarantine ends.
    cluster.nodes.remove(3);
    cluster.bus_ports.remove(3);
    cluster.add_node(None);
    let joined = cluster.id(3);
    let deadline = closed + Duration::from_secs(12);
    while Instant::now() < deadline {
        for i in [&a, &b] {
            assert!(
                !i.accepts(port).await,
                "{}: port {port} reused in quarantine",
                i.ip
            );
            assert_eq!(i.metric("redward_cluster_nodes").await, 3);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Then the freed port is the newcomer's, on both.
    let on_a = a.until_nodes(&certs, 4).await;
    assert_eq!(on_a.get(&joined), Some(&port), "{on_a:?}");
    assert_eq!(b.until_nodes(&certs, 4).await, on_a);
    for i in [&a, &b] {
        assert_eq!(i.metric("redward_cluster_nodes_removed_total").await, 1);
        assert_eq!(i.metric("redward_cluster_nodes_added_total").await, 5);
    }
    assert_eq!(ask(&mut bystander, &["PING"]).await, "+PONG\r\n");
}

/// The map as the cluster holds it (`HGETALL` through `redis-cli -c`, as redward's user).
fn map_fields(cluster: &RedisCluster) -> Vec<String> {
    let out = cluster
        .cli()
        .args(["-c", "-p", &cluster.nodes[0].port.to_string()])
        .args(["HGETALL", "redward:cluster:ports"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_reaches_the_port_map_and_a_wiped_map_is_rebuilt() {
    let certs = certs();
    let cluster = RedisCluster::start(3);
    let range = shared_range(8);
    let a = Instance::start(&certs, "127.0.0.2", cluster.nodes[0].port, range, "").await;
    let ports = a.until_nodes(&certs, 3).await;
    let intact = map_fields(&cluster);
    assert!(intact.len() >= 7, "{intact:?}"); // range + 3 nodes, both ways
    let mut bystander = a.login(&certs, a.entry.port()).await;

    // Every node listener: by name, inline and multibulk, in MULTI, from a script that
    // names it or builds it. A user with every permission is refused all of them.
    for port in ports.values() {
        let mut c = a.login(&certs, *port).await;
        for (what, req) in [
            ("read", cmd(&["HGETALL", "redward:cluster:ports"])),
            ("inline", b"HSET redward:cluster:ports n:x 1\r\n".to_vec()),
            ("del", cmd(&["DEL", "redward:cluster:ports"])),
            (
                "script key",
                cmd(&[
                    "EVAL",
                    "return redis.call('DEL', KEYS[1])",
                    "1",
                    "redward:cluster:ports",
                ]),
            ),
        ] {
            let reply = {
                c.send(&req).await;
                String::from_utf8_lossy(&c.replies(1).await).into_owned()
            };
            assert!(reply.starts_with("-NOPERM"), "{what}: {reply}");
        }
        c.send(&cmd(&["MULTI"])).await;
        c.send(&cmd(&["HSET", "redward:cluster:ports", "n:x", "1"]))
            .await;
        c.send(&cmd(&["EXEC"])).await;
        let reply = String::from_utf8_lossy(&c.replies(3).await).into_owned();
        assert!(
            reply.contains("-NOPERM") && reply.contains("-EXECABORT"),
            "{reply}"
        );
        // A script that builds the name at run time runs as the user's upstream identity,
        // whose key patterns leave redward's names out: Redis refuses.
        let built = "return redis.call('HSET', 'redward:' .. 'cluster:ports', 'n:x', '1')";
        let reply = ask(&mut c, &["EVAL", built, "0"]).await;
        assert!(reply.starts_with('-'), "built name: {reply}");
        assert!(!reply.contains("redward:cluster"), "{reply}");
        assert_eq!(ask(&mut bystander, &["PING"]).await, "+PONG\r\n");
    }
    assert_eq!(map_fields(&cluster), intact);

    // FLUSHALL on every node (allowed: nothing else of redward's lives there): the
    // instances put the map back from what they serve, and a later instance agrees.
    for port in ports.values() {
        let mut c = a.login(&certs, *port).await;
        assert_eq!(ask(&mut c, &["FLUSHALL"]).await, "+OK\r\n");
    }
    let cluster_ref = &cluster;
    within("the map is rebuilt", move || async move {
        map_fields(cluster_ref).len() >= 7
    })
    .await;
    let b = Instance::start(&certs, "127.0.0.3", cluster.nodes[1].port, range, "").await;
    assert_eq!(b.until_nodes(&certs, 3).await, ports);
    assert_eq!(a.until_nodes(&certs, 3).await, ports);
    assert_eq!(ask(&mut bystander, &["PING"]).await, "+PONG\r\n");
}
