//! Entry points for the fuzz targets in `fuzz/` (one call each, as rustls does). Each must
//! never panic, whatever the input; invariants are asserted here so the fuzzer finds breaks.

use crate::resp::{Frame, Limits, ReplyScanner, RequestParser, Step};

/// Frames arbitrary client bytes with the given limits, fed in two pieces at `split`.
pub fn request_parser(data: &[u8]) {
    let (flags, data) = match data.split_first() {
        Some((f, rest)) => (*f, rest),
        None => return,
    };
    let limits = Limits::new(1 << 20, 4096, flags & 1 == 1);
    let split = usize::from(flags >> 1).min(data.len());
    let mut parser = RequestParser::new();
    let mut buf: Vec<u8> = data.get(..split).unwrap_or(&[]).to_vec();
    let mut fed = split;
    for _ in 0..10_000 {
        match parser.parse(&buf, &limits) {
            Ok(Some(frame)) => {
                assert!(
                    frame.len() <= buf.len() && !frame.is_empty(),
                    "frame overreads"
                );
                if let Frame::Command { .. } = frame {
                    let req = parser.request(&buf, &frame);
                    assert!(req.argc() > 0);
                    let _ = crate::commands::resolve(&req);
                }
                buf.drain(..frame.len());
            }
            Ok(None) if fed < data.len() => {
                buf.extend_from_slice(data.get(fed..).unwrap_or(&[]));
                fed = data.len();
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Scans arbitrary upstream bytes for reply boundaries, one byte at a time and all at once;
/// both must agree.
pub fn reply_scanner(data: &[u8]) {
    let whole = boundaries(data, data.len().max(1));
    let bytewise = boundaries(data, 1);
    assert_eq!(whole, bytewise, "boundaries depend on read sizes");
}

fn boundaries(data: &[u8], chunk: usize) -> Result<Vec<usize>, ()> {
    let mut s = ReplyScanner::new();
    let mut ends = Vec::new();
    let (mut pos, mut avail) = (0usize, 0usize);
    let mut pending_start = 0usize;
    while avail < data.len() {
        avail = (avail + chunk).min(data.len());
        loop {
            let window = data.get(pending_start..avail).unwrap_or(&[]);
            if window.is_empty() {
                break;
            }
            match s.advance(window).map_err(|_| ())? {
                Step::Partial { consumed } => {
                    pending_start += consumed;
                    pos += consumed;
                    break;
                }
                Step::Complete { consumed, .. } => {
                    pending_start += consumed;
                    pos += consumed;
                    ends.push(pos);
                }
            }
        }
    }
    Ok(ends)
}

/// Parses an arbitrary rule string; a user that parses must describe itself and parse again
/// from that description.
pub fn acl_rules(data: &[u8]) {
    let Ok(rules) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(user) = crate::acl::parse_user("fuzz", rules) {
        let line = crate::acl::describe(&user);
        let again = line.strip_prefix("user fuzz ").unwrap_or(&line);
        let _ = crate::acl::parse_user("fuzz", again);
    }
}

/// Classifies an arbitrary command (lookup, arity, keys, ACL check against a fixed user).
pub fn command_classifier(data: &[u8]) {
    let args: Vec<&[u8]> = data.split(|&b| b == b' ').collect();
    let Ok(user) = crate::acl::parse_user(
        "f",
        "on nopass %R~a* ~b? &c* -@all +@read +@write -keys (~x* +set)",
    ) else {
        return;
    };
    if let Ok(spec) = crate::commands::resolve(args.as_slice()) {
        let _ = crate::acl::command_keys(spec, args.as_slice());
        let _ = crate::acl::check(&user, spec, args.as_slice());
        let _ = crate::acl::sort_refusal(&user, spec, args.as_slice());
    }
    let _ = crate::acl::dryrun(&user, args.as_slice());
}

/// Parses an arbitrary configuration text (never panics, errors are one line).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = crate::config::parse(text) {
        assert!(!e.contains('\n'), "multi-line config error");
    }
}

/// Rewrites arbitrary upstream bytes as a cluster reply (the first byte picks SLOTS, SHARDS,
/// NODES or REPLICAS) and as a redirection: never panics, and a reply that was one
/// well-formed item stays one (`announce.rs`).
pub fn cluster_rewrite(data: &[u8]) {
    use crate::announce::{redirect, reply, Fixed, Reply};
    let Some((kind, bytes)) = data.split_first() else {
        return;
    };
    let kind = match kind % 4 {
        0 => Reply::Slots,
        1 => Reply::Shards,
        2 => Reply::Nodes,
        _ => Reply::Replicas,
    };
    let map = Fixed::new(&[(
        ("10.0.0.5".to_owned(), 6379),
        ("redis.example.com".to_owned(), 7101),
    )]);
    let out = reply(kind, bytes, &map);
    let mut scanner = ReplyScanner::new();
    let whole = |s: &mut ReplyScanner, b: &[u8]| matches!(s.advance(b), Ok(Step::Complete { consumed, .. }) if consumed == b.len());
    if whole(&mut scanner, bytes) {
        assert!(
            whole(&mut ReplyScanner::new(), &out),
            "rewrite broke a reply"
        );
    }
    let exec = crate::announce::exec_reply(&[(0, kind), (2, Reply::Nodes)], bytes, &map);
    if whole(&mut ReplyScanner::new(), bytes) {
        assert!(
            whole(&mut ReplyScanner::new(), &exec),
            "EXEC rewrite broke a reply"
        );
    }
    if let Some(line) = redirect(bytes, &map, || Some("10.0.0.5".to_owned())) {
        assert!(line.ends_with(b"\r\n") && line.starts_with(b"-"));
    }
}
