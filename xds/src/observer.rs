//! What the server reports while it serves: streams opening and closing, resources sent,
//! accepted and rejected, and its counters.

use crate::resource::Resource;
use crate::server::{Protocol, Transport};
use envoy_types::pb::envoy::config::core::v3::Node;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The stream an observer is told about.
#[derive(Debug, Clone, Copy)]
pub struct StreamInfo<'a> {
    pub node: &'a Node,
    pub transport: Transport,
    pub protocol: Protocol,
}

/// Told about every stream; gives each one a [`StreamObserver`] that lives as long as it
/// (dropping it means the stream closed).
pub trait Observer: Clone + Send + Sync + 'static {
    type Stream: StreamObserver;

    /// A stream opened (its first request carried `info.node`).
    fn opened(&self, info: StreamInfo<'_>) -> Self::Stream;
}

/// Told what happens on one stream. Every method has a no-op default.
pub trait StreamObserver: Send + 'static {
    /// The stream's id, for logs (0 if the observer keeps none).
    fn stream_id(&self) -> u64 {
        0
    }
    /// A resource version went out.
    fn sent(&mut self, _type_url: &str, _resource: &Arc<Resource>) {}
    /// The client holds a resource version (it acknowledged it, or reported it on connect).
    fn accepted(&mut self, _type_url: &str, _resource: &Arc<Resource>) {}
    /// The client rejected a resource version.
    fn rejected(&mut self, _type_url: &str, _name: &str, _version: &str, _message: &str) {}
    /// The client no longer holds a resource (unsubscribed, or it was removed).
    fn removed(&mut self, _type_url: &str, _name: &str) {}
}

/// An observer that records nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    type Stream = NoObserver;
    fn opened(&self, _info: StreamInfo<'_>) -> NoObserver {
        NoObserver
    }
}

impl StreamObserver for NoObserver {}

/// Counters of the server, over every transport and protocol.
#[derive(Debug, Default)]
pub struct XdsStats {
    /// Streams opened.
    pub streams_total: AtomicU64,
    /// Streams open now (gauge).
    pub connected: AtomicU64,
    /// Responses carrying resources (or the first, possibly empty, answer of a type).
    pub pushes_total: AtomicU64,
    /// Resources sent, summed over responses.
    pub resources_sent_total: AtomicU64,
    /// Responses the proxies accepted.
    pub acks_total: AtomicU64,
    /// Responses the proxies rejected.
    pub nacks_total: AtomicU64,
}

impl XdsStats {
    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a stream as open until the guard drops.
    pub(crate) fn stream_opened(self: &Arc<Self>) -> ConnectedGuard {
        Self::add(&self.streams_total, 1);
        Self::add(&self.connected, 1);
        ConnectedGuard(self.clone())
    }
}

/// Decrements the `connected` gauge on drop.
#[derive(Debug)]
pub(crate) struct ConnectedGuard(Arc<XdsStats>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}
