//! Versioned migrations, tracked in `PRAGMA user_version`.

use crate::StoreError;
use rusqlite::Connection;

/// Each entry moves the schema one version up. Never edit a shipped entry;
/// append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: identity, record writes and heads, ledger rows, outbox.
    r#"
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE writes(
        id TEXT PRIMARY KEY, tbl TEXT NOT NULL, row_id TEXT NOT NULL,
        field TEXT NOT NULL, value TEXT NOT NULL, base TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX writes_row ON writes(tbl, row_id);
    CREATE TABLE named(
        named_id TEXT NOT NULL, field TEXT NOT NULL, namer_id TEXT NOT NULL,
        PRIMARY KEY(named_id, field, namer_id)
    ) WITHOUT ROWID;
    CREATE TABLE heads(
        tbl TEXT NOT NULL, row_id TEXT NOT NULL, field TEXT NOT NULL, write_id TEXT NOT NULL,
        PRIMARY KEY(tbl, row_id, field, write_id)
    ) WITHOUT ROWID;
    CREATE TABLE records(
        tbl TEXT NOT NULL, row_id TEXT NOT NULL, live INTEGER NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY(tbl, row_id)
    ) WITHOUT ROWID;
    CREATE TABLE conflicts(
        id TEXT PRIMARY KEY, tbl TEXT NOT NULL, row_id TEXT NOT NULL, field TEXT NOT NULL,
        status TEXT NOT NULL, body TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX conflicts_row ON conflicts(tbl, row_id);
    -- Two writes can resolve the same conflict, so resolved ones are kept per resolver.
    CREATE TABLE resolved(
        resolver_id TEXT PRIMARY KEY, id TEXT NOT NULL, tbl TEXT NOT NULL, row_id TEXT NOT NULL,
        field TEXT NOT NULL, body TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE ledger(
        id TEXT PRIMARY KEY, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
        device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX ledger_key ON ledger(tbl, key);
    CREATE INDEX ledger_hlc ON ledger(tbl, hlc);
    CREATE TABLE lanes(lane TEXT PRIMARY KEY, next_seq INTEGER NOT NULL, acked_seq INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO lanes VALUES ('sales', 1, 0), ('stock', 1, 0), ('catalog', 1, 0), ('telemetry', 1, 0);
    CREATE TABLE outbox(
        lane TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL, change TEXT NOT NULL,
        PRIMARY KEY(lane, seq)
    ) WITHOUT ROWID;
    "#,
    // 2: what the hub told this till: quarantined changes.
    r#"
    CREATE TABLE quarantine(
        lane TEXT NOT NULL, seq INTEGER NOT NULL, reason TEXT NOT NULL, at_ms INTEGER NOT NULL,
        PRIMARY KEY(lane, seq)
    ) WITHOUT ROWID;
    "#,
    // 3: ledger rows stored in arrival order (a rowid table) instead of in
    // id order. Rows of many tills arrive interleaved in time, so in id
    // order every insert of a pulled page or a hub push landed on a page of
    // its own; in arrival order they fill pages at the end, and only the
    // small index entries scatter. The time index holds sales only (the
    // newest-first list); other tables are read by key or sorted whole.
    // Pulls of interleaved tills went 2.6x faster in raw SQLite
    // (BENCHMARKS.md, "Ledger in arrival order").
    r#"
    CREATE TABLE ledger_v3(
        id TEXT NOT NULL UNIQUE, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
        device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL
    );
    INSERT INTO ledger_v3(id, tbl, key, store_id, device, hlc, data)
        SELECT id, tbl, key, store_id, device, hlc, data FROM ledger ORDER BY hlc, id;
    DROP TABLE ledger;
    ALTER TABLE ledger_v3 RENAME TO ledger;
    CREATE INDEX ledger_key ON ledger(tbl, key);
    CREATE INDEX ledger_sales_hlc ON ledger(hlc, id) WHERE tbl = 'sales';
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`SCHEMA_VERSION`]; refuses a newer one.
pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { found, supported: SCHEMA_VERSION });
    }
    // A new database (version 0) is made, not upgraded: nothing to say.
    let upgrade = found > 0 && found < SCHEMA_VERSION;
    let started = std::time::Instant::now();
    if upgrade {
        tracing::info!(from = found, to = SCHEMA_VERSION, "upgrading the database once; a large one takes a while");
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    if upgrade {
        tracing::info!(to = SCHEMA_VERSION, took_ms = started.elapsed().as_millis() as u64, "database upgraded");
    }
    Ok(())
}
