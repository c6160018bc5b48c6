//! Declarations of the synced tables. Adding a synced table is adding a
//! [`TableDecl`]: the merge, the store and the sync code are generic over it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Record tables are merged per field; ledger tables are insert-only sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Record,
    Ledger,
}

/// Outbox lanes, in priority order: a lane earlier in this list is pushed
/// first and never waits for a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    Sales,
    Stock,
    Catalog,
    Telemetry,
}

impl Lane {
    /// All lanes in priority order.
    pub const ALL: [Lane; 4] = [Lane::Sales, Lane::Stock, Lane::Catalog, Lane::Telemetry];

    /// The lane's name on the wire and in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Sales => "sales",
            Lane::Stock => "stock",
            Lane::Catalog => "catalog",
            Lane::Telemetry => "telemetry",
        }
    }

    /// Parses a lane name.
    pub fn parse(s: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who sees a table's rows: the whole tenant, or only the devices of the
/// store the row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Tenant,
    Store,
}

/// The type of a declared field. Values are JSON; the type is checked on
/// every write, local or remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Int,
    Bool,
    /// A UUID as a string.
    Id,
    /// Any JSON value (nested lines, payments...).
    Json,
}

/// One declared field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDecl {
    pub name: String,
    pub ty: FieldType,
    /// Whether a ledger row must carry it; records may omit any field.
    pub required: bool,
    /// Longest text accepted, in bytes (texts only).
    pub text_len_max: usize,
    /// How texts (and strings inside JSON values) are screened for card
    /// numbers.
    pub card_check: CardCheck,
}

/// Card numbers are never stored (PCI DSS 3.3.1, 3.4.1): every text a
/// write or a ledger row carries is screened, locally and on the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardCheck {
    /// Free text: a Luhn-valid run of 13 to 19 digits is refused.
    FreeText,
    /// A product code (SKU, barcode): 13- and 14-digit barcodes pass, a
    /// Luhn-valid run of 15 to 19 digits is refused.
    Code,
}

/// One declared synced table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDecl {
    pub name: String,
    pub kind: Kind,
    pub lane: Lane,
    pub scope: Scope,
    pub fields: Vec<FieldDecl>,
    /// For ledgers: the field whose value is indexed as the row's key (the SKU
    /// of a stock movement, the sale of a refund), so derived values can be
    /// computed without scanning the table.
    pub key_field: Option<String>,
}

/// Why a write or a row does not fit the declarations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("unknown table '{0}'")]
    UnknownTable(String),
    #[error("table '{table}' has no field '{field}'")]
    UnknownField { table: String, field: String },
    #[error("field '{table}.{field}' expects {expected}, got {got}")]
    WrongType { table: String, field: String, expected: &'static str, got: String },
    #[error("field '{table}.{field}' is required")]
    Missing { table: String, field: String },
    #[error("field '{table}.{field}' is longer than {max} bytes")]
    TooLong { table: String, field: String, max: usize },
    #[error("table '{0}' is a {1:?} table, not usable this way")]
    WrongKind(String, Kind),
    #[error("a row of '{0}' must be a JSON object")]
    NotObject(String),
    #[error(
        "field '{table}.{field}' looks like it holds a full card number; card numbers are never stored: keep only the brand and the last four digits"
    )]
    CardNumber { table: String, field: String },
    #[error("clock reading {0} is out of range")]
    ClockOutOfRange(u64),
}

/// Builder-style constructors keep declarations short.
impl TableDecl {
    /// A record table.
    pub fn record(name: &str, lane: Lane) -> Self {
        Self { name: name.into(), kind: Kind::Record, lane, scope: Scope::Tenant, fields: vec![], key_field: None }
    }

    /// A ledger table.
    pub fn ledger(name: &str, lane: Lane, scope: Scope) -> Self {
        Self { name: name.into(), kind: Kind::Ledger, lane, scope, fields: vec![], key_field: None }
    }

    /// Adds an optional field.
    pub fn field(mut self, name: &str, ty: FieldType) -> Self {
        self.fields.push(FieldDecl {
            name: name.into(),
            ty,
            required: false,
            text_len_max: TEXT_LEN_MAX,
            card_check: CardCheck::FreeText,
        });
        self
    }

    /// Adds a required field.
    pub fn required(mut self, name: &str, ty: FieldType) -> Self {
        self.fields.push(FieldDecl {
            name: name.into(),
            ty,
            required: true,
            text_len_max: TEXT_LEN_MAX,
            card_check: CardCheck::FreeText,
        });
        self
    }

    /// Marks the last added field as a product code (see [`CardCheck::Code`]).
    pub fn code(mut self) -> Self {
        if let Some(f) = self.fields.last_mut() {
            f.card_check = CardCheck::Code;
        }
        self
    }

    /// Names the indexed key field of a ledger.
    pub fn key(mut self, name: &str) -> Self {
        self.key_field = Some(name.into());
        self
    }

    /// Looks a field up.
    pub fn field_decl(&self, name: &str) -> Option<&FieldDecl> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Checks one field value of this table.
    pub fn check_value(&self, field: &str, value: &Value) -> Result<(), SchemaError> {
        if field == crate::merge::EXISTS_FIELD {
            return match value {
                Value::Bool(_) => Ok(()),
                other => Err(self.wrong(field, "a boolean", other)),
            };
        }
        let decl = self
            .field_decl(field)
            .ok_or_else(|| SchemaError::UnknownField { table: self.name.clone(), field: field.into() })?;
        if value.is_null() {
            return Ok(());
        }
        match decl.ty {
            FieldType::Text => match value {
                Value::String(s) if s.len() > decl.text_len_max => {
                    Err(SchemaError::TooLong { table: self.name.clone(), field: field.into(), max: decl.text_len_max })
                }
                Value::String(s) => self.check_card(field, decl.card_check, s),
                other => Err(self.wrong(field, "a string", other)),
            },
            FieldType::Int => match value {
                Value::Number(n) if n.is_i64() => Ok(()),
                other => Err(self.wrong(field, "an integer", other)),
            },
            FieldType::Bool => match value {
                Value::Bool(_) => Ok(()),
                other => Err(self.wrong(field, "a boolean", other)),
            },
            FieldType::Id => match value {
                Value::String(s) if uuid::Uuid::parse_str(s).is_ok() => Ok(()),
                other => Err(self.wrong(field, "an id", other)),
            },
            FieldType::Json => self.check_json_cards(field, value, 0),
        }
    }

    fn check_card(&self, field: &str, check: CardCheck, text: &str) -> Result<(), SchemaError> {
        // Row ids inside JSON (the movements a count saw) are UUIDs, whose
        // dashed digit groups can pass the Luhn check; no card number is a
        // UUID.
        if uuid::Uuid::try_parse(text).is_ok() {
            return Ok(());
        }
        let found = match check {
            CardCheck::FreeText => crate::domain::contains_card_number(text),
            CardCheck::Code => crate::domain::contains_card_number_in_code(text),
        };
        if found { Err(SchemaError::CardNumber { table: self.name.clone(), field: field.into() }) } else { Ok(()) }
    }

    /// Screens every string inside a JSON value (sale lines, payments).
    /// Strings under a `sku` or `barcode` key are codes; numbers are not
    /// screened (amounts and millisecond times are digits too). The depth
    /// is bounded: these values are a few levels deep.
    fn check_json_cards(&self, field: &str, value: &Value, depth: usize) -> Result<(), SchemaError> {
        const DEPTH_MAX: usize = 16;
        if depth > DEPTH_MAX {
            return Err(self.wrong(field, "JSON nested at most 16 levels deep", value));
        }
        match value {
            Value::String(s) => self.check_card(field, CardCheck::FreeText, s),
            Value::Array(items) => items.iter().try_for_each(|v| self.check_json_cards(field, v, depth + 1)),
            Value::Object(map) => map.iter().try_for_each(|(k, v)| match (k.as_str(), v) {
                ("sku" | "barcode", Value::String(s)) => self.check_card(field, CardCheck::Code, s),
                _ => {
                    self.check_card(field, CardCheck::FreeText, k)?;
                    self.check_json_cards(field, v, depth + 1)
                }
            }),
            _ => Ok(()),
        }
    }

    /// Checks a whole ledger row: an object, only declared fields, required
    /// fields present, every value of its type.
    pub fn check_row(&self, data: &Value) -> Result<(), SchemaError> {
        let obj = data.as_object().ok_or_else(|| SchemaError::NotObject(self.name.clone()))?;
        for (k, v) in obj {
            self.check_value(k, v)?;
        }
        for f in &self.fields {
            if f.required && obj.get(&f.name).is_none_or(Value::is_null) {
                return Err(SchemaError::Missing { table: self.name.clone(), field: f.name.clone() });
            }
        }
        Ok(())
    }

    fn wrong(&self, field: &str, expected: &'static str, got: &Value) -> SchemaError {
        // The refused value is echoed shortened and with any card number
        // masked: error messages end up in logs and quarantine lists.
        let mut got: String = got.to_string().chars().take(40).collect();
        got = crate::domain::mask_card_numbers(&got);
        SchemaError::WrongType { table: self.name.clone(), field: field.into(), expected, got }
    }
}

/// Longest text field accepted by default, in bytes.
pub const TEXT_LEN_MAX: usize = 1_000;

/// The set of declared tables.
#[derive(Clone, Debug)]
pub struct Schema {
    tables: Vec<TableDecl>,
}

impl Schema {
    /// The tables Tillsync ships with.
    pub fn standard() -> Self {
        use FieldType::*;
        let tables = vec![
            TableDecl::record(tables::PRODUCTS, Lane::Catalog)
                .field("sku", Text)
                .code()
                .field("name", Text)
                .field("price_minor", Int)
                .field("tax_rate_bp", Int)
                .field("category", Text)
                .field("barcode", Text)
                .code()
                .field("active", Bool),
            TableDecl::record(tables::CATEGORIES, Lane::Catalog).field("name", Text).field("position", Int),
            TableDecl::record(tables::TAX_RATES, Lane::Catalog)
                .field("code", Text)
                .field("name", Text)
                .field("rate_bp", Int),
            TableDecl::record(tables::CUSTOMERS, Lane::Catalog)
                .field("name", Text)
                .field("email", Text)
                .field("phone", Text)
                .field("note", Text),
            TableDecl::record(tables::STAFF, Lane::Catalog)
                .field("name", Text)
                .field("role", Text)
                .field("pin_hash", Text)
                .field("active", Bool),
            TableDecl::record(tables::SETTINGS, Lane::Catalog)
                .field("currency", Text)
                .field("prices_include_tax", Bool)
                .field("cash_rounding_minor", Int)
                .field("time_zone", Text)
                .field("receipt_header", Text)
                .field("offline_card_max_minor", Int)
                .field("offline_card_total_max_minor", Int)
                .field("offline_warn_after_s", Int),
            TableDecl::record(tables::POLICIES, Lane::Catalog).field("target", Text).field("mode", Text),
            TableDecl::ledger(tables::SALES, Lane::Sales, Scope::Store)
                .required("receipt", Text)
                .required("device_id", Id)
                .required("currency", Text)
                .required("lines", Json)
                .required("payments", Json)
                .required("taxes", Json)
                .required("subtotal_minor", Int)
                .required("discount_minor", Int)
                .required("tax_minor", Int)
                .required("total_minor", Int)
                .required("rounding_minor", Int)
                .required("at_ms", Int)
                .field("staff_id", Id)
                .field("customer_id", Id)
                .key("receipt"),
            TableDecl::ledger(tables::REFUNDS, Lane::Sales, Scope::Store)
                .required("sale_id", Id)
                .required("receipt", Text)
                .required("lines", Json)
                .required("total_minor", Int)
                .required("tax_minor", Int)
                .required("method", Text)
                .required("at_ms", Int)
                .field("approved_by", Id)
                .field("staff_id", Id)
                .field("reason", Text)
                .key("sale_id"),
            TableDecl::ledger(tables::VOIDS, Lane::Sales, Scope::Store)
                .required("sale_id", Id)
                .required("at_ms", Int)
                .field("approved_by", Id)
                .field("reason", Text)
                .key("sale_id"),
            TableDecl::ledger(tables::STOCK_MOVEMENTS, Lane::Stock, Scope::Store)
                .required("sku", Text)
                .code()
                .required("qty", Int)
                .required("reason", Text)
                .field("ref_id", Id)
                .key("sku"),
            TableDecl::ledger(tables::STOCK_COUNTS, Lane::Stock, Scope::Store)
                .required("sku", Text)
                .code()
                .required("qty", Int)
                .required("seen", Json)
                .field("base_count", Id)
                .key("sku"),
            TableDecl::ledger(tables::CASH_MOVEMENTS, Lane::Sales, Scope::Store)
                .required("kind", Text)
                .required("amount_minor", Int)
                .required("at_ms", Int)
                .field("reason", Text)
                .field("staff_id", Id),
            TableDecl::ledger(tables::LOYALTY, Lane::Sales, Scope::Store)
                .required("customer_id", Id)
                .required("points", Int)
                .field("sale_id", Id)
                .key("customer_id"),
            TableDecl::ledger(tables::AUDIT, Lane::Telemetry, Scope::Store)
                .required("action", Text)
                .required("at_ms", Int)
                .field("target", Text)
                .code()
                .field("detail", Text)
                .field("staff_id", Id),
        ];
        Self { tables }
    }

    /// Adds a table declaration (a new synced table needs nothing more).
    pub fn with_table(mut self, decl: TableDecl) -> Self {
        self.tables.retain(|t| t.name != decl.name);
        self.tables.push(decl);
        self
    }

    /// Looks a table up.
    pub fn table(&self, name: &str) -> Result<&TableDecl, SchemaError> {
        self.tables.iter().find(|t| t.name == name).ok_or_else(|| SchemaError::UnknownTable(name.into()))
    }

    /// All declared tables.
    pub fn tables(&self) -> &[TableDecl] {
        &self.tables
    }
}

/// Names of the standard tables.
pub mod tables {
    pub const PRODUCTS: &str = "products";
    pub const CATEGORIES: &str = "categories";
    pub const TAX_RATES: &str = "tax_rates";
    pub const CUSTOMERS: &str = "customers";
    pub const STAFF: &str = "staff";
    pub const SETTINGS: &str = "settings";
    pub const POLICIES: &str = "policies";
    pub const SALES: &str = "sales";
    pub const REFUNDS: &str = "refunds";
    pub const VOIDS: &str = "voids";
    pub const STOCK_MOVEMENTS: &str = "stock_movements";
    pub const STOCK_COUNTS: &str = "stock_counts";
    pub const CASH_MOVEMENTS: &str = "cash_movements";
    pub const LOYALTY: &str = "loyalty";
    pub const AUDIT: &str = "audit";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_checked_against_declarations() {
        let s = Schema::standard();
        let p = s.table("products").unwrap();
        assert!(p.check_value("price_minor", &json!(450)).is_ok());
        assert!(p.check_value("price_minor", &json!("4.50")).is_err());
        assert!(p.check_value("price_minor", &json!(4.5)).is_err());
        assert!(p.check_value("colour", &json!("red")).is_err());
        assert!(p.check_value("_exists", &json!(false)).is_ok());
        assert!(p.check_value("name", &json!("x".repeat(2_000))).is_err());
        let m = s.table("stock_movements").unwrap();
        assert!(m.check_row(&json!({"sku": "A", "qty": 1, "reason": "receive"})).is_ok());
        assert!(matches!(m.check_row(&json!({"sku": "A", "qty": 1})), Err(SchemaError::Missing { .. })));
        assert!(m.check_row(&json!([1])).is_err());
        assert!(s.table("nope").is_err());
    }

    #[test]
    fn card_numbers_are_refused_in_texts_and_json_but_barcodes_pass() {
        let s = Schema::standard();
        let card = "4111 1111 1111 1111";
        let customers = s.table("customers").unwrap();
        for field in ["name", "note", "email", "phone"] {
            let err = customers.check_value(field, &json!(format!("paid {card}"))).unwrap_err();
            assert!(matches!(err, SchemaError::CardNumber { .. }), "{field}: {err}");
            assert!(!err.to_string().contains("1111 1111"), "the error does not echo the number: {err}");
        }
        let products = s.table("products").unwrap();
        assert!(products.check_value("barcode", &json!("4006381333924")).is_ok(), "an EAN-13 barcode");
        assert!(products.check_value("barcode", &json!("4111111111111111")).is_err());
        assert!(products.check_value("name", &json!("4006381333924")).is_err(), "names are free text");
        let sales = s.table("sales").unwrap();
        let payments = json!([{"method": "card", "brand": "visa", "last4": "1111", "reference": card}]);
        assert!(matches!(sales.check_value("payments", &payments), Err(SchemaError::CardNumber { .. })));
        let lines = json!([{"sku": "4006381333924", "name": "Pen", "qty": 1, "unit_minor": 4111111111111111_i64}]);
        assert!(sales.check_value("lines", &lines).is_ok(), "codes and numbers inside JSON pass");
        // A card number sent where a number belongs is echoed masked.
        let err = s.table("products").unwrap().check_value("price_minor", &json!("4111111111111111")).unwrap_err();
        assert!(err.to_string().contains("************1111"), "{err}");
        // Deeply nested JSON is refused, not walked without end.
        let mut deep = json!("x");
        for _ in 0..40 {
            deep = json!([deep]);
        }
        assert!(sales.check_value("lines", &deep).is_err());
    }
}
