//! Text rendering of receipts, tables and reports.

use serde_json::Value;
use tillsync_core::money::{Currency, format_rate_bp};

/// Prints a JSON document on stdout.
pub fn json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

/// A receipt as printed, 40 columns wide.
pub fn receipt(header: &str, sale: &Value, cur: Currency) -> String {
    let m = |v: &Value| cur.format_minor(v.as_i64().unwrap_or(0));
    let mut out = String::new();
    if !header.is_empty() {
        out.push_str(&format!("{header}\n"));
    }
    out.push_str(&format!("Receipt {}\n", sale["receipt"].as_str().unwrap_or("")));
    out.push_str(&"-".repeat(40));
    out.push('\n');
    for l in sale["lines"].as_array().into_iter().flatten() {
        let name = l["name"].as_str().unwrap_or("");
        let qty = l["qty"].as_i64().unwrap_or(0);
        out.push_str(&format!("{:<28}{:>12}\n", truncate(&format!("{qty} x {name}"), 28), m(&l["total_minor"])));
        if l["discount_minor"].as_i64().unwrap_or(0) > 0 {
            out.push_str(&format!("  discount -{}\n", m(&l["discount_minor"])));
        }
    }
    out.push_str(&"-".repeat(40));
    out.push('\n');
    out.push_str(&format!("{:<28}{:>12}\n", format!("TOTAL {}", cur.code()), m(&sale["total_minor"])));
    if sale["rounding_minor"].as_i64().unwrap_or(0) != 0 {
        out.push_str(&format!("{:<28}{:>12}\n", "Cash rounding", m(&sale["rounding_minor"])));
    }
    for t in sale["taxes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<28}{:>12}\n",
            format!("  incl. tax {}", format_rate_bp(t["rate_bp"].as_i64().unwrap_or(0))),
            m(&t["tax_minor"])
        ));
    }
    for p in sale["payments"].as_array().into_iter().flatten() {
        match p["method"].as_str() {
            Some("cash") => {
                out.push_str(&format!("{:<28}{:>12}\n", "Cash tendered", m(&p["tendered_minor"])));
                if p["change_minor"].as_i64().unwrap_or(0) > 0 {
                    out.push_str(&format!("{:<28}{:>12}\n", "Change", m(&p["change_minor"])));
                }
            }
            _ => {
                let last4 = p["last4"].as_str().map(|l| format!(" ****{l}")).unwrap_or_default();
                let brand = match p["brand"].as_str() {
                    Some("card") | None => String::new(),
                    Some(b) => format!(" {b}"),
                };
                out.push_str(&format!(
                    "{:<28}{:>12}\n",
                    truncate(&format!("Card{brand}{last4}"), 28),
                    m(&p["amount_minor"])
                ));
            }
        }
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { s.chars().take(n - 1).collect::<String>() + "." }
}
