//! Blobs of hosted accounts: uploads with size and MIME limits, streamed reads, the references
//! records hold (kept by [`crate::accounts::Accounts`] in `record_blob`), listings for sync, and
//! garbage collection of blobs no record references once their grace period has passed.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use ues_ipld::json::BlobRef;
use ues_ipld::storage::rusqlite::{OptionalExtension, params};
use ues_ipld::storage::{BlobPlace, BlobReader, BlobUpload, Blobs, Blockstore, Kv, Objects, Sqlite};

use crate::syntax::Did;

/// Limits on uploads.
#[derive(Debug, Clone)]
pub struct BlobLimits {
    /// Largest blob accepted, in bytes (default 100 MB: large enough for video).
    pub max_size: u64,
    /// Accepted MIME patterns (`*/*`, `image/*`, `video/mp4`).
    pub accept: Vec<String>,
    /// Bytes of blobs one account may hold in all (referenced or not yet).
    pub quota: u64,
}

impl Default for BlobLimits {
    fn default() -> Self {
        Self { max_size: 100 * 1000 * 1000, accept: vec!["*/*".into()], quota: 10 << 30 }
    }
}

/// Why a blob operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Over the size limit.
    #[error("blob is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// A MIME type the node does not accept.
    #[error("MIME type {0} is not accepted")]
    MimeType(String),
    /// The account's blobs would exceed its quota.
    #[error("the account's blobs would exceed its quota of {quota} bytes")]
    QuotaExceeded {
        /// The quota.
        quota: u64,
    },
    /// Bytes copied from another node are not the blob they were to be.
    #[error("the bytes received are not blob {0}")]
    ContentMismatch(Cid),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] ues_ipld::storage::Error),
}

impl From<ues_ipld::storage::rusqlite::Error> for BlobError {
    fn from(e: ues_ipld::storage::rusqlite::Error) -> Self {
        BlobError::Storage(e.into())
    }
}

fn mime_ok(accept: &[String], mime: &str) -> bool {
    accept
        .iter()
        .any(|p| p == "*/*" || p == mime || p.strip_suffix("/*").is_some_and(|pre| mime.split('/').next() == Some(pre)))
}

fn too_large(e: ues_ipld::storage::Error) -> BlobError {
    match e {
        ues_ipld::storage::Error::TooLarge { limit, .. } => BlobError::TooLarge { limit },
        e => BlobError::Storage(e),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The blob side of the account store.
pub struct BlobStore<B, K> {
    blobs: Blobs<B, K>,
    db: Arc<Sqlite>,
    limits: BlobLimits,
}

impl<B: Blockstore, K: Kv> BlobStore<B, K> {
    /// Blob storage over `blocks` (chunks) and `index` (blob -> manifest), with metadata in `db`
    /// (the account store's database, whose migrations create the tables).
    pub fn new(blocks: B, index: K, db: Arc<Sqlite>, limits: BlobLimits) -> Self {
        Self { blobs: Blobs::new(blocks, index), db, limits }
    }

    /// Adds an object store (S3): blobs held there can be read, and new blobs go to `write_to`.
    /// Uploads a crash cut off in the middle are aborted now.
    pub fn with_objects(mut self, objects: Arc<dyn Objects>, write_to: BlobPlace) -> Result<Self, BlobError> {
        self.blobs = self.blobs.with_objects(objects, write_to);
        match self.blobs.sweep_staging(Duration::ZERO) {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "uploads to the object store cut off by a stop were aborted"),
            // Unreachable now, perhaps for a while: the daily sweep tries again.
            Err(e) => tracing::warn!(error = %e, "the object store did not answer the sweep of cut-off uploads"),
        }
        Ok(self)
    }

    /// Where new blobs go.
    pub fn write_place(&self) -> BlobPlace {
        self.blobs.write_place()
    }

    /// The object store, if there is one.
    pub fn objects(&self) -> Option<&Arc<dyn Objects>> {
        self.blobs.objects()
    }

    /// Every blob held (for any account), with its size and place.
    pub fn stored(&self) -> Result<Vec<(Cid, u64, BlobPlace)>, BlobError> {
        Ok(self.blobs.stored()?)
    }

    /// Moves blob `cid` to `to`, checking the copy by its CID before the old one goes.
    /// Returns whether it moved.
    pub fn relocate(&self, cid: &Cid, to: BlobPlace) -> Result<bool, BlobError> {
        Ok(self.blobs.relocate(cid, to)?)
    }

    /// Streams an upload into the store for `did`. Until a record references it, the blob is
    /// temporary and [`BlobStore::gc`] removes it after the grace period.
    pub fn upload(&self, did: &Did, mime_type: &str, body: &mut dyn Read) -> Result<BlobRef, BlobError> {
        if !mime_ok(&self.limits.accept, mime_type) {
            return Err(BlobError::MimeType(mime_type.to_string()));
        }
        let limit = self.room(did)?;
        let info = self.blobs.put(body, limit).map_err(|e| self.too_large(e, limit))?;
        self.record(did, mime_type, &info)
    }

    /// How large `did`'s next upload may be: the size limit, or what is left of its quota.
    fn room(&self, did: &Did) -> Result<u64, BlobError> {
        let room = self.limits.quota.saturating_sub(self.usage(did)?);
        if room == 0 {
            return Err(BlobError::QuotaExceeded { quota: self.limits.quota });
        }
        Ok(self.limits.max_size.min(room))
    }

    /// A size refusal, as the limit that caused it: the quota's, or the size limit.
    fn too_large(&self, e: ues_ipld::storage::Error, limit: u64) -> BlobError {
        match e {
            ues_ipld::storage::Error::TooLarge { .. } if limit < self.limits.max_size => {
                BlobError::QuotaExceeded { quota: self.limits.quota }
            }
            e => too_large(e),
        }
    }

    /// Bytes of blobs `did` holds.
    pub fn usage(&self, did: &Did) -> Result<u64, BlobError> {
        let n: i64 = self.db.read(|c| {
            c.prepare_cached("SELECT COALESCE(SUM(size), 0) FROM blob WHERE did = ?1")?
                .query_row([did.as_str()], |r| r.get(0))
        })?;
        Ok(n.max(0) as u64)
    }

    /// Begins an upload for `did` whose bytes arrive a piece at a time ([`BlobStore::append`],
    /// then [`BlobStore::finish_upload`], or [`BlobStore::abort_upload`]); refuses a MIME type
    /// the node does not accept, or an account at its quota, at once.
    pub fn begin_upload(&self, did: &Did, mime_type: &str) -> Result<BlobUpload, BlobError> {
        if !mime_ok(&self.limits.accept, mime_type) {
            return Err(BlobError::MimeType(mime_type.to_string()));
        }
        Ok(self.blobs.begin(self.room(did)?)?)
    }

    /// Adds bytes to an upload ([`BlobError::TooLarge`] or [`BlobError::QuotaExceeded`] past
    /// its limit; the upload is then to be aborted).
    pub fn append(&self, upload: &mut BlobUpload, data: &[u8]) -> Result<(), BlobError> {
        let limit = upload.limit();
        self.blobs.append(upload, data).map_err(|e| self.too_large(e, limit))
    }

    /// Gives up an upload: what it stored is released.
    pub fn abort_upload(&self, upload: BlobUpload) {
        self.blobs.abort(upload);
    }

    /// Completes an upload as a (temporary, until referenced) blob of `did`.
    pub fn finish_upload(&self, did: &Did, mime_type: &str, upload: BlobUpload) -> Result<BlobRef, BlobError> {
        let info = self.blobs.finish(upload).map_err(too_large)?;
        self.record(did, mime_type, &info)
    }

    fn record(&self, did: &Did, mime_type: &str, info: &ues_ipld::storage::BlobInfo) -> Result<BlobRef, BlobError> {
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO blob (did, cid, mime_type, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (did, cid) DO NOTHING",
                params![did.as_str(), info.cid.to_string(), mime_type, info.size as i64, now_ms()],
            )?;
            Ok::<_, BlobError>(())
        })?;
        Ok(BlobRef { cid: info.cid, mime_type: mime_type.to_string(), size: Some(info.size) })
    }

    /// A blob of `did` as a seekable stream, with its MIME type.
    pub fn open(&self, did: &Did, cid: &Cid) -> Result<Option<(String, BlobReader<'_, B>)>, BlobError> {
        let mime: Option<String> = self.db.read(|c| {
            c.prepare_cached("SELECT mime_type FROM blob WHERE did = ?1 AND cid = ?2")?
                .query_row(params![did.as_str(), cid.to_string()], |r| r.get(0))
                .optional()
        })?;
        let Some(mime) = mime else { return Ok(None) };
        Ok(self.blobs.open(cid)?.map(|r| (mime, r)))
    }

    /// Bytes `start..end` of a blob of `did` as one stream, when the blob is in the object
    /// store (`Ok(None)` otherwise: [`BlobStore::open`] reads it).
    pub fn object_stream(
        &self,
        did: &Did,
        cid: &Cid,
        start: u64,
        end: u64,
    ) -> Result<Option<Box<dyn Read + Send>>, BlobError> {
        let held: bool = self.db.read(|c| {
            c.prepare_cached("SELECT EXISTS(SELECT 1 FROM blob WHERE did = ?1 AND cid = ?2)")?
                .query_row(params![did.as_str(), cid.to_string()], |r| r.get(0))
        })?;
        if !held {
            return Ok(None);
        }
        Ok(self.blobs.object_stream(cid, start, end)?)
    }

    /// CIDs of `did`'s blobs that records reference, after `cursor`, in CID order.
    pub fn list(&self, did: &Did, cursor: Option<&str>, limit: usize) -> Result<Vec<String>, BlobError> {
        Ok(self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT cid FROM record_blob WHERE did = ?1 AND (?2 IS NULL OR cid > ?2)
                 AND cid IN (SELECT cid FROM blob WHERE did = ?1) ORDER BY cid LIMIT ?3",
            )?;
            let rows = st.query_map(params![did.as_str(), cursor, limit as i64], |r| r.get(0))?;
            rows.collect::<Result<Vec<String>, _>>()
        })?)
    }

    /// How many blobs `did`'s records reference that this node does not hold.
    pub fn missing_count(&self, did: &Did) -> Result<u64, BlobError> {
        let n: i64 = self.db.read(|c| {
            c.prepare_cached(
                "SELECT count(DISTINCT rb.cid) FROM record_blob rb WHERE rb.did = ?1
                 AND NOT EXISTS (SELECT 1 FROM blob b WHERE b.did = rb.did AND b.cid = rb.cid)",
            )?
            .query_row([did.as_str()], |r| r.get(0))
        })?;
        Ok(n.max(0) as u64)
    }

    /// Blobs `did`'s records reference that this node does not hold: (blob CID, record path).
    pub fn missing(&self, did: &Did, limit: usize) -> Result<Vec<(String, String)>, BlobError> {
        Ok(self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT rb.cid, MIN(rb.path) FROM record_blob rb WHERE rb.did = ?1
                 AND NOT EXISTS (SELECT 1 FROM blob b WHERE b.did = rb.did AND b.cid = rb.cid)
                 GROUP BY rb.cid ORDER BY rb.cid LIMIT ?2",
            )?;
            let rows = st.query_map(params![did.as_str(), limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<Vec<_>, _>>()
        })?)
    }

    /// Up to `max` bytes of `did`'s blob from `offset` on, with its MIME type and size (for a
    /// device of the account copying it); `None` when `did` holds no such blob here.
    pub fn read_piece(
        &self,
        did: &Did,
        cid: &Cid,
        offset: u64,
        max: usize,
    ) -> Result<Option<(String, u64, Vec<u8>)>, BlobError> {
        use std::io::{Seek, SeekFrom};
        let Some((mime, mut r)) = self.open(did, cid)? else { return Ok(None) };
        let size = r.size();
        let n = size.saturating_sub(offset).min(max as u64) as usize;
        let mut out = vec![0; n];
        r.seek(SeekFrom::Start(offset)).map_err(ues_ipld::storage::Error::Io)?;
        r.read_exact(&mut out).map_err(ues_ipld::storage::Error::Io)?;
        Ok(Some((mime, size, out)))
    }

    /// Whether this node holds the content of blob `cid` (for any account).
    pub fn holds_content(&self, cid: &Cid) -> Result<bool, BlobError> {
        Ok(self.blobs.info(cid)?.is_some())
    }

    /// Takes `cid` as a blob of `did` without its bytes travelling, when this node already
    /// holds the content (another account's copy). Returns whether it did.
    pub fn adopt(&self, did: &Did, mime_type: &str, cid: &Cid) -> Result<bool, BlobError> {
        let Some(info) = self.blobs.info(cid)? else { return Ok(false) };
        if info.size > self.room(did)? {
            return Err(BlobError::QuotaExceeded { quota: self.limits.quota });
        }
        self.record(did, mime_type, &info)?;
        Ok(true)
    }

    /// Begins copying a blob of `did` from another node, going on from `chunks` a copy cut
    /// off earlier stored (released and started afresh when they no longer read back). The
    /// size limit and the account's quota bound it as they bound uploads.
    pub fn begin_copy(&self, did: &Did, chunks: &[Cid]) -> Result<BlobUpload, BlobError> {
        let limit = self.room(did)?;
        if chunks.is_empty() {
            return Ok(self.blobs.begin(limit)?);
        }
        match self.blobs.resume(limit, chunks) {
            Ok(up) => Ok(up),
            Err(e) => {
                tracing::warn!(%did, chunks = chunks.len(), error = %e, "a cut-off blob copy starts afresh");
                self.blobs.release_chunks(chunks)?;
                Ok(self.blobs.begin(limit)?)
            }
        }
    }

    /// Releases the chunks of a copy that will not go on.
    pub fn drop_copy(&self, chunks: &[Cid]) -> Result<(), BlobError> {
        Ok(self.blobs.release_chunks(chunks)?)
    }

    /// Completes a copy as blob `cid` of `did` (referenced already: records name it). Bytes
    /// of another hash are refused ([`BlobError::ContentMismatch`]) and leave nothing.
    pub fn finish_copy(&self, did: &Did, mime_type: &str, upload: BlobUpload, cid: &Cid) -> Result<BlobRef, BlobError> {
        let info = self.blobs.finish_expecting(upload, cid).map_err(|e| match e {
            ues_ipld::storage::Error::Corrupt { cid } => BlobError::ContentMismatch(cid),
            e => too_large(e),
        })?;
        self.record(did, mime_type, &info)
    }

    /// Deletes blobs no record references that are older than `grace`, with their chunks no
    /// other blob holds, or their objects; aborts uploads to the object store abandoned for
    /// a day. Returns how many blobs went.
    pub fn gc(&self, grace: Duration) -> Result<usize, BlobError> {
        const ABANDONED: Duration = Duration::from_secs(24 * 3600);
        if let Err(e) = self.blobs.sweep_staging(ABANDONED) {
            tracing::warn!(error = %e, "abandoned uploads to the object store not swept");
        }
        let cutoff = now_ms() - grace.as_millis() as i64;
        let doomed: Vec<(String, String)> = self.db.read(|c| {
            let mut st = c.prepare(
                "SELECT did, cid FROM blob b WHERE created_at <= ?1
                 AND NOT EXISTS (SELECT 1 FROM record_blob rb WHERE rb.did = b.did AND rb.cid = b.cid)",
            )?;
            let rows = st.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<Vec<_>, _>>()
        })?;
        for (did, cid) in &doomed {
            self.db.write(|tx| {
                tx.execute("DELETE FROM blob WHERE did = ?1 AND cid = ?2", params![did, cid])?;
                Ok::<_, BlobError>(())
            })?;
            // Another account may hold the same content: keep the data while anyone does.
            let still_held: bool = self
                .db
                .read(|c| c.query_row("SELECT EXISTS(SELECT 1 FROM blob WHERE cid = ?1)", [cid], |r| r.get(0)))?;
            if !still_held && let Ok(c) = cid.parse::<Cid>() {
                self.blobs.delete(&c)?;
            }
        }
        Ok(doomed.len())
    }
}
