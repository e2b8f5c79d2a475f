//! A reply replaced before the client sees it: the one shape every rewrite of a whole Redis
//! reply takes, whoever asks for it (a cluster's topology replies, `announce.rs`; the
//! replies redward composes, `session/client_cmd.rs`). The session calls it where every
//! reply passes (`session/reply_hook.rs`).

use std::fmt;

use bytes::BytesMut;

use super::FrameInfo;

/// Replaces one complete reply from Redis. Called once per reply the slot is owed, in order.
pub trait Rewrite: Send + Sync + fmt::Debug {
    /// `reply` is the reply exactly as Redis sent it, `info` what the scanner learned of it;
    /// what the client gets is appended to `out` (nothing, to drop it).
    fn rewrite(&self, reply: &[u8], info: &FrameInfo, out: &mut BytesMut);
}
