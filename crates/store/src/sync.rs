//! The till's side of sync bookkeeping: what is pending per lane, what the
//! hub acknowledged, the pull cursor, quarantine notes and sync figures.
//! The protocol itself runs in the node client; this only stores its state.

use crate::{Store, StoreError};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use tillsync_core::change::StateKey;
use tillsync_core::{Change, Lane, Op};

/// A queued change with the digest it was stored with.
#[derive(Clone, Debug)]
pub struct Pending {
    pub change: Change,
    pub digest: String,
}

/// A bootstrap in progress, recorded with every part applied (`meta`
/// `boot_progress`), so an interrupted one resumes where it stopped.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct BootProgress {
    /// The pull cursor the first page came with.
    pub cursor: u64,
    pub cursor_tag: Option<String>,
    /// The key of the last operation applied; the next page starts after it.
    pub after: Option<StateKey>,
    /// Operations applied, and about how many the snapshot holds.
    pub done: u64,
    pub total: u64,
}

/// A change the hub acknowledged into quarantine.
#[derive(Clone, Debug, Serialize)]
pub struct QuarantineNote {
    pub lane: String,
    pub seq: u64,
    pub reason: String,
    pub at_ms: u64,
}

impl Store {
    /// Changes of a lane not yet acknowledged, oldest first.
    pub fn pending_changes(&self, lane: Lane, limit_len: usize) -> Result<Vec<Pending>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT o.change, o.digest FROM outbox o JOIN lanes l ON l.lane = o.lane
             WHERE o.lane = ?1 AND o.seq > l.acked_seq ORDER BY o.seq LIMIT ?2",
        )?;
        let rows = st.query_map(params![lane.as_str(), limit_len as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (c, digest) = r?;
            out.push(Pending { change: serde_json::from_str(&c)?, digest });
        }
        Ok(out)
    }

    /// The highest sequence of a lane the hub has acknowledged.
    pub fn acked(&self, lane: Lane) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT acked_seq FROM lanes WHERE lane = ?1", [lane.as_str()], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// The highest sequence written per lane (0 for a lane never written).
    pub fn written_through(&self) -> Result<std::collections::BTreeMap<Lane, u64>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT lane, next_seq - 1 FROM lanes")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = std::collections::BTreeMap::new();
        for r in rows {
            let (lane, n) = r?;
            if let Some(lane) = Lane::parse(&lane) {
                out.insert(lane, n.max(0) as u64);
            }
        }
        Ok(out)
    }

    /// Records the hub's acknowledgement of a lane. A lower value than before
    /// means the hub was restored: the changes above it are sent again.
    pub fn set_acked(&self, lane: Lane, acked_through: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE lanes SET acked_seq = min(?2, next_seq - 1) WHERE lane = ?1",
            params![lane.as_str(), acked_through as i64],
        )?;
        Ok(())
    }

    /// The pull cursor (0 before the first pull).
    pub fn pull_cursor(&self) -> Result<u64, StoreError> {
        Ok(self.meta_get("pull_cursor")?.and_then(|c| c.parse().ok()).unwrap_or(0))
    }

    /// The hub's log chain at the pull cursor, sent back with the next pull
    /// so that a hub restored to an earlier state is noticed.
    pub fn pull_cursor_tag(&self) -> Result<Option<String>, StoreError> {
        Ok(self.meta_get("pull_cursor_tag")?.filter(|t| !t.is_empty()))
    }

    /// Applies one pulled page and moves the cursor, in one transaction, so a
    /// crash never skips or re-applies half a page. The cursor's tag is
    /// cleared (a page from a hub without log chains).
    pub fn apply_pulled(&mut self, ops: &[Op], cursor: u64) -> Result<usize, StoreError> {
        self.apply_pulled_tagged(ops, cursor, None)
    }

    /// As `apply_pulled`, keeping the hub's tag of the new cursor with it.
    pub fn apply_pulled_tagged(&mut self, ops: &[Op], cursor: u64, tag: Option<&str>) -> Result<usize, StoreError> {
        self.apply_pulled_with(ops, cursor, tag, &[])
    }

    /// As `apply_pulled_tagged`, with sync figures (bytes received, pulled
    /// totals) written in the same transaction: the figures then count
    /// exactly what was applied, and the page costs one durable commit.
    pub fn apply_pulled_with(
        &mut self,
        ops: &[Op],
        cursor: u64,
        tag: Option<&str>,
        figures: &[MetaUpdate],
    ) -> Result<usize, StoreError> {
        self.transaction(|s| {
            let n = s.apply_in_transaction(ops)?;
            s.meta_set("pull_cursor", &cursor.to_string())?;
            s.meta_set("pull_cursor_tag", tag.unwrap_or(""))?;
            s.update_meta(figures)?;
            Ok::<_, StoreError>(n)
        })
    }

    /// Records a push answer in one durable transaction: every lane's
    /// acknowledged sequence (`acks`, see [`Store::set_acked`]), the
    /// quarantine notes (lane, sequence, reason) and the sync figures that
    /// ride with it. The hub's clock reading is observed in memory; it is
    /// saved by this transaction or by the next one (a reading lost in a
    /// crash was never used by a saved write). Nothing is written when no
    /// acknowledgement moves and there is nothing else to record, so an empty
    /// push (the first of every round) costs no commit. Returns whether an
    /// acknowledgement moved.
    pub fn record_push_answer(
        &mut self,
        acks: &[(Lane, u64)],
        notes: &[(Lane, u64, String)],
        at_ms: u64,
        hub_hlc: tillsync_core::Hlc,
        figures: &[MetaUpdate],
    ) -> Result<bool, StoreError> {
        self.clock.observe(hub_hlc);
        let mut moved = false;
        for (lane, target) in acks {
            // What `set_acked` would store: never above what was written.
            let stored: i64 = self.conn.query_row(
                "SELECT min(?2, next_seq - 1) FROM lanes WHERE lane = ?1",
                params![lane.as_str(), *target as i64],
                |r| r.get(0),
            )?;
            if stored.max(0) as u64 != self.acked(*lane)? {
                moved = true;
            }
        }
        if !moved && notes.is_empty() && figures.is_empty() {
            return Ok(false);
        }
        self.transaction(|s| {
            for (lane, target) in acks {
                s.set_acked(*lane, *target)?;
            }
            for (lane, seq, reason) in notes {
                s.note_quarantine(*lane, *seq, reason, at_ms)?;
            }
            s.update_meta(figures)?;
            Ok::<_, StoreError>(())
        })?;
        Ok(moved)
    }

    /// Writes a round's closing figures (last sync time, last error, hub and
    /// network state, failures, skew) in one transaction that is **not**
    /// synced to disk by itself (`synchronous=NORMAL` for this commit only).
    /// In WAL mode the next synced commit carries it to disk with its own;
    /// a power cut before that loses only these figures, never a sale, an
    /// outbox entry, an acknowledgement or a cursor (each of those is
    /// committed with `synchronous=FULL`), and the next round writes them
    /// again. A process crash loses nothing: the commit is in the WAL.
    pub fn record_figures(&mut self, figures: &[MetaUpdate]) -> Result<(), StoreError> {
        if figures.is_empty() {
            return Ok(());
        }
        self.conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        let r = self.transaction(|s| s.update_meta(figures));
        // Back to FULL whatever happened: every other commit stays durable.
        let restored = self.conn.execute_batch("PRAGMA synchronous=FULL");
        r?;
        restored?;
        Ok(())
    }

    /// Applies figure updates on this connection (inside the caller's
    /// transaction, or one autocommit each).
    pub fn update_meta(&self, figures: &[MetaUpdate]) -> Result<(), StoreError> {
        for f in figures {
            match f {
                MetaUpdate::Set(k, v) => self.meta_set(k, v)?,
                MetaUpdate::Add(k, n) => {
                    if *n > 0 {
                        self.add_meta_u64(k, *n)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The bootstrap in progress, if one was started and not finished.
    pub fn boot_progress(&self) -> Result<Option<BootProgress>, StoreError> {
        match self.meta_get("boot_progress")?.filter(|p| !p.is_empty()) {
            Some(p) => Ok(Some(serde_json::from_str(&p)?)),
            None => Ok(None),
        }
    }

    /// Applies one part of a snapshot page and records the bootstrap's
    /// progress with it, in one transaction. The transaction is committed
    /// with `synchronous=NORMAL` (no fsync): a part lost in a crash is
    /// fetched again on resume, since its progress is lost with it, and
    /// [`Store::finish_bootstrap`]'s synced commit makes every part before
    /// it durable (the WAL is synced up to it).
    pub fn apply_boot_part(&mut self, ops: &[Op], progress: &BootProgress) -> Result<usize, StoreError> {
        let json = serde_json::to_string(progress)?;
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let r = self.transaction(|s| {
            let n = s.apply_in_transaction(ops)?;
            s.meta_set("boot_progress", &json)?;
            // What the last bootstrap reached (the live figure for status is
            // in the node's side file, `running.rs`).
            s.meta_set("progress", &format!("{}/{}", progress.done, progress.total.max(progress.done)))?;
            Ok::<_, StoreError>(n)
        });
        // Back to FULL whatever happened: every other commit is a sale's.
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        r
    }

    /// Sets this connection up for a bootstrap's bulk apply, or back to the
    /// default: the WAL is checkpointed every 64 MiB instead of every 4 MiB.
    /// Each checkpoint syncs the WAL and the database file (even with
    /// `synchronous=NORMAL`), and a bootstrap writes about a gigabyte per
    /// million rows: hundreds of checkpoints otherwise, each waiting on the
    /// disk. The setting is per connection and never stored, so a crash
    /// leaves the default.
    pub fn set_bulk_apply(&mut self, on: bool) -> Result<(), StoreError> {
        let checkpoint_pages = if on { 16_384 } else { 1_000 };
        self.conn.pragma_update(None, "wal_autocheckpoint", checkpoint_pages)?;
        Ok(())
    }

    /// Ends a bootstrap: one durable (`synchronous=FULL`) commit that moves
    /// the pull cursor to the snapshot's and records the bootstrap as
    /// complete.
    pub fn finish_bootstrap(&mut self, cursor: u64, tag: Option<&str>) -> Result<(), StoreError> {
        self.transaction(|s| {
            s.meta_set("pull_cursor", &cursor.to_string())?;
            s.meta_set("pull_cursor_tag", tag.unwrap_or(""))?;
            s.meta_set("boot_progress", "")?;
            s.meta_set("bootstrap", "complete")?;
            Ok::<_, StoreError>(())
        })
    }

    /// The ids of every operation waiting in the outbox (all lanes).
    pub fn pending_op_ids(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut out = std::collections::HashSet::new();
        for lane in Lane::ALL {
            for p in self.pending_changes(lane, usize::MAX >> 1)? {
                out.extend(p.change.ops.iter().map(Op::id_text));
            }
        }
        Ok(out)
    }

    /// [`Store::relay_missing`] for one page of a paged snapshot: queues,
    /// as relays, what this till holds in the key range the page covered
    /// (after `after`, up to `through`, or to the end for none) that the
    /// page lacks and `known` (pending or already relayed) does not name.
    /// The ranges of a snapshot's pages cover the whole order once, so the
    /// pages together check what `relay_missing` checks at once.
    pub fn relay_missing_range(
        &mut self,
        now_ms: u64,
        page: &[Op],
        after: Option<&StateKey>,
        through: Option<&StateKey>,
        known: &mut std::collections::HashSet<String>,
    ) -> Result<u64, StoreError> {
        let held = self.state_ops(Some(self.identity.store_id), after, through, usize::MAX)?;
        if held.is_empty() {
            return Ok(0);
        }
        let in_page: std::collections::HashSet<String> = page.iter().map(Op::id_text).collect();
        let missing: Vec<Op> =
            held.into_iter().filter(|op| !in_page.contains(&op.id_text()) && !known.contains(&op.id_text())).collect();
        self.queue_relays(now_ms, &missing)?;
        known.extend(missing.iter().map(Op::id_text));
        Ok(missing.len() as u64)
    }

    /// Records a quarantine note from the hub.
    pub fn note_quarantine(&self, lane: Lane, seq: u64, reason: &str, at_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO quarantine(lane, seq, reason, at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![lane.as_str(), seq as i64, reason, at_ms as i64],
        )?;
        Ok(())
    }

    /// Quarantine notes, newest first.
    pub fn quarantine(&self) -> Result<Vec<QuarantineNote>, StoreError> {
        let mut st = self.conn.prepare("SELECT lane, seq, reason, at_ms FROM quarantine ORDER BY at_ms DESC")?;
        let rows = st.query_map([], |r| {
            Ok(QuarantineNote {
                lane: r.get(0)?,
                seq: r.get::<_, i64>(1)? as u64,
                reason: r.get(2)?,
                at_ms: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Merges a clock reading received from the hub.
    pub fn observe_clock(&mut self, hlc: tillsync_core::Hlc) -> Result<(), StoreError> {
        self.clock.observe(hlc);
        self.meta_set("hlc", &self.clock.last().0.to_string())
    }

    /// A node setting or figure kept in the database (hub URL, last sync...).
    pub fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.meta_get(key)
    }

    /// Adds to a counter kept in the database (sync totals, bytes per lane).
    pub fn add_meta_u64(&self, key: &str, n: u64) -> Result<(), StoreError> {
        let v: u64 = self.meta_get(key)?.and_then(|v| v.parse().ok()).unwrap_or(0);
        self.meta_set(key, &(v + n).to_string())
    }

    /// Sets a node setting or figure.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.meta_set(key, value)
    }
}

/// A change to one `meta` figure, written inside another transaction
/// ([`Store::apply_pulled_with`], [`Store::record_push_answer`],
/// [`Store::record_figures`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaUpdate {
    /// Sets the value.
    Set(String, String),
    /// Adds to a counter (absent counts as 0).
    Add(String, u64),
}

/// Unsynced changes written to a file by `till export-pending`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PendingFile {
    pub format: String,
    pub tenant_id: uuid::Uuid,
    pub device_id: uuid::Uuid,
    pub changes: Vec<Change>,
}

impl PendingFile {
    /// Reads a file of pending changes (`till node import-pending`); it may
    /// come from another machine, so anything in it ends in an error,
    /// never a panic (fuzzed by `fuzz/`'s `pending_file`).
    pub fn parse(bytes: &[u8]) -> Result<PendingFile, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Invalid(format!("not a file of pending changes: {e}")))
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub changes: u64,
    pub ledger_rows: u64,
    pub ledger_rows_present: u64,
    pub record_writes: u64,
}

/// Most operations in one change queued by `relay_missing`.
pub const RELAY_CHANGE_LEN_MAX: usize = 100;

/// The format tag of pending files.
pub const PENDING_FORMAT: &str = "tillsync-pending-v1";

impl Store {
    /// Before merging a hub's snapshot: queues, as relays, every record write
    /// and every ledger row of this till's store that the till holds but the
    /// snapshot lacks and no pending change carries. A hub restored to an
    /// earlier state has lost them; this till may be the only one left that
    /// has them (its origin may be gone), so it sends them back. Ids are
    /// kept, so a hub and tills that have them already store nothing twice.
    /// Returns how many operations were queued.
    pub fn relay_missing(&mut self, now_ms: u64, snapshot: &[Op]) -> Result<u64, StoreError> {
        let id_of = |op: &Op| match op {
            Op::Insert(r) => r.id.to_string(),
            Op::Write(w) => w.id.to_string(),
        };
        let mut known: std::collections::HashSet<String> = snapshot.iter().map(id_of).collect();
        for lane in Lane::ALL {
            for p in self.pending_changes(lane, usize::MAX >> 1)? {
                known.extend(p.change.ops.iter().map(id_of));
            }
        }
        let missing: Vec<Op> = self
            .snapshot_ops(Some(self.identity.store_id))?
            .into_iter()
            .filter(|op| !known.contains(&id_of(op)))
            .collect();
        self.queue_relays(now_ms, &missing)?;
        Ok(missing.len() as u64)
    }

    /// Queues `ops` as relays, in several changes of bounded size so that
    /// each fits a push.
    fn queue_relays(&mut self, now_ms: u64, ops: &[Op]) -> Result<(), StoreError> {
        for chunk in ops.chunks(RELAY_CHANGE_LEN_MAX) {
            self.write(now_ms, |l| {
                for op in chunk {
                    l.relay(op.clone())?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Every change not yet acknowledged by the hub, all lanes.
    pub fn export_pending(&self) -> Result<PendingFile, StoreError> {
        self.export_changes(false)
    }

    /// Every change this till made (`all`), or only those not yet
    /// acknowledged. A till stopped as forked exports all: an
    /// acknowledgement it got may have been for its copy's change under the
    /// same sequence, so "acknowledged" proves nothing about its own.
    pub fn export_changes(&self, all: bool) -> Result<PendingFile, StoreError> {
        let mut changes = Vec::new();
        for lane in Lane::ALL {
            if all {
                changes.extend(self.outbox(lane, 0, usize::MAX >> 1)?);
            } else {
                changes.extend(self.pending_changes(lane, usize::MAX >> 1)?.into_iter().map(|p| p.change));
            }
        }
        Ok(PendingFile {
            format: PENDING_FORMAT.into(),
            tenant_id: self.identity.tenant_id,
            device_id: self.identity.device_id,
            changes,
        })
    }

    /// Brings exported changes into this till, unchanged: each becomes a
    /// change of this till relaying the other device's rows and writes with
    /// their own ids and origin, so the hub and every till store exactly the
    /// same thing whoever pushes it, and importing twice adds nothing.
    pub fn import_pending(&mut self, now_ms: u64, file: &PendingFile) -> Result<ImportReport, StoreError> {
        if file.format != PENDING_FORMAT {
            return Err(StoreError::Invalid(format!("not a file of pending changes (format '{}')", file.format)));
        }
        if file.tenant_id != self.identity.tenant_id {
            return Err(StoreError::Invalid(
                "these changes belong to another tenant: import them into a till enrolled with the same merchant"
                    .into(),
            ));
        }
        let other_store = file
            .changes
            .iter()
            .flat_map(|c| &c.ops)
            .any(|op| matches!(op, Op::Insert(r) if r.store != self.identity.store_id));
        if other_store {
            return Err(StoreError::Invalid(
                "these changes belong to another store: import them into a till of the same store".into(),
            ));
        }
        let mut report = ImportReport::default();
        for change in &file.changes {
            for op in &change.ops {
                op.check(&self.schema)?;
            }
            let mut fresh = Vec::new();
            for op in &change.ops {
                let (sql, id) = match op {
                    Op::Insert(r) => ("SELECT 1 FROM ledger WHERE id = ?1", r.id.to_string()),
                    Op::Write(w) => ("SELECT 1 FROM writes WHERE id = ?1", w.id.to_string()),
                };
                let here = self.conn.query_row(sql, [id], |_| Ok(())).optional()?.is_some();
                match (op, here) {
                    (Op::Insert(_), true) => report.ledger_rows_present += 1,
                    (Op::Insert(_), false) => {
                        report.ledger_rows += 1;
                        fresh.push(op.clone());
                    }
                    (Op::Write(_), true) => {}
                    (Op::Write(_), false) => {
                        report.record_writes += 1;
                        fresh.push(op.clone());
                    }
                }
            }
            if !fresh.is_empty() {
                self.write(now_ms, |l| {
                    for op in fresh {
                        l.relay(op)?;
                    }
                    Ok(())
                })?;
            }
            report.changes += 1;
        }
        Ok(report)
    }
}
