//! AUTH and HELLO, answered by redward the way Redis 7.0 answers them (`authCommand` in
//! `acl.c`, `helloCommand` in `networking.c`), against redward's own users.
//!
//! Pure functions: they read the request and the user table and say who the client is
//! afterwards and what to reply. Only they produce an authenticated user, and a password never
//! leaves them (it is hashed and compared in constant time by `acl::User::check_password`).

use std::sync::Arc;

use bytes::Bytes;

use crate::acl::User;
use crate::config::Users;
use crate::resp::replies;
use crate::resp::request::{string2ll, Request};

/// Proof that a connection is logged in as a user, the way rustls hands out a verified
/// certificate only from its verifier: only this module makes one (a password checked by
/// [`authenticate`], the `default` user being `nopass`, or a reload renewing an earlier
/// proof) and the listener, after rustls verified a client certificate that names the user.
/// A session holds an `Option<LoggedIn>`, so "logged in" cannot be claimed anywhere else.
#[derive(Debug, Clone)]
pub struct LoggedIn(Arc<User>);

impl LoggedIn {
    pub fn user(&self) -> &Arc<User> {
        &self.0
    }

    /// Every connection starts logged in as `default` when it is `nopass` and enabled, as in
    /// Redis (`createClient` in networking.c: `DefaultUser` with `USER_FLAG_NOPASS` means
    /// `c->authenticated`).
    pub fn implicit(users: &Users) -> Option<LoggedIn> {
        users.implicit_default().cloned().map(LoggedIn)
    }

    /// A client certificate that rustls verified names this enabled user (mTLS login, as
    /// Redis 8's `tls-auth-clients-user`).
    pub(crate) fn by_certificate(user: Arc<User>) -> LoggedIn {
        LoggedIn(user)
    }

    /// After `ACL SETUSER`/`DELUSER`/`LOAD`: the same user with its new rules (disabled or
    /// not: Redis keeps a disabled user's connections), or `None` when it was removed.
    pub fn renewed_even_if_disabled(&self, users: &Users) -> Option<LoggedIn> {
        users
            .get(self.0.name.as_bytes())
            .map(|u| LoggedIn(Arc::clone(u)))
    }

    /// After a configuration reload: the same user with its new rules, or `None` when it was
    /// removed or disabled (redward's choice for reloads; `ACL SETUSER ... off` keeps them,
    /// [`LoggedIn::renewed_even_if_disabled`], as Redis does).
    pub fn renewed(&self, users: &Users) -> Option<LoggedIn> {
        users
            .get(self.0.name.as_bytes())
            .filter(|u| u.enabled)
            .map(|u| LoggedIn(Arc::clone(u)))
    }
}

/// What an AUTH request did.
#[derive(Debug)]
pub enum AuthOutcome {
    /// Logged in as this user; reply `+OK`.
    LoggedIn(LoggedIn),
    /// Refused with this reply (the connection's login state is unchanged).
    Refused {
        reply: Bytes,
        failed_user: Option<String>,
    },
}

/// `AUTH <password>` (user `default`) or `AUTH <user> <password>`; arity already checked
/// (`argc >= 2`).
pub fn auth(users: &Users, req: &Request<'_>) -> AuthOutcome {
    if req.argc() > 3 {
        return AuthOutcome::Refused {
            reply: Bytes::from_static(replies::SYNTAX),
            failed_user: None,
        };
    }
    let (name, password): (&[u8], &[u8]) = if req.argc() == 2 {
        if users.default_is_nopass() {
            return AuthOutcome::Refused {
                reply: Bytes::from_static(replies::AUTH_NOPASS_DEFAULT),
                failed_user: None,
            };
        }
        (b"default", req.arg(1))
    } else {
        (req.arg(1), req.arg(2))
    };
    match authenticate(users, name, password) {
        Some(user) => AuthOutcome::LoggedIn(user),
        None => AuthOutcome::Refused {
            reply: Bytes::from_static(replies::WRONGPASS),
            failed_user: Some(crate::audit::bounded(name)),
        },
    }
}

/// Redis's `ACLAuthenticateUser`: the user must exist, be `on`, and the password must match.
pub fn authenticate(users: &Users, name: &[u8], password: &[u8]) -> Option<LoggedIn> {
    let user = users.get(name)?;
    user.check_password(password)
        .then(|| LoggedIn(Arc::clone(user)))
}

/// What a HELLO request did.
#[derive(Debug)]
pub struct HelloOutcome<'a> {
    /// Set when an AUTH option logged the client in (even if a later option then failed, as
    /// in Redis, which applies options in order).
    pub login: Option<LoggedIn>,
    /// A failed AUTH option's user name, for the audit log.
    pub failed_user: Option<String>,
    /// `Ok`: forward HELLO to Redis as `HELLO [version] [SETNAME name]`, without the AUTH
    /// option, so the client gets Redis's own reply. `Err`: answer locally with this reply.
    pub result: Result<HelloForward<'a>, Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloForward<'a> {
    pub version: Option<&'a [u8]>,
    pub setname: Option<&'a [u8]>,
    /// Whether the request had an AUTH option (then it must be rewritten before forwarding).
    pub had_auth: bool,
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`, checked in Redis 7.0's order: version,
/// then each option in turn, then the authentication requirement.
pub fn hello<'a>(users: &Users, req: &Request<'a>, authenticated: bool) -> HelloOutcome<'a> {
    let mut out = HelloOutcome {
        login: None,
        failed_user: None,
        result: Err(Bytes::new()),
    };
    let mut fwd = HelloForward {
        version: None,
        setname: None,
        had_auth: false,
    };
    let mut next = 1;
    if req.argc() >= 2 {
        let v = req.arg(1);
        match string2ll(v) {
            None => {
                out.result = Err(Bytes::from_static(replies::HELLO_BAD_VERSION));
                return out;
            }
            Some(2 | 3) => fwd.version = Some(v),
            Some(_) => {
                out.result = Err(Bytes::from_static(replies::NOPROTO));
                return out;
            }
        }
        next = 2;
    }
    let mut j = next;
    while j < req.argc() {
        let more = req.argc() - 1 - j;
        let opt = req.arg(j);
        if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
            fwd.had_auth = true;
            let name = req.arg(j + 1);
            match authenticate(users, name, req.arg(j + 2)) {
                Some(user) => out.login = Some(user),
                None => {
                    out.failed_user = Some(crate::audit::bounded(name));
                    out.result = Err(Bytes::from_static(replies::WRONGPASS));
                    return out;
                }
            }
            j += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
            let name = req.arg(j + 1);
            if !valid_client_name(name) {
                out.result = Err(Bytes::from_static(replies::BAD_CLIENT_NAME));
                return out;
            }
            fwd.setname = Some(name);
            j += 2;
        } else {
            out.result = Err(Bytes::from(replies::hello_syntax(opt)));
            return out;
        }
    }
    if !authenticated && out.login.is_none() {
        out.result = Err(Bytes::from_static(replies::HELLO_NOAUTH));
        return out;
    }
    out.result = Ok(fwd);
    out
}

/// `clientSetName` (`networking.c`): empty clears the name; otherwise only '!'..='~'.
pub fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::resp::{encode_command, Frame, Limits, RequestParser};

    /// The users a configuration with these `users:` entries gives.
    fn users_from(entries: &str) -> Users {
        let text = format!(
            "listen: [{{ address: \"127.0.0.1:0\", tls: off }}]\n\
             upstream: {{ address: \"127.0.0.1:1\" }}\nusers:\n{entries}"
        );
        crate::config::from_text(&text, Path::new("test.yaml"))
            .expect("config")
            .users
    }

    fn users() -> Users {
        users_from(
            "  - { name: default, rules: \"on >secret +@all ~*\" }\n\
             \x20 - { name: app, rules: \"on >pw +@read ~app:*\" }\n\
             \x20 - { name: gone, rules: \"off >pw +@all ~*\" }\n",
        )
    }

    /// Runs `f` on the request `args` encode to.
    fn with_request<T>(args: &[&str], f: impl FnOnce(&Request<'_>) -> T) -> T {
        let mut buf = Vec::new();
        encode_command(&mut buf, args.iter().map(|a| a.as_bytes()));
        let mut parser = RequestParser::new();
        let frame = parser
            .parse(&buf, &Limits::new(1 << 20, 1 << 16, false))
            .expect("parses")
            .expect("complete");
        assert!(matches!(frame, Frame::Command { .. }));
        let req = parser.request(&buf, &frame);
        f(&req)
    }

    fn logged_in_as(outcome: AuthOutcome) -> Option<String> {
        match outcome {
            AuthOutcome::LoggedIn(proof) => Some(proof.user().name.clone()),
            AuthOutcome::Refused { .. } => None,
        }
    }

    #[test]
    fn auth_yields_a_proof_only_for_an_enabled_user_with_the_right_password() {
        let users = users();
        let auth_as = |args: &[&str]| with_request(args, |r| logged_in_as(auth(&users, r)));
        assert_eq!(auth_as(&["AUTH", "secret"]), Some("default".into()));
        assert_eq!(auth_as(&["AUTH", "app", "pw"]), Some("app".into()));
        assert_eq!(auth_as(&["AUTH", "app", "wrong"]), None);
        assert_eq!(auth_as(&["AUTH", "gone", "pw"]), None, "an `off` user");
        assert_eq!(auth_as(&["AUTH", "nobody", "pw"]), None);
        // Redis's texts: WRONGPASS for a bad pair, a syntax error for too many arguments.
        with_request(&["AUTH", "app", "wrong"], |r| match auth(&users, r) {
            AuthOutcome::Refused { reply, failed_user } => {
                assert!(reply.starts_with(b"-WRONGPASS"));
                assert_eq!(failed_user.as_deref(), Some("app"));
            }
            AuthOutcome::LoggedIn(_) => panic!("logged in with a wrong password"),
        });
        with_request(&["AUTH", "a", "b", "c"], |r| {
            assert!(matches!(
                auth(&users, r),
                AuthOutcome::Refused {
                    failed_user: None,
                    ..
                }
            ));
        });
    }

    #[test]
    fn a_proof_is_renewed_by_a_reload_and_lost_when_the_user_is_disabled() {
        let users = users();
        let proof = authenticate(&users, b"app", b"pw").expect("logs in");
        assert!(proof.renewed(&users).is_some());
        let off = users_from("  - { name: app, rules: \"off >pw +@read ~app:*\" }\n");
        assert!(proof.renewed(&off).is_none());
        // `default` with a password gives no implicit login.
        assert!(LoggedIn::implicit(&users).is_none());
    }

    #[test]
    fn hello_checks_version_then_options_then_login_in_redis_order() {
        let users = users();
        let hello_as = |args: &[&str], authenticated: bool| {
            with_request(args, |r| {
                let out = hello(&users, r, authenticated);
                (
                    out.login.map(|l| l.user().name.clone()),
                    out.result
                        .map(|f| (f.version.is_some(), f.had_auth))
                        .map_err(|e| String::from_utf8_lossy(&e).into_owned()),
                )
            })
        };
        let (login, result) = hello_as(&["HELLO", "3", "AUTH", "app", "pw"], false);
        assert_eq!(login.as_deref(), Some("app"));
        assert_eq!(result, Ok((true, true)));
        let (_, result) = hello_as(&["HELLO", "4"], true);
        assert!(result.is_err_and(|e| e.starts_with("-NOPROTO")));
        let (_, result) = hello_as(&["HELLO", "3"], false);
        assert!(result.is_err_and(|e| e.starts_with("-NOAUTH")));
        // An AUTH before a bad option stays done, as Redis applies options in order.
        let (login, result) = hello_as(&["HELLO", "3", "AUTH", "app", "pw", "BOGUS"], false);
        assert_eq!(login.as_deref(), Some("app"));
        assert!(result.is_err());
    }
}
