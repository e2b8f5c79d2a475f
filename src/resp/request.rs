//! Framing of client requests, byte for byte as Redis 7.0 frames them
//! (`networking.c`: `processInputBuffer`, `processMultibulkBuffer`, `processInlineBuffer`).
//!
//! The parser is resumable: it remembers how far into a partial frame it got, so a 64 MiB value
//! arriving in 16 KiB reads is scanned once, not re-parsed from the start after every read. It
//! never copies argument bytes of a multibulk request: a [`Request`] is a list of ranges into the
//! caller's buffer. Limits are checked as soon as a length header arrives, as Redis does, so an
//! oversized or unauthenticated-too-large frame is refused before its body is buffered.

use std::ops::Range;

use memchr::{memchr, memchr2};

/// Redis's `PROTO_INLINE_MAX_SIZE`: the longest line (inline request, or a `*`/`$` header still
/// waiting for its `\r`) Redis buffers before calling it a protocol error.
pub const PROTO_INLINE_MAX_SIZE: usize = 64 * 1024;

/// Redis's `proto-max-bulk-len` default (512 MiB).
pub const DEFAULT_MAX_BULK_LEN: i64 = 512 * 1024 * 1024;

/// Redis's pre-authentication caps (`processMultibulkBuffer`, when `authRequired()`): a client
/// that has not logged in may send at most 10 arguments of at most 16 KiB each.
pub const UNAUTHENTICATED_MAX_MULTIBULK: i64 = 10;
pub const UNAUTHENTICATED_MAX_BULK: i64 = 16384;

/// Limits in force while framing the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted `$<n>` (Redis: `proto-max-bulk-len`).
    pub max_bulk: i64,
    /// Longest inline request or length line (Redis: `PROTO_INLINE_MAX_SIZE`).
    pub max_inline: usize,
    /// Whether authentication is still required; Redis then applies the much smaller
    /// `UNAUTHENTICATED_*` caps, with their own error texts.
    pub authenticated: bool,
}

impl Limits {
    pub fn new(max_bulk: i64, max_inline: usize, authenticated: bool) -> Limits {
        Limits {
            max_bulk,
            max_inline,
            authenticated,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(DEFAULT_MAX_BULK_LEN, PROTO_INLINE_MAX_SIZE, true)
    }
}

/// A request that cannot be framed. Redis answers `-ERR Protocol error: <text>` and closes the
/// connection once earlier replies are written; so does redward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("too big inline request")]
    TooBigInline,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("too big mbulk count string")]
    TooBigMbulkCount,
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    #[error("too big bulk count string")]
    TooBigBulkCount,
    /// Redis prints the offending byte with `%c`.
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("unauthenticated bulk length")]
    UnauthenticatedBulkLength,
}

impl ProtocolError {
    /// The full error line Redis writes before closing the connection.
    pub fn reply(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"-ERR Protocol error: ");
        match self {
            // `%c` of a NUL byte ends the C string early: Redis writes nothing for it.
            ProtocolError::ExpectedDollar(0) => out.extend_from_slice(b"expected '$', got '"),
            ProtocolError::ExpectedDollar(b) => {
                out.extend_from_slice(b"expected '$', got '");
                out.push(*b);
                out.push(b'\'');
            }
            other => out.extend_from_slice(other.to_string().as_bytes()),
        }
        // addReplyErrorLength does not sanitise `%c`; a '\r' or '\n' there would break the
        // stream, and Redis's addReplyErrorFormat maps them to spaces.
        for b in out.iter_mut().skip(1) {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// One framed request: `len` bytes at the front of the buffer that was parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A command (multibulk or inline). Its arguments are read with [`RequestParser::request`].
    Command { len: usize, inline: bool },
    /// `*0`, `*-1` or a blank inline line: Redis consumes it and replies nothing.
    Empty { len: usize },
}

impl Frame {
    pub fn len(&self) -> usize {
        match self {
            Frame::Command { len, .. } | Frame::Empty { len } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Resumable request framer. Feed it the same buffer (with more bytes appended) until it
/// returns a frame; then read the request, drop `frame.len()` bytes from the buffer's front and
/// call again.
#[derive(Debug, Default)]
pub struct RequestParser {
    state: State,
    /// Argument ranges of the frame being parsed: into the caller's buffer for a multibulk
    /// request, into `inline` for an inline one. Reused across requests (no per-command
    /// allocation once warm).
    args: Vec<Range<usize>>,
    /// Unescaped arguments of an inline request, concatenated.
    inline: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy)]
enum State {
    #[default]
    Start,
    /// Inside a multibulk request: `pos` is where parsing resumes, `remaining` arguments are
    /// still due, and `bulk` is the length of the argument whose header was read, if any.
    Multibulk {
        pos: usize,
        remaining: i64,
        bulk: Option<usize>,
    },
}

/// A parsed request: its arguments, borrowed from the read buffer or the parser.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    data: &'a [u8],
    args: &'a [Range<usize>],
    inline: bool,
}

impl<'a> Request<'a> {
    pub fn argc(&self) -> usize {
        self.args.len()
    }

    /// Argument `i`, or an empty slice past the end (callers check `argc` first).
    pub fn arg(&self, i: usize) -> &'a [u8] {
        self.args
            .get(i)
            .and_then(|r| self.data.get(r.clone()))
            .unwrap_or(&[])
    }

    /// The command name as sent (any case).
    pub fn name(&self) -> &'a [u8] {
        self.arg(0)
    }

    /// Whether the request came in inline form (it is then re-encoded before forwarding, so
    /// Redis sees exactly the arguments redward checked).
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// A request built by redward (arguments `args` of `data`), not read from a client: it
    /// counts as inline, so forwarding encodes its arguments afresh.
    pub fn built(data: &'a [u8], args: &'a [Range<usize>]) -> Request<'a> {
        Request {
            data,
            args,
            inline: true,
        }
    }

    pub fn args(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let data = self.data;
        self.args
            .iter()
            .map(move |r| data.get(r.clone()).unwrap_or(&[]))
    }
}

impl crate::commands::Argv for Request<'_> {
    fn argc(&self) -> usize {
        Request::argc(self)
    }
    fn arg(&self, i: usize) -> &[u8] {
        Request::arg(self, i)
    }
}

impl RequestParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a frame is partly parsed (bytes of it are at the front of the buffer).
    pub fn in_frame(&self) -> bool {
        matches!(self.state, State::Multibulk { .. })
    }

    /// Frames the request at the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed (the parser keeps its place).
    ///
    /// # Errors
    /// A [`ProtocolError`] exactly where Redis would raise one; the connection must then be
    /// closed after the error reply.
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<Frame>, ProtocolError> {
        if let State::Start = self.state {
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            if first != b'*' {
                return self.parse_inline(buf, limits);
            }
            let Some(nl) = find_cr(buf, 0) else {
                return if buf.len() > limits.max_inline {
                    Err(ProtocolError::TooBigMbulkCount)
                } else {
                    Ok(None)
                };
            };
            // Redis needs the byte after '\r' to be present but does not check it is '\n'.
            if nl + 2 > buf.len() {
                return Ok(None);
            }
            let n = match string2ll(buf.get(1..nl).unwrap_or(&[])) {
                Some(n) if n <= i64::from(i32::MAX) => n,
                _ => return Err(ProtocolError::InvalidMultibulkLength),
            };
            if n > UNAUTHENTICATED_MAX_MULTIBULK && !limits.authenticated {
                return Err(ProtocolError::UnauthenticatedMultibulkLength);
            }
            if n <= 0 {
                return Ok(Some(Frame::Empty { len: nl + 2 }));
            }
            self.args.clear();
            self.state = State::Multibulk {
                pos: nl + 2,
                remaining: n,
                bulk: None,
            };
        }
        self.parse_multibulk(buf, limits)
    }

    fn parse_multibulk(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<Frame>, ProtocolError> {
        let State::Multibulk {
            mut pos,
            mut remaining,
            mut bulk,
        } = self.state
        else {
            return Ok(None);
        };
        while remaining > 0 {
            let len = match bulk {
                Some(len) => len,
                None => {
                    let Some(nl) = find_cr(buf, pos) else {
                        if buf.len().saturating_sub(pos) > limits.max_inline {
                            return Err(ProtocolError::TooBigBulkCount);
                        }
                        break;
                    };
                    if nl + 2 > buf.len() {
                        break;
                    }
                    let head = buf.get(pos).copied().unwrap_or(0);
                    if head != b'$' {
                        return Err(ProtocolError::ExpectedDollar(head));
                    }
                    let n = match string2ll(buf.get(pos + 1..nl).unwrap_or(&[])) {
                        Some(n) if n >= 0 && n <= limits.max_bulk => n,
                        _ => return Err(ProtocolError::InvalidBulkLength),
                    };
                    if n > UNAUTHENTICATED_MAX_BULK && !limits.authenticated {
                        return Err(ProtocolError::UnauthenticatedBulkLength);
                    }
                    pos = nl + 2;
                    // n <= max_bulk <= i64::MAX and fits memory only if it fits usize.
                    let len = usize::try_from(n).map_err(|_| ProtocolError::InvalidBulkLength)?;
                    bulk = Some(len);
                    len
                }
            };
            // The argument plus its trailing two bytes (which Redis skips unchecked).
            let Some(end) = pos.checked_add(len).and_then(|e| e.checked_add(2)) else {
                return Err(ProtocolError::InvalidBulkLength);
            };
            if buf.len() < end {
                break;
            }
            self.args.push(pos..pos + len);
            pos = end;
            bulk = None;
            remaining -= 1;
        }
        if remaining == 0 {
            self.state = State::Start;
            return Ok(Some(Frame::Command {
                len: pos,
                inline: false,
            }));
        }
        self.state = State::Multibulk {
            pos,
            remaining,
            bulk,
        };
        Ok(None)
    }

    fn parse_inline(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<Frame>, ProtocolError> {
        // strchr(querybuf, '\n'): a NUL byte ends the search as it ends the C string.
        let nl = match memchr2(b'\n', 0, buf) {
            Some(i) if buf.get(i) == Some(&b'\n') => i,
            _ => {
                return if buf.len() > limits.max_inline {
                    Err(ProtocolError::TooBigInline)
                } else {
                    Ok(None)
                };
            }
        };
        let line_end = if nl > 0 && buf.get(nl - 1) == Some(&b'\r') {
            nl - 1
        } else {
            nl
        };
        let line = buf.get(..line_end).unwrap_or(&[]);
        self.args.clear();
        self.inline.clear();
        if !split_args(line, &mut self.inline, &mut self.args) {
            return Err(ProtocolError::UnbalancedQuotes);
        }
        if self.args.is_empty() {
            return Ok(Some(Frame::Empty { len: nl + 1 }));
        }
        Ok(Some(Frame::Command {
            len: nl + 1,
            inline: true,
        }))
    }

    /// The request framed by the last successful [`parse`](Self::parse) on `buf`.
    pub fn request<'a>(&'a self, buf: &'a [u8], frame: &Frame) -> Request<'a> {
        let inline = matches!(frame, Frame::Command { inline: true, .. });
        let data = if inline { &self.inline[..] } else { buf };
        Request {
            data,
            args: &self.args,
            inline,
        }
    }
}

/// Encodes arguments as a RESP multibulk request (used for inline requests and for commands
/// redward rewrites, such as HELLO without its AUTH part).
pub fn encode_command<'a>(out: &mut Vec<u8>, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    out.push(b'*');
    push_decimal(out, args.len());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        push_decimal(out, a.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        if let Some(slot) = tmp.get_mut(i) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(tmp.get(i..).unwrap_or(&[]));
}

/// `strchr(p, '\r')` over a NUL-terminated sds: the first '\r' at or after `from`, unless a NUL
/// byte comes first.
fn find_cr(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let i = memchr2(b'\r', 0, rest)?;
    (rest.get(i) == Some(&b'\r')).then_some(from + i)
}

/// Redis's `string2ll` (`util.c`): strict decimal, no sign but '-', no leading zeros, no spaces,
/// at most 20 characters.
pub fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if v > (i64::MAX as u64) + 1 {
            return None;
        }
        Some((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// Splits one line the way Redis splits inline requests and aclfile lines (`sdssplitargs`).
/// `None` on unbalanced quotes.
pub fn split_line(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut data = Vec::new();
    let mut ranges = Vec::new();
    if !split_args(line, &mut data, &mut ranges) {
        return None;
    }
    Some(
        ranges
            .into_iter()
            .map(|r| data.get(r).unwrap_or(&[]).to_vec())
            .collect(),
    )
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Redis's `sdssplitargs` (`sds.c`): splits an inline request into arguments, honouring
/// "double quotes" (with \xHH, \n, \r, \t, \b, \a escapes) and 'single quotes' (with \').
/// Arguments are appended to `out`, their ranges to `args`. Returns false on unbalanced quotes.
fn split_args(line: &[u8], out: &mut Vec<u8>, args: &mut Vec<Range<usize>>) -> bool {
    // The C code walks a NUL-terminated string: bytes after a NUL are never seen.
    let line = match memchr(0, line) {
        Some(i) => line.get(..i).unwrap_or(&[]),
        None => line,
    };
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut p = 0usize;
    loop {
        while at(p) != 0 && is_c_space(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return true;
        }
        let start = out.len();
        let (mut inq, mut insq, mut done) = (false, false, false);
        while !done {
            let c = at(p);
            if inq {
                if c == b'\\'
                    && at(p + 1) == b'x'
                    && at(p + 2).is_ascii_hexdigit()
                    && at(p + 3).is_ascii_hexdigit()
                {
                    out.push(hex(at(p + 2)) * 16 + hex(at(p + 3)));
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    out.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_c_space(at(p + 1)) {
                        return false;
                    }
                    done = true;
                } else if c == 0 {
                    return false;
                } else {
                    out.push(c);
                }
            } else if insq {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    out.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_c_space(at(p + 1)) {
                        return false;
                    }
                    done = true;
                } else if c == 0 {
                    return false;
                } else {
                    out.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    other => out.push(other),
                }
            }
            if at(p) != 0 {
                p += 1;
            }
        }
        args.push(start..out.len());
    }
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
