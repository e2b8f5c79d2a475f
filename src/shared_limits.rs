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
//! No client can reach that state, whatever its ACL (`reserved`):
//! - it lives in a database of its own (`limits.shared_state_database`, default Redis's
//!   last), which clients are told does not exist: `SELECT`, `SWAPDB`, `MOVE` and
//!   `COPY ... DB` naming it get Redis's `DB index is out of range`, and `KEYS`, `SCAN`,
//!   `RANDOMKEY`, `FLUSHDB` in the clients' databases never see it;
//! - its names are reserved: keys under `redward:` and the channel `redward:lockouts`;
//! - what reaches keys or databases without naming them is refused outright, as an ACL
//!   refusal: scripts and functions (they can build any name and `SELECT` any database at
//!   run time), `FLUSHALL`, `MONITOR`, `SYNC`/`PSYNC`, `REPLICAOF`/`SLAVEOF`, `DEBUG`.

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
use crate::shared_signing::Signer;
use crate::upstream::Connector;

/// The key prefix and channel redward keeps for itself when `shared_state: upstream`.
pub const KEY_PREFIX: &[u8] = crate::upstream::confine::RESERVED;
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
        let signer = Arc::new(tokio::sync::OnceCell::new());
        tokio::spawn(count(
            connector.clone(),
            Arc::clone(&limiter),
            rx,
            Arc::clone(&signer),
            stop.clone(),
        ));
        tokio::spawn(listen(connector, limiter, signer, stop));
        SharedLimits { failures: tx }
    }

    /// A failed login from `ip`, to be counted across instances.
    pub fn failed(&self, ip: IpAddr) {
        if self.failures.try_send(ip).is_err() {
            debug!(%ip, "shared failed-login queue full; counted locally only");
        }
    }
}

/// Commands that reach keys or databases without naming them, refused to every client while
/// state is shared: a script or function can build any key name and `SELECT` any database at
/// run time; `FLUSHALL` and a replica's attach (`REPLICAOF`, `SLAVEOF`) wipe every database;
/// `MONITOR` and a replication stream (`SYNC`, `PSYNC`) show redward's own commands and every
/// key; `DEBUG` (`RELOAD`, `POPULATE`, ...) works on the whole dataset.
const UNGUARDED: &[&str] = &[
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
    "flushall",
    "monitor",
    "sync",
    "psync",
    "replicaof",
    "slaveof",
    "debug",
];

/// The commands that run scripts and functions: with `upstream.identity: per_user`, Redis
/// itself keeps them from the state (`upstream/confine.rs`).
pub(crate) const SCRIPTS: &[&str] = &[
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
];

/// Commands that name a database, which must not be the hidden one.
const NAMES_DB: &[&str] = &["select", "swapdb", "move", "copy"];

/// Why a request is refused while state is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// As an ACL refusal, with the server's NOPERM text.
    Denied(crate::acl::Denied),
    /// The hidden database: Redis's `DB index is out of range`, as if it did not exist.
    NoSuchDb,
}

impl Refusal {
    /// The reply, in the server's words.
    pub fn reply(
        self,
        user: &str,
        spec: &crate::commands::CommandSpec,
        req: &crate::resp::Request<'_>,
    ) -> Vec<u8> {
        match self {
            Refusal::Denied(d) => d.reply_as(user, spec, req),
            Refusal::NoSuchDb => b"-ERR DB index is out of range\r\n".to_vec(),
        }
    }
}

/// Whether the request may touch a reserved name or the hidden database: one of its
/// arguments contains the prefix, it is a PSUBSCRIBE (whose patterns can match the channel
/// without naming it), or it is one of the commands above. The arguments are the parsed ones
/// that will be forwarded, never the raw bytes: an inline request's are unescaped
/// (`"\x72edward:"` is `redward:`), and Redis sees them re-encoded (`dispatch::forward`).
/// The only cost for every other request is one substring search per argument and a few
/// length compares; [`reserved`] then looks closer.
pub fn mentions_reserved(req: &crate::resp::Request<'_>) -> bool {
    let name = req.name();
    name.eq_ignore_ascii_case(b"psubscribe")
        || UNGUARDED
            .iter()
            .chain(NAMES_DB)
            .any(|c| name.eq_ignore_ascii_case(c.as_bytes()))
        || req.args().any(contains_prefix)
}

/// Whether `arg` contains [`KEY_PREFIX`] anywhere.
fn contains_prefix(arg: &[u8]) -> bool {
    memchr::memmem::find(arg, KEY_PREFIX).is_some()
}

/// What [`reserved`] guards for one request.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// The hidden database of the shared state (`shared_state: upstream`). With one, every
    /// command of [`UNGUARDED`] is refused; without (a cluster's port map alone, which the
    /// instances rebuild if it is wiped, `cluster/port_map.rs`) only scripts and functions
    /// are, which could write it.
    pub state_db: Option<u32>,
    /// The user's scripts and functions run as an upstream user whose own rules keep them
    /// from the state (`upstream/confine.rs`), so they are not refused here.
    pub scripts_confined: bool,
}

/// Whether a request reaches a reserved key, channel or database; asked only of requests
/// that [`mentions_reserved`] let through.
pub fn reserved(
    spec: &crate::commands::CommandSpec,
    req: &crate::resp::Request<'_>,
    guard: Guard,
) -> Option<Refusal> {
    use crate::acl::Denied;
    let base = spec.name.split('|').next().unwrap_or(spec.name);
    let refused = if SCRIPTS.contains(&base) {
        !guard.scripts_confined
    } else {
        guard.state_db.is_some() && UNGUARDED.contains(&base)
    };
    if refused {
        return Some(Refusal::Denied(Denied::Command));
    }
    if let Some(db) = guard.state_db {
        if names_db(base, req, db) {
            return Some(Refusal::NoSuchDb);
        }
    }
    for k in crate::acl::command_keys(spec, req) {
        if req.arg(k.pos).starts_with(KEY_PREFIX) {
            return Some(Refusal::Denied(Denied::Key { arg: k.pos }));
        }
    }
    // Arguments that name keys without being keys: SORT's BY and GET patterns. Loading a
    // script or library that spells the prefix out is refused too (running any is, above).
    if matches!(base, "sort" | "sort_ro" | "script" | "function") {
        for i in 1..req.argc() {
            if contains_prefix(req.arg(i)) {
                return Some(Refusal::Denied(Denied::Key { arg: i }));
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
            return Some(Refusal::Denied(Denied::Channel { arg: i }));
        }
    }
    None
}

/// Whether `SELECT`, `SWAPDB`, `MOVE` or `COPY ... DB` names database `db`, read as Redis
/// reads them (`string2ll`; `selectCommand`, `swapdbCommand`, `moveCommand`, `copyCommand`
/// in db.c). Requests Redis would refuse for another reason first (a bad integer, a
/// syntax error) are left to Redis, so the text is its own.
fn names_db(base: &str, req: &crate::resp::Request<'_>, db: u32) -> bool {
    let is = |i: usize| crate::resp::request::string2ll(req.arg(i)) == Some(i64::from(db));
    let int = |i: usize| crate::resp::request::string2ll(req.arg(i)).is_some();
    match (base, req.argc()) {
        ("select", 2) => is(1),
        ("swapdb", 3) => int(1) && int(2) && (is(1) || is(2)),
        ("move", 3) => is(2),
        ("copy", n) if n >= 3 => {
            let mut target = None;
            let mut i = 3;
            while i < n {
                let a = req.arg(i);
                if a.eq_ignore_ascii_case(b"replace") {
                    i += 1;
                } else if a.eq_ignore_ascii_case(b"db") && i + 1 < n && int(i + 1) {
                    target = Some(i + 1);
                    i += 2;
                } else {
                    return false; // Redis's own error
                }
            }
            target.is_some_and(is)
        }
        _ => false,
    }
}

/// Counts failures in Redis, one script call each, on a connection of its own.
async fn count(
    connector: Connector,
    limiter: Arc<Limiter>,
    mut rx: mpsc::Receiver<IpAddr>,
    signer: Arc<tokio::sync::OnceCell<Signer>>,
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
        let Some(signer) = signer_of(&signer, &connector, &mut conn, &mut buf).await else {
            warn!(%ip, "shared failed-login count failed (no signing key yet); counted locally only");
            conn = None;
            continue;
        };
        let message = signer.sign(ip, std::time::SystemTime::now());
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
                "EVAL", SCRIPT, "2", &counter, &lock, &limit, &ms, CHANNEL, &message,
            ]
            .iter()
            .map(|a| a.as_bytes()),
        );
        let reply = call(&connector, &mut conn, &mut buf, &req).await;
        if !matches!(reply, Some(OwnedFrame::Integer(_))) {
            warn!(%ip, ?reply, "shared failed-login count failed; counted locally only");
            conn = None;
        }
    }
}

/// Sends `req` on `conn`, opening it first if there is none, and reads one reply, all within
/// 5 s. `None` on any failure (the caller drops the connection). The background tasks of
/// shared state (lockouts here, command rates in `shared_rates.rs`) each keep one.
pub(crate) async fn call(
    connector: &Connector,
    conn: &mut Option<crate::upstream::UpstreamStream>,
    buf: &mut BytesMut,
    req: &[u8],
) -> Option<OwnedFrame> {
    tokio::time::timeout(Duration::from_secs(5), async {
        if conn.is_none() {
            *conn = connector.connect().await.ok();
            buf.clear();
        }
        let stream = conn.as_mut()?;
        stream.write_all(req).await.ok()?;
        stream.flush().await.ok()?;
        crate::net_io::read_frame(stream, buf, 4096).await.ok()
    })
    .await
    .ok()
    .flatten()
}

/// The signing key, fetched once (`shared_signing.rs`).
async fn signer_of<'a>(
    cell: &'a tokio::sync::OnceCell<Signer>,
    connector: &Connector,
    conn: &mut Option<crate::upstream::UpstreamStream>,
    buf: &mut BytesMut,
) -> Option<&'a Signer> {
    if let Some(s) = cell.get() {
        return Some(s);
    }
    let s = match crate::shared_signing::from_credential(connector) {
        Some(s) => s,
        None => {
            let req = crate::shared_signing::key_requests()?;
            // The SET's reply, then the GET's.
            call(connector, conn, buf, &req).await?;
            let stored = crate::net_io::read_frame(conn.as_mut()?, buf, 4096)
                .await
                .ok()?;
            crate::shared_signing::from_stored(&stored)?
        }
    };
    Some(cell.get_or_init(|| async { s }).await)
}

/// Locks out, here, the addresses any instance reports on the channel, in messages signed
/// with the shared key (`shared_signing.rs`); anything else on the channel is ignored.
async fn listen(
    connector: Connector,
    limiter: Arc<Limiter>,
    signer: Arc<tokio::sync::OnceCell<Signer>>,
    stop: CancellationToken,
) {
    let forged = crate::throttle::Throttle::default();
    loop {
        let run = async {
            let signer = {
                let mut conn = None;
                let mut buf = BytesMut::new();
                signer_of(&signer, &connector, &mut conn, &mut buf)
                    .await?
                    .clone()
            };
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
                            match signer.verify(ip, std::time::SystemTime::now()) {
                                Some(ip) => {
                                    debug!(%ip, "locked out by the shared failed-login count");
                                    limiter.lock(ip);
                                }
                                None => {
                                    if let crate::throttle::Verdict::Log { suppressed } =
                                        forged.event()
                                    {
                                        warn!(suppressed, "an unsigned or stale message on redward's lockout channel was ignored");
                                    }
                                }
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
