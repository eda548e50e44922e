//! meshwarden control plane: the durable policy store, the gRPC policy API, the ADS/ECDS
//! server that pushes policies to Envoy, metrics and health endpoints, and the `meshwarden`
//! CLI.

pub mod api;
pub mod audit;
pub mod backend;
pub mod bootstrap;
pub mod breakers;
pub mod capture;
pub mod cli;
pub mod explain;
pub mod halt;
pub mod http;
pub mod idle;
pub mod metrics;
pub mod policy_set;
/// Properties of the untrusted-input parsers (fuzz targets and proptest).
#[cfg(any(test, feature = "testing"))]
pub mod properties;
pub mod ratelimit_limits;
pub mod registry;
pub mod replicas;
pub mod store;
/// Test certificates, generated at run time.
#[cfg(any(test, feature = "testing"))]
pub mod test_pki;
pub mod tls;
pub mod xds;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod test_fixtures;
