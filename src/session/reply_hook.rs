//! The reply hook: a place on the one path every Redis reply takes to the client
//! (`reply_path.rs`) where a reply can be replaced before the client sees it, without a second
//! reply scanner. Topology replies (`CLUSTER SLOTS`, `SHARDS`, `NODES`, ... naming redward's
//! listeners instead of the nodes) and replies redward composes from Redis's (the client's
//! id in HELLO's map) attach a [`Rewrite`] to the request's slot. `-MOVED`/`-ASK` errors are
//! not hooked: they are rewritten inline where error replies are seen (`reply_path.rs`).
//!
//! Replies without one stream through as they arrive, however large. A reply with one is
//! held until it is complete (up to [`MAX_HELD`]), then handed to the hook whole.

use std::fmt;

use bytes::BytesMut;

use crate::resp::FrameInfo;

/// The most a reply waiting for its hook may hold; a larger one ends the session with
/// [`super::SessionError::ReplyTooLarge`] rather than grow without bound.
pub const MAX_HELD: usize = 64 * 1024 * 1024;

/// Replaces one complete reply from Redis. Called once per reply the slot is owed, in order.
pub trait Rewrite: Send + Sync + fmt::Debug {
    /// `reply` is the reply exactly as Redis sent it, `info` what the scanner learned of it;
    /// what the client gets is appended to `out` (nothing, to drop it).
    fn rewrite(&self, reply: &[u8], info: &FrameInfo, out: &mut BytesMut);
}

/// A `CLUSTER SLOTS`/`SHARDS`/`NODES`/`REPLICAS` reply, naming redward's endpoints for the
/// nodes (`announce.rs`).
#[derive(Debug)]
pub struct ClusterReply {
    pub kind: crate::announce::Reply,
    pub cluster: std::sync::Arc<dyn crate::announce::Announce>,
}

impl Rewrite for ClusterReply {
    fn rewrite(&self, reply: &[u8], _info: &FrameInfo, out: &mut BytesMut) {
        out.extend_from_slice(&crate::announce::reply(self.kind, reply, &*self.cluster));
    }
}

/// EXEC's reply to a transaction that queued such `CLUSTER` requests: those elements are
/// rewritten (`announce::exec_reply`).
#[derive(Debug)]
pub struct ExecReply {
    pub queued: Vec<(usize, crate::announce::Reply)>,
    pub cluster: std::sync::Arc<dyn crate::announce::Announce>,
}

impl Rewrite for ExecReply {
    fn rewrite(&self, reply: &[u8], _info: &FrameInfo, out: &mut BytesMut) {
        out.extend_from_slice(&crate::announce::exec_reply(
            &self.queued,
            reply,
            &*self.cluster,
        ));
    }
}
