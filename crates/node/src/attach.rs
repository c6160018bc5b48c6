//! `till node attach`: a standalone till joins a hub and keeps its history.
//! The till is enrolled as a new device of a hub store, bootstrapped from the
//! hub, and its own data is replayed into the new identity: ledger rows keep
//! their ids (so nothing can be counted twice) and move to the hub's store;
//! records that the hub does not have yet are created; records keyed by a
//! natural key (SKU, category, tax code, settings, policy target) move to the
//! hub tenant's ids. The old folder is kept beside the new one.

use crate::client::ClientOptions;
use crate::sync::{SyncError, enrol_and_bootstrap_keyed};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tillsync_core::schema::{Kind, tables};
use tillsync_core::{IdGen, Schema, derived_id};
use tillsync_store::Store;
use tillsync_store::keys::KeySpec;
use uuid::Uuid;

/// Ledger rows per replayed change.
const REPLAY_BATCH_LEN: usize = 500;

/// The natural key of a record row, for tables whose ids derive from one.
fn natural_key(table: &str, data: &Value) -> Option<(&'static str, String)> {
    let key = |f: &str| data.get(f).and_then(Value::as_str).map(str::to_string);
    match table {
        tables::PRODUCTS => Some((tables::PRODUCTS, key("sku")?)),
        tables::CATEGORIES => Some((tables::CATEGORIES, key("name")?)),
        tables::TAX_RATES => Some((tables::TAX_RATES, key("code")?)),
        tables::POLICIES => Some((tables::POLICIES, key("target")?)),
        tables::SETTINGS => Some((tables::SETTINGS, "tenant".to_string())),
        _ => None,
    }
}

/// What an attach did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachReport {
    pub device_id: Uuid,
    pub receipt_prefix: String,
    pub records_created: u64,
    pub ledger_rows: u64,
    /// Where the standalone till's folder was kept.
    pub old_data: PathBuf,
}

/// Attaches the standalone till in `dir` to a hub; the attached till's
/// database gets a new key in `DIR/till.key`.
pub async fn attach(
    dir: &Path,
    url: &str,
    code: &str,
    opts: &ClientOptions,
    ids: IdGen,
    now_ms: impl Fn() -> u64,
) -> Result<AttachReport, SyncError> {
    attach_keyed(dir, url, code, opts, ids, now_ms, &KeySpec::Folder).await
}

/// [`attach`] with the attached till's key made as `spec` says (the old
/// folder keeps its own key).
pub async fn attach_keyed(
    dir: &Path,
    url: &str,
    code: &str,
    opts: &ClientOptions,
    ids: IdGen,
    now_ms: impl Fn() -> u64,
    spec: &KeySpec,
) -> Result<AttachReport, SyncError> {
    let old = Store::open(dir, Schema::standard(), IdGen::from_u64(now_ms()))?;
    if old.identity().mode != "standalone" {
        return Err(SyncError::Config(format!("{} already syncs with a hub", dir.display())));
    }
    let old_tenant = old.identity().tenant_id;
    let name = old.identity().name.clone();
    let staging = dir.with_extension("attaching");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| SyncError::Config(format!("cannot clear {}: {e}", staging.display())))?;
    }
    let mut new = enrol_and_bootstrap_keyed(&staging, url, code, &name, opts, ids, spec).await?;
    let tenant = new.identity().tenant_id;
    let mut records_created = 0u64;
    let schema = old.schema().clone();
    for decl in schema.tables().iter().filter(|t| t.kind == Kind::Record) {
        for (row, data) in old.records_of(&decl.name)? {
            let target = match natural_key(&decl.name, &data) {
                Some((kind, key)) if row == derived_id(old_tenant, kind, &key) => derived_id(tenant, kind, &key),
                _ => row,
            };
            // The hub's catalogue wins where it already has the row.
            if matches!(new.record_state(&decl.name, target)?, Some((true, _))) {
                continue;
            }
            let fields: Vec<(String, Value)> =
                data.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
            let refs: Vec<(&str, Value)> = fields.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            new.write(now_ms(), |l| l.create(&decl.name, target, &refs))?;
            records_created += 1;
        }
    }
    let mut ledger_rows = 0u64;
    for decl in schema.tables().iter().filter(|t| t.kind == Kind::Ledger) {
        // Oldest first, so counts keep their order (the newest count wins).
        let rows = old.ledger_rows(&decl.name)?;
        for chunk in rows.chunks(REPLAY_BATCH_LEN) {
            new.write(now_ms(), |l| {
                for r in chunk {
                    l.insert_with_id(&decl.name, r.id, r.data.clone())?;
                }
                Ok(())
            })?;
            ledger_rows += chunk.len() as u64;
        }
    }
    let report = AttachReport {
        device_id: new.identity().device_id,
        receipt_prefix: new.identity().receipt_prefix.clone(),
        records_created,
        ledger_rows,
        old_data: dir.with_extension(format!("standalone-{}", now_ms())),
    };
    drop(new);
    drop(old);
    std::fs::rename(dir, &report.old_data)
        .map_err(|e| SyncError::Config(format!("cannot move {} aside: {e}", dir.display())))?;
    std::fs::rename(&staging, dir)
        .map_err(|e| SyncError::Config(format!("cannot move the attached till into place: {e}")))?;
    Ok(report)
}
