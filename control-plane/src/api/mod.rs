//! The gRPC policy API: [`PolicyApi`] (apply/get/list/delete/watch policies) and
//! [`ProxyStatusApi`] (connected proxies and what they accepted), served on the same port
//! as ADS, behind [`guard`] (authentication, authorisation, audit) when configured.

mod audit_service;
pub mod auth;
mod breaker_service;
mod capture_service;
mod codec;
mod convert;
mod diff;
pub mod guard;
pub(crate) mod halts;
pub mod pb;
mod policy;
pub(crate) mod status;
pub mod targets;

pub use audit_service::AuditApi;
pub use breaker_service::BreakerStatusApi;
pub use capture_service::CaptureApi;
pub use guard::ApiGuardLayer;
pub use policy::PolicyApi;
pub use status::ProxyStatusApi;
pub use targets::TargetGuard;

#[cfg(test)]
mod tests;
