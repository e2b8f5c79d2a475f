//! A cluster's nodes, read from `CLUSTER SHARDS` (Redis 7.0+), or from `CLUSTER SLOTS` where
//! a server lacks it. Pure: the replies come in as parsed RESP2 frames.

use redis_protocol::resp2::types::OwnedFrame;

use crate::commands::discover::text;

/// One node, as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    /// The address to reach it at (`ip`).
    pub ip: String,
    pub port: u16,
    /// `tls-port`, when the node has TLS.
    pub tls_port: Option<u16>,
    /// Other names clients see it by (`endpoint`, `hostname`), written into redirections.
    pub aliases: Vec<String>,
}

fn port(f: &OwnedFrame) -> Option<u16> {
    match f {
        OwnedFrame::Integer(n) => u16::try_from(*n).ok(),
        _ => None,
    }
}

/// `CLUSTER SHARDS`: `[[slots, [...], nodes, [[id, .., port, .., ip, ..], ...]], ...]`.
pub fn from_shards(frame: &OwnedFrame) -> Option<Vec<Node>> {
    let OwnedFrame::Array(shards) = frame else {
        return None;
    };
    let mut out = Vec::new();
    for shard in shards {
        let OwnedFrame::Array(pairs) = shard else {
            return None;
        };
        for pair in pairs.chunks(2) {
            let [k, OwnedFrame::Array(nodes)] = pair else {
                continue;
            };
            if text(k).as_deref() != Some("nodes") {
                continue;
            }
            for node in nodes {
                let OwnedFrame::Array(fields) = node else {
                    return None;
                };
                let get = |name: &str| {
                    fields
                        .chunks(2)
                        .find(|p| p.first().and_then(text).as_deref() == Some(name))
                        .and_then(|p| p.get(1))
                };
                let ip = get("ip").and_then(text)?;
                let aliases = ["endpoint", "hostname"]
                    .iter()
                    .filter_map(|n| get(n).and_then(text))
                    .filter(|a| !a.is_empty() && *a != "?" && *a != ip)
                    .collect();
                out.push(Node {
                    id: get("id").and_then(text)?,
                    ip,
                    port: get("port").and_then(port).unwrap_or(0),
                    tls_port: get("tls-port").and_then(port),
                    aliases,
                });
            }
        }
    }
    Some(out)
}

/// `CLUSTER SLOTS`: `[[start, end, [ip, port, id, meta], ...], ...]` (nodes that serve no
/// slot are missing: the fallback for servers without `SHARDS`).
pub fn from_slots(frame: &OwnedFrame) -> Option<Vec<Node>> {
    let OwnedFrame::Array(ranges) = frame else {
        return None;
    };
    let mut out: Vec<Node> = Vec::new();
    for range in ranges {
        let OwnedFrame::Array(fields) = range else {
            return None;
        };
        for node in fields.iter().skip(2) {
            let OwnedFrame::Array(n) = node else {
                return None;
            };
            let id = n.get(2).and_then(text).unwrap_or_default();
            if !id.is_empty() && out.iter().any(|o| o.id == id) {
                continue;
            }
            out.push(Node {
                id,
                ip: n.first().and_then(text)?,
                port: n.get(1).and_then(port)?,
                tls_port: None,
                aliases: Vec::new(),
            });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn shards_give_every_node_with_its_names() {
        let node = |id: &str, ip: &str, port: i64| {
            OwnedFrame::Array(vec![
                bulk("id"),
                bulk(id),
                bulk("port"),
                OwnedFrame::Integer(port),
                bulk("ip"),
                bulk(ip),
                bulk("endpoint"),
                bulk(ip),
                bulk("hostname"),
                bulk("redis-0"),
            ])
        };
        let frame = OwnedFrame::Array(vec![OwnedFrame::Array(vec![
            bulk("slots"),
            OwnedFrame::Array(vec![]),
            bulk("nodes"),
            OwnedFrame::Array(vec![
                node("a", "10.0.0.5", 6379),
                node("b", "10.0.0.6", 6380),
            ]),
        ])]);
        let nodes = from_shards(&frame).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].ip, "10.0.0.6");
        assert_eq!(nodes[1].port, 6380);
        assert_eq!(nodes[0].aliases, vec!["redis-0".to_owned()]);
    }

    #[test]
    fn slots_give_each_node_once() {
        let node = |ip: &str, port: i64, id: &str| {
            OwnedFrame::Array(vec![bulk(ip), OwnedFrame::Integer(port), bulk(id)])
        };
        let range = |a: i64, b: i64| {
            OwnedFrame::Array(vec![
                OwnedFrame::Integer(a),
                OwnedFrame::Integer(b),
                node("10.0.0.5", 6379, "a"),
            ])
        };
        let nodes = from_slots(&OwnedFrame::Array(vec![range(0, 5), range(9, 10)])).unwrap();
        assert_eq!(nodes.len(), 1);
    }
}
