//! The admin endpoint: `/metrics` (Prometheus text), `/healthz` (the process is serving) and
//! `/readyz` (the upstream is reachable and accepts redward's credential; 503 otherwise).
//!
//! A deliberately tiny HTTP/1.1 responder: GET and HEAD, one request per connection, request
//! head capped at 8 KiB and 5 s, at most 32 connections at once. It is meant for a loopback or pod-local address, scraped by
//! Prometheus and probed by the kubelet; it serves nothing secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::metrics::Metrics;
use crate::upstream::Connector;

/// A readiness answer is reused this long, so frequent probes do not hammer Redis.
const READY_CACHE: Duration = Duration::from_secs(1);
const MAX_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more are closed at accept. Probes and scrapes need a
/// handful; without a bound, anyone who can reach the port holds sockets and tasks at will.
const MAX_CONNECTIONS: usize = 32;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub connector: Connector,
    ready: Mutex<Option<(Instant, bool)>>,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, connector: Connector) -> Self {
        Admin {
            metrics,
            connector,
            ready: Mutex::new(None),
        }
    }

    /// Serves until `stop` fires.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "admin endpoint listening");
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(conn) => conn,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                debug!(%peer, "admin endpoint busy; connection closed");
                continue;
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let _permit = permit;
                if tokio::time::timeout(REQUEST_TIMEOUT, me.handle(stream))
                    .await
                    .is_err()
                {
                    debug!(%peer, "admin request timed out");
                }
            });
        }
    }

    async fn handle(&self, mut stream: TcpStream) {
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or(&[])),
            }
            if head.len() > MAX_HEAD {
                let _ = respond(
                    &mut stream,
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    "",
                    true,
                )
                .await;
                return;
            }
        }
        let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let mut parts = line.split(|&b| b == b' ');
        let method = parts.next().unwrap_or(&[]);
        let path = parts.next().unwrap_or(&[]);
        let path = path.split(|&b| b == b'?').next().unwrap_or(&[]);
        if method != b"GET" && method != b"HEAD" {
            let _ = respond(
                &mut stream,
                "405 Method Not Allowed\r\nAllow: GET, HEAD",
                "text/plain",
                "GET only\n",
                true,
            )
            .await;
            return;
        }
        // HEAD: the same status and headers, no body (RFC 9110 9.3.2).
        let body = method == b"GET";
        let _ = match path {
            b"/metrics" => {
                let text = self.metrics.encode();
                respond(
                    &mut stream,
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    &text,
                    body,
                )
                .await
            }
            b"/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n", body).await,
            b"/readyz" => {
                if self.is_ready().await {
                    respond(&mut stream, "200 OK", "text/plain", "ready\n", body).await
                } else {
                    respond(
                        &mut stream,
                        "503 Service Unavailable",
                        "text/plain",
                        "upstream unavailable\n",
                        body,
                    )
                    .await
                }
            }
            _ => {
                respond(
                    &mut stream,
                    "404 Not Found",
                    "text/plain",
                    "not found\n",
                    body,
                )
                .await
            }
        };
    }

    /// Whether a fresh upstream connection can be opened and authenticated.
    async fn is_ready(&self) -> bool {
        let mut cached = self.ready.lock().await;
        if let Some((at, ok)) = *cached {
            if at.elapsed() < READY_CACHE {
                return ok;
            }
        }
        let ok = self.connector.connect().await.is_ok();
        *cached = Some((Instant::now(), ok));
        ok
    }
}

/// Writes a response; `with_body` false (HEAD) sends the same headers, Content-Length
/// included, without the body.
async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// Binds the admin listener (so a bad address fails start-up like any listener).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
