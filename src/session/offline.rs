//! Sessions without sockets: [`Offline`], the per-request path `benches/path.rs` measures.

use super::*;

/// One session's per-request work without sockets: framing, the ACL check, forwarding, reply
/// scanning and ordering, exactly as [`serve`] does them between a read and a write. For
/// `benches/path.rs`, which sets it beside a plain copy of the same bytes.
pub struct Offline {
    st: State,
    parser: RequestParser,
    scanner: ReplyScanner,
}

impl Offline {
    /// A session logged in with `login`, forwarding as on a shared upstream connection.
    pub fn new(shared: Arc<Shared>, login: LoggedIn) -> Self {
        let addrs = Addrs {
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            local: None,
            node: None,
        };
        let st = State::new(shared, addrs, Some(login));
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
                    Outcome::Reattach(setup) => {
                        st.client.setup = setup;
                        st.dispatch(&req, raw, ConnKind::Shared);
                    }
                    Outcome::NeedUpstream => {
                        st.dispatch(&req, raw, ConnKind::Dedicated);
                    }
                    // (Replies come only through `replies`: a subscriber's state waits.)
                    Outcome::WaitForReplies => break,
                    Outcome::Done => {}
                }
            }
            cin.advance(len);
        }
        upstream.extend_from_slice(&st.out.uout);
        st.out.uout.clear();
        st.out.shared_unsent = 0;
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
        client.extend_from_slice(&self.st.out.cout);
        self.st.out.cout.clear();
        Ok(())
    }
}
