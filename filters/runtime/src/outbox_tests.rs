//! The outbox's rules with a recording transport on the fake host.

use super::*;
use crate::fake_host::FakeHost;
use meshwarden_common::duration::DurationSpec;

/// Sends `<dropped>:<records>` as an HTTP call-out to `cluster` (refused if empty); an
/// answer is a status, 0 accepting.
#[derive(Debug, PartialEq)]
struct Probe {
    cluster: &'static str,
}

/// Batches of `max_batch`, `max_queue` waiting, a flush interval of 100ms, timeout 1s.
fn limits(max_batch: u32, max_queue: u32) -> BatchLimits<100> {
    BatchLimits {
        max_batch,
        max_queue,
        flush_interval: DurationSpec::from_millis(100),
        timeout: DurationSpec::from_millis(1_000),
    }
}

fn probe(cluster: &'static str, max_batch: u32, max_queue: u32) -> Outbox<Probe> {
    Outbox::new("p", Probe { cluster }, limits(max_batch, max_queue))
}

impl Transport for Probe {
    type Item = u32;
    type Answer = u32;
    const COUNTERS: Counters = Counters {
        metrics: PolicyMetrics::new("test"),
        sent: "sent",
        dropped: "dropped",
        failed: "failed",
        records: "records",
    };

    fn cluster(&self) -> &str {
        self.cluster
    }

    fn send(&self, _policy: &str, batch: &[u32], dropped: u64) -> Result<u32, String> {
        if self.cluster.is_empty() {
            return Err("BadArgument".into());
        }
        let body = format!("{dropped}:{batch:?}");
        crate::host::host().http_call(
            self.cluster,
            &[],
            Some(body.as_bytes()),
            Duration::from_secs(1),
        )
    }

    fn judge(&self, status: u32) -> Result<(), String> {
        match status {
            0 => Ok(()),
            s => Err(format!("answered {s}")),
        }
    }
}

fn metric(host: &FakeHost, name: &str) -> i64 {
    host.metric(&format!("meshwarden_test_{name}_total.policy.p"))
}

fn bodies(host: &FakeHost) -> Vec<String> {
    let calls = host.calls.borrow();
    calls
        .iter()
        .map(|c| String::from_utf8_lossy(c.body.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

fn tokens(host: &FakeHost) -> Vec<u32> {
    host.calls.borrow().iter().map(|c| c.token).collect()
}

#[test]
fn a_full_queue_drops_and_batches_leave_at_flush_with_the_drops_since_the_last() {
    let host = FakeHost::install();
    let o = probe("c", 2, 3);
    (1..=4).for_each(|i| o.push(i));
    assert_eq!(metric(host, "dropped"), 1, "a full queue drops");
    assert!(host.calls.borrow().is_empty(), "nothing leaves on push");
    o.flush();
    assert_eq!(bodies(host), ["1:[1, 2]"], "a full batch, with the drop");
    host.advance(Duration::from_millis(50));
    o.flush();
    assert_eq!(host.calls.borrow().len(), 1, "a partial batch waits");
    host.advance(Duration::from_millis(50));
    o.flush();
    assert_eq!(bodies(host)[1], "0:[3]", "the interval passed");
    assert_eq!(host.calls.borrow()[1].timeout, Duration::from_secs(1));
}

#[test]
fn at_most_four_calls_are_in_flight() {
    let host = FakeHost::install();
    let o = probe("c", 1, 8);
    (1..=6).for_each(|i| o.push(i));
    o.flush();
    assert_eq!(host.calls.borrow().len(), MAX_IN_FLIGHT, "the rest waits");
    o.flush();
    assert_eq!(host.calls.borrow().len(), MAX_IN_FLIGHT);
    assert!(o.answered(tokens(host)[0], 0));
    o.flush();
    assert_eq!(host.calls.borrow().len(), MAX_IN_FLIGHT + 1);
    assert!(!o.is_idle());
}

#[test]
fn answers_are_counted_once_per_call() {
    let host = FakeHost::install();
    let o = probe("c", 2, 8);
    (1..=4).for_each(|i| o.push(i));
    o.flush();
    let t = tokens(host);
    assert!(o.answered(t[0], 0));
    assert!(o.answered(t[1], 14));
    assert_eq!((metric(host, "sent"), metric(host, "failed")), (2, 2));
    assert!(!o.answered(t[0], 0), "a token counts once");
    assert!(!o.answered(999, 0), "not this outbox's call");
    assert_eq!(metric(host, "sent"), 2);
    assert!(o.is_idle());
}

#[test]
fn unanswered_calls_expire_as_failed_after_their_timeout_and_more() {
    let host = FakeHost::install();
    let o = probe("c", 1, 8);
    o.push(1);
    o.flush();
    host.advance(Duration::from_millis(1_000 + LOST_AFTER_MS));
    o.flush();
    assert_eq!(metric(host, "failed"), 0, "not yet overdue");
    host.advance(Duration::from_millis(1));
    o.flush();
    assert_eq!(metric(host, "failed"), 1);
    assert!(o.is_idle());
    assert!(!o.answered(tokens(host)[0], 0), "a late answer is ignored");
}

#[test]
fn a_refused_call_fails_its_batch() {
    let host = FakeHost::install();
    let o = probe("", 2, 8);
    (1..=3).for_each(|i| o.push(i));
    o.flush();
    assert_eq!(metric(host, "failed"), 2);
    assert!(host.calls.borrow().is_empty());
}

#[test]
fn a_detached_outbox_drops_what_is_pushed() {
    let host = FakeHost::install();
    let o = probe("c", 2, 8);
    o.detach();
    o.push(1);
    o.drop_one();
    assert_eq!(metric(host, "dropped"), 2);
    assert!(o.is_idle());
}

#[test]
fn replaced_outboxes_drain_then_are_let_go() {
    let host = FakeHost::install();
    let boxes = Outboxes::default();
    assert_eq!(boxes.tick_every(), None, "no outbox, no tick");
    let first = boxes.get_or_new("p", Probe { cluster: "a" }, limits(1, 8));
    boxes.replace(vec![first.clone()]);
    assert_eq!(boxes.tick_every(), Some(TICK), "at most the longest gap");
    let kept = boxes.get_or_new("p", Probe { cluster: "a" }, limits(1, 8));
    assert!(Rc::ptr_eq(&first, &kept), "an unchanged transport is kept");

    first.push(1);
    let second = boxes.get_or_new("p", Probe { cluster: "b" }, limits(1, 8));
    boxes.replace(vec![second.clone()]);
    second.push(2);
    boxes.on_tick();
    let calls = host.calls.borrow().clone();
    let clusters: Vec<&str> = calls.iter().map(|c| c.cluster.as_str()).collect();
    assert_eq!(clusters, ["b", "a"], "the current, then the draining");
    assert!(
        boxes.answered(calls[1].token, 0),
        "the drained one's answer"
    );
    assert!(boxes.answered(calls[0].token, 0));
    assert!(!boxes.answered(calls[0].token, 0));
    assert_eq!(metric(host, "sent"), 2);

    boxes.on_tick();
    first.push(3);
    assert_eq!(metric(host, "dropped"), 1, "let go: nowhere to send");
    boxes.on_tick();
    assert_eq!(host.calls.borrow().len(), 2);
}

#[test]
fn counters_are_defined_before_any_event() {
    let host = FakeHost::install();
    Probe::COUNTERS.define_all(["p"]);
    let names: Vec<String> = host.metrics.borrow().iter().map(|m| m.0.clone()).collect();
    for m in ["sent", "dropped", "failed"] {
        assert!(
            names.contains(&format!("meshwarden_test_{m}_total.policy.p")),
            "{m}"
        );
    }
}
