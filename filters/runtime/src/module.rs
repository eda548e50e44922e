//! The proxy-wasm contexts of a module: a root context per plugin owning a [`Pipeline`],
//! and an HTTP context per request forwarding each callback to it. Only built for Wasm.

use crate::config::log_rejection;
use crate::host::host;
use crate::pipeline::{Flow, Pipeline, Request};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::cell::RefCell;
use std::rc::Rc;

/// Builds the pipeline of a plugin from its `root_id`.
pub type PipelineFactory = fn(root_id: &str) -> Pipeline;

thread_local! {
    static FACTORY: std::cell::Cell<Option<PipelineFactory>> = const { std::cell::Cell::new(None) };
}

/// Registers the module's root contexts. Call from `proxy_wasm::main!`.
pub fn install(factory: PipelineFactory) {
    // The host's level cannot be read yet (`_initialize` may not call back into Envoy);
    // `on_configure` syncs it.
    proxy_wasm::set_log_level(LogLevel::Info);
    FACTORY.with(|f| f.set(Some(factory)));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root {
            factory: FACTORY.with(|f| f.get()),
            pipeline: None,
            name: String::new(),
        })
    });
}

struct Root {
    factory: Option<PipelineFactory>,
    pipeline: Option<Rc<Pipeline>>,
    /// The plugin's root id, for logs.
    name: String,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        if let Some(p) = &self.pipeline {
            p.on_call_response(token, headers, body);
        }
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, _size: usize) {
        if let Some(p) = &self.pipeline {
            p.on_grpc_call_response(token, status);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Follow the host's level for the `wasm` component, so disabled levels cost nothing.
        proxy_wasm::set_log_level(proxy_wasm::hostcalls::get_log_level().unwrap_or(LogLevel::Info));
        let pipeline = match &self.pipeline {
            Some(p) => p.clone(),
            None => {
                let root_id = host()
                    .property(&["plugin_root_id"])
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let Some(factory) = self.factory else {
                    log::error!("meshwarden: no pipeline installed");
                    return false;
                };
                let p = Rc::new(factory(&root_id));
                self.name = match root_id.strip_prefix("meshwarden.") {
                    Some(stage) => stage.to_string(),
                    None if root_id.is_empty() => "meshwarden".into(),
                    None => root_id,
                };
                self.pipeline = Some(p.clone());
                p
            }
        };
        let Some(config) = host().plugin_config() else {
            return false;
        };
        match pipeline.configure(&config) {
            Ok(()) => {
                log::info!("{} filter: {}", self.name, pipeline.summary());
                true
            }
            Err(err) => {
                log_rejection(&self.name, &err);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(p) = &self.pipeline {
            p.on_tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let Some(pipeline) = self.pipeline.clone() else {
            return Some(Box::new(NoopHttp));
        };
        let request = pipeline.request(context_id);
        Some(Box::new(Http {
            request: Rc::new(RefCell::new(request)),
            pipeline,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    pipeline: Rc<Pipeline>,
    request: Rc<RefCell<Request>>,
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl Http {
    fn with(&self, f: impl FnOnce(&mut Request) -> Flow) -> Action {
        match self.request.try_borrow_mut() {
            Ok(mut r) if !r.is_empty() => action(f(&mut r)),
            _ => Action::Continue,
        }
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let me = self.request.clone();
        if let Ok(mut r) = self.request.try_borrow_mut() {
            r.on_grpc_response(&self.pipeline, &me, token, status, size);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Ok(mut r) = self.request.try_borrow_mut() {
            r.on_done(&self.pipeline);
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let me = self.request.clone();
        let pipeline = self.pipeline.clone();
        self.with(|r| r.on_request_headers(&pipeline, &me, end_of_stream))
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.with(|r| r.on_request_body(size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        self.with(Request::on_request_trailers)
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let me = self.request.clone();
        let pipeline = self.pipeline.clone();
        self.with(|r| r.on_response_headers(&pipeline, &me, end_of_stream))
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.with(|r| r.on_response_body(size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        self.with(Request::on_response_trailers)
    }

    fn on_log(&mut self) {
        if let Ok(mut r) = self.request.try_borrow_mut() {
            r.on_done(&self.pipeline);
        }
        crate::calls::report();
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Ok(mut r) = self.request.try_borrow_mut() {
            r.on_done(&self.pipeline);
        }
    }
}

/// An HTTP context that does nothing (before the first configuration).
struct NoopHttp;

impl Context for NoopHttp {}
impl HttpContext for NoopHttp {}
