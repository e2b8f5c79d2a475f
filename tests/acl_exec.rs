//! Differential test of ACL enforcement by real execution: random users, random commands run
//! for real both through redward (TLS) and straight against redis-server 7.0 as the same user.
//! A reply must be a `-NOPERM` error through redward exactly when it is one straight from
//! Redis, with the same text; likewise for the errors Redis raises from inside a command for
//! ACL reasons (`SORT ... BY/GET pattern` without full key access).
//!
//! One redis-server holds the generated users (added with `ACL SETUSER`); one redward serves
//! the same users, logged in upstream as the all-powerful `proxy` user, so every denial seen
//! through redward is redward's own.
//!
//! The seed is random per run and printed first; `ACL_EXEC_SEED` (decimal or `0x` hex)
//! replays a run. `ACL_EXEC_CASES` sets how many commands are executed (default 20,000).

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::acl_gen::{
    all_specs, gen_command_head, gen_glob, gen_key, gen_selector_rule, push_permissive_start,
    push_selector_args, Rng, RuleStyle, NUMBER_WORDS, PASSWORDS, RESET_RULES,
};
use common::*;
use redward::commands::{CommandSpec, CAT_ADMIN, CAT_BLOCKING, CAT_DANGEROUS};
use redward::{acl, resp};

/// Commands never executed here (they are covered by `ACL DRYRUN` in `tests/acl_dryrun.rs`).
/// Besides these names, everything in `@admin`, `@blocking` and `@dangerous` is excluded
/// (admin/server state, blocking forever, flushing or swapping the data set, `MIGRATE`
/// connecting out and waiting for its timeout), except [`DANGEROUS_BUT_SAFE`].
const EXCLUDED: &[&str] = &[
    // Change connection state (user, protocol, database, transaction, reply mode), close the
    // connection, or reply a different number of times (pub/sub, MONITOR, CLIENT REPLY).
    "auth",
    "hello",
    "quit",
    "reset",
    "select",
    "swapdb",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
    "monitor",
    "client",
    // Server state, replication, persistence.
    "shutdown",
    "debug",
    "failover",
    "replicaof",
    "slaveof",
    "sync",
    "psync",
    "save",
    "bgsave",
    "bgrewriteaof",
    "flushall",
    "flushdb",
    "module",
    "config",
    "slowlog",
    "latency",
    "memory",
    "acl",
    // Block until replicas acknowledge (forever with timeout 0).
    "wait",
    "waitaof",
    // Connects to the host named in its arguments and waits for the timeout.
    "migrate",
    // Scripts and functions: run code, may block the server (BUSY) or flush scripts.
    "script",
    "function",
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
    // Cluster-only (they only error outside a cluster).
    "readonly",
    "readwrite",
    "asking",
    "cluster",
    // Harmless introspection, left out as the issue lists them: nothing key- or
    // channel-related to check, and `ACL DRYRUN` covers their command checks.
    "command",
    "info",
    "lastsave",
    "role",
    "time",
    "echo",
    "ping",
];

/// `@dangerous` commands that are harmless against the test server: SORT (with BY/GET
/// patterns and STORE, the interesting movable-keys case), KEYS (the data set stays small),
/// RESTORE (random payloads fail the checksum). OBJECT (a container with keyed subcommands)
/// is not excluded either: it only reads.
const DANGEROUS_BUT_SAFE: &[&str] = &["sort", "sort_ro", "keys", "restore", "restore-asking"];

/// Whether `spec` may be executed for real (see [`EXCLUDED`]).
fn executable(spec: &CommandSpec) -> bool {
    let parent = spec.name.split('|').next().unwrap_or(spec.name);
    if EXCLUDED.contains(&parent) {
        return false;
    }
    if DANGEROUS_BUT_SAFE.contains(&parent) {
        return true;
    }
    spec.categories & (CAT_ADMIN | CAT_BLOCKING | CAT_DANGEROUS) == 0
}

// ---- User generation (with tests/acl_dryrun.rs: tests/common/acl_gen.rs) ----

/// Only rules both sides accept (`acl_dryrun` checks the rejections); globs may hold `\`,
/// escaped for the YAML config (see [`yaml_double_quoted`]).
const STYLE: RuleStyle = RuleStyle {
    plus_percent: 75,
    more_first_arg_rules: &["sort|k", "publish|a", "xinfo|stream", "pubsub|channels"],
    odd_command_rules: &[],
    command_keywords: &["allcommands", "nocommands", "+@all", "-@all"],
    bad_selector_rules: &[],
};

/// One user's rules as ACL SETUSER arguments (without the password and `on` added later).
fn gen_rules(rng: &mut Rng, specs: &[&'static CommandSpec]) -> Vec<String> {
    let mut rules = Vec::new();
    // 5 in 10 `+@all`, 1 in 10 `allcommands`, 3 in 10 three categories.
    push_permissive_start(rng, &mut rules, [5, 6, 9, 10]);
    for _ in 0..rng.below(4) {
        rules.push(format!("~{}", gen_glob(rng)));
    }
    if rng.chance(15) {
        rules.push(rng.pick(&["~*", "allkeys", "%R~*", "%W~*"]).to_string());
    }
    if rng.chance(30) {
        rules.push(format!("&{}", gen_glob(rng)));
    }
    for _ in 0..rng.below(9) {
        match rng.below(24) {
            0 => rules.push(
                rng.pick(&["nopass", "resetpass", "off", "skip-sanitize-payload"])
                    .to_string(),
            ),
            1 => rules.push(format!(">{}", rng.pick(PASSWORDS))),
            2 => rules.push(rng.pick(RESET_RULES).to_string()),
            3..=6 => {
                // A selector, as one or several arguments.
                let k = 1 + rng.below(4);
                let ops: Vec<String> = (0..k)
                    .map(|_| gen_selector_rule(rng, specs, &STYLE))
                    .collect();
                push_selector_args(&mut rules, &ops);
            }
            _ => rules.push(gen_selector_rule(rng, specs, &STYLE)),
        }
    }
    rules.retain(|r| !r.is_empty() && !r.contains(' '));
    rules
}

/// Key and channel patterns a user's rules name, to make arguments that sometimes match.
#[derive(Default)]
struct Patterns {
    keys: Vec<String>,
    channels: Vec<String>,
}

fn patterns(rules: &[String]) -> Patterns {
    let mut p = Patterns::default();
    for r in rules {
        let r = r.trim_start_matches('(').trim_end_matches(')');
        if let Some(k) = r.strip_prefix('~') {
            p.keys.push(k.to_owned());
        } else if let Some((_, k)) = r.strip_prefix('%').and_then(|r| r.split_once('~')) {
            p.keys.push(k.to_owned());
        } else if let Some(c) = r.strip_prefix('&') {
            p.channels.push(c.to_owned());
        }
    }
    p
}

/// A string that (usually) matches the glob `pat`.
fn instantiate(rng: &mut Rng, pat: &str) -> Vec<u8> {
    let b = pat.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'*' => {
                for _ in 0..rng.below(3) {
                    out.push(*rng.pick(b"abkx1:"));
                }
                i += 1;
            }
            b'?' => {
                out.push(*rng.pick(b"abkxz1"));
                i += 1;
            }
            b'\\' if i + 1 < b.len() => {
                out.push(b[i + 1]);
                i += 2;
            }
            b'[' => {
                let mut j = i + 1;
                let negated = b.get(j) == Some(&b'^');
                if negated {
                    j += 1;
                }
                let mut members = Vec::new();
                while j < b.len() && b[j] != b']' {
                    if b[j] == b'\\' && j + 1 < b.len() {
                        members.push(b[j + 1]);
                        j += 2;
                    } else if j + 2 < b.len() && b[j + 1] == b'-' {
                        let (lo, hi) = (b[j].min(b[j + 2]), b[j].max(b[j + 2]));
                        members.extend(lo..=hi);
                        j += 3;
                    } else {
                        members.push(b[j]);
                        j += 1;
                    }
                }
                if negated {
                    let others: Vec<u8> = b"abkxz1:"
                        .iter()
                        .copied()
                        .filter(|c| !members.contains(c))
                        .collect();
                    out.push(if others.is_empty() {
                        b'q'
                    } else {
                        *rng.pick(&others)
                    });
                } else if members.is_empty() {
                    out.push(b'a');
                } else {
                    out.push(*rng.pick(&members));
                }
                i = j + 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// A string made to match `pat`, checked (a few tries) with the glob matcher.
fn matching_string(rng: &mut Rng, pat: &str) -> Vec<u8> {
    let mut s = instantiate(rng, pat);
    for _ in 0..4 {
        if acl::stringmatch(pat.as_bytes(), &s, false) {
            break;
        }
        s = instantiate(rng, pat);
    }
    s
}

const WORDS: &[&str] = &[
    "STORE",
    "STOREDIST",
    "KEYS",
    "GET",
    "BY",
    "LIMIT",
    "COUNT",
    "GROUP",
    "SET",
    "INCRBY",
    "OVERFLOW",
    "WITHSCORES",
    "LEFT",
    "MKSTREAM",
];

/// Other arguments: [`WORDS`], [`NUMBER_WORDS`], then these.
const ODD_WORDS: &[&str] = &["*", "$", "#"];

/// A key, channel or other argument; `matching` (0..=100) is the chance of one made from one
/// of the user's patterns in `pool`.
fn gen_arg(rng: &mut Rng, pool: &[String], matching: usize) -> Vec<u8> {
    if !pool.is_empty() && rng.chance(matching) {
        let p = rng.pick(pool).clone();
        return matching_string(rng, &p);
    }
    let roll = rng.below(100);
    if roll < 50 {
        gen_key(rng)
    } else if roll < 70 {
        gen_glob(rng).into_bytes()
    } else {
        rng.pick_joined(&[WORDS, NUMBER_WORDS, ODD_WORDS])
            .as_bytes()
            .to_vec()
    }
}

/// A SORT / SORT_RO with BY, GET and STORE options: Redis denies BY and GET patterns from
/// inside the command unless the user has full key access.
fn gen_sort(rng: &mut Rng, pats: &Patterns, matching: usize) -> Vec<Vec<u8>> {
    let ro = rng.chance(30);
    let mut argv = vec![
        if ro { &b"sort_ro"[..] } else { &b"SORT"[..] }.to_vec(),
        gen_arg(rng, &pats.keys, matching),
    ];
    let pattern = |rng: &mut Rng| -> Vec<u8> {
        match rng.below(4) {
            0 => b"w*".to_vec(),
            1 => b"nosort".to_vec(),
            2 => b"#".to_vec(),
            _ => {
                let mut k = gen_arg(rng, &pats.keys, matching);
                k.push(b'*');
                k
            }
        }
    };
    if rng.chance(50) {
        argv.push(b"BY".to_vec());
        argv.push(pattern(rng));
    }
    for _ in 0..rng.below(3) {
        argv.push(b"GET".to_vec());
        argv.push(pattern(rng));
    }
    if rng.chance(20) {
        argv.extend([b"LIMIT".to_vec(), b"0".to_vec(), b"2".to_vec()]);
    }
    if !ro && rng.chance(50) {
        argv.push(b"STORE".to_vec());
        argv.push(gen_arg(rng, &pats.keys, matching));
    }
    argv
}

fn gen_argv(
    rng: &mut Rng,
    specs: &[&'static CommandSpec],
    keyed: &[&'static CommandSpec],
    pats: &Patterns,
) -> Vec<Vec<u8>> {
    if rng.chance(2) {
        // Unknown commands (no NUL in names: see tests/acl_dryrun.rs).
        return vec![
            rng.pick(&["nope", "get|x"]).as_bytes().to_vec(),
            b"x".to_vec(),
        ];
    }
    // Most commands take all their arguments from the user's patterns, so that multi-key
    // commands get past the key check too; the rest mix in random keys.
    let matching = if rng.chance(70) { 95 } else { 40 };
    if rng.chance(4) {
        return gen_sort(rng, pats, matching);
    }
    if rng.chance(4) {
        // The channel checks: PUBLISH and SPUBLISH are the only executable commands with one.
        let name = rng.pick(&["publish", "SPUBLISH"]).as_bytes().to_vec();
        return vec![name, gen_arg(rng, &pats.channels, matching), b"m".to_vec()];
    }
    let (spec, mut argv, argc) = gen_command_head(rng, specs, keyed, 5);
    while argv.len() < argc {
        let channel = argv.len() == 1 && ["publish", "spublish"].contains(&spec.name);
        let pool = if channel { &pats.channels } else { &pats.keys };
        argv.push(gen_arg(rng, pool, matching));
    }
    argv
}

// ---- Plumbing ----

/// `s` as the inside of a YAML double-quoted scalar (what `ProxyBuilder::config_text` writes
/// the rules into).
fn yaml_double_quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn encode(out: &mut Vec<u8>, argv: &[Vec<u8>]) {
    resp::encode_command(out, argv.iter().map(Vec::as_slice));
}

/// Splits a reply stream into its complete top-level frames.
fn frames(buf: &[u8]) -> Vec<&[u8]> {
    let mut scanner = resp::ReplyScanner::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match scanner.advance(&buf[pos..]) {
            Ok(resp::Step::Complete { consumed, .. }) => {
                out.push(&buf[pos..pos + consumed]);
                pos += consumed;
            }
            _ => break,
        }
    }
    out
}

fn is_noperm(reply: &[u8]) -> bool {
    reply.starts_with(b"-NOPERM")
}

/// An error Redis raises from inside a command because of the user's ACL (sort.c).
fn is_acl_error(reply: &[u8]) -> bool {
    reply.starts_with(b"-ERR ")
        && reply
            .windows(28)
            .any(|w| w == b"insufficient ACL permissions")
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn show_argv(argv: &[Vec<u8>]) -> String {
    format!(
        "{:?}",
        argv.iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
    )
}

fn env_u64(key: &str) -> Option<u64> {
    let v = std::env::var(key).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

struct GenUser {
    name: String,
    password: String,
    /// The full rule list, password and `on` included.
    rules: Vec<String>,
    argvs: Vec<Vec<Vec<u8>>>,
}

#[test]
fn execution_through_redward_is_denied_exactly_when_redis_denies() {
    run_on(ServerKind::Redis);
}

/// The same against Valkey 8.1.8: its changed specs (ZRANK's arity, WAIT in `@blocking`)
/// and its NOPERM wording (`User u1 has no permissions to run ...`, `No permissions to
/// access a key`).
#[test]
fn execution_through_redward_is_denied_exactly_when_valkey_denies() {
    run_on(ServerKind::Valkey);
}

fn run_on(kind: ServerKind) {
    let _one_table_at_a_time = catalog_lock();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(execution_matches(kind));
}

async fn execution_matches(kind: ServerKind) {
    let seed = env_u64("ACL_EXEC_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()).rotate_left(32)
    });
    let min_cases = env_u64("ACL_EXEC_CASES").unwrap_or(20_000) as usize;
    eprintln!("acl_exec: seed={seed} (replay with ACL_EXEC_SEED={seed})");
    let started = Instant::now();
    let mut rng = Rng::new(seed);

    let redis = match Redis::start_kind(
        kind,
        vec![
            "user default off".to_owned(),
            format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
        ],
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skipping {}: {e}", kind.name());
            return;
        }
    };
    // The server's table first: the cases are drawn from it (redward learns it again when it
    // starts, finding the same).
    let port = redis.port;
    let learned = tokio::task::spawn_blocking(move || {
        learn_server(port, Some((UPSTREAM_USER, UPSTREAM_PASSWORD)))
    })
    .await
    .expect("learn");
    eprintln!("acl_exec: {} behind", learned.server);
    let kind = kind.name();
    let mut admin = redis.admin();
    let specs = all_specs();
    let exec_specs: Vec<_> = specs.iter().copied().filter(|s| executable(s)).collect();
    let exec_keyed: Vec<_> = exec_specs
        .iter()
        .copied()
        .filter(|s| !s.key_specs.is_empty() || ["publish", "spublish"].contains(&s.name))
        .collect();

    // Users both sides accept, with their commands, generated up front.
    let mut users: Vec<GenUser> = Vec::new();
    let (mut planned, mut rejected) = (0usize, 0usize);
    while planned < min_cases {
        let i = users.len() + rejected;
        let name = format!("u{i}");
        let password = format!("pw-{i}");
        // Command rules name executable commands, which the requests are drawn from.
        let mut rules = gen_rules(&mut rng, &exec_specs);
        rules.push(format!(">{password}"));
        rules.push("on".to_owned());
        let ours = acl::parse_user(&name, &rules.join(" "));
        let theirs: redis::RedisResult<()> = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&name)
            .arg(&rules)
            .query(&mut admin);
        if ours.is_err() || theirs.is_err() {
            if theirs.is_ok() {
                let _: redis::RedisResult<()> = redis::cmd("ACL")
                    .arg("DELUSER")
                    .arg(&name)
                    .query(&mut admin);
            }
            rejected += 1;
            continue;
        }
        let pats = patterns(&rules);
        let n = 50 + rng.below(51);
        let argvs: Vec<_> = (0..n)
            .map(|_| gen_argv(&mut rng, &exec_specs, &exec_keyed, &pats))
            .collect();
        planned += n;
        users.push(GenUser {
            name,
            password,
            rules,
            argvs,
        });
    }

    let mut builder = proxy();
    for u in &users {
        builder = builder.user(&u.name, &yaml_double_quoted(&u.rules.join(" ")));
    }
    let proxy = builder.start(&redis).await;

    let (mut cases, mut denied, mut acl_errors) = (0usize, 0usize, 0usize);
    let mut mismatches: Vec<String> = Vec::new();
    let mut outcomes = BTreeMap::<&str, usize>::new();
    let mut mismatch_kinds = BTreeMap::<&str, usize>::new();
    for u in &users {
        // AUTH first and last: the closing +OK proves the reply streams stayed aligned.
        let auth = vec![
            b"AUTH".to_vec(),
            u.name.clone().into_bytes(),
            u.password.clone().into_bytes(),
        ];
        let mut script = Vec::new();
        encode(&mut script, &auth);
        for argv in &u.argvs {
            encode(&mut script, argv);
        }
        encode(&mut script, &auth);
        let want = u.argvs.len() + 2;

        let mut via = proxy.raw().await;
        via.send(&script).await;
        let via_bytes = via.replies(want).await;
        let mut direct = Raw::plain(&redis.addr()).await;
        direct.send(&script).await;
        let direct_bytes = direct.replies(want).await;

        let v = frames(&via_bytes);
        let d = frames(&direct_bytes);
        for (side, f) in [("redward", &v), ("redis", &d)] {
            let ok = f.len() == want
                && f.first() == Some(&&b"+OK\r\n"[..])
                && f.last() == Some(&&b"+OK\r\n"[..]);
            assert!(
                ok,
                "test bug (seed {seed}): {side} reply stream for user {} rules {:?} is out of \
                 step: {} frames for {want} commands; first command without its reply: {}; \
                 last reply: {}",
                u.name,
                u.rules,
                f.len(),
                u.argvs
                    .get(f.len().saturating_sub(1))
                    .map_or("-".to_owned(), |a| show_argv(a)),
                f.last().map_or("-".to_owned(), |r| show(r)),
            );
        }
        for (i, argv) in u.argvs.iter().enumerate() {
            let (rv, rd) = (v[i + 1], d[i + 1]);
            cases += 1;
            let kind = if is_noperm(rd) {
                denied += 1;
                let has = |w: &[u8]| rd.windows(w.len()).any(|x| x == w);
                // Redis 7.0: "... one of the keys ..."; Redis 7.2+ / Valkey: "... a key".
                if has(b"of the keys") || has(b"access a key") {
                    "noperm-key"
                } else if has(b"of the channels") || has(b"access a channel") {
                    "noperm-channel"
                } else {
                    "noperm-command"
                }
            } else if is_acl_error(rd) {
                acl_errors += 1;
                "acl-error"
            } else if rd.starts_with(b"-") {
                "error"
            } else {
                "ok"
            };
            *outcomes.entry(kind).or_default() += 1;
            let same = is_noperm(rv) == is_noperm(rd)
                && is_acl_error(rv) == is_acl_error(rd)
                && (!(is_noperm(rd) || is_acl_error(rd)) || rv == rd);
            if !same {
                let what = match (is_noperm(rv), is_noperm(rd), is_acl_error(rd)) {
                    (true, true, _) => "different NOPERM texts",
                    (true, false, _) => "only redward denies",
                    (false, true, _) => "only redis denies (NOPERM)",
                    (false, false, true) => "only redis denies (in-command ACL error)",
                    (false, false, false) => "only redward has an in-command ACL error",
                };
                *mismatch_kinds.entry(what).or_default() += 1;
                mismatches.push(format!(
                    "{kind} seed {seed} user {} rules {:?}\n  command {}\n  redward {}\n  server  {}",
                    u.name,
                    u.rules,
                    show_argv(argv),
                    show(rv),
                    show(rd)
                ));
            }
        }
    }

    eprintln!(
        "acl_exec {kind}: seed={seed} users={} cases={cases} denied={denied} mismatches={}",
        users.len(),
        mismatches.len()
    );
    eprintln!(
        "acl_exec {kind}: {rejected} generated users rejected, {acl_errors} in-command ACL errors, \
         outcomes {outcomes:?}, mismatches {mismatch_kinds:?}, {:.1?}",
        started.elapsed()
    );
    for m in mismatches.iter().take(10) {
        eprintln!("MISMATCH {m}");
    }
    assert!(cases >= min_cases, "only {cases} cases");
    assert!(
        mismatches.is_empty(),
        "{kind}: {} mismatches (seed {seed}; replay with ACL_EXEC_SEED={seed})",
        mismatches.len()
    );
}
