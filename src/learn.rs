//! Learning the server behind: `INFO server` (flavor, version) and `COMMAND` (the command
//! table), asked on one authenticated upstream connection and installed as the catalog in
//! force (`commands::catalog`).
//!
//! Called at start-up (`Server::bind`) and again after upstream connections are (re)opened
//! ([`after_connect`]: by the shared connections and by clients' own, at most every 10 s, in
//! the background), so a restart of Redis into another version, or a switch to Valkey,
//! changes the table, the ACL checks and the error texts within seconds. If the server cannot be asked (down,
//! `COMMAND` refused), the catalog in force stays: the generated Redis 7.0 table until a
//! server was learned once.

use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use crate::commands::catalog::{self, Installed, ServerInfo};
use crate::commands::discover::{self, LearnError as TableError};
use crate::upstream::{Connector, UpstreamError};

/// Largest reply accepted for `INFO server` plus `COMMAND` (Valkey 8.1's `COMMAND` is about
/// 200 KiB).
const MAX_REPLY: usize = 16 * 1024 * 1024;

/// Why the server behind could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("reading INFO/COMMAND: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream closed the connection during INFO/COMMAND")]
    Closed,
    #[error("INFO/COMMAND reply: {0}")]
    Protocol(String),
    #[error("INFO/COMMAND reply larger than {MAX_REPLY} bytes")]
    TooLarge,
    #[error("upstream refused {command}: {text}")]
    Refused { command: &'static str, text: String },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("timed out asking the upstream for INFO/COMMAND")]
    Timeout,
}

/// What learning found.
#[derive(Clone, Debug)]
pub struct Learned {
    pub server: ServerInfo,
    /// Commands added or described differently from the generated table.
    pub changed: Vec<&'static str>,
    /// Generated commands the server lacks.
    pub absent: Vec<&'static str>,
    /// What the install replaced.
    pub installed: Installed,
}

/// Opens a connection with `connector` (authenticated as redward), learns the server on it
/// and installs its catalog, all within `timeout` (`upstream.connect_timeout`).
///
/// # Errors
/// A [`LearnError`]; the catalog in force is then unchanged.
pub async fn learn(connector: &Connector, timeout: Duration) -> Result<Learned, LearnError> {
    let work = async {
        let mut stream = connector.connect().await?;
        learn_on(&mut stream).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| LearnError::Timeout)?
}

/// Learns the server on an authenticated connection that has nothing in flight (sends
/// `INFO server` and `COMMAND`, reads both replies, consumes nothing more) and installs its
/// catalog. The connection can carry requests afterwards.
///
/// # Errors
/// A [`LearnError`]; the catalog in force is then unchanged.
pub async fn learn_on<S>(stream: &mut S) -> Result<Learned, LearnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n*1\r\n$7\r\nCOMMAND\r\n")
        .await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let info = read_frame(stream, &mut buf).await?;
    let command = read_frame(stream, &mut buf).await?;
    let info = match info {
        OwnedFrame::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        OwnedFrame::Error(text) => {
            return Err(LearnError::Refused {
                command: "INFO",
                text,
            })
        }
        _ => String::new(),
    };
    if let OwnedFrame::Error(text) = command {
        return Err(LearnError::Refused {
            command: "COMMAND",
            text,
        });
    }
    let cat = discover::learn(&info, &command)?;
    let server = cat.server;
    let changed = cat.changed().iter().map(|c| c.name).collect();
    let absent = cat.absent();
    let installed = catalog::install(cat);
    Ok(Learned {
        server,
        changed,
        absent,
        installed,
    })
}

/// Reads one complete RESP2 frame, leaving what follows in `buf`.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<OwnedFrame, LearnError> {
    use crate::net_io::FrameError;
    crate::net_io::read_frame(stream, buf, MAX_REPLY)
        .await
        .map_err(|e| match e {
            FrameError::Io(e) => LearnError::Io(e),
            FrameError::Closed => LearnError::Closed,
            FrameError::Protocol(text) => LearnError::Protocol(text),
            FrameError::TooLarge(_) => LearnError::TooLarge,
        })
}

/// [`learn`], logged: what the server is and what it changed, or why the catalog in force
/// stays. For start-up and for a reconnect hook that does not handle errors itself.
pub async fn learn_and_log(connector: &Connector, timeout: Duration) -> Option<Learned> {
    learned_now();
    match learn(connector, timeout).await {
        Ok(l) => {
            log(&l);
            Some(l)
        }
        Err(e) => {
            warn!(error = %e, server = %catalog::server(), "could not learn the upstream's commands; keeping the command table in force");
            None
        }
    }
}

/// How often the server behind may be learned again after start-up, at most, while nothing
/// failed.
const RELEARN_EVERY: Duration = Duration::from_secs(10);

/// An upstream connection could not be opened, or was lost (see [`after_connect`]).
pub fn upstream_failed() {
    catalog::mark_stale();
}

/// When the server was last learned (or a re-learning started), in milliseconds since
/// [`epoch`].
static LAST_LEARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Marks the server as just learned (start-up), so the first connections do not ask again.
pub fn learned_now() {
    LAST_LEARNED.store(now_ms().max(1), std::sync::atomic::Ordering::Relaxed);
}

/// A re-learning is running (at most one at a time).
static LEARNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An upstream connection was (re)opened: learn the server again in the background, at once
/// after an upstream failure or when the connection's HELLO named another server than the
/// one learned (`catalog::observe_hello`),
/// otherwise unless that happened less than `RELEARN_EVERY` ago. So a Redis restarted into
/// a newer version, or replaced by Valkey, changes the command table, the ACL checks and the
/// texts as soon as redward reconnects; a steady server is asked at most every 10 s, and only
/// when connections are opened. At most one runs at a time. Costs the caller two atomic
/// loads when nothing is due.
pub fn after_connect(connector: &Connector) {
    use std::sync::atomic::Ordering;
    let now = now_ms().max(1);
    let stale = catalog::take_stale();
    if !stale {
        let last = LAST_LEARNED.load(Ordering::Relaxed);
        let every = u64::try_from(RELEARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return;
        }
    }
    if LEARNING.swap(true, Ordering::AcqRel) {
        return; // one is running; it sees the server as it is now
    }
    LAST_LEARNED.store(now, Ordering::Relaxed);
    // Asked as redward itself, in RESP2 and database 0, whatever the connection that was
    // opened: a RESP3 pool's set-up would make the replies RESP3 (which `learn_on` does not
    // read), and a narrow user's identity may not run `INFO` or `COMMAND`.
    let connector = connector.with_setup(crate::upstream::Setup {
        resp3: false,
        db: 0,
        user: None,
    });
    tokio::spawn(async move {
        learn_and_log(&connector, connector.connect_timeout()).await;
        LEARNING.store(false, Ordering::Release);
    });
}

/// Logs what [`learn`] or [`learn_on`] found (a line at info level when the server or its
/// table changed).
pub fn log(l: &Learned) {
    if l.installed.was != l.server || l.installed.table_changed {
        info!(
            server = %l.server,
            was = %l.installed.was,
            changed = l.changed.len(),
            absent = l.absent.len(),
            commands = %l.changed.join(" "),
            "learned the upstream's command table"
        );
    }
}
