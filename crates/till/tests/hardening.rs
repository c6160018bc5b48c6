//! HTTP hardening and the token lifecycle, end to end: a real `till hub
//! serve` and real tills over real sockets. Slow and idle clients are cut
//! off while event streams live on, oversized bodies (plain and zstd bombs)
//! get 413, a flooding device is rate limited alone and a limited till
//! waits and loses nothing, tokens carry prefixes, rotate and revoke at
//! once, error bodies carry no internal detail, and the till's UI sends its
//! security headers and asks for a sign-in when it is not on loopback.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Raw HTTP/1.0 with headers both ways
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
}

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// One request (HTTP/1.0, so the answer ends with the connection). The body
/// is written from another thread: a server that answers before reading a
/// large body whole is still heard.
fn send(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes()).unwrap();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // The server may stop reading (413): a broken pipe here is expected.
        let _ = w.write_all(&body);
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the answer arrived (the server closed with our
            // body unread): what was read is the answer.
            Err(_) if raw.windows(4).any(|w| w == b"\r\n\r\n") => break,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }
    let _ = c.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{method} {path}: no answer: {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply { status, headers, body: body.to_string() }
}

fn get(addr: &str, path: &str, token: &str) -> Reply {
    send(addr, "GET", path, &[("Authorization", &format!("Bearer {token}"))], vec![])
}

/// The till's device token, read from its encrypted database.
fn token_of(dir: &Path) -> String {
    tillsync_store::read_meta(dir, "device_token").unwrap().expect("the device token")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A counter of the hub's metrics listener.
fn metric(addr: &str, name: &str) -> u64 {
    let r = send(addr, "GET", "/metrics", &[], vec![]);
    assert_eq!(r.status, 200, "{r:?}");
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {}", r.body))
}

/// Words that must never reach a client in an error body.
const INTERNAL_DETAIL: &[&str] = &[
    "sqlite",
    "rusqlite",
    "postgres",
    "no such table",
    "select ",
    "update ",
    "insert ",
    "panicked",
    "struct ",
    "::",
    "src/",
    ".rs:",
    "/tmp/",
    "hub.db",
    "till.db",
];

#[track_caller]
fn assert_no_detail(r: &Reply, hub_dir: &Path) {
    let lower = r.body.to_lowercase();
    for bad in INTERNAL_DETAIL {
        assert!(!lower.contains(bad), "error body leaks {bad:?}: {r:?}");
    }
    assert!(!r.body.contains(p(hub_dir)), "error body names the hub's folder: {r:?}");
    let v = r.json();
    assert!(v["code"].as_str().is_some_and(|c| !c.is_empty()), "no stable code: {r:?}");
}

// ---------------------------------------------------------------------------
// Slow and idle connections
// ---------------------------------------------------------------------------

/// Whether the peer closed the connection (a read of 0 or a reset) within `wait`.
fn closed_within(c: &mut TcpStream, wait: Duration) -> bool {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_headers_and_idle_connections_are_dropped_while_event_streams_live() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir, "Slow Co");
    let hub = Hub::try_start_with(&hub_dir, "127.0.0.1:0", &["--header-read-timeout-ms", "1000"]).unwrap();
    let addr = addr_of(&hub.url);

    // A client sending its request one byte per second is cut off long
    // before its headers are complete.
    let request = b"GET /healthz HTTP/1.1\r\nHost: hub\r\nUser-Agent: slowloris\r\n\r\n";
    let mut c = TcpStream::connect(&addr).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut cut = false;
    for b in request {
        if c.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        sent += 1;
        if closed_within(&mut c, Duration::from_secs(1)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "a client that sent {sent} bytes one per second was never disconnected");
    assert!(sent < 8, "the slow client sent {sent} bytes of its headers before being cut off");
    assert!(started.elapsed() < Duration::from_secs(8), "cut off only after {:?}", started.elapsed());

    // An idle keep-alive connection is closed after the same bound.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("tillsync-hub ok v1") {
        let n = c.read(&mut buf).expect("the health answer");
        assert!(n > 0, "closed before answering: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got));
    assert!(closed_within(&mut c, Duration::from_secs(8)), "an idle keep-alive connection stayed open");

    // The hub keeps serving everyone else.
    assert_eq!(send(&addr, "GET", "/healthz", &[], vec![]).status, 200);

    // A live event stream is a response in progress, not a slow request: it
    // outlives the header timeout several times and still delivers.
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    t.enrol(&hub.url, &a, "A");
    t.enrol(&hub.url, &b, "B");
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(s, "GET /v1/events HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {}\r\n\r\n", token_of(&a)).unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                return;
            }
        }
        let _ = tx.send("<closed>".into());
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.contains("event: hello") && Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&chunk);
        }
    }
    assert!(seen.contains("event: hello"), "no hello on the event stream: {seen:?}");
    std::thread::sleep(Duration::from_millis(3_500));
    sell(&b, "LATTE");
    sync(&b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("event: change") && !seen.contains("<closed>") && Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&chunk);
        }
    }
    assert!(seen.contains("event: change"), "the event stream did not survive the header timeout: {seen:?}");
}

// ---------------------------------------------------------------------------
// Body and batch limits
// ---------------------------------------------------------------------------

#[test]
fn oversized_bodies_get_413_and_the_hub_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir, "Big Co");
    let hub = Hub::start(&hub_dir);
    let addr = addr_of(&hub.url);
    let a = tmp.path().join("a");
    t.enrol(&hub.url, &a, "A");
    let auth = format!("Bearer {}", token_of(&a));
    let json_headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];

    // 17 MiB of well-formed JSON: only its size can refuse it.
    let plain = format!(r#"{{"device_time_ms":1,"changes":[],"pad":"{}"}}"#, "x".repeat(17 << 20)).into_bytes();
    let r = send(&addr, "POST", "/v1/push", &json_headers, plain);
    assert_eq!((r.status, r.code()), (413, "too_large".to_string()), "{r:?}");

    // A zstd bomb: a few kilobytes on the wire, 100 MiB once decoded.
    let bomb = zstd::bulk::compress(&vec![b' '; 100 << 20], 19).unwrap();
    assert!(bomb.len() < 64 * 1024, "the bomb is {} bytes", bomb.len());
    let zstd_headers =
        [("Authorization", auth.as_str()), ("Content-Type", "application/json"), ("Content-Encoding", "zstd")];
    let r = send(&addr, "POST", "/v1/push", &zstd_headers, bomb.clone());
    assert_eq!((r.status, r.code()), (413, "too_large".to_string()), "{r:?}");
    // Without a token the bomb is refused before anything is decoded.
    let r = send(&addr, "POST", "/v1/enrol", &zstd_headers[1..], bomb);
    assert_eq!(r.status, 413, "{r:?}");

    // More changes in one push than a batch may hold: 400 with its code.
    let changes: Vec<Value> = (1..=1_001)
        .map(|i| serde_json::json!({"lane": "sales", "seq": i, "digest": "x", "hlc": 1, "ops": []}))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({"device_time_ms": 1, "changes": changes})).unwrap();
    let r = send(&addr, "POST", "/v1/push", &json_headers, body);
    assert_eq!((r.status, r.code()), (400, "too_many_changes".to_string()), "{r:?}");
    // A pull page asked larger than the hub serves is clamped, not refused.
    let r = get(&addr, "/v1/pull?after=0&limit=100000000", &token_of(&a));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["entries"].as_array().unwrap().len() <= 1_000);

    // The hub is unharmed: the till sells and syncs, and the hub has it.
    assert_eq!(send(&addr, "GET", "/healthz", &[], vec![]).status, 200);
    sell(&a, "LATTE");
    sync(&a);
    assert_eq!(status(&a)["pending_total"], 0);
    assert_eq!(t.digest(), s(&status(&a)["state_digest"]), "the hub holds what the till holds");
}

// ---------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------

/// A hub with low rate limits and its metrics address.
fn rate_limited_hub(hub_dir: &Path, rate_per_s: &str, burst_len: &str) -> (Hub, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let args = ["--rate-per-s", rate_per_s, "--rate-burst-len", burst_len, "--metrics", &metrics];
    (Hub::try_start_with(hub_dir, "127.0.0.1:0", &args).unwrap(), metrics)
}

#[test]
fn a_flooding_device_is_rate_limited_while_another_keeps_syncing() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir, "Flood Co");
    let (hub, metrics) = rate_limited_hub(&hub_dir, "5", "20");
    let addr = addr_of(&hub.url);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    t.enrol(&hub.url, &a, "A");
    t.enrol(&hub.url, &b, "B");

    // Device A floods from four connections at once.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_n, limited_n) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sample_429: Arc<Mutex<Option<Reply>>> = Arc::default();
    let token = token_of(&a);
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok_n, limited_n, sample_429) =
                (stop.clone(), ok_n.clone(), limited_n.clone(), sample_429.clone());
            let (addr, token) = (addr.clone(), token.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = get(&addr, "/v1/pull?after=0&limit=1", &token);
                    match r.status {
                        200 => ok_n.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            sample_429.lock().unwrap().get_or_insert(r);
                            limited_n.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("the flood got {other}: {r:?}"),
                    };
                }
            })
        })
        .collect();

    // Meanwhile till B sells and syncs, more than once, successfully.
    std::thread::sleep(Duration::from_millis(500));
    for item in ["LATTE", "ESPRESSO", "LATTE"] {
        sell(&b, item);
        let r = sync(&b);
        assert!(r["pushed"].as_u64().unwrap() >= 1, "{r}");
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    assert_eq!(status(&b)["pending_total"], 0, "B's sales reached the hub during the flood");

    let limited = limited_n.load(Ordering::Relaxed);
    assert!(limited > 0, "a flood of {} requests was never limited", ok_n.load(Ordering::Relaxed));
    assert!(ok_n.load(Ordering::Relaxed) >= 20, "the burst was served first");
    let r = sample_429.lock().unwrap().take().unwrap();
    assert_eq!(r.code(), "rate_limited", "{r:?}");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().expect("whole seconds");
    assert!(retry >= 1, "{r:?}");
    assert!(metric(&metrics, "tillsync_hub_rate_limited_total") >= limited);
}

#[test]
fn a_rate_limited_till_waits_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir, "Patient Co");
    let (hub, metrics) = rate_limited_hub(&hub_dir, "1", "4");
    let addr = addr_of(&hub.url);
    let a = tmp.path().join("a");
    t.enrol(&hub.url, &a, "A");
    let mut sold = std::collections::BTreeSet::new();
    for item in ["LATTE", "ESPRESSO", "LATTE", "BROWNIE", "LATTE"] {
        sold.insert(s(&sell(&a, item)["sale_id"]));
    }
    // Spend A's bucket, so its sync starts rate limited.
    let token = token_of(&a);
    let mut spent = false;
    for _ in 0..10 {
        if get(&addr, "/v1/digest", &token).status == 429 {
            spent = true;
            break;
        }
    }
    assert!(spent, "ten requests at once never reached the limit");
    let before = metric(&metrics, "tillsync_hub_rate_limited_total");

    // `till sync` waits out every 429 and completes the round.
    let out = till(&["sync", "--data", p(&a), "--json"]);
    assert_eq!(out.code, 0, "{}", out.describe(&["sync"]));
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["pushed"], 5, "{report}");
    assert!(
        metric(&metrics, "tillsync_hub_rate_limited_total") > before,
        "the sync was never limited, so this test shows nothing"
    );
    assert_eq!(status(&a)["pending_total"], 0);

    // Every sale is on the hub, once.
    let seen: std::collections::BTreeSet<String> =
        hub_sales(&t, &hub.url, &tmp.path().join("observer")).iter().map(|v| s(&v["sale_id"])).collect();
    assert!(sold.is_subset(&seen), "sales missing on the hub: {:?}", sold.difference(&seen).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// The token lifecycle
// ---------------------------------------------------------------------------

/// Whether `secret` appears anywhere in the hub's database files.
fn hub_files_hold(hub_dir: &Path, secret: &str) -> bool {
    ["hub.db", "hub.db-wal"].iter().any(|f| {
        std::fs::read(hub_dir.join(f)).is_ok_and(|bytes| bytes.windows(secret.len()).any(|w| w == secret.as_bytes()))
    })
}

#[test]
fn tokens_have_prefixes_rotate_and_revoke_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir, "Token Co");
    let hub = Hub::start(&hub_dir);
    let addr = addr_of(&hub.url);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    t.enrol(&hub.url, &a, "A");
    let b_id = s(&t.enrol(&hub.url, &b, "B")["device_id"]);

    // Recognisable, long, and stored only hashed.
    let old = token_of(&a);
    assert!(old.starts_with("tsd_") && old.len() == 68, "device token {old}");
    assert!(t.admin.starts_with("tsa_") && t.admin.len() == 68, "admin token {}", t.admin);
    assert!(!hub_files_hold(&hub_dir, &old) && !hub_files_hold(&hub_dir, &t.admin), "a token is stored in clear");

    // Device rotation: the old token is refused at once, the new one works,
    // and the till keeps syncing with it.
    assert_eq!(get(&addr, "/v1/digest", &old).status, 200);
    let r = json(&["devices", "rotate", "--data", p(&a)]);
    assert_eq!((&r["rotated"], &r["old_token_retired"]), (&Value::Bool(true), &Value::Bool(true)), "{r}");
    assert!(!r.to_string().contains("tsd_"), "the new token is never printed: {r}");
    let new = token_of(&a);
    assert!(new.starts_with("tsd_") && new != old, "{new}");
    let refused = get(&addr, "/v1/digest", &old);
    assert_eq!((refused.status, refused.code()), (401, "unauthorized".to_string()), "{refused:?}");
    assert_eq!(get(&addr, "/v1/digest", &new).status, 200);
    assert!(!hub_files_hold(&hub_dir, &new));
    sell(&a, "LATTE");
    assert_eq!(sync(&a)["pushed"], 1);
    assert_eq!(t.digest(), s(&status(&a)["state_digest"]));

    // Admin rotation over HTTP: the old admin token stops at once.
    let r = json(&["devices", "rotate-admin", "--hub", &hub.url, "--token", &t.admin]);
    let admin2 = s(&r["admin_token"]);
    assert!(admin2.starts_with("tsa_") && admin2 != t.admin);
    assert_eq!(get(&addr, "/v1/devices", &t.admin).status, 401);
    assert_eq!(get(&addr, "/v1/devices", &admin2).status, 200);
    fails(&["devices", "list", "--hub", &hub.url, "--token", &t.admin]);
    // And on the hub's own data, for a lost admin token, while it serves.
    let r = json(&["hub", "tenant", "rotate-admin", "--data", p(&hub_dir), "--tenant", &t.id]);
    let admin3 = s(&r["admin_token"]);
    assert!(admin3.starts_with("tsa_") && admin3 != admin2);
    assert_eq!(get(&addr, "/v1/devices", &admin2).status, 401);
    assert_eq!(get(&addr, "/v1/devices", &admin3).status, 200);
    assert!(!hub_files_hold(&hub_dir, &admin3));

    // Revocation is immediate: B's very next request is refused.
    let b_token = token_of(&b);
    assert_eq!(get(&addr, "/v1/digest", &b_token).status, 200);
    ok(&["devices", "revoke", "--hub", &hub.url, "--token", &admin3, &b_id]);
    let refused = get(&addr, "/v1/digest", &b_token);
    assert_eq!((refused.status, refused.code()), (401, "revoked".to_string()), "{refused:?}");
    let out = fails(&["sync", "--data", p(&b)]);
    assert!(out.stderr.contains("revoked"), "{}", out.stderr);
    // A revoked till cannot rotate its way back in.
    let out = fails(&["devices", "rotate", "--data", p(&b)]);
    assert!(out.stderr.contains("revoked"), "{}", out.stderr);
    assert_eq!(token_of(&b), b_token, "a refused rotation leaves the stored token alone");

    // Enrolment codes are single use (expiry is covered per backend in the
    // hub's isolation tests, where the clock can be passed in).
    let code = t.code();
    ok(&["node", "init", "--data", p(&tmp.path().join("c")), "--hub", &hub.url, "--code", &code]);
    let out = fails(&["node", "init", "--data", p(&tmp.path().join("d")), "--hub", &hub.url, "--code", &code]);
    assert!(out.stderr.contains("unknown, used or expired"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Error bodies
// ---------------------------------------------------------------------------

#[test]
fn error_bodies_carry_no_internal_detail() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir, "Quiet Co");
    let hub = Hub::start(&hub_dir);
    let addr = addr_of(&hub.url);
    let a = tmp.path().join("a");
    t.enrol(&hub.url, &a, "A");
    let auth = format!("Bearer {}", token_of(&a));
    let json_headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];

    // Client errors: what is wrong, never how the server is built.
    for (method, path, headers, body, status) in [
        ("GET", "/v1/nowhere", &json_headers[..], vec![], 404),
        ("POST", "/v1/push", &json_headers[..], b"\"not a push\"".to_vec(), 400),
        ("POST", "/v1/push", &json_headers[..], b"{\"changes\": [{\"lane\": \"vip\"}]}".to_vec(), 400),
        ("GET", "/v1/pull?after=minus-one", &json_headers[..], vec![], 400),
        ("POST", "/v1/push", &json_headers[1..], b"{}".to_vec(), 401),
        ("GET", "/v1/devices", &json_headers[..], vec![], 403),
        ("POST", "/v1/enrol", &json_headers[1..], b"{\"code\": \"AAAA-BBBB-CCCC\", \"name\": \"x\"}".to_vec(), 400),
        ("DELETE", "/v1/push", &json_headers[..], vec![], 405),
    ] {
        let r = send(&addr, method, path, headers, body);
        assert_eq!(r.status, status, "{method} {path}: {r:?}");
        assert_no_detail(&r, &hub_dir);
    }

    // A server error: the hub's database loses a table under it. The client
    // hears "internal error"; the detail goes to the hub's log.
    let db = rusqlite::Connection::open(hub_dir.join("hub.db")).unwrap();
    db.execute_batch("DROP TABLE codes").unwrap();
    drop(db);
    let r = send(
        &addr,
        "POST",
        "/v1/enrol",
        &json_headers[1..],
        b"{\"code\": \"AAAA-BBBB-CCCC\", \"name\": \"x\"}".to_vec(),
    );
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(r.json(), serde_json::json!({"code": "internal", "message": "internal error"}), "{r:?}");
    assert_no_detail(&r, &hub_dir);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !hub.stderr().contains("no such table") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(hub.stderr().contains("no such table: codes"), "the detail is logged: {}", hub.stderr());
    // Everything else still works.
    sell(&a, "LATTE");
    sync(&a);
}

// ---------------------------------------------------------------------------
// The till's UI
// ---------------------------------------------------------------------------

#[track_caller]
fn assert_security_headers(r: &Reply, what: &str) {
    let csp = r.header("content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP: {r:?}"));
    assert!(csp.contains("default-src 'self'") && !csp.contains("unsafe-inline"), "{what}: CSP {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: CSP {csp}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}: {r:?}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{what}: {r:?}");
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}: {r:?}");
}

/// `till node run --ui ADDR` on a standalone sample till; returns the process
/// and the address to connect to (loopback, also for a wildcard bind).
fn run_ui(dir: &Path, ui: &str) -> (Bg, String) {
    ok(&["node", "init", "--data", p(dir), "--offline", "--sample"]);
    let mut child = base_command()
        .args(["node", "run", "--data", p(dir), "--ui", ui, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let bg = Bg(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let v: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    let port = s(&v["api"]).rsplit(':').next().unwrap().to_string();
    (bg, format!("127.0.0.1:{port}"))
}

#[test]
fn the_ui_sends_security_headers_and_needs_a_sign_in_off_loopback() {
    let tmp = tempfile::tempdir().unwrap();

    // On loopback (the default): the API is open to the machine itself, and
    // every response carries the headers.
    let (_local, addr) = run_ui(&tmp.path().join("local"), "127.0.0.1:0");
    for (method, path, status) in
        [("GET", "/api/status", 200), ("GET", "/metrics", 200), ("GET", "/signin", 200), ("GET", "/assets/ui.css", 200)]
    {
        let r = send(&addr, method, path, &[], vec![]);
        assert_eq!(r.status, status, "{method} {path}: {r:?}");
        assert_security_headers(&r, path);
    }
    let r = send(&addr, "GET", "/sell", &[], vec![]);
    assert_eq!((r.status, r.header("location")), (303, Some("/signin")), "{r:?}");
    assert_security_headers(&r, "/sell");

    // Bound to every address: only sign-in and assets without a session.
    let (_exposed, addr) = run_ui(&tmp.path().join("exposed"), "0.0.0.0:0");
    for (method, path) in [
        ("GET", "/api/status"),
        ("GET", "/api/status/stream"),
        ("GET", "/metrics"),
        ("POST", "/api/sync"),
        ("GET", "/ui/status/stream"),
        ("POST", "/sync-now"),
    ] {
        let r = send(&addr, method, path, &[], vec![]);
        assert_eq!((r.status, r.code()), (401, "unauthorized".to_string()), "{method} {path}: {r:?}");
        assert_security_headers(&r, path);
    }
    for path in ["/", "/sell", "/sales", "/settings", "/devices", "/backups"] {
        let r = send(&addr, "GET", path, &[], vec![]);
        assert_eq!((r.status, r.header("location")), (303, Some("/signin")), "{path}: {r:?}");
        assert_security_headers(&r, path);
    }
    for path in ["/signin", "/assets/ui.css"] {
        let r = send(&addr, "GET", path, &[], vec![]);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_security_headers(&r, path);
    }
    // Signed in, the same routes answer.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = send(&addr, "POST", "/signin", &form, b"staff=Sam&pin=1111".to_vec());
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = r.header("set-cookie").expect("a session cookie").split(';').next().unwrap().to_string();
    let with = [("Cookie", cookie.as_str())];
    let r = send(&addr, "GET", "/api/status", &with, vec![]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_security_headers(&r, "/api/status signed in");
    assert_eq!(send(&addr, "GET", "/sell", &with, vec![]).status, 200);
    // A made-up cookie is no session.
    let r = send(&addr, "GET", "/api/status", &[("Cookie", "tillsync_session=0123456789abcdef")], vec![]);
    assert_eq!(r.status, 401, "{r:?}");
}
