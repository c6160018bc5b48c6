//! Sales: the history, one sale with its receipt, refunds and voids (both
//! approved with a manager's PIN).

use crate::layout::optional;
use crate::pages::sell::{approve, manager_fields, managers, receipt_view};
use crate::session::Auth;
use crate::{UiError, UiState};
use axum::Form;
use axum::extract::{Path, State};
use axum::response::Response;
use maud::html;
use std::collections::BTreeMap;
use tillsync_core::schema::tables;

/// Sales shown in the history.
pub const SALES_SHOWN_LEN_MAX: usize = 200;

/// `GET /sales`.
pub async fn list(State(st): State<UiState>, auth: Auth) -> Response {
    st.render(Some(auth), "Sales", "Sales", |store, ctx| {
        let sales = store.sales(SALES_SHOWN_LEN_MAX)?;
        let me = store.identity().device_id;
        Ok(html! {
            h1 { "Sales" }
            @if sales.is_empty() {
                p { "No sales yet." }
            } @else {
                table class="list" {
                    caption { "Newest first (at most " (SALES_SHOWN_LEN_MAX) ")" }
                    thead { tr {
                        th scope="col" { "Receipt" } th scope="col" { "Time" } th scope="col" { "Till" }
                        th scope="col" class="num" { "Total" } th scope="col" { "Refunds / void" }
                    } }
                    tbody {
                        @for s in &sales {
                            tr {
                                td { a href=(format!("/sales/{}", s.receipt)) { (s.receipt) } }
                                td { (ctx.time(s.at_ms)) }
                                td { @if s.device_id == me { "this till" } @else { "another till" } }
                                td class="num" { (ctx.money(s.total_minor)) }
                                td {
                                    @if s.voided { "voided" }
                                    @else if s.refunded_minor > 0 { "refunded " (ctx.money(s.refunded_minor)) }
                                }
                            }
                        }
                    }
                }
            }
        })
    })
    .await
}

/// `GET /sales/{receipt}`.
pub async fn show(State(st): State<UiState>, auth: Auth, Path(receipt): Path<String>) -> Response {
    st.render(Some(auth), "Sales", format!("Sale {receipt}"), move |store, ctx| {
        let (sale_id, sale) = store.sale_by_receipt(&receipt)?;
        let refunded = store.refunded_qty(sale_id)?;
        let voided = !store.ledger_by_key(tables::VOIDS, &sale_id.to_string())?.is_empty();
        let refunds = store.ledger_by_key(tables::REFUNDS, &sale_id.to_string())?;
        let mgrs = managers(store)?;
        let lines: Vec<_> = sale["lines"].as_array().cloned().unwrap_or_default();
        let mut sold: BTreeMap<String, (String, i64)> = BTreeMap::new();
        for l in &lines {
            let e = sold.entry(l["sku"].as_str().unwrap_or("").to_string()).or_insert((
                l["name"].as_str().unwrap_or("").to_string(),
                0,
            ));
            e.1 += l["qty"].as_i64().unwrap_or(0);
        }
        let left: Vec<(String, String, i64)> = sold
            .into_iter()
            .map(|(sku, (name, q))| {
                let back = refunded.get(&sku).copied().unwrap_or(0);
                (sku, name, (q - back).max(0))
            })
            .filter(|(_, _, q)| *q > 0)
            .collect();
        Ok(html! {
            h1 { "Sale " (receipt) }
            p { a href="/sales" { "Back to all sales" } }
            div class="two" {
                (receipt_view(store, ctx, &sale)?)
                div {
                    @if voided {
                        p class="flash err" { "This sale was voided." }
                    }
                    @if !refunds.is_empty() {
                        h2 { "Refunds" }
                        ul {
                            @for (_, r) in &refunds {
                                li { (ctx.time(r["at_ms"].as_i64().unwrap_or(0))) ": " (ctx.money(r["total_minor"].as_i64().unwrap_or(0)))
                                     " (" (r["method"].as_str().unwrap_or("")) ")" }
                            }
                        }
                    }
                    @if !voided && !left.is_empty() {
                        form method="post" action=(format!("/sales/{receipt}/refund")) class="card" {
                            h2 { "Refund" }
                            p class="hint" { "Quantities to give back (0 keeps the item)." }
                            @for (sku, name, q) in &left {
                                label for=(format!("r-{sku}")) { (name) " (up to " (q) ")" }
                                input id=(format!("r-{sku}")) name=(format!("qty_{sku}")) type="number" min="0" max=(q) value="0";
                            }
                            label for="reason" { "Reason" }
                            input id="reason" name="reason" autocomplete="off";
                            (manager_fields(&mgrs))
                            button type="submit" class="primary" { "Refund" }
                        }
                    }
                    @if !voided && refunded.is_empty() {
                        form method="post" action=(format!("/sales/{receipt}/void")) class="card" {
                            h2 { "Void the whole sale" }
                            label for="void-reason" { "Reason" }
                            input id="void-reason" name="reason" autocomplete="off";
                            label for="void-manager" { "Manager" }
                            select id="void-manager" name="manager" { @for m in &mgrs { option value=(m) { (m) } } }
                            label for="void-pin" { "Manager PIN" }
                            input id="void-pin" name="manager_pin" type="password" inputmode="numeric" autocomplete="off";
                            button type="submit" class="danger" { "Void sale" }
                        }
                    }
                }
            }
        })
    })
    .await
}

/// `POST /sales/{receipt}/refund`: fields `qty_SKU`, `reason`, `manager`, `manager_pin`.
pub async fn refund(
    State(st): State<UiState>,
    auth: Auth,
    Path(receipt): Path<String>,
    Form(f): Form<Vec<(String, String)>>,
) -> Response {
    let now = (st.now_ms)();
    let to = format!("/sales/{receipt}");
    let r = st
        .with_store(move |store| {
            let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let mut items = Vec::new();
            for (k, v) in &f {
                if let Some(sku) = k.strip_prefix("qty_") {
                    let q: i64 = v.trim().parse().map_err(|_| {
                        UiError::Invalid(format!("'{v}' is not a quantity for {sku}: use a whole number"))
                    })?;
                    if q > 0 {
                        items.push((sku.to_string(), q));
                    }
                }
            }
            if items.is_empty() {
                return Err(UiError::Invalid("nothing to refund: enter a quantity above 0".into()));
            }
            let manager = approve(store, &get("manager"), &get("manager_pin"))?;
            let reason = get("reason");
            let r = store.refund(now, &receipt, &items, manager, optional(&reason))?;
            let cur = store.settings()?.currency;
            Ok(format!("refunded {} on {receipt}; the stock is back", cur.display(r.total_minor)))
        })
        .await;
    st.done(&auth, &to, r)
}

#[derive(serde::Deserialize)]
pub struct VoidForm {
    reason: Option<String>,
    manager: Option<String>,
    manager_pin: Option<String>,
}

/// `POST /sales/{receipt}/void`.
pub async fn void(
    State(st): State<UiState>,
    auth: Auth,
    Path(receipt): Path<String>,
    Form(f): Form<VoidForm>,
) -> Response {
    let now = (st.now_ms)();
    let to = format!("/sales/{receipt}");
    let r = st
        .with_store(move |store| {
            let manager = approve(store, &f.manager, &f.manager_pin)?;
            store.void(now, &receipt, manager, optional(&f.reason))?;
            Ok(format!("sale {receipt} voided; its stock is back"))
        })
        .await;
    st.done(&auth, &to, r)
}
