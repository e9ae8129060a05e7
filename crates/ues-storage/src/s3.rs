//! [`Objects`] on S3 and S3-compatible services (MinIO, Ceph, R2, Backblaze, ...) through
//! `object_store`, Apache Arrow's well-kept client. Its calls are async; this store runs them
//! on a runtime of its own (one worker thread) so the blocking callers of [`crate::Blobs`]
//! can wait for them from any thread, inside another runtime's blocking pool or not.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::{Error, ObjectMeta, Objects, Result};

/// Where the bucket is and how to reach it.
#[derive(Clone, Default)]
pub struct S3Config {
    /// The service's URL (`https://s3.example.com`, `http://127.0.0.1:9000`); empty: AWS.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region (`us-east-1` where the service has none).
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`, as most self-hosted services want) rather
    /// than virtual-hosted (`bucket.endpoint/key`).
    pub path_style: bool,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// How long one request may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// A bucket of an S3-compatible service.
pub struct S3Objects {
    store: Arc<AmazonS3>,
    runtime: Option<tokio::runtime::Runtime>,
    describe: String,
}

impl std::fmt::Debug for S3Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

fn failed(e: object_store::Error) -> Error {
    Error::Objects(e.to_string())
}

impl S3Objects {
    /// A client of the bucket `cfg` names (nothing is sent until the first call).
    pub fn connect(cfg: &S3Config) -> Result<Self> {
        if cfg.bucket.is_empty() {
            return Err(Error::Objects("no bucket is named".into()));
        }
        let timeout = if cfg.timeout.is_zero() { Duration::from_secs(60) } else { cfg.timeout };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(if cfg.region.is_empty() { "us-east-1" } else { &cfg.region })
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(&cfg.secret_access_key)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(timeout)
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_allow_http(cfg.endpoint.starts_with("http://")),
            )
            .with_retry(RetryConfig { max_retries: 3, retry_timeout: timeout, ..RetryConfig::default() });
        if !cfg.endpoint.is_empty() {
            builder = builder.with_endpoint(cfg.endpoint.trim_end_matches('/'));
        }
        let store = Arc::new(builder.build().map_err(failed)?);
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("ues-s3").enable_all().build()?;
        let at = if cfg.endpoint.is_empty() { "AWS".to_string() } else { cfg.endpoint.clone() };
        Ok(Self { store, runtime: Some(runtime), describe: format!("s3://{} at {at}", cfg.bucket) })
    }

    /// Runs `f` on this store's runtime and waits for its answer.
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> object_store::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.as_ref().expect("present until drop").spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(object_store::Error::Generic { store: "S3", source: "the object store's runtime stopped".into() })
        })
    }
}

/// Pieces of a streamed `GET` in flight between the store's runtime and the reader.
const STREAM_PIECES: usize = 4;
/// Times a stream is asked again from where it stopped (a request past the client timeout,
/// a connection dropped) before the reader gets the error.
const STREAM_RETRIES: u32 = 3;

/// A ranged `GET` streamed to a blocking reader: the body arrives on this store's runtime and
/// crosses a channel of [`STREAM_PIECES`] pieces, so a reader that stops reading stops the
/// download (and holds no more than those pieces). A stream that fails or ends early is asked
/// again from the byte it reached.
struct ObjectStream {
    store: Arc<AmazonS3>,
    handle: tokio::runtime::Handle,
    path: Path,
    pos: u64,
    end: u64,
    rx: Option<tokio::sync::mpsc::Receiver<object_store::Result<bytes::Bytes>>>,
    current: bytes::Bytes,
    failures: u32,
}

impl ObjectStream {
    fn request(&self) -> tokio::sync::mpsc::Receiver<object_store::Result<bytes::Bytes>> {
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_PIECES);
        let (store, path) = (self.store.clone(), self.path.clone());
        let opts = object_store::GetOptions { range: Some((self.pos..self.end).into()), ..Default::default() };
        self.handle.spawn(async move {
            match store.get_opts(&path, opts).await {
                Ok(got) => {
                    let mut body = got.into_stream();
                    while let Some(piece) = body.next().await {
                        // The reader went away: the request is dropped with the stream.
                        if tx.send(piece).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => drop(tx.send(Err(e)).await),
            }
        });
        rx
    }
}

impl std::io::Read for ObjectStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if !self.current.is_empty() {
                let n = out.len().min(self.current.len());
                out[..n].copy_from_slice(&self.current.split_to(n));
                self.pos += n as u64;
                return Ok(n);
            }
            if self.pos >= self.end || out.is_empty() {
                return Ok(0);
            }
            if self.rx.is_none() {
                self.rx = Some(self.request());
            }
            let got = self.rx.as_mut().expect("just set").blocking_recv();
            match got {
                Some(Ok(piece)) => {
                    let room = (self.end - self.pos) as usize;
                    self.current = if piece.len() > room { piece.slice(..room) } else { piece };
                    if !self.current.is_empty() {
                        self.failures = 0;
                    }
                }
                ended => {
                    self.rx = None;
                    self.failures += 1;
                    if self.failures > STREAM_RETRIES {
                        return Err(match ended {
                            Some(Err(e)) => std::io::Error::other(failed(e)),
                            _ => std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the object ended early"),
                        });
                    }
                    tracing::debug!(path = %self.path, at = self.pos, "object stream asked again");
                }
            }
        }
    }
}

impl Drop for S3Objects {
    fn drop(&mut self) {
        // Dropped from async code too: the runtime's thread is let go, not waited for.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Objects for S3Objects {
    fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let (store, path) = (self.store.clone(), Path::from(key));
        self.run(async move { store.put(&path, PutPayload::from(data)).await.map(drop) }).map_err(failed)
    }

    fn begin_multipart(&self, key: &str) -> Result<String> {
        let (store, path) = (self.store.clone(), Path::from(key));
        self.run(async move { store.create_multipart(&path).await }).map_err(failed)
    }

    fn put_part(&self, key: &str, upload: &str, index: usize, data: Vec<u8>) -> Result<String> {
        let (store, path, id) = (self.store.clone(), Path::from(key), upload.to_string());
        self.run(async move { store.put_part(&path, &id, index, PutPayload::from(data)).await })
            .map(|p| p.content_id)
            .map_err(failed)
    }

    fn complete_multipart(&self, key: &str, upload: &str, parts: Vec<String>) -> Result<()> {
        let (store, path, id) = (self.store.clone(), Path::from(key), upload.to_string());
        let parts = parts.into_iter().map(|content_id| PartId { content_id }).collect();
        self.run(async move { store.complete_multipart(&path, &id, parts).await.map(drop) }).map_err(failed)
    }

    fn abort_multipart(&self, key: &str, upload: &str) -> Result<()> {
        let (store, path, id) = (self.store.clone(), Path::from(key), upload.to_string());
        match self.run(async move { store.abort_multipart(&path, &id).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>> {
        if range.is_empty() {
            return Ok(self.size(key)?.map(|_| Vec::new()));
        }
        let (store, path) = (self.store.clone(), Path::from(key));
        match self.run(async move { store.get_range(&path, range).await }) {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    fn read_stream(&self, key: &str, range: Range<u64>) -> Result<Option<Box<dyn std::io::Read + Send>>> {
        if self.size(key)?.is_none() {
            return Ok(None);
        }
        let handle = self.runtime.as_ref().expect("present until drop").handle().clone();
        Ok(Some(Box::new(ObjectStream {
            store: self.store.clone(),
            handle,
            path: Path::from(key),
            pos: range.start,
            end: range.end,
            rx: None,
            current: bytes::Bytes::new(),
            failures: 0,
        })))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let (store, path) = (self.store.clone(), Path::from(key));
        match self.run(async move { store.head(&path).await }) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (store, from, to) = (self.store.clone(), Path::from(from), Path::from(to));
        self.run(async move { store.copy(&from, &to).await }).map_err(failed)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let (store, path) = (self.store.clone(), Path::from(key));
        match self.run(async move { store.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }

    fn list(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectMeta>> {
        let (store, path) = (self.store.clone(), Path::from(prefix));
        // Bounded whatever the store answers: the listing stops after `limit` objects.
        let found = self
            .run(async move { store.list(Some(&path)).take(limit).try_collect::<Vec<_>>().await })
            .map_err(failed)?;
        Ok(found
            .into_iter()
            .map(|m| ObjectMeta { key: m.location.to_string(), size: m.size, modified: m.last_modified.into() })
            .collect())
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
