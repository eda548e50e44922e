//! Reporting a rejected plugin configuration.

use meshwarden_common::ValidationError;

/// Logs a rejected configuration with its field path, at error level: Envoy then rejects
/// (NACKs) the configuration and keeps the previous one.
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
