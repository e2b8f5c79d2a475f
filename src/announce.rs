//! Where a Redis Cluster names its nodes in replies, written over with the endpoints redward
//! announces for them: `-MOVED`/`-ASK` redirections and `CLUSTER SLOTS`, `SHARDS`, `NODES`,
//! `REPLICAS` (`SLAVES`). Everything else in those replies is copied byte for byte: a reply
//! is read into a tree of borrowed items, only the fields that name a node are replaced, and
//! the tree is written back in Redis's order (no map reordering, no number reformatting).
//!
//! The rewrites reach a session's replies as reply hooks ([`ClusterReply`], [`ExecReply`]),
//! attached where the upstream's kind is asked about a request (`upstream/kind.rs`).
//!
//! Pure: no I/O, no locks. What a node is announced as comes from an [`Announce`]: a
//! [`Fixed`] map (`upstream.cluster_announce`, a sidecar beside one node) or the discovered
//! cluster (`cluster.rs`, a listener per node). The field names follow `clusterReplyShards`,
//! `addNodeToNodeReply` and `clusterGenNodeDescription` in Redis's `cluster.c` (7.0).

use std::borrow::Cow;

use bytes::BytesMut;

use crate::resp::item::{parse, parse_u16, write, Item};
use crate::resp::{FrameInfo, Rewrite};

/// The endpoint redward announces for a node: the host clients are told, and the port of
/// redward's listener for that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: std::sync::Arc<str>,
    pub port: u16,
}

/// How nodes are announced. `None`: the node is not known (and could not be given a
/// listener); its address is then written as the announce host with port 0, never as the
/// node's own.
pub trait Announce: Send + Sync + std::fmt::Debug {
    /// By node id (40 hex characters), as `CLUSTER NODES` and `SHARDS` name nodes.
    fn by_id(&self, id: &[u8]) -> Option<Endpoint>;
    /// By the `host:port` Redis wrote (in `-MOVED`, or a node without an id).
    fn by_addr(&self, host: &[u8], port: u16) -> Option<Endpoint>;
    /// What an unknown node is written as.
    fn host(&self) -> std::sync::Arc<str>;
}

/// A host and a port.
pub type HostPort = (String, u16);

/// A fixed map from node addresses to announced endpoints (`upstream.cluster_announce`).
#[derive(Debug)]
pub struct Fixed {
    host: std::sync::Arc<str>,
    by_addr: std::collections::HashMap<(Vec<u8>, u16), Endpoint>,
}

impl Fixed {
    /// From `(node host, node port) -> (announced host, announced port)` pairs.
    pub fn new(map: &[(HostPort, HostPort)]) -> Fixed {
        let host = map.first().map_or_else(
            || std::sync::Arc::from("?"),
            |(_, (h, _))| std::sync::Arc::from(h.as_str()),
        );
        let by_addr = map
            .iter()
            .map(|((h, p), (ah, ap))| {
                (
                    (h.as_bytes().to_vec(), *p),
                    Endpoint {
                        host: std::sync::Arc::from(ah.as_str()),
                        port: *ap,
                    },
                )
            })
            .collect();
        Fixed { host, by_addr }
    }
}

impl Announce for Fixed {
    fn by_id(&self, _id: &[u8]) -> Option<Endpoint> {
        None
    }

    fn by_addr(&self, host: &[u8], port: u16) -> Option<Endpoint> {
        self.by_addr.get(&(host.to_vec(), port)).cloned()
    }

    fn host(&self) -> std::sync::Arc<str> {
        std::sync::Arc::clone(&self.host)
    }
}

/// Which `CLUSTER` reply a hook rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Slots,
    Shards,
    Nodes,
    Replicas,
}

impl Reply {
    /// For `CLUSTER <sub>`, if its reply names nodes.
    pub fn of(sub: &[u8]) -> Option<Reply> {
        let is = |n: &[u8]| sub.eq_ignore_ascii_case(n);
        if is(b"slots") {
            Some(Reply::Slots)
        } else if is(b"shards") {
            Some(Reply::Shards)
        } else if is(b"nodes") {
            Some(Reply::Nodes)
        } else if is(b"replicas") || is(b"slaves") {
            Some(Reply::Replicas)
        } else {
            None
        }
    }
}

/// `-MOVED <slot> <host>:<port>` or `-ASK ...` (a whole error line with its CRLF), with the
/// node's address replaced; `None` for any other error.
///
/// An empty host (`cluster-preferred-endpoint-type unknown-endpoint`, or `?` for a hostname
/// not known: `clusterNodePreferredEndpoint` in cluster.c) means "the host this connection
/// went to, that port": `here` gives the host of the node the session's connection reaches,
/// asked only then. Where every node has the same port (Kubernetes), the port alone would
/// not say which node.
pub fn redirect(
    line: &[u8],
    announce: &dyn Announce,
    here: impl FnOnce() -> Option<String>,
) -> Option<Vec<u8>> {
    let body = line.strip_suffix(b"\r\n").unwrap_or(line);
    let rest = body
        .strip_prefix(b"-MOVED ")
        .or_else(|| body.strip_prefix(b"-ASK "))?;
    let head_len = body.len() - rest.len();
    let space = rest.iter().position(|&b| b == b' ')?;
    let (slot, addr) = (&rest[..space], &rest[space + 1..]);
    let colon = addr.iter().rposition(|&b| b == b':')?;
    let port = parse_u16(&addr[colon + 1..])?;
    let host = &addr[..colon];
    let ep = if host.is_empty() || host == b"?" {
        here().and_then(|h| announce.by_addr(h.as_bytes(), port))
    } else {
        None
    };
    let ep = ep
        .or_else(|| announce.by_addr(host, port))
        .unwrap_or_else(|| unknown(announce));
    let mut out = Vec::with_capacity(line.len() + 16);
    out.extend_from_slice(&body[..head_len]);
    out.extend_from_slice(slot);
    out.push(b' ');
    push_endpoint(&mut out, &ep);
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// A whole `CLUSTER <kind>` reply, rewritten. A reply that is not what the kind promises
/// (an error, say) is copied as it is.
pub fn reply(kind: Reply, bytes: &[u8], announce: &dyn Announce) -> Vec<u8> {
    let Some((mut item, used)) = parse(bytes, 0) else {
        return bytes.to_vec();
    };
    if used != bytes.len() {
        return bytes.to_vec();
    }
    rewrite(kind, &mut item, announce);
    let mut out = Vec::with_capacity(bytes.len() + 64);
    write(&item, &mut out);
    out
}

/// EXEC's reply to a transaction that queued `CLUSTER` requests: element `i` of the array is
/// rewritten as `kind` for each `(i, kind)`. Anything else (EXECABORT, a null array after a
/// WATCH conflict) is copied as it is.
pub fn exec_reply(queued: &[(usize, Reply)], bytes: &[u8], announce: &dyn Announce) -> Vec<u8> {
    let Some((mut item, used)) = parse(bytes, 0) else {
        return bytes.to_vec();
    };
    if used != bytes.len() {
        return bytes.to_vec();
    }
    if let Item::Agg(_, elements) = &mut item {
        for (i, kind) in queued {
            if let Some(e) = elements.get_mut(*i) {
                rewrite(*kind, e, announce);
            }
        }
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    write(&item, &mut out);
    out
}

/// A `CLUSTER SLOTS`/`SHARDS`/`NODES`/`REPLICAS` reply on its way to the client, naming
/// redward's endpoints for the nodes: the reply hook a cluster upstream attaches
/// (`upstream/kind.rs`).
#[derive(Debug)]
pub struct ClusterReply {
    pub kind: Reply,
    pub announce: std::sync::Arc<dyn Announce>,
}

impl Rewrite for ClusterReply {
    fn rewrite(&self, reply: &[u8], _info: &FrameInfo, out: &mut BytesMut) {
        out.extend_from_slice(&self::reply(self.kind, reply, &*self.announce));
    }
}

/// EXEC's reply to a transaction that queued such `CLUSTER` requests: those elements are
/// rewritten ([`exec_reply`]).
#[derive(Debug)]
pub struct ExecReply {
    pub queued: Vec<(usize, Reply)>,
    pub announce: std::sync::Arc<dyn Announce>,
}

impl Rewrite for ExecReply {
    fn rewrite(&self, reply: &[u8], _info: &FrameInfo, out: &mut BytesMut) {
        out.extend_from_slice(&exec_reply(&self.queued, reply, &*self.announce));
    }
}

fn rewrite(kind: Reply, item: &mut Item<'_>, announce: &dyn Announce) {
    match kind {
        Reply::Slots => slots(item, announce),
        Reply::Shards => shards(item, announce),
        Reply::Nodes => {
            if let Item::Blob(_, text) = item {
                *text = Cow::Owned(nodes_text(text, announce));
            }
        }
        Reply::Replicas => {
            if let Item::Agg(_, lines) = item {
                for l in lines {
                    if let Item::Blob(_, text) = l {
                        *text = Cow::Owned(nodes_text(text, announce));
                    }
                }
            }
        }
    }
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, {meta}], ...], ...]`.
fn slots(item: &mut Item<'_>, announce: &dyn Announce) {
    let Item::Agg(_, ranges) = item else { return };
    for range in ranges {
        let Item::Agg(_, fields) = range else {
            continue;
        };
        for node in fields.iter_mut().skip(2) {
            let Item::Agg(_, n) = node else { continue };
            let id = n.get(2).and_then(Item::bytes).map(<[u8]>::to_vec);
            let host = n.first().and_then(Item::bytes).map(<[u8]>::to_vec);
            let port = n.get(1).and_then(Item::int);
            // The meta map's `hostname`/`ip`, for a fixed map keyed by another name.
            let meta_names: Vec<Vec<u8>> = match n.get(3) {
                Some(Item::Agg(_, meta)) => meta
                    .chunks(2)
                    .filter(|p| {
                        matches!(p.first().and_then(Item::bytes), Some(b"ip" | b"hostname"))
                    })
                    .filter_map(|p| p.get(1).and_then(Item::bytes).map(<[u8]>::to_vec))
                    .collect(),
                _ => Vec::new(),
            };
            let ep = id
                .as_deref()
                .and_then(|id| announce.by_id(id))
                .or_else(|| announce.by_addr(host.as_deref()?, port?))
                .or_else(|| meta_names.iter().find_map(|h| announce.by_addr(h, port?)))
                .unwrap_or_else(|| unknown(announce));
            if let Some(h) = n.get_mut(0) {
                h.set_bytes(ep.host.as_bytes());
            }
            if let Some(p) = n.get_mut(1) {
                p.set_int(ep.port);
            }
            if let Some(Item::Agg(_, meta)) = n.get_mut(3) {
                rewrite_pairs(meta, &ep);
            }
        }
    }
}

/// `CLUSTER SHARDS`: `[{slots: [...], nodes: [{id, port, tls-port, ip, endpoint, hostname,
/// ...}, ...]}, ...]`.
fn shards(item: &mut Item<'_>, announce: &dyn Announce) {
    let Item::Agg(_, shards) = item else { return };
    for shard in shards {
        let Item::Agg(_, pairs) = shard else { continue };
        for pair in pairs.chunks_mut(2) {
            let [k, v] = pair else { continue };
            if k.bytes() != Some(b"nodes") {
                continue;
            }
            let Item::Agg(_, nodes) = v else { continue };
            for node in nodes {
                let Item::Agg(_, fields) = node else { continue };
                let field = |name: &[u8]| {
                    fields
                        .chunks(2)
                        .find(|p| p.first().and_then(Item::bytes) == Some(name))
                        .and_then(|p| p.get(1))
                };
                let id = field(b"id").and_then(Item::bytes).map(<[u8]>::to_vec);
                // A fixed map may know the node by any of its names (a sidecar's map lists
                // hostnames, while `ip` is the pod's address), at either port.
                let names: Vec<Vec<u8>> = [&b"ip"[..], b"endpoint", b"hostname"]
                    .iter()
                    .filter_map(|n| field(n).and_then(Item::bytes).map(<[u8]>::to_vec))
                    .collect();
                let ports: Vec<u16> = [&b"port"[..], b"tls-port"]
                    .iter()
                    .filter_map(|n| field(n).and_then(Item::int))
                    .collect();
                let ep = id
                    .as_deref()
                    .and_then(|id| announce.by_id(id))
                    .or_else(|| {
                        names
                            .iter()
                            .find_map(|h| ports.iter().find_map(|p| announce.by_addr(h, *p)))
                    })
                    .unwrap_or_else(|| unknown(announce));
                rewrite_pairs(fields, &ep);
            }
        }
    }
}

/// Key/value pairs that name a node's address: hosts and ports become the endpoint's.
fn rewrite_pairs(pairs: &mut [Item<'_>], ep: &Endpoint) {
    for pair in pairs.chunks_mut(2) {
        let [k, v] = pair else { continue };
        match k.bytes() {
            Some(b"ip" | b"endpoint" | b"hostname") => v.set_bytes(ep.host.as_bytes()),
            Some(b"port" | b"tls-port") => v.set_int(ep.port),
            _ => {}
        }
    }
}

/// `CLUSTER NODES` text (or a `REPLICAS` line): each line's second field,
/// `ip:port@cport[,hostname]`, becomes `host:port@port[,host]`. The bus port is not
/// redward's to announce; it is written as the client port, which no client dials.
fn nodes_text(text: &[u8], announce: &dyn Announce) -> Vec<u8> {
    // A RESP3 verbatim string starts with its format, `txt:`.
    let (prefix, body) = match text.strip_prefix(b"txt:") {
        Some(rest) => (&b"txt:"[..], rest),
        None => (&b""[..], text),
    };
    let mut out = Vec::with_capacity(text.len() + 64);
    out.extend_from_slice(prefix);
    for line in body.split_inclusive(|&b| b == b'\n') {
        let mut fields = line.splitn(3, |&b| b == b' ');
        let (Some(id), Some(addr), Some(rest)) = (fields.next(), fields.next(), fields.next())
        else {
            out.extend_from_slice(line);
            continue;
        };
        let client_part = addr.split(|&b| b == b'@').next().unwrap_or(addr);
        let hostname = addr.iter().position(|&b| b == b',').map(|i| &addr[i + 1..]);
        let ep = announce.by_id(id).or_else(|| {
            let colon = client_part.iter().rposition(|&b| b == b':')?;
            let port = parse_u16(&client_part[colon + 1..])?;
            // By the address, else by the hostname (a sidecar's map lists hostnames).
            announce
                .by_addr(&client_part[..colon], port)
                .or_else(|| announce.by_addr(hostname?, port))
        });
        let ep = match ep {
            Some(ep) => ep,
            // A node with no address yet (`:0@0`, in a handshake) stays as it is.
            None if client_part.ends_with(b":0") => {
                out.extend_from_slice(line);
                continue;
            }
            None => unknown(announce),
        };
        out.extend_from_slice(id);
        out.push(b' ');
        push_endpoint(&mut out, &ep);
        out.push(b'@');
        out.extend_from_slice(ep.port.to_string().as_bytes());
        if hostname.is_some() {
            out.push(b',');
            out.extend_from_slice(ep.host.as_bytes());
        }
        out.push(b' ');
        out.extend_from_slice(rest);
    }
    out
}

fn unknown(announce: &dyn Announce) -> Endpoint {
    Endpoint {
        host: announce.host(),
        port: 0,
    }
}

fn push_endpoint(out: &mut Vec<u8>, ep: &Endpoint) {
    out.extend_from_slice(ep.host.as_bytes());
    out.push(b':');
    out.extend_from_slice(ep.port.to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    #[derive(Debug)]
    struct Map {
        ids: HashMap<Vec<u8>, Endpoint>,
        addrs: HashMap<(Vec<u8>, u16), Endpoint>,
    }

    impl Announce for Map {
        fn by_id(&self, id: &[u8]) -> Option<Endpoint> {
            self.ids.get(id).cloned()
        }
        fn by_addr(&self, host: &[u8], port: u16) -> Option<Endpoint> {
            self.addrs.get(&(host.to_vec(), port)).cloned()
        }
        fn host(&self) -> Arc<str> {
            Arc::from("redis.example.com")
        }
    }

    fn map() -> Map {
        let ep = |port| Endpoint {
            host: Arc::from("redis.example.com"),
            port,
        };
        Map {
            ids: [(b"a".repeat(40), ep(7101)), (b"b".repeat(40), ep(7102))]
                .into_iter()
                .collect(),
            addrs: [
                ((b"10.0.0.5".to_vec(), 6379), ep(7101)),
                ((b"10.0.0.6".to_vec(), 6379), ep(7102)),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn moved_and_ask_name_redwards_listener() {
        let m = map();
        assert_eq!(
            redirect(b"-MOVED 3999 10.0.0.6:6379\r\n", &m, || None).unwrap(),
            b"-MOVED 3999 redis.example.com:7102\r\n"
        );
        assert_eq!(
            redirect(b"-ASK 12 10.0.0.5:6379\r\n", &m, || None).unwrap(),
            b"-ASK 12 redis.example.com:7101\r\n"
        );
        // An unknown node is never written as itself.
        assert_eq!(
            redirect(b"-MOVED 1 10.9.9.9:6379\r\n", &m, || None).unwrap(),
            b"-MOVED 1 redis.example.com:0\r\n"
        );
        assert!(redirect(b"-ERR MOVED 1 10.0.0.5:6379\r\n", &m, || None).is_none());
        assert!(redirect(b"-CLUSTERDOWN Hash slot not served\r\n", &m, || None).is_none());
    }

    #[test]
    fn an_empty_host_is_the_sessions_own_nodes_host() {
        // Both nodes listen on 6379 (Kubernetes): the port alone names neither.
        let m = map();
        let here = |h: &'static str| move || Some(h.to_owned());
        for (line, host, want) in [
            (
                &b"-MOVED 3999 :6379\r\n"[..],
                "10.0.0.6",
                &b"-MOVED 3999 redis.example.com:7102\r\n"[..],
            ),
            (
                b"-ASK 12 :6379\r\n",
                "10.0.0.5",
                b"-ASK 12 redis.example.com:7101\r\n",
            ),
            (
                b"-MOVED 1 ?:6379\r\n",
                "10.0.0.6",
                b"-MOVED 1 redis.example.com:7102\r\n",
            ),
        ] {
            assert_eq!(redirect(line, &m, here(host)).unwrap(), want);
        }
        // Not known, or no session host: never a guess.
        assert_eq!(
            redirect(b"-MOVED 1 :6379\r\n", &m, || None).unwrap(),
            b"-MOVED 1 redis.example.com:0\r\n"
        );
        assert_eq!(
            redirect(b"-MOVED 1 :6379\r\n", &m, here("10.9.9.9")).unwrap(),
            b"-MOVED 1 redis.example.com:0\r\n"
        );
    }

    #[test]
    fn cluster_slots_keeps_everything_but_the_addresses() {
        let a = "a".repeat(40);
        let reply = format!(
            "*1\r\n*3\r\n:0\r\n:5460\r\n*4\r\n$8\r\n10.0.0.5\r\n:6379\r\n$40\r\n{a}\r\n*2\r\n$8\r\nhostname\r\n$7\r\nredis-0\r\n"
        );
        let out = reply_bytes(Reply::Slots, reply.as_bytes());
        assert_eq!(
            out,
            format!(
                "*1\r\n*3\r\n:0\r\n:5460\r\n*4\r\n$17\r\nredis.example.com\r\n:7101\r\n$40\r\n{a}\r\n*2\r\n$8\r\nhostname\r\n$17\r\nredis.example.com\r\n"
            )
        );
    }

    #[test]
    fn cluster_shards_rewrites_ip_endpoint_and_ports_in_order() {
        let b = "b".repeat(40);
        let reply = format!(
            "*1\r\n%2\r\n$5\r\nslots\r\n*2\r\n:0\r\n:10\r\n$5\r\nnodes\r\n*1\r\n%5\r\n$2\r\nid\r\n$40\r\n{b}\r\n$4\r\nport\r\n:6379\r\n$2\r\nip\r\n$8\r\n10.0.0.6\r\n$8\r\nendpoint\r\n$8\r\n10.0.0.6\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
        );
        let out = reply_bytes(Reply::Shards, reply.as_bytes());
        assert_eq!(
            out,
            format!(
                "*1\r\n%2\r\n$5\r\nslots\r\n*2\r\n:0\r\n:10\r\n$5\r\nnodes\r\n*1\r\n%5\r\n$2\r\nid\r\n$40\r\n{b}\r\n$4\r\nport\r\n:7102\r\n$2\r\nip\r\n$17\r\nredis.example.com\r\n$8\r\nendpoint\r\n$17\r\nredis.example.com\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
            )
        );
    }

    #[test]
    fn cluster_nodes_lines_name_the_endpoints() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let text = format!(
            "{a} 10.0.0.5:6379@16379 myself,master - 0 0 1 connected 0-5460\n{b} 10.0.0.6:6379@16379,redis-1 master - 0 1 2 connected 5461-10922\n"
        );
        let reply = format!("${}\r\n{text}\r\n", text.len());
        let want_text = format!(
            "{a} redis.example.com:7101@7101 myself,master - 0 0 1 connected 0-5460\n{b} redis.example.com:7102@7102,redis.example.com master - 0 1 2 connected 5461-10922\n"
        );
        assert_eq!(
            reply_bytes(Reply::Nodes, reply.as_bytes()),
            format!("${}\r\n{want_text}\r\n", want_text.len())
        );
        // RESP3's verbatim string, and REPLICAS' array of lines.
        let reply = format!("={}\r\ntxt:{text}\r\n", text.len() + 4);
        assert_eq!(
            reply_bytes(Reply::Nodes, reply.as_bytes()),
            format!("={}\r\ntxt:{want_text}\r\n", want_text.len() + 4)
        );
        let line = text.lines().nth(1).unwrap();
        let reply = format!("*1\r\n${}\r\n{line}\r\n", line.len());
        let want = want_text.lines().nth(1).unwrap();
        assert_eq!(
            reply_bytes(Reply::Replicas, reply.as_bytes()),
            format!("*1\r\n${}\r\n{want}\r\n", want.len())
        );
    }

    #[test]
    fn a_map_of_hostnames_finds_nodes_that_replies_name_by_ip() {
        // A sidecar's map lists the names Redis announces (`cluster-announce-hostname`); NODES
        // and SHARDS lead with the pod's IP.
        let fixed = Fixed::new(&[(
            ("redis-1.redis".to_owned(), 6379),
            ("redis-1.redis".to_owned(), 6380),
        )]);
        let b = "b".repeat(40);
        let text = format!("{b} 10.1.2.3:6379@16379,redis-1.redis master - 0 1 2 connected 0-10\n");
        let out = reply(
            Reply::Nodes,
            format!("${}\r\n{text}\r\n", text.len()).as_bytes(),
            &fixed,
        );
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains(" redis-1.redis:6380@6380,redis-1.redis master"),
            "{out}"
        );
        let shards = format!(
            "*1\r\n*2\r\n$5\r\nnodes\r\n*1\r\n*8\r\n$2\r\nid\r\n$40\r\n{b}\r\n$4\r\nport\r\n:6379\r\n$2\r\nip\r\n$8\r\n10.1.2.3\r\n$8\r\nhostname\r\n$13\r\nredis-1.redis\r\n"
        );
        let out = String::from_utf8(reply(Reply::Shards, shards.as_bytes(), &fixed)).unwrap();
        assert!(
            out.contains(":6380\r\n") && !out.contains("10.1.2.3") && !out.contains(":6379"),
            "{out}"
        );
    }

    #[test]
    fn exec_rewrites_only_the_queued_cluster_replies() {
        let a = "a".repeat(40);
        let line = format!("{a} 10.0.0.5:6379@16379 myself,master - 0 0 1 connected 0-5460\n");
        let exec = format!(
            "*3\r\n+PONG\r\n${}\r\n{line}\r\n$8\r\n10.0.0.5\r\n",
            line.len()
        );
        let out =
            String::from_utf8(exec_reply(&[(1, Reply::Nodes)], exec.as_bytes(), &map())).unwrap();
        assert!(out.starts_with("*3\r\n+PONG\r\n"), "{out}");
        assert!(out.contains("redis.example.com:7101@7101"), "{out}");
        // A plain value that happens to look like an address is not a cluster reply.
        assert!(out.ends_with("$8\r\n10.0.0.5\r\n"), "{out}");
        for passthrough in [&b"-EXECABORT Transaction discarded\r\n"[..], b"*-1\r\n"] {
            assert_eq!(
                exec_reply(&[(0, Reply::Slots)], passthrough, &map()),
                passthrough
            );
        }
    }

    #[test]
    fn errors_and_garbage_pass_unchanged() {
        for bytes in [
            &b"-ERR This instance has cluster support disabled\r\n"[..],
            b"*3\r\n:1\r\n",
            b"*99999999\r\n",
            b"$5\r\nabc\r\n",
        ] {
            assert_eq!(reply(Reply::Slots, bytes, &map()), bytes);
        }
    }

    proptest::proptest! {
        /// Whatever the bytes, no panic, and a well-formed reply stays one.
        #[test]
        fn any_bytes_are_safe(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            for kind in [Reply::Slots, Reply::Shards, Reply::Nodes, Reply::Replicas] {
                let out = reply(kind, &data, &map());
                if parse(&data, 0).is_some_and(|(_, n)| n == data.len()) {
                    proptest::prop_assert!(parse(&out, 0).is_some_and(|(_, n)| n == out.len()));
                }
            }
            let _ = redirect(&data, &map(), || Some("10.0.0.5".to_owned()));
        }

        /// Generated `CLUSTER SLOTS` replies of known nodes: each node's address becomes its
        /// endpoint, and every other byte is kept.
        #[test]
        fn slots_of_known_nodes_name_only_endpoints(
            ranges in proptest::collection::vec((0u16..16384, 0u16..16384, proptest::bool::ANY), 0..20)
        ) {
            let (mut reply, mut want) = (format!("*{}\r\n", ranges.len()), format!("*{}\r\n", ranges.len()));
            for (a, b, second) in &ranges {
                let (ip, id, port) = if *second { ("10.0.0.6", "b", 7102) } else { ("10.0.0.5", "a", 7101) };
                let id = id.repeat(40);
                reply.push_str(&format!(
                    "*3\r\n:{a}\r\n:{b}\r\n*3\r\n$8\r\n{ip}\r\n:6379\r\n$40\r\n{id}\r\n"
                ));
                want.push_str(&format!(
                    "*3\r\n:{a}\r\n:{b}\r\n*3\r\n$17\r\nredis.example.com\r\n:{port}\r\n$40\r\n{id}\r\n"
                ));
            }
            let out = String::from_utf8(reply_bytes_owned(Reply::Slots, reply.as_bytes())).unwrap();
            proptest::prop_assert_eq!(out, want);
        }
    }

    /// Random well-formed RESP2/RESP3 items, nested, with node-ish strings among them.
    fn resp_item() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(b"+OK\r\n".to_vec()),
            Just(b":6379\r\n".to_vec()),
            Just(b"_\r\n".to_vec()),
            Just(b"$-1\r\n".to_vec()),
            prop_oneof![
                Just("10.0.0.5".to_owned()),
                Just("ip".to_owned()),
                Just("port".to_owned()),
                Just("nodes".to_owned()),
                Just(format!(
                    "{} 10.0.0.5:6379@16379,h master - 0 0 1 connected\n",
                    "a".repeat(40)
                )),
                "[a-z:@ ,.0-9]{0,12}",
            ]
            .prop_map(|t| format!("${}\r\n{t}\r\n", t.len()).into_bytes()),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            (
                prop_oneof![Just(b'*'), Just(b'%'), Just(b'~'), Just(b'>')],
                proptest::collection::vec(inner, 0..6),
            )
                .prop_map(|(ty, items)| {
                    let items = if ty == b'%' && items.len() % 2 == 1 {
                        &items[1..]
                    } else {
                        &items[..]
                    };
                    let n = if ty == b'%' {
                        items.len() / 2
                    } else {
                        items.len()
                    };
                    let mut out = format!("{}{n}\r\n", ty as char).into_bytes();
                    for i in items {
                        out.extend_from_slice(i);
                    }
                    out
                })
        })
    }

    proptest::proptest! {
        /// Every kind of rewrite, and EXEC's, keeps a well-formed reply one well-formed reply,
        /// whatever its shape (a shape that is not the kind's is copied, not rewritten).
        #[test]
        fn well_formed_replies_stay_well_formed(item in resp_item()) {
            proptest::prop_assert!(parse(&item, 0).is_some_and(|(_, n)| n == item.len()));
            for kind in [Reply::Slots, Reply::Shards, Reply::Nodes, Reply::Replicas] {
                for out in [reply(kind, &item, &map()), exec_reply(&[(0, kind), (1, Reply::Nodes)], &item, &map())] {
                    proptest::prop_assert!(parse(&out, 0).is_some_and(|(_, n)| n == out.len()));
                }
            }
        }
    }

    fn reply_bytes_owned(kind: Reply, bytes: &[u8]) -> Vec<u8> {
        reply(kind, bytes, &map())
    }

    fn reply_bytes(kind: Reply, bytes: &[u8]) -> String {
        String::from_utf8(reply(kind, bytes, &map())).unwrap()
    }
}
