//! Sync pages: conflicts (resolved here), quarantine, devices (through the
//! hub, with an admin token) and the "Sync now" fallback without JS.

use crate::layout::{Ctx, required};
use crate::session::Auth;
use crate::{UiError, UiState};
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use tillsync_core::ConflictStatus;
use tillsync_core::merge::EXISTS_FIELD;
use tillsync_node::{ClientOptions, HubClient};
use tillsync_store::Store;

/// Longest wait for the hub on the Devices page, in milliseconds.
pub const HUB_TIMEOUT_MS: u64 = 5_000;

/// A conflicting value as a person reads it.
fn show_value(ctx: &Ctx, field: &str, v: &Value) -> String {
    match v {
        Value::Bool(b) if field == EXISTS_FIELD => if *b { "keep the row" } else { "delete the row" }.into(),
        Value::Number(n) if field.ends_with("_minor") => n.as_i64().map(|m| ctx.money(m)).unwrap_or(n.to_string()),
        Value::String(s) => s.clone(),
        Value::Null => "(empty)".into(),
        other => other.to_string(),
    }
}

/// What the conflicting row is, for a person: a product's name, etc.
fn row_label(store: &Store, table: &str, row: uuid::Uuid) -> String {
    match store.record_state(table, row) {
        Ok(Some((_, d))) => {
            let name = d["name"].as_str().or(d["target"].as_str()).unwrap_or("");
            match d["sku"].as_str() {
                Some(sku) => format!("{name} ({sku})"),
                None if !name.is_empty() => name.to_string(),
                None => row.to_string(),
            }
        }
        _ => row.to_string(),
    }
}

/// Names for the tills seen in this till's sales: "till T2" from the
/// receipt prefix of a sale it made.
fn till_names(store: &Store) -> Result<BTreeMap<uuid::Uuid, String>, UiError> {
    let mut out = BTreeMap::new();
    for r in store.ledger_rows(tillsync_core::schema::tables::SALES)? {
        if let Some(prefix) = r.data["receipt"].as_str().and_then(|x| x.rsplit_once('-')).map(|(p, _)| p) {
            out.entry(r.device).or_insert_with(|| format!("till {prefix}"));
        }
    }
    Ok(out)
}

/// A field as a person reads it: `price_minor` is "price".
fn field_label(field: &str) -> String {
    if field == EXISTS_FIELD {
        return "deleted or kept".into();
    }
    field.trim_end_matches("_minor").replace('_', " ")
}

/// `GET /conflicts`.
pub async fn conflicts(State(st): State<UiState>, auth: Auth) -> Response {
    st.render(Some(auth), "Conflicts", "Conflicts", |store, ctx| {
        let me = store.identity().device_id;
        let names = till_names(store)?;
        let current: Vec<_> = store.conflicts()?.into_iter().filter(|c| c.status != ConflictStatus::Resolved).collect();
        Ok(html! {
            h1 { "Conflicts" }
            p class="hint" { "Two tills changed the same thing while apart. Choose which value stays; the choice syncs to every till." }
            @if current.is_empty() {
                p data-testid="no-conflicts" { "No open conflicts." }
            }
            @for c in &current {
                @let what = row_label(store, &c.table, c.row);
                section class="card conflict" data-testid="conflict" aria-label=(format!("Conflict on {what}")) {
                    h2 { (what) " \u{00b7} " (field_label(&c.field)) span class="note" { " (" (c.table) ")" } }
                    p class="note" {
                        @if c.status == ConflictStatus::Open { "Needs a decision: the newest value is shown meanwhile." }
                        @else { "Settled automatically by the tenant's policy; you may still choose." }
                    }
                    div class="values" {
                        @for h in &c.heads {
                            div class={ "value" @if c.chosen == Some(h.write_id) { " chosen" } } {
                                p class="v" { (show_value(ctx, &c.field, &h.value)) }
                                p class="note" {
                                    @if h.device == me { "this till" } @else {
                                        "another till (" (names.get(&h.device).cloned().unwrap_or_else(|| h.device.simple().to_string()[24..].to_string())) ")"
                                    }
                                    " \u{00b7} " (ctx.time(h.wall_ms as i64))
                                    @if c.chosen == Some(h.write_id) { " \u{00b7} shown now" }
                                }
                            }
                        }
                    }
                    div class="resolve" {
                        form method="post" action=(format!("/conflicts/{}/resolve", c.id)) class="inline" {
                            button type="submit" name="keep" value="local" class="primary" { "Keep this till's" }
                            " "
                            button type="submit" name="keep" value="remote" class="secondary" { "Take the other" }
                        }
                        form method="post" action=(format!("/conflicts/{}/resolve", c.id)) class="inline" {
                            input type="hidden" name="keep" value="value";
                            label for=(format!("v-{}", c.id)) { "New value" }
                            " "
                            input id=(format!("v-{}", c.id)) name="value" autocomplete="off";
                            " "
                            button type="submit" class="secondary" { "Enter a value" }
                        }
                    }
                }
            }
        })
    })
    .await
}

#[derive(Deserialize)]
pub struct ResolveForm {
    keep: Option<String>,
    value: Option<String>,
}

/// `POST /conflicts/{id}/resolve`: `keep` is local, remote or value (with `value`).
pub async fn resolve(
    State(st): State<UiState>,
    auth: Auth,
    Path(id): Path<String>,
    Form(f): Form<ResolveForm>,
) -> Response {
    let now = (st.now_ms)();
    let r = st
        .with_store(move |store| {
            let keep = match required(&f.keep, "the choice")? {
                "local" => "local".to_string(),
                "remote" => "remote".to_string(),
                "value" => format!("value={}", required(&f.value, "the new value")?),
                other => {
                    return Err(UiError::Invalid(format!(
                        "'{other}' is not a choice: keep this till's, take the other or enter a value"
                    )));
                }
            };
            let field = store.conflict(&id)?.field;
            let v = store.resolve_conflict(now, &id, &keep)?;
            let cur = store.settings()?.currency;
            let shown = match v.as_i64() {
                Some(m) if field.ends_with("_minor") => cur.display(m),
                _ => v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()),
            };
            Ok(format!("conflict resolved with {shown}; the other tills take it on their next sync"))
        })
        .await;
    st.done(&auth, "/conflicts", r)
}

/// `GET /quarantine`.
pub async fn quarantine(State(st): State<UiState>, auth: Auth) -> Response {
    st.render(Some(auth), "Quarantine", "Quarantine", |store, ctx| {
        let notes = store.quarantine()?;
        Ok(html! {
            h1 { "Quarantine" }
            p class="hint" { "Changes the hub accepted but could not apply, with its reason. They are kept, never lost; the hub's operator can look at them." }
            @if notes.is_empty() {
                p { "No quarantined changes." }
            } @else {
                table class="list" {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Lane" } th scope="col" class="num" { "Change" } th scope="col" { "What it held" } th scope="col" { "Reason" } } }
                    tbody {
                        @for n in &notes {
                            tr {
                                td { (ctx.time(n.at_ms as i64)) }
                                td { (n.lane) }
                                td class="num" { (n.seq) }
                                td { (held(store, &n.lane, n.seq)) }
                                td { (n.reason) }
                            }
                        }
                    }
                }
            }
        })
    })
    .await
}

/// The tables a queued change touched, e.g. "products (2)".
fn held(store: &Store, lane: &str, seq: u64) -> String {
    let Some(lane) = tillsync_core::Lane::parse(lane) else { return String::new() };
    let Ok(changes) = store.outbox(lane, seq.saturating_sub(1), 1) else { return String::new() };
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for c in changes.iter().filter(|c| c.seq == seq) {
        for op in &c.ops {
            let t = match op {
                tillsync_core::Op::Write(w) => w.table.clone(),
                tillsync_core::Op::Insert(r) => r.table.clone(),
            };
            *by.entry(t).or_default() += 1;
        }
    }
    by.iter().map(|(t, n)| format!("{t} ({n})")).collect::<Vec<_>>().join(", ")
}

/// The hub client for the Devices page.
fn hub_client(store: &Store, token: &str) -> Result<HubClient, UiError> {
    let url = store
        .get_meta("hub_url")?
        .ok_or_else(|| UiError::Invalid("this till is standalone: devices are managed on a hub".into()))?;
    let opts = ClientOptions {
        ca_file: store.get_meta("hub_ca_file")?.map(std::path::PathBuf::from),
        insecure: store.get_meta("hub_insecure")?.as_deref() == Some("true"),
        timeout_ms: HUB_TIMEOUT_MS,
        ..ClientOptions::default()
    };
    Ok(HubClient::new(&url, Some(token.to_string()), &opts)?)
}

fn devices_view(
    token_set: bool,
    list: Result<Vec<tillsync_core::wire::DeviceInfo>, String>,
    ctx: &Ctx,
    me: uuid::Uuid,
) -> Markup {
    html! {
        h1 { "Devices" }
        @if !token_set {
            p { "The hub's devices are shown with the tenant's admin token (from " code { "till hub tenant create" } "). It is kept for this session only." }
            form method="post" action="/devices" class="card narrow" {
                label for="admin-token" { "Admin token" }
                input id="admin-token" name="token" type="password" autocomplete="off" required;
                button type="submit" class="primary" { "Show devices" }
            }
        } @else {
            @match &list {
                Err(e) => p class="flash err" role="alert" { (e) },
                Ok(list) => {
                    table class="list" {
                        thead { tr { th scope="col" { "Name" } th scope="col" { "Receipts" } th scope="col" { "Status" } th scope="col" { "Last seen" } th scope="col" { "Clock skew" } th scope="col" { span class="sr" { "Actions" } } } }
                        tbody {
                            @for d in list {
                                tr {
                                    td { (d.name) @if d.device_id == me { " (this till)" } }
                                    td { (d.receipt_prefix) }
                                    td { (d.status) }
                                    td { (d.last_seen_ms.map(|t| ctx.time(t as i64)).unwrap_or_else(|| "never".into())) }
                                    td { (d.skew_ms.map(|s| format!("{:+.1} s", s as f64 / 1000.0)).unwrap_or_default()) }
                                    td {
                                        @if d.status != "revoked" {
                                            form method="post" action="/devices/revoke" class="inline" {
                                                input type="hidden" name="device" value=(d.device_id);
                                                button type="submit" class="danger small" aria-label=(format!("Revoke {}", d.name)) { "Revoke" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form method="post" action="/devices/forget" class="inline" {
                button type="submit" class="secondary" { "Forget the admin token" }
            }
        }
    }
}

/// `GET /devices`.
pub async fn devices(State(st): State<UiState>, auth: Auth) -> Response {
    let token = st.session(&auth, |s| s.admin_token.clone());
    let list = match &token {
        None => Err(String::new()),
        Some(t) => {
            let t = t.clone();
            match st.with_store(move |s| hub_client(s, &t)).await {
                Ok(c) => c.devices().await.map_err(|e| format!("{e}: check the admin token and the hub")),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    st.render(Some(auth), "Devices", "Devices", move |store, ctx| {
        Ok(devices_view(token.is_some(), list, ctx, store.identity().device_id))
    })
    .await
}

#[derive(Deserialize)]
pub struct TokenForm {
    token: Option<String>,
}

/// `POST /devices`: keeps the admin token in the session.
pub async fn devices_token(State(st): State<UiState>, auth: Auth, Form(f): Form<TokenForm>) -> Response {
    let r = required(&f.token, "the admin token").map(str::to_string);
    match r {
        Ok(t) => {
            st.session(&auth, |s| s.admin_token = Some(t));
            Redirect::to("/devices").into_response()
        }
        Err(e) => st.done(&auth, "/devices", Err(e)),
    }
}

/// `POST /devices/forget`.
pub async fn forget_token(State(st): State<UiState>, auth: Auth) -> Response {
    st.session(&auth, |s| s.admin_token = None);
    Redirect::to("/devices").into_response()
}

#[derive(Deserialize)]
pub struct RevokeForm {
    device: Option<String>,
}

/// `POST /devices/revoke`.
pub async fn revoke(State(st): State<UiState>, auth: Auth, Form(f): Form<RevokeForm>) -> Response {
    let token = st.session(&auth, |s| s.admin_token.clone());
    let r = async {
        let token = token.ok_or_else(|| UiError::Invalid("enter the admin token first".into()))?;
        let device = required(&f.device, "the device")?.to_string();
        uuid::Uuid::parse_str(&device).map_err(|_| UiError::Invalid(format!("'{device}' is not a device id")))?;
        let client = st.with_store(move |s| hub_client(s, &token)).await?;
        client.revoke(&device).await?;
        Ok(format!("device {device} revoked: it can no longer sync"))
    }
    .await;
    st.done(&auth, "/devices", r)
}

/// `POST /sync-now`: "Sync now" without JS (with htmx the button posts to
/// `/api/sync` directly).
pub async fn sync_now(State(st): State<UiState>) -> Response {
    let _ = st.sync_now.try_send(());
    Redirect::to("/").into_response()
}
