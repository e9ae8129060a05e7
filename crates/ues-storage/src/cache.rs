use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

/// How many bytes a cached value accounts for.
pub trait Weigh {
    /// The value's size in bytes (payload; bookkeeping overhead is added by the cache).
    fn weight(&self) -> usize;
}

impl Weigh for Arc<[u8]> {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weigh for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// Bookkeeping bytes charged per entry on top of the value's weight, so that a flood of tiny
/// values cannot grow the cache without bound.
const ENTRY_OVERHEAD: usize = 64;

/// Counters of a [`ByteLru`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups that found their key.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries pushed out to make room.
    pub evictions: u64,
    /// Entries currently held.
    pub entries: u64,
    /// Bytes currently charged (values plus per-entry overhead).
    pub bytes: u64,
    /// The byte budget.
    pub capacity: u64,
}

struct Inner<K: Hash + Eq, V> {
    map: LruCache<K, V>,
    bytes: usize,
}

/// A least-recently-used cache bounded by the bytes of its values, not their count.
///
/// A value larger than the whole budget is not cached at all.
pub struct ByteLru<K: Hash + Eq, V> {
    inner: Mutex<Inner<K, V>>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl<K: Hash + Eq, V: Weigh + Clone> ByteLru<K, V> {
    /// A cache holding at most `capacity_bytes`.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner { map: LruCache::unbounded(), bytes: 0 }),
            capacity: capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Looks a key up, marking it most recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        let found = self.inner.lock().map.get(key).cloned();
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Whether the key is cached (does not count as a hit or miss, does not touch recency).
    pub fn contains(&self, key: &K) -> bool {
        self.inner.lock().map.contains(key)
    }

    /// Inserts or replaces a value, evicting least recently used entries until it fits.
    pub fn insert(&self, key: K, value: V) {
        let cost = value.weight() + ENTRY_OVERHEAD;
        if cost > self.capacity {
            return;
        }
        let mut inner = self.inner.lock();
        if let Some(old) = inner.map.put(key, value) {
            inner.bytes -= old.weight() + ENTRY_OVERHEAD;
        }
        inner.bytes += cost;
        let mut evicted = 0;
        while inner.bytes > self.capacity {
            match inner.map.pop_lru() {
                Some((_, v)) => {
                    inner.bytes -= v.weight() + ENTRY_OVERHEAD;
                    evicted += 1;
                }
                None => break,
            }
        }
        drop(inner);
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// Removes a key, returning its value.
    pub fn remove(&self, key: &K) -> Option<V> {
        let mut inner = self.inner.lock();
        let old = inner.map.pop(key)?;
        inner.bytes -= old.weight() + ENTRY_OVERHEAD;
        Some(old)
    }

    /// The current counters.
    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: inner.map.len() as u64,
            bytes: inner.bytes as u64,
            capacity: self.capacity as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn val(n: usize) -> Vec<u8> {
        vec![0u8; n]
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let cache = ByteLru::new(3 * (100 + ENTRY_OVERHEAD));
        cache.insert(1, val(100));
        cache.insert(2, val(100));
        cache.insert(3, val(100));
        assert!(cache.get(&1).is_some()); // 1 is now most recent; 2 is the oldest
        cache.insert(4, val(100));
        assert!(cache.get(&2).is_none());
        assert!(cache.get(&1).is_some() && cache.get(&3).is_some() && cache.get(&4).is_some());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.evictions, s.entries), (4, 1, 1, 3));
    }

    #[test]
    fn one_big_value_pushes_out_many_small_ones() {
        let cache = ByteLru::new(1000);
        for i in 0..10 {
            cache.insert(i, val(10));
        }
        cache.insert(100, val(800));
        let s = cache.stats();
        assert!(s.bytes <= 1000, "{s:?}");
        assert!(cache.get(&100).is_some());
        assert!(s.evictions >= 8);
    }

    #[test]
    fn oversized_value_is_not_cached() {
        let cache = ByteLru::new(100);
        cache.insert(1, val(1000));
        assert!(cache.get(&1).is_none());
        assert_eq!(cache.stats().bytes, 0);
    }

    proptest! {
        #[test]
        fn never_exceeds_budget(ops in proptest::collection::vec((0u16..50, 0usize..600, any::<bool>()), 1..300)) {
            let cache = ByteLru::new(2000);
            for (key, size, remove) in ops {
                if remove { cache.remove(&key); } else { cache.insert(key, val(size)); }
                let s = cache.stats();
                prop_assert!(s.bytes <= 2000);
            }
        }
    }
}
