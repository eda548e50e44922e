//! The meshwarden fault stage: for the first `FaultPolicy` whose match and source select a
//! request (and that has not expired), inject the faults it draws — request delay, abort
//! (HTTP or gRPC trailers-only), response delay, response override — within the policy's
//! safety rails (guard, dry run, `maxActiveFaults`, TTL/expiry). The decisions live in
//! `meshwarden_common::fault`; this stage carries them out through the filter runtime.
//!
//! Delays park the stream on the pipeline's timer (1 ms ticks while anything waits, off
//! otherwise), which releases it at the tick nearest its deadline. State shared across
//! workers (active-fault counters, guard windows, when a policy version was first seen)
//! lives in proxy shared data.
//!
//! Metrics: `meshwarden_fault_<metric>{policy="..."}`, see [`metrics`].

mod config;
mod metrics;
mod shared;
mod stream;

use config::ActiveConfig;
use meshwarden_common::fault::{FaultSpec, SplitMix64};
use meshwarden_filter_runtime::host::now_ms;
use meshwarden_filter_runtime::ValidationError;
use meshwarden_filter_runtime::{parse_config, random, Commit, Stage, StreamStage};
use std::cell::RefCell;
use std::rc::Rc;
use stream::FaultStream;

/// The fault stage of one worker.
pub struct FaultStage {
    config: RefCell<Rc<ActiveConfig>>,
    rng: Rc<RefCell<SplitMix64>>,
}

impl Default for FaultStage {
    fn default() -> Self {
        Self {
            config: RefCell::default(),
            rng: Rc::new(RefCell::new(SplitMix64(random::next_u64()))),
        }
    }
}

impl Stage for FaultStage {
    fn name(&self) -> &'static str {
        "fault"
    }

    fn prepare(&self, bytes: &[u8]) -> Result<Commit<'_>, ValidationError> {
        let config = parse_config::<FaultSpec>(bytes)?;
        Ok(Box::new(move || {
            let config = ActiveConfig::new(config, now_ms() as i64);
            *self.config.borrow_mut() = Rc::new(config);
        }))
    }

    fn policies(&self) -> usize {
        self.config.borrow().policies.len()
    }

    fn stream(&self, _: u32) -> Option<Box<dyn StreamStage>> {
        let config = self.config.borrow();
        if config.policies.is_empty() {
            return None;
        }
        Some(Box::new(FaultStream::new(config.clone(), self.rng.clone())))
    }
}
