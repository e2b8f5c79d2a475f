//! `upstream.identity: per_user` in the session: before a request goes to Redis, the
//! connection it rides is logged in as the client's own upstream user (`upstream/identity.rs`).
//!
//! Checked where a request is forwarded, not where a login happens, so every way the login
//! changes (AUTH, HELLO AUTH, RESET, a reload renewing the user) is covered by one check:
//! on shared connections the client moves to the pool of its user's connections; on a
//! connection of its own redward logs that connection in again (as itself, `ACL SETUSER`
//! for the user, `AUTH` as the user: Redis keeps the database, protocol, transaction and
//! subscriptions across AUTH); before a connection exists, the one opened is set up so.

use std::sync::Arc;

use bytes::Bytes;

use super::slots::Hook;
use super::state::State;
use super::{ConnKind, Outcome};
use crate::acl::User;
use crate::resp::replies;
use crate::upstream::identity::Tag;
use crate::upstream::Setup;

impl State {
    /// The upstream user `user`'s commands must run as: `Ok(None)` under `shared` (redward's
    /// own), `Err` (answered) when a per-user identity is missing: never redward's own then.
    fn upstream_identity(&mut self, user: &Arc<User>) -> Result<Option<Tag>, Outcome> {
        let Some(ids) = self.shared.connector.identities() else {
            return Ok(None);
        };
        if let Some((cached, tag)) = &self.identity {
            if Arc::ptr_eq(cached, user) {
                return Ok(Some(*tag));
            }
        }
        match ids.of(&user.name) {
            Some(id) => {
                self.identity = Some((Arc::clone(user), id.tag));
                Ok(Some(id.tag))
            }
            None => {
                self.reject(Bytes::from_static(replies::IDENTITY_GONE));
                Err(Outcome::Done)
            }
        }
    }

    /// Whether `user`'s scripts and functions run as an upstream user that Redis keeps from
    /// the shared state (`upstream/confine.rs`); `false` under `shared`.
    pub(super) fn scripts_confined(&mut self, user: &Arc<User>) -> bool {
        let Some(ids) = self.shared.connector.identities() else {
            return false;
        };
        ids.of(&user.name).is_some_and(|id| id.scripts_confined)
    }

    /// Makes the connection a request is about to ride (`conn`) log in upstream as `user`'s
    /// identity. `Some(outcome)`: the request waits for that (a move between pools) or was
    /// answered; `None`: forward it now.
    pub(super) fn follow_identity(&mut self, user: &Arc<User>, conn: ConnKind) -> Option<Outcome> {
        let tag = match self.upstream_identity(user) {
            Ok(tag) => tag,
            Err(outcome) => return Some(outcome),
        };
        if self.client.setup.user == tag {
            return None;
        }
        match conn {
            ConnKind::Shared => Some(Outcome::Reattach(Setup {
                user: tag,
                ..self.client.setup
            })),
            ConnKind::Dedicated => {
                self.relogin_own(tag);
                None
            }
            ConnKind::None => {
                self.client.setup.user = tag;
                None
            }
        }
    }

    /// Logs the client's own connection in as `tag`'s identity: as redward first (the user
    /// on it may not manage users), then the user made to exist with its current rules,
    /// then AUTH as it. Replies swallowed; any error closes the connection
    /// ([`Hook::UpstreamAuth`]).
    fn relogin_own(&mut self, tag: Option<Tag>) {
        let shared = Arc::clone(&self.shared);
        let own = shared
            .connector
            .auth_request()
            .unwrap_or(replies::AUTH_DEFAULT_NOPASS);
        self.send_own(own, Hook::UpstreamAuth, false);
        if let Some(id) = tag.and_then(|t| shared.connector.identities()?.by_tag(t)) {
            self.send_own(id.setuser_request(), Hook::UpstreamAuth, false);
            self.send_own(id.auth_request(), Hook::UpstreamAuth, false);
        }
        self.client.setup.user = tag;
        if let Some(old) = self.own_gauge.take() {
            old.dec();
            let name = tag
                .and_then(|t| shared.connector.identities()?.by_tag(t))
                .map(|id| id.user.clone());
            let gauge = shared.metrics.user_connections(name.as_deref());
            gauge.inc();
            self.own_gauge = Some(gauge);
        }
    }
}
