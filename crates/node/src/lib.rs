//! The till's sync client: an HTTP client for the hub (TLS verified, zstd),
//! one sync round (push every lane, then pull every page), enrolment with
//! bootstrap, and the background driver of `till node run`. The protocol's
//! decisions are the core's; this crate only moves bytes and timers.

pub mod api;
pub mod attach;
pub mod backups;
pub mod client;
pub mod config;
pub mod metrics;
pub mod net;
pub mod run;
pub mod running;
pub mod status;
pub mod sync;

pub use client::{ClientOptions, HubClient};
pub use sync::{SyncError, SyncOptions, SyncReport, enrol_and_bootstrap, sync_once, sync_with};
