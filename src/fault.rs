//! Whose fault an error is. Every error type that can end a connection or refuse a request
//! says which side caused it, so logs, metrics and the client's reply are decided by that,
//! not by matching variants in several places.

/// The side an error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: bad input, too slow, over a limit. Its connection closes; nobody else
    /// notices, and the log line is a debug line (or a throttled warning).
    Client,
    /// The Redis behind redward: unreachable, closed, or speaking out of turn. Every client
    /// may notice; logged as an error.
    Upstream,
    /// redward itself: a bug. Logged as an error.
    Internal,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        })
    }
}
