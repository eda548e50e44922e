//! The worker's root context: loads the configuration and runs the delay timer. (The
//! runtime's generic root has no timer, so the fault filter brings its own.)

use crate::config::ActiveConfig;
use crate::host;
use crate::stream::{self, FaultStream};
use crate::worker::{Wake, Worker};
use meshwarden_common::fault::FaultSpec;
use meshwarden_filter_runtime::load_config;
use meshwarden_filter_runtime::proxy_wasm::{self, hostcalls};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::cell::RefCell;
use std::rc::Rc;

/// Root context of one worker VM.
pub struct FaultRoot {
    worker: Rc<RefCell<Worker>>,
}

impl FaultRoot {
    /// A root context with an empty configuration.
    pub fn new(seed: u64) -> Self {
        Self {
            worker: Rc::new(RefCell::new(Worker::new(seed))),
        }
    }
}

impl Context for FaultRoot {}

impl RootContext for FaultRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Follow the host's log level, so disabled levels cost nothing.
        proxy_wasm::set_log_level(hostcalls::get_log_level().unwrap_or(LogLevel::Info));
        // Invalid configuration: logged with its field; `false` makes Envoy reject it and
        // keep the previous one.
        let Some(config) = load_config::<FaultSpec>("fault") else {
            return false;
        };
        let config = ActiveConfig::new(config, crate::now_ms() as i64);
        log::info!(
            "fault filter: configured with {} policies",
            config.policies.len()
        );
        self.worker.borrow_mut().config = Rc::new(config);
        true
    }

    fn on_tick(&mut self) {
        let due = self.worker.borrow_mut().release_due(crate::now_us());
        for (id, waiting) in due {
            if !host::enter(id) {
                continue;
            }
            match waiting.wake {
                Wake::ResumeRequest => {
                    host::resume_request();
                }
                Wake::ResumeResponse => {
                    host::resume_response();
                }
                Wake::Abort(abort) => {
                    if !stream::send_abort(&waiting.config, waiting.policy, &abort) {
                        host::resume_request();
                    }
                }
                Wake::OverrideResponse => {
                    if !stream::send_override(&waiting.config, waiting.policy) {
                        host::resume_response();
                    }
                }
            }
        }
        self.worker.borrow_mut().idle_timer();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FaultStream::new(context_id, self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
