//! Redis Cluster behind redward. redward stays a per-node proxy, so transactions, scripts,
//! pub/sub and blocking commands keep Redis's own semantics, and rewrites only where the
//! cluster names itself (`announce.rs`).
//!
//! `upstream.cluster`: redward discovers the nodes (`CLUSTER SHARDS` from the seeds, then
//! every 5 s and whenever a reply names a node it does not know) and opens one listener per
//! node, on ports from `node_listeners.ports`, with the first listener's
//! settings (TLS, allow/deny, limits). Each node listener's sessions go to that node, over
//! their own pool of shared connections. Replies name `announce_host` and those ports. The
//! entry listeners go to whichever node last described the cluster (`Target::Chosen`).
//!
//! (The sidecar shape, `upstream.cluster_announce`, is a fixed map: `announce::Fixed`.)
//!
//! Every instance in front of the same cluster announces each node on the same port: the
//! ports come from one map kept in the cluster itself (`port_map.rs`; `port_map: local`
//! keeps the older behaviour, ports taken in discovery order by this process alone).
//!
//! A node is known by its id and keeps its listener and port while it exists, whatever
//! address it announces; only admitted addresses are dialled, and every connection confirms
//! the node's id (`admit.rs`: the cluster's description is what a client with `CONFIG SET`
//! can change). A node missing from the topology for a grace period loses its listener, and
//! its port waits out a quarantine before another node gets it (`nodes.rs`, `ports.rs`).

mod admit;
mod nodes;
mod port_map;
mod ports;
pub mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::config::{ClusterConfig, UpstreamAddr};
use crate::listener::ListenerSettings;
use crate::resp::encode_command;
use crate::shared::Shared;
use crate::upstream::{Connector, Target};

pub use crate::announce::{Announce, Endpoint};
use topology::Node;

/// Why the cluster could not be followed. Always the upstream's side, or the operator's
/// (a port range too small for the cluster).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No seed or known node described the cluster; the last one's reason.
    #[error("upstream.cluster.seeds: no node described the cluster ({addr}: {why})")]
    NoTopology { addr: String, why: TopologyError },
    /// More nodes than ports left in the range.
    #[error("{node}: upstream.cluster.node_listeners.ports has no port left")]
    NoPortLeft { node: String },
    /// The port the shared map gives a node is taken on this host.
    #[error("{node}: upstream.cluster.node_listeners.ports: port {port}, agreed with the other instances, cannot be bound ({why}); retrying")]
    Bind {
        node: String,
        port: u16,
        why: String,
    },
}

/// Why one node did not describe the cluster.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error(transparent)]
    Frame(#[from] crate::net_io::FrameError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The node's own error text (cluster support disabled, NOPERM, ...).
    #[error("{0}")]
    Refused(String),
    #[error("CLUSTER {0}: unexpected reply")]
    Unexpected(&'static str),
    #[error("no nodes")]
    Empty,
    #[error("timed out")]
    Timeout,
}

/// How often the topology is read again when nothing asks sooner.
const REFRESH: Duration = Duration::from_secs(5);
/// The least time between two readings: anyone can ask for one (a reply naming an unknown
/// node), and each is a login on a node.
const MIN_GAP: Duration = Duration::from_secs(1);
/// The most a topology reply may hold (a thousand-node cluster's SHARDS is well under this).
const MAX_TOPOLOGY: usize = 16 * 1024 * 1024;

/// What redward knows of the cluster's nodes: the endpoint announced for each, by id and by
/// every address the cluster writes for it. Rebuilt at each reading (`nodes.rs`), stored
/// only when it changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Known {
    by_id: HashMap<Vec<u8>, Endpoint>,
    by_addr: HashMap<(Vec<u8>, u16), Endpoint>,
}

/// One description of the cluster, and the id of the node that gave it (`CLUSTER MYID`).
struct Reading {
    nodes: Vec<Node>,
    by: Option<String>,
}

/// Where the entry listeners go: the node that last described the cluster, a seed (as
/// configured) or a node with a listener (whose id the entry's connections then confirm).
#[derive(Debug, Clone)]
enum Entry {
    Seed(UpstreamAddr),
    Node(Arc<admit::NodeTarget>),
}

/// The cluster behind redward, and the endpoints announced for its nodes.
pub struct Cluster {
    host: Arc<str>,
    seeds: Vec<(String, u16)>,
    /// Read on every rewrite without a lock; replaced whole by a reading.
    known: ArcSwap<Known>,
    nodes: nodes::NodeListeners,
    /// The node the entry listeners go to (`Target::Chosen`), so the entry point outlives
    /// any one node, its first seed included.
    entry: ArcSwap<Option<Entry>>,
    /// The ports shared with every other instance (`port_map: cluster`, the default).
    port_map: Option<port_map::PortMap>,
    /// `redward_cluster_port_map_errors_total`.
    map_errors: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// `upstream.cluster`: discovers the nodes from the seeds and binds a listener for each
    /// node at an admitted address. `settings` are the first listener's, shared (a reload
    /// of them applies to every node listener too).
    ///
    /// No seed answering is not fatal (Redis may start after redward, as a sidecar's often
    /// does): redward starts with no node, its entry refuses with Redis's retryable error and
    /// `/readyz` says not ready, and the topology is asked for every second until a seed
    /// answers.
    ///
    /// # Errors
    /// A message naming the field when the cluster has more nodes than ports are left.
    pub async fn discover(
        cfg: &ClusterConfig,
        settings: Arc<ArcSwap<ListenerSettings>>,
        connector: Connector,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let cluster = Arc::new(Cluster {
            host: Arc::from(cfg.announce_host.as_str()),
            seeds: cfg.seeds.clone(),
            known: ArcSwap::default(),
            nodes: nodes::NodeListeners::new(cfg, settings, connector, metrics),
            entry: ArcSwap::default(),
            port_map: cfg
                .shared_ports
                .then(|| port_map::PortMap::new(cfg.ports, cfg.quarantine)),
            map_errors: metrics.cluster_port_map_errors.clone(),
        });
        match cluster.read_topology().await {
            Ok(reading) => cluster.learn(&reading).await?,
            Err(e) => warn!(error = %e, "cluster: no seed answered yet; asking again every second"),
        }
        Ok(cluster)
    }

    /// Starts the node listeners bound so far and the refresh task.
    pub fn run(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) {
        self.nodes.run(shared, stop.clone(), tasks);
        let me = Arc::clone(self);
        tokio::spawn(async move { me.refresh_loop(stop).await });
    }

    /// The ports of the node listeners and the addresses they dial (for logs and tests).
    pub fn listeners(&self) -> Vec<(u16, String)> {
        self.nodes.listeners()
    }

    async fn refresh_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut last = tokio::time::Instant::now();
        loop {
            // Until some node has answered, every second; then every REFRESH.
            let wait = if self.entry.load().is_some() {
                REFRESH
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.nodes.refresh.notified() => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(last + MIN_GAP) => {}
            }
            last = tokio::time::Instant::now();
            match self.read_topology().await {
                Ok(reading) => {
                    if let Err(e) = self.learn(&reading).await {
                        warn!(error = %e, "cluster: a node got no listener");
                    }
                }
                Err(e) => warn!(error = %e, "cluster: topology not read"),
            }
        }
    }

    /// Asks the seeds, then the nodes with a listener, in turn, until one describes the
    /// cluster. A node is asked at the address its listener dials (admitted), and confirms
    /// its id first: never at a name the topology merely mentions.
    async fn read_topology(&self) -> Result<Reading, ClusterError> {
        let mut candidates: Vec<Entry> = self
            .seeds
            .iter()
            .map(|(host, port)| {
                Entry::Seed(UpstreamAddr::Tcp {
                    host: host.clone(),
                    port: *port,
                })
            })
            .collect();
        candidates.extend(self.nodes.targets().into_iter().map(Entry::Node));
        let mut last = ClusterError::NoTopology {
            addr: String::from("-"),
            why: TopologyError::Empty,
        };
        for entry in candidates {
            let target = entry.target();
            let connector = self.nodes.connector().to_target(target);
            let why = match ask(&connector).await {
                Ok(reading) if !reading.nodes.is_empty() => {
                    self.entry.store(Arc::new(Some(entry)));
                    return Ok(reading);
                }
                Ok(_) => TopologyError::Empty,
                Err(e) => e,
            };
            last = ClusterError::NoTopology {
                addr: connector.target().to_string(),
                why,
            };
        }
        Err(last)
    }

    /// One reading: each node's address admitted (or not), then the listeners and names
    /// brought up to date (`nodes.rs`).
    async fn learn(&self, reading: &Reading) -> Result<(), ClusterError> {
        let found = &reading.nodes;
        let admission = &self.nodes.admission;
        let nets = admission.networks().await;
        let mut admitted = Vec::with_capacity(found.len());
        for n in found {
            admitted.push(if self.nodes.port_of(n) == 0 {
                Err(admit::Refusal::Unresolved(String::new()))
            } else {
                admission.admit(&nets, &n.ip).await
            });
        }
        let gone = self.confirm_absent(reading).await;
        let route = self.route(found, &admitted);
        let agreed = match (&self.port_map, &route) {
            (Some(map), Some(route)) => Some(self.agree(map, route, found, &admitted).await),
            (Some(_), None) => Some(HashMap::new()),
            (None, _) => None,
        };
        let (known, failed, closed) =
            self.nodes
                .learn(found, &admitted, &gone, &self.host, agreed.as_ref());
        if **self.known.load() != known {
            self.known.store(Arc::new(known));
        }
        if let (Some(map), Some(route), false) = (&self.port_map, &route, closed.is_empty()) {
            if let Err(e) = map.release(route, &closed).await {
                self.map_errors.inc();
                warn!(error = %e, "cluster: ports of nodes that left not freed in the shared port map (they stay taken)");
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// How to reach the shared port map: from the node that described the cluster, through
    /// this reading's admitted nodes. `None` before any node has answered.
    fn route<'a>(
        &'a self,
        found: &'a [Node],
        admitted: &[Result<std::net::IpAddr, admit::Refusal>],
    ) -> Option<port_map::Route<'a>> {
        let entry = (**self.entry.load()).clone()?;
        let nodes = found
            .iter()
            .zip(admitted)
            .filter_map(|(n, a)| Some((n, *a.as_ref().ok()?, self.nodes.port_of(n))))
            .collect();
        Some(port_map::Route {
            connector: self.nodes.connector(),
            entry: entry.target(),
            nodes,
        })
    }

    /// Each node's port from the shared map: the served ones' confirmed (and restored to a
    /// map that lost them), the new admitted ones' claimed. A node the map gives no port gets
    /// no listener yet; a failed call leaves every new node for the next reading.
    async fn agree(
        &self,
        map: &port_map::PortMap,
        route: &port_map::Route<'_>,
        found: &[Node],
        admitted: &[Result<std::net::IpAddr, admit::Refusal>],
    ) -> HashMap<String, u16> {
        let served = self.nodes.served_ports();
        let mut asked: Vec<(String, u16, bool)> = Vec::new();
        for (n, a) in found.iter().zip(admitted) {
            let Some(key) = self.nodes.key_of(n) else {
                continue;
            };
            match served.get(&key) {
                Some(p) => asked.push((key, *p, false)),
                None if a.is_ok() => asked.push((key, 0, true)),
                None => {}
            }
        }
        let claims: Vec<port_map::Claim<'_>> = asked
            .iter()
            .map(|(key, hint, new)| port_map::Claim {
                key,
                hint: *hint,
                new: *new,
            })
            .collect();
        let mut out = HashMap::new();
        match map.claim(route, &claims).await {
            Ok(ports) => {
                for ((key, hint, _), port) in asked.iter().zip(ports) {
                    if *hint != 0 && port != 0 && port != *hint {
                        self.map_errors.inc();
                        warn!(node = %key, ours = hint, map = port, "cluster: the shared port map gives a node another port than this instance serves it on; keeping ours until the node leaves");
                    }
                    // 0 for a new node: no port free (`NoPortLeft`); for a served one: the map
                    // lost it and this instance's port is another node's now (kept as ours).
                    if port != 0 || *hint == 0 {
                        out.insert(key.clone(), port);
                    }
                }
            }
            Err(e) => {
                self.map_errors.inc();
                warn!(error = %e, "cluster: shared port map not read; new nodes wait for the next reading");
            }
        }
        out
    }

    /// The served nodes `reading` lacks that another node's view lacks too. One node's view
    /// is not enough to close listeners: a seed taken out of the cluster (reset, still
    /// running) describes a cluster of itself alone. No other node to ask: none is gone.
    async fn confirm_absent(&self, reading: &Reading) -> std::collections::HashSet<String> {
        let (absent, witness) = self.nodes.absent(&reading.nodes, reading.by.as_deref());
        if absent.is_empty() {
            return std::collections::HashSet::new();
        }
        let Some(witness) = witness else {
            return std::collections::HashSet::new();
        };
        let connector = self
            .nodes
            .connector()
            .to_target(Target::Chosen(witness as _));
        match ask(&connector).await {
            Ok(second) => {
                let there: std::collections::HashSet<String> = second
                    .nodes
                    .iter()
                    .filter_map(|n| self.nodes.key_of(n))
                    .collect();
                absent.into_iter().filter(|k| !there.contains(k)).collect()
            }
            Err(e) => {
                warn!(error = %e, "cluster: no second view of the nodes missing from the topology");
                std::collections::HashSet::new()
            }
        }
    }
}

impl Entry {
    fn target(&self) -> Target {
        match self {
            Entry::Seed(addr) => Target::Fixed(addr.clone()),
            Entry::Node(t) => Target::Chosen(Arc::clone(t) as _),
        }
    }
}

impl crate::upstream::Chooser for Cluster {
    fn choose(&self) -> Option<UpstreamAddr> {
        match &**self.entry.load() {
            Some(Entry::Seed(addr)) => Some(addr.clone()),
            Some(Entry::Node(t)) => t.addr(),
            None => None,
        }
    }

    fn name(&self) -> &str {
        "cluster entry"
    }

    fn node_id(&self) -> Option<Arc<str>> {
        match &**self.entry.load() {
            Some(Entry::Node(t)) => crate::upstream::Chooser::node_id(&**t),
            _ => None,
        }
    }
}

impl Announce for Cluster {
    fn by_id(&self, id: &[u8]) -> Option<Endpoint> {
        self.known.load().by_id.get(id).cloned()
    }

    fn by_addr(&self, host: &[u8], port: u16) -> Option<Endpoint> {
        let known = self.known.load();
        if let Some(ep) = known.by_addr.get(&(host.to_vec(), port)) {
            return Some(ep.clone());
        }
        if host.is_empty() || host == b"?" {
            // `cluster-preferred-endpoint-type unknown-endpoint`: "the host you asked, this
            // port" (`getPreferredEndpoint` in cluster.c). Answerable when one known node
            // has that port.
            let mut eps = known
                .by_addr
                .iter()
                .filter(|((_, p), _)| *p == port)
                .map(|(_, ep)| ep);
            if let Some(first) = eps.next() {
                if eps.all(|ep| ep == first) {
                    return Some(first.clone());
                }
            }
            return None;
        }
        // A node the last reading did not have (a node just added), or an address no node
        // has: a script can return any error text, `MOVED` included. Only the cluster's own
        // description opens a listener (which would log in to that address with redward's
        // credential), so read it again now; meanwhile the client is sent nowhere.
        self.nodes.refresh.notify_one();
        None
    }

    fn host(&self) -> Arc<str> {
        Arc::clone(&self.host)
    }
}

/// `CLUSTER SHARDS` from one node (`CLUSTER SLOTS` if it has no SHARDS), through
/// `connector`, and the node's own id (`CLUSTER MYID`, if it answers).
async fn ask(connector: &Connector) -> Result<Reading, TopologyError> {
    let timeout = connector.connect_timeout();
    let run = async {
        let mut s = connector.connect().await?;
        let mut buf = BytesMut::new();
        for (sub, parse) in [
            (
                "SHARDS",
                topology::from_shards as fn(&_) -> Option<Vec<Node>>,
            ),
            ("SLOTS", topology::from_slots),
        ] {
            let mut req = Vec::new();
            encode_command(&mut req, [&b"CLUSTER"[..], sub.as_bytes()].into_iter());
            s.write_all(&req).await?;
            s.flush().await?;
            let frame = crate::net_io::read_frame(&mut s, &mut buf, MAX_TOPOLOGY).await?;
            if let redis_protocol::resp2::types::OwnedFrame::Error(e) = &frame {
                if sub == "SLOTS" || !e.contains("unknown subcommand") {
                    return Err(TopologyError::Refused(e.clone()));
                }
                continue;
            }
            let nodes = parse(&frame).ok_or(TopologyError::Unexpected(sub))?;
            let mut req = Vec::new();
            encode_command(&mut req, [&b"CLUSTER"[..], b"MYID"].into_iter());
            s.write_all(&req).await?;
            s.flush().await?;
            let by = match crate::net_io::read_frame(&mut s, &mut buf, 4096).await? {
                frame @ redis_protocol::resp2::types::OwnedFrame::BulkString(_) => {
                    crate::commands::discover::text(&frame)
                }
                _ => None,
            };
            return Ok(Reading { nodes, by });
        }
        Err(TopologyError::Empty)
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| TopologyError::Timeout)?
}
