//! Promise: `ACL SETUSER` and `DELUSER` through redward answer as the server behind does.
//! Random argument lists (valid and not: selectors, passwords, resets, odd names) run against
//! Redis 7.0.15 and Valkey 8.1.8 directly and through redward, 300 steps each: the same reply
//! to every request, the same `ACL GETUSER` after each `SETUSER`, the same `ACL LIST` at the
//! end (single-command rules' order aside, which Redis 7.0 takes from its randomly seeded
//! command dict). Alone in its binary: it installs each server's command table in turn.
//! Knob: `ACL_RUNTIME_SEED`.

mod common;

use common::acl_gen::{
    all_specs, gen_glob, gen_selector_rule, push_permissive_start, push_selector_args, Rng,
    RuleStyle, PASSWORDS, RESET_RULES,
};
use common::*;

const STYLE: RuleStyle = RuleStyle {
    plus_percent: 75,
    more_first_arg_rules: &["sort|k", "publish|a"],
    odd_command_rules: &["+nosuchcmd", "-@nosuchcat", "+get|x|y"],
    command_keywords: &["allcommands", "nocommands", "+@all", "-@all"],
    bad_selector_rules: &["%X~a", "~a b"],
};

/// Random SETUSER argument lists, valid and not.
fn gen_args(rng: &mut Rng, specs: &[&'static redward::commands::CommandSpec]) -> Vec<String> {
    let mut rules = Vec::new();
    push_permissive_start(rng, &mut rules, [3, 5, 8, 10]);
    for _ in 0..rng.below(3) {
        rules.push(format!("~{}", gen_glob(rng)));
    }
    if rng.chance(20) {
        rules.push(
            rng.pick(&["~*", "allkeys", "%R~*", "%W~*", "resetkeys"])
                .to_string(),
        );
    }
    if rng.chance(30) {
        rules.push(format!("&{}", gen_glob(rng)));
    }
    for _ in 0..rng.below(7) {
        match rng.below(20) {
            0 => rules.push(rng.pick(&["nopass", "resetpass", "off", "on"]).to_string()),
            1 => rules.push(format!(">{}", rng.pick(PASSWORDS))),
            2 => rules.push(format!("<{}", rng.pick(PASSWORDS))),
            3 => rules.push(rng.pick(RESET_RULES).to_string()),
            4..=6 => {
                let k = 1 + rng.below(3);
                let ops: Vec<String> = (0..k)
                    .map(|_| gen_selector_rule(rng, specs, &STYLE))
                    .collect();
                push_selector_args(&mut rules, &ops);
            }
            _ => rules.push(gen_selector_rule(rng, specs, &STYLE)),
        }
    }
    rules.retain(|r| !r.is_empty());
    rules
}

/// A GETUSER reply with each line of rules' tokens sorted: Redis 7.0 writes single-command
/// rules in its command dict's order, seeded at random per process (README, ACLs).
fn rule_order_aside(reply: &str) -> String {
    reply
        .split("\r\n")
        .map(|line| {
            if line.contains(' ') && (line.starts_with('+') || line.starts_with('-')) {
                let mut t: Vec<&str> = line.split(' ').collect();
                t.sort_unstable();
                t.join(" ")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_setuser_sequences_answer_as_the_server_does() {
    let seed: u64 = std::env::var("ACL_RUNTIME_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("acl_runtime: seed={seed} (replay with ACL_RUNTIME_SEED={seed})");
    for kind in ServerKind::ALL {
        let acl = vec![
            "user default off".to_owned(),
            format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
            format!("user {APP_USER} on >{APP_PASSWORD} ~* &* +@all"),
        ];
        let (direct, behind) = match (
            Redis::start_kind(kind, acl.clone()),
            Redis::start_kind(kind, acl),
        ) {
            (Ok(d), Ok(b)) => (d, b),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("skipping {}: {e}", kind.name());
                continue;
            }
        };
        let proxy = proxy()
            .upstream_option("identity: shared")
            .start(&behind)
            .await;
        let specs = all_specs();
        let mut rng = Rng::new(seed ^ kind as u64);
        let mut d = Raw::plain(&direct.addr()).await;
        d.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
        d.replies(1).await;
        let mut v = as_app(&proxy).await;
        let mut created: Vec<String> = Vec::new();
        for step in 0..300 {
            let name = if !created.is_empty() && rng.chance(40) {
                rng.pick(&created).clone()
            } else {
                format!("u{step}")
            };
            let req = if rng.chance(8) && !created.is_empty() {
                let victim = rng.pick(&created).clone();
                vec![
                    "ACL".to_owned(),
                    "DELUSER".to_owned(),
                    victim,
                    "nosuch".to_owned(),
                ]
            } else {
                let mut r = vec!["ACL".to_owned(), "SETUSER".to_owned(), name.clone()];
                r.extend(gen_args(&mut rng, &specs));
                r
            };
            let args: Vec<&str> = req.iter().map(String::as_str).collect();
            let want = ask(&mut d, &args).await;
            let got = ask(&mut v, &args).await;
            assert_eq!(got, want, "{} step {step}: {args:?}", kind.name());
            if args[1] == "SETUSER" && want == "+OK\r\n" && !created.contains(&name) {
                created.push(name.clone());
            }
            if args[1] == "DELUSER" {
                created.retain(|c| c != args[2]);
            }
            if args[1] == "SETUSER" {
                let want = rule_order_aside(&ask(&mut d, &["ACL", "GETUSER", &name]).await);
                let got = rule_order_aside(&ask(&mut v, &["ACL", "GETUSER", &name]).await);
                assert_eq!(
                    got,
                    want,
                    "{} step {step}: GETUSER after {args:?}",
                    kind.name()
                );
            }
        }
        // ACL LIST: the same line for every user made (tokens sorted, as above).
        let lines = |reply: String| -> Vec<String> {
            let mut out: Vec<String> = reply
                .split("\r\n")
                .filter(|l| l.starts_with("user u"))
                .map(|l| {
                    // Selectors' parentheses aside too: the last rule inside one is in that
                    // dict order as well.
                    let l = l.replace(['(', ')'], " ");
                    let mut t: Vec<&str> = l.split(' ').filter(|t| !t.is_empty()).collect();
                    t.sort_unstable();
                    t.join(" ")
                })
                .collect();
            out.sort();
            out
        };
        let want = lines(ask(&mut d, &["ACL", "LIST"]).await);
        let got = lines(ask(&mut v, &["ACL", "LIST"]).await);
        assert_eq!(got, want, "{}: ACL LIST", kind.name());
        eprintln!(
            "acl_runtime: {}: 300 steps, {} users",
            kind.name(),
            created.len()
        );
    }
}
