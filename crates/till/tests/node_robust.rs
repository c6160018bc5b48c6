//! Robustness of the node client with real processes on real sockets: a
//! hub, tills, `till node run` and a fault-injecting TCP proxy between a
//! till and its hub (tests/common/faultproxy.rs).
//!
//! - every network fault (cut, black hole, delay, half an answer, reset):
//!   the till keeps selling, `till sync` fails clearly (or succeeds for a
//!   delay), status shows the right state, and after healing every sale is
//!   on the hub exactly once;
//! - `node run` SIGKILLed at random moments while another process sells
//!   (`TILL_NODE_KILLS`, default 200; `TILL_NODE_KILL_SEED`);
//! - every sync state with `till status --json` checked field by field;
//! - offline card limits at, under and over each limit;
//! - `node reset`, `export-pending` and `import-pending`;
//! - an offline write followed by nothing syncs once the hub is back;
//! - the node's live status stream and "sync now".

mod common;

use common::faultproxy::{Fault, FaultProxy};
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A hub with a sample tenant, in a temporary folder.
struct World {
    tmp: TempDir,
    t: Tenant,
    hub: Hub,
}

fn world() -> World {
    let tmp = TempDir::new().expect("tempdir");
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir, "Cafe Uno");
    let hub = Hub::start(&hub_dir);
    World { tmp, t, hub }
}

impl World {
    fn dir(&self, name: &str) -> std::path::PathBuf {
        self.tmp.path().join(name)
    }
}

fn poll<T>(timeout: Duration, every: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(every);
    }
}

/// `till sync` while the hub cannot be reached: non-zero, says why and
/// that the till keeps selling.
fn assert_sync_fails_unreachable(dir: &Path, timeout: Duration) -> Out {
    let args = ["sync", "--data", p(dir), "--json"];
    let o = till_env(&args, &[], timeout);
    assert_ne!(o.code, 0, "the sync must fail: {}", o.describe(&args));
    assert!(o.stderr.contains("cannot reach the hub"), "the error says the hub cannot be reached: {}", o.stderr);
    assert!(o.stderr.contains("keeps selling"), "the error says the till keeps selling: {}", o.stderr);
    o
}

// ---------------------------------------------------------------------------
// 1. Network faults between a till and the hub
// ---------------------------------------------------------------------------

fn fault_scenario(fault: Fault) {
    let w = world();
    let proxy = FaultProxy::in_front_of(&w.hub.url);
    let url = proxy.url();
    let a = w.dir("a");
    w.t.enrol(&url, &a, "Till A");
    assert!(proxy.accepted() >= 1, "the till enrolled through the proxy");
    config_set(&a, "sync.probe_timeout_ms", "1000");
    let base_changes = w.t.changes();

    // Before the fault: one sale, synced.
    let s1 = sell(&a, "ESPRESSO:1");
    let t0 = now_ms();
    assert_eq!(sync(&a)["pushed"], 1);
    let synced_at = status(&a)["last_sync_at"].as_u64().expect("last_sync_at");
    let e = Expect {
        reachable: Some(true),
        last_sync: LastSync::After(t0),
        pushed: Some(1),
        pulled: Some(0),
        ..Expect::new("synced", &url)
    };
    check_status(&status(&a), &e, "before the fault");
    assert_eq!(w.t.changes(), base_changes + 1);

    proxy.set(fault);
    // The till keeps selling, and the sale does not wait for the network.
    let started = Instant::now();
    let s2 = sell(&a, "CROISSANT:2");
    let s3 = sell(&a, "MUG:1");
    assert!(started.elapsed() < Duration::from_secs(5), "two sales took {:?} under {fault:?}", started.elapsed());
    // Nothing has told the till yet: its sales are pending.
    let e = Expect {
        pending: [2, 0, 0, 0],
        reachable: Some(true),
        last_sync: LastSync::At(synced_at),
        pushed: Some(1),
        pulled: Some(0),
        ..Expect::new("pending", &url)
    };
    check_status(&status(&a), &e, &format!("sales queued under {fault:?}, not yet synced"));

    // `till network` probes the hub's health within the probe timeout.
    let started = Instant::now();
    let net = json(&["network", "--data", p(&a)]);
    let took = started.elapsed();
    let healthy = matches!(fault, Fault::Delay(_));
    assert_eq!(net["reachable"].as_bool(), Some(healthy), "{fault:?}: network view {net}");
    assert_eq!(net["hub"], if healthy { "reachable" } else { "link_up_hub_down" }, "{net}");
    assert!(took < Duration::from_secs(3), "the probe honours sync.probe_timeout_ms (1 s): took {took:?}");

    match fault {
        Fault::Delay(ms) => {
            let t1 = now_ms();
            let args = ["sync", "--data", p(&a), "--json"];
            let o = till_env(&args, &[], CMD_TIMEOUT);
            assert_eq!(o.code, 0, "a slow link still syncs: {}", o.describe(&args));
            let r: Value = serde_json::from_str(&o.stdout).expect("sync report");
            assert_eq!(r["pushed"], 2, "{r}");
            // A push and a pull, each a request and an answer: four delayed chunks at least.
            assert!(o.took >= Duration::from_millis(4 * ms), "the delay was applied: {:?}", o.took);
            let e = Expect {
                reachable: Some(true),
                last_sync: LastSync::After(t1),
                pushed: Some(3),
                pulled: Some(0),
                ..Expect::new("synced", &url)
            };
            check_status(&status(&a), &e, "synced over a slow link");
        }
        Fault::BlackHole => {
            // The round hangs until the client's request timeout; meanwhile
            // the till sells and its status shows a running round.
            let (tx, rx) = mpsc::channel();
            let dir = a.clone();
            std::thread::spawn(move || {
                let _ = tx.send(till_env(&["sync", "--data", p(&dir), "--json"], &[], Duration::from_secs(90)));
            });
            let st = poll(Duration::from_secs(5), Duration::from_millis(20), "a running round", || {
                let st = status(&a);
                (st["state"] == "syncing").then_some(st)
            });
            let e = Expect {
                pending: [2, 0, 0, 0],
                reachable: Some(true),
                last_sync: LastSync::At(synced_at),
                pushed: Some(1),
                pulled: Some(0),
                ..Expect::new("syncing", &url)
            };
            check_status(&st, &e, "a round waiting on a black hole");
            let started = Instant::now();
            let s4 = sell(&a, "ESPRESSO:1");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "a sale during a hung round took {:?}",
                started.elapsed()
            );
            let o = rx.recv_timeout(Duration::from_secs(90)).expect("the hung sync ends");
            eprintln!("black hole: `till sync` failed after {:?}: {}", o.took, o.stderr.trim());
            assert_ne!(o.code, 0, "a sync into a black hole fails: {}", o.stdout);
            assert!(o.stderr.contains("cannot reach the hub"), "{}", o.stderr);
            assert!(o.stderr.contains("keeps selling"), "{}", o.stderr);
            assert!(o.stderr.contains("timed out"), "the request timed out: {}", o.stderr);
            let e = Expect {
                pending: [3, 0, 0, 0],
                reachable: Some(false),
                error: Some("cannot reach the hub"),
                failures: 1,
                last_sync: LastSync::At(synced_at),
                pushed: Some(1),
                pulled: Some(0),
                ..Expect::new("offline", &url)
            };
            check_status(&status(&a), &e, "after the black hole");
            assert_eq!(w.t.changes(), base_changes + 1, "nothing got through the black hole");
            assert!(
                o.took < Duration::from_secs(45),
                "a sync into a black hole must give up (the client's request timeout is 30 s): {:?}",
                o.took
            );
            // The sale made during the hang is healed with the others.
            heal_and_converge(&w, &proxy, &a, fault, base_changes, &[s1, s2, s3, s4], synced_at);
            return;
        }
        _ => {
            let o = assert_sync_fails_unreachable(&a, CMD_TIMEOUT);
            eprintln!("{fault:?}: `till sync` failed after {:?}: {}", o.took, o.stderr.trim());
            assert!(o.took < Duration::from_secs(10), "{fault:?} fails fast: took {:?}", o.took);
            // The proxy did what it says: the client saw that very fault.
            let cause = match fault {
                Fault::Cut => "Connection refused",
                Fault::Reset => "Connection reset",
                _ => "",
            };
            assert!(o.stderr.contains(cause), "{fault:?} shows as '{cause}': {}", o.stderr);
            let e = Expect {
                pending: [2, 0, 0, 0],
                reachable: Some(false),
                error: Some("cannot reach the hub"),
                failures: 1,
                last_sync: LastSync::At(synced_at),
                pushed: Some(1),
                pulled: Some(0),
                ..Expect::new("offline", &url)
            };
            check_status(&status(&a), &e, &format!("{fault:?}"));
            match fault {
                Fault::DropMid => {
                    assert!(proxy.dropped_mid() >= 1, "an answer was cut in half");
                    // The hub committed the push whose answer was lost.
                    assert_eq!(w.t.changes(), base_changes + 3, "the hub stored the push it could not acknowledge");
                }
                Fault::Reset => {
                    assert!(proxy.resets() >= 1, "a connection was reset");
                    assert_eq!(w.t.changes(), base_changes + 1);
                }
                _ => assert_eq!(w.t.changes(), base_changes + 1),
            }
        }
    }
    heal_and_converge(&w, &proxy, &a, fault, base_changes, &[s1, s2, s3], synced_at);
}

/// Proxy back to pass: reachable-but-unsynced shows `pending`, a sync
/// converges, the hub holds every sale exactly once and digests agree.
fn heal_and_converge(
    w: &World,
    proxy: &FaultProxy,
    a: &Path,
    fault: Fault,
    base_changes: u64,
    sold: &[Value],
    synced_at: u64,
) {
    let url = proxy.url();
    proxy.set(Fault::Pass);
    let unsynced = (sold.len() - 1) as i64;
    if !matches!(fault, Fault::Delay(_)) {
        // A node with auto-sync off only probes: the till learns the hub
        // answers again, and shows its queued sales as pending.
        let runner = Runner::start(a, &["--interval", "60"], &[("TILL_SYNC_AUTO", "false")]);
        let st = poll(Duration::from_secs(5), Duration::from_millis(20), "the probe sees the hub", || {
            let st = runner.api_status();
            (st["network"]["reachable"] == true).then_some(st)
        });
        drop(runner);
        let failures = st["failures"].as_u64().expect("failures");
        let e = Expect {
            pending: [unsynced, 0, 0, 0],
            reachable: Some(true),
            error: Some("cannot reach the hub"),
            failures,
            last_sync: LastSync::At(synced_at),
            pushed: Some(1),
            pulled: Some(0),
            ..Expect::new("pending", &url)
        };
        check_status(&st, &e, &format!("after {fault:?}, hub answering, not synced (/api/status)"));
        check_status(&status(a), &e, &format!("after {fault:?}, hub answering, not synced"));
        let t1 = now_ms();
        let r = sync(a);
        assert_eq!(r["pushed"].as_i64(), Some(unsynced), "{r}");
        assert_eq!(r["lane_errors"].as_array().map(Vec::len), Some(0), "{r}");
        let e = Expect {
            reachable: Some(true),
            last_sync: LastSync::After(t1),
            pushed: Some(1 + unsynced as u64),
            pulled: Some(0),
            ..Expect::new("synced", &url)
        };
        check_status(&status(a), &e, &format!("healed after {fault:?}"));
    }
    // Every sale on the hub exactly once, as a second till sees it.
    let on_hub = hub_sales(&w.t, &w.hub.url, &w.dir("observer"));
    let want: BTreeSet<String> = sold.iter().map(|v| s(&v["sale_id"])).collect();
    let got: BTreeSet<String> = on_hub.iter().map(|v| s(&v["sale_id"])).collect();
    assert_eq!(got, want, "after {fault:?} the hub holds each sale once");
    assert_eq!(on_hub.len(), sold.len());
    assert_eq!(w.t.changes(), base_changes + sold.len() as u64, "no change stored twice after {fault:?}");
    let hub_digest = w.t.digest();
    assert_eq!(s(&status(a)["state_digest"]), hub_digest, "the till's digest is the hub's");
    assert_eq!(s(&status(&w.dir("observer"))["state_digest"]), hub_digest, "the observer's digest is the hub's");
}

#[test]
fn fault_pass_through_proxy() {
    // The control case: a proxy that only forwards changes nothing.
    let w = world();
    let proxy = FaultProxy::in_front_of(&w.hub.url);
    let a = w.dir("a");
    w.t.enrol(&proxy.url(), &a, "Till A");
    let sold: Vec<Value> = (0..3).map(|_| sell(&a, "ESPRESSO:1")).collect();
    assert_eq!(sync(&a)["pushed"], 3);
    assert_eq!(json(&["network", "--data", p(&a)])["reachable"], true);
    let on_hub = hub_sales(&w.t, &w.hub.url, &w.dir("observer"));
    assert_eq!(on_hub.len(), sold.len());
    assert_eq!(s(&status(&a)["state_digest"]), w.t.digest());
}

#[test]
fn fault_cut() {
    fault_scenario(Fault::Cut);
}

#[test]
fn fault_black_hole() {
    fault_scenario(Fault::BlackHole);
}

#[test]
fn fault_delay() {
    fault_scenario(Fault::Delay(150));
}

#[test]
fn fault_drop_mid_response() {
    fault_scenario(Fault::DropMid);
}

#[test]
fn fault_reset() {
    fault_scenario(Fault::Reset);
}

// ---------------------------------------------------------------------------
// 2. kill -9 of `node run` while another process sells
// ---------------------------------------------------------------------------

#[test]
fn node_run_killed_at_random_loses_and_doubles_nothing() {
    let kills = env_u64("TILL_NODE_KILLS").unwrap_or(200);
    let seed = env_u64("TILL_NODE_KILL_SEED").unwrap_or(0x5EED_D1E5_0F00_u64);
    eprintln!("kill -9 harness: {kills} kills, seed {seed:#x} (TILL_NODE_KILLS, TILL_NODE_KILL_SEED)");
    let w = world();
    let a = w.dir("a");
    // Through a proxy that delays every chunk a little: a round then lasts
    // tens of milliseconds, as on a real network, so the kills (mostly in a
    // runner's first 100 ms) land in rounds often enough to test that. On
    // loopback a round took a few milliseconds and one run in ten or so
    // landed too few.
    let proxy = FaultProxy::in_front_of(&w.hub.url);
    proxy.set(Fault::Delay(5));
    w.t.enrol(&proxy.url(), &a, "Till A");
    let base_changes = w.t.changes();
    let started = Instant::now();

    // The seller: short `sell-loop` bursts, some SIGKILLed mid-burst; every
    // printed receipt is a committed sale.
    let stop = Arc::new(AtomicBool::new(false));
    let seller = {
        let (stop, dir) = (stop.clone(), a.clone());
        std::thread::spawn(move || {
            let mut rng = XorShift::new(seed ^ 0xA5A5_A5A5);
            let (mut printed, mut killed) = (Vec::<String>::new(), 0u32);
            while !stop.load(Ordering::SeqCst) {
                let mut child = base_command()
                    .args(["sell-loop", "--data", p(&dir), "--count", "3"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn sell-loop");
                let out = BufReader::new(child.stdout.take().expect("stdout"));
                let reader = std::thread::spawn(move || out.lines().map_while(Result::ok).collect::<Vec<_>>());
                let mut bg = Bg(child);
                if rng.range(0, 3) == 0 {
                    std::thread::sleep(Duration::from_millis(rng.range(0, 40)));
                    bg.kill();
                    killed += 1;
                } else {
                    let _ = bg.0.wait();
                }
                printed.extend(reader.join().expect("receipts"));
                std::thread::sleep(Duration::from_millis(25));
            }
            (printed, killed)
        })
    };

    // The runner: started, SIGKILLed after a random delay, again and again.
    let mut rng = XorShift::new(seed);
    let env = [
        ("TILL_SYNC_DEBOUNCE_MS", "0"),
        ("TILL_SYNC_BACKOFF_BASE_MS", "20"),
        ("TILL_SYNC_BACKOFF_CAP_MS", "200"),
        ("TILL_SYNC_PROBE_INTERVAL_MS", "100"),
    ];
    // A round marks itself in a side file and removes the mark when it ends
    // (tillsync_node::running): a mark left after the kill means this runner
    // died in a round.
    let mark = a.join(tillsync_node::running::RUNNING_FILE);
    let mut mid_round = 0;
    for _ in 0..kills {
        // Cleared before each start.
        let _ = std::fs::remove_file(&mark);
        let mut cmd = base_command();
        cmd.args(["node", "run", "--data", p(&a), "--interval", "1", "--ui", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut runner = Bg(cmd.spawn().expect("spawn node run"));
        let ms = if rng.range(0, 9) == 0 { rng.range(150, 500) } else { rng.range(0, 100) };
        std::thread::sleep(Duration::from_millis(ms));
        runner.kill();
        if mark.exists() {
            mid_round += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (printed, seller_kills) = seller.join().expect("the seller thread");
    let during = w.t.changes() - base_changes;
    eprintln!(
        "{kills} runner kills ({mid_round} in the middle of a round) and {seller_kills} seller kills in {:?}: \
         {} receipts printed, {during} changes reached the hub between kills",
        started.elapsed(),
        printed.len()
    );
    assert!(kills < 20 || mid_round * 10 >= kills, "too few kills landed in a round ({mid_round} of {kills})");
    assert!(!printed.is_empty(), "the seller sold");
    assert!(during > 0, "the killed runners still pushed between kills");
    let distinct: BTreeSet<&String> = printed.iter().collect();
    assert_eq!(distinct.len(), printed.len(), "a receipt was printed twice");

    // Heal: sync until nothing is pending.
    sync_until_clean(&a, 10);
    let st = status(&a);
    assert_eq!(st["state"], "synced", "{st}");
    assert_eq!(st["failures"], 0, "{st}");
    let local = sales(&a);
    assert!(local.len() >= printed.len(), "the till has every printed sale");

    // The hub: every printed receipt exactly once, nothing else but the
    // till's own sales (a killed burst may commit a sale it never printed).
    let on_hub = hub_sales(&w.t, &w.hub.url, &w.dir("observer"));
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for v in &on_hub {
        *count.entry(s(&v["receipt"])).or_default() += 1;
    }
    for r in &printed {
        assert_eq!(count.get(r), Some(&1), "printed receipt {r} must be on the hub exactly once");
    }
    let local_ids: BTreeSet<String> = local.iter().map(|v| s(&v["sale_id"])).collect();
    let hub_ids: BTreeSet<String> = on_hub.iter().map(|v| s(&v["sale_id"])).collect();
    assert_eq!(hub_ids, local_ids, "the hub holds exactly the till's sales");
    assert_eq!(w.t.changes() - base_changes, local.len() as u64, "one change per sale on the hub, none twice");
    assert_eq!(s(&st["state_digest"]), w.t.digest(), "digests agree");

    for db in [a.join("till.db"), w.t.hub_dir.join("tenants").join(&w.t.id).join("till.db")] {
        let c = tillsync_store::keys::connect(&db).expect("open the database");
        let r: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
        assert_eq!(r, "ok", "{}", db.display());
    }
}

// ---------------------------------------------------------------------------
// 3. Every sync state, status field by field
// ---------------------------------------------------------------------------

#[test]
fn every_state_with_its_status_fields() {
    let w = world();
    let proxy = FaultProxy::in_front_of(&w.hub.url);
    let url = proxy.url();
    let (a, b) = (w.dir("a"), w.dir("b"));
    let dev_a = s(&w.t.enrol(&url, &a, "Till A")["device_id"]);
    w.t.enrol(&w.hub.url, &b, "Till B");

    // synced: just enrolled, nothing pending, never synced, no probe yet.
    let fresh = Expect { pushed: Some(0), pulled: Some(0), ..Expect::new("synced", &url) };
    check_status(&status(&a), &fresh, "fresh");
    // pending: a sale, reachability not yet known.
    sell(&a, "ESPRESSO:1");
    check_status(
        &status(&a),
        &Expect { state: "pending", pending: [1, 0, 0, 0], ..fresh.clone() },
        "pending, never synced",
    );
    // synced.
    let t0 = now_ms();
    assert_eq!(sync(&a)["pushed"], 1);
    let synced = Expect {
        reachable: Some(true),
        last_sync: LastSync::After(t0),
        pushed: Some(1),
        pulled: Some(0),
        ..Expect::new("synced", &url)
    };
    check_status(&status(&a), &synced, "synced");
    let at = status(&a)["last_sync_at"].as_u64().expect("last_sync_at");
    // pending, hub reachable.
    sell(&a, "CROISSANT:1");
    let pending = Expect { state: "pending", pending: [1, 0, 0, 0], last_sync: LastSync::At(at), ..synced.clone() };
    check_status(&status(&a), &pending, "pending");

    // offline: the link is cut and a sync failed.
    proxy.set(Fault::Cut);
    assert_sync_fails_unreachable(&a, CMD_TIMEOUT);
    let offline = Expect {
        reachable: Some(false),
        error: Some("cannot reach the hub"),
        failures: 1,
        ..Expect { state: "offline", ..pending.clone() }
    };
    check_status(&status(&a), &offline, "offline");

    // error: past the retry limit (1). Status follows the setting at once;
    // a node round failing again keeps it there.
    config_set(&a, "sync.retry_limit", "1");
    check_status(&status(&a), &Expect { state: "error", ..offline.clone() }, "error, retry limit 1");
    let args = ["node", "run", "--data", p(&a), "--exit-after", "1", "--ui", "127.0.0.1:0", "--json"];
    let o = till_env(&args, &[], CMD_TIMEOUT);
    assert_eq!(o.code, 0, "{}", o.describe(&args));
    assert!(o.stderr.contains("sync: cannot reach the hub"), "the runner reports the failed round: {}", o.stderr);
    let st = status(&a);
    let failures = st["failures"].as_u64().expect("failures");
    assert!(failures >= 2, "the node's round failed too: {st}");
    check_status(&st, &Expect { state: "error", failures, ..offline.clone() }, "error after a failed node round");
    config_set(&a, "sync.retry_limit", "8");
    check_status(&status(&a), &Expect { failures, ..offline.clone() }, "offline again under the default limit");

    // Healed: synced.
    proxy.set(Fault::Pass);
    let t1 = now_ms();
    assert_eq!(sync(&a)["pushed"], 1);
    let synced = Expect { last_sync: LastSync::After(t1), pushed: Some(2), ..synced };
    check_status(&status(&a), &synced, "synced after healing");

    // error: a lane held back by the hub's quota; sales still flow.
    ok(&["hub", "quota", "--tenant", &w.t.id, "--data", p(&w.t.hub_dir), "--changes", "1"]);
    ok(&["product", "update", "--data", p(&a), "--sku", "ESPRESSO", "--price", "2.30"]);
    ok(&["product", "update", "--data", p(&a), "--sku", "ESPRESSO", "--price", "2.40"]);
    let quota_sale = sell(&a, "MUG:1");
    let at = status(&a)["last_sync_at"].as_u64().expect("last_sync_at");
    check_status(
        &status(&a),
        &Expect { state: "pending", pending: [1, 0, 2, 0], last_sync: LastSync::At(at), ..synced.clone() },
        "pending in two lanes",
    );
    let t2 = now_ms();
    let o = till(&["sync", "--data", p(&a), "--json"]);
    assert_ne!(o.code, 0, "a held-back lane fails the sync");
    assert!(o.stderr.contains("lane held back: catalog") && o.stderr.contains("quota"), "{}", o.stderr);
    let r: Value = serde_json::from_str(&o.stdout).expect("the round's report");
    assert_eq!(r["pushed"], 3, "the sale and both catalogue changes were sent: {r}");
    let lane_error = Expect {
        state: "error",
        pending: [0, 0, 1, 0],
        error: Some("quota"),
        last_sync: LastSync::After(t2),
        pushed: Some(5),
        ..synced.clone()
    };
    check_status(&status(&a), &lane_error, "error: catalogue lane over quota");
    sync(&b);
    assert!(sale_ids(&b).contains(&s(&quota_sale["sale_id"])), "the sale went through despite the quota");
    ok(&["hub", "quota", "--tenant", &w.t.id, "--data", p(&w.t.hub_dir), "--changes", "0"]);
    let t3 = now_ms();
    assert_eq!(sync(&a)["pushed"], 1);
    let synced = Expect { last_sync: LastSync::After(t3), pushed: Some(6), ..synced };
    check_status(&status(&a), &synced, "synced after the quota was lifted");

    // syncing: a pull of more than one page over a slow link.
    let many = 520;
    ok(&["sell-loop", "--data", p(&b), "--count", &many.to_string()]);
    assert!(sync(&b)["pushed"].as_u64().unwrap_or(0) >= many);
    proxy.set(Fault::Delay(250));
    let runner = Runner::start(&a, &["--interval", "60"], &[]);
    let st = poll(Duration::from_secs(20), Duration::from_millis(10), "state syncing with progress", || {
        let st = runner.api_status();
        (st["state"] == "syncing" && !st["progress"].is_null()).then_some(st)
    });
    let done = st["progress"]["done"].as_u64().expect("done");
    let total = st["progress"]["total"].as_u64().expect("total");
    assert!(done < total && total >= many, "progress part way through the pull: {done}/{total}");
    check_status(
        &st,
        &Expect { state: "syncing", progress: true, last_sync: LastSync::After(t3), pulled: None, ..synced.clone() },
        "syncing (/api/status)",
    );
    let (_, round) = runner.wait_round(Duration::from_secs(30), "that pulled the sales", |v| {
        v["pulled"].as_u64().is_some_and(|n| n >= many)
    });
    assert_eq!(round["trigger"], "Timer", "{round}");
    // The timer's first tick may run one more (short) round: wait it out.
    let st = poll(Duration::from_secs(10), Duration::from_millis(20), "the rounds end", || {
        let st = runner.api_status();
        (st["state"] != "syncing").then_some(st)
    });
    check_status(
        &st,
        &Expect { last_sync: LastSync::After(t3), pulled: None, ..synced.clone() },
        "synced after the big pull",
    );
    assert!(st["pulled"].as_u64() >= round["pulled"].as_u64(), "the pulled total counts the round: {st}");
    drop(runner);
    proxy.set(Fault::Pass);

    // revoked.
    let r = json(&["devices", "revoke", "--hub", &w.hub.url, "--token", &w.t.admin, &dev_a]);
    assert_eq!(r["status"], "revoked", "{r}");
    sell(&a, "ESPRESSO:1");
    let at = status(&a)["last_sync_at"].as_u64().expect("last_sync_at");
    let o = fails(&["sync", "--data", p(&a)]);
    assert!(o.stderr.contains("revoked"), "{}", o.stderr);
    let st = status(&a);
    let revoked = Expect {
        state: "revoked",
        hub_status: "revoked",
        pending: [1, 0, 0, 0],
        error: Some("revoked"),
        failures: 1,
        last_sync: LastSync::At(at),
        pulled: st["pulled"].as_u64(),
        ..synced
    };
    check_status(&st, &revoked, "revoked");
}

// ---------------------------------------------------------------------------
// 4. Offline card limits
// ---------------------------------------------------------------------------

/// A sale of `item` paying `card` by card and the rest in cash.
fn card_sale(dir: &Path, item: &str, card: &str) -> Out {
    till(&["sale", "--data", p(dir), "--item", item, "--pay", &format!("card:{card}"), "--pay", "cash", "--json"])
}

fn card_ok(dir: &Path, item: &str, card: &str) -> Value {
    let o = card_sale(dir, item, card);
    assert_eq!(o.code, 0, "card {card} must be accepted: {}", o.stderr);
    let v: Value = serde_json::from_str(&o.stdout).expect("sale JSON");
    let paid: i64 = v["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .filter(|p| p["method"] == "card")
        .map(|p| p["amount_minor"].as_i64().expect("amount"))
        .sum();
    let want: i64 = card.replace('.', "").parse().expect("amount with two decimals");
    assert_eq!(paid, want, "{v}");
    v
}

fn card_refused(dir: &Path, item: &str, card: &str, says: &[&str]) {
    let before = status(dir);
    let n = sales(dir).len();
    let o = card_sale(dir, item, card);
    assert_ne!(o.code, 0, "card {card} must be refused offline: {}", o.stdout);
    for w in says {
        assert!(o.stderr.contains(w), "the refusal of card {card} should mention '{w}': {}", o.stderr);
    }
    assert_eq!(sales(dir).len(), n, "a refused sale is not recorded");
    assert_eq!(status(dir)["pending"], before["pending"], "a refused sale queues nothing");
}

#[test]
fn offline_card_limits_at_under_and_over() {
    let mut w = world();
    let a = w.dir("a");
    w.t.enrol(&w.hub.url, &a, "Till A");
    ok(&["settings", "set", "--data", p(&a), "offline_card_max", "50"]);
    ok(&["settings", "set", "--data", p(&a), "offline_card_total_max", "80"]);
    let set = json(&["settings", "show", "--data", p(&a)]);
    assert_eq!(set["offline_card_max_minor"], 5000, "{set}");
    assert_eq!(set["offline_card_total_max_minor"], 8000, "{set}");
    // Online, the limits do not apply.
    card_ok(&a, "MUG:6", "60.00");
    sync(&a);

    // The hub is gone and the till knows it.
    let port = w.hub.port;
    w.hub.kill();
    assert_sync_fails_unreachable(&a, CMD_TIMEOUT);
    assert_eq!(status(&a)["state"], "offline");
    let before = sales(&a).len();

    // Per payment: at the limit accepted, a cent over refused.
    card_ok(&a, "MUG:5", "50.00");
    card_refused(&a, "MUG:5", "50.01", &["hub is unreachable", "50.00", "take cash"]);
    // Cash is never limited.
    let cash = json(&["sale", "--data", p(&a), "--item", "MUG:8", "--pay", "cash:100"]);
    assert_eq!(cash["change_minor"], 400, "{cash}");
    // In total: 50.00 + 29.99 (under), + 0.01 (exactly 80.00) accepted...
    card_ok(&a, "MUG:3", "29.99");
    card_ok(&a, "MUG:1", "0.01");
    // ... a further cent, or a payment within the per-payment limit, refused.
    card_refused(&a, "MUG:1", "0.01", &["hub is unreachable", "80.01", "80.00", "take cash"]);
    card_refused(&a, "MUG:5", "50.00", &["130.00", "80.00"]);
    sell(&a, "ESPRESSO:1");
    assert_eq!(sales(&a).len(), before + 5);
    assert_eq!(status(&a)["pending"]["sales"], 5);

    // The hub is back: after a sync the limits no longer apply.
    let _hub = Hub::start_on_port(&w.t.hub_dir, port);
    assert_eq!(sync(&a)["pushed"], 5);
    assert_eq!(status(&a)["state"], "synced");
    card_ok(&a, "MUG:6", "60.00");
    card_ok(&a, "MUG:9", "100.00");
    sync(&a);
    let on_hub = hub_sales(&w.t, &format!("http://127.0.0.1:{port}"), &w.dir("observer"));
    assert_eq!(on_hub.len(), before + 7);
}

// ---------------------------------------------------------------------------
// 5. node reset, export-pending, import-pending
// ---------------------------------------------------------------------------

#[test]
fn reset_export_and_import_pending() {
    let w = world();
    let (a, b, c) = (w.dir("a"), w.dir("b"), w.dir("c"));
    w.t.enrol(&w.hub.url, &a, "Till A");
    w.t.enrol(&w.hub.url, &b, "Till B");
    let other = sample_tenant(&w.t.hub_dir, "Other Merchant");
    other.enrol(&w.hub.url, &c, "Till C");
    let sold: Vec<Value> = ["ESPRESSO:1", "MUG:2", "CROISSANT:3"].iter().map(|i| sell(&a, i)).collect();
    let want: BTreeSet<String> = sold.iter().map(|v| s(&v["sale_id"])).collect();

    // Reset refuses, says what to do, and deletes nothing.
    let o = fails(&["node", "reset", "--data", p(&a)]);
    for wd in ["3 changes", "export-pending", "--force", "till sync"] {
        assert!(o.stderr.contains(wd), "the refusal mentions '{wd}': {}", o.stderr);
    }
    assert_eq!(status(&a)["pending"]["sales"], 3, "nothing was deleted");

    // Export.
    let file = w.dir("pending.json");
    let r = json(&["export-pending", "--data", p(&a), "--out", p(&file)]);
    assert_eq!(r["changes"], 3, "{r}");
    let pf: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("the file")).expect("JSON");
    assert_eq!(pf["format"], "tillsync-pending-v1");
    assert_eq!(pf["tenant_id"].as_str(), Some(w.t.id.as_str()));
    assert_eq!(pf["changes"].as_array().map(Vec::len), Some(3));
    let again = fails(&["export-pending", "--data", p(&a), "--out", p(&file)]);
    assert!(again.stderr.contains("exists"), "an existing file is not overwritten: {}", again.stderr);

    // Import into a till of the same tenant; twice adds nothing.
    let r = json(&["import-pending", "--data", p(&b), "--file", p(&file)]);
    assert_eq!(r["changes"], 3, "{r}");
    let rows = r["ledger_rows"].as_u64().expect("ledger_rows");
    assert!(rows >= 3, "the sales and their stock movements: {r}");
    assert_eq!(r["ledger_rows_present"], 0, "{r}");
    assert_eq!(sale_ids(&b), want, "B holds A's sales");
    let pending_b = status(&b)["pending"].clone();
    let digest_b = status(&b)["state_digest"].clone();
    let r = json(&["import-pending", "--data", p(&b), "--file", p(&file)]);
    assert_eq!(r["ledger_rows"], 0, "{r}");
    assert_eq!(r["ledger_rows_present"].as_u64(), Some(rows), "{r}");
    assert_eq!(sales(&b).len(), 3, "a second import adds no sale");
    assert_eq!(status(&b)["pending"], pending_b, "a second import queues nothing");
    assert_eq!(status(&b)["state_digest"], digest_b, "a second import changes nothing");

    // Another tenant's till refuses the file.
    let o = fails(&["import-pending", "--data", p(&c), "--file", p(&file)]);
    assert!(o.stderr.contains("another tenant"), "{}", o.stderr);
    assert_eq!(sales(&c).len(), 0);
    assert_eq!(status(&c)["pending_total"], 0);

    // B syncs: the hub has the sales once; then A pushes its own copies of
    // the same rows: still once.
    sync_until_clean(&b, 3);
    let on_hub = hub_sales(&w.t, &w.hub.url, &w.dir("observer"));
    assert_eq!(on_hub.iter().map(|v| s(&v["sale_id"])).collect::<BTreeSet<_>>(), want);
    sync_until_clean(&a, 3);
    sync(&w.dir("observer"));
    assert_eq!(sales(&w.dir("observer")).len(), 3, "A's own push of the same rows doubled nothing");
    // Every replica must hold the same rows. Checked after the reset below
    // (so that a failure here does not hide the rest).
    let hub_digest = w.t.digest();
    let digests: Vec<(String, String)> =
        [&a, &b, &w.dir("observer")].iter().map(|d| (d.display().to_string(), s(&status(d)["state_digest"]))).collect();
    let origin = |d: &Path| -> BTreeSet<(String, String, i64)> {
        let c = tillsync_store::keys::connect(&d.join("till.db")).expect("open till.db");
        let mut st = c.prepare("SELECT id, device, hlc FROM ledger WHERE tbl = 'sales'").expect("query");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).expect("rows").map(Result::unwrap).collect()
    };
    let (rows_a, rows_observer) = (origin(&a), origin(&w.dir("observer")));

    // Reset --force: the data goes, with the unsynced change it had.
    sell(&a, "ESPRESSO:1");
    let r = json(&["node", "reset", "--data", p(&a), "--force"]);
    assert_eq!(r["lost_changes"], 1, "{r}");
    let removed: BTreeSet<String> = r["removed"].as_array().expect("removed").iter().map(s).collect();
    // The device token was in the database; the key goes with it.
    assert!(removed.contains("till.db") && removed.contains("till.key"), "{r}");
    assert!(!a.join("till.db").exists() && !a.join("till.key").exists());
    let o = fails(&["status", "--data", p(&a), "--json"]);
    assert!(o.stderr.contains("not a till"), "{}", o.stderr);

    assert_eq!(
        rows_a, rows_observer,
        "PRODUCT BUG: import-pending re-stamps the imported ledger rows with the importing till's device and a \
         new HLC, so the same sale id exists with two different rows; A (which synced its own originals) and \
         the hub (which got B's copies first) keep different rows for ever. Sale rows (id, device, hlc) on A \
         vs on the hub"
    );
    for (d, digest) in digests {
        assert_eq!(digest, hub_digest, "{d}: state digest differs from the hub's");
    }
}

// ---------------------------------------------------------------------------
// 6. An offline write, then nothing: the probe brings it to the hub
// ---------------------------------------------------------------------------

#[test]
fn offline_write_then_nothing_syncs_when_the_hub_returns() {
    let mut w = world();
    let a = w.dir("a");
    w.t.enrol(&w.hub.url, &a, "Till A");
    config_set(&a, "sync.probe_interval_ms", "300");
    config_set(&a, "sync.probe_timeout_ms", "300");
    // Retries far apart, so that the probe is what brings the sale over.
    config_set(&a, "sync.backoff_cap_ms", "600000");
    config_set(&a, "sync.backoff_base_ms", "600000");
    let runner = Runner::start(&a, &["--interval", "60"], &[]);
    let (_, first) = runner.wait_round(Duration::from_secs(10), "at start", |_| true);
    assert_eq!(first["trigger"], "Timer", "{first}");
    let synced_digest = w.t.digest();

    let port = w.hub.port;
    w.hub.kill();
    poll(Duration::from_secs(5), Duration::from_millis(20), "the probe sees the hub down", || {
        (runner.api_status()["network"]["reachable"] == false).then_some(())
    });
    let sale = sell(&a, "ESPRESSO:1");
    // The write's round fails; afterwards nothing is written.
    poll(Duration::from_secs(5), Duration::from_millis(20), "the write's round fails", || {
        (runner.api_status()["failures"].as_u64() >= Some(1)).then_some(())
    });
    let want = s(&status(&a)["state_digest"]);
    assert_ne!(want, synced_digest);
    std::thread::sleep(Duration::from_millis(500));

    let hub = Hub::start_on_port(&w.t.hub_dir, port);
    let back = Instant::now();
    let (at, round) =
        runner.wait_round(Duration::from_secs(10), "that pushes the sale", |v| v["pushed"].as_u64() >= Some(1));
    let took = at.duration_since(back);
    eprintln!("the sale reached the hub {took:?} after it came back (round {round})");
    assert_eq!(round["trigger"], "Reachable", "the probe's 'back online' ran the round: {round}");
    assert!(took < Duration::from_millis(300 + 1_000), "probe interval 300 ms: took {took:?}");
    assert_eq!(w.t.digest(), want, "the hub has the sale");
    let st = runner.api_status();
    assert_eq!(st["state"], "synced", "{st}");
    assert_eq!(st["pending_total"], 0, "{st}");
    let on_hub = hub_sales(&w.t, &hub.url, &w.dir("observer"));
    assert_eq!(on_hub.len(), 1);
    assert_eq!(on_hub[0]["sale_id"], sale["sale_id"]);
}

// ---------------------------------------------------------------------------
// 7. The node's live status stream and "sync now"
// ---------------------------------------------------------------------------

#[test]
fn status_stream_and_sync_now() {
    let w = world();
    let a = w.dir("a");
    w.t.enrol(&w.hub.url, &a, "Till A");
    // Local writes wait 10 s before syncing: the stream shows them pending.
    config_set(&a, "sync.debounce_ms", "10000");
    let runner = Runner::start(&a, &["--interval", "60"], &[]);
    runner.wait_round(Duration::from_secs(10), "at start", |v| v["trigger"] == "Timer");
    // The start runs a round, and the timer's first tick another one.
    while runner.next_round(Duration::from_millis(300)).is_some() {}

    let events = sse(&runner.api, "/api/status/stream");
    let (_, name, first) = events.recv_timeout(Duration::from_secs(2)).expect("the stream starts with the status");
    assert_eq!(name, "status");
    assert_eq!(first["state"], "synced", "{first}");
    assert_eq!(first["pending_total"], 0, "{first}");
    // The stream's document is the status document.
    let api = runner.api_status();
    for k in STATUS_KEYS {
        assert!(first.get(*k).is_some(), "stream event lacks {k}");
    }
    assert_eq!(first["state_digest"], api["state_digest"]);
    assert_eq!(first["device_id"], status(&a)["device_id"]);

    let sale = sell(&a, "ESPRESSO:1");
    let sold = Instant::now();
    let ev = loop {
        let (at, name, v) = events.recv_timeout(Duration::from_secs(2)).expect("a status event after the sale");
        assert_eq!(name, "status");
        if v["pending"]["sales"] == 1 {
            break (at, v);
        }
    };
    let took = ev.0.saturating_duration_since(sold);
    eprintln!("status event {took:?} after the sale");
    assert!(took <= Duration::from_secs(1), "the stream showed the sale after {took:?}");
    assert_eq!(ev.1["state"], "pending", "{}", ev.1);
    assert_eq!(ev.1["pending_total"], 1, "{}", ev.1);
    if let Some((_, r)) = runner.next_round(Duration::from_millis(300)) {
        panic!("the debounce (10 s) should hold the round back, but a round ran: {r}");
    }

    // Sync now.
    let (code, body) = http(&runner.api, "POST", "/api/sync");
    assert_eq!(code, 202, "{body}");
    let (_, round) = runner.wait_round(Duration::from_secs(5), "asked for", |v| v["trigger"] == "Asked");
    assert_eq!(round["pushed"], 1, "{round}");
    let ev = loop {
        let (_, _, v) = events.recv_timeout(Duration::from_secs(2)).expect("a status event after the sync");
        if v["state"] == "synced" {
            break v;
        }
    };
    assert_eq!(ev["pending_total"], 0, "{ev}");
    assert_eq!(ev["pushed"], 1, "{ev}");
    let on_hub = hub_sales(&w.t, &w.hub.url, &w.dir("observer"));
    assert_eq!(on_hub.len(), 1);
    assert_eq!(on_hub[0]["sale_id"], sale["sale_id"]);
}

/// `POST /api/sales` (what the fault runs sell through) is `till sale` over
/// HTTP: the receipt comes after the local commit, a refused sale takes no
/// receipt number, and the sale syncs like any other.
#[test]
fn api_sales_answers_the_receipt_after_the_commit() {
    let w = world();
    let a = w.dir("a");
    let v = w.t.enrol(&w.hub.url, &a, "Till A");
    let prefix = s(&v["receipt_prefix"]);
    // No background round: what the answer promises must already be on disk.
    let runner = Runner::start(&a, &["--interval", "60"], &[("TILL_SYNC_AUTO", "false")]);
    let sale = r#"{"items":[{"sku":"ESPRESSO","qty":2}],"payments":[{"method":"cash","amount_minor":1000}]}"#;
    let (code, body) = http_json(&runner.api, "POST", "/api/sales", sale);
    assert_eq!(code, 201, "{body}");
    let first: Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(first["receipt"], format!("{prefix}-000001"), "{first}");
    assert_eq!(first["total_minor"], 440, "two espressos at 2.20: {first}");
    assert_eq!(first["change_minor"], 560, "{first}");
    let local = sales(&a);
    assert_eq!(local.len(), 1, "{local:?}");
    assert_eq!(local[0]["sale_id"], first["sale_id"]);
    assert_eq!(status(&a)["pending"]["sales"], 1);

    // Refused: no sale, no receipt number used.
    for (bad, want) in [
        (r#"{"items":[{"sku":"NO-SUCH","qty":1}]}"#, 422),
        (r#"{"items":[]}"#, 422),
        (r#"{"items":[{"sku":"ESPRESSO"}],"payments":[{"method":"card","number":"4111111111111111"}]}"#, 400),
        ("not json", 400),
    ] {
        let (code, body) = http_json(&runner.api, "POST", "/api/sales", bad);
        assert_eq!(code, want, "{bad} -> {body}");
        assert!(!body.contains("4111111111111111"), "a card number is echoed: {body}");
    }
    assert_eq!(sales(&a).len(), 1);
    // Payments default to cash for the total.
    let (code, body) = http_json(&runner.api, "POST", "/api/sales", r#"{"items":[{"sku":"ESPRESSO"}]}"#);
    assert_eq!(code, 201, "{body}");
    let second: Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(second["receipt"], format!("{prefix}-000002"), "{second}");
    assert_eq!(second["total_minor"], 220, "{second}");

    let (code, body) = http(&runner.api, "POST", "/api/sync");
    assert_eq!(code, 202, "{body}");
    poll(Duration::from_secs(10), Duration::from_millis(50), "the sales sync", || {
        (runner.api_status()["pending_total"] == 0).then_some(())
    });
    let on_hub: BTreeSet<String> =
        hub_sales(&w.t, &w.hub.url, &w.dir("observer")).iter().map(|v| s(&v["sale_id"])).collect();
    assert_eq!(on_hub, [s(&first["sale_id"]), s(&second["sale_id"])].into_iter().collect());
}

// ---------------------------------------------------------------------------
// A round cut short by kill -9 must not leave the till "syncing"
// ---------------------------------------------------------------------------

#[test]
fn killed_round_leaves_no_stale_syncing_state() {
    let w = world();
    let proxy = FaultProxy::in_front_of(&w.hub.url);
    let a = w.dir("a");
    w.t.enrol(&proxy.url(), &a, "Till A");
    assert_eq!(sync(&a)["pushed"], 0);
    sell(&a, "ESPRESSO:1");
    // The round hangs in a black hole; the runner dies in the middle of it.
    proxy.set(Fault::BlackHole);
    let mut runner = Runner::start(&a, &["--interval", "60"], &[]);
    poll(Duration::from_secs(5), Duration::from_millis(20), "the round starts", || {
        (runner.api_status()["state"] == "syncing").then_some(())
    });
    runner.bg.kill();
    // The round's mark is left behind, naming the dead runner.
    assert!(
        a.join(tillsync_node::running::RUNNING_FILE).exists(),
        "the runner died in its round, so its mark is still there"
    );
    // No process syncs this till any more.
    let st = status(&a);
    eprintln!("status after the runner was killed mid-round: {st}");
    assert_ne!(
        st["state"], "syncing",
        "PRODUCT BUG: after `node run` was killed during a round, `till status` shows state 'syncing' although no \
         round runs (the round's mark names a process that is gone): {st}"
    );
    assert_eq!(st["state"], "pending", "the sale waits: {st}");
    assert!(st["progress"].is_null(), "no round runs, so no progress: {st}");
    // A runner started again reports the truth from its first answer on,
    // and its round brings the till to synced.
    proxy.set(Fault::Pass);
    let runner = Runner::start(&a, &["--interval", "60"], &[]);
    let st = poll(Duration::from_secs(20), Duration::from_millis(20), "the restarted runner syncs", || {
        let st = runner.api_status();
        (st["state"] == "synced").then_some(st)
    });
    assert!(st["progress"].is_null(), "no round runs after it: {st}");
    drop(runner);
    // Healing by hand still works.
    sync(&a);
    assert_eq!(status(&a)["state"], "synced");
}

// ---------------------------------------------------------------------------
// 8. Metered links: which lanes push, bytes per lane, large pulls deferred
// ---------------------------------------------------------------------------

#[test]
fn metered_link_pushes_only_its_lanes_counts_bytes_and_defers_large_pulls() {
    let w = world();
    let a = w.dir("a");
    let b = w.dir("b");
    w.t.enrol(&w.hub.url, &a, "Till A");
    w.t.enrol(&w.hub.url, &b, "Till B");
    config_set(&a, "network.metered", "yes");
    let net = json(&["network", "--data", p(&a)]);
    assert_eq!(net["metered"], true, "metered = yes in the config: {net}");

    // A sale and a price change on the metered till: only the sale goes
    // (the default metered lanes are sales and stock).
    let sale = sell(&a, "ESPRESSO:1");
    ok(&["product", "update", "--data", p(&a), "--sku", "LATTE", "--price", "3.95"]);
    let r = json(&["sync", "--data", p(&a)]);
    assert_eq!(r["pushed"], 1, "only the sale is pushed on a metered link: {r}");
    let st = status(&a);
    assert_eq!(st["pending"]["sales"], 0, "{st}");
    assert_eq!(st["pending"]["catalog"], 1, "the catalogue waits for an unmetered link: {st}");
    assert!(st["bytes_sent"]["sales"].as_u64() > Some(0), "sent bytes are counted on the sales lane: {st}");
    assert_eq!(st["bytes_sent"]["catalog"], 0, "nothing was sent on the catalogue lane: {st}");
    let on_hub = hub_sales(&w.t, &w.hub.url, &w.dir("observer"));
    assert_eq!(on_hub.len(), 1);
    assert_eq!(on_hub[0]["sale_id"], sale["sale_id"]);

    // Another till sells more than a metered pull may fetch: the metered
    // till pulls one page and defers the rest; `--force` pulls it all.
    let many: u64 = 3_000;
    ok(&["sell-loop", "--data", p(&b), "--count", &many.to_string()]);
    sync_until_clean(&b, 50);
    let r = json(&["sync", "--data", p(&a)]);
    assert_eq!(r["deferred_pull"], true, "a large pull waits on a metered link: {r}");
    let first = r["pulled"].as_u64().expect("pulled");
    assert!(first < many, "the metered till pulled only part of the backlog: {r}");
    let st = status(&a);
    assert!(
        st["bytes_received_by_lane"]["sales"].as_u64() > Some(0),
        "received bytes are counted on the sales lane: {st}"
    );
    let r = json(&["sync", "--data", p(&a), "--force"]);
    assert_eq!(r["deferred_pull"], false, "--force pulls on a metered link: {r}");
    assert!(first + r["pulled"].as_u64().expect("pulled") >= many, "the rest arrived: {r}");
    assert_eq!(status(&a)["pending"]["catalog"], 1, "--force does not push the held lanes: {}", status(&a));

    // Back on an unmetered link the catalogue change goes too, and every
    // till and the hub agree.
    config_set(&a, "network.metered", "no");
    let r = json(&["sync", "--data", p(&a)]);
    assert!(r["pushed"].as_u64() >= Some(1), "{r}");
    let st = status(&a);
    assert_eq!(st["pending_total"], 0, "{st}");
    assert!(st["bytes_sent"]["catalog"].as_u64() > Some(0), "{st}");
    sync_until_clean(&b, 10);
    let hub_digest = w.t.digest();
    assert_eq!(status(&a)["state_digest"], hub_digest);
    assert_eq!(status(&b)["state_digest"], hub_digest);
    assert_eq!(sales(&a).len() as u64, many + 1);
}

// ---------------------------------------------------------------------------
// 9. Prometheus metrics on the node and the hub
// ---------------------------------------------------------------------------

/// Reads one sample (`name` or `name{labels}`) from a Prometheus text page.
fn sample(page: &str, name: &str) -> u64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{page}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

#[test]
fn metrics_on_the_node_and_the_hub() {
    let tmp = TempDir::new().expect("tempdir");
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir, "Metrics Cafe");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut hub = Hub::try_start_with(&hub_dir, "127.0.0.1:0", &["--metrics", &metrics_addr]).expect("hub");
    let a = tmp.path().join("a");
    t.enrol(&hub.url, &a, "Till A");
    config_set(&a, "sync.backoff_base_ms", "5000");
    let runner = Runner::start(&a, &["--interval", "60"], &[]);
    runner.wait_round(Duration::from_secs(10), "at start", |_| true);
    sell(&a, "ESPRESSO:1");
    runner.wait_round(Duration::from_secs(10), "that pushes the sale", |v| v["pushed"].as_u64() >= Some(1));

    let (code, node) = http(&runner.api, "GET", "/metrics");
    assert_eq!(code, 200, "{node}");
    assert!(node.contains("# TYPE tillsync_node_sync_rounds_total counter"), "{node}");
    assert!(sample(&node, "tillsync_node_sync_rounds_total") >= 2, "the start round and the sale's round: {node}");
    assert_eq!(sample(&node, "tillsync_node_sync_failures_total"), 0, "{node}");
    assert_eq!(sample(&node, "tillsync_node_queue_depth{lane=\"sales\"}"), 0, "{node}");

    let (code, hub_page) = http(&metrics_addr, "GET", "/metrics");
    assert_eq!(code, 200, "{hub_page}");
    assert!(sample(&hub_page, "tillsync_hub_pushes_total") >= 1, "{hub_page}");
    assert!(sample(&hub_page, "tillsync_hub_changes_pushed_total") >= 1, "{hub_page}");
    assert!(sample(&hub_page, "tillsync_hub_pulls_total") >= 1, "{hub_page}");
    // Metrics are on their own listener, not on the public API.
    let (code, _) = http(hub.url.trim_start_matches("http://"), "GET", "/metrics");
    assert_eq!(code, 404, "the hub's public address does not serve metrics");

    // With the hub gone, failures, backoff and the queue show.
    hub.kill();
    sell(&a, "ESPRESSO:1");
    let node = poll(Duration::from_secs(10), Duration::from_millis(50), "a failed round is counted", || {
        let (_, page) = http(&runner.api, "GET", "/metrics");
        (sample(&page, "tillsync_node_sync_failures_total") >= 1).then_some(page)
    });
    assert!(sample(&node, "tillsync_node_sync_failures_total") >= 1, "{node}");
    assert!(sample(&node, "tillsync_node_backoff_ms") > 0, "{node}");
    assert_eq!(sample(&node, "tillsync_node_queue_depth{lane=\"sales\"}"), 1, "{node}");
}

// ---------------------------------------------------------------------------
// 10. The device config: get, set, validation, environment overrides
// ---------------------------------------------------------------------------

#[test]
fn config_get_set_validates_and_the_environment_overrides() {
    let tmp = TempDir::new().expect("tempdir");
    let a = tmp.path().join("a");
    ok(&["node", "init", "--data", p(&a), "--offline", "--sample"]);
    // Every key has a documented default.
    let all = json(&["config", "get", "--data", p(&a)]);
    for k in ["sync.auto", "sync.interval_s", "sync.retry_limit", "network.metered", "network.metered_lanes"] {
        assert!(all[k].is_string(), "config get lists {k}: {all}");
    }
    ok(&["config", "set", "--data", p(&a), "sync.interval_s", "45"]);
    assert_eq!(json(&["config", "get", "--data", p(&a), "sync.interval_s"])["sync.interval_s"], "45");
    assert!(std::fs::read_to_string(a.join("till.toml")).expect("till.toml").contains("interval_s = 45"));
    // Bad values are refused, say what is allowed, and change nothing.
    for (k, v) in [("sync.interval_s", "0"), ("network.metered", "sometimes"), ("sync.auto", "maybe"), ("no.such", "1")]
    {
        let o = fails(&["config", "set", "--data", p(&a), k, v]);
        assert!(
            o.stderr.contains(k.split('.').next_back().unwrap_or(k)) || o.stderr.contains(k),
            "{k}={v}: {}",
            o.stderr
        );
    }
    assert_eq!(json(&["config", "get", "--data", p(&a), "sync.interval_s"])["sync.interval_s"], "45");
    // The environment wins over the file.
    let o = till_env(
        &["config", "get", "--data", p(&a), "sync.interval_s", "--json"],
        &[("TILL_SYNC_INTERVAL_S", "77")],
        CMD_TIMEOUT,
    );
    assert_eq!(o.code, 0, "{}", o.describe(&["config", "get"]));
    let v: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["sync.interval_s"], "77", "TILL_SYNC_INTERVAL_S overrides till.toml: {v}");
    // A bad environment value is refused as clearly as a bad file value.
    let o = till_env(&["config", "get", "--data", p(&a), "--json"], &[("TILL_SYNC_INTERVAL_S", "soon")], CMD_TIMEOUT);
    assert_ne!(o.code, 0, "a bad override is an error: {}", o.stdout);
    assert!(o.stderr.contains("TILL_SYNC_INTERVAL_S") || o.stderr.contains("interval_s"), "{}", o.stderr);
}

// ---------------------------------------------------------------------------
// 11. `till sync --full` repairs a till that drifted
// ---------------------------------------------------------------------------

#[test]
fn full_sync_repairs_a_till_that_drifted() {
    let w = world();
    let (a, b) = (w.dir("a"), w.dir("b"));
    w.t.enrol(&w.hub.url, &a, "Till A");
    w.t.enrol(&w.hub.url, &b, "Till B");
    let sale = sell(&b, "LATTE:2");
    sync(&b);
    sync(&a);
    assert_eq!(status(&a)["state_digest"], w.t.digest());
    // Drift: A loses its copy of B's sale (a damaged disk, a manual edit).
    {
        let db = tillsync_store::keys::connect(&a.join("till.db")).expect("open till.db");
        let n = db
            .execute("DELETE FROM ledger WHERE tbl = 'sales' AND id = ?1", [s(&sale["sale_id"])])
            .expect("delete the row");
        assert_eq!(n, 1);
    }
    assert_ne!(status(&a)["state_digest"], w.t.digest(), "the till drifted");
    // A plain round has nothing new to pull and does not notice.
    sync(&a);
    assert_ne!(status(&a)["state_digest"], w.t.digest());
    // A full round re-pulls the scope, compares digests and repairs.
    let r = json(&["sync", "--data", p(&a), "--full"]);
    assert_eq!(r["digest_matches"], true, "{r}");
    assert_eq!(status(&a)["state_digest"], w.t.digest());
    assert!(sale_ids(&a).contains(&s(&sale["sale_id"])), "the lost sale is back");
}

// ---------------------------------------------------------------------------
// 12. `till demo`: a hub and two tills converging, each till's UI served
// ---------------------------------------------------------------------------

#[test]
fn the_demo_converges_and_serves_both_tills_ui() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path().join("demo");
    let mut child = Bg(base_command()
        .args(["demo", "--dir", p(&dir), "--exit-after", "60", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the demo"));
    // The summary is one pretty-printed JSON object, printed once the tills
    // have converged; the demo keeps running after it.
    let out = child.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                let _ = tx.send(v);
                return;
            }
        }
    });
    let v = rx.recv_timeout(Duration::from_secs(60)).expect("the demo prints its summary");
    assert_eq!(v["converged"], true, "{v}");
    assert_eq!(v["seen_on_till_2"], true, "{v}");
    let ui: Vec<String> = v["ui"].as_array().expect("ui addresses").iter().map(s).collect();
    assert_eq!(ui.len(), 2, "{v}");
    for u in &ui {
        let addr = u.trim_start_matches("http://").trim_end_matches('/');
        let (code, body) = http(addr, "GET", "/signin");
        assert_eq!(code, 200, "{u}: {body}");
        assert!(body.contains("Sign in"), "{u} serves the sign-in page");
    }
    child.kill();
}
