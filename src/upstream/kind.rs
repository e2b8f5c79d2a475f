//! Where the kinds of upstream differ on a session's path, asked in one place.
//!
//! A fixed address, a Sentinel-named master and a Redis Cluster node differ in how a
//! connection finds its address ([`Target::resolve`], `target.rs`, `sentinel.rs`,
//! `cluster/`) and in what their replies say about it:
//! - a cluster names its nodes in replies (`-MOVED`/`-ASK` errors and `CLUSTER SLOTS`,
//!   `SHARDS`, `NODES`, `REPLICAS`), which are written over with redward's listeners
//!   (`announce.rs`);
//! - `-READONLY` from a Sentinel-named master says it was demoted: the Sentinels are asked
//!   again ([`Target::suspect`]);
//! - a Sentinel switch, or a cluster node that moved, ends the connections to the old address
//!   ([`Target::epoch`], [`Target::change`]).
//!
//! The session asks [`Kind::reply_hook`] of each request it forwards and [`Kind::error_reply`]
//! of each error reply it passes on, and never which kind it has.

use std::sync::Arc;

use crate::announce::{Announce, ClusterReply, ExecReply, Reply};
use crate::resp::{Request, Rewrite};

use super::Target;

/// One session's upstream, as its reply path sees it.
#[derive(Debug, Clone, Copy)]
pub struct Kind<'a> {
    target: &'a Target,
    /// Behind a cluster (`upstream.cluster` or `cluster_announce`): how its nodes are
    /// announced.
    cluster: Option<&'a Arc<dyn Announce>>,
}

/// A transaction's `CLUSTER` requests whose replies name nodes: their places in EXEC's reply.
#[derive(Debug, Default)]
pub struct QueuedTopology(Vec<(usize, Reply)>);

impl QueuedTopology {
    /// A new MULTI: nothing queued.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Where a forwarded request stands in the client's MULTI, as the session dispatched it.
#[derive(Debug)]
pub struct Txn<'t> {
    /// The request was queued inside MULTI.
    pub in_multi: bool,
    /// Requests queued in this MULTI so far, this one included.
    pub queued: usize,
    pub topology: &'t mut QueuedTopology,
}

/// What the upstream's kind makes of an error reply.
#[derive(Debug, PartialEq, Eq)]
pub enum ErrorReply {
    /// A cluster's redirection: the client gets these bytes (redward's listener for the
    /// node), or the line as Redis wrote it where no cluster is announced.
    Redirect(Option<Vec<u8>>),
    /// None of the kind's business: the session passes it on as for any upstream.
    Pass,
}

impl<'a> Kind<'a> {
    pub fn new(target: &'a Target, cluster: Option<&'a Arc<dyn Announce>>) -> Kind<'a> {
        Kind { target, cluster }
    }

    /// For a request whose reply names nodes, behind a cluster: the hook that names redward's
    /// endpoints instead. Inside MULTI the reply comes within EXEC's: such a request is
    /// remembered by its place in `txn`, and EXEC's reply gets the hook for those places.
    pub fn reply_hook(&self, req: &Request<'_>, txn: Txn<'_>) -> Option<Arc<dyn Rewrite>> {
        // Not behind a cluster: one check, nothing else.
        let announce = self.cluster?;
        let name = req.name();
        let exec = name.eq_ignore_ascii_case(b"exec");
        if !exec && (req.argc() < 2 || !name.eq_ignore_ascii_case(b"cluster")) {
            return None;
        }
        if exec {
            if txn.topology.0.is_empty() {
                return None;
            }
            let queued = std::mem::take(&mut txn.topology.0);
            return Some(Arc::new(ExecReply {
                queued,
                announce: Arc::clone(announce),
            }));
        }
        let kind = Reply::of(req.arg(1))?;
        if txn.in_multi {
            // This request was just queued: its reply is EXEC's element `queued - 1`.
            let place = txn.queued.saturating_sub(1);
            txn.topology.0.push((place, kind));
            return None;
        }
        Some(Arc::new(ClusterReply {
            kind,
            announce: Arc::clone(announce),
        }))
    }

    /// An error reply from Redis (a whole line), seen on its way to the client whether or
    /// not the client gets it. A redirection is counted in `redirections` and rewritten; a
    /// `-READONLY` has the target's master checked again.
    pub fn error_reply(
        &self,
        line: &[u8],
        redirections: &prometheus_client::metrics::counter::Counter,
    ) -> ErrorReply {
        if line.starts_with(b"-MOVED ") || line.starts_with(b"-ASK ") {
            redirections.inc();
            let rewritten = self.cluster.and_then(|announce| {
                crate::announce::redirect(line, &**announce, || self.target.host_now())
            });
            return ErrorReply::Redirect(rewritten);
        }
        if line.starts_with(b"-READONLY") {
            // Writing to a replica: the master moved (Sentinel clients' guidelines).
            self.target.suspect("-READONLY");
        }
        ErrorReply::Pass
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::announce::Fixed;
    use crate::config::UpstreamAddr;
    use prometheus_client::metrics::counter::Counter;

    fn fixed() -> Target {
        Target::Fixed(UpstreamAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 6379,
        })
    }

    fn announce() -> Arc<dyn Announce> {
        Arc::new(Fixed::new(&[(
            ("10.0.0.1".into(), 7000),
            ("proxy.example".into(), 17000),
        )]))
    }

    /// `kind`'s hook for the request `args`, queued as request `queued` of a MULTI when
    /// `in_multi`.
    fn hook(
        kind: &Kind<'_>,
        args: &[&[u8]],
        in_multi: bool,
        queued: usize,
        topology: &mut QueuedTopology,
    ) -> Option<Arc<dyn Rewrite>> {
        let mut data = Vec::new();
        let mut ranges = Vec::new();
        for a in args {
            ranges.push(data.len()..data.len() + a.len());
            data.extend_from_slice(a);
        }
        let txn = Txn {
            in_multi,
            queued,
            topology,
        };
        kind.reply_hook(&Request::built(&data, &ranges), txn)
    }

    #[test]
    fn a_fixed_upstream_rewrites_nothing_and_passes_redirections_as_they_are() {
        let target = fixed();
        let kind = Kind::new(&target, None);
        let mut topology = QueuedTopology::default();
        assert!(hook(&kind, &[b"CLUSTER", b"SLOTS"], false, 0, &mut topology).is_none());
        let counted = Counter::default();
        let moved = b"-MOVED 3999 10.0.0.1:7000\r\n";
        assert_eq!(
            kind.error_reply(moved, &counted),
            ErrorReply::Redirect(None)
        );
        assert_eq!(counted.get(), 1);
        assert_eq!(kind.error_reply(b"-ERR no\r\n", &counted), ErrorReply::Pass);
    }

    #[test]
    fn behind_a_cluster_redirections_and_topology_replies_name_redwards_listeners() {
        let target = fixed();
        let announce = announce();
        let kind = Kind::new(&target, Some(&announce));
        let counted = Counter::default();
        let moved = b"-MOVED 3999 10.0.0.1:7000\r\n";
        assert_eq!(
            kind.error_reply(moved, &counted),
            ErrorReply::Redirect(Some(b"-MOVED 3999 proxy.example:17000\r\n".to_vec()))
        );
        let mut topology = QueuedTopology::default();
        assert!(hook(&kind, &[b"cluster", b"slots"], false, 0, &mut topology).is_some());
        assert!(hook(&kind, &[b"GET", b"k"], false, 0, &mut topology).is_none());
    }

    /// Inside MULTI the `CLUSTER` request's reply is EXEC's element at its place: EXEC gets
    /// the hook, once.
    #[test]
    fn a_transactions_topology_requests_hook_exec_by_their_places() {
        let target = fixed();
        let announce = announce();
        let kind = Kind::new(&target, Some(&announce));
        let mut topology = QueuedTopology::default();
        assert!(hook(&kind, &[b"CLUSTER", b"NODES"], true, 2, &mut topology).is_none());
        assert_eq!(topology.0, [(1, Reply::Nodes)]);
        assert!(hook(&kind, &[b"EXEC"], false, 2, &mut topology).is_some());
        assert!(
            hook(&kind, &[b"EXEC"], false, 2, &mut topology).is_none(),
            "the places are EXEC's once"
        );
    }
}
