//! The PROXY protocol (v1 text, v2 binary; parsed by the `ppp` crate) for listeners behind a
//! load balancer: the header names the real client, which is then used for allow-lists,
//! limits, logs, audit and ACL LOG.
//!
//! The header is read with `peek` and then consumed exactly, so not a byte of the TLS
//! handshake after it is lost. A listener that expects the header refuses a connection that
//! does not start with one: accepting it would let a client that bypasses the load balancer
//! pass as the balancer itself.

use std::net::{IpAddr, SocketAddr};

use ppp::v1;
use ppp::v2;
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Largest header accepted (v1 is at most 107 bytes; v2 with TLVs can be larger).
const MAX_HEADER: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection closed before a PROXY header")]
    Closed,
    #[error("not a valid PROXY protocol header")]
    Invalid,
    #[error("PROXY header too large")]
    TooLarge,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads and consumes the PROXY header; returns the client address it names (the socket's
/// peer for `LOCAL`/`UNKNOWN` headers, which load balancers send for their own health checks).
///
/// # Errors
/// A [`ProxyHeaderError`]; the caller closes the connection. The caller bounds the wait.
pub async fn read(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyHeaderError> {
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let data = buf.get(..n).unwrap_or(&[]);
        let parsed = HeaderResult::parse(data);
        if parsed.is_incomplete() {
            if n >= MAX_HEADER {
                return Err(ProxyHeaderError::TooLarge);
            }
            // More bytes are on their way: wait for the socket before peeking again.
            stream.readable().await?;
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h.addresses)),
            _ => return Err(ProxyHeaderError::Invalid),
        };
        let mut consumed = vec![0u8; len];
        stream.read_exact(&mut consumed).await?;
        return Ok(source.unwrap_or(peer));
    }
}

fn v1_source(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(ip) => Some(SocketAddr::new(
            IpAddr::V4(ip.source_address),
            ip.source_port,
        )),
        v1::Addresses::Tcp6(ip) => Some(SocketAddr::new(
            IpAddr::V6(ip.source_address),
            ip.source_port,
        )),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(a: &v2::Addresses) -> Option<SocketAddr> {
    match a {
        v2::Addresses::IPv4(ip) => Some(SocketAddr::new(
            IpAddr::V4(ip.source_address),
            ip.source_port,
        )),
        v2::Addresses::IPv6(ip) => Some(SocketAddr::new(
            IpAddr::V6(ip.source_address),
            ip.source_port,
        )),
        _ => None,
    }
}
