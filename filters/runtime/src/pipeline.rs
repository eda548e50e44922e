//! The stage pipeline: one pass over each request through the configured stages (trace →
//! rate limit → circuit breaker → fault → mirror in the combined module; one stage in a
//! single-purpose module), with the proxy's semantics of separate filters — request callbacks in order,
//! response callbacks in reverse order, a stage that answers locally or holds the stream
//! stops the ones after it, and a held stream resumes with the next stage.
//!
//! A stage whose kind has no policies for this proxy makes no per-request object and no host
//! call. Stages park streams (injected delays) on the pipeline's timer, and get periodic
//! ticks (mirror dispatch) and call-out answers from the root context.

use crate::host::{host, Phase};
use meshwarden_common::fault::{DelayQueue, TickClock};
use meshwarden_common::{RequestHeaders, ValidationError};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

/// What a stage tells the pipeline after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next stage.
    Continue,
    /// Stop here: the stage answered locally, or parked the stream ([`Stream::park_until`]).
    Pause,
}

/// Applies a validated configuration (returned by [`Stage::prepare`]).
pub type Commit<'a> = Box<dyn FnOnce() + 'a>;

/// One kind of policy enforcement, per worker.
pub trait Stage {
    /// Short name (`trace`): the configuration section, log prefix and metric names.
    fn name(&self) -> &'static str;
    /// Validates a configuration of this stage (`{"policies": [...]}`; empty bytes: none)
    /// and returns what installs it, so a multi-stage configuration applies all or nothing.
    fn prepare(&self, config: &[u8]) -> Result<Commit<'_>, ValidationError>;
    /// How many policies the stage runs.
    fn policies(&self) -> usize;
    /// The per-request part of the stage; `None` when nothing is configured (the request
    /// then costs this stage nothing).
    fn stream(&self, context_id: u32) -> Option<Box<dyn StreamStage>>;
    /// How often the stage wants [`Stage::on_tick`] (`None`: never).
    fn tick_every(&self) -> Option<Duration> {
        None
    }
    /// Periodic work from the root context.
    fn on_tick(&self) {}
    /// The answer to a call-out this stage made; `false` if the token is not its own.
    fn on_call_response(&self, _token: u32, _headers: usize, _body: usize) -> bool {
        false
    }
    /// The answer to a gRPC call this stage made from the root context (`status` is the
    /// gRPC status, 0 for OK); `false` if the token is not its own.
    fn on_grpc_call_response(&self, _token: u32, _status: u32) -> bool {
        false
    }
}

/// The per-request part of a stage. Callbacks default to doing nothing.
pub trait StreamStage {
    fn request_headers(&mut self, _s: &mut Stream<'_>) -> Flow {
        Flow::Continue
    }
    fn request_body(&mut self, _s: &mut Stream<'_>, _size: usize) {}
    fn request_trailers(&mut self, _s: &mut Stream<'_>) {}
    fn response_headers(&mut self, _s: &mut Stream<'_>) -> Flow {
        Flow::Continue
    }
    fn response_body(&mut self, _s: &mut Stream<'_>, _size: usize) {}
    fn response_trailers(&mut self, _s: &mut Stream<'_>) {}
    /// A park of this stage ended (the stream is current again).
    fn wake(&mut self, _s: &mut Stream<'_>, _phase: Phase) -> Flow {
        Flow::Continue
    }
    /// The answer to a gRPC call-out this stage made while holding the stream
    /// ([`Stream::await_call`]): `status` 0 and the message's `size` (read it with
    /// [`crate::host::Body::GrpcCallResponse`]), or a gRPC status code (timeouts and
    /// unreachable clusters included) and 0.
    fn grpc_response(
        &mut self,
        _s: &mut Stream<'_>,
        _token: u32,
        _status: u32,
        _size: usize,
    ) -> Flow {
        Flow::Continue
    }
    /// The stream ended (called once).
    fn done(&mut self) {}
}

/// What a stage sees of the stream in a callback.
pub struct Stream<'a> {
    /// The stream's context id.
    pub id: u32,
    /// The request headers (lazy; writes through [`Stream::set_request_header`]).
    pub headers: &'a mut RequestHeaders,
    /// This callback carries the end of its direction.
    pub end_of_stream: bool,
    /// Request body passed this filter before this stage first saw the request (it was
    /// held by an earlier stage meanwhile): a stage that needs the whole body cannot have it.
    pub missed_request_body: bool,
    park: Option<u64>,
    awaiting: bool,
}

impl Stream<'_> {
    /// Holds the stream until `deadline_us` (Unix µs); the stage returns [`Flow::Pause`]
    /// and gets [`StreamStage::wake`] then.
    pub fn park_until(&mut self, deadline_us: u64) {
        self.park = Some(deadline_us);
    }

    /// Holds the stream until the answer to a gRPC call-out the stage just made; the
    /// stage returns [`Flow::Pause`] and gets [`StreamStage::grpc_response`] then. (The
    /// proxy bounds the wait with the call's timeout; a stream that ends first gets none.)
    pub fn await_call(&mut self) {
        self.awaiting = true;
    }

    /// Replaces (or with `None` removes) request header `name`, in the proxy and in the
    /// view later stages read.
    pub fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) {
        host().set_header(crate::host::Map::RequestHeaders, name, value);
        self.headers.overwrite(name, value);
    }
}

/// Timer period while streams are parked: the granularity of injected delays.
const PARK_TICK: Duration = Duration::from_millis(1);
/// A longer gap between ticks is a stall, not the timer's granularity (µs).
const MAX_TICK_GAP_US: u64 = 20_000;

/// The stages of one root context (one per worker and filter), and their timer.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
    /// Whether the configuration is one object with a section per stage (`{"trace":
    /// {...}, "fault": {...}}`) or a single stage's own configuration.
    sections: bool,
    parked: RefCell<DelayQueue<Weak<RefCell<Request>>>>,
    clock: RefCell<TickClock>,
    period: Cell<Duration>,
    /// When each stage's periodic tick is next due (µs).
    next_tick: RefCell<Vec<u64>>,
}

impl Pipeline {
    /// A pipeline of `stages`, configured with one section per stage.
    pub fn combined(stages: Vec<Box<dyn Stage>>) -> Self {
        Self::new(stages, true)
    }

    /// A pipeline of one stage, configured with that stage's configuration.
    pub fn single(stage: Box<dyn Stage>) -> Self {
        Self::new(vec![stage], false)
    }

    fn new(stages: Vec<Box<dyn Stage>>, sections: bool) -> Self {
        let n = stages.len();
        Self {
            stages,
            sections,
            parked: RefCell::default(),
            clock: RefCell::new(TickClock::new(
                PARK_TICK.as_micros() as u64,
                MAX_TICK_GAP_US,
            )),
            period: Cell::new(Duration::ZERO),
            next_tick: RefCell::new(vec![0; n]),
        }
    }

    /// The stages, in request order.
    pub fn stages(&self) -> &[Box<dyn Stage>] {
        &self.stages
    }

    /// Validates `config` for every stage, then applies it to all of them; on error
    /// nothing changes (the proxy keeps the previous configuration).
    pub fn configure(&self, config: &[u8]) -> Result<(), ValidationError> {
        self.configure_stages(config)?;
        self.update_tick();
        Ok(())
    }

    /// A log line saying what runs: `configured with 3 policies (trace 1, ratelimit 0, ...)`.
    pub fn summary(&self) -> String {
        let total: usize = self.stages.iter().map(|s| s.policies()).sum();
        if self.stages.len() == 1 {
            return format!("configured with {total} policies");
        }
        let parts: Vec<String> = self
            .stages
            .iter()
            .map(|s| format!("{} {}", s.name(), s.policies()))
            .collect();
        format!("configured with {total} policies ({})", parts.join(", "))
    }

    fn configure_stages(&self, config: &[u8]) -> Result<(), ValidationError> {
        let commits = if self.sections {
            let sections = split_sections(config, &self.stages)?;
            self.stages
                .iter()
                .zip(sections)
                .map(|(stage, bytes)| {
                    stage
                        .prepare(bytes.unwrap_or_default())
                        .map_err(|e| e.within(stage.name()))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![self.stages[0].prepare(config)?]
        };
        for commit in commits {
            commit();
        }
        Ok(())
    }

    /// A new request: the per-request parts of the configured stages.
    pub fn request(&self, context_id: u32) -> Request {
        let stages: Vec<_> = self
            .stages
            .iter()
            .filter_map(|s| s.stream(context_id))
            .collect();
        Request {
            id: context_id,
            headers: if stages.is_empty() {
                RequestHeaders::default()
            } else {
                crate::headers::request_headers()
            },
            stages,
            reached: 0,
            parked: None,
            awaiting_call: false,
            missed_from: usize::MAX,
            request_ended: false,
            done: false,
        }
    }

    /// The root context's timer: wakes parked streams that are due, then runs the stages'
    /// periodic work.
    pub fn on_tick(&self) {
        let now = crate::host::now_us();
        let due = {
            let mut parked = self.parked.borrow_mut();
            if parked.is_empty() {
                Vec::new()
            } else {
                let horizon = self.clock.borrow_mut().tick(now);
                parked.pop_due(horizon)
            }
        };
        for (id, request) in due {
            let Some(request) = request.upgrade() else {
                continue;
            };
            if !host().enter(id) {
                continue;
            }
            let Ok(mut r) = request.try_borrow_mut() else {
                continue;
            };
            r.wake(self, &request);
        }
        for (i, stage) in self.stages.iter().enumerate() {
            let Some(every) = stage.tick_every() else {
                continue;
            };
            let due = self.next_tick.borrow()[i] <= now;
            if due {
                self.next_tick.borrow_mut()[i] = now + every.as_micros() as u64;
                stage.on_tick();
            }
        }
        self.update_tick();
    }

    /// Hands a call-out answer to the stage that made the call.
    pub fn on_call_response(&self, token: u32, headers: usize, body: usize) {
        for stage in &self.stages {
            if stage.on_call_response(token, headers, body) {
                return;
            }
        }
    }

    /// Hands the answer to a root context's gRPC call to the stage that made it.
    pub fn on_grpc_call_response(&self, token: u32, status: u32) {
        for stage in &self.stages {
            if stage.on_grpc_call_response(token, status) {
                return;
            }
        }
    }

    fn park(&self, id: u32, deadline_us: u64, request: &Rc<RefCell<Request>>) {
        let was_empty = self.parked.borrow().is_empty();
        self.parked
            .borrow_mut()
            .push(id, deadline_us, Rc::downgrade(request));
        if was_empty {
            self.clock.borrow_mut().started(crate::host::now_us());
            self.update_tick();
        }
    }

    fn unpark(&self, id: u32) {
        if let Ok(mut parked) = self.parked.try_borrow_mut() {
            parked.remove(id);
        }
    }

    /// Sets the timer to what parked streams and stages need now.
    fn update_tick(&self) {
        let want = if !self.parked.borrow().is_empty() {
            PARK_TICK
        } else {
            self.stages
                .iter()
                .filter_map(|s| s.tick_every())
                .min()
                .unwrap_or(Duration::ZERO)
        };
        if want != self.period.get() && host().set_tick_period(want) {
            self.period.set(want);
        }
    }
}

/// Splits a combined configuration into each stage's section (raw JSON bytes).
fn split_sections<'a>(
    config: &'a [u8],
    stages: &[Box<dyn Stage>],
) -> Result<Vec<Option<&'a [u8]>>, ValidationError> {
    let mut out = vec![None; stages.len()];
    if config.iter().all(u8::is_ascii_whitespace) {
        return Ok(out);
    }
    if config.len() > meshwarden_common::limits::MAX_FILTER_CONFIG_BYTES * stages.len() {
        return Err(ValidationError::new(
            "",
            format!("configuration is {} bytes, too large", config.len()),
        ));
    }
    let map: HashMap<&str, &serde_json::value::RawValue> =
        serde_json::from_slice(config).map_err(|e| {
            ValidationError::new("", format!("configuration is not a JSON object: {e}"))
        })?;
    for (key, raw) in map {
        let Some(i) = stages.iter().position(|s| s.name() == key) else {
            let known: Vec<_> = stages.iter().map(|s| s.name()).collect();
            return Err(ValidationError::new(
                key,
                format!("unknown section; expected one of {}", known.join(", ")),
            ));
        };
        out[i] = Some(raw.get().as_bytes());
    }
    Ok(out)
}

/// How a stage that paused holds its stream.
#[derive(Debug, Clone, Copy)]
struct Hold {
    park: Option<u64>,
    awaiting: bool,
}

impl Hold {
    fn of(s: &Stream<'_>) -> Self {
        Self {
            park: s.park,
            awaiting: s.awaiting,
        }
    }
}

/// One request going through the pipeline.
pub struct Request {
    id: u32,
    stages: Vec<Box<dyn StreamStage>>,
    headers: RequestHeaders,
    /// Stages that have seen the request headers.
    reached: usize,
    /// Where the stream is held: direction and stage index.
    parked: Option<(Phase, usize)>,
    /// The hold is for a gRPC call-out's answer (not the timer).
    awaiting_call: bool,
    /// The first stage that had not seen the request when body went by.
    missed_from: usize,
    /// The whole request has arrived.
    request_ended: bool,
    done: bool,
}

impl Request {
    /// Whether no stage takes part (the filter is a pass-through for this request).
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    fn stream(&mut self, i: usize, end_of_stream: bool) -> (Stream<'_>, &mut dyn StreamStage) {
        let missed = i >= self.missed_from;
        (
            Stream {
                id: self.id,
                headers: &mut self.headers,
                end_of_stream,
                missed_request_body: missed,
                park: None,
                awaiting: false,
            },
            self.stages[i].as_mut(),
        )
    }

    /// Request headers arrived.
    pub fn on_request_headers(
        &mut self,
        pipeline: &Pipeline,
        me: &Rc<RefCell<Request>>,
        end_of_stream: bool,
    ) -> Flow {
        self.request_ended = end_of_stream;
        self.run_request(pipeline, me, 0, end_of_stream)
    }

    fn run_request(
        &mut self,
        pipeline: &Pipeline,
        me: &Rc<RefCell<Request>>,
        from: usize,
        end_of_stream: bool,
    ) -> Flow {
        for i in from..self.stages.len() {
            self.reached = i + 1;
            let (mut s, stage) = self.stream(i, end_of_stream);
            let flow = stage.request_headers(&mut s);
            let hold = Hold::of(&s);
            if self.held(pipeline, me, flow, hold, Phase::Request, i) {
                return Flow::Pause;
            }
        }
        Flow::Continue
    }

    /// Whether a stage's `flow` stops the pass (parking the stream if it asked to).
    fn held(
        &mut self,
        pipeline: &Pipeline,
        me: &Rc<RefCell<Request>>,
        flow: Flow,
        hold: Hold,
        phase: Phase,
        stage: usize,
    ) -> bool {
        if flow == Flow::Continue {
            return false;
        }
        if let Some(deadline) = hold.park {
            self.parked = Some((phase, stage));
            pipeline.park(self.id, deadline, me);
        } else if hold.awaiting {
            self.parked = Some((phase, stage));
            self.awaiting_call = true;
        }
        true
    }

    /// A request body chunk of `size` bytes (the whole buffered body so far if an earlier
    /// call paused). Stages that have seen the headers get it; while the stream is held
    /// the body is held too.
    pub fn on_request_body(&mut self, size: usize, end_of_stream: bool) -> Flow {
        self.request_ended |= end_of_stream;
        for i in 0..self.reached.min(self.stages.len()) {
            let (mut s, stage) = self.stream(i, end_of_stream);
            stage.request_body(&mut s, size);
        }
        self.note_body_while_held()
    }

    /// Request trailers arrived (the request is complete).
    pub fn on_request_trailers(&mut self) -> Flow {
        self.request_ended = true;
        for i in 0..self.reached.min(self.stages.len()) {
            let (mut s, stage) = self.stream(i, true);
            stage.request_trailers(&mut s);
        }
        self.note_body_while_held()
    }

    fn note_body_while_held(&mut self) -> Flow {
        match self.parked {
            Some((Phase::Request, _)) => {
                self.missed_from = self.missed_from.min(self.reached);
                Flow::Pause
            }
            _ => Flow::Continue,
        }
    }

    /// Response headers arrived (from the upstream, or a local answer).
    pub fn on_response_headers(
        &mut self,
        pipeline: &Pipeline,
        me: &Rc<RefCell<Request>>,
        end_of_stream: bool,
    ) -> Flow {
        self.run_response(pipeline, me, self.stages.len(), end_of_stream)
    }

    /// Runs the response callbacks of stages `..before`, last first.
    fn run_response(
        &mut self,
        pipeline: &Pipeline,
        me: &Rc<RefCell<Request>>,
        before: usize,
        end_of_stream: bool,
    ) -> Flow {
        for i in (0..before).rev() {
            let (mut s, stage) = self.stream(i, end_of_stream);
            let flow = stage.response_headers(&mut s);
            let hold = Hold::of(&s);
            if self.held(pipeline, me, flow, hold, Phase::Response, i) {
                return Flow::Pause;
            }
        }
        Flow::Continue
    }

    /// A response body chunk: stages that have seen the response headers get it.
    pub fn on_response_body(&mut self, size: usize, end_of_stream: bool) -> Flow {
        let from = match self.parked {
            Some((Phase::Response, i)) => i,
            _ => 0,
        };
        for i in (from..self.stages.len()).rev() {
            let (mut s, stage) = self.stream(i, end_of_stream);
            stage.response_body(&mut s, size);
        }
        self.response_flow()
    }

    /// Response trailers arrived.
    pub fn on_response_trailers(&mut self) -> Flow {
        let from = match self.parked {
            Some((Phase::Response, i)) => i,
            _ => 0,
        };
        for i in (from..self.stages.len()).rev() {
            let (mut s, stage) = self.stream(i, true);
            stage.response_trailers(&mut s);
        }
        self.response_flow()
    }

    fn response_flow(&self) -> Flow {
        if matches!(self.parked, Some((Phase::Response, _))) {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }

    /// A park ended: the stage that parked decides, then the pass goes on with the next
    /// stages and, if none holds it again, the stream resumes.
    fn wake(&mut self, pipeline: &Pipeline, me: &Rc<RefCell<Request>>) {
        let Some((phase, i)) = self.parked.take() else {
            return;
        };
        let (mut s, stage) = self.stream(i, false);
        let flow = stage.wake(&mut s, phase);
        let hold = Hold::of(&s);
        self.go_on(pipeline, me, flow, hold, phase, i);
    }

    /// The answer to a gRPC call-out made by the stage holding this stream: that stage
    /// decides, then the pass goes on as after a park. Answers for a stream not waiting
    /// for one (it went on already) are ignored.
    pub fn on_grpc_response(
        &mut self,
        pipeline: &Pipeline,
        me: &Rc<RefCell<Request>>,
        token: u32,
        status: u32,
        size: usize,
    ) {
        if self.done {
            return;
        }
        let Some((phase, i)) = self.parked else {
            return;
        };
        if !std::mem::take(&mut self.awaiting_call) {
            return;
        }
        self.parked = None;
        let (mut s, stage) = self.stream(i, false);
        let flow = stage.grpc_response(&mut s, token, status, size);
        let hold = Hold::of(&s);
        self.go_on(pipeline, me, flow, hold, phase, i);
    }

    /// After stage `i` handled a wake-up or an answer: hold again, or run the next stages
    /// and resume the stream.
    fn go_on(
        &mut self,
        pipeline: &Pipeline,
        me: &Rc<RefCell<Request>>,
        flow: Flow,
        hold: Hold,
        phase: Phase,
        i: usize,
    ) {
        if self.held(pipeline, me, flow, hold, phase, i) {
            return;
        }
        let flow = match phase {
            Phase::Request => self.run_request(pipeline, me, i + 1, self.request_ended),
            Phase::Response => self.run_response(pipeline, me, i, false),
        };
        if flow == Flow::Continue {
            host().resume(phase);
        }
    }

    /// The stream ended: every stage releases what it holds (once).
    pub fn on_done(&mut self, pipeline: &Pipeline) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if self.parked.take().is_some() {
            pipeline.unpark(self.id);
        }
        for stage in &mut self.stages {
            stage.done();
        }
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
