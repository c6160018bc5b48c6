//! The hub as a backup destination (`--to hub`): a till uploads its
//! encrypted backups to its own hub, with its device token; once the till is
//! gone, the tenant's admin lists and fetches them with the admin token
//! (`--from hub --hub URL --token ADMIN [--device ID]`). The hub stores them
//! per tenant and device, counts them in usage and holds the backup quota.
//! The object goes up first and the manifest last, so a half-written backup
//! is never listed; both are streamed.

use crate::HubClient;
use crate::client::BackupObjectInfo;
use futures_util::StreamExt;
use std::io::Read;
use std::path::Path;
use tillsync_backup::{BackupError, Destination, MANIFEST_EXT, Manifest, OBJECT_EXT};
use uuid::Uuid;

/// Who is asking: the till itself, or the tenant's admin.
#[derive(Clone, Copy, Debug)]
pub enum HubBackupsAs {
    /// The till's device token: its own backups; may publish and remove.
    Device,
    /// The admin token: the tenant's backups (of one device when given);
    /// read only.
    Admin { device: Option<Uuid> },
}

/// Backups kept by a hub.
pub struct HubBackups {
    client: HubClient,
    who: HubBackupsAs,
    rt: std::sync::Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for HubBackups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubBackups").field("hub", &self.client.base()).field("who", &self.who).finish()
    }
}

fn hub_err(what: &str) -> impl Fn(crate::SyncError) -> BackupError + '_ {
    move |e| match e {
        crate::SyncError::Hub { status: 404, .. } => BackupError::NotFound(what.to_string()),
        e => BackupError::Io(format!("{what}: {e}")),
    }
}

impl HubBackups {
    /// Backups on the hub `client` talks to, as `who`.
    pub fn new(client: HubClient, who: HubBackupsAs) -> Result<HubBackups, BackupError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BackupError::Io(format!("cannot start the HTTP runtime: {e}")))?;
        Ok(HubBackups { client, who, rt: std::sync::Arc::new(rt) })
    }

    fn list_path(&self) -> String {
        match self.who {
            HubBackupsAs::Device => "/v1/backups".into(),
            HubBackupsAs::Admin { device: None } => "/v1/admin/backups".into(),
            HubBackupsAs::Admin { device: Some(d) } => format!("/v1/admin/backups?device={d}"),
        }
    }

    fn file_path(&self, device: Uuid, name: &str) -> String {
        match self.who {
            HubBackupsAs::Device => format!("/v1/backups/{name}"),
            HubBackupsAs::Admin { .. } => format!("/v1/admin/backups/{device}/{name}"),
        }
    }

    fn objects(&self) -> Result<Vec<BackupObjectInfo>, BackupError> {
        self.rt.block_on(self.client.list_backups(&self.list_path())).map_err(hub_err("cannot list the hub's backups"))
    }

    fn read_file(&self, device: Uuid, name: &str) -> Result<Vec<u8>, BackupError> {
        self.rt.block_on(async {
            let resp = self.client.get_backup(&self.file_path(device, name)).await.map_err(hub_err(name))?;
            resp.bytes().await.map(|b| b.to_vec()).map_err(|e| BackupError::Io(format!("{name}: {e}")))
        })
    }

    fn only_device(&self, what: &str) -> Result<(), BackupError> {
        match self.who {
            HubBackupsAs::Device => Ok(()),
            HubBackupsAs::Admin { .. } => Err(BackupError::Invalid(format!(
                "{what} on the hub needs the till's own token: run it on the till (`--data DIR`)"
            ))),
        }
    }
}

impl Destination for HubBackups {
    fn publish(&self, manifest: &Manifest, object: &Path) -> Result<(), BackupError> {
        self.only_device("creating a backup")?;
        let id = &manifest.backup_id;
        self.rt
            .block_on(self.client.put_backup(&format!("{id}.{OBJECT_EXT}"), object))
            .map_err(hub_err("cannot upload the backup to the hub"))?;
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Io(e.to_string()))?;
        self.rt
            .block_on(self.client.put_backup_bytes(&format!("{id}.{MANIFEST_EXT}"), text))
            .map_err(hub_err("cannot upload the manifest to the hub"))
    }

    fn list(&self) -> Result<Vec<Manifest>, BackupError> {
        let objects = self.objects()?;
        let mut out = vec![];
        for o in &objects {
            let Some(id) = o.name.strip_suffix(&format!(".{MANIFEST_EXT}")) else { continue };
            // A manifest without its object is not a backup.
            let object = format!("{id}.{OBJECT_EXT}");
            if !objects.iter().any(|x| x.device_id == o.device_id && x.name == object) {
                continue;
            }
            let text = self.read_file(o.device_id, &o.name)?;
            if let Ok(m) = tillsync_backup::parse_manifest(&text) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then_with(|| a.backup_id.cmp(&b.backup_id)));
        Ok(out)
    }

    fn open(&self, backup_id: &str) -> Result<Box<dyn Read + Send>, BackupError> {
        let device = match self.who {
            HubBackupsAs::Device => Uuid::nil(),
            HubBackupsAs::Admin { .. } => self
                .list()?
                .into_iter()
                .find(|m| m.backup_id == backup_id)
                .map(|m| m.device_id)
                .ok_or_else(|| BackupError::NotFound(backup_id.to_string()))?,
        };
        let path = self.file_path(device, &format!("{backup_id}.{OBJECT_EXT}"));
        let resp = self.rt.block_on(self.client.get_backup(&path)).map_err(hub_err(backup_id))?;
        Ok(Box::new(tillsync_backup::StreamRead::new(self.rt.clone(), resp.bytes_stream().boxed())))
    }

    fn remove(&self, backup_id: &str) -> Result<(), BackupError> {
        self.only_device("removing a backup")?;
        // The manifest first: a backup is never listed half-gone.
        self.rt
            .block_on(self.client.delete_backup(&format!("{backup_id}.{MANIFEST_EXT}")))
            .map_err(hub_err(backup_id))?;
        let _ = self.rt.block_on(self.client.delete_backup(&format!("{backup_id}.{OBJECT_EXT}")));
        Ok(())
    }
}

/// The address of the hub destination in `--to`/`--from` and the config.
pub const HUB_ADDR: &str = "hub";

/// The destination a till's backups go to: `hub` (its own hub, with its
/// device token), else a folder or `s3://bucket/prefix`.
pub fn destination_for_till(
    addr: &str,
    s3: &tillsync_backup::s3::S3Options,
    till: &Path,
) -> Result<Box<dyn Destination>, BackupError> {
    if addr != HUB_ADDR {
        return tillsync_backup::destination(addr, s3);
    }
    let store = tillsync_store::Store::open(till, tillsync_core::Schema::standard(), tillsync_core::IdGen::from_u64(0))
        .map_err(|e| BackupError::Invalid(format!("{}: {e}", till.display())))?;
    let client = crate::sync::client_for(till, &store).map_err(|e| BackupError::Invalid(e.to_string()))?;
    Ok(Box::new(HubBackups::new(client, HubBackupsAs::Device)?))
}
