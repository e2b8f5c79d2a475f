//! Unit tests for the ACL engine. Expected values were taken from redis-server 7.0.15; the
//! randomized differential test against a live server is `tests/acl_dryrun.rs`.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::commands;

fn user(rules: &str) -> User {
    parse_user("u", rules).unwrap()
}

fn argv(line: &str) -> Vec<Vec<u8>> {
    line.split(' ').map(|a| a.as_bytes().to_vec()).collect()
}

fn dry(u: &User, line: &str) -> String {
    String::from_utf8(dryrun(u, &argv(line))).unwrap()
}

/// A RESP bulk string reply.
fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

fn err(rules: &str) -> RuleError {
    parse_user("u", rules).unwrap_err()
}

#[test]
fn glob_matches_like_redis() {
    // (pattern, string, redis-server 7.0.15's verdict)
    let cases: &[(&str, &str, bool)] = &[
        ("*", "", false),
        ("*", "a", true),
        ("a*", "a", true),
        ("a*b", "axxb", true),
        ("a*b", "axxbc", false),
        ("?", "a", true),
        ("?", "", false),
        ("[a-c]", "b", true),
        ("[c-a]", "b", true),
        ("[^a]", "a", false),
        ("[^a]", "b", true),
        ("[a", "a", true),
        ("[a", "[", false),
        ("[^", "x", true),
        ("[", "", false),
        ("[", "[", false),
        ("[]a]", "a", false),
        ("[]a]", "]", false),
        ("[\\]]", "]", true),
        ("\\*", "*", true),
        ("\\*", "a", false),
        ("\\", "\\", true),
        ("a\\", "a\\", true),
        ("[a-]", "-", false),
        ("[a-]", "a", true),
        ("[-a]", "-", true),
        ("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaac", false),
        ("**", "x", true),
        ("a**", "a", true),
        ("[a-\\]", "b", false),
        ("h?llo", "hello", true),
        ("h[^e]llo", "hallo", true),
        ("*[", "a[", false),
        ("*?", "a", true),
        ("a?*", "a", false),
        ("[\\", "\\", true),
        ("[\\a]", "a", true),
        ("[z-a]", "Z", false),
    ];
    for &(p, s, want) in cases {
        assert_eq!(
            stringmatch(p.as_bytes(), s.as_bytes(), false),
            want,
            "{p:?} {s:?}"
        );
    }
}

#[test]
fn glob_signed_ranges_and_nocase() {
    // C char is signed: [a-\xff] is the range -1..=97.
    assert!(stringmatch(b"[a-\xff]", b"\xff", false));
    assert!(stringmatch(b"[a-\xff]", b"\x00", false));
    assert!(!stringmatch(b"[a-\xff]", b"b", false));
    assert!(stringmatch(b"HeLLo", b"hello", true));
    assert!(stringmatch(b"[A-C]x", b"bX", true));
    assert!(!stringmatch(b"[A-C]x", b"bX", false));
    // `\` inside a class stays case-sensitive even with nocase.
    assert!(!stringmatch(b"[\\A]", b"a", true));
}

#[test]
fn glob_nesting_limit_and_no_stack_overflow() {
    let key = vec![b'a'; 1100];
    let pat = |n: usize, trailing: bool| {
        let mut p = "*a".repeat(n);
        if trailing {
            p.push('*');
        }
        p.into_bytes()
    };
    // Verified against redis-server: 1000 nested stars match, 1001 do not.
    assert!(stringmatch(&pat(1000, false), &key, false));
    assert!(stringmatch(&pat(1000, true), &key, false));
    assert!(!stringmatch(&pat(1001, false), &key, false));
    assert!(!stringmatch(&pat(1001, true), &key, false));
    // Hostile inputs finish quickly and do not recurse.
    let hostile = "*a".repeat(100_000).into_bytes();
    assert!(!stringmatch(&hostile, &vec![b'a'; 50_000], false));
    assert!(!stringmatch(
        &b"a*".repeat(50_000),
        &vec![b'b'; 100_000],
        false
    ));
}

#[test]
fn fresh_and_reset_users() {
    let u = user("");
    assert!(!u.enabled && !u.nopass && !u.unrestricted);
    assert_eq!(describe(&u), "user u off resetchannels -@all");
    let u = user("on nopass ~* &* +@all");
    assert!(u.unrestricted);
    assert_eq!(describe(&u), "user u on nopass ~* &* +@all");
    let u = user("on nopass ~* &* +@all reset");
    assert!(!u.unrestricted);
    assert_eq!(
        describe(&u),
        "user u off sanitize-payload resetchannels -@all"
    );
    // Selectors make a user restricted, even if the root allows everything.
    assert!(!user("on ~* &* +@all (+get)").unrestricted);
    assert!(user("on ~* &* +@all (+get) clearselectors").unrestricted);
}

#[test]
fn passwords() {
    let u = user("on >secret");
    assert!(u.check_password(b"secret"));
    assert!(!u.check_password(b"other"));
    assert_eq!(u.passwords.len(), 1);
    let u = user(&format!("on #{} >secret", hash_password(b"secret")));
    assert_eq!(u.passwords.len(), 1, "same hash is not added twice");
    assert!(!user(">secret").check_password(b"secret"), "off user");
    let e = err("on <nope");
    assert_eq!(e.rule, "<<redacted>");
    assert_eq!(
        e.reason,
        "The password you are trying to remove from the user does not exist"
    );
    assert!(!e.to_string().contains("nope"));
    assert_eq!(
        err("#ABC").reason,
        "The password hash must be exactly 64 characters and contain only lowercase \
         hexadecimal characters"
    );
    let u = user("on >a nopass");
    assert!(u.nopass && u.passwords.is_empty() && u.check_password(b"x"));
    let u = user("on >a nopass >b");
    assert!(!u.nopass && !u.check_password(b"x"));
}

#[test]
fn rule_errors_use_redis_texts() {
    let cases: &[(&str, &str, &str)] = &[
        ("+nope", "+nope", "Unknown command or category name in ACL"),
        ("+", "+", "Unknown command or category name in ACL"),
        (
            "-select|0",
            "-select|0",
            "Unknown command or category name in ACL",
        ),
        (
            "+@nope",
            "+@nope",
            "Unknown command or category name in ACL",
        ),
        ("+get|", "+get|", "Syntax error"),
        ("%~foo", "%~foo", "Syntax error"),
        ("%X~foo", "%X~foo", "Syntax error"),
        ("%RR~foo", "%RR~foo", "Syntax error"),
        ("bogus", "bogus", "Syntax error"),
        (
            "+config|get|x",
            "+config|get|x",
            "Allowing first-arg of a subcommand is not supported",
        ),
        (
            "allkeys ~a",
            "~a",
            "Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and \
             does not have any effect. Try 'resetkeys' to start with an empty list of patterns",
        ),
        (
            "&* &a",
            "&a",
            "Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and \
             does not have any effect. Try 'resetchannels' to start with an empty list of \
             channels",
        ),
        ("(~a on)", "(~a on)", "Syntax error"),
        ("(~a +get", "(~a", rules::UNMATCHED_PARENTHESIS),
        ("(~a >pw)", "(~a ><redacted>)", "Syntax error"),
    ];
    for &(rules, rule, reason) in cases {
        let e = err(rules);
        assert_eq!((e.rule.as_str(), e.reason), (rule, reason), "{rules}");
    }
    assert_eq!(
        err("+nope").to_string(),
        "user 'u': rule '+nope': Unknown command or category name in ACL"
    );
    // Accepted oddities.
    for ok in [
        "%R",
        "()",
        "( )",
        "(~a +get)",
        "(~a +get )",
        "+select|0",
        "+SELECT|0",
        "+debug|object",
        "+config|get",
        "-config|set",
        "~\"",
        "(~\"a)",
    ] {
        assert!(parse_user("u", ok).is_ok(), "{ok}");
    }
    assert!(parse_user("a b", "on").is_err());
}

#[test]
fn command_bits() {
    let u = user("on ~* &* -@all +get +config|get +select|0");
    assert_eq!(dry(&u, "get k"), "+OK\r\n");
    assert_eq!(dry(&u, "GET k"), "+OK\r\n");
    assert_eq!(dry(&u, "config get x"), "+OK\r\n");
    assert_eq!(
        dry(&u, "config set x y"),
        bulk("This user has no permissions to run the 'config|set' command")
    );
    assert_eq!(dry(&u, "select 0"), "+OK\r\n");
    assert_eq!(
        dry(&u, "select 1"),
        bulk("This user has no permissions to run the 'select' command")
    );
    // +config allows every subcommand; -config|set then removes one.
    let u = user("on ~* +config -config|set");
    assert_eq!(dry(&u, "config get x"), "+OK\r\n");
    assert!(dry(&u, "config set x y").contains("'config|set'"));
    // -@all drops first-args, -cmd too.
    let u = user("on +select|0 -select");
    assert!(dry(&u, "select 0").contains("no permissions"));
    // +@cat after -cmd re-allows it.
    let u = user("on ~* -get +@read");
    assert_eq!(dry(&u, "get k"), "+OK\r\n");
    // NO_AUTH commands are always allowed.
    let u = user("on");
    assert_eq!(dry(&u, "auth a b"), "+OK\r\n");
    // Unknown commands and wrong arity, as ACL DRYRUN reports them.
    assert_eq!(dry(&u, "nope x"), "-ERR Command 'nope' not found\r\n");
    assert_eq!(
        dry(&u, "config nope"),
        "-ERR Command 'config' not found\r\n"
    );
    assert_eq!(
        dry(&u, "get"),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
}

#[test]
fn keys_and_flags() {
    let u = user("on +@all %R~r* %W~w* ~a*");
    assert_eq!(dry(&u, "get r1"), "+OK\r\n");
    assert_eq!(
        dry(&u, "get w1"),
        bulk("This user has no permissions to access the 'w1' key")
    );
    assert_eq!(dry(&u, "set w1 v"), "+OK\r\n");
    // SET ... GET reads too.
    assert!(dry(&u, "set w1 v GET").contains("'w1' key"));
    assert_eq!(dry(&u, "copy r1 w1"), "+OK\r\n");
    assert!(dry(&u, "copy w1 r1").contains("'w1' key"));
    // EVAL keys via numkeys; a numkeys string2ll refuses falls back to atoi ("2x" is 2),
    // and one atoi cannot read means no keys at all.
    assert!(dry(&u, "eval s 2 a1 x").contains("'x' key"));
    assert!(dry(&u, "eval s 2x a1 x").contains("'x' key"));
    assert_eq!(dry(&u, "eval s x a1 x"), "+OK\r\n");
    // ZUNIONSTORE with an invalid numkeys: the proc returns no keys, the destination included.
    assert_eq!(dry(&u, "zunionstore zz 0 r1"), "+OK\r\n");
    // The proc fallback ("2x" parsed by atoi) returns keys without flags: any pattern works.
    assert_eq!(dry(&u, "zunionstore w1 2x w2 r2"), "+OK\r\n");
    // SORT ... STORE writes.
    assert!(dry(&u, "sort r1 STORE r2").contains("'r2' key"));
    assert_eq!(dry(&u, "sort r1 STORE w2"), "+OK\r\n");
    // XREAD keys after STREAMS.
    assert!(dry(&u, "xread COUNT 1 STREAMS r1 x 0 0").contains("'x' key"));
    // MIGRATE with KEYS.
    let m = vec![
        b"migrate".to_vec(),
        b"h".to_vec(),
        b"1".to_vec(),
        Vec::new(),
        b"0".to_vec(),
        b"10".to_vec(),
        b"KEYS".to_vec(),
        b"a1".to_vec(),
        b"zz".to_vec(),
    ];
    assert!(String::from_utf8(dryrun(&u, &m))
        .unwrap()
        .contains("'zz' key"));
    let k = command_keys(commands::lookup(b"migrate").unwrap(), &m);
    assert_eq!(k.iter().map(|k| k.pos).collect::<Vec<_>>(), vec![7, 8]);
}

#[test]
fn channels() {
    let u = user("on +@all &a* &b");
    assert_eq!(dry(&u, "publish a1 m"), "+OK\r\n");
    assert_eq!(
        dry(&u, "publish c m"),
        bulk("This user has no permissions to access the 'c' channel")
    );
    assert!(dry(&u, "subscribe a1 b c").contains("'c' channel"));
    // PSUBSCRIBE patterns must equal an ACL pattern literally.
    assert_eq!(dry(&u, "psubscribe a*"), "+OK\r\n");
    assert!(dry(&u, "psubscribe a1").contains("'a1' channel"));
    // A new user has no channels (acl-pubsub-default is resetchannels in 7.0).
    assert!(dry(&user("on +@all"), "publish x m").contains("'x' channel"));
    // Unsubscribing is never checked.
    assert_eq!(dry(&user("on +@all"), "unsubscribe x"), "+OK\r\n");
}

#[test]
fn selectors_pick_redis_error() {
    let u = user("on -@all +get (+@all ~a*) (+@all %R~r*)");
    assert_eq!(dry(&u, "get a1"), "+OK\r\n");
    assert_eq!(dry(&u, "set a1 v"), "+OK\r\n");
    assert_eq!(dry(&u, "get r1"), "+OK\r\n");
    // Root fails on the key (no patterns), selectors too: the key error wins over command.
    assert!(dry(&u, "set r1 v").contains("'r1' key"));
    // Among key errors, the highest argument index is reported.
    assert!(dry(&u, "mset a1 v x v").contains("'x' key"));
    let u = user("on (+get)");
    assert!(dry(&u, "get k").contains("'k' key"));
    assert!(dry(&u, "set k v").contains("'set' command"));
}

#[test]
fn noperm_replies() {
    let get = commands::lookup(b"get").unwrap();
    let a = argv("get k");
    assert_eq!(
        Denied::Command.reply_as("u", get, &a),
        b"-NOPERM this user has no permissions to run the 'get' command\r\n"
    );
    assert_eq!(
        Denied::Key { arg: 1 }.reply_as("u", get, &a),
        b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
    );
    assert_eq!(
        Denied::Channel { arg: 1 }.reply_as("u", get, &a),
        b"-NOPERM this user has no permissions to access one of the channels used as \
          arguments\r\n"
    );
    let sub = commands::lookup_subcommand(commands::lookup(b"config").unwrap(), b"set").unwrap();
    assert_eq!(
        Denied::Command.reply_as("u", sub, &argv("config set a b")),
        b"-NOPERM this user has no permissions to run the 'config|set' command\r\n"
    );
    let u = user("on +@all -get ~*");
    assert_eq!(check(&u, get, &a), Err(Denied::Command));
    // The DRYRUN key text stops at a NUL byte, like C's %s.
    let k = vec![b"get".to_vec(), b"a\0b".to_vec()];
    assert_eq!(
        Denied::Key { arg: 1 }.dryrun_reply("u", get, &k),
        bulk("This user has no permissions to access the 'a' key").as_bytes()
    );
}

#[test]
fn describe_like_acl_list() {
    let u = user("on >pw ~a* %R~r* %W~w* &c +@read -get +config|get +select|0");
    assert_eq!(
        describe(&u),
        format!(
            "user u on #{} ~a* %R~r* %W~w* resetchannels &c -@all +@read +config|get -get \
             +select|0",
            hash_password(b"pw")
        )
    );
    let u = user("on nopass allkeys allchannels +@all -@dangerous (~x +get)");
    assert_eq!(
        describe(&u),
        "user u on nopass ~* &* +@all -@dangerous (~x resetchannels -@all +get)"
    );
    let u = user("skip-sanitize-payload");
    assert_eq!(
        describe(&u),
        "user u off skip-sanitize-payload resetchannels -@all"
    );
}

#[test]
fn ids_cover_the_table() {
    let mut seen = std::collections::HashSet::new();
    for c in commands::commands() {
        assert!(seen.insert(command_id(c).unwrap()));
        for s in c.subcommands {
            assert!(seen.insert(command_id(s).unwrap()));
        }
    }
    assert_eq!(seen.len(), rules::ids().total);
    assert_eq!(seen.iter().max(), Some(&(rules::ids().total - 1)));
}

proptest::proptest! {
    /// The literal-head fast path decides exactly as Redis's algorithm on every pattern shape
    /// (the general loop is itself checked against redis-server in `tests/acl.rs`).
    #[test]
    fn glob_fast_path_agrees_with_the_general_algorithm(
        pattern in proptest::collection::vec(proptest::sample::select(b"ab:*?[]^-\\\0".to_vec()), 0..10),
        string in proptest::collection::vec(proptest::sample::select(b"ab:*?[\\\0".to_vec()), 0..10),
    ) {
        proptest::prop_assert_eq!(
            stringmatch(&pattern, &string, false),
            super::glob::stringmatch_general(&pattern, &string, false),
            "pattern {:?} string {:?}", String::from_utf8_lossy(&pattern), String::from_utf8_lossy(&string)
        );
    }
}
