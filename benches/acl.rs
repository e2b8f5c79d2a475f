//! The ACL check per command: GET, SET and MGET of 10 keys against a user with 20 key
//! patterns, beside the command lookup alone (the part every proxy pays) as the baseline.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use redward::{acl, commands};

fn args(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn bench_acl(c: &mut Criterion) {
    let mut rules = String::from("on >pw resetchannels -@all +@read +@write -@dangerous");
    for i in 0..20 {
        rules.push_str(&format!(" ~app{i}:*:[a-f]?*"));
    }
    rules.push_str(" ~key:*");
    let user = acl::parse_user("bench", &rules).expect("rules");
    let full = acl::parse_user("full", "on >pw ~* &* +@all").expect("rules");

    let get = args(&["GET", "key:000000001234"]);
    let set = args(&[
        "SET",
        "key:000000001234",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ]);
    let mut mget_v = vec!["MGET".to_owned()];
    mget_v.extend((0..10).map(|i| format!("key:{i:012}")));
    let mget: Vec<Vec<u8>> = mget_v.iter().map(|s| s.as_bytes().to_vec()).collect();

    let mut g = c.benchmark_group("acl_check");
    for (name, argv) in [("get", &get), ("set", &set), ("mget10", &mget)] {
        g.bench_function(format!("baseline_lookup_{name}"), |b| {
            b.iter(|| commands::resolve(black_box(argv.as_slice())).is_ok())
        });
        g.bench_function(format!("lookup_and_check_20_patterns_{name}"), |b| {
            b.iter(|| {
                let spec = commands::resolve(black_box(argv.as_slice())).expect("known");
                acl::check(&user, spec, argv.as_slice()).is_ok()
            })
        });
        g.bench_function(format!("lookup_and_check_full_access_{name}"), |b| {
            b.iter(|| {
                let spec = commands::resolve(black_box(argv.as_slice())).expect("known");
                acl::check(&full, spec, argv.as_slice()).is_ok()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_acl);
criterion_main!(benches);
