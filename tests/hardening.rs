//! Promise: redward holds when it is attacked the way an attacker and an operator attack it
//! first. Each test makes one attack with a well-behaved client alongside, which must keep
//! getting correct replies:
//! - a client waiting at any stage (PROXY header, TLS handshake, login) costs no CPU;
//! - only trusted load balancers may send a PROXY header, and the caps apply before it;
//! - denied commands and failed logins are logged in aggregate, not a line each;
//! - all clients together cannot make redward buffer more than `limits.max_client_memory`;
//! - a client cannot lock redward out of Redis with `CONFIG SET requirepass`;
//! - log files get no colour codes; a refused client certificate is logged with its reason.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::Process;
use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// TCP from `source`, then `header`, then TLS over the same stream.
async fn tls_with_header(
    addr: SocketAddr,
    ca: &std::path::Path,
    source: &str,
    header: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_after_header(addr, ca, Some(source), header, rustls::DEFAULT_VERSIONS).await
}

async fn roundtrip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    req: &[u8],
    n: usize,
) -> String {
    s.write_all(req).await.unwrap();
    s.flush().await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while count_frames(&out) < n {
        let k = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(k > 0, "closed; got {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..k]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the server closes `s` within `within` (reads return end of stream or an error).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

fn login_ping() -> Vec<u8> {
    [cmd(&["AUTH", APP_USER, APP_PASSWORD]), cmd(&["PING"])].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_at_any_stage_costs_no_cpu() {
    let redis = Redis::start();
    let certs = Certs::new();
    let text = proxy().config_text(&redis, &certs).replacen(
        "    tls: {",
        "    proxy_protocol: true\n    tls: {",
        1,
    );
    let redward = Process::start(&certs, &text);
    // 20 connections send half a v1 header and stop, 10 send a header and half a TLS
    // ClientHello, 10 finish the handshake and never log in (every deadline is 10 s).
    let header = b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 6380\r\n";
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(redward.addr).await.unwrap();
        s.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        stalled.push(s);
    }
    for _ in 0..10 {
        let mut s = TcpStream::connect(redward.addr).await.unwrap();
        s.write_all(header).await.unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        stalled.push(s);
    }
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(
            tls_with_header(redward.addr, &certs.ca(), "127.0.0.1", header)
                .await
                .expect("handshake"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = redward.cpu_seconds();
    // A well-behaved client behind the same balancer is served meanwhile.
    let mut good = tls_with_header(
        redward.addr,
        &certs.ca(),
        "127.0.0.1",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6380\r\n",
    )
    .await
    .expect("a complete header is served");
    assert_eq!(
        roundtrip(&mut good, &login_ping(), 2).await,
        "+OK\r\n+PONG\r\n"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = redward.cpu_seconds() - before;
    eprintln!("40 waiting clients: {used:.2} CPU-seconds in 3 s");
    // Spinning on the half headers costs a core: ~3 CPU-seconds here. Waiting costs nothing
    // (the bound leaves room for the good client's TLS handshake on a slow machine).
    assert!(
        used < 0.6,
        "40 waiting clients used {used:.2} CPU-seconds in 3 s"
    );
    assert_eq!(roundtrip(&mut good, &cmd(&["PING"]), 1).await, "+PONG\r\n");
    drop(stalled);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_balancers_may_send_a_proxy_header_and_caps_apply_at_accept() {
    let redis = Redis::start();
    let certs = Certs::new();
    let text = proxy()
        .yaml("limits:\n  max_connections: 40\n  max_connections_per_ip: 3\n")
        .config_text(&redis, &certs)
        .replacen(
            "    tls: {",
            "    proxy_protocol: { trusted: [\"127.0.0.2/32\"] }\n    tls: {",
            1,
        );
    let addr = serve_config_text(&certs, &text).await;
    let header = |client: &str| format!("PROXY TCP4 {client} 10.0.0.1 40000 6380\r\n");

    // A peer that is not a trusted balancer may not name an address: closed before TLS.
    assert!(tls_with_header(
        addr,
        &certs.ca(),
        "127.0.0.1",
        header("203.0.113.7").as_bytes()
    )
    .await
    .is_err());
    let mut untrusted = Raw::tcp_from(addr, Some("127.0.0.1")).await.unwrap();
    assert!(closed_within(&mut untrusted, Duration::from_secs(5)).await);

    // The trusted balancer is served, and the per-address cap applies to the address its
    // header carries: three from 203.0.113.7, the fourth refused, another address served.
    let mut good = tls_with_header(
        addr,
        &certs.ca(),
        "127.0.0.2",
        header("203.0.113.7").as_bytes(),
    )
    .await
    .expect("trusted balancer");
    assert_eq!(
        roundtrip(&mut good, &login_ping(), 2).await,
        "+OK\r\n+PONG\r\n"
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tls_with_header(
            addr,
            &certs.ca(),
            "127.0.0.2",
            header("203.0.113.7").as_bytes(),
        )
        .await
        .expect("under the per-address cap");
        assert_eq!(
            roundtrip(&mut s, &login_ping(), 2).await,
            "+OK\r\n+PONG\r\n"
        );
        held.push(s);
    }
    assert!(
        tls_with_header(
            addr,
            &certs.ca(),
            "127.0.0.2",
            header("203.0.113.7").as_bytes()
        )
        .await
        .is_err(),
        "a fourth connection from one carried address"
    );
    let mut other = tls_with_header(
        addr,
        &certs.ca(),
        "127.0.0.2",
        header("203.0.113.8").as_bytes(),
    )
    .await
    .expect("another carried address");
    assert_eq!(
        roundtrip(&mut other, &login_ping(), 2).await,
        "+OK\r\n+PONG\r\n"
    );

    // 100 silent connections (no header yet) under max_connections 40: the cap applies at
    // accept, so all but the 35 free slots are closed at once instead of waiting for headers.
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(Raw::tcp_from(addr, Some("127.0.0.2")).await.unwrap());
    }
    let mut closed = 0;
    for s in &mut silent {
        if closed_within(s, Duration::from_millis(50)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 60,
        "only {closed} of 100 silent connections were closed"
    );
    assert!(
        closed <= 70,
        "{closed} closed: the free slots should have been admitted"
    );
    drop(silent);
    // The well-behaved client never noticed.
    assert_eq!(roundtrip(&mut good, &cmd(&["PING"]), 1).await, "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_and_failed_logins_are_logged_in_aggregate_and_acl_log_counts_them() {
    let redis = Redis::start();
    let certs = Certs::new();
    let text = proxy()
        .user("limited", "on >limpw ~lim:* +get")
        .yaml("limits:\n  auth_failures_per_minute: 1000000\n")
        .config_text(&redis, &certs);
    let redward = Process::start(&certs, &text);
    let mut attacker = Raw::tls(redward.addr, &certs.ca()).await;
    let mut script = cmd(&["AUTH", "limited", "limpw"]);
    for _ in 0..20_000 {
        script.extend(cmd(&["CONFIG", "GET", "maxmemory"]));
    }
    attacker.send(&script).await;
    let r = attacker.replies(20_001).await;
    assert_eq!(
        String::from_utf8_lossy(&r)
            .matches("-NOPERM this user has no permissions to run the 'config|get' command")
            .count(),
        20_000
    );
    let mut guesser = Raw::tls(redward.addr, &certs.ca()).await;
    let mut script = Vec::new();
    for _ in 0..2_000 {
        script.extend(cmd(&["AUTH", APP_USER, "guess"]));
    }
    guesser.send(&script).await;
    guesser.replies(2_000).await;
    // The well-behaved client reads ACL LOG: one entry each, with Redis's count.
    let mut good = Raw::tls(redward.addr, &certs.ca()).await;
    good.send(
        &[
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["ACL", "LOG", "2"]),
        ]
        .concat(),
    )
    .await;
    let log = String::from_utf8_lossy(&good.replies(2).await).into_owned();
    assert!(log.contains(":2000\r\n$6\r\nreason\r\n$4\r\nauth"), "{log}");
    assert!(
        log.contains(":20000\r\n$6\r\nreason\r\n$7\r\ncommand"),
        "{log}"
    );
    // The bursts' counts reach the log within a second or two.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let text = redward.log();
    let denied = text.matches("ACL denied").count();
    let failed = text.matches("authentication failed").count();
    assert!(denied <= 20, "{denied} lines for 20,000 denials:\n{text}");
    assert!(
        failed <= 20,
        "{failed} lines for 2,000 failed logins:\n{text}"
    );
    assert!(text.contains("ACL denials not logged one by one"), "{text}");
    assert!(
        text.contains("authentication failures not logged one by one"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_client_memory_the_clients_holding_the_most_are_disconnected() {
    let redis = Redis::start();
    redis::cmd("SET")
        .arg("big:v")
        .arg(vec![b'x'; 1024 * 1024])
        .exec(&mut redis.admin())
        .unwrap();
    let proxy = proxy()
        .user("bulk", "on >bulkpw ~big:* +@all")
        .yaml("admin:\n  address: \"127.0.0.1:0\"\nlimits:\n  max_client_memory: 8mb\n")
        .start(&redis)
        .await;
    let canary = Canary::start(&proxy).await;
    // 10 clients each ask for 20 MiB of replies and never read them.
    let mut hogs = Vec::new();
    for _ in 0..10 {
        let mut hog = proxy.raw().await;
        let mut script = cmd(&["AUTH", "bulk", "bulkpw"]);
        for _ in 0..20 {
            script.extend(cmd(&["GET", "big:v"]));
        }
        hog.send(&script).await;
        hogs.push(hog);
    }
    let admin = proxy.admin.unwrap();
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut settled = false;
    let mut last = String::new();
    while Instant::now() < deadline {
        last = http_get(admin, "/metrics").await;
        // Evictions happened, and what stays buffered is back under the limit.
        if metric(&last, "redward_clients_evicted_total") >= 1.0
            && (0.0..=8.0 * 1024.0 * 1024.0).contains(&metric(&last, "redward_client_memory_bytes"))
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        settled,
        "no eviction, or memory not back under the limit:\n{last}"
    );
    let mut closed = 0;
    for hog in &mut hogs {
        hog.until_close().await;
        closed += 1;
    }
    assert_eq!(closed, 10, "every hog is eventually cut off");
    canary.finish().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_change_the_password_redward_logs_in_with() {
    // Redis as many run it: `requirepass`, that is the default user's password.
    let redis = Redis::start_with_acl(vec![
        "user default on >upstream-default ~* &* +@all".to_owned()
    ]);
    let certs = Certs::new();
    let text = proxy().config_text(&redis, &certs).replace(
        &format!("  username: {UPSTREAM_USER}\n  password: \"{UPSTREAM_PASSWORD}\"\n"),
        "  password: \"upstream-default\"\n",
    );
    let addr = serve_config_text(&certs, &text).await;
    let mut admin = Raw::tls(addr, &certs.ca()).await;
    let refusal = "-ERR redward: requirepass is the password redward logs in to Redis with; change it in Redis's configuration and in redward's upstream settings together\r\n";
    let r = roundtrip_raw(
        &mut admin,
        &[
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["CONFIG", "SET", "requirepass", "hijacked"]),
            cmd(&["CONFIG", "SET", "maxmemory", "0", "REQUIREPASS", "hijacked"]),
            cmd(&["MULTI"]),
            cmd(&["CONFIG", "SET", "requirepass", "hijacked"]),
            cmd(&["EXEC"]),
            cmd(&["CONFIG", "SET", "maxmemory", "0"]),
        ],
        7,
    )
    .await;
    assert_eq!(
        r,
        format!("+OK\r\n{refusal}{refusal}+OK\r\n{refusal}-EXECABORT Transaction discarded because of previous errors.\r\n+OK\r\n")
    );
    // Every later connection still reaches Redis.
    for _ in 0..3 {
        let mut c = Raw::tls(addr, &certs.ca()).await;
        let r = roundtrip_raw(
            &mut c,
            &[
                cmd(&["AUTH", APP_USER, APP_PASSWORD]),
                cmd(&["SELECT", "0"]),
                cmd(&["SET", "k", "v"]),
            ],
            3,
        )
        .await;
        assert_eq!(r, "+OK\r\n+OK\r\n+OK\r\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_own_upstream_user_redward_lets_config_set_requirepass_through() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut c = proxy.raw().await;
    let r = roundtrip_raw(
        &mut c,
        &[
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["CONFIG", "SET", "requirepass", ""]),
        ],
        2,
    )
    .await;
    assert_eq!(r, "+OK\r\n+OK\r\n");
}

async fn roundtrip_raw(raw: &mut Raw, reqs: &[Vec<u8>], n: usize) -> String {
    raw.send(&reqs.concat()).await;
    String::from_utf8_lossy(&raw.replies(n).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_colour_codes_only_when_asked() {
    let redis = Redis::start();
    for (setting, coloured) in [
        ("", false),
        ("log: { color: never }\n", false),
        ("log: { color: always }\n", true),
    ] {
        let certs = Certs::new();
        let text = proxy().yaml(setting).config_text(&redis, &certs);
        let redward = Process::start(&certs, &text);
        let mut c = Raw::tls(redward.addr, &certs.ca()).await;
        c.send(&cmd(&["AUTH", APP_USER, "wrong"])).await;
        c.replies(1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = redward.log();
        assert!(log.contains("listening"), "{log}");
        assert_eq!(
            log.contains('\u{1b}'),
            coloured,
            "setting {setting:?}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_certificate_is_logged_with_its_reason() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let redis = Redis::start();
    let certs = Certs::new();
    // A client CA and a certificate for `app` made for servers (no clientAuth usage): a
    // mistake an operator can fix, once the log says what it is.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name.push(DnType::CommonName, "client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let ca_path = certs.dir.path().join("clients-ca.crt");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, APP_USER);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    let text = proxy()
        .tls_option(&format!(
            "client_ca: {}, client_auth: required",
            ca_path.display()
        ))
        .config_text(&redis, &certs);
    let redward = Process::start(&certs, &text);

    let mut roots = rustls::RootCertStore::empty();
    for c in redward::tls::load_certs(&certs.ca()).unwrap() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let tcp = TcpStream::connect(redward.addr).await.unwrap();
    let result = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        // TLS 1.3: the server's verdict arrives after the client's handshake is done.
        tls.write_all(&cmd(&["PING"])).await?;
        let mut buf = [0u8; 64];
        match tls.read(&mut buf).await? {
            0 => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            _ => Ok(()),
        }
    }
    .await;
    assert!(
        result.is_err(),
        "a certificate without clientAuth is refused"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = redward.log();
    let line = log
        .lines()
        .find(|l| l.contains("client certificate refused"))
        .unwrap_or_else(|| panic!("no reason logged:\n{log}"));
    assert!(
        line.contains("extended key usage for client authentication"),
        "the reason names the key usage: {line}"
    );
}
