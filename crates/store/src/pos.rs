//! Point-of-sale actions on the store: catalogue, staff, customers, sales,
//! refunds, voids, stock and cash. Each is one local action (one change).

use crate::queries::parse_json;
use crate::{Store, StoreError};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tillsync_core::domain::{self, LineInput, PaymentInput, ProductSnapshot, SaleLine, Settings};
use tillsync_core::ids::derived_id;
use tillsync_core::merge::WriteId;
use tillsync_core::pin;
use tillsync_core::schema::tables;
use tillsync_core::stock;
use uuid::Uuid;

/// A sale as rung up.
#[derive(Clone, Debug, Default)]
pub struct SaleRequest {
    /// (SKU, quantity) in ringing order.
    pub items: Vec<(String, i64)>,
    pub payments: Vec<PaymentInput>,
    pub customer_id: Option<Uuid>,
    pub staff_id: Option<Uuid>,
    /// A discount on every line, in basis points.
    pub discount_bp: i64,
}

/// A cashier's change to one line of a sale, in ringing order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineAdjust {
    /// A discount on this line, in basis points, on top of the sale's.
    pub discount_bp: i64,
    /// A price that replaces the catalogue's for this sale only.
    pub unit_price_minor: Option<i64>,
}

/// Line discounts and price overrides, with who approved them.
#[derive(Clone, Debug, Default)]
pub struct SaleAdjustments {
    /// One per item of the request (missing ones change nothing).
    pub lines: Vec<LineAdjust>,
    /// The manager who approved the overrides, recorded in the audit log.
    pub approved_by: Option<Uuid>,
}

/// Two discounts applied one after the other, in basis points.
pub fn compound_bp(a: i64, b: i64) -> i64 {
    a + b - a * b / 10_000
}

/// What a committed sale returns.
#[derive(Clone, Debug, Serialize)]
pub struct SaleOutcome {
    pub sale_id: Uuid,
    pub receipt: String,
    pub total_minor: i64,
    pub currency: String,
    pub change_minor: i64,
    pub data: Value,
}

/// What a committed refund returns.
#[derive(Clone, Debug, Serialize)]
pub struct RefundOutcome {
    pub refund_id: Uuid,
    pub sale_id: Uuid,
    pub receipt: String,
    pub total_minor: i64,
    pub currency: String,
    pub lines: Value,
}

/// What a stock count returns.
#[derive(Clone, Debug, Serialize)]
pub struct CountOutcome {
    pub count_id: Uuid,
    pub sku: String,
    pub counted: i64,
    pub on_hand: i64,
}

/// Longest SKU, in bytes.
pub const SKU_LEN_MAX: usize = 64;
/// Longest name, in bytes.
pub const NAME_LEN_MAX: usize = 200;

fn check_sku(sku: &str) -> Result<(), StoreError> {
    if sku.is_empty()
        || sku.len() > SKU_LEN_MAX
        || !sku.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        return Err(StoreError::Invalid(format!(
            "'{sku}' is not a SKU: use 1 to {SKU_LEN_MAX} letters, digits, '-', '_', '.' or '/'"
        )));
    }
    Ok(())
}

fn check_text(what: &str, s: &str, max: usize) -> Result<(), StoreError> {
    if s.trim().is_empty() {
        return Err(StoreError::Invalid(format!("{what} must not be empty")));
    }
    if s.len() > max {
        return Err(StoreError::Invalid(format!("{what} is longer than {max} bytes")));
    }
    domain::check_free_text(s)?;
    Ok(())
}

/// Fields of a product to add or change.
#[derive(Clone, Debug, Default)]
pub struct ProductFields {
    pub name: Option<String>,
    pub price_minor: Option<i64>,
    pub tax_rate_bp: Option<i64>,
    pub category: Option<String>,
    pub barcode: Option<String>,
    pub active: Option<bool>,
}

impl ProductFields {
    fn to_fields(&self) -> Result<Vec<(&'static str, Value)>, StoreError> {
        let mut f = vec![];
        if let Some(n) = &self.name {
            check_text("a product name", n, NAME_LEN_MAX)?;
            f.push(("name", json!(n)));
        }
        if let Some(p) = self.price_minor {
            f.push(("price_minor", json!(p)));
        }
        if let Some(t) = self.tax_rate_bp {
            if !(0..=10_000).contains(&t) {
                return Err(StoreError::Invalid("a tax rate is between 0 and 100 %".into()));
            }
            f.push(("tax_rate_bp", json!(t)));
        }
        if let Some(c) = &self.category {
            check_text("a category", c, NAME_LEN_MAX)?;
            f.push(("category", json!(c)));
        }
        if let Some(b) = &self.barcode {
            if b.is_empty() || b.len() > 32 || !b.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return Err(StoreError::Invalid(format!("'{b}' is not a barcode: use up to 32 letters and digits")));
            }
            f.push(("barcode", json!(b)));
        }
        if let Some(a) = self.active {
            f.push(("active", json!(a)));
        }
        Ok(f)
    }
}

impl Store {
    /// The id of a product from its SKU.
    pub fn product_id(&self, sku: &str) -> Uuid {
        derived_id(self.identity.tenant_id, tables::PRODUCTS, sku)
    }

    /// The id of the tenant's settings row.
    pub fn settings_id(&self) -> Uuid {
        derived_id(self.identity.tenant_id, tables::SETTINGS, "tenant")
    }

    /// The tenant's settings.
    pub fn settings(&self) -> Result<Settings, StoreError> {
        Ok(match self.record(tables::SETTINGS, self.settings_id())? {
            Some((true, Value::Object(m))) => Settings::from_record(&m.into_iter().collect::<BTreeMap<_, _>>()),
            _ => Settings::default(),
        })
    }

    /// Sets tenant settings fields (currency, prices_include_tax, ...).
    pub fn set_settings(&mut self, now_ms: u64, fields: &[(&str, Value)]) -> Result<(), StoreError> {
        let id = self.settings_id();
        self.write(now_ms, |l| {
            let exists = matches!(l.store().record(tables::SETTINGS, id)?, Some((true, _)));
            if exists { l.set(tables::SETTINGS, id, fields) } else { l.create(tables::SETTINGS, id, fields) }
        })
    }

    /// Adds a product; refuses a SKU that already exists.
    pub fn add_product(&mut self, now_ms: u64, sku: &str, fields: &ProductFields) -> Result<Uuid, StoreError> {
        check_sku(sku)?;
        if fields.name.is_none() || fields.price_minor.is_none() {
            return Err(StoreError::Invalid("a new product needs a name and a price".into()));
        }
        let id = self.product_id(sku);
        let mut all = vec![("sku", json!(sku))];
        all.extend(fields.to_fields()?);
        if !all.iter().any(|(k, _)| *k == "active") {
            all.push(("active", json!(true)));
        }
        if !all.iter().any(|(k, _)| *k == "tax_rate_bp") {
            all.push(("tax_rate_bp", json!(0)));
        }
        self.write(now_ms, |l| {
            if matches!(l.store().record(tables::PRODUCTS, id)?, Some((true, _))) {
                return Err(StoreError::ProductExists(sku.to_string()));
            }
            l.create(tables::PRODUCTS, id, &all)
        })?;
        Ok(id)
    }

    /// Changes fields of an existing product.
    pub fn update_product(&mut self, now_ms: u64, sku: &str, fields: &ProductFields) -> Result<(), StoreError> {
        let id = self.product_id(sku);
        let f = fields.to_fields()?;
        if f.is_empty() {
            return Err(StoreError::Invalid(
                "nothing to change: give --name, --price, --tax, --category or --barcode".into(),
            ));
        }
        self.write(now_ms, |l| {
            if !matches!(l.store().record(tables::PRODUCTS, id)?, Some((true, _))) {
                return Err(StoreError::UnknownSku(sku.to_string()));
            }
            l.set(tables::PRODUCTS, id, &f)?;
            if let Some(p) = fields.price_minor {
                l.insert(tables::AUDIT, json!({"action": "price_change", "at_ms": l.now_ms() as i64, "target": sku, "detail": p.to_string()}))?;
            }
            Ok(())
        })
    }

    /// Deletes a product.
    pub fn delete_product(&mut self, now_ms: u64, sku: &str) -> Result<(), StoreError> {
        let id = self.product_id(sku);
        self.write(now_ms, |l| {
            if !matches!(l.store().record(tables::PRODUCTS, id)?, Some((true, _))) {
                return Err(StoreError::UnknownSku(sku.to_string()));
            }
            l.delete(tables::PRODUCTS, id)
        })
    }

    /// Adds a named tax rate (code such as "std").
    pub fn add_tax_rate(&mut self, now_ms: u64, code: &str, name: &str, rate_bp: i64) -> Result<Uuid, StoreError> {
        let id = derived_id(self.identity.tenant_id, tables::TAX_RATES, code);
        self.write(now_ms, |l| {
            l.create(
                tables::TAX_RATES,
                id,
                &[("code", json!(code)), ("name", json!(name)), ("rate_bp", json!(rate_bp))],
            )
        })?;
        Ok(id)
    }

    /// Adds a category.
    pub fn add_category(&mut self, now_ms: u64, name: &str, position: i64) -> Result<Uuid, StoreError> {
        check_text("a category", name, NAME_LEN_MAX)?;
        let id = derived_id(self.identity.tenant_id, tables::CATEGORIES, name);
        self.write(now_ms, |l| {
            l.create(tables::CATEGORIES, id, &[("name", json!(name)), ("position", json!(position))])
        })?;
        Ok(id)
    }

    /// Adds a customer.
    pub fn add_customer(
        &mut self,
        now_ms: u64,
        name: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Uuid, StoreError> {
        check_text("a customer name", name, NAME_LEN_MAX)?;
        let mut fields = vec![("name", json!(name))];
        if let Some(e) = email {
            // Checked first: the message below echoes the address.
            domain::check_free_text(e)?;
            if !e.contains('@') || e.len() > NAME_LEN_MAX {
                return Err(StoreError::Invalid(format!("'{e}' is not an email address")));
            }
            fields.push(("email", json!(e)));
        }
        if let Some(p) = phone {
            check_text("a phone number", p, 40)?;
            fields.push(("phone", json!(p)));
        }
        self.write(now_ms, |l| {
            let id = l.new_id();
            l.create(tables::CUSTOMERS, id, &fields)?;
            Ok(id)
        })
    }

    /// Adds a staff member; the PIN is stored only as a slow hash.
    pub fn add_staff(&mut self, now_ms: u64, name: &str, role: &str, pin_code: &str) -> Result<Uuid, StoreError> {
        check_text("a staff name", name, NAME_LEN_MAX)?;
        if role != "cashier" && role != "manager" {
            return Err(StoreError::Invalid(format!("'{role}' is not a role: use cashier or manager")));
        }
        pin::check_pin(pin_code)?;
        self.write(now_ms, |l| {
            let salt = l.random_bytes::<16>();
            let hash = pin::hash_pin(pin_code, salt)?;
            let id = l.new_id();
            l.create(
                tables::STAFF,
                id,
                &[("name", json!(name)), ("role", json!(role)), ("pin_hash", json!(hash)), ("active", json!(true))],
            )?;
            Ok(id)
        })
    }

    /// Checks a manager's PIN; returns the manager's id.
    pub fn approve(&self, manager: &str, pin_code: &str) -> Result<Uuid, StoreError> {
        let id = self.find_staff(manager)?;
        let (live, data) = self
            .record(tables::STAFF, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no staff member '{manager}': see `till staff list`")))?;
        if !live || data["role"].as_str() != Some("manager") {
            return Err(StoreError::Invalid(format!("{manager} is not a manager: a manager must approve this")));
        }
        if !pin::verify_pin(pin_code, data["pin_hash"].as_str().unwrap_or("")) {
            return Err(StoreError::Invalid(format!("wrong PIN for {manager}: check the PIN and try again")));
        }
        Ok(id)
    }

    /// Finds a staff member by id or by (case-insensitive) name.
    pub fn find_staff(&self, who: &str) -> Result<Uuid, StoreError> {
        if let Ok(id) = Uuid::parse_str(who)
            && matches!(self.record(tables::STAFF, id)?, Some((true, _)))
        {
            return Ok(id);
        }
        for (id, data) in self.records_of(tables::STAFF)? {
            if data["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(who)) {
                return Ok(id);
            }
        }
        Err(StoreError::NotFound(format!("no staff member '{who}': see `till staff list`")))
    }

    /// Looks up a live, active product and snapshots it for a sale line.
    fn snapshot(&self, sku: &str) -> Result<ProductSnapshot, StoreError> {
        let data = match self.record(tables::PRODUCTS, self.product_id(sku))? {
            Some((true, d)) if d["active"].as_bool() != Some(false) => d,
            _ => return Err(StoreError::UnknownSku(sku.to_string())),
        };
        Ok(ProductSnapshot {
            sku: sku.to_string(),
            name: data["name"].as_str().unwrap_or(sku).to_string(),
            price_minor: data["price_minor"].as_i64().unwrap_or(0),
            tax_rate_bp: data["tax_rate_bp"].as_i64().unwrap_or(0),
        })
    }

    /// Records a sale: the sale row (lines, taxes, payments), its stock
    /// movements and loyalty points, as one change in the `sales` lane,
    /// committed durably before this returns.
    pub fn sell(&mut self, now_ms: u64, req: &SaleRequest) -> Result<SaleOutcome, StoreError> {
        self.sell_adjusted(now_ms, req, &SaleAdjustments::default())
    }

    /// [`Store::sell`] with line discounts and price overrides; each price
    /// override is recorded in the audit log in the same change.
    pub fn sell_adjusted(
        &mut self,
        now_ms: u64,
        req: &SaleRequest,
        adjust: &SaleAdjustments,
    ) -> Result<SaleOutcome, StoreError> {
        if req.items.len() > domain::SALE_LINES_MAX {
            return Err(StoreError::Invalid(format!("a sale has at most {} lines", domain::SALE_LINES_MAX)));
        }
        let settings = self.settings()?;
        let mut lines = Vec::with_capacity(req.items.len());
        let mut overrides = Vec::new();
        for (i, (sku, qty)) in req.items.iter().enumerate() {
            if !(1..=domain::LINE_QTY_MAX).contains(qty) {
                return Err(domain::SaleError::BadQuantity { sku: sku.clone(), qty: *qty }.into());
            }
            let adj = adjust.lines.get(i).cloned().unwrap_or_default();
            for bp in [req.discount_bp, adj.discount_bp] {
                if !(0..=10_000).contains(&bp) {
                    return Err(domain::SaleError::BadDiscount(tillsync_core::money::format_rate_bp(bp)).into());
                }
            }
            let mut product = self.snapshot(sku)?;
            if let Some(p) = adj.unit_price_minor {
                if !(0..=tillsync_core::money::MINOR_MAX).contains(&p) {
                    return Err(StoreError::Invalid(format!("a price for {sku} must be zero or more")));
                }
                if p != product.price_minor {
                    overrides.push(format!("{sku}: {} -> {p}", product.price_minor));
                    product.price_minor = p;
                }
            }
            lines.push(LineInput { product, qty: *qty, discount_bp: compound_bp(req.discount_bp, adj.discount_bp) });
        }
        let priced = domain::price_sale(&settings, &lines)?;
        let (payments, rounding) =
            domain::settle(settings.currency, priced.total_minor, settings.cash_rounding_minor, &req.payments)?;
        self.check_offline_card_limits(&settings, &payments)?;
        if let Some(c) = req.customer_id
            && !matches!(self.record(tables::CUSTOMERS, c)?, Some((true, _)))
        {
            return Err(StoreError::NotFound(format!("no customer {c}: see `till customer list`")));
        }
        if let Some(s) = req.staff_id
            && !matches!(self.record(tables::STAFF, s)?, Some((true, _)))
        {
            return Err(StoreError::NotFound(format!("no staff member {s}: see `till staff list`")));
        }
        let change_minor: i64 = payments
            .iter()
            .map(|p| match p {
                domain::Payment::Cash { change_minor, .. } => *change_minor,
                _ => 0,
            })
            .sum();
        let currency = settings.currency.code().to_string();
        self.write(now_ms, |l| {
            let counter: i64 = l.store().meta_get("receipt_counter")?.and_then(|c| c.parse().ok()).unwrap_or(0) + 1;
            l.store().meta_set("receipt_counter", &counter.to_string())?;
            let receipt = format!("{}-{counter:06}", l.store().identity.receipt_prefix);
            let sale_id = l.new_id();
            let mut data = json!({
                "receipt": receipt,
                "device_id": l.store().identity.device_id,
                "currency": currency,
                "lines": priced.lines,
                "payments": payments,
                "taxes": priced.taxes,
                "subtotal_minor": priced.subtotal_minor,
                "discount_minor": priced.discount_minor,
                "tax_minor": priced.tax_minor,
                "total_minor": priced.total_minor,
                "rounding_minor": rounding,
                "at_ms": l.now_ms() as i64,
            });
            if let Some(s) = req.staff_id {
                data["staff_id"] = json!(s);
            }
            if let Some(c) = req.customer_id {
                data["customer_id"] = json!(c);
            }
            l.insert_with_id(tables::SALES, sale_id, data.clone())?;
            for o in &overrides {
                let mut audit =
                    json!({"action": "price_override", "at_ms": l.now_ms() as i64, "target": receipt, "detail": o});
                if let Some(m) = adjust.approved_by {
                    audit["staff_id"] = json!(m);
                }
                l.insert(tables::AUDIT, audit)?;
            }
            for line in &priced.lines {
                l.insert(
                    tables::STOCK_MOVEMENTS,
                    json!({"sku": line.sku, "qty": -line.qty, "reason": "sale", "ref_id": sale_id}),
                )?;
            }
            if let Some(c) = req.customer_id {
                // One point per whole currency unit spent.
                let points = priced.total_minor / 10i64.pow(settings.currency.exponent());
                if points > 0 {
                    l.insert(tables::LOYALTY, json!({"customer_id": c, "points": points, "sale_id": sale_id}))?;
                }
            }
            Ok(SaleOutcome {
                sale_id,
                receipt,
                total_minor: priced.total_minor,
                currency: currency.clone(),
                change_minor,
                data,
            })
        })
    }

    /// Whether this till is cut off from its hub (as the sync engine last saw it).
    pub fn hub_unreachable(&self) -> Result<bool, StoreError> {
        Ok(self.meta_get("hub_url")?.is_some() && self.meta_get("net_reachable")?.as_deref() == Some("false"))
    }

    /// Card payments of sales not yet acknowledged by the hub, in minor units.
    pub fn offline_card_total(&self) -> Result<i64, StoreError> {
        let mut total = 0;
        for p in self.pending_changes(tillsync_core::Lane::Sales, usize::MAX >> 1)? {
            for op in &p.change.ops {
                if let tillsync_core::Op::Insert(r) = op
                    && r.table == tables::SALES
                {
                    for pay in r.data["payments"].as_array().into_iter().flatten() {
                        if pay["method"] == "card" {
                            total += pay["amount_minor"].as_i64().unwrap_or(0);
                        }
                    }
                }
            }
        }
        Ok(total)
    }

    /// Offline limits, as real POS systems have them: while the hub is
    /// unreachable, a card payment over the limit and a total of offline card
    /// payments over the limit are refused. Cash always works.
    fn check_offline_card_limits(&self, settings: &Settings, payments: &[domain::Payment]) -> Result<(), StoreError> {
        let card: i64 = payments.iter().filter(|p| p.method() == domain::Method::Card).map(|p| p.amount_minor()).sum();
        if card == 0 || !self.hub_unreachable()? {
            return Ok(());
        }
        let cur = settings.currency;
        if settings.offline_card_max_minor > 0
            && payments
                .iter()
                .any(|p| p.method() == domain::Method::Card && p.amount_minor() > settings.offline_card_max_minor)
        {
            return Err(domain::SaleError::OfflineCardOverLimit {
                limit: cur.display(settings.offline_card_max_minor),
            }
            .into());
        }
        if settings.offline_card_total_max_minor > 0 {
            let total = self.offline_card_total()? + card;
            if total > settings.offline_card_total_max_minor {
                return Err(domain::SaleError::OfflineCardTotalOverLimit {
                    total: cur.display(total),
                    limit: cur.display(settings.offline_card_total_max_minor),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Finds a sale by receipt number.
    pub fn sale_by_receipt(&self, receipt: &str) -> Result<(Uuid, Value), StoreError> {
        let row: Option<(String, String)> = rusqlite::OptionalExtension::optional(
            self.conn
                .prepare_cached("SELECT id, data FROM ledger WHERE tbl = 'sales' AND key = ?1")?
                .query_row([receipt], |r| Ok((r.get(0)?, r.get(1)?))),
        )?;
        let (id, data) = row
            .ok_or_else(|| StoreError::NotFound(format!("no sale with receipt '{receipt}': see `till sales list`")))?;
        Ok((crate::apply::parse_uuid(&id)?, parse_json(&data)?))
    }

    /// Quantities already refunded (or voided) per SKU of a sale.
    pub fn refunded_qty(&self, sale_id: Uuid) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut out = BTreeMap::new();
        for (_, data) in self.ledger_by_key(tables::REFUNDS, &sale_id.to_string())? {
            for l in data["lines"].as_array().into_iter().flatten() {
                *out.entry(l["sku"].as_str().unwrap_or("").to_string()).or_default() += l["qty"].as_i64().unwrap_or(0);
            }
        }
        Ok(out)
    }

    /// Refunds some or all of a sale (a manager approved it). Stock comes
    /// back. Refunds go back in cash unless the sale was paid by card only.
    pub fn refund(
        &mut self,
        now_ms: u64,
        receipt: &str,
        items: &[(String, i64)],
        approved_by: Uuid,
        reason: Option<&str>,
    ) -> Result<RefundOutcome, StoreError> {
        if let Some(r) = reason {
            check_text("a reason", r, NAME_LEN_MAX)?;
        }
        let (sale_id, sale) = self.sale_by_receipt(receipt)?;
        if !self.ledger_by_key(tables::VOIDS, &sale_id.to_string())?.is_empty() {
            return Err(StoreError::Invalid(format!("sale {receipt} was voided; nothing is left to refund")));
        }
        let lines: Vec<SaleLine> = serde_json::from_value(sale["lines"].clone())?;
        let already = self.refunded_qty(sale_id)?;
        let refund_lines = domain::refund_lines(&lines, &already, items)?;
        if refund_lines.is_empty() {
            return Err(StoreError::Invalid(format!("everything on {receipt} was already refunded")));
        }
        let total: i64 = refund_lines.iter().map(|l| l.amount_minor).sum();
        let tax: i64 = refund_lines.iter().map(|l| l.tax_minor).sum();
        let card_only = sale["payments"].as_array().is_some_and(|ps| ps.iter().all(|p| p["method"] == "card"));
        let method = if card_only { "card" } else { "cash" };
        let currency = sale["currency"].as_str().unwrap_or("EUR").to_string();
        self.write(now_ms, |l| {
            let mut data = json!({
                "sale_id": sale_id, "receipt": receipt, "lines": refund_lines, "total_minor": total,
                "tax_minor": tax, "method": method, "at_ms": l.now_ms() as i64, "approved_by": approved_by,
            });
            if let Some(r) = reason {
                data["reason"] = json!(r);
            }
            let refund_id = l.insert(tables::REFUNDS, data)?;
            for rl in &refund_lines {
                l.insert(
                    tables::STOCK_MOVEMENTS,
                    json!({"sku": rl.sku, "qty": rl.qty, "reason": "refund", "ref_id": refund_id}),
                )?;
            }
            l.insert(
                tables::AUDIT,
                json!({"action": "refund", "at_ms": l.now_ms() as i64, "target": receipt, "staff_id": approved_by}),
            )?;
            Ok(RefundOutcome {
                refund_id,
                sale_id,
                receipt: receipt.to_string(),
                total_minor: total,
                currency,
                lines: json!(refund_lines),
            })
        })
    }

    /// Voids a whole sale (a manager approved it); its stock comes back.
    pub fn void(
        &mut self,
        now_ms: u64,
        receipt: &str,
        approved_by: Uuid,
        reason: Option<&str>,
    ) -> Result<Uuid, StoreError> {
        let (sale_id, sale) = self.sale_by_receipt(receipt)?;
        if !self.ledger_by_key(tables::VOIDS, &sale_id.to_string())?.is_empty() {
            return Err(StoreError::Invalid(format!("sale {receipt} is already voided")));
        }
        let already = self.refunded_qty(sale_id)?;
        if !already.is_empty() {
            return Err(StoreError::Invalid(format!("sale {receipt} has refunds: refund the rest instead of voiding")));
        }
        let lines: Vec<SaleLine> = serde_json::from_value(sale["lines"].clone())?;
        self.write(now_ms, |l| {
            let mut data = json!({"sale_id": sale_id, "at_ms": l.now_ms() as i64, "approved_by": approved_by});
            if let Some(r) = reason {
                data["reason"] = json!(r);
            }
            let void_id = l.insert(tables::VOIDS, data)?;
            for line in &lines {
                l.insert(
                    tables::STOCK_MOVEMENTS,
                    json!({"sku": line.sku, "qty": line.qty, "reason": "void", "ref_id": void_id}),
                )?;
            }
            l.insert(
                tables::AUDIT,
                json!({"action": "void", "at_ms": l.now_ms() as i64, "target": receipt, "staff_id": approved_by}),
            )?;
            Ok(void_id)
        })
    }

    /// Receives stock (a positive movement).
    pub fn receive_stock(&mut self, now_ms: u64, sku: &str, qty: i64) -> Result<Uuid, StoreError> {
        if !(1..=domain::LINE_QTY_MAX).contains(&qty) {
            return Err(domain::SaleError::BadQuantity { sku: sku.into(), qty }.into());
        }
        self.snapshot(sku)?;
        self.write(now_ms, |l| l.insert(tables::STOCK_MOVEMENTS, json!({"sku": sku, "qty": qty, "reason": "receive"})))
    }

    /// Records a stock count: the quantity counted and which movements the
    /// count had seen.
    pub fn count_stock(&mut self, now_ms: u64, sku: &str, qty: i64) -> Result<CountOutcome, StoreError> {
        if !(0..=domain::LINE_QTY_MAX * 100).contains(&qty) {
            return Err(StoreError::Invalid(format!("a count of {qty} is not allowed: count zero or more")));
        }
        self.snapshot(sku)?;
        let (counts, moves) = self.stock_inputs(sku)?;
        let base = stock::newest_count(&counts);
        let seen = stock::unseen_since(base, &counts, &moves);
        let base_id = base.map(|b| b.id);
        let count_id = self.write(now_ms, |l| {
            let mut data = json!({"sku": sku, "qty": qty, "seen": seen});
            if let Some(b) = base_id {
                data["base_count"] = json!(b);
            }
            l.insert(tables::STOCK_COUNTS, data)
        })?;
        Ok(CountOutcome { count_id, sku: sku.into(), counted: qty, on_hand: self.on_hand(sku)? })
    }

    /// Records a cash movement: `float`, `pay_in` or `pay_out`.
    pub fn cash_movement(
        &mut self,
        now_ms: u64,
        kind: &str,
        amount_minor: i64,
        reason: Option<&str>,
    ) -> Result<Uuid, StoreError> {
        if !["float", "pay_in", "pay_out"].contains(&kind) {
            return Err(StoreError::Invalid(format!("'{kind}' is not a cash movement: use float, pay_in or pay_out")));
        }
        if amount_minor <= 0 {
            return Err(StoreError::Invalid("a cash movement needs an amount above zero".into()));
        }
        if let Some(r) = reason {
            check_text("a reason", r, NAME_LEN_MAX)?;
        }
        self.write(now_ms, |l| {
            let mut data = json!({"kind": kind, "amount_minor": amount_minor, "at_ms": l.now_ms() as i64});
            if let Some(r) = reason {
                data["reason"] = json!(r);
            }
            l.insert(tables::CASH_MOVEMENTS, data)
        })
    }

    /// Sets a conflict policy for a table or a field (`products.price_minor`).
    pub fn set_policy(&mut self, now_ms: u64, target: &str, mode: tillsync_core::Policy) -> Result<(), StoreError> {
        let table = target.split('.').next().unwrap_or("");
        let decl = self.schema.table(table)?;
        if let Some(f) = target.split_once('.').map(|(_, f)| f)
            && decl.field_decl(f).is_none()
            && f != tillsync_core::merge::EXISTS_FIELD
        {
            return Err(StoreError::Invalid(format!("table '{table}' has no field '{f}'")));
        }
        let id = derived_id(self.identity.tenant_id, tables::POLICIES, target);
        self.write(now_ms, |l| {
            l.create(tables::POLICIES, id, &[("target", json!(target)), ("mode", json!(mode.as_str()))])
        })
    }

    /// Resolves a conflict: `keep` is "local" (this till's head, or the
    /// shown value if this till wrote none), "remote" (the newest head from
    /// another device) or a value.
    pub fn resolve_conflict(&mut self, now_ms: u64, conflict_id: &str, keep: &str) -> Result<Value, StoreError> {
        let c = self.conflict(conflict_id)?;
        if c.status == tillsync_core::ConflictStatus::Resolved {
            return Err(StoreError::Invalid(format!("conflict {conflict_id} is already resolved")));
        }
        let me = self.identity.device_id;
        let value = match keep {
            "local" => c
                .heads
                .iter()
                .filter(|h| h.device == me)
                .max_by_key(|h| h.write_id)
                .or_else(|| c.heads.iter().find(|h| Some(h.write_id) == c.chosen)),
            "remote" => c.heads.iter().filter(|h| h.device != me).max_by_key(|h| h.write_id),
            _ => None,
        }
        .map(|h| h.value.clone());
        let value = match (keep, value) {
            ("local" | "remote", Some(v)) => v,
            ("local" | "remote", None) => return Err(StoreError::Invalid(format!("no {keep} value in this conflict"))),
            (other, _) => {
                let raw = other
                    .strip_prefix("value=")
                    .ok_or_else(|| StoreError::Invalid("--keep takes local, remote or value=V".into()))?;
                self.parse_field_value(&c.table, &c.field, raw)?
            }
        };
        let heads: Vec<WriteId> = c.heads.iter().map(|h| h.write_id).collect();
        let v = value.clone();
        self.write(now_ms, |l| l.resolve(&c.table, c.row, &c.field, heads, v))?;
        Ok(value)
    }

    /// Parses a typed-in value for a field: money fields take decimals.
    fn parse_field_value(&self, table: &str, field: &str, raw: &str) -> Result<Value, StoreError> {
        let decl = self.schema.table(table)?;
        if field == tillsync_core::merge::EXISTS_FIELD {
            return match raw {
                "true" | "keep" => Ok(json!(true)),
                "false" | "delete" => Ok(json!(false)),
                _ => Err(StoreError::Invalid("the row's existence is true or false".into())),
            };
        }
        let f = decl.field_decl(field).ok_or_else(|| StoreError::Invalid(format!("no field {field}")))?;
        use tillsync_core::schema::FieldType::*;
        let v = match f.ty {
            Int if field.ends_with("_minor") => json!(self.settings()?.currency.parse_minor(raw)?),
            Int => {
                json!(raw.parse::<i64>().map_err(|_| StoreError::Invalid(format!("'{raw}' is not a whole number")))?)
            }
            Bool => {
                json!(raw.parse::<bool>().map_err(|_| StoreError::Invalid(format!("'{raw}' is not true or false")))?)
            }
            Text | Id | Json => json!(raw),
        };
        decl.check_value(field, &v)?;
        Ok(v)
    }
}
