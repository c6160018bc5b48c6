//! The sync status indicator in every page's header: the state as an icon
//! and a word, the network type and a metered badge, and details that
//! expand. The word is derived from the node's full status document
//! (`tillsync_node::status::full`) by a pure function, and the rendered
//! HTML is pushed to every open page over server-sent events.
//!
//! The details never contain the state words themselves, so a page's
//! indicator text names exactly one state.

use crate::UiState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt;
use maud::{Markup, html};
use serde_json::Value;
use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::watch;

/// How often the indicator looks for a change, in milliseconds (it must
/// follow the till within a second).
pub const INDICATOR_POLL_MS: u64 = 250;

/// The state shown to the cashier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncState {
    Synced,
    /// A round is running; (done, total) when known.
    Syncing(Option<(u64, u64)>),
    /// Changes wait for the hub (also while it is unreachable).
    Pending(i64),
    Offline,
    Error,
    Revoked,
}

impl SyncState {
    /// The word (with the count or progress): "Synced", "3 pending", ...
    pub fn word(&self) -> String {
        match self {
            SyncState::Synced => "Synced".into(),
            SyncState::Syncing(None) => "Syncing".into(),
            SyncState::Syncing(Some((d, t))) => format!("Syncing {d}/{t}"),
            SyncState::Pending(n) => format!("{n} pending"),
            SyncState::Offline => "Offline".into(),
            SyncState::Error => "Error".into(),
            SyncState::Revoked => "Revoked".into(),
        }
    }

    /// The icon beside the word (decorative: the word says it).
    pub fn icon(&self) -> &'static str {
        match self {
            SyncState::Synced => "\u{2714}",
            SyncState::Syncing(_) => "\u{21bb}",
            SyncState::Pending(_) => "\u{2191}",
            SyncState::Offline => "\u{25cb}",
            SyncState::Error => "\u{26a0}",
            SyncState::Revoked => "\u{26d4}",
        }
    }

    /// A CSS class for the state's colour.
    pub fn class(&self) -> &'static str {
        match self {
            SyncState::Synced => "synced",
            SyncState::Syncing(_) => "syncing",
            SyncState::Pending(_) => "pending",
            SyncState::Offline => "offline",
            SyncState::Error => "error",
            SyncState::Revoked => "revoked",
        }
    }
}

/// The state from a status document. The node's own order holds (revoked,
/// error, ...), with two exceptions for the cashier: changes waiting while
/// the hub is unreachable show as "N pending" (the count matters more than
/// the reason; with nothing waiting it is "Offline"), and a hub known to be
/// unreachable shows as that even past the retry limit, where the node
/// says `error` (the failed rounds are in the details). A standalone till
/// has no hub, so it is always "Offline".
pub fn sync_state(status: &Value) -> SyncState {
    let pending = status["pending_total"].as_i64().unwrap_or(0);
    let standalone = status["hub_url"].is_null() || status["mode"] == "standalone";
    let unreachable = status["network"]["reachable"] == Value::Bool(false);
    let progress = status["progress"]["done"].as_u64().zip(status["progress"]["total"].as_u64());
    match status["state"].as_str().unwrap_or("") {
        "revoked" => SyncState::Revoked,
        "error" if unreachable && !standalone && pending > 0 => SyncState::Pending(pending),
        "error" if unreachable && !standalone => SyncState::Offline,
        "error" => SyncState::Error,
        _ if standalone => SyncState::Offline,
        "syncing" => SyncState::Syncing(progress),
        _ if pending > 0 => SyncState::Pending(pending),
        "offline" => SyncState::Offline,
        "synced" | "pending" => SyncState::Synced,
        _ => SyncState::Error,
    }
}

fn network_label(kind: &str) -> &'static str {
    match kind {
        "wifi" => "Wi-Fi",
        "cellular" => "Cellular",
        "ethernet" => "Ethernet",
        "none" => "No link",
        _ => "Other link",
    }
}

/// The line in the header: icon, word, network, metered badge.
pub fn summary(status: &Value) -> Markup {
    let s = sync_state(status);
    let net = &status["network"];
    html! {
        span class={"state state-" (s.class())} {
            span class="icon" aria-hidden="true" { (s.icon()) }
            " "
            span class="word" data-testid="sync-word" { (s.word()) }
        }
        " "
        span class="net" { (network_label(net["type"].as_str().unwrap_or(""))) }
        @if net["metered"].as_bool() == Some(true) {
            " " span class="badge metered" { "metered" }
        }
    }
}

fn when(ms: Option<u64>, tz: &jiff::tz::TimeZone) -> String {
    match ms.and_then(|m| jiff::Timestamp::from_millisecond(m as i64).ok()) {
        Some(t) => t.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M:%S").to_string(),
        None => "never".into(),
    }
}

/// The expanded details.
pub fn details(status: &Value, tz: &jiff::tz::TimeZone) -> Markup {
    let hub = match status["network"]["hub"].as_str().unwrap_or("") {
        _ if status["hub_url"].is_null() => "standalone till: no hub to sync with",
        "reachable" => "answering",
        "link_up_hub_down" => "not answering (the network link is up)",
        "no_link" => "not answering (no network link)",
        _ => "not checked yet",
    };
    let skew = match status["clock_skew_ms"].as_i64() {
        Some(ms) => format!("{:+.1} s", ms as f64 / 1_000.0),
        None => "not measured yet".into(),
    };
    let lanes: Vec<(String, i64)> = status["pending"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0))).collect())
        .unwrap_or_default();
    html! {
        dl class="sync-facts" {
            dt { "Hub" } dd { (hub) }
            @if let (Some(d), Some(t)) = (status["progress"]["done"].as_u64(), status["progress"]["total"].as_u64()) {
                dt { "Progress" } dd { (d) " of " (t) " changes" }
            }
            dt { "Waiting to send, per lane" }
            dd {
                @if lanes.is_empty() { "nothing" }
                @for (i, (lane, n)) in lanes.iter().enumerate() {
                    @if i > 0 { ", " }
                    (lane) ": " (n)
                }
            }
            dt { "Last successful sync" } dd { (when(status["last_sync_at"].as_u64(), tz)) }
            dt { "Last failure" } dd { (status["last_error"].as_str().unwrap_or("none")) }
            @if status["failures"].as_u64().unwrap_or(0) > 0 {
                dt { "Failed rounds in a row" } dd { (status["failures"].as_u64().unwrap_or(0)) }
            }
            dt { "Changes sent / received" } dd { (status["pushed"].as_u64().unwrap_or(0)) " / " (status["pulled"].as_u64().unwrap_or(0)) }
            dt { "Open conflicts" } dd { (status["conflicts_open"].as_i64().unwrap_or(0)) }
            dt { "Quarantined changes" } dd { (status["quarantined"].as_i64().unwrap_or(0)) }
            dt { "Clock skew" } dd { (skew) }
            dt { "Database" } dd {
                @match status["encryption"].as_str() {
                    Some("sqlcipher") => "encrypted (SQLCipher)",
                    Some("plaintext") => "not encrypted",
                    _ => "unknown",
                }
            }
        }
        @for w in [&status["offline_warning"], &status["clock_warning"]] {
            @if let Some(w) = w.as_str() { p class="warn" { (w) } }
        }
    }
}

/// The whole indicator, as first rendered into a page; htmx then swaps
/// the summary and the details as the stream sends them.
pub fn indicator(rendered: &(String, String)) -> Markup {
    html! {
        div class="sync" data-testid="sync-indicator" hx-ext="sse" sse-connect="/ui/status/stream" {
            details class="sync-more" {
                summary aria-label="Sync status (show details)" {
                    span class="sync-summary" sse-swap="summary" aria-live="polite" { (maud::PreEscaped(&rendered.0)) }
                }
                div class="sync-details" sse-swap="details" { (maud::PreEscaped(&rendered.1)) }
            }
            // Without JS the form posts to the UI (which redirects back);
            // with htmx it posts to the local API and stays on the page.
            form method="post" action="/sync-now" hx-post="/api/sync" hx-swap="none" {
                button type="submit" class="sync-now" { "Sync now" }
            }
        }
    }
}

/// The indicator's summary and details for the till right now.
pub(crate) fn render_now(store: &tillsync_store::Store, config: &tillsync_node::config::Config) -> (String, String) {
    match tillsync_node::status::full(store, config) {
        Ok(status) => {
            let tz = store
                .settings()
                .ok()
                .and_then(|s| jiff::tz::TimeZone::get(&s.time_zone).ok())
                .unwrap_or(jiff::tz::TimeZone::UTC);
            (summary(&status).into_string(), details(&status, &tz).into_string())
        }
        Err(e) => {
            let err = serde_json::json!({"state": "error", "last_error": e.to_string()});
            (summary(&err).into_string(), details(&err, &jiff::tz::TimeZone::UTC).into_string())
        }
    }
}

/// One poller per UI renders the indicator and hands it to every open
/// page, so the cost does not grow with the number of pages.
#[derive(Default)]
pub(crate) struct Feed {
    tx: OnceLock<watch::Sender<(String, String)>>,
}

impl Feed {
    fn subscribe(&self, st: &UiState) -> watch::Receiver<(String, String)> {
        self.tx
            .get_or_init(|| {
                let (tx, _) = watch::channel((String::new(), String::new()));
                let (tx2, st) = (tx.clone(), st.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(INDICATOR_POLL_MS));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        if tx2.receiver_count() == 0 {
                            continue;
                        }
                        let (store, config) = (st.status_store.clone(), st.config.clone());
                        let r = tokio::task::spawn_blocking(move || store.lock().ok().map(|s| render_now(&s, &config)))
                            .await;
                        if let Ok(Some(now)) = r {
                            tx2.send_if_modified(|cur| {
                                let changed = *cur != now;
                                if changed {
                                    *cur = now;
                                }
                                changed
                            });
                        }
                    }
                });
                tx
            })
            .subscribe()
    }
}

/// `GET /ui/status/stream`: the indicator's HTML, sent when it changes
/// (events `summary` and `details`).
pub async fn stream(State(st): State<UiState>) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = st.feed.subscribe(&st);
    // Only changes: the page was rendered with a fresh indicator, and the
    // feed's value may be older (nobody was watching a moment ago).
    let s = tokio_stream::wrappers::WatchStream::from_changes(rx)
        .filter(|(summary, _)| std::future::ready(!summary.is_empty()))
        .flat_map(|(summary, details)| {
            futures_util::stream::iter([
                Ok(Event::default().event("summary").data(summary)),
                Ok(Event::default().event("details").data(details)),
            ])
        });
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(state: &str, pending: i64) -> Value {
        json!({"state": state, "pending_total": pending, "hub_url": "http://127.0.0.1:1", "mode": "hub",
               "network": {"type": "wifi", "metered": true, "hub": "reachable"}, "progress": null})
    }

    #[test]
    fn words_for_each_state() {
        assert_eq!(sync_state(&status("synced", 0)).word(), "Synced");
        assert_eq!(sync_state(&status("pending", 3)).word(), "3 pending");
        assert_eq!(sync_state(&status("pending", 1)).word(), "1 pending");
        assert_eq!(sync_state(&status("offline", 0)).word(), "Offline");
        assert_eq!(sync_state(&status("offline", 1)).word(), "1 pending", "waiting while offline");
        assert_eq!(sync_state(&status("syncing", 4)).word(), "Syncing");
        let mut s = status("syncing", 4);
        s["progress"] = json!({"done": 2, "total": 4});
        assert_eq!(sync_state(&s).word(), "Syncing 2/4");
        assert_eq!(sync_state(&status("error", 2)).word(), "Error");
        // Past the retry limit with the hub unreachable: still the cashier's view.
        let mut stalled = status("error", 2);
        stalled["network"]["reachable"] = json!(false);
        assert_eq!(sync_state(&stalled).word(), "2 pending");
        stalled["pending_total"] = json!(0);
        assert_eq!(sync_state(&stalled).word(), "Offline");
        assert_eq!(sync_state(&status("revoked", 2)).word(), "Revoked");
        let mut standalone = status("offline", 9);
        standalone["hub_url"] = Value::Null;
        assert_eq!(sync_state(&standalone), SyncState::Offline);
    }

    #[test]
    fn summary_shows_network_and_metered_and_details_name_no_state() {
        let s = status("synced", 0);
        let html = summary(&s).into_string();
        assert!(html.contains("Synced") && html.contains("Wi-Fi") && html.contains("metered"), "{html}");
        let d = details(&json!({"pending": {"sales": 1}, "last_error": "hub down"}), &jiff::tz::TimeZone::UTC)
            .into_string();
        for word in ["Synced", "Syncing", "pending", "Offline", "Error", "Revoked"] {
            assert!(!d.contains(word), "details contain {word}: {d}");
        }
    }
}
