//! Every metric redward exports, declared once with its help text (`redward_*`, Prometheus
//! text format on the admin endpoint). Label values are fixed at start-up: the hot path only
//! increments pre-resolved counters (an atomic add), it never builds a label set.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Address {
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamUser {
    user: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Result_ {
    result: &'static str,
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub refused_not_allowed: Counter,
    pub refused_max_connections: Counter,
    pub refused_per_ip: Counter,
    pub refused_rate: Counter,
    pub refused_untrusted_proxy: Counter,
    pub refused_proxy_header: Counter,
    /// Bytes buffered for all clients (`limits.max_client_memory` counts these).
    pub client_memory: Gauge,
    /// Clients disconnected because all clients together held too much.
    pub clients_evicted: Counter,
    pub tls_handshake_failures: Counter,
    pub commands_forwarded: Counter,
    pub commands_local: Counter,
    pub commands_denied: Counter,
    pub commands_rate_limited: Counter,
    pub auth_failures: Counter,
    pub auth_lockouts: Counter,
    pub acl_denied_command: Counter,
    pub acl_denied_key: Counter,
    pub acl_denied_channel: Counter,
    pub upstream_connect_errors: Counter,
    pub upstream_stream_errors: Counter,
    /// Open upstream connections: shared ones, and clients' own.
    pub upstream_shared: Gauge,
    pub upstream_own: Gauge,
    /// Clients that moved from a shared connection to their own.
    pub upstream_moves: Counter,
    pub request_duration: Histogram,
    /// Master switches seen through Sentinel.
    pub upstream_failovers: Counter,
    /// 1 for the master Sentinel names now (by address), 0 for earlier ones.
    upstream_master: Family<Address, Gauge>,
    /// Cluster nodes with a listener of their own (`upstream.cluster`).
    pub cluster_nodes: Gauge,
    /// `-MOVED`/`-ASK` replies rewritten to name redward's listeners.
    pub cluster_redirections: Counter,
    /// Node addresses outside `node_listeners.allow`, not dialled.
    pub cluster_nodes_refused: Counter,
    /// `upstream.identity: per_user`: the Redis users redward keeps for its users.
    pub upstream_users: Gauge,
    /// `ACL SETUSER`, `DELUSER`, `SAVE` and `LOAD` that succeeded.
    pub acl_changes: Counter,
    /// Upstream connections open, by the Redis user they are logged in as.
    upstream_user_connections: Family<UpstreamUser, Gauge>,
    /// Node listeners opened, and closed after their node left the topology.
    pub cluster_nodes_added: Counter,
    pub cluster_nodes_removed: Counter,
    /// Node listener connections closed because the server did not confirm the node's id.
    pub cluster_node_unconfirmed: Counter,
    /// Calls to the cluster's shared port map that failed, and ports it disagreed on.
    pub cluster_port_map_errors: Counter,
}

/// The metrics of a deployment beyond one Redis: Sentinel, cluster, per-user identities and
/// users changed at run time.
struct DeploymentMetrics {
    upstream_failovers: Counter,
    upstream_master: Family<Address, Gauge>,
    cluster_nodes: Gauge,
    cluster_redirections: Counter,
    acl_changes: Counter,
    upstream_users: Gauge,
    upstream_user_connections: Family<UpstreamUser, Gauge>,
    cluster_nodes_refused: Counter,
    cluster_nodes_added: Counter,
    cluster_nodes_removed: Counter,
    cluster_node_unconfirmed: Counter,
    cluster_port_map_errors: Counter,
}

impl DeploymentMetrics {
    fn register(reg: &mut Registrar) -> DeploymentMetrics {
        let upstream_failovers: Counter = reg.add(
            "upstream_failovers",
            "Master switches seen through Sentinel (upstream.sentinel)",
        );
        let upstream_master: Family<Address, Gauge> = reg.add(
            "upstream_master",
            "1 for the address Sentinel names as master now, 0 for earlier masters",
        );
        let cluster_nodes: Gauge = reg.add(
            "cluster_nodes",
            "Cluster nodes redward has a listener for (upstream.cluster)",
        );
        let cluster_redirections: Counter = reg.add(
            "cluster_redirections",
            "MOVED and ASK replies rewritten to name redward's node listeners",
        );
        let acl_changes: Counter = reg.add(
            "acl_changes",
            "ACL SETUSER, DELUSER, SAVE and LOAD through redward that succeeded",
        );
        let upstream_users: Gauge = reg.add(
            "upstream_users",
            "Redis users redward keeps for its users (upstream.identity: per_user)",
        );
        let upstream_user_connections: Family<UpstreamUser, Gauge> = reg.add(
            "upstream_user_connections",
            "Upstream connections open, by the Redis user they are logged in as",
        );
        let cluster_nodes_refused: Counter = reg.add(
            "cluster_nodes_refused",
            "Cluster node addresses outside upstream.cluster.node_listeners.allow, not dialled",
        );
        let cluster_nodes_added: Counter = reg.add(
            "cluster_nodes_added",
            "Cluster node listeners opened (a node appeared at an admitted address)",
        );
        let cluster_nodes_removed: Counter = reg.add(
            "cluster_nodes_removed",
            "Cluster node listeners closed (their node left the topology for the grace period)",
        );
        let cluster_node_unconfirmed: Counter = reg.add("cluster_node_unconfirmed", "Node listener connections closed unused: the server did not confirm the node's id (CLUSTER MYID)");
        let cluster_port_map_errors: Counter = reg.add(
            "cluster_port_map_errors",
            "Reads or changes of the cluster's shared node port map that failed, and nodes it gave another port than this instance serves them on",
        );
        DeploymentMetrics {
            cluster_port_map_errors,
            upstream_failovers,
            upstream_master,
            cluster_nodes,
            cluster_redirections,
            acl_changes,
            upstream_users,
            upstream_user_connections,
            cluster_nodes_refused,
            cluster_nodes_added,
            cluster_nodes_removed,
            cluster_node_unconfirmed,
        }
    }
}

/// Registers each metric under its name and help and hands back the handle to it.
struct Registrar<'a>(&'a mut Registry);

impl Registrar<'_> {
    fn add<M: prometheus_client::registry::Metric + Clone + Default>(
        &mut self,
        name: &str,
        help: &str,
    ) -> M {
        let metric = M::default();
        self.0.register(name, help, metric.clone());
        metric
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The gauge of upstream connections logged in as `user` (a `redward:<name>` user, or
    /// redward's own: `None`).
    pub fn user_connections(&self, user: Option<&str>) -> Gauge {
        let user = user.map_or_else(
            || "(redward)".to_owned(),
            |u| format!("{}{u}", crate::upstream::identity::PREFIX),
        );
        self.upstream_user_connections
            .get_or_create(&UpstreamUser { user })
            .clone()
    }

    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("redward");
        let mut reg = Registrar(&mut registry);
        let connections_open: Gauge = reg.add("connections_open", "Client connections open now");
        let connections_accepted: Counter = reg.add(
            "connections_accepted",
            "Client connections admitted (allow-list and limits passed)",
        );
        let refused: Family<Reason, Counter> = reg.add(
            "connections_refused",
            "Client connections closed at accept, by reason",
        );
        let r = |reason| refused.get_or_create(&Reason { reason }).clone();
        let tls_handshake_failures: Counter = reg.add(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
        );
        let commands: Family<Result_, Counter> = reg.add("commands", "Client commands by result: forwarded to Redis, answered by redward, denied by ACL, rate limited");
        let c = |result| commands.get_or_create(&Result_ { result }).clone();
        let auth_failures: Counter = reg.add("auth_failures", "Failed AUTH/HELLO AUTH attempts");
        let auth_lockouts: Counter = reg.add(
            "auth_lockouts",
            "Logins refused because the source address is locked out",
        );
        let denials: Family<Reason, Counter> =
            reg.add("acl_denials", "Commands refused by ACL rules, by reason");
        let d = |reason| denials.get_or_create(&Reason { reason }).clone();
        let upstream_errors: Family<Reason, Counter> = reg.add(
            "upstream_errors",
            "Upstream Redis failures: connect (incl. redward's own AUTH) or mid-stream",
        );
        let u = |reason| upstream_errors.get_or_create(&Reason { reason }).clone();
        let upstream_open: Family<Kind, Gauge> = reg.add(
            "upstream_connections",
            "Open connections to Redis: shared by clients, or a client's own",
        );
        let upstream_shared = upstream_open
            .get_or_create(&Kind { kind: "shared" })
            .clone();
        let upstream_own = upstream_open.get_or_create(&Kind { kind: "own" }).clone();
        let upstream_moves: Counter = reg.add("upstream_moves", "Clients moved from a shared upstream connection to their own (a command needing connection state)");
        let client_memory: Gauge = reg.add("client_memory_bytes", "Bytes buffered for clients (requests, replies, shared-connection inboxes), the sum limits.max_client_memory bounds");
        let clients_evicted: Counter = reg.add("clients_evicted", "Clients disconnected because all clients together buffered more than limits.max_client_memory");
        let request_duration = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0, 10.0,
        ]);
        reg.0.register(
            "request_duration_seconds",
            "Time from a forwarded request to the end of its reply (one reply in eight is sampled)",
            request_duration.clone(),
        );
        let more = DeploymentMetrics::register(&mut reg);
        Metrics {
            upstream_failovers: more.upstream_failovers,
            upstream_master: more.upstream_master,
            cluster_nodes: more.cluster_nodes,
            cluster_redirections: more.cluster_redirections,
            cluster_nodes_refused: more.cluster_nodes_refused,
            upstream_users: more.upstream_users,
            acl_changes: more.acl_changes,
            upstream_user_connections: more.upstream_user_connections,
            cluster_nodes_added: more.cluster_nodes_added,
            cluster_nodes_removed: more.cluster_nodes_removed,
            cluster_node_unconfirmed: more.cluster_node_unconfirmed,
            cluster_port_map_errors: more.cluster_port_map_errors,
            connections_open,
            connections_accepted,
            refused_not_allowed: r("not_allowed"),
            refused_max_connections: r("max_connections"),
            refused_per_ip: r("max_connections_per_ip"),
            refused_rate: r("connection_rate"),
            refused_untrusted_proxy: r("untrusted_proxy"),
            refused_proxy_header: r("proxy_header"),
            client_memory,
            clients_evicted,
            tls_handshake_failures,
            commands_forwarded: c("forwarded"),
            commands_local: c("local"),
            commands_denied: c("denied"),
            commands_rate_limited: c("rate_limited"),
            auth_failures,
            auth_lockouts,
            acl_denied_command: d("command"),
            acl_denied_key: d("key"),
            acl_denied_channel: d("channel"),
            upstream_connect_errors: u("connect"),
            upstream_stream_errors: u("stream"),
            upstream_shared,
            upstream_own,
            upstream_moves,
            request_duration,
            registry,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Marks `address` as the master now (and `old`, if any, as no longer).
    pub fn master_is(&self, address: &str, old: Option<&str>) {
        if let Some(old) = old {
            self.upstream_master
                .get_or_create(&Address {
                    address: old.to_owned(),
                })
                .set(0);
        }
        self.upstream_master
            .get_or_create(&Address {
                address: address.to_owned(),
            })
            .set(1);
    }

    pub fn refused(&self, why: crate::limits::Refused) {
        use crate::limits::Refused;
        match why {
            Refused::NotAllowed => self.refused_not_allowed.inc(),
            Refused::TooManyConnections => self.refused_max_connections.inc(),
            Refused::TooManyFromAddress => self.refused_per_ip.inc(),
            Refused::RateExceeded => self.refused_rate.inc(),
            Refused::UntrustedProxy => self.refused_untrusted_proxy.inc(),
            Refused::ProxyHeader => self.refused_proxy_header.inc(),
        };
    }
}
