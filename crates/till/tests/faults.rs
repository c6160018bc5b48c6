//! A black-box fault run in the spirit of Jepsen's tests of sync products.
//!
//! Each run starts one hub process and 5 tills (`till node run`, auto-sync
//! on, short intervals), each till reaching the hub through a fault proxy
//! of its own. One load generator thread per till sells through the till's
//! local API (`POST /api/sales`) at a rate drawn between 10 and 40 sales
//! per second. Meanwhile a seeded nemesis, for a bounded time, SIGKILLs and
//! restarts tills, pauses them (SIGSTOP/SIGCONT), cuts, black-holes,
//! resets, delays or half-answers the network of one or more tills
//! (partitions), and kills, restarts or pauses the hub. Then everything is
//! healed (all proxies pass, every process runs) and the run waits, with a
//! bounded timeout, for quiescence: every till's outbox empty and its
//! digest equal to the hub's. A till that never gets there is stuck and
//! fails the run.
//!
//! A sale is acknowledged when the till answered it with a sale id and a
//! receipt; a request that failed or timed out after it was sent is
//! unknown (it may or may not have been committed). Each run checks:
//! - every acknowledged sale is on the hub, exactly once (by sale id and by
//!   receipt number), with the receipt the till answered;
//! - the hub holds no sale that was not at least attempted (its count is at
//!   most acknowledged + unknown) and each till's receipts on the hub are
//!   gap-free from 1 (a committed sale never gets lost);
//! - every till holds every sale of the store and all digests are equal
//!   (the hub's, each till's and a fresh observer till's);
//! - nothing is in quarantine, on the hub or on any till;
//! - no process died by itself and no till is stuck.
//!
//! `TILL_FAULT_RUNS` sets the number of runs (default 20), `TILL_FAULT_SEED`
//! the seed of run 0 (run k uses seed + k; default below), and
//! `TILL_FAULT_RUN_MS` the length of each run's fault window (default 4000);
//! `TILL_FAULT_VERBOSE=1` prints each run's nemesis history (a failed run
//! always prints it); `TILL_FAULT_HUB=pg` runs the hub on PostgreSQL (a
//! fresh database per run on the server of `TILLSYNC_TEST_PG`) instead of
//! SQLite.
//! The seed fixes the nemesis schedule and the sale rates; the processes'
//! interleaving is the machine's, so a replay repeats the schedule, not
//! every timing. A failure names the run, its seed and the command that
//! replays it. Results of the long run are in BENCHMARKS.md.

mod common;

use common::faultproxy::{Fault, FaultProxy};
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const DEFAULT_SEED: u64 = 0xFA17_5EED_0000_0001;
const TILLS: usize = 5;
/// Longest wait for quiescence after healing before a till counts as stuck.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a load generator waits for a sale's answer before it counts as unknown.
const SALE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sync settings of the tills under test: short enough that a run heals in
/// seconds, as a shop with a flaky link would want too.
const NODE_ENV: &[(&str, &str)] = &[
    ("TILL_SYNC_AUTO", "true"),
    ("TILL_SYNC_INTERVAL_S", "1"),
    ("TILL_SYNC_BACKOFF_BASE_MS", "50"),
    ("TILL_SYNC_BACKOFF_CAP_MS", "1000"),
    ("TILL_SYNC_PROBE_INTERVAL_MS", "200"),
    ("TILL_SYNC_PROBE_TIMEOUT_MS", "500"),
    ("TILL_SYNC_DEBOUNCE_MS", "50"),
    ("TILL_SYNC_REQUEST_TIMEOUT_MS", "3000"),
];

// ---------------------------------------------------------------------------
// Signals and the local API
// ---------------------------------------------------------------------------

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run kill");
    // A process that already exited cannot be signalled; the caller notices it dead.
    let _ = st;
}

/// What one `POST /api/sales` came to.
enum Sold {
    /// The till answered with a sale id and receipt: acknowledged.
    Ack { sale_id: String, receipt: String },
    /// Nothing was sent (no till process, or the connection was refused).
    NotSent,
    /// Sent, but no receipt came back (error answer, timeout, cut): unknown.
    Unknown(String),
}

fn post_sale(addr: &str, body: &str) -> Sold {
    let Ok(sock) = addr.parse::<SocketAddr>() else { return Sold::NotSent };
    let Ok(mut c) = TcpStream::connect_timeout(&sock, Duration::from_millis(500)) else { return Sold::NotSent };
    let _ = c.set_read_timeout(Some(SALE_TIMEOUT));
    let _ = c.set_write_timeout(Some(SALE_TIMEOUT));
    let req = format!(
        "POST /api/sales HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = c.write_all(req.as_bytes()) {
        return Sold::Unknown(format!("send: {e}"));
    }
    let mut raw = Vec::new();
    if let Err(e) = c.read_to_end(&mut raw) {
        return Sold::Unknown(format!("read: {e}"));
    }
    let raw = String::from_utf8_lossy(&raw);
    let Some((head, body)) = raw.split_once("\r\n\r\n") else { return Sold::Unknown(format!("no answer: {raw:?}")) };
    let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if code != 201 {
        return Sold::Unknown(format!("{code}: {body}"));
    }
    let v: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => return Sold::Unknown(format!("not JSON ({e}): {body}")),
    };
    match (v["sale_id"].as_str(), v["receipt"].as_str()) {
        (Some(id), Some(r)) if !id.is_empty() && !r.is_empty() => {
            Sold::Ack { sale_id: id.to_string(), receipt: r.to_string() }
        }
        _ => Sold::Unknown(format!("no sale id or receipt: {body}")),
    }
}

/// GET on the local API with a timeout; None when it does not answer.
fn api_get(addr: &str, path: &str) -> Option<Value> {
    let sock: SocketAddr = addr.parse().ok()?;
    let mut c = TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    c.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| serde_json::from_str(body).ok())?
}

// ---------------------------------------------------------------------------
// The system under test
// ---------------------------------------------------------------------------

/// What a load generator recorded.
#[derive(Default)]
struct Tally {
    /// (sale id, receipt) of every acknowledged sale.
    acked: Vec<(String, String)>,
    unknown: u64,
    not_sent: u64,
    /// A few unknown outcomes, for the failure message.
    samples: Vec<String>,
}

struct Till {
    dir: PathBuf,
    proxy: FaultProxy,
    runner: Option<Runner>,
    /// The API address the load generator uses; None while the till is down.
    api: Arc<Mutex<Option<String>>>,
    prefix: String,
    /// Until when the till is paused or dead (the nemesis heals it then).
    paused_until: Option<Instant>,
    dead_until: Option<Instant>,
    net_until: Option<Instant>,
}

impl Till {
    fn start(&mut self) {
        let r = Runner::start(&self.dir, &[], NODE_ENV);
        *self.api.lock().expect("api lock") = Some(r.api.clone());
        self.runner = Some(r);
    }

    fn kill(&mut self) {
        *self.api.lock().expect("api lock") = None;
        if let Some(mut r) = self.runner.take() {
            r.bg.kill();
        }
    }

    fn pid(&self) -> u32 {
        self.runner.as_ref().expect("a running till").bg.0.id()
    }
}

struct HubProc {
    /// `hub serve`'s storage arguments (`--data DIR` or `--database-url URL`).
    storage: Vec<String>,
    port: u16,
    hub: Option<Hub>,
    paused_until: Option<Instant>,
    dead_until: Option<Instant>,
}

/// The nemesis' record of what it did, for the run summary.
#[derive(Default, Debug)]
struct Faults {
    till_kills: u32,
    till_pauses: u32,
    partitions: u32,
    /// Partitions by kind: cut, black hole, reset, drop mid-answer, delay.
    kinds: [u32; 5],
    hub_kills: u32,
    hub_pauses: u32,
    /// Connections the proxies cut after half an answer, and reset.
    dropped_mid: u64,
    resets: u64,
}

fn pick_fault(rng: &mut XorShift) -> Fault {
    match rng.range(0, 4) {
        0 => Fault::Cut,
        1 => Fault::BlackHole,
        2 => Fault::Reset,
        3 => Fault::DropMid,
        _ => Fault::Delay(rng.range(20, 300)),
    }
}

/// One load generator: sells on one till at a rate redrawn every second
/// between 10 and 40 per second, until `stop`.
fn load(api: Arc<Mutex<Option<String>>>, skus: Vec<String>, seed: u64, stop: Arc<AtomicBool>) -> Tally {
    let mut rng = XorShift::new(seed);
    let mut tally = Tally::default();
    let mut rate = rng.range(10, 40);
    let mut rate_from = Instant::now();
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now.duration_since(rate_from) >= Duration::from_secs(1) {
            rate = rng.range(10, 40);
            rate_from = now;
        }
        if next > now {
            std::thread::sleep(next - now);
        }
        // Open loop at the drawn rate; after a stall (a paused till) it
        // goes on from now instead of bursting to catch up.
        next = (next + Duration::from_micros(1_000_000 / rate)).max(Instant::now());
        let addr = api.lock().expect("api lock").clone();
        let Some(addr) = addr else {
            tally.not_sent += 1;
            continue;
        };
        let sku = &skus[rng.range(0, skus.len() as u64 - 1) as usize];
        let body =
            format!(r#"{{"items":[{{"sku":"{sku}","qty":{}}}],"payments":[{{"method":"cash"}}]}}"#, rng.range(1, 3));
        match post_sale(&addr, &body) {
            Sold::Ack { sale_id, receipt } => tally.acked.push((sale_id, receipt)),
            Sold::NotSent => tally.not_sent += 1,
            Sold::Unknown(why) => {
                tally.unknown += 1;
                if tally.samples.len() < 5 {
                    tally.samples.push(why);
                }
            }
        }
    }
    tally
}

/// The nemesis' history of one run, printed if the run fails.
struct History {
    start: Instant,
    ctx: String,
    lines: Vec<String>,
}

impl History {
    fn note(&mut self, what: String) {
        self.lines.push(format!("+{:>5} ms  {what}", self.start.elapsed().as_millis()));
    }
}

impl Drop for History {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}: FAILED; the nemesis did:\n{}", self.ctx, self.lines.join("\n"));
        }
    }
}

/// What one run came to.
struct RunReport {
    acked: usize,
    unknown: u64,
    on_hub: usize,
    faults: Faults,
    quiesce: Duration,
}

fn run_one(k: u64, seed: u64, window: Duration) -> RunReport {
    let ctx = format!(
        "fault run {k} (seed {seed:#x}; replay: TILL_FAULT_SEED={seed:#x} TILL_FAULT_RUNS=1 TILL_FAULT_RUN_MS={} cargo test -p till --test faults -- --nocapture)",
        window.as_millis()
    );
    let mut rng = XorShift::new(seed);
    let tmp = TempDir::new().expect("temp dir");
    // The database (PostgreSQL hub) lives as long as the run.
    let (_db, storage) = if std::env::var("TILL_FAULT_HUB").as_deref() == Ok("pg") {
        let db = tillsync_hub::pg::testing::TestDatabase::create();
        let storage = vec!["--database-url".to_string(), db.url.clone()];
        (Some(db), storage)
    } else {
        (None, vec!["--data".to_string(), tmp.path().join("hub").display().to_string()])
    };
    let storage_args: Vec<&str> = storage.iter().map(String::as_str).collect();
    let tenant = sample_tenant_on(&storage_args, "Fault Run");
    let hub = Hub::try_start_on(&storage_args, "127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let mut hubp =
        HubProc { storage: storage.clone(), port: hub.port, hub: Some(hub), paused_until: None, dead_until: None };
    let hub_url = format!("http://127.0.0.1:{}", hubp.port);

    let mut tills: Vec<Till> = (0..TILLS)
        .map(|i| {
            let dir = tmp.path().join(format!("till{i}"));
            let proxy = FaultProxy::in_front_of(&hub_url);
            let v = tenant.enrol(&proxy.url(), &dir, &format!("Till {i}"));
            let prefix = s(&v["receipt_prefix"]);
            Till {
                dir,
                proxy,
                runner: None,
                api: Arc::new(Mutex::new(None)),
                prefix,
                paused_until: None,
                dead_until: None,
                net_until: None,
            }
        })
        .collect();
    let skus: Vec<String> = json(&["product", "list", "--data", p(&tills[0].dir)])
        .as_array()
        .expect("product list")
        .iter()
        .map(|v| s(&v["sku"]))
        .collect();
    assert!(!skus.is_empty(), "{ctx}: the sample has no products");
    for t in &mut tills {
        t.start();
    }

    // Load.
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = tills
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (api, skus, stop) = (t.api.clone(), skus.clone(), stop.clone());
            let lseed = seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1));
            std::thread::spawn(move || load(api, skus, lseed, stop))
        })
        .collect();

    // The nemesis: a new fault every 100-600 ms, each healed when its time is up.
    let mut faults = Faults::default();
    let start = Instant::now();
    let mut hist = History { start, ctx: ctx.clone(), lines: vec![] };
    let mut next_op = start + Duration::from_millis(rng.range(100, 400));
    while start.elapsed() < window {
        let now = Instant::now();
        heal_due(&mut tills, &mut hubp, now, &mut hist);
        if now >= next_op {
            next_op = now + Duration::from_millis(rng.range(100, 600));
            let roll = rng.range(0, 99);
            let i = rng.range(0, TILLS as u64 - 1) as usize;
            let healthy_hub = hubp.paused_until.is_none() && hubp.dead_until.is_none();
            if roll < 25 {
                // Crash a till: SIGKILL, back after 0-800 ms.
                // A paused till may be killed too (SIGKILL ends a stopped process).
                let t = &mut tills[i];
                if t.dead_until.is_none() {
                    t.kill();
                    t.paused_until = None;
                    let ms = rng.range(0, 800);
                    t.dead_until = Some(now + Duration::from_millis(ms));
                    faults.till_kills += 1;
                    hist.note(format!("SIGKILL till {} (back in {ms} ms)", t.prefix));
                }
            } else if roll < 45 {
                // Freeze a till: SIGSTOP for 100-3000 ms (past the load
                // generator's timeout at times, so some sales end unknown).
                let t = &mut tills[i];
                if t.dead_until.is_none() && t.paused_until.is_none() {
                    signal(t.pid(), "-STOP");
                    let ms = rng.range(100, 3000);
                    t.paused_until = Some(now + Duration::from_millis(ms));
                    faults.till_pauses += 1;
                    hist.note(format!("SIGSTOP till {} for {ms} ms", t.prefix));
                }
            } else if roll < 85 {
                // Partition: one or more tills lose the hub for 200-2000 ms.
                let n = rng.range(1, TILLS as u64);
                let fault = pick_fault(&mut rng);
                let ms = rng.range(200, 2000);
                let until = now + Duration::from_millis(ms);
                let first = rng.range(0, TILLS as u64 - 1) as usize;
                let mut cut = vec![];
                for j in 0..n as usize {
                    let t = &mut tills[(first + j) % TILLS];
                    if t.net_until.is_none() {
                        t.proxy.set(fault);
                        t.net_until = Some(until);
                        cut.push(t.prefix.clone());
                    }
                }
                hist.note(format!("{fault:?} on the links of {cut:?} for {ms} ms"));
                faults.partitions += 1;
                faults.kinds[match fault {
                    Fault::Cut => 0,
                    Fault::BlackHole => 1,
                    Fault::Reset => 2,
                    Fault::DropMid => 3,
                    _ => 4,
                }] += 1;
            } else if roll < 93 {
                // Freeze the hub: SIGSTOP for 100-4000 ms (past the tills'
                // request timeout at times: a push the hub commits late).
                if healthy_hub {
                    signal(hubp.hub.as_ref().expect("hub").pid(), "-STOP");
                    let ms = rng.range(100, 4000);
                    hubp.paused_until = Some(now + Duration::from_millis(ms));
                    faults.hub_pauses += 1;
                    hist.note(format!("SIGSTOP the hub for {ms} ms"));
                }
            } else if hubp.dead_until.is_none() {
                // Crash the hub (paused or not): SIGKILL, back after
                // 100-1000 ms on the same port.
                if let Some(mut h) = hubp.hub.take() {
                    h.kill();
                }
                hubp.paused_until = None;
                let ms = rng.range(100, 1000);
                hubp.dead_until = Some(now + Duration::from_millis(ms));
                faults.hub_kills += 1;
                hist.note(format!("SIGKILL the hub (back in {ms} ms)"));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // Stop selling, then heal everything.
    stop.store(true, Ordering::SeqCst);
    let tallies: Vec<Tally> = loads.into_iter().map(|h| h.join().expect("load generator")).collect();
    let far = Instant::now() + Duration::from_secs(3600);
    heal_due(&mut tills, &mut hubp, far, &mut hist);
    hist.note("healed everything".into());
    faults.dropped_mid = tills.iter().map(|t| t.proxy.dropped_mid()).sum();
    faults.resets = tills.iter().map(|t| t.proxy.resets()).sum();
    for t in &tills {
        assert!(t.proxy.accepted() > 0, "{ctx}: till {} never reached the hub through its proxy", t.prefix);
    }

    // Quiescence: every outbox empty, every digest the hub's, twice in a row.
    let healed = Instant::now();
    let mut settled = 0;
    let hub_digest = loop {
        let hd = tenant.digest();
        let statuses: Vec<Option<Value>> = tills
            .iter()
            .map(|t| {
                let api = t.api.lock().expect("api lock").clone();
                api.and_then(|a| api_get(&a, "/api/status"))
            })
            .collect();
        let done = statuses.iter().all(|st| {
            st.as_ref().is_some_and(|st| st["pending_total"] == 0 && st["state_digest"].as_str() == Some(hd.as_str()))
        });
        settled = if done { settled + 1 } else { 0 };
        if settled >= 2 {
            break hd;
        }
        if healed.elapsed() > QUIESCE_TIMEOUT {
            let mut why = String::new();
            for (t, st) in tills.iter_mut().zip(&statuses) {
                let ok = st
                    .as_ref()
                    .is_some_and(|st| st["pending_total"] == 0 && st["state_digest"].as_str() == Some(hd.as_str()));
                if !ok {
                    let stderr = t.runner.as_ref().map(|r| r.stderr()).unwrap_or_default();
                    let tail: String = stderr
                        .lines()
                        .rev()
                        .take(15)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n");
                    why.push_str(&format!(
                        "\ntill {} ({}) is stuck: status {}\n  last stderr lines:\n{tail}",
                        t.prefix,
                        t.dir.display(),
                        st.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "no answer from its API".into())
                    ));
                }
            }
            panic!("{ctx}: no quiescence within {QUIESCE_TIMEOUT:?} of healing; hub digest {hd}{why}");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let quiesce = healed.elapsed();

    // Nobody died on their own along the way.
    for t in &mut tills {
        let r = t.runner.as_mut().expect("healed till runs");
        assert!(matches!(r.bg.0.try_wait(), Ok(None)), "{ctx}: till {} exited by itself: {}", t.prefix, r.stderr());
    }
    assert!(hubp.hub.as_mut().expect("healed hub").alive(), "{ctx}: the hub exited by itself");

    // What the hub holds, as a fresh till sees it (distinct ids and receipts
    // are checked by `hub_sales`).
    let observer = tmp.path().join("observer");
    let on_hub = hub_sales(&tenant, &hub_url, &observer);
    assert_eq!(status(&observer)["state_digest"].as_str(), Some(hub_digest.as_str()), "{ctx}: observer digest");
    let hub_receipts: BTreeMap<String, String> = on_hub.iter().map(|v| (s(&v["sale_id"]), s(&v["receipt"]))).collect();

    // Every acknowledged sale is there, once, with the receipt the till gave.
    let mut acked_ids = BTreeSet::new();
    let mut acked_receipts = BTreeSet::new();
    let (mut acked, mut unknown) = (0usize, 0u64);
    for (t, tally) in tills.iter().zip(&tallies) {
        for (id, receipt) in &tally.acked {
            assert!(acked_ids.insert(id.clone()), "{ctx}: till {} acknowledged sale {id} twice", t.prefix);
            assert!(acked_receipts.insert(receipt.clone()), "{ctx}: receipt {receipt} acknowledged twice");
            match hub_receipts.get(id) {
                Some(r) => assert_eq!(r, receipt, "{ctx}: sale {id} has another receipt on the hub"),
                None => panic!(
                    "{ctx}: till {} acknowledged sale {id} ({receipt}) but the hub does not have it ({} sales on the hub)",
                    t.prefix,
                    on_hub.len()
                ),
            }
        }
        acked += tally.acked.len();
        unknown += tally.unknown;
    }
    // No invented sales: each one on the hub was at least attempted.
    assert!(
        on_hub.len() as u64 <= acked as u64 + unknown,
        "{ctx}: the hub has {} sales, more than the {acked} acknowledged and {unknown} unknown",
        on_hub.len()
    );
    // Receipts per till are gap-free from 1: no committed sale was lost.
    for t in &tills {
        let mut nos: Vec<u64> = hub_receipts
            .values()
            .filter_map(|r| r.strip_prefix(&format!("{}-", t.prefix)))
            .map(|n| n.parse().unwrap_or_else(|_| panic!("{ctx}: bad receipt number {n}")))
            .collect();
        nos.sort_unstable();
        let want: Vec<u64> = (1..=nos.len() as u64).collect();
        assert!(nos == want, "{ctx}: receipts of till {} on the hub are not 1..={}: {nos:?}", t.prefix, nos.len());
    }
    let per_prefix: usize =
        tills.iter().map(|t| hub_receipts.values().filter(|r| r.starts_with(&format!("{}-", t.prefix))).count()).sum();
    assert_eq!(per_prefix, on_hub.len(), "{ctx}: a sale on the hub comes from no till of the run");

    // Every till holds every sale; nothing is quarantined anywhere.
    let hub_ids: BTreeSet<String> = hub_receipts.keys().cloned().collect();
    for t in &tills {
        let ids = sale_ids(&t.dir);
        assert!(ids == hub_ids, "{ctx}: till {} has {} sales, the hub {}", t.prefix, ids.len(), hub_ids.len());
        let st = status(&t.dir);
        assert_eq!(st["state_digest"].as_str(), Some(hub_digest.as_str()), "{ctx}: till {} digest", t.prefix);
        assert_eq!(st["pending_total"], 0, "{ctx}: till {} pending: {st}", t.prefix);
        assert_eq!(st["quarantined"], 0, "{ctx}: till {} has quarantined changes: {st}", t.prefix);
    }
    let usage = json(&tenant.on(&["hub", "usage", "--tenant", &tenant.id]));
    assert_eq!(usage["quarantined"], 0, "{ctx}: the hub quarantined changes: {usage}");
    assert!(
        acked > 0,
        "{ctx}: no sale was acknowledged at all: {:?}",
        tallies.iter().map(|t| &t.samples).collect::<Vec<_>>()
    );

    if std::env::var_os("TILL_FAULT_VERBOSE").is_some() {
        eprintln!("{ctx}: the nemesis did:\n{}", hist.lines.join("\n"));
    }
    for t in &mut tills {
        t.kill();
    }
    RunReport { acked, unknown, on_hub: on_hub.len(), faults, quiesce }
}

/// Ends every fault whose time is up (all of them when `now` is far ahead).
fn heal_due(tills: &mut [Till], hubp: &mut HubProc, now: Instant, hist: &mut History) {
    if hubp.paused_until.is_some_and(|t| t <= now) {
        signal(hubp.hub.as_ref().expect("hub").pid(), "-CONT");
        hubp.paused_until = None;
        hist.note("SIGCONT the hub".into());
    }
    if hubp.dead_until.is_some_and(|t| t <= now) {
        let storage: Vec<&str> = hubp.storage.iter().map(String::as_str).collect();
        hubp.hub = Some(Hub::start_on_port_with(&storage, hubp.port));
        hubp.dead_until = None;
        hist.note("restarted the hub".into());
    }
    for t in tills.iter_mut() {
        if t.paused_until.is_some_and(|u| u <= now) {
            signal(t.pid(), "-CONT");
            t.paused_until = None;
            hist.note(format!("SIGCONT till {}", t.prefix));
        }
        if t.dead_until.is_some_and(|u| u <= now) {
            t.start();
            t.dead_until = None;
            hist.note(format!("restarted till {}", t.prefix));
        }
        if t.net_until.is_some_and(|u| u <= now) {
            t.proxy.set(Fault::Pass);
            t.net_until = None;
            hist.note(format!("healed the link of till {}", t.prefix));
        }
        assert!(
            t.runner.is_some() || t.dead_until.is_some(),
            "{}: till {} neither runs nor is due back",
            hist.ctx,
            t.prefix
        );
    }
}

#[test]
fn tills_under_kills_pauses_and_partitions_converge_with_every_acknowledged_sale_once() {
    let runs = env_u64("TILL_FAULT_RUNS").unwrap_or(20);
    let seed = env_u64("TILL_FAULT_SEED").unwrap_or(DEFAULT_SEED);
    let window = Duration::from_millis(env_u64("TILL_FAULT_RUN_MS").unwrap_or(4000));
    let started = Instant::now();
    let (mut acked, mut unknown, mut on_hub) = (0usize, 0u64, 0usize);
    for k in 0..runs {
        let run_seed = seed.wrapping_add(k);
        let t = Instant::now();
        let r = run_one(k, run_seed, window);
        eprintln!(
            "fault run {k} seed {run_seed:#x}: converged in {:?} after healing ({:?} in all); {} acknowledged, {} unknown, {} on the hub; {:?}",
            r.quiesce,
            t.elapsed(),
            r.acked,
            r.unknown,
            r.on_hub,
            r.faults
        );
        acked += r.acked;
        unknown += r.unknown;
        on_hub += r.on_hub;
    }
    eprintln!(
        "fault runs: {runs} of {runs} converged (seed {seed:#x}, window {window:?}) in {:?}; {acked} sales acknowledged, {unknown} unknown, {on_hub} on the hubs",
        started.elapsed()
    );
}
