//! `keys::resolve` asks whether a folder with no key record holds a
//! plaintext database. A process that has that database open (a till
//! made before encryption at rest, under `node run`) must keep its locks
//! through the question: closing any file handle of its own to the file
//! would drop every POSIX lock the process holds on it, and other
//! processes would then write beside it. The other process here is the
//! system's `sqlite3` (scripts/setup installs it).

use std::path::Path;
use std::process::Command;
use tillsync_store::keys::{self, DbKey};

/// Whether another process can take the write lock of `db` right now.
fn another_process_can_write(db: &Path) -> bool {
    let o = Command::new("sqlite3")
        .arg(db)
        .arg("BEGIN IMMEDIATE; COMMIT;")
        .output()
        .expect("the sqlite3 command-line tool (scripts/setup installs it)");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() || stderr.contains("locked"), "sqlite3 failed otherwise: {stderr}");
    o.status.success()
}

#[test]
fn resolving_a_plaintext_folder_keeps_this_process_locks() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("till.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE t(x);").unwrap();
    assert!(another_process_can_write(&db), "positive control: nothing holds the database yet");
    // A write transaction: its RESERVED lock keeps other writers out.
    conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);").unwrap();
    assert!(!another_process_can_write(&db), "positive control: the lock is seen by another process");
    assert_eq!(keys::resolve(&db).unwrap(), DbKey::Plaintext);
    assert!(!another_process_can_write(&db), "resolving the key dropped this process's lock on the database");
    conn.execute_batch("COMMIT").unwrap();
    assert!(another_process_can_write(&db));
}

#[test]
fn an_encrypted_database_without_its_key_record_is_not_taken_for_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("till.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let key = DbKey::random().unwrap();
    conn.pragma_update(None, "key", key.sql_value()).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    drop(conn);
    let e = keys::resolve(&db).expect_err("no key record, encrypted file");
    assert!(e.to_string().contains("key is missing"), "{e}");
    // A missing file, and an empty one, hold nothing to decrypt.
    assert_eq!(keys::resolve(&tmp.path().join("none.db")).unwrap(), DbKey::Plaintext);
    std::fs::write(tmp.path().join("empty.db"), b"").unwrap();
    assert_eq!(keys::resolve(&tmp.path().join("empty.db")).unwrap(), DbKey::Plaintext);
}
