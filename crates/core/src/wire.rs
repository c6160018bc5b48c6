//! Wire types of the sync protocol, version 1. They are separate from the
//! domain types so the domain can change without breaking tills in the
//! field: conversions live here, and a new wire version gets new types.

use crate::change::{Change, LedgerRow, Op};
use crate::hlc::Hlc;
use crate::merge::{Write, WriteId};
use crate::schema::Lane;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The wire version this build speaks. Sent as `Tillsync-Wire` header.
pub const WIRE_VERSION: u32 = 1;

/// One operation on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WireOp {
    Write { id: String, table: String, row: Uuid, field: String, value: Value, base: Vec<String> },
    Insert { table: String, id: Uuid, store: Uuid, device: Uuid, hlc: u64, data: Value },
}

/// A wire op that does not decode into a domain op.
#[derive(Debug, thiserror::Error)]
#[error("malformed operation: {0}")]
pub struct BadOp(pub String);

impl From<&Op> for WireOp {
    fn from(op: &Op) -> Self {
        match op {
            Op::Write(w) => WireOp::Write {
                id: w.id.to_string(),
                table: w.table.clone(),
                row: w.row,
                field: w.field.clone(),
                value: w.value.clone(),
                base: w.base.iter().map(WriteId::to_string).collect(),
            },
            Op::Insert(r) => WireOp::Insert {
                table: r.table.clone(),
                id: r.id,
                store: r.store,
                device: r.device,
                hlc: r.hlc.0,
                data: r.data.clone(),
            },
        }
    }
}

impl TryFrom<&WireOp> for Op {
    type Error = BadOp;
    fn try_from(w: &WireOp) -> Result<Self, Self::Error> {
        Ok(match w {
            WireOp::Write { id, table, row, field, value, base } => Op::Write(Write {
                id: id.parse().map_err(|e: crate::merge::BadWriteId| BadOp(e.to_string()))?,
                table: table.clone(),
                row: *row,
                field: field.clone(),
                value: value.clone(),
                base: base
                    .iter()
                    .map(|b| b.parse().map_err(|e: crate::merge::BadWriteId| BadOp(e.to_string())))
                    .collect::<Result<_, _>>()?,
            }),
            WireOp::Insert { table, id, store, device, hlc, data } => Op::Insert(LedgerRow {
                table: table.clone(),
                id: *id,
                store: *store,
                device: *device,
                hlc: Hlc(*hlc),
                data: data.clone(),
            }),
        })
    }
}

/// A change on the wire: one outbox entry of a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChange {
    pub lane: Lane,
    pub seq: u64,
    /// The digest of the change as the device stored it.
    pub digest: String,
    pub hlc: u64,
    pub ops: Vec<WireOp>,
}

impl WireChange {
    /// From a stored change and its digest.
    pub fn from_change(c: &Change, digest: String) -> Self {
        WireChange { lane: c.lane, seq: c.seq, digest, hlc: c.hlc.0, ops: c.ops.iter().map(WireOp::from).collect() }
    }

    /// Back into a domain change of `device`.
    pub fn to_change(&self, device: Uuid) -> Result<Change, BadOp> {
        Ok(Change {
            device,
            lane: self.lane,
            seq: self.seq,
            hlc: Hlc(self.hlc),
            ops: self.ops.iter().map(Op::try_from).collect::<Result<_, _>>()?,
        })
    }
}

/// POST /v1/push
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PushRequest {
    /// The device's wall clock, for skew measurement.
    pub device_time_ms: u64,
    pub changes: Vec<WireChange>,
    /// The device found that the hub acknowledges sequences of its lanes
    /// that it never wrote: a copy of its folder wrote them. The hub stops
    /// the device (both copies) as forked. This catches the copy that stays
    /// silent, which never reuses a sequence. Optional in v1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copied: bool,
}

/// What the hub did with one lane of a push.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneAck {
    /// Every sequence up to this one is durably stored on the hub.
    pub acked_through: u64,
    /// Sequences acknowledged into quarantine (stored, not applied).
    #[serde(default)]
    pub quarantined: Vec<QuarantineAck>,
    /// Why the rest of the lane was not taken, if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// A change acknowledged into quarantine, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineAck {
    pub seq: u64,
    pub reason: String,
}

/// POST /v1/push response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushResponse {
    pub lanes: BTreeMap<Lane, LaneAck>,
    pub hub_time_ms: u64,
    pub hub_hlc: u64,
    /// Device clock minus hub clock, in milliseconds.
    pub skew_ms: i64,
}

/// One entry of the hub's change log, as pulled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub pos: u64,
    pub device: Uuid,
    pub ops: Vec<WireOp>,
}

/// GET /v1/pull response.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PullResponse {
    pub entries: Vec<Entry>,
    /// Pull again from here.
    pub cursor: u64,
    /// More entries are waiting.
    pub more: bool,
    /// About how many entries wait after `cursor` (for progress), when `more`.
    #[serde(default)]
    pub remaining: u64,
    pub hub_time_ms: u64,
    /// The hub's log chain at `cursor` (a hash over every entry up to it).
    /// The till sends it back with its next pull (`tag`); a hub whose log
    /// differs there (restored to an earlier state, then written again)
    /// answers `cursor_expired` instead of skipping the entries it now has
    /// under positions the till already passed. Optional in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_tag: Option<String>,
}

/// GET /v1/snapshot response: the merged state of the device's scope.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Pull from here after applying the snapshot.
    pub cursor: u64,
    /// The log chain at `cursor` (see [`PullResponse::cursor_tag`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_tag: Option<String>,
    pub ops: Vec<WireOp>,
}

/// POST /v1/enrol
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrolRequest {
    pub code: String,
    pub name: String,
}

/// POST /v1/enrol response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enrolment {
    pub device_id: Uuid,
    pub token: String,
    pub tenant_id: Uuid,
    pub store_id: Uuid,
    pub receipt_prefix: String,
}

/// A device as listed to an admin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device_id: Uuid,
    pub name: String,
    pub store_id: Uuid,
    pub receipt_prefix: String,
    pub status: String,
    pub enrolled_at_ms: u64,
    pub last_seen_ms: Option<u64>,
    pub skew_ms: Option<i64>,
}

/// A tenant's usage.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    pub changes: u64,
    pub bytes: u64,
    pub devices: u64,
    pub stores: u64,
    pub quarantined: u64,
    /// Quota on catalogue and telemetry changes (0: none).
    pub quota_changes: u64,
    /// Bytes of backups the hub keeps for the tenant's tills.
    #[serde(default)]
    pub backup_bytes: u64,
    /// Quota on backup storage, in bytes (0: none).
    #[serde(default)]
    pub quota_backup_bytes: u64,
}

/// Every error the hub returns: a stable code and a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    /// For `gap` and `restored`: the sequence the hub expects next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
}

/// A live event: new log entries exist up to `pos`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub pos: u64,
}
