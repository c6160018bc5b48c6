//! Offline drain and node memory (issue 4): N sales queued while the till
//! could not sync reach the hub after reconnection, driven by a real
//! `till node run`; beside it, in the same run, the hub ingesting the same
//! number of changes pushed directly (the hub-ingest figure). Also the node
//! process's memory idle and while syncing.
//!
//! cargo bench -p till --bench drain            (20,000 sales)
//! TILL_DRAIN_SALES=2000 cargo bench -p till --bench drain   (quick)

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tillsync_core::domain::{Method, PaymentInput};
use tillsync_core::{IdGen, Lane, Schema};
use tillsync_store::{SaleRequest, Store};

const BIN: &str = env!("CARGO_BIN_EXE_till");

fn till(args: &[&str]) -> Value {
    let o = Command::new(BIN).args(args).output().expect("till");
    assert!(o.status.success(), "till {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

struct Bg(Child);
impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn pending(dir: &Path) -> i64 {
    let (c, _) = tillsync_store::keys::open(&dir.join("till.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT sum(next_seq - 1 - acked_seq) FROM lanes", [], |r| r.get(0)).unwrap()
}

fn queue_sales(dir: &Path, n: usize) -> Duration {
    let mut s = Store::open(dir, Schema::standard(), IdGen::from_u64(7)).unwrap();
    let cash = PaymentInput { method: Method::Cash, amount_minor: None, brand: None, last4: None };
    let started = Instant::now();
    for i in 0..n {
        let items =
            vec![("ESPRESSO".to_string(), 1), ("CROISSANT".to_string(), 1 + (i % 2) as i64), ("WATER".to_string(), 1)];
        s.sell(
            1_800_000_000_000 + i as u64,
            &SaleRequest { items, payments: vec![cash.clone()], ..Default::default() },
        )
        .unwrap();
    }
    started.elapsed()
}

fn main() {
    let n: usize = std::env::var("TILL_DRAIN_SALES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let tmp = tempfile::tempdir_in(std::env::var("TILL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap();
    let hub_dir = tmp.path().join("hub");
    let h = hub_dir.to_str().unwrap();
    let t = till(&["hub", "tenant", "create", "Bench", "--sample", "--data", h, "--json"]);
    let tenant = t["tenant_id"].as_str().unwrap().to_string();
    let store = till(&["hub", "store", "create", "--tenant", &tenant, "Main", "--data", h, "--json"])["store_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut hub = Command::new(BIN)
        .args(["hub", "serve", "--data", h, "--listen", "127.0.0.1:0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(hub.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = serde_json::from_str::<Value>(&line).unwrap()["url"].as_str().unwrap().to_string();
    let hub = Bg(hub);
    let enrol = |name: &str| {
        let code = till(&["hub", "enrol", "--tenant", &tenant, "--store", &store, "--data", h, "--json"])["code"]
            .as_str()
            .unwrap()
            .to_string();
        let d = tmp.path().join(name);
        till(&[
            "node",
            "init",
            "--data",
            d.to_str().unwrap(),
            "--hub",
            &url,
            "--code",
            &code,
            "--name",
            name,
            "--json",
        ]);
        d
    };
    let (a, b) = (enrol("drain"), enrol("direct"));

    // The same N sales queued on both tills while they do not sync.
    let queued_a = queue_sales(&a, n);
    let queued_b = queue_sales(&b, n);
    println!(
        "queued {n} sales offline on each till ({:.1} s and {:.1} s)",
        queued_a.as_secs_f64(),
        queued_b.as_secs_f64()
    );

    // Baseline, same run: the hub ingesting till B's changes pushed directly
    // in batches of the node's size (no node driver, no pull).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let direct = {
        let s = Store::open(&b, Schema::standard(), IdGen::from_u64(8)).unwrap();
        let token = tillsync_node::sync::load_token(&b).unwrap();
        let client = tillsync_node::HubClient::new(&url, Some(token), &Default::default()).unwrap();
        let changes: Vec<_> = s.pending_changes(Lane::Sales, usize::MAX >> 1).unwrap();
        let started = Instant::now();
        rt.block_on(async {
            for chunk in changes.chunks(tillsync_node::sync::PUSH_BATCH_LEN) {
                let req = tillsync_core::wire::PushRequest {
                    device_time_ms: 0,
                    changes: chunk
                        .iter()
                        .map(|p| tillsync_core::wire::WireChange::from_change(&p.change, p.digest.clone()))
                        .collect(),
                    ..Default::default()
                };
                let r = client.push(&req).await.unwrap();
                assert!(r.lanes[&Lane::Sales].error.is_none());
            }
        });
        started.elapsed()
    };

    // The drain: a real `till node run` reconnecting with N queued sales.
    let mut node = Command::new(BIN)
        .args(["node", "run", "--data", a.to_str().unwrap(), "--ui", "127.0.0.1:0", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = node.id();
    let started = Instant::now();
    while pending(&a) > 0 {
        assert!(started.elapsed() < Duration::from_secs(600), "the drain did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain = started.elapsed();
    // Then it pulls till B's sales; idle is measured once that is over.
    let settle = Instant::now();
    loop {
        let before = rss_kb(pid, "VmRSS:");
        std::thread::sleep(Duration::from_secs(2));
        if rss_kb(pid, "VmRSS:") <= before || settle.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let idle_kb = rss_kb(pid, "VmRSS:");
    let peak_kb = rss_kb(pid, "VmHWM:");
    let idle_map = memory_map(pid);
    let _ = node.kill();
    let _ = node.wait();
    drop(hub);

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("## Offline drain (issue 4), {n} sales of 3 lines");
    println!("| what | time | sales/s |");
    println!("|---|---|---|");
    println!("| drain through `till node run` (push {n} + pull) | {:.2} s | {:.0} |", drain.as_secs_f64(), rate(drain));
    println!(
        "| hub ingest, direct pushes of the same {n} changes | {:.2} s | {:.0} |",
        direct.as_secs_f64(),
        rate(direct)
    );
    println!("| ratio drain / direct | {:.2}x | |", drain.as_secs_f64() / direct.as_secs_f64());
    println!(
        "node memory: peak while syncing {:.1} MB (VmHWM), idle after {:.1} MB (VmRSS)",
        peak_kb as f64 / 1024.0,
        idle_kb as f64 / 1024.0
    );
    println!("goals: drain under 5 s; idle under 40 MB");
    println!("where the idle memory is (resident kB by mapping, from /proc/PID/smaps):");
    for (name, kb) in idle_map {
        println!("  {kb:>7} kB  {name}");
    }
}

/// The node's resident memory grouped by what is mapped (the binary, the
/// heap, thread stacks and anonymous mappings), largest first.
fn memory_map(pid: u32) -> Vec<(String, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    let mut name = String::new();
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            let file = path.rsplit('/').next().unwrap_or(path);
            name = if path.is_empty() { format!("[anon] {perms}") } else { format!("{file} {perms}") };
        } else if first == "Rss:" {
            *by.entry(name.clone()).or_default() += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    let mut v: Vec<_> = by.into_iter().filter(|(_, kb)| *kb >= 256).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}
