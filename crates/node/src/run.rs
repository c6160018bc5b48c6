//! The background driver of `till node run`: syncs on a timer, soon after
//! local writes, and at once on live events from the hub, and keeps going
//! (the till keeps selling) while the hub is down.

use crate::client::HubClient;
use crate::sync::{SyncReport, sync_once};
use std::time::Duration;
use tillsync_store::Store;
use tokio::sync::mpsc;

/// Timing of the driver.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub interval_ms: u64,
    /// How often local writes are looked for.
    pub poll_ms: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { interval_ms: 10_000, poll_ms: 250 }
    }
}

/// Runs until `stop` resolves. `on_round` sees every round's outcome.
pub async fn run(
    store: &mut Store,
    client: HubClient,
    opts: RunOptions,
    now_ms: impl Fn() -> u64 + Clone,
    stop: impl std::future::Future<Output = ()>,
    mut on_round: impl FnMut(&Result<SyncReport, crate::SyncError>),
) {
    let (tx, mut rx) = mpsc::channel::<()>(16);
    let listener = client.clone();
    // Live events: reconnect with a capped delay whenever the stream drops.
    let events = tokio::spawn(async move {
        let mut delay = 500u64;
        loop {
            let tx2 = tx.clone();
            let r = listener
                .listen(move || {
                    let _ = tx2.try_send(());
                })
                .await;
            if r.is_ok() {
                delay = 500;
            }
            tokio::time::sleep(Duration::from_millis(delay)).await;
            delay = (delay * 2).min(30_000);
        }
    });
    tokio::pin!(stop);
    let mut interval = tokio::time::interval(Duration::from_millis(opts.interval_ms.max(100)));
    let mut poll = tokio::time::interval(Duration::from_millis(opts.poll_ms.max(20)));
    let mut last_pending = i64::MIN;
    loop {
        let go = tokio::select! {
            _ = &mut stop => break,
            _ = interval.tick() => true,
            _ = rx.recv() => true,
            _ = poll.tick() => {
                // A local write (a sale from the CLI or UI) shows up as pending.
                let pending = store.pending().map(|p| p.values().sum::<i64>()).unwrap_or(0);
                let changed = pending != last_pending && pending > 0;
                last_pending = pending;
                changed
            }
        };
        if go {
            let r = sync_once(store, &client, now_ms.clone()).await;
            last_pending = store.pending().map(|p| p.values().sum::<i64>()).unwrap_or(0);
            on_round(&r);
        }
    }
    events.abort();
}
