//! End-to-end tests: the control plane and the filters inside a real Envoy.
//! Each test starts its own processes on free loopback ports, so tests run in parallel.

mod capture;
mod circuit_breaker;
mod dashboards;
mod diff;
mod explain;
mod fault;
mod foundation;
mod global_ratelimit;
mod halt;
mod history;
mod hostile;
mod identity;
mod istio;
mod layout;
mod limits;
mod mirror;
mod oci;
mod operations;
mod ratelimit;
mod ratelimit_service;
mod recovery;
mod replicas;
mod security;
mod shedding;
mod soak;
mod spans;
mod support;
