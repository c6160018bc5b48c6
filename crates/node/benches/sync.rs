//! Sync benchmarks (issue 3), each measured beside a baseline in the same run.
//!
//! 1. `ingest`: N simulated devices (real enrolled device tokens) push
//!    sale-shaped changes (a `sales` row with 3 lines and 3 `stock_movements`
//!    rows) and 20% product price writes, in batches of at most 200, to a hub
//!    running as a child process, over loopback HTTP with zstd bodies
//!    (`HubClient::push`). Baseline: the same rows as JSON text inserted with
//!    rusqlite into a table shaped like the store's `ledger` (WAL,
//!    `synchronous=FULL`), one transaction per 200 changes; then the same
//!    into other shapes (`ALT_SCHEMAS`: ids unique per device; no index).
//! 2. `propagation`: till A sells and runs `sync_once`; till B runs
//!    `tillsync_node::run::run` (live events, 60 s timer) in its own thread.
//!    Measured: A's commit to the sale being committed in B's database (a
//!    separate read connection polls it every 100 us), and to the end of B's
//!    sync round. Baseline: `GET /healthz` on A's connection pool, and one
//!    durable SQLite commit (the path needs two: hub and B).
//! 3. `pull`: a hub pre-loaded with ROWS/4 sale changes (ROWS ledger rows) from
//!    other devices; a fresh till (enrolled without snapshot, cursor 0) pulls
//!    all of it with one `sync_once` while another thread sells on the same
//!    till every 10 ms through its own `Store` (as `till sale` beside
//!    `till node run` does). Baseline: the same rows inserted raw, 500 changes
//!    per transaction; then the same into `ALT_SCHEMAS`.
//! 4. `bootstrap`: `enrol_and_bootstrap` of a fresh till against that hub,
//!    through a byte-counting loopback proxy. Baseline: `VACUUM INTO` of the
//!    hub's tenant database plus zstd (level 3) of the file.
//!
//! 5. `pg-ingest` (issue 5, only with `--pg URL`): the ingest workload of 1
//!    against `PgHub` on a fresh database of that server, with 1 and then 2
//!    hub processes on the database (`--hub-procs 1,2`), devices split across
//!    them round robin. Baseline, in the same run: the same rows as in 1,
//!    loaded with `psql -c '\copy ...'` (one COPY) into a table of the same
//!    shape on the same server.
//!
//! The hub is this same binary re-executed with `--hub-child DIR` (the same
//! router and `SqliteHub` as `till hub serve`), so its memory is read from
//! `/proc/PID/status` (VmHWM) apart from the clients'. Set
//! `TILLSYNC_SYNC_HUB_BIN=target/release/till` to run `till hub serve` instead.
//!
//! Settings (an argument wins over the environment):
//! * `--quick`, `TILLSYNC_SYNC_QUICK=1`: small counts (about 1 minute);
//! * `--devices N`, `TILLSYNC_SYNC_DEVICES`: ingest devices (100);
//! * `--per-device N`, `TILLSYNC_SYNC_PER_DEVICE`: changes per device (200; quick 50);
//! * `--reps N`, `TILLSYNC_SYNC_REPS`: ingest repetitions (3; quick 2);
//! * `--pull-reps N`, `TILLSYNC_SYNC_PULL_REPS`: pull repetitions (2);
//! * `--seller off`, `TILLSYNC_SYNC_SELLER=off`: pull with no sales beside it
//!   (diagnostic);
//! * `--sales N`, `TILLSYNC_SYNC_SALES`: propagation samples (1000; quick 100);
//! * `--rows N`, `TILLSYNC_SYNC_ROWS`: ledger rows pre-loaded for pull and
//!   bootstrap (1,000,000; quick 50,000);
//! * `--boot-reps N`, `TILLSYNC_SYNC_BOOT_REPS`: bootstrap repetitions (1; quick 2);
//! * `--only LIST`, `TILLSYNC_SYNC_ONLY`: comma list of ingest, propagation,
//!   pull, bootstrap;
//! * `--pg URL`, `TILLSYNC_SYNC_PG`: a PostgreSQL server (e.g.
//!   postgres://postgres@127.0.0.1:5432/postgres) for `pg-ingest`;
//! * `--hub-procs LIST`, `TILLSYNC_SYNC_HUB_PROCS`: hub processes per
//!   `pg-ingest` run (1,2);
//! * `--tenants N`, `TILLSYNC_SYNC_TENANTS`: tenants the `pg-ingest` devices
//!   are dealt to, round robin (1: the workload of 1);
//! * `--pace N`, `TILLSYNC_SYNC_PACE`: ingest devices push N changes/s in
//!   all, each on its own schedule (open loop), instead of back to back (0);
//!   push latency then counts from when a push was due: the latency at a
//!   given load, not in a burst;
//! * `--quota N`, `TILLSYNC_SYNC_QUOTA`: the ingest tenant's quota of
//!   catalogue and telemetry changes (0: none; the price writes count);
//! * `--dir PATH`, `TILLSYNC_SYNC_DIR`: where the databases go (default the
//!   system temp folder; it must be a real disk for fsync to count).
//!
//! Run with `cargo bench -p tillsync-node --bench sync` (release profile).

use rusqlite::{Connection, OpenFlags, params};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tillsync_core::change::LedgerRow;
use tillsync_core::domain::{Method, PaymentInput};
use tillsync_core::wire::{PushRequest, WireChange};
use tillsync_core::{Change, HlcClock, IdGen, Lane, Op, Schema, Write, WriteId, derived_id};
use tillsync_hub::pg::testing::TestDatabase;
use tillsync_hub::{AppState, DeviceAuth, HubStorage, PgHub, PgOptions, SqliteHub, app};
use tillsync_node::config::Config as NodeConfig;
use tillsync_node::run::run;
use tillsync_node::sync::{client_for, load_token, save_token};
use tillsync_node::{ClientOptions, HubClient, enrol_and_bootstrap, sync_once};
use tillsync_store::{Identity, SaleRequest, Store};
use uuid::Uuid;

/// Changes per push request (the node's `PUSH_BATCH_LEN`).
const BATCH_LEN: usize = 200;
/// Changes per in-process push while pre-loading (the hub's `PUSH_LEN_MAX`).
const PRELOAD_BATCH_LEN: usize = 1_000;
/// Devices that pre-load the pull/bootstrap hub.
const PRELOAD_DEVICES: usize = 20;
/// Ledger rows per sale change: the sale and 3 stock movements.
const ROWS_PER_SALE: usize = 4;
/// Product rows each simulated device writes prices to.
const PRODUCT_ROWS_PER_DEVICE: u64 = 10;
/// Lines of a simulated sale: (SKU, quantity, line total).
const LINES: [(&str, i64, i64); 3] = [("ESPRESSO", 1, 220), ("LATTE", 2, 760), ("CROISSANT", 1, 250)];
/// Pages of the pull baseline, in changes (the node's `PULL_PAGE_LEN`).
const PULL_PAGE_LEN: usize = 500;

#[derive(Clone, Debug)]
struct Config {
    devices: usize,
    per_device: usize,
    reps: usize,
    pull_reps: usize,
    seller: bool,
    sales: usize,
    rows: usize,
    boot_reps: usize,
    sell_every: Duration,
    dir: PathBuf,
    only: Vec<String>,
    hub_bin: Option<PathBuf>,
    pg: Option<String>,
    hub_procs: Vec<usize>,
    tenants: usize,
    /// Changes per second offered by all ingest devices together (paced,
    /// open loop); 0: every device pushes its batches back to back.
    pace: usize,
    /// The ingest tenant's quota of catalogue and telemetry changes (0:
    /// none), so the quota's bookkeeping is part of what is measured.
    quota: usize,
}

impl Config {
    fn wants(&self, w: &str) -> bool {
        if w == "pg-ingest" {
            return self.pg.is_some() && (self.only.is_empty() || self.only.iter().any(|o| o == w));
        }
        self.only.is_empty() || self.only.iter().any(|o| o == w)
    }
}

fn config() -> Config {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut kv: HashMap<String, String> = HashMap::new();
    let mut quick = env("TILLSYNC_SYNC_QUICK").is_some_and(|v| v != "0");
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some((k, v)) = a.split_once('=') {
            kv.insert(k.to_string(), v.to_string());
        } else if a == "--quick" {
            quick = true;
        } else if a == "--bench" {
            // cargo bench passes --bench to harness = false targets.
        } else if a.starts_with("--") && i + 1 < args.len() {
            kv.insert(a.clone(), args[i + 1].clone());
            i += 1;
        } else {
            panic!("unknown argument '{a}' (see the top of benches/sync.rs)");
        }
        i += 1;
    }
    let get = |arg: &str, var: &str| kv.get(arg).cloned().or_else(|| env(var));
    let num = |arg: &str, var: &str, full: usize, small: usize| {
        get(arg, var)
            .map(|v| v.replace('_', "").parse::<usize>().unwrap_or_else(|_| panic!("{arg} takes a number, got '{v}'")))
            .unwrap_or(if quick { small } else { full })
    };
    Config {
        devices: num("--devices", "TILLSYNC_SYNC_DEVICES", 100, 100),
        per_device: num("--per-device", "TILLSYNC_SYNC_PER_DEVICE", 200, 50),
        reps: num("--reps", "TILLSYNC_SYNC_REPS", 3, 2).max(1),
        pull_reps: num("--pull-reps", "TILLSYNC_SYNC_PULL_REPS", 2, 2).max(1),
        seller: get("--seller", "TILLSYNC_SYNC_SELLER").is_none_or(|v| v != "off" && v != "0"),
        sales: num("--sales", "TILLSYNC_SYNC_SALES", 1_000, 100).max(1),
        rows: num("--rows", "TILLSYNC_SYNC_ROWS", 1_000_000, 50_000).max(ROWS_PER_SALE),
        boot_reps: num("--boot-reps", "TILLSYNC_SYNC_BOOT_REPS", 1, 2).max(1),
        sell_every: Duration::from_millis(10),
        dir: get("--dir", "TILLSYNC_SYNC_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir),
        only: get("--only", "TILLSYNC_SYNC_ONLY")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default(),
        hub_bin: env("TILLSYNC_SYNC_HUB_BIN").map(PathBuf::from),
        pg: get("--pg", "TILLSYNC_SYNC_PG"),
        hub_procs: get("--hub-procs", "TILLSYNC_SYNC_HUB_PROCS")
            .map(|v| v.split(',').map(|n| n.trim().parse().expect("--hub-procs takes numbers")).collect())
            .unwrap_or_else(|| vec![1, 2]),
        tenants: num("--tenants", "TILLSYNC_SYNC_TENANTS", 1, 1).max(1),
        pace: num("--pace", "TILLSYNC_SYNC_PACE", 0, 0),
        quota: num("--quota", "TILLSYNC_SYNC_QUOTA", 0, 0),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of an unsorted sample.
fn pct(sample: &[f64], p: f64) -> f64 {
    if sample.is_empty() {
        return f64::NAN;
    }
    let mut v = sample.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn median(sample: &[f64]) -> f64 {
    pct(sample, 50.0)
}

fn range(sample: &[f64]) -> String {
    let lo = sample.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = sample.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} .. {}", fmt_num(lo), fmt_num(hi))
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x.abs() >= 1_000.0 {
        let s = format!("{:.0}", x);
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn progress(msg: &str) {
    eprintln!("[sync bench] {msg} (load {})", loadavg());
}

// ---------------------------------------------------------------------------
// The hub as a child process.

/// Memory of a process from `/proc/PID/status`, in bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss: u64,
    hwm: u64,
}

fn proc_mem(pid: &str) -> Mem {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Mem { rss: field("VmRSS:"), hwm: field("VmHWM:") }
}

/// Resets a process's VmHWM to its current RSS (`clear_refs` 5, Linux).
fn reset_hwm(pid: &str) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// User + system CPU seconds of a process (clock ticks of 1/100 s).
fn proc_cpu(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command name: state is field 3, utime 14 and stime 15.
    (tick(11) + tick(12)) / 100.0
}

struct HubProc {
    child: Child,
    url: String,
}

impl HubProc {
    fn spawn(cfg: &Config, data: &Path) -> HubProc {
        HubProc::spawn_on(cfg, &["--data", data.to_str().expect("utf-8 path")])
    }

    /// A hub on `storage` (`--data DIR` or `--database-url URL`).
    fn spawn_on(cfg: &Config, storage: &[&str]) -> HubProc {
        let mut cmd = match &cfg.hub_bin {
            Some(bin) => {
                let mut c = Command::new(bin);
                c.args(["hub", "serve"]).args(storage).args(["--listen", "127.0.0.1:0"]);
                c
            }
            None => {
                let mut c = Command::new(std::env::current_exe().expect("bench executable"));
                c.arg("--hub-child").args(storage);
                c
            }
        };
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start the hub");
        let mut out = BufReader::new(child.stdout.take().expect("hub stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("hub prints its address");
        let start = line.find("http://").unwrap_or_else(|| panic!("no URL in the hub's first line: {line}"));
        let url = line[start..].split(|c: char| c.is_whitespace() || c == '"').next().unwrap_or("").to_string();
        // Keep draining its stdout so it never blocks or dies on a closed pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        HubProc { child, url }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn mem(&self) -> Mem {
        proc_mem(&self.pid())
    }

    fn cpu(&self) -> f64 {
        proc_cpu(&self.pid())
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.url.trim_start_matches("http://").parse().expect("hub address")
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--hub-child --data DIR` or `--hub-child --database-url URL`: serve a hub
/// on an ephemeral loopback port, print its URL, exit when stdin closes (the
/// parent ended).
fn hub_child(kind: &str, at: &str) {
    let seed = now_ms() ^ ((std::process::id() as u64) << 32);
    let storage: Arc<dyn HubStorage> = match kind {
        "--data" => Arc::new(SqliteHub::open(Path::new(at), IdGen::from_u64(seed)).expect("open the hub data folder")),
        _ => Arc::new(PgHub::open(at, &PgOptions::default(), IdGen::from_u64(seed)).expect("open the hub database")),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("hub listening on http://{}", listener.local_addr().expect("addr"));
        std::io::stdout().flush().expect("stdout");
        std::thread::spawn(|| {
            let mut b = [0u8; 64];
            while std::io::stdin().read(&mut b).is_ok_and(|n| n > 0) {}
            std::process::exit(0);
        });
        axum::serve(listener, app(AppState::new(storage))).await.expect("serve");
    });
}

/// A hub data folder with a sample tenant, one store and enrolment codes.
struct HubSetup {
    tenant: Uuid,
    store: Uuid,
    admin: String,
    codes: Vec<String>,
}

fn setup_hub(dir: &Path, codes: usize) -> (SqliteHub, HubSetup) {
    let hub = SqliteHub::open(dir, IdGen::from_u64(7)).expect("hub");
    let setup = setup_on(&hub, codes);
    (hub, setup)
}

/// A sample tenant, one store and `codes` enrolment codes on any backend.
fn setup_on(hub: &dyn HubStorage, codes: usize) -> HubSetup {
    let (tenant, admin) = hub.create_tenant("bench", true, now_ms()).expect("tenant");
    let store = hub.create_store(tenant, "bench store", now_ms()).expect("store");
    let codes =
        (0..codes).map(|_| hub.create_enrol_code(tenant, store, now_ms(), 24 * 3_600_000).expect("code").0).collect();
    HubSetup { tenant, store, admin, codes }
}

fn opts() -> ClientOptions {
    ClientOptions { timeout_ms: 600_000, ..Default::default() }
}

// ---------------------------------------------------------------------------
// Simulated devices and their changes.

/// About 316 bytes of JSON with 3 lines (compact lines, as in the issue).
fn sale_data(receipt: &str, device: Uuid, at_ms: u64) -> Value {
    let total: i64 = LINES.iter().map(|l| l.2).sum();
    json!({
        "receipt": receipt,
        "device_id": device,
        "currency": "EUR",
        "lines": LINES.iter().map(|(s, q, t)| json!([s, q, t])).collect::<Vec<_>>(),
        "payments": [["cash", total]],
        "taxes": [[1000, 112]],
        "subtotal_minor": total,
        "discount_minor": 0,
        "tax_minor": 112,
        "total_minor": total,
        "rounding_minor": 0,
        "at_ms": at_ms,
    })
}

struct SimDevice {
    id: Uuid,
    store: Uuid,
    tenant: Uuid,
    index: usize,
    ids: IdGen,
    clock: HlcClock,
    seq_sales: u64,
    seq_catalog: u64,
    tips: HashMap<Uuid, WriteId>,
}

impl SimDevice {
    fn new(id: Uuid, store: Uuid, tenant: Uuid, index: usize) -> Self {
        SimDevice {
            id,
            store,
            tenant,
            index,
            ids: IdGen::from_u64(0x5eed_0000 + index as u64),
            clock: HlcClock::default(),
            seq_sales: 0,
            seq_catalog: 0,
            tips: HashMap::new(),
        }
    }

    fn sale(&mut self, now: u64) -> Change {
        self.seq_sales += 1;
        let sale_id = self.ids.new_v7(now);
        let receipt = format!("S{}-{:07}", self.index, self.seq_sales);
        let hlc = self.clock.tick(now);
        let mut ops = vec![Op::Insert(LedgerRow {
            table: "sales".into(),
            id: sale_id,
            store: self.store,
            device: self.id,
            hlc,
            data: sale_data(&receipt, self.id, now),
        })];
        for (sku, qty, _) in LINES {
            ops.push(Op::Insert(LedgerRow {
                table: "stock_movements".into(),
                id: self.ids.new_v7(now),
                store: self.store,
                device: self.id,
                hlc: self.clock.tick(now),
                data: json!({"sku": sku, "qty": -qty, "reason": "sale", "ref_id": sale_id}),
            }));
        }
        Change { device: self.id, lane: Lane::Sales, seq: self.seq_sales, hlc: self.clock.last(), ops }
    }

    /// A price write on one of this device's product rows, naming the
    /// device's previous write of that field (its head) as base.
    fn price(&mut self, now: u64) -> Change {
        self.seq_catalog += 1;
        let k = self.seq_catalog % PRODUCT_ROWS_PER_DEVICE;
        let row = derived_id(self.tenant, "product", &format!("BENCH-{}-{k}", self.index));
        let id = WriteId { hlc: self.clock.tick(now), device: self.id };
        let base: Vec<WriteId> = self.tips.insert(row, id).into_iter().collect();
        let w = Write {
            id,
            table: "products".into(),
            row,
            field: "price_minor".into(),
            value: json!(100 + self.seq_catalog as i64),
            base,
        };
        Change {
            device: self.id,
            lane: Lane::Catalog,
            seq: self.seq_catalog,
            hlc: self.clock.last(),
            ops: vec![Op::Write(w)],
        }
    }

    /// The i-th change: every fifth is a price write (20%), the rest sales.
    fn mixed(&mut self, i: usize, now: u64) -> Change {
        if i % 5 == 4 { self.price(now) } else { self.sale(now) }
    }
}

fn wire(c: &Change) -> WireChange {
    let (_, digest) = c.encode();
    WireChange::from_change(c, digest)
}

// ---------------------------------------------------------------------------
// The raw SQLite baseline: the same rows as JSON text in a table shaped like
// the store's `ledger` (schema 3: rows in arrival order, the unique id, the
// key index and the sales time index), WAL + synchronous=FULL.

const BASE_SQL: &str = "
    CREATE TABLE ledger(
        id TEXT NOT NULL UNIQUE, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
        device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL
    );
    CREATE INDEX ledger_key ON ledger(tbl, key);
    CREATE INDEX ledger_sales_hlc ON ledger(hlc, id) WHERE tbl = 'sales';";

// Other shapes for the same rows and transactions, measured after the
// baseline in the same run, so a schema change can be judged before it is
// made. 1: the ids unique per device, `UNIQUE (device, id)`, with the same
// two indexes: one device's ids grow with its clock, so a batch's rows land
// together in that index, where in the id index the ids of many tills in the
// same milliseconds interleave and every insert lands on a page of its own.
// 2: the floor, a plain rowid table with no id constraint and no index: no
// store that recognises rows by id can do less per row, so a goal above it
// cannot be met by storing each row in SQLite on this machine.
const ALT_SCHEMAS: [(&str, &str); 2] = [
    (
        "the same with `UNIQUE (device, id)` in place of the unique id",
        "CREATE TABLE ledger(
            id TEXT NOT NULL, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
            device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL, UNIQUE (device, id)
        );
        CREATE INDEX ledger_key ON ledger(tbl, key);
        CREATE INDEX ledger_sales_hlc ON ledger(hlc, id) WHERE tbl = 'sales';",
    ),
    (
        "floor: a rowid table with no id constraint and no index",
        "CREATE TABLE ledger(
            id TEXT NOT NULL, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
            device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL
        );",
    ),
];

/// One of [`ALT_SCHEMAS`], measured: changes/s and the thread's CPU seconds.
#[derive(Clone, Copy, Default)]
struct Alt {
    rate: f64,
    cpu: f64,
}

struct BaseRow {
    id: String,
    tbl: String,
    key: Option<String>,
    store: String,
    device: String,
    hlc: i64,
    data: String,
}

fn base_rows(c: &Change, out: &mut Vec<BaseRow>) {
    for op in &c.ops {
        out.push(match op {
            Op::Insert(r) => BaseRow {
                id: r.id.to_string(),
                tbl: r.table.clone(),
                key: r.data.get("receipt").or_else(|| r.data.get("sku")).and_then(Value::as_str).map(str::to_string),
                store: r.store.to_string(),
                device: r.device.to_string(),
                hlc: r.hlc.0 as i64,
                data: r.data.to_string(),
            },
            Op::Write(w) => BaseRow {
                id: w.id.to_string(),
                tbl: w.table.clone(),
                key: Some(w.row.to_string()),
                store: Uuid::nil().to_string(),
                device: w.id.device.to_string(),
                hlc: w.id.hlc.0 as i64,
                data: w.value.to_string(),
            },
        });
    }
}

fn base_db(path: &Path) -> Connection {
    schema_db(path, BASE_SQL)
}

fn schema_db(path: &Path, sql: &str) -> Connection {
    let conn = Connection::open(path).expect("baseline db");
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())).expect("wal");
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA cache_size=-16000;").expect("pragmas");
    conn.execute_batch(sql).expect("schema");
    conn
}

/// Inserts one transaction of rows; returns how long it took (the calling
/// thread's CPU time is read around it by the callers).
fn base_insert(conn: &Connection, rows: &[BaseRow]) -> Duration {
    let t = Instant::now();
    conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
    {
        let mut st = conn
            .prepare_cached(
                "INSERT INTO ledger(id, tbl, key, store_id, device, hlc, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .expect("prepare");
        for r in rows {
            st.execute(params![r.id, r.tbl, r.key, r.store, r.device, r.hlc, r.data]).expect("insert");
        }
    }
    conn.execute_batch("COMMIT").expect("commit");
    t.elapsed()
}

// ---------------------------------------------------------------------------
// 1. Hub ingest.

struct IngestRep {
    changes: u64,
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
    hwm_before: u64,
    hwm_after: u64,
    rss_after: u64,
    hub_cpu: f64,
    bench_cpu: f64,
    wall: f64,
    base_rate: f64,
    base_cpu: f64,
    /// [`ALT_SCHEMAS`] in order.
    alts: Vec<Alt>,
    errors: u64,
    logged: u64,
    load: String,
    inproc_rate: f64,
}

/// Push requests per device, prepared before the clock starts.
type Work = Vec<(HubClient, Vec<PushRequest>)>;

/// Enrols `cfg.devices` devices over HTTP (round robin over the hub
/// processes at `urls`, each device its own token and client) and builds
/// their changes, and the same rows for the baseline. Returns an admin
/// client of the first process too.
async fn ingest_work(cfg: &Config, setup: &HubSetup, urls: &[&str]) -> (Work, Vec<Vec<BaseRow>>, HubClient) {
    let admin = HubClient::new(urls[0], Some(setup.admin.clone()), &opts()).expect("admin client");
    let (work, base) = ingest_work_for(cfg, &setup.codes, urls).await;
    (work, base, admin)
}

/// [`ingest_work`] for any codes (of one tenant or several).
async fn ingest_work_for(cfg: &Config, codes: &[String], urls: &[&str]) -> (Work, Vec<Vec<BaseRow>>) {
    let mut devices = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let url = urls[i % urls.len()];
        let e = HubClient::new(url, None, &opts()).expect("client").enrol(code, &format!("sim {i}")).await;
        let e = e.expect("enrol");
        let client = HubClient::new(url, Some(e.token), &opts()).expect("client");
        devices.push((SimDevice::new(e.device_id, e.store_id, e.tenant_id, i), client));
    }
    // Changes are built before the clock starts: only the push is measured.
    // The i-th change of every device is made at millisecond `now + i`, so
    // row ids (UUIDv7) and clocks advance as on real tills.
    let now = now_ms();
    let mut work = Vec::new();
    let mut base_txns: Vec<Vec<BaseRow>> = Vec::new();
    for (mut dev, client) in devices {
        let changes: Vec<Change> = (0..cfg.per_device).map(|i| dev.mixed(i, now + i as u64)).collect();
        let mut reqs = Vec::new();
        for chunk in changes.chunks(BATCH_LEN) {
            let mut rows = Vec::new();
            for c in chunk {
                base_rows(c, &mut rows);
            }
            base_txns.push(rows);
            reqs.push(PushRequest {
                device_time_ms: now,
                changes: chunk.iter().map(wire).collect(),
                ..Default::default()
            });
        }
        work.push((client, reqs));
    }
    (work, base_txns)
}

/// Every device pushes its requests in order, all devices at once. Returns
/// the push latencies (ms) and the count of refused or failed pushes.
///
/// With `pace` (changes per second offered by all devices together), each
/// device sends its k-th batch at its own phase plus k intervals, whether
/// or not the hub has answered the others (open loop), and a push's latency
/// counts from when it was due, so a hub that falls behind shows in the
/// latency instead of slowing the offered load down.
async fn push_all(work: Work, pace: usize) -> (Vec<f64>, u64) {
    let devices = work.len().max(1);
    let interval = (pace > 0).then(|| Duration::from_secs_f64((devices * BATCH_LEN) as f64 / pace as f64));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (d, (client, reqs)) in work.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(reqs.len());
            let mut errors = 0u64;
            for (k, req) in reqs.into_iter().enumerate() {
                let mut last: HashMap<Lane, u64> = HashMap::new();
                for c in &req.changes {
                    last.insert(c.lane, c.seq);
                }
                let t = match interval {
                    Some(every) => {
                        let due = start + every.mul_f64(k as f64 + d as f64 / devices as f64);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                match client.push(&req).await {
                    Ok(resp) => {
                        lat.push(ms(t.elapsed()));
                        for (lane, seq) in last {
                            let ok = resp.lanes.get(&lane).is_some_and(|a| {
                                a.acked_through == seq && a.error.is_none() && a.quarantined.is_empty()
                            });
                            if !ok {
                                errors += 1;
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("push failed: {e}");
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("device task");
        lat.extend(l);
        errors += e;
    }
    (lat, errors)
}

async fn ingest_rep(cfg: &Config, root: &Path, rep: usize) -> IngestRep {
    let dir = root.join(format!("ingest-{rep}"));
    let (hub, setup) = setup_hub(&dir.join("hub"), cfg.devices);
    if cfg.quota > 0 {
        hub.set_quota(setup.tenant, cfg.quota as u64).expect("quota");
    }
    drop(hub);
    let proc = HubProc::spawn(cfg, &dir.join("hub"));
    let hwm_before = proc.mem().hwm;
    let (work, base_txns, admin) = ingest_work(cfg, &setup, &[proc.url.as_str()]).await;
    let logged_before = admin.usage().await.expect("usage").changes;
    let total: u64 = (cfg.devices * cfg.per_device) as u64;
    let (cpu0, self0) = (proc.cpu(), proc_cpu("self"));
    let start = Instant::now();
    let (lat, errors) = push_all(work, cfg.pace).await;
    let wall = start.elapsed().as_secs_f64();
    let (hub_cpu, bench_cpu) = (proc.cpu() - cpu0, proc_cpu("self") - self0);
    let mem = proc.mem();
    let logged = admin.usage().await.expect("usage").changes - logged_before;
    drop(proc);
    // Baseline, right after, on the same disk.
    let conn = base_db(&dir.join("baseline.db"));
    let thread0 = proc_cpu("thread-self");
    let base_time: Duration = base_txns.iter().map(|rows| base_insert(&conn, rows)).sum();
    let base_cpu = proc_cpu("thread-self") - thread0;
    drop(conn);
    let alts = ALT_SCHEMAS
        .iter()
        .enumerate()
        .map(|(i, (_, sql))| {
            let conn = schema_db(&dir.join(format!("alt-{i}.db")), sql);
            let thread0 = proc_cpu("thread-self");
            let time: Duration = base_txns.iter().map(|rows| base_insert(&conn, rows)).sum();
            Alt { rate: total as f64 / time.as_secs_f64(), cpu: proc_cpu("thread-self") - thread0 }
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    // Diagnostic: the same kind of changes through `SqliteHub::push` in this
    // process (no HTTP, no JSON, no concurrency), one thread.
    let (hub, setup) = setup_hub(&dir.join("hub-inproc"), cfg.devices);
    if cfg.quota > 0 {
        hub.set_quota(setup.tenant, cfg.quota as u64).expect("quota");
    }
    let inproc = push_inproc(&hub, &setup, cfg.devices, total as usize, BATCH_LEN, true);
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
    IngestRep {
        inproc_rate: inproc.changes as f64 / inproc.secs,
        changes: total,
        rate: total as f64 / wall,
        p50: pct(&lat, 50.0),
        p99: pct(&lat, 99.0),
        max: pct(&lat, 100.0),
        hwm_before,
        hwm_after: mem.hwm,
        rss_after: mem.rss,
        hub_cpu,
        bench_cpu,
        wall,
        base_rate: total as f64 / base_time.as_secs_f64(),
        base_cpu,
        alts,
        errors,
        logged,
        load: loadavg(),
    }
}

fn report_ingest(cfg: &Config, reps: &[IngestRep]) -> String {
    let mut s = String::new();
    s += &format!(
        "### 1. Hub ingest: {} devices x {} changes (80% sales of 4 rows, 20% price writes), batches of {}, {}\n\n",
        cfg.devices,
        cfg.per_device,
        BATCH_LEN,
        match cfg.pace {
            0 => "every device pushing back to back (closed burst)".to_string(),
            n => format!("paced: {n} changes/s offered in all, open loop, latency from when each push was due"),
        }
    );
    s += "| run | changes | wall s | hub changes/s | push p50 ms | push p99 ms | push max ms | hub VmHWM MB (before -> after) | hub VmRSS after MB | hub CPU s | hub CPU us/change | clients CPU s | baseline changes/s | hub / baseline | errors | load avg after |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (i, r) in reps.iter().enumerate() {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} -> {} | {} | {} | {} | {} | {} | {:.3} | {} | {} |\n",
            i + 1,
            r.changes,
            fmt_num(r.wall),
            fmt_num(r.rate),
            fmt_num(r.p50),
            fmt_num(r.p99),
            fmt_num(r.max),
            fmt_num(mb(r.hwm_before)),
            fmt_num(mb(r.hwm_after)),
            fmt_num(mb(r.rss_after)),
            fmt_num(r.hub_cpu),
            fmt_num(r.hub_cpu * 1e6 / r.changes as f64),
            fmt_num(r.bench_cpu),
            fmt_num(r.base_rate),
            r.rate / r.base_rate,
            r.errors + r.changes.abs_diff(r.logged),
            r.load,
        );
    }
    let col = |f: fn(&IngestRep) -> f64| reps.iter().map(f).collect::<Vec<_>>();
    let rate = col(|r| r.rate);
    let base = col(|r| r.base_rate);
    let p50 = col(|r| r.p50);
    let p99 = col(|r| r.p99);
    let hwm = col(|r| mb(r.hwm_after));
    let ratio = col(|r| r.rate / r.base_rate);
    let cpu = col(|r| r.changes as f64 / r.hub_cpu);
    let inproc = col(|r| r.inproc_rate);
    let base_cpu = col(|r| r.changes as f64 / r.base_cpu);
    s += "\n| figure | hub (median of runs, range) | baseline (median) | ratio hub/baseline | goal | holds |\n|---|---|---|---|---|---|\n";
    s += &format!(
        "| changes/s accepted durably | {} ({}) | {} | {:.3} | >= 50,000 | {} |\n",
        fmt_num(median(&rate)),
        range(&rate),
        fmt_num(median(&base)),
        median(&ratio),
        yes(median(&rate) >= 50_000.0)
    );
    s += &format!(
        "| CPU cost: changes per CPU second (hub process / baseline thread) | {} ({}) | {} | {:.3} | (>= 50,000 needs <= 20 us/change/core) | - |\n",
        fmt_num(median(&cpu)),
        range(&cpu),
        fmt_num(median(&base_cpu)),
        median(&cpu) / median(&base_cpu)
    );
    s += &report_alts(reps.iter().map(|r| (r.changes, r.alts.as_slice())), median(&base));
    s += &format!(
        "| diagnostic: same changes through `SqliteHub::push` in-process, 1 thread, batches of {BATCH_LEN}, changes/s | {} ({}) | {} | {:.3} | - | - |\n",
        fmt_num(median(&inproc)),
        range(&inproc),
        fmt_num(median(&base)),
        median(&inproc) / median(&base)
    );
    // Paced, the wall time is the schedule's, not the hub's work.
    if cfg.pace == 0 {
        let service = col(|r| r.wall * 1e3 / (r.changes as f64 / BATCH_LEN as f64));
        s += &format!(
            "| service time of one {BATCH_LEN}-change push (wall / pushes), ms | {} ({}) | - | - | - | - |\n",
            fmt_num(median(&service)),
            range(&service)
        );
    }
    s += &format!("| push p50 latency, ms | {} ({}) | - | - | - | - |\n", fmt_num(median(&p50)), range(&p50));
    s += &format!(
        "| push p99 latency, ms | {} ({}) | - | - | < 50 | {} |\n",
        fmt_num(median(&p99)),
        range(&p99),
        yes(median(&p99) < 50.0)
    );
    s += &format!(
        "| hub peak memory (VmHWM), MB | {} ({}) | - | - | < 100 | {} |\n",
        fmt_num(median(&hwm)),
        range(&hwm),
        yes(median(&hwm) < 100.0)
    );
    s
}

/// Table rows for [`ALT_SCHEMAS`], from each run's changes and measured
/// shapes, beside the baseline's median rate.
fn report_alts<'a>(runs: impl Iterator<Item = (u64, &'a [Alt])> + Clone, base: f64) -> String {
    let mut s = String::new();
    for (i, (label, _)) in ALT_SCHEMAS.iter().enumerate() {
        let rate: Vec<f64> = runs.clone().map(|(_, a)| a[i].rate).collect();
        let cpu: Vec<f64> = runs.clone().map(|(n, a)| n as f64 / a[i].cpu).collect();
        s += &format!(
            "| baseline variant, {label}: changes/s (per CPU second) | - | {} ({}; CPU {}) | variant / baseline {:.2} | - | - |\n",
            fmt_num(median(&rate)),
            range(&rate),
            fmt_num(median(&cpu)),
            median(&rate) / base
        );
    }
    s
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

// ---------------------------------------------------------------------------
// 2. Propagation.

fn sale_request() -> SaleRequest {
    let cash = PaymentInput { method: Method::Cash, amount_minor: None, brand: None, last4: None };
    SaleRequest {
        items: LINES.iter().map(|(s, q, _)| (s.to_string(), *q)).collect(),
        payments: vec![cash],
        ..Default::default()
    }
}

struct Propagation {
    at_hub: Vec<f64>,
    hub_to_b: Vec<f64>,
    applied: Vec<f64>,
    round: Vec<f64>,
    push: Vec<f64>,
    healthz: Vec<f64>,
    commit: Vec<f64>,
    misses: usize,
    sale_bytes: usize,
}

async fn propagation(cfg: &Config, root: &Path) -> Propagation {
    let dir = root.join("propagation");
    let (hub, setup) = setup_hub(&dir.join("hub"), 2);
    drop(hub);
    let proc = HubProc::spawn(cfg, &dir.join("hub"));
    let (da, db) = (dir.join("a"), dir.join("b"));
    let mut a = enrol_and_bootstrap(&da, &proc.url, &setup.codes[0], "till A", &opts(), IdGen::from_u64(11))
        .await
        .expect("enrol A");
    let b = enrol_and_bootstrap(&db, &proc.url, &setup.codes[1], "till B", &opts(), IdGen::from_u64(12))
        .await
        .expect("enrol B");
    let client_a = client_for(&da, &a).expect("client A");

    // Till B: the background driver, in its own thread and runtime.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (round_tx, round_rx) = mpsc::channel::<(Instant, u64)>();
    let db2 = db.clone();
    let b_thread = std::thread::spawn(move || {
        let mut b = b;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let client = client_for(&db2, &b).expect("client B");
            let mut config = NodeConfig::default();
            config.sync.interval_s = 60;
            config.network.metered = "no".into();
            let stop = async move {
                let _ = stop_rx.await;
            };
            // Nobody asks for a round by hand; the sender stays open.
            let (_ask_tx, ask_rx) = tokio::sync::mpsc::channel::<()>(1);
            run(&mut b, client, config, now_ms, stop, ask_rx, move |_, r| {
                if let Ok(rep) = r {
                    let _ = round_tx.send((Instant::now(), rep.pulled));
                }
            })
            .await;
        });
    });

    // The observer: separate read connections on the hub's tenant database
    // and on B's; the sale is looked for on the hub first, then on B.
    let (want_tx, want_rx) = mpsc::channel::<String>();
    let (seen_tx, seen_rx) = mpsc::channel::<Option<(Instant, Instant)>>();
    let b_db = db.join(tillsync_store::DB_FILE);
    let hub_db = dir.join("hub").join("tenants").join(setup.tenant.to_string()).join(tillsync_store::DB_FILE);
    let poller = std::thread::spawn(move || {
        // Through the folder's key: B's database is encrypted (the hub's
        // tenant file is plaintext, which the same call opens). A plain
        // connection reads nothing from B, and every sale then waits out
        // the deadline below.
        let open = |p: &Path| {
            let (c, _) =
                tillsync_store::keys::open(p, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                    .expect("read connection");
            c.busy_timeout(Duration::from_secs(5)).expect("busy");
            c
        };
        let (hub, b) = (open(&hub_db), open(&b_db));
        let wait_for = |conn: &Connection, id: &str, deadline: Instant| loop {
            // An error is not "not there yet": it would make every sale a miss.
            let found = conn
                .prepare_cached("SELECT 1 FROM ledger WHERE id = ?1")
                .and_then(|mut st| st.exists([id]))
                .expect("the observer's read");
            if found {
                break Some(Instant::now());
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        while let Ok(id) = want_rx.recv() {
            let deadline = Instant::now() + Duration::from_secs(10);
            let seen = wait_for(&hub, &id, deadline).and_then(|h| wait_for(&b, &id, deadline).map(|b| (h, b)));
            let _ = seen_tx.send(seen);
        }
    });

    // The floor: one durable commit on the same disk.
    let floor = Connection::open(dir.join("floor.db")).expect("floor db");
    floor.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())).expect("wal");
    floor.execute_batch("PRAGMA synchronous=FULL; CREATE TABLE t(x TEXT);").expect("floor");

    let req = sale_request();
    let warmup = 10;
    let mut p = Propagation {
        at_hub: vec![],
        hub_to_b: vec![],
        applied: vec![],
        round: vec![],
        push: vec![],
        healthz: vec![],
        commit: vec![],
        misses: 0,
        sale_bytes: 0,
    };
    for i in 0..warmup + cfg.sales {
        let out = a.sell(now_ms(), &req).expect("sell on A");
        let committed = Instant::now();
        p.sale_bytes = out.data.to_string().len();
        want_tx.send(out.sale_id.to_string()).expect("poller");
        sync_once(&mut a, &client_a, now_ms).await.expect("A pushes");
        let pushed = committed.elapsed();
        let seen = seen_rx.recv_timeout(Duration::from_secs(15)).ok().flatten();
        // B's round that pulled it: the first one ending after the commit.
        let round = loop {
            match round_rx.recv_timeout(Duration::from_secs(15)) {
                Ok((t, pulled)) if pulled > 0 && t > committed => break Some(t),
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        let t = Instant::now();
        let healthy = client_a.healthy().await;
        let hz = t.elapsed();
        assert!(healthy, "healthz");
        let t = Instant::now();
        floor.execute("INSERT INTO t(x) VALUES ('sale')", []).expect("floor insert");
        let commit = t.elapsed();
        if i < warmup {
            continue;
        }
        match (seen, round) {
            (Some((h, s)), Some(r)) => {
                p.at_hub.push(ms(h - committed));
                p.hub_to_b.push(ms(s - h));
                p.applied.push(ms(s - committed));
                p.round.push(ms(r - committed));
            }
            _ => p.misses += 1,
        }
        p.push.push(ms(pushed));
        p.healthz.push(ms(hz));
        p.commit.push(ms(commit));
    }
    drop(want_tx);
    let _ = stop_tx.send(());
    let _ = b_thread.join();
    let _ = poller.join();
    drop(proc);
    let _ = std::fs::remove_dir_all(&dir);
    p
}

fn report_propagation(cfg: &Config, p: &Propagation) -> String {
    let mut s = format!(
        "### 2. Propagation: till A sells (`Store::sell`, 3 lines: {}-byte sale row) and syncs; till B runs `node run` with live events; {} sales, one at a time\n\n",
        p.sale_bytes, cfg.sales
    );
    s += "| figure | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n";
    let row = |name: &str, v: &[f64]| {
        format!("| {name} | {} | {} | {} |\n", fmt_num(pct(v, 50.0)), fmt_num(pct(v, 99.0)), fmt_num(pct(v, 100.0)))
    };
    s += &row("A's commit -> sale committed in B's database", &p.applied);
    s += &row("  of which: A's commit -> committed in the hub's tenant database", &p.at_hub);
    s += &row("  of which: hub commit -> committed in B's database", &p.hub_to_b);
    s += &row("A's commit -> B's sync round finished", &p.round);
    s += &row("A's `sync_once` (push + empty pull + bookkeeping)", &p.push);
    s += &row("baseline: `GET /healthz` round trip, A's connection pool", &p.healthz);
    s += &row("baseline: one durable SQLite commit (WAL, FULL), same disk", &p.commit);
    let floor = |q: f64| 2.0 * pct(&p.healthz, q) + 2.0 * pct(&p.commit, q);
    s += &format!(
        "| floor estimate: 2 round trips + 2 durable commits (hub, B) | {} | {} | - |\n",
        fmt_num(floor(50.0)),
        fmt_num(floor(99.0))
    );
    s += &format!(
        "\n| figure | measured | baseline (healthz) | ratio | floor (2 RTT + 2 commits) | ratio to floor | goal | holds |\n|---|---|---|---|---|---|---|---|\n\
         | propagation p50, ms | {} | {} | {:.0}x | {} | {:.1}x | < 5 | {} |\n\
         | propagation p99, ms | {} | {} | {:.0}x | {} | {:.1}x | < 15 | {} |\n",
        fmt_num(pct(&p.applied, 50.0)),
        fmt_num(pct(&p.healthz, 50.0)),
        pct(&p.applied, 50.0) / pct(&p.healthz, 50.0),
        fmt_num(floor(50.0)),
        pct(&p.applied, 50.0) / floor(50.0),
        yes(pct(&p.applied, 50.0) < 5.0),
        fmt_num(pct(&p.applied, 99.0)),
        fmt_num(pct(&p.healthz, 99.0)),
        pct(&p.applied, 99.0) / pct(&p.healthz, 99.0),
        fmt_num(floor(99.0)),
        pct(&p.applied, 99.0) / floor(99.0),
        yes(pct(&p.applied, 99.0) < 15.0),
    );
    if p.misses > 0 {
        s += &format!("\n{} sales were not seen on B within 15 s.\n", p.misses);
    }
    s
}

// ---------------------------------------------------------------------------
// 3. Pull and apply on a node, with sales beside it; 4. bootstrap.

struct PullRep {
    pulled: u64,
    secs: f64,
    rate: f64,
    base_rate: f64,
    sales: Vec<f64>,
    idle: Vec<f64>,
    sale_errors: u64,
    hub_hwm: u64,
    hub_cpu: f64,
    till_cpu: f64,
    base_cpu: f64,
    /// [`ALT_SCHEMAS`] in order, for the same pages.
    alts: Vec<Alt>,
    load: String,
}

struct Preload {
    changes: u64,
    secs: f64,
}

struct Boot {
    ok: Result<(), String>,
    secs: f64,
    up: u64,
    down: u64,
    hub_hwm_before: u64,
    hub_hwm_after: u64,
    bench_rss_before: u64,
    bench_hwm: u64,
    /// CPU seconds of the hub process and of this process (the till).
    hub_cpu: f64,
    till_cpu: f64,
    snapshot_zstd: u64,
    snapshot_json: u64,
}

struct BootBase {
    vacuum_s: f64,
    zstd_s: f64,
    /// CPU seconds of the baseline (this process, otherwise idle meanwhile).
    cpu_s: f64,
    db_bytes: u64,
    zstd_bytes: u64,
}

/// Pushes `total` changes from `devices` devices (enrolled with the first
/// codes) straight into the hub's storage, no HTTP, one thread. Devices take
/// turns, a batch each; their clocks advance one millisecond per change.
/// With `mixed`, every fifth change is a price write, else all are sales.
fn push_inproc(hub: &SqliteHub, setup: &HubSetup, devices: usize, total: usize, batch: usize, mixed: bool) -> Preload {
    let mut devs = Vec::new();
    for d in 0..devices {
        let e = hub.enrol(&setup.codes[d], &format!("in-process {d}"), now_ms()).expect("enrol");
        let auth = DeviceAuth { device_id: e.device_id, tenant_id: e.tenant_id, store_id: e.store_id };
        devs.push((auth, SimDevice::new(e.device_id, e.store_id, setup.tenant, 1_000 + d), 0usize));
    }
    let mut pushed = 0usize;
    let mut spent = Duration::ZERO;
    for (d, times) in turns(devices, total, batch, now_ms()) {
        let (auth, dev, made) = &mut devs[d];
        let changes: Vec<WireChange> = times
            .iter()
            .map(|&now| {
                *made += 1;
                wire(&if mixed { dev.mixed(*made - 1, now) } else { dev.sale(now) })
            })
            .collect();
        let req = PushRequest { device_time_ms: times[0], changes, ..Default::default() };
        let t = Instant::now();
        let (resp, _) = hub.push(auth, &req, now_ms()).expect("in-process push");
        spent += t.elapsed();
        let ok = resp.lanes.values().all(|a| a.error.is_none() && a.quarantined.is_empty());
        assert!(ok && resp.lanes[&Lane::Sales].acked_through == dev.seq_sales, "in-process push acknowledged");
        pushed += times.len();
    }
    Preload { changes: pushed as u64, secs: spent.as_secs_f64() }
}

/// The pre-load's schedule: `devices` take turns, `batch` changes each,
/// until `total`; in a round every device's batch covers the same
/// milliseconds from `start`, so their ids interleave as tills selling at
/// once do. Each item is a device and the millisecond of each change. The
/// pull baseline inserts its rows in this order too.
fn turns(devices: usize, total: usize, batch: usize, start: u64) -> Vec<(usize, Vec<u64>)> {
    let mut out = Vec::new();
    let (mut made, mut round) = (0usize, 0u64);
    while made < total {
        for d in 0..devices {
            let k = (total - made).min(batch);
            if k == 0 {
                break;
            }
            let t0 = start + round * batch as u64;
            out.push((d, (0..k as u64).map(|j| t0 + j).collect()));
            made += k;
        }
        round += 1;
    }
    out
}

/// Pushes ROWS/4 sale changes from other devices into the hub's storage
/// before it is served.
fn preload(hub: &SqliteHub, setup: &HubSetup, rows: usize) -> Preload {
    push_inproc(hub, setup, PRELOAD_DEVICES, rows / ROWS_PER_SALE, PRELOAD_BATCH_LEN, false)
}

async fn enrol_without_snapshot(dir: &Path, url: &str, code: &str, name: &str, seed: u64) -> (Store, HubClient) {
    let e = HubClient::new(url, None, &opts()).expect("client").enrol(code, name).await.expect("enrol");
    let identity = Identity {
        tenant_id: e.tenant_id,
        store_id: e.store_id,
        device_id: e.device_id,
        receipt_prefix: e.receipt_prefix.clone(),
        name: name.to_string(),
        mode: "hub".into(),
    };
    let store = Store::create(dir, identity, Schema::standard(), IdGen::from_u64(seed)).expect("create till");
    save_token(dir, &e.token).expect("token");
    store.set_meta("hub_url", url).expect("meta");
    let client = client_for(dir, &store).expect("client");
    (store, client)
}

struct SellerStats {
    during: Vec<f64>,
    idle: Vec<f64>,
    errors: u64,
    cpu: f64,
}

/// Sells every `every` on the till in `dir` through its own `Store` (as a
/// second process would), once the catalogue has arrived; sales after
/// `done` is set are the idle reference (100 of them).
fn seller(dir: PathBuf, every: Duration, done: Arc<AtomicBool>) -> SellerStats {
    let mut store = Store::open(&dir, Schema::standard(), IdGen::from_u64(4242)).expect("open till");
    let req = sale_request();
    let cpu0 = proc_cpu("thread-self");
    let mut st = SellerStats { during: vec![], idle: vec![], errors: 0, cpu: 0.0 };
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += every;
        let finished = done.load(Ordering::SeqCst);
        if finished && (st.idle.len() >= 100 || st.during.is_empty()) {
            break;
        }
        if LINES.iter().any(|(sku, _, _)| store.product(sku).is_err()) {
            continue;
        }
        let t = Instant::now();
        match store.sell(now_ms(), &req) {
            Ok(_) => {
                let d = ms(t.elapsed());
                if finished { st.idle.push(d) } else { st.during.push(d) }
            }
            Err(e) => {
                if st.errors == 0 {
                    eprintln!("sale failed during the pull: {e}");
                }
                st.errors += 1;
            }
        }
    }
    st.cpu = proc_cpu("thread-self") - cpu0;
    st
}

async fn pull_rep(cfg: &Config, dir: &Path, proc: &HubProc, code: &str, rep: usize) -> PullRep {
    let till_dir = dir.join(format!("pull-till-{rep}"));
    let (mut store, client) =
        enrol_without_snapshot(&till_dir, &proc.url, code, &format!("fresh {rep}"), 50 + rep as u64).await;
    let done = Arc::new(AtomicBool::new(false));
    let (d2, every, done2) = (till_dir.clone(), cfg.sell_every, done.clone());
    let with_seller = cfg.seller;
    let sell_thread = std::thread::spawn(move || {
        if with_seller {
            seller(d2, every, done2)
        } else {
            SellerStats { during: vec![], idle: vec![], errors: 0, cpu: 0.0 }
        }
    });
    let (cpu0, self0) = (proc.cpu(), proc_cpu("self"));
    let t = Instant::now();
    let report = sync_once(&mut store, &client, now_ms).await.expect("pull");
    let secs = t.elapsed().as_secs_f64();
    let (hub_cpu, till_cpu) = (proc.cpu() - cpu0, proc_cpu("self") - self0);
    done.store(true, Ordering::SeqCst);
    let st = sell_thread.join().expect("seller");
    let hub_hwm = proc.mem().hwm;
    drop(store);
    let _ = std::fs::remove_dir_all(&till_dir);
    // Baseline: the same number of sale changes, raw, pages of 500 changes,
    // in the order the till gets them: the pre-load's devices take turns,
    // a batch each, their clocks over the same milliseconds, so their ids
    // interleave as the hub's log hands them out.
    let conn = base_db(&dir.join(format!("pull-baseline-{rep}.db")));
    let mut ids = IdGen::from_u64(9_000 + rep as u64);
    let store_id = ids.new_v7(now_ms());
    let mut devs: Vec<SimDevice> =
        (0..PRELOAD_DEVICES).map(|d| SimDevice::new(ids.new_v7(now_ms()), store_id, Uuid::nil(), 9_000 + d)).collect();
    let mut base_time = Duration::ZERO;
    let mut base_cpu = 0.0;
    let order: Vec<(usize, u64)> = turns(PRELOAD_DEVICES, report.pulled as usize, PRELOAD_BATCH_LEN, now_ms())
        .into_iter()
        .flat_map(|(d, times)| times.into_iter().map(move |t| (d, t)))
        .collect();
    let alt_conns: Vec<Connection> = ALT_SCHEMAS
        .iter()
        .enumerate()
        .map(|(i, (_, sql))| schema_db(&dir.join(format!("pull-alt-{rep}-{i}.db")), sql))
        .collect();
    let mut alt_time = vec![Duration::ZERO; ALT_SCHEMAS.len()];
    let mut alts = vec![Alt::default(); ALT_SCHEMAS.len()];
    for page in order.chunks(PULL_PAGE_LEN) {
        let mut rows = Vec::with_capacity(page.len() * ROWS_PER_SALE);
        for &(d, now) in page {
            base_rows(&devs[d].sale(now), &mut rows);
        }
        let c0 = proc_cpu("thread-self");
        base_time += base_insert(&conn, &rows);
        base_cpu += proc_cpu("thread-self") - c0;
        for (i, alt) in alt_conns.iter().enumerate() {
            let c0 = proc_cpu("thread-self");
            alt_time[i] += base_insert(alt, &rows);
            alts[i].cpu += proc_cpu("thread-self") - c0;
        }
    }
    drop((conn, alt_conns));
    let _ = std::fs::remove_file(dir.join(format!("pull-baseline-{rep}.db")));
    for (i, alt) in alts.iter_mut().enumerate() {
        alt.rate = report.pulled as f64 / alt_time[i].as_secs_f64();
        let _ = std::fs::remove_file(dir.join(format!("pull-alt-{rep}-{i}.db")));
    }
    PullRep {
        pulled: report.pulled,
        secs,
        rate: report.pulled as f64 / secs,
        base_rate: report.pulled as f64 / base_time.as_secs_f64(),
        alts,
        sales: st.during,
        idle: st.idle,
        sale_errors: st.errors,
        hub_hwm,
        hub_cpu,
        // The seller's own CPU is not the pull's.
        till_cpu: till_cpu - st.cpu,
        base_cpu,
        load: loadavg(),
    }
}

/// A TCP proxy on loopback that counts the bytes each way.
async fn counting_proxy(target: std::net::SocketAddr) -> (String, Arc<AtomicU64>, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let (u, d) = (up.clone(), down.clone());
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { continue };
            let (mut ir, mut iw) = inbound.into_split();
            let (mut or, mut ow) = outbound.into_split();
            let (u, d) = (u.clone(), d.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 << 10];
                while let Ok(n) = ir.read(&mut buf).await {
                    if n == 0 || ow.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    u.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = ow.shutdown().await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 << 10];
                while let Ok(n) = or.read(&mut buf).await {
                    if n == 0 || iw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    d.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = iw.shutdown().await;
            });
        }
    });
    (url, up, down)
}

/// The snapshot's size as sent (zstd) and decoded, fetched directly.
async fn snapshot_size(url: &str, token: &str) -> (u64, u64) {
    let http = reqwest::Client::builder().build().expect("reqwest");
    let resp = http
        .get(format!("{url}/v1/snapshot"))
        .header("authorization", format!("Bearer {token}"))
        .header("accept-encoding", "zstd")
        .timeout(Duration::from_secs(1_800))
        .send()
        .await
        .expect("snapshot");
    let zstd = resp.headers().get("content-encoding").is_some_and(|v| v == "zstd");
    let body = resp.bytes().await.expect("snapshot body");
    let decoded =
        if zstd { zstd::stream::decode_all(&body[..]).map(|d| d.len() as u64).unwrap_or(0) } else { body.len() as u64 };
    (body.len() as u64, decoded)
}

async fn bootstrap_rep(dir: &Path, proc: &HubProc, code: &str, rep: usize) -> Boot {
    let (url, up, down) = counting_proxy(proc.addr()).await;
    let till_dir = dir.join(format!("boot-till-{rep}"));
    // Peak memory of this bootstrap alone: reset both processes' VmHWM to
    // their current RSS (the bench process pre-loaded the hub in-process
    // and keeps some of that memory).
    reset_hwm("self");
    reset_hwm(&proc.pid());
    let hub_hwm_before = proc.mem().hwm;
    let bench_rss_before = proc_mem("self").rss;
    let (hub_cpu0, till_cpu0) = (proc.cpu(), proc_cpu("self"));
    let t = Instant::now();
    let r =
        enrol_and_bootstrap(&till_dir, &url, code, &format!("boot {rep}"), &opts(), IdGen::from_u64(70 + rep as u64))
            .await;
    let secs = t.elapsed().as_secs_f64();
    let ok = r.map(drop).map_err(|e| e.to_string());
    let mut boot = Boot {
        ok,
        secs,
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        hub_hwm_before,
        hub_hwm_after: proc.mem().hwm,
        bench_rss_before,
        bench_hwm: proc_mem("self").hwm,
        hub_cpu: proc.cpu() - hub_cpu0,
        till_cpu: proc_cpu("self") - till_cpu0,
        snapshot_zstd: 0,
        snapshot_json: 0,
    };
    if boot.ok.is_err() {
        // Evidence: how large the snapshot is, fetched without the client's limit.
        let token = load_token(&till_dir).expect("token");
        (boot.snapshot_zstd, boot.snapshot_json) = snapshot_size(&proc.url, &token).await;
    }
    let _ = std::fs::remove_dir_all(&till_dir);
    boot
}

fn bootstrap_baseline(dir: &Path, hub_dir: &Path, tenant: Uuid) -> BootBase {
    let db = hub_dir.join("tenants").join(tenant.to_string()).join(tillsync_store::DB_FILE);
    let out = dir.join("vacuum.db");
    let _ = std::fs::remove_file(&out);
    let cpu0 = proc_cpu("self");
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("tenant db");
    let t = Instant::now();
    conn.execute("VACUUM INTO ?1", [out.display().to_string()]).expect("vacuum into");
    let vacuum_s = t.elapsed().as_secs_f64();
    drop(conn);
    let db_bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let zpath = dir.join("vacuum.db.zst");
    {
        let mut input = std::fs::File::open(&out).expect("vacuum file");
        let output = std::fs::File::create(&zpath).expect("zst file");
        let mut enc = zstd::stream::Encoder::new(output, 3).expect("zstd");
        std::io::copy(&mut input, &mut enc).expect("compress");
        enc.finish().expect("finish").sync_all().expect("sync");
    }
    let zstd_s = t.elapsed().as_secs_f64();
    let zstd_bytes = std::fs::metadata(&zpath).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&zpath);
    BootBase { vacuum_s, zstd_s, cpu_s: proc_cpu("self") - cpu0, db_bytes, zstd_bytes }
}

async fn pull_and_bootstrap(cfg: &Config, root: &Path, out: &mut String) {
    let dir = root.join("pull");
    let hub_dir = dir.join("hub");
    let codes = PRELOAD_DEVICES + cfg.pull_reps + cfg.boot_reps;
    let (hub, setup) = setup_hub(&hub_dir, codes);
    progress(&format!("pre-loading {} ledger rows ({} sale changes) in-process", cfg.rows, cfg.rows / ROWS_PER_SALE));
    let pre = preload(&hub, &setup, cfg.rows);
    drop(hub);
    let proc = HubProc::spawn(cfg, &hub_dir);
    let mut codes = setup.codes[PRELOAD_DEVICES..].iter();
    let pre_line = format!(
        "Pre-load (in-process `SqliteHub::push`, no HTTP, batches of {PRELOAD_BATCH_LEN}, one thread): {} changes in {:.1} s = {} changes/s.\n",
        pre.changes,
        pre.secs,
        fmt_num(pre.changes as f64 / pre.secs)
    );
    if cfg.wants("pull") {
        let mut reps = Vec::new();
        for rep in 0..cfg.pull_reps {
            progress(&format!("pull run {}/{}", rep + 1, cfg.pull_reps));
            let code = codes.next().expect("code");
            reps.push(pull_rep(cfg, &dir, &proc, code, rep).await);
        }
        let s = report_pull(cfg, &pre_line, &reps);
        println!("{s}");
        *out += &s;
    } else {
        codes.nth(cfg.pull_reps - 1);
    }
    if cfg.wants("bootstrap") {
        let mut boots = Vec::new();
        let mut bases = Vec::new();
        for rep in 0..cfg.boot_reps {
            progress(&format!("bootstrap run {}/{}", rep + 1, cfg.boot_reps));
            let code = codes.next().expect("code");
            boots.push(bootstrap_rep(&dir, &proc, code, rep).await);
            bases.push(bootstrap_baseline(&dir, &hub_dir, setup.tenant));
        }
        let s = report_bootstrap(cfg, &boots, &bases);
        println!("{s}");
        *out += &s;
    }
    drop(proc);
    let _ = std::fs::remove_dir_all(&dir);
}

fn report_pull(cfg: &Config, pre: &str, reps: &[PullRep]) -> String {
    let mut s = format!(
        "### 3. Pull and apply: a fresh till pulls {} sale changes ({} ledger rows) with one `sync_once`, selling every {} ms beside it\n\n{pre}\n",
        cfg.rows / ROWS_PER_SALE,
        cfg.rows,
        cfg.sell_every.as_millis()
    );
    s += "| run | entries pulled | s | till changes/s | baseline changes/s | till / baseline | hub CPU s | till process CPU s | sales during pull | sale p50 / p99 / max ms during pull | sale p50 / max ms idle | failed sales | hub VmHWM MB | load avg after |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (i, r) in reps.iter().enumerate() {
        s += &format!(
            "| {} | {} | {:.1} | {} | {} | {:.3} | {:.1} | {:.1} | {} | {} / {} / {} | {} / {} | {} | {} | {} |\n",
            i + 1,
            r.pulled,
            r.secs,
            fmt_num(r.rate),
            fmt_num(r.base_rate),
            r.rate / r.base_rate,
            r.hub_cpu,
            r.till_cpu,
            r.sales.len(),
            fmt_num(pct(&r.sales, 50.0)),
            fmt_num(pct(&r.sales, 99.0)),
            fmt_num(pct(&r.sales, 100.0)),
            fmt_num(pct(&r.idle, 50.0)),
            fmt_num(pct(&r.idle, 100.0)),
            r.sale_errors,
            fmt_num(mb(r.hub_hwm)),
            r.load,
        );
    }
    let rate: Vec<f64> = reps.iter().map(|r| r.rate).collect();
    let base: Vec<f64> = reps.iter().map(|r| r.base_rate).collect();
    let ratio: Vec<f64> = reps.iter().map(|r| r.rate / r.base_rate).collect();
    let worst: Vec<f64> = reps.iter().map(|r| pct(&r.sales, 100.0)).collect();
    let till_cpu: Vec<f64> = reps.iter().map(|r| r.pulled as f64 / r.till_cpu).collect();
    let hub_cpu: Vec<f64> = reps.iter().map(|r| r.pulled as f64 / r.hub_cpu).collect();
    let base_cpu: Vec<f64> = reps.iter().map(|r| r.pulled as f64 / r.base_cpu).collect();
    s += "\n| figure | till (median of runs, range) | baseline (median) | ratio | goal | holds |\n|---|---|---|---|---|---|\n";
    s += &format!(
        "| pull + apply, changes/s | {} ({}) | {} | {:.3} | >= 200,000 | {} |\n",
        fmt_num(median(&rate)),
        range(&rate),
        fmt_num(median(&base)),
        median(&ratio),
        yes(median(&rate) >= 200_000.0)
    );
    s += &format!(
        "| CPU cost: changes per CPU second (till process without the seller / baseline thread) | {} ({}) | {} | {:.3} | (>= 200,000 needs <= 5 us/change/core) | - |\n",
        fmt_num(median(&till_cpu)),
        range(&till_cpu),
        fmt_num(median(&base_cpu)),
        median(&till_cpu) / median(&base_cpu)
    );
    s += &format!(
        "| hub CPU: changes served per hub CPU second | {} ({}) | - | - | - | - |\n",
        fmt_num(median(&hub_cpu)),
        range(&hub_cpu)
    );
    s += &report_alts(reps.iter().map(|r| (r.pulled, r.alts.as_slice())), median(&base));
    if cfg.seller {
        let worst_all = worst.iter().copied().fold(0.0, f64::max);
        s += &format!(
            "| longest sale wait during the pull, ms | {} (worst run {}) | - | - | <= 100 | {} |\n",
            fmt_num(median(&worst)),
            fmt_num(worst_all),
            yes(worst_all <= 100.0 && reps.iter().all(|r| r.sale_errors == 0))
        );
    }
    s
}

fn report_bootstrap(cfg: &Config, boots: &[Boot], bases: &[BootBase]) -> String {
    let mut s = format!(
        "### 4. Bootstrap: `enrol_and_bootstrap` of a fresh till on a hub holding {} ledger rows in its store\n\n",
        cfg.rows
    );
    s += "| run | result | s | bytes to till | bytes to hub | hub VmHWM MB (reset to RSS before -> after) | till (bench process) VmRSS before -> VmHWM after, MB | CPU s hub / till | baseline VACUUM INTO s | baseline zstd -3 s | baseline db bytes | baseline zstd bytes |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (i, (b, base)) in boots.iter().zip(bases).enumerate() {
        let result = match &b.ok {
            Ok(()) => "ok".to_string(),
            Err(e) => format!(
                "**failed**: {e} (the snapshot is {} bytes zstd, {} bytes JSON)",
                fmt_num(b.snapshot_zstd as f64),
                fmt_num(b.snapshot_json as f64)
            ),
        };
        s += &format!(
            "| {} | {} | {:.2} | {} | {} | {} -> {} | {} -> {} | {:.1} / {:.1} | {:.2} | {:.2} | {} | {} |\n",
            i + 1,
            result,
            b.secs,
            fmt_num(b.down as f64),
            fmt_num(b.up as f64),
            fmt_num(mb(b.hub_hwm_before)),
            fmt_num(mb(b.hub_hwm_after)),
            fmt_num(mb(b.bench_rss_before)),
            fmt_num(mb(b.bench_hwm)),
            b.hub_cpu,
            b.till_cpu,
            base.vacuum_s,
            base.zstd_s,
            fmt_num(base.db_bytes as f64),
            fmt_num(base.zstd_bytes as f64),
        );
    }
    let ok: Vec<(&Boot, &BootBase)> = boots.iter().zip(bases).filter(|(b, _)| b.ok.is_ok()).collect();
    s += "\n| figure | bootstrap (median) | baseline VACUUM INTO + zstd (median) | ratio | goal | holds |\n|---|---|---|---|---|---|\n";
    if ok.is_empty() {
        s += "| time, s | failed | - | - | within 2x | **no** |\n";
    } else {
        let t: Vec<f64> = ok.iter().map(|(b, _)| b.secs).collect();
        let bt: Vec<f64> = ok.iter().map(|(_, x)| x.vacuum_s + x.zstd_s).collect();
        let by: Vec<f64> = ok.iter().map(|(b, _)| (b.down + b.up) as f64).collect();
        let bb: Vec<f64> = ok.iter().map(|(_, x)| x.zstd_bytes as f64).collect();
        let rt = median(&t) / median(&bt);
        let rb = median(&by) / median(&bb);
        s +=
            &format!("| time, s | {:.2} | {:.2} | {:.2} | <= 2x | {} |\n", median(&t), median(&bt), rt, yes(rt <= 2.0));
        // CPU moves much less than wall time on this shared machine.
        let tc: Vec<f64> = ok.iter().map(|(b, _)| b.till_cpu).collect();
        let hc: Vec<f64> = ok.iter().map(|(b, _)| b.hub_cpu).collect();
        let bc: Vec<f64> = ok.iter().map(|(_, x)| x.cpu_s).collect();
        s += &format!(
            "| CPU s: till (apply + fetch thread), hub; baseline | {:.1} till, {:.1} hub | {:.1} | till {:.2}, till + hub {:.2} | - | - |\n",
            median(&tc),
            median(&hc),
            median(&bc),
            median(&tc) / median(&bc),
            (median(&tc) + median(&hc)) / median(&bc)
        );
        s += &format!(
            "| bytes on the wire | {} | {} | {:.2} | <= 2x | {} |\n",
            fmt_num(median(&by)),
            fmt_num(median(&bb)),
            rb,
            yes(rb <= 2.0)
        );
    }
    s
}

// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// 5. Ingest on PostgreSQL.

struct PgIngestRep {
    procs: usize,
    changes: u64,
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
    hub_cpu: f64,
    copy_rate: f64,
    copy_rows: usize,
    errors: u64,
    load: String,
}

/// COPY text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        Some(v) => {
            for ch in v.chars() {
                match ch {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

/// The baseline: the same rows as the SQLite baseline, in a table of the
/// same shape on the same server, loaded by one `psql \copy`. Returns the
/// time psql took.
fn copy_baseline(url: &str, dir: &Path, txns: &[Vec<BaseRow>]) -> (Duration, usize) {
    let mut tsv = String::new();
    let mut n = 0;
    for r in txns.iter().flatten() {
        copy_field(&mut tsv, Some(&r.id));
        tsv.push('\t');
        copy_field(&mut tsv, Some(&r.tbl));
        tsv.push('\t');
        copy_field(&mut tsv, r.key.as_deref());
        tsv.push('\t');
        copy_field(&mut tsv, Some(&r.store));
        tsv.push('\t');
        copy_field(&mut tsv, Some(&r.device));
        tsv.push('\t');
        tsv.push_str(&r.hlc.to_string());
        tsv.push('\t');
        copy_field(&mut tsv, Some(&r.data));
        tsv.push('\n');
        n += 1;
    }
    let file = dir.join("copy.tsv");
    std::fs::write(&file, tsv).expect("write the COPY file");
    let psql = |sql: &str| {
        let out = Command::new("psql").args([url, "-v", "ON_ERROR_STOP=1", "-qc", sql]).output().expect("run psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    };
    psql(
        "CREATE TABLE ledger(id text PRIMARY KEY, tbl text NOT NULL, key text, store_id text NOT NULL,
         device text NOT NULL, hlc bigint NOT NULL, data text NOT NULL);
         CREATE INDEX ledger_key ON ledger(tbl, key); CREATE INDEX ledger_hlc ON ledger(tbl, hlc);",
    );
    let t = Instant::now();
    psql(&format!("\\copy ledger FROM '{}'", file.display()));
    let took = t.elapsed();
    let _ = std::fs::remove_file(&file);
    (took, n)
}

async fn pg_ingest_rep(cfg: &Config, server: &str, procs: usize, root: &Path) -> PgIngestRep {
    let db = TestDatabase::create_on(server);
    // `cfg.tenants` tenants with a store each; devices dealt round robin.
    let admin_hub = PgHub::open(&db.url, &PgOptions::default(), IdGen::from_u64(7)).expect("hub database");
    let setups: Vec<HubSetup> = (0..cfg.tenants).map(|_| setup_on(&admin_hub, 0)).collect();
    let mut codes = Vec::new();
    for i in 0..cfg.devices {
        let t = setups[i % setups.len()].tenant;
        let store = setups[i % setups.len()].store;
        codes.push(admin_hub.create_enrol_code(t, store, now_ms(), 24 * 3_600_000).expect("code").0);
    }
    let logged = |hub: &PgHub| -> u64 { setups.iter().map(|s| hub.usage(s.tenant).expect("usage").changes).sum() };
    let logged_before = logged(&admin_hub);
    let hubs: Vec<HubProc> = (0..procs).map(|_| HubProc::spawn_on(cfg, &["--database-url", &db.url])).collect();
    let urls: Vec<&str> = hubs.iter().map(|h| h.url.as_str()).collect();
    let (work, base_txns) = ingest_work_for(cfg, &codes, &urls).await;
    let total: u64 = (cfg.devices * cfg.per_device) as u64;
    let cpu0: f64 = hubs.iter().map(HubProc::cpu).sum();
    let start = Instant::now();
    let (lat, errors) = push_all(work, cfg.pace).await;
    let wall = start.elapsed().as_secs_f64();
    let hub_cpu = hubs.iter().map(HubProc::cpu).sum::<f64>() - cpu0;
    drop(hubs);
    let logged = logged(&admin_hub) - logged_before;
    drop(admin_hub);
    let dir = root.join(format!("pg-copy-{procs}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (copy_time, copy_rows) = copy_baseline(&db.url, &dir, &base_txns);
    let _ = std::fs::remove_dir_all(&dir);
    PgIngestRep {
        procs,
        changes: total,
        rate: total as f64 / wall,
        p50: pct(&lat, 50.0),
        p99: pct(&lat, 99.0),
        max: pct(&lat, 100.0),
        hub_cpu,
        copy_rate: total as f64 / copy_time.as_secs_f64(),
        copy_rows,
        // A change missing from (or doubled in) the log counts as an error.
        errors: errors + total.abs_diff(logged),
        load: loadavg(),
    }
}

fn report_pg_ingest(cfg: &Config, reps: &[PgIngestRep]) -> String {
    let mut s = format!(
        "### 5. Hub ingest on PostgreSQL: {} devices of {} tenant(s) x {} changes (80% sales of 4 rows, 20% price writes), batches of {}\n\n",
        cfg.devices, cfg.tenants, cfg.per_device, BATCH_LEN
    );
    s += "| hub processes | changes | hub changes/s | push p50 ms | push p99 ms | push max ms | hub CPU us/change | COPY of the same rows, changes/s (rows) | hub / COPY | errors | load avg after |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in reps {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {:.3} | {} | {} |\n",
            r.procs,
            r.changes,
            fmt_num(r.rate),
            fmt_num(r.p50),
            fmt_num(r.p99),
            fmt_num(r.max),
            fmt_num(r.hub_cpu * 1e6 / r.changes as f64),
            fmt_num(r.copy_rate),
            r.copy_rows,
            r.rate / r.copy_rate,
            r.errors,
            r.load,
        );
    }
    s += "\n";
    s
}

async fn run_all(cfg: Config) {
    std::fs::create_dir_all(&cfg.dir).expect("bench dir");
    let tmp = tempfile::Builder::new().prefix("tillsync-sync-bench").tempdir_in(&cfg.dir).expect("temp dir");
    let root = tmp.path().to_path_buf();
    let started = Instant::now();
    let mut out = String::new();
    let sample = sale_data("S1-0000001", Uuid::nil(), now_ms()).to_string().len();
    println!("sync bench: {cfg:?}\nsimulated sale row: {sample} bytes of JSON; load average at start: {}\n", loadavg());
    if cfg.wants("ingest") {
        let mut reps = Vec::new();
        for rep in 0..cfg.reps {
            progress(&format!("ingest run {}/{}", rep + 1, cfg.reps));
            reps.push(ingest_rep(&cfg, &root, rep).await);
        }
        let s = report_ingest(&cfg, &reps);
        println!("{s}");
        out += &s;
    }
    if cfg.wants("pg-ingest") {
        let server = cfg.pg.clone().expect("--pg URL");
        let mut reps = Vec::new();
        for _ in 0..cfg.reps {
            for &procs in &cfg.hub_procs {
                progress(&format!("PostgreSQL ingest, {procs} hub process(es)"));
                reps.push(pg_ingest_rep(&cfg, &server, procs, &root).await);
            }
        }
        let s = report_pg_ingest(&cfg, &reps);
        println!("{s}");
        out += &s;
    }
    if cfg.wants("propagation") {
        progress(&format!("propagation: {} sales", cfg.sales));
        let p = propagation(&cfg, &root).await;
        let s = report_propagation(&cfg, &p);
        println!("{s}");
        out += &s;
    }
    if cfg.wants("pull") || cfg.wants("bootstrap") {
        pull_and_bootstrap(&cfg, &root, &mut out).await;
    }
    println!(
        "---- summary (markdown) ----\n\nSimulated sale row: {sample} bytes of JSON.\n\n{out}\nTotal bench time: {:.0} s; load average at the end: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--hub-child") {
        hub_child(&args[i + 1], args.get(i + 2).expect("--hub-child --data DIR | --database-url URL"));
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = config();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(run_all(cfg));
}
