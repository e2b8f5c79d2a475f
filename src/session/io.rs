//! The session's sockets: what is read from them ([`Inbound`]), one future polling the client
//! and the upstream in the order that keeps buffers bounded, and the replication handover (a
//! plain byte copy after SYNC/PSYNC).

use super::state::Outbox;
use super::*;

/// Replication through redward (`SYNC`/`PSYNC`, for `redis-cli --rdb`, `--replica` and real
/// replicas): Redis answers with an RDB payload that is not a RESP reply (`$<len>` without a
/// trailing CRLF, or the diskless `$EOF:<mark>` form, `replicationSetupSlaveForFullResync`
/// and `rdbSaveToSlavesSockets` in replication.c), and then streams commands, so the
/// connection is handed over to a plain byte copy in both directions, as stunnel would do.
/// What was owed first goes first: the replies before SYNC to the client, SYNC and anything
/// the client sent after it to Redis. It ends when either side closes or redward shuts down.
pub(super) async fn replicate<S>(
    mut client: S,
    mut upstream: UpstreamStream,
    to_upstream: &[u8],
    after: &[u8],
    to_client: &[u8],
    shutdown: &CancellationToken,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    debug!("replication stream: copying bytes both ways");
    client
        .write_all(to_client)
        .await
        .map_err(SessionError::ClientIo)?;
    client.flush().await.map_err(SessionError::ClientIo)?;
    upstream
        .write_all(to_upstream)
        .await
        .map_err(SessionError::UpstreamIo)?;
    upstream
        .write_all(after)
        .await
        .map_err(SessionError::UpstreamIo)?;
    upstream.flush().await.map_err(SessionError::UpstreamIo)?;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok(_) => Ok(()),
            // Either side may go away; which one is not worth telling apart here.
            Err(e) => Err(SessionError::Replication(e)),
        },
        () = shutdown.cancelled() => Ok(()),
    }
}

/// What was read and not yet taken: the client's requests and Redis's replies, with the
/// parser and scanner that find their boundaries across reads.
pub(super) struct Inbound {
    pub(super) parser: RequestParser,
    pub(super) cin: BytesMut,
    /// Client reads start small (most connections send short commands, and idle ones should
    /// cost little) and grow to `READ_CHUNK` once a read fills what was offered.
    cin_chunk: usize,
    pub(super) scanner: ReplyScanner,
    pub(super) uin: BytesMut,
}

impl Inbound {
    pub(super) fn new() -> Self {
        Inbound {
            parser: RequestParser::new(),
            cin: BytesMut::with_capacity(FIRST_READ_CHUNK),
            cin_chunk: FIRST_READ_CHUNK,
            scanner: ReplyScanner::new(),
            uin: BytesMut::new(),
        }
    }

    /// The client sent `n` bytes.
    pub(super) fn client_read(&mut self, n: usize) {
        if n >= self.cin_chunk {
            self.cin_chunk = READ_CHUNK;
        }
    }

    /// Room for the reads the session wants. A shared connection's replies arrive in a
    /// buffer of their own (swapped in whole), so none is reserved for them.
    pub(super) fn reserve(&mut self, want: Want, conn: &Conn) {
        if want.read_client {
            self.cin.reserve(self.cin_chunk);
        }
        if want.read_upstream && matches!(conn, Conn::Dedicated(_)) {
            self.uin.reserve(READ_CHUNK);
        }
    }

    /// Gives back memory a burst left behind, so idle connections stay small.
    pub(super) fn shrink_if_idle(&mut self, nothing_in_flight: bool) {
        if nothing_in_flight && self.cin.is_empty() && self.uin.is_empty() {
            for buf in [&mut self.cin, &mut self.uin] {
                if buf.capacity() > IDLE_BUFFER_KEEP {
                    *buf = BytesMut::new();
                }
            }
        }
    }

    /// Bytes held, for the memory bound.
    pub(super) fn capacity(&self) -> usize {
        self.cin.capacity() + self.uin.capacity()
    }
}

/// Which directions the session wants to make progress in.
#[derive(Clone, Copy, Debug)]
pub(super) struct Want {
    pub(super) write_client: bool,
    pub(super) write_upstream: bool,
    pub(super) read_client: bool,
    pub(super) read_upstream: bool,
}

#[derive(Debug)]
pub(super) enum IoEvent {
    ClientWrote(std::io::Result<()>),
    UpstreamWrote(std::io::Result<()>),
    ClientRead(std::io::Result<usize>),
    UpstreamRead(std::io::Result<usize>),
    /// The shared connection could not be opened: this many requests were never sent.
    SharedUnavailable(u32),
    /// Too many unread replies held for this client on the shared connection.
    SharedOverflow,
}

/// This client's way to Redis.
pub(super) enum Conn {
    /// Not connected (no shared connections configured, or not needed yet).
    None,
    /// A shared connection (`mux.rs`), until a request needs its own.
    Shared(crate::mux::Handle),
    /// The client's own connection.
    Dedicated(UpstreamStream),
}

/// [`Conn`] without the connection, for dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnKind {
    None,
    Shared,
    Dedicated,
}

impl Conn {
    pub(super) fn kind(&self) -> ConnKind {
        match self {
            Conn::None => ConnKind::None,
            Conn::Shared(_) => ConnKind::Shared,
            Conn::Dedicated(_) => ConnKind::Dedicated,
        }
    }
}

/// Polls both sockets in one future (one task, no locks, no split streams): writes first, so
/// replies drain before more requests are taken in, then reads. Returns the first event;
/// every poll is cancel-safe because buffers are only changed by completed operations.
pub(super) fn poll_io<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    client: &mut S,
    conn: &mut Conn,
    out: &mut Outbox,
    inb: &mut Inbound,
    want: Want,
) -> Poll<IoEvent> {
    let Outbox {
        cout,
        uout,
        shared_unsent,
        client_flush,
        ..
    } = out;
    let (cin, uin) = (&mut inb.cin, &mut inb.uin);
    if want.write_client {
        if let Poll::Ready(r) = poll_write_out(cx, client, cout, client_flush) {
            return Poll::Ready(IoEvent::ClientWrote(r));
        }
    }
    if want.write_upstream {
        match &mut *conn {
            Conn::Dedicated(up) => {
                let mut flush = false;
                if let Poll::Ready(r) = poll_write_out(cx, up, uout, &mut flush) {
                    return Poll::Ready(IoEvent::UpstreamWrote(r));
                }
            }
            Conn::Shared(handle) => {
                if handle.poll_send(cx, uout, *shared_unsent).is_ready() {
                    *shared_unsent = 0;
                    return Poll::Ready(IoEvent::UpstreamWrote(Ok(())));
                }
            }
            Conn::None => {}
        }
    }
    if want.read_client {
        if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut *client), cx, cin) {
            return Poll::Ready(IoEvent::ClientRead(r));
        }
    }
    if want.read_upstream {
        match conn {
            Conn::Dedicated(up) => {
                if let Poll::Ready(r) = poll_read_buf(Pin::new(up), cx, uin) {
                    return Poll::Ready(IoEvent::UpstreamRead(r));
                }
            }
            Conn::Shared(handle) => {
                if let Poll::Ready(taken) = handle.poll_take(cx, uin) {
                    return Poll::Ready(match taken {
                        Taken::Data(n) => IoEvent::UpstreamRead(Ok(n)),
                        // Handled as the end of a connection of its own would be.
                        Taken::Lost => IoEvent::UpstreamRead(Ok(0)),
                        Taken::Unavailable(n) => IoEvent::SharedUnavailable(n),
                        Taken::Overflow => IoEvent::SharedOverflow,
                    });
                }
            }
            Conn::None => {}
        }
    }
    Poll::Pending
}
