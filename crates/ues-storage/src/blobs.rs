//! Large blobs as content-addressed chunks plus a manifest.
//!
//! A blob is addressed by the CID AT Protocol uses for it: CIDv1, raw codec, sha2-256 of the
//! whole content. Its bytes are cut into [`CHUNK_SIZE`] chunks, each stored as a BLAKE3 raw
//! block (so identical chunks of different blobs are stored once), and a manifest block lists
//! them. The index `blob/<cid> -> manifest cid` lives in a [`Kv`].
//!
//! Manifest layout (version 1): `b"UESM"`, `1u8`, total size `u64` BE, chunk size `u32` BE,
//! chunk count `u32` BE, then per chunk: CID length `u8` and the CID bytes.

use std::io::{self, Read, Seek, SeekFrom};

use cid::Cid;
use sha2::Digest;

use crate::{BLAKE3, Blockstore, Error, Kv, RAW, Result, SHA2_256, cid_for, verify_block};

/// Size of every chunk but the last.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Chunks written per atomic batch.
const BATCH_CHUNKS: usize = 16;
const MAGIC: &[u8; 4] = b"UESM";
const INDEX_PREFIX: &[u8] = b"blob/";
const REFS_PREFIX: &[u8] = b"blobchunk/";

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// sha2-256 raw CID of the whole content (the AT Protocol blob CID).
    pub cid: Cid,
    /// Size in bytes.
    pub size: u64,
    /// The manifest block.
    pub manifest: Cid,
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

fn index_key(cid: &Cid) -> Vec<u8> {
    let mut k = INDEX_PREFIX.to_vec();
    k.extend_from_slice(&cid.to_bytes());
    k
}

/// A blob being stored a piece at a time ([`Blobs::append`], then [`Blobs::finish`]): the
/// content hash so far and the chunks written, with less than one chunk held in memory.
pub struct BlobUpload {
    sha: sha2::Sha256,
    chunks: Vec<Cid>,
    pending: Vec<u8>,
    size: u64,
    limit: u64,
}

impl BlobUpload {
    /// An empty upload that may grow to `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { sha: sha2::Sha256::new(), chunks: Vec::new(), pending: Vec::new(), size: 0, limit }
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
    /// until more arrive or the upload finishes).
    pub fn chunks(&self) -> &[Cid] {
        &self.chunks
    }
}

impl std::fmt::Debug for BlobUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobUpload").field("size", &self.size).field("limit", &self.limit).finish_non_exhaustive()
    }
}

fn refs_key(chunk: &Cid) -> Vec<u8> {
    let mut k = REFS_PREFIX.to_vec();
    k.extend_from_slice(&chunk.to_bytes());
    k
}

/// Chunked blob storage over a blockstore and an index.
///
/// Chunks are shared between blobs, so each carries a reference count in the index
/// (`blobchunk/<cid>`). An upload counts its chunks *before* writing them and a deletion drops
/// a chunk only when its count reaches zero, under one short lock: a chunk another upload is
/// writing can never be deleted under it. An upload that fails or is abandoned releases the
/// chunks it counted ([`Blobs::abort`]). A crash can leave a count too high (the chunk leaks),
/// never too low. Chunks stored before counts existed have none and are never dropped.
pub struct Blobs<B, K> {
    blocks: B,
    index: K,
    refs: parking_lot::Mutex<()>,
}

impl<B: Blockstore, K: Kv> Blobs<B, K> {
    /// Blob storage over `blocks`, indexed in `index`.
    pub fn new(blocks: B, index: K) -> Self {
        Self { blocks, index, refs: parking_lot::Mutex::new(()) }
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
    /// `limit` bytes have been read; the chunks written so far are then released (deleted
    /// unless another blob holds them), as on any other failure.
    pub fn put(&self, reader: &mut dyn Read, limit: u64) -> Result<BlobInfo> {
        let mut upload = BlobUpload::new(limit);
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
        self.finish(upload)
    }

    /// Adds bytes to an upload begun with [`BlobUpload::new`], storing every chunk they
    /// complete; for bodies that arrive a piece at a time from an async source, so no thread
    /// waits on the sender. Fails with [`Error::TooLarge`] past the upload's limit (the upload
    /// is then to be [`Blobs::abort`]ed).
    pub fn append(&self, upload: &mut BlobUpload, data: &[u8]) -> Result<()> {
        upload.size += data.len() as u64;
        if upload.size > upload.limit {
            return Err(Error::TooLarge { what: "blob", size: upload.size, limit: upload.limit });
        }
        upload.sha.update(data);
        upload.pending.extend_from_slice(data);
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
    /// not a full chunk; the caller then releases them with [`Blobs::release_chunks`].
    pub fn resume(&self, limit: u64, chunks: &[Cid]) -> Result<BlobUpload> {
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

    /// Gives up an upload: the chunks it counted are released.
    pub fn abort(&self, upload: BlobUpload) {
        if let Err(e) = self.release(&upload.chunks) {
            tracing::warn!(error = %e, "chunks of an abandoned upload not released");
        }
    }

    /// Stores an upload's last chunk and manifest and makes the blob visible. On failure its
    /// chunks are released.
    pub fn finish(&self, upload: BlobUpload) -> Result<BlobInfo> {
        self.finish_checked(upload, None)
    }

    /// As [`Blobs::finish`], for bytes that must be the blob `expected` (a copy from another
    /// node): content of any other hash is refused with [`Error::Corrupt`] before anything
    /// becomes visible, and its chunks are released.
    pub fn finish_expecting(&self, upload: BlobUpload, expected: &Cid) -> Result<BlobInfo> {
        self.finish_checked(upload, Some(expected))
    }

    fn finish_checked(&self, mut upload: BlobUpload, expected: Option<&Cid>) -> Result<BlobInfo> {
        let res = self.finish_counted(&mut upload, expected);
        if res.is_err() {
            self.abort(upload);
        }
        res
    }

    fn finish_counted(&self, upload: &mut BlobUpload, expected: Option<&Cid>) -> Result<BlobInfo> {
        let pending = std::mem::take(&mut upload.pending);
        if !pending.is_empty() {
            let cid = cid_for(RAW, BLAKE3, &pending)?;
            self.store_chunks(upload, &mut vec![(cid, pending)])?;
        }
        let size = upload.size;
        let manifest = Manifest { size, chunk_size: CHUNK_SIZE as u32, chunks: upload.chunks.clone() }.encode();
        let manifest_cid = cid_for(RAW, BLAKE3, &manifest)?;
        let digest = std::mem::take(&mut upload.sha).finalize();
        let cid = Cid::new_v1(RAW, multihash::Multihash::<64>::wrap(SHA2_256, &digest).expect("32 bytes"));
        if let Some(want) = expected
            && *want != cid
        {
            return Err(Error::Corrupt { cid: *want });
        }
        let stored_already = {
            let _g = self.refs.lock();
            let held = self.index.get(&index_key(&cid))?.is_some();
            if !held {
                self.blocks.put_many_unsynced(&[(manifest_cid, manifest)])?;
                // The index entry goes last: a blob is visible only once every block is durable.
                // The blocks and the index share one write-ahead log: the stores sync it here,
                // where they do, covering the chunks and the manifest too.
                self.blocks.sync()?;
                self.index.put(&index_key(&cid), &manifest_cid.to_bytes(), None)?;
            }
            held
        };
        if stored_already {
            // Its chunks are counted once, for the copy already stored.
            self.release(&std::mem::take(&mut upload.chunks))?;
        }
        upload.chunks.clear();
        Ok(BlobInfo { cid, size, manifest: manifest_cid })
    }

    /// The stored blob's size and manifest, if present.
    pub fn info(&self, cid: &Cid) -> Result<Option<BlobInfo>> {
        Ok(self.load(cid)?.map(|(manifest_cid, m)| BlobInfo { cid: *cid, size: m.size, manifest: manifest_cid }))
    }

    /// A streaming, seekable reader of the blob's bytes. Every chunk is verified against its
    /// BLAKE3 CID as it is read.
    pub fn open(&self, cid: &Cid) -> Result<Option<BlobReader<'_, B>>> {
        Ok(self.load(cid)?.map(|(_, manifest)| BlobReader { blocks: &self.blocks, manifest, pos: 0, current: None }))
    }

    /// Forgets a blob: its index entry and manifest go, and each chunk no other blob holds.
    pub fn delete(&self, cid: &Cid) -> Result<bool> {
        let Some((manifest_cid, manifest)) = self.load(cid)? else { return Ok(false) };
        {
            let _g = self.refs.lock();
            self.index.delete(&index_key(cid))?;
            self.blocks.delete(&manifest_cid)?;
        }
        self.release(&manifest.chunks)?;
        Ok(true)
    }

    fn load(&self, cid: &Cid) -> Result<Option<(Cid, Manifest)>> {
        let Some(raw) = self.index.get(&index_key(cid))? else { return Ok(None) };
        let manifest_cid = Cid::try_from(&raw[..]).map_err(|e| Error::InvalidKey(e.to_string()))?;
        let bytes = self.blocks.get(&manifest_cid)?.ok_or(Error::MissingBlock { cid: manifest_cid })?;
        verify_block(&manifest_cid, &bytes)?;
        Ok(Some((manifest_cid, Manifest::decode(&manifest_cid, &bytes)?)))
    }
}

/// Fills a buffer of up to [`CHUNK_SIZE`] bytes (short only at end of input).
fn read_chunk(reader: &mut dyn Read) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(CHUNK_SIZE);
    reader.take(CHUNK_SIZE as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Reads a blob chunk by chunk; implements [`Read`] and [`Seek`] (for HTTP range requests).
pub struct BlobReader<'a, B> {
    blocks: &'a B,
    manifest: Manifest,
    pos: u64,
    current: Option<(usize, Vec<u8>)>,
}

impl<B: Blockstore> BlobReader<'_, B> {
    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.manifest.size
    }

    fn chunk(&mut self, index: usize) -> Result<&[u8]> {
        if self.current.as_ref().is_none_or(|(i, _)| *i != index) {
            let cid = self.manifest.chunks[index];
            let data = self.blocks.get(&cid)?.ok_or(Error::MissingBlock { cid })?;
            verify_block(&cid, &data)?;
            self.current = Some((index, data));
        }
        Ok(&self.current.as_ref().expect("just loaded").1)
    }
}

impl<B: Blockstore> Read for BlobReader<'_, B> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.manifest.size || out.is_empty() {
            return Ok(0);
        }
        let cs = self.manifest.chunk_size as u64;
        let index = (self.pos / cs) as usize;
        let offset = (self.pos % cs) as usize;
        let chunk = self.chunk(index).map_err(io::Error::other)?;
        if offset >= chunk.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk shorter than its manifest says"));
        }
        let n = out.len().min(chunk.len() - offset);
        out[..n].copy_from_slice(&chunk[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<B: Blockstore> Seek for BlobReader<'_, B> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.manifest.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryBlockstore, MemoryKv};

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
}
