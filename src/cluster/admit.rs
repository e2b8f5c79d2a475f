//! Which node addresses redward dials. A node's address comes from the cluster's own
//! description, which a client allowed `CONFIG SET cluster-announce-ip` (or a compromised
//! node) can point anywhere; dialling it sends redward's upstream credential there. So an
//! address is admitted only within `node_listeners.allow` (default: the seeds' networks, a
//! /24 around each IPv4 seed, a /64 around each IPv6 one, hostnames resolved), and a node keeps
//! its listener when its address changes: its [`NodeTarget`] follows it instead of a new
//! listener being opened, so cycling `cluster-announce-port` cannot use up the port range.

use std::net::IpAddr;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::config::UpstreamAddr;

/// The networks node addresses must be in.
#[derive(Debug)]
pub(super) struct Admission {
    /// `node_listeners.allow`; empty: the seeds' networks.
    configured: Vec<IpNet>,
    seeds: Vec<(String, u16)>,
    /// Refusals are caused by whoever controls a node's announced address: a few log lines
    /// per burst.
    pub(super) lines: crate::throttle::Throttle,
}

impl Admission {
    pub(super) fn new(configured: Vec<IpNet>, seeds: Vec<(String, u16)>) -> Self {
        Admission {
            configured,
            seeds,
            lines: crate::throttle::Throttle::default(),
        }
    }

    /// The networks in force: the configured ones, or those of the seeds (resolved now: a
    /// seed named by a host name may move, as a Kubernetes pod's does).
    pub(super) async fn networks(&self) -> Vec<IpNet> {
        if !self.configured.is_empty() {
            return self.configured.clone();
        }
        let mut nets = Vec::new();
        for (host, port) in &self.seeds {
            let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map(|addrs| addrs.map(|a| a.ip()).collect())
                    .unwrap_or_default(),
            };
            for ip in ips {
                let net = seed_network(ip);
                if !nets.contains(&net) {
                    nets.push(net);
                }
            }
        }
        nets
    }

    /// Whether redward may dial a node at `host`: an IP address within `nets`, or a seed's
    /// own name (the operator wrote it).
    pub(super) fn allows(&self, nets: &[IpNet], host: &str) -> bool {
        match host.parse::<IpAddr>() {
            Ok(ip) => nets.iter().any(|n| n.contains(&ip)),
            Err(_) => self.seeds.iter().any(|(h, _)| h == host),
        }
    }
}

/// The network a seed stands for by default: its /24 (IPv4) or /64 (IPv6), the usual size of
/// the subnet a cluster's nodes share.
fn seed_network(ip: IpAddr) -> IpNet {
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// Where one node listener's sessions connect: the node's address now. A node the cluster
/// announces at a new (admitted) address keeps its listener and port; only this changes.
#[derive(Debug)]
pub(super) struct NodeTarget {
    name: String,
    addr: ArcSwap<UpstreamAddr>,
}

impl NodeTarget {
    pub(super) fn new(listener_port: u16, host: &str, port: u16) -> Self {
        NodeTarget {
            name: format!("cluster node listener {listener_port}"),
            addr: ArcSwap::from_pointee(UpstreamAddr::Tcp {
                host: host.to_owned(),
                port,
            }),
        }
    }

    /// The node is at `host:port` now.
    pub(super) fn moved(&self, host: &str, port: u16) {
        self.addr.store(std::sync::Arc::new(UpstreamAddr::Tcp {
            host: host.to_owned(),
            port,
        }));
    }
}

impl crate::upstream::Chooser for NodeTarget {
    fn choose(&self) -> Option<UpstreamAddr> {
        Some(UpstreamAddr::clone(&self.addr.load()))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_default_networks_are_the_seeds_and_only_admitted_addresses_are_dialled() {
        let a = Admission::new(
            Vec::new(),
            vec![("10.1.2.3".into(), 6379), ("fd00::7".into(), 6379)],
        );
        let nets = a.networks().await;
        assert_eq!(
            nets,
            ["10.1.2.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()]
        );
        assert!(a.allows(&nets, "10.1.2.200"));
        assert!(a.allows(&nets, "fd00::9"));
        assert!(!a.allows(&nets, "10.1.3.1"));
        assert!(!a.allows(&nets, "203.0.113.9"));
        assert!(!a.allows(&nets, "attacker.example"));
        let configured = Admission::new(vec!["127.0.0.1/32".parse().unwrap()], Vec::new());
        let nets = configured.networks().await;
        assert!(configured.allows(&nets, "127.0.0.1"));
        assert!(!configured.allows(&nets, "127.0.0.2"));
    }
}
