//! Promise: behind a load balancer, the PROXY protocol header (v1 or v2) names the real client,
//! and that address is the one allow-lists, limits and the audit log see.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(redis: &Redis) -> (std::net::SocketAddr, Certs) {
    let certs = Certs::new();
    let text = proxy().config_text(redis, &certs).replacen(
        "    tls: {",
        "    proxy_protocol: true\n    allow: [\"203.0.113.0/24\"]\n    tls: {",
        1,
    );
    let addr = serve_config_text(&certs, &text).await;
    (addr, certs)
}

/// TCP, then `header`, then TLS over the same stream.
async fn connect_with_header(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    header: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tls_after_header(addr, ca, None, header, rustls::DEFAULT_VERSIONS).await
}

async fn roundtrip(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    req: &[u8],
    n: usize,
) -> String {
    tls.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while count_frames(&out) < n {
        let k = tls.read(&mut buf).await.unwrap();
        assert!(k > 0, "closed; got {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..k]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_client_address_from_v1_and_v2_headers_is_what_redward_checks_and_logs() {
    let redis = Redis::start();
    let (addr, certs) = start(&redis).await;

    // v1, a client inside the allowed network: served, and the audit trail names it.
    let mut tls = connect_with_header(
        addr,
        &certs.ca(),
        b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 6380\r\n",
    )
    .await
    .expect("allowed client");
    let r = roundtrip(
        &mut tls,
        &[
            cmd(&["AUTH", APP_USER, "wrong"]),
            cmd(&["AUTH", APP_USER, APP_PASSWORD]),
            cmd(&["ACL", "LOG", "1"]),
        ]
        .concat(),
        3,
    )
    .await;
    assert!(r.contains("addr=203.0.113.7:40000"), "{r}");

    // v2 (binary), also allowed.
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "203.0.113.9:41000".parse::<std::net::SocketAddr>().unwrap(),
            "10.0.0.1:6380".parse::<std::net::SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let mut tls = connect_with_header(addr, &certs.ca(), &v2)
        .await
        .expect("v2 header");
    assert_eq!(
        roundtrip(
            &mut tls,
            &[cmd(&["AUTH", APP_USER, APP_PASSWORD]), cmd(&["PING"])].concat(),
            2
        )
        .await,
        "+OK\r\n+PONG\r\n"
    );

    // A client outside the allow-list (by its real address) is refused, although the balancer
    // itself (127.0.0.1) connects.
    assert!(connect_with_header(
        addr,
        &certs.ca(),
        b"PROXY TCP4 198.51.100.1 10.0.0.1 40000 6380\r\n"
    )
    .await
    .is_err());
    // No header at all: refused.
    assert!(connect_with_header(addr, &certs.ca(), b"").await.is_err());
}
