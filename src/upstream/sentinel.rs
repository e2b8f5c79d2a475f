//! Following the master a set of Sentinels name, as Redis's Sentinel client guidelines say
//! (<https://redis.io/docs/latest/develop/reference/sentinel-clients/>), and no further than
//! a quorum of them agrees, so that one rogue or compromised Sentinel can neither move
//! redward nor collect its credential:
//! - ask every Sentinel `SENTINEL get-master-addr-by-name <master>` at once, and believe an
//!   address only when `upstream.sentinel.quorum` of them (default a majority) name it;
//! - confirm with `ROLE` on the address before sending anything, before the credential where
//!   the server answers ROLE without a login (`Connector::connect`);
//! - subscribe to the failover events on every Sentinel, and take `+switch-master` and
//!   `+promoted-slave` as a reason to ask the quorum again, never as the answer; a
//!   `+failover-state-send-slaveof-noone` holds writes back at most once a minute, for at
//!   most [`HOLD_LIMIT`], whoever sends it; a periodic re-check is the backstop;
//! - treat `-READONLY` from the upstream as a sign to ask again ([`Sentinel::suspect`]: only
//!   a sign, since a client's script can produce the same text).
//!
//! A switch ends an epoch: every connection opened in it (shared ones and clients' own) holds
//! its [`CancellationToken`] and closes when it fires, so nothing more goes to the old master.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{SentinelConfig, UpstreamAddr};
use crate::resp::encode_command;

use super::{UpstreamError, UpstreamStream};

/// How often the Sentinels are asked even without a `+switch-master` message.
const RECHECK: Duration = Duration::from_secs(5);
/// The longest redward holds writes back once a failover began (`+failover-state-send-slaveof-
/// noone`) without hearing which replica was promoted; then it asks the Sentinels again.
const HOLD_LIMIT: Duration = Duration::from_secs(10);
/// The Sentinel events followed: the leader's failover steps and every Sentinel's result.
const CHANNELS: [&str; 3] = [
    "+failover-state-send-slaveof-noone",
    "+promoted-slave",
    "+switch-master",
];
/// Largest reply read from a Sentinel.
const MAX_REPLY: usize = 64 * 1024;
/// A failover event starts a hold at most this often: one Sentinel repeating the event
/// cannot keep every client's writes held back.
const HOLD_REPEAT: Duration = Duration::from_secs(60);
/// After a `+switch-master` or `+promoted-slave`, the quorum is asked this often until it
/// names the new master or [`HOLD_LIMIT`] passes (the other Sentinels learn of a switch
/// within a second or two).
const HINT_RETRY: Duration = Duration::from_millis(250);

/// The master a set of Sentinels name, as redward follows it.
pub struct Sentinel {
    master: String,
    /// Asked in this order; the last one that answered goes first.
    sentinels: Mutex<Vec<(String, u16)>>,
    auth: Option<Vec<u8>>,
    /// `upstream.sentinel.tls`: the Sentinels' TLS port, verified against this name.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    timeout: Duration,
    /// The master confirmed last (`None`: ask before connecting).
    current: ArcSwapOption<UpstreamAddr>,
    /// The master used last, kept through a hold or a suspicion: a new one is a failover.
    last: ArcSwapOption<UpstreamAddr>,
    /// Fires when the master changes: connections opened before close.
    epoch: Mutex<CancellationToken>,
    failovers: AtomicU64,
    /// When a reply last made redward re-ask the Sentinels (ms since the Unix epoch).
    suspected: AtomicU64,
    /// A failover is under way: until this instant (or the promoted replica is known), no
    /// connection is opened, so no write is acknowledged by a master about to be demoted.
    hold: Mutex<Option<std::time::Instant>>,
    /// When the last hold began ([`HOLD_REPEAT`]).
    held_at: Mutex<Option<std::time::Instant>>,
    /// Sentinels that must name the same master.
    quorum: usize,
    /// A re-ask prompted by a Sentinel's message is running: messages meanwhile add nothing.
    hinted: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel")
            .field("master", &self.master)
            .field("current", &self.current())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sentinel {
    /// # Errors
    /// A [`crate::tls::TlsError`] when `upstream.sentinel.tls` cannot be loaded.
    pub fn new(cfg: &SentinelConfig, timeout: Duration) -> Result<Sentinel, crate::tls::TlsError> {
        let tls = match &cfg.tls {
            None => None,
            Some(t) => {
                let config = crate::tls::upstream_client_config(t)?;
                let name = rustls::pki_types::ServerName::try_from(t.server_name.clone()).map_err(
                    |e| {
                        crate::tls::TlsError::Generate(format!(
                            "upstream.sentinel.tls.server_name `{}`: {e}",
                            t.server_name
                        ))
                    },
                )?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
        };
        let auth = cfg.password.as_ref().map(|pw| {
            let mut out = Vec::new();
            let pw = pw.expose().as_bytes();
            match &cfg.username {
                Some(u) => encode_command(&mut out, [&b"AUTH"[..], u.as_bytes(), pw].into_iter()),
                None => encode_command(&mut out, [&b"AUTH"[..], pw].into_iter()),
            }
            out
        });
        Ok(Sentinel {
            master: cfg.master.clone(),
            sentinels: Mutex::new(cfg.addresses.clone()),
            auth,
            tls,
            timeout,
            current: ArcSwapOption::empty(),
            last: ArcSwapOption::empty(),
            epoch: Mutex::new(CancellationToken::new()),
            failovers: AtomicU64::new(0),
            suspected: AtomicU64::new(0),
            hold: Mutex::new(None),
            held_at: Mutex::new(None),
            quorum: cfg.quorum.max(1),
            hinted: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The name the Sentinels monitor.
    pub fn master_name(&self) -> &str {
        &self.master
    }

    /// The master as last confirmed, if any.
    pub fn current(&self) -> Option<UpstreamAddr> {
        self.current.load_full().map(|a| (*a).clone())
    }

    /// Switches seen since start-up.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// The token of the current epoch: take it before connecting; it fires when the master
    /// changes (a connection opened meanwhile is then dropped at once, which is right).
    pub fn epoch(&self) -> CancellationToken {
        lock(&self.epoch).clone()
    }

    /// The master to connect to: the one known, or the Sentinels' answer.
    ///
    /// # Errors
    /// [`UpstreamError::NoMaster`] when no Sentinel names one.
    pub async fn resolve(&self) -> Result<UpstreamAddr, UpstreamError> {
        if let Some(addr) = self.current() {
            return Ok(addr);
        }
        {
            let mut hold = lock(&self.hold);
            match *hold {
                Some(until) if std::time::Instant::now() < until => {
                    return Err(UpstreamError::FailoverInProgress(self.master.clone()));
                }
                Some(_) => *hold = None,
                None => {}
            }
        }
        let began = self.hold_began();
        let addr = self.ask().await?;
        if self.hold_began() != began {
            // A failover began while the Sentinels were asked: their answer predates it.
            return Err(UpstreamError::FailoverInProgress(self.master.clone()));
        }
        self.switch_to(&addr);
        Ok(addr)
    }

    /// When the last hold began: an answer asked for before a hold began must not end it.
    fn hold_began(&self) -> Option<std::time::Instant> {
        *lock(&self.held_at)
    }

    /// A new connection's `ROLE` said it is not the master: forget it and end the epoch, so
    /// every connection asks the Sentinels again. (`ROLE` comes from the server itself.)
    pub fn not_master(&self, why: &str) {
        if self.current.swap(None).is_some() {
            warn!(master = %self.master, why, "upstream is not the master; asking the Sentinels again");
            self.end_epoch();
        }
    }

    /// A reply said `-READONLY`: ask the Sentinels again, in the background, at most once a
    /// second, and switch if they name another master. Not more: a client can make Redis send
    /// that text (`EVAL "return redis.error_reply('READONLY x')" 0`), and must not be able to
    /// make redward drop every upstream connection with it.
    pub fn suspect(self: &Arc<Self>, why: &'static str) {
        let now = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        )
        .unwrap_or(u64::MAX);
        let last = self.suspected.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || self
                .suspected
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let began = me.hold_began();
            if let Ok(addr) = me.ask().await {
                // During a hold there is no current master to compare with: the answer would
                // end the hold with the master being replaced. The hold ends by itself.
                let holding = lock(&me.hold).is_some_and(|until| std::time::Instant::now() < until);
                if !holding && me.hold_began() == began && me.current().as_ref() != Some(&addr) {
                    debug!(master = %me.master, why, "re-asked the Sentinels after a reply");
                    me.switch_to(&addr);
                }
            }
        });
    }

    fn end_epoch(&self) {
        let mut epoch = lock(&self.epoch);
        epoch.cancel();
        *epoch = CancellationToken::new();
    }

    /// The leader Sentinel is promoting a replica: stop using the old master now (writes it
    /// acknowledges from here on are lost when it is demoted), and open no connection until
    /// the promoted replica is known.
    fn hold(&self) {
        let now = std::time::Instant::now();
        {
            let mut held_at = lock(&self.held_at);
            if held_at.is_some_and(|at| now.saturating_duration_since(at) < HOLD_REPEAT) {
                debug!(master = %self.master, "failover event within a minute of the last hold; not holding again");
                return;
            }
            *held_at = Some(now);
        }
        *lock(&self.hold) = Some(now + HOLD_LIMIT);
        if let Some(old) = self.current.swap(None) {
            warn!(master = %self.master, old = %old, "Sentinel failover under way; holding connections until the promoted replica is known");
            self.end_epoch();
        }
    }

    /// Makes `addr` the master; a change from a known master is a failover.
    fn switch_to(&self, addr: &UpstreamAddr) {
        *lock(&self.hold) = None;
        let new = Arc::new(addr.clone());
        let was_current = self.current.swap(Some(Arc::clone(&new)));
        let last = self.last.swap(Some(new));
        match last.as_deref() {
            Some(old) if old == addr => {}
            Some(old) => {
                self.failovers.fetch_add(1, Ordering::Relaxed);
                info!(master = %self.master, from = %old, to = %addr, "Sentinel switched the master; re-pointing every upstream connection");
                if was_current.is_some() {
                    self.end_epoch();
                }
            }
            None => info!(master = %self.master, at = %addr, "master found through Sentinel"),
        }
    }

    /// Asks every Sentinel at once for the master's address, and returns the one a quorum
    /// names. Sentinels that do not answer, or name another address, count against it: with
    /// no quorum there is no master (clients get the retryable error), never a guess.
    async fn ask(&self) -> Result<UpstreamAddr, UpstreamError> {
        let sentinels = lock(&self.sentinels).clone();
        let asks = sentinels.iter().map(|(host, port)| {
            Box::pin(async move {
                match tokio::time::timeout(self.timeout, self.ask_one(host, *port)).await {
                    Ok(Ok(addr)) => addr,
                    Ok(Err(e)) => {
                        debug!(sentinel = %format!("{host}:{port}"), error = %e, "Sentinel unreachable");
                        None
                    }
                    Err(_) => {
                        debug!(sentinel = %format!("{host}:{port}"), "Sentinel timed out");
                        None
                    }
                }
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>
        });
        let answers = join_all(asks.collect()).await;
        match agreed(&answers, self.quorum) {
            Some(addr) => Ok(addr),
            None => {
                if answers.iter().flatten().next().is_some() {
                    warn!(master = %self.master, quorum = self.quorum, answers = ?answers, "the Sentinels do not agree on the master; no quorum, no master");
                }
                Err(UpstreamError::NoMaster(self.master.clone()))
            }
        }
    }

    /// A Sentinel said the master changed (`+switch-master`, `+promoted-slave`): ask the
    /// quorum, now and every [`HINT_RETRY`] until it names a master other than the one in use
    /// or [`HOLD_LIMIT`] passes, and switch only to what the quorum names. One re-ask runs at
    /// a time, so a flood of messages costs no more than one.
    async fn hinted(&self) {
        if self.hinted.swap(true, Ordering::AcqRel) {
            return;
        }
        let until = tokio::time::Instant::now() + HOLD_LIMIT;
        loop {
            if let Ok(addr) = self.ask().await {
                // The master in use (or, during a hold, the one held back from). While the
                // quorum still names it, the other Sentinels have not caught up: a hold stays.
                let in_use = self
                    .current()
                    .or_else(|| self.last.load_full().map(|a| (*a).clone()));
                if in_use.as_ref() != Some(&addr) {
                    self.switch_to(&addr);
                    break;
                }
            }
            if tokio::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(HINT_RETRY).await;
        }
        self.hinted.store(false, Ordering::Release);
    }

    async fn open(&self, host: &str, port: u16) -> std::io::Result<(UpstreamStream, BytesMut)> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let mut s = match &self.tls {
            None => UpstreamStream::Tcp(tcp),
            Some((connector, name)) => {
                UpstreamStream::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
            }
        };
        let mut buf = BytesMut::with_capacity(512);
        if let Some(auth) = &self.auth {
            s.write_all(auth).await?;
            match read_frame(&mut s, &mut buf).await? {
                OwnedFrame::SimpleString(_) => {}
                other => return Err(std::io::Error::other(format!("AUTH refused: {other:?}"))),
            }
        }
        Ok((s, buf))
    }

    async fn ask_one(&self, host: &str, port: u16) -> std::io::Result<Option<UpstreamAddr>> {
        let (mut s, mut buf) = self.open(host, port).await?;
        let mut req = Vec::new();
        encode_command(
            &mut req,
            [
                &b"SENTINEL"[..],
                b"get-master-addr-by-name",
                self.master.as_bytes(),
            ]
            .into_iter(),
        );
        s.write_all(&req).await?;
        Ok(match read_frame(&mut s, &mut buf).await? {
            OwnedFrame::Array(parts) => match (parts.first(), parts.get(1)) {
                (Some(OwnedFrame::BulkString(h)), Some(OwnedFrame::BulkString(p))) => {
                    let host = String::from_utf8_lossy(h).into_owned();
                    std::str::from_utf8(p)
                        .ok()
                        .and_then(|p| p.parse().ok())
                        .map(|port| UpstreamAddr::Tcp { host, port })
                }
                _ => None,
            },
            _ => None,
        })
    }

    /// Follows the Sentinels until `stop`: the failover events of every Sentinel (whichever
    /// leads a failover publishes its steps only on itself), and every `RECHECK` the
    /// Sentinels' answer, compared with the master in use.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let sentinels = lock(&self.sentinels).clone();
        for (host, port) in sentinels {
            let (me, stop) = (Arc::clone(&self), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = me.follow(&host, port) => {
                            if let Err(e) = r {
                                debug!(sentinel = %format!("{host}:{port}"), error = %e, "lost the Sentinel; reconnecting");
                            }
                        }
                        () = stop.cancelled() => return,
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            });
        }
        let mut tick = tokio::time::interval(RECHECK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            // The backstop: a missed message, or a Sentinel that changed its mind.
            let holding = lock(&self.hold).is_some_and(|until| std::time::Instant::now() < until);
            if !holding {
                let began = self.hold_began();
                if let Ok(addr) = self.ask().await {
                    // A hold that began while the Sentinels were asked stands: their answer
                    // predates the failover.
                    if self.hold_began() == began {
                        self.switch_to(&addr);
                    }
                }
            }
        }
    }

    /// One Sentinel's failover events.
    async fn follow(&self, host: &str, port: u16) -> std::io::Result<()> {
        let (mut s, mut buf) = tokio::time::timeout(self.timeout, self.open(host, port))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let mut req = Vec::new();
        encode_command(
            &mut req,
            std::iter::once(&b"SUBSCRIBE"[..])
                .chain(CHANNELS.iter().map(|c| c.as_bytes()))
                .collect::<Vec<_>>()
                .into_iter(),
        );
        s.write_all(&req).await?;
        loop {
            let frame = read_frame(&mut s, &mut buf).await?;
            match self.event(&frame) {
                Some(Event::Promoting) => self.hold(),
                // What one Sentinel says is a reason to ask the quorum, not the answer.
                Some(Event::Master(addr)) => {
                    debug!(sentinel = %format!("{host}:{port}"), named = %addr, "a Sentinel names a new master; asking the quorum");
                    self.hinted().await;
                }
                None => {}
            }
        }
    }

    /// What a Sentinel message means for our master.
    fn event(&self, frame: &OwnedFrame) -> Option<Event> {
        let OwnedFrame::Array(parts) = frame else {
            return None;
        };
        let (Some(OwnedFrame::BulkString(channel)), Some(OwnedFrame::BulkString(payload))) =
            (parts.get(1), parts.get(2))
        else {
            return None;
        };
        let text = String::from_utf8_lossy(payload);
        let words: Vec<&str> = text.split(' ').collect();
        match channel.as_slice() {
            b"+switch-master" => self.switch_message(&words).map(Event::Master),
            // `slave <ip:port> <ip> <port> @ <master> <master-ip> <master-port>`
            b"+promoted-slave" | b"+failover-state-send-slaveof-noone" => {
                let [_, _, host, port, _, name, ..] = words.as_slice() else {
                    return None;
                };
                if *name != self.master {
                    return None;
                }
                if channel.as_slice() == b"+promoted-slave" {
                    Some(Event::Master(UpstreamAddr::Tcp {
                        host: (*host).to_owned(),
                        port: port.parse().ok()?,
                    }))
                } else {
                    Some(Event::Promoting)
                }
            }
            _ => None,
        }
    }

    /// `+switch-master <master> <old-ip> <old-port> <new-ip> <new-port>`, for our master.
    fn switch_message(&self, words: &[&str]) -> Option<UpstreamAddr> {
        match words {
            [name, _, _, host, port] if *name == self.master => Some(UpstreamAddr::Tcp {
                host: (*host).to_owned(),
                port: port.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// A Sentinel event about our master.
enum Event {
    /// The leader is about to promote a replica.
    Promoting,
    /// This is the master now.
    Master(UpstreamAddr),
}

/// The address at least `quorum` of the `answers` name, if any (the most named, should a
/// small quorum let two through).
fn agreed(answers: &[Option<UpstreamAddr>], quorum: usize) -> Option<UpstreamAddr> {
    let mut tally: Vec<(&UpstreamAddr, usize)> = Vec::new();
    for a in answers.iter().flatten() {
        match tally.iter_mut().find(|(t, _)| *t == a) {
            Some((_, n)) => *n += 1,
            None => tally.push((a, 1)),
        }
    }
    tally
        .into_iter()
        .filter(|(_, n)| *n >= quorum)
        .max_by_key(|(_, n)| *n)
        .map(|(a, _)| a.clone())
}

/// Runs the futures together and returns their outputs in order (the Sentinels are asked
/// at once: one that does not answer costs its timeout once, not once per Sentinel).
async fn join_all<'a, T>(
    mut futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>>,
) -> Vec<T> {
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Reads one RESP2 frame (at most [`MAX_REPLY`]).
async fn read_frame(s: &mut UpstreamStream, buf: &mut BytesMut) -> std::io::Result<OwnedFrame> {
    crate::net_io::read_frame(s, buf, MAX_REPLY)
        .await
        .map_err(|e| match e {
            crate::net_io::FrameError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        })
}
