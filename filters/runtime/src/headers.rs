//! Header access through the byte-valued host calls: odd bytes never panic, failures are
//! logged and skipped. Request headers are read lazily ([`request_headers`]).

use crate::host::{host, Map};
use meshwarden_common::{HeaderSource, RequestHeaders};
use std::rc::Rc;

/// The current stream's request headers, read from the proxy on demand.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostRequestHeaders;

impl HeaderSource for HostRequestHeaders {
    fn one(&self, name: &str) -> Option<Vec<u8>> {
        host().header(Map::RequestHeaders, name)
    }

    fn all(&self) -> Vec<(String, Vec<u8>)> {
        host().headers(Map::RequestHeaders)
    }
}

/// A lazy view of the current stream's request headers: nothing is read until a lookup.
pub fn request_headers() -> RequestHeaders {
    RequestHeaders::lazy(Rc::new(HostRequestHeaders))
}

/// Replaces every value of response header `name` with `value`.
pub fn set_response_header(name: &str, value: &[u8]) {
    host().set_header(Map::ResponseHeaders, name, Some(value));
}

/// Adds a value of response header `name`.
pub fn add_response_header(name: &str, value: &[u8]) {
    host().add_header(Map::ResponseHeaders, name, value);
}

/// Removes every value of response header `name`.
pub fn remove_response_header(name: &str) {
    host().set_header(Map::ResponseHeaders, name, None);
}

/// The first value of response header `name`.
pub fn response_header(name: &str) -> Option<Vec<u8>> {
    host().header(Map::ResponseHeaders, name)
}

/// Every response header.
pub fn response_headers() -> Vec<(String, Vec<u8>)> {
    host().headers(Map::ResponseHeaders)
}

/// The upstream's `:status`.
pub fn response_status() -> Option<u16> {
    let s = response_header(":status")?;
    std::str::from_utf8(&s).ok()?.parse().ok()
}
