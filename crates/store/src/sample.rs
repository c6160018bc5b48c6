//! The sample catalogue: a small café-bakery with about fifty products in
//! seven categories, three tax rates, customers, staff and opening stock.

use crate::pos::ProductFields;
use crate::{Store, StoreError};
use serde_json::json;

/// (category, SKU, name, price in minor units, tax code, opening stock).
pub const PRODUCTS: &[(&str, &str, &str, i64, &str, i64)] = &[
    ("Coffee", "ESPRESSO", "Espresso", 220, "std", 200),
    ("Coffee", "DOPPIO", "Double espresso", 300, "std", 200),
    ("Coffee", "AMERICANO", "Americano", 280, "std", 200),
    ("Coffee", "CAPPUCCINO", "Cappuccino", 350, "std", 200),
    ("Coffee", "LATTE", "Caffe latte", 380, "std", 200),
    ("Coffee", "FLATWHITE", "Flat white", 370, "std", 200),
    ("Coffee", "MOCHA", "Mocha", 400, "std", 150),
    ("Coffee", "COLDBREW", "Cold brew", 420, "std", 80),
    ("Tea", "TEA-BLACK", "Black tea", 250, "std", 120),
    ("Tea", "TEA-GREEN", "Green tea", 260, "std", 120),
    ("Tea", "TEA-MINT", "Mint tea", 260, "std", 120),
    ("Tea", "CHAI", "Chai latte", 390, "std", 100),
    ("Tea", "MATCHA", "Matcha latte", 450, "std", 60),
    ("Tea", "HOTCHOC", "Hot chocolate", 360, "std", 100),
    ("Bakery", "CROISSANT", "Croissant", 180, "reduced", 60),
    ("Bakery", "PAINCHOC", "Pain au chocolat", 200, "reduced", 50),
    ("Bakery", "CINNROLL", "Cinnamon roll", 290, "reduced", 40),
    ("Bakery", "MUFFIN-BB", "Blueberry muffin", 280, "reduced", 40),
    ("Bakery", "MUFFIN-CH", "Chocolate muffin", 280, "reduced", 40),
    ("Bakery", "BROWNIE", "Brownie", 300, "reduced", 40),
    ("Bakery", "COOKIE", "Cookie", 150, "reduced", 80),
    ("Bakery", "BANANABREAD", "Banana bread", 320, "reduced", 30),
    ("Bakery", "BAGUETTE", "Baguette", 130, "reduced", 50),
    ("Bakery", "SOURDOUGH", "Sourdough loaf", 550, "reduced", 20),
    ("Sandwiches", "SW-HAM", "Ham and cheese sandwich", 590, "reduced", 25),
    ("Sandwiches", "SW-TUNA", "Tuna sandwich", 590, "reduced", 25),
    ("Sandwiches", "SW-VEG", "Veggie sandwich", 550, "reduced", 25),
    ("Sandwiches", "SW-CHICKEN", "Chicken club", 650, "reduced", 20),
    ("Sandwiches", "BAGEL-SALMON", "Salmon bagel", 690, "reduced", 15),
    ("Sandwiches", "TOASTIE", "Cheese toastie", 480, "reduced", 25),
    ("Sandwiches", "SALAD", "Garden salad", 620, "reduced", 15),
    ("Drinks", "WATER", "Still water", 150, "reduced", 100),
    ("Drinks", "SPARKLING", "Sparkling water", 170, "reduced", 100),
    ("Drinks", "OJ", "Orange juice", 320, "reduced", 50),
    ("Drinks", "APPLEJ", "Apple juice", 300, "reduced", 50),
    ("Drinks", "COLA", "Cola", 250, "std", 80),
    ("Drinks", "LEMONADE", "Lemonade", 280, "std", 60),
    ("Drinks", "SMOOTHIE", "Berry smoothie", 480, "reduced", 30),
    ("Snacks", "CRISPS", "Crisps", 140, "reduced", 80),
    ("Snacks", "NUTS", "Salted nuts", 220, "reduced", 50),
    ("Snacks", "FRUIT", "Fruit cup", 300, "reduced", 30),
    ("Snacks", "YOGURT", "Yogurt pot", 260, "reduced", 30),
    ("Snacks", "CHOCBAR", "Chocolate bar", 180, "std", 60),
    ("Snacks", "FLAPJACK", "Flapjack", 230, "reduced", 40),
    ("Merch", "MUG", "Branded mug", 1200, "std", 20),
    ("Merch", "TOTE", "Tote bag", 900, "std", 20),
    ("Merch", "BEANS-250", "Coffee beans 250 g", 890, "reduced", 30),
    ("Merch", "BEANS-1K", "Coffee beans 1 kg", 2990, "reduced", 10),
    ("Merch", "GIFTCARD", "Gift card", 2500, "zero", 50),
    ("Merch", "KEEPCUP", "Reusable cup", 1500, "std", 15),
];

/// (code, name, rate in basis points).
pub const TAX_RATES: &[(&str, &str, i64)] =
    &[("std", "Standard", 2000), ("reduced", "Reduced", 550), ("zero", "Zero", 0)];

/// (name, role, PIN). Documented in the README so a newcomer can sign in.
pub const STAFF: &[(&str, &str, &str)] =
    &[("Alex", "manager", "1234"), ("Sam", "cashier", "1111"), ("Jo", "cashier", "2222")];

/// (name, email).
pub const CUSTOMERS: &[(&str, &str)] =
    &[("Maria Rossi", "maria@example.com"), ("Tom Becker", "tom@example.com"), ("Aiko Tanaka", "aiko@example.com")];

/// Loads the sample data into a store. With `with_stock`, also receives the
/// opening stock (a hub seeds it once for the whole tenant).
pub fn load(store: &mut Store, now_ms: u64, with_stock: bool) -> Result<(), StoreError> {
    store.set_settings(
        now_ms,
        &[
            ("currency", json!("EUR")),
            ("prices_include_tax", json!(true)),
            ("cash_rounding_minor", json!(0)),
            ("time_zone", json!("Europe/Paris")),
            ("receipt_header", json!("Tillsync Cafe - 1 Sample Street")),
        ],
    )?;
    for (code, name, bp) in TAX_RATES {
        store.add_tax_rate(now_ms, code, name, *bp)?;
    }
    let mut categories: Vec<&str> = PRODUCTS.iter().map(|p| p.0).collect();
    categories.dedup();
    for (i, c) in categories.iter().enumerate() {
        store.add_category(now_ms, c, i as i64)?;
    }
    for (cat, sku, name, price, tax, _) in PRODUCTS {
        let rate = TAX_RATES.iter().find(|t| t.0 == *tax).map(|t| t.2).unwrap_or(0);
        store.add_product(
            now_ms,
            sku,
            &ProductFields {
                name: Some(name.to_string()),
                price_minor: Some(*price),
                tax_rate_bp: Some(rate),
                category: Some(cat.to_string()),
                ..Default::default()
            },
        )?;
    }
    for (name, role, pin) in STAFF {
        store.add_staff(now_ms, name, role, pin)?;
    }
    for (name, email) in CUSTOMERS {
        store.add_customer(now_ms, name, Some(email), None)?;
    }
    if with_stock {
        for (_, sku, _, _, _, qty) in PRODUCTS {
            store.receive_stock(now_ms, sku, *qty)?;
        }
    }
    Ok(())
}
