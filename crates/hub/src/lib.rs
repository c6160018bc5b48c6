//! The Tillsync hub: tenants own stores, stores own devices. Devices enrol
//! with one-time codes, push changes per lane (idempotent, durable before
//! acknowledged), pull deltas by cursor, bootstrap from snapshots and hear
//! live events. Storage sits behind [`storage::HubStorage`]: SQLite (one
//! process, the default) or PostgreSQL (many stateless processes).

pub mod app;
pub mod backups;
pub mod checkpoint;
pub mod error;
pub mod export;
pub mod group;
pub mod limits;
pub mod pg;
pub mod seen;
pub mod sqlite;
pub mod storage;

pub use app::{Access, AppState, Metrics, RouteInfo, app, app_with_routes, metrics_router};
pub use backups::{BackupFiles, BackupObject};
pub use error::HubError;
pub use export::Exported;
pub use limits::{RateKey, RateLimiter, RateOptions};
pub use pg::{PgHub, PgOptions};
pub use sqlite::{SqliteHub, SqliteTimers};
pub use storage::{Caller, DeviceAuth, HubStorage, Notice};
