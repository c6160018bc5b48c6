//! `till hub ...`: serve the hub and administer its data, in a folder
//! (SQLite) or a PostgreSQL database.

use crate::cli::{HubCmd, HubData, HubPolicyCmd, ServeLimits, StoreCmd, TenantCmd};
use crate::node::{now_ms, os_ids};
use crate::output;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use tillsync_hub::{AppState, HubError, HubStorage, PgHub, PgOptions, SqliteHub, app};
use uuid::Uuid;

/// The URL with any password hidden, for output and errors.
fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        // A key=value connection string.
        return url
            .split_whitespace()
            .map(|kv| if kv.starts_with("password=") { "password=***" } else { kv })
            .collect::<Vec<_>>()
            .join(" ");
    };
    match url[start..].find('@') {
        Some(at) => {
            let userinfo = &url[start..start + at];
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { format!("{user}:***") } else { user.to_string() };
            format!("{}{hidden}{}", &url[..start], &url[start + at..])
        }
        None => url.to_string(),
    }
}

/// Where the hub's data is, for messages.
fn describe(data: &HubData) -> String {
    match (&data.data, &data.database_url) {
        (Some(d), _) => d.display().to_string(),
        (None, Some(u)) => redact(u),
        (None, None) => String::new(),
    }
}

/// Opens the hub's storage: exactly one of `--data` and `--database-url`.
fn hub(data: &HubData) -> Result<Arc<dyn HubStorage>> {
    match (&data.data, &data.database_url) {
        (Some(dir), None) => Ok(Arc::new(SqliteHub::open(dir, os_ids())?)),
        (None, Some(url)) => {
            let options = PgOptions {
                pool_len_max: data.pool_len_max,
                acquire_timeout_ms: data.acquire_timeout_ms,
                ..PgOptions::default()
            };
            match PgHub::open(url, &options, os_ids()) {
                Ok(h) => Ok(Arc::new(h)),
                Err(HubError::Unavailable(detail) | HubError::Internal(detail)) => bail!(
                    "cannot use the PostgreSQL database at {}: {detail}; check that the server runs (`pg_isready`) and the URL (--database-url or DATABASE_URL)",
                    redact(url)
                ),
                Err(e) => Err(e.into()),
            }
        }
        (Some(_), Some(_)) => bail!(
            "both --data (SQLite) and --database-url (PostgreSQL) are given (DATABASE_URL or TILL_HUB_DATA may be set in the environment): give exactly one"
        ),
        (None, None) => {
            bail!(
                "where is the hub's data? give --data DIR (SQLite) or --database-url postgres://... (PostgreSQL, or DATABASE_URL)"
            )
        }
    }
}

/// Where the hub keeps tills' backups: `--backups DIR`, else `DATA/backups`
/// for a hub in a folder; a PostgreSQL hub keeps none unless told where (a
/// folder every hub process shares).
fn backup_files(data: &HubData) -> Option<tillsync_hub::BackupFiles> {
    match (&data.backups, &data.data) {
        (Some(dir), _) => Some(tillsync_hub::BackupFiles::new(dir)),
        (None, Some(d)) => Some(tillsync_hub::BackupFiles::new(&d.join("backups"))),
        (None, None) => None,
    }
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
        HubCmd::Serve { data, listen, metrics, tls_cert, tls_key, limits } => {
            serve(&data, &listen, metrics.as_deref(), tls_cert.as_deref(), tls_key.as_deref(), &limits, j)
        }
        HubCmd::Tenant(TenantCmd::RotateAdmin { data, tenant }) => {
            let tenant = uuid(&tenant, "tenant")?;
            let hub = hub(&data)?;
            let token = hub.rotate_admin_token(tenant, now_ms())?;
            // A rotated token is pending until its first use; this command
            // holds the hub's data, so it uses it at once and the old one dies.
            hub.authenticate(&token)?;
            if j {
                output::json(&json!({"tenant_id": tenant, "admin_token": token}));
            } else {
                println!(
                    "tenant {tenant}: new admin token (shown once, keep it safe; the old one no longer works): {token}"
                );
            }
            Ok(())
        }
        HubCmd::Tenant(TenantCmd::Create { data, name, sample }) => {
            let (id, token) = hub(&data)?.create_tenant(&name, sample, now_ms())?;
            if j {
                output::json(&json!({"tenant_id": id, "admin_token": token}));
            } else {
                println!("tenant {id} created{}", if sample { " with the sample catalogue" } else { "" });
                println!("admin token (shown once, keep it safe): {token}");
            }
            Ok(())
        }
        HubCmd::Store(StoreCmd::Create { data, tenant, name }) => {
            let id = hub(&data)?.create_store(uuid(&tenant, "tenant")?, &name, now_ms())?;
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
                hub(&data)?.create_enrol_code(uuid(&tenant, "tenant")?, uuid(&store, "store")?, now_ms(), ttl)?;
            if j {
                output::json(&json!({"code": code, "expires_at": expires}));
            } else {
                println!("enrolment code {code} (single use, valid {ttl_hours} h)");
                println!("on the new till: till node init --data DIR --hub URL --code {code}");
            }
            Ok(())
        }
        HubCmd::Policy(HubPolicyCmd::Set { data, tenant, target, mode }) => {
            hub(&data)?.set_policy(uuid(&tenant, "tenant")?, &target, &mode, now_ms())?;
            if j {
                output::json(&json!({"target": target, "mode": mode}))
            } else {
                println!("policy of {target} set to {mode}")
            }
            Ok(())
        }
        HubCmd::Usage { data, tenant } => {
            let tenant = uuid(&tenant, "tenant")?;
            let mut u = hub(&data)?.usage(tenant)?;
            if let Some(files) = backup_files(&data) {
                u.backup_bytes = files.used_bytes(tenant)?;
                u.quota_backup_bytes = files.quota_bytes(tenant)?;
            }
            if j {
                output::json(&u);
            } else {
                println!(
                    "changes {}  bytes {}  devices {}  stores {}  quarantined {}  quota {}  backups {} bytes (quota {})",
                    u.changes,
                    u.bytes,
                    u.devices,
                    u.stores,
                    u.quarantined,
                    u.quota_changes,
                    u.backup_bytes,
                    u.quota_backup_bytes
                );
            }
            Ok(())
        }
        HubCmd::Quota { data, tenant, changes, backup_bytes } => {
            if changes.is_none() && backup_bytes.is_none() {
                bail!("give --changes N and/or --backup-bytes N (0 removes a quota)");
            }
            let tenant = uuid(&tenant, "tenant")?;
            let h = hub(&data)?;
            // An unknown tenant is refused before anything is written.
            h.usage(tenant)?;
            if let Some(n) = changes {
                h.set_quota(tenant, n)?;
            }
            if let Some(n) = backup_bytes {
                let Some(files) = backup_files(&data) else {
                    bail!("this hub keeps no backups: give --backups DIR (the folder `till hub serve --backups` uses)");
                };
                files.set_quota_bytes(tenant, n)?;
            }
            if j {
                output::json(&json!({"quota_changes": changes, "quota_backup_bytes": backup_bytes}))
            } else {
                if let Some(n) = changes {
                    println!("quota set to {n} catalogue and telemetry changes");
                }
                if let Some(n) = backup_bytes {
                    println!("backup quota set to {n} bytes");
                }
            }
            Ok(())
        }
        HubCmd::Compact { data, tenant, keep } => {
            let h = hub(&data)?.compact(uuid(&tenant, "tenant")?, keep)?;
            if j {
                output::json(&json!({"horizon": h}))
            } else {
                println!("log compacted up to position {h}")
            }
            Ok(())
        }
        HubCmd::Digest { data, tenant, store } => {
            let d = hub(&data)?.store_digest(uuid(&tenant, "tenant")?, uuid(&store, "store")?)?;
            if j {
                output::json(&json!({"state_digest": d}))
            } else {
                println!("{d}")
            }
            Ok(())
        }
        HubCmd::Export { data, tenant, store, at, out, key } => {
            let at_ms = parse_time(&at)?;
            let Some(dir) = &data.data else {
                bail!(
                    "till hub export reads a hub data folder (--data DIR); a PostgreSQL hub cannot export a moment yet: restore the database (pg_dump or point-in-time recovery, see OPERATIONS.md) instead"
                );
            };
            let e = SqliteHub::open(dir, os_ids())?.export_at(
                uuid(&tenant, "tenant")?,
                uuid(&store, "store")?,
                at_ms,
                &out,
                &key.spec(),
            )?;
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
    data: &HubData,
    listen: &str,
    metrics: Option<&str>,
    cert: Option<&Path>,
    key: Option<&Path>,
    limits: &ServeLimits,
    j: bool,
) -> Result<()> {
    install_crypto();
    crate::init_logs();
    let storage = hub(data)?;
    let flusher = storage.clone();
    let where_ = describe(data);
    let where_key = if data.data.is_some() { "data" } else { "database" };
    let mut state = AppState::new(storage).with_rates(tillsync_hub::RateOptions {
        rate_per_s: limits.rate_per_s,
        burst_len: limits.rate_burst_len,
        ..tillsync_hub::RateOptions::default()
    });
    if let Some(files) = backup_files(data) {
        state = state.with_backups(files);
    }
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
            println!("{}", json!({"url": format!("{scheme}://{bound}"), where_key: where_}));
        } else {
            println!("hub listening on {scheme}://{bound} (data in {where_}); Ctrl-C stops it");
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
        // The client's address reaches the handlers for the rate limit of
        // routes without a token.
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        match (cert, key) {
            (Some(c), Some(k)) => {
                let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(c, k).await.with_context(|| {
                    format!("cannot load the TLS certificate {} and key {}", c.display(), k.display())
                })?;
                let mut server = axum_server::from_tcp_rustls(std_listener, tls)?.handle(handle);
                tune(server.http_builder(), limits.header_read_timeout_ms);
                server.serve(service).await?;
            }
            _ => {
                let mut server = axum_server::from_tcp(std_listener)?.handle(handle);
                tune(server.http_builder(), limits.header_read_timeout_ms);
                server.serve(service).await?;
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    // Devices' last-seen times are kept in memory between writes: write the
    // last of them before the process ends.
    flusher.flush_seen().context("cannot write the devices' last-seen times")?;
    Ok(())
}

/// Connection limits of the hub's listener. HTTP/1: a client must send a
/// request's headers within `header_read_timeout_ms`, and the same bound
/// closes a keep-alive connection that sends no next request (hyper starts
/// the header timer as soon as it waits for the next request). A response
/// in progress, such as the live event stream, is not cut: the timer only
/// runs while headers are awaited. HTTP/2 (over TLS): the hub pings idle
/// connections and drops those that do not answer. TLS handshakes have
/// axum-server's own 10 s bound.
pub fn tune(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header_read_timeout_ms: u64,
) {
    use hyper_util::rt::TokioTimer;
    use std::time::Duration;
    let header = (header_read_timeout_ms > 0).then(|| Duration::from_millis(header_read_timeout_ms));
    b.http1().timer(TokioTimer::new()).header_read_timeout(header).keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(Some(256));
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn a_database_password_is_never_printed() {
        assert_eq!(redact("postgres://hub:s3cret@db:5432/tillsync"), "postgres://hub:***@db:5432/tillsync");
        assert_eq!(redact("postgres://hub@db/tillsync"), "postgres://hub@db/tillsync");
        assert_eq!(redact("postgres://db/tillsync"), "postgres://db/tillsync");
        assert_eq!(redact("host=db user=hub password=s3cret"), "host=db user=hub password=***");
    }
}
