use std::time::Duration;

use crate::Result;

/// A small key-value store with optional per-key time-to-live, for hot session data.
///
/// An expired key is invisible to every read from the moment it expires.
pub trait Kv: Send + Sync {
    /// Stores `value` under `key`; with `ttl`, the key expires that long from now.
    fn put(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()>;
    /// Reads a live key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Removes a key (absent is not an error).
    fn delete(&self, key: &[u8]) -> Result<()>;
    /// Live keys starting with `prefix`, in key order, at most `limit` of them.
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Stores many keys without expiry, atomically where the store can (RocksDB: one batch).
    fn put_many(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        entries.iter().try_for_each(|(k, v)| self.put(k, v, None))
    }
    /// As [`Kv::put_many`], but not made durable against power loss before returning even when
    /// the store's writes otherwise are (the caller keeps a durable copy until [`Kv::sync`]).
    fn put_many_unsynced(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        self.put_many(entries)
    }
    /// Makes every write made so far durable against power loss.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

macro_rules! forward_kv {
    ($($ptr:ty),*) => {$(
        impl<T: Kv + ?Sized> Kv for $ptr {
            fn put(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
                (**self).put(key, value, ttl)
            }
            fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
                (**self).get(key)
            }
            fn delete(&self, key: &[u8]) -> Result<()> {
                (**self).delete(key)
            }
            fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
                (**self).scan_prefix(prefix, limit)
            }
            fn put_many(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
                (**self).put_many(entries)
            }
            fn put_many_unsynced(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
                (**self).put_many_unsynced(entries)
            }
            fn sync(&self) -> Result<()> {
                (**self).sync()
            }
        }
    )*};
}
forward_kv!(&T, std::sync::Arc<T>, Box<T>);
