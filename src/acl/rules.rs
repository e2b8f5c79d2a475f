//! The Redis 7 ACL rule language (`ACLSetUser` / `ACLSetSelector` in `acl.c`), applied in
//! order, with Redis's own error texts.
//!
//! Commands are tracked like Redis does: a bitmap with one bit per command and subcommand of
//! the command table (`allowed_commands`), the `SELECTOR_FLAG_ALLCOMMANDS` flag, the reserved
//! "future commands" bit that only `+@all`/`allcommands` set, and per-command allowed first
//! arguments (`allowed_firstargs`, from `+select|0` on non-container commands).
//!
//! The bitmap covers the generated table. Commands the server behind describes differently
//! or that the table lacks (`commands::catalog`) are checked by name instead: each selector
//! also keeps its command rules in order (`CmdRule`), and `Selector::replay` applies them
//! to such a command when it is checked, with the server's categories. That is what Redis does
//! for commands it learns after a user was made (`ACLRecomputeCommandBitsFromCommandRulesAllUsers`
//! re-applies each selector's command rules), and it keeps users valid across a restart of
//! the upstream into another version: nothing in a user depends on which server was behind
//! when it was parsed.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::User;
use crate::commands::{self, CommandSpec};

/// A rule Redis's `ACL SETUSER` would reject. The message names the user and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("user '{user}': rule '{rule}': {reason}")]
pub struct RuleError {
    pub user: String,
    /// The offending rule as Redis names it (selectors merged into one `(...)` rule);
    /// passwords (`>pw`, `<pw`) are never echoed.
    pub rule: String,
    /// Redis's reason text (`ACLSetUserStringError`), e.g. `Syntax error`.
    pub reason: &'static str,
}

/// `errno` values `ACLSetUser` reports, mapped to `ACLSetUserStringError` texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Errno {
    /// ENOENT
    NoEnt,
    /// EINVAL
    Inval,
    /// EEXIST
    Exist,
    /// EISDIR
    IsDir,
    /// ENODEV
    NoDev,
    /// EBADMSG
    BadMsg,
    /// ECHILD
    Child,
}

/// Redis's text for a rule naming a command or category it does not know.
pub const UNKNOWN_COMMAND_IN_ACL: &str = "Unknown command or category name in ACL";

impl Errno {
    /// `ACLSetUserStringError` in `acl.c`.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Errno::NoEnt => UNKNOWN_COMMAND_IN_ACL,
            Errno::Inval => "Syntax error",
            Errno::Exist => {
                "Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and \
                 does not have any effect. Try 'resetkeys' to start with an empty list of patterns"
            }
            Errno::IsDir => {
                "Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid \
                 and does not have any effect. Try 'resetchannels' to start with an empty list \
                 of channels"
            }
            Errno::NoDev => "The password you are trying to remove from the user does not exist",
            Errno::BadMsg => {
                "The password hash must be exactly 64 characters and contain only lowercase \
                 hexadecimal characters"
            }
            Errno::Child => "Allowing first-arg of a subcommand is not supported",
        }
    }
}

/// Reason used when a `(` selector is never closed (`ACLStringSetUser`'s own message is
/// `Unmatched parenthesis in acl selector starting at '<rule>'.`).
pub const UNMATCHED_PARENTHESIS: &str = "Unmatched parenthesis in acl selector";

/// Reason used for a user name Redis refuses (`ACL SETUSER` in `aclCommand`).
pub const BAD_USERNAME: &str = "Usernames can't contain spaces or null characters";

/// `ACL_READ_PERMISSION`.
pub const KEY_READ: u8 = 1;
/// `ACL_WRITE_PERMISSION`.
pub const KEY_WRITE: u8 = 2;

/// A key pattern (`keyPattern`): `~pat` is read+write, `%R~` read, `%W~` write (`%R` alone
/// is accepted by Redis as a read pattern for the empty string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPattern {
    /// `KEY_READ` / `KEY_WRITE` bits.
    pub flags: u8,
    pub pattern: Vec<u8>,
}

/// One selector (`aclSelector`): the root one holds the user's top-level permissions, the
/// others come from `(...)` rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// `SELECTOR_FLAG_ALLKEYS` (`allkeys` / `~*`).
    pub all_keys: bool,
    /// `SELECTOR_FLAG_ALLCHANNELS` (`allchannels` / `&*`).
    pub all_channels: bool,
    /// `SELECTOR_FLAG_ALLCOMMANDS`: set by `+@all`, cleared by any rule that clears a bit.
    pub all_commands: bool,
    /// `allowed_commands`, one bit per command id (see [`command_id`]).
    pub(crate) bits: Vec<u64>,
    /// The reserved last bit of `allowed_commands` ("can run future commands").
    pub(crate) future: bool,
    /// `allowed_firstargs`, by command id, in insertion order.
    pub(crate) firstargs: BTreeMap<usize, Vec<Vec<u8>>>,
    /// The command rules applied so far, in order, for commands outside the bitmap.
    pub(crate) rules: Vec<CmdRule>,
    /// Key patterns, in insertion order (`patterns`).
    pub patterns: Vec<KeyPattern>,
    /// Channel patterns, in insertion order (`channels`).
    pub channels: Vec<Vec<u8>>,
}

impl Selector {
    /// `ACLCreateSelector`: no commands, no keys, and no channels (`acl-pubsub-default` is
    /// `resetchannels` in Redis 7.0).
    pub fn new() -> Selector {
        Selector {
            all_keys: false,
            all_channels: false,
            all_commands: false,
            bits: vec![0; ids().total.div_ceil(64)],
            future: false,
            firstargs: BTreeMap::new(),
            rules: Vec::new(),
            patterns: Vec::new(),
            channels: Vec::new(),
        }
    }

    /// `ACLGetSelectorCommandBit`.
    pub(crate) fn bit(&self, id: usize) -> bool {
        self.bits
            .get(id / 64)
            .is_some_and(|w| w & (1u64 << (id % 64)) != 0)
    }

    /// `ACLSetSelectorCommandBit`: clearing a bit also clears the ALLCOMMANDS flag.
    pub(crate) fn set_bit(&mut self, id: usize, value: bool) {
        if let Some(w) = self.bits.get_mut(id / 64) {
            if value {
                *w |= 1u64 << (id % 64);
            } else {
                *w &= !(1u64 << (id % 64));
                self.all_commands = false;
            }
        }
    }

    /// Whether every command is allowed: the ALLCOMMANDS flag, or every bit set with no rule
    /// that takes a command away (which might take a learned command away).
    pub fn allows_all_commands(&self) -> bool {
        self.all_commands
            || ((0..ids().total).all(|id| self.bit(id)) && !self.rules.iter().any(CmdRule::denies))
    }

    /// Whether this selector's command rules allow `spec`, a command outside the bitmap (see
    /// [`command_id`]): the rules replayed in order against the spec's own name and
    /// categories, and its container's (`ACLChangeSelectorPerm` carries a container's
    /// subcommands; `ACLSetSelectorCommandBitsForCategory` does so for a container in the
    /// category). Returns (allowed, allowed first arguments).
    pub(crate) fn replay(&self, spec: &CommandSpec) -> (bool, Vec<&[u8]>) {
        let parent = spec
            .name
            .split_once('|')
            .and_then(|(p, _)| commands::lookup(p.as_bytes()));
        let parent_name = parent.map(|p| p.name);
        let parent_cats = parent.map_or(0, |p| p.categories);
        let mut allowed = false;
        let mut firstargs: Vec<&[u8]> = Vec::new();
        for r in &self.rules {
            match r {
                CmdRule::All(allow) => {
                    allowed = *allow;
                    firstargs.clear();
                }
                CmdRule::Category(bit, allow) => {
                    if (spec.categories | parent_cats) & bit != 0 {
                        allowed = *allow;
                        firstargs.clear();
                    }
                }
                CmdRule::Command(name, allow) => {
                    if **name == *spec.name || Some(&**name) == parent_name {
                        allowed = *allow;
                        firstargs.clear();
                    }
                }
                CmdRule::FirstArg(name, arg) => {
                    if **name == *spec.name
                        && !firstargs.iter().any(|a| a.eq_ignore_ascii_case(arg))
                    {
                        firstargs.push(arg);
                    }
                }
            }
        }
        (allowed || self.all_commands, firstargs)
    }

    /// `ACLSelectorCanExecuteFutureCommands`.
    pub fn can_run_future_commands(&self) -> bool {
        self.future
    }

    /// The first arguments allowed for a command id by `+cmd|arg` rules.
    pub(crate) fn firstargs(&self, id: usize) -> &[Vec<u8>] {
        self.firstargs.get(&id).map_or(&[], Vec::as_slice)
    }

    /// `ACLChangeSelectorPerm`: a container command carries all its subcommands along.
    /// A command outside the bitmap is only recorded in [`Selector::rules`] (by the caller);
    /// taking it away still clears the ALLCOMMANDS flag, as clearing its bit would.
    pub(crate) fn change_perm(&mut self, cmd: &'static CommandSpec, allow: bool) {
        let Some(id) = command_id(cmd) else {
            if !allow {
                self.all_commands = false;
            }
            return;
        };
        self.set_bit(id, allow);
        self.firstargs.remove(&id);
        for sub in cmd.subcommands {
            if let Some(sid) = command_id(sub) {
                self.set_bit(sid, allow);
            }
        }
    }

    /// `ACLSetSelectorCommandBitsForCategoryLogic` over the whole table.
    pub(crate) fn set_category(&mut self, cat_bit: u32, allow: bool) {
        self.rules.push(CmdRule::Category(cat_bit, allow));
        for cmd in commands::commands() {
            if cmd.categories & cat_bit != 0 {
                self.change_perm(cmd, allow);
            }
            for sub in cmd.subcommands {
                if sub.categories & cat_bit != 0 {
                    self.change_perm(sub, allow);
                }
            }
        }
    }

    /// `+@all` / `allcommands`.
    pub(crate) fn allow_all(&mut self) {
        self.rules.clear();
        self.rules.push(CmdRule::All(true));
        self.bits.iter_mut().for_each(|w| *w = u64::MAX);
        self.future = true;
        self.all_commands = true;
        self.firstargs.clear();
    }

    /// `-@all` / `nocommands`.
    pub(crate) fn deny_all(&mut self) {
        self.rules.clear();
        self.rules.push(CmdRule::All(false));
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.future = false;
        self.all_commands = false;
        self.firstargs.clear();
    }

    /// `ACLAddAllowedFirstArg`: duplicates (case-insensitively) are not added twice.
    fn add_firstarg(&mut self, id: usize, arg: &[u8]) {
        let list = self.firstargs.entry(id).or_default();
        if !list.iter().any(|a| a.eq_ignore_ascii_case(arg)) {
            list.push(arg.to_vec());
        }
    }

    /// `ACLSetSelector`: applies one selector rule.
    pub(crate) fn apply(&mut self, op: &[u8]) -> Result<(), Errno> {
        // Redis compares rules as C strings: nothing after a NUL byte is seen by strcasecmp.
        let cop = c_str(op);
        let is = |s: &str| cop.eq_ignore_ascii_case(s.as_bytes());
        let first = op.first().copied().unwrap_or(0);
        let second = op.get(1).copied().unwrap_or(0);
        if is("allkeys") || is("~*") {
            self.all_keys = true;
            self.patterns.clear();
        } else if is("resetkeys") {
            self.all_keys = false;
            self.patterns.clear();
        } else if is("allchannels") || is("&*") {
            self.all_channels = true;
            self.channels.clear();
        } else if is("resetchannels") {
            self.all_channels = false;
            self.channels.clear();
        } else if is("allcommands") || is("+@all") {
            self.allow_all();
        } else if is("nocommands") || is("-@all") {
            self.deny_all();
        } else if first == b'~' || first == b'%' {
            self.add_key_pattern(op, first)?;
        } else if first == b'&' {
            self.add_channel(op)?;
        } else if first == b'+' && second != b'@' {
            self.allow_command(cop.get(1..).unwrap_or_default())?;
        } else if first == b'-' && second != b'@' {
            let cmd = lookup_by_fullname(cop.get(1..).unwrap_or_default()).ok_or(Errno::NoEnt)?;
            self.rules.push(CmdRule::Command(cmd.name.into(), false));
            self.change_perm(cmd, false);
        } else if (first == b'+' || first == b'-') && second == b'@' {
            let name = std::str::from_utf8(cop.get(2..).unwrap_or_default()).unwrap_or("");
            let idx = commands::category_index(name).ok_or(Errno::NoEnt)?;
            self.set_category(1u32 << idx, first == b'+');
        } else {
            return Err(Errno::Inval);
        }
        Ok(())
    }

    /// `~pattern` or `%RW~pattern` (`ACLSetSelector` in acl.c): a key pattern, its
    /// permissions merged into an equal pattern's.
    fn add_key_pattern(&mut self, op: &[u8], first: u8) -> Result<(), Errno> {
        if self.all_keys {
            return Err(Errno::Exist);
        }
        let mut flags = 0u8;
        let mut offset = 1usize;
        if first == b'%' {
            while let Some(&c) = op.get(offset) {
                if c.eq_ignore_ascii_case(&b'R') && flags & KEY_READ == 0 {
                    flags |= KEY_READ;
                } else if c.eq_ignore_ascii_case(&b'W') && flags & KEY_WRITE == 0 {
                    flags |= KEY_WRITE;
                } else if c == b'~' {
                    offset += 1;
                    break;
                } else {
                    return Err(Errno::Inval);
                }
                offset += 1;
            }
            // The CVE-2024-31227 fix shipped in 7.0.15 builds: `%~pat` (no R or W) is
            // refused instead of creating a pattern that crashes `ACL LIST`.
            if flags == 0 {
                return Err(Errno::Inval);
            }
        } else {
            flags = KEY_READ | KEY_WRITE;
        }
        let pattern = op.get(offset..).unwrap_or_default();
        if has_spaces(pattern) {
            return Err(Errno::Inval);
        }
        match self.patterns.iter_mut().find(|p| p.pattern == pattern) {
            Some(existing) => existing.flags |= flags,
            None => self.patterns.push(KeyPattern {
                flags,
                pattern: pattern.to_vec(),
            }),
        }
        self.all_keys = false;
        Ok(())
    }

    /// `&pattern`: a channel pattern, once.
    fn add_channel(&mut self, op: &[u8]) -> Result<(), Errno> {
        if self.all_channels {
            return Err(Errno::IsDir);
        }
        let pattern = op.get(1..).unwrap_or_default();
        if has_spaces(pattern) {
            return Err(Errno::Inval);
        }
        if !self.channels.iter().any(|c| c == pattern) {
            self.channels.push(pattern.to_vec());
        }
        self.all_channels = false;
        Ok(())
    }

    /// `+command`, `+command|subcommand`, or `+command|firstarg` for a command without
    /// subcommands (`ACLSetSelector`'s first-argument rules).
    fn allow_command(&mut self, name: &[u8]) -> Result<(), Errno> {
        match name.iter().rposition(|&c| c == b'|') {
            None => {
                let cmd = lookup_by_fullname(name).ok_or(Errno::NoEnt)?;
                self.rules.push(CmdRule::Command(cmd.name.into(), true));
                self.change_perm(cmd, true);
            }
            Some(bar) => {
                let (base, sub) = (
                    name.get(..bar).unwrap_or_default(),
                    name.get(bar + 1..).unwrap_or_default(),
                );
                let cmd = lookup_by_fullname(base).ok_or(Errno::NoEnt)?;
                if cmd.name.contains('|') {
                    return Err(Errno::Child);
                }
                if sub.is_empty() {
                    return Err(Errno::Inval);
                }
                if cmd.subcommands.is_empty() {
                    self.rules
                        .push(CmdRule::FirstArg(cmd.name.into(), sub.to_vec()));
                    if let Some(id) = command_id(cmd) {
                        self.add_firstarg(id, sub);
                    }
                } else {
                    let subcmd = lookup_by_fullname(name).ok_or(Errno::NoEnt)?;
                    self.rules.push(CmdRule::Command(subcmd.name.into(), true));
                    self.change_perm(subcmd, true);
                }
            }
        }
        Ok(())
    }
}

/// One command rule of a selector, as [`Selector::replay`] applies it to a command outside
/// the bitmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CmdRule {
    /// `+@all` / `allcommands` (true), `-@all` / `nocommands` / `reset` (false): earlier rules
    /// no longer matter, so they are dropped.
    All(bool),
    /// `+@cat` / `-@cat`: the category's bit in `CommandSpec::categories`.
    Category(u32, bool),
    /// `+name` / `-name` / `+container|sub`: the command's full name, lowercase.
    Command(Box<str>, bool),
    /// `+name|arg` on a command without subcommands.
    FirstArg(Box<str>, Vec<u8>),
}

impl CmdRule {
    /// Whether the rule takes commands away.
    fn denies(&self) -> bool {
        matches!(
            self,
            CmdRule::All(false) | CmdRule::Category(_, false) | CmdRule::Command(_, false)
        )
    }
}

impl Default for Selector {
    fn default() -> Self {
        Selector::new()
    }
}

/// The part of `s` C functions see: up to the first NUL.
pub(crate) fn c_str(s: &[u8]) -> &[u8] {
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    s.get(..end).unwrap_or_default()
}

/// `ACLStringHasSpaces`: C `isspace` or NUL anywhere.
pub(crate) fn has_spaces(s: &[u8]) -> bool {
    s.iter().any(|&c| c == 0 || is_c_space(c))
}

/// C `isspace` in the "C" locale.
pub(crate) fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `ACLLookupCommand` / `lookupCommandBySdsLogic`: `name` or `container|sub`, strictly
/// (a subcommand name on a command without subcommands, or more than one `|`, is unknown).
pub(crate) fn lookup_by_fullname(name: &[u8]) -> Option<&'static CommandSpec> {
    // sdssplitlen on "|" returns no parts for an empty string.
    if name.is_empty() {
        return None;
    }
    let mut parts = name.split(|&c| c == b'|');
    let base = parts.next()?;
    let sub = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let cmd = commands::lookup(base)?;
    match sub {
        None => Some(cmd),
        Some(sub) if !cmd.subcommands.is_empty() => commands::lookup_subcommand(cmd, sub),
        Some(_) => None,
    }
}

/// Command ids: top-level commands in table order, then each container's subcommands.
pub(crate) struct Ids {
    /// For each top-level command, the id of its first subcommand.
    sub_base: Vec<usize>,
    /// Number of ids.
    pub(crate) total: usize,
}

/// The id table, built once from the command table.
pub(crate) fn ids() -> &'static Ids {
    static IDS: OnceLock<Ids> = OnceLock::new();
    IDS.get_or_init(|| {
        let cmds = commands::commands();
        let mut next = cmds.len();
        let mut sub_base = Vec::with_capacity(cmds.len());
        for c in cmds {
            sub_base.push(next);
            next += c.subcommands.len();
        }
        Ids {
            sub_base,
            total: next,
        }
    })
}

/// Index of `x` inside `slice`, by address (the table entries are `'static`).
fn index_in(slice: &[CommandSpec], x: &CommandSpec) -> Option<usize> {
    let size = std::mem::size_of::<CommandSpec>();
    let offset = (x as *const CommandSpec as usize).checked_sub(slice.as_ptr() as usize)?;
    if size == 0 || offset % size != 0 {
        return None;
    }
    let i = offset / size;
    (i < slice.len()).then_some(i)
}

/// The ACL bit of a command or subcommand of the table (Redis's `cmd->id`); `None` for a
/// spec that is not part of the table.
pub fn command_id(spec: &CommandSpec) -> Option<usize> {
    let cmds = commands::commands();
    if let Some(i) = index_in(cmds, spec) {
        return Some(i);
    }
    let (parent, _) = spec.name.split_once('|')?;
    let p = commands::lookup(parent.as_bytes())?;
    let pi = index_in(cmds, p)?;
    let si = index_in(p.subcommands, spec)?;
    Some(ids().sub_base.get(pi)? + si)
}

/// Builds a user from its rules string (whitespace-separated, as in a Redis aclfile line),
/// applying every rule in order to a fresh user exactly like `ACL SETUSER name rules...`
/// (`ACLStringSetUser`, which merges `(`...`)` selector arguments first).
///
/// # Errors
/// The first rule `ACL SETUSER` would reject, as a [`RuleError`] with Redis's reason text.
pub fn parse_user(name: &str, rules: &str) -> Result<User, RuleError> {
    let args: Vec<&[u8]> = rules.split_ascii_whitespace().map(str::as_bytes).collect();
    parse_user_args(name, &args)
}

/// Like [`parse_user`], with the rules already split into arguments (as `ACL SETUSER`
/// receives them; an argument may then contain any byte).
///
/// # Errors
/// The first rule `ACL SETUSER` would reject, as a [`RuleError`].
pub fn parse_user_args<T: AsRef<[u8]>>(name: &str, args: &[T]) -> Result<User, RuleError> {
    let mut user = User::new(name);
    if has_spaces(name.as_bytes()) {
        return Err(RuleError {
            user: name.to_owned(),
            rule: name.to_owned(),
            reason: BAD_USERNAME,
        });
    }
    let merged = merge_selector_args(args).map_err(|start| RuleError {
        user: name.to_owned(),
        rule: redact(start),
        reason: UNMATCHED_PARENTHESIS,
    })?;
    for op in &merged {
        user.apply(op).map_err(|e| RuleError {
            user: name.to_owned(),
            rule: redact(op),
            reason: e.text(),
        })?;
    }
    Ok(user)
}

/// `ACL SETUSER`'s `ACLStringSetUser` (acl.c): the rules applied in order to a copy of the
/// user (or a fresh one), all or nothing. `Err` is Redis's error text without `ERR ` (the
/// rule echoed as given, up to a NUL byte, as `%s` prints it).
///
/// # Errors
/// Redis's text for the first rule it would reject, or an unclosed selector.
pub fn setuser<T: AsRef<[u8]>>(
    existing: Option<&User>,
    name: &str,
    args: &[T],
) -> Result<User, String> {
    let merged = merge_selector_args(args).map_err(|start| {
        format!(
            "Unmatched parenthesis in acl selector starting at '{}'.",
            String::from_utf8_lossy(c_str(start))
        )
    })?;
    let mut user = existing.cloned().unwrap_or_else(|| User::new(name));
    for op in &merged {
        user.apply(op).map_err(|e| {
            format!(
                "Error in ACL SETUSER modifier '{}': {}",
                String::from_utf8_lossy(c_str(op)),
                e.text()
            )
        })?;
    }
    Ok(user)
}

/// `ACLMergeSelectorArguments`: joins `(a`, `b`, `c)` into `(a b c)`. On an unclosed `(`,
/// returns the argument that opened it.
fn merge_selector_args<T: AsRef<[u8]>>(args: &[T]) -> Result<Vec<Vec<u8>>, &[u8]> {
    let mut out = Vec::with_capacity(args.len());
    let mut open: Option<(Vec<u8>, &[u8])> = None;
    for arg in args {
        let op = arg.as_ref();
        let last = op.last().copied().unwrap_or(0);
        if op.first() == Some(&b'(') && last != b')' {
            // A new "(" while one is open restarts the selector, as in Redis.
            open = Some((op.to_vec(), op));
            continue;
        }
        if let Some((mut sel, start)) = open.take() {
            sel.push(b' ');
            sel.extend_from_slice(op);
            if last == b')' {
                out.push(sel);
            } else {
                open = Some((sel, start));
            }
            continue;
        }
        out.push(op.to_vec());
    }
    match open {
        Some((_, start)) => Err(start),
        None => Ok(out),
    }
}

impl User {
    /// `ACLSetUser`: applies one (merged) rule.
    pub(crate) fn apply(&mut self, op: &[u8]) -> Result<(), Errno> {
        if op.is_empty() {
            return Ok(());
        }
        let cop = c_str(op);
        let is = |s: &str| cop.eq_ignore_ascii_case(s.as_bytes());
        let first = op.first().copied().unwrap_or(0);
        let last = op.last().copied().unwrap_or(0);
        if is("on") {
            self.enabled = true;
        } else if is("off") {
            self.enabled = false;
        } else if is("skip-sanitize-payload") {
            self.sanitize_payload = Some(false);
        } else if is("sanitize-payload") {
            self.sanitize_payload = Some(true);
        } else if is("nopass") {
            self.nopass = true;
            self.passwords.clear();
        } else if is("resetpass") {
            self.nopass = false;
            self.passwords.clear();
        } else if first == b'>' || first == b'#' {
            let hash = if first == b'>' {
                sha256(op.get(1..).unwrap_or_default())
            } else {
                parse_hash(op.get(1..).unwrap_or_default())?
            };
            if !self.passwords.contains(&hash) {
                self.passwords.push(hash);
            }
            self.nopass = false;
        } else if first == b'<' || first == b'!' {
            let hash = if first == b'<' {
                sha256(op.get(1..).unwrap_or_default())
            } else {
                parse_hash(op.get(1..).unwrap_or_default())?
            };
            let pos = self
                .passwords
                .iter()
                .position(|p| *p == hash)
                .ok_or(Errno::NoDev)?;
            self.passwords.remove(pos);
        } else if first == b'(' && last == b')' {
            let inner = op.get(1..op.len().saturating_sub(1)).unwrap_or_default();
            let mut sel = Selector::new();
            for sub in split_args(inner) {
                sel.apply(&sub)?;
            }
            self.selectors.push(sel);
        } else if is("clearselectors") {
            self.selectors.clear();
        } else if is("reset") {
            self.nopass = false;
            self.passwords.clear();
            self.root.all_keys = false;
            self.root.patterns.clear();
            self.root.all_channels = false;
            self.root.channels.clear();
            self.enabled = false;
            self.sanitize_payload = Some(true);
            self.selectors.clear();
            self.root.deny_all();
        } else {
            self.root.apply(op)?;
        }
        self.unrestricted = self.root.allows_all_commands()
            && self.root.all_keys
            && self.root.all_channels
            && self.selectors.is_empty();
        Ok(())
    }
}

fn sha256(password: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(password).into()
}

/// `ACLCheckPasswordHash`: exactly 64 lowercase hex digits.
fn parse_hash(hex_hash: &[u8]) -> Result<[u8; 32], Errno> {
    if hex_hash.len() != 64
        || !hex_hash
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(Errno::BadMsg);
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut bytes).map_err(|_| Errno::BadMsg)?;
    Ok(bytes)
}

/// `sdssplitargs` (`sds.c`), which Redis uses to split a selector's inside: blanks separate
/// arguments, `"..."` (with `\n`, `\xHH`... escapes) and `'...'` quote. Any quoting error makes
/// Redis see *no* arguments at all (an empty selector), which is reproduced.
pub(crate) fn split_args(line: &[u8]) -> Vec<Vec<u8>> {
    crate::resp::request::split_line(c_str(line)).unwrap_or_default()
}

/// A rule as it may appear in an error message: passwords are replaced, also inside a
/// selector (where Redis would reject them but echo them).
fn redact(rule: &[u8]) -> String {
    let text = String::from_utf8_lossy(rule);
    let hide = |w: &str| -> String {
        let w2 = w.trim_start_matches('(');
        let prefix = "(".repeat(w.len() - w2.len());
        let suffix = if w2.len() > 1 && w2.ends_with(')') {
            ")"
        } else {
            ""
        };
        match w2.chars().next() {
            Some(c @ ('>' | '<')) => format!("{prefix}{c}<redacted>{suffix}"),
            _ => w.to_owned(),
        }
    };
    if text.starts_with('(') {
        text.split(' ').map(hide).collect::<Vec<_>>().join(" ")
    } else {
        hide(&text)
    }
}
