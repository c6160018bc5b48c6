//! Till commands that talk to the hub: join, sync, run, devices.

use crate::cli::{AdminArgs, DevicesCmd, TlsArgs};
use crate::node::{now_ms, open, os_ids};
use crate::output;
use anyhow::{Result, anyhow};
use serde_json::json;
use std::path::Path;
use tillsync_node::sync::client_for;
use tillsync_node::{ClientOptions, HubClient, enrol_and_bootstrap, sync_once};

fn options(tls: &TlsArgs) -> ClientOptions {
    ClientOptions { ca_file: tls.ca.clone(), insecure: tls.insecure, timeout_ms: 30_000 }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    crate::hub_cmd::install_crypto();
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn init_hub(dir: &Path, url: &str, code: &str, name: Option<&str>, tls: &TlsArgs, j: bool) -> Result<()> {
    let name = name.unwrap_or("till");
    let store = runtime()?.block_on(enrol_and_bootstrap(dir, url, code, name, &options(tls), os_ids()))?;
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

pub fn attach(dir: &Path, url: &str, code: &str, tls: &TlsArgs, j: bool) -> Result<()> {
    let rt = runtime()?;
    let report = rt.block_on(tillsync_node::attach::attach(dir, url, code, &options(tls), os_ids(), now_ms))?;
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

pub fn sync(dir: &Path, j: bool) -> Result<()> {
    let mut store = open(dir)?;
    let client = client_for(dir, &store)?;
    let report = runtime()?.block_on(sync_once(&mut store, &client, now_ms)).map_err(|e| {
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
    }
    // Everything else was synced; a held-back lane still fails the command.
    if !report.lane_errors.is_empty() {
        anyhow::bail!("lane held back: {}", report.lane_errors.join("; "));
    }
    Ok(())
}

pub fn run(dir: &Path, interval_s: u64, exit_after_s: u64, j: bool) -> Result<()> {
    let mut store = open(dir)?;
    let client = client_for(dir, &store)?;
    let rt = runtime()?;
    if !j {
        println!(
            "till {} syncing with {} every {interval_s} s and on live events; Ctrl-C stops it",
            store.identity().name,
            client.base()
        );
    }
    rt.block_on(async {
        let stop = async move {
            if exit_after_s > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(exit_after_s)).await;
            } else {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
            }
        };
        let opts = tillsync_node::run::RunOptions { interval_ms: interval_s.max(1) * 1_000, poll_ms: 200 };
        tillsync_node::run::run(&mut store, client, opts, now_ms, stop, |r| match r {
            Ok(rep) if j => {
                println!("{}", json!({"pushed": rep.pushed, "pulled": rep.pulled, "conflicts": rep.conflicts}))
            }
            Ok(rep) if rep.pushed + rep.pulled > 0 => println!("synced: pushed {}, pulled {}", rep.pushed, rep.pulled),
            Ok(_) => {}
            Err(e) => eprintln!("sync: {e} (the till keeps selling; retrying)"),
        })
        .await;
    });
    Ok(())
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
    }
    Ok(())
}
