//! End-to-end tests of a hub and tills as real processes on real sockets:
//! offline work and convergence, retries with an unknown outcome, a copied
//! till folder, revocation and live events.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_till");
/// Longest any single `till` command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Running `till`
// ---------------------------------------------------------------------------

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn describe(&self, args: &[&str]) -> String {
        format!("`till {}` exited {}\nstdout:\n{}\nstderr:\n{}", args.join(" "), self.code, self.stdout, self.stderr)
    }
}

fn base_command() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("TILL_DATA").env_remove("TILL_HUB_DATA").env_remove("TILL_ADMIN_TOKEN");
    c
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs `till ARGS` to completion (bounded by `CMD_TIMEOUT`).
fn till(args: &[&str]) -> Out {
    let start = Instant::now();
    let mut child = base_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn till");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for till") {
            break s;
        }
        if start.elapsed() > CMD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`till {}` did not finish within {CMD_TIMEOUT:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Runs `till ARGS` and insists on success; returns stdout.
fn ok(args: &[&str]) -> String {
    let o = till(args);
    assert_eq!(o.code, 0, "{}", o.describe(args));
    o.stdout
}

/// Runs `till ARGS --json`, insists on success and parses stdout.
fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = ok(&a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("`till {}` printed no JSON ({e}):\n{out}", a.join(" ")))
}

/// Runs `till ARGS` and insists on failure; returns (stdout, stderr).
fn fails(args: &[&str]) -> Out {
    let o = till(args);
    assert_ne!(o.code, 0, "expected a failure: {}", o.describe(args));
    o
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

// ---------------------------------------------------------------------------
// The hub process
// ---------------------------------------------------------------------------

/// A running `till hub serve`, killed on drop.
struct Hub {
    child: Child,
    url: String,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Hub {
    /// Starts the hub on `listen`; Err(stderr) if it exits before printing
    /// its address (e.g. the port is still taken).
    fn try_start(data: &Path, listen: &str, extra: &[&str]) -> Result<Hub, String> {
        let mut args = vec!["hub", "serve", "--data", p(data), "--listen", listen];
        args.extend_from_slice(extra);
        let mut child = base_command()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the hub");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            let mut r = BufReader::new(child.stderr.take().expect("stderr"));
            std::thread::spawn(move || {
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    stderr.lock().expect("stderr").push_str(&line);
                    line.clear();
                }
            });
        }
        let (tx, rx) = mpsc::channel::<Option<String>>();
        {
            let mut r = BufReader::new(child.stdout.take().expect("stdout"));
            std::thread::spawn(move || {
                let mut line = String::new();
                let first = r.read_line(&mut line).ok().filter(|n| *n > 0).map(|_| line.trim().to_string());
                let _ = tx.send(first);
                // Keep draining so the hub never blocks on a full pipe.
                let mut sink = String::new();
                let _ = r.read_to_string(&mut sink);
            });
        }
        let first = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Some(line)) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(20));
                let err = stderr.lock().expect("stderr").clone();
                return Err(format!("the hub printed no address ({other:?}); stderr: {err}"));
            }
        };
        // `--json` prints {"url": ...}; text prints "hub listening on URL (...)".
        let url = if first.starts_with('{') {
            let v: Value = serde_json::from_str(&first).map_err(|e| format!("bad first line {first:?}: {e}"))?;
            s(&v["url"])
        } else {
            assert!(first.starts_with("hub listening on "), "unexpected first line of the hub: {first:?}");
            first.split_whitespace().nth(3).expect("url in the first line").to_string()
        };
        let port: u16 = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in the hub's url");
        Ok(Hub { child, url, port, stderr })
    }

    fn start(data: &Path) -> Hub {
        Hub::try_start(data, "127.0.0.1:0", &["--json"]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Restarts on a given port, retrying while the old socket lingers.
    fn start_on_port(data: &Path, port: u16) -> Hub {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listen = format!("127.0.0.1:{port}");
        loop {
            match Hub::try_start(data, &listen, &[]) {
                Ok(h) => return h,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("hub restart on {listen} retried: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot restart the hub on {listen}: {e}"),
            }
        }
    }

    /// SIGKILL, as a crash or a pulled plug would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("hub {} stderr:\n{}", self.url, self.stderr.lock().map(|s| s.clone()).unwrap_or_default());
        }
    }
}

/// A background process (a till's `node run`), killed on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// Tenants, stores and tills
// ---------------------------------------------------------------------------

struct Tenant {
    hub_dir: PathBuf,
    id: String,
    admin: String,
    store: String,
}

/// A sample tenant with one store (which gets the sample's opening stock).
fn sample_tenant(hub_dir: &Path) -> Tenant {
    let t = json(&["hub", "tenant", "create", "Cafe Uno", "--sample", "--data", p(hub_dir)]);
    let id = s(&t["tenant_id"]);
    let admin = s(&t["admin_token"]);
    assert!(admin.starts_with("tsa_"), "admin token {admin}");
    let st = json(&["hub", "store", "create", "--tenant", &id, "High Street", "--data", p(hub_dir)]);
    Tenant { hub_dir: hub_dir.to_path_buf(), id, admin, store: s(&st["store_id"]) }
}

impl Tenant {
    fn code(&self) -> String {
        let e = json(&["hub", "enrol", "--tenant", &self.id, "--store", &self.store, "--data", p(&self.hub_dir)]);
        assert!(e["expires_at"].as_u64().is_some(), "expires_at in {e}");
        s(&e["code"])
    }

    /// Enrols a till in `dir`; returns its `node init --json` answer.
    fn enrol(&self, url: &str, dir: &Path, name: &str) -> Value {
        let code = self.code();
        let v = json(&["node", "init", "--data", p(dir), "--hub", url, "--code", &code, "--name", name]);
        assert_eq!(s(&v["store_id"]), self.store);
        assert_eq!(s(&v["tenant_id"]), self.id);
        assert!(v["products"].as_u64().unwrap_or(0) > 0, "bootstrap pulled no products: {v}");
        v
    }

    fn digest(&self) -> String {
        let d = json(&["hub", "digest", "--tenant", &self.id, "--store", &self.store, "--data", p(&self.hub_dir)]);
        s(&d["state_digest"])
    }

    fn usage(&self) -> Value {
        json(&["hub", "usage", "--tenant", &self.id, "--data", p(&self.hub_dir)])
    }
}

fn status(dir: &Path) -> Value {
    json(&["status", "--data", p(dir)])
}

fn sync(dir: &Path) -> Value {
    json(&["sync", "--data", p(dir)])
}

fn sell(dir: &Path, item: &str) -> Value {
    let v = json(&["sale", "--data", p(dir), "--item", item, "--pay", "cash"]);
    assert!(v["receipt"].as_str().is_some_and(|r| !r.is_empty()), "no receipt: {v}");
    v
}

fn sales(dir: &Path) -> Vec<Value> {
    json(&["sales", "list", "--data", p(dir)]).as_array().expect("sales array").clone()
}

fn sale_ids(dir: &Path) -> BTreeSet<String> {
    sales(dir).iter().map(|v| s(&v["sale_id"])).collect()
}

/// (on_hand, oversold) of a SKU.
fn stock(dir: &Path, sku: &str) -> (i64, bool) {
    let rows = json(&["stock", "list", "--data", p(dir)]);
    let row = rows
        .as_array()
        .expect("stock array")
        .iter()
        .find(|r| r["sku"] == sku)
        .unwrap_or_else(|| panic!("{sku} missing from stock list: {rows}"));
    (row["on_hand"].as_i64().expect("on_hand"), row["oversold"].as_bool().expect("oversold"))
}

fn price(dir: &Path, sku: &str) -> i64 {
    let rows = json(&["product", "list", "--data", p(dir)]);
    let row = rows
        .as_array()
        .expect("product array")
        .iter()
        .find(|r| r["sku"] == sku)
        .unwrap_or_else(|| panic!("{sku} missing from product list: {rows}"));
    row["price_minor"].as_i64().expect("price_minor")
}

fn conflicts(dir: &Path) -> Vec<Value> {
    json(&["conflicts", "list", "--data", p(dir)]).as_array().expect("conflict array").clone()
}

fn lane(st: &Value, name: &str) -> i64 {
    st["pending"][name].as_i64().unwrap_or_else(|| panic!("pending.{name} in {st}"))
}

/// A sync while the hub is down: non-zero exit, a clear message, and the
/// till's status says so.
fn sync_fails_unreachable(dir: &Path) {
    let o = fails(&["sync", "--data", p(dir)]);
    assert!(
        o.stderr.contains("cannot reach the hub"),
        "a sync with the hub down should say it cannot reach the hub: {}",
        o.stderr
    );
    let st = status(dir);
    assert_eq!(st["hub_status"], "error", "{st}");
    assert!(st["last_error"].as_str().is_some_and(|e| e.contains("cannot reach the hub")), "{st}");
}

/// Syncs every till in turn until a whole round pulls nothing and leaves
/// nothing pending (at most `rounds_max` rounds); returns the rounds run.
fn sync_until_stable(tills: &[&Path], rounds_max: usize) -> usize {
    for round in 1..=rounds_max {
        let mut quiet = true;
        for t in tills {
            let r = sync(t);
            assert!(
                r["lane_errors"].as_array().is_some_and(|e| e.is_empty()),
                "round {round}: {} reported lane errors: {r}",
                t.display()
            );
            if r["pulled"].as_u64() != Some(0) || r["pushed"].as_u64() != Some(0) {
                quiet = false;
            }
        }
        for t in tills {
            let st = status(t);
            assert_eq!(st["pending_total"], 0, "round {round}: {} still has pending changes: {st}", t.display());
            assert_eq!(st["hub_status"], "ok", "{st}");
        }
        if quiet && round >= 2 {
            return round;
        }
    }
    panic!("the tills did not settle within {rounds_max} sync rounds");
}

fn assert_converged(tenant: &Tenant, tills: &[&Path]) -> String {
    let hub = tenant.digest();
    for t in tills {
        let st = status(t);
        assert_eq!(st["state_digest"].as_str(), Some(hub.as_str()), "{} differs from the hub's digest", t.display());
    }
    let tenant_digests: BTreeSet<String> = tills.iter().map(|t| s(&status(t)["tenant_digest"])).collect();
    assert_eq!(tenant_digests.len(), 1, "tenant digests differ: {tenant_digests:?}");
    hub
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn three_tills_converge_after_offline_work() {
    let tmp = TempDir::new().expect("tempdir");
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir);
    ok(&["hub", "policy", "set", "--tenant", &t.id, "products.price_minor", "manual", "--data", p(&hub_dir)]);

    let mut hub = Hub::start(&hub_dir);
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let mut prefixes = BTreeSet::new();
    for (dir, name) in [(&a, "Till A"), (&b, "Till B"), (&c, "Till C")] {
        let v = t.enrol(&hub.url, dir, name);
        prefixes.insert(s(&v["receipt_prefix"]));
        // The bootstrap brought the catalogue and the store's opening stock.
        assert_eq!(stock(dir, "MUG"), (20, false));
        assert_eq!(stock(dir, "CROISSANT"), (60, false));
        assert_eq!(price(dir, "ESPRESSO"), 220);
    }
    assert_eq!(prefixes.len(), 3, "receipt prefixes must differ per till: {prefixes:?}");
    let enrolled_digest = assert_converged(&t, &[&a, &b, &c]);
    let port = hub.port;
    let url = hub.url.clone();
    hub.kill();

    // --- The hub is down: every till keeps selling. ---
    // The same MUG past its stock: 10 + 8 + 5 = 23 of 20.
    sell(&a, "MUG:10");
    sell(&b, "MUG:8");
    sell(&c, "MUG:5");
    // Two tills change ESPRESSO's price to different values.
    ok(&["product", "update", "--data", p(&a), "--sku", "ESPRESSO", "--price", "2.40"]);
    ok(&["product", "update", "--data", p(&b), "--sku", "ESPRESSO", "--price", "2.60"]);
    // B sells a croissant, counts 50 (having seen its own sale), sells one
    // more; A and C sell croissants the count never saw.
    sell(&b, "CROISSANT:1");
    let counted = json(&["stock", "count", "--data", p(&b), "--sku", "CROISSANT", "--qty", "50"]);
    assert_eq!(counted["on_hand"], 50, "{counted}");
    sell(&b, "CROISSANT:1");
    sell(&a, "CROISSANT:2");
    sell(&c, "CROISSANT:4");
    // Each till sees only its own work.
    assert_eq!(stock(&a, "MUG"), (10, false));
    assert_eq!(stock(&b, "CROISSANT"), (49, false));
    assert_eq!(price(&a, "ESPRESSO"), 240);
    assert_eq!(price(&b, "ESPRESSO"), 260);

    for dir in [&a, &b, &c] {
        sync_fails_unreachable(dir);
        // A sale still works after a failed sync.
        sell(dir, "ESPRESSO:1");
    }
    let st_a = status(&a);
    assert_eq!(lane(&st_a, "sales"), 3, "A: MUG, CROISSANT, ESPRESSO sales pending: {st_a}");
    assert!(lane(&st_a, "catalog") >= 1, "A's price change is pending: {st_a}");
    let st_b = status(&b);
    assert_eq!(lane(&st_b, "sales"), 4, "{st_b}");
    assert!(lane(&st_b, "stock") + lane(&st_b, "sales") >= 5, "B's count is pending: {st_b}");
    let total_sales = [&a, &b, &c].iter().map(|d| sales(d).len()).sum::<usize>();
    assert_eq!(total_sales, 3 + 4 + 3);

    // --- The hub comes back on the same address (the tills remember it). ---
    let hub2 = Hub::start_on_port(&hub_dir, port);
    assert_eq!(hub2.url, url);
    let rounds = sync_until_stable(&[&a, &b, &c], 4);
    assert!(rounds <= 3, "round robin should settle in 2 rounds plus a quiet one, took {rounds}");

    let digest = assert_converged(&t, &[&a, &b, &c]);
    assert_ne!(digest, enrolled_digest, "the offline work changed the state");
    let all: BTreeSet<String> = sale_ids(&a);
    assert_eq!(all.len(), total_sales, "every sale once, none doubled or lost");
    for dir in [&b, &c] {
        assert_eq!(sale_ids(dir), all, "{} holds a different set of sales", dir.display());
    }
    let receipts: BTreeSet<String> = sales(&a).iter().map(|v| s(&v["receipt"])).collect();
    assert_eq!(receipts.len(), total_sales, "receipt numbers are unique across tills");

    for dir in [&a, &b, &c] {
        // Merged MUG: 20 - 23, shown as oversold, on every till.
        assert_eq!(stock(dir, "MUG"), (-3, true), "{}", dir.display());
        // CROISSANT: B's count of 50 + the movements it had not seen
        // (B's later 1, A's 2, C's 4) = 43.
        assert_eq!(stock(dir, "CROISSANT"), (43, false), "{}", dir.display());
        assert_eq!(stock(dir, "ESPRESSO"), (197, false), "{}", dir.display());
        let st = status(dir);
        assert!(st["oversold"].as_i64().unwrap_or(0) >= 1, "{st}");
        assert_eq!(st["conflicts_open"], 1, "{st}");
    }

    // Exactly one price conflict, open (manual policy), with the same id everywhere.
    let mut ids = BTreeSet::new();
    for dir in [&a, &b, &c] {
        let cs = conflicts(dir);
        assert_eq!(cs.len(), 1, "{}: {cs:?}", dir.display());
        let cf = &cs[0];
        assert_eq!(cf["table"], "products");
        assert_eq!(cf["field"], "price_minor");
        assert_eq!(cf["status"], "open");
        let values: BTreeSet<i64> =
            cf["values"].as_array().expect("values").iter().map(|v| v["value"].as_i64().expect("value")).collect();
        assert_eq!(values, BTreeSet::from([240, 260]), "{cf}");
        let devices: BTreeSet<String> =
            cf["values"].as_array().expect("values").iter().map(|v| s(&v["device"])).collect();
        assert_eq!(devices.len(), 2, "the heads come from two tills: {cf}");
        // Manual shows the highest clock provisionally: B wrote last.
        assert_eq!(price(dir, "ESPRESSO"), 260, "{}", dir.display());
        ids.insert(s(&cf["id"]));
    }
    assert_eq!(ids.len(), 1, "the conflict id is the same on every till: {ids:?}");
    let conflict_id = ids.into_iter().next().expect("id");

    // Resolve it on C (which wrote neither value) with a typed-in value.
    ok(&["conflicts", "resolve", "--data", p(&c), &conflict_id, "--keep", "value=2.45"]);
    assert_eq!(price(&c, "ESPRESSO"), 245);
    sync_until_stable(&[&c, &a, &b], 4);
    for dir in [&a, &b, &c] {
        let cs = conflicts(dir);
        assert_eq!(cs.len(), 1, "{cs:?}");
        assert_eq!(cs[0]["id"].as_str(), Some(conflict_id.as_str()));
        assert_eq!(cs[0]["status"], "resolved", "{}: {cs:?}", dir.display());
        assert_eq!(price(dir, "ESPRESSO"), 245, "{}", dir.display());
        assert_eq!(status(dir)["conflicts_open"], 0);
    }
    let resolved = assert_converged(&t, &[&a, &b, &c]);
    assert_ne!(resolved, digest);
    // A resolved conflict cannot be resolved again.
    let again = fails(&["conflicts", "resolve", "--data", p(&a), &conflict_id, "--keep", "local"]);
    assert!(again.stderr.contains("already resolved"), "{}", again.stderr);
    drop(hub2);
}

#[test]
fn unknown_outcome_retry_does_not_duplicate() {
    let tmp = TempDir::new().expect("tempdir");
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir);
    let hub = Hub::start(&hub_dir);
    let a = tmp.path().join("a");
    t.enrol(&hub.url, &a, "Till A");
    let before = t.usage()["changes"].as_u64().expect("changes");
    for _ in 0..3 {
        sell(&a, "ESPRESSO:1");
    }
    assert_eq!(lane(&status(&a), "sales"), 3);
    let r = sync(&a);
    assert_eq!(r["pushed"], 3, "{r}");
    let after_first = t.usage()["changes"].as_u64().expect("changes");
    assert_eq!(after_first, before + 3, "three sales are three changes on the hub");
    assert_eq!(lane(&status(&a), "sales"), 0);

    // The hub committed, but the acknowledgements were lost.
    {
        let db = tillsync_store::keys::connect(&a.join("till.db")).expect("open till.db");
        let n = db.execute("UPDATE lanes SET acked_seq = 0 WHERE lane = 'sales'", []).expect("forget the acks");
        assert_eq!(n, 1);
    }
    assert_eq!(lane(&status(&a), "sales"), 3, "the till now thinks its sales are unsent");
    let r = sync(&a);
    assert_eq!(r["pushed"], 3, "the retry sends the same three changes: {r}");
    assert!(r["lane_errors"].as_array().is_some_and(|e| e.is_empty()), "duplicates are acknowledged: {r}");
    assert_eq!(lane(&status(&a), "sales"), 0, "the duplicates were acknowledged");
    assert_eq!(t.usage()["changes"].as_u64(), Some(after_first), "the hub stored nothing twice");
    assert_eq!(sales(&a).len(), 3);

    // A second till sees exactly the three sales; digests agree.
    let b = tmp.path().join("b");
    t.enrol(&hub.url, &b, "Till B");
    sync(&b);
    assert_eq!(sale_ids(&b), sale_ids(&a));
    assert_eq!(sales(&b).len(), 3);
    assert_eq!(stock(&b, "ESPRESSO"), (197, false));
    assert_converged(&t, &[&a, &b]);
}

/// A till folder copied with `cp -r`: both copies use the same device and
/// sequences. The hub must detect it, and the copy's refused sale must not
/// be dropped as if acknowledged (invariant 1: a sale is never lost).
#[test]
fn cloned_till_folder_is_detected_and_its_sale_is_not_dropped() {
    let tmp = TempDir::new().expect("tempdir");
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir);
    let hub = Hub::start(&hub_dir);
    let a = tmp.path().join("a");
    t.enrol(&hub.url, &a, "Till A");
    sell(&a, "ESPRESSO:1");
    sync(&a);
    let copy = tmp.path().join("a-copy");
    let cp = Command::new("cp").arg("-r").arg(&a).arg(&copy).status().expect("cp");
    assert!(cp.success());

    let first = sell(&a, "MUG:1");
    let second = sell(&copy, "CROISSANT:1");
    assert_ne!(first["sale_id"], second["sale_id"]);
    let r1 = sync(&a);
    assert!(r1["lane_errors"].as_array().is_some_and(|e| e.is_empty()), "{r1}");

    // The copy syncs second: the hub refuses its sales lane, clearly.
    let o = till(&["sync", "--data", p(&copy), "--json"]);
    // The hub refuses the reused sequence and stops the device in every
    // lane: the command fails and says what to do on each copy.
    assert_ne!(o.code, 0, "a copied folder is an error: {}", o.stderr);
    assert!(o.stderr.contains("copied"), "{}", o.stderr);
    assert!(o.stderr.contains("export-pending") && o.stderr.contains("enrol again"), "{}", o.stderr);
    {
        // The till keeps the hub's error code with the message.
        let db = tillsync_store::keys::connect(&copy.join("till.db")).expect("open till.db");
        let last: String = db
            .query_row("SELECT value FROM meta WHERE key = 'last_lane_error'", [], |r| r.get(0))
            .expect("last_lane_error recorded");
        assert!(last.contains("sequence_reused"), "{last}");
    }
    // A second sync (text form) must keep reporting the problem.
    let text = till(&["sync", "--data", p(&copy)]);
    eprintln!("second sync of the copy (text): exit {} {}{}", text.code, text.stdout, text.stderr);

    // The original is stopped too (the hub cannot tell the copies apart).
    let oa = till(&["sync", "--data", p(&a)]);
    assert_ne!(oa.code, 0);
    assert!(oa.stderr.contains("copied"), "{}", oa.stderr);

    // The first copy's sale is on the hub: a new till sees it.
    let b = tmp.path().join("b");
    t.enrol(&hub.url, &b, "Till B");
    sync(&b);
    let on_hub = sale_ids(&b);
    assert!(on_hub.contains(&s(&first["sale_id"])), "the first copy's sale reached the hub");
    assert!(!on_hub.contains(&s(&second["sale_id"])), "the refused sale was not stored");

    // The refused sale still exists only on the copy: it must not be
    // treated as acknowledged, and the copy must keep saying something is
    // wrong rather than report a clean sync.
    let st = status(&copy);
    eprintln!("status of the copy after the refusal: {st}");
    assert!(
        lane(&st, "sales") >= 1,
        "PRODUCT BUG: the copy's refused sale {} is marked acknowledged (pending sales 0) although the hub \
         never stored it; status: {st}",
        second["receipt"]
    );
    assert!(
        text.code != 0 || text.stdout.contains("copied") || text.stderr.contains("copied"),
        "PRODUCT BUG: a repeated sync of the copy reports a clean round: {}{}",
        text.stdout,
        text.stderr
    );
    assert_ne!(st["hub_status"], "ok", "PRODUCT BUG: the copy's status says ok: {st}");

    // What the operator does on each copy: export every change it made,
    // enrol a fresh folder, import them there. Both sales reach the hub,
    // each once, and every till agrees.
    let mut successors = vec![];
    for (i, dir) in [&a, &copy].into_iter().enumerate() {
        let file = tmp.path().join(format!("carry-{i}.json"));
        ok(&["export-pending", "--data", p(dir), "--out", p(&file), "--all"]);
        let fresh = tmp.path().join(format!("successor-{i}"));
        t.enrol(&hub.url, &fresh, &format!("Successor {i}"));
        ok(&["import-pending", "--data", p(&fresh), "--file", p(&file)]);
        sync(&fresh);
        successors.push(fresh);
    }
    sync(&b);
    let all = sales(&b);
    for sale in [&first, &second] {
        let n = all.iter().filter(|x| x["sale_id"] == sale["sale_id"]).count();
        assert_eq!(n, 1, "sale {} is on the hub once after the carry-over: {all:?}", sale["receipt"]);
    }
    for dir in &successors {
        sync(dir);
        assert_eq!(status(dir)["state_digest"], status(&b)["state_digest"]);
    }
}

#[test]
fn revoked_device_gets_401_and_status_says_revoked() {
    let tmp = TempDir::new().expect("tempdir");
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir);
    let hub = Hub::start(&hub_dir);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let dev_a = s(&t.enrol(&hub.url, &a, "Till A")["device_id"]);
    let dev_b = s(&t.enrol(&hub.url, &b, "Till B")["device_id"]);
    sell(&a, "ESPRESSO:1");
    sync(&a);
    assert_eq!(status(&a)["hub_status"], "ok");

    let list = json(&["devices", "list", "--hub", &hub.url, "--token", &t.admin]);
    let statuses: Vec<(String, String)> =
        list.as_array().expect("devices").iter().map(|d| (s(&d["device_id"]), s(&d["status"]))).collect();
    assert!(statuses.contains(&(dev_a.clone(), "active".into())), "{list}");
    assert!(statuses.contains(&(dev_b.clone(), "active".into())), "{list}");

    // A device token is not an admin token.
    let token = tillsync_store::read_meta(&a, "device_token").expect("read the till").expect("device token");
    let o = fails(&["devices", "list", "--hub", &hub.url, "--token", &token]);
    assert!(o.stderr.contains("admin token"), "{}", o.stderr);

    let r = json(&["devices", "revoke", "--hub", &hub.url, "--token", &t.admin, &dev_a]);
    assert_eq!(r["status"], "revoked", "{r}");

    sell(&a, "MUG:1");
    let o = fails(&["sync", "--data", p(&a)]);
    assert!(o.stderr.contains("revoked"), "the sync says the device is revoked: {}", o.stderr);
    let st = status(&a);
    assert_eq!(st["hub_status"], "revoked", "{st}");
    assert!(st["last_error"].as_str().is_some_and(|e| e.contains("revoked")), "{st}");
    assert_eq!(lane(&st, "sales"), 1, "the sale stays queued on the revoked till");
    // It keeps failing, and keeps saying so.
    fails(&["sync", "--data", p(&a)]);
    assert_eq!(status(&a)["hub_status"], "revoked");

    let list = json(&["devices", "list", "--hub", &hub.url, "--token", &t.admin]);
    let by_id =
        |id: &str| list.as_array().expect("devices").iter().find(|d| d["device_id"] == id).map(|d| s(&d["status"]));
    assert_eq!(by_id(&dev_a).as_deref(), Some("revoked"), "{list}");
    assert_eq!(by_id(&dev_b).as_deref(), Some("active"), "{list}");
    assert_eq!(t.usage()["devices"], 1, "usage counts active devices only");

    // The other till is unaffected.
    let rb = sync(&b);
    assert!(rb["pulled"].as_u64().unwrap_or(0) >= 1, "{rb}");
    assert_eq!(status(&b)["hub_status"], "ok");
    assert_eq!(sales(&b).len(), 1);
}

#[test]
fn live_events_propagate_a_sale() {
    let tmp = TempDir::new().expect("tempdir");
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir);
    let hub = Hub::start(&hub_dir);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    t.enrol(&hub.url, &a, "Till A");
    t.enrol(&hub.url, &b, "Till B");

    // B syncs in the background every 60 s and on live events.
    let mut child = base_command()
        .args([
            "node",
            "run",
            "--data",
            p(&b),
            "--interval",
            "60",
            "--exit-after",
            "20",
            "--ui",
            "127.0.0.1:0",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node run");
    let errs = drain(child.stderr.take().expect("stderr"));
    let (tx, rx) = mpsc::channel::<String>();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        let mut line = String::new();
        while out.read_line(&mut line).is_ok_and(|n| n > 0) {
            let _ = tx.send(line.trim().to_string());
            line.clear();
        }
    });
    let runner = Bg(child);
    // The interval's first tick syncs at once; after it the event stream is
    // connected (it is opened when the runner starts).
    // The first line names the local API; then come the round reports.
    let api = rx.recv_timeout(Duration::from_secs(10)).expect("the runner's API address");
    let api: Value = serde_json::from_str(&api).expect("a JSON line");
    assert!(api["api"].as_str().is_some_and(|a| a.starts_with("http://127.0.0.1:")), "{api}");
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("the runner's first round");
    let first: Value = serde_json::from_str(&first).expect("a JSON round report");
    assert_eq!(first["pulled"], 0, "{first}");
    std::thread::sleep(Duration::from_millis(500));

    let sale = sell(&a, "CROISSANT:2");
    let started = Instant::now();
    let r = sync(&a);
    assert_eq!(r["pushed"], 1, "{r}");
    let id = s(&sale["sale_id"]);
    let seen = loop {
        if sale_ids(&b).contains(&id) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sale did not reach B within 10 s through live events"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("sale visible on B {seen:?} after A's sync");
    assert!(seen < Duration::from_secs(5), "live event path took {seen:?}");
    // The runner reported the round that pulled it.
    let mut pulled = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        let v: Value = serde_json::from_str(&line).expect("a JSON round report");
        pulled |= v["pulled"].as_u64().unwrap_or(0) >= 1;
    }
    assert!(pulled, "B's runner logged a round that pulled the sale");
    assert_eq!(stock(&b, "CROISSANT"), (58, false));
    drop(runner);
    let errs = errs.join().unwrap_or_default();
    assert!(!errs.contains("sync:"), "the runner reported sync errors: {errs}");
    assert_converged(&t, &[&a, &b]);
    drop(hub);
}
