//! TLS with rustls (aws-lc-rs, the one crypto provider built): the listeners' server configs,
//! the optional client config for an upstream that speaks TLS itself, and development
//! certificates (`redward gen-certs`).
//!
//! Certificates and keys are checked when the config is loaded, so a wrong path, an unreadable
//! key or a key that does not belong to the certificate stops start-up with the file's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::server::ServerSessionMemoryCache;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuth, ClientCerts, ClientIdentity, ClientTls, UpstreamTls};

/// Sessions remembered for ID-based resumption (TLS 1.2 clients without tickets). Each entry
/// is a few hundred bytes; 4096 covers a large fleet of clients reconnecting.
const SESSION_CACHE_ENTRIES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{cert} / {key}: the private key does not match the certificate")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Generate(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Reads every certificate in a PEM file (leaf first, then the chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Reads a PEM private key: PKCS#1 (`RSA PRIVATE KEY`), PKCS#8 (`PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`); RSA, ECDSA or Ed25519.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| file_err(path, format!("no usable private key: {e}")))
}

/// Builds a listener's server config. TLS 1.2 and 1.3 (or 1.3 only), stateless session tickets
/// and a session cache for resumption, no client certificates (yet).
pub fn server_config(tls: &ClientTls) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&tls.cert)?;
    let key = load_key(&tls.key)?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| file_err(&tls.key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = if tls.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)?;
    let builder = match &tls.client_certs {
        None => builder.with_no_client_auth(),
        Some(cc) => builder.with_client_cert_verifier(client_verifier(cc, provider)?),
    };
    let mut config = builder.with_single_cert(certified.cert, key)?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    if tls.session_tickets {
        config.ticketer = aws_lc_rs::Ticketer::new()?;
        // TLS 1.3 clients that resume send their ticket; two lets a client open two
        // connections in quick succession and resume both.
        config.send_tls13_tickets = 2;
    } else {
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// Verifies client certificates against `client_ca` (and the CRLs). With `optional`, a
/// client may also come without a certificate and use AUTH.
fn client_verifier(
    cc: &ClientCerts,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&cc.ca)? {
        roots
            .add(cert)
            .map_err(|e| file_err(&cc.ca, format!("bad CA certificate: {e}")))?;
    }
    let mut crls = Vec::new();
    for path in &cc.crls {
        let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
        let found = rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(&data)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(path, format!("not a PEM CRL file: {e}")))?;
        if found.is_empty() {
            return Err(file_err(path, "no X509 CRL block found"));
        }
        crls.extend(found);
    }
    let mut builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls);
    if cc.auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .map_err(|e| file_err(&cc.ca, format!("client certificate verifier: {e}")))
}

/// The name a verified client certificate gives its holder, from the configured field: the
/// subject's CN, or the first DNS or URI subject alternative name.
pub fn client_identity(cert: &CertificateDer<'_>, field: ClientIdentity) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    match field {
        ClientIdentity::CommonName => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        ClientIdentity::Dns | ClientIdentity::Uri => {
            let san = parsed.subject_alternative_name().ok()??;
            san.value
                .general_names
                .iter()
                .find_map(|n| match (n, field) {
                    (GeneralName::DNSName(d), ClientIdentity::Dns) => Some((*d).to_owned()),
                    (GeneralName::URI(u), ClientIdentity::Uri) => Some((*u).to_owned()),
                    _ => None,
                })
        }
    }
}

/// Client config for an upstream Redis that terminates TLS itself.
pub fn upstream_client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            for cert in load_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| file_err(ca, format!("bad CA certificate: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Files written by [`generate_dev_certs`].
pub struct DevCerts {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Makes a throwaway CA and an ECDSA P-256 server certificate for `localhost`, `127.0.0.1`,
/// `::1` and `extra_names`, valid for a year. For development and tests only: the CA key sits
/// next to the certificates.
pub fn generate_dev_certs(dir: &Path, extra_names: &[String]) -> Result<DevCerts, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());

    let ca_key = KeyPair::generate().map_err(gen)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "redward development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut ca_params);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra_names.iter().cloned());
    let server_key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(names).map_err(gen)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "redward");
    set_validity(&mut params);
    let server_cert = params.signed_by(&server_key, &issuer).map_err(gen)?;

    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let out = DevCerts {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    write_file(&out.ca_cert, ca_cert.pem().as_bytes(), false)?;
    write_file(&out.ca_key, ca_key.serialize_pem().as_bytes(), true)?;
    write_file(&out.server_cert, server_cert.pem().as_bytes(), false)?;
    write_file(&out.server_key, server_key.serialize_pem().as_bytes(), true)?;
    Ok(out)
}

fn set_validity(params: &mut rcgen::CertificateParams) {
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(365 * 24 * 3600)).into();
}

/// Writes a file; private keys are created with mode 0600 so no other user can read them.
fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = private;
    let mut f = opts.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(data).map_err(|e| file_err(path, e))
}
