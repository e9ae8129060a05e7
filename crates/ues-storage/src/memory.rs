//! In-memory implementations for tests: same contracts, no disk.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cid::Cid;
use parking_lot::RwLock;

use crate::{Blockstore, Kv, Result, verify_block};

/// A [`Blockstore`] in a `BTreeMap`; verifies reads like the RocksDB one when asked to.
#[derive(Default)]
pub struct MemoryBlockstore {
    blocks: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    verify_reads: bool,
}

impl MemoryBlockstore {
    /// An empty store that does not verify reads.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that verifies every read against its CID.
    pub fn verifying() -> Self {
        Self { verify_reads: true, ..Self::default() }
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.blocks.read().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Overwrites a block's bytes without any check, to simulate corruption in tests.
    #[doc(hidden)]
    pub fn corrupt_block_for_test(&self, cid: &Cid, bytes: &[u8]) {
        self.blocks.write().insert(cid.to_bytes(), bytes.to_vec());
    }
}

impl Blockstore for MemoryBlockstore {
    fn put(&self, cid: &Cid, data: &[u8]) -> Result<()> {
        self.blocks.write().insert(cid.to_bytes(), data.to_vec());
        Ok(())
    }
    fn put_many(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        let mut map = self.blocks.write();
        for (cid, data) in blocks {
            map.insert(cid.to_bytes(), data.clone());
        }
        Ok(())
    }
    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        let found = self.blocks.read().get(&cid.to_bytes()).cloned();
        if let (Some(data), true) = (&found, self.verify_reads) {
            verify_block(cid, data)?;
        }
        Ok(found)
    }
    fn has(&self, cid: &Cid) -> Result<bool> {
        Ok(self.blocks.read().contains_key(&cid.to_bytes()))
    }
    fn delete(&self, cid: &Cid) -> Result<()> {
        self.blocks.write().remove(&cid.to_bytes());
        Ok(())
    }
    fn iter(&self) -> Box<dyn Iterator<Item = Result<(Cid, Vec<u8>)>> + '_> {
        // A snapshot: the lock is not held while the caller iterates.
        let snapshot: Vec<_> = self.blocks.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Box::new(snapshot.into_iter().map(|(k, v)| {
            let cid = Cid::try_from(&k[..]).map_err(|e| crate::Error::InvalidKey(e.to_string()))?;
            Ok((cid, v))
        }))
    }
}

/// Value and expiry of a [`MemoryKv`] entry.
type KvSlot = (Vec<u8>, Option<Instant>);

/// A [`Kv`] in a `BTreeMap`, with TTLs on the monotonic clock.
#[derive(Default)]
pub struct MemoryKv {
    map: RwLock<BTreeMap<Vec<u8>, KvSlot>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn live(expiry: &Option<Instant>) -> bool {
    expiry.is_none_or(|e| Instant::now() < e)
}

impl Kv for MemoryKv {
    fn put(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let expiry = ttl.map(|t| Instant::now() + t);
        self.map.write().insert(key.to_vec(), (value.to_vec(), expiry));
        Ok(())
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.read().get(key).filter(|(_, e)| live(e)).map(|(v, _)| v.clone()))
    }
    fn delete(&self, key: &[u8]) -> Result<()> {
        self.map.write().remove(key);
        Ok(())
    }
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let map = self.map.read();
        Ok(map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, (_, e))| live(e))
            .take(limit)
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect())
    }
}
