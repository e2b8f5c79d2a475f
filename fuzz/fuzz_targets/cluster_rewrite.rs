#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| redward::fuzzing::cluster_rewrite(data));
