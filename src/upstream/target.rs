//! What an upstream connection goes to and as whom: the [`Target`] (resolved to an address at
//! every connect, so one whose address changes is followed without a restart) and the
//! [`Credential`] redward logs in with. Pools of shared connections are keyed by target
//! (`mux::Pools`).

use std::sync::Arc;

use crate::config::{UpstreamAddr, UpstreamConfig};
use crate::resp::encode_command;

use super::sentinel::Sentinel;
use super::UpstreamError;

/// Where upstream connections go.
///
/// Today every target is a fixed address (`upstream.address`). A Sentinel-named master (ask
/// the Sentinels which address is the master now) and a cluster node (an address a `MOVED`
/// named) are targets too: [`Target::resolve`] is where each finds its address, at every
/// connect.
#[derive(Debug, Clone)]
pub enum Target {
    /// One fixed address: TCP host and port, or a unix socket.
    Fixed(UpstreamAddr),
    /// The master a set of Sentinels name (`upstream.sentinel`).
    Sentinel(Arc<Sentinel>),
    /// An address another part of redward chooses and may change: a cluster's entry point
    /// is whichever node last answered (`cluster.rs`).
    Chosen(Arc<dyn Chooser>),
}

/// Chooses the address a [`Target::Chosen`] goes to now.
pub trait Chooser: Send + Sync + std::fmt::Debug {
    /// The address to connect to; `None` when none is known.
    fn choose(&self) -> Option<UpstreamAddr>;
    /// A stable name, for pools and messages.
    fn name(&self) -> &str;
    /// A cluster node's id, which every new connection confirms (`CLUSTER MYID`) before it
    /// is used, and before the credential where the node answers without a login.
    fn node_id(&self) -> Option<Arc<str>> {
        None
    }
    /// Fires when the chosen address changes or goes (see [`Target::epoch`]).
    fn epoch(&self) -> Option<tokio_util::sync::CancellationToken> {
        None
    }
    /// A new connection did not confirm [`Chooser::node_id`].
    fn not_the_node(&self) {}
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::Fixed(a), Target::Fixed(b)) => a == b,
            (Target::Sentinel(a), Target::Sentinel(b)) => Arc::ptr_eq(a, b),
            (Target::Chosen(a), Target::Chosen(b)) => a.name() == b.name(),
            _ => false,
        }
    }
}

impl Eq for Target {}

impl std::hash::Hash for Target {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Target::Fixed(a) => a.hash(state),
            Target::Sentinel(s) => s.master_name().hash(state),
            Target::Chosen(c) => c.name().hash(state),
        }
    }
}

impl Target {
    /// The address to connect to now.
    ///
    /// # Errors
    /// An [`UpstreamError`] when the target cannot say (no Sentinel names a master).
    pub async fn resolve(&self) -> Result<UpstreamAddr, UpstreamError> {
        match self {
            Target::Fixed(addr) => Ok(addr.clone()),
            Target::Sentinel(s) => s.resolve().await,
            Target::Chosen(c) => c.choose().ok_or_else(|| UpstreamError::NoAddress {
                what: c.name().to_owned(),
            }),
        }
    }

    /// For a target whose address can change: the token that fires when it does. Take it
    /// before connecting, and drop the connection when it fires.
    pub fn epoch(&self) -> Option<tokio_util::sync::CancellationToken> {
        match self {
            Target::Fixed(_) => None,
            Target::Sentinel(s) => Some(s.epoch()),
            Target::Chosen(c) => c.epoch(),
        }
    }

    /// The cluster node id a new connection must confirm, if any.
    pub fn node_id(&self) -> Option<Arc<str>> {
        match self {
            Target::Chosen(c) => c.node_id(),
            Target::Fixed(_) | Target::Sentinel(_) => None,
        }
    }

    /// A new connection's `CLUSTER MYID` did not confirm [`Target::node_id`].
    pub fn not_the_node(&self) {
        if let Target::Chosen(c) = self {
            c.not_the_node();
        }
    }

    /// The host connections go to now, if over TCP and known (`-MOVED <slot> :<port>`
    /// means this host: `announce::redirect`).
    pub fn host_now(&self) -> Option<String> {
        let addr = match self {
            Target::Fixed(addr) => Some(addr.clone()),
            Target::Sentinel(s) => s.current(),
            Target::Chosen(c) => c.choose(),
        };
        match addr? {
            UpstreamAddr::Tcp { host, .. } => Some(host),
            UpstreamAddr::Unix(_) => None,
        }
    }

    /// Whether a new connection must confirm with `ROLE` that it reached a master.
    pub fn confirms_role(&self) -> bool {
        matches!(self, Target::Sentinel(_))
    }

    /// A reply said `-READONLY`: ask the Sentinels again (see [`Sentinel::suspect`]).
    pub fn suspect(&self, why: &'static str) {
        if let Target::Sentinel(s) = self {
            s.suspect(why);
        }
    }

    /// What it means when [`Target::epoch`] fires, for the log line of a session it ends.
    pub fn change(&self) -> &'static str {
        match self {
            Target::Fixed(_) => "the upstream address changed",
            Target::Sentinel(_) => "the Sentinel-named master changed",
            Target::Chosen(_) => "the cluster node's address changed",
        }
    }

    /// A new connection's `ROLE` said it is not the master.
    pub fn not_master(&self, why: &str) {
        if let Target::Sentinel(s) = self {
            s.not_master(why);
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Fixed(addr) => addr.fmt(f),
            Target::Sentinel(s) => match s.current() {
                Some(addr) => write!(f, "{addr} (Sentinel master {})", s.master_name()),
                None => write!(f, "Sentinel master {}", s.master_name()),
            },
            Target::Chosen(c) => match c.choose() {
                Some(addr) => write!(f, "{addr} ({})", c.name()),
                None => f.write_str(c.name()),
            },
        }
    }
}

/// The credential redward logs in to Redis with: `AUTH [username] password`, pre-encoded,
/// sent first on every connection (and again after a client's RESET, which logs the upstream
/// connection out). Its `Debug` never shows the password.
#[derive(Clone)]
pub struct Credential {
    username: Option<String>,
    request: Arc<[u8]>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// `upstream.username` / `upstream.password`; `None` without a password (Redis without
    /// `requirepass` or ACL users: nothing to send).
    pub fn from_config(cfg: &UpstreamConfig) -> Option<Credential> {
        let password = cfg.password.as_ref()?;
        let mut request = Vec::new();
        let pw = password.expose().as_bytes();
        match &cfg.username {
            Some(user) => encode_command(
                &mut request,
                [&b"AUTH"[..], user.as_bytes(), pw].into_iter(),
            ),
            None => encode_command(&mut request, [&b"AUTH"[..], pw].into_iter()),
        }
        Some(Credential {
            username: cfg.username.clone(),
            request: Arc::from(request),
        })
    }

    /// The AUTH request, ready to write.
    pub fn auth_request(&self) -> &[u8] {
        &self.request
    }

    /// A key only holders of this credential can derive (SHA-256 of `label` and the AUTH
    /// request), so every instance logging in the same way agrees on it.
    pub fn derive_key(&self, label: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(label);
        h.update(b"\0");
        h.update(&self.request);
        h.finalize().into()
    }

    /// Whether this logs in as Redis's `default` user, whose password is `requirepass`.
    pub fn is_default_user(&self) -> bool {
        self.username.as_deref().is_none_or(|u| u == "default")
    }
}
