//! One node -> port map for every redward instance in front of the same cluster
//! (`node_listeners.port_map: cluster`, the default), kept in the cluster itself.
//!
//! **Where.** One hash, [`KEY`], under redward's reserved prefix, in whichever node serves
//! its slot (found by following `-MOVED` from the node that last described the cluster). No
//! client reaches it: names under `redward:` are refused to every client whatever its ACL,
//! and scripts run as upstream users whose key patterns leave it out
//! (`shared_limits::reserved`, `upstream/confine.rs`). It is replicated and fails over with
//! that shard like any key, and survives restarts of every redward instance.
//!
//! **Fields.** `n:<node id>` -> port and `p:<port>` -> node id, or `-<ms>` for a port freed
//! until that time (Redis's clock, `TIME`, so instances' clocks do not matter); `range` ->
//! `first-last`, so instances configured with different ranges are told at once.
//!
//! **Agreement without a race.** Each change is one script, [`CLAIM`] or [`RELEASE`], and
//! Redis runs scripts one at a time: two instances claiming a port for the same new node at
//! once get the same answer, whichever runs first. A claim prefers, in order: the node's port
//! in the map; the port this instance already serves it on, when the map has never given
//! that port out (this rebuilds a lost map, a `FLUSHALL` on the shard or a shard lost whole,
//! from the instances that are running); the lowest never-used port; the freed port whose
//! quarantine ended first. A node is known by its id, so one that comes back at a new
//! address (its `nodes.conf` kept) keeps its port.

use std::net::IpAddr;

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;

use super::topology::Node;
use crate::config::UpstreamAddr;
use crate::resp::encode_command;
use crate::upstream::{Connector, Target};

/// The map's key (a hash).
pub const KEY: &str = "redward:cluster:ports";

/// `KEYS[1]`: the map. `ARGV`: `first-last`, then `id, hint, mode` per node, where `mode` is
/// `new` (find a port) or `keep` (only the map's or the hint). Replies a port per node, 0 for
/// none; `-RANGE first-last` when the map was made for another range.
const CLAIM: &str = r"
local m = KEYS[1]
local range = ARGV[1]
local had = redis.call('HGET', m, 'range')
if not had then redis.call('HSET', m, 'range', range)
elseif had ~= range then return redis.error_reply('RANGE ' .. had) end
local first, last = string.match(range, '^(%d+)-(%d+)$')
first = tonumber(first); last = tonumber(last)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 2, #ARGV, 3 do
  local id, hint, mode = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local port = tonumber(redis.call('HGET', m, 'n:' .. id))
  if not port and hint >= first and hint <= last then
    local v = redis.call('HGET', m, 'p:' .. hint)
    if not v or v == id then port = hint end
  end
  if not port and mode == 'new' then
    local best, best_at
    for p = first, last do
      local v = redis.call('HGET', m, 'p:' .. p)
      if not v then best = p; break end
      if string.sub(v, 1, 1) == '-' then
        local at = tonumber(string.sub(v, 2))
        if at and at <= now and (not best_at or at < best_at) then best, best_at = p, at end
      end
    end
    port = best
  end
  if port then
    redis.call('HSET', m, 'n:' .. id, port, 'p:' .. port, id)
    out[#out + 1] = port
  else
    out[#out + 1] = 0
  end
end
return out
";

/// `KEYS[1]`: the map. `ARGV`: quarantine in ms, then `id, port` per node that left. A pair
/// the map no longer has (another instance released it first) changes nothing.
const RELEASE: &str = r"
local m = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV, 2 do
  local id, port = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', m, 'n:' .. id) == port then
    redis.call('HDEL', m, 'n:' .. id)
    redis.call('HSET', m, 'p:' .. port, '-' .. until_ms)
    n = n + 1
  end
end
return n
";

/// How many `-MOVED` a call follows (the map's slot moved during a reshard).
const HOPS: usize = 3;

/// Why the map could not be read or changed. The upstream's side, or the operator's (a
/// range that differs from the other instances').
#[derive(Debug, thiserror::Error)]
pub enum PortMapError {
    #[error("{0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] crate::net_io::FrameError),
    #[error(
        "upstream.cluster.node_listeners.ports: the other instances use {0}; every instance \
         in front of one cluster needs the same range"
    )]
    Range(String),
    /// The node's error text (`-CLUSTERDOWN`, `-NOSCRIPT`, a `NOPERM` for redward's user...).
    #[error("{0}")]
    Refused(String),
    #[error("-MOVED to a node this reading does not have: {0}")]
    Unknown(String),
    #[error("unexpected reply")]
    Unexpected,
    #[error("timed out")]
    Timeout,
}

/// One node's claim: its key, the port this instance serves it on (0: none), and whether a
/// new port may be taken for it.
pub struct Claim<'a> {
    pub key: &'a str,
    pub hint: u16,
    pub new: bool,
}

/// The map, as one instance uses it.
pub struct PortMap {
    range: String,
    quarantine_ms: u64,
    /// The node that last answered for the map, asked first next time (no `-MOVED` per
    /// reading while the map's slot stays where it is).
    holder: std::sync::Mutex<Option<UpstreamAddr>>,
}

impl PortMap {
    pub fn new((first, last): (u16, u16), quarantine: std::time::Duration) -> Self {
        PortMap {
            range: format!("{first}-{last}"),
            quarantine_ms: u64::try_from(quarantine.as_millis()).unwrap_or(u64::MAX),
            holder: std::sync::Mutex::new(None),
        }
    }

    /// The port for each claim, in order (0: none free, or a `keep` the map does not have).
    pub async fn claim(
        &self,
        at: &Route<'_>,
        claims: &[Claim<'_>],
    ) -> Result<Vec<u16>, PortMapError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<Vec<u8>> = vec![self.range.clone().into_bytes()];
        for c in claims {
            args.push(c.key.as_bytes().to_vec());
            args.push(c.hint.to_string().into_bytes());
            args.push(if c.new { &b"new"[..] } else { b"keep" }.to_vec());
        }
        match self.eval(at, CLAIM, &args).await? {
            OwnedFrame::Array(ports) if ports.len() == claims.len() => Ok(ports
                .iter()
                .map(|p| match p {
                    OwnedFrame::Integer(n) => u16::try_from(*n).unwrap_or(0),
                    _ => 0,
                })
                .collect()),
            OwnedFrame::Error(e) => match e.strip_prefix("RANGE ") {
                Some(theirs) => Err(PortMapError::Range(theirs.chars().take(32).collect())),
                None => Err(PortMapError::Refused(e.chars().take(200).collect())),
            },
            _ => Err(PortMapError::Unexpected),
        }
    }

    /// Frees each `(key, port)` for other nodes once the quarantine has passed.
    pub async fn release(
        &self,
        at: &Route<'_>,
        gone: &[(String, u16)],
    ) -> Result<(), PortMapError> {
        if gone.is_empty() {
            return Ok(());
        }
        let mut args: Vec<Vec<u8>> = vec![self.quarantine_ms.to_string().into_bytes()];
        for (key, port) in gone {
            args.push(key.as_bytes().to_vec());
            args.push(port.to_string().into_bytes());
        }
        match self.eval(at, RELEASE, &args).await? {
            OwnedFrame::Integer(_) => Ok(()),
            OwnedFrame::Error(e) => Err(PortMapError::Refused(e.chars().take(200).collect())),
            _ => Err(PortMapError::Unexpected),
        }
    }
}

/// How to reach the node holding the map: first `entry` (the node that described the
/// cluster), then wherever `-MOVED` points among this reading's admitted nodes.
pub struct Route<'a> {
    pub connector: &'a Connector,
    pub entry: Target,
    /// This reading's nodes, each with its admitted address, and the port it is dialled at.
    pub nodes: Vec<(&'a Node, IpAddr, u16)>,
}

impl PortMap {
    /// `EVAL script 1 KEY args...` at the last holder if this reading still has it, else at
    /// the route's entry; the node that answers is the holder from then on.
    async fn eval(
        &self,
        at: &Route<'_>,
        script: &str,
        args: &[Vec<u8>],
    ) -> Result<OwnedFrame, PortMapError> {
        let lock = || {
            self.holder
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let last = lock().clone().filter(|addr| at.has(addr));
        let start = last.map_or_else(|| at.entry.clone(), Target::Fixed);
        let (reply, answered) = at.eval(start, script, args).await?;
        *lock() = match answered {
            Target::Fixed(addr) => Some(addr),
            _ => None,
        };
        Ok(reply)
    }
}

impl Route<'_> {
    /// Whether `addr` is one of this reading's admitted nodes.
    fn has(&self, addr: &UpstreamAddr) -> bool {
        let UpstreamAddr::Tcp { host, port } = addr else {
            return false;
        };
        self.nodes
            .iter()
            .any(|(_, ip, p)| p == port && ip.to_string() == *host)
    }

    /// `EVAL script 1 KEY args...` from `target`, following up to [`HOPS`] redirections; the
    /// reply, and the node that gave it.
    async fn eval(
        &self,
        mut target: Target,
        script: &str,
        args: &[Vec<u8>],
    ) -> Result<(OwnedFrame, Target), PortMapError> {
        let mut req = Vec::new();
        let head: [&[u8]; 4] = [b"EVAL", script.as_bytes(), b"1", KEY.as_bytes()];
        let parts: Vec<&[u8]> = head
            .into_iter()
            .chain(args.iter().map(Vec::as_slice))
            .collect();
        encode_command(&mut req, parts.into_iter());
        for _ in 0..HOPS {
            let reply = self.once(target.clone(), &req).await?;
            let OwnedFrame::Error(e) = &reply else {
                return Ok((reply, target));
            };
            let Some(to) = e.strip_prefix("MOVED ").and_then(|r| r.split(' ').nth(1)) else {
                return Ok((reply, target));
            };
            target = self.node_at(to, &target)?;
        }
        Err(PortMapError::Refused(String::from("too many -MOVED")))
    }

    /// One call on a connection of its own (logged in as redward), within the connect
    /// timeout twice over.
    async fn once(&self, target: Target, req: &[u8]) -> Result<OwnedFrame, PortMapError> {
        let connector = self.connector.to_target(target);
        let run = async {
            let mut s = connector.connect().await?;
            s.write_all(req).await?;
            s.flush().await?;
            let mut buf = BytesMut::new();
            Ok::<_, PortMapError>(crate::net_io::read_frame(&mut s, &mut buf, 64 * 1024).await?)
        };
        tokio::time::timeout(connector.connect_timeout() * 2, run)
            .await
            .map_err(|_| PortMapError::Timeout)?
    }

    /// The admitted node `-MOVED` names (`host:port`; an empty or `?` host: the host of the
    /// node that redirected, as `getPreferredEndpoint` in cluster.c means it).
    fn node_at(&self, to: &str, from: &Target) -> Result<Target, PortMapError> {
        let unknown = || PortMapError::Unknown(to.chars().take(64).collect());
        let (host, port) = to.rsplit_once(':').ok_or_else(unknown)?;
        let port: u16 = port.parse().map_err(|_| unknown())?;
        let from_host = from.host_now();
        let found = self.nodes.iter().find(|(n, ip, dialled)| {
            let named = if host.is_empty() || host == "?" {
                from_host.as_deref() == Some(ip.to_string().as_str())
            } else {
                n.ip == host || n.aliases.iter().any(|a| a == host)
            };
            named && (*dialled == port || n.port == port)
        });
        let (_, ip, dialled) = found.ok_or_else(unknown)?;
        Ok(Target::Fixed(UpstreamAddr::Tcp {
            host: ip.to_string(),
            port: *dialled,
        }))
    }
}
