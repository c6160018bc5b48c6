//! The SQLite hub: `hub.db` holds tenants, stores, devices, tokens and codes;
//! each tenant has its own file `tenants/<id>.db` holding its merged state
//! (the same store engine as a till, so digests are computed the same way),
//! its change log, the per-(device, lane) sequences and its quarantine.
//! One file per tenant keeps tenants apart on disk and lets them write in
//! parallel.

use crate::HubError;
use crate::checkpoint::Checkpointer;
use crate::group::Tenant;
use crate::seen::{SeenAt, SeenLog};
use crate::storage::{Caller, DeviceAuth, HubStorage, Notice};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tillsync_core::change::{StateKey, hex};
use tillsync_core::protocol::{LaneLog, PushDecision, decide_push};
use tillsync_core::schema::{Kind, Scope};
use tillsync_core::wire::{
    DeviceInfo, Enrolment, Entry, ErrorBody, LaneAck, PullResponse, PushRequest, PushResponse, SNAPSHOT_PAGE_LEN_MAX,
    SNAPSHOT_WHOLE_LEN_MAX, Snapshot, SnapshotKey, SnapshotPage, Usage, WireOp,
};
use tillsync_core::{IdGen, Lane, Op, Schema, derived_id};
use tillsync_store::{Identity, Store};
use uuid::Uuid;

const CONTROL_SQL: &str = r#"
CREATE TABLE IF NOT EXISTS tenants(
    id TEXT PRIMARY KEY, name TEXT NOT NULL, admin_hash TEXT NOT NULL UNIQUE, sample INTEGER NOT NULL,
    quota_changes INTEGER NOT NULL DEFAULT 0, next_prefix INTEGER NOT NULL DEFAULT 1, created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stores(
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices(
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, store TEXT NOT NULL, name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, status TEXT NOT NULL,
    enrolled_ms INTEGER NOT NULL, last_seen_ms INTEGER, skew_ms INTEGER
);
CREATE INDEX IF NOT EXISTS devices_tenant ON devices(tenant);
CREATE TABLE IF NOT EXISTS codes(
    code_hash TEXT PRIMARY KEY, tenant TEXT NOT NULL, store TEXT NOT NULL, expires_ms INTEGER NOT NULL, used_ms INTEGER
);
"#;

/// Columns added to the control database after its first release: a token
/// issued by a rotation waits in `next_*_hash` until its first use (see
/// [`crate::storage::HubStorage::rotate_device_token`]). SQLite cannot add
/// a UNIQUE column, so the uniqueness comes from an index.
const CONTROL_UPGRADES: &[(&str, &str, &str)] = &[
    ("devices", "next_token_hash", "CREATE UNIQUE INDEX IF NOT EXISTS devices_next_token ON devices(next_token_hash)"),
    ("tenants", "next_admin_hash", "CREATE UNIQUE INDEX IF NOT EXISTS tenants_next_admin ON tenants(next_admin_hash)"),
];

fn upgrade_control(c: &Connection) -> Result<(), HubError> {
    for (table, column, index) in CONTROL_UPGRADES {
        let has: bool = c.query_row(
            &format!("SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        if !has {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
        }
        c.execute_batch(index)?;
    }
    Ok(())
}

const TENANT_SQL: &str = r#"
CREATE TABLE IF NOT EXISTS hub_log(
    pos INTEGER PRIMARY KEY AUTOINCREMENT, store TEXT, device TEXT NOT NULL, lane TEXT NOT NULL,
    seq INTEGER NOT NULL, ops TEXT NOT NULL, bytes INTEGER NOT NULL, received_ms INTEGER NOT NULL,
    chain TEXT
);
CREATE TABLE IF NOT EXISTS hub_seqs(
    device TEXT NOT NULL, lane TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY(device, lane, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hub_state(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hub_quarantine(
    device TEXT NOT NULL, lane TEXT NOT NULL, seq INTEGER NOT NULL, reason TEXT NOT NULL, ops TEXT NOT NULL,
    received_ms INTEGER NOT NULL, PRIMARY KEY(device, lane, seq)
) WITHOUT ROWID;
"#;

/// Page cache of a tenant state's connection, in KiB (a till's is 16,000).
/// A push writes near the end of the tenant's indexes and a pull or a
/// snapshot reads pages once, so a big cache held little worth keeping:
/// at 4,000 the ingest and bootstrap rates did not change, and the hub's
/// peak memory with one busy tenant fell by about 10 MB (83 to 72-74 MB
/// in the ingest burst, median 104 to 93 MB over 100,000 changes;
/// BENCHMARKS.md, issue 3).
pub const TENANT_CACHE_KIB: u32 = 4_000;

/// Longest a pull page may be, in entries.
pub const PULL_LEN_MAX: usize = 1_000;
/// Most changes in one push.
pub const PUSH_LEN_MAX: usize = 1_000;

pub(crate) fn sha(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// Whether a stored token hash is the hash of the presented token, compared
/// in constant time. The database found the row by this hash already; the
/// check keeps every comparison of secrets in the hub's own code free of
/// timing differences, whatever the index did.
pub(crate) fn hash_matches(stored: &str, computed: &str) -> bool {
    use subtle::ConstantTimeEq;
    stored.len() == computed.len() && bool::from(stored.as_bytes().ct_eq(computed.as_bytes()))
}

/// Which of a row's two token hashes the presented token's hash `h` is:
/// `Some(false)` the current one, `Some(true)` the one a rotation left
/// pending (its first use retires the current one), `None` neither. Both
/// compared in constant time.
pub(crate) fn token_match(current: &str, next: Option<&str>, h: &str) -> Option<bool> {
    if next.is_some_and(|n| hash_matches(n, h)) {
        Some(true)
    } else if hash_matches(current, h) {
        Some(false)
    } else {
        None
    }
}

/// A new device token: recognisable by its prefix (`tsd_`), 256 random bits.
pub(crate) const DEVICE_TOKEN_PREFIX: &str = "tsd_";
/// A new admin token's prefix (`tsa_`).
pub(crate) const ADMIN_TOKEN_PREFIX: &str = "tsa_";

/// The SQLite hub.
pub struct SqliteHub {
    dir: PathBuf,
    control: Mutex<Connection>,
    tenants: Mutex<HashMap<Uuid, Arc<Tenant>>>,
    ids: Mutex<IdGen>,
    schema: Schema,
    /// Devices' last contact, written to `hub.db` off the push path.
    seen: SeenLog,
    /// Tenant WAL checkpoints off the push path (`None`: inside COMMIT).
    checkpointer: Option<Checkpointer>,
}

/// A SQLite hub's background work on wall-clock timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqliteTimers {
    /// How often devices' last-seen times are written; `None`: only at
    /// [`HubStorage::flush_seen`] and when the hub is dropped.
    pub seen_flush_ms: Option<u64>,
    /// How often tenant WALs are checkpointed by a thread of their own;
    /// `None`: inside the COMMIT that fills the WAL (SQLite's default).
    pub checkpoint_ms: Option<u64>,
}

impl Default for SqliteTimers {
    fn default() -> Self {
        SqliteTimers {
            seen_flush_ms: Some(crate::seen::SEEN_FLUSH_INTERVAL_MS),
            checkpoint_ms: Some(crate::checkpoint::CHECKPOINT_INTERVAL_MS),
        }
    }
}

impl SqliteTimers {
    /// No timers: the simulation, whose hub must not write on a wall-clock
    /// timer while it copies the folder.
    pub const NONE: SqliteTimers = SqliteTimers { seen_flush_ms: None, checkpoint_ms: None };
}

impl std::fmt::Debug for SqliteHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteHub").field("dir", &self.dir).finish()
    }
}

fn open_conn(path: &Path) -> Result<Connection, HubError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    Ok(conn)
}

struct SeqLog<'a> {
    conn: &'a Connection,
    device: String,
    lane: &'static str,
}

impl LaneLog for SeqLog<'_> {
    fn next_seq(&self) -> u64 {
        self.conn
            .prepare_cached("SELECT max(seq) FROM hub_seqs WHERE device = ?1 AND lane = ?2")
            .and_then(|mut st| st.query_row(params![self.device, self.lane], |r| r.get::<_, Option<i64>>(0)))
            .ok()
            .flatten()
            .map_or(1, |s| s as u64 + 1)
    }

    fn digest_at(&self, seq: u64) -> Option<String> {
        self.conn
            .prepare_cached("SELECT digest FROM hub_seqs WHERE device = ?1 AND lane = ?2 AND seq = ?3")
            .and_then(|mut st| st.query_row(params![self.device, self.lane, seq as i64], |r| r.get(0)).optional())
            .ok()
            .flatten()
    }
}

impl SqliteHub {
    /// Opens (or creates) a hub data folder. `ids` seeds tokens and ids.
    /// Devices' last-seen times and tenant WAL checkpoints run on the
    /// default timers ([`SqliteTimers::default`]).
    pub fn open(dir: &Path, ids: IdGen) -> Result<SqliteHub, HubError> {
        Self::open_with(dir, ids, SqliteTimers::default())
    }

    /// As [`SqliteHub::open`], with these timers.
    pub fn open_with(dir: &Path, ids: IdGen, timers: SqliteTimers) -> Result<SqliteHub, HubError> {
        std::fs::create_dir_all(dir.join("tenants"))
            .map_err(|e| HubError::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let control = open_conn(&dir.join("hub.db"))?;
        control.execute_batch(CONTROL_SQL)?;
        upgrade_control(&control)?;
        // Its own connection, so writing the times never takes the control
        // mutex; not synced per commit (a crash may lose a few seconds of
        // them anyway), the next synced commit or checkpoint carries them.
        let seen_conn = open_conn(&dir.join("hub.db"))?;
        seen_conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        let writer: crate::seen::SeenWriter = Box::new(move |batch| {
            let tx = seen_conn.unchecked_transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "UPDATE devices SET last_seen_ms = ?2, skew_ms = ?3
                     WHERE id = ?1 AND (last_seen_ms IS NULL OR last_seen_ms <= ?2)",
                )?;
                for (device, at) in batch {
                    st.execute(params![device.to_string(), at.last_seen_ms as i64, at.skew_ms])?;
                }
            }
            tx.commit()?;
            Ok(())
        });
        Ok(SqliteHub {
            dir: dir.to_path_buf(),
            control: Mutex::new(control),
            tenants: Mutex::new(HashMap::new()),
            ids: Mutex::new(ids),
            schema: Schema::standard(),
            seen: SeenLog::start(writer, timers.seen_flush_ms),
            checkpointer: timers.checkpoint_ms.map(Checkpointer::start),
        })
    }

    fn random_hex(&self, bytes: usize) -> String {
        let mut b = vec![0u8; bytes];
        self.ids.lock().expect("ids").fill(&mut b);
        hex(&b)
    }

    fn new_id(&self, now_ms: u64) -> Uuid {
        self.ids.lock().expect("ids").new_v7(now_ms)
    }

    pub(crate) fn hub_device(tenant: Uuid) -> Uuid {
        derived_id(tenant, "hub", "device")
    }

    /// The tenant's state and log, opened once and kept.
    pub(crate) fn tenant(&self, tenant: Uuid) -> Result<Arc<Tenant>, HubError> {
        let mut map = self.tenants.lock().expect("tenants");
        if let Some(s) = map.get(&tenant) {
            return Ok(s.clone());
        }
        let exists: bool = self
            .control
            .lock()
            .expect("control")
            .query_row("SELECT 1 FROM tenants WHERE id = ?1", [tenant.to_string()], |_| Ok(()))
            .optional()?
            .is_some();
        if !exists {
            return Err(HubError::NotFound(format!("tenant {tenant}")));
        }
        let dir = self.dir.join("tenants").join(tenant.to_string());
        let seed = {
            let mut s = [0u8; 32];
            self.ids.lock().expect("ids").fill(&mut s);
            IdGen::from_seed(s)
        };
        let store = if dir.join(tillsync_store::DB_FILE).exists() {
            Store::open(&dir, self.schema.clone(), seed)?
        } else {
            let identity = Identity {
                tenant_id: tenant,
                store_id: Uuid::nil(),
                device_id: Self::hub_device(tenant),
                receipt_prefix: "HUB".into(),
                name: "hub".into(),
                mode: "hub".into(),
            };
            Store::create(&dir, identity, self.schema.clone(), seed)?
        };
        store.connection().execute_batch(TENANT_SQL)?;
        if let Some(c) = &self.checkpointer {
            store.set_wal_autocheckpoint_pages(crate::checkpoint::TENANT_WAL_AUTOCHECKPOINT_PAGES)?;
            c.watch(dir.join(tillsync_store::DB_FILE));
        }
        // A tenant state is written by pushes and read by id, by store or
        // whole, never by a till's screens. Snapshot pages read one store's
        // rows among every store's: only a tenant of several stores needs
        // an index for that; one store reads its rows through the unique
        // id index. Files made before these rules are brought to them here.
        store.set_hub_indexes(self.multi_store(tenant)?)?;
        store.set_cache_kib(TENANT_CACHE_KIB)?;
        // Tenant files made before the log chain existed get its column.
        let has_chain: bool = store
            .connection()
            .query_row("SELECT count(*) FROM pragma_table_info('hub_log') WHERE name = 'chain'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n > 0)?;
        if !has_chain {
            store.connection().execute_batch("ALTER TABLE hub_log ADD COLUMN chain TEXT")?;
        }
        let store = Arc::new(Tenant::new(store));
        {
            let mut s = store.lock();
            Self::flush_hub_outbox(&mut s, 0)?;
        }
        map.insert(tenant, store.clone());
        Ok(store)
    }

    /// Whether the tenant has two or more stores: then its ledger is
    /// indexed by store (see `tenant`).
    fn multi_store(&self, tenant: Uuid) -> Result<bool, HubError> {
        let n: i64 = self.control.lock().expect("control").query_row(
            "SELECT count(*) FROM stores WHERE tenant = ?1",
            [tenant.to_string()],
            |r| r.get(0),
        )?;
        Ok(n > 1)
    }

    /// Moves the hub's own changes (policies, sample data) from the tenant
    /// store's outbox into the log, so devices pull them like any change.
    /// Idempotent: what is already logged is skipped, so a crash between a
    /// hub write and this step is repaired at the next open.
    fn flush_hub_outbox(store: &mut Store, now_ms: u64) -> Result<Vec<Notice>, HubError> {
        let device = store.identity().device_id;
        let tenant = store.identity().tenant_id;
        let mut notices = vec![];
        for lane in Lane::ALL {
            let pending = store.pending_changes(lane, usize::MAX >> 1)?;
            if pending.is_empty() {
                continue;
            }
            let last = pending.last().map(|p| p.change.seq).unwrap_or(0);
            let schema = store.schema().clone();
            let conn = store.connection();
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let r = (|| -> Result<(), HubError> {
                for p in &pending {
                    let ops: Vec<WireOp> = p.change.ops.iter().map(WireOp::from).collect();
                    let fresh = conn
                        .prepare_cached(
                            "INSERT OR IGNORE INTO hub_seqs(device, lane, seq, digest) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![device.to_string(), lane.as_str(), p.change.seq as i64, p.digest])?;
                    if fresh == 0 {
                        // Another process (an admin command beside the server) logged it.
                        continue;
                    }
                    for (store_id, part) in split_scope(&schema, &p.change.ops, &ops) {
                        let pos = insert_log(conn, store_id, device, lane, p.change.seq, &part, now_ms)?;
                        notices.push(Notice { tenant_id: tenant, store_id, pos });
                    }
                }
                Ok(())
            })();
            match r {
                Ok(()) => conn.execute_batch("COMMIT")?,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
            store.set_acked(lane, last)?;
        }
        Ok(notices)
    }

    pub(crate) fn tenant_of_store(&self, tenant: Uuid, store: Uuid) -> Result<String, HubError> {
        self.control
            .lock()
            .expect("control")
            .query_row(
                "SELECT name FROM stores WHERE id = ?1 AND tenant = ?2",
                params![store.to_string(), tenant.to_string()],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| HubError::NotFound(format!("store {store} of this tenant")))
    }
}

/// The highest log position ever assigned (AUTOINCREMENT keeps it even when
/// compaction emptied the log).
fn assigned_pos(conn: &Connection) -> Result<u64, HubError> {
    Ok(conn.query_row("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'hub_log'), 0)", [], |r| {
        r.get::<_, i64>(0)
    })? as u64)
}

/// The compaction horizon: log positions at or below it are gone.
pub(crate) fn horizon(conn: &Connection) -> Result<u64, HubError> {
    Ok(conn
        .query_row("SELECT value FROM hub_state WHERE key = 'horizon'", [], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

impl SqliteHub {
    /// Compacts a tenant's log, keeping the newest `keep_len` entries. The
    /// merged state keeps every head and tombstone, so a device whose cursor
    /// falls below the horizon bootstraps again from the snapshot and loses
    /// nothing. Returns the new horizon.
    pub fn compact(&self, tenant: Uuid, keep_len: u64) -> Result<u64, HubError> {
        let t = self.tenant(tenant)?;
        let s = t.lock();
        let conn = s.connection();
        let max_pos: i64 = conn.query_row("SELECT coalesce(max(pos), 0) FROM hub_log", [], |r| r.get(0))?;
        let new_horizon = (max_pos as u64).saturating_sub(keep_len).max(horizon(conn)?);
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let r = (|| -> Result<(), HubError> {
            // The chain at the horizon stays checkable after its entry goes.
            if let Some(c) = chain_at(conn, new_horizon)? {
                state_set(conn, "horizon_chain", &c)?;
            }
            conn.execute("DELETE FROM hub_log WHERE pos <= ?1", [new_horizon as i64])?;
            conn.execute(
                "INSERT INTO hub_state(key, value) VALUES ('horizon', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [new_horizon.to_string()],
            )?;
            Ok(())
        })();
        match r {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        Ok(new_horizon)
    }
}

/// Splits a change's operations by scope: tenant-wide operations (record
/// writes, tenant ledgers) and one part per store for store ledgers.
/// The parts borrow the wire operations: a push's JSON values are parsed
/// once and serialized into the log from there, not copied per part.
pub fn split_scope<'w>(schema: &Schema, ops: &[Op], wire: &'w [WireOp]) -> Vec<(Option<Uuid>, Vec<&'w WireOp>)> {
    let mut parts: BTreeMap<Option<Uuid>, Vec<&'w WireOp>> = BTreeMap::new();
    for (op, w) in ops.iter().zip(wire) {
        let scope = match op {
            Op::Write(_) => None,
            Op::Insert(r) => match schema.table(&r.table).map(|t| t.scope) {
                Ok(Scope::Store) => Some(r.store),
                _ => None,
            },
        };
        parts.entry(scope).or_default().push(w);
    }
    parts.into_iter().collect()
}

fn insert_log(
    conn: &Connection,
    store: Option<Uuid>,
    device: Uuid,
    lane: Lane,
    seq: u64,
    ops: &[&WireOp],
    now_ms: u64,
) -> Result<u64, HubError> {
    let json = serde_json::to_string(ops)?;
    // The chain links every entry to all before it, so a till's cursor can
    // be checked against the log it was taken from (see `pull`).
    let prev = state_get(conn, "chain")?.unwrap_or_default();
    let chain = sha(&format!("{prev}\n{device}\n{}\n{seq}\n{json}", lane.as_str()));
    conn.prepare_cached(
        "INSERT INTO hub_log(store, device, lane, seq, ops, bytes, received_ms, chain) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        store.map(|s| s.to_string()),
        device.to_string(),
        lane.as_str(),
        seq as i64,
        json,
        json.len() as i64,
        now_ms as i64,
        chain
    ])?;
    let pos = conn.last_insert_rowid() as u64;
    state_set(conn, "chain", &chain)?;
    Ok(pos)
}

fn state_get(conn: &Connection, key: &str) -> Result<Option<String>, HubError> {
    Ok(conn
        .prepare_cached("SELECT value FROM hub_state WHERE key = ?1")?
        .query_row([key], |r| r.get::<_, String>(0))
        .optional()?)
}

fn state_set(conn: &Connection, key: &str, value: &str) -> Result<(), HubError> {
    conn.prepare_cached(
        "INSERT INTO hub_state(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}

/// The log chain at a position: the entry's own, or the one kept when
/// compaction removed it; `None` when the log has no chain there (entries
/// from before the chain existed, or position 0).
fn chain_at(conn: &Connection, pos: u64) -> Result<Option<String>, HubError> {
    let row: Option<Option<String>> = conn
        .prepare_cached("SELECT chain FROM hub_log WHERE pos = ?1")?
        .query_row([pos as i64], |r| r.get(0))
        .optional()?;
    match row {
        Some(c) => Ok(c),
        None if pos > 0 && pos == horizon(conn)? => state_get(conn, "horizon_chain"),
        None => Ok(None),
    }
}

/// Why a pushed change cannot be applied (it is quarantined instead).
/// `relayed` gives the store of each other device of the tenant named as an
/// origin: a till may relay another till's changes (imported pending
/// changes, a restored till), unchanged, within its own store.
pub fn validate(
    schema: &Schema,
    dev: &DeviceAuth,
    ops: &[Op],
    relayed: &std::collections::HashMap<Uuid, Uuid>,
) -> Result<(), String> {
    let hub_device = SqliteHub::hub_device(dev.tenant_id);
    for op in ops {
        op.check(schema).map_err(|e| e.to_string())?;
        match op {
            Op::Write(w)
                if w.id.device != dev.device_id && w.id.device != hub_device && !relayed.contains_key(&w.id.device) =>
            {
                return Err("a write claims a device of another tenant as its origin".into());
            }
            Op::Insert(r) => {
                if r.device != dev.device_id && relayed.get(&r.device) != Some(&dev.store_id) {
                    return Err("a ledger row claims a device of another store as its origin".into());
                }
                let t = schema.table(&r.table).map_err(|e| e.to_string())?;
                if t.kind == Kind::Ledger && t.scope == Scope::Store && r.store != dev.store_id {
                    return Err("a ledger row names another store".into());
                }
            }
            Op::Write(_) => {}
        }
    }
    Ok(())
}

/// Devices other than the caller named as origins in a push (at most
/// 1,000 are looked up: a till relays its own store's few devices).
pub fn other_origins(dev: &DeviceAuth, req: &PushRequest) -> Vec<Uuid> {
    let mut others: std::collections::BTreeSet<Uuid> = std::collections::BTreeSet::new();
    for c in &req.changes {
        for op in &c.ops {
            match op {
                WireOp::Insert { device, .. } if *device != dev.device_id => {
                    others.insert(*device);
                }
                WireOp::Write { id, .. } => {
                    if let Some((_, d)) = id.split_once('-')
                        && let Ok(u) = Uuid::try_parse(d)
                        && u != dev.device_id
                    {
                        others.insert(u);
                    }
                }
                _ => {}
            }
        }
    }
    others.into_iter().take(1_000).collect()
}

impl HubStorage for SqliteHub {
    fn create_tenant(&self, name: &str, sample: bool, now_ms: u64) -> Result<(Uuid, String), HubError> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(HubError::bad("bad_name", "a tenant name is 1 to 200 characters"));
        }
        let id = self.new_id(now_ms);
        let token = format!("{ADMIN_TOKEN_PREFIX}{}", self.random_hex(32));
        self.control.lock().expect("control").execute(
            "INSERT INTO tenants(id, name, admin_hash, sample, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id.to_string(), name, sha(&token), sample, now_ms as i64],
        )?;
        let t = self.tenant(id)?;
        if sample {
            let mut s = t.lock();
            tillsync_store::sample::load(&mut s, now_ms, false)?;
            Self::flush_hub_outbox(&mut s, now_ms)?;
        }
        Ok((id, token))
    }

    fn create_store(&self, tenant: Uuid, name: &str, now_ms: u64) -> Result<Uuid, HubError> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(HubError::bad("bad_name", "a store name is 1 to 200 characters"));
        }
        let t = self.tenant(tenant)?;
        let id = self.new_id(now_ms);
        let sample: bool = {
            let c = self.control.lock().expect("control");
            c.execute(
                "INSERT INTO stores(id, tenant, name, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id.to_string(), tenant.to_string(), name, now_ms as i64],
            )?;
            c.query_row("SELECT sample FROM tenants WHERE id = ?1", [tenant.to_string()], |r| r.get(0))?
        };
        if self.multi_store(tenant)? {
            // The second store: from now on snapshot pages pick one store's
            // rows among two (see `tenant`). Built once, under the tenant's
            // lock, in seconds for a million rows.
            let s = t.lock();
            let started = std::time::Instant::now();
            s.set_hub_indexes(true)?;
            tracing::info!(%tenant, took_ms = started.elapsed().as_millis() as u64, "ledger indexed by store");
        }
        if sample {
            // The sample's opening stock, once for this store.
            let mut s = t.lock();
            s.write(now_ms, |l| {
                for (_, sku, _, _, _, qty) in tillsync_store::sample::PRODUCTS {
                    l.insert_in(
                        id,
                        tillsync_core::schema::tables::STOCK_MOVEMENTS,
                        serde_json::json!({"sku": sku, "qty": qty, "reason": "opening"}),
                    )?;
                }
                Ok(())
            })?;
            Self::flush_hub_outbox(&mut s, now_ms)?;
        }
        Ok(id)
    }

    fn create_enrol_code(
        &self,
        tenant: Uuid,
        store: Uuid,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<(String, u64), HubError> {
        self.tenant_of_store(tenant, store)?;
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut raw = [0u8; 12];
        self.ids.lock().expect("ids").fill(&mut raw);
        let chars: String = raw.iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect();
        let code = format!("{}-{}-{}", &chars[0..4], &chars[4..8], &chars[8..12]);
        let expires = now_ms + ttl_ms;
        self.control.lock().expect("control").execute(
            "INSERT INTO codes(code_hash, tenant, store, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![sha(&code), tenant.to_string(), store.to_string(), expires as i64],
        )?;
        Ok((code, expires))
    }

    fn set_policy(&self, tenant: Uuid, target: &str, mode: &str, now_ms: u64) -> Result<Vec<Notice>, HubError> {
        let policy = tillsync_core::Policy::parse(mode).ok_or_else(|| {
            HubError::bad("bad_policy", format!("'{mode}' is not a policy: use lww, first or manual"))
        })?;
        let t = self.tenant(tenant)?;
        let mut s = t.lock();
        s.set_policy(now_ms, target, policy).map_err(|e| HubError::bad("bad_policy", e.to_string()))?;
        Self::flush_hub_outbox(&mut s, now_ms)
    }

    fn set_quota(&self, tenant: Uuid, changes: u64) -> Result<(), HubError> {
        let n = self.control.lock().expect("control").execute(
            "UPDATE tenants SET quota_changes = ?2 WHERE id = ?1",
            params![tenant.to_string(), changes as i64],
        )?;
        if n == 0 {
            return Err(HubError::NotFound(format!("tenant {tenant}")));
        }
        Ok(())
    }

    fn usage(&self, tenant: Uuid) -> Result<Usage, HubError> {
        let (devices, stores, quota): (i64, i64, i64) = {
            let c = self.control.lock().expect("control");
            (
                c.query_row(
                    "SELECT count(*) FROM devices WHERE tenant = ?1 AND status = 'active'",
                    [tenant.to_string()],
                    |r| r.get(0),
                )?,
                c.query_row("SELECT count(*) FROM stores WHERE tenant = ?1", [tenant.to_string()], |r| r.get(0))?,
                c.query_row("SELECT quota_changes FROM tenants WHERE id = ?1", [tenant.to_string()], |r| r.get(0))?,
            )
        };
        let t = self.tenant(tenant)?;
        let s = t.lock();
        let conn = s.connection();
        let (changes, bytes): (i64, i64) =
            conn.query_row("SELECT count(*), coalesce(sum(bytes), 0) FROM hub_log", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let quarantined: i64 = conn.query_row("SELECT count(*) FROM hub_quarantine", [], |r| r.get(0))?;
        Ok(Usage {
            changes: changes as u64,
            bytes: bytes as u64,
            devices: devices as u64,
            stores: stores as u64,
            quarantined: quarantined as u64,
            quota_changes: quota as u64,
            ..Usage::default()
        })
    }

    fn enrol(&self, code: &str, name: &str, now_ms: u64) -> Result<Enrolment, HubError> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(HubError::bad("bad_name", "a device name is 1 to 200 characters"));
        }
        let device_id = self.new_id(now_ms);
        let token = format!("{DEVICE_TOKEN_PREFIX}{}", self.random_hex(32));
        let mut c = self.control.lock().expect("control");
        let tx = c.transaction()?;
        // Single use: the update succeeds once, and only before expiry.
        let row: Option<(String, String)> = tx
            .query_row(
                "UPDATE codes SET used_ms = ?2 WHERE code_hash = ?1 AND used_ms IS NULL AND expires_ms > ?2 RETURNING tenant, store",
                params![sha(code.trim()), now_ms as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (tenant, store) = row.ok_or(HubError::BadCode)?;
        let n: i64 = tx.query_row(
            "UPDATE tenants SET next_prefix = next_prefix + 1 WHERE id = ?1 RETURNING next_prefix - 1",
            [&tenant],
            |r| r.get(0),
        )?;
        let prefix = format!("T{n}");
        tx.execute(
            "INSERT INTO devices(id, tenant, store, name, token_hash, prefix, status, enrolled_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7)",
            params![device_id.to_string(), tenant, store, name, sha(&token), prefix, now_ms as i64],
        )?;
        tx.commit()?;
        let parse = |s: &str| Uuid::parse_str(s).map_err(|e| HubError::Internal(e.to_string()));
        Ok(Enrolment { device_id, token, tenant_id: parse(&tenant)?, store_id: parse(&store)?, receipt_prefix: prefix })
    }

    fn authenticate(&self, token: &str) -> Result<Caller, HubError> {
        if token.len() > 200 {
            return Err(HubError::Unauthorized);
        }
        let h = sha(token);
        let c = self.control.lock().expect("control");
        // Lookup by hash: the token itself is never stored or compared.
        if token.starts_with(DEVICE_TOKEN_PREFIX) {
            let row: Option<(String, String, String, String, String, Option<String>)> = c
                .prepare_cached(
                    "SELECT id, tenant, store, status, token_hash, next_token_hash FROM devices
                     WHERE token_hash = ?1 OR next_token_hash = ?1",
                )?
                .query_row([&h], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
                .optional()?;
            let (id, tenant, store, status, current, next) = row.ok_or(HubError::Unauthorized)?;
            let via_next = token_match(&current, next.as_deref(), &h).ok_or(HubError::Unauthorized)?;
            match status.as_str() {
                "active" => {}
                "forked" => return Err(HubError::Forked),
                _ => return Err(HubError::Revoked),
            }
            if via_next {
                // The first use of a rotated token retires the one before it.
                c.execute(
                    "UPDATE devices SET token_hash = next_token_hash, next_token_hash = NULL WHERE id = ?1 AND next_token_hash = ?2",
                    params![id, h],
                )?;
            }
            let parse = |s: &str| Uuid::parse_str(s).map_err(|e| HubError::Internal(e.to_string()));
            return Ok(Caller::Device(DeviceAuth {
                device_id: parse(&id)?,
                tenant_id: parse(&tenant)?,
                store_id: parse(&store)?,
            }));
        }
        if token.starts_with(ADMIN_TOKEN_PREFIX) {
            let row: Option<(String, String, Option<String>)> = c
                .prepare_cached(
                    "SELECT id, admin_hash, next_admin_hash FROM tenants WHERE admin_hash = ?1 OR next_admin_hash = ?1",
                )?
                .query_row([&h], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let (tenant, current, next) = row.ok_or(HubError::Unauthorized)?;
            let via_next = token_match(&current, next.as_deref(), &h).ok_or(HubError::Unauthorized)?;
            if via_next {
                c.execute(
                    "UPDATE tenants SET admin_hash = next_admin_hash, next_admin_hash = NULL WHERE id = ?1 AND next_admin_hash = ?2",
                    params![tenant, h],
                )?;
            }
            return Ok(Caller::Admin {
                tenant_id: Uuid::parse_str(&tenant).map_err(|e| HubError::Internal(e.to_string()))?,
            });
        }
        Err(HubError::Unauthorized)
    }

    fn push(&self, dev: &DeviceAuth, req: &PushRequest, now_ms: u64) -> Result<(PushResponse, Vec<Notice>), HubError> {
        if req.changes.len() > PUSH_LEN_MAX {
            return Err(HubError::bad("too_many_changes", format!("push at most {PUSH_LEN_MAX} changes at once")));
        }
        if req.copied {
            self.control.lock().expect("control").execute(
                "UPDATE devices SET status = 'forked' WHERE id = ?1 AND status = 'active'",
                [dev.device_id.to_string()],
            )?;
            tracing::warn!(device = %dev.device_id, "device reports a copied folder: device stopped");
            return Err(HubError::Forked);
        }
        let device = dev.device_id.to_string();
        let skew = req.device_time_ms as i64 - now_ms as i64;
        if req.changes.is_empty() {
            // A till with nothing to send asks only for its acknowledged
            // sequences (every round starts so): answered by a read, with no
            // transaction and no sync on the path of a live event's pull.
            let t = self.tenant(dev.tenant_id)?;
            let s = t.lock();
            let lanes = Lane::ALL
                .into_iter()
                .map(|lane| {
                    let ack = LaneAck {
                        acked_through: SeqLog { conn: s.connection(), device: device.clone(), lane: lane.as_str() }
                            .next_seq()
                            - 1,
                        ..LaneAck::default()
                    };
                    (lane, ack)
                })
                .collect();
            let hub_hlc = s.clock().0;
            drop(s);
            self.seen.note(dev.device_id, SeenAt { tenant: dev.tenant_id, last_seen_ms: now_ms, skew_ms: skew });
            return Ok((PushResponse { lanes, hub_time_ms: now_ms, hub_hlc, skew_ms: skew }, vec![]));
        }
        let quota: i64 = self.control.lock().expect("control").query_row(
            "SELECT quota_changes FROM tenants WHERE id = ?1",
            [dev.tenant_id.to_string()],
            |r| r.get(0),
        )?;
        // Other devices named as origins, looked up before the tenant lock.
        let mut relayed: std::collections::HashMap<Uuid, Uuid> = std::collections::HashMap::new();
        {
            let others = other_origins(dev, req);
            if !others.is_empty() {
                let c = self.control.lock().expect("control");
                let mut st = c.prepare_cached("SELECT tenant, store FROM devices WHERE id = ?1")?;
                for o in &others {
                    let row: Option<(String, String)> =
                        st.query_row(params![o.to_string()], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                    match row {
                        Some((tenant, store)) if tenant == dev.tenant_id.to_string() => {
                            if let Ok(s) = Uuid::parse_str(&store) {
                                relayed.insert(*o, s);
                            }
                        }
                        // Another tenant's device: never a valid origin.
                        Some(_) => {}
                        // A device this hub does not know (enrolled after the
                        // backup a restored hub came from): its changes come
                        // back through a till of the same store, so they count
                        // as that store's. Claiming it gains nothing a till
                        // could not do under its own id.
                        None => {
                            relayed.insert(*o, dev.store_id);
                        }
                    }
                }
            }
        }
        let t = self.tenant(dev.tenant_id)?;
        let mut by_lane: BTreeMap<Lane, Vec<&tillsync_core::wire::WireChange>> = BTreeMap::new();
        for c in &req.changes {
            by_lane.entry(c.lane).or_default().push(c);
        }
        let schema = self.schema.clone();
        let mut notices = vec![];
        // Pushes queued for this tenant share one transaction and one
        // durable COMMIT (see `crate::group`); `t.push` returns after it.
        let (lanes, hub_hlc) = t.push(|s| -> Result<(BTreeMap<Lane, LaneAck>, u64), HubError> {
            let mut lanes = BTreeMap::new();
            let mut quota_used: Option<i64> = None;
            for (lane, mut changes) in by_lane {
                changes.sort_by_key(|c| c.seq);
                let mut ack = LaneAck::default();
                let mut refused_at: Option<u64> = None;
                let quota_lane = matches!(lane, Lane::Catalog | Lane::Telemetry);
                for wc in changes {
                    let decision = decide_push(&SeqLog { conn: s.connection(), device: device.clone(), lane: lane.as_str() }, wc.seq, &wc.digest);
                    match decision {
                        PushDecision::Duplicate => {}
                        PushDecision::Refuse(e) => {
                            ack.error = Some(e);
                            refused_at = Some(wc.seq);
                            break;
                        }
                        PushDecision::Store => {
                            if quota_lane && quota > 0 {
                                // Counted once per push (a scan of the
                                // tenant's sequences), then by hand: once
                                // per change, a catalogue push of 200
                                // changes scanned 200 times.
                                let used = match quota_used {
                                    Some(u) => u,
                                    None => s.connection().query_row(
                                        "SELECT count(*) FROM hub_seqs WHERE lane IN ('catalog', 'telemetry') AND device != ?1",
                                        [Self::hub_device(dev.tenant_id).to_string()],
                                        |r| r.get(0),
                                    )?,
                                };
                                quota_used = Some(used);
                                if used >= quota {
                                    refused_at = Some(wc.seq);
                                    ack.error = Some(ErrorBody {
                                        code: "quota_exceeded".into(),
                                        message: format!("the tenant's quota of {quota} catalogue and telemetry changes is used up: raise it or compact; sales are not affected"),
                                        expected: None,
                                    });
                                    break;
                                }
                                quota_used = Some(used + 1);
                            }
                            s.connection()
                                .prepare_cached("INSERT INTO hub_seqs(device, lane, seq, digest) VALUES (?1, ?2, ?3, ?4)")?
                                .execute(params![device, lane.as_str(), wc.seq as i64, wc.digest])?;
                            let change = wc.to_change(dev.device_id);
                            let verdict = match &change {
                                Ok(c) => validate(&schema, dev, &c.ops, &relayed),
                                Err(e) => Err(e.to_string()),
                            };
                            match verdict {
                                Ok(()) => {
                                    let change = change.expect("validated");
                                    for (store_id, part) in split_scope(&schema, &change.ops, &wc.ops) {
                                        let pos = insert_log(s.connection(), store_id, dev.device_id, lane, wc.seq, &part, now_ms)?;
                                        notices.push(Notice { tenant_id: dev.tenant_id, store_id, pos });
                                    }
                                    s.apply_in_transaction(&change.ops)?;
                                }
                                Err(reason) => {
                                    // Acknowledged and kept, never applied: visible on the hub and the till.
                                    s.connection()
                                        .prepare_cached(
                                            "INSERT INTO hub_quarantine(device, lane, seq, reason, ops, received_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                                        )?
                                        .execute(params![device, lane.as_str(), wc.seq as i64, reason, crate::storage::quarantined_ops_json(&wc.ops)?, now_ms as i64])?;
                                    ack.quarantined.push(tillsync_core::wire::QuarantineAck { seq: wc.seq, reason });
                                }
                            }
                        }
                    }
                }
                let stored_through =
                    SeqLog { conn: s.connection(), device: device.clone(), lane: lane.as_str() }.next_seq() - 1;
                // A refused change is not acknowledged, even if the hub holds
                // another change under its sequence (a cloned folder).
                ack.acked_through = match refused_at {
                    Some(seq) => stored_through.min(seq.saturating_sub(1)),
                    None => stored_through,
                };
                lanes.insert(lane, ack);
            }
            // Every lane of the device is answered, even lanes not pushed:
            // after a restore the till learns what this hub lost.
            for lane in Lane::ALL {
                lanes.entry(lane).or_insert_with(|| LaneAck {
                    acked_through: SeqLog { conn: s.connection(), device: device.clone(), lane: lane.as_str() }.next_seq()
                        - 1,
                    ..LaneAck::default()
                });
            }
            Ok((lanes, s.clock().0))
        })?;
        // A reused sequence with another change means two tills share this
        // identity: stop it in every lane, so neither copy's changes are
        // mixed with the other's (both re-enrol and carry their changes over).
        if lanes.values().any(|a| a.error.as_ref().is_some_and(|e| e.code == "sequence_reused")) {
            self.control
                .lock()
                .expect("control")
                .execute("UPDATE devices SET status = 'forked' WHERE id = ?1 AND status = 'active'", [&device])?;
            tracing::warn!(device = device.as_str(), "device folder copied: device stopped");
        }
        // Off the durable path: kept in memory, written every few seconds.
        self.seen.note(dev.device_id, SeenAt { tenant: dev.tenant_id, last_seen_ms: now_ms, skew_ms: skew });
        Ok((PushResponse { lanes, hub_time_ms: now_ms, hub_hlc, skew_ms: skew }, notices))
    }

    fn pull(&self, dev: &DeviceAuth, after: u64, limit_len: usize, now_ms: u64) -> Result<PullResponse, HubError> {
        self.pull_tagged(dev, after, None, limit_len, now_ms)
    }

    fn pull_tagged(
        &self,
        dev: &DeviceAuth,
        after: u64,
        tag: Option<&str>,
        limit_len: usize,
        now_ms: u64,
    ) -> Result<PullResponse, HubError> {
        let limit = limit_len.clamp(1, PULL_LEN_MAX);
        let t = self.tenant(dev.tenant_id)?;
        let store = t.lock();
        let conn = store.connection();
        // SQLite has one writer and positions are assigned inside its
        // transaction, so every position up to the highest one is committed:
        // pulling by position never skips a change.
        let horizon = horizon(conn)?;
        if after < horizon {
            return Err(HubError::bad(
                "cursor_expired",
                format!(
                    "the hub compacted its log up to {horizon}: bootstrap again from /v1/snapshot (your outbox is kept)"
                ),
            ));
        }
        // A tagged cursor must name this log: past its end, or with another
        // chain at its position, the hub was restored to an earlier state
        // and has since filled positions the till already passed.
        if let Some(tag) = tag
            && after > 0
        {
            let assigned = assigned_pos(conn)?;
            let differs = match chain_at(conn, after)? {
                _ if after > assigned => true,
                Some(chain) => chain != tag,
                None => false,
            };
            if differs {
                return Err(HubError::bad(
                    "cursor_expired",
                    "the hub's log differs from the one this till pulled from (the hub was restored): bootstrap again from /v1/snapshot (your outbox is kept)",
                ));
            }
        }
        let max_pos: i64 = conn.query_row("SELECT coalesce(max(pos), 0) FROM hub_log", [], |r| r.get(0))?;
        let mut st = conn.prepare_cached(
            "SELECT pos, device, ops FROM hub_log WHERE pos > ?1 AND (store IS NULL OR store = ?2) AND device != ?3 ORDER BY pos LIMIT ?4",
        )?;
        let rows = st.query_map(
            params![after as i64, dev.store_id.to_string(), dev.device_id.to_string(), limit as i64],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
        )?;
        let mut entries = Vec::new();
        for r in rows {
            let (pos, device, ops) = r?;
            entries.push(Entry {
                pos: pos as u64,
                device: Uuid::parse_str(&device).map_err(|e| HubError::Internal(e.to_string()))?,
                ops: serde_json::from_str(&ops)?,
            });
        }
        let more = entries.len() == limit;
        let cursor = if more { entries.last().map_or(after, |e| e.pos) } else { (max_pos as u64).max(after) };
        // An upper bound (other stores' entries are counted too): cheap, and
        // enough for a progress bar.
        let remaining = if more { (max_pos as u64).saturating_sub(cursor) } else { 0 };
        let cursor_tag = match chain_at(conn, cursor)? {
            Some(c) => Some(c),
            None if cursor == after => tag.map(str::to_string),
            None => None,
        };
        Ok(PullResponse { entries, cursor, more, remaining, hub_time_ms: now_ms, cursor_tag })
    }

    fn snapshot(&self, dev: &DeviceAuth) -> Result<Snapshot, HubError> {
        let t = self.tenant(dev.tenant_id)?;
        let store = t.lock();
        // The lock keeps writers out, so the cursor and the state match.
        let cursor = Self::snapshot_cursor(&store)?;
        check_whole_len(store.state_len(Some(dev.store_id))?)?;
        let ops = store.snapshot_ops(Some(dev.store_id))?;
        // The newest chain is the chain at the highest assigned position.
        let cursor_tag = state_get(store.connection(), "chain")?;
        Ok(Snapshot { cursor, cursor_tag, ops: ops.into_iter().map(WireOp::from).collect() })
    }

    fn snapshot_page(
        &self,
        dev: &DeviceAuth,
        after: Option<&StateKey>,
        limit_len: usize,
    ) -> Result<SnapshotPage, HubError> {
        let limit = limit_len.clamp(1, SNAPSHOT_PAGE_LEN_MAX);
        let t = self.tenant(dev.tenant_id)?;
        let multi_store = after.is_none() && self.multi_store(dev.tenant_id)?;
        let store = t.lock();
        let mut page = SnapshotPage::default();
        if after.is_none() {
            // The first page: the tenant lock keeps writers out, so the
            // cursor, its chain and this page are one consistent read (see
            // ARCHITECTURE.md on why later pages may be read later).
            page.cursor = Some(Self::snapshot_cursor(&store)?);
            page.cursor_tag = state_get(store.connection(), "chain")?;
            // The total only drives the till's progress bar. With one store
            // the whole state's count is this store's (up to rows the hub
            // wrote with no store) and reads the smallest index, where one
            // store's count would read the whole table (see `tenant`).
            let scope = if multi_store { Some(dev.store_id) } else { None };
            page.total = Some(store.state_len(scope)?);
        }
        let ops = store.state_ops(Some(dev.store_id), after, None, limit)?;
        drop(store);
        Ok(page_of(page, ops, limit))
    }

    fn devices(&self, tenant: Uuid) -> Result<Vec<DeviceInfo>, HubError> {
        let c = self.control.lock().expect("control");
        let mut st = c.prepare(
            "SELECT id, name, store, prefix, status, enrolled_ms, last_seen_ms, skew_ms FROM devices WHERE tenant = ?1 ORDER BY enrolled_ms",
        )?;
        let rows = st.query_map([tenant.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<i64>>(7)?,
            ))
        })?;
        let mut out = vec![];
        for r in rows {
            let (id, name, store, prefix, status, enrolled, seen, skew) = r?;
            let parse = |s: &str| Uuid::parse_str(s).map_err(|e| HubError::Internal(e.to_string()));
            out.push(DeviceInfo {
                device_id: parse(&id)?,
                name,
                store_id: parse(&store)?,
                receipt_prefix: prefix,
                status,
                enrolled_at_ms: enrolled as u64,
                last_seen_ms: seen.map(|s| s as u64),
                skew_ms: skew,
            });
        }
        drop(st);
        drop(c);
        self.seen.overlay(tenant, &mut out);
        Ok(out)
    }

    fn flush_seen(&self) -> Result<(), HubError> {
        self.seen.flush()
    }

    fn rotate_device_token(&self, dev: &DeviceAuth, _now_ms: u64) -> Result<String, HubError> {
        let token = format!("{DEVICE_TOKEN_PREFIX}{}", self.random_hex(32));
        let n = self.control.lock().expect("control").execute(
            "UPDATE devices SET next_token_hash = ?1 WHERE id = ?2 AND tenant = ?3 AND status = 'active'",
            params![sha(&token), dev.device_id.to_string(), dev.tenant_id.to_string()],
        )?;
        if n == 0 {
            // Revoked or stopped between authentication and now.
            return Err(HubError::Revoked);
        }
        Ok(token)
    }

    fn rotate_admin_token(&self, tenant: Uuid, _now_ms: u64) -> Result<String, HubError> {
        let token = format!("{ADMIN_TOKEN_PREFIX}{}", self.random_hex(32));
        let n = self.control.lock().expect("control").execute(
            "UPDATE tenants SET next_admin_hash = ?1 WHERE id = ?2",
            params![sha(&token), tenant.to_string()],
        )?;
        if n == 0 {
            return Err(HubError::NotFound(format!("tenant {tenant}")));
        }
        Ok(token)
    }

    fn revoke(&self, tenant: Uuid, device: Uuid) -> Result<(), HubError> {
        let n = self.control.lock().expect("control").execute(
            "UPDATE devices SET status = 'revoked' WHERE id = ?1 AND tenant = ?2",
            params![device.to_string(), tenant.to_string()],
        )?;
        if n == 0 {
            return Err(HubError::NotFound(format!("device {device}")));
        }
        Ok(())
    }

    fn compact(&self, tenant: Uuid, keep_len: u64) -> Result<u64, HubError> {
        SqliteHub::compact(self, tenant, keep_len)
    }

    fn store_digest(&self, tenant: Uuid, store: Uuid) -> Result<String, HubError> {
        self.tenant_of_store(tenant, store)?;
        let t = self.tenant(tenant)?;
        let s = t.lock();
        Ok(s.digests_for(Some(store))?.0)
    }
}

impl SqliteHub {
    /// The cursor a snapshot matches: the highest position ever assigned
    /// (AUTOINCREMENT keeps it even when compaction emptied the log).
    fn snapshot_cursor(store: &Store) -> Result<u64, HubError> {
        let cursor: i64 = store.connection().query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'hub_log'), 0)",
            [],
            |r| r.get(0),
        )?;
        Ok(cursor as u64)
    }
}

/// Refuses a whole snapshot (a till from before paging) past
/// [`SNAPSHOT_WHOLE_LEN_MAX`] operations: building it would take memory in
/// proportion to the store, on the hub and on the till.
pub(crate) fn check_whole_len(len: u64) -> Result<(), HubError> {
    if len > SNAPSHOT_WHOLE_LEN_MAX {
        return Err(HubError::bad(
            "snapshot_too_large",
            format!(
                "this store's snapshot holds {len} operations, more than {SNAPSHOT_WHOLE_LEN_MAX} in one answer: page it with GET /v1/snapshot?limit=N (at most {SNAPSHOT_PAGE_LEN_MAX}) and &after=NEXT (update this till)"
            ),
        ));
    }
    Ok(())
}

/// Finishes a snapshot page: a full page names the key to continue after.
pub(crate) fn page_of(mut page: SnapshotPage, ops: Vec<Op>, limit: usize) -> SnapshotPage {
    if ops.len() == limit {
        page.next = ops.last().map(|o| SnapshotKey::from(&o.state_key()));
    }
    page.ops = ops.into_iter().map(WireOp::from).collect();
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_snapshot_past_its_limit_is_refused_with_a_code_that_says_page() {
        assert!(check_whole_len(SNAPSHOT_WHOLE_LEN_MAX).is_ok());
        match check_whole_len(SNAPSHOT_WHOLE_LEN_MAX + 1) {
            Err(HubError::BadRequest { code, message, .. }) => {
                assert_eq!(code, "snapshot_too_large");
                assert!(message.contains("limit=N"), "{message}");
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    fn has_index(hub: &SqliteHub, tenant: Uuid, name: &str) -> bool {
        let t = hub.tenant(tenant).expect("tenant");
        let s = t.lock();
        s.connection()
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?1", [name], |r| {
                r.get::<_, i64>(0)
            })
            .expect("schema")
            == 1
    }

    fn has_store_index(hub: &SqliteHub, tenant: Uuid) -> bool {
        has_index(hub, tenant, "hub_ledger_store")
    }

    const TILL_READ_INDEXES: [&str; 2] = ["ledger_key", "ledger_sales_hlc"];

    #[test]
    fn a_tenant_state_has_none_of_the_tills_read_indexes() {
        let dir = tempfile::tempdir().expect("dir");
        let now = 1_800_000_000_000;
        let tenant = {
            let hub = SqliteHub::open(dir.path(), IdGen::from_seed([7; 32])).expect("hub");
            let (tenant, _) = hub.create_tenant("shop", true, now).expect("tenant");
            hub.create_store(tenant, "one", now).expect("store");
            for name in TILL_READ_INDEXES {
                assert!(!has_index(&hub, tenant, name), "{name} on a new tenant state");
            }
            // A tenant file from before this rule has them: the next open
            // drops them.
            let t = hub.tenant(tenant).expect("tenant");
            t.lock()
                .connection()
                .execute_batch(
                    "CREATE INDEX ledger_key ON ledger(tbl, key);
                     CREATE INDEX ledger_sales_hlc ON ledger(hlc, id) WHERE tbl = 'sales';",
                )
                .expect("old indexes");
            tenant
        };
        let hub = SqliteHub::open(dir.path(), IdGen::from_seed([8; 32])).expect("hub");
        for name in TILL_READ_INDEXES {
            assert!(!has_index(&hub, tenant, name), "{name} kept at open");
        }
        // What the hub reads still answers: the unique id index pages the
        // snapshot, and the sample's opening stock is all there.
        let t = hub.tenant(tenant).expect("tenant");
        let s = t.lock();
        let page = s.state_ops(None, None, None, 100_000).expect("ops");
        let ledger = page.iter().filter(|o| matches!(o, Op::Insert(_))).count();
        assert_eq!(ledger, tillsync_store::sample::PRODUCTS.len());
        assert_eq!(s.state_len(None).expect("len"), page.len() as u64);
        assert!(s.digests_for(None).is_ok());
    }

    #[test]
    fn the_ledger_is_indexed_by_store_from_a_tenants_second_store_on() {
        let dir = tempfile::tempdir().expect("dir");
        let now = 1_800_000_000_000;
        let (tenant, first) = {
            let hub = SqliteHub::open(dir.path(), IdGen::from_seed([7; 32])).expect("hub");
            let (tenant, _) = hub.create_tenant("shop", true, now).expect("tenant");
            let first = hub.create_store(tenant, "one", now).expect("store");
            assert!(!has_store_index(&hub, tenant), "one store needs no index by store");
            // A tenant file from before this rule has the index: opening
            // it with one store drops it.
            hub.tenant(tenant)
                .expect("tenant")
                .lock()
                .connection()
                .execute_batch("CREATE INDEX hub_ledger_store ON ledger(store_id, id)")
                .expect("index");
            (tenant, first)
        };
        let hub = SqliteHub::open(dir.path(), IdGen::from_seed([8; 32])).expect("hub");
        assert!(!has_store_index(&hub, tenant), "dropped at open for one store");
        let second = hub.create_store(tenant, "two", now).expect("store");
        assert!(has_store_index(&hub, tenant), "the second store builds it");
        // Each store's state still holds its own opening stock only.
        let t = hub.tenant(tenant).expect("tenant");
        for store in [first, second] {
            let s = t.lock();
            let rows = s.state_ops(Some(store), None, None, 10_000).expect("ops");
            let ledger: Vec<_> = rows
                .iter()
                .filter_map(|o| match o {
                    Op::Insert(r) => Some(r),
                    Op::Write(_) => None,
                })
                .collect();
            assert_eq!(ledger.len(), tillsync_store::sample::PRODUCTS.len());
            assert!(ledger.iter().all(|r| r.store == store));
            assert_eq!(s.state_len(Some(store)).expect("len"), rows.len() as u64);
        }
        drop(t);
        drop(hub);
        let hub = SqliteHub::open(dir.path(), IdGen::from_seed([9; 32])).expect("hub");
        assert!(has_store_index(&hub, tenant), "kept at open for two stores");
    }
}
