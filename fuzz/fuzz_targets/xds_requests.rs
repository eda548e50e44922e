//! Fuzz target: [`meshwarden_xds::fuzzing::requests`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshwarden_xds::fuzzing::requests(data));
