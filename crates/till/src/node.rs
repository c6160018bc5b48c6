//! The till-side commands: each opens the store, does one thing, prints.

use crate::cli::*;
use crate::output;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use tillsync_core::domain::{self, Method, PaymentInput};
use tillsync_core::money::{self, Currency};
use tillsync_core::schema::tables;
use tillsync_core::{IdGen, Policy, Schema};
use tillsync_store::{Identity, ProductFields, SaleRequest, Store, sample};
use uuid::Uuid;

/// Wall-clock milliseconds: the only clock read, passed down to the store.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An id generator seeded from the operating system.
pub fn os_ids() -> IdGen {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS provides randomness");
    IdGen::from_seed(seed)
}

pub fn open(data: &Path) -> Result<Store> {
    Ok(Store::open(data, Schema::standard(), os_ids())?)
}

/// Creates a standalone till.
pub fn init_offline(
    dir: &Path,
    name: Option<&str>,
    currency: Option<&str>,
    with_sample: bool,
    key: &tillsync_store::keys::KeySpec,
) -> Result<Store> {
    let mut ids = os_ids();
    let now = now_ms();
    let device_id = ids.new_v7(now);
    let tenant_id = ids.new_v7(now);
    let store_id = ids.new_v7(now);
    // A standalone prefix from the device's random bits keeps receipts
    // unique even if this till later joins a hub with other tills.
    let prefix = format!("T{}", &device_id.simple().to_string()[28..32].to_ascii_uppercase());
    let identity = Identity {
        tenant_id,
        store_id,
        device_id,
        receipt_prefix: prefix,
        name: name.unwrap_or("till").to_string(),
        mode: "standalone".into(),
    };
    if let Some(c) = currency {
        Currency::parse(c)?;
    }
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.any(|e| e.is_ok_and(|e| e.file_name() == tillsync_store::DB_FILE))
    {
        bail!("{} already holds a till; choose another folder", dir.display());
    }
    let mut store = Store::create_keyed(dir, identity, Schema::standard(), ids, key)?;
    if with_sample {
        sample::load(&mut store, now, true)?;
    }
    if let Some(c) = currency {
        store.set_settings(now, &[("currency", json!(Currency::parse(c)?.code()))])?;
    }
    Ok(store)
}

fn parse_qty(s: &str, what: &str) -> Result<i64> {
    s.trim().parse::<i64>().map_err(|_| anyhow!("'{s}' is not a quantity for {what}: use a whole number such as 2"))
}

fn parse_item(s: &str) -> Result<(String, i64)> {
    match s.rsplit_once(':') {
        Some((sku, q)) => Ok((sku.to_string(), parse_qty(q, sku)?)),
        None => Ok((s.to_string(), 1)),
    }
}

/// Refuses any argument that carries a full card number, without echoing it.
fn refuse_card_numbers<'a>(args: impl IntoIterator<Item = &'a String>) -> Result<()> {
    for a in args {
        if domain::contains_card_number(a) {
            bail!(
                "an argument looks like a full card number; card numbers are never stored: give only --card-last4 with the last four digits"
            );
        }
    }
    Ok(())
}

fn parse_pay(s: &str, cur: Currency, brand: &Option<String>, last4: &Option<String>) -> Result<PaymentInput> {
    let (method, amount) = match s.split_once(':') {
        Some((m, a)) => (m, Some(a)),
        None => (s, None),
    };
    let method = match method {
        "cash" => Method::Cash,
        "card" => Method::Card,
        other => bail!("'{other}' is not a payment method: use cash or card, e.g. --pay cash:20 or --pay card"),
    };
    let amount_minor = amount.map(|a| cur.parse_minor(a)).transpose()?;
    let (brand, last4) = if method == Method::Card { (brand.clone(), last4.clone()) } else { (None, None) };
    Ok(PaymentInput { method, amount_minor, brand, last4 })
}

fn tax_bp(store: &Store, s: &str) -> Result<i64> {
    for (_, t) in store.records_of(tables::TAX_RATES)? {
        if t["code"].as_str() == Some(s) {
            return Ok(t["rate_bp"].as_i64().unwrap_or(0));
        }
    }
    money::parse_rate_bp(s)
        .map_err(|_| anyhow!("'{s}' is not a tax rate: give a percentage such as 20 or a tax code such as std"))
}

fn product_fields(store: &Store, f: &ProductFieldsArgs, active: Option<bool>) -> Result<ProductFields> {
    let cur = store.settings()?.currency;
    Ok(ProductFields {
        name: f.name.clone(),
        price_minor: f.price.as_deref().map(|p| cur.parse_minor(p)).transpose()?,
        tax_rate_bp: f.tax.as_deref().map(|t| tax_bp(store, t)).transpose()?,
        category: f.category.clone(),
        barcode: f.barcode.clone(),
        active,
    })
}

fn approve(store: &Store, manager: &Option<String>, pin: &Option<String>, what: &str) -> Result<Uuid> {
    let (Some(m), Some(p)) = (manager, pin) else {
        bail!("a {what} needs a manager's approval: add --manager NAME --manager-pin PIN");
    };
    Ok(store.approve(m, p)?)
}

/// Start and end (Unix ms) of a day in the store's time zone.
fn day_bounds(tz_name: &str, day: Option<&str>) -> Result<(i64, i64, String)> {
    let tz = jiff::tz::TimeZone::get(tz_name).unwrap_or(jiff::tz::TimeZone::UTC);
    let date: jiff::civil::Date = match day {
        Some(d) => d.parse().map_err(|_| anyhow!("'{d}' is not a day: use YYYY-MM-DD"))?,
        None => jiff::Timestamp::now().to_zoned(tz.clone()).date(),
    };
    let start = date.to_zoned(tz.clone())?.timestamp().as_millisecond();
    let end = date.tomorrow()?.to_zoned(tz)?.timestamp().as_millisecond();
    Ok((start, end, date.to_string()))
}

pub fn run(args: Cli) -> Result<()> {
    let j = args.json;
    match args.command {
        Command::Demo { dir, offline, exit_after } => {
            if offline {
                crate::demo::run(&dir, j)
            } else {
                crate::demo::run_hub(&dir, exit_after, j)
            }
        }
        Command::Node(NodeCmd::Init { data, offline, sample, name, currency, hub, code, tls, key }) => {
            if !offline {
                return match (hub, code) {
                    (Some(hub), Some(code)) => {
                        crate::sync_cmd::init_hub(&data.data, &hub, &code, name.as_deref(), &tls, &key, j)
                    }
                    _ => bail!(
                        "say how this till works: --offline for a standalone till, or --hub URL --code CODE to join a hub"
                    ),
                };
            }
            if hub.is_some() || code.is_some() {
                bail!("--offline and --hub/--code exclude each other: choose one");
            }
            let store = init_offline(&data.data, name.as_deref(), currency.as_deref(), sample, &key.spec())?;
            let id = store.identity();
            if j {
                output::json(
                    &json!({"device_id": id.device_id, "tenant_id": id.tenant_id, "store_id": id.store_id, "receipt_prefix": id.receipt_prefix, "data": data.data}),
                );
            } else {
                println!(
                    "till '{}' created in {} (device {}, receipts {}-...)",
                    id.name,
                    data.data.display(),
                    id.device_id,
                    id.receipt_prefix
                );
                if sample {
                    println!(
                        "sample data loaded: {} products, staff Alex (manager, PIN 1234), Sam (1111), Jo (2222)",
                        sample::PRODUCTS.len()
                    );
                }
            }
            Ok(())
        }
        Command::Product(cmd) => product(cmd, j),
        Command::Stock(cmd) => stock(cmd, j),
        Command::Customer(cmd) => customer(cmd, j),
        Command::Staff(cmd) => staff(cmd, j),
        Command::Sale(a) => sale(a, j),
        Command::Sales(cmd) => sales(cmd, j),
        Command::Refund { data, receipt, items, manager, manager_pin, reason } => {
            refuse_card_numbers(items.iter().chain(reason.iter()))?;
            let mut store = open(&data.data)?;
            let items = items.iter().map(|i| parse_item(i)).collect::<Result<Vec<_>>>()?;
            store.sale_by_receipt(&receipt)?;
            let by = approve(&store, &manager, &manager_pin, "refund")?;
            let r = store.refund(now_ms(), &receipt, &items, by, reason.as_deref())?;
            if j {
                output::json(
                    &json!({"refund_id": r.refund_id, "sale_id": r.sale_id, "receipt": r.receipt, "total_minor": r.total_minor, "currency": r.currency, "lines": r.lines}),
                );
            } else {
                let cur = Currency::parse(&r.currency)?;
                println!("refunded {} on {}", cur.display(r.total_minor), r.receipt);
            }
            Ok(())
        }
        Command::Void { data, receipt, manager, manager_pin, reason } => {
            let mut store = open(&data.data)?;
            store.sale_by_receipt(&receipt)?;
            let by = approve(&store, &manager, &manager_pin, "void")?;
            let id = store.void(now_ms(), &receipt, by, reason.as_deref())?;
            if j {
                output::json(&json!({"void_id": id, "receipt": receipt}));
            } else {
                println!("voided {receipt}");
            }
            Ok(())
        }
        Command::Cash { data, kind, amount, reason } => {
            let mut store = open(&data.data)?;
            let cur = store.settings()?.currency;
            let minor = cur.parse_minor(&amount)?;
            let id = store.cash_movement(now_ms(), &kind.replace('-', "_"), minor, reason.as_deref())?;
            if j {
                output::json(&json!({"id": id, "kind": kind, "amount_minor": minor}));
            } else {
                println!("{kind} of {} recorded", cur.display(minor));
            }
            Ok(())
        }
        Command::Report { data, day } => {
            let store = open(&data.data)?;
            let settings = store.settings()?;
            let (from, to, day) = day_bounds(&settings.time_zone, day.as_deref())?;
            let rep = store.report(from, to)?;
            if j {
                let mut v = rep.to_json();
                v["day"] = json!(day);
                v["currency"] = json!(settings.currency.code());
                output::json(&v);
            } else {
                print_report(&day, &rep, settings.currency);
            }
            Ok(())
        }
        Command::Status { data } => {
            let store = open(&data.data)?;
            let config = tillsync_node::config::Config::load(&data.data)?;
            let s = tillsync_node::status::full(&store, &config)?;
            if j {
                output::json(&s);
            } else {
                println!(
                    "till {} ({}) device {}, database {}",
                    s["name"].as_str().unwrap_or(""),
                    s["mode"].as_str().unwrap_or(""),
                    s["device_id"].as_str().unwrap_or(""),
                    s["encryption"].as_str().unwrap_or("")
                );
                println!(
                    "state: {}   network: {} (hub {})",
                    s["state"].as_str().unwrap_or(""),
                    s["network"]["type"].as_str().unwrap_or(""),
                    s["network"]["hub"].as_str().unwrap_or("")
                );
                let pending = s["pending"]
                    .as_object()
                    .map(|p| p.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                println!("pending: {pending}");
                if let Some(e) = s["last_error"].as_str() {
                    println!("last error: {e}");
                }
                if let Some(w) = s["clock_warning"].as_str() {
                    println!("warning: {w}");
                }
                println!(
                    "conflicts open: {}, oversold SKUs: {}, over-refunded sales: {}",
                    s["conflicts_open"], s["oversold"], s["over_refunded"]
                );
                println!("state digest: {}", s["state_digest"].as_str().unwrap_or(""));
            }
            Ok(())
        }
        Command::Conflicts(ConflictsCmd::List { data }) => {
            let store = open(&data.data)?;
            let cs = store.conflicts()?;
            if j {
                let v: Vec<Value> = cs
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "table": c.table, "row": c.row, "field": c.field, "status": c.status,
                               "values": c.heads.iter().map(|h| json!({"value": h.value, "device": h.device, "at_ms": h.wall_ms, "write_id": h.write_id})).collect::<Vec<_>>(),
                               "chosen": c.chosen})
                    })
                    .collect();
                output::json(&v);
            } else if cs.is_empty() {
                println!("no conflicts");
            } else {
                for c in cs {
                    let vals: Vec<String> = c.heads.iter().map(|h| h.value.to_string()).collect();
                    println!(
                        "{}  {:<8} {}.{}  {}",
                        c.id,
                        format!("{:?}", c.status).to_lowercase(),
                        c.table,
                        c.field,
                        vals.join(" | ")
                    );
                }
            }
            Ok(())
        }
        Command::Conflicts(ConflictsCmd::Resolve { data, id, keep }) => {
            let mut store = open(&data.data)?;
            let v = store.resolve_conflict(now_ms(), &id, &keep)?;
            if j {
                output::json(&json!({"id": id, "value": v, "status": "resolved"}));
            } else {
                println!("conflict {id} resolved with {v}");
            }
            Ok(())
        }
        Command::Settings(SettingsCmd::Show { data }) => {
            let store = open(&data.data)?;
            let s = store.settings()?;
            let v = json!({"currency": s.currency.code(), "prices_include_tax": s.prices_include_tax,
                "cash_rounding_minor": s.cash_rounding_minor, "time_zone": s.time_zone, "receipt_header": s.receipt_header, "offline_card_max_minor": s.offline_card_max_minor,
                "offline_card_total_max_minor": s.offline_card_total_max_minor, "offline_warn_after_s": s.offline_warn_after_s});
            if j {
                output::json(&v);
            } else {
                for (k, val) in v.as_object().into_iter().flatten() {
                    println!("{k}: {val}");
                }
            }
            Ok(())
        }
        Command::Settings(SettingsCmd::Set { data, key, value }) => {
            let mut store = open(&data.data)?;
            let cur = store.settings()?.currency;
            let (field, v) = match key.as_str() {
                "currency" => ("currency", json!(Currency::parse(&value)?.code())),
                "prices_include_tax" => {
                    ("prices_include_tax", json!(value.parse::<bool>().map_err(|_| anyhow!("use true or false"))?))
                }
                "cash_rounding" => ("cash_rounding_minor", json!(cur.parse_minor(&value)?)),
                "time_zone" => {
                    jiff::tz::TimeZone::get(&value)
                        .map_err(|_| anyhow!("'{value}' is not a time zone: use a name such as Europe/Paris"))?;
                    ("time_zone", json!(value))
                }
                "receipt_header" => {
                    domain::check_free_text(&value)?;
                    ("receipt_header", json!(value))
                }
                "offline_card_max" => ("offline_card_max_minor", json!(cur.parse_minor(&value)?)),
                "offline_card_total_max" => ("offline_card_total_max_minor", json!(cur.parse_minor(&value)?)),
                "offline_warn_after_s" => (
                    "offline_warn_after_s",
                    json!(value.parse::<u32>().map_err(|_| anyhow!("'{value}' is not a number of seconds"))?),
                ),
                other => bail!(
                    "unknown setting '{other}': use currency, prices_include_tax, cash_rounding, time_zone, receipt_header, offline_card_max, offline_card_total_max or offline_warn_after_s"
                ),
            };
            store.set_settings(now_ms(), &[(field, v.clone())])?;
            if j {
                output::json(&json!({field: v}));
            } else {
                println!("{field} set to {v}");
            }
            Ok(())
        }
        Command::SellLoop { data, count, latency } => sell_loop(&data.data, count, latency),
        Command::Node(NodeCmd::Attach { data, hub, code, tls, key }) => {
            crate::sync_cmd::attach(&data.data, &hub, &code, &tls, &key, j)
        }
        Command::Node(NodeCmd::Rekey { data, new_key_file, new_passphrase_file, new_passphrase_env }) => {
            use tillsync_store::keys::KeySpec;
            let spec = match (new_key_file, new_passphrase_file, new_passphrase_env) {
                (Some(f), _, _) => KeySpec::KeyFile(f),
                (_, Some(f), _) => KeySpec::PassphraseFile(f),
                (_, _, true) => KeySpec::PassphraseEnv,
                _ => KeySpec::Folder,
            };
            let r = tillsync_store::keys::rekey(&data.data, &spec)?;
            if j {
                output::json(&r);
            } else {
                println!(
                    "database of {} rekeyed ({} -> {}); its key is now {}",
                    data.data.display(),
                    r.from,
                    r.to,
                    r.key
                );
            }
            Ok(())
        }
        Command::Node(NodeCmd::Run { data, interval, ui, exit_after }) => {
            crate::sync_cmd::run(&data.data, interval, exit_after, ui.as_deref(), j)
        }
        Command::Hub(cmd) => crate::hub_cmd::run(cmd, j),
        Command::Node(NodeCmd::Reset { data, force }) => {
            let store = open(&data.data)?;
            let pending: i64 = store.pending()?.values().sum();
            if pending > 0 && !force {
                bail!(
                    "{pending} changes have not reached the hub: run `till sync --data {d}`, or save them with `till export-pending --data {d} --out FILE`, or pass --force to lose them",
                    d = data.data.display()
                );
            }
            drop(store);
            let mut removed = vec![];
            for f in [
                "till.db",
                "till.db-wal",
                "till.db-shm",
                "device.token",
                "till.toml",
                tillsync_store::keys::KEY_FILE,
                tillsync_store::keys::KEYREF_FILE,
                "till.keyref.next",
            ] {
                let p = data.data.join(f);
                if p.exists() {
                    std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
                    removed.push(f);
                }
            }
            if j {
                output::json(&json!({"reset": data.data, "removed": removed, "lost_changes": pending}));
            } else {
                println!("till data in {} deleted ({} unsynced changes lost)", data.data.display(), pending);
            }
            Ok(())
        }
        Command::ExportPending { data, out, all } => {
            let store = open(&data.data)?;
            if out.exists() {
                bail!("{} exists: choose a new file name", out.display());
            }
            let file = store.export_changes(all)?;
            let text = serde_json::to_string(&file)?;
            // Written under a temporary name, then renamed: never half a file.
            let tmp = out.with_extension("partial");
            std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &out)?;
            if j {
                output::json(&json!({"out": out, "changes": file.changes.len()}));
            } else {
                println!("{} unsynced changes written to {}", file.changes.len(), out.display());
            }
            Ok(())
        }
        Command::ImportPending { data, file } => {
            let mut store = open(&data.data)?;
            let text = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let pf = tillsync_store::PendingFile::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let r = store.import_pending(now_ms(), &pf)?;
            if j {
                output::json(&r);
            } else {
                println!(
                    "imported {} changes: {} ledger rows ({} already here), {} record writes",
                    r.changes, r.ledger_rows, r.ledger_rows_present, r.record_writes
                );
            }
            Ok(())
        }
        Command::Sync { data, force, full } => crate::sync_cmd::sync(&data.data, force, full, j),
        Command::Network { data } => crate::sync_cmd::network(&data.data, j),
        Command::Backup(cmd) => crate::backup_cmd::run(cmd, j),
        Command::Config(cmd) => crate::sync_cmd::config(cmd, j),
        Command::Devices(cmd) => crate::sync_cmd::devices(cmd, j),
        Command::Quarantine(QuarantineCmd::List { data }) => {
            let store = open(&data.data)?;
            let q = store.quarantine()?;
            if j {
                output::json(&q);
            } else if q.is_empty() {
                println!("nothing in quarantine");
            } else {
                for n in q {
                    println!("{} #{}: {}", n.lane, n.seq, n.reason);
                }
            }
            Ok(())
        }
        Command::Policy(PolicyCmd::Set { data, target, mode }) => {
            let mut store = open(&data.data)?;
            let p =
                Policy::parse(&mode).ok_or_else(|| anyhow!("'{mode}' is not a policy: use lww, first or manual"))?;
            store.set_policy(now_ms(), &target, p)?;
            if j {
                output::json(&json!({"target": target, "mode": mode}));
            } else {
                println!("policy of {target} set to {mode}");
            }
            Ok(())
        }
    }
}

fn print_report(day: &str, r: &tillsync_core::domain::XReport, cur: Currency) {
    let m = |v: i64| cur.format_minor(v);
    println!("X report for {day} ({})", cur.code());
    println!(
        "  sales: {}   gross: {}   discounts: {}   tax: {}",
        r.sales_count,
        m(r.gross_minor),
        m(r.discount_minor),
        m(r.tax_minor)
    );
    println!("  by tender:");
    for (k, v) in &r.by_tender {
        println!("    {k:<10}{:>12}", m(*v));
    }
    println!("  by tax rate:");
    for (k, v) in &r.by_tax_rate {
        println!("    {k:<10} net {:>10}  tax {:>10}", m(v.net_minor), m(v.tax_minor));
    }
    println!("  by staff:");
    for (k, v) in &r.by_staff {
        println!("    {k:<10}{:>12}", m(*v));
    }
    println!(
        "  refunds: {} ({})   voids: {} ({})",
        r.refunds_count,
        m(r.refunds_minor),
        r.voids_count,
        m(r.voids_minor)
    );
    for (k, v) in &r.cash_movements {
        println!("  cash {k}: {}", m(*v));
    }
    println!("  expected cash in drawer: {}", m(r.expected_cash_minor));
    println!("  net takings: {}", m(r.net_minor));
}

fn product(cmd: ProductCmd, j: bool) -> Result<()> {
    match cmd {
        ProductCmd::Add { data, sku, fields } => {
            let mut store = open(&data.data)?;
            let f = product_fields(&store, &fields, None)?;
            store.add_product(now_ms(), &sku, &f)?;
            let p = store.product(&sku)?;
            if j {
                output::json(&p)
            } else {
                println!("added {} {} at {}", p.sku, p.name, store.settings()?.currency.display(p.price_minor))
            }
        }
        ProductCmd::Update { data, sku, fields, active } => {
            let mut store = open(&data.data)?;
            let f = product_fields(&store, &fields, active)?;
            store.update_product(now_ms(), &sku, &f)?;
            let p = store.product(&sku)?;
            if j { output::json(&p) } else { println!("updated {}", p.sku) }
        }
        ProductCmd::Delete { data, sku } => {
            let mut store = open(&data.data)?;
            store.delete_product(now_ms(), &sku)?;
            if j { output::json(&json!({"sku": sku, "deleted": true})) } else { println!("deleted {sku}") }
        }
        ProductCmd::List { data } => {
            let store = open(&data.data)?;
            let ps = store.products()?;
            if j {
                output::json(&ps);
            } else {
                let cur = store.settings()?.currency;
                for p in ps {
                    println!(
                        "{:<14} {:<30} {:>10}  {:<6} {}",
                        p.sku,
                        p.name,
                        cur.format_minor(p.price_minor),
                        money::format_rate_bp(p.tax_rate_bp),
                        p.category.unwrap_or_default()
                    );
                }
            }
        }
        ProductCmd::Show { data, sku } => {
            let store = open(&data.data)?;
            let p = store.product(&sku)?;
            let on_hand = store.on_hand(&sku)?;
            let mut v = serde_json::to_value(&p)?;
            v["on_hand"] = json!(on_hand);
            if j {
                output::json(&v);
            } else {
                for (k, val) in v.as_object().into_iter().flatten() {
                    println!("{k}: {val}");
                }
            }
        }
    }
    Ok(())
}

fn stock(cmd: StockCmd, j: bool) -> Result<()> {
    match cmd {
        StockCmd::Receive { data, sku, qty } => {
            let mut store = open(&data.data)?;
            let q = parse_qty(&qty, &sku)?;
            store.receive_stock(now_ms(), &sku, q)?;
            let on_hand = store.on_hand(&sku)?;
            if j {
                output::json(&json!({"sku": sku, "received": q, "on_hand": on_hand}))
            } else {
                println!("received {q} of {sku}; on hand {on_hand}")
            }
        }
        StockCmd::Count { data, sku, qty } => {
            let mut store = open(&data.data)?;
            let q = parse_qty(&qty, &sku)?;
            let c = store.count_stock(now_ms(), &sku, q)?;
            if j { output::json(&c) } else { println!("counted {} of {}; on hand {}", c.counted, c.sku, c.on_hand) }
        }
        StockCmd::List { data } => {
            let store = open(&data.data)?;
            let rows = store.stock_list()?;
            if j {
                output::json(&rows);
            } else {
                for r in rows {
                    println!("{:<14} {:>8}{}", r.sku, r.on_hand, if r.oversold { "  OVERSOLD" } else { "" });
                }
            }
        }
    }
    Ok(())
}

fn customer(cmd: CustomerCmd, j: bool) -> Result<()> {
    match cmd {
        CustomerCmd::Add { data, name, email, phone } => {
            let mut store = open(&data.data)?;
            let id = store.add_customer(now_ms(), &name, email.as_deref(), phone.as_deref())?;
            if j {
                output::json(&json!({"customer_id": id, "name": name}))
            } else {
                println!("added customer {name} ({id})")
            }
        }
        CustomerCmd::List { data } => {
            let store = open(&data.data)?;
            let mut out = vec![];
            for (id, d) in store.records_of(tables::CUSTOMERS)? {
                let points: i64 = store
                    .ledger_by_key(tables::LOYALTY, &id.to_string())?
                    .iter()
                    .map(|(_, r)| r["points"].as_i64().unwrap_or(0))
                    .sum();
                out.push(json!({"customer_id": id, "name": d["name"], "email": d["email"], "phone": d["phone"], "points": points}));
            }
            if j {
                output::json(&out);
            } else {
                for c in out {
                    println!(
                        "{}  {:<24} {:<26} {} pts",
                        c["customer_id"].as_str().unwrap_or(""),
                        c["name"].as_str().unwrap_or(""),
                        c["email"].as_str().unwrap_or(""),
                        c["points"]
                    );
                }
            }
        }
    }
    Ok(())
}

fn staff(cmd: StaffCmd, j: bool) -> Result<()> {
    match cmd {
        StaffCmd::Add { data, name, role, pin } => {
            let mut store = open(&data.data)?;
            let id = store.add_staff(now_ms(), &name, &role, &pin)?;
            if j {
                output::json(&json!({"staff_id": id, "name": name, "role": role}))
            } else {
                println!("added {role} {name} ({id})")
            }
        }
        StaffCmd::List { data } => {
            let store = open(&data.data)?;
            let out: Vec<Value> = store
                .records_of(tables::STAFF)?
                .into_iter()
                .map(|(id, d)| json!({"staff_id": id, "name": d["name"], "role": d["role"], "active": d["active"]}))
                .collect();
            if j {
                output::json(&out);
            } else {
                for s in out {
                    println!(
                        "{}  {:<20} {}",
                        s["staff_id"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or(""),
                        s["role"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}

fn sale(a: SaleArgs, j: bool) -> Result<()> {
    refuse_card_numbers(a.items.iter().chain(a.pays.iter()).chain(a.card_last4.iter()).chain(a.card_brand.iter()))?;
    let mut store = open(&a.data.data)?;
    let settings = store.settings()?;
    let cur = settings.currency;
    let items = a.items.iter().map(|i| parse_item(i)).collect::<Result<Vec<_>>>()?;
    let payments =
        a.pays.iter().map(|p| parse_pay(p, cur, &a.card_brand, &a.card_last4)).collect::<Result<Vec<_>>>()?;
    let customer_id = a
        .customer
        .as_deref()
        .map(|c| Uuid::parse_str(c).map_err(|_| anyhow!("'{c}' is not a customer id: see `till customer list`")))
        .transpose()?;
    let staff_id = a.staff.as_deref().map(|s| store.find_staff(s)).transpose()?;
    let discount_bp = a.discount.as_deref().map(money::parse_rate_bp).transpose().context("--discount")?.unwrap_or(0);
    let req = SaleRequest { items, payments, customer_id, staff_id, discount_bp };
    let out = store.sell(now_ms(), &req)?;
    if j {
        output::json(
            &json!({"sale_id": out.sale_id, "receipt": out.receipt, "total_minor": out.total_minor, "currency": out.currency,
            "change_minor": out.change_minor, "payments": out.data["payments"]}),
        );
    } else {
        print!("{}", output::receipt(&settings.receipt_header, &out.data, cur));
    }
    Ok(())
}

fn sales(cmd: SalesCmd, j: bool) -> Result<()> {
    match cmd {
        SalesCmd::List { data, limit } => {
            let store = open(&data.data)?;
            let rows = store.sales(limit.min(100_000))?;
            if j {
                output::json(&rows);
            } else {
                let cur = store.settings()?.currency;
                for s in rows {
                    let flag = if s.voided {
                        " VOID"
                    } else if s.refunded_minor > 0 {
                        " refunded"
                    } else {
                        ""
                    };
                    println!("{:<14} {:>12}{flag}", s.receipt, cur.format_minor(s.total_minor));
                }
            }
        }
        SalesCmd::Show { data, receipt } => {
            let store = open(&data.data)?;
            let (id, sale) = store.sale_by_receipt(&receipt)?;
            if j {
                let mut v = sale.clone();
                v["sale_id"] = json!(id);
                output::json(&v);
            } else {
                let s = store.settings()?;
                print!(
                    "{}",
                    output::receipt(
                        &s.receipt_header,
                        &sale,
                        Currency::parse(sale["currency"].as_str().unwrap_or("EUR"))?
                    )
                );
            }
        }
    }
    Ok(())
}

/// Sells one espresso at a time, printing each receipt after its commit
/// returned: a receipt on stdout is a promise that the sale is durable.
fn sell_loop(dir: &Path, count: u64, latency: bool) -> Result<()> {
    use std::io::Write as _;
    let mut store = open(dir)?;
    let sku = store.products()?.into_iter().next().map(|p| p.sku).ok_or_else(|| anyhow!("the till has no products"))?;
    let stdout = std::io::stdout();
    let mut n = 0u64;
    while count == 0 || n < count {
        let req = SaleRequest {
            items: vec![(sku.clone(), 1)],
            payments: vec![PaymentInput { method: Method::Cash, amount_minor: None, brand: None, last4: None }],
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let out = store.sell(now_ms(), &req)?;
        let took = started.elapsed().as_micros();
        let mut lock = stdout.lock();
        if latency {
            writeln!(lock, "{} {took}", out.receipt)?;
        } else {
            writeln!(lock, "{}", out.receipt)?;
        }
        lock.flush()?;
        n += 1;
    }
    Ok(())
}
