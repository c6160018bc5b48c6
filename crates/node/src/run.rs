//! The background driver of `till node run`. It syncs:
//! - soon after a local write (debounced),
//! - at once when the hub becomes reachable again (reachability is probed
//!   on its own short schedule, independent of the backoff),
//! - at once on a live event from the hub,
//! - on a timer, when auto-sync is on,
//! - when asked (`POST /api/sync`).
//!
//! After a failed round it waits with exponential backoff and full jitter,
//! capped; past the retry limit the till shows `error` and retries go on at
//! the cap. Nothing is ever dropped: the outbox stays until acknowledged.

use crate::client::HubClient;
use crate::config::Config;
use crate::sync::{SyncOptions, SyncReport, sync_with};
use std::time::Duration;
use tillsync_core::IdGen;
use tillsync_core::protocol::backoff_ms;
use tillsync_store::Store;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often `node run` checkpoints the till's WAL between rounds.
pub const CHECKPOINT_INTERVAL_MS: u64 = 1_000;
/// The WAL size, in pages, past which one of the node's commits
/// checkpoints by itself (the timer fell behind): about 16 MiB.
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 4_000;

/// The page cache of the node's sync connection, in KiB (every other
/// connection has 16,000). The cache filled to its limit while syncing
/// 40,000 sales and stayed resident: idle RSS was 45.9 MB with 16,000 KiB
/// and 33.7 MB with 4,096 (issue 4's goal is under 40 MB; BENCHMARKS.md,
/// "Offline drain and node memory").
pub const RUN_CACHE_KIB: u32 = 4_096;

/// Why a round runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Timer,
    LocalWrite,
    LiveEvent,
    Reachable,
    Asked,
    Retry,
}

/// Runs until `stop` resolves. `asked` carries "sync now" requests;
/// `on_round` sees every round's outcome.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    store: &mut Store,
    client: HubClient,
    config: Config,
    now_ms: impl Fn() -> u64 + Clone,
    stop: impl std::future::Future<Output = ()>,
    mut asked: mpsc::Receiver<()>,
    mut on_round: impl FnMut(Trigger, &Result<SyncReport, crate::SyncError>),
) {
    let (tx, mut events) = mpsc::channel::<()>(16);
    let listener = client.clone();
    // Live events: reconnect with a capped delay whenever the stream drops.
    let sse = tokio::spawn(async move {
        let mut delay = 500u64;
        loop {
            let tx2 = tx.clone();
            if listener
                .listen(move || {
                    let _ = tx2.try_send(());
                })
                .await
                .is_ok()
            {
                delay = 500;
            }
            tokio::time::sleep(Duration::from_millis(delay)).await;
            delay = (delay * 2).min(30_000);
        }
    });
    // Reachability probes and the OS's view of the links, on their own
    // schedule; a change of either is an event for the loop below.
    let (ptx, mut probes) = mpsc::channel::<(bool, String, bool)>(4);
    let prober = client.clone();
    let (probe_every, probe_timeout) = (config.sync.probe_interval_ms, config.sync.probe_timeout_ms);
    let metered_setting = config.network.metered.clone();
    let probe = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(probe_every));
        loop {
            tick.tick().await;
            let ok =
                tokio::time::timeout(Duration::from_millis(probe_timeout), prober.healthy()).await.unwrap_or(false);
            let view = crate::net::current(&metered_setting, Some(ok));
            if ptx.send((ok, view.kind, view.metered)).await.is_err() {
                break;
            }
        }
    });
    // The WAL is checkpointed between rounds on a timer, not inside a
    // round's commit: an apply that checkpoints waits for the copy and its
    // fsync, and that wait was the tail of a sale's way to this till
    // (BENCHMARKS.md, "Sync (issue 3)"). The raised limit still bounds
    // the WAL if the timer falls behind.
    let _ = store.set_wal_autocheckpoint_pages(WAL_AUTOCHECKPOINT_PAGES);
    // A smaller page cache than a CLI command's: the node runs for days,
    // and what its cache grows to during one large sync stays in the
    // process (freeing it gives nothing back to the OS: glibc keeps the
    // heap). See RUN_CACHE_KIB.
    let _ = store.set_cache_kib(RUN_CACHE_KIB);
    let mut checkpoint = tokio::time::interval(Duration::from_millis(CHECKPOINT_INTERVAL_MS));
    let mut link: Option<String> = None;
    let mut rng = IdGen::from_u64(now_ms() ^ 0x5eed);
    let _ = store.set_meta("node_running", "1");
    tokio::pin!(stop);
    let mut timer = tokio::time::interval(Duration::from_secs(config.sync.interval_s));
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut last_pending = pending(store);
    let mut write_at: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut failures: u32 = 0;
    let mut reachable: Option<bool> = None;
    // Whether the link is metered, as the latest probe saw it: a round
    // started by a live event must not scan the interfaces first (that scan
    // was most of a till's wait between the event and its pull).
    let mut metered: Option<bool> = None;
    // A change written while the node was down syncs now, with nothing else written.
    let mut due: Option<Trigger> = Some(Trigger::Timer);
    loop {
        if due.is_none() {
            let sleep_until = [write_at, retry_at].into_iter().flatten().min();
            let trigger = tokio::select! {
                _ = &mut stop => break,
                _ = timer.tick() => config.sync.auto.then_some(Trigger::Timer),
                Some(()) = events.recv() => Some(Trigger::LiveEvent),
                Some(()) = asked.recv() => Some(Trigger::Asked),
                Some((ok, kind, is_metered)) = probes.recv() => {
                    metered = Some(is_metered);
                    let came_back = ok && reachable == Some(false);
                    let link_changed = link.as_ref().is_some_and(|l| *l != kind);
                    if link_changed {
                        tracing::info!(from = link.as_deref().unwrap_or(""), to = kind.as_str(), "network link changed");
                    }
                    link = Some(kind.clone());
                    let _ = store.set_meta("net_link", &kind);
                    if reachable != Some(ok) {
                        tracing::info!(reachable = ok, "hub reachability changed");
                        reachable = Some(ok);
                        let _ = store.set_meta("net_reachable", if ok { "true" } else { "false" });
                    }
                    // Back online (or on another link): sync at once, whatever the backoff said.
                    (came_back || (ok && link_changed)).then_some(Trigger::Reachable)
                }
                _ = checkpoint.tick() => {
                    if let Err(e) = store.checkpoint_passive() {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                    None
                }
                _ = poll.tick() => {
                    let p = pending(store);
                    if p > last_pending {
                        write_at = Some(Instant::now() + Duration::from_millis(config.sync.debounce_ms));
                    }
                    last_pending = p;
                    None
                }
                _ = sleep_until_opt(sleep_until) => {
                    let now = Instant::now();
                    if write_at.is_some_and(|t| t <= now) {
                        write_at = None;
                        Some(Trigger::LocalWrite)
                    } else if retry_at.is_some_and(|t| t <= now) {
                        retry_at = None;
                        Some(Trigger::Retry)
                    } else {
                        None
                    }
                }
            };
            let Some(t) = trigger else { continue };
            // While backing off, only a reachability change, a live event or
            // a person asking overrides the wait.
            if retry_at.is_some() && matches!(t, Trigger::Timer | Trigger::LocalWrite) {
                continue;
            }
            due = Some(t);
        }
        let trigger = due.take().expect("due");
        if !config.sync.auto && trigger != Trigger::Asked {
            // Auto-sync off: only "sync now" runs a round.
            continue;
        }
        let opts = SyncOptions {
            metered_lanes: metered_lanes(&config, metered),
            force: false,
            full: false,
            skip_empty_push: trigger == Trigger::LiveEvent,
        };
        let started = Instant::now();
        let was_retry = retry_at.is_some() || trigger == Trigger::Retry;
        let r = sync_with(store, &client, now_ms.clone(), &opts).await;
        crate::metrics::NODE.round(started.elapsed(), r.is_ok(), was_retry);
        match &r {
            Ok(_) => {
                failures = 0;
                retry_at = None;
                reachable = Some(true);
            }
            Err(e) if e.is_revoked() => {
                retry_at = Some(Instant::now() + Duration::from_millis(config.sync.backoff_cap_ms));
            }
            Err(crate::SyncError::RateLimited { retry_after_ms }) => {
                // The hub said when: wait that long (plus a little jitter so
                // tills limited together do not return together). Not a
                // failure of the link: the retry count is left alone.
                let wait = retry_after_ms + rng.next_u64() % 1_000;
                tracing::info!(retry_in_ms = wait, "the hub is rate limiting this till");
                crate::metrics::NODE.backoff_ms.store(wait, std::sync::atomic::Ordering::Relaxed);
                retry_at = Some(Instant::now() + Duration::from_millis(wait));
            }
            Err(e) => {
                let wait =
                    backoff_ms(failures, config.sync.backoff_base_ms, config.sync.backoff_cap_ms, rng.next_u64());
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, failures, retry_in_ms = wait, "sync round failed");
                crate::metrics::NODE.backoff_ms.store(wait, std::sync::atomic::Ordering::Relaxed);
                retry_at = Some(Instant::now() + Duration::from_millis(wait));
            }
        }
        last_pending = pending(store);
        // The timer counts from the last round, so start-up does not run two.
        timer.reset();
        on_round(trigger, &r);
    }
    let _ = store.set_meta("node_running", "0");
    sse.abort();
    probe.abort();
}

fn pending(store: &Store) -> i64 {
    store.pending().map(|p| p.values().sum()).unwrap_or(0)
}

/// The lanes a metered link may carry, or `None` when the link is not
/// metered. `probed` is the latest probe's view; before the first probe the
/// link is read now.
fn metered_lanes(config: &Config, probed: Option<bool>) -> Option<Vec<tillsync_core::Lane>> {
    let is_metered = match config.network.metered.as_str() {
        "yes" => true,
        "no" => false,
        setting => probed.unwrap_or_else(|| crate::net::current(setting, None).metered),
    };
    is_metered.then(|| config.network.metered_lanes.iter().filter_map(|l| tillsync_core::Lane::parse(l)).collect())
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
