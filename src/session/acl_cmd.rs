//! `ACL` subcommands answered by redward from its own users and log, never by Redis (whose
//! users are not the client's business): WHOAMI, USERS, LIST, GETUSER, CAT, DRYRUN, LOG. The
//! ones that change users are `acl_admin.rs`'s.
//! Reply shapes follow `aclCommand` in Redis 7.0's `acl.c`.

use std::time::SystemTime;

use crate::acl::{self, User};
use crate::audit::Audit;
use crate::commands::{self, Argv, CATEGORIES};
use crate::config::Users;
use crate::resp::Request;

/// A reply in both protocols; the session picks the one in force when it is written.
pub struct Reply {
    pub resp2: Vec<u8>,
    pub resp3: Vec<u8>,
}

/// What to do with an `ACL <sub> ...` request (existence, arity and permissions already
/// checked).
pub enum Answer {
    Local(Reply),
    /// Harmless and user-independent (GENPASS, HELP): let Redis answer.
    Forward,
}

/// Builds the same reply in RESP2 and RESP3 at once.
struct Out {
    r2: Vec<u8>,
    r3: Vec<u8>,
}

impl Out {
    fn new() -> Out {
        Out {
            r2: Vec::new(),
            r3: Vec::new(),
        }
    }
    fn raw(&mut self, both: &[u8]) {
        self.r2.extend_from_slice(both);
        self.r3.extend_from_slice(both);
    }
    fn bulk(&mut self, data: &[u8]) {
        self.raw(format!("${}\r\n", data.len()).as_bytes());
        self.raw(data);
        self.raw(b"\r\n");
    }
    fn array(&mut self, n: usize) {
        self.raw(format!("*{n}\r\n").as_bytes());
    }
    fn map(&mut self, n: usize) {
        self.r2
            .extend_from_slice(format!("*{}\r\n", n * 2).as_bytes());
        self.r3.extend_from_slice(format!("%{n}\r\n").as_bytes());
    }
    fn set(&mut self, n: usize) {
        self.r2.extend_from_slice(format!("*{n}\r\n").as_bytes());
        self.r3.extend_from_slice(format!("~{n}\r\n").as_bytes());
    }
    fn null(&mut self) {
        self.r2.extend_from_slice(b"$-1\r\n");
        self.r3.extend_from_slice(b"_\r\n");
    }
    fn int(&mut self, n: i64) {
        self.raw(format!(":{n}\r\n").as_bytes());
    }
    fn double(&mut self, d: f64) {
        let s = format!("{d}");
        self.r2
            .extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes());
        self.r3.extend_from_slice(format!(",{s}\r\n").as_bytes());
    }
    fn done(self) -> Answer {
        Answer::Local(Reply {
            resp2: self.r2,
            resp3: self.r3,
        })
    }
}

fn error(text: &str) -> Answer {
    let mut o = Out::new();
    o.raw(b"-ERR ");
    o.raw(text.replace(['\r', '\n'], " ").as_bytes());
    o.raw(b"\r\n");
    o.done()
}

/// Answers `ACL <sub> ...` for `user`.
pub fn answer(req: &Request<'_>, user: &User, users: &Users, audit: &Audit) -> Answer {
    let sub = req.arg(1).to_ascii_lowercase();
    let argc = req.argc();
    let mut o = Out::new();
    match (sub.as_slice(), argc) {
        (b"whoami", 2) => o.bulk(user.name.as_bytes()),
        (b"users", 2) | (b"list", 2) => {
            let mut all: Vec<&User> = users.iter().collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            o.array(all.len());
            for u in all {
                if sub == b"users" {
                    o.bulk(u.name.as_bytes());
                } else {
                    o.bulk(acl::describe(u).as_bytes());
                }
            }
        }
        (b"getuser", 3) => match users.get(req.arg(2)) {
            None => o.null(),
            Some(u) => getuser(&mut o, u),
        },
        (b"cat", 2) => {
            o.array(CATEGORIES.len());
            for c in CATEGORIES {
                o.bulk(c.as_bytes());
            }
        }
        (b"cat", 3) => {
            let name = String::from_utf8_lossy(req.arg(2));
            let Some(bit) = commands::category_index(&name).map(|i| 1u32 << i) else {
                let shown: String = name.chars().take(128).collect();
                return error(&format!("Unknown category '{shown}'"));
            };
            let names: Vec<&str> = commands::commands()
                .iter()
                .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
                .filter(|c| c.categories & bit != 0)
                .map(|c| c.name)
                .collect();
            o.array(names.len());
            for n in names {
                o.bulk(n.as_bytes());
            }
        }
        (b"dryrun", n) if n >= 4 => {
            let Some(target) = users.get(req.arg(2)) else {
                return error(&format!(
                    "User '{}' not found",
                    String::from_utf8_lossy(req.arg(2))
                ));
            };
            o.raw(&acl::dryrun(target, &Shifted { req, by: 3 }));
        }
        (b"log", 2) | (b"log", 3) => {
            let mut count = 10usize;
            if argc == 3 {
                let arg = req.arg(2);
                if arg.eq_ignore_ascii_case(b"reset") {
                    audit.reset();
                    o.raw(b"+OK\r\n");
                    return o.done();
                }
                match crate::resp::request::string2ll(arg) {
                    Some(n) => count = usize::try_from(n.max(0)).unwrap_or(0),
                    None => return error("value is not an integer or out of range"),
                }
            }
            let entries = audit.entries(count);
            o.array(entries.len());
            let now = SystemTime::now();
            for e in entries {
                o.map(7);
                o.bulk(b"count");
                o.int(i64::try_from(e.count).unwrap_or(i64::MAX));
                o.bulk(b"reason");
                o.bulk(e.reason.as_str().as_bytes());
                o.bulk(b"context");
                o.bulk(e.context.as_bytes());
                o.bulk(b"object");
                o.bulk(e.object.as_bytes());
                o.bulk(b"username");
                o.bulk(e.username.as_bytes());
                o.bulk(b"age-seconds");
                // Redis 7.0 counts the age from the entry's last update (`ctime`).
                let age = now.duration_since(e.updated).unwrap_or_default();
                o.double((age.as_millis() as f64) / 1000.0);
                o.bulk(b"client-info");
                o.bulk(e.client_info.as_bytes());
            }
        }
        _ => return Answer::Forward,
    }
    o.done()
}

/// `ACL GETUSER`: flags, passwords, the root selector's commands/keys/channels, selectors.
fn getuser(o: &mut Out, u: &User) {
    o.map(6);
    o.bulk(b"flags");
    let mut flags: Vec<&str> = vec![if u.enabled { "on" } else { "off" }];
    if u.nopass {
        flags.push("nopass");
    }
    // Redis 7.2+ and Valkey create users with `sanitize-payload` set (`ACLCreateUser`).
    let modern = commands::catalog::server().acl_texts() == commands::catalog::AclTexts::Redis72;
    match u.sanitize_payload {
        Some(false) => flags.push("skip-sanitize-payload"),
        Some(true) => flags.push("sanitize-payload"),
        None if modern => flags.push("sanitize-payload"),
        None => {}
    }
    o.set(flags.len());
    for f in flags {
        o.bulk(f.as_bytes());
    }
    o.bulk(b"passwords");
    o.array(u.passwords.len());
    for p in &u.passwords {
        o.bulk(hex::encode(p).as_bytes());
    }
    selector(o, &u.root);
    o.bulk(b"selectors");
    o.array(u.selectors.len());
    for s in &u.selectors {
        o.map(3);
        selector(o, s);
    }
}

/// `aclAddReplySelectorDescription`: commands, keys, channels.
fn selector(o: &mut Out, s: &acl::Selector) {
    o.bulk(b"commands");
    o.bulk(acl::describe_selector_commands(s).trim_end().as_bytes());
    o.bulk(b"keys");
    if s.all_keys {
        o.bulk(b"~*");
    } else {
        let pats: Vec<String> = s
            .patterns
            .iter()
            .map(|p| {
                let prefix = match p.flags {
                    f if f == acl::rules::KEY_READ | acl::rules::KEY_WRITE => "~",
                    acl::rules::KEY_READ => "%R~",
                    _ => "%W~",
                };
                format!("{prefix}{}", String::from_utf8_lossy(&p.pattern))
            })
            .collect();
        o.bulk(pats.join(" ").as_bytes());
    }
    o.bulk(b"channels");
    if s.all_channels {
        o.bulk(b"&*");
    } else {
        let chans: Vec<String> = s
            .channels
            .iter()
            .map(|c| format!("&{}", String::from_utf8_lossy(c)))
            .collect();
        o.bulk(chans.join(" ").as_bytes());
    }
}

/// The request's arguments from index `by` on (the command inside `ACL DRYRUN user ...`).
struct Shifted<'a, 'b> {
    req: &'a Request<'b>,
    by: usize,
}

impl Argv for Shifted<'_, '_> {
    fn argc(&self) -> usize {
        self.req.argc().saturating_sub(self.by)
    }
    fn arg(&self, i: usize) -> &[u8] {
        self.req.arg(i + self.by)
    }
}
