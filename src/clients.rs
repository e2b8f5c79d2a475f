//! redward's own clients, as `CLIENT LIST`, `CLIENT INFO` and `CLIENT KILL` through redward
//! show and act on them: real client addresses, redward's users, each client's name, database,
//! protocol and last command. Redis behind redward sees only redward's connections (shared
//! ones among them), which is not what an operator running `redis-cli CLIENT LIST` wants.
//!
//! Each session registers at start ([`Clients::register`]) and publishes what changed once
//! per turn of its loop (not per command), so the registry costs the hot path one
//! uncontended lock per turn at most. `CLIENT KILL` cancels the matching sessions' tokens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::commands;

/// Every connected client.
#[derive(Debug, Default)]
pub struct Clients {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<Entry>>>,
}

/// One connected client.
#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub addr: SocketAddr,
    pub laddr: Option<SocketAddr>,
    created: Instant,
    /// Cancelled by `CLIENT KILL`: the session ends at its next turn.
    pub kill: CancellationToken,
    info: Mutex<Info>,
    /// Redis's id for this client's own upstream connection (`CLIENT ID` asked when it
    /// opened), 0 while it has none: what `CLIENT UNBLOCK` and `CLIENT TRACKING ... REDIRECT`
    /// naming this client become (`session/client_cmd.rs`).
    upstream_id: AtomicU64,
    /// The local address of that connection ([`Entry::upstream_addr`]).
    upstream_addr: Mutex<Option<SocketAddr>>,
}

/// What a client's session last published about itself.
#[derive(Debug, Clone)]
pub struct Info {
    pub name: Vec<u8>,
    pub user: String,
    pub db: u32,
    pub resp: u8,
    pub lib_name: Vec<u8>,
    pub lib_ver: Vec<u8>,
    /// The last command.
    pub cmd: LastCommand,
    pub last: Instant,
    pub sub: i64,
    pub psub: i64,
    pub ssub: i64,
    /// Commands queued in MULTI, or -1 outside one (Redis's `multi=` field).
    pub multi: i64,
    pub monitor: bool,
    /// What Redis keeps in its client flags, as far as redward follows it.
    pub flags: Flags,
    /// `CLIENT TRACKING ... REDIRECT`: redward's id of the client invalidations go to (-1:
    /// none; 0: tracking without redirection).
    pub redir: i64,
    /// Bytes this client's buffers hold: all of them (`tot-mem`, what
    /// `limits.max_client_memory` counts), requests read and not yet taken (`qbuf`), replies
    /// not yet written (`omem`).
    pub mem: usize,
    pub qbuf: usize,
    pub omem: usize,
}

/// The client flags `CLIENT LIST` shows (`catClientInfoString` in networking.c), besides
/// MONITOR (`O`), subscriptions (`P`) and MULTI (`x`), which other fields give.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// `b`: waiting for the reply to a blocking command.
    pub blocked: bool,
    /// `t`, `B`: `CLIENT TRACKING on` (with `BCAST`).
    pub tracking: bool,
    pub bcast: bool,
    /// `c`: QUIT: closing once its replies are written.
    pub closing: bool,
    /// `r`: `READONLY` (cluster replicas).
    pub readonly: bool,
    /// `e`, `T`: `CLIENT NO-EVICT on`, `CLIENT NO-TOUCH on` (Redis 7.2+, Valkey).
    pub no_evict: bool,
    pub no_touch: bool,
}

impl Default for Info {
    fn default() -> Self {
        Info {
            name: Vec::new(),
            user: String::new(),
            db: 0,
            resp: 2,
            lib_name: Vec::new(),
            lib_ver: Vec::new(),
            cmd: LastCommand::default(),
            last: Instant::now(),
            sub: 0,
            psub: 0,
            ssub: 0,
            multi: -1,
            monitor: false,
            flags: Flags::default(),
            redir: -1,
            mem: 0,
            qbuf: 0,
            omem: 0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A client's place in the registry; leaving it (drop) removes the client.
#[derive(Debug)]
pub struct Registration {
    clients: Arc<Clients>,
    pub entry: Arc<Entry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.clients.live).remove(&self.entry.id);
    }
}

impl Entry {
    /// Replaces what the registry shows for this client.
    pub fn publish(&self, f: impl FnOnce(&mut Info)) {
        f(&mut lock(&self.info));
    }

    pub fn info(&self) -> Info {
        lock(&self.info).clone()
    }

    /// Seconds since the client connected (`age=` in `CLIENT LIST`).
    pub fn age(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.created).as_secs()
    }

    /// Redis's id for this client's own upstream connection, if it has one.
    pub fn upstream_id(&self) -> Option<u64> {
        Some(self.upstream_id.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    /// Records Redis's id for the client's own upstream connection (0: none).
    pub fn set_upstream_id(&self, id: u64) {
        self.upstream_id.store(id, Ordering::Relaxed);
    }

    /// The address Redis sees the client's own upstream connection come from, if it has one
    /// over TCP: how `SLOWLOG GET` entries are traced back to the client.
    pub fn upstream_addr(&self) -> Option<SocketAddr> {
        *lock(&self.upstream_addr)
    }

    pub fn set_upstream_addr(&self, addr: Option<SocketAddr>) {
        *lock(&self.upstream_addr) = addr;
    }

    /// Redis's `catClientInfoString` (networking.c) for this client: the same fields in the
    /// same order, so tools that parse `CLIENT LIST` keep working. Fields that describe
    /// Redis's own buffers are redward's where it has them (`tot-mem`), 0 otherwise; `fd` is
    /// -1 (redward's sockets are not Redis's). `lib-name`/`lib-ver` appear when the server
    /// behind knows `CLIENT SETINFO` (Redis 7.2+, Valkey), as they do there.
    pub fn line(&self, now: Instant, with_lib: bool) -> String {
        let i = self.info();
        let f = i.flags;
        // Redis's order (`catClientInfoString`, 7.0.15 and later).
        let flags: String = [
            (i.monitor, 'O'),
            (i.sub + i.psub + i.ssub > 0, 'P'),
            (i.multi >= 0, 'x'),
            (f.blocked, 'b'),
            (f.tracking, 't'),
            (f.tracking && f.bcast, 'B'),
            (f.closing, 'c'),
            (f.readonly, 'r'),
            (f.no_evict, 'e'),
            (f.no_touch, 'T'),
        ]
        .into_iter()
        .filter_map(|(on, c)| on.then_some(c))
        .collect();
        let flags = if flags.is_empty() {
            "N".to_owned()
        } else {
            flags
        };
        let laddr = self.laddr.map_or_else(String::new, |a| a.to_string());
        let mut line = format!(
            "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db={} sub={} psub={} ssub={} multi={} qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={} tot-mem={} events=r cmd={} user={} redir={} resp={}",
            self.id,
            self.addr,
            laddr,
            String::from_utf8_lossy(&i.name),
            self.age(now),
            now.saturating_duration_since(i.last).as_secs(),
            flags,
            i.db,
            i.sub,
            i.psub,
            i.ssub,
            i.multi,
            i.qbuf,
            i.omem,
            i.mem,
            i.cmd.fullname(),
            i.user,
            i.redir,
            i.resp,
        );
        if with_lib {
            line.push_str(" lib-name=");
            line.push_str(&String::from_utf8_lossy(&i.lib_name));
            line.push_str(" lib-ver=");
            line.push_str(&String::from_utf8_lossy(&i.lib_ver));
        }
        line
    }
}

impl Clients {
    /// Registers a new client and gives it its id (1, 2, ...: as Redis numbers its clients).
    pub fn register(
        self: &Arc<Self>,
        addr: SocketAddr,
        laddr: Option<SocketAddr>,
        user: &str,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            id,
            addr,
            laddr,
            created: Instant::now(),
            kill: CancellationToken::new(),
            info: Mutex::new(Info {
                user: user.to_owned(),
                ..Info::default()
            }),
            upstream_id: AtomicU64::new(0),
            upstream_addr: Mutex::new(None),
        });
        lock(&self.live).insert(id, Arc::clone(&entry));
        Registration {
            clients: Arc::clone(self),
            entry,
        }
    }

    /// Every client, oldest first (as Redis lists them).
    pub fn all(&self) -> Vec<Arc<Entry>> {
        lock(&self.live).values().cloned().collect()
    }

    /// The client whose own upstream connection comes from `addr` (as Redis writes it).
    pub fn by_upstream_addr(&self, addr: &[u8]) -> Option<Arc<Entry>> {
        let addr: SocketAddr = std::str::from_utf8(addr).ok()?.parse().ok()?;
        lock(&self.live)
            .values()
            .find(|e| e.upstream_addr() == Some(addr))
            .cloned()
    }

    pub fn get(&self, id: u64) -> Option<Arc<Entry>> {
        lock(&self.live).get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        lock(&self.live).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The last command's name, kept without allocating (a copy of at most two short words per
/// command), resolved to Redis's full name (`client|list`) only when someone asks.
#[derive(Debug, Default, Clone, Copy)]
pub struct LastCommand {
    name: [u8; 24],
    name_len: u8,
    sub: [u8; 24],
    sub_len: u8,
}

impl LastCommand {
    /// Keeps `name` and `sub` (the first argument), truncated to 24 bytes each.
    pub fn set(&mut self, name: &[u8], sub: Option<&[u8]>) {
        let copy = |dst: &mut [u8; 24], src: &[u8]| {
            let n = src.len().min(dst.len());
            if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
            u8::try_from(n).unwrap_or(0)
        };
        self.name_len = copy(&mut self.name, name);
        self.sub_len = sub.map_or(0, |sub| copy(&mut self.sub, sub));
    }

    /// Redis's full name for it (`get`, `client|list`), or `NULL` before any command.
    pub fn fullname(&self) -> String {
        let name = self.name.get(..usize::from(self.name_len)).unwrap_or(&[]);
        if name.is_empty() {
            return "NULL".to_owned();
        }
        let sub = self.sub.get(..usize::from(self.sub_len)).unwrap_or(&[]);
        match commands::lookup(name) {
            Some(spec) if !spec.subcommands.is_empty() => {
                match commands::lookup_subcommand(spec, sub) {
                    Some(s) => s.name.to_owned(),
                    None => spec.name.to_owned(),
                }
            }
            Some(spec) => spec.name.to_owned(),
            None => String::from_utf8_lossy(name).to_ascii_lowercase(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_numbered_listed_in_order_and_leave_when_dropped() {
        let clients = Arc::new(Clients::default());
        let addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        let a = clients.register(addr, None, "default");
        let b = clients.register(addr, None, "app");
        assert_eq!((a.entry.id, b.entry.id), (1, 2));
        assert_eq!(
            clients.all().iter().map(|e| e.id).collect::<Vec<_>>(),
            [1, 2]
        );
        drop(a);
        assert_eq!(clients.len(), 1);
        b.entry.publish(|i| {
            i.name = b"worker".to_vec();
            i.cmd.set(b"CLIENT", Some(b"LIST"));
        });
        let line = b.entry.line(Instant::now(), false);
        assert!(line.starts_with("id=2 addr=127.0.0.1:5000 laddr= fd=-1 name=worker age="));
        assert!(
            line.ends_with("cmd=client|list user=app redir=-1 resp=2"),
            "{line}"
        );
    }
}
