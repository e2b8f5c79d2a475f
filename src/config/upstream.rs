//! `upstream:`: where Redis is (a fixed `address`, or the master a set of `sentinel`s name),
//! the credential redward logs in with, TLS, timeouts and shared connections.

use std::path::{Path, PathBuf};

use super::validate::{
    expand_env, resolve, ClusterConfig, IdentityMode, Secret, SentinelConfig, UpstreamAddr,
    UpstreamConfig, UpstreamTls, DEFAULT_CONNECT_TIMEOUT, DEFAULT_SHARED_CONNECTIONS,
    MAX_SHARED_CONNECTIONS,
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

/// `host:port` over TCP, for `field`.
fn tcp_address(field: &str, text: &str, base: &Path) -> Result<(String, u16), ConfigError> {
    match address(field, text, base)? {
        UpstreamAddr::Tcp { host, port } => Ok((host, port)),
        UpstreamAddr::Unix(_) => Err(ConfigError::invalid(
            field,
            "a cluster is reached over TCP (host:port)",
        )),
    }
}

/// `upstream.cluster`.
fn cluster(raw: super::RawCluster, base: &Path) -> Result<ClusterConfig, ConfigError> {
    if raw.seeds.is_empty() {
        return Err(ConfigError::invalid(
            "upstream.cluster.seeds",
            "list at least one node (host:port)",
        ));
    }
    let seeds = raw
        .seeds
        .iter()
        .enumerate()
        .map(|(i, s)| tcp_address(&format!("upstream.cluster.seeds[{i}]"), s, base))
        .collect::<Result<Vec<_>, _>>()?;
    let n = raw.node_listeners;
    let bind = n.bind.parse().map_err(|_| {
        ConfigError::invalid(
            "upstream.cluster.node_listeners.bind",
            format!("`{}` is not an IP address", n.bind),
        )
    })?;
    let field = "upstream.cluster.node_listeners.ports";
    let bad = || ConfigError::invalid(field, format!("`{}`: first-last, e.g. 7101-7199", n.ports));
    let (first, last) = match n.ports.split_once('-') {
        Some((a, b)) => (a.trim().parse::<u16>(), b.trim().parse::<u16>()),
        None => (n.ports.trim().parse::<u16>(), n.ports.trim().parse::<u16>()),
    };
    let (first, last) = (first.map_err(|_| bad())?, last.map_err(|_| bad())?);
    if first == 0 || last < first {
        return Err(bad());
    }
    if n.announce_host.is_empty() || n.announce_host.contains([' ', ':', '@', ',']) {
        return Err(ConfigError::invalid(
            "upstream.cluster.node_listeners.announce_host",
            "a host name or IPv4 address clients can reach",
        ));
    }
    let mut allow = Vec::new();
    for (i, cidr) in n.allow.iter().flatten().enumerate() {
        let net = cidr
            .parse::<ipnet::IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                ConfigError::invalid(
                    format!("upstream.cluster.node_listeners.allow[{i}]"),
                    format!("`{cidr}` is not a network (10.0.0.0/8) or an address"),
                )
            })?;
        allow.push(net);
    }
    if n.allow.as_ref().is_some_and(Vec::is_empty) {
        return Err(ConfigError::invalid(
            "upstream.cluster.node_listeners.allow",
            "list at least one network, or leave it out for the seeds' own addresses",
        ));
    }
    let shared_ports = match n.port_map.as_deref() {
        None | Some("cluster") => true,
        Some("local") => false,
        Some(other) => {
            return Err(ConfigError::invalid(
                "upstream.cluster.node_listeners.port_map",
                format!("`{other}`: cluster (shared by every instance) or local"),
            ))
        }
    };
    let grace = n.grace.unwrap_or(std::time::Duration::from_secs(15));
    if grace.is_zero() {
        return Err(ConfigError::invalid(
            "upstream.cluster.node_listeners.grace",
            "more than 0 (a node missing from one reading is not gone)",
        ));
    }
    Ok(ClusterConfig {
        seeds,
        bind,
        ports: (first, last),
        announce_host: n.announce_host,
        allow,
        shared_ports,
        grace,
        quarantine: n.quarantine.unwrap_or(std::time::Duration::from_secs(60)),
    })
}

/// `upstream.cluster_announce`.
fn cluster_announce(
    raw: std::collections::BTreeMap<String, String>,
    base: &Path,
) -> Result<Vec<super::AnnouncePair>, ConfigError> {
    let mut out = Vec::new();
    for (node, announced) in raw {
        let field = format!("upstream.cluster_announce[{node}]");
        let from = tcp_address(&field, &node, base)?;
        let to = tcp_address(&field, &announced, base)?;
        out.push((from, to));
    }
    if out.is_empty() {
        return Err(ConfigError::invalid(
            "upstream.cluster_announce",
            "map each node's host:port to the host:port clients reach it at",
        ));
    }
    Ok(out)
}

/// Where the upstream is: one address, the master a set of Sentinels name (its first
/// Sentinel's address stands in until asked), or a cluster's first seed.
fn target(
    address_raw: Option<String>,
    sentinel_raw: Option<super::RawSentinel>,
    cluster: Option<&ClusterConfig>,
    base: &Path,
) -> Result<(UpstreamAddr, Option<SentinelConfig>), ConfigError> {
    Ok(match (address_raw, sentinel_raw) {
        (None, None) if cluster.is_some() => {
            let (host, port) = cluster
                .and_then(|c| c.seeds.first().cloned())
                .unwrap_or_default();
            (UpstreamAddr::Tcp { host, port }, None)
        }
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
                "missing: set address (host:port or unix:/path), sentinel or cluster",
            ))
        }
    })
}

/// `upstream.tls`: the name a server's certificate is checked against is required where the
/// address moves (Sentinel, cluster) or is a socket.
fn upstream_tls(
    raw: Option<super::RawUpstreamTls>,
    addr: &UpstreamAddr,
    moving: bool,
    base: &Path,
) -> Result<Option<UpstreamTls>, ConfigError> {
    Ok(match raw {
        None => None,
        Some(t) => {
            let server_name = match (t.server_name, addr) {
                (Some(n), _) => n,
                (None, _) if moving => {
                    return Err(ConfigError::invalid(
                        "upstream.tls.server_name",
                        "required with sentinel or cluster (the nodes' addresses change)",
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
    })
}

/// `upstream.identity`: `per_user` unless `shared` is asked for.
fn identity(raw: Option<&str>) -> Result<IdentityMode, ConfigError> {
    Ok(match raw {
        None | Some("per_user") => IdentityMode::PerUser,
        Some("shared") => IdentityMode::Shared,
        Some(other) => {
            return Err(ConfigError::invalid(
                "upstream.identity",
                format!("`{other}`: expected per_user or shared"),
            ))
        }
    })
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
    // A single rogue or compromised Sentinel must not choose the master (and collect the
    // credential): by default a majority has to agree.
    let quorum = match raw.quorum {
        None => addresses.len() / 2 + 1,
        Some(q) if q == 0 || q > addresses.len() => {
            return Err(ConfigError::invalid(
                "upstream.sentinel.quorum",
                format!(
                    "{q}: must be 1 to the number of addresses ({})",
                    addresses.len()
                ),
            ))
        }
        Some(q) => q,
    };
    Ok(SentinelConfig {
        master: raw.master,
        addresses,
        username: raw.username,
        password,
        tls,
        quorum,
    })
}

pub(super) fn upstream(
    raw: super::RawUpstream,
    base: &Path,
) -> Result<UpstreamConfig, ConfigError> {
    let cluster = match (raw.cluster, &raw.address, &raw.sentinel) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ConfigError::invalid(
                "upstream.cluster",
                "set address, sentinel or cluster, only one",
            ))
        }
        (Some(c), None, None) => Some(cluster(c, base)?),
        (None, ..) => None,
    };
    let cluster_announce = match raw.cluster_announce {
        Some(_) if raw.address.is_none() => {
            return Err(ConfigError::invalid(
                "upstream.cluster_announce",
                "only with upstream.address (the node this redward sits beside)",
            ))
        }
        Some(m) => cluster_announce(m, base)?,
        None => Vec::new(),
    };
    let (addr, sentinel) = target(raw.address, raw.sentinel, cluster.as_ref(), base)?;
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
    let tls = upstream_tls(
        raw.tls,
        &addr,
        sentinel.is_some() || cluster.is_some(),
        base,
    )?;
    let identity = identity(raw.identity.as_deref())?;
    Ok(UpstreamConfig {
        identity,
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
        cluster,
        cluster_announce,
    })
}
