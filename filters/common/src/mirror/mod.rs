//! Traffic mirroring: the `MirrorPolicy` spec and the decisions the mirror filter takes —
//! targets and their generated cluster names, sampling (random or sticky), the method filter,
//! header rewriting, the body cap, the cross-worker rate cap, bounded per-worker buffers, and
//! diff mode (comparing each mirror's response with the primary's).

pub mod answer;
pub mod body;
pub mod diff;
pub mod headers;
pub mod method;
pub mod plan;
pub mod queue;
pub mod rate;
pub mod sampling;
mod spec;
pub mod target;

pub use plan::{CompiledMirror, CompiledTarget, Selection, SkipReason, Sticky};
pub use spec::{
    MirrorEntry, MirrorSpec, PercentSpec, StickySpec, CREDENTIAL_HEADERS, DEFAULT_MARKER_HEADER,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT, MAX_MAX_BODY_BYTES,
};
pub use target::{HostPort, MirrorTarget, ResolvedTarget, ServiceRef, HOST_CLUSTER_PREFIX};
