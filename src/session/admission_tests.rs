//! The admission step alone: no sockets, no session. Expected texts are Redis 7.0.15's (the
//! differential tests against live servers are `tests/acl_dryrun.rs` and
//! `tests/transparency.rs`).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::acl::parse_user;
use crate::resp::request::{Frame, Limits, RequestParser};

fn user(rules: &str) -> User {
    parse_user("u", rules).unwrap()
}

/// The verdict on `wire` (one request, inline or multibulk), as the reply text it would get
/// (`+ADMIT` when admitted).
fn verdict(u: &User, wire: &[u8], ctx: &Context) -> String {
    let mut parser = RequestParser::new();
    let frame = parser.parse(wire, &Limits::default()).unwrap().unwrap();
    assert!(matches!(frame, Frame::Command { .. }), "{wire:?}");
    let req = parser.request(wire, &frame);
    match admit(u, &req, ctx) {
        Verdict::Admit(_) => "+ADMIT".to_owned(),
        Verdict::Refuse(
            Refusal::Unknown(r)
            | Refusal::Acl { reply: r, .. }
            | Refusal::Policy(r)
            | Refusal::Context { reply: r, .. },
        ) => String::from_utf8(r).unwrap().trim_end().to_owned(),
        Verdict::Refuse(Refusal::Sort(r)) => String::from_utf8_lossy(r).trim_end().to_owned(),
    }
}

/// `args` as a multibulk request.
fn multibulk(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::resp::encode_command(&mut out, args.iter().map(|a| a.as_bytes()));
    out
}

/// `args` as an inline request (each argument quoted, with the escapes Redis reads).
fn inline(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.push(b'"');
        for b in a.bytes() {
            match b {
                b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                b' '..=b'~' => out.push(b),
                _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            }
        }
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn guarded() -> Context {
    Context {
        reserved: Some(crate::shared_limits::Guard {
            state_db: Some(15),
            scripts_confined: false,
        }),
        ..Context::default()
    }
}

#[test]
fn inline_and_multibulk_forms_of_a_request_reach_the_same_verdict() {
    let users = [
        user("on nopass ~* &* +@all"),
        user("on nopass ~app:* &news -@all +get +set +eval +publish +subscribe +sort"),
        user("on nopass resetkeys %R~app:* +@read"),
    ];
    let requests: &[&[&str]] = &[
        &["GET", "app:1"],
        &["GET", "other"],
        &["SET", "app:1", "v"],
        &["set", "app:1"],
        &["NOSUCH", "x"],
        &["PUBLISH", "news", "hi"],
        &["PUBLISH", "sports", "hi"],
        &["EVAL", "return 1", "0"],
        &["GET", "redward:users"],
        &["SELECT", "15"],
        &["FLUSHALL"],
        &["SORT", "app:l", "BY", "w_*"],
        &["CONFIG", "SET", "requirepass", "x"],
        &["GET", "app:\u{1}\"quoted\" key"],
        &["DEBUG", "SLEEP", "0"],
    ];
    let contexts = [
        Context::default(),
        guarded(),
        Context {
            identity_shared: true,
            logs_in_as_default: true,
            in_multi: true,
            ..Context::default()
        },
    ];
    let mut refused = 0;
    for u in &users {
        for ctx in &contexts {
            for args in requests {
                let a = verdict(u, &multibulk(args), ctx);
                let b = verdict(u, &inline(args), ctx);
                assert_eq!(a, b, "{args:?} in {ctx:?}");
                refused += usize::from(a != "+ADMIT");
            }
        }
    }
    assert!(
        refused > 40,
        "the cases refuse too little to mean much: {refused}"
    );
}

#[test]
fn existence_and_arity_come_before_the_acl_in_redis_words() {
    let narrow = user("on nopass ~app:* +get");
    let ctx = Context::default();
    assert_eq!(
        verdict(&narrow, &multibulk(&["NOSUCH", "x"]), &ctx),
        "-ERR unknown command 'NOSUCH', with args beginning with: 'x'"
    );
    assert_eq!(
        verdict(&narrow, &multibulk(&["SET", "app:1"]), &ctx),
        "-ERR wrong number of arguments for 'set' command"
    );
    assert_eq!(
        verdict(&narrow, &multibulk(&["SET", "app:1", "v"]), &ctx),
        "-NOPERM this user has no permissions to run the 'set' command"
    );
    assert_eq!(
        verdict(&narrow, &multibulk(&["GET", "other"]), &ctx),
        "-NOPERM this user has no permissions to access one of the keys used as arguments"
    );
    assert_eq!(
        verdict(&narrow, &multibulk(&["GET", "app:1"]), &ctx),
        "+ADMIT"
    );
    // A user with every permission is not looked up: Redis answers unknown commands itself.
    let all = user("on nopass ~* &* +@all");
    assert_eq!(verdict(&all, &multibulk(&["NOSUCH"]), &ctx), "+ADMIT");
}

#[test]
fn protected_commands_get_redis_refusal_before_the_acl() {
    let narrow = user("on nopass +get");
    let reply = verdict(
        &narrow,
        &multibulk(&["DEBUG", "SLEEP", "0"]),
        &Context::default(),
    );
    assert!(
        reply.starts_with("-ERR DEBUG command not allowed"),
        "{reply}"
    );
}

#[test]
fn scripts_of_narrow_users_are_refused_under_a_shared_identity_only() {
    let narrow = user("on nopass ~app:* +eval");
    let script = multibulk(&["EVAL", "return 1", "0"]);
    let shared = Context {
        identity_shared: true,
        ..Context::default()
    };
    assert!(verdict(&narrow, &script, &shared).starts_with("-NOPERM this user may not run scripts"));
    assert_eq!(verdict(&narrow, &script, &Context::default()), "+ADMIT");
    let all = user("on nopass ~* &* +@all");
    assert_eq!(verdict(&all, &script, &shared), "+ADMIT");
}

#[test]
fn reserved_names_are_no_clients_whatever_its_acl() {
    let all = user("on nopass ~* &* +@all");
    let ctx = guarded();
    for args in [
        &["GET", "redward:users"][..],
        &["SUBSCRIBE", "redward:lockouts"],
        &["PSUBSCRIBE", "*"],
        &["FLUSHALL"],
        &["EVAL", "return 1", "0"],
    ] {
        let reply = verdict(&all, &multibulk(args), &ctx);
        assert!(reply.starts_with("-NOPERM"), "{args:?}: {reply}");
    }
    assert_eq!(
        verdict(&all, &multibulk(&["SELECT", "15"]), &ctx),
        "-ERR DB index is out of range"
    );
    assert_eq!(
        verdict(&all, &multibulk(&["GET", "app:redward"]), &ctx),
        "+ADMIT"
    );
    // In front of a cluster's port map alone: FLUSHALL passes (the map is rebuilt); scripts
    // pass when the user's upstream identity confines them.
    let map_only = Context {
        reserved: Some(crate::shared_limits::Guard {
            state_db: None,
            scripts_confined: true,
        }),
        ..Context::default()
    };
    assert_eq!(
        verdict(&all, &multibulk(&["FLUSHALL"]), &map_only),
        "+ADMIT"
    );
    assert_eq!(
        verdict(&all, &multibulk(&["EVAL", "return 1", "0"]), &map_only),
        "+ADMIT"
    );
    let reply = verdict(
        &all,
        &multibulk(&["HGETALL", "redward:cluster:ports"]),
        &map_only,
    );
    assert!(reply.starts_with("-NOPERM"), "{reply}");
}

#[test]
fn where_the_client_is_decides_what_redward_answers_itself() {
    let all = user("on nopass ~* &* +@all");
    let subscriber = Context {
        pubsub_context: true,
        ..Context::default()
    };
    assert_eq!(
        verdict(&all, &multibulk(&["AUTH", "u", "p"]), &subscriber),
        "-ERR Can't execute 'auth': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
    );
    assert_eq!(verdict(&all, &multibulk(&["PING"]), &subscriber), "+ADMIT");
    let multi = Context {
        in_multi: true,
        ..Context::default()
    };
    assert_eq!(
        verdict(&all, &multibulk(&["HELLO", "3"]), &multi),
        "-ERR redward answers HELLO itself; send it outside MULTI"
    );
    let default_user = Context {
        logs_in_as_default: true,
        ..Context::default()
    };
    let reply = verdict(
        &all,
        &multibulk(&["CONFIG", "SET", "maxmemory", "1", "requirepass", "x"]),
        &default_user,
    );
    assert!(reply.starts_with("-ERR redward: requirepass"), "{reply}");
    assert_eq!(
        verdict(
            &all,
            &multibulk(&["CONFIG", "SET", "requirepass", "x"]),
            &Context::default()
        ),
        "+ADMIT"
    );
}
