//! The trace filter's decision for one request: which trace context to continue (or start)
//! and which header writes and removals carry it in every configured format.

use super::b3::{self, B3Headers, Sampling, B3, MULTI_HEADERS};
use super::ids::{SpanId, TraceId};
use super::request_id::{self, RequestIdState, X_REQUEST_ID};
use super::spec::{SpanMode, TraceFormat, TraceSpec};
use super::traceparent::{TraceParent, FLAG_RANDOM, FLAG_SAMPLED, KNOWN_FLAGS, TRACEPARENT};
use super::tracestate::{TraceState, TraceStateAction, TRACESTATE};
use crate::names::HeaderName;
use crate::percentage::Percentage;
use crate::random::Random;
use crate::request::RequestHeaders;

/// One change to the upstream request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Replace every value of `name` with `value`.
    Set { name: &'static str, value: String },
    /// Remove every value of `name`.
    Remove { name: &'static str },
}

impl HeaderOp {
    /// The header this op changes.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Set { name, .. } | Self::Remove { name } => name,
        }
    }
}

/// What happened to the request's trace context (one metric each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// No usable incoming context: a trace starts here.
    Started,
    /// A valid incoming context (W3C or B3) is continued.
    Propagated,
    /// Some incoming trace header was malformed or repeated and was replaced or removed.
    Repaired,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 3] = [Outcome::Started, Outcome::Propagated, Outcome::Repaired];

    /// Short lowercase name, used in metric names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Propagated => "propagated",
            Self::Repaired => "repaired",
        }
    }
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePlan {
    /// Header changes to apply, in order. No-op writes are left out.
    pub ops: Vec<HeaderOp>,
    pub trace_id: TraceId,
    /// The span id sent upstream (W3C parent-id, B3 span id).
    pub span_id: SpanId,
    /// The incoming context's span id, when this hop writes a new one (`newSpan` mode
    /// continuing a trace): the parent of the proxy's own span.
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub outcome: Outcome,
    /// Response header to set to the trace id (from `responseHeader`), and its value.
    pub echo: Option<(HeaderName, String)>,
}

/// The context the request continues with.
struct Context {
    trace_id: TraceId,
    span_id: SpanId,
    /// W3C trace flags to send (sampled and random bits only).
    flags: u8,
    /// B3 sampling state to send (never `Deferred`).
    sampling: Sampling,
    /// B3 parent span id, only when passing an incoming B3 context through unchanged.
    b3_parent: Option<SpanId>,
    /// The incoming span id when `span_id` is a new one.
    parent: Option<SpanId>,
    /// Continued from an incoming context rather than started here.
    adopted: bool,
    /// The incoming `traceparent` was valid (so its `tracestate` may be kept).
    from_w3c: bool,
}

/// Decides how to continue or start the trace for a request under `spec`.
pub fn decide(headers: &RequestHeaders, spec: &TraceSpec, random: &mut impl Random) -> TracePlan {
    let mut invalid: Vec<&'static str> = Vec::new();
    let traceparent = TraceParent::from_headers(headers);
    let b3 = B3Headers::from_headers(headers);
    if matches!(traceparent, Some(Err(_))) {
        invalid.push(TRACEPARENT);
    }
    if matches!(b3.single, Some(Err(_))) {
        invalid.push(b3::B3);
    }
    if matches!(b3.multi, Some(Err(_))) {
        invalid.extend(MULTI_HEADERS);
    }

    let ctx = match traceparent {
        Some(Ok(tp)) => from_traceparent(&tp, spec.mode, random),
        _ => match b3.best() {
            Some(B3::Context {
                trace_id,
                span_id,
                sampling,
                parent_span_id,
            }) => from_b3(trace_id, span_id, sampling, parent_span_id, spec, random),
            Some(B3::SamplingOnly(sampling)) => start(sampling, spec, random),
            None => start(Sampling::Deferred, spec, random),
        },
    };

    let mut ops = Ops::new(headers);
    let has = |f: TraceFormat| spec.formats.contains(&f);
    if has(TraceFormat::W3c) {
        write_w3c(&mut ops, &ctx, &mut invalid);
    }
    if has(TraceFormat::B3) {
        write_b3_single(&mut ops, &ctx, !has(TraceFormat::B3multi));
    }
    if has(TraceFormat::B3multi) {
        write_b3_multi(&mut ops, &ctx, !has(TraceFormat::B3));
    }
    if has(TraceFormat::RequestId) {
        match RequestIdState::of(headers) {
            RequestIdState::Valid => {}
            state => {
                if state == RequestIdState::Invalid {
                    invalid.push(X_REQUEST_ID);
                }
                let mut bytes = [0u8; 16];
                random.fill(&mut bytes);
                ops.set(X_REQUEST_ID, request_id::uuid_v4(bytes));
            }
        }
    }

    let ops = ops.ops;
    let outcome = if ops.iter().any(|op| invalid.contains(&op.name())) {
        Outcome::Repaired
    } else if ctx.adopted {
        Outcome::Propagated
    } else {
        Outcome::Started
    };
    TracePlan {
        ops,
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent: ctx.parent,
        sampled: ctx.flags & FLAG_SAMPLED != 0,
        outcome,
        echo: spec
            .response_header
            .clone()
            .map(|h| (h, ctx.trace_id.to_hex())),
    }
}

fn from_traceparent(tp: &TraceParent, mode: SpanMode, random: &mut impl Random) -> Context {
    let flags = tp.flags & KNOWN_FLAGS;
    Context {
        trace_id: tp.trace_id,
        span_id: match mode {
            SpanMode::NewSpan => new_span_id(random),
            SpanMode::Propagate => tp.parent_id,
        },
        flags,
        sampling: if tp.sampled() {
            Sampling::Accept
        } else {
            Sampling::Deny
        },
        b3_parent: None,
        parent: (mode == SpanMode::NewSpan).then_some(tp.parent_id),
        adopted: true,
        from_w3c: true,
    }
}

fn from_b3(
    trace_id: TraceId,
    span_id: SpanId,
    sampling: Sampling,
    parent: Option<SpanId>,
    spec: &TraceSpec,
    random: &mut impl Random,
) -> Context {
    let sampling = decided(sampling, spec.sampling_percentage, random);
    let propagate = spec.mode == SpanMode::Propagate;
    Context {
        trace_id,
        span_id: if propagate {
            span_id
        } else {
            new_span_id(random)
        },
        // B3 ids carry no randomness guarantee: the random flag stays off.
        flags: sampled_flag(sampling),
        sampling,
        b3_parent: parent.filter(|_| propagate),
        parent: (!propagate).then_some(span_id),
        adopted: true,
        from_w3c: false,
    }
}

/// A new trace; `hint` is an incoming B3 sampling-only decision, if any.
fn start(hint: Sampling, spec: &TraceSpec, random: &mut impl Random) -> Context {
    let mut trace = [0u8; 16];
    random.fill(&mut trace);
    if trace.iter().all(|b| *b == 0) {
        trace[15] = 1;
    }
    let span_id = new_span_id(random);
    let sampling = decided(hint, spec.sampling_percentage, random);
    Context {
        trace_id: TraceId(trace),
        span_id,
        flags: FLAG_RANDOM | sampled_flag(sampling),
        sampling,
        b3_parent: None,
        parent: None,
        adopted: false,
        from_w3c: false,
    }
}

/// Resolves a deferred decision with `percentage`.
fn decided(s: Sampling, percentage: Percentage, random: &mut impl Random) -> Sampling {
    if s != Sampling::Deferred {
        return s;
    }
    let sampled = if percentage.value() >= 100.0 {
        true
    } else if percentage.value() <= 0.0 {
        false
    } else {
        let mut draw = [0u8; 8];
        random.fill(&mut draw);
        percentage.selects(u64::from_le_bytes(draw))
    };
    if sampled {
        Sampling::Accept
    } else {
        Sampling::Deny
    }
}

fn sampled_flag(s: Sampling) -> u8 {
    match s.decision() {
        Some(true) => FLAG_SAMPLED,
        _ => 0,
    }
}

fn new_span_id(random: &mut impl Random) -> SpanId {
    let mut id = [0u8; 8];
    random.fill(&mut id);
    if id.iter().all(|b| *b == 0) {
        id[7] = 1;
    }
    SpanId(id)
}

fn write_w3c(ops: &mut Ops<'_>, ctx: &Context, invalid: &mut Vec<&'static str>) {
    let tp = TraceParent {
        version: 0,
        trace_id: ctx.trace_id,
        parent_id: ctx.span_id,
        flags: ctx.flags,
    };
    let encoded = tp.encode();
    // Level 2: a traceparent passed on unchanged (propagate mode, a valid single header)
    // leaves tracestate exactly as received — no member of someone else's is touched.
    let unchanged = ctx.from_w3c
        && ops.headers.count(TRACEPARENT) == 1
        && ops.headers.get(TRACEPARENT) == Some(encoded.as_bytes());
    ops.set(TRACEPARENT, encoded);
    let present = ops.headers.get(TRACESTATE).is_some();
    if !present {
        return;
    }
    if !ctx.from_w3c {
        // A tracestate belongs to the traceparent it came with; without one it is dropped.
        invalid.push(TRACESTATE);
        ops.remove(TRACESTATE);
        return;
    }
    let (action, dropped) = TraceState::outgoing(ops.headers.get_all(TRACESTATE), unchanged);
    if dropped > 0 {
        invalid.push(TRACESTATE);
    }
    match action {
        TraceStateAction::Untouched => {}
        TraceStateAction::Remove => ops.remove(TRACESTATE),
        TraceStateAction::Set(value) => ops.set(TRACESTATE, value),
    }
}

fn write_b3_single(ops: &mut Ops<'_>, ctx: &Context, drop_multi: bool) {
    let value = b3::encode_single(
        &ctx.trace_id,
        &ctx.span_id,
        ctx.sampling,
        ctx.b3_parent.as_ref(),
    );
    ops.set(b3::B3, value);
    if drop_multi {
        for h in MULTI_HEADERS {
            ops.remove(h);
        }
    }
}

fn write_b3_multi(ops: &mut Ops<'_>, ctx: &Context, drop_single: bool) {
    ops.set(b3::X_B3_TRACEID, ctx.trace_id.to_hex());
    ops.set(b3::X_B3_SPANID, ctx.span_id.to_hex());
    match ctx.sampling {
        // Debug implies accept: X-B3-Sampled is not sent with it.
        Sampling::Debug => {
            ops.set(b3::X_B3_FLAGS, "1".into());
            ops.remove(b3::X_B3_SAMPLED);
        }
        s => {
            let v = if s.decision() == Some(true) { "1" } else { "0" };
            ops.set(b3::X_B3_SAMPLED, v.into());
            ops.remove(b3::X_B3_FLAGS);
        }
    }
    match &ctx.b3_parent {
        Some(p) => ops.set(b3::X_B3_PARENTSPANID, p.to_hex()),
        None => ops.remove(b3::X_B3_PARENTSPANID),
    }
    if drop_single {
        ops.remove(b3::B3);
    }
}

/// Collects header ops, skipping writes that would change nothing.
struct Ops<'a> {
    headers: &'a RequestHeaders,
    ops: Vec<HeaderOp>,
}

impl<'a> Ops<'a> {
    fn new(headers: &'a RequestHeaders) -> Self {
        Self {
            headers,
            ops: Vec::new(),
        }
    }

    /// Replaces `name` unless it already holds exactly `value` once.
    fn set(&mut self, name: &'static str, value: String) {
        let mut current = self.headers.get_all(name);
        let unchanged = current.next() == Some(value.as_bytes()) && current.next().is_none();
        if !unchanged {
            self.ops.push(HeaderOp::Set { name, value });
        }
    }

    /// Removes `name` if the request has it.
    fn remove(&mut self, name: &'static str) {
        if self.headers.get(name).is_some() {
            self.ops.push(HeaderOp::Remove { name });
        }
    }
}

#[cfg(test)]
#[path = "decision_tests.rs"]
mod tests;
