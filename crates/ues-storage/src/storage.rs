use std::sync::Arc;

use crate::{DataDir, Result, RocksConfig, RocksStore, Sqlite, SqliteConfig};

/// Storage settings of a node.
#[derive(Debug, Clone, Default)]
pub struct StorageConfig {
    /// RocksDB (blocks and KV).
    pub rocks: RocksConfig,
    /// SQLite (indexes).
    pub sqlite: SqliteConfig,
}

/// Everything a node keeps on disk, opened together under the data-directory lock.
pub struct Storage {
    /// Blocks and KV.
    pub rocks: Arc<RocksStore>,
    /// The index database.
    pub sqlite: Arc<Sqlite>,
    // Declared last so it drops last: the lock outlives the databases.
    dir: DataDir,
}

impl Storage {
    /// Locks `dir` (creating it if needed) and opens both databases in it, every file of them
    /// readable by the owner only.
    pub fn open(dir: impl AsRef<std::path::Path>, cfg: &StorageConfig) -> Result<Self> {
        let dir = DataDir::open(dir)?;
        let rocks = RocksStore::open(dir.rocksdb_path(), &cfg.rocks)?;
        let sqlite = Arc::new(Sqlite::open(dir.sqlite_path(), &cfg.sqlite)?);
        // RocksDB creates its files with the process umask (it takes no file mode): those it
        // made just now are restricted here; a node also sets an owner-only umask at start.
        dir.restrict();
        Ok(Self { rocks, sqlite, dir })
    }

    /// The data directory.
    pub fn dir(&self) -> &DataDir {
        &self.dir
    }
}
