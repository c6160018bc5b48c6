//! Till commands that talk to the hub: join, sync, run, devices.

use crate::cli::{AdminArgs, DbKeyArgs, DevicesCmd, TlsArgs};
use crate::node::{now_ms, open, os_ids};
use crate::output;
use anyhow::{Result, anyhow};
use serde_json::json;
use std::path::Path;
use tillsync_node::config::Config;
use tillsync_node::sync::client_for;
use tillsync_node::{ClientOptions, HubClient, SyncOptions, sync_once, sync_with};

fn options(tls: &TlsArgs) -> ClientOptions {
    ClientOptions { ca_file: tls.ca.clone(), insecure: tls.insecure, timeout_ms: 30_000, ..Default::default() }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    crate::hub_cmd::install_crypto();
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn init_hub(
    dir: &Path,
    url: &str,
    code: &str,
    name: Option<&str>,
    tls: &TlsArgs,
    key: &DbKeyArgs,
    j: bool,
) -> Result<()> {
    let name = name.unwrap_or("till");
    let store = runtime()?.block_on(tillsync_node::sync::enrol_and_bootstrap_keyed(
        dir,
        url,
        code,
        name,
        &options(tls),
        os_ids(),
        &key.spec(),
    ))?;
    let id = store.identity();
    if j {
        output::json(&json!({"device_id": id.device_id, "tenant_id": id.tenant_id, "store_id": id.store_id,
            "receipt_prefix": id.receipt_prefix, "data": dir, "products": store.products()?.len()}));
    } else {
        println!(
            "till '{}' enrolled with {url} (device {}, receipts {}-...); {} products pulled",
            id.name,
            id.device_id,
            id.receipt_prefix,
            store.products()?.len()
        );
    }
    Ok(())
}

pub fn attach(dir: &Path, url: &str, code: &str, tls: &TlsArgs, key: &DbKeyArgs, j: bool) -> Result<()> {
    let rt = runtime()?;
    let report =
        rt.block_on(tillsync_node::attach::attach_keyed(dir, url, code, &options(tls), os_ids(), now_ms, &key.spec()))?;
    // Push the history now; a failure here is retried by the next sync.
    let mut store = open(dir)?;
    let client = client_for(dir, &store)?;
    let synced = rt.block_on(sync_once(&mut store, &client, now_ms));
    if j {
        output::json(&json!({"device_id": report.device_id, "receipt_prefix": report.receipt_prefix,
            "records_created": report.records_created, "ledger_rows": report.ledger_rows, "old_data": report.old_data,
            "pushed": synced.as_ref().map(|r| r.pushed).unwrap_or(0), "sync_error": synced.as_ref().err().map(|e| e.to_string())}));
    } else {
        println!(
            "attached to {url} as device {} (receipts {}-...): {} records and {} ledger rows carried over",
            report.device_id, report.receipt_prefix, report.records_created, report.ledger_rows
        );
        println!("the standalone folder is kept in {}", report.old_data.display());
        match synced {
            Ok(r) => println!("pushed {} changes", r.pushed),
            Err(e) => println!("not pushed yet ({e}); `till sync` or `till node run` will retry"),
        }
    }
    Ok(())
}

fn metered_lanes(config: &Config) -> Option<Vec<tillsync_core::Lane>> {
    let view = tillsync_node::net::current(&config.network.metered, None);
    view.metered.then(|| config.network.metered_lanes.iter().filter_map(|l| tillsync_core::Lane::parse(l)).collect())
}

pub fn sync(dir: &Path, force: bool, full: bool, j: bool) -> Result<()> {
    let mut store = open(dir)?;
    let config = Config::load(dir)?;
    let client = client_for(dir, &store)?;
    let opts = SyncOptions { metered_lanes: metered_lanes(&config), force, full, skip_empty_push: false };
    let report = runtime()?.block_on(sync_with(&mut store, &client, now_ms, &opts)).map_err(|e| {
        if matches!(e, tillsync_node::SyncError::Network(_)) {
            anyhow!("{e}; the till keeps selling and its changes wait in the outbox until the hub is reachable")
        } else {
            e.into()
        }
    })?;
    if j {
        output::json(&report);
    } else {
        println!("pushed {}, pulled {}, open conflicts {}", report.pushed, report.pulled, report.conflicts);
        if report.deferred_pull {
            println!("a large pull waits for an unmetered link (use --force to pull now)");
        }
        if let Some(m) = report.digest_matches {
            println!("digest {} the hub's", if m { "matches" } else { "DIFFERS from" });
        }
    }
    // Everything else was synced; a held-back lane still fails the command.
    if !report.lane_errors.is_empty() {
        anyhow::bail!("lane held back: {}", report.lane_errors.join("; "));
    }
    if report.digest_matches == Some(false) {
        anyhow::bail!(
            "after a full sync this till's digest still differs from the hub's: check `till status` and the hub's quarantine"
        );
    }
    Ok(())
}

pub fn network(dir: &Path, j: bool) -> Result<()> {
    let store = open(dir)?;
    let config = Config::load(dir)?;
    let reachable = match store.get_meta("hub_url")? {
        None => None,
        Some(_) => {
            let client = client_for(dir, &store)?;
            let timeout = std::time::Duration::from_millis(config.sync.probe_timeout_ms);
            Some(runtime()?.block_on(async { tokio::time::timeout(timeout, client.healthy()).await.unwrap_or(false) }))
        }
    };
    let v = tillsync_node::net::current(&config.network.metered, reachable);
    if j {
        output::json(&v);
    } else {
        println!(
            "link: {}{}  metered: {}  hub: {}",
            v.kind,
            v.signal.map(|s| format!(" (signal {s})")).unwrap_or_default(),
            v.metered,
            v.hub
        );
        for i in &v.interfaces {
            println!("  {:<12} {:<9} {}", i.name, i.kind, if i.up { "up" } else { "down" });
        }
    }
    Ok(())
}

pub fn config(cmd: crate::cli::ConfigCmd, j: bool) -> Result<()> {
    use crate::cli::ConfigCmd;
    match cmd {
        ConfigCmd::Get { data, key } => {
            open(&data.data)?;
            let c = Config::load(&data.data)?;
            let keys: Vec<&str> = match &key {
                Some(k) => vec![k.as_str()],
                None => Config::keys().to_vec(),
            };
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.to_string(), json!(c.get(k)?));
            }
            if j {
                output::json(&out);
            } else {
                for (k, v) in out {
                    println!("{k} = {}", v.as_str().unwrap_or(""));
                }
            }
        }
        ConfigCmd::Set { data, key, value } => {
            open(&data.data)?;
            let mut c = Config::load(&data.data)?;
            c.set(&key, &value)?;
            c.save(&data.data)?;
            if j { output::json(&json!({key.clone(): c.get(&key)?})) } else { println!("{key} = {}", c.get(&key)?) }
        }
    }
    Ok(())
}

pub fn run(dir: &Path, interval_s: Option<u64>, exit_after_s: u64, ui: Option<&str>, j: bool) -> Result<()> {
    crate::init_logs();
    let mut store = open(dir)?;
    let mut config = Config::load(dir)?;
    if let Some(i) = interval_s {
        config.sync.interval_s = i.max(1);
    }
    // A standalone till runs too: its local API and scheduled backups.
    let client = if store.get_meta("hub_url")?.is_some() { Some(client_for(dir, &store)?) } else { None };
    let rt = runtime()?;
    let (asked_tx, asked_rx) = tokio::sync::mpsc::channel::<()>(4);
    let api_addr = ui.unwrap_or(tillsync_node::api::DEFAULT_ADDR).to_string();
    if !j {
        match &client {
            Some(c) => println!(
                "till {} syncing with {} (every {} s, on local writes and live events); status on http://{api_addr}/api/status; Ctrl-C stops it",
                store.identity().name,
                c.base(),
                config.sync.interval_s
            ),
            None => println!(
                "standalone till {}: no hub to sync with; status on http://{api_addr}/api/status; Ctrl-C stops it",
                store.identity().name
            ),
        }
    }
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&api_addr)
            .await
            .map_err(|e| anyhow!("cannot serve the local API on {api_addr}: {e}; choose another with --ui ADDR"))?;
        let local = listener.local_addr()?;
        // Reachable from other machines: every page and the API need a
        // signed-in staff member.
        let exposed = !local.ip().is_loopback();
        if exposed && !j {
            println!("the UI listens on {local}, not loopback: every page and API route needs a staff sign-in");
        }
        let app = local_app(dir, &config, asked_tx, exposed)?;
        if j {
            println!("{}", json!({"api": format!("http://{local}"), "ui": format!("http://{local}/")}));
        } else {
            println!("POS UI on http://{local}/ (sign in with a staff name and PIN)");
        }
        // The same connection limits as the hub's: a slow or idle client
        // of the UI (it may be on the shop's network) is dropped.
        let mut server = axum_server::from_tcp(listener.into_std()?)?;
        crate::hub_cmd::tune(server.http_builder(), UI_HEADER_READ_TIMEOUT_MS);
        let api = tokio::spawn(async move { server.serve(app.into_make_service()).await });
        let backups = (config.backup.interval_s > 0).then(|| tokio::spawn(scheduled_backups(dir.to_path_buf(), config.clone())));
        let stop = async move {
            if exit_after_s > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(exit_after_s)).await;
            } else {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
            }
        };
        let Some(client) = client else {
            drop(asked_rx);
            stop.await;
            api.abort();
            if let Some(b) = backups {
                b.abort();
            }
            return anyhow::Ok(());
        };
        tillsync_node::run::run(&mut store, client, config, now_ms, stop, asked_rx, |t, r| match r {
            Ok(rep) if j => println!("{}", json!({"trigger": format!("{t:?}"), "pushed": rep.pushed, "pulled": rep.pulled, "conflicts": rep.conflicts})),
            Ok(rep) if rep.pushed + rep.pulled > 0 => println!("synced ({t:?}): pushed {}, pulled {}", rep.pushed, rep.pulled),
            Ok(_) => {}
            Err(e) => eprintln!("sync: {e} (the till keeps selling; retrying)"),
        })
        .await;
        api.abort();
        if let Some(b) = backups {
            b.abort();
        }
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Longest a client of the till's UI and local API may take to send a
/// request's headers, and longest an idle connection is kept, in ms.
const UI_HEADER_READ_TIMEOUT_MS: u64 = 10_000;

/// The local API and the POS UI of a till, on one router: each with a
/// connection of its own to the till's database. Security headers on every
/// response; with `exposed` (not bound to loopback) a staff sign-in on
/// every route but sign-in and assets.
pub fn local_app(
    dir: &Path,
    config: &Config,
    sync_now: tokio::sync::mpsc::Sender<()>,
    exposed: bool,
) -> Result<axum::Router> {
    let api_state = tillsync_node::api::ApiState {
        store: std::sync::Arc::new(std::sync::Mutex::new(open(dir)?)),
        config: std::sync::Arc::new(config.clone()),
        sync_now: sync_now.clone(),
        dir: dir.to_path_buf(),
    };
    let ui = tillsync_ui::UiState::new(open(dir)?, dir.to_path_buf(), config.clone(), sync_now, now_ms);
    let router = tillsync_node::api::router(api_state).merge(tillsync_ui::router(ui.clone()));
    Ok(tillsync_ui::secure(router, ui, exposed))
}

fn admin(a: &AdminArgs) -> Result<HubClient> {
    Ok(HubClient::new(&a.hub, Some(a.token.clone()), &options(&a.tls))?)
}

pub fn devices(cmd: DevicesCmd, j: bool) -> Result<()> {
    let rt = runtime()?;
    match cmd {
        DevicesCmd::List { admin: a } => {
            let list = rt.block_on(admin(&a)?.devices())?;
            if j {
                output::json(&list);
            } else {
                for d in list {
                    println!(
                        "{}  {:<16} {:<6} {:<8} store {}",
                        d.device_id, d.name, d.receipt_prefix, d.status, d.store_id
                    );
                }
            }
        }
        DevicesCmd::Revoke { admin: a, device } => {
            uuid::Uuid::parse_str(&device)
                .map_err(|_| anyhow!("'{device}' is not a device id: see `till devices list`"))?;
            let r = rt.block_on(admin(&a)?.revoke(&device))?;
            if j { output::json(&r) } else { println!("device {device} revoked") }
        }
        DevicesCmd::Rotate { data } => {
            let dir = &data.data;
            let store = open(dir)?;
            let client = client_for(dir, &store)?;
            let token = rt.block_on(client.rotate_token())?;
            // The old token works until the new one is first used: keep the
            // new one, then use it once, which retires the old one on the hub.
            tillsync_node::sync::save_token(dir, &token).map_err(|e| {
                anyhow!("the hub gave a new token but it could not be kept ({e}); the old token still works: run `till devices rotate` again")
            })?;
            let device = store.identity().device_id;
            let retired = rt.block_on(client_for(dir, &store)?.digest()).is_ok();
            if j {
                output::json(&json!({"device_id": device, "rotated": true, "old_token_retired": retired}))
            } else if retired {
                println!("device {device}: new token kept in {}; the old one no longer works", dir.display())
            } else {
                println!(
                    "device {device}: new token kept in {}; the old one stops working at the till's next sync",
                    dir.display()
                )
            }
        }
        DevicesCmd::RotateAdmin { admin: a } => {
            let token = rt.block_on(admin(&a)?.rotate_admin_token())?;
            // First use of the new token retires the old one (see above).
            let new_admin = AdminArgs { token: token.clone(), ..a };
            let retired = rt.block_on(admin(&new_admin)?.devices()).is_ok();
            if j {
                output::json(&json!({"admin_token": token, "old_token_retired": retired}))
            } else if retired {
                println!("new admin token (shown once, keep it safe; the old one no longer works): {token}")
            } else {
                println!(
                    "new admin token (shown once, keep it safe; the old one works until this one is first used): {token}"
                )
            }
        }
    }
    Ok(())
}

/// Scheduled backups of `till node run`: every `backup.interval_s`, to
/// `backup.destination`, keeping `backup.keep`; the outcome goes into the
/// till's status (`last_backup_at`, `last_backup_error`).
async fn scheduled_backups(dir: std::path::PathBuf, config: Config) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(config.backup.interval_s));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (dir2, config2) = (dir.clone(), config.clone());
        let r = tokio::task::spawn_blocking(move || -> Result<String> {
            let key = crate::backup_cmd::key_for(&crate::cli::BackupKeyArgs::default(), Some(&config2))?;
            let to = &config2.backup.destination;
            let s3 = crate::cli::S3Args::default();
            let m = crate::backup_cmd::create_backup(&dir2, to, &s3, &config2, &key, false)?;
            if config2.backup.keep > 0 {
                let dest = crate::backup_cmd::destination(to, &s3, Some(&config2), Some(&dir2))?;
                tillsync_backup::prune(dest.as_ref(), config2.backup.keep as usize)?;
            }
            Ok(m.backup_id)
        })
        .await;
        let outcome = match r {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(store) = open(&dir) {
            match &outcome {
                Ok(id) => {
                    tracing::info!(backup = id.as_str(), "scheduled backup written");
                    let _ = store.set_meta("last_backup_at", &now_ms().to_string());
                    let _ = store.set_meta("last_backup_id", id);
                    let _ = store.set_meta("last_backup_error", "");
                }
                Err(e) => {
                    tracing::warn!(error = e.as_str(), "scheduled backup failed");
                    let _ = store.set_meta("last_backup_error", e);
                }
            }
        }
    }
}
