use std::path::PathBuf;

use cid::Cid;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong below the data model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process (or another handle in this one) holds the data directory.
    #[error("data directory {path} is locked by another running node")]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// A stored block's bytes no longer hash to the CID it is stored under.
    #[error("block {cid} is corrupt: its bytes do not match the hash its CID names")]
    Corrupt {
        /// The CID the block was requested by.
        cid: Cid,
    },
    /// The CID names a hash function this store cannot verify.
    #[error("unsupported multihash code 0x{code:x}")]
    UnsupportedHash {
        /// The multihash code.
        code: u64,
    },
    /// A key in the block column is not a CID (damaged database or foreign data).
    #[error("stored key is not a CID: {0}")]
    InvalidKey(String),
    /// A block a structure refers to (a blob chunk, a manifest) is absent.
    #[error("block {cid} is missing")]
    MissingBlock {
        /// The absent block.
        cid: Cid,
    },
    /// A blob manifest could not be decoded.
    #[error("blob manifest {cid} is malformed: {reason}")]
    BadManifest {
        /// The manifest block.
        cid: Cid,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Input larger than the configured limit.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size (or the size read so far).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A schema migration failed; the database is left at the previous migration.
    #[error("migration {id} failed: {source}")]
    Migration {
        /// The migration's id.
        id: String,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A fault injected on purpose by [`crate::FaultyBlockstore`].
    #[error("injected fault in {op}")]
    Injected {
        /// The operation that failed.
        op: &'static str,
    },
    /// RocksDB failed.
    #[cfg(feature = "rocksdb")]
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The object store holding blobs failed or refused (S3: the operation and its answer).
    #[error("object store: {0}")]
    Objects(String),
    /// Too much of something is under way at once; the caller may try again shortly.
    #[error("too many {0} under way at once")]
    Busy(&'static str),
    /// The file system failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
