//! Encryption at rest of the till database (issue 8, item 1), through the
//! real binary: the key made at init (in the folder, elsewhere, from a
//! passphrase, or plaintext on request), clear failures with a wrong or
//! missing key, key rotation (and its recovery after a cut-off), the
//! device token inside the encrypted database (with the migration of an
//! old token file), and restores and exports that get keys of their own.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn header(db: &Path) -> Vec<u8> {
    std::fs::read(db).unwrap()[..16].to_vec()
}

fn raw_contains(dir: &Path, needle: &str) -> bool {
    ["till.db", "till.db-wal"]
        .iter()
        .any(|f| std::fs::read(dir.join(f)).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())))
}

fn random_key() -> String {
    let mut k = [0u8; 32];
    getrandom_fill(&mut k);
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom_fill(buf: &mut [u8]) {
    // The test's own randomness: time and a counter are enough for a key
    // that only has to differ from the till's.
    let mut x = now_ms() ^ 0x9e37_79b9_7f4a_7c15;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

#[test]
fn a_new_till_is_encrypted_with_a_private_key_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("shop");
    json(&["node", "init", "--data", p(&d), "--offline", "--sample"]);
    json(&["sale", "--data", p(&d), "--item", "CAPPUCCINO", "--pay", "cash"]);
    let st = status(&d);
    assert_eq!(st["encryption"], "sqlcipher", "{st}");
    let key = d.join("till.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64);
    assert_ne!(header(&d.join("till.db")), b"SQLite format 3\0", "the file is not plain SQLite");
    // The catalogue is in the database (decrypted) but not in its files.
    let conn = tillsync_store::keys::connect(&d.join("till.db")).unwrap();
    let n: i64 =
        conn.query_row("SELECT count(*) FROM records WHERE data LIKE '%Cappuccino%'", [], |r| r.get(0)).unwrap();
    assert!(n > 0);
    assert!(!raw_contains(&d, "Cappuccino") && !raw_contains(&d, "Croissant"), "product names in the raw files");
    let text = ok(&["status", "--data", p(&d)]);
    assert!(text.contains("database sqlcipher"), "{text}");
}

#[test]
fn a_wrong_or_missing_key_fails_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("shop");
    json(&["node", "init", "--data", p(&d), "--offline", "--sample"]);
    let key = d.join("till.key");
    let good = std::fs::read_to_string(&key).unwrap();

    std::fs::write(&key, format!("{}\n", random_key())).unwrap();
    let o = fails(&["status", "--data", p(&d)]);
    assert!(o.stderr.contains("the key does not open") && o.stderr.contains("restore"), "{}", o.stderr);
    assert!(!o.stderr.contains("file is not a database"), "{}", o.stderr);
    assert_eq!(o.stderr.lines().count(), 1, "one line, no SQLCipher log: {}", o.stderr);
    let o = fails(&["sale", "--data", p(&d), "--item", "LATTE", "--pay", "cash"]);
    assert!(o.stderr.contains("the key does not open"), "{}", o.stderr);

    std::fs::remove_file(&key).unwrap();
    let o = fails(&["sales", "list", "--data", p(&d)]);
    assert!(o.stderr.contains("key is missing") && o.stderr.contains("till backup restore"), "{}", o.stderr);

    std::fs::write(&key, good).unwrap();
    assert_eq!(status(&d)["encryption"], "sqlcipher");
}

#[test]
fn the_key_can_live_elsewhere_or_come_from_a_passphrase_or_be_off() {
    let tmp = tempfile::tempdir().unwrap();
    // A key file on "removable media".
    let media = tmp.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let d = tmp.path().join("usb-key");
    let kf = media.join("shop.key");
    json(&["node", "init", "--data", p(&d), "--offline", "--sample", "--key-file", p(&kf)]);
    assert!(kf.exists() && !d.join("till.key").exists());
    assert_eq!(status(&d)["encryption"], "sqlcipher");
    let away = tmp.path().join("away.key");
    std::fs::rename(&kf, &away).unwrap();
    let o = fails(&["status", "--data", p(&d)]);
    assert!(o.stderr.contains("cannot read the till's key file") && o.stderr.contains("shop.key"), "{}", o.stderr);
    std::fs::rename(&away, &kf).unwrap();
    assert_eq!(status(&d)["encryption"], "sqlcipher");

    // A passphrase from the environment.
    let e = tmp.path().join("env");
    let env = [("TILL_DB_PASSPHRASE", "a long enough till passphrase")];
    let o =
        till_env(&["node", "init", "--data", p(&e), "--offline", "--sample", "--db-passphrase-env"], &env, CMD_TIMEOUT);
    assert_eq!(o.code, 0, "{}", o.describe(&[]));
    let o = till_env(&["status", "--data", p(&e), "--json"], &env, CMD_TIMEOUT);
    assert!(o.stdout.contains("\"sqlcipher\""), "{}", o.describe(&[]));
    let o = fails(&["status", "--data", p(&e)]);
    assert!(o.stderr.contains("set TILL_DB_PASSPHRASE"), "{}", o.stderr);
    let o = till_env(&["status", "--data", p(&e)], &[("TILL_DB_PASSPHRASE", "another passphrase here")], CMD_TIMEOUT);
    assert!(o.code != 0 && o.stderr.contains("wrong key file or passphrase"), "{}", o.stderr);
    assert!(!raw_contains(&e, "Cappuccino"));

    // A passphrase file.
    let f = tmp.path().join("pf");
    let pf = tmp.path().join("db-pass.txt");
    std::fs::write(&pf, "passphrase in a file\n").unwrap();
    json(&["node", "init", "--data", p(&f), "--offline", "--sample", "--db-passphrase-file", p(&pf)]);
    assert_eq!(status(&f)["encryption"], "sqlcipher");
    assert!(!raw_contains(&f, "Cappuccino"));

    // Plaintext only when asked.
    let pl = tmp.path().join("plain");
    json(&["node", "init", "--data", p(&pl), "--offline", "--sample", "--plaintext"]);
    assert_eq!(status(&pl)["encryption"], "plaintext");
    assert_eq!(header(&pl.join("till.db")), b"SQLite format 3\0");
    assert!(!pl.join("till.key").exists());
}

#[test]
fn rekey_rotates_the_key_and_encrypts_a_plaintext_till() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("shop");
    json(&["node", "init", "--data", p(&d), "--offline", "--sample"]);
    json(&["sale", "--data", p(&d), "--item", "CAPPUCCINO", "--pay", "cash"]);
    let digest = status(&d)["state_digest"].clone();
    let old = std::fs::read_to_string(d.join("till.key")).unwrap();
    let r = json(&["node", "rekey", "--data", p(&d)]);
    assert_eq!(r["to"], "sqlcipher", "{r}");
    let new = std::fs::read_to_string(d.join("till.key")).unwrap();
    assert_ne!(old, new);
    assert_eq!(std::fs::metadata(d.join("till.key")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(status(&d)["state_digest"], digest, "the data came through");
    assert!(!d.join("till.key.next").exists() && !d.join("till.keyref.next").exists());
    // The old key opens nothing any more.
    let other = tmp.path().join("old-key");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(d.join("till.db"), other.join("till.db")).unwrap();
    std::fs::write(other.join("till.key"), &old).unwrap();
    let o = fails(&["status", "--data", p(&other)]);
    assert!(o.stderr.contains("the key does not open"), "{}", o.stderr);

    // To a new key file elsewhere, then to a passphrase file.
    let kf = tmp.path().join("elsewhere.key");
    json(&["node", "rekey", "--data", p(&d), "--new-key-file", p(&kf)]);
    assert!(kf.exists() && !d.join("till.key").exists() && d.join("till.keyref").exists());
    assert_eq!(status(&d)["state_digest"], digest);
    let pf = tmp.path().join("pass.txt");
    std::fs::write(&pf, "rotated passphrase").unwrap();
    json(&["node", "rekey", "--data", p(&d), "--new-passphrase-file", p(&pf)]);
    assert_eq!(status(&d)["state_digest"], digest);
    json(&["node", "rekey", "--data", p(&d)]);
    assert!(d.join("till.key").exists() && !d.join("till.keyref").exists());
    assert_eq!(status(&d)["state_digest"], digest);

    // A plaintext till (as made before encryption) is encrypted.
    let pl = tmp.path().join("plain");
    json(&["node", "init", "--data", p(&pl), "--offline", "--sample", "--plaintext"]);
    json(&["sale", "--data", p(&pl), "--item", "LATTE", "--pay", "cash"]);
    let digest = status(&pl)["state_digest"].clone();
    std::fs::remove_file(pl.join("till.keyref")).unwrap();
    let r = json(&["node", "rekey", "--data", p(&pl)]);
    assert_eq!((r["from"].as_str(), r["to"].as_str()), (Some("plaintext"), Some("sqlcipher")), "{r}");
    assert_eq!(status(&pl)["encryption"], "sqlcipher");
    assert_eq!(status(&pl)["state_digest"], digest);
    assert!(!raw_contains(&pl, "Cappuccino"));
}

#[test]
fn a_cut_off_rekey_is_finished_or_undone_at_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("shop");
    json(&["node", "init", "--data", p(&d), "--offline", "--sample"]);
    let digest = status(&d)["state_digest"].clone();
    let old = std::fs::read_to_string(d.join("till.key")).unwrap().trim().to_string();
    let new = random_key();
    let stage = |d: &Path| {
        std::fs::write(d.join("till.key.next"), format!("{new}\n")).unwrap();
        std::fs::write(d.join("till.keyref.next"), format!("key-file {}\n", d.join("till.key.next").display()))
            .unwrap();
    };

    // Cut off before the database was rekeyed: the old key stays.
    stage(&d);
    assert_eq!(status(&d)["state_digest"], digest);
    assert_eq!(std::fs::read_to_string(d.join("till.key")).unwrap().trim(), old);
    assert!(!d.join("till.key.next").exists() && !d.join("till.keyref.next").exists());

    // Cut off after the database was rekeyed: the new key moves into place.
    {
        let conn = tillsync_store::keys::connect(&d.join("till.db")).unwrap();
        conn.query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(())).unwrap();
        conn.pragma_update(None, "rekey", format!("x'{new}'")).unwrap();
    }
    stage(&d);
    assert_eq!(status(&d)["state_digest"], digest);
    assert_eq!(std::fs::read_to_string(d.join("till.key")).unwrap().trim(), new);
    assert!(!d.join("till.key.next").exists() && !d.join("till.keyref.next").exists());
}

#[test]
fn the_device_token_is_in_the_encrypted_database_and_old_token_files_move_there() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir, "Cafe");
    let hub = Hub::start(&hub_dir);
    let a = tmp.path().join("a");
    t.enrol(&hub.url, &a, "A");
    assert!(!a.join("device.token").exists());
    let token = tillsync_store::read_meta(&a, "device_token").unwrap().expect("the token");
    assert!(!raw_contains(&a, &token), "the token is not readable in the files");

    // A folder of an older version: the token in a file, not in the database.
    tillsync_store::write_meta(&a, "device_token", None).unwrap();
    std::fs::write(a.join("device.token"), format!("{token}\n")).unwrap();
    sell(&a, "LATTE");
    let r = sync(&a);
    assert_eq!(r["pushed"], 1, "{r}");
    assert!(!a.join("device.token").exists(), "the old file is removed");
    assert_eq!(tillsync_store::read_meta(&a, "device_token").unwrap().as_deref(), Some(token.as_str()));

    // A point-in-time export is a till folder with a key of its own.
    let out = tmp.path().join("export");
    let at = now_ms().to_string();
    let export = |out: &Path, extra: &[&str]| {
        let mut args = vec!["hub", "export", "--data", p(&hub_dir), "--tenant", &t.id, "--store", &t.store];
        args.extend_from_slice(&["--at", &at, "--out", p(out)]);
        args.extend_from_slice(extra);
        json(&args)
    };
    export(&out, &[]);
    assert!(out.join("till.key").exists());
    assert_eq!(status(&out)["encryption"], "sqlcipher");
    assert_eq!(sales(&out).len(), 1);
    assert!(!raw_contains(&out, "Cappuccino"));
    let pl = tmp.path().join("export-plain");
    export(&pl, &["--plaintext"]);
    assert_eq!(status(&pl)["encryption"], "plaintext");
}

#[test]
fn a_restored_till_gets_a_new_key_and_needs_not_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("shop");
    let bk = tmp.path().join("backups");
    let pf = tmp.path().join("pass.txt");
    std::fs::write(&pf, "backup passphrase 123").unwrap();
    json(&["node", "init", "--data", p(&d), "--offline", "--sample"]);
    json(&["sale", "--data", p(&d), "--item", "CAPPUCCINO", "--pay", "card", "--card-last4", "4242"]);
    let digest = status(&d)["state_digest"].clone();
    let old_key = std::fs::read_to_string(d.join("till.key")).unwrap();
    json(&["backup", "create", "--data", p(&d), "--to", p(&bk), "--passphrase-file", p(&pf)]);
    let v = json(&["backup", "verify", "--from", p(&bk), "--passphrase-file", p(&pf)]);
    assert_eq!(v["integrity"], "ok");
    assert_eq!(v["sales"], 1);
    // The till, and its key, are lost.
    std::fs::remove_dir_all(&d).unwrap();
    let r = tmp.path().join("restored");
    json(&["backup", "restore", "--from", p(&bk), "--into", p(&r), "--passphrase-file", p(&pf)]);
    let new_key = std::fs::read_to_string(r.join("till.key")).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(status(&r)["state_digest"], digest);
    assert_eq!(status(&r)["encryption"], "sqlcipher");
    assert!(!raw_contains(&r, "Cappuccino"));
    // Nothing but the till's files is left in its folder (no snapshot copy).
    let mut names: Vec<String> =
        std::fs::read_dir(&r).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    names.sort();
    assert!(names.iter().all(|n| n.starts_with("till.")), "{names:?}");
    // A plaintext restore only when asked.
    let rp = tmp.path().join("restored-plain");
    json(&["backup", "restore", "--from", p(&bk), "--into", p(&rp), "--passphrase-file", p(&pf), "--plaintext"]);
    assert_eq!(status(&rp)["encryption"], "plaintext");
    assert_eq!(status(&rp)["state_digest"], digest);
}
