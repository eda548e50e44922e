//! Open circuit breakers as proxies report them (`BreakerStatusService.Report`), for
//! `meshwarden status`: the last report of each (proxy, policy), in memory, forgotten
//! after [`STALE_AFTER`] without a new one (a proxy repeats a report that is not empty
//! every 10 s). Replicas publish what they hold ([`BreakerBoard::held`]); status takes the
//! newest report of each (proxy, policy) among them ([`attach`]), since a proxy's reports
//! reach whichever replica its cluster picks.

use crate::api::pb;
use crate::metrics::{counter, gauge, to_i64};
use meshwarden_common::circuitbreaker::report::{MAX_REPORTED, STALE_AFTER_MS};
use meshwarden_common::ratelimit::key::MAX_DESCRIPTION;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A report older than this is forgotten.
pub const STALE_AFTER: Duration = Duration::from_millis(STALE_AFTER_MS);
/// Most (proxy, policy) reports held; reports of new pairs beyond it are refused.
pub const MAX_HELD: usize = 100_000;
/// Longest node id or policy name accepted.
const MAX_NAME: usize = 253;

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Invalid(String),
    #[error("{MAX_HELD} breaker reports held already")]
    Full,
}

/// The reports this replica received; cheap to clone.
#[derive(Clone, Default)]
pub struct BreakerBoard {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    held: Mutex<HashMap<(String, String), pb::HeldBreakerReport>>,
    reports: AtomicU64,
    refused: AtomicU64,
}

impl fmt::Debug for BreakerBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBoard").finish_non_exhaustive()
    }
}

impl BreakerBoard {
    /// Keeps `report` as the current one of its (proxy, policy).
    pub fn report(&self, report: pb::BreakerReport) -> Result<(), ReportError> {
        let checked = check(report).inspect_err(|_| {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
        })?;
        let key = (checked.node_id.clone(), checked.policy.clone());
        let now = unix_ms(SystemTime::now());
        let mut held = self.inner.held.lock().expect("breaker board lock");
        if held.len() >= MAX_HELD && !held.contains_key(&key) {
            held.retain(|_, h| fresh(h, now));
            if held.len() >= MAX_HELD {
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                return Err(ReportError::Full);
            }
        }
        held.insert(
            key,
            pb::HeldBreakerReport {
                report: Some(checked),
                received_unix_ms: now,
            },
        );
        self.inner.reports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The reports still current (stale ones are dropped).
    pub fn held(&self) -> Vec<pb::HeldBreakerReport> {
        let now = unix_ms(SystemTime::now());
        let mut held = self.inner.held.lock().expect("breaker board lock");
        held.retain(|_, h| fresh(h, now));
        held.values().cloned().collect()
    }
}

/// Fills each proxy's open breakers from the newest current report of each of its
/// policies among `reports` (this replica's and the others'). A proxy with several rows
/// (one per ECDS stream, in Istio) gets them on one: its first connected row, or its first.
pub fn attach(proxies: &mut [pb::ProxyStatus], reports: Vec<pb::HeldBreakerReport>) {
    let now = unix_ms(SystemTime::now());
    let mut newest: BTreeMap<(String, String), pb::HeldBreakerReport> = BTreeMap::new();
    for h in reports.into_iter().filter(|h| fresh(h, now)) {
        let Some(r) = &h.report else { continue };
        let key = (r.node_id.clone(), r.policy.clone());
        match newest.get(&key) {
            Some(old) if old.received_unix_ms >= h.received_unix_ms => {}
            _ => {
                newest.insert(key, h);
            }
        }
    }
    let mut holder: HashMap<&str, usize> = HashMap::new();
    for (i, p) in proxies.iter().enumerate() {
        let first = holder.entry(p.node_id.as_str()).or_insert(i);
        if p.connected && !proxies[*first].connected {
            *first = i;
        }
    }
    let holders: HashSet<usize> = holder.into_values().collect();
    for (i, p) in proxies.iter_mut().enumerate() {
        p.open_breakers.clear();
        p.open_breaker_count = 0;
        if !holders.contains(&i) {
            continue;
        }
        let reports = newest
            .range((p.node_id.clone(), String::new())..)
            .take_while(|((node, _), _)| *node == p.node_id)
            .filter_map(|(_, h)| h.report.as_ref());
        for r in reports {
            p.open_breakers.extend(r.breakers.iter().cloned());
            p.open_breaker_count = p.open_breaker_count.saturating_add(r.total);
        }
    }
}

/// Milliseconds since the Unix epoch, as status reports times.
fn unix_ms(t: SystemTime) -> i64 {
    crate::api::status::unix_ms(Some(t))
}

fn fresh(h: &pb::HeldBreakerReport, now_ms: i64) -> bool {
    now_ms.saturating_sub(h.received_unix_ms) <= STALE_AFTER.as_millis() as i64
}

/// The report with its bounds checked: names present and short, states known, at most
/// [`MAX_REPORTED`] breakers, each of the report's policy.
fn check(mut r: pb::BreakerReport) -> Result<pb::BreakerReport, ReportError> {
    let invalid = |m: String| Err(ReportError::Invalid(m));
    for (field, v) in [("node_id", &r.node_id), ("policy", &r.policy)] {
        if v.is_empty() || v.len() > MAX_NAME {
            return invalid(format!("{field} must be 1 to {MAX_NAME} bytes"));
        }
    }
    if r.breakers.len() > MAX_REPORTED {
        return invalid(format!(
            "breakers: {} entries, more than {MAX_REPORTED}",
            r.breakers.len()
        ));
    }
    for (i, b) in r.breakers.iter_mut().enumerate() {
        if !matches!(b.state.as_str(), "open" | "half_open") {
            return invalid(format!(
                "breakers[{i}].state must be open or half_open, got {:?}",
                b.state
            ));
        }
        if b.descriptor.len() > MAX_DESCRIPTION {
            return invalid(format!(
                "breakers[{i}].descriptor is longer than {MAX_DESCRIPTION} bytes"
            ));
        }
        b.policy.clone_from(&r.policy);
    }
    r.total = r.total.max(r.breakers.len() as u32);
    Ok(r)
}

impl Collector for BreakerBoard {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let i = &self.inner;
        counter(
            &mut enc,
            "meshwarden_breaker_reports",
            "Breaker status reports received from proxies.",
            i.reports.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "meshwarden_breaker_reports_refused",
            "Breaker status reports refused (malformed, or too many held).",
            i.refused.load(Ordering::Relaxed),
        )?;
        let open: u64 = self
            .held()
            .iter()
            .filter_map(|h| h.report.as_ref())
            .map(|r| u64::from(r.total))
            .sum();
        gauge(
            &mut enc,
            "meshwarden_open_breakers",
            "Circuit breakers not closed, as proxies reported them to this replica.",
            to_i64(open),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, policy: &str, open: &[&str]) -> pb::BreakerReport {
        pb::BreakerReport {
            node_id: node.into(),
            policy: policy.into(),
            breakers: open
                .iter()
                .map(|d| pb::OpenBreaker {
                    policy: String::new(),
                    descriptor: (*d).into(),
                    state: "open".into(),
                    since_unix_ms: 1,
                })
                .collect(),
            total: open.len() as u32,
        }
    }

    fn row(node: &str) -> pb::ProxyStatus {
        pb::ProxyStatus {
            node_id: node.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_newest_report_of_each_policy_wins_across_replicas() {
        let a = BreakerBoard::default();
        a.report(report("n1", "cb", &["x", "y"])).unwrap();
        a.report(report("n1", "other", &[""])).unwrap();
        a.report(report("n2", "cb", &["z"])).unwrap();
        let mut held = a.held();
        // Another replica got a newer, empty report of n1/cb: the breakers closed.
        let mut newer = pb::HeldBreakerReport {
            report: Some(report("n1", "cb", &[])),
            received_unix_ms: unix_ms(SystemTime::now()) + 10,
        };
        held.push(newer.clone());
        // n1 has two rows (two ECDS streams); the connected one shows its breakers.
        let mut rows = [row("n1"), row("n2"), row("n3"), row("n1")];
        rows[3].connected = true;
        attach(&mut rows, held);
        assert!(rows[0].open_breakers.is_empty());
        rows.swap(0, 3);
        let n1: Vec<(&str, &str)> = rows[0]
            .open_breakers
            .iter()
            .map(|b| (b.policy.as_str(), b.descriptor.as_str()))
            .collect();
        assert_eq!(n1, [("other", "")]);
        assert_eq!(rows[0].open_breaker_count, 1);
        assert_eq!(rows[1].open_breakers[0].descriptor, "z");
        assert!(rows[2].open_breakers.is_empty());
        // A stale report is ignored.
        newer.received_unix_ms -= STALE_AFTER.as_millis() as i64 + 1_000;
        let mut rows = [row("n1")];
        attach(&mut rows, vec![newer]);
        assert!(rows[0].open_breakers.is_empty());
    }

    #[test]
    fn malformed_reports_are_refused_with_the_field() {
        let b = BreakerBoard::default();
        let e = b.report(report("", "cb", &[])).unwrap_err();
        assert!(e.to_string().starts_with("node_id"), "{e}");
        let mut r = report("n", "cb", &["x"]);
        r.breakers[0].state = "closed".into();
        let e = b.report(r).unwrap_err();
        assert!(e.to_string().starts_with("breakers[0].state"), "{e}");
        let many: Vec<String> = (0..=MAX_REPORTED).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = b.report(report("n", "cb", &many)).unwrap_err();
        assert!(e.to_string().starts_with("breakers:"), "{e}");
        assert!(b.held().is_empty());
    }
}
