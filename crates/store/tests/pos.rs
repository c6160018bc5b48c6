//! Store behaviour at its boundary: offline sales on two tills, derived
//! alerts, receipts, clock persistence and schema versions.

use std::collections::BTreeSet;
use tillsync_core::domain::{Method, PaymentInput};
use tillsync_core::{IdGen, Lane, Schema};
use tillsync_store::{Identity, ProductFields, SaleRequest, Store, StoreError};
use uuid::Uuid;

fn identity(n: u128) -> Identity {
    Identity {
        tenant_id: Uuid::from_u128(1),
        store_id: Uuid::from_u128(2),
        device_id: Uuid::from_u128(0xd0 + n),
        receipt_prefix: format!("T{n}"),
        name: format!("till {n}"),
        mode: "standalone".into(),
    }
}

fn cash() -> PaymentInput {
    PaymentInput { method: Method::Cash, amount_minor: None, brand: None, last4: None }
}

fn sell(s: &mut Store, now: u64, sku: &str, qty: i64) -> String {
    s.sell(now, &SaleRequest { items: vec![(sku.into(), qty)], payments: vec![cash()], ..Default::default() })
        .unwrap()
        .receipt
}

fn sync(from: &Store, to: &mut Store) {
    for lane in Lane::ALL {
        for c in from.outbox(lane, 0, 10_000).unwrap() {
            to.apply_remote(&c).unwrap();
        }
    }
}

/// Two tills sharing one catalogue (the second received the first's catalogue).
fn pair() -> (Store, Store) {
    let mut a = Store::in_memory(identity(1), Schema::standard(), IdGen::from_u64(1)).unwrap();
    let mut b = Store::in_memory(identity(2), Schema::standard(), IdGen::from_u64(2)).unwrap();
    let f = ProductFields {
        name: Some("Mug".into()),
        price_minor: Some(1200),
        tax_rate_bp: Some(2000),
        ..Default::default()
    };
    a.add_product(1_000, "MUG", &f).unwrap();
    a.receive_stock(1_001, "MUG", 1).unwrap();
    a.add_staff(1_002, "Alex", "manager", "1234").unwrap();
    sync(&a, &mut b);
    (a, b)
}

#[test]
fn two_tills_selling_the_last_unit_offline_both_succeed_and_show_oversold() {
    let (mut a, mut b) = pair();
    sell(&mut a, 2_000, "MUG", 1);
    sell(&mut b, 2_001, "MUG", 1);
    assert_eq!(a.on_hand("MUG").unwrap(), 0);
    assert!(a.alerts().unwrap().oversold.is_empty());
    sync(&a, &mut b);
    sync(&b, &mut a);
    for s in [&a, &b] {
        assert_eq!(s.on_hand("MUG").unwrap(), -1);
        let alerts = s.alerts().unwrap();
        assert_eq!(alerts.oversold.len(), 1);
        assert_eq!(alerts.oversold[0].sku, "MUG");
        assert_eq!(s.sales_count().unwrap(), 2);
        assert_eq!(s.status().unwrap().oversold, 1);
    }
    assert_eq!(a.digests().unwrap(), b.digests().unwrap());
}

#[test]
fn two_tills_refunding_the_same_sale_offline_show_an_over_refund() {
    let (mut a, mut b) = pair();
    let receipt = sell(&mut a, 2_000, "MUG", 1);
    sync(&a, &mut b);
    let alex_a = a.approve("Alex", "1234").unwrap();
    let alex_b = b.approve("Alex", "1234").unwrap();
    a.refund(3_000, &receipt, &[], alex_a, None).unwrap();
    b.refund(3_001, &receipt, &[], alex_b, None).unwrap();
    // Each till alone refuses a second refund of the same item...
    let again = a.refund(3_002, &receipt, &[], alex_a, None);
    assert!(matches!(again, Err(StoreError::Invalid(_))), "{again:?}");
    sync(&a, &mut b);
    sync(&b, &mut a);
    // ...but both offline refunds are kept and flagged, never dropped.
    for s in [&a, &b] {
        let alerts = s.alerts().unwrap();
        assert_eq!(alerts.over_refunded.len(), 1, "{:?}", alerts.over_refunded);
        assert_eq!(alerts.over_refunded[0]["refunded"], 2);
        assert_eq!(s.on_hand("MUG").unwrap(), 2, "both refunds returned stock");
    }
    assert_eq!(a.digests().unwrap(), b.digests().unwrap());
}

#[test]
fn receipts_are_unique_per_till_and_across_tills() {
    let (mut a, mut b) = pair();
    let mut all = BTreeSet::new();
    for i in 0..20 {
        assert!(all.insert(sell(&mut a, 2_000 + i, "MUG", 1)));
        assert!(all.insert(sell(&mut b, 2_000 + i, "MUG", 1)));
    }
    assert!(all.contains("T1-000001") && all.contains("T2-000020"));
}

#[test]
fn failed_sale_writes_nothing() {
    let (mut a, _) = pair();
    let before = a.status().unwrap();
    let short = PaymentInput { method: Method::Cash, amount_minor: Some(100), brand: None, last4: None };
    let r = a.sell(2_000, &SaleRequest { items: vec![("MUG".into(), 1)], payments: vec![short], ..Default::default() });
    assert!(r.is_err());
    let r =
        a.sell(2_000, &SaleRequest { items: vec![("NOPE".into(), 1)], payments: vec![cash()], ..Default::default() });
    assert!(matches!(r, Err(StoreError::UnknownSku(_))));
    let after = a.status().unwrap();
    assert_eq!(before.state_digest, after.state_digest);
    assert_eq!(before.pending, after.pending);
    // The receipt counter did not move either.
    assert_eq!(sell(&mut a, 2_001, "MUG", 1), "T1-000001");
}

#[test]
fn a_sale_and_its_stock_movements_are_one_change_in_the_sales_lane() {
    let (mut a, _) = pair();
    let before = a.pending().unwrap();
    sell(&mut a, 2_000, "MUG", 1);
    let after = a.pending().unwrap();
    assert_eq!(after["sales"], before["sales"] + 1);
    assert_eq!(after["stock"], before["stock"]);
    let c = a.outbox(Lane::Sales, 0, 10).unwrap();
    assert_eq!(c.len(), 1);
    let tables: BTreeSet<&str> = c[0].ops.iter().map(|o| o.table()).collect();
    assert!(tables.contains("sales") && tables.contains("stock_movements"));
    // Sequences are gap-free per lane.
    sell(&mut a, 2_001, "MUG", 1);
    let seqs: Vec<u64> = a.outbox(Lane::Sales, 0, 10).unwrap().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
}

#[test]
fn clock_resumes_after_restart_even_if_the_wall_clock_went_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::create(dir.path(), identity(1), Schema::standard(), IdGen::from_u64(1)).unwrap();
    let f = ProductFields { name: Some("Tea".into()), price_minor: Some(100), ..Default::default() };
    s.add_product(5_000_000, "TEA", &f).unwrap();
    let before = s.clock();
    drop(s);
    let mut s = Store::open(dir.path(), Schema::standard(), IdGen::from_u64(2)).unwrap();
    assert_eq!(s.clock(), before);
    s.update_product(10, "TEA", &ProductFields { price_minor: Some(200), ..Default::default() }).unwrap();
    assert!(s.clock() > before, "a write after restart is above the persisted clock");
    assert_eq!(s.product("TEA").unwrap().price_minor, 200);
}

#[test]
fn databases_from_a_newer_version_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::create(dir.path(), identity(1), Schema::standard(), IdGen::from_u64(1)).unwrap());
    let conn = rusqlite_conn(dir.path());
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(dir.path(), Schema::standard(), IdGen::from_u64(1)).unwrap_err();
    assert!(matches!(err, StoreError::NewerSchema { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade"));
}

#[test]
fn the_sale_path_commits_with_synchronous_full_in_wal() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create(dir.path(), identity(1), Schema::standard(), IdGen::from_u64(1)).unwrap();
    assert_eq!(s.synchronous().unwrap(), 2, "synchronous=FULL");
    let mode: String = s.connection().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

fn rusqlite_conn(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join(tillsync_store::DB_FILE)).unwrap()
}

/// PCI DSS 3.3.1 and 3.4.1: a full card number never enters the store,
/// whichever text it hides in, and a refused action writes nothing.
#[test]
fn card_numbers_in_any_text_are_refused_and_nothing_is_written() {
    let (mut a, _) = pair();
    let card = "4111 1111 1111 1111";
    let before = a.pending().unwrap();
    let err = a.add_customer(2_000, &format!("Pat {card}"), None, None).unwrap_err();
    assert!(err.to_string().contains("card number"), "{err}");
    let err = a.add_customer(2_001, "Pat", Some(&format!("{card}@example.com")), None).unwrap_err();
    assert!(!err.to_string().contains(card), "the error echoes the number: {err}");
    let named = ProductFields { name: Some(format!("Gift {card}")), ..Default::default() };
    assert!(a.update_product(2_002, "MUG", &named).is_err());
    assert!(a.cash_movement(2_003, "pay_out", 100, Some(&format!("refund to {card}"))).is_err());
    // Below the store's own checks, the schema refuses it on every write path.
    let id = Uuid::from_u128(0xC057);
    let err = a
        .write(2_004, |l| {
            l.create(
                tillsync_core::schema::tables::CUSTOMERS,
                id,
                &[("note", serde_json::json!(format!("card {card}")))],
            )
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Schema(tillsync_core::schema::SchemaError::CardNumber { .. })), "{err}");
    assert_eq!(a.pending().unwrap(), before, "a refused action wrote nothing");
    // Product codes are not card numbers: a 13-digit barcode that happens to
    // pass the Luhn check is accepted.
    let pen = ProductFields {
        name: Some("Pen".into()),
        price_minor: Some(150),
        barcode: Some("4006381333924".into()),
        ..Default::default()
    };
    a.add_product(2_005, "PEN", &pen).unwrap();
}

/// Schema 3 moved the ledger from an id-ordered table to one in arrival
/// order. A till made before that keeps every row, its digests, its sales
/// list and its receipts when it is opened by this build.
#[test]
fn a_schema_2_till_is_migrated_to_the_arrival_order_ledger_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::create(dir.path(), identity(1), Schema::standard(), IdGen::from_u64(1)).unwrap();
    let f = ProductFields { name: Some("Tea".into()), price_minor: Some(100), ..Default::default() };
    s.add_product(1_000, "TEA", &f).unwrap();
    s.receive_stock(1_001, "TEA", 50).unwrap();
    for i in 0..30 {
        sell(&mut s, 2_000 + i, "TEA", 1);
    }
    let digests = s.digests().unwrap();
    let sales: Vec<String> = s.sales(100).unwrap().into_iter().map(|x| x.receipt).collect();
    assert_eq!(sales.len(), 30);
    drop(s);
    // Put the ledger back as schema 2 had it: WITHOUT ROWID, keyed by id.
    let conn = rusqlite_conn(dir.path());
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE ledger_v2(
             id TEXT PRIMARY KEY, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
             device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL
         ) WITHOUT ROWID;
         INSERT INTO ledger_v2 SELECT id, tbl, key, store_id, device, hlc, data FROM ledger;
         DROP TABLE ledger;
         ALTER TABLE ledger_v2 RENAME TO ledger;
         CREATE INDEX ledger_key ON ledger(tbl, key);
         CREATE INDEX ledger_hlc ON ledger(tbl, hlc);
         PRAGMA user_version = 2;
         COMMIT;",
    )
    .unwrap();
    drop(conn);
    let mut s = Store::open(dir.path(), Schema::standard(), IdGen::from_u64(2)).unwrap();
    let (version, sql): (i64, String) = s
        .connection()
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), sql FROM sqlite_master WHERE name = 'ledger'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(version, 3);
    assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
    let indexes: BTreeSet<String> = {
        let mut st = s
            .connection()
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger'")
            .unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert!(indexes.contains("ledger_key") && indexes.contains("ledger_sales_hlc"), "{indexes:?}");
    assert!(!indexes.contains("ledger_hlc"), "{indexes:?}");
    assert_eq!(s.digests().unwrap(), digests);
    let after: Vec<String> = s.sales(100).unwrap().into_iter().map(|x| x.receipt).collect();
    assert_eq!(after, sales);
    // Receipts go on from where they were, and a row already stored is
    // still refused as a duplicate by the new unique index.
    let next = sell(&mut s, 3_000, "TEA", 1);
    assert!(!sales.contains(&next));
    assert_eq!(s.sales_count().unwrap(), 31);
    // Sales listed oldest first come from the sales time index.
    let rows = s.ledger_rows("sales").unwrap();
    assert_eq!(rows.len(), 31);
    assert!(rows.windows(2).all(|w| (w[0].hlc, w[0].id) < (w[1].hlc, w[1].id)));
    assert_eq!(s.ledger_rows("stock_movements").unwrap().len(), 32);
    let dup: i64 =
        s.connection().execute("INSERT OR IGNORE INTO ledger SELECT * FROM ledger LIMIT 1", []).unwrap() as i64;
    assert_eq!(dup, 0);
}
