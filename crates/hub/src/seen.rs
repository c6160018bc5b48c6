//! When each device was last seen, and its clock skew, kept in memory and
//! written to the hub's database every few seconds by a thread of its own,
//! off the push path. Writing it in every push was a second durable commit
//! before the answer (and, on the SQLite hub, under the control mutex every
//! tenant shares), and it held back the live event to the other tills.
//!
//! A crash (kill -9, power cut) loses at most the last interval of
//! `last_seen`/`skew`; a clean stop writes them. `devices list` reads the
//! stored values with the unwritten ones laid over them, so it is current
//! in the process that served the pushes.

use crate::HubError;
use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tillsync_core::wire::DeviceInfo;
use uuid::Uuid;

/// How often the seen times are written, by default.
pub const SEEN_FLUSH_INTERVAL_MS: u64 = 2_000;

/// One device's latest contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenAt {
    pub tenant: Uuid,
    pub last_seen_ms: u64,
    pub skew_ms: i64,
}

/// Writes a batch of seen times durably enough (one transaction); a stored
/// time newer than the batch's is kept.
pub type SeenWriter = Box<dyn FnMut(&[(Uuid, SeenAt)]) -> Result<(), HubError> + Send>;

type Pending = Arc<Mutex<HashMap<Uuid, SeenAt>>>;

/// The unwritten seen times and the thread that writes them.
pub struct SeenLog {
    pending: Pending,
    writer: Arc<Mutex<SeenWriter>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SeenLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeenLog").finish_non_exhaustive()
    }
}

impl SeenLog {
    /// Starts the log. With `interval_ms`, a thread writes the pending times
    /// at that interval; without, they are written only by [`SeenLog::flush`]
    /// and when the log is dropped (the simulation, which must not write on
    /// a wall-clock timer).
    pub fn start(writer: SeenWriter, interval_ms: Option<u64>) -> SeenLog {
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let writer = Arc::new(Mutex::new(writer));
        let (stop, thread) = match interval_ms {
            Some(ms) => {
                let (tx, rx) = mpsc::channel::<()>();
                let (p, w) = (pending.clone(), writer.clone());
                let t = std::thread::Builder::new()
                    .name("hub-seen-flush".into())
                    .spawn(move || {
                        // Until stopped; the last write is then the dropper's.
                        while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_millis(ms)) {
                            if let Err(e) = flush(&p, &w) {
                                tracing::warn!(error = %e, "cannot write the devices' last-seen times");
                            }
                        }
                    })
                    .ok();
                (Some(tx), t)
            }
            None => (None, None),
        };
        SeenLog { pending, writer, stop, thread }
    }

    /// Notes a device's contact (kept if newer than what is pending).
    pub fn note(&self, device: Uuid, at: SeenAt) {
        let mut p = self.pending.lock().expect("seen");
        match p.get(&device) {
            Some(old) if old.last_seen_ms > at.last_seen_ms => {}
            _ => {
                p.insert(device, at);
            }
        }
    }

    /// Lays the unwritten times of a tenant's devices over stored ones.
    pub fn overlay(&self, tenant: Uuid, devices: &mut [DeviceInfo]) {
        let p = self.pending.lock().expect("seen");
        for d in devices.iter_mut() {
            if let Some(s) = p.get(&d.device_id).filter(|s| s.tenant == tenant)
                && d.last_seen_ms.is_none_or(|t| t <= s.last_seen_ms)
            {
                d.last_seen_ms = Some(s.last_seen_ms);
                d.skew_ms = Some(s.skew_ms);
            }
        }
    }

    /// Writes the pending times now.
    pub fn flush(&self) -> Result<(), HubError> {
        flush(&self.pending, &self.writer)
    }
}

fn flush(pending: &Pending, writer: &Arc<Mutex<SeenWriter>>) -> Result<(), HubError> {
    // One writer at a time, so a batch taken later is never written first.
    let mut w = writer.lock().expect("seen writer");
    let batch: Vec<(Uuid, SeenAt)> = std::mem::take(&mut *pending.lock().expect("seen")).into_iter().collect();
    if batch.is_empty() {
        return Ok(());
    }
    let r = (*w)(&batch);
    if r.is_err() {
        // Kept for the next attempt, unless a newer contact came meanwhile.
        let mut p = pending.lock().expect("seen");
        for (device, at) in batch {
            p.entry(device).or_insert(at);
        }
    }
    r
}

impl Drop for SeenLog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "cannot write the devices' last-seen times at shutdown");
        }
    }
}
