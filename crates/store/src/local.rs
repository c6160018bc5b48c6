//! Local actions: a closure stages operations against the current state,
//! then they are applied through the same path as remote changes and queued
//! in the outbox, all in one `BEGIN IMMEDIATE` transaction.

use crate::apply::exists_field;
use crate::{Store, StoreError};
use rusqlite::params;
use serde_json::Value;
use std::collections::BTreeMap;
use tillsync_core::change::{LedgerRow, lane_for};
use tillsync_core::merge::{Write, WriteId};
use tillsync_core::{Change, Op};
use uuid::Uuid;

/// Stages the operations of one local action.
pub struct Local<'a> {
    pub(crate) store: &'a mut Store,
    pub(crate) ops: Vec<Op>,
    pub(crate) now_ms: u64,
    /// Heads staged in this action, so two writes to one field in one action
    /// chain instead of competing.
    staged: BTreeMap<(String, Uuid, String), WriteId>,
}

impl Local<'_> {
    /// The store, for reads inside the action.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// The action's time.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// A fresh UUIDv7.
    pub fn new_id(&mut self) -> Uuid {
        self.store.ids.new_v7(self.now_ms)
    }

    /// Random bytes (PIN salts).
    pub fn random_bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.store.ids.fill(&mut b);
        b
    }

    fn heads_of(&self, table: &str, row: Uuid, field: &str) -> Result<Vec<WriteId>, StoreError> {
        if let Some(id) = self.staged.get(&(table.to_string(), row, field.to_string())) {
            return Ok(vec![*id]);
        }
        Ok(self.store.field_heads(table, row, field)?.into_iter().map(|w| w.id).collect())
    }

    fn stage_write(
        &mut self,
        table: &str,
        row: Uuid,
        field: &str,
        value: Value,
        base: Vec<WriteId>,
    ) -> Result<(), StoreError> {
        let id = WriteId { hlc: self.store.clock.tick(self.now_ms), device: self.store.identity.device_id };
        let w = Write { id, table: table.into(), row, field: field.into(), value, base };
        let op = Op::Write(w);
        op.check(&self.store.schema)?;
        self.ops.push(op);
        self.staged.insert((table.to_string(), row, field.to_string()), id);
        Ok(())
    }

    /// Writes fields of a record row. Each write names the field's current
    /// heads and the row's existence heads.
    pub fn set(&mut self, table: &str, row: Uuid, fields: &[(&str, Value)]) -> Result<(), StoreError> {
        let exists_heads = self.heads_of(table, row, exists_field())?;
        for (field, value) in fields {
            let mut base = self.heads_of(table, row, field)?;
            base.extend(exists_heads.iter().copied());
            base.sort();
            base.dedup();
            self.stage_write(table, row, field, value.clone(), base)?;
        }
        Ok(())
    }

    /// Creates (or re-creates) a record row with its fields.
    pub fn create(&mut self, table: &str, row: Uuid, fields: &[(&str, Value)]) -> Result<(), StoreError> {
        self.set_exists(table, row, true)?;
        self.set(table, row, fields)
    }

    /// Deletes a record row: an existence write naming every head it saw.
    pub fn delete(&mut self, table: &str, row: Uuid) -> Result<(), StoreError> {
        self.set_exists(table, row, false)
    }

    fn set_exists(&mut self, table: &str, row: Uuid, exists: bool) -> Result<(), StoreError> {
        let mut base: Vec<WriteId> = self.store.row_heads(table, row)?.into_iter().map(|w| w.id).collect();
        base.extend(self.staged.iter().filter(|((t, r, _), _)| t == table && *r == row).map(|(_, id)| *id));
        base.sort();
        base.dedup();
        self.stage_write(table, row, exists_field(), Value::Bool(exists), base)
    }

    /// Resolves a field's conflict: one write naming every head.
    pub fn resolve(
        &mut self,
        table: &str,
        row: Uuid,
        field: &str,
        heads: Vec<WriteId>,
        value: Value,
    ) -> Result<(), StoreError> {
        let mut base = heads;
        if field != exists_field() {
            base.extend(self.heads_of(table, row, exists_field())?);
        }
        base.sort();
        base.dedup();
        self.stage_write(table, row, field, value, base)
    }

    /// Inserts a ledger row with a new id; returns the id.
    pub fn insert(&mut self, table: &str, data: Value) -> Result<Uuid, StoreError> {
        let id = self.new_id();
        self.insert_with_id(table, id, data)?;
        Ok(id)
    }

    /// Queues another device's operation unchanged (pending changes carried
    /// over from a till that is gone). Its ids and origin stay, so every
    /// replica stores the very same rows and writes.
    pub fn relay(&mut self, op: Op) -> Result<(), StoreError> {
        op.check(&self.store.schema)?;
        if let Op::Write(w) = &op {
            self.store.clock.observe(w.id.hlc);
        }
        if let Op::Insert(r) = &op {
            self.store.clock.observe(r.hlc);
        }
        self.ops.push(op);
        Ok(())
    }

    /// Inserts a ledger row of another store (the hub seeds stores' stock).
    pub fn insert_in(&mut self, store: Uuid, table: &str, data: Value) -> Result<Uuid, StoreError> {
        let id = self.new_id();
        let row = LedgerRow {
            table: table.into(),
            id,
            store,
            device: self.store.identity.device_id,
            hlc: self.store.clock.tick(self.now_ms),
            data,
        };
        let op = Op::Insert(row);
        op.check(&self.store.schema)?;
        self.ops.push(op);
        Ok(id)
    }

    /// Inserts a ledger row with a given id.
    pub fn insert_with_id(&mut self, table: &str, id: Uuid, data: Value) -> Result<(), StoreError> {
        let row = LedgerRow {
            table: table.into(),
            id,
            store: self.store.identity.store_id,
            device: self.store.identity.device_id,
            hlc: self.store.clock.tick(self.now_ms),
            data,
        };
        let op = Op::Insert(row);
        op.check(&self.store.schema)?;
        self.ops.push(op);
        Ok(())
    }
}

impl Store {
    /// Runs one local action in one durable transaction: the closure stages
    /// operations, which are applied and queued in the outbox. Nothing is
    /// written if the closure fails.
    pub fn write<T>(
        &mut self,
        now_ms: u64,
        f: impl FnOnce(&mut Local<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_then(now_ms, f, |_, _| Ok(()))
    }

    /// Like [`Store::write`], and runs `then` with the queued change inside
    /// the same transaction (the hub appends its own changes to its log).
    pub fn write_then<T>(
        &mut self,
        now_ms: u64,
        f: impl FnOnce(&mut Local<'_>) -> Result<T, StoreError>,
        then: impl FnOnce(&rusqlite::Connection, &Change) -> Result<(), StoreError>,
    ) -> Result<T, StoreError> {
        // A point-in-time export (`till hub export`) is a record of the past.
        if self.identity().mode == "export" {
            return Err(StoreError::ReadOnly);
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            let mut local = Local { store: self, ops: Vec::new(), now_ms, staged: BTreeMap::new() };
            let out = f(&mut local)?;
            let ops = std::mem::take(&mut local.ops);
            if !ops.is_empty() {
                let change = self.queue(ops)?;
                then(&self.conn, &change)?;
            }
            Ok(out)
        })();
        match result {
            Ok(out) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(out)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.load_policies()?;
                Err(e)
            }
        }
    }

    /// Applies staged operations and appends them to the outbox as one change.
    fn queue(&mut self, ops: Vec<Op>) -> Result<Change, StoreError> {
        self.apply_ops(&ops)?;
        let lane = lane_for(&self.schema, &ops)?;
        let seq: i64 = self
            .conn
            .prepare_cached("UPDATE lanes SET next_seq = next_seq + 1 WHERE lane = ?1 RETURNING next_seq - 1")?
            .query_row([lane.as_str()], |r| r.get(0))?;
        let change = Change { device: self.identity.device_id, lane, seq: seq as u64, hlc: self.clock.last(), ops };
        let (json, digest) = change.encode();
        self.conn
            .prepare_cached("INSERT INTO outbox(lane, seq, digest, change) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![lane.as_str(), seq, digest, json])?;
        self.meta_set("hlc", &self.clock.last().0.to_string())?;
        Ok(change)
    }
}
