//! Host-call accounting: with the `count-host-calls` feature (bench builds), every host
//! call made while a request is processed is counted, and the pipeline records the count
//! per request in the `meshwarden_host_calls_per_request` histogram. Without the feature
//! these are no-ops the compiler removes.

#[cfg(feature = "count-host-calls")]
thread_local! {
    static CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one host call.
#[inline(always)]
pub fn count() {
    #[cfg(feature = "count-host-calls")]
    CALLS.with(|c| c.set(c.get() + 1));
}

/// Calls counted since the last `take` (0 without the feature).
pub fn take() -> u64 {
    #[cfg(feature = "count-host-calls")]
    return CALLS.with(|c| c.replace(0));
    #[cfg(not(feature = "count-host-calls"))]
    0
}

/// Records the calls counted for the request that just ended in the
/// `meshwarden_host_calls_per_request` histogram (with `count-host-calls` only).
pub fn report() {
    #[cfg(feature = "count-host-calls")]
    {
        use crate::host::{host, MetricKind};
        thread_local! {
            static ID: Option<u32> =
                host().define_metric(MetricKind::Histogram, "meshwarden_host_calls_per_request");
        }
        let n = take();
        if let Some(id) = ID.with(|id| *id) {
            host().record_metric(id, n);
        }
        take();
    }
}
