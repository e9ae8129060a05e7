//! The RocksDB-backed stores: one database per node with a column family per concern.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cid::Cid;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode, Options,
    WriteBatch, WriteOptions, compaction_filter::Decision,
};

use crate::{Blockstore, Error, Kv, Result, verify_block};

const CF_BLOCKS: &str = "blocks";
const CF_KV: &str = "kv";

/// How far an acknowledged write is guaranteed to survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Written to the write-ahead log before returning: survives the process being killed
    /// (`kill -9`, a panic, an OOM kill), not a power cut: the last writes acknowledged before
    /// one can be lost. An explicit choice.
    Process,
    /// On stable storage before returning: survives a power cut too. The default. Writes
    /// through the unsynced paths (whose callers keep their own durable copy) are synced by
    /// [`RocksStore::sync`].
    #[default]
    Fsync,
}

/// Tuning of the RocksDB database.
#[derive(Debug, Clone)]
pub struct RocksConfig {
    /// Durability of every write.
    pub durability: Durability,
    /// Verify every block read against the hash its CID names.
    pub verify_reads: bool,
    /// Shared block cache for data, index and filter blocks, in bytes.
    pub block_cache_bytes: usize,
    /// Bloom filter bits per key (10 gives about 1% false positives).
    pub bloom_bits_per_key: f64,
    /// Memtable size before flush, in bytes.
    pub write_buffer_bytes: usize,
}

impl Default for RocksConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            verify_reads: true,
            block_cache_bytes: 256 << 20,
            bloom_bits_per_key: 10.0,
            write_buffer_bytes: 64 << 20,
        }
    }
}

/// The column-family options UES uses for blocks: bloom filters (also in the memtable) so that
/// `has` on an absent CID rarely reads a data block, LZ4 for hot levels and ZSTD at the bottom.
///
/// Public so that benchmarks can open raw RocksDB with exactly the same options.
pub fn tuned_db_options(cfg: &RocksConfig, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(cfg.bloom_bits_per_key, false);
    table.set_whole_key_filtering(true);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_block_size(16 << 10);
    // A hash index inside each data block: point lookups (every block read is one) find their
    // key without a binary search over restart points (measured: 10-15% faster CAR exports).
    table.set_data_block_index_type(rocksdb::DataBlockIndexType::BinaryAndHash);
    table.set_data_block_hash_ratio(0.75);

    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    opts.set_write_buffer_size(cfg.write_buffer_bytes);
    // The memtable's bloom filter is allocated (and zeroed: resident) with each memtable, at
    // this fraction of the write buffer in bytes: 1% of 64 MiB is 5 Mbit, ~8 bits per entry
    // for the smallest values (10% held 25 MiB resident on an idle node with four memtables).
    opts.set_memtable_prefix_bloom_ratio(0.01);
    opts.set_memtable_whole_key_filtering(true);
    opts.set_level_compaction_dynamic_level_bytes(true);
    opts
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// KV values are stored as `expiry_ms (u64 BE, 0 = never) ++ value`.
fn kv_expired(stored: &[u8], now: u64) -> bool {
    match stored.get(..8) {
        Some(head) => {
            let expiry = u64::from_be_bytes(head.try_into().expect("8 bytes"));
            expiry != 0 && expiry <= now
        }
        None => true, // too short to be ours: treat as garbage
    }
}

/// The node's RocksDB database: the column families `blocks` and `kv`.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    write_opts: WriteOptions,
    /// Written to the WAL, never synced on the way (for callers that keep a durable copy).
    unsynced_opts: WriteOptions,
    durability: Durability,
    verify_reads: bool,
    /// The database's options, which hold its statistics (counters only).
    stats: Options,
}

impl RocksStore {
    /// A consistent copy of the database at `dir` (which must not exist yet), taken while the
    /// database is in use: the memtables are flushed, then the table files are hard-linked
    /// where the file system allows (copied otherwise) with the manifest and options that
    /// name them.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: impl AsRef<Path>, cfg: &RocksConfig) -> Result<Arc<Self>> {
        let path = path.as_ref().to_path_buf();
        let cache = Cache::new_lru_cache(cfg.block_cache_bytes);
        let mut db_opts = tuned_db_options(cfg, &cache);
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        // Counters (cache hits and misses, stall time) for metrics; no histograms or timers,
        // whose clock reads would cost on every operation.
        db_opts.enable_statistics();
        db_opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);

        let blocks = tuned_db_options(cfg, &cache);
        let mut kv = tuned_db_options(cfg, &cache);
        kv.set_compaction_filter("ues-kv-ttl", |_level: u32, _key: &[u8], value: &[u8]| {
            if kv_expired(value, now_ms()) { Decision::Remove } else { Decision::Keep }
        });
        let cfs = vec![ColumnFamilyDescriptor::new(CF_BLOCKS, blocks), ColumnFamilyDescriptor::new(CF_KV, kv)];
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(cfg.durability == Durability::Fsync);
        tracing::debug!(path = %path.display(), ?cfg.durability, "rocksdb opened");
        Ok(Arc::new(Self {
            db,
            path,
            write_opts,
            unsynced_opts: WriteOptions::default(),
            durability: cfg.durability,
            verify_reads: cfg.verify_reads,
            stats: db_opts,
        }))
    }

    /// Syncs the write-ahead log: every write made so far survives a power cut. Under
    /// [`Durability::Process`] nothing is promised beyond the process, and nothing is synced.
    pub fn sync(&self) -> Result<()> {
        if self.durability == Durability::Fsync {
            self.db.flush_wal(true)?;
        }
        Ok(())
    }

    fn write_batch(&self, batch: WriteBatch, synced: bool) -> Result<()> {
        let opts = if synced { &self.write_opts } else { &self.unsynced_opts };
        Ok(self.db.write_opt(batch, opts)?)
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database's state for metrics: (name, value) of table-file bytes, estimated live
    /// data, memtable bytes, block-cache bytes, bytes awaiting compaction (summed over the
    /// column families), compactions running, whether writes are stopped (0/1), the rate
    /// writes are delayed to (bytes/s; 0 when they are not), and, counted since the database
    /// opened, block-cache hits and misses and microseconds writes stalled.
    pub fn gauges(&self) -> Vec<(&'static str, u64)> {
        let per_cf = |prop: &str| -> u64 {
            [CF_BLOCKS, CF_KV]
                .iter()
                .map(|cf| self.db.property_int_value_cf(self.cf(cf), prop).ok().flatten().unwrap_or(0))
                .sum()
        };
        let db = |prop: &str| self.db.property_int_value(prop).ok().flatten().unwrap_or(0);
        vec![
            ("sst_bytes", per_cf("rocksdb.total-sst-files-size")),
            ("live_data_bytes", per_cf("rocksdb.estimate-live-data-size")),
            ("memtable_bytes", per_cf("rocksdb.cur-size-all-mem-tables")),
            ("block_cache_bytes", db("rocksdb.block-cache-usage")),
            ("pending_compaction_bytes", per_cf("rocksdb.estimate-pending-compaction-bytes")),
            ("running_compactions", db("rocksdb.num-running-compactions")),
            ("write_stopped", db("rocksdb.is-write-stopped")),
            ("delayed_write_rate", db("rocksdb.actual-delayed-write-rate")),
            ("block_cache_hits", self.stats.get_ticker_count(rocksdb::statistics::Ticker::BlockCacheHit)),
            ("block_cache_misses", self.stats.get_ticker_count(rocksdb::statistics::Ticker::BlockCacheMiss)),
            ("stall_micros", self.stats.get_ticker_count(rocksdb::statistics::Ticker::StallMicros)),
        ]
    }

    /// Flushes memtables and compacts every column family (drops expired KV entries).
    pub fn compact(&self) -> Result<()> {
        for name in [CF_BLOCKS, CF_KV] {
            let cf = self.cf(name);
            self.db.flush_cf(cf)?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Number of keys physically present in the KV column family, expired or not (for tests
    /// and metrics: shows what compaction has dropped).
    pub fn kv_physical_len(&self) -> Result<usize> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_KV), IteratorMode::Start) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Writes raw bytes under a CID, bypassing every check. Only for tests that simulate disk
    /// corruption.
    #[doc(hidden)]
    pub fn corrupt_block_for_test(&self, cid: &Cid, bytes: &[u8]) -> Result<()> {
        Ok(self.db.put_cf(self.cf(CF_BLOCKS), cid.to_bytes(), bytes)?)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
    }

    /// A blockstore view of this database.
    pub fn blockstore(self: &Arc<Self>) -> RocksBlockstore {
        RocksBlockstore { store: self.clone() }
    }

    /// A TTL key-value view of this database.
    pub fn kv(self: &Arc<Self>) -> RocksKv {
        RocksKv { store: self.clone() }
    }
}

/// [`Blockstore`] over the `blocks` column family of a [`RocksStore`].
#[derive(Clone)]
pub struct RocksBlockstore {
    store: Arc<RocksStore>,
}

impl RocksBlockstore {
    fn cf(&self) -> &ColumnFamily {
        self.store.cf(CF_BLOCKS)
    }

    fn batch(&self, blocks: &[(Cid, Vec<u8>)]) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for (cid, data) in blocks {
            batch.put_cf(self.cf(), cid.to_bytes(), data);
        }
        batch
    }
}

impl Blockstore for RocksBlockstore {
    fn put(&self, cid: &Cid, data: &[u8]) -> Result<()> {
        let s = &self.store;
        Ok(s.db.put_cf_opt(self.cf(), cid.to_bytes(), data, &s.write_opts)?)
    }

    fn put_many(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        self.store.write_batch(self.batch(blocks), true)
    }

    fn put_many_unsynced(&self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        self.store.write_batch(self.batch(blocks), false)
    }

    fn sync(&self) -> Result<()> {
        self.store.sync()
    }

    fn syncs_writes(&self) -> bool {
        self.store.durability == Durability::Fsync
    }

    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        let Some(data) = self.store.db.get_pinned_cf(self.cf(), cid.to_bytes())? else {
            return Ok(None);
        };
        if self.store.verify_reads {
            verify_block(cid, &data).inspect_err(|e| tracing::error!(%cid, "{e}"))?;
        }
        Ok(Some(data.to_vec()))
    }

    fn get_many(&self, cids: &[Cid]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<Vec<u8>> = cids.iter().map(Cid::to_bytes).collect();
        let found = self.store.db.batched_multi_get_cf(self.cf(), &keys, false);
        cids.iter()
            .zip(found)
            .map(|(cid, r)| {
                let Some(data) = r? else { return Ok(None) };
                if self.store.verify_reads {
                    verify_block(cid, &data).inspect_err(|e| tracing::error!(%cid, "{e}"))?;
                }
                Ok(Some(data.to_vec()))
            })
            .collect()
    }

    fn has(&self, cid: &Cid) -> Result<bool> {
        let key = cid.to_bytes();
        // The bloom filters answer most absent keys without touching a data block.
        if !self.store.db.key_may_exist_cf(self.cf(), &key) {
            return Ok(false);
        }
        Ok(self.store.db.get_pinned_cf(self.cf(), &key)?.is_some())
    }

    fn delete(&self, cid: &Cid) -> Result<()> {
        Ok(self.store.db.delete_cf_opt(self.cf(), cid.to_bytes(), &self.store.write_opts)?)
    }

    fn iter(&self) -> Box<dyn Iterator<Item = Result<(Cid, Vec<u8>)>> + '_> {
        let verify = self.store.verify_reads;
        Box::new(self.store.db.iterator_cf(self.cf(), IteratorMode::Start).map(move |item| {
            let (key, value) = item?;
            let cid = Cid::try_from(&key[..]).map_err(|e| Error::InvalidKey(e.to_string()))?;
            if verify {
                verify_block(&cid, &value)?;
            }
            Ok((cid, value.into_vec()))
        }))
    }
}

/// [`Kv`] over the `kv` column family of a [`RocksStore`], with TTL enforced on read and by a
/// compaction filter on disk.
#[derive(Clone)]
pub struct RocksKv {
    store: Arc<RocksStore>,
}

impl RocksKv {
    fn cf(&self) -> &ColumnFamily {
        self.store.cf(CF_KV)
    }

    fn batch(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for (k, v) in entries {
            batch.put_cf(self.cf(), k, kv_encode(v, None));
        }
        batch
    }
}

fn kv_encode(value: &[u8], ttl: Option<Duration>) -> Vec<u8> {
    let expiry = ttl.map_or(0, |t| now_ms().saturating_add(t.as_millis() as u64).max(1));
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&expiry.to_be_bytes());
    out.extend_from_slice(value);
    out
}

impl Kv for RocksKv {
    fn put(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let s = &self.store;
        Ok(s.db.put_cf_opt(self.cf(), key, kv_encode(value, ttl), &s.write_opts)?)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(match self.store.db.get_pinned_cf(self.cf(), key)? {
            Some(v) if !kv_expired(&v, now_ms()) => Some(v[8..].to_vec()),
            _ => None,
        })
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        Ok(self.store.db.delete_cf_opt(self.cf(), key, &self.store.write_opts)?)
    }

    fn put_many(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        self.store.write_batch(self.batch(entries), true)
    }

    fn put_many_unsynced(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        self.store.write_batch(self.batch(entries), false)
    }

    fn sync(&self) -> Result<()> {
        self.store.sync()
    }

    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let now = now_ms();
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.store.db.iterator_cf(self.cf(), mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if !kv_expired(&v, now) {
                out.push((k.into_vec(), v[8..].to_vec()));
            }
        }
        Ok(out)
    }
}
