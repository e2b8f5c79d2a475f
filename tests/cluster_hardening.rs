//! Promise: in front of a cluster, redward sends its credential only to node addresses within
//! `node_listeners.allow` (default: the seeds' networks), and a node keeps its listener when
//! the address it announces changes. A client allowed `CONFIG SET` points a node's
//! `cluster-announce-ip` at a fake node (a small listener in the test, on 127.0.0.2, outside
//! `allow: [127.0.0.1/32]`): the fake node never sees a connection, let alone the
//! credential, while a client alongside keeps getting correct replies. Cycling a node's
//! `cluster-announce-port` does not use up the port range.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{listener_ports, RedisCluster};
use common::fake::FakeServer;
use common::*;

async fn login(proxy: &Proxy, port: u16) -> Raw {
    let mut c = Raw::tls(SocketAddr::from(([127, 0, 0, 1], port)), &proxy.certs.ca()).await;
    c.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
    c
}

async fn metrics(proxy: &Proxy) -> String {
    let admin = proxy.admin.expect("admin endpoint");
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A well-behaved round of SET/GET on every key's owner, through the entry listener
/// (following MOVED to redward's node listeners): every reply correct. With `hijacked`, the
/// slots of a node whose announced address redward refused are sent to port 0 (nowhere,
/// rather than to the address the cluster now names): those keys are skipped.
async fn well_behaved(proxy: &Proxy, round: usize, hijacked: bool) {
    let mut entry = login(proxy, proxy.port()).await;
    let mut served = 0;
    for i in 0..10 {
        let key = format!("app:w{i}");
        let value = format!("{round}-{i}");
        entry.send(&cmd(&["SET", &key, &value])).await;
        let reply = String::from_utf8_lossy(&entry.replies(1).await).into_owned();
        let mut c = match reply.strip_prefix("-MOVED ") {
            None => {
                assert_eq!(reply, "+OK\r\n");
                served += 1;
                continue;
            }
            Some(rest) => {
                let port: u16 = rest
                    .trim_end()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("{reply}"));
                if port == 0 && hijacked {
                    continue;
                }
                login(proxy, port).await
            }
        };
        c.send(&cmd(&["SET", &key, &value])).await;
        c.send(&cmd(&["GET", &key])).await;
        assert_eq!(
            String::from_utf8_lossy(&c.replies(2).await),
            format!("+OK\r\n${}\r\n{value}\r\n", value.len())
        );
        served += 1;
    }
    assert!(served > 0, "no key was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_address_outside_allow_never_gets_the_credential_and_nodes_keep_their_ports() {
    let cluster = RedisCluster::start(3);
    // Three nodes, two ports to spare.
    let ports = listener_ports(5);
    let proxy = proxy()
        .cluster_with(
            &[cluster.nodes[0].port],
            ports,
            ", allow: [\"127.0.0.1/32\"]",
        )
        .yaml("admin:\n  address: \"127.0.0.1:0\"\n")
        .start(&cluster.nodes[0])
        .await;
    well_behaved(&proxy, 0, false).await;
    assert_eq!(metric(&metrics(&proxy).await, "redward_cluster_nodes "), 3);

    // The attack: a client allowed CONFIG SET, through redward's listener for node 1, points
    // the node's announced address at a fake node on 127.0.0.2 (same port).
    let victim = cluster.nodes[1].port;
    let fake = FakeServer::start_on(&format!("127.0.0.2:{victim}")).await;
    let mut attacker = login(&proxy, proxy.port()).await;
    attacker.send(&cmd(&["CLUSTER", "NODES"])).await;
    let nodes = String::from_utf8_lossy(&attacker.replies(1).await).into_owned();
    let id = cluster.id(1);
    let listener: u16 = nodes
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|a| a.split('@').next()?.rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{nodes}"));
    let mut on_victim = login(&proxy, listener).await;
    on_victim
        .send(&cmd(&["CONFIG", "SET", "cluster-announce-ip", "127.0.0.2"]))
        .await;
    assert_eq!(on_victim.replies(1).await, b"+OK\r\n");
    // redward reads the topology again (every 5 s): it refuses the address.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(
        &metrics(&proxy).await,
        "redward_cluster_nodes_refused_total",
    ) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the new address was never refused"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Clients on every listener, entry and nodes: nothing goes to the fake node.
    for port in ports.0..=ports.1 {
        if let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_secs(5),
            Raw::try_tls_from(
                SocketAddr::from(([127, 0, 0, 1], port)),
                &proxy.certs.ca(),
                None,
            ),
        )
        .await
        {
            let mut script = cmd(&["AUTH", APP_USER, APP_PASSWORD]);
            script.extend(cmd(&["GET", "app:x"]));
            c.send(&script).await;
            c.replies(2).await;
        }
    }
    well_behaved(&proxy, 1, true).await;
    let (credential, connections) = fake.saw(UPSTREAM_PASSWORD);
    assert!(!credential, "the fake node got redward's credential");
    assert_eq!(connections, 0, "redward dialled the fake node");
    // Put it back (straight to the node: redward's listener for it still dials it).
    on_victim
        .send(&cmd(&["CONFIG", "SET", "cluster-announce-ip", "127.0.0.1"]))
        .await;
    assert_eq!(on_victim.replies(1).await, b"+OK\r\n");

    // Cycling the announced port: each change moves the node's listener, never a new one
    // (before, every new port took one from the range, two to spare here).
    let node2 = cluster.nodes[2].port;
    for (i, announce) in [node2 + 1000, node2 + 2000, node2 + 3000, node2]
        .into_iter()
        .enumerate()
    {
        let out = cluster
            .cli()
            .args(["-p", &node2.to_string(), "CONFIG", "SET"])
            .args(["cluster-announce-port", &announce.to_string()])
            .output()
            .expect("redis-cli");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("OK"),
            "{i}: {out:?}"
        );
        // One topology refresh (a wait, not a timing assertion).
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let text = metrics(&proxy).await;
    assert_eq!(metric(&text, "redward_cluster_nodes "), 3, "{text}");
    well_behaved(&proxy, 2, false).await;
}
