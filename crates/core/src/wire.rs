//! Wire types of the sync protocol, version 1. They are separate from the
//! domain types so the domain can change without breaking tills in the
//! field: conversions live here, and a new wire version gets new types.

use crate::change::{Change, LedgerRow, Op, StateKey};
use crate::hlc::Hlc;
use crate::merge::{Write, WriteId};
use crate::schema::Lane;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The wire version this build speaks. Sent as `Tillsync-Wire` header.
pub const WIRE_VERSION: u32 = 1;

/// One operation on the wire: a JSON object whose `op` field names the
/// variant (serde's internally tagged form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WireOp {
    Write { id: String, table: String, row: Uuid, field: String, value: Value, base: Vec<String> },
    Insert { table: String, id: Uuid, store: Uuid, device: Uuid, hlc: u64, data: Value },
}

/// The fields of either variant of [`WireOp`], read in one pass. serde's
/// derived decoder for an internally tagged enum first copies the whole
/// object, row data included, into a buffer of its own and then decodes
/// that again: it was most of the hub's CPU per pushed change (allocations
/// and the second pass). The accepted input is the same: the `op` field
/// anywhere in the object, unknown fields ignored, a missing field of the
/// named variant an error.
#[derive(Deserialize)]
struct WireOpFields {
    op: WireOpKind,
    id: Option<String>,
    table: Option<String>,
    row: Option<Uuid>,
    field: Option<String>,
    /// Present and `null` is a value; absent is not.
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    base: Option<Vec<String>>,
    store: Option<Uuid>,
    device: Option<Uuid>,
    hlc: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireOpKind {
    Write,
    Insert,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for WireOp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        fn need<T, E: Error>(v: Option<T>, name: &'static str) -> Result<T, E> {
            v.ok_or_else(|| E::missing_field(name))
        }
        let f = WireOpFields::deserialize(d)?;
        Ok(match f.op {
            WireOpKind::Write => WireOp::Write {
                id: need(f.id, "id")?,
                table: need(f.table, "table")?,
                row: need(f.row, "row")?,
                field: need(f.field, "field")?,
                value: need(f.value, "value")?,
                base: need(f.base, "base")?,
            },
            WireOpKind::Insert => WireOp::Insert {
                table: need(f.table, "table")?,
                id: need(f.id, "id")?.parse().map_err(|e| D::Error::custom(format!("id: {e}")))?,
                store: need(f.store, "store")?,
                device: need(f.device, "device")?,
                hlc: need(f.hlc, "hlc")?,
                data: need(f.data, "data")?,
            },
        })
    }
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

impl From<Op> for WireOp {
    /// As `From<&Op>`, moving the values instead of cloning them (a
    /// snapshot page converts thousands).
    fn from(op: Op) -> Self {
        match op {
            Op::Write(w) => WireOp::Write {
                id: w.id.to_string(),
                base: w.base.iter().map(WriteId::to_string).collect(),
                table: w.table,
                row: w.row,
                field: w.field,
                value: w.value,
            },
            Op::Insert(r) => WireOp::Insert {
                table: r.table,
                id: r.id,
                store: r.store,
                device: r.device,
                hlc: r.hlc.0,
                data: r.data,
            },
        }
    }
}

impl TryFrom<WireOp> for Op {
    type Error = BadOp;
    /// As `TryFrom<&WireOp>`, moving the values instead of cloning them.
    fn try_from(w: WireOp) -> Result<Self, Self::Error> {
        let bad = |e: crate::merge::BadWriteId| BadOp(e.to_string());
        Ok(match w {
            WireOp::Write { id, table, row, field, value, base } => Op::Write(Write {
                id: id.parse().map_err(bad)?,
                table,
                row,
                field,
                value,
                base: base.iter().map(|b| b.parse().map_err(bad)).collect::<Result<_, _>>()?,
            }),
            WireOp::Insert { table, id, store, device, hlc, data } => {
                Op::Insert(LedgerRow { table, id, store, device, hlc: Hlc(hlc), data })
            }
        })
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

/// Most operations in one snapshot page (`GET /v1/snapshot?limit=N`).
pub const SNAPSHOT_PAGE_LEN_MAX: usize = 5_000;
/// Most operations a whole snapshot (`GET /v1/snapshot` without `limit`,
/// as tills before paging ask) may hold; past it the hub answers
/// `snapshot_too_large` and the caller must page.
pub const SNAPSHOT_WHOLE_LEN_MAX: u64 = 100_000;
/// Longest snapshot key accepted, in bytes.
pub const SNAPSHOT_KEY_LEN_MAX: usize = 256;

/// A position in a snapshot's order (see [`StateKey`]), as the `next` of a
/// page and the `after` of the next request: `w:TABLE:ROW:WRITE_ID` for a
/// record write, `l:ID` for a ledger row. A string, so that it travels in
/// a query string unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct SnapshotKey(String);

/// A snapshot key that does not decode. The key itself is not repeated: it
/// came from the caller, and an answer should not echo arbitrary input.
#[derive(Debug, thiserror::Error)]
#[error("malformed snapshot key ({0}): send the `next` of the previous page as `after`")]
pub struct BadKey(pub &'static str);

impl SnapshotKey {
    /// The key as sent in a query string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The position it names.
    pub fn to_state_key(&self) -> Result<StateKey, BadKey> {
        let bad = || BadKey("not a key this hub wrote");
        if let Some(id) = self.0.strip_prefix("l:") {
            let key = StateKey::Ledger { id: Uuid::try_parse(id).map_err(|_| bad())? };
            if SnapshotKey::from(&key) != *self {
                return Err(bad());
            }
            return Ok(key);
        }
        let rest = self.0.strip_prefix("w:").ok_or_else(bad)?;
        // Row and write id hold no ':', so a table name is what is left.
        let mut parts = rest.rsplitn(3, ':');
        let (id, row, table) = (parts.next(), parts.next(), parts.next());
        let (Some(id), Some(row), Some(table)) = (id, row, table) else { return Err(bad()) };
        if table.is_empty() || !table.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(bad());
        }
        let key = StateKey::Write {
            table: table.to_string(),
            row: Uuid::try_parse(row).map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        };
        // Only the form the hub writes: a key is compared as text, so an
        // id spelled another way (upper case, braces) would name another
        // position.
        if SnapshotKey::from(&key) != *self {
            return Err(bad());
        }
        Ok(key)
    }
}

impl From<&StateKey> for SnapshotKey {
    fn from(k: &StateKey) -> Self {
        SnapshotKey(match k {
            StateKey::Write { table, row, id } => format!("w:{table}:{row}:{id}"),
            StateKey::Ledger { id } => format!("l:{id}"),
        })
    }
}

impl From<SnapshotKey> for String {
    fn from(k: SnapshotKey) -> String {
        k.0
    }
}

impl TryFrom<String> for SnapshotKey {
    type Error = BadKey;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.len() > SNAPSHOT_KEY_LEN_MAX {
            return Err(BadKey("too long"));
        }
        let k = SnapshotKey(s);
        k.to_state_key()?;
        Ok(k)
    }
}

/// GET /v1/snapshot?limit=N[&after=KEY] response: one page of the merged
/// state of the device's scope, in the order of [`StateKey`]. A whole
/// [`Snapshot`] (from a hub that does not page) reads as a single last page.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotPage {
    /// First page only: pull from here once every page is applied. Taken
    /// in the same transaction as the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
    /// First page only: the log chain at `cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_tag: Option<String>,
    /// First page only: how many operations the scope held then (for
    /// progress; later writes make the pages hold a few more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    pub ops: Vec<WireOp>,
    /// Ask for the next page `after` this key; none: this was the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<SnapshotKey>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoder serde derives for the same enum: the hand-written one
    /// must accept and refuse exactly what it does, and decode the same.
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    enum Derived {
        Write { id: String, table: String, row: Uuid, field: String, value: Value, base: Vec<String> },
        Insert { table: String, id: Uuid, store: Uuid, device: Uuid, hlc: u64, data: Value },
    }

    #[test]
    fn wire_ops_decode_as_the_derived_decoder_does() {
        let u = "01890a5d-ac96-774b-bcce-b302099a8057";
        let w = format!(r#""id":"0000000100000002-{u}","table":"products","row":"{u}","field":"price","base":[]"#);
        let i = format!(r#""table":"sales","id":"{u}","store":"{u}","device":"{u}","hlc":7"#);
        let cases = [
            format!(r#"{{"op":"write",{w},"value":450}}"#),
            format!(r#"{{{w},"value":{{"a":[1,2,{{"b":null}}]}},"op":"write"}}"#),
            format!(r#"{{"op":"write",{w},"value":null}}"#),
            format!(r#"{{"op":"write",{w}}}"#),
            format!(r#"{{"op":"write",{w},"value":1,"unknown":[1]}}"#),
            format!(r#"{{"op":"write",{w},"value":1,"hlc":5}}"#),
            format!(r#"{{"op":"insert",{i},"data":{{"total_minor":880}}}}"#),
            format!(r#"{{"op":"insert",{i},"data":null}}"#),
            format!(r#"{{"op":"insert",{i}}}"#),
            format!(r#"{{"op":"insert",{},"data":1}}"#, i.replace(&format!(r#""id":"{u}""#), r#""id":"not-a-uuid""#)),
            format!(
                r#"{{"op":"insert",{},"data":1}}"#,
                i.replace(&format!(r#""id":"{u}""#), &format!(r#""id":"{}""#, u.replace('-', "")))
            ),
            format!(r#"{{"op":"insert",{},"data":1}}"#, i.replace(r#""hlc":7"#, r#""hlc":-1"#)),
            format!(r#"{{"op":"delete",{w},"value":1}}"#),
            format!(r#"{{{w},"value":1}}"#),
            r#"{"op":"write"}"#.to_string(),
            r#"{"op":5}"#.to_string(),
            "[]".to_string(),
            "null".to_string(),
        ];
        for json in &cases {
            let ours = serde_json::from_str::<WireOp>(json);
            let theirs = serde_json::from_str::<Derived>(json);
            match (&ours, &theirs) {
                (Ok(o), Ok(t)) => {
                    let again: Derived = serde_json::from_value(serde_json::to_value(o).unwrap()).unwrap();
                    assert_eq!(&again, t, "{json}");
                }
                (Err(_), Err(_)) => {}
                _ => panic!("{json}: ours {ours:?}, derived {theirs:?}"),
            }
        }
        assert!(serde_json::from_str::<WireOp>(&cases[2]).is_ok(), "a null value is a value");
        assert!(serde_json::from_str::<WireOp>(&cases[3]).is_err(), "a missing value is not");
    }

    #[test]
    fn snapshot_keys_round_trip_and_only_in_their_written_form() {
        let row = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let id = WriteId { hlc: Hlc(0x1_0000_0002), device: Uuid::from_u128(7) };
        for key in [StateKey::Write { table: "stock_movements".into(), row, id }, StateKey::Ledger { id: row }] {
            let wire = SnapshotKey::from(&key);
            assert_eq!(wire.to_state_key().unwrap(), key);
            let again: SnapshotKey = serde_json::from_value(serde_json::to_value(&wire).unwrap()).unwrap();
            assert_eq!(again, wire);
        }
        let upper = format!("l:{}", row.to_string().to_uppercase());
        let braced = format!("l:{{{row}}}");
        let hyphenated_write = format!("w:products:{row}:{:016x}-{}", 5, Uuid::from_u128(7));
        for bad in [
            "".to_string(),
            "x".into(),
            "l:".into(),
            upper,
            braced,
            hyphenated_write,
            format!("w::{row}:{id}"),
            format!("w:Products:{row}:{id}"),
            format!("w:a\nb:{row}:{id}"),
            "l:".to_string() + &"0".repeat(300),
        ] {
            assert!(SnapshotKey::try_from(bad.clone()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_whole_snapshot_reads_as_a_last_page() {
        let snap = Snapshot { cursor: 9, cursor_tag: Some("t".into()), ops: vec![] };
        let page: SnapshotPage = serde_json::from_value(serde_json::to_value(&snap).unwrap()).unwrap();
        assert_eq!((page.cursor, page.cursor_tag.as_deref(), page.next), (Some(9), Some("t"), None));
    }
}
