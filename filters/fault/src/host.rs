//! Host calls the filter makes outside a stream's own callbacks (from the timer tick), where
//! the stream may have ended in the meantime. Unlike the SDK's wrappers, these report a
//! failure instead of panicking, so a vanished stream can never take the VM down.

use meshwarden_filter_runtime::proxy_wasm::hostcalls;

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

/// ABI stream types.
const STREAM_HTTP_REQUEST: u32 = 0;
const STREAM_HTTP_RESPONSE: u32 = 1;
/// ABI "no gRPC status".
const NO_GRPC_STATUS: i32 = -1;
/// Response code details Envoy records for an injected abort (`%RESPONSE_CODE_DETAILS%`).
const DETAILS: &str = "meshwarden_fault_abort";

/// Makes `context_id` the target of the following calls; `false` if it no longer exists.
pub fn enter(context_id: u32) -> bool {
    hostcalls::set_effective_context(context_id).is_ok()
}

/// Resumes the request of the effective stream.
pub fn resume_request() -> bool {
    unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) == 0 }
}

/// Resumes the response of the effective stream.
pub fn resume_response() -> bool {
    unsafe { proxy_continue_stream(STREAM_HTTP_RESPONSE) == 0 }
}

/// Answers the effective stream locally: HTTP `status` with `body`, or, with `grpc_status`,
/// a gRPC trailers-only answer whose `grpc-message` is `body`.
pub fn send_local_response(
    status: u32,
    headers: &[(&str, &str)],
    body: &str,
    grpc_status: Option<u8>,
) -> bool {
    let serialized = serialize_headers(headers);
    let grpc = grpc_status.map_or(NO_GRPC_STATUS, i32::from);
    unsafe {
        proxy_send_local_response(
            status,
            DETAILS.as_ptr(),
            DETAILS.len(),
            body.as_ptr(),
            body.len(),
            serialized.as_ptr(),
            serialized.len(),
            grpc,
        ) == 0
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
