//! Login lockouts shared by several redward instances (`limits.shared_state: upstream`),
//! counted in the store they already share: the Redis behind them.
//!
//! Each failed login is still counted locally (so the local limit holds even when Redis is
//! unreachable: fail-safe for the local quota, fail-open for the shared one). It is also sent,
//! off the client's path, to a task that runs one script per failure in Redis: `INCR` a
//! per-address counter that lives one minute; at the limit, set a lockout key for the lockout
//! period and `PUBLISH` the address. Every instance subscribes and locks the address out
//! locally, so checking a login costs nothing more than before; a failed login costs one
//! script call, in the background.
//!
//! The names are reserved: keys under `redward:` and the channel `redward:lockouts` are
//! refused to every client whatever its ACL (`reserved`), so no client can read, change or
//! delete the counters by name, or publish a lockout. What cannot be refused by name: a script
//! that builds the name at run time, `KEYS`/`SCAN` listing the names, `FLUSHALL`: those
//! commands belong to trusted users only (README).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::limits::Limiter;
use crate::resp::encode_command;
use crate::upstream::Connector;

/// The key prefix and channel redward keeps for itself when `shared_state: upstream`.
pub const KEY_PREFIX: &[u8] = b"redward:";
pub const CHANNEL: &str = "redward:lockouts";
/// Failed logins waiting to be counted in Redis; past this, counts are dropped (the local
/// limit still applies), so a flood cannot grow memory.
const QUEUE: usize = 4096;

/// `INCR` the address's counter (one minute), and at the limit lock it out and tell everyone.
const SCRIPT: &str = "local n = redis.call('INCR', KEYS[1]) \
    if n == 1 then redis.call('PEXPIRE', KEYS[1], 60000) end \
    if n >= tonumber(ARGV[1]) then \
      redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) \
      redis.call('PUBLISH', ARGV[3], ARGV[4]) \
      redis.call('DEL', KEYS[1]) \
    end \
    return n";

/// The sending side: sessions report failed logins here.
#[derive(Debug, Clone)]
pub struct SharedLimits {
    failures: mpsc::Sender<IpAddr>,
}

impl SharedLimits {
    /// Starts the counting and listening tasks (until `stop`).
    pub fn start(connector: Connector, limiter: Arc<Limiter>, stop: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(count(
            connector.clone(),
            Arc::clone(&limiter),
            rx,
            stop.clone(),
        ));
        tokio::spawn(listen(connector, limiter, stop));
        SharedLimits { failures: tx }
    }

    /// A failed login from `ip`, to be counted across instances.
    pub fn failed(&self, ip: IpAddr) {
        if self.failures.try_send(ip).is_err() {
            debug!(%ip, "shared failed-login queue full; counted locally only");
        }
    }
}

/// Whether the request may touch a reserved name: its bytes contain the prefix, or it is a
/// PSUBSCRIBE (whose patterns can match the channel without naming it). The only cost for
/// every other request is one substring search; [`reserved`] then looks at keys and channels.
pub fn mentions_reserved(raw: &[u8], name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"psubscribe")
        || raw.windows(KEY_PREFIX.len()).any(|w| w == KEY_PREFIX)
}

/// Whether a request names a reserved key or channel; asked only of requests that
/// [`mentions_reserved`] let through.
pub fn reserved(
    spec: &crate::commands::CommandSpec,
    req: &crate::resp::Request<'_>,
) -> Option<crate::acl::Denied> {
    for k in crate::acl::command_keys(spec, req) {
        if req.arg(k.pos).starts_with(KEY_PREFIX) {
            return Some(crate::acl::Denied::Key { arg: k.pos });
        }
    }
    let base = spec.name.split('|').next().unwrap_or(spec.name);
    // Arguments that name keys without being keys: SORT's BY and GET patterns, and scripts
    // or functions that spell the prefix out. (A script can still build the name at run
    // time: grant scripting, KEYS, SCAN and FLUSHALL only to trusted users; README.)
    if matches!(
        base,
        "sort" | "sort_ro" | "eval" | "eval_ro" | "script" | "function"
    ) {
        for i in 1..req.argc() {
            let a = req.arg(i);
            if a.windows(KEY_PREFIX.len()).any(|w| w == KEY_PREFIX) {
                return Some(crate::acl::Denied::Key { arg: i });
            }
        }
    }
    let channels = match base {
        "publish" | "spublish" => 1..2.min(req.argc()),
        "subscribe" | "ssubscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" => 1..req.argc(),
        _ => 0..0,
    };
    for i in channels {
        let c = req.arg(i);
        let hit = if base == "psubscribe" {
            crate::acl::stringmatch(c, CHANNEL.as_bytes(), false)
        } else {
            c.starts_with(KEY_PREFIX)
        };
        if hit {
            return Some(crate::acl::Denied::Channel { arg: i });
        }
    }
    None
}

/// Counts failures in Redis, one script call each, on a connection of its own.
async fn count(
    connector: Connector,
    limiter: Arc<Limiter>,
    mut rx: mpsc::Receiver<IpAddr>,
    stop: CancellationToken,
) {
    let mut conn = None;
    let mut buf = BytesMut::new();
    loop {
        let ip = tokio::select! {
            ip = rx.recv() => match ip { Some(ip) => ip, None => return },
            () = stop.cancelled() => return,
        };
        let (limit, lockout) = limiter.auth_policy();
        let Some(limit) = limit else { continue };
        let ip_text = ip.to_string();
        let mut req = Vec::new();
        let (counter, lock) = (
            format!("redward:auth:{ip_text}"),
            format!("redward:lock:{ip_text}"),
        );
        let (limit, ms) = (limit.to_string(), lockout.as_millis().to_string());
        encode_command(
            &mut req,
            [
                "EVAL", SCRIPT, "2", &counter, &lock, &limit, &ms, CHANNEL, &ip_text,
            ]
            .iter()
            .map(|a| a.as_bytes()),
        );
        if conn.is_none() {
            conn = connector.connect().await.ok();
            buf.clear();
        }
        let Some(stream) = conn.as_mut() else {
            warn!(%ip, "shared failed-login count: upstream unavailable; counted locally only");
            continue;
        };
        let ok = tokio::time::timeout(Duration::from_secs(5), async {
            stream.write_all(&req).await.ok()?;
            stream.flush().await.ok()?;
            crate::net_io::read_frame(stream, &mut buf, 4096).await.ok()
        })
        .await
        .ok()
        .flatten();
        if !matches!(ok, Some(OwnedFrame::Integer(_))) {
            warn!(%ip, reply = ?ok, "shared failed-login count failed; counted locally only");
            conn = None;
        }
    }
}

/// Locks out, here, the addresses any instance reports on the channel.
async fn listen(connector: Connector, limiter: Arc<Limiter>, stop: CancellationToken) {
    loop {
        let run = async {
            let mut s = connector.connect().await.ok()?;
            let mut req = Vec::new();
            encode_command(
                &mut req,
                ["SUBSCRIBE", CHANNEL].iter().map(|a| a.as_bytes()),
            );
            s.write_all(&req).await.ok()?;
            s.flush().await.ok()?;
            let mut buf = BytesMut::new();
            loop {
                let frame = crate::net_io::read_frame(&mut s, &mut buf, 4096)
                    .await
                    .ok()?;
                if let OwnedFrame::Array(parts) = frame {
                    if let (Some(OwnedFrame::BulkString(kind)), Some(OwnedFrame::BulkString(ip))) =
                        (parts.first(), parts.get(2))
                    {
                        if kind.as_slice() == b"message" {
                            if let Some(ip) =
                                std::str::from_utf8(ip).ok().and_then(|t| t.parse().ok())
                            {
                                debug!(%ip, "locked out by the shared failed-login count");
                                limiter.lock(ip);
                            }
                        }
                    }
                }
            }
        };
        let run: std::pin::Pin<Box<dyn std::future::Future<Output = Option<()>> + Send + '_>> =
            Box::pin(run);
        tokio::select! {
            _ = run => {}
            () = stop.cancelled() => return,
        }
        // Lost the connection (or could not subscribe): try again in a second.
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
    }
}
