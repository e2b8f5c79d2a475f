//! A real Redis Cluster on loopback: `redis-server --cluster-enabled yes` nodes joined with
//! `redis-cli --cluster create`, each on its own ephemeral port and cluster bus port.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, Certs, Redis, RedisOptions, ServerKind, UPSTREAM_PASSWORD, UPSTREAM_USER};

/// The nodes of one cluster, killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    /// Each node's cluster bus port (also an upstream address no reply may show).
    pub bus_ports: Vec<u16>,
    /// For a TLS-only cluster, the CA its certificates chain to.
    tls_ca: Option<PathBuf>,
}

impl RedisCluster {
    /// `masters` masters of Debian's redis-server, each serving an equal share of the slots,
    /// with the usual users.
    pub fn start(masters: usize) -> RedisCluster {
        RedisCluster::start_kind(ServerKind::Redis, masters)
    }

    /// The same with `kind`'s server (joined by Debian's redis-cli either way).
    pub fn start_kind(kind: ServerKind, masters: usize) -> RedisCluster {
        RedisCluster::start_with(kind, masters, None)
    }

    /// TLS only: clients, replication and the cluster bus (`tls-cluster yes`), with `certs`.
    pub fn start_tls(masters: usize, certs: &Certs) -> RedisCluster {
        RedisCluster::start_with(ServerKind::Redis, masters, Some(certs))
    }

    fn start_with(kind: ServerKind, masters: usize, tls: Option<&Certs>) -> RedisCluster {
        let mut nodes = Vec::new();
        let mut bus_ports = Vec::new();
        for _ in 0..masters {
            let (node, bus) = RedisCluster::node(kind, tls);
            nodes.push(node);
            bus_ports.push(bus);
        }
        let cluster = RedisCluster {
            nodes,
            bus_ports,
            tls_ca: tls.map(Certs::ca),
        };
        let out = cluster
            .cli_cluster(&["create"])
            .args(cluster.nodes.iter().map(Redis::addr))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok();
        cluster
    }

    /// Adds a node: a replica of node `replica_of`, or an empty master.
    pub fn add_node(&mut self, replica_of: Option<usize>) {
        self.add_node_kind(ServerKind::Redis, replica_of);
    }

    /// The same with `kind`'s server.
    pub fn add_node_kind(&mut self, kind: ServerKind, replica_of: Option<usize>) {
        let (node, bus) = RedisCluster::node(kind, None);
        let mut cmd = self.cli_cluster(&["add-node", &node.addr(), &self.nodes[0].addr()]);
        if let Some(m) = replica_of {
            cmd.args(["--cluster-slave", "--cluster-master-id", &self.id(m)]);
        }
        let out = cmd.output().expect("redis-cli --cluster add-node");
        assert!(
            out.status.success(),
            "add-node: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.nodes.push(node);
        self.bus_ports.push(bus);
        self.wait_ok();
    }

    /// One cluster-enabled node and its bus port.
    fn node(kind: ServerKind, tls: Option<&Certs>) -> (Redis, u16) {
        {
            let bus = free_port();
            let mut options = RedisOptions::with_acl(vec![
                "user default off".to_owned(),
                format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
                format!(
                    "user {} on >{} ~* &* +@all",
                    super::APP_USER,
                    super::APP_PASSWORD
                ),
            ])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-node-timeout",
                "3000",
                // A node down leaves the others serving their slots (the entry-point test).
                "--cluster-require-full-coverage",
                "no",
                // Replicas log in to their master as the upstream user.
                "--masteruser",
                UPSTREAM_USER,
                "--masterauth",
                UPSTREAM_PASSWORD,
            ]);
            options.server = kind;
            if let Some(certs) = tls {
                options = options.tls_only(certs).args([
                    "--tls-cluster",
                    "yes",
                    "--tls-replication",
                    "yes",
                    "--tls-auth-clients",
                    "no",
                ]);
            }
            (Redis::start_with(options), bus)
        }
    }

    /// `redis-cli --cluster <sub>` logged in as the upstream user.
    pub fn cli_cluster(&self, sub: &[&str]) -> Command {
        let mut cmd = self.cli();
        cmd.arg("--cluster").args(sub);
        cmd
    }

    /// `redis-cli` logged in as the upstream user (over TLS to a TLS cluster).
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new("redis-cli");
        if let Some(ca) = &self.tls_ca {
            cmd.args(["--tls", "--cacert"]).arg(ca);
        }
        cmd.args([
            "--user",
            UPSTREAM_USER,
            "--pass",
            UPSTREAM_PASSWORD,
            "--no-auth-warning",
        ]);
        cmd
    }

    /// Until every node says `cluster_state:ok` and knows every other (bounded).
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let want = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let ok = self.nodes.iter().all(|n| {
                let out = self
                    .cli()
                    .args(["-p", &n.port.to_string(), "CLUSTER", "INFO"])
                    .output();
                let info = out
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains(&want)
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every port of every node (client and bus): none may appear in a reply through redward.
    pub fn upstream_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .map(|n| n.port)
            .chain(self.bus_ports.iter().copied())
            .collect()
    }

    pub fn id(&self, node: usize) -> String {
        let out = self
            .cli()
            .args(["-p", &self.nodes[node].port.to_string(), "CLUSTER", "MYID"])
            .output()
            .expect("CLUSTER MYID");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Moves `slots` slots from node `from` to node `to` with `redis-cli --cluster reshard`.
    pub fn reshard(&self, from: usize, to: usize, slots: u32) -> std::process::Output {
        self.cli_cluster(&["reshard", &self.nodes[0].addr()])
            .args([
                "--cluster-from",
                &self.id(from),
                "--cluster-to",
                &self.id(to),
            ])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster reshard")
    }
}

/// A range of `n` ports for node listeners, likely free (each is also tried in turn by
/// redward, which skips a taken one).
pub fn listener_ports(n: u16) -> (u16, u16) {
    loop {
        let first = free_port();
        if first < u16::MAX - n
            && (first..first + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return (first, first + n - 1);
        }
    }
}
