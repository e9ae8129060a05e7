use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The node's data directory, held under an exclusive advisory lock for as long as this value
/// lives. A second node opening the same directory gets [`Error::Locked`] instead of sharing
/// (and corrupting) the databases.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// The lock file's name inside the directory.
    pub const LOCK_FILE: &'static str = "ues.lock";

    /// Creates the directory if needed and takes the lock.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(path.join(Self::LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { path }),
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        Ok(Self { path, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the RocksDB database lives.
    pub fn rocksdb_path(&self) -> PathBuf {
        self.path.join("rocksdb")
    }

    /// Where the SQLite index database lives.
    pub fn sqlite_path(&self) -> PathBuf {
        self.path.join("index.sqlite")
    }
}
