//! Which node addresses redward dials, and what a node listener's connections must confirm.
//!
//! A node's address comes from the cluster's own description, which a client allowed
//! `CONFIG SET cluster-announce-ip` (or a compromised node) can point anywhere, and dialling
//! it sends redward's upstream credential there. So:
//!
//! - an address is admitted only within `node_listeners.allow` (default: the seeds' own
//!   addresses, each a host route: /32 or /128). A name where Redis writes `ip` is resolved
//!   once, every address it resolves to must be admitted, and the address is what is dialled
//!   (no second lookup at connect time for a rebinding DNS to answer differently);
//! - a node is known by its id, and its listener's [`NodeTarget`] follows it to a new admitted
//!   address (so cycling `cluster-announce-port` takes no new port), ending the connections
//!   to the old one (its epoch);
//! - every connection a node listener opens confirms the node's id (`CLUSTER MYID`) before
//!   it is used: before the credential where the node answers without a login, after it
//!   otherwise (`upstream::Connector`). An id is public (`CLUSTER NODES`), so this catches a
//!   wrong server at an admitted address (a reused IP, a stale port), not an impostor that
//!   answers `-NOAUTH`; against that, `allow` and, with `upstream.tls`, the certificate are
//!   the guards.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use crate::config::UpstreamAddr;

/// Why a node's address was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("{0} is outside upstream.cluster.node_listeners.allow")]
    Outside(IpAddr),
    #[error("`{0}` did not resolve (within the connect timeout)")]
    Unresolved(String),
}

/// The networks node addresses must be in.
#[derive(Debug)]
pub(super) struct Admission {
    /// `node_listeners.allow`; empty: the seeds' addresses.
    configured: Vec<IpNet>,
    seeds: Vec<(String, u16)>,
    /// The bound on one name's resolution (`upstream.connect_timeout`).
    resolve_within: Duration,
    /// Refusals are caused by whoever controls a node's announced address: a few log lines
    /// per burst.
    pub(super) lines: crate::throttle::Throttle,
}

impl Admission {
    pub(super) fn new(
        configured: Vec<IpNet>,
        seeds: Vec<(String, u16)>,
        resolve_within: Duration,
    ) -> Self {
        Admission {
            configured,
            seeds,
            resolve_within,
            lines: crate::throttle::Throttle::default(),
        }
    }

    /// The networks in force: the configured ones, or a host route for each address of each
    /// seed (resolved now: a seed named by a host name may move, as a Kubernetes pod's does).
    pub(super) async fn networks(&self) -> Vec<IpNet> {
        if !self.configured.is_empty() {
            return self.configured.clone();
        }
        let mut nets = Vec::new();
        for (host, port) in &self.seeds {
            for ip in self.resolve(host, *port).await.unwrap_or_default() {
                let net = IpNet::from(ip);
                if !nets.contains(&net) {
                    nets.push(net);
                }
            }
        }
        nets
    }

    /// The address to dial for a node the cluster says is at `host`: an IP address within
    /// `nets`, or a name whose every address is (the first is dialled).
    pub(super) async fn admit(&self, nets: &[IpNet], host: &str) -> Result<IpAddr, Refusal> {
        let ips = self
            .resolve(host, 0)
            .await
            .filter(|ips| !ips.is_empty())
            .ok_or_else(|| {
                let shown: String = host.chars().take(64).collect();
                Refusal::Unresolved(shown.escape_debug().to_string())
            })?;
        if let Some(out) = ips.iter().find(|ip| !within(nets, **ip)) {
            return Err(Refusal::Outside(*out));
        }
        Ok(ips[0])
    }

    /// `host`'s addresses: itself if it is one, else a lookup bounded by the connect timeout.
    async fn resolve(&self, host: &str, port: u16) -> Option<Vec<IpAddr>> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Some(vec![ip]);
        }
        let lookup = tokio::net::lookup_host((host, port));
        let addrs = tokio::time::timeout(self.resolve_within, lookup)
            .await
            .ok()?
            .ok()?;
        let mut ips: Vec<IpAddr> = Vec::new();
        for a in addrs {
            if !ips.contains(&a.ip()) {
                ips.push(a.ip());
            }
        }
        Some(ips)
    }
}

/// Whether `ip` is within one of `nets` (an IPv4-mapped IPv6 address as its IPv4 one).
fn within(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// Makes every [`NodeTarget`]'s name unique: shared connections are pooled by target name
/// (`mux::Pools`), and a node that leaves and comes back must not find its old pool.
static SERIAL: AtomicU64 = AtomicU64::new(0);

/// Where one node listener's sessions connect: the node's admitted address now, and the id
/// its connections must confirm. `None` once the node has left (its listener is closing).
#[derive(Debug)]
pub(super) struct NodeTarget {
    name: String,
    /// Empty for a node known without one (`CLUSTER SLOTS` of an old server): not checked.
    id: Arc<str>,
    addr: ArcSwap<Option<UpstreamAddr>>,
    /// Ends when the address changes or the node leaves: connections to it are then dropped
    /// (`Target::epoch`).
    epoch: Mutex<CancellationToken>,
    /// Asks the cluster for a new reading (a connection did not confirm the node).
    refresh: Arc<tokio::sync::Notify>,
    /// `redward_cluster_node_unconfirmed_total`.
    unconfirmed: prometheus_client::metrics::counter::Counter,
}

impl NodeTarget {
    pub(super) fn new(
        listener_port: u16,
        id: &str,
        (ip, port): (IpAddr, u16),
        refresh: Arc<tokio::sync::Notify>,
        unconfirmed: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        NodeTarget {
            name: format!("cluster node {id} (listener {listener_port}, #{serial})"),
            id: Arc::from(id),
            addr: ArcSwap::from_pointee(Some(tcp(ip, port))),
            epoch: Mutex::new(CancellationToken::new()),
            refresh,
            unconfirmed,
        }
    }

    /// The address it dials now, if the node has not left.
    pub(super) fn addr(&self) -> Option<UpstreamAddr> {
        Option::clone(&self.addr.load())
    }

    /// The node is at `ip:port`: `true` if that is new (connections to the old address end).
    pub(super) fn follow(&self, ip: IpAddr, port: u16) -> bool {
        let to = tcp(ip, port);
        if self.addr.load().as_ref() == &Some(to.clone()) {
            return false;
        }
        self.addr.store(Arc::new(Some(to)));
        self.end_epoch();
        true
    }

    /// The node left: no new connection, and those open end.
    pub(super) fn remove(&self) {
        self.addr.store(Arc::new(None));
        self.end_epoch();
    }

    fn end_epoch(&self) {
        let mut epoch = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *epoch).cancel();
    }
}

fn tcp(ip: IpAddr, port: u16) -> UpstreamAddr {
    UpstreamAddr::Tcp {
        host: ip.to_string(),
        port,
    }
}

impl crate::upstream::Chooser for NodeTarget {
    fn choose(&self) -> Option<UpstreamAddr> {
        self.addr()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn node_id(&self) -> Option<Arc<str>> {
        (!self.id.is_empty()).then(|| Arc::clone(&self.id))
    }

    fn epoch(&self) -> Option<CancellationToken> {
        Some(self.epoch.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn not_the_node(&self) {
        self.unconfirmed.inc();
        self.refresh.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(configured: &[&str], seeds: &[&str]) -> Admission {
        Admission::new(
            configured.iter().map(|n| n.parse().unwrap()).collect(),
            seeds.iter().map(|s| ((*s).to_owned(), 6379)).collect(),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn the_default_networks_are_the_seeds_own_addresses() {
        let a = admission(&[], &["10.1.2.3", "fd00::7", "localhost"]);
        let nets = a.networks().await;
        assert!(nets.contains(&"10.1.2.3/32".parse().unwrap()), "{nets:?}");
        assert!(nets.contains(&"fd00::7/128".parse().unwrap()), "{nets:?}");
        // `localhost` resolved: its loopback address(es), as host routes.
        assert!(nets
            .iter()
            .any(|n| n.addr().is_loopback() && n.prefix_len() >= 32));
        assert_eq!(
            a.admit(&nets, "10.1.2.3").await,
            Ok("10.1.2.3".parse().unwrap())
        );
        assert!(a.admit(&nets, "fd00::7").await.is_ok());
        for refused in ["10.1.2.4", "fd00::8", "203.0.113.9"] {
            assert_eq!(
                a.admit(&nets, refused).await,
                Err(Refusal::Outside(refused.parse().unwrap()))
            );
        }
    }

    #[tokio::test]
    async fn configured_networks_replace_the_seeds_and_names_must_resolve_inside_them() {
        let a = admission(&["127.0.0.1/32"], &["10.1.2.3"]);
        let nets = a.networks().await;
        assert_eq!(nets, vec!["127.0.0.1/32".parse::<IpNet>().unwrap()]);
        assert!(a.admit(&nets, "127.0.0.1").await.is_ok());
        assert!(a.admit(&nets, "[127.0.0.1]").await.is_ok());
        assert!(a.admit(&nets, "10.1.2.3").await.is_err());
        assert!(a.admit(&nets, "127.0.0.2").await.is_err());
        // A mapped IPv4 address is its IPv4 address.
        assert!(a.admit(&nets, "::ffff:127.0.0.1").await.is_ok());
        // A name that does not resolve is refused, never dialled.
        assert!(matches!(
            a.admit(&nets, "no-such-node.invalid").await,
            Err(Refusal::Unresolved(_))
        ));
    }

    #[test]
    fn a_target_follows_its_node_and_ends_the_old_connections() {
        use crate::upstream::Chooser;
        let t = NodeTarget::new(
            7101,
            "abc",
            ("127.0.0.1".parse().unwrap(), 6379),
            Arc::default(),
            Default::default(),
        );
        let epoch = t.epoch().unwrap();
        assert!(!t.follow("127.0.0.1".parse().unwrap(), 6379));
        assert!(!epoch.is_cancelled());
        assert!(t.follow("127.0.0.1".parse().unwrap(), 6380));
        assert!(epoch.is_cancelled());
        assert_eq!(
            t.choose(),
            Some(UpstreamAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 6380
            })
        );
        let epoch = t.epoch().unwrap();
        t.remove();
        assert!(epoch.is_cancelled() && t.choose().is_none());
        assert_eq!(t.node_id().as_deref(), Some("abc"));
    }
}
