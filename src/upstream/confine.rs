//! An upstream user's rules when `limits.shared_state: upstream` keeps redward's state in the
//! Redis behind (`shared_limits.rs`): the redward user's rules, narrowed so that nothing it
//! runs, from a script or a function included, reaches that state.
//!
//! * **Keys.** Every pattern that could match a reserved key (`redward:...`) is replaced by
//!   patterns for everything it matched except those: `*` becomes the empty key, `[^r]*`,
//!   `r`, `r[^e]*`, ..., `redward`, `redward[^:]*`. A pattern Redis's glob cannot be split
//!   that way (a wildcard before it diverges from `redward:`, as in `*:x`) is left alone,
//!   and that user's scripts stay refused ([`Confined::Not`]).
//! * **Databases.** `SELECT` is allowed only for the databases the user may select other
//!   than the hidden one (`-select +select|0 +select|1 ...`, first-argument rules), so a
//!   script cannot `SELECT` the state's database to `KEYS`, `SCAN` or `FLUSHDB` it.
//! * **Whole-dataset commands.** `-flushall -swapdb`: they wipe or move every database, the
//!   hidden one too, whatever the key patterns.
//!
//! The lockout channel is not confined by rules (a `&*` user's `PSUBSCRIBE` patterns must
//! stay as they are); its messages are signed instead (`shared_limits.rs`).

use crate::acl::{Selector, User};

/// The reserved key prefix (`shared_limits::KEY_PREFIX` is this one: `shared_limits` sits
/// above `upstream` and imports it, never the other way).
pub const RESERVED: &[u8] = b"redward:";

/// Where the shared state is, for confining.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confine {
    /// The hidden database; `u32::MAX` for none (in front of a cluster, whose one database
    /// holds the port map, `cluster/port_map.rs`: only the key patterns confine).
    pub state_db: u32,
    /// How many databases Redis has.
    pub databases: u32,
}

/// A user's upstream rules, and whether its scripts are confined by them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confined {
    /// These rules keep every command, scripts included, away from the state.
    Rules(Vec<String>),
    /// This key pattern cannot be narrowed; the user's scripts and functions stay refused.
    Not { pattern: String },
}

/// `user`'s permissions as SETUSER arguments (as [`crate::acl::permission_rules`]), confined.
pub fn confined_rules(user: &User, c: &Confine) -> Confined {
    let mut out = match selector(&user.root, c) {
        Ok(rules) => rules,
        Err(pattern) => return Confined::Not { pattern },
    };
    for sel in &user.selectors {
        match selector(sel, c) {
            Ok(rules) => out.push(format!("({})", rules.join(" "))),
            Err(pattern) => return Confined::Not { pattern },
        }
    }
    Confined::Rules(out)
}

/// One selector's rules, confined; `Err` with the pattern that cannot be.
fn selector(sel: &Selector, c: &Confine) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for rule in crate::acl::selector_rules(sel) {
        match key_rule(&rule) {
            None => out.push(rule),
            // `~*` is ALLKEYS, which matches the empty key too; a glob `*` does not.
            Some((prefix, pattern)) => match exclude_reserved(pattern.as_bytes(), rule == "~*") {
                Some(patterns) => out.extend(
                    patterns
                        .into_iter()
                        .map(|p| format!("{prefix}{}", String::from_utf8_lossy(&p))),
                ),
                None => return Err(pattern.to_owned()),
            },
        }
    }
    out.push("-select".to_owned());
    if let Some(select) = crate::commands::lookup(b"select") {
        for db in (0..c.databases).filter(|d| *d != c.state_db) {
            let db = db.to_string();
            let argv = ["SELECT", db.as_str()];
            if crate::acl::selector_allows(sel, select, &argv[..]) {
                out.push(format!("+select|{db}"));
            }
        }
    }
    if c.state_db != u32::MAX {
        // A wipe of the port map alone is repaired by the instances; the hidden database's
        // state is not.
        out.push("-flushall".to_owned());
        out.push("-swapdb".to_owned());
    }
    Ok(out)
}

/// `~pat`, `%R~pat`, `%W~pat`, `%RW~pat`: the part up to `~`, and the pattern.
fn key_rule(rule: &str) -> Option<(&str, &str)> {
    if !(rule.starts_with('~') || rule.starts_with('%')) {
        return None;
    }
    let at = rule.find('~')?;
    Some((rule.get(..=at)?, rule.get(at + 1..)?))
}

/// Patterns matching what `pattern` matches (every key, with `all_keys`: Redis's ALLKEYS),
/// minus every key starting with the reserved prefix; `None` when Redis's glob cannot say
/// that (see the module's doc).
pub fn exclude_reserved(pattern: &[u8], all_keys: bool) -> Option<Vec<Vec<u8>>> {
    let literal = pattern
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    let lit = pattern.get(..literal).unwrap_or_default();
    let common = lit.iter().zip(RESERVED).take_while(|(a, b)| a == b).count();
    if common < lit.len() && common < RESERVED.len() {
        // The literal part leaves the prefix: nothing reserved can match.
        return Some(vec![pattern.to_vec()]);
    }
    if common == RESERVED.len() {
        // Every key it matches is reserved.
        return Some(Vec::new());
    }
    // `lit` is a proper prefix of the reserved one.
    if pattern.get(literal..) != Some(&b"*"[..]) {
        return None;
    }
    let mut out = Vec::new();
    for k in lit.len()..RESERVED.len() {
        let head = RESERVED.get(..k).unwrap_or_default();
        // Redis's glob: `*` does not match the empty key (`stringmatchlen`).
        if all_keys || crate::acl::stringmatch(pattern, head, false) {
            out.push(head.to_vec());
        }
        let mut p = head.to_vec();
        p.extend_from_slice(b"[^");
        p.push(RESERVED.get(k).copied().unwrap_or(b':'));
        p.extend_from_slice(b"]*");
        out.push(p);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::stringmatch;

    fn matches_any(patterns: &[Vec<u8>], key: &[u8]) -> bool {
        patterns.iter().any(|p| stringmatch(p, key, false))
    }

    #[test]
    fn every_pattern_matches_what_it_did_except_reserved_keys() {
        let keys: [&[u8]; 14] = [
            b"",
            b"r",
            b"re",
            b"redward",
            b"redward:",
            b"redward:lock:1.2.3.4",
            b"redwar",
            b"redwardx",
            b"app:1",
            b"rx",
            b"red",
            b"reddit",
            b"zzz",
            b"redward:rate:app",
        ];
        for pattern in [
            &b"*"[..],
            b"r*",
            b"red*",
            b"redward*",
            b"app:*",
            b"x?y",
            b"re?*",
        ] {
            let Some(out) = exclude_reserved(pattern, false) else {
                assert_eq!(pattern, b"re?*");
                continue;
            };
            for key in keys {
                let want = stringmatch(pattern, key, false) && !key.starts_with(RESERVED);
                assert_eq!(
                    matches_any(&out, key),
                    want,
                    "{} on {}",
                    String::from_utf8_lossy(pattern),
                    String::from_utf8_lossy(key)
                );
            }
        }
        assert_eq!(exclude_reserved(b"redward:*", false), Some(Vec::new()));
        assert_eq!(exclude_reserved(b"*:x", false), None);
        // ALLKEYS matches the empty key, and still nothing reserved.
        let all = exclude_reserved(b"*", true).expect("narrowed");
        assert!(matches_any(&all, b"") && !matches_any(&all, b"redward:x"));
    }

    #[test]
    fn a_wide_user_keeps_everything_but_the_state() {
        let user = crate::acl::parse_user("app", "on nopass ~* &* +@all").expect("rules");
        let c = Confine {
            state_db: 15,
            databases: 16,
        };
        let Confined::Rules(rules) = confined_rules(&user, &c) else {
            panic!("confinable")
        };
        let text = rules.join(" ");
        assert!(
            text.contains("~[^r]* ") && text.contains("-select +select|0"),
            "{text}"
        );
        assert!(
            text.contains("+select|14 -flushall") && !text.contains("select|15"),
            "{text}"
        );
        let narrow = crate::acl::parse_user("n", "on nopass ~*:x +get").expect("rules");
        assert_eq!(
            confined_rules(&narrow, &c),
            Confined::Not {
                pattern: "*:x".to_owned()
            }
        );
    }
}
