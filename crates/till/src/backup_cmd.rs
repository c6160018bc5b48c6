//! `till backup ...`: create, list, verify, prune and restore.

use crate::cli::{BackupCmd, BackupKeyArgs, S3Args, TlsArgs};
use crate::node::{now_ms, open, os_ids};
use crate::output;
use anyhow::{Result, anyhow, bail};
use serde_json::json;
use std::io::IsTerminal;
use std::path::Path;
use tillsync_backup::s3::S3Options;
use tillsync_backup::{Destination, Key, Unlock};
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

/// S3 settings for `s3://` destinations: flags first, then the till's
/// config, then the usual AWS environment variables.
pub fn s3_options(args: &S3Args, config: Option<&Config>) -> S3Options {
    let conf = |f: fn(&Config) -> &str| config.map(f).filter(|v| !v.is_empty());
    S3Options::resolve(
        args.s3_endpoint.as_deref().or_else(|| conf(|c| &c.backup.s3_endpoint)),
        args.s3_region.as_deref().or_else(|| conf(|c| &c.backup.s3_region)),
    )
}

/// The destination at an address: a folder, `s3://bucket/prefix`, or
/// `hub`: the till's own hub (with `till`, or `--till DIR`) or, once the
/// till is gone, a hub read with the tenant's admin token (`--hub URL
/// --token ADMIN_TOKEN [--device ID]`).
pub fn destination(
    addr: &str,
    s3: &S3Args,
    config: Option<&Config>,
    till: Option<&Path>,
) -> Result<Box<dyn Destination>> {
    if addr.is_empty() {
        bail!("the destination is empty: give a folder, s3://BUCKET/PREFIX or hub");
    }
    if addr != tillsync_node::backups::HUB_ADDR {
        return Ok(tillsync_backup::destination(addr, &s3_options(s3, config))?);
    }
    use tillsync_node::backups::{HubBackups, HubBackupsAs};
    if let Some(url) = &s3.hub {
        let Some(token) = &s3.token else {
            bail!(
                "reading backups from the hub needs the tenant's admin token: --token ADMIN_TOKEN (or TILL_ADMIN_TOKEN)"
            );
        };
        let device = match &s3.device {
            Some(d) => Some(
                uuid::Uuid::parse_str(d).map_err(|_| anyhow!("'{d}' is not a device id: see `till devices list`"))?,
            ),
            None => None,
        };
        let opts = tillsync_node::ClientOptions { ca_file: s3.hub_ca.clone(), ..Default::default() };
        let client = tillsync_node::HubClient::new(url, Some(token.clone()), &opts)?;
        return Ok(Box::new(HubBackups::new(client, HubBackupsAs::Admin { device })?));
    }
    let Some(dir) = till.or(s3.till.as_deref()) else {
        bail!(
            "`hub` as a destination needs the till (--till DIR) or, once the till is gone, --hub URL --token ADMIN_TOKEN"
        );
    };
    Ok(tillsync_node::backups::destination_for_till(addr, &s3_options(s3, config), dir)?)
}

/// A byte progress bar on stderr while it is a terminal; cleared when the
/// work ends. Nothing at all otherwise, so scripts see no extra output.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(what: &'static str) -> Bar {
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        // Hidden until the first report, so no empty bar flashes first.
        let b = indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::hidden());
        let style = indicatif::ProgressStyle::with_template(
            "{msg:8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("a fixed template")
        .progress_chars("=> ");
        b.set_style(style);
        b.set_message(what);
        Bar(Some(b))
    }

    fn set(&self, done: u64, total: u64) {
        if let Some(b) = &self.0 {
            if b.is_hidden() {
                b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            b.set_length(total);
            b.set_position(done);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// A progress callback for the library: a bar on a terminal.
fn progress(what: &'static str) -> impl FnMut(u64, u64) {
    let bar = Bar::new(what);
    move |done, total| bar.set(done, total)
}

/// Creates a backup of a till (used by the command and the schedule).
pub fn create_backup(
    dir: &Path,
    to: &str,
    s3: &S3Args,
    config: &Config,
    key: &Key,
    tty: bool,
) -> Result<tillsync_backup::Manifest> {
    let dest = destination(to, s3, Some(config), Some(dir))?;
    let db = dir.join(tillsync_store::DB_FILE);
    if !db.exists() {
        bail!("{} is not a till: nothing to back up", dir.display());
    }
    let m = if tty {
        tillsync_backup::create(&db, dest.as_ref(), key, dir, now_ms(), progress("backup"))?
    } else {
        tillsync_backup::create(&db, dest.as_ref(), key, dir, now_ms(), |_, _| {})?
    };
    Ok(m)
}

pub fn run(cmd: BackupCmd, j: bool) -> Result<()> {
    match cmd {
        BackupCmd::Create { data, to, key, s3 } => {
            open(&data.data)?;
            let config = Config::load(&data.data)?;
            let to = match to {
                Some(t) => t,
                None if !config.backup.destination.is_empty() => config.backup.destination.clone(),
                None => bail!(
                    "say where the backup goes: --to FOLDER or --to s3://BUCKET/PREFIX (or `till config set --data DIR backup.destination FOLDER`)"
                ),
            };
            let key = key_for(&key, Some(&config))?;
            let m = create_backup(&data.data, &to, &s3, &config, &key, true)?;
            if j {
                output::json(&m);
            } else {
                println!(
                    "backup {} written to {to} ({} MB of data, {} MB stored, encrypted)",
                    m.backup_id,
                    m.plaintext_bytes >> 20,
                    m.stored_bytes >> 20
                );
            }
        }
        BackupCmd::List { from, s3 } => {
            let all = destination(&from, &s3, None, None)?.list()?;
            if j {
                output::json(&all);
            } else if all.is_empty() {
                println!("no backups in {from}");
            } else {
                for m in all {
                    println!(
                        "{}  {}  {} ({})  {} bytes",
                        m.backup_id, m.created_ms, m.device_name, m.mode, m.stored_bytes
                    );
                }
            }
        }
        BackupCmd::Verify { from, id, key, s3 } => {
            let unlock = unlock_for(&key)?;
            let dest = destination(&from, &s3, None, None)?;
            let work = std::env::temp_dir();
            let v = tillsync_backup::verify_with_progress(
                dest.as_ref(),
                id.as_deref(),
                &unlock,
                &work,
                progress("verify"),
            )?;
            if j {
                output::json(&v);
            } else {
                println!("backup {} is good: digests match, integrity {}, {} sales", v.backup_id, v.integrity, v.sales);
            }
        }
        BackupCmd::Prune { from, keep, s3 } => {
            if keep == 0 {
                bail!("--keep 0 would delete every backup: keep at least 1");
            }
            let removed = tillsync_backup::prune(destination(&from, &s3, None, None)?.as_ref(), keep)?;
            if j { output::json(&json!({"removed": removed})) } else { println!("removed {} backups", removed.len()) }
        }
        BackupCmd::Restore { from, id, into, key, code, tls, s3, db_key } => {
            let dest = destination(&from, &s3, None, None)?;
            restore(dest.as_ref(), id.as_deref(), &into, &key, code.as_deref(), &tls, &db_key.spec(), j)?
        }
    }
    Ok(())
}

/// Restores a till. A standalone till keeps its identity. A till of a hub
/// comes back as a new device (new id, receipt prefix and lanes, with a code):
/// the backup's unsynced changes are imported into it and pushed again,
/// recognised by their own ids where the hub already has them; the rest
/// arrives by bootstrap and delta pull.
#[allow(clippy::too_many_arguments)]
fn restore(
    dest: &dyn Destination,
    id: Option<&str>,
    into: &Path,
    key: &BackupKeyArgs,
    code: Option<&str>,
    tls: &TlsArgs,
    db_key: &tillsync_store::keys::KeySpec,
    j: bool,
) -> Result<()> {
    let unlock = unlock_for(key)?;
    if into.join(tillsync_store::DB_FILE).exists() {
        bail!("{} already holds a till: restore into a new folder", into.display());
    }
    let m = tillsync_backup::pick(dest, id)?;
    if m.mode != "hub" {
        tillsync_backup::restore_files(dest, Some(&m.backup_id), &unlock, into, db_key, progress("restore"))?;
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
    // The staging copy is read once and removed: a key of its own, in it.
    tillsync_backup::restore_files(
        dest,
        Some(&m.backup_id),
        &unlock,
        &staging,
        &tillsync_store::keys::KeySpec::Folder,
        progress("restore"),
    )?;
    let result = (|| -> Result<serde_json::Value> {
        let old = open(&staging)?;
        let url =
            old.get_meta("hub_url")?.ok_or_else(|| anyhow!("the backup does not say which hub it synced with"))?;
        let pending = old.export_pending()?;
        drop(old);
        let opts = tillsync_node::ClientOptions {
            ca_file: tls.ca.clone(),
            insecure: tls.insecure,
            timeout_ms: 30_000,
            ..Default::default()
        };
        crate::hub_cmd::install_crypto();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let name = format!("{} (restored)", m.device_name);
        let mut store = rt.block_on(tillsync_node::sync::enrol_and_bootstrap_keyed(
            into,
            &url,
            code,
            &name,
            &opts,
            os_ids(),
            db_key,
        ))?;
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
