//! Reads: catalogue, stock, sales, reports, conflicts, status and digest.

use crate::apply::{parse_uuid, parse_write_id};
use crate::{Store, StoreError};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tillsync_core::change::{LedgerRow, StateKey};
use tillsync_core::digest::StateDigest;
use tillsync_core::domain::XReport;
use tillsync_core::merge::{Conflict, Write};
use tillsync_core::schema::tables;
use tillsync_core::stock::{self, Count, Movement};
use tillsync_core::{Change, ConflictStatus, Hlc, Lane};
use uuid::Uuid;

pub(crate) fn parse_json(s: &str) -> Result<Value, StoreError> {
    Ok(serde_json::from_str(s)?)
}

/// A product as listed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProductRow {
    pub sku: String,
    pub name: String,
    pub price_minor: i64,
    pub tax_rate_bp: i64,
    pub category: Option<String>,
    pub barcode: Option<String>,
    pub active: bool,
}

/// Stock of one SKU.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StockRow {
    pub sku: String,
    pub on_hand: i64,
    pub oversold: bool,
}

/// A sale as listed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SaleSummary {
    pub sale_id: Uuid,
    pub receipt: String,
    pub total_minor: i64,
    pub device_id: Uuid,
    pub at_ms: i64,
    pub refunded_minor: i64,
    pub voided: bool,
}

/// A ledger row as read back.
#[derive(Clone, Debug, Serialize)]
pub struct LedgerEntry {
    pub id: Uuid,
    pub data: Value,
}

/// A conflict as listed.
#[derive(Clone, Debug, Serialize)]
pub struct ConflictRow {
    pub id: String,
    pub table: String,
    pub row: Uuid,
    pub field: String,
    pub status: ConflictStatus,
    pub values: Vec<Value>,
    pub chosen: Option<String>,
}

/// Derived alerts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Alerts {
    /// SKUs whose merged stock is below zero.
    pub oversold: Vec<StockRow>,
    /// Sales refunded (or voided) for more than was sold: (receipt, sku, sold, refunded).
    pub over_refunded: Vec<Value>,
}

/// The till's status.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub device_id: Uuid,
    pub tenant_id: Uuid,
    pub store_id: Uuid,
    pub name: String,
    pub mode: String,
    pub receipt_prefix: String,
    pub pending: BTreeMap<String, i64>,
    pub pending_total: i64,
    pub state_digest: String,
    pub tenant_digest: String,
    pub conflicts_open: i64,
    pub conflicts_auto: i64,
    pub oversold: i64,
    pub over_refunded: i64,
    pub schema_version: i64,
    pub hlc: u64,
    /// `standalone`, `ok`, `revoked` or `error` (last round failed).
    pub hub_status: String,
    pub hub_url: Option<String>,
    pub last_sync_ms: Option<u64>,
    pub last_error: Option<String>,
    /// This till's clock minus the hub's, as last measured.
    pub skew_ms: Option<i64>,
    /// Set when the till's clock is far from the hub's.
    pub clock_warning: Option<String>,
    pub quarantined: i64,
}

fn rows_to_vec<T>(rows: impl Iterator<Item = rusqlite::Result<T>>) -> Result<Vec<T>, StoreError> {
    let mut v = Vec::new();
    for r in rows {
        v.push(r?);
    }
    Ok(v)
}

impl Store {
    /// Every live row of a record table, as (id, fields).
    pub fn records_of(&self, table: &str) -> Result<Vec<(Uuid, Value)>, StoreError> {
        let mut st =
            self.conn.prepare_cached("SELECT row_id, data FROM records WHERE tbl = ?1 AND live = 1 ORDER BY row_id")?;
        let rows = rows_to_vec(st.query_map([table], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?)?;
        rows.into_iter().map(|(id, d)| Ok((parse_uuid(&id)?, parse_json(&d)?))).collect()
    }

    /// Ledger rows of a table with a given key.
    pub fn ledger_by_key(&self, table: &str, key: &str) -> Result<Vec<(Uuid, Value)>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT id, data FROM ledger WHERE tbl = ?1 AND key = ?2")?;
        let rows =
            rows_to_vec(st.query_map(params![table, key], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?)?;
        rows.into_iter().map(|(id, d)| Ok((parse_uuid(&id)?, parse_json(&d)?))).collect()
    }

    /// Every ledger row of a table, oldest first.
    pub fn ledger_rows(&self, table: &str) -> Result<Vec<LedgerRow>, StoreError> {
        // Sales, the biggest table, come in order from their time index;
        // other tables are found by `ledger_key` and sorted.
        let sql = if table == tables::SALES {
            // The literal, not `?1`: a partial index serves only a query
            // whose WHERE implies the index's own.
            "SELECT id, store_id, device, hlc, data FROM ledger INDEXED BY ledger_sales_hlc WHERE tbl = 'sales' AND tbl = ?1 ORDER BY hlc, id"
        } else {
            "SELECT id, store_id, device, hlc, data FROM ledger WHERE tbl = ?1 ORDER BY hlc, id"
        };
        let mut st = self.conn.prepare_cached(sql)?;
        let rows = rows_to_vec(st.query_map([table], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?)?;
        rows.into_iter()
            .map(|(id, s, d, h, data)| {
                Ok(LedgerRow {
                    table: table.to_string(),
                    id: parse_uuid(&id)?,
                    store: parse_uuid(&s)?,
                    device: parse_uuid(&d)?,
                    hlc: Hlc(h as u64),
                    data: parse_json(&data)?,
                })
            })
            .collect()
    }

    /// The counts and movements of one SKU.
    pub(crate) fn stock_inputs(&self, sku: &str) -> Result<(Vec<Count>, Vec<Movement>), StoreError> {
        let mut st = self.conn.prepare_cached("SELECT id, hlc, data FROM ledger WHERE tbl = ?1 AND key = ?2")?;
        let counts = rows_to_vec(st.query_map(params![tables::STOCK_COUNTS, sku], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
        })?)?;
        let moves = rows_to_vec(st.query_map(params![tables::STOCK_MOVEMENTS, sku], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
        })?)?;
        let counts = counts
            .into_iter()
            .map(|(id, hlc, d)| {
                let v = parse_json(&d)?;
                Ok(Count {
                    id: parse_uuid(&id)?,
                    hlc: Hlc(hlc as u64),
                    qty: v["qty"].as_i64().unwrap_or(0),
                    base_count: v["base_count"].as_str().and_then(|s| Uuid::parse_str(s).ok()),
                    seen: serde_json::from_value(v["seen"].clone()).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let moves = moves
            .into_iter()
            .map(|(id, _, d)| Ok(Movement { id: parse_uuid(&id)?, qty: parse_json(&d)?["qty"].as_i64().unwrap_or(0) }))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((counts, moves))
    }

    /// Stock on hand of one SKU.
    pub fn on_hand(&self, sku: &str) -> Result<i64, StoreError> {
        let (c, m) = self.stock_inputs(sku)?;
        Ok(stock::on_hand(&c, &m))
    }

    /// Stock of every product and of every SKU with movements.
    pub fn stock_list(&self) -> Result<Vec<StockRow>, StoreError> {
        let mut skus: BTreeSet<String> = self.products()?.into_iter().map(|p| p.sku).collect();
        let mut st = self
            .conn
            .prepare_cached("SELECT DISTINCT key FROM ledger WHERE tbl IN ('stock_movements', 'stock_counts')")?;
        for k in rows_to_vec(st.query_map([], |r| r.get::<_, String>(0))?)? {
            skus.insert(k);
        }
        skus.into_iter()
            .map(|sku| {
                let on_hand = self.on_hand(&sku)?;
                Ok(StockRow { sku, on_hand, oversold: on_hand < 0 })
            })
            .collect()
    }

    /// The live products, by SKU.
    pub fn products(&self) -> Result<Vec<ProductRow>, StoreError> {
        let mut out: Vec<ProductRow> =
            self.records_of(tables::PRODUCTS)?.into_iter().map(|(_, d)| product_row(&d)).collect();
        out.sort_by(|a, b| a.sku.cmp(&b.sku));
        Ok(out)
    }

    /// One product.
    pub fn product(&self, sku: &str) -> Result<ProductRow, StoreError> {
        match self.record(tables::PRODUCTS, self.product_id(sku))? {
            Some((true, d)) => Ok(product_row(&d)),
            _ => Err(StoreError::UnknownSku(sku.to_string())),
        }
    }

    /// Sales, newest first, at most `limit_len`.
    pub fn sales(&self, limit_len: usize) -> Result<Vec<SaleSummary>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, data FROM ledger INDEXED BY ledger_sales_hlc WHERE tbl = 'sales' ORDER BY hlc DESC, id DESC LIMIT ?1")?;
        let rows =
            rows_to_vec(st.query_map([limit_len as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?)?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, d) in rows {
            let v = parse_json(&d)?;
            let refunded: i64 = self
                .ledger_by_key(tables::REFUNDS, &id)?
                .iter()
                .map(|(_, r)| r["total_minor"].as_i64().unwrap_or(0))
                .sum();
            let voided = !self.ledger_by_key(tables::VOIDS, &id)?.is_empty();
            out.push(SaleSummary {
                sale_id: parse_uuid(&id)?,
                receipt: v["receipt"].as_str().unwrap_or("").to_string(),
                total_minor: v["total_minor"].as_i64().unwrap_or(0),
                device_id: v["device_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).unwrap_or_default(),
                at_ms: v["at_ms"].as_i64().unwrap_or(0),
                refunded_minor: refunded,
                voided,
            });
        }
        Ok(out)
    }

    /// Number of sales held.
    pub fn sales_count(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("SELECT count(*) FROM ledger WHERE tbl = 'sales'", [], |r| r.get(0))?)
    }

    /// The X report over ledger rows whose `at_ms` is in [from_ms, to_ms).
    pub fn report(&self, from_ms: i64, to_ms: i64) -> Result<XReport, StoreError> {
        let in_range = |v: &Value| v["at_ms"].as_i64().is_some_and(|t| t >= from_ms && t < to_ms);
        let staff: BTreeMap<String, String> = self
            .records_of(tables::STAFF)?
            .into_iter()
            .map(|(id, d)| (id.to_string(), d["name"].as_str().unwrap_or("?").to_string()))
            .collect();
        let mut rep = XReport::default();
        let mut sales: BTreeMap<Uuid, Value> = BTreeMap::new();
        for r in self.ledger_rows(tables::SALES)? {
            sales.insert(r.id, r.data.clone());
            if in_range(&r.data) {
                let who =
                    r.data["staff_id"].as_str().and_then(|s| staff.get(s)).cloned().unwrap_or_else(|| "(none)".into());
                rep.add_sale(&r.data, &who);
            }
        }
        for r in self.ledger_rows(tables::REFUNDS)?.into_iter().filter(|r| in_range(&r.data)) {
            rep.add_refund(&r.data);
        }
        for r in self.ledger_rows(tables::VOIDS)?.into_iter().filter(|r| in_range(&r.data)) {
            let sale = r.data["sale_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).and_then(|id| sales.get(&id));
            if let Some(s) = sale {
                let cash: i64 = s["payments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["method"] == "cash")
                    .map(|p| p["amount_minor"].as_i64().unwrap_or(0))
                    .sum();
                rep.add_void(s["total_minor"].as_i64().unwrap_or(0), cash);
            }
        }
        for r in self.ledger_rows(tables::CASH_MOVEMENTS)?.into_iter().filter(|r| in_range(&r.data)) {
            rep.add_cash_movement(&r.data);
        }
        Ok(rep)
    }

    /// All conflicts: current (`auto`, `open`) and `resolved`.
    pub fn conflicts(&self) -> Result<Vec<Conflict>, StoreError> {
        // Several writes may have resolved the same conflict: list it once.
        let mut st = self.conn.prepare_cached(
            "SELECT body FROM conflicts UNION ALL SELECT body FROM (SELECT body, id FROM resolved GROUP BY id)",
        )?;
        let rows = rows_to_vec(st.query_map([], |r| r.get::<_, String>(0))?)?;
        let mut out: Vec<Conflict> = rows.iter().map(|b: &String| serde_json::from_str(b)).collect::<Result<_, _>>()?;
        out.sort_by(|a, b| (&a.table, a.row, &a.field, &a.id).cmp(&(&b.table, b.row, &b.field, &b.id)));
        Ok(out)
    }

    /// One conflict by id (or unique id prefix).
    pub fn conflict(&self, id: &str) -> Result<Conflict, StoreError> {
        let matches: Vec<Conflict> =
            self.conflicts()?.into_iter().filter(|c| c.id.starts_with(id) && !id.is_empty()).collect();
        // A resolved entry and a current one never share an id; prefer the current one.
        let mut current = matches.iter().filter(|c| c.status != ConflictStatus::Resolved);
        if let Some(c) = current.next() {
            return Ok(c.clone());
        }
        matches
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound(format!("no conflict '{id}': see `till conflicts list`")))
    }

    /// Derived alerts: oversold SKUs and over-refunded sales.
    pub fn alerts(&self) -> Result<Alerts, StoreError> {
        let oversold = self.stock_list()?.into_iter().filter(|s| s.oversold).collect();
        let mut over = Vec::new();
        let mut refunded: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for r in self.ledger_rows(tables::REFUNDS)? {
            let e = refunded.entry(r.data["sale_id"].as_str().unwrap_or("").to_string()).or_default();
            for l in r.data["lines"].as_array().into_iter().flatten() {
                *e.entry(l["sku"].as_str().unwrap_or("").to_string()).or_default() += l["qty"].as_i64().unwrap_or(0);
            }
        }
        for (sale_id, by_sku) in refunded {
            let sale = self
                .conn
                .query_row("SELECT data FROM ledger WHERE id = ?1 AND tbl = 'sales'", [&sale_id], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?;
            let Some(sale) = sale else { continue };
            let sale = parse_json(&sale)?;
            let voided = !self.ledger_by_key(tables::VOIDS, &sale_id)?.is_empty();
            let mut sold: BTreeMap<String, i64> = BTreeMap::new();
            for l in sale["lines"].as_array().into_iter().flatten() {
                *sold.entry(l["sku"].as_str().unwrap_or("").to_string()).or_default() += l["qty"].as_i64().unwrap_or(0);
            }
            for (sku, q) in by_sku {
                let s = sold.get(&sku).copied().unwrap_or(0);
                let back = q + if voided { s } else { 0 };
                if back > s {
                    over.push(json!({"receipt": sale["receipt"], "sku": sku, "sold": s, "refunded": back}));
                }
            }
        }
        Ok(Alerts { oversold, over_refunded: over })
    }

    /// Pending (not yet acknowledged) changes per lane.
    pub fn pending(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT lane, next_seq - 1 - acked_seq FROM lanes")?;
        let rows = rows_to_vec(st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?)?;
        Ok(rows.into_iter().collect())
    }

    /// Changes of this till in one lane with a sequence above `after_seq`.
    pub fn outbox(&self, lane: Lane, after_seq: u64, limit_len: usize) -> Result<Vec<Change>, StoreError> {
        let mut st =
            self.conn.prepare_cached("SELECT change FROM outbox WHERE lane = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")?;
        let rows = rows_to_vec(
            st.query_map(params![lane.as_str(), after_seq as i64, limit_len as i64], |r| r.get::<_, String>(0))?,
        )?;
        rows.iter().map(|c| Ok(serde_json::from_str(c)?)).collect()
    }

    /// The state digest over everything this till holds (tenant records and
    /// its store's ledgers), and the tenant-wide digest over records only.
    pub fn digests(&self) -> Result<(String, String), StoreError> {
        self.digests_for(None)
    }

    /// Digests limited to one store's ledgers (the hub holds every store of
    /// a tenant; a till holds only its own, so `None` means "all held").
    pub fn digests_for(&self, store: Option<Uuid>) -> Result<(String, String), StoreError> {
        let mut state = StateDigest::default();
        let mut tenant = StateDigest::default();
        let mut st = self.conn.prepare(
            "SELECT w.id, w.tbl, w.row_id, w.field, w.value, w.base FROM heads h JOIN writes w ON w.id = h.write_id
             ORDER BY h.tbl, h.row_id, h.field, h.write_id",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let w = Write {
                id: parse_write_id(&r.get::<_, String>(0)?)?,
                table: r.get(1)?,
                row: parse_uuid(&r.get::<_, String>(2)?)?,
                field: r.get(3)?,
                value: parse_json(&r.get::<_, String>(4)?)?,
                base: serde_json::from_str(&r.get::<_, String>(5)?)?,
            };
            state.add_head(&w);
            tenant.add_head(&w);
        }
        let mut st = self.conn.prepare(
            "SELECT tbl, id, store_id, device, hlc, data FROM ledger WHERE ?1 IS NULL OR store_id = ?1 ORDER BY tbl, id",
        )?;
        let mut rows = st.query([store.map(|s| s.to_string())])?;
        while let Some(r) = rows.next()? {
            let row = LedgerRow {
                table: r.get(0)?,
                id: parse_uuid(&r.get::<_, String>(1)?)?,
                store: parse_uuid(&r.get::<_, String>(2)?)?,
                device: parse_uuid(&r.get::<_, String>(3)?)?,
                hlc: Hlc(r.get::<_, i64>(4)? as u64),
                data: parse_json(&r.get::<_, String>(5)?)?,
            };
            state.add_ledger(&row);
        }
        Ok((state.finish(), tenant.finish()))
    }

    /// The till's status.
    pub fn status(&self) -> Result<Status, StoreError> {
        let pending = self.pending()?;
        let (state_digest, tenant_digest) = self.digests()?;
        let count = |status: &str| -> Result<i64, StoreError> {
            Ok(self.conn.query_row("SELECT count(*) FROM conflicts WHERE status = ?1", [status], |r| r.get(0))?)
        };
        let alerts = self.alerts()?;
        let last_error = self.meta_get("last_error")?.filter(|e| !e.is_empty());
        let skew_ms: Option<i64> = self.meta_get("skew_ms")?.and_then(|v| v.parse().ok());
        let id = &self.identity;
        Ok(Status {
            device_id: id.device_id,
            tenant_id: id.tenant_id,
            store_id: id.store_id,
            name: id.name.clone(),
            mode: id.mode.clone(),
            receipt_prefix: id.receipt_prefix.clone(),
            pending_total: pending.values().sum(),
            pending,
            state_digest,
            tenant_digest,
            conflicts_open: count("open")?,
            conflicts_auto: count("auto")?,
            oversold: alerts.oversold.len() as i64,
            over_refunded: alerts.over_refunded.len() as i64,
            schema_version: crate::migrate::SCHEMA_VERSION,
            hlc: self.clock.last().0,
            hub_status: hub_status(&self.meta_get("hub_url")?, &self.meta_get("hub_status")?, &last_error),
            hub_url: self.meta_get("hub_url")?,
            last_sync_ms: self.meta_get("last_sync_ms")?.and_then(|v| v.parse().ok()),
            last_error,
            skew_ms,
            clock_warning: skew_ms.filter(|s| s.abs() > CLOCK_SKEW_WARN_MS).map(|s| {
                format!(
                    "this till's clock is {} s {} the hub's: set the date and time (or enable network time)",
                    s.abs() / 1_000,
                    if s > 0 { "ahead of" } else { "behind" }
                )
            }),
            quarantined: self.conn.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?,
        })
    }

    /// The current heads of every field of a record row (for tests and
    /// diagnostics).
    pub fn heads(&self, table: &str, row: Uuid) -> Result<Vec<Write>, StoreError> {
        self.row_heads(table, row)
    }

    /// A record row's materialised state: (live, fields).
    pub fn record_state(&self, table: &str, row: Uuid) -> Result<Option<(bool, Value)>, StoreError> {
        self.record(table, row)
    }
}

/// A clock further than this from the hub's is warned about, in ms.
pub const CLOCK_SKEW_WARN_MS: i64 = 120_000;

fn hub_status(url: &Option<String>, status: &Option<String>, last_error: &Option<String>) -> String {
    match (url, status.as_deref(), last_error) {
        (None, _, _) => "standalone".into(),
        (_, Some("revoked"), _) => "revoked".into(),
        (_, _, Some(_)) => "error".into(),
        _ => "ok".into(),
    }
}

fn product_row(d: &Value) -> ProductRow {
    ProductRow {
        sku: d["sku"].as_str().unwrap_or("").to_string(),
        name: d["name"].as_str().unwrap_or("").to_string(),
        price_minor: d["price_minor"].as_i64().unwrap_or(0),
        tax_rate_bp: d["tax_rate_bp"].as_i64().unwrap_or(0),
        category: d["category"].as_str().map(str::to_string),
        barcode: d["barcode"].as_str().map(str::to_string),
        active: d["active"].as_bool().unwrap_or(true),
    }
}

impl Store {
    /// The merged state of a scope as operations: every write of every
    /// record row (heads, tombstones and the writes they superseded) and
    /// every ledger row of `store` (all stores when `None`). Applying them
    /// to an empty till gives the same heads, values, conflicts and digest.
    /// Superseded writes are included because a till that bootstraps again
    /// may hold an old head: it must learn what superseded it, even when the
    /// hub's log no longer has the entries in between (compaction).
    pub fn snapshot_ops(&self, store: Option<Uuid>) -> Result<Vec<tillsync_core::Op>, StoreError> {
        let mut out = Vec::new();
        let mut st = self
            .conn
            .prepare("SELECT id, tbl, row_id, field, value, base FROM writes ORDER BY tbl, row_id, field, id")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            out.push(tillsync_core::Op::Write(Write {
                id: parse_write_id(&r.get::<_, String>(0)?)?,
                table: r.get(1)?,
                row: parse_uuid(&r.get::<_, String>(2)?)?,
                field: r.get(3)?,
                value: parse_json(&r.get::<_, String>(4)?)?,
                base: serde_json::from_str(&r.get::<_, String>(5)?)?,
            }));
        }
        let mut st = self.conn.prepare(
            "SELECT tbl, id, store_id, device, hlc, data FROM ledger WHERE ?1 IS NULL OR store_id = ?1 ORDER BY hlc, id",
        )?;
        let mut rows = st.query([store.map(|s| s.to_string())])?;
        while let Some(r) = rows.next()? {
            out.push(tillsync_core::Op::Insert(LedgerRow {
                table: r.get(0)?,
                id: parse_uuid(&r.get::<_, String>(1)?)?,
                store: parse_uuid(&r.get::<_, String>(2)?)?,
                device: parse_uuid(&r.get::<_, String>(3)?)?,
                hlc: Hlc(r.get::<_, i64>(4)? as u64),
                data: parse_json(&r.get::<_, String>(5)?)?,
            }));
        }
        Ok(out)
    }

    /// The operations of the state in `store`'s scope (every record write,
    /// and the ledger rows of `store`, or of every store for `None`) after
    /// `after` and up to `through` (inclusive), in the order of
    /// [`StateKey`], at most `limit_len`: a page of a snapshot (the hub)
    /// or the range a page covered (a till checking what the hub lacks).
    /// Reads by key ranges of indexes, so a page costs its own rows, not
    /// the whole state.
    pub fn state_ops(
        &self,
        store: Option<Uuid>,
        after: Option<&StateKey>,
        through: Option<&StateKey>,
        limit_len: usize,
    ) -> Result<Vec<tillsync_core::Op>, StoreError> {
        let mut out = Vec::new();
        let limit = limit_len.min(i64::MAX as usize) as i64;
        // Record writes come first: skipped when `after` is already a ledger
        // row. (table, row, id) is the `writes_row` index (a WITHOUT ROWID
        // table's index ends with its primary key), so this is a range scan.
        if !matches!(after, Some(StateKey::Ledger { .. })) {
            let mut sql = String::from("SELECT id, tbl, row_id, field, value, base FROM writes WHERE 1");
            let mut args: Vec<String> = vec![];
            if let Some(StateKey::Write { table, row, id }) = after {
                sql += " AND (tbl, row_id, id) > (?1, ?2, ?3)";
                args.extend([table.clone(), row.to_string(), id.to_string()]);
            }
            if let Some(StateKey::Write { table, row, id }) = through {
                let n = args.len();
                sql += &format!(" AND (tbl, row_id, id) <= (?{}, ?{}, ?{})", n + 1, n + 2, n + 3);
                args.extend([table.clone(), row.to_string(), id.to_string()]);
            }
            sql += &format!(" ORDER BY tbl, row_id, id LIMIT {limit}");
            let mut st = self.conn.prepare_cached(&sql)?;
            let mut rows = st.query(rusqlite::params_from_iter(args.iter()))?;
            while let Some(r) = rows.next()? {
                out.push(tillsync_core::Op::Write(Write {
                    id: parse_write_id(r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?)?,
                    table: r.get(1)?,
                    row: parse_uuid(r.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?)?,
                    field: r.get(3)?,
                    value: parse_json(r.get_ref(4)?.as_str().map_err(rusqlite::Error::from)?)?,
                    base: serde_json::from_str(r.get_ref(5)?.as_str().map_err(rusqlite::Error::from)?)?,
                }));
            }
        }
        let room = limit - out.len() as i64;
        if room <= 0 || matches!(through, Some(StateKey::Write { .. })) {
            return Ok(out);
        }
        let mut sql = String::from("SELECT tbl, id, store_id, device, hlc, data FROM ledger WHERE 1");
        let mut args: Vec<String> = vec![];
        if let Some(store) = store {
            sql += " AND store_id = ?1";
            args.push(store.to_string());
        }
        if let Some(StateKey::Ledger { id }) = after {
            sql += &format!(" AND id > ?{}", args.len() + 1);
            args.push(id.to_string());
        }
        if let Some(StateKey::Ledger { id }) = through {
            sql += &format!(" AND id <= ?{}", args.len() + 1);
            args.push(id.to_string());
        }
        sql += &format!(" ORDER BY id LIMIT {room}");
        let mut st = self.conn.prepare_cached(&sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(args.iter()))?;
        while let Some(r) = rows.next()? {
            out.push(tillsync_core::Op::Insert(LedgerRow {
                table: r.get(0)?,
                id: parse_uuid(r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?)?,
                store: parse_uuid(r.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?)?,
                device: parse_uuid(r.get_ref(3)?.as_str().map_err(rusqlite::Error::from)?)?,
                hlc: Hlc(r.get::<_, i64>(4)? as u64),
                data: parse_json(r.get_ref(5)?.as_str().map_err(rusqlite::Error::from)?)?,
            }));
        }
        Ok(out)
    }

    /// How many operations the state holds in `store`'s scope (see
    /// [`Store::state_ops`]).
    pub fn state_len(&self, store: Option<Uuid>) -> Result<u64, StoreError> {
        let writes: i64 = self.conn.query_row("SELECT count(*) FROM writes", [], |r| r.get(0))?;
        let ledger: i64 = match store {
            Some(s) => {
                self.conn.query_row("SELECT count(*) FROM ledger WHERE store_id = ?1", [s.to_string()], |r| r.get(0))?
            }
            None => self.conn.query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))?,
        };
        Ok((writes + ledger) as u64)
    }

    /// Gives the ledger a hub's indexes instead of a till's. A hub's tenant
    /// state is written by pushes and read by id (snapshot pages, duplicate
    /// rows), by store or whole (digests), never by receipt, SKU or sale
    /// time: a till's `ledger_key` and `ledger_sales_hlc` are dropped. Rows
    /// of many tills arrive interleaved in time, so every index took
    /// scattered inserts on every push (BENCHMARKS.md, issue 3). With
    /// `by_store` (a tenant of two or more stores) the ledger is indexed by
    /// `(store_id, id)`, to page and count one store's rows among many;
    /// without, that index is dropped too, since it cost a one-store
    /// tenant about a quarter of its ingest rate for nothing. After this,
    /// [`Store::sales`] and `ledger_rows("sales")`, which name the time
    /// index, refuse with "no such index"; key lookups scan.
    pub fn set_hub_indexes(&self, by_store: bool) -> Result<(), StoreError> {
        self.conn.execute_batch("DROP INDEX IF EXISTS ledger_key; DROP INDEX IF EXISTS ledger_sales_hlc;")?;
        self.conn.execute_batch(if by_store {
            "CREATE INDEX IF NOT EXISTS hub_ledger_store ON ledger(store_id, id)"
        } else {
            "DROP INDEX IF EXISTS hub_ledger_store"
        })?;
        Ok(())
    }
}
