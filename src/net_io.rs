//! I/O helpers shared by the per-connection code (`session`) and the shared upstream
//! connections (`mux`), so neither depends on the other for them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// Writes as much of `out` as the socket takes, then flushes once it is empty (TLS holds
/// records until flushed; `needs_flush` remembers that across wake-ups).
pub fn poll_write_out<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    w: &mut W,
    out: &mut BytesMut,
    needs_flush: &mut bool,
) -> Poll<std::io::Result<()>> {
    let mut progressed = false;
    while !out.is_empty() {
        match Pin::new(&mut *w).poll_write(cx, out) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                out.advance(n);
                *needs_flush = true;
                progressed = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending if progressed => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    }
    *needs_flush = true;
    match Pin::new(&mut *w).poll_flush(cx) {
        Poll::Ready(Ok(())) => {
            *needs_flush = false;
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending if progressed => Poll::Ready(Ok(())),
        Poll::Pending => Poll::Pending,
    }
}

/// Why [`read_frame`] could not return a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("reply: {0}")]
    Protocol(String),
    #[error("reply larger than {0} bytes")]
    TooLarge(usize),
}

/// Reads one complete RESP2 frame of at most `max` bytes from a connection redward opened for
/// its own requests (learning the server, asking Sentinels), leaving what follows in `buf`.
///
/// # Errors
/// A [`FrameError`].
pub async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<OwnedFrame, FrameError> {
    loop {
        match redis_protocol::resp2::decode::decode(buf) {
            Ok(Some((frame, used))) => {
                let _ = buf.split_to(used);
                return Ok(frame);
            }
            Ok(None) => {}
            Err(e) => return Err(FrameError::Protocol(e.to_string())),
        }
        if buf.len() > max {
            return Err(FrameError::TooLarge(max));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(FrameError::Closed);
        }
    }
}
