//! The SQLite hub checkpoints its tenant files' WAL on a thread of its own,
//! not inside the COMMIT of a push: what a tenant wrote reaches the main
//! database file within a few checkpoint intervals, with no commit that
//! filled the WAL. With the timers off (the simulation's hub), SQLite's own
//! rule applies and a small WAL stays uncopied. (SQLite only: the
//! PostgreSQL hub has no such files.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tillsync_core::IdGen;
use tillsync_hub::checkpoint::CHECKPOINT_INTERVAL_MS;
use tillsync_hub::{HubStorage, SqliteHub, SqliteTimers};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Log entries found in a copy of the tenant's main database file alone
/// (without its WAL): what a checkpoint has copied there.
fn entries_in_main_file(db: &Path, scratch: &Path) -> i64 {
    let copy = scratch.join("main-only.db");
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(db, &copy).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    // Before any checkpoint the main file may not even hold the table.
    conn.query_row("SELECT count(*) FROM hub_log", [], |r| r.get(0)).unwrap_or(0)
}

/// A hub with a sample tenant (its catalogue is a few hundred log entries,
/// far below the 1,000 WAL pages at which SQLite checkpoints by itself);
/// returns the tenant's database file.
fn sample_tenant(hub: &SqliteHub, dir: &Path) -> PathBuf {
    let (tenant, _) = hub.create_tenant("Checkpoint Cafe", true, now()).unwrap();
    dir.join("tenants").join(tenant.to_string()).join(tillsync_store::DB_FILE)
}

#[test]
fn tenant_wal_is_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let hub = SqliteHub::open(dir.path(), IdGen::from_u64(1)).unwrap();
    let db = sample_tenant(&hub, dir.path());
    let started = Instant::now();
    let limit = Duration::from_millis(5 * CHECKPOINT_INTERVAL_MS);
    loop {
        if entries_in_main_file(&db, scratch.path()) > 0 {
            break;
        }
        assert!(started.elapsed() < limit, "the tenant's WAL was not checkpointed within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn without_the_timer_a_small_wal_stays_uncopied() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let hub = SqliteHub::open_with(dir.path(), IdGen::from_u64(2), SqliteTimers::NONE).unwrap();
    let db = sample_tenant(&hub, dir.path());
    std::thread::sleep(Duration::from_millis(3 * CHECKPOINT_INTERVAL_MS));
    assert_eq!(entries_in_main_file(&db, scratch.path()), 0, "nothing checkpoints a small WAL without the timer");
    drop(hub);
}
