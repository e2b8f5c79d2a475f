//! The permission check itself: Redis 7.0's `ACLCheckAllUserCommandPerm` /
//! `ACLSelectorCheckCmd` (`acl.c`), and the replies the server behind sends when it refuses,
//! in its own wording (Redis 7.0, or Redis 7.2+ / Valkey: `commands::catalog::AclTexts`).

use super::glob::stringmatch;
use super::keys::{command_keys, has_keys, KeyRef};
use super::rules::{c_str, command_id, Selector, KEY_READ, KEY_WRITE};
use super::User;
use crate::commands::catalog::{self, AclTexts};
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

    /// The error line the server behind writes when it refuses `user` the command, CRLF
    /// included: Redis 7.0's `processCommand` (`this user has no permissions ...`, naming
    /// neither user nor key), or Redis 7.2+ / Valkey's (`getAclErrorMessage` with `verbose`
    /// 0 in `acl.c`: `User <name> has no permissions to run the '<cmd>' command`, and only
    /// `No permissions to access a key` / `... a channel` for keys and channels).
    pub fn reply_as<A: Argv + ?Sized>(&self, user: &str, cmd: &CommandSpec, argv: &A) -> Vec<u8> {
        let _ = argv;
        let msg = match (catalog::server().acl_texts(), self) {
            (AclTexts::Redis70, Denied::Command) => format!(
                "-NOPERM this user has no permissions to run the '{}' command",
                cmd.name
            ),
            (AclTexts::Redis70, Denied::Key { .. }) => {
                "-NOPERM this user has no permissions \
                                                        to access one of the keys used as arguments"
                    .to_owned()
            }
            (AclTexts::Redis70, Denied::Channel { .. }) => "-NOPERM this user has no \
                                                            permissions to access one of the \
                                                            channels used as arguments"
                .to_owned(),
            (AclTexts::Redis72, Denied::Command) => format!(
                "-NOPERM User {user} has no permissions to run the '{}' command",
                cmd.name
            ),
            (AclTexts::Redis72, Denied::Key { .. }) => {
                "-NOPERM No permissions to access a key".to_owned()
            }
            (AclTexts::Redis72, Denied::Channel { .. }) => {
                "-NOPERM No permissions to access a channel".to_owned()
            }
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
    /// string naming the command's full name, or the key / channel argument. Redis 7.0 writes
    /// `This user has no permissions ...` and prints the argument with C's `%s` (up to the
    /// first NUL byte); Redis 7.2+ and Valkey write `User <name> has no permissions ...`
    /// (`getAclErrorMessage` with `verbose` 1) and print it whole (`%S`).
    pub fn dryrun_reply<A: Argv + ?Sized>(
        &self,
        user: &str,
        cmd: &CommandSpec,
        argv: &A,
    ) -> Vec<u8> {
        let texts = catalog::server().acl_texts();
        let arg = |i: usize| {
            let a = if i < argv.argc() {
                argv.arg(i)
            } else {
                &[][..]
            };
            match texts {
                AclTexts::Redis70 => c_str(a),
                AclTexts::Redis72 => a,
            }
        };
        let mut msg = Vec::with_capacity(80);
        match texts {
            AclTexts::Redis70 => msg.extend_from_slice(b"This user"),
            AclTexts::Redis72 => {
                msg.extend_from_slice(b"User ");
                msg.extend_from_slice(user.as_bytes());
            }
        }
        match self {
            Denied::Command => {
                msg.extend_from_slice(b" has no permissions to run the '");
                msg.extend_from_slice(cmd.name.as_bytes());
                msg.extend_from_slice(b"' command");
            }
            Denied::Key { arg: i } => {
                msg.extend_from_slice(b" has no permissions to access the '");
                msg.extend_from_slice(arg(*i));
                msg.extend_from_slice(b"' key");
            }
            Denied::Channel { arg: i } => {
                msg.extend_from_slice(b" has no permissions to access the '");
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
            Err(d) => d.dryrun_reply(&user.name, cmd, argv),
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
        // A command outside the bitmap (learned from the server) is checked by replaying the
        // selector's command rules against it.
        let (replayed_ok, replayed_args) = match id {
            Some(_) => (false, Vec::new()),
            None => sel.replay(cmd),
        };
        if replayed_ok {
            return check_keys_and_channels(sel, cmd, argv, keys);
        }
        let firstargs: Vec<&[u8]> = match id {
            Some(i) => sel.firstargs(i).iter().map(Vec::as_slice).collect(),
            None => replayed_args,
        };
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
    check_keys_and_channels(sel, cmd, argv, keys)
}

/// The rest of `ACLSelectorCheckCmd` once the command itself is allowed: keys, then channels.
fn check_keys_and_channels<A: Argv + ?Sized>(
    sel: &Selector,
    cmd: &'static CommandSpec,
    argv: &A,
    keys: &mut Option<Vec<KeyRef>>,
) -> Result<(), Denied> {
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
