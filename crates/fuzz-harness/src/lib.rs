//! Dev-only: the fuzz harnesses. Each function feeds raw bytes, as they
//! would arrive from the network or a disk, through the shipped decoder of
//! the hub, the node or the backup crate, and on through what the product
//! does next with the result (conversion into domain operations, checks,
//! applying to a real store). They return `Err` for input the product
//! refuses and must never panic.
//!
//! The libFuzzer targets in `fuzz/` call these functions with libFuzzer's
//! inputs; `tests/regressions.rs` calls them with every kept crasher and
//! seed (`fuzz/regressions/`, `fuzz/corpus/`) in `cargo test`, without
//! libFuzzer. [`TARGETS`] names them all, so neither can miss one.

use serde_json::json;
use std::collections::HashMap;
use std::io::Read;
use tillsync_core::change::lane_for;
use tillsync_core::wire::{Entry, PullResponse, PushRequest, SnapshotPage};
use tillsync_core::{IdGen, Schema};
use tillsync_hub::DeviceAuth;
use tillsync_hub::app::{decode_json, decode_zstd};
use tillsync_hub::sqlite::{other_origins, split_scope, validate};
use tillsync_node::client::decode_answer;
use tillsync_node::sync::{Bootstrap, decode_page, page_ops};
use tillsync_store::{Identity, Store};
use uuid::Uuid;

/// What a harness says about an input: `Err` is a refusal (fine), a
/// panic is a bug.
pub type Outcome = Result<(), String>;

/// A harness: raw bytes in, an outcome out.
pub type Harness = fn(&[u8]) -> Outcome;

/// Every fuzz target: its name (the folder names under `fuzz/corpus/` and
/// `fuzz/regressions/`, and the file names under `fuzz/fuzz_targets/`) and
/// its harness.
pub const TARGETS: &[(&str, Harness)] = &[
    ("push", push),
    ("pull_page", pull_page),
    ("snapshot", snapshot),
    ("apply_batch", apply_batch),
    ("backup_manifest", backup_manifest),
    ("backup_object", backup_object),
    ("pending_file", pending_file),
];

/// The age identity the `backup_object` seeds are encrypted to (a test key,
/// used nowhere else). Recipient: `age14qnzey5edz484wa556y54752x9svpv640jctl67a7n7cn5hds99q5g87kf`.
pub const TEST_AGE_IDENTITY: &str = "AGE-SECRET-KEY-1DHX4CFLHY96LL8QQ49A2EZARKP6Y3WTGWF40HYSAUQEK8JWEPFVSGDQ4XM";

/// The age recipient of [`TEST_AGE_IDENTITY`].
pub const TEST_AGE_RECIPIENT: &str = "age14qnzey5edz484wa556y54752x9svpv640jctl67a7n7cn5hds99q5g87kf";

/// Fixed ids of the fuzzed tenant, store and pushing device, so a seed
/// written by [`seed_store`] passes the hub's origin checks.
pub const TENANT: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
pub const STORE: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);
pub const DEVICE: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0003);
/// Another till of the same store (the receiving till of pulled pages).
pub const OTHER_DEVICE: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0004);

/// The wall clock the harnesses run at (fixed: a run is reproducible).
pub const NOW_MS: u64 = 1_800_000_000_000;

/// Longest output read from a backup object, in bytes (a fuzzed object
/// cannot get past the age MAC, so this is never reached in practice).
const OBJECT_READ_LEN_MAX: u64 = 1 << 20;

fn dev() -> DeviceAuth {
    DeviceAuth { device_id: DEVICE, tenant_id: TENANT, store_id: STORE }
}

/// A fresh in-memory till of the fuzzed store (`device`), on the schema
/// Tillsync ships.
pub fn fresh_store(device: Uuid) -> Result<Store, String> {
    let identity = Identity {
        tenant_id: TENANT,
        store_id: STORE,
        device_id: device,
        receipt_prefix: "F1".into(),
        name: "fuzz".into(),
        mode: "hub".into(),
    };
    Store::in_memory(identity, Schema::standard(), IdGen::from_seed([7; 32])).map_err(|e| e.to_string())
}

/// Splits the encoding flag (first byte; odd: the body is zstd, as with
/// `Content-Encoding: zstd`) from the body.
fn flagged(data: &[u8]) -> Result<(bool, &[u8]), String> {
    let (flag, body) = data.split_first().ok_or("empty input")?;
    Ok((flag & 1 == 1, body))
}

/// A push batch as the hub decodes it (`zstd_layer`, then `JsonBody`), and
/// what `SqliteHub::push` does with each change before storing it:
/// conversion into a domain change, the origin and schema checks, the
/// split by scope.
pub fn push(data: &[u8]) -> Outcome {
    let (zstd, body) = flagged(data)?;
    let decoded;
    let json = if zstd {
        decoded = decode_zstd(body, tillsync_hub::app::BODY_DECODED_LEN_MAX).map_err(|e| e.to_string())?;
        &decoded[..]
    } else {
        body
    };
    let req: PushRequest = decode_json(json).map_err(|e| e.to_string())?;
    let dev = dev();
    // Other origins are looked up in the hub's devices; an unknown device
    // counts as the caller's store (see `SqliteHub::push`).
    let relayed: HashMap<Uuid, Uuid> = other_origins(&dev, &req).into_iter().map(|d| (d, STORE)).collect();
    let schema = Schema::standard();
    let mut refused = 0;
    for wc in &req.changes {
        let change = match wc.to_change(dev.device_id) {
            Ok(c) => c,
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        match validate(&schema, &dev, &change.ops, &relayed) {
            Ok(()) => {
                let parts = split_scope(&schema, &change.ops, &wc.ops);
                let n: usize = parts.iter().map(|(_, p)| p.len()).sum();
                if n != wc.ops.len() {
                    return Err(format!("split_scope lost operations: {n} of {}", wc.ops.len()));
                }
            }
            Err(_) => refused += 1,
        }
    }
    if refused > 0 { Err(format!("{refused} changes quarantined")) } else { Ok(()) }
}

/// A pull page as the node decodes it (`HubClient::send`), converted into
/// domain operations as `sync_once` does, with the lane of each entry.
pub fn pull_page(data: &[u8]) -> Outcome {
    let (zstd, body) = flagged(data)?;
    let page: PullResponse = decode_answer(200, zstd, body).map_err(|e| e.to_string())?;
    let ops = page_ops(&page).map_err(|e| e.to_string())?;
    let schema = Schema::standard();
    let mut at = 0;
    for e in &page.entries {
        let n = e.ops.len();
        let _ = lane_for(&schema, &ops[at..at + n]);
        at += n;
    }
    Ok(())
}

/// A snapshot page as the node decodes it (`client::decode_answer`, then
/// `sync::decode_page`, as the fetch thread runs them), merged into a fresh
/// till as `bootstrap` does (`Bootstrap::apply_page`: relays, parts with
/// their progress; `finish` when it is the last page), then used as a till
/// uses its data. A whole snapshot of an older hub decodes as a last page.
pub fn snapshot(data: &[u8]) -> Outcome {
    let (zstd, body) = flagged(data)?;
    let page: SnapshotPage = decode_answer(200, zstd, body).map_err(|e| e.to_string())?;
    let page = decode_page(page).map_err(|e| e.to_string())?;
    let mut till = fresh_store(OTHER_DEVICE)?;
    if page.cursor.is_none() {
        // A later page (no cursor): applied to a till whose bootstrap is
        // under way, as after its first page.
        let under_way = tillsync_store::BootProgress { cursor: 1, cursor_tag: None, after: None, done: 0, total: 0 };
        till.apply_boot_part(&[], &under_way).map_err(|e| e.to_string())?;
    }
    let mut boot = Bootstrap::resume(&till).map_err(|e| e.to_string())?;
    let more = boot.apply_page(&mut till, &page, NOW_MS).map_err(|e| e.to_string())?;
    if !more {
        boot.finish(&mut till).map_err(|e| e.to_string())?;
    }
    exercise(&mut till)
}

/// A push batch (plain JSON, the hub's decoder) applied as the hub applies
/// it to a tenant's state, then the same operations applied to another till
/// as a pulled page (`Store::apply_pulled_tagged`, the node's apply), and
/// both stores used afterwards. The till applies even what the hub would
/// quarantine: it must survive a hostile or broken hub too.
pub fn apply_batch(data: &[u8]) -> Outcome {
    let req: PushRequest = decode_json(data).map_err(|e| e.to_string())?;
    let dev = dev();
    let relayed: HashMap<Uuid, Uuid> = other_origins(&dev, &req).into_iter().map(|d| (d, STORE)).collect();
    let mut hub = fresh_store(Uuid::from_u128(0))?;
    let schema = Schema::standard();
    let mut errors = vec![];
    for wc in &req.changes {
        let Ok(change) = wc.to_change(dev.device_id) else { continue };
        if validate(&schema, &dev, &change.ops, &relayed).is_err() {
            continue;
        }
        if let Err(e) = hub.transaction(|s| s.apply_in_transaction(&change.ops)) {
            errors.push(format!("hub: {e}"));
        }
    }
    let page = PullResponse {
        entries: req
            .changes
            .iter()
            .enumerate()
            .map(|(i, c)| Entry { pos: i as u64 + 1, device: DEVICE, ops: c.ops.clone() })
            .collect(),
        cursor: req.changes.len() as u64,
        ..PullResponse::default()
    };
    let mut till = fresh_store(OTHER_DEVICE)?;
    match page_ops(&page) {
        Ok(ops) => {
            if let Err(e) = till.apply_pulled_tagged(&ops, page.cursor, Some("tag")) {
                errors.push(format!("till: {e}"));
            }
        }
        Err(e) => errors.push(format!("till: {e}")),
    }
    exercise(&mut hub)?;
    exercise(&mut till)?;
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// What a till does with its data after a sync: every read the UI and the
/// CLI make, then a local write (the next action ticks the clock past
/// everything received).
fn exercise(store: &mut Store) -> Outcome {
    let e = |e: tillsync_store::StoreError| e.to_string();
    store.settings().map_err(e)?;
    store.products().map_err(e)?;
    store.stock_list().map_err(e)?;
    store.sales(50).map_err(e)?;
    store.report(0, i64::MAX).map_err(e)?;
    store.conflicts().map_err(e)?;
    store.alerts().map_err(e)?;
    store.status().map_err(e)?;
    store.digests().map_err(e)?;
    store.set_settings(NOW_MS, &[("receipt_header", json!("fuzz"))]).map_err(e)?;
    Ok(())
}

/// A backup manifest as every destination lists it.
pub fn backup_manifest(data: &[u8]) -> Outcome {
    tillsync_backup::parse_manifest(data).map(|_| ()).map_err(|e| e.to_string())
}

/// A backup object as restore and verify open it: the age header, the
/// decryption with an identity file's key, the zstd stream.
pub fn backup_object(data: &[u8]) -> Outcome {
    let id: age::x25519::Identity = TEST_AGE_IDENTITY.parse().map_err(|e: &str| e.to_string())?;
    let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
    let r = tillsync_backup::open_object(data, &ids).map_err(|e| e.to_string())?;
    std::io::copy(&mut r.take(OBJECT_READ_LEN_MAX), &mut std::io::sink()).map_err(|e| e.to_string())?;
    Ok(())
}

/// A file of pending changes as `till node import-pending` reads it,
/// imported into a fresh till of the same store, then used.
pub fn pending_file(data: &[u8]) -> Outcome {
    let file = tillsync_store::PendingFile::parse(data).map_err(|e| e.to_string())?;
    let mut till = fresh_store(OTHER_DEVICE)?;
    till.import_pending(NOW_MS, &file).map_err(|e| e.to_string())?;
    exercise(&mut till)
}
