//! CAR v1: `varint(len) header` then `varint(len) cid ++ block` sections.
//!
//! Readers stream (never the whole file in memory), bound every section's size, and verify every
//! block against its CID before handing it out. Duplicate, extra and missing blocks are the
//! consumer's business, as the spec allows.

use std::io::{Read, Write};

use cid::Cid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ues_storage::verify_block;

use crate::dagcbor::{self, Reader};

/// Why a CAR stream was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CarError {
    /// The stream failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A varint is malformed or too long.
    #[error("malformed varint at section {0}")]
    Varint(u64),
    /// The header is not `{version: 1, roots: [...]}`.
    #[error("bad CAR header: {0}")]
    Header(String),
    /// A section is larger than allowed.
    #[error("section of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A section does not start with a CID.
    #[error("bad CID in section {0}: {1}")]
    Cid(u64, String),
    /// A block does not match its CID.
    #[error("block {0} does not match its CID")]
    Corrupt(Cid),
    /// A block names a hash this reader cannot verify.
    #[error("block {0} uses a hash function that cannot be verified")]
    Unverifiable(Cid),
    /// The stream ended inside a section.
    #[error("truncated CAR: stream ended inside section {0}")]
    Truncated(u64),
}

/// Reader limits.
#[derive(Debug, Clone, Copy)]
pub struct CarLimits {
    /// Largest header accepted.
    pub max_header: u64,
    /// Largest block section accepted (CID plus data).
    pub max_block: u64,
}

impl Default for CarLimits {
    fn default() -> Self {
        Self { max_header: 64 * 1024, max_block: 2 * 1024 * 1024 }
    }
}

/// Appends an unsigned LEB128 varint.
pub fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The header bytes (without the length prefix) for `roots`.
pub fn encode_header(roots: &[Cid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + roots.len() * 40);
    out.push(0xa2);
    dagcbor::write_str(&mut out, "roots");
    dagcbor::write_head(&mut out, 4, roots.len() as u64);
    for r in roots {
        dagcbor::write_link(&mut out, r);
    }
    dagcbor::write_str(&mut out, "version");
    out.push(0x01);
    out
}

fn decode_header(bytes: &[u8]) -> Result<Vec<Cid>, CarError> {
    let bad = |m: &str| CarError::Header(m.to_string());
    let mut r = Reader::new(bytes);
    let n = r.map_len().map_err(|e| CarError::Header(e.to_string()))?;
    let (mut roots, mut version) = (None, None);
    let mut prev: Option<&str> = None;
    for _ in 0..n {
        let k = r.key(prev).map_err(|e| CarError::Header(e.to_string()))?;
        match k {
            "roots" => {
                let len = r.list_len().map_err(|e| CarError::Header(e.to_string()))?;
                let mut v = Vec::new();
                for _ in 0..len.min(1024) {
                    v.push(r.link().map_err(|e| CarError::Header(e.to_string()))?);
                }
                if len > 1024 {
                    return Err(bad("too many roots"));
                }
                roots = Some(v);
            }
            "version" => version = Some(r.uint().map_err(|e| CarError::Header(e.to_string()))?),
            _ => {
                r.skip(&dagcbor::DecodeOptions::default()).map_err(|e| CarError::Header(e.to_string()))?;
            }
        }
        prev = Some(k);
    }
    r.finish().map_err(|e| CarError::Header(e.to_string()))?;
    if version != Some(1) {
        return Err(bad("version is not 1"));
    }
    roots.ok_or_else(|| bad("no roots"))
}

fn split_section(section: Vec<u8>, index: u64) -> Result<(Cid, Vec<u8>), CarError> {
    let mut cursor = std::io::Cursor::new(&section[..]);
    let cid = Cid::read_bytes(&mut cursor).map_err(|e| CarError::Cid(index, e.to_string()))?;
    let at = cursor.position() as usize;
    if cid.to_bytes() != section[..at] {
        return Err(CarError::Cid(index, "CID bytes are not in canonical form".into()));
    }
    let data = section[at..].to_vec();
    match verify_block(&cid, &data) {
        Ok(()) => Ok((cid, data)),
        Err(ues_storage::Error::Corrupt { .. }) => Err(CarError::Corrupt(cid)),
        Err(_) => Err(CarError::Unverifiable(cid)),
    }
}

/// Reads a varint; `Ok(None)` at a clean end of stream.
fn read_varint(r: &mut impl Read, section: u64) -> Result<Option<u64>, CarError> {
    let mut n = 0u64;
    for i in 0..10 {
        let mut b = [0u8];
        if r.read(&mut b)? == 0 {
            return if i == 0 { Ok(None) } else { Err(CarError::Truncated(section)) };
        }
        n |= ((b[0] & 0x7f) as u64) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(n));
        }
    }
    Err(CarError::Varint(section))
}

fn read_exact_section(r: &mut impl Read, len: u64, section: u64) -> Result<Vec<u8>, CarError> {
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => CarError::Truncated(section),
        _ => CarError::Io(e),
    })?;
    Ok(buf)
}

/// A streaming CAR reader over [`Read`]; an iterator of verified blocks.
pub struct CarReader<R> {
    inner: R,
    roots: Vec<Cid>,
    limits: CarLimits,
    section: u64,
    done: bool,
}

impl<R: Read> CarReader<R> {
    /// Reads the header.
    pub fn new(inner: R) -> Result<Self, CarError> {
        Self::with_limits(inner, CarLimits::default())
    }

    /// Reads the header, with explicit limits.
    pub fn with_limits(mut inner: R, limits: CarLimits) -> Result<Self, CarError> {
        let len = read_varint(&mut inner, 0)?.ok_or_else(|| CarError::Header("empty stream".into()))?;
        if len > limits.max_header {
            return Err(CarError::TooLarge { size: len, limit: limits.max_header });
        }
        let header = read_exact_section(&mut inner, len, 0)?;
        let roots = decode_header(&header)?;
        Ok(Self { inner, roots, limits, section: 0, done: false })
    }

    /// The header's roots.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// The next block, verified; `None` at the end.
    pub fn next_block(&mut self) -> Result<Option<(Cid, Vec<u8>)>, CarError> {
        if self.done {
            return Ok(None);
        }
        self.section += 1;
        let Some(len) = read_varint(&mut self.inner, self.section)? else {
            self.done = true;
            return Ok(None);
        };
        if len > self.limits.max_block {
            return Err(CarError::TooLarge { size: len, limit: self.limits.max_block });
        }
        let section = read_exact_section(&mut self.inner, len, self.section)?;
        split_section(section, self.section).map(Some)
    }
}

impl<R: Read> Iterator for CarReader<R> {
    type Item = Result<(Cid, Vec<u8>), CarError>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_block().transpose();
        if matches!(item, Some(Err(_))) {
            self.done = true;
        }
        item
    }
}

async fn read_varint_async(r: &mut (impl AsyncRead + Unpin), section: u64) -> Result<Option<u64>, CarError> {
    let mut n = 0u64;
    for i in 0..10 {
        let mut b = [0u8];
        if r.read(&mut b).await? == 0 {
            return if i == 0 { Ok(None) } else { Err(CarError::Truncated(section)) };
        }
        n |= ((b[0] & 0x7f) as u64) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(n));
        }
    }
    Err(CarError::Varint(section))
}

async fn read_section_async(r: &mut (impl AsyncRead + Unpin), len: u64, section: u64) -> Result<Vec<u8>, CarError> {
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => CarError::Truncated(section),
        _ => CarError::Io(e),
    })?;
    Ok(buf)
}

/// A streaming CAR reader over [`AsyncRead`] (an HTTP body, a file).
pub struct AsyncCarReader<R> {
    inner: R,
    roots: Vec<Cid>,
    limits: CarLimits,
    section: u64,
}

impl<R: AsyncRead + Unpin> AsyncCarReader<R> {
    /// Reads the header.
    pub async fn new(mut inner: R, limits: CarLimits) -> Result<Self, CarError> {
        let len = read_varint_async(&mut inner, 0).await?.ok_or_else(|| CarError::Header("empty stream".into()))?;
        if len > limits.max_header {
            return Err(CarError::TooLarge { size: len, limit: limits.max_header });
        }
        let header = read_section_async(&mut inner, len, 0).await?;
        let roots = decode_header(&header)?;
        Ok(Self { inner, roots, limits, section: 0 })
    }

    /// The header's roots.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// The next block, verified; `None` at the end.
    pub async fn next_block(&mut self) -> Result<Option<(Cid, Vec<u8>)>, CarError> {
        self.section += 1;
        let Some(len) = read_varint_async(&mut self.inner, self.section).await? else { return Ok(None) };
        if len > self.limits.max_block {
            return Err(CarError::TooLarge { size: len, limit: self.limits.max_block });
        }
        let section = read_section_async(&mut self.inner, len, self.section).await?;
        split_section(section, self.section).map(Some)
    }
}

fn section_prefix(cid: &Cid, data_len: usize) -> Vec<u8> {
    let cid_bytes = cid.to_bytes();
    let mut head = Vec::with_capacity(cid_bytes.len() + 10);
    write_varint(&mut head, (cid_bytes.len() + data_len) as u64);
    head.extend_from_slice(&cid_bytes);
    head
}

/// A streaming CAR writer over [`Write`].
pub struct CarWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> CarWriter<W> {
    /// Writes the header.
    pub fn new(mut inner: W, roots: &[Cid]) -> Result<Self, CarError> {
        let header = encode_header(roots);
        let mut prefix = Vec::new();
        write_varint(&mut prefix, header.len() as u64);
        inner.write_all(&prefix)?;
        inner.write_all(&header)?;
        Ok(Self { inner, bytes: (prefix.len() + header.len()) as u64 })
    }

    /// Appends one block.
    pub fn write_block(&mut self, cid: &Cid, data: &[u8]) -> Result<(), CarError> {
        let head = section_prefix(cid, data.len());
        self.inner.write_all(&head)?;
        self.inner.write_all(data)?;
        self.bytes += (head.len() + data.len()) as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W, CarError> {
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// A streaming CAR writer over [`AsyncWrite`].
pub struct AsyncCarWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> AsyncCarWriter<W> {
    /// Writes the header.
    pub async fn new(mut inner: W, roots: &[Cid]) -> Result<Self, CarError> {
        let header = encode_header(roots);
        let mut prefix = Vec::new();
        write_varint(&mut prefix, header.len() as u64);
        prefix.extend_from_slice(&header);
        inner.write_all(&prefix).await?;
        Ok(Self { inner })
    }

    /// Appends one block.
    pub async fn write_block(&mut self, cid: &Cid, data: &[u8]) -> Result<(), CarError> {
        self.inner.write_all(&section_prefix(cid, data.len())).await?;
        self.inner.write_all(data).await?;
        Ok(())
    }

    /// Flushes and returns the inner writer.
    pub async fn finish(mut self) -> Result<W, CarError> {
        self.inner.flush().await?;
        Ok(self.inner)
    }
}
