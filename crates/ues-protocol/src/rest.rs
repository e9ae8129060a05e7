//! The REST API for mobile and web apps (`/api/v1`), described by an OpenAPI 3.1 document
//! generated from these handlers and served at `/api/openapi.json`.
//!
//! It is a plain-JSON face of the same operations XRPC offers (the handlers call the XRPC
//! ones, so validation, commits, replication and the firehose behave identically): accounts
//! and sessions, repositories and records (CRUD, lists by cursor), full-text search, blobs
//! (upload; download with byte ranges), node status and peers.
//!
//! Conventions:
//! - Auth: `Authorization: Bearer <accessToken>` (the XRPC session tokens); refresh and
//!   logout take the refresh token. An expired token is 401 `ExpiredToken`.
//! - Errors: always `{"error": Name, "message": text}`; 400 bad input, 401 no or bad token,
//!   403 someone else's repository, 404 not there, 412 a failed `If-Match` / `If-None-Match: *`,
//!   413 too large, 416 unsatisfiable range, 429 rate limited (with `Retry-After`).
//! - Caching: records and repositories carry `ETag` (the record's CID, the repository's head
//!   commit CID); `If-None-Match` with it answers 304. Writes take `If-Match` (the CID the
//!   client last saw: a concurrent change answers 412 and changes nothing).
//! - Rate limits (governor, GCRA): per client IP and per bearer token, each with a burst.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::node::blobs::{blob_error, serve_blob, upload};
use crate::node::extract::XQuery;
use crate::node::records::{RecordPage as Page, RecordView, RecordWrite, Written as Wrote};
use crate::node::{Kind, Node, NodeError, bearer, blocking, sessions, write_blocking, ws_session};

/// Limits of the REST API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Requests per second and burst allowed to one client IP (`None`: unlimited).
    pub per_ip: Option<(u32, u32)>,
    /// Requests per second and burst allowed to one bearer token (`None`: unlimited).
    pub per_token: Option<(u32, u32)>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { per_ip: Some((100, 200)), per_token: Some((50, 100)) }
    }
}

/// Keys one rate limiter tracks at most; past it, idle keys are dropped at once.
const MAX_KEYS: usize = 100_000;

struct Api {
    st: Arc<Node>,
    started: Instant,
    by_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    by_token: Option<DefaultKeyedRateLimiter<u64>>,
}

type ApiResult<T> = Result<T, NodeError>;

// ---------------------------------------------------------------------------------------------
// Schemas

/// Every error.
#[derive(Serialize, ToSchema)]
pub(crate) struct ApiError {
    /// A stable name to match on (`InvalidRequest`, `RecordNotFound`, `ExpiredToken`, ...).
    error: String,
    /// What went wrong, for people.
    message: String,
}

/// A new account.
#[derive(Deserialize, ToSchema)]
pub(crate) struct NewAccount {
    /// Under one of the node's user domains (`alice.test` on a node with no configuration).
    #[schema(max_length = 253)]
    handle: String,
    /// At least 8 characters.
    #[schema(min_length = 8, max_length = 256)]
    password: String,
    email: Option<String>,
    /// An invite code, when the node requires one (XRPC `describeServer` says whether).
    #[serde(rename = "inviteCode")]
    invite_code: Option<String>,
}

/// Credentials.
#[derive(Deserialize, ToSchema)]
pub(crate) struct Login {
    /// Handle, DID or email.
    #[schema(min_length = 1, max_length = 2048)]
    identifier: String,
    /// The account password or one of its app passwords.
    #[schema(min_length = 1, max_length = 256)]
    password: String,
    /// The code mailed to the account when it has two-factor sign-in by email (a sign-in
    /// without it is answered 401 `AuthFactorTokenRequired` and mails one).
    #[serde(default, rename = "authFactorToken")]
    #[schema(max_length = 64)]
    auth_factor_token: Option<String>,
}

/// A session: who, and the tokens (access: 2 hours; refresh: 90 days, single use).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Session {
    did: String,
    handle: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    access_token: String,
    refresh_token: String,
    active: bool,
}

/// The signed-in account.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Me {
    did: String,
    handle: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    active: bool,
    /// Why it is not active (`deactivated`, `takendown`), when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

/// A repository.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RepoInfo {
    did: String,
    handle: String,
    /// The head commit's CID (also the `ETag`).
    head: String,
    /// The head commit's revision (a TID).
    rev: String,
    /// `active`, `deactivated`, `takendown`, ...
    status: String,
    /// Collections holding records.
    collections: Vec<String>,
}

/// A record.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Record {
    /// `at://<did>/<collection>/<rkey>`.
    uri: String,
    /// The record's CID (also its `ETag`).
    cid: String,
    collection: String,
    rkey: String,
    /// The record, in the AT Protocol JSON form (`$type`, `$link`, `$bytes`).
    #[schema(value_type = Object)]
    value: Value,
}

/// A page of records; `cursor` (absent on the last page) asks for the next.
#[derive(Serialize, ToSchema)]
pub(crate) struct RecordPage {
    records: Vec<Record>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

/// The outcome of a write.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Written {
    uri: String,
    /// The record's new CID (also the `ETag`).
    cid: String,
    rkey: String,
    /// The commit that made the change.
    commit: String,
    /// Its revision.
    rev: String,
    /// `valid` (checked against the collection's lexicon) or `unknown` (no lexicon).
    validation_status: String,
}

/// A stored blob; reference it from a record as `{"$type": "blob", "ref": {"$link": cid},
/// "mimeType", "size"}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BlobInfo {
    cid: String,
    mime_type: String,
    size: u64,
    /// The record field value that references this blob.
    #[serde(rename = "ref")]
    #[schema(value_type = Object)]
    blob_ref: Value,
}

/// The node.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeStatus {
    version: String,
    uptime_seconds: u64,
    /// The node's service DID.
    service_did: String,
    public_url: String,
    /// The node's libp2p peer id, when the peer-to-peer service runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_id: Option<String>,
    /// Accounts hosted.
    accounts: u64,
    /// The latest event sequence number.
    seq: i64,
    /// Connected peers.
    peers: u64,
}

/// A connected peer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Peer {
    peer_id: String,
    addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_ms: Option<f64>,
}

/// The peer-to-peer service.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Peers {
    /// Absent when the node runs without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_id: Option<String>,
    listening: Vec<String>,
    connected: Vec<Peer>,
    bans: u64,
    remote_commits: u64,
}

// ---------------------------------------------------------------------------------------------
// Parameters

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct RepoPath {
    /// A DID or a handle.
    repo: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct CollectionPath {
    /// A DID or a handle.
    repo: String,
    /// An ^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+\\.[a-zA-Z][a-zA-Z0-9]{0,62}$ (`app.bsky.feed.post`).
    collection: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct RecordPath {
    /// A DID or a handle.
    repo: String,
    /// An ^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+\\.[a-zA-Z][a-zA-Z0-9]{0,62}$ (`app.bsky.feed.post`).
    collection: String,
    /// The record key.
    rkey: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct BlobPath {
    /// A DID or a handle.
    repo: String,
    /// The blob's ^b[a-z2-7]{8,}$.
    cid: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Records per page.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// From the previous page.
    cursor: Option<String>,
    /// Oldest first (default: newest first).
    reverse: Option<bool>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WriteParams {
    /// The record key to create under (default: a new TID).
    rkey: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchParams {
    /// Words to find (every word must occur).
    #[param(min_length = 1, max_length = 1000)]
    q: String,
    /// Results at most (best first).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// A JSON body whose rejections are this API's JSON errors: 400 (not JSON, or not of the
/// expected shape) and 413 over the node's JSON body limit (`[xrpc] max_body_mib`; blobs have
/// their own, larger limit).
struct Body_<T>(T);

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<Api>> for Body_<T> {
    type Rejection = NodeError;

    async fn from_request(req: Request, api: &Arc<Api>) -> Result<Self, NodeError> {
        let json_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            let media = v.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("application/json") || media.ends_with("+json")
        });
        if !json_type {
            return Err(NodeError::invalid("Content-Type must be application/json"));
        }
        let bytes = axum::body::to_bytes(req.into_body(), api.st.cfg.max_body_bytes).await.map_err(|e| {
            if e.to_string().contains("length limit") {
                NodeError::new(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", "request entity too large")
            } else {
                NodeError::invalid(format!("Could not read the body: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes).map(Body_).map_err(|e| NodeError::invalid(format!("Invalid request body: {e}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and headers

/// XRPC's errors as REST statuses: not-found names are 404, an expired token 401, a failed
/// swap 412, conflicts 409.
fn rest(e: NodeError) -> NodeError {
    let status = match e.kind {
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::Stale => StatusCode::PRECONDITION_FAILED,
        _ => e.status,
    };
    NodeError { status, ..e }
}

/// A path names nothing unless it parses: its parts are checked here, answering 404 (a
/// repository, collection or key that cannot exist is not there).
fn addressed(repo: &str, collection: Option<&str>, rkey: Option<&str>) -> ApiResult<()> {
    use ues_sync::repo::syntax::{AtIdentifier, Nsid, RecordKey};
    if repo.parse::<AtIdentifier>().is_err() {
        return Err(NodeError::new(StatusCode::NOT_FOUND, "RepoNotFound", format!("No repository {repo:?} here")));
    }
    let missing = || NodeError::new(StatusCode::NOT_FOUND, "RecordNotFound", "No such collection or record");
    if collection.is_some_and(|c| Nsid::new(c).is_err()) || rkey.is_some_and(|k| RecordKey::new(k).is_err()) {
        return Err(missing());
    }
    Ok(())
}

/// A string field or parameter of `min..=max` characters.
fn length(name: &str, value: &str, min: usize, max: usize) -> ApiResult<()> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(NodeError::invalid(format!("{name} must have {min} to {max} characters")));
    }
    Ok(())
}

/// A record key given as a query parameter (a cursor, the key to create under).
fn rkey_param(name: &str, value: Option<&str>) -> ApiResult<()> {
    if let Some(v) = value
        && ues_sync::repo::syntax::RecordKey::new(v).is_err()
    {
        return Err(NodeError::invalid(format!("{name} must be a record key")));
    }
    Ok(())
}

fn quoted(cid: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{cid}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// Whether `If-None-Match` names this entity tag (or `*`).
fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    let Some(v) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else { return false };
    v.split(',').map(|t| t.trim().trim_start_matches("W/").trim_matches('"')).any(|t| t == "*" || t == tag)
}

/// The CID in `If-Match` (one strong tag), if any.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<cid::Cid>> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let v = v.to_str().map_err(|_| NodeError::invalid("If-Match must be an entity tag"))?.trim();
    let tag = v.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
    match tag {
        Some(t) if !t.is_empty() && !t.contains('"') && t.parse::<cid::Cid>().is_ok() => Ok(t.parse().ok()),
        _ => Err(NodeError::invalid("If-Match must be one quoted record CID")),
    }
}

fn not_modified_response(tag: &str) -> Response {
    (StatusCode::NOT_MODIFIED, [(header::ETAG, quoted(tag))]).into_response()
}

fn session(s: sessions::Session) -> Session {
    Session {
        active: s.active(),
        did: s.account.did.to_string(),
        handle: s.account.handle.to_string(),
        email: s.email,
        access_token: s.access,
        refresh_token: s.refresh,
    }
}

fn record(r: RecordView) -> Record {
    let (collection, rkey) = r.path();
    let (collection, rkey) = (collection.to_string(), rkey.to_string());
    Record { cid: r.cid, value: r.value, uri: r.uri, collection, rkey }
}

fn page(p: Page) -> RecordPage {
    RecordPage { records: p.records.into_iter().map(record).collect(), cursor: p.cursor }
}

fn written(w: Wrote) -> Written {
    let rkey = w.uri.rsplit('/').next().unwrap_or_default().to_string();
    Written {
        cid: w.cid.unwrap_or_default(),
        rkey,
        commit: w.commit.cid,
        rev: w.commit.rev,
        validation_status: w.validation_status,
        uri: w.uri,
    }
}

fn written_response(status: StatusCode, w: Written, location: bool) -> Response {
    let mut resp = (status, [(header::ETAG, quoted(&w.cid))], Json(&w)).into_response();
    if location {
        let (did, rest) = w.uri.strip_prefix("at://").unwrap_or_default().split_once('/').unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/repos/{did}/records/{rest}")) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Accounts and sessions

/// Create an account (and sign in).
#[utoipa::path(post, path = "/api/v1/accounts", tag = "accounts", request_body = NewAccount,
    responses(
        (status = 201, description = "Created and signed in", body = Session),
        (status = 400, description = "Bad handle (or not under this node's domains), password or body", body = ApiError),
        (status = 409, description = "Handle or email taken", body = ApiError),
        (status = 413, description = "Body too large", body = ApiError),
    ))]
async fn create_account(State(api): State<Arc<Api>>, Body_(b): Body_<NewAccount>) -> ApiResult<Response> {
    length("password", &b.password, 8, 256)?;
    length("handle", &b.handle, 1, 253)?;
    let req = sessions::NewAccount {
        handle: b.handle,
        email: b.email,
        password: Some(b.password),
        recovery_key: None,
        invite_code: b.invite_code,
    };
    let st = api.st.clone();
    let s = blocking(move || st.create_account(req)).await.map_err(rest)?;
    Ok((StatusCode::CREATED, Json(session(s))).into_response())
}

/// Sign in.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions", request_body = Login,
    responses(
        (status = 201, description = "Signed in", body = Session),
        (status = 400, description = "Bad body; account taken down", body = ApiError),
        (status = 401, description = "Wrong identifier or password, or the emailed sign-in code is needed (AuthFactorTokenRequired)", body = ApiError),
        (status = 413, description = "Body too large", body = ApiError),
    ))]
async fn create_session(State(api): State<Arc<Api>>, Body_(b): Body_<Login>) -> ApiResult<Response> {
    length("identifier", &b.identifier, 1, 2048)?;
    length("password", &b.password, 1, 256)?;
    let st = api.st.clone();
    let s =
        blocking(move || st.login(&b.identifier, &b.password, b.auth_factor_token.as_deref())).await.map_err(rest)?;
    Ok((StatusCode::CREATED, Json(session(s))).into_response())
}

/// Exchange the refresh token (as the bearer) for new tokens.
#[utoipa::path(post, path = "/api/v1/sessions/refresh", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 200, description = "New tokens; the old refresh token stops working after a grace period", body = Session),
        (status = 401, description = "No, bad, expired or revoked refresh token", body = ApiError),
    ))]
async fn refresh_session(State(api): State<Arc<Api>>, headers: HeaderMap) -> ApiResult<Json<Session>> {
    let token = bearer(&headers).map_err(rest)?.to_string();
    let st = api.st.clone();
    let s = blocking(move || st.refresh_session(&token)).await.map_err(rest)?;
    Ok(Json(session(s)))
}

/// The signed-in account.
#[utoipa::path(get, path = "/api/v1/sessions/current", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = Me),
        (status = 401, description = "No, bad or expired access token", body = ApiError),
    ))]
async fn get_session(State(api): State<Arc<Api>>, headers: HeaderMap) -> ApiResult<Json<Me>> {
    let claims = api.st.access(&headers).map_err(rest)?;
    let mut s = api.st.describe_session(&claims).map_err(rest)?;
    if !claims.may_read_email() {
        s.email = None;
    }
    Ok(Json(Me {
        active: s.active(),
        status: (!s.active()).then(|| s.account.status.clone()),
        did: s.account.did.to_string(),
        handle: s.account.handle.to_string(),
        email: s.email,
    }))
}

/// Sign out: revokes the refresh token given as the bearer.
#[utoipa::path(delete, path = "/api/v1/sessions/current", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No, bad or expired refresh token", body = ApiError),
    ))]
async fn delete_session(State(api): State<Arc<Api>>, headers: HeaderMap) -> ApiResult<StatusCode> {
    api.st.logout(bearer(&headers).map_err(rest)?).map_err(rest)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Repositories and records

/// A repository: handle, head commit, collections. `ETag`: the head commit's CID.
#[utoipa::path(get, path = "/api/v1/repos/{repo}", tag = "records", params(RepoPath),
    responses(
        (status = 200, description = "The repository", body = RepoInfo,
            headers(("ETag" = String, description = "The head commit's CID, quoted"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag"),
        (status = 400, description = "Not a DID or handle", body = ApiError),
        (status = 404, description = "No such repository here", body = ApiError),
    ))]
async fn get_repo(State(api): State<Arc<Api>>, Path(p): Path<RepoPath>, headers: HeaderMap) -> ApiResult<Response> {
    addressed(&p.repo, None, None)?;
    let st = api.st.clone();
    blocking(move || {
        let account = st.readable_repo(&p.repo).map_err(rest)?;
        let head = account.head.to_string();
        if not_modified(&headers, &head) {
            return Ok(not_modified_response(&head));
        }
        let info = RepoInfo {
            did: account.did.to_string(),
            handle: account.handle.to_string(),
            rev: account.rev.clone(),
            status: account.status.clone(),
            collections: st.collections(&account.did)?,
            head,
        };
        Ok(([(header::ETAG, quoted(&info.head))], Json(info)).into_response())
    })
    .await
}

/// Records of a collection, newest first (by record key), by pages.
#[utoipa::path(get, path = "/api/v1/repos/{repo}/records/{collection}", tag = "records",
    params(CollectionPath, ListParams),
    responses(
        (status = 200, description = "A page", body = RecordPage),
        (status = 400, description = "Bad repository, collection, limit or cursor", body = ApiError),
        (status = 404, description = "No such repository here", body = ApiError),
    ))]
async fn list_records(
    State(api): State<Arc<Api>>,
    Path(p): Path<CollectionPath>,
    XQuery(q): XQuery<ListParams>,
) -> ApiResult<Json<RecordPage>> {
    addressed(&p.repo, Some(&p.collection), None)?;
    rkey_param("cursor", q.cursor.as_deref())?;
    let st = api.st.clone();
    let limit = q.limit.map_or(50, |l| l as usize);
    let found = blocking(move || {
        st.list_records(&p.repo, &p.collection, limit, q.cursor.as_deref(), q.reverse.unwrap_or(false))
    })
    .await
    .map_err(rest)?;
    Ok(Json(page(found)))
}

/// Create a record (the body is the record; `$type` defaults to the collection). Records of a
/// collection whose lexicon the node knows are validated against it.
#[utoipa::path(post, path = "/api/v1/repos/{repo}/records/{collection}", tag = "records",
    params(CollectionPath, WriteParams), request_body(content = Object, description = "The record"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Written,
            headers(("ETag" = String, description = "The record's CID, quoted"),
                    ("Location" = String, description = "The record's URL"))),
        (status = 400, description = "Invalid record (with the lexicon path), bad parameters", body = ApiError),
        (status = 409, description = "A record with that key exists", body = ApiError),
        (status = 401, description = "No, bad or expired access token", body = ApiError),
        (status = 403, description = "Not the token's repository", body = ApiError),
        (status = 404, description = "No such repository here", body = ApiError),
        (status = 413, description = "Body too large", body = ApiError),
    ))]
async fn create_record(
    State(api): State<Arc<Api>>,
    Path(p): Path<CollectionPath>,
    XQuery(q): XQuery<WriteParams>,
    headers: HeaderMap,
    Body_(record): Body_<Value>,
) -> ApiResult<Response> {
    addressed(&p.repo, Some(&p.collection), None)?;
    rkey_param("rkey", q.rkey.as_deref())?;
    let w = RecordWrite {
        repo: p.repo,
        collection: p.collection,
        rkey: q.rkey,
        record,
        validate: None,
        swap_record: None,
        swap_commit: None,
    };
    let st = api.st.clone();
    let made = write_blocking(st.writes_in_flight.clone(), move || {
        let caller = st.access(&headers)?;
        st.create_record(&caller, ws_session(&headers), w)
    })
    .await
    .map_err(rest)?;
    Ok(written_response(StatusCode::CREATED, written(made), true))
}

/// One record. `ETag`: its CID.
#[utoipa::path(get, path = "/api/v1/repos/{repo}/records/{collection}/{rkey}", tag = "records", params(RecordPath),
    responses(
        (status = 200, description = "The record", body = Record,
            headers(("ETag" = String, description = "The record's CID, quoted"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag"),
        (status = 400, description = "Bad repository, collection or key", body = ApiError),
        (status = 404, description = "No such record", body = ApiError),
    ))]
async fn get_record(State(api): State<Arc<Api>>, Path(p): Path<RecordPath>, headers: HeaderMap) -> ApiResult<Response> {
    addressed(&p.repo, Some(&p.collection), Some(&p.rkey))?;
    let st = api.st.clone();
    let found = blocking(move || st.get_record(&p.repo, &p.collection, &p.rkey, None)).await.map_err(rest)?;
    let r = record(found);
    if not_modified(&headers, &r.cid) {
        return Ok(not_modified_response(&r.cid));
    }
    Ok(([(header::ETAG, quoted(&r.cid))], Json(r)).into_response())
}

/// Create or replace a record. `If-Match: "<cid>"`: only if it is still that version;
/// `If-None-Match: *`: only if it does not exist.
#[utoipa::path(put, path = "/api/v1/repos/{repo}/records/{collection}/{rkey}", tag = "records",
    params(RecordPath), request_body(content = Object, description = "The record"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Written", body = Written,
            headers(("ETag" = String, description = "The record's new CID, quoted"))),
        (status = 400, description = "Invalid record, bad parameters", body = ApiError),
        (status = 401, description = "No, bad or expired access token", body = ApiError),
        (status = 403, description = "Not the token's repository", body = ApiError),
        (status = 404, description = "No such repository here", body = ApiError),
        (status = 412, description = "The record is not the version named", body = ApiError),
        (status = 413, description = "Body too large", body = ApiError),
    ))]
async fn put_record(
    State(api): State<Arc<Api>>,
    Path(p): Path<RecordPath>,
    headers: HeaderMap,
    Body_(record): Body_<Value>,
) -> ApiResult<Response> {
    addressed(&p.repo, Some(&p.collection), Some(&p.rkey))?;
    let swap_record = match (if_match(&headers)?, headers.get(header::IF_NONE_MATCH)) {
        (Some(cid), _) => Some(Some(cid)),
        (None, Some(v)) if v.as_bytes() == b"*" => Some(None),
        (None, Some(_)) => return Err(NodeError::invalid("If-None-Match on a write must be *")),
        (None, None) => None,
    };
    let w = RecordWrite {
        repo: p.repo,
        collection: p.collection,
        rkey: Some(p.rkey),
        record,
        validate: None,
        swap_record,
        swap_commit: None,
    };
    let st = api.st.clone();
    let made = write_blocking(st.writes_in_flight.clone(), move || {
        let caller = st.access(&headers)?;
        st.put_record(&caller, ws_session(&headers), w)
    })
    .await
    .map_err(rest)?;
    Ok(written_response(StatusCode::OK, written(made), false))
}

/// Delete a record (deleting one that is not there succeeds). `If-Match: "<cid>"`: only if it
/// is still that version.
#[utoipa::path(delete, path = "/api/v1/repos/{repo}/records/{collection}/{rkey}", tag = "records",
    params(RecordPath), security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted (or was not there)"),
        (status = 400, description = "Bad parameters", body = ApiError),
        (status = 401, description = "No, bad or expired access token", body = ApiError),
        (status = 403, description = "Not the token's repository", body = ApiError),
        (status = 404, description = "No such repository here", body = ApiError),
        (status = 412, description = "The record is not the version named", body = ApiError),
    ))]
async fn delete_record(
    State(api): State<Arc<Api>>,
    Path(p): Path<RecordPath>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    addressed(&p.repo, Some(&p.collection), Some(&p.rkey))?;
    let swap_record = if_match(&headers)?;
    let st = api.st.clone();
    write_blocking(st.writes_in_flight.clone(), move || {
        let caller = st.access(&headers)?;
        st.delete_record(&caller, ws_session(&headers), (&p.repo, &p.collection, &p.rkey), swap_record, None)
    })
    .await
    .map_err(rest)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Full-text search over the node's public records, best match first.
#[utoipa::path(get, path = "/api/v1/search", tag = "records", params(SearchParams),
    responses(
        (status = 200, description = "Matches", body = RecordPage),
        (status = 400, description = "Bad parameters", body = ApiError),
    ))]
async fn search(State(api): State<Arc<Api>>, XQuery(q): XQuery<SearchParams>) -> ApiResult<Json<RecordPage>> {
    if q.q.is_empty() || q.q.chars().count() > 1000 {
        return Err(NodeError::invalid("q must have 1 to 1000 characters"));
    }
    let limit = q.limit.unwrap_or(25);
    if !(1..=100).contains(&limit) {
        return Err(NodeError::invalid("limit must be an integer from 1 to 100"));
    }
    let st = api.st.clone();
    let records = blocking(move || st.search_records(&q.q, limit as usize)).await.map_err(rest)?;
    Ok(Json(page(Page { records, cursor: None })))
}

// ---------------------------------------------------------------------------------------------
// Blobs

/// Upload a blob to the signed-in account (the body; its `Content-Type` is the blob's).
#[utoipa::path(post, path = "/api/v1/blobs", tag = "blobs",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bytes"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored", body = BlobInfo),
        (status = 400, description = "Empty body; MIME type not accepted", body = ApiError),
        (status = 401, description = "No, bad or expired access token", body = ApiError),
        (status = 413, description = "Larger than the node accepts", body = ApiError),
    ))]
async fn upload_blob(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    if headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0")
        || (headers.get(header::CONTENT_LENGTH).is_none() && headers.get(header::TRANSFER_ENCODING).is_none())
    {
        return Err(NodeError::invalid("The body (the blob's bytes) is missing"));
    }
    let b = upload(api.st.clone(), &headers, body).await.map_err(rest)?;
    let info = BlobInfo {
        cid: b.cid.to_string(),
        mime_type: b.mime_type.clone(),
        size: b.size.unwrap_or(0),
        blob_ref: ues_sync::repo::ipld::json::to_json(&b.to_ipld()),
    };
    Ok((StatusCode::CREATED, [(header::ETAG, quoted(&info.cid))], Json(info)).into_response())
}

/// A blob's bytes; `Range: bytes=a-b` (one range) answers 206. `ETag`: its CID (immutable).
#[utoipa::path(get, path = "/api/v1/repos/{repo}/blobs/{cid}", tag = "blobs", params(BlobPath),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("ETag" = String, description = "The blob's CID, quoted"),
                    ("Accept-Ranges" = String, description = "`bytes`"))),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("Content-Range" = String, description = "`bytes a-b/size`"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag"),
        (status = 400, description = "Bad repository or CID", body = ApiError),
        (status = 404, description = "No such blob", body = ApiError),
        (status = 416, description = "The range is outside the blob", body = ApiError),
    ))]
async fn get_blob(State(api): State<Arc<Api>>, Path(p): Path<BlobPath>, headers: HeaderMap) -> ApiResult<Response> {
    addressed(&p.repo, None, None)?;
    let st = api.st.clone();
    blocking(move || {
        let account = st.find_repo(&p.repo).map_err(rest)?;
        let did = st.served_did(account.did.as_str()).map_err(rest)?;
        let cid: cid::Cid =
            p.cid.parse().map_err(|_| NodeError::new(StatusCode::NOT_FOUND, "BlobNotFound", "Blob not found"))?;
        let tag = cid.to_string();
        let Some((mime, reader)) = st.blobs.open(&did, &cid).map_err(blob_error)? else {
            return Err(NodeError::new(StatusCode::NOT_FOUND, "BlobNotFound", "Blob not found"));
        };
        if not_modified(&headers, &tag) {
            return Ok(not_modified_response(&tag));
        }
        let size = reader.size();
        drop(reader);
        let extra = [
            (header::ETAG, quoted(&tag)),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        ];
        Ok(serve_blob(st.clone(), did, cid, &mime, size, &headers, extra))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Node

/// The node: version, uptime, identity, accounts, latest event.
#[utoipa::path(get, path = "/api/v1/node", tag = "node",
    responses(
        (status = 200, description = "Status", body = NodeStatus),
    ))]
async fn node_status(State(api): State<Arc<Api>>) -> ApiResult<Json<NodeStatus>> {
    let st = api.st.clone();
    let started = api.started;
    blocking(move || {
        let accounts = st.accounts.count()? as i64;
        let peers = st.replication.get().map_or(0, |r| r.status().connected.len() as u64);
        Ok(Json(NodeStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: started.elapsed().as_secs(),
            service_did: st.cfg.service_did.clone(),
            public_url: st.cfg.public_url.clone(),
            peer_id: st.peer_id.get().map(|p| p.to_string()),
            accounts: accounts.max(0) as u64,
            seq: *st.firehose.latest(),
            peers,
        }))
    })
    .await
}

/// The peer-to-peer service: this node's peer id, addresses, connected peers (the node
/// operator only: HTTP Basic, user `admin`).
#[utoipa::path(get, path = "/api/v1/peers", tag = "node", security(("operator" = [])),
    responses(
        (status = 200, description = "Peers", body = Peers),
        (status = 401, description = "Not the operator's credentials", body = ApiError),
    ))]
async fn peers(State(api): State<Arc<Api>>, headers: HeaderMap) -> ApiResult<Json<Peers>> {
    api.st.operator(&headers).map_err(rest)?;
    let Some(r) = api.st.replication.get() else {
        return Ok(Json(Peers { peer_id: None, listening: vec![], connected: vec![], bans: 0, remote_commits: 0 }));
    };
    let s = r.status();
    Ok(Json(Peers {
        peer_id: api.st.peer_id.get().map(|p| p.to_string()),
        listening: s.listening.clone(),
        connected: s
            .connected
            .iter()
            .map(|(p, c)| Peer { peer_id: p.clone(), addr: c.addr.clone(), agent: c.agent.clone(), rtt_ms: c.rtt_ms })
            .collect(),
        bans: s.bans,
        remote_commits: s.remote_commits,
    }))
}

// ---------------------------------------------------------------------------------------------
// Rate limits, document, router

/// How long `key` must wait, if it is over its limit.
fn wait<K: std::hash::Hash + Eq + Clone>(lim: &DefaultKeyedRateLimiter<K>, key: &K) -> Option<Duration> {
    lim.check_key(key).err().map(|n| n.wait_time_from(DefaultClock::default().now()))
}

/// Middleware: per-IP, then per-token limits; over either → 429 with `Retry-After`.
async fn limit(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |c| c.0.ip());
    // Between the minute's clean-ups, a flood of new keys is cut back at once.
    if let Some(l) = &api.by_ip
        && l.len() > MAX_KEYS
    {
        l.retain_recent();
    }
    if let Some(l) = &api.by_token
        && l.len() > MAX_KEYS
    {
        l.retain_recent();
    }
    let mut over = api.by_ip.as_ref().and_then(|l| wait(l, &ip));
    if over.is_none()
        && let Some(lim) = &api.by_token
        && let Some(token) = req.headers().get(header::AUTHORIZATION)
    {
        over = wait(lim, &token_key(token.as_bytes()));
    }
    if let Some(after) = over {
        api.st.metrics.rest_limited.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%ip, path = %req.uri().path(), "REST rate limit");
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        let mut resp = NodeError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RateLimitExceeded",
            format!("Too many requests; retry after {} s", secs.max(1)),
        )
        .into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return resp;
    }
    next.run(req).await
}

/// A bearer token's rate-limit key (a stable hash: the same token always maps the same).
fn token_key(token: &[u8]) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(token);
    u64::from_le_bytes(d[..8].try_into().unwrap_or_default())
}

fn limiter<K: std::hash::Hash + Eq + Clone>(rate: Option<(u32, u32)>) -> Option<DefaultKeyedRateLimiter<K>> {
    let (per_sec, burst) = rate?;
    let quota = Quota::per_second(NonZeroU32::new(per_sec)?).allow_burst(NonZeroU32::new(burst.max(per_sec))?);
    Some(RateLimiter::keyed(quota))
}

/// Every minute, forgets clients whose limits have fully recovered (bounding memory).
fn spawn_limiter_gc(api: &Arc<Api>) {
    let weak = Arc::downgrade(api);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let Some(api) = weak.upgrade() else { break };
            if let Some(l) = &api.by_ip {
                l.retain_recent();
                l.shrink_to_fit();
            }
            if let Some(l) = &api.by_token {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    });
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::builder().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        // The node operator: user `admin` with the node's admin password.
        components.add_security_scheme("operator", SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "UES REST API", description = "Accounts, records, blobs and node status for mobile and web apps. Live events: the WebSocket at /ws."),
    modifiers(&BearerAuth),
    components(schemas(ApiError)),
    tags(
        (name = "accounts", description = "Creating accounts"),
        (name = "sessions", description = "Signing in and out"),
        (name = "records", description = "Repositories, records and search"),
        (name = "blobs", description = "Files referenced by records"),
        (name = "node", description = "The node and its peers"),
    )
)]
struct ApiDoc;

/// The syntax of identifiers (AT Protocol's), as JSON Schema patterns on parameters and
/// fields of these names (what a pattern cannot say, such as "not `.` or `..`" for record keys,
/// is checked by the handlers).
const PATTERNS: &[(&str, &str, Option<u64>)] = &[
    (
        "repo",
        r"^(did:[a-z]+:[a-zA-Z0-9._:-]*[a-zA-Z0-9._-]|([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)$",
        Some(2048),
    ),
    (
        "collection",
        r"^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+\.[a-zA-Z][a-zA-Z0-9]{0,62}$",
        Some(317),
    ),
    ("rkey", r"^[A-Za-z0-9._:~-]{1,512}$", None),
    ("cursor", r"^[A-Za-z0-9._:~-]{1,512}$", None),
    ("cid", r"^b[a-z2-7]{8,}$", Some(256)),
];

/// Adds [`PATTERNS`] to the document's parameters, the rate limits' 429 to every operation,
/// and to `NewAccount.handle` the node's handle domains (so generated clients and fuzzers know
/// which handles this node takes).
fn constrain(doc: &mut Value, domains: &[String]) {
    // Every route is behind the rate limits.
    let limited = serde_json::json!({
        "description": "Rate limited: retry after the seconds `Retry-After` gives",
        "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 1}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}},
    });
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for op in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|m| m.values_mut()) {
            if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                responses.insert("429".into(), limited.clone());
            }
            for param in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                let name = param.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
                if let Some((_, pattern, max)) = PATTERNS.iter().find(|(n, _, _)| *n == name)
                    && let Some(schema) = param.get_mut("schema").and_then(Value::as_object_mut)
                {
                    schema.insert("pattern".into(), Value::from(*pattern));
                    if let Some(m) = max {
                        schema.insert("maxLength".into(), Value::from(*m));
                    }
                }
            }
        }
    }
    let alternatives: Vec<String> =
        domains.iter().map(|d| regex_escape(d.trim_start_matches('.'))).filter(|d| !d.is_empty()).collect();
    if let Some(handle) =
        doc.pointer_mut("/components/schemas/NewAccount/properties/handle").and_then(Value::as_object_mut)
        && !alternatives.is_empty()
    {
        let label = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?";
        let pattern = format!(r"^({label}\.)*{label}\.({})$", alternatives.join("|"));
        handle.insert("pattern".into(), Value::from(pattern));
    }
}

fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if !c.is_ascii_alphanumeric() && c != '-' {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// Answers JSON for paths and methods the API does not have.
async fn not_found() -> NodeError {
    NodeError::new(StatusCode::NOT_FOUND, "NotFound", "No such API route")
}

async fn method_not_allowed() -> NodeError {
    NodeError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "Method not allowed on this route")
}

/// The REST routes (`/api/v1/...`) and their OpenAPI document (`/api/openapi.json`).
pub fn router(st: Arc<Node>, cfg: ApiConfig) -> Router {
    router_with(st, cfg, Value::Null)
}

/// [`router`], with the OpenAPI `paths` of REST routes served elsewhere (the applications')
/// in its document.
pub fn router_with(st: Arc<Node>, cfg: ApiConfig, more_paths: Value) -> Router {
    let blob_limit = st.cfg.max_blob_bytes as usize + 1;
    let api = Arc::new(Api {
        st: st.clone(),
        started: Instant::now(),
        by_ip: limiter(cfg.per_ip),
        by_token: limiter(cfg.per_token),
    });
    spawn_limiter_gc(&api);
    let (routes, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_account))
        .routes(routes!(create_session))
        .routes(routes!(refresh_session))
        .routes(routes!(get_session, delete_session))
        .routes(routes!(get_repo))
        .routes(routes!(list_records, create_record))
        .routes(routes!(get_record, put_record, delete_record))
        .routes(routes!(search))
        .routes(routes!(upload_blob))
        .routes(routes!(get_blob))
        .routes(routes!(node_status))
        .routes(routes!(peers))
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    if let (Value::Object(more), Some(paths)) = (more_paths, doc.get_mut("paths").and_then(Value::as_object_mut)) {
        paths.extend(more);
    }
    constrain(&mut doc, &st.cfg.user_domains);
    let doc = Arc::new(doc.to_string());
    let served = doc.clone();
    let routes = routes
        .route("/api/{*rest}", axum::routing::any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(blob_limit));
    let api_routes = routes
        .route(
            "/api/openapi.json",
            axum::routing::get(move || {
                let doc = served.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc.as_str().to_owned()) }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(api.clone(), limit))
        .with_state(api);
    api_routes
        .layer(axum::middleware::from_fn_with_state(st.clone(), crate::node::limits::oauth_layer))
        .layer(axum::middleware::from_fn_with_state(st, crate::node::metrics::track))
        .layer(tower_http::cors::CorsLayer::permissive().max_age(Duration::from_secs(86_400)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tags() {
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, "abc"));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\", W/\"abc\""));
        assert!(not_modified(&h, "abc"));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, "abc"));
        h.insert(header::IF_MATCH, HeaderValue::from_static("nope"));
        assert!(if_match(&h).is_err());
    }
}
