//! Point-in-time export from the hub's change log, with real processes: a
//! hub, a till selling at known times, `till hub export` between the sales
//! and now, and after compaction.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_till");

fn till(args: &[&str]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run till")
}

fn ok(args: &[&str]) -> Value {
    let o = till(args);
    assert!(o.status.success(), "till {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

fn fails(args: &[&str]) -> String {
    let o = till(args);
    assert!(!o.status.success(), "till {args:?} should fail");
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(e.starts_with("error:") && e.trim().lines().count() == 1, "one-line error: {e}");
    e
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Hub {
    child: Child,
    url: String,
    dir: PathBuf,
    tenant: String,
    store: String,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hub {
    fn start(dir: &Path) -> Hub {
        let t = ok(&["hub", "tenant", "create", "Cafe", "--sample", "--data", p(dir), "--json"]);
        let tenant = t["tenant_id"].as_str().unwrap().to_string();
        let s = ok(&["hub", "store", "create", "--tenant", &tenant, "Main", "--data", p(dir), "--json"]);
        let mut child = Command::new(BIN)
            .args(["hub", "serve", "--data", p(dir), "--listen", "127.0.0.1:0", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = serde_json::from_str::<Value>(&line).unwrap()["url"].as_str().unwrap().to_string();
        Hub { child, url, dir: dir.to_path_buf(), tenant, store: s["store_id"].as_str().unwrap().to_string() }
    }

    fn code(&self) -> String {
        ok(&["hub", "enrol", "--tenant", &self.tenant, "--store", &self.store, "--data", p(&self.dir), "--json"])["code"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn export(&self, at: &str, out: &Path) -> Output {
        till(&[
            "hub",
            "export",
            "--data",
            p(&self.dir),
            "--tenant",
            &self.tenant,
            "--store",
            &self.store,
            "--at",
            at,
            "--out",
            p(out),
            "--json",
        ])
    }
}

fn sale_ids(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = ok(&["sales", "list", "--data", p(dir), "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sale_id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn digest(dir: &Path) -> String {
    ok(&["status", "--data", p(dir), "--json"])["state_digest"].as_str().unwrap().to_string()
}

fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64).unwrap().to_string()
}

#[test]
fn an_export_rebuilds_a_store_as_it_was_and_is_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"));
    let a = tmp.path().join("a");
    ok(&["node", "init", "--data", p(&a), "--hub", &hub.url, "--code", &hub.code(), "--json"]);
    let sell = |sku: &str| {
        ok(&["sale", "--data", p(&a), "--item", sku, "--pay", "cash", "--json"])["sale_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let early = vec![sell("ESPRESSO"), sell("LATTE")];
    ok(&["sync", "--data", p(&a), "--json"]);
    // The hub stamped those when it received them; the moment lies after.
    std::thread::sleep(Duration::from_millis(300));
    let between = now_ms();
    std::thread::sleep(Duration::from_millis(300));
    let late = sell("COOKIE");
    ok(&["product", "update", "--data", p(&a), "--sku", "LATTE", "--price", "9.90", "--json"]);
    ok(&["sync", "--data", p(&a), "--json"]);
    std::thread::sleep(Duration::from_millis(20));

    // At the moment between: exactly the earlier sales, the old price.
    let then = tmp.path().join("then");
    let o = hub.export(&rfc3339(between), &then);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(e["entries_after"].as_u64().unwrap() >= 2, "{e}");
    let mut want = early.clone();
    want.sort();
    assert_eq!(sale_ids(&then), want);
    let st = ok(&["status", "--data", p(&then), "--json"]);
    assert_eq!(st["mode"], "export", "{st}");
    assert_eq!(st["state_digest"], e["state_digest"]);
    let latte = ok(&["product", "show", "--data", p(&then), "--sku", "LATTE", "--json"]);
    assert_ne!(latte["price_minor"], 990, "the price before the update");
    ok(&["report", "--data", p(&then), "--json"]);

    // At now (in milliseconds): the till's state.
    let now = tmp.path().join("now");
    let o = hub.export(&now_ms().to_string(), &now);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(digest(&now), digest(&a));
    let mut all = [early.clone(), vec![late.clone()]].concat();
    all.sort();
    assert_eq!(sale_ids(&now), all);

    // Read-only: writing commands refuse and say why.
    let e = fails(&["sale", "--data", p(&now), "--item", "ESPRESSO", "--pay", "cash"]);
    assert!(e.contains("point-in-time export: read-only"), "{e}");
    let e = fails(&["product", "update", "--data", p(&now), "--sku", "LATTE", "--price", "1"]);
    assert!(e.contains("read-only"), "{e}");
    assert_eq!(sale_ids(&now), all, "nothing was written");

    // Refusals: an existing folder, an unknown store, a bad time.
    let o = hub.export(&now_ms().to_string(), &now);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("new folder"));
    let e = fails(&[
        "hub",
        "export",
        "--data",
        p(&hub.dir),
        "--tenant",
        &hub.tenant,
        "--store",
        &hub.tenant,
        "--at",
        "0",
        "--out",
        p(&tmp.path().join("x")),
    ]);
    assert!(e.contains("not found"), "{e}");
    let o = hub.export("yesterday", &tmp.path().join("y"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("RFC 3339"));
    assert!(!tmp.path().join("x").exists() && !tmp.path().join("y").exists());

    // After compaction, a moment older than what the log holds is refused,
    // naming the horizon; the present still exports.
    ok(&["hub", "compact", "--data", p(&hub.dir), "--tenant", &hub.tenant, "--keep", "1", "--json"]);
    let o = hub.export(&rfc3339(between), &tmp.path().join("gone"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("compacted") && err.contains("position"), "{err}");
    assert!(!tmp.path().join("gone").exists());
    let now2 = tmp.path().join("now2");
    let o = hub.export(&now_ms().to_string(), &now2);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(digest(&now2), digest(&a));
}
