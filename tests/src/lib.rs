//! Harness for meshwarden's end-to-end tests: real processes (control plane, Envoy), an
//! in-process echo upstream, free loopback ports and bounded waits.

pub mod cli;
pub mod collector;
pub mod control_plane;
pub mod envoy;
pub mod etcd;
pub mod istio;
pub mod paths;
pub mod ports;
pub mod process;
pub mod raw_http;
pub mod static_envoy;
pub mod tls;
pub mod upstream;
pub mod wait;

pub use cli::{Cli, CliOutput};
pub use collector::{CollectedSpan, Collector};
pub use control_plane::ControlPlane;
pub use envoy::{Envoy, EnvoyOptions, Layout};
pub use upstream::{EchoUpstream, RecordedRequest};
pub use wait::wait_until;
