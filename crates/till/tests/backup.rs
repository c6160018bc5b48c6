//! Backups with the real binary: round trip, damage, keys, SIGKILL during a
//! backup, a backup beside a selling process, and restore-then-sync on a hub.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sample_till(dir: &Path) {
    ok(&["node", "init", "--data", p(dir), "--offline", "--sample", "--json"]);
}

fn digest(dir: &Path) -> String {
    ok(&["status", "--data", p(dir), "--json"])["state_digest"].as_str().unwrap().to_string()
}

fn pass(dir: &Path, name: &str, text: &str) -> PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, format!("{text}\n")).unwrap();
    f
}

fn only_object(backups: &Path) -> PathBuf {
    std::fs::read_dir(backups)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tsb"))
        .expect("an object")
}

#[test]
fn round_trip_and_every_kind_of_damage_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, b) = (tmp.path().join("till"), tmp.path().join("backups"));
    sample_till(&t);
    for _ in 0..3 {
        ok(&["sale", "--data", p(&t), "--item", "LATTE:2", "--pay", "cash", "--json"]);
    }
    let pw = pass(tmp.path(), "pw", "correct horse battery staple");
    // Encryption is not optional.
    let e = fails(&["backup", "create", "--data", p(&t), "--to", p(&b)]);
    assert!(e.contains("--passphrase-file"), "{e}");
    let m = ok(&["backup", "create", "--data", p(&t), "--to", p(&b), "--passphrase-file", p(&pw), "--json"]);
    assert_eq!(m["format"], "tillsync-backup-v1");
    assert_eq!(m["mode"], "standalone");
    assert_eq!(m["plaintext_sha256"].as_str().unwrap().len(), 64);
    // The pages go into zstd decrypted, so the object is compressed: a
    // small till's pages are mostly empty space and repeated text.
    let (stored, plain) = (m["stored_bytes"].as_u64().unwrap(), m["plaintext_bytes"].as_u64().unwrap());
    assert!(plain > 16 && (plain - 16) % 4096 == 0, "a header and whole pages: {plain} bytes");
    assert!(stored > 0 && stored * 4 < plain, "stored {stored} for {plain}: not compressed");
    let obj = only_object(&b);
    let raw = std::fs::read(&obj).unwrap();
    assert!(raw.starts_with(b"age-encryption.org/v1"), "age-encrypted");
    assert!(!raw.windows(7).any(|w| w == b"Caffe l"), "no plaintext product name in the object");
    let list = ok(&["backup", "list", "--from", p(&b), "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let v = ok(&["backup", "verify", "--from", p(&b), "--passphrase-file", p(&pw), "--json"]);
    assert_eq!(v["integrity"], "ok");
    assert_eq!(v["sales"], 3);
    // Restore: the same digest; restoring over a till is refused.
    let r = tmp.path().join("restored");
    ok(&["backup", "restore", "--from", p(&b), "--into", p(&r), "--passphrase-file", p(&pw), "--json"]);
    assert_eq!(digest(&r), digest(&t));
    // A standalone till keeps its identity: the same device and receipts.
    let (before, after) = (ok(&["status", "--data", p(&t), "--json"]), ok(&["status", "--data", p(&r), "--json"]));
    assert_eq!(after["device_id"], before["device_id"]);
    assert_eq!(after["receipt_prefix"], before["receipt_prefix"]);
    let e = fails(&["backup", "restore", "--from", p(&b), "--into", p(&t), "--passphrase-file", p(&pw)]);
    assert!(e.contains("already holds a till"), "{e}");
    // A wrong passphrase.
    let bad = pass(tmp.path(), "bad", "not the passphrase at all");
    let e = fails(&["backup", "verify", "--from", p(&b), "--passphrase-file", p(&bad)]);
    assert!(e.contains("wrong passphrase"), "{e}");
    // A flipped byte in the stored object (past the header).
    let mut flipped = raw.clone();
    let i = flipped.len() - 100;
    flipped[i] ^= 0x40;
    std::fs::write(&obj, &flipped).unwrap();
    let e = fails(&["backup", "verify", "--from", p(&b), "--passphrase-file", p(&pw)]);
    assert!(e.contains("damaged"), "{e}");
    // A truncated object.
    std::fs::write(&obj, &raw[..raw.len() / 2]).unwrap();
    let e = fails(&["backup", "verify", "--from", p(&b), "--passphrase-file", p(&pw)]);
    assert!(e.contains("damaged"), "{e}");
    // A restore from a damaged object leaves nothing behind.
    let r2 = tmp.path().join("restored2");
    fails(&["backup", "restore", "--from", p(&b), "--into", p(&r2), "--passphrase-file", p(&pw)]);
    assert!(!r2.join("till.db").exists());
    std::fs::write(&obj, &raw).unwrap();
    ok(&["backup", "verify", "--from", p(&b), "--passphrase-file", p(&pw), "--json"]);
}

/// A new age X25519 key: its identity written to `file`, and its recipient.
fn age_key(file: PathBuf) -> (PathBuf, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    std::fs::write(&file, format!("{}\n", id.to_string().expose_secret())).unwrap();
    (file, id.to_public().to_string())
}

#[test]
fn recipient_keys_and_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, b) = (tmp.path().join("till"), tmp.path().join("backups"));
    sample_till(&t);
    let (idf, recipient) = age_key(tmp.path().join("id.txt"));
    let mut ids = vec![];
    for i in 0..3 {
        ok(&["sale", "--data", p(&t), "--item", "COOKIE", "--pay", "cash", "--json"]);
        let m = ok(&["backup", "create", "--data", p(&t), "--to", p(&b), "--recipient", &recipient, "--json"]);
        assert_eq!(m["encryption"], "recipient");
        ids.push(m["backup_id"].as_str().unwrap().to_string());
        if i < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let v = ok(&["backup", "verify", "--from", p(&b), "--identity", p(&idf), "--json"]);
    assert_eq!(v["backup_id"], ids[2].as_str(), "the newest by default");
    assert_eq!(v["sales"], 3);
    let v = ok(&["backup", "verify", "--from", p(&b), &ids[0], "--identity", p(&idf), "--json"]);
    assert_eq!(v["sales"], 1);
    let (of, _) = age_key(tmp.path().join("other.txt"));
    let e = fails(&["backup", "verify", "--from", p(&b), "--identity", p(&of)]);
    assert!(e.contains("wrong passphrase or identity"), "{e}");
    let r = ok(&["backup", "prune", "--from", p(&b), "--keep", "1", "--json"]);
    assert_eq!(r["removed"].as_array().unwrap().len(), 2);
    let list = ok(&["backup", "list", "--from", p(&b), "--json"]);
    let left: Vec<&str> = list.as_array().unwrap().iter().map(|m| m["backup_id"].as_str().unwrap()).collect();
    assert_eq!(left, [ids[2].as_str()]);
    fails(&["backup", "prune", "--from", p(&b), "--keep", "0"]);
}

#[test]
fn a_backup_killed_half_way_is_never_listed_and_the_next_one_works() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, b) = (tmp.path().join("till"), tmp.path().join("backups"));
    sample_till(&t);
    let pw = pass(tmp.path(), "pw", "correct horse battery staple");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..6 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = 20 + seed % 900;
        let mut child = Command::new(BIN)
            .args(["backup", "create", "--data", p(&t), "--to", p(&b), "--passphrase-file", p(&pw), "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let listed = ok(&["backup", "list", "--from", p(&b), "--json"]);
        for m in listed.as_array().unwrap() {
            // Whatever is listed is whole.
            let v = ok(&[
                "backup",
                "verify",
                "--from",
                p(&b),
                m["backup_id"].as_str().unwrap(),
                "--passphrase-file",
                p(&pw),
                "--json",
            ]);
            assert_eq!(v["integrity"], "ok", "round {round} (killed after {delay} ms, {status:?})");
        }
    }
    let before = ok(&["backup", "list", "--from", p(&b), "--json"]).as_array().unwrap().len();
    ok(&["backup", "create", "--data", p(&t), "--to", p(&b), "--passphrase-file", p(&pw), "--json"]);
    assert_eq!(ok(&["backup", "list", "--from", p(&b), "--json"]).as_array().unwrap().len(), before + 1);
    let leftovers: Vec<String> = std::fs::read_dir(&t)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".snapshot.db") || n.ends_with(".object"))
        .collect();
    assert!(leftovers.is_empty(), "a new backup clears a killed one's work files: {leftovers:?}");
}

#[test]
fn a_backup_beside_a_selling_process_is_consistent_and_does_not_stall_sales() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, b) = (tmp.path().join("till"), tmp.path().join("backups"));
    sample_till(&t);
    let pw = pass(tmp.path(), "pw", "correct horse battery staple");
    let mut child = Command::new(BIN)
        .args(["sell-loop", "--data", p(&t), "--count", "400", "--latency"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let reader = std::thread::spawn(move || out.lines().map_while(Result::ok).collect::<Vec<String>>());
    let _bg = Bg(child);
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let m = ok(&["backup", "create", "--data", p(&t), "--to", p(&b), "--passphrase-file", p(&pw), "--json"]);
    let took = started.elapsed();
    let lines = reader.join().unwrap();
    assert_eq!(lines.len(), 400, "the seller finished");
    let worst_us: u64 =
        lines.iter().map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()).max().unwrap();
    assert!(worst_us < 100_000, "a sale waited {worst_us} us during a {took:?} backup");
    let v = ok(&["backup", "verify", "--from", p(&b), "--passphrase-file", p(&pw), "--json"]);
    assert_eq!(v["integrity"], "ok");
    let n = v["sales"].as_u64().unwrap();
    assert!(n <= 400, "{n}");
    assert_eq!(m["backup_id"], v["backup_id"]);
}

struct Hub {
    _child: Bg,
    url: String,
    dir: PathBuf,
    tenant: String,
    admin: String,
    store: String,
}

impl Hub {
    fn start(dir: &Path) -> Hub {
        let t = ok(&["hub", "tenant", "create", "Cafe", "--sample", "--data", p(dir), "--json"]);
        let tenant = t["tenant_id"].as_str().unwrap().to_string();
        let admin = t["admin_token"].as_str().unwrap().to_string();
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
        Hub {
            _child: Bg(child),
            url,
            dir: dir.to_path_buf(),
            tenant,
            admin,
            store: s["store_id"].as_str().unwrap().to_string(),
        }
    }

    fn code(&self) -> String {
        ok(&["hub", "enrol", "--tenant", &self.tenant, "--store", &self.store, "--data", p(&self.dir), "--json"])["code"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn digest(&self) -> String {
        ok(&["hub", "digest", "--tenant", &self.tenant, "--store", &self.store, "--data", p(&self.dir), "--json"])["state_digest"]
            .as_str()
            .unwrap()
            .to_string()
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

#[test]
fn a_till_restored_from_an_older_backup_loses_and_doubles_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"));
    let (a, b, bk) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("backups"));
    ok(&["node", "init", "--data", p(&a), "--hub", &hub.url, "--code", &hub.code(), "--json"]);
    ok(&["node", "init", "--data", p(&b), "--hub", &hub.url, "--code", &hub.code(), "--json"]);
    let pw = pass(tmp.path(), "pw", "correct horse battery staple");
    let sell = |d: &Path| {
        ok(&["sale", "--data", p(d), "--item", "ESPRESSO", "--pay", "cash", "--json"])["sale_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut sold = vec![sell(&a), sell(&a)];
    ok(&["sync", "--data", p(&a), "--json"]);
    // One sale is still unsynced when the backup is taken.
    sold.push(sell(&a));
    ok(&["backup", "create", "--data", p(&a), "--to", p(&bk), "--passphrase-file", p(&pw), "--json"]);
    // The till goes on: it syncs that sale and sells more, then dies.
    sold.push(sell(&a));
    ok(&["sync", "--data", p(&a), "--json"]);
    let old_device = ok(&["status", "--data", p(&a), "--json"])["device_id"].as_str().unwrap().to_string();
    let old_prefix = ok(&["status", "--data", p(&a), "--json"])["receipt_prefix"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(&a).unwrap();
    // Without a code, a hub till cannot come back.
    let r = tmp.path().join("restored");
    let e = fails(&["backup", "restore", "--from", p(&bk), "--into", p(&r), "--passphrase-file", p(&pw)]);
    assert!(e.contains("--code"), "{e}");
    let out = ok(&[
        "backup",
        "restore",
        "--from",
        p(&bk),
        "--into",
        p(&r),
        "--passphrase-file",
        p(&pw),
        "--code",
        &hub.code(),
        "--json",
    ]);
    assert_ne!(out["device_id"].as_str().unwrap(), old_device, "a new device");
    assert_ne!(out["receipt_prefix"].as_str().unwrap(), old_prefix, "a new receipt prefix");
    // Its new device token is in its encrypted database, not in a file.
    assert!(!r.join("device.token").exists());
    let token = tillsync_store::read_meta(&r, "device_token").unwrap().expect("the new device token");
    assert!(token.starts_with("tsd_"));
    // It sells on with its own receipts and sequences.
    let new_sale = ok(&["sale", "--data", p(&r), "--item", "ESPRESSO", "--pay", "cash", "--json"]);
    assert!(new_sale["receipt"].as_str().unwrap().starts_with(out["receipt_prefix"].as_str().unwrap()));
    sold.push(new_sale["sale_id"].as_str().unwrap().to_string());
    for _ in 0..2 {
        ok(&["sync", "--data", p(&r), "--json"]);
        ok(&["sync", "--data", p(&b), "--json"]);
    }
    sold.sort();
    assert_eq!(sale_ids(&b), sold, "every sale once on the other till");
    assert_eq!(sale_ids(&r), sold, "and on the restored till");
    let d = hub.digest();
    assert_eq!(digest(&b), d);
    assert_eq!(digest(&r), d);
}

#[test]
fn scheduled_backups_run_in_node_run_and_show_in_status() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"));
    let (a, bk) = (tmp.path().join("a"), tmp.path().join("backups"));
    ok(&["node", "init", "--data", p(&a), "--hub", &hub.url, "--code", &hub.code(), "--json"]);
    let pw = pass(tmp.path(), "pw", "correct horse battery staple");
    // A schedule needs a destination first.
    let o = till(&["config", "set", "--data", p(&a), "backup.interval_s", "5"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("backup.destination"));
    ok(&["config", "set", "--data", p(&a), "backup.destination", p(&bk), "--json"]);
    ok(&["config", "set", "--data", p(&a), "backup.passphrase_file", p(&pw), "--json"]);
    ok(&["config", "set", "--data", p(&a), "backup.keep", "1", "--json"]);
    ok(&["config", "set", "--data", p(&a), "backup.interval_s", "5", "--json"]);
    let st = ok(&["status", "--data", p(&a), "--json"]);
    assert!(st["last_backup_at"].is_null(), "{st}");
    let child = Command::new(BIN)
        .args(["node", "run", "--data", p(&a), "--ui", "127.0.0.1:0", "--exit-after", "90", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _bg = Bg(child);
    // Each backup pays age's scrypt work factor (about 1 s on a quiet
    // machine, several under a loaded CI): the deadline leaves room for
    // that; the loop ends as soon as two rounds have been seen.
    let end = Instant::now() + Duration::from_secs(75);
    let mut seen = 0;
    while Instant::now() < end {
        let list = ok(&["backup", "list", "--from", p(&bk), "--json"]);
        let st = ok(&["status", "--data", p(&a), "--json"]);
        if st["last_backup_at"].is_u64() {
            assert!(st["last_backup_error"].is_null(), "{st}");
            assert!(list.as_array().unwrap().len() <= 1, "retention keeps one");
            seen += 1;
            if seen >= 2 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(seen >= 1, "no scheduled backup within the time");
    ok(&["backup", "verify", "--from", p(&bk), "--passphrase-file", p(&pw), "--json"]);
}

#[test]
fn a_standalone_till_attaches_to_a_hub_with_its_history() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"));
    let (solo, other) = (tmp.path().join("solo"), tmp.path().join("other"));
    sample_till(&solo);
    ok(&["product", "add", "--data", p(&solo), "--sku", "SOLO1", "--name", "Solo item", "--price", "3", "--json"]);
    let sale = ok(&["sale", "--data", p(&solo), "--item", "SOLO1:2", "--item", "ESPRESSO", "--pay", "cash", "--json"]);
    let before = ok(&["status", "--data", p(&solo), "--json"]);
    let r = ok(&["node", "attach", "--data", p(&solo), "--hub", &hub.url, "--code", &hub.code(), "--json"]);
    assert!(r["sync_error"].is_null(), "{r}");
    assert!(r["ledger_rows"].as_u64().unwrap() > 0, "{r}");
    assert!(Path::new(r["old_data"].as_str().unwrap()).join("till.db").exists(), "the standalone folder is kept");
    let after = ok(&["status", "--data", p(&solo), "--json"]);
    assert_eq!(after["mode"], "hub");
    assert_ne!(after["device_id"], before["device_id"], "a new device of the hub");
    assert_eq!(after["pending_total"], 0, "its history was pushed: {after}");
    // Another till of the store sees the standalone till's sale and product.
    ok(&["node", "init", "--data", p(&other), "--hub", &hub.url, "--code", &hub.code(), "--json"]);
    let ids = sale_ids(&other);
    assert!(ids.contains(&sale["sale_id"].as_str().unwrap().to_string()), "{ids:?}");
    assert_eq!(ok(&["product", "show", "--data", p(&other), "--sku", "SOLO1", "--json"])["price_minor"], 300);
    ok(&["sync", "--data", p(&solo), "--json"]);
    assert_eq!(digest(&solo), hub.digest());
    assert_eq!(digest(&other), hub.digest());
    // Attaching twice is refused.
    let e = fails(&["node", "attach", "--data", p(&solo), "--hub", &hub.url, "--code", &hub.code()]);
    assert!(e.contains("already syncs"), "{e}");
}

#[test]
fn backups_kept_by_the_hub_outlive_the_till_and_count_in_its_quota() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"));
    let a = tmp.path().join("a");
    ok(&["node", "init", "--data", p(&a), "--hub", &hub.url, "--code", &hub.code(), "--json"]);
    let pw = pass(tmp.path(), "pw", "correct horse battery staple");
    let sale = |d: &Path| ok(&["sale", "--data", p(d), "--item", "ESPRESSO", "--pay", "cash", "--json"]);
    sale(&a);
    let create =
        |d: &Path| ok(&["backup", "create", "--data", p(d), "--to", "hub", "--passphrase-file", p(&pw), "--json"]);
    let first = create(&a);
    sale(&a);
    let second = create(&a);
    ok(&["sync", "--data", p(&a), "--json"]);
    // The till sees its own backups on the hub; usage counts them.
    let list = ok(&["backup", "list", "--from", "hub", "--till", p(&a), "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let usage = ok(&["hub", "usage", "--tenant", &hub.tenant, "--data", p(&hub.dir), "--json"]);
    let stored = first["stored_bytes"].as_u64().unwrap() + second["stored_bytes"].as_u64().unwrap();
    assert!(usage["backup_bytes"].as_u64().unwrap() >= stored, "usage counts the backups: {usage}");
    // Past the tenant's backup quota, a backup is refused clearly and
    // leaves nothing listed.
    ok(&["hub", "quota", "--tenant", &hub.tenant, "--backup-bytes", "1000", "--data", p(&hub.dir), "--json"]);
    let e = fails(&["backup", "create", "--data", p(&a), "--to", "hub", "--passphrase-file", p(&pw)]);
    assert!(e.contains("quota"), "{e}");
    assert_eq!(ok(&["backup", "list", "--from", "hub", "--till", p(&a), "--json"]).as_array().unwrap().len(), 2);
    ok(&["hub", "quota", "--tenant", &hub.tenant, "--backup-bytes", "0", "--data", p(&hub.dir), "--json"]);
    // Retention on the hub, from the till.
    ok(&["backup", "prune", "--from", "hub", "--till", p(&a), "--keep", "1", "--json"]);
    let list = ok(&["backup", "list", "--from", "hub", "--till", p(&a), "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let device = ok(&["status", "--data", p(&a), "--json"])["device_id"].as_str().unwrap().to_string();
    let want = digest(&a);

    // The till is gone: the owner finds, verifies and restores its backup
    // with the tenant's admin token.
    std::fs::remove_dir_all(&a).unwrap();
    let admin = ["--from", "hub", "--hub", hub.url.as_str(), "--token", hub.admin.as_str()];
    let mut args = vec!["backup", "list"];
    args.extend(admin);
    args.push("--json");
    let list = ok(&args);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["device_id"].as_str(), Some(device.as_str()));
    assert_eq!(list[0]["backup_id"], second["backup_id"], "the newest was kept");
    let mut args = vec!["backup", "verify"];
    args.extend(admin);
    args.extend(["--passphrase-file", p(&pw), "--json"]);
    ok(&args);
    // Another tenant's admin token sees nothing of it.
    let other = ok(&["hub", "tenant", "create", "Other", "--data", p(&hub.dir), "--json"]);
    let list = ok(&[
        "backup",
        "list",
        "--from",
        "hub",
        "--hub",
        &hub.url,
        "--token",
        other["admin_token"].as_str().unwrap(),
        "--json",
    ]);
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    // Restored as a new device; after syncing it holds what the till had.
    let r = tmp.path().join("restored");
    let code = hub.code();
    let mut args = vec!["backup", "restore"];
    args.extend(admin);
    args.extend(["--into", p(&r), "--passphrase-file", p(&pw), "--code", &code, "--json"]);
    ok(&args);
    ok(&["sync", "--data", p(&r), "--json"]);
    assert_eq!(digest(&r), want);
    assert_eq!(digest(&r), hub.digest());
}

/// Runs `till ARGS` with stderr on a terminal: util-linux's `script` gives
/// it a pseudo-terminal and copies what it writes there to our stdout.
fn on_a_terminal(args: &[&str]) -> String {
    let line = std::iter::once(BIN).chain(args.iter().copied()).map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
    let o = Command::new("script")
        .args(["-qec", &format!("{line} >/dev/null"), "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("run script (util-linux)");
    assert!(o.status.success(), "till {args:?} on a terminal failed: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn progress_bars_show_on_a_terminal_and_nothing_extra_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, b) = (tmp.path().join("till"), tmp.path().join("backups"));
    sample_till(&t);
    let (idf, recipient) = age_key(tmp.path().join("id.txt"));
    let r = tmp.path().join("restored");
    let runs: [(&str, Vec<&str>); 3] = [
        ("backup", vec!["backup", "create", "--data", p(&t), "--to", p(&b), "--recipient", &recipient]),
        ("verify", vec!["backup", "verify", "--from", p(&b), "--identity", p(&idf)]),
        ("restore", vec!["backup", "restore", "--from", p(&b), "--into", p(&r), "--identity", p(&idf)]),
    ];
    for (what, args) in &runs {
        let shown = on_a_terminal(args);
        assert!(
            shown.contains(what) && shown.contains("[") && shown.contains("B/"),
            "{what}: a byte progress bar on the terminal: {shown:?}"
        );
    }
    // Not a terminal: stderr stays empty and stdout is the JSON alone.
    std::fs::remove_dir_all(&r).unwrap();
    for (what, args) in runs {
        let args: Vec<&str> = args.into_iter().chain(["--json"]).collect();
        let o = till(&args);
        assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stderr.is_empty(), "{what}: nothing on stderr: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap_or_else(|e| panic!("{what}: JSON only on stdout: {e}"));
    }
}
