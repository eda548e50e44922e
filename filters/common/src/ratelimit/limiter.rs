//! The rate-limit filter's decision for a request: every matching policy's token bucket,
//! then every matching policy's concurrency limit, against the proxy's shared data.
//!
//! Order of evaluation:
//! 1. Each matching policy with a `rate` takes a token from the request's bucket. If any
//!    enforcing policy has none, the request is answered 429 (every policy that matched
//!    has already taken its token: like Envoy's own limiters, a rejected request still
//!    counts against the limits it passed).
//! 2. Each matching policy with `maxConcurrent` counts the request in. If an enforcing
//!    policy is full, the ones already entered are released and the request is answered
//!    503.
//! 3. Otherwise the request goes upstream; the policies it entered are released when its
//!    stream ends, whatever the outcome ([`Limiter::release`]).
//!
//! Dry-run policies take part in both steps, count what they would have rejected, and
//! never reject.
//!
//! A `scope: global` policy takes its token from the rate limit service instead of shared
//! data: the filter first asks [`Limiter::global_call`] which call a request needs, makes
//! it, and hands the answer to [`Limiter::decide`] as a [`GlobalAnswer`]; step 1 then reads
//! the global policies' outcome from it (no answer in time: the policy's `failureMode`).
//!
//! A global policy with a `lease` first tries a leased token of the proxy ([`super::lease`]):
//! with one, the policy needs no call; without, the call asks for `lease.tokens` hits for
//! it, and [`Limiter::settle`] keeps the spare ones — or, when the service cannot grant that
//! many, asks again for a single hit ([`Settled::Retry`]), and the proxy's next requests
//! ask singly until the rate could have refilled a lease.

use super::bucket::Take;
use super::concurrency;
use super::descriptor::Descriptor;
use super::global;
use super::gradient::{self, GradientParams};
use super::key::BucketKey;
use super::lease::{self, Claim, Grant, LeaseSpace};
use super::rate::Limit;
use super::response::{
    legacy_fields, ratelimit_fields, Problem, QuotaItem, CONCURRENT_SUFFIX,
    GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE, PROBLEM_JSON, QUOTA_EXCEEDED, QUOTA_EXCEEDED_TITLE,
    REDUCED_CAPACITY_TITLE, TEMPORARY_REDUCED_CAPACITY,
};
use super::rls::{self, Code, DescriptorStatus};
use super::shedding::{LimitSource, Shedding};
use super::slots::{take_at, take_keyed, KeyedTake, Keyspace};
use super::spec::{FailureMode, RateLimitSpec};
use super::store::{ensure_exists, Contended, SharedStore};
use crate::filter_config::FilterConfig;
use crate::matcher::CompiledMatch;
use crate::names::PolicyName;
use crate::request::RequestHeaders;

/// `Retry-After` of a 503 from a concurrency limit, and of a contended-state denial.
pub const BUSY_RETRY_AFTER_SECONDS: u64 = 1;

/// Prefix of every shared-data key the limiter uses.
pub const KEY_PREFIX: &str = "meshwarden.ratelimit";

/// An override, compiled: (descriptor index, exact value) pairs that must all match, and
/// the limit they select.
type CompiledOverride = (Vec<(usize, Vec<u8>)>, Limit);

/// One policy, ready to decide.
#[derive(Debug, Clone)]
pub struct CompiledLimit {
    pub name: PolicyName,
    matcher: CompiledMatch,
    limit: Option<Limit>,
    descriptors: Vec<Descriptor>,
    overrides: Vec<CompiledOverride>,
    max_concurrent: Option<u64>,
    shedding: Option<Shedding>,
    dry_run: bool,
    response_headers: bool,
    legacy_headers: bool,
    failure_mode: FailureMode,
    space: Keyspace,
    /// `shedding.adaptive`: the shared key of the limit's state (built once).
    adaptive_key: String,
    /// `scope: global`: the bucket is in the rate limit service.
    global: bool,
    /// `scope: global`: the call-out timeout (ms).
    timeout_ms: u64,
    /// `scope: global` with a `lease`: local pre-admission.
    lease: Option<CompiledLease>,
}

/// A global policy's `lease`, compiled.
#[derive(Debug, Clone)]
struct CompiledLease {
    space: LeaseSpace,
    tokens: u64,
    max_age_ns: u64,
    /// After a denied lease, how long requests ask for single hits: the time the policy's
    /// rate takes to refill a lease's tokens, at most `maxAge`.
    backoff_ns: u64,
}

impl CompiledLimit {
    fn new(name: PolicyName, matcher: CompiledMatch, spec: &RateLimitSpec) -> Self {
        let overrides = spec
            .overrides
            .iter()
            .map(|o| {
                let entries = o
                    .descriptor_match
                    .iter()
                    .filter_map(|(name, value)| {
                        let i = spec.descriptors.iter().position(|d| d.name() == name)?;
                        Some((i, value.as_bytes().to_vec()))
                    })
                    .collect();
                (entries, Limit::new(o.rate, o.burst))
            })
            .collect();
        let prefix = format!("{KEY_PREFIX}/{name}");
        let lease = spec.lease.filter(|_| spec.is_global()).map(|l| {
            let max_age_ns = l.max_age().as_millis().saturating_mul(1_000_000);
            let refill_ns = spec.rate.map_or(max_age_ns, |r| {
                let ns = u128::from(r.unit.nanos()) * u128::from(l.tokens)
                    / u128::from(r.requests.max(1));
                u64::try_from(ns).unwrap_or(u64::MAX)
            });
            CompiledLease {
                space: LeaseSpace::new(&prefix, !spec.descriptors.is_empty()),
                tokens: l.tokens,
                max_age_ns,
                backoff_ns: refill_ns.min(max_age_ns),
            }
        });
        let space = Keyspace::new(prefix, spec.key_slots());
        Self {
            name,
            matcher,
            limit: spec.limit(),
            descriptors: spec.descriptors.clone(),
            overrides,
            max_concurrent: spec.max_concurrent,
            shedding: spec.shedding.as_ref().map(Shedding::new),
            dry_run: spec.dry_run,
            response_headers: spec.response_headers,
            legacy_headers: spec.legacy_headers,
            failure_mode: spec.failure_mode,
            adaptive_key: format!("{}/adaptive", space.in_flight()),
            space,
            global: spec.is_global(),
            timeout_ms: spec.global_timeout().as_millis(),
            lease,
        }
    }

    /// The tokens of the policy's lease (`None`: no lease).
    pub fn lease_tokens(&self) -> Option<u64> {
        self.lease.as_ref().map(|l| l.tokens)
    }

    /// Whether the policy's bucket is in the rate limit service.
    pub fn is_global(&self) -> bool {
        self.global
    }

    fn values<'r>(&self, req: &Request<'r>) -> Vec<&'r [u8]> {
        self.descriptors
            .iter()
            .map(|d| d.value(req.headers, req.peer))
            .collect()
    }

    /// The request's descriptor values, its bucket key and the limit that applies to it
    /// (the first matching override's, else the policy's).
    fn bucket(&self, base: Limit, req: &Request<'_>) -> (BucketKey, Limit) {
        let values = self.values(req);
        let limit = self
            .overrides
            .iter()
            .find(|(entries, _)| entries.iter().all(|(i, v)| values[*i] == v.as_slice()))
            .map_or(base, |(_, l)| *l);
        (BucketKey::from_values(values.iter().copied()), limit)
    }

    fn take<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        req: &Request<'_>,
        base: Limit,
        now_ns: u64,
    ) -> (Limit, Result<KeyedTake, Contended>) {
        let (key, limit) = self.bucket(base, req);
        let result = if self.descriptors.is_empty() {
            take_at(store, &self.space.single(), &[], &limit, now_ns).map(|take| KeyedTake {
                take,
                overflow: false,
            })
        } else {
            take_keyed(store, &self.space, &key, &limit, now_ns)
        };
        (limit, result)
    }

    fn shows_headers(&self) -> bool {
        self.response_headers || self.dry_run
    }

    fn concurrent_name(&self) -> String {
        format!("{}{CONCURRENT_SUFFIX}", self.name)
    }

    /// `shedding`: the names of the classes, the default one first (`None`: the policy does
    /// not shed).
    pub fn shed_class_names(&self) -> Option<impl Iterator<Item = &str>> {
        self.shedding.as_ref().map(Shedding::class_names)
    }

    /// Whether the policy counts requests in flight.
    fn counts_in_flight(&self) -> bool {
        self.max_concurrent.is_some() || self.shedding.is_some()
    }

    /// The in-flight cap that applies to a request: `maxConcurrent`, or the request's
    /// class's share of the shedding limit (the adaptive one read from shared data).
    fn cap<S: SharedStore + ?Sized>(&self, store: &S, req: &Request<'_>) -> Option<Cap<'_>> {
        if let Some(max) = self.max_concurrent {
            return Some(Cap {
                max,
                limit: max,
                class_name: "",
                adaptive: None,
            });
        }
        let shedding = self.shedding.as_ref()?;
        let (limit, adaptive) = match shedding.source {
            LimitSource::Fixed(limit) => (limit, None),
            LimitSource::Adaptive(params) => (
                gradient::read(store, &self.adaptive_key).limit(&params),
                Some((self.adaptive_key.as_str(), params)),
            ),
        };
        let class = shedding.classify(req.headers);
        Some(Cap {
            max: class.cap(limit),
            limit,
            class_name: class.name,
            adaptive,
        })
    }
}

/// The in-flight cap of one policy for one request.
struct Cap<'a> {
    /// Requests the request's class may have in flight.
    max: u64,
    /// The policy's whole limit.
    limit: u64,
    /// The request's shedding class (empty under `maxConcurrent`).
    class_name: &'a str,
    /// The adaptive limit's key and parameters.
    adaptive: Option<(&'a str, GradientParams)>,
}

/// A request as the limiter needs it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub headers: &'a RequestHeaders,
    /// The downstream peer address (`source.address`), for `clientAddress` descriptors.
    pub peer: Option<&'a [u8]>,
}

/// What one policy did with a request, for its metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyEvents {
    pub policy: String,
    /// The request went upstream.
    pub allowed: bool,
    /// This policy answered 429.
    pub limited: bool,
    /// This policy answered 503 (concurrency).
    pub concurrency_limited: bool,
    /// Dry run: this policy would have rejected the request.
    pub shadow_limited: bool,
    /// The request's key found no bucket of its own and used the overflow bucket.
    pub overflow: bool,
    /// Shared data stayed contended, or the rate limit service did not answer;
    /// `failureMode` decided.
    pub failure: bool,
    /// The request was counted in flight (and stays counted until released).
    pub entered: bool,
    /// `shedding`: the policy's concurrency limit when the request arrived.
    pub shed_limit: Option<u64>,
    /// `shedding`: the request was shed; its class's name
    /// ([`super::shedding::DEFAULT_CLASS`] for requests in none).
    pub shed_class: Option<String>,
    /// `scope: global`: the rate limit service decided for this policy.
    pub global_checked: bool,
    /// `scope: global`: the rate limit service did not answer (in time, or sensibly).
    pub global_failure: bool,
}

/// The rate limit service call a request needs: one descriptor per global policy it
/// matched that had no leased token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalCall {
    /// The global policies asked about (indices into [`Limiter::policies`]), in
    /// descriptor order; empty when leased tokens answered for every one.
    pub policies: Vec<usize>,
    /// The `RateLimitRequest` bytes.
    pub message: Vec<u8>,
    /// How long to wait: the longest `timeout` of the policies.
    pub timeout_ms: u64,
    /// Policies that took a leased token (no call for them), with the status that stands
    /// for the service's.
    pub leased: Vec<(usize, DescriptorStatus)>,
    /// Policies of [`GlobalCall::policies`] asking for a lease, and their descriptor key.
    pub asking: Vec<(usize, BucketKey)>,
    /// Descriptor entries of [`GlobalCall::policies`], for a single-hit retry.
    descriptors: Vec<Vec<global::Entry>>,
    /// Hits asked per descriptor.
    hits: Vec<u64>,
}

impl GlobalCall {
    /// Whether the service must be asked (some policy had no leased token).
    pub fn needs_call(&self) -> bool {
        !self.policies.is_empty()
    }

    /// The answer for this call from the service's response (`Err`: no usable answer). A
    /// response without one status per descriptor is no answer (leased tokens still
    /// answer for their policies).
    pub fn answer<E>(&self, response: Result<rls::Response, E>) -> GlobalAnswer {
        let mut statuses = match response {
            Ok(r) if r.statuses.len() == self.policies.len() => {
                self.policies.iter().copied().zip(r.statuses).collect()
            }
            _ if self.leased.is_empty() => return GlobalAnswer::Unavailable,
            _ => Vec::new(),
        };
        statuses.extend(self.leased.iter().cloned());
        GlobalAnswer::Statuses(statuses)
    }

    /// The answer of leased tokens alone (for a call that [`needs_call`](Self::needs_call) not).
    pub fn leased_answer(&self) -> GlobalAnswer {
        self.answer::<()>(Ok(rls::Response::default()))
    }

    fn encode(&mut self) {
        let descriptors: Vec<(&[global::Entry], u64)> = self
            .descriptors
            .iter()
            .zip(&self.hits)
            .map(|(d, h)| (&d[..], *h))
            .collect();
        self.message = rls::encode_request_hits(global::DOMAIN, &descriptors);
    }

    /// The same call asking one hit per descriptor (no lease).
    fn single(&self) -> GlobalCall {
        let mut call = GlobalCall {
            asking: Vec::new(),
            hits: vec![1; self.hits.len()],
            ..self.clone()
        };
        call.encode();
        call
    }
}

/// What to do with the service's answer to a [`GlobalCall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Decide with this answer.
    Answer(GlobalAnswer),
    /// A lease was denied (the bucket has fewer tokens than the lease): nothing was
    /// charged; ask again with one hit per descriptor.
    Retry(GlobalCall),
}

/// What the rate limit service said about a request's global policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GlobalAnswer {
    /// No answer (error, timeout, malformed, or no call made): each global policy's
    /// `failureMode` decides.
    #[default]
    Unavailable,
    /// Each global policy's status.
    Statuses(Vec<(usize, DescriptorStatus)>),
}

impl GlobalAnswer {
    fn status(&self, policy: usize) -> Option<&DescriptorStatus> {
        match self {
            GlobalAnswer::Unavailable => None,
            GlobalAnswer::Statuses(s) => s.iter().find(|(p, _)| *p == policy).map(|(_, s)| s),
        }
    }
}

/// A policy's in-flight count that a request holds until its stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub policy: String,
    key: String,
    /// An adaptive limit's key, parameters and when the request was admitted: the
    /// release records the request's latency.
    sample: Option<(String, GradientParams, u64)>,
}

/// A local answer instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 429 or 503.
    pub status: u16,
    /// For gRPC requests: `RESOURCE_EXHAUSTED` (8) or `UNAVAILABLE` (14).
    pub grpc_status: u32,
    /// Response headers (without `content-type`).
    pub headers: Vec<(String, String)>,
    /// The problem body.
    pub problem: Problem,
}

impl Rejection {
    /// The HTTP response headers: [`Rejection::headers`] plus `content-type`.
    pub fn http_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![("content-type".to_string(), PROBLEM_JSON.to_string())];
        h.extend(self.headers.iter().cloned());
        h
    }

    /// The HTTP body.
    pub fn body(&self) -> String {
        self.problem.to_json()
    }

    /// The `grpc-message` of a gRPC answer.
    pub fn grpc_message(&self) -> &str {
        &self.problem.detail
    }
}

/// Forward (adding these headers to the response) or answer locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        response_headers: Vec<(String, String)>,
    },
    Reject(Rejection),
}

/// The limiter's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// One entry per matching policy, in configuration order.
    pub events: Vec<PolicyEvents>,
    /// In-flight counts to release when the stream ends.
    pub held: Vec<Held>,
}

/// Every RateLimitPolicy of a filter configuration, ready to decide.
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    policies: Vec<CompiledLimit>,
    index: crate::index::PolicyIndex,
}

struct RateOutcome {
    policy: usize,
    item: Option<QuotaItem>,
    violated: bool,
    detail: String,
}

impl Limiter {
    /// Compiles a validated configuration.
    pub fn new(config: &FilterConfig<RateLimitSpec>) -> Self {
        let policies = config
            .policies
            .iter()
            .map(|p| CompiledLimit::new(p.name.clone(), p.matcher.clone(), &p.spec))
            .collect();
        Self {
            policies,
            index: config.index.clone(),
        }
    }

    /// The compiled policies.
    pub fn policies(&self) -> &[CompiledLimit] {
        &self.policies
    }

    /// No policy: the filter passes everything through.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether any policy keys by client address (the filter then reads the peer).
    pub fn needs_peer(&self) -> bool {
        self.policies
            .iter()
            .any(|p| p.descriptors.iter().any(Descriptor::needs_peer))
    }

    /// Creates every shared-data key the policies use, so that every later write is a
    /// true compare-and-swap. Call on each configuration; keys that exist are left alone.
    pub fn prepare<S: SharedStore + ?Sized>(&self, store: &S) {
        for p in &self.policies {
            if p.limit.is_some() && !p.global {
                for key in p.space.bucket_keys() {
                    ensure_exists(store, &key);
                }
            }
            if p.counts_in_flight() {
                ensure_exists(store, &p.space.in_flight());
            }
            if let Some(lease) = &p.lease {
                for key in lease.space.keys() {
                    ensure_exists(store, &key);
                }
            }
            if matches!(
                p.shedding.as_ref().map(|s| s.source),
                Some(LimitSource::Adaptive(_))
            ) {
                ensure_exists(store, &p.adaptive_key);
            }
        }
    }

    /// Whether any policy is `scope: global`.
    pub fn has_global(&self) -> bool {
        self.policies.iter().any(|p| p.global)
    }

    /// The policies that apply to a request (indices into [`Limiter::policies`]).
    pub fn matched(&self, req: &Request<'_>) -> Vec<usize> {
        self.index
            .candidates(req.headers)
            .into_iter()
            .map(|i| i as usize)
            .filter(|i| self.policies[*i].matcher.matches(req.headers))
            .collect()
    }

    /// The rate limit service call for a request the `matched` policies apply to at
    /// `now_ns`; `None` if none of them is global. Policies with a lease take a leased
    /// token from `store` when there is one (and need no call), or ask for a lease.
    pub fn global_call<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        req: &Request<'_>,
        matched: &[usize],
        now_ns: u64,
    ) -> Option<GlobalCall> {
        let global: Vec<usize> = matched
            .iter()
            .copied()
            .filter(|i| self.policies[*i].global && self.policies[*i].limit.is_some())
            .collect();
        if global.is_empty() {
            return None;
        }
        let timeout_ms = global
            .iter()
            .map(|i| self.policies[*i].timeout_ms)
            .max()
            .unwrap_or_default();
        let asking_until = now_ns.saturating_add(timeout_ms.saturating_mul(1_000_000));
        let mut call = GlobalCall {
            timeout_ms,
            ..GlobalCall::default()
        };
        for i in global {
            let p = &self.policies[i];
            let values = p.values(req);
            let mut hits = 1;
            if let Some(l) = &p.lease {
                let key = BucketKey::from_values(values.iter().copied());
                let claim = lease::claim(
                    store,
                    &l.space,
                    key.as_bytes(),
                    key.slot_hash(),
                    now_ns,
                    asking_until,
                );
                match claim {
                    Ok(Claim::Token { remaining }) => {
                        call.leased.push((i, leased_status(remaining)));
                        continue;
                    }
                    Ok(Claim::Ask) => {
                        hits = l.tokens;
                        call.asking.push((i, key));
                    }
                    // Contended lease slots: just ask for this request's hit.
                    Ok(Claim::Single) | Err(Contended) => {}
                }
            }
            call.policies.push(i);
            call.descriptors
                .push(global::entries(p.name.as_str(), &p.descriptors, &values));
            call.hits.push(hits);
        }
        if call.needs_call() {
            call.encode();
        }
        Some(call)
    }

    /// Settles `call` with the service's `response` at `now_ns`: keeps the spare tokens of
    /// granted leases in `store` (or clears their asking marks), and says whether to
    /// decide or to ask again with single hits.
    pub fn settle<S: SharedStore + ?Sized, E>(
        &self,
        store: &S,
        call: &GlobalCall,
        response: Result<rls::Response, E>,
        now_ns: u64,
    ) -> Settled {
        if call.asking.is_empty() {
            return Settled::Answer(call.answer(response));
        }
        let usable = match &response {
            Ok(r) if r.statuses.len() == call.policies.len() => Some(r),
            _ => None,
        };
        let status_of = |r: &rls::Response, i: usize| {
            call.policies
                .iter()
                .position(|p| *p == i)
                .and_then(|k| r.statuses.get(k).cloned())
                .unwrap_or_default()
        };
        let denied = usable.is_some_and(|r| {
            call.asking
                .iter()
                .any(|(i, _)| status_of(r, *i).code == Code::OverLimit)
        });
        for (i, key) in &call.asking {
            let Some(l) = &self.policies[*i].lease else {
                continue;
            };
            let granted = usable
                .filter(|r| r.overall_code == Code::Ok && !denied)
                .map(|r| status_of(r, *i))
                .filter(|st| st.code == Code::Ok);
            // A slot that stays contended keeps its mark until the call's timeout.
            let _ = match granted {
                Some(st) => lease::grant(
                    store,
                    &l.space,
                    key.as_bytes(),
                    key.slot_hash(),
                    Grant {
                        tokens: u32::try_from(l.tokens.saturating_sub(1)).unwrap_or(u32::MAX),
                        remaining: st.limit_remaining,
                        expires_ns: now_ns.saturating_add(l.max_age_ns),
                    },
                    now_ns,
                )
                .map(|_| ()),
                None => {
                    let until = if denied {
                        now_ns.saturating_add(l.backoff_ns)
                    } else {
                        0
                    };
                    lease::cancel(store, &l.space, key.as_bytes(), key.slot_hash(), until)
                }
            };
        }
        if denied {
            return Settled::Retry(call.single());
        }
        Settled::Answer(call.answer(response))
    }

    /// Decides for one request at `now_ns` (the proxy's clock), without an answer from
    /// the rate limit service (global policies apply their `failureMode`).
    pub fn check<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        req: &Request<'_>,
        now_ns: u64,
    ) -> Verdict {
        let matched = self.matched(req);
        self.decide(store, req, now_ns, &matched, &GlobalAnswer::Unavailable)
    }

    /// Decides for one request the `matched` policies apply to ([`Limiter::matched`]),
    /// with the rate limit service's `global` answer.
    pub fn decide<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        req: &Request<'_>,
        now_ns: u64,
        matched: &[usize],
        global: &GlobalAnswer,
    ) -> Verdict {
        let mut events: Vec<PolicyEvents> = matched
            .iter()
            .map(|i| PolicyEvents {
                policy: self.policies[*i].name.to_string(),
                ..Default::default()
            })
            .collect();

        // 1. Token buckets.
        let mut rates = Vec::new();
        for (e, &i) in events.iter_mut().zip(matched) {
            if let Some(outcome) = self.rate_phase(store, i, req, now_ns, global, e) {
                rates.push(outcome);
            }
        }
        if rates.iter().any(|r| r.violated) {
            let rejection = self.rate_rejection(&rates);
            for (e, &i) in events.iter_mut().zip(matched) {
                e.limited = rates.iter().any(|r| r.policy == i && r.violated);
            }
            return Verdict {
                decision: Decision::Reject(rejection),
                events,
                held: Vec::new(),
            };
        }

        // 2. Concurrency limits.
        let mut held = Vec::new();
        let mut conc_items = Vec::new();
        let mut busy: Option<(usize, Cap<'_>)> = None;
        for (e, &i) in events.iter_mut().zip(matched) {
            let p = &self.policies[i];
            let Some(cap) = p.cap(store, req) else {
                continue;
            };
            let max = cap.max;
            if p.shedding.is_some() {
                e.shed_limit = Some(cap.limit);
            }
            let key = p.space.in_flight();
            match concurrency::acquire(store, &key, max, !p.dry_run) {
                Ok(a) => {
                    if a.entered {
                        e.entered = true;
                        held.push(Held {
                            policy: p.name.to_string(),
                            key,
                            sample: cap
                                .adaptive
                                .map(|(k, params)| (k.to_string(), params, now_ns)),
                        });
                    }
                    if a.over_limit && p.dry_run {
                        e.shadow_limited = true;
                    }
                    if !a.entered {
                        e.concurrency_limited = true;
                        if p.shedding.is_some() {
                            e.shed_class = Some(cap.class_name.to_string());
                        }
                        busy = Some((i, cap));
                        break;
                    }
                    if p.shows_headers() {
                        conc_items.push((i, concurrency_item(p, max, a.in_flight)));
                    }
                }
                Err(Contended) => {
                    e.failure = true;
                    if p.failure_mode == FailureMode::Deny && !p.dry_run {
                        e.concurrency_limited = true;
                        busy = Some((i, cap));
                        break;
                    }
                }
            }
        }
        if let Some((i, cap)) = busy {
            self.release_unsampled(store, &held);
            for e in &mut events {
                e.entered = false;
            }
            return Verdict {
                decision: Decision::Reject(self.busy_rejection(i, &cap)),
                events,
                held: Vec::new(),
            };
        }

        // 3. Forward.
        for e in &mut events {
            e.allowed = true;
        }
        Verdict {
            decision: Decision::Allow {
                response_headers: self.allowed_headers(&rates, &conc_items),
            },
            events,
            held,
        }
    }

    /// Counts a finished request out of the in-flight counts it held at `now_ns` (an
    /// adaptive limit records its latency). Returns, per held count, the policy and
    /// whether the release went through.
    pub fn release<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        held: &[Held],
        now_ns: u64,
    ) -> Vec<(String, bool)> {
        release_all(store, held, now_ns)
    }

    /// Counts a request that never went upstream out again (no latency to record).
    fn release_unsampled<S: SharedStore + ?Sized>(&self, store: &S, held: &[Held]) {
        for h in held {
            let _ = concurrency::release(store, &h.key);
        }
    }

    fn rate_phase<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        i: usize,
        req: &Request<'_>,
        now_ns: u64,
        global: &GlobalAnswer,
        e: &mut PolicyEvents,
    ) -> Option<RateOutcome> {
        let p = &self.policies[i];
        let base = p.limit?;
        if p.global {
            let (_, limit) = p.bucket(base, req);
            return Some(match global.status(i) {
                Some(status) => {
                    e.global_checked = true;
                    global_outcome(p, i, &limit, status, e)
                }
                None => {
                    e.global_failure = true;
                    failure_outcome(p, i, &limit, e, format!(
                        "The global rate limit service did not answer for policy {}; retry after {BUSY_RETRY_AFTER_SECONDS} s.",
                        p.name
                    ))
                }
            });
        }
        let (limit, result) = p.take(store, req, base, now_ns);
        match result {
            Ok(kt) => {
                e.overflow = kt.overflow;
                let denied = !kt.take.allowed;
                e.shadow_limited = denied && p.dry_run;
                Some(RateOutcome {
                    policy: i,
                    item: Some(rate_item(p, &limit, &kt.take)),
                    violated: denied && !p.dry_run,
                    detail: format!(
                        "Too many requests for policy {}: the limit is {}; retry after {} s.",
                        p.name,
                        limit.describe(),
                        kt.take.reset_seconds()
                    ),
                })
            }
            Err(Contended) => Some(failure_outcome(p, i, &limit, e, format!(
                "The rate-limit state of policy {} is contended; retry after {BUSY_RETRY_AFTER_SECONDS} s.",
                p.name
            ))),
        }
    }

    fn rate_rejection(&self, rates: &[RateOutcome]) -> Rejection {
        let violated: Vec<&RateOutcome> = rates.iter().filter(|r| r.violated).collect();
        let items: Vec<QuotaItem> = violated.iter().filter_map(|r| r.item.clone()).collect();
        let retry_after = items
            .iter()
            .filter_map(|i| i.reset_seconds)
            .max()
            .unwrap_or(BUSY_RETRY_AFTER_SECONDS)
            .max(1);
        let first = &self.policies[violated[0].policy];
        let mut headers = vec![("retry-after".to_string(), retry_after.to_string())];
        headers.extend(ratelimit_fields(&items));
        if first.legacy_headers {
            if let Some(item) = items.first() {
                headers.extend(legacy_fields(item));
            }
        }
        Rejection {
            status: 429,
            grpc_status: GRPC_RESOURCE_EXHAUSTED,
            headers,
            problem: Problem {
                problem_type: QUOTA_EXCEEDED,
                title: QUOTA_EXCEEDED_TITLE,
                status: 429,
                detail: violated[0].detail.clone(),
                policy: first.name.to_string(),
                violated_policies: violated
                    .iter()
                    .map(|r| self.policies[r.policy].name.to_string())
                    .collect(),
            },
        }
    }

    fn busy_rejection(&self, i: usize, cap: &Cap<'_>) -> Rejection {
        let p = &self.policies[i];
        let max = cap.max;
        let item = concurrency_item(p, max, max);
        let (status, retry_after) = p
            .shedding
            .as_ref()
            .map_or((503, BUSY_RETRY_AFTER_SECONDS), |s| {
                (s.status, s.retry_after_seconds)
            });
        let detail = if p.shedding.is_some() {
            format!(
                "Too many requests in flight for policy {}: class {} may have {max} of the current limit of {} at once; retry after {retry_after} s.",
                p.name, cap.class_name, cap.limit
            )
        } else {
            format!(
                "Too many requests in flight for policy {}: the limit is {max} at once; retry after {retry_after} s.",
                p.name
            )
        };
        let mut headers = vec![("retry-after".to_string(), retry_after.to_string())];
        headers.extend(ratelimit_fields(std::slice::from_ref(&item)));
        if p.legacy_headers {
            headers.extend(legacy_fields(&item));
        }
        Rejection {
            status,
            grpc_status: if status == 429 {
                GRPC_RESOURCE_EXHAUSTED
            } else {
                GRPC_UNAVAILABLE
            },
            headers,
            problem: Problem {
                problem_type: TEMPORARY_REDUCED_CAPACITY,
                title: REDUCED_CAPACITY_TITLE,
                status,
                detail,
                policy: p.name.to_string(),
                violated_policies: vec![p.concurrent_name()],
            },
        }
    }

    fn allowed_headers(
        &self,
        rates: &[RateOutcome],
        conc: &[(usize, QuotaItem)],
    ) -> Vec<(String, String)> {
        let mut items: Vec<(usize, QuotaItem)> = rates
            .iter()
            .filter(|r| self.policies[r.policy].shows_headers())
            .filter_map(|r| Some((r.policy, r.item.clone()?)))
            .collect();
        items.extend(conc.iter().cloned());
        items.sort_by_key(|(i, _)| *i);
        let mut headers =
            ratelimit_fields(&items.iter().map(|(_, it)| it.clone()).collect::<Vec<_>>());
        let tightest = items
            .iter()
            .filter(|(i, _)| self.policies[*i].legacy_headers)
            .min_by_key(|(_, it)| it.remaining);
        if let Some((_, item)) = tightest {
            headers.extend(legacy_fields(item));
        }
        headers
    }
}

/// Releases held in-flight counts at `now_ns` (see [`Limiter::release`]); usable after
/// the limiter that admitted the request was replaced by a new configuration. An adaptive
/// limit's latency sample is dropped if its state stays contended (the count is not).
pub fn release_all<S: SharedStore + ?Sized>(
    store: &S,
    held: &[Held],
    now_ns: u64,
) -> Vec<(String, bool)> {
    held.iter()
        .map(|h| {
            let released = concurrency::release(store, &h.key);
            if let Some((key, params, admitted_ns)) = &h.sample {
                let in_flight = released.map_or(0, |left| left.saturating_add(1));
                let _ = gradient::complete(store, key, params, (*admitted_ns, now_ns), in_flight);
            }
            (h.policy.clone(), released.is_ok())
        })
        .collect()
}

/// A policy whose bucket could not be read: its `failureMode` decides.
fn failure_outcome(
    p: &CompiledLimit,
    i: usize,
    limit: &Limit,
    e: &mut PolicyEvents,
    detail: String,
) -> RateOutcome {
    e.failure = true;
    let deny = p.failure_mode == FailureMode::Deny && !p.dry_run;
    RateOutcome {
        policy: i,
        item: deny.then(|| QuotaItem {
            remaining: 0,
            reset_seconds: Some(BUSY_RETRY_AFTER_SECONDS),
            ..rate_item(
                p,
                limit,
                &Take {
                    allowed: false,
                    remaining: 0,
                    next_token_ns: 0,
                },
            )
        }),
        violated: deny,
        detail,
    }
}

/// A global policy's outcome from the service's status. The service applies overrides
/// itself; `limit` (the filter's own choice, from the same policy) names the quota in
/// headers. `t` is the time until another token: one token's interval, or less when the
/// bucket refills sooner (at least 1 s when over the limit).
fn global_outcome(
    p: &CompiledLimit,
    i: usize,
    limit: &Limit,
    status: &DescriptorStatus,
    e: &mut PolicyEvents,
) -> RateOutcome {
    let over = status.code == Code::OverLimit;
    e.shadow_limited = over && p.dry_run;
    let interval_ms = (limit.rate.unit.seconds() * 1_000).div_ceil(limit.rate.requests.max(1));
    let mut reset = status.until_reset_ms.min(interval_ms).div_ceil(1_000);
    if over {
        reset = reset.max(1);
    }
    RateOutcome {
        policy: i,
        item: Some(QuotaItem {
            remaining: u64::from(status.limit_remaining),
            reset_seconds: Some(reset),
            ..rate_item(
                p,
                limit,
                &Take {
                    allowed: !over,
                    remaining: 0,
                    next_token_ns: 0,
                },
            )
        }),
        violated: over && !p.dry_run,
        detail: format!(
            "Too many requests for policy {}: the limit is {}; retry after {reset} s.",
            p.name,
            limit.describe()
        ),
    }
}

/// The status a leased token stands for: admitted, with the service's count of tokens
/// left when the lease was granted.
fn leased_status(remaining: u32) -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok,
        current_limit: None,
        limit_remaining: remaining,
        until_reset_ms: 0,
    }
}

fn rate_item(p: &CompiledLimit, limit: &Limit, take: &Take) -> QuotaItem {
    QuotaItem {
        name: p.name.to_string(),
        quota: limit.rate.requests,
        window_seconds: Some(limit.rate.unit.seconds()),
        concurrent: false,
        remaining: take.remaining,
        reset_seconds: Some(take.reset_seconds()),
    }
}

fn concurrency_item(p: &CompiledLimit, max: u64, in_flight: u64) -> QuotaItem {
    QuotaItem {
        name: p.concurrent_name(),
        quota: max,
        window_seconds: None,
        concurrent: true,
        remaining: max.saturating_sub(in_flight),
        reset_seconds: None,
    }
}
