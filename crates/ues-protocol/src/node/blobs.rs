//! Blobs as operations every face calls: uploading a request body as a blob (streamed into
//! chunked storage), and serving a blob's bytes a piece at a time.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use ues_sync::repo::blobs::BlobError;
use ues_sync::repo::syntax::Did;

use super::{Node, NodeError, blocking};

/// A blob store error as the client sees it.
pub fn blob_error(e: BlobError) -> NodeError {
    match e {
        BlobError::TooLarge { limit } => {
            NodeError::new(StatusCode::PAYLOAD_TOO_LARGE, "BlobTooLarge", format!("Blob is larger than {limit} bytes"))
        }
        BlobError::MimeType(m) => NodeError::invalid(format!("MIME type not accepted: {m}")),
        BlobError::QuotaExceeded { quota } => NodeError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "QuotaExceeded",
            format!("The account's blobs would exceed its quota of {quota} bytes"),
        ),
        BlobError::Storage(ues_sync::repo::ipld::storage::Error::Busy(what)) => NodeError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            format!("Too many {what} under way; try again shortly"),
        ),
        other => NodeError::internal(other),
    }
}

/// `uploadBlob`: the raw body, MIME type from `Content-Type`, streamed (never whole in memory).
/// How long an upload may go without a byte of its body before it is refused.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(20);

/// Body bytes gathered before they are handed to storage (one blocking-pool trip each).
const FLUSH: usize = 1 << 20;

/// Stores a request body as a blob of the caller's account (the session in `headers`); the
/// MIME type is `Content-Type`'s. Every face's upload (XRPC's uploadBlob, REST's `POST /api/v1/blobs`) is this one.
///
/// The body is read on the async side as it arrives (a client that sends nothing for
/// [`BODY_IDLE`] is refused with 408), and every [`FLUSH`] bytes go to storage in one brief
/// blocking call: a trickling client holds a connection, never a thread, and at most one
/// flush's worth of memory.
pub async fn upload(
    st: Arc<Node>,
    headers: &HeaderMap,
    body: Body,
) -> Result<ues_sync::repo::ipld::json::BlobRef, NodeError> {
    let claims = st.access(headers)?;
    let did = Did::new(&claims.sub).map_err(NodeError::internal)?;
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    claims.check_blob(&mime)?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.cfg.max_blob_bytes) {
        return Err(blob_error(BlobError::TooLarge { limit: st.cfg.max_blob_bytes }));
    }
    let mut upload =
        Uploading { st: st.clone(), upload: Some(st.blobs.begin_upload(&did, &mime).map_err(blob_error)?) };
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let next = tokio::time::timeout(BODY_IDLE, stream.next()).await.map_err(|_| {
            tracing::warn!(%did, received = upload.size() + buf.len() as u64, "uploadBlob body stalled; refused");
            NodeError::new(StatusCode::REQUEST_TIMEOUT, "RequestTimeout", "The body stopped arriving")
        })?;
        let last = match next {
            None => true,
            Some(Ok(bytes)) => {
                buf.extend_from_slice(&bytes);
                false
            }
            // The body limit cuts the stream: report it as the size limit it is.
            Some(Err(e)) if e.to_string().contains("length limit") => {
                return Err(NodeError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BlobTooLarge",
                    "Blob is larger than the limit",
                ));
            }
            Some(Err(e)) => return Err(NodeError::invalid(format!("Reading the body failed: {e}"))),
        };
        if buf.len() >= FLUSH || last {
            let piece = std::mem::take(&mut buf);
            let st = st.clone();
            upload = blocking(move || {
                let res = st.blobs.append(upload.get(), &piece);
                res.map(|()| upload).map_err(blob_error)
            })
            .await?;
        }
        if last {
            break;
        }
    }
    let st2 = st.clone();
    blocking(move || st2.blobs.finish_upload(&did, &mime, upload.take()).map_err(blob_error)).await
}

/// An upload in progress: dropped before it finished (refused, stalled, the client gone), it
/// releases what it stored, so abandoned uploads cannot fill the disk.
struct Uploading {
    st: Arc<Node>,
    upload: Option<ues_sync::repo::ipld::storage::BlobUpload>,
}

impl Uploading {
    fn get(&mut self) -> &mut ues_sync::repo::ipld::storage::BlobUpload {
        self.upload.as_mut().expect("taken only when finishing")
    }

    fn size(&self) -> u64 {
        self.upload.as_ref().map_or(0, |u| u.size())
    }

    fn take(mut self) -> ues_sync::repo::ipld::storage::BlobUpload {
        self.upload.take().expect("taken once")
    }
}

impl Drop for Uploading {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            let st = self.st.clone();
            // Releasing touches the store: off the async threads.
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(move || st.blobs.abort_upload(upload))),
                Err(_) => st.blobs.abort_upload(upload),
            }
        }
    }
}

/// Bytes `start..end` of a blob as a response body, one stored chunk's worth (256 KiB) at a
/// time: the next piece is read (on the blocking pool, briefly) only once the client has taken
/// the previous one, so a response holds at most one piece (and, from an object store, the few
/// pieces of its stream in flight) whatever the blob's size, and a client that stops reading
/// holds no thread. A piece that cannot be read ends the body early
/// (the client sees a short response); it is logged.
pub fn blob_body(st: Arc<Node>, did: Did, cid: cid::Cid, start: u64, end: u64) -> Body {
    const PIECE: u64 = 256 * 1024;
    let stream = futures::stream::try_unfold((start, Source::Unopened), move |(pos, source)| {
        let (st, did) = (st.clone(), did.clone());
        async move {
            if pos >= end {
                return Ok(None);
            }
            // Up to the next chunk boundary, so each piece costs one stored chunk.
            let len = ((pos / PIECE + 1) * PIECE).min(end) - pos;
            let (piece, source) = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, Source)> {
                let source = match source {
                    Source::Unopened => {
                        match st.blobs.object_stream(&did, &cid, pos, end).map_err(std::io::Error::other)? {
                            Some(stream) => Source::Stream(stream),
                            None => Source::Pieces,
                        }
                    }
                    opened => opened,
                };
                let mut buf = Vec::with_capacity(len as usize);
                let source = match source {
                    Source::Stream(mut stream) => {
                        (&mut stream).take(len).read_to_end(&mut buf)?;
                        Source::Stream(stream)
                    }
                    _ => {
                        let (_, mut reader) = st
                            .blobs
                            .open(&did, &cid)
                            .map_err(std::io::Error::other)?
                            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "blob deleted"))?;
                        reader.seek(SeekFrom::Start(pos))?;
                        reader.take(len).read_to_end(&mut buf)?;
                        Source::Pieces
                    }
                };
                if (buf.len() as u64) < len {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "blob shorter than its size"));
                }
                Ok((buf, source))
            })
            .await
            .map_err(std::io::Error::other)?
            .inspect_err(|e| tracing::warn!(%cid, error = %e, "blob stream ended early"))?;
            Ok::<_, std::io::Error>(Some((axum::body::Bytes::from(piece), (pos + len, source))))
        }
    });
    Body::from_stream(stream)
}

/// Where [`blob_body`] reads a blob from: not known before its first piece; one stream from
/// the object store for a blob held there (one request for the whole range); else the blob's
/// stored chunks, opened for each piece.
enum Source {
    Unopened,
    Stream(Box<dyn Read + Send>),
    Pieces,
}

/// A `Range` header against a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Range {
    /// Serve it all (not a byte range, several ranges, or malformed: RFC 9110 lets a server
    /// ignore what it does not support).
    Ignore,
    /// Inclusive first and last byte.
    Bytes(u64, u64),
    /// Entirely outside the blob.
    Unsatisfiable,
}

/// Reads a `Range` header (RFC 9110) against a blob of `size` bytes.
pub fn byte_range(header: &str, size: u64) -> Range {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Range::Ignore };
    if spec.contains(',') {
        return Range::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Range::Ignore };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        // bytes=-n: the last n bytes.
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 || size == 0 {
                Range::Unsatisfiable
            } else {
                Range::Bytes(size.saturating_sub(n), size - 1)
            }
        }
        (Ok(first), Err(_)) if b.is_empty() => {
            if first >= size {
                Range::Unsatisfiable
            } else {
                Range::Bytes(first, size - 1)
            }
        }
        (Ok(first), Ok(last)) if first <= last => {
            if first >= size {
                Range::Unsatisfiable
            } else {
                Range::Bytes(first, last.min(size - 1))
            }
        }
        _ => Range::Ignore,
    }
}

/// A blob as an HTTP response, every face's download: 200 with the whole, or, for a
/// `Range: bytes=...` request (one range), 206 with that range and `Content-Range`, or 416 when
/// it is outside the blob; streamed by [`blob_body`]. `extra` headers are added (a face's
/// caching headers).
pub fn serve_blob<const N: usize>(
    st: Arc<Node>,
    did: Did,
    cid: cid::Cid,
    mime: &str,
    size: u64,
    headers: &HeaderMap,
    extra: [(header::HeaderName, HeaderValue); N],
) -> Response {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|r| byte_range(r, size));
    let (status, start, end) = match range {
        None | Some(Range::Ignore) => (StatusCode::OK, 0, size),
        Some(Range::Bytes(a, b)) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Some(Range::Unsatisfiable) => {
            let mut resp =
                NodeError::new(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", format!("The blob has {size} bytes"))
                    .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let mut resp = (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
            ),
            (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::CONTENT_LENGTH, HeaderValue::from(end - start)),
        ],
        extra,
        blob_body(st, did, cid, start, end),
    )
        .into_response();
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1))
    {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), Range::Bytes(0, 9));
        assert_eq!(byte_range("bytes=90-", 100), Range::Bytes(90, 99));
        assert_eq!(byte_range("bytes=-10", 100), Range::Bytes(90, 99));
        assert_eq!(byte_range("bytes=-1000", 100), Range::Bytes(0, 99));
        assert_eq!(byte_range("bytes=50-1000", 100), Range::Bytes(50, 99));
        assert_eq!(byte_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Range::Ignore);
        assert_eq!(byte_range("bytes=9-1", 100), Range::Ignore);
        assert_eq!(byte_range("items=0-1", 100), Range::Ignore);
        assert_eq!(byte_range("bytes=x-y", 100), Range::Ignore);
    }

    proptest::proptest! {
        /// Whatever a client sends as `Range`, against any size: a range inside the blob,
        /// "serve it all", or "unsatisfiable"; never a panic or a range past the end.
        #[test]
        fn any_range_header_gives_a_range_inside_the_blob(header in "(bytes=)?[0-9 ,-]{0,24}|.{0,40}", size in 0u64..1_000_000) {
            match byte_range(&header, size) {
                Range::Bytes(a, b) => proptest::prop_assert!(a <= b && b < size, "{header:?} {size}: {a}-{b}"),
                Range::Ignore | Range::Unsatisfiable => {}
            }
        }
    }
}
