//! Per-field merge of record tables (DESIGN.md sections 2 and 3).
//!
//! Every write names the writes it had seen for its field (its base). A
//! field's heads are its writes that no other write of the same field names.
//! Existence is the pseudo-field [`EXISTS_FIELD`]: a delete writes `false`.
//! Field writes also name the existence heads they saw, and existence writes
//! name every field head they saw, so a delete and an update that did not
//! see each other are recognised as concurrent: a conflict, never a zombie.

use crate::hlc::Hlc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// The pseudo-field that holds a row's existence.
pub const EXISTS_FIELD: &str = "_exists";

/// A write's id: its clock reading and the device that made it. Ordered by
/// clock, then device, which is the order `lww` and `first` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct WriteId {
    pub hlc: Hlc,
    pub device: Uuid,
}

impl fmt::Display for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.hlc.0, self.device.simple())
    }
}

impl From<WriteId> for String {
    fn from(w: WriteId) -> String {
        w.to_string()
    }
}

/// A malformed write id.
#[derive(Debug, thiserror::Error)]
#[error("malformed write id '{0}'")]
pub struct BadWriteId(String);

impl FromStr for WriteId {
    type Err = BadWriteId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadWriteId(s.chars().take(80).collect());
        let (h, d) = s.split_once('-').ok_or_else(bad)?;
        if h.len() != 16 {
            return Err(bad());
        }
        let hlc = u64::from_str_radix(h, 16).map_err(|_| bad())?;
        let device = Uuid::try_parse(d).map_err(|_| bad())?;
        Ok(WriteId { hlc: Hlc(hlc), device })
    }
}

impl TryFrom<String> for WriteId {
    type Error = BadWriteId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// One write of one field of one record row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub id: WriteId,
    pub table: String,
    pub row: Uuid,
    pub field: String,
    pub value: Value,
    /// The writes this one had seen: heads of its own field, plus context
    /// (existence heads for a field write, every field head for an
    /// existence write).
    pub base: Vec<WriteId>,
}

impl Write {
    /// Whether this write supersedes `other`: same row and field, and it
    /// names `other` in its base.
    pub fn supersedes(&self, other: &Write) -> bool {
        self.field == other.field && self.base.contains(&other.id)
    }

    fn is_delete(&self) -> bool {
        self.field == EXISTS_FIELD && self.value == Value::Bool(false)
    }
}

/// What applying a write changes in a row's set of heads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeadDelta {
    /// The incoming write becomes a head.
    pub add: bool,
    /// Heads it supersedes.
    pub remove: Vec<WriteId>,
}

/// The one apply function for record writes, local and remote alike.
///
/// `row_heads` are the current heads of every field of the row;
/// `already_named` says whether a stored write of the same field already
/// names the incoming one (it arrived late and is superseded on arrival).
pub fn apply_write(row_heads: &[Write], incoming: &Write, already_named: bool) -> HeadDelta {
    if row_heads.iter().any(|h| h.id == incoming.id) {
        return HeadDelta::default();
    }
    let remove = row_heads.iter().filter(|h| incoming.supersedes(h)).map(|h| h.id).collect();
    HeadDelta { add: !already_named, remove }
}

/// How concurrent heads of a field are settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The head with the highest clock wins; the conflict is `auto`.
    #[default]
    Lww,
    /// The head with the lowest clock wins; the conflict is `auto`.
    First,
    /// The highest clock is shown provisionally; the conflict stays `open`
    /// until a person resolves it.
    Manual,
}

impl Policy {
    /// Parses `lww`, `first` or `manual`.
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "lww" => Some(Policy::Lww),
            "first" => Some(Policy::First),
            "manual" => Some(Policy::Manual),
            _ => None,
        }
    }

    /// The policy's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Lww => "lww",
            Policy::First => "first",
            Policy::Manual => "manual",
        }
    }
}

/// A conflict's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStatus {
    Auto,
    Open,
    Resolved,
}

/// One competing value of a conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictHead {
    pub write_id: WriteId,
    pub device: Uuid,
    pub wall_ms: u64,
    pub value: Value,
}

/// A field (or a row's existence) with more than one head of distinct value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// A hash of the field and its heads: the same on every replica.
    pub id: String,
    pub table: String,
    pub row: Uuid,
    pub field: String,
    pub status: ConflictStatus,
    pub heads: Vec<ConflictHead>,
    /// The head whose value is shown (none once resolved).
    pub chosen: Option<WriteId>,
}

/// The stable id of a conflict among `heads` of a field.
pub fn conflict_id(table: &str, row: Uuid, field: &str, heads: &BTreeSet<WriteId>) -> String {
    let mut h = Sha256::new();
    h.update(b"tillsync-conflict-v1\0");
    h.update(table.as_bytes());
    h.update([0]);
    h.update(row.as_bytes());
    h.update(field.as_bytes());
    for id in heads {
        h.update([0]);
        h.update(id.to_string().as_bytes());
    }
    let d = h.finalize();
    d[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The materialised view of a record row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowView {
    pub exists: bool,
    pub fields: BTreeMap<String, Value>,
    /// Current conflicts (`auto` or `open`).
    pub conflicts: Vec<Conflict>,
}

/// Existence candidates: the existence heads, plus every field head that a
/// deleting existence head did not see and that did not see it (an update
/// concurrent with a delete counts as a vote for existence).
fn existence_candidates(row_heads: &[Write]) -> Vec<(&Write, bool)> {
    let exists_heads: Vec<&Write> = row_heads.iter().filter(|w| w.field == EXISTS_FIELD).collect();
    let deletes: Vec<&Write> = exists_heads.iter().copied().filter(|w| w.is_delete()).collect();
    let mut out: Vec<(&Write, bool)> = exists_heads.iter().map(|w| (*w, w.value == Value::Bool(true))).collect();
    if !deletes.is_empty() {
        for w in row_heads.iter().filter(|w| w.field != EXISTS_FIELD) {
            let concurrent = deletes.iter().any(|d| !d.base.contains(&w.id) && !w.base.contains(&d.id));
            if concurrent {
                out.push((w, true));
            }
        }
    }
    out
}

fn pick<'a>(candidates: impl Iterator<Item = &'a Write> + Clone, policy: Policy) -> &'a Write {
    match policy {
        Policy::Lww | Policy::Manual => candidates.max_by_key(|w| w.id).expect("non-empty"),
        Policy::First => candidates.min_by_key(|w| w.id).expect("non-empty"),
    }
}

fn head_of(w: &Write, value: Value) -> ConflictHead {
    ConflictHead { write_id: w.id, device: w.id.device, wall_ms: w.id.hlc.wall_ms(), value }
}

/// Derives a row's values, existence and current conflicts from its heads.
/// `policy(field)` gives the tenant's policy for a field of this table.
pub fn materialize(table: &str, row: Uuid, row_heads: &[Write], policy: impl Fn(&str) -> Policy) -> RowView {
    let mut by_field: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
    for w in row_heads {
        by_field.entry(w.field.as_str()).or_default().push(w);
    }
    let mut view = RowView::default();
    for (field, heads) in &by_field {
        if *field == EXISTS_FIELD {
            continue;
        }
        let distinct: BTreeSet<String> = heads.iter().map(|w| w.value.to_string()).collect();
        let p = policy(field);
        let chosen = pick(heads.iter().copied(), p);
        view.fields.insert(field.to_string(), chosen.value.clone());
        if distinct.len() > 1 {
            let ids: BTreeSet<WriteId> = heads.iter().map(|w| w.id).collect();
            let mut hs: Vec<ConflictHead> = heads.iter().map(|w| head_of(w, w.value.clone())).collect();
            hs.sort_by_key(|h| h.write_id);
            view.conflicts.push(Conflict {
                id: conflict_id(table, row, field, &ids),
                table: table.into(),
                row,
                field: field.to_string(),
                status: if p == Policy::Manual { ConflictStatus::Open } else { ConflictStatus::Auto },
                heads: hs,
                chosen: Some(chosen.id),
            });
        }
    }
    let candidates = existence_candidates(row_heads);
    view.exists = if candidates.is_empty() {
        !row_heads.is_empty()
    } else {
        let p = policy(EXISTS_FIELD);
        let winner = pick(candidates.iter().map(|(w, _)| *w), p);
        let exists = candidates.iter().find(|(w, _)| w.id == winner.id).map(|(_, e)| *e).expect("winner");
        let distinct: BTreeSet<bool> = candidates.iter().map(|(_, e)| *e).collect();
        if distinct.len() > 1 {
            let ids: BTreeSet<WriteId> = candidates.iter().map(|(w, _)| w.id).collect();
            let mut hs: Vec<ConflictHead> = candidates.iter().map(|(w, e)| head_of(w, Value::Bool(*e))).collect();
            hs.sort_by_key(|h| h.write_id);
            view.conflicts.push(Conflict {
                id: conflict_id(table, row, EXISTS_FIELD, &ids),
                table: table.into(),
                row,
                field: EXISTS_FIELD.into(),
                status: if p == Policy::Manual { ConflictStatus::Open } else { ConflictStatus::Auto },
                heads: hs,
                chosen: Some(winner.id),
            });
        }
        exists
    };
    view
}

/// The conflict a write resolved, if it named two or more concurrent writes
/// of distinct value. `named` are the writes of its row that it names and
/// that are present (a resolution names every head it settles).
pub fn resolved_conflict(resolver: &Write, named: &[Write]) -> Option<Conflict> {
    let candidates: Vec<(&Write, Value)> = if resolver.field == EXISTS_FIELD {
        // Rebuild the existence candidates the resolver saw.
        let seen: Vec<Write> = named.iter().filter(|w| resolver.base.contains(&w.id)).cloned().collect();
        // Only heads among what it saw count: drop writes superseded by another seen write.
        let heads: Vec<Write> = seen.iter().filter(|w| !seen.iter().any(|o| o.supersedes(w))).cloned().collect();
        let c = existence_candidates(&heads);
        let ids: BTreeSet<WriteId> = c.iter().map(|(w, _)| w.id).collect();
        return build_resolved(resolver, named, ids, |w| {
            if w.field == EXISTS_FIELD { w.value.clone() } else { Value::Bool(true) }
        });
    } else {
        named.iter().filter(|w| resolver.supersedes(w)).map(|w| (w, w.value.clone())).collect()
    };
    let ids: BTreeSet<WriteId> = candidates.iter().map(|(w, _)| w.id).collect();
    build_resolved(resolver, named, ids, |w| w.value.clone())
}

fn build_resolved(
    resolver: &Write,
    named: &[Write],
    ids: BTreeSet<WriteId>,
    value_of: impl Fn(&Write) -> Value,
) -> Option<Conflict> {
    if ids.len() < 2 {
        return None;
    }
    let members: Vec<&Write> = named.iter().filter(|w| ids.contains(&w.id)).collect();
    // Writes that saw each other were never concurrent heads together.
    let concurrent = members.iter().all(|a| members.iter().all(|b| a.id == b.id || !a.supersedes(b)));
    let distinct: BTreeSet<String> = members.iter().map(|w| value_of(w).to_string()).collect();
    if !concurrent || distinct.len() < 2 {
        return None;
    }
    let mut heads: Vec<ConflictHead> = members.iter().map(|w| head_of(w, value_of(w))).collect();
    heads.sort_by_key(|h| h.write_id);
    Some(Conflict {
        id: conflict_id(&resolver.table, resolver.row, &resolver.field, &ids),
        table: resolver.table.clone(),
        row: resolver.row,
        field: resolver.field.clone(),
        status: ConflictStatus::Resolved,
        heads,
        chosen: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(hlc: u64, dev: u128) -> WriteId {
        WriteId { hlc: Hlc(hlc), device: Uuid::from_u128(dev) }
    }

    fn w(i: WriteId, field: &str, value: Value, base: &[WriteId]) -> Write {
        Write {
            id: i,
            table: "products".into(),
            row: Uuid::from_u128(9),
            field: field.into(),
            value,
            base: base.to_vec(),
        }
    }

    fn heads_after(writes: &[Write]) -> Vec<Write> {
        let mut heads: Vec<Write> = vec![];
        let mut all: Vec<Write> = vec![];
        for x in writes {
            let named = all.iter().any(|o| o.supersedes(x));
            let d = apply_write(&heads, x, named);
            heads.retain(|h| !d.remove.contains(&h.id));
            if d.add {
                heads.push(x.clone());
            }
            all.push(x.clone());
        }
        heads
    }

    #[test]
    fn write_ids_round_trip_and_order_by_clock() {
        let a = id(5, 1);
        let s = a.to_string();
        assert_eq!(s.parse::<WriteId>().unwrap(), a);
        assert!(id(5, 2) > id(5, 1));
        assert!(id(6, 1) > id(5, 2));
        assert!("zz".parse::<WriteId>().is_err());
    }

    #[test]
    fn later_write_supersedes_in_any_arrival_order() {
        let a = w(id(1, 1), "price", json!(100), &[]);
        let b = w(id(2, 2), "price", json!(200), &[a.id]);
        let h1 = heads_after(&[a.clone(), b.clone()]);
        let h2 = heads_after(&[b.clone(), a.clone()]);
        assert_eq!(h1, vec![b.clone()]);
        assert_eq!(h2, vec![b]);
    }

    #[test]
    fn concurrent_writes_conflict_under_each_policy() {
        let a = w(id(1, 1), "price", json!(100), &[]);
        let b = w(id(2, 2), "price", json!(200), &[]);
        let heads = heads_after(&[a.clone(), b.clone()]);
        let v = materialize("products", a.row, &heads, |_| Policy::Lww);
        assert_eq!(v.fields["price"], json!(200));
        assert_eq!(v.conflicts.len(), 1);
        assert_eq!(v.conflicts[0].status, ConflictStatus::Auto);
        let v = materialize("products", a.row, &heads, |_| Policy::First);
        assert_eq!(v.fields["price"], json!(100));
        let v2 = materialize("products", a.row, &heads, |_| Policy::Manual);
        assert_eq!(v2.fields["price"], json!(200));
        assert_eq!(v2.conflicts[0].status, ConflictStatus::Open);
        assert_eq!(v2.conflicts[0].id, v.conflicts[0].id);
    }

    #[test]
    fn equal_values_are_no_conflict() {
        let a = w(id(1, 1), "price", json!(100), &[]);
        let b = w(id(2, 2), "price", json!(100), &[]);
        let v = materialize("products", a.row, &heads_after(&[a, b]), |_| Policy::Manual);
        assert!(v.conflicts.is_empty());
    }

    #[test]
    fn resolution_names_all_heads() {
        let a = w(id(1, 1), "price", json!(100), &[]);
        let b = w(id(2, 2), "price", json!(200), &[]);
        let r = w(id(3, 1), "price", json!(150), &[a.id, b.id]);
        let heads = heads_after(&[a.clone(), r.clone(), b.clone()]);
        assert_eq!(heads, vec![r.clone()]);
        let c = resolved_conflict(&r, &[a, b]).unwrap();
        assert_eq!(c.status, ConflictStatus::Resolved);
        assert_eq!(c.heads.len(), 2);
    }

    #[test]
    fn delete_concurrent_with_update_is_a_conflict() {
        let create = w(id(1, 1), EXISTS_FIELD, json!(true), &[]);
        let name = w(id(2, 1), "name", json!("Tea"), &[create.id]);
        // Device 2 deletes having seen the name; device 3 renames concurrently.
        let del = w(id(5, 2), EXISTS_FIELD, json!(false), &[create.id, name.id]);
        let rename = w(id(4, 3), "name", json!("Green tea"), &[name.id, create.id]);
        let heads = heads_after(&[create.clone(), name.clone(), del.clone(), rename.clone()]);
        let v = materialize("products", create.row, &heads, |_| Policy::Lww);
        assert!(!v.exists, "the delete has the higher clock");
        assert_eq!(v.conflicts.len(), 1);
        assert_eq!(v.conflicts[0].field, EXISTS_FIELD);
        let v = materialize("products", create.row, &heads, |_| Policy::First);
        assert!(v.exists, "the rename has the lower clock");
        // A delete that saw every head is no conflict.
        let del2 = w(id(6, 2), EXISTS_FIELD, json!(false), &[del.id, rename.id]);
        let heads = heads_after(&[create, name, del, rename, del2]);
        let v = materialize("products", Uuid::from_u128(9), &heads, |_| Policy::Lww);
        assert!(!v.exists);
        assert!(v.conflicts.is_empty());
    }
}
