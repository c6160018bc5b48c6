//! Dev-only: a small, obviously correct reference model of the merge rules.
//!
//! It recomputes everything by brute force over the full set of writes and
//! ledger rows, with no incremental state, so it can judge the real store
//! (which maintains heads incrementally in SQLite as changes arrive in any
//! order). The seeded protocol simulation of real tills and a real hub over
//! a faulty network lives in [`sim`].

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use tillsync_core::change::LedgerRow;
use tillsync_core::merge::{EXISTS_FIELD, Policy, Write, WriteId, conflict_id};
use tillsync_core::{Change, ConflictStatus, Op};
use uuid::Uuid;

pub mod sim;

/// Everything ever written, as a set.
#[derive(Default, Debug, Clone)]
pub struct Model {
    pub writes: BTreeMap<WriteId, Write>,
    pub ledger: BTreeMap<Uuid, LedgerRow>,
}

impl Model {
    /// Adds every operation of a change (duplicates collapse: it is a set).
    pub fn add(&mut self, c: &Change) {
        self.add_ops(&c.ops);
    }

    /// Adds operations (duplicates collapse).
    pub fn add_ops(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Write(w) => {
                    self.writes.insert(w.id, w.clone());
                }
                Op::Insert(r) => {
                    self.ledger.insert(r.id, r.clone());
                }
            }
        }
    }

    fn of_row<'a>(&'a self, table: &'a str, row: Uuid) -> impl Iterator<Item = &'a Write> + 'a {
        self.writes.values().filter(move |w| w.table == table && w.row == row)
    }

    /// Heads by definition: writes of the field that no write of the same
    /// field names in its base.
    pub fn heads(&self, table: &str, row: Uuid, field: &str) -> BTreeSet<WriteId> {
        let fw: Vec<&Write> = self.of_row(table, row).filter(|w| w.field == field).collect();
        fw.iter().filter(|w| !fw.iter().any(|x| x.base.contains(&w.id))).map(|w| w.id).collect()
    }

    /// Every (table, row) with at least one write.
    pub fn rows(&self) -> BTreeSet<(String, Uuid)> {
        self.writes.values().map(|w| (w.table.clone(), w.row)).collect()
    }

    /// Fields written on a row.
    pub fn fields(&self, table: &str, row: Uuid) -> BTreeSet<String> {
        self.of_row(table, row).map(|w| w.field.clone()).collect()
    }

    fn winner(ids: &BTreeSet<WriteId>, policy: Policy) -> WriteId {
        match policy {
            Policy::First => *ids.iter().next().expect("non-empty"),
            _ => *ids.iter().next_back().expect("non-empty"),
        }
    }

    /// The value of a field under a policy.
    pub fn value(&self, table: &str, row: Uuid, field: &str, policy: Policy) -> Option<Value> {
        let h = self.heads(table, row, field);
        if h.is_empty() {
            return None;
        }
        Some(self.writes[&Self::winner(&h, policy)].value.clone())
    }

    /// Existence candidates: existence heads (their value), plus field heads
    /// concurrent with a deleting existence head (a vote for existence).
    fn existence_candidates(&self, table: &str, row: Uuid) -> BTreeMap<WriteId, bool> {
        let eh = self.heads(table, row, EXISTS_FIELD);
        let mut out: BTreeMap<WriteId, bool> =
            eh.iter().map(|id| (*id, self.writes[id].value == Value::Bool(true))).collect();
        let deletes: Vec<&Write> =
            eh.iter().map(|id| &self.writes[id]).filter(|w| w.value == Value::Bool(false)).collect();
        for f in self.fields(table, row) {
            if f == EXISTS_FIELD {
                continue;
            }
            for id in self.heads(table, row, &f) {
                let w = &self.writes[&id];
                if deletes.iter().any(|d| !d.base.contains(&w.id) && !w.base.contains(&d.id)) {
                    out.insert(id, true);
                }
            }
        }
        out
    }

    /// Whether a row exists under a policy.
    pub fn exists(&self, table: &str, row: Uuid, policy: Policy) -> bool {
        let c = self.existence_candidates(table, row);
        if c.is_empty() {
            return self.of_row(table, row).next().is_some();
        }
        let ids: BTreeSet<WriteId> = c.keys().copied().collect();
        c[&Self::winner(&ids, policy)]
    }

    /// Every conflict, current and resolved, as id -> status.
    pub fn conflicts(&self, policy: Policy) -> BTreeMap<String, ConflictStatus> {
        let current = if policy == Policy::Manual { ConflictStatus::Open } else { ConflictStatus::Auto };
        let mut out = BTreeMap::new();
        for (table, row) in self.rows() {
            for f in self.fields(&table, row) {
                if f == EXISTS_FIELD {
                    continue;
                }
                let h = self.heads(&table, row, &f);
                let values: BTreeSet<String> = h.iter().map(|id| self.writes[id].value.to_string()).collect();
                if values.len() > 1 {
                    out.insert(conflict_id(&table, row, &f, &h), current);
                }
            }
            let c = self.existence_candidates(&table, row);
            let values: BTreeSet<bool> = c.values().copied().collect();
            if values.len() > 1 {
                out.insert(conflict_id(&table, row, EXISTS_FIELD, &c.keys().copied().collect()), current);
            }
        }
        // Resolved: a write that named two or more concurrent heads of its
        // field with distinct values.
        for x in self.writes.values() {
            let named: Vec<&Write> = x.base.iter().filter_map(|b| self.writes.get(b)).collect();
            let members: Vec<(&Write, String)> = if x.field == EXISTS_FIELD {
                let seen_heads: Vec<&Write> = named
                    .iter()
                    .copied()
                    .filter(|w| !named.iter().any(|o| o.field == w.field && o.base.contains(&w.id)))
                    .collect();
                let deletes: Vec<&Write> = seen_heads
                    .iter()
                    .copied()
                    .filter(|w| w.field == EXISTS_FIELD && w.value == Value::Bool(false))
                    .collect();
                let mut m: Vec<(&Write, String)> = seen_heads
                    .iter()
                    .copied()
                    .filter(|w| w.field == EXISTS_FIELD)
                    .map(|w| (w, w.value.to_string()))
                    .collect();
                if !deletes.is_empty() {
                    for w in seen_heads.iter().copied().filter(|w| w.field != EXISTS_FIELD) {
                        if deletes.iter().any(|d| !d.base.contains(&w.id) && !w.base.contains(&d.id)) {
                            m.push((w, "true".into()));
                        }
                    }
                }
                m
            } else {
                named.iter().copied().filter(|w| w.field == x.field).map(|w| (w, w.value.to_string())).collect()
            };
            if members.len() < 2 {
                continue;
            }
            let concurrent = members.iter().all(|(a, _)| {
                members.iter().all(|(b, _)| a.id == b.id || !(a.field == b.field && a.base.contains(&b.id)))
            });
            let values: BTreeSet<&String> = members.iter().map(|(_, v)| v).collect();
            if concurrent && values.len() > 1 {
                let ids: BTreeSet<WriteId> = members.iter().map(|(w, _)| w.id).collect();
                out.insert(conflict_id(&x.table, x.row, &x.field, &ids), ConflictStatus::Resolved);
            }
        }
        out
    }

    /// Stock on hand by brute force: the newest count (highest clock, then
    /// id) plus every movement of the SKU that its chain of counts had not
    /// seen.
    pub fn on_hand(&self, sku: &str) -> i64 {
        let of = |t: &str| -> Vec<&LedgerRow> {
            self.ledger.values().filter(|r| r.table == t && r.data["sku"].as_str() == Some(sku)).collect()
        };
        let counts = of("stock_counts");
        let moves = of("stock_movements");
        let Some(newest) = counts.iter().max_by_key(|c| (c.hlc, c.id)) else {
            return moves.iter().map(|m| m.data["qty"].as_i64().unwrap()).sum();
        };
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut cur = Some(*newest);
        let mut guard = 0;
        while let Some(c) = cur {
            guard += 1;
            if guard > counts.len() + 1 {
                break;
            }
            for s in c.data["seen"].as_array().unwrap() {
                seen.insert(s.as_str().unwrap().to_string());
            }
            cur = c.data["base_count"].as_str().and_then(|b| counts.iter().copied().find(|x| x.id.to_string() == b));
        }
        newest.data["qty"].as_i64().unwrap()
            + moves
                .iter()
                .filter(|m| !seen.contains(&m.id.to_string()))
                .map(|m| m.data["qty"].as_i64().unwrap())
                .sum::<i64>()
    }
}
