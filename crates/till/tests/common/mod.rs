//! Helpers for tests that run `till` as real processes: commands with
//! timeouts, a hub process, tenants and tills, a background `node run`,
//! a tiny HTTP/1.0 client for the node's local API, a seeded PRNG and a
//! field-by-field check of `till status --json`.

#![allow(dead_code)]

pub mod faultproxy;

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BIN: &str = env!("CARGO_BIN_EXE_till");
/// Longest an ordinary `till` command may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Running `till`
// ---------------------------------------------------------------------------

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Out {
    pub fn describe(&self, args: &[&str]) -> String {
        format!(
            "`till {}` exited {} after {:?}\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            self.code,
            self.took,
            self.stdout,
            self.stderr
        )
    }
}

/// `till` with a clean environment: no inherited data folders or tokens,
/// and no inherited `TILL_SYNC_*` / `TILL_NETWORK_*` overrides.
pub fn base_command() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("TILL_DATA").env_remove("TILL_HUB_DATA").env_remove("TILL_ADMIN_TOKEN").env_remove("DATABASE_URL");
    for (k, _) in std::env::vars() {
        if k.starts_with("TILL_SYNC_") || k.starts_with("TILL_NETWORK_") {
            c.env_remove(k);
        }
    }
    c
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs `till ARGS` with extra environment, bounded by `timeout`.
pub fn till_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Out {
    let start = Instant::now();
    let mut cmd = base_command();
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn till");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for till") {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`till {}` did not finish within {timeout:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(3));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        took: start.elapsed(),
    }
}

pub fn till(args: &[&str]) -> Out {
    till_env(args, &[], CMD_TIMEOUT)
}

/// Runs `till ARGS` and insists on success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let o = till(args);
    assert_eq!(o.code, 0, "{}", o.describe(args));
    o.stdout
}

/// Runs `till ARGS --json`, insists on success and parses stdout.
pub fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = ok(&a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("`till {}` printed no JSON ({e}):\n{out}", a.join(" ")))
}

/// Runs `till ARGS` and insists on failure.
pub fn fails(args: &[&str]) -> Out {
    let o = till(args);
    assert_ne!(o.code, 0, "expected a failure: {}", o.describe(args));
    o
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

pub fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

// ---------------------------------------------------------------------------
// The hub process
// ---------------------------------------------------------------------------

/// A running `till hub serve`, killed on drop.
pub struct Hub {
    child: Child,
    pub url: String,
    pub port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Hub {
    /// Starts the hub on `listen`; Err if it exits before printing its
    /// address (e.g. the port is still taken).
    pub fn try_start(data: &Path, listen: &str) -> Result<Hub, String> {
        Hub::try_start_on(&["--data", p(data)], listen)
    }

    /// As `try_start`, with more `hub serve` arguments (e.g. `--metrics`).
    pub fn try_start_with(data: &Path, listen: &str, extra: &[&str]) -> Result<Hub, String> {
        let mut storage = vec!["--data", p(data)];
        storage.extend_from_slice(extra);
        Hub::try_start_on(&storage, listen)
    }

    /// Starts the hub on the storage `storage` names (`--data DIR` or
    /// `--database-url URL`), with any more `hub serve` arguments.
    pub fn try_start_on(storage: &[&str], listen: &str) -> Result<Hub, String> {
        let mut args = vec!["hub", "serve"];
        args.extend_from_slice(storage);
        args.extend_from_slice(&["--listen", listen, "--json"]);
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
        let v: Value = serde_json::from_str(&first).map_err(|e| format!("bad first line {first:?}: {e}"))?;
        let url = s(&v["url"]);
        let port: u16 = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in the hub's url");
        Ok(Hub { child, url, port, stderr })
    }

    pub fn start(data: &Path) -> Hub {
        Hub::try_start(data, "127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Restarts on a given port, retrying while the old socket lingers.
    pub fn start_on_port(data: &Path, port: u16) -> Hub {
        Hub::start_on_port_with(&["--data", p(data)], port)
    }

    /// [`Hub::start_on_port`] on any storage.
    pub fn start_on_port_with(storage: &[&str], port: u16) -> Hub {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listen = format!("127.0.0.1:{port}");
        loop {
            match Hub::try_start_on(storage, &listen) {
                Ok(h) => return h,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("hub restart on {listen} retried: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot restart the hub on {listen}: {e}"),
            }
        }
    }

    /// The process id (for SIGSTOP/SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (false once it has exited).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, as a crash or a pulled plug would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the hub logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
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

/// A background process, SIGKILLed on drop.
pub struct Bg(pub Child);

impl Bg {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Tenants, stores and tills
// ---------------------------------------------------------------------------

pub struct Tenant {
    /// The SQLite hub's folder (empty on a PostgreSQL hub).
    pub hub_dir: PathBuf,
    /// Where the hub keeps its data, as the admin commands take it:
    /// `--data DIR` or `--database-url URL`.
    pub storage: Vec<String>,
    pub id: String,
    pub admin: String,
    pub store: String,
}

/// A sample tenant with one store (which gets the sample's opening stock).
pub fn sample_tenant(hub_dir: &Path, name: &str) -> Tenant {
    let mut t = sample_tenant_on(&["--data", p(hub_dir)], name);
    t.hub_dir = hub_dir.to_path_buf();
    t
}

/// [`sample_tenant`] on any hub storage (`--data DIR` or `--database-url URL`).
pub fn sample_tenant_on(storage: &[&str], name: &str) -> Tenant {
    let t = json(&[&["hub", "tenant", "create", name, "--sample"], storage].concat());
    let id = s(&t["tenant_id"]);
    let admin = s(&t["admin_token"]);
    let st = json(&[&["hub", "store", "create", "--tenant", &id, "High Street"], storage].concat());
    let storage = storage.iter().map(|a| a.to_string()).collect();
    Tenant { hub_dir: PathBuf::new(), storage, id, admin, store: s(&st["store_id"]) }
}

impl Tenant {
    /// `args` followed by this tenant's hub storage arguments.
    pub fn on<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        args.iter().copied().chain(self.storage.iter().map(String::as_str)).collect()
    }

    pub fn code(&self) -> String {
        let e = json(&self.on(&["hub", "enrol", "--tenant", &self.id, "--store", &self.store]));
        s(&e["code"])
    }

    /// Enrols a till in `dir` through `url`; returns its `node init --json` answer.
    pub fn enrol(&self, url: &str, dir: &Path, name: &str) -> Value {
        let code = self.code();
        let v = json(&["node", "init", "--data", p(dir), "--hub", url, "--code", &code, "--name", name]);
        assert_eq!(s(&v["tenant_id"]), self.id);
        assert_eq!(s(&v["store_id"]), self.store);
        assert!(v["products"].as_u64().unwrap_or(0) > 0, "bootstrap pulled no products: {v}");
        v
    }

    /// The hub's state digest of the store (read from the hub's folder).
    pub fn digest(&self) -> String {
        let d = json(&self.on(&["hub", "digest", "--tenant", &self.id, "--store", &self.store]));
        s(&d["state_digest"])
    }

    /// Changes stored on the hub for this tenant.
    pub fn changes(&self) -> u64 {
        let u = json(&self.on(&["hub", "usage", "--tenant", &self.id]));
        u["changes"].as_u64().unwrap_or_else(|| panic!("changes in {u}"))
    }
}

pub fn status(dir: &Path) -> Value {
    json(&["status", "--data", p(dir)])
}

pub fn sync(dir: &Path) -> Value {
    json(&["sync", "--data", p(dir)])
}

/// Sells `item` paid in cash; returns the `sale --json` answer.
pub fn sell(dir: &Path, item: &str) -> Value {
    let v = json(&["sale", "--data", p(dir), "--item", item, "--pay", "cash"]);
    assert!(v["receipt"].as_str().is_some_and(|r| !r.is_empty()), "no receipt: {v}");
    v
}

pub fn sales(dir: &Path) -> Vec<Value> {
    json(&["sales", "list", "--data", p(dir), "--limit", "100000"]).as_array().expect("sales array").clone()
}

pub fn sale_ids(dir: &Path) -> BTreeSet<String> {
    sales(dir).iter().map(|v| s(&v["sale_id"])).collect()
}

pub fn config_set(dir: &Path, key: &str, value: &str) {
    ok(&["config", "set", "--data", p(dir), key, value]);
}

/// Syncs until nothing is pending (at most `rounds` rounds); panics otherwise.
pub fn sync_until_clean(dir: &Path, rounds: usize) {
    for _ in 0..rounds {
        let o = till(&["sync", "--data", p(dir), "--json"]);
        if o.code == 0 && status(dir)["pending_total"] == 0 {
            return;
        }
    }
    panic!("{} still has pending changes after {rounds} syncs: {}", dir.display(), status(dir));
}

/// Enrols a fresh till and syncs it: what the hub holds, as a till sees it.
/// Checks that the hub holds each sale once (distinct ids and receipts).
pub fn hub_sales(t: &Tenant, url: &str, dir: &Path) -> Vec<Value> {
    t.enrol(url, dir, "Observer");
    sync_until_clean(dir, 3);
    let list = sales(dir);
    let ids: BTreeSet<String> = list.iter().map(|v| s(&v["sale_id"])).collect();
    let receipts: BTreeSet<String> = list.iter().map(|v| s(&v["receipt"])).collect();
    assert_eq!(ids.len(), list.len(), "a sale id appears twice on the hub");
    assert_eq!(receipts.len(), list.len(), "a receipt appears twice on the hub");
    list
}

// ---------------------------------------------------------------------------
// A background `till node run --json`
// ---------------------------------------------------------------------------

/// `till node run --json` with its stdout lines on a channel (each with the
/// moment it arrived); SIGKILLed on drop.
pub struct Runner {
    pub bg: Bg,
    pub api: String,
    lines: mpsc::Receiver<(Instant, Value)>,
    stderr: Arc<Mutex<String>>,
}

impl Runner {
    pub fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Runner {
        let mut args = vec!["node", "run", "--data", p(dir), "--ui", "127.0.0.1:0", "--json"];
        args.extend_from_slice(extra);
        let mut cmd = base_command();
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn node run");
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
        let (tx, rx) = mpsc::channel();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).is_ok_and(|n| n > 0) {
                let v: Value = serde_json::from_str(line.trim())
                    .unwrap_or_else(|e| panic!("node run printed a line that is not JSON ({e}): {line}"));
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let bg = Bg(child);
        let (_, first) = rx.recv_timeout(Duration::from_secs(10)).expect("node run prints its API address");
        let api = s(&first["api"]);
        assert!(api.starts_with("http://127.0.0.1:"), "{first}");
        Runner { bg, api: api.trim_start_matches("http://").to_string(), lines: rx, stderr }
    }

    /// The next round report, if one comes within `timeout`.
    pub fn next_round(&self, timeout: Duration) -> Option<(Instant, Value)> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Waits for a round report matching `pred`; panics after `timeout`.
    pub fn wait_round(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> (Instant, Value) {
        let deadline = Instant::now() + timeout;
        let mut seen = vec![];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, v)) if pred(&v) => return (at, v),
                Ok((_, v)) => seen.push(v),
                Err(_) => {
                    panic!("no round {what} within {timeout:?}; rounds seen: {seen:?}; stderr: {}", self.stderr())
                }
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// GET /api/status on the node's local API.
    pub fn api_status(&self) -> Value {
        let (code, body) = http(&self.api, "GET", "/api/status");
        assert_eq!(code, 200, "GET /api/status answered {code}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/status is not JSON ({e}): {body}"))
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.0 to the node's local API (close-delimited answers, no chunking)
// ---------------------------------------------------------------------------

/// Sends one request; returns (status, body).
pub fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    http_json(addr, method, path, "")
}

/// Sends one request with a JSON body (none when empty); returns (status, body).
pub fn http_json(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let kind = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
    write!(c, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{kind}Content-Length: {}\r\n\r\n{body}", body.len())
        .expect("send request");
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {raw:?}"));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_string())
}

/// Opens an SSE stream; every `event: NAME` with its `data:` JSON arrives on
/// the channel with the moment it was read. The reader thread ends when the
/// connection closes.
pub fn sse(addr: &str, path: &str) -> mpsc::Receiver<(Instant, String, Value)> {
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").expect("send request");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(c);
        let mut line = String::new();
        // Headers.
        loop {
            line.clear();
            if r.read_line(&mut line).map_or(true, |n| n == 0) {
                return;
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            line.clear();
            if r.read_line(&mut line).map_or(true, |n| n == 0) {
                return;
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if let Some(e) = l.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = l.strip_prefix("data:") {
                data.push_str(d.trim_start());
            } else if l.is_empty() && !data.is_empty() {
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
                if tx.send((Instant::now(), std::mem::take(&mut event), v)).is_err() {
                    return;
                }
                data.clear();
            }
        }
    });
    rx
}

// ---------------------------------------------------------------------------
// A seeded PRNG
// ---------------------------------------------------------------------------

/// xorshift64: small, seeded, reproducible.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// A value in lo..=hi.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

// ---------------------------------------------------------------------------
// `till status --json`, field by field
// ---------------------------------------------------------------------------

/// When the till last synced, as status must show it.
#[derive(Clone, Copy, Debug)]
pub enum LastSync {
    Never,
    /// At or after this wall-clock millisecond (and not in the future).
    After(u64),
    /// Exactly this millisecond (unchanged since it was read).
    At(u64),
}

/// What `till status --json` must say. Every field of the document is
/// checked against it.
#[derive(Clone, Debug)]
pub struct Expect {
    pub state: &'static str,
    /// sales, stock, catalog, telemetry.
    pub pending: [i64; 4],
    /// `network.reachable`.
    pub reachable: Option<bool>,
    /// `revoked`, or `ok` (shown as `error` while `error` is set).
    pub hub_status: &'static str,
    pub hub_url: String,
    /// `None`: no error shown (null or empty); `Some(s)`: the error contains `s`.
    pub error: Option<&'static str>,
    pub failures: u64,
    pub last_sync: LastSync,
    /// Whether `progress` is an object (only while syncing).
    pub progress: bool,
    /// Exact totals of changes pushed and pulled, when known.
    pub pushed: Option<u64>,
    pub pulled: Option<u64>,
    pub conflicts_open: i64,
    pub quarantined: i64,
    pub offline_warning: bool,
}

impl Expect {
    pub fn new(state: &'static str, hub_url: &str) -> Expect {
        Expect {
            state,
            pending: [0; 4],
            reachable: None,
            hub_status: "ok",
            hub_url: hub_url.to_string(),
            error: None,
            failures: 0,
            last_sync: LastSync::Never,
            progress: false,
            pushed: None,
            pulled: None,
            conflicts_open: 0,
            quarantined: 0,
            offline_warning: false,
        }
    }
}

/// The keys `till status --json` (and `/api/status`) must have.
pub const STATUS_KEYS: &[&str] = &[
    "state",
    "progress",
    "network",
    "pending",
    "pending_total",
    "last_sync_at",
    "last_sync_ms",
    "last_error",
    "pushed",
    "pulled",
    "conflicts_open",
    "quarantined",
    "clock_skew_ms",
    "failures",
    "offline_warning",
    "hub_status",
    "hub_url",
    "device_id",
    "tenant_id",
    "store_id",
    "receipt_prefix",
    "state_digest",
    "tenant_digest",
    "bytes_sent",
];

/// Checks a status document field by field; `ctx` names the situation.
pub fn check_status(st: &Value, e: &Expect, ctx: &str) {
    let o = st.as_object().unwrap_or_else(|| panic!("{ctx}: status is not an object: {st}"));
    for k in STATUS_KEYS {
        assert!(o.contains_key(*k), "{ctx}: status lacks '{k}': {st}");
    }
    assert_eq!(st["state"], e.state, "{ctx}: state: {st}");
    // Pending per lane and in total.
    for (i, lane) in ["sales", "stock", "catalog", "telemetry"].iter().enumerate() {
        assert_eq!(st["pending"][lane].as_i64(), Some(e.pending[i]), "{ctx}: pending.{lane}: {st}");
    }
    assert_eq!(st["pending_total"].as_i64(), Some(e.pending.iter().sum::<i64>()), "{ctx}: pending_total: {st}");
    // Progress: an object {done <= total} only while a round runs.
    if e.progress {
        let done = st["progress"]["done"].as_u64().unwrap_or_else(|| panic!("{ctx}: progress.done: {st}"));
        let total = st["progress"]["total"].as_u64().unwrap_or_else(|| panic!("{ctx}: progress.total: {st}"));
        assert!(done >= 1 && done <= total, "{ctx}: progress {done}/{total}: {st}");
    } else {
        assert!(st["progress"].is_null(), "{ctx}: no round runs, progress must be null: {st}");
    }
    // Network: reachability from the last probe or round; the hub field agrees.
    let net = &st["network"];
    assert_eq!(net["reachable"].as_bool(), e.reachable, "{ctx}: network.reachable: {st}");
    let kind = net["type"].as_str().unwrap_or_else(|| panic!("{ctx}: network.type: {st}"));
    assert!(["wifi", "cellular", "ethernet", "other", "none"].contains(&kind), "{ctx}: network.type {kind}");
    assert_eq!(net["metered"].as_bool(), Some(kind == "cellular"), "{ctx}: metered (auto) follows the link: {st}");
    assert!(net["signal"].is_null() || net["signal"].is_i64(), "{ctx}: network.signal: {st}");
    let hub = match (e.reachable, kind) {
        (Some(true), _) => "reachable",
        (_, "none") => "no_link",
        (Some(false), _) => "link_up_hub_down",
        (None, _) => "unknown",
    };
    assert_eq!(net["hub"], hub, "{ctx}: network.hub: {st}");
    // Last sync.
    let now = now_ms();
    match e.last_sync {
        LastSync::Never => assert!(st["last_sync_at"].is_null(), "{ctx}: never synced: {st}"),
        LastSync::After(t) => {
            let at = st["last_sync_at"].as_u64().unwrap_or_else(|| panic!("{ctx}: last_sync_at: {st}"));
            assert!(at >= t && at <= now + 1, "{ctx}: last_sync_at {at} not in [{t}, {now}]: {st}");
        }
        LastSync::At(t) => assert_eq!(st["last_sync_at"].as_u64(), Some(t), "{ctx}: last_sync_at: {st}"),
    }
    assert_eq!(st["last_sync_at"], st["last_sync_ms"], "{ctx}: last_sync_at and last_sync_ms agree: {st}");
    // Last error.
    match e.error {
        None => assert!(
            st["last_error"].is_null() || st["last_error"] == "",
            "{ctx}: no error expected, got {}",
            st["last_error"]
        ),
        Some(sub) => assert!(
            st["last_error"].as_str().is_some_and(|m| m.contains(sub)),
            "{ctx}: last_error should contain '{sub}': {st}"
        ),
    }
    assert_eq!(st["failures"].as_u64(), Some(e.failures), "{ctx}: failures: {st}");
    // hub_status: revoked, else error while an error is shown, else ok.
    let hub_status = match (e.hub_status, e.error) {
        ("revoked", _) => "revoked",
        (_, Some(_)) => "error",
        _ => "ok",
    };
    assert_eq!(st["hub_status"], hub_status, "{ctx}: hub_status: {st}");
    assert_eq!(st["hub_url"].as_str(), Some(e.hub_url.as_str()), "{ctx}: hub_url: {st}");
    // Totals.
    let pushed = st["pushed"].as_u64().unwrap_or_else(|| panic!("{ctx}: pushed: {st}"));
    let pulled = st["pulled"].as_u64().unwrap_or_else(|| panic!("{ctx}: pulled: {st}"));
    if let Some(x) = e.pushed {
        assert_eq!(pushed, x, "{ctx}: pushed total: {st}");
    }
    if let Some(x) = e.pulled {
        assert_eq!(pulled, x, "{ctx}: pulled total: {st}");
    }
    assert_eq!(st["conflicts_open"].as_i64(), Some(e.conflicts_open), "{ctx}: conflicts_open: {st}");
    assert_eq!(st["quarantined"].as_i64(), Some(e.quarantined), "{ctx}: quarantined: {st}");
    // Clock skew: measured once the hub answered; same machine, so small.
    if !matches!(e.last_sync, LastSync::Never) {
        let skew = st["clock_skew_ms"].as_i64().unwrap_or_else(|| panic!("{ctx}: clock_skew_ms: {st}"));
        assert!(skew.abs() < 5_000, "{ctx}: clock skew on one machine: {skew} ms");
    }
    assert_eq!(st["offline_warning"].is_string(), e.offline_warning, "{ctx}: offline_warning: {st}");
    // Identity and digests are there.
    for k in ["device_id", "tenant_id", "store_id", "receipt_prefix", "state_digest", "tenant_digest"] {
        assert!(st[k].as_str().is_some_and(|v| !v.is_empty()), "{ctx}: {k}: {st}");
    }
    for lane in ["sales", "stock", "catalog", "telemetry"] {
        assert!(st["bytes_sent"][lane].is_u64(), "{ctx}: bytes_sent.{lane}: {st}");
    }
}
