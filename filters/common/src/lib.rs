//! Policy model, validation and decision logic shared by the meshwarden filters and the
//! control plane. Everything here is plain Rust: it compiles natively (unit tests, control
//! plane) and to `wasm32-wasip1` (filters), so a policy the API accepts is one the filter
//! accepts.

pub mod batch;
pub mod capture;

pub mod circuitbreaker;
pub mod cluster;
pub mod document;
pub mod duration;
pub mod error;
pub mod fault;
pub mod filter_config;
pub mod grpc;
pub mod index;
pub mod limits;
pub mod matcher;
pub mod mirror;
pub mod names;
pub mod peer;
pub mod percentage;
mod proto;
pub mod random;
pub mod ratelimit;
pub mod request;
pub mod selector;
pub mod spec;
pub mod string_match;
pub mod trace;

pub use document::{Kind, PolicyDocument, API_VERSION};
pub use error::ValidationError;
pub use filter_config::{CompiledPolicy, FilterConfig};
pub use index::PolicyIndex;
pub use limits::FilterUsage;
pub use matcher::{CompiledMatch, RequestMatch};
pub use peer::{IdentityPattern, Peer};
pub use percentage::Percentage;
pub use request::{HeaderSource, RequestHeaders};
pub use selector::{NodeInfo, Selector};
pub use spec::KindSpec;
