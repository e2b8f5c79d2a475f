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
/// Bytes are peeked, and every peeked byte that is still part of an unfinished header is
/// consumed at once: the next peek then waits in the kernel for new bytes. (Peeking again at
/// the same unfinished bytes would find the socket still readable and spin a core for as long
/// as a client cares to send half a header.) Once the header is complete exactly its bytes
/// are consumed, so not a byte of the TLS handshake after it is lost.
///
/// # Errors
/// A [`ProxyHeaderError`]; the caller closes the connection. The caller bounds the wait.
pub async fn read(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyHeaderError> {
    // The header bytes consumed so far (all of them belong to an unfinished header).
    let mut head: Vec<u8> = Vec::with_capacity(128);
    let mut peeked = vec![0u8; MAX_HEADER];
    loop {
        let room = MAX_HEADER - head.len();
        let n = stream
            .peek(peeked.get_mut(..room).unwrap_or(&mut []))
            .await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let start = head.len();
        head.extend_from_slice(peeked.get(..n).unwrap_or(&[]));
        let parsed = HeaderResult::parse(&head);
        if parsed.is_incomplete() {
            if head.len() >= MAX_HEADER {
                return Err(ProxyHeaderError::TooLarge);
            }
            // Every byte seen is header: take them off the socket so the next peek blocks.
            let mut sink = vec![0u8; n];
            stream.read_exact(&mut sink).await?;
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h.addresses)),
            _ => return Err(ProxyHeaderError::Invalid),
        };
        // `len > start` always (the header was incomplete without the new bytes).
        let mut rest = vec![0u8; len.saturating_sub(start)];
        stream.read_exact(&mut rest).await?;
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
