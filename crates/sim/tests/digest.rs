//! The state digest changes with any change to any synced column.

use tillsync_core::domain::{Method, PaymentInput};
use tillsync_core::{IdGen, Schema};
use tillsync_store::{Identity, ProductFields, SaleRequest, Store};
use uuid::Uuid;

fn built() -> Store {
    let identity = Identity {
        tenant_id: Uuid::from_u128(1),
        store_id: Uuid::from_u128(2),
        device_id: Uuid::from_u128(3),
        receipt_prefix: "T1".into(),
        name: "t".into(),
        mode: "standalone".into(),
    };
    let mut s = Store::in_memory(identity, Schema::standard(), IdGen::from_u64(9)).unwrap();
    let f = ProductFields { name: Some("Tea".into()), price_minor: Some(250), ..Default::default() };
    s.add_product(1_000, "TEA", &f).unwrap();
    s.receive_stock(1_001, "TEA", 5).unwrap();
    let pay = PaymentInput { method: Method::Cash, amount_minor: None, brand: None, last4: None };
    s.sell(1_002, &SaleRequest { items: vec![("TEA".into(), 1)], payments: vec![pay], ..Default::default() }).unwrap();
    s
}

#[test]
fn identical_builds_have_identical_digests() {
    assert_eq!(built().digests().unwrap(), built().digests().unwrap());
}

#[test]
fn changing_any_synced_column_changes_the_digest() {
    let base = built().digests().unwrap().0;
    // Every synced column of both kinds of table, changed in place.
    let edits = [
        ("writes", "id", "id || 'x'"),
        ("writes", "tbl", "tbl || 'x'"),
        ("writes", "row_id", "'00000000-0000-0000-0000-000000000009'"),
        ("writes", "field", "field || 'x'"),
        ("writes", "value", "'\"changed\"'"),
        // A created product's name names the creation as its base.
        ("writes", "base", "'[]'"),
        ("ledger", "id", "'00000000-0000-0000-0000-0000000000aa'"),
        ("ledger", "tbl", "tbl || 'x'"),
        ("ledger", "store_id", "'00000000-0000-0000-0000-0000000000bb'"),
        ("ledger", "device", "'00000000-0000-0000-0000-0000000000cc'"),
        ("ledger", "hlc", "hlc + 1"),
        ("ledger", "data", "json_set(data, '$.qty', 99)"),
    ];
    for (table, column, expr) in edits {
        let s = built();
        // One row is enough: pick one that the digest covers.
        let filter = if table == "writes" {
            "id = (SELECT write_id FROM heads WHERE field = 'name' LIMIT 1)"
        } else {
            "id = (SELECT id FROM ledger WHERE tbl = 'stock_movements' LIMIT 1)"
        };
        let n = s.connection().execute(&format!("UPDATE {table} SET {column} = {expr} WHERE {filter}"), []).unwrap();
        assert_eq!(n, 1, "{table}.{column}: one row changed");
        let after = s.digests();
        match after {
            Ok((d, _)) => assert_ne!(d, base, "{table}.{column} changed but the digest did not"),
            // A change that makes a row unreadable is also detected.
            Err(e) => panic!("{table}.{column}: digest failed: {e}"),
        }
    }
}
