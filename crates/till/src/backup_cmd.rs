//! `till backup ...`: create, list, verify, prune and restore.

use crate::cli::{BackupCmd, BackupKeyArgs, TlsArgs};
use crate::node::{now_ms, open, os_ids};
use crate::output;
use anyhow::{Result, anyhow, bail};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tillsync_backup::{Folder, Key, Unlock};
use tillsync_node::config::Config;

fn read_secret(f: &Path) -> Result<String> {
    let s = std::fs::read_to_string(f).map_err(|e| anyhow!("cannot read the passphrase file {}: {e}", f.display()))?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() {
        bail!("the passphrase file {} is empty", f.display());
    }
    Ok(s)
}

/// The encryption key from flags, else from the config.
pub fn key_for(args: &BackupKeyArgs, config: Option<&Config>) -> Result<Key> {
    match (&args.passphrase_file, &args.recipient) {
        (Some(_), Some(_)) => bail!("give --passphrase-file or --recipient, not both"),
        (Some(f), None) => Ok(Key::Passphrase(read_secret(f)?)),
        (None, Some(r)) => Ok(Key::Recipient(r.clone())),
        (None, None) => {
            let c = config.map(|c| &c.backup);
            match c {
                Some(b) if !b.passphrase_file.is_empty() => {
                    Ok(Key::Passphrase(read_secret(Path::new(&b.passphrase_file))?))
                }
                Some(b) if !b.recipient.is_empty() => Ok(Key::Recipient(b.recipient.clone())),
                _ => bail!(
                    "backups are always encrypted: give --passphrase-file FILE or --recipient AGE_KEY (or set backup.passphrase_file)"
                ),
            }
        }
    }
}

fn unlock_for(args: &BackupKeyArgs) -> Result<Unlock> {
    match (&args.passphrase_file, &args.identity) {
        (Some(f), None) => Ok(Unlock::Passphrase(read_secret(f)?)),
        (None, Some(i)) => Ok(Unlock::IdentityFile(i.clone())),
        _ => bail!("to decrypt, give --passphrase-file FILE or --identity FILE"),
    }
}

/// Prints a progress line on a terminal (stderr), nothing otherwise.
fn progress(what: &'static str) -> impl FnMut(u64, u64) {
    let tty = std::io::stderr().is_terminal();
    let mut last = 0u64;
    move |done, total| {
        if !tty || total == 0 {
            return;
        }
        let pct = done * 100 / total;
        if pct != last || done == total {
            last = pct;
            eprint!("\r{what}: {pct:>3}% ({} of {} MB)", done >> 20, total >> 20);
            if done >= total {
                eprintln!();
            }
        }
    }
}

/// Creates a backup of a till (used by the command and the schedule).
pub fn create_backup(dir: &Path, to: &Path, key: &Key, tty: bool) -> Result<tillsync_backup::Manifest> {
    let dest = Folder { dir: to.to_path_buf() };
    let db = dir.join(tillsync_store::DB_FILE);
    if !db.exists() {
        bail!("{} is not a till: nothing to back up", dir.display());
    }
    let p = progress("backup");
    let m = if tty {
        tillsync_backup::create(&db, &dest, key, dir, now_ms(), p)?
    } else {
        tillsync_backup::create(&db, &dest, key, dir, now_ms(), |_, _| {})?
    };
    Ok(m)
}

pub fn run(cmd: BackupCmd, j: bool) -> Result<()> {
    match cmd {
        BackupCmd::Create { data, to, key } => {
            open(&data.data)?;
            let config = Config::load(&data.data)?;
            let to = match to {
                Some(t) => t,
                None if !config.backup.destination.is_empty() => PathBuf::from(&config.backup.destination),
                None => bail!(
                    "say where the backup goes: --to FOLDER (or `till config set --data DIR backup.destination FOLDER`)"
                ),
            };
            let key = key_for(&key, Some(&config))?;
            let m = create_backup(&data.data, &to, &key, !j)?;
            if j {
                output::json(&m);
            } else {
                println!(
                    "backup {} written to {} ({} MB of data, {} MB stored, encrypted)",
                    m.backup_id,
                    to.display(),
                    m.plaintext_bytes >> 20,
                    m.stored_bytes >> 20
                );
            }
        }
        BackupCmd::List { from } => {
            let all = tillsync_backup::Destination::list(&Folder { dir: from.clone() })?;
            if j {
                output::json(&all);
            } else if all.is_empty() {
                println!("no backups in {}", from.display());
            } else {
                for m in all {
                    println!(
                        "{}  {}  {} ({})  {} bytes",
                        m.backup_id, m.created_ms, m.device_name, m.mode, m.stored_bytes
                    );
                }
            }
        }
        BackupCmd::Verify { from, id, key } => {
            let unlock = unlock_for(&key)?;
            let dest = Folder { dir: from.clone() };
            let work = std::env::temp_dir();
            let v = tillsync_backup::verify(&dest, id.as_deref(), &unlock, &work)?;
            if j {
                output::json(&v);
            } else {
                println!("backup {} is good: digests match, integrity {}, {} sales", v.backup_id, v.integrity, v.sales);
            }
        }
        BackupCmd::Prune { from, keep } => {
            if keep == 0 {
                bail!("--keep 0 would delete every backup: keep at least 1");
            }
            let removed = tillsync_backup::prune(&Folder { dir: from }, keep)?;
            if j { output::json(&json!({"removed": removed})) } else { println!("removed {} backups", removed.len()) }
        }
        BackupCmd::Restore { from, id, into, key, code, tls } => {
            restore(&from, id.as_deref(), &into, &key, code.as_deref(), &tls, j)?
        }
    }
    Ok(())
}

/// Restores a till. A standalone till keeps its identity. A till of a hub
/// comes back as a new device (new id, receipt prefix and lanes, with a code):
/// the backup's unsynced changes are imported into it and pushed again,
/// recognised by their own ids where the hub already has them; the rest
/// arrives by bootstrap and delta pull.
fn restore(
    from: &Path,
    id: Option<&str>,
    into: &Path,
    key: &BackupKeyArgs,
    code: Option<&str>,
    tls: &TlsArgs,
    j: bool,
) -> Result<()> {
    let unlock = unlock_for(key)?;
    let dest = Folder { dir: from.to_path_buf() };
    if into.join(tillsync_store::DB_FILE).exists() {
        bail!("{} already holds a till: restore into a new folder", into.display());
    }
    let m = tillsync_backup::pick(&dest, id)?;
    if m.mode != "hub" {
        tillsync_backup::restore_files(&dest, Some(&m.backup_id), &unlock, into, progress("restore"))?;
        let store = open(into)?;
        if j {
            output::json(
                &json!({"backup_id": m.backup_id, "into": into, "device_id": store.identity().device_id, "sales": store.sales_count()?}),
            );
        } else {
            println!("restored {} into {} ({} sales)", m.backup_id, into.display(), store.sales_count()?);
        }
        return Ok(());
    }
    let Some(code) = code else {
        bail!(
            "this till synced with a hub: a restored till joins as a new device; give --code CODE from `till hub enrol`"
        );
    };
    // The old till, unpacked beside the new one, gives its unsynced changes.
    let staging = into.with_extension("restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    tillsync_backup::restore_files(&dest, Some(&m.backup_id), &unlock, &staging, progress("restore"))?;
    let result = (|| -> Result<serde_json::Value> {
        let old = open(&staging)?;
        let url =
            old.get_meta("hub_url")?.ok_or_else(|| anyhow!("the backup does not say which hub it synced with"))?;
        let pending = old.export_pending()?;
        drop(old);
        let opts = tillsync_node::ClientOptions { ca_file: tls.ca.clone(), insecure: tls.insecure, timeout_ms: 30_000 };
        crate::hub_cmd::install_crypto();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let name = format!("{} (restored)", m.device_name);
        let mut store = rt.block_on(tillsync_node::enrol_and_bootstrap(into, &url, code, &name, &opts, os_ids()))?;
        let imported = store.import_pending(now_ms(), &pending)?;
        let client = tillsync_node::sync::client_for(into, &store)?;
        let synced = rt.block_on(tillsync_node::sync_once(&mut store, &client, now_ms));
        Ok(json!({"backup_id": m.backup_id, "into": into, "device_id": store.identity().device_id,
            "receipt_prefix": store.identity().receipt_prefix, "imported": imported,
            "pushed": synced.as_ref().map(|r| r.pushed).unwrap_or(0), "sync_error": synced.err().map(|e| e.to_string()),
            "sales": store.sales_count()?}))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    let v = result?;
    if j {
        output::json(&v);
    } else {
        println!(
            "restored {} into {} as a new device {} (receipts {}-...); {} unsynced changes carried over; {} sales",
            v["backup_id"].as_str().unwrap_or(""),
            into.display(),
            v["device_id"].as_str().unwrap_or(""),
            v["receipt_prefix"].as_str().unwrap_or(""),
            v["imported"]["changes"],
            v["sales"]
        );
    }
    Ok(())
}
