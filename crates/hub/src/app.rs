//! The hub's HTTP API, version 1. `app(state)` builds the router so handlers
//! can be tested with `oneshot` and served on real sockets alike.

use crate::HubError;
use crate::backups::BackupFiles;
use crate::limits::{RateKey, RateLimiter, RateOptions};
use crate::storage::{Caller, DeviceAuth, HubStorage, Notice};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRef, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderValue, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tillsync_core::wire::{EnrolRequest, Event, PushRequest, SNAPSHOT_PAGE_LEN_MAX, SnapshotKey, WIRE_VERSION};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

/// Largest request body accepted on the wire (compressed), in bytes.
pub const BODY_LEN_MAX: usize = 16 << 20;
/// Largest request body after decompression, in bytes.
pub const BODY_DECODED_LEN_MAX: usize = 64 << 20;
/// Responses above this size are compressed when the client accepts zstd.
pub const COMPRESS_LEN_MIN: usize = 1_024;
/// Most pushes decoded and stored at once by one hub process. A push is
/// held as its compressed body until its turn: decoded, a 200-change push
/// takes about a megabyte, and a tenant's pushes are stored one after the
/// other anyway (they share a group commit, `crate::group`), so more at once
/// only costs memory (100 devices pushing together took the hub to 150 MB).
pub const PUSH_CONCURRENT_MAX: usize = 8;
/// Longest a push waits for its turn before it is answered `busy` (503;
/// the till retries with backoff).
pub const PUSH_ADMISSION_WAIT_MS: u64 = 10_000;
/// Enrolment codes are valid this long unless told otherwise.
pub const CODE_TTL_MS: u64 = 24 * 3_600_000;
/// The body of `/healthz`: nodes check it, so a captive portal answering
/// 200 with something else is not mistaken for the hub.
pub const HEALTH_BODY: &str = "tillsync-hub ok v1";

/// Live event fan-out, one channel per tenant.
#[derive(Default)]
pub struct Events {
    channels: Mutex<HashMap<Uuid, broadcast::Sender<Notice>>>,
}

impl Events {
    fn sender(&self, tenant: Uuid) -> broadcast::Sender<Notice> {
        self.channels.lock().expect("events").entry(tenant).or_insert_with(|| broadcast::channel(1_024).0).clone()
    }

    /// Tells listeners of a tenant that entries exist.
    pub fn publish(&self, notices: &[Notice]) {
        for n in notices {
            let _ = self.sender(n.tenant_id).send(*n);
        }
    }
}

/// Hub-wide counters, exposed in the Prometheus text format on a separate
/// listener (`till hub serve --metrics ADDR`), never on the API port.
#[derive(Default)]
pub struct Metrics {
    pub pushes: std::sync::atomic::AtomicU64,
    pub changes_pushed: std::sync::atomic::AtomicU64,
    pub push_ms_sum: std::sync::atomic::AtomicU64,
    pub pulls: std::sync::atomic::AtomicU64,
    pub entries_pulled: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    pub rate_limited: std::sync::atomic::AtomicU64,
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let rows = [
            ("tillsync_hub_pushes_total", "Push requests served.", self.pushes.load(Relaxed)),
            ("tillsync_hub_changes_pushed_total", "Changes received in pushes.", self.changes_pushed.load(Relaxed)),
            ("tillsync_hub_push_ms_sum", "Time spent serving pushes.", self.push_ms_sum.load(Relaxed)),
            ("tillsync_hub_pulls_total", "Pull requests served.", self.pulls.load(Relaxed)),
            ("tillsync_hub_entries_pulled_total", "Log entries sent in pulls.", self.entries_pulled.load(Relaxed)),
            ("tillsync_hub_errors_total", "Requests answered with an error.", self.errors.load(Relaxed)),
            ("tillsync_hub_rate_limited_total", "Requests answered 429 rate_limited.", self.rate_limited.load(Relaxed)),
        ];
        rows.iter().map(|(n, h, v)| format!("# HELP {n} {h}\n# TYPE {n} counter\n{n} {v}\n")).collect()
    }
}

/// Shared state of the HTTP layer.
#[derive(Clone)]
pub struct AppState {
    pub storage: Arc<dyn HubStorage>,
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    /// Where tills' backups are kept; `None`: the hub stores no backups.
    pub backups: Option<Arc<BackupFiles>>,
    /// Per-caller request rates.
    pub limiter: Arc<RateLimiter>,
    /// Turns for pushes ([`PUSH_CONCURRENT_MAX`]).
    pub push_slots: Arc<tokio::sync::Semaphore>,
    /// Longest a push waits for a turn ([`PUSH_ADMISSION_WAIT_MS`]).
    pub push_wait_ms: u64,
}

impl AppState {
    /// State over a storage backend.
    pub fn new(storage: Arc<dyn HubStorage>) -> Self {
        let events = Arc::new(Events::default());
        // Pushes through other hub processes reach this process's event
        // streams too (a no-op for a single-process backend).
        let sink = events.clone();
        storage.watch_external(Arc::new(move |n| sink.publish(&[n])));
        AppState {
            storage,
            events,
            metrics: Arc::new(Metrics::default()),
            backups: None,
            limiter: Arc::new(RateLimiter::new(RateOptions::default())),
            push_slots: Arc::new(tokio::sync::Semaphore::new(PUSH_CONCURRENT_MAX)),
            push_wait_ms: PUSH_ADMISSION_WAIT_MS,
        }
    }

    /// Lets `concurrent` pushes be decoded and stored at once, the others
    /// waiting up to `wait_ms` for a turn, instead of the defaults.
    pub fn with_push_limit(mut self, concurrent: usize, wait_ms: u64) -> Self {
        self.push_slots = Arc::new(tokio::sync::Semaphore::new(concurrent));
        self.push_wait_ms = wait_ms;
        self
    }

    /// Limits request rates with these options instead of the defaults.
    pub fn with_rates(mut self, options: RateOptions) -> Self {
        self.limiter = Arc::new(RateLimiter::new(options));
        self
    }

    /// Takes one request from `key`'s bucket; over the rate: 429 with the wait.
    fn limit(&self, key: RateKey) -> Result<(), HubError> {
        self.limiter.check(key).map_err(|retry_after_s| {
            self.metrics.rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            HubError::RateLimited { retry_after_s }
        })
    }

    /// Keeps tills' backups in this folder.
    pub fn with_backups(mut self, files: BackupFiles) -> Self {
        self.backups = Some(Arc::new(files));
        self
    }
}

/// The metrics router, for a separate listener.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(st): State<AppState>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render())
            }),
        )
        .with_state(state)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, HubError> + Send + 'static) -> Result<T, HubError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| HubError::Internal(e.to_string()))?
}

/// The client's address, when the server recorded it (`ConnectInfo`).
fn client_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

/// Resolves the bearer token. A missing or unknown token counts against the
/// client address's rate, so guessing tokens is as slow as any flood.
async fn caller(parts: &Parts, st: &AppState) -> Result<Caller, HubError> {
    let token = bearer(parts);
    let storage = st.storage.clone();
    let r = match token {
        Some(token) => blocking(move || storage.authenticate(&token)).await,
        None => Err(HubError::Unauthorized),
    };
    if let (Err(HubError::Unauthorized), Some(ip)) = (&r, client_ip(parts)) {
        st.limit(RateKey::Ip(ip))?;
    }
    r
}

fn bearer(parts: &Parts) -> Option<String> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

/// An authenticated device (tenant and store come from its token).
pub struct Device(pub DeviceAuth);

/// An authenticated tenant admin.
pub struct Admin(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for Device
where
    AppState: FromRef<S>,
{
    type Rejection = HubError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let st = AppState::from_ref(state);
        match caller(parts, &st).await? {
            Caller::Device(d) => {
                st.limit(RateKey::Device(d.device_id))?;
                Ok(Device(d))
            }
            Caller::Admin { .. } => Err(HubError::bad("device_only", "this needs a device token, not an admin token")),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Admin
where
    AppState: FromRef<S>,
{
    type Rejection = HubError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let st = AppState::from_ref(state);
        match caller(parts, &st).await? {
            Caller::Admin { tenant_id } => {
                st.limit(RateKey::Admin(tenant_id))?;
                Ok(Admin(tenant_id))
            }
            Caller::Device(_) => Err(HubError::Forbidden),
        }
    }
}

/// Query string that maps decoding failures to the hub's error body.
pub struct QueryArgs<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = HubError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(q)| QueryArgs(q)).map_err(|e| {
            HubError::bad("bad_query", format!("the query string is not valid: {}", public_detail(&e.body_text())))
        })
    }
}

/// JSON body that maps decoding failures to the hub's error body.
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = HubError;
    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bytes =
            axum::body::to_bytes(req.into_body(), BODY_DECODED_LEN_MAX).await.map_err(|_| HubError::TooLarge)?;
        decode_json(&bytes).map(JsonBody)
    }
}

/// Decodes a JSON request body (a push batch, an enrolment), as every
/// handler does. Called by the fuzz targets too (`fuzz/`).
pub fn decode_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HubError> {
    serde_json::from_slice(body)
        .map_err(|e| HubError::bad("bad_json", format!("the body is not valid: {}", public_detail(&e.to_string()))))
}

/// A decoding error's message without the server's type names (serde says
/// "expected struct PushRequest"): what is wrong and where stays.
fn public_detail(msg: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut words = msg.split(' ').peekable();
    while let Some(w) = words.next() {
        match w {
            "struct" | "enum" | "map"
                if words.peek().is_some_and(|n| n.starts_with(|c: char| c.is_ascii_uppercase())) =>
            {
                let name = words.next().unwrap_or_default();
                out.push(if w == "enum" { "one of the known values" } else { "an object" });
                // Keep the punctuation that followed the name.
                let tail = name.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':');
                if !tail.is_empty() {
                    out.push(tail);
                }
            }
            "tuple" | "newtype" | "unit" if words.peek() == Some(&"struct") => {}
            _ => out.push(w),
        }
    }
    out.join(" ").replace(" ,", ",")
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health check, enrolment with a code).
    Public,
    /// A device token; tenant and store come from it.
    Device,
    /// A tenant's admin token.
    Admin,
}

/// One route of the API, as registered.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    pub method: axum::http::Method,
    pub path: &'static str,
    pub access: Access,
}

/// Registers routes and remembers them, so tests can enumerate every route
/// (a new endpoint cannot be missed by the isolation matrix).
struct Routes {
    router: Router<AppState>,
    list: Vec<RouteInfo>,
}

impl Routes {
    fn add(
        mut self,
        method: axum::http::Method,
        path: &'static str,
        access: Access,
        mr: axum::routing::MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, mr);
        self.list.push(RouteInfo { method, path, access });
        self
    }
}

/// The router of API version 1 and the list of its routes.
pub fn app_with_routes(state: AppState) -> (Router, Vec<RouteInfo>) {
    use axum::http::Method;
    let r = Routes { router: Router::new(), list: vec![] }
        .add(Method::GET, "/healthz", Access::Public, get(healthz))
        .add(Method::GET, "/v1/openapi.json", Access::Public, get(openapi))
        .add(Method::POST, "/v1/enrol", Access::Public, post(enrol))
        .add(Method::POST, "/v1/push", Access::Device, post(push))
        .add(Method::GET, "/v1/pull", Access::Device, get(pull))
        .add(Method::GET, "/v1/snapshot", Access::Device, get(snapshot))
        .add(Method::GET, "/v1/events", Access::Device, get(events))
        .add(Method::GET, "/v1/digest", Access::Device, get(device_digest))
        .add(Method::POST, "/v1/token/rotate", Access::Device, post(rotate_device_token))
        .add(Method::POST, "/v1/admin/token/rotate", Access::Admin, post(rotate_admin_token))
        .add(Method::GET, "/v1/devices", Access::Admin, get(devices))
        .add(Method::POST, "/v1/devices/{id}/revoke", Access::Admin, post(revoke))
        .add(Method::GET, "/v1/usage", Access::Admin, get(usage))
        .add(Method::GET, "/v1/stores/{id}/digest", Access::Admin, get(store_digest));
    // Backup objects are large, already compressed and encrypted streams:
    // they bypass the JSON body limit and the zstd layer, and are streamed
    // to disk with their own limit (`backups::OBJECT_LEN_MAX`).
    let b = Routes { router: Router::new(), list: r.list }
        .add(Method::PUT, "/v1/backups/{name}", Access::Device, put(backup_put))
        .add(Method::GET, "/v1/backups", Access::Device, get(backup_list))
        .add(Method::GET, "/v1/backups/{name}", Access::Device, get(backup_get))
        .add(Method::DELETE, "/v1/backups/{name}", Access::Device, delete(backup_delete))
        .add(Method::GET, "/v1/admin/backups", Access::Admin, get(admin_backup_list))
        .add(Method::GET, "/v1/admin/backups/{device}/{name}", Access::Admin, get(admin_backup_get));
    let router = r
        .router
        .layer(middleware::from_fn_with_state(state.clone(), zstd_layer))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LEN_MAX))
        .merge(b.router.layer(axum::extract::DefaultBodyLimit::disable()))
        .fallback(|| async { HubError::NotFound("route".into()) })
        .method_not_allowed_fallback(|| async { HubError::MethodNotAllowed })
        .with_state(state);
    (router, b.list)
}

fn backup_files(st: &AppState) -> Result<Arc<BackupFiles>, HubError> {
    st.backups.clone().ok_or_else(|| HubError::NotFound("backup storage on this hub".into()))
}

/// Streams a stored object.
async fn send_file(path: std::path::PathBuf) -> Result<Response, HubError> {
    use tokio::io::AsyncReadExt;
    // Deleted between the lookup and the open (a concurrent DELETE): gone.
    let file = tokio::fs::File::open(&path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => HubError::NotFound("backup".into()),
        _ => HubError::Internal(format!("backup open: {e}")),
    })?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let chunks = stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut resp = Body::from_stream(chunks).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(resp)
}

async fn backup_put(
    State(st): State<AppState>,
    Device(dev): Device,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, HubError> {
    let files = backup_files(&st)?;
    let o = files.put(dev.tenant_id, dev.device_id, &name, body).await?;
    Ok(Json(o).into_response())
}

async fn backup_list(State(st): State<AppState>, Device(dev): Device) -> Result<Response, HubError> {
    let files = backup_files(&st)?;
    let list = blocking(move || files.list(dev.tenant_id, Some(dev.device_id))).await?;
    Ok(Json(list).into_response())
}

async fn backup_get(
    State(st): State<AppState>,
    Device(dev): Device,
    Path(name): Path<String>,
) -> Result<Response, HubError> {
    let path = backup_files(&st)?.path(dev.tenant_id, dev.device_id, &name)?;
    send_file(path).await
}

async fn backup_delete(
    State(st): State<AppState>,
    Device(dev): Device,
    Path(name): Path<String>,
) -> Result<Response, HubError> {
    let files = backup_files(&st)?;
    blocking(move || files.delete(dev.tenant_id, dev.device_id, &name)).await?;
    Ok(Json(serde_json::json!({"deleted": true})).into_response())
}

#[derive(Deserialize)]
struct AdminBackupQuery {
    #[serde(default)]
    device: Option<Uuid>,
}

async fn admin_backup_list(
    State(st): State<AppState>,
    Admin(tenant): Admin,
    QueryArgs(q): QueryArgs<AdminBackupQuery>,
) -> Result<Response, HubError> {
    let files = backup_files(&st)?;
    let list = blocking(move || files.list(tenant, q.device)).await?;
    Ok(Json(list).into_response())
}

async fn admin_backup_get(
    State(st): State<AppState>,
    Admin(tenant): Admin,
    Path((device, name)): Path<(String, String)>,
) -> Result<Response, HubError> {
    let device = Uuid::parse_str(&device).map_err(|_| HubError::bad("bad_id", "not a device id"))?;
    let path = backup_files(&st)?.path(tenant, device, &name)?;
    send_file(path).await
}

/// The router of API version 1.
pub fn app(state: AppState) -> Router {
    app_with_routes(state).0
}

/// The OpenAPI description of this API. Written by hand and kept true by
/// tests: the isolation matrix checks that it names exactly the router's
/// routes, and CI runs schemathesis against a live hub with it.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn healthz() -> &'static str {
    HEALTH_BODY
}

/// The client's address for the rate limit of routes without a token.
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = HubError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

async fn enrol(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(req): JsonBody<EnrolRequest>,
) -> Result<Response, HubError> {
    if let Some(ip) = ip {
        st.limit(RateKey::Ip(ip))?;
    }
    let e = blocking(move || st.storage.enrol(&req.code, &req.name, now_ms())).await?;
    Ok(Json(e).into_response())
}

async fn push(
    State(st): State<AppState>,
    Device(dev): Device,
    JsonBody(req): JsonBody<PushRequest>,
) -> Result<Response, HubError> {
    let storage = st.storage.clone();
    let events = st.events.clone();
    let started = std::time::Instant::now();
    let n = req.changes.len() as u64;
    // The live event goes out as soon as the tenant's commit returns, from
    // the blocking thread, before this task is woken to answer: the other
    // tills start pulling while the pusher gets its acknowledgement.
    let r = blocking(move || {
        let r = storage.push(&dev, &req, now_ms());
        if let Ok((_, notices)) = &r {
            events.publish(notices);
        }
        r
    })
    .await;
    use std::sync::atomic::Ordering::Relaxed;
    st.metrics.pushes.fetch_add(1, Relaxed);
    st.metrics.changes_pushed.fetch_add(n, Relaxed);
    st.metrics.push_ms_sum.fetch_add(started.elapsed().as_millis() as u64, Relaxed);
    if r.is_err() {
        st.metrics.errors.fetch_add(1, Relaxed);
    }
    let (resp, _notices) = r?;
    Ok(Json(resp).into_response())
}

#[derive(Deserialize)]
struct PullQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: usize,
    /// The hub's log chain at `after`, as the till was given it.
    #[serde(default)]
    tag: Option<String>,
}

/// Longest pull tag accepted (a SHA-256 in hex is 64).
const TAG_LEN_MAX: usize = 128;

fn default_limit() -> usize {
    500
}

async fn pull(
    State(st): State<AppState>,
    Device(dev): Device,
    QueryArgs(q): QueryArgs<PullQuery>,
) -> Result<Response, HubError> {
    let storage = st.storage.clone();
    if q.tag.as_ref().is_some_and(|t| t.len() > TAG_LEN_MAX) {
        return Err(HubError::bad("bad_query", format!("tag longer than {TAG_LEN_MAX} characters")));
    }
    let r = blocking(move || storage.pull_tagged(&dev, q.after, q.tag.as_deref(), q.limit, now_ms())).await;
    use std::sync::atomic::Ordering::Relaxed;
    st.metrics.pulls.fetch_add(1, Relaxed);
    match &r {
        Ok(p) => {
            st.metrics.entries_pulled.fetch_add(p.entries.len() as u64, Relaxed);
        }
        Err(_) => {
            st.metrics.errors.fetch_add(1, Relaxed);
        }
    }
    let r = r?;
    Ok(Json(r).into_response())
}

#[derive(Deserialize)]
struct SnapshotQuery {
    /// Operations per page; without it (and without `after`) the whole
    /// snapshot is answered, as tills from before paging ask.
    #[serde(default)]
    limit: Option<usize>,
    /// The `next` of the previous page.
    #[serde(default)]
    after: Option<SnapshotKey>,
}

async fn snapshot(
    State(st): State<AppState>,
    Device(dev): Device,
    QueryArgs(q): QueryArgs<SnapshotQuery>,
) -> Result<Response, HubError> {
    if q.limit.is_none() && q.after.is_none() {
        let r = blocking(move || st.storage.snapshot(&dev)).await?;
        return Ok(Json(r).into_response());
    }
    let limit = q.limit.unwrap_or(SNAPSHOT_PAGE_LEN_MAX);
    if !(1..=SNAPSHOT_PAGE_LEN_MAX).contains(&limit) {
        return Err(HubError::bad("bad_query", format!("limit must be 1 to {SNAPSHOT_PAGE_LEN_MAX}")));
    }
    let after = match &q.after {
        Some(k) => Some(k.to_state_key().map_err(|e| HubError::bad("bad_query", e.to_string()))?),
        None => None,
    };
    let r = blocking(move || st.storage.snapshot_page(&dev, after.as_ref(), limit)).await?;
    Ok(Json(r).into_response())
}

async fn events(
    State(st): State<AppState>,
    parts: Parts,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, HubError> {
    let mut parts = parts;
    let Device(dev) = Device::from_request_parts(&mut parts, &st).await?;
    let token = bearer(&parts).unwrap_or_default();
    let rx = st.events.sender(dev.tenant_id).subscribe();
    let storage = st.storage.clone();
    let hello = stream::once(async { Ok(SseEvent::default().event("hello").data("{}")) });
    let store = dev.store_id;
    let live = BroadcastStream::new(rx)
        .filter_map(move |n| async move {
            match n {
                Ok(n) if n.store_id.is_none() || n.store_id == Some(store) => Some(Event { pos: n.pos }),
                Ok(_) => None,
                // A slow listener missed some: tell it to pull anyway.
                Err(_) => Some(Event { pos: 0 }),
            }
        })
        // A revoked device's stream ends at its next event.
        .take_while(move |_| {
            let storage = storage.clone();
            let token = token.clone();
            async move { matches!(storage.authenticate(&token), Ok(Caller::Device(_))) }
        })
        .map(|e| Ok(SseEvent::default().event("change").data(serde_json::to_string(&e).unwrap_or_default())));
    Ok(Sse::new(hello.chain(live)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn device_digest(State(st): State<AppState>, Device(dev): Device) -> Result<Response, HubError> {
    let d = blocking(move || st.storage.store_digest(dev.tenant_id, dev.store_id)).await?;
    Ok(Json(serde_json::json!({"store_id": dev.store_id, "state_digest": d})).into_response())
}

/// A new token for the calling device; its current token stops working at
/// the new one's first use (see `HubStorage::rotate_device_token`).
async fn rotate_device_token(State(st): State<AppState>, Device(dev): Device) -> Result<Response, HubError> {
    let device = dev.device_id;
    let token = blocking(move || st.storage.rotate_device_token(&dev, now_ms())).await?;
    tracing::info!(device = %device, "device token rotated");
    Ok(Json(serde_json::json!({"device_id": device, "token": token})).into_response())
}

/// A new admin token for the tenant; the current one stops working at the
/// new one's first use.
async fn rotate_admin_token(State(st): State<AppState>, Admin(tenant): Admin) -> Result<Response, HubError> {
    let token = blocking(move || st.storage.rotate_admin_token(tenant, now_ms())).await?;
    tracing::info!(tenant = %tenant, "admin token rotated");
    Ok(Json(serde_json::json!({"tenant_id": tenant, "admin_token": token})).into_response())
}

async fn devices(State(st): State<AppState>, Admin(tenant): Admin) -> Result<Response, HubError> {
    let r = blocking(move || st.storage.devices(tenant)).await?;
    Ok(Json(r).into_response())
}

async fn revoke(
    State(st): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<Response, HubError> {
    let device = Uuid::parse_str(&id).map_err(|_| HubError::bad("bad_id", "not a device id"))?;
    blocking(move || st.storage.revoke(tenant, device)).await?;
    Ok(Json(serde_json::json!({"device_id": device, "status": "revoked"})).into_response())
}

async fn usage(State(st): State<AppState>, Admin(tenant): Admin) -> Result<Response, HubError> {
    let files = st.backups.clone();
    let r = blocking(move || {
        let mut u = st.storage.usage(tenant)?;
        if let Some(f) = files {
            u.backup_bytes = f.used_bytes(tenant)?;
            u.quota_backup_bytes = f.quota_bytes(tenant)?;
        }
        Ok(u)
    })
    .await?;
    Ok(Json(r).into_response())
}

async fn store_digest(
    State(st): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<Response, HubError> {
    let store = Uuid::parse_str(&id).map_err(|_| HubError::bad("bad_id", "not a store id"))?;
    let d = blocking(move || st.storage.store_digest(tenant, store)).await?;
    Ok(Json(serde_json::json!({"store_id": store, "state_digest": d})).into_response())
}

/// Decodes a zstd body as a stream, never holding more than `len_max`
/// decoded bytes: a small body that inflates past it (a zstd bomb) is
/// refused with 413 as soon as it crosses the limit, before memory is spent.
pub fn decode_zstd(raw: &[u8], len_max: usize) -> Result<Vec<u8>, HubError> {
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::new(raw)
        .map_err(|_| HubError::bad("bad_encoding", "the body is not valid zstd"))?;
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(len_max));
    // One byte past the limit tells "exactly the limit" from "more".
    decoder
        .take(len_max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| HubError::bad("bad_encoding", "the body is not valid zstd"))?;
    if out.len() > len_max {
        return Err(HubError::TooLarge);
    }
    Ok(out)
}

/// zstd on the wire: request bodies with `Content-Encoding: zstd` are
/// decoded (bounded), and JSON responses are compressed for clients that
/// send `Accept-Encoding: zstd`. Event streams are left alone. Every
/// response names the wire version.
async fn zstd_layer(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let is_push = parts.method == axum::http::Method::POST && parts.uri.path() == "/v1/push";
    let accepts =
        parts.headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("zstd"));
    let encoded = parts.headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) == Some("zstd");
    let body = if encoded {
        let raw = match axum::body::to_bytes(body, BODY_LEN_MAX).await {
            Ok(b) => b,
            Err(_) => return HubError::TooLarge.into_response(),
        };
        match decode_zstd(&raw, BODY_DECODED_LEN_MAX) {
            Ok(d) => {
                parts.headers.remove(header::CONTENT_ENCODING);
                parts.headers.remove(header::CONTENT_LENGTH);
                Body::from(d)
            }
            Err(e) => return e.into_response(),
        }
    } else {
        // Plain bodies get the wire limit too, before any handler reads them.
        match axum::body::to_bytes(body, BODY_LEN_MAX).await {
            Ok(b) => Body::from(b),
            Err(_) => return HubError::TooLarge.into_response(),
        }
    };
    // A push waits for its turn here, its body read but not decoded. The
    // turn is taken after the body has arrived, so a slow sender holds none.
    let _turn = if is_push {
        let wait = std::time::Duration::from_millis(st.push_wait_ms);
        match tokio::time::timeout(wait, st.push_slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => return HubError::Busy.into_response(),
        }
    } else {
        None
    };
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    resp.headers_mut().insert("tillsync-wire", HeaderValue::from(WIRE_VERSION));
    let is_json =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !accepts || !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => return HubError::Internal("response body".into()).into_response(),
    };
    if bytes.len() < COMPRESS_LEN_MIN {
        return Response::from_parts(parts, Body::from(bytes));
    }
    match zstd::bulk::compress(&bytes, 3) {
        Ok(c) => {
            parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(c))
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_zstd, public_detail};
    use crate::HubError;

    #[test]
    fn decoding_errors_lose_type_names_and_keep_the_place() {
        assert_eq!(
            public_detail("invalid type: string \"x\", expected struct PushRequest at line 1 column 3"),
            "invalid type: string \"x\", expected an object at line 1 column 3"
        );
        assert_eq!(
            public_detail("invalid type: integer `5`, expected enum Lane, at line 1 column 9"),
            "invalid type: integer `5`, expected one of the known values, at line 1 column 9"
        );
        assert_eq!(public_detail("missing field `code` at line 1 column 2"), "missing field `code` at line 1 column 2");
        assert_eq!(public_detail("expected tuple struct Hlc"), "expected an object");
    }

    #[test]
    fn a_zstd_body_is_decoded_up_to_the_limit_and_no_further() {
        let body = vec![b'a'; 1_000];
        let z = zstd::bulk::compress(&body, 3).unwrap();
        assert_eq!(decode_zstd(&z, 1_000).unwrap(), body);
        assert!(matches!(decode_zstd(&z, 999), Err(HubError::TooLarge)));
        assert!(matches!(decode_zstd(b"not zstd", 1_000), Err(HubError::BadRequest { code: "bad_encoding", .. })));
    }
}
