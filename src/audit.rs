//! Security events: failed logins and ACL denials. Each is a tracing event (target
//! `redward::audit`), an entry in the `ACL LOG` that redward answers itself, and, when
//! `audit: { file: PATH }` is set, one JSON line appended to that file.
//!
//! An event never carries a password or a value: only who, from where, which command and which
//! key or channel name. Writing the file happens on a background task fed by a bounded channel,
//! so a slow disk never stalls a client; when the channel is full the event still reaches the
//! log and ACL LOG, and the drop is counted and reported.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::throttle::{Throttle, Verdict};

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

/// The process-wide audit sink.
#[derive(Debug)]
pub struct Audit {
    log: Mutex<VecDeque<LogEntry>>,
    file: Option<mpsc::Sender<String>>,
    dropped: AtomicU64,
    /// Keeps bursts of failed logins and of denials to a few log lines each.
    auth_lines: Throttle,
    denial_lines: Throttle,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            log: Mutex::new(VecDeque::new()),
            file: None,
            dropped: AtomicU64::new(0),
            auth_lines: Throttle::default(),
            denial_lines: Throttle::default(),
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
            }
        });
        Ok(Audit {
            file: Some(tx),
            ..Audit::default()
        })
    }

    /// Records an event everywhere it belongs. The log line is throttled (`throttle.rs`): a
    /// burst is a few lines and a count; ACL LOG, the metrics and the file count every event.
    pub fn record(&self, ev: &Event) {
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
            if tx.try_send(json_line(ev)).is_err() {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(
                        dropped = n,
                        "audit file writer is behind; events dropped from the file"
                    );
                }
            }
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
            e.client_info = client_info(ev);
            log.push_front(e);
            return;
        }
        log.push_front(LogEntry {
            count: 1,
            reason: ev.reason,
            context: ev.context,
            object: ev.object.clone(),
            username: ev.username.clone(),
            updated: now,
            client_info: client_info(ev),
        });
        log.truncate(ACL_LOG_MAX_LEN);
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
            l.clear();
        }
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
    fn json_lines_escape_names() {
        let line = json_line(&ev("we\"ird\nkey"));
        assert!(line.contains(r#""object":"we\"ird\u000akey""#), "{line}");
        assert!(line.ends_with("}\n"));
    }
}
