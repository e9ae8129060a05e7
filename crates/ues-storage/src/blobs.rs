//! Large blobs, addressed by the CID AT Protocol uses for them (CIDv1, raw codec, sha2-256 of
//! the whole content), kept in one of two places:
//!
//! * **On disk**: the bytes are cut into [`CHUNK_SIZE`] chunks, each stored as a BLAKE3 raw
//!   block (so identical chunks of different blobs are stored once), and a manifest block
//!   lists them.
//! * **In an object store** ([`Objects`]: S3 or compatible), as one object `blobs/<cid>`.
//!   Uploads past [`PART_SIZE`] go up as a multipart upload to a staging key while the hash
//!   is computed, and are copied to their key once the CID is known.
//!
//! The index `blob/<cid>` in a [`Kv`] says where each blob is: the manifest's CID, or the
//! object tag and size. Both kinds can be held at once (a store being moved from one to the
//! other, [`Blobs::relocate`]); reads, deletes and garbage collection treat them alike.
//!
//! Manifest layout (version 1): `b"UESM"`, `1u8`, total size `u64` BE, chunk size `u32` BE,
//! chunk count `u32` BE, then per chunk: CID length `u8` and the CID bytes.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use cid::Cid;
use sha2::Digest;

use crate::{BLAKE3, Blockstore, Error, Kv, Objects, RAW, Result, SHA2_256, cid_for, verify_block};

/// Size of every chunk but the last.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Bytes of an upload to an object store held in memory before they go out as one part of a
/// multipart upload; an upload no larger is sent in one request (S3 parts but the last must
/// be at least 5 MiB).
pub const PART_SIZE: usize = 5 << 20;
/// Uploads to the object store under way at once: each holds up to [`PART_SIZE`] in memory.
pub const MAX_OBJECT_UPLOADS: usize = 64;
/// Most bytes fetched by one ranged request when reading a blob from the object store: a
/// read at a random offset fetches the [`CHUNK_SIZE`]-aligned piece around it (so a server
/// streaming a blob piece by piece costs one request a piece), reads in order double it.
const MAX_OBJECT_WINDOW: u64 = 8 << 20;
/// Chunks written per atomic batch.
const BATCH_CHUNKS: usize = 16;
const MAGIC: &[u8; 4] = b"UESM";
const INDEX_PREFIX: &[u8] = b"blob/";
const REFS_PREFIX: &[u8] = b"blobchunk/";
/// Multipart uploads begun and not yet completed or aborted: `blobparts/<staging key>` ->
/// upload id, then the time begun (ms, u64 BE). Swept when their upload was abandoned.
const PARTS_PREFIX: &[u8] = b"blobparts/";
/// An index value naming an object: this tag, then the size (u64 BE). (A manifest CID's bytes
/// start with the CID version, 1.)
const OBJECT_TAG: &[u8] = b"S3";
/// Key prefix of blobs in the object store.
const OBJECT_PREFIX: &str = "blobs/";
/// Key prefix of multipart uploads in progress.
const STAGING_PREFIX: &str = "staging/";

/// Where blobs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPlace {
    /// Chunks in the blockstore.
    Disk,
    /// Objects in the object store.
    Objects,
}

impl std::fmt::Display for BlobPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobPlace::Disk => "disk",
            BlobPlace::Objects => "objects",
        })
    }
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// sha2-256 raw CID of the whole content (the AT Protocol blob CID).
    pub cid: Cid,
    /// Size in bytes.
    pub size: u64,
    /// The manifest block, when the blob is on disk.
    pub manifest: Option<Cid>,
}

struct Manifest {
    size: u64,
    chunk_size: u32,
    chunks: Vec<Cid>,
}

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21 + self.chunks.len() * 37);
        out.extend_from_slice(MAGIC);
        out.push(1);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_be_bytes());
        for c in &self.chunks {
            let b = c.to_bytes();
            out.push(b.len() as u8);
            out.extend_from_slice(&b);
        }
        out
    }

    fn decode(cid: &Cid, bytes: &[u8]) -> Result<Self> {
        let bad = |reason| Error::BadManifest { cid: *cid, reason };
        if bytes.len() < 21 || &bytes[..4] != MAGIC || bytes[4] != 1 {
            return Err(bad("unknown header"));
        }
        let size = u64::from_be_bytes(bytes[5..13].try_into().expect("8"));
        let chunk_size = u32::from_be_bytes(bytes[13..17].try_into().expect("4"));
        let count = u32::from_be_bytes(bytes[17..21].try_into().expect("4")) as usize;
        if chunk_size == 0 || size.div_ceil(chunk_size as u64) != count as u64 {
            return Err(bad("size and chunk count disagree"));
        }
        let mut rest = &bytes[21..];
        let mut chunks = Vec::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            let (&len, tail) = rest.split_first().ok_or(bad("truncated"))?;
            let raw = tail.get(..len as usize).ok_or(bad("truncated"))?;
            chunks.push(Cid::try_from(raw).map_err(|_| bad("chunk is not a CID"))?);
            rest = &tail[len as usize..];
        }
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Self { size, chunk_size, chunks })
    }
}

/// Where the index says a blob is.
enum Location {
    Chunks(Cid, Manifest),
    Object(u64),
}

impl Location {
    fn size(&self) -> u64 {
        match self {
            Location::Chunks(_, m) => m.size,
            Location::Object(size) => *size,
        }
    }
}

fn index_key(cid: &Cid) -> Vec<u8> {
    let mut k = INDEX_PREFIX.to_vec();
    k.extend_from_slice(&cid.to_bytes());
    k
}

fn object_value(size: u64) -> Vec<u8> {
    let mut v = OBJECT_TAG.to_vec();
    v.extend_from_slice(&size.to_be_bytes());
    v
}

/// The object holding blob `cid`.
pub fn object_key(cid: &Cid) -> String {
    format!("{OBJECT_PREFIX}{cid}")
}

fn parts_key(staging: &str) -> Vec<u8> {
    let mut k = PARTS_PREFIX.to_vec();
    k.extend_from_slice(staging.as_bytes());
    k
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A blob being stored a piece at a time ([`Blobs::append`], then [`Blobs::finish`]): the
/// content hash so far and what has been written, with less than one chunk (on disk) or one
/// part (to an object store) held in memory.
pub struct BlobUpload {
    sha: sha2::Sha256,
    chunks: Vec<Cid>,
    pending: Vec<u8>,
    size: u64,
    limit: u64,
    object: Option<ObjectUpload>,
}

/// The object-store side of an upload: its multipart upload, once one is begun.
struct ObjectUpload {
    staging: String,
    multipart: Option<(String, Vec<String>)>,
    slots: Arc<AtomicUsize>,
}

impl Drop for ObjectUpload {
    fn drop(&mut self) {
        self.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl BlobUpload {
    /// An empty upload to disk that may grow to `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { sha: sha2::Sha256::new(), chunks: Vec::new(), pending: Vec::new(), size: 0, limit, object: None }
    }

    /// Bytes added so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The most bytes it may grow to.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The chunks stored so far (every one full: the bytes of a last, partial chunk are held
    /// until more arrive or the upload finishes). None for an upload to an object store.
    pub fn chunks(&self) -> &[Cid] {
        &self.chunks
    }
}

impl std::fmt::Debug for BlobUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobUpload")
            .field("size", &self.size)
            .field("limit", &self.limit)
            .field("object", &self.object.as_ref().map(|o| &o.staging))
            .finish_non_exhaustive()
    }
}

fn refs_key(chunk: &Cid) -> Vec<u8> {
    let mut k = REFS_PREFIX.to_vec();
    k.extend_from_slice(&chunk.to_bytes());
    k
}

/// Blob storage over a blockstore and an index, and optionally an object store.
///
/// Chunks are shared between blobs, so each carries a reference count in the index
/// (`blobchunk/<cid>`). An upload counts its chunks *before* writing them and a deletion drops
/// a chunk only when its count reaches zero, under one short lock: a chunk another upload is
/// writing can never be deleted under it. An upload that fails or is abandoned releases the
/// chunks it counted ([`Blobs::abort`]). A crash can leave a count too high (the chunk leaks),
/// never too low. Chunks stored before counts existed have none and are never dropped.
///
/// With an object store, new blobs go to it ([`Blobs::with_objects`]); an upload that fails or
/// is abandoned aborts its multipart upload, and one a crash cut off is aborted by
/// [`Blobs::sweep_staging`] from the record kept under `blobparts/`.
pub struct Blobs<B, K> {
    blocks: B,
    index: K,
    refs: parking_lot::Mutex<()>,
    objects: Option<Arc<dyn Objects>>,
    write_to: BlobPlace,
    object_uploads: Arc<AtomicUsize>,
}

impl<B: Blockstore, K: Kv> Blobs<B, K> {
    /// Blob storage over `blocks`, indexed in `index`.
    pub fn new(blocks: B, index: K) -> Self {
        Self {
            blocks,
            index,
            refs: parking_lot::Mutex::new(()),
            objects: None,
            write_to: BlobPlace::Disk,
            object_uploads: Arc::default(),
        }
    }

    /// Adds an object store: blobs held there can be read, and new blobs go to `write_to`.
    pub fn with_objects(mut self, objects: Arc<dyn Objects>, write_to: BlobPlace) -> Self {
        self.objects = Some(objects);
        self.write_to = write_to;
        self
    }

    /// Where new blobs go.
    pub fn write_place(&self) -> BlobPlace {
        self.write_to
    }

    /// The object store, if there is one.
    pub fn objects(&self) -> Option<&Arc<dyn Objects>> {
        self.objects.as_ref()
    }

    fn objects_or_err(&self) -> Result<&Arc<dyn Objects>> {
        self.objects.as_ref().ok_or_else(|| Error::Objects("no object store is configured".into()))
    }

    /// An empty upload that may grow to `limit` bytes, to where new blobs go.
    pub fn begin(&self, limit: u64) -> Result<BlobUpload> {
        self.begin_in(self.write_to, limit)
    }

    fn begin_in(&self, place: BlobPlace, limit: u64) -> Result<BlobUpload> {
        let mut upload = BlobUpload::new(limit);
        if place == BlobPlace::Objects {
            self.objects_or_err()?;
            if self.object_uploads.fetch_add(1, Ordering::AcqRel) >= MAX_OBJECT_UPLOADS {
                self.object_uploads.fetch_sub(1, Ordering::AcqRel);
                return Err(Error::Busy("uploads to the object store"));
            }
            let mut tag = [0u8; 16];
            rand_bytes(&mut tag);
            upload.object = Some(ObjectUpload {
                staging: format!("{STAGING_PREFIX}{}", hex(&tag)),
                multipart: None,
                slots: self.object_uploads.clone(),
            });
        }
        Ok(upload)
    }

    fn count(&self, chunk: &Cid) -> Result<Option<u32>> {
        let raw = self.index.get(&refs_key(chunk))?;
        Ok(raw.and_then(|v| v.get(..4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))))
    }

    /// Counts one more reference to each chunk (before they are written).
    fn retain(&self, chunks: &[Cid]) -> Result<()> {
        let _g = self.refs.lock();
        let mut counts = Vec::with_capacity(chunks.len());
        for c in chunks {
            let n = self.count(c)?.unwrap_or(0).saturating_add(1);
            counts.push((refs_key(c), n.to_be_bytes().to_vec()));
        }
        // Unsynced, as the chunks: the blob's index entry, written last and synced, makes
        // everything before it durable (one sync per upload).
        self.index.put_many_unsynced(&counts)
    }

    /// Drops one reference to each chunk; a chunk whose count reaches zero is deleted.
    fn release(&self, chunks: &[Cid]) -> Result<()> {
        let _g = self.refs.lock();
        for c in chunks {
            match self.count(c)? {
                // Stored before counts existed: shared with unknown blobs, kept.
                None => {}
                Some(n) if n <= 1 => {
                    self.index.delete(&refs_key(c))?;
                    self.blocks.delete(c)?;
                }
                Some(n) => self.index.put(&refs_key(c), &(n - 1).to_be_bytes(), None)?,
            }
        }
        Ok(())
    }

    /// Streams `reader` into the store. Fails with [`Error::TooLarge`] as soon as more than
    /// `limit` bytes have been read; what was written so far is then released (deleted
    /// unless another blob holds it), as on any other failure.
    pub fn put(&self, reader: &mut dyn Read, limit: u64) -> Result<BlobInfo> {
        let upload = self.begin(limit)?;
        self.pump(upload, reader, None)
    }

    /// Streams `reader` into `upload` and finishes it (as blob `expected`, when given).
    fn pump(&self, mut upload: BlobUpload, reader: &mut dyn Read, expected: Option<&Cid>) -> Result<BlobInfo> {
        loop {
            let chunk = match read_chunk(reader) {
                Ok(c) => c,
                Err(e) => {
                    self.abort(upload);
                    return Err(e);
                }
            };
            if chunk.is_empty() {
                break;
            }
            if let Err(e) = self.append(&mut upload, &chunk) {
                self.abort(upload);
                return Err(e);
            }
        }
        self.finish_checked(upload, expected)
    }

    /// Adds bytes to an upload begun with [`Blobs::begin`] (or [`BlobUpload::new`]), storing
    /// every chunk or part they complete; for bodies that arrive a piece at a time from an
    /// async source, so no thread waits on the sender. Fails with [`Error::TooLarge`] past
    /// the upload's limit (the upload is then to be [`Blobs::abort`]ed).
    pub fn append(&self, upload: &mut BlobUpload, data: &[u8]) -> Result<()> {
        upload.size += data.len() as u64;
        if upload.size > upload.limit {
            return Err(Error::TooLarge { what: "blob", size: upload.size, limit: upload.limit });
        }
        upload.sha.update(data);
        upload.pending.extend_from_slice(data);
        if let Some(object) = upload.object.as_mut() {
            while upload.pending.len() >= PART_SIZE {
                let rest = upload.pending.split_off(PART_SIZE);
                let part = std::mem::replace(&mut upload.pending, rest);
                self.send_part(object, part)?;
            }
            return Ok(());
        }
        let mut batch: Vec<(Cid, Vec<u8>)> = Vec::new();
        while upload.pending.len() >= CHUNK_SIZE {
            let rest = upload.pending.split_off(CHUNK_SIZE);
            let chunk = std::mem::replace(&mut upload.pending, rest);
            let cid = cid_for(RAW, BLAKE3, &chunk)?;
            batch.push((cid, chunk));
            if batch.len() == BATCH_CHUNKS {
                self.store_chunks(upload, &mut batch)?;
            }
        }
        self.store_chunks(upload, &mut batch)
    }

    /// Sends one part of an upload to the object store, beginning its multipart upload (and
    /// recording it, so a crash cannot leave it behind unnoticed) with the first.
    fn send_part(&self, object: &mut ObjectUpload, part: Vec<u8>) -> Result<()> {
        let objects = self.objects_or_err()?;
        if object.multipart.is_none() {
            let id = objects.begin_multipart(&object.staging)?;
            let mut record = id.as_bytes().to_vec();
            record.extend_from_slice(&now_ms().to_be_bytes());
            self.index.put(&parts_key(&object.staging), &record, None)?;
            object.multipart = Some((id, Vec::new()));
        }
        let (id, parts) = object.multipart.as_mut().expect("begun above");
        let tag = objects.put_part(&object.staging, id, parts.len(), part)?;
        parts.push(tag);
        Ok(())
    }

    /// Counts, then writes, a batch of the upload's chunks.
    fn store_chunks(&self, upload: &mut BlobUpload, batch: &mut Vec<(Cid, Vec<u8>)>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let cids: Vec<Cid> = batch.iter().map(|(c, _)| *c).collect();
        self.retain(&cids)?;
        upload.chunks.extend_from_slice(&cids);
        self.blocks.put_many_unsynced(batch)?;
        batch.clear();
        Ok(())
    }

    /// An upload that goes on from chunks an earlier one stored and counted (a transfer cut
    /// off, or a node restarted, in the middle): each chunk is read back, checked against its
    /// CID and hashed, so only the rest of the bytes need to arrive. The chunks stay counted
    /// for the new upload ([`Blobs::abort`] releases them). Fails if one is missing, corrupt or
    /// not a full chunk, or if new blobs go to an object store (whose uploads do not resume);
    /// the caller then releases them with [`Blobs::release_chunks`].
    pub fn resume(&self, limit: u64, chunks: &[Cid]) -> Result<BlobUpload> {
        if self.write_to == BlobPlace::Objects {
            return Err(Error::Objects("uploads to the object store do not resume from chunks".into()));
        }
        let mut upload = BlobUpload::new(limit);
        for cid in chunks {
            let data = self.blocks.get(cid)?.ok_or(Error::MissingBlock { cid: *cid })?;
            verify_block(cid, &data)?;
            if data.len() != CHUNK_SIZE {
                return Err(Error::BadManifest { cid: *cid, reason: "a resumed chunk is not a full chunk" });
            }
            upload.size += data.len() as u64;
            if upload.size > limit {
                return Err(Error::TooLarge { what: "blob", size: upload.size, limit });
            }
            upload.sha.update(&data);
            upload.chunks.push(*cid);
        }
        Ok(upload)
    }

    /// Releases chunks an upload counted that will not go on ([`Blobs::resume`] failed, or its
    /// blob is no longer wanted).
    pub fn release_chunks(&self, chunks: &[Cid]) -> Result<()> {
        self.release(chunks)
    }

    /// Gives up an upload: the chunks it counted are released, its multipart upload aborted.
    pub fn abort(&self, mut upload: BlobUpload) {
        if let Err(e) = self.release(&upload.chunks) {
            tracing::warn!(error = %e, "chunks of an abandoned upload not released");
        }
        if let Some(object) = upload.object.take() {
            self.abort_object(&object);
        }
    }

    fn abort_object(&self, object: &ObjectUpload) {
        let (Some(objects), Some((id, _))) = (self.objects.as_ref(), object.multipart.as_ref()) else { return };
        match objects.abort_multipart(&object.staging, id) {
            Ok(()) => {
                if let Err(e) = self.index.delete(&parts_key(&object.staging)) {
                    tracing::warn!(error = %e, "record of an aborted multipart upload kept");
                }
            }
            Err(e) => tracing::warn!(error = %e, key = %object.staging, "multipart upload not aborted; swept later"),
        }
    }

    /// Stores an upload's last chunk and manifest (or part) and makes the blob visible. On
    /// failure what it stored is released.
    pub fn finish(&self, upload: BlobUpload) -> Result<BlobInfo> {
        self.finish_checked(upload, None)
    }

    /// As [`Blobs::finish`], for bytes that must be the blob `expected` (a copy from another
    /// node): content of any other hash is refused with [`Error::Corrupt`] before anything
    /// becomes visible, and what it stored is released.
    pub fn finish_expecting(&self, upload: BlobUpload, expected: &Cid) -> Result<BlobInfo> {
        self.finish_checked(upload, Some(expected))
    }

    fn finish_checked(&self, mut upload: BlobUpload, expected: Option<&Cid>) -> Result<BlobInfo> {
        let res = self.write_out(&mut upload, expected).and_then(|(info, value)| {
            let stored_already = {
                let _g = self.refs.lock();
                let held = self.index.get(&index_key(&info.cid))?.is_some();
                if !held {
                    // The index entry goes last: a blob is visible only once its bytes are
                    // durable. The blocks and the index share one write-ahead log, synced
                    // by `write_out` for chunks and manifest, and by this write.
                    self.index.put(&index_key(&info.cid), &value, None)?;
                }
                held
            };
            if stored_already {
                // The same content is held already: what this upload wrote goes.
                self.drop_written(&info, &value, &mut upload)?;
            }
            Ok(info)
        });
        if res.is_err() {
            self.abort(upload);
        } else {
            upload.chunks.clear();
        }
        res
    }

    /// Writes what remains of an upload to its place and returns the blob and the index value
    /// naming where it is, without making it visible.
    fn write_out(&self, upload: &mut BlobUpload, expected: Option<&Cid>) -> Result<(BlobInfo, Vec<u8>)> {
        let digest = std::mem::take(&mut upload.sha).finalize();
        let cid = Cid::new_v1(RAW, multihash::Multihash::<64>::wrap(SHA2_256, &digest).expect("32 bytes"));
        if let Some(want) = expected
            && *want != cid
        {
            return Err(Error::Corrupt { cid: *want });
        }
        let size = upload.size;
        let pending = std::mem::take(&mut upload.pending);
        if let Some(object) = upload.object.as_mut() {
            let objects = self.objects_or_err()?.clone();
            let key = object_key(&cid);
            match object.multipart.is_some() {
                false => objects.put(&key, pending)?,
                true => {
                    if !pending.is_empty() {
                        self.send_part(object, pending)?;
                    }
                    let (id, parts) = object.multipart.take().expect("checked");
                    objects.complete_multipart(&object.staging, &id, parts)?;
                    self.index.delete(&parts_key(&object.staging))?;
                    let moved = objects.copy(&object.staging, &key);
                    if let Err(e) = objects.delete(&object.staging) {
                        tracing::warn!(error = %e, key = %object.staging, "staging object kept; swept later");
                    }
                    moved?;
                }
            }
            return Ok((BlobInfo { cid, size, manifest: None }, object_value(size)));
        }
        if !pending.is_empty() {
            let chunk = cid_for(RAW, BLAKE3, &pending)?;
            self.store_chunks(upload, &mut vec![(chunk, pending)])?;
        }
        let manifest = Manifest { size, chunk_size: CHUNK_SIZE as u32, chunks: upload.chunks.clone() }.encode();
        let manifest_cid = cid_for(RAW, BLAKE3, &manifest)?;
        self.blocks.put_many_unsynced(&[(manifest_cid, manifest)])?;
        self.blocks.sync()?;
        Ok((BlobInfo { cid, size, manifest: Some(manifest_cid) }, manifest_cid.to_bytes()))
    }

    /// Undoes what [`Blobs::write_out`] wrote for a blob that will not be visible from it.
    fn drop_written(&self, info: &BlobInfo, value: &[u8], upload: &mut BlobUpload) -> Result<()> {
        if upload.object.is_some() {
            // Held as an object: that object is the one just written (same key, same bytes),
            // kept. Held on disk: the object goes.
            if self.place(&info.cid)? != Some(BlobPlace::Objects) {
                self.objects_or_err()?.delete(&object_key(&info.cid))?;
            }
            return Ok(());
        }
        if let Some(manifest) = info.manifest
            && self.index.get(&index_key(&info.cid))?.as_deref() != Some(value)
        {
            self.blocks.delete(&manifest)?;
        }
        self.release(&std::mem::take(&mut upload.chunks))
    }

    /// The stored blob's size and manifest, if present.
    pub fn info(&self, cid: &Cid) -> Result<Option<BlobInfo>> {
        Ok(self.load(cid)?.map(|loc| BlobInfo {
            cid: *cid,
            size: loc.size(),
            manifest: match &loc {
                Location::Chunks(m, _) => Some(*m),
                Location::Object(_) => None,
            },
        }))
    }

    /// Where blob `cid` is held, if it is.
    pub fn place(&self, cid: &Cid) -> Result<Option<BlobPlace>> {
        Ok(self.index.get(&index_key(cid))?.map(|v| match v.starts_with(OBJECT_TAG) {
            true => BlobPlace::Objects,
            false => BlobPlace::Disk,
        }))
    }

    /// Every blob held, with its size and place, in CID-byte order.
    pub fn stored(&self) -> Result<Vec<(Cid, u64, BlobPlace)>> {
        let mut out = Vec::new();
        for (k, _) in self.index.scan_prefix(INDEX_PREFIX, usize::MAX)? {
            let Ok(cid) = Cid::try_from(&k[INDEX_PREFIX.len()..]) else { continue };
            if let Some(loc) = self.load(&cid)? {
                let place = match loc {
                    Location::Chunks(..) => BlobPlace::Disk,
                    Location::Object(_) => BlobPlace::Objects,
                };
                out.push((cid, loc.size(), place));
            }
        }
        Ok(out)
    }

    /// A streaming, seekable reader of the blob's bytes. Every chunk read from disk is
    /// verified against its BLAKE3 CID; an object read from start to end is verified against
    /// the blob's CID before its last bytes are returned.
    pub fn open(&self, cid: &Cid) -> Result<Option<BlobReader<'_, B>>> {
        Ok(self.load(cid)?.map(|loc| self.reader(cid, loc)))
    }

    fn reader(&self, cid: &Cid, loc: Location) -> BlobReader<'_, B> {
        let size = loc.size();
        let source = match loc {
            Location::Chunks(_, manifest) => Source::Chunks { blocks: &self.blocks, manifest, current: None },
            Location::Object(_) => match &self.objects {
                Some(objects) => Source::Object { objects: objects.as_ref(), key: object_key(cid), window: None },
                None => Source::Unreachable,
            },
        };
        BlobReader { source, size, pos: 0, cid: *cid, hashed: Some((0, sha2::Sha256::new())) }
    }

    /// Bytes `start..end` of blob `cid` as one stream from the object store, when it is held
    /// there (`Ok(None)` when it is not, or is on disk: [`Blobs::open`] reads those).
    pub fn object_stream(&self, cid: &Cid, start: u64, end: u64) -> Result<Option<Box<dyn Read + Send>>> {
        match (self.load(cid)?, &self.objects) {
            (Some(Location::Object(size)), Some(objects)) => {
                objects.read_stream(&object_key(cid), start.min(size)..end.min(size))
            }
            _ => Ok(None),
        }
    }

    /// Forgets a blob: its index entry goes, and its object, or its manifest and each chunk
    /// no other blob holds.
    pub fn delete(&self, cid: &Cid) -> Result<bool> {
        let Some(loc) = self.load(cid)? else { return Ok(false) };
        {
            let _g = self.refs.lock();
            self.index.delete(&index_key(cid))?;
            if let Location::Chunks(manifest_cid, _) = &loc {
                self.blocks.delete(manifest_cid)?;
            }
        }
        self.release_location(cid, loc)?;
        Ok(true)
    }

    /// Frees what held a blob that the index no longer names there.
    fn release_location(&self, cid: &Cid, loc: Location) -> Result<()> {
        match loc {
            Location::Chunks(_, manifest) => self.release(&manifest.chunks),
            Location::Object(_) => self.objects_or_err()?.delete(&object_key(cid)),
        }
    }

    /// Moves blob `cid` to `to` (the other place): its bytes are written there, read back and
    /// checked against the CID, and only then does the index name the new place and the old
    /// copy go. Returns whether it moved (false: absent, or there already).
    pub fn relocate(&self, cid: &Cid, to: BlobPlace) -> Result<bool> {
        let Some(from) = self.load(cid)? else { return Ok(false) };
        let here = match from {
            Location::Chunks(..) => BlobPlace::Disk,
            Location::Object(_) => BlobPlace::Objects,
        };
        if here == to {
            return Ok(false);
        }
        let mut upload = self.begin_in(to, u64::MAX)?;
        let written = (|| {
            let mut reader = self.reader(cid, self.load(cid)?.ok_or(Error::MissingBlock { cid: *cid })?);
            let mut buf = vec![0u8; CHUNK_SIZE];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                self.append(&mut upload, &buf[..n])?;
            }
            let (info, value) = self.write_out(&mut upload, Some(cid))?;
            self.verify_copy(cid, &value)?;
            Ok::<_, Error>((info, value))
        })();
        let (_, value) = match written {
            Ok(w) => w,
            Err(e) => {
                if to == BlobPlace::Objects && upload.object.as_ref().is_some_and(|o| o.multipart.is_none()) {
                    // A whole object may have been written before the check refused it.
                    let _ = self.objects_or_err().map(|o| o.delete(&object_key(cid)));
                }
                self.abort(upload);
                return Err(e);
            }
        };
        {
            let _g = self.refs.lock();
            self.index.put(&index_key(cid), &value, None)?;
            if let Location::Chunks(manifest_cid, _) = &from
                && to == BlobPlace::Objects
            {
                self.blocks.delete(manifest_cid)?;
            }
        }
        // The new copy owns its chunks now; the old one's are released.
        upload.chunks.clear();
        self.release_location(cid, from)?;
        Ok(true)
    }

    /// Reads a copy named by index value `value` back and checks it is blob `cid`.
    fn verify_copy(&self, cid: &Cid, value: &[u8]) -> Result<()> {
        let loc = self.parse_location(value)?;
        let mut reader = self.reader(cid, loc);
        io::copy(&mut reader, &mut io::sink()).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => Error::Corrupt { cid: *cid },
            _ => Error::Io(e),
        })?;
        Ok(())
    }

    /// Aborts multipart uploads begun at least `age` ago and never completed (a crash cut
    /// them off: at start every one recorded is such), and deletes staging objects as old.
    /// Returns how many went.
    pub fn sweep_staging(&self, age: Duration) -> Result<usize> {
        let Some(objects) = self.objects.as_ref() else { return Ok(0) };
        let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
        let mut swept = 0;
        for (k, v) in self.index.scan_prefix(PARTS_PREFIX, 10_000)? {
            let Some((id, at)) = v.split_at_checked(v.len().saturating_sub(8)) else { continue };
            let begun = u64::from_be_bytes(at.try_into().unwrap_or([0; 8]));
            let staging = String::from_utf8_lossy(&k[PARTS_PREFIX.len()..]).into_owned();
            if begun <= cutoff {
                objects.abort_multipart(&staging, &String::from_utf8_lossy(id))?;
                objects.delete(&staging)?;
                self.index.delete(&k)?;
                swept += 1;
            }
        }
        let old = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
        // Bounded per sweep; what is left goes at the next.
        for o in objects.list(STAGING_PREFIX, 10_000)? {
            if o.modified <= old {
                objects.delete(&o.key)?;
                swept += 1;
            }
        }
        Ok(swept)
    }

    fn load(&self, cid: &Cid) -> Result<Option<Location>> {
        let Some(raw) = self.index.get(&index_key(cid))? else { return Ok(None) };
        self.parse_location(&raw).map(Some)
    }

    fn parse_location(&self, raw: &[u8]) -> Result<Location> {
        if let Some(size) = raw.strip_prefix(OBJECT_TAG) {
            let size = size.try_into().map_err(|_| Error::InvalidKey("object entry without its size".into()))?;
            return Ok(Location::Object(u64::from_be_bytes(size)));
        }
        let manifest_cid = Cid::try_from(raw).map_err(|e| Error::InvalidKey(e.to_string()))?;
        let bytes = self.blocks.get(&manifest_cid)?.ok_or(Error::MissingBlock { cid: manifest_cid })?;
        verify_block(&manifest_cid, &bytes)?;
        Ok(Location::Chunks(manifest_cid, Manifest::decode(&manifest_cid, &bytes)?))
    }
}

/// Names for staging objects: random, so concurrent uploads never share one.
fn rand_bytes(out: &mut [u8]) {
    // A BLAKE3 of the time, the process and a counter: unpredictable enough for names that
    // only need to be distinct, without a random-number dependency in this layer.
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&now_ms().to_be_bytes());
    h.update(&std::process::id().to_be_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    h.update(&nanos.to_be_bytes());
    let d = h.finalize();
    for (o, b) in out.iter_mut().zip(d.as_bytes()) {
        *o = *b;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fills a buffer of up to [`CHUNK_SIZE`] bytes (short only at end of input).
fn read_chunk(reader: &mut dyn Read) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(CHUNK_SIZE);
    reader.take(CHUNK_SIZE as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Reads a blob a chunk (disk) or a window (object store) at a time; implements [`Read`] and
/// [`Seek`] (for HTTP range requests).
pub struct BlobReader<'a, B> {
    source: Source<'a, B>,
    size: u64,
    pos: u64,
    cid: Cid,
    /// Bytes hashed so far while reading in order from the start (a seek ends it).
    hashed: Option<(u64, sha2::Sha256)>,
}

enum Source<'a, B> {
    Chunks {
        blocks: &'a B,
        manifest: Manifest,
        current: Option<(usize, Vec<u8>)>,
    },
    Object {
        objects: &'a dyn Objects,
        key: String,
        window: Option<(u64, Vec<u8>)>,
    },
    /// Indexed in an object store this node no longer has configured.
    Unreachable,
}

impl<B: Blockstore> BlobReader<'_, B> {
    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes from the current position to the end of the chunk or window holding it.
    fn window(&mut self) -> io::Result<&[u8]> {
        let pos = self.pos;
        let size = self.size;
        match &mut self.source {
            Source::Chunks { blocks, manifest, current } => {
                let cs = manifest.chunk_size as u64;
                let index = (pos / cs) as usize;
                if current.as_ref().is_none_or(|(i, _)| *i != index) {
                    let cid = manifest.chunks[index];
                    let data = blocks
                        .get(&cid)
                        .map_err(io::Error::other)?
                        .ok_or_else(|| io::Error::other(Error::MissingBlock { cid }))?;
                    verify_block(&cid, &data).map_err(io::Error::other)?;
                    *current = Some((index, data));
                }
                let chunk = &current.as_ref().expect("just loaded").1;
                let offset = (pos % cs) as usize;
                if offset >= chunk.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk shorter than its manifest says"));
                }
                Ok(&chunk[offset..])
            }
            Source::Object { objects, key, window } => {
                if window.as_ref().is_none_or(|(start, data)| pos < *start || pos >= start + data.len() as u64) {
                    let chunk = CHUNK_SIZE as u64;
                    let (from, len) = match window {
                        Some((start, data)) if *start + data.len() as u64 == pos => {
                            (pos, (data.len() as u64 * 2).clamp(chunk, MAX_OBJECT_WINDOW))
                        }
                        _ => (pos - pos % chunk, chunk),
                    };
                    let end = size.min(from + len);
                    let data = objects
                        .get_range(key, from..end)
                        .map_err(io::Error::other)?
                        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("object {key} is missing")))?;
                    if data.len() as u64 != end - from {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("object {key} is shorter than its blob"),
                        ));
                    }
                    *window = Some((from, data));
                }
                let (start, data) = window.as_ref().expect("just loaded");
                Ok(&data[(pos - start) as usize..])
            }
            Source::Unreachable => {
                Err(io::Error::other(Error::Objects("the blob is in an object store that is not configured".into())))
            }
        }
    }
}

impl<B: Blockstore> Read for BlobReader<'_, B> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let pos = self.pos;
        let size = self.size;
        let is_object = matches!(self.source, Source::Object { .. });
        let bytes = self.window()?;
        let n = out.len().min(bytes.len());
        out[..n].copy_from_slice(&bytes[..n]);
        if is_object && let Some((done, sha)) = self.hashed.as_mut() {
            // Objects are not content-addressed piece by piece as chunks are: read in order,
            // the whole is checked against the blob's CID before its last bytes go out.
            if *done == pos {
                sha.update(&out[..n]);
                *done += n as u64;
                if *done == size {
                    let digest = std::mem::take(sha).finalize();
                    if self.cid.hash().digest() != digest.as_slice() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("object of blob {} is corrupt", self.cid),
                        ));
                    }
                }
            } else {
                self.hashed = None;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<B: Blockstore> Seek for BlobReader<'_, B> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryBlockstore, MemoryKv, MemoryObjects};

    #[test]
    fn pieces_appended_make_the_same_blob_as_one_stream() {
        let data = sample(3 * CHUNK_SIZE + 1234);
        let whole = Blobs::new(MemoryBlockstore::new(), MemoryKv::new()).put(&mut &data[..], u64::MAX).unwrap();
        let blobs = Blobs::new(MemoryBlockstore::new(), MemoryKv::new());
        let mut up = BlobUpload::new(u64::MAX);
        for piece in data.chunks(100_003) {
            blobs.append(&mut up, piece).unwrap();
        }
        assert_eq!(up.size(), data.len() as u64);
        let info = blobs.finish(up).unwrap();
        assert_eq!(info, whole);
        let mut back = Vec::new();
        blobs.open(&info.cid).unwrap().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        let mut small = BlobUpload::new(10);
        assert!(matches!(blobs.append(&mut small, &[0; 11]), Err(Error::TooLarge { .. })));
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trip_seek_and_cid_matches_whole_content_hash() {
        let blobs = Blobs::new(MemoryBlockstore::new(), MemoryKv::new());
        for size in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 17] {
            let data = sample(size);
            let info = blobs.put(&mut &data[..], 1 << 30).unwrap();
            assert_eq!(info.cid, cid_for(RAW, SHA2_256, &data).unwrap());
            assert_eq!(info.size, size as u64);
            let mut back = Vec::new();
            blobs.open(&info.cid).unwrap().unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
            if size > 100 {
                let mut r = blobs.open(&info.cid).unwrap().unwrap();
                r.seek(SeekFrom::Start(size as u64 - 50)).unwrap();
                let mut tail = Vec::new();
                r.read_to_end(&mut tail).unwrap();
                assert_eq!(tail, data[size - 50..]);
            }
        }
    }

    #[test]
    fn over_limit_is_refused_and_not_indexed() {
        let blobs = Blobs::new(MemoryBlockstore::new(), MemoryKv::new());
        let data = sample(CHUNK_SIZE * 2);
        let err = blobs.put(&mut &data[..], CHUNK_SIZE as u64).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }));
        assert!(blobs.info(&cid_for(RAW, SHA2_256, &data).unwrap()).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_chunk_is_an_error_not_data() {
        let store = MemoryBlockstore::new();
        let blobs = Blobs::new(&store, MemoryKv::new());
        let data = sample(CHUNK_SIZE + 10);
        let info = blobs.put(&mut &data[..], 1 << 30).unwrap();
        let first = cid_for(RAW, BLAKE3, &data[..CHUNK_SIZE]).unwrap();
        store.corrupt_block_for_test(&first, &data[1..CHUNK_SIZE + 1]);
        let mut out = Vec::new();
        let err = blobs.open(&info.cid).unwrap().unwrap().read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    /// Deleting a blob deletes the chunks no other blob holds; a failed upload leaves nothing;
    /// the same blob stored twice is counted once.
    #[test]
    fn chunks_go_with_the_last_blob_that_holds_them() {
        let store = MemoryBlockstore::new();
        let blobs = Blobs::new(&store, MemoryKv::new());
        let shared = sample(CHUNK_SIZE);
        let a: Vec<u8> = shared.iter().copied().chain(vec![1u8; CHUNK_SIZE]).collect();
        let b: Vec<u8> = shared.iter().copied().chain(vec![2u8; 10]).collect();
        let ia = blobs.put(&mut &a[..], 1 << 30).unwrap();
        let ib = blobs.put(&mut &b[..], 1 << 30).unwrap();
        blobs.put(&mut &b[..], 1 << 30).unwrap();
        assert_eq!(store.len(), 5, "three distinct chunks and two manifests");
        assert!(blobs.delete(&ia.cid).unwrap());
        assert_eq!(store.len(), 3, "a's own chunk and manifest went; the shared chunk stays");
        let mut back = Vec::new();
        blobs.open(&ib.cid).unwrap().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, b);
        assert!(blobs.delete(&ib.cid).unwrap());
        assert_eq!(store.len(), 0, "nothing is left");
        let big = sample(CHUNK_SIZE * (BATCH_CHUNKS + 3));
        assert!(blobs.put(&mut &big[..], (CHUNK_SIZE * (BATCH_CHUNKS + 1)) as u64).is_err());
        assert_eq!(store.len(), 0, "a refused upload leaves no chunks behind");
    }

    /// An upload cut off after some chunks goes on from them: the same blob results, and only
    /// the rest of the bytes are appended. Bytes of another hash are refused and leave nothing.
    #[test]
    fn a_resumed_upload_makes_the_same_blob_and_a_wrong_one_is_refused() {
        let store = MemoryBlockstore::new();
        let blobs = Blobs::new(&store, MemoryKv::new());
        let data = sample(3 * CHUNK_SIZE + 99);
        let want = cid_for(RAW, SHA2_256, &data).unwrap();
        let mut first = BlobUpload::new(u64::MAX);
        blobs.append(&mut first, &data[..2 * CHUNK_SIZE + 10]).unwrap();
        let stored = first.chunks().to_vec();
        assert_eq!(stored.len(), 2, "the partial third chunk is held, not stored");
        drop(first);
        let mut up = blobs.resume(u64::MAX, &stored).unwrap();
        assert_eq!(up.size(), 2 * CHUNK_SIZE as u64);
        blobs.append(&mut up, &data[2 * CHUNK_SIZE..]).unwrap();
        let info = blobs.finish_expecting(up, &want).unwrap();
        assert_eq!(info.cid, want);
        let mut back = Vec::new();
        blobs.open(&want).unwrap().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert!(blobs.resume(u64::MAX, &[cid_for(RAW, BLAKE3, b"absent").unwrap()]).is_err());

        let fresh = MemoryBlockstore::new();
        let blobs = Blobs::new(&fresh, MemoryKv::new());
        let mut forged = BlobUpload::new(u64::MAX);
        blobs.append(&mut forged, &data[1..]).unwrap();
        let err = blobs.finish_expecting(forged, &want).unwrap_err();
        assert!(matches!(err, Error::Corrupt { cid } if cid == want), "{err}");
        assert!(blobs.info(&want).unwrap().is_none());
        assert_eq!(fresh.len(), 0, "the refused copy's chunks were released");
    }

    #[test]
    fn identical_chunks_are_stored_once() {
        let store = MemoryBlockstore::new();
        let blobs = Blobs::new(&store, MemoryKv::new());
        let data = vec![7u8; CHUNK_SIZE * 4];
        blobs.put(&mut &data[..], 1 << 30).unwrap();
        assert_eq!(store.len(), 2, "one distinct chunk plus the manifest");
    }

    fn in_objects<'a>(
        store: &'a MemoryBlockstore,
        objects: &Arc<MemoryObjects>,
    ) -> Blobs<&'a MemoryBlockstore, MemoryKv> {
        Blobs::new(store, MemoryKv::new()).with_objects(objects.clone(), BlobPlace::Objects)
    }

    fn read_all<B: Blockstore, K: Kv>(blobs: &Blobs<B, K>, cid: &Cid) -> Vec<u8> {
        let mut back = Vec::new();
        blobs.open(cid).unwrap().unwrap().read_to_end(&mut back).unwrap();
        back
    }

    /// Blobs in an object store: the same CIDs as on disk, one object each (multipart past a
    /// part, nothing staged left), ranged reads, deletion.
    #[test]
    fn blobs_in_an_object_store_read_back_by_range_and_go_when_deleted() {
        let objects = Arc::new(MemoryObjects::new());
        let store = MemoryBlockstore::new();
        let blobs = in_objects(&store, &objects);
        for size in [0, 10, PART_SIZE, 2 * PART_SIZE + 77] {
            let data = sample(size);
            let info = blobs.put(&mut &data[..], u64::MAX).unwrap();
            assert_eq!(info.cid, cid_for(RAW, SHA2_256, &data).unwrap());
            assert_eq!(info.manifest, None);
            assert_eq!(blobs.place(&info.cid).unwrap(), Some(BlobPlace::Objects));
            assert_eq!(read_all(&blobs, &info.cid), data);
            if size > 100 {
                let mut r = blobs.open(&info.cid).unwrap().unwrap();
                r.seek(SeekFrom::Start(size as u64 - 70)).unwrap();
                let mut tail = Vec::new();
                r.read_to_end(&mut tail).unwrap();
                assert_eq!(tail, data[size - 70..]);
            }
        }
        assert_eq!(objects.len(), 4, "one object per blob, no staging object left");
        assert_eq!(objects.open_uploads(), 0);
        assert_eq!(store.len(), 0, "nothing on disk");
        for (cid, _, _) in blobs.stored().unwrap() {
            assert!(blobs.delete(&cid).unwrap());
        }
        assert!(objects.is_empty());
    }

    /// An upload that fails past a part, or is abandoned, leaves no object and no open
    /// multipart upload; one a crash cut off is aborted by the sweep.
    #[test]
    fn abandoned_uploads_to_an_object_store_leave_nothing() {
        let objects = Arc::new(MemoryObjects::new());
        let store = MemoryBlockstore::new();
        let kv = MemoryKv::new();
        let blobs = Blobs::new(&store, &kv).with_objects(objects.clone(), BlobPlace::Objects);
        let data = sample(3 * PART_SIZE);
        assert!(matches!(blobs.put(&mut &data[..], 2 * PART_SIZE as u64 + 5), Err(Error::TooLarge { .. })));
        assert_eq!((objects.len(), objects.open_uploads()), (0, 0));
        let mut up = blobs.begin(u64::MAX).unwrap();
        blobs.append(&mut up, &data[..PART_SIZE + 1]).unwrap();
        assert_eq!(objects.open_uploads(), 1);
        blobs.abort(up);
        assert_eq!((objects.len(), objects.open_uploads()), (0, 0));
        // Cut off: the upload is forgotten without an abort, as a crash would.
        let mut up = blobs.begin(u64::MAX).unwrap();
        blobs.append(&mut up, &data[..PART_SIZE * 2]).unwrap();
        std::mem::forget(up);
        assert_eq!(objects.open_uploads(), 1);
        assert_eq!(blobs.sweep_staging(Duration::from_secs(3600)).unwrap(), 0, "too recent to be abandoned");
        assert_eq!(blobs.sweep_staging(Duration::ZERO).unwrap(), 1);
        assert_eq!((objects.len(), objects.open_uploads()), (0, 0));
        assert!(kv.scan_prefix(PARTS_PREFIX, 10).unwrap().is_empty());
        // Uploads under way at once are bounded (each holds up to a part in memory).
        let blobs = in_objects(&store, &objects);
        let held: Vec<BlobUpload> = (0..MAX_OBJECT_UPLOADS).map(|_| blobs.begin(u64::MAX).unwrap()).collect();
        assert!(matches!(blobs.begin(u64::MAX), Err(Error::Busy(_))));
        blobs.abort(held.into_iter().next().unwrap());
        assert!(blobs.begin(u64::MAX).is_ok(), "a slot is free again once an upload ends");
    }

    /// Moving a store's blobs to the object store and back keeps every CID and byte, frees
    /// the place left, and refuses an object whose bytes are not its blob.
    #[test]
    fn blobs_move_between_disk_and_objects_and_a_corrupt_copy_is_refused() {
        let objects = Arc::new(MemoryObjects::new());
        let store = MemoryBlockstore::new();
        let kv = MemoryKv::new();
        let disk = Blobs::new(&store, &kv);
        let blobs: Vec<Vec<u8>> = [5, CHUNK_SIZE * 3 + 1, PART_SIZE + 9].iter().map(|&n| sample(n)).collect();
        let cids: Vec<Cid> = blobs.iter().map(|b| disk.put(&mut &b[..], u64::MAX).unwrap().cid).collect();
        let both = Blobs::new(&store, &kv).with_objects(objects.clone(), BlobPlace::Disk);
        for cid in &cids {
            assert!(both.relocate(cid, BlobPlace::Objects).unwrap());
            assert!(!both.relocate(cid, BlobPlace::Objects).unwrap(), "there already");
        }
        assert_eq!(store.len(), 0, "chunks and manifests went with the move");
        assert_eq!(objects.len(), 3);
        for (cid, data) in cids.iter().zip(&blobs) {
            assert_eq!(read_all(&both, cid), *data);
        }
        objects.put(&object_key(&cids[0]), b"forged".to_vec()).unwrap();
        assert!(matches!(both.relocate(&cids[0], BlobPlace::Disk), Err(Error::Corrupt { .. } | Error::Io(_))));
        assert_eq!(both.place(&cids[0]).unwrap(), Some(BlobPlace::Objects), "a refused move changes nothing");
        assert_eq!(store.len(), 0, "and leaves nothing on disk");
        objects.put(&object_key(&cids[0]), blobs[0].clone()).unwrap();
        for cid in &cids {
            assert!(both.relocate(cid, BlobPlace::Disk).unwrap());
        }
        assert!(objects.is_empty(), "objects went with the move back");
        for (cid, data) in cids.iter().zip(&blobs) {
            assert_eq!(both.place(cid).unwrap(), Some(BlobPlace::Disk));
            assert_eq!(read_all(&disk, cid), *data);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
        /// Any content, cut into any pieces, makes the same blob on disk and in an object
        /// store, reads back whole and from any offset, and survives a move both ways.
        #[test]
        fn the_same_blob_on_disk_and_in_objects(
            size in 0usize..(PART_SIZE + 3 * CHUNK_SIZE),
            piece in 1usize..(2 * CHUNK_SIZE),
            offset in 0usize..(PART_SIZE + 3 * CHUNK_SIZE),
        ) {
            let data = sample(size);
            let objects = Arc::new(MemoryObjects::new());
            let store = MemoryBlockstore::new();
            let kv = MemoryKv::new();
            let disk = Blobs::new(&store, &kv).with_objects(objects.clone(), BlobPlace::Disk);
            let (store2, kv2) = (MemoryBlockstore::new(), MemoryKv::new());
            let remote = Blobs::new(&store2, &kv2).with_objects(Arc::new(MemoryObjects::new()), BlobPlace::Objects);
            let mut infos = Vec::new();
            for blobs in [&disk, &remote] {
                let mut up = blobs.begin(u64::MAX).unwrap();
                for p in data.chunks(piece) {
                    blobs.append(&mut up, p).unwrap();
                }
                let info = blobs.finish(up).unwrap();
                let mut r = blobs.open(&info.cid).unwrap().unwrap();
                let from = offset.min(size);
                r.seek(SeekFrom::Start(from as u64)).unwrap();
                let mut tail = Vec::new();
                r.read_to_end(&mut tail).unwrap();
                proptest::prop_assert_eq!(&tail[..], &data[from..]);
                infos.push(info.cid);
            }
            proptest::prop_assert_eq!(infos[0], infos[1]);
            proptest::prop_assert!(disk.relocate(&infos[0], BlobPlace::Objects).unwrap());
            proptest::prop_assert!(disk.relocate(&infos[0], BlobPlace::Disk).unwrap());
            proptest::prop_assert_eq!(read_all(&disk, &infos[0]), data);
            proptest::prop_assert!(objects.is_empty());
        }
    }
}
