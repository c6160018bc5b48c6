//! The node's local HTTP API (for the POS UI): `GET /api/status`, a live
//! status stream on `GET /api/status/stream` (SSE, sent when it changes),
//! and `POST /api/sync` for "Sync now". Bound to loopback by default.

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
