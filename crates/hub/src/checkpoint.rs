//! WAL checkpoints of the SQLite hub's tenant files, on a thread of their
//! own. SQLite otherwise checkpoints inside the COMMIT that takes the WAL
//! past 1,000 pages: that push then copies the WAL into the database and
//! fsyncs it while it holds the tenant's lock, before it is acknowledged
//! and before its live event goes out (about a quarter of the hub's CPU in
//! the ingest profile, and the tail of propagation; BENCHMARKS.md, "Sync
//! (issue 3)"). Here a PASSIVE checkpoint runs every
//! [`CHECKPOINT_INTERVAL_MS`] on a connection of its own, beside the
//! writers, and tenant connections checkpoint by themselves only past
//! [`TENANT_WAL_AUTOCHECKPOINT_PAGES`]: the bound on a WAL if this thread
//! falls behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often tenant WALs are checkpointed.
pub const CHECKPOINT_INTERVAL_MS: u64 = 1_000;
/// The WAL size, in pages, past which a tenant's COMMIT checkpoints by
/// itself (the thread fell behind): about 32 MiB.
pub const TENANT_WAL_AUTOCHECKPOINT_PAGES: u32 = 8_000;

/// The checkpoint thread and the tenant files it looks after.
pub struct Checkpointer {
    files: Arc<Mutex<Vec<PathBuf>>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Starts the thread; it checkpoints every file given to
    /// [`Checkpointer::watch`] every `interval_ms`.
    pub fn start(interval_ms: u64) -> Checkpointer {
        let files: Arc<Mutex<Vec<PathBuf>>> = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<()>();
        let watched = files.clone();
        let thread = std::thread::Builder::new()
            .name("hub-checkpoint".into())
            .spawn(move || {
                let mut conns: HashMap<PathBuf, rusqlite::Connection> = HashMap::new();
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_millis(interval_ms)) {
                    let paths: Vec<PathBuf> = watched.lock().expect("checkpoint files").clone();
                    for path in paths {
                        if !conns.contains_key(&path) {
                            // A plain open, not `keys::connect`: tenant files
                            // have no key record, so that would read the file's
                            // header with a file handle of its own, and closing
                            // any handle on a file drops every POSIX lock this
                            // process holds on it, the tenant connection's
                            // too. Other processes then rebuild the WAL index
                            // and read the database without the hub's latest
                            // commits until a checkpoint (what
                            // `node_robust::fault_black_hole` caught).
                            match rusqlite::Connection::open(&path).and_then(|c| {
                                c.busy_timeout(Duration::from_millis(tillsync_store::BUSY_TIMEOUT_MS))?;
                                Ok(c)
                            }) {
                                Ok(c) => {
                                    conns.insert(path.clone(), c);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, path = %path.display(), "cannot open for checkpoints");
                                    continue;
                                }
                            }
                        }
                        let conn = &conns[&path];
                        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                            tracing::warn!(error = %e, path = %path.display(), "WAL checkpoint failed");
                        }
                    }
                }
            })
            .ok();
        Checkpointer { files, stop: Some(tx), thread }
    }

    /// Adds a tenant file to checkpoint.
    pub fn watch(&self, db: PathBuf) {
        let mut files = self.files.lock().expect("checkpoint files");
        if !files.contains(&db) {
            files.push(db);
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
