use super::*;
use crate::trace::spec::{SpanMode, TraceFormat, TraceSpec};

const TID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PID: &str = "00f067aa0ba902b7";
/// What `counter()` yields for a new trace id, then a span id.
const NEW_TID: &str = "0102030405060708090a0b0c0d0e0f10";
const NEW_SID: &str = "1112131415161718";

/// Random bytes 1, 2, 3, ... so every id in a plan is predictable.
fn counter() -> impl FnMut(&mut [u8]) {
    let mut n: u8 = 0;
    move |buf: &mut [u8]| {
        for b in buf {
            n = n.wrapping_add(1);
            *b = n;
        }
    }
}

fn headers(pairs: &[(&str, &str)]) -> RequestHeaders {
    RequestHeaders::from_text(pairs)
}

fn spec(formats: &[TraceFormat]) -> TraceSpec {
    TraceSpec {
        formats: formats.to_vec(),
        ..TraceSpec::default()
    }
}

fn run(pairs: &[(&str, &str)], spec: &TraceSpec) -> TracePlan {
    decide(&headers(pairs), spec, &mut counter())
}

fn set(plan: &TracePlan, name: &str) -> Option<String> {
    plan.ops.iter().find_map(|op| match op {
        HeaderOp::Set { name: n, value } if *n == name => Some(value.clone()),
        _ => None,
    })
}

fn removed(plan: &TracePlan, name: &str) -> bool {
    plan.ops
        .iter()
        .any(|op| matches!(op, HeaderOp::Remove { name: n } if *n == name))
}

fn valid_tp(flags: &str) -> String {
    format!("00-{TID}-{PID}-{flags}")
}

#[test]
fn no_headers_starts_a_random_sampled_trace() {
    let plan = run(&[], &TraceSpec::default());
    assert_eq!(plan.outcome, Outcome::Started);
    assert_eq!(
        set(&plan, "traceparent").unwrap(),
        format!("00-{NEW_TID}-{NEW_SID}-03")
    );
    let rid = set(&plan, "x-request-id").unwrap();
    assert_eq!(rid, "191a1b1c-1d1e-4f20-a122-232425262728");
    assert_eq!(plan.ops.len(), 2);
    assert!(plan.sampled);
    assert_eq!(plan.echo, None);
}

#[test]
fn valid_traceparent_keeps_trace_id_and_flags_with_a_new_span() {
    for (flags, sent) in [
        ("01", "01"),
        ("00", "00"),
        ("03", "03"),
        ("ff", "03"),
        ("02", "02"),
    ] {
        let plan = run(
            &[("traceparent", &valid_tp(flags))],
            &spec(&[TraceFormat::W3c]),
        );
        assert_eq!(plan.outcome, Outcome::Propagated, "{flags}");
        assert_eq!(
            set(&plan, "traceparent").unwrap(),
            format!("00-{TID}-0102030405060708-{sent}")
        );
        assert_eq!(plan.trace_id.to_hex(), TID);
    }
}

#[test]
fn propagate_mode_passes_valid_ids_through() {
    let mut s = spec(&[TraceFormat::W3c, TraceFormat::RequestId]);
    s.mode = SpanMode::Propagate;
    let plan = run(
        &[("traceparent", &valid_tp("01")), ("x-request-id", "abc")],
        &s,
    );
    assert_eq!(plan.outcome, Outcome::Propagated);
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    // A later version or OWS is normalised to version 00 but keeps the ids.
    let future = format!("cc-{TID}-{PID}-09-extra");
    let plan = run(&[("traceparent", &future)], &s);
    assert_eq!(plan.outcome, Outcome::Propagated);
    assert_eq!(set(&plan, "traceparent").unwrap(), valid_tp("01"));
}

#[test]
fn invalid_or_repeated_traceparent_restarts_and_drops_tracestate() {
    let upper = format!("00-{}-{PID}-01", TID.to_uppercase());
    let zero = format!("00-{}-{PID}-01", "0".repeat(32));
    let trailing = format!("{}-x", valid_tp("01"));
    for bad in [upper.as_str(), &zero, &trailing, "ff", ""] {
        let plan = run(
            &[("traceparent", bad), ("tracestate", "foo=1")],
            &spec(&[TraceFormat::W3c]),
        );
        assert_eq!(plan.outcome, Outcome::Repaired, "{bad:?}");
        assert_eq!(
            set(&plan, "traceparent").unwrap(),
            format!("00-{NEW_TID}-{NEW_SID}-03")
        );
        assert!(removed(&plan, "tracestate"));
    }
    let v = valid_tp("01");
    let plan = run(
        &[("traceparent", &v), ("traceparent", &v)],
        &spec(&[TraceFormat::W3c]),
    );
    assert_eq!(plan.outcome, Outcome::Repaired);
    assert_eq!(plan.trace_id.to_hex(), NEW_TID);
}

#[test]
fn tracestate_without_traceparent_is_dropped() {
    let plan = run(&[("tracestate", "foo=1")], &spec(&[TraceFormat::W3c]));
    assert!(removed(&plan, "tracestate"));
    assert_eq!(plan.outcome, Outcome::Repaired);
}

#[test]
fn tracestate_is_cleaned_without_touching_traceparent() {
    let tp = valid_tp("01");
    let w3c = spec(&[TraceFormat::W3c]);
    // Bad entries dropped, duplicates keep the first; the trace continues.
    let plan = run(
        &[
            ("traceparent", &tp),
            ("tracestate", "a=1,BAD=2,b=2"),
            ("tracestate", "a=3"),
        ],
        &w3c,
    );
    assert_eq!(set(&plan, "tracestate").unwrap(), "a=1,b=2");
    assert_eq!(plan.trace_id.to_hex(), TID);
    assert_eq!(plan.outcome, Outcome::Repaired);
    // Valid single header: untouched.
    let plan = run(&[("traceparent", &tp), ("tracestate", "a=1,b=2")], &w3c);
    assert!(set(&plan, "tracestate").is_none() && !removed(&plan, "tracestate"));
    assert_eq!(plan.outcome, Outcome::Propagated);
    // Valid entries over two headers are combined into one.
    let plan = run(
        &[
            ("traceparent", &tp),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ],
        &w3c,
    );
    assert_eq!(set(&plan, "tracestate").unwrap(), "a=1,b=2");
    assert_eq!(plan.outcome, Outcome::Propagated);
    // Empty tracestate is removed, not a repair.
    let plan = run(&[("traceparent", &tp), ("tracestate", "")], &w3c);
    assert!(removed(&plan, "tracestate"));
    assert_eq!(plan.outcome, Outcome::Propagated);
    // 33 entries: the right-most goes.
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let plan = run(
        &[("traceparent", &tp), ("tracestate", &many.join(","))],
        &w3c,
    );
    assert_eq!(set(&plan, "tracestate").unwrap(), many[..32].join(","));
}

#[test]
fn propagate_mode_never_alters_tracestate_it_passes_through() {
    // W3C Trace Context Level 2: when traceparent goes on unchanged, tracestate must not be
    // modified — not even entries this proxy would consider bad or duplicated.
    let tp = valid_tp("01");
    let propagate = TraceSpec {
        mode: SpanMode::Propagate,
        ..spec(&[TraceFormat::W3c])
    };
    let odd = [
        ("traceparent", tp.as_str()),
        ("tracestate", "a=1,BAD=2,b=2"),
        ("tracestate", "a=3"),
    ];
    let plan = run(&odd, &propagate);
    assert!(set(&plan, "tracestate").is_none() && !removed(&plan, "tracestate"));
    assert_eq!(plan.outcome, Outcome::Propagated);
    // A new parent id (newSpan) is a changed traceparent: the list may be cleaned.
    let plan = run(&odd, &spec(&[TraceFormat::W3c]));
    assert_eq!(set(&plan, "tracestate").unwrap(), "a=1,b=2");
    // A traceparent that is rewritten (surrounding spaces) is not "unchanged" either.
    let spaced = format!(" {tp} ");
    let plan = run(
        &[
            ("traceparent", spaced.as_str()),
            ("tracestate", "a=1,BAD=2"),
        ],
        &propagate,
    );
    assert_eq!(set(&plan, "tracestate").unwrap(), "a=1");
}

#[test]
fn b3_context_is_adopted_when_traceparent_is_missing_or_invalid() {
    let b3tid = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3sid = "e457b5a2e4d86bd1";
    let s = spec(&[TraceFormat::W3c, TraceFormat::B3]);
    let plan = run(&[("b3", &format!("{b3tid}-{b3sid}-1"))], &s);
    assert_eq!(plan.outcome, Outcome::Propagated);
    assert_eq!(
        set(&plan, "traceparent").unwrap(),
        format!("00-{b3tid}-0102030405060708-01")
    );
    assert_eq!(
        set(&plan, "b3").unwrap(),
        format!("{b3tid}-0102030405060708-1")
    );
    // Invalid traceparent + valid B3: B3 is adopted, the traceparent is repaired.
    let plan = run(
        &[
            ("traceparent", "junk"),
            ("x-b3-traceid", &b3tid[16..]),
            ("x-b3-spanid", b3sid),
            ("x-b3-sampled", "0"),
        ],
        &s,
    );
    assert_eq!(plan.outcome, Outcome::Repaired);
    let padded = format!("{}{}", "0".repeat(16), &b3tid[16..]);
    assert_eq!(plan.trace_id.to_hex(), padded);
    assert!(set(&plan, "traceparent").unwrap().ends_with("-00"));
    // The stale multi headers go when only the single form is written.
    assert!(removed(&plan, "x-b3-traceid") && removed(&plan, "x-b3-sampled"));
}

#[test]
fn valid_traceparent_wins_over_b3() {
    let plan = run(
        &[
            ("traceparent", &valid_tp("01")),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
        ],
        &spec(&[TraceFormat::W3c, TraceFormat::B3, TraceFormat::B3multi]),
    );
    assert_eq!(plan.trace_id.to_hex(), TID);
    assert_eq!(
        set(&plan, "b3").unwrap(),
        format!("{TID}-0102030405060708-1")
    );
    assert_eq!(set(&plan, "x-b3-traceid").unwrap(), TID);
    assert_eq!(set(&plan, "x-b3-spanid").unwrap(), "0102030405060708");
    assert_eq!(set(&plan, "x-b3-sampled").unwrap(), "1");
    assert_eq!(plan.outcome, Outcome::Propagated);
}

#[test]
fn b3_sampling_only_headers_decide_a_new_trace() {
    let plan = run(&[("b3", "0")], &spec(&[TraceFormat::W3c, TraceFormat::B3]));
    assert_eq!(plan.outcome, Outcome::Started);
    assert!(!plan.sampled);
    assert!(set(&plan, "traceparent").unwrap().ends_with("-02"));
    assert_eq!(set(&plan, "b3").unwrap(), format!("{NEW_TID}-{NEW_SID}-0"));
    let mut s = spec(&[TraceFormat::W3c]);
    s.sampling_percentage = Percentage::NONE;
    let plan = run(&[("x-b3-flags", "1")], &s);
    assert!(plan.sampled, "debug overrides the percentage");
}

#[test]
fn sampling_percentage_applies_to_new_traces() {
    let mut s = spec(&[TraceFormat::W3c]);
    s.sampling_percentage = Percentage::NONE;
    let plan = run(&[], &s);
    assert!(!plan.sampled);
    assert!(set(&plan, "traceparent").unwrap().ends_with("-02"));
    // 50 %: the draw after the ids decides. Bytes 25..=32 as a little-endian u64.
    s.sampling_percentage = Percentage::try_from(50.0).unwrap();
    let draw = u64::from_le_bytes([25, 26, 27, 28, 29, 30, 31, 32]);
    let plan = run(&[], &s);
    assert_eq!(plan.sampled, s.sampling_percentage.selects(draw));
    // An incoming sampled=0 traceparent is not re-sampled.
    s.sampling_percentage = Percentage::ALL;
    let plan = run(&[("traceparent", &valid_tp("00"))], &s);
    assert!(!plan.sampled);
}

#[test]
fn b3_multi_output_replaces_the_single_form_and_stale_parent() {
    let plan = run(
        &[
            (
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d-05e3ac9a4f6e3b90",
            ),
            ("x-b3-traceid", "1111111111111111aaaaaaaaaaaaaaaa"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
        ],
        &spec(&[TraceFormat::B3multi]),
    );
    assert_eq!(plan.outcome, Outcome::Propagated);
    assert!(removed(&plan, "b3"));
    assert!(removed(&plan, "x-b3-parentspanid"));
    assert!(
        removed(&plan, "x-b3-sampled"),
        "debug is sent as x-b3-flags only"
    );
    assert_eq!(set(&plan, "x-b3-flags").unwrap(), "1");
    assert_eq!(
        set(&plan, "x-b3-traceid").unwrap(),
        "80f198ee56343ba864fe8b2a57d3eff7"
    );
    assert!(set(&plan, "traceparent").is_none(), "w3c is not configured");
}

#[test]
fn propagate_mode_keeps_b3_ids_and_parent() {
    let mut s = spec(&[TraceFormat::B3, TraceFormat::B3multi]);
    s.mode = SpanMode::Propagate;
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
    let plan = run(&[("b3", b3)], &s);
    assert!(set(&plan, "b3").is_none(), "unchanged: {:?}", plan.ops);
    assert_eq!(set(&plan, "x-b3-spanid").unwrap(), "e457b5a2e4d86bd1");
    assert_eq!(set(&plan, "x-b3-parentspanid").unwrap(), "05e3ac9a4f6e3b90");
}

#[test]
fn malformed_b3_is_repaired_when_written() {
    let plan = run(&[("b3", "nonsense")], &spec(&[TraceFormat::B3]));
    assert_eq!(plan.outcome, Outcome::Repaired);
    let plan = run(&[("b3", "nonsense")], &spec(&[TraceFormat::W3c]));
    assert_eq!(plan.outcome, Outcome::Started, "b3 is not ours to fix here");
    let plan = run(
        &[("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")],
        &spec(&[TraceFormat::W3c, TraceFormat::B3multi]),
    );
    assert_eq!(plan.outcome, Outcome::Repaired);
}

#[test]
fn request_id_rules() {
    let s = spec(&[TraceFormat::RequestId]);
    let plan = run(&[("x-request-id", "keep-me")], &s);
    assert!(plan.ops.is_empty());
    assert_eq!(plan.outcome, Outcome::Started);
    for bad in [
        &[("x-request-id", "a b")][..],
        &[("x-request-id", "a"), ("x-request-id", "b")],
    ] {
        let plan = run(bad, &s);
        assert!(set(&plan, "x-request-id").is_some());
        assert_eq!(plan.outcome, Outcome::Repaired);
    }
    // Not configured: left alone even when invalid.
    let plan = run(&[("x-request-id", "a b")], &spec(&[TraceFormat::W3c]));
    assert!(set(&plan, "x-request-id").is_none());
}

#[test]
fn all_formats_carry_the_same_ids_and_echo_the_trace_id() {
    let mut s = spec(&[
        TraceFormat::W3c,
        TraceFormat::B3,
        TraceFormat::B3multi,
        TraceFormat::RequestId,
    ]);
    s.response_header = Some(HeaderName::try_from("x-trace-id".to_string()).unwrap());
    let plan = run(&[], &s);
    assert_eq!(
        set(&plan, "traceparent").unwrap(),
        format!("00-{NEW_TID}-{NEW_SID}-03")
    );
    assert_eq!(set(&plan, "b3").unwrap(), format!("{NEW_TID}-{NEW_SID}-1"));
    assert_eq!(set(&plan, "x-b3-traceid").unwrap(), NEW_TID);
    assert_eq!(set(&plan, "x-b3-spanid").unwrap(), NEW_SID);
    assert_eq!(set(&plan, "x-b3-sampled").unwrap(), "1");
    let (h, v) = plan.echo.unwrap();
    assert_eq!((h.as_str(), v.as_str()), ("x-trace-id", NEW_TID));
    // Every op is a replace or a removal; no header is written twice.
    let mut names: Vec<_> = plan.ops.iter().map(HeaderOp::name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), plan.ops.len());
}

#[test]
fn zero_random_bytes_still_give_valid_ids() {
    let plan = decide(
        &RequestHeaders::default(),
        &TraceSpec::default(),
        &mut |b: &mut [u8]| b.fill(0),
    );
    assert!(!plan.trace_id.is_zero() && !plan.span_id.is_zero());
    let tp = set(&plan, "traceparent").unwrap();
    assert!(TraceParent::parse(tp.as_bytes()).is_ok());
}

#[test]
fn odd_bytes_never_panic() {
    let junk: Vec<(String, Vec<u8>)> = [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
        "x-request-id",
    ]
    .iter()
    .flat_map(|h| {
        [
            (h.to_string(), vec![0xff, 0xfe, b'-', 0x00]),
            (h.to_string(), vec![b'-'; 60]),
            (h.to_string(), Vec::new()),
        ]
    })
    .collect();
    let all = spec(&[
        TraceFormat::W3c,
        TraceFormat::B3,
        TraceFormat::B3multi,
        TraceFormat::RequestId,
    ]);
    let plan = decide(&RequestHeaders::new(junk), &all, &mut counter());
    assert_eq!(plan.outcome, Outcome::Repaired);
}

#[test]
fn random_header_bytes_never_panic() {
    use crate::fault::{Random, SplitMix64};
    let mut rng = SplitMix64(7);
    let names = [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
        "x-b3-flags",
        "x-b3-parentspanid",
        "x-request-id",
    ];
    // Bytes biased towards the characters the parsers care about.
    let alphabet = b"0123456789abcdefABCDEF-=, \t@*/_xyz\xff\x00";
    let all = spec(&[
        TraceFormat::W3c,
        TraceFormat::B3,
        TraceFormat::B3multi,
        TraceFormat::RequestId,
    ]);
    for _ in 0..2000 {
        let pairs: Vec<(String, Vec<u8>)> = (0..rng.next_u64() % 5)
            .map(|_| {
                let name = names[(rng.next_u64() % names.len() as u64) as usize];
                let len = (rng.next_u64() % 70) as usize;
                let value = (0..len)
                    .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
                    .collect();
                (name.to_string(), value)
            })
            .collect();
        let plan = decide(&RequestHeaders::new(pairs), &all, &mut counter());
        let tp = set(&plan, "traceparent").expect("w3c always written");
        assert!(TraceParent::parse(tp.as_bytes()).is_ok(), "{tp}");
    }
}

#[test]
fn a_new_span_records_the_incoming_one_as_its_parent() {
    let tp = format!("00-{TID}-{PID}-01");
    let w3c = spec(&[TraceFormat::W3c]);
    let plan = run(&[("traceparent", &tp)], &w3c);
    assert_eq!(plan.parent.map(|p| p.to_hex()).as_deref(), Some(PID));
    assert_ne!(plan.span_id.to_hex(), PID);

    let b3 = format!("{TID}-{PID}-1");
    let plan = run(&[("b3", &b3)], &w3c);
    assert_eq!(plan.parent.map(|p| p.to_hex()).as_deref(), Some(PID));

    let propagate = TraceSpec {
        mode: SpanMode::Propagate,
        ..w3c.clone()
    };
    assert_eq!(run(&[("traceparent", &tp)], &propagate).parent, None);
    let started = run(&[], &w3c);
    assert_eq!(started.parent, None, "a trace started here has no parent");
    assert_eq!(started.span_id.to_hex(), NEW_SID);
}
