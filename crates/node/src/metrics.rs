//! Prometheus metrics of the node, in the text exposition format, served on
//! the local API's `/metrics`: sync rounds, failures, backoff, round latency
//! and queue depth per lane.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tillsync_store::Store;

/// Process-wide counters of the sync driver.
#[derive(Default)]
pub struct NodeMetrics {
    pub rounds: AtomicU64,
    pub failures: AtomicU64,
    pub retries: AtomicU64,
    pub backoff_ms: AtomicU64,
    pub round_ms_sum: AtomicU64,
    pub round_ms_last: AtomicU64,
}

/// The node's metrics.
pub static NODE: NodeMetrics = NodeMetrics {
    rounds: AtomicU64::new(0),
    failures: AtomicU64::new(0),
    retries: AtomicU64::new(0),
    backoff_ms: AtomicU64::new(0),
    round_ms_sum: AtomicU64::new(0),
    round_ms_last: AtomicU64::new(0),
};

impl NodeMetrics {
    /// Records one round.
    pub fn round(&self, took: Duration, ok: bool, was_retry: bool) {
        let ms = took.as_millis() as u64;
        self.rounds.fetch_add(1, Relaxed);
        self.round_ms_sum.fetch_add(ms, Relaxed);
        self.round_ms_last.store(ms, Relaxed);
        if !ok {
            self.failures.fetch_add(1, Relaxed);
        }
        if was_retry {
            self.retries.fetch_add(1, Relaxed);
        }
        if ok {
            self.backoff_ms.store(0, Relaxed);
        }
    }

    /// The text exposition, with queue depth per lane read from the store.
    pub fn render(&self, store: &Store) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        };
        metric("tillsync_node_sync_rounds_total", "counter", "Sync rounds run.", self.rounds.load(Relaxed));
        metric("tillsync_node_sync_failures_total", "counter", "Sync rounds that failed.", self.failures.load(Relaxed));
        metric(
            "tillsync_node_sync_retries_total",
            "counter",
            "Rounds run while backing off.",
            self.retries.load(Relaxed),
        );
        metric("tillsync_node_backoff_ms", "gauge", "Current retry delay.", self.backoff_ms.load(Relaxed));
        metric("tillsync_node_round_ms_sum", "counter", "Total time spent in rounds.", self.round_ms_sum.load(Relaxed));
        metric("tillsync_node_round_ms_last", "gauge", "Duration of the last round.", self.round_ms_last.load(Relaxed));
        out.push_str(
            "# HELP tillsync_node_queue_depth Changes waiting per lane.\n# TYPE tillsync_node_queue_depth gauge\n",
        );
        if let Ok(p) = store.pending() {
            for (lane, n) in p {
                out.push_str(&format!("tillsync_node_queue_depth{{lane=\"{lane}\"}} {n}\n"));
            }
        }
        out
    }
}
