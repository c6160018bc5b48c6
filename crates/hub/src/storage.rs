//! The storage trait every hub backend implements (SQLite, PostgreSQL).
//! Methods are blocking; the HTTP layer calls them off the async threads.
//! Tenant and store always come from the authenticated caller.

use crate::HubError;
use std::sync::Arc;
use tillsync_core::change::StateKey;
use tillsync_core::wire::{
    DeviceInfo, Enrolment, PullResponse, PushRequest, PushResponse, Snapshot, SnapshotPage, Usage,
};
use uuid::Uuid;

/// An authenticated device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceAuth {
    pub device_id: Uuid,
    pub tenant_id: Uuid,
    pub store_id: Uuid,
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Device(DeviceAuth),
    Admin { tenant_id: Uuid },
}

/// New log entries exist: who may hear about them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notice {
    pub tenant_id: Uuid,
    /// `None` for tenant-wide entries (catalogue, settings).
    pub store_id: Option<Uuid>,
    pub pos: u64,
}

/// A hub storage backend.
pub trait HubStorage: Send + Sync + 'static {
    /// Creates a tenant; returns its id and admin token (shown once).
    fn create_tenant(&self, name: &str, sample: bool, now_ms: u64) -> Result<(Uuid, String), HubError>;
    /// Creates a store of a tenant (a sample tenant's store gets opening stock).
    fn create_store(&self, tenant: Uuid, name: &str, now_ms: u64) -> Result<Uuid, HubError>;
    /// A one-time enrolment code for a store; returns it and its expiry.
    fn create_enrol_code(&self, tenant: Uuid, store: Uuid, now_ms: u64, ttl_ms: u64)
    -> Result<(String, u64), HubError>;
    /// Sets a conflict policy (a synced record written by the hub).
    fn set_policy(&self, tenant: Uuid, target: &str, mode: &str, now_ms: u64) -> Result<Vec<Notice>, HubError>;
    /// Sets the quota on catalogue and telemetry changes (0: none).
    fn set_quota(&self, tenant: Uuid, changes: u64) -> Result<(), HubError>;
    /// Usage of a tenant.
    fn usage(&self, tenant: Uuid) -> Result<Usage, HubError>;
    /// Exchanges a code for a device token.
    fn enrol(&self, code: &str, name: &str, now_ms: u64) -> Result<Enrolment, HubError>;
    /// Resolves a bearer token.
    fn authenticate(&self, token: &str) -> Result<Caller, HubError>;
    /// Stores pushed changes durably, lane by lane.
    fn push(&self, dev: &DeviceAuth, req: &PushRequest, now_ms: u64) -> Result<(PushResponse, Vec<Notice>), HubError>;
    /// Log entries after `after` in the device's scope.
    fn pull(&self, dev: &DeviceAuth, after: u64, limit_len: usize, now_ms: u64) -> Result<PullResponse, HubError>;
    /// As `pull`, checking the till's `tag` (the log chain it was given with
    /// its cursor) against the log: a mismatch, or a cursor past the end of
    /// the log, means the hub was restored to an earlier state and is
    /// answered `cursor_expired`. A backend without a log chain ignores the
    /// tag (the default) and answers no `cursor_tag`.
    fn pull_tagged(
        &self,
        dev: &DeviceAuth,
        after: u64,
        tag: Option<&str>,
        limit_len: usize,
        now_ms: u64,
    ) -> Result<PullResponse, HubError> {
        let _ = tag;
        self.pull(dev, after, limit_len, now_ms)
    }
    /// The merged state of the device's scope and the cursor it matches,
    /// whole (tills from before paging); refused as `snapshot_too_large`
    /// past `SNAPSHOT_WHOLE_LEN_MAX` operations.
    fn snapshot(&self, dev: &DeviceAuth) -> Result<Snapshot, HubError>;
    /// One page of the merged state of the device's scope: at most
    /// `limit_len` (clamped to `SNAPSHOT_PAGE_LEN_MAX`) operations after
    /// `after` in the order of [`StateKey`], read by key range without
    /// loading the rest. The first page (`after` none) carries the pull
    /// cursor, taken in the same transaction as that page, and the total.
    fn snapshot_page(
        &self,
        dev: &DeviceAuth,
        after: Option<&StateKey>,
        limit_len: usize,
    ) -> Result<SnapshotPage, HubError>;
    /// Devices of a tenant.
    fn devices(&self, tenant: Uuid) -> Result<Vec<DeviceInfo>, HubError>;
    /// Gives an active device a new token (only its hash is stored). The
    /// old token keeps working until the new one is first used, and that
    /// first use retires it: a rotation whose answer was lost on the way
    /// leaves the till with a working token, and its next rotation replaces
    /// the lost one. The till uses its new token at once (`till devices
    /// rotate`), so the old one dies within the same command.
    fn rotate_device_token(&self, dev: &DeviceAuth, now_ms: u64) -> Result<String, HubError>;
    /// Gives a tenant a new admin token, pending as a device token's is:
    /// the old one works until the new one is first used.
    fn rotate_admin_token(&self, tenant: Uuid, now_ms: u64) -> Result<String, HubError>;
    /// Revokes a device of a tenant at once.
    fn revoke(&self, tenant: Uuid, device: Uuid) -> Result<(), HubError>;
    /// The hub's state digest of one store (tenant records + that store's ledgers).
    fn store_digest(&self, tenant: Uuid, store: Uuid) -> Result<String, HubError>;
    /// Compacts a tenant's log, keeping the newest `keep_len` entries; heads
    /// and tombstones are kept, so a device behind the new horizon bootstraps
    /// again and loses nothing. Returns the horizon.
    fn compact(&self, tenant: Uuid, keep_len: u64) -> Result<u64, HubError>;
    /// Starts handing `sink` the notices of entries committed by other hub
    /// processes sharing this backend (PostgreSQL: LISTEN/NOTIFY), from a
    /// background thread, until the backend is dropped. Notices of this
    /// process's own pushes are returned by `push` as before, never twice.
    /// A backend served by one process (SQLite) has none: the default.
    fn watch_external(&self, _sink: Arc<dyn Fn(Notice) + Send + Sync>) {}
}

/// A quarantined change's operations as kept for an engineer to read,
/// with any card number masked: a till may have sent one (an old or
/// hostile till; current tills refuse it before it is written), and the
/// hub never stores one.
pub(crate) fn quarantined_ops_json(ops: &[tillsync_core::wire::WireOp]) -> Result<String, serde_json::Error> {
    let mut v = serde_json::to_value(ops)?;
    tillsync_core::domain::mask_card_numbers_json(&mut v);
    serde_json::to_string(&v)
}
