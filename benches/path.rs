//! The whole per-connection path in memory, without sockets: a 32-request pipeline (16 SET and
//! 16 GET of 64-byte values, as `redis-benchmark -P 16` sends) goes from client bytes to
//! upstream bytes and Redis's replies back to client bytes through a session
//! (`session::Offline`: framing, ACL check, forwarding, reply scanning and ordering).
//!
//! Baselines in the same run: the same bytes copied through untouched (what a blind proxy
//! does in user space), and, for the TLS variant, TLS termination of the same bytes with
//! rustls alone (what a blind TLS proxy like stunnel or HAProxy does). The difference is
//! redward's own work per request.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use redward::session::Offline;
use redward::shared::Shared;

const DEPTH: usize = 16;

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    redward::resp::encode_command(&mut out, args.iter().copied());
    out
}

/// The client's pipeline and Redis's replies to it.
fn traffic() -> (Vec<u8>, Vec<u8>) {
    let value = [b'x'; 64];
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    for i in 0..DEPTH {
        let key = format!("key:{i:012}");
        requests.extend(encode(&[b"SET", key.as_bytes(), &value]));
        replies.extend_from_slice(b"+OK\r\n");
    }
    for i in 0..DEPTH {
        let key = format!("key:{i:012}");
        requests.extend(encode(&[b"GET", key.as_bytes()]));
        replies.extend_from_slice(b"$64\r\n");
        replies.extend_from_slice(&value);
        replies.extend_from_slice(b"\r\n");
    }
    (requests, replies)
}

struct World {
    _dir: tempfile::TempDir,
    shared: Arc<Shared>,
    cfg: redward::Config,
    ca: std::path::PathBuf,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = redward::tls::generate_dev_certs(dir.path(), &[]).expect("certs");
    let mut patterns = String::new();
    for i in 0..20 {
        patterns.push_str(&format!(" ~app{i}:*:[a-f]?*"));
    }
    let text = format!(
        "listen:\n  - address: \"127.0.0.1:0\"\n    tls: {{ cert: {}, key: {} }}\n\
         upstream:\n  address: \"127.0.0.1:1\"\n\
         users:\n  - name: bench\n    rules: \"on >pw resetchannels -@all +@read +@write -@dangerous{patterns} ~key:*\"\n\
         \x20 - name: full\n    rules: \"on >pw ~* &* +@all\"\n",
        certs.server_cert.display(),
        certs.server_key.display(),
    );
    let path = dir.path().join("redward.yaml");
    std::fs::write(&path, text).expect("config");
    let cfg = redward::config::load(&path).expect("config loads");
    let shared = Shared::offline(&cfg).expect("shared");
    World {
        _dir: dir,
        shared,
        cfg,
        ca: certs.ca_cert,
    }
}

fn session(w: &World, user: &str) -> Offline {
    let login = redward::auth::authenticate(&w.shared.live.load().users, user.as_bytes(), b"pw")
        .expect("user");
    Offline::new(Arc::clone(&w.shared), login)
}

/// One pipeline through a session; returns the client bytes' length.
fn through(s: &mut Offline, requests: &[u8], replies: &[u8], bufs: &mut [BytesMut; 4]) -> usize {
    let [cin, up, uin, out] = bufs;
    cin.extend_from_slice(requests);
    s.requests(cin, up);
    debug_assert_eq!(up.len(), requests.len());
    up.clear();
    uin.extend_from_slice(replies);
    s.replies(uin, out).expect("replies");
    let n = out.len();
    out.clear();
    n
}

/// The blind proxy: the same bytes copied through.
fn copy_through(requests: &[u8], replies: &[u8], bufs: &mut [BytesMut; 4]) -> usize {
    let [cin, up, uin, out] = bufs;
    cin.extend_from_slice(requests);
    up.extend_from_slice(cin);
    cin.clear();
    up.clear();
    uin.extend_from_slice(replies);
    out.extend_from_slice(uin);
    uin.clear();
    let n = out.len();
    out.clear();
    n
}

fn bench_plain(c: &mut Criterion) {
    let w = world();
    let (requests, replies) = traffic();
    let mut g = c.benchmark_group("path_in_memory");
    g.throughput(Throughput::Elements(2 * DEPTH as u64));
    let mut bufs: [BytesMut; 4] = Default::default();
    g.bench_function("baseline_copy_32_requests", |b| {
        b.iter(|| copy_through(black_box(&requests), black_box(&replies), &mut bufs))
    });
    for user in ["bench", "full"] {
        let mut s = session(&w, user);
        assert_eq!(
            through(&mut s, &requests, &replies, &mut bufs),
            replies.len(),
            "every reply reaches the client"
        );
        g.bench_function(format!("redward_session_32_requests_user_{user}"), |b| {
            b.iter(|| through(&mut s, black_box(&requests), black_box(&replies), &mut bufs))
        });
    }
    g.finish();
}

/// A rustls client and server connected in memory, past the handshake.
fn tls_pair(w: &World) -> (rustls::ClientConnection, rustls::ServerConnection) {
    let listener_tls = w.cfg.listeners[0].tls.as_ref().expect("listener tls");
    let server_cfg = redward::tls::server_config(listener_tls).expect("server config");
    let ca = redward::tls::load_certs(&w.ca).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots.add(cert).expect("root");
    }
    let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), name).expect("client");
    let mut server = rustls::ServerConnection::new(server_cfg).expect("server");
    let mut wire = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        records(&mut client, &mut server, &mut wire);
        records(&mut server, &mut client, &mut wire);
    }
    (client, server)
}

/// Moves TLS records from `from` to `to` (either direction) and decrypts them there.
fn records<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
    wire: &mut Vec<u8>,
) {
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire).expect("write_tls");
    }
    let mut rd = wire.as_slice();
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read_tls");
        to.process_new_packets().expect("process");
    }
}

fn read_all(r: &mut impl Read, into: &mut BytesMut, scratch: &mut [u8]) {
    loop {
        match r.read(scratch) {
            Ok(0) => return,
            Ok(n) => into.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn bench_tls(c: &mut Criterion) {
    let w = world();
    let (requests, replies) = traffic();
    let mut g = c.benchmark_group("path_in_memory_tls");
    g.throughput(Throughput::Elements(2 * DEPTH as u64));
    let mut scratch = vec![0u8; 64 * 1024];
    let mut wire = Vec::with_capacity(64 * 1024);
    let mut bufs: [BytesMut; 4] = Default::default();
    let mut seen = BytesMut::new();

    // Client encrypts, the proxy decrypts, handles the bytes (or not), encrypts the replies,
    // the client decrypts: all four TLS operations a TLS proxy and its client perform.
    let mut run = |s: Option<&mut Offline>,
                   client: &mut rustls::ClientConnection,
                   server: &mut rustls::ServerConnection,
                   bufs: &mut [BytesMut; 4]| {
        client.writer().write_all(&requests).expect("write");
        records(client, server, &mut wire);
        let [cin, up, uin, out] = bufs;
        read_all(&mut server.reader(), cin, &mut scratch);
        match s {
            Some(s) => {
                s.requests(cin, up);
                up.clear();
                uin.extend_from_slice(&replies);
                s.replies(uin, out).expect("replies");
            }
            None => {
                up.extend_from_slice(cin);
                cin.clear();
                up.clear();
                out.extend_from_slice(&replies);
            }
        }
        server.writer().write_all(out).expect("write");
        out.clear();
        records(server, client, &mut wire);
        read_all(&mut client.reader(), &mut seen, &mut scratch);
        let n = seen.len();
        seen.clear();
        n
    };

    let (mut client, mut server) = tls_pair(&w);
    assert_eq!(
        run(None, &mut client, &mut server, &mut bufs),
        replies.len()
    );
    g.bench_function("baseline_tls_termination_32_requests", |b| {
        b.iter(|| run(None, &mut client, &mut server, &mut bufs))
    });
    let (mut client, mut server) = tls_pair(&w);
    let mut s = session(&w, "bench");
    assert_eq!(
        run(Some(&mut s), &mut client, &mut server, &mut bufs),
        replies.len()
    );
    g.bench_function("redward_tls_and_session_32_requests_user_bench", |b| {
        b.iter(|| run(Some(&mut s), &mut client, &mut server, &mut bufs))
    });
    g.finish();
}

criterion_group!(benches, bench_plain, bench_tls);
criterion_main!(benches);
