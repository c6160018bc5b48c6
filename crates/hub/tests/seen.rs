//! Devices' last-seen times are kept in memory by the hub that served the
//! push and written to its database off the push path: every few seconds
//! while it runs, and when it stops. Another hub on the same data (a later
//! process, or another PostgreSQL hub process) sees them once written.
//!
//! Every test runs on both backends (`sqlite::NAME` and `pg::NAME`): the
//! PostgreSQL ones on a fresh database of the server named by
//! `TILLSYNC_TEST_PG`, failing if it is unreachable.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tillsync_core::IdGen;
use tillsync_core::wire::{DeviceInfo, PushRequest};
use tillsync_hub::pg::testing::TestDatabase;
use tillsync_hub::seen::SEEN_FLUSH_INTERVAL_MS;
use tillsync_hub::{DeviceAuth, HubStorage, PgHub, PgOptions, SqliteHub};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Pg,
}

/// Where a hub's data lives; a second hub opens the same data.
enum Backing {
    Dir(tempfile::TempDir),
    Db(TestDatabase),
}

impl Backing {
    fn new(backend: Backend) -> Backing {
        match backend {
            Backend::Sqlite => Backing::Dir(tempfile::tempdir().unwrap()),
            Backend::Pg => Backing::Db(TestDatabase::create()),
        }
    }

    fn open(&self, seed: u64) -> Arc<dyn HubStorage> {
        match self {
            Backing::Dir(d) => Arc::new(SqliteHub::open(d.path(), IdGen::from_u64(seed)).unwrap()),
            Backing::Db(db) => Arc::new(
                PgHub::open(&db.url, &PgOptions { pool_len_max: 4, ..PgOptions::default() }, IdGen::from_u64(seed))
                    .unwrap(),
            ),
        }
    }
}

/// A tenant with one enrolled device.
fn device(hub: &dyn HubStorage) -> DeviceAuth {
    let (tenant, _) = hub.create_tenant("Seen Cafe", false, now()).unwrap();
    let store = hub.create_store(tenant, "Main", now()).unwrap();
    let (code, _) = hub.create_enrol_code(tenant, store, now(), 600_000).unwrap();
    let e = hub.enrol(&code, "till", now()).unwrap();
    DeviceAuth { device_id: e.device_id, tenant_id: e.tenant_id, store_id: e.store_id }
}

fn info(hub: &dyn HubStorage, dev: &DeviceAuth) -> DeviceInfo {
    hub.devices(dev.tenant_id).unwrap().into_iter().find(|d| d.device_id == dev.device_id).expect("the device")
}

/// A push (empty: every push is a contact) with the till's clock `skew_ms`
/// ahead of the hub's; returns the hub time it was served at.
fn contact(hub: &dyn HubStorage, dev: &DeviceAuth, skew_ms: i64) -> u64 {
    let at = now();
    let req = PushRequest { device_time_ms: (at as i64 + skew_ms) as u64, ..Default::default() };
    hub.push(dev, &req, at).unwrap();
    at
}

/// The hub that served the pushes shows the latest contact at once, and
/// writes it within a few flush intervals while it keeps running: a second
/// hub on the same data then reads it from the database.
fn last_seen_is_written_on_the_timer(backend: Backend) {
    let backing = Backing::new(backend);
    let hub = backing.open(1);
    let dev = device(&*hub);
    assert_eq!(info(&*hub, &dev).last_seen_ms, None, "never seen yet");
    let at = contact(&*hub, &dev, 60_000);
    let d = info(&*hub, &dev);
    assert_eq!(d.last_seen_ms, Some(at), "the serving hub shows the contact before it is written");
    assert_eq!(d.skew_ms, Some(60_000));
    let other = backing.open(2);
    let started = Instant::now();
    let limit = Duration::from_millis(5 * SEEN_FLUSH_INTERVAL_MS);
    loop {
        if info(&*other, &dev).last_seen_ms == Some(at) {
            break;
        }
        assert!(started.elapsed() < limit, "the last-seen time was not written within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(info(&*other, &dev).skew_ms, Some(60_000), "the skew is written with it");
    // A later contact replaces it; an earlier time never does.
    let later = contact(&*hub, &dev, -5_000);
    hub.flush_seen().unwrap();
    let d = info(&*other, &dev);
    assert_eq!((d.last_seen_ms, d.skew_ms), (Some(later), Some(-5_000)), "flushed on request");
}

/// A hub that stops writes what it kept: nothing waits for the timer.
fn last_seen_is_written_when_the_hub_stops(backend: Backend) {
    let backing = Backing::new(backend);
    let hub = backing.open(3);
    let dev = device(&*hub);
    let at = contact(&*hub, &dev, 0);
    drop(hub);
    let again = backing.open(4);
    assert_eq!(info(&*again, &dev).last_seen_ms, Some(at), "written when the hub was dropped");
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Backend::Sqlite)
                }
            )*
        }
        mod pg {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Backend::Pg)
                }
            )*
        }
    };
}

on_every_backend!(last_seen_is_written_on_the_timer, last_seen_is_written_when_the_hub_stops);
