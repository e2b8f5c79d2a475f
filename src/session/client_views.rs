//! What Redis says about its clients, said about redward's where redward knows better.
//!
//! - `SLOWLOG GET` names the client that sent each slow command (`slowlogPushEntryIfNeeded`
//!   in slowlog.c records the connection's address and name). Redis sees redward's upstream
//!   connections, so an entry from a client's own connection is traced back to that client by
//!   the connection's local address, and shows the client's address and name instead. Entries
//!   from a shared connection cannot be: many clients' commands ride it. They keep what Redis
//!   recorded (redward's connection address, no name), as the README says.
//! - `INFO`'s `connected_clients` and `maxclients` are this redward's: its clients and its
//!   `limits.max_connections`, as `CLIENT LIST` and `CLIENT KILL` count them. The other
//!   client counts (`blocked_clients`, `tracking_clients`, `pubsub_clients`,
//!   `watching_clients`) are Redis's and already right: each such client has a connection of
//!   its own.

use std::sync::Arc;

use bytes::BytesMut;

use crate::clients::Clients;
use crate::resp::item::{parse, write, Item};
use crate::resp::{FrameInfo, Request};

use super::Rewrite;

/// The hook for a `SLOWLOG GET [count]` or an `INFO` request, `None` for anything else
/// (on the path of every forwarded request: two comparisons of the name).
pub(super) fn hook(req: &Request<'_>, shared: &crate::shared::Shared) -> Option<Arc<dyn Rewrite>> {
    let name = req.name();
    if name.eq_ignore_ascii_case(b"info") {
        return Some(Arc::new(InfoClients {
            clients: Arc::clone(&shared.clients),
            max_clients: shared.limiter.settings().max_connections,
        }));
    }
    let get = name.eq_ignore_ascii_case(b"slowlog")
        && matches!(req.argc(), 2 | 3)
        && req.arg(1).eq_ignore_ascii_case(b"get");
    get.then(|| {
        Arc::new(SlowlogClients {
            clients: Arc::clone(&shared.clients),
        }) as Arc<dyn Rewrite>
    })
}

#[derive(Debug)]
struct SlowlogClients {
    clients: Arc<Clients>,
}

impl Rewrite for SlowlogClients {
    fn rewrite(&self, reply: &[u8], info: &FrameInfo, out: &mut BytesMut) {
        let tree = (!info.is_error()).then(|| parse(reply, 0)).flatten();
        let Some((Item::Agg(ty, mut entries), used)) = tree else {
            out.extend_from_slice(reply);
            return;
        };
        if used != reply.len() {
            out.extend_from_slice(reply);
            return;
        }
        for entry in &mut entries {
            // id, timestamp, duration, arguments, client address, client name
            let Item::Agg(_, fields) = entry else {
                continue;
            };
            let Some(addr) = fields.get(4).and_then(Item::bytes) else {
                continue;
            };
            let Some(client) = self.clients.by_upstream_addr(addr) else {
                continue;
            };
            let name = client.info().name;
            if let Some(f) = fields.get_mut(4) {
                f.set_bytes(client.addr.to_string().as_bytes());
            }
            if let Some(f) = fields.get_mut(5) {
                f.set_bytes(&name);
            }
        }
        let mut bytes = Vec::with_capacity(reply.len() + 64);
        write(&Item::Agg(ty, entries), &mut bytes);
        out.extend_from_slice(&bytes);
    }
}

#[derive(Debug)]
struct InfoClients {
    clients: Arc<Clients>,
    max_clients: usize,
}

impl Rewrite for InfoClients {
    fn rewrite(&self, reply: &[u8], info: &FrameInfo, out: &mut BytesMut) {
        // A bulk string (`$`) or, in RESP3, a verbatim one (`=`, `txt:` first).
        let body = match reply.first() {
            Some(b'$' | b'=') if !info.is_error() => reply
                .iter()
                .position(|&b| b == b'\n')
                .and_then(|nl| reply.get(nl + 1..reply.len().saturating_sub(2))),
            _ => None,
        };
        let Some(body) = body.filter(|b| b.windows(18).any(|w| w == b"\nconnected_clients")) else {
            out.extend_from_slice(reply);
            return;
        };
        let ours = [
            ("connected_clients:", self.clients.len()),
            ("maxclients:", self.max_clients),
        ];
        let mut text = Vec::with_capacity(body.len() + 16);
        for line in body.split_inclusive(|&b| b == b'\n') {
            match ours.iter().find(|(k, _)| line.starts_with(k.as_bytes())) {
                Some((k, n)) => text.extend_from_slice(format!("{k}{n}\r\n").as_bytes()),
                None => text.extend_from_slice(line),
            }
        }
        out.extend_from_slice(&reply[..1]);
        out.extend_from_slice(text.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&text);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_reply(reply: &[u8], clients: usize) -> Vec<u8> {
        let registry = Arc::new(Clients::default());
        let _held: Vec<_> = (0..u16::try_from(clients).unwrap_or(0))
            .map(|i| registry.register(([127, 0, 0, 1], 1000 + i).into(), None, "u"))
            .collect();
        let hook = InfoClients {
            clients: Arc::clone(&registry),
            max_clients: 77,
        };
        let mut scanner = crate::resp::ReplyScanner::new();
        let info = match scanner.advance(reply) {
            Ok(crate::resp::Step::Complete { info, .. }) => info,
            other => panic!("{other:?}"),
        };
        let mut out = BytesMut::new();
        hook.rewrite(reply, &info, &mut out);
        out.to_vec()
    }

    #[test]
    fn info_counts_redwards_clients_in_resp2_and_resp3() {
        let text = "# Clients\r\nconnected_clients:9\r\nmaxclients:10000\r\nblocked_clients:1\r\n";
        let want = "# Clients\r\nconnected_clients:3\r\nmaxclients:77\r\nblocked_clients:1\r\n";
        let resp2 = format!("${}\r\n{text}\r\n", text.len());
        assert_eq!(
            String::from_utf8_lossy(&info_reply(resp2.as_bytes(), 3)),
            format!("${}\r\n{want}\r\n", want.len())
        );
        let resp3 = format!("={}\r\ntxt:{text}\r\n", text.len() + 4);
        assert_eq!(
            String::from_utf8_lossy(&info_reply(resp3.as_bytes(), 3)),
            format!("={}\r\ntxt:{want}\r\n", want.len() + 4)
        );
    }

    #[test]
    fn info_without_a_clients_section_and_errors_pass_unchanged() {
        let text = "# Server\r\nredis_version:7.0.15\r\n";
        let reply = format!("${}\r\n{text}\r\n", text.len());
        assert_eq!(info_reply(reply.as_bytes(), 2), reply.as_bytes());
        assert_eq!(info_reply(b"-ERR x\r\n", 2), b"-ERR x\r\n");
    }
}
