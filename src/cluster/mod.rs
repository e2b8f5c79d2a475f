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
//! A node that leaves keeps its listener and port (its sessions then fail to connect), so a
//! port never names two nodes in one process's life. A node is known by its id: one the
//! cluster announces at a new address keeps its listener, which then dials the new address,
//! if that address is admitted at all (`admit.rs`: only within `node_listeners.allow`, for
//! the cluster's description is what a client with `CONFIG SET` can change).

mod admit;
pub mod topology;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{ClusterConfig, UpstreamAddr};
use crate::listener::{Listener, ListenerSettings};
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
/// The most a topology reply may hold (a thousand-node cluster's SHARDS is well under this).
const MAX_TOPOLOGY: usize = 16 * 1024 * 1024;

/// What redward knows of the cluster's nodes: the endpoint announced for each, by id and by
/// every address the cluster writes for it.
#[derive(Debug, Default, Clone)]
struct Known {
    by_id: HashMap<Vec<u8>, Endpoint>,
    by_addr: HashMap<(Vec<u8>, u16), Endpoint>,
}

/// The cluster behind redward, and the endpoints announced for its nodes.
pub struct Cluster {
    host: Arc<str>,
    /// Read on every rewrite without a lock; replaced whole under `update`.
    known: ArcSwap<Known>,
    update: Mutex<()>,
    nodes: NodeListeners,
    /// The node the entry listeners go to: the one that last described the cluster
    /// (`Target::Chosen`), so the entry point outlives any one node, its first seed included.
    entry: ArcSwap<Option<UpstreamAddr>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Listeners opened per node (`upstream.cluster.node_listeners`).
struct NodeListeners {
    seeds: Vec<(String, u16)>,
    bind: IpAddr,
    /// The next port to try, and the last of the range.
    next: Mutex<u32>,
    last: u16,
    settings: Arc<ArcSwap<ListenerSettings>>,
    connector: Connector,
    /// Listeners bound before the server runs, started by [`Cluster::run`].
    pending: Mutex<Vec<Listener>>,
    running: OnceLock<Running>,
    /// Wakes the refresh task early (a reply named an unknown node).
    refresh: tokio::sync::Notify,
    /// `redward_cluster_nodes`.
    gauge: prometheus_client::metrics::gauge::Gauge,
    /// `redward_cluster_nodes_refused_total`: node addresses outside the allowed networks.
    refused: prometheus_client::metrics::counter::Counter,
    /// Which node addresses may be dialled.
    admission: admit::Admission,
    /// Where each node listener (by its port) dials now.
    targets: Mutex<HashMap<u16, Arc<admit::NodeTarget>>>,
}

struct Running {
    shared: Weak<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Cluster {
    /// `upstream.cluster`: discovers the nodes from the seeds and binds a listener for each.
    /// `settings` are the first listener's, shared (a reload of them applies to every node
    /// listener too).
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
            known: ArcSwap::default(),
            update: Mutex::new(()),
            nodes: NodeListeners {
                seeds: cfg.seeds.clone(),
                bind: cfg.bind,
                next: Mutex::new(u32::from(cfg.ports.0)),
                last: cfg.ports.1,
                settings,
                connector,
                pending: Mutex::new(Vec::new()),
                running: OnceLock::new(),
                refresh: tokio::sync::Notify::new(),
                gauge: metrics.cluster_nodes.clone(),
                refused: metrics.cluster_nodes_refused.clone(),
                admission: admit::Admission::new(cfg.allow.clone(), cfg.seeds.clone()),
                targets: Mutex::new(HashMap::new()),
            },
            entry: ArcSwap::default(),
        });
        match cluster.read_topology().await {
            Ok(nodes) => {
                let nets = cluster.nodes.admission.networks().await;
                cluster.learn(&nodes, &nets)?;
            }
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
        let nodes = &self.nodes;
        let _ = nodes.running.set(Running {
            shared: Arc::downgrade(shared),
            stop: stop.clone(),
            tasks: tasks.clone(),
        });
        let pending = std::mem::take(&mut *nodes.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for l in pending {
            tasks.spawn(l.accept_loop(Arc::clone(shared), stop.clone(), tasks.clone()));
        }
        let me = Arc::clone(self);
        tokio::spawn(async move { me.refresh_loop(stop).await });
    }

    /// The ports of the node listeners and the nodes they serve (for logs and tests).
    pub fn listeners(&self) -> Vec<(u16, String)> {
        let known = self.known.load();
        let mut out: Vec<(u16, String)> = known
            .by_addr
            .iter()
            .map(|((h, p), ep)| (ep.port, format!("{}:{p}", String::from_utf8_lossy(h))))
            .collect();
        out.sort();
        out.dedup_by_key(|(p, _)| *p);
        out
    }

    async fn refresh_loop(self: Arc<Self>, stop: CancellationToken) {
        let nodes = &self.nodes;
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
                () = nodes.refresh.notified() => {}
            }
            match self.read_topology().await {
                Ok(found) => {
                    let nets = nodes.admission.networks().await;
                    if let Err(e) = self.learn(&found, &nets) {
                        warn!(error = %e, "cluster: a node got no listener");
                    }
                }
                Err(e) => warn!(error = %e, "cluster: topology not read"),
            }
        }
    }

    /// Asks the seeds and the known nodes in turn, until one describes the cluster.
    async fn read_topology(&self) -> Result<Vec<Node>, ClusterError> {
        let nodes = &self.nodes;
        let mut candidates = nodes.seeds.clone();
        for (h, p) in self.known.load().by_addr.keys() {
            let h = String::from_utf8_lossy(h).into_owned();
            if !candidates.contains(&(h.clone(), *p)) {
                candidates.push((h, *p));
            }
        }
        let mut last = ClusterError::NoTopology {
            addr: String::from("-"),
            why: TopologyError::Empty,
        };
        for (host, port) in candidates {
            let why = match ask(&nodes.connector, &host, port).await {
                Ok(found) if !found.is_empty() => {
                    self.entry
                        .store(Arc::new(Some(UpstreamAddr::Tcp { host, port })));
                    return Ok(found);
                }
                Ok(_) => TopologyError::Empty,
                Err(e) => e,
            };
            last = ClusterError::NoTopology {
                addr: format!("{host}:{port}"),
                why,
            };
        }
        Err(last)
    }

    /// Gives every admitted node a listener (if it has none: a node known by its id keeps
    /// its own, which follows it to a new address) and records the names it goes by.
    fn learn(&self, found: &[Node], nets: &[ipnet::IpNet]) -> Result<(), ClusterError> {
        let tls = self.nodes.connector.uses_tls();
        // First a listener for every node (each new one recorded as it opens), then every
        // name they go by, in one new map: a refresh that changes nothing copies nothing.
        let mut named = Vec::with_capacity(found.len());
        let mut moved = Vec::new();
        for n in found {
            let port = match (tls, n.tls_port) {
                (true, Some(p)) if p != 0 => p,
                _ => n.port,
            };
            if port == 0 {
                continue; // a node still in its handshake
            }
            if !self.nodes.admission.allows(nets, &n.ip) {
                self.nodes.refused.inc();
                if let crate::throttle::Verdict::Log { suppressed } =
                    self.nodes.admission.lines.event()
                {
                    warn!(node = %n.id, address = %format!("{}:{port}", n.ip), not_logged_before = suppressed, "cluster: a node's address is outside node_listeners.allow; not dialled");
                }
                continue;
            }
            let known = self.known.load();
            let at = (n.ip.as_bytes().to_vec(), port);
            let ep = match known.by_id.get(n.id.as_bytes()) {
                Some(ep) if !known.by_addr.contains_key(&at) => {
                    // A known node at a new address: its listener follows it.
                    if let Some(t) = lock(&self.nodes.targets).get(&ep.port) {
                        info!(node = %n.id, address = %format!("{}:{port}", n.ip), port = ep.port, "cluster: a node moved; its listener follows");
                        t.moved(&n.ip, port);
                    }
                    moved.push(ep.clone());
                    ep.clone()
                }
                _ => self
                    .open(&n.ip, port)
                    .ok_or_else(|| ClusterError::NoPortLeft {
                        node: format!("{}:{port}", n.ip),
                    })?,
            };
            named.push((n, port, ep));
        }
        let _guard = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.known.load();
        let missing = |k: &(Vec<u8>, u16)| !current.by_addr.contains_key(k);
        let keys = |n: &Node, port: u16| {
            // Under the port redward dials (the one MOVED names: `tls-port` on a TLS
            // cluster) and, if different and known, the plaintext one, by every name.
            let ports = [port, n.port];
            ports
                .into_iter()
                .filter(|p| *p != 0)
                .flat_map(move |p| {
                    std::iter::once(&n.ip)
                        .chain(&n.aliases)
                        .map(move |name| (name.as_bytes().to_vec(), p))
                })
                .collect::<Vec<_>>()
        };
        let changed = named.iter().any(|(n, port, ep)| {
            current.by_id.get(n.id.as_bytes()) != Some(ep) || keys(n, *port).iter().any(missing)
        });
        if !changed {
            return Ok(());
        }
        let mut known = Known::clone(&current);
        // A moved node's old addresses no longer name it (another node may come there).
        known.by_addr.retain(|_, ep| !moved.contains(ep));
        for (n, port, ep) in named {
            known.by_id.insert(n.id.as_bytes().to_vec(), ep.clone());
            for k in keys(n, port) {
                known.by_addr.entry(k).or_insert_with(|| ep.clone());
            }
        }
        self.known.store(Arc::new(known));
        Ok(())
    }

    /// The endpoint for the node at `host:port`, opening a listener for it if it has none
    /// (dynamic shape only). `None` when no port is left.
    fn open(&self, host: &str, port: u16) -> Option<Endpoint> {
        let nodes = &self.nodes;
        let _guard = self.update.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ep) = self
            .known
            .load()
            .by_addr
            .get(&(host.as_bytes().to_vec(), port))
        {
            return Some(ep.clone());
        }
        let mut next = nodes.next.lock().unwrap_or_else(|e| e.into_inner());
        let (tcp, ours) = loop {
            let p = u16::try_from(*next).ok().filter(|p| *p <= nodes.last)?;
            *next += 1;
            match crate::bind(SocketAddr::new(nodes.bind, p)) {
                Ok(tcp) => break (tcp, p),
                Err(e) => debug!(port = p, error = %e, "cluster: node listener port taken"),
            }
        };
        let target = Arc::new(admit::NodeTarget::new(ours, host, port));
        lock(&nodes.targets).insert(ours, Arc::clone(&target));
        let connector = Arc::new(nodes.connector.to_target(Target::Chosen(target)));
        let listener = Listener::new(tcp, Arc::clone(&nodes.settings))
            .ok()?
            .for_node(connector);
        info!(node = %format!("{host}:{port}"), port = ours, "cluster: listening for a node");
        nodes.gauge.inc();
        match nodes.running.get() {
            Some(r) => {
                if let Some(shared) = r.shared.upgrade() {
                    r.tasks
                        .spawn(listener.accept_loop(shared, r.stop.clone(), r.tasks.clone()));
                }
            }
            None => nodes
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(listener),
        }
        let ep = Endpoint {
            host: Arc::clone(&self.host),
            port: ours,
        };
        let mut known = Known::clone(&self.known.load());
        known
            .by_addr
            .insert((host.as_bytes().to_vec(), port), ep.clone());
        self.known.store(Arc::new(known));
        Some(ep)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl crate::upstream::Chooser for Cluster {
    fn choose(&self) -> Option<UpstreamAddr> {
        Option::clone(&self.entry.load())
    }

    fn name(&self) -> &str {
        "cluster entry"
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

/// `CLUSTER SHARDS` from one node (`CLUSTER SLOTS` if it has no SHARDS).
async fn ask(connector: &Connector, host: &str, port: u16) -> Result<Vec<Node>, TopologyError> {
    let target = Target::Fixed(UpstreamAddr::Tcp {
        host: host.to_owned(),
        port,
    });
    let connector = connector.to_target(target);
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
            return parse(&frame).ok_or(TopologyError::Unexpected(sub));
        }
        Err(TopologyError::Empty)
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| TopologyError::Timeout)?
}
