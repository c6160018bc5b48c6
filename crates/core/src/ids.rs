//! Row ids: UUIDv7 for rows created on a device, derived ids for rows that
//! have a natural key (a product's SKU, a singleton setting) so that two tills
//! creating the same key offline create the same row.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A seeded generator of random bits. The caller seeds it (from the OS in
/// the binary, from a fixed seed in the simulation); the core never asks the
/// OS for entropy itself.
#[derive(Clone, Debug)]
pub struct IdGen {
    state: [u64; 4],
}

impl IdGen {
    /// Builds a generator from 32 bytes of seed material.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let mut state = [0u64; 4];
        for (i, chunk) in seed.chunks_exact(8).enumerate() {
            state[i] = u64::from_le_bytes(chunk.try_into().expect("chunk of 8"));
        }
        if state == [0; 4] {
            state[0] = 0x9e37_79b9_7f4a_7c15;
        }
        Self { state }
    }

    /// Builds a generator from a small integer seed, for tests and simulations.
    pub fn from_u64(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        let mut x = seed;
        for chunk in bytes.chunks_exact_mut(8) {
            x = splitmix64(x);
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        Self::from_seed(bytes)
    }

    /// Next 64 random bits (xoshiro256**).
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// A UUIDv7 for a row created at `now_ms` (Unix milliseconds).
    pub fn new_v7(&mut self, now_ms: u64) -> Uuid {
        let mut rand = [0u8; 10];
        self.fill(&mut rand);
        uuid::Builder::from_unix_timestamp_millis(now_ms, &rand).into_uuid()
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The id of a row with a natural key: the same (tenant, kind, key) always
/// gives the same id, on every device, with no coordination.
pub fn derived_id(tenant: Uuid, kind: &str, key: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"tillsync-derived-id-v1\0");
    h.update(tenant.as_bytes());
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_ids_sort_by_time_and_are_unique() {
        let mut g = IdGen::from_u64(7);
        let a = g.new_v7(1_000);
        let b = g.new_v7(2_000);
        assert!(a < b);
        assert_eq!(a.get_version_num(), 7);
        assert_ne!(g.new_v7(5), g.new_v7(5));
    }

    #[test]
    fn derived_ids_depend_on_every_part() {
        let t1 = Uuid::from_u128(1);
        let t2 = Uuid::from_u128(2);
        let a = derived_id(t1, "product", "COFFEE");
        assert_eq!(a, derived_id(t1, "product", "COFFEE"));
        assert_ne!(a, derived_id(t2, "product", "COFFEE"));
        assert_ne!(a, derived_id(t1, "category", "COFFEE"));
        assert_ne!(a, derived_id(t1, "product", "COFFEE2"));
        assert_eq!(a.get_version_num(), 8);
    }
}
