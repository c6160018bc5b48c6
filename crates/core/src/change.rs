//! A change: what one device committed in one local transaction, queued in
//! one outbox lane under a gap-free per-device sequence.

use crate::hlc::Hlc;
use crate::merge::Write;
use crate::schema::{Kind, Lane, Schema, SchemaError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// One ledger row. Immutable once written; deduplicated by `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    pub table: String,
    pub id: Uuid,
    /// The store the row belongs to (ledgers are store-scoped).
    pub store: Uuid,
    pub device: Uuid,
    pub hlc: Hlc,
    pub data: Value,
}

/// One operation of a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A record field write.
    Write(Write),
    /// A ledger row insert.
    Insert(LedgerRow),
}

/// A position in the canonical order of a replica's state, by which a
/// snapshot is paged (keyset): every record write ordered by (table, row,
/// write id), then every ledger row ordered by id. Ids compare as their
/// stored text (UUIDs lowercase and hyphenated, write ids as
/// `WriteId::to_string`), which is the order SQLite and the hub use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateKey {
    Write { table: String, row: Uuid, id: crate::merge::WriteId },
    Ledger { id: Uuid },
}

impl Op {
    /// The table the operation touches.
    pub fn table(&self) -> &str {
        match self {
            Op::Write(w) => &w.table,
            Op::Insert(r) => &r.table,
        }
    }

    /// The operation's position in the canonical order of a state.
    pub fn state_key(&self) -> StateKey {
        match self {
            Op::Write(w) => StateKey::Write { table: w.table.clone(), row: w.row, id: w.id },
            Op::Insert(r) => StateKey::Ledger { id: r.id },
        }
    }

    /// The operation's own id as stored (a write id or a ledger row id).
    pub fn id_text(&self) -> String {
        match self {
            Op::Write(w) => w.id.to_string(),
            Op::Insert(r) => r.id.to_string(),
        }
    }

    /// Checks the operation against the declarations.
    pub fn check(&self, schema: &Schema) -> Result<(), SchemaError> {
        let hlc = match self {
            Op::Write(w) => w.id.hlc,
            Op::Insert(r) => r.hlc,
        };
        // Found with the fuzz harness (`fuzz/regressions/`): a reading past
        // `Hlc::MAX` overflowed the clock of every store that applied it.
        if hlc > Hlc::MAX {
            return Err(SchemaError::ClockOutOfRange(hlc.0));
        }
        match self {
            Op::Write(w) => {
                let t = schema.table(&w.table)?;
                if t.kind != Kind::Record {
                    return Err(SchemaError::WrongKind(t.name.clone(), t.kind));
                }
                t.check_value(&w.field, &w.value)
            }
            Op::Insert(r) => {
                let t = schema.table(&r.table)?;
                if t.kind != Kind::Ledger {
                    return Err(SchemaError::WrongKind(t.name.clone(), t.kind));
                }
                t.check_row(&r.data)
            }
        }
    }
}

/// A committed change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub device: Uuid,
    pub lane: Lane,
    pub seq: u64,
    pub hlc: Hlc,
    pub ops: Vec<Op>,
}

impl Change {
    /// A digest of the change's content, so the same sequence carrying a
    /// different change (a cloned till) is told apart from a retry.
    pub fn digest(&self) -> String {
        self.encode().1
    }

    /// The change as JSON and the digest of exactly those bytes, computed
    /// in one serialisation.
    pub fn encode(&self) -> (String, String) {
        let json = serde_json::to_string(self).expect("changes serialize");
        let digest = hex(&Sha256::digest(json.as_bytes()));
        (json, digest)
    }

    /// The highest clock reading in the change.
    pub fn max_hlc(&self) -> Hlc {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Write(w) => w.id.hlc,
                Op::Insert(r) => r.hlc,
            })
            .fold(self.hlc, Hlc::max)
    }
}

/// The lane of a change: the highest-priority lane among its tables, so a
/// sale and its stock movements travel together in `sales`.
pub fn lane_for(schema: &Schema, ops: &[Op]) -> Result<Lane, SchemaError> {
    let mut lane = Lane::Telemetry;
    for op in ops {
        lane = lane.min(schema.table(op.table())?.lane);
    }
    Ok(lane)
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
