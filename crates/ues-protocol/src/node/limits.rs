//! What an XRPC call may cost before a handler runs: how large its body may be (per method),
//! that an authenticated procedure's token is good before its body is read, and the rate
//! limits the reference PDS sets (per client address, logins per identifier, account
//! creation, blob uploads, emailed tokens tried and mails asked for per address, record writes
//! by points per account).
//!
//! Refusals are `413 PayloadTooLarge`, `401 AuthenticationRequired` and `429
//! RateLimitExceeded`; rate-limited methods answer with `RateLimit-Limit`, `RateLimit-Remaining`,
//! `RateLimit-Reset` (Unix seconds) and `RateLimit-Policy` (`<points>;w=<seconds>`) as the
//! reference does.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;

use super::{Node, NodeError};

/// A budget of `points` per `window` (`points == 0`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Points (requests, or write points) per window.
    pub points: u32,
    /// The window.
    pub window: Duration,
}

impl Rate {
    /// `points` per `secs` seconds.
    pub const fn new(points: u32, secs: u64) -> Self {
        Self { points, window: Duration::from_secs(secs) }
    }
}

const FIVE_MIN: u64 = 300;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// The XRPC rate limits (defaults: the reference PDS's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Every call from one client address (`getRepo` and the firehose excepted).
    pub per_ip: Rate,
    /// `createSession` per identifier and client address, short window.
    pub create_session: Rate,
    /// `createSession` per identifier and client address, daily.
    pub create_session_daily: Rate,
    /// `createAccount` per client address.
    pub create_account: Rate,
    /// `uploadBlob` per account.
    pub upload_blob: Rate,
    /// Emailed tokens tried (resetPassword, deleteAccount, confirmEmail, updateEmail,
    /// signPlcOperation) per client address: a token is 50 bits, and guessing gets nowhere
    /// at this pace.
    pub token_attempts: Rate,
    /// Mails asked for (password reset, confirmation, email change, deletion, PLC operation)
    /// per client address.
    pub mail_requests: Rate,
    /// Record write points per account (create 3, update 2, delete 1), hourly.
    pub write_points_hourly: Rate,
    /// The same, daily.
    pub write_points_daily: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_ip: Rate::new(3000, FIVE_MIN),
            create_session: Rate::new(30, FIVE_MIN),
            create_session_daily: Rate::new(300, DAY),
            create_account: Rate::new(100, FIVE_MIN),
            upload_blob: Rate::new(1000, DAY),
            token_attempts: Rate::new(50, FIVE_MIN),
            mail_requests: Rate::new(15, HOUR),
            write_points_hourly: Rate::new(5000, HOUR),
            write_points_daily: Rate::new(35_000, DAY),
        }
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One limit: its budget and the per-key state (GCRA: the budget refills steadily over the
/// window, and a full budget may be spent at once).
struct Limit<K: std::hash::Hash + Eq + Clone> {
    rate: Rate,
    keyed: Keyed<K>,
}

/// Keys a limiter holds before it forgets those whose budget is whole again.
const MAX_KEYS: usize = 100_000;

impl<K: std::hash::Hash + Eq + Clone> Limit<K> {
    fn new(rate: Rate) -> Option<Self> {
        let points = NonZeroU32::new(rate.points)?;
        let period = rate.window.checked_div(rate.points)?.max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)?.allow_burst(points);
        Some(Self { rate, keyed: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>() })
    }

    /// Spends `n` points of `key`'s budget: what the headers say, and whether it was allowed.
    fn spend(&self, key: &K, n: u32) -> Status {
        if self.keyed.len() > MAX_KEYS {
            self.keyed.retain_recent();
        }
        let period = self.rate.window / self.rate.points;
        let n = NonZeroU32::new(n.max(1)).expect("at least one");
        match self.keyed.check_key_n(key, n) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = period * (self.rate.points - remaining.min(self.rate.points));
                Status { rate: self.rate, remaining, reset: refill, allowed: true }
            }
            Ok(Err(not_until)) => Status {
                rate: self.rate,
                remaining: 0,
                reset: not_until.wait_time_from(DefaultClock::default().now()),
                allowed: false,
            },
            // More points than the whole budget: never allowed.
            Err(_) => Status { rate: self.rate, remaining: 0, reset: self.rate.window, allowed: false },
        }
    }
}

/// The outcome of spending from one limit.
#[derive(Debug, Clone, Copy)]
struct Status {
    rate: Rate,
    remaining: u32,
    /// Until the budget is whole again (allowed), or until the call would be (refused).
    reset: Duration,
    allowed: bool,
}

/// The node's rate limiters.
pub(crate) struct Limiters {
    per_ip: Option<Limit<IpAddr>>,
    create_session: Option<Limit<String>>,
    create_session_daily: Option<Limit<String>>,
    create_account: Option<Limit<IpAddr>>,
    upload_blob: Option<Limit<String>>,
    token_attempts: Option<Limit<IpAddr>>,
    mail_requests: Option<Limit<IpAddr>>,
    write_points_hourly: Option<Limit<String>>,
    write_points_daily: Option<Limit<String>>,
}

impl Limiters {
    pub(crate) fn new(r: &RateLimits) -> Self {
        Self {
            per_ip: Limit::new(r.per_ip),
            create_session: Limit::new(r.create_session),
            create_session_daily: Limit::new(r.create_session_daily),
            create_account: Limit::new(r.create_account),
            upload_blob: Limit::new(r.upload_blob),
            token_attempts: Limit::new(r.token_attempts),
            mail_requests: Limit::new(r.mail_requests),
            write_points_hourly: Limit::new(r.write_points_hourly),
            write_points_daily: Limit::new(r.write_points_daily),
        }
    }

    /// Forgets keys whose budgets are whole again (bounding memory between floods).
    pub(crate) fn retain_recent(&self) {
        fn r<K: std::hash::Hash + Eq + Clone>(l: &Option<Limit<K>>) {
            if let Some(l) = l {
                l.keyed.retain_recent();
                l.keyed.shrink_to_fit();
            }
        }
        r(&self.per_ip);
        r(&self.create_session);
        r(&self.create_session_daily);
        r(&self.create_account);
        r(&self.upload_blob);
        r(&self.token_attempts);
        r(&self.mail_requests);
        r(&self.write_points_hourly);
        r(&self.write_points_daily);
    }
}

/// Spends from each limit in turn; the first refusal wins, otherwise the tightest status is
/// the one reported.
fn spend_all<K: std::hash::Hash + Eq + Clone>(
    limits: &[&Option<Limit<K>>],
    key: &K,
    n: u32,
    tightest: &mut Option<Status>,
) -> Result<(), Status> {
    for l in limits.iter().filter_map(|l| l.as_ref()) {
        let s = l.spend(key, n);
        if !s.allowed {
            return Err(s);
        }
        if tightest.is_none_or(|t| s.remaining < t.remaining) {
            *tightest = Some(s);
        }
    }
    Ok(())
}

fn set_headers(resp: &mut Response, s: &Status) {
    let reset = SystemTime::now().checked_add(s.reset).unwrap_or_else(SystemTime::now);
    let reset = reset.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(s.rate.points));
    h.insert("ratelimit-remaining", HeaderValue::from(s.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(reset));
    if let Ok(v) = HeaderValue::from_str(&format!("{};w={}", s.rate.points, s.rate.window.as_secs())) {
        h.insert("ratelimit-policy", v);
    }
}

fn too_many(st: &Node, s: &Status, what: &str, method: &str) -> Response {
    st.metrics.xrpc_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(method, limit = s.rate.points, window_secs = s.rate.window.as_secs(), "rate limit reached: {what}");
    let mut resp =
        NodeError::new(StatusCode::TOO_MANY_REQUESTS, "RateLimitExceeded", "Rate Limit Exceeded").into_response();
    set_headers(&mut resp, s);
    let secs = s.reset.as_secs() + u64::from(s.reset.subsec_nanos() > 0);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

/// How a procedure is authenticated (checked before its body is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// Nobody yet (account creation, login).
    None,
    /// An access token.
    Access,
    /// Some credential in `Authorization` (refresh tokens, the admin's password): the handler
    /// checks it; a call without one is refused before its body is read.
    Present,
}

/// Largest body of a procedure and how it is authenticated. Bodies are capped by what the
/// method's input can reasonably be; the node's `max_body_bytes` caps them all.
fn procedure(method: &str, max_body: usize) -> (usize, Auth) {
    const KIB: usize = 1024;
    let (limit, auth) = match method {
        "com.atproto.server.createSession" => (4 * KIB, Auth::None),
        // Room for a signed PLC operation and a recovery key besides the credentials.
        "com.atproto.server.createAccount" => (16 * KIB, Auth::None),
        "com.atproto.server.refreshSession" | "com.atproto.server.deleteSession" => (4 * KIB, Auth::Present),
        "com.atproto.server.requestPasswordReset"
        | "com.atproto.server.resetPassword"
        | "com.atproto.server.deleteAccount"
        | "com.atproto.server.reserveSigningKey"
        | "com.atproto.identity.refreshIdentity" => (4 * KIB, Auth::None),
        "com.atproto.server.requestEmailConfirmation"
        | "com.atproto.server.confirmEmail"
        | "com.atproto.server.requestEmailUpdate"
        | "com.atproto.server.updateEmail"
        | "com.atproto.server.requestAccountDelete"
        | "com.atproto.identity.requestPlcOperationSignature" => (4 * KIB, Auth::Access),
        // A PLC operation: keys, handles and services, signed.
        "com.atproto.identity.signPlcOperation" | "com.atproto.identity.submitPlcOperation" => (16 * KIB, Auth::Access),
        "com.atproto.server.createAppPassword"
        | "com.atproto.server.revokeAppPassword"
        | "com.atproto.identity.updateHandle"
        | "com.atproto.server.activateAccount"
        | "com.atproto.server.deactivateAccount"
        | "com.atproto.repo.deleteRecord" => (8 * KIB, Auth::Access),
        // A record (up to the replication layer's 1 MiB, larger as JSON) and its envelope.
        "com.atproto.repo.createRecord" | "com.atproto.repo.putRecord" => (2 * KIB * KIB, Auth::Access),
        // Up to 200 writes.
        "com.atproto.repo.applyWrites" => (4 * KIB * KIB, Auth::Access),
        "app.bsky.actor.putPreferences" => (256 * KIB, Auth::Access),
        "com.atproto.moderation.createReport" => (64 * KIB, Auth::Access),
        // Raw bodies streamed into storage under their own (blob) limit.
        "com.atproto.repo.uploadBlob" | "com.atproto.repo.importRepo" => (usize::MAX, Auth::Access),
        // A repository, under the import limit of the route.
        "dev.ues.admin.importRepo" => (usize::MAX, Auth::Present),
        m if m.starts_with("com.atproto.admin.") || m.starts_with("dev.ues.admin.") => (64 * KIB, Auth::Present),
        _ => (max_body, Auth::None),
    };
    (if limit == usize::MAX { limit } else { limit.min(max_body.max(4 * KIB)) }, auth)
}

/// Write points of a record write (create 3, update 2, delete 1, as the reference counts).
fn write_points(method: &str, body: Option<&[u8]>) -> u32 {
    match method {
        "com.atproto.repo.createRecord" => 3,
        "com.atproto.repo.putRecord" => 2,
        "com.atproto.repo.deleteRecord" => 1,
        "com.atproto.repo.applyWrites" => {
            #[derive(Deserialize)]
            struct Writes {
                writes: Vec<Kind>,
            }
            #[derive(Deserialize)]
            struct Kind {
                #[serde(rename = "$type")]
                kind: String,
            }
            let parsed = body.and_then(|b| serde_json::from_slice::<Writes>(b).ok());
            // A body that does not parse is refused by the handler; count it as one write.
            parsed.map_or(1, |w| {
                w.writes
                    .iter()
                    .map(|k| match k.kind.rsplit('#').next() {
                        Some("create") => 3u32,
                        Some("update") => 2,
                        _ => 1,
                    })
                    .sum::<u32>()
                    .max(1)
            })
        }
        _ => 0,
    }
}

fn has_authorization(req: &Request) -> bool {
    req.headers().get(header::AUTHORIZATION).is_some_and(|v| !v.is_empty())
}

fn too_large(method: &str, limit: usize) -> Response {
    tracing::warn!(method, limit, "request body over the method's limit");
    NodeError::new(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", "request entity too large").into_response()
}

/// Internal header: set by the layer in front once it has cleared the call for the OAuth
/// token's scope (any copy a client sends is removed first).
pub(crate) const OAUTH_CLEARED_HEADER: &str = "x-ues-oauth-cleared";

/// Middleware on every `/xrpc/<method>` call: rate limits, the method's body limit, and the
/// token of an authenticated procedure, all before the body is read.
pub(crate) async fn guard(State(st): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    let Some(method) = req.uri().path().strip_prefix("/xrpc/").map(str::to_owned) else {
        return next.run(req).await;
    };
    let needs = |req: &Request| {
        let own = format!("{}#atproto_pds", st.cfg.service_did);
        let appview = st.cfg.appview.as_ref().map(|a| format!("{}#bsky_appview", a.did));
        let proxy = req.headers().get("atproto-proxy").and_then(|v| v.to_str().ok());
        super::scopes::xrpc_needs(&method, proxy, &own, appview.as_deref())
    };
    match oauth_checks(&st, &mut req, needs) {
        Ok(false) => guarded(st, req, next, method).await,
        Ok(true) => {
            let mut resp = Box::pin(guarded(st.clone(), req, next, method)).await;
            nonce(&st, &mut resp);
            resp
        }
        Err(resp) => *resp,
    }
}

/// Middleware around every route of the node: removes the headers its own layers set for the
/// handlers after checking a request (the DPoP key's thumbprint, the scope's clearance), so no
/// client can send them, whatever route it calls.
pub async fn without_internal_headers(mut req: Request, next: Next) -> Response {
    req.headers_mut().remove(super::DPOP_JKT_HEADER);
    req.headers_mut().remove(OAUTH_CLEARED_HEADER);
    next.run(req).await
}

/// Middleware in front of REST and `/ws`: an OAuth access token's DPoP proof and scope, as the
/// XRPC guard checks them. Record writes and uploads are cleared for their handlers' checks,
/// the account's own session for any token; the rest takes `transition:generic`.
pub async fn oauth_layer(State(st): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let checked = path.starts_with("/api/v1/repos/") && path.contains("/records/")
        || path == "/api/v1/blobs"
        || path == "/api/v1/sessions/current";
    let needs = |_: &Request| if checked { super::scopes::Needs::Checked } else { super::scopes::Needs::Generic };
    match oauth_checks(&st, &mut req, needs) {
        Ok(false) => next.run(req).await,
        Ok(true) => {
            let mut resp = next.run(req).await;
            nonce(&st, &mut resp);
            resp
        }
        Err(resp) => *resp,
    }
}

fn nonce(st: &Node, resp: &mut Response) {
    if let Ok(v) = HeaderValue::from_str(&st.dpop.nonce()) {
        resp.headers_mut().insert("dpop-nonce", v);
    }
}

/// An OAuth access token (`Authorization: DPoP`) comes with a proof of its key: checked here,
/// where the request's method and URL are known (the handlers see the key's thumbprint), and
/// what the call needs from the token's scope (`needs`, worked out only for such a call).
/// `true` when the request carries such a token.
fn oauth_checks(
    st: &Node,
    req: &mut Request,
    needs: impl FnOnce(&Request) -> super::scopes::Needs,
) -> Result<bool, Box<Response>> {
    use super::scopes::Needs;
    req.headers_mut().remove(super::DPOP_JKT_HEADER);
    req.headers_mut().remove(OAUTH_CLEARED_HEADER);
    let dpop = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("DPoP "))
        .map(str::to_owned);
    let Some(token) = dpop else { return Ok(false) };
    let jkt = dpop_proof(st, req, &token)?;
    if let Ok(v) = HeaderValue::from_str(&jkt) {
        req.headers_mut().insert(super::DPOP_JKT_HEADER, v);
    }
    let granted = |check: &dyn Fn(&super::scopes::Permissions) -> bool, scope: &str| {
        let claims = st.oauth_claims(req.headers()).map_err(|e| Box::new(e.into_response()))?;
        match claims.permissions.as_deref() {
            Some(p) if check(p) => Ok(()),
            _ => Err(Box::new(super::scopes::missing(scope).into_response())),
        }
    };
    let cleared = match needs(req) {
        Needs::Checked => true,
        Needs::Scope { scope, granted: check } => {
            granted(&check, &scope)?;
            true
        }
        Needs::Rpc { method, aud } => {
            let scope = format!("rpc:{method}?aud={}", aud.replace('#', "%23"));
            granted(&|p| p.allows_rpc(&method, &aud), &scope)?;
            true
        }
        Needs::Generic => false,
    };
    if cleared {
        req.headers_mut().insert(OAUTH_CLEARED_HEADER, HeaderValue::from_static("1"));
    }
    Ok(true)
}

/// Checks the DPoP proof of a request carrying an OAuth access token: the key's thumbprint, or
/// the 401 to answer (`use_dpop_nonce` with a fresh nonce, or `invalid_dpop_proof`).
fn dpop_proof(st: &Node, req: &Request, token: &str) -> Result<String, Box<Response>> {
    let url = format!("{}{}", st.cfg.public_url.trim_end_matches('/'), req.uri().path());
    let proof = req.headers().get("dpop").and_then(|v| v.to_str().ok()).unwrap_or("");
    match st.dpop.verify(proof, req.method().as_str(), &url, Some(token)) {
        Ok(p) => Ok(p.jkt),
        Err(e) => {
            let (error, message) = match &e {
                super::dpop::DpopError::UseNonce => ("use_dpop_nonce", "Use the DPoP nonce of this answer".to_string()),
                super::dpop::DpopError::Invalid(m) => ("invalid_dpop_proof", m.clone()),
            };
            tracing::info!(error, %message, path = req.uri().path(), "call with a DPoP token refused");
            let mut resp = NodeError::new(StatusCode::UNAUTHORIZED, error, message).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("DPoP error=\"{error}\"")) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            nonce(st, &mut resp);
            Err(Box::new(resp))
        }
    }
}

async fn guarded(st: Arc<Node>, req: Request, next: Next, method: String) -> Response {
    let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let limiters = st.limiters.get();
    let mut tightest: Option<Status> = None;

    // Every call from an address, but for the bulk exports relays make and the firehose.
    let exempt = matches!(method.as_str(), "com.atproto.sync.getRepo" | "com.atproto.sync.subscribeRepos");
    if let (Some(l), Some(ip), false) = (limiters, ip, exempt)
        && let Err(s) = spend_all(&[&l.per_ip], &ip, 1, &mut tightest)
    {
        return too_many(&st, &s, "calls per address", &method);
    }
    if req.method() != Method::POST {
        let mut resp = next.run(req).await;
        if let Some(s) = tightest {
            set_headers(&mut resp, &s);
        }
        return resp;
    }

    // Who calls comes first (the token is in the headers), then how much they send.
    let (limit, auth) = procedure(&method, st.cfg.max_body_bytes);
    let did = match auth {
        Auth::Access => match st.access(req.headers()) {
            Ok(claims) => Some(claims.sub),
            Err(e) => return e.into_response(),
        },
        Auth::Present if !has_authorization(&req) => {
            return NodeError::auth_required("Authentication Required").into_response();
        }
        _ => None,
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(&method, limit);
    }

    // The body is read here only when a limit's key or cost is inside it; then it is bounded.
    let needs_body = limiters.is_some()
        && matches!(method.as_str(), "com.atproto.server.createSession" | "com.atproto.repo.applyWrites");
    let (parts, body) = req.into_parts();
    let (bytes, body) = if needs_body {
        match axum::body::to_bytes(body, limit).await {
            Ok(b) => (Some(b.clone()), Body::from(b)),
            Err(_) => return too_large(&method, limit),
        }
    } else if limit == usize::MAX {
        (None, body)
    } else {
        (None, Body::new(http_body_util::Limited::new(body, limit)))
    };

    if let Some(l) = limiters {
        let refused = match method.as_str() {
            "com.atproto.server.createSession" => {
                #[derive(Deserialize)]
                struct Login {
                    identifier: String,
                }
                let ident = bytes
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<Login>(b).ok())
                    .map(|l| l.identifier.trim().to_ascii_lowercase());
                // A body without an identifier is refused by the handler; its address pays.
                let mut key = ident.unwrap_or_default();
                key.truncate(256);
                let key = format!("{key}-{}", ip.map(|i| i.to_string()).unwrap_or_default());
                spend_all(&[&l.create_session, &l.create_session_daily], &key, 1, &mut tightest)
                    .err()
                    .map(|s| (s, "logins per identifier"))
            }
            "com.atproto.server.createAccount" => ip
                .and_then(|ip| spend_all(&[&l.create_account], &ip, 1, &mut tightest).err())
                .map(|s| (s, "accounts per address")),
            "com.atproto.server.resetPassword"
            | "com.atproto.server.deleteAccount"
            | "com.atproto.server.confirmEmail"
            | "com.atproto.server.updateEmail"
            | "com.atproto.identity.signPlcOperation" => ip
                .and_then(|ip| spend_all(&[&l.token_attempts], &ip, 1, &mut tightest).err())
                .map(|s| (s, "emailed tokens tried per address")),
            "com.atproto.server.requestPasswordReset"
            | "com.atproto.server.requestEmailConfirmation"
            | "com.atproto.server.requestEmailUpdate"
            | "com.atproto.server.requestAccountDelete"
            | "com.atproto.identity.requestPlcOperationSignature" => ip
                .and_then(|ip| spend_all(&[&l.mail_requests], &ip, 1, &mut tightest).err())
                .map(|s| (s, "mails asked for per address")),
            "com.atproto.repo.uploadBlob" => did
                .as_ref()
                .and_then(|d| spend_all(&[&l.upload_blob], d, 1, &mut tightest).err())
                .map(|s| (s, "blob uploads per account")),
            m => match (write_points(m, bytes.as_deref()), &did) {
                (0, _) | (_, None) => None,
                (points, Some(d)) => {
                    spend_all(&[&l.write_points_hourly, &l.write_points_daily], d, points, &mut tightest)
                        .err()
                        .map(|s| (s, "write points per account"))
                }
            },
        };
        if let Some((s, what)) = refused {
            return too_many(&st, &s, what, &method);
        }
    }
    drop(bytes);
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if let Some(s) = tightest {
        set_headers(&mut resp, &s);
    }
    resp
}

/// Every minute, forgets rate-limit keys whose budgets are whole again, until the state goes.
pub(crate) fn spawn_gc(state: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let Some(st) = weak.upgrade() else { break };
            if let Some(l) = st.limiters.get() {
                l.retain_recent();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_spent_then_refused_with_the_time_to_wait() {
        let l = Limit::<String>::new(Rate::new(3, 300)).unwrap();
        let k = "a".to_string();
        let s = l.spend(&k, 1);
        assert!(s.allowed);
        assert_eq!(s.remaining, 2);
        assert!(l.spend(&k, 2).allowed);
        let refused = l.spend(&k, 1);
        assert!(!refused.allowed);
        assert!(refused.reset > Duration::from_secs(60) && refused.reset <= Duration::from_secs(100), "{refused:?}");
        // Another key has its own budget.
        assert!(l.spend(&"b".to_string(), 3).allowed);
        // More than a whole budget at once is never allowed.
        assert!(!l.spend(&"c".to_string(), 4).allowed);
        assert!(Limit::<String>::new(Rate::new(0, 300)).is_none());
    }

    #[test]
    fn write_points_count_as_the_reference_does() {
        assert_eq!(write_points("com.atproto.repo.createRecord", None), 3);
        assert_eq!(write_points("com.atproto.repo.deleteRecord", None), 1);
        let body = br#"{"repo":"x","writes":[{"$type":"com.atproto.repo.applyWrites#create","value":{}},
            {"$type":"com.atproto.repo.applyWrites#update"},{"$type":"com.atproto.repo.applyWrites#delete"}]}"#;
        assert_eq!(write_points("com.atproto.repo.applyWrites", Some(body)), 6);
        assert_eq!(write_points("com.atproto.repo.getRecord", None), 0);
    }

    #[test]
    fn login_bodies_are_capped_at_a_few_kib() {
        assert_eq!(procedure("com.atproto.server.createSession", 16 << 20), (4096, Auth::None));
        assert_eq!(procedure("com.atproto.repo.createRecord", 64 << 10).0, 64 << 10);
        assert_eq!(procedure("com.atproto.repo.uploadBlob", 64 << 10).0, usize::MAX);
    }
}
