//! [`Host`] over the proxy-wasm ABI. The SDK's `hostcalls` are used where they return a
//! `Result`; resuming and answering a stream go to the ABI directly, because the SDK's
//! wrappers panic when the stream has gone (possible from a timer).

// The only `unsafe` of the filters: raw ABI calls with pointer/length pairs.
#![allow(unsafe_code)]

use crate::host::{Body, CasMismatch, Host, LocalResponse, Map, MetricKind, Phase};
use meshwarden_common::grpc::grpc_service;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::time::{Duration, UNIX_EPOCH};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_continue_stream(stream_type: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

/// The proxy, through the proxy-wasm ABI.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasmHost;

fn map_type(map: Map) -> MapType {
    match map {
        Map::RequestHeaders => MapType::HttpRequestHeaders,
        Map::RequestTrailers => MapType::HttpRequestTrailers,
        Map::ResponseHeaders => MapType::HttpResponseHeaders,
        Map::ResponseTrailers => MapType::HttpResponseTrailers,
        Map::CallResponseHeaders => MapType::HttpCallResponseHeaders,
    }
}

impl Host for WasmHost {
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        crate::calls::count();
        hostcalls::get_map_value_bytes(map_type(map), name)
            .ok()
            .flatten()
    }

    fn headers(&self, map: Map) -> Vec<(String, Vec<u8>)> {
        crate::calls::count();
        hostcalls::get_map_bytes(map_type(map)).unwrap_or_else(|status| {
            log::warn!("cannot read headers ({map:?}): {status:?}");
            Vec::new()
        })
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> bool {
        crate::calls::count();
        match hostcalls::set_map_value_bytes(map_type(map), name, value) {
            Ok(()) => true,
            Err(status) => {
                log::warn!("cannot change header {name}: {status:?}");
                false
            }
        }
    }

    fn add_header(&self, map: Map, name: &str, value: &[u8]) -> bool {
        crate::calls::count();
        match hostcalls::add_map_value_bytes(map_type(map), name, value) {
            Ok(()) => true,
            Err(status) => {
                log::warn!("cannot add header {name}: {status:?}");
                false
            }
        }
    }

    fn body(&self, body: Body, start: usize, size: usize) -> Option<Vec<u8>> {
        crate::calls::count();
        let buffer = match body {
            Body::Request => BufferType::HttpRequestBody,
            Body::Response => BufferType::HttpResponseBody,
            Body::CallResponse => BufferType::HttpCallResponseBody,
            Body::GrpcCallResponse => BufferType::GrpcReceiveBuffer,
        };
        hostcalls::get_buffer(buffer, start, size).ok().flatten()
    }

    fn send_local_response(&self, r: &LocalResponse<'_>) -> bool {
        crate::calls::count();
        let headers = serialize_headers(r.headers);
        let grpc = r.grpc_status.map_or(-1, i32::from);
        // SAFETY: every pointer/length pair describes a live buffer for the whole call.
        unsafe {
            proxy_send_local_response(
                u32::from(r.status),
                r.details.as_ptr(),
                r.details.len(),
                r.body.as_ptr(),
                r.body.len(),
                headers.as_ptr(),
                headers.len(),
                grpc,
            ) == 0
        }
    }

    fn resume(&self, phase: Phase) -> bool {
        crate::calls::count();
        let stream = match phase {
            Phase::Request => 0,
            Phase::Response => 1,
        };
        // SAFETY: a plain ABI call with an integer argument.
        unsafe { proxy_continue_stream(stream) == 0 }
    }

    fn enter(&self, context_id: u32) -> bool {
        crate::calls::count();
        hostcalls::set_effective_context(context_id).is_ok()
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        crate::calls::count();
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        crate::calls::count();
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|_| CasMismatch)
    }

    fn now_ns(&self) -> u64 {
        crate::calls::count();
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    fn set_tick_period(&self, period: Duration) -> bool {
        crate::calls::count();
        hostcalls::set_tick_period(period).is_ok()
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        crate::calls::count();
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout)
            .map_err(|status| format!("{status:?}"))
    }

    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, String> {
        crate::calls::count();
        // Always a serialized GrpcService: a bare name that parses as one crashes Envoy.
        let upstream = grpc_service(cluster);
        // Through the SDK, which routes the answer to the calling context. It panics on a
        // host status other than Ok/ParseFailure/InternalFailure (Envoy returns those only);
        // an unknown cluster is a ParseFailure.
        hostcalls::dispatch_grpc_call(&upstream, service, method, vec![], Some(message), timeout)
            .map_err(|status| format!("{status:?}"))
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        crate::calls::count();
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(kind, name)
            .map_err(|status| log::warn!("cannot define metric {name}: {status:?}"))
            .ok()
    }

    fn add_metric(&self, id: u32, delta: i64) {
        crate::calls::count();
        if let Err(status) = hostcalls::increment_metric(id, delta) {
            log::debug!("metric update failed: {status:?}");
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        crate::calls::count();
        if let Err(status) = hostcalls::record_metric(id, value) {
            log::debug!("metric update failed: {status:?}");
        }
    }

    fn random(&self, buf: &mut [u8]) -> bool {
        crate::calls::count();
        getrandom::getrandom(buf).is_ok()
    }

    fn plugin_config(&self) -> Option<Vec<u8>> {
        match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => Some(bytes.unwrap_or_default()),
            Err(status) => {
                log::error!("cannot read the plugin configuration: {status:?}");
                None
            }
        }
    }
}

/// The ABI's header map encoding: count, then (name length, value length) pairs, then each
/// name and value followed by a NUL byte; integers little-endian u32.
fn serialize_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}
