//! Promise: with client certificates (mTLS), a verified certificate logs its holder in as the
//! redward user it names; one that names nobody falls back to AUTH (`optional`) or is refused
//! (`required`); a revoked one (CRL) never gets through.

mod common;

use std::sync::Arc;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct ClientPki {
    dir: tempfile::TempDir,
    /// (cert DER, key DER) by common name.
    clients: Vec<(String, CertificateDer<'static>, PrivateKeyDer<'static>)>,
}

fn client_pki(names: &[&str], revoked: &[&str]) -> ClientPki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name.push(DnType::CommonName, "client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    std::fs::write(dir.path().join("clients-ca.crt"), ca_cert.pem()).unwrap();
    let mut clients = Vec::new();
    let mut revoked_certs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, *name);
        p.serial_number = Some(SerialNumber::from(100 + i as u64));
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer).unwrap();
        if revoked.contains(name) {
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from(100 + i as u64),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        clients.push((
            (*name).to_owned(),
            cert.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        ));
    }
    let crl = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    std::fs::write(dir.path().join("revoked.crl"), crl.pem().unwrap()).unwrap();
    ClientPki { dir, clients }
}

async fn start(redis: &Redis, pki: &ClientPki, mode: &str) -> Proxy {
    let opts = format!(
        "client_ca: {}, client_auth: {mode}, client_identity: cn, crl: [{}]",
        pki.dir.path().join("clients-ca.crt").display(),
        pki.dir.path().join("revoked.crl").display()
    );
    proxy().tls_option(&opts).start(redis).await
}

/// TLS with the named client certificate (or none); then the replies to `req`.
async fn session(
    proxy: &Proxy,
    pki: &ClientPki,
    cert: Option<&str>,
    req: &[u8],
    n: usize,
) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in redward::tls::load_certs(&proxy.certs.ca()).unwrap() {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match cert.and_then(|name| pki.clients.iter().find(|c| c.0 == name)) {
        Some((_, der, key)) => builder
            .with_client_auth_cert(vec![der.clone()], key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    tls.write_all(req).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while count_frames(&out) < n {
        let k = tls.read(&mut buf).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        out.extend_from_slice(&buf[..k]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_log_in_their_user_or_fall_back_to_auth() {
    let redis = Redis::start();
    let pki = client_pki(&["app", "stranger", "stolen"], &["stolen"]);
    let proxy = start(&redis, &pki, "optional").await;
    let whoami = [cmd(&["ACL", "WHOAMI"]), cmd(&["PING"])].concat();
    assert_eq!(
        session(&proxy, &pki, Some("app"), &whoami, 2)
            .await
            .unwrap(),
        "$3\r\napp\r\n+PONG\r\n"
    );
    // A certificate naming no user, or none at all: AUTH as usual.
    for cert in [Some("stranger"), None] {
        let r = session(
            &proxy,
            &pki,
            cert,
            &[
                cmd(&["PING"]),
                cmd(&["AUTH", APP_USER, APP_PASSWORD]),
                cmd(&["PING"]),
            ]
            .concat(),
            3,
        )
        .await;
        assert_eq!(
            r.unwrap(),
            "-NOAUTH Authentication required.\r\n+OK\r\n+PONG\r\n"
        );
    }
    // A revoked certificate is refused at the handshake (or right after it, in TLS 1.3).
    assert!(session(&proxy, &pki, Some("stolen"), &whoami, 2)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_user_that_may_get_but_not_set_gets_exactly_that() {
    let redis = Redis::start();
    let pki = client_pki(&["reader"], &[]);
    let opts = format!(
        "client_ca: {}, client_auth: required, client_identity: cn",
        pki.dir.path().join("clients-ca.crt").display()
    );
    let proxy = proxy()
        .user("reader", "on nopass ~* &* -@all +get")
        .tls_option(&opts)
        .start(&redis)
        .await;
    let r = session(
        &proxy,
        &pki,
        Some("reader"),
        &[cmd(&["GET", "k"]), cmd(&["SET", "k", "v"])].concat(),
        2,
    )
    .await;
    assert_eq!(
        r.unwrap(),
        "$-1\r\n-NOPERM this user has no permissions to run the 'set' command\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_admit_only_known_users() {
    let redis = Redis::start();
    let pki = client_pki(&["app", "stranger"], &[]);
    let proxy = start(&redis, &pki, "required").await;
    let ping = cmd(&["PING"]);
    assert_eq!(
        session(&proxy, &pki, Some("app"), &ping, 1).await.unwrap(),
        "+PONG\r\n"
    );
    assert!(session(&proxy, &pki, None, &ping, 1).await.is_err());
    assert!(session(&proxy, &pki, Some("stranger"), &ping, 1)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_identity_and_crl_changes_apply_on_reload() {
    let redis = Redis::start();
    let pki = client_pki(&["app"], &["app"]);
    let ca = pki.dir.path().join("clients-ca.crt");
    let tls = |extra: &str| {
        format!(
            "client_ca: {}, client_auth: optional, client_identity: {extra}",
            ca.display()
        )
    };
    let proxy = proxy().tls_option(&tls("cn")).start(&redis).await;
    let whoami = cmd(&["ACL", "WHOAMI"]);
    assert_eq!(
        session(&proxy, &pki, Some("app"), &whoami, 1)
            .await
            .unwrap(),
        "$3\r\napp\r\n"
    );
    let started = std::fs::read_to_string(&proxy.config_path)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{}", proxy.port()));
    let reload = |identity: &str| {
        std::fs::write(
            &proxy.config_path,
            started.replace(&tls("cn"), &tls(identity)),
        )
        .unwrap();
        proxy.reloader.reload().expect("reload");
    };
    // The certificate has no DNS name: with `client_identity: dns` it names nobody.
    reload("dns");
    assert_eq!(
        session(&proxy, &pki, Some("app"), &whoami, 1)
            .await
            .unwrap(),
        "-NOAUTH Authentication required.\r\n"
    );
    // A CRL that revokes it: refused.
    let crl = pki.dir.path().join("revoked.crl");
    reload(&format!("cn, crl: [{}]", crl.display()));
    assert!(session(&proxy, &pki, Some("app"), &whoami, 1)
        .await
        .is_err());
}
