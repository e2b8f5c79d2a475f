use super::*;

#[test]
fn sizes_are_read_like_redis_conf() {
    assert_eq!(parse_size("512mb"), Some(512 * 1024 * 1024));
    assert_eq!(parse_size("64kb"), Some(64 * 1024));
    assert_eq!(parse_size("100k"), Some(100_000));
    assert_eq!(parse_size("1GB"), Some(1024 * 1024 * 1024));
    assert_eq!(parse_size("12"), Some(12));
    assert_eq!(parse_size("12 parsecs"), None);
    assert_eq!(parse_size(""), None);
}

#[test]
fn tls_off_and_tls_map_both_parse() {
    let raw = parse(
        "listen:\n  - address: \"127.0.0.1:1\"\n    tls: off\n  - address: \"127.0.0.1:2\"\n    tls: { cert: a, key: b, min_version: \"1.3\" }\nupstream: { address: \"127.0.0.1:6379\" }\n",
    )
    .unwrap();
    assert!(matches!(raw.listen[0].tls, RawTls::Off));
    assert!(matches!(&raw.listen[1].tls, RawTls::On(t) if t.min_version.as_deref() == Some("1.3")));
}

#[test]
fn parse_errors_are_one_line_and_name_the_field() {
    let err = parse("listen: []\nupstream: { address: x }\nbogus: 1\n").unwrap_err();
    assert!(!err.contains('\n'));
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn yaml_1_1_booleans_are_not_guessed() {
    // `tls: no` is neither `off` nor a map: refused rather than read as "false".
    assert!(parse(
        "listen:\n  - address: \"127.0.0.1:1\"\n    tls: no\nupstream: { address: x }\n"
    )
    .is_err());
}
