//! Isolation (DESIGN.md section 2, invariant 4): no device or token ever
//! reads or writes another tenant's data, and a store-scoped device sees
//! only its store's ledgers.
//!
//! The route matrix walks the router's own list of routes, so a new
//! endpoint cannot ship without a case here: an unknown route fails the
//! matrix until its expectations are written down.
//!
//! Every response with an error status that passes through [`call`] is
//! checked to be the hub's JSON error body with no internal detail.
//!
//! Every test runs on both backends (`sqlite::NAME` and `pg::NAME`, see
//! `on_every_backend!` at the end): the PostgreSQL ones on a fresh database
//! of the server named by `TILLSYNC_TEST_PG`, failing if it is unreachable.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tillsync_core::domain::{Method as PayMethod, PaymentInput};
use tillsync_core::schema::tables;
use tillsync_core::wire::{
    DeviceInfo, Enrolment, PullResponse, PushRequest, PushResponse, SNAPSHOT_PAGE_LEN_MAX, Snapshot, SnapshotPage,
    Usage, WireChange, WireOp,
};
use tillsync_core::{IdGen, Lane, Op, Schema, derived_id};
use tillsync_hub::app::HEALTH_BODY;
use tillsync_hub::pg::testing::TestDatabase;
use tillsync_hub::{
    Access, AppState, BackupFiles, BackupObject, Caller, DeviceAuth, HubError, HubStorage, PgHub, PgOptions, RouteInfo,
    SqliteHub, app_with_routes,
};
use tillsync_store::sample::PRODUCTS;
use tillsync_store::{Identity, SaleRequest, Store};
use tower::ServiceExt;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A finished response. Event streams are not read to the end: `first_event`
/// holds their first event and `body` is empty.
#[derive(Debug)]
struct Resp {
    what: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    first_event: Option<(String, String)>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {:?}", self.what, self.text()))
    }

    fn typed<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body does not decode ({e}): {:?}", self.what, self.text()))
    }

    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }

    #[track_caller]
    fn ok(&self) -> &Self {
        assert!(self.status.is_success(), "{}: expected 2xx, got {} {}", self.what, self.status, self.text());
        self
    }

    #[track_caller]
    fn expect(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}: status (body {})", self.what, self.text());
        assert_eq!(self.code(), code, "{}: error code (body {})", self.what, self.text());
    }

    #[track_caller]
    fn expect_client_error(&self) {
        assert!(self.status.is_client_error(), "{}: expected 4xx, got {} {}", self.what, self.status, self.text());
    }

    /// 403 or 404: the resource is not the caller's, and nothing says more.
    #[track_caller]
    fn expect_denied(&self) {
        assert!(
            matches!(self.status.as_u16(), 403 | 404),
            "{}: expected 403 or 404, got {} {}",
            self.what,
            self.status,
            self.text()
        );
    }
}

/// Words that must never reach a client in an error body.
const INTERNAL_DETAIL: &[&str] = &[
    "sqlite",
    "postgres",
    "sqlstate",
    "duplicate key",
    "violates",
    "panicked",
    "panic",
    "thread '",
    "backtrace",
    "/tmp/",
    "/work/",
    "/home/",
    "src/",
    ".rs:",
    "no such table",
    "constraint failed",
    "database is locked",
    "hub.db",
    "till.db",
    // Type names of the server's code (serde says "expected struct X").
    "struct ",
    "::",
    "pushrequest",
    "enrolrequest",
];

/// Why an error response is not the hub's JSON error body (a stable code
/// and a message, with no internal detail), if it is not.
fn error_body_problem(r: &Resp) -> Option<String> {
    let ct = r.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/json") {
        return Some(format!("{}: error {} is not JSON (content-type {ct:?}, body {:?})", r.what, r.status, r.text()));
    }
    let Ok(v) = serde_json::from_slice::<Value>(&r.body) else {
        return Some(format!("{}: error {} body does not parse: {:?}", r.what, r.status, r.text()));
    };
    let code = v["code"].as_str().unwrap_or_default();
    let message = v["message"].as_str().unwrap_or_default();
    if code.is_empty() || message.is_empty() {
        return Some(format!("{}: error body without code or message: {v}", r.what));
    }
    let lower = r.text().to_lowercase();
    INTERNAL_DETAIL
        .iter()
        .find(|bad| lower.contains(*bad))
        .map(|bad| format!("{}: error body leaks internal detail {bad:?}: {v}", r.what))
}

#[track_caller]
fn check_error_body(r: &Resp) {
    if let Some(problem) = error_body_problem(r) {
        panic!("{problem}");
    }
}

fn is_event_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Sends one request through the router. Error responses are checked to be
/// the hub's JSON error body; a 5xx is a failure everywhere in this file.
async fn call(router: &Router, req: Request<Body>) -> Resp {
    let r = call_raw(router, req).await;
    if !r.status.is_success() {
        check_error_body(&r);
    }
    r
}

/// [`call`] without the error body check (the caller checks).
async fn call_raw(router: &Router, req: Request<Body>) -> Resp {
    let what = format!("{} {}", req.method(), req.uri());
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    assert!(!status.is_server_error(), "{what}: server error {status}");
    if status.is_success() && is_event_stream(&headers) {
        let mut sse = SseReader::new(resp.into_body());
        let first = match sse.next(Duration::from_secs(3)).await {
            SseNext::Event(name, data) => Some((name, data)),
            other => panic!("{what}: the event stream sent no first event: {other:?}"),
        };
        return Resp { what, status, headers, body: Bytes::new(), first_event: first };
    }
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp { what, status, headers, body, first_event: None }
}

fn request(method: &Method, path: &str, auth: Option<&str>, body: Option<Vec<u8>>) -> Request<Body> {
    let mut b = Request::builder().method(method.clone()).uri(path);
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    if body.is_some() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    b.body(body.map(Body::from).unwrap_or_else(Body::empty)).unwrap()
}

async fn get(router: &Router, path: &str, token: &str) -> Resp {
    call(router, request(&Method::GET, path, Some(&bearer(token)), None)).await
}

async fn post_json(router: &Router, path: &str, token: Option<&str>, body: &impl serde::Serialize) -> Resp {
    let auth = token.map(bearer);
    call(router, request(&Method::POST, path, auth.as_deref(), Some(serde_json::to_vec(body).unwrap()))).await
}

// ---------------------------------------------------------------------------
// Server-sent events, read incrementally
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum SseNext {
    Event(String, String),
    End,
    Timeout,
}

struct SseReader {
    body: Body,
    buf: String,
}

impl SseReader {
    fn new(body: Body) -> Self {
        SseReader { body, buf: String::new() }
    }

    /// The next event (keep-alive comments skipped), the end of the stream,
    /// or nothing within `wait`.
    async fn next(&mut self, wait: Duration) -> SseNext {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let (mut name, mut data) = (String::from("message"), String::new());
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                        any = true;
                    }
                }
                if any {
                    return SseNext::Event(name, data);
                }
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return SseNext::Timeout,
                Ok(None) => return SseNext::End,
                Ok(Some(Err(e))) => panic!("event stream failed: {e}"),
                Ok(Some(Ok(frame))) => {
                    if let Ok(d) = frame.into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&d));
                    }
                }
            }
        }
    }
}

/// Opens a device's event stream and reads its `hello`.
async fn open_events(router: &Router, token: &str) -> SseReader {
    let resp = router.clone().oneshot(request(&Method::GET, "/v1/events", Some(&bearer(token)), None)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "GET /v1/events");
    assert!(is_event_stream(resp.headers()), "GET /v1/events is not an event stream");
    let mut sse = SseReader::new(resp.into_body());
    match sse.next(Duration::from_secs(3)).await {
        SseNext::Event(name, _) => assert_eq!(name, "hello", "the first event of a stream"),
        other => panic!("no hello on the event stream: {other:?}"),
    }
    sse
}

/// Expects a `change` event and returns its position.
async fn expect_change(who: &str, sse: &mut SseReader) -> u64 {
    match sse.next(Duration::from_secs(3)).await {
        SseNext::Event(name, data) => {
            assert_eq!(name, "change", "{who}: event name");
            let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{who}: event data {data:?}: {e}"));
            v["pos"].as_u64().unwrap_or_else(|| panic!("{who}: event without pos: {v}"))
        }
        other => panic!("{who}: expected a change event, got {other:?}"),
    }
}

/// Expects silence: a live stream with nothing for this listener.
async fn expect_silence(who: &str, sse: &mut SseReader) {
    match sse.next(Duration::from_millis(300)).await {
        SseNext::Timeout => {}
        other => panic!("{who}: expected no event, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Node-side helpers: real till stores make the pushed changes
// ---------------------------------------------------------------------------

fn identity(e: &Enrolment, name: &str) -> Identity {
    Identity {
        tenant_id: e.tenant_id,
        store_id: e.store_id,
        device_id: e.device_id,
        receipt_prefix: e.receipt_prefix.clone(),
        name: name.into(),
        mode: "hub".into(),
    }
}

fn auth_of(e: &Enrolment) -> DeviceAuth {
    DeviceAuth { device_id: e.device_id, tenant_id: e.tenant_id, store_id: e.store_id }
}

fn wire_ops_to_ops(ops: &[WireOp]) -> Vec<Op> {
    ops.iter().map(|w| Op::try_from(w).unwrap()).collect()
}

/// Every unacknowledged change of a node, all lanes.
fn pending_request(node: &Store) -> PushRequest {
    let mut changes = vec![];
    for lane in Lane::ALL {
        for p in node.pending_changes(lane, 1_000).unwrap() {
            changes.push(WireChange::from_change(&p.change, p.digest));
        }
    }
    PushRequest { device_time_ms: now(), changes, ..Default::default() }
}

fn sell(node: &mut Store, sku: &str) -> Uuid {
    let req = SaleRequest {
        items: vec![(sku.to_string(), 1)],
        payments: vec![PaymentInput { method: PayMethod::Cash, amount_minor: None, brand: None, last4: None }],
        ..Default::default()
    };
    node.sell(now(), &req).unwrap().sale_id
}

fn stock_row(node: &mut Store, store: Option<Uuid>, sku: &str) -> Uuid {
    let data = json!({"sku": sku, "qty": 1, "reason": "receive"});
    node.write(now(), |l| match store {
        Some(s) => l.insert_in(s, tables::STOCK_MOVEMENTS, data),
        None => l.insert(tables::STOCK_MOVEMENTS, data),
    })
    .unwrap()
}

/// A till: its enrolment and its store.
struct Dev {
    name: &'static str,
    e: Enrolment,
    node: Store,
}

impl Dev {
    fn token(&self) -> &str {
        &self.e.token
    }
}

/// Pushes every pending change of a node over HTTP and records the acks, as
/// a node does. Returns the response.
async fn push_node(router: &Router, dev: &mut Dev) -> PushResponse {
    let req = pending_request(&dev.node);
    assert!(!req.changes.is_empty(), "{}: nothing to push", dev.name);
    let r = post_json(router, "/v1/push", Some(dev.token()), &req).await;
    r.ok();
    let resp: PushResponse = r.typed();
    for (lane, ack) in &resp.lanes {
        dev.node.set_acked(*lane, ack.acked_through).unwrap();
    }
    resp
}

/// Pushes and asserts every change was applied (acknowledged, not
/// quarantined, not refused).
async fn push_clean(router: &Router, dev: &mut Dev) {
    let req = pending_request(&dev.node);
    let resp = push_node(router, dev).await;
    for c in &req.changes {
        let ack = resp.lanes.get(&c.lane).unwrap_or_else(|| panic!("{}: no ack for lane {}", dev.name, c.lane));
        assert!(ack.error.is_none(), "{}: lane {} refused: {:?}", dev.name, c.lane, ack.error);
        assert!(ack.quarantined.is_empty(), "{}: lane {} quarantined: {:?}", dev.name, c.lane, ack.quarantined);
        assert!(ack.acked_through >= c.seq, "{}: {} seq {} not acked: {ack:?}", dev.name, c.lane, c.seq);
    }
}

async fn bootstrap(router: &Router, e: &Enrolment, name: &str, seed: u64) -> Store {
    let r = get(router, "/v1/snapshot", &e.token).await;
    r.ok();
    let snap: Snapshot = r.typed();
    let mut node = Store::in_memory(identity(e, name), Schema::standard(), IdGen::from_u64(seed)).unwrap();
    node.apply_pulled(&wire_ops_to_ops(&snap.ops), snap.cursor).unwrap();
    node
}

// ---------------------------------------------------------------------------
// What a device saw
// ---------------------------------------------------------------------------

/// Operations a device received (pull pages or a snapshot) and their JSON.
#[derive(Default)]
struct Seen {
    ops: Vec<WireOp>,
    text: String,
}

impl Seen {
    fn has(&self, id: Uuid) -> bool {
        self.text.contains(&id.to_string()) || self.text.contains(&id.simple().to_string())
    }

    fn insert_ids(&self) -> BTreeSet<Uuid> {
        self.ops
            .iter()
            .filter_map(|o| match o {
                WireOp::Insert { id, .. } => Some(*id),
                WireOp::Write { .. } => None,
            })
            .collect()
    }
}

/// Every page of a pull from 0, over HTTP.
async fn pull_all(router: &Router, token: &str) -> Seen {
    let mut seen = Seen::default();
    let mut after = 0;
    for _ in 0..1_000 {
        let r = get(router, &format!("/v1/pull?after={after}"), token).await;
        r.ok();
        seen.text.push_str(&r.text());
        let page: PullResponse = r.typed();
        for e in page.entries {
            seen.ops.extend(e.ops);
        }
        if !page.more {
            return seen;
        }
        assert!(page.cursor > after, "pull cursor does not advance");
        after = page.cursor;
    }
    panic!("pull never ended");
}

async fn snapshot_of(router: &Router, token: &str) -> Seen {
    let r = get(router, "/v1/snapshot", token).await;
    r.ok();
    let snap: Snapshot = r.typed();
    Seen { text: r.text(), ops: snap.ops }
}

/// The hub's own view of a (tenant, store): everything a device of that
/// store could ever pull or bootstrap, read from storage with a device id
/// that excludes nothing. Used to prove a forged row was applied nowhere.
fn hub_view(hub: &dyn HubStorage, tenant: Uuid, store: Uuid) -> String {
    let dev = DeviceAuth { device_id: Uuid::nil(), tenant_id: tenant, store_id: store };
    let mut text = serde_json::to_string(&hub.snapshot(&dev).unwrap()).unwrap();
    let mut after = 0;
    loop {
        let page = hub.pull(&dev, after, 1_000, now()).unwrap();
        text.push_str(&serde_json::to_string(&page).unwrap());
        if !page.more {
            return text;
        }
        after = page.cursor;
    }
}

// ---------------------------------------------------------------------------
// The world: two tenants, three stores, five devices, some sales
// ---------------------------------------------------------------------------

struct World {
    hub: Arc<dyn HubStorage>,
    /// The hub's backup folder; a1 and b1 each keep `m.tsb` there.
    files: BackupFiles,
    _files_dir: tempfile::TempDir,
    router: Router,
    routes: Vec<RouteInfo>,
    ta: Uuid,
    admin_a: String,
    tb: Uuid,
    admin_b: String,
    s_a1: Uuid,
    s_a2: Uuid,
    s_b1: Uuid,
    a1: Dev,
    a1b: Dev,
    a2: Dev,
    b1: Dev,
    revoked: Enrolment,
    /// Sale ids by the device that made them, with the store.
    sales: Vec<(&'static str, Uuid, Uuid)>,
    seed: u64,
    /// The hub's folder or database, dropped after the hub (field order).
    _backing: Backing,
}

/// The storage backends every test here runs on.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Pg,
}

/// What holds a hub's data for one test.
enum Backing {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Db(#[allow(dead_code)] TestDatabase),
}

/// A fresh, empty hub on `backend`: a temporary folder, or a database of
/// its own on the test server (so tests run in parallel).
fn open_hub(backend: Backend, seed: u64) -> (Arc<dyn HubStorage>, Backing) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let hub = Arc::new(SqliteHub::open(dir.path(), IdGen::from_u64(seed)).unwrap());
            (hub, Backing::Dir(dir))
        }
        Backend::Pg => {
            let db = TestDatabase::create();
            let options = PgOptions { pool_len_max: 4, ..PgOptions::default() };
            let hub = Arc::new(PgHub::open(&db.url, &options, IdGen::from_u64(seed)).unwrap());
            (hub, Backing::Db(db))
        }
    }
}

fn enrol(hub: &dyn HubStorage, tenant: Uuid, store: Uuid, name: &str) -> Enrolment {
    let (code, _) = hub.create_enrol_code(tenant, store, now(), 600_000).unwrap();
    hub.enrol(&code, name, now()).unwrap()
}

impl World {
    async fn new(backend: Backend, seed: u64) -> World {
        let (hub, backing) = open_hub(backend, seed);
        let files_dir = tempfile::tempdir().unwrap();
        let files = BackupFiles::new(files_dir.path());
        let (router, routes) = app_with_routes(AppState::new(hub.clone()).with_backups(files.clone()));
        let t = now();
        // Both tenants get the sample catalogue, so every negative check
        // ("B sees none of A's") has a positive twin ("B sees B's").
        let (ta, admin_a) = hub.create_tenant("Tenant A", true, t).unwrap();
        let s_a1 = hub.create_store(ta, "A1", t).unwrap();
        let s_a2 = hub.create_store(ta, "A2", t).unwrap();
        let (tb, admin_b) = hub.create_tenant("Tenant B", true, t).unwrap();
        let s_b1 = hub.create_store(tb, "B1", t).unwrap();

        let revoked = enrol(&*hub, ta, s_a1, "a1-revoked");
        hub.revoke(ta, revoked.device_id).unwrap();

        let mut devs = vec![];
        for (i, (name, tenant, store)) in
            [("a1", ta, s_a1), ("a1b", ta, s_a1), ("a2", ta, s_a2), ("b1", tb, s_b1)].into_iter().enumerate()
        {
            let e = enrol(&*hub, tenant, store, name);
            let node = bootstrap(&router, &e, name, seed * 100 + i as u64).await;
            devs.push(Dev { name, e, node });
        }
        let [a1, a1b, a2, b1]: [Dev; 4] = devs.try_into().ok().unwrap();
        for (tenant, dev) in [(ta, &a1), (tb, &b1)] {
            files.put(tenant, dev.e.device_id, "m.tsb", Body::from(backup_bytes(&dev.e))).await.unwrap();
        }
        let mut w = World {
            hub,
            files,
            _files_dir: files_dir,
            router,
            routes,
            ta,
            admin_a,
            tb,
            admin_b,
            s_a1,
            s_a2,
            s_b1,
            a1,
            a1b,
            a2,
            b1,
            revoked,
            sales: vec![],
            seed,
            _backing: backing,
        };
        for (name, sku) in [("a1", "ESPRESSO"), ("a1b", "LATTE"), ("a2", "CROISSANT"), ("b1", "MUG")] {
            w.sell_and_push(name, sku).await;
        }
        w
    }

    fn dev(&mut self, name: &str) -> &mut Dev {
        match name {
            "a1" => &mut self.a1,
            "a1b" => &mut self.a1b,
            "a2" => &mut self.a2,
            "b1" => &mut self.b1,
            _ => panic!("no device {name}"),
        }
    }

    /// A sale on a device's till, pushed to the hub and applied there.
    async fn sell_and_push(&mut self, name: &'static str, sku: &str) -> Uuid {
        let router = self.router.clone();
        let dev = self.dev(name);
        let sale = sell(&mut dev.node, sku);
        let store = dev.e.store_id;
        push_clean(&router, dev).await;
        self.sales.push((name, store, sale));
        sale
    }

    fn next_seed(&mut self) -> u64 {
        self.seed += 1;
        self.seed * 7_919
    }

    fn sales_of_store(&self, store: Uuid) -> Vec<Uuid> {
        self.sales.iter().filter(|s| s.1 == store).map(|s| s.2).collect()
    }

    fn sales_by(&self, name: &str) -> Vec<Uuid> {
        self.sales.iter().filter(|s| s.0 == name).map(|s| s.2).collect()
    }

    fn stores_of(&self, tenant: Uuid) -> Vec<Uuid> {
        if tenant == self.ta { vec![self.s_a1, self.s_a2] } else { vec![self.s_b1] }
    }

    /// Ids that identify a tenant's data wherever they show up: the tenant,
    /// its stores and devices, its hub-made writes, its derived record ids
    /// and its sales.
    fn tenant_markers(&self, tenant: Uuid) -> Vec<(String, Uuid)> {
        let mut m = vec![("tenant".to_string(), tenant), ("hub device".into(), derived_id(tenant, "hub", "device"))];
        m.push(("settings row".into(), derived_id(tenant, tables::SETTINGS, "tenant")));
        for (_, sku, ..) in PRODUCTS {
            m.push((format!("product {sku}"), derived_id(tenant, tables::PRODUCTS, sku)));
        }
        for s in self.stores_of(tenant) {
            m.push((format!("store {s}"), s));
            for sale in self.sales_of_store(s) {
                m.push((format!("sale {sale}"), sale));
            }
        }
        for d in [&self.a1, &self.a1b, &self.a2, &self.b1] {
            if d.e.tenant_id == tenant {
                m.push((format!("device {}", d.name), d.e.device_id));
            }
        }
        m
    }

    /// What a device received is in its scope: its tenant's catalogue, its
    /// store's ledgers, and nothing of another store or tenant.
    /// `own_excluded`: a pull leaves out the device's own changes.
    fn assert_scope(&self, what: &str, e: &Enrolment, seen: &Seen, own_excluded: bool) {
        // Every ledger row names the device's store.
        let mut opening = 0;
        for op in &seen.ops {
            if let WireOp::Insert { table, store, data, .. } = op {
                assert_eq!(*store, e.store_id, "{what}: a {table} row of another store: {op:?}");
                if table == tables::STOCK_MOVEMENTS && data["reason"] == "opening" {
                    opening += 1;
                }
            }
        }
        // Positive controls: the tenant catalogue and the store's opening stock.
        let rows: BTreeSet<Uuid> = seen
            .ops
            .iter()
            .filter_map(|o| match o {
                WireOp::Write { table, row, .. } if table == tables::PRODUCTS => Some(*row),
                _ => None,
            })
            .collect();
        for (_, sku, ..) in PRODUCTS {
            assert!(rows.contains(&derived_id(e.tenant_id, tables::PRODUCTS, sku)), "{what}: product {sku} missing");
        }
        assert_eq!(opening, PRODUCTS.len(), "{what}: opening stock rows of the device's store");
        // The store's sales: present (except the device's own, in a pull).
        let inserts = seen.insert_ids();
        for (by, store, sale) in &self.sales {
            let mine = by == &device_name(self, e.device_id);
            if *store == e.store_id && !(own_excluded && mine) {
                assert!(inserts.contains(sale), "{what}: sale {sale} by {by} of its own store missing");
            }
        }
        // Nothing of the other tenant, anywhere in the text.
        let other = if e.tenant_id == self.ta { self.tb } else { self.ta };
        for (label, id) in self.tenant_markers(other) {
            assert!(!seen.has(id), "{what}: sees {label} of another tenant");
        }
        // Nothing of the tenant's other stores: their ids and their sales.
        for s in self.stores_of(e.tenant_id).into_iter().filter(|s| *s != e.store_id) {
            assert!(!seen.has(s), "{what}: sees the id of another store {s}");
            for sale in self.sales_of_store(s) {
                assert!(!seen.has(sale), "{what}: sees sale {sale} of another store");
            }
        }
    }

    /// The devices that must stay active whatever the matrix does.
    fn assert_all_active(&self, after: &str) {
        for d in [&self.a1, &self.a1b, &self.a2, &self.b1] {
            match self.hub.authenticate(d.token()) {
                Ok(Caller::Device(a)) => assert_eq!(a, auth_of(&d.e), "{after}: {} changed", d.name),
                other => panic!("{after}: device {} is no longer active: {other:?}", d.name),
            }
        }
        assert!(
            matches!(self.hub.authenticate(&self.revoked.token), Err(tillsync_hub::HubError::Revoked)),
            "{after}: the revoked device came back"
        );
        for (tenant, admin) in [(self.ta, &self.admin_a), (self.tb, &self.admin_b)] {
            assert_eq!(self.hub.authenticate(admin).unwrap(), Caller::Admin { tenant_id: tenant }, "{after}");
        }
    }
}

fn device_name(w: &World, id: Uuid) -> &'static str {
    [&w.a1, &w.a1b, &w.a2, &w.b1].into_iter().find(|d| d.e.device_id == id).map_or("?", |d| d.name)
}

// ---------------------------------------------------------------------------
// The route matrix
// ---------------------------------------------------------------------------

/// Who calls. For Device routes "own" is device a1 and the wrong kind is
/// tenant A's admin; for Admin routes "own" is tenant A's admin and the
/// wrong kind is device a1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Own,
    /// Tenant A's admin on a resource of tenant B (routes with `{id}`).
    OwnForeignTarget,
    /// Device b1 (Device routes) or tenant B's admin (Admin routes).
    OtherTenant,
    /// Device a2 of store A2.
    OtherStore,
    /// A valid token of the wrong kind.
    WrongKind,
    /// Tenant B's token of the wrong kind.
    OtherTenantWrongKind,
    Revoked,
    NoToken,
    Malformed(usize),
}

/// Authorization header values that name no caller.
fn malformed(own: &str) -> Vec<String> {
    vec![
        "Bearer".into(),
        "Bearer ".into(),
        "Bearer not-a-token".into(),
        format!("Bearer tsd_{}", "0".repeat(64)),
        format!("Bearer tsa_{}", "0".repeat(64)),
        format!("Bearer {}", &own[..own.len() - 1]),
        format!("Bearer {own}x"),
        own.to_string(),
        format!("Basic {own}"),
        format!("Token {own}"),
        format!("Bearer tsd_{}", "a".repeat(300)),
        "Bearer tsd_' OR '1'='1".into(),
        "Bearer tsa_' OR 1=1 --".into(),
    ]
}

/// What a cell carries from building its request to checking its result.
#[derive(Default)]
struct Ctx {
    /// A backup object name the cell uploads or deletes, with its bytes.
    backup: Option<(String, Vec<u8>)>,
    /// A ledger row pushed under someone else's identity: must never apply.
    forged_row: Option<Uuid>,
    /// The push body, to check its acks.
    push: Option<PushRequest>,
    /// A ledger row of a1 pushed legitimately: must reach a1b.
    own_row: Option<Uuid>,
    /// The device a revoke names.
    target_device: Option<Enrolment>,
    /// The store a digest names.
    target_store: Option<Uuid>,
    /// The enrolment code used.
    code: Option<String>,
    /// A device enrolled for the cell whose token the cell rotates.
    rotated_device: Option<Enrolment>,
    /// A tenant made for the cell whose admin token the cell rotates.
    rotated_tenant: Option<(Uuid, String)>,
}

fn who_list(route: &RouteInfo, n_malformed: usize) -> Vec<Who> {
    let mut v = vec![Who::Own];
    if route.access == Access::Admin && (route.path.contains("{id}") || route.path.contains("{device}")) {
        v.push(Who::OwnForeignTarget);
    }
    v.extend([
        Who::OtherTenant,
        Who::OtherStore,
        Who::WrongKind,
        Who::OtherTenantWrongKind,
        Who::Revoked,
        Who::NoToken,
    ]);
    v.extend((0..n_malformed).map(Who::Malformed));
    v
}

impl World {
    fn auth_for(&self, access: Access, who: Who) -> Option<String> {
        let (own, other_tenant, wrong, other_wrong) = match access {
            Access::Device | Access::Public => (self.a1.token(), self.b1.token(), &*self.admin_a, &*self.admin_b),
            Access::Admin => (&*self.admin_a, &*self.admin_b, self.a1.token(), self.b1.token()),
        };
        match who {
            Who::Own | Who::OwnForeignTarget => Some(bearer(own)),
            Who::OtherTenant => Some(bearer(other_tenant)),
            Who::OtherStore => Some(bearer(self.a2.token())),
            Who::WrongKind => Some(bearer(wrong)),
            Who::OtherTenantWrongKind => Some(bearer(other_wrong)),
            Who::Revoked => Some(bearer(&self.revoked.token)),
            Who::NoToken => None,
            Who::Malformed(i) => Some(malformed(own)[i].clone()),
        }
    }

    /// The device whose scope a successful Device-route call must show.
    fn device_for(&self, who: Who) -> &Dev {
        match who {
            Who::Own => &self.a1,
            Who::OtherTenant => &self.b1,
            Who::OtherStore => &self.a2,
            other => panic!("no device scope for {other:?}"),
        }
    }

    /// Builds one cell's request. Unknown routes fail here: a new endpoint
    /// needs its case (and its expectations) before the matrix passes.
    fn build(&mut self, route: &RouteInfo, who: Who) -> (Request<Body>, Ctx) {
        let mut auth = self.auth_for(route.access, who);
        let mut ctx = Ctx::default();
        let (path, body): (String, Option<Vec<u8>>) = match (route.method.as_str(), route.path) {
            ("GET", "/healthz") => ("/healthz".into(), None),
            ("GET", "/v1/openapi.json") => ("/v1/openapi.json".into(), None),
            ("POST", "/v1/enrol") => {
                let code = if who == Who::Own {
                    self.hub.create_enrol_code(self.ta, self.s_a1, now(), 600_000).unwrap().0
                } else {
                    "ZZZZ-ZZZZ-ZZZZ".to_string()
                };
                ctx.code = Some(code.clone());
                ("/v1/enrol".into(), Some(serde_json::to_vec(&json!({"code": code, "name": "matrix"})).unwrap()))
            }
            ("POST", "/v1/push") => {
                let req = if who == Who::Own {
                    ctx.own_row = Some(stock_row(&mut self.a1.node, None, "ESPRESSO"));
                    pending_request(&self.a1.node)
                } else {
                    // A clone of a1 (same identity, fresh outbox): its change
                    // claims a1 and store A1, sent with someone else's token.
                    let seed = self.next_seed();
                    let mut clone =
                        Store::in_memory(identity(&self.a1.e, "a1-clone"), Schema::standard(), IdGen::from_u64(seed))
                            .unwrap();
                    ctx.forged_row = Some(stock_row(&mut clone, None, "FORGED"));
                    pending_request(&clone)
                };
                let body = serde_json::to_vec(&req).unwrap();
                ctx.push = Some(req);
                ("/v1/push".into(), Some(body))
            }
            ("GET", "/v1/pull") => ("/v1/pull?after=0".into(), None),
            ("GET", "/v1/snapshot") => ("/v1/snapshot".into(), None),
            ("GET", "/v1/events") => ("/v1/events".into(), None),
            ("GET", "/v1/digest") => ("/v1/digest".into(), None),
            ("POST", "/v1/token/rotate") => {
                // A device that may rotate rotates only its own token: each
                // such cell uses a device enrolled for it (in the caller's
                // tenant and store), so the matrix's devices keep theirs.
                let at = match who {
                    Who::Own => Some((self.ta, self.s_a1)),
                    Who::OtherTenant => Some((self.tb, self.s_b1)),
                    Who::OtherStore => Some((self.ta, self.s_a2)),
                    _ => None,
                };
                if let Some((tenant, store)) = at {
                    let fresh = enrol(&*self.hub, tenant, store, "to-rotate");
                    auth = Some(bearer(&fresh.token));
                    ctx.rotated_device = Some(fresh);
                }
                ("/v1/token/rotate".into(), Some(b"{}".to_vec()))
            }
            ("POST", "/v1/admin/token/rotate") => {
                // Likewise an admin rotates only its own tenant's token: a
                // tenant made for the cell.
                if matches!(who, Who::Own | Who::OwnForeignTarget | Who::OtherTenant) {
                    let (tenant, token) = self.hub.create_tenant("to-rotate", false, now()).unwrap();
                    auth = Some(bearer(&token));
                    ctx.rotated_tenant = Some((tenant, token));
                }
                ("/v1/admin/token/rotate".into(), Some(b"{}".to_vec()))
            }
            ("GET", "/v1/devices") => ("/v1/devices".into(), None),
            ("POST", "/v1/devices/{id}/revoke") => {
                let target = match who {
                    // A device enrolled for this cell, so the positive
                    // control does not disturb the rest of the matrix.
                    Who::Own => enrol(&*self.hub, self.ta, self.s_a1, "a1-to-revoke"),
                    Who::OwnForeignTarget => self.b1.e.clone(),
                    _ => self.a1.e.clone(),
                };
                let path = format!("/v1/devices/{}/revoke", target.device_id);
                ctx.target_device = Some(target);
                (path, Some(b"{}".to_vec()))
            }
            ("GET", "/v1/usage") => ("/v1/usage".into(), None),
            ("PUT", "/v1/backups/{name}") => {
                let name = format!("matrix-{}.tsb", self.next_seed());
                let bytes = name.as_bytes().repeat(100);
                ctx.backup = Some((name.clone(), bytes.clone()));
                (format!("/v1/backups/{name}"), Some(bytes))
            }
            ("GET", "/v1/backups") => ("/v1/backups".into(), None),
            ("GET", "/v1/backups/{name}") => ("/v1/backups/m.tsb".into(), None),
            ("DELETE", "/v1/backups/{name}") => {
                // The positive control deletes an object of its own, made
                // for the cell; everyone else aims at a1's `m.tsb`.
                let name = if who == Who::Own {
                    let name = format!("del-{}.tsb", self.next_seed());
                    let files = self.files.clone();
                    let (ta, dev, n) = (self.ta, self.a1.e.device_id, name.clone());
                    std::thread::spawn(move || {
                        tokio::runtime::Runtime::new().unwrap().block_on(files.put(ta, dev, &n, Body::from("x")))
                    })
                    .join()
                    .unwrap()
                    .unwrap();
                    name
                } else {
                    "m.tsb".to_string()
                };
                ctx.backup = Some((name.clone(), vec![]));
                (format!("/v1/backups/{name}"), None)
            }
            ("GET", "/v1/admin/backups") => ("/v1/admin/backups".into(), None),
            ("GET", "/v1/admin/backups/{device}/{name}") => {
                let dev = if who == Who::OwnForeignTarget { &self.b1.e } else { &self.a1.e };
                (format!("/v1/admin/backups/{}/m.tsb", dev.device_id), None)
            }
            ("GET", "/v1/stores/{id}/digest") => {
                let store = if who == Who::OwnForeignTarget { self.s_b1 } else { self.s_a1 };
                ctx.target_store = Some(store);
                (format!("/v1/stores/{store}/digest"), None)
            }
            (m, p) => panic!(
                "route {m} {p} is not covered by the isolation matrix: add a case to World::build and World::check"
            ),
        };
        (request(&route.method, &path, auth.as_deref(), body), ctx)
    }

    /// Runs one cell and checks it. Returns whether it was a 2xx.
    async fn cell(&mut self, route: &RouteInfo, who: Who) -> bool {
        let (req, ctx) = self.build(route, who);
        let mut r = call(&self.router, req).await;
        r.what = format!("{} {} as {who:?}: {}", route.method, route.path, r.what);
        match (route.access, who) {
            (Access::Public, _) => self.check_public(route, who, &r, &ctx).await,
            (_, Who::NoToken | Who::Malformed(_)) => r.expect(401, "unauthorized"),
            (_, Who::Revoked) => r.expect(401, "revoked"),
            (_, Who::WrongKind | Who::OtherTenantWrongKind) => r.expect_client_error(),
            // A device token on an admin route.
            (Access::Admin, Who::OtherStore) => r.expect_client_error(),
            _ => self.check(route, who, &r, &ctx).await,
        }
        self.check_after(route, who, &r, &ctx);
        r.status.is_success()
    }

    async fn check_public(&mut self, route: &RouteInfo, who: Who, r: &Resp, ctx: &Ctx) {
        match route.path {
            "/healthz" => {
                r.ok();
                assert_eq!(r.text(), HEALTH_BODY, "{}", r.what);
            }
            "/v1/enrol" if who == Who::Own => {
                r.ok();
                let e: Enrolment = r.typed();
                assert_eq!((e.tenant_id, e.store_id), (self.ta, self.s_a1), "{}: enrolled where the code says", r.what);
                assert!(
                    matches!(self.hub.authenticate(&e.token), Ok(Caller::Device(a)) if a == auth_of(&e)),
                    "{}: the new token authenticates as the new device",
                    r.what
                );
                // Single use.
                let again =
                    post_json(&self.router, "/v1/enrol", None, &json!({"code": ctx.code, "name": "again"})).await;
                again.expect(400, "bad_code");
            }
            // A token never stands in for a code.
            "/v1/enrol" => r.expect(400, "bad_code"),
            "/v1/openapi.json" => {
                r.ok();
                // The published description names exactly the router's
                // routes, each with its security (public, device, admin).
                let spec: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
                let mut described: BTreeSet<(String, String, String)> = BTreeSet::new();
                for (path, ops) in spec["paths"].as_object().unwrap() {
                    for (method, op) in ops.as_object().unwrap() {
                        let security = op["security"].as_array().unwrap();
                        let access = match security.first().and_then(|s| s.as_object()).and_then(|s| s.keys().next()) {
                            None => "public".to_string(),
                            Some(k) => k.clone(),
                        };
                        described.insert((method.to_uppercase(), path.clone(), access));
                    }
                }
                let routed: BTreeSet<(String, String, String)> = self
                    .routes
                    .iter()
                    .map(|r| {
                        let access = match r.access {
                            Access::Public => "public",
                            Access::Device => "device",
                            Access::Admin => "admin",
                        };
                        (r.method.to_string(), r.path.to_string(), access.to_string())
                    })
                    .collect();
                assert_eq!(described, routed, "openapi.json and the router disagree");
            }
            p => panic!("public route {p} has no expectations in the isolation matrix"),
        }
    }

    /// A call that may succeed: its content must be the caller's scope.
    async fn check(&mut self, route: &RouteInfo, who: Who, r: &Resp, ctx: &Ctx) {
        match route.path {
            "/v1/push" if who == Who::Own => {
                r.ok();
                let resp: PushResponse = r.typed();
                let req = ctx.push.as_ref().unwrap();
                for c in &req.changes {
                    let ack = &resp.lanes[&c.lane];
                    assert!(ack.error.is_none() && ack.quarantined.is_empty(), "{}: {ack:?}", r.what);
                    assert!(ack.acked_through >= c.seq, "{}: not acked: {ack:?}", r.what);
                }
                for (lane, ack) in &resp.lanes {
                    self.a1.node.set_acked(*lane, ack.acked_through).unwrap();
                }
                let row = ctx.own_row.unwrap();
                let seen = pull_all(&self.router, self.a1b.token()).await;
                assert!(seen.insert_ids().contains(&row), "{}: a1's pushed row did not reach a1b", r.what);
                let seen = pull_all(&self.router, self.a2.token()).await;
                assert!(!seen.has(row), "{}: a1's store row reached a2", r.what);
            }
            "/v1/push" => {
                // b1 or a2 pushing a change that claims device a1 (and store
                // A1): acknowledged into quarantine or refused, never applied.
                r.ok();
                let resp: PushResponse = r.typed();
                for c in &ctx.push.as_ref().unwrap().changes {
                    let ack = &resp.lanes[&c.lane];
                    let quarantined = ack.quarantined.iter().any(|q| q.seq == c.seq);
                    assert!(
                        quarantined || ack.error.is_some(),
                        "{}: a change claiming another device was accepted: {ack:?}",
                        r.what
                    );
                }
            }
            "/v1/pull" => {
                r.ok();
                let dev = self.device_for(who);
                let mut seen = Seen { text: r.text(), ops: vec![] };
                let page: PullResponse = r.typed();
                seen.ops.extend(page.entries.into_iter().flat_map(|e| e.ops));
                if page.more {
                    let rest = pull_all(&self.router, dev.token()).await;
                    seen.text.push_str(&rest.text);
                    seen.ops.extend(rest.ops);
                }
                self.assert_scope(&r.what, &dev.e, &seen, true);
            }
            "/v1/snapshot" => {
                r.ok();
                let dev = self.device_for(who);
                let snap: Snapshot = r.typed();
                self.assert_scope(&r.what, &dev.e, &Seen { text: r.text(), ops: snap.ops }, false);
            }
            "/v1/events" => {
                r.ok();
                let (name, _) = r.first_event.as_ref().unwrap();
                assert_eq!(name, "hello", "{}", r.what);
            }
            "/v1/digest" => {
                // The digest of the caller's own store, never another's.
                r.ok();
                let dev = &self.device_for(who).e;
                let v = r.json();
                assert_eq!(v["store_id"], json!(dev.store_id), "{}", r.what);
                let own = self.hub.store_digest(dev.tenant_id, dev.store_id).unwrap();
                assert_eq!(v["state_digest"], json!(own), "{}", r.what);
                for (tenant, store) in [(self.ta, self.s_a1), (self.ta, self.s_a2), (self.tb, self.s_b1)] {
                    if store != dev.store_id {
                        let other = self.hub.store_digest(tenant, store).unwrap();
                        assert_ne!(v["state_digest"], json!(other), "{}: the digest of store {store}", r.what);
                    }
                }
            }
            "/v1/backups/{name}" if route.method == Method::PUT => {
                // Stored under the caller's own device, whoever it is.
                r.ok();
                let o: BackupObject = r.typed();
                let dev = &self.device_for(who).e;
                let (name, bytes) = ctx.backup.as_ref().unwrap();
                assert_eq!((o.device_id, &o.name), (dev.device_id, name), "{}", r.what);
                let p = self.files.path(dev.tenant_id, dev.device_id, name).unwrap();
                assert_eq!(&std::fs::read(p).unwrap(), bytes, "{}", r.what);
                assert!(self.files.path(self.ta, self.a1.e.device_id, name).is_err() || who == Who::Own, "{}", r.what);
            }
            "/v1/backups" => {
                r.ok();
                let list: Vec<BackupObject> = r.typed();
                let dev = self.device_for(who).e.device_id;
                assert!(list.iter().all(|o| o.device_id == dev), "{}: another device's backups listed", r.what);
                assert_eq!(list.iter().any(|o| o.name == "m.tsb"), who != Who::OtherStore, "{}", r.what);
            }
            "/v1/backups/{name}" if route.method == Method::GET => {
                // The caller's own `m.tsb` (b1 has one too), never a1's.
                let dev = &self.device_for(who).e;
                if who == Who::OtherStore {
                    r.expect(404, "not_found");
                } else {
                    r.ok();
                    assert_eq!(r.body.to_vec(), backup_bytes(dev), "{}", r.what);
                }
            }
            "/v1/backups/{name}" => {
                // DELETE: only the caller's own objects.
                if who == Who::OtherStore {
                    r.expect(404, "not_found");
                } else {
                    r.ok();
                    let dev = &self.device_for(who).e;
                    let (name, _) = ctx.backup.as_ref().unwrap();
                    assert!(self.files.path(dev.tenant_id, dev.device_id, name).is_err(), "{}: not deleted", r.what);
                    if who == Who::OtherTenant {
                        // b1 deleted its own: put it back for later cells.
                        let (files, e) = (self.files.clone(), dev.clone());
                        std::thread::spawn(move || {
                            tokio::runtime::Runtime::new().unwrap().block_on(files.put(
                                e.tenant_id,
                                e.device_id,
                                "m.tsb",
                                Body::from(backup_bytes(&e)),
                            ))
                        })
                        .join()
                        .unwrap()
                        .unwrap();
                    }
                }
            }
            "/v1/admin/backups" => {
                r.ok();
                let list: Vec<BackupObject> = r.typed();
                let (mine, theirs) = if who == Who::Own { (&self.a1.e, &self.b1.e) } else { (&self.b1.e, &self.a1.e) };
                assert!(list.iter().any(|o| o.device_id == mine.device_id), "{}: own tenant's backups", r.what);
                assert!(list.iter().all(|o| o.device_id != theirs.device_id), "{}: another tenant's", r.what);
            }
            "/v1/admin/backups/{device}/{name}" => {
                if who == Who::Own {
                    r.ok();
                    assert_eq!(r.body.to_vec(), backup_bytes(&self.a1.e), "{}", r.what);
                } else {
                    r.expect(404, "not_found");
                }
            }
            "/v1/devices" => {
                r.ok();
                let list: Vec<DeviceInfo> = r.typed();
                let ids: BTreeSet<Uuid> = list.iter().map(|d| d.device_id).collect();
                let (tenant, mine, theirs) = if who == Who::Own {
                    (self.ta, vec![&self.a1.e, &self.a1b.e, &self.a2.e, &self.revoked], vec![&self.b1.e])
                } else {
                    (self.tb, vec![&self.b1.e], vec![&self.a1.e, &self.a1b.e, &self.a2.e, &self.revoked])
                };
                for e in mine {
                    assert!(ids.contains(&e.device_id), "{}: own device {} missing", r.what, e.device_id);
                }
                for e in theirs {
                    assert!(!ids.contains(&e.device_id), "{}: lists another tenant's device", r.what);
                }
                let stores = self.stores_of(tenant);
                for d in &list {
                    assert!(stores.contains(&d.store_id), "{}: a device of another tenant's store: {d:?}", r.what);
                }
                let revoked = list.iter().find(|d| d.device_id == self.revoked.device_id);
                if let Some(d) = revoked {
                    assert_eq!(d.status, "revoked", "{}", r.what);
                }
                assert!(!r.text().contains(&self.revoked.token) && !r.text().contains("tsd_"), "{}: tokens", r.what);
            }
            "/v1/token/rotate" => {
                // The caller's own token, and nobody else's, is replaced:
                // the old one works until the new one's first use, then never.
                r.ok();
                let old = ctx.rotated_device.as_ref().unwrap();
                let v = r.json();
                assert_eq!(v["device_id"], json!(old.device_id), "{}", r.what);
                let new = v["token"].as_str().unwrap().to_string();
                assert!(new.starts_with("tsd_") && new != old.token, "{}: new token {new}", r.what);
                get(&self.router, "/v1/pull?after=0", &old.token).await.ok();
                get(&self.router, "/v1/pull?after=0", &new).await.ok();
                assert!(matches!(self.hub.authenticate(&old.token), Err(HubError::Unauthorized)), "{}: old", r.what);
                assert!(
                    matches!(self.hub.authenticate(&new), Ok(Caller::Device(a)) if a == auth_of(old)),
                    "{}: the new token is the same device",
                    r.what
                );
                get(&self.router, "/v1/pull?after=0", &old.token).await.expect(401, "unauthorized");
            }
            "/v1/admin/token/rotate" => {
                r.ok();
                let (tenant, old) = ctx.rotated_tenant.as_ref().unwrap();
                let v = r.json();
                assert_eq!(v["tenant_id"], json!(tenant), "{}", r.what);
                let new = v["admin_token"].as_str().unwrap().to_string();
                assert!(new.starts_with("tsa_") && &new != old, "{}: new token {new}", r.what);
                get(&self.router, "/v1/devices", old).await.ok();
                get(&self.router, "/v1/devices", &new).await.ok();
                get(&self.router, "/v1/devices", old).await.expect(401, "unauthorized");
                assert!(
                    matches!(self.hub.authenticate(&new), Ok(Caller::Admin { tenant_id }) if tenant_id == *tenant),
                    "{}: the new token is the same tenant's",
                    r.what
                );
            }
            "/v1/devices/{id}/revoke" => {
                let target = ctx.target_device.as_ref().unwrap();
                if who == Who::Own {
                    r.ok();
                    assert_eq!(r.json()["status"], "revoked", "{}", r.what);
                    let again = get(&self.router, "/v1/pull?after=0", &target.token).await;
                    again.expect(401, "revoked");
                } else {
                    // Tenant B's admin on a1, or tenant A's admin on b1.
                    r.expect_denied();
                    let still = get(&self.router, "/v1/pull?after=0", &target.token).await;
                    still.ok();
                }
            }
            "/v1/usage" => {
                r.ok();
                let u: Usage = r.typed();
                let tenant = if who == Who::Own { self.ta } else { self.tb };
                let active = self.hub.devices(tenant).unwrap().iter().filter(|d| d.status == "active").count();
                assert_eq!(
                    u.stores as usize,
                    self.stores_of(tenant).len(),
                    "{}: stores of the caller's tenant",
                    r.what
                );
                assert_eq!(u.devices as usize, active, "{}: devices of the caller's tenant", r.what);
                assert_eq!(u.quarantined, self.hub.usage(tenant).unwrap().quarantined, "{}", r.what);
            }
            "/v1/stores/{id}/digest" => {
                let store = ctx.target_store.unwrap();
                if who == Who::Own {
                    r.ok();
                    let v = r.json();
                    assert_eq!(v["store_id"], json!(store), "{}", r.what);
                    let d = self.hub.store_digest(self.ta, store).unwrap();
                    assert_eq!(v["state_digest"], json!(d), "{}", r.what);
                    assert!(!d.is_empty(), "{}", r.what);
                } else {
                    r.expect_denied();
                }
            }
            p => panic!("route {p} has no expectations in the isolation matrix"),
        }
    }

    /// After every cell: forged rows applied nowhere, devices untouched.
    fn check_after(&self, route: &RouteInfo, who: Who, r: &Resp, ctx: &Ctx) {
        // a1's own backup survives every cell that is not a1's own.
        let kept = self.files.path(self.ta, self.a1.e.device_id, "m.tsb");
        assert!(kept.is_ok_and(|p| std::fs::read(p).unwrap() == backup_bytes(&self.a1.e)), "{}: a1's backup", r.what);
        if let Some(row) = ctx.forged_row {
            for (tenant, store) in
                [(self.ta, self.s_a1), (self.ta, self.s_a2), (self.tb, self.s_b1), (self.tb, self.s_a1)]
            {
                assert!(
                    !hub_view(&*self.hub, tenant, store).contains(&row.to_string()),
                    "{}: forged row {row} is visible in tenant {tenant} store {store}",
                    r.what
                );
            }
        }
        if let Some(target) = &ctx.target_device
            && who != Who::Own
        {
            assert!(
                matches!(self.hub.authenticate(&target.token), Ok(Caller::Device(_))),
                "{}: {} was revoked by a caller that is not its tenant's admin",
                r.what,
                target.device_id
            );
        }
        self.assert_all_active(&format!("after {} {} as {who:?}", route.method, route.path));
    }
}

async fn every_route_times_every_caller(backend: Backend) {
    let started = Instant::now();
    let mut w = World::new(backend, 11).await;
    let routes = w.routes.clone();
    assert!(!routes.is_empty(), "the router lists no routes");
    let keys: BTreeSet<(String, &str)> = routes.iter().map(|r| (r.method.to_string(), r.path)).collect();
    assert_eq!(keys.len(), routes.len(), "a route is listed twice");
    // Every route that is not public must say so, and the public ones are
    // exactly the two that must be public.
    let public: BTreeSet<&str> = routes.iter().filter(|r| r.access == Access::Public).map(|r| r.path).collect();
    assert_eq!(public, BTreeSet::from(["/healthz", "/v1/enrol", "/v1/openapi.json"]), "public routes");

    let n_malformed = malformed("tsd_x").len();
    let mut cells: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut positive: BTreeSet<String> = BTreeSet::new();
    for route in &routes {
        let key = format!("{} {}", route.method, route.path);
        for who in who_list(route, n_malformed) {
            let ok = w.cell(route, who).await;
            let e = cells.entry(key.clone()).or_default();
            e.0 += 1;
            if ok {
                e.1 += 1;
            }
            if who == Who::Own {
                assert!(ok, "{key}: the positive control failed");
                positive.insert(key.clone());
            }
        }
    }
    let exercised: BTreeSet<String> = cells.keys().cloned().collect();
    let listed: BTreeSet<String> = routes.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(exercised, listed, "every listed route is exercised");
    assert_eq!(positive, listed, "every route has a passing positive control");
    let total: usize = cells.values().map(|c| c.0).sum();
    for (k, (n, ok)) in &cells {
        eprintln!("matrix: {k:<32} {n:>3} cells, {ok:>2} 2xx");
    }
    eprintln!("matrix: {} routes, {total} cells in {:?}", routes.len(), started.elapsed());
}

// ---------------------------------------------------------------------------
// Content: what each device pulls and bootstraps
// ---------------------------------------------------------------------------

fn op_id(op: &WireOp) -> String {
    match op {
        WireOp::Write { id, .. } => id.clone(),
        WireOp::Insert { id, .. } => id.to_string(),
    }
}

/// Every page of a paged snapshot (`limit` operations each), over HTTP.
async fn snapshot_pages(router: &Router, token: &str, limit: usize) -> (Vec<SnapshotPage>, Seen) {
    let mut pages = vec![];
    let mut seen = Seen::default();
    let mut path = format!("/v1/snapshot?limit={limit}");
    for _ in 0..10_000 {
        let r = get(router, &path, token).await;
        r.ok();
        seen.text.push_str(&r.text());
        let page: SnapshotPage = r.typed();
        seen.ops.extend(page.ops.iter().cloned());
        let next = page.next.clone();
        pages.push(page);
        match next {
            Some(k) => path = format!("/v1/snapshot?limit={limit}&after={}", k.as_str()),
            None => return (pages, seen),
        }
    }
    panic!("the snapshot never ended");
}

/// A paged snapshot covers every operation of the caller's scope exactly
/// once (the same set as the whole snapshot), nothing of another store or
/// tenant; only the first page carries the cursor; no page is longer than
/// asked, and a page longer than `SNAPSHOT_PAGE_LEN_MAX` is refused.
async fn snapshot_pages_cover_the_scope_once(backend: Backend) {
    let mut w = World::new(backend, 29).await;
    w.sell_and_push("a1b", "MUFFIN-BB").await;
    w.sell_and_push("a2", "COOKIE").await;
    for name in ["a1", "a1b", "a2", "b1"] {
        let (e, token) = {
            let d = w.dev(name);
            (d.e.clone(), d.e.token.clone())
        };
        let whole: Snapshot = {
            let r = get(&w.router, "/v1/snapshot", &token).await;
            r.ok();
            r.typed()
        };
        for limit in [1, 7, SNAPSHOT_PAGE_LEN_MAX] {
            let (pages, seen) = snapshot_pages(&w.router, &token, limit).await;
            let what = format!("{name}'s snapshot in pages of {limit}");
            w.assert_scope(&what, &e, &seen, false);
            let ids: Vec<String> = seen.ops.iter().map(op_id).collect();
            let unique: BTreeSet<&String> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "{what}: an operation came twice");
            let expected: BTreeSet<String> = whole.ops.iter().map(op_id).collect();
            assert_eq!(unique.into_iter().cloned().collect::<BTreeSet<_>>(), expected, "{what}: not the whole scope");
            assert!(pages.iter().all(|p| p.ops.len() <= limit), "{what}: a page longer than asked");
            assert_eq!(pages[0].cursor, Some(whole.cursor), "{what}: the first page's cursor");
            assert_eq!(pages[0].total, Some(whole.ops.len() as u64), "{what}: the first page's total");
            assert!(pages[1..].iter().all(|p| p.cursor.is_none()), "{what}: a later page carries a cursor");
            if limit == 1 {
                assert_eq!(pages.len(), whole.ops.len() + 1, "{what}: one page per operation, then an empty last one");
            }
        }
    }
    let token = w.a1.token().to_string();
    let over = get(&w.router, &format!("/v1/snapshot?limit={}", SNAPSHOT_PAGE_LEN_MAX + 1), &token).await;
    over.expect(400, "bad_query");
    get(&w.router, "/v1/snapshot?limit=0", &token).await.expect(400, "bad_query");
    for bad in ["x", "l:not-a-uuid", "w:products:nope:0000000000000001-00000000000000000000000000000000", "w::"] {
        let r = get(&w.router, &format!("/v1/snapshot?limit=5&after={bad}"), &token).await;
        r.expect(400, "bad_query");
    }
    // Another tenant's key leads nowhere outside the caller's scope: keys
    // are positions, the scope still comes from the token.
    let (_, b1_seen) = snapshot_pages(&w.router, w.b1.token(), 1_000).await;
    let b1_key = b1_seen.ops.iter().find_map(|o| match o {
        WireOp::Insert { id, .. } => Some(format!("l:{id}")),
        _ => None,
    });
    let r = get(&w.router, &format!("/v1/snapshot?limit=1000&after={}", b1_key.unwrap()), &token).await;
    r.ok();
    let page: SnapshotPage = r.typed();
    let a1 = w.a1.e.clone();
    for op in &page.ops {
        if let WireOp::Insert { store, .. } = op {
            assert_eq!(*store, a1.store_id, "a page after another tenant's key holds another store's row");
        }
    }
}

async fn pull_and_snapshot_hold_only_the_callers_scope(backend: Backend) {
    let mut w = World::new(backend, 23).await;
    // A second sale in A1 and A2, so each store has rows from two devices.
    w.sell_and_push("a1b", "MUFFIN-BB").await;
    w.sell_and_push("a2", "COOKIE").await;

    for name in ["a1", "a1b", "a2", "b1"] {
        let (e, token) = {
            let d = w.dev(name);
            (d.e.clone(), d.e.token.clone())
        };
        let pulled = pull_all(&w.router, &token).await;
        w.assert_scope(&format!("{name}'s pull"), &e, &pulled, true);
        let snap = snapshot_of(&w.router, &token).await;
        w.assert_scope(&format!("{name}'s snapshot"), &e, &snap, false);
        // A device's snapshot holds its own sales too.
        for sale in w.sales_by(name) {
            assert!(snap.insert_ids().contains(&sale), "{name}'s snapshot misses its own sale");
        }
    }
    // The store pairs explicitly: a1 and a1b see each other's sales; a2 sees
    // neither; b1 sees nothing of tenant A.
    let a1_pull = pull_all(&w.router, w.a1.token()).await;
    let a2_pull = pull_all(&w.router, w.a2.token()).await;
    let a1b_pull = pull_all(&w.router, w.a1b.token()).await;
    let b1_snap = snapshot_of(&w.router, w.b1.token()).await;
    for sale in w.sales_by("a1b") {
        assert!(a1_pull.insert_ids().contains(&sale));
        assert!(!a2_pull.has(sale));
        assert!(!b1_snap.has(sale));
    }
    for sale in w.sales_by("a1") {
        assert!(a1b_pull.insert_ids().contains(&sale));
        assert!(!a2_pull.has(sale));
    }
    for sale in w.sales_by("a2") {
        assert!(!a1_pull.has(sale) && !a1b_pull.has(sale) && !b1_snap.has(sale));
    }
    for sale in w.sales_by("b1") {
        assert!(!a1_pull.has(sale) && !a2_pull.has(sale) && !a1b_pull.has(sale));
    }
}

async fn forged_rows_are_quarantined_and_never_seen(backend: Backend) {
    let mut w = World::new(backend, 37).await;
    let quarantined_before = w.hub.usage(w.ta).unwrap().quarantined;

    // a1 (store A1) pushes a stock row naming store A2, then one naming
    // tenant B's store B1, then writes a record whose id is tenant B's
    // product id.
    let into_a2 = stock_row(&mut w.a1.node, Some(w.s_a2), "FORGED-A2");
    let into_b1 = stock_row(&mut w.a1.node, Some(w.s_b1), "FORGED-B1");
    let b_mug = derived_id(w.tb, tables::PRODUCTS, "MUG");
    w.a1.node.write(now(), |l| l.set(tables::PRODUCTS, b_mug, &[("name", json!("PWNED-BY-A1"))])).unwrap();
    let req = pending_request(&w.a1.node);
    let resp = push_node(&w.router, &mut w.a1).await;
    let stock = &resp.lanes[&Lane::Stock];
    assert!(stock.error.is_none(), "a forged ledger row blocks the lane: {stock:?}");
    let stock_seqs: Vec<u64> = req.changes.iter().filter(|c| c.lane == Lane::Stock).map(|c| c.seq).collect();
    assert_eq!(stock_seqs.len(), 2);
    assert!(stock.acked_through >= *stock_seqs.iter().max().unwrap(), "forged rows are acknowledged: {stock:?}");
    let q: BTreeSet<u64> = stock.quarantined.iter().map(|q| q.seq).collect();
    assert_eq!(q, stock_seqs.iter().copied().collect(), "both forged changes are quarantined: {stock:?}");
    for qa in &stock.quarantined {
        assert!(!qa.reason.is_empty(), "a quarantine has a reason");
        assert!(!qa.reason.to_lowercase().contains("sqlite"), "reason leaks detail: {}", qa.reason);
    }
    assert_eq!(w.hub.usage(w.ta).unwrap().quarantined, quarantined_before + 2, "quarantine is visible on the hub");

    // The forged rows are nowhere: not in a2's or a1b's pull or snapshot, not
    // in tenant B, not in the hub's state of any store.
    for (label, token) in [("a2", w.a2.token()), ("a1b", w.a1b.token()), ("b1", w.b1.token())] {
        for seen in [pull_all(&w.router, token).await, snapshot_of(&w.router, token).await] {
            assert!(!seen.has(into_a2), "{label} sees the row a1 forged into A2");
            assert!(!seen.has(into_b1), "{label} sees the row a1 forged into B1");
        }
    }
    for (tenant, store) in [(w.ta, w.s_a1), (w.ta, w.s_a2), (w.tb, w.s_b1)] {
        let view = hub_view(&*w.hub, tenant, store);
        assert!(!view.contains(&into_a2.to_string()) && !view.contains(&into_b1.to_string()));
    }
    // A write on tenant B's product id stays in tenant A (ids are only
    // names; tenants are separate): b1's catalogue is untouched.
    let b1_seen = snapshot_of(&w.router, w.b1.token()).await;
    assert!(!b1_seen.text.contains("PWNED-BY-A1"), "a1's write reached tenant B");
    let b1_pull = pull_all(&w.router, w.b1.token()).await;
    assert!(!b1_pull.text.contains("PWNED-BY-A1"), "a1's write reached tenant B's pull");

    // The lane still flows: a1's next sale is applied and reaches a1b.
    let sale = w.sell_and_push("a1", "DOPPIO").await;
    assert!(pull_all(&w.router, w.a1b.token()).await.insert_ids().contains(&sale));

    // b1 pushing a change that claims a1 and store A1: quarantined in B.
    let mut clone = Store::in_memory(identity(&w.a1.e, "clone"), Schema::standard(), IdGen::from_u64(999)).unwrap();
    let cloned_row = stock_row(&mut clone, None, "CLONED");
    let body = pending_request(&clone);
    let r = post_json(&w.router, "/v1/push", Some(w.b1.token()), &body).await;
    r.ok();
    let resp: PushResponse = r.typed();
    assert_eq!(resp.lanes[&Lane::Stock].quarantined.len(), 1, "{:?}", resp.lanes);
    for (tenant, store) in [(w.ta, w.s_a1), (w.tb, w.s_b1), (w.tb, w.s_a1)] {
        assert!(!hub_view(&*w.hub, tenant, store).contains(&cloned_row.to_string()));
    }

    // a1b (same store as a1) relaying a1's changes unchanged, as a till does
    // with imported pending changes or a restored till's unsynced ones: within
    // one store this is allowed (the rows keep a1 as their origin, so every
    // replica stores the same thing), and nothing leaves the store.
    let mut clone = Store::in_memory(identity(&w.a1.e, "clone2"), Schema::standard(), IdGen::from_u64(1_999)).unwrap();
    let relayed_row = stock_row(&mut clone, None, "RELAYED");
    let espresso = derived_id(w.ta, tables::PRODUCTS, "ESPRESSO");
    clone.write(now(), |l| l.set(tables::PRODUCTS, espresso, &[("name", json!("RELAYED-FROM-A1"))])).unwrap();
    let body = pending_request(&clone);
    assert_eq!(body.changes.len(), 2);
    let r = post_json(&w.router, "/v1/push", Some(w.a1b.token()), &body).await;
    r.ok();
    let resp: PushResponse = r.typed();
    for c in &body.changes {
        let ack = &resp.lanes[&c.lane];
        assert!(ack.error.is_none(), "{}: {ack:?}", c.lane);
        assert!(ack.quarantined.is_empty(), "{}: a same-store relay is applied: {ack:?}", c.lane);
    }
    let a1_view = hub_view(&*w.hub, w.ta, w.s_a1);
    assert!(a1_view.contains(&relayed_row.to_string()), "the relayed row is in store A1");
    assert!(!hub_view(&*w.hub, w.ta, w.s_a2).contains(&relayed_row.to_string()), "and only there");
    assert!(!hub_view(&*w.hub, w.tb, w.s_b1).contains("RELAYED-FROM-A1"), "never in tenant B");
    // A device of another store may not relay store A1's rows.
    let mut clone = Store::in_memory(identity(&w.a1.e, "clone3"), Schema::standard(), IdGen::from_u64(2_999)).unwrap();
    let other_row = stock_row(&mut clone, None, "FROM-A2");
    let body = pending_request(&clone);
    let r = post_json(&w.router, "/v1/push", Some(w.a2.token()), &body).await;
    r.ok();
    let resp: PushResponse = r.typed();
    assert_eq!(resp.lanes[&Lane::Stock].quarantined.len(), 1, "{:?}", resp.lanes);
    for (tenant, store) in [(w.ta, w.s_a1), (w.ta, w.s_a2)] {
        assert!(!hub_view(&*w.hub, tenant, store).contains(&other_row.to_string()), "a cross-store relay was applied");
    }
}

// ---------------------------------------------------------------------------
// Live events
// ---------------------------------------------------------------------------

async fn events_reach_only_the_store_and_tenant_of_the_change(backend: Backend) {
    let mut w = World::new(backend, 41).await;
    let doomed = enrol(&*w.hub, w.ta, w.s_a1, "a1-doomed");
    let mut ev_a1b = open_events(&w.router, w.a1b.token()).await;
    let mut ev_a2 = open_events(&w.router, w.a2.token()).await;
    let mut ev_b1 = open_events(&w.router, w.b1.token()).await;
    let mut ev_doomed = open_events(&w.router, &doomed.token).await;

    // A store-A1 sale: A1's listeners hear it, A2 and tenant B do not.
    w.sell_and_push("a1", "ESPRESSO").await;
    let p1 = expect_change("a1b after a1's sale", &mut ev_a1b).await;
    expect_change("a1-doomed after a1's sale", &mut ev_doomed).await;
    expect_silence("a2 after a1's sale", &mut ev_a2).await;
    expect_silence("b1 after a1's sale", &mut ev_b1).await;

    // A revoked device's stream ends at its next event, without it.
    let r =
        post_json(&w.router, &format!("/v1/devices/{}/revoke", doomed.device_id), Some(&w.admin_a), &json!({})).await;
    r.ok();
    w.sell_and_push("a1", "LATTE").await;
    let p2 = expect_change("a1b after a1's second sale", &mut ev_a1b).await;
    assert!(p2 > p1, "event positions grow");
    match ev_doomed.next(Duration::from_secs(3)).await {
        SseNext::End => {}
        other => panic!("a revoked device's stream goes on: {other:?}"),
    }
    expect_silence("a2 after a1's second sale", &mut ev_a2).await;

    // A tenant-wide change (catalogue): every device of tenant A hears it,
    // tenant B does not. This also shows a2's stream is alive.
    w.a1.node
        .add_product(
            now(),
            "NEW-A",
            &tillsync_store::ProductFields { name: Some("New A".into()), price_minor: Some(100), ..Default::default() },
        )
        .unwrap();
    push_clean(&w.router.clone(), &mut w.a1).await;
    expect_change("a2 after a catalogue change", &mut ev_a2).await;
    expect_change("a1b after a catalogue change", &mut ev_a1b).await;
    expect_silence("b1 after tenant A's catalogue change", &mut ev_b1).await;

    // Tenant B's sale: b1 hears it, tenant A does not.
    w.sell_and_push("b1", "MUG").await;
    expect_change("b1 after its own store's sale", &mut ev_b1).await;
    expect_silence("a1b after b1's sale", &mut ev_a1b).await;
    expect_silence("a2 after b1's sale", &mut ev_a2).await;

    // A store-A2 sale: a2 hears it, A1 does not.
    w.sell_and_push("a2", "CROISSANT").await;
    expect_change("a2 after its store's sale", &mut ev_a2).await;
    expect_silence("a1b after a2's sale", &mut ev_a1b).await;
    expect_silence("b1 after a2's sale", &mut ev_b1).await;
}

// ---------------------------------------------------------------------------
// Errors, limits and encodings
// ---------------------------------------------------------------------------

fn zstd_request(token: &str, compressed: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("/v1/push")
        .header(header::AUTHORIZATION, bearer(token))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "zstd")
        .body(Body::from(compressed))
        .unwrap()
}

/// Bytes that do not compress (a simple xorshift stream).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn zstd_pushes_are_accepted(backend: Backend) {
    let mut w = World::new(backend, 53).await;
    let sale = sell(&mut w.a2.node, "BROWNIE");
    let req = pending_request(&w.a2.node);
    let compressed = zstd::bulk::compress(&serde_json::to_vec(&req).unwrap(), 3).unwrap();
    let r = call(&w.router, zstd_request(w.a2.token(), compressed)).await;
    r.ok();
    let resp: PushResponse = r.typed();
    let ack = &resp.lanes[&Lane::Sales];
    assert!(ack.error.is_none() && ack.quarantined.is_empty(), "{ack:?}");
    assert!(ack.acked_through >= req.changes[0].seq, "{ack:?}");
    let snap = snapshot_of(&w.router, w.a2.token()).await;
    assert!(snap.insert_ids().contains(&sale), "the zstd-pushed sale is on the hub");
    assert!(!pull_all(&w.router, w.a1.token()).await.has(sale), "and only in its store");

    // Not zstd at all, though labelled so.
    let r = call(&w.router, zstd_request(w.a2.token(), b"{\"not\": \"zstd\"}".to_vec())).await;
    r.expect(400, "bad_encoding");
    // Decodes beyond the decoded limit (a zstd bomb: a few kilobytes that
    // inflate past 64 MiB) is too large, refused while decoding.
    let bomb = zstd::bulk::compress(&vec![b' '; tillsync_hub::app::BODY_DECODED_LEN_MAX + 1024], 19).unwrap();
    assert!(bomb.len() < 64 * 1024, "the bomb is small on the wire: {} bytes", bomb.len());
    let r = call(&w.router, zstd_request(w.a2.token(), bomb)).await;
    r.expect(413, "too_large");
    // Exactly at the limit still decodes (and is then judged as JSON).
    let full = zstd::bulk::compress(&vec![b' '; tillsync_hub::app::BODY_DECODED_LEN_MAX], 19).unwrap();
    let r = call(&w.router, zstd_request(w.a2.token(), full)).await;
    r.expect(400, "bad_json");
    // Compressed size over the wire limit.
    let r = call(&w.router, zstd_request(w.a2.token(), noise(tillsync_hub::app::BODY_LEN_MAX + 1024))).await;
    r.expect(413, "too_large");
}

async fn bad_bodies_are_json_errors(backend: Backend) {
    let w = World::new(backend, 67).await;
    let token = w.a1.token();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not json".to_vec()),
        ("truncated", b"{\"device_time_ms\": 1, \"changes\": [".to_vec()),
        ("wrong shape", b"{\"changes\": 3}".to_vec()),
        ("empty", vec![]),
        ("bad op", br#"{"device_time_ms":1,"changes":[{"lane":"sales","seq":1,"digest":"x","hlc":1,"ops":[{"op":"drop_table"}]}]}"#.to_vec()),
        ("bad lane", br#"{"device_time_ms":1,"changes":[{"lane":"vip","seq":1,"digest":"x","hlc":1,"ops":[]}]}"#.to_vec()),
    ];
    for (label, body) in cases {
        let mut r = call(&w.router, request(&Method::POST, "/v1/push", Some(&bearer(token)), Some(body))).await;
        r.what = format!("push {label}: {}", r.what);
        r.expect(400, "bad_json");
    }
    let r = call(&w.router, request(&Method::POST, "/v1/enrol", None, Some(b"{{{{".to_vec()))).await;
    r.expect(400, "bad_json");
    // Auth comes before the body: garbage without a token is 401.
    let r = call(&w.router, request(&Method::POST, "/v1/push", None, Some(b"garbage".to_vec()))).await;
    r.expect(401, "unauthorized");

    // Ids in paths.
    let r =
        call(&w.router, request(&Method::POST, "/v1/devices/not-a-uuid/revoke", Some(&bearer(&w.admin_a)), None)).await;
    r.expect(400, "bad_id");
    let r = get(&w.router, "/v1/stores/not-a-uuid/digest", &w.admin_a).await;
    r.expect(400, "bad_id");
    // An unknown device or store of one's own tenant is a plain 404.
    let r = call(
        &w.router,
        request(&Method::POST, &format!("/v1/devices/{}/revoke", Uuid::nil()), Some(&bearer(&w.admin_a)), None),
    )
    .await;
    r.expect(404, "not_found");
    let r = get(&w.router, &format!("/v1/stores/{}/digest", Uuid::nil()), &w.admin_a).await;
    r.expect(404, "not_found");
    // Unknown routes.
    for path in ["/", "/v1", "/v2/pull", "/v1/pull/extra", "/v1/tenants", "/v1/devices/x"] {
        let r = get(&w.router, path, token).await;
        r.expect(404, "not_found");
    }
}

/// Product bug (see the report): an uncompressed body over `BODY_LEN_MAX`
/// is read whole (up to `BODY_DECODED_LEN_MAX`) and processed.
async fn a_body_over_the_limit_is_413(backend: Backend) {
    let w = World::new(backend, 71).await;
    // 20 MiB of well-formed JSON (unknown fields are ignored), so only the
    // size can refuse it.
    let pad = "x".repeat(20 << 20);
    let cases = [
        ("push", "/v1/push", Some(bearer(w.a1.token())), json!({"device_time_ms": 1, "changes": [], "pad": pad})),
        ("enrol", "/v1/enrol", None, json!({"code": "ZZZZ-ZZZZ-ZZZZ", "name": "x", "pad": pad})),
    ];
    let mut problems = vec![];
    for (label, path, auth, body) in cases {
        let body = serde_json::to_vec(&body).unwrap();
        let r = call_raw(&w.router, request(&Method::POST, path, auth.as_deref(), Some(body))).await;
        if r.status != StatusCode::PAYLOAD_TOO_LARGE || r.code() != "too_large" {
            problems.push(format!("{label}: a 20 MiB body got {} {}", r.status, r.text()));
        } else if let Some(p) = error_body_problem(&r) {
            problems.push(p);
        }
    }
    assert!(problems.is_empty(), "bodies over the limit are not refused:\n{}", problems.join("\n"));
}

/// Product bug (see the report): some errors produced by axum's own
/// extractors and router are plain text or empty, not the hub's JSON body.
async fn malformed_queries_and_wrong_methods_are_json_errors(backend: Backend) {
    let w = World::new(backend, 79).await;
    let mut problems = vec![];
    for q in ["after=abc", "after=-1", "limit=lots", "after=99999999999999999999999"] {
        let r = call_raw(&w.router, request(&Method::GET, &format!("/v1/pull?{q}"), Some(&bearer(w.a1.token())), None))
            .await;
        if !r.status.is_client_error() {
            problems.push(format!("{}: expected 4xx, got {}", r.what, r.status));
        }
        problems.extend(error_body_problem(&r));
    }
    // Every route under the method it does not take.
    for route in &w.routes {
        let mut method = if route.method == Method::GET { Method::POST } else { Method::GET };
        // A path served under several methods (backups): a method none takes.
        if w.routes.iter().any(|o| o.path == route.path && o.method == method) {
            method = Method::PATCH;
        }
        let path = route
            .path
            .replace("{id}", &Uuid::nil().to_string())
            .replace("{device}", &Uuid::nil().to_string())
            .replace("{name}", "m.tsb");
        let token = if route.access == Access::Admin { &*w.admin_a } else { w.a1.token() };
        let r = call_raw(&w.router, request(&method, &path, Some(&bearer(token)), None)).await;
        if !matches!(r.status.as_u16(), 404 | 405) {
            problems.push(format!("{}: expected 404 or 405, got {}", r.what, r.status));
        }
        problems.extend(error_body_problem(&r));
    }
    assert!(
        problems.is_empty(),
        "{} error responses are not the hub's JSON body:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

async fn enrolment_codes_are_single_use_and_expire(backend: Backend) {
    let w = World::new(backend, 83).await;
    // Unknown code.
    let r = post_json(&w.router, "/v1/enrol", None, &json!({"code": "AAAA-BBBB-CCCC", "name": "t"})).await;
    r.expect(400, "bad_code");
    // Expired code.
    let (code, _) = w.hub.create_enrol_code(w.ta, w.s_a1, now() - 10_000, 1).unwrap();
    let r = post_json(&w.router, "/v1/enrol", None, &json!({"code": code, "name": "t"})).await;
    r.expect(400, "bad_code");
    // A good code works once, from anyone, and lands where the code says.
    let (code, _) = w.hub.create_enrol_code(w.tb, w.s_b1, now(), 600_000).unwrap();
    let r = post_json(&w.router, "/v1/enrol", Some(&w.admin_a), &json!({"code": code, "name": "t"})).await;
    r.ok();
    let e: Enrolment = r.typed();
    assert_eq!((e.tenant_id, e.store_id), (w.tb, w.s_b1), "the code, not the caller's token, decides the tenant");
    for token in [None, Some(w.a1.token()), Some(&*w.admin_b)] {
        let r = post_json(&w.router, "/v1/enrol", token, &json!({"code": code, "name": "t2"})).await;
        r.expect(400, "bad_code");
    }
    // Tenant B's new device sees tenant B only.
    let snap = snapshot_of(&w.router, &e.token).await;
    for (label, id) in w.tenant_markers(w.ta) {
        assert!(!snap.has(id), "a device enrolled with B's code sees {label} of A");
    }
    // A code is not a token, and a token is not a code.
    let r = post_json(&w.router, "/v1/enrol", None, &json!({"code": w.a1.token(), "name": "t"})).await;
    r.expect(400, "bad_code");
    let r = get(&w.router, "/v1/pull?after=0", &code).await;
    r.expect(401, "unauthorized");
    // Cannot mint a code for another tenant's store.
    assert!(w.hub.create_enrol_code(w.ta, w.s_b1, now(), 600_000).is_err());
}

/// A rotation whose answer is lost (the caller never learns the new token)
/// leaves the caller's token working, and the next rotation replaces the
/// lost token, which then never works; the first use of a received token
/// retires the old one. Device and admin tokens alike.
async fn a_lost_rotation_answer_leaves_the_old_token_working(backend: Backend) {
    let w = World::new(backend, 89).await;
    let e = enrol(&*w.hub, w.ta, w.s_a1, "rotating");
    let (_, admin) = w.hub.create_tenant("rotating admin", false, now()).unwrap();
    let cases = [
        ("/v1/token/rotate", "/v1/pull?after=0", e.token.clone(), "token"),
        ("/v1/admin/token/rotate", "/v1/devices", admin.clone(), "admin_token"),
    ];
    for (rotate, probe, old, field) in cases {
        // The first answer is lost on the way.
        let lost = post_json(&w.router, rotate, Some(&old), &json!({})).await;
        lost.ok();
        let lost = lost.json()[field].as_str().unwrap().to_string();
        get(&w.router, probe, &old).await.ok();
        // The caller rotates again with the token it still has.
        let r = post_json(&w.router, rotate, Some(&old), &json!({})).await;
        r.ok();
        let new = r.json()[field].as_str().unwrap().to_string();
        assert!(new != lost && new != old, "{rotate}");
        get(&w.router, probe, &lost).await.expect(401, "unauthorized");
        get(&w.router, probe, &old).await.ok();
        // The new token's first use retires the old one, and the lost one
        // never comes back.
        get(&w.router, probe, &new).await.ok();
        get(&w.router, probe, &old).await.expect(401, "unauthorized");
        get(&w.router, probe, &lost).await.expect(401, "unauthorized");
        get(&w.router, probe, &new).await.ok();
    }
    assert!(matches!(w.hub.authenticate(&admin), Err(HubError::Unauthorized)));
    // A revoked device's pending token is refused like its current one.
    let e2 = enrol(&*w.hub, w.ta, w.s_a1, "rotating, then revoked");
    let r = post_json(&w.router, "/v1/token/rotate", Some(&e2.token), &json!({})).await;
    r.ok();
    let pending = r.json()["token"].as_str().unwrap().to_string();
    w.hub.revoke(w.ta, e2.device_id).unwrap();
    get(&w.router, "/v1/pull?after=0", &pending).await.expect(401, "revoked");
    get(&w.router, "/v1/pull?after=0", &e2.token).await.expect(401, "revoked");
}

/// The content of a device's backup object `m.tsb` in the matrix: its own
/// id, so whose object came back is plain.
fn backup_bytes(e: &Enrolment) -> Vec<u8> {
    format!("backup of {}", e.device_id).into_bytes().repeat(50)
}

// ---------------------------------------------------------------------------
// The matrix: every test above on every backend
// ---------------------------------------------------------------------------

/// Runs each named test on SQLite (`sqlite::NAME`) and on PostgreSQL
/// (`pg::NAME`, a fresh database each; fails if the server is unreachable).
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod pg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Pg).await
                }
            )*
        }
    };
}

/// Everything the hub keeps, as text: the SQLite hub's files (databases
/// and WAL files, raw bytes) or every row of every table of the PostgreSQL
/// hub's database.
fn hub_stored_text(backing: &Backing) -> String {
    fn files(dir: &std::path::Path, out: &mut String) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = String::new();
    match backing {
        Backing::Dir(d) => files(d.path(), &mut out),
        // The blocking client runs its own runtime: off the test's thread.
        Backing::Db(db) => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
                    let tables: Vec<String> = c
                        .query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", &[])
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    for t in tables {
                        let q = format!("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM \"{t}\" t");
                        out.push_str(&c.query_one(&q, &[]).unwrap().get::<_, String>(0));
                    }
                })
                .join()
                .unwrap()
        }),
    }
    out
}

/// A till that sends a card number in free text (an old or hostile till:
/// a current one refuses it before writing) gets the change acknowledged
/// into quarantine, and the hub keeps it only masked.
async fn a_card_number_from_a_till_is_quarantined_and_kept_masked(backend: Backend) {
    let w = World::new(backend, 41).await;
    let e = enrol(&*w.hub, w.ta, w.s_a1, "old till");
    let mut node = Store::in_memory(identity(&e, "old till"), Schema::standard(), IdGen::from_u64(4_141)).unwrap();
    let id = Uuid::from_u128(0xC0FF_EE00_0000_0000_0000_0000_0000_0041);
    node.write(now(), |l| l.create(tables::CUSTOMERS, id, &[("name", json!("Pat")), ("note", json!("PLACEHOLDER"))]))
        .unwrap();
    let card = "4111 1111 1111 1111";
    let forged =
        serde_json::to_string(&pending_request(&node)).unwrap().replace("PLACEHOLDER", &format!("paid {card}"));
    let body: serde_json::Value = serde_json::from_str(&forged).unwrap();
    let r = post_json(&w.router, "/v1/push", Some(&e.token), &body).await;
    r.ok();
    let resp: PushResponse = r.typed();
    let ack = &resp.lanes[&Lane::Catalog];
    assert_eq!(ack.quarantined.len(), 1, "{ack:?}");
    assert!(ack.quarantined[0].reason.contains("card number"), "{ack:?}");
    assert!(!ack.quarantined[0].reason.contains("1111 1111"), "the reason echoes the number: {ack:?}");
    let stored = hub_stored_text(&w._backing);
    assert!(!stored.contains(card), "the hub stored the card number");
    assert!(stored.contains("**** **** **** 1111"), "the quarantine keeps the change, masked");
    // (The row id, not "1111": times and digests may hold those digits.)
    assert!(!snapshot_of(&w.router, w.a1.token()).await.text.contains(&id.to_string()), "the change was applied");
}

on_every_backend!(
    a_card_number_from_a_till_is_quarantined_and_kept_masked,
    every_route_times_every_caller,
    pull_and_snapshot_hold_only_the_callers_scope,
    snapshot_pages_cover_the_scope_once,
    forged_rows_are_quarantined_and_never_seen,
    events_reach_only_the_store_and_tenant_of_the_change,
    zstd_pushes_are_accepted,
    bad_bodies_are_json_errors,
    a_body_over_the_limit_is_413,
    malformed_queries_and_wrong_methods_are_json_errors,
    enrolment_codes_are_single_use_and_expire,
    a_lost_rotation_answer_leaves_the_old_token_working,
    a_flooding_caller_is_rate_limited_alone,
    decoding_errors_name_no_server_types,
);

/// Rate limits are per caller: a device that floods gets 429 with
/// `Retry-After` and the `rate_limited` code; other devices of its store and
/// tenant, other tenants and admins keep being served.
async fn a_flooding_caller_is_rate_limited_alone(backend: Backend) {
    let w = World::new(backend, 89).await;
    let options = tillsync_hub::RateOptions { rate_per_s: 1, burst_len: 5, ..tillsync_hub::RateOptions::default() };
    let router = tillsync_hub::app(AppState::new(w.hub.clone()).with_rates(options));
    let mut limited = None;
    for i in 0..20 {
        let r = call_raw(&router, request(&Method::GET, "/v1/pull?after=0&limit=1", Some(&bearer(w.a1.token())), None))
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((i, r));
            break;
        }
        r.ok();
    }
    let (i, r) = limited.expect("20 requests at once from one device are never limited");
    assert!(i >= 5, "limited after {i} requests, before the burst of 5 was spent");
    r.expect(429, "rate_limited");
    check_error_body(&r);
    let retry: u64 = r.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry} s at 1 request per second");
    // Everyone else is served: the same store, another store, another tenant, the admins.
    get(&router, "/v1/pull?after=0&limit=1", w.a1b.token()).await.ok();
    get(&router, "/v1/pull?after=0&limit=1", w.a2.token()).await.ok();
    get(&router, "/v1/pull?after=0&limit=1", w.b1.token()).await.ok();
    get(&router, "/v1/devices", &w.admin_a).await.ok();
    // Pushes of the flooding device are refused whole (nothing half-applied)
    // until its bucket refills.
    let r =
        call_raw(&router, request(&Method::POST, "/v1/push", Some(&bearer(w.a1.token())), Some(b"{}".to_vec()))).await;
    r.expect(429, "rate_limited");
    tokio::time::sleep(Duration::from_millis(retry * 1_000 + 100)).await;
    get(&router, "/v1/pull?after=0&limit=1", w.a1.token()).await.ok();
}

/// A body of the wrong shape is answered with what is wrong and where, but
/// not with the server's type names.
async fn decoding_errors_name_no_server_types(backend: Backend) {
    let w = World::new(backend, 97).await;
    let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        ("/v1/push", Some(bearer(w.a1.token())), b"[1, 2]".to_vec()),
        ("/v1/push", Some(bearer(w.a1.token())), b"\"text\"".to_vec()),
        ("/v1/push", Some(bearer(w.a1.token())), b"{\"device_time_ms\": 1, \"changes\": [{\"lane\": 5}]}".to_vec()),
        ("/v1/enrol", None, b"17".to_vec()),
    ];
    for (path, auth, body) in cases {
        let r = call(&w.router, request(&Method::POST, path, auth.as_deref(), Some(body))).await;
        r.expect(400, "bad_json");
        assert!(
            r.json()["message"].as_str().unwrap().contains("line 1"),
            "{}: where it went wrong: {}",
            r.what,
            r.text()
        );
    }
}
