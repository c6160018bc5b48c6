//! Point-in-time export: a store's till state as it was at a moment of the
//! hub's clock, rebuilt from the tenant's change log into a new till folder
//! that the read commands open (`till status`, `till sales list`,
//! `till report`) and every writing command refuses (mode `export`).
//!
//! The merged state is a function of the set of operations received, not
//! of their order, so the state at `at` is every operation of the store's
//! scope the hub held at `at`. It is computed as the current merged state
//! (the bootstrap snapshot of the store, which keeps superseded writes)
//! minus the operations of log entries received after `at`: that stays right
//! after compaction, as long as `at` is not older than the log still holds.
//! Without compaction it is the same set as replaying, in log order, every
//! entry received at or before `at`.

use crate::HubError;
use crate::sqlite::{SqliteHub, horizon};
use rusqlite::params;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;
use tillsync_core::wire::WireOp;
use tillsync_core::{IdGen, Op, derived_id};
use tillsync_store::{Identity, Store};
use uuid::Uuid;

/// The identity mode of an exported till: read-only.
pub const EXPORT_MODE: &str = "export";
/// Receipt prefix of an exported till (it never issues receipts).
pub const EXPORT_PREFIX: &str = "EXP";

/// What an export wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Exported {
    pub tenant_id: Uuid,
    pub store_id: Uuid,
    pub at_ms: u64,
    pub device_id: Uuid,
    /// Log entries of the store's scope received at or before `at_ms`
    /// (those still in the log).
    pub entries: u64,
    /// Log entries received later, left out.
    pub entries_after: u64,
    /// Operations applied to the new folder.
    pub ops: u64,
    /// Compaction horizon of the log (0: never compacted).
    pub horizon: u64,
    pub state_digest: String,
}

/// An operation's identity: writes and ledger rows are recognised by their
/// own ids wherever they travel.
fn op_key(op: &Op) -> (bool, String) {
    match op {
        Op::Write(w) => (true, w.id.to_string()),
        Op::Insert(r) => (false, format!("{}/{}", r.table, r.id)),
    }
}

fn bad(code: &'static str, message: String) -> HubError {
    HubError::BadRequest { code, message }
}

impl SqliteHub {
    /// Rebuilds store `store` of `tenant` as it was at `at_ms` (hub receive
    /// time, milliseconds since the epoch) into the new folder `out`.
    /// Refused when `out` exists, when the tenant or store is unknown, and
    /// when `at_ms` is older than the log still holds after compaction.
    /// The folder's database is encrypted as `spec` says (`till hub export`
    /// gives it a key file of its own by default).
    pub fn export_at(
        &self,
        tenant: Uuid,
        store: Uuid,
        at_ms: u64,
        out: &Path,
        spec: &tillsync_store::keys::KeySpec,
    ) -> Result<Exported, HubError> {
        if out.exists() {
            return Err(bad("out_exists", format!("{} exists: export into a new folder", out.display())));
        }
        let t = self.tenant(tenant)?;
        self.tenant_of_store(tenant, store)?;
        // Read the state and the log under the tenant's lock, so they match.
        let (snapshot, before, after, horizon_pos, entries, entries_after) = {
            let s = t.lock();
            let conn = s.connection();
            let horizon_pos = horizon(conn)?;
            if horizon_pos > 0 {
                // Compacted entries were received no later than the first
                // entry kept (one hub clock); entries stamped 0 are the hub's
                // own, logged when the tenant was opened, and say nothing.
                let first_kept: Option<i64> = conn.query_row(
                    "SELECT min(received_ms) FROM hub_log WHERE pos > ?1 AND received_ms > 0",
                    [horizon_pos as i64],
                    |r| r.get(0),
                )?;
                let ok = first_kept.is_some_and(|f| at_ms >= f as u64);
                if !ok {
                    let since = match first_kept {
                        Some(f) => format!(
                            "the log holds changes received from {} ({f} ms) on: export at or after that",
                            fmt_ms(f as u64)
                        ),
                        None => "no entry is left after it: only the current state exists".into(),
                    };
                    return Err(bad(
                        "before_horizon",
                        format!(
                            "the hub compacted this tenant's log up to position {horizon_pos}, so the state at {} ({at_ms} ms) is gone; {since}",
                            fmt_ms(at_ms)
                        ),
                    ));
                }
            }
            let snapshot = s.snapshot_ops(Some(store))?;
            let mut before: HashSet<(bool, String)> = HashSet::new();
            let mut after: HashSet<(bool, String)> = HashSet::new();
            let (mut entries, mut entries_after) = (0u64, 0u64);
            let mut st =
                conn.prepare("SELECT ops, received_ms FROM hub_log WHERE store IS NULL OR store = ?1 ORDER BY pos")?;
            let mut rows = st.query(params![store.to_string()])?;
            while let Some(r) = rows.next()? {
                let ops: Vec<WireOp> = serde_json::from_str(&r.get::<_, String>(0)?)?;
                let received = r.get::<_, i64>(1)? as u64;
                let set = if received <= at_ms {
                    entries += 1;
                    &mut before
                } else {
                    entries_after += 1;
                    &mut after
                };
                for w in &ops {
                    let op = Op::try_from(w).map_err(|e| HubError::Internal(format!("log entry: {e}")))?;
                    set.insert(op_key(&op));
                }
            }
            (snapshot, before, after, horizon_pos, entries, entries_after)
        };
        // An operation received later but also earlier (a relay) stays.
        let ops: Vec<Op> = snapshot
            .into_iter()
            .filter(|op| {
                let k = op_key(op);
                !after.contains(&k) || before.contains(&k)
            })
            .collect();
        let key = format!("{store}@{at_ms}");
        let device_id = derived_id(tenant, EXPORT_MODE, &key);
        let identity = Identity {
            tenant_id: tenant,
            store_id: store,
            device_id,
            receipt_prefix: EXPORT_PREFIX.into(),
            name: format!("export of store {store} at {}", fmt_ms(at_ms)),
            mode: EXPORT_MODE.into(),
        };
        // The export makes no ids of its own; a seed from its key is enough.
        let seed: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let r = (|| {
            let mut st =
                Store::create_keyed(out, identity, tillsync_core::Schema::standard(), IdGen::from_seed(seed), spec)?;
            st.apply_pulled(&ops, 0)?;
            st.set_meta("export_at_ms", &at_ms.to_string())?;
            let digest = st.digests_for(Some(store))?.0;
            Ok::<_, tillsync_store::StoreError>(digest)
        })();
        let state_digest = match r {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir_all(out);
                return Err(bad("export_failed", format!("cannot write the export into {}: {e}", out.display())));
            }
        };
        Ok(Exported {
            tenant_id: tenant,
            store_id: store,
            at_ms,
            device_id,
            entries,
            entries_after,
            ops: ops.len() as u64,
            horizon: horizon_pos,
            state_digest,
        })
    }
}

/// Milliseconds since the epoch as an RFC 3339 UTC time, for messages.
fn fmt_ms(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
        .map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::fmt_ms;

    #[test]
    fn formats_times() {
        assert_eq!(fmt_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
