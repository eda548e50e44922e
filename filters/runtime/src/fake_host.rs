//! An in-memory [`Host`] for native unit tests of stages and the pipeline: header maps,
//! shared data with compare-and-swap, metrics by name, a settable clock, and a record of
//! what the filter asked for (local answers, resumed streams, call-outs). Every call is
//! counted, so tests can assert how many host calls a request costs.

use crate::host::{Body, CasMismatch, Host, LocalResponse, Map, MetricKind, Phase};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

/// A local answer the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentResponse {
    pub context: u32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub grpc_status: Option<u8>,
}

/// A call-out the filter made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// A gRPC call-out the filter made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentGrpcCall {
    pub token: u32,
    /// The stream that made it.
    pub context: u32,
    /// The plain cluster name (the Wasm host serializes it as a `GrpcService`).
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout: Duration,
}

/// Header pairs of one map.
pub type Pairs = Vec<(String, Vec<u8>)>;

/// The fake proxy. Install one per test thread with [`FakeHost::install`].
#[derive(Debug, Default)]
pub struct FakeHost {
    /// Header maps of the current stream.
    pub maps: RefCell<HashMap<Map, Pairs>>,
    pub request_body: RefCell<Vec<u8>>,
    pub response_body: RefCell<Vec<u8>>,
    pub shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    pub metrics: RefCell<Vec<(String, MetricKind, i64)>>,
    pub now_ns: Cell<u64>,
    pub tick: Cell<Duration>,
    pub sent: RefCell<Vec<SentResponse>>,
    pub resumed: RefCell<Vec<(u32, Phase)>>,
    pub calls: RefCell<Vec<SentCall>>,
    pub grpc_calls: RefCell<Vec<SentGrpcCall>>,
    /// The message of the gRPC answer being delivered.
    pub grpc_response: RefCell<Vec<u8>>,
    /// Makes the next gRPC call-outs fail to dispatch with this error.
    pub grpc_refuse: RefCell<Option<String>>,
    pub config: RefCell<Vec<u8>>,
    pub properties: RefCell<HashMap<String, Vec<u8>>>,
    /// Properties read, in order (`connection.uri_san_peer_certificate`).
    pub property_reads: RefCell<Vec<String>>,
    /// The stream calls apply to.
    pub current: Cell<u32>,
    /// Streams that no longer exist.
    pub gone: RefCell<Vec<u32>>,
    /// Host calls made.
    pub count: Cell<u64>,
    next_cas: Cell<u32>,
}

thread_local! {
    static CURRENT: Cell<Option<&'static FakeHost>> = const { Cell::new(None) };
}

/// The host installed on this thread.
pub fn current() -> &'static FakeHost {
    CURRENT.with(|c| match c.get() {
        Some(h) => h,
        None => {
            let h: &'static FakeHost = Box::leak(Box::default());
            c.set(Some(h));
            h
        }
    })
}

impl FakeHost {
    /// Installs a fresh fake host for this thread (leaked: tests only) and returns it.
    pub fn install() -> &'static FakeHost {
        let h: &'static FakeHost = Box::leak(Box::default());
        h.now_ns.set(1_700_000_000_000_000_000);
        CURRENT.with(|c| c.set(Some(h)));
        h
    }

    /// Starts a new stream `context` with these request headers.
    pub fn begin(&self, context: u32, headers: &[(&str, &str)]) {
        self.current.set(context);
        let mut maps = self.maps.borrow_mut();
        maps.clear();
        maps.insert(
            Map::RequestHeaders,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        );
    }

    /// Sets the downstream peer's certificate URI SAN (`None`: no certificate).
    pub fn set_peer(&self, uri_san: Option<&str>) {
        let key = crate::connection::PEER_URI_SAN.join(".");
        let mut props = self.properties.borrow_mut();
        match uri_san {
            Some(v) => props.insert(key, v.as_bytes().to_vec()),
            None => props.remove(&key),
        };
    }

    /// How many times property `key` (`connection.uri_san_peer_certificate`) was read.
    pub fn property_reads(&self, key: &str) -> usize {
        self.property_reads
            .borrow()
            .iter()
            .filter(|k| *k == key)
            .count()
    }

    /// Sets the response headers of the current stream.
    pub fn respond(&self, headers: &[(&str, &str)]) {
        self.maps.borrow_mut().insert(
            Map::ResponseHeaders,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        );
    }

    /// A header of the current stream, as the upstream would see it.
    pub fn get(&self, map: Map, name: &str) -> Option<String> {
        self.maps.borrow().get(&map).and_then(|m| {
            m.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        })
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now_ns.set(self.now_ns.get() + by.as_nanos() as u64);
    }

    /// The value of metric `name` (0 if never touched).
    pub fn metric(&self, name: &str) -> i64 {
        self.metrics
            .borrow()
            .iter()
            .find(|(n, _, _)| n == name)
            .map_or(0, |(_, _, v)| *v)
    }

    /// Prepares the answer to a gRPC call-out: makes its stream current and puts `message`
    /// in the receive buffer. The test then calls the pipeline's
    /// [`crate::pipeline::Request::on_grpc_response`] with the call's token, status 0 and
    /// the message length (or a non-zero gRPC status and 0 for a failure).
    pub fn grpc_answer(&self, call: &SentGrpcCall, message: &[u8]) {
        self.current.set(call.context);
        *self.grpc_response.borrow_mut() = message.to_vec();
    }

    /// Returns the host calls counted since the last call, and resets the count.
    pub fn take_count(&self) -> u64 {
        self.count.replace(0)
    }

    fn tally(&self) {
        self.count.set(self.count.get() + 1);
    }
}

impl Host for FakeHost {
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        self.tally();
        self.maps
            .borrow()
            .get(&map)?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn headers(&self, map: Map) -> Vec<(String, Vec<u8>)> {
        self.tally();
        self.maps.borrow().get(&map).cloned().unwrap_or_default()
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> bool {
        self.tally();
        let mut maps = self.maps.borrow_mut();
        let m = maps.entry(map).or_default();
        m.retain(|(k, _)| k != name);
        if let Some(v) = value {
            m.push((name.to_string(), v.to_vec()));
        }
        true
    }

    fn add_header(&self, map: Map, name: &str, value: &[u8]) -> bool {
        self.tally();
        let mut maps = self.maps.borrow_mut();
        maps.entry(map)
            .or_default()
            .push((name.to_string(), value.to_vec()));
        true
    }

    fn body(&self, body: Body, start: usize, size: usize) -> Option<Vec<u8>> {
        self.tally();
        let b = match body {
            Body::Request => self.request_body.borrow(),
            Body::Response | Body::CallResponse => self.response_body.borrow(),
            Body::GrpcCallResponse => self.grpc_response.borrow(),
        };
        let end = start.saturating_add(size).min(b.len());
        b.get(start..end).map(<[u8]>::to_vec)
    }

    fn send_local_response(&self, r: &LocalResponse<'_>) -> bool {
        self.tally();
        self.sent.borrow_mut().push(SentResponse {
            context: self.current.get(),
            status: r.status,
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: r.body.to_vec(),
            grpc_status: r.grpc_status,
        });
        true
    }

    fn resume(&self, phase: Phase) -> bool {
        self.tally();
        self.resumed.borrow_mut().push((self.current.get(), phase));
        true
    }

    fn enter(&self, context_id: u32) -> bool {
        self.tally();
        self.current.set(context_id);
        !self.gone.borrow().contains(&context_id)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.tally();
        match self.shared.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        self.tally();
        let mut shared = self.shared.borrow_mut();
        if let (Some(cas), Some((_, current))) = (cas, shared.get(key)) {
            if cas != *current {
                return Err(CasMismatch);
            }
        }
        let next = self.next_cas.get() + 1;
        self.next_cas.set(next);
        shared.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.tally();
        self.now_ns.get()
    }

    fn set_tick_period(&self, period: Duration) -> bool {
        self.tally();
        self.tick.set(period);
        true
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        self.tally();
        let mut calls = self.calls.borrow_mut();
        let token = calls.len() as u32 + 1;
        calls.push(SentCall {
            token,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
            timeout,
        });
        Ok(token)
    }

    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, String> {
        self.tally();
        if let Some(err) = self.grpc_refuse.borrow().clone() {
            return Err(err);
        }
        let mut calls = self.grpc_calls.borrow_mut();
        let token = 1_000 + calls.len() as u32;
        calls.push(SentGrpcCall {
            token,
            context: self.current.get(),
            cluster: cluster.to_string(),
            service: service.to_string(),
            method: method.to_string(),
            message: message.to_vec(),
            timeout,
        });
        Ok(token)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.tally();
        let key = path.join(".");
        let value = self.properties.borrow().get(&key).cloned();
        self.property_reads.borrow_mut().push(key);
        value
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let mut m = self.metrics.borrow_mut();
        if let Some(i) = m.iter().position(|(n, _, _)| n == name) {
            return Some(i as u32);
        }
        m.push((name.to_string(), kind, 0));
        Some(m.len() as u32 - 1)
    }

    fn add_metric(&self, id: u32, delta: i64) {
        self.tally();
        if let Some(m) = self.metrics.borrow_mut().get_mut(id as usize) {
            m.2 += delta;
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        self.tally();
        if let Some(m) = self.metrics.borrow_mut().get_mut(id as usize) {
            m.2 = value as i64;
        }
    }

    fn random(&self, buf: &mut [u8]) -> bool {
        self.tally();
        getrandom::getrandom(buf).is_ok()
    }

    fn plugin_config(&self) -> Option<Vec<u8>> {
        Some(self.config.borrow().clone())
    }
}
