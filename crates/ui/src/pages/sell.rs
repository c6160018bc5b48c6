//! Sell: the catalogue grid by category, search and scan, the cart (in the
//! session), checkout with cash, card or split tender, and the receipt.

use crate::layout::{Ctx, is_htmx, optional, percent, required};
use crate::session::{Auth, Cart, Flash, LARGE_DISCOUNT_BP};
use crate::{UiError, UiState};
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use tillsync_core::domain::{self, LineInput, Method, PaymentInput, ProductSnapshot};
use tillsync_core::money::format_rate_bp;
use tillsync_core::schema::tables;
use tillsync_store::{LineAdjust, ProductRow, SaleAdjustments, SaleRequest, Store, compound_bp};
use uuid::Uuid;

/// Card brands offered at checkout.
pub const CARD_BRANDS: &[&str] = &["Visa", "Mastercard", "Amex", "Maestro", "Other"];

#[derive(Deserialize, Default)]
pub struct SellQuery {
    q: Option<String>,
    scan: Option<String>,
}

/// A cart priced exactly as the sale will be.
struct Priced {
    lines: Vec<(ProductRow, crate::CartLine, domain::SaleLine)>,
    subtotal_minor: i64,
    discount_minor: i64,
    tax_minor: i64,
    total_minor: i64,
}

fn price(store: &Store, cart: &Cart) -> Result<Option<Priced>, UiError> {
    if cart.lines.is_empty() {
        return Ok(None);
    }
    let settings = store.settings()?;
    let mut rows = Vec::new();
    let mut inputs = Vec::new();
    for l in &cart.lines {
        let p = store.product(&l.sku)?;
        inputs.push(LineInput {
            product: ProductSnapshot {
                sku: p.sku.clone(),
                name: p.name.clone(),
                price_minor: l.price_minor.unwrap_or(p.price_minor),
                tax_rate_bp: p.tax_rate_bp,
            },
            qty: l.qty,
            discount_bp: compound_bp(cart.discount_bp, l.discount_bp),
        });
        rows.push((p, l.clone()));
    }
    let priced = domain::price_sale(&settings, &inputs)?;
    Ok(Some(Priced {
        lines: rows.into_iter().zip(priced.lines).map(|((p, c), s)| (p, c, s)).collect(),
        subtotal_minor: priced.subtotal_minor,
        discount_minor: priced.discount_minor,
        tax_minor: priced.tax_minor,
        total_minor: priced.total_minor,
    }))
}

/// An id-safe form of a SKU (htmx restores focus by element id).
fn slug(sku: &str) -> String {
    sku.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

fn line_form(sku: &str, op: &str, id: &str, label: String, text: &str) -> Markup {
    html! {
        form method="post" action="/sell/line" hx-post="/sell/line" hx-target="#cart" hx-swap="outerHTML" class="inline" {
            input type="hidden" name="sku" value=(sku);
            input type="hidden" name="op" value=(op);
            button type="submit" id=(id) aria-label=(label) class="small" { (text) }
        }
    }
}

fn cart_view(store: &Store, ctx: &Ctx, cart: &Cart, msg: Option<&Flash>) -> Result<Markup, UiError> {
    let priced = match price(store, cart) {
        Ok(p) => p,
        // A product deleted or a bad discount since it was added: say so, keep the cart editable.
        Err(e) => {
            return Ok(html! {
                section id="cart" aria-label="Cart" class="cart" {
                    h2 { "Cart" }
                    p class="flash err" role="alert" { (e.to_string()) }
                    (line_form("", "clear", "cart-clear", "Clear cart".into(), "Clear cart"))
                }
            });
        }
    };
    let mut customers = store.records_of(tables::CUSTOMERS)?;
    customers.sort_by(|a, b| a.1["name"].as_str().cmp(&b.1["name"].as_str()));
    Ok(html! {
        section id="cart" aria-label="Cart" class="cart" {
            h2 { "Cart" }
            @if let Some(f) = msg {
                @match f {
                    Flash::Ok(m) => p class="flash ok" role="status" { (m) },
                    Flash::Err(m) => p class="flash err" role="alert" { (m) },
                }
            }
            @match &priced {
                None => p class="empty" { "The cart is empty: choose a product or scan a barcode." },
                Some(p) => {
                    table class="cart-lines" {
                        thead { tr { th scope="col" { "Item" } th scope="col" { "Qty" } th scope="col" class="num" { "Amount" } } }
                        tbody {
                            @for (prod, line, sale) in &p.lines {
                                @let s = slug(&prod.sku);
                                tr {
                                    td {
                                        (prod.name)
                                        @if let Some(o) = line.price_minor { br; span class="note" { "price " (ctx.money(o)) " (was " (ctx.money(prod.price_minor)) ")" } }
                                        @if line.discount_bp > 0 { br; span class="note" { "line discount " (format_rate_bp(line.discount_bp)) } }
                                        div class="line-tools" {
                                            (line_form(&prod.sku, "remove", &format!("rm-{s}"), format!("Remove {}", prod.name), "Remove"))
                                            details class="adjust" {
                                                summary aria-label=(format!("Adjust {}", prod.name)) { "Adjust" }
                                                form method="post" action="/sell/line" hx-post="/sell/line" hx-target="#cart" hx-swap="outerHTML" {
                                                    input type="hidden" name="sku" value=(prod.sku);
                                                    input type="hidden" name="op" value="adjust";
                                                    label for=(format!("disc-{s}")) { "Discount % for " (prod.name) }
                                                    input id=(format!("disc-{s}")) name="discount" inputmode="decimal" value=(if line.discount_bp > 0 { format_rate_bp(line.discount_bp).trim_end_matches('%').to_string() } else { String::new() });
                                                    label for=(format!("price-{s}")) { "Price for " (prod.name) }
                                                    input id=(format!("price-{s}")) name="price" inputmode="decimal" placeholder=(ctx.currency.format_minor(prod.price_minor)) value=(line.price_minor.map(|m| ctx.currency.format_minor(m)).unwrap_or_default());
                                                    " "
                                                    button type="submit" id=(format!("apply-{s}")) class="small" { "Apply" }
                                                }
                                            }
                                        }
                                    }
                                    td class="qty" {
                                        (line_form(&prod.sku, "dec", &format!("dec-{s}"), format!("One less {}", prod.name), "\u{2212}"))
                                        span class="n" { (line.qty) }
                                        (line_form(&prod.sku, "inc", &format!("inc-{s}"), format!("One more {}", prod.name), "+"))
                                    }
                                    td class="num" { (ctx.money(sale.total_minor)) }
                                }
                            }
                        }
                    }
                    dl class="totals" {
                        dt { "Subtotal" } dd { (ctx.money(p.subtotal_minor)) }
                        @if p.discount_minor > 0 { dt { "Discount" } dd { "\u{2212}" (ctx.money(p.discount_minor)) } }
                        dt { "Tax included" } dd { (ctx.money(p.tax_minor)) }
                        dt class="total" { "Total" } dd class="total" data-testid="cart-total" { (ctx.money(p.total_minor)) }
                    }
                    @if cart.needs_approval() {
                        p class="note" { "A manager's PIN is needed at checkout (a price change or a discount over " (format_rate_bp(LARGE_DISCOUNT_BP)) ")." }
                    }
                }
            }
            div class="cart-actions" {
                form method="post" action="/sell/checkout" {
                    button type="submit" class="primary big" id="checkout" { "Checkout" }
                }
                @if priced.is_some() {
                    (line_form("", "clear", "cart-clear", "Clear cart".into(), "Clear cart"))
                }
            }
            form method="post" action="/sell/cart" hx-post="/sell/cart" hx-target="#cart" hx-swap="outerHTML" class="cart-opts" {
                label for="cart-discount" { "Cart discount %" }
                input id="cart-discount" name="discount" inputmode="decimal" value=(if cart.discount_bp > 0 { format_rate_bp(cart.discount_bp).trim_end_matches('%').to_string() } else { String::new() });
                label for="cart-customer" { "Customer" }
                select id="cart-customer" name="customer" {
                    option value="" { "(none)" }
                    @for (id, c) in &customers {
                        option value=(id) selected[cart.customer == Some(*id)] { (c["name"].as_str().unwrap_or("?")) }
                    }
                }
                button type="submit" id="cart-update" class="secondary" { "Update cart" }
            }
        }
    })
}

/// The cart as an htmx fragment.
async fn cart_fragment(st: &UiState, auth: &Auth, msg: Option<Flash>) -> Response {
    let cart = st.session(auth, |s| s.cart.clone());
    let auth2 = auth.clone();
    let r = st
        .with_store(move |store| {
            let ctx = ctx_of(store, Some(auth2))?;
            cart_view(store, &ctx, &cart, msg.as_ref())
        })
        .await;
    match r {
        Ok(m) => Html(m.into_string()).into_response(),
        Err(e) => {
            (e.status(), Html(maud::html! { p role="alert" { (e.public_message()) } }.into_string())).into_response()
        }
    }
}

fn ctx_of(store: &Store, auth: Option<Auth>) -> Result<Ctx, UiError> {
    let s = store.settings()?;
    Ok(Ctx {
        auth,
        currency: s.currency,
        tz: jiff::tz::TimeZone::get(&s.time_zone).unwrap_or(jiff::tz::TimeZone::UTC),
        till_name: store.identity().name.clone(),
    })
}

fn matches(p: &ProductRow, q: &str) -> bool {
    let q = q.to_lowercase();
    p.name.to_lowercase().contains(&q)
        || p.sku.to_lowercase().contains(&q)
        || p.barcode.as_deref().is_some_and(|b| b.to_lowercase().contains(&q))
}

/// `GET /sell`.
pub async fn page(State(st): State<UiState>, auth: Auth, Query(q): Query<SellQuery>) -> Response {
    let cart = st.session(&auth, |s| s.cart.clone());
    st.render(Some(auth), "Sell", "Sell", move |store, ctx| {
        let query = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        let mut order: BTreeMap<String, i64> = BTreeMap::new();
        for (_, c) in store.records_of(tables::CATEGORIES)? {
            order.insert(c["name"].as_str().unwrap_or("").to_string(), c["position"].as_i64().unwrap_or(i64::MAX));
        }
        let mut groups: BTreeMap<(i64, String), Vec<ProductRow>> = BTreeMap::new();
        for p in store.products()? {
            if !p.active || query.as_deref().is_some_and(|q| !matches(&p, q)) {
                continue;
            }
            let cat = p.category.clone().unwrap_or_else(|| "Other".into());
            groups.entry((order.get(&cat).copied().unwrap_or(i64::MAX), cat)).or_default().push(p);
        }
        for ps in groups.values_mut() {
            ps.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(html! {
            h1 { "Sell" }
            div class="sell" {
                div class="catalogue" {
                    form method="post" action="/sell/scan" class="search" role="search" {
                        label for="q" { "Search or scan" }
                        input id="q" name="q" type="search" autocomplete="off" value=(query.clone().unwrap_or_default()) autofocus[q.scan.is_some()];
                        button type="submit" class="secondary" { "Find" }
                    }
                    @if let Some(qs) = &query {
                        p { "Products matching \u{201c}" (qs) "\u{201d}. " a href="/sell" { "Show all products" } }
                    }
                    @if groups.is_empty() { p { "No products found." } }
                    @for ((_, cat), ps) in &groups {
                        section class="category" aria-label=(cat) {
                            h2 { (cat) }
                            div class="grid" {
                                @for p in ps {
                                    form method="post" action="/sell/add" hx-post="/sell/add" hx-target="#cart" hx-swap="outerHTML" {
                                        input type="hidden" name="sku" value=(p.sku);
                                        button type="submit" class="product" id=(format!("p-{}", slug(&p.sku))) {
                                            span class="name" { (p.name) }
                                            " "
                                            span class="price" { (ctx.money(p.price_minor)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                (cart_view(store, ctx, &cart, None)?)
            }
        })
    })
    .await
}

#[derive(Deserialize)]
pub struct AddForm {
    sku: Option<String>,
}

fn add_to_cart(st: &UiState, auth: &Auth, p: &ProductRow) -> Result<String, UiError> {
    let sku = p.sku.clone();
    st.sessions
        .with(&auth.token, (st.now_ms)(), |s| s.cart.add(&sku, 1))
        .ok_or_else(|| UiError::Forbidden("your session ended: sign in again".into()))?
        .map_err(UiError::Invalid)?;
    Ok(format!("Added {}", p.name))
}

async fn respond(st: &UiState, auth: &Auth, headers: &HeaderMap, r: Result<String, UiError>, to: &str) -> Response {
    if is_htmx(headers) {
        let msg = match r {
            Ok(m) => Flash::Ok(m),
            Err(e) => Flash::Err(e.to_string()),
        };
        cart_fragment(st, auth, Some(msg)).await
    } else {
        st.done(auth, to, r)
    }
}

/// `POST /sell/add`: one more of a product.
pub async fn add(State(st): State<UiState>, auth: Auth, headers: HeaderMap, Form(f): Form<AddForm>) -> Response {
    let r = async {
        let sku = required(&f.sku, "the product")?.to_string();
        let p = st.with_store(move |s| Ok(s.product(&sku)?)).await?;
        if !p.active {
            return Err(UiError::Invalid(format!("{} is not on sale", p.name)));
        }
        add_to_cart(&st, &auth, &p)
    }
    .await;
    respond(&st, &auth, &headers, r, "/sell").await
}

#[derive(Deserialize)]
pub struct ScanForm {
    q: Option<String>,
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `POST /sell/scan`: a SKU or barcode adds the product; other text searches.
pub async fn scan(State(st): State<UiState>, auth: Auth, Form(f): Form<ScanForm>) -> Response {
    let q = f.q.unwrap_or_default().trim().to_string();
    if q.is_empty() {
        return Redirect::to("/sell").into_response();
    }
    let q2 = q.clone();
    let found = st
        .with_store(move |s| {
            Ok(s.products()?.into_iter().find(|p| {
                p.active && (p.sku.eq_ignore_ascii_case(&q2) || p.barcode.as_deref().is_some_and(|b| b == q2))
            }))
        })
        .await;
    match found {
        Ok(Some(p)) => {
            let r = add_to_cart(&st, &auth, &p);
            st.done(&auth, "/sell?scan=1", r)
        }
        Ok(None) => Redirect::to(&format!("/sell?q={}", encode(&q))).into_response(),
        Err(e) => st.done(&auth, "/sell", Err(e)),
    }
}

#[derive(Deserialize)]
pub struct LineForm {
    sku: Option<String>,
    op: Option<String>,
    discount: Option<String>,
    price: Option<String>,
}

/// `POST /sell/line`: one more, one less, remove, adjust (discount, price)
/// or clear the cart.
pub async fn line(State(st): State<UiState>, auth: Auth, headers: HeaderMap, Form(f): Form<LineForm>) -> Response {
    let r = async {
        let op = required(&f.op, "the action")?.to_string();
        let sku = f.sku.clone().unwrap_or_default();
        let discount = percent(&f.discount)?;
        let price = match optional(&f.price) {
            Some(p) => {
                let p = p.to_string();
                Some(st.with_store(move |s| Ok(s.settings()?.currency.parse_minor(&p)?)).await?)
            }
            None => None,
        };
        st.sessions
            .with(&auth.token, (st.now_ms)(), |s| -> Result<String, UiError> {
                let cart = &mut s.cart;
                if op == "clear" {
                    *cart = Cart::default();
                    return Ok(String::new());
                }
                let i = cart
                    .lines
                    .iter()
                    .position(|l| l.sku == sku)
                    .ok_or_else(|| UiError::NotFound(format!("{sku} is not in the cart")))?;
                match op.as_str() {
                    "inc" => cart.lines[i].qty = (cart.lines[i].qty + 1).min(domain::LINE_QTY_MAX),
                    "dec" if cart.lines[i].qty > 1 => cart.lines[i].qty -= 1,
                    "dec" | "remove" => {
                        cart.lines.remove(i);
                    }
                    "adjust" => {
                        cart.lines[i].discount_bp = discount;
                        cart.lines[i].price_minor = price;
                    }
                    other => return Err(UiError::Invalid(format!("unknown cart action '{other}'"))),
                }
                Ok(String::new())
            })
            .unwrap_or_else(|| Err(UiError::Forbidden("your session ended: sign in again".into())))
    }
    .await;
    respond(&st, &auth, &headers, r, "/sell").await
}

#[derive(Deserialize)]
pub struct CartForm {
    discount: Option<String>,
    customer: Option<String>,
}

/// `POST /sell/cart`: the cart discount and the customer.
pub async fn cart(State(st): State<UiState>, auth: Auth, headers: HeaderMap, Form(f): Form<CartForm>) -> Response {
    let r = async {
        let discount = percent(&f.discount)?;
        let customer = match optional(&f.customer) {
            Some(c) => {
                Some(Uuid::parse_str(c).map_err(|_| UiError::Invalid("choose a customer from the list".into()))?)
            }
            None => None,
        };
        st.session(&auth, |s| {
            s.cart.discount_bp = discount;
            s.cart.customer = customer;
        });
        Ok(String::new())
    }
    .await;
    respond(&st, &auth, &headers, r, "/sell").await
}

/// `POST /sell/checkout`: the cart's Checkout button (a post, so the
/// checkout page's address stays clean).
pub async fn to_checkout(_auth: Auth) -> Response {
    Redirect::to("/sell/checkout").into_response()
}

/// `GET /sell/checkout`.
pub async fn checkout(State(st): State<UiState>, auth: Auth) -> Response {
    let cart = st.session(&auth, |s| s.cart.clone());
    st.render(Some(auth), "Sell", "Checkout", move |store, ctx| {
        let Some(p) = price(store, &cart)? else {
            return Ok(html! {
                h1 { "Checkout" }
                p { "The cart is empty. " a href="/sell" { "Back to the catalogue" } }
            });
        };
        let managers = managers(store)?;
        Ok(html! {
            h1 { "Checkout" }
            div class="checkout" {
                section aria-label="Order" class="card" {
                    h2 { "Order" }
                    ul class="order" {
                        @for (prod, _, l) in &p.lines {
                            li { (l.qty) " \u{00d7} " (prod.name) span class="num" { (ctx.money(l.total_minor)) } }
                        }
                    }
                    p class="due" { "Total " strong data-testid="checkout-total" { (ctx.money(p.total_minor)) } }
                }
                form method="post" action="/sell/pay" class="card pay" {
                    fieldset class="methods" {
                        legend { "Payment method" }
                        @for (value, label, checked) in [("cash", "Cash", true), ("card", "Card", false), ("split", "Split", false)] {
                            span class="radio" {
                                input type="radio" name="method" id=(format!("m-{value}")) value=(value) checked[checked];
                                label for=(format!("m-{value}")) { (label) }
                            }
                        }
                    }
                    div class="f-card" {
                        label for="card_amount" { "Card amount" }
                        input id="card_amount" name="card_amount" inputmode="decimal" autocomplete="off";
                        p class="hint" { "Split: the card pays this much, cash pays the rest." }
                    }
                    div class="f-brand" {
                        label for="brand" { "Card brand" }
                        select id="brand" name="brand" {
                            @for b in CARD_BRANDS { option value=(b.to_lowercase()) { (b) } }
                        }
                        label for="last4" { "Last four digits" }
                        input id="last4" name="last4" inputmode="numeric" maxlength="4" pattern="[0-9]{4}" autocomplete="off";
                        p class="hint" { "Only the last four digits: the card number is never stored." }
                    }
                    div class="f-cash" {
                        label for="tendered" { "Tendered" }
                        input id="tendered" name="tendered" inputmode="decimal" autocomplete="off" placeholder=(ctx.currency.format_minor(p.total_minor));
                        p class="hint" { "Cash handed over; leave empty for the exact amount. The change is shown on the receipt." }
                    }
                    @if cart.needs_approval() {
                        fieldset {
                            legend { "Manager approval (price change or discount over " (format_rate_bp(LARGE_DISCOUNT_BP)) ")" }
                            (manager_fields(&managers))
                        }
                    }
                    button type="submit" class="primary big" { "Pay" }
                    a href="/sell" class="back" { "Back to the cart" }
                }
            }
        })
    })
    .await
}

/// Managers, for the approval select.
pub fn managers(store: &Store) -> Result<Vec<String>, UiError> {
    let mut m: Vec<String> = store
        .records_of(tables::STAFF)?
        .into_iter()
        .filter(|(_, d)| d["role"] == "manager" && d["active"].as_bool() != Some(false))
        .map(|(_, d)| d["name"].as_str().unwrap_or("").to_string())
        .collect();
    m.sort();
    Ok(m)
}

/// The manager and PIN fields of a form that needs approval.
pub fn manager_fields(managers: &[String]) -> Markup {
    html! {
        label for="manager" { "Manager" }
        select id="manager" name="manager" {
            @for m in managers { option value=(m) { (m) } }
        }
        label for="manager_pin" { "Manager PIN" }
        input id="manager_pin" name="manager_pin" type="password" inputmode="numeric" autocomplete="off";
    }
}

/// Checks a manager's PIN from a form.
pub fn approve(store: &Store, manager: &Option<String>, pin: &Option<String>) -> Result<Uuid, UiError> {
    let m = required(manager, "the manager")?;
    let p = required(pin, "the manager's PIN")?;
    Ok(store.approve(m, p)?)
}

#[derive(Deserialize)]
pub struct PayForm {
    method: Option<String>,
    tendered: Option<String>,
    card_amount: Option<String>,
    brand: Option<String>,
    last4: Option<String>,
    manager: Option<String>,
    manager_pin: Option<String>,
}

/// The last four digits as typed, refusing anything else without echoing it
/// (it may be a card number).
fn last_four(v: &Option<String>) -> Result<Option<String>, UiError> {
    match optional(v) {
        None => Ok(None),
        Some(s) if s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(s.to_string())),
        Some(_) => Err(UiError::Invalid(
            "give only the last four digits of the card (exactly 4 digits): card numbers are never stored".into(),
        )),
    }
}

fn payments(store: &Store, f: &PayForm) -> Result<Vec<PaymentInput>, UiError> {
    let cur = store.settings()?.currency;
    let amount = |v: &Option<String>| -> Result<Option<i64>, UiError> {
        optional(v).map(|s| cur.parse_minor(s)).transpose().map_err(UiError::from)
    };
    let card = |amount_minor: Option<i64>| -> Result<PaymentInput, UiError> {
        Ok(PaymentInput {
            method: Method::Card,
            amount_minor,
            brand: optional(&f.brand).map(str::to_string),
            last4: last_four(&f.last4)?,
        })
    };
    let cash = PaymentInput { method: Method::Cash, amount_minor: amount(&f.tendered)?, brand: None, last4: None };
    match optional(&f.method).unwrap_or("cash") {
        "cash" => Ok(vec![cash]),
        "card" => Ok(vec![card(None)?]),
        "split" => {
            let part = amount(&f.card_amount)?
                .ok_or_else(|| UiError::Invalid("split tender: give the card amount; cash pays the rest".into()))?;
            Ok(vec![card(Some(part))?, cash])
        }
        other => Err(UiError::Invalid(format!("'{other}' is not a payment method: choose Cash, Card or Split"))),
    }
}

/// `POST /sell/pay`: records the sale with the signed-in cashier.
pub async fn pay(State(st): State<UiState>, auth: Auth, Form(f): Form<PayForm>) -> Response {
    let cart = st.session(&auth, |s| s.cart.clone());
    let (staff, now) = (auth.staff_id, (st.now_ms)());
    let r = st
        .with_store(move |store| {
            if cart.lines.is_empty() {
                return Err(UiError::Invalid("the cart is empty: add a product first".into()));
            }
            let payments = payments(store, &f)?;
            let approved_by =
                if cart.needs_approval() { Some(approve(store, &f.manager, &f.manager_pin)?) } else { None };
            let req = SaleRequest {
                items: cart.lines.iter().map(|l| (l.sku.clone(), l.qty)).collect(),
                payments,
                customer_id: cart.customer,
                staff_id: Some(staff),
                discount_bp: cart.discount_bp,
            };
            let adjust = SaleAdjustments {
                lines: cart
                    .lines
                    .iter()
                    .map(|l| LineAdjust { discount_bp: l.discount_bp, unit_price_minor: l.price_minor })
                    .collect(),
                approved_by,
            };
            Ok(store.sell_adjusted(now, &req, &adjust)?.receipt)
        })
        .await;
    match r {
        Ok(receipt) => {
            st.session(&auth, |s| s.cart = Cart::default());
            Redirect::to(&format!("/receipt/{receipt}")).into_response()
        }
        Err(e) => st.done(&auth, "/sell/checkout", Err(e)),
    }
}

/// A staff member's name from an id in a ledger row.
pub fn staff_name(store: &Store, id: &Value) -> Option<String> {
    let id = Uuid::parse_str(id.as_str()?).ok()?;
    let (_, d) = store.record_state(tables::STAFF, id).ok()??;
    d["name"].as_str().map(str::to_string)
}

/// The receipt of a sale, as printed.
pub fn receipt_view(store: &Store, ctx: &Ctx, sale: &Value) -> Result<Markup, UiError> {
    let m = |v: &Value| ctx.money(v.as_i64().unwrap_or(0));
    let header = store.settings()?.receipt_header;
    let customer = sale["customer_id"]
        .as_str()
        .and_then(|c| Uuid::parse_str(c).ok())
        .and_then(|c| store.record_state(tables::CUSTOMERS, c).ok().flatten())
        .and_then(|(_, d)| d["name"].as_str().map(str::to_string));
    Ok(html! {
        article class="receipt" data-testid="receipt" aria-label="Receipt" {
            @if !header.is_empty() { p class="r-header" { (header) } }
            p { "Receipt " strong data-testid="receipt-number" { (sale["receipt"].as_str().unwrap_or("")) } }
            p class="note" {
                (ctx.time(sale["at_ms"].as_i64().unwrap_or(0)))
                @if let Some(n) = staff_name(store, &sale["staff_id"]) { " \u{00b7} served by " (n) }
                @if let Some(c) = customer { " \u{00b7} customer " (c) }
            }
            table {
                thead { tr { th scope="col" { "Item" } th scope="col" class="num" { "Qty" } th scope="col" class="num" { "Amount" } } }
                tbody {
                    @for l in sale["lines"].as_array().into_iter().flatten() {
                        tr {
                            td { (l["name"].as_str().unwrap_or("")) @if l["discount_minor"].as_i64().unwrap_or(0) > 0 { br; span class="note" { "discount \u{2212}" (m(&l["discount_minor"])) } } }
                            td class="num" { (l["qty"]) }
                            td class="num" { (m(&l["total_minor"])) }
                        }
                    }
                }
            }
            dl class="totals" {
                dt class="total" { "Total" } dd class="total" { (m(&sale["total_minor"])) }
                @if sale["rounding_minor"].as_i64().unwrap_or(0) != 0 { dt { "Cash rounding" } dd { (m(&sale["rounding_minor"])) } }
                @for t in sale["taxes"].as_array().into_iter().flatten() {
                    dt { "incl. tax " (format_rate_bp(t["rate_bp"].as_i64().unwrap_or(0))) } dd { (m(&t["tax_minor"])) }
                }
                @for p in sale["payments"].as_array().into_iter().flatten() {
                    @if p["method"] == "cash" {
                        dt { "Cash tendered" } dd { (m(&p["tendered_minor"])) }
                        dt { "Change" } dd data-testid="change" { (m(&p["change_minor"])) }
                    } @else {
                        dt { "Card " (p["brand"].as_str().filter(|b| *b != "card").unwrap_or("")) @if let Some(l4) = p["last4"].as_str() { " ****" (l4) } }
                        dd { (m(&p["amount_minor"])) }
                    }
                }
            }
        }
    })
}

/// `GET /receipt/{receipt}`.
pub async fn receipt(State(st): State<UiState>, auth: Auth, Path(receipt): Path<String>) -> Response {
    st.render(Some(auth), "Sell", format!("Receipt {receipt}"), move |store, ctx| {
        let (_, sale) = store.sale_by_receipt(&receipt)?;
        Ok(html! {
            h1 class="no-print" { "Receipt " (receipt) }
            (receipt_view(store, ctx, &sale)?)
            div class="actions no-print" {
                a href="/sell" class="button primary big" { "New sale" }
                button type="button" class="secondary" data-print="" { "Print" }
                a href=(format!("/sales/{receipt}")) class="button secondary" { "Refund or void" }
            }
        })
    })
    .await
}
