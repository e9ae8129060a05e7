use std::sync::Arc;

use cid::Cid;

use crate::{ByteLru, Result};

/// A content-addressed block store: CID -> bytes.
///
/// Implementations are synchronous (RocksDB is); async callers wrap calls in
/// `spawn_blocking`. Every method takes `&self` so one store is shared across threads.
pub trait Blockstore: Send + Sync {
    /// Stores one block. Storing a block that is already present is a cheap no-op in effect.
    fn put(&self, cid: &Cid, data: &[u8]) -> Result<()>;
    /// Stores many blocks atomically: after a crash either all are present or none is.
    fn put_many(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()>;
    /// Reads a block; `Ok(None)` when absent, [`crate::Error::Corrupt`] when verification is on
    /// and the bytes do not match the CID.
    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>>;
    /// Reads many blocks at once, answers in the order asked. Stores that can batch lookups
    /// (RocksDB's MultiGet) do so; the default asks one by one.
    fn get_many(&self, cids: &[Cid]) -> Result<Vec<Option<Vec<u8>>>> {
        cids.iter().map(|c| self.get(c)).collect()
    }
    /// Whether a block is present (cheap for absent CIDs: bloom filters answer first).
    fn has(&self, cid: &Cid) -> Result<bool>;
    /// Removes a block (absent is not an error).
    fn delete(&self, cid: &Cid) -> Result<()>;
    /// Every stored block, in key order. Reads are streamed, not collected.
    fn iter(&self) -> Box<dyn Iterator<Item = Result<(Cid, Vec<u8>)>> + '_>;
    /// As [`Blockstore::put_many`], but not made durable against power loss before returning
    /// even when the store's writes otherwise are: for a caller that keeps its own durable copy
    /// of the blocks until [`Blockstore::sync`] has returned. Survives the process being killed.
    fn put_many_unsynced(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        self.put_many(blocks)
    }
    /// Makes every write made so far durable against power loss.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// Whether [`Blockstore::put_many`] makes its blocks durable against power loss before it
    /// returns (a caller that cares may then keep its own copy and use the unsynced path).
    fn syncs_writes(&self) -> bool {
        false
    }
}

macro_rules! forward_blockstore {
    ($($ptr:ty),*) => {$(
        impl<T: Blockstore + ?Sized> Blockstore for $ptr {
            fn put(&self, cid: &Cid, data: &[u8]) -> Result<()> {
                (**self).put(cid, data)
            }
            fn put_many(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
                (**self).put_many(blocks)
            }
            fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
                (**self).get(cid)
            }
            fn get_many(&self, cids: &[Cid]) -> Result<Vec<Option<Vec<u8>>>> {
                (**self).get_many(cids)
            }
            fn has(&self, cid: &Cid) -> Result<bool> {
                (**self).has(cid)
            }
            fn delete(&self, cid: &Cid) -> Result<()> {
                (**self).delete(cid)
            }
            fn iter(&self) -> Box<dyn Iterator<Item = Result<(Cid, Vec<u8>)>> + '_> {
                (**self).iter()
            }
            fn put_many_unsynced(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
                (**self).put_many_unsynced(blocks)
            }
            fn sync(&self) -> Result<()> {
                (**self).sync()
            }
            fn syncs_writes(&self) -> bool {
                (**self).syncs_writes()
            }
        }
    )*};
}
forward_blockstore!(&T, Arc<T>, Box<T>);

/// A read-through cache in front of another blockstore, bounded by bytes.
///
/// Blocks are immutable, so a cached block never goes stale; `delete` evicts.
pub struct CachedBlockstore<B> {
    inner: B,
    cache: ByteLru<Cid, Arc<[u8]>>,
}

impl<B: Blockstore> CachedBlockstore<B> {
    /// Wraps `inner` with a cache holding at most `capacity_bytes` of block data.
    pub fn new(inner: B, capacity_bytes: usize) -> Self {
        Self { inner, cache: ByteLru::new(capacity_bytes) }
    }

    /// The cache, for its counters.
    pub fn cache(&self) -> &ByteLru<Cid, Arc<[u8]>> {
        &self.cache
    }

    /// The wrapped store.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<B: Blockstore> Blockstore for CachedBlockstore<B> {
    fn put(&self, cid: &Cid, data: &[u8]) -> Result<()> {
        self.inner.put(cid, data)?;
        self.cache.insert(*cid, Arc::from(data));
        Ok(())
    }
    fn put_many(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        self.inner.put_many(blocks)?;
        for (cid, data) in blocks {
            self.cache.insert(*cid, Arc::from(data.as_slice()));
        }
        Ok(())
    }
    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        if let Some(hit) = self.cache.get(cid) {
            return Ok(Some(hit.to_vec()));
        }
        let found = self.inner.get(cid)?;
        if let Some(data) = &found {
            self.cache.insert(*cid, Arc::from(data.as_slice()));
        }
        Ok(found)
    }
    fn get_many(&self, cids: &[Cid]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out: Vec<Option<Vec<u8>>> = cids.iter().map(|c| self.cache.get(c).map(|h| h.to_vec())).collect();
        let missing: Vec<Cid> = cids.iter().zip(&out).filter(|(_, o)| o.is_none()).map(|(c, _)| *c).collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let mut fetched = self.inner.get_many(&missing)?.into_iter();
        for (cid, slot) in cids.iter().zip(out.iter_mut()).filter(|(_, o)| o.is_none()) {
            *slot = fetched.next().flatten();
            if let Some(data) = slot {
                self.cache.insert(*cid, Arc::from(data.as_slice()));
            }
        }
        Ok(out)
    }
    fn has(&self, cid: &Cid) -> Result<bool> {
        if self.cache.contains(cid) {
            return Ok(true);
        }
        self.inner.has(cid)
    }
    fn delete(&self, cid: &Cid) -> Result<()> {
        self.cache.remove(cid);
        self.inner.delete(cid)
    }
    fn iter(&self) -> Box<dyn Iterator<Item = Result<(Cid, Vec<u8>)>> + '_> {
        self.inner.iter()
    }
    fn put_many_unsynced(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        self.inner.put_many_unsynced(blocks)?;
        for (cid, data) in blocks {
            self.cache.insert(*cid, Arc::from(data.as_slice()));
        }
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn syncs_writes(&self) -> bool {
        self.inner.syncs_writes()
    }
}

/// A view of a blockstore whose writes all take the unsynced path
/// ([`Blockstore::put_many_unsynced`]): for code that writes blocks through a generic store
/// (a repository applying writes) while its caller keeps the durable copy.
pub struct Unsynced<B>(pub B);

impl<B: Blockstore> Blockstore for Unsynced<B> {
    fn put(&self, cid: &Cid, data: &[u8]) -> Result<()> {
        self.0.put_many_unsynced(&[(*cid, data.to_vec())])
    }
    fn put_many(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        self.0.put_many_unsynced(blocks)
    }
    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        self.0.get(cid)
    }
    fn get_many(&self, cids: &[Cid]) -> Result<Vec<Option<Vec<u8>>>> {
        self.0.get_many(cids)
    }
    fn has(&self, cid: &Cid) -> Result<bool> {
        self.0.has(cid)
    }
    fn delete(&self, cid: &Cid) -> Result<()> {
        self.0.delete(cid)
    }
    fn iter(&self) -> Box<dyn Iterator<Item = Result<(Cid, Vec<u8>)>> + '_> {
        self.0.iter()
    }
    fn put_many_unsynced(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        self.0.put_many_unsynced(blocks)
    }
    fn sync(&self) -> Result<()> {
        self.0.sync()
    }
}
