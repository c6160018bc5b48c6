//! One sync round and enrolment. Push first (sales before anything else),
//! then pull every page; every step is durable before the next.

use crate::client::{ClientOptions, HubClient};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tillsync_core::change::StateKey;
use tillsync_core::wire::{PullResponse, PushRequest, SnapshotKey, SnapshotPage, WireChange};
use tillsync_core::{Hlc, IdGen, Lane, Op, Schema};
use tillsync_store::keys::KeySpec;
use tillsync_store::{BootProgress, Identity, MetaUpdate, Store, StoreError};

/// Errors of syncing. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot reach the hub: {0}")]
    Network(String),
    #[error("{0}")]
    Tls(String),
    #[error("the hub refused: {message} ({code})")]
    Hub { status: u16, code: String, message: String },
    /// The hub asked this till to slow down; nothing was lost, the outbox
    /// waits and the next round runs after `retry_after_ms`.
    #[error("the hub is rate limiting this till: retrying in {} s", retry_after_ms.div_ceil(1_000))]
    RateLimited { retry_after_ms: u64 },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SyncError {
    pub(crate) fn from_reqwest(e: reqwest::Error) -> SyncError {
        let mut chain = e.to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            src = s.source();
        }
        if chain.contains("certificate") || chain.contains("UnknownIssuer") || chain.contains("NotValidForName") {
            SyncError::Tls(format!(
                "the hub's TLS certificate is not trusted ({chain}): check the URL, or pass --ca FILE with the hub's CA certificate"
            ))
        } else {
            SyncError::Network(chain)
        }
    }

    /// Whether the hub said this device is revoked.
    pub fn is_revoked(&self) -> bool {
        matches!(self, SyncError::Hub { code, .. } if code == "revoked" || code == "forked")
    }
}

/// What a sync round did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncReport {
    pub pushed: u64,
    pub pulled: u64,
    pub conflicts: u64,
    pub quarantined: u64,
    pub skew_ms: i64,
    /// Lane errors that did not stop the other lanes.
    pub lane_errors: Vec<String>,
    /// The pull cursor was older than the hub's horizon: bootstrapped again.
    pub rebootstrapped: bool,
    /// A large pull waits for an unmetered link (or `--force`).
    pub deferred_pull: bool,
    /// With `full`: the hub's digest of this till's store and whether ours matches.
    pub hub_digest: Option<String>,
    pub digest_matches: Option<bool>,
}

/// Changes sent per push request.
pub const PUSH_BATCH_LEN: usize = 200;
/// Entries asked per pull page.
pub const PULL_PAGE_LEN: usize = 500;
/// The pause between two pulled pages applied back to back, in
/// milliseconds: longer than a waiting writer's retry interval
/// (`tillsync_store::BUSY_POLL_MS`), so a sale gets in between them.
const PULL_PAGE_GAP_MS: u64 = 5;
/// Pages a round may pull before yielding (the driver calls again).
const PULL_PAGES_MAX: usize = 10_000;

/// The file that held the device token before it moved into the
/// encrypted database; read once and removed by [`load_token`].
pub fn token_path(dir: &Path) -> PathBuf {
    dir.join("device.token")
}

/// The `meta` key of the device token in the till's database.
pub const TOKEN_META: &str = tillsync_backup::DEVICE_TOKEN_META;

/// Saves the device token in the till's database (encrypted with the
/// database's key; never copied into a backup).
pub fn save_token(dir: &Path, token: &str) -> Result<(), SyncError> {
    tillsync_store::write_meta(dir, TOKEN_META, Some(token))?;
    // A token file of an older version is stale now.
    remove_token_file(dir)?;
    Ok(())
}

fn remove_token_file(dir: &Path) -> Result<(), SyncError> {
    let path = token_path(dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SyncError::Config(format!("cannot remove {}: {e}", path.display()))),
    }
}

/// Reads the device token. A folder of an older version keeps it in
/// `device.token`: it is moved into the database (and the file removed)
/// on first read.
pub fn load_token(dir: &Path) -> Result<String, SyncError> {
    if let Ok(t) = std::fs::read_to_string(token_path(dir)) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            save_token(dir, &t)?;
            return Ok(t);
        }
    }
    tillsync_store::read_meta(dir, TOKEN_META)?.filter(|t| !t.is_empty()).ok_or_else(|| {
        SyncError::Config(format!(
            "{} is not enrolled with a hub: run `till node init --data DIR --hub URL --code CODE`",
            dir.display()
        ))
    })
}

/// The client for this till's hub, from what `node init` stored.
pub fn client_for(dir: &Path, store: &Store) -> Result<HubClient, SyncError> {
    let url = store.get_meta("hub_url")?.ok_or_else(|| {
        SyncError::Config(format!("{} is a standalone till: it has no hub to sync with", dir.display()))
    })?;
    let config = crate::config::Config::load(dir).ok();
    let opts = ClientOptions {
        ca_file: store.get_meta("hub_ca_file")?.map(PathBuf::from),
        insecure: store.get_meta("hub_insecure")?.as_deref() == Some("true"),
        timeout_ms: config.as_ref().map(|c| c.sync.request_timeout_ms).unwrap_or(30_000),
        snapshot_page_len: config.as_ref().map(|c| c.sync.snapshot_page_len).unwrap_or(0),
        pull_page_len: 0,
    };
    HubClient::new(&url, Some(load_token(dir)?), &opts)
}

/// Enrols a new till with a code and bootstraps it from the hub's
/// snapshot; its database is encrypted with a new key in `DIR/till.key`.
pub async fn enrol_and_bootstrap(
    dir: &Path,
    url: &str,
    code: &str,
    name: &str,
    opts: &ClientOptions,
    ids: IdGen,
) -> Result<Store, SyncError> {
    enrol_and_bootstrap_keyed(dir, url, code, name, opts, ids, &KeySpec::Folder).await
}

/// [`enrol_and_bootstrap`] with the database key made as `spec` says.
pub async fn enrol_and_bootstrap_keyed(
    dir: &Path,
    url: &str,
    code: &str,
    name: &str,
    opts: &ClientOptions,
    ids: IdGen,
    spec: &KeySpec,
) -> Result<Store, SyncError> {
    if dir.join(tillsync_store::DB_FILE).exists() {
        return Err(SyncError::Config(format!("{} already holds a till; choose another folder", dir.display())));
    }
    // A passphrase that cannot be read is found before the code is spent.
    tillsync_store::keys::check(spec)?;
    let anon = HubClient::new(url, None, opts)?;
    let e = anon.enrol(code, name).await?;
    let identity = Identity {
        tenant_id: e.tenant_id,
        store_id: e.store_id,
        device_id: e.device_id,
        receipt_prefix: e.receipt_prefix.clone(),
        name: name.to_string(),
        mode: "hub".into(),
    };
    let mut store = Store::create_keyed(dir, identity, Schema::standard(), ids, spec)?;
    save_token(dir, &e.token)?;
    store.set_meta(
        "enrolled_ms",
        &std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            .to_string(),
    )?;
    store.set_meta("hub_url", anon.base())?;
    if let Some(ca) = &opts.ca_file {
        let abs = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.clone());
        store.set_meta("hub_ca_file", &abs.display().to_string())?;
    }
    if opts.insecure {
        store.set_meta("hub_insecure", "true")?;
    }
    let client = HubClient::new(url, Some(e.token), opts)?;
    if let Err(e) = bootstrap(&mut store, &client, None).await {
        tracing::warn!(error = %e, "the till is enrolled but its bootstrap stopped: the next sync resumes it");
        return Err(e);
    }
    Ok(store)
}

/// Operations applied per transaction of a bootstrap: a page is applied in
/// parts so that a sale waiting for the database never waits for a whole
/// page (2,500 ledger rows take about 30 to 40 ms of CPU here). Fewer,
/// larger parts write fewer WAL frames (each commit rewrites the pages it
/// touched, encrypted and authenticated again), which is most of the cost.
pub const BOOT_PART_LEN: usize = 2_500;

/// Merges the hub's snapshot of this till's scope into the store page by
/// page, then moves the pull cursor to the snapshot's. Pages are fetched
/// and decoded on a thread of their own (`bootstrap-fetch`) while the
/// previous page is applied; at most one decoded page waits, so memory does
/// not grow with the store. Each part of a page is applied in its own
/// transaction with the key it reached, and a bootstrap cut off (crash,
/// network) resumes after that key on the next round (`sync_once`). The
/// outbox is kept: what it holds goes to the hub as usual.
pub async fn bootstrap(
    store: &mut Store,
    client: &HubClient,
    mark: Option<&crate::running::RoundMark>,
) -> Result<(), SyncError> {
    // The status shows progress while a round runs (`running.rs`): a
    // bootstrap outside a round (enrolment) marks itself as one.
    let own;
    let mark = match mark {
        Some(m) => m,
        None => {
            own = crate::running::RoundMark::start(store.path());
            &own
        }
    };
    let mut boot = Bootstrap::resume(store)?;
    let page_len = client.snapshot_page_len();
    let fetcher = client.fresh()?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<DecodedPage, SyncError>>(1);
    // Applied pages go back to the fetch thread to be freed there: freeing
    // thousands of JSON values is a noticeable share of the applier's time.
    let (spent_tx, spent_rx) = std::sync::mpsc::channel::<DecodedPage>();
    let mut after = boot.after().map(SnapshotKey::from);
    spawn_fetch_thread("bootstrap-fetch", tx, move |tx| async move {
        loop {
            while let Ok(spent) = spent_rx.try_recv() {
                drop(spent);
            }
            let page = fetcher.snapshot_page(after.as_ref(), page_len).await;
            let next = page.as_ref().ok().and_then(|p| p.next.clone());
            let last = !matches!(&page, Ok(p) if p.next.is_some());
            // The applier went away (it failed): stop fetching.
            if tx.send(page.and_then(decode_page)).await.is_err() || last {
                return;
            }
            after = next;
        }
    })?;
    // The caller's checkpoint setting (`node run` sets its own) comes back
    // after the bulk apply.
    let checkpoint_pages: u32 =
        store.connection().query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).map_err(StoreError::from)?;
    store.set_bulk_apply(true)?;
    let r = async {
        while let Some(page) = rx.recv().await {
            let page = page?;
            let more = boot.apply_page(store, &page, wall_ms())?;
            if let Some(p) = &boot.progress {
                mark.progress(p.done, p.total.max(p.done));
            }
            // A fetch thread that has ended gives the page back: freed here.
            let _ = spent_tx.send(page);
            if !more {
                return boot.finish(store);
            }
        }
        Err(SyncError::Network("the snapshot ended before its last page".into()))
    }
    .await;
    // Dropping the receiver stops the fetch thread after its current request.
    drop(rx);
    store.set_wal_autocheckpoint_pages(checkpoint_pages)?;
    r
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A snapshot page decoded into domain operations (on the fetch thread).
#[derive(Clone, Debug)]
pub struct DecodedPage {
    pub cursor: Option<u64>,
    pub cursor_tag: Option<String>,
    pub total: Option<u64>,
    pub ops: Vec<Op>,
    /// The key this page ends at; none for the last page.
    pub next: Option<StateKey>,
}

/// Decodes a snapshot page from the hub. A separate function so the fuzz
/// target `snapshot` (`fuzz/`) runs exactly this code.
pub fn decode_page(page: SnapshotPage) -> Result<DecodedPage, SyncError> {
    let bad = |e: String| SyncError::Network(format!("the hub's snapshot is malformed: {e}"));
    let ops: Vec<Op> =
        page.ops.into_iter().map(Op::try_from).collect::<Result<_, _>>().map_err(|e| bad(e.to_string()))?;
    let next = page.next.map(|k| k.to_state_key()).transpose().map_err(|e| bad(e.to_string()))?;
    Ok(DecodedPage { cursor: page.cursor, cursor_tag: page.cursor_tag, total: page.total, ops, next })
}

/// A bootstrap between pages: its recorded progress and the ids of what
/// the till already queued for the hub.
#[derive(Debug)]
pub struct Bootstrap {
    progress: Option<BootProgress>,
    known: std::collections::HashSet<String>,
    relayed: u64,
}

impl Bootstrap {
    /// Resumes the bootstrap recorded in the store, or starts a new one.
    pub fn resume(store: &Store) -> Result<Bootstrap, SyncError> {
        Ok(Bootstrap { progress: store.boot_progress()?, known: store.pending_op_ids()?, relayed: 0 })
    }

    /// The key the next page starts after (none: from the beginning).
    pub fn after(&self) -> Option<&StateKey> {
        self.progress.as_ref().and_then(|p| p.after.as_ref())
    }

    /// Applies one page: first queues, as relays, what the till holds in
    /// the page's key range and the page lacks (a hub restored to an
    /// earlier state lost it), then applies the page in parts of
    /// [`BOOT_PART_LEN`], each with its progress. Returns whether more
    /// pages follow.
    pub fn apply_page(&mut self, store: &mut Store, page: &DecodedPage, now_ms: u64) -> Result<bool, SyncError> {
        let mut p = match self.progress.take() {
            Some(p) => p,
            // A new bootstrap takes its cursor from the first page; a resumed
            // one keeps the cursor its first page came with.
            None => BootProgress {
                cursor: page
                    .cursor
                    .ok_or_else(|| SyncError::Network("the hub's first snapshot page has no cursor".into()))?,
                cursor_tag: page.cursor_tag.clone(),
                after: None,
                done: 0,
                total: page.total.unwrap_or(0),
            },
        };
        let relayed =
            store.relay_missing_range(now_ms, &page.ops, p.after.as_ref(), page.next.as_ref(), &mut self.known)?;
        if relayed > 0 {
            tracing::warn!(relayed, "the hub lacks changes this till holds (was it restored?): sending them back");
            self.relayed += relayed;
        }
        for part in page.ops.chunks(BOOT_PART_LEN) {
            p.done += part.len() as u64;
            p.total = p.total.max(p.done);
            p.after = part.last().map(Op::state_key);
            store.apply_boot_part(part, &p)?;
        }
        if let Some(next) = &page.next {
            // A page that ends where the next starts: the next page's range
            // begins after this key whether or not it held operations.
            p.after = Some(next.clone());
        }
        self.progress = Some(p);
        Ok(page.next.is_some())
    }

    /// Ends the bootstrap with one durable commit of its cursor.
    pub fn finish(self, store: &mut Store) -> Result<(), SyncError> {
        let p = self.progress.ok_or_else(|| SyncError::Network("the hub sent no snapshot page".into()))?;
        store.finish_bootstrap(p.cursor, p.cursor_tag.as_deref())?;
        Ok(())
    }

    /// Operations queued back to the hub so far.
    pub fn relayed(&self) -> u64 {
        self.relayed
    }
}

/// Starts a thread named `name` that runs `fetch` on a current-thread
/// runtime of its own; `fetch` sends what it fetches on `tx`. A runtime
/// that cannot start is sent on `tx` as the error.
fn spawn_fetch_thread<T, F>(
    name: &str,
    tx: tokio::sync::mpsc::Sender<Result<T, SyncError>>,
    fetch: impl FnOnce(tokio::sync::mpsc::Sender<Result<T, SyncError>>) -> F + Send + 'static,
) -> Result<(), SyncError>
where
    T: Send + 'static,
    F: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(fetch(tx)),
            Err(e) => {
                let _ = tx.blocking_send(Err(SyncError::Config(format!("cannot start the fetch thread: {e}"))));
            }
        })
        .map(|_| ())
        .map_err(|e| SyncError::Config(format!("cannot start the fetch thread: {e}")))
}

/// A pulled page made ready to apply: its operations decoded and its
/// received bytes counted per lane (on the fetch thread, when one runs).
struct ReadyPage {
    /// The cursor and tag the page was asked from.
    asked: (u64, Option<String>),
    ops: Vec<Op>,
    /// Byte and entry counts, written with the page.
    figures: Vec<MetaUpdate>,
    entries: u64,
    cursor: u64,
    cursor_tag: Option<String>,
    more: bool,
    remaining: u64,
    hub_time_ms: u64,
}

impl ReadyPage {
    fn new(schema: &Schema, asked: (u64, Option<String>), page: PullResponse) -> Result<ReadyPage, SyncError> {
        let ops = page_ops(&page)?;
        // Received bytes are counted per lane as sent bytes are; an entry's
        // lane follows from its operations, as it did on the sending till.
        let mut received: std::collections::BTreeMap<Lane, u64> = std::collections::BTreeMap::new();
        let mut at = 0;
        for e in &page.entries {
            let n = e.ops.len();
            let lane = tillsync_core::change::lane_for(schema, &ops[at..at + n]).unwrap_or(Lane::Telemetry);
            at += n;
            *received.entry(lane).or_default() += serde_json::to_string(&e.ops).map(|j| j.len() as u64).unwrap_or(0);
        }
        let mut figures: Vec<MetaUpdate> =
            received.iter().map(|(lane, b)| MetaUpdate::Add(format!("bytes_received_{lane}"), *b)).collect();
        let total: u64 = received.values().sum();
        if total > 0 {
            figures.push(MetaUpdate::Add("bytes_received".into(), total));
        }
        if !page.entries.is_empty() {
            figures.push(MetaUpdate::Add("pulled_total".into(), page.entries.len() as u64));
        }
        Ok(ReadyPage {
            asked,
            ops,
            figures,
            entries: page.entries.len() as u64,
            cursor: page.cursor,
            cursor_tag: page.cursor_tag,
            more: page.more,
            remaining: page.remaining,
            hub_time_ms: page.hub_time_ms,
        })
    }
}

/// Pull pages after the first, fetched and decoded on a thread of their
/// own (`pull-fetch`) while the till applies the one before: the hub's
/// work and the decoding then overlap the apply, which runs on one core
/// (BENCHMARKS.md, "Sync (issue 3)"). Each page is asked from where the
/// previous one ended, which is where its apply leaves the cursor. At most
/// one ready page waits, so memory does not grow with the pull. Dropped,
/// it stops the thread after its current request.
struct PullAhead {
    rx: tokio::sync::mpsc::Receiver<Result<ReadyPage, SyncError>>,
    /// Applied pages' operations go back to be freed there: freeing
    /// thousands of JSON values is a noticeable share of an apply.
    spent: std::sync::mpsc::Sender<Vec<Op>>,
}

impl PullAhead {
    fn start(client: &HubClient, schema: &Schema, cursor: u64, tag: Option<String>) -> Result<PullAhead, SyncError> {
        let fetcher = client.fresh()?;
        let schema = schema.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ReadyPage, SyncError>>(1);
        let (spent, spent_rx) = std::sync::mpsc::channel::<Vec<Op>>();
        spawn_fetch_thread("pull-fetch", tx, move |tx| async move {
            // Tags as the store keeps them: an empty one is none.
            let mut at = (cursor, tag.filter(|t| !t.is_empty()));
            loop {
                while let Ok(ops) = spent_rx.try_recv() {
                    drop(ops);
                }
                let page = fetcher.pull(at.0, at.1.as_deref(), fetcher.pull_page_len()).await;
                let ready = page.and_then(|p| ReadyPage::new(&schema, at.clone(), p));
                let next = ready
                    .as_ref()
                    .ok()
                    .filter(|p| p.more)
                    .map(|p| (p.cursor, p.cursor_tag.clone().filter(|t| !t.is_empty())));
                // The applier went away (it failed or stopped): stop.
                if tx.send(ready).await.is_err() {
                    return;
                }
                match next {
                    Some(n) => at = n,
                    None => return,
                }
            }
        })?;
        Ok(PullAhead { rx, spent })
    }

    /// The next page, in order.
    async fn next(&mut self) -> Result<ReadyPage, SyncError> {
        self.rx.recv().await.unwrap_or_else(|| Err(SyncError::Network("the pull's fetch thread stopped".into())))
    }

    /// Hands an applied page's operations back to be freed on the thread.
    fn free(&self, ops: Vec<Op>) {
        // A thread that has ended leaves them to be freed here.
        let _ = self.spent.send(ops);
    }
}

/// The domain operations of a pulled page, in order. A separate function so
/// the fuzz targets `pull_page` and `apply_batch` (`fuzz/`) run exactly this
/// code.
pub fn page_ops(page: &PullResponse) -> Result<Vec<Op>, SyncError> {
    let mut ops: Vec<Op> = Vec::new();
    for e in &page.entries {
        for w in &e.ops {
            ops.push(Op::try_from(w).map_err(|e| SyncError::Network(format!("malformed change from the hub: {e}")))?);
        }
    }
    Ok(ops)
}

/// One sync round: push every lane (sales first), then pull every page.
pub async fn sync_once(
    store: &mut Store,
    client: &HubClient,
    now_ms: impl Fn() -> u64,
) -> Result<SyncReport, SyncError> {
    sync_with(store, client, now_ms, &SyncOptions::default()).await
}

/// What a round may do.
#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// On a metered link: only these lanes are pushed, and large pulls wait
    /// (unless `force`).
    pub metered_lanes: Option<Vec<Lane>>,
    /// Pull even on a metered link.
    pub force: bool,
    /// Bootstrap again from the snapshot and compare digests with the hub.
    pub full: bool,
    /// Send no push when nothing is pending. A round otherwise starts with
    /// a push even when empty, whose answer tells a till what a restored hub
    /// lost; a round started by a live event skips it (the hub is there and
    /// has news: the pull is what is waited for), and the timer's rounds
    /// still ask.
    pub skip_empty_push: bool,
}

/// Pulls skipped on a metered link above this many waiting entries.
pub const METERED_PULL_LEN_MAX: u64 = 2_000;

/// One sync round with options; records the round's outcome in the till's
/// database (state, failures, totals) for `till status`.
///
/// Durable commits on the way are only those the protocol needs: each push
/// answer that moves an acknowledgement (with the bytes and totals it
/// counts), each pulled page (with its cursor and figures). That a round
/// runs, and how far it is, lives in a side file ([`crate::running`]); the
/// closing figures go in one unsynced transaction at the end
/// ([`Store::record_figures`]).
pub async fn sync_with(
    store: &mut Store,
    client: &HubClient,
    now_ms: impl Fn() -> u64,
    opts: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let mut report = SyncReport::default();
    // The running round names its process, so a round killed half-way is
    // not shown as still syncing; dropped (file removed) when the round ends.
    let mark = crate::running::RoundMark::start(store.path());
    let mut tally = RoundTally::default();
    let result = round(store, client, &now_ms, &mut report, &mut tally, &mark, opts).await;
    let mut figures = std::mem::take(&mut tally.left);
    if let Some(skew) = tally.skew_ms {
        figures.push(MetaUpdate::Set("skew_ms".into(), skew.to_string()));
    }
    match &result {
        Ok(()) => {
            figures.push(MetaUpdate::Set("last_sync_ms".into(), now_ms().to_string()));
            // A held-back lane stays visible until a round clears it.
            figures.push(MetaUpdate::Set("last_error".into(), report.lane_errors.join("; ")));
            figures.push(MetaUpdate::Set("hub_status".into(), "ok".into()));
            figures.push(MetaUpdate::Set("net_reachable".into(), "true".into()));
            figures.push(MetaUpdate::Set("failures".into(), "0".into()));
        }
        Err(e) => {
            figures.push(MetaUpdate::Set("last_error".into(), e.to_string()));
            figures.push(MetaUpdate::Add("failures".into(), 1));
            match e {
                SyncError::Network(_) | SyncError::Tls(_) => {
                    figures.push(MetaUpdate::Set("net_reachable".into(), "false".into()))
                }
                _ if e.is_revoked() => figures.push(MetaUpdate::Set("hub_status".into(), "revoked".into())),
                _ => {}
            }
        }
    }
    store.record_figures(&figures)?;
    // The round stops showing as running only once its outcome is readable.
    drop(mark);
    result.map(|()| report)
}

/// A round's figures not yet written: the skew last measured, and figures
/// whose own transaction did not happen (they go with the closing ones).
#[derive(Default)]
struct RoundTally {
    skew_ms: Option<i64>,
    left: Vec<MetaUpdate>,
}

async fn round(
    store: &mut Store,
    client: &HubClient,
    now_ms: &impl Fn() -> u64,
    report: &mut SyncReport,
    tally: &mut RoundTally,
    mark: &crate::running::RoundMark,
    opts: &SyncOptions,
) -> Result<(), SyncError> {
    if opts.full {
        bootstrap(store, client, Some(mark)).await?;
    }
    let total: i64 = store.pending()?.values().sum();
    let mut done = 0u64;
    // Push until nothing is pending or a round makes no progress.
    let mut blocked: Vec<Lane> = vec![];
    // The first push of a round is sent even when nothing is pending: the
    // answer tells every lane's acknowledged sequence, so a hub restored to
    // an older state gets back what it lost from a till with nothing new.
    let mut first = !opts.skip_empty_push;
    for _ in 0..10_000 {
        let mut changes: Vec<WireChange> = vec![];
        for lane in Lane::ALL {
            if blocked.contains(&lane) || opts.metered_lanes.as_ref().is_some_and(|m| !m.contains(&lane)) {
                continue;
            }
            let room = PUSH_BATCH_LEN - changes.len();
            if room == 0 {
                break;
            }
            for p in store.pending_changes(lane, room)? {
                changes.push(WireChange::from_change(&p.change, p.digest));
            }
        }
        if changes.is_empty() && !first {
            break;
        }
        first = false;
        let sent = changes.len() as u64;
        // The highest sequence sent per lane: an answer never acknowledges
        // more than was sent (a cloned folder may have stored other changes
        // under this till's later sequences).
        let mut sent_through: std::collections::BTreeMap<Lane, u64> = std::collections::BTreeMap::new();
        for c in &changes {
            let e = sent_through.entry(c.lane).or_default();
            *e = (*e).max(c.seq);
        }
        let mut bytes: std::collections::BTreeMap<Lane, u64> = std::collections::BTreeMap::new();
        for c in &changes {
            *bytes.entry(c.lane).or_default() += serde_json::to_string(&c.ops).map(|j| j.len() as u64).unwrap_or(0);
        }
        let resp = client.push(&PushRequest { device_time_ms: now_ms(), changes, ..Default::default() }).await?;
        // The bytes and totals this push counts are written with its
        // acknowledgements, in one transaction.
        let mut figures: Vec<MetaUpdate> =
            bytes.iter().map(|(lane, b)| MetaUpdate::Add(format!("bytes_sent_{lane}"), *b)).collect();
        if sent > 0 {
            figures.push(MetaUpdate::Add("pushed_total".into(), sent));
        }
        done += sent;
        if sent > 0 {
            mark.progress(done, (total as u64).max(done));
        }
        let mut progress = false;
        let mut acks: Vec<(Lane, u64)> = Vec::new();
        let mut notes: Vec<(Lane, u64, String)> = Vec::new();
        for (lane, ack) in &resp.lanes {
            let before = store.acked(*lane)?;
            let target = match sent_through.get(lane) {
                Some(max) => ack.acked_through.min(*max),
                // A lane not sent this time may only move back (a restored hub).
                None => ack.acked_through.min(before),
            };
            acks.push((*lane, target));
            if target != before {
                progress = true;
            }
            for q in &ack.quarantined {
                notes.push((*lane, q.seq, q.reason.clone()));
                report.quarantined += 1;
            }
            if let Some(e) = &ack.error {
                if e.code == "gap" {
                    // The hub expects less than we sent: it was restored; the
                    // acknowledged sequence above already moved back.
                    progress = true;
                    continue;
                }
                report.lane_errors.push(format!("{lane}: {}", e.message));
                figures.push(MetaUpdate::Set("last_lane_error".into(), format!("{lane}: {} ({})", e.message, e.code)));
                // A newly held-back lane frees the batch for the lanes after it.
                if !blocked.contains(lane) {
                    blocked.push(*lane);
                    progress = true;
                }
            }
        }
        // An empty push whose answer moves nothing writes nothing.
        store.record_push_answer(&acks, &notes, now_ms(), Hlc(resp.hub_hlc), &figures)?;
        // The hub acknowledging a sequence this till never wrote means a
        // copy of its folder wrote it. Say so: the hub stops the device and
        // both copies carry their changes to a new enrolment. (The answer's
        // acknowledgements were taken first: after a hub restore they move
        // back, and they decide what the till carries over.)
        let written = store.written_through()?;
        if resp.lanes.iter().any(|(lane, a)| a.acked_through > written.get(lane).copied().unwrap_or(0)) {
            client.push(&PushRequest { device_time_ms: now_ms(), copied: true, ..Default::default() }).await?;
            return Err(SyncError::Hub {
                status: 401,
                code: "forked".into(),
                message: "the hub holds changes of this till that it never made: its folder was copied".into(),
            });
        }
        tally.skew_ms = Some(resp.skew_ms);
        report.skew_ms = resp.skew_ms;
        report.pushed += sent;
        if !progress {
            break;
        }
    }
    // A bootstrap cut off earlier (a crash, the network) resumes after the
    // last key it applied, before any pull: until it ends, the pull cursor
    // is not the snapshot's.
    if store.boot_progress()?.is_some() {
        bootstrap(store, client, Some(mark)).await?;
    }
    // Pull every page; each page is applied with its cursor in one
    // transaction. The first page is fetched here; when more follow (and
    // the link is not metered), the next pages are fetched and decoded on a
    // thread of their own while this one applies (`PullAhead`).
    let may_fetch_ahead = opts.metered_lanes.is_none() || opts.force;
    let mut ahead: Option<PullAhead> = None;
    for _ in 0..PULL_PAGES_MAX {
        let cursor = store.pull_cursor()?;
        let tag = store.pull_cursor_tag()?;
        let fetched = match ahead.as_mut() {
            Some(a) => a.next().await,
            None => client
                .pull(cursor, tag.as_deref(), client.pull_page_len())
                .await
                .and_then(|p| ReadyPage::new(store.schema(), (cursor, tag.clone()), p)),
        };
        let page = match fetched {
            Ok(p) => p,
            Err(SyncError::Hub { code, .. }) if code == "cursor_expired" => {
                // The outbox was pushed above; the snapshot merges into this
                // till and leaves its outbox alone. Pages fetched ahead came
                // from the old cursor: they are dropped with the thread.
                ahead = None;
                bootstrap(store, client, Some(mark)).await?;
                report.rebootstrapped = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        if page.asked.0 != cursor || page.asked.1 != tag {
            // The fetch thread asks from where the previous page ended,
            // which is where its apply left the cursor: never otherwise.
            return Err(SyncError::Network("a page fetched ahead does not start at the pull cursor".into()));
        }
        if ahead.is_none() && page.more && may_fetch_ahead {
            ahead = Some(PullAhead::start(client, store.schema(), page.cursor, page.cursor_tag.clone())?);
        }
        report.pulled += page.entries;
        if opts.metered_lanes.is_some() && !opts.force && page.remaining > METERED_PULL_LEN_MAX {
            report.deferred_pull = true;
        }
        // Every answer carries the hub's clock: skew is measured even when
        // nothing was pushed.
        report.skew_ms = now_ms() as i64 - page.hub_time_ms as i64;
        tally.skew_ms = Some(report.skew_ms);
        if page.cursor != cursor || !page.ops.is_empty() || page.cursor_tag != tag {
            // The page's figures count what this transaction applies.
            store.apply_pulled_with(&page.ops, page.cursor, page.cursor_tag.as_deref(), &page.figures)?;
        } else {
            tally.left.extend(page.figures);
        }
        if let Some(a) = &ahead {
            a.free(page.ops);
            // Pages fetched ahead are applied back to back: the gap lets a
            // sale waiting on the database in (it tries every
            // `BUSY_POLL_MS`), as the wait for the next page used to.
            tokio::time::sleep(std::time::Duration::from_millis(PULL_PAGE_GAP_MS)).await;
        }
        if !page.more || report.deferred_pull {
            break;
        }
        // Part way through a pull of several pages: say how far.
        mark.progress(report.pulled, report.pulled + page.remaining);
    }
    if opts.full {
        let d = client.digest().await?;
        report.digest_matches = Some(store.digests()?.0 == d);
        report.hub_digest = Some(d);
    }
    report.conflicts =
        store.conflicts()?.iter().filter(|c| c.status != tillsync_core::ConflictStatus::Resolved).count() as u64;
    Ok(())
}
