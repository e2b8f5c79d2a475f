//! `ACL SETUSER`, `DELUSER`, `SAVE` and `LOAD` through redward (`runtime_users.rs`): for a
//! client whose rules allow them (checked before, as Redis checks `@admin`/`@dangerous`),
//! with Redis's replies and errors. Each change takes effect for every session at its next
//! command, is an audit event and counts in `redward_acl_changes_total`.

use bytes::Bytes;
use tracing::info;

use super::state::State;
use super::Outcome;
use crate::acl::User;
use crate::resp::Request;

impl State {
    /// Answers the `ACL` subcommands that change users; `None` for the others.
    pub(super) fn acl_admin(&mut self, req: &Request<'_>, user: &User) -> Option<Outcome> {
        if req.argc() < 2 {
            return None;
        }
        let sub = req.arg(1).to_ascii_lowercase();
        let runtime = &self.shared.runtime_users;
        let result: Result<(Vec<u8>, Option<crate::runtime_users::Changed>), String> =
            match sub.as_slice() {
                b"setuser" => {
                    let name = req.arg(2);
                    let args: Vec<&[u8]> = (3..req.argc()).map(|i| req.arg(i)).collect();
                    runtime
                        .setuser(name, &args)
                        .map(|c| (b"+OK\r\n".to_vec(), Some(c)))
                }
                b"deluser" => {
                    let names: Vec<&[u8]> = (2..req.argc()).map(|i| req.arg(i)).collect();
                    runtime
                        .deluser(&names)
                        .map(|(n, c)| (format!(":{n}\r\n").into_bytes(), Some(c)))
                }
                b"save" => runtime.save().map(|()| (b"+OK\r\n".to_vec(), None)),
                b"load" => runtime.load().map(|c| (b"+OK\r\n".to_vec(), Some(c))),
                _ => return None,
            };
        match result {
            Ok((reply, changed)) => {
                if let Some(changed) = &changed {
                    self.shared.publish_users(changed);
                    self.share_change(&sub, changed);
                }
                self.shared.metrics.acl_changes.inc();
                self.audit_acl_change(user, &sub, req, changed.as_ref());
                self.local(Bytes::from(reply));
            }
            Err(text) => {
                // `addReplyErrorSdsSafe`: no line breaks in an error.
                let text = text.replace(['\r', '\n'], " ");
                self.local(Bytes::from(format!("-ERR {text}\r\n")));
            }
        }
        Some(Outcome::Done)
    }

    /// Passes a change to the other instances (`limits.shared_state: upstream`).
    fn share_change(&self, sub: &[u8], changed: &crate::runtime_users::Changed) {
        use crate::shared_users::{line, Write};
        let Some(shared) = self.shared.shared_users.get() else {
            return;
        };
        if sub == b"load" {
            shared.write(Write::Replace(self.shared.runtime_users.runtime_lines()));
            return;
        }
        if !changed.set.is_empty() {
            shared.write(Write::Set(changed.set.iter().map(|u| line(u)).collect()));
        }
        if !changed.removed.is_empty() {
            shared.write(Write::Remove(changed.removed.clone()));
        }
    }

    /// One audit line per change: who, from where, what, which users; never a rule (it may
    /// hold a password).
    fn audit_acl_change(
        &self,
        user: &User,
        sub: &[u8],
        req: &Request<'_>,
        changed: Option<&crate::runtime_users::Changed>,
    ) {
        let set: Vec<&str> = changed
            .map(|c| c.set.iter().map(|u| u.name.as_str()).collect())
            .unwrap_or_default();
        let removed: Vec<&str> = changed
            .map(|c| c.removed.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let target = if sub == b"setuser" || sub == b"deluser" {
            crate::audit::bounded(req.arg(2))
        } else {
            String::new()
        };
        info!(
            target: "redward::audit",
            by = %user.name,
            peer = %self.peer,
            command = %format!("acl|{}", String::from_utf8_lossy(sub)),
            user = %target,
            set = ?set,
            removed = ?removed,
            "ACL change"
        );
        self.shared.audit.record_change(&crate::audit::Change {
            by: user.name.clone(),
            peer: self.peer,
            command: format!("acl|{}", String::from_utf8_lossy(sub)),
            set: set
                .iter()
                .map(|s| crate::audit::bounded(s.as_bytes()))
                .collect(),
            removed: removed
                .iter()
                .map(|s| crate::audit::bounded(s.as_bytes()))
                .collect(),
        });
    }
}
