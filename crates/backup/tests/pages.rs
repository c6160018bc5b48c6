//! Backups as page streams, at the crate's boundary: real till databases
//! (encrypted and plaintext), real files, real age and zstd.

use std::io::{Read, Write};
use std::path::Path;
use tillsync_backup::{Check, Destination, Folder, Key, Manifest, Unlock, pages};
use tillsync_core::domain::{Method, PaymentInput};
use tillsync_core::{IdGen, Schema};
use tillsync_store::keys::{self, DbKey, KeySpec};
use tillsync_store::{Identity, ProductFields, SaleRequest, Store};
use uuid::Uuid;

const PASS: &str = "correct horse battery staple";
const TOKEN: &str = "tsd_5f1c0ffee5f1c0ffee5f1c0ffee5f1c0ffee5f1c0ffee5f1c0ffee5f1c0ffee";

fn identity() -> Identity {
    Identity {
        tenant_id: Uuid::from_u128(1),
        store_id: Uuid::from_u128(2),
        device_id: Uuid::from_u128(0xd1),
        receipt_prefix: "T1".into(),
        name: "till 1".into(),
        mode: "standalone".into(),
    }
}

/// A till with a catalogue, `sales` sales and a device token.
fn till(dir: &Path, spec: &KeySpec, sales: usize) -> (String, String) {
    let mut s = Store::create_keyed(dir, identity(), Schema::standard(), IdGen::from_u64(7), spec).unwrap();
    for i in 0..20 {
        let f = ProductFields {
            name: Some(format!("Cheddar and chive scone no. {i}")),
            price_minor: Some(250 + i),
            tax_rate_bp: Some(2000),
            ..Default::default()
        };
        s.add_product(1_000 + i as u64, &format!("SCONE{i}"), &f).unwrap();
    }
    for i in 0..sales {
        let cash = PaymentInput { method: Method::Cash, amount_minor: None, brand: None, last4: None };
        let req = SaleRequest {
            items: vec![(format!("SCONE{}", i % 20), 1 + (i % 3) as i64)],
            payments: vec![cash],
            ..Default::default()
        };
        s.sell(10_000 + i as u64, &req).unwrap();
    }
    let digests = s.digests().unwrap();
    drop(s);
    tillsync_store::write_meta(dir, tillsync_backup::DEVICE_TOKEN_META, Some(TOKEN)).unwrap();
    digests
}

fn digests_of(db: &Path, key: &DbKey) -> (String, String) {
    // A till folder of its own around the restored file, so Store opens it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(db, dir.path().join(tillsync_store::DB_FILE)).unwrap();
    if let DbKey::Raw(h) = key {
        std::fs::write(dir.path().join("till.key"), h).unwrap();
    }
    let s = Store::open(dir.path(), Schema::standard(), IdGen::from_u64(9)).unwrap();
    assert_eq!(s.integrity_check().unwrap(), "ok");
    s.digests().unwrap()
}

/// The age key of every test but the first: an X25519 key. A passphrase
/// costs about a second of scrypt at each use, and the damaged-stream test
/// alone decrypts 18 times (the passphrase path has the first test, and
/// the CLI's tests).
fn age_key() -> &'static age::x25519::Identity {
    static KEY: std::sync::OnceLock<age::x25519::Identity> = std::sync::OnceLock::new();
    KEY.get_or_init(age::x25519::Identity::generate)
}

fn key() -> Key {
    Key::Recipient(age_key().to_public().to_string())
}

/// Writes the identity file into `dir` and unlocks with it.
fn unlock(dir: &Path) -> Unlock {
    use age::secrecy::ExposeSecret;
    let path = dir.join("age.key");
    std::fs::write(&path, age_key().to_string().expose_secret()).unwrap();
    Unlock::IdentityFile(path)
}

fn decrypted_stream(dest: &Folder, m: &Manifest) -> Vec<u8> {
    let ids: Vec<Box<dyn age::Identity>> = match m.encryption.as_str() {
        "passphrase" => vec![Box::new(age::scrypt::Identity::new(age::secrecy::SecretString::from(PASS.to_string())))],
        _ => vec![Box::new(age_key().clone())],
    };
    let mut out = vec![];
    tillsync_backup::open_object(dest.open(&m.backup_id).unwrap(), &ids).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_encrypted_till_round_trips_page_for_page_without_its_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, work) = (tmp.path().join("till"), tmp.path().join("work"));
    let digests = till(&t, &KeySpec::Folder, 300);
    let dest = Folder { dir: tmp.path().join("backups") };
    let db = t.join(tillsync_store::DB_FILE);
    let m = tillsync_backup::create(&db, &dest, &Key::Passphrase(PASS.into()), &work, 5, |_, _| {}).unwrap();

    let stream = decrypted_stream(&dest, &m);
    let h = pages::Header::decode(stream[..pages::HEADER_LEN].try_into().unwrap()).unwrap().unwrap();
    assert_eq!(stream.len() as u64, h.stream_len());
    assert_eq!(m.plaintext_bytes, h.stream_len());
    assert_eq!(&stream[pages::HEADER_LEN..pages::HEADER_LEN + 16], b"SQLite format 3\0", "pages, decrypted");
    assert!(find(&stream, b"Cheddar and chive scone no. 7"), "the catalogue is in the pages");
    assert!(!find(&stream, TOKEN.as_bytes()), "the device token is masked");
    assert!(!find(&stream, &TOKEN.as_bytes()[..12]), "no part of the token is left");
    assert!(m.stored_bytes * 3 < m.plaintext_bytes, "compressed: {} of {}", m.stored_bytes, m.plaintext_bytes);
    // Every page's reserve (SQLCipher's IV and HMAC) is zeroed.
    let body = &stream[pages::HEADER_LEN..];
    for page in body.chunks(h.page_len as usize) {
        assert!(page[page.len() - 80..].iter().all(|&b| b == 0));
    }

    let out = tmp.path().join("restored.db");
    let key = DbKey::random().unwrap();
    let unlock = Unlock::Passphrase(PASS.into());
    tillsync_backup::extract(&dest, &m, &unlock, &out, &key, Check::Both, |_, _| {}).unwrap();
    assert_eq!(digests_of(&out, &key), digests, "the same state");
    let raw = std::fs::read(&out).unwrap();
    assert!(!find(&raw, b"SQLite format 3"), "the restored file is encrypted");
    assert!(!find(&raw, b"Cheddar and chive"), "no plaintext in the restored file");
    let conn = rusqlite::Connection::open(&out).unwrap();
    keys::apply(&conn, &key, &out).unwrap();
    let token: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [tillsync_backup::DEVICE_TOKEN_META], |r| r.get(0))
        .ok();
    assert_eq!(token, None, "the masked token row is gone");
    let journal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(journal, "wal", "the till's journal mode comes back with page 1");
    // The original key does not open the copy: it has a key of its own.
    let orig = keys::resolve(&db).unwrap();
    let other = rusqlite::Connection::open(&out).unwrap();
    assert!(keys::apply(&other, &orig, &out).is_err());

    let v = tillsync_backup::verify(&dest, None, &unlock, &work).unwrap();
    assert_eq!((v.integrity.as_str(), v.sales), ("ok", 300));
}

#[test]
fn a_plaintext_till_restores_encrypted_and_an_encrypted_one_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let unlock = unlock(tmp.path());
    for (name, spec, into) in [
        ("plain", KeySpec::Plaintext, DbKey::random().unwrap()),
        ("enc", KeySpec::Folder, DbKey::Plaintext),
        ("plain2", KeySpec::Plaintext, DbKey::Plaintext),
    ] {
        let t = tmp.path().join(name);
        let digests = till(&t, &spec, 50);
        let dest = Folder { dir: tmp.path().join(format!("{name}-backups")) };
        let db = t.join(tillsync_store::DB_FILE);
        let work = tmp.path().join("work");
        let m = tillsync_backup::create(&db, &dest, &key(), &work, 5, |_, _| {}).unwrap();
        assert!(!find(&decrypted_stream(&dest, &m), TOKEN.as_bytes()), "{name}: token masked");
        let out = tmp.path().join(format!("{name}-restored.db"));
        tillsync_backup::extract(&dest, &m, &unlock, &out, &into, Check::Both, |_, _| {}).unwrap();
        assert_eq!(digests_of(&out, &into), digests, "{name}: the same state");
        let raw = std::fs::read(&out).unwrap();
        assert_eq!(raw.starts_with(b"SQLite format 3\0"), into == DbKey::Plaintext, "{name}: encrypted as asked");
        assert!(!out.with_extension("unpacked").exists(), "{name}: nothing left beside it");
    }
}

/// Writes `stream` as a backup object with its manifest, the way `create`
/// does, so that streams `create` never makes can be tested.
fn publish_stream(dest: &Folder, work: &Path, stream: &[u8], id: &str) -> Manifest {
    use sha2::{Digest, Sha256};
    std::fs::create_dir_all(work).unwrap();
    let obj = work.join(format!(".{id}.object"));
    {
        let f = std::fs::File::create(&obj).unwrap();
        let rec = age_key().to_public();
        let enc = age::Encryptor::with_recipients(std::iter::once(&rec as &dyn age::Recipient))
            .unwrap()
            .wrap_output(f)
            .unwrap();
        let mut z = zstd::stream::Encoder::new(enc, 3).unwrap();
        z.write_all(stream).unwrap();
        z.finish().unwrap().finish().unwrap();
    }
    let stored = std::fs::read(&obj).unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let m = Manifest {
        format: tillsync_backup::MANIFEST_FORMAT.into(),
        backup_id: id.into(),
        created_ms: 1,
        tenant_id: Uuid::from_u128(1),
        store_id: Uuid::from_u128(2),
        device_id: Uuid::from_u128(0xd1),
        device_name: "till 1".into(),
        mode: "standalone".into(),
        receipt_prefix: "T1".into(),
        schema_version: 1,
        pull_cursor: 0,
        plaintext_bytes: stream.len() as u64,
        stored_bytes: stored.len() as u64,
        plaintext_sha256: hex(&Sha256::digest(stream)),
        stored_sha256: hex(&Sha256::digest(&stored)),
        encryption: "recipient".into(),
    };
    dest.publish(&m, &obj).unwrap();
    m
}

#[test]
fn backups_from_before_page_streams_still_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let unlock = unlock(tmp.path());
    let dest = Folder { dir: tmp.path().join("backups") };
    let work = tmp.path().join("work");
    // An encrypted snapshot with its key in front (TSK1), and a plaintext
    // database (the first format), both made from real tills.
    let enc = tmp.path().join("enc");
    let enc_digests = till(&enc, &KeySpec::Folder, 30);
    let snap = tmp.path().join("snap.db");
    let snap_key = DbKey::random().unwrap();
    keys::export(&enc.join(tillsync_store::DB_FILE), &keys::resolve(&enc.join("till.db")).unwrap(), &snap, &snap_key)
        .unwrap();
    let DbKey::Raw(h) = &snap_key else { unreachable!() };
    let tsk1 = [b"TSK1".as_slice(), h.as_bytes(), b"\n", &std::fs::read(&snap).unwrap()].concat();
    let plain = tmp.path().join("plain");
    let plain_digests = till(&plain, &KeySpec::Plaintext, 30);
    let first = std::fs::read(plain.join(tillsync_store::DB_FILE)).unwrap();
    for (id, stream, digests) in [("1-tsk1", tsk1, enc_digests), ("2-plain", first, plain_digests)] {
        let m = publish_stream(&dest, &work, &stream, id);
        let out = tmp.path().join(format!("{id}.db"));
        let key = DbKey::random().unwrap();
        tillsync_backup::extract(&dest, &m, &unlock, &out, &key, Check::Both, |_, _| {}).unwrap();
        assert_eq!(digests_of(&out, &key), digests, "{id}");
        assert!(!out.with_extension("unpacked").exists(), "{id}: the unpacked copy is removed");
    }
}

#[test]
fn damaged_page_streams_fail_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let unlock = unlock(tmp.path());
    let dest = Folder { dir: tmp.path().join("backups") };
    let work = tmp.path().join("work");
    let t = tmp.path().join("till");
    till(&t, &KeySpec::Folder, 10);
    let m = tillsync_backup::create(&t.join("till.db"), &dest, &key(), &work, 5, |_, _| {}).unwrap();
    let good = decrypted_stream(&dest, &m);
    let page_len = u32::from_le_bytes(good[4..8].try_into().unwrap()) as usize;
    let count = |n: u64| [&good[..8], &n.to_le_bytes(), &good[16..]].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("pages missing at the end", good[..good.len() - page_len].to_vec(), "decompress to the end"),
        ("a page too many", [good.as_slice(), &good[16..16 + page_len]].concat(), "more than its pages"),
        ("a count of zero", count(0), "not possible"),
        ("a count past the pages", count(10_000), "decompress to the end"),
        (
            "page 1 is not a header",
            [&good[..16], &vec![0u8; page_len][..], &good[16 + page_len..]].concat(),
            "not a SQLite header",
        ),
        ("a page size SQLite never uses", [&good[..4], &1000u32.to_le_bytes(), &good[8..]].concat(), "page size"),
    ];
    for (i, (what, stream, says)) in cases.into_iter().enumerate() {
        let m = publish_stream(&dest, &work, &stream, &format!("9-case{i}"));
        // As `verify` reads it (both digests, into an encrypted copy) and
        // as a restore does (the stored object's digest only), into an
        // encrypted database (through SQLCipher) and into a plaintext one
        // (written as a file): the damage is caught by the stream's own
        // structure either way.
        for (key, check) in [
            (DbKey::random().unwrap(), Check::Both),
            (DbKey::random().unwrap(), Check::Stored),
            (DbKey::Plaintext, Check::Stored),
        ] {
            let out = tmp.path().join(format!("case{i}-{}-{check:?}.db", key.mode()));
            let e =
                tillsync_backup::extract(&dest, &m, &unlock, &out, &key, check, |_, _| {}).expect_err(what).to_string();
            assert!(e.contains("damaged") && e.contains(says), "{what} ({}, {check:?}): {e}", key.mode());
            assert!(!out.exists() && !out.with_extension("unpacked").exists(), "{what}: nothing left behind");
        }
    }
}

#[test]
fn a_restore_checks_the_stored_digest_and_verify_both() {
    let tmp = tempfile::tempdir().unwrap();
    let unlock = unlock(tmp.path());
    let dest = Folder { dir: tmp.path().join("backups") };
    let work = tmp.path().join("work");
    let t = tmp.path().join("till");
    let digests = till(&t, &KeySpec::Folder, 10);
    let good = tillsync_backup::create(&t.join("till.db"), &dest, &key(), &work, 5, |_, _| {}).unwrap();
    let stream = decrypted_stream(&dest, &good);
    // A manifest whose stored digest is not the object's: refused by both.
    let mut m = publish_stream(&dest, &work, &stream, "1-stored");
    m.stored_sha256 = "00".repeat(32);
    for check in [Check::Both, Check::Stored] {
        let out = tmp.path().join(format!("stored-{check:?}.db"));
        let key = DbKey::random().unwrap();
        let e = tillsync_backup::extract(&dest, &m, &unlock, &out, &key, check, |_, _| {}).expect_err("stored digest");
        assert!(e.to_string().contains("stored object's SHA-256"), "{check:?}: {e}");
        assert!(!out.exists(), "{check:?}: nothing left behind");
    }
    // A manifest whose stream digest is wrong but whose object is intact:
    // `verify` (both digests) refuses it; a restore trusts age's
    // authentication of the stream and restores the same state.
    let mut m = publish_stream(&dest, &work, &stream, "2-plain");
    m.plaintext_sha256 = "00".repeat(32);
    let key = DbKey::random().unwrap();
    let out = tmp.path().join("plain-both.db");
    let e = tillsync_backup::extract(&dest, &m, &unlock, &out, &key, Check::Both, |_, _| {}).expect_err("plain digest");
    assert!(e.to_string().contains("does not match the manifest"), "{e}");
    let out = tmp.path().join("plain-stored.db");
    tillsync_backup::extract(&dest, &m, &unlock, &out, &key, Check::Stored, |_, _| {}).unwrap();
    assert_eq!(digests_of(&out, &key), digests);
}

/// A plaintext restore writes the file with direct I/O when its pages make
/// whole 4 KiB blocks, and through the page cache when they do not (1 KiB
/// pages and a page count that is not a multiple of 4). Both give the same
/// state; the till is big enough for many batches of the writer thread.
#[test]
fn plaintext_restores_are_whole_with_and_without_direct_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let unlock = unlock(tmp.path());
    for page_size in [4096u32, 1024, 8192] {
        let t = tmp.path().join(format!("plain-{page_size}"));
        till(&t, &KeySpec::Plaintext, 400);
        let db = t.join(tillsync_store::DB_FILE);
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(&format!("PRAGMA journal_mode=DELETE; PRAGMA page_size={page_size}; VACUUM;")).unwrap();
        // For 1 KiB pages, make the file a number of pages that is not
        // whole 4 KiB blocks, so the buffered path runs.
        for i in 0..16 {
            let count: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
            if page_size != 1024 || count % 4 != 0 {
                break;
            }
            conn.execute("INSERT INTO meta(key, value) VALUES (?1, ?2)", [format!("pad{i}"), "x".repeat(900)]).unwrap();
        }
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        let (got, count): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT page_size FROM pragma_page_size), (SELECT page_count FROM pragma_page_count)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        drop(conn);
        assert_eq!(got, page_size as i64);
        assert!(count * got > 4 * 256 * 1024, "{page_size}: several batches ({count} pages)");
        if page_size == 1024 {
            assert_ne!(count % 4, 0, "the 1 KiB till is not whole 4 KiB blocks");
        }
        let digests = Store::open(&t, Schema::standard(), IdGen::from_u64(8)).unwrap().digests().unwrap();
        let dest = Folder { dir: tmp.path().join(format!("backups-{page_size}")) };
        let m = tillsync_backup::create(&db, &dest, &key(), &tmp.path().join("work"), 5, |_, _| {}).unwrap();
        let out = tmp.path().join(format!("restored-{page_size}.db"));
        tillsync_backup::extract(&dest, &m, &unlock, &out, &DbKey::Plaintext, Check::Both, |_, _| {}).unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), (count * got) as u64, "{page_size}: every page");
        assert_eq!(digests_of(&out, &DbKey::Plaintext), digests, "{page_size}: the same state");
    }
}
