//! Promise: TLS terminates with rustls for every usual key type and PEM encoding, TLS 1.2 and
//! 1.3 (minimum configurable), resumes sessions, and can also speak TLS to an upstream Redis.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Replaces the server certificate with one of `alg`, its key in `format` ("pkcs8", or
/// "traditional" = PKCS#1 for RSA, SEC1 for ECDSA, via openssl).
fn certs_with(alg: &'static rcgen::SignatureAlgorithm, format: &str) -> Certs {
    let certs = Certs::new();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(certs.ca(), ca_cert.pem()).unwrap();
    std::fs::write(certs.cert(), cert.pem()).unwrap();
    std::fs::write(certs.key(), key.serialize_pem()).unwrap();
    if format == "traditional" {
        let out = Command::new("openssl")
            .args(["pkey", "-traditional", "-in"])
            .arg(certs.key())
            .arg("-out")
            .arg(certs.dir.path().join("traditional.key"))
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(certs.dir.path().join("traditional.key"), certs.key()).unwrap();
        let text = std::fs::read_to_string(certs.key()).unwrap();
        assert!(
            text.contains(concat!("BEGIN RSA PRIVATE", " KEY"))
                || text.contains(concat!("BEGIN EC PRIVATE", " KEY")),
            "{text}"
        );
    }
    certs
}

async fn ping_through(proxy: &Proxy) {
    let mut raw = proxy.raw().await;
    raw.send(&[cmd(&["AUTH", APP_USER, APP_PASSWORD]), cmd(&["PING"])].concat())
        .await;
    assert_eq!(raw.replies(2).await, b"+OK\r\n+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_ecdsa_and_ed25519_keys_in_pkcs8_pkcs1_and_sec1_all_work() {
    let redis = Redis::start();
    for (alg, format) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, "pkcs8"),
        (&rcgen::PKCS_ECDSA_P256_SHA256, "traditional"),
        (&rcgen::PKCS_ECDSA_P384_SHA384, "pkcs8"),
        (&rcgen::PKCS_RSA_SHA256, "pkcs8"),
        (&rcgen::PKCS_RSA_SHA256, "traditional"),
        (&rcgen::PKCS_ED25519, "pkcs8"),
    ] {
        let proxy = proxy()
            .start_with_certs(&redis, certs_with(alg, format))
            .await;
        ping_through(&proxy).await;
    }
}

fn client_config(
    ca: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in redward::tls::load_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn handshake(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // Complete a round trip so TLS 1.3 tickets (sent after the handshake) arrive.
    tls.write_all(&cmd(&["PING"])).await?;
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).await?;
    assert!(n > 0);
    Ok(tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_served_and_min_version_1_3_refuses_1_2() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let tls = handshake(proxy.addr, Arc::new(client_config(&proxy.certs.ca(), &[v])))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(v.version));
    }
    let strict = common::proxy()
        .tls_option("min_version: \"1.3\"")
        .start(&redis)
        .await;
    let only12 = Arc::new(client_config(
        &strict.certs.ca(),
        &[&rustls::version::TLS12],
    ));
    assert!(handshake(strict.addr, only12).await.is_err());
    let ok13 = Arc::new(client_config(
        &strict.certs.ca(),
        &[&rustls::version::TLS13],
    ));
    assert!(handshake(strict.addr, ok13).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_with_tls_1_3_tickets_and_tls_1_2_ids() {
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // One client config = one session cache, as a real client keeps it.
        let config = Arc::new(client_config(&proxy.certs.ca(), &[v]));
        let first = handshake(proxy.addr, Arc::clone(&config)).await.unwrap();
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        drop(first);
        let second = handshake(proxy.addr, config).await.unwrap();
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{v:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_redis_that_speaks_tls_itself_is_reached_over_tls() {
    // A Redis with only a TLS port, certificate from redward's own generator.
    let upstream_certs = Certs::new();
    let upstream = Redis::start_with(
        RedisOptions::with_acl(vec![
            "user default off".to_owned(),
            format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
        ])
        .tls_only(&upstream_certs)
        .args(["--tls-auth-clients", "no"]),
    );
    let port = upstream.port;
    // The address must be a name the upstream certificate carries (localhost).
    let plain = Redis::start();
    let certs = Certs::new();
    let text = common::proxy().config_text(&plain, &certs).replace(
        &format!("  address: \"{}\"\n", plain.addr()),
        &format!(
            "  address: \"localhost:{port}\"\n  tls: {{ ca: {} }}\n",
            upstream_certs.ca().display()
        ),
    );
    let addr = serve_config_text(&certs, &text).await;
    let mut raw = Raw::tls(addr, &certs.ca()).await;
    raw.send(
        &[
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["SET", "t", "over tls"]),
            cmd(&["GET", "t"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(raw.replies(3).await, b"+OK\r\n+OK\r\n$8\r\nover tls\r\n");
}
