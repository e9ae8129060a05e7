//! The node's HTTP server: its operational endpoints (XRPC and REST mount beside them) and the
//! accept loop that serves them with bounds no client can pin: a deadline on every request
//! header (which also closes keep-alive connections left idle), and caps on open connections,
//! in total and per client address.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;

/// Bytes a WebSocket reads from its socket at once (tungstenite zeroes the whole read buffer on
/// every read attempt: small buffers keep thousands of idle sockets cheap).
pub(crate) const READ_BUFFER: usize = 4096;

/// What the operational endpoints report.
#[derive(Debug)]
pub struct NodeInfo {
    /// The node's software version.
    pub version: &'static str,
    /// When the node started.
    pub started: Instant,
}

impl NodeInfo {
    /// Info for a node starting now with this crate's version.
    pub fn now() -> Self {
        Self { version: env!("CARGO_PKG_VERSION"), started: Instant::now() }
    }
}

/// The HTTP router with `GET /xrpc/_health` (as the reference PDS answers it: `{"version"}`)
/// and `GET /health` (status, version, uptime).
pub fn router(info: Arc<NodeInfo>) -> Router {
    Router::new().route("/xrpc/_health", get(xrpc_health)).route("/health", get(health)).with_state(info)
}

async fn xrpc_health(State(info): State<Arc<NodeInfo>>) -> Json<Value> {
    Json(json!({ "version": info.version }))
}

async fn health(State(info): State<Arc<NodeInfo>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": info.version,
        "uptime_seconds": info.started.elapsed().as_secs(),
    }))
}

/// Bounds of the HTTP server on its connections.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// How long a client has to send a request's whole header. The clock also runs while a
    /// keep-alive connection waits for its next request, so it is the idle timeout too.
    pub header_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_connections_per_ip: usize,
    /// How long a response may wait on a client that reads none of it before the connection
    /// is dropped (long-lived streams included: a live client keeps reading).
    pub write_timeout: Duration,
    /// How long a graceful shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// HTTPS (HTTP/2 and HTTP/1.1 by ALPN) instead of plain HTTP, when set: the certificate
    /// in these files (for names ACME has none for).
    pub tls: Option<Arc<TlsFiles>>,
    /// HTTPS with certificates from an ACME server, chosen by the name the client asks for.
    pub acme: Option<Arc<crate::acme::Acme>>,
}

/// A router that answers every request on plain HTTP with a permanent redirect to the same
/// host and path over HTTPS (on `https_port`, left out when it is 443).
/// With `acme`, `/.well-known/acme-challenge/{token}` answers the ACME server's HTTP-01
/// validation instead.
pub fn redirect_router(https_port: u16, acme: Option<Arc<crate::acme::Acme>>) -> Router {
    let challenges = Router::new().route(
        "/.well-known/acme-challenge/{token}",
        get(move |axum::extract::Path(token): axum::extract::Path<String>| async move {
            match acme.as_ref().and_then(|a| a.challenge(&token)) {
                Some(answer) => {
                    ([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], answer).into_response()
                }
                None => axum::http::StatusCode::NOT_FOUND.into_response(),
            }
        }),
    );
    challenges.fallback(move |headers: axum::http::HeaderMap, uri: axum::http::Uri| async move {
        let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let host =
            host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b)) {
            return axum::http::StatusCode::BAD_REQUEST.into_response();
        }
        let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        axum::response::Redirect::permanent(&format!("https://{host}{port}{path}")).into_response()
    })
}

/// TLS for the HTTP listener from a certificate chain and a private key in PEM files, read
/// again when either file changes (looked at, at most once a second, when a client connects):
/// a renewed certificate is served without a restart. A change that does not load (a
/// half-written file) keeps the previous certificate and is logged.
pub struct TlsFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    state: parking_lot::Mutex<TlsState>,
}

struct TlsState {
    config: Arc<rustls::ServerConfig>,
    stamp: (Option<std::time::SystemTime>, Option<std::time::SystemTime>),
    checked: Instant,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

fn modified(p: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl TlsFiles {
    /// Loads the certificate chain and key (refusing files that do not make a TLS server).
    pub fn open(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<Self>, String> {
        let stamp = (modified(cert), modified(key));
        let config = Self::load(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: parking_lot::Mutex::new(TlsState { config, stamp, checked: Instant::now() }),
        }))
    }

    fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, String> {
        let chain = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
        let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
        crate::acme::server_config(&chain, &key_pem)
            .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))
    }

    /// The names the certificate file is for and its expiry, as the file is now.
    pub fn certificate(&self) -> Option<(Vec<String>, std::time::SystemTime)> {
        let chain = std::fs::read(&self.cert).ok()?;
        crate::acme::certificate_names(&chain).ok()
    }

    /// The configuration for the next handshake (the files read again if they changed).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let mut st = self.state.lock();
        if st.checked.elapsed() >= Duration::from_secs(1) {
            st.checked = Instant::now();
            let stamp = (modified(&self.cert), modified(&self.key));
            if stamp != st.stamp {
                match Self::load(&self.cert, &self.key) {
                    Ok(config) => {
                        st.config = config;
                        st.stamp = stamp;
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a changed TLS certificate does not load; the previous one is kept")
                    }
                }
            }
        }
        st.config.clone()
    }
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(20),
            max_connections: 8192,
            max_connections_per_ip: 512,
            write_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            acme: None,
        }
    }
}

/// Open connections per client address.
type PerIp = Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place in the caps, given back when the connection ends.
struct Slot {
    _total: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: PerIp,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.per_ip.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Total,
    PerIp,
}

/// Refusals are counted and logged at most once a second: a flood must not flood the log too.
struct RefusalLog {
    last: AtomicU64,
    since: AtomicU64,
    started: Instant,
}

impl RefusalLog {
    fn note(&self, why: Refusal, peer: SocketAddr, limits: &ServeLimits) {
        let n = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.started.elapsed().as_secs();
        let last = self.last.load(Ordering::Relaxed);
        if (now > last || n == 1)
            && self.last.compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let refused = self.since.swap(0, Ordering::Relaxed);
            match why {
                Refusal::Total => {
                    tracing::warn!(%peer, refused, limit = limits.max_connections, "connection cap reached; refusing")
                }
                Refusal::PerIp => tracing::warn!(
                    %peer,
                    refused,
                    limit = limits.max_connections_per_ip,
                    "per-address connection cap reached; refusing"
                ),
            }
        }
    }
}

/// Serves `app` on `listener` (HTTP/1.1 with upgrades, for WebSockets) within `limits` until
/// `shutdown` completes; then stops accepting, lets requests in flight finish (at most
/// `limits.shutdown_grace`) and returns. Handlers see the client address as
/// `ConnectInfo<SocketAddr>`.
///
/// Hand-written over hyper's connection builder because axum's `serve` offers no header
/// deadline nor connection caps. HTTP/1 only: the protocol sniffing of an HTTP/2-capable
/// builder has no deadline of its own, so a silent connection would be held forever.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip: PerIp = Arc::default();
    let log = RefusalLog { last: AtomicU64::new(0), since: AtomicU64::new(0), started: Instant::now() };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match admit(&total, &per_ip, peer.ip(), &limits) {
            Ok(slot) => slot,
            Err(why) => {
                log.note(why, peer, &limits);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = StallLimit::new(stream, limits.write_timeout);
        match (&limits.tls, &limits.acme) {
            (None, None) => {
                tokio::spawn(serve_connection(io, peer, app.clone(), builder.clone(), stop_rx.clone(), slot));
            }
            (files, Some(acme)) => {
                let (files, acme) = (files.clone(), acme.clone());
                let (app, builder, stop, timeout) =
                    (app.clone(), builder.clone(), stop_rx.clone(), limits.header_timeout);
                tokio::spawn(async move {
                    let Some(tls) = acme_handshake(io, peer, files, acme, timeout).await else { return };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        serve_h2(tls, peer, app, stop, slot, timeout).await;
                    } else {
                        serve_connection(tls, peer, app, builder, stop, slot).await;
                    }
                });
            }
            (Some(tls), None) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let (app, builder, stop, timeout) =
                    (app.clone(), builder.clone(), stop_rx.clone(), limits.header_timeout);
                tokio::spawn(async move {
                    // The handshake is bounded like a request's header.
                    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            serve_h2(tls, peer, app, stop, slot, timeout).await;
                        }
                        Ok(Ok(tls)) => serve_connection(tls, peer, app, builder, stop, slot).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit: having them all back means every connection ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, total.acquire_many(all)).await.is_err() {
        tracing::info!(open = limits.max_connections - total.available_permits(), "connections still open at shutdown");
    }
    Ok(())
}

fn admit(total: &Arc<Semaphore>, per_ip: &PerIp, ip: IpAddr, limits: &ServeLimits) -> Result<Slot, Refusal> {
    let permit = total.clone().try_acquire_owned().map_err(|_| Refusal::Total)?;
    let mut map = per_ip.lock();
    let n = map.entry(ip).or_insert(0);
    if *n >= limits.max_connections_per_ip {
        return Err(Refusal::PerIp);
    }
    *n += 1;
    Ok(Slot { _total: permit, ip, per_ip: per_ip.clone() })
}

/// Drives a connection until it ends, or until the server stops (`stop` turns true, or its
/// sender is gone): then it ends gracefully, answering the requests in flight.
macro_rules! drive {
    ($conn:expr, $stop:expr, $peer:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let stopping = async {
            let _ = $stop.wait_for(|s| *s).await;
        };
        tokio::select! {
            res = conn.as_mut() => log_end(res, $peer),
            () = stopping => {
                conn.as_mut().graceful_shutdown();
                log_end(conn.await, $peer);
            }
        }
    }};
}

/// A TLS handshake whose certificate is chosen by the name the client asks for (SNI): one the
/// ACME client holds or obtains for it, else the certificate files' (if any). Reading the
/// client's hello and finishing the handshake are each bounded by `timeout`; a name with no
/// certificate ends the connection.
async fn acme_handshake(
    io: StallLimit,
    peer: SocketAddr,
    files: Option<Arc<TlsFiles>>,
    acme: Arc<crate::acme::Acme>,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<StallLimit>> {
    let lazy = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(timeout, lazy).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS hello unreadable");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS hello not received in time");
            return None;
        }
    };
    let name = start.client_hello().server_name().map(|n| n.to_ascii_lowercase());
    let config = match &name {
        Some(n) => acme.config_for_handshake(n).await,
        None => None,
    };
    let Some(config) = config.or_else(|| files.map(|f| f.config())) else {
        tracing::debug!(%peer, name = ?name, "no certificate for the name asked for");
        return None;
    };
    match tokio::time::timeout(timeout, start.into_stream(config)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Serves one HTTP/2 connection (TLS with ALPN `h2`): its streams are requests; a connection
/// idle past `idle` gets a PING, and one that does not answer is closed.
async fn serve_h2<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
    idle: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(Body::new))
    });
    let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(idle))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(128);
    drive!(builder.serve_connection(TokioIo::new(stream), svc), stop, peer);
    drop(slot);
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(Body::new))
    });
    drive!(builder.serve_connection(TokioIo::new(stream), svc).with_upgrades(), stop, peer);
    drop(slot);
}

/// How long a connection that answered goes on reading (and discarding) what its client still
/// sends before it closes (a lingering close, as nginx does).
const LINGER: Duration = Duration::from_secs(5);

/// Bytes discarded per wake-up of a lingering close, so one fast sender cannot hold a worker.
const LINGER_READS: usize = 64;

/// A socket whose writes fail once they have been stalled (the client reading nothing) for
/// longer than a limit, so a client that stops reading cannot hold its connection, nor what
/// the response holds, forever; and whose close lingers: a client still sending a body the node
/// refused (413 before reading it) reads the answer instead of a connection reset, which closing
/// with unread data would send. Hand-written: hyper has neither a write deadline nor a
/// lingering close of its own.
struct StallLimit {
    inner: TcpStream,
    limit: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Whether anything was written (a connection that never answered closes at once).
    wrote: bool,
    /// The write side is shut (the answer and a FIN are on their way).
    write_shut: bool,
    /// The end of the lingering close, once it began.
    linger: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl StallLimit {
    fn new(inner: TcpStream, limit: Duration) -> Self {
        Self { inner, limit, stalled: None, wrote: false, write_shut: false, linger: None }
    }

    fn on_write<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        res: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        if res.is_ready() {
            self.stalled = None;
            return res;
        }
        let limit = self.limit;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for StallLimit {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StallLimit {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let res = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote |= matches!(res, std::task::Poll::Ready(Ok(n)) if n > 0);
        self.on_write(cx, res)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let res = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote |= matches!(res, std::task::Poll::Ready(Ok(n)) if n > 0);
        self.on_write(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let res = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, res)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if !self.write_shut {
            match std::pin::Pin::new(&mut self.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => self.write_shut = true,
                other => return other,
            }
        }
        if !self.wrote {
            return Poll::Ready(Ok(()));
        }
        // Lingering close: discard what the client still sends until it closes its side or
        // LINGER has passed.
        let end = self.linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
        if end.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 8192];
        for _ in 0..LINGER_READS {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut self.inner), cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn log_end(res: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = res {
        if e.is_timeout() {
            tracing::debug!(%peer, "request header not received in time; connection closed");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get_json(path: &str) -> (StatusCode, Value) {
        let app = router(Arc::new(NodeInfo::now()));
        let resp = app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn health_endpoints_answer() {
        let (status, body) = get_json("/xrpc/_health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        let (status, body) = get_json("/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
        let (status, _) = get_json("/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
