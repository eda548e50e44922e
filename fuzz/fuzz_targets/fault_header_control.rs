//! Fuzz target: [`meshwarden_cp::properties::fault_header_control`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshwarden_cp::properties::fault_header_control(data));
