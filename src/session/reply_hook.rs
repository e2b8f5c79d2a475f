//! The reply hook: a place on the one path every Redis reply takes to the client
//! (`reply_path.rs`) where a reply can be replaced before the client sees it, without a second
//! reply scanner. Topology replies (`CLUSTER SLOTS`, `SHARDS`, `NODES`, ... naming redward's
//! listeners instead of the nodes: the upstream's kind says which, `upstream/kind.rs`) and
//! replies redward composes from Redis's (the client's id in HELLO's map) attach a
//! [`Rewrite`] to the request's slot. Error replies are not hooked: the upstream's kind sees
//! each where error replies are seen (`reply_path.rs`), for `-MOVED`/`-ASK` and `-READONLY`.
//!
//! Replies without one stream through as they arrive, however large. A reply with one is
//! held until it is complete (up to [`MAX_HELD`]), then handed to the hook whole.

pub use crate::resp::Rewrite;

/// The most a reply waiting for its hook may hold; a larger one ends the session with
/// [`super::SessionError::ReplyTooLarge`] rather than grow without bound.
pub const MAX_HELD: usize = 64 * 1024 * 1024;
