//! The meshwarden rate-limit filter: token buckets and concurrency limits from
//! `RateLimitPolicy`, shared by every worker of the proxy through shared data.
//!
//! All decisions live in `meshwarden_common::ratelimit`; this module only reads the
//! request, asks the [`Limiter`], answers or forwards, adds response headers, releases
//! in-flight counts when the stream ends, and counts.

mod metrics;
mod store;

use meshwarden_common::ratelimit::{
    release_all, Decision, Held, Limiter, RateLimitSpec, Rejection, Request,
};
use meshwarden_filter_runtime::headers::request_headers;
use meshwarden_filter_runtime::{install, Filter, FilterConfig};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, GrpcStatusCode, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use store::HostStore;

proxy_wasm::main! {{
    install::<RateLimitFilter>();
}}

thread_local! {
    /// The limiter compiled from the current configuration of this VM.
    static LIMITER: RefCell<Rc<Limiter>> = RefCell::new(Rc::new(Limiter::default()));
}

struct RateLimitFilter;

impl Filter for RateLimitFilter {
    type Spec = RateLimitSpec;
    const NAME: &'static str = "ratelimit";

    fn configured(config: &FilterConfig<RateLimitSpec>) {
        let limiter = Limiter::new(config);
        limiter.prepare(&HostStore);
        metrics::define(&limiter);
        LIMITER.with(|l| *l.borrow_mut() = Rc::new(limiter));
    }

    fn http_context(_: Rc<FilterConfig<RateLimitSpec>>, _: u32) -> Box<dyn HttpContext> {
        Box::new(RateLimitHttp {
            limiter: LIMITER.with(|l| Rc::clone(&l.borrow())),
            held: Vec::new(),
            response_headers: Vec::new(),
        })
    }
}

struct RateLimitHttp {
    limiter: Rc<Limiter>,
    /// In-flight counts to release when the stream ends.
    held: Vec<Held>,
    /// Headers for the upstream's response (empty after a local answer).
    response_headers: Vec<(String, String)>,
}

impl RateLimitHttp {
    /// Releases the in-flight counts once, whichever end-of-stream callback comes first.
    fn finish(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        for (policy, released) in release_all(&HostStore, &held) {
            metrics::left(&policy, released);
        }
    }

    fn reject(&self, rejection: &Rejection, grpc: bool) {
        if grpc {
            let code = if rejection.grpc_status == 8 {
                GrpcStatusCode::ResourceExhausted
            } else {
                GrpcStatusCode::Unavailable
            };
            let metadata: Vec<(&str, &[u8])> = rejection
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            if let Err(status) =
                hostcalls::send_grpc_response(code, Some(rejection.grpc_message()), metadata)
            {
                log::warn!("ratelimit filter: cannot send gRPC answer: {status:?}");
            }
        } else {
            let headers = rejection.http_headers();
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let body = rejection.body();
            if let Err(status) = hostcalls::send_http_response(
                u32::from(rejection.status),
                headers,
                Some(body.as_bytes()),
            ) {
                log::warn!("ratelimit filter: cannot send local answer: {status:?}");
            }
        }
    }
}

impl Context for RateLimitHttp {
    fn on_done(&mut self) -> bool {
        self.finish();
        true
    }
}

impl Drop for RateLimitHttp {
    fn drop(&mut self) {
        self.finish();
    }
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn is_grpc(headers: &meshwarden_common::RequestHeaders) -> bool {
    headers
        .get("content-type")
        .is_some_and(|ct| ct.starts_with(b"application/grpc"))
}

impl HttpContext for RateLimitHttp {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.limiter.is_empty() {
            return Action::Continue;
        }
        let headers = request_headers();
        let peer = if self.limiter.needs_peer() {
            hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
        } else {
            None
        };
        let verdict = self.limiter.check(
            &HostStore,
            &Request {
                headers: &headers,
                peer: peer.as_deref(),
            },
            now_ns(),
        );
        metrics::record(&verdict.events);
        self.held = verdict.held;
        match verdict.decision {
            Decision::Allow { response_headers } => {
                self.response_headers = response_headers;
                Action::Continue
            }
            Decision::Reject(rejection) => {
                self.reject(&rejection, is_grpc(&headers));
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            if let Err(status) = hostcalls::add_map_value_bytes(
                MapType::HttpResponseHeaders,
                &name,
                value.as_bytes(),
            ) {
                log::warn!("ratelimit filter: cannot add response header {name}: {status:?}");
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.finish();
    }
}
