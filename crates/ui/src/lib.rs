//! The till's POS web UI, served by `till node run` beside the local API.
//!
//! Pages are rendered on the server with maud and work as plain forms
//! (POST, then a redirect); htmx only makes the cart and "Sync now" quicker
//! and keeps the sync status indicator live over server-sent events. Every
//! asset is embedded in the binary. Staff sign in with their PIN; the
//! session (a random cookie) lives in memory and holds the cart.
//!
//! The UI reads and writes the till's store and reads the node's status; it
//! talks to the hub only on the Devices page, through `HubClient`.

mod assets;
mod error;
mod indicator;
mod layout;
mod pages;
mod security;
mod session;

pub use error::UiError;
pub use indicator::{SyncState, sync_state};
pub use security::{FORM_BODY_LEN_MAX, open_without_signin, secure, security_headers, verify_origin};
pub use session::{
    Auth, CART_LINES_MAX, Cart, CartLine, LARGE_DISCOUNT_BP, SESSION_COOKIE, SESSION_IDLE_MS, SESSIONS_LEN_MAX,
    SIGNIN_FAILURES_MAX, SIGNIN_PAUSE_MS, Sessions,
};

use axum::Router;
use axum::routing::{get, post};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tillsync_node::config::Config;
use tillsync_store::Store;
use tokio::sync::mpsc;

/// Everything the UI's handlers need.
#[derive(Clone)]
pub struct UiState {
    /// The UI's own connection to the till (sales, refunds, pages).
    pub store: Arc<Mutex<Store>>,
    /// A read connection for the live indicator, so that computing the
    /// status never makes a sale wait (the same as `store` when a second
    /// connection cannot be opened, e.g. in memory).
    pub status_store: Arc<Mutex<Store>>,
    /// The till's data folder (for `till.toml` and backups).
    pub dir: PathBuf,
    /// The device settings the node runs with (the status is derived with them).
    pub config: Arc<Config>,
    /// "Sync now": the same channel as `POST /api/sync`.
    pub sync_now: mpsc::Sender<()>,
    /// Signed-in staff and their carts.
    pub sessions: Arc<Sessions>,
    /// Wall-clock milliseconds, passed in by the binary (the one clock reader).
    pub now_ms: fn() -> u64,
    /// The shared feed of the rendered status indicator.
    pub(crate) feed: Arc<indicator::Feed>,
}

impl UiState {
    /// A UI over `store` (a connection of its own), for the till in `dir`.
    pub fn new(store: Store, dir: PathBuf, config: Config, sync_now: mpsc::Sender<()>, now_ms: fn() -> u64) -> Self {
        // The status connection never writes, so its id generator is never drawn from.
        let reader = Store::open(&dir, store.schema().clone(), tillsync_core::IdGen::from_u64(0)).ok();
        let store = Arc::new(Mutex::new(store));
        UiState {
            status_store: reader.map(|r| Arc::new(Mutex::new(r))).unwrap_or_else(|| store.clone()),
            store,
            dir,
            config: Arc::new(config),
            sync_now,
            sessions: Arc::new(Sessions::new(SESSIONS_LEN_MAX, SESSION_IDLE_MS)),
            now_ms,
            feed: Arc::new(indicator::Feed::default()),
        }
    }

    /// Runs `f` on the store on the blocking pool: SQLite and PIN hashing
    /// must not stall the async workers.
    pub(crate) async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, UiError> + Send + 'static,
    ) -> Result<T, UiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = store.lock().map_err(|_| UiError::Internal("the store lock is poisoned".into()))?;
            f(&mut s)
        })
        .await
        .map_err(|e| UiError::Internal(e.to_string()))?
    }
}

/// The UI router: pages, form actions, the indicator stream and assets.
/// Merge it with `tillsync_node::api::router` to serve both on one listener.
pub fn router(state: UiState) -> Router {
    use pages::*;
    Router::new()
        .route("/", get(home))
        .route("/signin", get(signin::page).post(signin::submit))
        .route("/signout", post(signin::signout))
        .route("/sell", get(sell::page))
        .route("/sell/add", post(sell::add))
        .route("/sell/scan", post(sell::scan))
        .route("/sell/line", post(sell::line))
        .route("/sell/cart", post(sell::cart))
        .route("/sell/checkout", get(sell::checkout).post(sell::to_checkout))
        .route("/sell/pay", post(sell::pay))
        .route("/receipt/{receipt}", get(sell::receipt))
        .route("/sales", get(sales::list))
        .route("/sales/{receipt}", get(sales::show))
        .route("/sales/{receipt}/refund", post(sales::refund))
        .route("/sales/{receipt}/void", post(sales::void))
        .route("/stock", get(records::stock))
        .route("/stock/receive", post(records::receive))
        .route("/stock/count", post(records::count))
        .route("/customers", get(records::customers).post(records::add_customer))
        .route("/report", get(records::report))
        .route("/conflicts", get(sync::conflicts))
        .route("/conflicts/{id}/resolve", post(sync::resolve))
        .route("/quarantine", get(sync::quarantine))
        .route("/devices", get(sync::devices).post(sync::devices_token))
        .route("/devices/revoke", post(sync::revoke))
        .route("/devices/forget", post(sync::forget_token))
        .route("/backups", get(admin::backups))
        .route("/backups/create", post(admin::backup_create))
        .route("/backups/verify", post(admin::backup_verify))
        .route("/settings", get(admin::settings))
        .route("/settings/device", post(admin::save_device))
        .route("/settings/tenant", post(admin::save_tenant))
        .route("/settings/policy", post(admin::save_policy))
        .route("/sync-now", post(sync::sync_now))
        .route("/ui/status/stream", get(indicator::stream))
        .route("/assets/{name}", get(assets::serve))
        .layer(axum::extract::DefaultBodyLimit::max(FORM_BODY_LEN_MAX))
        .layer(axum::middleware::from_fn(verify_origin))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}
