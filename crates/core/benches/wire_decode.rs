//! Decoding the operations of a push of 200 three-line sales (7 ops each:
//! the sale, 3 lines, 3 stock movements): `WireOp`'s decoder beside the
//! decoder serde derives for the same internally tagged enum, in the same
//! process, rounds interleaved.
//!
//! cargo bench -p tillsync-core --bench wire_decode

use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, Instant};
use tillsync_core::wire::WireOp;
use uuid::Uuid;

/// What serde derives for `WireOp` (the decoder it had before).
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Derived {
    Write {
        #[serde(rename = "id")]
        _id: String,
        #[serde(rename = "table")]
        _table: String,
        #[serde(rename = "row")]
        _row: Uuid,
        #[serde(rename = "field")]
        _field: String,
        #[serde(rename = "value")]
        _value: Value,
        #[serde(rename = "base")]
        _base: Vec<String>,
    },
    Insert {
        #[serde(rename = "table")]
        _table: String,
        #[serde(rename = "id")]
        _id: Uuid,
        #[serde(rename = "store")]
        _store: Uuid,
        #[serde(rename = "device")]
        _device: Uuid,
        #[serde(rename = "hlc")]
        _hlc: u64,
        #[serde(rename = "data")]
        _data: Value,
    },
}

fn insert(table: &str, data: &str) -> String {
    let u = Uuid::from_u128(0x0189_0a5d_ac96_774b_bcce_b302_099a_8057);
    format!(
        r#"{{"op":"insert","table":"{table}","id":"{u}","store":"{u}","device":"{u}","hlc":123456789,"data":{data}}}"#
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let u = Uuid::from_u128(7);
    let sale = insert(
        "sales",
        &format!(
            r#"{{"receipt":"T1-000123","cashier":"{u}","total_minor":880,"tax_minor":80,"currency":"EUR","created_ms":1800000000000,"customer":null,"discount_minor":0,"note":""}}"#
        ),
    );
    let line = insert(
        "sale_lines",
        &format!(r#"{{"sale":"{u}","sku":"ESPRESSO","name":"Espresso","qty":1,"price_minor":250,"tax_rate_bp":1000}}"#),
    );
    let movement =
        insert("stock_movements", &format!(r#"{{"product":"{u}","delta":-1,"reason":"sale","sale":"{u}"}}"#));
    let ops = format!("[{sale},{line},{line},{line},{movement},{movement},{movement}]");
    let push = format!("[{}]", vec![ops; 200].join(","));
    let (mut derived, mut ours) = (vec![], vec![]);
    for _ in 0..30 {
        let t = Instant::now();
        let v: Vec<Vec<Derived>> = serde_json::from_str(&push).expect("derived");
        derived.push(t.elapsed());
        assert_eq!(v.len(), 200);
        let t = Instant::now();
        let v: Vec<Vec<WireOp>> = serde_json::from_str(&push).expect("ours");
        ours.push(t.elapsed());
        assert_eq!(v.len(), 200);
    }
    let (d, o) = (median(derived), median(ours));
    println!("## Decoding a push of 200 sales ({} bytes, 1,400 ops), median of 30", push.len());
    println!("| decoder | time per push |");
    println!("|---|---|");
    println!("| serde's derived (internally tagged) | {:.2} ms |", d.as_secs_f64() * 1e3);
    println!("| `WireOp` (one pass) | {:.2} ms |", o.as_secs_f64() * 1e3);
    println!("ratio derived / ours: {:.2}x", d.as_secs_f64() / o.as_secs_f64());
}
