//! The till's full status: the store's figures plus the sync state, the
//! network view and the progress of a running round. The same document is
//! printed by `till status --json` and served on `/api/status`.

use crate::config::Config;
use crate::net;
use serde_json::{Value, json};
use tillsync_store::{Store, StoreError};

/// The sync state shown to a cashier.
pub fn state(
    standalone: bool,
    revoked: bool,
    stalled: bool,
    lane_error: bool,
    reachable: Option<bool>,
    running: bool,
    pending: i64,
) -> &'static str {
    if revoked {
        "revoked"
    } else if stalled || lane_error {
        "error"
    } else if standalone || reachable == Some(false) {
        "offline"
    } else if running {
        "syncing"
    } else if pending > 0 {
        "pending"
    } else {
        "synced"
    }
}

fn meta_u64(store: &Store, key: &str) -> Result<u64, StoreError> {
    Ok(store.get_meta(key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// The full status document.
pub fn full(store: &Store, config: &Config) -> Result<Value, StoreError> {
    let s = store.status()?;
    let standalone = s.hub_url.is_none();
    let reachable = match store.get_meta("net_reachable")?.as_deref() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    };
    let failures = meta_u64(store, "failures")?;
    let stalled = failures >= config.sync.retry_limit as u64;
    let lane_error =
        s.last_error.as_deref().is_some_and(|e| !e.is_empty()) && reachable != Some(false) && !stalled && failures == 0;
    // A round in progress is not in the database (see `running`): the side
    // file names the process running it, if that process lives.
    let round = crate::running::current(store.path());
    let running = round.is_some();
    let pending_total = s.pending_total;
    let st = state(standalone, s.hub_status == "revoked", stalled, lane_error, reachable, running, pending_total);
    let progress = round.and_then(|r| r.progress).map(|p| json!({"done": p.done, "total": p.total}));
    let network = net::current(&config.network.metered, if standalone { None } else { reachable });
    let mut bytes = serde_json::Map::new();
    let mut bytes_in = serde_json::Map::new();
    for lane in tillsync_core::Lane::ALL {
        bytes.insert(lane.to_string(), json!(meta_u64(store, &format!("bytes_sent_{lane}"))?));
        bytes_in.insert(lane.to_string(), json!(meta_u64(store, &format!("bytes_received_{lane}"))?));
    }
    let mut v = serde_json::to_value(&s).map_err(|e| StoreError::Io(e.to_string()))?;
    let o = v.as_object_mut().expect("status is an object");
    o.insert("state".into(), json!(st));
    o.insert("progress".into(), progress.unwrap_or(Value::Null));
    o.insert(
        "network".into(),
        json!({"type": network.kind, "metered": network.metered, "reachable": network.reachable,
               "signal": network.signal, "hub": network.hub}),
    );
    o.insert("last_sync_at".into(), json!(s.last_sync_ms));
    // Offline for longer than the tenant allows: say so.
    let settings = store.settings()?;
    let since = s.last_sync_ms.or(store.get_meta("enrolled_ms")?.and_then(|v| v.parse().ok()));
    let offline_warning = match (standalone, since) {
        (false, Some(t)) if settings.offline_warn_after_s > 0 && reachable == Some(false) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let secs = now.saturating_sub(t) / 1_000;
            (secs as i64 > settings.offline_warn_after_s).then(|| {
                format!(
                    "this till has not reached the hub for {} min: check the network; sales are kept and will sync",
                    secs / 60
                )
            })
        }
        _ => None,
    };
    o.insert("offline_warning".into(), json!(offline_warning));
    o.insert("encryption".into(), json!(store.encryption()));
    o.insert("pushed".into(), json!(meta_u64(store, "pushed_total")?));
    o.insert("pulled".into(), json!(meta_u64(store, "pulled_total")?));
    o.insert("clock_skew_ms".into(), json!(s.skew_ms));
    o.insert("failures".into(), json!(failures));
    o.insert("bytes_sent".into(), Value::Object(bytes));
    o.insert("bytes_received".into(), json!(meta_u64(store, "bytes_received")?));
    o.insert("bytes_received_by_lane".into(), Value::Object(bytes_in));
    o.insert("last_backup_at".into(), json!(store.get_meta("last_backup_at")?.and_then(|v| v.parse::<u64>().ok())));
    o.insert("last_backup_error".into(), json!(store.get_meta("last_backup_error")?.filter(|e| !e.is_empty())));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_in_priority_order() {
        assert_eq!(state(false, true, true, true, Some(false), true, 5), "revoked");
        assert_eq!(state(false, false, true, false, Some(false), true, 5), "error");
        assert_eq!(state(false, false, false, true, Some(true), false, 0), "error");
        assert_eq!(state(false, false, false, false, Some(false), false, 5), "offline");
        assert_eq!(state(true, false, false, false, None, false, 5), "offline");
        assert_eq!(state(false, false, false, false, Some(true), true, 5), "syncing");
        assert_eq!(state(false, false, false, false, None, false, 5), "pending");
        assert_eq!(state(false, false, false, false, Some(true), false, 0), "synced");
    }
}
