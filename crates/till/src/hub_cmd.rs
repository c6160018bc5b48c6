//! `till hub ...`: serve the hub and administer its data folder.

use crate::cli::{HubCmd, HubPolicyCmd, StoreCmd, TenantCmd};
use crate::node::{now_ms, os_ids};
use crate::output;
use anyhow::{Context, Result, anyhow};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use tillsync_hub::{AppState, HubStorage, SqliteHub, app};
use uuid::Uuid;

fn hub(data: &Path) -> Result<SqliteHub> {
    Ok(SqliteHub::open(data, os_ids())?)
}

fn uuid(s: &str, what: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| anyhow!("'{s}' is not a {what} id: see the output of `till hub {what} create`"))
}

/// Installs ring as rustls' process-wide crypto provider (once).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn run(cmd: HubCmd, j: bool) -> Result<()> {
    match cmd {
        HubCmd::Serve { data, listen, metrics, tls_cert, tls_key } => {
            serve(&data.data, &listen, metrics.as_deref(), tls_cert.as_deref(), tls_key.as_deref(), j)
        }
        HubCmd::Tenant(TenantCmd::Create { data, name, sample }) => {
            let (id, token) = hub(&data.data)?.create_tenant(&name, sample, now_ms())?;
            if j {
                output::json(&json!({"tenant_id": id, "admin_token": token}));
            } else {
                println!("tenant {id} created{}", if sample { " with the sample catalogue" } else { "" });
                println!("admin token (shown once, keep it safe): {token}");
            }
            Ok(())
        }
        HubCmd::Store(StoreCmd::Create { data, tenant, name }) => {
            let id = hub(&data.data)?.create_store(uuid(&tenant, "tenant")?, &name, now_ms())?;
            if j {
                output::json(&json!({"store_id": id}))
            } else {
                println!("store {id} created")
            }
            Ok(())
        }
        HubCmd::Enrol { data, tenant, store, ttl_hours } => {
            let ttl = ttl_hours.clamp(1, 24 * 30) * 3_600_000;
            let (code, expires) =
                hub(&data.data)?.create_enrol_code(uuid(&tenant, "tenant")?, uuid(&store, "store")?, now_ms(), ttl)?;
            if j {
                output::json(&json!({"code": code, "expires_at": expires}));
            } else {
                println!("enrolment code {code} (single use, valid {ttl_hours} h)");
                println!("on the new till: till node init --data DIR --hub URL --code {code}");
            }
            Ok(())
        }
        HubCmd::Policy(HubPolicyCmd::Set { data, tenant, target, mode }) => {
            hub(&data.data)?.set_policy(uuid(&tenant, "tenant")?, &target, &mode, now_ms())?;
            if j {
                output::json(&json!({"target": target, "mode": mode}))
            } else {
                println!("policy of {target} set to {mode}")
            }
            Ok(())
        }
        HubCmd::Usage { data, tenant } => {
            let u = hub(&data.data)?.usage(uuid(&tenant, "tenant")?)?;
            if j {
                output::json(&u);
            } else {
                println!(
                    "changes {}  bytes {}  devices {}  stores {}  quarantined {}  quota {}",
                    u.changes, u.bytes, u.devices, u.stores, u.quarantined, u.quota_changes
                );
            }
            Ok(())
        }
        HubCmd::Quota { data, tenant, changes } => {
            hub(&data.data)?.set_quota(uuid(&tenant, "tenant")?, changes)?;
            if j {
                output::json(&json!({"quota_changes": changes}))
            } else {
                println!("quota set to {changes} changes")
            }
            Ok(())
        }
        HubCmd::Compact { data, tenant, keep } => {
            let h = hub(&data.data)?.compact(uuid(&tenant, "tenant")?, keep)?;
            if j {
                output::json(&json!({"horizon": h}))
            } else {
                println!("log compacted up to position {h}")
            }
            Ok(())
        }
        HubCmd::Digest { data, tenant, store } => {
            let d = hub(&data.data)?.store_digest(uuid(&tenant, "tenant")?, uuid(&store, "store")?)?;
            if j {
                output::json(&json!({"state_digest": d}))
            } else {
                println!("{d}")
            }
            Ok(())
        }
        HubCmd::Export { data, tenant, store, at, out } => {
            let at_ms = parse_time(&at)?;
            let e = hub(&data.data)?.export_at(uuid(&tenant, "tenant")?, uuid(&store, "store")?, at_ms, &out)?;
            if j {
                output::json(&e);
            } else {
                println!(
                    "store {} as of {at} written to {} (read-only): {} log entries up to then, {} later left out; digest {}",
                    e.store_id,
                    out.display(),
                    e.entries,
                    e.entries_after,
                    e.state_digest
                );
            }
            Ok(())
        }
    }
}

/// A moment as milliseconds since the epoch: RFC 3339 or plain milliseconds.
fn parse_time(at: &str) -> Result<u64> {
    let at = at.trim();
    if let Ok(ms) = at.parse::<u64>() {
        return Ok(ms);
    }
    let t: jiff::Timestamp = at.parse().map_err(|e| {
        anyhow!("'{at}' is not a time: use RFC 3339 (2025-03-01T17:30:00Z) or milliseconds since the epoch ({e})")
    })?;
    u64::try_from(t.as_millisecond()).map_err(|_| anyhow!("'{at}' is before 1970"))
}

/// Serves until Ctrl-C or SIGTERM. Prints the bound address first, so a
/// script that asked for port 0 learns the port.
pub fn serve(
    data: &Path,
    listen: &str,
    metrics: Option<&str>,
    cert: Option<&Path>,
    key: Option<&Path>,
    j: bool,
) -> Result<()> {
    install_crypto();
    crate::init_logs();
    let storage: Arc<dyn HubStorage> = Arc::new(hub(data)?);
    let state = AppState::new(storage);
    let metrics_app = tillsync_hub::metrics_router(state.clone());
    let router = app(state);
    let metrics = metrics.map(str::to_string);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let addr: std::net::SocketAddr =
            listen.parse().map_err(|_| anyhow!("'{listen}' is not an address: use HOST:PORT, e.g. 127.0.0.1:8440"))?;
        let std_listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        std_listener.set_nonblocking(true)?;
        let bound = std_listener.local_addr()?;
        let scheme = if cert.is_some() { "https" } else { "http" };
        if j {
            println!("{}", json!({"url": format!("{scheme}://{bound}"), "data": data}));
        } else {
            println!("hub listening on {scheme}://{bound} (data in {}); Ctrl-C stops it", data.display());
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        if let Some(m) = metrics {
            let l = tokio::net::TcpListener::bind(&m).await.with_context(|| format!("cannot serve metrics on {m}"))?;
            tracing::info!(addr = m.as_str(), "metrics listening");
            tokio::spawn(async move { axum::serve(l, metrics_app).await });
        }
        let handle = axum_server::Handle::new();
        let h2 = handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            h2.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
        });
        match (cert, key) {
            (Some(c), Some(k)) => {
                let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(c, k).await.with_context(|| {
                    format!("cannot load the TLS certificate {} and key {}", c.display(), k.display())
                })?;
                axum_server::from_tcp_rustls(std_listener, tls)?
                    .handle(handle)
                    .serve(router.into_make_service())
                    .await?;
            }
            _ => {
                axum_server::from_tcp(std_listener)?.handle(handle).serve(router.into_make_service()).await?;
            }
        }
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
