//! The POS domain: tenant settings, sale pricing (discounts, taxes),
//! payments (cash with change, card with brand and last four only, split
//! tender), refunds, card-number detection and the X report.

use crate::money::{self, Currency, RateBp, div_round_half_up, round_cash};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Errors a cashier can cause.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaleError {
    #[error("a sale needs at least one item: add --item SKU[:QTY]")]
    NoItems,
    #[error("quantity {qty} for {sku} is not allowed: use a whole number of 1 or more")]
    BadQuantity { sku: String, qty: i64 },
    #[error(
        "payment of {paid} is short of the total {due}: add a --pay for the rest, or use --pay cash without an amount"
    )]
    PaymentShort { due: String, paid: String },
    #[error("the card payment of {amount} is more than the {due} still due: a card pays at most what is due")]
    CardOverpays { amount: String, due: String },
    #[error("a payment of {0} is not allowed: amounts must be above zero")]
    BadAmount(String),
    #[error("the sale is already paid in full before this payment: remove the extra --pay")]
    ExtraPayment,
    #[error("'{0}' is not the last four digits of a card: give exactly four digits, never the full card number")]
    BadLastFour(String),
    #[error("a card brand is letters only, at most 20 (e.g. visa)")]
    BadBrand,
    #[error("discount {0} is not allowed: a percentage from 0 to 100")]
    BadDiscount(String),
    #[error("{sku} was not sold on this sale")]
    NotOnSale { sku: String },
    #[error("cannot refund {want} of {sku}: only {left} left to refund on this sale")]
    RefundTooMany { sku: String, want: i64, left: i64 },
    #[error("text looks like a full card number; card numbers are never stored: remove it")]
    CardNumberInText,
    #[error(
        "the hub is unreachable and card payments above {limit} are not accepted offline: take cash, split the payment, or wait for the connection"
    )]
    OfflineCardOverLimit { limit: String },
    #[error(
        "the hub is unreachable and offline card payments would reach {total}, over the limit of {limit}: take cash or wait for the connection"
    )]
    OfflineCardTotalOverLimit { total: String, limit: String },
}

/// Tenant settings with their defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub currency: Currency,
    pub prices_include_tax: bool,
    pub cash_rounding_minor: i64,
    pub time_zone: String,
    pub receipt_header: String,
    /// Largest card payment accepted while the hub is unreachable (0: no limit).
    pub offline_card_max_minor: i64,
    /// Most card payments in total waiting to reach the hub (0: no limit).
    pub offline_card_total_max_minor: i64,
    /// Seconds without reaching the hub before the till warns.
    pub offline_warn_after_s: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            currency: Currency::parse("EUR").expect("EUR"),
            prices_include_tax: true,
            cash_rounding_minor: 0,
            time_zone: "UTC".into(),
            receipt_header: String::new(),
            offline_card_max_minor: 0,
            offline_card_total_max_minor: 0,
            offline_warn_after_s: 3_600,
        }
    }
}

impl Settings {
    /// Reads settings from the materialised record, falling back to the
    /// defaults for missing or unreadable fields.
    pub fn from_record(fields: &BTreeMap<String, Value>) -> Self {
        let d = Settings::default();
        Settings {
            currency: fields
                .get("currency")
                .and_then(Value::as_str)
                .and_then(|c| Currency::parse(c).ok())
                .unwrap_or(d.currency),
            prices_include_tax: fields
                .get("prices_include_tax")
                .and_then(Value::as_bool)
                .unwrap_or(d.prices_include_tax),
            cash_rounding_minor: fields.get("cash_rounding_minor").and_then(Value::as_i64).unwrap_or(0).max(0),
            time_zone: fields.get("time_zone").and_then(Value::as_str).map(str::to_string).unwrap_or(d.time_zone),
            receipt_header: fields.get("receipt_header").and_then(Value::as_str).unwrap_or("").to_string(),
            offline_card_max_minor: fields.get("offline_card_max_minor").and_then(Value::as_i64).unwrap_or(0).max(0),
            offline_card_total_max_minor: fields
                .get("offline_card_total_max_minor")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .max(0),
            offline_warn_after_s: fields
                .get("offline_warn_after_s")
                .and_then(Value::as_i64)
                .unwrap_or(d.offline_warn_after_s)
                .max(0),
        }
    }
}

/// What a sale line copies from the product at the time of sale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSnapshot {
    pub sku: String,
    pub name: String,
    pub price_minor: i64,
    pub tax_rate_bp: RateBp,
}

/// A line the cashier rings up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineInput {
    pub product: ProductSnapshot,
    pub qty: i64,
    /// Line discount in basis points of the line amount.
    pub discount_bp: i64,
}

/// A priced sale line, as stored in the sale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleLine {
    pub sku: String,
    pub name: String,
    pub qty: i64,
    pub unit_price_minor: i64,
    pub tax_rate_bp: RateBp,
    pub discount_minor: i64,
    pub net_minor: i64,
    pub tax_minor: i64,
    /// What the customer pays for the line, tax included.
    pub total_minor: i64,
}

/// Tax summed per rate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxLine {
    pub rate_bp: RateBp,
    pub net_minor: i64,
    pub tax_minor: i64,
}

/// A priced sale before payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Priced {
    pub lines: Vec<SaleLine>,
    pub taxes: Vec<TaxLine>,
    /// Sum of line amounts before discounts, at shelf prices.
    pub subtotal_minor: i64,
    pub discount_minor: i64,
    pub tax_minor: i64,
    pub total_minor: i64,
}

/// Largest quantity on one line.
pub const LINE_QTY_MAX: i64 = 100_000;
/// Most lines on one sale.
pub const SALE_LINES_MAX: usize = 500;

/// Prices a sale. Discounts apply per line; tax is computed per line from
/// the discounted amount (inclusive or exclusive as the settings say) and
/// rounded half up per line.
pub fn price_sale(settings: &Settings, lines: &[LineInput]) -> Result<Priced, SaleError> {
    if lines.is_empty() {
        return Err(SaleError::NoItems);
    }
    let mut out = Vec::with_capacity(lines.len());
    let mut taxes: BTreeMap<RateBp, (i64, i64)> = BTreeMap::new();
    let (mut subtotal, mut discount, mut tax_total, mut total) = (0i64, 0i64, 0i64, 0i64);
    for l in lines {
        if l.qty < 1 || l.qty > LINE_QTY_MAX {
            return Err(SaleError::BadQuantity { sku: l.product.sku.clone(), qty: l.qty });
        }
        if !(0..=10_000).contains(&l.discount_bp) {
            return Err(SaleError::BadDiscount(money::format_rate_bp(l.discount_bp)));
        }
        let amount = l.product.price_minor * l.qty;
        let disc = money::percent_of(amount, l.discount_bp);
        let after = amount - disc;
        let (net, tax, gross) = if settings.prices_include_tax {
            let (net, tax) = money::tax_from_gross(after, l.product.tax_rate_bp);
            (net, tax, after)
        } else {
            let (tax, gross) = money::tax_from_net(after, l.product.tax_rate_bp);
            (after, tax, gross)
        };
        let e = taxes.entry(l.product.tax_rate_bp).or_default();
        e.0 += net;
        e.1 += tax;
        subtotal += amount;
        discount += disc;
        tax_total += tax;
        total += gross;
        out.push(SaleLine {
            sku: l.product.sku.clone(),
            name: l.product.name.clone(),
            qty: l.qty,
            unit_price_minor: l.product.price_minor,
            tax_rate_bp: l.product.tax_rate_bp,
            discount_minor: disc,
            net_minor: net,
            tax_minor: tax,
            total_minor: gross,
        });
    }
    let taxes =
        taxes.into_iter().map(|(rate_bp, (net_minor, tax_minor))| TaxLine { rate_bp, net_minor, tax_minor }).collect();
    Ok(Priced {
        lines: out,
        taxes,
        subtotal_minor: subtotal,
        discount_minor: discount,
        tax_minor: tax_total,
        total_minor: total,
    })
}

/// Payment method as typed by the cashier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Cash,
    Card,
}

/// A payment as typed: `cash`, `cash:50`, `card`, `card:20.00`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentInput {
    pub method: Method,
    pub amount_minor: Option<i64>,
    pub brand: Option<String>,
    pub last4: Option<String>,
}

/// A settled payment, as stored. Card payments hold brand and last four
/// digits only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Payment {
    Cash { amount_minor: i64, tendered_minor: i64, change_minor: i64 },
    Card { amount_minor: i64, brand: String, last4: Option<String> },
}

impl Payment {
    /// The amount kept by the shop.
    pub fn amount_minor(&self) -> i64 {
        match self {
            Payment::Cash { amount_minor, .. } | Payment::Card { amount_minor, .. } => *amount_minor,
        }
    }

    /// The method.
    pub fn method(&self) -> Method {
        match self {
            Payment::Cash { .. } => Method::Cash,
            Payment::Card { .. } => Method::Card,
        }
    }
}

/// Checks a card's last four digits; a longer run of digits is refused, so
/// a full card number can never be stored.
pub fn check_last4(s: &str) -> Result<String, SaleError> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(digits)
    } else {
        Err(SaleError::BadLastFour(if digits.len() > 6 { "that number".into() } else { s.to_string() }))
    }
}

/// Checks a card brand.
pub fn check_brand(s: &str) -> Result<String, SaleError> {
    if !s.is_empty() && s.len() <= 20 && s.chars().all(|c| c.is_ascii_alphabetic() || c == ' ') {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(SaleError::BadBrand)
    }
}

/// Settles payments against a total. Payments apply in order; a payment
/// without an amount takes the rest. Cash that pays the rest is rounded to
/// the cash step and may exceed it (change is given); a card never pays
/// more than is due. Returns the payments and the cash rounding applied.
pub fn settle(
    currency: Currency,
    total_minor: i64,
    cash_step_minor: i64,
    inputs: &[PaymentInput],
) -> Result<(Vec<Payment>, i64), SaleError> {
    let fmt = |m: i64| currency.display(m);
    let mut remaining = total_minor;
    let mut rounding = 0i64;
    let mut out = Vec::with_capacity(inputs.len());
    let mut paid = 0i64;
    for p in inputs {
        if let Some(a) = p.amount_minor
            && a <= 0
        {
            return Err(SaleError::BadAmount(fmt(a)));
        }
        if remaining <= 0 && !(total_minor == 0 && out.is_empty()) {
            return Err(SaleError::ExtraPayment);
        }
        match p.method {
            Method::Card => {
                let amount = p.amount_minor.unwrap_or(remaining);
                if amount > remaining {
                    return Err(SaleError::CardOverpays { amount: fmt(amount), due: fmt(remaining) });
                }
                let brand = match &p.brand {
                    Some(b) => check_brand(b)?,
                    None => "card".into(),
                };
                let last4 = p.last4.as_deref().map(check_last4).transpose()?;
                remaining -= amount;
                paid += amount;
                out.push(Payment::Card { amount_minor: amount, brand, last4 });
            }
            Method::Cash => {
                let rest_rounded = round_cash(remaining, cash_step_minor);
                let tendered = p.amount_minor.unwrap_or(rest_rounded);
                if tendered >= rest_rounded {
                    rounding += rest_rounded - remaining;
                    paid += rest_rounded;
                    remaining = 0;
                    out.push(Payment::Cash {
                        amount_minor: rest_rounded,
                        tendered_minor: tendered,
                        change_minor: tendered - rest_rounded,
                    });
                } else {
                    remaining -= tendered;
                    paid += tendered;
                    out.push(Payment::Cash { amount_minor: tendered, tendered_minor: tendered, change_minor: 0 });
                }
            }
        }
    }
    if remaining > 0 {
        return Err(SaleError::PaymentShort { due: fmt(total_minor), paid: fmt(paid) });
    }
    Ok((out, rounding))
}

/// A line of a refund.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundLine {
    pub sku: String,
    pub qty: i64,
    pub amount_minor: i64,
    pub tax_minor: i64,
}

/// Refund lines for `wanted` (SKU, quantity) of a sale, or every line still
/// refundable when `wanted` is empty. `already` gives quantities refunded
/// before, per SKU. Amounts are the line's paid amount pro rata, rounded
/// half up.
pub fn refund_lines(
    sale_lines: &[SaleLine],
    already: &BTreeMap<String, i64>,
    wanted: &[(String, i64)],
) -> Result<Vec<RefundLine>, SaleError> {
    let mut sold: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for l in sale_lines {
        let e = sold.entry(l.sku.as_str()).or_default();
        e.0 += l.qty;
        e.1 += l.total_minor;
        e.2 += l.tax_minor;
    }
    let wanted: Vec<(String, i64)> = if wanted.is_empty() {
        sold.iter()
            .map(|(sku, (qty, _, _))| (sku.to_string(), qty - already.get(*sku).copied().unwrap_or(0)))
            .filter(|(_, q)| *q > 0)
            .collect()
    } else {
        wanted.to_vec()
    };
    let mut out = Vec::new();
    let mut requested: BTreeMap<String, i64> = BTreeMap::new();
    for (sku, qty) in wanted {
        if qty < 1 {
            return Err(SaleError::BadQuantity { sku, qty });
        }
        let (sold_qty, total, tax) =
            *sold.get(sku.as_str()).ok_or_else(|| SaleError::NotOnSale { sku: sku.clone() })?;
        let r = requested.entry(sku.clone()).or_default();
        *r += qty;
        let left = sold_qty - already.get(&sku).copied().unwrap_or(0) - (*r - qty);
        if qty > left {
            return Err(SaleError::RefundTooMany { sku, want: qty, left: left.max(0) });
        }
        out.push(RefundLine {
            amount_minor: div_round_half_up(total as i128 * qty as i128, sold_qty as i128),
            tax_minor: div_round_half_up(tax as i128 * qty as i128, sold_qty as i128),
            sku,
            qty,
        });
    }
    Ok(out)
}

/// Whether a text holds something that looks like a full card number: a
/// run of 13 to 19 digits (spaces and dashes allowed between) that passes
/// the Luhn check (PCI DSS: a primary account number is never stored).
pub fn contains_card_number(text: &str) -> bool {
    !card_runs(text, CARD_DIGITS_MIN).is_empty()
}

/// The same test for product codes (SKU, barcode): GTIN-13 and GTIN-14
/// barcodes are 13 and 14 digits long and one in ten passes the Luhn check
/// by chance, so codes are refused only from 15 digits on, where every
/// current card number length lies (15 to 19) and no barcode does.
pub fn contains_card_number_in_code(text: &str) -> bool {
    !card_runs(text, 15).is_empty()
}

/// The text with every card-number-like run masked but its last four
/// digits, for the rare place that must keep a refused input (the hub's
/// quarantine): `4111 1111 1111 1111` becomes `**** **** **** 1111`.
pub fn mask_card_numbers(text: &str) -> String {
    let runs = card_runs(text, CARD_DIGITS_MIN);
    if runs.is_empty() {
        return text.to_string();
    }
    let mut out: Vec<char> = text.chars().collect();
    for (start, end, digits) in runs {
        let mut seen = 0;
        for c in out[start..end].iter_mut() {
            if c.is_ascii_digit() {
                seen += 1;
                if seen <= digits - 4 {
                    *c = '*';
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Masks card numbers in every string of a JSON value (keys included),
/// leaving numbers alone: the hub keeps refused changes in its quarantine
/// for an engineer to read, without the card number a till may have sent.
pub fn mask_card_numbers_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if uuid::Uuid::try_parse(s).is_err() && contains_card_number(s) => *s = mask_card_numbers(s),
        Value::Array(items) => items.iter_mut().for_each(mask_card_numbers_json),
        Value::Object(map) => {
            let masked: serde_json::Map<String, Value> = std::mem::take(map)
                .into_iter()
                .map(|(k, mut v)| {
                    mask_card_numbers_json(&mut v);
                    (mask_card_numbers(&k), v)
                })
                .collect();
            *map = masked;
        }
        _ => {}
    }
}

const CARD_DIGITS_MIN: usize = 13;

/// The runs of a text (char index range, digit count) that look like card
/// numbers: `digits_min` to 19 digits, with spaces and dashes allowed
/// between, passing the Luhn check. The whole run is judged: card numbers
/// stand alone, and a longer run of digits is something else.
fn card_runs(text: &str, digits_min: usize) -> Vec<(usize, usize, usize)> {
    let mut runs = vec![];
    let mut digits: Vec<u8> = Vec::new();
    let (mut start, mut end) = (0, 0);
    let mut close = |digits: &mut Vec<u8>, start: usize, end: usize| {
        if (digits_min..=19).contains(&digits.len()) && luhn(digits) {
            runs.push((start, end, digits.len()));
        }
        digits.clear();
    };
    for (i, c) in text.chars().enumerate() {
        if let Some(d) = c.to_digit(10) {
            if digits.is_empty() {
                start = i;
            }
            digits.push(d as u8);
            end = i + 1;
        } else if (c == ' ' || c == '-') && !digits.is_empty() {
            continue;
        } else {
            close(&mut digits, start, end);
        }
    }
    close(&mut digits, start, end);
    runs
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = d as u32;
            if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Refuses free text that carries a card number.
pub fn check_free_text(text: &str) -> Result<(), SaleError> {
    if contains_card_number(text) { Err(SaleError::CardNumberInText) } else { Ok(()) }
}

/// The day's X report, built from the day's ledger rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct XReport {
    pub sales_count: i64,
    pub gross_minor: i64,
    pub discount_minor: i64,
    pub tax_minor: i64,
    pub rounding_minor: i64,
    pub by_tender: BTreeMap<String, i64>,
    pub by_tax_rate: BTreeMap<String, TaxTotals>,
    pub by_staff: BTreeMap<String, i64>,
    pub refunds_count: i64,
    pub refunds_minor: i64,
    pub voids_count: i64,
    pub voids_minor: i64,
    pub cash_movements: BTreeMap<String, i64>,
    /// Cash expected in the drawer: float + cash taken - cash refunded + pay-ins - pay-outs.
    pub expected_cash_minor: i64,
    pub net_minor: i64,
}

/// Net and tax of one rate in a report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TaxTotals {
    pub net_minor: i64,
    pub tax_minor: i64,
}

impl XReport {
    /// Adds a sale row (its `data` as stored). `staff` names the cashier.
    pub fn add_sale(&mut self, data: &Value, staff: &str) {
        let total = data["total_minor"].as_i64().unwrap_or(0);
        self.sales_count += 1;
        self.gross_minor += total;
        self.discount_minor += data["discount_minor"].as_i64().unwrap_or(0);
        self.tax_minor += data["tax_minor"].as_i64().unwrap_or(0);
        self.rounding_minor += data["rounding_minor"].as_i64().unwrap_or(0);
        *self.by_staff.entry(staff.to_string()).or_default() += total;
        if let Some(ps) = data["payments"].as_array() {
            for p in ps {
                let m = p["method"].as_str().unwrap_or("?").to_string();
                let a = p["amount_minor"].as_i64().unwrap_or(0);
                if m == "cash" {
                    self.expected_cash_minor += a;
                }
                *self.by_tender.entry(m).or_default() += a;
            }
        }
        if let Some(ts) = data["taxes"].as_array() {
            for t in ts {
                let e = self.by_tax_rate.entry(money::format_rate_bp(t["rate_bp"].as_i64().unwrap_or(0))).or_default();
                e.net_minor += t["net_minor"].as_i64().unwrap_or(0);
                e.tax_minor += t["tax_minor"].as_i64().unwrap_or(0);
            }
        }
        self.net_minor += total + data["rounding_minor"].as_i64().unwrap_or(0);
    }

    /// Adds a refund row.
    pub fn add_refund(&mut self, data: &Value) {
        let total = data["total_minor"].as_i64().unwrap_or(0);
        self.refunds_count += 1;
        self.refunds_minor += total;
        if data["method"].as_str() == Some("cash") {
            self.expected_cash_minor -= total;
        }
        self.net_minor -= total;
    }

    /// Adds a void of a sale whose total was `sale_total_minor` and whose
    /// cash part was `sale_cash_minor`.
    pub fn add_void(&mut self, sale_total_minor: i64, sale_cash_minor: i64) {
        self.voids_count += 1;
        self.voids_minor += sale_total_minor;
        self.expected_cash_minor -= sale_cash_minor;
        self.net_minor -= sale_total_minor;
    }

    /// Adds a cash movement (float, pay_in, pay_out).
    pub fn add_cash_movement(&mut self, data: &Value) {
        let kind = data["kind"].as_str().unwrap_or("?").to_string();
        let amount = data["amount_minor"].as_i64().unwrap_or(0);
        self.expected_cash_minor += if kind == "pay_out" { -amount } else { amount };
        *self.cash_movements.entry(kind).or_default() += amount;
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn line(sku: &str, price: i64, rate: i64, qty: i64, disc: i64) -> LineInput {
        LineInput {
            product: ProductSnapshot { sku: sku.into(), name: sku.into(), price_minor: price, tax_rate_bp: rate },
            qty,
            discount_bp: disc,
        }
    }

    fn pay(method: Method, amount: Option<i64>) -> PaymentInput {
        PaymentInput { method, amount_minor: amount, brand: None, last4: None }
    }

    #[test]
    fn prices_inclusive_and_exclusive() {
        let s = Settings::default();
        let p = price_sale(&s, &[line("A", 250, 2000, 2, 0), line("B", 100, 550, 1, 1000)]).unwrap();
        // A: 5.00 gross, tax 0.83; B: 1.00 - 10 % = 0.90 gross, tax 0.05 (4.69 -> 5).
        assert_eq!(p.lines[0].tax_minor, 83);
        assert_eq!(p.lines[1].discount_minor, 10);
        assert_eq!(p.lines[1].tax_minor, 5);
        assert_eq!(p.total_minor, 590);
        assert_eq!(p.subtotal_minor, 600);
        assert_eq!(p.taxes.len(), 2);
        let ex = Settings { prices_include_tax: false, ..Settings::default() };
        let p = price_sale(&ex, &[line("A", 250, 2000, 2, 0)]).unwrap();
        assert_eq!((p.tax_minor, p.total_minor), (100, 600));
    }

    #[test]
    fn refuses_bad_quantities_and_empty_sales() {
        let s = Settings::default();
        assert_eq!(price_sale(&s, &[]), Err(SaleError::NoItems));
        assert!(matches!(price_sale(&s, &[line("A", 1, 0, 0, 0)]), Err(SaleError::BadQuantity { .. })));
        assert!(matches!(price_sale(&s, &[line("A", 1, 0, -2, 0)]), Err(SaleError::BadQuantity { .. })));
        assert!(matches!(price_sale(&s, &[line("A", 1, 0, 1, 20_000)]), Err(SaleError::BadDiscount(_))));
    }

    #[test]
    fn cash_gives_change_and_rounds_to_the_step() {
        let (p, r) = settle(eur(), 1233, 5, &[pay(Method::Cash, Some(2000))]).unwrap();
        assert_eq!(r, 2);
        assert_eq!(p, vec![Payment::Cash { amount_minor: 1235, tendered_minor: 2000, change_minor: 765 }]);
        let (p, r) = settle(eur(), 1233, 0, &[pay(Method::Cash, None)]).unwrap();
        assert_eq!((p[0].amount_minor(), r), (1233, 0));
    }

    #[test]
    fn split_tender_card_then_cash() {
        let (p, r) = settle(eur(), 1000, 0, &[pay(Method::Card, Some(400)), pay(Method::Cash, None)]).unwrap();
        assert_eq!(r, 0);
        assert_eq!(p.iter().map(Payment::amount_minor).sum::<i64>(), 1000);
        let (p, _) = settle(eur(), 1000, 0, &[pay(Method::Cash, Some(300)), pay(Method::Card, None)]).unwrap();
        assert_eq!(p[1].amount_minor(), 700);
    }

    #[test]
    fn short_over_and_extra_payments_are_refused() {
        assert!(matches!(settle(eur(), 1000, 0, &[pay(Method::Cash, Some(500))]), Err(SaleError::PaymentShort { .. })));
        assert!(matches!(
            settle(eur(), 1000, 0, &[pay(Method::Card, Some(1500))]),
            Err(SaleError::CardOverpays { .. })
        ));
        assert!(matches!(
            settle(eur(), 1000, 0, &[pay(Method::Card, None), pay(Method::Cash, None)]),
            Err(SaleError::ExtraPayment)
        ));
        assert!(matches!(settle(eur(), 1000, 0, &[pay(Method::Cash, Some(0))]), Err(SaleError::BadAmount(_))));
    }

    #[test]
    fn card_payments_keep_only_last_four() {
        let mut c = pay(Method::Card, None);
        c.last4 = Some("4242".into());
        c.brand = Some("Visa".into());
        let (p, _) = settle(eur(), 100, 0, &[c.clone()]).unwrap();
        assert_eq!(p[0], Payment::Card { amount_minor: 100, brand: "visa".into(), last4: Some("4242".into()) });
        c.last4 = Some("4111111111111111".into());
        let err = settle(eur(), 100, 0, &[c]).unwrap_err();
        assert!(!err.to_string().contains("4111111111111111"));
    }

    #[test]
    fn card_numbers_are_detected_in_text() {
        assert!(contains_card_number("4111 1111 1111 1111"));
        assert!(contains_card_number("paid with 4111-1111-1111-1111 thanks"));
        assert!(!contains_card_number("4111 1111 1111 1112"));
        assert!(!contains_card_number("call 0123 456 789"));
        assert!(!contains_card_number("Espresso"));
        // A longer run of digits is something else, not a card number.
        assert!(!contains_card_number("41111111111111110000"));
    }

    #[test]
    fn product_codes_allow_barcodes_but_not_card_numbers() {
        // A valid EAN-13 (check digit 4) that also passes the Luhn check.
        assert!(contains_card_number("4006381333924"));
        assert!(!contains_card_number_in_code("4006381333924"));
        assert!(contains_card_number_in_code("4111111111111111"));
        assert!(contains_card_number_in_code("378282246310005"), "15-digit Amex");
    }

    #[test]
    fn card_numbers_are_masked_but_the_last_four() {
        assert_eq!(mask_card_numbers("card 4111 1111 1111 1111 ok"), "card **** **** **** 1111 ok");
        assert_eq!(mask_card_numbers("4111111111111111"), "************1111");
        assert_eq!(mask_card_numbers("no card 0123 here"), "no card 0123 here");
        let mut v =
            serde_json::json!({"note": "4111-1111-1111-1111", "at_ms": 4111111111111111_i64, "4111111111111111": [1]});
        mask_card_numbers_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"note": "****-****-****-1111", "at_ms": 4111111111111111_i64, "************1111": [1]})
        );
    }

    #[test]
    fn refunds_are_pro_rata_and_bounded() {
        let s = Settings::default();
        let p = price_sale(&s, &[line("A", 333, 2000, 3, 0)]).unwrap();
        let r = refund_lines(&p.lines, &BTreeMap::new(), &[("A".into(), 1)]).unwrap();
        assert_eq!(r[0].amount_minor, 333);
        let mut already = BTreeMap::new();
        already.insert("A".to_string(), 2);
        assert!(matches!(refund_lines(&p.lines, &already, &[("A".into(), 2)]), Err(SaleError::RefundTooMany { .. })));
        let all = refund_lines(&p.lines, &already, &[]).unwrap();
        assert_eq!(all[0].qty, 1);
        assert!(matches!(refund_lines(&p.lines, &already, &[("B".into(), 1)]), Err(SaleError::NotOnSale { .. })));
    }
}
