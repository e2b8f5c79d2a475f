//! Security events: failed logins and ACL denials. Each is a tracing event (target
//! `redward::audit`), an entry in the `ACL LOG` that redward answers itself, and, when
//! `audit: { file: PATH }` is set, one JSON line appended to that file.
//!
//! An event never carries a password or a value: only who, from where, which command and which
//! key or channel name. A name is the client's to choose, up to the request size limit, so
//! only its first [`MAX_NAME`] bytes are kept, marked as cut ([`bounded`]); what the log and
//! the file queue hold is counted toward `limits.max_client_memory` ([`Audit::held`]), so
//! denials cannot make redward grow past the bound its clients' buffers are held to. Writing the file happens on a background task fed by a bounded channel,
//! so a slow disk never stalls a client; when the channel is full the event still reaches the
//! log and ACL LOG, and the drop is counted and reported.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::memory::ClientMemory;
use crate::throttle::{Throttle, Verdict};

/// The most of a client-chosen name (key, channel, username) an event keeps. Redis keeps the
/// whole name in ACL LOG (`addACLLogEntry`); a proxy in front of an exposed server cannot
/// let a stream of 4 MiB key names stay in memory 4,096 times over.
pub const MAX_NAME: usize = 256;

/// `name` as an event keeps it: whole when at most [`MAX_NAME`] bytes, else its first
/// [`MAX_NAME`] bytes followed by a mark saying how long it was. Never copies more.
pub fn bounded(name: &[u8]) -> String {
    match name.get(..MAX_NAME) {
        Some(head) if name.len() > MAX_NAME => format!(
            "{}...(cut, {} bytes)",
            String::from_utf8_lossy(head),
            name.len()
        ),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

/// Entries kept for `ACL LOG` (Redis's `acllog-max-len` default).
pub const ACL_LOG_MAX_LEN: usize = 128;
/// Events waiting for the audit file writer.
const FILE_QUEUE: usize = 4096;
/// Redis groups a repeated denial into one ACL LOG entry within this window
/// (`ACL_LOG_GROUPING_MAX_TIME_DELTA`).
const GROUPING_WINDOW: Duration = Duration::from_secs(60);
/// How many of the newest entries Redis looks at for one to group with (`toscan`).
const GROUPING_SCAN: usize = 10;

/// Why an event was recorded, with Redis's ACL LOG `reason` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Auth,
    Command,
    Key,
    Channel,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Auth => "auth",
            Reason::Command => "command",
            Reason::Key => "key",
            Reason::Channel => "channel",
        }
    }
}

/// One security event.
#[derive(Clone, Debug)]
pub struct Event {
    pub reason: Reason,
    /// `toplevel` or `multi` (Redis's ACL LOG `context`).
    pub context: &'static str,
    /// The user that was denied, or the name a failed login tried.
    pub username: String,
    pub peer: SocketAddr,
    /// The command's full name (`client|kill`) or, for denied keys and channels, their name.
    /// For failed logins: `AUTH`.
    pub object: String,
    /// The command's full name, for key and channel denials too.
    pub command: String,
}

/// A change of users through `ACL SETUSER`/`DELUSER`/`SAVE`/`LOAD`: who made it, from where,
/// and which users it set or removed. Never a rule: rules may hold passwords.
#[derive(Clone, Debug)]
pub struct Change {
    pub by: String,
    pub peer: SocketAddr,
    pub command: String,
    pub set: Vec<String>,
    pub removed: Vec<String>,
}

/// An `ACL LOG` entry (`ACLLogEntry` in `acl.c`).
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub count: u64,
    pub reason: Reason,
    pub context: &'static str,
    pub object: String,
    pub username: String,
    /// When it last happened (`ctime` in acl.c): ACL LOG's age and grouping count from it.
    pub updated: SystemTime,
    pub client_info: String,
}

impl LogEntry {
    /// The bytes this entry holds, for [`Audit::held`].
    fn size(&self) -> usize {
        std::mem::size_of::<LogEntry>()
            + self.object.len()
            + self.username.len()
            + self.client_info.len()
    }
}

/// The process-wide audit sink.
#[derive(Debug)]
pub struct Audit {
    log: Mutex<VecDeque<LogEntry>>,
    file: Option<mpsc::Sender<String>>,
    dropped: AtomicU64,
    /// Keeps bursts of failed logins and of denials to a few log lines each.
    auth_lines: Throttle,
    denial_lines: Throttle,
    /// Bytes the ACL LOG and the file queue hold now (see [`Audit::held`]).
    held: Arc<AtomicUsize>,
    /// Where `held` is counted toward `limits.max_client_memory`, once the bound exists.
    memory: OnceLock<Arc<ClientMemory>>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            log: Mutex::new(VecDeque::new()),
            file: None,
            dropped: AtomicU64::new(0),
            auth_lines: Throttle::default(),
            denial_lines: Throttle::default(),
            held: Arc::new(AtomicUsize::new(0)),
            memory: OnceLock::new(),
        }
    }
}

impl Audit {
    /// An audit sink that also appends JSON lines to `path`. The file is opened (created,
    /// append-only) now, so a bad path stops start-up.
    ///
    /// # Errors
    /// The I/O error opening the file.
    pub async fn with_file(path: &Path) -> std::io::Result<Audit> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let (tx, mut rx) = mpsc::channel::<String>(FILE_QUEUE);
        let shown = path.display().to_string();
        let audit = Audit {
            file: Some(tx),
            ..Audit::default()
        };
        let held = Arc::clone(&audit.held);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut batch = line;
                // Take what else is queued, so a burst costs one write.
                while let Ok(more) = rx.try_recv() {
                    batch.push_str(&more);
                }
                if let Err(e) = file.write_all(batch.as_bytes()).await {
                    warn!(file = %shown, error = %e, "audit file write failed");
                }
                let _ = file.flush().await;
                // Out of the queue: no longer held (the bound's share follows at the next
                // event, or the next `settle`).
                held.fetch_sub(batch.len(), Ordering::Relaxed);
            }
        });
        Ok(audit)
    }

    /// Records an event everywhere it belongs. The log line is throttled (`throttle.rs`): a
    /// burst is a few lines and a count; ACL LOG, the metrics and the file count every event.
    pub fn record(&self, ev: &Event) {
        let bounded_ev;
        let ev = if ev.object.len() > MAX_NAME + 32 || ev.username.len() > MAX_NAME + 32 {
            // Callers pass names through [`bounded`]; this keeps the promise for any that
            // did not.
            bounded_ev = Event {
                object: bounded(ev.object.as_bytes()),
                username: bounded(ev.username.as_bytes()),
                ..ev.clone()
            };
            &bounded_ev
        } else {
            ev
        };
        let throttle = if ev.reason == Reason::Auth {
            &self.auth_lines
        } else {
            &self.denial_lines
        };
        if let Verdict::Log { suppressed } = throttle.event() {
            info!(
                target: "redward::audit",
                reason = ev.reason.as_str(),
                context = ev.context,
                user = %ev.username,
                peer = %ev.peer,
                command = %ev.command,
                object = %ev.object,
                not_logged_before = suppressed,
                "{}",
                if ev.reason == Reason::Auth { "authentication failed" } else { "ACL denied" }
            );
        }
        self.add_to_log(ev);
        if let Some(tx) = &self.file {
            let line = json_line(ev);
            let len = line.len();
            self.held.fetch_add(len, Ordering::Relaxed);
            if tx.try_send(line).is_err() {
                self.held.fetch_sub(len, Ordering::Relaxed);
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(
                        dropped = n,
                        "audit file writer is behind; events dropped from the file"
                    );
                }
            }
        }
        self.settle();
    }

    /// Appends a change of users to the audit file (the log line is the caller's). At most
    /// the first 100 names of each list are written.
    pub fn record_change(&self, ch: &Change) {
        let Some(tx) = &self.file else { return };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let list = |names: &[String]| {
            names
                .iter()
                .take(100)
                .map(|n| json_string(n))
                .collect::<Vec<_>>()
                .join(",")
        };
        let line = format!(
            "{{\"time\":{}.{:03},\"event\":\"acl_change\",\"user\":{},\"client\":\"{}\",\"command\":{},\"set\":[{}],\"removed\":[{}]}}\n",
            ts.as_secs(),
            ts.subsec_millis(),
            json_string(&ch.by),
            ch.peer,
            json_string(&ch.command),
            list(&ch.set),
            list(&ch.removed),
        );
        let len = line.len();
        self.held.fetch_add(len, Ordering::Relaxed);
        if tx.try_send(line).is_err() {
            self.held.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.settle();
    }

    /// Bytes the ACL LOG and the file queue hold now: at most [`ACL_LOG_MAX_LEN`] and
    /// `FILE_QUEUE` events of bounded names (about 4 MiB in all, whatever clients send).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Counts what the audit holds toward `limits.max_client_memory` from now on.
    pub fn count_toward(&self, memory: Arc<ClientMemory>) {
        let _ = self.memory.set(memory);
        self.settle();
    }

    /// Brings the bound's share of the audit up to date with [`Audit::held`] (on every event
    /// and from housekeeping, so a drained file queue is given back).
    pub fn settle(&self) {
        if let Some(m) = self.memory.get() {
            m.set_overhead(self.held());
        }
    }

    /// Logs, in one line each, the events a burst kept out of the log (call periodically).
    pub fn flush_log(&self) {
        if let Some((count, over)) = self.auth_lines.flush() {
            info!(target: "redward::audit", count, seconds = over.as_secs_f64(), "authentication failures not logged one by one (burst); ACL LOG and the audit file have them");
        }
        if let Some((count, over)) = self.denial_lines.flush() {
            info!(target: "redward::audit", count, seconds = over.as_secs_f64(), "ACL denials not logged one by one (burst); ACL LOG and the audit file have them");
        }
    }

    fn add_to_log(&self, ev: &Event) {
        let now = SystemTime::now();
        let Ok(mut log) = self.log.lock() else { return };
        // `addACLLogEntry` in acl.c: among the 10 newest entries, one with the same reason,
        // context, object and user updated within the window is bumped and moved to the head.
        let found = log.iter().take(GROUPING_SCAN).position(|e| {
            e.reason == ev.reason
                && e.context == ev.context
                && e.object == ev.object
                && e.username == ev.username
                && now.duration_since(e.updated).unwrap_or_default() <= GROUPING_WINDOW
        });
        if let Some(mut e) = found.and_then(|i| log.remove(i)) {
            e.count += 1;
            e.updated = now;
            let info = client_info(ev);
            self.held.fetch_add(info.len(), Ordering::Relaxed);
            self.held.fetch_sub(e.client_info.len(), Ordering::Relaxed);
            e.client_info = info;
            log.push_front(e);
            return;
        }
        let entry = LogEntry {
            count: 1,
            reason: ev.reason,
            context: ev.context,
            object: ev.object.clone(),
            username: ev.username.clone(),
            updated: now,
            client_info: client_info(ev),
        };
        self.held.fetch_add(entry.size(), Ordering::Relaxed);
        log.push_front(entry);
        while log.len() > ACL_LOG_MAX_LEN {
            if let Some(old) = log.pop_back() {
                self.held.fetch_sub(old.size(), Ordering::Relaxed);
            }
        }
    }

    /// The newest `count` entries, newest first.
    pub fn entries(&self, count: usize) -> Vec<LogEntry> {
        self.log
            .lock()
            .map(|l| l.iter().take(count).cloned().collect())
            .unwrap_or_default()
    }

    pub fn reset(&self) {
        if let Ok(mut l) = self.log.lock() {
            let bytes: usize = l.iter().map(LogEntry::size).sum();
            l.clear();
            self.held.fetch_sub(bytes, Ordering::Relaxed);
        }
        self.settle();
    }
}

fn client_info(ev: &Event) -> String {
    format!("addr={} user={} cmd={}", ev.peer, ev.username, ev.command)
}

/// One JSON object per line; every string is escaped (names may hold any byte).
fn json_line(ev: &Event) -> String {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{{\"time\":{}.{:03},\"event\":\"{}\",\"reason\":\"{}\",\"context\":\"{}\",\"user\":{},\"client\":\"{}\",\"command\":{},\"object\":{}}}\n",
        ts.as_secs(),
        ts.subsec_millis(),
        if ev.reason == Reason::Auth { "auth_failed" } else { "acl_denied" },
        ev.reason.as_str(),
        ev.context,
        json_string(&ev.username),
        ev.peer,
        json_string(&ev.command),
        json_string(&ev.object),
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(object: &str) -> Event {
        Event {
            reason: Reason::Key,
            context: "toplevel",
            username: "app".into(),
            peer: "127.0.0.1:5000".parse().unwrap(),
            object: object.into(),
            command: "get".into(),
        }
    }

    #[test]
    fn repeated_denials_are_grouped_and_the_log_is_bounded() {
        let a = Audit::default();
        a.record(&ev("k1"));
        a.record(&ev("k1"));
        assert_eq!(a.entries(10).len(), 1);
        assert_eq!(a.entries(10)[0].count, 2);
        for i in 0..200 {
            a.record(&ev(&format!("k{i}")));
        }
        assert_eq!(a.entries(1000).len(), ACL_LOG_MAX_LEN);
    }

    #[test]
    fn a_repeat_moves_its_entry_to_the_head_and_only_recent_entries_group() {
        let a = Audit::default();
        a.record(&ev("old"));
        for i in 0..GROUPING_SCAN {
            a.record(&ev(&format!("k{i}")));
        }
        // "old" is the 11th newest: Redis does not look that far, so it starts a new entry.
        a.record(&ev("old"));
        let e = a.entries(100);
        assert_eq!(e.len(), GROUPING_SCAN + 2);
        assert_eq!((e[0].object.as_str(), e[0].count), ("old", 1));
        a.record(&ev("k5"));
        let e = a.entries(100);
        assert_eq!((e[0].object.as_str(), e[0].count), ("k5", 2));
    }

    #[test]
    fn denied_names_are_kept_as_a_bounded_prefix_marked_as_cut() {
        let a = Audit::default();
        let long = vec![b'k'; 4 << 20];
        assert_eq!(bounded(b"app:1"), "app:1");
        let kept = bounded(&long);
        assert!(kept.starts_with(&"k".repeat(MAX_NAME)), "{}", &kept[..40]);
        assert!(kept.ends_with("...(cut, 4194304 bytes)"), "{kept}");
        for i in 0..1000 {
            let mut name = i.to_string().into_bytes();
            name.extend_from_slice(&long);
            a.record(&ev(&String::from_utf8(name).unwrap()));
        }
        assert_eq!(a.entries(1000).len(), ACL_LOG_MAX_LEN);
        assert!(a.held() < ACL_LOG_MAX_LEN * 1024, "{}", a.held());
        a.reset();
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn json_lines_escape_names() {
        let line = json_line(&ev("we\"ird\nkey"));
        assert!(line.contains(r#""object":"we\"ird\u000akey""#), "{line}");
        assert!(line.ends_with("}\n"));
    }
}
