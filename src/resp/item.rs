//! One RESP reply as a tree of items borrowed from its bytes, for the few replies redward
//! rewrites field by field (`announce.rs`: what a cluster says of its nodes; `SLOWLOG GET`'s
//! client fields): only the fields replaced are copied, and the tree is written back in
//! Redis's order (no map reordering, no number reformatting). Pure: no I/O.

use std::borrow::Cow;

pub fn parse_u16(b: &[u8]) -> Option<u16> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// One RESP item, borrowed from the reply where unchanged.
#[derive(Debug)]
pub enum Item<'a> {
    /// `+ - : _ , # (` lines: type byte and the line after it.
    Line(u8, Cow<'a, [u8]>),
    /// `$ ! =` blobs: type byte and payload.
    Blob(u8, Cow<'a, [u8]>),
    /// `$-1` / `*-1`.
    Nil(u8),
    /// `* % ~ > |`: type byte and the items (a map's keys and values alternate).
    Agg(u8, Vec<Item<'a>>),
}

impl Item<'_> {
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Item::Blob(_, b) | Item::Line(b'+', b) => Some(b),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<u16> {
        match self {
            Item::Line(b':', b) => parse_u16(b),
            _ => None,
        }
    }

    pub fn set_bytes(&mut self, v: &[u8]) {
        match self {
            Item::Blob(_, b) | Item::Line(b'+', b) => *b = Cow::Owned(v.to_vec()),
            _ => {}
        }
    }

    pub fn set_int(&mut self, v: u16) {
        if let Item::Line(b':', b) = self {
            *b = Cow::Owned(v.to_string().into_bytes());
        }
    }
}

/// Deepest nesting read; cluster replies use four levels, SLOWLOG three.
const MAX_DEPTH: usize = 16;

/// Reads one item at `pos`; `None` if the bytes are not one complete, well-formed item.
pub fn parse(buf: &[u8], depth: usize) -> Option<(Item<'_>, usize)> {
    if depth > MAX_DEPTH {
        return None;
    }
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let line = buf.get(..nl)?.strip_suffix(b"\r")?;
    let (&ty, body) = line.split_first()?;
    let after = nl + 1;
    match ty {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
            Some((Item::Line(ty, Cow::Borrowed(body)), after))
        }
        b'$' | b'!' | b'=' => {
            let len: i64 = std::str::from_utf8(body).ok()?.parse().ok()?;
            if len < 0 {
                return Some((Item::Nil(ty), after));
            }
            let len = usize::try_from(len).ok()?;
            let payload = buf.get(after..after.checked_add(len)?)?;
            if buf.get(after + len..after + len + 2)? != b"\r\n" {
                return None;
            }
            Some((Item::Blob(ty, Cow::Borrowed(payload)), after + len + 2))
        }
        b'*' | b'%' | b'~' | b'>' | b'|' => {
            let n: i64 = std::str::from_utf8(body).ok()?.parse().ok()?;
            if n < 0 {
                return Some((Item::Nil(ty), after));
            }
            let n = usize::try_from(n).ok()?;
            let n = if matches!(ty, b'%' | b'|') {
                n.checked_mul(2)?
            } else {
                n
            };
            // Every item takes at least 3 bytes: a count past that is a lie.
            if n > buf.len() / 3 {
                return None;
            }
            let mut items = Vec::with_capacity(n);
            let mut pos = after;
            for _ in 0..n {
                let (item, used) = parse(buf.get(pos..)?, depth + 1)?;
                items.push(item);
                pos += used;
            }
            if ty == b'|' {
                // An attribute comes before the item it describes: keep both, in order.
                let (value, used) = parse(buf.get(pos..)?, depth + 1)?;
                items.push(value);
                pos += used;
            }
            Some((Item::Agg(ty, items), pos))
        }
        _ => None,
    }
}

pub fn write(item: &Item<'_>, out: &mut Vec<u8>) {
    match item {
        Item::Line(ty, body) => {
            out.push(*ty);
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        Item::Blob(ty, payload) => {
            out.push(*ty);
            out.extend_from_slice(payload.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
        Item::Nil(ty) => {
            out.push(*ty);
            out.extend_from_slice(b"-1\r\n");
        }
        Item::Agg(ty, items) => {
            let (n, value) = match ty {
                b'%' => (items.len() / 2, None),
                b'|' => (items.len().saturating_sub(1) / 2, items.last()),
                _ => (items.len(), None),
            };
            out.push(*ty);
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            let pairs = if value.is_some() {
                &items[..items.len() - 1]
            } else {
                &items[..]
            };
            for i in pairs {
                write(i, out);
            }
            if let Some(v) = value {
                write(v, out);
            }
        }
    }
}
