//! `listen:`: each listener's address, TLS (server certificate, client certificates and the
//! identity taken from them) and PROXY protocol settings, checked.

use std::path::Path;

use super::validate::{
    resolve, ClientAuth, ClientCerts, ClientIdentity, ClientTls, ListenerConfig, ProxyProtocol,
};
use super::{socket_addr, ConfigError, RawTls};

/// `listen:`: at least one listener, each checked.
pub(super) fn listeners(
    listen: Vec<super::RawListener>,
    base: &Path,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    if listen.is_empty() {
        return Err(ConfigError::invalid(
            "listen",
            "at least one listener is required",
        ));
    }
    let mut listeners = Vec::with_capacity(listen.len());
    for (i, l) in listen.into_iter().enumerate() {
        let field = format!("listen[{i}].address");
        let addr = socket_addr(&field, &l.address)?;
        let tls = match l.tls {
            RawTls::On(t) => Some(server_tls(t, i, base)?),
            RawTls::Off => {
                if !addr.ip().is_loopback() && !l.allow_plaintext_non_loopback {
                    return Err(ConfigError::invalid(
                        format!("listen[{i}].tls"),
                        format!(
                            "`tls: off` on non-loopback address {addr} would send passwords in clear; \
                             set `allow_plaintext_non_loopback: true` on this listener if that is really meant"
                        ),
                    ));
                }
                None
            }
        };
        listeners.push(ListenerConfig {
            addr,
            tls,
            allow: l.allow,
            deny: l.deny,
            proxy_protocol: match l.proxy_protocol {
                super::RawProxyProtocol::Off => ProxyProtocol::Off,
                super::RawProxyProtocol::AnyPeer => ProxyProtocol::AnyPeer,
                super::RawProxyProtocol::Trusted(nets) if nets.is_empty() => {
                    return Err(ConfigError::invalid(
                        format!("listen[{i}].proxy_protocol.trusted"),
                        "name at least one network (the load balancers' addresses)",
                    ))
                }
                super::RawProxyProtocol::Trusted(nets) => ProxyProtocol::Trusted(nets),
            },
        });
    }
    Ok(listeners)
}

/// `listen[i].tls`: the certificate, the minimum version, and the client certificates asked
/// for, with the CA they must chain to (both or neither).
fn server_tls(t: super::RawServerTls, i: usize, base: &Path) -> Result<ClientTls, ConfigError> {
    let tls13_only = match t.min_version.as_deref() {
        None | Some("1.2") => false,
        Some("1.3") => true,
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("listen[{i}].tls.min_version"),
                format!("`{other}` is not supported (use \"1.2\" or \"1.3\")"),
            ))
        }
    };
    let field = |f: &str| format!("listen[{i}].tls.{f}");
    let auth = match t.client_auth.as_deref() {
        None | Some("none") => None,
        Some("optional") => Some(ClientAuth::Optional),
        Some("required") => Some(ClientAuth::Required),
        Some(other) => {
            return Err(ConfigError::invalid(
                field("client_auth"),
                format!("`{other}`: use none, optional or required"),
            ))
        }
    };
    let identity = match t.client_identity.as_deref() {
        None | Some("cn") => ClientIdentity::CommonName,
        Some("dns") => ClientIdentity::Dns,
        Some("uri") => ClientIdentity::Uri,
        Some(other) => {
            return Err(ConfigError::invalid(
                field("client_identity"),
                format!("`{other}`: use cn, dns or uri"),
            ))
        }
    };
    let client_certs = match (auth, &t.client_ca) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                field("client_auth"),
                "client_ca is set: say client_auth: optional or required",
            ))
        }
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                field("client_ca"),
                "client_auth needs a client_ca",
            ))
        }
        (Some(auth), Some(ca)) => Some(ClientCerts {
            ca: resolve(base, ca),
            crls: t.crl.iter().map(|c| resolve(base, c)).collect(),
            auth,
            identity,
        }),
    };
    Ok(ClientTls {
        cert: resolve(base, &t.cert),
        key: resolve(base, &t.key),
        tls13_only,
        session_tickets: t.session_tickets.unwrap_or(true),
        client_certs,
    })
}
