//! Backups (list, create now, verify) and settings: the device's, kept in
//! `till.toml`, and the tenant's, which sync (managers only).

use crate::layout::{optional, required};
use crate::session::Auth;
use crate::{UiError, UiState};
use axum::Form;
use axum::extract::State;
use axum::response::Response;
use maud::html;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::Path;
use tillsync_backup::s3::S3Options;
use tillsync_backup::{Key, Unlock};
use tillsync_core::Lane;
use tillsync_core::schema::tables;
use tillsync_node::config::Config;

fn read_secret(f: &str) -> Result<String, UiError> {
    let s = std::fs::read_to_string(f).map_err(|e| {
        UiError::Invalid(format!("cannot read the passphrase file {f}: {e}; check backup.passphrase_file"))
    })?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() {
        return Err(UiError::Invalid(format!("the passphrase file {f} is empty")));
    }
    Ok(s)
}

/// The configured destination: a folder or `s3://bucket/prefix` (S3
/// settings from the config, else the AWS environment).
fn destination(
    b: &tillsync_node::config::BackupConfig,
    till: &std::path::Path,
) -> Result<Box<dyn tillsync_backup::Destination>, UiError> {
    let s3 = S3Options::resolve(Some(&b.s3_endpoint), Some(&b.s3_region));
    Ok(tillsync_node::backups::destination_for_till(&b.destination, &s3, till)?)
}

fn no_destination() -> UiError {
    UiError::Invalid("no backup destination is configured: set one on the Settings page".into())
}

/// `GET /backups`.
pub async fn backups(State(st): State<UiState>, auth: Auth) -> Response {
    let dir = st.dir.clone();
    st.render(Some(auth), "Backups", "Backups", move |store, ctx| {
        let config = Config::load(&dir)?;
        let b = &config.backup;
        let last_at = store.get_meta("last_backup_at")?.and_then(|v| v.parse::<i64>().ok());
        let last_err = store.get_meta("last_backup_error")?.filter(|e| !e.is_empty());
        if b.destination.is_empty() {
            return Ok(html! {
                h1 { "Backups" }
                p { "No backup destination is configured for this till." }
                p { "Set " strong { "Backup destination" } " (a folder, best on another disk) and " strong { "Passphrase file" }
                    " (or an age recipient) on the " a href="/settings" { "Settings" } " page, or on the command line:" }
                pre { "till config set --data DIR backup.destination /mnt/usb/backups\ntill config set --data DIR backup.passphrase_file /root/pass.txt\ntill config set --data DIR backup.interval_s 3600   # scheduled in `till node run`" }
            });
        }
        let mut list = destination(b, &dir).and_then(|d| Ok(d.list()?)).unwrap_or_default();
        list.reverse();
        Ok(html! {
            h1 { "Backups" }
            p { "Destination " code { (b.destination) } ". Backups are encrypted ("
                (if b.passphrase_file.is_empty() { "age recipient" } else { "passphrase" }) ") and compressed."
                @if b.interval_s > 0 { " Scheduled every " (b.interval_s) " s, keeping " @if b.keep > 0 { (b.keep) } @else { "all" } "." } }
            @if let Some(t) = last_at { p class="note" { "Last scheduled backup: " (ctx.time(t)) } }
            @if let Some(e) = last_err { p class="flash err" { "Last scheduled backup failed: " (e) } }
            form method="post" action="/backups/create" class="inline" {
                button type="submit" class="primary" { "Create now" }
            }
            @if list.is_empty() { p { "No backups there yet." } } @else {
                table class="list" {
                    thead { tr { th scope="col" { "Backup" } th scope="col" { "Taken" } th scope="col" { "Till" } th scope="col" class="num" { "Size" } th scope="col" { span class="sr" { "Actions" } } } }
                    tbody {
                        @for m in &list {
                            tr {
                                td { code { (m.backup_id) } }
                                td { (ctx.time(m.created_ms as i64)) }
                                td { (m.device_name) " (" (m.mode) ")" }
                                td class="num" { (m.stored_bytes / 1024) " KiB" }
                                td {
                                    form method="post" action="/backups/verify" class="inline" {
                                        input type="hidden" name="id" value=(m.backup_id);
                                        button type="submit" class="secondary small" aria-label=(format!("Verify {}", m.backup_id)) { "Verify" }
                                    }
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

/// `POST /backups/create`: a backup now, to the configured destination.
pub async fn backup_create(State(st): State<UiState>, auth: Auth) -> Response {
    let (dir, now, store) = (st.dir.clone(), (st.now_ms)(), st.store.clone());
    let r = tokio::task::spawn_blocking(move || -> Result<String, UiError> {
        let config = Config::load(&dir)?;
        let b = &config.backup;
        if b.destination.is_empty() {
            return Err(no_destination());
        }
        let key = if !b.passphrase_file.is_empty() {
            Key::Passphrase(read_secret(&b.passphrase_file)?)
        } else if !b.recipient.is_empty() {
            Key::Recipient(b.recipient.clone())
        } else {
            return Err(UiError::Invalid(
                "backups are always encrypted: set the passphrase file or an age recipient on the Settings page".into(),
            ));
        };
        let dest = destination(b, &dir)?;
        // The snapshot is a read transaction of its own: the till keeps selling meanwhile.
        let m = tillsync_backup::create(&dir.join(tillsync_store::DB_FILE), dest.as_ref(), &key, &dir, now, |_, _| {})?;
        if b.keep > 0 {
            tillsync_backup::prune(dest.as_ref(), b.keep as usize)?;
        }
        if let Ok(s) = store.lock() {
            let _ = s.set_meta("last_backup_at", &now.to_string());
            let _ = s.set_meta("last_backup_id", &m.backup_id);
        }
        Ok(format!("backup {} written ({} KiB stored, encrypted)", m.backup_id, m.stored_bytes / 1024))
    })
    .await
    .unwrap_or_else(|e| Err(UiError::Internal(e.to_string())));
    st.done(&auth, "/backups", r)
}

#[derive(Deserialize)]
pub struct VerifyForm {
    id: Option<String>,
}

/// `POST /backups/verify`: decrypts and checks one backup.
pub async fn backup_verify(State(st): State<UiState>, auth: Auth, Form(f): Form<VerifyForm>) -> Response {
    let dir = st.dir.clone();
    let r = tokio::task::spawn_blocking(move || -> Result<String, UiError> {
        let id = required(&f.id, "the backup")?.to_string();
        let config = Config::load(&dir)?;
        let b = &config.backup;
        if b.destination.is_empty() {
            return Err(no_destination());
        }
        if b.passphrase_file.is_empty() {
            return Err(UiError::Invalid(format!(
                "this till encrypts to an age recipient, so verifying needs its identity file: run `till backup verify --from {} --identity FILE`",
                b.destination
            )));
        }
        let unlock = Unlock::Passphrase(read_secret(&b.passphrase_file)?);
        let dest = destination(b, &dir)?;
        let v = tillsync_backup::verify(dest.as_ref(), Some(&id), &unlock, &std::env::temp_dir())?;
        Ok(format!("backup {} is good: digests match, integrity {}, {} sales", v.backup_id, v.integrity, v.sales))
    })
    .await
    .unwrap_or_else(|e| Err(UiError::Internal(e.to_string())));
    st.done(&auth, "/backups", r)
}

/// Policy targets offered on the Settings page (any table or `table.field` works).
pub const POLICY_TARGETS: &[&str] =
    &["products", "products.price_minor", "products.name", "products._exists", "customers", "categories", "settings"];

/// `GET /settings`.
pub async fn settings(State(st): State<UiState>, auth: Auth) -> Response {
    let dir = st.dir.clone();
    st.render(Some(auth), "Settings", "Settings", move |store, ctx| {
        let c = Config::load(&dir)?;
        let s = store.settings()?;
        let cur = s.currency;
        let mut policies: Vec<(String, String)> = store
            .records_of(tables::POLICIES)?
            .into_iter()
            .map(|(_, d)| (d["target"].as_str().unwrap_or("").to_string(), d["mode"].as_str().unwrap_or("").to_string()))
            .collect();
        policies.sort();
        let manager = ctx.manager();
        Ok(html! {
            h1 { "Settings" }
            div class="two" {
                form method="post" action="/settings/device" class="card" {
                    h2 { "This till (till.toml)" }
                    p class="hint" { "Saved to " code { (dir.join(tillsync_node::config::CONFIG_FILE).display()) } "; they apply when " code { "till node run" } " restarts." }
                    span class="check" {
                        input type="checkbox" id="auto" name="auto" value="true" checked[c.sync.auto];
                        label for="auto" { "Sync automatically" }
                    }
                    label for="interval" { "Sync interval (seconds)" }
                    input id="interval" name="interval_s" type="number" min="1" max="86400" value=(c.sync.interval_s);
                    label for="retry" { "Failed rounds before the till shows a problem" }
                    input id="retry" name="retry_limit" type="number" min="1" max="1000" value=(c.sync.retry_limit);
                    label for="metered" { "Metered connection" }
                    select id="metered" name="metered" {
                        @for (v, l) in [("auto", "auto (cellular is metered)"), ("yes", "yes"), ("no", "no")] {
                            option value=(v) selected[c.network.metered == v] { (l) }
                        }
                    }
                    fieldset {
                        legend { "Lanes sent on a metered link" }
                        @for lane in Lane::ALL {
                            span class="check" {
                                input type="checkbox" id=(format!("lane-{lane}")) name="metered_lanes" value=(lane.as_str()) checked[c.network.metered_lanes.iter().any(|l| l == lane.as_str())];
                                label for=(format!("lane-{lane}")) { (lane.as_str()) }
                            }
                        }
                    }
                    label for="b-dest" { "Backup destination (a folder)" }
                    input id="b-dest" name="backup_destination" value=(c.backup.destination);
                    label for="b-pass" { "Passphrase file" }
                    input id="b-pass" name="backup_passphrase_file" value=(c.backup.passphrase_file);
                    label for="b-rcpt" { "Or an age recipient" }
                    input id="b-rcpt" name="backup_recipient" value=(c.backup.recipient);
                    label for="b-int" { "Backup every (seconds, 0: no schedule)" }
                    input id="b-int" name="backup_interval_s" type="number" min="0" value=(c.backup.interval_s);
                    label for="b-keep" { "Backups kept (0: all)" }
                    input id="b-keep" name="backup_keep" type="number" min="0" value=(c.backup.keep);
                    button type="submit" class="primary" { "Save this till's settings" }
                }
                div {
                    form method="post" action="/settings/tenant" class="card" {
                        h2 { "Shop (syncs to every till)" }
                        @if !manager { p class="note" { "Sign in as a manager to change these." } }
                        fieldset disabled[!manager] {
                            legend { "Tax, rounding and receipts (" (cur.code()) ")" }
                            span class="check" {
                                input type="checkbox" id="incl" name="prices_include_tax" value="true" checked[s.prices_include_tax];
                                label for="incl" { "Prices include tax" }
                            }
                            label for="rounding" { "Cash rounding step" }
                            input id="rounding" name="cash_rounding" inputmode="decimal" value=(cur.format_minor(s.cash_rounding_minor));
                            label for="tz" { "Time zone" }
                            input id="tz" name="time_zone" value=(s.time_zone);
                            label for="header" { "Receipt header" }
                            input id="header" name="receipt_header" value=(s.receipt_header);
                            label for="card-max" { "Largest card payment while the hub is unreachable (0: no limit)" }
                            input id="card-max" name="offline_card_max" inputmode="decimal" value=(cur.format_minor(s.offline_card_max_minor));
                            label for="card-total" { "Most card payments waiting for the hub, in total (0: no limit)" }
                            input id="card-total" name="offline_card_total_max" inputmode="decimal" value=(cur.format_minor(s.offline_card_total_max_minor));
                            label for="warn" { "Warn after this long without the hub (seconds)" }
                            input id="warn" name="offline_warn_after_s" type="number" min="0" value=(s.offline_warn_after_s);
                            button type="submit" class="primary" { "Save shop settings" }
                        }
                    }
                    form method="post" action="/settings/policy" class="card" {
                        h2 { "Conflict policies" }
                        @if policies.is_empty() { p { "Default everywhere: the newest change wins (lww)." } }
                        @else {
                            ul { @for (t, m) in &policies { li { code { (t) } ": " (m) } } }
                        }
                        fieldset disabled[!manager] {
                            legend { "Set a policy" }
                            label for="p-target" { "Table or field" }
                            input id="p-target" name="target" list="p-targets" required placeholder="products.price_minor";
                            datalist id="p-targets" { @for t in POLICY_TARGETS { option value=(t) {} } }
                            label for="p-mode" { "Policy" }
                            select id="p-mode" name="mode" {
                                option value="lww" { "newest wins (lww)" }
                                option value="first" { "first wins" }
                                option value="manual" { "ask a person (manual)" }
                            }
                            button type="submit" class="primary" { "Set policy" }
                        }
                    }
                }
            }
        })
    })
    .await
}

/// `POST /settings/device`: writes `till.toml`.
pub async fn save_device(State(st): State<UiState>, auth: Auth, Form(f): Form<Vec<(String, String)>>) -> Response {
    let dir = st.dir.clone();
    let r = tokio::task::spawn_blocking(move || save_device_settings(&dir, &f))
        .await
        .unwrap_or_else(|e| Err(UiError::Internal(e.to_string())));
    st.done(&auth, "/settings", r)
}

fn save_device_settings(dir: &Path, f: &[(String, String)]) -> Result<String, UiError> {
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    let mut c = Config::load(dir)?;
    let lanes: Vec<&str> = f.iter().filter(|(n, _)| n == "metered_lanes").map(|(_, v)| v.as_str()).collect();
    c.set("sync.auto", if get("auto") == "true" { "true" } else { "false" })?;
    for (key, field) in [
        ("sync.interval_s", "interval_s"),
        ("sync.retry_limit", "retry_limit"),
        ("network.metered", "metered"),
        ("backup.destination", "backup_destination"),
        ("backup.passphrase_file", "backup_passphrase_file"),
        ("backup.recipient", "backup_recipient"),
        ("backup.interval_s", "backup_interval_s"),
        ("backup.keep", "backup_keep"),
    ] {
        c.set(key, &get(field))?;
    }
    c.set("network.metered_lanes", &lanes.join(","))?;
    c.save(dir)?;
    Ok("this till's settings are saved; restart `till node run` to apply them".into())
}

/// `POST /settings/tenant`: tenant settings (a manager only).
pub async fn save_tenant(State(st): State<UiState>, auth: Auth, Form(f): Form<Vec<(String, String)>>) -> Response {
    let (now, manager) = ((st.now_ms)(), auth.manager);
    let r = st
        .with_store(move |store| {
            if !manager {
                return Err(UiError::Forbidden("only a manager can change the shop's settings: sign in as one".into()));
            }
            let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().to_string());
            let now_s = store.settings()?;
            let cur = now_s.currency;
            let money = |k: &str| -> Result<Value, UiError> {
                Ok(json!(optional(&get(k)).map(|v| cur.parse_minor(v)).transpose()?.unwrap_or(0)))
            };
            let header = get("receipt_header").unwrap_or_default();
            if !header.is_empty() {
                tillsync_core::domain::check_free_text(&header)?;
            }
            let tz = get("time_zone").unwrap_or_default();
            jiff::tz::TimeZone::get(&tz)
                .map_err(|_| UiError::Invalid(format!("'{tz}' is not a time zone: use a name such as Europe/Paris")))?;
            let warn = get("offline_warn_after_s").unwrap_or_default();
            let warn: u32 =
                warn.parse().map_err(|_| UiError::Invalid(format!("'{warn}' is not a number of seconds")))?;
            let fields = [
                ("prices_include_tax", json!(get("prices_include_tax").as_deref() == Some("true"))),
                ("cash_rounding_minor", money("cash_rounding")?),
                ("time_zone", json!(tz)),
                ("receipt_header", json!(header)),
                ("offline_card_max_minor", money("offline_card_max")?),
                ("offline_card_total_max_minor", money("offline_card_total_max")?),
                ("offline_warn_after_s", json!(warn)),
            ];
            // Only changed fields are written: an unchanged one would become
            // a needless write that can conflict with another till's edit.
            let was = [
                json!(now_s.prices_include_tax),
                json!(now_s.cash_rounding_minor),
                json!(now_s.time_zone),
                json!(now_s.receipt_header),
                json!(now_s.offline_card_max_minor),
                json!(now_s.offline_card_total_max_minor),
                json!(now_s.offline_warn_after_s),
            ];
            let changed: Vec<(&str, Value)> =
                fields.into_iter().zip(was).filter(|((_, v), w)| v != w).map(|(f, _)| f).collect();
            if changed.is_empty() {
                return Ok("nothing changed".into());
            }
            store.set_settings(now, &changed)?;
            Ok(format!("shop settings saved ({} changed); they sync to every till", changed.len()))
        })
        .await;
    st.done(&auth, "/settings", r)
}

#[derive(Deserialize)]
pub struct PolicyForm {
    target: Option<String>,
    mode: Option<String>,
}

/// `POST /settings/policy`: a conflict policy (a manager only).
pub async fn save_policy(State(st): State<UiState>, auth: Auth, Form(f): Form<PolicyForm>) -> Response {
    let (now, manager) = ((st.now_ms)(), auth.manager);
    let r = st
        .with_store(move |store| {
            if !manager {
                return Err(UiError::Forbidden("only a manager can change conflict policies: sign in as one".into()));
            }
            let target = required(&f.target, "the table or field")?;
            let mode = required(&f.mode, "the policy")?;
            let p = tillsync_core::Policy::parse(mode)
                .ok_or_else(|| UiError::Invalid(format!("'{mode}' is not a policy: use lww, first or manual")))?;
            store.set_policy(now, target, p)?;
            Ok(format!("policy for {target} set to {mode}"))
        })
        .await;
    st.done(&auth, "/settings", r)
}
