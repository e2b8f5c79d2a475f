//! Promise (README, Quick start): the demo scripts a user runs to watch redward work keep
//! working. Each runs whole, with this build's binary, and must end clean.

use std::path::Path;
use std::process::Command;

fn run(script: &str, extra: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts").join(script))
        .args(["--bin", env!("CARGO_BIN_EXE_redward")])
        .args(extra)
        .current_dir(root)
        .output()
        .expect("bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

#[test]
fn cluster_demo_brings_up_a_cluster_behind_redward_and_prints_the_line_to_paste() {
    let text = run("cluster-demo.sh", &["--no-wait"]);
    assert!(text.contains("redis-cli -c --tls"), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
}

#[test]
fn failover_demo_loses_no_acknowledged_write() {
    run("failover-demo.sh", &[]);
}
