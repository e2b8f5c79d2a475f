//! Request framing and reply scanning, per command, beside a plain `memchr` pass over the same
//! bytes (the floor any framer must pay), so each figure reads as a ratio.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use redward::resp::{Frame, Limits, ReplyScanner, RequestParser, Step};

fn pipeline(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("key:{:012}", i);
        if i % 2 == 0 {
            redward::resp::encode_command(
                &mut out,
                [&b"SET"[..], key.as_bytes(), &[b'x'; 64]].into_iter(),
            );
        } else {
            redward::resp::encode_command(&mut out, [&b"GET"[..], key.as_bytes()].into_iter());
        }
    }
    out
}

fn frame_all(input: &[u8]) -> usize {
    let mut parser = RequestParser::new();
    let limits = Limits::default();
    let mut pos = 0;
    let mut n = 0;
    while let Ok(Some(frame)) = parser.parse(&input[pos..], &limits) {
        if let Frame::Command { .. } = frame {
            let req = parser.request(&input[pos..], &frame);
            black_box(req.name());
            n += 1;
        }
        pos += frame.len();
    }
    n
}

fn memchr_lines(input: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', input).count()
}

fn bench_requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_framing");
    let p = pipeline(1000);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("redward_framer_set_get_x1000", |b| {
        b.iter(|| frame_all(black_box(&p)))
    });
    g.bench_function("baseline_memchr_newlines_x1000", |b| {
        b.iter(|| memchr_lines(black_box(&p)))
    });
    let big = {
        let mut v = Vec::new();
        let value = vec![b'v'; 16 * 1024 * 1024];
        redward::resp::encode_command(&mut v, [&b"SET"[..], b"big", &value].into_iter());
        v
    };
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("redward_framer_16mib_bulk_in_16k_reads", |b| {
        b.iter(|| {
            let mut parser = RequestParser::new();
            let limits = Limits::default();
            let mut end = 0;
            loop {
                end = (end + 16 * 1024).min(big.len());
                if let Ok(Some(f)) = parser.parse(&big[..end], &limits) {
                    break f.len();
                }
            }
        })
    });
    g.bench_function("baseline_memchr_16mib", |b| {
        b.iter(|| memchr_lines(black_box(&big)))
    });
    g.finish();
}

fn replies(resp3: bool, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        match i % 4 {
            0 => out.extend_from_slice(b"+OK\r\n"),
            1 => out.extend_from_slice(
                b"$64\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n",
            ),
            2 => out.extend_from_slice(b":12345\r\n"),
            _ if resp3 => out.extend_from_slice(b"%2\r\n$1\r\na\r\n,1.5\r\n$1\r\nb\r\n_\r\n"),
            _ => out.extend_from_slice(b"*2\r\n$1\r\na\r\n$-1\r\n"),
        }
    }
    out
}

fn scan_all(input: &[u8]) -> usize {
    let mut s = ReplyScanner::new();
    let mut pos = 0;
    let mut n = 0;
    while pos < input.len() {
        match s.advance(&input[pos..]) {
            Ok(Step::Complete { consumed, .. }) => {
                pos += consumed;
                n += 1;
            }
            _ => break,
        }
    }
    n
}

fn bench_replies(c: &mut Criterion) {
    let mut g = c.benchmark_group("reply_scanning");
    g.throughput(Throughput::Elements(1000));
    for (name, resp3) in [("resp2", false), ("resp3", true)] {
        let r = replies(resp3, 1000);
        g.bench_function(format!("redward_scanner_{name}_x1000"), |b| {
            b.iter(|| scan_all(black_box(&r)))
        });
        g.bench_function(format!("baseline_memchr_{name}_x1000"), |b| {
            b.iter(|| memchr_lines(black_box(&r)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_requests, bench_replies);
criterion_main!(benches);
