//! The PostgreSQL hub: many stateless hub processes over one database.
//!
//! Every table of tenant data carries `tenant_id`, and every query filters by
//! it; the tenant always comes from the authenticated token. The change log
//! (`hub_log`) is the source of truth: snapshots and store digests are built
//! by applying log entries to an in-memory store, cached per process by log
//! position and caught up incrementally (only a cache: a process that loses
//! it rebuilds it from the log).
//!
//! Commit order: a push locks its tenant's row (`SELECT ... FOR UPDATE`)
//! before it allocates log positions from the row's counter and holds the
//! lock until COMMIT, so one tenant's positions commit in increasing order.
//! A reader that sees position `p` committed therefore sees every position
//! below it: `pull where pos > cursor` never skips a change that took its
//! position earlier and committed later (see ARCHITECTURE.md).
//!
//! Live events: a push sends `NOTIFY` in its transaction (delivered at
//! COMMIT); every process LISTENs on one dedicated connection and feeds what
//! other processes committed into its own event streams.

use crate::HubError;
use crate::seen::{SeenAt, SeenLog};
use crate::sqlite::{
    ADMIN_TOKEN_PREFIX, DEVICE_TOKEN_PREFIX, PULL_LEN_MAX, PUSH_LEN_MAX, SqliteHub, check_whole_len, other_origins,
    page_of, sha, split_scope, token_match, validate,
};
use crate::storage::{Caller, DeviceAuth, HubStorage, Notice};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{GenericClient, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tillsync_core::change::{StateKey, hex};
use tillsync_core::protocol::{LaneLog, PushDecision, decide_push};
use tillsync_core::wire::{
    DeviceInfo, Enrolment, Entry, ErrorBody, LaneAck, PullResponse, PushRequest, PushResponse, QuarantineAck,
    SNAPSHOT_PAGE_LEN_MAX, Snapshot, SnapshotPage, Usage, WireOp,
};
use tillsync_core::{Hlc, IdGen, Lane, Op, Schema};
use tillsync_store::{Identity, Store};
use uuid::Uuid;

/// The channel every hub process LISTENs on.
pub const EVENTS_CHANNEL: &str = "tillsync_events";
/// `application_name` of a process's LISTEN connection.
pub const LISTEN_APPLICATION_NAME: &str = "tillsync-hub-listen";

/// Key of the advisory lock that serialises migrations of hub processes
/// starting at once ("tillsync" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x7469_6c6c_7379_6e63;

/// Versioned migrations, applied in order, each once, in one transaction
/// under [`MIGRATION_LOCK_KEY`]. Never edit a shipped one: add the next.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE tenants(
    id uuid PRIMARY KEY,
    name text NOT NULL,
    admin_hash text NOT NULL UNIQUE,
    sample boolean NOT NULL,
    quota_changes bigint NOT NULL DEFAULT 0,
    next_prefix bigint NOT NULL DEFAULT 1,
    created_ms bigint NOT NULL,
    -- Highest log position allocated. Only a transaction holding this row's
    -- lock moves it, and it holds the lock until COMMIT: positions commit in order.
    last_pos bigint NOT NULL DEFAULT 0,
    -- Log positions at or below it are compacted into hub_base.
    horizon bigint NOT NULL DEFAULT 0,
    -- The hub's clock for the tenant: the highest HLC it stored or wrote.
    hub_hlc bigint NOT NULL DEFAULT 0
);
CREATE TABLE stores(
    tenant_id uuid NOT NULL REFERENCES tenants(id),
    id uuid NOT NULL,
    name text NOT NULL,
    created_ms bigint NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE devices(
    tenant_id uuid NOT NULL,
    id uuid NOT NULL,
    store_id uuid NOT NULL,
    name text NOT NULL,
    token_hash text NOT NULL UNIQUE,
    prefix text NOT NULL,
    status text NOT NULL,
    enrolled_ms bigint NOT NULL,
    last_seen_ms bigint,
    skew_ms bigint,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, store_id) REFERENCES stores(tenant_id, id)
);
CREATE TABLE codes(
    code_hash text PRIMARY KEY,
    tenant_id uuid NOT NULL,
    store_id uuid NOT NULL,
    expires_ms bigint NOT NULL,
    used_ms bigint,
    FOREIGN KEY (tenant_id, store_id) REFERENCES stores(tenant_id, id)
);
CREATE TABLE hub_log(
    tenant_id uuid NOT NULL REFERENCES tenants(id),
    pos bigint NOT NULL,
    store_id uuid,
    device uuid NOT NULL,
    lane text NOT NULL,
    seq bigint NOT NULL,
    ops text NOT NULL,
    bytes bigint NOT NULL,
    received_ms bigint NOT NULL,
    PRIMARY KEY (tenant_id, pos)
);
CREATE TABLE hub_seqs(
    tenant_id uuid NOT NULL REFERENCES tenants(id),
    device uuid NOT NULL,
    lane text NOT NULL,
    seq bigint NOT NULL,
    digest text NOT NULL,
    PRIMARY KEY (tenant_id, device, lane, seq)
);
CREATE TABLE hub_quarantine(
    tenant_id uuid NOT NULL REFERENCES tenants(id),
    device uuid NOT NULL,
    lane text NOT NULL,
    seq bigint NOT NULL,
    reason text NOT NULL,
    ops text NOT NULL,
    received_ms bigint NOT NULL,
    PRIMARY KEY (tenant_id, device, lane, seq)
);
-- The merged state (every head and tombstone, every ledger row) at the
-- compaction horizon, as operations: the log before it is gone.
CREATE TABLE hub_base(
    tenant_id uuid PRIMARY KEY REFERENCES tenants(id),
    pos bigint NOT NULL,
    ops text NOT NULL
);
"#,
    ),
    // The log chain (as on the SQLite hub): each entry's hash over every
    // entry before it, so a till's tagged cursor is checked against the log
    // it came from and a database restored to an earlier point is noticed.
    (
        2,
        r#"
ALTER TABLE hub_log ADD COLUMN chain text;
ALTER TABLE tenants ADD COLUMN chain text NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN horizon_chain text;
"#,
    ),
    // A rotated token waits here until its first use retires the old one
    // (see `HubStorage::rotate_device_token`).
    (
        3,
        r#"
ALTER TABLE devices ADD COLUMN next_token_hash text UNIQUE;
ALTER TABLE tenants ADD COLUMN next_admin_hash text UNIQUE;
"#,
    ),
];

/// Tenants whose merged state a process keeps in memory; past it the cache
/// starts again (it is rebuilt from the log on demand).
pub const MERGED_TENANTS_MAX: usize = 64;
/// Log entries read per query when a merged state catches up.
const CATCH_UP_PAGE_LEN: i64 = 2_000;

/// How a [`PgHub`] reaches its database.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Most connections in this process's pool.
    pub pool_len_max: u32,
    /// Longest wait for a pooled connection before the request fails with
    /// `unavailable` (503), in milliseconds.
    pub acquire_timeout_ms: u64,
    /// Longest wait to open one connection, in milliseconds.
    pub connect_timeout_ms: u64,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { pool_len_max: 16, acquire_timeout_ms: 5_000, connect_timeout_ms: 5_000 }
    }
}

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
type Hook = Arc<dyn Fn() + Send + Sync>;

/// A tenant's merged state as of log position `pos`.
struct Merged {
    store: Store,
    pos: u64,
}

/// The PostgreSQL hub.
pub struct PgHub {
    /// `Option` only so that `Drop` can release it off the async threads.
    pool: Option<Pool>,
    config: postgres::Config,
    /// Tells this process's notices from other processes' on the channel.
    instance: Uuid,
    ids: Mutex<IdGen>,
    schema: Schema,
    merged: Mutex<HashMap<Uuid, Arc<Mutex<Merged>>>>,
    stop: Arc<AtomicBool>,
    before_commit: Mutex<Option<Hook>>,
    /// Devices' last contact, written off the push transaction. `Option`
    /// only so that `Drop` can write the last of it off the async threads.
    seen: Option<SeenLog>,
}

impl std::fmt::Debug for PgHub {
    // The URL may hold a password: only the instance is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgHub").field("instance", &self.instance).finish_non_exhaustive()
    }
}

/// Runs blocking database work. The sync client drives each connection with
/// a runtime of its own, which tokio forbids on a thread that drives async
/// tasks: on a multi-threaded runtime's worker it goes through
/// `block_in_place`, inside a current-thread runtime on a scoped thread of
/// its own. The HTTP layer already calls from the blocking pool, where this
/// is a plain call.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| s.spawn(f).join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
        Err(_) => f(),
    }
}

fn lane_of(s: &str) -> Result<Lane, HubError> {
    Lane::ALL.into_iter().find(|l| l.as_str() == s).ok_or_else(|| HubError::Internal(format!("unknown lane {s}")))
}

/// What the hub holds for one (device, lane), loaded once per push and kept
/// up to date as the push stores changes (the tenant lock keeps others out).
struct MemLaneLog {
    next: u64,
    digests: HashMap<u64, String>,
}

impl LaneLog for MemLaneLog {
    fn next_seq(&self) -> u64 {
        self.next
    }
    fn digest_at(&self, seq: u64) -> Option<String> {
        self.digests.get(&seq).cloned()
    }
}

/// A pushed change made ready before the tenant lock is taken: the log rows
/// of its scopes as JSON, or why it goes to quarantine. Whether it is stored
/// at all (new, duplicate, gap, reused sequence) is decided under the lock.
enum Prepared {
    Apply { parts: Vec<(Option<Uuid>, String)>, max_hlc: u64 },
    Quarantine { reason: String },
}

/// Rows a transaction adds to the log, written with one statement.
#[derive(Default)]
struct LogRows {
    pos: Vec<i64>,
    store: Vec<Option<Uuid>>,
    device: Vec<Uuid>,
    lane: Vec<String>,
    seq: Vec<i64>,
    ops: Vec<String>,
    bytes: Vec<i64>,
}

impl LogRows {
    fn push(
        &mut self,
        pos: u64,
        store: Option<Uuid>,
        device: Uuid,
        lane: Lane,
        seq: u64,
        ops: &[&WireOp],
    ) -> Result<(), HubError> {
        self.push_json(pos, store, device, lane, seq, serde_json::to_string(ops)?);
        Ok(())
    }

    fn push_json(&mut self, pos: u64, store: Option<Uuid>, device: Uuid, lane: Lane, seq: u64, json: String) {
        self.pos.push(pos as i64);
        self.store.push(store);
        self.device.push(device);
        self.lane.push(lane.as_str().to_string());
        self.seq.push(seq as i64);
        self.bytes.push(json.len() as i64);
        self.ops.push(json);
    }

    /// Writes the rows with their log chain. The caller holds the tenant's
    /// row lock, so the tenant's chain cannot move meanwhile.
    fn write(&self, tx: &mut impl GenericClient, tenant: Uuid, now_ms: u64) -> Result<(), HubError> {
        if self.pos.is_empty() {
            return Ok(());
        }
        let mut prev: String = tx.query_one("SELECT chain FROM tenants WHERE id = $1", &[&tenant])?.get(0);
        let mut chains = Vec::with_capacity(self.pos.len());
        for i in 0..self.pos.len() {
            prev = sha(&format!("{prev}\n{}\n{}\n{}\n{}", self.device[i], self.lane[i], self.seq[i], self.ops[i]));
            chains.push(prev.clone());
        }
        tx.execute(
            "INSERT INTO hub_log(tenant_id, pos, store_id, device, lane, seq, ops, bytes, received_ms, chain)
             SELECT $1, p, s, d, l, q, o, b, $9, c
             FROM unnest($2::bigint[], $3::uuid[], $4::uuid[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $10::text[])
                  AS u(p, s, d, l, q, o, b, c)",
            &[
                &tenant,
                &self.pos,
                &self.store,
                &self.device,
                &self.lane,
                &self.seq,
                &self.ops,
                &self.bytes,
                &(now_ms as i64),
                &chains,
            ],
        )?;
        tx.execute("UPDATE tenants SET chain = $2 WHERE id = $1", &[&tenant, &prev])?;
        Ok(())
    }
}

/// The log chain at a position (the entry's, or the one kept at the
/// compaction horizon); `None` when unknown (then no tag is given and the
/// till's next pull is not checked).
fn chain_at(c: &mut impl GenericClient, tenant: Uuid, pos: u64) -> Result<Option<String>, HubError> {
    if pos == 0 {
        return Ok(None);
    }
    let row = c.query_opt("SELECT chain FROM hub_log WHERE tenant_id = $1 AND pos = $2", &[&tenant, &(pos as i64)])?;
    Ok(match row {
        Some(r) => r.get(0),
        None => c
            .query_opt("SELECT horizon_chain FROM tenants WHERE id = $1 AND horizon = $2", &[&tenant, &(pos as i64)])?
            .and_then(|r| r.get(0)),
    })
}

/// The payload of a notice on [`EVENTS_CHANNEL`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    /// The hub process that committed it.
    i: Uuid,
    t: Uuid,
    s: Option<Uuid>,
    p: u64,
}

/// Sends the notices of a transaction, delivered by PostgreSQL at COMMIT
/// (and never if it rolls back). One per scope, the highest position: a
/// notice only says "pull".
fn notify(tx: &mut impl GenericClient, instance: Uuid, notices: &[Notice]) -> Result<(), HubError> {
    let mut top: BTreeMap<(Uuid, Option<Uuid>), u64> = BTreeMap::new();
    for n in notices {
        let e = top.entry((n.tenant_id, n.store_id)).or_default();
        *e = (*e).max(n.pos);
    }
    for ((t, s), p) in top {
        let payload = serde_json::to_string(&Wire { i: instance, t, s, p })?;
        tx.execute("SELECT pg_notify($1, $2)", &[&EVENTS_CHANNEL, &payload])?;
    }
    Ok(())
}

impl PgHub {
    /// Connects to `url` (e.g. `postgres://hub@127.0.0.1/tillsync`), applies
    /// pending migrations, and returns the hub. `ids` seeds tokens and ids.
    pub fn open(url: &str, options: &PgOptions, ids: IdGen) -> Result<PgHub, HubError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| HubError::bad("bad_database_url", format!("the database URL is not valid: {e}")))?;
        config.connect_timeout(Duration::from_millis(options.connect_timeout_ms));
        if config.get_application_name().is_none() {
            config.application_name("tillsync-hub");
        }
        let manager = PostgresConnectionManager::new(config.clone(), NoTls);
        let pool = off_runtime(|| {
            r2d2::Pool::builder()
                .max_size(options.pool_len_max.max(1))
                // One connection up front, so a wrong URL fails at start.
                .min_idle(Some(1))
                .connection_timeout(Duration::from_millis(options.acquire_timeout_ms.max(1)))
                .build(manager)
        })?;
        let mut ids = ids;
        let instance = ids.new_v7(0);
        // Seen times of this process's pushes, written in one unsynced
        // transaction every few seconds: a crash may lose a few seconds of
        // them, never a change. The newest time wins across processes.
        let seen_pool = pool.clone();
        let writer: crate::seen::SeenWriter = Box::new(move |batch| {
            let mut c = seen_pool.get()?;
            let mut tx = c.transaction()?;
            tx.batch_execute("SET LOCAL synchronous_commit = off")?;
            let tenants: Vec<Uuid> = batch.iter().map(|(_, a)| a.tenant).collect();
            let devices: Vec<Uuid> = batch.iter().map(|(d, _)| *d).collect();
            let seen: Vec<i64> = batch.iter().map(|(_, a)| a.last_seen_ms as i64).collect();
            let skews: Vec<i64> = batch.iter().map(|(_, a)| a.skew_ms).collect();
            tx.execute(
                "UPDATE devices AS d SET last_seen_ms = u.seen, skew_ms = u.skew
                 FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[]) AS u(tenant, id, seen, skew)
                 WHERE d.tenant_id = u.tenant AND d.id = u.id AND (d.last_seen_ms IS NULL OR d.last_seen_ms <= u.seen)",
                &[&tenants, &devices, &seen, &skews],
            )?;
            tx.commit()?;
            Ok(())
        });
        let hub = PgHub {
            seen: Some(SeenLog::start(writer, Some(crate::seen::SEEN_FLUSH_INTERVAL_MS))),
            pool: Some(pool),
            config,
            instance,
            ids: Mutex::new(ids),
            schema: Schema::standard(),
            merged: Mutex::new(HashMap::new()),
            stop: Arc::new(AtomicBool::new(false)),
            before_commit: Mutex::new(None),
        };
        off_runtime(|| hub.migrate())?;
        Ok(hub)
    }

    fn pool(&self) -> &Pool {
        self.pool.as_ref().expect("the pool lives as long as the hub")
    }

    fn seen(&self) -> &SeenLog {
        self.seen.as_ref().expect("the seen log lives as long as the hub")
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, HubError> {
        Ok(self.pool().get()?)
    }

    /// Applies the migrations this database lacks. Two processes starting
    /// at once queue on the advisory lock; the second finds nothing to do.
    fn migrate(&self) -> Result<(), HubError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations(version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )?;
        let applied: i64 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])?.get(0);
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        if applied > latest {
            return Err(HubError::Internal(format!(
                "the database schema is version {applied}, newer than this hub's {latest}: upgrade the hub"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
            tx.batch_execute(sql)?;
            tx.execute("INSERT INTO schema_migrations(version) VALUES ($1)", &[version])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The schema version of the database (the highest migration applied).
    pub fn schema_version(&self) -> Result<i64, HubError> {
        off_runtime(|| Ok(self.conn()?.query_one("SELECT max(version) FROM schema_migrations", &[])?.get(0)))
    }

    /// Test hook: runs in every push after its log rows are written and
    /// before COMMIT, while the push holds its tenant's lock. Tests use it to
    /// hold a transaction open at exactly that point.
    #[doc(hidden)]
    pub fn set_before_commit_hook(&self, hook: Option<Arc<dyn Fn() + Send + Sync>>) {
        *self.before_commit.lock().expect("hook") = hook;
    }

    fn random_hex(&self, bytes: usize) -> String {
        let mut b = vec![0u8; bytes];
        self.ids.lock().expect("ids").fill(&mut b);
        hex(&b)
    }

    fn new_id(&self, now_ms: u64) -> Uuid {
        self.ids.lock().expect("ids").new_v7(now_ms)
    }

    /// The tenant's row, locked until the transaction ends: this is what
    /// orders a tenant's log positions by commit. Returns
    /// (last_pos, hub_hlc, quota_changes, sample).
    fn lock_tenant(tx: &mut impl GenericClient, tenant: Uuid) -> Result<(u64, u64, i64, bool), HubError> {
        let row = tx
            .query_opt(
                "SELECT last_pos, hub_hlc, quota_changes, sample FROM tenants WHERE id = $1 FOR UPDATE",
                &[&tenant],
            )?
            .ok_or_else(|| HubError::NotFound(format!("tenant {tenant}")))?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64, row.get(2), row.get(3)))
    }

    fn merged(&self, tenant: Uuid) -> Result<Arc<Mutex<Merged>>, HubError> {
        let mut map = self.merged.lock().expect("merged");
        if let Some(m) = map.get(&tenant) {
            return Ok(m.clone());
        }
        if map.len() >= MERGED_TENANTS_MAX {
            map.clear();
        }
        let identity = Identity {
            tenant_id: tenant,
            store_id: Uuid::nil(),
            device_id: SqliteHub::hub_device(tenant),
            receipt_prefix: "HUB".into(),
            name: "hub".into(),
            mode: "hub".into(),
        };
        let mut seed = [0u8; 32];
        self.ids.lock().expect("ids").fill(&mut seed);
        let store = Store::in_memory(identity, self.schema.clone(), IdGen::from_seed(seed))?;
        // Read as a hub reads (snapshot pages of one store among many).
        store.set_hub_indexes(true)?;
        let m = Arc::new(Mutex::new(Merged { store, pos: 0 }));
        map.insert(tenant, m.clone());
        Ok(m)
    }

    fn forget_merged(&self, tenant: Uuid) {
        self.merged.lock().expect("merged").remove(&tenant);
    }

    /// Brings a merged state up to `upto`, which must be a committed
    /// `last_pos`: every position at or below it is committed, so reading
    /// them by position misses none.
    fn catch_up(tx: &mut impl GenericClient, m: &mut Merged, tenant: Uuid, upto: u64) -> Result<(), HubError> {
        if m.pos >= upto {
            return Ok(());
        }
        // Behind the horizon: start from the compacted base. It holds at
        // least everything up to its position; merging is idempotent, so
        // applying it over an older state is right.
        if let Some(row) = tx
            .query_opt("SELECT pos, ops FROM hub_base WHERE tenant_id = $1 AND pos > $2", &[&tenant, &(m.pos as i64)])?
        {
            let ops: Vec<WireOp> = serde_json::from_str(row.get::<_, &str>(1))?;
            let ops = wire_to_ops(&ops)?;
            m.store.transaction(|s| s.apply_in_transaction(&ops).map(|_| ()))?;
            m.pos = row.get::<_, i64>(0) as u64;
        }
        while m.pos < upto {
            let rows = tx.query(
                "SELECT pos, ops FROM hub_log WHERE tenant_id = $1 AND pos > $2 AND pos <= $3 ORDER BY pos LIMIT $4",
                &[&tenant, &(m.pos as i64), &(upto as i64), &CATCH_UP_PAGE_LEN],
            )?;
            let Some(last) = rows.last().map(|r| r.get::<_, i64>(0) as u64) else {
                break;
            };
            let mut ops = Vec::new();
            for r in &rows {
                let wire: Vec<WireOp> = serde_json::from_str(r.get::<_, &str>(1))?;
                ops.extend(wire_to_ops(&wire)?);
            }
            m.store.transaction(|s| s.apply_in_transaction(&ops).map(|_| ()))?;
            m.pos = last;
        }
        m.pos = m.pos.max(upto);
        Ok(())
    }

    /// Runs a write of the hub itself (policies, sample data) on the
    /// tenant's merged state, logs it like a device's change in `tx` (which
    /// takes the tenant lock) and commits. The hub device's sequences come
    /// from `hub_seqs`, not from the in-memory store, so every process
    /// continues the same sequence. The merged state stays locked until
    /// COMMIT, so no reader sees a write that might roll back; if anything
    /// fails, the state is dropped (it is only a cache).
    fn hub_write(
        &self,
        mut tx: postgres::Transaction<'_>,
        tenant: Uuid,
        now_ms: u64,
        f: impl FnOnce(&mut Store) -> Result<(), HubError>,
    ) -> Result<Vec<Notice>, HubError> {
        let (last_pos, hub_hlc, ..) = Self::lock_tenant(&mut tx, tenant)?;
        let m = self.merged(tenant)?;
        let mut m = m.lock().expect("merged");
        let r = (|| -> Result<(Vec<Notice>, u64), HubError> {
            Self::catch_up(&mut tx, &mut m, tenant, last_pos)?;
            m.store.observe_clock(Hlc(hub_hlc))?;
            f(&mut m.store)?;
            let device = SqliteHub::hub_device(tenant);
            let mut rows = LogRows::default();
            let mut notices = vec![];
            let mut pos = last_pos;
            for lane in Lane::ALL {
                let pending = m.store.pending_changes(lane, usize::MAX >> 1)?;
                let Some(local_last) = pending.last().map(|p| p.change.seq) else {
                    continue;
                };
                let next: i64 = tx
                    .query_one(
                        "SELECT coalesce(max(seq), 0) + 1 FROM hub_seqs WHERE tenant_id = $1 AND device = $2 AND lane = $3",
                        &[&tenant, &device, &lane.as_str()],
                    )?
                    .get(0);
                for (i, p) in pending.iter().enumerate() {
                    let mut change = p.change.clone();
                    change.seq = next as u64 + i as u64;
                    tx.execute(
                        "INSERT INTO hub_seqs(tenant_id, device, lane, seq, digest) VALUES ($1, $2, $3, $4, $5)",
                        &[&tenant, &device, &lane.as_str(), &(change.seq as i64), &change.digest()],
                    )?;
                    let wire: Vec<WireOp> = change.ops.iter().map(WireOp::from).collect();
                    for (store_id, part) in split_scope(&self.schema, &change.ops, &wire) {
                        pos += 1;
                        rows.push(pos, store_id, device, lane, change.seq, &part)?;
                        notices.push(Notice { tenant_id: tenant, store_id, pos });
                    }
                }
                m.store.set_acked(lane, local_last)?;
            }
            rows.write(&mut tx, tenant, now_ms)?;
            tx.execute(
                "UPDATE tenants SET last_pos = $2, hub_hlc = greatest(hub_hlc, $3) WHERE id = $1",
                &[&tenant, &(pos as i64), &(m.store.clock().0 as i64)],
            )?;
            notify(&mut tx, self.instance, &notices)?;
            Ok((notices, pos))
        })();
        let r = r.and_then(|(notices, pos)| {
            tx.commit()?;
            Ok((notices, pos))
        });
        match r {
            Ok((notices, pos)) => {
                m.pos = pos;
                Ok(notices)
            }
            Err(e) => {
                drop(m);
                self.forget_merged(tenant);
                Err(e)
            }
        }
    }

    /// The merged state caught up to the committed end of the log.
    fn with_merged<T>(&self, tenant: Uuid, f: impl FnOnce(&Store, u64) -> Result<T, HubError>) -> Result<T, HubError> {
        let mut c = self.conn()?;
        let m = self.merged(tenant)?;
        let mut m = m.lock().expect("merged");
        // One snapshot for the end of the log, the compacted base and the
        // entries: a compaction committing in between cannot delete entries
        // this catch-up has not read yet. Read after taking the state's
        // lock, so the state is never behind the position reported with it.
        let r = (|| -> Result<u64, HubError> {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let last_pos: i64 = tx
                .query_opt("SELECT last_pos FROM tenants WHERE id = $1", &[&tenant])?
                .ok_or_else(|| HubError::NotFound(format!("tenant {tenant}")))?
                .get(0);
            Self::catch_up(&mut tx, &mut m, tenant, last_pos as u64)?;
            tx.commit()?;
            Ok(last_pos as u64)
        })();
        match r {
            Ok(last_pos) => f(&m.store, last_pos),
            Err(e) => {
                drop(m);
                self.forget_merged(tenant);
                Err(e)
            }
        }
    }

    fn check_store(c: &mut impl GenericClient, tenant: Uuid, store: Uuid) -> Result<(), HubError> {
        c.query_opt("SELECT 1 FROM stores WHERE tenant_id = $1 AND id = $2", &[&tenant, &store])?
            .map(|_| ())
            .ok_or_else(|| HubError::NotFound(format!("store {store} of this tenant")))
    }

    /// Decodes, validates and serialises one pushed change (see [`Prepared`]).
    fn prepare(
        &self,
        dev: &DeviceAuth,
        wc: &tillsync_core::wire::WireChange,
        relayed: &HashMap<Uuid, Uuid>,
    ) -> Result<Prepared, HubError> {
        let change = match wc.to_change(dev.device_id) {
            Ok(c) => c,
            Err(e) => return Ok(Prepared::Quarantine { reason: e.to_string() }),
        };
        if let Err(reason) = validate(&self.schema, dev, &change.ops, relayed) {
            return Ok(Prepared::Quarantine { reason });
        }
        let mut parts = vec![];
        for (store_id, part) in split_scope(&self.schema, &change.ops, &wc.ops) {
            parts.push((store_id, serde_json::to_string(&part)?));
        }
        // The hub's clock observes what it applies, as the SQLite hub's store does.
        let max_hlc = change
            .ops
            .iter()
            .map(|op| match op {
                Op::Write(w) => w.id.hlc.0,
                Op::Insert(r) => r.hlc.0,
            })
            .max()
            .unwrap_or(0);
        Ok(Prepared::Apply { parts, max_hlc })
    }

    fn push_inner(
        &self,
        dev: &DeviceAuth,
        req: &PushRequest,
        now_ms: u64,
    ) -> Result<(PushResponse, Vec<Notice>), HubError> {
        if req.changes.len() > PUSH_LEN_MAX {
            return Err(HubError::bad("too_many_changes", format!("push at most {PUSH_LEN_MAX} changes at once")));
        }
        let tenant = dev.tenant_id;
        let mut c = self.conn()?;
        if req.copied {
            // The device found the hub acknowledging sequences it never
            // wrote: a copy of its folder wrote them. Stop it (both copies).
            c.execute(
                "UPDATE devices SET status = 'forked' WHERE tenant_id = $1 AND id = $2 AND status = 'active'",
                &[&tenant, &dev.device_id],
            )?;
            tracing::warn!(device = %dev.device_id, "device reports a copied folder: device stopped");
            return Err(HubError::Forked);
        }
        // Other devices named as origins, looked up before the tenant lock.
        let others = other_origins(dev, req);
        let mut relayed: HashMap<Uuid, Uuid> = HashMap::new();
        if !others.is_empty() {
            let mut known: HashMap<Uuid, Uuid> = HashMap::new();
            for r in c.query("SELECT id, tenant_id, store_id FROM devices WHERE id = ANY($1)", &[&others])? {
                let (id, t, s): (Uuid, Uuid, Uuid) = (r.get(0), r.get(1), r.get(2));
                // Another tenant's device is never a valid origin.
                if t == tenant {
                    relayed.insert(id, s);
                }
                known.insert(id, t);
            }
            // A device this hub does not know (enrolled after the backup a
            // restored hub came from) comes back through a till of the same
            // store: it counts as that store's, as on the SQLite hub.
            for o in &others {
                if !known.contains_key(o) {
                    relayed.insert(*o, dev.store_id);
                }
            }
        }
        // Decoding, validation and serialisation need no lock: done here,
        // so the tenant lock (which serialises the tenant's pushes) is held
        // only for the sequence decisions and the writes.
        let prepared: Vec<Prepared> =
            req.changes.iter().map(|wc| self.prepare(dev, wc, &relayed)).collect::<Result<_, HubError>>()?;
        let mut by_lane: BTreeMap<Lane, Vec<(&tillsync_core::wire::WireChange, &Prepared)>> = BTreeMap::new();
        for (ch, p) in req.changes.iter().zip(&prepared) {
            by_lane.entry(ch.lane).or_default().push((ch, p));
        }
        let hub_device = SqliteHub::hub_device(tenant);
        let mut tx = c.transaction()?;
        let (last_pos, hub_hlc, quota, _) = Self::lock_tenant(&mut tx, tenant)?;
        let mut pos = last_pos;
        let mut hlc = hub_hlc;
        let mut next: HashMap<Lane, u64> = HashMap::new();
        for r in tx.query(
            "SELECT lane, max(seq) FROM hub_seqs WHERE tenant_id = $1 AND device = $2 GROUP BY lane",
            &[&tenant, &dev.device_id],
        )? {
            next.insert(lane_of(r.get(0))?, r.get::<_, i64>(1) as u64 + 1);
        }
        let mut quota_used: Option<i64> = None;
        let mut seqs = (Vec::<String>::new(), Vec::<i64>::new(), Vec::<String>::new());
        let mut rows = LogRows::default();
        let mut quarantine = (Vec::<String>::new(), Vec::<i64>::new(), Vec::<String>::new(), Vec::<String>::new());
        let mut notices = vec![];
        let mut lanes = BTreeMap::new();
        let mut forked = false;
        for (lane, mut changes) in by_lane {
            changes.sort_by_key(|(ch, _)| ch.seq);
            let mut log = MemLaneLog { next: next.get(&lane).copied().unwrap_or(1), digests: HashMap::new() };
            // Digests of sequences already stored that this push names
            // again (a retry, or a cloned till).
            let again: Vec<i64> =
                changes.iter().filter(|(ch, _)| ch.seq < log.next).map(|(ch, _)| ch.seq as i64).collect();
            if !again.is_empty() {
                for r in tx.query(
                    "SELECT seq, digest FROM hub_seqs WHERE tenant_id = $1 AND device = $2 AND lane = $3 AND seq = ANY($4)",
                    &[&tenant, &dev.device_id, &lane.as_str(), &again],
                )? {
                    log.digests.insert(r.get::<_, i64>(0) as u64, r.get(1));
                }
            }
            let mut ack = LaneAck::default();
            let mut refused_at: Option<u64> = None;
            let quota_lane = matches!(lane, Lane::Catalog | Lane::Telemetry);
            for (wc, prepared) in changes {
                match decide_push(&log, wc.seq, &wc.digest) {
                    PushDecision::Duplicate => {}
                    PushDecision::Refuse(e) => {
                        forked |= e.code == "sequence_reused";
                        ack.error = Some(e);
                        refused_at = Some(wc.seq);
                        break;
                    }
                    PushDecision::Store => {
                        if quota_lane && quota > 0 {
                            let used = match quota_used {
                                Some(u) => u,
                                None => tx
                                    .query_one(
                                        "SELECT count(*) FROM hub_seqs WHERE tenant_id = $1 AND lane IN ('catalog', 'telemetry') AND device <> $2",
                                        &[&tenant, &hub_device],
                                    )?
                                    .get(0),
                            };
                            if used >= quota {
                                refused_at = Some(wc.seq);
                                ack.error = Some(ErrorBody {
                                    code: "quota_exceeded".into(),
                                    message: format!(
                                        "the tenant's quota of {quota} catalogue and telemetry changes is used up: raise it or compact; sales are not affected"
                                    ),
                                    expected: None,
                                });
                                quota_used = Some(used);
                                break;
                            }
                            quota_used = Some(used + 1);
                        }
                        seqs.0.push(lane.as_str().to_string());
                        seqs.1.push(wc.seq as i64);
                        seqs.2.push(wc.digest.clone());
                        log.next = wc.seq + 1;
                        log.digests.insert(wc.seq, wc.digest.clone());
                        match prepared {
                            Prepared::Apply { parts, max_hlc } => {
                                for (store_id, json) in parts {
                                    pos += 1;
                                    rows.push_json(pos, *store_id, dev.device_id, lane, wc.seq, json.clone());
                                    notices.push(Notice { tenant_id: tenant, store_id: *store_id, pos });
                                }
                                hlc = hlc.max(*max_hlc);
                            }
                            Prepared::Quarantine { reason } => {
                                // Acknowledged and kept, never applied: visible on the hub and the till.
                                quarantine.0.push(lane.as_str().to_string());
                                quarantine.1.push(wc.seq as i64);
                                quarantine.2.push(reason.clone());
                                quarantine.3.push(crate::storage::quarantined_ops_json(&wc.ops)?);
                                ack.quarantined.push(QuarantineAck { seq: wc.seq, reason: reason.clone() });
                            }
                        }
                    }
                }
            }
            let stored_through = log.next - 1;
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
                acked_through: next.get(&lane).copied().unwrap_or(1) - 1,
                ..LaneAck::default()
            });
        }
        if !seqs.0.is_empty() {
            tx.execute(
                "INSERT INTO hub_seqs(tenant_id, device, lane, seq, digest)
                 SELECT $1, $2, l, q, d FROM unnest($3::text[], $4::bigint[], $5::text[]) AS u(l, q, d)",
                &[&tenant, &dev.device_id, &seqs.0, &seqs.1, &seqs.2],
            )?;
        }
        rows.write(&mut tx, tenant, now_ms)?;
        if !quarantine.0.is_empty() {
            tx.execute(
                "INSERT INTO hub_quarantine(tenant_id, device, lane, seq, reason, ops, received_ms)
                 SELECT $1, $2, l, q, r, o, $7 FROM unnest($3::text[], $4::bigint[], $5::text[], $6::text[]) AS u(l, q, r, o)",
                &[&tenant, &dev.device_id, &quarantine.0, &quarantine.1, &quarantine.2, &quarantine.3, &(now_ms as i64)],
            )?;
        }
        if pos != last_pos || hlc != hub_hlc {
            tx.execute(
                "UPDATE tenants SET last_pos = $2, hub_hlc = $3 WHERE id = $1",
                &[&tenant, &(pos as i64), &(hlc as i64)],
            )?;
        }
        // A reused sequence with another change means two tills share this
        // identity: stop it in every lane, so neither copy's changes are
        // mixed with the other's (both re-enrol and carry their changes over).
        if forked {
            tx.execute(
                "UPDATE devices SET status = 'forked' WHERE tenant_id = $1 AND id = $2 AND status = 'active'",
                &[&tenant, &dev.device_id],
            )?;
            tracing::warn!(device = %dev.device_id, "device folder copied: device stopped");
        }
        let skew = req.device_time_ms as i64 - now_ms as i64;
        notify(&mut tx, self.instance, &notices)?;
        let hook = self.before_commit.lock().expect("hook").clone();
        if let Some(h) = hook {
            h();
        }
        // Acknowledged only once this returns: the changes are durable.
        tx.commit()?;
        // Off the transaction: kept in memory, written every few seconds.
        self.seen().note(dev.device_id, SeenAt { tenant, last_seen_ms: now_ms, skew_ms: skew });
        Ok((PushResponse { lanes, hub_time_ms: now_ms, hub_hlc: hlc, skew_ms: skew }, notices))
    }

    fn pull_inner(
        &self,
        dev: &DeviceAuth,
        after: u64,
        tag: Option<&str>,
        limit_len: usize,
        now_ms: u64,
    ) -> Result<PullResponse, HubError> {
        let limit = limit_len.clamp(1, PULL_LEN_MAX);
        let mut c = self.conn()?;
        // One snapshot for the end of the log and the entries. Positions of
        // a tenant commit in order (the tenant lock), so every position up
        // to `last_pos` is committed and visible here: none is skipped.
        let mut tx =
            c.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).read_only(true).start()?;
        let row = tx
            .query_opt("SELECT last_pos, horizon FROM tenants WHERE id = $1", &[&dev.tenant_id])?
            .ok_or_else(|| HubError::NotFound(format!("tenant {}", dev.tenant_id)))?;
        let (last_pos, horizon) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
        if after < horizon {
            return Err(HubError::bad(
                "cursor_expired",
                format!(
                    "the hub compacted its log up to {horizon}: bootstrap again from /v1/snapshot (your outbox is kept)"
                ),
            ));
        }
        // A tagged cursor must name this log: past its end, or with another
        // chain at its position, the database was restored to an earlier
        // point and has since filled positions the till already passed.
        if let Some(tag) = tag
            && after > 0
        {
            let differs = after > last_pos || chain_at(&mut tx, dev.tenant_id, after)?.is_some_and(|c| c != tag);
            if differs {
                return Err(HubError::bad(
                    "cursor_expired",
                    "the hub's log differs from the one this till pulled from (the hub was restored): bootstrap again from /v1/snapshot (your outbox is kept)",
                ));
            }
        }
        let rows = tx.query(
            "SELECT pos, device, ops FROM hub_log
             WHERE tenant_id = $1 AND pos > $2 AND pos <= $3 AND (store_id IS NULL OR store_id = $4) AND device <> $5
             ORDER BY pos LIMIT $6",
            &[&dev.tenant_id, &(after as i64), &(last_pos as i64), &dev.store_id, &dev.device_id, &(limit as i64)],
        )?;
        let more = rows.len() == limit;
        let cursor = if more { rows.last().map_or(after, |r| r.get::<_, i64>(0) as u64) } else { last_pos.max(after) };
        let cursor_tag = match chain_at(&mut tx, dev.tenant_id, cursor)? {
            Some(c) => Some(c),
            None if cursor == after => tag.map(str::to_string),
            None => None,
        };
        tx.commit()?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in rows {
            entries.push(Entry {
                pos: r.get::<_, i64>(0) as u64,
                device: r.get(1),
                ops: serde_json::from_str(r.get::<_, &str>(2))?,
            });
        }
        // An upper bound (other stores' entries are counted too).
        let remaining = if more { last_pos.saturating_sub(cursor) } else { 0 };
        Ok(PullResponse { entries, cursor, more, remaining, hub_time_ms: now_ms, cursor_tag })
    }

    fn compact_inner(&self, tenant: Uuid, keep_len: u64) -> Result<u64, HubError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let (last_pos, ..) = Self::lock_tenant(&mut tx, tenant)?;
        let horizon: i64 = tx.query_one("SELECT horizon FROM tenants WHERE id = $1", &[&tenant])?.get(0);
        let new_horizon = last_pos.saturating_sub(keep_len).max(horizon as u64);
        if new_horizon == horizon as u64 {
            return Ok(new_horizon);
        }
        // The base is the whole merged state as of `last_pos` (at least
        // everything up to the horizon): heads, tombstones, ledger rows.
        let m = self.merged(tenant)?;
        let mut m = m.lock().expect("merged");
        Self::catch_up(&mut tx, &mut m, tenant, last_pos)?;
        let ops: Vec<WireOp> = m.store.snapshot_ops(None)?.iter().map(WireOp::from).collect();
        drop(m);
        tx.execute(
            "INSERT INTO hub_base(tenant_id, pos, ops) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET pos = excluded.pos, ops = excluded.ops",
            &[&tenant, &(new_horizon as i64), &serde_json::to_string(&ops)?],
        )?;
        // The chain at the horizon stays checkable after its entry goes.
        let chain: Option<String> = tx
            .query_opt(
                "SELECT chain FROM hub_log WHERE tenant_id = $1 AND pos = $2",
                &[&tenant, &(new_horizon as i64)],
            )?
            .and_then(|r| r.get(0));
        tx.execute("DELETE FROM hub_log WHERE tenant_id = $1 AND pos <= $2", &[&tenant, &(new_horizon as i64)])?;
        tx.execute(
            "UPDATE tenants SET horizon = $2, horizon_chain = coalesce($3, horizon_chain) WHERE id = $1",
            &[&tenant, &(new_horizon as i64), &chain],
        )?;
        tx.commit()?;
        Ok(new_horizon)
    }
}

fn wire_to_ops(wire: &[WireOp]) -> Result<Vec<Op>, HubError> {
    wire.iter().map(|w| Op::try_from(w).map_err(|e| HubError::Internal(e.to_string()))).collect()
}

impl Drop for PgHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The last seen times are written with a blocking client: off the async threads.
        let seen = self.seen.take();
        off_runtime(move || drop(seen));
        // Closing a connection blocks on its own runtime: off the async threads.
        let pool = self.pool.take();
        off_runtime(move || drop(pool));
    }
}

/// The LISTEN side: one connection per process, reconnected with a capped
/// backoff. Notices of this process's own pushes are skipped (the HTTP layer
/// already published them).
fn listen_loop(
    config: postgres::Config,
    instance: Uuid,
    stop: Arc<AtomicBool>,
    sink: Arc<dyn Fn(Notice) + Send + Sync>,
) {
    let mut delay_ms = 100u64;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let mut client = match config.connect(NoTls) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, delay_ms, "events: cannot connect to the database, retrying");
                std::thread::sleep(Duration::from_millis(delay_ms));
                delay_ms = (delay_ms * 2).min(5_000);
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {EVENTS_CHANNEL}")) {
            tracing::warn!(error = %e, "events: LISTEN failed, retrying");
            std::thread::sleep(Duration::from_millis(delay_ms));
            continue;
        }
        if !first {
            tracing::info!("events: listening again (devices catch up on their next sync)");
        }
        first = false;
        delay_ms = 100;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let next = {
                let mut notifications = client.notifications();
                let mut it = notifications.timeout_iter(Duration::from_millis(250));
                it.next()
            };
            match next {
                Ok(Some(n)) => {
                    if let Ok(w) = serde_json::from_str::<Wire>(n.payload())
                        && w.i != instance
                    {
                        sink(Notice { tenant_id: w.t, store_id: w.s, pos: w.p });
                    }
                }
                Ok(None) => {
                    if client.is_closed() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "events: the LISTEN connection broke, reconnecting");
                    break;
                }
            }
        }
    }
}

impl HubStorage for PgHub {
    fn create_tenant(&self, name: &str, sample: bool, now_ms: u64) -> Result<(Uuid, String), HubError> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(HubError::bad("bad_name", "a tenant name is 1 to 200 characters"));
        }
        let id = self.new_id(now_ms);
        let token = format!("{ADMIN_TOKEN_PREFIX}{}", self.random_hex(32));
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO tenants(id, name, admin_hash, sample, created_ms) VALUES ($1, $2, $3, $4, $5)",
                &[&id, &name, &sha(&token), &sample, &(now_ms as i64)],
            )?;
            if sample {
                self.hub_write(tx, id, now_ms, |s| Ok(tillsync_store::sample::load(s, now_ms, false)?))?;
            } else {
                tx.commit()?;
            }
            Ok((id, token))
        })
    }

    fn create_store(&self, tenant: Uuid, name: &str, now_ms: u64) -> Result<Uuid, HubError> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(HubError::bad("bad_name", "a store name is 1 to 200 characters"));
        }
        let id = self.new_id(now_ms);
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut tx = c.transaction()?;
            let (.., sample) = Self::lock_tenant(&mut tx, tenant)?;
            tx.execute(
                "INSERT INTO stores(tenant_id, id, name, created_ms) VALUES ($1, $2, $3, $4)",
                &[&tenant, &id, &name, &(now_ms as i64)],
            )?;
            if sample {
                // The sample's opening stock, once for this store.
                self.hub_write(tx, tenant, now_ms, |s| {
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
                    Ok(())
                })?;
            } else {
                tx.commit()?;
            }
            Ok(id)
        })
    }

    fn create_enrol_code(
        &self,
        tenant: Uuid,
        store: Uuid,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<(String, u64), HubError> {
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut raw = [0u8; 12];
        self.ids.lock().expect("ids").fill(&mut raw);
        let chars: String = raw.iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect();
        let code = format!("{}-{}-{}", &chars[0..4], &chars[4..8], &chars[8..12]);
        let expires = now_ms + ttl_ms;
        off_runtime(|| {
            let mut c = self.conn()?;
            Self::check_store(&mut *c, tenant, store)?;
            c.execute(
                "INSERT INTO codes(code_hash, tenant_id, store_id, expires_ms) VALUES ($1, $2, $3, $4)",
                &[&sha(&code), &tenant, &store, &(expires as i64)],
            )?;
            Ok((code, expires))
        })
    }

    fn set_policy(&self, tenant: Uuid, target: &str, mode: &str, now_ms: u64) -> Result<Vec<Notice>, HubError> {
        let policy = tillsync_core::Policy::parse(mode).ok_or_else(|| {
            HubError::bad("bad_policy", format!("'{mode}' is not a policy: use lww, first or manual"))
        })?;
        off_runtime(|| {
            let mut c = self.conn()?;
            let tx = c.transaction()?;
            self.hub_write(tx, tenant, now_ms, |s| {
                s.set_policy(now_ms, target, policy).map_err(|e| HubError::bad("bad_policy", e.to_string()))
            })
        })
    }

    fn set_quota(&self, tenant: Uuid, changes: u64) -> Result<(), HubError> {
        off_runtime(|| {
            let n = self
                .conn()?
                .execute("UPDATE tenants SET quota_changes = $2 WHERE id = $1", &[&tenant, &(changes as i64)])?;
            if n == 0 {
                return Err(HubError::NotFound(format!("tenant {tenant}")));
            }
            Ok(())
        })
    }

    fn usage(&self, tenant: Uuid) -> Result<Usage, HubError> {
        off_runtime(|| {
            let mut c = self.conn()?;
            let row = c
                .query_opt(
                    "SELECT t.quota_changes,
                        (SELECT count(*) FROM devices WHERE tenant_id = t.id AND status = 'active'),
                        (SELECT count(*) FROM stores WHERE tenant_id = t.id),
                        (SELECT count(*) FROM hub_log WHERE tenant_id = t.id),
                        (SELECT coalesce(sum(bytes), 0)::bigint FROM hub_log WHERE tenant_id = t.id),
                        (SELECT count(*) FROM hub_quarantine WHERE tenant_id = t.id)
                     FROM tenants t WHERE t.id = $1",
                    &[&tenant],
                )?
                .ok_or_else(|| HubError::NotFound(format!("tenant {tenant}")))?;
            Ok(Usage {
                quota_changes: row.get::<_, i64>(0) as u64,
                devices: row.get::<_, i64>(1) as u64,
                stores: row.get::<_, i64>(2) as u64,
                changes: row.get::<_, i64>(3) as u64,
                bytes: row.get::<_, i64>(4) as u64,
                quarantined: row.get::<_, i64>(5) as u64,
                ..Usage::default()
            })
        })
    }

    fn enrol(&self, code: &str, name: &str, now_ms: u64) -> Result<Enrolment, HubError> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(HubError::bad("bad_name", "a device name is 1 to 200 characters"));
        }
        let device_id = self.new_id(now_ms);
        let token = format!("{DEVICE_TOKEN_PREFIX}{}", self.random_hex(32));
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut tx = c.transaction()?;
            // Single use: the update succeeds once, and only before expiry.
            let row = tx
                .query_opt(
                    "UPDATE codes SET used_ms = $2 WHERE code_hash = $1 AND used_ms IS NULL AND expires_ms > $2
                     RETURNING tenant_id, store_id",
                    &[&sha(code.trim()), &(now_ms as i64)],
                )?
                .ok_or(HubError::BadCode)?;
            let (tenant, store): (Uuid, Uuid) = (row.get(0), row.get(1));
            let n: i64 = tx
                .query_one(
                    "UPDATE tenants SET next_prefix = next_prefix + 1 WHERE id = $1 RETURNING next_prefix - 1",
                    &[&tenant],
                )?
                .get(0);
            let prefix = format!("T{n}");
            tx.execute(
                "INSERT INTO devices(tenant_id, id, store_id, name, token_hash, prefix, status, enrolled_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, 'active', $7)",
                &[&tenant, &device_id, &store, &name, &sha(&token), &prefix, &(now_ms as i64)],
            )?;
            tx.commit()?;
            Ok(Enrolment { device_id, token, tenant_id: tenant, store_id: store, receipt_prefix: prefix })
        })
    }

    fn authenticate(&self, token: &str) -> Result<Caller, HubError> {
        if token.len() > 200 {
            return Err(HubError::Unauthorized);
        }
        let h = sha(token);
        off_runtime(|| {
            let mut c = self.conn()?;
            // Lookup by hash: the token itself is never stored or compared.
            // The only queries not scoped by tenant: the token names it.
            if token.starts_with(DEVICE_TOKEN_PREFIX) {
                let row = c
                    .query_opt(
                        "SELECT id, tenant_id, store_id, status, token_hash, next_token_hash FROM devices
                         WHERE token_hash = $1 OR next_token_hash = $1",
                        &[&h],
                    )?
                    .ok_or(HubError::Unauthorized)?;
                let via_next =
                    token_match(row.get(4), row.get::<_, Option<&str>>(5), &h).ok_or(HubError::Unauthorized)?;
                match row.get::<_, &str>(3) {
                    "active" => {}
                    "forked" => return Err(HubError::Forked),
                    _ => return Err(HubError::Revoked),
                }
                if via_next {
                    // The first use of a rotated token retires the one before it.
                    c.execute(
                        "UPDATE devices SET token_hash = next_token_hash, next_token_hash = NULL
                         WHERE tenant_id = $1 AND id = $2 AND next_token_hash = $3",
                        &[&row.get::<_, Uuid>(1), &row.get::<_, Uuid>(0), &h],
                    )?;
                }
                return Ok(Caller::Device(DeviceAuth {
                    device_id: row.get(0),
                    tenant_id: row.get(1),
                    store_id: row.get(2),
                }));
            }
            if token.starts_with(ADMIN_TOKEN_PREFIX) {
                let row = c
                    .query_opt(
                        "SELECT id, admin_hash, next_admin_hash FROM tenants WHERE admin_hash = $1 OR next_admin_hash = $1",
                        &[&h],
                    )?
                    .ok_or(HubError::Unauthorized)?;
                let via_next =
                    token_match(row.get(1), row.get::<_, Option<&str>>(2), &h).ok_or(HubError::Unauthorized)?;
                if via_next {
                    c.execute(
                        "UPDATE tenants SET admin_hash = next_admin_hash, next_admin_hash = NULL
                         WHERE id = $1 AND next_admin_hash = $2",
                        &[&row.get::<_, Uuid>(0), &h],
                    )?;
                }
                return Ok(Caller::Admin { tenant_id: row.get(0) });
            }
            Err(HubError::Unauthorized)
        })
    }

    fn push(&self, dev: &DeviceAuth, req: &PushRequest, now_ms: u64) -> Result<(PushResponse, Vec<Notice>), HubError> {
        off_runtime(|| self.push_inner(dev, req, now_ms))
    }

    fn pull(&self, dev: &DeviceAuth, after: u64, limit_len: usize, now_ms: u64) -> Result<PullResponse, HubError> {
        off_runtime(|| self.pull_inner(dev, after, None, limit_len, now_ms))
    }

    fn pull_tagged(
        &self,
        dev: &DeviceAuth,
        after: u64,
        tag: Option<&str>,
        limit_len: usize,
        now_ms: u64,
    ) -> Result<PullResponse, HubError> {
        off_runtime(|| self.pull_inner(dev, after, tag, limit_len, now_ms))
    }

    fn snapshot(&self, dev: &DeviceAuth) -> Result<Snapshot, HubError> {
        off_runtime(|| {
            let mut snap = self.with_merged(dev.tenant_id, |store, cursor| {
                check_whole_len(store.state_len(Some(dev.store_id))?)?;
                let ops = store.snapshot_ops(Some(dev.store_id))?;
                Ok(Snapshot { cursor, cursor_tag: None, ops: ops.into_iter().map(WireOp::from).collect() })
            })?;
            snap.cursor_tag = chain_at(&mut *self.conn()?, dev.tenant_id, snap.cursor)?;
            Ok(snap)
        })
    }

    fn snapshot_page(
        &self,
        dev: &DeviceAuth,
        after: Option<&StateKey>,
        limit_len: usize,
    ) -> Result<SnapshotPage, HubError> {
        let limit = limit_len.clamp(1, SNAPSHOT_PAGE_LEN_MAX);
        off_runtime(|| {
            // The merged state is caught up to the committed end of the log
            // and held locked while the page is read: the first page and its
            // cursor are one state. Later pages read a later state (see
            // ARCHITECTURE.md on why that loses nothing).
            let mut page = self.with_merged(dev.tenant_id, |store, cursor| {
                let mut page = SnapshotPage::default();
                if after.is_none() {
                    page.cursor = Some(cursor);
                    page.total = Some(store.state_len(Some(dev.store_id))?);
                }
                let ops = store.state_ops(Some(dev.store_id), after, None, limit)?;
                Ok(page_of(page, ops, limit))
            })?;
            if let Some(cursor) = page.cursor {
                page.cursor_tag = chain_at(&mut *self.conn()?, dev.tenant_id, cursor)?;
            }
            Ok(page)
        })
    }

    fn devices(&self, tenant: Uuid) -> Result<Vec<DeviceInfo>, HubError> {
        off_runtime(|| {
            let rows = self.conn()?.query(
                "SELECT id, name, store_id, prefix, status, enrolled_ms, last_seen_ms, skew_ms
                 FROM devices WHERE tenant_id = $1 ORDER BY enrolled_ms, id",
                &[&tenant],
            )?;
            Ok(rows
                .iter()
                .map(|r| DeviceInfo {
                    device_id: r.get(0),
                    name: r.get(1),
                    store_id: r.get(2),
                    receipt_prefix: r.get(3),
                    status: r.get(4),
                    enrolled_at_ms: r.get::<_, i64>(5) as u64,
                    last_seen_ms: r.get::<_, Option<i64>>(6).map(|s| s as u64),
                    skew_ms: r.get(7),
                })
                .collect::<Vec<_>>())
        })
        .map(|mut out| {
            self.seen().overlay(tenant, &mut out);
            out
        })
    }

    fn flush_seen(&self) -> Result<(), HubError> {
        off_runtime(|| self.seen().flush())
    }

    fn rotate_device_token(&self, dev: &DeviceAuth, _now_ms: u64) -> Result<String, HubError> {
        let token = format!("{DEVICE_TOKEN_PREFIX}{}", self.random_hex(32));
        off_runtime(|| {
            let n = self.conn()?.execute(
                "UPDATE devices SET next_token_hash = $1 WHERE tenant_id = $2 AND id = $3 AND status = 'active'",
                &[&sha(&token), &dev.tenant_id, &dev.device_id],
            )?;
            if n == 0 {
                // Revoked or stopped between authentication and now.
                return Err(HubError::Revoked);
            }
            Ok(token)
        })
    }

    fn rotate_admin_token(&self, tenant: Uuid, _now_ms: u64) -> Result<String, HubError> {
        let token = format!("{ADMIN_TOKEN_PREFIX}{}", self.random_hex(32));
        off_runtime(|| {
            let n = self
                .conn()?
                .execute("UPDATE tenants SET next_admin_hash = $1 WHERE id = $2", &[&sha(&token), &tenant])?;
            if n == 0 {
                return Err(HubError::NotFound(format!("tenant {tenant}")));
            }
            Ok(token)
        })
    }

    fn revoke(&self, tenant: Uuid, device: Uuid) -> Result<(), HubError> {
        off_runtime(|| {
            let n = self.conn()?.execute(
                "UPDATE devices SET status = 'revoked' WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &device],
            )?;
            if n == 0 {
                return Err(HubError::NotFound(format!("device {device}")));
            }
            Ok(())
        })
    }

    fn store_digest(&self, tenant: Uuid, store: Uuid) -> Result<String, HubError> {
        off_runtime(|| {
            Self::check_store(&mut *self.conn()?, tenant, store)?;
            // The same function the SQLite hub and the tills use.
            self.with_merged(tenant, |s, _| Ok(s.digests_for(Some(store))?.0))
        })
    }

    fn compact(&self, tenant: Uuid, keep_len: u64) -> Result<u64, HubError> {
        off_runtime(|| self.compact_inner(tenant, keep_len))
    }

    fn watch_external(&self, sink: Arc<dyn Fn(Notice) + Send + Sync>) {
        let mut config = self.config.clone();
        // Named apart from the pool's connections (pg_stat_activity).
        config.application_name(LISTEN_APPLICATION_NAME);
        let (instance, stop) = (self.instance, self.stop.clone());
        let spawned = std::thread::Builder::new()
            .name("tillsync-hub-listen".into())
            .spawn(move || listen_loop(config, instance, stop, sink));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "events: cannot start the LISTEN thread; other processes' pushes are heard at the next sync");
        }
    }
}

/// Test support: a fresh database per test, dropped at the end.
#[doc(hidden)]
pub mod testing {
    use super::off_runtime;
    use std::hash::{BuildHasher, Hasher};
    use std::time::Duration;

    /// The server tests use unless `TILLSYNC_TEST_PG` names another.
    pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    /// A database of its own for one test (`tillsync_t_<random>`), so tests
    /// run in parallel; dropped (connections closed) when this is dropped,
    /// also when the test fails.
    #[derive(Debug)]
    pub struct TestDatabase {
        server: String,
        pub name: String,
        pub url: String,
    }

    fn connect(url: &str) -> postgres::Client {
        let mut config: postgres::Config =
            url.parse().unwrap_or_else(|e| panic!("TILLSYNC_TEST_PG={url:?} is not a database URL: {e}"));
        config.connect_timeout(Duration::from_secs(5));
        config.connect(postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {url} ({e}). These tests need a real server: start it with \
                 `pg_ctlcluster 15 main start` (or `su postgres -c 'pg_ctlcluster 15 main start'`), check it with \
                 `pg_isready -h 127.0.0.1`, or set TILLSYNC_TEST_PG to a server URL (.ci/run does all this)"
            )
        })
    }

    /// `url` with its database name replaced.
    pub fn with_database(url: &str, name: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let start = base.find("://").map_or(0, |i| i + 3);
        let host_end = base[start..].find('/').map_or(base.len(), |i| start + i);
        let mut out = format!("{}/{name}", &base[..host_end]);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    impl TestDatabase {
        /// Creates the database on the server of `TILLSYNC_TEST_PG`. Panics
        /// (a failed test, never a skipped one) if the server is unreachable.
        pub fn create() -> TestDatabase {
            let server = std::env::var("TILLSYNC_TEST_PG").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_string());
            TestDatabase::create_on(&server)
        }

        /// Creates the database on the server at `server` (a URL naming any
        /// database the user may connect to, e.g. `postgres`).
        pub fn create_on(server: &str) -> TestDatabase {
            let server = server.to_string();
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            );
            h.write_u32(std::process::id());
            let name = format!("tillsync_t_{:016x}", h.finish());
            off_runtime(|| {
                let mut c = connect(&server);
                c.batch_execute(&format!("CREATE DATABASE {name}"))
                    .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
            });
            let url = with_database(&server, &name);
            TestDatabase { server, name, url }
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let (server, name) = (self.server.clone(), self.name.clone());
            off_runtime(move || {
                let mut c = connect(&server);
                if let Err(e) = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")) {
                    eprintln!("could not drop test database {name}: {e}");
                }
            });
        }
    }
}
