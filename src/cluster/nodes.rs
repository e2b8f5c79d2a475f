//! The listener per node, kept by node id (`node_listeners`): opened when a node at an
//! admitted address appears, kept (and its port with it) while the node exists whatever
//! address it announces, closed when the node has been missing from the topology for
//! `node_listeners.grace` and [`MISSED_READINGS`] readings in a row. Its port then waits out
//! `node_listeners.quarantine` before another node may get it (`ports.rs` for this instance
//! alone, `port_map.rs` for every instance: the port a node listens on is then the one the
//! map gives it).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::admit::{Admission, NodeTarget, Refusal};
use super::ports::Ports;
use super::topology::Node;
use super::{ClusterError, Endpoint, Known};
use crate::config::{ClusterConfig, UpstreamAddr};
use crate::listener::{Listener, ListenerSettings};
use crate::shared::Shared;
use crate::upstream::{Connector, Target};

/// In how many readings in a row a node must be missing, beside the grace period, before
/// its listener closes (readings can come sooner than every 5 s: a reply naming an unknown
/// node asks for one, and anyone can send such a reply).
const MISSED_READINGS: u32 = 3;

/// The counters and the gauge of node listeners (`metrics.rs`).
struct Meters {
    /// `redward_cluster_nodes`.
    listening: Gauge,
    /// `redward_cluster_nodes_refused_total`.
    refused: Counter,
    /// `redward_cluster_nodes_added_total`, `redward_cluster_nodes_removed_total`.
    added: Counter,
    removed: Counter,
    /// `redward_cluster_node_unconfirmed_total`.
    unconfirmed: Counter,
}

/// One node with a listener.
struct Served {
    /// The node's id (empty for a node known only by its address).
    id: String,
    port: u16,
    target: Arc<NodeTarget>,
    /// The listener's stop, which also drains its sessions: a child of `root`.
    stop: CancellationToken,
    /// Every `(name, port)` the cluster last wrote for it, and the address it is dialled at.
    names: Vec<(Vec<u8>, u16)>,
    /// Its announced address was refused at the last reading (the listener dials the last
    /// admitted one).
    refused: bool,
    /// Since when, and in how many readings in a row, the topology has lacked it.
    missing: Option<(Instant, u32)>,
}

struct State {
    /// By node id (by `host:port` for a node without one).
    served: HashMap<String, Served>,
    ports: Ports,
}

/// Listeners opened per node (`upstream.cluster.node_listeners`).
pub(super) struct NodeListeners {
    bind: IpAddr,
    settings: Arc<ArcSwap<ListenerSettings>>,
    connector: Connector,
    /// Listeners bound before the server runs, started by [`NodeListeners::run`].
    pending: Mutex<Vec<(Listener, CancellationToken)>>,
    running: OnceLock<Running>,
    /// The parent of every listener's stop: cancelled when the server stops.
    root: CancellationToken,
    /// Wakes the refresh task early (a reply named an unknown node, or a node listener's
    /// connection found another node).
    pub(super) refresh: Arc<tokio::sync::Notify>,
    /// Which node addresses may be dialled.
    pub(super) admission: Admission,
    meters: Meters,
    state: Mutex<State>,
    /// `node_listeners.grace` and `.quarantine`.
    grace: Duration,
    quarantine: Duration,
}

struct Running {
    shared: Weak<Shared>,
    tasks: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Text a node wrote, for a log line: at most 64 characters, escaped.
fn shown(s: &str) -> String {
    s.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

impl NodeListeners {
    pub(super) fn new(
        cfg: &ClusterConfig,
        settings: Arc<ArcSwap<ListenerSettings>>,
        connector: Connector,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let admission = Admission::new(
            cfg.allow.clone(),
            cfg.seeds.clone(),
            connector.connect_timeout(),
        );
        NodeListeners {
            bind: cfg.bind,
            settings,
            connector,
            pending: Mutex::new(Vec::new()),
            running: OnceLock::new(),
            root: CancellationToken::new(),
            refresh: Arc::new(tokio::sync::Notify::new()),
            admission,
            meters: Meters {
                listening: metrics.cluster_nodes.clone(),
                refused: metrics.cluster_nodes_refused.clone(),
                added: metrics.cluster_nodes_added.clone(),
                removed: metrics.cluster_nodes_removed.clone(),
                unconfirmed: metrics.cluster_node_unconfirmed.clone(),
            },
            state: Mutex::new(State {
                served: HashMap::new(),
                ports: Ports::new(cfg.ports, cfg.quarantine),
            }),
            grace: cfg.grace,
            quarantine: cfg.quarantine,
        }
    }

    /// Starts the listeners bound so far; from now on new ones start at once. Every
    /// listener stops with `stop`.
    pub(super) fn run(&self, shared: &Arc<Shared>, stop: CancellationToken, tasks: TaskTracker) {
        let _ = self.running.set(Running {
            shared: Arc::downgrade(shared),
            tasks: tasks.clone(),
        });
        let root = self.root.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            root.cancel();
        });
        for (l, stop) in std::mem::take(&mut *lock(&self.pending)) {
            tasks.spawn(l.accept_loop(Arc::clone(shared), stop, tasks.clone()));
        }
    }

    /// The upstream settings node connections are opened with.
    pub(super) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// The port redward dials a node at: its `tls-port` on a TLS cluster.
    pub(super) fn port_of(&self, n: &Node) -> u16 {
        match (self.connector.uses_tls(), n.tls_port) {
            (true, Some(p)) if p != 0 => p,
            _ => n.port,
        }
    }

    /// What a node is served under: its id, or `ip:port` for a node without one; `None` for
    /// a node still in its handshake (no port yet).
    pub(super) fn key_of(&self, n: &Node) -> Option<String> {
        let port = self.port_of(n);
        if port == 0 {
            return None;
        }
        Some(if n.id.is_empty() {
            format!("{}:{port}", n.ip)
        } else {
            n.id.clone()
        })
    }

    /// The served nodes `found` lacks, and a served node it has (other than node `by`, the
    /// one that gave it) to ask whether they are gone.
    pub(super) fn absent(
        &self,
        found: &[Node],
        by: Option<&str>,
    ) -> (Vec<String>, Option<Arc<NodeTarget>>) {
        let present: HashSet<String> = found.iter().filter_map(|n| self.key_of(n)).collect();
        let state = lock(&self.state);
        let mut absent = Vec::new();
        let mut witness = None;
        for (key, s) in &state.served {
            if !present.contains(key) {
                absent.push(key.clone());
            } else if by.is_none_or(|by| by != key)
                && s.target.addr().is_some()
                && witness.as_ref().is_none_or(|(p, _)| s.port < *p)
            {
                witness = Some((s.port, Arc::clone(&s.target)));
            }
        }
        (absent, witness.map(|(_, t)| t))
    }

    /// The served nodes' targets, to ask for the topology (each confirms its node's id).
    pub(super) fn targets(&self) -> Vec<Arc<NodeTarget>> {
        let state = lock(&self.state);
        let mut out: Vec<(u16, Arc<NodeTarget>)> = state
            .served
            .values()
            .map(|s| (s.port, Arc::clone(&s.target)))
            .collect();
        out.sort_by_key(|(p, _)| *p);
        out.into_iter().map(|(_, t)| t).collect()
    }

    /// The port each served node listens on, by its key.
    pub(super) fn served_ports(&self) -> HashMap<String, u16> {
        let state = lock(&self.state);
        state
            .served
            .iter()
            .map(|(k, s)| (k.clone(), s.port))
            .collect()
    }

    /// The listeners' ports and the addresses they dial (for logs and tests).
    pub(super) fn listeners(&self) -> Vec<(u16, String)> {
        let state = lock(&self.state);
        let mut out: Vec<(u16, String)> = state
            .served
            .values()
            .map(|s| {
                let at = s.target.addr().map_or_else(String::new, |a| a.to_string());
                (s.port, at)
            })
            .collect();
        out.sort();
        out
    }

    /// One reading of the topology, with each node's admitted address (or why it has none):
    /// listeners opened, followed, kept or closed, and what replies call each node. `gone`:
    /// the served nodes this reading lacks that a second view lacks too; only these count
    /// toward closing a listener. `agreed`: with the shared port map, the port each node
    /// must listen on (a new node missing from it gets no listener yet). The error returned
    /// is for the first node that got no port (the others are still served); the pairs are
    /// the nodes whose listener closed, and their ports.
    pub(super) fn learn(
        &self,
        found: &[Node],
        admitted: &[Result<IpAddr, Refusal>],
        gone: &HashSet<String>,
        host: &Arc<str>,
        agreed: Option<&HashMap<String, u16>>,
    ) -> (Known, Option<ClusterError>, Vec<(String, u16)>) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let mut failed = None;
        for (n, admitted) in found.iter().zip(admitted) {
            let Some(key) = self.key_of(n) else {
                continue; // a node still in its handshake
            };
            let port = self.port_of(n);
            if !state.served.contains_key(&key) {
                let ours = match agreed.map(|a| a.get(&key)) {
                    None => None,
                    Some(Some(0)) => {
                        failed.get_or_insert(ClusterError::NoPortLeft {
                            node: format!("{}:{port}", shown(&n.ip)),
                        });
                        continue;
                    }
                    Some(Some(p)) => Some(*p),
                    Some(None) => continue, // the map was not read: the next reading
                };
                match admitted {
                    Ok(ip) => {
                        if let Err(e) = self.open(&mut state, &key, n, (*ip, port), now, ours) {
                            failed.get_or_insert(e);
                            continue;
                        }
                    }
                    Err(why) => {
                        self.refused(n, port, why, false);
                        continue;
                    }
                }
            }
            let Some(s) = state.served.get_mut(&key) else {
                continue;
            };
            s.missing = None;
            s.refused = admitted.is_err();
            match admitted {
                Ok(ip) => {
                    if s.target.follow(*ip, port) {
                        info!(node = %key, address = %format!("{ip}:{port}"), port = s.port, "cluster: a node moved; its listener follows it");
                    }
                }
                Err(why) => self.refused(n, port, why, true),
            }
            s.names = names(n, port, s.target.addr());
        }
        let closed = self.forget_missing(&mut state, gone, now);
        (known(&state, host), failed, closed)
    }

    /// Nodes two views lacked: counted, and closed once missing long enough. (A node only
    /// one view lacked keeps its count as it was.) Returns the nodes closed, with their ports.
    fn forget_missing(
        &self,
        state: &mut State,
        absent: &HashSet<String>,
        now: Instant,
    ) -> Vec<(String, u16)> {
        let mut gone = Vec::new();
        for (key, s) in &mut state.served {
            if !absent.contains(key) {
                continue;
            }
            let (since, readings) = s.missing.get_or_insert((now, 0));
            *readings += 1;
            if now.saturating_duration_since(*since) >= self.grace && *readings >= MISSED_READINGS {
                gone.push(key.clone());
            }
        }
        let mut closed = Vec::with_capacity(gone.len());
        for key in gone {
            let Some(s) = state.served.remove(&key) else {
                continue;
            };
            // The listener stops accepting and its port closes; its sessions drain (a
            // request in flight is answered, then the connection closes); their upstream
            // connections end (the target's epoch), so none waits on the node.
            s.stop.cancel();
            s.target.remove();
            state.ports.release(s.port, now);
            self.meters.listening.dec();
            self.meters.removed.inc();
            info!(node = %key, port = s.port, quarantine_s = self.quarantine.as_secs(), "cluster: a node left the topology; its listener is closed");
            closed.push((key, s.port));
        }
        closed
    }

    /// A listener for a new node at its admitted `addr`: on port `agreed` (the shared map's),
    /// or else on the next free port of this instance's own.
    fn open(
        &self,
        state: &mut State,
        key: &str,
        n: &Node,
        addr: (IpAddr, u16),
        now: Instant,
        agreed: Option<u16>,
    ) -> Result<(), ClusterError> {
        let (listener, ours) = if let Some(p) = agreed {
            // Another port would disagree with the other instances: none, until this binds.
            let l = self.listen_on(p).map_err(|e| ClusterError::Bind {
                port: p,
                node: format!("{}:{}", shown(&n.ip), addr.1),
                why: e.to_string(),
            })?;
            (l, p)
        } else {
            self.take_port(state, n, addr, now)?
        };
        let target = Arc::new(NodeTarget::new(
            ours,
            &n.id,
            addr,
            Arc::clone(&self.refresh),
            self.meters.unconfirmed.clone(),
        ));
        let connector = Arc::new(self.connector.to_target(Target::Chosen(
            Arc::clone(&target) as Arc<dyn crate::upstream::Chooser>
        )));
        let listener = listener.for_node(connector);
        let stop = self.root.child_token();
        match self.running.get() {
            Some(r) => {
                if let Some(shared) = r.shared.upgrade() {
                    r.tasks
                        .spawn(listener.accept_loop(shared, stop.clone(), r.tasks.clone()));
                }
            }
            None => lock(&self.pending).push((listener, stop.clone())),
        }
        info!(node = %key, address = %format!("{}:{}", addr.0, addr.1), port = ours, "cluster: listening for a node");
        self.meters.listening.inc();
        self.meters.added.inc();
        state.served.insert(
            key.to_owned(),
            Served {
                id: n.id.clone(),
                port: ours,
                target,
                stop,
                names: Vec::new(),
                refused: false,
                missing: None,
            },
        );
        Ok(())
    }

    /// A listener on `port` of `node_listeners.bind`, with the first listener's settings.
    fn listen_on(&self, port: u16) -> std::io::Result<Listener> {
        crate::bind(SocketAddr::new(self.bind, port))
            .and_then(|tcp| Listener::new(tcp, Arc::clone(&self.settings)))
    }

    /// The next free port of this instance's own range that binds (`port_map: local`).
    fn take_port(
        &self,
        state: &mut State,
        n: &Node,
        addr: (IpAddr, u16),
        now: Instant,
    ) -> Result<(Listener, u16), ClusterError> {
        loop {
            let p = state
                .ports
                .take(now)
                .ok_or_else(|| ClusterError::NoPortLeft {
                    node: format!("{}:{}", shown(&n.ip), addr.1),
                })?;
            match self.listen_on(p) {
                Ok(l) => return Ok((l, p)),
                Err(e) => {
                    debug!(port = p, error = %e, "cluster: node listener port taken");
                    state.ports.release(p, now);
                }
            }
        }
    }

    /// A node address not admitted: counted, and logged a few times per burst (whoever can
    /// change a node's announced address can cause this).
    fn refused(&self, n: &Node, port: u16, why: &Refusal, has_listener: bool) {
        self.meters.refused.inc();
        if let crate::throttle::Verdict::Log { suppressed } = self.admission.lines.event() {
            let address = format!("{}:{port}", shown(&n.ip));
            let node = shown(&n.id);
            if has_listener {
                warn!(%node, %address, reason = %why, not_logged_before = suppressed, "cluster: a node announces an address that is not admitted; its listener keeps dialling the last admitted one");
            } else {
                warn!(%node, %address, reason = %why, not_logged_before = suppressed, "cluster: a node's address is not admitted; no listener, never dialled");
            }
        }
    }
}

/// Every `(name, port)` replies may call a node by: its `ip` and other names (`endpoint`,
/// `hostname`) at the port redward dials (the one `MOVED` names: `tls-port` on a TLS
/// cluster) and its plaintext one, and the address its listener dials.
fn names(n: &Node, port: u16, dialled: Option<UpstreamAddr>) -> Vec<(Vec<u8>, u16)> {
    let mut out: Vec<(Vec<u8>, u16)> = Vec::new();
    let hosts = std::iter::once(&n.ip).chain(&n.aliases);
    for name in hosts {
        for p in [port, n.port] {
            let k = (name.as_bytes().to_vec(), p);
            if p != 0 && !out.contains(&k) {
                out.push(k);
            }
        }
    }
    if let Some(UpstreamAddr::Tcp { host, port }) = dialled {
        let k = (host.into_bytes(), port);
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// What replies call each served node. Where two nodes claim one name (a node pointed at
/// another's address), a node present at an admitted address wins, then one whose new
/// address was refused, then one missing from the last reading.
fn known(state: &State, host: &Arc<str>) -> Known {
    let mut served: Vec<&Served> = state.served.values().collect();
    served.sort_by_key(|s| (s.missing.is_some(), s.refused, s.port));
    let mut k = Known::default();
    for s in served {
        let ep = Endpoint {
            host: Arc::clone(host),
            port: s.port,
        };
        if !s.id.is_empty() {
            k.by_id.insert(s.id.as_bytes().to_vec(), ep.clone());
        }
        for name in &s.names {
            k.by_addr.entry(name.clone()).or_insert_with(|| ep.clone());
        }
    }
    k
}
