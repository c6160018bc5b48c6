//! Backups kept by the hub: a till uploads, lists, fetches and deletes its
//! own objects; the tenant's admin lists and fetches every device's (the
//! till may be gone); nothing crosses tenants or devices; the tenant's
//! backup quota holds and a refused upload leaves nothing behind; usage
//! counts the bytes. Served on a real socket, objects streamed both ways.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tillsync_core::IdGen;
use tillsync_core::wire::Usage;
use tillsync_hub::{AppState, BackupFiles, BackupObject, HubStorage, SqliteHub, app};
use uuid::Uuid;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Tenant {
    id: Uuid,
    admin: String,
    device: String,
    device_id: Uuid,
    other_device: String,
}

fn tenant(hub: &SqliteHub, name: &str) -> Tenant {
    let (id, admin) = hub.create_tenant(name, false, now()).unwrap();
    let store = hub.create_store(id, "s", now()).unwrap();
    let enrol = |n: &str| {
        let (code, _) = hub.create_enrol_code(id, store, now(), 60_000).unwrap();
        hub.enrol(&code, n, now()).unwrap()
    };
    let a = enrol("a");
    let b = enrol("b");
    Tenant { id, admin, device: a.token, device_id: a.device_id, other_device: b.token }
}

struct Hub {
    url: String,
    hub: Arc<SqliteHub>,
    files: BackupFiles,
    client: reqwest::Client,
    _tmp: tempfile::TempDir,
}

async fn start() -> Hub {
    // reqwest is built without a default TLS provider (the node installs ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let hub = Arc::new(SqliteHub::open(&tmp.path().join("hub"), IdGen::from_u64(3)).unwrap());
    let files = BackupFiles::new(&tmp.path().join("backups"));
    let storage: Arc<dyn HubStorage> = hub.clone();
    let state = AppState::new(storage).with_backups(files.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app(state)).await.unwrap() });
    Hub { url, hub, files, client: reqwest::Client::new(), _tmp: tmp }
}

impl Hub {
    async fn put(&self, token: &str, name: &str, body: Vec<u8>) -> reqwest::Response {
        self.client.put(format!("{}/v1/backups/{name}", self.url)).bearer_auth(token).body(body).send().await.unwrap()
    }
    async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.url)).bearer_auth(token).send().await.unwrap()
    }
}

/// Bytes that do not compress or repeat (as an encrypted object).
fn object(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn a_till_keeps_its_backups_on_the_hub_and_the_admin_fetches_them_when_the_till_is_gone() {
    let h = start().await;
    let a = tenant(&h.hub, "A");
    let b = tenant(&h.hub, "B");
    // 3 MiB: more than one read chunk each way.
    let body = object(3 << 20, 1);
    let r = h.put(&a.device, "2026-11-27T10-00-00Z.tsb", body.clone()).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let o: BackupObject = r.json().await.unwrap();
    assert_eq!((o.bytes, o.device_id), (body.len() as u64, a.device_id));
    h.put(&a.device, "2026-11-27T10-00-00Z.manifest.json", b"{\"m\":1}".to_vec()).await.error_for_status().unwrap();

    // The till lists and fetches its own.
    let list: Vec<BackupObject> = h.get(&a.device, "/v1/backups").await.json().await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let got = h.get(&a.device, "/v1/backups/2026-11-27T10-00-00Z.tsb").await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), body, "the object comes back byte for byte");
    // An empty upload (found by schemathesis) is refused and replaces nothing.
    assert_eq!(h.put(&a.device, "2026-11-27T10-00-00Z.tsb", vec![]).await.status(), 400);
    let got = h.get(&a.device, "/v1/backups/2026-11-27T10-00-00Z.tsb").await;
    assert_eq!(got.bytes().await.unwrap().len(), body.len(), "the empty upload replaced the object");

    // Another till of the tenant, a till of another tenant, and the other
    // tenant's admin see none of it.
    let other: Vec<BackupObject> = h.get(&a.other_device, "/v1/backups").await.json().await.unwrap();
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(h.get(&a.other_device, "/v1/backups/2026-11-27T10-00-00Z.tsb").await.status(), 404);
    let theirs: Vec<BackupObject> = h.get(&b.device, "/v1/backups").await.json().await.unwrap();
    assert!(theirs.is_empty());
    assert_eq!(h.get(&b.device, "/v1/backups/2026-11-27T10-00-00Z.tsb").await.status(), 404);
    let foreign: Vec<BackupObject> = h.get(&b.admin, "/v1/admin/backups").await.json().await.unwrap();
    assert!(foreign.is_empty(), "{foreign:?}");
    let path = format!("/v1/admin/backups/{}/2026-11-27T10-00-00Z.tsb", a.device_id);
    assert_eq!(h.get(&b.admin, &path).await.status(), 404);
    // A device token is not an admin token, nor the other way round.
    assert_eq!(h.get(&a.device, "/v1/admin/backups").await.status(), 403);
    let r = h.put(&a.admin, "x.tsb", vec![1]).await.status();
    assert!(r.is_client_error() && r != 404, "an admin token does not upload as a device: {r}");

    // The till is gone: its admin lists and fetches its backups.
    let all: Vec<BackupObject> = h.get(&a.admin, "/v1/admin/backups").await.json().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|o| o.device_id == a.device_id));
    let one: Vec<BackupObject> =
        h.get(&a.admin, &format!("/v1/admin/backups?device={}", a.device_id)).await.json().await.unwrap();
    assert_eq!(one.len(), 2);
    let got = h.get(&a.admin, &path).await;
    assert_eq!(got.bytes().await.unwrap().to_vec(), body);

    // Usage counts the bytes; deleting frees them.
    let u: Usage = h.get(&a.admin, "/v1/usage").await.json().await.unwrap();
    assert_eq!(u.backup_bytes, body.len() as u64 + 7);
    let d = h.client.delete(format!("{}/v1/backups/2026-11-27T10-00-00Z.manifest.json", h.url)).bearer_auth(&a.device);
    assert_eq!(d.send().await.unwrap().status(), 200);
    let u: Usage = h.get(&a.admin, "/v1/usage").await.json().await.unwrap();
    assert_eq!(u.backup_bytes, body.len() as u64);
}

#[tokio::test]
async fn the_backup_quota_holds_and_a_refused_upload_leaves_nothing() {
    let h = start().await;
    let a = tenant(&h.hub, "A");
    h.files.set_quota_bytes(a.id, 1 << 20).unwrap();
    h.put(&a.device, "one.tsb", object(600 << 10, 2)).await.error_for_status().unwrap();
    let r = h.put(&a.device, "two.tsb", object(600 << 10, 3)).await;
    assert_eq!(r.status(), 429, "over the quota");
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "quota_exceeded");
    assert!(e["message"].as_str().unwrap().contains("prune"), "{e}");
    let list: Vec<BackupObject> = h.get(&a.device, "/v1/backups").await.json().await.unwrap();
    assert_eq!(list.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["one.tsb"], "nothing half-written is listed");
    // Replacing an object counts only the difference.
    h.put(&a.device, "one.tsb", object(900 << 10, 4)).await.error_for_status().unwrap();
    let u: Usage = h.get(&a.admin, "/v1/usage").await.json().await.unwrap();
    assert_eq!((u.backup_bytes, u.quota_backup_bytes), (900 << 10, 1 << 20));
    // Bad names are refused before anything is written.
    for bad in [".hidden", "a%2Fb", "..%2F..%2Fetc"] {
        let r = h.put(&a.device, bad, vec![1, 2, 3]).await;
        assert!(r.status() == 400 || r.status() == 404, "{bad}: {}", r.status());
    }
    assert_eq!(h.files.list(a.id, None).unwrap().len(), 1);
}

#[tokio::test]
async fn a_hub_without_backup_storage_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Arc::new(SqliteHub::open(&tmp.path().join("hub"), IdGen::from_u64(4)).unwrap());
    let a = tenant(&hub, "A");
    let storage: Arc<dyn HubStorage> = hub.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app(AppState::new(storage))).await.unwrap() });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new().get(format!("{url}/v1/backups")).bearer_auth(&a.device).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(e["message"].as_str().unwrap().contains("backup storage"), "{e}");
}
