//! The data-path benchmark's floor (`bench/mwbench`): the cheapest useful proxy-wasm HTTP
//! filter, which reads one request header and lets the request continue. Whatever a
//! meshwarden filter costs above this is its own work; this much is the price of any Rust
//! Wasm filter in Envoy's V8 runtime.
//!
//! Built for the benchmark only: `cargo build --profile wasm --target wasm32-wasip1
//! -p meshwarden-noop-filter`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopHttp))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopHttp;

impl Context for NoopHttp {}

impl HttpContext for NoopHttp {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // One host call, its result unused: the floor includes one header read.
        let _ = self.get_http_request_header_bytes("x-request-id");
        Action::Continue
    }
}
