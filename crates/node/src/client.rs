//! HTTP client for the hub's `/v1` API.

use crate::sync::SyncError;
use futures_util::StreamExt;
use reqwest::header::{ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tillsync_core::wire::{
    DeviceInfo, EnrolRequest, Enrolment, ErrorBody, PullResponse, PushRequest, PushResponse, SNAPSHOT_PAGE_LEN_MAX,
    Snapshot, SnapshotKey, SnapshotPage, Usage,
};

/// How to reach a hub.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// A PEM file with the CA (or self-signed) certificate to trust instead
    /// of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Allow plain HTTP to a hub that is not on this machine.
    pub insecure: bool,
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// Operations asked per snapshot page during a bootstrap (0: the
    /// hub's maximum, `SNAPSHOT_PAGE_LEN_MAX`).
    pub snapshot_page_len: usize,
    /// Entries asked per pull page (0: `PULL_PAGE_LEN`). Tests make pulls
    /// of many pages with a small one.
    pub pull_page_len: usize,
}

/// A hub client.
#[derive(Clone, Debug)]
pub struct HubClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    opts: ClientOptions,
}

/// Requests above this size are sent zstd-compressed, in bytes.
const COMPRESS_LEN_MIN: usize = 1_024;
/// Shortest and longest wait a `Retry-After` is taken to mean, in
/// milliseconds (a hub asking for more is asked again after the cap).
const RETRY_AFTER_MS_MIN: u64 = 1_000;
const RETRY_AFTER_MS_MAX: u64 = 60_000;
/// Longest a single request waits out rate limiting before the round gives
/// up and the driver schedules the next one for the hub's wait, in ms.
pub const RATE_LIMIT_WAIT_MS_MAX: u64 = 30_000;
/// Idle connections are kept this long for reuse, in milliseconds.
const POOL_IDLE_MS: u64 = 5_000;
/// Largest response accepted after decompression, in bytes.
const RESPONSE_LEN_MAX: usize = 256 << 20;

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || host.trim_matches(['[', ']']).parse::<std::net::Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, SyncError> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| SyncError::Config(format!("cannot read the CA file {}: {e}", path.display())))?;
            for c in certs {
                let c = c.map_err(|e| SyncError::Config(format!("bad certificate in {}: {e}", path.display())))?;
                roots.add(c).map_err(|e| SyncError::Config(format!("bad certificate in {}: {e}", path.display())))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SyncError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Longest a backup upload or download may take, in milliseconds.
pub const BACKUP_TIMEOUT_MS: u64 = 6 * 3_600_000;

/// A backup file kept by the hub (`GET /v1/backups`).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct BackupObjectInfo {
    pub device_id: uuid::Uuid,
    pub name: String,
    pub bytes: u64,
    pub modified_ms: u64,
}

/// Decodes an answer of the hub (a pull page, a snapshot, an error body):
/// zstd when the hub says so (bounded by [`RESPONSE_LEN_MAX`]), then JSON.
/// The hub is across a network: anything it sends must end in an error,
/// never a panic (fuzzed by `fuzz/`'s `pull_page` and `snapshot`).
pub fn decode_answer<T: DeserializeOwned>(status: u16, zstd: bool, raw: &[u8]) -> Result<T, SyncError> {
    let decoded;
    let body = if zstd {
        decoded = zstd::bulk::decompress(raw, RESPONSE_LEN_MAX)
            .map_err(|e| SyncError::Network(format!("bad zstd from the hub: {e}")))?;
        &decoded[..]
    } else {
        raw
    };
    if !(200..300).contains(&status) {
        let shown = reqwest::StatusCode::from_u16(status).map(|s| s.to_string()).unwrap_or_else(|_| status.to_string());
        let err: ErrorBody = serde_json::from_slice(body).unwrap_or(ErrorBody {
            code: "http".into(),
            message: format!("the hub answered {shown}"),
            expected: None,
        });
        return Err(SyncError::Hub { status, code: err.code, message: err.message });
    }
    serde_json::from_slice(body).map_err(|e| SyncError::Network(format!("unreadable answer from the hub: {e}")))
}

impl HubClient {
    /// A client for the hub at `url` (https://..., or http:// on loopback).
    pub fn new(url: &str, token: Option<String>, opts: &ClientOptions) -> Result<HubClient, SyncError> {
        let url = url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| SyncError::Config(format!("'{url}' is not a URL: use https://HOST[:PORT]")))?;
        match parsed.scheme() {
            "https" => {}
            "http" => {
                let host = parsed.host_str().unwrap_or("");
                if !is_loopback(host) && !opts.insecure {
                    return Err(SyncError::Config(format!(
                        "refusing plain HTTP to {host}: use https://, or pass --insecure if this network is trusted"
                    )));
                }
            }
            other => return Err(SyncError::Config(format!("unsupported scheme '{other}': use https://"))),
        }
        let timeout = if opts.timeout_ms == 0 { 30_000 } else { opts.timeout_ms };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(opts.ca_file.as_ref())?)
            .connect_timeout(Duration::from_millis(timeout.min(10_000)))
            .timeout(Duration::from_millis(timeout))
            // The hub closes connections idle for its header-read timeout
            // (10 s by default): let go of them sooner, so a request is
            // never sent on a connection the hub is closing.
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_MS))
            .build()
            .map_err(|e| SyncError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(HubClient { base: url.to_string(), http, token, opts: opts.clone() })
    }

    /// The hub's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Another client for the same hub and token with a connection pool of
    /// its own: the bootstrap's fetch thread drives it on a runtime of its
    /// own, and connections must not move between runtimes.
    pub fn fresh(&self) -> Result<HubClient, SyncError> {
        HubClient::new(&self.base, self.token.clone(), &self.opts)
    }

    /// Entries asked per pull page.
    pub fn pull_page_len(&self) -> usize {
        match self.opts.pull_page_len {
            0 => crate::sync::PULL_PAGE_LEN,
            // The hub clamps what it is asked to its own maximum.
            n => n,
        }
    }

    /// Operations asked per snapshot page.
    pub fn snapshot_page_len(&self) -> usize {
        match self.opts.snapshot_page_len {
            0 => SNAPSHOT_PAGE_LEN_MAX,
            n => n.min(SNAPSHOT_PAGE_LEN_MAX),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base)).header(ACCEPT_ENCODING, "zstd");
        if let Some(t) = &self.token {
            r = r.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        r
    }

    /// Sends a request; a `429 rate_limited` answer is waited out for its
    /// `Retry-After` and the request sent again, up to
    /// `RATE_LIMIT_WAIT_MS_MAX` in all; past that the caller gets
    /// `SyncError::RateLimited` with the hub's wait (nothing was applied).
    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, SyncError> {
        let mut req = req;
        let mut waited_ms = 0u64;
        loop {
            let again = req.try_clone();
            match self.send_once(req).await {
                Err(SyncError::RateLimited { retry_after_ms }) => {
                    let Some(next) = again.filter(|_| waited_ms + retry_after_ms <= RATE_LIMIT_WAIT_MS_MAX) else {
                        return Err(SyncError::RateLimited { retry_after_ms });
                    };
                    tracing::info!(retry_after_ms, "the hub is rate limiting this till: waiting");
                    tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
                    waited_ms += retry_after_ms;
                    req = next;
                }
                other => return other,
            }
        }
    }

    async fn send_once<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, SyncError> {
        let resp = req.send().await.map_err(SyncError::from_reqwest)?;
        let status = resp.status();
        let retry_after_ms = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| s.saturating_mul(1_000).clamp(RETRY_AFTER_MS_MIN, RETRY_AFTER_MS_MAX));
        let zstd = resp.headers().get(CONTENT_ENCODING).is_some_and(|v| v == "zstd");
        let raw = resp.bytes().await.map_err(SyncError::from_reqwest)?;
        match decode_answer(status.as_u16(), zstd, &raw) {
            Err(SyncError::Hub { status: 429, code, .. }) if code == "rate_limited" => {
                Err(SyncError::RateLimited { retry_after_ms: retry_after_ms.unwrap_or(RETRY_AFTER_MS_MIN) })
            }
            other => other,
        }
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, SyncError> {
        let json = serde_json::to_vec(body).map_err(|e| SyncError::Config(e.to_string()))?;
        let mut req = self.request(reqwest::Method::POST, path).header(CONTENT_TYPE, "application/json");
        if json.len() >= COMPRESS_LEN_MIN {
            let c = zstd::bulk::compress(&json, 3).map_err(|e| SyncError::Config(e.to_string()))?;
            req = req.header(CONTENT_ENCODING, "zstd").body(c);
        } else {
            req = req.body(json);
        }
        self.send(req).await
    }

    /// Uploads a backup object of this device from a file, streamed (the
    /// file is never read whole). Large uploads get a long timeout of
    /// their own.
    pub async fn put_backup(&self, name: &str, file: &std::path::Path) -> Result<(), SyncError> {
        use tokio::io::AsyncReadExt;
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| SyncError::Config(format!("cannot read {}: {e}", file.display())))?;
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        let chunks = futures_util::stream::unfold(f, |mut f| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(buf), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let req = self
            .request(reqwest::Method::PUT, &format!("/v1/backups/{name}"))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .timeout(Duration::from_millis(BACKUP_TIMEOUT_MS))
            .body(reqwest::Body::wrap_stream(chunks));
        let _: serde_json::Value = self.send(req).await?;
        Ok(())
    }

    /// Uploads a small backup file (a manifest) from memory.
    pub async fn put_backup_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(), SyncError> {
        let req = self
            .request(reqwest::Method::PUT, &format!("/v1/backups/{name}"))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        let _: serde_json::Value = self.send(req).await?;
        Ok(())
    }

    /// Lists backup objects: this device's (`path` = `/v1/backups`) or, with
    /// an admin token, the tenant's (`/v1/admin/backups[?device=ID]`).
    pub async fn list_backups(&self, path: &str) -> Result<Vec<BackupObjectInfo>, SyncError> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// Fetches a backup file: the response, streamed by the caller.
    pub async fn get_backup(&self, path: &str) -> Result<reqwest::Response, SyncError> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .timeout(Duration::from_millis(BACKUP_TIMEOUT_MS))
            .send()
            .await
            .map_err(SyncError::from_reqwest)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let err: ErrorBody = serde_json::from_slice(&body).unwrap_or(ErrorBody {
            code: "http".into(),
            message: format!("the hub answered {status}"),
            expected: None,
        });
        Err(SyncError::Hub { status: status.as_u16(), code: err.code, message: err.message })
    }

    /// Deletes one of this device's backup files.
    pub async fn delete_backup(&self, name: &str) -> Result<(), SyncError> {
        let _: serde_json::Value =
            self.send(self.request(reqwest::Method::DELETE, &format!("/v1/backups/{name}"))).await?;
        Ok(())
    }

    /// Whether the hub answers its health check with the expected body.
    pub async fn healthy(&self) -> bool {
        match self.request(reqwest::Method::GET, "/healthz").send().await {
            Ok(r) if r.status().is_success() => r.text().await.is_ok_and(|t| t.trim() == "tillsync-hub ok v1"),
            _ => false,
        }
    }

    /// Exchanges an enrolment code for a device token.
    pub async fn enrol(&self, code: &str, name: &str) -> Result<Enrolment, SyncError> {
        self.post("/v1/enrol", &EnrolRequest { code: code.into(), name: name.into() }).await
    }

    /// Pushes changes.
    pub async fn push(&self, req: &PushRequest) -> Result<PushResponse, SyncError> {
        self.post("/v1/push", req).await
    }

    /// Pulls one page after a cursor (with the hub's tag of that cursor,
    /// when the till has one).
    pub async fn pull(&self, after: u64, tag: Option<&str>, limit: usize) -> Result<PullResponse, SyncError> {
        let mut req =
            self.request(reqwest::Method::GET, "/v1/pull").query(&[("after", after), ("limit", limit as u64)]);
        if let Some(tag) = tag {
            req = req.query(&[("tag", tag)]);
        }
        self.send(req).await
    }

    /// The merged state of this device's scope, whole (what tills asked
    /// before paging; the hub refuses it for a large store).
    pub async fn snapshot(&self) -> Result<Snapshot, SyncError> {
        self.send(self.request(reqwest::Method::GET, "/v1/snapshot")).await
    }

    /// One page of the merged state of this device's scope, after `after`
    /// (none: the first page, which carries the pull cursor).
    pub async fn snapshot_page(&self, after: Option<&SnapshotKey>, limit: usize) -> Result<SnapshotPage, SyncError> {
        let mut req = self.request(reqwest::Method::GET, "/v1/snapshot").query(&[("limit", limit as u64)]);
        if let Some(after) = after {
            req = req.query(&[("after", after.as_str())]);
        }
        self.send(req).await
    }

    /// The hub's state digest of this device's store.
    pub async fn digest(&self) -> Result<String, SyncError> {
        let v: serde_json::Value = self.send(self.request(reqwest::Method::GET, "/v1/digest")).await?;
        v["state_digest"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| SyncError::Network("the hub sent no digest".into()))
    }

    /// A new token for this device (the current one works until the new one is first used).
    pub async fn rotate_token(&self) -> Result<String, SyncError> {
        let v: serde_json::Value = self.post("/v1/token/rotate", &serde_json::json!({})).await?;
        v["token"].as_str().map(str::to_string).ok_or_else(|| SyncError::Network("the hub sent no token".into()))
    }

    /// A new admin token for the tenant (admin token; the current one works until the new one is first used).
    pub async fn rotate_admin_token(&self) -> Result<String, SyncError> {
        let v: serde_json::Value = self.post("/v1/admin/token/rotate", &serde_json::json!({})).await?;
        v["admin_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| SyncError::Network("the hub sent no admin token".into()))
    }

    /// Devices of the tenant (admin token).
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, SyncError> {
        self.send(self.request(reqwest::Method::GET, "/v1/devices")).await
    }

    /// Revokes a device (admin token).
    pub async fn revoke(&self, device: &str) -> Result<serde_json::Value, SyncError> {
        self.post(&format!("/v1/devices/{device}/revoke"), &serde_json::json!({})).await
    }

    /// The tenant's usage (admin token).
    pub async fn usage(&self) -> Result<Usage, SyncError> {
        self.send(self.request(reqwest::Method::GET, "/v1/usage")).await
    }

    /// The hub's digest of a store (admin token).
    pub async fn store_digest(&self, store: &str) -> Result<serde_json::Value, SyncError> {
        self.send(self.request(reqwest::Method::GET, &format!("/v1/stores/{store}/digest"))).await
    }

    /// Listens to live events; calls `on_event` for each change notice until
    /// the stream ends or fails.
    pub async fn listen(&self, mut on_event: impl FnMut()) -> Result<(), SyncError> {
        let resp = self
            .http
            .get(format!("{}/v1/events", self.base))
            .header(AUTHORIZATION, format!("Bearer {}", self.token.as_deref().unwrap_or("")))
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(SyncError::from_reqwest)?;
        if !resp.status().is_success() {
            return Err(SyncError::Hub {
                status: resp.status().as_u16(),
                code: "events".into(),
                message: "event stream refused".into(),
            });
        }
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(SyncError::from_reqwest)?;
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = buf.drain(..i + 2).collect();
                if frame.windows(12).any(|w| w == b"event: chang") || frame.windows(11).any(|w| w == b"event:chang") {
                    on_event();
                }
            }
            if buf.len() > 1 << 20 {
                buf.clear();
            }
        }
        Ok(())
    }
}
