//! Sessions without sockets: everything sessions share, built from a config for driving a
//! session in memory, and [`Offline`], the per-request path `benches/path.rs` measures.

use super::*;

impl Shared {
    /// Everything sessions share, for `cfg`, without listeners, admin endpoint or shared
    /// upstream connections: for driving sessions in memory ([`Offline`]).
    ///
    /// # Errors
    /// A [`crate::tls::TlsError`] when the upstream TLS settings cannot be loaded.
    pub fn offline(cfg: &crate::config::Config) -> Result<Arc<Shared>, crate::tls::TlsError> {
        Ok(Shared::new(
            cfg,
            Connector::new(&cfg.upstream)?,
            None,
            Arc::new(Audit::default()),
            Arc::new(crate::metrics::Metrics::new()),
        ))
    }

    /// What the sessions of a server started from `cfg` share (generation 0 of the
    /// reloadable part).
    pub fn new(
        cfg: &crate::config::Config,
        connector: Connector,
        pool: Option<crate::mux::Pool>,
        audit: Arc<Audit>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Shared> {
        let memory = Arc::new(crate::memory::ClientMemory::new(
            cfg.limits.max_client_memory,
            metrics.client_memory.clone(),
            metrics.clients_evicted.clone(),
        ));
        Arc::new(Shared {
            live: arc_swap::ArcSwap::from_pointee(crate::reload::live(cfg, 0)),
            generation: std::sync::atomic::AtomicU64::new(0),
            connector,
            pool,
            audit,
            limiter: Arc::new(crate::limits::Limiter::new(cfg.connection_limits)),
            metrics,
            memory,
            refusal_lines: crate::throttle::Throttle::default(),
        })
    }
}

/// One session's per-request work without sockets: framing, the ACL check, forwarding, reply
/// scanning and ordering, exactly as [`serve`] does them between a read and a write. For
/// `benches/path.rs`, which sets it beside a plain copy of the same bytes.
pub struct Offline {
    st: State,
    parser: RequestParser,
    scanner: ReplyScanner,
}

impl Offline {
    /// A logged-in session of `user`, forwarding as on a shared upstream connection.
    pub fn new(shared: Arc<Shared>, user: Arc<User>) -> Self {
        let mut st = State::new(shared, SocketAddr::from(([127, 0, 0, 1], 0)));
        st.user = Some(user);
        Offline {
            st,
            parser: RequestParser::new(),
            scanner: ReplyScanner::new(),
        }
    }

    /// Takes every complete request from `cin`; appends what goes to Redis to `upstream`.
    pub fn requests(&mut self, cin: &mut BytesMut, upstream: &mut BytesMut) {
        let st = &mut self.st;
        st.now = None;
        loop {
            let limits = st.frame_limits();
            let Ok(Some(frame)) = self.parser.parse(cin, &limits) else {
                break;
            };
            let len = frame.len();
            if let Frame::Command { .. } = frame {
                let req = self.parser.request(cin, &frame);
                let raw = cin.get(..len).unwrap_or(&[]);
                // As on the shared connection (the default); a command that needs a
                // connection of its own is dispatched as if it had one.
                match st.dispatch(&req, raw, ConnKind::Shared) {
                    Outcome::NeedUpstream => {
                        st.retrying = true;
                        st.dispatch(&req, raw, ConnKind::Dedicated);
                    }
                    // (Replies come only through `replies`: a subscriber's state waits.)
                    Outcome::WaitForReplies => break,
                    Outcome::Done => {}
                }
            }
            cin.advance(len);
        }
        upstream.extend_from_slice(&st.uout);
        st.uout.clear();
        st.shared_unsent = 0;
    }

    /// Takes Redis's replies from `uin`; appends what goes to the client to `client`.
    ///
    /// # Errors
    /// As a session would fail on them (a malformed or unexpected reply).
    pub fn replies(
        &mut self,
        uin: &mut BytesMut,
        client: &mut BytesMut,
    ) -> Result<(), SessionError> {
        self.st.take_replies(&mut self.scanner, uin)?;
        client.extend_from_slice(&self.st.cout);
        self.st.cout.clear();
        Ok(())
    }
}
