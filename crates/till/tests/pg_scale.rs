//! Scale-out end to end: two `till hub serve --database-url` processes on
//! one PostgreSQL database, tills split across them, as real processes on
//! real sockets. A fresh database per test on the server of
//! `TILLSYNC_TEST_PG` (default postgres://postgres@127.0.0.1:5432/postgres);
//! an unreachable server fails the tests.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tillsync_hub::pg::testing::TestDatabase;

/// A sample tenant with one store, made with the admin commands on the
/// database URL.
struct PgTenant {
    url: String,
    id: String,
    store: String,
}

fn pg_tenant(url: &str) -> PgTenant {
    let t = json(&["hub", "tenant", "create", "Scale Coffee", "--sample", "--database-url", url]);
    let id = s(&t["tenant_id"]);
    assert!(s(&t["admin_token"]).starts_with("tsa_"), "{t}");
    let st = json(&["hub", "store", "create", "--tenant", &id, "High Street", "--database-url", url]);
    PgTenant { url: url.to_string(), id, store: s(&st["store_id"]) }
}

impl PgTenant {
    fn enrol(&self, hub_url: &str, dir: &Path, name: &str) {
        let e = json(&["hub", "enrol", "--tenant", &self.id, "--store", &self.store, "--database-url", &self.url]);
        let v = json(&["node", "init", "--data", p(dir), "--hub", hub_url, "--code", &s(&e["code"]), "--name", name]);
        assert_eq!(s(&v["tenant_id"]), self.id);
        assert!(v["products"].as_u64().unwrap_or(0) > 0, "bootstrap pulled no products: {v}");
    }

    fn digest(&self) -> String {
        let d = json(&["hub", "digest", "--tenant", &self.id, "--store", &self.store, "--database-url", &self.url]);
        s(&d["state_digest"])
    }
}

fn serve(url: &str) -> Hub {
    Hub::try_start_on(&["--database-url", url], "127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"))
}

fn price(dir: &Path, sku: &str) -> i64 {
    let rows = json(&["product", "list", "--data", p(dir)]);
    let row = rows.as_array().expect("products").iter().find(|r| r["sku"] == sku).cloned();
    row.unwrap_or_else(|| panic!("{sku} missing: {rows}"))["price_minor"].as_i64().expect("price_minor")
}

/// Syncs every till in turn until a whole round moves nothing; panics if
/// they do not settle.
fn sync_until_stable(tills: &[&Path], rounds_max: usize) {
    for round in 1..=rounds_max {
        let mut quiet = true;
        for t in tills {
            let r = sync(t);
            assert!(r["lane_errors"].as_array().is_some_and(|e| e.is_empty()), "round {round}: {}: {r}", t.display());
            quiet &= r["pulled"].as_u64() == Some(0) && r["pushed"].as_u64() == Some(0);
        }
        if quiet && round >= 2 && tills.iter().all(|t| status(t)["pending_total"] == 0) {
            return;
        }
    }
    panic!("the tills did not settle within {rounds_max} rounds");
}

/// Every till holds the hub's digest of the store and one tenant digest.
fn assert_converged(t: &PgTenant, tills: &[&Path]) {
    let hub = t.digest();
    for d in tills {
        assert_eq!(status(d)["state_digest"].as_str(), Some(hub.as_str()), "{} differs from the hub", d.display());
    }
    let tenant: BTreeSet<String> = tills.iter().map(|d| s(&status(d)["tenant_digest"])).collect();
    assert_eq!(tenant.len(), 1, "tenant digests differ: {tenant:?}");
}

/// Backends of this database waiting on a lock (the pushes queued behind
/// the test's transaction).
fn waiting_on_lock(watcher: &mut postgres::Client, db: &str) -> i64 {
    watcher
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'", &[&db])
        .unwrap()
        .get(0)
}

#[test]
fn two_hub_processes_converge_after_one_is_killed_mid_push() {
    let db = TestDatabase::create();
    let tmp = TempDir::new().expect("tempdir");
    let t = pg_tenant(&db.url);
    let mut hub_a = serve(&db.url);
    let hub_b = serve(&db.url);
    let (port_a, url_a) = (hub_a.port, hub_a.url.clone());

    // Tills split across the two processes.
    let dirs: Vec<PathBuf> = ["a1", "a2", "b1", "b2"].iter().map(|n| tmp.path().join(n)).collect();
    for (i, d) in dirs.iter().enumerate() {
        let url = if i < 2 { &hub_a.url } else { &hub_b.url };
        t.enrol(url, d, &format!("Till {i}"));
    }
    let all: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    assert_converged(&t, &all);

    // Offline work on every till: sales, and the same price edited on a
    // till of each process (a conflict that must keep both writes).
    let mut sold = BTreeSet::new();
    let mut rng = XorShift::new(0x5ca1e);
    for d in &all {
        for _ in 0..6 {
            let item = ["ESPRESSO:1", "LATTE:2", "CROISSANT:1", "MUG:1"][rng.range(0, 3) as usize];
            sold.insert(s(&sell(d, item)["sale_id"]));
        }
    }
    ok(&["product", "update", "--data", p(all[0]), "--sku", "ESPRESSO", "--price", "2.40"]);
    ok(&["product", "update", "--data", p(all[2]), "--sku", "ESPRESSO", "--price", "2.60"]);
    assert_eq!(sold.len(), 24);

    // Hold the tenant's row lock from outside: every push, through either
    // process, stops inside its transaction, after its request arrived and
    // before anything commits.
    let mut locker = postgres::Client::connect(&db.url, postgres::NoTls).expect("connect");
    let mut watcher = postgres::Client::connect(&db.url, postgres::NoTls).expect("connect");
    let mut lock = locker.transaction().expect("begin");
    lock.execute("SELECT 1 FROM tenants WHERE id::text = $1 FOR UPDATE", &[&t.id]).expect("lock the tenant");
    let syncing: Vec<_> = all
        .iter()
        .map(|d| {
            let d = d.to_path_buf();
            std::thread::spawn(move || till(&["sync", "--data", p(&d), "--json"]))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while waiting_on_lock(&mut watcher, &db.name) < 4 {
        assert!(Instant::now() < deadline, "the four pushes never reached the database");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Process A dies with two pushes in flight.
    hub_a.kill();
    lock.rollback().expect("release the lock");
    let outs: Vec<Out> = syncing.into_iter().map(|h| h.join().expect("sync thread")).collect();
    for (i, o) in outs.iter().enumerate() {
        eprintln!("sync of till {i} during the kill: exit {} {}", o.code, o.stdout.trim());
    }
    // A's pushes were cut off mid-transaction (nothing acknowledged), B's went through.
    assert!(outs[0].code != 0 && outs[1].code != 0, "A's tills' syncs failed with their hub: {}", outs[0].stdout);
    assert!(outs[2].code == 0 && outs[3].code == 0, "B's tills synced: {}", outs[2].stderr);

    // A comes back on the same address (the tills remember it).
    let hub_a2 = Hub::start_on_port_with(&["--database-url", &db.url], port_a);
    assert_eq!(hub_a2.url, url_a);
    sync_until_stable(&all, 5);
    assert_converged(&t, &all);

    // Every sale once on every till: the sum of what was sold, none lost or doubled.
    for d in &all {
        let list = sales(d);
        let ids: BTreeSet<String> = list.iter().map(|v| s(&v["sale_id"])).collect();
        assert_eq!(list.len(), sold.len(), "{}: {} sales, sold {}", d.display(), list.len(), sold.len());
        assert_eq!(ids, sold, "{} holds another set of sales", d.display());
        let receipts: BTreeSet<String> = list.iter().map(|v| s(&v["receipt"])).collect();
        assert_eq!(receipts.len(), sold.len(), "receipts are unique");
    }
    // Both price writes are heads: one conflict with both values everywhere.
    for d in &all {
        let cs = json(&["conflicts", "list", "--data", p(d)]);
        let cs = cs.as_array().expect("conflicts");
        assert_eq!(cs.len(), 1, "{}: {cs:?}", d.display());
        let values: BTreeSet<i64> =
            cs[0]["values"].as_array().expect("values").iter().map(|v| v["value"].as_i64().unwrap()).collect();
        assert_eq!(values, BTreeSet::from([240, 260]), "{}", cs[0]);
        assert_eq!(price(d, "ESPRESSO"), price(all[0], "ESPRESSO"), "one shown price everywhere");
    }
    // The hub stored each change once.
    let u = json(&["hub", "usage", "--tenant", &t.id, "--database-url", &db.url]);
    assert_eq!(u["devices"], 4, "{u}");
    assert_eq!(u["quarantined"], 0, "{u}");

    // Compacting the whole log through the admin command: the tills behind
    // the horizon bootstrap again from either process and lose nothing.
    let c = json(&["hub", "compact", "--tenant", &t.id, "--keep", "0", "--database-url", &db.url]);
    assert!(c["horizon"].as_u64().unwrap_or(0) > 0, "{c}");
    sell(all[1], "MUG:1");
    sync_until_stable(&all, 5);
    assert_converged(&t, &all);
    for d in &all {
        assert_eq!(sales(d).len(), sold.len() + 1, "{}", d.display());
    }
    drop((hub_a2, hub_b));
}

/// A till connected to process B hears, through its event stream, a sale
/// pushed through process A (LISTEN/NOTIFY between the processes).
#[test]
fn a_till_on_one_process_hears_a_sale_pushed_through_the_other() {
    let db = TestDatabase::create();
    let tmp = TempDir::new().expect("tempdir");
    let t = pg_tenant(&db.url);
    let (hub_a, hub_b) = (serve(&db.url), serve(&db.url));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    t.enrol(&hub_a.url, &a, "Till A");
    t.enrol(&hub_b.url, &b, "Till B");

    // B syncs every 60 s, and at once on a live event from process B.
    let runner = Runner::start(&b, &["--interval", "60"], &[]);
    runner.wait_round(Duration::from_secs(15), "first", |_| true);
    std::thread::sleep(Duration::from_millis(500));

    let sale = sell(&a, "CROISSANT:2");
    let started = Instant::now();
    let r: Value = sync(&a);
    assert_eq!(r["pushed"], 1, "{r}");
    let id = s(&sale["sale_id"]);
    let seen = loop {
        if sale_ids(&b).contains(&id) {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the sale pushed through A never reached B's till");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("sale pushed through process A visible on a till of process B after {seen:?}");
    assert!(seen < Duration::from_secs(5), "the live event took {seen:?}: it came by the timer, not the event");
    // An admin command is a third process on the database: its policy write
    // reaches B's till at once too.
    let started = Instant::now();
    ok(&["hub", "policy", "set", "--tenant", &t.id, "products.price_minor", "manual", "--database-url", &db.url]);
    runner.wait_round(Duration::from_secs(10), "that pulls the policy", |v| v["pulled"].as_u64().unwrap_or(0) >= 1);
    let seen = started.elapsed();
    eprintln!("policy set by the admin command pulled by B's till after {seen:?}");
    assert!(seen < Duration::from_secs(5), "the policy came by the timer ({seen:?}), not a live event");
    drop(runner);
    sync(&a);
    sync(&b);
    assert_converged(&t, &[&a, &b]);
    drop((hub_a, hub_b));
}

/// `--data` and `--database-url` are exclusive, and one is needed.
#[test]
fn the_hub_needs_exactly_one_storage() {
    let tmp = TempDir::new().expect("tempdir");
    let both = fails(&[
        "hub",
        "tenant",
        "create",
        "X",
        "--data",
        p(tmp.path()),
        "--database-url",
        "postgres://postgres@127.0.0.1:5432/postgres",
    ]);
    assert!(both.stderr.contains("exactly one"), "{}", both.stderr);
    let none = fails(&["hub", "usage", "--tenant", "00000000-0000-0000-0000-000000000000"]);
    assert!(none.stderr.contains("--database-url"), "{}", none.stderr);
    let down = fails(&["hub", "usage", "--tenant", "x", "--database-url", "postgres://postgres@127.0.0.1:1/none"]);
    assert!(down.stderr.contains("pg_isready") || down.stderr.contains("not a tenant"), "{}", down.stderr);
}
