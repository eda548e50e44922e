use super::*;
use crate::random::{Random, SplitMix64};
use serde_json::json;

fn rules(spec: serde_json::Value) -> Rules {
    let spec: CircuitBreakerSpec = serde_json::from_value(spec).unwrap();
    Rules::of(&spec)
}

const OK: Outcome = Outcome {
    failure: false,
    slow: false,
};
const FAIL: Outcome = Outcome {
    failure: true,
    slow: false,
};
const SLOW: Outcome = Outcome {
    failure: false,
    slow: true,
};

/// Admits a call at `now` and records `o` for it; the transitions on the way.
fn run(b: &mut Breaker, r: &Rules, o: Outcome, now: u64) -> Vec<Transition> {
    let (a, t) = b.admit(r, now);
    let mut out: Vec<Transition> = t.into_iter().collect();
    if let Admission::Call(ticket) = a {
        out.extend(b.record(r, ticket, o, now));
    }
    out
}

fn ticket(b: &mut Breaker, r: &Rules, now: u64) -> Ticket {
    match b.admit(r, now).0 {
        Admission::Call(t) => t,
        a => panic!("expected a call, got {a:?}"),
    }
}

#[test]
fn stays_closed_below_the_minimum_number_of_calls() {
    let r = rules(json!({"slidingWindow": {"count": 10}, "minimumNumberOfCalls": 5}));
    let mut b = Breaker::new(&r, b"", 0);
    for now in 0..4 {
        assert!(run(&mut b, &r, FAIL, now).is_empty());
    }
    assert_eq!(b.state(), State::Closed);
    let t = run(&mut b, &r, FAIL, 4);
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].from, t[0].to), (State::Closed, State::Open));
    assert_eq!(t[0].reason, Reason::FailureRate(100.0));
}

#[test]
fn opens_at_the_failure_rate_threshold_not_below() {
    let r = rules(json!({
        "slidingWindow": {"count": 4}, "minimumNumberOfCalls": 4,
        "failureRateThreshold": {"value": 50}
    }));
    let mut b = Breaker::new(&r, b"", 0);
    for o in [OK, OK, OK, FAIL, OK] {
        assert!(run(&mut b, &r, o, 0).is_empty(), "25 %");
    }
    // The window holds OK, OK, FAIL, OK; one more failure makes it OK, FAIL, OK, FAIL.
    let t = run(&mut b, &r, FAIL, 0);
    assert_eq!(t[0].reason, Reason::FailureRate(50.0));
}

#[test]
fn slow_calls_open_it_too() {
    let r = rules(json!({
        "slidingWindow": {"count": 4}, "minimumNumberOfCalls": 4,
        "slowCallRateThreshold": {"value": 50}, "slowCallDurationThreshold": "200ms"
    }));
    assert_eq!(r.slow_call_ms, 200);
    let mut b = Breaker::new(&r, b"", 0);
    for o in [OK, SLOW, OK] {
        assert!(run(&mut b, &r, o, 0).is_empty());
    }
    let t = run(&mut b, &r, SLOW, 0);
    assert_eq!(t[0].reason, Reason::SlowCallRate(50.0));
}

#[test]
fn open_rejects_for_the_wait_then_half_opens_and_closes_after_good_trials() {
    let r = rules(json!({
        "slidingWindow": {"count": 2}, "minimumNumberOfCalls": 2,
        "waitDurationInOpenState": "1s", "permittedNumberOfCallsInHalfOpenState": 3
    }));
    let mut b = Breaker::new(&r, b"", 0);
    run(&mut b, &r, FAIL, 0);
    run(&mut b, &r, FAIL, 100);
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.peek(&r, 600),
        Some(Admission::Reject {
            retry_after_ms: 500
        })
    );
    assert_eq!(b.admit(&r, 1099).0, Admission::Reject { retry_after_ms: 1 });
    // The wait is over: the request half-opens the breaker as the first trial.
    let (a, t) = b.admit(&r, 1100);
    assert!(matches!(a, Admission::Call(Ticket { trial: true, .. })));
    assert_eq!(t.unwrap().to, State::HalfOpen);
    let t1 = match a {
        Admission::Call(t) => t,
        _ => unreachable!(),
    };
    let t2 = ticket(&mut b, &r, 1101);
    let t3 = ticket(&mut b, &r, 1102);
    assert_eq!(b.admit(&r, 1103).0, Admission::Reject { retry_after_ms: 0 });
    assert_eq!(b.record(&r, t1, OK, 1200), None);
    assert_eq!(b.record(&r, t2, FAIL, 1200), None);
    // One failure in three trials is below 50 %: closed, with an empty window.
    let t = b.record(&r, t3, OK, 1200).unwrap();
    assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
    assert_eq!(t.reason, Reason::TrialsSucceeded);
    assert_eq!(b.totals(1200).calls, 0);
}

#[test]
fn failing_trials_reopen_it() {
    let r = rules(json!({
        "slidingWindow": {"count": 1}, "waitDurationInOpenState": "1s",
        "permittedNumberOfCallsInHalfOpenState": 2
    }));
    let mut b = Breaker::new(&r, b"", 0);
    run(&mut b, &r, FAIL, 0);
    let t1 = ticket(&mut b, &r, 1000);
    let t2 = ticket(&mut b, &r, 1000);
    b.record(&r, t1, FAIL, 1001);
    let t = b.record(&r, t2, OK, 1002).unwrap();
    assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
    assert_eq!(t.reason, Reason::FailureRate(50.0));
    // A fresh wait from the reopening.
    assert_eq!(
        b.peek(&r, 1502),
        Some(Admission::Reject {
            retry_after_ms: 500
        })
    );
}

#[test]
fn calls_of_an_earlier_generation_are_not_counted() {
    let r = rules(json!({
        "slidingWindow": {"count": 2}, "minimumNumberOfCalls": 2,
        "waitDurationInOpenState": "1s", "permittedNumberOfCallsInHalfOpenState": 1
    }));
    let mut b = Breaker::new(&r, b"", 0);
    let late = ticket(&mut b, &r, 0);
    run(&mut b, &r, FAIL, 0);
    run(&mut b, &r, FAIL, 0);
    assert_eq!(b.state(), State::Open);
    // A call admitted while closed ends while open, then while half-open: ignored.
    assert!(!b.wants(late));
    assert_eq!(b.record(&r, late, FAIL, 10), None);
    let trial = ticket(&mut b, &r, 1000);
    assert_eq!(b.record(&r, late, FAIL, 1001), None);
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.record(&r, trial, OK, 1002).unwrap().to, State::Closed);
}

#[test]
fn lost_trials_start_a_new_round_after_a_while() {
    let r = rules(json!({
        "slidingWindow": {"count": 1}, "waitDurationInOpenState": "1s",
        "permittedNumberOfCallsInHalfOpenState": 1
    }));
    let mut b = Breaker::new(&r, b"", 0);
    run(&mut b, &r, FAIL, 0);
    let _lost = ticket(&mut b, &r, 1000);
    assert!(matches!(b.admit(&r, 2000).0, Admission::Reject { .. }));
    let (a, t) = b.admit(&r, 1000 + HALF_OPEN_STALE_MS);
    assert!(matches!(a, Admission::Call(_)));
    assert_eq!(t.unwrap().reason, Reason::TrialsLost);
}

#[test]
fn time_window_forgets_old_failures() {
    let r = rules(json!({
        "slidingWindow": {"duration": "1s"}, "minimumNumberOfCalls": 3
    }));
    let mut b = Breaker::new(&r, b"", 0);
    run(&mut b, &r, FAIL, 0);
    run(&mut b, &r, FAIL, 100);
    // Two seconds later those are out of the window.
    assert!(run(&mut b, &r, FAIL, 2000).is_empty());
    assert!(run(&mut b, &r, OK, 2100).is_empty());
    assert_eq!(b.state(), State::Closed);
    assert_eq!(run(&mut b, &r, FAIL, 2200)[0].to, State::Open);
}

#[test]
fn a_clock_set_back_does_not_keep_it_open() {
    let r = rules(json!({"slidingWindow": {"count": 1}, "waitDurationInOpenState": "1h"}));
    let mut b = Breaker::new(&r, b"", 0);
    run(&mut b, &r, FAIL, 10_000_000);
    assert!(matches!(
        b.admit(&r, 10_000_001).0,
        Admission::Reject { .. }
    ));
    assert!(matches!(b.admit(&r, 5_000).0, Admission::Call(_)));
}

#[test]
fn encoding_round_trips_and_odd_bytes_decode_to_nothing() {
    let r = rules(json!({"slidingWindow": {"count": 3}, "minimumNumberOfCalls": 3}));
    let mut b = Breaker::new(&r, b"tenant-a", 5);
    run(&mut b, &r, FAIL, 6);
    assert_eq!(Breaker::decode(&r, &b.encode()), Some(b.clone()));
    for bytes in [&[][..], &[0u8; 5][..], &[9u8; 64][..]] {
        assert_eq!(Breaker::decode(&r, bytes), None);
    }
    // A truncated owner is malformed.
    let enc = b.encode();
    assert_eq!(Breaker::decode(&r, &enc[..HEADER_LEN + 3]), None);
    // Another window shape keeps the state and starts an empty window.
    let other = rules(json!({"slidingWindow": {"count": 7}}));
    let d = Breaker::decode(&other, &enc).unwrap();
    assert_eq!((d.state(), d.owner()), (State::Closed, &b"tenant-a"[..]));
    assert_eq!(d.totals(6).calls, 0);
}

/// Random calls, outcomes, abandons and clock steps: every transition follows an edge of
/// the state machine, rejections happen only while open or with every trial out, and the
/// stored form always decodes to the same breaker.
#[test]
fn random_histories_follow_the_state_machine() {
    let r = rules(json!({
        "slidingWindow": {"count": 5}, "minimumNumberOfCalls": 3,
        "waitDurationInOpenState": "100ms", "permittedNumberOfCallsInHalfOpenState": 2
    }));
    let mut rng = SplitMix64(7);
    for _ in 0..200 {
        let mut b = Breaker::new(&r, b"", 0);
        let mut now = 0u64;
        let mut out: Vec<Ticket> = Vec::new();
        for _ in 0..300 {
            now += rng.next_u64() % 40;
            let before = b.state();
            match rng.next_u64() % 4 {
                0 | 1 => {
                    let (a, t) = b.admit(&r, now);
                    if let Some(t) = t {
                        assert_eq!(t.from, before);
                        assert_eq!(t.to, State::HalfOpen);
                    }
                    match a {
                        Admission::Call(ticket) => out.push(ticket),
                        Admission::Reject { .. } => assert_ne!(before, State::Closed),
                    }
                }
                2 if !out.is_empty() => {
                    let i = (rng.next_u64() % out.len() as u64) as usize;
                    let ticket = out.swap_remove(i);
                    let o = Outcome {
                        failure: rng.next_u64().is_multiple_of(2),
                        slow: rng.next_u64().is_multiple_of(5),
                    };
                    if let Some(t) = b.record(&r, ticket, o, now) {
                        let edge = (t.from, t.to);
                        assert!(
                            matches!(
                                edge,
                                (State::Closed, State::Open)
                                    | (State::HalfOpen, State::Open)
                                    | (State::HalfOpen, State::Closed)
                            ),
                            "{edge:?}"
                        );
                    }
                }
                _ if !out.is_empty() => {
                    let ticket = out.swap_remove(0);
                    b.abandon(ticket);
                }
                _ => {}
            }
            assert_eq!(Breaker::decode(&r, &b.encode()).as_ref(), Some(&b));
        }
    }
}
