//! The node's local HTTP API (for the POS UI): `GET /api/status`, a live
//! status stream on `GET /api/status/stream` (SSE, sent when it changes),
//! `POST /api/sync` for "Sync now" and `POST /api/sales` (a sale as JSON,
//! for scanners, kiosks and load generators). Bound to loopback by default.

use crate::config::Config;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tillsync_store::Store;
use tokio::sync::mpsc;

/// State of the local API: its own read connection to the till.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Mutex<Store>>,
    pub config: Arc<Config>,
    pub sync_now: mpsc::Sender<()>,
    pub dir: PathBuf,
}

/// Where the local API (and later the UI) listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8441";

/// How often the status stream looks for changes.
pub const STATUS_POLL_MS: u64 = 250;

/// The local API router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/status/stream", get(stream))
        .route("/api/sync", post(sync_now))
        .route("/api/sales", post(sell))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

fn current(st: &ApiState) -> Result<serde_json::Value, String> {
    let store = st.store.lock().map_err(|_| "store lock poisoned".to_string())?;
    crate::status::full(&store, &st.config).map_err(|e| e.to_string())
}

async fn status(State(st): State<ApiState>) -> Response {
    match tokio::task::spawn_blocking(move || current(&st)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"code": "unavailable", "message": "status unavailable"})),
        )
            .into_response(),
    }
}

async fn stream(State(st): State<ApiState>) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let s = async_stream(st);
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn async_stream(st: ApiState) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = mpsc::channel::<String>(8);
    tokio::spawn(async move {
        let mut last = String::new();
        let mut tick = tokio::time::interval(Duration::from_millis(STATUS_POLL_MS));
        loop {
            tick.tick().await;
            let st2 = st.clone();
            let Ok(Ok(v)) = tokio::task::spawn_blocking(move || current(&st2)).await else { continue };
            let text = v.to_string();
            if text != last {
                last = text.clone();
                if tx.send(text).await.is_err() {
                    break;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).map_ok_event()
}

trait MapEvent {
    fn map_ok_event(self) -> impl futures_util::Stream<Item = Result<Event, Infallible>>;
}

impl<S: futures_util::Stream<Item = String>> MapEvent for S {
    fn map_ok_event(self) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
        use futures_util::StreamExt;
        self.map(|t| Ok(Event::default().event("status").data(t)))
    }
}

async fn metrics(State(st): State<ApiState>) -> Response {
    let text = tokio::task::spawn_blocking(move || {
        st.store.lock().map(|s| crate::metrics::NODE.render(&s)).unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn sync_now(State(st): State<ApiState>) -> Response {
    match st.sync_now.try_send(()) {
        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {
            (StatusCode::ACCEPTED, Json(serde_json::json!({"status": "sync requested"}))).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"code": "stopped", "message": "the sync engine is stopped"})),
        )
            .into_response(),
    }
}

/// `POST /api/sales`: `{"items": [{"sku": "ESPRESSO", "qty": 1}], "payments":
/// [{"method": "cash"}]}` (payments default to cash for the total).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleBody {
    pub items: Vec<SaleItem>,
    #[serde(default)]
    pub payments: Vec<SalePayment>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleItem {
    pub sku: String,
    #[serde(default = "one")]
    pub qty: i64,
}

/// A payment without card details: a card payment here records no brand
/// and no digits, so no card data can arrive through this route.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalePayment {
    pub method: tillsync_core::domain::Method,
    pub amount_minor: Option<i64>,
}

fn one() -> i64 {
    1
}

fn problem(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(serde_json::json!({"code": code, "message": message}))).into_response()
}

/// Sells through the same store function as `till sale`; the receipt is
/// answered only after the sale's local commit, so an answered receipt is a
/// durable sale.
async fn sell(
    State(st): State<ApiState>,
    body: Result<Json<SaleBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return problem(StatusCode::BAD_REQUEST, "bad_request", "the body is not a sale: see the local API docs");
    };
    let mut payments: Vec<tillsync_core::domain::PaymentInput> = body
        .payments
        .iter()
        .map(|p| tillsync_core::domain::PaymentInput {
            method: p.method,
            amount_minor: p.amount_minor,
            brand: None,
            last4: None,
        })
        .collect();
    if payments.is_empty() {
        payments.push(tillsync_core::domain::PaymentInput {
            method: tillsync_core::domain::Method::Cash,
            amount_minor: None,
            brand: None,
            last4: None,
        });
    }
    let req = tillsync_store::SaleRequest {
        items: body.items.into_iter().map(|i| (i.sku, i.qty)).collect(),
        payments,
        ..Default::default()
    };
    let done = tokio::task::spawn_blocking(move || {
        let mut store = st.store.lock().map_err(|_| tillsync_store::StoreError::Io("store lock poisoned".into()))?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        store.sell(now_ms, &req)
    })
    .await;
    use tillsync_store::StoreError as E;
    match done {
        Ok(Ok(out)) => (
            StatusCode::CREATED,
            Json(serde_json::json!({"sale_id": out.sale_id, "receipt": out.receipt, "total_minor": out.total_minor,
                "currency": out.currency, "change_minor": out.change_minor})),
        )
            .into_response(),
        Ok(Err(e @ (E::UnknownSku(_) | E::Sale(_) | E::Money(_) | E::Invalid(_) | E::ReadOnly))) => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, "refused", &e.to_string())
        }
        Ok(Err(E::Locked)) => problem(StatusCode::SERVICE_UNAVAILABLE, "busy", "the till database is busy; try again"),
        _ => problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the sale was not recorded"),
    }
}
