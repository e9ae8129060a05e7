//! The OAuth authorization server of the AT Protocol OAuth profile (OAuth 2.1 with pushed
//! authorization requests, PKCE `S256` and DPoP), one face beside `xrpc`, `rest` and
//! `gateway`, standing on [`crate::node`] only:
//!
//! - `POST /oauth/par`: a client (its metadata fetched from its `client_id`, or the localhost
//!   development client) pushes its request with a DPoP proof; the answer is a `request_uri`
//!   good for five minutes and a DPoP nonce.
//! - `GET /oauth/authorize`: the user's page (server-rendered, no JavaScript): the client, the
//!   permissions asked in plain words, the account's identifier and password, allow or deny.
//!   `POST` the same: checks the CSRF token (a `SameSite=Strict` cookie matched by a form field)
//!   and the account password, then sends the browser back to the client with a one-minute code.
//! - `POST /oauth/token`: the code with its PKCE verifier (and the DPoP key of the pushed
//!   request), or a refresh token (rotated on each use; one used twice ends the session), for a
//!   DPoP-bound access token (`cnf.jkt`).
//! - `POST /oauth/revoke`: ends the session of a refresh token (or of an access token).
//! - `/.well-known/oauth-authorization-server` and `/.well-known/oauth-protected-resource`:
//!   the metadata clients discover the server by (the node is its own authorization server).
//! - `/account`: the account page, where a person sees and revokes the apps they authorized
//!   ([`account`]).
//!
//! Clients are public (no authentication) or confidential (`private_key_jwt`: an ES256
//! assertion signed by a key of the client's published set, used once; the session is bound to
//! that key, and lives 180 days instead of 14).
//!
//! XRPC, REST and `/ws` take these tokens as `Authorization: DPoP <token>` with a proof of the
//! key, and check the session's scope on every call (`crate::node::scopes`):
//! `transition:generic` acts as an app password (with `transition:chat.bsky` a privileged
//! one); the granular permissions allow exactly what they name, and a call outside them is
//! answered 403 `InsufficientScope` naming the scope missing.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::node::dpop::DpopError;
use crate::node::oauth_clients::{ClientError, ClientMetadata};
use crate::node::oauth_store::{self, Grant, OauthSession, PushedRequest, Refresh};

mod account;
use crate::node::{Node, blocking};

/// Largest form body taken.
const MAX_FORM: usize = 16 * 1024;
/// How long an access token lives.
const ACCESS_TTL: u64 = 3600;
/// How long a public client's session lives.
const SESSION_TTL: i64 = 14 * 86_400;
/// How long a confidential client's session lives (its refreshes need its signing key).
const CONFIDENTIAL_SESSION_TTL: i64 = 180 * 86_400;
/// How an authorization answer may go back to the client: in the redirect's query, its fragment
/// (browser apps), or a form the browser posts to it.
const RESPONSE_MODES: &[&str] = &["query", "fragment", "form_post"];

/// The `prompt` values taken: every one but `none` shows the sign-in page (each sign-in asks
/// for the password; new accounts are made by apps through `createAccount`).
const PROMPTS: &[&str] = &["none", "login", "consent", "select_account", "create"];

/// The scopes listed in the server's metadata (the granular forms are taken too).
pub const SCOPES: &[&str] = &["atproto", "transition:generic", "transition:email", "transition:chat.bsky"];

/// The cookie that carries the page's CSRF token.
const CSRF_COOKIE: &str = "ues-oauth-csrf";

/// Sign-in attempts on the consent page per client address per 5 minutes (as `createSession`'s).
const SIGN_INS_PER_5MIN: u32 = 30;
/// OAuth requests (pushed requests, tokens) per client address per 5 minutes.
const REQUESTS_PER_5MIN: u32 = 300;

/// Per-address budgets of the OAuth endpoints.
struct Budgets {
    sign_ins: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    requests: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
}

fn per_5min(n: u32) -> governor::Quota {
    let n = std::num::NonZeroU32::new(n).expect("not zero");
    governor::Quota::with_period(std::time::Duration::from_secs(300) / n.get()).expect("a period").allow_burst(n)
}

/// The OAuth routes.
pub fn router(st: Arc<Node>) -> Router {
    let budgets = Arc::new(Budgets {
        sign_ins: governor::RateLimiter::keyed(per_5min(SIGN_INS_PER_5MIN)),
        requests: governor::RateLimiter::keyed(per_5min(REQUESTS_PER_5MIN)),
    });
    // Called by clients in browsers too: any origin, no credentials.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers(tower_http::cors::Any)
        .expose_headers([HeaderName::from_static("dpop-nonce"), header::WWW_AUTHENTICATE])
        .max_age(std::time::Duration::from_secs(86_400));
    let api = Router::new()
        .route("/.well-known/oauth-authorization-server", get(server_metadata))
        .route("/.well-known/oauth-protected-resource", get(resource_metadata))
        .route("/oauth/par", post(par))
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .layer(cors);
    let pages = Router::new()
        .route("/oauth/authorize", get(authorize_page).post(authorize))
        .route("/account", get(account::page))
        .route("/account/sign-in", post(account::sign_in))
        .route("/account/revoke", post(account::revoke))
        .route("/account/sign-out", post(account::sign_out))
        .layer(axum::Extension(Arc::new(account::WebSessions::default())));
    api.merge(pages)
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let budgets = budgets.clone();
            async move { limit(&budgets, req, next).await }
        }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .with_state(st)
}

/// The authorization server's metadata (RFC 8414, with the AT Protocol profile's fields).
async fn server_metadata(State(st): State<Arc<Node>>) -> Response {
    let iss = issuer(&st);
    axum::Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/oauth/authorize"),
        "token_endpoint": format!("{iss}/oauth/token"),
        "pushed_authorization_request_endpoint": format!("{iss}/oauth/par"),
        "revocation_endpoint": format!("{iss}/oauth/revoke"),
        "require_pushed_authorization_requests": true,
        "scopes_supported": SCOPES,
        "subject_types_supported": ["public"],
        "response_types_supported": ["code"],
        "response_modes_supported": RESPONSE_MODES,
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "ui_locales_supported": ["en-US"],
        "display_values_supported": ["page", "popup", "touch"],
        "prompt_values_supported": PROMPTS,
        "authorization_response_iss_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": true,
        "require_request_uri_registration": true,
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
        "dpop_signing_alg_values_supported": ["ES256"],
        "client_id_metadata_document_supported": true,
        "protected_resources": [iss],
    }))
    .into_response()
}

/// The protected resource's metadata (RFC 9728): this node, its own authorization server.
async fn resource_metadata(State(st): State<Arc<Node>>) -> Response {
    let iss = issuer(&st);
    axum::Json(json!({
        "resource": iss,
        "authorization_servers": [iss],
        "scopes_supported": [],
        "bearer_methods_supported": ["header"],
        "resource_documentation": "https://atproto.com",
    }))
    .into_response()
}

/// Spends the caller's budgets: every OAuth request, and sign-ins (the consent form's posts)
/// apart; past either, 429 with `Retry-After`.
async fn limit(budgets: &Budgets, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let ip = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    if let Some(ip) = ip {
        if budgets.requests.len() > 100_000 {
            budgets.requests.retain_recent();
            budgets.sign_ins.retain_recent();
        }
        let sign_in = req.method() == axum::http::Method::POST
            && matches!(req.uri().path(), "/oauth/authorize" | "/account/sign-in");
        let refused = budgets.requests.check_key(&ip).is_err() || (sign_in && budgets.sign_ins.check_key(&ip).is_err());
        if refused {
            tracing::warn!(%ip, path = req.uri().path(), "oauth rate limit reached");
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(
                    json!({ "error": "rate_limited", "error_description": "too many requests; try again later" }),
                ),
            )
                .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return r;
        }
    }
    next.run(req).await
}

/// The issuer: this node's public URL.
fn issuer(st: &Node) -> String {
    st.cfg.public_url.trim_end_matches('/').to_string()
}

/// An OAuth error answer (`{"error", "error_description"}`), with a fresh DPoP nonce.
fn oauth_error(st: &Node, status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    let description = description.into();
    tracing::info!(error, %description, "oauth request refused");
    let mut r = (status, axum::Json(json!({ "error": error, "error_description": description }))).into_response();
    nonce_header(st, &mut r);
    r
}

fn nonce_header(st: &Node, r: &mut Response) {
    if let Ok(v) = HeaderValue::from_str(&st.dpop.nonce()) {
        r.headers_mut().insert("dpop-nonce", v);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The form's fields; a field given twice is refused.
fn form(body: &[u8]) -> Result<std::collections::HashMap<String, String>, String> {
    let mut out = std::collections::HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("{k} is given more than once"));
        }
    }
    Ok(out)
}

/// Checks the request's DPoP proof for `path`: the key thumbprint, or the answer to send.
fn proof(st: &Node, headers: &HeaderMap, path: &str) -> Result<String, Box<Response>> {
    let Some(p) = headers.get("dpop").and_then(|v| v.to_str().ok()) else {
        return Err(Box::new(oauth_error(
            st,
            StatusCode::BAD_REQUEST,
            "invalid_dpop_proof",
            "a DPoP proof is required",
        )));
    };
    match st.dpop.verify(p, "POST", &format!("{}{path}", issuer(st)), None) {
        Ok(p) => Ok(p.jkt),
        Err(DpopError::UseNonce) => Err(Box::new(oauth_error(
            st,
            StatusCode::BAD_REQUEST,
            "use_dpop_nonce",
            "use the DPoP nonce of this answer",
        ))),
        Err(DpopError::Invalid(m)) => Err(Box::new(oauth_error(st, StatusCode::BAD_REQUEST, "invalid_dpop_proof", m))),
    }
}

fn client_error(st: &Node, e: ClientError) -> Response {
    match e {
        ClientError::Invalid(m) => oauth_error(st, StatusCode::BAD_REQUEST, "invalid_client_metadata", m),
        other => oauth_error(st, StatusCode::BAD_REQUEST, "invalid_client", other.to_string()),
    }
}

/// The assertion type of `private_key_jwt` (RFC 7523).
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest client assertion read.
const MAX_ASSERTION: usize = 8 * 1024;
/// Longest a client assertion may live.
const MAX_ASSERTION_LIFETIME: u64 = 600;

/// The claims of a client assertion checked beyond `jsonwebtoken`'s own.
#[derive(serde::Deserialize)]
struct Assertion {
    sub: String,
    jti: String,
    exp: u64,
    iat: u64,
}

/// Authenticates the client of a pushed request or a token request: a public client sends no
/// assertion; a confidential one (`private_key_jwt`) a short-lived ES256 JWT signed by a key
/// of its published set (`kid`), issued by and about its `client_id`, for this server, used
/// once. How it authenticated (`none`, `private_key_jwt:<kid>`), or the answer to send.
fn authenticate_client(
    st: &Node,
    client: &ClientMetadata,
    f: &std::collections::HashMap<String, String>,
) -> Result<String, Box<Response>> {
    let invalid = |m: &str| Box::new(oauth_error(st, StatusCode::BAD_REQUEST, "invalid_client", m));
    let assertion = f.get("client_assertion");
    match client.token_endpoint_auth_method.as_str() {
        "none" if assertion.is_some() || f.contains_key("client_secret") => {
            Err(invalid("this client is public: it authenticates with nothing"))
        }
        "none" => Ok("none".into()),
        "private_key_jwt" => {
            if f.get("client_assertion_type").map(String::as_str) != Some(ASSERTION_TYPE) {
                return Err(invalid(&format!("client_assertion_type must be {ASSERTION_TYPE}")));
            }
            let Some(assertion) = assertion.filter(|a| a.len() <= MAX_ASSERTION) else {
                return Err(invalid("a confidential client authenticates with a client_assertion"));
            };
            let header = jsonwebtoken::decode_header(assertion)
                .map_err(|e| invalid(&format!("client_assertion is not a JWT: {e}")))?;
            if header.alg != jsonwebtoken::Algorithm::ES256
                || client.token_endpoint_auth_signing_alg.as_deref() != Some("ES256")
            {
                return Err(invalid("client assertions are signed with ES256 here"));
            }
            let Some(kid) = header.kid else { return Err(invalid("the client assertion names no key (kid)")) };
            let keys = st.oauth_clients.keys(client).map_err(|e| Box::new(client_error(st, e)))?;
            let jwk = keys["keys"]
                .as_array()
                .and_then(|ks| {
                    ks.iter().find(|k| k["kid"].as_str() == Some(kid.as_str()) && k.get("revoked").is_none())
                })
                .ok_or_else(|| invalid(&format!("the client publishes no key {kid}")))?;
            let key = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(jwk.clone())
                .ok()
                .and_then(|j| jsonwebtoken::DecodingKey::from_jwk(&j).ok())
                .ok_or_else(|| invalid(&format!("the client's key {kid} is not a usable P-256 key")))?;
            let iss = issuer(st);
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
            v.set_audience(&[iss.clone(), format!("{iss}/oauth/token"), format!("{iss}/oauth/par")]);
            v.set_issuer(&[&client.client_id]);
            v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
            v.leeway = 60;
            let c = jsonwebtoken::decode::<Assertion>(assertion, &key, &v)
                .map_err(|e| invalid(&format!("client_assertion refused: {e}")))?
                .claims;
            let now = crate::node::auth::now_secs();
            if c.sub != client.client_id {
                return Err(invalid("the client assertion's sub is not the client_id"));
            }
            if c.iat > now + 60 || c.exp > now + MAX_ASSERTION_LIFETIME || c.jti.is_empty() || c.jti.len() > 256 {
                return Err(invalid("the client assertion must be fresh, short-lived and carry a jti"));
            }
            st.dpop
                .remember_assertion(&client.client_id, &c.jti, c.exp + 60)
                .map_err(|_| invalid("client_assertion already used"))?;
            Ok(format!("private_key_jwt:{kid}"))
        }
        other => Err(invalid(&format!("token_endpoint_auth_method {other} is not supported"))),
    }
}

/// Whether a PKCE value is 43-128 characters of the unreserved set.
fn pkce_shaped(v: &str) -> bool {
    (43..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

async fn par(State(st): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    let jkt = match proof(&st, &headers, "/oauth/par") {
        Ok(j) => j,
        Err(r) => return *r,
    };
    let f = match form(&body) {
        Ok(f) => f,
        Err(m) => return oauth_error(&st, StatusCode::BAD_REQUEST, "invalid_request", m),
    };
    let field = |k: &str| f.get(k).map(String::as_str);
    let Some(client_id) = field("client_id").map(str::to_string) else {
        return oauth_error(&st, StatusCode::BAD_REQUEST, "invalid_request", "client_id is required");
    };
    let (st2, f2) = (st.clone(), f.clone());
    let found = blocking(move || {
        Ok(match st2.oauth_clients.get(&client_id) {
            Ok(c) => authenticate_client(&st2, &c, &f2).map(|_| c).map_err(|r| *r),
            Err(e) => Err(client_error(&st2, e)),
        })
    })
    .await;
    let client = match found {
        Ok(Ok(c)) => c,
        Ok(Err(r)) => return r,
        Err(e) => return oauth_error(&st, StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.message),
    };
    match check_request(&st, &client, &f) {
        Ok(mut req) => {
            req.jkt = jkt;
            let request_uri = format!("urn:ietf:params:oauth:request_uri:req-{}", oauth_store::random_token());
            st.oauth_requests.lock().put(&request_uri, req);
            let mut r = (
                StatusCode::CREATED,
                axum::Json(json!({ "request_uri": request_uri, "expires_in": oauth_store::REQUEST_TTL.as_secs() - 1 })),
            )
                .into_response();
            nonce_header(&st, &mut r);
            r
        }
        Err((error, m)) => oauth_error(&st, StatusCode::BAD_REQUEST, error, m),
    }
}

/// The profile's rules for an authorization request of `client`.
fn check_request(
    st: &Node,
    client: &ClientMetadata,
    f: &std::collections::HashMap<String, String>,
) -> Result<PushedRequest, (&'static str, String)> {
    let field = |k: &str| f.get(k).map(String::as_str);
    if field("response_type") != Some("code") {
        return Err(("unsupported_response_type", "response_type must be code".into()));
    }
    if field("code_challenge_method") != Some("S256") {
        return Err(("invalid_request", "code_challenge_method must be S256".into()));
    }
    let challenge = field("code_challenge").unwrap_or("");
    if !pkce_shaped(challenge) {
        return Err(("invalid_request", "code_challenge must be 43-128 characters".into()));
    }
    let redirect_uri = field("redirect_uri").unwrap_or("");
    if !client.allows_redirect(redirect_uri) {
        return Err(("invalid_request", format!("redirect_uri {redirect_uri} is not in the client's metadata")));
    }
    let scope = field("scope").unwrap_or("");
    if let Err(e) = st.permissions(scope) {
        return Err(("invalid_scope", e.0));
    }
    let declared: Vec<&str> = client.scope.split(' ').collect();
    if let Some(extra) = scope.split(' ').find(|s| !declared.contains(s)) {
        return Err(("invalid_scope", format!("{extra} is not among the client's declared scopes")));
    }
    let state = field("state").map(str::to_string);
    if state.as_ref().is_some_and(|s| s.len() > 1024) {
        return Err(("invalid_request", "state is longer than 1,024 characters".into()));
    }
    let login_hint = field("login_hint").map(str::to_string).filter(|h| h.len() <= 256);
    let prompt = field("prompt");
    if prompt.is_some_and(|p| !PROMPTS.contains(&p)) {
        return Err(("invalid_request", format!("prompt {} is not supported", prompt.unwrap_or(""))));
    }
    let response_mode = field("response_mode").unwrap_or("query");
    if !RESPONSE_MODES.contains(&response_mode) {
        return Err(("invalid_request", format!("response_mode {response_mode} is not supported")));
    }
    Ok(PushedRequest {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_string(),
        scope: scope.to_string(),
        state,
        code_challenge: challenge.to_string(),
        jkt: String::new(),
        login_hint,
        response_mode: response_mode.to_string(),
        no_prompt: prompt == Some("none"),
    })
}

/// A pushed request still waiting, for this client.
fn pending(st: &Node, request_uri: &str, client_id: Option<&str>) -> Option<PushedRequest> {
    let (req, age) = st.oauth_requests.lock().get(request_uri)?;
    (age < oauth_store::REQUEST_TTL && client_id.is_none_or(|c| c == req.client_id)).then_some(req)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// What a scope lets the client do, in plain words.
fn scope_words(st: &Node, scope: &str) -> Vec<String> {
    match st.permissions(scope) {
        Ok(p) => p.describe(),
        Err(e) => vec![format!("A permission this server does not take ({e})")],
    }
}

/// The client's logo (`https:` only), described for screen readers.
fn client_logo(client: Option<&ClientMetadata>) -> String {
    client
        .and_then(|c| c.logo_uri.as_deref())
        .filter(|u| u.starts_with("https://"))
        .map(|u| format!("<img class=\"logo\" src=\"{}\" alt=\"\">", escape(u)))
        .unwrap_or_default()
}

/// The sign-in form's state when it comes back: the identifier typed, and whether the
/// account's emailed sign-in code is asked for.
#[derive(Default)]
struct Again<'a> {
    identifier: Option<&'a str>,
    code: bool,
}

/// A sign-in form's fields: identifier (filled in with `identifier`), password, and the
/// emailed sign-in code when one is asked for (two-factor sign-in by email).
fn credential_fields(identifier: &str, code: bool) -> String {
    let code = if code {
        "\n<label for=\"code\">Sign-in code (sent to your email)</label>\n\
         <input id=\"code\" name=\"code\" autocomplete=\"one-time-code\">"
    } else {
        ""
    };
    format!(
        r#"<label for="identifier">Handle or email</label>
<input id="identifier" name="identifier" autocomplete="username" required value="{}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>{code}"#,
        escape(identifier)
    )
}

/// The outcome of a sign-in form: the account, or the message to show and whether to ask for
/// the emailed code.
async fn sign_in_form(
    st: &Arc<Node>,
    identifier: String,
    password: String,
    code: Option<String>,
) -> Result<ues_sync::repo::accounts::Account, (String, bool)> {
    let st2 = st.clone();
    let outcome = blocking(move || Ok(st2.authenticate_fully(&identifier, &password, code.as_deref()))).await;
    match outcome {
        Ok(Ok((account, crate::node::auth::Credential::Full))) => Ok(account),
        Ok(Ok(_)) => Err(("Use your account password here, not an app password.".into(), false)),
        Ok(Err(e)) if e.error == "AuthFactorTokenRequired" => Err((e.message, true)),
        Ok(Err(e)) if e.error == "InvalidToken" || e.error == "ExpiredToken" => Err((
            "That sign-in code is wrong or has expired; type it again, or leave it out for a new one.".into(),
            true,
        )),
        Ok(Err(e)) | Err(e) => Err((e.message, false)),
    }
}

fn page(st: &Node, req: &PushedRequest, request_uri: &str, csrf: &str, error: Option<&str>) -> Response {
    page_again(st, req, request_uri, csrf, error, &Again::default())
}

fn page_again(
    st: &Node,
    req: &PushedRequest,
    request_uri: &str,
    csrf: &str,
    error: Option<&str>,
    again: &Again<'_>,
) -> Response {
    let client = st.oauth_clients.get(&req.client_id).ok();
    let name = client.as_ref().and_then(|c| c.client_name.clone()).unwrap_or_else(|| req.client_id.clone());
    let permissions: String =
        scope_words(st, &req.scope).iter().map(|w| format!("<li>{}</li>", escape(w))).collect::<Vec<_>>().join("");
    let error = error.map(|e| format!("<p role=\"alert\" class=\"error\">{}</p>", escape(e))).unwrap_or_default();
    let hint = again.identifier.or(req.login_hint.as_deref()).unwrap_or("").to_string();
    let html_text = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in to {host}</title>
<style>{STYLE}</style></head>
<body><main>
<h1>Sign in to {host}</h1>
{logo}<p><span class="client">{name}</span> asks to use your account.</p>
<p class="id">Client: {client_id}{site}</p>
<h2>It will be able to</h2><ul>{permissions}</ul>
{error}
<form method="post" action="/oauth/authorize">
<input type="hidden" name="request_uri" value="{request_uri}">
<input type="hidden" name="csrf" value="{csrf}">
{credentials}
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny" formnovalidate>Deny</button>
</form></main></body></html>"#,
        host = escape(&st.host_name()),
        credentials = credential_fields(&hint, again.code),
        logo = client_logo(client.as_ref()),
        site = client
            .as_ref()
            .and_then(|c| c.client_uri.as_deref())
            .map(|u| format!(" · <a href=\"{0}\">{0}</a>", escape(u)))
            .unwrap_or_default(),
        name = escape(&name),
        client_id = escape(&req.client_id),
        request_uri = escape(request_uri),
        csrf = escape(csrf),
    );
    let secure = if st.cfg.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{CSRF_COOKIE}={csrf}; Path=/oauth; HttpOnly; SameSite=Strict{secure}");
    html_to(html_text, &[cookie], redirect_source(&req.redirect_uri).as_deref())
}

/// The CSP source of a redirect URI: its origin (`http(s)`), or its scheme (a native app's).
fn redirect_source(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once(':')?;
    if !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return None;
    }
    match scheme {
        "http" | "https" => {
            let authority = rest.strip_prefix("//")?.split(['/', '?', '#']).next()?;
            let clean = authority.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
            (clean && !authority.is_empty()).then(|| format!("{scheme}://{authority}"))
        }
        _ => Some(format!("{scheme}:")),
    }
}

/// The style every page shares (inline: the pages load nothing else).
const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:30rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#111}\
label{display:block;margin-top:1rem;font-weight:600}input{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}\
button{margin-top:1.25rem;margin-right:.5rem;padding:.6rem 1.2rem;font-size:1rem}.error{color:#a00;font-weight:600}\
.note{color:#075;font-weight:600}.client{font-weight:700}.id{color:#555;font-size:.9rem;word-break:break-all}\
.logo{width:48px;height:48px;float:right;margin-left:1rem}section.app{border:1px solid #ccc;border-radius:.5rem;padding:0 1rem 1rem;margin:1rem 0}\
button:focus,input:focus,a:focus{outline:3px solid #36c;outline-offset:2px}";

/// A server-rendered page: no script, framed by nobody, forms posting here only, images from
/// `https:` (client logos); never cached, no referrer. `cookies` are set with it.
fn html(text: String, cookies: &[String]) -> Response {
    html_to(text, cookies, None)
}

/// [`html`] for a page whose form ends in a redirect to `target` (browsers hold redirects
/// after a form post to its `form-action`).
fn html_to(text: String, cookies: &[String], target: Option<&str>) -> Response {
    let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], text).into_response();
    let h = r.headers_mut();
    let also = target.map(|t| format!(" {t}")).unwrap_or_default();
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; img-src https:; form-action 'self'{also}; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    r
}

fn plain(status: StatusCode, text: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text.to_string()).into_response()
}

async fn authorize_page(
    State(st): State<Arc<Node>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let request_uri = q.get("request_uri").cloned().unwrap_or_default();
    let Some(req) = pending(&st, &request_uri, q.get("client_id").map(String::as_str)) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "This sign-in request is unknown or has expired; start again from the app.",
        );
    };
    if req.no_prompt {
        // Signing in always takes the person's password here: no answer without a page.
        st.oauth_requests.lock().remove(&request_uri);
        return refuse(&st, &req, "login_required");
    }
    let st2 = st.clone();
    blocking(move || Ok(page(&st2, &req, &request_uri, &oauth_store::random_token(), None)))
        .await
        .unwrap_or_else(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, &e.message))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// Sends the browser back to the client with `error` (and the issuer, and the client's state).
fn refuse(st: &Node, req: &PushedRequest, error: &str) -> Response {
    let iss = issuer(st);
    let mut params = vec![("error", error), ("iss", iss.as_str())];
    if let Some(state) = &req.state {
        params.push(("state", state.as_str()));
    }
    back_to(req, &params)
}

/// Where the browser goes back to with `params`, as the request's `response_mode` says: in
/// the redirect URI's query or fragment, or a form (no script: the person presses Continue)
/// posting them to it.
fn back_to(req: &PushedRequest, params: &[(&str, &str)]) -> Response {
    let redirect_uri = req.redirect_uri.as_str();
    if req.response_mode == "form_post" {
        let fields: String = params
            .iter()
            .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(k), escape(v)))
            .collect();
        let text = format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Back to the app</title><style>{STYLE}</style></head>
<body><main><h1>Back to the app</h1>
<form method="post" action="{action}">{fields}<button type="submit">Continue</button></form>
</main></body></html>"#,
            action = escape(redirect_uri)
        );
        return html_to(text, &[], redirect_source(redirect_uri).as_deref());
    }
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    let location = if req.response_mode == "fragment" {
        format!("{}#{}", redirect_uri.split('#').next().unwrap_or(redirect_uri), q.finish())
    } else {
        let sep = if redirect_uri.contains('?') { '&' } else { '?' };
        format!("{redirect_uri}{sep}{}", q.finish())
    };
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn authorize(State(st): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(f) = form(&body) else { return plain(StatusCode::BAD_REQUEST, "Malformed form.") };
    let field = |k: &str| f.get(k).cloned().unwrap_or_default();
    let (request_uri, csrf) = (field("request_uri"), field("csrf"));
    let Some(req) = pending(&st, &request_uri, None) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "This sign-in request is unknown or has expired; start again from the app.",
        );
    };
    let cookie_csrf = cookie(&headers, CSRF_COOKIE).unwrap_or_default();
    if csrf.is_empty() || !bool::from(subtle::ConstantTimeEq::ct_eq(csrf.as_bytes(), cookie_csrf.as_bytes())) {
        tracing::warn!(client = %req.client_id, "oauth consent without its CSRF cookie refused");
        return plain(
            StatusCode::FORBIDDEN,
            "This form did not come from this server's page; start again from the app.",
        );
    }
    let iss = issuer(&st);
    if field("decision") != "allow" {
        st.oauth_requests.lock().remove(&request_uri);
        return refuse(&st, &req, "access_denied");
    }
    let (identifier, password) = (field("identifier"), field("password"));
    let code = f.get("code").filter(|c| !c.trim().is_empty()).cloned();
    let account = match sign_in_form(&st, identifier.clone(), password, code).await {
        Ok(account) => account,
        Err((message, code)) => {
            // The page shows the client's metadata: fetched again if it left the cache, so
            // off the async workers.
            let st2 = st.clone();
            return blocking(move || {
                let again = Again { identifier: Some(&identifier), code };
                Ok(page_again(&st2, &req, &request_uri, &csrf, Some(&message), &again))
            })
            .await
            .unwrap_or_else(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, &e.message));
        }
    };
    // The request is used up; the code answers it once.
    st.oauth_requests.lock().remove(&request_uri);
    let code = oauth_store::random_token();
    st.oauth_codes.lock().put(&code, Grant { request: req.clone(), did: account.did.to_string() });
    tracing::info!(did = %account.did, client = %req.client_id, scope = %req.scope, "oauth consent given");
    let state = req.state.clone().unwrap_or_default();
    let mut params = vec![("code", code.as_str()), ("iss", iss.as_str())];
    if req.state.is_some() {
        params.push(("state", state.as_str()));
    }
    back_to(&req, &params)
}

/// A DPoP-bound access token for a session (HMAC-signed with the node's session key, like its
/// other tokens; `cnf.jkt` the session's key).
fn access_token(st: &Node, s: &OauthSession) -> Result<String, String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let now = crate::node::auth::now_secs();
    let mut h = Header::new(Algorithm::HS256);
    h.typ = Some("at+jwt".into());
    // The account's session generation: ending every session of the account (a password
    // reset) ends these tokens too.
    let generation = crate::node::auth::session_generation(st, &s.did).map_err(|e| e.message)?;
    let claims = json!({
        "iss": issuer(st), "aud": st.cfg.service_did, "sub": s.did, "scope": s.scope,
        "client_id": s.client_id, "sid": s.id, "cnf": { "jkt": s.jkt }, "gen": generation,
        "iat": now, "exp": now + ACCESS_TTL, "jti": oauth_store::random_token(),
    });
    let key = EncodingKey::from_secret(&st.cfg.jwt_secret).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&h, &claims, &key).map_err(|e| e.to_string())
}

fn token_answer(st: &Node, s: &OauthSession, refresh: &str) -> Response {
    match access_token(st, s) {
        Ok(at) => {
            let mut r = axum::Json(json!({
                "access_token": at, "token_type": "DPoP", "expires_in": ACCESS_TTL,
                "refresh_token": refresh, "scope": s.scope, "sub": s.did,
            }))
            .into_response();
            nonce_header(st, &mut r);
            r
        }
        Err(e) => oauth_error(st, StatusCode::INTERNAL_SERVER_ERROR, "server_error", e),
    }
}

async fn token(State(st): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    let jkt = match proof(&st, &headers, "/oauth/token") {
        Ok(j) => j,
        Err(r) => return *r,
    };
    let f = match form(&body) {
        Ok(f) => f,
        Err(m) => return oauth_error(&st, StatusCode::BAD_REQUEST, "invalid_request", m),
    };
    let st2 = st.clone();
    let outcome: Result<Response, crate::node::NodeError> = blocking(move || {
        let st = st2.as_ref();
        let field = |k: &str| f.get(k).cloned().unwrap_or_default();
        let grant = field("grant_type");
        if !matches!(grant.as_str(), "authorization_code" | "refresh_token") {
            return Ok(oauth_error(
                st,
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {grant:?}"),
            ));
        }
        let client = match st.oauth_clients.get(&field("client_id")) {
            Ok(c) => c,
            Err(e) => return Ok(client_error(st, e)),
        };
        let auth = match authenticate_client(st, &client, &f) {
            Ok(a) => a,
            Err(r) => return Ok(*r),
        };
        Ok(match grant.as_str() {
            "authorization_code" => code_grant(
                st,
                (&jkt, &auth),
                &field("code"),
                &field("client_id"),
                &field("redirect_uri"),
                &field("code_verifier"),
            )?,
            "refresh_token" => refresh_grant(
                st,
                (&jkt, &auth),
                &field("refresh_token"),
                &field("client_id"),
                f.get("scope").map(String::as_str),
            )?,
            other => {
                oauth_error(st, StatusCode::BAD_REQUEST, "unsupported_grant_type", format!("grant_type {other:?}"))
            }
        })
    })
    .await;
    outcome.unwrap_or_else(|e| oauth_error(&st, StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.message))
}

fn code_grant(
    st: &Node,
    (jkt, auth): (&str, &str),
    code: &str,
    client_id: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<Response, crate::node::NodeError> {
    let bad = |m: &str| Ok(oauth_error(st, StatusCode::BAD_REQUEST, "invalid_grant", m));
    // A code is taken out on first presentation, right or wrong: it works once.
    let found = {
        let mut codes = st.oauth_codes.lock();
        let g = codes.get(code);
        codes.remove(code);
        g
    };
    let Some((grant, age)) = found else { return bad("unknown or used code") };
    if age >= oauth_store::CODE_TTL {
        return bad("the code has expired");
    }
    let req = &grant.request;
    if client_id != req.client_id {
        return bad("the code was issued to another client");
    }
    if redirect_uri != req.redirect_uri {
        return bad("redirect_uri is not the one of the request");
    }
    if !pkce_shaped(verifier) || URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != req.code_challenge {
        return bad("code_verifier does not match the code_challenge");
    }
    if jkt != req.jkt {
        return bad("the DPoP key is not the one of the request");
    }
    let session = OauthSession {
        id: oauth_store::random_token(),
        did: grant.did.clone(),
        client_id: req.client_id.clone(),
        jkt: jkt.to_string(),
        scope: req.scope.clone(),
        expires_at: crate::node::auth::now_secs() as i64
            + if auth == "none" { SESSION_TTL } else { CONFIDENTIAL_SESSION_TTL },
        client_auth: auth.to_string(),
    };
    let refresh = oauth_store::random_token();
    oauth_store::create(st.accounts.db(), &session, &refresh)?;
    Ok(token_answer(st, &session, &refresh))
}

fn refresh_grant(
    st: &Node,
    (jkt, auth): (&str, &str),
    presented: &str,
    client_id: &str,
    scope: Option<&str>,
) -> Result<Response, crate::node::NodeError> {
    let next = oauth_store::random_token();
    let escalates = |s: &OauthSession| {
        scope.and_then(|asked| asked.split(' ').find(|x| !s.scope.split(' ').any(|g| g == *x)).map(str::to_string))
    };
    // The same client, key and client authentication (a confidential client's same signing key).
    let bound = |s: &OauthSession| s.client_id == client_id && s.jkt == jkt && s.client_auth == auth;
    let accept = |s: &OauthSession| bound(s) && escalates(s).is_none();
    match oauth_store::rotate(st.accounts.db(), presented, &next, accept)? {
        Refresh::Rotated(s) => Ok(token_answer(st, &s, &next)),
        Refresh::Refused(s) => {
            if let Some(extra) = escalates(&s).filter(|_| bound(&s)) {
                // The escalation is refused; the session and its token stay as they were.
                return Ok(oauth_error(
                    st,
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!("{extra} was not granted"),
                ));
            }
            // The token without its client or key: stolen, so the session ends.
            oauth_store::revoke(st.accounts.db(), &s.did, &s.id)?;
            tracing::warn!(did = %s.did, client = %s.client_id, "refresh token presented by another client, key or client key; session ended");
            Ok(oauth_error(
                st,
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the refresh token is bound to another client and key",
            ))
        }
        Refresh::Reused(id) => {
            tracing::warn!(session = %id, "refresh token used twice; session ended");
            Ok(oauth_error(
                st,
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "refresh token already used; the session has ended",
            ))
        }
        Refresh::Unknown => Ok(oauth_error(st, StatusCode::BAD_REQUEST, "invalid_grant", "unknown refresh token")),
    }
}

async fn revoke(State(st): State<Arc<Node>>, body: Bytes) -> Response {
    let Ok(f) = form(&body) else {
        return oauth_error(&st, StatusCode::BAD_REQUEST, "invalid_request", "malformed form");
    };
    let token = f.get("token").cloned().unwrap_or_default();
    let st2 = st.clone();
    let _ = blocking(move || {
        // A refresh token, or an access token (whose session ends with it).
        if let Ok(claims) = crate::node::auth::verify(&st2.cfg.jwt_secret, &token, "at+jwt")
            && let Some(sid) = &claims.sid
        {
            return oauth_store::revoke(st2.accounts.db(), &claims.sub, sid);
        }
        oauth_store::revoke_by_token(st2.accounts.db(), &token)
    })
    .await;
    // RFC 7009: the same answer whether or not the token was known.
    let mut r = axum::Json(Value::Object(Default::default())).into_response();
    nonce_header(&st, &mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn redirect_sources() {
        assert_eq!(redirect_source("http://127.0.0.1:8080/cb?x=1").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(redirect_source("https://app.example/cb").as_deref(), Some("https://app.example"));
        assert_eq!(redirect_source("com.example.app:/callback").as_deref(), Some("com.example.app:"));
        assert_eq!(redirect_source("https://a.test;script-src *"), None);
        assert_eq!(redirect_source("not a uri"), None);
    }

    proptest! {
        /// A redirect URI (the client's to choose) never adds a directive or a source to the
        /// page's Content-Security-Policy.
        #[test]
        fn redirect_sources_stay_one_source(uri in "\\PC{0,120}") {
            if let Some(s) = redirect_source(&uri) {
                prop_assert!(!s.contains([';', ',', ' ', '\'', '"', '\n', '\r', '\t']), "{}", s);
                prop_assert!(HeaderValue::from_str(&s).is_ok());
            }
        }
    }
}
