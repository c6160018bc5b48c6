//! A new synced table is a declaration, not new merge or sync code: declare
//! a record table and a ledger, write on one till, sync to another.

use serde_json::json;
use tillsync_core::schema::{FieldType, Lane, Scope, TableDecl};
use tillsync_core::{IdGen, Schema};
use tillsync_store::{Identity, Store, StoreError};
use uuid::Uuid;

fn schema() -> Schema {
    Schema::standard()
        .with_table(
            TableDecl::record("suppliers", Lane::Catalog)
                .field("name", FieldType::Text)
                .field("phone", FieldType::Text),
        )
        .with_table(
            TableDecl::ledger("deliveries", Lane::Stock, Scope::Store)
                .required("supplier_id", FieldType::Id)
                .required("cases", FieldType::Int)
                .key("supplier_id"),
        )
}

fn till(n: u128, schema: Schema) -> Store {
    let identity = Identity {
        tenant_id: Uuid::from_u128(1),
        store_id: Uuid::from_u128(2),
        device_id: Uuid::from_u128(0xd0 + n),
        receipt_prefix: format!("T{n}"),
        name: format!("till {n}"),
        mode: "standalone".into(),
    };
    Store::in_memory(identity, schema, IdGen::from_u64(n as u64)).unwrap()
}

#[test]
fn a_declared_table_syncs_between_tills() {
    let mut a = till(1, schema());
    let mut b = till(2, schema());
    let supplier = Uuid::from_u128(77);
    a.write(1_000, |l| l.create("suppliers", supplier, &[("name", json!("Beans & Co")), ("phone", json!("555"))]))
        .unwrap();
    a.write(1_001, |l| l.insert("deliveries", json!({"supplier_id": supplier, "cases": 4}))).unwrap();
    // B edits the phone concurrently: the generic merge applies to the new table too.
    b.write(1_002, |l| l.set("suppliers", supplier, &[("phone", json!("556"))])).unwrap();

    let from_a: Vec<_> = [Lane::Catalog, Lane::Stock].iter().flat_map(|l| a.outbox(*l, 0, 100).unwrap()).collect();
    let from_b: Vec<_> = b.outbox(Lane::Catalog, 0, 100).unwrap();
    assert_eq!(from_a.len(), 2);
    assert_eq!(from_a[1].lane, Lane::Stock, "the ledger travels in its declared lane");
    for c in &from_a {
        b.apply_remote(c).unwrap();
    }
    for c in &from_b {
        a.apply_remote(c).unwrap();
    }
    assert_eq!(a.digests().unwrap(), b.digests().unwrap());
    let (live, data) = b.record_state("suppliers", supplier).unwrap().unwrap();
    assert!(live);
    assert_eq!(data["name"], json!("Beans & Co"));
    assert_eq!(data["phone"], json!("556"), "lww: B's write has the higher clock");
    assert_eq!(b.conflicts().unwrap().len(), 1, "the concurrent phone edits are a conflict");
    assert_eq!(b.ledger_by_key("deliveries", &supplier.to_string()).unwrap().len(), 1);

    // A till without the declaration refuses the change rather than guessing.
    let mut old = till(3, Schema::standard());
    let err = old.apply_remote(&from_a[0]).unwrap_err();
    assert!(matches!(err, StoreError::Schema(_)), "{err}");
    // And a declared field's type is enforced on every write.
    let err = a.write(2_000, |l| l.set("suppliers", supplier, &[("phone", json!(5))])).unwrap_err();
    assert!(matches!(err, StoreError::Schema(_)), "{err}");
}
