//! Finding reply boundaries in the byte stream Redis sends back, RESP2 and RESP3.
//!
//! redward does not decode replies: it only needs to know where each top-level reply ends, so
//! that answers it writes itself can be slotted between them in request order. The scanner is
//! resumable and streams: every byte it has stepped over can be forwarded at once, so a 64 MiB
//! value passes through in read-sized pieces instead of being buffered whole. Of each top-level
//! aggregate it keeps only what the session needs to follow pub/sub: the first element when it
//! is a short string (the message kind) and the third when it is an integer (the subscription
//! count Redis reports, `addReplyPubsubSubscribed` in `pubsub.c`).

use memchr::memchr;

/// The longest header line (`$<len>`, `:<int>`, `+status`) accepted from upstream before the
/// stream is declared broken. Redis's own simple strings are short; MONITOR lines and INFO go
/// out as bulk strings.
pub const MAX_LINE: usize = 1024 * 1024;

/// Nesting depth beyond which a reply is refused. Redis nests deep at times: a Lua script
/// returning a table that contains itself makes it send ~8,000 nested `*1` before `-ERR
/// reached lua stack limit` (`luaReplyToRedisReply` in script_lua.c), and that reply must
/// pass. Levels are run-length encoded (a chain of `*1` is one entry), so depth costs nothing;
/// [`MAX_LEVELS`] bounds the memory.
pub const MAX_DEPTH: usize = 1 << 20;
/// Distinct open levels (entries of the run-length-encoded stack) beyond which a reply is
/// refused: 4,096 of 24 bytes.
pub const MAX_LEVELS: usize = 4096;

/// How many bytes of a top-level aggregate's first element are kept for classification.
const KIND_CAPTURE: usize = 16;

/// The upstream sent something that is not RESP. The connection cannot be resynchronised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("unexpected reply type byte {0:#04x}")]
    BadType(u8),
    #[error("invalid length in reply header")]
    BadLength,
    #[error("reply header line too long")]
    LineTooLong,
    #[error("reply nested too deeply")]
    TooDeep,
}

/// What the scanner saw of a complete top-level reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameInfo {
    /// The type byte: `+ - : $ * % ~ > _ , # ( ! =` (an attribute `|` is folded into the value
    /// that follows it).
    pub kind: u8,
    /// The first element of an array or push, when it is a string of at most 16 bytes.
    pub head: Head,
    /// The third element of an array or push, when it is an integer.
    pub count: Option<i64>,
}

impl FrameInfo {
    pub fn is_push(&self) -> bool {
        self.kind == b'>'
    }

    pub fn is_error(&self) -> bool {
        self.kind == b'-' || self.kind == b'!'
    }

    /// The pub/sub meaning of the frame's first element, if any.
    pub fn pubsub(&self) -> Option<PubSub> {
        if !matches!(self.kind, b'*' | b'>') {
            return None;
        }
        PubSub::from_name(self.head.as_bytes()?)
    }
}

/// The first element of an aggregate, kept inline (no allocation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    len: u8,
    bytes: [u8; KIND_CAPTURE],
    /// Set when the element was a string but longer than the capture.
    truncated: bool,
}

impl Head {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        if self.truncated || self.len == 0 {
            return None;
        }
        self.bytes.get(..usize::from(self.len))
    }

    fn push(&mut self, data: &[u8]) {
        for &b in data {
            match self.bytes.get_mut(usize::from(self.len)) {
                Some(slot) => {
                    *slot = b;
                    self.len += 1;
                }
                None => {
                    self.truncated = true;
                    return;
                }
            }
        }
    }
}

/// Pub/sub frame kinds (`pubsub.c`, and `invalidate` from `tracking.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PubSub {
    Message,
    PMessage,
    SMessage,
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    PUnsubscribe,
    SUnsubscribe,
    Invalidate,
    Pong,
}

impl PubSub {
    fn from_name(name: &[u8]) -> Option<PubSub> {
        Some(match name {
            b"message" => PubSub::Message,
            b"pmessage" => PubSub::PMessage,
            b"smessage" => PubSub::SMessage,
            b"subscribe" => PubSub::Subscribe,
            b"psubscribe" => PubSub::PSubscribe,
            b"ssubscribe" => PubSub::SSubscribe,
            b"unsubscribe" => PubSub::Unsubscribe,
            b"punsubscribe" => PubSub::PUnsubscribe,
            b"sunsubscribe" => PubSub::SUnsubscribe,
            b"invalidate" => PubSub::Invalidate,
            b"pong" => PubSub::Pong,
            _ => return None,
        })
    }

    /// Messages are unsolicited: they answer no request.
    pub fn is_message(self) -> bool {
        matches!(
            self,
            PubSub::Message | PubSub::PMessage | PubSub::SMessage | PubSub::Invalidate
        )
    }
}

/// Result of one [`ReplyScanner::advance`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `consumed` bytes belong to the reply in progress (they may be forwarded); the reply is
    /// not complete yet and more input is needed.
    Partial { consumed: usize },
    /// A top-level reply ended after `consumed` bytes.
    Complete { consumed: usize, info: FrameInfo },
}

/// `repeat` nested levels that are alike (a run of `*1`, say), innermost last.
#[derive(Clone, Copy, Debug)]
struct Level {
    /// Elements still due at each of these levels.
    remaining: u64,
    /// An attribute (`|`) precedes a value and does not count as an element of its parent.
    attribute: bool,
    /// How many nested levels this entry stands for (at least 1).
    repeat: u32,
}

/// Resumable scanner over the upstream reply stream. `Clone` lets a caller probe ahead without
/// committing (used when a frame's fate depends on its content).
#[derive(Clone, Debug, Default)]
pub struct ReplyScanner {
    /// Open aggregates, outermost first, alike neighbours merged. Invariant: every entry has
    /// `remaining > 0` and `repeat > 0`.
    stack: Vec<Level>,
    /// Open aggregates in all (the sum of the entries' `repeat`).
    depth: usize,
    /// Bytes of a bulk payload (plus its CRLF) still to step over.
    bulk_left: u64,
    /// Whether the bulk being stepped over is the head element being captured.
    capturing: bool,
    /// Index of the next element of the top-level aggregate.
    top_index: u64,
    info: FrameInfo,
    /// Whether a top-level reply has started (its type byte was seen).
    started: bool,
}

impl ReplyScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the scanner is inside a reply (some of its bytes were consumed already).
    pub fn in_frame(&self) -> bool {
        self.started
    }

    /// The type byte of the reply in progress, once its first byte was seen.
    pub fn current_kind(&self) -> Option<u8> {
        self.started.then_some(self.info.kind)
    }

    /// Steps over as much of `buf` as belongs to the current top-level reply.
    ///
    /// # Errors
    /// [`ReplyError`] when the stream is not RESP; the upstream connection must be dropped.
    pub fn advance(&mut self, buf: &[u8]) -> Result<Step, ReplyError> {
        let mut pos = 0usize;
        loop {
            if self.bulk_left > 0 {
                let avail = buf.len().saturating_sub(pos);
                let take = usize::try_from(self.bulk_left)
                    .unwrap_or(usize::MAX)
                    .min(avail);
                if self.capturing {
                    // The CRLF is part of bulk_left: capture only payload bytes.
                    let payload_left = self.bulk_left.saturating_sub(2);
                    let n = usize::try_from(payload_left)
                        .unwrap_or(usize::MAX)
                        .min(take);
                    self.info.head.push(buf.get(pos..pos + n).unwrap_or(&[]));
                }
                pos += take;
                self.bulk_left -= take as u64;
                if self.bulk_left > 0 {
                    return Ok(Step::Partial { consumed: pos });
                }
                self.capturing = false;
                if let Some(step) = self.element_done(pos) {
                    return Ok(step);
                }
                continue;
            }
            let rest = buf.get(pos..).unwrap_or(&[]);
            let Some(nl) = memchr(b'\n', rest) else {
                if rest.len() > MAX_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(Step::Partial { consumed: pos });
            };
            let line = rest.get(..nl).unwrap_or(&[]);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let (&ty, body) = line.split_first().ok_or(ReplyError::BadType(b'\n'))?;
            pos += nl + 1;
            let depth = self.depth;
            let at_head = depth == 1 && self.top_index == 0;
            let at_count = depth == 1 && self.top_index == 2;
            if !self.started {
                self.started = true;
                self.info = FrameInfo {
                    kind: ty,
                    ..FrameInfo::default()
                };
                self.top_index = 0;
            }
            if self.info.kind == b'|' && depth == 0 {
                // The attribute map comes first; the frame's kind is that of the value after it.
                self.info.kind = ty;
            }
            match ty {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    // A top-level status line is kept too (MONITOR mode looks for "+RESET").
                    if (at_head || depth == 0) && ty == b'+' {
                        self.info.head.push(body);
                    }
                    if at_count && ty == b':' {
                        self.info.count = parse_int(body);
                    }
                }
                b'$' | b'!' | b'=' => {
                    let n = parse_int(body).ok_or(ReplyError::BadLength)?;
                    if n >= 0 {
                        self.bulk_left = (n as u64) + 2;
                        self.capturing = at_head;
                        continue;
                    }
                    if n != -1 {
                        return Err(ReplyError::BadLength);
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(body).ok_or(ReplyError::BadLength)?;
                    if n < -1 {
                        return Err(ReplyError::BadLength);
                    }
                    let per = if matches!(ty, b'%' | b'|') { 2 } else { 1 };
                    let elems = (n.max(0) as u64)
                        .checked_mul(per)
                        .ok_or(ReplyError::BadLength)?;
                    if elems > 0 {
                        self.open(elems, ty == b'|')?;
                        continue;
                    }
                    if ty == b'|' {
                        // An empty attribute still precedes a value.
                        continue;
                    }
                }
                other => return Err(ReplyError::BadType(other)),
            }
            if let Some(step) = self.element_done(pos) {
                return Ok(step);
            }
        }
    }

    /// Opens an aggregate of `elems` elements inside the current one.
    fn open(&mut self, elems: u64, attribute: bool) -> Result<(), ReplyError> {
        if self.depth >= MAX_DEPTH {
            return Err(ReplyError::TooDeep);
        }
        match self.stack.last_mut() {
            Some(top)
                if top.remaining == elems
                    && top.attribute == attribute
                    && top.repeat < u32::MAX =>
            {
                top.repeat += 1;
            }
            _ => {
                if self.stack.len() >= MAX_LEVELS {
                    return Err(ReplyError::TooDeep);
                }
                self.stack.push(Level {
                    remaining: elems,
                    attribute,
                    repeat: 1,
                });
            }
        }
        self.depth += 1;
        Ok(())
    }

    /// Records that one element ended; returns the completed frame when it was the last one.
    fn element_done(&mut self, pos: usize) -> Option<Step> {
        loop {
            let depth = self.depth;
            let Some(top) = self.stack.last_mut() else {
                let info = self.info;
                self.started = false;
                self.top_index = 0;
                return Some(Step::Complete {
                    consumed: pos,
                    info,
                });
            };
            if top.remaining > 1 {
                // The innermost level has more to come; split it off its run if it has one.
                if top.repeat > 1 {
                    top.repeat -= 1;
                    let inner = Level {
                        remaining: top.remaining - 1,
                        attribute: top.attribute,
                        repeat: 1,
                    };
                    // Never more entries than levels: at most one more than before.
                    self.stack.push(inner);
                } else {
                    top.remaining -= 1;
                    // Alike again with the level around it: merge, so a deep reply whose
                    // levels all look the same stays one entry whatever its shape.
                    if let [.., outer, inner] = self.stack.as_mut_slice() {
                        if outer.remaining == inner.remaining && outer.attribute == inner.attribute
                        {
                            if let Some(sum) = outer.repeat.checked_add(inner.repeat) {
                                outer.repeat = sum;
                                self.stack.pop();
                            }
                        }
                    }
                }
                if depth == 1 {
                    self.top_index += 1;
                }
                return None;
            }
            // The innermost level is complete: it is one element of the level around it.
            let attribute = top.attribute;
            top.repeat -= 1;
            if top.repeat == 0 {
                self.stack.pop();
            }
            self.depth -= 1;
            if attribute {
                // The attribute is done; the value it annotates is still to come, and that value
                // (not the attribute's keys) is what classification looks at.
                if self.depth == 0 {
                    self.top_index = 0;
                    self.info.head = Head::default();
                    self.info.count = None;
                }
                return None;
            }
        }
    }
}

fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<(usize, FrameInfo)> {
        let mut s = ReplyScanner::new();
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < input.len() {
            match s.advance(input.get(pos..).unwrap_or(&[])).unwrap() {
                Step::Complete { consumed, info } => {
                    pos += consumed;
                    out.push((pos, info));
                }
                Step::Partial { .. } => panic!("incomplete"),
            }
        }
        out
    }

    #[test]
    fn resp2_nulls_are_single_frames() {
        let f = frames(b"$-1\r\n*-1\r\n*0\r\n");
        assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), vec![5, 10, 14]);
    }

    #[test]
    fn pubsub_frames_are_classified() {
        let f = frames(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:2\r\n");
        assert_eq!(f[0].1.pubsub(), Some(PubSub::Message));
        assert_eq!(f[1].1.pubsub(), Some(PubSub::Subscribe));
        assert_eq!(f[1].1.count, Some(2));
        assert!(f[1].1.is_push());
    }

    #[test]
    fn an_attribute_belongs_to_the_value_after_it() {
        let f = frames(b"|1\r\n+key\r\n+val\r\n*2\r\n$7\r\nmessage\r\n:1\r\n+OK\r\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].1.kind, b'*');
        assert_eq!(f[0].1.pubsub(), Some(PubSub::Message));
    }

    #[test]
    fn a_large_bulk_streams_in_pieces() {
        let mut s = ReplyScanner::new();
        assert_eq!(
            s.advance(b"$10\r\n01234").unwrap(),
            Step::Partial { consumed: 10 }
        );
        assert!(s.in_frame());
        assert!(matches!(
            s.advance(b"56789\r\n").unwrap(),
            Step::Complete { consumed: 7, .. }
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(ReplyScanner::new().advance(b"?what\r\n").is_err());
        assert!(ReplyScanner::new().advance(b"$abc\r\n").is_err());
        assert!(ReplyScanner::new().advance(b"*-5\r\n").is_err());
        // Nested levels that all differ are bounded by MAX_LEVELS.
        let mut deep = String::new();
        for i in 0..=MAX_LEVELS {
            deep.push_str(&format!("*{}\r\n", i + 2));
        }
        assert_eq!(
            ReplyScanner::new().advance(deep.as_bytes()),
            Err(ReplyError::TooDeep)
        );
    }

    #[test]
    fn a_reply_nested_thousands_deep_passes_in_one_piece() {
        // What Redis 7 sends for a Lua table that contains itself.
        let mut reply = "*1\r\n".repeat(7995).into_bytes();
        reply.extend_from_slice(b"-ERR reached lua stack limit\r\n+OK\r\n");
        let f = frames(&reply);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].0, 7995 * 4 + 30);
        assert_eq!(f[0].1.kind, b'*');
        // Mixed shapes: [[1, [2, [3, x]]], y] nested as deep, with siblings at every level.
        let mut mixed = String::new();
        for _ in 0..(MAX_LEVELS * 2) {
            mixed.push_str("*2\r\n:1\r\n");
        }
        mixed.push_str(":0\r\n");
        assert_eq!(frames(mixed.as_bytes()).len(), 1);
        let mut s = ReplyScanner::new();
        let split = mixed.len() / 2;
        assert!(matches!(
            s.advance(&mixed.as_bytes()[..split]),
            Ok(Step::Partial { .. })
        ));
    }
}
