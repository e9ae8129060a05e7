//! The account page (`/account`): a person signs in with their account password and sees the
//! apps they authorized through OAuth (name, logo, client, what each may do, until when), and
//! revokes any of them; revoking ends the session, so its refresh token and every access token
//! it issued stop working at once.
//!
//! Server-rendered, no JavaScript. Sign-in is a web session held in memory (an hour, at most
//! [`MAX_WEB_SESSIONS`]), named by an `HttpOnly`, `SameSite=Strict` cookie scoped to
//! `/account`; every form carries a CSRF token (the sign-in form's matched by a cookie, the
//! others' kept with the web session). Sign-ins share the consent page's budget per address.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{STYLE, client_logo, cookie, credential_fields, escape, form, html, plain, scope_words, sign_in_form};
use crate::node::oauth_store::{self, OauthSession};
use crate::node::{Node, blocking};

/// The cookie naming the web session.
const SESSION_COOKIE: &str = "ues-account";
/// The cookie that carries the sign-in form's CSRF token.
const CSRF_COOKIE: &str = "ues-account-csrf";
/// How long a web session lasts.
const WEB_SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Web sessions held at once (the oldest goes first).
pub(super) const MAX_WEB_SESSIONS: usize = 10_000;

/// A signed-in browser.
#[derive(Debug, Clone)]
struct WebSession {
    did: String,
    handle: String,
    /// The token its forms carry.
    csrf: String,
}

/// The signed-in browsers.
pub(super) struct WebSessions(parking_lot::Mutex<ues_sync::repo::dids::TtlCache<WebSession>>);

impl Default for WebSessions {
    fn default() -> Self {
        Self(parking_lot::Mutex::new(ues_sync::repo::dids::TtlCache::new(MAX_WEB_SESSIONS)))
    }
}

impl WebSessions {
    /// The web session this request's cookie names, if live.
    fn of(&self, headers: &HeaderMap) -> Option<(String, WebSession)> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let (s, age) = self.0.lock().get(&token)?;
        (age < WEB_SESSION_TTL).then_some((token, s))
    }
}

fn secure(st: &Node) -> &'static str {
    if st.cfg.public_url.starts_with("https://") { "; Secure" } else { "" }
}

fn see_other(location: &str, cookies: &[String]) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/")));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

fn csrf_matches(given: &str, expected: &str) -> bool {
    !given.is_empty() && bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes()))
}

fn shell(st: &Node, title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · {host}</title>
<style>{STYLE}</style></head>
<body><main>
{body}
</main></body></html>"#,
        title = escape(title),
        host = escape(&st.host_name()),
    )
}

fn sign_in_page(st: &Node, error: Option<&str>) -> Response {
    sign_in_again(st, error, "", false)
}

fn sign_in_again(st: &Node, error: Option<&str>, identifier: &str, code: bool) -> Response {
    let csrf = oauth_store::random_token();
    let error = error.map(|e| format!("<p role=\"alert\" class=\"error\">{}</p>", escape(e))).unwrap_or_default();
    let body = format!(
        r#"<h1>Your account on {host}</h1>
<p>Sign in to see the apps you have let use your account, and to revoke them.</p>
{error}
<form method="post" action="/account/sign-in">
<input type="hidden" name="csrf" value="{csrf}">
{credentials}
<button type="submit">Sign in</button>
</form>"#,
        host = escape(&st.host_name()),
        credentials = credential_fields(identifier, code),
    );
    let cookie = format!("{CSRF_COOKIE}={csrf}; Path=/account; HttpOnly; SameSite=Strict{}", secure(st));
    html(shell(st, "Sign in", &body), &[cookie])
}

/// One authorized app, as the page lists it.
fn app_section(st: &Node, s: &OauthSession, csrf: &str) -> String {
    let client = st.oauth_clients.get(&s.client_id).ok();
    let name = client.as_ref().and_then(|c| c.client_name.clone()).unwrap_or_else(|| s.client_id.clone());
    let permissions: String = scope_words(st, &s.scope).iter().map(|w| format!("<li>{}</li>", escape(w))).collect();
    let until = crate::node::sequencer::iso_from_millis(s.expires_at.saturating_mul(1000));
    format!(
        r#"<section class="app" aria-labelledby="app-{id}">
<h3 id="app-{id}">{logo}{name}</h3>
<p class="id">Client: {client_id}</p>
<p>It may:</p><ul>{permissions}</ul>
<p>Authorized until {until} (unless revoked).</p>
<form method="post" action="/account/revoke">
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="session" value="{id}">
<button type="submit" aria-label="Revoke access for {name}">Revoke access</button>
</form></section>"#,
        id = escape(&s.id),
        logo = client_logo(client.as_ref()),
        name = escape(&name),
        client_id = escape(&s.client_id),
        until = escape(until.get(..10).unwrap_or(&until)),
        csrf = escape(csrf),
    )
}

fn apps_page(st: &Node, web: &WebSession, sessions: &[OauthSession], note: Option<&str>) -> Response {
    let note = note.map(|n| format!("<p role=\"status\" class=\"note\">{}</p>", escape(n))).unwrap_or_default();
    let apps: String = if sessions.is_empty() {
        "<p>No app can use your account.</p>".into()
    } else {
        sessions.iter().map(|s| app_section(st, s, &web.csrf)).collect()
    };
    let body = format!(
        r#"<h1>Your account on {host}</h1>
<p>Signed in as <strong>{handle}</strong> <span class="id">({did})</span></p>
{note}
<h2>Apps that can use your account</h2>
{apps}
<form method="post" action="/account/sign-out">
<input type="hidden" name="csrf" value="{csrf}">
<button type="submit">Sign out</button>
</form>"#,
        host = escape(&st.host_name()),
        handle = escape(&web.handle),
        did = escape(&web.did),
        csrf = escape(&web.csrf),
    );
    html(shell(st, "Your apps", &body), &[])
}

/// `GET /account`: the apps of the signed-in account, else the sign-in form.
pub(super) async fn page(
    State(st): State<Arc<Node>>,
    Extension(web): Extension<Arc<WebSessions>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some((_, session)) = web.of(&headers) else { return sign_in_page(&st, None) };
    let note = q.contains_key("revoked").then_some("Access revoked: that app can no longer use your account.");
    let st2 = st.clone();
    blocking(move || {
        let sessions = oauth_store::sessions_of(st2.accounts.db(), &session.did)?;
        Ok(apps_page(&st2, &session, &sessions, note))
    })
    .await
    .unwrap_or_else(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, &e.message))
}

/// `POST /account/sign-in`: the account password (never an app password), then a web session.
pub(super) async fn sign_in(
    State(st): State<Arc<Node>>,
    Extension(web): Extension<Arc<WebSessions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(f) = form(&body) else { return plain(StatusCode::BAD_REQUEST, "Malformed form.") };
    let field = |k: &str| f.get(k).cloned().unwrap_or_default();
    if !csrf_matches(&field("csrf"), &cookie(&headers, CSRF_COOKIE).unwrap_or_default()) {
        tracing::warn!("account sign-in without its CSRF cookie refused");
        return plain(StatusCode::FORBIDDEN, "This form did not come from this server's page; open /account again.");
    }
    let (identifier, password) = (field("identifier"), field("password"));
    let code = f.get("code").filter(|c| !c.trim().is_empty()).cloned();
    let account = match sign_in_form(&st, identifier.clone(), password, code).await {
        Ok(account) => account,
        Err((message, code)) => return sign_in_again(&st, Some(&message), &identifier, code),
    };
    let token = oauth_store::random_token();
    let session = WebSession {
        did: account.did.to_string(),
        handle: account.handle.to_string(),
        csrf: oauth_store::random_token(),
    };
    web.0.lock().put(&token, session);
    tracing::info!(did = %account.did, "signed in to the account page");
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/account; HttpOnly; SameSite=Strict; Max-Age={}{}",
        WEB_SESSION_TTL.as_secs(),
        secure(&st)
    );
    see_other("/account", &[cookie])
}

/// `POST /account/revoke`: ends one of the signed-in account's OAuth sessions.
pub(super) async fn revoke(
    State(st): State<Arc<Node>>,
    Extension(web): Extension<Arc<WebSessions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((_, session)) = web.of(&headers) else { return see_other("/account", &[]) };
    let Ok(f) = form(&body) else { return plain(StatusCode::BAD_REQUEST, "Malformed form.") };
    if !csrf_matches(f.get("csrf").map_or("", String::as_str), &session.csrf) {
        tracing::warn!(did = %session.did, "account page revocation without its CSRF token refused");
        return plain(StatusCode::FORBIDDEN, "This form did not come from this server's page; open /account again.");
    }
    let id = f.get("session").cloned().unwrap_or_default();
    let did = session.did.clone();
    let st2 = st.clone();
    match blocking(move || oauth_store::revoke(st2.accounts.db(), &did, &id)).await {
        Ok(true) => {
            tracing::info!(did = %session.did, "an app's access revoked from the account page");
            see_other("/account?revoked=1", &[])
        }
        Ok(false) => see_other("/account", &[]),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &e.message),
    }
}

/// `POST /account/sign-out`: ends the web session.
pub(super) async fn sign_out(
    State(st): State<Arc<Node>>,
    Extension(web): Extension<Arc<WebSessions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some((token, session)) = web.of(&headers) {
        let given = form(&body).ok().and_then(|f| f.get("csrf").cloned()).unwrap_or_default();
        if !csrf_matches(&given, &session.csrf) {
            return plain(
                StatusCode::FORBIDDEN,
                "This form did not come from this server's page; open /account again.",
            );
        }
        web.0.lock().remove(&token);
    }
    see_other(
        "/account",
        &[format!("{SESSION_COOKIE}=; Path=/account; HttpOnly; SameSite=Strict; Max-Age=0{}", secure(&st))],
    )
}
