//! Protocol behaviour over real HTTP on loopback: compaction and
//! re-bootstrap that keeps the outbox, a restored hub that gets changes
//! again, and idempotent retries. Each test runs on both hub backends
//! (SQLite and PostgreSQL, a fresh database each) except the restored hub,
//! which restores SQLite files.

use std::path::Path;
use std::sync::Arc;
use tillsync_core::domain::{Method, PaymentInput};
use tillsync_core::{IdGen, Lane};
use tillsync_hub::pg::testing::TestDatabase;
use tillsync_hub::{AppState, HubStorage, PgHub, PgOptions, SqliteHub, app};
use tillsync_node::sync::client_for;
use tillsync_node::{ClientOptions, enrol_and_bootstrap, sync_once};
use tillsync_store::{ProductFields, SaleRequest, Store};
use uuid::Uuid;

struct Hub {
    hub: Arc<dyn HubStorage>,
    url: String,
    tenant: Uuid,
    store: Uuid,
    server: tokio::task::JoinHandle<()>,
    /// A PostgreSQL hub's database, dropped after the hub.
    _db: Option<TestDatabase>,
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Pg,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn serve(storage: Arc<dyn HubStorage>, port: u16) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app(AppState::new(storage))).await.unwrap();
    });
    (url, server)
}

async fn start(backend: Backend, dir: &Path) -> Hub {
    let (hub, db): (Arc<dyn HubStorage>, _) = match backend {
        Backend::Sqlite => (Arc::new(SqliteHub::open(dir, IdGen::from_u64(1)).unwrap()), None),
        Backend::Pg => {
            let db = TestDatabase::create();
            let options = PgOptions { pool_len_max: 4, ..PgOptions::default() };
            (Arc::new(PgHub::open(&db.url, &options, IdGen::from_u64(1)).unwrap()), Some(db))
        }
    };
    let (tenant, _) = hub.create_tenant("t", true, now()).unwrap();
    let store = hub.create_store(tenant, "s", now()).unwrap();
    let (url, server) = serve(hub.clone(), 0).await;
    Hub { hub, url, tenant, store, server, _db: db }
}

async fn till(h: &Hub, dir: &Path, n: u64) -> Store {
    let (code, _) = h.hub.create_enrol_code(h.tenant, h.store, now(), 60_000).unwrap();
    enrol_and_bootstrap(dir, &h.url, &code, &format!("till {n}"), &ClientOptions::default(), IdGen::from_u64(100 + n))
        .await
        .unwrap()
}

async fn sync(dir: &Path, s: &mut Store) -> tillsync_node::SyncReport {
    let c = client_for(dir, s).unwrap();
    sync_once(s, &c, now).await.unwrap()
}

fn sell(s: &mut Store) -> String {
    let cash = PaymentInput { method: Method::Cash, amount_minor: None, brand: None, last4: None };
    s.sell(now(), &SaleRequest { items: vec![("ESPRESSO".into(), 1)], payments: vec![cash], ..Default::default() })
        .unwrap()
        .receipt
}

async fn a_cursor_behind_the_horizon_rebootstraps_and_keeps_the_outbox(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(backend, &tmp.path().join("hub")).await;
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = till(&h, &da, 1).await;
    let mut b = till(&h, &db, 2).await;
    // B works offline meanwhile: a sale and a price change wait in its outbox.
    let b_receipt = sell(&mut b);
    b.update_product(now(), "LATTE", &ProductFields { price_minor: Some(410), ..Default::default() }).unwrap();
    for _ in 0..5 {
        sell(&mut a);
    }
    sync(&da, &mut a).await;
    let horizon = h.hub.compact(h.tenant, 0).unwrap();
    assert!(horizon > b.pull_cursor().unwrap(), "B is behind the horizon");
    let r = sync(&db, &mut b).await;
    assert!(r.rebootstrapped);
    assert_eq!(b.pending().unwrap().values().sum::<i64>(), 0, "B's outbox was pushed, none lost");
    assert_eq!(b.sales_count().unwrap(), 6);
    sync(&da, &mut a).await;
    assert!(a.sale_by_receipt(&b_receipt).is_ok());
    assert_eq!(a.product("LATTE").unwrap().price_minor, 410);
    let hub_digest = h.hub.store_digest(h.tenant, h.store).unwrap();
    assert_eq!(a.digests().unwrap().0, hub_digest);
    assert_eq!(b.digests().unwrap().0, hub_digest);
    h.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_hub_gets_the_changes_again() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let h = start(Backend::Sqlite, &hub_dir).await;
    let da = tmp.path().join("a");
    let mut a = till(&h, &da, 1).await;
    sell(&mut a);
    sync(&da, &mut a).await;
    // Back up the hub here (its files, with everything committed).
    let backup = tmp.path().join("hub-backup");
    copy_dir(&hub_dir, &backup);
    let later: Vec<String> = (0..3).map(|_| sell(&mut a)).collect();
    sync(&da, &mut a).await;
    assert_eq!(a.acked(Lane::Sales).unwrap(), 4);
    // The hub is lost and restored from the backup, on the same address.
    let port: u16 = h.url.rsplit(':').next().unwrap().parse().unwrap();
    h.server.abort();
    let _ = h.server.await;
    drop(h.hub);
    std::fs::remove_dir_all(&hub_dir).unwrap();
    copy_dir(&backup, &hub_dir);
    let hub: Arc<dyn HubStorage> = Arc::new(SqliteHub::open(&hub_dir, IdGen::from_u64(2)).unwrap());
    let (_, server) = serve(hub.clone(), port).await;
    // A new sale: the restored hub expects sequence 2, so the till resends 2..5.
    let newest = sell(&mut a);
    sync(&da, &mut a).await;
    sync(&da, &mut a).await;
    assert_eq!(a.acked(Lane::Sales).unwrap(), 5);
    assert_eq!(a.digests().unwrap().0, hub.store_digest(h.tenant, h.store).unwrap());
    // A fresh till sees every sale exactly once.
    let h2 = Hub {
        hub: hub.clone(),
        url: format!("http://127.0.0.1:{port}"),
        tenant: h.tenant,
        store: h.store,
        server,
        _db: None,
    };
    let dc = tmp.path().join("c");
    let c = till(&h2, &dc, 3).await;
    assert_eq!(c.sales_count().unwrap(), 5);
    for r in later.iter().chain([&newest]) {
        assert!(c.sale_by_receipt(r).is_ok(), "{r} reached the restored hub");
    }
    h2.server.abort();
}

async fn a_lost_acknowledgement_is_retried_without_duplicates(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(backend, &tmp.path().join("hub")).await;
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = till(&h, &da, 1).await;
    let mut b = till(&h, &db, 2).await;
    for _ in 0..3 {
        sell(&mut a);
    }
    sync(&da, &mut a).await;
    let changes = h.hub.usage(h.tenant).unwrap().changes;
    // The hub committed but the till never heard: it sends the same changes again.
    a.set_acked(Lane::Sales, 0).unwrap();
    let r = sync(&da, &mut a).await;
    assert_eq!(r.pushed, 3);
    assert_eq!(a.acked(Lane::Sales).unwrap(), 3);
    assert_eq!(h.hub.usage(h.tenant).unwrap().changes, changes, "nothing stored twice");
    sync(&db, &mut b).await;
    assert_eq!(b.sales_count().unwrap(), 3);
    assert_eq!(a.digests().unwrap().0, b.digests().unwrap().0);
    h.server.abort();
}

/// Copies a folder as a backup tool would: each SQLite database through
/// `VACUUM INTO`, a consistent snapshot even while its owner has it open.
/// (Copying a live database with its WAL file byte by byte races with
/// checkpoints and made this test flaky.)
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = to.join(e.file_name());
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &p);
        } else if name.ends_with("-wal") || name.ends_with("-shm") || name.ends_with("-journal") {
            continue;
        } else if name.ends_with(".db") {
            // A till's database is encrypted: opened with its folder's key
            // (copied beside it), the copy keeps that key.
            let conn = tillsync_store::keys::connect(&e.path()).unwrap();
            conn.execute("VACUUM INTO ?1", [p.to_str().unwrap()]).unwrap();
        } else {
            std::fs::copy(e.path(), p).unwrap();
        }
    }
}

async fn a_quota_holds_back_the_catalogue_but_never_sales(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(backend, &tmp.path().join("hub")).await;
    let da = tmp.path().join("a");
    let mut a = till(&h, &da, 1).await;
    h.hub.set_quota(h.tenant, 1).unwrap();
    for p in [400, 410, 420] {
        a.update_product(now(), "LATTE", &ProductFields { price_minor: Some(p), ..Default::default() }).unwrap();
    }
    let receipt = sell(&mut a);
    let r = sync(&da, &mut a).await;
    assert_eq!(r.lane_errors.len(), 1, "{:?}", r.lane_errors);
    assert!(r.lane_errors[0].contains("quota"), "{:?}", r.lane_errors);
    let pending = a.pending().unwrap();
    assert_eq!(pending["sales"], 0, "the sale went through");
    assert_eq!(pending["catalog"], 2, "one catalogue change fit the quota, two wait");
    let st = a.status().unwrap();
    assert!(st.last_error.as_deref().is_some_and(|e| e.contains("quota")), "the held-back lane is visible");
    assert_eq!(st.hub_status, "error");
    // Raising the quota lets the rest through; nothing was lost meanwhile.
    h.hub.set_quota(h.tenant, 0).unwrap();
    sync(&da, &mut a).await;
    assert_eq!(a.pending().unwrap().values().sum::<i64>(), 0);
    assert_eq!(a.status().unwrap().hub_status, "ok");
    let db = tmp.path().join("b");
    let b = till(&h, &db, 2).await;
    assert_eq!(b.product("LATTE").unwrap().price_minor, 420);
    assert!(b.sale_by_receipt(&receipt).is_ok());
    h.server.abort();
}

async fn a_till_with_a_bad_clock_is_warned_and_the_hub_sees_the_skew(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(backend, &tmp.path().join("hub")).await;
    let da = tmp.path().join("a");
    let mut a = till(&h, &da, 1).await;
    sell(&mut a);
    let c = client_for(&da, &a).unwrap();
    // The till's wall clock is ten minutes ahead of the hub's.
    let r = sync_once(&mut a, &c, || now() + 600_000).await.unwrap();
    assert!(r.skew_ms > 590_000 && r.skew_ms < 610_000, "{}", r.skew_ms);
    let st = a.status().unwrap();
    assert!(st.clock_warning.as_deref().is_some_and(|w| w.contains("ahead")), "{:?}", st.clock_warning);
    let devices = h.hub.devices(h.tenant).unwrap();
    let skew = devices.iter().find(|d| d.device_id == a.identity().device_id).unwrap().skew_ms.unwrap();
    assert!(skew > 590_000, "the hub reports the skew too: {skew}");
    // Back in time: no warning.
    sync_once(&mut a, &c, now).await.unwrap();
    assert!(a.status().unwrap().clock_warning.is_none());
    h.server.abort();
}

async fn a_copied_folder_is_caught_even_when_the_original_stays_silent(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(backend, &tmp.path().join("hub")).await;
    let (da, dc) = (tmp.path().join("a"), tmp.path().join("copy"));
    let mut a = till(&h, &da, 1).await;
    sell(&mut a);
    sync(&da, &mut a).await;
    drop(a);
    copy_dir(&da, &dc);
    let mut a = Store::open(&da, tillsync_core::Schema::standard(), IdGen::from_u64(7)).unwrap();
    let mut copy = Store::open(&dc, tillsync_core::Schema::standard(), IdGen::from_u64(8)).unwrap();
    // Only the copy sells: no sequence is ever reused.
    sell(&mut copy);
    sync(&dc, &mut copy).await;
    // The original, which wrote nothing new, says it wrote through #1 while
    // the hub holds #2 of its device: the device is stopped as forked.
    let c = client_for(&da, &a).unwrap();
    let err = sync_once(&mut a, &c, now).await.expect_err("the original is told its folder was copied");
    assert!(err.to_string().contains("copied"), "{err}");
    let c = client_for(&dc, &copy).unwrap();
    let err = sync_once(&mut copy, &c, now).await.expect_err("the copy is stopped too");
    assert!(err.is_revoked(), "forked devices are stopped: {err}");
    let devices = h.hub.devices(h.tenant).unwrap();
    assert!(devices.iter().any(|d| d.status == "forked"), "{devices:?}");
    h.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_hub_is_refilled_by_its_tills_and_no_till_skips_a_reused_position() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let h = start(Backend::Sqlite, &hub_dir).await;
    let (da, db, dc) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let mut a = till(&h, &da, 1).await;
    let mut b = till(&h, &db, 2).await;
    let mut c = till(&h, &dc, 3).await;
    let backup = tmp.path().join("hub-backup");
    copy_dir(&hub_dir, &backup);
    // A sells and syncs; B pulls A's sale: B's cursor is past it.
    let from_a = sell(&mut a);
    sync(&da, &mut a).await;
    sync(&db, &mut b).await;
    assert!(b.sale_by_receipt(&from_a).is_ok());
    let b_cursor = b.pull_cursor().unwrap();
    // The hub is restored to the backup (before A's sale), and A is lost
    // with it: B is the only one left holding A's sale.
    let port: u16 = h.url.rsplit(':').next().unwrap().parse().unwrap();
    h.server.abort();
    let _ = h.server.await;
    drop(h.hub);
    drop(a);
    std::fs::remove_dir_all(&da).unwrap();
    std::fs::remove_dir_all(&hub_dir).unwrap();
    copy_dir(&backup, &hub_dir);
    let hub: Arc<dyn HubStorage> = Arc::new(SqliteHub::open(&hub_dir, IdGen::from_u64(2)).unwrap());
    let (_, server) = serve(hub.clone(), port).await;
    // C sells: on the restored hub its sale takes the position A's had, which
    // B's cursor has passed. A plain "after my cursor" pull would skip it.
    let from_c = sell(&mut c);
    sync(&dc, &mut c).await;
    assert!(hub.pull(&observer(h.tenant, h.store), 0, 1_000, now()).unwrap().cursor >= b_cursor);
    let r = sync(&db, &mut b).await;
    assert!(r.rebootstrapped, "the changed log is noticed (cursor tag) and B bootstraps again");
    assert!(b.sale_by_receipt(&from_c).is_ok(), "B did not skip C's sale at a reused position");
    // B sent A's sale back to the hub, which had lost it.
    sync(&db, &mut b).await;
    sync(&dc, &mut c).await;
    assert!(c.sale_by_receipt(&from_a).is_ok(), "A's sale came back to the hub through B");
    let hub_digest = hub.store_digest(h.tenant, h.store).unwrap();
    assert_eq!(b.digests().unwrap().0, hub_digest);
    assert_eq!(c.digests().unwrap().0, hub_digest);
    assert_eq!(c.sales_count().unwrap(), 2);
    server.abort();
}

/// A device that wrote nothing: it pulls everything of the store.
fn observer(tenant: uuid::Uuid, store: uuid::Uuid) -> tillsync_hub::DeviceAuth {
    tillsync_hub::DeviceAuth { device_id: uuid::Uuid::from_u128(0x0b5e), tenant_id: tenant, store_id: store }
}

// ---------------------------------------------------------------------------
// Paged bootstrap
// ---------------------------------------------------------------------------

/// Called before each hooked request (`GET /v1/snapshot` or `/v1/pull`)
/// with its number (from 0) and its query; answering false makes the hub
/// answer 503 instead.
type RequestHook = Arc<dyn Fn(usize, &str) -> bool + Send + Sync>;

/// The hub's router on a new port, with `hook` run (on the blocking pool)
/// before each request to `path`; the queries seen are recorded.
async fn serve_hooked(
    storage: Arc<dyn HubStorage>,
    path: &'static str,
    hook: RequestHook,
) -> (String, tokio::task::JoinHandle<()>, Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::response::IntoResponse;
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let router = app(AppState::new(storage)).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let (hook, log) = (hook.clone(), log.clone());
            async move {
                if req.uri().path() == path {
                    let q = req.uri().query().unwrap_or("").to_string();
                    let n = {
                        let mut l = log.lock().unwrap();
                        l.push(q.clone());
                        l.len() - 1
                    };
                    if !tokio::task::spawn_blocking(move || hook(n, &q)).await.unwrap() {
                        let body = serde_json::json!({"code": "unavailable", "message": "injected by the test"});
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
                    }
                }
                next.run(req).await
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (url, server, seen)
}

/// Snapshot pages this small make the sample catalogue alone dozens of pages.
const SMALL_PAGE_LEN: usize = 7;

async fn paged_till(h: &Hub, url: &str, dir: &Path, n: u64) -> Result<Store, tillsync_node::SyncError> {
    let (code, _) = h.hub.create_enrol_code(h.tenant, h.store, now(), 60_000).unwrap();
    let opts = ClientOptions { snapshot_page_len: SMALL_PAGE_LEN, ..ClientOptions::default() };
    enrol_and_bootstrap(dir, url, &code, &format!("till {n}"), &opts, IdGen::from_u64(100 + n)).await
}

/// A's changes not yet pushed, one push request each, in sequence order per lane.
fn pending_one_by_one(a: &Store) -> std::collections::VecDeque<tillsync_core::wire::PushRequest> {
    let mut out = std::collections::VecDeque::new();
    for lane in Lane::ALL {
        for p in a.pending_changes(lane, 10_000).unwrap() {
            out.push_back(tillsync_core::wire::PushRequest {
                device_time_ms: now(),
                changes: vec![tillsync_core::wire::WireChange::from_change(&p.change, p.digest)],
                ..Default::default()
            });
        }
    }
    out
}

fn device_auth(hub: &dyn HubStorage, dir: &Path) -> tillsync_hub::DeviceAuth {
    match hub.authenticate(&tillsync_node::sync::load_token(dir).unwrap()).unwrap() {
        tillsync_hub::Caller::Device(d) => d,
        other => panic!("not a device: {other:?}"),
    }
}

async fn a_bootstrap_in_many_pages_matches_the_hub(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(backend, &tmp.path().join("hub")).await;
    let da = tmp.path().join("a");
    let mut a = till(&h, &da, 1).await;
    for _ in 0..5 {
        sell(&mut a);
    }
    sync(&da, &mut a).await;
    let (url, server, seen) = serve_hooked(h.hub.clone(), "/v1/snapshot", Arc::new(|_, _| true)).await;
    let db = tmp.path().join("b");
    let mut b = paged_till(&h, &url, &db, 2).await.unwrap();
    let queries = seen.lock().unwrap().clone();
    let ops = h.hub.snapshot(&device_auth(&*h.hub, &db)).unwrap().ops.len();
    assert_eq!(queries.len(), ops / SMALL_PAGE_LEN + 1, "one request per page: {queries:?}");
    assert!(queries.len() > 20, "many pages: {}", queries.len());
    assert!(queries[0] == format!("limit={SMALL_PAGE_LEN}") && queries[1..].iter().all(|q| q.contains("after=")));
    assert_eq!(b.digests().unwrap().0, h.hub.store_digest(h.tenant, h.store).unwrap());
    assert_eq!(b.sales_count().unwrap(), 5);
    assert_eq!(b.boot_progress().unwrap(), None, "the bootstrap is recorded as complete");
    assert_eq!(b.get_meta("bootstrap").unwrap().as_deref(), Some("complete"));
    assert_eq!(b.get_meta("progress").unwrap(), Some(format!("{ops}/{ops}")), "progress counted every operation");
    // The cursor is the hub's: the next round pulls nothing new.
    let r = sync(&db, &mut b).await;
    assert_eq!((r.pulled, r.rebootstrapped), (0, false));
    server.abort();
    h.server.abort();
}

async fn writes_between_pages_are_not_lost(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(backend, &tmp.path().join("hub")).await;
    let da = tmp.path().join("a");
    let mut a = till(&h, &da, 1).await;
    // A sells and changes a price; its changes reach the hub one at a time
    // between snapshot pages of B's bootstrap, once B's pages have passed
    // every record write (`after` is a ledger key): the price change lands
    // in a key range B has passed, which only the pull from the first
    // page's cursor brings. The price change goes first.
    for _ in 0..6 {
        sell(&mut a);
    }
    a.update_product(now(), "LATTE", &ProductFields { price_minor: Some(455), ..Default::default() }).unwrap();
    let mut queue = pending_one_by_one(&a);
    queue.make_contiguous().sort_by_key(|r| r.changes[0].lane != Lane::Catalog);
    assert_eq!(queue[0].changes[0].lane, Lane::Catalog);
    let pushes = std::sync::Mutex::new(queue);
    let pushed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (hub, auth, count) = (h.hub.clone(), device_auth(&*h.hub, &da), pushed.clone());
    let hook: RequestHook = Arc::new(move |_, q| {
        if q.contains("after=l%3A")
            && let Some(req) = pushes.lock().unwrap().pop_front()
        {
            let (resp, _) = hub.push(&auth, &req, now()).unwrap();
            assert!(resp.lanes.values().all(|l| l.error.is_none() && l.quarantined.is_empty()), "{resp:?}");
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        true
    });
    let (url, server, _) = serve_hooked(h.hub.clone(), "/v1/snapshot", hook).await;
    let db = tmp.path().join("b");
    let mut b = paged_till(&h, &url, &db, 2).await.unwrap();
    assert!(pushed.load(std::sync::atomic::Ordering::SeqCst) >= 2, "the price change and a sale landed between pages");
    assert_ne!(b.product("LATTE").unwrap().price_minor, 455, "the price change came after its range was passed");
    // The pull from the first page's cursor brings what the passed pages missed.
    let r = sync(&db, &mut b).await;
    assert!(!r.rebootstrapped);
    assert_eq!(b.sales_count().unwrap(), 6);
    assert_eq!(b.product("LATTE").unwrap().price_minor, 455);
    assert_eq!(b.digests().unwrap().0, h.hub.store_digest(h.tenant, h.store).unwrap());
    // A pushes what the hub has: acknowledged as duplicates, nothing twice.
    sync(&da, &mut a).await;
    assert_eq!(a.pending().unwrap().values().sum::<i64>(), 0);
    sync(&db, &mut b).await;
    assert_eq!(b.sales_count().unwrap(), 6);
    assert_eq!(b.digests().unwrap().0, h.hub.store_digest(h.tenant, h.store).unwrap());
    server.abort();
    h.server.abort();
}

async fn a_compaction_between_pages_loses_nothing(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(backend, &tmp.path().join("hub")).await;
    let da = tmp.path().join("a");
    let mut a = till(&h, &da, 1).await;
    for _ in 0..3 {
        sell(&mut a);
    }
    a.update_product(now(), "LATTE", &ProductFields { price_minor: Some(430), ..Default::default() }).unwrap();
    let pushes = std::sync::Mutex::new(pending_one_by_one(&a));
    // Pages 3.. each get one of A's changes; page 8 first compacts the whole
    // log, so B's cursor (from page 1) falls behind the horizon.
    let (hub, auth, tenant) = (h.hub.clone(), device_auth(&*h.hub, &da), h.tenant);
    let hook: RequestHook = Arc::new(move |n, _| {
        if n == 8 {
            hub.compact(tenant, 0).unwrap();
        }
        if n >= 3
            && let Some(req) = pushes.lock().unwrap().pop_front()
        {
            hub.push(&auth, &req, now()).unwrap();
        }
        true
    });
    let (url, server, _) = serve_hooked(h.hub.clone(), "/v1/snapshot", hook).await;
    let db = tmp.path().join("b");
    let mut b = paged_till(&h, &url, &db, 2).await.unwrap();
    // B's cursor is behind the horizon: its next round bootstraps again and
    // then has every change, including those pushed before the compaction
    // into key ranges B had already passed.
    let r = sync(&db, &mut b).await;
    assert!(r.rebootstrapped, "the cursor from the first page is behind the horizon");
    assert_eq!(b.sales_count().unwrap(), 3);
    assert_eq!(b.product("LATTE").unwrap().price_minor, 430);
    assert_eq!(b.digests().unwrap().0, h.hub.store_digest(h.tenant, h.store).unwrap());
    server.abort();
    h.server.abort();
}

async fn an_interrupted_bootstrap_resumes_after_its_last_key(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(backend, &tmp.path().join("hub")).await;
    let da = tmp.path().join("a");
    let mut a = till(&h, &da, 1).await;
    for _ in 0..4 {
        sell(&mut a);
    }
    sync(&da, &mut a).await;
    // The 6th snapshot request fails once (the hub or the link went down).
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failed.clone();
    let hook: RequestHook = Arc::new(move |n, _| n != 5 || f.swap(true, std::sync::atomic::Ordering::SeqCst));
    let (url, server, seen) = serve_hooked(h.hub.clone(), "/v1/snapshot", hook).await;
    let db = tmp.path().join("b");
    let err = paged_till(&h, &url, &db, 2).await.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert!(failed.load(std::sync::atomic::Ordering::SeqCst));
    // Five pages were applied, each durable with the key it reached.
    let mut b = Store::open(&db, tillsync_core::Schema::standard(), IdGen::from_u64(202)).unwrap();
    let progress = b.boot_progress().unwrap().expect("a bootstrap in progress");
    assert_eq!(progress.done, 5 * SMALL_PAGE_LEN as u64);
    assert!(progress.after.is_some());
    assert_eq!(b.pull_cursor().unwrap(), 0, "no cursor before the last page");
    // The next start resumes after that key with the same page length (set
    // in the till's config), never from the beginning.
    std::fs::write(db.join("till.toml"), format!("[sync]\nsnapshot_page_len = {SMALL_PAGE_LEN}\n")).unwrap();
    let before = seen.lock().unwrap().len();
    let r = sync(&db, &mut b).await;
    assert!(!r.rebootstrapped);
    let queries = seen.lock().unwrap().clone();
    let key = tillsync_core::wire::SnapshotKey::from(progress.after.as_ref().unwrap());
    let resumed = &queries[before];
    let expected: String = url_encode(key.as_str());
    assert!(resumed.contains(&format!("after={expected}")), "resumed with {resumed}, expected after {key:?}");
    assert!(queries[before..].iter().all(|q| q.contains("after=")), "started over: {queries:?}");
    assert_eq!(b.boot_progress().unwrap(), None);
    assert_eq!(b.sales_count().unwrap(), 4);
    assert_eq!(b.digests().unwrap().0, h.hub.store_digest(h.tenant, h.store).unwrap());
    let cursor = b.pull_cursor().unwrap();
    assert!(cursor > 0);
    server.abort();
    h.server.abort();
}

/// Pull pages this small make a few dozen sales many pages.
const SMALL_PULL_LEN: usize = 4;

/// The `after` of each recorded pull query.
fn pull_afters(queries: &[String]) -> Vec<u64> {
    queries.iter().map(|q| q.split('&').find_map(|kv| kv.strip_prefix("after=")).unwrap().parse().unwrap()).collect()
}

/// A pull of many pages, the pages after the first fetched ahead on a
/// thread of their own while the till applies: changes that reach the
/// hub meanwhile are pulled too, no page is asked twice or skipped, and
/// a compaction part way through (the pages fetched ahead now come from
/// behind the horizon) ends in a bootstrap with nothing lost.
async fn a_pull_in_many_pages_fetched_ahead_matches_the_hub(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(backend, &tmp.path().join("hub")).await;
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = till(&h, &da, 1).await;
    let mut b = till(&h, &db, 2).await;
    for _ in 0..30 {
        sell(&mut a);
    }
    a.update_product(now(), "LATTE", &ProductFields { price_minor: Some(470), ..Default::default() }).unwrap();
    sync(&da, &mut a).await;
    // Three more of A's changes reach the hub one at a time, from the
    // third pull request on, while B's pull is under way.
    for _ in 0..3 {
        sell(&mut a);
    }
    let pushes = std::sync::Mutex::new(pending_one_by_one(&a));
    let (hub, auth) = (h.hub.clone(), device_auth(&*h.hub, &da));
    let hook: RequestHook = Arc::new(move |n, _| {
        if n >= 2
            && let Some(req) = pushes.lock().unwrap().pop_front()
        {
            hub.push(&auth, &req, now()).unwrap();
        }
        true
    });
    let (url, server, seen) = serve_hooked(h.hub.clone(), "/v1/pull", hook).await;
    let opts = ClientOptions { pull_page_len: SMALL_PULL_LEN, ..ClientOptions::default() };
    let token = tillsync_node::sync::load_token(&db).unwrap();
    let client = tillsync_node::HubClient::new(&url, Some(token), &opts).unwrap();
    let before = b.pull_cursor().unwrap();
    let r = sync_once(&mut b, &client, now).await.unwrap();
    assert!(!r.rebootstrapped);
    let afters = pull_afters(&seen.lock().unwrap());
    assert!(afters.len() >= 34 / SMALL_PULL_LEN, "many pages: {afters:?}");
    assert_eq!(afters[0], before, "the first page is asked from the till's cursor");
    assert!(afters.windows(2).all(|w| w[0] < w[1]), "each page asked once, in order: {afters:?}");
    // What the hub's log holds for B past its old cursor, asked in one go:
    // A's 31 changes before the pull, the 3 during it, and what else A's
    // rounds logged.
    let logged = h.hub.pull(&device_auth(&*h.hub, &db), before, 1_000, now()).unwrap();
    assert!(!logged.more && logged.entries.len() >= 34, "{}", logged.entries.len());
    assert_eq!(r.pulled, logged.entries.len() as u64, "every entry once");
    assert_eq!(b.sales_count().unwrap(), 33);
    assert_eq!(b.product("LATTE").unwrap().price_minor, 470);
    assert_eq!(b.digests().unwrap().0, h.hub.store_digest(h.tenant, h.store).unwrap());
    assert_eq!(sync(&db, &mut b).await.pulled, 0, "the cursor is the hub's");
    server.abort();

    // The same with a compaction before the fourth request: that page and
    // the ones after it were asked from behind the new horizon.
    let dc = tmp.path().join("c");
    let mut c = till(&h, &dc, 3).await;
    for _ in 0..20 {
        sell(&mut a);
    }
    sync(&da, &mut a).await;
    let (hub, tenant) = (h.hub.clone(), h.tenant);
    let hook: RequestHook = Arc::new(move |n, _| {
        if n == 3 {
            hub.compact(tenant, 0).unwrap();
        }
        true
    });
    let (url, server, seen) = serve_hooked(h.hub.clone(), "/v1/pull", hook).await;
    let token = tillsync_node::sync::load_token(&dc).unwrap();
    let client = tillsync_node::HubClient::new(&url, Some(token), &opts).unwrap();
    let r = sync_once(&mut c, &client, now).await.unwrap();
    assert!(r.rebootstrapped, "the fetched-ahead page met the horizon");
    assert!(seen.lock().unwrap().len() >= 4);
    assert_eq!(c.sales_count().unwrap(), 53);
    assert_eq!(c.product("LATTE").unwrap().price_minor, 470);
    assert_eq!(c.digests().unwrap().0, h.hub.store_digest(h.tenant, h.store).unwrap());
    server.abort();
    h.server.abort();
}

/// A query value as reqwest encodes it (form encoding: `:` as `%3A`).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs each named test on SQLite (`sqlite::NAME`) and PostgreSQL
/// (`pg::NAME`). Multi-threaded: the PostgreSQL client blocks in place.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod pg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Pg).await
                }
            )*
        }
    };
}

on_every_backend!(
    a_cursor_behind_the_horizon_rebootstraps_and_keeps_the_outbox,
    a_lost_acknowledgement_is_retried_without_duplicates,
    a_quota_holds_back_the_catalogue_but_never_sales,
    a_till_with_a_bad_clock_is_warned_and_the_hub_sees_the_skew,
    a_copied_folder_is_caught_even_when_the_original_stays_silent,
    a_bootstrap_in_many_pages_matches_the_hub,
    writes_between_pages_are_not_lost,
    a_compaction_between_pages_loses_nothing,
    an_interrupted_bootstrap_resumes_after_its_last_key,
    a_pull_in_many_pages_fetched_ahead_matches_the_hub,
);
