//! The proxy's shared data (every worker of one Envoy; scoped to the VM id) as a
//! [`SharedStore`], with the compare-and-swap update loop every stage uses.

use crate::host::host;
pub use meshwarden_common::ratelimit::store::{
    ensure_exists, update, CasMismatch, Contended, SharedStore, Update,
};

/// Shared data of the current proxy.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostShared;

impl SharedStore for HostShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        host().shared_get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        host().shared_set(key, value, cas)
    }
}

/// The bytes at `key` (`None` if unset).
pub fn read(key: &str) -> Option<Vec<u8>> {
    host().shared_get(key).0
}
