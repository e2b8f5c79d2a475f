//! RESP on the wire, without I/O: framing client requests ([`RequestParser`]), finding reply
//! boundaries in what Redis sends back ([`ReplyScanner`]), and the reply texts redward writes
//! itself ([`replies`]); [`item`] reads a whole reply into a tree, for the few redward
//! rewrites field by field; [`Rewrite`] is how a whole reply is replaced.
//!
//! This is the hot path, so it is ours rather than `redis-protocol`'s (which re-parses from the
//! start after every partial read and has no inline commands or limits); `redis-protocol` is the
//! oracle it is tested against (`tests/resp_oracle.rs`). Nothing here allocates per command once
//! warm, and nothing panics on any input (fuzzed).

pub mod item;
pub mod replies;
pub mod reply;
pub mod request;
pub mod rewrite;

pub use reply::{FrameInfo, PubSub, ReplyError, ReplyScanner, Step};
pub use request::{encode_command, Frame, Limits, ProtocolError, Request, RequestParser};
pub use rewrite::Rewrite;
