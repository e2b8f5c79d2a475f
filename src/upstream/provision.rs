//! Making the upstream identities (`identity.rs`) exist on the servers behind: all of them
//! at start-up, to learn at once whether redward's own user may manage users; and a reload's
//! changes on every server identity connections went to. A new connection makes its own
//! user exist as it logs in (`Connector::connect_inner`), so a server that was down here, a
//! promoted replica or a joining cluster node never misses one.

use std::sync::Arc;

use tracing::{info, warn};

use super::identity::{Changes, Identities};
use super::{Connector, UpstreamError};
use crate::resp::encode_command;

/// Why start-up stops under `upstream.identity: per_user`.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Redis refused `ACL SETUSER` to redward's own user (the text is Redis's: no secret).
    #[error(
        "upstream.identity: per_user needs redward's upstream user to manage users, and Redis \
         said `{0}`; add +acl to that user's rules (or set upstream.identity: shared)"
    )]
    NoAclPermission(String),
    /// Redis refused one user's rules.
    #[error("upstream.identity: Redis refused the rules of user `{user}`: {text}")]
    Refused { user: String, text: String },
}

/// Sets every identity on the configured upstream. Redis unreachable: a warning, and each
/// connection sets its own user later.
///
/// # Errors
/// A [`ProvisionError`] when Redis refuses the users.
pub async fn at_start(connector: &Connector) -> Result<(), ProvisionError> {
    let Some(ids) = connector.identities() else {
        return Ok(());
    };
    let all = ids.all();
    if all.is_empty() {
        return Ok(());
    }
    let mut requests = Vec::new();
    for id in &all {
        requests.extend_from_slice(id.setuser_request());
    }
    match connector.admin_requests(&requests, all.len()).await {
        Ok(replies) => {
            for (id, reply) in all.iter().zip(replies) {
                match reply {
                    Some(text) if text.starts_with("NOPERM") => {
                        return Err(ProvisionError::NoAclPermission(text))
                    }
                    Some(text) => {
                        return Err(ProvisionError::Refused {
                            user: id.user.clone(),
                            text,
                        })
                    }
                    None => {}
                }
            }
            ids.saw(connector.target());
            info!(
                users = all.len(),
                "upstream users set (upstream.identity: per_user)"
            );
            Ok(())
        }
        Err(e) => {
            warn!(error = %e, "upstream users not set yet: each connection sets its own");
            Ok(())
        }
    }
}

/// Applies a reload's `changes` on every server identities were made on (in the
/// background: a server that is down gets them with its next connection).
pub fn apply(connector: &Connector, ids: &Arc<Identities>, changes: Changes) {
    if changes.set.is_empty() && changes.removed.is_empty() {
        return;
    }
    let mut requests = Vec::new();
    let mut n = 0;
    for id in &changes.set {
        requests.extend_from_slice(id.setuser_request());
        n += 1;
    }
    for (_, name) in &changes.removed {
        encode_command(
            &mut requests,
            [&b"ACL"[..], b"DELUSER", name.as_bytes()].into_iter(),
        );
        n += 1;
    }
    let mut targets = ids.seen();
    if !targets.contains(connector.target()) {
        targets.push(connector.target().clone());
    }
    for target in targets {
        let c = connector.to_target(target);
        let requests = requests.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            match c.admin_requests(&requests, n).await {
                Ok(replies) => {
                    for text in replies.into_iter().flatten() {
                        warn!(upstream = %c.target(), reply = %text, "upstream user change refused");
                    }
                }
                Err(e @ UpstreamError::Timeout { .. }) | Err(e @ UpstreamError::Connect { .. }) => {
                    info!(upstream = %c.target(), error = %e, "upstream users: server not reached; its next connection sets them");
                }
                Err(e) => warn!(upstream = %c.target(), error = %e, "upstream users not changed"),
            }
        });
    }
}
