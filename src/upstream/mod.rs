//! Connections to the Redis behind redward: TCP, unix socket or TLS, opened under a deadline and
//! authenticated with redward's own credential before any client byte is sent.
//!
//! The [`Connector`] holds a [`Target`] (where) and a [`Credential`] (as whom), in
//! `target.rs`; this file opens the connection. What the kinds of target (fixed, Sentinel,
//! cluster) change on a session's reply path is asked of [`kind::Kind`].
//!
//! A client's AUTH never reaches Redis. Every upstream connection is logged in as the
//! configured upstream user, so Redis's own ACLs (if any) see redward, and redward's users are
//! redward's business.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::config::{UpstreamAddr, UpstreamConfig};
use crate::tls::TlsError;

pub mod confine;
pub mod identity;
pub mod kind;
pub mod provision;
mod sentinel;
mod target;
pub use identity::{Identities, Identity};
pub use sentinel::Sentinel;
pub use target::{Chooser, Credential, Target};

/// Why an upstream connection could not be used. Client-facing text is always the generic
/// `UPSTREAM_UNAVAILABLE`; the detail goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connect to {addr}: timed out")]
    Timeout { addr: String },
    #[error("TLS to {addr}: {source}")]
    Tls { addr: String, source: io::Error },
    /// Redis refused redward's own credential; the text is Redis's (it never holds secrets).
    #[error("upstream rejected redward's AUTH: {0}")]
    AuthRejected(String),
    #[error("upstream closed the connection during AUTH")]
    ClosedDuringAuth,
    /// No Sentinel named a master for this name.
    #[error("no Sentinel names a master for `{0}`")]
    NoMaster(String),
    /// A Sentinel failover is under way: no connection until the promoted replica is known.
    #[error("Sentinel failover of `{0}` under way")]
    FailoverInProgress(String),
    /// The address a Sentinel named did not confirm with `ROLE` that it is the master.
    #[error("{0} is not the master (ROLE)")]
    NotMaster(String),
    /// The redward user a connection was for is gone (removed by a reload).
    #[error("redward user's upstream identity is gone")]
    IdentityGone,
    /// Redis refused the connection's set-up (`HELLO 3`, `SELECT db`, the user's `ACL
    /// SETUSER` or `AUTH`); the text is Redis's.
    #[error("upstream refused the connection set-up: {0}")]
    SetupRejected(String),
    /// A chosen target (a cluster's entry) has no address yet.
    #[error("{what}: no node known")]
    NoAddress { what: String },
    /// A cluster node listener's connection reached a server that did not confirm the
    /// node's id; closed before any client request (and before the credential, where the
    /// server answered without a login).
    #[error("{addr} did not confirm it is cluster node {id} (CLUSTER MYID: {said})")]
    NotTheNode {
        addr: String,
        id: String,
        said: String,
    },
}

impl UpstreamError {
    /// Always the upstream's side (redward's own credential refused included: the operator
    /// fixes that on the Redis side or in `upstream.*`).
    pub fn side(&self) -> crate::fault::Side {
        crate::fault::Side::Upstream
    }

    /// What the client whose request needed the connection is told: Redis's own retryable
    /// wording, never the detail (addresses, Redis's AUTH error), which goes to the log.
    pub fn client_reply(&self) -> &'static [u8] {
        crate::resp::replies::UPSTREAM_UNAVAILABLE
    }
}

/// What a new upstream connection is set to after login, before any client's request: the
/// protocol and the database. Shared connections come in one pool per setup, so a client that
/// said `HELLO 3` or `SELECT 1` rides one already in that state (`mux::Pools`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Setup {
    /// `HELLO 3` after login.
    pub resp3: bool,
    /// `SELECT db` after login, unless 0.
    pub db: u32,
    /// `upstream.identity: per_user`: after the set-up, `ACL SETUSER` and `AUTH` as this
    /// redward user's upstream user (`identity.rs`); `None`: redward's own user.
    pub user: Option<identity::Tag>,
}

impl Setup {
    /// The requests that put a connection in this state, pipelined, and how many replies
    /// they get. `HELLO` always goes first (`HELLO 3` for RESP3, bare `HELLO` otherwise,
    /// which changes nothing): its reply names the server and its version, so a server that
    /// changed behind redward is noticed at the next connection (`commands::catalog`).
    fn requests(self) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut n = 1;
        if self.resp3 {
            crate::resp::encode_command(&mut out, [&b"HELLO"[..], b"3"].into_iter());
        } else {
            crate::resp::encode_command(&mut out, [&b"HELLO"[..]].into_iter());
        }
        if self.db != 0 {
            let db = self.db.to_string();
            crate::resp::encode_command(&mut out, [&b"SELECT"[..], db.as_bytes()].into_iter());
            n += 1;
        }
        (out, n)
    }
}

/// Opens upstream connections to one [`Target`], logged in with one [`Credential`], set up
/// as [`Setup`] says.
#[derive(Clone)]
pub struct Connector {
    target: Target,
    credential: Option<Credential>,
    setup: Setup,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: std::time::Duration,
    /// `upstream.identity: per_user`: the users a [`Setup::user`] names.
    identities: Option<Arc<Identities>>,
    /// [`Connector::with_wait_fence`].
    wait_fence: bool,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// # Errors
    /// A [`TlsError`] when the upstream TLS settings cannot be loaded.
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, TlsError> {
        let tls = match &cfg.tls {
            None => None,
            Some(t) => {
                let config = crate::tls::upstream_client_config(t)?;
                let name = ServerName::try_from(t.server_name.clone()).map_err(|e| {
                    TlsError::Generate(format!("upstream.tls.server_name `{}`: {e}", t.server_name))
                })?;
                Some((TlsConnector::from(config), name))
            }
        };
        let target = match &cfg.sentinel {
            Some(s) => Target::Sentinel(Arc::new(Sentinel::new(s, cfg.connect_timeout)?)),
            None => Target::Fixed(cfg.addr.clone()),
        };
        Ok(Connector {
            target,
            credential: Credential::from_config(cfg),
            setup: Setup::default(),
            tls,
            connect_timeout: cfg.connect_timeout,
            identities: None,
            wait_fence: false,
        })
    }

    /// The same connector, able to log connections in as redward users' upstream users.
    pub fn with_identities(&self, identities: Arc<Identities>) -> Connector {
        Connector {
            identities: Some(identities),
            ..self.clone()
        }
    }

    /// The redward user whose upstream user connections from here log in as (`None`:
    /// redward's own), for metrics.
    pub fn identity_name(&self) -> Option<String> {
        let ids = self.identities.as_ref()?;
        Some(ids.by_tag(self.setup.user?)?.user.clone())
    }

    /// The upstream users (`upstream.identity: per_user`), if redward keeps them.
    pub fn identities(&self) -> Option<&Arc<Identities>> {
        self.identities.as_ref()
    }

    /// The same credential and TLS settings, to another target (a cluster node a `MOVED`
    /// named, a master a Sentinel named).
    pub fn to_target(&self, target: Target) -> Connector {
        Connector {
            target,
            ..self.clone()
        }
    }

    /// The same connector, setting each new connection up as `setup` says.
    pub fn with_setup(&self, setup: Setup) -> Connector {
        Connector {
            setup,
            ..self.clone()
        }
    }

    /// A connection for `WAIT`/`WAITAOF` from a client whose writes went over shared
    /// connections. Redis counts acknowledgements of the offset after the connection's own
    /// last write (`c->woff`, `waitCommand` in replication.c), 0 on a new connection: WAIT
    /// there would report every replica at once, whether the client's writes reached them or
    /// not. So, logged in as redward and before the client's user, the connection sends
    /// `SWAPDB 0 0`: replicated (`server.dirty++`), touching no key, no watch and no
    /// subscriber, it sets `c->woff` past every write acknowledged before the move. Best
    /// effort: where it is refused (cluster mode, a narrow credential) WAIT counts as before.
    pub fn with_wait_fence(self, fence: bool) -> Connector {
        Connector {
            wait_fence: fence,
            ..self
        }
    }

    /// Whether connections use TLS (`upstream.tls`): cluster nodes are then dialled at
    /// their `tls-port`.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `upstream.connect_timeout`: the bound on opening and logging in.
    pub fn connect_timeout(&self) -> std::time::Duration {
        self.connect_timeout
    }

    /// Whether redward logs in to Redis as its `default` user, whose password is
    /// `requirepass` (no username configured, or `default` named).
    pub fn logs_in_as_default(&self) -> bool {
        self.credential
            .as_ref()
            .is_none_or(Credential::is_default_user)
    }

    /// A key derived from redward's own credential (`Credential::derive_key`); `None`
    /// without one.
    pub fn derive_key(&self, label: &[u8]) -> Option<[u8; 32]> {
        self.credential.as_ref().map(|c| c.derive_key(label))
    }

    /// The AUTH request redward sends upstream, if it has a credential.
    pub fn auth_request(&self) -> Option<&[u8]> {
        self.credential.as_ref().map(Credential::auth_request)
    }

    /// Connects and authenticates, within `connect_timeout` for the whole exchange.
    ///
    /// # Errors
    /// An [`UpstreamError`]; the caller answers the client with a retryable error.
    pub async fn connect(&self) -> Result<UpstreamStream, UpstreamError> {
        match tokio::time::timeout(self.connect_timeout, self.connect_inner()).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                addr: self.target.to_string(),
            }),
        }
    }

    /// Resolves the target, connects, and logs in.
    /// Phases: the transport (TCP, TLS or a socket), what must be confirmed before or after
    /// the credential (a Sentinel-named master's role, a cluster node's id), the login, then
    /// the set-up ([`Connector::set_up`]).
    async fn connect_inner(&self) -> Result<UpstreamStream, UpstreamError> {
        let resolved = self.target.resolve().await?;
        let addr = resolved.to_string();
        let addr = addr.as_str();
        let connect_err = |source| UpstreamError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let mut stream = self.transport(&resolved, addr).await?;
        // The Sentinel client guidelines: confirm the role before sending anything, and so
        // before the credential where the server answers ROLE without a login; a server that
        // wants the login first (`-NOAUTH`) gets it, then ROLE (a quorum of Sentinels named
        // this address: `sentinel.rs`).
        let confirm = self.target.confirms_role();
        let mut confirmed = false;
        if confirm && self.auth_request().is_some() {
            match role(&mut stream).await.map_err(connect_err)? {
                Role::Master => confirmed = true,
                Role::LoginFirst => {}
                Role::Other => {
                    self.target.not_master("ROLE did not say master");
                    return Err(UpstreamError::NotMaster(addr.to_owned()));
                }
            }
        }
        // A cluster node listener's node: its id confirmed before the credential where the
        // node answers without a login, after the login otherwise (`cluster/admit.rs`).
        let node = self.target.node_id();
        let mut node_confirmed = false;
        if let (Some(id), Some(_)) = (&node, self.auth_request()) {
            node_confirmed = self.confirm_node(&mut stream, id, addr, true).await?;
        }
        if let Some(auth) = self.auth_request() {
            stream.write_all(auth).await.map_err(connect_err)?;
            stream.flush().await.map_err(connect_err)?;
            let line = read_line(&mut stream).await.map_err(connect_err)?;
            match line {
                None => return Err(UpstreamError::ClosedDuringAuth),
                Some(l) if l.as_ref() == b"+OK" => {}
                Some(l) => {
                    return Err(UpstreamError::AuthRejected(
                        String::from_utf8_lossy(&l).into_owned(),
                    ))
                }
            }
        }
        if let (Some(id), false) = (&node, node_confirmed) {
            self.confirm_node(&mut stream, id, addr, false).await?;
        }
        if confirm && !confirmed && role(&mut stream).await.map_err(connect_err)? != Role::Master {
            self.target.not_master("ROLE did not say master");
            return Err(UpstreamError::NotMaster(addr.to_owned()));
        }
        self.set_up(&mut stream, addr).await?;
        Ok(stream)
    }

    /// The connection itself: a Unix socket, or TCP (no Nagle) with TLS when configured.
    async fn transport(
        &self,
        resolved: &UpstreamAddr,
        addr: &str,
    ) -> Result<UpstreamStream, UpstreamError> {
        let connect_err = |source| UpstreamError::Connect {
            addr: addr.to_owned(),
            source,
        };
        Ok(match resolved {
            UpstreamAddr::Unix(path) => {
                UpstreamStream::Unix(UnixStream::connect(path).await.map_err(connect_err)?)
            }
            UpstreamAddr::Tcp { host, port } => {
                let tcp = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect_err)?;
                // Requests are small and latency-bound; Nagle would hold them back.
                tcp.set_nodelay(true).map_err(connect_err)?;
                match &self.tls {
                    None => UpstreamStream::Tcp(tcp),
                    Some((connector, name)) => {
                        let tls = connector
                            .connect(name.clone(), tcp)
                            .await
                            .map_err(|source| UpstreamError::Tls {
                                addr: addr.to_owned(),
                                source,
                            })?;
                        UpstreamStream::Tls(Box::new(tls))
                    }
                }
            }
        })
    }

    /// After the login: the set-up (`HELLO 3`, `SELECT`), the `WAIT` fence, then the
    /// client's own upstream user (`upstream.identity: per_user`).
    async fn set_up(&self, stream: &mut UpstreamStream, addr: &str) -> Result<(), UpstreamError> {
        let connect_err = |source| UpstreamError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let (setup, replies) = self.setup.requests();
        {
            stream.write_all(&setup).await.map_err(connect_err)?;
            stream.flush().await.map_err(connect_err)?;
            read_setup_replies(stream, replies, self.setup.resp3)
                .await
                .map_err(|e| match e {
                    SetupFailure::Io(source) => connect_err(source),
                    SetupFailure::Refused(text) => UpstreamError::SetupRejected(text),
                })?;
        }
        if self.wait_fence {
            stream
                .write_all(b"*3\r\n$6\r\nSWAPDB\r\n$1\r\n0\r\n$1\r\n0\r\n")
                .await
                .map_err(connect_err)?;
            stream.flush().await.map_err(connect_err)?;
            let mut buf = BytesMut::with_capacity(128);
            read_reply(stream, &mut buf, 4096)
                .await
                .map_err(connect_err)?;
        }
        if let (Some(tag), Some(ids)) = (self.setup.user, &self.identities) {
            let identity = ids.by_tag(tag).ok_or(UpstreamError::IdentityGone)?;
            ids.saw(&self.target);
            self.log_in_as(stream, ids, &identity, addr).await?;
        }
        Ok(())
    }

    /// Logs a set-up connection in as a redward user's upstream user (`identity.rs`): with
    /// `AUTH` alone where this process gave that server the user's current rules, else
    /// `ACL SETUSER` then `AUTH`. A server that lost the user (restarted) gets it again; one
    /// busy with a script (`-BUSY` to SETUSER, which AUTH does not get) still logs in if the
    /// user is there.
    async fn log_in_as(
        &self,
        stream: &mut UpstreamStream,
        ids: &Identities,
        identity: &Identity,
        addr: &str,
    ) -> Result<(), UpstreamError> {
        let io = |source| UpstreamError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let mut buf = BytesMut::with_capacity(256);
        if ids.has_current(addr, identity) {
            stream
                .write_all(identity.auth_request())
                .await
                .map_err(io)?;
            stream.flush().await.map_err(io)?;
            let (len, info) = read_reply(stream, &mut buf, 4096).await.map_err(io)?;
            if !info.is_error() {
                return Ok(());
            }
            buf.advance(len);
            ids.set_current(addr, identity, false);
        }
        let mut both = identity.setuser_request().to_vec();
        both.extend_from_slice(identity.auth_request());
        stream.write_all(&both).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut texts = [None, None];
        for text in &mut texts {
            let (len, info) = read_reply(stream, &mut buf, 4096).await.map_err(io)?;
            let reply = buf.split_to(len);
            if info.is_error() {
                let t = reply.get(1..len.saturating_sub(2)).unwrap_or(&[]);
                *text = Some(String::from_utf8_lossy(t).into_owned());
            }
        }
        match texts {
            [None, None] => {
                ids.set_current(addr, identity, true);
                Ok(())
            }
            [Some(busy), None] if busy.starts_with("BUSY") => Ok(()),
            [Some(text), _] | [None, Some(text)] => Err(UpstreamError::SetupRejected(text)),
        }
    }
}

impl Connector {
    /// Asks `CLUSTER MYID` (`cluster.c`: the node's own 40-hex name). `Ok(true)`: it is `id`;
    /// `Ok(false)`: the node answers nothing before a login (`-NOAUTH`) and `before_login`;
    /// [`UpstreamError::NotTheNode`] for any other answer.
    async fn confirm_node(
        &self,
        stream: &mut UpstreamStream,
        id: &str,
        addr: &str,
        before_login: bool,
    ) -> Result<bool, UpstreamError> {
        let io = |source| UpstreamError::Connect {
            addr: addr.to_owned(),
            source,
        };
        stream
            .write_all(b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nMYID\r\n")
            .await
            .map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut buf = BytesMut::with_capacity(128);
        let (len, info) = read_reply(stream, &mut buf, 4096).await.map_err(io)?;
        let reply = buf.get(..len).unwrap_or(&[]);
        if before_login && info.is_error() && reply.starts_with(b"-NOAUTH") {
            return Ok(false);
        }
        // `$40\r\n<id>\r\n` (a bulk string in RESP2 and RESP3 alike).
        let said = reply
            .strip_prefix(b"$")
            .and_then(|r| r.iter().position(|&b| b == b'\n').map(|i| &r[i + 1..]))
            .and_then(|r| r.strip_suffix(b"\r\n"));
        if said == Some(id.as_bytes()) {
            return Ok(true);
        }
        self.target.not_the_node();
        let shown = said.unwrap_or(reply);
        Err(UpstreamError::NotTheNode {
            addr: addr.to_owned(),
            id: id.to_owned(),
            said: String::from_utf8_lossy(&shown[..shown.len().min(64)])
                .escape_debug()
                .to_string(),
        })
    }
}

/// Finds `server` and `version` in a HELLO reply (RESP2 array or RESP3 map of bulk strings)
/// and tells the catalog.
fn observe_hello(reply: &[u8]) {
    if let Some((server, version)) = hello_identity(reply) {
        crate::commands::catalog::observe_hello(&server, &version);
    }
}

/// `server` and `version` from a HELLO reply (RESP2 array or RESP3 map of bulk strings).
fn hello_identity(reply: &[u8]) -> Option<(String, String)> {
    let mut words = reply
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.starts_with(b"$") && !l.starts_with(b"*") && !l.starts_with(b"%"));
    let (mut server, mut version) = (None, None);
    while let Some(word) = words.next() {
        match word {
            b"server" => server = words.next(),
            b"version" => version = words.next(),
            _ => {}
        }
    }
    Some((
        String::from_utf8_lossy(server?).into_owned(),
        String::from_utf8_lossy(version?).into_owned(),
    ))
}

/// Reads one complete reply into `buf` (at most `max` bytes buffered) and returns its length
/// and what the scanner saw of it; the caller takes the bytes off `buf`. For redward's own
/// requests on a connection it is setting up.
async fn read_reply(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<(usize, crate::resp::FrameInfo)> {
    let mut scanner = crate::resp::ReplyScanner::new();
    let mut seen = 0;
    loop {
        let rest = buf.get(seen..).unwrap_or(&[]);
        if !rest.is_empty() {
            match scanner
                .advance(rest)
                .map_err(|e| io::Error::other(e.to_string()))?
            {
                crate::resp::Step::Complete { consumed, info } => {
                    return Ok((seen + consumed, info))
                }
                crate::resp::Step::Partial { consumed } => seen += consumed,
            }
        }
        if buf.len() > max {
            return Err(io::Error::other("reply too long"));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Reads `ROLE`'s reply: whether its first element is `master`.
/// What `ROLE` said of a server.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    Master,
    /// `-NOAUTH`: it answers nothing before a login.
    LoginFirst,
    /// A replica, a Sentinel, or anything else.
    Other,
}

/// Sends `ROLE` and reads what it says.
async fn role(stream: &mut UpstreamStream) -> io::Result<Role> {
    stream.write_all(b"*1\r\n$4\r\nROLE\r\n").await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(256);
    let (len, info) = read_reply(stream, &mut buf, 64 * 1024).await?;
    Ok(
        if info.kind == b'*' && info.head.as_bytes() == Some(&b"master"[..]) {
            Role::Master
        } else if info.is_error() && buf.get(..len).is_some_and(|r| r.starts_with(b"-NOAUTH")) {
            Role::LoginFirst
        } else {
            Role::Other
        },
    )
}

enum SetupFailure {
    Io(io::Error),
    Refused(String),
}

/// Reads the `n` replies to a connection's set-up (at most 64 KiB each: a HELLO map); an
/// error reply refuses the set-up, except a bare HELLO's (see [`Setup::requests`]).
async fn read_setup_replies(
    stream: &mut UpstreamStream,
    n: usize,
    resp3: bool,
) -> Result<(), SetupFailure> {
    let mut buf = BytesMut::with_capacity(512);
    for i in 0..n {
        let (len, info) = read_reply(stream, &mut buf, 64 * 1024)
            .await
            .map_err(SetupFailure::Io)?;
        let reply = buf.split_to(len);
        if i == 0 && !info.is_error() {
            observe_hello(&reply);
        } else if i == 0 && !resp3 {
            // A bare HELLO refused (a server before 6.2, or no permission for it): not a
            // refusal of the connection, only no identity to check.
        } else if info.is_error() {
            let text = reply.get(1..len.saturating_sub(2)).unwrap_or(&[]);
            return Err(SetupFailure::Refused(
                String::from_utf8_lossy(text).into_owned(),
            ));
        }
    }
    Ok(())
}

impl Connector {
    /// Asks the upstream for its `COMMAND` table (decoded). Used once at start-up to learn
    /// commands the generated table lacks; bounded by `connect_timeout` and 16 MiB.
    ///
    /// # Errors
    /// An [`UpstreamError`] when Redis is unreachable or the reply is not usable.
    pub async fn command_table(
        &self,
    ) -> Result<redis_protocol::resp2::types::OwnedFrame, UpstreamError> {
        self.query(&["COMMAND"]).await
    }

    /// How many databases Redis has, found the way any client could: `SELECT 1` ... `SELECT
    /// 255` pipelined on one connection, counting until Redis's `DB index is out of range`
    /// (`selectDb` in server.c). Needs neither `CONFIG` (often not granted to a proxy's
    /// user) nor a known `databases` setting. `None` when SELECT is refused for any other
    /// reason (no permission, cluster mode): then SELECT goes to a connection of the client's
    /// own, where Redis gives its own answer.
    pub async fn databases(&self) -> Option<u32> {
        const PROBE: u32 = 255;
        let mut request = Vec::new();
        for db in 1..=PROBE {
            let db = db.to_string();
            crate::resp::encode_command(&mut request, [&b"SELECT"[..], db.as_bytes()].into_iter());
        }
        let work = async {
            let mut stream = self.connect_inner().await.ok()?;
            stream.write_all(&request).await.ok()?;
            stream.flush().await.ok()?;
            let mut buf = BytesMut::with_capacity(4096);
            let mut selectable = 1u32; // database 0 always exists
            while selectable <= PROBE {
                let (len, info) = read_reply(&mut stream, &mut buf, 64 * 1024).await.ok()?;
                let reply = buf.split_to(len);
                if info.is_error() {
                    let out_of_range = reply
                        .windows(b"out of range".len())
                        .any(|w| w == b"out of range");
                    return out_of_range.then_some(selectable);
                }
                selectable += 1;
            }
            Some(selectable)
        };
        tokio::time::timeout(self.connect_timeout, work)
            .await
            .ok()
            .flatten()
    }

    /// One request of redward's own on a fresh connection, its reply decoded (RESP2); bounded
    /// by `connect_timeout` and 16 MiB.
    async fn query(
        &self,
        args: &[&str],
    ) -> Result<redis_protocol::resp2::types::OwnedFrame, UpstreamError> {
        let addr = self.target.to_string();
        let mut request = Vec::new();
        crate::resp::encode_command(&mut request, args.iter().map(|a| a.as_bytes()));
        let work = async {
            let mut stream = self.connect_inner().await?;
            let io = |source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            };
            stream.write_all(&request).await.map_err(io)?;
            stream.flush().await.map_err(io)?;
            let mut buf = BytesMut::with_capacity(256 * 1024);
            loop {
                match redis_protocol::resp2::decode::decode(&buf) {
                    Ok(Some((frame, _))) => return Ok(frame),
                    Ok(None) => {}
                    Err(e) => return Err(UpstreamError::AuthRejected(format!("reply: {e}"))),
                }
                if buf.len() > 16 * 1024 * 1024 {
                    return Err(UpstreamError::AuthRejected("reply too large".into()));
                }
                if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                    return Err(UpstreamError::ClosedDuringAuth);
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                addr: self.target.to_string(),
            }),
        }
    }
}

impl Connector {
    /// Sends redward's own `requests` (`n` of them, pipelined) on a fresh connection as
    /// redward's own user, and returns each error reply's text (`None` for a success), in
    /// order. Bounded by `connect_timeout` and 64 KiB a reply. For `ACL SETUSER`/`DELUSER` of
    /// the upstream identities (`identity.rs`).
    ///
    /// # Errors
    /// An [`UpstreamError`] when the server cannot be reached.
    pub async fn admin_requests(
        &self,
        requests: &[u8],
        n: usize,
    ) -> Result<Vec<Option<String>>, UpstreamError> {
        let admin = Connector {
            setup: Setup::default(),
            ..self.clone()
        };
        let addr = self.target.to_string();
        let work = async {
            let mut stream = admin.connect_inner().await?;
            let io = |source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            };
            stream.write_all(requests).await.map_err(io)?;
            stream.flush().await.map_err(io)?;
            let mut buf = BytesMut::with_capacity(512);
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let (len, info) = read_reply(&mut stream, &mut buf, 64 * 1024)
                    .await
                    .map_err(io)?;
                let reply = buf.split_to(len);
                out.push(info.is_error().then(|| {
                    let text = reply.get(1..len.saturating_sub(2)).unwrap_or(&[]);
                    String::from_utf8_lossy(text).into_owned()
                }));
            }
            Ok(out)
        };
        match tokio::time::timeout(self.connect_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                addr: self.target.to_string(),
            }),
        }
    }
}

/// Reads one `\r\n`-terminated line (at most 4 KiB): the reply to redward's AUTH.
async fn read_line(stream: &mut UpstreamStream) -> io::Result<Option<BytesMut>> {
    let mut buf = BytesMut::with_capacity(128);
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            buf.truncate(i);
            return Ok(Some(buf));
        }
        if buf.len() > 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "AUTH reply too long",
            ));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// One upstream connection, whichever transport.
#[derive(Debug)]
pub enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl UpstreamStream {
    /// The local address of a TCP connection (TLS or not), as Redis sees the client.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            UpstreamStream::Tcp(s) => s.local_addr().ok(),
            UpstreamStream::Tls(s) => s.get_ref().0.local_addr().ok(),
            UpstreamStream::Unix(_) => None,
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Unix(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_reply_names_the_server_in_resp2_and_resp3() {
        for reply in [
            &b"*14\r\n$6\r\nserver\r\n$6\r\nvalkey\r\n$7\r\nversion\r\n$5\r\n8.1.8\r\n$5\r\nproto\r\n:2\r\n"[..],
            b"%7\r\n$6\r\nserver\r\n$6\r\nvalkey\r\n$7\r\nversion\r\n$5\r\n8.1.8\r\n$5\r\nproto\r\n:3\r\n",
        ] {
            assert_eq!(
                hello_identity(reply),
                Some(("valkey".to_owned(), "8.1.8".to_owned()))
            );
        }
        assert_eq!(hello_identity(b"-ERR unknown command\r\n"), None);
    }
}
