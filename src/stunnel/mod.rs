//! `redward from-stunnel`: an stunnel configuration in, redward YAML and warnings out.
//!
//! Pure text to text, with no I/O: the binary reads the file and prints the result, so every
//! conversion is tested here on configurations held as strings. Nothing is dropped silently.
//! Each stunnel option redward cannot carry over becomes one warning naming its line, and the
//! YAML says what stunnel never had and redward needs (users, the upstream credential).
//!
//! stunnel's format (`options.c`): `;` or `#` comment lines, `option = value` lines, option
//! names case-insensitive, global options first, then `[service]` sections. Service-level
//! options written in the global section are defaults for every service; a later occurrence
//! of an option overrides an earlier one.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// The YAML to write and one line per option that was not carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    pub yaml: String,
    pub warnings: Vec<String>,
}

/// Converts stunnel configuration text; the YAML header does not name a source file.
pub fn convert(text: &str) -> Conversion {
    convert_named(text, "")
}

/// Like [`convert`], with `source` (the stunnel file's name) in the YAML header.
pub fn convert_named(text: &str, source: &str) -> Conversion {
    let mut notes = Notes::default();
    let (global, sections) = parse(text, &mut notes);

    let mut services: Vec<Service> = sections
        .iter()
        .map(|s| Service {
            name: Some(s.name),
            line: s.line,
            global: &global,
            own: &s.opts,
        })
        .collect();
    // Without any [section], a global `accept` still describes one service.
    if services.is_empty() && global.iter().any(|o| o.lower == "accept") {
        services.push(Service {
            name: None,
            line: 0,
            global: &[],
            own: &global,
        });
    }

    let mut listeners = Vec::new();
    let mut upstream: Option<(String, String)> = None; // (address, service label)
    let mut converted: Vec<&Service> = Vec::new();
    for svc in &services {
        if let Some(l) = convert_service(svc, &mut upstream, &mut notes) {
            listeners.extend(l);
            converted.push(svc);
        }
    }

    // Every option of the global section and of the converted services, once each.
    for opt in global.iter().chain(
        converted
            .iter()
            .filter(|s| s.name.is_some())
            .flat_map(|s| s.own.iter()),
    ) {
        if let Some(reason) = unconverted(opt) {
            notes.opt(opt, &reason);
        }
    }

    let idle = one_setting(&converted, "timeoutidle", &mut notes, seconds);
    let connect_timeout = one_setting(&converted, "timeoutconnect", &mut notes, |v| {
        seconds(v).filter(|s| *s > 0)
    });
    let log_level = one_setting(&converted, "debug", &mut notes, log_level);

    notes.add(
        usize::MAX,
        "redward answers AUTH itself and `users: []` lets nobody log in: add users (see the comments in the YAML) before starting it".to_owned(),
    );
    notes.add(
        usize::MAX,
        "stunnel held no Redis credential: if Redis has requirepass or ACL users, fill in upstream.username / upstream.password_file".to_owned(),
    );

    let yaml = write_yaml(
        source,
        &Converted {
            listeners,
            upstream,
            connect_timeout,
            idle,
            log_level,
        },
    );
    Conversion {
        yaml,
        warnings: notes.finish(),
    }
}

/// One service: its listeners, or `None` (with notes saying why) when it is not converted.
/// The first service converted sets `upstream`; a service with another `connect` is not.
fn convert_service(
    svc: &Service,
    upstream: &mut Option<(String, String)>,
    notes: &mut Notes,
) -> Option<Vec<Listener>> {
    let mut listeners = Vec::new();
    let label = svc.label();
    if svc.get("client").is_some_and(|o| is_yes(o.value)) {
        notes.add(
            svc.line,
            format!(
                "{label}client = yes: client-mode services (plaintext in, TLS out) are not converted; redward only terminates TLS"
            ),
        );
        return None;
    }
    let connects = svc.all("connect");
    let Some(&connect) = connects.first() else {
        notes.add(
            svc.line,
            format!("{label}has no `connect` (exec or redirect?); service not converted"),
        );
        return None;
    };
    let accepts = svc.all("accept");
    if accepts.is_empty() {
        notes.add(
            svc.line,
            format!("{label}has no `accept`; service not converted"),
        );
        return None;
    }
    let address = match parse_connect(connect.value) {
        Ok(a) => a,
        Err(reason) => {
            notes.opt(connect, &format!("{reason}; service not converted"));
            return None;
        }
    };
    if connects.len() > 1 {
        notes.opt(
            connects[1],
            &format!("redward has one upstream: only the first connect ({address}) is used"),
        );
    }
    match &*upstream {
        Some((first, from)) if *first != address => {
            notes.opt(
                connect,
                &format!(
                    "redward has one upstream, {first} (from {from}); this service is not converted: run a second redward for it"
                ),
            );
            return None;
        }
        Some(_) => {}
        None => *upstream = Some((address, label.trim_end().to_owned())),
    }
    let tls = server_tls(svc, notes);
    for accept in accepts {
        match parse_accept(accept.value) {
            Ok(a) => {
                if a.bare {
                    notes.opt(
                        accept,
                        &format!(
                            "a bare port listens on every interface; so does redward's {}: restrict clients with `allow:` (example in the YAML)",
                            a.address
                        ),
                    );
                }
                if let Some(reason) = &a.warning {
                    notes.opt(accept, reason);
                }
                listeners.push(Listener {
                    comment: format!("{label}accept = {}", accept.value),
                    address: a.address,
                    every_interface: a.unspecified,
                    tls: tls.clone(),
                });
            }
            Err(reason) => notes.opt(accept, &reason),
        }
    }
    Some(listeners)
}

/// What the converted services give the YAML.
struct Converted {
    listeners: Vec<Listener>,
    /// The upstream address and the service it came from.
    upstream: Option<(String, String)>,
    connect_timeout: Option<u64>,
    idle: Option<u64>,
    log_level: Option<&'static str>,
}

/// The YAML: a header, the listeners, the upstream, commented users, and the limits and log
/// level the services agreed on.
fn write_yaml(source: &str, c: &Converted) -> String {
    let mut y = String::new();
    let source = if source.is_empty() {
        String::new()
    } else {
        format!(" {source}")
    };
    let _ = writeln!(
        y,
        "# Converted from stunnel config{source} by `redward from-stunnel`; review before use."
    );
    y.push_str(
        "# Options that were not carried over were printed as warnings. Before starting redward,\n\
         # add users (see `users:` below), set the upstream credential if Redis has a password,\n\
         # then run: redward check --config THIS_FILE\n\n",
    );

    if c.listeners.is_empty() {
        y.push_str(
            "# No server-mode stunnel service could be converted: add a listener.\nlisten: []\n",
        );
    } else {
        y.push_str("listen:\n");
        for l in &c.listeners {
            write_listener(&mut y, l);
        }
    }

    y.push_str("\nupstream:\n");
    match &c.upstream {
        Some((address, _)) => {
            let _ = writeln!(y, "  address: {}", quote(address));
        }
        None => {
            y.push_str(
                "  address: \"127.0.0.1:6379\"          # no stunnel `connect` found: check this\n",
            );
        }
    }
    y.push_str(
        "  # stunnel passed each client's own AUTH to Redis. redward answers AUTH itself and logs in\n\
         \x20 # to Redis with one credential of its own. If Redis has requirepass or ACL users:\n\
         \x20 # username: proxy                     # a Redis ACL user; leave out for requirepass\n\
         \x20 # password_file: /run/secrets/redis   # file holding that user's password (or requirepass)\n",
    );
    if let Some(s) = c.connect_timeout {
        let _ = writeln!(
            y,
            "  connect_timeout: {s}s               # stunnel TIMEOUTconnect"
        );
    }

    y.push_str(
        "\n# Who may log in. stunnel let every client through to Redis; redward checks AUTH itself,\n\
         # and with `users: []` nobody can log in. Hash each password with\n\
         #   printf '%s' 'the password' | redward hash-password\n\
         # and replace `users: []` with entries like these. Clients that sent `AUTH <requirepass>`\n\
         # log in as \"default\" and keep working unchanged with the first one. (If Redis had no\n\
         # password, \"on nopass\" instead of \"on #<sha256>\" keeps clients that never sent AUTH\n\
         # working, and lets in anyone who completes the TLS handshake.)\n\
         # users:\n\
         #   - name: default\n\
         #     rules: \"on #<sha256> ~* &* +@all\"\n\
         #   - name: app\n\
         #     rules: \"on #<sha256> ~app:* +@all -@dangerous\"\n\
         users: []\n",
    );

    if let Some(s) = c.idle {
        let _ = write!(
            y,
            "\nlimits:\n  idle_timeout: {s}s                  # stunnel TIMEOUTidle\n"
        );
    }
    if let Some(level) = c.log_level {
        let _ = write!(
            y,
            "\nlog:\n  level: {level}                        # stunnel debug\n"
        );
    }
    y
}

/// One `option = value` line.
struct Opt<'a> {
    key: &'a str,
    lower: String,
    value: &'a str,
    line: usize,
    section: Option<&'a str>,
}

struct Section<'a> {
    name: &'a str,
    line: usize,
    opts: Vec<Opt<'a>>,
}

/// A service as stunnel runs it: its own options over the global section's defaults.
struct Service<'a> {
    name: Option<&'a str>,
    line: usize,
    global: &'a [Opt<'a>],
    own: &'a [Opt<'a>],
}

impl<'a> Service<'a> {
    fn label(&self) -> String {
        self.name.map(|n| format!("[{n}] ")).unwrap_or_default()
    }

    /// The value in effect: the service's last occurrence, else the global section's.
    fn get(&self, key: &str) -> Option<&'a Opt<'a>> {
        let last = |opts: &'a [Opt<'a>]| opts.iter().rev().find(|o| o.lower == key);
        last(self.own).or_else(|| last(self.global))
    }

    /// Every occurrence of a repeatable option (accept, connect): the service's own if it has
    /// any, else the global section's.
    fn all(&self, key: &str) -> Vec<&'a Opt<'a>> {
        let own: Vec<_> = self.own.iter().filter(|o| o.lower == key).collect();
        if own.is_empty() {
            self.global.iter().filter(|o| o.lower == key).collect()
        } else {
            own
        }
    }

    /// Every occurrence, global then own (options that accumulate, like `options`).
    fn every<'k>(&self, key: &'k str) -> impl Iterator<Item = &'a Opt<'a>> + 'k
    where
        'a: 'k,
    {
        self.global
            .iter()
            .chain(self.own.iter())
            .filter(move |o| o.lower == key)
    }
}

/// Warnings, ordered by the line they are about, each said once.
#[derive(Default)]
struct Notes(Vec<(usize, String)>);

impl Notes {
    fn add(&mut self, line: usize, text: String) {
        let text = if line == 0 || line == usize::MAX {
            text
        } else {
            format!("line {line}: {text}")
        };
        if !self.0.iter().any(|(_, t)| *t == text) {
            self.0.push((line, text));
        }
    }

    fn opt(&mut self, o: &Opt, reason: &str) {
        let section = o.section.map(|n| format!("[{n}] ")).unwrap_or_default();
        self.add(
            o.line,
            format!("{section}{} = {}: {reason}", o.key, o.value),
        );
    }

    fn finish(mut self) -> Vec<String> {
        self.0.sort_by_key(|(line, _)| *line);
        self.0.into_iter().map(|(_, t)| t).collect()
    }
}

fn parse<'a>(text: &'a str, notes: &mut Notes) -> (Vec<Opt<'a>>, Vec<Section<'a>>) {
    let mut global = Vec::new();
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let s = raw.trim_start_matches('\u{feff}').trim();
        if s.is_empty() || s.starts_with(';') || s.starts_with('#') {
            continue;
        }
        if let Some(rest) = s.strip_prefix('[') {
            match rest.strip_suffix(']') {
                Some(name) => sections.push(Section {
                    name: name.trim(),
                    line,
                    opts: Vec::new(),
                }),
                None => notes.add(line, format!("`{s}`: not a [section] line; ignored")),
            }
            continue;
        }
        let Some((key, value)) = s.split_once('=') else {
            notes.add(line, format!("`{s}`: not `option = value`; ignored"));
            continue;
        };
        let key = key.trim();
        let section = sections.last().map(|s| s.name);
        let opt = Opt {
            key,
            lower: key.to_ascii_lowercase(),
            value: value.trim(),
            line,
            section,
        };
        match sections.last_mut() {
            Some(sec) => sec.opts.push(opt),
            None => global.push(opt),
        }
    }
    (global, sections)
}

#[derive(Clone)]
struct Tls {
    cert: String,
    key: String,
    min_version: &'static str,
    session_tickets: bool,
    /// (YAML comment key, path) for CAfile/CApath/CRLfile/CRLpath.
    client_checks: Vec<(&'static str, String)>,
}

struct Listener {
    comment: String,
    address: String,
    every_interface: bool,
    tls: Tls,
}

fn server_tls(svc: &Service, notes: &mut Notes) -> Tls {
    let label = svc.label();
    let cert = match svc.get("cert") {
        Some(o) => o.value.to_owned(),
        None => {
            notes.add(
                svc.line,
                format!("{label}has no `cert`: fill in listen[].tls.cert and key"),
            );
            "/path/to/server.crt".to_owned()
        }
    };
    let key = match svc.get("key") {
        Some(o) => o.value.to_owned(),
        None if svc.get("cert").is_some() => {
            notes.add(
                svc.get("cert").map_or(svc.line, |o| o.line),
                format!(
                    "{label}no `key`: like stunnel, redward is given the cert file ({cert}) as key; it must hold an unencrypted PEM private key (redward uses the first one)"
                ),
            );
            cert.clone()
        }
        None => "/path/to/server.key".to_owned(),
    };
    let version = svc
        .get("sslversionmin")
        .or_else(|| svc.get("sslversion"))
        .map(|o| o.value.to_ascii_lowercase());
    let min_version = match version.as_deref() {
        Some("tlsv1.3") => "1.3",
        _ => "1.2",
    };
    let no_ticket = svc.every("options").any(|o| {
        o.value
            .split_whitespace()
            .any(|w| w.eq_ignore_ascii_case("NO_TICKET"))
    });
    let session_tickets = !(no_ticket || svc.get("sessionresume").is_some_and(|o| is_no(o.value)));
    let mut client_checks = Vec::new();
    for (stunnel, yaml) in [
        ("cafile", "client_ca"),
        ("capath", "client_ca"),
        ("crlfile", "client_crl"),
        ("crlpath", "client_crl"),
    ] {
        if let Some(o) = svc.get(stunnel) {
            client_checks.push((yaml, o.value.to_owned()));
        }
    }
    Tls {
        cert,
        key,
        min_version,
        session_tickets,
        client_checks,
    }
}

fn write_listener(y: &mut String, l: &Listener) {
    let _ = writeln!(y, "  # {}", l.comment);
    let _ = writeln!(y, "  - address: {}", quote(&l.address));
    if l.every_interface {
        y.push_str(
            "    # Every interface, as in stunnel. To admit only some networks:\n\
             \x20   # allow: [\"10.0.0.0/8\", \"192.168.0.0/16\"]\n",
        );
    }
    let t = &l.tls;
    y.push_str("    tls:\n");
    let _ = writeln!(y, "      cert: {}", quote(&t.cert));
    let _ = writeln!(y, "      key: {}", quote(&t.key));
    let _ = writeln!(y, "      min_version: \"{}\"", t.min_version);
    if !t.session_tickets {
        y.push_str("      session_tickets: false\n");
    }
    for (field, path) in &t.client_checks {
        let _ = writeln!(
            y,
            "      # {field}: {}   # not supported yet: client certificates are not verified",
            quote(path)
        );
    }
}

struct Accept {
    address: String,
    unspecified: bool,
    bare: bool,
    warning: Option<String>,
}

/// `PORT`, `HOST:PORT`, `:::PORT` (stunnel splits at the last colon), `[V6]:PORT`.
fn parse_accept(v: &str) -> Result<Accept, String> {
    if v.starts_with('/') {
        return Err("redward listens on TCP only; a unix-socket accept is not converted".into());
    }
    if let Ok(port) = v.parse::<u16>() {
        return Ok(Accept {
            address: format!("0.0.0.0:{port}"),
            unspecified: true,
            bare: true,
            warning: None,
        });
    }
    let (host, port) =
        split_host_port(v).ok_or_else(|| "not [HOST:]PORT; not converted".to_owned())?;
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(Accept {
            address: format!("127.0.0.1:{port}"),
            unspecified: false,
            bare: false,
            warning: None,
        });
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(Accept {
            address: SocketAddr::new(ip, port).to_string(),
            unspecified: ip.is_unspecified(),
            bare: false,
            warning: None,
        }),
        Err(_) => Ok(Accept {
            address: format!("{host}:{port}"),
            unspecified: false,
            bare: false,
            warning: Some(format!(
                "redward listens on IP addresses only: replace {host} with the address it resolves to"
            )),
        }),
    }
}

/// `HOST:PORT`, `PORT` (stunnel: localhost) or a unix socket path, as redward's upstream.address.
fn parse_connect(v: &str) -> Result<String, String> {
    if v.starts_with('/') {
        return Ok(format!("unix:{v}"));
    }
    if let Ok(port) = v.parse::<u16>() {
        return Ok(format!("127.0.0.1:{port}"));
    }
    let (host, port) =
        split_host_port(v).ok_or_else(|| "not [HOST:]PORT or a socket path".to_owned())?;
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    })
}

fn split_host_port(v: &str) -> Option<(&str, u16)> {
    let (host, port) = v.rsplit_once(':')?;
    let port = port.trim().parse().ok()?;
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

/// A setting redward has once, not per service: the first converted service's, with a warning
/// when another service disagrees.
fn one_setting<T: PartialEq + std::fmt::Display>(
    services: &[&Service],
    key: &str,
    notes: &mut Notes,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let mut chosen: Option<(T, &Opt)> = None;
    for svc in services {
        let Some(o) = svc.get(key) else { continue };
        let Some(v) = parse(o.value) else { continue };
        match &chosen {
            None => chosen = Some((v, o)),
            Some((first, at)) if *first != v => notes.opt(
                o,
                &format!(
                    "redward has one setting for all listeners; used {first} from line {}",
                    at.line
                ),
            ),
            Some(_) => {}
        }
    }
    chosen.map(|(v, _)| v)
}

fn seconds(v: &str) -> Option<u64> {
    v.parse().ok()
}

/// stunnel's `debug = [FACILITY.]LEVEL` (syslog names or 0-7) as redward's log.level.
fn log_level(v: &str) -> Option<&'static str> {
    let level = v.rsplit('.').next().unwrap_or(v).to_ascii_lowercase();
    Some(match level.as_str() {
        "0" | "1" | "2" | "3" | "emerg" | "alert" | "crit" | "err" => "error",
        "4" | "warning" => "warn",
        "5" | "6" | "notice" | "info" => "info",
        "7" | "debug" => "debug",
        _ => return None,
    })
}

fn is_yes(v: &str) -> bool {
    v.eq_ignore_ascii_case("yes")
}

fn is_no(v: &str) -> bool {
    v.eq_ignore_ascii_case("no")
}

const SYSTEMD: &str = "handled by systemd (or the container runtime), not by redward";
const CLIENT_CERTS: &str =
    "client certificate verification is not supported yet: redward authenticates clients by AUTH only";

/// `TIMEOUTidle`/`TIMEOUTconnect`: carried over unless not a number, or a zero connect timeout.
fn timeout_note(o: &Opt) -> Option<String> {
    match seconds(o.value) {
        None => Some("not a number of seconds; not converted".into()),
        Some(0) if o.lower == "timeoutconnect" => {
            Some("0 is not a usable connect timeout; redward's default (5s) applies".into())
        }
        Some(_) => None,
    }
}

/// `sslVersion`/`sslVersionMin` (lowercased `lv`) against redward's TLS 1.2 and 1.3.
fn tls_version_note(o: &Opt, lv: &str) -> Option<String> {
    match lv {
        "tlsv1.3" | "all" => None,
        "tlsv1.2" if o.lower == "sslversion" => Some(
            "stunnel allowed only TLS 1.2; redward's min_version \"1.2\" also accepts TLS 1.3".into(),
        ),
        "tlsv1.2" => None,
        "sslv2" | "sslv3" | "tlsv1" | "tlsv1.1" => Some(
            "redward speaks TLS 1.2 and 1.3 only (min_version \"1.2\"); clients limited to older versions cannot connect".into(),
        ),
        _ => Some("unknown TLS version; min_version \"1.2\" used".into()),
    }
}

/// Why an option is not carried over, or `None` when it is (or needs nothing: it already is
/// what redward does).
fn unconverted(o: &Opt) -> Option<String> {
    let v = o.value;
    let lv = v.to_ascii_lowercase();
    let relative = |what: &str| {
        (!v.starts_with('/')).then(|| {
            format!("relative {what} path: redward resolves it from the YAML file's directory, stunnel from its working directory")
        })
    };
    let reason: &str = match o.lower.as_str() {
        // Carried over where the listeners, upstream, limits and log are built.
        "accept" | "connect" | "client" | "debug" => return None,
        "cert" | "key" => return relative("certificate"),
        "timeoutidle" | "timeoutconnect" => return timeout_note(o),
        "sessionresume" if is_no(v) => {
            "session_tickets: false, but redward still resumes TLS 1.2 sessions by session ID"
        }
        "sessionresume" => return None,
        "sslversion" | "sslversionmin" => return tls_version_note(o, &lv),
        "sslversionmax" if lv == "tlsv1.3" || lv == "all" => return None,
        "sslversionmax" => "redward has no maximum TLS version: TLS 1.3 is accepted",
        "options" => return openssl_options(v),
        "renegotiation" if is_no(v) => return None,
        "renegotiation" => "rustls never renegotiates",
        "foreground" if !is_no(v) => return None,
        "foreground" => "redward always runs in the foreground; run it under systemd",
        "delay" => return None, // redward looks the upstream name up on every connection
        "cafile" | "capath" => {
            "client certificates are not verified by redward yet; kept as a `# client_ca:` comment"
        }
        "crlfile" | "crlpath" => {
            "client certificates are not verified by redward yet; kept as a `# client_crl:` comment"
        }
        "verify" if v == "0" => return None,
        "verifychain" | "verifypeer" | "requirecert" if is_no(v) => return None,
        "verify" | "verifychain" | "verifypeer" | "requirecert" | "checkhost" | "checkemail"
        | "checkip" => CLIENT_CERTS,
        "ocsp" | "ocspaia" | "ocspflag" | "ocspnonce" | "ocsprequire" | "timeoutocsp" => {
            "OCSP checks of client certificates are not supported"
        }
        "ciphers" | "ciphersuites" | "curves" | "securitylevel" => {
            "redward uses rustls's safe defaults (TLS 1.3 suites, ECDHE with AEAD ciphers for TLS 1.2)"
        }
        "sessioncachesize" | "sessioncachetimeout" | "sessiond" => {
            "redward's TLS session cache is built in (4096 sessions) and not configurable"
        }
        "ticketkeysecret" | "ticketmacsecret" => {
            "redward generates and rotates its session ticket keys itself"
        }
        "pid" | "setuid" | "setgid" | "chroot" => SYSTEMD,
        "output" | "log" | "syslog" => {
            "redward logs to stderr (the journal under systemd); log.level sets the level"
        }
        "timeoutbusy" => {
            "no equivalent; limits.client_write_timeout closes clients that stop reading"
        }
        "timeoutclose" => "not configurable in redward",
        "socket" => "redward sets its own socket options (TCP_NODELAY on both sides)",
        "libwrap" | "service" => {
            "TCP wrappers are not supported: restrict clients with listen[].allow / deny"
        }
        "sni" => "SNI-based service selection is not supported: one certificate per listener",
        "include" => {
            "included files are not read: convert them with from-stunnel too and merge the output"
        }
        "pskidentity" | "psksecrets" => {
            "TLS-PSK is not supported: clients need certificate-based TLS (and a redward user)"
        }
        "exec" | "execargs" | "pty" => "redward forwards to Redis only",
        "failover" => "redward has one upstream",
        "local" => "the OS picks the source address of upstream connections",
        "transparent" => "not supported: Redis sees redward's address",
        "compression" => "TLS compression is unsafe (CRIME) and rustls does not support it",
        "fips" => "not configurable: redward uses aws-lc-rs through rustls",
        "engine" | "enginectrl" | "enginedefault" | "engineid" | "enginenum" => {
            "OpenSSL engines (HSMs) are not supported: redward reads PEM keys"
        }
        "egd" | "rndbytes" | "rndfile" | "rndoverwrite" => {
            "rustls uses the operating system's random generator"
        }
        "protocol" | "protocolauthentication" | "protocoldomain" | "protocolheader"
        | "protocolhost" | "protocolpassword" | "protocolusername" => {
            "protocol negotiation is not supported: redward speaks TLS from the first byte"
        }
        "ident" | "redirect" | "reset" | "retry" | "logid" | "stack" | "config" => {
            "not supported by redward"
        }
        "taskbar" | "iconactive" | "iconerror" | "iconidle" => "Windows-only option",
        _ => "unknown stunnel option; not converted",
    };
    Some(reason.to_owned())
}

/// `options = NO_SSLv3 ...`: OpenSSL flags. Those that describe what rustls does anyway need no
/// warning; NO_TICKET becomes `session_tickets: false`.
fn openssl_options(v: &str) -> Option<String> {
    const ALREADY: &[&str] = &[
        "NO_SSLv2",
        "NO_SSLv3",
        "NO_TLSv1",
        "NO_TLSv1_1",
        "NO_TLSv1.1",
        "NO_COMPRESSION",
        "SINGLE_DH_USE",
        "SINGLE_ECDH_USE",
        "NO_RENEGOTIATION",
        "NO_TICKET",
    ];
    let other: Vec<&str> = v
        .split_whitespace()
        .filter(|w| !ALREADY.iter().any(|a| a.eq_ignore_ascii_case(w)))
        .collect();
    (!other.is_empty()).then(|| {
        format!(
            "OpenSSL option {} has no rustls equivalent (rustls has no SSL, TLS 1.0/1.1, compression or renegotiation)",
            other.join(" ")
        )
    })
}

/// A YAML double-quoted scalar.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests;
