//! Learning commands from the upstream's own `COMMAND` reply, so a newer Redis or a module's
//! commands are known (and can be allowed by `+@all` rules) without regenerating the table.
//!
//! Only commands missing from the generated table are taken. Their keys come from the legacy
//! (first, last, step) positions and are treated as read *and* write, the conservative choice:
//! a user needs both permissions on a key such a command touches. They have no ACL command
//! bit, so only a user allowed every command (`+@all`) may run them.

use redis_protocol::resp2::types::OwnedFrame;

use super::{
    BeginSearch, CommandSpec, FindKeys, KeySpec, CATEGORIES, CAT_CONNECTION, CAT_TRANSACTION,
    FLAG_ADMIN, FLAG_ALLOW_BUSY, FLAG_BLOCKING, FLAG_MODULE, FLAG_NOSCRIPT, FLAG_NO_MULTI,
    FLAG_OWN_CONNECTION, FLAG_PUBSUB, KS_ACCESS, KS_RW, KS_UPDATE,
};

/// Parses a `COMMAND` reply (RESP2) into specs for the commands `known` does not have.
pub fn unknown_commands(reply: &OwnedFrame, known: impl Fn(&str) -> bool) -> Vec<CommandSpec> {
    let OwnedFrame::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(spec)
        .filter(|s| !known(s.name))
        .collect()
}

fn spec(entry: &OwnedFrame) -> Option<CommandSpec> {
    let OwnedFrame::Array(f) = entry else {
        return None;
    };
    let name = text(f.first()?)?.to_ascii_lowercase();
    let arity = int(f.get(1)?)?;
    let first = int(f.get(3)?)?;
    let last = int(f.get(4)?)?;
    let step = int(f.get(5)?)?;
    // The server's own flags (`COMMAND` reply, element 3): routing depends on them (a
    // blocking or module command must not ride a shared connection).
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
    flags |= own_connection(flags, categories);
    let key_specs: &'static [KeySpec] = if first > 0 {
        Box::leak(Box::new([KeySpec {
            flags: KS_RW | KS_ACCESS | KS_UPDATE,
            begin_search: BeginSearch::Index(first),
            find_keys: FindKeys::Range {
                last_key: if last < 0 { last } else { last - first },
                key_step: step.max(1),
                limit: 0,
            },
        }]))
    } else {
        &[]
    };
    Some(CommandSpec {
        name: Box::leak(name.into_boxed_str()),
        arity,
        flags,
        categories,
        first_key: first,
        last_key: last,
        key_step: step,
        key_specs,
        subcommands: &[],
    })
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

/// A flag name as Redis's `COMMAND` writes it (`commandAddReply` / `addReplyCommandFlags`
/// in server.c), as our `FLAG_*` bit; names we do not use are 0.
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
        "skip_slowlog" => FLAG_SKIP_SLOWLOG,
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

fn text(f: &OwnedFrame) -> Option<String> {
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
    use super::*;

    #[test]
    fn a_learned_blocking_module_command_keeps_its_flags() {
        let reply = OwnedFrame::Array(vec![OwnedFrame::Array(vec![
            bulk("mod.bpop"),
            OwnedFrame::Integer(2),
            OwnedFrame::Array(vec![
                OwnedFrame::SimpleString(b"write".to_vec()),
                OwnedFrame::SimpleString(b"blocking".to_vec()),
                OwnedFrame::SimpleString(b"module".to_vec()),
            ]),
            OwnedFrame::Integer(1),
            OwnedFrame::Integer(1),
            OwnedFrame::Integer(1),
            OwnedFrame::Array(vec![]),
        ])]);
        let learned = unknown_commands(&reply, |_| false);
        let flags = learned.first().map(|s| s.flags).unwrap_or(0);
        assert_ne!(flags & crate::commands::FLAG_BLOCKING, 0);
        assert_ne!(flags & crate::commands::FLAG_MODULE, 0);
    }

    /// Routing follows the learned command's properties, not its name: Redis 7.2's WAITAOF
    /// (`noscript`, `@slow @connection`) moves the client to its own connection; Redis 7.4's
    /// HEXPIRE (`write fast`, `@write @hash @fast`) rides the shared one.
    #[test]
    fn a_learned_command_routes_by_its_flags_and_categories() {
        let entry = |name: &str, flags: &[&str], cats: &[&str]| {
            let words = |w: &[&str]| {
                OwnedFrame::Array(
                    w.iter()
                        .map(|f| OwnedFrame::SimpleString(f.as_bytes().to_vec()))
                        .collect(),
                )
            };
            OwnedFrame::Array(vec![
                bulk(name),
                OwnedFrame::Integer(-4),
                words(flags),
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(0),
                words(cats),
            ])
        };
        let reply = OwnedFrame::Array(vec![
            entry("waitaof", &["noscript"], &["@slow", "@connection"]),
            entry("hexpire", &["write", "fast"], &["@write", "@hash", "@fast"]),
        ]);
        let learned = unknown_commands(&reply, |_| false);
        let own = |name: &str| {
            learned
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.flags & FLAG_OWN_CONNECTION != 0)
        };
        assert_eq!(own("waitaof"), Some(true));
        assert_eq!(own("hexpire"), Some(false));
    }

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_module_command_is_learned_with_conservative_keys() {
        let entry = |name: &str| {
            OwnedFrame::Array(vec![
                bulk(name),
                OwnedFrame::Integer(-2),
                OwnedFrame::Array(vec![OwnedFrame::SimpleString(b"write".to_vec())]),
                OwnedFrame::Integer(1),
                OwnedFrame::Integer(1),
                OwnedFrame::Integer(1),
                OwnedFrame::Array(vec![OwnedFrame::SimpleString(b"@write".to_vec())]),
            ])
        };
        let reply = OwnedFrame::Array(vec![entry("get"), entry("JSON.SET")]);
        let learned = unknown_commands(&reply, |n| n == "get");
        assert_eq!(learned.len(), 1);
        for spec in &learned {
            assert_eq!(spec.name, "json.set");
            assert_eq!(spec.flags, crate::commands::FLAG_WRITE);
            assert_eq!(spec.arity, -2);
            assert_eq!(spec.categories, 1 << 2);
            assert_eq!(spec.key_specs.len(), 1);
            assert_eq!(spec.key_specs.first().map(|k| k.flags & KS_RW), Some(KS_RW));
        }
    }
}
