//! The ledger's state hash: a lattice hash (LtHash, 1024 lanes of 16 bits) of its entries, so
//! that it changes by O(1) work per entry changed and depends only on the state, not on the
//! history that led to it.
//!
//! Each entry (key, value) is expanded to 2 KiB with BLAKE3's extendable output (in its
//! key-derivation mode, context [`CONTEXT`]) over `len(key) as u32 LE ‖ key ‖ value`, read as
//! 1024 little-endian u16 lanes; the state's lanes are the lane-wise sum, modulo 2^16, of its
//! entries' (an entry replaced is subtracted, then its new value added). The state hash is the
//! hex BLAKE3-256 digest of the lanes written little-endian. Every key is in the state once, so
//! the sum's known weakness (the same element added many times) does not arise.

/// BLAKE3's key-derivation context for ledger entries.
pub const CONTEXT: &str = "dev.ues.asset 2026 ledger entry v1";

/// Lanes of the hash.
pub const LANES: usize = 1024;

/// A ledger state's lattice hash.
#[derive(Clone, PartialEq, Eq)]
pub struct LtHash(pub Box<[u16; LANES]>);

impl Default for LtHash {
    fn default() -> Self {
        Self(Box::new([0; LANES]))
    }
}

impl std::fmt::Debug for LtHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LtHash({})", self.digest())
    }
}

fn expand(key: &[u8], value: &[u8]) -> Box<[u16; LANES]> {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(value);
    let mut bytes = [0u8; LANES * 2];
    h.finalize_xof().fill(&mut bytes);
    let mut lanes = Box::new([0u16; LANES]);
    for (l, b) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
        *l = u16::from_le_bytes([b[0], b[1]]);
    }
    lanes
}

impl LtHash {
    /// Adds an entry.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        for (a, b) in self.0.iter_mut().zip(expand(key, value).iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// Takes an entry away.
    pub fn remove(&mut self, key: &[u8], value: &[u8]) {
        for (a, b) in self.0.iter_mut().zip(expand(key, value).iter()) {
            *a = a.wrapping_sub(*b);
        }
    }

    /// The lanes, little-endian (as stored).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    /// Lanes from their stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != LANES * 2 {
            return None;
        }
        let mut lanes = Box::new([0u16; LANES]);
        for (l, b) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *l = u16::from_le_bytes([b[0], b[1]]);
        }
        Some(Self(lanes))
    }

    /// The state hash: hex BLAKE3-256 of the lanes.
    pub fn digest(&self) -> String {
        blake3::hash(&self.to_bytes()).to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn the_hash_depends_on_the_set_not_the_order(
            entries in proptest::collection::btree_map(any::<Vec<u8>>(), any::<Vec<u8>>(), 0..20),
            seed in any::<u64>(),
        ) {
            let mut a = LtHash::default();
            for (k, v) in &entries {
                a.add(k, v);
            }
            let mut shuffled: Vec<_> = entries.iter().collect();
            let n = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % n);
            let mut b = LtHash::default();
            for (k, v) in shuffled {
                b.add(k, v);
            }
            prop_assert_eq!(a.digest(), b.digest());
            for (k, v) in &entries {
                a.remove(k, v);
            }
            prop_assert_eq!(a, LtHash::default());
        }
    }

    #[test]
    fn key_and_value_boundaries_matter() {
        let mut a = LtHash::default();
        a.add(b"ab", b"c");
        let mut b = LtHash::default();
        b.add(b"a", b"bc");
        assert_ne!(a.digest(), b.digest());
        assert_eq!(LtHash::from_bytes(&a.to_bytes()), Some(a));
    }
}
