//! Promise: the deployment files in `deploy/` are valid for the tools that consume them, and the
//! redward configs they embed are configs this redward accepts, so they cannot drift.
//!
//! The systemd and Kubernetes checks need `systemd-analyze` and `kubernetes-validate`;
//! `scripts/test.sh` installs both. When one is missing the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The path of `name` on `$PATH` (or in `~/.local/bin`, where `pip install --user` puts it).
fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn skip(tool: &str, install: &str) {
    eprintln!(
        "SKIPPED: {tool} is not installed ({install}; scripts/test.sh installs it); \
         nothing was validated"
    );
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = find_tool("systemd-analyze") else {
        return skip("systemd-analyze", "apt-get install systemd");
    };
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/redward.service")).unwrap();
    // verify also checks that ExecStart's binary exists, and /usr/local/bin/redward need
    // not be installed here: point the unit at the binary this test run built.
    let installed = "/usr/local/bin/redward ";
    assert!(
        unit.contains(&format!("ExecStart={installed}")),
        "ExecStart should run {installed}"
    );
    let unit = unit.replace(installed, &format!("{} ", env!("CARGO_BIN_EXE_redward")));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redward.service");
    std::fs::write(&path, unit).unwrap();

    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let text = output_text(&out);
    eprintln!("systemd-analyze verify: {}\n{text}", out.status);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // Unknown keys and bad values are only warnings (exit 0); any output at all is a finding.
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify warned:\n{text}"
    );
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate() {
    let Some(validate) = find_tool("kubernetes-validate") else {
        return skip("kubernetes-validate", "pip install kubernetes-validate");
    };
    let dir = repo().join("deploy/kubernetes");
    // The single-pod example, the Sentinel one (several redward replicas), the cluster one
    // (a redward sidecar beside each cluster node) and the tier of redward instances in
    // front of that cluster beside it.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("sentinel")).unwrap())
        .chain(std::fs::read_dir(dir.join("cluster")).unwrap())
        .chain(std::fs::read_dir(dir.join("cluster-proxy")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // Not a Kubernetes object: kubernetes-validate has no schema for it. It is checked
        // below by rendering it with kubectl when kubectl is installed.
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "manifests missing: {files:?}");

    let out = Command::new(&validate)
        .arg("--strict")
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let text = output_text(&out);
    eprintln!("kubernetes-validate: {}\n{text}", out.status);
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            text.lines()
                .any(|l| l.contains(&*name) && l.contains("passed")),
            "{name} was not validated:\n{text}"
        );
    }
    assert!(
        !text.contains("WARN") && !text.contains("ERROR"),
        "kubernetes-validate warned:\n{text}"
    );

    // The kustomization, rendered, when kubectl (with its built-in kustomize) is here.
    let Some(kubectl) = find_tool("kubectl") else {
        eprintln!("SKIPPED: kubectl is not installed; kustomization.yaml was not rendered");
        return;
    };
    let rendered = Command::new(kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        rendered.status.success(),
        "kubectl kustomize failed:\n{}",
        output_text(&rendered)
    );
    let tmp = tempfile::tempdir().unwrap();
    let all = tmp.path().join("kustomized.yaml");
    std::fs::write(&all, &rendered.stdout).unwrap();
    let out = Command::new(&validate)
        .arg("--strict")
        .arg(&all)
        .output()
        .expect("run kubernetes-validate");
    let text = output_text(&out);
    eprintln!("kubernetes-validate (kustomized): {}\n{text}", out.status);
    assert!(
        out.status.success() && !text.contains("WARN") && !text.contains("ERROR"),
        "kustomized output did not validate:\n{text}"
    );
    for kind in ["deployment/", "service/", "configmap/", "networkpolicy/"] {
        assert!(text.contains(kind), "kustomize rendered no {kind}:\n{text}");
    }
}

/// `data["redward.yaml"]` of deploy/kubernetes/configmap.yaml.
fn configmap_redward_yaml() -> String {
    configmap_yaml_at("deploy/kubernetes/configmap.yaml")
}

/// `data["redward.yaml"]` of the ConfigMap at `path` (from the repository's root).
fn configmap_yaml_at(path: &str) -> String {
    #[derive(serde::Deserialize)]
    struct ConfigMap {
        kind: String,
        data: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    let cm: ConfigMap = serde_saphyr::from_str(&text).expect("configmap.yaml is YAML");
    assert_eq!(cm.kind, "ConfigMap");
    cm.data
        .get("redward.yaml")
        .expect("configmap.yaml has data.redward.yaml")
        .clone()
}

#[test]
fn example_configs_parse() {
    for (name, text) in [
        ("configmap.yaml data.redward.yaml", configmap_redward_yaml()),
        (
            "sentinel/configmap.yaml data.redward.yaml",
            configmap_yaml_at("deploy/kubernetes/sentinel/configmap.yaml"),
        ),
        (
            "cluster/configmap.yaml data.redward.yaml",
            configmap_yaml_at("deploy/kubernetes/cluster/configmap.yaml"),
        ),
        (
            "cluster-proxy/configmap.yaml data.redward.yaml",
            configmap_yaml_at("deploy/kubernetes/cluster-proxy/configmap.yaml"),
        ),
        (
            "config/docker.yaml",
            std::fs::read_to_string(repo().join("config/docker.yaml")).unwrap(),
        ),
        (
            "config/redward.yaml",
            std::fs::read_to_string(repo().join("config/redward.yaml")).unwrap(),
        ),
    ] {
        if let Err(e) = redward::config::parse(&text) {
            panic!("{name} does not parse: {e}");
        }
    }
}

/// More than parsing: `redward check` accepts the ConfigMap's config once the files the pod
/// mounts under /etc/redward exist (here under a temp directory) and the Secret's variable is
/// set (only in the child's environment).
#[test]
fn configmap_config_passes_redward_check() {
    for path in [
        "deploy/kubernetes/configmap.yaml",
        "deploy/kubernetes/cluster/configmap.yaml",
        "deploy/kubernetes/cluster-proxy/configmap.yaml",
    ] {
        passes_redward_check(path);
    }
}

/// `redward check` on the ConfigMap at `path`, with its /etc/redward files made up.
fn passes_redward_check(path: &str) {
    let yaml = configmap_yaml_at(path);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let certs = redward::tls::generate_dev_certs(&root.join("certs"), &[]).unwrap();
    std::fs::create_dir_all(root.join("tls")).unwrap();
    std::fs::create_dir_all(root.join("secret")).unwrap();
    std::fs::copy(&certs.server_cert, root.join("tls/tls.crt")).unwrap();
    std::fs::copy(&certs.server_key, root.join("tls/tls.key")).unwrap();
    std::fs::write(root.join("secret/redis-password"), "not-a-real-password\n").unwrap();
    assert!(
        yaml.contains("/etc/redward/"),
        "expected paths under /etc/redward"
    );
    let config = root.join("redward.yaml");
    let prefix = format!("{}/", root.display());
    std::fs::write(&config, yaml.replace("/etc/redward/", &prefix)).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_redward"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .env("APP_PASSWORD_SHA256", "0".repeat(64))
        .output()
        .expect("run redward check");
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "redward check rejected {path}'s config:\n{text}"
    );
    assert!(text.contains("config OK"), "{text}");
    assert!(text.contains("user app "), "{text}");
}
