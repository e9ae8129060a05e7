//! OAuth clients as the AT Protocol OAuth profile identifies them: by a URL (`client_id`) to
//! their metadata document, fetched with a hardened client and validated, or the localhost
//! development client whose metadata is built from its `client_id` alone.
//!
//! Fetches are bounded ([`MAX_METADATA_BYTES`], 10 s), take only a `200` with a JSON body (no
//! redirects), and go to public addresses only unless the node is a development node. A
//! document is kept [`CACHE_TTL`], at most [`MAX_CACHED`] of them.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// Largest metadata document read.
pub const MAX_METADATA_BYTES: u64 = 64 * 1024;
/// How long a fetched document is used.
pub const CACHE_TTL: Duration = Duration::from_secs(600);
/// Documents kept at once.
pub const MAX_CACHED: usize = 1_000;

/// Why a client is refused (`invalid_client_metadata` unless said otherwise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The `client_id` is not a URL this server takes (`invalid_client`).
    #[error("invalid client_id: {0}")]
    InvalidId(String),
    /// Its document could not be fetched (`invalid_client`).
    #[error("client metadata could not be fetched: {0}")]
    Unreachable(String),
    /// Its document breaks the profile's rules (`invalid_client_metadata`).
    #[error("invalid client metadata: {0}")]
    Invalid(String),
}

/// A client's metadata, as validated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClientMetadata {
    /// The URL it was fetched from.
    pub client_id: String,
    /// `web` or `native`.
    #[serde(default = "web")]
    pub application_type: String,
    /// Includes `authorization_code`.
    pub grant_types: Vec<String>,
    /// Space-separated; includes `atproto`.
    pub scope: String,
    /// Includes `code`.
    pub response_types: Vec<String>,
    /// Where users are sent back to.
    pub redirect_uris: Vec<String>,
    /// `none` (public clients) or `private_key_jwt` (confidential ones).
    #[serde(default = "none")]
    pub token_endpoint_auth_method: String,
    /// The algorithm of the client's assertions (never `none`).
    pub token_endpoint_auth_signing_alg: Option<String>,
    /// Must be `true`.
    pub dpop_bound_access_tokens: Option<bool>,
    /// A confidential client's public keys.
    pub jwks: Option<Value>,
    /// Or where they are published.
    pub jwks_uri: Option<String>,
    /// Shown to users of trusted clients.
    pub client_name: Option<String>,
    /// The client's home page (same host as `client_id`).
    pub client_uri: Option<String>,
    /// Its logo (`https:` only).
    pub logo_uri: Option<String>,
    /// Its terms of service (`https:` only).
    pub tos_uri: Option<String>,
    /// Its privacy policy (`https:` only).
    pub policy_uri: Option<String>,
}

fn web() -> String {
    "web".into()
}

fn none() -> String {
    "none".into()
}

/// The host of an `http(s)` URL (lower case, port dropped), if it is one.
fn host_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = if authority.starts_with('[') {
        authority.split(']').next().map(|h| format!("{h}]"))?
    } else {
        authority.split(':').next()?.to_string()
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

impl ClientMetadata {
    /// The localhost development client named by `client_id` (`http://localhost` with no port,
    /// path `/` or none, `redirect_uri` and `scope` in the query).
    pub fn localhost(client_id: &str) -> Result<Self, ClientError> {
        let rest =
            client_id.strip_prefix("http://localhost").ok_or_else(|| ClientError::InvalidId(client_id.into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !(path.is_empty() || path == "/") {
            return Err(ClientError::InvalidId("a localhost client_id has no port and no path".into()));
        }
        let mut redirect_uris = Vec::new();
        let mut scope = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "redirect_uri" => redirect_uris.push(v.to_string()),
                "scope" if scope.is_none() => scope = Some(v.to_string()),
                "scope" => return Err(ClientError::InvalidId("scope may be given once".into())),
                _ => return Err(ClientError::InvalidId(format!("unknown client_id parameter {k}"))),
            }
        }
        if redirect_uris.is_empty() {
            redirect_uris = vec!["http://127.0.0.1/".into(), "http://[::1]/".into()];
        }
        for r in &redirect_uris {
            if !(r.starts_with("http://127.0.0.1") || r.starts_with("http://[::1]")) {
                return Err(ClientError::InvalidId(format!("a localhost client redirects to loopback only, not {r}")));
            }
        }
        let meta = Self {
            client_id: client_id.to_string(),
            application_type: "native".into(),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            scope: scope.unwrap_or_else(|| "atproto".into()),
            response_types: vec!["code".into()],
            redirect_uris,
            token_endpoint_auth_method: "none".into(),
            token_endpoint_auth_signing_alg: None,
            dpop_bound_access_tokens: Some(true),
            jwks: None,
            jwks_uri: None,
            client_name: Some("Development client".into()),
            client_uri: None,
            logo_uri: None,
            tos_uri: None,
            policy_uri: None,
        };
        meta.validate(false)?;
        Ok(meta)
    }

    /// Whether this is the localhost development client.
    pub fn is_localhost(&self) -> bool {
        self.client_id.starts_with("http://localhost")
    }

    /// The profile's rules (`loopback`: a web client may also redirect to `http:` on loopback,
    /// for clients served from a test machine).
    pub fn validate(&self, loopback: bool) -> Result<(), ClientError> {
        let bad = |m: String| Err(ClientError::Invalid(m));
        if !self.grant_types.iter().any(|g| g == "authorization_code") {
            return bad("grant_types must include authorization_code".into());
        }
        if !self.response_types.iter().any(|r| r == "code") {
            return bad("response_types must include code".into());
        }
        if !self.scope.split(' ').any(|s| s == "atproto") {
            return bad("scope must include atproto".into());
        }
        if self.dpop_bound_access_tokens != Some(true) {
            return bad("dpop_bound_access_tokens must be true".into());
        }
        if !matches!(self.application_type.as_str(), "web" | "native") {
            return bad(format!("application_type {} is neither web nor native", self.application_type));
        }
        match self.token_endpoint_auth_method.as_str() {
            "none" => {}
            "private_key_jwt" => {
                if self.jwks.is_some() == self.jwks_uri.is_some() {
                    return bad("a private_key_jwt client gives jwks or jwks_uri, not both".into());
                }
                if self.token_endpoint_auth_signing_alg.as_deref().is_none_or(|a| a == "none") {
                    return bad("token_endpoint_auth_signing_alg must name an algorithm".into());
                }
            }
            other => return bad(format!("token_endpoint_auth_method {other} is not supported")),
        }
        if self.redirect_uris.is_empty() {
            return bad("redirect_uris must not be empty".into());
        }
        let client_host = host_of(&self.client_id);
        for uri in &self.redirect_uris {
            let ok = if self.is_localhost() {
                uri.starts_with("http://127.0.0.1") || uri.starts_with("http://[::1]")
            } else if loopback && (uri.starts_with("http://127.0.0.1") || uri.starts_with("http://[::1]")) {
                true
            } else if uri.starts_with("https://") {
                // A native client's HTTPS redirect shares the client_id's origin.
                self.application_type == "web" || host_of(uri) == client_host
            } else if self.application_type == "native" {
                native_scheme_ok(uri, client_host.as_deref())
            } else {
                false
            };
            if !ok {
                return bad(format!("redirect_uri {uri} is not allowed for this client"));
            }
        }
        if let Some(u) = &self.client_uri
            && host_of(u) != client_host
        {
            return bad("client_uri must have the client_id's host".into());
        }
        for u in [&self.logo_uri, &self.tos_uri, &self.policy_uri].into_iter().flatten() {
            if !u.starts_with("https://") {
                return bad(format!("{u} is not an https: URL"));
            }
        }
        Ok(())
    }

    /// Whether `uri` is one this client may be sent back to (for the localhost client, the
    /// port is not compared).
    pub fn allows_redirect(&self, uri: &str) -> bool {
        if self.is_localhost() {
            let strip_port = |u: &str| -> String {
                let (origin, path) = match u.find("://").and_then(|i| u[i + 3..].find('/').map(|j| i + 3 + j)) {
                    Some(p) => (&u[..p], &u[p..]),
                    None => (u, "/"),
                };
                let origin = match origin.rfind(':') {
                    Some(c) if origin[c + 1..].bytes().all(|b| b.is_ascii_digit()) && c > 6 => &origin[..c],
                    _ => origin,
                };
                format!("{origin}{path}")
            };
            return self.redirect_uris.iter().any(|r| strip_port(r) == strip_port(uri));
        }
        self.redirect_uris.iter().any(|r| r == uri)
    }
}

/// A native client's custom scheme: the client_id's host reversed, then `:/` and a path.
fn native_scheme_ok(uri: &str, client_host: Option<&str>) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else { return false };
    let reversed: Vec<&str> = client_host.unwrap_or("").split('.').rev().collect();
    rest.starts_with('/') && !rest.starts_with("//") && scheme == reversed.join(".")
}

/// Fetches and caches client metadata.
pub struct OauthClients {
    agent: ureq::Agent,
    /// `http:` URLs and private addresses taken too.
    private: bool,
    cache: parking_lot::Mutex<ues_sync::repo::dids::TtlCache<ClientMetadata>>,
    keys: parking_lot::Mutex<ues_sync::repo::dids::TtlCache<Value>>,
}

impl std::fmt::Debug for OauthClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OauthClients").finish_non_exhaustive()
    }
}

fn config() -> ureq::config::Config {
    ues_sync::repo::identity::fetch_config(Duration::from_secs(10))
}

impl OauthClients {
    /// Fetching `https:` URLs on public addresses only (`private`: any address, `http:` too).
    pub fn new(private: bool) -> Self {
        let agent = if private { config().into() } else { ues_sync::repo::identity::public_only_agent(config()) };
        Self {
            agent,
            private,
            cache: parking_lot::Mutex::new(ues_sync::repo::dids::TtlCache::new(MAX_CACHED)),
            keys: parking_lot::Mutex::new(ues_sync::repo::dids::TtlCache::new(MAX_CACHED)),
        }
    }

    fn url_ok(&self, url: &str) -> bool {
        url.len() <= 2048 && (url.starts_with("https://") || self.private && url.starts_with("http://"))
    }

    /// A confidential client's public keys: its `jwks`, or the document at its `jwks_uri`
    /// (fetched as its metadata is, kept as long).
    pub fn keys(&self, client: &ClientMetadata) -> Result<Value, ClientError> {
        if let Some(jwks) = &client.jwks {
            return Ok(jwks.clone());
        }
        let Some(uri) = client.jwks_uri.as_deref() else {
            return Err(ClientError::Invalid("the client publishes no keys".into()));
        };
        if !self.url_ok(uri) {
            return Err(ClientError::Invalid("jwks_uri must be an https: URL".into()));
        }
        if let Some((keys, age)) = self.keys.lock().get(uri)
            && age < CACHE_TTL
        {
            return Ok(keys);
        }
        let keys: Value = serde_json::from_slice(&self.fetch_json(uri)?)
            .map_err(|e| ClientError::Invalid(format!("the key set: {e}")))?;
        if !keys.get("keys").is_some_and(Value::is_array) {
            return Err(ClientError::Invalid("the key set has no keys array".into()));
        }
        self.keys.lock().put(uri, keys.clone());
        Ok(keys)
    }

    /// The client's metadata: built for the localhost client, else fetched (or cached) and
    /// validated.
    pub fn get(&self, client_id: &str) -> Result<ClientMetadata, ClientError> {
        if client_id.starts_with("http://localhost") {
            return ClientMetadata::localhost(client_id);
        }
        if !self.url_ok(client_id) {
            return Err(ClientError::InvalidId("client_id must be an https: URL".into()));
        }
        if let Some((meta, age)) = self.cache.lock().get(client_id)
            && age < CACHE_TTL
        {
            return Ok(meta);
        }
        let meta = self.fetch(client_id)?;
        self.cache.lock().put(client_id, meta.clone());
        Ok(meta)
    }

    fn fetch(&self, client_id: &str) -> Result<ClientMetadata, ClientError> {
        let bytes = self.fetch_json(client_id)?;
        let meta: ClientMetadata =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Invalid(format!("the document: {e}")))?;
        if meta.client_id != client_id {
            return Err(ClientError::Invalid("client_id in the document is not the URL it came from".into()));
        }
        meta.validate(self.private)?;
        Ok(meta)
    }

    /// A JSON document: a `200`, `application/json`, at most [`MAX_METADATA_BYTES`].
    fn fetch_json(&self, url: &str) -> Result<Vec<u8>, ClientError> {
        let mut resp = self.agent.get(url).call().map_err(|e| ClientError::Unreachable(e.to_string()))?;
        if resp.status().as_u16() != 200 {
            return Err(ClientError::Unreachable(format!("{url} answered {}", resp.status().as_u16())));
        }
        let json_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim() == "application/json"));
        if !json_type {
            return Err(ClientError::Invalid("the document is not application/json".into()));
        }
        resp.body_mut()
            .with_config()
            .limit(MAX_METADATA_BYTES)
            .read_to_vec()
            .map_err(|e| ClientError::Invalid(format!("the document could not be read: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{Read, Write};

    fn serve(status: u16, content_type: &'static str, body: impl Fn(u16) -> String + Send + 'static) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = body(port);
        std::thread::spawn(move || {
            for s in listener.incoming().take(20) {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\nlocation: https://elsewhere.test/\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(body.as_bytes());
            }
        });
        port
    }

    fn doc(port: u16) -> Value {
        json!({
            "client_id": format!("http://127.0.0.1:{port}/client-metadata.json"),
            "application_type": "web",
            "grant_types": ["authorization_code", "refresh_token"],
            "scope": "atproto transition:generic",
            "response_types": ["code"],
            "redirect_uris": ["https://app.example.com/callback"],
            "dpop_bound_access_tokens": true,
            "client_name": "Example",
        })
    }

    #[test]
    fn the_localhost_client_is_built_from_its_id() {
        let m = ClientMetadata::localhost("http://localhost").unwrap();
        assert_eq!(m.redirect_uris, ["http://127.0.0.1/", "http://[::1]/"]);
        assert_eq!((m.scope.as_str(), m.application_type.as_str()), ("atproto", "native"));
        let m = ClientMetadata::localhost(
            "http://localhost?redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Fcallback&scope=atproto%20transition%3Ageneric",
        )
        .unwrap();
        assert_eq!(m.scope, "atproto transition:generic");
        assert!(m.allows_redirect("http://127.0.0.1:9999/callback"), "ports are not compared");
        assert!(!m.allows_redirect("http://127.0.0.1:8080/elsewhere"), "paths are");
        assert!(!m.allows_redirect("https://evil.test/callback"));
        for bad in [
            "http://localhost:8080",
            "http://localhost/path",
            "http://localhost?redirect_uri=https%3A%2F%2Fevil.test%2F",
            "http://localhost?scope=a&scope=b",
            "http://localhost?other=1",
        ] {
            assert!(ClientMetadata::localhost(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fetched_documents_are_validated() {
        let port = serve(200, "application/json", |p| doc(p).to_string());
        let clients = OauthClients::new(true);
        let id = format!("http://127.0.0.1:{port}/client-metadata.json");
        let m = clients.get(&id).unwrap();
        assert_eq!(m.client_name.as_deref(), Some("Example"));
        assert!(m.allows_redirect("https://app.example.com/callback"));
        assert!(!m.allows_redirect("https://app.example.com/callback2"));
        // Another client_id than the URL, a redirect, the wrong type, too large: refused.
        let other = serve(200, "application/json", |_| doc(1).to_string());
        assert!(matches!(
            clients.get(&format!("http://127.0.0.1:{other}/client-metadata.json")),
            Err(ClientError::Invalid(_))
        ));
        let moved = serve(302, "application/json", |p| doc(p).to_string());
        assert!(matches!(
            clients.get(&format!("http://127.0.0.1:{moved}/client-metadata.json")),
            Err(ClientError::Unreachable(_))
        ));
        let html = serve(200, "text/html", |p| doc(p).to_string());
        assert!(matches!(
            clients.get(&format!("http://127.0.0.1:{html}/client-metadata.json")),
            Err(ClientError::Invalid(_))
        ));
        let big =
            serve(200, "application/json", |_| format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_METADATA_BYTES as usize)));
        assert!(matches!(
            clients.get(&format!("http://127.0.0.1:{big}/client-metadata.json")),
            Err(ClientError::Invalid(_))
        ));
    }

    #[test]
    fn a_client_on_a_private_address_or_over_http_is_not_fetched_unless_configured() {
        let port = serve(200, "application/json", |p| doc(p).to_string());
        let id = format!("http://127.0.0.1:{port}/client-metadata.json");
        assert!(matches!(OauthClients::new(false).get(&id), Err(ClientError::InvalidId(_))), "http:");
        let https = format!("https://127.0.0.1:{port}/client-metadata.json");
        match OauthClients::new(false).get(&https) {
            Err(ClientError::Unreachable(m)) => assert!(m.contains("not a public address"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(OauthClients::new(false).get("ftp://x.test/"), Err(ClientError::InvalidId(_))));
    }

    #[test]
    fn the_profiles_rules() {
        let base: ClientMetadata = serde_json::from_value(doc(1)).unwrap();
        base.validate(false).unwrap();
        let refused = |edit: &dyn Fn(&mut Value)| {
            let mut v = doc(1);
            edit(&mut v);
            serde_json::from_value::<ClientMetadata>(v).map_or(true, |m| m.validate(false).is_err())
        };
        assert!(refused(&|v| v["dpop_bound_access_tokens"] = json!(false)));
        assert!(refused(&|v| {
            v.as_object_mut().unwrap().remove("dpop_bound_access_tokens");
        }));
        assert!(refused(&|v| v["scope"] = json!("transition:generic")));
        assert!(refused(&|v| v["grant_types"] = json!(["refresh_token"])));
        assert!(refused(&|v| v["response_types"] = json!(["token"])));
        assert!(refused(&|v| v["redirect_uris"] = json!([])));
        assert!(refused(&|v| v["redirect_uris"] = json!(["http://app.example.com/callback"])), "web: https only");
        assert!(refused(&|v| v["logo_uri"] = json!("http://app.example.com/logo.png")));
        assert!(refused(&|v| v["client_uri"] = json!("https://other.example/")));
        assert!(refused(&|v| v["token_endpoint_auth_method"] = json!("client_secret_basic")));
        assert!(refused(&|v| v["token_endpoint_auth_method"] = json!("private_key_jwt")), "no keys");
        assert!(!refused(&|v| {
            v["token_endpoint_auth_method"] = json!("private_key_jwt");
            v["token_endpoint_auth_signing_alg"] = json!("ES256");
            v["jwks_uri"] = json!("https://app.example.com/jwks.json");
        }));
        // Native clients: the reversed host as a scheme, or HTTPS on the client's own origin.
        let native = |uri: &str| {
            let mut v = doc(1);
            v["client_id"] = json!("https://app.example.com/client-metadata.json");
            v["application_type"] = json!("native");
            v["redirect_uris"] = json!([uri]);
            serde_json::from_value::<ClientMetadata>(v).unwrap().validate(false).is_ok()
        };
        assert!(native("com.example.app:/callback"));
        assert!(native("https://app.example.com/callback"));
        assert!(!native("com.evil.app:/callback"));
        assert!(!native("com.example.app://callback"));
        assert!(!native("https://evil.test/callback"));
    }
}
