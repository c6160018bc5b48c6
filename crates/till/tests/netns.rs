//! The network monitor against real interfaces: a network namespace made by
//! the test, with a veth pair brought down and up. Outside CI the test skips
//! (saying so) where the machine forbids namespaces; under CI=true a skip is
//! a failure.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_till");

struct Ns(String);

impl Ns {
    fn create() -> Option<Ns> {
        let name = format!("tilltest{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        Some(ns)
    }

    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip").args(["netns", "exec", &self.0, "ip"]).args(args).status().expect("ip");
        assert!(st.success(), "ip {args:?} failed in {}", self.0);
    }

    fn till(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, BIN]);
        c
    }

    fn run(&self, args: &[&str]) -> Value {
        let o = self.till().args(args).output().expect("till");
        assert!(o.status.success(), "till {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("JSON from {args:?}: {}", String::from_utf8_lossy(&o.stdout)))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines(child: &mut Child, stdout: bool) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let r: Box<dyn std::io::Read + Send> = if stdout {
        Box::new(child.stdout.take().expect("stdout"))
    } else {
        Box::new(child.stderr.take().expect("stderr"))
    };
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<String>, what: &str, pred: impl Fn(&str) -> bool, secs: u64) -> String {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100))
            && pred(&l)
        {
            return l;
        }
    }
    panic!("no {what} within {secs} s");
}

#[test]
fn links_going_down_and_up_are_seen_and_trigger_a_sync() {
    let Some(ns) = Ns::create() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("cannot create a network namespace under CI: the network monitor test must run");
        }
        eprintln!("SKIPPED: this machine forbids network namespaces (ip netns add failed); run as root to test");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (hub_dir, till_dir) = (tmp.path().join("hub"), tmp.path().join("till"));
    let hd = hub_dir.to_str().unwrap();
    let t = ns.run(&["hub", "tenant", "create", "NetCafe", "--sample", "--data", hd, "--json"]);
    let tenant = t["tenant_id"].as_str().unwrap().to_string();
    let s = ns.run(&["hub", "store", "create", "--tenant", &tenant, "Main", "--data", hd, "--json"]);
    let store = s["store_id"].as_str().unwrap().to_string();
    let mut hub = ns
        .till()
        .args(["hub", "serve", "--data", hd, "--listen", "127.0.0.1:0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hub_out = lines(&mut hub, true);
    let _hub = Bg(hub);
    let first = wait_for(&hub_out, "hub address", |l| l.contains("url"), 10);
    let url = serde_json::from_str::<Value>(&first).unwrap()["url"].as_str().unwrap().to_string();
    let code = ns.run(&["hub", "enrol", "--tenant", &tenant, "--store", &store, "--data", hd, "--json"]);
    let td = till_dir.to_str().unwrap();
    ns.run(&["node", "init", "--data", td, "--hub", &url, "--code", code["code"].as_str().unwrap(), "--json"]);

    // Links down: no way out (the hub is on this namespace's loopback).
    let v = ns.run(&["network", "--data", td, "--json"]);
    assert_eq!(v["type"], "none", "{v}");
    let names: Vec<&str> = v["interfaces"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["v0", "v1"], "loopback is not a link: {v}");
    assert!(v["interfaces"].as_array().unwrap().iter().all(|i| i["up"] == false && i["kind"] == "ethernet"), "{v}");

    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["link", "set", "v1", "up"]);
    let v = ns.run(&["network", "--data", td, "--json"]);
    assert_eq!(v["type"], "ethernet", "{v}");
    assert_eq!(v["reachable"], true, "{v}");
    assert_eq!(v["hub"], "reachable", "{v}");

    // The running node sees the links change and syncs on the change.
    ns.run(&["config", "set", "--data", td, "sync.probe_interval_ms", "200", "--json"]);
    let mut node = ns
        .till()
        .args(["node", "run", "--data", td, "--interval", "3600", "--ui", "127.0.0.1:0", "--json"])
        .env("TILL_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(&mut node, true);
    let log = lines(&mut node, false);
    let _node = Bg(node);
    wait_for(&out, "the first round", |l| l.contains("\"trigger\""), 10);
    ns.ip(&["link", "set", "v0", "down"]);
    wait_for(&log, "a link-down event", |l| l.contains("network link changed") && l.contains("none"), 10);
    ns.ip(&["link", "set", "v0", "up"]);
    wait_for(&log, "a link-up event", |l| l.contains("network link changed") && l.contains("ethernet"), 10);
    let round = wait_for(&out, "a sync on the link coming back", |l| l.contains("Reachable"), 10);
    assert!(round.contains("pushed"), "{round}");
}
