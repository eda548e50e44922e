//! Every meshwarden stage, in filter-chain order (the order of [`Kind::CHAIN`]), and the
//! pipeline a plugin runs for its root id. Natively, the combined pipeline runs on the
//! runtime's fake host in the tests below.

use meshwarden_capture::CaptureStage;
use meshwarden_circuitbreaker::CircuitBreakerStage;
use meshwarden_common::Kind;
use meshwarden_fault::FaultStage;
use meshwarden_filter_runtime::{Pipeline, Stage};
use meshwarden_mirror::MirrorStage;
use meshwarden_ratelimit::RateLimitStage;
use meshwarden_trace::TraceStage;

/// A fresh stage of `kind`.
pub fn stage(kind: Kind) -> Box<dyn Stage> {
    match kind {
        Kind::TracePolicy => Box::<TraceStage>::default(),
        Kind::CapturePolicy => Box::<CaptureStage>::default(),
        Kind::RateLimitPolicy => Box::<RateLimitStage>::default(),
        Kind::CircuitBreakerPolicy => Box::<CircuitBreakerStage>::default(),
        Kind::FaultPolicy => Box::<FaultStage>::default(),
        Kind::MirrorPolicy => Box::<MirrorStage>::default(),
    }
}

/// Every stage, in filter-chain order, configured with one section per stage.
pub fn combined() -> Pipeline {
    Pipeline::combined(Kind::CHAIN.into_iter().map(stage).collect())
}

/// The pipeline for a plugin's root id: one stage for `trace`, `capture`, `ratelimit`,
/// `circuitbreaker`, `fault` or `mirror` (optionally prefixed `meshwarden.`), every stage otherwise.
pub fn pipeline_for_root_id(root_id: &str) -> Pipeline {
    let short = root_id.strip_prefix("meshwarden.").unwrap_or(root_id);
    match Kind::CHAIN.into_iter().find(|k| k.filter() == short) {
        Some(kind) => Pipeline::single(stage(kind)),
        None => combined(),
    }
}

#[cfg(test)]
mod tests;
