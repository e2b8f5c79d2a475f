//! Learning the command table from the server behind: its `COMMAND` reply (flags, ACL
//! categories, key specs, subcommands) and `INFO server` (flavor and version), so a newer
//! Redis, Valkey or a module's commands are checked, routed and refused exactly as that server
//! would, without regenerating the table.
//!
//! Every command the server describes differently from the generated Redis 7.0 table (arity,
//! flags, categories, key specs, subcommands) or that the table lacks becomes part of the
//! [`Catalog`]; so do the generated commands the server lacks. ACL rules apply to learned
//! commands through their categories and names (`acl::rules`, name-keyed), as Redis applies a
//! user's rules to commands it learns later (`ACLRecomputeCommandBitsFromCommandRulesAllUsers`
//! in acl.c). Keys come from the server's key specs; a server without them (before 7.0) gets
//! the legacy (first, last, step) positions, treated as read *and* write, the conservative
//! choice.

use std::collections::{HashMap, HashSet};

use redis_protocol::resp2::types::OwnedFrame;

use super::catalog::{self, Catalog, ServerInfo};
use super::{
    BeginSearch, CommandSpec, FindKeys, KeySpec, CATEGORIES, CAT_CONNECTION, CAT_TRANSACTION,
    FLAG_ADMIN, FLAG_ALLOW_BUSY, FLAG_BLOCKING, FLAG_MODULE, FLAG_NOSCRIPT, FLAG_NO_MULTI,
    FLAG_OWN_CONNECTION, FLAG_PUBSUB, KS_ACCESS, KS_RW, KS_UPDATE,
};

/// Why a `COMMAND` reply could not be learned from (the catalog is then left as it was).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LearnError {
    #[error("COMMAND reply is not an array (got {0})")]
    NotAnArray(&'static str),
    #[error("COMMAND reply describes no command")]
    Empty,
}

/// Builds the catalog of the server that sent `info` (`INFO server`'s text) and `command`
/// (its `COMMAND` reply, RESP2): every command it describes differently from the generated
/// table, or that the table lacks, and every generated command it lacks.
///
/// Entries that cannot be read (not an array, no name, no arity) are skipped, as are
/// subcommands nested deeper than one level (no Redis has them).
///
/// # Errors
/// A [`LearnError`] when the reply is not a `COMMAND` reply at all.
pub fn learn(info: &str, command: &OwnedFrame) -> Result<Catalog, LearnError> {
    let OwnedFrame::Array(entries) = command else {
        return Err(LearnError::NotAnArray(frame_kind(command)));
    };
    let drafts: Vec<Draft> = entries.iter().filter_map(|e| Draft::parse(e, 0)).collect();
    if drafts.is_empty() {
        return Err(LearnError::Empty);
    }
    let mut changed = HashMap::new();
    let mut seen = HashSet::new();
    for mut d in drafts {
        let generated = super::lookup_generated(d.name.as_bytes());
        d.mark_own_connection(generated);
        seen.insert(d.name.clone());
        if let Some(g) = generated {
            if Draft::from_spec(g) == d {
                continue;
            }
        }
        let key = format!("{d:?}");
        let name: Box<str> = d.name.clone().into_boxed_str();
        let spec = catalog::intern(key, move || d.into_spec());
        changed.insert(name, spec);
    }
    let absent = super::commands()
        .iter()
        .filter(|c| !seen.contains(c.name))
        .map(|c| c.name)
        .collect();
    Ok(Catalog {
        server: ServerInfo::from_info(info),
        changed,
        absent,
    })
}

fn frame_kind(f: &OwnedFrame) -> &'static str {
    match f {
        OwnedFrame::Error(_) => "an error",
        OwnedFrame::Null => "a null",
        OwnedFrame::Integer(_) => "an integer",
        _ => "a string",
    }
}

/// A key spec as read from `COMMAND` (owned; leaked only when interned).
#[derive(Clone, Debug, PartialEq, Eq)]
struct DraftKeySpec {
    flags: u32,
    begin: DraftBegin,
    find: FindKeys,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DraftBegin {
    Index(i32),
    Keyword(String, i32),
    Unknown,
}

/// A command as read from `COMMAND`, before it is made `'static`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Draft {
    name: String,
    arity: i32,
    flags: u32,
    categories: u32,
    first_key: i32,
    last_key: i32,
    key_step: i32,
    key_specs: Vec<DraftKeySpec>,
    subcommands: Vec<Draft>,
}

impl Draft {
    /// One `COMMAND` entry: name, arity, flags, first key, last key, step, ACL categories,
    /// tips, key specs, subcommands (server.c `addReplyCommandInfo`, Redis 7+ and Valkey).
    /// Servers before 7.0 stop after the categories: their keys come from the legacy
    /// positions, as read *and* write (the conservative choice).
    fn parse(entry: &OwnedFrame, depth: u8) -> Option<Draft> {
        let OwnedFrame::Array(f) = entry else {
            return None;
        };
        let name = text(f.first()?)?.to_ascii_lowercase();
        let arity = int(f.get(1)?)?;
        let first = f.get(3).and_then(int).unwrap_or(0);
        let last = f.get(4).and_then(int).unwrap_or(0);
        let step = f.get(5).and_then(int).unwrap_or(0);
        let mut flags = 0u32;
        if let Some(OwnedFrame::Array(names)) = f.get(2) {
            for n in names {
                flags |= text(n).map_or(0, |n| flag(&n));
            }
        }
        let mut categories = 0u32;
        if let Some(OwnedFrame::Array(cats)) = f.get(6) {
            for c in cats {
                if let Some(i) = text(c).and_then(|c| {
                    CATEGORIES
                        .iter()
                        .position(|k| c.strip_prefix('@') == Some(k))
                }) {
                    categories |= 1 << i;
                }
            }
        }
        let key_specs = match f.get(8) {
            Some(OwnedFrame::Array(specs)) => specs.iter().filter_map(key_spec).collect(),
            _ if first > 0 => vec![DraftKeySpec {
                flags: KS_RW | KS_ACCESS | KS_UPDATE,
                begin: DraftBegin::Index(first),
                find: FindKeys::Range {
                    last_key: if last < 0 { last } else { last - first },
                    key_step: step.max(1),
                    limit: 0,
                },
            }],
            _ => Vec::new(),
        };
        let mut subcommands = Vec::new();
        if depth == 0 {
            if let Some(OwnedFrame::Array(subs)) = f.get(9) {
                subcommands = subs.iter().filter_map(|s| Draft::parse(s, 1)).collect();
                subcommands.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        Some(Draft {
            name,
            arity,
            flags,
            categories,
            first_key: first,
            last_key: last,
            key_step: step,
            key_specs,
            subcommands,
        })
    }

    /// The generated spec in the same form, for comparison.
    fn from_spec(s: &CommandSpec) -> Draft {
        Draft {
            name: s.name.to_owned(),
            arity: s.arity,
            flags: s.flags,
            categories: s.categories,
            first_key: s.first_key,
            last_key: s.last_key,
            key_step: s.key_step,
            key_specs: s
                .key_specs
                .iter()
                .map(|k| DraftKeySpec {
                    flags: k.flags,
                    begin: match k.begin_search {
                        BeginSearch::Index(i) => DraftBegin::Index(i),
                        BeginSearch::Keyword {
                            keyword,
                            start_from,
                        } => DraftBegin::Keyword(keyword.to_owned(), start_from),
                        BeginSearch::Unknown => DraftBegin::Unknown,
                    },
                    find: k.find_keys,
                })
                .collect(),
            subcommands: s.subcommands.iter().map(Draft::from_spec).collect(),
        }
    }

    /// [`FLAG_OWN_CONNECTION`]: what the generated table says for this name (and, for a
    /// subcommand, for its container), else [`own_connection`]'s rule from the server's
    /// flags and categories. Blocking and module commands always get it, as
    /// `scripts/gen_commands.py` does.
    fn mark_own_connection(&mut self, generated: Option<&CommandSpec>) {
        let gen_own = generated.is_some_and(|g| g.flags & FLAG_OWN_CONNECTION != 0);
        self.flags |= if gen_own {
            FLAG_OWN_CONNECTION
        } else if generated.is_some() {
            // Known command: the generated mark is the policy; only the flags that always
            // mean "own connection" can add it.
            if self.flags & (FLAG_BLOCKING | FLAG_MODULE) != 0 {
                FLAG_OWN_CONNECTION
            } else {
                0
            }
        } else {
            own_connection(self.flags, self.categories)
        };
        let container_own = self.flags & FLAG_OWN_CONNECTION != 0;
        for sub in &mut self.subcommands {
            let gen_sub = generated.and_then(|g| g.subcommands.iter().find(|s| s.name == sub.name));
            if container_own {
                sub.flags |= FLAG_OWN_CONNECTION;
            } else {
                sub.mark_own_connection_leaf(gen_sub);
            }
        }
    }

    fn mark_own_connection_leaf(&mut self, generated: Option<&CommandSpec>) {
        let gen_own = generated.is_some_and(|g| g.flags & FLAG_OWN_CONNECTION != 0);
        if gen_own || self.flags & (FLAG_BLOCKING | FLAG_MODULE) != 0 {
            self.flags |= FLAG_OWN_CONNECTION;
        } else if generated.is_none() {
            self.flags |= own_connection(self.flags, self.categories);
        }
    }

    /// The `'static` spec (leaks its strings and slices: call through [`catalog::intern`]).
    fn into_spec(self) -> CommandSpec {
        let key_specs: Vec<KeySpec> = self
            .key_specs
            .into_iter()
            .map(|k| KeySpec {
                flags: k.flags,
                begin_search: match k.begin {
                    DraftBegin::Index(i) => BeginSearch::Index(i),
                    DraftBegin::Keyword(w, start_from) => BeginSearch::Keyword {
                        keyword: Box::leak(w.into_boxed_str()),
                        start_from,
                    },
                    DraftBegin::Unknown => BeginSearch::Unknown,
                },
                find_keys: k.find,
            })
            .collect();
        let subcommands: Vec<CommandSpec> =
            self.subcommands.into_iter().map(Draft::into_spec).collect();
        CommandSpec {
            name: Box::leak(self.name.into_boxed_str()),
            arity: self.arity,
            flags: self.flags,
            categories: self.categories,
            first_key: self.first_key,
            last_key: self.last_key,
            key_step: self.key_step,
            key_specs: Box::leak(key_specs.into_boxed_slice()),
            subcommands: Box::leak(subcommands.into_boxed_slice()),
        }
    }
}

/// RESP2 renders maps as flat `[k, v, k, v...]` arrays: the value for `key`.
fn field<'a>(flat: &'a [OwnedFrame], key: &str) -> Option<&'a OwnedFrame> {
    flat.chunks(2).find_map(|kv| match kv {
        [k, v] if text(k).is_some_and(|k| k == key) => Some(v),
        _ => None,
    })
}

fn array(f: Option<&OwnedFrame>) -> Option<&[OwnedFrame]> {
    match f {
        Some(OwnedFrame::Array(a)) => Some(a),
        _ => None,
    }
}

/// One key spec of `COMMAND` (element 9; server.c `addReplyCommandKeySpecs`), as
/// `scripts/gen_commands.py` reads it. A spec of a type redward does not know is `Unknown`,
/// whose keys then come from the command's own procedure or not at all (as for Redis's own
/// "unknown" specs).
fn key_spec(ks: &OwnedFrame) -> Option<DraftKeySpec> {
    let m = array(Some(ks))?;
    let mut flags = 0u32;
    for n in array(field(m, "flags")).unwrap_or_default() {
        flags |= text(n).map_or(0, |n| key_spec_flag(&n));
    }
    let bs = array(field(m, "begin_search"))?;
    let bspec = array(field(bs, "spec")).unwrap_or_default();
    let begin = match text(field(bs, "type")?)?.as_str() {
        "index" => DraftBegin::Index(field(bspec, "index").and_then(int)?),
        "keyword" => DraftBegin::Keyword(
            field(bspec, "keyword").and_then(text)?,
            field(bspec, "startfrom").and_then(int)?,
        ),
        _ => DraftBegin::Unknown,
    };
    let fk = array(field(m, "find_keys"))?;
    let fspec = array(field(fk, "spec")).unwrap_or_default();
    let num = |k: &str| field(fspec, k).and_then(int);
    let find = match text(field(fk, "type")?)?.as_str() {
        "range" => FindKeys::Range {
            last_key: num("lastkey")?,
            key_step: num("keystep")?,
            limit: num("limit")?,
        },
        "keynum" => FindKeys::Keynum {
            keynum_idx: num("keynumidx")?,
            first_key: num("firstkey")?,
            key_step: num("keystep")?,
        },
        _ => FindKeys::Unknown,
    };
    Some(DraftKeySpec { flags, begin, find })
}

/// A key spec flag as server.c `addReplyFlagsForKeyArgs` writes it.
fn key_spec_flag(name: &str) -> u32 {
    use super::*;
    match name {
        "RO" => KS_RO,
        "RW" => KS_RW,
        "OW" => KS_OW,
        "RM" => KS_RM,
        "access" => KS_ACCESS,
        "update" => KS_UPDATE,
        "insert" => KS_INSERT,
        "delete" => KS_DELETE,
        "not_key" => KS_NOT_KEY,
        "incomplete" => KS_INCOMPLETE,
        "variable_flags" => KS_VARIABLE_FLAGS,
        _ => 0,
    }
}

/// [`FLAG_OWN_CONNECTION`] for a command learned from the server, from its flags and ACL
/// categories alone: the generated table marks the known commands one by one, and a newer
/// server's command may keep per-client state in ways no flag says. So the rule errs on the
/// side of a connection of the client's own (always correct, merely not shared): commands in
/// `@connection` or `@transaction` (WAITAOF, CLIENT-like commands), blocking and module
/// commands, commands Redis refuses inside MULTI or allows while a script is busy, subscribe
/// commands (`pubsub` + `noscript`), and admin commands scripts may not run (MONITOR-like).
pub fn own_connection(flags: u32, categories: u32) -> u32 {
    let own = categories & (CAT_CONNECTION | CAT_TRANSACTION) != 0
        || flags & (FLAG_BLOCKING | FLAG_MODULE | FLAG_NO_MULTI | FLAG_ALLOW_BUSY) != 0
        || flags & (FLAG_PUBSUB | FLAG_NOSCRIPT) == FLAG_PUBSUB | FLAG_NOSCRIPT
        || flags & (FLAG_ADMIN | FLAG_NOSCRIPT) == FLAG_ADMIN | FLAG_NOSCRIPT;
    if own {
        FLAG_OWN_CONNECTION
    } else {
        0
    }
}

/// A flag name as Redis's `COMMAND` writes it (`addReplyCommandFlags` in server.c), as our
/// `FLAG_*` bit; names we do not use are 0.
fn flag(name: &str) -> u32 {
    use super::*;
    match name.to_ascii_lowercase().as_str() {
        "write" => FLAG_WRITE,
        "readonly" => FLAG_READONLY,
        "denyoom" => FLAG_DENYOOM,
        "module" => FLAG_MODULE,
        "admin" => FLAG_ADMIN,
        "pubsub" => FLAG_PUBSUB,
        "noscript" => FLAG_NOSCRIPT,
        "blocking" => FLAG_BLOCKING,
        "loading" => FLAG_LOADING,
        "stale" => FLAG_STALE,
        "skip_monitor" => FLAG_SKIP_MONITOR,
        // Valkey 8.1 renamed the flag with the slow log (COMMANDLOG).
        "skip_slowlog" | "skip_commandlog" => FLAG_SKIP_SLOWLOG,
        "asking" => FLAG_ASKING,
        "fast" => FLAG_FAST,
        "no_auth" => FLAG_NO_AUTH,
        "may_replicate" => FLAG_MAY_REPLICATE,
        "no_mandatory_keys" => FLAG_NO_MANDATORY_KEYS,
        "no_multi" => FLAG_NO_MULTI,
        "movablekeys" => FLAG_MOVABLEKEYS,
        "allow_busy" => FLAG_ALLOW_BUSY,
        "no_async_loading" => FLAG_NO_ASYNC_LOADING,
        _ => 0,
    }
}

/// A bulk or status reply as text (also what `cluster::topology` reads replies with).
pub(crate) fn text(f: &OwnedFrame) -> Option<String> {
    match f {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            String::from_utf8(b.clone()).ok()
        }
        _ => None,
    }
}

fn int(f: &OwnedFrame) -> Option<i32> {
    match f {
        OwnedFrame::Integer(n) => i32::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::commands::{CAT_HASH, CAT_WRITE, FLAG_WRITE, KS_RO};

    const VALKEY: &str = "redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.8\r\n";

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    fn words(w: &[&str]) -> OwnedFrame {
        OwnedFrame::Array(
            w.iter()
                .map(|f| OwnedFrame::SimpleString(f.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// A `COMMAND` entry of 7 elements (a pre-7.0 server: legacy key positions only).
    fn entry(name: &str, arity: i64, flags: &[&str], keys: i64, cats: &[&str]) -> OwnedFrame {
        OwnedFrame::Array(vec![
            bulk(name),
            OwnedFrame::Integer(arity),
            words(flags),
            OwnedFrame::Integer(keys),
            OwnedFrame::Integer(keys),
            OwnedFrame::Integer(keys),
            words(cats),
        ])
    }

    fn learned(reply: Vec<OwnedFrame>) -> Catalog {
        learn(VALKEY, &OwnedFrame::Array(reply)).unwrap()
    }

    fn get(c: &Catalog, name: &str) -> &'static CommandSpec {
        c.changed.get(name).copied().unwrap()
    }

    #[test]
    fn a_learned_blocking_module_command_keeps_its_flags() {
        let c = learned(vec![entry(
            "mod.bpop",
            2,
            &["write", "blocking", "module"],
            1,
            &[],
        )]);
        let flags = get(&c, "mod.bpop").flags;
        assert_ne!(flags & crate::commands::FLAG_BLOCKING, 0);
        assert_ne!(flags & crate::commands::FLAG_MODULE, 0);
        assert_ne!(flags & FLAG_OWN_CONNECTION, 0);
        assert_eq!(c.server.flavor, catalog::Flavor::Valkey);
    }

    /// Routing follows the learned command's properties, not its name: Redis 7.2's WAITAOF
    /// (`noscript`, `@slow @connection`) moves the client to its own connection; Redis 7.4's
    /// HEXPIRE (`write fast`, `@write @hash @fast`) rides the shared one.
    #[test]
    fn a_learned_command_routes_by_its_flags_and_categories() {
        let c = learned(vec![
            entry("waitaof", -4, &["noscript"], 0, &["@slow", "@connection"]),
            entry(
                "hexpire",
                -6,
                &["write", "fast"],
                1,
                &["@write", "@hash", "@fast"],
            ),
        ]);
        assert_ne!(get(&c, "waitaof").flags & FLAG_OWN_CONNECTION, 0);
        assert_eq!(get(&c, "hexpire").flags & FLAG_OWN_CONNECTION, 0);
        assert_eq!(
            get(&c, "hexpire").categories,
            CAT_WRITE | CAT_HASH | 1 << 14
        );
    }

    #[test]
    fn a_command_without_key_specs_is_learned_with_conservative_keys() {
        let c = learned(vec![entry("JSON.SET", -2, &["write"], 1, &["@write"])]);
        let spec = get(&c, "json.set");
        assert_eq!(spec.flags, FLAG_WRITE);
        assert_eq!(spec.arity, -2);
        assert_eq!(spec.categories, CAT_WRITE);
        assert_eq!(spec.key_specs.len(), 1);
        assert_eq!(spec.key_specs[0].flags & KS_RW, KS_RW);
        // Every generated command the server did not list is absent.
        assert!(c.absent.contains("get"));
    }

    /// A server that describes GET as Redis 7.0 does changes nothing for it; its key specs
    /// (element 9) are read like `scripts/gen_commands.py` reads them.
    #[test]
    fn an_unchanged_command_is_not_learned_and_key_specs_parse() {
        let ks = OwnedFrame::Array(vec![
            bulk("flags"),
            words(&["RO", "access"]),
            bulk("begin_search"),
            OwnedFrame::Array(vec![
                bulk("type"),
                bulk("index"),
                bulk("spec"),
                OwnedFrame::Array(vec![bulk("index"), OwnedFrame::Integer(1)]),
            ]),
            bulk("find_keys"),
            OwnedFrame::Array(vec![
                bulk("type"),
                bulk("range"),
                bulk("spec"),
                OwnedFrame::Array(vec![
                    bulk("lastkey"),
                    OwnedFrame::Integer(0),
                    bulk("keystep"),
                    OwnedFrame::Integer(1),
                    bulk("limit"),
                    OwnedFrame::Integer(0),
                ]),
            ]),
        ]);
        let full = |name: &str, arity: i64| {
            OwnedFrame::Array(vec![
                bulk(name),
                OwnedFrame::Integer(arity),
                words(&["readonly", "fast"]),
                OwnedFrame::Integer(1),
                OwnedFrame::Integer(1),
                OwnedFrame::Integer(1),
                words(&["@read", "@string", "@fast"]),
                OwnedFrame::Array(vec![]),
                OwnedFrame::Array(vec![ks.clone()]),
                OwnedFrame::Array(vec![]),
            ])
        };
        let c = learned(vec![full("get", 2)]);
        assert!(!c.changed.contains_key("get"));
        let c = learned(vec![full("get", -2)]);
        let get2 = get(&c, "get");
        assert_eq!(get2.arity, -2);
        assert_eq!(
            get2.key_specs,
            crate::commands::lookup_generated(b"get").unwrap().key_specs
        );
        assert_eq!(get2.key_specs[0].flags, KS_RO | KS_ACCESS);
        // Learning the same server again gives the same allocation: nothing new is kept.
        let before = catalog::interned_count();
        let again = learned(vec![full("get", -2)]);
        assert!(std::ptr::eq(get(&again, "get"), get2));
        assert_eq!(catalog::interned_count(), before);
    }

    /// New subcommands of a known container come with the container, which is then learned
    /// whole; a container with FLAG_OWN_CONNECTION passes it on (CLIENT SETINFO).
    #[test]
    fn new_subcommands_of_a_known_container_are_learned() {
        let sub = |name: &str, cats: &[&str]| {
            OwnedFrame::Array(vec![
                bulk(name),
                OwnedFrame::Integer(4),
                words(&["noscript", "loading", "stale"]),
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(0),
                words(cats),
                OwnedFrame::Array(vec![]),
                OwnedFrame::Array(vec![]),
                OwnedFrame::Array(vec![]),
            ])
        };
        let client = OwnedFrame::Array(vec![
            bulk("client"),
            OwnedFrame::Integer(-2),
            words(&[]),
            OwnedFrame::Integer(0),
            OwnedFrame::Integer(0),
            OwnedFrame::Integer(0),
            words(&["@slow"]),
            OwnedFrame::Array(vec![]),
            OwnedFrame::Array(vec![]),
            OwnedFrame::Array(vec![
                sub("client|setinfo", &["@slow", "@connection"]),
                sub("client|id", &["@slow", "@connection"]),
            ]),
        ]);
        let c = learned(vec![client]);
        let client = get(&c, "client");
        let names: Vec<&str> = client.subcommands.iter().map(|s| s.name).collect();
        assert_eq!(names, ["client|id", "client|setinfo"]);
        assert!(client
            .subcommands
            .iter()
            .all(|s| s.flags & FLAG_OWN_CONNECTION != 0));
    }

    #[test]
    fn a_reply_that_is_not_command_s_is_an_error() {
        assert_eq!(
            learn("", &OwnedFrame::Error("NOPERM".into())).err(),
            Some(LearnError::NotAnArray("an error"))
        );
        assert_eq!(
            learn("", &OwnedFrame::Array(vec![OwnedFrame::Integer(1)])).err(),
            Some(LearnError::Empty)
        );
    }
}
