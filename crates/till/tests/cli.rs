//! End-to-end tests of the `till` command line (DESIGN.md section 8): they
//! run the real binary on temporary data folders.
//!
//! Every failing command must exit non-zero, print one `error: ...` line on
//! stderr (or one JSON document with `--json`), print nothing on stdout and
//! write nothing: the till's state digest, pending counts and raw tables are
//! compared before and after.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const TILL: &str = env!("CARGO_BIN_EXE_till");

/// What one run of the binary returned.
struct Run {
    args: Vec<String>,
    out: Output,
}

impl Run {
    fn ok(&self) -> bool {
        self.out.status.success()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn describe(&self) -> String {
        format!(
            "`till {}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.out.status.code(),
            self.stdout(),
            self.stderr()
        )
    }
}

/// Runs `till` with `args`, without any TILL_* variable of the caller's
/// environment leaking in (TILL_MANAGER_PIN would approve refunds).
fn till<S: AsRef<str>>(args: &[S]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let out = Command::new(TILL)
        .args(&args)
        .env_remove("TILL_DATA")
        .env_remove("TILL_MANAGER")
        .env_remove("TILL_MANAGER_PIN")
        .output()
        .expect("the till binary runs");
    Run { args, out }
}

/// Runs `till` and asserts it succeeded; returns stdout.
fn ok<S: AsRef<str>>(args: &[S]) -> String {
    let r = till(args);
    assert!(r.ok(), "expected success: {}", r.describe());
    r.stdout()
}

/// Runs `till ARGS --json`, asserts success and that stdout is exactly one
/// JSON document; returns it.
fn ok_json<S: AsRef<str>>(args: &[S]) -> Value {
    let mut a: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    a.push("--json".into());
    let r = till(&a);
    assert!(r.ok(), "expected success: {}", r.describe());
    serde_json::from_str(&r.stdout())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", r.describe()))
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

/// A sample till in a fresh temporary folder; returns (guard, data folder).
fn sample_till() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path().join("till");
    ok(&["node", "init", "--data", &s(&d), "--offline", "--sample"]);
    (tmp, d)
}

/// Everything a failed command must leave untouched: what `till status`
/// reports (digest and pending per lane) and the raw tables, read directly.
#[derive(Debug, PartialEq)]
struct Snapshot {
    state_digest: String,
    pending: Value,
    raw: String,
}

fn snapshot(d: &Path) -> Snapshot {
    let st = ok_json(&["status", "--data", &s(d)]);
    Snapshot {
        state_digest: st["state_digest"].as_str().expect("state_digest is a string").to_string(),
        pending: st["pending"].clone(),
        raw: raw_fingerprint(d),
    }
}

/// The schema version, identity and counters (meta), lanes and row counts
/// of every table, read with rusqlite (the digest does not cover the receipt
/// counter or the outbox).
fn raw_fingerprint(d: &Path) -> String {
    let (conn, _) = tillsync_store::keys::open(&d.join("till.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut out = String::new();
    let uv: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    out.push_str(&format!("user_version={uv}\n"));
    let mut st = conn.prepare("SELECT key, value FROM meta ORDER BY key").unwrap();
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).unwrap() {
        let (k, v) = row.unwrap();
        out.push_str(&format!("meta {k}={v}\n"));
    }
    let mut st = conn.prepare("SELECT lane, next_seq, acked_seq FROM lanes ORDER BY lane").unwrap();
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))).unwrap() {
        out.push_str(&format!("lane {:?}\n", row.unwrap()));
    }
    for t in ["writes", "named", "heads", "records", "conflicts", "ledger", "outbox"] {
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0)).unwrap();
        out.push_str(&format!("{t}={n}\n"));
    }
    out
}

/// Checks the error contract of a failed plain-text run; returns the
/// problems found (empty when the run is fine).
fn error_problems(r: &Run) -> Vec<String> {
    let mut p = vec![];
    if r.ok() {
        p.push("exited with success".to_string());
    }
    if !r.out.stdout.is_empty() {
        p.push(format!("stdout is not empty: {:?}", r.stdout()));
    }
    let err = r.stderr();
    let lines: Vec<&str> = err.lines().collect();
    if lines.is_empty() || err.trim().is_empty() {
        p.push("stderr is empty".into());
    } else {
        if !lines[0].starts_with("error: ") || lines[0].len() <= "error: ".len() {
            p.push(format!("stderr does not start with 'error: ': {:?}", lines[0]));
        }
        if lines.len() != 1 {
            p.push(format!("stderr has {} lines, expected one: {err:?}", lines.len()));
        }
    }
    p
}

/// Asserts the error contract of a failed plain-text run.
fn assert_error(r: &Run) {
    let p = error_problems(r);
    assert!(p.is_empty(), "{}: {}", p.join("; "), r.describe());
}

/// Today in the store's time zone for a Unix-ms instant (the sample till's
/// zone is Europe/Paris), so reports do not flake around midnight.
fn paris_day(at_ms: i64) -> String {
    let tz = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
    jiff::Timestamp::from_millisecond(at_ms).unwrap().to_zoned(tz).date().to_string()
}

fn by_key<'a>(rows: &'a Value, key: &str, value: &str) -> &'a Value {
    rows.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {rows}"))
        .iter()
        .find(|r| r[key].as_str() == Some(value))
        .unwrap_or_else(|| panic!("no row with {key} = {value} in {rows}"))
}

fn on_hand(d: &Path, sku: &str) -> i64 {
    let rows = ok_json(&["stock", "list", "--data", &s(d)]);
    by_key(&rows, "sku", sku)["on_hand"].as_i64().expect("on_hand is an integer")
}

fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

// ---------------------------------------------------------------------------
// Happy paths
// ---------------------------------------------------------------------------

#[test]
fn happy_path_split_tender_sale_refund_report_and_listings() {
    let (_tmp, d) = sample_till();
    let ds = s(&d);
    let before = ok_json(&["status", "--data", &ds]);
    let device = before["device_id"].as_str().unwrap().to_string();

    // Split tender: 2 x 3.50 + 1.80 = 8.80; card 2.00, cash 20 for the rest.
    let sale = ok_json(&[
        "sale",
        "--data",
        &ds,
        "--item",
        "CAPPUCCINO:2",
        "--item",
        "CROISSANT",
        "--pay",
        "card:2.00",
        "--pay",
        "cash:20",
    ]);
    assert!(is_uuid(&sale["sale_id"]), "sale_id: {sale}");
    let receipt = sale["receipt"].as_str().expect("receipt is a string").to_string();
    assert!(receipt.ends_with("-000001"), "first receipt of a new till: {receipt}");
    assert!(sale["total_minor"].is_i64(), "total_minor must be an integer: {sale}");
    assert_eq!(sale["total_minor"], 880, "{sale}");
    assert_eq!(sale["currency"], "EUR", "{sale}");
    assert_eq!(sale["change_minor"], 2000 - 680, "{sale}");

    // The text receipt of the same sale shows it.
    let text = ok(&["sales", "show", "--data", &ds, &receipt]);
    assert!(text.contains(&receipt) && text.contains("8.80"), "receipt text: {text}");

    // Refund the croissant, approved by the sample manager.
    let refund = ok_json(&[
        "refund",
        "--data",
        &ds,
        &receipt,
        "--item",
        "CROISSANT:1",
        "--manager",
        "Alex",
        "--manager-pin",
        "1234",
    ]);
    assert_eq!(refund["receipt"], receipt.as_str(), "{refund}");
    assert_eq!(refund["total_minor"], 180, "{refund}");
    assert_eq!(refund["sale_id"], sale["sale_id"], "{refund}");

    // The day's report.
    let sales = ok_json(&["sales", "list", "--data", &ds]);
    let day = paris_day(by_key(&sales, "receipt", &receipt)["at_ms"].as_i64().expect("at_ms"));
    let rep = ok_json(&["report", "--data", &ds, "--day", &day]);
    assert_eq!(rep["sales_count"], 1, "{rep}");
    assert_eq!(rep["refunds_count"], 1, "{rep}");
    assert_eq!(rep["by_tender"]["card"], 200, "{rep}");
    assert_eq!(rep["by_tender"]["cash"], 680, "{rep}");
    assert_eq!(rep["refunds_minor"], 180, "{rep}");
    // Cash taken 6.80, refunded in cash 1.80 (the sale was not card-only).
    assert_eq!(rep["expected_cash_minor"], 500, "{rep}");
    assert_eq!(rep["currency"], "EUR", "{rep}");
    // The default day is today: the same report unless midnight just passed.
    let today = ok_json(&["report", "--data", &ds]);
    if today["day"] == rep["day"] {
        assert_eq!(today["sales_count"], 1, "{today}");
    }

    // Stock: 200 cappuccinos less 2; 60 croissants less 1 plus 1 back.
    let stock = ok_json(&["stock", "list", "--data", &ds]);
    for row in stock.as_array().expect("stock list is an array") {
        assert!(row["sku"].is_string() && row["on_hand"].is_i64(), "stock row: {row}");
    }
    assert_eq!(by_key(&stock, "sku", "CAPPUCCINO")["on_hand"], 200 - 2);
    assert_eq!(by_key(&stock, "sku", "CROISSANT")["on_hand"], 60 - 1 + 1);
    assert_eq!(by_key(&stock, "sku", "ESPRESSO")["on_hand"], 200, "untouched SKU");

    // Sales list.
    let arr = sales.as_array().expect("sales list is an array");
    assert_eq!(arr.len(), 1, "{sales}");
    let row = &arr[0];
    assert_eq!(row["sale_id"], sale["sale_id"]);
    assert_eq!(row["receipt"], receipt.as_str());
    assert_eq!(row["total_minor"], 880);
    assert_eq!(row["device_id"], device.as_str());

    // Product list.
    let products = ok_json(&["product", "list", "--data", &ds]);
    let parr = products.as_array().expect("product list is an array");
    assert_eq!(parr.len(), 50, "the sample catalogue has 50 products");
    for p in parr {
        assert!(p["sku"].is_string() && p["name"].is_string() && p["price_minor"].is_i64(), "product row: {p}");
    }
    let capp = by_key(&products, "sku", "CAPPUCCINO");
    assert_eq!(capp["name"], "Cappuccino");
    assert_eq!(capp["price_minor"], 350);

    // Status.
    let st = ok_json(&["status", "--data", &ds]);
    assert_eq!(st["device_id"], device.as_str());
    let pending = st["pending"].as_object().expect("pending is an object");
    let mut keys: Vec<&str> = pending.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["catalog", "sales", "stock", "telemetry"], "{st}");
    assert!(pending.values().all(Value::is_i64), "{st}");
    // The sale and the refund are two changes in the sales lane.
    assert_eq!(st["pending"]["sales"].as_i64().unwrap(), before["pending"]["sales"].as_i64().unwrap() + 2, "{st}");
    let digest = st["state_digest"].as_str().expect("state_digest");
    assert!(digest.len() >= 32 && digest.chars().all(|c| c.is_ascii_hexdigit()), "{st}");
    assert_ne!(st["state_digest"], before["state_digest"], "a sale changes the digest");
}

#[test]
fn product_add_update_show() {
    let (_tmp, d) = sample_till();
    let ds = s(&d);
    let added = ok_json(&[
        "product",
        "add",
        "--data",
        &ds,
        "--sku",
        "SCONE",
        "--name",
        "Scone",
        "--price",
        "2.5",
        "--tax",
        "reduced",
        "--category",
        "Bakery",
    ]);
    assert_eq!(added["sku"], "SCONE", "{added}");
    assert_eq!(added["price_minor"], 250, "{added}");
    assert_eq!(added["tax_rate_bp"], 550, "tax code 'reduced' is 5.5 %: {added}");

    let shown = ok_json(&["product", "show", "--data", &ds, "--sku", "SCONE"]);
    assert_eq!(shown["name"], "Scone", "{shown}");
    assert_eq!(shown["price_minor"], 250, "{shown}");
    assert_eq!(shown["category"], "Bakery", "{shown}");
    assert_eq!(shown["on_hand"], 0, "{shown}");

    let updated =
        ok_json(&["product", "update", "--data", &ds, "--sku", "SCONE", "--price", "3", "--name", "Fruit scone"]);
    assert_eq!(updated["price_minor"], 300, "{updated}");
    let shown = ok_json(&["product", "show", "--data", &ds, "--sku", "SCONE"]);
    assert_eq!(shown["name"], "Fruit scone", "{shown}");
    assert_eq!(shown["price_minor"], 300, "{shown}");
    assert_eq!(shown["category"], "Bakery", "an update keeps fields it does not name: {shown}");

    let list = ok_json(&["product", "list", "--data", &ds]);
    assert_eq!(by_key(&list, "sku", "SCONE")["price_minor"], 300);
    assert_eq!(list.as_array().unwrap().len(), 51);

    // The new price is what a sale charges.
    let sale = ok_json(&["sale", "--data", &ds, "--item", "SCONE:2", "--pay", "cash"]);
    assert_eq!(sale["total_minor"], 600, "{sale}");

    // Adding the SKU again is refused and changes nothing.
    let before = snapshot(&d);
    let r = till(&["product", "add", "--data", &ds, "--sku", "SCONE", "--name", "Other", "--price", "1"]);
    assert_error(&r);
    assert!(r.stderr().contains("product update"), "{}", r.describe());
    assert_eq!(snapshot(&d), before);
    // Updating an unknown SKU too.
    let r = till(&["product", "update", "--data", &ds, "--sku", "NOSUCH", "--price", "1"]);
    assert_error(&r);
    assert!(r.stderr().contains("NOSUCH"), "{}", r.describe());
    assert_eq!(snapshot(&d), before);
}

#[test]
fn customers_staff_and_loyalty_points() {
    let (_tmp, d) = sample_till();
    let ds = s(&d);

    let c = ok_json(&[
        "customer",
        "add",
        "--data",
        &ds,
        "--name",
        "Zoe Test",
        "--email",
        "zoe@example.com",
        "--phone",
        "+33 1 23 45 67 89",
    ]);
    let cid = c["customer_id"].as_str().expect("customer_id").to_string();
    assert!(is_uuid(&c["customer_id"]), "{c}");
    let list = ok_json(&["customer", "list", "--data", &ds]);
    assert_eq!(list.as_array().expect("customer list is an array").len(), 4, "3 sample customers and Zoe: {list}");
    let zoe = by_key(&list, "customer_id", &cid);
    assert_eq!(zoe["name"], "Zoe Test");
    assert_eq!(zoe["email"], "zoe@example.com");
    assert_eq!(zoe["points"], 0);

    // One point per whole euro: 3 lattes at 3.80 = 11.40 -> 11 points.
    let sale = ok_json(&["sale", "--data", &ds, "--item", "LATTE:3", "--pay", "card", "--customer", &cid]);
    assert_eq!(sale["total_minor"], 1140, "{sale}");
    let list = ok_json(&["customer", "list", "--data", &ds]);
    assert_eq!(by_key(&list, "customer_id", &cid)["points"], 11, "{list}");
    // Other customers earn nothing.
    for other in list.as_array().unwrap().iter().filter(|x| x["customer_id"] != cid.as_str()) {
        assert_eq!(other["points"], 0, "{other}");
    }
    // A second sale adds up: 2.20 -> 2 points.
    ok_json(&["sale", "--data", &ds, "--item", "ESPRESSO", "--pay", "cash", "--customer", &cid]);
    let list = ok_json(&["customer", "list", "--data", &ds]);
    assert_eq!(by_key(&list, "customer_id", &cid)["points"], 13, "{list}");

    // Staff: a new manager can approve refunds with their PIN.
    let st = ok_json(&["staff", "add", "--data", &ds, "--name", "Robin", "--role", "manager", "--pin", "5678"]);
    assert!(is_uuid(&st["staff_id"]), "{st}");
    let staff = ok_json(&["staff", "list", "--data", &ds]);
    assert_eq!(staff.as_array().expect("staff list is an array").len(), 4, "{staff}");
    let robin = by_key(&staff, "name", "Robin");
    assert_eq!(robin["role"], "manager");
    assert_eq!(robin["staff_id"], st["staff_id"]);
    let staff_text = staff.to_string();
    assert!(
        !staff_text.contains("pin") && !staff_text.contains("5678"),
        "staff list must not show PINs or hashes: {staff}"
    );
    let cashier = ok_json(&["staff", "add", "--data", &ds, "--name", "Kim", "--pin", "4321"]);
    assert_eq!(cashier["role"], "cashier", "the default role: {cashier}");

    let receipt = sale["receipt"].as_str().unwrap();
    let r = ok_json(&[
        "refund",
        "--data",
        &ds,
        receipt,
        "--item",
        "LATTE:1",
        "--manager",
        "Robin",
        "--manager-pin",
        "5678",
    ]);
    assert_eq!(r["total_minor"], 380, "{r}");
    // A cashier cannot approve.
    let before = snapshot(&d);
    let r = till(&["refund", "--data", &ds, receipt, "--item", "LATTE:1", "--manager", "Kim", "--manager-pin", "4321"]);
    assert_error(&r);
    assert!(r.stderr().contains("manager"), "{}", r.describe());
    assert_eq!(snapshot(&d), before);
}

#[test]
fn stock_receive_and_count() {
    let (_tmp, d) = sample_till();
    let ds = s(&d);
    // (command, SKU, quantity, on hand afterwards); WATER starts at 100.
    let steps: &[(&str, &str, &str, i64)] = &[
        ("receive", "WATER", "7", 107),
        ("count", "WATER", "42", 42),
        ("sale", "WATER", "2", 40),
        ("receive", "WATER", "10", 50),
        ("count", "WATER", "0", 0),
        ("sale", "WATER", "1", -1),
        ("count", "MUG", "3", 3),
    ];
    for (i, (cmd, sku, qty, want)) in steps.iter().enumerate() {
        match *cmd {
            "sale" => {
                ok_json(&["sale", "--data", &ds, "--item", &format!("{sku}:{qty}"), "--pay", "cash"]);
            }
            "receive" => {
                let v = ok_json(&["stock", "receive", "--data", &ds, "--sku", sku, "--qty", qty]);
                assert_eq!(v["on_hand"], *want, "step {i}: {v}");
            }
            "count" => {
                let v = ok_json(&["stock", "count", "--data", &ds, "--sku", sku, "--qty", qty]);
                assert_eq!(v["counted"].as_i64(), qty.parse::<i64>().ok(), "step {i}: {v}");
                assert_eq!(v["on_hand"], *want, "step {i}: {v}");
            }
            _ => unreachable!(),
        }
        assert_eq!(on_hand(&d, sku), *want, "step {i}: {cmd} {sku} {qty}");
    }
    // Selling below zero is allowed offline and flagged.
    let rows = ok_json(&["stock", "list", "--data", &ds]);
    assert_eq!(by_key(&rows, "sku", "WATER")["oversold"], true, "{rows}");
    assert_eq!(by_key(&rows, "sku", "MUG")["oversold"], false, "{rows}");
    let shown = ok_json(&["product", "show", "--data", &ds, "--sku", "WATER"]);
    assert_eq!(shown["on_hand"], -1, "{shown}");
}

#[test]
fn cash_float_counts_in_expected_cash() {
    let (_tmp, d) = sample_till();
    let ds = s(&d);
    let sale = ok_json(&["sale", "--data", &ds, "--item", "MOCHA", "--pay", "cash:5"]);
    assert_eq!(sale["total_minor"], 400, "{sale}");
    let sales = ok_json(&["sales", "list", "--data", &ds]);
    let day = paris_day(sales[0]["at_ms"].as_i64().unwrap());
    let before = ok_json(&["report", "--data", &ds, "--day", &day]);
    assert_eq!(before["expected_cash_minor"], 400, "the change is not kept: {before}");

    let f = ok_json(&["cash", "float", "--data", &ds, "--amount", "100"]);
    assert_eq!(f["amount_minor"], 10000, "{f}");
    let after = ok_json(&["report", "--data", &ds, "--day", &day]);
    if paris_day(jiff::Timestamp::now().as_millisecond()) == day {
        assert_eq!(after["expected_cash_minor"], 400 + 10000, "{after}");
        assert_eq!(after["cash_movements"]["float"], 10000, "{after}");
        assert_eq!(after["sales_count"], 1, "{after}");
    }
    // A pay-out comes off the drawer.
    ok_json(&["cash", "pay-out", "--data", &ds, "--amount", "12.50", "--reason", "milk"]);
    let after = ok_json(&["report", "--data", &ds, "--day", &day]);
    if paris_day(jiff::Timestamp::now().as_millisecond()) == day {
        assert_eq!(after["expected_cash_minor"], 400 + 10000 - 1250, "{after}");
    }
}

// ---------------------------------------------------------------------------
// Bad inputs
// ---------------------------------------------------------------------------

const CARD: &str = "4111111111111111";

/// A command that must be refused.
struct Bad {
    name: &'static str,
    /// Arguments; `{D}` is the data folder, `{R}` the receipt of a sale of
    /// one croissant and one espresso.
    args: &'static [&'static str],
    /// Each must appear in stderr (what went wrong, what to do).
    says: &'static [&'static str],
    /// None may appear in stderr.
    never: &'static [&'static str],
}

fn bad_cases() -> Vec<Bad> {
    vec![
        Bad {
            name: "unknown SKU in a sale",
            args: &["sale", "--data", "{D}", "--item", "NOPE", "--pay", "cash"],
            says: &["NOPE", "till product list"],
            never: &[],
        },
        Bad {
            name: "zero quantity",
            args: &["sale", "--data", "{D}", "--item", "ESPRESSO:0", "--pay", "cash"],
            says: &["quantity", "1 or more"],
            never: &[],
        },
        Bad {
            name: "negative quantity",
            args: &["sale", "--data", "{D}", "--item", "ESPRESSO:-1", "--pay", "cash"],
            says: &["quantity", "-1"],
            never: &[],
        },
        Bad {
            name: "quantity that is not a number",
            args: &["sale", "--data", "{D}", "--item", "ESPRESSO:two", "--pay", "cash"],
            says: &["two", "whole number"],
            never: &[],
        },
        Bad {
            name: "payment short of the total",
            args: &["sale", "--data", "{D}", "--item", "ESPRESSO", "--pay", "cash:0.50"],
            says: &["short", "--pay"],
            never: &[],
        },
        Bad {
            name: "card pays more than due",
            args: &["sale", "--data", "{D}", "--item", "ESPRESSO", "--pay", "card:50"],
            says: &["card"],
            never: &[],
        },
        Bad {
            name: "price with a decimal comma",
            args: &["product", "add", "--data", "{D}", "--sku", "NEWP", "--name", "New", "--price", "4,50"],
            says: &["4,50", "4.50"],
            never: &[],
        },
        Bad {
            name: "price that is not a number",
            args: &["product", "add", "--data", "{D}", "--sku", "NEWP", "--name", "New", "--price", "abc"],
            says: &["abc", "decimal"],
            never: &[],
        },
        Bad {
            name: "full card number as --card-last4",
            args: &["sale", "--data", "{D}", "--item", "ESPRESSO", "--pay", "card", "--card-last4", CARD],
            says: &["--card-last4"],
            never: &[CARD, "41111111"],
        },
        Bad {
            name: "full card number with spaces as --card-last4",
            args: &[
                "sale",
                "--data",
                "{D}",
                "--item",
                "ESPRESSO",
                "--pay",
                "card",
                "--card-last4",
                "4111 1111 1111 1111",
            ],
            says: &["--card-last4"],
            never: &["4111 1111", CARD],
        },
        Bad {
            name: "full card number as a payment amount",
            args: &["sale", "--data", "{D}", "--item", "ESPRESSO", "--pay", "card:4111111111111111"],
            says: &["card"],
            never: &[CARD, "41111111"],
        },
        Bad {
            name: "five digits as --card-last4",
            args: &["sale", "--data", "{D}", "--item", "ESPRESSO", "--pay", "card", "--card-last4", "12345"],
            says: &["four digits"],
            never: &[],
        },
        Bad {
            name: "unknown payment method",
            args: &["sale", "--data", "{D}", "--item", "ESPRESSO", "--pay", "bitcoin"],
            says: &["bitcoin", "cash or card"],
            never: &[],
        },
        Bad {
            name: "customer id that is not an id",
            args: &["sale", "--data", "{D}", "--item", "ESPRESSO", "--pay", "cash", "--customer", "maria"],
            says: &["maria", "till customer list"],
            never: &[],
        },
        Bad {
            name: "refund without a manager",
            args: &["refund", "--data", "{D}", "{R}", "--item", "CROISSANT:1"],
            says: &["--manager", "--manager-pin"],
            never: &[],
        },
        Bad {
            name: "refund with a wrong PIN",
            args: &[
                "refund",
                "--data",
                "{D}",
                "{R}",
                "--item",
                "CROISSANT:1",
                "--manager",
                "Alex",
                "--manager-pin",
                "9999",
            ],
            says: &["PIN"],
            never: &["1234"],
        },
        Bad {
            name: "refund approved by a cashier",
            args: &[
                "refund",
                "--data",
                "{D}",
                "{R}",
                "--item",
                "CROISSANT:1",
                "--manager",
                "Sam",
                "--manager-pin",
                "1111",
            ],
            says: &["manager"],
            never: &[],
        },
        Bad {
            name: "refund of an unknown receipt",
            args: &[
                "refund",
                "--data",
                "{D}",
                "NOPE-999999",
                "--item",
                "CROISSANT:1",
                "--manager",
                "Alex",
                "--manager-pin",
                "1234",
            ],
            says: &["NOPE-999999", "till sales list"],
            never: &[],
        },
        Bad {
            name: "refund of more than was sold",
            args: &[
                "refund",
                "--data",
                "{D}",
                "{R}",
                "--item",
                "CROISSANT:2",
                "--manager",
                "Alex",
                "--manager-pin",
                "1234",
            ],
            says: &["CROISSANT"],
            never: &[],
        },
        Bad {
            name: "staff PIN too short",
            args: &["staff", "add", "--data", "{D}", "--name", "Zed", "--pin", "12"],
            says: &["4 to 8 digits"],
            never: &[],
        },
        Bad {
            name: "card number in a customer name",
            args: &["customer", "add", "--data", "{D}", "--name", "Bob 4111111111111111"],
            says: &["card number"],
            never: &[CARD],
        },
        Bad {
            name: "stock receive of zero",
            args: &["stock", "receive", "--data", "{D}", "--sku", "WATER", "--qty", "0"],
            says: &["quantity"],
            never: &[],
        },
        Bad {
            name: "cash movement of an unknown kind",
            args: &["cash", "tip", "--data", "{D}", "--amount", "5"],
            says: &["tip", "float"],
            never: &[],
        },
    ]
}

/// A sample till with one sale (CROISSANT + ESPRESSO, cash); returns the
/// folder and the receipt.
fn till_with_a_sale() -> (TempDir, PathBuf, String) {
    let (tmp, d) = sample_till();
    let sale = ok_json(&["sale", "--data", &s(&d), "--item", "CROISSANT", "--item", "ESPRESSO", "--pay", "cash"]);
    let receipt = sale["receipt"].as_str().unwrap().to_string();
    (tmp, d, receipt)
}

fn case_args(c: &Bad, d: &Path, receipt: &str) -> Vec<String> {
    c.args.iter().map(|a| a.replace("{D}", &s(d)).replace("{R}", receipt)).collect()
}

#[test]
fn bad_inputs_fail_cleanly_and_write_nothing() {
    let (_tmp, d, receipt) = till_with_a_sale();
    let mut failures = vec![];
    for c in bad_cases() {
        let args = case_args(&c, &d, &receipt);
        for json in [false, true] {
            let before = snapshot(&d);
            let mut a = args.clone();
            if json {
                a.push("--json".into());
            }
            let r = till(&a);
            let mut p = vec![];
            let err = r.stderr();
            if json {
                if r.ok() {
                    p.push("exited with success".to_string());
                }
                if !r.out.stdout.is_empty() {
                    p.push(format!("stdout is not empty: {:?}", r.stdout()));
                }
                match serde_json::from_str::<Value>(&err) {
                    Ok(v) if v["error"].as_str().is_some_and(|e| !e.is_empty()) => {}
                    _ => p.push(format!("with --json, stderr is not one JSON document with an \"error\": {err:?}")),
                }
            } else {
                p.extend(error_problems(&r));
            }
            for w in c.says {
                if !err.contains(w) {
                    p.push(format!("stderr does not mention {w:?}"));
                }
            }
            for w in c.never {
                if err.contains(w) {
                    p.push(format!("stderr echoes {w:?}"));
                }
            }
            let after = snapshot(&d);
            if after != before {
                p.push(format!("the till changed:\nbefore {before:?}\nafter  {after:?}"));
            }
            if !p.is_empty() {
                failures.push(format!(
                    "[{}{}] {}\n{}",
                    c.name,
                    if json { ", --json" } else { "" },
                    p.join("\n  "),
                    r.describe()
                ));
            }
        }
    }
    // The refused card numbers are nowhere in the database either.
    let db = std::fs::read(d.join("till.db")).unwrap();
    assert!(!db.windows(CARD.len()).any(|w| w == CARD.as_bytes()), "a card number was stored");
    // And the till still works: the valid version of the refund goes through.
    ok_json(&[
        "refund",
        "--data",
        &s(&d),
        &receipt,
        "--item",
        "CROISSANT:1",
        "--manager",
        "Alex",
        "--manager-pin",
        "1234",
    ]);
    assert!(failures.is_empty(), "{} bad-input case(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// An error message says each thing once. Split on ": " (the separator of
/// an error chain), no part may repeat.
#[test]
fn error_messages_do_not_repeat_themselves() {
    let (_tmp, d, receipt) = till_with_a_sale();
    let mut failures = vec![];
    for c in bad_cases() {
        let r = till(&case_args(&c, &d, &receipt));
        let err = r.stderr();
        let msg = err.trim().strip_prefix("error: ").unwrap_or(err.trim());
        let parts: Vec<&str> = msg.split(": ").map(str::trim).filter(|p| !p.is_empty()).collect();
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = parts.iter().find(|p| !seen.insert(**p)) {
            failures.push(format!("[{}] {dup:?} appears twice in {err:?}", c.name));
        }
    }
    assert!(failures.is_empty(), "{} message(s) repeat themselves:\n{}", failures.len(), failures.join("\n"));
}

/// A card number mistyped by one digit fails the Luhn check, so it is not
/// caught as a card number; it is still a card holder's number and must not
/// be echoed to stderr (logs, terminals) wherever it is typed. `--card-last4`
/// already redacts long digit runs ("that number"); the payment amount must
/// too.
#[test]
fn mistyped_card_numbers_are_never_echoed() {
    let (_tmp, d) = sample_till();
    let ds = s(&d);
    // (arguments after `sale --data D --item ESPRESSO`, the digits typed)
    let cases: &[(&[&str], &str)] = &[
        (&["--pay", "card", "--card-last4", "4111111111111112"], "4111111111111112"),
        (&["--pay", "card", "--card-last4", "4111-1111-1111-1112"], "4111-1111-1111-1112"),
        (&["--pay", "card:4111111111111112"], "4111111111111112"),
        (&["--pay", "card:4111-1111-1111-1112"], "4111-1111-1111-1112"),
        (&["--pay", "card:4111 1111 1111 1112"], "4111 1111 1111 1112"),
    ];
    let before = snapshot(&d);
    let mut failures = vec![];
    for (extra, digits) in cases {
        let mut args = vec!["sale", "--data", &ds, "--item", "ESPRESSO"];
        args.extend_from_slice(extra);
        for json in [false, true] {
            let mut a = args.clone();
            if json {
                a.push("--json");
            }
            let r = till(&a);
            if r.ok() {
                failures.push(format!("accepted: {}", r.describe()));
            } else if r.stderr().contains(digits) || r.stderr().contains(&digits[..8]) {
                failures.push(format!("echoes {digits:?}: {}", r.stderr().trim()));
            }
        }
    }
    assert_eq!(snapshot(&d), before);
    assert!(failures.is_empty(), "{} run(s) echo a card number:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Folders and databases that are not usable
// ---------------------------------------------------------------------------

#[test]
fn a_folder_that_is_not_a_till_is_refused() {
    let tmp = TempDir::new().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = tmp.path().join("missing");
    let commands: &[&[&str]] = &[
        &["status", "--data", "{D}"],
        &["sale", "--data", "{D}", "--item", "ESPRESSO", "--pay", "cash"],
        &["product", "list", "--data", "{D}"],
        &["product", "add", "--data", "{D}", "--sku", "X", "--name", "X", "--price", "1"],
        &["stock", "list", "--data", "{D}"],
        &["report", "--data", "{D}"],
    ];
    for dir in [&empty, &missing] {
        for cmd in commands {
            let args: Vec<String> = cmd.iter().map(|a| a.replace("{D}", &s(dir))).collect();
            let r = till(&args);
            assert_error(&r);
            assert!(r.stderr().contains("till node init"), "the error must say how to make a till: {}", r.describe());
            assert!(r.stderr().contains(&s(dir)), "the error must name the folder: {}", r.describe());
        }
    }
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "nothing may be created in a folder that is not a till");
    assert!(!missing.exists(), "a missing folder must not be created");
}

#[test]
fn a_locked_database_fails_as_busy_and_writes_nothing() {
    let (_tmp, d) = sample_till();
    let ds = s(&d);
    let before = snapshot(&d);
    let conn = tillsync_store::keys::connect(&d.join("till.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();

    // Readers run beside the writer (WAL).
    let st = ok_json(&["status", "--data", &ds]);
    assert_eq!(st["state_digest"].as_str(), Some(before.state_digest.as_str()));

    let t0 = Instant::now();
    let r = till(&["sale", "--data", &ds, "--item", "ESPRESSO", "--pay", "cash"]);
    let waited = t0.elapsed();
    conn.execute_batch("ROLLBACK").unwrap();
    drop(conn);

    assert_error(&r);
    assert!(r.stderr().contains("busy"), "the error must say the database is busy: {}", r.describe());
    assert!(
        waited >= Duration::from_secs(4),
        "the sale should wait for the busy timeout (5 s), gave up after {waited:?}"
    );
    assert!(waited < Duration::from_secs(30), "the sale hung for {waited:?}");
    assert_eq!(snapshot(&d), before, "a sale refused as busy must write nothing");

    // Once the lock is gone the same sale goes through.
    let sale = ok_json(&["sale", "--data", &ds, "--item", "ESPRESSO", "--pay", "cash"]);
    assert!(sale["receipt"].as_str().unwrap().ends_with("-000001"), "the refused sale used no receipt number: {sale}");
}

/// A deterministic xorshift64 generator for garbage bytes.
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Damages a database file in place.
type Damage = fn(&Path);

#[test]
fn a_corrupt_database_is_reported_as_damaged() {
    // (variant, how to damage the file)
    let variants: &[(&str, Damage)] = &[
        ("whole file is garbage", |db| {
            std::fs::write(db, garbage(64 * 1024, 0x9E37_79B9_7F4A_7C15)).unwrap();
        }),
        ("first page intact, every other page garbage", |db| {
            let mut bytes = std::fs::read(db).unwrap();
            assert!(bytes.len() > 8192, "the sample till spans several pages");
            let tail = garbage(bytes.len() - 4096, 0x0DDB_A11C_AFEB_ABE5);
            bytes[4096..].copy_from_slice(&tail);
            std::fs::write(db, bytes).unwrap();
        }),
    ];
    let commands: &[&[&str]] = &[
        &["status", "--data", "{D}"],
        &["sale", "--data", "{D}", "--item", "ESPRESSO", "--pay", "cash"],
        &["product", "list", "--data", "{D}"],
        &["stock", "list", "--data", "{D}"],
        &["sales", "list", "--data", "{D}"],
        &["report", "--data", "{D}"],
    ];
    for (name, damage) in variants {
        let (_tmp, d) = sample_till();
        let db = d.join("till.db");
        // Fold the WAL into the main file, so the damage hits everything.
        {
            let conn = tillsync_store::keys::connect(&db).unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        }
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(d.join(format!("till.db{ext}")));
        }
        damage(&db);
        let damaged = std::fs::read(&db).unwrap();
        for cmd in commands {
            let args: Vec<String> = cmd.iter().map(|a| a.replace("{D}", &s(&d))).collect();
            let r = till(&args);
            let p = error_problems(&r);
            assert!(p.is_empty(), "[{name}] {}: {}", p.join("; "), r.describe());
            let err = r.stderr();
            assert!(err.contains("damaged"), "[{name}] the error must say the database is damaged: {}", r.describe());
            assert!(
                err.contains("restore") && err.contains("backup"),
                "[{name}] the error must hint at a restore: {}",
                r.describe()
            );
        }
        // A new till is not made over the damaged one.
        let r = till(&["node", "init", "--data", &s(&d), "--offline", "--sample"]);
        assert_error(&r);
        assert_eq!(
            std::fs::read(&db).unwrap(),
            damaged,
            "[{name}] the damaged file must be left as it was (evidence for a restore)"
        );
    }
}

#[test]
fn init_twice_is_refused_and_keeps_the_till() {
    let (_tmp, d) = sample_till();
    let ds = s(&d);
    ok_json(&["sale", "--data", &ds, "--item", "ESPRESSO", "--pay", "cash"]);
    let before = snapshot(&d);
    let id_before = ok_json(&["status", "--data", &ds]);
    for args in [
        vec!["node", "init", "--data", &ds, "--offline", "--sample"],
        vec!["node", "init", "--data", &ds, "--offline", "--name", "other", "--currency", "USD"],
    ] {
        let r = till(&args);
        assert_error(&r);
        assert!(r.stderr().contains("already holds a till"), "{}", r.describe());
        assert_eq!(snapshot(&d), before, "a refused init must not change the till");
    }
    let id_after = ok_json(&["status", "--data", &ds]);
    for k in ["device_id", "tenant_id", "store_id", "name", "receipt_prefix"] {
        assert_eq!(id_after[k], id_before[k], "{k} changed");
    }
    assert_eq!(ok_json(&["sales", "list", "--data", &ds]).as_array().unwrap().len(), 1, "the sale is still there");
}

#[test]
fn a_database_from_a_newer_version_is_refused() {
    let (_tmp, d) = sample_till();
    let ds = s(&d);
    {
        let conn = tillsync_store::keys::connect(&d.join("till.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let before = raw_fingerprint(&d);
    let commands: &[&[&str]] = &[
        &["status", "--data", "{D}"],
        &["sale", "--data", "{D}", "--item", "ESPRESSO", "--pay", "cash"],
        &["product", "add", "--data", "{D}", "--sku", "X", "--name", "X", "--price", "1"],
        &["product", "list", "--data", "{D}"],
    ];
    for cmd in commands {
        let args: Vec<String> = cmd.iter().map(|a| a.replace("{D}", &ds)).collect();
        let r = till(&args);
        assert_error(&r);
        assert!(
            r.stderr().contains("newer") && r.stderr().contains("upgrade"),
            "the error must say to upgrade: {}",
            r.describe()
        );
    }
    assert_eq!(raw_fingerprint(&d), before, "a newer database must be left untouched");
    assert!(before.starts_with("user_version=99\n"), "{before}");
}
