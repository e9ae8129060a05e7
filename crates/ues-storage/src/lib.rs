//! # ues-storage: layer 1 of the UES node
//!
//! Everything the node keeps on disk goes through this crate:
//!
//! * [`Blockstore`]: content-addressed blocks keyed by CID bytes. [`RocksBlockstore`] is the
//!   real one (bloom filters, LZ4/ZSTD, optional verification of every read against the hash its
//!   CID names); [`MemoryBlockstore`] serves tests and [`FaultyBlockstore`] injects failures for
//!   crash tests.
//! * [`Blobs`]: large blobs cut into BLAKE3-addressed chunks with a manifest, addressed by the
//!   sha2-256 raw CID AT Protocol uses for the whole content, readable as a stream.
//!   They can also live in an object store ([`Objects`]; S3 and compatible services through
//!   `S3Objects`, with the `s3` feature).
//! * [`Kv`]: small keyed values with per-key TTL. In RocksDB an expired key is invisible at once
//!   and physically dropped by a compaction filter.
//! * [`Sqlite`]: the index database for the upper layers (WAL, migrations, FTS5, JSON1, cached
//!   statements).
//! * [`ByteLru`]: a memory cache bounded by bytes, with hit/miss/eviction counters.
//! * [`DataDir`]: the node's data directory, locked so that a second node cannot open it.
//!
//! ## Layer contract
//! This crate knows bytes, keys and CIDs as opaque multihash-tagged identifiers. It does not know
//! DAG-CBOR, records, repositories or the network; those live in the layers above.

mod blobs;
mod blockstore;
mod cache;
mod datadir;
mod error;
mod faulty;
mod kv;
mod memory;
mod objects;
#[cfg(feature = "rocksdb")]
mod rocks;
#[cfg(feature = "s3")]
mod s3;
mod sqlite;
#[cfg(feature = "rocksdb")]
mod storage;
mod verify;

pub use blobs::{
    BlobInfo, BlobPlace, BlobReader, BlobUpload, Blobs, CHUNK_SIZE, MAX_OBJECT_UPLOADS, PART_SIZE, object_key,
};
pub use blockstore::{Blockstore, CachedBlockstore, Unsynced};
pub use cache::{ByteLru, CacheStats, Weigh};
pub use datadir::DataDir;
pub use error::{Error, Result};
pub use faulty::{FaultMode, FaultyBlockstore};
pub use kv::Kv;
pub use memory::{MemoryBlockstore, MemoryKv};
pub use objects::{MemoryObjects, ObjectMeta, Objects};
#[cfg(feature = "rocksdb")]
pub use rocks::{Durability, RocksBlockstore, RocksConfig, RocksKv, RocksStore, tuned_db_options};
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3Objects};
pub use sqlite::{Attached, Migration, Sqlite, SqliteConfig, Synchronous};
#[cfg(feature = "rocksdb")]
pub use storage::{Storage, StorageConfig};
pub use verify::{BLAKE3, IDENTITY, RAW, SHA2_256, cid_for, verify_block};

/// The CID type used throughout UES (re-exported so upper layers share one version).
pub use cid::Cid;
/// SQLite bindings, re-exported for the upper layers' index code.
pub use rusqlite;
