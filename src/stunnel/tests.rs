use super::*;
use crate::config::{self, RawConfig, RawServerTls, RawTls};

/// Converts, and checks the YAML is a config redward accepts as written.
fn conv(text: &str) -> (RawConfig, Conversion) {
    let c = convert(text);
    let raw =
        config::parse(&c.yaml).unwrap_or_else(|e| panic!("output does not parse: {e}\n{}", c.yaml));
    (raw, c)
}

fn tls(raw: &RawConfig, i: usize) -> &RawServerTls {
    match &raw.listen[i].tls {
        RawTls::On(t) => t,
        RawTls::Off => panic!("listener {i} is plaintext"),
    }
}

/// The warning that mentions `needle`; fails listing all of them otherwise.
fn warning<'a>(c: &'a Conversion, needle: &str) -> &'a str {
    c.warnings
        .iter()
        .find(|w| w.contains(needle))
        .unwrap_or_else(|| panic!("no warning mentions {needle:?}: {:#?}", c.warnings))
}

const TYPICAL: &str = "\
; stunnel configuration for Redis, as in the usual guides
pid = /var/run/stunnel-redis.pid

[redis]
accept = 6380
connect = 127.0.0.1:6379
cert = /etc/stunnel/redis.pem
";

#[test]
fn typical_redis_conf() {
    let (raw, c) = conv(TYPICAL);
    assert_eq!(raw.listen.len(), 1);
    assert_eq!(raw.listen[0].address, "0.0.0.0:6380");
    let t = tls(&raw, 0);
    assert_eq!(t.cert.to_str(), Some("/etc/stunnel/redis.pem"));
    // stunnel's default: the key is in the certificate file.
    assert_eq!(t.key.to_str(), Some("/etc/stunnel/redis.pem"));
    assert_eq!(t.min_version.as_deref(), Some("1.2"));
    assert_eq!(raw.upstream.address.as_deref(), Some("127.0.0.1:6379"));
    assert!(raw.upstream.username.is_none() && raw.upstream.password_file.is_none());
    assert!(raw.users.is_empty());
    assert!(c.yaml.starts_with("# Converted from stunnel config"));
    assert!(c.yaml.contains("review before use"));
    assert!(c.yaml.contains("# allow:"));
    assert!(c.yaml.contains("# password_file:") && c.yaml.contains("redward hash-password"));
    assert!(warning(&c, "line 2: pid =").contains("systemd"));
    assert!(warning(&c, "line 5: [redis] accept = 6380").contains("every interface"));
    assert!(warning(&c, "no `key`").contains("first one"));
    warning(&c, "users: []");
    warning(&c, "upstream.password_file");
    assert!(c.warnings.iter().all(|w| !w.contains('\n')));
}

#[test]
fn key_cafile_and_verify() {
    let (raw, c) = conv(
        "[redis]\naccept = 127.0.0.1:6380\nconnect = 6379\ncert = /etc/stunnel/redis.crt\n\
         key = /etc/stunnel/redis.key\nCAfile = /etc/stunnel/clients-ca.pem\n\
         CRLfile = /etc/stunnel/crl.pem\nverify = 2\n",
    );
    assert_eq!(raw.listen[0].address, "127.0.0.1:6380");
    assert!(
        !c.yaml.contains("# allow:"),
        "loopback needs no allow example"
    );
    assert_eq!(tls(&raw, 0).key.to_str(), Some("/etc/stunnel/redis.key"));
    // Port only: stunnel connects to localhost.
    assert_eq!(raw.upstream.address.as_deref(), Some("127.0.0.1:6379"));
    assert!(c
        .yaml
        .contains("# client_ca: \"/etc/stunnel/clients-ca.pem\""));
    assert!(c.yaml.contains("# client_crl: \"/etc/stunnel/crl.pem\""));
    assert!(warning(&c, "CAfile = /etc/stunnel/clients-ca.pem").contains("not verified"));
    warning(&c, "CRLfile = /etc/stunnel/crl.pem");
    assert!(warning(&c, "verify = 2").contains("not supported yet"));
    assert!(c.warnings.iter().all(|w| !w.contains("no `key`")));
    assert!(c.warnings.iter().all(|w| !w.contains("accept =")));
}

#[test]
fn tls_versions() {
    let base = "[r]\naccept = 6380\nconnect = 6379\ncert = /c.pem\nkey = /k.pem\n";
    let (raw, c) = conv(&format!("{base}sslVersionMin = TLSv1.3\n"));
    assert_eq!(tls(&raw, 0).min_version.as_deref(), Some("1.3"));
    assert!(c.warnings.iter().all(|w| !w.contains("sslVersion")));

    let (raw, c) = conv(&format!("{base}sslVersionMin = TLSv1.2\n"));
    assert_eq!(tls(&raw, 0).min_version.as_deref(), Some("1.2"));
    assert!(c.warnings.iter().all(|w| !w.contains("sslVersion")));

    let (raw, c) = conv(&format!("{base}sslVersion = TLSv1\n"));
    assert_eq!(tls(&raw, 0).min_version.as_deref(), Some("1.2"));
    assert!(warning(&c, "sslVersion = TLSv1:").contains("TLS 1.2 and 1.3 only"));

    let (raw, c) = conv(&format!("{base}sslVersion = TLSv1.2\n"));
    assert_eq!(tls(&raw, 0).min_version.as_deref(), Some("1.2"));
    assert!(warning(&c, "sslVersion = TLSv1.2").contains("also accepts TLS 1.3"));

    let (_, c) = conv(&format!("{base}sslVersionMax = TLSv1.2\n"));
    warning(&c, "sslVersionMax = TLSv1.2");

    // A global default applies to every service; its warning is given once.
    let (raw, c) = conv(&format!(
        "sslVersionMin = TLSv1.1\n{base}[s]\naccept = 6381\nconnect = 6379\ncert = /c.pem\nkey = /k.pem\n"
    ));
    assert_eq!(raw.listen.len(), 2);
    assert_eq!(
        c.warnings.iter().filter(|w| w.contains("TLSv1.1")).count(),
        1,
        "{:#?}",
        c.warnings
    );
}

#[test]
fn two_services_one_upstream() {
    let (raw, c) = conv(
        "cert = /etc/stunnel/redis.pem\nkey = /etc/stunnel/redis.key\n\n\
         [redis-v4]\naccept = 0.0.0.0:6380\nconnect = 127.0.0.1:6379\n\n\
         [redis-v6]\naccept = :::6380\nconnect = 127.0.0.1:6379\n",
    );
    let addrs: Vec<&str> = raw.listen.iter().map(|l| l.address.as_str()).collect();
    assert_eq!(addrs, ["0.0.0.0:6380", "[::]:6380"]);
    for i in 0..2 {
        assert_eq!(tls(&raw, i).cert.to_str(), Some("/etc/stunnel/redis.pem"));
        assert_eq!(tls(&raw, i).key.to_str(), Some("/etc/stunnel/redis.key"));
    }
    assert_eq!(raw.upstream.address.as_deref(), Some("127.0.0.1:6379"));
    // Explicit wildcard addresses are what was asked for: no warning, but the allow example.
    assert!(c.warnings.iter().all(|w| !w.contains("accept")));
    assert_eq!(c.yaml.matches("# allow:").count(), 2);
}

#[test]
fn several_connects_use_the_first() {
    let (raw, c) = conv(
        "[r]\naccept = 6380\nconnect = 10.0.0.1:6379\nconnect = 10.0.0.2:6379\ncert = /c.pem\n",
    );
    assert_eq!(raw.upstream.address.as_deref(), Some("10.0.0.1:6379"));
    assert!(warning(&c, "connect = 10.0.0.2:6379").contains("only the first"));
}

#[test]
fn services_with_different_upstreams() {
    let (raw, c) = conv(
        "[cache]\naccept = 6380\nconnect = 127.0.0.1:6379\ncert = /c.pem\n\
         [queue]\naccept = 6390\nconnect = 10.0.0.5:6379\ncert = /c.pem\nverify = 2\n",
    );
    assert_eq!(raw.listen.len(), 1);
    assert_eq!(raw.upstream.address.as_deref(), Some("127.0.0.1:6379"));
    let w = warning(&c, "[queue] connect = 10.0.0.5:6379");
    assert!(
        w.contains("one upstream") && w.contains("not converted"),
        "{w}"
    );
    // Options of a service that was not converted are not reported one by one.
    assert!(c.warnings.iter().all(|w| !w.contains("verify")));
}

#[test]
fn client_mode_is_not_converted() {
    let (raw, c) = conv(
        "[redis-client]\nclient = yes\naccept = 127.0.0.1:6379\nconnect = redis.example.com:6380\n\
         verifyChain = yes\n",
    );
    assert!(raw.listen.is_empty());
    assert!(c.yaml.contains("listen: []"));
    assert!(warning(&c, "[redis-client] client = yes").contains("not converted"));
    assert!(c.warnings.iter().all(|w| !w.contains("verifyChain")));

    // Beside a server service, only the server one is converted.
    let (raw, c) = conv(
        "[out]\nclient = yes\naccept = 6379\nconnect = remote:6380\n\
         [in]\nclient = no\naccept = 6380\nconnect = 6379\ncert = /c.pem\nkey = /k.pem\n",
    );
    assert_eq!(raw.listen.len(), 1);
    assert_eq!(raw.listen[0].address, "0.0.0.0:6380");
    warning(&c, "[out] client = yes");
}

#[test]
fn comments_case_and_spacing() {
    let text = "\u{feff}# stunnel.conf\r\n;pid = /run/x.pid\r\n   ; indented comment\r\n\
                FOREGROUND=yes\r\n\r\n[ redis ]\r\n\tACCEPT\t=\t192.168.1.10:6380  \r\n\
                Connect=   localhost:6379\r\n  CERT =/etc/ssl/redis.pem\r\nKey= /etc/ssl/redis.key\r\n\
                timeoutIDLE = 600\r\nthis line is junk\r\n";
    let (raw, c) = conv(text);
    assert_eq!(raw.listen[0].address, "192.168.1.10:6380");
    assert_eq!(raw.upstream.address.as_deref(), Some("localhost:6379"));
    assert_eq!(tls(&raw, 0).cert.to_str(), Some("/etc/ssl/redis.pem"));
    assert_eq!(tls(&raw, 0).key.to_str(), Some("/etc/ssl/redis.key"));
    assert_eq!(
        raw.limits.idle_timeout,
        Some(std::time::Duration::from_secs(600))
    );
    // Commented-out pid and foreground = yes need no warning; the junk line does.
    assert!(c
        .warnings
        .iter()
        .all(|w| !w.contains("pid") && !w.contains("FOREGROUND")));
    warning(&c, "line 12: `this line is junk`");
}

#[test]
fn unix_socket_upstream() {
    let (raw, c) = conv(
        "[redis]\naccept = 127.0.0.1:6380\nconnect = /var/run/redis/redis-server.sock\n\
         cert = /etc/stunnel/redis.pem\n",
    );
    assert_eq!(
        raw.upstream.address.as_deref(),
        Some("unix:/var/run/redis/redis-server.sock")
    );
    assert!(c.warnings.iter().all(|w| !w.contains("connect")));
    // A unix-socket accept cannot be a redward listener.
    let (raw, c) = conv(
        "[redis]\naccept = /run/stunnel.sock\nconnect = 6379\ncert = /etc/stunnel/redis.pem\n",
    );
    assert!(raw.listen.is_empty());
    warning(&c, "accept = /run/stunnel.sock");
}

#[test]
fn global_options_timeouts_and_log_level() {
    let (raw, c) = conv(
        "pid = /var/run/stunnel4/redis.pid\nsetuid = stunnel4\nsetgid = stunnel4\n\
         foreground = no\noutput = /var/log/stunnel.log\ndebug = daemon.7\nsocket = l:TCP_NODELAY=1\n\
         options = NO_SSLv2\noptions = NO_SSLv3\noptions = CIPHER_SERVER_PREFERENCE\n\
         renegotiation = no\nsessionCacheSize = 1000\nsessionCacheTimeout = 300\n\
         ciphers = ECDHE-RSA-AES256-GCM-SHA384\nciphersuites = TLS_AES_256_GCM_SHA384\n\
         delay = yes\nsni = redis:redis.example.com\nlibwrap = yes\n\
         [redis]\naccept = 6380\nconnect = 6379\ncert = /c.pem\nkey = /k.pem\n\
         TIMEOUTidle = 3600\nTIMEOUTconnect = 3\nTIMEOUTbusy = 300\nTIMEOUTclose = 0\n\
         sessionResume = no\nPSKsecrets = /etc/stunnel/psk.txt\nmadeUpOption = 1\n",
    );
    use std::time::Duration;
    assert_eq!(raw.limits.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(raw.upstream.connect_timeout, Some(Duration::from_secs(3)));
    assert_eq!(raw.log.level.as_deref(), Some("debug"));
    assert_eq!(tls(&raw, 0).session_tickets, Some(false));
    for (needle, reason) in [
        ("pid =", "systemd"),
        ("setuid =", "systemd"),
        ("setgid =", "systemd"),
        ("foreground = no", "foreground"),
        ("output =", "stderr"),
        ("socket =", "socket options"),
        ("options = CIPHER_SERVER_PREFERENCE", "no rustls equivalent"),
        ("sessionCacheSize", "session cache"),
        ("sessionCacheTimeout", "session cache"),
        ("ciphers =", "rustls"),
        ("ciphersuites =", "rustls"),
        ("sni =", "SNI"),
        ("libwrap =", "allow"),
        ("TIMEOUTbusy", "client_write_timeout"),
        ("TIMEOUTclose", "not configurable"),
        ("sessionResume = no", "session ID"),
        ("PSKsecrets", "PSK"),
        ("madeUpOption", "unknown"),
    ] {
        assert!(warning(&c, needle).contains(reason), "{needle}");
    }
    // Already what rustls does, or carried over: nothing to say.
    for quiet in [
        "NO_SSLv2",
        "NO_SSLv3",
        "renegotiation =",
        "delay =",
        "debug =",
        "TIMEOUTidle =",
        "TIMEOUTconnect =",
    ] {
        assert!(
            c.warnings.iter().all(|w| !w.contains(quiet)),
            "{quiet}: {:#?}",
            c.warnings
        );
    }
    // Warnings come in file order.
    let lines: Vec<usize> = c
        .warnings
        .iter()
        .filter_map(|w| w.strip_prefix("line ")?.split(':').next()?.parse().ok())
        .collect();
    assert!(lines.windows(2).all(|p| p[0] <= p[1]), "{lines:?}");
}

#[test]
fn accept_and_connect_forms() {
    let a = |v: &str| parse_accept(v).map(|a| (a.address, a.unspecified, a.bare));
    assert_eq!(a("6380"), Ok(("0.0.0.0:6380".into(), true, true)));
    assert_eq!(a("0.0.0.0:6380"), Ok(("0.0.0.0:6380".into(), true, false)));
    assert_eq!(
        a("127.0.0.1:6380"),
        Ok(("127.0.0.1:6380".into(), false, false))
    );
    assert_eq!(a(":::6380"), Ok(("[::]:6380".into(), true, false)));
    assert_eq!(a("::1:6380"), Ok(("[::1]:6380".into(), false, false)));
    assert_eq!(a("[::1]:6380"), Ok(("[::1]:6380".into(), false, false)));
    assert_eq!(
        a("localhost:6380"),
        Ok(("127.0.0.1:6380".into(), false, false))
    );
    assert!(parse_accept("redis.internal:6380")
        .unwrap()
        .warning
        .is_some());
    assert!(a("/run/redis.sock").is_err());
    assert!(a("6380x").is_err());
    assert!(a("99999").is_err());

    assert_eq!(parse_connect("6379").as_deref(), Ok("127.0.0.1:6379"));
    assert_eq!(
        parse_connect("10.1.2.3:6379").as_deref(),
        Ok("10.1.2.3:6379")
    );
    assert_eq!(parse_connect("::1:6379").as_deref(), Ok("[::1]:6379"));
    assert_eq!(parse_connect("redis:6379").as_deref(), Ok("redis:6379"));
    assert_eq!(
        parse_connect("/tmp/redis.sock").as_deref(),
        Ok("unix:/tmp/redis.sock")
    );
    assert!(parse_connect("redis").is_err());
}

#[test]
fn odd_paths_are_quoted() {
    let (raw, _) =
        conv("[r]\naccept = 6380\nconnect = 6379\ncert = /etc/my certs/\"redis\" #1.pem\n");
    assert_eq!(
        tls(&raw, 0).cert.to_str(),
        Some("/etc/my certs/\"redis\" #1.pem")
    );
}

#[test]
fn nothing_to_convert_still_parses() {
    for text in [
        "",
        "; only comments\n",
        "pid = /run/x.pid\n",
        "[svc]\nconnect = 6379\n",
    ] {
        let (raw, _) = conv(text);
        assert!(raw.listen.is_empty(), "{text}");
    }
    // No sections: a global accept/connect is one service.
    let (raw, _) = conv("accept = 6380\nconnect = 6379\ncert = /c.pem\n");
    assert_eq!(raw.listen.len(), 1);
}

/// As converted the file loads (nobody can log in yet); with a user and the upstream
/// credential filled in as the comments say, it loads with them.
#[test]
fn loads_once_placeholders_are_filled() {
    let c = convert_named(TYPICAL, "/etc/stunnel/redis.conf");
    assert!(c.yaml.contains("stunnel config /etc/stunnel/redis.conf by"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redward.yaml");
    std::fs::write(&path, &c.yaml).unwrap();
    let cfg = config::load(&path).unwrap();
    assert!(cfg.users.is_empty());

    std::fs::write(dir.path().join("redis.pw"), "upstream-secret\n").unwrap();
    let hash = crate::acl::hash_password(b"app-secret");
    let filled = c
        .yaml
        .replace("  # username: proxy", "  username: proxy")
        .replace(
            "  # password_file: /run/secrets/redis",
            "  password_file: redis.pw",
        )
        .replace(
            "users: []\n",
            &format!("users:\n  - name: default\n    rules: \"on #{hash} ~* &* +@all\"\n"),
        );
    std::fs::write(&path, filled).unwrap();
    let cfg = config::load(&path).unwrap();
    assert_eq!(cfg.users.names().collect::<Vec<_>>(), ["default"]);
    assert_eq!(cfg.upstream.username.as_deref(), Some("proxy"));
    assert_eq!(
        cfg.upstream.password.as_ref().map(|p| p.expose()),
        Some("upstream-secret")
    );
}
