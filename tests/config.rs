//! Promise: a bad configuration never starts a half-configured proxy. redward exits non-zero
//! with one line that names the field or file at fault.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Certs;

/// Runs `redward --config FILE` (or `check`) and returns (exit code, stderr).
fn run(args: &[&str], config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_redward"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redward");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (
                status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("redward kept running with a bad config");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn valid(certs: &Certs, listen: &str) -> String {
    format!(
        "listen:\n  - address: \"{listen}\"\n    tls: {{ cert: {}, key: {} }}\n\
         upstream:\n  address: \"127.0.0.1:1\"\n  username: proxy\n  password: x\n\
         users:\n  - name: app\n    rules: \"on >pw ~* &* +@all\"\n",
        certs.cert().display(),
        certs.key().display()
    )
}

/// Writes `text` as a config, runs redward on it, and checks the one-line error.
fn assert_refused(text: &str, must_contain: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redward.yaml");
    std::fs::write(&path, text).unwrap();
    for args in [&["check"][..], &[][..]] {
        let (code, stderr) = run(args, &path);
        assert!(
            code.is_some_and(|c| c != 0),
            "exit {code:?} for {args:?}\n{text}\n{stderr}"
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "want one line, got {stderr:?}");
        for needle in must_contain {
            assert!(
                lines[0].contains(needle),
                "{:?} does not name {needle:?}",
                lines[0]
            );
        }
    }
}

#[test]
fn unknown_field_is_named() {
    let certs = Certs::new();
    let text =
        valid(&certs, "127.0.0.1:0").replace("  password: x\n", "  password: x\n  passwrod: y\n");
    assert_refused(&text, &["passwrod"]);
}

#[test]
fn duplicate_key_is_refused() {
    let certs = Certs::new();
    let text =
        valid(&certs, "127.0.0.1:0").replace("  password: x\n", "  password: x\n  password: y\n");
    assert_refused(&text, &["password"]);
}

#[test]
fn missing_certificate_file_is_named() {
    let certs = Certs::new();
    let text = valid(&certs, "127.0.0.1:0").replace("server.crt", "nope.crt");
    assert_refused(&text, &["listen[0].tls", "nope.crt"]);
}

#[test]
fn key_not_matching_certificate_is_named() {
    let certs = Certs::new();
    let other = Certs::new();
    let text = valid(&certs, "127.0.0.1:0").replace(
        &certs.key().display().to_string(),
        &other.key().display().to_string(),
    );
    assert_refused(&text, &["does not match", "server.crt"]);
}

#[test]
fn address_in_use_is_named() {
    let certs = Certs::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redward.yaml");
    std::fs::write(&path, valid(&certs, &addr)).unwrap();
    let (code, stderr) = run(&[], &path);
    assert!(code.is_some_and(|c| c != 0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("listen[0].address"),
        "{stderr}"
    );
}

#[test]
fn plaintext_listener_on_a_public_address_must_be_asked_for() {
    let certs = Certs::new();
    let text = valid(&certs, "0.0.0.0:0").replace(
        &format!(
            "tls: {{ cert: {}, key: {} }}",
            certs.cert().display(),
            certs.key().display()
        ),
        "tls: off",
    );
    assert_refused(&text, &["listen[0].tls", "allow_plaintext_non_loopback"]);
}

#[test]
fn bad_duration_is_named() {
    let certs = Certs::new();
    let text = valid(&certs, "127.0.0.1:0") + "limits:\n  auth_timeout: soon\n";
    assert_refused(&text, &["soon"]);
}

#[test]
fn invalid_acl_rule_names_user_and_rule() {
    let certs = Certs::new();
    let text = valid(&certs, "127.0.0.1:0").replace("on >pw ~* &* +@all", "on #abc ~* &* +@all");
    assert_refused(&text, &["users[0].rules", "'app'", "#abc"]);
}

#[test]
fn unset_environment_variable_is_named() {
    let certs = Certs::new();
    let text = valid(&certs, "127.0.0.1:0")
        .replace("password: x", "password: \"${REDWARD_TEST_UNSET_VAR}\"");
    assert_refused(&text, &["upstream.password", "REDWARD_TEST_UNSET_VAR"]);
}

#[test]
fn missing_config_file_is_named() {
    let (code, stderr) = run(&[], Path::new("/nonexistent/redward.yaml"));
    assert!(code.is_some_and(|c| c != 0));
    assert!(stderr.contains("/nonexistent/redward.yaml"), "{stderr}");
}

#[test]
fn passwords_never_appear_in_errors() {
    let certs = Certs::new();
    let text = valid(&certs, "127.0.0.1:0").replace("on >pw ~* &* +@all", "on >hunter2 <nothere");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redward.yaml");
    std::fs::write(&path, text).unwrap();
    let (code, stderr) = run(&["check"], &path);
    assert!(code.is_some_and(|c| c != 0));
    assert!(
        !stderr.contains("hunter2") && !stderr.contains("nothere"),
        "{stderr}"
    );
}

#[test]
fn a_valid_config_checks_ok() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redward.yaml");
    std::fs::write(&path, valid(&certs, "127.0.0.1:0")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_redward"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("config OK"));
}

#[test]
fn bad_shared_connection_settings_are_named() {
    let certs = Certs::new();
    let text = valid(&certs, "127.0.0.1:0")
        .replace("password: x", "password: x\n  shared_connections: 65");
    assert_refused(&text, &["upstream.shared_connections", "at most 64"]);
    let text = valid(&certs, "127.0.0.1:0") + "limits:\n  shared_reply_buffer: 10\n";
    assert_refused(&text, &["limits.shared_reply_buffer"]);
}

#[test]
fn check_warns_about_proxy_headers_from_any_peer_on_a_public_address() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redward.yaml");
    let port = common::free_port();
    let base = valid(&certs, &format!("0.0.0.0:{port}"));
    for (setting, warned) in [
        ("proxy_protocol: true", true),
        ("proxy_protocol: { trusted: [\"10.0.0.0/8\"] }", false),
    ] {
        std::fs::write(
            &path,
            base.replacen("    tls: {", &format!("    {setting}\n    tls: {{"), 1),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_redward"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert_eq!(
            stdout.contains("warning: listen[0].proxy_protocol: true"),
            warned,
            "{setting}: {stdout}"
        );
    }
}

#[test]
fn an_empty_trusted_list_and_a_tiny_client_memory_bound_are_named() {
    let certs = Certs::new();
    let base = valid(&certs, "127.0.0.1:0");
    assert_refused(
        &base.replacen(
            "    tls: {",
            "    proxy_protocol: { trusted: [] }\n    tls: {",
            1,
        ),
        &["listen[0].proxy_protocol.trusted"],
    );
    assert_refused(
        &format!("{base}limits:\n  max_client_memory: 1kb\n"),
        &["limits.max_client_memory"],
    );
    assert_refused(&format!("{base}log:\n  color: rainbow\n"), &["log.color"]);
}

#[test]
fn a_shared_state_database_needs_shared_state_and_is_not_database_0() {
    let certs = Certs::new();
    let base = valid(&certs, "127.0.0.1:0");
    assert_refused(
        &format!("{base}limits:\n  shared_state_database: 3\n"),
        &["limits.shared_state_database", "only with"],
    );
    assert_refused(
        &format!("{base}limits:\n  shared_state: upstream\n  shared_state_database: 0\n"),
        &["limits.shared_state_database", "database 0"],
    );
}

#[test]
fn upstream_cluster_is_exclusive_and_checked_field_by_field() {
    let certs = Certs::new();
    let base = valid(&certs, "127.0.0.1:0");
    let cluster = |seeds: &str, bind: &str, ports: &str, host: &str| {
        format!(
            "  cluster: {{ seeds: [{seeds}], node_listeners: {{ bind: \"{bind}\", ports: \"{ports}\", announce_host: \"{host}\" }} }}\n"
        )
    };
    let good = cluster(
        "\"127.0.0.1:30001\"",
        "127.0.0.1",
        "7101-7199",
        "redis.example.com",
    );
    let only = |s: &str| base.replace("  address: \"127.0.0.1:1\"\n", s);
    assert_refused(
        &base.replace("upstream:\n", &format!("upstream:\n{good}")),
        &["upstream.cluster", "only one"],
    );
    for (text, field) in [
        (
            cluster("", "127.0.0.1", "7101-7199", "h"),
            "upstream.cluster.seeds",
        ),
        (
            cluster("\"unix:/tmp/s\"", "127.0.0.1", "7101-7199", "h"),
            "upstream.cluster.seeds[0]",
        ),
        (
            cluster("\"127.0.0.1:1\"", "everywhere", "7101-7199", "h"),
            "upstream.cluster.node_listeners.bind",
        ),
        (
            cluster("\"127.0.0.1:1\"", "127.0.0.1", "7199-7101", "h"),
            "upstream.cluster.node_listeners.ports",
        ),
        (
            cluster("\"127.0.0.1:1\"", "127.0.0.1", "0-10", "h"),
            "upstream.cluster.node_listeners.ports",
        ),
        (
            cluster("\"127.0.0.1:1\"", "127.0.0.1", "7101-7199", ""),
            "upstream.cluster.node_listeners.announce_host",
        ),
    ] {
        assert_refused(&only(&text), &[field]);
    }
    // TLS to nodes whose addresses change needs the name to verify.
    assert_refused(
        &only(&good).replace("  password: x\n", "  password: x\n  tls: {}\n"),
        &["upstream.tls.server_name"],
    );
    // Shared state lives in one database of one Redis: not in front of a cluster.
    assert_refused(
        &format!("{}limits:\n  shared_state: upstream\n", only(&good)),
        &["limits.shared_state", "Cluster"],
    );
    // The sidecar map belongs with one node's address.
    assert_refused(
        &only(&format!(
            "{good}  cluster_announce: {{ \"10.0.0.5:6379\": \"redis-0:6380\" }}\n"
        )),
        &["upstream.cluster_announce", "upstream.address"],
    );
    assert_refused(
        &base.replace(
            "upstream:\n",
            "upstream:\n  cluster_announce: { \"10.0.0.5:6379\": \"nowhere\" }\n",
        ),
        &["upstream.cluster_announce[10.0.0.5:6379]"],
    );
}

#[test]
fn cluster_port_map_grace_and_quarantine_are_checked_by_name() {
    let certs = Certs::new();
    let base = valid(&certs, "127.0.0.1:0");
    let with = |more: &str| {
        base.replace(
            "  address: \"127.0.0.1:1\"\n",
            &format!(
                "  cluster: {{ seeds: [\"127.0.0.1:30001\"], node_listeners: {{ bind: \"127.0.0.1\", ports: \"7101-7199\", announce_host: h{more} }} }}\n"
            ),
        )
    };
    assert_refused(
        &with(", port_map: shared"),
        &["upstream.cluster.node_listeners.port_map"],
    );
    assert_refused(
        &with(", grace: 0s"),
        &["upstream.cluster.node_listeners.grace"],
    );
    assert_refused(
        &with(", quarantine: soon"),
        &["upstream.cluster.node_listeners.quarantine: invalid duration `soon`"],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redward.yaml");
    std::fs::write(&path, with("")).unwrap();
    let c = redward::config::load(&path)
        .expect("valid")
        .upstream
        .cluster;
    let c = c.expect("cluster");
    assert!(c.shared_ports, "the map is shared by default");
    assert_eq!(c.grace, std::time::Duration::from_secs(15));
    assert_eq!(c.quarantine, std::time::Duration::from_secs(60));
    std::fs::write(&path, with(", port_map: local, quarantine: 5m")).unwrap();
    let c = redward::config::load(&path)
        .expect("valid")
        .upstream
        .cluster;
    let c = c.expect("cluster");
    assert!(!c.shared_ports);
    assert_eq!(c.quarantine, std::time::Duration::from_secs(300));
}

#[test]
fn cluster_node_listeners_allow_takes_networks_and_refuses_anything_else() {
    let certs = Certs::new();
    let base = valid(&certs, "127.0.0.1:0");
    let with_allow = |allow: &str| {
        base.replace(
            "  address: \"127.0.0.1:1\"\n",
            &format!(
                "  cluster: {{ seeds: [\"127.0.0.1:30001\"], node_listeners: {{ bind: \"127.0.0.1\", ports: \"7101-7199\", announce_host: h, allow: {allow} }} }}\n"
            ),
        )
    };
    assert_refused(
        &with_allow("[\"10.0.0.0/24\", \"10.0.0.0/99\"]"),
        &["upstream.cluster.node_listeners.allow[1]"],
    );
    assert_refused(
        &with_allow("[\"redis.example.com\"]"),
        &["upstream.cluster.node_listeners.allow[0]"],
    );
    assert_refused(
        &with_allow("[]"),
        &["upstream.cluster.node_listeners.allow"],
    );
    // Networks, and a bare address as its host route.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redward.yaml");
    std::fs::write(&path, with_allow("[\"10.0.0.0/24\", \"fd00::7\"]")).unwrap();
    let cfg = redward::config::load(&path).expect("valid");
    let allow = cfg.upstream.cluster.expect("cluster").allow;
    assert_eq!(
        allow,
        vec![
            "10.0.0.0/24".parse().unwrap(),
            "fd00::7/128".parse().unwrap()
        ]
    );
}

#[test]
fn upstream_address_and_sentinel_are_exclusive_and_sentinel_is_checked() {
    let certs = Certs::new();
    let base = valid(&certs, "127.0.0.1:0");
    let sentinel = "  sentinel: { master: mymaster, addresses: [\"127.0.0.1:26379\"] }\n";
    // Both: refused, naming upstream.
    let both = base.replace("upstream:\n", &format!("upstream:\n{sentinel}"));
    assert_refused(&both, &["upstream", "not both"]);
    // Neither.
    let neither = base.replace("  address: \"127.0.0.1:1\"\n", "");
    assert_refused(&neither, &["upstream.address", "sentinel"]);
    // A Sentinel list that is empty, or names a unix socket.
    let only = |s: &str| base.replace("  address: \"127.0.0.1:1\"\n", s);
    assert_refused(
        &only("  sentinel: { master: mymaster, addresses: [] }\n"),
        &["upstream.sentinel.addresses"],
    );
    assert_refused(
        &only("  sentinel: { master: mymaster, addresses: [\"unix:/tmp/s\"] }\n"),
        &["upstream.sentinel.addresses[0]", "TCP"],
    );
    // TLS to a master whose address changes needs the name to verify.
    assert_refused(
        &only(sentinel).replace("  password: x\n", "  password: x\n  tls: {}\n"),
        &["upstream.tls.server_name"],
    );
}
