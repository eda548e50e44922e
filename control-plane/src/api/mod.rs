//! The gRPC policy API: [`PolicyApi`] (apply/get/list/delete/watch policies) and
//! [`ProxyStatusApi`] (connected proxies and what they accepted), served on the same port
//! as ADS.

mod codec;
mod convert;
mod diff;
pub(crate) mod halts;
pub mod pb;
mod policy;
mod status;
pub mod targets;

pub use policy::PolicyApi;
pub use status::ProxyStatusApi;
pub use targets::TargetGuard;

#[cfg(test)]
mod tests;
