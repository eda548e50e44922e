//! Live request capture in the control plane: the summaries proxies report
//! (`CaptureService.Report`) are kept in a bounded ring in memory — the last
//! [`DEFAULT_BUFFER`] by default, for watchers that join late — and broadcast to the
//! watchers (`CaptureService.Watch`, `meshwarden capture`). Nothing is written to disk.

use crate::api::pb;
use crate::metrics::{counter, gauge, to_i64};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Summaries kept for late joiners, unless configured otherwise.
pub const DEFAULT_BUFFER: usize = 1000;
/// Summaries a watcher may fall behind before it skips (and the skip is counted).
const BROADCAST_CAPACITY: usize = 1024;
/// Most summaries accepted in one report (a filter sends at most `maxBatch`, 512).
pub const MAX_RECORDS_PER_REPORT: usize = 512;

/// A summary with its position in the stream (so a watcher's backlog and live records
/// neither overlap nor leave a gap).
#[derive(Debug, Clone)]
pub struct Sequenced {
    /// Position, from 1.
    pub seq: u64,
    /// The summary, `node_id` filled in.
    pub record: Arc<pb::CaptureRecord>,
}

/// The ring, the broadcast and the counters; cheap to clone.
#[derive(Clone)]
pub struct CaptureHub {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Sequenced>,
    stats: Stats,
}

struct Ring {
    records: VecDeque<Sequenced>,
    capacity: usize,
    next_seq: u64,
}

#[derive(Default)]
struct Stats {
    records: AtomicU64,
    reports: AtomicU64,
    refused: AtomicU64,
    proxy_dropped: AtomicU64,
    watcher_skipped: AtomicU64,
}

impl fmt::Debug for CaptureHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureHub")
            .field("buffered", &self.buffered())
            .finish()
    }
}

impl Default for CaptureHub {
    fn default() -> Self {
        Self::new(DEFAULT_BUFFER)
    }
}

/// Which summaries a watcher wants (empty: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Node id.
    pub proxy: String,
    /// Policy name.
    pub policy: String,
}

impl Filter {
    /// Whether `r` passes.
    pub fn accepts(&self, r: &pb::CaptureRecord) -> bool {
        (self.proxy.is_empty() || self.proxy == r.node_id)
            && (self.policy.is_empty() || self.policy == r.policy)
    }
}

impl CaptureHub {
    /// A hub keeping the last `buffer` summaries (at least one).
    pub fn new(buffer: usize) -> Self {
        let (live, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                ring: Mutex::new(Ring {
                    records: VecDeque::new(),
                    capacity: buffer.max(1),
                    next_seq: 1,
                }),
                live,
                stats: Stats::default(),
            }),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Summaries held now.
    pub fn buffered(&self) -> usize {
        self.ring().records.len()
    }

    /// Keeps and broadcasts the summaries of one report from `node_id`, which also says
    /// how many it dropped; returns how many were kept (at most
    /// [`MAX_RECORDS_PER_REPORT`], the rest are counted as refused).
    pub fn report(&self, node_id: &str, records: Vec<pb::CaptureRecord>, dropped: u64) -> usize {
        let stats = &self.inner.stats;
        stats.reports.fetch_add(1, Ordering::Relaxed);
        stats.proxy_dropped.fetch_add(dropped, Ordering::Relaxed);
        let refused = records.len().saturating_sub(MAX_RECORDS_PER_REPORT);
        stats.refused.fetch_add(refused as u64, Ordering::Relaxed);
        let mut ring = self.ring();
        let mut kept = 0;
        for mut record in records.into_iter().take(MAX_RECORDS_PER_REPORT) {
            record.node_id = node_id.to_string();
            let entry = Sequenced {
                seq: ring.next_seq,
                record: Arc::new(record),
            };
            ring.next_seq += 1;
            if ring.records.len() >= ring.capacity {
                ring.records.pop_front();
            }
            ring.records.push_back(entry.clone());
            // No watcher is not an error.
            let _ = self.inner.live.send(entry);
            kept += 1;
        }
        stats.records.fetch_add(kept as u64, Ordering::Relaxed);
        kept
    }

    /// The last `backlog` held summaries that pass `filter` (0: all held), oldest first,
    /// and a receiver of the later ones. Taken under one lock, so nothing is missed or
    /// sent twice.
    pub fn subscribe(
        &self,
        filter: &Filter,
        backlog: usize,
    ) -> (Vec<Sequenced>, broadcast::Receiver<Sequenced>) {
        let ring = self.ring();
        let rx = self.inner.live.subscribe();
        let mut held: Vec<Sequenced> = ring
            .records
            .iter()
            .rev()
            .filter(|s| filter.accepts(&s.record))
            .take(if backlog == 0 { usize::MAX } else { backlog })
            .cloned()
            .collect();
        held.reverse();
        (held, rx)
    }

    /// Counts `n` summaries a slow watcher skipped.
    pub fn skipped(&self, n: u64) {
        self.inner
            .stats
            .watcher_skipped
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Watchers connected now.
    pub fn watchers(&self) -> usize {
        self.inner.live.receiver_count()
    }
}

impl Collector for CaptureHub {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.inner.stats;
        for (name, help, v) in [
            (
                "meshwarden_capture_records",
                "Request summaries received from proxies.",
                &s.records,
            ),
            (
                "meshwarden_capture_reports",
                "Capture reports received from proxies.",
                &s.reports,
            ),
            (
                "meshwarden_capture_refused_records",
                "Summaries beyond the per-report bound, not kept.",
                &s.refused,
            ),
            (
                "meshwarden_capture_proxy_dropped",
                "Summaries proxies said they dropped (queue full).",
                &s.proxy_dropped,
            ),
            (
                "meshwarden_capture_watcher_skipped",
                "Summaries slow watchers skipped.",
                &s.watcher_skipped,
            ),
        ] {
            counter(&mut enc, name, help, v.load(Ordering::Relaxed))?;
        }
        gauge(
            &mut enc,
            "meshwarden_capture_buffered",
            "Summaries held in memory for late watchers.",
            to_i64(self.buffered()),
        )?;
        gauge(
            &mut enc,
            "meshwarden_capture_watchers",
            "Capture watchers connected.",
            to_i64(self.watchers()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(policy: &str, path: &str) -> pb::CaptureRecord {
        pb::CaptureRecord {
            policy: policy.into(),
            path: path.into(),
            status: 200,
            ..Default::default()
        }
    }

    #[test]
    fn the_ring_keeps_the_last_n_for_late_joiners() {
        let hub = CaptureHub::new(3);
        let kept = hub.report(
            "n1",
            (0..5).map(|i| rec("p", &format!("/{i}"))).collect(),
            2,
        );
        assert_eq!(kept, 5);
        assert_eq!(hub.buffered(), 3);
        let (held, _) = hub.subscribe(&Filter::default(), 0);
        let paths: Vec<&str> = held.iter().map(|s| s.record.path.as_str()).collect();
        assert_eq!(paths, ["/2", "/3", "/4"]);
        assert!(held.iter().all(|s| s.record.node_id == "n1"), "node id set");
        let (last, _) = hub.subscribe(&Filter::default(), 1);
        assert_eq!(last[0].record.path, "/4");
    }

    #[tokio::test]
    async fn watchers_get_live_records_after_their_backlog_filtered() {
        let hub = CaptureHub::new(10);
        hub.report("n1", vec![rec("p", "/old")], 0);
        let filter = Filter {
            proxy: "n2".into(),
            policy: String::new(),
        };
        let (held, mut rx) = hub.subscribe(&filter, 0);
        assert!(held.is_empty(), "n1's record is not n2's");
        let (all, _) = hub.subscribe(&Filter::default(), 0);
        hub.report("n2", vec![rec("q", "/new")], 0);
        let live = rx.recv().await.unwrap();
        assert_eq!(live.record.path, "/new");
        assert!(filter.accepts(&live.record));
        assert!(live.seq > all[0].seq, "live ones follow the backlog");
    }

    #[test]
    fn reports_are_bounded() {
        let hub = CaptureHub::new(10);
        let many = (0..MAX_RECORDS_PER_REPORT + 3)
            .map(|_| rec("p", "/"))
            .collect();
        assert_eq!(hub.report("n", many, 0), MAX_RECORDS_PER_REPORT);
        assert_eq!(hub.buffered(), 10);
        assert_eq!(hub.inner.stats.refused.load(Ordering::Relaxed), 3);
    }
}
