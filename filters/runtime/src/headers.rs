//! Header access through the byte-valued host calls: odd bytes never panic, failures are
//! logged and skipped.

use meshwarden_common::RequestHeaders;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

/// A snapshot of the request headers (one host call). Empty if the host refuses.
pub fn request_headers() -> RequestHeaders {
    match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
        Ok(pairs) => RequestHeaders::new(pairs),
        Err(status) => {
            log::warn!("cannot read request headers: {status:?}");
            RequestHeaders::default()
        }
    }
}

/// Replaces every value of request header `name` with `value`.
pub fn set_request_header(name: &str, value: &[u8]) {
    set(MapType::HttpRequestHeaders, name, Some(value));
}

/// Removes every value of request header `name`.
pub fn remove_request_header(name: &str) {
    set(MapType::HttpRequestHeaders, name, None);
}

/// Replaces every value of response header `name` with `value`.
pub fn set_response_header(name: &str, value: &[u8]) {
    set(MapType::HttpResponseHeaders, name, Some(value));
}

/// Removes every value of response header `name`.
pub fn remove_response_header(name: &str) {
    set(MapType::HttpResponseHeaders, name, None);
}

fn set(map: MapType, name: &str, value: Option<&[u8]>) {
    if let Err(status) = hostcalls::set_map_value_bytes(map, name, value) {
        log::warn!("cannot change header {name}: {status:?}");
    }
}
