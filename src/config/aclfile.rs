//! Redis aclfiles: read at start-up and reload beside `users:` (`acl_file`), and by `ACL LOAD`
//! with Redis's own error texts (`ACLLoadFromFile` in `acl.c`).

use std::path::Path;

use super::ConfigError;
use crate::acl::{self, User};

/// `ACL LOAD`'s reading of the aclfile (`ACLLoadFromFile` in `acl.c`): every line checked,
/// and on any error Redis's text (`<file>:<line>: <reason>. ` for each, then `WARNING: ACL
/// errors detected, no change to the previously active ACL rules was performed`), so the
/// caller changes nothing. `configured`: names the configuration's `users:` defines, which a
/// file may not redefine.
pub fn read_acl_file_for_load(
    path: &Path,
    configured: &std::collections::HashSet<String>,
) -> Result<Vec<User>, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("Error loading ACLs, opening file '{}': {e}", path.display()))?;
    let file = path.display();
    let mut users: Vec<User> = Vec::new();
    let mut errors = String::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        let Some(args) = crate::resp::request::split_line(line) else {
            errors.push_str(&format!("{file}:{n}: unbalanced quotes in acl line. "));
            continue;
        };
        let [kw, name, rules @ ..] = args.as_slice() else {
            errors.push_str(&format!(
                "{file}:{n} should start with user keyword followed by the username. "
            ));
            continue;
        };
        if !kw.eq_ignore_ascii_case(b"user") {
            errors.push_str(&format!(
                "{file}:{n} should start with user keyword followed by the username. "
            ));
            continue;
        }
        let Ok(name) = std::str::from_utf8(name) else {
            errors.push_str(&format!("{file}:{n}: redward: user names must be UTF-8. "));
            continue;
        };
        if configured.contains(name) {
            errors.push_str(&format!(
                "{file}:{n}: redward: user '{name}' is defined in redward's configuration (users:). "
            ));
            continue;
        }
        if users.iter().any(|u| u.name == name) {
            errors.push_str(&format!(
                "WARNING: Duplicate user '{name}' found on line {n}. "
            ));
            continue;
        }
        match acl::parse_user_args(name, rules) {
            Ok(u) => users.push(u),
            Err(e) => errors.push_str(&format!("{file}:{n}: {}. ", e.reason)),
        }
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        errors.push_str(
            "WARNING: ACL errors detected, no change to the previously active ACL rules was performed",
        );
        Err(errors)
    }
}

/// Reads a Redis aclfile (`ACLLoadFromFile` in `acl.c`): one `user NAME rules...` per line,
/// split like an inline request. Blank lines and `#` comments are skipped (Redis rejects
/// comments; accepting them loses nothing).
pub(super) fn load_acl_file(path: &Path) -> Result<Vec<User>, ConfigError> {
    let text = std::fs::read(path).map_err(|e| ConfigError::file("acl_file", path, e))?;
    let mut users = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let at = |message: String| {
            ConfigError::file("acl_file", path, format!("line {}: {message}", i + 1))
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() || trimmed.starts_with(b"#") {
            continue;
        }
        let args = crate::resp::request::split_line(line)
            .ok_or_else(|| at("unbalanced quotes".to_owned()))?;
        match args.as_slice() {
            [kw, name, rules @ ..] if kw.eq_ignore_ascii_case(b"user") => {
                let name = std::str::from_utf8(name)
                    .map_err(|_| at("user name is not UTF-8".to_owned()))?;
                if users.iter().any(|u: &User| u.name == name) {
                    return Err(at(format!("duplicate user '{name}'")));
                }
                users.push(acl::parse_user_args(name, rules).map_err(|e| at(e.to_string()))?);
            }
            _ => return Err(at("line should start with user keyword".to_owned())),
        }
    }
    Ok(users)
}
