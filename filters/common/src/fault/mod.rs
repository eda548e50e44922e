//! Fault injection: the `FaultPolicy` spec and the decisions the fault filter makes with it
//! (selection, sticky hashing, header-requested faults, expiry, the error-ratio guard).
//! Everything here is deterministic given its inputs; the filter supplies the clock, the
//! randomness and the shared state.

pub mod delay_queue;
pub mod grpc;
pub mod guard;
pub mod header_control;
pub mod plan;
pub mod select;
pub mod spec;
pub mod timestamp;

pub use crate::duration::DurationSpec;
pub use crate::random::{Random, SplitMix64};
pub use delay_queue::{DelayQueue, TickClock};
pub use grpc::GrpcCode;
pub use guard::GuardWindow;
pub use header_control::{AbortStatus, HeaderFaults};
pub use plan::{AbortPlan, AbortResponse, FaultPlan, DEFAULT_ABORT_BODY};
pub use select::{sticky_draw, Salt};
pub use spec::{
    AbortSpec, DelayRange, DelaySpec, FaultSpec, GuardSpec, HeaderControlSpec, HttpStatus,
    MissingKey, PercentSpec, ResponseOverrideSpec, SourceSpec, StickySpec,
};
pub use timestamp::Timestamp;
