//! The host interface: everything a filter stage may ask of the proxy. On `wasm32` it is
//! [`crate::wasm_host::WasmHost`] (the proxy-wasm ABI); natively it is
//! [`crate::fake_host::FakeHost`], so stages and the pipeline run in unit tests.

use std::time::Duration;

/// A header map of the current stream (or of a call-out's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    CallResponseHeaders,
}

/// A body buffer of the current stream (or of a call-out's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Request,
    Response,
    CallResponse,
    /// The message of a gRPC call-out's answer.
    GrpcCallResponse,
}

/// Which direction of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
}

/// Kind of a proxy metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic; `_total` is appended to the name.
    Counter,
    /// Summed across workers (Envoy `Accumulate` mode).
    Gauge,
    Histogram,
}

/// A shared-data write lost its compare-and-swap race.
pub use meshwarden_common::ratelimit::store::CasMismatch;

/// An answer the proxy sends instead of the upstream's.
#[derive(Debug, Clone, Copy)]
pub struct LocalResponse<'a> {
    /// HTTP status (200 for a gRPC answer).
    pub status: u16,
    pub headers: &'a [(&'a str, &'a str)],
    /// HTTP body, or the `grpc-message` of a gRPC answer.
    pub body: &'a [u8],
    /// gRPC status code: a trailers-only gRPC answer.
    pub grpc_status: Option<u8>,
    /// Recorded by Envoy as `%RESPONSE_CODE_DETAILS%`.
    pub details: &'a str,
}

/// What the proxy offers a filter. Every method reports failure in its return value
/// (never panics): a stream may vanish between two calls.
pub trait Host {
    /// The first value of header `name` in `map`.
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>>;
    /// Every header of `map`, in order.
    fn headers(&self, map: Map) -> Vec<(String, Vec<u8>)>;
    /// Replaces (or with `None` removes) every value of `name` in `map`.
    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> bool;
    /// Adds a value of `name` to `map`.
    fn add_header(&self, map: Map, name: &str, value: &[u8]) -> bool;
    /// `size` bytes of a body from `start`.
    fn body(&self, body: Body, start: usize, size: usize) -> Option<Vec<u8>>;
    /// Answers the current stream locally.
    fn send_local_response(&self, response: &LocalResponse<'_>) -> bool;
    /// Resumes a paused direction of the current stream.
    fn resume(&self, phase: Phase) -> bool;
    /// Makes stream `context_id` current (from a timer); `false` if it is gone.
    fn enter(&self, context_id: u32) -> bool;

    /// A shared-data value (shared by every worker of the proxy) and its version.
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes a shared-data value if `cas` still matches (always, without `cas`).
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch>;

    /// Wall clock, nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u64;
    /// Sets the root context's timer period (zero: off).
    fn set_tick_period(&self, period: Duration) -> bool;
    /// Sends an HTTP call-out from the root context; its token.
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String>;
    /// Sends a unary gRPC call-out from the current stream (its answer comes to that
    /// stream: [`crate::pipeline::Request::on_grpc_response`]); its token. `message` is the
    /// serialized request (no gRPC framing); the proxy gives up after `timeout`. `cluster` is
    /// a plain cluster name (at most [`meshwarden_common::grpc::MAX_CLUSTER_LEN`]
    /// characters); the Wasm host sends it as a serialized `GrpcService`
    /// ([`meshwarden_common::grpc::grpc_service`]).
    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, String>;
    /// A proxy property (`["source", "address"]`).
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;

    /// Defines a metric; its id.
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;
    /// Adds `delta` to a counter or gauge.
    fn add_metric(&self, id: u32, delta: i64);
    /// Sets a gauge or records a histogram value.
    fn record_metric(&self, id: u32, value: u64);

    /// Fills `buf` from the host's random source; `false` if it refused.
    fn random(&self, buf: &mut [u8]) -> bool;
    /// The plugin configuration handed to `on_configure`.
    fn plugin_config(&self) -> Option<Vec<u8>>;
}

/// The host of this thread.
#[cfg(target_arch = "wasm32")]
pub fn host() -> &'static dyn Host {
    &crate::wasm_host::WasmHost
}

/// The host of this thread: the [`crate::fake_host::FakeHost`] installed by the test.
#[cfg(not(target_arch = "wasm32"))]
pub fn host() -> &'static dyn Host {
    crate::fake_host::current()
}

/// Wall clock in microseconds.
pub fn now_us() -> u64 {
    host().now_ns() / 1_000
}

/// Wall clock in milliseconds.
pub fn now_ms() -> u64 {
    host().now_ns() / 1_000_000
}

/// Proxy attributes holding the node id: `xds.node.id` (Envoy's attribute), then the
/// Wasm-only `node.id`.
const NODE_ID: [&[&str]; 2] = [&["xds", "node", "id"], &["node", "id"]];

/// The proxy's node id (as its xDS stream names it); empty if the proxy does not say.
pub fn node_id() -> String {
    NODE_ID
        .iter()
        .find_map(|path| host().property(path).filter(|v| !v.is_empty()))
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}
