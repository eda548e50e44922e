//! Fuzz target: [`meshwarden_cp::properties::policy_documents`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshwarden_cp::properties::policy_documents(data));
