//! Fuzz regressions: every committed seed in `fuzz/corpus/<target>/` is run through the same
//! `redward::fuzzing` entry point its cargo-fuzz target calls (none may panic), and every
//! crash the fuzzer found becomes a `#[test]` below with its minimized input (see
//! docs/FUZZING.md). Cheap: a few dozen small inputs, no fuzzer needed.

use std::path::PathBuf;

fn corpus(target: &str, entry: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    for file in files {
        let data = std::fs::read(&file).expect("read seed");
        // Name the seed if the entry point panics on it.
        eprintln!("{target}: {}", file.display());
        entry(&data);
    }
}

#[test]
fn corpus_resp_request() {
    corpus("resp_request", redward::fuzzing::request_parser);
}

#[test]
fn corpus_resp_reply() {
    corpus("resp_reply", redward::fuzzing::reply_scanner);
}

#[test]
fn corpus_acl_rules() {
    corpus("acl_rules", redward::fuzzing::acl_rules);
}

#[test]
fn corpus_command_classifier() {
    corpus("command_classifier", redward::fuzzing::command_classifier);
}

#[test]
fn corpus_config() {
    corpus("config", redward::fuzzing::config);
}

#[test]
fn corpus_cluster_rewrite() {
    corpus("cluster_rewrite", redward::fuzzing::cluster_rewrite);
}
