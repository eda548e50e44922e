//! Fuzz target: [`meshwarden_cp::properties::filter_configs`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshwarden_cp::properties::filter_configs(data));
