//! Redis Cluster behind redward. redward stays a per-node proxy, so transactions, scripts,
//! pub/sub and blocking commands keep Redis's own semantics, and rewrites only where the
//! cluster names itself (`announce.rs`).
//!
//! `upstream.cluster`: redward discovers the nodes (`CLUSTER SHARDS` from the seeds, then
//! every 5 s and whenever a reply names a node it does not know) and opens one listener per
//! node, on ports taken in order from `node_listeners.ports`, with the first listener's
//! settings (TLS, allow/deny, limits). Each node listener's sessions go to that node, over
//! their own pool of shared connections. Replies name `announce_host` and those ports. The
//! entry listeners go to whichever node last described the cluster (`Target::Chosen`).
//!
//! (The sidecar shape, `upstream.cluster_announce`, is a fixed map: `announce::Fixed`.)
//!
//! A node is known by its id and keeps its listener and port while it exists, whatever
//! address it announces; only admitted addresses are dialled, and every connection confirms
//! the node's id (`admit.rs`: the cluster's description is what a client with `CONFIG SET`
//! can change). A node missing from the topology for a grace period loses its listener, and
//! its port waits out a quarantine before another node gets it (`nodes.rs`, `ports.rs`).

mod admit;
mod nodes;
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
            let target = match &entry {
                Entry::Seed(addr) => Target::Fixed(addr.clone()),
                Entry::Node(t) => Target::Chosen(Arc::clone(t) as _),
            };
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
        let (known, failed) = self.nodes.learn(found, &admitted, &gone, &self.host);
        if **self.known.load() != known {
            self.known.store(Arc::new(known));
        }
        failed.map_or(Ok(()), Err)
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
