//! Leak scan (issue 8): a hub and two enrolled tills run as real processes
//! through sales (cash and card with brand and last four), a customer,
//! catalogue edits, sync both ways, backups to a folder and to the hub, a
//! restore and a key rotation; then every byte they left is scanned: the
//! hub's folder (databases, WAL files, stored backup objects), every till
//! database decrypted with its key and raw (with its WAL), the processes'
//! output, and the backups raw and decrypted with the test passphrase.
//! Nothing may hold a card number (Luhn-valid, 13 to 19 digits in a
//! card brand's range), a raw device or admin token, a till's key or the
//! test passphrase; the encrypted till files hold no product name.
//!
//! The scanner is restated here, independently of the core's card check,
//! so a bug there cannot hide a leak; `scanner_finds_what_is_planted`
//! shows it can fail.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The scanner
// ---------------------------------------------------------------------------

/// One thing found, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hit {
    what: String,
    place: String,
    offset: usize,
}

impl std::fmt::Display for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} in {} at byte {}", self.what, self.place, self.offset)
    }
}

/// Looks for card numbers and named secrets in bytes; collects hits.
#[derive(Default)]
struct Scanner {
    secrets: Vec<(String, Vec<u8>)>,
    hits: Vec<Hit>,
    /// What was scanned (places), to show the scan covered something.
    places: Vec<String>,
    bytes: u64,
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 { if d > 4 { d * 2 - 9 } else { d * 2 } } else { d }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A card number: in the range and length of a major brand (Visa,
/// Mastercard, Amex, Diners, JCB, Discover, UnionPay) and Luhn-valid.
/// The ranges keep timestamps (13 digits starting with 1) and the like out.
fn plausible_pan(d: &[u8]) -> bool {
    let n = d.len();
    let p2: u32 = if n >= 2 { u32::from(d[0] - b'0') * 10 + u32::from(d[1] - b'0') } else { 0 };
    let p4: u32 = d.iter().take(4).fold(0, |a, &c| a * 10 + u32::from(c - b'0'));
    let brand = match d.first() {
        Some(b'4') => matches!(n, 13 | 16 | 19),
        Some(b'5') => (51..=55).contains(&p2) && n == 16,
        Some(b'2') => (2221..=2720).contains(&p4) && n == 16,
        Some(b'3') => {
            (matches!(p2, 34 | 37) && n == 15)
                || (matches!(p2, 30 | 36 | 38) && n == 14)
                || (p2 == 35 && (16..=19).contains(&n))
        }
        Some(b'6') => (16..=19).contains(&n),
        _ => false,
    };
    brand && luhn(d)
}

/// Runs of digits (single spaces or dashes allowed between digits) that
/// stand alone (no letter or digit right before or after), with their
/// offsets: a card number typed into text looks like this; a run inside
/// a hex digest does not stand alone. Nor does the start of a UUID whose
/// first three groups happen to be all digits (8-4-4, then a dash and a
/// letter): no card is written in groups of eight, and a hashed id (the
/// hub's derived ids) is like that about once in ten thousand, which once
/// failed this test.
fn digit_runs(b: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
            i += 1;
            continue;
        }
        let start = i;
        let mut digits = vec![];
        let mut j = i;
        loop {
            if j < b.len() && b[j].is_ascii_digit() {
                digits.push(b[j]);
                j += 1;
            } else if j + 1 < b.len() && (b[j] == b' ' || b[j] == b'-') && b[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        let uuid_start = b.get(start + 8) == Some(&b'-') && b[start..start + 8].iter().all(u8::is_ascii_digit);
        let before_letter = j < b.len() && b[j].is_ascii_alphabetic();
        if !before_letter && !uuid_start {
            out.push((start, digits));
        }
        i = j.max(i + 1);
    }
    out
}

impl Scanner {
    fn secret(&mut self, label: &str, value: &str) {
        assert!(value.len() >= 8, "a secret to scan for must be long enough not to match by chance: {label}");
        self.secrets.push((label.to_string(), value.as_bytes().to_vec()));
    }

    /// Scans `bytes`, found at `place`.
    fn scan(&mut self, place: &str, bytes: &[u8]) {
        self.places.push(place.to_string());
        self.bytes += bytes.len() as u64;
        for (off, d) in digit_runs(bytes) {
            if (13..=19).contains(&d.len()) && plausible_pan(&d) {
                let shown =
                    format!("{}...{}", String::from_utf8_lossy(&d[..6]), String::from_utf8_lossy(&d[d.len() - 4..]));
                self.hits.push(Hit { what: format!("card number {shown}"), place: place.to_string(), offset: off });
            }
        }
        for (label, s) in &self.secrets {
            let mut from = 0;
            while let Some(at) = find(&bytes[from..], s) {
                self.hits.push(Hit { what: label.clone(), place: place.to_string(), offset: from + at });
                from += at + 1;
            }
        }
    }

    fn scan_file(&mut self, path: &Path) {
        if let Ok(b) = std::fs::read(path) {
            self.scan(&path.display().to_string(), &b);
        }
    }

    /// Every file under `dir`, except key and passphrase files (`skip`
    /// says which by name).
    fn scan_tree(&mut self, dir: &Path, skip: &dyn Fn(&Path) -> bool) {
        for f in files_under(dir) {
            if !skip(&f) {
                self.scan_file(&f);
            }
        }
    }

    fn report(&self) -> String {
        self.hits.iter().map(|h| format!("  {h}\n")).collect()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every value of every table of an open database, one per line
/// (integers in decimal: a card number stored as a number counts too).
fn dump(conn: &rusqlite::Connection) -> Vec<u8> {
    use rusqlite::types::ValueRef;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = vec![];
    for t in tables {
        let mut st = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..n {
                match r.get_ref(i).unwrap() {
                    ValueRef::Text(b) | ValueRef::Blob(b) => out.extend_from_slice(b),
                    ValueRef::Integer(v) => out.extend_from_slice(v.to_string().as_bytes()),
                    ValueRef::Real(v) => out.extend_from_slice(v.to_string().as_bytes()),
                    ValueRef::Null => {}
                }
                out.push(b'\n');
            }
        }
    }
    out
}

#[test]
fn scanner_finds_what_is_planted() {
    let mut sc = Scanner::default();
    sc.secret("the admin token", "tsa_0123456789abcdef");
    sc.secret("the test passphrase", "correct horse battery");
    // Planted: a Visa test number in JSON, a Mastercard one with spaces, an
    // Amex one with dashes, the token inside a longer string, the passphrase.
    let planted = br#"{"note":"4111111111111111"} paid 5555 5555 5555 4444; amex 3782-822463-10005
        header Bearer tsa_0123456789abcdef; pass=correct horse battery"#;
    sc.scan("planted", planted);
    let whats: Vec<&str> = sc.hits.iter().map(|h| h.what.as_str()).collect();
    assert_eq!(
        whats,
        [
            "card number 411111...1111",
            "card number 555555...4444",
            "card number 378282...0005",
            "the admin token",
            "the test passphrase"
        ],
        "{}",
        sc.report()
    );
    assert_eq!(sc.hits[0].offset, 9, "the hit says where");
    assert_eq!(sc.hits[0].place, "planted");

    // Not card numbers: a Luhn-invalid number, a millisecond timestamp and
    // an HLC reading (they start with 1), digits inside a hex digest, the
    // last four alone, a Luhn-valid number too short for any brand, and a
    // UUID whose first sixteen digits are a Luhn-valid Visa number.
    let mut clean = Scanner::default();
    clean.scan(
        "clean",
        b"4111111111111112 1764254165123 115647380242726912 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 last4 4242 42424242424 \"41111111-1111-8009-b111-111111111111\"",
    );
    assert!(clean.hits.is_empty(), "{}", clean.report());
    assert!(!luhn(b"4111111111111112") && luhn(b"4111111111111111"));
    assert!(plausible_pan(b"4242424242424242") && !plausible_pan(b"1764254165123"));
}

// ---------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------

/// The backups' passphrase of the scenario (must never be found).
const TEST_PASSPHRASE: &str = "leak-scan test passphrase 7f3c";

/// Every command's output, kept for the scan.
#[derive(Default)]
struct Log {
    text: Vec<u8>,
}

impl Log {
    fn run(&mut self, args: &[&str]) -> Out {
        // What the process printed (not its arguments: those are the
        // test's input, card numbers typed to be refused included).
        let o = till_env(args, &[], CMD_TIMEOUT * 2);
        self.text.extend_from_slice(o.stdout.as_bytes());
        self.text.extend_from_slice(o.stderr.as_bytes());
        o
    }

    fn json(&mut self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.run(&a);
        assert_eq!(o.code, 0, "{}", o.describe(&a));
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("no JSON from `till {}`: {e}", a.join(" ")))
    }

    fn fails(&mut self, args: &[&str]) -> Out {
        let o = self.run(args);
        assert_ne!(o.code, 0, "expected a failure: {}", o.describe(args));
        o
    }
}

/// A background `till` process whose stdout and stderr go to files.
struct Logged {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Logged {
    fn start(args: &[&str], logs: &Path, name: &str) -> Logged {
        std::fs::create_dir_all(logs).unwrap();
        let out = logs.join(format!("{name}.stdout"));
        let err = logs.join(format!("{name}.stderr"));
        let child = base_command()
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn till");
        Logged { child, out, err }
    }

    /// The first line of stdout (a JSON document), waited for.
    fn first_line(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
                return serde_json::from_str(line).unwrap_or_else(|e| panic!("bad first line {line:?}: {e}"));
            }
            assert!(
                Instant::now() < deadline,
                "no first line; stderr: {}",
                std::fs::read_to_string(&self.err).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("till.key")).expect("the till's key file").trim().to_string()
}

fn token_of(dir: &Path) -> String {
    tillsync_store::read_meta(dir, "device_token").expect("read the till").expect("a device token")
}

/// Key and passphrase files are where secrets belong: not scanned for them.
fn is_key_material(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".key") || name.ends_with(".key.next") || name == "passphrase.txt"
}

#[test]
fn nothing_leaks_from_an_end_to_end_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (hub_dir, a, b, r) = (root.join("hub"), root.join("till-a"), root.join("till-b"), root.join("till-r"));
    let media = root.join("media");
    std::fs::create_dir_all(&media).unwrap();
    let logs = root.join("logs");
    let folder_backups = root.join("backups");
    let pass_file = root.join("passphrase.txt");
    std::fs::write(&pass_file, TEST_PASSPHRASE).unwrap();
    let mut log = Log::default();

    // A hub with a sample tenant and a store. `tenant create` shows the
    // admin token once, to the operator, by design: its output is the one
    // not scanned.
    let t = json(&["hub", "tenant", "create", "Leak Cafe", "--sample", "--data", p(&hub_dir)]);
    let (tenant, admin) = (s(&t["tenant_id"]), s(&t["admin_token"]));
    let st = log.json(&["hub", "store", "create", "--tenant", &tenant, "High Street", "--data", p(&hub_dir)]);
    let store = s(&st["store_id"]);
    let mut hub =
        Logged::start(&["hub", "serve", "--data", p(&hub_dir), "--listen", "127.0.0.1:0", "--json"], &logs, "hub");
    let url = s(&hub.first_line()["url"]);
    let code = |log: &mut Log| {
        s(&log.json(&["hub", "enrol", "--tenant", &tenant, "--store", &store, "--data", p(&hub_dir)])["code"])
    };

    // Till A keeps its key in its folder; till B on "removable media".
    let c = code(&mut log);
    log.json(&["node", "init", "--data", p(&a), "--hub", &url, "--code", &c, "--name", "Front"]);
    let c = code(&mut log);
    let b_key_file = media.join("b.key");
    log.json(&[
        "node",
        "init",
        "--data",
        p(&b),
        "--hub",
        &url,
        "--code",
        &c,
        "--name",
        "Back",
        "--key-file",
        p(&b_key_file),
    ]);
    assert_eq!(log.json(&["status", "--data", p(&a)])["encryption"], "sqlcipher");
    assert_eq!(log.json(&["status", "--data", p(&b)])["encryption"], "sqlcipher");
    assert!(!a.join("device.token").exists() && !b.join("device.token").exists(), "the token is not a file");
    let b_old_key = std::fs::read_to_string(&b_key_file).unwrap().trim().to_string();

    // A runs in the background (sync on every write, live events).
    let mut node_a = Logged::start(&["node", "run", "--data", p(&a), "--ui", "127.0.0.1:0"], &logs, "node-a");

    // Sales: cash, card with brand and last four, split; a customer.
    let cust = log.json(&[
        "customer",
        "add",
        "--data",
        p(&a),
        "--name",
        "Ada Lovelace",
        "--email",
        "ada@example.com",
        "--phone",
        "+44 20 7946 0018",
    ]);
    let cust_id = s(&cust["customer_id"]);
    log.json(&["sale", "--data", p(&a), "--item", "CAPPUCCINO:2", "--pay", "cash", "--staff", "Sam"]);
    log.json(&[
        "sale",
        "--data",
        p(&a),
        "--item",
        "CROISSANT",
        "--pay",
        "card",
        "--card-brand",
        "visa",
        "--card-last4",
        "4242",
        "--customer",
        &cust_id,
    ]);
    log.json(&[
        "sale",
        "--data",
        p(&a),
        "--item",
        "LATTE",
        "--pay",
        "cash:1.00",
        "--pay",
        "card",
        "--card-brand",
        "amex",
        "--card-last4",
        "0005",
    ]);
    // A full card number where the last four go is refused, and not echoed
    // (the output is scanned with everything else).
    log.fails(&["sale", "--data", p(&a), "--item", "LATTE", "--pay", "card", "--card-last4", "4111111111111111"]);
    log.fails(&["sale", "--data", p(&a), "--item", "LATTE", "--pay", "card", "--card-last4", "5555 5555 5555 4444"]);

    // Catalogue edits on B, and a card sale there.
    log.json(&[
        "product",
        "add",
        "--data",
        p(&b),
        "--sku",
        "LEAK-SCONE",
        "--name",
        "Cheddar and chive scone",
        "--price",
        "3.10",
        "--category",
        "Bakery",
    ]);
    log.json(&["product", "update", "--data", p(&b), "--sku", "CAPPUCCINO", "--price", "3.65"]);
    log.json(&[
        "sale",
        "--data",
        p(&b),
        "--item",
        "LEAK-SCONE",
        "--pay",
        "card",
        "--card-brand",
        "mastercard",
        "--card-last4",
        "4444",
    ]);

    // Sync both ways: B pushes, A (running) pulls on the hub's event; B pulls A's sales.
    log.json(&["sync", "--data", p(&b)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = log.run(&["product", "show", "--data", p(&a), "--sku", "LEAK-SCONE", "--json"]);
        if o.code == 0 && log.json(&["status", "--data", p(&a)])["pending_total"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "A never got B's product or never pushed its sales");
        std::thread::sleep(Duration::from_millis(200));
    }
    log.json(&["sync", "--data", p(&b)]);
    let b_sales = log.json(&["sales", "list", "--data", p(&b), "--limit", "1000"]);
    assert_eq!(b_sales.as_array().unwrap().len(), 4, "B holds A's three sales and its own: {b_sales}");

    // Backups: A to a folder, B to the hub; both verified; B's restored as
    // a new device.
    log.json(&["backup", "create", "--data", p(&a), "--to", p(&folder_backups), "--passphrase-file", p(&pass_file)]);
    log.json(&["backup", "create", "--data", p(&b), "--to", "hub", "--passphrase-file", p(&pass_file)]);
    log.json(&["backup", "verify", "--from", p(&folder_backups), "--passphrase-file", p(&pass_file)]);
    let c = code(&mut log);
    log.json(&[
        "backup",
        "restore",
        "--from",
        "hub",
        "--hub",
        &url,
        "--token",
        &admin,
        "--into",
        p(&r),
        "--passphrase-file",
        p(&pass_file),
        "--code",
        &c,
    ]);
    assert_eq!(log.json(&["status", "--data", p(&r)])["encryption"], "sqlcipher");

    // B's key is rotated (B is stopped); A's rotation is refused while it runs.
    let o = log.fails(&["node", "rekey", "--data", p(&a)]);
    assert!(o.stderr.contains("in use"), "{}", o.stderr);
    log.json(&["node", "rekey", "--data", p(&b)]);
    log.json(&[
        "sale",
        "--data",
        p(&b),
        "--item",
        "ESPRESSO",
        "--pay",
        "card",
        "--card-brand",
        "visa",
        "--card-last4",
        "1881",
    ]);
    log.json(&["sync", "--data", p(&b)]);
    let b_new_key = key_of(&b);
    assert_ne!(b_new_key, b_old_key);

    // What must never be found.
    let mut sc = Scanner::default();
    sc.secret("the admin token", &admin);
    for (name, d) in [("A", &a), ("B", &b), ("R", &r)] {
        sc.secret(&format!("till {name}'s device token"), &token_of(d));
    }
    sc.secret("the test passphrase", TEST_PASSPHRASE);
    sc.secret("till A's key", &key_of(&a));
    sc.secret("till B's old key", &b_old_key);
    sc.secret("till B's key", &b_new_key);
    sc.secret("till R's key", &key_of(&r));

    // Product names (long enough not to occur by chance) that the
    // encrypted files must not show.
    let names: BTreeSet<String> = log
        .json(&["product", "list", "--data", p(&a)])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .filter(|n| n.len() >= 8)
        .collect();
    assert!(names.contains("Cheddar and chive scone") && names.len() >= 10, "{names:?}");

    let scan_everything = |sc: &mut Scanner, when: &str| {
        let before = sc.places.len();
        sc.scan_tree(&hub_dir, &is_key_material);
        for d in [&a, &b, &r] {
            sc.scan_tree(d, &is_key_material);
            for ext in ["", "-wal"] {
                let f = d.join(format!("till.db{ext}"));
                if let Ok(raw) = std::fs::read(&f) {
                    for n in &names {
                        assert!(
                            find(&raw, n.as_bytes()).is_none(),
                            "{when}: {} shows the product name {n:?}",
                            f.display()
                        );
                    }
                }
            }
        }
        sc.scan_tree(&folder_backups, &is_key_material);
        sc.scan_tree(&logs, &|_| false);
        assert!(sc.places.len() > before + 10, "{when}: the scan found files to read");
    };
    // While A runs (its WAL is live), then after it is killed.
    assert!(a.join("till.db-wal").exists(), "A's WAL is there to scan");
    scan_everything(&mut sc, "while A runs");
    node_a.stop();
    hub.stop();
    scan_everything(&mut sc, "after stopping");

    // Every till database decrypted: all its values.
    for d in [&a, &b, &r] {
        let conn = tillsync_store::keys::connect(&d.join("till.db")).expect("open with the key");
        let text = dump(&conn);
        // The dump is real: the names are there in the clear.
        assert!(find(&text, b"Cheddar and chive scone").is_some(), "{} decrypted holds the catalogue", d.display());
        // The token is kept here on purpose; everything else is scanned.
        let mut without_token = Scanner { secrets: sc.secrets.clone(), ..Default::default() };
        without_token.secrets.retain(|(l, _)| !l.contains("device token"));
        without_token.scan(&format!("{} (decrypted)", d.display()), &text);
        sc.hits.extend(without_token.hits);
    }
    // The hub's databases, every value.
    for f in files_under(&hub_dir).iter().filter(|f| f.extension().is_some_and(|e| e == "db")) {
        let conn = rusqlite::Connection::open_with_flags(f, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        sc.scan(&format!("{} (values)", f.display()), &dump(&conn));
    }

    // The backups decrypted with the test passphrase: the stream, then the
    // snapshot opened with the key that travels inside it.
    let unlock = tillsync_backup::Unlock::Passphrase(TEST_PASSPHRASE.into());
    let work = root.join("decrypted");
    std::fs::create_dir_all(&work).unwrap();
    let mut backups = 0;
    let mut dirs: BTreeSet<PathBuf> = files_under(&hub_dir)
        .into_iter()
        .chain(files_under(&folder_backups))
        .filter(|f| f.extension().is_some_and(|e| e == "tsb"))
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    dirs.insert(folder_backups.clone());
    for dir in dirs {
        let dest = tillsync_backup::Folder { dir: dir.clone() };
        for m in tillsync_backup::Destination::list(&dest).unwrap() {
            let out = work.join(format!("{}.db", m.backup_id));
            // The decrypted stream itself (every page as SQLite sees it),
            // then the database restored from it, opened with its key.
            let stream = {
                let object = tillsync_backup::Destination::open(&dest, &m.backup_id).unwrap();
                let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(age::scrypt::Identity::new(
                    age::secrecy::SecretString::from(TEST_PASSPHRASE.to_string()),
                ))];
                let mut plain = tillsync_backup::open_object(object, &ids).expect("decrypt the backup");
                let mut bytes = vec![];
                std::io::Read::read_to_end(&mut plain, &mut bytes).expect("read the stream");
                bytes
            };
            assert!(stream.starts_with(tillsync_backup::pages::TAG), "a page stream");
            assert!(find(&stream, b"Cheddar and chive scone").is_some(), "the stream is readable plaintext");
            sc.scan(&format!("backup {} (decrypted stream)", m.backup_id), &stream);
            let key = tillsync_store::keys::DbKey::random().unwrap();
            tillsync_backup::extract(&dest, &m, &unlock, &out, &key, tillsync_backup::Check::Both, |_, _| {})
                .expect("restore the backup");
            sc.scan_file(&out);
            let conn = rusqlite::Connection::open(&out).unwrap();
            tillsync_store::keys::apply(&conn, &key, &out).expect("the snapshot opens with its key");
            let text = dump(&conn);
            assert!(find(&text, b"Cheddar and chive scone").is_some(), "the snapshot holds the catalogue");
            sc.scan(&format!("backup {} (decrypted values)", m.backup_id), &text);
            let token: Option<String> =
                conn.query_row("SELECT value FROM meta WHERE key = 'device_token'", [], |r| r.get(0)).ok();
            assert!(token.is_none(), "backup {} carries a device token", m.backup_id);
            drop(conn);
            std::fs::remove_file(&out).unwrap();
            backups += 1;
        }
    }
    assert_eq!(backups, 2, "both backups were found and decrypted");
    sc.scan("the commands' output", &log.text);

    assert!(sc.bytes > 1_000_000, "the scan read the run's files ({} bytes)", sc.bytes);
    assert!(sc.hits.is_empty(), "leaks found:\n{}", sc.report());
}
