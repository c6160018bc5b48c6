//! Stock (on hand, receive, count, oversold alerts), customers and the
//! day's X report.

use crate::layout::{optional, required, whole};
use crate::session::Auth;
use crate::{UiError, UiState};
use axum::Form;
use axum::extract::State;
use axum::response::Response;
use maud::html;
use serde::Deserialize;
use std::collections::BTreeMap;
use tillsync_core::schema::tables;

/// `GET /stock`.
pub async fn stock(State(st): State<UiState>, auth: Auth) -> Response {
    st.render(Some(auth), "Stock", "Stock", |store, _ctx| {
        let names: BTreeMap<String, String> = store.products()?.into_iter().map(|p| (p.sku, p.name)).collect();
        let rows = store.stock_list()?;
        let alerts = store.alerts()?;
        let name = |sku: &str| names.get(sku).cloned().unwrap_or_else(|| sku.to_string());
        Ok(html! {
            h1 { "Stock" }
            section aria-label="Alerts" {
                h2 { "Alerts" }
                @if alerts.oversold.is_empty() && alerts.over_refunded.is_empty() {
                    p { "No oversold products and no over-refunded sales." }
                }
                @if !alerts.oversold.is_empty() {
                    p class="flash err" { "Oversold: tills sold more than was in stock (while apart). Count these products:" }
                    ul { @for s in &alerts.oversold { li { (name(&s.sku)) " (" (s.sku) "): " (s.on_hand) } } }
                }
                @if !alerts.over_refunded.is_empty() {
                    p class="flash err" { "Refunded more than was sold (two tills refunded the same sale):" }
                    ul { @for a in &alerts.over_refunded { li { (a["receipt"].as_str().unwrap_or("")) ", " (a["sku"].as_str().unwrap_or("")) ": sold " (a["sold"]) ", refunded " (a["refunded"]) } } }
                }
            }
            div class="two" {
                form method="post" action="/stock/receive" class="card" {
                    h2 { "Receive" }
                    label for="recv-sku" { "Product" }
                    select id="recv-sku" name="sku" { @for (sku, n) in &names { option value=(sku) { (n) " (" (sku) ")" } } }
                    label for="recv-qty" { "Quantity received" }
                    input id="recv-qty" name="qty" type="number" min="1" required;
                    button type="submit" class="primary" { "Receive" }
                }
                form method="post" action="/stock/count" class="card" {
                    h2 { "Count" }
                    label for="count-sku" { "Product" }
                    select id="count-sku" name="sku" { @for (sku, n) in &names { option value=(sku) { (n) " (" (sku) ")" } } }
                    label for="count-qty" { "Quantity counted" }
                    input id="count-qty" name="qty" type="number" min="0" required;
                    button type="submit" class="primary" { "Record count" }
                }
            }
            table class="list" {
                caption { "On hand" }
                thead { tr { th scope="col" { "Product" } th scope="col" { "SKU" } th scope="col" class="num" { "On hand" } } }
                tbody {
                    @for r in &rows {
                        tr class=[r.oversold.then_some("oversold")] {
                            td { (name(&r.sku)) } td { (r.sku) }
                            td class="num" { (r.on_hand) @if r.oversold { " (oversold)" } }
                        }
                    }
                }
            }
        })
    })
    .await
}

#[derive(Deserialize)]
pub struct StockForm {
    sku: Option<String>,
    qty: Option<String>,
}

/// `POST /stock/receive`.
pub async fn receive(State(st): State<UiState>, auth: Auth, Form(f): Form<StockForm>) -> Response {
    let now = (st.now_ms)();
    let r = st
        .with_store(move |store| {
            let sku = required(&f.sku, "the product")?;
            let qty = whole(&f.qty, "the quantity")?;
            store.receive_stock(now, sku, qty)?;
            Ok(format!("received {qty} of {sku}; on hand now {}", store.on_hand(sku)?))
        })
        .await;
    st.done(&auth, "/stock", r)
}

/// `POST /stock/count`.
pub async fn count(State(st): State<UiState>, auth: Auth, Form(f): Form<StockForm>) -> Response {
    let now = (st.now_ms)();
    let r = st
        .with_store(move |store| {
            let sku = required(&f.sku, "the product")?;
            let qty = whole(&f.qty, "the quantity")?;
            let c = store.count_stock(now, sku, qty)?;
            Ok(format!("counted {} of {sku}; on hand now {}", c.counted, c.on_hand))
        })
        .await;
    st.done(&auth, "/stock", r)
}

/// `GET /customers`.
pub async fn customers(State(st): State<UiState>, auth: Auth) -> Response {
    st.render(Some(auth), "Customers", "Customers", |store, _ctx| {
        let mut list = store.records_of(tables::CUSTOMERS)?;
        list.sort_by(|a, b| a.1["name"].as_str().cmp(&b.1["name"].as_str()));
        let mut points: BTreeMap<String, i64> = BTreeMap::new();
        for r in store.ledger_rows(tables::LOYALTY)? {
            *points.entry(r.data["customer_id"].as_str().unwrap_or("").to_string()).or_default() +=
                r.data["points"].as_i64().unwrap_or(0);
        }
        Ok(html! {
            h1 { "Customers" }
            form method="post" action="/customers" class="card" {
                h2 { "Add a customer" }
                label for="c-name" { "Name" }
                input id="c-name" name="name" required autocomplete="off";
                label for="c-email" { "Email" }
                input id="c-email" name="email" type="email" autocomplete="off";
                label for="c-phone" { "Phone" }
                input id="c-phone" name="phone" type="tel" autocomplete="off";
                button type="submit" class="primary" { "Add customer" }
            }
            @if list.is_empty() { p { "No customers yet." } } @else {
                table class="list" {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Email" } th scope="col" { "Phone" } th scope="col" class="num" { "Points" } } }
                    tbody {
                        @for (id, c) in &list {
                            tr {
                                td { (c["name"].as_str().unwrap_or("")) }
                                td { (c["email"].as_str().unwrap_or("")) }
                                td { (c["phone"].as_str().unwrap_or("")) }
                                td class="num" { (points.get(&id.to_string()).copied().unwrap_or(0)) }
                            }
                        }
                    }
                }
            }
        })
    })
    .await
}

#[derive(Deserialize)]
pub struct CustomerForm {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
}

/// `POST /customers`.
pub async fn add_customer(State(st): State<UiState>, auth: Auth, Form(f): Form<CustomerForm>) -> Response {
    let now = (st.now_ms)();
    let r = st
        .with_store(move |store| {
            let name = required(&f.name, "the name")?;
            store.add_customer(now, name, optional(&f.email), optional(&f.phone))?;
            Ok(format!("customer {name} added"))
        })
        .await;
    st.done(&auth, "/customers", r)
}

/// Start and end (Unix ms) of today in the store's time zone.
fn today(tz: &jiff::tz::TimeZone, now_ms: u64) -> Result<(i64, i64, String), UiError> {
    let bad = |e: jiff::Error| UiError::Internal(e.to_string());
    let date = jiff::Timestamp::from_millisecond(now_ms as i64).map_err(bad)?.to_zoned(tz.clone()).date();
    let start = date.to_zoned(tz.clone()).map_err(bad)?.timestamp().as_millisecond();
    let end = date.tomorrow().map_err(bad)?.to_zoned(tz.clone()).map_err(bad)?.timestamp().as_millisecond();
    Ok((start, end, date.to_string()))
}

/// `GET /report`: the day's X report.
pub async fn report(State(st): State<UiState>, auth: Auth) -> Response {
    let now = (st.now_ms)();
    st.render(Some(auth), "Report", "Report", move |store, ctx| {
        let (from, to, day) = today(&ctx.tz, now)?;
        let r = store.report(from, to)?;
        let row = |label: &str, minor: i64| html! { tr { th scope="row" { (label) } td class="num" { (ctx.money(minor)) } } };
        Ok(html! {
            h1 { "Report" }
            p { "X report for " strong { (day) } " (" (ctx.tz.iana_name().unwrap_or("UTC")) "): this till's and its store's sales so far today." }
            div class="two" {
                table class="list" {
                    caption { "Takings" }
                    tbody {
                        tr { th scope="row" { "Sales" } td class="num" { (r.sales_count) } }
                        (row("Gross", r.gross_minor))
                        (row("Discounts", r.discount_minor))
                        (row("Tax", r.tax_minor))
                        (row("Cash rounding", r.rounding_minor))
                        tr { th scope="row" { "Refunds (" (r.refunds_count) ")" } td class="num" { (ctx.money(r.refunds_minor)) } }
                        tr { th scope="row" { "Voids (" (r.voids_count) ")" } td class="num" { (ctx.money(r.voids_minor)) } }
                        (row("Net", r.net_minor))
                        (row("Expected cash in the drawer", r.expected_cash_minor))
                    }
                }
                div {
                    table class="list" {
                        caption { "By tender" }
                        tbody { @for (k, v) in &r.by_tender { (row(k, *v)) } }
                    }
                    table class="list" {
                        caption { "By tax rate (net / tax)" }
                        tbody { @for (k, v) in &r.by_tax_rate { tr { th scope="row" { (k) } td class="num" { (ctx.money(v.net_minor)) " / " (ctx.money(v.tax_minor)) } } } }
                    }
                    table class="list" {
                        caption { "By cashier" }
                        tbody { @for (k, v) in &r.by_staff { (row(k, *v)) } }
                    }
                    @if !r.cash_movements.is_empty() {
                        table class="list" {
                            caption { "Cash movements" }
                            tbody { @for (k, v) in &r.cash_movements { (row(k, *v)) } }
                        }
                    }
                }
            }
            p class="hint" { "The same report on the command line: " code { "till report --data DIR" } "." }
        })
    })
    .await
}
