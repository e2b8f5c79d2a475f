//! Users changed at run time, shared by every instance in front of one Redis
//! (`limits.shared_state: upstream`), through that Redis, with no shared file system.
//!
//! The run-time users (every user outside the configuration's `users:` list) live in the
//! hidden state database as a hash, `redward:users` (name → its `ACL LIST` line: hashed
//! passwords only), with a version counter `redward:users:version`. An instance that changes
//! users (`ACL SETUSER`, `DELUSER`, `LOAD`) applies the change at once and, in the
//! background, writes it with one script that also bumps the version. Every instance reads
//! the version every second and, when it moved, the whole hash, and installs what it says:
//! so all converge on the last write, within about a second, and concurrent changes never
//! leave two instances disagreeing. An instance that starts later reads the hash before it
//! serves anything; the first instance of a Redis without the hash writes its own run-time
//! users there.
//!
//! No client reaches these keys (`shared_limits::reserved`, `upstream/confine.rs`), so none
//! can forge a user through the store.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::acl::User;
use crate::resp::encode_command;
use crate::upstream::{Connector, UpstreamStream};

/// Installs the users Redis holds (their `ACL LIST` lines) on this instance; the caller's
/// (`lib.rs`: `RuntimeUsers::replace_from_lines`, then `Shared::publish_users`).
pub type Install = Arc<dyn Fn(&[Vec<u8>]) + Send + Sync>;

const HASH: &str = "redward:users";
const VERSION: &str = "redward:users:version";
/// How often each instance looks for changes made elsewhere.
const POLL: Duration = Duration::from_secs(1);
/// Changes waiting to be written; past this they are dropped (logged), the next full write
/// (a LOAD, or a change after the queue drains) carries the state again.
const QUEUE: usize = 1024;

/// A change to write to Redis.
#[derive(Debug)]
pub enum Write {
    /// Set these users (name, `ACL LIST` line).
    Set(Vec<(String, String)>),
    /// Remove these users.
    Remove(Vec<String>),
    /// The run-time users are exactly these now (`ACL LOAD`).
    Replace(Vec<(String, String)>),
}

/// `op`, `KEYS[1]` the hash, `KEYS[2]` the version; pairs (or names) in ARGV from 2.
const SCRIPT: &str = "local op = ARGV[1] \
    if op == 'replace' then redis.call('DEL', KEYS[1]) end \
    if op == 'del' then \
      for i = 2, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end \
    else \
      for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end \
    end \
    return redis.call('INCR', KEYS[2])";

/// The sending side, for sessions.
#[derive(Debug, Clone)]
pub struct SharedUsers {
    writes: mpsc::Sender<Write>,
}

impl SharedUsers {
    /// Reads the shared users (installing them, or seeding Redis with this instance's),
    /// then starts the task that writes changes and follows the other instances'.
    /// `connector` is set up for the hidden database.
    /// `mine`: this instance's run-time users, written to Redis if it has none yet.
    pub async fn start(
        connector: Connector,
        mine: Vec<(String, String)>,
        install: Install,
        stop: CancellationToken,
    ) -> SharedUsers {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut task = Task {
            connector,
            install,
            conn: None,
            buf: BytesMut::new(),
            version: None,
        };
        task.first_read(mine).await;
        tokio::spawn(task.run(rx, stop));
        SharedUsers { writes: tx }
    }

    /// Queues a change for the other instances.
    pub fn write(&self, w: Write) {
        if self.writes.try_send(w).is_err() {
            warn!("shared users: write queue full; a change stays on this instance until the next");
        }
    }
}

/// A user as stored: its `ACL LIST` line.
pub fn line(user: &User) -> (String, String) {
    (user.name.clone(), crate::acl::describe(user))
}

struct Task {
    connector: Connector,
    install: Install,
    conn: Option<UpstreamStream>,
    buf: BytesMut,
    /// The version last installed or written.
    version: Option<i64>,
}

impl Task {
    async fn call(&mut self, args: &[&str]) -> Option<OwnedFrame> {
        let mut req = Vec::new();
        encode_command(&mut req, args.iter().map(|a| a.as_bytes()));
        let reply =
            crate::shared_limits::call(&self.connector, &mut self.conn, &mut self.buf, &req).await;
        if reply.is_none() {
            self.conn = None;
        }
        reply
    }

    async fn read_version(&mut self) -> Option<Option<i64>> {
        match self.call(&["GET", VERSION]).await? {
            OwnedFrame::BulkString(b) => Some(std::str::from_utf8(&b).ok()?.parse().ok()),
            OwnedFrame::Null => Some(None),
            _ => None,
        }
    }

    /// At start-up: Redis's users if it has any, else this instance's written there.
    async fn first_read(&mut self, mine: Vec<(String, String)>) {
        match self.read_version().await {
            Some(Some(_)) => self.follow().await,
            Some(None) => {
                info!(
                    users = mine.len(),
                    "shared users: none in Redis yet; writing this instance's"
                );
                self.write(Write::Replace(mine)).await;
            }
            None => warn!("shared users: Redis not reached at start-up; following it from now on"),
        }
    }

    /// Reads the version and, if it moved, the users, and installs them.
    async fn follow(&mut self) {
        let Some(version) = self.read_version().await else {
            return;
        };
        if version.is_none() || version == self.version {
            return;
        }
        let Some(OwnedFrame::Array(items)) = self.call(&["HGETALL", HASH]).await else {
            return;
        };
        let mut lines = Vec::with_capacity(items.len() / 2);
        for pair in items.chunks(2) {
            if let [OwnedFrame::BulkString(_), OwnedFrame::BulkString(l)] = pair {
                lines.push(l.clone());
            }
        }
        debug!(version = ?version, users = lines.len(), "shared users: following Redis's users");
        (self.install)(&lines);
        self.version = version;
    }

    async fn write(&mut self, w: Write) {
        let (op, args): (&str, Vec<String>) = match w {
            Write::Set(pairs) => ("set", pairs.into_iter().flat_map(|(n, l)| [n, l]).collect()),
            Write::Replace(pairs) => (
                "replace",
                pairs.into_iter().flat_map(|(n, l)| [n, l]).collect(),
            ),
            Write::Remove(names) => ("del", names),
        };
        let mut all: Vec<&str> = vec!["EVAL", SCRIPT, "2", HASH, VERSION, op];
        all.extend(args.iter().map(String::as_str));
        match self.call(&all).await {
            // Ours was the only change since the version installed: nothing to read back.
            // Otherwise another instance wrote meanwhile: read everything at the next poll.
            Some(OwnedFrame::Integer(v)) => {
                self.version = (self.version.map(|p| p + 1) == Some(v)).then_some(v);
            }
            other => {
                warn!(reply = ?other, "shared users: change not written to Redis; it stays on this instance")
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Write>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => {
                        // Whatever another instance wrote first is installed first.
                        self.follow().await;
                        self.write(w).await;
                    }
                    None => return,
                },
                _ = tick.tick() => self.follow().await,
                () = stop.cancelled() => return,
            }
        }
    }
}
