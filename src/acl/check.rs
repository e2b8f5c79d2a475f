//! The permission check itself: Redis 7.0's `ACLCheckAllUserCommandPerm` /
//! `ACLSelectorCheckCmd` (`acl.c`), and the replies Redis sends when it refuses.

use super::glob::stringmatch;
use super::keys::{command_keys, has_keys, KeyRef};
use super::rules::{c_str, command_id, Selector, KEY_READ, KEY_WRITE};
use super::User;
use crate::commands::{
    self, Argv, CommandError, CommandSpec, FLAG_NO_AUTH, KS_ACCESS, KS_DELETE, KS_INSERT, KS_UPDATE,
};

/// Why Redis would refuse a request (`ACL_DENIED_CMD` / `_KEY` / `_CHANNEL`). `arg` is the
/// argv index of the key or channel Redis reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    Command,
    Key { arg: usize },
    Channel { arg: usize },
}

impl Denied {
    /// `ACL_DENIED_*` value; Redis picks the highest one across selectors.
    fn code(self) -> u8 {
        match self {
            Denied::Command => 1,
            Denied::Key { .. } => 2,
            Denied::Channel { .. } => 4,
        }
    }

    /// The error line Redis 7.0.15 writes when it refuses to execute the command
    /// (`processCommand` in `server.c`), CRLF included.
    pub fn reply<A: Argv + ?Sized>(&self, cmd: &CommandSpec, argv: &A) -> Vec<u8> {
        let _ = argv;
        let msg = match self {
            Denied::Command => format!(
                "-NOPERM this user has no permissions to run the '{}' command",
                cmd.name
            ),
            Denied::Key { .. } => "-NOPERM this user has no permissions to access one of the \
                                   keys used as arguments"
                .to_owned(),
            Denied::Channel { .. } => "-NOPERM this user has no permissions to access one of \
                                       the channels used as arguments"
                .to_owned(),
        };
        let mut out = msg.into_bytes();
        for b in &mut out {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The reply of `ACL DRYRUN <user> <argv...>` for this refusal (`aclCommand`): a bulk
    /// string, naming the command's full name, or the key / channel argument (as C's `%s`
    /// prints it: up to the first NUL byte).
    pub fn dryrun_reply<A: Argv + ?Sized>(&self, cmd: &CommandSpec, argv: &A) -> Vec<u8> {
        let arg = |i: usize| {
            if i < argv.argc() {
                c_str(argv.arg(i))
            } else {
                &[][..]
            }
        };
        let mut msg = Vec::with_capacity(80);
        match self {
            Denied::Command => {
                msg.extend_from_slice(b"This user has no permissions to run the '");
                msg.extend_from_slice(cmd.name.as_bytes());
                msg.extend_from_slice(b"' command");
            }
            Denied::Key { arg: i } => {
                msg.extend_from_slice(b"This user has no permissions to access the '");
                msg.extend_from_slice(arg(*i));
                msg.extend_from_slice(b"' key");
            }
            Denied::Channel { arg: i } => {
                msg.extend_from_slice(b"This user has no permissions to access the '");
                msg.extend_from_slice(arg(*i));
                msg.extend_from_slice(b"' channel");
            }
        }
        let mut out = format!("${}\r\n", msg.len()).into_bytes();
        out.extend_from_slice(&msg);
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Redis 7.0 `ACLCheckAllUserCommandPerm`: may `user` run `cmd` (already resolved from `argv`
/// by [`commands::resolve`]) with these arguments?
///
/// Each selector (root first) is tried; the first that allows the request wins. When none
/// does, the error reported is Redis's pick: a key or channel error beats a command error,
/// and among equal kinds the one at the highest argument index.
///
/// # Errors
/// The [`Denied`] reason Redis would report.
pub fn check<A: Argv + ?Sized>(
    user: &User,
    cmd: &'static CommandSpec,
    argv: &A,
) -> Result<(), Denied> {
    if user.unrestricted {
        return Ok(());
    }
    let id = command_id(cmd);
    let mut keys: Option<Vec<KeyRef>> = None;
    let mut relevant = (1u8, 0usize);
    // Redis keeps the index of the last key/channel error across selectors.
    let mut local_idx = 0usize;
    for sel in std::iter::once(&user.root).chain(user.selectors.iter()) {
        match check_selector(sel, cmd, id, argv, &mut keys) {
            Ok(()) => return Ok(()),
            Err(d) => {
                if let Denied::Key { arg } | Denied::Channel { arg } = d {
                    local_idx = arg;
                }
                let code = d.code();
                if code > relevant.0 || (code == relevant.0 && local_idx > relevant.1) {
                    relevant = (code, local_idx);
                }
            }
        }
    }
    Err(match relevant.0 {
        2 => Denied::Key { arg: relevant.1 },
        4 => Denied::Channel { arg: relevant.1 },
        _ => Denied::Command,
    })
}

/// The full reply of `ACL DRYRUN <user.name> <argv...>` (`aclCommand`): `+OK`, a bulk string
/// explaining a refusal, or the error for an unknown command or a wrong argument count.
pub fn dryrun<A: Argv + ?Sized>(user: &User, argv: &A) -> Vec<u8> {
    let error = |msg: Vec<u8>| {
        let mut out = b"-ERR ".to_vec();
        out.extend(
            msg.into_iter()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
        out
    };
    match commands::resolve(argv) {
        Err(CommandError::UnknownCommand | CommandError::UnknownSubcommand) => {
            let name = if argv.argc() > 0 {
                c_str(argv.arg(0))
            } else {
                &[][..]
            };
            let mut msg = b"Command '".to_vec();
            msg.extend_from_slice(name);
            msg.extend_from_slice(b"' not found");
            error(msg)
        }
        Err(CommandError::WrongArity(spec)) => {
            error(format!("wrong number of arguments for '{}' command", spec.name).into_bytes())
        }
        Ok(cmd) => match check(user, cmd, argv) {
            Ok(()) => b"+OK\r\n".to_vec(),
            Err(d) => d.dryrun_reply(cmd, argv),
        },
    }
}

/// Whether one selector allows the request (`ACLSelectorCheckCmd(...) == ACL_OK`).
pub(crate) fn selector_allows<A: Argv + ?Sized>(
    sel: &Selector,
    cmd: &'static CommandSpec,
    argv: &A,
) -> bool {
    let mut keys = None;
    check_selector(sel, cmd, command_id(cmd), argv, &mut keys).is_ok()
}

/// Redis 7.0 `ACLSelectorCheckCmd`: command bit (or allowed first argument), then keys, then
/// channels. `keys` caches the key positions between selectors, as Redis does.
fn check_selector<A: Argv + ?Sized>(
    sel: &Selector,
    cmd: &'static CommandSpec,
    id: Option<usize>,
    argv: &A,
    keys: &mut Option<Vec<KeyRef>>,
) -> Result<(), Denied> {
    if !sel.all_commands && cmd.flags & FLAG_NO_AUTH == 0 && !id.is_some_and(|i| sel.bit(i)) {
        let firstargs = id.map_or(&[][..], |i| sel.firstargs(i));
        if argv.argc() < 2 || firstargs.is_empty() {
            return Err(Denied::Command);
        }
        let idx = if cmd.name.contains('|') { 2 } else { 1 };
        let given = if idx < argv.argc() {
            c_str(argv.arg(idx))
        } else {
            &[][..]
        };
        if !firstargs
            .iter()
            .any(|a| c_str(a).eq_ignore_ascii_case(given))
        {
            return Err(Denied::Command);
        }
    }

    if !sel.all_keys && has_keys(cmd) {
        let keys = keys.get_or_insert_with(|| command_keys(cmd, argv));
        for k in keys.iter() {
            let key = if k.pos < argv.argc() {
                argv.arg(k.pos)
            } else {
                &[][..]
            };
            if !key_allowed(sel, key, k.flags) {
                return Err(Denied::Key { arg: k.pos });
            }
        }
    }

    if !sel.all_channels {
        if let Some((start, count, is_pattern)) = channel_spec(cmd) {
            let argc = argv.argc();
            let stop = count.map_or(argc, |n| (start + n).min(argc));
            for i in start..stop {
                let channel = argv.arg(i);
                let ok = sel.channels.iter().any(|p| {
                    if is_pattern {
                        // strcmp: both compared as C strings.
                        c_str(p) == c_str(channel)
                    } else {
                        stringmatch(p, channel, false)
                    }
                });
                if !ok {
                    return Err(Denied::Channel { arg: i });
                }
            }
        }
    }
    Ok(())
}

/// Redis 7.0 `ACLSelectorCheckKey`: read access needs a pattern with R, write access (insert,
/// delete, update) one with W; a key with no access flags is allowed by any matching pattern.
fn key_allowed(sel: &Selector, key: &[u8], spec_flags: u32) -> bool {
    if sel.all_keys {
        return true;
    }
    let mut need = 0u8;
    if spec_flags & KS_ACCESS != 0 {
        need |= KEY_READ;
    }
    if spec_flags & (KS_INSERT | KS_DELETE | KS_UPDATE) != 0 {
        need |= KEY_WRITE;
    }
    sel.patterns
        .iter()
        .any(|p| p.flags & need == need && stringmatch(&p.pattern, key, false))
}

/// `commands_with_channels` in `db.c`, limited to what the ACL check looks at (publish and
/// subscribe, not unsubscribe): (first channel index, count or all remaining, is pattern).
fn channel_spec(cmd: &CommandSpec) -> Option<(usize, Option<usize>, bool)> {
    match cmd.name {
        "subscribe" | "ssubscribe" => Some((1, None, false)),
        "psubscribe" => Some((1, None, true)),
        "publish" | "spublish" => Some((1, Some(1), false)),
        _ => None,
    }
}
