//! Which arguments of a request are keys, and with which access flags, exactly as Redis 7.0's
//! ACL check finds them: `getKeysFromCommandWithSpecs` (`db.c`), i.e. the key specs when they
//! are complete and their flags reliable, else the command's own `getkeys_proc`.
//!
//! The fallbacks matter for security and for matching Redis: an invalid spec (a bad `numkeys`,
//! an out-of-range index) throws away *every* key found so far and asks the proc, which may
//! return fewer keys, or keys with no flags (then any key pattern, `%R~` or `%W~`, matches).

use crate::commands::{
    Argv, BeginSearch, CommandSpec, FindKeys, KS_ACCESS, KS_DELETE, KS_INCOMPLETE, KS_NOT_KEY,
    KS_OW, KS_RO, KS_RW, KS_UPDATE, KS_VARIABLE_FLAGS,
};
use crate::resp::request::string2ll;

/// One key argument: its argv index and the key-spec flags (`KS_*`) Redis attaches to it
/// (`keyReference`). Flags are 0 for keys found by the procs that do not report flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef {
    pub pos: usize,
    pub flags: u32,
}

/// The commands with a native `getkeys_proc` in Redis 7.0 (`commands.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proc {
    Bitfield,
    Migrate,
    Sort,
    SortRo,
    Georadius,
    /// `genericGetKeys(store, count, first, step)`.
    Generic(usize, usize, usize),
    Xread,
    Set,
}

fn proc_of(cmd: &CommandSpec) -> Option<Proc> {
    Some(match cmd.name {
        "bitfield" => Proc::Bitfield,
        "migrate" => Proc::Migrate,
        "sort" => Proc::Sort,
        "sort_ro" => Proc::SortRo,
        "georadius" | "georadiusbymember" => Proc::Georadius,
        "blmpop" | "bzmpop" | "eval" | "evalsha" | "evalsha_ro" | "eval_ro" | "fcall"
        | "fcall_ro" => Proc::Generic(0, 2, 3),
        "lmpop" | "zmpop" | "sintercard" | "zdiff" | "zinter" | "zintercard" | "zunion" => {
            Proc::Generic(0, 1, 2)
        }
        "zdiffstore" | "zinterstore" | "zunionstore" => Proc::Generic(1, 2, 3),
        "xread" | "xreadgroup" => Proc::Xread,
        "set" => Proc::Set,
        _ => return None,
    })
}

/// `doesCommandHaveKeys`: a getkeys proc, or at least one key spec not marked `NOT_KEY`.
pub fn has_keys(cmd: &CommandSpec) -> bool {
    proc_of(cmd).is_some() || cmd.key_specs.iter().any(|s| s.flags & KS_NOT_KEY == 0)
}

/// `getKeysFromCommandWithSpecs(cmd, argv, argc, GET_KEYSPEC_DEFAULT)`: the keys Redis's ACL
/// check tests, in the order it tests them.
pub fn command_keys<A: Argv + ?Sized>(cmd: &CommandSpec, argv: &A) -> Vec<KeyRef> {
    let has_keyspec = cmd.key_specs.iter().any(|s| s.flags & KS_NOT_KEY == 0);
    let has_varflags = cmd
        .key_specs
        .iter()
        .any(|s| s.flags & KS_VARIABLE_FLAGS != 0);
    if has_keyspec && !has_varflags {
        if let Some(keys) = keys_from_specs(cmd, argv) {
            return keys;
        }
    }
    match proc_of(cmd) {
        Some(p) => keys_from_proc(p, argv),
        None => Vec::new(),
    }
}

/// Argument `i` as the C string Redis's `strcasecmp`/`atoi` see (up to the first NUL).
fn carg<A: Argv + ?Sized>(argv: &A, i: usize) -> &[u8] {
    if i < argv.argc() {
        super::rules::c_str(argv.arg(i))
    } else {
        &[]
    }
}

fn arg_is<A: Argv + ?Sized>(argv: &A, i: usize, word: &str) -> bool {
    carg(argv, i).eq_ignore_ascii_case(word.as_bytes())
}

/// `getKeysUsingKeySpecs` without `INCLUDE_NOT_KEYS` / `RETURN_PARTIAL`: `None` where Redis
/// returns -1 (an unknown or invalid spec, or an `INCOMPLETE` one).
fn keys_from_specs<A: Argv + ?Sized>(cmd: &CommandSpec, argv: &A) -> Option<Vec<KeyRef>> {
    let argc = i64::try_from(argv.argc()).unwrap_or(i64::MAX);
    let mut keys = Vec::new();
    for spec in cmd.key_specs {
        if spec.flags & KS_NOT_KEY != 0 {
            continue;
        }
        let mut first: i64 = match spec.begin_search {
            BeginSearch::Index(pos) => i64::from(pos),
            BeginSearch::Keyword {
                keyword,
                start_from,
            } => {
                let start_from = i64::from(start_from);
                let start = if start_from > 0 {
                    start_from
                } else {
                    argc + start_from
                };
                let end = if start_from > 0 { argc - 1 } else { 1 };
                let mut found = 0;
                let mut i = start;
                while i != end {
                    if i >= argc || i < 1 {
                        break;
                    }
                    if arg_is(argv, usize::try_from(i).ok()?, keyword) {
                        found = i + 1;
                        break;
                    }
                    i = if start <= end { i + 1 } else { i - 1 };
                }
                if found == 0 {
                    continue;
                }
                found
            }
            BeginSearch::Unknown => return None,
        };
        let (last, step) = match spec.find_keys {
            FindKeys::Range {
                last_key,
                key_step,
                limit,
            } => {
                let last_key = i64::from(last_key);
                let last = if last_key >= 0 {
                    first + last_key
                } else if limit == 0 {
                    argc + last_key
                } else {
                    first + ((argc - first) / i64::from(limit) + last_key)
                };
                (last, i64::from(key_step))
            }
            FindKeys::Keynum {
                keynum_idx,
                first_key,
                key_step,
            } => {
                if i64::from(keynum_idx) >= argc {
                    return None;
                }
                let at = usize::try_from(first + i64::from(keynum_idx)).ok()?;
                if at >= argv.argc() {
                    return None;
                }
                let numkeys = string2ll(argv.arg(at))?;
                if numkeys < 0 {
                    return None;
                }
                first += i64::from(first_key);
                // C: `last = first + (int)numkeys - 1`, in int arithmetic.
                let last = (first as i32).wrapping_add(numkeys as i32).wrapping_sub(1);
                (i64::from(last), i64::from(key_step))
            }
            FindKeys::Unknown => return None,
        };
        if last >= argc || last < first || first >= argc {
            return None;
        }
        let step = step.max(1);
        let mut i = first;
        while i <= last {
            if let Ok(pos) = usize::try_from(i) {
                keys.push(KeyRef {
                    pos,
                    flags: spec.flags,
                });
            }
            i += step;
        }
        if spec.flags & KS_INCOMPLETE != 0 {
            return None;
        }
    }
    Some(keys)
}

/// glibc `atoi`: `(int) strtol(s, NULL, 10)` — leading spaces, a sign, digits, saturating at
/// the `long` range, then truncated to `int`.
fn atoi(s: &[u8]) -> i32 {
    let mut i = 0;
    while s.get(i).is_some_and(|&c| super::rules::is_c_space(c)) {
        i += 1;
    }
    let mut negative = false;
    if let Some(&c) = s.get(i) {
        if c == b'-' || c == b'+' {
            negative = c == b'-';
            i += 1;
        }
    }
    let mut v: i128 = 0;
    while let Some(&c) = s.get(i) {
        if !c.is_ascii_digit() {
            break;
        }
        v = (v * 10 + i128::from(c - b'0')).min(i128::from(i64::MAX) + 1);
        i += 1;
    }
    let v = if negative { -v } else { v };
    let long = v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    long as i32
}

/// The `getkeys_proc`s of `db.c`.
fn keys_from_proc<A: Argv + ?Sized>(p: Proc, argv: &A) -> Vec<KeyRef> {
    let argc = argv.argc();
    let key = |pos: usize, flags: u32| KeyRef { pos, flags };
    match p {
        // genericGetKeys
        Proc::Generic(store, count, first) => {
            let num = atoi(carg(argv, count));
            let avail = i64::try_from(argc).unwrap_or(i64::MAX) - first as i64;
            if num < 1 || i64::from(num) > avail {
                return Vec::new();
            }
            let num = usize::try_from(num).unwrap_or(0);
            let mut keys: Vec<KeyRef> = (0..num).map(|i| key(first + i, 0)).collect();
            if store != 0 {
                keys.push(key(store, 0));
            }
            keys
        }
        // sortROGetKeys
        Proc::SortRo => vec![key(1, KS_RO | KS_ACCESS)],
        Proc::Sort => sort_keys(argv),
        Proc::Migrate => migrate_keys(argv),
        Proc::Georadius => georadius_keys(argv),
        Proc::Xread => xread_keys(argv),
        // setGetKeys: GET (as a C string, any case) from argv[3] on makes it a read too.
        Proc::Set => {
            let get = (3..argc).any(|i| arg_is(argv, i, "get"));
            if get {
                vec![key(1, KS_RW | KS_ACCESS | KS_UPDATE)]
            } else {
                vec![key(1, KS_OW | KS_UPDATE)]
            }
        }
        Proc::Bitfield => bitfield_keys(argv),
    }
}

/// `sortGetKeys` in Redis's db.c: the last STORE wins; LIMIT/GET/BY skip their arguments.
fn sort_keys<A: Argv + ?Sized>(argv: &A) -> Vec<KeyRef> {
    let argc = argv.argc();
    let key = |pos: usize, flags: u32| KeyRef { pos, flags };
    let mut keys = vec![key(1, KS_RO | KS_ACCESS)];
    let mut store = None;
    let mut i = 2;
    while i < argc {
        // The skiplist loop in Redis tests "store" inside the loop over
        // limit/get/by, so STORE is recognized on the first iteration already.
        if arg_is(argv, i, "limit") {
            i += 2;
        } else if arg_is(argv, i, "store") && i + 1 < argc {
            store = Some(i + 1);
        } else if arg_is(argv, i, "get") || arg_is(argv, i, "by") {
            i += 1;
        }
        i += 1;
    }
    if let Some(pos) = store {
        keys.push(key(pos, KS_OW | KS_UPDATE));
    }
    keys
}

/// `migrateGetKeys` in Redis's db.c.
fn migrate_keys<A: Argv + ?Sized>(argv: &A) -> Vec<KeyRef> {
    let argc = argv.argc();
    let key = |pos: usize, flags: u32| KeyRef { pos, flags };
    let (mut first, mut num) = (3usize, 1usize);
    if argc > 6 {
        let mut i = 6;
        while i < argc {
            if arg_is(argv, i, "keys") {
                // A non-empty key argument with KEYS is a syntax error: no keys.
                if argv.arg(3).is_empty() {
                    first = i + 1;
                    num = argc - first;
                } else {
                    num = 0;
                }
                break;
            }
            if arg_is(argv, i, "auth") {
                i += 1;
            } else if arg_is(argv, i, "auth2") {
                i += 2;
            }
            i += 1;
        }
    }
    (0..num)
        .map(|i| key(first + i, KS_RW | KS_ACCESS | KS_DELETE))
        .collect()
}

/// `georadiusGetKeys` in Redis's db.c: the last STORE/STOREDIST wins.
fn georadius_keys<A: Argv + ?Sized>(argv: &A) -> Vec<KeyRef> {
    let argc = argv.argc();
    let key = |pos: usize, flags: u32| KeyRef { pos, flags };
    let mut stored = None;
    let mut i = 5;
    while i < argc {
        if (arg_is(argv, i, "store") || arg_is(argv, i, "storedist")) && i + 1 < argc {
            stored = Some(i + 1);
            i += 1;
        }
        i += 1;
    }
    let mut keys = vec![key(1, 0)];
    if let Some(pos) = stored {
        keys.push(key(pos, 0));
    }
    keys
}

/// `xreadGetKeys` in Redis's db.c.
fn xread_keys<A: Argv + ?Sized>(argv: &A) -> Vec<KeyRef> {
    let argc = argv.argc();
    let key = |pos: usize, flags: u32| KeyRef { pos, flags };
    let mut streams = None;
    let mut i = 1;
    while i < argc {
        if arg_is(argv, i, "block") || arg_is(argv, i, "count") {
            i += 1;
        } else if arg_is(argv, i, "group") {
            i += 2;
        } else if arg_is(argv, i, "noack") {
        } else if arg_is(argv, i, "streams") {
            streams = Some(i);
            break;
        } else {
            break;
        }
        i += 1;
    }
    let Some(sp) = streams else {
        return Vec::new();
    };
    let num = argc - sp - 1;
    if num == 0 || !num.is_multiple_of(2) {
        return Vec::new();
    }
    (sp + 1..argc - num / 2).map(|i| key(i, 0)).collect()
}

/// `bitfieldGetKeys` in Redis's db.c.
fn bitfield_keys<A: Argv + ?Sized>(argv: &A) -> Vec<KeyRef> {
    let argc = argv.argc();
    let key = |pos: usize, flags: u32| KeyRef { pos, flags };
    let mut readonly = true;
    let mut i = 2;
    while i < argc {
        let remargs = argc - i - 1;
        if arg_is(argv, i, "get") && remargs >= 2 {
            i += 2;
        } else if (arg_is(argv, i, "set") || arg_is(argv, i, "incrby")) && remargs >= 3 {
            readonly = false;
            break;
        } else if arg_is(argv, i, "overflow") && remargs >= 1 {
            i += 1;
        } else {
            readonly = false;
            break;
        }
        i += 1;
    }
    if readonly {
        vec![key(1, KS_RO | KS_ACCESS)]
    } else {
        vec![key(1, KS_RW | KS_ACCESS | KS_UPDATE)]
    }
}
