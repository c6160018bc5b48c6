//! The S3-compatible destination (`s3://bucket/prefix`), through
//! `object_store`. The object goes up as a multipart upload, read from the
//! local temporary object in parts, so memory stays flat; S3 shows nothing
//! under the key until the upload completes (the upload is the temporary
//! name), and the manifest is put last, so a half-written backup is never
//! listed. Downloads are streamed part by part into a `Read`.

use crate::{BackupError, Destination, MANIFEST_EXT, Manifest, OBJECT_EXT, check_id};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Size of one multipart part, in bytes (S3 wants at least 5 MiB but the last).
pub const PART_LEN: usize = 8 * 1024 * 1024;
/// Parts in flight at once: memory is at most about this many parts.
const PARTS_IN_FLIGHT_MAX: usize = 2;
/// Requests retried before an S3 error is reported.
const RETRIES_MAX: usize = 3;
/// Longest a request may be retried for, in seconds.
const RETRY_TIMEOUT_S: u64 = 30;

/// Where and how to reach an S3-compatible store. The binary fills it from
/// flags, the config and the usual `AWS_*` environment variables.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// `https://...` or `http://...` for S3-compatible servers; AWS when empty.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl S3Options {
    /// Options from the given endpoint and region (flags or config; empty
    /// means unset), else the usual AWS environment variables
    /// (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`); the keys always come from
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    pub fn resolve(endpoint: Option<&str>, region: Option<&str>) -> S3Options {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let given = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
        S3Options {
            endpoint: given(endpoint).or_else(|| env("AWS_ENDPOINT_URL_S3")).or_else(|| env("AWS_ENDPOINT_URL")),
            region: given(region)
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            access_key_id: env("AWS_ACCESS_KEY_ID").unwrap_or_default(),
            secret_access_key: env("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
            session_token: env("AWS_SESSION_TOKEN"),
        }
    }
}

/// An `s3://bucket/prefix` destination.
pub struct S3 {
    store: Arc<AmazonS3>,
    prefix: Option<Key>,
    rt: Arc<tokio::runtime::Runtime>,
    url: String,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3").field("url", &self.url).finish()
    }
}

/// Splits `s3://bucket/some/prefix` into the bucket and the prefix.
pub fn parse_url(url: &str) -> Result<(String, String), BackupError> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| BackupError::Invalid(format!("'{url}' is not an s3:// address: use s3://BUCKET/PREFIX")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(BackupError::Invalid(format!("'{url}' names no bucket: use s3://BUCKET/PREFIX")));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

fn s3_err(what: &str) -> impl Fn(object_store::Error) -> BackupError + '_ {
    move |e| BackupError::Io(format!("{what}: {}", describe(&e)))
}

/// An S3 error on one line: the server's code and message when it sent
/// them (not its XML), else the client's own words.
fn describe(e: &object_store::Error) -> String {
    let text = e.to_string();
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{t}>"))? + start;
        Some(text[start..end].to_string())
    };
    let hint = |code: &str| match code {
        "NoSuchBucket" => ": check the bucket name in s3://BUCKET/PREFIX",
        "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" => {
            ": check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        }
        _ => "",
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("S3 answered {c} ({m}){}", hint(&c)),
        (Some(c), None) => format!("S3 answered {c}{}", hint(&c)),
        _ => {
            let one = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if one.contains("error sending request") || one.contains("Connection refused") {
                format!("cannot reach S3 ({one}): check --s3-endpoint / AWS_ENDPOINT_URL and the network")
            } else {
                one
            }
        }
    }
}

impl S3 {
    /// Opens `s3://bucket/prefix` (no request is made yet).
    pub fn open(url: &str, opts: &S3Options) -> Result<S3, BackupError> {
        let (bucket, prefix) = parse_url(url)?;
        if opts.access_key_id.is_empty() || opts.secret_access_key.is_empty() {
            return Err(BackupError::Invalid(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            ));
        }
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(if opts.region.is_empty() { "us-east-1" } else { &opts.region })
            .with_access_key_id(&opts.access_key_id)
            .with_secret_access_key(&opts.secret_access_key)
            .with_retry(RetryConfig {
                max_retries: RETRIES_MAX,
                retry_timeout: Duration::from_secs(RETRY_TIMEOUT_S),
                backoff: Default::default(),
            });
        if let Some(t) = &opts.session_token {
            b = b.with_token(t);
        }
        if let Some(e) = opts.endpoint.as_deref().filter(|e| !e.is_empty()) {
            if !e.starts_with("http://") && !e.starts_with("https://") {
                return Err(BackupError::Invalid(format!(
                    "S3 endpoint '{e}' needs a scheme: https://HOST[:PORT] (or http:// for a local server)"
                )));
            }
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        // reqwest is built without a TLS provider of its own (the workspace
        // uses ring); install it unless the process already chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = b.build().map_err(|e| BackupError::Invalid(format!("bad S3 settings for {url}: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backup-s3")
            .enable_all()
            .build()
            .map_err(|e| BackupError::Io(format!("cannot start the S3 client: {e}")))?;
        Ok(S3 {
            store: Arc::new(store),
            prefix: (!prefix.is_empty()).then(|| Key::from(prefix.as_str())),
            rt: Arc::new(rt),
            url: url.to_string(),
        })
    }

    fn key(&self, name: &str) -> Key {
        match &self.prefix {
            Some(p) => p.clone().join(name),
            None => Key::from(name),
        }
    }
}

impl Destination for S3 {
    fn publish(&self, manifest: &Manifest, object: &Path) -> Result<(), BackupError> {
        let id = &manifest.backup_id;
        let key = self.key(&format!("{id}.{OBJECT_EXT}"));
        let mut file =
            std::fs::File::open(object).map_err(|e| BackupError::Io(format!("cannot read the backup object: {e}")))?;
        let store = self.store.clone();
        self.rt.block_on(async move {
            let upload = store.put_multipart(&key).await.map_err(s3_err("cannot start the upload"))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_LEN);
            let mut buf = vec![0u8; PART_LEN];
            loop {
                // Back pressure first: at most PARTS_IN_FLIGHT_MAX parts in memory.
                if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT_MAX).await {
                    let _ = w.abort().await;
                    return Err(s3_err("cannot upload the backup")(e));
                }
                let n = match read_full(&mut file, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(BackupError::Io(format!("cannot read the backup object: {e}")));
                    }
                };
                if n == 0 {
                    break;
                }
                w.write(&buf[..n]);
            }
            w.finish().await.map_err(s3_err("cannot complete the upload"))?;
            Ok::<_, BackupError>(())
        })?;
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Io(e.to_string()))?;
        let mkey = self.key(&format!("{id}.{MANIFEST_EXT}"));
        self.rt.block_on(self.store.put(&mkey, PutPayload::from(text))).map_err(s3_err("cannot write the manifest"))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<Manifest>, BackupError> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let listing: Vec<_> = self
            .rt
            .block_on(async move {
                store.list(prefix.as_ref()).collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<_>, _>>()
            })
            .map_err(s3_err(&format!("cannot list {}", self.url)))?;
        let mut objects = BTreeSet::new();
        let mut manifests = vec![];
        for meta in listing {
            let Some(name) = meta.location.filename().map(str::to_string) else { continue };
            // Only direct children of the prefix; nothing under deeper folders.
            if meta.location != self.key(&name) || name.starts_with('.') {
                continue;
            }
            if let Some(id) = name.strip_suffix(&format!(".{OBJECT_EXT}")) {
                objects.insert(id.to_string());
            } else if name.ends_with(&format!(".{MANIFEST_EXT}")) {
                manifests.push(meta.location);
            }
        }
        let mut out = vec![];
        for key in manifests {
            let Ok(bytes) = self.rt.block_on(async { self.store.get(&key).await?.bytes().await }) else { continue };
            let Ok(m) = crate::parse_manifest(&bytes) else { continue };
            if objects.contains(&m.backup_id) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.backup_id).cmp(&(b.created_ms, &b.backup_id)));
        Ok(out)
    }

    fn open(&self, backup_id: &str) -> Result<Box<dyn Read + Send>, BackupError> {
        check_id(backup_id)?;
        let key = self.key(&format!("{backup_id}.{OBJECT_EXT}"));
        let got = self.rt.block_on(self.store.get(&key)).map_err(|e| match e {
            object_store::Error::NotFound { .. } => BackupError::NotFound(backup_id.into()),
            e => s3_err("cannot download the backup")(e),
        })?;
        Ok(Box::new(crate::StreamRead::new(self.rt.clone(), got.into_stream())))
    }

    fn remove(&self, backup_id: &str) -> Result<(), BackupError> {
        check_id(backup_id)?;
        let m = self.key(&format!("{backup_id}.{MANIFEST_EXT}"));
        let o = self.key(&format!("{backup_id}.{OBJECT_EXT}"));
        self.rt.block_on(self.store.delete(&m)).map_err(s3_err("cannot remove the manifest"))?;
        let _ = self.rt.block_on(self.store.delete(&o));
        Ok(())
    }
}

/// Reads until `buf` is full or the end: parts are full-sized but the last.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(parse_url("s3://b/shop/one/").unwrap(), ("b".into(), "shop/one".into()));
        assert_eq!(parse_url("s3://b").unwrap(), ("b".into(), "".into()));
        assert!(parse_url("s3:///x").is_err());
        assert!(parse_url("/tmp/x").is_err());
    }
}
