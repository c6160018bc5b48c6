//! Backups of a till: a consistent snapshot of the node database taken while
//! the till keeps selling (its pages, read decrypted through `sqlite_dbpage`
//! in one read transaction, see [`pages`]; no copy touches the disk),
//! compressed with zstd and encrypted with age (a passphrase or a recipient
//! key; encryption is not optional), streamed so memory does not grow with
//! the database, with a manifest that records who, when, the sync position
//! and the SHA-256 of both the plaintext stream and the stored object.
//! Restore writes the pages back under the new till's key.
//!
//! A destination stores an object and its manifest: a folder ([`Folder`]) or
//! S3-compatible object storage ([`s3::S3`], `s3://bucket/prefix`). The
//! object is written under a temporary name (a folder renames it into place;
//! S3 completes a multipart upload) and the manifest is written last, so a
//! half-written backup is never listed.
//!
//! Progress is reported through callbacks `(done_bytes, total_bytes)`; the
//! binary turns them into a progress bar.

pub mod pages;
pub mod s3;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use tillsync_core::change::hex;
use tillsync_store::keys::{self, DbKey};
use uuid::Uuid;

/// The manifest's format tag.
pub const MANIFEST_FORMAT: &str = "tillsync-backup-v1";
/// Object and manifest file extensions in a folder destination.
pub const OBJECT_EXT: &str = "tsb";
pub const MANIFEST_EXT: &str = "json";
/// Copy buffer size, in bytes: memory stays flat whatever the database size.
const BUF_LEN: usize = 256 * 1024;
/// zstd level (3: zstd's default, the pipeline it is measured against).
const ZSTD_LEVEL: i32 = 3;
/// zstd worker threads: compression runs beside hashing and encryption.
const ZSTD_WORKERS: u32 = 2;
/// Batches of about `BUF_LEN` bytes in flight between a backup's reading
/// and writing threads.
const PIPE_BATCHES: usize = 8;

/// Errors of backups, said so that they can be acted on.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(String),
    #[error("cannot decrypt the backup: wrong passphrase or identity (or not a Tillsync backup)")]
    Decrypt,
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error("no backup '{0}' at this destination (see `till backup list`)")]
    NotFound(String),
    #[error("no backups at this destination")]
    Empty,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] tillsync_store::StoreError),
}

fn io(what: &str) -> impl Fn(io::Error) -> BackupError + '_ {
    move |e| BackupError::Io(format!("{what}: {e}"))
}

/// What a backup holds, stored beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub backup_id: String,
    pub created_ms: u64,
    pub tenant_id: Uuid,
    pub store_id: Uuid,
    pub device_id: Uuid,
    pub device_name: String,
    /// `standalone` or `hub`.
    pub mode: String,
    pub receipt_prefix: String,
    pub schema_version: i64,
    /// Where the till was in the hub's log.
    pub pull_cursor: u64,
    pub plaintext_bytes: u64,
    pub stored_bytes: u64,
    pub plaintext_sha256: String,
    pub stored_sha256: String,
    /// `passphrase` or `recipient`.
    pub encryption: String,
}

/// How a backup is encrypted.
pub enum Key {
    Passphrase(String),
    /// An age recipient (`age1...`).
    Recipient(String),
}

/// How a backup is decrypted.
pub enum Unlock {
    Passphrase(String),
    /// An age identity file (`AGE-SECRET-KEY-...` lines).
    IdentityFile(PathBuf),
}

/// Counts and hashes what passes through.
struct Tee<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts what is read through it, and hashes it unless `hasher` is None.
struct TeeRead<R> {
    inner: R,
    hasher: Option<Sha256>,
    bytes: u64,
}

/// A [`TeeRead`] with SHA-256 that hands its digest (hex) and byte count
/// to `done` when it is dropped: it can then be moved into a reader that
/// another thread owns, such as age's.
struct HashOnDrop<R> {
    tee: TeeRead<R>,
    done: std::sync::mpsc::SyncSender<(String, u64)>,
}

impl<R: Read> Read for HashOnDrop<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tee.read(buf)
    }
}

impl<R> Drop for HashOnDrop<R> {
    fn drop(&mut self) {
        let digest = hex(&self.tee.hasher.take().unwrap_or_default().finalize());
        let _ = self.done.try_send((digest, self.tee.bytes));
    }
}

impl<R: Read> Read for TeeRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Reads `r` to its end in chunks and sends them on `tx`; a read error is
/// sent in their place and ends it. Stops early, without error, when the
/// receiving side is gone. One stage of a restore's pipeline of threads.
fn pump(mut r: impl Read, tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>) {
    loop {
        let mut chunk = vec![0u8; BUF_LEN];
        match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                chunk.truncate(n);
                if tx.send(Ok(chunk)).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                break;
            }
        }
    }
}

/// The reading end of a [`pump`]'s channel.
struct ChannelRead {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChannelRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The reading thread is done: the end of the object.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Which of a manifest's digests [`extract`] recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Both: the stored object's and the decrypted stream's (`verify`).
    Both,
    /// The stored object's only (a restore). The decrypted stream needs no
    /// digest of its own there: age authenticates every chunk of it and its
    /// end, so once the object matches the manifest's digest, what it
    /// decrypts to is the stream that was hashed when the backup was made.
    /// Hashing a 1 GB stream again (SHA-256 at about 400 MB/s where the CPU
    /// has no SHA extensions) was most of a plaintext restore's time.
    Stored,
}

/// A place that holds backups.
pub trait Destination {
    /// Stores an object from `object` (a file path) and then its manifest.
    fn publish(&self, manifest: &Manifest, object: &Path) -> Result<(), BackupError>;
    /// Every published backup, oldest first.
    fn list(&self) -> Result<Vec<Manifest>, BackupError>;
    /// Opens a backup's object for reading.
    fn open(&self, backup_id: &str) -> Result<Box<dyn Read + Send>, BackupError>;
    /// Removes a backup (manifest first, so it is never listed half-gone).
    fn remove(&self, backup_id: &str) -> Result<(), BackupError>;
}

/// A destination from its address: `s3://bucket/prefix` (reached with
/// `s3`) or a folder.
pub fn destination(addr: &str, s3: &s3::S3Options) -> Result<Box<dyn Destination>, BackupError> {
    if is_s3(addr) { Ok(Box::new(s3::S3::open(addr, s3)?)) } else { Ok(Box::new(Folder { dir: PathBuf::from(addr) })) }
}

/// Whether an address names S3-compatible storage.
pub fn is_s3(addr: &str) -> bool {
    addr.starts_with("s3://")
}

/// A folder destination.
pub struct Folder {
    pub dir: PathBuf,
}

/// Reads a manifest as every destination lists it (a folder, S3, the hub):
/// JSON of this format, with an id that is safe in a file name. A manifest
/// comes from storage the till does not control (a shared folder, a bucket,
/// the hub), so an id like `../x` must not reach a path.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, BackupError> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| BackupError::Invalid(format!("not a backup manifest: {e}")))?;
    if m.format != MANIFEST_FORMAT {
        return Err(BackupError::Invalid("not a Tillsync backup manifest (unknown format)".into()));
    }
    check_id(&m.backup_id).map_err(|_| BackupError::Invalid("the manifest's backup id is not valid".into()))?;
    Ok(m)
}

pub(crate) fn check_id(id: &str) -> Result<(), BackupError> {
    if id.is_empty() || id.len() > 100 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(BackupError::NotFound(id.chars().take(100).collect()));
    }
    Ok(())
}

impl Destination for Folder {
    fn publish(&self, manifest: &Manifest, object: &Path) -> Result<(), BackupError> {
        std::fs::create_dir_all(&self.dir).map_err(io("cannot create the backup folder"))?;
        let id = &manifest.backup_id;
        let tmp = self.dir.join(format!(".{id}.{OBJECT_EXT}.partial"));
        // The finished object is moved when the work folder and the
        // destination share a filesystem (no second full write of it), and
        // copied otherwise.
        if std::fs::rename(object, &tmp).is_err() {
            std::fs::copy(object, &tmp).map_err(io("cannot write the backup"))?;
        }
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io("cannot sync the backup"))?;
        std::fs::rename(&tmp, self.dir.join(format!("{id}.{OBJECT_EXT}"))).map_err(io("cannot publish the backup"))?;
        let mtmp = self.dir.join(format!(".{id}.{MANIFEST_EXT}.partial"));
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Io(e.to_string()))?;
        std::fs::write(&mtmp, text).map_err(io("cannot write the manifest"))?;
        std::fs::File::open(&mtmp).and_then(|f| f.sync_all()).map_err(io("cannot sync the manifest"))?;
        std::fs::rename(&mtmp, self.dir.join(format!("{id}.{MANIFEST_EXT}")))
            .map_err(io("cannot publish the manifest"))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<Manifest>, BackupError> {
        let mut out = vec![];
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            // Partial files start with a dot: never listed.
            if name.starts_with('.') || !name.ends_with(&format!(".{MANIFEST_EXT}")) {
                continue;
            }
            let Ok(text) = std::fs::read(e.path()) else { continue };
            let Ok(m) = parse_manifest(&text) else { continue };
            if self.dir.join(format!("{}.{OBJECT_EXT}", m.backup_id)).exists() {
                out.push(m);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.backup_id).cmp(&(b.created_ms, &b.backup_id)));
        Ok(out)
    }

    fn open(&self, backup_id: &str) -> Result<Box<dyn Read + Send>, BackupError> {
        check_id(backup_id)?;
        let f = std::fs::File::open(self.dir.join(format!("{backup_id}.{OBJECT_EXT}")))
            .map_err(|_| BackupError::NotFound(backup_id.into()))?;
        Ok(Box::new(BufReader::with_capacity(BUF_LEN, f)))
    }

    fn remove(&self, backup_id: &str) -> Result<(), BackupError> {
        check_id(backup_id)?;
        std::fs::remove_file(self.dir.join(format!("{backup_id}.{MANIFEST_EXT}")))
            .map_err(io("cannot remove the manifest"))?;
        let _ = std::fs::remove_file(self.dir.join(format!("{backup_id}.{OBJECT_EXT}")));
        Ok(())
    }
}

fn encryptor(key: &Key) -> Result<age::Encryptor, BackupError> {
    match key {
        Key::Passphrase(p) => {
            if p.len() < 8 {
                return Err(BackupError::Invalid("a backup passphrase needs at least 8 characters".into()));
            }
            Ok(age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(p.clone())))
        }
        Key::Recipient(r) => {
            let rec: age::x25519::Recipient = r
                .trim()
                .parse()
                .map_err(|e| BackupError::Invalid(format!("'{r}' is not an age recipient (age1...): {e}")))?;
            age::Encryptor::with_recipients(std::iter::once(&rec as &dyn age::Recipient))
                .map_err(|e| BackupError::Invalid(e.to_string()))
        }
    }
}

/// The `meta` key of the device token (kept in the encrypted database,
/// never in a backup).
pub const DEVICE_TOKEN_META: &str = "device_token";

/// The header of the decrypted stream of backups made between encryption
/// at rest and page streams: a tag and the snapshot's key (hex), then the
/// snapshot database encrypted under that key. Backups made before
/// encryption at rest start with the plaintext database itself. Both still
/// restore.
const SNAPSHOT_KEY_TAG: &[u8; 4] = b"TSK1";
const SNAPSHOT_HEADER_LEN: usize = 4 + 64 + 1;

/// A file writer that asks the kernel to write its data out every
/// `SYNC_EVERY_BYTES`. Left to itself, the kernel lets hundreds of
/// megabytes of a backup pile up as dirty pages and then writes them out
/// at once, and the till's own commit (an fsync) waits behind that burst.
struct Paced {
    file: std::fs::File,
    unsynced: u64,
}

/// Bytes written between two syncs of a backup object (see [`Paced`]).
const SYNC_EVERY_BYTES: u64 = 4 << 20;

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> BackupError {
    move |e| BackupError::Io(format!("{what}: {e}"))
}

/// Creates a backup of the till database at `db` into `dest`. `work` is a
/// folder for the object while it is written (beside the till is best).
///
/// The pages are read decrypted through `sqlite_dbpage` in one read
/// transaction of the WAL database, so the till keeps selling and the
/// backup is one consistent state; the manifest's facts are read in the
/// same transaction. The stream is compressed, encrypted and written as it
/// is read: nothing holds more than a buffer. The device token is masked
/// in the pages (a restored till enrols again).
pub fn create(
    db: &Path,
    dest: &dyn Destination,
    key: &Key,
    work: &Path,
    now_ms: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<Manifest, BackupError> {
    let (conn, _) = keys::open(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| BackupError::Io(e.to_string()))?;
    conn.execute_batch("BEGIN").map_err(sql("cannot start the backup's read transaction"))?;
    let meta = |k: &str| -> Result<String, BackupError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get::<_, String>(0))
            .map_err(|e| BackupError::Io(format!("{} is not a till: {e}", db.display())))
    };
    let uuid = |k: &str| -> Result<Uuid, BackupError> {
        Uuid::parse_str(&meta(k)?).map_err(|e| BackupError::Io(e.to_string()))
    };
    let backup_id = format!("{}-{}", now_ms, &meta("device_id")?.replace('-', "")[20..32]);
    let token = meta(DEVICE_TOKEN_META).unwrap_or_default();
    std::fs::create_dir_all(work).map_err(io("cannot create the work folder"))?;
    // Leftovers of a backup that was killed half-way are removed first.
    if let Ok(entries) = std::fs::read_dir(work) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with('.') && (n.ends_with(".snapshot.db") || n.ends_with(".object")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let obj = work.join(format!(".{backup_id}.object"));
    let schema_version: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| BackupError::Io(e.to_string()))?;
    let manifest_base = Manifest {
        format: MANIFEST_FORMAT.into(),
        backup_id: backup_id.clone(),
        created_ms: now_ms,
        tenant_id: uuid("tenant_id")?,
        store_id: uuid("store_id")?,
        device_id: uuid("device_id")?,
        device_name: meta("name")?,
        mode: meta("mode")?,
        receipt_prefix: meta("receipt_prefix")?,
        schema_version,
        pull_cursor: meta("pull_cursor").ok().and_then(|c| c.parse().ok()).unwrap_or(0),
        plaintext_bytes: 0,
        stored_bytes: 0,
        plaintext_sha256: String::new(),
        stored_sha256: String::new(),
        encryption: match key {
            Key::Passphrase(_) => "passphrase".into(),
            Key::Recipient(_) => "recipient".into(),
        },
    };
    let result = (|| {
        // The token can only be in the `meta` table's pages (old values are
        // overwritten: `write_meta` deletes securely), so only those are
        // searched; `dbstat` lists them, overflow pages included.
        let meta_pages: std::collections::HashSet<i64> = {
            let mut st = conn
                .prepare("SELECT pageno FROM dbstat WHERE name = 'meta'")
                .map_err(sql("cannot list the meta table's pages"))?;
            st.query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(sql("cannot list the meta table's pages"))?
        };
        // `count(*)` reads no page: the virtual table knows the last one.
        let page_count: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_dbpage", [], |r| r.get(0))
            .map_err(sql("cannot read the database's pages"))?;
        let out = std::fs::File::create(&obj).map_err(io("cannot write the object"))?;
        let encryptor = encryptor(key)?;
        // Two threads: this one reads (and SQLCipher decrypts) the pages;
        // the other hashes, compresses (zstd adds its workers), encrypts
        // and writes them. Batches of about `BUF_LEN` bytes pass between
        // them through a bounded channel, so memory stays flat.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPE_BATCHES);
        let (read, written) = std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<(u64, String, u64, String), BackupError> {
                let mut stored = Tee {
                    inner: BufWriter::with_capacity(BUF_LEN, Paced { file: out, unsynced: 0 }),
                    hasher: Sha256::new(),
                    bytes: 0,
                };
                let (bytes, hash) = {
                    let enc = encryptor.wrap_output(&mut stored).map_err(io("cannot encrypt"))?;
                    let mut z = zstd::stream::Encoder::new(enc, ZSTD_LEVEL).map_err(io("cannot compress"))?;
                    z.multithread(ZSTD_WORKERS).map_err(io("cannot compress"))?;
                    let mut plain = Tee { inner: z, hasher: Sha256::new(), bytes: 0 };
                    for batch in rx {
                        plain.write_all(&batch).map_err(io("cannot compress"))?;
                    }
                    let (bytes, hash) = (plain.bytes, hex(&plain.hasher.finalize()));
                    let enc = plain.inner.finish().map_err(io("cannot compress"))?;
                    enc.finish().map_err(io("cannot encrypt"))?;
                    (bytes, hash)
                };
                stored.flush().map_err(io("cannot write the object"))?;
                Ok((bytes, hash, stored.bytes, hex(&stored.hasher.finalize())))
            });
            let read = (|| -> Result<(), BackupError> {
                let stopped = |_| BackupError::Io("the backup's writer stopped".into());
                let mut st = conn
                    .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
                    .map_err(sql("cannot read the database's pages"))?;
                let mut rows = st.query([]).map_err(sql("cannot read the database's pages"))?;
                let (mut header, mut reserve, mut seen) = (None::<pages::Header>, 0u8, 0u64);
                let mut batch = Vec::with_capacity(BUF_LEN + pages::HEADER_LEN);
                let mut done = 0u64;
                while let Some(row) = rows.next().map_err(sql("cannot read a page"))? {
                    let pgno: i64 = row.get(0).map_err(sql("cannot read a page"))?;
                    let mut page: Vec<u8> = row.get(1).map_err(sql("cannot read a page"))?;
                    seen += 1;
                    if pgno as u64 != seen {
                        return Err(BackupError::Io(format!("page {pgno} came where page {seen} was expected")));
                    }
                    let h = match header {
                        Some(h) => h,
                        None => {
                            let h = pages::Header { page_len: page.len() as u32, page_count: page_count as u64 };
                            reserve = pages::reserve_len(&page);
                            batch.extend_from_slice(&h.encode());
                            header = Some(h);
                            h
                        }
                    };
                    if page.len() != h.page_len as usize {
                        return Err(BackupError::Io(format!(
                            "page {pgno} has {} bytes, not {}",
                            page.len(),
                            h.page_len
                        )));
                    }
                    let secret = if meta_pages.contains(&pgno) { token.as_bytes() } else { b"" };
                    pages::scrub(&mut page, reserve, secret);
                    batch.extend_from_slice(&page);
                    if batch.len() >= BUF_LEN || seen == h.page_count {
                        done += batch.len() as u64;
                        tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BUF_LEN))).map_err(stopped)?;
                        progress(done, h.stream_len());
                    }
                }
                if header.is_none() || seen != page_count as u64 {
                    return Err(BackupError::Io(format!("read {seen} pages of {page_count}")));
                }
                Ok(())
            })();
            // The writer finishes once the channel is closed.
            drop(tx);
            (read, writer.join().unwrap_or_else(|_| Err(BackupError::Io("the backup's writer failed".into()))))
        });
        // A writer's error explains a reader's "writer stopped".
        let (plain_bytes, plain_hash, stored_bytes, stored_hash) = written?;
        read?;
        let mut m = manifest_base.clone();
        m.plaintext_bytes = plain_bytes;
        m.plaintext_sha256 = plain_hash;
        m.stored_bytes = stored_bytes;
        m.stored_sha256 = stored_hash;
        // The read transaction ends before the upload: the till's WAL can
        // be checkpointed past it while the object travels.
        let _ = conn.execute_batch("COMMIT");
        dest.publish(&m, &obj)?;
        Ok(m)
    })();
    let _ = std::fs::remove_file(&obj);
    result
}

/// Picks a backup: the given id, or the newest.
pub fn pick(dest: &dyn Destination, id: Option<&str>) -> Result<Manifest, BackupError> {
    let all = dest.list()?;
    match id {
        Some(id) => all.into_iter().find(|m| m.backup_id == id).ok_or_else(|| BackupError::NotFound(id.into())),
        None => all.into_iter().next_back().ok_or(BackupError::Empty),
    }
}

fn identities(unlock: &Unlock) -> Result<Vec<Box<dyn age::Identity>>, BackupError> {
    match unlock {
        Unlock::Passphrase(p) => {
            Ok(vec![Box::new(age::scrypt::Identity::new(age::secrecy::SecretString::from(p.clone())))])
        }
        Unlock::IdentityFile(f) => {
            let file = age::IdentityFile::from_file(f.display().to_string())
                .map_err(|e| BackupError::Io(format!("cannot read the identity file {}: {e}", f.display())))?;
            file.into_identities().map_err(|e| BackupError::Invalid(format!("bad identity file {}: {e}", f.display())))
        }
    }
}

/// Reads a backup object's age header and opens its decrypted,
/// decompressed stream with the first identity that fits. The object comes
/// from a destination the till does not control: anything it holds must
/// end in an error, never a panic (fuzzed by `fuzz/`'s `backup_object`).
pub fn open_object<'a, R: Read + 'a>(object: R, ids: &[Box<dyn age::Identity>]) -> Result<impl Read + 'a, BackupError> {
    zstd::stream::Decoder::new(decrypt_object(object, ids)?).map_err(|e| BackupError::Damaged(e.to_string()))
}

/// The decrypted (still compressed) stream of an object.
fn decrypt_object<R: Read>(
    object: R,
    ids: &[Box<dyn age::Identity>],
) -> Result<age::stream::StreamReader<R>, BackupError> {
    let dec = age::Decryptor::new(object).map_err(|_| BackupError::Damaged("not an age-encrypted object".into()))?;
    let reader = dec.decrypt(ids.iter().map(|i| i.as_ref())).map_err(|e| match e {
        age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => BackupError::Decrypt,
        other => BackupError::Damaged(other.to_string()),
    })?;
    Ok(reader)
}

fn cut_short(e: io::Error) -> BackupError {
    BackupError::Damaged(format!("the object does not decrypt or decompress to the end ({e})"))
}

/// Decrypts and decompresses a backup into a new database at `out`,
/// encrypted with `out_key`, checking the digests `check` names, and
/// removes the masked device token. `out` is removed if anything fails.
///
/// A page stream is written page for page through `sqlite_dbpage` (the
/// destination's cipher encrypts each page under `out_key`), with no
/// journal: a failed restore leaves no till behind, so there is nothing to
/// roll back to. Older objects (an encrypted snapshot, or a plaintext
/// database) are unpacked beside `out` and copied under `out_key`.
pub fn extract(
    dest: &dyn Destination,
    m: &Manifest,
    unlock: &Unlock,
    out: &Path,
    out_key: &DbKey,
    check: Check,
    mut progress: impl FnMut(u64, u64),
) -> Result<(), BackupError> {
    if out.exists() {
        return Err(BackupError::Io(format!("{} exists", out.display())));
    }
    let side = out.with_extension("unpacked");
    let r = (|| {
        let raw = dest.open(&m.backup_id)?;
        let ids = identities(unlock)?;
        // Two busy threads, as `age -d | zstd -d` is two processes: one
        // hashes and decrypts the stored object, and this one decompresses
        // it and writes the pages. A third thread only reads the object
        // (from disk or the network), ahead of them. The hash is taken of
        // what age reads, and age reads a valid object to its end; bytes
        // past that end are not hashed, and the digest and length then do
        // not match, as they must not (create writes none). With hashing
        // on a third busy thread, three threads shared two cores and a
        // restore took longer (BENCHMARKS.md, issue 6).
        std::thread::scope(|s| -> Result<(), BackupError> {
            let (tx, rx) = std::sync::mpsc::sync_channel(PIPE_BATCHES);
            s.spawn(move || pump(raw, tx));
            let (hashed_tx, hashed) = std::sync::mpsc::sync_channel(1);
            let stored = HashOnDrop {
                tee: TeeRead {
                    inner: ChannelRead { rx, chunk: Vec::new(), at: 0 },
                    hasher: Some(Sha256::new()),
                    bytes: 0,
                },
                done: hashed_tx,
            };
            let decrypted = decrypt_object(stored, &ids)?;
            let (tx, rx) = std::sync::mpsc::sync_channel(PIPE_BATCHES);
            s.spawn(move || pump(decrypted, tx));
            let (plain_bytes, plain_hash) = {
                let z = zstd::stream::Decoder::new(ChannelRead { rx, chunk: Vec::new(), at: 0 })
                    .map_err(|e| BackupError::Damaged(e.to_string()))?;
                let hasher = (check == Check::Both).then(Sha256::new);
                // No buffer between zstd and the pages: the decoder writes
                // straight into the batch that is written out, one copy of
                // a gigabyte fewer on the busiest thread.
                let mut plain = TeeRead { inner: z, hasher, bytes: 0 };
                let mut head = [0u8; pages::HEADER_LEN];
                plain.read_exact(&mut head).map_err(cut_short)?;
                match pages::Header::decode(&head) {
                    Some(h) => {
                        let h = h.map_err(BackupError::Damaged)?;
                        write_pages(&mut plain, &h, out, out_key, &side, &mut progress, m.plaintext_bytes)?;
                    }
                    None => {
                        let snap_key = unpack_legacy(&mut plain, &head, &side, &mut progress, m.plaintext_bytes)?;
                        keys::export(&side, &snap_key, out, out_key)?;
                        let _ = std::fs::remove_file(&side);
                    }
                }
                // Anything after the pages is not what was backed up.
                let mut rest = [0u8; 1];
                if plain.read(&mut rest).map_err(cut_short)? != 0 {
                    return Err(BackupError::Damaged("the object holds more than its pages".into()));
                }
                (plain.bytes, plain.hasher.map(|h| hex(&h.finalize())))
            };
            // The decrypting thread drops age's reader, and with it the
            // hasher, once age has read the object's end.
            let (stored_hash, stored_bytes) =
                hashed.recv().map_err(|_| BackupError::Io("the thread decrypting the object failed".into()))?;
            if stored_hash != m.stored_sha256 || stored_bytes != m.stored_bytes {
                return Err(BackupError::Damaged(format!(
                    "the stored object's SHA-256 is {stored_hash}, the manifest says {} ({stored_bytes} bytes read, {} expected)",
                    m.stored_sha256, m.stored_bytes
                )));
            }
            if plain_bytes != m.plaintext_bytes || plain_hash.is_some_and(|h| h != m.plaintext_sha256) {
                return Err(BackupError::Damaged(
                    "the decrypted database does not match the manifest's SHA-256".into(),
                ));
            }
            Ok(())
        })?;
        forget_token(out, out_key)
    })();
    if r.is_err() {
        for f in [out.to_path_buf(), side.clone()] {
            let _ = std::fs::remove_file(&f);
            let _ = std::fs::remove_file(f.with_extension("db-wal"));
            let _ = std::fs::remove_file(f.with_extension("db-shm"));
        }
    }
    r
}

/// Writes the pages that follow `h` into a new database at `out` under
/// `key`. Pages of a plaintext till have no room for SQLCipher's IV and
/// HMAC: they go into a plaintext database at `side` first and are copied
/// under `key` from there (the till they came from was plaintext too).
fn write_pages(
    plain: &mut impl Read,
    h: &pages::Header,
    out: &Path,
    key: &DbKey,
    side: &Path,
    progress: &mut impl FnMut(u64, u64),
    total: u64,
) -> Result<(), BackupError> {
    let mut page = vec![0u8; h.page_len as usize];
    plain.read_exact(&mut page).map_err(cut_short)?;
    let encrypted = !matches!(key, DbKey::Plaintext);
    let (target, target_key) = match pages::check_page1(&page, h, encrypted) {
        Ok(()) => (out, key),
        Err(pages::PageError::ReserveTooSmall(_)) => (side, &DbKey::Plaintext),
        Err(e) => return Err(BackupError::Damaged(e.to_string())),
    };
    if matches!(target_key, DbKey::Plaintext) {
        // A plaintext database is its pages end to end: this thread writes
        // each batch it decompressed, with no hand-off to a writer thread.
        // With one, the kernel's copy into the page cache was up to half of
        // a restore's samples, and restores were slower in an interleaved
        // A/B (BENCHMARKS.md, issue 6; why the copy costs that much is not
        // known).
        write_plain_pages(plain, page, h, target, progress, total)?;
    } else {
        write_encrypted_pages(plain, page, h, target, target_key, progress, total)?;
    }
    std::fs::File::open(target).and_then(|f| f.sync_all()).map_err(io("cannot sync the restored database"))?;
    if target == side {
        keys::export(side, &DbKey::Plaintext, out, key)?;
        let _ = std::fs::remove_file(side);
    }
    Ok(())
}

/// What a direct write's buffer address and length must be multiples of:
/// the largest logical block size of the disks a till runs on.
const DIRECT_ALIGN: usize = 4096;

/// A buffer whose bytes start at a multiple of [`DIRECT_ALIGN`], as direct
/// I/O requires. It is made without unsafe code: a little more is
/// allocated and the aligned part is used.
struct Aligned {
    raw: Vec<u8>,
    at: usize,
    len: usize,
}

impl Aligned {
    fn new(cap: usize) -> Aligned {
        let raw = vec![0u8; cap + DIRECT_ALIGN];
        let at = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Aligned { raw, at, len: 0 }
    }

    fn aligned(&self) -> bool {
        self.at < DIRECT_ALIGN
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.at..self.at + self.len]
    }

    /// Fills the buffer with `head` and then the next `n - head.len()`
    /// bytes of `r`.
    fn fill(&mut self, head: &[u8], r: &mut impl Read, n: usize) -> Result<(), BackupError> {
        let at = self.at;
        self.raw[at..at + head.len()].copy_from_slice(head);
        r.read_exact(&mut self.raw[at + head.len()..at + n]).map_err(cut_short)?;
        self.len = n;
        Ok(())
    }
}

/// Writes a plaintext database's pages as the file itself (`page` is the
/// first page, already read).
///
/// Where the filesystem allows it, the file is written with direct I/O
/// (`O_DIRECT`) by a writer thread, while this thread decompresses. A
/// buffered write copies every byte into newly allocated page-cache pages,
/// and on this machine class that copy swung from a quarter to over a
/// second per gigabyte from one run to the next (`copy_folio_from_iter_atomic`
/// was 40 % of a slow restore's samples; BENCHMARKS.md, issue 6). A direct
/// write hands the buffer to the disk, costs the writer thread almost no
/// CPU, and leaves the final sync only metadata to write.
fn write_plain_pages(
    plain: &mut impl Read,
    page: Vec<u8>,
    h: &pages::Header,
    target: &Path,
    progress: &mut impl FnMut(u64, u64),
    total: u64,
) -> Result<(), BackupError> {
    let page_len = h.page_len as usize;
    let batch_len = page_len * (BUF_LEN / page_len).max(1);
    let file_len = h.page_count as usize * page_len;
    let mut first = Aligned::new(batch_len);
    let n = batch_len.min(file_len);
    first.fill(&page, plain, n)?;
    let left = file_len - n;
    let done = pages::HEADER_LEN as u64 + n as u64;
    progress(done, total);
    if let Some(f) = direct_file(target, batch_len, file_len, &first)? {
        return write_direct(plain, f, first, batch_len, left, done, progress, total);
    }
    let mut f = std::fs::File::create(target).map_err(io("cannot write the restored database"))?;
    f.write_all(first.bytes()).map_err(io("cannot write the restored database"))?;
    let mut batch = first;
    let (mut left, mut done) = (left, done);
    while left > 0 {
        let n = batch_len.min(left);
        batch.fill(&[], plain, n)?;
        // The lock page goes in as the zeros it was read as, as SQLite
        // leaves it.
        f.write_all(batch.bytes()).map_err(io("cannot write the restored database"))?;
        left -= n;
        done += n as u64;
        progress(done, total);
    }
    Ok(())
}

/// Opens `target` for direct writes and writes `first` through it. None
/// when direct I/O cannot be used: the batches or the file are not whole
/// blocks, the platform or the filesystem has no direct I/O (tmpfs refuses
/// it when opening), or the disk's blocks are larger than
/// [`DIRECT_ALIGN`] (the first write is refused); the caller then writes
/// the file through the page cache, from the start.
#[cfg(target_os = "linux")]
fn direct_file(
    target: &Path,
    batch_len: usize,
    file_len: usize,
    first: &Aligned,
) -> Result<Option<std::fs::File>, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    if !batch_len.is_multiple_of(DIRECT_ALIGN) || !file_len.is_multiple_of(DIRECT_ALIGN) || !first.aligned() {
        return Ok(None);
    }
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let opened =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(target);
    let mut f = match opened {
        Ok(f) => f,
        Err(e) if refused(&e) => return Ok(None),
        Err(e) => return Err(io("cannot write the restored database")(e)),
    };
    match f.write_all(first.bytes()) {
        Ok(()) => Ok(Some(f)),
        Err(e) if refused(&e) => Ok(None),
        Err(e) => Err(io("cannot write the restored database")(e)),
    }
}

#[cfg(not(target_os = "linux"))]
fn direct_file(_: &Path, _: usize, _: usize, _: &Aligned) -> Result<Option<std::fs::File>, BackupError> {
    Ok(None)
}

/// The rest of a direct write: this thread fills aligned batches, a writer
/// thread writes them in order. Emptied batches come back for reuse, so
/// memory stays at about `PIPE_BATCHES` batches.
#[allow(clippy::too_many_arguments)]
fn write_direct(
    plain: &mut impl Read,
    f: std::fs::File,
    first: Aligned,
    batch_len: usize,
    mut left: usize,
    mut done: u64,
    progress: &mut impl FnMut(u64, u64),
    total: u64,
) -> Result<(), BackupError> {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Aligned>(PIPE_BATCHES);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Aligned>(PIPE_BATCHES + 2);
    let _ = empty_tx.try_send(first);
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<(), BackupError> {
            let mut f = f;
            for batch in full_rx {
                f.write_all(batch.bytes()).map_err(io("cannot write the restored database"))?;
                let _ = empty_tx.try_send(batch);
            }
            Ok(())
        });
        let read = (|| -> Result<(), BackupError> {
            while left > 0 {
                let mut batch = empty_rx.try_recv().unwrap_or_else(|_| Aligned::new(batch_len));
                let n = batch_len.min(left);
                batch.fill(&[], plain, n)?;
                full_tx.send(batch).map_err(|_| BackupError::Io("the restore's writer stopped".into()))?;
                left -= n;
                done += n as u64;
                progress(done, total);
            }
            Ok(())
        })();
        drop(full_tx);
        restore_outcome(read, writer.join())
    })
}

/// The outcome of a restore's two stages: the thread that reads the stream
/// and the writer it feeds. A damaged stream explains the writer's missing
/// pages; a writer's error explains the reader's "writer stopped".
fn restore_outcome(
    read: Result<(), BackupError>,
    written: std::thread::Result<Result<(), BackupError>>,
) -> Result<(), BackupError> {
    let written = written.unwrap_or_else(|_| Err(BackupError::Io("the restore's writer failed".into())));
    match (read, written) {
        (Ok(()), w) => w,
        (Err(BackupError::Io(m)), Err(w)) if m.contains("writer stopped") => Err(w),
        (Err(r), _) => Err(r),
    }
}

/// Writes an encrypted database's pages through SQLCipher, which encrypts
/// them, on a writer thread (`page` is the first page, already read).
fn write_encrypted_pages(
    plain: &mut impl Read,
    mut page: Vec<u8>,
    h: &pages::Header,
    target: &Path,
    target_key: &DbKey,
    progress: &mut impl FnMut(u64, u64),
    total: u64,
) -> Result<(), BackupError> {
    // This thread decompresses the stream (`extract`'s other threads read,
    // hash and decrypt the object) and hashes it for `verify`; a writer
    // thread writes the pages (and SQLCipher encrypts them). Batches of
    // whole pages, about `BUF_LEN` bytes each, pass through a bounded
    // channel.
    let page_len = h.page_len as usize;
    let batch_len = page_len * (BUF_LEN / page_len).max(1);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPE_BATCHES);
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<(), BackupError> {
            let fail = sql("cannot write the restored database");
            let conn = rusqlite::Connection::open(target).map_err(&fail)?;
            conn.pragma_update(None, "cipher_log_level", "NONE").map_err(&fail)?;
            conn.pragma_update(None, "key", target_key.sql_value()).map_err(&fail)?;
            conn.pragma_update(None, "cipher_page_size", h.page_len).map_err(&fail)?;
            // No journal and no syncs while the pages go in: the file is
            // new and is removed if anything fails; it is synced once at
            // the end.
            conn.pragma_update(None, "journal_mode", "OFF").map_err(&fail)?;
            conn.pragma_update(None, "synchronous", "OFF").map_err(&fail)?;
            conn.execute_batch("BEGIN").map_err(&fail)?;
            let mut pgno = 0u64;
            {
                let mut st = conn.prepare("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)").map_err(&fail)?;
                for batch in rx {
                    for page in batch.chunks(page_len) {
                        pgno += 1;
                        // The page holding the byte at 1 GiB is SQLite's lock
                        // page: never used, never written (the pager refuses
                        // it as corrupt).
                        if pgno != pages::lock_page(h.page_len) {
                            st.execute(rusqlite::params![pgno as i64, page]).map_err(&fail)?;
                        }
                    }
                }
            }
            if pgno != h.page_count {
                // The reader stopped early: nothing is committed.
                return Err(BackupError::Damaged(format!("{pgno} of {} pages arrived", h.page_count)));
            }
            conn.execute_batch("COMMIT").map_err(&fail)?;
            Ok(())
        });
        let read = (|| -> Result<(), BackupError> {
            let stopped = |_| BackupError::Io("the restore's writer stopped".into());
            let mut batch = Vec::with_capacity(batch_len);
            batch.extend_from_slice(&page);
            let mut done = pages::HEADER_LEN as u64;
            for pgno in 2..=h.page_count + 1 {
                if batch.len() >= batch_len || pgno > h.page_count {
                    done += batch.len() as u64;
                    tx.send(std::mem::replace(&mut batch, Vec::with_capacity(batch_len))).map_err(stopped)?;
                    progress(done, total);
                }
                if pgno <= h.page_count {
                    plain.read_exact(&mut page).map_err(cut_short)?;
                    batch.extend_from_slice(&page);
                }
            }
            Ok(())
        })();
        drop(tx);
        restore_outcome(read, writer.join())
    })
}

/// Unpacks a backup made before page streams into `side`; returns the key
/// it is encrypted with. `head` is what was read of the stream already.
fn unpack_legacy(
    plain: &mut impl Read,
    head: &[u8; pages::HEADER_LEN],
    side: &Path,
    progress: &mut impl FnMut(u64, u64),
    total: u64,
) -> Result<DbKey, BackupError> {
    let f = std::fs::File::create(side).map_err(io("cannot write the restored database"))?;
    let mut w = BufWriter::with_capacity(BUF_LEN, f);
    let mut key = DbKey::Plaintext;
    if head.starts_with(SNAPSHOT_KEY_TAG) {
        let mut rest = [0u8; SNAPSHOT_HEADER_LEN - pages::HEADER_LEN];
        plain.read_exact(&mut rest).map_err(cut_short)?;
        let hex_key = [&head[4..], &rest[..rest.len() - 1]].concat();
        key = DbKey::parse_raw(&String::from_utf8_lossy(&hex_key))
            .ok_or_else(|| BackupError::Damaged("the snapshot's key is unreadable".into()))?;
    } else {
        w.write_all(head).map_err(io("cannot write the restored database"))?;
    }
    let mut buf = vec![0u8; BUF_LEN];
    let mut done = 0u64;
    loop {
        let n = plain.read(&mut buf).map_err(cut_short)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).map_err(io("cannot write the restored database"))?;
        done += n as u64;
        progress(done, total);
    }
    w.flush().map_err(io("cannot write the restored database"))?;
    w.get_ref().sync_all().map_err(io("cannot sync"))?;
    Ok(key)
}

/// Removes the masked device token from a restored database.
fn forget_token(db: &Path, key: &DbKey) -> Result<(), BackupError> {
    let conn = rusqlite::Connection::open(db).map_err(sql("cannot open the restored database"))?;
    keys::apply(&conn, key, db)?;
    conn.pragma_update(None, "secure_delete", "ON")
        .and_then(|_| conn.execute("DELETE FROM meta WHERE key = ?1", [DEVICE_TOKEN_META]))
        .map_err(sql("cannot clean the restored database"))?;
    Ok(())
}

/// What verify found.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub backup_id: String,
    pub plaintext_sha256: String,
    pub stored_sha256: String,
    pub integrity: String,
    pub sales: i64,
}

/// Downloads, decrypts and checks a backup: both digests and SQLite's
/// `PRAGMA integrity_check`.
pub fn verify(dest: &dyn Destination, id: Option<&str>, unlock: &Unlock, work: &Path) -> Result<Verified, BackupError> {
    verify_with_progress(dest, id, unlock, work, |_, _| {})
}

/// [`verify`], reporting the bytes decrypted so far.
pub fn verify_with_progress(
    dest: &dyn Destination,
    id: Option<&str>,
    unlock: &Unlock,
    work: &Path,
    progress: impl FnMut(u64, u64),
) -> Result<Verified, BackupError> {
    let m = pick(dest, id)?;
    std::fs::create_dir_all(work).map_err(io("cannot create the work folder"))?;
    let tmp = work.join(format!(".{}.verify.db", m.backup_id));
    let _ = std::fs::remove_file(&tmp);
    // The copy is checked under a key that lives only in this process.
    let tmp_key = DbKey::random()?;
    extract(dest, &m, unlock, &tmp, &tmp_key, Check::Both, progress)?;
    let r = (|| {
        let conn = rusqlite::Connection::open_with_flags(&tmp, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| BackupError::Damaged(e.to_string()))?;
        keys::apply(&conn, &tmp_key, &tmp).map_err(|e| BackupError::Damaged(e.to_string()))?;
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| BackupError::Damaged(e.to_string()))?;
        if integrity != "ok" {
            return Err(BackupError::Damaged(format!("integrity check: {integrity}")));
        }
        let sales: i64 = conn
            .query_row("SELECT count(*) FROM ledger WHERE tbl = 'sales'", [], |r| r.get(0))
            .map_err(|e| BackupError::Damaged(e.to_string()))?;
        Ok(Verified {
            backup_id: m.backup_id.clone(),
            plaintext_sha256: m.plaintext_sha256.clone(),
            stored_sha256: m.stored_sha256.clone(),
            integrity,
            sales,
        })
    })();
    for f in [tmp.clone(), tmp.with_extension("db-wal"), tmp.with_extension("db-shm")] {
        let _ = std::fs::remove_file(f);
    }
    r
}

/// Keeps the newest `keep` backups; returns the ids removed.
pub fn prune(dest: &dyn Destination, keep: usize) -> Result<Vec<String>, BackupError> {
    let all = dest.list()?;
    let n = all.len().saturating_sub(keep);
    let mut removed = vec![];
    for m in all.into_iter().take(n) {
        dest.remove(&m.backup_id)?;
        removed.push(m.backup_id);
    }
    Ok(removed)
}

/// Restores a backup into a new till folder (refused if it holds a till),
/// under a new key made as `spec` says (the lost till's key is not
/// needed). Returns the manifest; a hub till must then re-enrol as a new
/// device (the caller does that: the device token is never in a backup).
pub fn restore_files(
    dest: &dyn Destination,
    id: Option<&str>,
    unlock: &Unlock,
    into: &Path,
    spec: &keys::KeySpec,
    progress: impl FnMut(u64, u64),
) -> Result<Manifest, BackupError> {
    if into.join(tillsync_store::DB_FILE).exists() {
        return Err(BackupError::Invalid(format!(
            "{} already holds a till: restore into a new folder",
            into.display()
        )));
    }
    let m = pick(dest, id)?;
    std::fs::create_dir_all(into).map_err(io("cannot create the folder"))?;
    // The pages are written straight into the new till under its new key.
    let r = (|| {
        let key = keys::provision(into, spec)?;
        extract(dest, &m, unlock, &into.join(tillsync_store::DB_FILE), &key, Check::Stored, progress)?;
        Ok(m)
    })();
    if r.is_err() {
        for f in keys::key_files(into) {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_file(into.join(tillsync_store::DB_FILE));
    }
    r
}

/// A download read chunk by chunk as it arrives, driving its stream on a
/// runtime of its own (memory stays flat). Used by the S3 destination and
/// the hub destination of the node crate.
pub struct StreamRead<E> {
    rt: std::sync::Arc<tokio::runtime::Runtime>,
    stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, E>>,
    chunk: bytes::Bytes,
}

impl<E> StreamRead<E> {
    /// Reads `stream`, polled on `rt`.
    pub fn new(
        rt: std::sync::Arc<tokio::runtime::Runtime>,
        stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, E>>,
    ) -> Self {
        StreamRead { rt, stream, chunk: bytes::Bytes::new() }
    }
}

impl<E: std::fmt::Display> Read for StreamRead<E> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use futures_util::StreamExt;
        while self.chunk.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(io::Error::other(format!("download failed: {e}"))),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
