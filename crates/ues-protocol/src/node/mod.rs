//! The node core beneath the faces: what every face (`xrpc`, `rest`, `gateway`, `p2p`) shares
//! and none owns. A face depends on this module and on no other face.
//!
//! - [`Node`]: the node's shared state (accounts and repositories, blobs, lexicons, the event
//!   log, the `/ws` origins of writes, the handle of the peer-to-peer service) and the write
//!   path every face commits through ([`Node::commit`], [`write_blocking`]).
//! - [`error`]: [`NodeError`], the one error type, with the [`Kind`] each face answers by.
//! - [`auth`]: passwords, session tokens, the operator's credentials.
//! - [`credentials`]: emails, password hashes and app passwords, the node's own tables.
//! - [`dpop`] and [`oauth_clients`]: DPoP proofs (RFC 9449) and OAuth client metadata, for
//!   the OAuth authorization server.
//! - [`mail`] and [`tokens`]: the mail the node sends and the tokens it emails.
//! - [`sequencer`]: the durable event log every commit writes its event into.
//! - [`peers`]: what the faces may ask of the peer-to-peer service.
//! - [`metrics`] and [`limits`]: the node's counters and rate limits.
//! - [`tasks`]: the background tasks `ues run` starts and stops.

pub mod auth;
pub mod blobs;
pub mod credentials;
pub mod dpop;
pub mod error;
pub mod extract;
pub mod invites;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod oauth_clients;
pub mod oauth_store;
pub mod peers;
pub mod records;
pub mod scopes;
pub mod sequencer;
pub mod sessions;
pub mod tasks;
pub mod tokens;

use std::sync::Arc;

use axum::http::HeaderMap;
use ues_sync::repo::accounts::Accounts;
use ues_sync::repo::blobs::{BlobLimits, BlobStore};
use ues_sync::repo::crypto::Keypair;
use ues_sync::repo::identity::HandleResolver;
use ues_sync::repo::ipld::storage::{Blockstore, Kv};
use ues_sync::repo::lexicon::Lexicons;
use ues_sync::repo::syntax::TidGenerator;

pub use auth::{Claims, check_password, hash_password};
pub use error::{Kind, NodeError};
pub use limits::{Rate, RateLimits};
pub use tasks::{BackgroundTasks, start_tasks};

/// Where `app.bsky.*` calls this node does not serve go.
#[derive(Debug, Clone)]
pub struct AppView {
    /// Base URL (`https://api.bsky.app`).
    pub url: String,
    /// Its service DID (`did:web:api.bsky.app`), the audience of the tokens.
    pub did: String,
}

/// Configuration of the node (from `node.toml`).
#[derive(Debug, Clone)]
pub struct NodeConfig {
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
    /// How long an uploaded blob may wait for a record to reference it before it is deleted.
    pub blob_grace: std::time::Duration,
    /// Resolves handles that are not this node's (DNS TXT, then HTTPS).
    pub handle_resolver: HandleResolver,
    /// Password of the `admin` user for `com.atproto.admin.*` (HTTP Basic); `None` disables them.
    pub admin_password: Option<String>,
    /// Where `app.bsky.*` methods this node does not serve go; `None`: they answer 501.
    pub appview: Option<AppView>,
    /// Where `com.atproto.moderation.createReport` goes (`[xrpc] report_service_url`); `None`:
    /// reports are kept here for the operator.
    pub report_service: Option<AppView>,
    /// Relays (base URLs) asked to crawl this node (`com.atproto.sync.requestCrawl`): at start,
    /// then at most every 20 minutes while there are new events.
    pub relays: Vec<String>,
    /// How long firehose events are kept for replay (the backfill window).
    pub firehose_backfill: std::time::Duration,
    /// Serve `/metrics` and `/stats` to anyone; otherwise the operator's credentials are needed.
    pub public_metrics: bool,
    /// OAuth client metadata and keys may come from `http:` URLs and private addresses
    /// (`[oauth] private_client_addresses`: tests and closed networks).
    pub oauth_private_clients: bool,
}

/// What the node's storage offers its operator: backups and gauges (the binary, which opened
/// the storage, provides it).
pub trait StorageOps: Send + Sync {
    /// Writes a consistent copy of the node's storage, keys and configuration into `dir`
    /// (created; it must not exist), taken while the node serves writes; returns what it holds.
    fn backup(&self, dir: &std::path::Path) -> Result<serde_json::Value, String>;

    /// The storage's gauges now (database sizes, compaction, free disk).
    fn gauges(&self) -> Vec<Gauge>;
}

/// Lists the TLS certificates a node serves: (name, expiry).
pub type Certificates = dyn Fn() -> Vec<(String, std::time::SystemTime)> + Send + Sync;

/// One gauge of [`StorageOps::gauges`]: a metric name (`ues_` prefixed), its help text, its
/// labels and value.
#[derive(Debug, Clone)]
pub struct Gauge {
    /// The metric's name.
    pub name: &'static str,
    /// What it measures.
    pub help: &'static str,
    /// Labels (`db="blocks"`).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: u64,
}

/// The node: its shared state and the operations every face calls.
pub struct Node {
    /// Accounts and repositories.
    pub accounts: Accounts<Arc<dyn Blockstore>>,
    /// Schemas records and bodies are validated against.
    pub lexicons: Lexicons,
    /// Session state (refresh tokens) with TTLs.
    pub kv: Arc<dyn Kv>,
    /// Configuration.
    pub cfg: NodeConfig,
    /// Record keys for createRecord without an rkey.
    pub tids: TidGenerator,
    /// Account blobs.
    pub blobs: BlobStore<Arc<dyn Blockstore>, Arc<dyn Kv>>,
    /// The event stream's sequencer.
    pub firehose: crate::node::sequencer::Firehose,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// HTTP client for AppView calls (30 s timeout, no redirects).
    pub(crate) proxy_agent: ureq::Agent,
    /// HTTP client for services found in DID documents (`atproto-proxy`): the same limits, and
    /// public addresses only unless this is a development node.
    pub(crate) service_agent: ureq::Agent,
    /// The peer-to-peer service, when the node runs it (see [`peers::PeerService`]).
    pub replication: std::sync::OnceLock<Arc<dyn peers::PeerService>>,
    /// The node's libp2p peer id, when the peer-to-peer service runs.
    pub peer_id: std::sync::OnceLock<libp2p::PeerId>,
    /// Backups and gauges of the node's storage, when `ues run` provides them.
    pub storage_ops: std::sync::OnceLock<Arc<dyn StorageOps>>,
    /// The TLS certificates the node serves, by name, with their expiry (when it serves HTTPS).
    pub certificates: std::sync::OnceLock<Arc<Certificates>>,
    /// Signing keys reserved for accounts about to move here (by DID, or by the key's did:key
    /// when no DID was named), newest last.
    pub(crate) reserved_keys: parking_lot::Mutex<std::collections::VecDeque<(String, std::time::Instant, Keypair)>>,
    /// DPoP nonces and proofs (OAuth).
    pub dpop: dpop::Dpop,
    /// OAuth clients' metadata (fetched, cached).
    pub oauth_clients: oauth_clients::OauthClients,
    /// Pushed authorization requests waiting for the user, by `request_uri`.
    pub(crate) oauth_requests: parking_lot::Mutex<ues_sync::repo::dids::TtlCache<oauth_store::PushedRequest>>,
    /// Codes waiting for the client, by code.
    pub(crate) oauth_codes: parking_lot::Mutex<ues_sync::repo::dids::TtlCache<oauth_store::Grant>>,
    /// Resolves DIDs that are not this node's (cached, bounded).
    pub dids: ues_sync::repo::dids::DidResolver,
    /// Where the node's mail goes (`ues run` always sets it: SMTP or the outbox file).
    pub mailer: std::sync::OnceLock<Arc<mail::Mailer>>,
    /// Whether an account is made only with an invite code (`[xrpc] invite_required`).
    pub invite_required: std::sync::atomic::AtomicBool,
    /// When the node started.
    pub started: std::time::Instant,
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
    /// XRPC rate limits, once [`Node::set_rate_limits`] turns them on.
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

/// Signing keys held for accounts about to move here; past it the oldest reservation goes.
pub const MAX_RESERVED_KEYS: usize = 10_000;

/// How long a reserved signing key is held.
pub const RESERVED_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Repository exports (`getRepo`) running at once; more wait their turn without a thread.
pub const MAX_EXPORTS: usize = 16;

/// How long an export waits on a client that reads nothing before it gives up its thread.
pub const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes (commit, record path) whose originating `/ws` session is remembered.
pub const MAX_ORIGINS: usize = 65_536;

/// A write: the commit that made it and the record's path.
pub(crate) type Origin = (cid::Cid, String);

impl Node {
    /// Builds the node, applying the core's migrations (a face or application applies its own
    /// with [`Node::migrate`]).
    pub fn new(
        mut accounts: Accounts<Arc<dyn Blockstore>>,
        lexicons: Lexicons,
        kv: Arc<dyn Kv>,
        cfg: NodeConfig,
    ) -> Result<Self, NodeError> {
        accounts.db().migrate(crate::node::credentials::MIGRATIONS).map_err(NodeError::internal)?;
        accounts.db().migrate(crate::node::sequencer::MIGRATIONS).map_err(NodeError::internal)?;
        accounts.db().migrate(crate::node::invites::MIGRATIONS).map_err(NodeError::internal)?;
        accounts.db().migrate(crate::node::tokens::MIGRATIONS).map_err(NodeError::internal)?;
        accounts.db().migrate(crate::node::oauth_store::MIGRATIONS).map_err(NodeError::internal)?;
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
        let dids = ues_sync::repo::dids::DidResolver::new(cfg.plc_url.as_deref());
        // A node reached on loopback or a private address is a development node: the did:web
        // documents of its peers are on such addresses too.
        let development = development_url(&cfg.public_url);
        let dids = if development { dids.allowing_private() } else { dids };
        let private_clients = cfg.oauth_private_clients;
        Ok(Self {
            accounts,
            lexicons,
            kv,
            cfg,
            tids: TidGenerator::new(7),
            blobs,
            firehose,
            metrics: metrics::Metrics::default(),
            proxy_agent: proxy_config().into(),
            service_agent: if development {
                proxy_config().into()
            } else {
                ues_sync::repo::identity::public_only_agent(proxy_config())
            },
            replication: std::sync::OnceLock::new(),
            peer_id: std::sync::OnceLock::new(),
            storage_ops: std::sync::OnceLock::new(),
            certificates: std::sync::OnceLock::new(),
            dids,
            dpop: dpop::Dpop::default(),
            oauth_clients: oauth_clients::OauthClients::new(private_clients),
            oauth_requests: parking_lot::Mutex::new(ues_sync::repo::dids::TtlCache::new(oauth_store::MAX_PENDING)),
            oauth_codes: parking_lot::Mutex::new(ues_sync::repo::dids::TtlCache::new(oauth_store::MAX_PENDING)),
            reserved_keys: parking_lot::Mutex::new(Default::default()),
            mailer: std::sync::OnceLock::new(),
            invite_required: std::sync::atomic::AtomicBool::new(false),
            started: std::time::Instant::now(),
            origins: parking_lot::RwLock::new(Default::default()),
            writing_sessions: parking_lot::RwLock::new(Default::default()),
            writes_in_flight,
            limiters: std::sync::OnceLock::new(),
            exports: Arc::new(tokio::sync::Semaphore::new(MAX_EXPORTS)),
        })
    }

    /// Keeps blobs in an object store too (S3): those there are read from it, and new ones go
    /// to `write_to`. Uploads to it a stop cut off are aborted now.
    pub fn with_blob_objects(
        mut self,
        objects: Arc<dyn ues_sync::repo::ipld::storage::Objects>,
        write_to: ues_sync::repo::ipld::storage::BlobPlace,
    ) -> Result<Self, NodeError> {
        tracing::info!(store = %objects.describe(), new_blobs = %write_to, "blobs in an object store");
        self.blobs = self.blobs.with_objects(objects, write_to).map_err(NodeError::internal)?;
        Ok(self)
    }

    /// Holds `key` for the account `name` (a DID, or the key's did:key) is about to bring here,
    /// replacing an earlier reservation of the same name.
    pub fn reserve_key(&self, name: String, key: Keypair) {
        let mut held = self.reserved_keys.lock();
        held.retain(|(n, at, _)| *n != name && at.elapsed() < RESERVED_KEY_TTL);
        held.push_back((name, std::time::Instant::now(), key));
        while held.len() > MAX_RESERVED_KEYS {
            held.pop_front();
        }
    }

    /// The signing key reserved under `name`, taken (a reservation serves one account).
    pub fn take_reserved_key(&self, name: &str) -> Option<Keypair> {
        let mut held = self.reserved_keys.lock();
        let i = held.iter().position(|(n, at, _)| n == name && at.elapsed() < RESERVED_KEY_TTL)?;
        held.remove(i).map(|(_, _, k)| k)
    }

    /// The node's mailer, or `MailUnavailable` (503) on a node built without one.
    pub fn mailer(&self) -> Result<&mail::Mailer, NodeError> {
        self.mailer.get().map(|m| m.as_ref()).ok_or_else(|| {
            NodeError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "MailUnavailable", "This server sends no email")
        })
    }

    /// The node's host name, from its public URL (lower case, without port).
    pub fn host_name(&self) -> String {
        let url = self.cfg.public_url.split("://").nth(1).unwrap_or("");
        url.split(['/', ':']).next().unwrap_or("").to_ascii_lowercase()
    }

    /// Applies the migrations of a face or application to the node's database.
    pub fn migrate(&self, migrations: &[ues_sync::repo::ipld::storage::Migration]) -> Result<(), NodeError> {
        self.accounts.db().migrate(migrations).map(drop).map_err(NodeError::internal)
    }

    /// Turns the XRPC rate limits on (they are off until then; a second call changes nothing).
    pub fn set_rate_limits(&self, limits: &RateLimits) {
        let _ = self.limiters.set(limits::Limiters::new(limits));
    }

    /// Remembers which `/ws` session made a write (when the request said so).
    fn note_origin(&self, id: Option<u64>, res: &ues_sync::repo::repo::CommitResult) {
        let Some(id) = id else { return };
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

    /// Commits writes from a client: through the peer-to-peer service when the node runs it (a
    /// replicated account's commit becomes signed operations too), else directly; remembers
    /// `origin`, the `/ws` session the write came from, if the request named one
    /// ([`ws_session`]).
    pub fn commit(
        &self,
        origin: Option<u64>,
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
        self.note_origin(origin, &res);
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
            generation: auth::session_generation(self, did).ok(),
            cnf: None,
            sid: None,
            permissions: None,
        };
        auth::sign(&self.cfg.jwt_secret, "at+jwt", &claims)
    }

    /// Checks the node operator's credentials: `Authorization: Basic base64(admin:<password>)`.
    pub(crate) fn operator(&self, headers: &HeaderMap) -> Result<(), NodeError> {
        use base64::Engine;
        use sha2::Digest;
        let denied = || NodeError::auth_required("Admin authentication required");
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
    pub fn access(&self, headers: &HeaderMap) -> Result<Claims, NodeError> {
        let token = bearer(headers)?;
        let claims = auth::verify(&self.cfg.jwt_secret, token, "at+jwt")?;
        let scope_ok = matches!(
            claims.scope.as_str(),
            "com.atproto.access" | "com.atproto.appPass" | "com.atproto.appPassPrivileged"
        );
        if let Some(cnf) = &claims.cnf {
            return self.oauth_access(headers, claims.clone(), cnf);
        }
        if !scope_ok || claims.aud != self.cfg.service_did {
            return Err(NodeError::new(axum::http::StatusCode::UNAUTHORIZED, "InvalidToken", "Bad token scope"));
        }
        if claims.exp <= auth::now_secs() {
            // What the reference PDS sends; clients take it as the signal to refresh.
            return Err(NodeError::token("ExpiredToken", "Token has expired"));
        }
        if auth::is_revoked(self, &claims)? {
            return Err(NodeError::token("ExpiredToken", "Token has been revoked"));
        }
        Ok(claims)
    }
}

/// What the node's outgoing proxy calls may take: 30 s, no redirects.
fn proxy_config() -> ureq::config::Config {
    ues_sync::repo::identity::fetch_config(std::time::Duration::from_secs(30))
}

/// Whether a public URL names `localhost` or an address that is not public.
fn development_url(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
    let host =
        host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| !ues_sync::repo::identity::is_public(ip))
}

impl Node {
    /// The HTTP client for calls to other services found through DID documents (a PDS an
    /// application reads from): 30 s, no redirects, public addresses only unless this is a
    /// development node.
    pub fn service_agent(&self) -> &ureq::Agent {
        &self.service_agent
    }

    /// A service-auth token of `did` (an account held here, signing with its repository key) for
    /// the service or account `aud`, bound to the method `lxm`, good for a minute.
    pub fn service_auth(&self, did: &ues_sync::repo::syntax::Did, aud: &str, lxm: &str) -> Result<String, NodeError> {
        auth::service_token(self, did, aud, Some(lxm), auth::now_secs() + 60)
    }

    /// Checks a service-auth token for the method `lxm` whose audience `aud_ok` accepts (for
    /// calls made to an account here rather than to the node): signed by the key the issuer's
    /// DID document names, not expired, not seen before. Returns the issuer and the audience.
    pub fn verify_service_auth(
        &self,
        token: &str,
        lxm: &str,
        aud_ok: impl Fn(&str) -> bool,
    ) -> Result<(ues_sync::repo::syntax::Did, String), NodeError> {
        auth::verify_service_token_for(self, token, lxm, &aud_ok)
    }

    /// Whether this node is reached on loopback or a private address (a development node,
    /// whose peers and services are on such addresses too).
    pub fn development(&self) -> bool {
        development_url(&self.cfg.public_url)
    }

    /// An OAuth access token's claims, good when it came with a proof of its key (checked by
    /// the XRPC, REST and `/ws` layers), its session is live, and the layer in front cleared
    /// the call for the token's scope (see [`scopes::xrpc_needs`]); a token without
    /// `transition:generic` is taken only where it was cleared. The claims carry the session's
    /// permissions, for the handlers' own checks (collections, upload types, services), and the
    /// scope of what session tokens carry: an app password's, a privileged one's with
    /// `transition:chat.bsky`.
    fn oauth_access(&self, headers: &HeaderMap, claims: Claims, cnf: &serde_json::Value) -> Result<Claims, NodeError> {
        let claims = self.oauth_grant(headers, claims, cnf)?;
        let generic = claims.permissions.as_ref().is_some_and(|p| p.generic);
        if !generic && !headers.contains_key(limits::OAUTH_CLEARED_HEADER) {
            return Err(scopes::missing("transition:generic"));
        }
        Ok(claims)
    }

    /// What an OAuth scope grants, its `include:` permission sets resolved with the lexicons
    /// this node holds.
    pub fn permissions(&self, scope: &str) -> Result<scopes::Permissions, scopes::ScopeError> {
        let sets = |nsid: &str| match self.lexicons.get(nsid) {
            Some(ues_sync::repo::lexicon::Def::PermissionSet(v)) => Some(v.clone()),
            _ => None,
        };
        scopes::Permissions::parse_with(scope, &sets)
    }

    /// An OAuth access token's claims with the session's permissions, before any check of what
    /// the call needs.
    pub(crate) fn oauth_grant(
        &self,
        headers: &HeaderMap,
        mut claims: Claims,
        cnf: &serde_json::Value,
    ) -> Result<Claims, NodeError> {
        let unauthorized = |m: &str| NodeError::new(axum::http::StatusCode::UNAUTHORIZED, "InvalidToken", m);
        let dpop = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("DPoP "));
        let proven = headers.get(DPOP_JKT_HEADER).and_then(|v| v.to_str().ok());
        if !dpop || proven.is_none() || proven != cnf.get("jkt").and_then(serde_json::Value::as_str) {
            tracing::warn!(did = %claims.sub, "a DPoP-bound token without a proof of its key");
            return Err(unauthorized("This token is bound to a DPoP key and needs its proof"));
        }
        if claims.aud != self.cfg.service_did {
            return Err(unauthorized("Bad token audience"));
        }
        if claims.exp <= auth::now_secs() {
            return Err(NodeError::token("ExpiredToken", "Token has expired"));
        }
        let live = match claims.sid.as_deref() {
            Some(sid) => oauth_store::is_live(self.accounts.db(), sid)?,
            None => false,
        };
        if !live || auth::is_revoked(self, &claims)? {
            return Err(NodeError::token("ExpiredToken", "Token has been revoked"));
        }
        let permissions = self.permissions(&claims.scope).map_err(|e| unauthorized(&e.0))?;
        claims.scope = if permissions.generic && permissions.chat {
            "com.atproto.appPassPrivileged".into()
        } else {
            "com.atproto.appPass".into()
        };
        claims.permissions = Some(std::sync::Arc::new(permissions));
        Ok(claims)
    }

    /// The claims of the OAuth access token a request carries (its DPoP proof checked), with
    /// its permissions.
    pub(crate) fn oauth_claims(&self, headers: &HeaderMap) -> Result<Claims, NodeError> {
        let claims = auth::verify(&self.cfg.jwt_secret, bearer(headers)?, "at+jwt")?;
        let Some(cnf) = claims.cnf.clone() else {
            return Err(NodeError::new(axum::http::StatusCode::UNAUTHORIZED, "InvalidToken", "Not an OAuth token"));
        };
        self.oauth_grant(headers, claims, &cnf)
    }
}

/// Runs blocking store work (RocksDB, SQLite, signing) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f).await.map_err(NodeError::internal)?
}

/// Runs a record write (validation, commit, indexing). While writes come one at a time, each
/// runs on the request's own async worker: it commits at once (there is nothing to group it
/// with) and skips two thread hand-offs (measured: ~12% less CPU per sequential createRecord).
/// A write that overlaps another goes to the blocking pool, where concurrent writes group, and
/// so do the next [`INLINE_AFTER`] writes: a worker busy committing delays the tasks queued on
/// it, which under concurrency cost more than the hand-offs save. At most one async worker at a
/// time does store work, for its own write only (see `committing_own_only`).
///
/// Until it reaches [`Node::commit`] (or ends without), the write counts as arriving,
/// which a committer waits for briefly so it joins its group (`Accounts::expect_writers_from`).
pub(crate) async fn write_blocking<T: Send + 'static>(
    in_flight: WritesInFlight,
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
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

/// The `/ws` session a request says it comes from (header `X-Ues-Ws-Session`), so that
/// session is not sent its own writes back.
pub fn ws_session(headers: &HeaderMap) -> Option<u64> {
    headers.get("x-ues-ws-session").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// The current time as AT Protocol datetimes are written (`2026-11-24T12:00:00.000Z`).
pub(crate) fn firehose_time() -> String {
    crate::node::sequencer::now_iso()
}

pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, NodeError> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("DPoP ")))
        .ok_or_else(|| NodeError::auth_required("Authentication Required"))
}

/// The header the XRPC guard sets, after checking a request's DPoP proof, to the thumbprint of
/// the key that signed it (any copy a client sends is removed first).
pub(crate) const DPOP_JKT_HEADER: &str = "x-ues-dpop-jkt";
