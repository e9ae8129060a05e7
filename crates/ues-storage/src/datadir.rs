use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The node's data directory, held under an exclusive advisory lock for as long as this value
/// lives. A second node opening the same directory gets [`Error::Locked`] instead of sharing
/// (and corrupting) the databases.
///
/// The directory holds every account's keys and password hashes: it is kept readable by its
/// owner only (mode 0700, files 0600), set when it is created and restored when it is opened.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

/// Mode of the data directory and of every directory inside it.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Mode of every file in the data directory.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Most entries [`DataDir::restrict`] visits: a data directory holds a few thousand files at
/// most (RocksDB tables), so this only bounds a directory that is not what it seems.
const MAX_ENTRIES: usize = 1_000_000;

/// How deep [`DataDir::restrict`] descends (the databases are one or two levels down).
const MAX_DEPTH: usize = 8;

impl DataDir {
    /// The lock file's name inside the directory.
    pub const LOCK_FILE: &'static str = "ues.lock";

    /// Creates the directory if needed (mode 0700), takes the lock, and makes everything already
    /// in it readable by its owner only (see [`DataDir::restrict`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&path)?;
        if owner_only(&path)? {
            tracing::warn!(dir = %path.display(), "data directory was open to other users; now mode 0700");
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(path.join(Self::LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { path }),
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        let dir = Self { path, _lock: lock };
        dir.restrict();
        Ok(dir)
    }

    /// Makes every directory (0700) and file (0600) under the data directory readable by its
    /// owner only, for data directories made before the node kept them so, and for files a
    /// database created since. Returns how many entries were changed (logged when any were).
    /// An entry that cannot be changed (owned by another user) is logged and skipped.
    pub fn restrict(&self) -> usize {
        restrict_tree(&self.path)
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

/// Takes every permission of group and others off `path` (a 0755 directory becomes 0700, a
/// 0644 file 0600; the owner's bits stay). Returns whether it changed anything.
/// Makes every directory (0700) and file (0600) under `root` readable by its owner only (see
/// [`DataDir::restrict`]); returns how many entries changed.
pub(crate) fn restrict_tree(root: &Path) -> usize {
    let mut changed = 0;
    let mut seen = 0;
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                tracing::warn!(dir = %root.display(), "data directory holds too many entries to check them all");
                return changed;
            }
            let path = entry.path();
            // Symbolic links are left alone: their target is not the node's to change.
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_symlink() {
                continue;
            }
            match owner_only(&path) {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(path = %path.display(), "cannot make owner-only: {e}"),
            }
            if kind.is_dir() && depth < MAX_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    if changed > 0 {
        tracing::warn!(
            dir = %root.display(),
            changed,
            "files in the data directory were open to other users; now owner-only (0600, directories 0700)"
        );
    }
    changed
}

pub(crate) fn owner_only(path: &Path) -> std::io::Result<bool> {
    let mode = std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    if mode & 0o7077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_directory_is_owner_only_and_an_old_one_is_fixed_on_open() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("fresh/nested");
        let dir = DataDir::open(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join(DataDir::LOCK_FILE)), 0o600);
        drop(dir);

        // A directory made with a permissive umask, as nodes made before this one left it.
        let old = root.path().join("old");
        std::fs::create_dir_all(old.join("rocksdb")).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(old.join("rocksdb"), std::fs::Permissions::from_mode(0o755)).unwrap();
        for f in ["index.sqlite", "index.sqlite-wal", "rocksdb/000001.sst"] {
            std::fs::write(old.join(f), b"x").unwrap();
            std::fs::set_permissions(old.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let dir = DataDir::open(&old).unwrap();
        assert_eq!(mode(&old), 0o700);
        assert_eq!(mode(&old.join("rocksdb")), 0o700);
        for f in ["index.sqlite", "index.sqlite-wal", "rocksdb/000001.sst"] {
            assert_eq!(mode(&old.join(f)), 0o600, "{f}");
        }
        assert_eq!(dir.restrict(), 0, "nothing left to change");
    }
}
