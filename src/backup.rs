//! Backups of a running node (`ues backup`, through the admin API) and their restoration into a
//! new data directory (`ues restore`), which checks every repository before it says it is done.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Value, json};

use crate::config::Config;

/// Files of the data directory that are not the databases' own: keys, secrets, configuration.
/// Everything else at its top level (the lock, the SQLite files, database directories, logs) is
/// either copied by the databases' backups or not copied at all. The applications' own
/// databases (`lens.sqlite`) are not: their state is derived from the node's data, and a
/// restored node rebuilds it.
fn is_side_file(name: &str) -> bool {
    !(name == ues_storage::DataDir::LOCK_FILE || name.contains(".sqlite") || name.ends_with(".log"))
}

/// The running node's backups: its storage, its replica store, and the files beside them.
pub(crate) struct NodeBackup {
    pub(crate) storage: Arc<ues_storage::Storage>,
    pub(crate) replica: Option<Arc<ues_storage::RocksStore>>,
    pub(crate) data_dir: PathBuf,
}

impl ues_protocol::node::StorageOps for NodeBackup {
    fn backup(&self, dir: &Path) -> Result<Value, String> {
        self.take(dir).map_err(|e| format!("{e:#}"))
    }

    fn gauges(&self) -> Vec<ues_protocol::node::Gauge> {
        use ues_protocol::node::Gauge;
        let mut out = Vec::new();
        let mut rocks = |db: &'static str, store: &ues_storage::RocksStore| {
            for (name, value) in store.gauges() {
                let (name, help) = match name {
                    "sst_bytes" => ("ues_rocksdb_sst_bytes", "Bytes of RocksDB table files."),
                    "live_data_bytes" => ("ues_rocksdb_live_data_bytes", "RocksDB's estimate of its live data."),
                    "memtable_bytes" => ("ues_rocksdb_memtable_bytes", "Bytes in RocksDB memtables."),
                    "block_cache_bytes" => ("ues_rocksdb_block_cache_bytes", "Bytes in RocksDB's block cache."),
                    "pending_compaction_bytes" => {
                        ("ues_rocksdb_pending_compaction_bytes", "Bytes RocksDB estimates it has left to compact.")
                    }
                    "running_compactions" => ("ues_rocksdb_running_compactions", "RocksDB compactions running."),
                    "write_stopped" => {
                        ("ues_rocksdb_write_stopped", "1 while RocksDB stops writes (a compaction stall).")
                    }
                    "delayed_write_rate" => {
                        ("ues_rocksdb_delayed_write_rate", "Bytes/s RocksDB slows writes to (0 when it does not).")
                    }
                    "block_cache_hits" => {
                        ("ues_rocksdb_block_cache_hits_total", "Reads RocksDB's block cache answered, since start.")
                    }
                    "block_cache_misses" => (
                        "ues_rocksdb_block_cache_misses_total",
                        "Reads that missed RocksDB's block cache, since start.",
                    ),
                    "stall_micros" => (
                        "ues_rocksdb_stall_micros_total",
                        "Microseconds RocksDB stalled writes for compaction, since start.",
                    ),
                    _ => continue,
                };
                out.push(Gauge { name, help, labels: vec![("db", db.to_string())], value });
            }
        };
        rocks("blocks", &self.storage.rocks);
        if let Some(r) = &self.replica {
            rocks("replica", r);
        }
        let (db, wal) = self.storage.sqlite.file_bytes();
        let mut files = vec![("index".to_string(), db), ("wal".to_string(), wal)];
        for (schema, db, wal) in self.storage.sqlite.attached_bytes() {
            files.push((format!("{schema}-wal"), wal));
            files.insert(files.len() - 1, (schema, db));
        }
        for (file, value) in files {
            out.push(Gauge {
                name: "ues_sqlite_bytes",
                help: "Bytes of the SQLite index, of an application's own database (`lens`), and of their write-ahead logs.",
                labels: vec![("file", file)],
                value,
            });
        }
        let dir = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(self.data_dir.as_os_str()));
        if let Ok(fs) = dir.map_err(|_| rustix::io::Errno::INVAL).and_then(|d| rustix::fs::statvfs(d.as_c_str())) {
            out.push(Gauge {
                name: "ues_disk_free_bytes",
                help: "Bytes free for the node on the data directory's file system.",
                labels: Vec::new(),
                value: fs.f_bavail.saturating_mul(fs.f_frsize),
            });
        }
        out
    }
}

impl NodeBackup {
    fn take(&self, dir: &Path) -> anyhow::Result<Value> {
        self.storage.backup(dir).context("copying the databases")?;
        if let Some(replica) = &self.replica {
            replica.checkpoint(&dir.join("replica")).context("copying the replica")?;
        }
        for entry in std::fs::read_dir(&self.data_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_file() && is_side_file(&name) {
                copy_file(&entry.path(), &dir.join(&name))?;
            }
        }
        let accounts: i64 = {
            let db = ues_storage::rusqlite::Connection::open_with_flags(
                dir.join("index.sqlite"),
                ues_storage::rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            db.query_row("SELECT count(*) FROM account", [], |r| r.get(0))?
        };
        let (files, bytes) = tree_size(dir)?;
        let created_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let manifest = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "createdAtMs": created_ms.as_millis() as u64,
            "accounts": accounts,
        });
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join("backup.json"))?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(&manifest)?)?;
        f.sync_all()?;
        Ok(json!({ "dir": dir.display().to_string(), "accounts": accounts, "files": files, "bytes": bytes }))
    }
}

/// Copies a file, owner-only.
fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut src = std::fs::File::open(from).with_context(|| format!("reading {}", from.display()))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("writing {}", to.display()))?;
    std::io::copy(&mut src, &mut dst)?;
    dst.sync_all()?;
    Ok(())
}

/// Files and bytes under `dir`.
fn tree_size(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files += 1;
                bytes += entry.metadata()?.len();
            }
        }
    }
    Ok((files, bytes))
}

/// Copies the tree `from` into the new directory `to` (owner-only), syncing every file.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            copy_file(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Restores the backup in `from` as the new data directory `to` (refused if it holds
/// anything), then opens it as the node would and checks every repository: its commit signed
/// by the account's key and every block of its tree present and matching its CID. Returns the
/// accounts checked; fails naming the first that does not verify.
pub(crate) fn restore(from: &Path, to: &Path) -> anyhow::Result<Value> {
    for needed in ["index.sqlite", "rocksdb", "backup.json"] {
        anyhow::ensure!(from.join(needed).exists(), "{} is not a backup: it has no {needed}", from.display());
    }
    if to.exists() {
        anyhow::ensure!(
            std::fs::read_dir(to)?.next().is_none(),
            "{} is not empty: a backup is restored into a new data directory",
            to.display()
        );
        std::fs::remove_dir(to)?;
    }
    copy_tree(from, to)?;
    let cfg = match to.join("node.toml") {
        p if p.is_file() => Config::load(&p)?,
        _ => Config::default(),
    };
    let cfg = Config { data_dir: to.to_path_buf(), ..cfg };
    let checked = check_repositories(&cfg)?;
    Ok(json!({ "dataDir": to.display().to_string(), "accounts": checked.len(), "verified": checked }))
}

/// Opens the data directory's storage and accounts and verifies every repository.
fn check_repositories(cfg: &Config) -> anyhow::Result<Vec<Value>> {
    use ues_repo::ipld::storage::{Blockstore, Kv, MemoryBlockstore};
    let storage = ues_storage::Storage::open(&cfg.data_dir, &cfg.storage_config())?;
    let blocks: Arc<dyn Blockstore> = Arc::new(storage.rocks.blockstore());
    let kv: Arc<dyn Kv> = Arc::new(storage.rocks.kv());
    let seal = crate::identity::seal_key(&cfg.data_dir, &cfg.keys)?;
    let accounts = ues_repo::accounts::Accounts::open_with(blocks, kv, storage.sqlite.clone(), 0, seal)?;
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = accounts.list(after.as_deref(), 500)?;
        let Some(last) = page.last() else { break };
        after = Some(last.did.to_string());
        for a in &page {
            let key = accounts.signing_key(&a.did)?.public();
            let car = accounts.export_car(&a.did, None, Vec::new())?;
            let store = MemoryBlockstore::new();
            let repo = ues_repo::repo::import_car(&store, &car[..], &a.did, &key)
                .with_context(|| format!("the repository of {} does not verify", a.did))?;
            out.push(
                json!({ "did": a.did.to_string(), "rev": repo.commit().rev.to_string(), "head": a.head.to_string() }),
            );
        }
    }
    Ok(out)
}
