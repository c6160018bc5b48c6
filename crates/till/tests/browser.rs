//! The POS web UI end to end in a real browser: Debian's chromium driven by
//! playwright-core (tests/browser, installed by `scripts/setup`), against
//! real `till hub serve` and `till node run` processes started here.
//!
//! Each test runs one scenario script, `node tests/browser/run.mjs NAME`.
//! The script drives the browser and asks this harness for what a browser
//! cannot do (stop or start the hub, write on a till from the command line)
//! by printing `@call ["name", args...]`; the answer is one JSON line on its
//! standard input. Screenshots go to `target/tmp/browser/NAME/`.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest one scenario may run.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// A hub with a sample tenant and `n` enrolled tills, each under `node run`
/// (which serves the UI on the same address as its local API).
struct World {
    _tmp: tempfile::TempDir,
    hub_dir: PathBuf,
    hub: Option<Hub>,
    port: u16,
    tenant: Tenant,
    tills: Vec<(PathBuf, Runner)>,
}

impl World {
    fn new(n: usize) -> World {
        let tmp = tempfile::tempdir().expect("temp dir");
        let hub_dir = tmp.path().join("hub");
        let tenant = sample_tenant(&hub_dir, "Browser Cafe");
        // Price conflicts are listed for a person to resolve (the conflict
        // scenario); set before the tills enrol, so they start with it.
        ok(&["hub", "policy", "set", "--tenant", &tenant.id, "products.price_minor", "manual", "--data", p(&hub_dir)]);
        let hub = Hub::start(&hub_dir);
        let port = hub.port;
        let mut tills = vec![];
        for i in 0..n {
            let dir = tmp.path().join(format!("till-{i}"));
            tenant.enrol(&hub.url, &dir, &format!("till {}", i + 1));
            let runner = Runner::start(&dir, &[], &[]);
            tills.push((dir, runner));
        }
        World { _tmp: tmp, hub_dir, hub: Some(hub), port, tenant, tills }
    }

    fn hub_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers one `@call` of the scenario script.
    fn call(&mut self, args: &[Value]) -> Result<Value, String> {
        let name = args.first().and_then(Value::as_str).ok_or("a call names what to do")?;
        let till = |i: usize| -> Result<&Path, String> {
            let idx = args.get(i).and_then(Value::as_u64).ok_or("a till number")? as usize;
            self.tills.get(idx).map(|t| t.0.as_path()).ok_or_else(|| format!("no till {idx}"))
        };
        match name {
            "stop_hub" => {
                if let Some(mut h) = self.hub.take() {
                    h.kill();
                }
                Ok(Value::Null)
            }
            "start_hub" => {
                if self.hub.is_none() {
                    self.hub = Some(Hub::start_on_port(&self.hub_dir, self.port));
                }
                Ok(json!(self.hub_url()))
            }
            // `["set_price", till, sku, price]`: a price change from the
            // command line, as another cashier would make it.
            "set_price" => {
                let dir = till(1)?;
                let sku = args.get(2).and_then(Value::as_str).ok_or("a sku")?;
                let price = args.get(3).and_then(Value::as_str).ok_or("a price")?;
                let o = common::till(&["product", "update", "--data", p(dir), "--sku", sku, "--price", price]);
                if o.code != 0 {
                    return Err(o.describe(&["product", "update"]));
                }
                Ok(Value::Null)
            }
            // `["status", till]`: `till status --json` of a till.
            "status" => Ok(status(till(1)?)),
            // `["wait_conflicts", till, n]`: waits (up to 20 s) until the till
            // lists `n` open conflicts, so the browser starts from a known state.
            "wait_conflicts" => {
                let dir = till(1)?.to_path_buf();
                let want = args.get(2).and_then(Value::as_u64).ok_or("a count")?;
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let st = status(&dir);
                    if st["conflicts_open"].as_u64() == Some(want) {
                        return Ok(st);
                    }
                    if Instant::now() > deadline {
                        return Err(format!("till {} never had {want} open conflicts: {st}", dir.display()));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            "hub_digest" => Ok(json!(self.tenant.digest())),
            other => Err(format!("unknown call {other:?}")),
        }
    }
}

/// Runs one scenario script against a fresh world of `n` tills.
fn scenario(name: &str, n: usize) {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run `scripts/setup` (the README's test command does)",
        dir.display()
    );
    assert!(
        Path::new(&chromium()).exists(),
        "no chromium at {}: run `scripts/setup` (installs Debian's chromium) or set CHROMIUM",
        chromium()
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser").join(name);
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot folder");

    let mut world = World::new(n);
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("run.mjs"))
        .arg(name)
        .current_dir(&dir)
        .env("TILL_SHOTS", &shots)
        .env("CHROMIUM", chromium())
        .env("TILL_HUB_URL", world.hub_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (i, (_, r)) in world.tills.iter().enumerate() {
        cmd.env(format!("TILL_UI_{i}"), format!("http://{}", r.api));
    }
    let mut child = cmd.spawn().expect("spawn node (Node.js is needed for the browser tests)");
    let mut stdin = child.stdin.take().expect("stdin");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    let mut log = vec![];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(call) = line.strip_prefix("@call ") {
                    let args: Vec<Value> = serde_json::from_str(call).unwrap_or_default();
                    let answer = match world.call(&args) {
                        Ok(v) => json!({"ok": true, "value": v}),
                        Err(e) => json!({"ok": false, "error": e}),
                    };
                    eprintln!("[{name}] {call} -> {answer}");
                    writeln!(stdin, "{answer}").expect("answer the scenario");
                } else {
                    eprintln!("[{name}] {line}");
                    log.push(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("scenario {name} did not finish within {SCENARIO_TIMEOUT:?}; its output:\n{}", log.join("\n"));
            }
        }
    }
    let status = child.wait().expect("wait for node");
    if !status.success() {
        for (dir, r) in &world.tills {
            eprintln!("till {} stderr:\n{}", dir.display(), r.stderr());
        }
    }
    assert!(
        status.success(),
        "scenario {name} failed ({status}); screenshots in {}; its output:\n{}",
        shots.display(),
        log.join("\n")
    );
    let pngs = std::fs::read_dir(&shots).map(|d| d.count()).unwrap_or(0);
    assert!(pngs > 0, "scenario {name} saved no screenshot in {}", shots.display());
}

#[test]
fn browser_a_cashier_sells_three_items_and_the_sale_shows_on_the_second_till() {
    scenario("sell", 2);
}

#[test]
fn browser_the_indicator_follows_the_hub_going_down_and_up_without_a_reload() {
    scenario("indicator", 1);
}

#[test]
fn browser_a_conflict_resolved_on_one_till_disappears_on_both() {
    scenario("conflict", 2);
}

#[test]
fn browser_a_keyboard_only_checkout() {
    scenario("keyboard", 1);
}
