//! Promise: `redward from-stunnel FILE` turns a working stunnel setup into a redward config
//! (YAML on stdout, exit 0) and names every option it could not carry over on stderr; once the
//! users are filled in, `redward check` accepts it with stunnel's own certificate file.

use std::path::Path;
use std::process::{Command, Output};

fn redward(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redward"))
        .args(args)
        .arg(file)
        .output()
        .expect("run redward")
}

#[test]
fn converts_an_stunnel_file_that_then_checks() {
    let dir = tempfile::tempdir().unwrap();
    let certs = redward::tls::generate_dev_certs(dir.path(), &[]).unwrap();
    // stunnel's usual layout: certificate and key in one PEM file, no `key =` line.
    let pem = dir.path().join("redis.pem");
    let mut both = std::fs::read_to_string(&certs.server_cert).unwrap();
    both.push_str(&std::fs::read_to_string(&certs.server_key).unwrap());
    std::fs::write(&pem, both).unwrap();

    let conf = dir.path().join("redis.conf");
    std::fs::write(
        &conf,
        format!(
            "; /etc/stunnel/redis.conf\n\
             pid = /var/run/stunnel4/redis.pid\n\
             setuid = stunnel4\n\
             [redis]\n\
             accept = 127.0.0.1:6380\n\
             connect = 127.0.0.1:6379\n\
             cert = {}\n\
             CAfile = {}\n\
             verify = 2\n\
             TIMEOUTidle = 600\n",
            pem.display(),
            certs.ca_cert.display()
        ),
    )
    .unwrap();

    let out = redward(&["from-stunnel"], &conf);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let raw = redward::config::parse(&stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    assert_eq!(raw.listen.len(), 1);
    assert_eq!(raw.upstream.address.as_deref(), Some("127.0.0.1:6379"));
    assert!(stdout.contains(&format!("stunnel config {}", conf.display())));

    assert!(
        stderr.lines().all(|l| l.starts_with("redward: warning: ")),
        "{stderr}"
    );
    for dropped in [
        "pid =",
        "setuid =",
        "CAfile =",
        "verify = 2",
        "no `key`",
        "users: []",
    ] {
        assert!(
            stderr.lines().any(|l| l.contains(dropped)),
            "no warning about {dropped}:\n{stderr}"
        );
    }

    // Fill in a user as the comments say; the certificate file doubles as the key file.
    let hash = redward::acl::hash_password(b"secret");
    let filled = stdout.replace(
        "users: []\n",
        &format!("users:\n  - name: default\n    rules: \"on #{hash} ~* &* +@all\"\n"),
    );
    let yaml = dir.path().join("redward.yaml");
    std::fs::write(&yaml, filled).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_redward"))
        .arg("check")
        .arg("--config")
        .arg(&yaml)
        .output()
        .unwrap();
    let check_out = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{check_out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check_out.contains("config OK"), "{check_out}");
}

#[test]
fn unreadable_file_is_one_line_and_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.conf");
    let out = redward(&["from-stunnel"], &missing);
    assert_eq!(out.status.code(), Some(78));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn the_example_stunnel_config_from_the_issue_converts() {
    let text =
        "[redis]\naccept = 127.0.0.1:6380\nconnect = 127.0.0.1:6379\ncert = /path/to/ssl.pem\n";
    let c = redward::stunnel::convert(text);
    let raw = redward::config::parse(&c.yaml).expect("the YAML parses");
    assert_eq!(raw.listen.len(), 1);
    assert_eq!(raw.listen[0].address, "127.0.0.1:6380");
    assert_eq!(raw.upstream.address.as_deref(), Some("127.0.0.1:6379"));
    assert!(c.yaml.contains("/path/to/ssl.pem"));
    // The key defaults to the cert file in stunnel: said so.
    assert!(
        c.warnings.iter().any(|w| w.contains("key")),
        "{:?}",
        c.warnings
    );
}
