//! `upstream:`: where Redis is (a fixed `address`, or the master a set of `sentinel`s name),
//! the credential redward logs in with, TLS, timeouts and shared connections.

use std::path::{Path, PathBuf};

use super::validate::{
    expand_env, resolve, Secret, SentinelConfig, UpstreamAddr, UpstreamConfig, UpstreamTls,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_SHARED_CONNECTIONS, MAX_SHARED_CONNECTIONS,
};
use super::ConfigError;

/// `host:port` or `unix:/path`, for `field`.
fn address(field: &str, text: &str, base: &Path) -> Result<UpstreamAddr, ConfigError> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(ConfigError::invalid(field, "unix: needs a socket path"));
        }
        return Ok(UpstreamAddr::Unix(resolve(base, Path::new(path))));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| {
        ConfigError::invalid(field, format!("`{text}` is not host:port or unix:/path"))
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| ConfigError::invalid(field, format!("`{text}`: invalid port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(ConfigError::invalid(field, "missing host"));
    }
    Ok(UpstreamAddr::Tcp {
        host: host.to_owned(),
        port,
    })
}

/// `password` or `password_file` (not both), for the fields under `prefix`.
fn password(
    prefix: &str,
    password: Option<String>,
    file: Option<PathBuf>,
    base: &Path,
) -> Result<Option<Secret>, ConfigError> {
    match (password, file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            format!("{prefix}.password"),
            "set password or password_file, not both",
        )),
        (Some(p), None) => Ok(Some(Secret(expand_env(&format!("{prefix}.password"), &p)?))),
        (None, Some(f)) => {
            let field = format!("{prefix}.password_file");
            let f = PathBuf::from(expand_env(&field, &f.to_string_lossy())?);
            let path = resolve(base, &f);
            let text =
                std::fs::read_to_string(&path).map_err(|e| ConfigError::file(&field, &path, e))?;
            let p = text.trim_end_matches(['\r', '\n']).to_owned();
            if p.is_empty() {
                return Err(ConfigError::file(field, &path, "file is empty"));
            }
            Ok(Some(Secret(p)))
        }
        (None, None) => Ok(None),
    }
}

/// `upstream.sentinel`.
fn sentinel(raw: super::RawSentinel, base: &Path) -> Result<SentinelConfig, ConfigError> {
    if raw.master.is_empty() {
        return Err(ConfigError::invalid(
            "upstream.sentinel.master",
            "must not be empty",
        ));
    }
    if raw.addresses.is_empty() {
        return Err(ConfigError::invalid(
            "upstream.sentinel.addresses",
            "list at least one Sentinel (host:port)",
        ));
    }
    let mut addresses = Vec::new();
    for (i, a) in raw.addresses.iter().enumerate() {
        match address(&format!("upstream.sentinel.addresses[{i}]"), a, base)? {
            UpstreamAddr::Tcp { host, port } => addresses.push((host, port)),
            UpstreamAddr::Unix(_) => {
                return Err(ConfigError::invalid(
                    format!("upstream.sentinel.addresses[{i}]"),
                    "Sentinels are reached over TCP (host:port)",
                ))
            }
        }
    }
    let password = password("upstream.sentinel", raw.password, raw.password_file, base)?;
    if raw.username.is_some() && password.is_none() {
        return Err(ConfigError::invalid(
            "upstream.sentinel.username",
            "a username needs password or password_file",
        ));
    }
    let tls = raw.tls.map(|t| UpstreamTls {
        ca: t.ca.map(|p| resolve(base, &p)),
        server_name: t
            .server_name
            .unwrap_or_else(|| addresses.first().map(|a| a.0.clone()).unwrap_or_default()),
    });
    Ok(SentinelConfig {
        master: raw.master,
        addresses,
        username: raw.username,
        password,
        tls,
    })
}

pub(super) fn upstream(
    raw: super::RawUpstream,
    base: &Path,
) -> Result<UpstreamConfig, ConfigError> {
    let (addr, sentinel) = match (raw.address, raw.sentinel) {
        (Some(a), None) => (address("upstream.address", &a, base)?, None),
        (None, Some(s)) => {
            let s = sentinel(s, base)?;
            let (host, port) = s.addresses.first().cloned().unwrap_or_default();
            (UpstreamAddr::Tcp { host, port }, Some(s))
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "upstream",
                "set address (one Redis) or sentinel (the master Sentinels name), not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::invalid(
                "upstream.address",
                "missing: set address (host:port or unix:/path) or sentinel",
            ))
        }
    };
    let password = password("upstream", raw.password, raw.password_file, base)?;
    let username = match raw.username {
        Some(u) => Some(expand_env("upstream.username", &u)?),
        None => None,
    };
    if username.is_some() && password.is_none() {
        return Err(ConfigError::invalid(
            "upstream.username",
            "a username needs password or password_file",
        ));
    }
    let tls = match raw.tls {
        None => None,
        Some(t) => {
            let server_name = match (t.server_name, &addr) {
                (Some(n), _) => n,
                (None, _) if sentinel.is_some() => {
                    return Err(ConfigError::invalid(
                        "upstream.tls.server_name",
                        "required with sentinel (the master's address changes)",
                    ))
                }
                (None, UpstreamAddr::Tcp { host, .. }) => host.clone(),
                (None, UpstreamAddr::Unix(_)) => {
                    return Err(ConfigError::invalid(
                        "upstream.tls.server_name",
                        "required with a unix socket",
                    ))
                }
            };
            Some(UpstreamTls {
                ca: t.ca.map(|p| resolve(base, &p)),
                server_name,
            })
        }
    };
    Ok(UpstreamConfig {
        addr,
        sentinel,
        username,
        password,
        connect_timeout: match raw.connect_timeout {
            Some(d) if d.is_zero() => {
                return Err(ConfigError::invalid(
                    "upstream.connect_timeout",
                    "must be greater than 0",
                ))
            }
            Some(d) => d,
            None => DEFAULT_CONNECT_TIMEOUT,
        },
        tls,
        shared_connections: match raw.shared_connections {
            Some(n) if n > MAX_SHARED_CONNECTIONS => {
                return Err(ConfigError::invalid(
                    "upstream.shared_connections",
                    format!("at most {MAX_SHARED_CONNECTIONS}"),
                ))
            }
            Some(n) => n,
            None => DEFAULT_SHARED_CONNECTIONS,
        },
    })
}
