//! Loading and validating the plugin configuration in `on_configure`.

use meshwarden_common::{FilterConfig, KindSpec, ValidationError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;

/// Reads the plugin configuration Envoy hands to `on_configure` and validates it as a
/// [`FilterConfig`] of `S` (missing or empty configuration = no policies). On failure the
/// error is logged at error level, naming the filter and the offending field; the caller
/// returns `false` so Envoy rejects (NACKs) the configuration and keeps the previous one.
pub fn load_config<S: KindSpec>(filter: &str) -> Option<FilterConfig<S>> {
    let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            log::error!("{filter} filter: cannot read plugin configuration: {status:?}");
            return None;
        }
    };
    match FilterConfig::<S>::parse(&bytes) {
        Ok(config) => Some(config),
        Err(err) => {
            log_rejection(filter, &err);
            None
        }
    }
}

/// Logs a rejected configuration with its field path.
pub fn log_rejection(filter: &str, err: &ValidationError) {
    let field = if err.field.is_empty() {
        "(configuration)"
    } else {
        err.field.as_str()
    };
    log::error!(
        "{filter} filter: configuration rejected: field {field}: {}",
        err.message
    );
}
