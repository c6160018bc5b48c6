//! `till demo`: a guided tour on a standalone sample till. (Once the hub
//! exists, the demo grows into a hub with two tills.)

use crate::node::{init_offline, now_ms, open};
use anyhow::{Result, bail};
use serde_json::json;
use std::path::Path;
use tillsync_core::domain::{Method, PaymentInput};
use tillsync_store::SaleRequest;

pub fn run(dir: &Path, j: bool) -> Result<()> {
    let marker = dir.join(".tillsync-demo");
    if marker.exists() {
        // Our own earlier demo: start it afresh.
        std::fs::remove_dir_all(dir)?;
    } else if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} exists and is not a demo folder: pass --dir with a new folder", dir.display());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&marker, "made by `till demo`; removed by the next demo\n")?;
    let till = dir.join("till-1");
    let mut store = init_offline(&till, Some("demo till"), None, true)?;
    drop(store);
    store = open(&till)?;
    let cur = store.settings()?.currency;
    let cash = |a: Option<i64>| PaymentInput { method: Method::Cash, amount_minor: a, brand: None, last4: None };
    let card = |a: Option<i64>| PaymentInput {
        method: Method::Card,
        amount_minor: a,
        brand: Some("visa".into()),
        last4: Some("4242".into()),
    };
    let sam = store.find_staff("Sam")?;
    let s1 = store.sell(
        now_ms(),
        &SaleRequest {
            items: vec![("CAPPUCCINO".into(), 2), ("CROISSANT".into(), 1)],
            payments: vec![cash(Some(1000))],
            staff_id: Some(sam),
            ..Default::default()
        },
    )?;
    let s2 = store.sell(
        now_ms(),
        &SaleRequest {
            items: vec![("LATTE".into(), 1), ("SW-HAM".into(), 1), ("WATER".into(), 2)],
            payments: vec![card(Some(500)), cash(None)],
            staff_id: Some(sam),
            ..Default::default()
        },
    )?;
    let alex = store.approve("Alex", "1234")?;
    let r = store.refund(now_ms(), &s2.receipt, &[("WATER".into(), 1)], alex, Some("demo refund"))?;
    let status = store.status()?;
    if j {
        crate::output::json(
            &json!({"data": till, "sales": [s1.receipt, s2.receipt], "refund_minor": r.total_minor, "status": status}),
        );
        return Ok(());
    }
    println!("Tillsync demo: a standalone till with sample data in {}", till.display());
    println!();
    println!("Sale paid in cash:");
    print!("{}", crate::output::receipt("", &s1.data, cur));
    println!();
    println!("Sale with split tender (card 5.00, rest cash):");
    print!("{}", crate::output::receipt("", &s2.data, cur));
    println!();
    println!("Refunded 1 x WATER on {}: {}", s2.receipt, cur.display(r.total_minor));
    println!("Pending changes per lane: {:?}", status.pending);
    println!();
    println!("Try it yourself:");
    let d = till.display();
    println!("  cargo run -q -- stock list --data {d}");
    println!("  cargo run -q -- sale --data {d} --item ESPRESSO:2 --pay cash:10");
    println!("  cargo run -q -- report --data {d}");
    println!("Remove the folder {} to start again.", dir.display());
    Ok(())
}
