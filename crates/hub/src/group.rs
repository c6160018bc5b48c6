//! Group commit for a SQLite tenant file. Every push used to be one
//! transaction with its own COMMIT: each wrote every page it touched to the
//! WAL and synced it, so pages shared by all pushes (the log's tail, the
//! indexes, the chain, the merged records) were written once per push. In
//! the ingest profile that was over half the hub's CPU (BENCHMARKS.md,
//! "Sync (issue 3)"). Here pushes that queue for a tenant share one
//! transaction, and the last push of a group commits it for all. No push
//! returns before the COMMIT that holds it, so an acknowledgement still
//! means a durable commit. A push whose work fails (an internal error: what
//! a till sent wrong is answered in the acknowledgement, not as an error)
//! rolls the whole group back, and every push of it gets an error and is
//! sent again by its till. Savepoints would undo a failing push alone, but
//! SQLite then copies every page a push touches into a statement journal:
//! in the ingest bench that cost more CPU than the group saved, and 2.5
//! times the memory.
//!
//! Who commits: a push that finishes while another push is queued for the
//! lock leaves the transaction open and waits; the queued push joins it.
//! The push that finds nobody queued, or fills the group, commits and wakes
//! the group. Anything else that takes the lock (a pull, a snapshot, an
//! admin write) commits an open group first, so it never reads what is not
//! durable yet.

use crate::HubError;
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tillsync_store::Store;

/// Most pushes in one group: bounds how long the first push of a group
/// waits for the others' work.
pub const GROUP_LEN_MAX: usize = 16;
/// Longest a group stays open to take more pushes, in milliseconds.
pub const GROUP_OPEN_MS_MAX: u64 = 20;
/// How many failed groups are remembered for their waiting pushes.
const FAILED_LEN_MAX: usize = 64;

/// A tenant's store and its group commit.
pub struct Tenant {
    state: Mutex<TenantState>,
    /// Signalled when a group ends (committed or failed).
    ended: Condvar,
    /// Pushes between asking for the lock and getting it.
    queued: AtomicUsize,
    len_max: usize,
    open_max: Duration,
}

/// What a tenant's group commit has done (for tests and diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Groups committed.
    pub committed: u64,
    /// Groups rolled back or whose COMMIT failed.
    pub failed: u64,
    /// Pushes in committed groups.
    pub pushes: u64,
}

struct TenantState {
    store: Store,
    open: Option<OpenGroup>,
    next_id: u64,
    /// Every group with an id up to this one has ended.
    ended_through: u64,
    /// Groups whose COMMIT failed, with the reason (the newest few).
    failed: VecDeque<(u64, String)>,
    stats: GroupStats,
}

struct OpenGroup {
    id: u64,
    len: usize,
    opened: Instant,
}

/// The tenant's store, locked, with no group open: what it reads is
/// committed.
pub struct TenantGuard<'a>(MutexGuard<'a, TenantState>);

impl Deref for TenantGuard<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.0.store
    }
}

impl DerefMut for TenantGuard<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.0.store
    }
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant").finish_non_exhaustive()
    }
}

impl Tenant {
    pub fn new(store: Store) -> Tenant {
        Self::with_limits(store, GROUP_LEN_MAX, GROUP_OPEN_MS_MAX)
    }

    /// As [`Tenant::new`], with other limits on a group.
    pub fn with_limits(store: Store, len_max: usize, open_ms_max: u64) -> Tenant {
        Tenant {
            state: Mutex::new(TenantState {
                store,
                open: None,
                next_id: 1,
                ended_through: 0,
                failed: VecDeque::new(),
                stats: GroupStats::default(),
            }),
            ended: Condvar::new(),
            queued: AtomicUsize::new(0),
            len_max,
            open_max: Duration::from_millis(open_ms_max),
        }
    }

    /// What the group commit has done so far.
    pub fn stats(&self) -> GroupStats {
        self.state.lock().expect("tenant").stats
    }

    /// Locks the store for work of its own, committing an open group
    /// first (its pushes are waiting for that anyway).
    pub fn lock(&self) -> TenantGuard<'_> {
        let mut g = self.state.lock().expect("tenant");
        if g.open.is_some() {
            self.end_group(&mut g);
        }
        TenantGuard(g)
    }

    /// Runs one push's work in the tenant's shared transaction and returns
    /// once that transaction is committed (or failed: then every push of
    /// the group gets the error, and none of them was stored).
    pub fn push<T>(&self, work: impl FnOnce(&mut Store) -> Result<T, HubError>) -> Result<T, HubError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let mut g = self.state.lock().expect("tenant");
        self.queued.fetch_sub(1, Ordering::SeqCst);
        if g.open.is_none() {
            g.store.begin()?;
            let id = g.next_id;
            g.next_id += 1;
            g.open = Some(OpenGroup { id, len: 0, opened: Instant::now() });
        }
        let r = work(&mut g.store);
        if r.is_err() {
            // Undo the whole group: its other pushes have not returned yet,
            // so they fail with it and their tills send them again.
            self.fail_group(&mut g, "another push of the group failed");
            return r;
        }
        let open = g.open.as_mut().expect("a group is open");
        open.len += 1;
        let id = open.id;
        let full = open.len >= self.len_max || open.opened.elapsed() >= self.open_max;
        if full || self.queued.load(Ordering::SeqCst) == 0 {
            self.end_group(&mut g);
        } else {
            // A queued push takes the lock next and joins this group; the
            // group's last push commits it.
            while g.ended_through < id {
                g = self.ended.wait(g).expect("tenant");
            }
        }
        match g.failed.iter().find(|(f, _)| *f == id) {
            Some((_, reason)) => Err(HubError::Internal(format!("group commit failed: {reason}"))),
            None => r,
        }
    }

    /// Rolls the open group back and wakes its pushes with an error.
    fn fail_group(&self, g: &mut TenantState, reason: &str) {
        let Some(open) = g.open.take() else { return };
        g.store.rollback();
        g.stats.failed += 1;
        g.failed.push_back((open.id, reason.to_string()));
        if g.failed.len() > FAILED_LEN_MAX {
            g.failed.pop_front();
        }
        g.ended_through = open.id;
        self.ended.notify_all();
    }

    /// Commits the open group and wakes its pushes.
    fn end_group(&self, g: &mut TenantState) {
        let Some(open) = g.open.take() else { return };
        if let Err(e) = g.store.commit() {
            tracing::error!(error = %e, pushes = open.len, "group commit failed");
            g.stats.failed += 1;
            g.failed.push_back((open.id, e.to_string()));
            if g.failed.len() > FAILED_LEN_MAX {
                g.failed.pop_front();
            }
        } else {
            g.stats.committed += 1;
            g.stats.pushes += open.len as u64;
        }
        g.ended_through = open.id;
        self.ended.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tillsync_core::{IdGen, Schema};
    use tillsync_store::Identity;

    fn tenant(dir: &std::path::Path) -> Arc<Tenant> {
        let identity = Identity {
            tenant_id: uuid::Uuid::from_u128(1),
            store_id: uuid::Uuid::nil(),
            device_id: uuid::Uuid::from_u128(2),
            receipt_prefix: "HUB".into(),
            name: "hub".into(),
            mode: "hub".into(),
        };
        let store = Store::create(dir, identity, Schema::standard(), IdGen::from_u64(7)).unwrap();
        store.connection().execute_batch("CREATE TABLE t(n INTEGER PRIMARY KEY)").unwrap();
        // No time limit on a group here: the test decides who waits.
        Arc::new(Tenant::with_limits(store, GROUP_LEN_MAX, u64::MAX / 2))
    }

    fn insert(s: &mut Store, n: i64) -> Result<i64, HubError> {
        s.connection().execute("INSERT INTO t(n) VALUES (?1)", [n])?;
        Ok(n)
    }

    fn stored(t: &Tenant) -> Vec<i64> {
        let s = t.lock();
        let mut st = s.connection().prepare("SELECT n FROM t ORDER BY n").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// Starts push `n` on its own thread. The first push holds the lock (in
    /// its work) until `queued` others wait for it, so they join its group.
    fn run_group(t: &Arc<Tenant>, others: &[i64], fail: Option<i64>) -> Vec<Result<i64, HubError>> {
        let (inside_tx, inside_rx) = std::sync::mpsc::channel();
        let first = {
            let t = t.clone();
            let want = others.len();
            std::thread::spawn(move || {
                let t2 = t.clone();
                t.push(move |s| {
                    inside_tx.send(()).unwrap();
                    while t2.queued.load(Ordering::SeqCst) < want {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    insert(s, 1)
                })
            })
        };
        inside_rx.recv().unwrap();
        let handles: Vec<_> = others
            .iter()
            .map(|&n| {
                let t = t.clone();
                std::thread::spawn(move || {
                    t.push(move |s| {
                        if fail == Some(n) {
                            return Err(HubError::Internal("this push fails".into()));
                        }
                        insert(s, n)
                    })
                })
            })
            .collect();
        let mut out = vec![first.join().unwrap()];
        out.extend(handles.into_iter().map(|h| h.join().unwrap()));
        out
    }

    #[test]
    fn pushes_that_queue_share_one_commit_and_return_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = tenant(dir.path());
        let results = run_group(&t, &[2, 3, 4], None);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(t.stats(), GroupStats { committed: 1, failed: 0, pushes: 4 }, "four pushes, one commit");
        assert_eq!(stored(&t), vec![1, 2, 3, 4]);
        // Durable, not only visible on this connection: a second connection reads it.
        let other = rusqlite::Connection::open(dir.path().join(tillsync_store::DB_FILE)).unwrap();
        let n: i64 = other.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 4);
        // A push alone commits by itself.
        t.push(|s| insert(s, 5)).unwrap();
        assert_eq!(t.stats().committed, 2);
    }

    #[test]
    fn a_failing_push_fails_its_whole_group_and_the_next_push_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let t = tenant(dir.path());
        let results = run_group(&t, &[3], Some(3));
        // Push 3 failed in its work after push 1 had done its own in the
        // same group, so push 1 was rolled back with it and fails too: it
        // was not acknowledged, and its till sends it again.
        assert!(results.iter().all(|r| r.is_err()), "{results:?}");
        assert_eq!(stored(&t), Vec::<i64>::new(), "nothing of the failed group is stored");
        assert_eq!(t.stats().failed, 1);
        t.push(|s| insert(s, 9)).unwrap();
        assert_eq!(stored(&t), vec![9]);
    }
}
