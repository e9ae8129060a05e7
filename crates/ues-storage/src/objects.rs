//! Object storage for blobs (S3 and compatible services), as the synchronous operations
//! [`crate::Blobs`] needs from it. [`S3Objects`](crate::S3Objects) is the real one;
//! [`MemoryObjects`] serves tests and counts what is held, so a test can see nothing is left.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::SystemTime;

use crate::{Error, Result};

/// An object as a listing names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// The operations blobs need from an object store. Keys are `/`-separated paths; a part
/// index counts from 0. Every call blocks until the store has answered (callers are on
/// blocking threads, as for the other stores).
pub trait Objects: Send + Sync {
    /// Stores `data` under `key` in one request.
    fn put(&self, key: &str, data: Vec<u8>) -> Result<()>;
    /// Starts a multipart upload to `key`; returns its upload id.
    fn begin_multipart(&self, key: &str) -> Result<String>;
    /// Uploads part `index` of an upload; returns the part's tag for completion.
    fn put_part(&self, key: &str, upload: &str, index: usize, data: Vec<u8>) -> Result<String>;
    /// Completes an upload from its parts' tags, in order: the object becomes visible.
    fn complete_multipart(&self, key: &str, upload: &str, parts: Vec<String>) -> Result<()>;
    /// Abandons an upload: the store drops its parts.
    fn abort_multipart(&self, key: &str, upload: &str) -> Result<()>;
    /// Bytes `range` of the object at `key` (`Ok(None)` when there is none).
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>>;
    /// Bytes `range` of the object at `key` as one stream, read as the caller reads (one
    /// request for the whole range, not one per piece), memory bounded whatever the caller's
    /// pace. `Ok(None)` when there is no such object.
    fn read_stream(&self, key: &str, range: Range<u64>) -> Result<Option<Box<dyn std::io::Read + Send>>>;
    /// The object's size (`Ok(None)` when there is none).
    fn size(&self, key: &str) -> Result<Option<u64>>;
    /// Copies an object within the store.
    fn copy(&self, from: &str, to: &str) -> Result<()>;
    /// Deletes an object (absent is not an error).
    fn delete(&self, key: &str) -> Result<()>;
    /// Objects whose keys start with `prefix`, at most `limit` of them.
    fn list(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectMeta>>;
    /// Where the objects are, for logs and status (`s3://bucket at endpoint`).
    fn describe(&self) -> String;
}

/// Objects in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryObjects {
    state: parking_lot::Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    objects: BTreeMap<String, Vec<u8>>,
    uploads: BTreeMap<String, (String, BTreeMap<usize, Vec<u8>>)>,
    next: u64,
}

impl MemoryObjects {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        self.state.lock().objects.len()
    }

    /// Whether no object is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Multipart uploads begun and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.state.lock().uploads.len()
    }
}

impl Objects for MemoryObjects {
    fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.state.lock().objects.insert(key.to_string(), data);
        Ok(())
    }

    fn begin_multipart(&self, key: &str) -> Result<String> {
        let mut s = self.state.lock();
        s.next += 1;
        let id = format!("upload-{}", s.next);
        s.uploads.insert(id.clone(), (key.to_string(), BTreeMap::new()));
        Ok(id)
    }

    fn put_part(&self, key: &str, upload: &str, index: usize, data: Vec<u8>) -> Result<String> {
        let mut s = self.state.lock();
        let (k, parts) = s.uploads.get_mut(upload).ok_or_else(|| Error::Objects(format!("no upload {upload}")))?;
        if k != key {
            return Err(Error::Objects(format!("upload {upload} is not for {key}")));
        }
        parts.insert(index, data);
        Ok(format!("part-{index}"))
    }

    fn complete_multipart(&self, key: &str, upload: &str, parts: Vec<String>) -> Result<()> {
        let mut s = self.state.lock();
        let (k, held) = s.uploads.remove(upload).ok_or_else(|| Error::Objects(format!("no upload {upload}")))?;
        if k != key || held.len() != parts.len() {
            return Err(Error::Objects(format!("upload {upload} does not match its parts")));
        }
        s.objects.insert(key.to_string(), held.into_values().flatten().collect());
        Ok(())
    }

    fn abort_multipart(&self, _key: &str, upload: &str) -> Result<()> {
        self.state.lock().uploads.remove(upload);
        Ok(())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>> {
        let s = self.state.lock();
        let Some(data) = s.objects.get(key) else { return Ok(None) };
        let end = (range.end as usize).min(data.len());
        Ok(Some(data[(range.start as usize).min(end)..end].to_vec()))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.state.lock().objects.get(key).map(|d| d.len() as u64))
    }

    fn read_stream(&self, key: &str, range: Range<u64>) -> Result<Option<Box<dyn std::io::Read + Send>>> {
        Ok(self.get_range(key, range)?.map(|b| Box::new(std::io::Cursor::new(b)) as Box<dyn std::io::Read + Send>))
    }

    fn copy(&self, from: &str, to: &str) -> Result<()> {
        let mut s = self.state.lock();
        let data = s.objects.get(from).cloned().ok_or_else(|| Error::Objects(format!("no object {from}")))?;
        s.objects.insert(to.to_string(), data);
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.state.lock().objects.remove(key);
        Ok(())
    }

    fn list(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectMeta>> {
        let s = self.state.lock();
        Ok(s.objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| ObjectMeta { key: k.clone(), size: v.len() as u64, modified: SystemTime::UNIX_EPOCH })
            .collect())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

macro_rules! forward_objects {
    ($($ptr:ty),*) => {$(
        impl<T: Objects + ?Sized> Objects for $ptr {
            fn put(&self, key: &str, data: Vec<u8>) -> Result<()> { (**self).put(key, data) }
            fn begin_multipart(&self, key: &str) -> Result<String> { (**self).begin_multipart(key) }
            fn put_part(&self, key: &str, upload: &str, index: usize, data: Vec<u8>) -> Result<String> {
                (**self).put_part(key, upload, index, data)
            }
            fn complete_multipart(&self, key: &str, upload: &str, parts: Vec<String>) -> Result<()> {
                (**self).complete_multipart(key, upload, parts)
            }
            fn abort_multipart(&self, key: &str, upload: &str) -> Result<()> { (**self).abort_multipart(key, upload) }
            fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>> { (**self).get_range(key, range) }
            fn size(&self, key: &str) -> Result<Option<u64>> { (**self).size(key) }
            fn read_stream(&self, key: &str, range: Range<u64>) -> Result<Option<Box<dyn std::io::Read + Send>>> {
                (**self).read_stream(key, range)
            }
            fn copy(&self, from: &str, to: &str) -> Result<()> { (**self).copy(from, to) }
            fn delete(&self, key: &str) -> Result<()> { (**self).delete(key) }
            fn list(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectMeta>> { (**self).list(prefix, limit) }
            fn describe(&self) -> String { (**self).describe() }
        }
    )*};
}
forward_objects!(&T, std::sync::Arc<T>);
