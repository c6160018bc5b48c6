//! The node's store: one SQLite file per till holding the synced state, the
//! outbox and the till's identity. Every local action and every remote
//! change goes through the same apply path ([`apply`]).
//!
//! Durability: WAL with `synchronous=FULL`, so a committed sale survives a
//! power cut; every local action is one `BEGIN IMMEDIATE` transaction.

mod apply;
mod error;
pub mod keys;
mod local;
mod migrate;
mod pos;
mod queries;
pub mod sample;
mod sync;

pub use error::StoreError;
pub use local::Local;
pub use pos::{
    CountOutcome, LineAdjust, ProductFields, RefundOutcome, SaleAdjustments, SaleOutcome, SaleRequest, compound_bp,
};
pub use queries::{Alerts, ConflictRow, LedgerEntry, ProductRow, SaleSummary, Status, StockRow};
pub use sync::{BootProgress, ImportReport, MetaUpdate, PENDING_FORMAT, Pending, PendingFile, QuarantineNote};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tillsync_core::merge::Policy;
use tillsync_core::{Hlc, HlcClock, IdGen, Schema};
use uuid::Uuid;

/// The database file inside a till's data folder.
pub const DB_FILE: &str = "till.db";

/// How long a writer waits for another process holding the database.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;
/// How often a waiting writer tries the database again, in milliseconds.
/// SQLite's own wait (`busy_timeout`) sleeps longer and longer, up to 100
/// ms between tries: a sale waiting beside a pull that commits page after
/// page then misses the short gaps between the pull's transactions and
/// waits for hundreds of milliseconds (BENCHMARKS.md, "Sync (issue 3)").
pub const BUSY_POLL_MS: u64 = 1;

/// SQLite's busy handler for a till's connections: tries again every
/// [`BUSY_POLL_MS`] until about [`BUSY_TIMEOUT_MS`] have passed.
fn busy_wait(tries: i32) -> bool {
    if tries as u64 >= BUSY_TIMEOUT_MS / BUSY_POLL_MS {
        return false;
    }
    std::thread::sleep(Duration::from_millis(BUSY_POLL_MS));
    true
}

/// Sets a till connection's wait for a database another connection holds:
/// [`busy_wait`].
pub fn set_busy_wait(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_handler(Some(busy_wait))?;
    Ok(())
}

/// Who this till is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub tenant_id: Uuid,
    pub store_id: Uuid,
    pub device_id: Uuid,
    pub receipt_prefix: String,
    pub name: String,
    /// `standalone` or `hub`.
    pub mode: String,
}

/// A till's store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// `sqlcipher` or `plaintext`.
    encryption: &'static str,
    schema: Schema,
    identity: Identity,
    clock: HlcClock,
    ids: IdGen,
    policies: HashMap<String, Policy>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).field("identity", &self.identity).finish()
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    set_busy_wait(conn)?;
    // WAL lets readers (status, UI) run beside the writer; FULL syncs the WAL
    // on every commit so an acknowledged sale is on disk.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        return Err(StoreError::Io(format!("could not switch the database to WAL (got {mode})")));
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA cache_size=-16000;")?;
    Ok(())
}

impl Store {
    /// Creates a new plaintext database in `dir` (which must not hold one)
    /// with no key record: the hub's per-tenant state, simulations and
    /// tests. A till's folder is made with [`Store::create_keyed`].
    pub fn create(dir: &Path, identity: Identity, schema: Schema, ids: IdGen) -> Result<Store, StoreError> {
        Self::create_inner(dir, identity, schema, ids, None)
    }

    /// Creates a new till in `dir` (which must not hold one), its database
    /// encrypted with a key made as `spec` says (see [`keys`]).
    pub fn create_keyed(
        dir: &Path,
        identity: Identity,
        schema: Schema,
        ids: IdGen,
        spec: &keys::KeySpec,
    ) -> Result<Store, StoreError> {
        Self::create_inner(dir, identity, schema, ids, Some(spec))
    }

    fn create_inner(
        dir: &Path,
        identity: Identity,
        schema: Schema,
        ids: IdGen,
        spec: Option<&keys::KeySpec>,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        if path.exists() {
            return Err(StoreError::AlreadyATill(dir.display().to_string()));
        }
        let key = match spec {
            Some(spec) => keys::provision(dir, spec)?,
            None => keys::DbKey::Plaintext,
        };
        let conn = Connection::open(&path)?;
        keys::apply(&conn, &key, &path)?;
        configure(&conn)?;
        migrate::migrate(&conn)?;
        let tx = conn.unchecked_transaction()?;
        for (k, v) in [
            ("tenant_id", identity.tenant_id.to_string()),
            ("store_id", identity.store_id.to_string()),
            ("device_id", identity.device_id.to_string()),
            ("receipt_prefix", identity.receipt_prefix.clone()),
            ("name", identity.name.clone()),
            ("mode", identity.mode.clone()),
            ("receipt_counter", "0".into()),
            ("hlc", "0".into()),
        ] {
            tx.execute("INSERT INTO meta(key, value) VALUES (?1, ?2)", params![k, v])?;
        }
        tx.commit()?;
        Self::finish_open(conn, path, schema, ids, key.mode())
    }

    /// Opens the till in `dir`.
    pub fn open(dir: &Path, schema: Schema, ids: IdGen) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError::NotATill(dir.display().to_string()));
        }
        // The folder's key first: nothing else can be read without it.
        let (conn, key) = keys::open(&path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        configure(&conn).map_err(|e| e.with_path(&path))?;
        migrate::migrate(&conn).map_err(|e| e.with_path(&path))?;
        Self::finish_open(conn, path, schema, ids, key.mode())
    }

    /// Opens an in-memory store (tests and simulations).
    pub fn in_memory(identity: Identity, schema: Schema, ids: IdGen) -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        configure(&conn)?;
        migrate::migrate(&conn)?;
        for (k, v) in [
            ("tenant_id", identity.tenant_id.to_string()),
            ("store_id", identity.store_id.to_string()),
            ("device_id", identity.device_id.to_string()),
            ("receipt_prefix", identity.receipt_prefix.clone()),
            ("name", identity.name.clone()),
            ("mode", identity.mode.clone()),
            ("receipt_counter", "0".into()),
            ("hlc", "0".into()),
        ] {
            conn.execute("INSERT INTO meta(key, value) VALUES (?1, ?2)", params![k, v])?;
        }
        Self::finish_open(conn, PathBuf::from(":memory:"), schema, ids, "plaintext")
    }

    fn finish_open(
        conn: Connection,
        path: PathBuf,
        schema: Schema,
        ids: IdGen,
        encryption: &'static str,
    ) -> Result<Store, StoreError> {
        let get = |k: &str| -> Result<String, StoreError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get::<_, String>(0))
                .optional()?
                .ok_or_else(|| StoreError::Corrupt(format!("missing '{k}' in the till's identity")))
        };
        let uuid = |k: &str| -> Result<Uuid, StoreError> {
            Uuid::parse_str(&get(k)?).map_err(|_| StoreError::Corrupt(format!("bad '{k}' in the till's identity")))
        };
        let identity = Identity {
            tenant_id: uuid("tenant_id")?,
            store_id: uuid("store_id")?,
            device_id: uuid("device_id")?,
            receipt_prefix: get("receipt_prefix")?,
            name: get("name")?,
            mode: get("mode")?,
        };
        let hlc: u64 = get("hlc")?.parse().map_err(|_| StoreError::Corrupt("bad clock reading".into()))?;
        let mut store = Store {
            conn,
            path,
            encryption,
            schema,
            identity,
            clock: HlcClock::new(Hlc(hlc)),
            ids,
            policies: HashMap::new(),
        };
        store.load_policies()?;
        Ok(store)
    }

    /// The till's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The declared tables.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// How the database is stored: `sqlcipher` or `plaintext`.
    pub fn encryption(&self) -> &'static str {
        self.encryption
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw connection, for read-only diagnostics (integrity checks).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The last clock reading.
    pub fn clock(&self) -> Hlc {
        self.clock.last()
    }

    pub(crate) fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    pub(crate) fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    /// Runs `PRAGMA integrity_check` and returns its first line ("ok").
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    /// Sets the most memory this connection's page cache may hold, in KiB
    /// (`PRAGMA cache_size`; every connection starts at 16,000).
    pub fn set_cache_kib(&self, kib: u32) -> Result<(), StoreError> {
        self.conn.execute_batch(&format!("PRAGMA cache_size=-{kib}"))?;
        Ok(())
    }

    /// Copies what the WAL holds into the database file without waiting
    /// for readers or writers (`PRAGMA wal_checkpoint(PASSIVE)`), so that
    /// a commit need not do it (see [`Store::set_wal_autocheckpoint_pages`]).
    pub fn checkpoint_passive(&self) -> Result<(), StoreError> {
        self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The WAL size, in pages, past which a commit on this connection
    /// checkpoints by itself (SQLite's default is 1,000). A process that
    /// checkpoints on a timer of its own ([`Store::checkpoint_passive`])
    /// raises it so that its commits do not, keeping it as a bound on the
    /// WAL if the timer falls behind.
    pub fn set_wal_autocheckpoint_pages(&self, pages: u32) -> Result<(), StoreError> {
        self.conn.query_row(&format!("PRAGMA wal_autocheckpoint={pages}"), [], |_| Ok(()))?;
        Ok(())
    }

    /// The `synchronous` pragma in force (2 is FULL).
    pub fn synchronous(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
    }
}

/// Reads one value of the `meta` table of the till in `dir` through a
/// keyed connection of its own (no store is opened: no migration, no
/// policies), for small per-device secrets such as the device token.
pub fn read_meta(dir: &Path, key: &str) -> Result<Option<String>, StoreError> {
    let db = dir.join(DB_FILE);
    if !db.is_file() {
        return Err(StoreError::NotATill(dir.display().to_string()));
    }
    let conn = keys::connect(&db)?;
    Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
}

/// Sets (or with `None` deletes) one `meta` value of the till in `dir`,
/// durably, through a keyed connection of its own.
pub fn write_meta(dir: &Path, key: &str, value: Option<&str>) -> Result<(), StoreError> {
    let db = dir.join(DB_FILE);
    if !db.is_file() {
        return Err(StoreError::NotATill(dir.display().to_string()));
    }
    let conn = keys::connect(&db)?;
    // A deleted secret is overwritten, not left in a free page.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    match value {
        Some(v) => conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)", params![key, v])?,
        None => conn.execute("DELETE FROM meta WHERE key = ?1", [key])?,
    };
    Ok(())
}
