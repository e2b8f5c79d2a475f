//! The admission step: every policy decision about one logged-in client's request, as one
//! pure function of the user, the parsed request and where the connection is ([`admit`]).
//! No I/O and no session state: the session applies the [`Verdict`] (the reply, the counts,
//! the audit trail) and goes on to answer or route the request (`dispatch.rs`). The command
//! rate is charged before it, being a budget rather than a rule.
//!
//! The order is Redis's (`processCommand` in server.c): the command's existence and arity,
//! then the ACL; then redward's own policy (scripts under a shared upstream identity, the
//! names redward keeps in Redis); then what depends on where the client is (a RESP2
//! subscriber's context, its own credential in `CONFIG SET`, what redward answers itself
//! queued in MULTI). The arguments are the parsed ones that will be forwarded, so an inline
//! request and its multibulk form get the same verdict.

use super::client_cmd;
use crate::acl::{self, Denied, User};
use crate::commands::{self, CommandSpec};
use crate::resp::{replies, Request};

/// Where the request is, as far as policy cares.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Context {
    /// Inside MULTI.
    pub in_multi: bool,
    /// A RESP2 connection with subscriptions (exact: every (un)subscribe confirmation in).
    pub pubsub_context: bool,
    /// `upstream.identity: shared`: scripts would run with redward's own rights.
    pub identity_shared: bool,
    /// redward keeps names in Redis that are no client's (`shared_limits::reserved`).
    pub reserved: Option<crate::shared_limits::Guard>,
    /// redward logs in to Redis as its `default` user (`CONFIG SET requirepass` would change
    /// redward's own credential).
    pub logs_in_as_default: bool,
}

/// What becomes of the request.
#[derive(Debug)]
pub(super) enum Verdict {
    /// It may run; its table entry when one was looked up (reused when routing).
    Admit(Option<&'static CommandSpec>),
    Refuse(Refusal),
}

/// Why a request is refused, and the reply, in the server's words where Redis has them.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Unknown command or wrong arity (unknown to redward means refused: it cannot be
    /// checked). Answered as `rejectCommand` answers: an EXEC's ends the transaction.
    Unknown(Vec<u8>),
    /// The user's ACL: counted by kind and audited, then answered as `rejectCommand`.
    Acl {
        spec: &'static CommandSpec,
        denied: Denied,
        reply: Vec<u8>,
    },
    /// SORT's own refusal, which Redis makes inside the command (not an ACL denial).
    Sort(&'static [u8]),
    /// redward's policy beyond the user's rules; counted as a denial.
    Policy(Vec<u8>),
    /// Where the client is; `counted`: as a refusal.
    Context { reply: Vec<u8>, counted: bool },
}

/// The verdict on `req` from `user` in `ctx`.
pub(super) fn admit(user: &User, req: &Request<'_>, ctx: &Context) -> Verdict {
    let is_acl = req.name().eq_ignore_ascii_case(b"acl");
    // A user with every permission takes the fast path: Redis makes the same existence and
    // arity checks with the same texts, and commands unknown to redward's table (newer
    // Redis, modules) still work. The table is looked up at most once.
    let mut resolved = None;
    if !user.unrestricted || is_acl {
        match checked(user, req) {
            Ok(spec) => resolved = Some(spec),
            Err(r) => return Verdict::Refuse(r),
        }
    }
    if let Some(r) = by_policy(user, req, ctx, &mut resolved) {
        return Verdict::Refuse(r);
    }
    if let Some(r) = in_context(req, ctx, is_acl, &mut resolved) {
        return Verdict::Refuse(r);
    }
    Verdict::Admit(resolved)
}

/// Existence, arity and the ACL, in Redis's order, with Redis's texts.
fn checked(user: &User, req: &Request<'_>) -> Result<&'static CommandSpec, Refusal> {
    let spec = commands::resolve(req).map_err(|e| Refusal::Unknown(e.reply(req)))?;
    if let Err(denied) = acl::check(user, spec, req) {
        // Redis refuses DEBUG and MODULE as protected commands before its ACL check
        // (`processCommand`, with the default enable-*-command no): same text here.
        let reply = match protected_refusal(spec.name) {
            Some(text) => text.to_vec(),
            None => denied.reply_as(&user.name, spec, req),
        };
        return Err(Refusal::Acl {
            spec,
            denied,
            reply,
        });
    }
    if let Some(refusal) = acl::sort_refusal(user, spec, req) {
        return Err(Refusal::Sort(refusal));
    }
    Ok(spec)
}

/// Under `upstream.identity: shared` no script from a narrow user (it would run with
/// redward's rights); where redward keeps names in Redis, none of them
/// (`shared_limits::reserved`).
fn by_policy(
    user: &User,
    req: &Request<'_>,
    ctx: &Context,
    resolved: &mut Option<&'static CommandSpec>,
) -> Option<Refusal> {
    if !user.unrestricted && ctx.identity_shared && runs_a_script(req.name()) {
        return Some(Refusal::Policy(replies::SCRIPTS_NEED_PER_USER.to_vec()));
    }
    let guard = ctx.reserved?;
    if !crate::shared_limits::mentions_reserved(req) {
        return None;
    }
    let spec = match resolved {
        Some(spec) => *spec,
        None => {
            let spec = commands::resolve(req).ok()?;
            *resolved = Some(spec);
            spec
        }
    };
    let r = crate::shared_limits::reserved(spec, req, guard)?;
    Some(Refusal::Policy(r.reply(&user.name, spec, req)))
}

/// A RESP2 subscriber's context, the client's own credential, and what redward answers
/// itself queued in MULTI.
fn in_context(
    req: &Request<'_>,
    ctx: &Context,
    is_acl: bool,
    resolved: &mut Option<&'static CommandSpec>,
) -> Option<Refusal> {
    if ctx.pubsub_context && answered_here(req, is_acl) {
        // Redis refuses these in a RESP2 subscriber's context (`processCommand`); redward
        // would otherwise answer them itself.
        if resolved.is_none() {
            *resolved = commands::resolve(req).ok();
        }
        let fullname = resolved.map_or("", |s| s.name);
        return Some(Refusal::Context {
            reply: format!(
                "-ERR Can't execute '{fullname}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
            )
            .into_bytes(),
            counted: false,
        });
    }
    if ctx.logs_in_as_default && changes_requirepass(req) {
        return Some(Refusal::Context {
            reply: replies::OWN_CREDENTIAL.to_vec(),
            counted: false,
        });
    }
    if ctx.in_multi {
        if let Some(reply) = client_cmd::refused_in_multi(req) {
            return Some(Refusal::Context {
                reply: reply.to_vec(),
                counted: true,
            });
        }
    }
    None
}

/// Redis 7.0's refusal of a protected command (`processCommand`, `CMD_PROTECTED`) when
/// `enable-debug-command` / `enable-module-command` are left at their default, `no`.
pub(super) fn protected_refusal(fullname: &str) -> Option<&'static [u8]> {
    let base = fullname.split('|').next().unwrap_or(fullname);
    match base {
        "debug" => Some(replies::DEBUG_NOT_ALLOWED),
        "module" => Some(replies::MODULE_NOT_ALLOWED),
        _ => None,
    }
}

/// EVAL, EVALSHA, FCALL and their `_RO` forms (`shared_limits::SCRIPTS`): what runs
/// `redis.call` with the connection's upstream user's rights.
pub(super) fn runs_a_script(name: &[u8]) -> bool {
    crate::shared_limits::SCRIPTS
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// Commands redward answers itself that Redis refuses in a RESP2 subscriber's context (the
/// others reach Redis, which refuses them with its own text).
pub(super) fn answered_here(req: &Request<'_>, is_acl: bool) -> bool {
    let name = req.name();
    is_acl
        || name.eq_ignore_ascii_case(b"auth")
        || name.eq_ignore_ascii_case(b"hello")
        || (name.eq_ignore_ascii_case(b"client")
            && req.argc() == 3
            && req.arg(1).eq_ignore_ascii_case(b"reply"))
}

/// `CONFIG SET requirepass ...` (in any of its parameter pairs): while redward is Redis's
/// `default` user, every later upstream connection would fail, for every client. ACL
/// SETUSER and friends are refused for the same reason (`acl_cmd.rs`).
fn changes_requirepass(req: &Request<'_>) -> bool {
    req.name().eq_ignore_ascii_case(b"config")
        && req.argc() >= 4
        && req.arg(1).eq_ignore_ascii_case(b"set")
        && (2..req.argc())
            .step_by(2)
            .any(|i| req.arg(i).eq_ignore_ascii_case(b"requirepass"))
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
