//! The state digest: a hash over the synced state (record heads and ledger
//! rows) fed in a canonical order, so two replicas holding the same data
//! have the same digest whatever order it arrived in.

use crate::change::{LedgerRow, hex};
use crate::merge::Write;
use sha2::{Digest, Sha256};

/// Feeds items in canonical order: heads sorted by (table, row, field, id),
/// then ledger rows sorted by (table, id). The store's queries do the sort.
#[derive(Clone, Debug)]
pub struct StateDigest {
    hasher: Sha256,
    items: u64,
}

impl Default for StateDigest {
    fn default() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"tillsync-state-v1\0");
        Self { hasher, items: 0 }
    }
}

impl StateDigest {
    /// Adds a record head with every column of the write.
    pub fn add_head(&mut self, w: &Write) {
        self.items += 1;
        self.hasher.update(b"W\0");
        self.hasher.update(serde_json::to_vec(w).expect("writes serialize"));
    }

    /// Adds a ledger row with every column.
    pub fn add_ledger(&mut self, r: &LedgerRow) {
        self.items += 1;
        self.hasher.update(b"L\0");
        self.hasher.update(serde_json::to_vec(r).expect("rows serialize"));
    }

    /// The digest as hex, prefixed with the item count for quick eyeballing.
    pub fn finish(self) -> String {
        hex(&self.hasher.finalize())
    }
}
