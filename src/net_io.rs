//! I/O helpers shared by the per-connection code (`session`) and the shared upstream
//! connections (`mux`), so neither depends on the other for them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;

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
