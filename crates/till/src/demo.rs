//! `till demo`: a guided tour on a standalone sample till. (Once the hub
//! exists, the demo grows into a hub with two tills.)

use crate::node::{init_offline, now_ms, open};
use anyhow::{Result, bail};
use serde_json::json;
use std::path::Path;
use tillsync_core::domain::{Method, PaymentInput};
use tillsync_store::SaleRequest;

/// The first demo till's UI port (the second uses the next one); a port
/// taken by something else falls back to any free port.
pub const DEMO_UI_PORT: u16 = 8441;

/// Makes (or remakes) the demo folder; refuses a folder that is not ours.
fn fresh_dir(dir: &Path) -> Result<()> {
    let marker = dir.join(".tillsync-demo");
    if marker.exists() {
        // Our own earlier demo: start it afresh.
        std::fs::remove_dir_all(dir)?;
    } else if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} exists and is not a demo folder: pass --dir with a new folder", dir.display());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&marker, "made by `till demo`; removed by the next demo\n")?;
    Ok(())
}

/// The offline tour on one standalone till.
pub fn run(dir: &Path, j: bool) -> Result<()> {
    fresh_dir(dir)?;
    let till = dir.join("till-1");
    let mut store = init_offline(&till, Some("demo till"), None, true, &tillsync_store::keys::KeySpec::Folder)?;
    drop(store);
    store = open(&till)?;
    let cur = store.settings()?.currency;
    let cash = |a: Option<i64>| PaymentInput { method: Method::Cash, amount_minor: a, brand: None, last4: None };
    let card = |a: Option<i64>| PaymentInput {
        method: Method::Card,
        amount_minor: a,
        brand: Some("visa".into()),
        last4: Some("4242".into()),
    };
    let sam = store.find_staff("Sam")?;
    let s1 = store.sell(
        now_ms(),
        &SaleRequest {
            items: vec![("CAPPUCCINO".into(), 2), ("CROISSANT".into(), 1)],
            payments: vec![cash(Some(1000))],
            staff_id: Some(sam),
            ..Default::default()
        },
    )?;
    let s2 = store.sell(
        now_ms(),
        &SaleRequest {
            items: vec![("LATTE".into(), 1), ("SW-HAM".into(), 1), ("WATER".into(), 2)],
            payments: vec![card(Some(500)), cash(None)],
            staff_id: Some(sam),
            ..Default::default()
        },
    )?;
    let alex = store.approve("Alex", "1234")?;
    let r = store.refund(now_ms(), &s2.receipt, &[("WATER".into(), 1)], alex, Some("demo refund"))?;
    let status = store.status()?;
    if j {
        crate::output::json(
            &json!({"data": till, "sales": [s1.receipt, s2.receipt], "refund_minor": r.total_minor, "status": status}),
        );
        return Ok(());
    }
    println!("Tillsync demo: a standalone till with sample data in {}", till.display());
    println!();
    println!("Sale paid in cash:");
    print!("{}", crate::output::receipt("", &s1.data, cur));
    println!();
    println!("Sale with split tender (card 5.00, rest cash):");
    print!("{}", crate::output::receipt("", &s2.data, cur));
    println!();
    println!("Refunded 1 x WATER on {}: {}", s2.receipt, cur.display(r.total_minor));
    println!("Pending changes per lane: {:?}", status.pending);
    println!();
    println!("Try it yourself:");
    let d = till.display();
    println!("  cargo run -q -- stock list --data {d}");
    println!("  cargo run -q -- sale --data {d} --item ESPRESSO:2 --pay cash:10");
    println!("  cargo run -q -- report --data {d}");
    println!("Remove the folder {} to start again.", dir.display());
    Ok(())
}

/// The hub demo: a hub on SQLite with a sample tenant and two tills of one
/// store, in one process, all syncing; a sale on one till shows on the other.
pub fn run_hub(dir: &Path, exit_after_s: u64, j: bool) -> Result<()> {
    use std::sync::Arc;
    use tillsync_hub::{AppState, HubStorage, SqliteHub, app};
    use tillsync_node::{ClientOptions, enrol_and_bootstrap, sync::client_for, sync_once};
    fresh_dir(dir)?;
    crate::hub_cmd::install_crypto();
    let hub_dir = dir.join("hub");
    let hub = Arc::new(SqliteHub::open(&hub_dir, crate::node::os_ids())?);
    let now = now_ms();
    let (tenant, admin_token) = hub.create_tenant("Demo Cafe", true, now)?;
    let store = hub.create_store(tenant, "Main Street", now)?;
    let codes = [
        hub.create_enrol_code(tenant, store, now, 3_600_000)?.0,
        hub.create_enrol_code(tenant, store, now, 3_600_000)?.0,
    ];
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let storage: Arc<dyn HubStorage> = hub.clone();
        // The hub can be taken down from the keyboard (see below) so that a
        // newcomer sees the tills' indicators go offline and come back.
        let hub_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let down = hub_down.clone();
        let hub_app = app(AppState::new(storage)).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let down = down.load(std::sync::atomic::Ordering::Relaxed);
                async move {
                    if down {
                        use axum::response::IntoResponse;
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "the demo's hub is down").into_response();
                    }
                    next.run(req).await
                }
            },
        ));
        let server = tokio::spawn(async move { axum::serve(listener, hub_app).await });
        let opts = ClientOptions::default();
        let mut tills = Vec::new();
        for (i, code) in codes.iter().enumerate() {
            let d = dir.join(format!("till-{}", i + 1));
            let s =
                enrol_and_bootstrap(&d, &url, code, &format!("till {}", i + 1), &opts, crate::node::os_ids()).await?;
            tills.push((d, s));
        }
        // A sale on till 1 with split tender, synced, then seen on till 2.
        let (d1, s1) = &mut tills[0];
        let sam = s1.find_staff("Sam")?;
        let card = PaymentInput {
            method: Method::Card,
            amount_minor: Some(500),
            brand: Some("visa".into()),
            last4: Some("4242".into()),
        };
        let cash = PaymentInput { method: Method::Cash, amount_minor: None, brand: None, last4: None };
        let sale = s1.sell(
            now_ms(),
            &SaleRequest {
                items: vec![("CAPPUCCINO".into(), 2), ("CROISSANT".into(), 1)],
                payments: vec![card, cash],
                staff_id: Some(sam),
                ..Default::default()
            },
        )?;
        let c1 = client_for(d1, s1)?;
        sync_once(s1, &c1, now_ms).await?;
        let (d2, s2) = &mut tills[1];
        let c2 = client_for(d2, s2)?;
        sync_once(s2, &c2, now_ms).await?;
        let seen = s2.sale_by_receipt(&sale.receipt).is_ok();
        let digests: Vec<String> = tills.iter().map(|(_, s)| s.digests().map(|d| d.0)).collect::<Result<_, _>>()?;
        let hub_digest = hub.store_digest(tenant, store)?;
        let converged = digests.iter().all(|d| *d == hub_digest);
        // Each till's POS UI and local API, on its usual port when free.
        let mut config = tillsync_node::config::Config::default();
        config.sync.interval_s = 5;
        let mut uis = Vec::new();
        let mut asked = Vec::new();
        let mut servers = Vec::new();
        for (i, (d, _)) in tills.iter().enumerate() {
            let listener = match tokio::net::TcpListener::bind(("127.0.0.1", DEMO_UI_PORT + i as u16)).await {
                Ok(l) => l,
                Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            };
            uis.push(format!("http://{}/", listener.local_addr()?));
            let (asked_tx, asked_rx) = tokio::sync::mpsc::channel::<()>(4);
            asked.push(asked_rx);
            let app = crate::sync_cmd::local_app(d, &config, asked_tx, false)?;
            servers.push(tokio::spawn(async move { axum::serve(listener, app).await }));
        }
        if j {
            crate::output::json(&json!({"hub": url, "hub_data": hub_dir, "tenant_id": tenant, "store_id": store,
                "admin_token": admin_token, "tills": tills.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
                "sale": sale.receipt, "seen_on_till_2": seen, "converged": converged, "state_digest": hub_digest,
                "ui": uis}));
        } else {
            println!("Tillsync demo in {}", dir.display());
            println!("  hub      {url}  (data {}; tenant {tenant})", hub_dir.display());
            println!("  admin    token {admin_token}");
            for ((d, s), ui) in tills.iter().zip(&uis) {
                println!("  till     {}  receipts {}-...  POS UI {ui}", d.display(), s.identity().receipt_prefix);
            }
            println!("  sign in  Alex (manager, PIN 1234), Sam (PIN 1111) or Jo (PIN 2222)");
            println!();
            println!("Till 1 sold {} ({}); till 2 sees it: {seen}", sale.receipt, s1_total(&sale));
            println!(
                "Both tills and the hub hold state digest {}: {}",
                &hub_digest[..16],
                if converged { "converged" } else { "NOT converged" }
            );
            println!();
            println!(
                "Open a till's POS UI in a browser ({}), sell, and watch the sync indicator in its header.",
                uis[0]
            );
            println!("Both tills now sync in the background (live events + every 5 s). In another terminal:");
            println!("  cargo run -q -- sale --data {}/till-1 --item LATTE --pay cash", dir.display());
            println!("  cargo run -q -- sales list --data {}/till-2", dir.display());
            println!("  cargo run -q -- devices list --hub {url} --token {admin_token}");
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                println!(
                    "Press Enter to take the hub down (the tills keep selling), and Enter again to bring it back."
                );
                let toggle = hub_down.clone();
                std::thread::spawn(move || {
                    let mut line = String::new();
                    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                        let was = toggle.fetch_xor(true, std::sync::atomic::Ordering::Relaxed);
                        println!(
                            "hub {}",
                            if was { "back up" } else { "down: the tills show Offline, then N pending after a sale" }
                        );
                        line.clear();
                    }
                });
            }
            println!(
                "{}",
                if exit_after_s > 0 {
                    format!("The demo stops by itself after {exit_after_s} s.")
                } else {
                    "Ctrl-C stops the demo.".into()
                }
            );
        }
        let stop = async move {
            if exit_after_s > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(exit_after_s)).await;
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut runners = Vec::new();
        for ((d, mut s), asked_rx) in tills.into_iter().zip(asked) {
            let client = client_for(&d, &s)?;
            let mut rx = tx.subscribe();
            let config = config.clone();
            runners.push(tokio::spawn(async move {
                tillsync_node::run::run(
                    &mut s,
                    client,
                    config,
                    now_ms,
                    async move {
                        let _ = rx.recv().await;
                    },
                    asked_rx,
                    |_, r| {
                        if let Err(e) = r {
                            eprintln!("sync: {e}");
                        }
                    },
                )
                .await;
            }));
        }
        stop.await;
        let _ = tx.send(());
        for r in runners {
            let _ = r.await;
        }
        server.abort();
        for s in servers {
            s.abort();
        }
        if !j {
            println!("demo stopped; its files stay in {} (the next demo replaces them)", dir.display());
        }
        anyhow::Ok(())
    })
}

fn s1_total(sale: &tillsync_store::SaleOutcome) -> String {
    tillsync_core::money::Currency::parse(&sale.currency).map(|c| c.display(sale.total_minor)).unwrap_or_default()
}
