//! Rogue peers for the hostile tests: small listeners that speak just enough RESP to lure
//! redward, and record every byte it sends them, so a test can show that redward's upstream
//! credential never reaches them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// What a fake peer has seen: connections accepted and every byte received.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: usize,
    pub bytes: Vec<u8>,
}

/// Reads one request (an array of bulk strings) from `buf`, if complete: its arguments and
/// its length. Anything else in the buffer is garbage to a fake peer: it is dropped.
fn request(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let rest = buf.get(at..)?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        Some((rest.get(..end)?, at + end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let arg = buf.get(next..next + len)?;
        args.push(arg.to_vec());
        at = next + len + 2;
        if at > buf.len() {
            return None;
        }
    }
    Some((args, at))
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

/// A server that says it is a master to whoever asks (`ROLE`), and `+OK` to everything
/// else (AUTH included), recording all it receives: what a rogue Sentinel or a forged node
/// address sends redward to.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
}

impl FakeServer {
    /// Listens on `ip` (a free port); serves until the test ends.
    pub async fn start(ip: &str) -> FakeServer {
        Self::start_on(&format!("{ip}:0")).await
    }

    /// Listens on exactly `addr` (`ip:port`).
    pub async fn start_on(addr: &str) -> FakeServer {
        let listener = TcpListener::bind(addr).await.expect("fake server bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                record.lock().unwrap().connections += 1;
                tokio::spawn(serve_master(s, Arc::clone(&record)));
            }
        });
        FakeServer { addr, seen }
    }

    /// Whether `secret` ever arrived, and how many connections it had.
    pub fn saw(&self, secret: &str) -> (bool, usize) {
        let seen = self.seen.lock().unwrap();
        let hit = seen
            .bytes
            .windows(secret.len())
            .any(|w| w == secret.as_bytes());
        (hit, seen.connections)
    }
}

async fn serve_master(mut s: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        seen.lock().unwrap().bytes.extend_from_slice(&chunk[..n]);
        while let Some((args, len)) = request(&buf) {
            buf.drain(..len);
            let name = args
                .first()
                .map(|a| a.to_ascii_uppercase())
                .unwrap_or_default();
            let reply = if name == b"ROLE" {
                format!("*3\r\n{}:0\r\n*0\r\n", bulk("master"))
            } else {
                "+OK\r\n".to_owned()
            };
            if s.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// A Sentinel that names `master` as the master of everything it is asked about, and
/// publishes whatever the test sends on [`FakeSentinel::publish`] to its subscribers.
pub struct FakeSentinel {
    pub port: u16,
    events: broadcast::Sender<(String, String)>,
    subscribed: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeSentinel {
    pub async fn start(master: SocketAddr) -> FakeSentinel {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (events, _) = broadcast::channel(1024);
        let tx = events.clone();
        let subscribed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&subscribed);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve_sentinel(
                    s,
                    master,
                    tx.subscribe(),
                    Arc::clone(&count),
                ));
            }
        });
        FakeSentinel {
            port,
            events,
            subscribed,
        }
    }

    /// Waits (bounded) until someone subscribed: redward follows this Sentinel's events.
    pub async fn followed(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.subscribed.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "nobody subscribed");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Publishes `payload` on `channel` to every subscriber (a failover event).
    pub fn publish(&self, channel: &str, payload: &str) {
        let _ = self.events.send((channel.to_owned(), payload.to_owned()));
    }
}

async fn serve_sentinel(
    mut s: TcpStream,
    master: SocketAddr,
    mut events: broadcast::Receiver<(String, String)>,
    count: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut subscribed = false;
    loop {
        tokio::select! {
            n = s.read(&mut chunk) => {
                let Ok(n) = n else { return };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some((args, len)) = request(&buf) {
                    buf.drain(..len);
                    let upper: Vec<Vec<u8>> = args.iter().map(|a| a.to_ascii_uppercase()).collect();
                    let reply = match upper.first().map(Vec::as_slice) {
                        Some(b"SENTINEL") => format!(
                            "*2\r\n{}{}",
                            bulk(&master.ip().to_string()),
                            bulk(&master.port().to_string())
                        ),
                        Some(b"SUBSCRIBE") => {
                            subscribed = true;
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            args.iter()
                                .skip(1)
                                .enumerate()
                                .map(|(i, c)| {
                                    format!(
                                        "*3\r\n{}{}:{}\r\n",
                                        bulk("subscribe"),
                                        bulk(&String::from_utf8_lossy(c)),
                                        i + 1
                                    )
                                })
                                .collect()
                        }
                        Some(b"PING") => "+PONG\r\n".to_owned(),
                        _ => "+OK\r\n".to_owned(),
                    };
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
            ev = events.recv(), if subscribed => {
                let Ok((channel, payload)) = ev else { continue };
                let msg = format!("*3\r\n{}{}{}", bulk("message"), bulk(&channel), bulk(&payload));
                if s.write_all(msg.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}
