//! Backup objects kept by the hub for its tills, per tenant and device, as
//! files in a folder: `DATA/backups` for the SQLite hub, or a folder every
//! hub process shares (`till hub serve --backups DIR`) when several processes
//! serve one PostgreSQL database. The hub only stores what a till uploads:
//! objects are age-encrypted on the till, so the hub never sees a key.
//! Counted in the tenant's usage and limited by its backup quota.
//!
//! Layout: `ROOT/<tenant>/<device>/<name>`; uploads are written to
//! `.<name>.partial` first and renamed when complete, so a half-written
//! object is never listed; `ROOT/<tenant>/quota_bytes` holds the quota.

use crate::HubError;
use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// Largest single backup object accepted, in bytes.
pub const OBJECT_LEN_MAX: u64 = 16 << 30;
/// Longest object name.
pub const NAME_LEN_MAX: usize = 128;
/// Most objects listed at once.
pub const LIST_LEN_MAX: usize = 10_000;

/// One stored backup object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupObject {
    pub device_id: Uuid,
    pub name: String,
    pub bytes: u64,
    pub modified_ms: u64,
}

/// The hub's backup folder.
#[derive(Clone, Debug)]
pub struct BackupFiles {
    root: PathBuf,
}

/// Names are plain file names: letters, digits, `.`, `_` and `-`, not
/// starting with a dot (those are the hub's own temporary files).
pub fn check_name(name: &str) -> Result<(), HubError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(HubError::bad(
            "bad_name",
            format!("a backup name is 1 to {NAME_LEN_MAX} letters, digits, '.', '_' or '-', not starting with '.'"),
        ))
    }
}

fn io(e: std::io::Error) -> HubError {
    HubError::Internal(format!("backup storage: {e}"))
}

fn modified_ms(m: &std::fs::Metadata) -> u64 {
    m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as u64)
}

impl BackupFiles {
    /// Backups under `root` (created when first written).
    pub fn new(root: &Path) -> BackupFiles {
        BackupFiles { root: root.to_path_buf() }
    }

    fn tenant_dir(&self, tenant: Uuid) -> PathBuf {
        self.root.join(tenant.to_string())
    }

    fn device_dir(&self, tenant: Uuid, device: Uuid) -> PathBuf {
        self.tenant_dir(tenant).join(device.to_string())
    }

    /// The tenant's backup quota in bytes (0: none).
    pub fn quota_bytes(&self, tenant: Uuid) -> Result<u64, HubError> {
        match std::fs::read_to_string(self.tenant_dir(tenant).join("quota_bytes")) {
            Ok(s) => Ok(s.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(e)),
        }
    }

    /// Sets the tenant's backup quota in bytes (0: none).
    pub fn set_quota_bytes(&self, tenant: Uuid, bytes: u64) -> Result<(), HubError> {
        let dir = self.tenant_dir(tenant);
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = dir.join(".quota_bytes.partial");
        std::fs::write(&tmp, bytes.to_string()).map_err(io)?;
        std::fs::rename(&tmp, dir.join("quota_bytes")).map_err(io)
    }

    /// Objects of a tenant (of one device when given), newest first.
    pub fn list(&self, tenant: Uuid, device: Option<Uuid>) -> Result<Vec<BackupObject>, HubError> {
        let mut out = vec![];
        let devices: Vec<Uuid> = match device {
            Some(d) => vec![d],
            None => match std::fs::read_dir(self.tenant_dir(tenant)) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| Uuid::parse_str(&e.file_name().to_string_lossy()).ok())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
                Err(e) => return Err(io(e)),
            },
        };
        for d in devices {
            let rd = match std::fs::read_dir(self.device_dir(tenant, d)) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            for e in rd.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') {
                    continue;
                }
                let Ok(m) = e.metadata() else { continue };
                if m.is_file() {
                    out.push(BackupObject { device_id: d, name, bytes: m.len(), modified_ms: modified_ms(&m) });
                }
            }
        }
        out.sort_by(|a, b| b.modified_ms.cmp(&a.modified_ms).then_with(|| a.name.cmp(&b.name)));
        out.truncate(LIST_LEN_MAX);
        Ok(out)
    }

    /// Bytes a tenant's backups take (complete objects only).
    pub fn used_bytes(&self, tenant: Uuid) -> Result<u64, HubError> {
        Ok(self.list(tenant, None)?.iter().map(|o| o.bytes).sum())
    }

    /// The file of an object, if it exists.
    pub fn path(&self, tenant: Uuid, device: Uuid, name: &str) -> Result<PathBuf, HubError> {
        check_name(name)?;
        let p = self.device_dir(tenant, device).join(name);
        if p.is_file() { Ok(p) } else { Err(HubError::NotFound(format!("backup {name}"))) }
    }

    /// Stores an uploaded object: streamed to a temporary file (never held in
    /// memory), checked against the object limit and the tenant's quota as
    /// it arrives, synced, then renamed into place.
    pub async fn put(&self, tenant: Uuid, device: Uuid, name: &str, body: Body) -> Result<BackupObject, HubError> {
        check_name(name)?;
        let quota = self.quota_bytes(tenant)?;
        // Replacing an object frees its bytes.
        let replaced = self.path(tenant, device, name).ok().and_then(|p| p.metadata().ok()).map_or(0, |m| m.len());
        let used = self.used_bytes(tenant)?.saturating_sub(replaced);
        let dir = self.device_dir(tenant, device);
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        let tmp = dir.join(format!(".{name}.partial"));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut written: u64 = 0;
        let mut stream = body.into_data_stream();
        let result: Result<(), HubError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk: Bytes = chunk.map_err(|_| HubError::bad("bad_body", "the upload was cut short"))?;
                written += chunk.len() as u64;
                if written > OBJECT_LEN_MAX {
                    return Err(HubError::TooLarge);
                }
                if quota > 0 && used + written > quota {
                    return Err(HubError::Quota(format!(
                        "the tenant's backup quota of {quota} bytes is used up ({used} bytes stored): prune old backups or raise the quota with `till hub quota --backup-bytes`"
                    )));
                }
                file.write_all(&chunk).await.map_err(io)?;
            }
            // An empty object is never a backup (every one starts with its
            // header): refused, so that a broken upload cannot replace a good one.
            if written == 0 {
                return Err(HubError::bad("empty_body", "a backup object is never empty: send the object as the body"));
            }
            file.sync_all().await.map_err(io)?;
            Ok(())
        }
        .await;
        drop(file);
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let target = dir.join(name);
        tokio::fs::rename(&tmp, &target).await.map_err(io)?;
        // The rename is durable once the folder is synced.
        if let Ok(d) = tokio::fs::File::open(&dir).await {
            let _ = d.sync_all().await;
        }
        let m = tokio::fs::metadata(&target).await.map_err(io)?;
        Ok(BackupObject { device_id: device, name: name.to_string(), bytes: m.len(), modified_ms: modified_ms(&m) })
    }

    /// Deletes an object.
    pub fn delete(&self, tenant: Uuid, device: Uuid, name: &str) -> Result<(), HubError> {
        let p = self.path(tenant, device, name)?;
        std::fs::remove_file(p).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        for good in ["2026-11-27T10-00-00Z.tsb", "a", "x_1.manifest.json"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(NAME_LEN_MAX + 1);
        for bad in ["", ".hidden", "../etc/passwd", "a/b", "a b", "ä", long.as_str()] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
