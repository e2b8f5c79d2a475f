//! Differential test of the ACL engine against a real redis-server 7.0 (the oracle).
//!
//! Starts `redis-server` on a free loopback port, creates random users with `ACL SETUSER`
//! (rules over commands, subcommands, first-args, categories, key globs, `%R~`/`%W~`,
//! channels, selectors, passwords) and, for each, runs random commands through `ACL DRYRUN`.
//! Every reply must be byte-identical to `acl::dryrun`, every rule list Redis rejects must be
//! rejected by `acl::parse_user` with the same message (and vice versa), and `ACL LIST` must
//! list the same rules as `acl::describe` (token order aside: Redis orders single-command
//! rules by its randomly seeded dict).
//!
//! Skipped (with a message) when `redis-server` is not installed.
//! Knobs: `ACL_ORACLE_SEED`, `ACL_ORACLE_USERS`, `ACL_ORACLE_CMDS`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::acl_gen::{
    all_specs, gen_command_head, gen_command_rule, gen_glob, gen_key, gen_selector_rule,
    push_permissive_start, push_selector_args, Rng, RuleStyle, NUMBER_WORDS, PASSWORDS,
    RESET_RULES,
};
use common::{catalog_lock, learn_server, Redis, RedisOptions, ServerKind};
use redward::{acl, commands};

/// A minimal RESP2 client: writes arrays of bulk strings, reads one reply's raw bytes.
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    }

    fn encode(out: &mut Vec<u8>, argv: &[Vec<u8>]) {
        out.extend_from_slice(format!("*{}\r\n", argv.len()).as_bytes());
        for a in argv {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    fn send(&mut self, cmds: &[Vec<Vec<u8>>]) {
        let mut out = Vec::new();
        for c in cmds {
            Client::encode(&mut out, c);
        }
        self.w.write_all(&out).expect("write to redis");
    }

    fn read_reply(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.r
            .read_until(b'\n', &mut line)
            .expect("read from redis");
        let mut out = line.clone();
        let num = |l: &[u8]| -> i64 {
            std::str::from_utf8(l.get(1..l.len().saturating_sub(2)).unwrap_or_default())
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1)
        };
        match line.first() {
            Some(b'$') => {
                let n = num(&line);
                if n >= 0 {
                    let mut body = vec![0u8; usize::try_from(n).unwrap_or(0) + 2];
                    self.r.read_exact(&mut body).expect("read bulk");
                    out.extend_from_slice(&body);
                }
            }
            Some(b'*') => {
                for _ in 0..num(&line).max(0) {
                    out.extend(self.read_reply());
                }
            }
            _ => {}
        }
        out
    }

    fn call(&mut self, argv: &[Vec<u8>]) -> Vec<u8> {
        self.send(&[argv.to_vec()]);
        self.read_reply()
    }
}

/// Invalid rules too: Redis must reject them, with the same message.
const STYLE: RuleStyle = RuleStyle {
    plus_percent: 60,
    more_first_arg_rules: &[
        "config|nope",
        "config|get|x",
        "get|",
        "nope|x",
        "|get",
        "config|",
    ],
    odd_command_rules: &["nope", "", "get|x|y", "GET"],
    command_keywords: &["allcommands", "nocommands", "+@all", "-@all", "ALLKEYS"],
    bad_selector_rules: &["on", "garbage", "reset", ")", "~a b"],
};

/// One user's rules as ACL SETUSER arguments.
fn gen_rules(rng: &mut Rng, specs: &[&'static commands::CommandSpec]) -> Vec<String> {
    let mut rules = Vec::new();
    if rng.chance(70) {
        rules.push("on".to_owned());
    }
    // 1 in 6 `+@all`, 1 in 6 `allcommands`, 1 in 6 three categories.
    push_permissive_start(rng, &mut rules, [1, 2, 3, 6]);
    for _ in 0..rng.below(4) {
        rules.push(format!("~{}", gen_glob(rng)));
    }
    if rng.chance(30) {
        rules.push(format!("&{}", gen_glob(rng)));
    }
    let n = rng.below(9);
    let bad = rng.chance(15);
    for _ in 0..n {
        match rng.below(24) {
            0 => rules.push(
                rng.pick(&["nopass", "resetpass", "off", "on", "skip-sanitize-payload"])
                    .to_string(),
            ),
            1 => rules.push(format!(">{}", rng.pick(PASSWORDS))),
            2 if bad => rules.push(format!("<{}", rng.pick(&["pw", "nope"]))),
            3 if bad => rules.push(
                rng.pick(&[
                    "#5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
                    "#5E884898DA28047151D0E56F8DC6292773603D0D6AABBDD62A11EF721D1542D8",
                    "#abc",
                    "!5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
                ])
                .to_string(),
            ),
            4 => rules.push(rng.pick(RESET_RULES).to_string()),
            5..=6 => {
                // a selector, as one or several arguments
                let k = 1 + rng.below(4);
                let ops: Vec<String> = (0..k)
                    .map(|_| {
                        if bad || rng.chance(85) {
                            gen_selector_rule(rng, specs, &STYLE)
                        } else {
                            gen_command_rule(rng, specs, &STYLE)
                        }
                    })
                    .collect();
                if rng.chance(50) {
                    rules.push(format!("({})", ops.join(" ")));
                } else {
                    push_selector_args(&mut rules, &ops);
                }
                if bad && rng.chance(10) {
                    rules.push("(~unclosed".to_owned());
                }
            }
            _ => {
                let r = gen_selector_rule(rng, specs, &STYLE);
                if !bad && STYLE.bad_selector_rules.contains(&r.as_str()) {
                    continue;
                }
                rules.push(r);
            }
        }
    }
    // Space-containing rules cannot go through the string API; keep them out.
    rules
        .into_iter()
        .filter(|r| !r.is_empty() && !r.contains(' ') || r.starts_with('('))
        .flat_map(|r| {
            if r.starts_with('(') {
                r.split(' ').map(str::to_owned).collect::<Vec<_>>()
            } else {
                vec![r]
            }
        })
        .filter(|r| !r.is_empty())
        .collect()
}

const WORDS: &[&str] = &[
    "STORE",
    "STOREDIST",
    "STREAMS",
    "KEYS",
    "GET",
    "BY",
    "LIMIT",
    "AUTH",
    "AUTH2",
    "COUNT",
    "BLOCK",
    "GROUP",
    "NOACK",
    "SET",
    "INCRBY",
    "OVERFLOW",
    "WITHSCORES",
    "LEFT",
];

/// Other arguments: [`WORDS`], [`NUMBER_WORDS`], then these.
const ODD_WORDS: &[&str] = &["get\0x", " 2"];

fn gen_argv(
    rng: &mut Rng,
    specs: &[&'static commands::CommandSpec],
    keyed: &[&'static commands::CommandSpec],
) -> Vec<Vec<u8>> {
    if rng.chance(3) {
        return vec![
            rng.pick(&["nope", "get|x", "GET\0"]).as_bytes().to_vec(),
            b"x".to_vec(),
        ];
    }
    let (_, mut argv, argc) = gen_command_head(rng, specs, keyed, 6);
    while argv.len() < argc {
        let a = if rng.chance(55) {
            gen_key(rng)
        } else if rng.chance(30) {
            gen_glob(rng).into_bytes()
        } else {
            rng.pick_joined(&[WORDS, NUMBER_WORDS, ODD_WORDS])
                .as_bytes()
                .to_vec()
        };
        argv.push(a);
    }
    argv
}

fn setuser_expected(user: &str, res: &Result<acl::User, acl::RuleError>) -> Option<Vec<u8>> {
    match res {
        Ok(_) => Some(b"+OK\r\n".to_vec()),
        Err(e) if e.rule.contains("<redacted>") => None,
        Err(e) if e.reason == acl::rules::UNMATCHED_PARENTHESIS => Some(
            format!(
                "-ERR Unmatched parenthesis in acl selector starting at '{}'.\r\n",
                e.rule
            )
            .into_bytes(),
        ),
        Err(e) => {
            let _ = user;
            Some(
                format!(
                    "-ERR Error in ACL SETUSER modifier '{}': {}\r\n",
                    e.rule, e.reason
                )
                .into_bytes(),
            )
        }
    }
}

/// An `ACL LIST` line as sorted tokens per selector (root first).
fn sorted_tokens(s: &str) -> Vec<Vec<String>> {
    s.split(" (")
        .map(|part| {
            let mut v: Vec<String> = part
                .trim_end_matches(')')
                .split(' ')
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        })
        .collect()
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

#[test]
fn dryrun_matches_redis() {
    dryrun_matches(ServerKind::Redis);
}

/// Valkey 8.1.8: its own commands and subcommands (CLIENT SETINFO, COMMANDLOG, ...), its
/// changed specs (ZRANK's arity, WAIT's `@blocking`) and its wording (`User u1 has no
/// permissions ...`).
#[test]
fn dryrun_matches_valkey() {
    dryrun_matches(ServerKind::Valkey);
}

fn dryrun_matches(kind: ServerKind) {
    let _one_table_at_a_time = catalog_lock();
    let server = match Redis::start_kind(kind, RedisOptions::open().acl) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("skipping {}: {e}", kind.name());
            return;
        }
    };
    // `ACL_ORACLE_NO_LEARN=1` measures redward as it was before it learned the server
    // behind: the generated Redis 7.0 table and wording.
    if std::env::var_os("ACL_ORACLE_NO_LEARN").is_some() {
        redward::commands::catalog::install(redward::commands::catalog::Catalog::builtin());
    } else {
        let learned = learn_server(server.port, None);
        eprintln!(
            "acl oracle: {} behind ({} commands changed or added: {})",
            learned.server,
            learned.changed.len(),
            learned.changed.join(" ")
        );
    }
    let modern = redward::commands::catalog::server().acl_texts()
        == redward::commands::catalog::AclTexts::Redis72;
    let kind = kind.name();
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let seed = env("ACL_ORACLE_SEED", 0x5eed_ac10_u64 ^ 0x9e37_79b9_7f4a_7c15);
    let users = env("ACL_ORACLE_USERS", 300) as usize;
    let per_user = env("ACL_ORACLE_CMDS", 50) as usize;
    let mut rng = Rng::new(seed);
    let specs = all_specs();
    // Commands with keys or channels, which get most of the requests.
    let keyed: Vec<_> = specs
        .iter()
        .copied()
        .filter(|s| {
            !s.key_specs.is_empty()
                || [
                    "publish",
                    "spublish",
                    "subscribe",
                    "ssubscribe",
                    "psubscribe",
                ]
                .contains(&s.name)
        })
        .collect();
    let mut client = Client::connect(server.port).expect("connect");

    let mut mismatches: Vec<String> = Vec::new();
    let (mut accepted, mut rejected, mut checked) = (0usize, 0usize, 0usize);
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    let mut created: Vec<(String, acl::User, Vec<String>)> = Vec::new();

    for i in 0..users {
        let name = format!("u{i}");
        let rules = gen_rules(&mut rng, &specs);
        let mut setuser: Vec<Vec<u8>> = vec![b"ACL".to_vec(), b"SETUSER".to_vec()];
        setuser.push(name.clone().into_bytes());
        setuser.extend(rules.iter().map(|r| r.clone().into_bytes()));
        let got = client.call(&setuser);
        let ours = acl::parse_user(&name, &rules.join(" "));
        let ours_args = acl::parse_user_args(&name, &rules);
        if ours != ours_args {
            mismatches.push(format!(
                "seed {seed:#x} user {name}: parse_user vs parse_user_args differ for {rules:?}"
            ));
        }
        match setuser_expected(&name, &ours) {
            Some(exp) if exp != got => mismatches.push(format!(
                "{kind} seed {seed:#x} user {name} rules {rules:?}: SETUSER server {} ours {}",
                show(&got),
                show(&exp)
            )),
            None if (got == b"+OK\r\n") != ours.is_ok() => mismatches.push(format!(
                "{kind} seed {seed:#x} user {name} rules {rules:?}: SETUSER server {} ours {:?}",
                show(&got),
                ours
            )),
            _ => {}
        }
        let user = match ours {
            Ok(u) if got == b"+OK\r\n" => u,
            _ => {
                rejected += 1;
                continue;
            }
        };
        accepted += 1;

        let mut batch = Vec::with_capacity(per_user);
        let mut argvs = Vec::with_capacity(per_user);
        for _ in 0..per_user {
            let argv = gen_argv(&mut rng, &specs, &keyed);
            let mut cmd: Vec<Vec<u8>> = vec![b"ACL".to_vec(), b"DRYRUN".to_vec()];
            cmd.push(name.clone().into_bytes());
            cmd.extend(argv.iter().cloned());
            batch.push(cmd);
            argvs.push(argv);
        }
        client.send(&batch);
        for argv in &argvs {
            let got = client.read_reply();
            let ours = acl::dryrun(&user, argv);
            // Redis finds a (sub)command name followed by NUL and junk only when the junk
            // happens to hash into the same dict bucket (random per process); redward never
            // does. Such requests are not comparable.
            let nul = |i: usize| argv.get(i).is_some_and(|a| a.contains(&0));
            let container = commands::lookup(argv.first().map_or(&[][..], |a| a.as_slice()))
                .is_some_and(|c| !c.subcommands.is_empty());
            if nul(0) || (container && nul(1)) {
                *outcomes.entry("skipped-nul-name").or_default() += 1;
                continue;
            }
            checked += 1;
            let kind = match got.first() {
                Some(b'+') => "ok",
                Some(b'-') => "error",
                _ if got.windows(6).any(|w| w == b"' key\r") => "denied-key",
                _ if got.windows(10).any(|w| w == b"' channel\r") => "denied-channel",
                _ => "denied-command",
            };
            *outcomes.entry(kind).or_default() += 1;
            if got != ours {
                mismatches.push(format!(
                    "{kind} seed {seed:#x} user {name} rules {rules:?} argv {:?}: server {} ours {}",
                    argv.iter()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>(),
                    show(&got),
                    show(&ours)
                ));
            }
        }
        created.push((name, user, rules));
    }

    // Hand-picked requests for the movable-keys commands and their fallbacks, run against
    // hand-picked users.
    let fixed_users: &[&str] = &[
        "on +@all %R~r* %W~w* ~a* &a* &b",
        "on +@all %R~*",
        "on +@all %W~*",
        "on +@all %R~* %W~w*",
        "on -@all +get (+@all ~a*) (+@all %R~r*) (+@all %W~w* &b*)",
        "on +@all resetchannels &a* allkeys",
        "on +@all allkeys &a? &b*",
        "on nocommands +select|0 +config|get +client +@read -get +debug|object ~*",
        "on +@all -@write ~* &*",
        "on +@all ~* &* (-@all)",
    ];
    let fixed_argvs: &[&str] = &[
        "eval s 2 a1 b1",
        "eval s 0",
        "eval s 3 a b",
        "eval s 2x a b",
        "eval s -1 a",
        "eval s 01 a b",
        "eval s 1 r1",
        "eval_ro s 1 r1",
        "evalsha_ro s 1 w1",
        "fcall f 1 w1",
        "fcall_ro f 2 r1 a1",
        "zunionstore w1 2 r1 r2",
        "zunionstore a 0 r1",
        "zunionstore x 2 a1 a2",
        "zunionstore w 2x r1 w2",
        "zunionstore w 3 r1 r2",
        "zinterstore w1 1 r1 WEIGHTS 1",
        "zdiffstore w1 1 r1",
        "zdiffstore r1 1 w1",
        "zunion 2 r1 r2",
        "zinter 2x r1 r2",
        "zdiff 1 a",
        "zintercard 1 r1 LIMIT 1",
        "sintercard 2 r1 w1",
        "lmpop 2 a1 w1 LEFT",
        "lmpop 1 w1 LEFT",
        "lmpop 2 w1 LEFT",
        "blmpop 0 2 w1 w2 LEFT",
        "bzmpop 0 1 r1 MIN",
        "zmpop 1 a MIN",
        "zmpop 0 a MIN",
        "sort r1",
        "sort r1 STORE w1",
        "sort r1 BY x STORE a",
        "sort r1 LIMIT 0 1 STORE w1",
        "sort r1 GET STORE x",
        "sort r1 STORE",
        "sort w1 STORE r1 STORE w2",
        "sort_ro r1 BY x",
        "sort_ro w1",
        "migrate h 1 a1 0 1000",
        "migrate h 1 r1 0 1000",
        "migrate h 1 EMPTY 0 1000 KEYS r1 w1",
        "migrate h 1 a1 0 1000 KEYS x",
        "migrate h 1 EMPTY 0 1000 AUTH KEYS x",
        "migrate h 1 EMPTY 0 1000 AUTH2 u KEYS x",
        "migrate h 1 EMPTY 0 1000 COPY REPLACE KEYS w1 a2",
        "migrate h 1 w1 0 1000 COPY",
        "georadius r1 0 0 1 m STORE w1",
        "georadius r1 0 0 1 m STOREDIST w1",
        "georadius r1 0 0 1 m STORE a STOREDIST b",
        "georadius w1 0 0 1 m",
        "georadius r1 0 0 1 m STORE",
        "georadiusbymember r1 m 1 km STORE w1",
        "georadius_ro r1 0 0 1 m",
        "geosearchstore w1 r1 FROMMEMBER m BYRADIUS 1 m",
        "xread STREAMS r1 0",
        "xread COUNT 1 STREAMS r1 a1 0 0",
        "xread STREAMS a b c",
        "xread COUNT STREAMS x",
        "xread BLOCK 0 STREAMS w1 0",
        "xread STREAMS streams r1 0 0",
        "xreadgroup GROUP g c STREAMS r1 0",
        "xreadgroup GROUP g c STREAMS w1 0",
        "xreadgroup GROUP g c NOACK STREAMS a1 r1 0 0",
        "set w1 v",
        "set r1 v GET",
        "set a1 v get",
        "set w1 v GET",
        "set w1 v EX 1 GET",
        "set w1 v GETX",
        "bitfield r1 GET u8 0",
        "bitfield w1 SET u8 0 1",
        "bitfield r1 OVERFLOW WRAP GET u8 0",
        "bitfield r1 GET u8",
        "bitfield_ro r1 GET u8 0",
        "bitfield r1",
        "get r1",
        "get w1",
        "get a1",
        "get EMPTY",
        "mget r1 w1 a1",
        "mset w1 v a1 v",
        "mset w1 v r1 v",
        "copy r1 w1",
        "copy w1 r1",
        "rename w1 w2",
        "rename r1 w1",
        "getdel r1",
        "getdel w1",
        "getex r1",
        "lmove r1 w1 LEFT RIGHT",
        "smove w1 w2 m",
        "lcs r1 r2",
        "object encoding r1",
        "object freq w1",
        "memory usage r1",
        "debug object r1",
        "select 0",
        "select 1",
        "config get x",
        "config set x y",
        "client list",
        "client kill x",
        "publish a1 m",
        "publish b m",
        "publish c m",
        "spublish a1 m",
        "spublish b m",
        "subscribe a1 b c",
        "subscribe a1 bb",
        "ssubscribe a1 b",
        "psubscribe a* b",
        "psubscribe a?",
        "psubscribe b*",
        "unsubscribe c",
        "punsubscribe c*",
        "pubsub channels c*",
        "keys *",
        "scan 0",
        "blpop a1 w1 0",
        "brpoplpush r1 w1 0",
        "pfcount r1 w1",
        "pfmerge w1 r1",
        "touch r1 w1",
        "unlink a1 w1",
        "del r1",
        "exists w1",
        "dump r1",
        "restore w1 0 x",
        "auth x",
        "hello",
        "multi",
        "exec",
        "watch r1",
        "ping",
        "acl whoami",
        "acl setuser x",
    ];
    let mut fixed_checked = 0usize;
    for (ui, rules) in fixed_users.iter().enumerate() {
        let name = format!("fixed{ui}");
        let mut setuser: Vec<Vec<u8>> = vec![b"ACL".to_vec(), b"SETUSER".to_vec()];
        setuser.push(name.clone().into_bytes());
        setuser.extend(rules.split(' ').map(|r| r.as_bytes().to_vec()));
        assert_eq!(client.call(&setuser), b"+OK\r\n", "{rules}");
        let user = acl::parse_user(&name, rules).expect("fixed user");
        for line in fixed_argvs {
            // `EMPTY` stands for the empty string.
            let argv: Vec<Vec<u8>> = line
                .split(' ')
                .map(|a| {
                    if a == "EMPTY" {
                        Vec::new()
                    } else {
                        a.as_bytes().to_vec()
                    }
                })
                .collect();
            let mut cmd: Vec<Vec<u8>> = vec![b"ACL".to_vec(), b"DRYRUN".to_vec()];
            cmd.push(name.clone().into_bytes());
            cmd.extend(argv.iter().cloned());
            let got = client.call(&cmd);
            let ours = acl::dryrun(&user, &argv);
            fixed_checked += 1;
            if got != ours {
                mismatches.push(format!(
                    "{kind} fixed user {rules:?} argv {line:?}: server {} ours {}",
                    show(&got),
                    show(&ours)
                ));
            }
        }
    }
    eprintln!("acl oracle {kind}: {fixed_checked} hand-picked DRYRUNs");

    // ACL LIST versus describe. Redis 7.0 emits single-command rules in its dict's random
    // order, so there tokens are compared sorted; Redis 7.2+ and Valkey describe a user by
    // the command rules as given (and show `sanitize-payload`), so the line must be equal.
    let list = client.call(&[b"ACL".to_vec(), b"LIST".to_vec()]);
    let list = String::from_utf8_lossy(&list).into_owned();
    let lines: Vec<&str> = list
        .split("\r\n")
        .filter(|l| l.starts_with("user "))
        .collect();
    for (name, user, rules) in &created {
        let prefix = format!("user {name} ");
        let Some(line) = lines.iter().find(|l| l.starts_with(&prefix)) else {
            mismatches.push(format!("ACL LIST lacks {name}"));
            continue;
        };
        let ours = acl::describe(user);
        let equal = if modern {
            **line == ours
        } else {
            sorted_tokens(line) == sorted_tokens(&ours)
        };
        if !equal {
            mismatches.push(format!(
                "{kind} seed {seed:#x} user {name} rules {rules:?}: ACL LIST\n  server {line}\n  ours   {ours}"
            ));
        }
    }

    eprintln!(
        "acl oracle {kind}: seed {seed:#x}, {users} users ({accepted} accepted, {rejected} rejected), \
         {checked} DRYRUNs {outcomes:?}, {} mismatches",
        mismatches.len()
    );
    for m in mismatches.iter().take(25) {
        eprintln!("MISMATCH {m}");
    }
    assert!(
        mismatches.is_empty(),
        "{kind}: {} mismatches",
        mismatches.len()
    );
}
