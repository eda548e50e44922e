//! Fuzz target: [`meshwarden_cp::properties::trace_headers`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshwarden_cp::properties::trace_headers(data));
