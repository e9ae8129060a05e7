//! The XRPC server AT Protocol clients talk to (`/xrpc/<nsid>`).
//!
//! Built so far: server (describe, accounts, sessions), identity.resolveHandle, and the record
//! endpoints of com.atproto.repo. Every error is `{"error", "message"}` with the reference
//! PDS's names and statuses; internals are logged, never sent.

mod admin;
mod auth;
pub(crate) mod blob;
mod error;
pub(crate) mod extract;
pub(crate) mod firehose;
pub(crate) mod index;
mod limits;
pub(crate) mod metrics;
mod misc;
mod proxy;
pub(crate) mod repo;
pub(crate) mod server;
pub(crate) mod sync;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use ues_sync::repo::accounts::Accounts;
use ues_sync::repo::blobs::{BlobLimits, BlobStore};
use ues_sync::repo::identity::HandleResolver;
use ues_sync::repo::ipld::storage::{Blockstore, Kv};
use ues_sync::repo::lexicon::Lexicons;
use ues_sync::repo::syntax::TidGenerator;

pub use auth::{Claims, check_password, hash_password};
pub use error::XrpcError;
pub use limits::{Rate, RateLimits};
pub use proxy::AppView;

/// Configuration of the XRPC server (from `node.toml`).
#[derive(Debug, Clone)]
pub struct XrpcConfig {
    /// The URL clients reach this node at (published as `#atproto_pds` in DID documents).
    pub public_url: String,
    /// The node's service DID (`did:web:<host>`), the audience of session tokens.
    pub service_did: String,
    /// Handle suffixes accounts may use (`.test` on a node with no configuration).
    pub user_domains: Vec<String>,
    /// HMAC key of session tokens (persisted, so sessions survive restarts).
    pub jwt_secret: Vec<u8>,
    /// A did:plc directory to submit genesis operations to, when one is configured.
    pub plc_url: Option<String>,
    /// Largest request body accepted (JSON).
    pub max_body_bytes: usize,
    /// Largest blob accepted by uploadBlob.
    pub max_blob_bytes: u64,
    /// Bytes of blobs one account may hold.
    pub blob_quota_bytes: u64,
    /// Resolves handles that are not this node's (DNS TXT, then HTTPS).
    pub handle_resolver: HandleResolver,
    /// Password of the `admin` user for `com.atproto.admin.*` (HTTP Basic); `None` disables them.
    pub admin_password: Option<String>,
    /// Where `app.bsky.*` methods this node does not serve go; `None`: they answer 501.
    pub appview: Option<AppView>,
    /// Relays (base URLs) asked to crawl this node (`com.atproto.sync.requestCrawl`): at start,
    /// then at most every 20 minutes while there are new events.
    pub relays: Vec<String>,
    /// How long firehose events are kept for replay (the backfill window).
    pub firehose_backfill: std::time::Duration,
    /// Serve `/metrics` and `/stats` to anyone; otherwise the operator's credentials are needed.
    pub public_metrics: bool,
}

/// What every handler shares.
pub struct XrpcState {
    /// Accounts and repositories.
    pub accounts: Accounts<Arc<dyn Blockstore>>,
    /// Schemas records and bodies are validated against.
    pub lexicons: Lexicons,
    /// Session state (refresh tokens) with TTLs.
    pub kv: Arc<dyn Kv>,
    /// Configuration.
    pub cfg: XrpcConfig,
    /// Record keys for createRecord without an rkey.
    pub tids: TidGenerator,
    /// Account blobs.
    pub blobs: BlobStore<Arc<dyn Blockstore>, Arc<dyn Kv>>,
    /// The event stream's sequencer.
    pub firehose: crate::node::sequencer::Firehose,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// HTTP client for AppView calls (30 s timeout, no redirects).
    proxy_agent: ureq::Agent,
    /// The peer-to-peer replication of accounts, when the node runs it.
    pub replication: std::sync::OnceLock<Arc<crate::p2p::node::Replication>>,
    /// The node's libp2p peer id, when the peer-to-peer service runs.
    pub peer_id: std::sync::OnceLock<libp2p::PeerId>,
    /// Which `/ws` session made recent commits (header `X-Ues-Ws-Session` on the write), so
    /// that session is not sent its own writes back. Bounded: the newest [`MAX_ORIGINS`].
    /// Keyed by commit and record path: concurrent requests may share one commit.
    pub(crate) origins:
        parking_lot::RwLock<(std::collections::HashMap<Origin, u64>, std::collections::VecDeque<Origin>)>,
    /// Sessions named by writes (bounded: cleared past [`MAX_ORIGINS`]); a socket whose session
    /// never wrote skips the per-write lookups.
    pub(crate) writing_sessions: parking_lot::RwLock<std::collections::HashSet<u64>>,
    /// Record writes in progress (see [`write_blocking`]).
    pub(crate) writes_in_flight: WritesInFlight,
    /// XRPC rate limits, once [`XrpcState::set_rate_limits`] turns them on.
    pub(crate) limiters: std::sync::OnceLock<limits::Limiters>,
    /// Repository exports running at once (each holds a blocking thread while it runs).
    pub(crate) exports: Arc<tokio::sync::Semaphore>,
}

/// Record writes in progress, and for how many more writes none may run inline.
#[derive(Clone, Default)]
pub(crate) struct WritesInFlight {
    /// Record write requests being served.
    writes: Arc<std::sync::atomic::AtomicUsize>,
    /// Those not yet at their commit.
    arriving: Arc<std::sync::atomic::AtomicUsize>,
    /// Writes still to go before one may run inline again.
    no_inline: Arc<std::sync::atomic::AtomicUsize>,
}

/// Writes that must find themselves alone before one runs inline again after an overlap.
const INLINE_AFTER: usize = 64;

/// Repository exports (`getRepo`) running at once; more wait their turn without a thread.
pub const MAX_EXPORTS: usize = 16;

/// How long an export waits on a client that reads nothing before it gives up its thread.
pub const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes (commit, record path) whose originating `/ws` session is remembered.
pub const MAX_ORIGINS: usize = 65_536;

/// A write: the commit that made it and the record's path.
pub(crate) type Origin = (cid::Cid, String);

impl XrpcState {
    /// Builds the state, applying the XRPC layer's migrations.
    pub fn new(
        mut accounts: Accounts<Arc<dyn Blockstore>>,
        lexicons: Lexicons,
        kv: Arc<dyn Kv>,
        cfg: XrpcConfig,
    ) -> Result<Self, XrpcError> {
        accounts.db().migrate(crate::node::credentials::MIGRATIONS).map_err(XrpcError::internal)?;
        accounts.db().migrate(crate::node::sequencer::MIGRATIONS).map_err(XrpcError::internal)?;
        accounts.db().migrate(misc::MIGRATIONS).map_err(XrpcError::internal)?;
        let pending = crate::node::sequencer::Pending::default();
        accounts.set_commit_hook(crate::node::sequencer::sequencer_hook(pending.clone()));
        for collection in accounts.set_indexes(lexicons.indexes().clone())? {
            tracing::info!(collection, "declared indexes changed: rebuilt from stored records");
        }
        let writes_in_flight = WritesInFlight::default();
        accounts.expect_writers_from(writes_in_flight.arriving.clone());
        let firehose = crate::node::sequencer::Firehose::new(accounts.db().clone(), pending);
        let limits = BlobLimits { max_size: cfg.max_blob_bytes, quota: cfg.blob_quota_bytes, ..BlobLimits::default() };
        let blobs = BlobStore::new(accounts.blocks().clone(), kv.clone(), accounts.db().clone(), limits);
        Ok(Self {
            accounts,
            lexicons,
            kv,
            cfg,
            tids: TidGenerator::new(7),
            blobs,
            firehose,
            metrics: metrics::Metrics::default(),
            proxy_agent: ureq::Agent::config_builder()
                .timeout_global(Some(std::time::Duration::from_secs(30)))
                .http_status_as_error(false)
                .max_redirects(0)
                .build()
                .into(),
            replication: std::sync::OnceLock::new(),
            peer_id: std::sync::OnceLock::new(),
            origins: parking_lot::RwLock::new(Default::default()),
            writing_sessions: parking_lot::RwLock::new(Default::default()),
            writes_in_flight,
            limiters: std::sync::OnceLock::new(),
            exports: Arc::new(tokio::sync::Semaphore::new(MAX_EXPORTS)),
        })
    }

    /// Turns the XRPC rate limits on (they are off until then; a second call changes nothing).
    pub fn set_rate_limits(&self, limits: &RateLimits) {
        let _ = self.limiters.set(limits::Limiters::new(limits));
    }

    /// Remembers which `/ws` session made a write (when the request said so).
    fn note_origin(&self, headers: &HeaderMap, res: &ues_sync::repo::repo::CommitResult) {
        let Some(id) = headers.get("x-ues-ws-session").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
        else {
            return;
        };
        {
            let mut w = self.writing_sessions.write();
            if w.len() >= MAX_ORIGINS {
                w.clear();
            }
            w.insert(id);
        }
        let mut o = self.origins.write();
        // The request's own operations (a merged commit's result holds only the caller's).
        for op in &res.ops {
            if o.1.len() >= MAX_ORIGINS
                && let Some(old) = o.1.pop_front()
            {
                o.0.remove(&old);
            }
            let key = (res.cid, op.path.clone());
            o.0.insert(key.clone(), id);
            o.1.push_back(key);
        }
    }

    /// Whether writes ever named this `/ws` session (recently).
    pub(crate) fn wrote(&self, session: u64) -> bool {
        self.writing_sessions.read().contains(&session)
    }

    /// The `/ws` session a write (commit, record path) came from, if it said.
    pub(crate) fn origin(&self, commit: &cid::Cid, path: &str) -> Option<u64> {
        // (Only sockets whose session wrote ask: see `wrote`.)
        self.origins.read().0.get(&(*commit, path.to_string())).copied()
    }

    /// Commits writes from a client (`headers`: its request's): through the replication bridge
    /// when the node replicates accounts (a replicated account's commit becomes signed
    /// operations too), else directly; remembers the `/ws` session it names, if any.
    pub(crate) fn commit(
        &self,
        headers: &HeaderMap,
        did: &ues_sync::repo::syntax::Did,
        writes: &[ues_sync::repo::repo::Write],
        swap: Option<cid::Cid>,
    ) -> Result<ues_sync::repo::repo::CommitResult, ues_sync::repo::accounts::AccountError> {
        // No longer arriving: a committer need not wait for this write.
        ARRIVING.with_borrow_mut(Option::take);
        let res = match self.replication.get() {
            Some(r) => r.local_commit(&self.accounts, did, writes, swap),
            None => self.accounts.apply_writes(did, writes, swap),
        }?;
        self.note_origin(headers, &res);
        Ok(res)
    }

    /// Firehose streams still open (they are detached from the HTTP server's graceful shutdown).
    pub fn open_streams(&self) -> i64 {
        self.metrics.subscribers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An access token for `did` expiring at `exp` (Unix seconds): lets tests force expiry.
    #[doc(hidden)]
    pub fn access_token_expiring_at(&self, did: &str, exp: u64) -> String {
        let claims = Claims {
            scope: "com.atproto.access".into(),
            sub: did.to_string(),
            aud: self.cfg.service_did.clone(),
            iat: exp.saturating_sub(auth::ACCESS_TTL_SECS),
            exp,
            jti: None,
            generation: server::session_generation(self, did).ok(),
        };
        auth::sign(&self.cfg.jwt_secret, "at+jwt", &claims)
    }

    /// Checks the node operator's credentials: `Authorization: Basic base64(admin:<password>)`.
    pub(crate) fn operator(&self, headers: &HeaderMap) -> Result<(), XrpcError> {
        use base64::Engine;
        use sha2::Digest;
        let denied = || XrpcError::auth_required("Admin authentication required");
        let Some(expected) = self.cfg.admin_password.as_deref() else { return Err(denied()) };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(denied)?;
        let (user, password) = given.split_once(':').ok_or_else(denied)?;
        // Compared as digests, so the comparison's time says nothing about the password.
        if user != "admin" || sha2::Sha256::digest(password.as_bytes()) != sha2::Sha256::digest(expected.as_bytes()) {
            tracing::warn!("operator call with wrong credentials");
            return Err(denied());
        }
        Ok(())
    }

    /// The claims of a valid, unexpired access token in `Authorization: Bearer`.
    pub(crate) fn access(&self, headers: &HeaderMap) -> Result<Claims, XrpcError> {
        let token = bearer(headers)?;
        let claims = auth::verify(&self.cfg.jwt_secret, token, "at+jwt")?;
        let scope_ok = matches!(
            claims.scope.as_str(),
            "com.atproto.access" | "com.atproto.appPass" | "com.atproto.appPassPrivileged"
        );
        if !scope_ok || claims.aud != self.cfg.service_did {
            return Err(XrpcError::new(axum::http::StatusCode::UNAUTHORIZED, "InvalidToken", "Bad token scope"));
        }
        if claims.exp <= auth::now_secs() {
            // What the reference PDS sends; clients take it as the signal to refresh.
            return Err(XrpcError::bad("ExpiredToken", "Token has expired"));
        }
        if server::is_revoked(self, &claims)? {
            return Err(XrpcError::bad("ExpiredToken", "Token has been revoked"));
        }
        Ok(claims)
    }
}

/// Runs blocking store work (RocksDB, SQLite, signing) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, XrpcError> + Send + 'static,
) -> Result<T, XrpcError> {
    tokio::task::spawn_blocking(f).await.map_err(XrpcError::internal)?
}

/// Runs a record write (validation, commit, indexing). While writes come one at a time, each
/// runs on the request's own async worker: it commits at once (there is nothing to group it
/// with) and skips two thread hand-offs (measured: ~12% less CPU per sequential createRecord).
/// A write that overlaps another goes to the blocking pool, where concurrent writes group, and
/// so do the next [`INLINE_AFTER`] writes: a worker busy committing delays the tasks queued on
/// it, which under concurrency cost more than the hand-offs save. At most one async worker at a
/// time does store work, for its own write only (see `committing_own_only`).
///
/// Until it reaches [`XrpcState::commit`] (or ends without), the write counts as arriving,
/// which a committer waits for briefly so it joins its group (`Accounts::expect_writers_from`).
pub(crate) async fn write_blocking<T: Send + 'static>(
    in_flight: WritesInFlight,
    f: impl FnOnce() -> Result<T, XrpcError> + Send + 'static,
) -> Result<T, XrpcError> {
    use std::sync::atomic::Ordering;
    let alone = in_flight.writes.fetch_add(1, Ordering::AcqRel) == 0;
    in_flight.arriving.fetch_add(1, Ordering::AcqRel);
    // Overlapping writes turn inline runs off for the next INLINE_AFTER writes: a worker busy
    // committing delays the tasks queued on it, and concurrent writes group better in the pool.
    let overlapped = if alone {
        in_flight.no_inline.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    } else {
        in_flight.no_inline.store(INLINE_AFTER, Ordering::Release);
        true
    };
    // Both counts drop when the work ends (the arriving one earlier, at the commit), even if
    // the request is abandoned before.
    let guards = (Counted(in_flight.writes), Counted(in_flight.arriving));
    let run = move || {
        let (_writing, arriving) = guards;
        ARRIVING.with_borrow_mut(|a| *a = Some(arriving));
        let out = f();
        ARRIVING.with_borrow_mut(Option::take);
        out
    };
    if !overlapped {
        return ues_sync::repo::accounts::committing_own_only(run);
    }
    blocking(run).await
}

/// One unit of a count, given back when dropped.
struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

thread_local! {
    /// The arriving count of the write this thread runs (see [`write_blocking`]).
    static ARRIVING: std::cell::RefCell<Option<Counted>> = const { std::cell::RefCell::new(None) };
}

/// The current time as AT Protocol datetimes are written (`2026-11-24T12:00:00.000Z`).
pub(crate) fn firehose_time() -> String {
    crate::node::sequencer::now_iso()
}

fn bearer(headers: &HeaderMap) -> Result<&str, XrpcError> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| XrpcError::auth_required("Authentication Required"))
}

/// Moves queued record texts into the full-text index every 100 ms (in batches of
/// [`TEXT_BATCH`], one transaction each), until the state is dropped.
fn spawn_text_indexer(state: &Arc<XrpcState>) -> tokio::task::JoinHandle<()> {
    use ues_sync::repo::accounts::TEXT_BATCH;
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let Some(st) = weak.upgrade() else { break };
            // A full batch means more may be waiting: go again at once (bounded per tick).
            for _ in 0..100 {
                let st = st.clone();
                match tokio::task::spawn_blocking(move || st.accounts.index_text(TEXT_BATCH)).await {
                    Ok(Ok(n)) if n == TEXT_BATCH => continue,
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "full-text indexing failed");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "full-text indexer panicked");
                        break;
                    }
                }
            }
        }
    })
}

/// Every 10 minutes, drops firehose events older than the backfill window.
fn spawn_pruner(state: &Arc<XrpcState>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            let Some(st) = weak.upgrade() else { break };
            let window = st.cfg.firehose_backfill;
            match tokio::task::spawn_blocking(move || st.firehose.prune(window)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(n, "firehose events past the backfill window dropped"),
                Ok(Err(e)) => tracing::error!(error = %e, "firehose pruning failed"),
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        }
    })
}

/// How long an uploaded blob may wait for a record to reference it.
const BLOB_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Every 10 minutes, deletes blobs no record references that were uploaded more than
/// [`BLOB_GRACE`] ago (uploads that were never used would otherwise fill the disk).
fn spawn_blob_gc(state: &Arc<XrpcState>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            let Some(st) = weak.upgrade() else { break };
            match tokio::task::spawn_blocking(move || st.blobs.gc(BLOB_GRACE)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(n, "unreferenced blobs deleted"),
                Ok(Err(e)) => tracing::error!(error = %e, "blob garbage collection failed"),
                _ => {}
            }
        }
    })
}

/// Asks every configured relay to crawl this node: at start, then (checked each minute) when
/// new events exist and 20 minutes have passed since the last request, as the reference PDS
/// does.
fn spawn_crawl_requests(state: &Arc<XrpcState>) -> Option<tokio::task::JoinHandle<()>> {
    if state.cfg.relays.is_empty() {
        return None;
    }
    let weak = Arc::downgrade(state);
    Some(tokio::spawn(async move {
        let mut notified_seq: Option<i64> = None;
        let mut last = std::time::Instant::now();
        loop {
            let Some(st) = weak.upgrade() else { break };
            let seq = *st.firehose.latest();
            let due = notified_seq.is_none() || (Some(seq) != notified_seq && last.elapsed().as_secs() >= 1200);
            if due {
                notified_seq = Some(seq);
                last = std::time::Instant::now();
                let _ = tokio::task::spawn_blocking(move || request_crawl(&st)).await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
    }))
}

fn request_crawl(st: &XrpcState) {
    let hostname = st.cfg.public_url.split("://").nth(1).unwrap_or("").trim_end_matches('/').to_string();
    let body = serde_json::json!({ "hostname": hostname }).to_string();
    for relay in &st.cfg.relays {
        let url = format!("{}/xrpc/com.atproto.sync.requestCrawl", relay.trim_end_matches('/'));
        let sent = st.proxy_agent.post(&url).header("content-type", "application/json").send(body.as_bytes());
        match sent {
            Ok(r) if r.status().is_success() => tracing::info!(%relay, %hostname, "requestCrawl accepted"),
            Ok(r) => tracing::warn!(%relay, status = r.status().as_u16(), "requestCrawl refused"),
            Err(e) => tracing::warn!(%relay, error = %e, "requestCrawl failed"),
        }
    }
}

/// The node's background tasks, once [`start_tasks`] started them: full-text indexing, firehose
/// pruning, blob collection, crawl requests to relays, rate-limit bookkeeping. Building a
/// router starts none of them. Dropping the handle stops them.
#[must_use = "dropping the handle stops the tasks"]
pub struct BackgroundTasks(Vec<tokio::task::JoinHandle<()>>);

impl BackgroundTasks {
    /// Stops the tasks (what dropping the handle does).
    pub fn stop(self) {}

    /// Lets the tasks run as long as the state lives (they hold it weakly and end after it).
    pub fn detach(mut self) {
        self.0.clear();
    }
}

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the node's background tasks for `state` (see [`BackgroundTasks`]).
pub fn start_tasks(state: &Arc<XrpcState>) -> BackgroundTasks {
    let mut tasks = vec![spawn_text_indexer(state), spawn_pruner(state), spawn_blob_gc(state), limits::spawn_gc(state)];
    tasks.extend(spawn_crawl_requests(state));
    BackgroundTasks(tasks)
}

/// The XRPC routes. Starts nothing: see [`start_tasks`].
pub fn router(state: Arc<XrpcState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/xrpc/com.atproto.server.describeServer", get(server::describe_server))
        .route("/xrpc/com.atproto.server.createAccount", post(server::create_account))
        .route("/xrpc/com.atproto.server.createSession", post(server::create_session))
        .route("/xrpc/com.atproto.server.refreshSession", post(server::refresh_session))
        .route("/xrpc/com.atproto.server.getSession", get(server::get_session))
        .route("/xrpc/com.atproto.server.deleteSession", post(server::delete_session))
        .route("/xrpc/com.atproto.server.getServiceAuth", get(server::get_service_auth))
        .route("/xrpc/com.atproto.server.createAppPassword", post(server::create_app_password))
        .route("/xrpc/com.atproto.server.listAppPasswords", get(server::list_app_passwords))
        .route("/xrpc/com.atproto.server.revokeAppPassword", post(server::revoke_app_password))
        .route("/xrpc/com.atproto.identity.resolveHandle", get(server::resolve_handle))
        .route("/xrpc/com.atproto.identity.updateHandle", post(server::update_handle))
        .route("/xrpc/com.atproto.server.activateAccount", post(server::activate_account))
        .route("/xrpc/com.atproto.server.deactivateAccount", post(server::deactivate_account))
        .route("/xrpc/com.atproto.server.checkAccountStatus", get(server::check_account_status))
        .route("/xrpc/com.atproto.repo.describeRepo", get(repo::describe_repo))
        .route("/xrpc/com.atproto.repo.createRecord", post(repo::create_record))
        .route("/xrpc/com.atproto.repo.putRecord", post(repo::put_record))
        .route("/xrpc/com.atproto.repo.deleteRecord", post(repo::delete_record))
        .route("/xrpc/com.atproto.repo.getRecord", get(repo::get_record))
        .route("/xrpc/com.atproto.repo.listRecords", get(repo::list_records))
        .route("/xrpc/com.atproto.repo.applyWrites", post(repo::apply_writes))
        .route(
            "/xrpc/com.atproto.repo.uploadBlob",
            post(blob::upload_blob).layer(DefaultBodyLimit::max(state.cfg.max_blob_bytes as usize + 1)),
        )
        .route("/xrpc/com.atproto.repo.listMissingBlobs", get(blob::list_missing_blobs))
        .route(
            "/xrpc/com.atproto.repo.importRepo",
            post(repo::import_repo).layer(DefaultBodyLimit::max(state.cfg.max_blob_bytes as usize)),
        )
        .route("/xrpc/com.atproto.sync.getBlob", get(blob::get_blob))
        .route("/xrpc/com.atproto.sync.listBlobs", get(blob::list_blobs))
        .route("/xrpc/com.atproto.sync.getRepo", get(sync::get_repo))
        .route("/xrpc/com.atproto.sync.getLatestCommit", get(sync::get_latest_commit))
        .route("/xrpc/com.atproto.sync.getRecord", get(sync::get_record))
        .route("/xrpc/com.atproto.sync.listRepos", get(sync::list_repos))
        .route("/xrpc/app.bsky.actor.getPreferences", get(misc::get_preferences))
        .route("/xrpc/app.bsky.actor.putPreferences", post(misc::put_preferences))
        .route("/xrpc/com.atproto.moderation.createReport", post(misc::create_report))
        .route("/xrpc/com.atproto.sync.subscribeRepos", get(firehose::subscribe_repos))
        .route("/xrpc/com.atproto.sync.getRepoStatus", get(sync::get_repo_status))
        .route("/xrpc/com.atproto.sync.getBlocks", get(sync::get_blocks))
        .route("/xrpc/dev.ues.repo.queryIndex", get(index::query_index))
        .route("/xrpc/dev.ues.repo.searchRecords", get(index::search_records))
        .route("/xrpc/dev.ues.repo.listBacklinks", get(index::list_backlinks))
        .route("/xrpc/dev.ues.repo.listRecordsByTime", get(index::list_records_by_time))
        .route("/xrpc/com.atproto.admin.getAccountInfo", get(admin::get_account_info))
        .route("/xrpc/com.atproto.admin.getAccountInfos", get(admin::get_account_infos))
        .route("/xrpc/com.atproto.admin.updateAccountHandle", post(admin::update_account_handle))
        .route("/xrpc/com.atproto.admin.updateAccountPassword", post(admin::update_account_password))
        .route("/xrpc/com.atproto.admin.updateAccountEmail", post(admin::update_account_email))
        .route("/xrpc/com.atproto.admin.getSubjectStatus", get(admin::get_subject_status))
        .route("/xrpc/com.atproto.admin.updateSubjectStatus", post(admin::update_subject_status))
        .route("/xrpc/com.atproto.admin.deleteAccount", post(admin::delete_account))
        .route("/xrpc/dev.ues.admin.listReports", get(admin::list_reports))
        .route("/xrpc/dev.ues.admin.listPeers", get(admin::list_peers))
        .route("/xrpc/dev.ues.admin.connectPeer", post(admin::connect_peer))
        .route("/xrpc/dev.ues.admin.authorizeDevice", post(admin::authorize_device))
        .route("/xrpc/dev.ues.admin.replicate", post(admin::replicate))
        .route("/xrpc/dev.ues.admin.getReplication", get(admin::get_replication))
        .route("/.well-known/atproto-did", get(server::well_known_atproto_did))
        .route("/.well-known/did.json", get(server::well_known_did_json))
        .route("/metrics", get(metrics::render))
        .route("/xrpc/{*method}", axum::routing::any(proxy::fallback))
        .layer(axum::middleware::from_fn_with_state(state.clone(), extract::validate_params))
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::guard))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        // One span per request (method, path) in the logs, with status and latency at the end.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        // Browser clients call XRPC cross-origin; tokens travel in headers, never cookies.
        .layer(tower_http::cors::CorsLayer::permissive().max_age(std::time::Duration::from_secs(86_400)))
        .with_state(state)
}
