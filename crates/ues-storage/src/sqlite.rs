//! SQLite for the upper layers' indexes: one writer connection, a small pool of readers (WAL
//! lets them read while the writer writes), migrations that upper layers register.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::datadir::{FILE_MODE, owner_only};
use crate::{Error, Result};

/// SQLite's `synchronous` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// No fsync at all (tests, throwaway indexes).
    Off,
    /// In WAL mode: survives a process crash; a power cut may lose the last transactions.
    Normal,
    /// In WAL mode: the log is synced at every commit, which then survives a power cut. The
    /// default.
    #[default]
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// How to open a [`Sqlite`] database.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// How long a connection waits for a lock before `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    /// Prepared statements cached per connection.
    pub statement_cache: usize,
    /// Reader connections in the pool.
    pub readers: usize,
    /// WAL size past which it starts over (see [`Checkpointer`]), and the size its file is cut
    /// back to then.
    pub wal_restart_bytes: u64,
    /// The writer connection's page cache, bytes (0: SQLite's default, 2 MiB, which readers
    /// keep), for the main database and for each attached one. It fills only as pages are used.
    pub writer_cache_bytes: u64,
    /// Databases attached to every connection, each under its own schema name.
    pub attached: Vec<Attached>,
}

/// A database attached beside the main one: its tables are named `<schema>.<table>` (or
/// unqualified, when no table of the main database has the name), a transaction reads and
/// writes both, and it has its own page size and write-ahead log.
///
/// A transaction is atomic within each file, not across them (SQLite's rule for WAL
/// databases): state kept in an attached database must keep its own progress marker there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The schema name: ASCII letters, digits and `_`, not starting with a digit; not `main`
    /// or `temp`.
    pub schema: String,
    /// Its file; a relative path is taken from the main database's directory.
    pub file: PathBuf,
    /// Page size of the file when it is created (bytes; a power of two, 512 to 65,536).
    pub page_size: u32,
}

impl Attached {
    fn check(&self) -> Result<()> {
        let s = &self.schema;
        let ident = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident || s.eq_ignore_ascii_case("main") || s.eq_ignore_ascii_case("temp") {
            return Err(Error::InvalidKey(format!("{s:?} cannot name an attached database")));
        }
        if !(512..=65536).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return Err(Error::InvalidKey(format!("{} is not an SQLite page size", self.page_size)));
        }
        Ok(())
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            statement_cache: 128,
            readers: 4,
            wal_restart_bytes: WAL_RESTART_BYTES,
            writer_cache_bytes: WRITER_CACHE_BYTES,
            attached: Vec::new(),
        }
    }
}

/// A schema migration an upper layer registers. Ids are applied once, in the order given, each
/// in its own transaction; an id already applied is skipped.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Unique, stable id, conventionally `"<crate>/<nnnn>_<name>"`.
    pub id: &'static str,
    /// The SQL to run (may hold several statements).
    pub sql: &'static str,
}

/// An SQLite database in WAL mode with FTS5 and JSON1 available.
pub struct Sqlite {
    path: PathBuf,
    /// The attached databases: (schema, file).
    attached: Vec<(String, PathBuf)>,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    /// Set when the WAL should start over at the writer's next transaction.
    rewind: Arc<AtomicBool>,
    _checkpointer: Checkpointer,
}

/// A thread that checkpoints the WAL every [`CHECKPOINT_EVERY`] (PASSIVE: never blocks
/// writers or readers), stopped and joined when the database is dropped.
///
/// SQLite starts the WAL over only when a write transaction begins with every frame already in
/// the database. Under continuous writes (a long build, a bulk import) the background
/// checkpoint never catches up with the newest frame before the next transaction begins, so
/// the file would grow without bound: measured at 13 GB after 4 minutes of back-to-back write
/// transactions, where a RESTART checkpoint from this thread never got the writer's lock in
/// its busy timeout (and, when it does, holds writers back while readers finish). So once the
/// WAL holds more than [`SqliteConfig::wal_restart_bytes`] this thread only raises a flag; the writer, before
/// its next transaction, checkpoints the few frames written since (PASSIVE, from its own
/// connection, waiting for nobody), and that transaction starts the WAL over (the file is cut
/// back to `journal_size_limit`). Readers still on older frames make it wait for a later
/// transaction.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Page size of a database created here (bytes; SQLite's default is 4,096).
const NEW_PAGE_SIZE: i64 = 1024;

/// How often the background checkpoint runs.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The writer's page cache unless configured otherwise. Live views change rows all over their
/// B-trees, and a change on a million-row view read pages from the OS through the 2 MiB of
/// SQLite's default cache at every level of every tree; measured in `docs/benchmarks.md`.
pub(crate) const WRITER_CACHE_BYTES: u64 = 64 << 20;

/// WAL size past which the WAL starts over (bounds its disk use), unless configured otherwise.
pub(crate) const WAL_RESTART_BYTES: u64 = 64 << 20;

impl Checkpointer {
    fn start(path: &Path, cfg: &SqliteConfig, attached: &[(String, PathBuf)], rewind: Arc<AtomicBool>) -> Result<Self> {
        let conn = Connection::open(path)?;
        configure(&conn, cfg)?;
        attach(&conn, attached)?;
        // (schema, page size) of each database.
        let schemas = schemas(attached)
            .into_iter()
            .map(|s| {
                let size = conn.query_row(&format!("PRAGMA {s}.page_size"), [], |r| r.get::<_, i64>(0))?;
                Ok((s, size.max(0) as u64))
            })
            .collect::<Result<Vec<_>>>()?;
        let limit = cfg.wal_restart_bytes;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
            // Runs until the sender is dropped (recv_timeout then reports Disconnected).
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                for (schema, page_size) in &schemas {
                    match checkpoint(&conn, schema) {
                        Ok((_, frames, _)) if frames.max(0) as u64 * page_size > limit => {
                            rewind.store(true, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(schema, "sqlite checkpoint: {e}"),
                    }
                }
            }
            // A final full checkpoint so a clean shutdown leaves small WALs.
            for (schema, _) in &schemas {
                let _ = conn.query_row(&format!("PRAGMA {schema}.wal_checkpoint(TRUNCATE)"), [], |_| Ok(()));
            }
        })?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A PASSIVE checkpoint of one database: (busy, frames in its WAL, frames checkpointed). Each
/// database is named: the pragma without a schema checkpoints them all but reports only the
/// first.
fn checkpoint(conn: &Connection, schema: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA {schema}.wal_checkpoint(PASSIVE)"), [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })
}

/// The schema names of the main database and the attached ones.
fn schemas(attached: &[(String, PathBuf)]) -> Vec<String> {
    std::iter::once("main".to_string()).chain(attached.iter().map(|(s, _)| s.clone())).collect()
}

/// Attaches the databases to a connection (the schema names were checked).
fn attach(conn: &Connection, attached: &[(String, PathBuf)]) -> Result<()> {
    for (schema, file) in attached {
        let file = file.to_str().ok_or_else(|| Error::InvalidKey(format!("{} is not UTF-8", file.display())))?;
        conn.execute(&format!("ATTACH DATABASE ?1 AS {schema}"), [file])?;
    }
    Ok(())
}

fn configure(conn: &Connection, cfg: &SqliteConfig) -> Result<()> {
    conn.busy_timeout(cfg.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(cfg.statement_cache);
    // Plans do not depend on bound values: otherwise SQLite prepares a cached statement again
    // whenever a bound integer moves in or out of -1..=1 (it reads such a comparison as a
    // truth test), which a statement run for account number 1 and then for others does at
    // every run; measured at nearly half the time of a timeline read. The node keeps no
    // sqlite_stat4 samples, the other thing bound values are planned by.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", cfg.synchronous.pragma())?;
    Ok(())
}

impl Sqlite {
    /// Opens (creating if missing) the database file at `path`.
    ///
    /// The file is made readable by its owner only (0600) before SQLite opens it: SQLite gives
    /// the `-wal` and `-shm` files it creates the database file's mode. An existing database
    /// and its `-wal`/`-shm` files open to others are restricted too.
    pub fn open(path: impl AsRef<Path>, cfg: &SqliteConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        restrict_files(&path)?;
        let mut attached = Vec::new();
        for a in &cfg.attached {
            a.check()?;
            let file = match a.file.is_absolute() {
                true => a.file.clone(),
                false => path.parent().unwrap_or(Path::new(".")).join(&a.file),
            };
            if attached.iter().any(|(s, _): &(String, PathBuf)| s.eq_ignore_ascii_case(&a.schema)) {
                return Err(Error::InvalidKey(format!("{:?} is attached twice", a.schema)));
            }
            restrict_files(&file)?;
            attached.push((a.schema.clone(), file));
        }
        let writer = Connection::open(&path)?;
        // A new database gets small pages: a commit dirties a page in each of several tables
        // and indexes, and WAL mode writes every dirty page whole (measured with 8 writers:
        // ~20% less CPU per createRecord with 1 KiB pages than with 4 KiB). An existing
        // database keeps the page size it was made with.
        let pages: i64 = writer.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        if pages == 0 {
            writer.pragma_update(None, "page_size", NEW_PAGE_SIZE)?;
        }
        let mode: String = writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "sqlite did not switch to WAL");
        }
        configure(&writer, cfg)?;
        attach(&writer, &attached)?;
        for a in &cfg.attached {
            let s = &a.schema;
            let pages: i64 = writer.query_row(&format!("PRAGMA {s}.page_count"), [], |r| r.get(0))?;
            if pages == 0 {
                writer.pragma_update(Some(s.as_str()), "page_size", a.page_size)?;
            }
            let mode: String = writer.pragma_update_and_check(Some(s.as_str()), "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(schema = %s, mode, "sqlite did not switch an attached database to WAL");
            }
            writer.pragma_update(Some(s.as_str()), "synchronous", cfg.synchronous.pragma())?;
        }
        for schema in schemas(&attached) {
            if cfg.writer_cache_bytes > 0 {
                // Negative: KiB rather than pages.
                let kib = (cfg.writer_cache_bytes >> 10).clamp(1, i64::MAX as u64) as i64;
                writer.pragma_update(Some(schema.as_str()), "cache_size", -kib)?;
            }
            let limit = cfg.wal_restart_bytes.min(i64::MAX as u64) as i64;
            writer.pragma_update(Some(schema.as_str()), "journal_size_limit", limit)?;
        }
        // Checkpoints run on a background connection (below), not inside a writer's commit,
        // where they would stall that commit behind an fsync of the WAL.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let rewind = Arc::new(AtomicBool::new(false));
        let checkpointer = Checkpointer::start(&path, cfg, &attached, rewind.clone())?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let readers = (0..cfg.readers.max(1))
            .map(|_| {
                let conn = Connection::open_with_flags(&path, flags)?;
                configure(&conn, cfg)?;
                attach(&conn, &attached)?;
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { path, attached, writer: Mutex::new(writer), readers, rewind, _checkpointer: checkpointer })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies the migrations not applied yet, in order. Returns how many ran.
    pub fn migrate(&self, migrations: &[Migration]) -> Result<usize> {
        let mut conn = self.writer.lock();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _ues_migrations (
                id TEXT PRIMARY KEY, applied_at INTEGER NOT NULL DEFAULT (unixepoch()))",
        )?;
        let mut ran = 0;
        for m in migrations {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let done: bool =
                tx.query_row("SELECT EXISTS(SELECT 1 FROM _ues_migrations WHERE id = ?1)", [m.id], |r| r.get(0))?;
            if done {
                continue;
            }
            let fail = |source| Error::Migration { id: m.id.to_string(), source };
            tx.execute_batch(m.sql).map_err(fail)?;
            tx.execute("INSERT INTO _ues_migrations (id) VALUES (?1)", [m.id]).map_err(fail)?;
            tx.commit()?;
            tracing::info!(id = m.id, "sqlite migration applied");
            ran += 1;
        }
        Ok(ran)
    }

    /// Runs `f` in an immediate write transaction, committed when `f` returns `Ok` and rolled
    /// back otherwise.
    pub fn write<T, E>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error>,
    {
        let mut conn = self.writer.lock();
        if self.rewind.load(Ordering::Relaxed) {
            self.rewind_wal(&conn);
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(Error::from)?;
        Ok(out)
    }

    /// Copies the WAL's frames into the database from the writer's connection, between its
    /// transactions, so that the next one starts the WAL over (see [`Checkpointer`]).
    fn rewind_wal(&self, conn: &Connection) {
        let started = std::time::Instant::now();
        let mut all = true;
        for schema in schemas(&self.attached) {
            match checkpoint(conn, &schema) {
                Ok((0, frames, done)) if frames == done => {
                    tracing::debug!(
                        schema,
                        frames,
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "sqlite WAL starts over"
                    );
                }
                // The background checkpoint is running, or readers hold older frames: next time.
                Ok(_) => all = false,
                Err(e) => {
                    all = false;
                    tracing::warn!(schema, "sqlite checkpoint (writer): {e}");
                }
            }
        }
        if all {
            self.rewind.store(false, Ordering::Relaxed);
        }
    }

    /// Rewrites the database into fresh pages (`VACUUM`) and folds the WAL into it (then empty),
    /// so that no copy of deleted or overwritten content stays in free pages or old WAL frames.
    /// Takes time proportional to the database: for rare maintenance (a one-time migration).
    pub fn compact(&self) -> Result<()> {
        let conn = self.writer.lock();
        conn.execute_batch("VACUUM")?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The attached databases: (schema, file).
    pub fn attached(&self) -> &[(String, PathBuf)] {
        &self.attached
    }

    /// Bytes of the database file and of its write-ahead log.
    pub fn file_bytes(&self) -> (u64, u64) {
        sizes(&self.path)
    }

    /// Bytes of each attached database's file and write-ahead log: (schema, file, WAL).
    pub fn attached_bytes(&self) -> Vec<(String, u64, u64)> {
        self.attached
            .iter()
            .map(|(s, f)| {
                let (db, wal) = sizes(f);
                (s.clone(), db, wal)
            })
            .collect()
    }

    /// Writes a consistent copy of the database to `path` (a new file) from a reader's
    /// snapshot: writers go on meanwhile, and the copy holds exactly the transactions committed
    /// before it began.
    pub fn snapshot_to(&self, path: &Path) -> Result<()> {
        let path = path.to_str().ok_or_else(|| Error::InvalidKey(format!("{} is not UTF-8", path.display())))?;
        self.read(|c| c.execute("VACUUM INTO ?1", [path]))?;
        Ok(())
    }

    /// Runs `f` on a reader connection (a consistent snapshot per statement, or per explicit
    /// transaction inside `f`).
    pub fn read<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E> {
        // Take a free reader if there is one; otherwise wait on one chosen by thread.
        for slot in &self.readers {
            if let Some(conn) = slot.try_lock() {
                return f(&conn);
            }
        }
        let i = thread_slot() % self.readers.len();
        let conn = self.readers[i].lock();
        f(&conn)
    }
}

/// Creates the database file (empty, mode 0600) when it is missing, and takes group and
/// others' access off the file and its `-wal`/`-shm` companions when present.
fn restrict_files(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // An empty file is an empty SQLite database.
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(FILE_MODE).open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() && owner_only(&p)? {
            tracing::warn!(path = %p.display(), "sqlite file was open to other users; now mode 0600");
        }
    }
    Ok(())
}

/// Bytes of a database file and of its write-ahead log.
fn sizes(path: &Path) -> (u64, u64) {
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    (len(path), len(Path::new(&wal)))
}

fn thread_slot() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &tempfile::TempDir) -> Sqlite {
        Sqlite::open(dir.path().join("t.sqlite"), &SqliteConfig::default()).unwrap()
    }

    const MIGRATIONS: &[Migration] = &[
        Migration { id: "test/0001_notes", sql: "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);" },
        Migration {
            id: "test/0002_fts",
            sql: "CREATE VIRTUAL TABLE notes_fts USING fts5(body, content='notes', content_rowid='id');",
        },
    ];

    #[test]
    fn migrations_run_once_and_fts5_json1_work() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        assert_eq!(db.migrate(MIGRATIONS).unwrap(), 2);
        assert_eq!(db.migrate(MIGRATIONS).unwrap(), 0);
        db.write(|tx| {
            for (i, body) in ["the quick brown fox", "lazy dogs sleep", "quick thinking"].iter().enumerate() {
                tx.execute("INSERT INTO notes (id, body) VALUES (?1, ?2)", (i as i64 + 1, body))?;
                tx.execute("INSERT INTO notes_fts (rowid, body) VALUES (?1, ?2)", (i as i64 + 1, body))?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        let hits: Vec<i64> = db
            .read(|c| {
                let mut st =
                    c.prepare_cached("SELECT rowid FROM notes_fts WHERE notes_fts MATCH ?1 ORDER BY bm25(notes_fts)")?;
                let rows = st.query_map(["quick"], |r| r.get(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
                Ok::<_, rusqlite::Error>(rows)
            })
            .unwrap();
        assert_eq!(hits.len(), 2);
        let v: String = db
            .read(|c| {
                c.query_row("SELECT json_extract('{\"a\":[1,2]}', '$.a[1]')", [], |r| {
                    r.get::<_, i64>(0).map(|n| n.to_string())
                })
            })
            .unwrap();
        assert_eq!(v, "2");
        let mode: String = db.read(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0))).unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
    }

    #[test]
    fn new_databases_get_small_pages_and_existing_ones_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let page_size = |db: &Sqlite| db.read(|c| c.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))).unwrap();
        let fresh = db(&dir);
        fresh.migrate(MIGRATIONS).unwrap();
        assert_eq!(page_size(&fresh), NEW_PAGE_SIZE);
        drop(fresh);
        assert_eq!(page_size(&db(&dir)), NEW_PAGE_SIZE, "reopened");
        // A database made elsewhere with SQLite's default pages keeps them, data and all.
        let old_path = dir.path().join("old.sqlite");
        let old = rusqlite::Connection::open(&old_path).unwrap();
        old.execute_batch("PRAGMA page_size = 4096; CREATE TABLE t (x); INSERT INTO t VALUES (7);").unwrap();
        drop(old);
        let reopened = Sqlite::open(&old_path, &SqliteConfig::default()).unwrap();
        assert_eq!(page_size(&reopened), 4096);
        assert_eq!(reopened.read(|c| c.query_row("SELECT x FROM t", [], |r| r.get::<_, i64>(0))).unwrap(), 7);
    }

    #[test]
    fn database_and_its_wal_and_shm_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |suffix: &str| {
            let p = dir.path().join(format!("t.sqlite{suffix}"));
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        };
        let db = db(&dir);
        db.migrate(MIGRATIONS).unwrap();
        db.write(|tx| tx.execute("INSERT INTO notes (body) VALUES ('x')", []).map_err(Error::from)).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(suffix), 0o600, "t.sqlite{suffix}");
        }
        drop(db);
        // A database left open to others (an older node's) is restricted when opened.
        let main = dir.path().join("t.sqlite");
        std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o644)).unwrap();
        let db = self::db(&dir);
        assert_eq!(mode(""), 0o600);
        let n: i64 = db.read(|c| c.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))).unwrap();
        assert_eq!(n, 1, "data kept");
    }

    #[test]
    fn failed_write_rolls_back_and_bad_migration_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        db.migrate(&MIGRATIONS[..1]).unwrap();
        let r: Result<(), Error> = db.write(|tx| {
            tx.execute("INSERT INTO notes (id, body) VALUES (1, 'kept?')", [])?;
            Err(Error::Injected { op: "test" })
        });
        assert!(r.is_err());
        let n: i64 = db.read(|c| c.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))).unwrap();
        assert_eq!(n, 0);
        let bad = [Migration { id: "test/0003_bad", sql: "CREATE TABLE oops (;" }];
        assert!(matches!(db.migrate(&bad), Err(Error::Migration { .. })));
        assert_eq!(db.migrate(&MIGRATIONS[..1]).unwrap(), 0);
    }

    /// Back-to-back write transactions (no pause between them for the background checkpoint
    /// to catch up) still get the WAL started over, its file cut back, again and again.
    /// Writes back-to-back transactions for 3 s (several background checkpoint periods, at
    /// whatever rate this machine writes), each replacing one of `rows` rows of table `b` with
    /// `size` bytes; returns the bytes written and how many times `wal` (the WAL's size) fell.
    fn write_for_3_s(db: &Sqlite, size: usize, rows: i64, wal: impl Fn(&Sqlite) -> u64) -> (u64, u32) {
        let blob = vec![7u8; size];
        let started = std::time::Instant::now();
        let (mut written, mut last, mut cut) = (0u64, 0u64, 0);
        for i in 0..1_000_000i64 {
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
            db.write(|tx| {
                tx.execute("INSERT OR REPLACE INTO b (id, v) VALUES (?1, ?2)", rusqlite::params![i % rows, blob])?;
                Ok::<_, Error>(())
            })
            .unwrap();
            written += blob.len() as u64;
            let now = wal(db);
            if now < last {
                cut += 1;
            }
            last = now;
        }
        (written, cut)
    }

    #[test]
    fn wal_starts_over_under_continuous_writes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            SqliteConfig { synchronous: Synchronous::Off, wal_restart_bytes: 256 << 10, ..SqliteConfig::default() };
        let db = Sqlite::open(dir.path().join("w.sqlite"), &cfg).unwrap();
        db.migrate(&[Migration { id: "test/0001_blobs", sql: "CREATE TABLE b (id INTEGER PRIMARY KEY, v BLOB)" }])
            .unwrap();
        let (written, cut) = write_for_3_s(&db, 1 << 10, 500, |db| db.file_bytes().1);
        assert!(written > 2 << 20, "too little written to tell: {written} bytes");
        assert!(cut >= 2, "the WAL started over {cut} times in 3 s, {written} bytes written");
    }

    #[test]
    fn attached_databases_keep_their_page_size_and_their_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let attached = vec![Attached { schema: "side".into(), file: "side.sqlite".into(), page_size: 4096 }];
        let cfg = SqliteConfig {
            synchronous: Synchronous::Off,
            wal_restart_bytes: 256 << 10,
            attached: attached.clone(),
            ..SqliteConfig::default()
        };
        let db = Sqlite::open(dir.path().join("m.sqlite"), &cfg).unwrap();
        let side = dir.path().join("side.sqlite");
        assert_eq!(db.attached(), &[("side".to_string(), side.clone())]);
        db.migrate(&[Migration {
            id: "test/0001_both",
            sql: "CREATE TABLE main.a (x INTEGER); CREATE TABLE side.b (id INTEGER PRIMARY KEY, v BLOB);",
        }])
        .unwrap();
        let pragma = |q: &str| {
            db.read(|c| c.query_row(q, [], |r| r.get::<_, rusqlite::types::Value>(0))).map(|v| match v {
                rusqlite::types::Value::Integer(n) => n.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
        };
        let pragma = |q: &str| pragma(q).unwrap();
        assert_eq!(pragma("PRAGMA main.page_size"), NEW_PAGE_SIZE.to_string());
        assert_eq!(pragma("PRAGMA side.page_size"), "4096");
        assert_eq!(pragma("PRAGMA side.journal_mode").to_lowercase(), "wal");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&side).unwrap().permissions().mode() & 0o777, 0o600);
        // One transaction writes both; readers see the attached tables unqualified.
        db.write(|tx| {
            tx.execute("INSERT INTO a (x) VALUES (1)", [])?;
            tx.execute("INSERT INTO b (id, v) VALUES (1, x'00')", [])?;
            Ok::<_, Error>(())
        })
        .unwrap();
        let n: i64 = db.read(|c| c.query_row("SELECT count(*) FROM a, b", [], |r| r.get(0))).unwrap();
        assert_eq!(n, 1);
        // Continuous writes to the attached database: its WAL starts over too.
        let wal = {
            let mut p = side.clone().into_os_string();
            p.push("-wal");
            PathBuf::from(p)
        };
        let (written, cut) = write_for_3_s(&db, 4 << 10, 200, |_| std::fs::metadata(&wal).map_or(0, |m| m.len()));
        assert!(written > 2 << 20, "too little written to tell: {written} bytes");
        assert!(cut >= 2, "the attached WAL started over {cut} times in 3 s, {written} bytes written");
        drop(db);
        // Opened again: the same file, its rows kept.
        let db = Sqlite::open(dir.path().join("m.sqlite"), &cfg).unwrap();
        let n: i64 = db.read(|c| c.query_row("SELECT count(*) FROM side.b", [], |r| r.get(0))).unwrap();
        assert!(n >= 1);
    }

    #[test]
    fn attached_databases_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let open = |schema: &str, page_size: u32| {
            let a = Attached { schema: schema.into(), file: format!("{schema}x.sqlite").into(), page_size };
            Sqlite::open(dir.path().join("m.sqlite"), &SqliteConfig { attached: vec![a], ..SqliteConfig::default() })
                .map(|_| ())
        };
        for bad in ["main", "TEMP", "", "1x", "a;b", "a b", "x.y"] {
            assert!(open(bad, 4096).is_err(), "schema {bad:?} was accepted");
        }
        for size in [0, 100, 3000, 1 << 17] {
            assert!(open("ok", size).is_err(), "page size {size} was accepted");
        }
        open("ok_1", 4096).unwrap();
        let twice = SqliteConfig {
            attached: vec![
                Attached { schema: "d".into(), file: "d1.sqlite".into(), page_size: 4096 },
                Attached { schema: "D".into(), file: "d2.sqlite".into(), page_size: 4096 },
            ],
            ..SqliteConfig::default()
        };
        assert!(Sqlite::open(dir.path().join("m2.sqlite"), &twice).is_err());
    }
}
