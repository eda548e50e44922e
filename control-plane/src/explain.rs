//! `meshwarden explain`: which policies a proxy has, which of them match a request, in which
//! order, and what each would do to it.
//!
//! Nothing here re-implements a filter's decision. The proxy's policies are selected by the
//! xDS code ([`crate::xds::cache::selection`], halts included) and turned into the very
//! filter configuration it is sent ([`crate::xds::extension_configs::wire_config`]), which
//! is parsed by the filters' own [`FilterConfig::parse`]; matching, fault plans, mirror
//! sampling and trace decisions are the shared crate's ([`meshwarden_common`]). What only
//! the proxy knows — tokens left in a bucket, requests in flight, the guard's error ratio,
//! when a `ttl` started — is reported as unknown.

use crate::policy_set::{PolicySet, StoredPolicy};
use crate::xds::cache::selection;
use crate::xds::extension_configs::wire_config;
use meshwarden_common::capture::CaptureSpec;
use meshwarden_common::circuitbreaker::{CircuitBreakerSpec, SlidingWindow};
use meshwarden_common::fault::{AbortStatus, FaultPlan, FaultSpec, Random};
use meshwarden_common::mirror::{MirrorSpec, SkipReason};
use meshwarden_common::ratelimit::{shedding::Shedding, RateLimitSpec};
use meshwarden_common::trace::{decide, HeaderOp, TraceSpec};
use meshwarden_common::{
    CompiledPolicy, FilterConfig, Kind, KindSpec, NodeInfo, Peer, RequestHeaders, ValidationError,
};
use serde::Serialize;

/// What the proxy cannot tell the control plane about a rate limit.
pub const TOKENS_UNKNOWN: &str =
    "unknown: tokens are kept in the proxy's shared data, not reported to the control plane";

/// A request to explain.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    pub method: String,
    pub path: String,
    pub authority: String,
    /// Other headers as given (`name: value`).
    pub headers: Vec<(String, String)>,
}

impl RequestView {
    /// The headers a filter would see.
    pub fn headers(&self) -> RequestHeaders {
        let mut pairs = vec![
            (":method".to_string(), self.method.as_bytes().to_vec()),
            (":path".to_string(), self.path.as_bytes().to_vec()),
            (":authority".to_string(), self.authority.as_bytes().to_vec()),
        ];
        pairs.extend(
            self.headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
        );
        RequestHeaders::new(pairs)
    }
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub node_id: String,
    pub cluster: String,
    pub request: RequestView,
    /// One entry per filter, in filter-chain order.
    pub filters: Vec<FilterExplanation>,
}

/// How a filter picks among its matching policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Evaluation {
    /// The first matching policy (in name order) applies.
    FirstMatch,
    /// Every matching policy applies.
    EveryMatch,
}

/// Whether the request gets to a filter at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Reach {
    Yes,
    /// Unless an earlier filter answers it (a rate limit without tokens, a random abort).
    Maybe,
    /// An earlier filter answers it.
    No,
}

/// One filter.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterExplanation {
    pub kind: Kind,
    /// The ECDS resource, `meshwarden.<filter>`.
    pub filter: String,
    pub evaluation: Evaluation,
    pub reached: Reach,
    /// Suspended on this proxy by `meshwarden halt`: the proxy holds no policy of the kind.
    pub halted: bool,
    /// Every policy of the kind, in evaluation (name) order.
    pub policies: Vec<PolicyExplanation>,
}

/// One policy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyExplanation {
    pub name: String,
    /// Its selector selects the proxy.
    pub selects_proxy: bool,
    /// The proxy holds it (selected and not halted).
    pub on_proxy: bool,
    /// Its `match` selects the request (only for policies on the proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches_request: Option<bool>,
    /// It acts on the request.
    pub applies: bool,
    /// What it would do (for policies that apply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<Effect>,
    /// Why it does not apply, or what is unknown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What a policy would do, by kind.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Effect {
    #[serde(rename_all = "camelCase")]
    Trace {
        /// `started`, `propagated` or `repaired`.
        outcome: String,
        /// Headers set on the upstream request.
        sets: Vec<String>,
        /// Headers removed.
        removes: Vec<String>,
        /// Whether the trace is sampled; `None` when it is drawn at random.
        sampled: Option<bool>,
        sampling_percentage: f64,
        /// Where the proxy's span goes (`otlp to cluster otel`), unless the request is not
        /// sampled.
        #[serde(skip_serializing_if = "Option::is_none")]
        export: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    RateLimit {
        /// `100 requests per second (burst 50)` (an override's if one matches).
        limit: Option<String>,
        /// The request's descriptor values (its bucket).
        bucket: Vec<(String, String)>,
        /// Index of the override that applies.
        #[serde(skip_serializing_if = "Option::is_none")]
        override_index: Option<usize>,
        max_concurrent: Option<u64>,
        /// A concurrency limit (`maxConcurrent` or `shedding`) may answer the request.
        #[serde(skip)]
        sheds: bool,
        dry_run: bool,
        /// What happens when the limit is reached.
        when_limited: String,
        remaining_tokens: &'static str,
    },
    #[serde(rename_all = "camelCase")]
    Fault {
        #[serde(skip_serializing_if = "Option::is_none")]
        delay: Option<Draw>,
        #[serde(skip_serializing_if = "Option::is_none")]
        abort: Option<Draw>,
        #[serde(skip_serializing_if = "Option::is_none")]
        response_delay: Option<Draw>,
        #[serde(skip_serializing_if = "Option::is_none")]
        response_override: Option<Draw>,
        dry_run: bool,
    },
    #[serde(rename_all = "camelCase")]
    Mirror { targets: Vec<MirrorTargetView> },
    #[serde(rename_all = "camelCase")]
    CircuitBreaker {
        /// The request's descriptor values (its breaker).
        breaker: Vec<(String, String)>,
        /// `failure rate >= 50% or slow-call rate (>= 60s) >= 100% over the last 100 calls
        /// (at least 100)`.
        opens_when: String,
        /// What an open breaker answers, and for how long.
        while_open: String,
        dry_run: bool,
        /// The breaker's state lives in the proxy.
        state: &'static str,
    },
    #[serde(rename_all = "camelCase")]
    Capture {
        /// Whether the request is summarised; `None` when it is drawn at random.
        sampled: Option<bool>,
        sampling_percentage: f64,
        max_per_second: u32,
        /// Headers that go with the summary; those redacted are marked `(redacted)`.
        headers: Vec<String>,
        /// Where summaries are reported (`cluster meshwarden_xds`).
        report: String,
    },
}

/// One fault of a policy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Draw {
    /// `abort 503`, `delay 250ms`, ...
    pub what: String,
    /// Configured share of requests, 0-100.
    pub percentage: f64,
    /// Whether this request gets it: known with a sticky key or at 0 / 100 %, `None` when
    /// drawn at random.
    pub selected: Option<bool>,
}

/// One mirror target.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorTargetView {
    pub target: String,
    pub cluster: String,
    pub percentage: f64,
    /// Whether this request is copied to it; `None` when drawn at random.
    pub selected: Option<bool>,
    /// Why not, when known (`method`, `sampled_out`, `body_too_large`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<&'static str>,
}

/// Why an explanation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The proxy's configuration of `kind` does not parse (it would be NACKed).
    #[error("the {kind} configuration of this proxy is refused by the filter: {error}")]
    Config { kind: Kind, error: ValidationError },
}

/// Draws of 0 and of `SCALE - 1` are the two ends of every percentage comparison, so a
/// decision that comes out the same with both does not depend on chance.
const LOW: u64 = 0;
const HIGH: u64 = 99_999_999;

/// A random source that always yields one value.
struct Fixed(u64);

impl Random for Fixed {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.0
    }
}

/// Explains `request` on the proxy `node` under `set` (policies and halts); `now_ms` is the
/// wall clock for `expiresAt`.
pub fn explain(
    set: &PolicySet,
    node: &NodeInfo,
    request: &RequestView,
    now_ms: i64,
) -> Result<Explanation, ExplainError> {
    let headers = request.headers();
    let selected = selection(set, node);
    let mut reached = Reach::Yes;
    let mut filters = Vec::with_capacity(Kind::CHAIN.len());
    for kind in Kind::CHAIN {
        let on_proxy: Vec<&StoredPolicy> = selected
            .get(&kind)
            .map(|ix| ix.iter().map(|&i| &set.policies[i as usize]).collect())
            .unwrap_or_default();
        let mut filter = match kind {
            Kind::TracePolicy => evaluate::<TraceSpec>(kind, &on_proxy, &headers, trace)?,
            Kind::CapturePolicy => evaluate::<CaptureSpec>(kind, &on_proxy, &headers, capture)?,
            Kind::RateLimitPolicy => {
                evaluate::<RateLimitSpec>(kind, &on_proxy, &headers, ratelimit)?
            }
            Kind::FaultPolicy => {
                evaluate::<FaultSpec>(kind, &on_proxy, &headers, |p, h| fault(p, h, now_ms))?
            }
            Kind::MirrorPolicy => evaluate::<MirrorSpec>(kind, &on_proxy, &headers, mirror)?,
            Kind::CircuitBreakerPolicy => {
                evaluate::<CircuitBreakerSpec>(kind, &on_proxy, &headers, circuit_breaker)?
            }
        };
        filter.reached = reached;
        reached = reached.min_with(answers_locally(&filter));
        add_unselected(&mut filter, set, node);
        filters.push(filter);
    }
    Ok(Explanation {
        node_id: node.id.clone(),
        cluster: node.cluster.clone(),
        request: request.clone(),
        filters,
    })
}

impl Reach {
    /// The reach of the next filter, given whether this one answers: no if either says no.
    fn min_with(self, next: Reach) -> Reach {
        match (self, next) {
            (Reach::No, _) | (_, Reach::No) => Reach::No,
            (Reach::Maybe, _) | (_, Reach::Maybe) => Reach::Maybe,
            _ => Reach::Yes,
        }
    }
}

/// Whether a filter's applying policies let the request go on: `No` if one answers it for
/// sure, `Maybe` if one may.
fn answers_locally(filter: &FilterExplanation) -> Reach {
    let mut reach = Reach::Yes;
    for effect in filter.policies.iter().filter_map(|p| p.effect.as_ref()) {
        let this = match effect {
            Effect::RateLimit {
                dry_run: false,
                limit,
                sheds,
                ..
            } if limit.is_some() || *sheds => Reach::Maybe,
            Effect::CircuitBreaker { dry_run: false, .. } => Reach::Maybe,
            Effect::Fault {
                abort: Some(d),
                dry_run: false,
                ..
            } => match d.selected {
                Some(true) => Reach::No,
                Some(false) => Reach::Yes,
                None => Reach::Maybe,
            },
            _ => Reach::Yes,
        };
        reach = reach.min_with(this);
    }
    reach
}

/// Compiles the proxy's policies of one kind as its filter does, and explains each with
/// `effect` (which returns the effect, or `None` with the reason it does not apply).
fn evaluate<S: KindSpec>(
    kind: Kind,
    on_proxy: &[&StoredPolicy],
    headers: &RequestHeaders,
    effect: impl Fn(&CompiledPolicy<S>, &RequestHeaders) -> Result<Effect, String>,
) -> Result<FilterExplanation, ExplainError> {
    let wire = serde_json::to_vec(&wire_config(on_proxy.iter().copied()))
        .expect("wire configs always serialize");
    let config =
        FilterConfig::<S>::parse(&wire).map_err(|error| ExplainError::Config { kind, error })?;
    let evaluation = match kind {
        Kind::RateLimitPolicy => Evaluation::EveryMatch,
        _ => Evaluation::FirstMatch,
    };
    let mut taken = false;
    let mut policies = Vec::with_capacity(config.policies.len());
    for p in &config.policies {
        let matches = p.matcher.matches(headers);
        let mut out = PolicyExplanation {
            name: p.name.to_string(),
            selects_proxy: true,
            on_proxy: true,
            matches_request: Some(matches),
            applies: false,
            effect: None,
            notes: Vec::new(),
        };
        if !matches {
            out.notes
                .push("its match does not select the request".into());
        } else if taken {
            out.notes
                .push("an earlier matching policy applies (first match wins)".into());
        } else {
            match effect(p, headers) {
                Ok(e) => {
                    out.applies = true;
                    out.effect = Some(e);
                    taken = evaluation == Evaluation::FirstMatch;
                }
                Err(why) => out.notes.push(why),
            }
        }
        policies.push(out);
    }
    Ok(FilterExplanation {
        kind,
        filter: format!("meshwarden.{}", kind.filter()),
        evaluation,
        reached: Reach::Yes,
        halted: false,
        policies,
    })
}

/// Lists the kind's policies the proxy does not hold, in name order among the others.
fn add_unselected(filter: &mut FilterExplanation, set: &PolicySet, node: &NodeInfo) {
    filter.halted = crate::halt::halted(&set.halts, filter.kind, node);
    for p in set.of_kind(filter.kind) {
        if filter.policies.iter().any(|q| q.name == p.name()) {
            continue;
        }
        let selects = p.doc.selector.selects(node);
        let why = if selects {
            "halted on this proxy (`meshwarden resume` lifts it)"
        } else {
            "its selector does not select this proxy"
        };
        filter.policies.push(PolicyExplanation {
            name: p.name().to_string(),
            selects_proxy: selects,
            on_proxy: false,
            matches_request: None,
            applies: false,
            effect: None,
            notes: vec![why.into()],
        });
    }
    filter.policies.sort_by(|a, b| a.name.cmp(&b.name));
}

fn trace(p: &CompiledPolicy<TraceSpec>, headers: &RequestHeaders) -> Result<Effect, String> {
    let mut state = 0x5eed_u64;
    let mut fill = |buf: &mut [u8]| {
        for b in buf {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            *b = (state >> 33) as u8 | 1;
        }
    };
    let plan = decide(headers, &p.spec, &mut fill);
    let (mut sets, mut removes) = (Vec::new(), Vec::new());
    for op in &plan.ops {
        match op {
            HeaderOp::Set { name, .. } => sets.push(name.to_string()),
            HeaderOp::Remove { name } => removes.push(name.to_string()),
        }
    }
    let pct = p.spec.sampling_percentage.value();
    let random = plan.outcome.as_str() == "started" && pct > 0.0 && pct < 100.0;
    Ok(Effect::Trace {
        outcome: plan.outcome.as_str().to_string(),
        sets,
        removes,
        sampled: (!random).then_some(plan.sampled),
        sampling_percentage: pct,
        export: p
            .spec
            .export
            .as_ref()
            .filter(|_| random || plan.sampled)
            .map(|e| format!("{} to cluster {}", e.format.as_str(), e.cluster)),
    })
}

fn capture(p: &CompiledPolicy<CaptureSpec>, _: &RequestHeaders) -> Result<Effect, String> {
    let pct = p.spec.sampling_percentage.value();
    let headers = p
        .spec
        .headers
        .iter()
        .map(|h| match p.spec.is_redacted(h.as_str()) {
            true => format!("{h} (redacted)"),
            false => h.to_string(),
        })
        .collect();
    Ok(Effect::Capture {
        sampled: (pct == 0.0 || pct == 100.0).then_some(pct == 100.0),
        sampling_percentage: pct,
        max_per_second: p.spec.max_per_second,
        headers,
        report: format!("cluster {}", p.spec.report.cluster),
    })
}

/// Each descriptor's name and the value the request gives it (as the filter reads it,
/// without a peer address), shown as text.
fn descriptor_values(
    descriptors: &[meshwarden_common::ratelimit::Descriptor],
    headers: &RequestHeaders,
) -> Vec<(String, String)> {
    descriptors
        .iter()
        .map(|d| {
            let v = d.value(headers, None);
            (
                d.name().to_string(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

fn circuit_breaker(
    p: &CompiledPolicy<CircuitBreakerSpec>,
    headers: &RequestHeaders,
) -> Result<Effect, String> {
    let spec = &p.spec;
    let breaker = descriptor_values(&spec.descriptors, headers);
    let window = match spec.window() {
        SlidingWindow::Count(n) => format!("the last {n} calls"),
        SlidingWindow::Duration(d) => format!("the calls of the last {d}"),
    };
    let opens_when = format!(
        "failure rate >= {}% or slow-call rate (calls of {} or more) >= {}% over {window} (at least {} calls)",
        spec.failure_threshold().value(),
        meshwarden_common::duration::DurationSpec::from_millis(spec.slow_call_ms()),
        spec.slow_threshold().value(),
        spec.minimum_calls(),
    );
    let fallback = spec.fallback();
    let while_open = format!(
        "answers {} (gRPC {}) without calling the upstream for {}, then lets {} trial calls through",
        fallback.status(),
        fallback.grpc(),
        meshwarden_common::duration::DurationSpec::from_millis(spec.wait_ms()),
        spec.half_open_calls(),
    );
    Ok(Effect::CircuitBreaker {
        breaker,
        opens_when,
        while_open,
        dry_run: spec.dry_run,
        state: "in the proxy (meshwarden_circuitbreaker_state metric)",
    })
}

fn ratelimit(
    p: &CompiledPolicy<RateLimitSpec>,
    headers: &RequestHeaders,
) -> Result<Effect, String> {
    let spec = &p.spec;
    let values = descriptor_values(&spec.descriptors, headers);
    // The filter's rule: the first override whose entries all equal the descriptor values.
    let override_index = spec.overrides.iter().position(|o| {
        o.descriptor_match
            .iter()
            .all(|(name, want)| values.iter().any(|(n, v)| n == name && v == want))
    });
    let limit = match override_index {
        Some(i) => Some(meshwarden_common::ratelimit::rate::Limit::new(
            spec.overrides[i].rate,
            spec.overrides[i].burst,
        )),
        None => spec.limit(),
    };
    let concurrency = match (&spec.shedding, spec.max_concurrent) {
        (Some(s), _) => Some(Shedding::new(s).explain(headers)),
        (None, Some(n)) => Some(format!("503 above {n} in flight")),
        (None, None) => None,
    };
    let sheds = concurrency.is_some();
    let when_limited = match (limit.is_some(), concurrency, spec.dry_run) {
        (_, _, true) => "dry run: never rejected; counted as shadow_limited".to_string(),
        (true, Some(c), false) => format!("429 when the bucket has no whole token; {c}"),
        (true, None, false) => "429 when the bucket has no whole token".to_string(),
        (false, Some(c), false) => c,
        (false, None, false) => "never".to_string(),
    };
    let when_limited = if spec.is_global() {
        let on_failure = match spec.failure_mode {
            meshwarden_common::ratelimit::FailureMode::Allow => "let through",
            meshwarden_common::ratelimit::FailureMode::Deny => "429",
        };
        format!(
            "{when_limited} (scope global: one bucket for every selected proxy, decided by the rate limit service; {on_failure} if it does not answer within {})",
            spec.global_timeout()
        )
    } else {
        when_limited
    };
    Ok(Effect::RateLimit {
        limit: limit.map(|l| l.describe()),
        bucket: values,
        override_index,
        max_concurrent: spec.max_concurrent,
        sheds,
        dry_run: spec.dry_run,
        when_limited,
        remaining_tokens: TOKENS_UNKNOWN,
    })
}

fn fault(
    p: &CompiledPolicy<FaultSpec>,
    headers: &RequestHeaders,
    now_ms: i64,
) -> Result<Effect, String> {
    let spec = &p.spec;
    // The request is explained as from a caller without a client certificate: explain
    // knows its headers, not the TLS connection it would arrive on.
    let peer = Peer::default();
    if !spec.source_matches(headers, &peer) {
        let by_identity = spec
            .source
            .as_ref()
            .is_some_and(|s| !s.identities.is_empty());
        return Err(if by_identity {
            "its source selects callers by peer certificate identity, which explain cannot present"
                .into()
        } else {
            "its source does not select the request's caller".into()
        });
    }
    if spec
        .expires_at
        .as_ref()
        .is_some_and(|t| now_ms >= t.unix_millis())
    {
        return Err("expired (expiresAt has passed)".into());
    }
    // The same plan with both extreme draws: what agrees does not depend on chance.
    let low = spec.plan(headers, &peer, &mut Fixed(LOW));
    let high = spec.plan(headers, &peer, &mut Fixed(HIGH));
    let known = |f: fn(&FaultPlan) -> bool| (f(&low) == f(&high)).then_some(f(&low));
    let abort = spec.abort.as_ref().map(|a| Draw {
        what: match low.abort.map(|a| a.status) {
            Some(AbortStatus::Grpc(g)) => format!("abort with gRPC status {g:?}"),
            _ => match (a.http_status, a.grpc_status) {
                (_, Some(g)) => format!("abort with gRPC status {g:?}"),
                (Some(h), None) => format!("abort {}", h.code()),
                (None, None) => "abort 503".into(),
            },
        },
        percentage: a.percentage().value(),
        selected: known(|p| p.abort.is_some()),
    });
    let delay = spec.delay.as_ref().map(|d| Draw {
        what: format!("delay {}", delay_words(d)),
        percentage: d.percentage().value(),
        selected: known(|p| p.delay_ms.is_some()),
    });
    let response_delay = spec.response_delay.as_ref().map(|d| Draw {
        what: format!("response delay {}", delay_words(d)),
        percentage: d.percentage().value(),
        selected: known(|p| p.response_delay_ms.is_some()),
    });
    let response_override = spec.response_override.as_ref().map(|o| Draw {
        what: format!("response status {}", o.http_status.code()),
        percentage: o.percentage().value(),
        selected: known(|p| p.response_override),
    });
    Ok(Effect::Fault {
        delay,
        abort,
        response_delay,
        response_override,
        dry_run: spec.dry_run,
    })
}

fn delay_words(d: &meshwarden_common::fault::DelaySpec) -> String {
    match (d.fixed_delay, d.jitter, d.range) {
        (Some(f), Some(j), _) => format!("{}ms ± {}ms", f.as_millis(), j.as_millis()),
        (Some(f), None, _) => format!("{}ms", f.as_millis()),
        (None, _, Some(r)) => format!("{}-{}ms", r.min.as_millis(), r.max.as_millis()),
        (None, _, None) => "0ms".into(),
    }
}

fn mirror(p: &CompiledPolicy<MirrorSpec>, headers: &RequestHeaders) -> Result<Effect, String> {
    let compiled = p.spec.compile().map_err(|e| e.to_string())?;
    let low = compiled.select(headers, &mut Fixed(LOW));
    let high = compiled.select(headers, &mut Fixed(HIGH));
    let reason = |sel: &meshwarden_common::mirror::Selection, i: usize| -> Option<SkipReason> {
        if sel.chosen.contains(&i) {
            return None;
        }
        // Copies not chosen are skipped for the same reason when all share one.
        sel.skipped.first().copied()
    };
    let targets = compiled
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (a, b) = (low.chosen.contains(&i), high.chosen.contains(&i));
            MirrorTargetView {
                target: t.target.to_string(),
                cluster: t.cluster.clone(),
                percentage: t.percentage.value(),
                selected: (a == b).then_some(a),
                skipped: (a == b && !a)
                    .then(|| reason(&low, i).map(SkipReason::as_str))
                    .flatten(),
            }
        })
        .collect();
    Ok(Effect::Mirror { targets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::halt::Halt;
    use crate::test_fixtures::stored;
    use serde_json::json;

    fn node(zone: &str) -> NodeInfo {
        NodeInfo {
            id: "edge-1".into(),
            cluster: "shop".into(),
            labels: [("zone".to_string(), zone.to_string())].into(),
            namespace: None,
        }
    }

    fn get(path: &str, headers: &[(&str, &str)]) -> RequestView {
        RequestView {
            method: "GET".into(),
            path: path.into(),
            authority: "shop.local".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn set(policies: Vec<StoredPolicy>) -> PolicySet {
        let mut policies = policies;
        policies.sort_by(|a, b| (a.kind(), a.name()).cmp(&(b.kind(), b.name())));
        PolicySet {
            generation: 1,
            policies,
            halts: Vec::new(),
        }
    }

    fn filter(e: &Explanation, kind: Kind) -> &FilterExplanation {
        e.filters.iter().find(|f| f.kind == kind).unwrap()
    }

    fn policy<'a>(f: &'a FilterExplanation, name: &str) -> &'a PolicyExplanation {
        f.policies.iter().find(|p| p.name == name).unwrap()
    }

    fn sticky_abort(name: &str, pct: f64) -> StoredPolicy {
        stored(
            "FaultPolicy",
            name,
            json!({"match": {"path": {"prefix": "/api"}},
                   "abort": {"httpStatus": 503, "percentage": {"value": pct}},
                   "sticky": {"header": "x-user", "seed": 7}}),
        )
    }

    #[test]
    fn filters_come_in_chain_order_and_first_match_wins() {
        let s = set(vec![
            stored(
                "TracePolicy",
                "a-api",
                json!({"match": {"path": {"prefix": "/api"}}}),
            ),
            stored("TracePolicy", "b-all", json!({})),
            stored(
                "TracePolicy",
                "c-eu",
                json!({"selector": {"labels": {"zone": "us"}}}),
            ),
        ]);
        let e = explain(&s, &node("eu"), &get("/api/x", &[]), 0).unwrap();
        let kinds: Vec<Kind> = e.filters.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, Kind::CHAIN);
        let t = filter(&e, Kind::TracePolicy);
        assert!(policy(t, "a-api").applies);
        let b = policy(t, "b-all");
        assert!(!b.applies && b.matches_request == Some(true));
        assert!(b.notes[0].contains("earlier matching policy"));
        let c = policy(t, "c-eu");
        assert!(!c.selects_proxy && !c.on_proxy && c.matches_request.is_none());
        let Some(Effect::Trace {
            outcome,
            sets,
            sampled,
            ..
        }) = &policy(t, "a-api").effect
        else {
            panic!("trace effect")
        };
        assert_eq!(outcome, "started");
        assert!(sets.contains(&"traceparent".to_string()), "{sets:?}");
        assert_eq!(*sampled, Some(true), "100 % sampling is no draw");
        // Another path: the first policy does not match, the second applies.
        let e = explain(&s, &node("eu"), &get("/web", &[]), 0).unwrap();
        let t = filter(&e, Kind::TracePolicy);
        assert_eq!(policy(t, "a-api").matches_request, Some(false));
        assert!(policy(t, "b-all").applies);
    }

    #[test]
    fn a_sampled_request_of_an_exporting_policy_names_the_collector() {
        let spec = json!({"export": {"cluster": "otel", "format": "zipkin"}});
        let s = set(vec![stored("TracePolicy", "t", spec)]);
        let export_of = |tp: &str| {
            let e = explain(&s, &node("eu"), &get("/x", &[("traceparent", tp)]), 0).unwrap();
            match &policy(filter(&e, Kind::TracePolicy), "t").effect {
                Some(Effect::Trace { export, .. }) => export.clone(),
                other => panic!("trace effect, got {other:?}"),
            }
        };
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        assert_eq!(
            export_of(&format!("{tp}-01")).as_deref(),
            Some("zipkin to cluster otel")
        );
        assert_eq!(export_of(&format!("{tp}-00")), None, "not sampled: no span");
    }

    #[test]
    fn every_matching_rate_limit_applies_with_its_bucket_and_override() {
        let s = set(vec![
            stored(
                "RateLimitPolicy",
                "per-tenant",
                json!({"rate": {"requests": 10, "unit": "second"},
                       "descriptors": [{"header": "x-tenant"}],
                       "overrides": [{"match": {"x-tenant": "gold"},
                                      "rate": {"requests": 100, "unit": "second"}}]}),
            ),
            stored("RateLimitPolicy", "pool", json!({"maxConcurrent": 5})),
        ]);
        let e = explain(&s, &node("eu"), &get("/", &[("x-tenant", "gold")]), 0).unwrap();
        let r = filter(&e, Kind::RateLimitPolicy);
        assert_eq!(r.evaluation, Evaluation::EveryMatch);
        assert!(r.policies.iter().all(|p| p.applies));
        let Some(Effect::RateLimit {
            limit,
            bucket,
            override_index,
            remaining_tokens,
            ..
        }) = &policy(r, "per-tenant").effect
        else {
            panic!("rate limit effect")
        };
        assert_eq!(
            limit.as_deref(),
            Some("100 requests per second (burst 100)")
        );
        assert_eq!(bucket, &[("x-tenant".to_string(), "gold".to_string())]);
        assert_eq!(*override_index, Some(0));
        assert_eq!(*remaining_tokens, TOKENS_UNKNOWN);
        // A rate limit may answer: the later filters are reached only maybe.
        assert_eq!(filter(&e, Kind::FaultPolicy).reached, Reach::Maybe);
    }

    #[test]
    fn shedding_says_which_class_and_limit_apply() {
        let s = set(vec![stored(
            "RateLimitPolicy",
            "shed",
            json!({"shedding": {"adaptive": {"minLimit": 2},
                   "classes": [{"name": "critical", "match": {"headers": [{"name": "x-priority", "exact": "critical"}]}}],
                   "defaultShare": {"value": 80}, "status": 429}}),
        )]);
        let e = explain(&s, &node("eu"), &get("/", &[("x-priority", "critical")]), 0).unwrap();
        let r = filter(&e, Kind::RateLimitPolicy);
        let Some(Effect::RateLimit { when_limited, .. }) = &policy(r, "shed").effect else {
            panic!("rate limit effect")
        };
        assert_eq!(
            when_limited,
            "429 (Retry-After 1 s) once class critical has 100% of the adaptive limit (2 to 1000, found from latency) in flight"
        );
        assert_eq!(filter(&e, Kind::FaultPolicy).reached, Reach::Maybe);
    }

    #[test]
    fn a_global_rate_limit_says_who_decides() {
        let s = set(vec![stored(
            "RateLimitPolicy",
            "fleet",
            json!({"rate": {"requests": 10, "unit": "second"}, "scope": "global",
                   "failureMode": "deny", "timeout": "250ms"}),
        )]);
        let e = explain(&s, &node("eu"), &get("/", &[]), 0).unwrap();
        let r = filter(&e, Kind::RateLimitPolicy);
        let Some(Effect::RateLimit { when_limited, .. }) = &policy(r, "fleet").effect else {
            panic!("rate limit effect")
        };
        assert_eq!(
            when_limited,
            "429 when the bucket has no whole token (scope global: one bucket for every selected proxy, decided by the rate limit service; 429 if it does not answer within 250ms)"
        );
    }

    #[test]
    fn sticky_faults_are_known_per_key_and_agree_with_the_filters_plan() {
        let s = set(vec![sticky_abort("chaos", 50.0)]);
        let mut seen = [false, false];
        for user in 0..40 {
            let user = format!("u{user}");
            let req = get("/api", &[("x-user", &user)]);
            let e = explain(&s, &node("eu"), &req, 0).unwrap();
            let f = filter(&e, Kind::FaultPolicy);
            let Some(Effect::Fault { abort: Some(d), .. }) = &policy(f, "chaos").effect else {
                panic!("fault effect")
            };
            let selected = d.selected.expect("a sticky key decides");
            assert_eq!(d.what, "abort 503");
            // The filter's own plan with any randomness gives the same answer.
            let FilterConfig { policies, .. } = FilterConfig::<FaultSpec>::parse(
                &serde_json::to_vec(&wire_config(s.policies.iter())).unwrap(),
            )
            .unwrap();
            let plan = policies[0].spec.plan(
                &req.headers(),
                &Peer::default(),
                &mut meshwarden_common::fault::SplitMix64(9),
            );
            assert_eq!(plan.abort.is_some(), selected, "user {user}");
            seen[usize::from(selected)] = true;
            let m = filter(&e, Kind::MirrorPolicy);
            assert_eq!(m.reached, if selected { Reach::No } else { Reach::Yes });
        }
        assert_eq!(seen, [true, true], "both outcomes occur at 50 %");
        // Without the key (whenMissing: skip) nothing is injected; at random it is a chance.
        let e = explain(&s, &node("eu"), &get("/api", &[]), 0).unwrap();
        let f = filter(&e, Kind::FaultPolicy);
        let Some(Effect::Fault { abort: Some(d), .. }) = &policy(f, "chaos").effect else {
            panic!()
        };
        assert_eq!(d.selected, Some(false));
        let random = set(vec![stored(
            "FaultPolicy",
            "r",
            json!({"abort": {"httpStatus": 500, "percentage": {"value": 5}}}),
        )]);
        let e = explain(&random, &node("eu"), &get("/", &[]), 0).unwrap();
        let Some(Effect::Fault { abort: Some(d), .. }) =
            &policy(filter(&e, Kind::FaultPolicy), "r").effect
        else {
            panic!()
        };
        assert_eq!((d.selected, d.percentage), (None, 5.0));
    }

    #[test]
    fn mirror_targets_methods_and_halts() {
        let shadow = stored(
            "MirrorPolicy",
            "shadow",
            json!({"mirrors": [{"target": {"cluster": "v2"}, "percentage": {"value": 100}},
                               {"target": {"host": "10.0.0.7:8080"}, "percentage": {"value": 10}}]}),
        );
        let mut s = set(vec![shadow, sticky_abort("chaos", 100.0)]);
        let e = explain(&s, &node("eu"), &get("/", &[]), 0).unwrap();
        let Some(Effect::Mirror { targets }) =
            &policy(filter(&e, Kind::MirrorPolicy), "shadow").effect
        else {
            panic!()
        };
        assert_eq!(targets[0].selected, Some(true));
        assert_eq!(targets[0].cluster, "v2");
        assert_eq!(targets[1].selected, None);
        assert_eq!(targets[1].percentage, 10.0);
        let mut post = get("/", &[]);
        post.method = "POST".into();
        let e = explain(&s, &node("eu"), &post, 0).unwrap();
        let Some(Effect::Mirror { targets }) =
            &policy(filter(&e, Kind::MirrorPolicy), "shadow").effect
        else {
            panic!()
        };
        assert_eq!(
            (targets[0].selected, targets[0].skipped),
            (Some(false), Some("method"))
        );
        // A halt: the proxy holds no fault or mirror policy, and says why.
        s.halts = vec![Halt::new("h", &[], Default::default(), String::new(), 0).unwrap()];
        let e = explain(&s, &node("eu"), &get("/api", &[("x-user", "u1")]), 0).unwrap();
        for kind in [Kind::FaultPolicy, Kind::MirrorPolicy] {
            let f = filter(&e, kind);
            assert!(f.halted);
            assert!(f
                .policies
                .iter()
                .all(|p| !p.applies && p.selects_proxy && !p.on_proxy));
            assert!(f.policies[0].notes[0].starts_with("halted"));
        }
    }

    #[test]
    fn expired_and_other_callers_faults_do_not_apply() {
        let s = set(vec![
            stored(
                "FaultPolicy",
                "a-expired",
                json!({"abort": {"httpStatus": 500, "percentage": {"value": 100}},
                       "expiresAt": "2020-01-01T00:00:00Z"}),
            ),
            stored(
                "FaultPolicy",
                "b-web-only",
                json!({"abort": {"httpStatus": 502, "percentage": {"value": 100}},
                       "source": {"clusters": ["web"], "trustHeaders": true}}),
            ),
            stored(
                "FaultPolicy",
                "b-shop-identity",
                json!({"abort": {"httpStatus": 503, "percentage": {"value": 100}},
                       "source": {"identities": ["spiffe://cluster.local/ns/shop/*"]}}),
            ),
            stored(
                "FaultPolicy",
                "c-any",
                json!({"abort": {"httpStatus": 504, "percentage": {"value": 100}}}),
            ),
        ]);
        let e = explain(&s, &node("eu"), &get("/", &[]), 1_700_000_000_000).unwrap();
        let f = filter(&e, Kind::FaultPolicy);
        assert!(policy(f, "a-expired").notes[0].starts_with("expired"));
        assert!(policy(f, "b-web-only").notes[0].contains("source"));
        assert!(policy(f, "b-shop-identity").notes[0].contains("peer certificate identity"));
        assert!(policy(f, "c-any").applies);
        let e = explain(
            &s,
            &node("eu"),
            &get("/", &[("x-envoy-downstream-service-cluster", "web")]),
            1_700_000_000_000,
        )
        .unwrap();
        assert!(policy(filter(&e, Kind::FaultPolicy), "b-web-only").applies);
    }

    #[test]
    fn a_circuit_breaker_says_when_it_opens_and_what_it_answers_and_may_stop_the_request() {
        let s = set(vec![
            stored(
                "CircuitBreakerPolicy",
                "orders",
                json!({"match": {"path": {"prefix": "/api"}},
                       "descriptors": [{"header": "x-tenant"}],
                       "slidingWindow": {"count": 20}, "minimumNumberOfCalls": 10,
                       "waitDurationInOpenState": "30s",
                       "fallback": {"httpStatus": 200}}),
            ),
            sticky_abort("chaos", 100.0),
        ]);
        let e = explain(&s, &node("eu"), &get("/api/x", &[("x-tenant", "a")]), 0).unwrap();
        let cb = filter(&e, Kind::CircuitBreakerPolicy);
        let Some(Effect::CircuitBreaker {
            breaker,
            opens_when,
            while_open,
            dry_run: false,
            ..
        }) = &policy(cb, "orders").effect
        else {
            panic!("{:?}", policy(cb, "orders"))
        };
        assert_eq!(breaker, &[("x-tenant".to_string(), "a".to_string())]);
        assert!(opens_when.contains("failure rate >= 50%"), "{opens_when}");
        assert!(
            opens_when.contains("the last 20 calls (at least 10"),
            "{opens_when}"
        );
        assert!(while_open.starts_with("answers 200"), "{while_open}");
        assert!(while_open.contains("for 30s"), "{while_open}");
        // An open breaker would answer: the fault after it is reached only maybe.
        assert_eq!(filter(&e, Kind::FaultPolicy).reached, Reach::Maybe);
    }
}
