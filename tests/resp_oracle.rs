//! Promise: redward's own hot-path framer and reply scanner agree with redis-protocol (the
//! oracle) on every request and reply, whatever the read boundaries.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use redis_protocol::resp2::types::BytesFrame as Resp2Frame;
use redward::resp::{Frame, Limits, ReplyScanner, RequestParser, Step};

fn args_strategy() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    let arg = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(any::<u8>(), 0..3000),
        Just(b"\r\n".to_vec()),
    ];
    let command = proptest::collection::vec(arg, 1..8);
    proptest::collection::vec(command, 1..20)
}

/// Feeds `input` in chunks of the given sizes and collects every framed command.
fn frame_in_chunks(input: &[u8], chunks: &[usize]) -> Vec<Vec<Vec<u8>>> {
    let mut parser = RequestParser::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().cycle();
    while pos < input.len() {
        let n = (*sizes.next().unwrap()).max(1).min(input.len() - pos);
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
        while let Some(frame) = parser.parse(&buf, &Limits::default()).expect("valid input") {
            if let Frame::Command { .. } = frame {
                out.push(
                    parser
                        .request(&buf, &frame)
                        .args()
                        .map(<[u8]>::to_vec)
                        .collect(),
                );
            }
            buf.drain(..frame.len());
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn framer_reads_what_redis_protocol_encodes(cmds in args_strategy(), chunks in proptest::collection::vec(1usize..700, 1..10)) {
        let mut wire = BytesMut::new();
        for c in &cmds {
            let frame = Resp2Frame::Array(c.iter().map(|a| Resp2Frame::BulkString(Bytes::from(a.clone()))).collect());
            redis_protocol::resp2::encode::extend_encode(&mut wire, &frame, false).unwrap();
        }
        prop_assert_eq!(frame_in_chunks(&wire, &chunks), cmds);
    }

    #[test]
    fn framer_never_panics_and_never_overreads(input in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut parser = RequestParser::new();
        let mut buf = input.clone();
        for _ in 0..100 {
            match parser.parse(&buf, &Limits::new(1 << 20, 4096, false)) {
                Ok(Some(frame)) => {
                    prop_assert!(frame.len() <= buf.len());
                    prop_assert!(!frame.is_empty());
                    buf.drain(..frame.len());
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn reply_scanner_finds_the_boundaries_redis_protocol_finds(frames in proptest::collection::vec(reply_strategy(), 1..12), chunks in proptest::collection::vec(1usize..300, 1..8)) {
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(f);
        }
        // The oracle: redis-protocol's RESP3 decoder, one complete frame at a time.
        let mut oracle = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let (_, len) = redis_protocol::resp3::decode::complete::decode_range(&wire[at..])
                .expect("oracle decodes")
                .expect("oracle sees a complete frame");
            oracle.push(len);
            at += len;
        }
        // redward's scanner, fed in arbitrary pieces.
        let mut scanner = ReplyScanner::new();
        let mut ends = Vec::new();
        let mut current = 0usize;
        let mut pending: Vec<u8> = Vec::new();
        let mut pos = 0;
        let mut sizes = chunks.iter().cycle();
        while pos < wire.len() {
            let n = (*sizes.next().unwrap()).min(wire.len() - pos);
            pending.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            loop {
                match scanner.advance(&pending).expect("scanner accepts RESP") {
                    Step::Partial { consumed } => {
                        current += consumed;
                        pending.drain(..consumed);
                        break;
                    }
                    Step::Complete { consumed, .. } => {
                        current += consumed;
                        pending.drain(..consumed);
                        ends.push(current);
                        current = 0;
                        if pending.is_empty() { break; }
                    }
                }
            }
        }
        prop_assert_eq!(ends, oracle);
    }
}

/// Random RESP3 replies as Redis writes them (no streamed types; the RESP2 nulls `$-1` and
/// `*-1`, which the RESP3 oracle refuses, are covered by unit tests).
fn reply_strategy() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        "[a-zA-Z ]{0,20}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        "[a-zA-Z ]{0,20}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..600).prop_map(|d| {
            let mut v = format!("${}\r\n", d.len()).into_bytes();
            v.extend_from_slice(&d);
            v.extend_from_slice(b"\r\n");
            v
        }),
        Just(b"_\r\n".to_vec()),
        Just(b"#t\r\n".to_vec()),
        Just(b",3.25\r\n".to_vec()),
        Just(b"(12345678901234567890\r\n".to_vec()),
        Just(b"=8\r\ntxt:abcd\r\n".to_vec()),
        Just(b"!5\r\nERR x\r\n".to_vec()),
    ];
    leaf.prop_recursive(3, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| aggregate(b'*', &items)),
            // Set members must be hashable for the oracle: scalars only.
            proptest::collection::vec("[a-z]{0,6}", 0..6).prop_map(|items| aggregate(
                b'~',
                &items
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("+{s}{i}\r\n").into_bytes())
                    .collect::<Vec<_>>()
            )),
            proptest::collection::vec(inner.clone(), 1..6)
                .prop_map(|items| aggregate(b'>', &items)),
            proptest::collection::vec(inner, 0..4).prop_map(|items| {
                // A map needs distinct keys for the oracle: number them.
                let mut v = format!("%{}\r\n", items.len()).into_bytes();
                for (i, item) in items.iter().enumerate() {
                    v.extend_from_slice(format!("+k{i}\r\n").as_bytes());
                    v.extend_from_slice(item);
                }
                v
            }),
        ]
    })
}

fn aggregate(ty: u8, items: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(format!("{}\r\n", items.len()).as_bytes());
    for i in items {
        v.extend_from_slice(i);
    }
    v
}
