//! Fuzz target: [`meshwarden_cp::properties::mirror_diff`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshwarden_cp::properties::mirror_diff(data));
