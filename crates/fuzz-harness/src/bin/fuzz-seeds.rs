//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`)
//! from real product output: a till that sells, counts stock, edits the
//! catalogue and sets a policy; its outbox as a push batch and as a pulled
//! page, its state as a snapshot, and a real backup of it with its manifest.
//! Run from the repository root: `cargo run -p tillsync-fuzz-harness --bin fuzz-seeds`.

use std::path::Path;
use tillsync_core::Lane;
use tillsync_core::domain::{Method, PaymentInput};
use tillsync_core::wire::{Entry, PullResponse, PushRequest, Snapshot, SnapshotKey, SnapshotPage, WireChange, WireOp};
use tillsync_fuzz_harness::{DEVICE, NOW_MS, TARGETS, TEST_AGE_RECIPIENT, fresh_store};
use tillsync_store::{Identity, ProductFields, SaleRequest, Store};

fn write(target: &str, name: &str, bytes: &[u8]) {
    assert!(TARGETS.iter().any(|(t, _)| *t == target), "unknown target {target}");
    let dir = Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus folder");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

/// With the encoding flag of the targets that take one (0: plain, 1: zstd).
fn flagged(json: &[u8], zstd: bool) -> Vec<u8> {
    let mut out = vec![u8::from(zstd)];
    if zstd {
        out.extend(zstd::bulk::compress(json, 3).expect("zstd"));
    } else {
        out.extend_from_slice(json);
    }
    out
}

fn sell_things(s: &mut Store) {
    let cash = PaymentInput { method: Method::Cash, amount_minor: None, brand: None, last4: None };
    let card = PaymentInput {
        method: Method::Card,
        amount_minor: None,
        brand: Some("visa".into()),
        last4: Some("4242".into()),
    };
    s.add_tax_rate(NOW_MS, "VAT", "standard", 2_000).expect("tax");
    let p = |name: &str, price| ProductFields {
        name: Some(name.into()),
        price_minor: Some(price),
        tax_rate_bp: Some(2_000),
        ..ProductFields::default()
    };
    s.add_product(NOW_MS, "MUG", &p("Mug", 850)).expect("product");
    s.add_product(NOW_MS + 1, "TEA", &p("Tea", 300)).expect("product");
    s.receive_stock(NOW_MS + 2, "MUG", 10).expect("stock");
    s.sell(NOW_MS + 3, &SaleRequest { items: vec![("MUG".into(), 2)], payments: vec![cash], ..Default::default() })
        .expect("sale");
    s.sell(NOW_MS + 4, &SaleRequest { items: vec![("TEA".into(), 1)], payments: vec![card], ..Default::default() })
        .expect("sale");
    s.count_stock(NOW_MS + 5, "MUG", 7).expect("count");
    s.set_policy(NOW_MS + 6, "products.price_minor", tillsync_core::Policy::Manual).expect("policy");
    s.update_product(NOW_MS + 7, "MUG", &ProductFields { price_minor: Some(900), ..ProductFields::default() })
        .expect("update");
}

fn main() {
    let mut till = fresh_store(DEVICE).expect("store");
    sell_things(&mut till);
    let mut changes = vec![];
    for lane in Lane::ALL {
        for p in till.pending_changes(lane, 1_000).expect("outbox") {
            changes.push(WireChange::from_change(&p.change, p.digest));
        }
    }
    let push = PushRequest { device_time_ms: NOW_MS, changes: changes.clone(), copied: false };
    let push_json = serde_json::to_vec(&push).expect("json");
    write("push", "batch.json", &flagged(&push_json, false));
    write("push", "batch.zst", &flagged(&push_json, true));
    write("apply_batch", "batch.json", &push_json);
    // One change per lane, so the fuzzer has small inputs to start from.
    for c in &changes {
        let one = PushRequest { device_time_ms: NOW_MS, changes: vec![c.clone()], copied: false };
        write("apply_batch", &format!("{}-{}.json", c.lane, c.seq), &serde_json::to_vec(&one).expect("json"));
    }

    let pending = serde_json::to_vec_pretty(&till.export_pending().expect("export")).expect("json");
    write("pending_file", "pending.json", &pending);

    let page = PullResponse {
        entries: changes
            .iter()
            .enumerate()
            .map(|(i, c)| Entry { pos: i as u64 + 1, device: DEVICE, ops: c.ops.clone() })
            .collect(),
        cursor: changes.len() as u64,
        more: true,
        remaining: 3,
        hub_time_ms: NOW_MS,
        cursor_tag: Some("0".repeat(64)),
    };
    let page_json = serde_json::to_vec(&page).expect("json");
    write("pull_page", "page.json", &flagged(&page_json, false));
    write("pull_page", "page.zst", &flagged(&page_json, true));

    let ops: Vec<WireOp> = till.snapshot_ops(None).expect("snapshot").iter().map(WireOp::from).collect();
    let snap = Snapshot { cursor: 42, cursor_tag: Some("f".repeat(64)), ops };
    let snap_json = serde_json::to_vec(&snap).expect("json");
    write("snapshot", "snapshot.json", &flagged(&snap_json, false));
    write("snapshot", "snapshot.zst", &flagged(&snap_json, true));
    // The same state as two pages of a paged snapshot, as the hub answers
    // `GET /v1/snapshot?limit=N[&after=KEY]`.
    let ops = till.snapshot_ops(None).expect("snapshot");
    let half = ops.len() / 2;
    let first = SnapshotPage {
        cursor: Some(42),
        cursor_tag: Some("f".repeat(64)),
        total: Some(ops.len() as u64),
        ops: ops[..half].iter().map(WireOp::from).collect(),
        next: ops[..half].last().map(|o| SnapshotKey::from(&o.state_key())),
    };
    let last = SnapshotPage { ops: ops[half..].iter().map(WireOp::from).collect(), ..Default::default() };
    let first_json = serde_json::to_vec(&first).expect("json");
    let last_json = serde_json::to_vec(&last).expect("json");
    write("snapshot", "page-first.json", &flagged(&first_json, false));
    write("snapshot", "page-last.zst", &flagged(&last_json, true));

    // A real backup of a till on disk, to the test recipient.
    let work = tempfile::tempdir().expect("tempdir");
    let identity = Identity { mode: "standalone".into(), ..till.identity().clone() };
    let mut disk = Store::create(&work.path().join("till"), identity, tillsync_core::Schema::standard(), {
        tillsync_core::IdGen::from_seed([9; 32])
    })
    .expect("till on disk");
    sell_things(&mut disk);
    drop(disk);
    let dest = tillsync_backup::Folder { dir: work.path().join("backups") };
    let m = tillsync_backup::create(
        &work.path().join("till").join(tillsync_store::DB_FILE),
        &dest,
        &tillsync_backup::Key::Recipient(TEST_AGE_RECIPIENT.into()),
        &work.path().join("work"),
        NOW_MS,
        |_, _| {},
    )
    .expect("backup");
    let object =
        std::fs::read(dest.dir.join(format!("{}.{}", m.backup_id, tillsync_backup::OBJECT_EXT))).expect("object");
    write("backup_object", "backup.tsb", &object);
    let manifest =
        std::fs::read(dest.dir.join(format!("{}.{}", m.backup_id, tillsync_backup::MANIFEST_EXT))).expect("manifest");
    write("backup_manifest", "manifest.json", &manifest);
    println!("seeds written under fuzz/corpus/");
}
