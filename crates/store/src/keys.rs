//! Encryption at rest of a till's database (SQLCipher).
//!
//! A till folder says where its key is:
//! - `DIR/till.key`: a random 256-bit key (64 hex digits, mode 0600), the
//!   default;
//! - `DIR/till.keyref`: one line naming another source: `key-file PATH`
//!   (removable media, a TPM-backed path), `passphrase-file PATH`,
//!   `passphrase-env` (the passphrase in `TILL_DB_PASSPHRASE`) or
//!   `plaintext` (chosen explicitly at init);
//! - neither: a plaintext database from before encryption (or the hub's
//!   own state files, which are never encrypted).
//!
//! A random key is given to SQLCipher raw (`x'...'`, no key derivation);
//! a passphrase goes through SQLCipher's own KDF (PBKDF2-HMAC-SHA512,
//! 256,000 iterations, a salt per database).
//!
//! Rotation ([`rekey`]) first records the new key beside the old one
//! (`DIR/till.keyref.next`), then rekeys the database in one transaction,
//! then moves the new key into place. Every open finishes or undoes a
//! rotation that was cut off (whichever key opens the database wins), so
//! there is no moment in which the folder's key does not open it.

use crate::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The default key file inside a till folder.
pub const KEY_FILE: &str = "till.key";
/// The file naming where the key is when it is not `till.key`.
pub const KEYREF_FILE: &str = "till.keyref";
/// A rotation in progress: names the new key.
const KEYREF_NEXT: &str = "till.keyref.next";
/// The environment variable read by `passphrase-env` folders.
pub const PASSPHRASE_ENV: &str = "TILL_DB_PASSPHRASE";
/// Shortest passphrase accepted, in characters.
pub const PASSPHRASE_LEN_MIN: usize = 8;
/// How long a rotation waits for other connections to close, in ms.
const REKEY_WAIT_MS: u64 = 1_000;

/// Where a new till's key comes from (`till node init` and every command
/// that makes a till folder).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KeySpec {
    /// A new random key in `DIR/till.key`.
    #[default]
    Folder,
    /// A key file elsewhere: used if it exists, created (random) if not.
    KeyFile(PathBuf),
    /// A passphrase read from this file at every open.
    PassphraseFile(PathBuf),
    /// A passphrase read from `TILL_DB_PASSPHRASE` at every open.
    PassphraseEnv,
    /// No encryption (only when asked for explicitly).
    Plaintext,
}

/// The key a database is opened with. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub enum DbKey {
    Plaintext,
    /// 32 random bytes, hex.
    Raw(String),
    /// A passphrase for SQLCipher's KDF.
    Passphrase(String),
}

impl std::fmt::Debug for DbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DbKey::Plaintext => "DbKey::Plaintext",
            DbKey::Raw(_) => "DbKey::Raw(..)",
            DbKey::Passphrase(_) => "DbKey::Passphrase(..)",
        })
    }
}

impl DbKey {
    /// A new random 256-bit key from the operating system.
    pub fn random() -> Result<DbKey, StoreError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| StoreError::Io(format!("no randomness for a key: {e}")))?;
        Ok(DbKey::Raw(tillsync_core::change::hex(&k)))
    }

    /// Parses the text of a key file (64 hex digits).
    pub fn parse_raw(text: &str) -> Option<DbKey> {
        let t = text.trim();
        (t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| DbKey::Raw(t.to_ascii_lowercase()))
    }

    /// The value given to `PRAGMA key`, `PRAGMA rekey` or `ATTACH ... KEY`:
    /// SQLCipher takes `x'...'` as a raw key and anything else as a
    /// passphrase; the empty string means no encryption.
    pub fn sql_value(&self) -> String {
        match self {
            DbKey::Plaintext => String::new(),
            DbKey::Raw(h) => format!("x'{h}'"),
            DbKey::Passphrase(p) => p.clone(),
        }
    }

    /// `sqlcipher` or `plaintext`.
    pub fn mode(&self) -> &'static str {
        if matches!(self, DbKey::Plaintext) { "plaintext" } else { "sqlcipher" }
    }
}

/// Where a folder's key is, as recorded in it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    KeyFile(PathBuf),
    PassphraseFile(PathBuf),
    PassphraseEnv,
    Plaintext,
}

impl Source {
    fn line(&self) -> String {
        match self {
            Source::KeyFile(p) => format!("key-file {}\n", p.display()),
            Source::PassphraseFile(p) => format!("passphrase-file {}\n", p.display()),
            Source::PassphraseEnv => "passphrase-env\n".into(),
            Source::Plaintext => "plaintext\n".into(),
        }
    }

    fn parse(text: &str, at: &Path) -> Result<Source, StoreError> {
        let t = text.trim();
        let (word, rest) = t.split_once(' ').unwrap_or((t, ""));
        match word {
            "key-file" if !rest.is_empty() => Ok(Source::KeyFile(PathBuf::from(rest.trim()))),
            "passphrase-file" if !rest.is_empty() => Ok(Source::PassphraseFile(PathBuf::from(rest.trim()))),
            "passphrase-env" => Ok(Source::PassphraseEnv),
            "plaintext" => Ok(Source::Plaintext),
            _ => Err(StoreError::Invalid(format!(
                "{} is not understood (expected `key-file PATH`, `passphrase-file PATH`, `passphrase-env` or `plaintext`)",
                at.display()
            ))),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::KeyFile(p) => format!("the key file {}", p.display()),
            Source::PassphraseFile(p) => format!("the passphrase in {}", p.display()),
            Source::PassphraseEnv => format!("the passphrase in ${PASSPHRASE_ENV}"),
            Source::Plaintext => "no key (plaintext)".into(),
        }
    }

    fn load(&self) -> Result<DbKey, StoreError> {
        match self {
            Source::Plaintext => Ok(DbKey::Plaintext),
            Source::KeyFile(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    StoreError::KeyMissing(format!(
                        "cannot read the till's key file {} ({e}): put the key file back (or mount the media that holds it)",
                        p.display()
                    ))
                })?;
                DbKey::parse_raw(&text).ok_or_else(|| {
                    StoreError::KeyMissing(format!("{} is not a till key file (64 hex digits expected)", p.display()))
                })
            }
            Source::PassphraseFile(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    StoreError::KeyMissing(format!(
                        "cannot read the till's passphrase file {} ({e}): put it back (or mount the media that holds it)",
                        p.display()
                    ))
                })?;
                passphrase(text.trim_end_matches(['\n', '\r']), &p.display().to_string())
            }
            Source::PassphraseEnv => {
                let p = std::env::var(PASSPHRASE_ENV).map_err(|_| {
                    StoreError::KeyMissing(format!(
                        "this till's database is encrypted with a passphrase: set {PASSPHRASE_ENV}"
                    ))
                })?;
                passphrase(&p, PASSPHRASE_ENV)
            }
        }
    }
}

fn passphrase(p: &str, from: &str) -> Result<DbKey, StoreError> {
    if p.chars().count() < PASSPHRASE_LEN_MIN {
        return Err(StoreError::Invalid(format!(
            "the passphrase in {from} is too short: use at least {PASSPHRASE_LEN_MIN} characters"
        )));
    }
    Ok(DbKey::Passphrase(p.to_string()))
}

fn io_err(what: &str, p: &Path) -> impl Fn(std::io::Error) -> StoreError {
    let m = format!("{what} {}", p.display());
    move |e| StoreError::Io(format!("{m}: {e}"))
}

/// Writes `text` to a new file readable by its owner only, synced.
fn write_private(path: &Path, text: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("cannot create", path))?;
    f.write_all(text.as_bytes()).map_err(io_err("cannot write", path))?;
    f.sync_all().map_err(io_err("cannot sync", path))?;
    Ok(())
}

/// Replaces `path` with `text` atomically (temporary file, then rename).
fn replace_private(path: &Path, text: &str) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, text)?;
    std::fs::rename(&tmp, path).map_err(io_err("cannot write", path))?;
    sync_dir(path);
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Some(d) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = d.sync_all();
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Creates the key of a new till folder as `spec` says and records where
/// it is; returns it. The folder must exist and hold no database.
pub fn provision(dir: &Path, spec: &KeySpec) -> Result<DbKey, StoreError> {
    let (key, source) = match spec {
        KeySpec::Folder => {
            let key = DbKey::random()?;
            let DbKey::Raw(h) = &key else { unreachable!("a random key is raw") };
            let path = dir.join(KEY_FILE);
            if path.exists() {
                return Err(StoreError::Invalid(format!(
                    "{} already exists: this folder held a till; choose an empty folder",
                    path.display()
                )));
            }
            write_private(&path, &format!("{h}\n"))?;
            sync_dir(&path);
            return Ok(key);
        }
        KeySpec::KeyFile(p) => {
            let p = absolute(p);
            let key = if p.exists() {
                Source::KeyFile(p.clone()).load()?
            } else {
                let key = DbKey::random()?;
                let DbKey::Raw(h) = &key else { unreachable!("a random key is raw") };
                write_private(&p, &format!("{h}\n"))?;
                sync_dir(&p);
                key
            };
            (key, Source::KeyFile(p))
        }
        KeySpec::PassphraseFile(p) => {
            let src = Source::PassphraseFile(absolute(p));
            (src.load()?, src)
        }
        KeySpec::PassphraseEnv => (Source::PassphraseEnv.load()?, Source::PassphraseEnv),
        KeySpec::Plaintext => (DbKey::Plaintext, Source::Plaintext),
    };
    replace_private(&dir.join(KEYREF_FILE), &source.line())?;
    Ok(key)
}

/// Checks that `spec` can give a key (a readable passphrase, a readable
/// key file when it exists) without writing anything: callers check
/// before spending a one-time enrolment code.
pub fn check(spec: &KeySpec) -> Result<(), StoreError> {
    match spec {
        KeySpec::KeyFile(p) if p.exists() => Source::KeyFile(p.clone()).load().map(drop),
        KeySpec::PassphraseFile(p) => Source::PassphraseFile(p.clone()).load().map(drop),
        KeySpec::PassphraseEnv => Source::PassphraseEnv.load().map(drop),
        _ => Ok(()),
    }
}

/// Where the folder's key is recorded: `till.keyref`, else `till.key`,
/// else nothing (a plaintext database).
fn recorded(dir: &Path) -> Result<Option<Source>, StoreError> {
    let r = dir.join(KEYREF_FILE);
    if let Ok(text) = std::fs::read_to_string(&r) {
        return Source::parse(&text, &r).map(Some);
    }
    let k = dir.join(KEY_FILE);
    if k.exists() {
        return Ok(Some(Source::KeyFile(k)));
    }
    Ok(None)
}

/// Whether `db` reads as a plain SQLite database (or holds nothing yet).
///
/// Asked through SQLite, not by reading the header with `std::fs`: closing
/// a file handle of its own drops every POSIX lock the process holds on the
/// file, its open connections' too, and other processes would then take
/// the database for unused (ARCHITECTURE.md). SQLite keeps such handles
/// open until the last connection to the file closes.
fn is_plaintext_file(db: &Path) -> bool {
    let Ok(conn) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        // A missing file holds nothing to decrypt.
        return true;
    };
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => true,
        // Encrypted, or not a database at all: either way, not plaintext.
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::NotADatabase => false,
        // Unreadable for another reason (busy, permissions): as before, the
        // open that follows says what is wrong.
        Err(_) => true,
    }
}

/// The key of the till database `db` (`DIR/till.db`), from its folder.
pub fn resolve(db: &Path) -> Result<DbKey, StoreError> {
    let dir = db.parent().unwrap_or(Path::new("."));
    match recorded(dir)? {
        Some(src) => src.load(),
        None if is_plaintext_file(db) => Ok(DbKey::Plaintext),
        None => Err(StoreError::KeyMissing(format!(
            "{} is encrypted and its key is missing (no {KEY_FILE} or {KEYREF_FILE} in {}): put the key file back; a lost key cannot be recovered: restore the till from a backup (`till backup restore`)",
            db.display(),
            dir.display()
        ))),
    }
}

/// SQLCipher logs a failed decryption on stderr by itself; the caller's
/// error says it once, with what to do.
fn quiet(conn: &Connection) {
    let _ = conn.pragma_update(None, "cipher_log_level", "NONE");
}

/// Applies `key` to a freshly opened connection and checks that it opens
/// the database, with a message that says what to do when it does not.
pub fn apply(conn: &Connection, key: &DbKey, db: &Path) -> Result<(), StoreError> {
    quiet(conn);
    if !matches!(key, DbKey::Plaintext) {
        conn.pragma_update(None, "key", key.sql_value())?;
        // SQLCipher sets its default logging when a key first activates it.
        quiet(conn);
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => Ok(()),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
            Err(StoreError::WrongKey(match key {
                DbKey::Plaintext => format!(
                    "{} is encrypted but its folder names no key: put its key file at {}/{KEY_FILE} (or name it in {KEYREF_FILE}); a lost key cannot be recovered: restore from a backup",
                    db.display(),
                    db.parent().unwrap_or(Path::new(".")).display()
                ),
                _ => format!(
                    "the key does not open {}: a wrong key file or passphrase, or the database is damaged (encrypted, the two look alike): check the key; a lost key or a damaged database cannot be recovered: restore from a backup (`till backup restore`)",
                    db.display()
                ),
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens the till database `db` with its folder's key (finishing or
/// undoing a cut-off rotation first).
pub fn open(db: &Path, flags: OpenFlags) -> Result<(Connection, DbKey), StoreError> {
    let dir = db.parent().unwrap_or(Path::new("."));
    if dir.join(KEYREF_NEXT).exists() {
        recover(dir, db)?;
    }
    let key = resolve(db)?;
    let conn = Connection::open_with_flags(db, flags).map_err(|e| StoreError::from_open(e, db))?;
    apply(&conn, &key, db)?;
    Ok((conn, key))
}

/// Opens the till database `db` read-write with its key: for tools and
/// tests that read the database directly.
pub fn connect(db: &Path) -> Result<Connection, StoreError> {
    let (conn, _) = open(db, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    crate::set_busy_wait(&conn)?;
    Ok(conn)
}

/// `sqlcipher` or `plaintext`: how the till database `db` is stored.
pub fn mode(db: &Path) -> Result<&'static str, StoreError> {
    Ok(resolve(db)?.mode())
}

/// Tries `key` on `db` without changing anything.
fn opens(db: &Path, key: &DbKey) -> bool {
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok().is_some_and(|c| apply(&c, key, db).is_ok())
}

/// Finishes a rotation whose new key already opens the database, or
/// undoes one that never reached it.
fn recover(dir: &Path, db: &Path) -> Result<(), StoreError> {
    let next_path = dir.join(KEYREF_NEXT);
    let next = Source::parse(&std::fs::read_to_string(&next_path).unwrap_or_default(), &next_path)?;
    if resolve(db).is_ok_and(|k| opens(db, &k)) {
        // The rotation never reached the database, or was finished but
        // for this note: the current record stands.
        if let Source::KeyFile(p) = &next
            && p.extension().is_some_and(|e| e == "next")
        {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_file(&next_path);
        sync_dir(&next_path);
        return Ok(());
    }
    if opens(db, &next.load()?) {
        finish(dir, &next)?;
    }
    Ok(())
}

/// Moves a rotation's new key into place.
fn finish(dir: &Path, next: &Source) -> Result<(), StoreError> {
    let default = dir.join(KEY_FILE);
    let default_next = dir.join(format!("{KEY_FILE}.next"));
    match next {
        Source::KeyFile(p) if *p == default_next => {
            // The record goes first: until the rename, no record and no
            // `till.key` leaves `till.key.next` as the only candidate.
            let _ = std::fs::remove_file(dir.join(KEYREF_FILE));
            std::fs::rename(p, &default).map_err(io_err("cannot move the new key to", &default))?;
        }
        other => {
            replace_private(&dir.join(KEYREF_FILE), &other.line())?;
            let _ = std::fs::remove_file(&default);
        }
    }
    let _ = std::fs::remove_file(dir.join(KEYREF_NEXT));
    sync_dir(&default);
    Ok(())
}

/// What a rotation did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rekeyed {
    pub from: &'static str,
    pub to: &'static str,
    /// Where the key is now, said for people (never the key).
    pub key: String,
}

/// Rotates the key of the till database in `dir` to a new one chosen by
/// `spec` (`KeySpec::Folder`: a new random key in `DIR/till.key`). A
/// plaintext database is encrypted. The till must not be running.
pub fn rekey(dir: &Path, spec: &KeySpec) -> Result<Rekeyed, StoreError> {
    let db = dir.join(crate::DB_FILE);
    if !db.is_file() {
        return Err(StoreError::NotATill(dir.display().to_string()));
    }
    let (conn, old) = open(&db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let next_path = dir.join(KEYREF_NEXT);
    // The new key is recorded first, under names that do not replace the
    // current ones.
    let (new, next) = match spec {
        KeySpec::Plaintext => {
            return Err(StoreError::Invalid(
                "a till database is not decrypted in place: restore a backup with --plaintext instead".into(),
            ));
        }
        KeySpec::Folder => {
            let key = DbKey::random()?;
            let DbKey::Raw(h) = &key else { unreachable!("a random key is raw") };
            let p = dir.join(format!("{KEY_FILE}.next"));
            let _ = std::fs::remove_file(&p);
            write_private(&p, &format!("{h}\n"))?;
            (key, Source::KeyFile(p))
        }
        KeySpec::KeyFile(p) => {
            let p = absolute(p);
            if p.exists() {
                return Err(StoreError::Invalid(format!(
                    "{} exists: name a new file for the new key (it is created)",
                    p.display()
                )));
            }
            let key = DbKey::random()?;
            let DbKey::Raw(h) = &key else { unreachable!("a random key is raw") };
            write_private(&p, &format!("{h}\n"))?;
            (key, Source::KeyFile(p))
        }
        KeySpec::PassphraseFile(p) => {
            let src = Source::PassphraseFile(absolute(p));
            (src.load()?, src)
        }
        KeySpec::PassphraseEnv => (Source::PassphraseEnv.load()?, Source::PassphraseEnv),
    };
    if new == old {
        return Err(StoreError::Invalid("the new key is the current key: choose another".into()));
    }
    // Leaving WAL mode folds the WAL into the file and needs every other
    // connection closed (each holds a shared lock in WAL mode): a running
    // till would keep reading with the old key.
    conn.busy_timeout(std::time::Duration::from_millis(REKEY_WAIT_MS))?;
    let journal: String = conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0)).unwrap_or_default();
    if !journal.eq_ignore_ascii_case("delete") {
        if let Source::KeyFile(p) = &next {
            let _ = std::fs::remove_file(p);
        }
        return Err(StoreError::Invalid(format!(
            "{} is in use (is `till node run` or the UI running?): stop the till, then rekey",
            dir.display()
        )));
    }
    replace_private(&next_path, &next.line())?;
    let result = if matches!(old, DbKey::Plaintext) {
        drop(conn);
        encrypt_copy(&db, &new)
    } else {
        let r = conn.pragma_update(None, "rekey", new.sql_value()).map_err(StoreError::from);
        drop(conn);
        r
    };
    if let Err(e) = result {
        // Whichever key opens the database now is kept.
        recover(dir, &db)?;
        return Err(e);
    }
    finish(dir, &next)?;
    Ok(Rekeyed { from: old.mode(), to: new.mode(), key: describe(dir)? })
}

/// Encrypts a plaintext database: an encrypted copy beside it
/// (`sqlcipher_export`, in one transaction) renamed over it.
fn encrypt_copy(db: &Path, key: &DbKey) -> Result<(), StoreError> {
    let tmp = db.with_extension("db.encrypting");
    let _ = std::fs::remove_file(&tmp);
    let r = export(db, &DbKey::Plaintext, &tmp, key);
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return r;
    }
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let shm = PathBuf::from(format!("{}-shm", db.display()));
    let _ = std::fs::remove_file(wal);
    let _ = std::fs::remove_file(shm);
    std::fs::rename(&tmp, db).map_err(io_err("cannot replace", db))?;
    sync_dir(db);
    Ok(())
}

/// Copies the database `src` (opened with `src_key`) into the new file
/// `dst` encrypted with `dst_key`, in one read transaction of `src`, with
/// `sqlcipher_export` (the only copy SQLCipher allows between different
/// keys). The schema version (`user_version`) comes along.
pub fn export(src: &Path, src_key: &DbKey, dst: &Path, dst_key: &DbKey) -> Result<(), StoreError> {
    if dst.exists() {
        return Err(StoreError::Io(format!("{} exists", dst.display())));
    }
    let out = Connection::open(dst)?;
    quiet(&out);
    if !matches!(dst_key, DbKey::Plaintext) {
        out.pragma_update(None, "key", dst_key.sql_value())?;
        quiet(&out);
    }
    // Deleted rows (a device token removed from a backup) are overwritten.
    out.pragma_update(None, "secure_delete", "ON")?;
    out.execute("ATTACH DATABASE ?1 AS src KEY ?2", rusqlite::params![src.display().to_string(), src_key.sql_value()])
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => {
                StoreError::WrongKey(format!("the key does not open {}", src.display()))
            }
            _ => e.into(),
        })?;
    crate::set_busy_wait(&out)?;
    out.execute_batch("BEGIN")?;
    let r = (|| -> Result<(), StoreError> {
        out.query_row("SELECT sqlcipher_export('main', 'src')", [], |_| Ok(()))?;
        let v: i64 = out.query_row("PRAGMA src.user_version", [], |r| r.get(0))?;
        out.pragma_update(Some("main"), "user_version", v)?;
        Ok(())
    })();
    match r {
        Ok(()) => out.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = out.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    out.execute_batch("DETACH DATABASE src")?;
    drop(out);
    std::fs::File::open(dst).and_then(|f| f.sync_all()).map_err(io_err("cannot sync", dst))?;
    Ok(())
}

/// Where the folder's key is, for people (never the key itself).
pub fn describe(dir: &Path) -> Result<String, StoreError> {
    Ok(match recorded(dir)? {
        Some(s) => s.describe(),
        None => "no key (plaintext)".into(),
    })
}

/// The files of a till folder that hold or name its key (for `node reset`).
pub fn key_files(dir: &Path) -> Vec<PathBuf> {
    [KEY_FILE, KEYREF_FILE, KEYREF_NEXT].iter().map(|f| dir.join(f)).filter(|p| p.exists()).collect()
}
