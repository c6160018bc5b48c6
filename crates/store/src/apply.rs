//! The one apply path: local actions and remote changes both end here.
//! The decisions (which heads a write supersedes, what a row's value and
//! conflicts are) are the core's pure functions; this module only loads
//! their inputs and stores their outputs.

use crate::{Store, StoreError};
use rusqlite::{OptionalExtension, params};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use tillsync_core::change::LedgerRow;
use tillsync_core::merge::{self, EXISTS_FIELD, Policy, Write, WriteId};
use tillsync_core::schema::tables;
use tillsync_core::{Change, Op};
use uuid::Uuid;

impl Store {
    /// Applies a change received from elsewhere (another till, the hub, a
    /// file of pending changes) in one durable transaction. Returns how many
    /// operations were new.
    pub fn apply_remote(&mut self, change: &Change) -> Result<usize, StoreError> {
        for op in &change.ops {
            op.check(&self.schema)?;
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let r = self.apply_ops(&change.ops);
        match r {
            Ok(n) => {
                self.clock.observe(change.max_hlc());
                self.meta_set("hlc", &self.clock.last().0.to_string())?;
                self.conn.execute_batch("COMMIT")?;
                Ok(n)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.load_policies()?;
                Err(e)
            }
        }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on this store's
    /// connection: committed if it returns Ok, rolled back otherwise. The hub
    /// uses it to write its log and apply the same change atomically.
    pub fn transaction<T, E: From<StoreError>>(&mut self, f: impl FnOnce(&mut Store) -> Result<T, E>) -> Result<T, E> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(StoreError::from)?;
        match f(self) {
            Ok(t) => {
                self.meta_set("hlc", &self.clock.last().0.to_string())?;
                self.conn.execute_batch("COMMIT").map_err(StoreError::from)?;
                Ok(t)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.load_policies()?;
                Err(e)
            }
        }
    }

    /// Opens a transaction that several units of work share (the hub's group
    /// commit): one [`Store::commit`] makes them all durable with one sync.
    pub fn begin(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    /// Rolls back the transaction opened by [`Store::begin`].
    pub fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        let _ = self.load_policies();
    }

    /// Commits the transaction opened by [`Store::begin`]; on failure it is
    /// rolled back whole.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let r = self.meta_set("hlc", &self.clock.last().0.to_string()).and_then(|()| {
            self.conn.execute_batch("COMMIT")?;
            Ok(())
        });
        if r.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
            let _ = self.load_policies();
        }
        r
    }

    /// Checks and applies remote operations inside [`Store::transaction`];
    /// the clock observes them. Returns how many were new.
    pub fn apply_in_transaction(&mut self, ops: &[Op]) -> Result<usize, StoreError> {
        for op in ops {
            op.check(&self.schema)?;
        }
        let n = self.apply_ops(ops)?;
        for op in ops {
            self.clock.observe(match op {
                Op::Write(w) => w.id.hlc,
                Op::Insert(r) => r.hlc,
            });
        }
        Ok(n)
    }

    /// Applies operations inside an open transaction.
    pub(crate) fn apply_ops(&mut self, ops: &[Op]) -> Result<usize, StoreError> {
        let mut touched: BTreeSet<(String, Uuid)> = BTreeSet::new();
        let mut new_writes: Vec<&Write> = Vec::new();
        let mut applied = 0;
        for op in ops {
            match op {
                Op::Insert(row) => {
                    if self.insert_ledger(row)? {
                        applied += 1;
                    }
                }
                Op::Write(w) => {
                    if self.insert_write(w)? {
                        applied += 1;
                        touched.insert((w.table.clone(), w.row));
                        new_writes.push(w);
                    }
                }
            }
        }
        let policy_changed = touched.iter().any(|(t, _)| t == tables::POLICIES);
        // Policies first: they decide how every other row materialises.
        for (table, row) in touched.iter().filter(|(t, _)| t == tables::POLICIES) {
            self.rematerialize(table, *row)?;
        }
        if policy_changed {
            self.load_policies()?;
        }
        for (table, row) in touched.iter().filter(|(t, _)| t != tables::POLICIES) {
            self.rematerialize(table, *row)?;
        }
        if policy_changed {
            // A policy decides the value and status of every row of its table.
            let targets: BTreeSet<String> =
                self.policies.keys().map(|k| k.split('.').next().unwrap_or("").to_string()).collect();
            for t in targets {
                let rows: Vec<String> = {
                    let mut st = self.conn.prepare("SELECT row_id FROM records WHERE tbl = ?1")?;
                    st.query_map([&t], |r| r.get(0))?.collect::<Result<_, _>>()?
                };
                for r in rows {
                    self.rematerialize(&t, parse_uuid(&r)?)?;
                }
            }
        }
        for w in new_writes {
            self.derive_resolved(w)?;
        }
        Ok(applied)
    }

    fn insert_ledger(&mut self, row: &LedgerRow) -> Result<bool, StoreError> {
        let decl = self.schema.table(&row.table)?;
        let key = decl.key_field.as_ref().and_then(|k| row.data.get(k)).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        // `serde_json::to_string` writes the same compact text as `Display`
        // without going through a formatter: a bootstrap stores a million.
        let data = serde_json::to_string(&row.data)?;
        let n = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO ledger(id, tbl, key, store_id, device, hlc, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                row.id.to_string(),
                row.table,
                key,
                row.store.to_string(),
                row.device.to_string(),
                row.hlc.0 as i64,
                data
            ])?;
        Ok(n == 1)
    }

    /// Stores a write and updates the heads of its row. Returns false for a
    /// write already stored (duplicates are ignored).
    fn insert_write(&mut self, w: &Write) -> Result<bool, StoreError> {
        let id = w.id.to_string();
        let base = serde_json::to_string(&w.base)?;
        let n = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO writes(id, tbl, row_id, field, value, base) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![id, w.table, w.row.to_string(), w.field, w.value.to_string(), base])?;
        if n == 0 {
            return Ok(false);
        }
        {
            let mut st = self
                .conn
                .prepare_cached("INSERT OR IGNORE INTO named(named_id, field, namer_id) VALUES (?1, ?2, ?3)")?;
            for b in &w.base {
                st.execute(params![b.to_string(), w.field, id])?;
            }
        }
        let already_named: bool = self
            .conn
            .prepare_cached("SELECT 1 FROM named WHERE named_id = ?1 AND field = ?2 LIMIT 1")?
            .query_row(params![id, w.field], |_| Ok(()))
            .optional()?
            .is_some();
        let heads = self.field_heads(&w.table, w.row, &w.field)?;
        let delta = merge::apply_write(&heads, w, already_named);
        {
            let mut del = self
                .conn
                .prepare_cached("DELETE FROM heads WHERE tbl = ?1 AND row_id = ?2 AND field = ?3 AND write_id = ?4")?;
            for r in &delta.remove {
                del.execute(params![w.table, w.row.to_string(), w.field, r.to_string()])?;
            }
        }
        if delta.add {
            self.conn
                .prepare_cached("INSERT OR IGNORE INTO heads(tbl, row_id, field, write_id) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![w.table, w.row.to_string(), w.field, id])?;
        }
        Ok(true)
    }

    /// The current heads of one field.
    pub(crate) fn field_heads(&self, table: &str, row: Uuid, field: &str) -> Result<Vec<Write>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT w.id, w.value, w.base FROM heads h JOIN writes w ON w.id = h.write_id
             WHERE h.tbl = ?1 AND h.row_id = ?2 AND h.field = ?3",
        )?;
        let rows = st.query_map(params![table, row.to_string(), field], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for x in rows {
            let (id, value, base) = x?;
            out.push(Write {
                id: parse_write_id(&id)?,
                table: table.to_string(),
                row,
                field: field.to_string(),
                value: serde_json::from_str(&value)?,
                base: serde_json::from_str(&base)?,
            });
        }
        Ok(out)
    }

    /// The current heads of every field of a row.
    pub(crate) fn row_heads(&self, table: &str, row: Uuid) -> Result<Vec<Write>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT w.id, w.field, w.value, w.base FROM heads h JOIN writes w ON w.id = h.write_id
             WHERE h.tbl = ?1 AND h.row_id = ?2 ORDER BY h.field, h.write_id",
        )?;
        let rows = st.query_map(params![table, row.to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
        })?;
        let mut out = Vec::new();
        for x in rows {
            let (id, field, value, base) = x?;
            out.push(Write {
                id: parse_write_id(&id)?,
                table: table.to_string(),
                row,
                field,
                value: serde_json::from_str(&value)?,
                base: serde_json::from_str(&base)?,
            });
        }
        Ok(out)
    }

    /// How many writes named in `w`'s base are stored writes of its field.
    fn same_field_in_base(&self, w: &Write) -> Result<usize, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT field FROM writes WHERE id = ?1")?;
        let mut n = 0;
        for b in &w.base {
            let f: Option<String> = st.query_row([b.to_string()], |r| r.get(0)).optional()?;
            if f.as_deref() == Some(w.field.as_str()) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every stored write of a row (for conflict history).
    fn row_writes(&self, table: &str, row: Uuid) -> Result<Vec<Write>, StoreError> {
        let mut st =
            self.conn.prepare_cached("SELECT id, field, value, base FROM writes WHERE tbl = ?1 AND row_id = ?2")?;
        let rows = st.query_map(params![table, row.to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
        })?;
        let mut out = Vec::new();
        for x in rows {
            let (id, field, value, base) = x?;
            out.push(Write {
                id: parse_write_id(&id)?,
                table: table.to_string(),
                row,
                field,
                value: serde_json::from_str(&value)?,
                base: serde_json::from_str(&base)?,
            });
        }
        Ok(out)
    }

    pub(crate) fn policy_for(&self, table: &str, field: &str) -> Policy {
        self.policies.get(&format!("{table}.{field}")).or_else(|| self.policies.get(table)).copied().unwrap_or_default()
    }

    /// Recomputes a row's value, existence and current conflicts.
    fn rematerialize(&mut self, table: &str, row: Uuid) -> Result<(), StoreError> {
        let heads = self.row_heads(table, row)?;
        let view = merge::materialize(table, row, &heads, |f| self.policy_for(table, f));
        let data = Value::Object(view.fields.into_iter().collect());
        self.conn
            .prepare_cached(
                "INSERT INTO records(tbl, row_id, live, data) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(tbl, row_id) DO UPDATE SET live = excluded.live, data = excluded.data",
            )?
            .execute(params![table, row.to_string(), view.exists, data.to_string()])?;
        self.conn
            .prepare_cached("DELETE FROM conflicts WHERE tbl = ?1 AND row_id = ?2")?
            .execute(params![table, row.to_string()])?;
        let mut ins = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO conflicts(id, tbl, row_id, field, status, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for c in &view.conflicts {
            let status = serde_json::to_value(c.status)?;
            ins.execute(params![c.id, table, row.to_string(), c.field, status.as_str(), serde_json::to_string(c)?])?;
        }
        Ok(())
    }

    /// Records the conflict `w` resolved, and re-derives those of the
    /// writes that name `w` (a resolution can arrive before what it names).
    fn derive_resolved(&mut self, w: &Write) -> Result<(), StoreError> {
        let mut resolvers: Vec<WriteId> = vec![];
        // The common write names one head of its own field: it resolves
        // nothing, and the row's history need not be read (that would make a
        // busy row's writes cost more and more).
        if w.base.len() >= 2 && (w.field == EXISTS_FIELD || self.same_field_in_base(w)? >= 2) {
            resolvers.push(w.id);
        }
        {
            let mut st = self.conn.prepare_cached("SELECT namer_id, field FROM named WHERE named_id = ?1")?;
            let namers = st.query_map([w.id.to_string()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for n in namers {
                let (namer, field) = n?;
                // Only a write of the same field, or an existence write, can
                // have resolved a conflict this late arrival belongs to.
                if field == w.field || field == EXISTS_FIELD {
                    resolvers.push(parse_write_id(&namer)?);
                }
            }
        }
        if resolvers.is_empty() {
            return Ok(());
        }
        let all = self.row_writes(&w.table, w.row)?;
        let by_id: HashMap<WriteId, &Write> = all.iter().map(|x| (x.id, x)).collect();
        for rid in resolvers {
            let Some(resolver) = by_id.get(&rid) else { continue };
            if resolver.base.len() < 2 {
                continue;
            }
            let named: Vec<Write> = resolver.base.iter().filter_map(|b| by_id.get(b).map(|x| (*x).clone())).collect();
            self.conn.prepare_cached("DELETE FROM resolved WHERE resolver_id = ?1")?.execute([rid.to_string()])?;
            if let Some(c) = merge::resolved_conflict(resolver, &named) {
                self.conn
                    .prepare_cached("INSERT INTO resolved(resolver_id, id, tbl, row_id, field, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
                    .execute(params![rid.to_string(), c.id, c.table, c.row.to_string(), c.field, serde_json::to_string(&c)?])?;
            }
        }
        Ok(())
    }

    /// Reloads the tenant's conflict policies from the policies table.
    pub(crate) fn load_policies(&mut self) -> Result<(), StoreError> {
        let mut st = self.conn.prepare("SELECT data FROM records WHERE tbl = ?1 AND live = 1")?;
        let rows = st.query_map([tables::POLICIES], |r| r.get::<_, String>(0))?;
        let mut map = HashMap::new();
        for r in rows {
            let v: Value = serde_json::from_str(&r?)?;
            if let (Some(t), Some(m)) = (v["target"].as_str(), v["mode"].as_str().and_then(Policy::parse)) {
                map.insert(t.to_string(), m);
            }
        }
        drop(st);
        self.policies = map;
        Ok(())
    }

    /// Whether a record row exists and is live.
    pub(crate) fn record(&self, table: &str, row: Uuid) -> Result<Option<(bool, Value)>, StoreError> {
        let r: Option<(bool, String)> = self
            .conn
            .prepare_cached("SELECT live, data FROM records WHERE tbl = ?1 AND row_id = ?2")?
            .query_row(params![table, row.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match r {
            None => Ok(None),
            Some((live, data)) => Ok(Some((live, serde_json::from_str(&data)?))),
        }
    }
}

/// Which existence writes a field write or delete must name.
pub(crate) fn exists_field() -> &'static str {
    EXISTS_FIELD
}

pub(crate) fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("bad id '{s}'")))
}

pub(crate) fn parse_write_id(s: &str) -> Result<WriteId, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt(format!("bad write id '{s}'")))
}
