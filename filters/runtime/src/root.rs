//! The root context every meshwarden filter uses.

use crate::config::{load_config, log_rejection};
use meshwarden_common::{FilterConfig, KindSpec, ValidationError};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::rc::Rc;

/// What a filter module provides; [`install`] does the rest.
pub trait Filter: 'static {
    /// The policy kind's spec.
    type Spec: KindSpec + 'static;
    /// Short filter name (`trace`): log prefix and metric names.
    const NAME: &'static str;

    /// Checks beyond [`FilterConfig::parse`]; an error rejects the configuration.
    fn check(_config: &FilterConfig<Self::Spec>) -> Result<(), ValidationError> {
        Ok(())
    }

    /// Called in each VM when a configuration is accepted (define metrics, reset state).
    fn configured(_config: &FilterConfig<Self::Spec>) {}

    /// The per-request context, sharing the current configuration.
    fn http_context(config: Rc<FilterConfig<Self::Spec>>, context_id: u32) -> Box<dyn HttpContext>;
}

/// Registers filter `F` as the module's root context. Call from `proxy_wasm::main!`.
pub fn install<F: Filter>() {
    // The host's level cannot be read yet (`_initialize` may not call back into Envoy);
    // `on_configure` syncs it.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::<F>::default()) });
}

/// Follows the host's log level for the `wasm` component, so disabled levels cost nothing.
fn sync_log_level() {
    proxy_wasm::set_log_level(hostcalls::get_log_level().unwrap_or(LogLevel::Info));
}

struct Root<F: Filter> {
    config: Rc<FilterConfig<F::Spec>>,
}

impl<F: Filter> Default for Root<F> {
    fn default() -> Self {
        Self {
            config: Rc::new(FilterConfig::default()),
        }
    }
}

impl<F: Filter> Context for Root<F> {}

impl<F: Filter> RootContext for Root<F> {
    fn on_configure(&mut self, _size: usize) -> bool {
        sync_log_level();
        let Some(config) = load_config::<F::Spec>(F::NAME) else {
            return false;
        };
        if let Err(err) = F::check(&config) {
            log_rejection(F::NAME, &err);
            return false;
        }
        F::configured(&config);
        log::info!(
            "{} filter: configured with {} policies",
            F::NAME,
            config.policies.len()
        );
        self.config = Rc::new(config);
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(F::http_context(Rc::clone(&self.config), context_id))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// An HTTP context that does nothing (every callback continues).
pub struct NoopHttp;

impl Context for NoopHttp {}
impl HttpContext for NoopHttp {}

/// The check of a pass-through filter: only an empty policy list is accepted, so a policy
/// the module would not enforce is rejected (NACKed) instead of silently ignored.
pub fn require_no_policies<S>(
    filter: &str,
    config: &FilterConfig<S>,
) -> Result<(), ValidationError> {
    if config.policies.is_empty() {
        return Ok(());
    }
    Err(ValidationError::new(
        "policies",
        format!(
            "this build of the {filter} filter does not enforce policies yet; only an empty list is accepted"
        ),
    ))
}

/// Defines a pass-through filter module for a policy kind whose enforcement is not built
/// yet: it accepts only an empty policy list and does nothing per request.
///
/// ```ignore
/// meshwarden_filter_runtime::passthrough_filter!("fault", meshwarden_common::fault::FaultSpec);
/// ```
#[macro_export]
macro_rules! passthrough_filter {
    ($name:literal, $spec:ty) => {
        struct PassThroughFilter;

        impl $crate::Filter for PassThroughFilter {
            type Spec = $spec;
            const NAME: &'static str = $name;

            fn check(
                config: &$crate::FilterConfig<$spec>,
            ) -> ::core::result::Result<(), $crate::ValidationError> {
                $crate::require_no_policies($name, config)
            }

            fn http_context(
                _: ::std::rc::Rc<$crate::FilterConfig<$spec>>,
                _: u32,
            ) -> ::std::boxed::Box<dyn $crate::proxy_wasm::traits::HttpContext> {
                ::std::boxed::Box::new($crate::NoopHttp)
            }
        }

        $crate::proxy_wasm::main! {{
            $crate::install::<PassThroughFilter>();
        }}
    };
}
