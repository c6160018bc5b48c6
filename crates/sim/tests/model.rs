//! The real apply path against the reference model: random writes from
//! several tills, delivered in random orders with duplicates.

use proptest::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use tillsync_core::merge::Policy;
use tillsync_core::schema::tables;
use tillsync_core::{Change, ConflictStatus, IdGen, Lane, Schema, derived_id};
use tillsync_sim::Model;
use tillsync_store::{Identity, Store};
use uuid::Uuid;

const TENANT: Uuid = Uuid::from_u128(0x7e4a47);
const STORE: Uuid = Uuid::from_u128(0x5707e);
const SKUS: [&str; 3] = ["A", "B", "C"];

fn till(n: u128, seed: u64) -> Store {
    let identity = Identity {
        tenant_id: TENANT,
        store_id: STORE,
        device_id: Uuid::from_u128(0xd000 + n),
        receipt_prefix: format!("T{n}"),
        name: format!("till {n}"),
        mode: "standalone".into(),
    };
    Store::in_memory(identity, Schema::standard(), IdGen::from_u64(seed)).unwrap()
}

fn product(k: usize) -> Uuid {
    derived_id(TENANT, tables::PRODUCTS, SKUS[k])
}

/// Every change a till has queued, in all lanes.
fn outbox(s: &Store) -> Vec<Change> {
    Lane::ALL.iter().flat_map(|l| s.outbox(*l, 0, usize::MAX >> 1).unwrap()).collect()
}

#[derive(Clone, Debug)]
enum Action {
    Create {
        dev: usize,
        k: usize,
    },
    Set {
        dev: usize,
        k: usize,
        field: usize,
        v: i64,
    },
    Delete {
        dev: usize,
        k: usize,
    },
    Move {
        dev: usize,
        k: usize,
        qty: i64,
    },
    Count {
        dev: usize,
        k: usize,
        qty: i64,
    },
    /// Deliver some of `from`'s changes to `to`: `pick` selects a subset.
    Deliver {
        from: usize,
        to: usize,
        pick: u64,
    },
    /// Resolve the first current conflict `dev` sees, keeping its shown value.
    Resolve {
        dev: usize,
    },
}

const DEVICES: usize = 3;

fn action() -> impl Strategy<Value = Action> {
    let dev = 0..DEVICES;
    prop_oneof![
        1 => (dev.clone(), 0..3usize).prop_map(|(dev, k)| Action::Create { dev, k }),
        3 => (dev.clone(), 0..3usize, 0..2usize, 0..3i64).prop_map(|(dev, k, field, v)| Action::Set { dev, k, field, v }),
        1 => (dev.clone(), 0..3usize).prop_map(|(dev, k)| Action::Delete { dev, k }),
        2 => (dev.clone(), 0..3usize, prop_oneof![-3..0i64, 1..4i64]).prop_map(|(dev, k, qty)| Action::Move { dev, k, qty }),
        1 => (dev.clone(), 0..3usize, 0..10i64).prop_map(|(dev, k, qty)| Action::Count { dev, k, qty }),
        3 => (dev.clone(), dev.clone(), any::<u64>()).prop_map(|(from, to, pick)| Action::Deliver { from, to, pick }),
        1 => dev.prop_map(|dev| Action::Resolve { dev }),
    ]
}

const FIELDS: [&str; 2] = ["name", "price_minor"];

fn run_action(tills: &mut [Store], clock: &mut u64, skew: &[u64], a: &Action) {
    *clock += 1;
    let now = |dev: usize| *clock + skew[dev];
    match a {
        Action::Create { dev, k } => {
            tills[*dev]
                .write(now(*dev), |l| l.create(tables::PRODUCTS, product(*k), &[("sku", json!(SKUS[*k]))]))
                .unwrap();
        }
        Action::Set { dev, k, field, v } => {
            let value = if *field == 0 { json!(format!("name{v}")) } else { json!(100 * v) };
            tills[*dev].write(now(*dev), |l| l.set(tables::PRODUCTS, product(*k), &[(FIELDS[*field], value)])).unwrap();
        }
        Action::Delete { dev, k } => {
            tills[*dev].write(now(*dev), |l| l.delete(tables::PRODUCTS, product(*k))).unwrap();
        }
        Action::Move { dev, k, qty } => {
            tills[*dev]
                .write(now(*dev), |l| {
                    l.insert(tables::STOCK_MOVEMENTS, json!({"sku": SKUS[*k], "qty": qty, "reason": "test"}))
                })
                .unwrap();
        }
        Action::Count { dev, k, qty } => {
            // Counts go through the real till path, which records what was seen.
            let s = &mut tills[*dev];
            s.write(now(*dev), |l| {
                l.create(
                    tables::PRODUCTS,
                    product(*k),
                    &[("sku", json!(SKUS[*k])), ("name", json!("x")), ("price_minor", json!(1))],
                )
            })
            .unwrap();
            s.count_stock(now(*dev), SKUS[*k], *qty).unwrap();
        }
        Action::Deliver { from, to, pick } => {
            if from == to {
                return;
            }
            let changes = outbox(&tills[*from]);
            for (i, c) in changes.iter().enumerate() {
                if (pick >> (i % 64)) & 1 == 1 {
                    tills[*to].apply_remote(c).unwrap();
                }
            }
        }
        Action::Resolve { dev } => {
            let s = &mut tills[*dev];
            let open = s.conflicts().unwrap().into_iter().find(|c| c.status != ConflictStatus::Resolved);
            if let Some(c) = open {
                s.resolve_conflict(now(*dev), &c.id, "local").unwrap();
            }
        }
    }
}

/// A deterministic shuffle with duplicates, from a seed.
fn shuffled_with_duplicates(changes: &[Change], seed: u64) -> Vec<Change> {
    let mut g = IdGen::from_u64(seed);
    let mut out: Vec<Change> = changes.to_vec();
    for _ in 0..changes.len() / 3 + 1 {
        if !changes.is_empty() {
            out.push(changes[(g.next_u64() as usize) % changes.len()].clone());
        }
    }
    for i in (1..out.len()).rev() {
        let j = (g.next_u64() as usize) % (i + 1);
        out.swap(i, j);
    }
    out
}

fn check_against_model(s: &Store, m: &Model, policy: Policy) -> Result<(), TestCaseError> {
    for (k, sku) in SKUS.iter().enumerate() {
        let row = product(k);
        let heads: BTreeSet<_> = s.heads(tables::PRODUCTS, row).unwrap().into_iter().map(|w| (w.field, w.id)).collect();
        let mut want = BTreeSet::new();
        for f in m.fields(tables::PRODUCTS, row) {
            for id in m.heads(tables::PRODUCTS, row, &f) {
                want.insert((f.clone(), id));
            }
        }
        prop_assert_eq!(&heads, &want, "heads of {}", sku);
        let state = s.record_state(tables::PRODUCTS, row).unwrap();
        if m.fields(tables::PRODUCTS, row).is_empty() {
            prop_assert!(state.is_none());
        } else {
            let (live, data) = state.unwrap();
            prop_assert_eq!(live, m.exists(tables::PRODUCTS, row, policy), "existence of {}", sku);
            for f in FIELDS.iter().chain(["sku"].iter()) {
                prop_assert_eq!(data.get(*f).cloned(), m.value(tables::PRODUCTS, row, f, policy), "{}.{}", sku, f);
            }
        }
        prop_assert_eq!(s.on_hand(sku).unwrap(), m.on_hand(sku), "stock of {}", sku);
    }
    let conflicts: BTreeMap<String, ConflictStatus> =
        s.conflicts().unwrap().into_iter().filter(|c| c.table == tables::PRODUCTS).map(|c| (c.id, c.status)).collect();
    prop_assert_eq!(conflicts, m.conflicts(policy));
    let ledger: usize =
        [tables::STOCK_MOVEMENTS, tables::STOCK_COUNTS].iter().map(|t| s.ledger_rows(t).unwrap().len()).sum();
    prop_assert_eq!(ledger, m.ledger.len(), "every ledger row kept");
    Ok(())
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![Just(Policy::Lww), Just(Policy::First), Just(Policy::Manual)]
}

proptest! {
    // 256 cases in CI; TILL_MODEL_CASES=N runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("TILL_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn real_apply_matches_reference_model(
        actions in prop::collection::vec(action(), 1..40),
        policy in policy(),
        skew in prop::collection::vec(0u64..50, DEVICES),
        order_seed in any::<u64>(),
    ) {
        let mut tills: Vec<Store> = (0..DEVICES).map(|i| till(i as u128, 100 + i as u64)).collect();
        // The tenant's policy is itself a synced record, set before the rest.
        tills[0].set_policy(1, tables::PRODUCTS, policy).unwrap();
        let p = outbox(&tills[0]);
        for t in tills.iter_mut().skip(1) {
            for c in &p {
                t.apply_remote(c).unwrap();
            }
        }
        let mut clock = 1_000;
        for a in &actions {
            run_action(&mut tills, &mut clock, &skew, a);
        }
        let all: Vec<Change> = tills.iter().flat_map(outbox).collect();
        let mut model = Model::default();
        for c in all.iter().filter(|c| c.ops.iter().all(|o| o.table() != tables::POLICIES)) {
            model.add(c);
        }
        // Two fresh replicas receive everything in different orders, with duplicates.
        let mut x = till(10, 1);
        let mut y = till(11, 2);
        for c in shuffled_with_duplicates(&all, order_seed) {
            x.apply_remote(&c).unwrap();
        }
        for c in shuffled_with_duplicates(&all, order_seed ^ 0xfeed) {
            y.apply_remote(&c).unwrap();
        }
        check_against_model(&x, &model, policy)?;
        check_against_model(&y, &model, policy)?;
        let dx = x.digests().unwrap();
        prop_assert_eq!(&dx, &y.digests().unwrap());
        // The tills themselves converge once each has everything.
        for t in tills.iter_mut() {
            for c in shuffled_with_duplicates(&all, order_seed ^ 7) {
                t.apply_remote(&c).unwrap();
            }
            check_against_model(t, &model, policy)?;
            prop_assert_eq!(&t.digests().unwrap(), &dx);
        }
    }
}
