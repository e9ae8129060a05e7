use std::sync::atomic::{AtomicU64, Ordering};

use cid::Cid;

use crate::{Blockstore, Error, Result};

/// What a [`FaultyBlockstore`] does on the write it was told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// The write fails cleanly: nothing of it is stored.
    Fail,
    /// The write is torn: the first half of a batch is stored, then it fails, as a store
    /// without atomic batches would leave things after a crash.
    Tear,
}

/// Wraps a blockstore and fails the Nth write (1-based; `put` and `put_many` each count as one).
/// For crash-consistency tests of the layers above.
pub struct FaultyBlockstore<B> {
    inner: B,
    fail_at: AtomicU64,
    writes: AtomicU64,
    mode: FaultMode,
}

impl<B: Blockstore> FaultyBlockstore<B> {
    /// Fails write number `n` (1-based) in the given mode; `u64::MAX` never fails.
    pub fn new(inner: B, n: u64, mode: FaultMode) -> Self {
        Self { inner, fail_at: AtomicU64::new(n), writes: AtomicU64::new(0), mode }
    }

    /// Re-arms the fault for write number `n` counted from now.
    pub fn fail_after(&self, n: u64) {
        let done = self.writes.load(Ordering::SeqCst);
        self.fail_at.store(done + n, Ordering::SeqCst);
    }

    /// Writes attempted so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn should_fail(&self) -> bool {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        n == self.fail_at.load(Ordering::SeqCst)
    }
}

impl<B: Blockstore> Blockstore for FaultyBlockstore<B> {
    fn put(&self, cid: &Cid, data: &[u8]) -> Result<()> {
        if self.should_fail() {
            return Err(Error::Injected { op: "put" });
        }
        self.inner.put(cid, data)
    }
    fn put_many(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        if self.should_fail() {
            if self.mode == FaultMode::Tear {
                for (cid, data) in &blocks[..blocks.len() / 2] {
                    self.inner.put(cid, data)?;
                }
            }
            return Err(Error::Injected { op: "put_many" });
        }
        self.inner.put_many(blocks)
    }
    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        self.inner.get(cid)
    }
    fn has(&self, cid: &Cid) -> Result<bool> {
        self.inner.has(cid)
    }
    fn delete(&self, cid: &Cid) -> Result<()> {
        if self.should_fail() {
            return Err(Error::Injected { op: "delete" });
        }
        self.inner.delete(cid)
    }
    fn iter(&self) -> Box<dyn Iterator<Item = Result<(Cid, Vec<u8>)>> + '_> {
        self.inner.iter()
    }
}
