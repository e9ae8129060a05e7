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

    /// A consistent copy of both databases in `dir` (created, owner-only; it must not exist),
    /// laid out as a data directory, taken while the node serves writes. The index goes first,
    /// then the blocks: every block the copied index names (a repository's head, a blob) was
    /// written before it, blocks are never deleted while referenced, and the few a commit
    /// had not yet synced ride in the index's own journal, so the later copy of the blocks
    /// holds all of them.
    pub fn backup(&self, dir: &std::path::Path) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(crate::datadir::DIR_MODE).create(dir)?;
        self.sqlite.snapshot_to(&dir.join("index.sqlite"))?;
        self.rocks.checkpoint(&dir.join("rocksdb"))?;
        crate::datadir::restrict_tree(dir);
        Ok(())
    }
}
