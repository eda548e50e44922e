//! The proxy's shared data (scoped to this filter's VM id) as a [`SharedStore`].

use meshwarden_common::ratelimit::store::{CasMismatch, SharedStore};
use proxy_wasm::hostcalls;

/// `get_shared_data` / `set_shared_data` of the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|_| CasMismatch)
    }
}
