//! Users changed at run time: `ACL SETUSER`, `DELUSER`, `SAVE` and `LOAD` through redward.
//!
//! How they live with the configuration:
//! - Users of the `users:` list are the configuration's: `ACL SETUSER` and `DELUSER` refuse
//!   them (change them in the file and reload), so a reload or a save never loses one side.
//! - Every other user (those of `acl_file`, and those created at run time) is managed as on
//!   Redis: `SETUSER` creates or changes it for live connections at once, `DELUSER` removes it
//!   and closes its connections, `SETUSER ... off` does not close them.
//! - `ACL SAVE` writes those users to `acl_file` (hashed passwords only: `ACL LIST`'s lines),
//!   replacing it atomically as `ACLSaveToFile` does: a temporary file beside it, fsync,
//!   rename, fsync of the directory. `ACL LOAD` reads it all or nothing: on any bad line the
//!   users in force stay and the reply is Redis's text naming each line.
//! - A configuration reload applies the new `users:` list and keeps every other user as it
//!   is: like Redis, the file is read at start-up and by `ACL LOAD` only, so a reload never
//!   loses a change not yet saved, nor the other instances' (`shared_users.rs`).
//! - At most `limits.max_users` users in all ([`DEFAULT_MAX_USERS`]), so a loop creating
//!   users cannot grow the process without bound.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::acl::User;
use crate::config::{Config, Users};

/// `limits.max_users` by default (kept with the other defaults in `config`).
pub use crate::config::DEFAULT_MAX_USERS;

/// What a change did, for the caller to publish.
pub struct Changed {
    /// The users in force now.
    pub users: Users,
    /// The users whose rules changed (created or modified).
    pub set: Vec<Arc<User>>,
    /// The users removed.
    pub removed: Vec<String>,
}

#[derive(Debug)]
struct State {
    /// The users as the configuration (or the last SAVE/LOAD) left them.
    base: Users,
    /// Changes since: a user set, or removed (`None`).
    overlay: BTreeMap<String, Option<Arc<User>>>,
    /// The `users:` list's names.
    configured: HashSet<String>,
    acl_file: Option<PathBuf>,
    max_users: usize,
}

impl State {
    /// Makes the users outside the `users:` list exactly `runtime` (`ACL LOAD`, or another
    /// instance's users), with no change pending on top; what changed.
    fn replace_runtime(&mut self, runtime: Vec<Arc<User>>) -> Changed {
        let before = self.current();
        let set: Vec<Arc<User>> = runtime
            .iter()
            .filter(|u| before.get(u.name.as_bytes()).is_none_or(|b| **b != ***u))
            .cloned()
            .collect();
        let mut all: Vec<Arc<User>> = before
            .arcs()
            .filter(|u| self.configured.contains(&u.name))
            .cloned()
            .collect();
        all.extend(runtime);
        let users = Users::from_arcs(all);
        let removed = before
            .names()
            .filter(|n| users.get(n.as_bytes()).is_none())
            .map(str::to_owned)
            .collect();
        self.base = users.clone();
        self.overlay.clear();
        Changed {
            users,
            set,
            removed,
        }
    }

    fn current(&self) -> Users {
        let mut all: std::collections::HashMap<String, Arc<User>> = self
            .base
            .arcs()
            .map(|u| (u.name.clone(), Arc::clone(u)))
            .collect();
        for (name, change) in &self.overlay {
            match change {
                Some(u) => {
                    all.insert(name.clone(), Arc::clone(u));
                }
                None => {
                    all.remove(name);
                }
            }
        }
        Users::from_arcs(all.into_values())
    }
}

/// The users in force and how they got there.
#[derive(Debug)]
pub struct RuntimeUsers {
    state: Mutex<State>,
}

/// Redis's reply when there is no ACL file (`aclCommand`, `ACL SAVE`/`LOAD`).
pub const NO_ACL_FILE: &str = "This Redis instance is not configured to use an ACL file. You may want to specify users via the ACL SETUSER command and then issue a CONFIG REWRITE (assuming you have a Redis configuration file set) in order to store users in the Redis configuration.";

impl RuntimeUsers {
    pub fn new(cfg: &Config) -> RuntimeUsers {
        RuntimeUsers {
            state: Mutex::new(State {
                base: cfg.users.clone(),
                overlay: BTreeMap::new(),
                configured: cfg.configured_users.clone(),
                acl_file: cfg.acl_file.clone(),
                max_users: cfg.limits.max_users,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A configuration reload: the new `users:` list, and every other user as it is now.
    /// Like Redis, whose configuration reload does not re-read its aclfile, the file is read
    /// at start-up and by `ACL LOAD` only, so run-time users (this instance's, or the other
    /// instances' through the shared state) are never lost to a reload. A name the new list
    /// defines is the list's.
    pub fn reloaded(&self, cfg: &Config) -> Users {
        let mut st = self.lock();
        let now = st.current();
        let configured = cfg.configured_users.clone();
        let mut all: Vec<Arc<User>> = cfg
            .users
            .arcs()
            .filter(|u| configured.contains(&u.name))
            .cloned()
            .collect();
        all.extend(
            now.arcs()
                .filter(|u| !configured.contains(&u.name) && !st.configured.contains(&u.name))
                .cloned(),
        );
        st.base = Users::from_arcs(all);
        st.overlay.clear();
        st.configured = configured;
        st.acl_file = cfg.acl_file.clone();
        st.max_users = cfg.limits.max_users;
        st.current()
    }

    /// `ACL SETUSER name rules...`. `Err`: the error text (without `ERR `).
    ///
    /// # Errors
    /// Redis's text for a bad rule; redward's for a configured user or too many users.
    pub fn setuser(&self, name: &[u8], args: &[&[u8]]) -> Result<Changed, String> {
        if crate::acl::rules_has_spaces(name) {
            return Err("Usernames can't contain spaces or null characters".to_owned());
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| "redward: user names must be UTF-8".to_owned())?;
        let mut st = self.lock();
        if st.configured.contains(name) {
            return Err(format!(
                "redward: user '{name}' is defined in redward's configuration (users:); change it there and reload"
            ));
        }
        let users = st.current();
        let existing = users.get(name.as_bytes()).map(|u| u.as_ref());
        if existing.is_none() && users.len() >= st.max_users {
            return Err(format!(
                "redward: at most {} users (limits.max_users)",
                st.max_users
            ));
        }
        let user = Arc::new(crate::acl::setuser(existing, name, args)?);
        st.overlay.insert(name.to_owned(), Some(Arc::clone(&user)));
        Ok(Changed {
            users: st.current(),
            set: vec![user],
            removed: Vec::new(),
        })
    }

    /// `ACL DELUSER name...`: how many existed and are gone.
    ///
    /// # Errors
    /// Redis's text for `default`; redward's for a configured user (nothing is removed then).
    pub fn deluser(&self, names: &[&[u8]]) -> Result<(usize, Changed), String> {
        let mut st = self.lock();
        for name in names {
            if *name == b"default" {
                return Err("The 'default' user cannot be removed".to_owned());
            }
            if let Ok(n) = std::str::from_utf8(name) {
                if st.configured.contains(n) {
                    return Err(format!(
                        "redward: user '{n}' is defined in redward's configuration (users:); remove it there and reload"
                    ));
                }
            }
        }
        let users = st.current();
        let mut removed = Vec::new();
        for name in names {
            let Ok(n) = std::str::from_utf8(name) else {
                continue;
            };
            if users.get(name).is_some() && !removed.iter().any(|r| r == n) {
                st.overlay.insert(n.to_owned(), None);
                removed.push(n.to_owned());
            }
        }
        Ok((
            removed.len(),
            Changed {
                users: st.current(),
                set: Vec::new(),
                removed,
            },
        ))
    }

    /// `ACL SAVE`: the users outside the `users:` list, as `ACL LIST` lines, to `acl_file`.
    ///
    /// # Errors
    /// Redis's texts: no file configured, or the file could not be written (logged).
    pub fn save(&self) -> Result<(), String> {
        let mut st = self.lock();
        let Some(path) = st.acl_file.clone() else {
            return Err(NO_ACL_FILE.to_owned());
        };
        let users = st.current();
        let mut lines: Vec<String> = users
            .iter()
            .filter(|u| !st.configured.contains(&u.name))
            .map(crate::acl::describe)
            .collect();
        lines.sort();
        let mut text = lines.join("\n");
        text.push('\n');
        write_atomically(&path, text.as_bytes()).map_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ACL SAVE failed");
            "There was an error trying to save the ACLs. Please check the server logs for more information".to_owned()
        })?;
        st.base = users;
        st.overlay.clear();
        Ok(())
    }

    /// `ACL LOAD`: the users of `acl_file` replace every user outside the `users:` list, or
    /// nothing changes.
    ///
    /// # Errors
    /// Redis's texts: no file configured, or every bad line.
    pub fn load(&self) -> Result<Changed, String> {
        let mut st = self.lock();
        let Some(path) = st.acl_file.clone() else {
            return Err(NO_ACL_FILE.to_owned());
        };
        let loaded = crate::config::read_acl_file_for_load(&path, &st.configured)?;
        if st.configured.len() + loaded.len() > st.max_users {
            return Err(format!(
                "redward: at most {} users (limits.max_users)",
                st.max_users
            ));
        }
        Ok(st.replace_runtime(loaded.into_iter().map(Arc::new).collect()))
    }
}

impl RuntimeUsers {
    /// The users outside the `users:` list, as (name, `ACL LIST` line): what instances
    /// share (`shared_users.rs`).
    pub fn runtime_lines(&self) -> Vec<(String, String)> {
        let st = self.lock();
        st.current()
            .iter()
            .filter(|u| !st.configured.contains(&u.name))
            .map(|u| (u.name.clone(), crate::acl::describe(u)))
            .collect()
    }

    /// Makes the users outside the `users:` list exactly those of `lines` (`ACL LIST` lines
    /// another instance wrote). `Ok(None)`: nothing changed. Lines naming a configured user
    /// are skipped (the configuration wins); a line this instance cannot read is an error
    /// and nothing changes.
    ///
    /// # Errors
    /// The first line that is not a user this instance can build.
    pub fn replace_from_lines(&self, lines: &[Vec<u8>]) -> Result<Option<Changed>, String> {
        let mut st = self.lock();
        let mut theirs = Vec::with_capacity(lines.len());
        for line in lines {
            let args = crate::resp::request::split_line(line)
                .ok_or_else(|| "unbalanced quotes".to_owned())?;
            let [_, name, rules @ ..] = args.as_slice() else {
                return Err("a line without a user".to_owned());
            };
            let name = std::str::from_utf8(name).map_err(|_| "a user name not UTF-8".to_owned())?;
            if st.configured.contains(name) {
                continue;
            }
            theirs.push(Arc::new(
                crate::acl::parse_user_args(name, rules).map_err(|e| e.to_string())?,
            ));
        }
        let changed = st.replace_runtime(theirs);
        Ok((!changed.set.is_empty() || !changed.removed.is_empty()).then_some(changed))
    }
}

/// `ACLSaveToFile`'s way: a temporary file in the same directory, written and fsynced, then
/// renamed over the old one, then the directory fsynced.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let tmp = path.with_file_name(format!(
        "{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(d) = dir {
            std::fs::File::open(d)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
