//! Random ACL cases shared by the two differential ACL tests: `tests/acl_dryrun.rs` (every
//! reply of `ACL DRYRUN`, and `ACL SETUSER` errors, against redis-server) and
//! `tests/acl_exec.rs` (commands executed for real through redward and straight against
//! redis-server).
//!
//! The pieces here are the same for both; each test keeps the recipe that makes its cases (its
//! `gen_rules` and `gen_argv`) and passes a [`RuleStyle`] for the rules only it generates:
//! `acl_dryrun` also generates invalid rules (Redis must reject them with the same message),
//! `acl_exec` only rules both sides accept.
//!
//! Everything draws from one [`Rng`] in a fixed order, so a seed always gives the same cases.

use redward::commands::{self, CommandSpec};

/// xorshift64*: deterministic, no extra crates.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % (n.max(1) as u64)) as usize
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// [`Rng::pick`] from the concatenation of `parts` (the same single draw).
    pub fn pick_joined<'a, T>(&mut self, parts: &[&'a [T]]) -> &'a T {
        let mut i = self.below(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            if i < part.len() {
                return &part[i];
            }
            i -= part.len();
        }
        unreachable!("below() stays below the total")
    }
}

/// Every command and subcommand of the table in force: the server's, once learned
/// (`common::learn_server`).
pub fn all_specs() -> Vec<&'static CommandSpec> {
    commands::all_specs()
}

/// Category names: the 21 of Redis 7.0 first (`&CATS[..21]` are the valid ones), then
/// spellings Redis accepts or rejects. Written out rather than taken from
/// `redward::commands::CATEGORIES`, so that the tests do not trust the code under test.
pub const CATS: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
    "all",
    "ALL",
    "Read",
    "nope",
    "",
];

/// Glob building blocks for key and channel patterns.
pub const GLOB_PARTS: &[&str] = &[
    "a", "b", "k", "x", "*", "*", "?", "[a-c]", "[^a]", "[ab]", "\\*", "\\a", "\\", "[", "]", "[a",
    "[^", "[z-a]", "[\\]]", "-", ":", "1",
];

/// Building blocks for keys and channels.
pub const KEY_PARTS: &[&str] = &[
    "a", "b", "k", "x", "c", "*", "?", "[", "]", "\\", "1", ":", "z",
];

/// `>password` rules' passwords.
pub const PASSWORDS: &[&str] = &["pw", "secret", "x"];

/// Rules that reset parts of a user.
pub const RESET_RULES: &[&str] = &["reset", "clearselectors", "sanitize-payload"];

/// Arguments for number positions (`numkeys`, counts, timeouts): numbers, ones Redis rejects,
/// a word and the empty string.
pub const NUMBER_WORDS: &[&str] = &["0", "1", "2", "3", "-1", "01", "2x", "abc", ""];

pub fn gen_glob(rng: &mut Rng) -> String {
    let n = 1 + rng.below(4);
    (0..n).map(|_| *rng.pick(GLOB_PARTS)).collect()
}

pub fn gen_key(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(3) {
        return Vec::new();
    }
    if rng.chance(2) {
        return b"a\0b".to_vec();
    }
    if rng.chance(2) {
        return vec![b'a', 0xff];
    }
    let n = 1 + rng.below(3);
    (0..n).flat_map(|_| rng.pick(KEY_PARTS).bytes()).collect()
}

/// `command|subcommand` and `command|first-arg` rules, for both tests (each adds its own in
/// its [`RuleStyle`]).
pub const FIRST_ARG_RULES: &[&str] = &[
    "select|0",
    "select|1",
    "get|x",
    "debug|object",
    "config|get",
    "client|list",
];

/// What differs between the tests' rule generators. An empty list turns its case off: the
/// draw that would have picked from it gives an ordinary rule instead.
pub struct RuleStyle {
    /// Chance (percent) of `+` rather than `-` in a command rule.
    pub plus_percent: usize,
    /// `command|...` rules besides [`FIRST_ARG_RULES`].
    pub more_first_arg_rules: &'static [&'static str],
    /// Command names Redis rejects or treats specially (after the sign).
    pub odd_command_rules: &'static [&'static str],
    /// Keywords that reset or grant all commands.
    pub command_keywords: &'static [&'static str],
    /// Rules that are invalid inside a selector.
    pub bad_selector_rules: &'static [&'static str],
}

/// `+`/`-` a command, a first-arg rule, an odd name (with `style`) or a category.
pub fn gen_command_rule(
    rng: &mut Rng,
    specs: &[&'static CommandSpec],
    style: &RuleStyle,
) -> String {
    let sign = if rng.chance(style.plus_percent) {
        "+"
    } else {
        "-"
    };
    match rng.below(12) {
        0..=4 => {
            let s = rng.pick(specs);
            let name = if rng.chance(10) {
                s.name.to_ascii_uppercase()
            } else {
                s.name.to_owned()
            };
            format!("{sign}{name}")
        }
        5 => {
            let rule = rng.pick_joined(&[FIRST_ARG_RULES, style.more_first_arg_rules]);
            format!("{sign}{rule}")
        }
        6 if !style.odd_command_rules.is_empty() => {
            format!("{sign}{}", rng.pick(style.odd_command_rules))
        }
        _ => format!("{sign}@{}", rng.pick(CATS)),
    }
}

/// A rule that may stand in a selector: a command rule, key or channel patterns, keywords.
pub fn gen_selector_rule(
    rng: &mut Rng,
    specs: &[&'static CommandSpec],
    style: &RuleStyle,
) -> String {
    match rng.below(20) {
        0..=5 => gen_command_rule(rng, specs, style),
        6..=8 => format!("~{}", gen_glob(rng)),
        9 => format!(
            "%{}~{}",
            rng.pick(&["R", "W", "RW", "WR", "r", "w", "RR", "", "X"]),
            gen_glob(rng)
        ),
        10 => format!("%{}", rng.pick(&["R", "W", "RW"])),
        11..=12 => format!("&{}", gen_glob(rng)),
        13 => rng
            .pick(&[
                "allkeys",
                "resetkeys",
                "~*",
                "allchannels",
                "resetchannels",
                "&*",
            ])
            .to_string(),
        14 => rng.pick(style.command_keywords).to_string(),
        15 => rng.pick(&["%R~*", "%W~*", "~a*", "&a*", "&*"]).to_string(),
        16 if !style.bad_selector_rules.is_empty() => {
            rng.pick(style.bad_selector_rules).to_string()
        }
        _ => gen_command_rule(rng, specs, style),
    }
}

/// Pushes the permissive start of a user's rules, so that many requests get past the command
/// check to keys and channels: of `rng.below(odds[3])`, below `odds[0]` gives `+@all`, below
/// `odds[1]` `allcommands`, below `odds[2]` three valid categories, the rest nothing.
pub fn push_permissive_start(rng: &mut Rng, rules: &mut Vec<String>, odds: [usize; 4]) {
    let roll = rng.below(odds[3]);
    if roll < odds[0] {
        rules.push("+@all".to_owned());
    } else if roll < odds[1] {
        rules.push("allcommands".to_owned());
    } else if roll < odds[2] {
        for _ in 0..3 {
            rules.push(format!("+@{}", rng.pick(&CATS[..21])));
        }
    }
}

/// A selector as several `ACL SETUSER` arguments: `(` before the first rule, `)` after the
/// last.
pub fn push_selector_args(rules: &mut Vec<String>, ops: &[String]) {
    let last = ops.len() - 1;
    for (i, op) in ops.iter().enumerate() {
        let mut t = op.clone();
        if i == 0 {
            t.insert(0, '(');
        }
        if i == last {
            t.push(')');
        }
        rules.push(t);
    }
}

/// The start of a request: a command drawn from `keyed` (60%) or `specs`, its name (and
/// subcommand) as the first arguments, sometimes upper-cased or with an unknown subcommand.
/// Returns them and how many arguments the whole request should have: the arity, or for a
/// variadic command its minimum plus `rng.below(variadic_extra)`; one short now and then.
pub fn gen_command_head(
    rng: &mut Rng,
    specs: &[&'static CommandSpec],
    keyed: &[&'static CommandSpec],
    variadic_extra: usize,
) -> (&'static CommandSpec, Vec<Vec<u8>>, usize) {
    let spec = if rng.chance(60) {
        *rng.pick(keyed)
    } else {
        *rng.pick(specs)
    };
    let mut argv: Vec<Vec<u8>> = Vec::new();
    let nparts = match spec.name.split_once('|') {
        Some((p, s)) => {
            argv.push(p.as_bytes().to_vec());
            if rng.chance(3) {
                argv.push(b"nosuchsub".to_vec());
            } else if rng.chance(10) {
                argv.push(s.to_ascii_uppercase().into_bytes());
            } else {
                argv.push(s.as_bytes().to_vec());
            }
            2
        }
        None => {
            argv.push(if rng.chance(10) {
                spec.name.to_ascii_uppercase().into_bytes()
            } else {
                spec.name.as_bytes().to_vec()
            });
            1
        }
    };
    let mut argc = if spec.arity > 0 {
        spec.arity as usize
    } else {
        (-spec.arity) as usize + rng.below(variadic_extra)
    };
    if rng.chance(3) {
        argc = argc.saturating_sub(1).max(1);
    }
    (spec, argv, argc.max(nparts))
}
