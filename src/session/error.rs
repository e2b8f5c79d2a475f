//! Why a session ended, whose fault that was, and what the client is told: one place maps
//! each ending to the log level and to the replies still owed.

use crate::fault::Side;
use crate::resp::replies;

/// Why a session ended abnormally (the peer hanging up is not an error).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client I/O: {0}")]
    ClientIo(std::io::Error),
    #[error("upstream I/O: {0}")]
    UpstreamIo(std::io::Error),
    #[error("upstream closed the connection")]
    UpstreamClosed,
    #[error("upstream protocol: {0}")]
    UpstreamProtocol(#[from] crate::resp::ReplyError),
    #[error("upstream sent a reply no request was waiting for")]
    UnexpectedReply,
    #[error("upstream rejected redward's AUTH after RESET")]
    UpstreamReauth,
    /// The Sentinel-named master, or the cluster node's address, changed under this client's
    /// own connection (`Target::change` says which).
    #[error("the upstream's master or node changed")]
    MasterChanged,
    #[error("a reply to be rewritten is over the size redward holds")]
    ReplyTooLarge,
    /// A replication stream (after SYNC/PSYNC) ended with an error on either side.
    #[error("replication stream: {0}")]
    Replication(std::io::Error),
    #[error("client did not authenticate in time")]
    AuthTimeout,
    #[error("client stopped reading replies")]
    WriteTimeout,
    #[error("subscriber output buffer over its limit")]
    OutputLimit,
    #[error("idle timeout")]
    IdleTimeout,
    #[error("evicted: all clients together over limits.max_client_memory")]
    ClientMemory,
    #[error("killed by CLIENT KILL")]
    Killed,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl SessionError {
    /// Whose fault the ending is: the client's (its own connection closes, nobody else
    /// notices), the upstream's (it affects every client: logged as an error), or redward's.
    pub fn side(&self) -> Side {
        match self {
            SessionError::ClientIo(_)
            | SessionError::AuthTimeout
            | SessionError::WriteTimeout
            | SessionError::OutputLimit
            | SessionError::IdleTimeout
            | SessionError::ClientMemory
            | SessionError::Killed
            | SessionError::Replication(_) => Side::Client,
            SessionError::UpstreamIo(_)
            | SessionError::UpstreamClosed
            | SessionError::UpstreamProtocol(_)
            | SessionError::UnexpectedReply
            | SessionError::UpstreamReauth
            | SessionError::MasterChanged
            | SessionError::ReplyTooLarge => Side::Upstream,
            SessionError::Internal(_) => Side::Internal,
        }
    }

    /// The reply each forwarded request still waiting gets when the session ends this way,
    /// if any: Redis's replies can no longer come (`-ERR upstream connection lost`), or the
    /// client is going away for its own fault and gets nothing more.
    pub fn owed_reply(&self) -> Option<&'static [u8]> {
        match self.side() {
            Side::Upstream | Side::Internal => Some(replies::UPSTREAM_LOST),
            Side::Client => None,
        }
    }

    /// Whether what is already owed is still written before the close. An evicted client is
    /// not reading, and what it holds must go now, not after a goodbye it would not read.
    pub fn says_goodbye(&self) -> bool {
        !matches!(self, SessionError::ClientMemory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_names_its_side_and_only_upstream_failures_owe_an_error_reply() {
        let io = || std::io::Error::other("x");
        let cases = [
            (SessionError::ClientIo(io()), Side::Client),
            (SessionError::AuthTimeout, Side::Client),
            (SessionError::ClientMemory, Side::Client),
            (SessionError::UpstreamIo(io()), Side::Upstream),
            (SessionError::UpstreamClosed, Side::Upstream),
            (SessionError::UnexpectedReply, Side::Upstream),
            (SessionError::Internal("bug"), Side::Internal),
        ];
        for (e, side) in cases {
            assert_eq!(e.side(), side, "{e}");
            assert_eq!(e.owed_reply().is_some(), side != Side::Client, "{e}");
        }
        assert!(!SessionError::ClientMemory.says_goodbye());
        assert!(SessionError::IdleTimeout.says_goodbye());
    }
}
