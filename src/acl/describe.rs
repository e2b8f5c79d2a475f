//! Users rendered back as rules, like Redis 7.0's `ACLDescribeUser` (`ACL LIST`) and
//! `ACLDescribeSelectorCommandRules` (the `commands` field of `ACL GETUSER`).
//!
//! One unavoidable difference: Redis emits the single `+cmd`/`-cmd` rules in the iteration
//! order of its command dict, which depends on a per-process random hash seed; here they come
//! in command-table order (sorted by name, subcommands after their container). The set of rules
//! and their effect are the same.

use super::rules::{command_id, ids, CmdRule, Selector, KEY_READ, KEY_WRITE};
use super::User;
use crate::commands::{self, CommandSpec, CATEGORIES};

/// `ACL LIST` line for `user`: `user NAME on #<sha256> ~* &* +@all`, per `ACLDescribeUser`.
///
/// The wording follows the server behind: Redis 7.2+ and Valkey create users with
/// `sanitize-payload` set and describe command rules as they were given (`ACLUpdateCommandRules`),
/// Redis 7.0 rebuilds them from the bitmap.
pub fn describe(user: &User) -> String {
    let modern = modern();
    let mut out = format!("user {} ", user.name);
    out.push_str(if user.enabled { "on " } else { "off " });
    if user.nopass {
        out.push_str("nopass ");
    }
    match user.sanitize_payload {
        Some(false) => out.push_str("skip-sanitize-payload "),
        Some(true) => out.push_str("sanitize-payload "),
        None if modern => out.push_str("sanitize-payload "),
        None => {}
    }
    for p in &user.passwords {
        out.push('#');
        out.push_str(&hex::encode(p));
        out.push(' ');
    }
    out.push_str(&describe_selector(&user.root));
    for sel in &user.selectors {
        out.push_str(" (");
        out.push_str(&describe_selector(sel));
        out.push(')');
    }
    out
}

/// `ACLDescribeSelector`: keys, channels, then command rules.
fn describe_selector(sel: &Selector) -> String {
    let mut out = String::new();
    if sel.all_keys {
        out.push_str("~* ");
    } else {
        for p in &sel.patterns {
            out.push_str(match p.flags {
                f if f == KEY_READ | KEY_WRITE => "~",
                KEY_READ => "%R~",
                KEY_WRITE => "%W~",
                // Unreachable: `%~pat` without R or W is refused by the rules.
                _ => "%~",
            });
            out.push_str(&String::from_utf8_lossy(&p.pattern));
            out.push(' ');
        }
    }
    if sel.all_channels {
        out.push_str("&* ");
    } else {
        out.push_str("resetchannels ");
        for c in &sel.channels {
            out.push('&');
            out.push_str(&String::from_utf8_lossy(c));
            out.push(' ');
        }
    }
    out.push_str(&describe_selector_commands(sel));
    out
}

/// A user's permissions as `ACL SETUSER` arguments, one rule per argument: the root
/// selector's keys, channels and commands, then each `(...)` selector as one argument. No
/// flags and no passwords: this is what an upstream user with the same rights is given
/// (`upstream/identity.rs`), and Redis re-reads categories against its own command table.
pub fn permission_rules(user: &User) -> Vec<String> {
    let mut out = selector_rules(&user.root);
    for sel in &user.selectors {
        out.push(format!("({})", selector_rules(sel).join(" ")));
    }
    out
}

/// One selector's rules as separate arguments, in `describe_selector`'s order; command rules
/// as they were given.
pub fn selector_rules(sel: &Selector) -> Vec<String> {
    let mut out = Vec::new();
    if sel.all_keys {
        out.push("~*".to_owned());
    } else {
        for p in &sel.patterns {
            let prefix = match p.flags {
                // `~*` would set ALLKEYS, after which Redis refuses any other pattern: a
                // read-write `*` that is not ALLKEYS (`%R~* %W~*`) is spelled `%RW~*`.
                f if f == KEY_READ | KEY_WRITE && p.pattern != b"*" => "~",
                f if f == KEY_READ | KEY_WRITE => "%RW~",
                KEY_READ => "%R~",
                _ => "%W~",
            };
            out.push(format!("{prefix}{}", String::from_utf8_lossy(&p.pattern)));
        }
    }
    if sel.all_channels {
        out.push("&*".to_owned());
    } else {
        out.push("resetchannels".to_owned());
        for c in &sel.channels {
            out.push(format!("&{}", String::from_utf8_lossy(c)));
        }
    }
    // The command rules as given (Redis 7.2's form), never rebuilt from the bitmap: the
    // server behind then reads each category and name against its own table, module
    // commands included, which Redis 7.0's bitmap-based description would leave out.
    out.extend(
        describe_selector_commands_72(sel)
            .split(' ')
            .filter(|r| !r.is_empty())
            .map(str::to_owned),
    );
    out
}

/// Every command and subcommand of the table, containers before their subcommands.
fn all_specs() -> impl Iterator<Item = &'static CommandSpec> {
    commands::commands()
        .iter()
        .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
}

/// `ACLCountCategoryBitsForSelector`: (allowed, denied) commands of a category, by bit.
fn count_category(sel: &Selector, cat_bit: u32) -> (usize, usize) {
    let (mut on, mut off) = (0, 0);
    for c in all_specs().filter(|c| c.categories & cat_bit != 0) {
        if command_id(c).is_some_and(|id| sel.bit(id)) {
            on += 1;
        } else {
            off += 1;
        }
    }
    (on, off)
}

/// Whether the server behind describes users the Redis 7.2+ way.
fn modern() -> bool {
    commands::catalog::server().acl_texts() == commands::catalog::AclTexts::Redis72
}

/// The `commands` rules of a selector as the server behind writes them.
pub fn describe_selector_commands(sel: &Selector) -> String {
    if modern() {
        describe_selector_commands_72(sel)
    } else {
        describe_selector_commands_70(sel)
    }
}

/// Redis 7.2+ / Valkey `ACLDescribeSelectorCommandRules`: `+@all` or `-@all` (whether the
/// selector can run future commands), then the command rules as given, each rule's last
/// occurrence only (`ACLUpdateCommandRules` removes an earlier `+x`/`-x`, and a command's
/// subcommands' `+x|y`/`-x|y`, before appending; `+@all`/`-@all` clear the list).
fn describe_selector_commands_72(sel: &Selector) -> String {
    let mut kept: Vec<(String, bool)> = Vec::new();
    for rule in &sel.rules {
        let (name, allow) = match rule {
            CmdRule::All(_) => {
                kept.clear();
                continue;
            }
            CmdRule::Category(bit, allow) => {
                let i = usize::try_from(bit.trailing_zeros()).unwrap_or(usize::MAX);
                let cat = CATEGORIES.get(i).copied().unwrap_or("");
                (format!("@{cat}"), *allow)
            }
            CmdRule::Command(name, allow) => (name.to_ascii_lowercase(), *allow),
            CmdRule::FirstArg(name, arg) => (
                format!("{}|{}", name, String::from_utf8_lossy(arg)).to_ascii_lowercase(),
                true,
            ),
        };
        // `ACLRemoveCommandRule`: a command's rule also removes its subcommands' rules.
        kept.retain(|(n, _)| {
            *n != name
                && !(n.len() > name.len()
                    && n.starts_with(name.as_str())
                    && n.as_bytes().get(name.len()) == Some(&b'|'))
        });
        kept.push((name, allow));
    }
    let mut rules = String::from(if sel.can_run_future_commands() {
        "+@all"
    } else {
        "-@all"
    });
    for (name, allow) in kept {
        rules.push(' ');
        rules.push(if allow { '+' } else { '-' });
        rules.push_str(&name);
    }
    rules
}

/// Redis 7.0 `ACLDescribeSelectorCommandRules`: `+@all` or `-@all`, then the best-fitting
/// categories, then single commands and first-args until the rules rebuild the exact bitmap.
fn describe_selector_commands_70(sel: &Selector) -> String {
    let mut rules = String::new();
    let mut fake = Selector::new();
    let additive = !sel.can_run_future_commands();
    if additive {
        rules.push_str("-@all ");
        fake.deny_all();
    } else {
        rules.push_str("+@all ");
        fake.allow_all();
    }

    let mut temp = Selector::new();
    temp.bits.clone_from(&sel.bits);
    let mut applied = [false; CATEGORIES.len()];
    loop {
        let mut best = None;
        let (mut mindiff, mut maxsame) = (usize::MAX, 0usize);
        for (j, done) in applied.iter().enumerate() {
            if *done {
                continue;
            }
            let (on, off) = count_category(&temp, 1u32 << j);
            let (diff, same) = if additive { (off, on) } else { (on, off) };
            if same > diff && (diff < mindiff || (diff == mindiff && same > maxsame)) {
                best = Some(j);
                mindiff = diff;
                maxsame = same;
            }
        }
        let Some(j) = best else { break };
        let name = CATEGORIES.get(j).copied().unwrap_or("");
        fake.set_category(1u32 << j, additive);
        temp.set_category(1u32 << j, !additive);
        rules.push_str(if additive { "+@" } else { "-@" });
        rules.push_str(name);
        rules.push(' ');
        if let Some(a) = applied.get_mut(j) {
            *a = true;
        }
    }

    for cmd in commands::commands() {
        single_command_rules(sel, &mut fake, cmd, &mut rules);
    }
    debug_assert!((0..ids().total).all(|id| fake.bit(id) == sel.bit(id)));
    if rules.ends_with(' ') {
        rules.pop();
    }
    rules
}

/// `ACLDescribeSelectorCommandRulesSingleCommands` for one command and its subcommands.
fn single_command_rules(
    sel: &Selector,
    fake: &mut Selector,
    cmd: &'static CommandSpec,
    rules: &mut String,
) {
    let Some(id) = command_id(cmd) else { return };
    let userbit = sel.bit(id);
    if userbit != fake.bit(id) {
        rules.push(if userbit { '+' } else { '-' });
        rules.push_str(cmd.name);
        rules.push(' ');
        fake.change_perm(cmd, userbit);
    }
    for sub in cmd.subcommands {
        single_command_rules(sel, fake, sub, rules);
    }
    if !userbit {
        for arg in sel.firstargs(id) {
            rules.push('+');
            rules.push_str(cmd.name);
            rules.push('|');
            rules.push_str(&String::from_utf8_lossy(arg));
            rules.push(' ');
        }
    }
}
