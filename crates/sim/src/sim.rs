//! A seeded, deterministic simulation of the sync protocol with real parts:
//! the real SQLite hub ([`SqliteHub`], called through [`HubStorage`], no
//! HTTP) and real tills ([`Store`] files), joined by a simulated network.
//! One seed drives everything through [`IdGen`]: the actions, the faults,
//! the tills' clocks and the ids the tills and the hub draw.
//!
//! Each step picks one action:
//! - a till writes: a sale (recorded with its receipt), a refund, a price or
//!   name change, a stock count or receipt, adding or deleting a product that
//!   several tills may create offline, resolving a conflict;
//! - a till runs one sync round exactly as `tillsync_node::sync` does it
//!   (push pending changes lane by lane in priority order, `set_acked` from
//!   every lane answer, then pull every page with `apply_pulled`, and
//!   bootstrap again from a snapshot when the cursor expired);
//! - network faults on every request (push, pull, snapshot): lost before it
//!   reaches the hub; delivered with its response lost (the outcome is
//!   unknown to the till); duplicated (delivered twice, at once or later);
//!   delayed (delivered to the hub after later requests); its response
//!   delivered late, after later requests, and then processed by the till as
//!   the product processes a response (a late push answer moves
//!   `acked_through` wherever it says); partitions (a till cannot reach the
//!   hub for a while);
//! - a till crash-restarts (its store is dropped and reopened from its
//!   file; its in-flight responses are lost), possibly with its clock reset;
//! - bad clocks: tills with skew, far ahead (a day, a year) or behind;
//! - the hub crash-restarts (dropped and reopened from its folder), compacts
//!   its log, or is restored from a copy of its folder taken earlier;
//! - a till folder is cloned: a new till opens a copy of the files (same
//!   device id, same sequences) and writes too; once the hub stops the
//!   device as forked (a reused sequence, or a copy that says it wrote less
//!   than the hub holds), each copy is replaced by a successor enrolled anew
//!   that carries its changes (`export-pending --all`, enrol,
//!   `import-pending`, as an operator does);
//! - a new till enrols late and bootstraps from a snapshot.
//!
//! Then the network heals (in-flight requests and late responses arrive,
//! no more faults) and every till syncs round robin until nothing is
//! pending and a whole pass pulls nothing (bounded). The checks:
//! - every change a till made is on the hub under its (device, lane,
//!   sequence) with the same digest, or, when a clone took that sequence
//!   first, is still pending on its till (never silently acknowledged) and
//!   reaches the hub through its successor; nothing of a refused change is
//!   merged anywhere;
//! - invariant 1: every sale a till committed is once on the hub and on
//!   every converged till; the hub holds no other sales; no receipt twice;
//! - invariant 2: converged tills (retired copies excluded) have equal
//!   digests, equal to the hub's `store_digest`;
//! - invariant 3: heads, values, existence, conflicts and stock of the
//!   products touched and ledger row counts equal the reference [`Model`]
//!   fed with every accepted change and the hub's own seed changes.
//!
//! Replay a failing seed: `TILL_SIM_SEED=N cargo test -p tillsync-sim --test
//! simulation -- --nocapture` (add `TILL_SIM_TRACE=1` for the whole trace,
//! `TILL_SIM_FAULTS=-restore,-clone` to switch fault kinds off, or
//! `none,+compaction` to switch one on; a seed replays under the same
//! `TILL_SIM_FAULTS` only). `TILL_SIM_SEEDS=N` runs seeds 0..N.
//!
//! The hub's sample tenant, its store and three enrolled, bootstrapped tills
//! are built once per process ([`HubTemplate`]) and copied for every seed.
//! [`sync_round`] runs the same node round on a perfect network, for the
//! scenario tests in `tests/protocol_bugs.rs`.

use crate::Model;
use rusqlite::{Connection, OpenFlags};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use tillsync_core::domain::{Method, PaymentInput};
use tillsync_core::merge::Policy;
use tillsync_core::schema::tables;
use tillsync_core::wire::{PullResponse, PushRequest, PushResponse, Snapshot, WireChange};
use tillsync_core::{Change, ConflictStatus, Hlc, IdGen, Lane, Op, Schema, derived_id};
use tillsync_hub::{DeviceAuth, HubError, HubStorage, SqliteHub, SqliteTimers};
use tillsync_store::{Identity, ProductFields, SaleRequest, Store, StoreError};
use uuid::Uuid;

type R<T> = Result<T, String>;

trait Ctx<T> {
    fn ctx(self, what: &str) -> R<T>;
}

impl<T, E: fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> R<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Simulated time at the start (Nov 2023), in milliseconds.
const T0: u64 = 1_700_000_000_000;
const DAY_MS: i64 = 86_400_000;
/// SKUs of the sample catalogue the tills sell and change.
pub const SKUS: [&str; 4] = ["ESPRESSO", "CROISSANT", "WATER", "MUG"];
/// A SKU that tills add (possibly several offline) and delete.
pub const NEW_SKU: &str = "SIM-NEW";
/// Most passes of the heal phase before the run counts as not converging.
const HEAL_PASSES_MAX: usize = 8;
/// Push requests per round before the simulated node gives up (the product
/// allows 10 000; a healthy round needs a handful).
const PUSH_LOOPS_MAX: usize = 50;

/// Which kinds of fault a run injects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Lost requests and lost responses.
    pub loss: bool,
    /// Duplicated, delayed and late (reordered) messages.
    pub reorder: bool,
    pub partitions: bool,
    pub till_crash: bool,
    pub hub_crash: bool,
    pub hub_restore: bool,
    pub compaction: bool,
    pub clone: bool,
    pub bad_clocks: bool,
    pub late_join: bool,
}

impl Faults {
    const NAMES: [&'static str; 10] = [
        "loss",
        "reorder",
        "partitions",
        "till_crash",
        "hub_crash",
        "restore",
        "compaction",
        "clone",
        "bad_clocks",
        "late_join",
    ];

    /// Every fault on.
    pub fn all() -> Faults {
        Faults {
            loss: true,
            reorder: true,
            partitions: true,
            till_crash: true,
            hub_crash: true,
            hub_restore: true,
            compaction: true,
            clone: true,
            bad_clocks: true,
            late_join: true,
        }
    }

    fn flag(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "loss" => &mut self.loss,
            "reorder" => &mut self.reorder,
            "partitions" => &mut self.partitions,
            "till_crash" => &mut self.till_crash,
            "hub_crash" => &mut self.hub_crash,
            "restore" => &mut self.hub_restore,
            "compaction" => &mut self.compaction,
            "clone" => &mut self.clone,
            "bad_clocks" => &mut self.bad_clocks,
            "late_join" => &mut self.late_join,
            _ => return None,
        })
    }

    /// Parses `all`, `none`, and comma-separated `-name` / `+name` edits of
    /// it (`-restore,-clone`; `none,+loss`).
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut f = Faults::all();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => f = Faults::all(),
                "none" => {
                    for n in Faults::NAMES {
                        *f.flag(n).expect("known") = false;
                    }
                }
                _ => {
                    let (on, name) = match part.split_at(1) {
                        ("-", n) => (false, n),
                        ("+", n) => (true, n),
                        _ => (true, part),
                    };
                    let flag = f.flag(name).ok_or_else(|| {
                        format!("unknown fault '{name}': use all, none, or +/- one of {}", Faults::NAMES.join(", "))
                    })?;
                    *flag = on;
                }
            }
        }
        Ok(f)
    }
}

/// One run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub faults: Faults,
}

/// What a passing run did, for the summary.
#[derive(Clone, Debug, Default)]
pub struct SimSummary {
    pub steps: usize,
    pub tills: usize,
    pub sales: usize,
    pub heal_passes: usize,
    /// How often each action and fault happened.
    pub counts: BTreeMap<&'static str, u64>,
    /// Outcomes that are allowed but worth knowing (a clone that won a race).
    pub notes: Vec<String>,
}

/// A failing run: the seed, what broke, and the trace of actions.
#[derive(Clone, Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub message: String,
    pub trace: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed={}: {}", self.seed, self.message)?;
        writeln!(f, "replay: TILL_SIM_SEED={} cargo test -p tillsync-sim --test simulation -- --nocapture", self.seed)?;
        let full = std::env::var("TILL_SIM_TRACE").is_ok_and(|v| v == "1");
        let skip = if full { 0 } else { self.trace.len().saturating_sub(60) };
        if skip > 0 {
            writeln!(f, "trace (last 60 of {} lines; TILL_SIM_TRACE=1 for all):", self.trace.len())?;
        } else {
            writeln!(f, "trace:")?;
        }
        for l in &self.trace[skip..] {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

/// A folder for one run's files: on /dev/shm when there is one (fsync is
/// cheap there), else the default temporary folder.
pub fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return Ok(d);
    }
    tempfile::tempdir()
}

/// Copies a folder of SQLite files as a crash would leave them: the
/// database and its write-ahead log, not the shared-memory index (SQLite
/// rebuilds it from the log). Also how a till folder is cloned.
pub fn copy_dir(from: &Path, to: &Path) -> R<()> {
    std::fs::create_dir_all(to).ctx("create folder")?;
    for e in std::fs::read_dir(from).ctx("read folder")? {
        let e = e.ctx("read folder")?;
        let name = e.file_name();
        let target = to.join(&name);
        if e.file_type().ctx("file type")?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else if !name.to_string_lossy().ends_with("-shm") {
            std::fs::copy(e.path(), &target).ctx("copy file")?;
        }
    }
    Ok(())
}

/// A till of the template: enrolled and bootstrapped.
#[derive(Debug)]
struct TemplateTill {
    dir: PathBuf,
    auth: DeviceAuth,
    prefix: String,
}

/// A hub folder with a sample tenant, one store and three enrolled,
/// bootstrapped tills, made once and copied for every run (hashing the
/// sample staff PINs and bootstrapping take longer than a run).
#[derive(Debug)]
pub struct HubTemplate {
    _dir: tempfile::TempDir,
    path: PathBuf,
    tenant: Uuid,
    store: Uuid,
    tills: Vec<TemplateTill>,
    manager: Uuid,
    /// The hub's own changes (sample catalogue, opening stock).
    seed_ops: Vec<Op>,
    cursor: u64,
}

fn observer_auth(tenant: Uuid, store: Uuid) -> DeviceAuth {
    DeviceAuth { device_id: Uuid::from_u128(0x0b5e_7e70), tenant_id: tenant, store_id: store }
}

/// Pulls every log entry after `after` as the observer (a device that
/// wrote nothing): the ops and the final cursor.
fn pull_all(hub: &SqliteHub, auth: &DeviceAuth, mut after: u64, now: u64) -> R<(Vec<Op>, u64)> {
    let mut ops = vec![];
    loop {
        let page = hub.pull(auth, after, 1_000, now).ctx("pull the hub's own changes")?;
        for e in &page.entries {
            ops.extend(ops_of(&e.ops)?);
        }
        after = page.cursor;
        if !page.more {
            return Ok((ops, after));
        }
    }
}

/// Enrols a till on the hub and bootstraps it from the snapshot.
fn enrol_till(
    hub: &SqliteHub,
    tenant: Uuid,
    store: Uuid,
    dir: &Path,
    n: usize,
    now: u64,
    ids: IdGen,
) -> R<(Store, DeviceAuth, String, u64)> {
    let (code, _) = hub.create_enrol_code(tenant, store, now, 3_600_000).ctx("enrol code")?;
    let e = hub.enrol(&code, &format!("till {n}"), now).ctx("enrol")?;
    let identity = Identity {
        tenant_id: e.tenant_id,
        store_id: e.store_id,
        device_id: e.device_id,
        receipt_prefix: e.receipt_prefix.clone(),
        name: format!("till {n}"),
        mode: "hub".into(),
    };
    let mut s = Store::create(dir, identity, Schema::standard(), ids).ctx("create till")?;
    let auth = DeviceAuth { device_id: e.device_id, tenant_id: e.tenant_id, store_id: e.store_id };
    let snap = hub.snapshot(&auth).ctx("snapshot")?;
    s.apply_pulled_tagged(&ops_of(&snap.ops)?, snap.cursor, snap.cursor_tag.as_deref()).ctx("bootstrap")?;
    Ok((s, auth, e.receipt_prefix, snap.cursor))
}

impl HubTemplate {
    /// Builds the template deterministically (fixed seeds and times).
    pub fn new() -> R<HubTemplate> {
        let dir = scratch_dir().ctx("scratch folder")?;
        let path = dir.path().join("hub");
        let hub =
            SqliteHub::open_with(&path, IdGen::from_u64(0x7e3a_71a7e), SqliteTimers::NONE).ctx("open template hub")?;
        let (tenant, _) = hub.create_tenant("sim", true, T0).ctx("create tenant")?;
        let store = hub.create_store(tenant, "sim store", T0 + 1).ctx("create store")?;
        let (seed_ops, cursor) = pull_all(&hub, &observer_auth(tenant, store), 0, T0 + 2)?;
        let mut tills = vec![];
        let mut manager = Uuid::nil();
        for n in 1..=3 {
            let tdir = dir.path().join(format!("till{n}"));
            let (s, auth, prefix, _) =
                enrol_till(&hub, tenant, store, &tdir, n, T0 + 10 + n as u64, IdGen::from_u64(n as u64))?;
            if n == 1 {
                manager = s.find_staff("Alex").ctx("find the manager")?;
            }
            tills.push(TemplateTill { dir: tdir, auth, prefix });
        }
        Ok(HubTemplate { _dir: dir, path, tenant, store, tills, manager, seed_ops, cursor })
    }
}

/// Runs one seed.
pub fn run(cfg: &SimConfig, template: &HubTemplate) -> Result<SimSummary, SimFailure> {
    let dir = scratch_dir().map_err(|e| SimFailure {
        seed: cfg.seed,
        message: format!("scratch folder: {e}"),
        trace: vec![],
    })?;
    let mut sim = match Sim::new(cfg, template, dir.path()) {
        Ok(s) => s,
        Err(message) => return Err(SimFailure { seed: cfg.seed, message: format!("setup: {message}"), trace: vec![] }),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run_all()));
    let result = match result {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    };
    match result {
        Ok(()) => Ok(SimSummary {
            steps: sim.steps,
            tills: sim.tills.len(),
            sales: sim.sales.len(),
            heal_passes: sim.heal_passes,
            counts: sim.counts.clone(),
            notes: sim.notes.clone(),
        }),
        Err(message) => Err(SimFailure { seed: cfg.seed, message, trace: std::mem::take(&mut sim.trace) }),
    }
}

struct Rng(IdGen);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.u64() % n }
    }
    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// A request a till sends.
#[derive(Clone, Debug)]
enum Req {
    Push(PushRequest),
    Pull { after: u64, tag: Option<String>, limit: usize },
    Snapshot,
}

/// The hub's answer.
#[derive(Clone, Debug)]
enum Resp {
    Push(PushResponse),
    Pull(PullResponse),
    Snapshot(Snapshot),
    Err { code: String, message: String },
}

/// A request still in the network, delivered to the hub later.
struct InFlight {
    till: usize,
    /// The till's incarnation when it sent it (a restart drops the answer).
    life: u64,
    auth: DeviceAuth,
    req: Req,
    /// Whether the answer also finds its way back (late).
    answer: bool,
}

/// Per-request fault rates, per mille.
#[derive(Clone, Copy, Debug, Default)]
struct Net {
    lost: u64,
    answer_lost: u64,
    duplicate: u64,
    delayed: u64,
    late: u64,
}

struct Till {
    name: String,
    dir: PathBuf,
    store: Option<Store>,
    auth: DeviceAuth,
    offset_ms: i64,
    /// The till whose folder this one copied.
    clone_of: Option<usize>,
    partition_until: usize,
    /// Answers on their way back, processed late.
    late: VecDeque<Resp>,
    /// Restarts so far: answers to requests of an older life are dropped.
    life: u64,
    /// Lanes the hub refused with `sequence_reused`.
    reused: BTreeSet<Lane>,
    /// Whether it merged a snapshot during the run (late enrolment,
    /// expired cursor): it then lacks superseded writes.
    bootstrapped: bool,
    /// The hub stopped its device as forked (a copied folder): the till was
    /// replaced by a successor enrolled anew that carries its unsynced
    /// changes, as an operator does (`export-pending --all`, enrol, `import-pending`).
    /// A retired till no longer acts; its outbox is still checked.
    retired: bool,
}

impl Till {
    /// A till just enrolled and bootstrapped from the hub's snapshot.
    fn enrolled(name: String, dir: PathBuf, store: Store, auth: DeviceAuth, offset_ms: i64) -> Till {
        Till {
            name,
            dir,
            store: Some(store),
            auth,
            offset_ms,
            clone_of: None,
            partition_until: 0,
            late: VecDeque::new(),
            life: 0,
            reused: BTreeSet::new(),
            bootstrapped: true,
            retired: false,
        }
    }

    fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("open")
    }
    fn st(&self) -> &Store {
        self.store.as_ref().expect("open")
    }
}

#[derive(Clone, Debug)]
struct SaleRec {
    till: usize,
    sale_id: Uuid,
    receipt: String,
}

/// A till's changes: (lane, seq) -> (change, digest as stored).
type Outbox = BTreeMap<(Lane, u64), (Change, String)>;

/// Every change of every till, by what the hub did with it.
#[derive(Default)]
struct Classified {
    accepted: Vec<Change>,
    /// (till, change) refused, or held back behind a refused one.
    refused: Vec<(usize, Change)>,
    /// On no hub, yet acknowledged (or pending after the heal).
    lost: Vec<Change>,
    /// Originals whose sequences a clone took first.
    preempted: BTreeSet<usize>,
    /// Unsynced changes of retired tills, carried over to their successors.
    carried: Vec<Change>,
}

/// What one sync round did.
#[derive(Clone, Debug, Default)]
struct Round {
    failed: bool,
    /// Changes sent, not counting lanes refused as `sequence_reused`.
    pushed: u64,
    pulled: u64,
}

struct Sim {
    rng: Rng,
    faults: Faults,
    trace: Vec<String>,
    step: usize,
    steps: usize,
    now: u64,
    root: PathBuf,
    hub_dir: PathBuf,
    hub: Option<SqliteHub>,
    tenant: Uuid,
    store_id: Uuid,
    backups: Vec<PathBuf>,
    tills: Vec<Till>,
    max_tills: usize,
    in_flight: Vec<InFlight>,
    net: Net,
    policy: Policy,
    push_batch: usize,
    pull_page: usize,
    sales: Vec<SaleRec>,
    hub_seed_ops: Vec<Op>,
    manager: Uuid,
    counts: BTreeMap<&'static str, u64>,
    notes: Vec<String>,
    heal_passes: usize,
    /// Devices the hub has answered `sequence_reused` to.
    detected: BTreeSet<Uuid>,
    /// (device, lane, seq) stored from a clone group: which till stored it
    /// and whether the hub had already detected the clone then.
    stored_by: BTreeMap<(Uuid, Lane, u64), (usize, bool)>,
    /// Devices the hub stopped as forked: their tills get successors.
    forked: BTreeSet<Uuid>,
    next_dir: usize,
}

fn lane_of(s: &str) -> R<Lane> {
    Lane::parse(s).ok_or_else(|| format!("unknown lane '{s}'"))
}

/// Whether a store error is a refusal a cashier sees (the action just
/// does not happen), not a fault of the product.
fn refusal(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::UnknownSku(_)
            | StoreError::ProductExists(_)
            | StoreError::NotFound(_)
            | StoreError::Invalid(_)
            | StoreError::Sale(_)
    )
}

fn ops_of(wire: &[tillsync_core::wire::WireOp]) -> R<Vec<Op>> {
    wire.iter().map(|w| Op::try_from(w).ctx("malformed op from the hub")).collect()
}

impl Sim {
    fn new(cfg: &SimConfig, template: &HubTemplate, root: &Path) -> R<Sim> {
        let mut rng = Rng(IdGen::from_u64(cfg.seed));
        let faults = cfg.faults.clone();
        let hub_dir = root.join("hub");
        copy_dir(&template.path, &hub_dir)?;
        let hub = SqliteHub::open_with(&hub_dir, IdGen::from_u64(rng.u64()), SqliteTimers::NONE).ctx("open hub")?;
        let level = rng.below(4);
        let net = |lost, other| Net { lost, answer_lost: lost, duplicate: other, delayed: other, late: other };
        let mut netp = match level {
            0 => Net::default(),
            1 => net(20, 20),
            2 => net(60, 40),
            _ => net(120, 60),
        };
        if !faults.loss {
            netp.lost = 0;
            netp.answer_lost = 0;
        }
        if !faults.reorder {
            netp.duplicate = 0;
            netp.delayed = 0;
            netp.late = 0;
        }
        let policy = match rng.below(4) {
            0 | 1 => Policy::Lww,
            2 => Policy::First,
            _ => Policy::Manual,
        };
        let mut sim = Sim {
            faults,
            trace: vec![],
            step: 0,
            steps: 30 + rng.index(31),
            now: T0 + 60_000,
            root: root.to_path_buf(),
            hub_dir,
            hub: Some(hub),
            tenant: template.tenant,
            store_id: template.store,
            backups: vec![],
            tills: vec![],
            max_tills: 3,
            in_flight: vec![],
            net: netp,
            policy,
            push_batch: if rng.chance(700) { 200 } else { 1 + rng.index(4) },
            pull_page: if rng.chance(700) { 500 } else { 1 + rng.index(5) },
            sales: vec![],
            hub_seed_ops: template.seed_ops.clone(),
            manager: template.manager,
            counts: BTreeMap::new(),
            notes: vec![],
            heal_passes: 0,
            detected: BTreeSet::new(),
            stored_by: BTreeMap::new(),
            forked: BTreeSet::new(),
            next_dir: 0,
            rng,
        };
        if sim.faults.late_join {
            sim.max_tills = 4;
        }
        sim.log(format!(
            "setup: steps={} net={:?} policy={} push_batch={} pull_page={} faults={:?}",
            sim.steps,
            sim.net,
            policy.as_str(),
            sim.push_batch,
            sim.pull_page,
            sim.faults
        ));
        if policy != Policy::Lww || sim.rng.chance(300) {
            sim.hub().set_policy(sim.tenant, tables::PRODUCTS, policy.as_str(), sim.now).ctx("set policy")?;
        }
        // The hub's own changes since the template (the policy).
        let (more, _) = pull_all(sim.hub(), &sim.observer_auth(), template.cursor, sim.now)?;
        sim.hub_seed_ops.extend(more);
        for tt in &template.tills {
            let dir = sim.fresh_dir("till");
            copy_dir(&tt.dir, &dir)?;
            let store = Store::open(&dir, Schema::standard(), IdGen::from_u64(sim.rng.u64())).ctx("open till")?;
            let offset_ms = sim.draw_offset();
            sim.log(format!("{} device={} offset={offset_ms}ms", tt.prefix, tt.auth.device_id));
            sim.tills.push(Till {
                name: tt.prefix.clone(),
                dir,
                store: Some(store),
                auth: tt.auth.clone(),
                offset_ms,
                clone_of: None,
                partition_until: 0,
                late: VecDeque::new(),
                life: 0,
                reused: BTreeSet::new(),
                bootstrapped: false,
                retired: false,
            });
        }
        Ok(sim)
    }

    fn hub(&self) -> &SqliteHub {
        self.hub.as_ref().expect("hub open")
    }

    fn observer_auth(&self) -> DeviceAuth {
        observer_auth(self.tenant, self.store_id)
    }

    fn log(&mut self, s: String) {
        self.trace.push(format!("[{:>3}] {s}", self.step));
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn fresh_dir(&mut self, what: &str) -> PathBuf {
        self.next_dir += 1;
        self.root.join(format!("{what}{}", self.next_dir))
    }

    fn draw_offset(&mut self) -> i64 {
        if self.faults.bad_clocks {
            match self.rng.below(10) {
                0 => return 365 * DAY_MS + self.rng.below(1000) as i64,
                1 => return DAY_MS,
                2 => return -3_600_000,
                _ => {}
            }
        }
        self.rng.below(4_001) as i64 - 2_000
    }

    fn till_now(&self, t: usize) -> u64 {
        (self.now as i64 + self.tills[t].offset_ms).max(1) as u64
    }

    /// Enrols a new till and bootstraps it from the hub's snapshot.
    fn enrol(&mut self) -> R<usize> {
        let n = self.tills.len() + 1;
        let dir = self.fresh_dir("till");
        let ids = IdGen::from_u64(self.rng.u64());
        let (store, auth, prefix, cursor) = enrol_till(self.hub(), self.tenant, self.store_id, &dir, n, self.now, ids)?;
        let offset_ms = self.draw_offset();
        self.log(format!("enrol {prefix} device={} offset={offset_ms}ms cursor={cursor}", auth.device_id));
        self.tills.push(Till::enrolled(prefix, dir, store, auth, offset_ms));
        Ok(self.tills.len() - 1)
    }

    fn run_all(&mut self) -> R<()> {
        for step in 0..self.steps {
            self.step = step + 1;
            self.now += 1 + self.rng.below(3_000);
            self.act()?;
        }
        self.step = self.steps + 1;
        self.heal()?;
        self.check()
    }

    /// A till that still acts (not retired).
    fn any_till(&mut self) -> usize {
        let active: Vec<usize> = (0..self.tills.len()).filter(|t| !self.tills[*t].retired).collect();
        active[self.rng.index(active.len())]
    }

    /// Replaces every till whose device the hub stopped as forked.
    fn replace_forked(&mut self) -> R<()> {
        for t in 0..self.tills.len() {
            if !self.tills[t].retired && self.forked.contains(&self.tills[t].auth.device_id) {
                self.successor(t)?;
            }
        }
        Ok(())
    }

    /// What an operator does for a till the hub stopped as forked: save its
    /// unsynced changes, enrol a new device in a new folder (bootstrapped
    /// from the snapshot) and import them there; the old folder is retired.
    fn successor(&mut self, t: usize) -> R<()> {
        let pending = self.tills[t].st().export_changes(true).ctx("export changes")?;
        let n = self.tills.len() + 1;
        let dir = self.fresh_dir("successor");
        let ids = IdGen::from_u64(self.rng.u64());
        let (mut store, auth, prefix, cursor) =
            enrol_till(self.hub(), self.tenant, self.store_id, &dir, n, self.now, ids)?;
        let now = self.till_now(t);
        let imported = store.import_pending(now, &pending).ctx("import pending")?;
        let old = self.tills[t].name.clone();
        self.tills[t].retired = true;
        self.tills[t].late.clear();
        let offset_ms = self.tills[t].offset_ms;
        self.count("successor");
        self.log(format!(
            "{old} was stopped as forked: successor {prefix} device={} cursor={cursor} carries {} pending change(s): {imported:?}",
            auth.device_id,
            pending.changes.len()
        ));
        self.tills.push(Till::enrolled(prefix, dir, store, auth, offset_ms));
        Ok(())
    }

    fn act(&mut self) -> R<()> {
        self.replace_forked()?;
        let roll = self.rng.below(1000);
        let t = self.any_till();
        match roll {
            0..280 => self.sell(t),
            280..310 => self.refund(t),
            310..390 => self.change_product(t),
            390..420 => self.count_stock(t),
            420..440 => self.receive_stock(t),
            440..460 => self.new_product(t),
            460..490 => self.resolve(t),
            490..735 => self.sync(t).map(|_| ()),
            735..785 if self.faults.reorder || self.faults.loss => self.network_tick(),
            785..815 if self.faults.partitions => {
                let len = 1 + self.rng.index(10);
                self.tills[t].partition_until = self.step + len;
                self.count("partition");
                self.log(format!("partition {} for {len} steps", self.tills[t].name));
                Ok(())
            }
            815..845 if self.faults.till_crash => self.crash_till(t),
            845..865 if self.faults.hub_crash => self.crash_hub(),
            865..885 if self.faults.hub_restore => self.backup_hub(),
            885..900 if self.faults.hub_restore => self.restore_hub(),
            900..915 if self.faults.clone => self.clone_till(t),
            915..935 if self.faults.compaction => {
                let keep = self.rng.below(20);
                let h = self.hub().compact(self.tenant, keep).ctx("compact")?;
                self.count("compaction");
                self.log(format!("hub compacts, keeping {keep}: horizon {h}"));
                Ok(())
            }
            935..950 if self.faults.late_join && self.tills.len() < self.max_tills => {
                self.count("late_join");
                self.enrol().map(|_| ())
            }
            950..970 if self.faults.bad_clocks => {
                let o = self.draw_offset();
                self.tills[t].offset_ms = o;
                self.count("clock_jump");
                self.log(format!("{} clock now off by {o}ms", self.tills[t].name));
                Ok(())
            }
            _ => self.sync(t).map(|_| ()),
        }
    }

    // ---- writes ----

    fn sell(&mut self, t: usize) -> R<()> {
        let n = 1 + self.rng.index(2);
        let mut items: Vec<(String, i64)> = vec![];
        for _ in 0..n {
            let sku = if self.rng.chance(100) { NEW_SKU } else { SKUS[self.rng.index(SKUS.len())] };
            if items.iter().all(|(s, _)| s != sku) {
                items.push((sku.to_string(), 1 + self.rng.below(3) as i64));
            }
        }
        let method = if self.rng.chance(600) { Method::Cash } else { Method::Card };
        let req = SaleRequest {
            items: items.clone(),
            payments: vec![PaymentInput { method, amount_minor: None, brand: None, last4: None }],
            ..Default::default()
        };
        let now = self.till_now(t);
        match self.tills[t].store().sell(now, &req) {
            Ok(o) => {
                self.count("sale");
                self.log(format!("{} sells {items:?}: {} {}", self.tills[t].name, o.receipt, o.sale_id));
                self.sales.push(SaleRec { till: t, sale_id: o.sale_id, receipt: o.receipt });
                Ok(())
            }
            Err(e) if refusal(&e) => {
                self.log(format!("{} cannot sell {items:?}: {e}", self.tills[t].name));
                Ok(())
            }
            Err(e) => Err(format!("{} sell: {e}", self.tills[t].name)),
        }
    }

    fn refund(&mut self, t: usize) -> R<()> {
        let sales = self.tills[t].st().sales(20).ctx("sales")?;
        if sales.is_empty() {
            return Ok(());
        }
        let s = &sales[self.rng.index(sales.len())];
        let receipt = s.receipt.clone();
        let (_, data) = self.tills[t].st().sale_by_receipt(&receipt).ctx("sale by receipt")?;
        let Some(sku) = data["lines"][0]["sku"].as_str().map(str::to_string) else {
            return Ok(());
        };
        let now = self.till_now(t);
        let manager = self.manager;
        match self.tills[t].store().refund(now, &receipt, &[(sku.clone(), 1)], manager, None) {
            Ok(r) => {
                self.count("refund");
                self.log(format!("{} refunds 1 {sku} of {receipt}: {}", self.tills[t].name, r.refund_id));
                Ok(())
            }
            Err(e) if refusal(&e) => {
                self.log(format!("{} cannot refund {receipt}: {e}", self.tills[t].name));
                Ok(())
            }
            Err(e) => Err(format!("{} refund: {e}", self.tills[t].name)),
        }
    }

    fn change_product(&mut self, t: usize) -> R<()> {
        // Mostly two SKUs, so concurrent writes (conflicts) are common.
        let sku = match self.rng.below(10) {
            0 => NEW_SKU,
            1 | 2 => SKUS[self.rng.index(SKUS.len())],
            3..=6 => "MUG",
            _ => "ESPRESSO",
        };
        // A small set of values, so equal concurrent writes happen too.
        let fields = if self.rng.chance(800) {
            ProductFields { price_minor: Some(100 + 50 * self.rng.below(4) as i64), ..Default::default() }
        } else {
            ProductFields { name: Some(format!("{sku} v{}", self.rng.below(3))), ..Default::default() }
        };
        let now = self.till_now(t);
        match self.tills[t].store().update_product(now, sku, &fields) {
            Ok(()) => {
                self.count("product_change");
                self.log(format!(
                    "{} sets {sku} price={:?} name={:?}",
                    self.tills[t].name, fields.price_minor, fields.name
                ));
                Ok(())
            }
            Err(e) if refusal(&e) => Ok(()),
            Err(e) => Err(format!("{} update product: {e}", self.tills[t].name)),
        }
    }

    fn new_product(&mut self, t: usize) -> R<()> {
        let now = self.till_now(t);
        let name = self.tills[t].name.clone();
        let exists = self.tills[t].st().product(NEW_SKU).is_ok();
        let r = if exists && self.rng.chance(500) {
            self.tills[t].store().delete_product(now, NEW_SKU).map(|_| "deletes")
        } else {
            let f = ProductFields {
                name: Some("Sim product".into()),
                price_minor: Some(100 + 50 * self.rng.below(3) as i64),
                ..Default::default()
            };
            self.tills[t].store().add_product(now, NEW_SKU, &f).map(|_| "adds")
        };
        match r {
            Ok(what) => {
                self.count("product_add_delete");
                self.log(format!("{name} {what} {NEW_SKU}"));
                Ok(())
            }
            Err(e) if refusal(&e) => Ok(()),
            Err(e) => Err(format!("{name} add/delete product: {e}")),
        }
    }

    fn count_stock(&mut self, t: usize) -> R<()> {
        let sku = SKUS[self.rng.index(SKUS.len())];
        let qty = self.rng.below(30) as i64;
        let now = self.till_now(t);
        match self.tills[t].store().count_stock(now, sku, qty) {
            Ok(c) => {
                self.count("stock_count");
                self.log(format!("{} counts {sku}={qty}: {}", self.tills[t].name, c.count_id));
                Ok(())
            }
            Err(e) if refusal(&e) => Ok(()),
            Err(e) => Err(format!("{} count: {e}", self.tills[t].name)),
        }
    }

    fn receive_stock(&mut self, t: usize) -> R<()> {
        let sku = SKUS[self.rng.index(SKUS.len())];
        let qty = 1 + self.rng.below(10) as i64;
        let now = self.till_now(t);
        match self.tills[t].store().receive_stock(now, sku, qty) {
            Ok(_) => {
                self.count("stock_receive");
                self.log(format!("{} receives {qty} {sku}", self.tills[t].name));
                Ok(())
            }
            Err(e) if refusal(&e) => Ok(()),
            Err(e) => Err(format!("{} receive: {e}", self.tills[t].name)),
        }
    }

    fn resolve(&mut self, first: usize) -> R<()> {
        // The first till (from a random one) that shows a current conflict.
        let mut found = None;
        for i in 0..self.tills.len() {
            let t = (first + i) % self.tills.len();
            if self.tills[t].retired {
                continue;
            }
            let open: Vec<_> = self.tills[t]
                .st()
                .conflicts()
                .ctx("conflicts")?
                .into_iter()
                .filter(|c| c.status != ConflictStatus::Resolved && c.table == tables::PRODUCTS)
                .collect();
            if !open.is_empty() {
                found = Some((t, open));
                break;
            }
        }
        let Some((t, open)) = found else {
            return Ok(());
        };
        let c = &open[self.rng.index(open.len())];
        let keep = if self.rng.chance(500) { "local" } else { "remote" };
        let now = self.till_now(t);
        let id = c.id.clone();
        match self.tills[t].store().resolve_conflict(now, &id, keep) {
            Ok(v) => {
                self.count("resolve");
                self.log(format!("{} resolves {} keeping {keep}: {v}", self.tills[t].name, &id[..12.min(id.len())]));
                Ok(())
            }
            Err(e) if refusal(&e) => Ok(()),
            Err(e) => Err(format!("{} resolve: {e}", self.tills[t].name)),
        }
    }

    // ---- faults on nodes ----

    fn crash_till(&mut self, t: usize) -> R<()> {
        let ids = IdGen::from_u64(self.rng.u64());
        let reset_clock = self.faults.bad_clocks && self.rng.chance(200);
        let till = &mut self.tills[t];
        drop(till.store.take());
        till.store = Some(Store::open(&till.dir, Schema::standard(), ids).ctx("reopen till")?);
        till.late.clear();
        till.life += 1;
        if reset_clock {
            // The real-time clock lost power: the wall clock reads 1970.
            till.offset_ms = -(self.now as i64) + 1_000_000;
        }
        let name = till.name.clone();
        self.count("till_crash");
        self.log(format!("{name} crash-restarts{}", if reset_clock { " with its clock reset to 1970" } else { "" }));
        Ok(())
    }

    fn reopen_hub(&mut self) -> R<()> {
        self.hub = Some(
            SqliteHub::open_with(&self.hub_dir, IdGen::from_u64(self.rng.u64()), SqliteTimers::NONE)
                .ctx("reopen hub")?,
        );
        Ok(())
    }

    fn crash_hub(&mut self) -> R<()> {
        // The files as a kill -9 leaves them: copy the database and its log
        // before the clean close, and reopen from the copy.
        let image = self.fresh_dir("hubcrash");
        copy_dir(&self.hub_dir, &image)?;
        drop(self.hub.take());
        std::fs::remove_dir_all(&self.hub_dir).ctx("remove hub folder")?;
        std::fs::rename(&image, &self.hub_dir).ctx("move hub folder")?;
        self.reopen_hub()?;
        self.count("hub_crash");
        self.log("hub crash-restarts".into());
        Ok(())
    }

    fn backup_hub(&mut self) -> R<()> {
        let to = self.fresh_dir("hubbackup");
        copy_dir(&self.hub_dir, &to)?;
        self.backups.push(to);
        self.count("hub_backup");
        self.log(format!("hub backed up (backup {})", self.backups.len()));
        Ok(())
    }

    fn restore_hub(&mut self) -> R<()> {
        if self.backups.is_empty() {
            return Ok(());
        }
        let i = self.rng.index(self.backups.len());
        drop(self.hub.take());
        std::fs::remove_dir_all(&self.hub_dir).ctx("remove hub folder")?;
        copy_dir(&self.backups[i], &self.hub_dir)?;
        self.reopen_hub()?;
        self.count("hub_restore");
        self.log(format!("hub restored from backup {}", i + 1));
        Ok(())
    }

    fn clone_till(&mut self, t: usize) -> R<()> {
        if self.tills.iter().any(|x| x.clone_of.is_some()) || self.tills[t].clone_of.is_some() {
            return Ok(());
        }
        let dir = self.fresh_dir("clone");
        copy_dir(&self.tills[t].dir, &dir)?;
        let store = Store::open(&dir, Schema::standard(), IdGen::from_u64(self.rng.u64())).ctx("open clone")?;
        let offset_ms = self.draw_offset();
        let name = format!("{}c", self.tills[t].name);
        self.tills.push(Till {
            name: name.clone(),
            dir,
            store: Some(store),
            auth: self.tills[t].auth.clone(),
            offset_ms,
            clone_of: Some(t),
            partition_until: 0,
            late: VecDeque::new(),
            life: 0,
            reused: BTreeSet::new(),
            bootstrapped: self.tills[t].bootstrapped,
            retired: false,
        });
        self.count("clone");
        self.log(format!("{} folder cloned as {name}", self.tills[t].name));
        Ok(())
    }

    // ---- network ----

    fn clone_group(&self, device: Uuid) -> bool {
        self.tills.iter().filter(|t| t.auth.device_id == device).count() > 1
    }

    fn hub_db(&self) -> PathBuf {
        self.hub_dir.join("tenants").join(self.tenant.to_string()).join(tillsync_store::DB_FILE)
    }

    /// The hub's stored digests: (device, lane, seq) -> digest.
    fn hub_seqs(&self) -> R<BTreeMap<(Uuid, Lane, u64), String>> {
        let conn = Connection::open_with_flags(self.hub_db(), OpenFlags::SQLITE_OPEN_READ_ONLY).ctx("open hub db")?;
        let mut st = conn.prepare("SELECT device, lane, seq, digest FROM hub_seqs").ctx("hub_seqs")?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
            })
            .ctx("hub_seqs")?;
        let mut out = BTreeMap::new();
        for r in rows {
            let (d, l, s, g) = r.ctx("hub_seqs row")?;
            out.insert((Uuid::parse_str(&d).ctx("device id")?, lane_of(&l)?, s as u64), g);
        }
        Ok(out)
    }

    /// The hub handles a request now.
    fn deliver(&mut self, t: usize, auth: &DeviceAuth, req: &Req) -> R<Resp> {
        let now = self.now;
        let watch = matches!(req, Req::Push(_)) && self.clone_group(auth.device_id);
        let before = if watch { self.hub_seqs()? } else { BTreeMap::new() };
        let r = match req {
            Req::Push(p) => self.hub().push(auth, p, now).map(|(r, _)| Resp::Push(r)),
            Req::Pull { after, tag, limit } => {
                self.hub().pull_tagged(auth, *after, tag.as_deref(), *limit, now).map(Resp::Pull)
            }
            Req::Snapshot => self.hub().snapshot(auth).map(Resp::Snapshot),
        };
        let resp = match r {
            Ok(r) => r,
            Err(e @ HubError::Internal(_)) => return Err(format!("the hub failed: {e:?}")),
            Err(e) => Resp::Err { code: e.code().to_string(), message: e.to_string() },
        };
        if watch {
            let detected = self.detected.contains(&auth.device_id);
            for ((d, l, s), _) in self.hub_seqs()? {
                if d == auth.device_id && !before.contains_key(&(d, l, s)) {
                    self.stored_by.insert((d, l, s), (t, detected));
                }
            }
        }
        if let Resp::Push(p) = &resp
            && p.lanes.values().any(|a| a.error.as_ref().is_some_and(|e| e.code == "sequence_reused"))
        {
            self.detected.insert(auth.device_id);
            // The hub stops the device in every lane after this answer.
            self.forked.insert(auth.device_id);
        }
        if let Resp::Err { code, .. } = &resp
            && code == "forked"
        {
            self.forked.insert(auth.device_id);
        }
        Ok(resp)
    }

    /// Sends a request over the faulty network; `None` when the till gets
    /// no answer (lost, delayed, answer lost or late, partition).
    fn call(&mut self, t: usize, req: Req) -> R<Option<Resp>> {
        let auth = self.tills[t].auth.clone();
        let kind = match &req {
            Req::Push(_) => "push",
            Req::Pull { .. } => "pull",
            Req::Snapshot => "snapshot",
        };
        let name = self.tills[t].name.clone();
        if self.tills[t].partition_until >= self.step {
            self.count("net_partitioned");
            self.log(format!("  {name} {kind}: partitioned"));
            return Ok(None);
        }
        let n = self.net;
        let mut roll = self.rng.below(1000);
        let mut hit = |p: u64| {
            if roll < p {
                true
            } else {
                roll -= p;
                false
            }
        };
        if hit(n.lost) {
            self.count("net_lost");
            self.log(format!("  {name} {kind}: request lost"));
            return Ok(None);
        }
        if hit(n.answer_lost) {
            let r = self.deliver(t, &auth, &req)?;
            self.count("net_answer_lost");
            self.log(format!("  {name} {kind}: delivered, answer lost ({})", brief(&r)));
            return Ok(None);
        }
        if hit(n.duplicate) {
            self.count("net_duplicate");
            let r = self.deliver(t, &auth, &req)?;
            if self.rng.chance(500) {
                let r2 = self.deliver(t, &auth, &req)?;
                self.log(format!("  {name} {kind}: delivered twice ({} / {})", brief(&r), brief(&r2)));
                return Ok(Some(if self.rng.chance(500) { r } else { r2 }));
            }
            self.log(format!("  {name} {kind}: delivered, and a copy stays in the network ({})", brief(&r)));
            let life = self.tills[t].life;
            self.in_flight.push(InFlight { till: t, life, auth, req, answer: false });
            return Ok(Some(r));
        }
        if hit(n.delayed) {
            self.count("net_delayed");
            let answer = self.rng.chance(500);
            self.log(format!("  {name} {kind}: delayed in the network"));
            let life = self.tills[t].life;
            self.in_flight.push(InFlight { till: t, life, auth, req, answer });
            return Ok(None);
        }
        if hit(n.late) {
            self.count("net_late_answer");
            let r = self.deliver(t, &auth, &req)?;
            self.log(format!("  {name} {kind}: delivered, answer late ({})", brief(&r)));
            self.tills[t].late.push_back(r);
            return Ok(None);
        }
        let r = self.deliver(t, &auth, &req)?;
        self.log(format!("  {name} {kind}: {}", brief(&r)));
        Ok(Some(r))
    }

    /// Delivers some of what is still in the network.
    fn network_tick(&mut self) -> R<()> {
        self.log("network: messages in flight arrive".into());
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.rng.chance(500) {
                let m = self.in_flight.remove(i);
                self.deliver_in_flight(m)?;
            } else {
                i += 1;
            }
        }
        for t in 0..self.tills.len() {
            let n = self.tills[t].late.len();
            for _ in 0..n {
                if self.rng.chance(400) {
                    self.process_late(t)?;
                }
            }
        }
        Ok(())
    }

    fn deliver_in_flight(&mut self, m: InFlight) -> R<()> {
        let r = self.deliver(m.till, &m.auth, &m.req)?;
        let name = self.tills[m.till].name.clone();
        self.count("net_delivered_late");
        let back = m.answer && self.tills[m.till].life == m.life;
        self.log(format!(
            "  {name}'s delayed {} reaches the hub ({}){}",
            match m.req {
                Req::Push(_) => "push",
                Req::Pull { .. } => "pull",
                Req::Snapshot => "snapshot",
            },
            brief(&r),
            if back { ", answer on its way back" } else { "" }
        ));
        if back {
            self.tills[m.till].late.push_back(r);
        }
        Ok(())
    }

    /// The till processes its oldest late answer as it processes any answer.
    fn process_late(&mut self, t: usize) -> R<()> {
        if self.tills[t].retired {
            self.tills[t].late.clear();
        }
        let Some(r) = self.tills[t].late.pop_front() else {
            return Ok(());
        };
        self.count("late_answer_processed");
        let name = self.tills[t].name.clone();
        self.log(format!("  {name} processes a late answer: {}", brief(&r)));
        match r {
            Resp::Push(p) => {
                let now = self.till_now(t);
                let mut errors = vec![];
                apply_push_answer(self.tills[t].store(), &p, now, &mut vec![], &mut errors, &BTreeMap::new())
                    .map_err(|e| format!("{name}: {e}"))?;
                self.note_lane_errors(t, &errors);
            }
            Resp::Pull(page) => {
                let mut ops = vec![];
                for e in &page.entries {
                    ops.extend(ops_of(&e.ops)?);
                }
                self.tills[t]
                    .store()
                    .apply_pulled_tagged(&ops, page.cursor, page.cursor_tag.as_deref())
                    .ctx("apply a late page")?;
            }
            Resp::Snapshot(s) => {
                let ops = ops_of(&s.ops)?;
                self.tills[t]
                    .store()
                    .apply_pulled_tagged(&ops, s.cursor, s.cursor_tag.as_deref())
                    .ctx("apply a late snapshot")?;
                self.tills[t].bootstrapped = true;
            }
            Resp::Err { .. } => {}
        }
        Ok(())
    }

    /// Records what a round or a late answer learnt about refused lanes.
    fn note_lane_errors(&mut self, t: usize, errors: &[(Lane, String)]) {
        for (lane, code) in errors {
            if code == "sequence_reused" {
                self.tills[t].reused.insert(*lane);
                self.count("sequence_reused");
            }
        }
    }

    /// One sync round of till `t` over the faulty network, as the node runs it.
    fn sync(&mut self, t: usize) -> R<Round> {
        self.count("sync_round");
        let name = self.tills[t].name.clone();
        self.log(format!("{name} syncs"));
        // Answers that were late may arrive before this round's.
        while !self.tills[t].late.is_empty() && self.rng.chance(500) {
            self.process_late(t)?;
        }
        let now = self.till_now(t);
        let (batch, page) = (self.push_batch, self.pull_page);
        let reused = self.tills[t].reused.clone();
        let mut store = self.tills[t].store.take().expect("open");
        let out = node_round(&mut store, &mut SimNet { sim: self, t }, now, batch, page, &reused);
        self.tills[t].store = Some(store);
        let out = out.map_err(|e| format!("{name}: {e}"))?;
        self.note_lane_errors(t, &out.errors);
        if out.rebootstrapped {
            self.tills[t].bootstrapped = true;
            self.count("rebootstrap");
        }
        self.replace_forked()?;
        Ok(out.round)
    }

    // ---- heal and check ----

    fn heal(&mut self) -> R<()> {
        self.log("heal: the network settles".into());
        while !self.in_flight.is_empty() {
            let i = self.rng.index(self.in_flight.len());
            let m = self.in_flight.remove(i);
            self.deliver_in_flight(m)?;
        }
        for t in 0..self.tills.len() {
            while !self.tills[t].late.is_empty() {
                self.process_late(t)?;
            }
            self.tills[t].partition_until = 0;
        }
        self.net = Net::default();
        for pass in 1..=HEAL_PASSES_MAX {
            self.heal_passes = pass;
            self.log(format!("heal pass {pass}"));
            let mut moved = 0;
            self.replace_forked()?;
            for t in 0..self.tills.len() {
                if self.tills[t].retired {
                    continue;
                }
                let r = self.sync(t)?;
                // A till stopped as forked in this round has a successor now.
                if r.failed && !self.tills[t].retired {
                    return Err(format!("{}: a round failed on a healed network", self.tills[t].name));
                }
                // Changes a blocked lane keeps offering do not count.
                moved += r.pulled + r.pushed;
            }
            let mut pending = 0;
            for t in self.tills.iter().filter(|t| !t.retired) {
                for (lane, n) in t.st().pending().ctx("pending")? {
                    if !t.reused.contains(&lane_of(&lane)?) {
                        pending += n;
                    }
                }
            }
            if moved == 0 && pending == 0 {
                return Ok(());
            }
        }
        let mut state = vec![];
        for t in &self.tills {
            state.push(format!("{} pending {:?}", t.name, t.st().pending().ctx("pending")?));
        }
        Err(format!("not stable after {HEAL_PASSES_MAX} heal passes: {}", state.join("; ")))
    }

    /// Every till's outbox: (lane, seq) -> (change, digest as stored).
    fn outboxes(&self) -> R<Vec<Outbox>> {
        let mut out = vec![];
        for till in &self.tills {
            let mut digests: BTreeMap<(Lane, u64), String> = BTreeMap::new();
            let conn = till.st().connection();
            let mut st = conn.prepare("SELECT lane, seq, digest FROM outbox").ctx("outbox")?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))
                .ctx("outbox")?;
            for r in rows {
                let (l, s, d) = r.ctx("outbox row")?;
                digests.insert((lane_of(&l)?, s as u64), d);
            }
            let mut m = BTreeMap::new();
            for lane in Lane::ALL {
                for c in till.st().outbox(lane, 0, usize::MAX >> 1).ctx("outbox")? {
                    let d = digests.remove(&(lane, c.seq)).ok_or("an outbox change without digest")?;
                    m.insert((lane, c.seq), (c, d));
                }
            }
            out.push(m);
        }
        Ok(out)
    }

    /// What the hub did with every change of every till: stored (accepted),
    /// refused for another copy's change under its sequence (or held back
    /// behind such a one), or lost.
    fn classify(&mut self, problems: &mut Vec<String>) -> R<Classified> {
        let hub_seqs = self.hub_seqs()?;
        let outboxes = self.outboxes()?;
        let mut k = Classified::default();
        for (t, till) in self.tills.iter().enumerate() {
            let dev = till.auth.device_id;
            for ((lane, seq), (c, mine)) in &outboxes[t] {
                let (lane, seq) = (*lane, *seq);
                let acked = till.st().acked(lane).ctx("acked")?;
                let receipts = receipts_in(c);
                match hub_seqs.get(&(dev, lane, seq)) {
                    Some(h) if h == mine => k.accepted.push(c.clone()),
                    // Not on the hub as this till made it and not
                    // acknowledged: exported and carried by the successor.
                    _ if till.retired => k.carried.push(c.clone()),
                    Some(h) => {
                        // Which other copy of the device made what the hub holds.
                        let winner = (0..self.tills.len()).find(|o| {
                            *o != t
                                && self.tills[*o].auth.device_id == dev
                                && outboxes[*o].get(&(lane, seq)).is_some_and(|(_, d)| d == h)
                        });
                        match winner {
                            None => problems.push(format!(
                                "the hub holds a change under {} {lane} #{seq} that no till made",
                                till.name
                            )),
                            Some(w) if till.clone_of.is_none() => {
                                k.preempted.insert(t);
                                let (by, after_detect) =
                                    self.stored_by.get(&(dev, lane, seq)).copied().unwrap_or((w, false));
                                if after_detect {
                                    problems.push(format!(
                                        "clone not stopped: the hub stored {}'s {lane} #{seq} after it had already answered sequence_reused for this device, so the original {}'s own change #{seq} {receipts:?} is refused",
                                        self.tills[by].name, till.name
                                    ));
                                } else {
                                    self.notes.push(format!(
                                        "{} pushed {lane} #{seq} before the original {} did: the original's change is refused (a race the hub cannot tell apart)",
                                        self.tills[by].name, till.name
                                    ));
                                }
                            }
                            Some(_) => {}
                        }
                        if acked >= seq {
                            problems.push(format!(
                                "change dropped: the hub holds another copy's change under {}'s {lane} #{seq} and the till marks its own {receipts:?} acknowledged (acked {acked}): it is neither on the hub nor pending",
                                till.name
                            ));
                        }
                        k.refused.push((t, c.clone()));
                    }
                    None if acked >= seq => {
                        problems.insert(0, format!(
                            "change lost: the hub lacks {}'s {lane} #{seq} {receipts:?} but the till marks it acknowledged (acked {acked}) and will never send it again",
                            till.name
                        ));
                        k.lost.push(c.clone());
                    }
                    None if !till.reused.contains(&lane) => {
                        problems.push(format!(
                            "the hub lacks {}'s {lane} #{seq} {receipts:?}, still pending after the heal",
                            till.name
                        ));
                        k.lost.push(c.clone());
                    }
                    None => {
                        // Held back behind a refused change of its lane.
                        if till.clone_of.is_none() {
                            k.preempted.insert(t);
                        }
                        k.refused.push((t, c.clone()));
                    }
                }
            }
        }
        Ok(k)
    }

    fn check(&mut self) -> R<()> {
        let mut problems: Vec<String> = vec![];
        let Classified { accepted, refused, lost, preempted, carried } = self.classify(&mut problems)?;
        // Nothing of a refused change may be merged anywhere.
        let mut accepted_ids: BTreeSet<String> = BTreeSet::new();
        for c in &accepted {
            for op in &c.ops {
                accepted_ids.insert(op_id(op));
            }
        }
        let mut refused_ids: BTreeMap<String, (usize, Lane, u64)> = BTreeMap::new();
        for (t, c) in &refused {
            for op in &c.ops {
                let id = op_id(op);
                if !accepted_ids.contains(&id) {
                    refused_ids.insert(id, (*t, c.lane, c.seq));
                }
            }
        }
        // A carried change reached the hub through the successor (the same
        // operation ids in an accepted change).
        for c in &carried {
            let missing: Vec<String> = c.ops.iter().map(op_id).filter(|id| !accepted_ids.contains(id)).collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "carried change lost: {} {} #{} of a retired till never reached the hub through its successor ({missing:?})",
                    c.device, c.lane, c.seq
                ));
            }
        }
        let checked: Vec<usize> = (0..self.tills.len())
            .filter(|t| !self.tills[*t].retired && self.tills[*t].clone_of.is_none() && !preempted.contains(t))
            .collect();
        for &t in &preempted {
            self.notes
                .push(format!("{} excluded from convergence: a clone took some of its sequences", self.tills[t].name));
        }
        // The hub's rows, read from its tenant file.
        let hub_conn =
            Connection::open_with_flags(self.hub_db(), OpenFlags::SQLITE_OPEN_READ_ONLY).ctx("open hub db")?;
        let mut replicas: Vec<(String, &Connection)> =
            checked.iter().map(|t| (self.tills[*t].name.clone(), self.tills[*t].st().connection())).collect();
        replicas.push(("hub".into(), &hub_conn));
        for (r, (name, conn)) in replicas.iter().enumerate() {
            let ids: BTreeSet<String> = query_strings(conn, "SELECT id FROM ledger UNION ALL SELECT id FROM writes")?;
            for (id, (t, lane, seq)) in &refused_ids {
                // The till that made a change holds it, of course.
                if checked.get(r) != Some(t) && ids.contains(id) {
                    problems.push(format!(
                        "silently merged: {name} holds {id} of {}'s refused change {lane} #{seq}",
                        self.tills[*t].name
                    ));
                }
            }
        }

        // Invariant 1: sales.
        let mut expected: BTreeMap<Uuid, String> = BTreeMap::new();
        for c in &accepted {
            for op in &c.ops {
                if let Op::Insert(r) = op
                    && r.table == tables::SALES
                {
                    expected.insert(r.id, r.data["receipt"].as_str().unwrap_or("").to_string());
                }
            }
        }
        let all_outbox_sales: BTreeSet<Uuid> = accepted
            .iter()
            .chain(refused.iter().map(|(_, c)| c))
            .chain(lost.iter())
            .chain(carried.iter())
            .flat_map(|c| c.ops.iter())
            .filter_map(|op| match op {
                Op::Insert(r) if r.table == tables::SALES => Some(r.id),
                _ => None,
            })
            .collect();
        for s in &self.sales {
            if !all_outbox_sales.contains(&s.sale_id) {
                problems.push(format!(
                    "sale {} ({}) committed on {} is not in its outbox",
                    s.receipt, s.sale_id, self.tills[s.till].name
                ));
            }
        }
        for (name, conn) in &replicas {
            // (id, device, receipt) of every sale row of the store.
            let mut st = conn
                .prepare("SELECT id, device, data FROM ledger WHERE tbl = 'sales' AND store_id = ?1")
                .ctx("sales")?;
            let rows: Vec<(Uuid, Uuid, String)> = st
                .query_map([self.store_id.to_string()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
                })
                .ctx("sales")?
                .map(|r| {
                    let (id, dev, data) = r.ctx("sale row")?;
                    let data: serde_json::Value = serde_json::from_str(&data).ctx("sale data")?;
                    Ok((
                        Uuid::parse_str(&id).ctx("sale id")?,
                        Uuid::parse_str(&dev).ctx("device id")?,
                        data["receipt"].as_str().unwrap_or("").to_string(),
                    ))
                })
                .collect::<R<_>>()?;
            let held: BTreeMap<Uuid, &String> = rows.iter().map(|(id, _, r)| (*id, r)).collect();
            if held.len() != rows.len() {
                problems.push(format!("invariant 1: {name} holds a sale row twice"));
            }
            let missing: Vec<&String> =
                expected.iter().filter(|(id, _)| !held.contains_key(id)).map(|(_, r)| r).collect();
            if !missing.is_empty() {
                problems.push(format!("invariant 1: {name} lacks sales {missing:?}"));
            }
            let extra: Vec<&&String> =
                held.iter().filter(|(id, _)| !expected.contains_key(id)).map(|(_, r)| r).collect();
            if !extra.is_empty() {
                problems.push(format!("invariant 1: {name} holds sales no accepted change carries: {extra:?}"));
            }
            let mut by_receipt: BTreeMap<&String, Vec<Uuid>> = BTreeMap::new();
            for (_, dev, receipt) in &rows {
                by_receipt.entry(receipt).or_default().push(*dev);
            }
            for (receipt, devs) in by_receipt {
                if devs.len() > 1 {
                    if devs.iter().all(|d| self.clone_group(*d)) {
                        if *name == "hub" {
                            self.notes.push(format!("receipt {receipt} issued twice: by a till and its clone"));
                        }
                    } else {
                        problems.push(format!("invariant 1: {name} holds receipt {receipt} {} times", devs.len()));
                    }
                }
            }
        }

        // Invariant 2: convergence.
        let hub_digest = self.hub().store_digest(self.tenant, self.store_id).ctx("store digest")?;
        let mut tenant_digest: Option<(String, String)> = None;
        for &t in &checked {
            let d = self.tills[t].st().digests().ctx("digests")?;
            let name = self.tills[t].name.clone();
            if d.0 != hub_digest {
                problems.push(format!("invariant 2: {name}'s state digest differs from the hub's store digest"));
            }
            match &tenant_digest {
                None => tenant_digest = Some((name, d.1)),
                Some((first, td)) if *td != d.1 => {
                    problems.push(format!("invariant 2: {name}'s tenant digest differs from {first}'s"))
                }
                Some(_) => {}
            }
        }

        // Invariant 3: the reference model over everything accepted. The
        // hub's state is covered by the digest equality above.
        let mut model = Model::default();
        model.add_ops(&self.hub_seed_ops);
        for c in &accepted {
            model.add(c);
        }
        // Only the products the tills touch can change or conflict; the
        // model of just their rows is small (the tills' own conflict lists
        // still cover every product, so a conflict elsewhere shows up).
        let touched: BTreeSet<Uuid> =
            SKUS.iter().chain([&NEW_SKU]).map(|sku| derived_id(self.tenant, tables::PRODUCTS, sku)).collect();
        let mut products_only = Model::default();
        for w in model.writes.values().filter(|w| w.table == tables::PRODUCTS && touched.contains(&w.row)) {
            products_only.writes.insert(w.id, w.clone());
        }
        let want_conflicts = products_only.conflicts(self.policy);
        for st in want_conflicts.values() {
            self.count(match st {
                ConflictStatus::Resolved => "conflicts_resolved_at_end",
                _ => "conflicts_current_at_end",
            });
        }
        let mut want_counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in model.ledger.values() {
            *want_counts.entry(r.table.clone()).or_default() += 1;
        }
        struct Want {
            sku: &'static str,
            row: Uuid,
            heads: BTreeSet<(String, tillsync_core::WriteId)>,
            exists: Option<bool>,
            values: Vec<(&'static str, Option<serde_json::Value>)>,
            on_hand: i64,
        }
        let mut wants = vec![];
        for sku in SKUS.iter().chain([&NEW_SKU]) {
            let row = derived_id(self.tenant, tables::PRODUCTS, sku);
            let products = &products_only;
            let mut heads = BTreeSet::new();
            let fields = products.fields(tables::PRODUCTS, row);
            for f in &fields {
                for id in products.heads(tables::PRODUCTS, row, f) {
                    heads.insert((f.clone(), id));
                }
            }
            let exists = (!fields.is_empty()).then(|| products.exists(tables::PRODUCTS, row, self.policy));
            let values = ["sku", "name", "price_minor", "active", "tax_rate_bp"]
                .into_iter()
                .map(|f| (f, products.value(tables::PRODUCTS, row, f, self.policy)))
                .collect();
            wants.push(Want { sku, row, heads, exists, values, on_hand: model.on_hand(sku) });
        }
        for &t in &checked {
            let s = self.tills[t].st();
            let name = &self.tills[t].name;
            for w in &wants {
                let heads: BTreeSet<_> =
                    s.heads(tables::PRODUCTS, w.row).ctx("heads")?.into_iter().map(|h| (h.field, h.id)).collect();
                if heads != w.heads {
                    problems.push(format!("invariant 3: {name}: heads of {} differ from the model", w.sku));
                }
                match (s.record_state(tables::PRODUCTS, w.row).ctx("record")?, w.exists) {
                    (None, None) => {}
                    (Some((live, data)), Some(exists)) => {
                        if live != exists {
                            problems
                                .push(format!("invariant 3: {name}: {} exists={live}, the model says {exists}", w.sku));
                        }
                        for (f, want) in &w.values {
                            if data.get(*f) != want.as_ref() {
                                problems.push(format!(
                                    "invariant 3: {name}: {}.{f} is {:?}, the model says {want:?}",
                                    w.sku,
                                    data.get(*f)
                                ));
                            }
                        }
                    }
                    (have, _) => problems.push(format!(
                        "invariant 3: {name}: product {} is {:?}, the model says exists={:?}",
                        w.sku,
                        have.map(|h| h.0),
                        w.exists
                    )),
                }
                let have = s.on_hand(w.sku).ctx("on hand")?;
                if have != w.on_hand {
                    problems.push(format!(
                        "invariant 3: {name}: stock of {} is {have}, the model says {}",
                        w.sku, w.on_hand
                    ));
                }
            }
            let have: BTreeMap<String, ConflictStatus> = s
                .conflicts()
                .ctx("conflicts")?
                .into_iter()
                .filter(|c| c.table == tables::PRODUCTS)
                .map(|c| (c.id, c.status))
                .collect();
            if self.tills[t].bootstrapped {
                // A snapshot carries heads only: a conflict resolved before
                // it cannot be derived (the writes it named are gone), so a
                // bootstrapped till may list fewer resolved conflicts.
                let current = |m: &BTreeMap<String, ConflictStatus>| -> BTreeMap<String, ConflictStatus> {
                    m.iter().filter(|(_, s)| **s != ConflictStatus::Resolved).map(|(k, v)| (k.clone(), *v)).collect()
                };
                let extra: Vec<&String> = have.keys().filter(|k| !want_conflicts.contains_key(*k)).collect();
                if current(&have) != current(&want_conflicts) || !extra.is_empty() {
                    problems.push(format!(
                        "invariant 3: {name}: product conflicts {have:?}, the model says {want_conflicts:?}"
                    ));
                } else if have.len() != want_conflicts.len() {
                    self.notes.push(format!(
                        "{name} bootstrapped from a snapshot and lists {} of {} resolved product conflicts",
                        have.len() - current(&have).len(),
                        want_conflicts.len() - current(&want_conflicts).len()
                    ));
                }
            } else if have != want_conflicts {
                problems.push(format!(
                    "invariant 3: {name}: product conflicts {have:?}, the model says {want_conflicts:?}"
                ));
            }
            let mut st = s.connection().prepare("SELECT tbl, count(*) FROM ledger GROUP BY tbl").ctx("counts")?;
            let have: BTreeMap<String, usize> = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)))
                .ctx("counts")?
                .collect::<Result<_, _>>()
                .ctx("counts")?;
            if have != want_counts {
                problems.push(format!("invariant 3: {name} holds ledger rows {have:?}, the model {want_counts:?}"));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let n = problems.len();
        problems.truncate(12);
        Err(format!("{n} problem(s):\n  - {}", problems.join("\n  - ")))
    }
}

fn query_strings(conn: &Connection, sql: &str) -> R<BTreeSet<String>> {
    let mut st = conn.prepare(sql).ctx("query")?;
    let rows = st.query_map([], |r| r.get::<_, String>(0)).ctx("query")?;
    rows.collect::<Result<_, _>>().ctx("query")
}

/// How a till reaches the hub.
trait Transport {
    /// Sends a request; `None` when no answer comes back.
    fn call(&mut self, req: Req) -> R<Option<Resp>>;
    fn log(&mut self, _line: String) {}
}

/// The simulated faulty network, for one till.
struct SimNet<'a> {
    sim: &'a mut Sim,
    t: usize,
}

impl Transport for SimNet<'_> {
    fn call(&mut self, req: Req) -> R<Option<Resp>> {
        self.sim.call(self.t, req)
    }
    fn log(&mut self, line: String) {
        let name = self.sim.tills[self.t].name.clone();
        self.sim.log(format!("  {name} {line}"));
    }
}

/// A perfect network: the hub answers every request at once.
struct Direct<'a> {
    hub: &'a dyn HubStorage,
    auth: &'a DeviceAuth,
    now_ms: u64,
}

impl Transport for Direct<'_> {
    fn call(&mut self, req: Req) -> R<Option<Resp>> {
        let r = match &req {
            Req::Push(p) => self.hub.push(self.auth, p, self.now_ms).map(|(r, _)| Resp::Push(r)),
            Req::Pull { after, tag, limit } => {
                self.hub.pull_tagged(self.auth, *after, tag.as_deref(), *limit, self.now_ms).map(Resp::Pull)
            }
            Req::Snapshot => self.hub.snapshot(self.auth).map(Resp::Snapshot),
        };
        Ok(Some(match r {
            Ok(r) => r,
            Err(e) => Resp::Err { code: e.code().to_string(), message: e.to_string() },
        }))
    }
}

/// What a round did and learnt.
#[derive(Clone, Debug, Default)]
pub struct RoundOutcome {
    round: Round,
    /// Lane errors the hub answered: (lane, code).
    pub errors: Vec<(Lane, String)>,
    /// The cursor had expired: the till merged a snapshot.
    pub rebootstrapped: bool,
}

impl RoundOutcome {
    /// Whether the round ended early for want of an answer.
    pub fn failed(&self) -> bool {
        self.round.failed
    }
    /// Log entries pulled.
    pub fn pulled(&self) -> u64 {
        self.round.pulled
    }
}

/// One sync round on a perfect network, exactly as the simulation's tills
/// run it (a mirror of `tillsync_node::sync::round` over [`HubStorage`]):
/// for scenario tests.
pub fn sync_round(
    store: &mut Store,
    hub: &dyn HubStorage,
    auth: &DeviceAuth,
    now_ms: u64,
    push_batch: usize,
) -> R<RoundOutcome> {
    node_round(store, &mut Direct { hub, auth, now_ms }, now_ms, push_batch, 500, &BTreeSet::new())
}

/// Merges the hub's snapshot into a till (`tillsync_node::sync::bootstrap`).
pub fn bootstrap(store: &mut Store, hub: &dyn HubStorage, auth: &DeviceAuth) -> R<u64> {
    let snap = hub.snapshot(auth).ctx("snapshot")?;
    store.apply_pulled_tagged(&ops_of(&snap.ops)?, snap.cursor, snap.cursor_tag.as_deref()).ctx("bootstrap")?;
    Ok(snap.cursor)
}

/// What the node does with a push answer (`tillsync_node::sync::round`):
/// every lane's acknowledged sequence is set to the hub's `acked_through`,
/// a `gap` counts as progress (the acknowledgement moved back), any other
/// lane error blocks the lane for the round. Returns whether the answer
/// made progress.
fn apply_push_answer(
    store: &mut Store,
    resp: &PushResponse,
    now_ms: u64,
    blocked: &mut Vec<Lane>,
    errors: &mut Vec<(Lane, String)>,
    sent_through: &BTreeMap<Lane, u64>,
) -> R<bool> {
    let mut progress = false;
    let mut acks: Vec<(Lane, u64)> = Vec::new();
    let mut notes: Vec<(Lane, u64, String)> = Vec::new();
    let mut fault: Option<String> = None;
    for (lane, ack) in &resp.lanes {
        let before = store.acked(*lane).ctx("acked")?;
        // As the node: never acknowledge more than was sent; a lane not sent
        // may only move back (a restored hub).
        let target = match sent_through.get(lane) {
            Some(max) => ack.acked_through.min(*max),
            None => ack.acked_through.min(before),
        };
        acks.push((*lane, target));
        if target != before {
            progress = true;
        }
        // Nothing the simulation sends is malformed: a quarantine is a fault.
        if let Some(q) = ack.quarantined.first() {
            notes.push((*lane, q.seq, q.reason.clone()));
            fault = Some(format!("change {lane} #{} was quarantined: {}", q.seq, q.reason));
            break;
        }
        if let Some(e) = &ack.error {
            errors.push((*lane, e.code.clone()));
            if e.code == "gap" {
                progress = true;
                continue;
            }
            if e.code != "sequence_reused" {
                fault = Some(format!("the hub refused lane {lane}: {} ({})", e.message, e.code));
                break;
            }
            if !blocked.contains(lane) {
                blocked.push(*lane);
                progress = true;
            }
        }
    }
    // As the node: the answer's acknowledgements and notes in one
    // transaction (none when nothing moves); the hub's clock observed in
    // memory, saved with the next transaction.
    store.record_push_answer(&acks, &notes, now_ms, Hlc(resp.hub_hlc), &[]).ctx("record push answer")?;
    match fault {
        Some(f) => Err(f),
        None => Ok(progress),
    }
}

/// One sync round as `tillsync_node::sync::round` runs it: push the
/// pending changes of every lane in priority order (`push_batch` at a
/// time) until an answer makes no progress, then pull every page, merging
/// a snapshot when the cursor expired. `refused` lanes do not count as
/// pushed (for the heal's quiet check).
fn node_round(
    store: &mut Store,
    net: &mut dyn Transport,
    now_ms: u64,
    push_batch: usize,
    pull_page: usize,
    refused: &BTreeSet<Lane>,
) -> R<RoundOutcome> {
    let mut out = RoundOutcome::default();
    let mut blocked: Vec<Lane> = vec![];
    let mut loops = 0;
    // As the node: the first push of a round goes even when empty.
    let mut first = true;
    loop {
        loops += 1;
        if loops > PUSH_LOOPS_MAX {
            return Err(format!("{PUSH_LOOPS_MAX} pushes in one round without settling"));
        }
        let mut changes: Vec<WireChange> = vec![];
        for lane in Lane::ALL {
            if blocked.contains(&lane) {
                continue;
            }
            let room = push_batch - changes.len();
            if room == 0 {
                break;
            }
            for p in store.pending_changes(lane, room).ctx("pending")? {
                changes.push(WireChange::from_change(&p.change, p.digest));
            }
        }
        if changes.is_empty() && !first {
            break;
        }
        first = false;
        let mut sent_through: BTreeMap<Lane, u64> = BTreeMap::new();
        for c in &changes {
            let e = sent_through.entry(c.lane).or_default();
            *e = (*e).max(c.seq);
        }
        out.round.pushed += changes.iter().filter(|c| !refused.contains(&c.lane)).count() as u64;
        let seqs: Vec<String> = changes.iter().map(|c| format!("{}#{}", c.lane, c.seq)).collect();
        net.log(format!("pushes {}", seqs.join(" ")));
        match net.call(Req::Push(PushRequest { device_time_ms: now_ms, changes, ..Default::default() }))? {
            None => {
                out.round.failed = true;
                return Ok(out);
            }
            Some(Resp::Push(p)) => {
                let progress = apply_push_answer(store, &p, now_ms, &mut blocked, &mut out.errors, &sent_through)?;
                // As the node: the hub acknowledging a sequence this till
                // never wrote means a copy of its folder wrote it; report it
                // (after taking the answer's acknowledgements, which may have
                // moved back: they decide what the till carries over).
                let written = store.written_through().ctx("written through")?;
                if p.lanes.iter().any(|(lane, a)| a.acked_through > written.get(lane).copied().unwrap_or(0)) {
                    net.log("finds its folder copied and reports it".into());
                    net.call(Req::Push(PushRequest { device_time_ms: now_ms, copied: true, ..Default::default() }))?;
                    out.round.failed = true;
                    return Ok(out);
                }
                if !progress {
                    break;
                }
            }
            Some(Resp::Err { code, .. }) if code == "forked" => {
                out.round.failed = true;
                return Ok(out);
            }
            Some(Resp::Err { code, message }) => return Err(format!("push refused: {message} ({code})")),
            Some(other) => return Err(format!("a push got {other:?}")),
        }
    }
    for _ in 0..10_000 {
        let cursor = store.pull_cursor().ctx("cursor")?;
        let tag = store.pull_cursor_tag().ctx("cursor tag")?;
        match net.call(Req::Pull { after: cursor, tag: tag.clone(), limit: pull_page })? {
            None => {
                out.round.failed = true;
                return Ok(out);
            }
            Some(Resp::Pull(page)) => {
                let mut ops = vec![];
                for e in &page.entries {
                    ops.extend(ops_of(&e.ops)?);
                }
                out.round.pulled += page.entries.len() as u64;
                if page.cursor != cursor || !ops.is_empty() || page.cursor_tag != tag {
                    store.apply_pulled_tagged(&ops, page.cursor, page.cursor_tag.as_deref()).ctx("apply_pulled")?;
                }
                if !page.more {
                    break;
                }
            }
            Some(Resp::Err { code, .. }) if code == "cursor_expired" => match net.call(Req::Snapshot)? {
                None => {
                    out.round.failed = true;
                    return Ok(out);
                }
                Some(Resp::Snapshot(s)) => {
                    let ops = ops_of(&s.ops)?;
                    // As the node: what the hub lacks goes back to it.
                    let relayed = store.relay_missing(now_ms, &ops).ctx("relay missing")?;
                    if relayed > 0 {
                        net.log(format!("relays {relayed} operation(s) the hub lacks"));
                    }
                    store.apply_pulled_tagged(&ops, s.cursor, s.cursor_tag.as_deref()).ctx("bootstrap")?;
                    out.rebootstrapped = true;
                }
                Some(other) => return Err(format!("a snapshot got {other:?}")),
            },
            Some(Resp::Err { code, message }) => return Err(format!("pull refused: {message} ({code})")),
            Some(other) => return Err(format!("a pull got {other:?}")),
        }
    }
    Ok(out)
}

fn op_id(op: &Op) -> String {
    match op {
        Op::Write(w) => w.id.to_string(),
        Op::Insert(r) => r.id.to_string(),
    }
}

fn receipts_in(c: &Change) -> Vec<String> {
    c.ops
        .iter()
        .filter_map(|op| match op {
            Op::Insert(r) if r.table == tables::SALES => r.data["receipt"].as_str().map(str::to_string),
            _ => None,
        })
        .collect()
}

fn brief(r: &Resp) -> String {
    match r {
        Resp::Push(p) => {
            let lanes: Vec<String> = p
                .lanes
                .iter()
                .map(|(l, a)| {
                    let err = a.error.as_ref().map(|e| format!(" {}", e.code)).unwrap_or_default();
                    format!("{l}<={}{err}", a.acked_through)
                })
                .collect();
            format!("acked {}", lanes.join(" "))
        }
        Resp::Pull(p) => {
            format!("{} entries, cursor {}{}", p.entries.len(), p.cursor, if p.more { " more" } else { "" })
        }
        Resp::Snapshot(s) => format!("snapshot of {} ops at {}", s.ops.len(), s.cursor),
        Resp::Err { code, .. } => format!("error {code}"),
    }
}
