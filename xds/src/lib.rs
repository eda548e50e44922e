//! A generic xDS server, split by protocol rather than by resource type (the way
//! go-control-plane splits `pkg/server` from `pkg/cache`):
//!
//! - [`resource`]: a resource ready to send (name, version, packed body) and the aggregate
//!   version of a set of them;
//! - [`snapshot`]: what the server serves at one point in time — the only thing a
//!   resource type implements (by type URL, per node);
//! - [`observer`]: what the server reports (stream opened, resource sent / accepted /
//!   rejected) and its counters;
//! - [`sotw`] and [`delta`]: the two protocol state machines, written once for every type;
//! - [`server`]: the stream driver and the gRPC transports: the Aggregated Discovery Service
//!   and the per-type services (ECDS, CDS) on the same port.
//!
//! This crate knows nothing of what the resources mean; the compiler keeps that promise.

pub mod delta;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod observer;
pub mod resource;
pub mod server;
pub mod snapshot;
pub mod sotw;
mod stream;

#[cfg(test)]
mod tests;

pub use observer::{NoObserver, Observer, StreamInfo, StreamObserver, XdsStats};
pub use resource::{aggregate_version, Resource, Resources};
pub use server::{Admission, Protocol, Server, Transport, RESPONSE_BUFFER};
pub use snapshot::Snapshot;

/// Type URL of `TypedExtensionConfig` (ECDS).
pub const EXTENSION_CONFIG_TYPE: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// Type URL of `Cluster` (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
