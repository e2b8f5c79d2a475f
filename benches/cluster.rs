//! What rewriting a cluster's self-descriptions costs (`announce.rs`), and what being in
//! front of a cluster costs replies that name no node: the same 32-request pipeline as
//! `benches/path.rs` through a session with and without a cluster configured, and with every
//! GET answered by `-MOVED` instead.

use std::sync::Arc;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use redward::announce::{self as rewrite, Fixed};
use redward::session::Offline;
use redward::shared::Shared;

const DEPTH: usize = 16;

/// A fixed map of `n` nodes, 10.0.<i/256>.<i%256>:6379 -> redis.example.com:<7000+i>.
fn cluster(n: usize) -> Arc<Fixed> {
    let map: Vec<_> = (0..n)
        .map(|i| {
            (
                (format!("10.0.{}.{}", i / 256, i % 256), 6379),
                ("redis.example.com".to_owned(), 7000 + i as u16),
            )
        })
        .collect();
    Arc::new(Fixed::new(&map))
}

/// `CLUSTER SLOTS` of `n` masters, each with one range, as Redis 7.0 sends it (RESP2).
fn slots_reply(n: usize) -> Vec<u8> {
    let mut out = format!("*{n}\r\n").into_bytes();
    let per = 16384 / n;
    for i in 0..n {
        let host = format!("10.0.{}.{}", i / 256, i % 256);
        let id = format!("{i:040x}");
        out.extend(
            format!(
                "*3\r\n:{}\r\n:{}\r\n*4\r\n${}\r\n{host}\r\n:6379\r\n$40\r\n{id}\r\n*0\r\n",
                i * per,
                (i + 1) * per - 1,
                host.len()
            )
            .into_bytes(),
        );
    }
    out
}

fn nodes_reply(n: usize) -> Vec<u8> {
    let mut text = String::new();
    let per = 16384 / n;
    for i in 0..n {
        text.push_str(&format!(
            "{i:040x} 10.0.{}.{}:6379@16379 master - 0 1796001735830 {i} connected {}-{}\n",
            i / 256,
            i % 256,
            i * per,
            (i + 1) * per - 1
        ));
    }
    format!("${}\r\n{text}\r\n", text.len()).into_bytes()
}

fn bench_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("cluster_rewrite");
    for n in [3usize, 100] {
        let cl = cluster(n);
        let moved = format!("-MOVED 3999 10.0.0.{}:6379\r\n", n - 1).into_bytes();
        g.bench_function(format!("moved_line_{n}_nodes"), |b| {
            b.iter(|| rewrite::redirect(black_box(&moved), &*cl, || None))
        });
        let slots = slots_reply(n);
        g.bench_function(format!("cluster_slots_{n}_nodes"), |b| {
            b.iter(|| rewrite::reply(rewrite::Reply::Slots, black_box(&slots), &*cl))
        });
        let nodes = nodes_reply(n);
        g.bench_function(format!("cluster_nodes_{n}_nodes"), |b| {
            b.iter(|| rewrite::reply(rewrite::Reply::Nodes, black_box(&nodes), &*cl))
        });
    }
    g.finish();
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    redward::resp::encode_command(&mut out, args.iter().copied());
    out
}

/// 16 SET and 16 GET; the GETs answered with values, or with `-MOVED` when `moved`.
fn traffic(moved: bool) -> (Vec<u8>, Vec<u8>) {
    let value = [b'x'; 64];
    let (mut requests, mut replies) = (Vec::new(), Vec::new());
    for i in 0..DEPTH {
        requests.extend(encode(&[b"SET", format!("key:{i:012}").as_bytes(), &value]));
        replies.extend_from_slice(b"+OK\r\n");
    }
    for i in 0..DEPTH {
        requests.extend(encode(&[b"GET", format!("key:{i:012}").as_bytes()]));
        if moved {
            replies.extend_from_slice(b"-MOVED 3999 10.0.0.2:6379\r\n");
        } else {
            replies.extend_from_slice(b"$64\r\n");
            replies.extend_from_slice(&value);
            replies.extend_from_slice(b"\r\n");
        }
    }
    (requests, replies)
}

fn shared(dir: &std::path::Path, with_cluster: bool) -> Arc<Shared> {
    let certs = redward::tls::generate_dev_certs(dir, &[]).expect("certs");
    let text = format!(
        "listen:\n  - address: \"127.0.0.1:0\"\n    tls: {{ cert: {}, key: {} }}\n\
         upstream:\n  address: \"127.0.0.1:1\"\n\
         users:\n  - name: full\n    rules: \"on >pw ~* &* +@all\"\n",
        certs.server_cert.display(),
        certs.server_key.display(),
    );
    let path = dir.join("redward.yaml");
    std::fs::write(&path, text).expect("config");
    let cfg = redward::config::load(&path).expect("config loads");
    let shared = Shared::offline(&cfg).expect("shared");
    if with_cluster {
        let _ = shared.cluster.set(cluster(3));
    }
    shared
}

fn bench_path(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("path_in_memory_cluster");
    g.throughput(Throughput::Elements(2 * DEPTH as u64));
    let mut bufs: [BytesMut; 4] = Default::default();
    for (name, with_cluster, moved) in [
        ("no_cluster", false, false),
        ("cluster_replies_name_no_node", true, false),
        ("cluster_every_get_moved", true, true),
    ] {
        let shared = shared(dir.path(), with_cluster);
        let login =
            redward::auth::authenticate(&shared.live.load().users, b"full", b"pw").expect("user");
        let mut s = Offline::new(Arc::clone(&shared), login);
        let (requests, replies) = traffic(moved);
        g.bench_function(name, |b| {
            b.iter(|| {
                let [cin, up, uin, out] = &mut bufs;
                cin.extend_from_slice(black_box(&requests));
                s.requests(cin, up);
                up.clear();
                uin.extend_from_slice(black_box(&replies));
                s.replies(uin, out).expect("replies");
                let n = out.len();
                out.clear();
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_rewrite, bench_path);
criterion_main!(benches);
