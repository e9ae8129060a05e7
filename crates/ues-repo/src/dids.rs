//! Resolving any DID to its document: `did:plc` from a PLC directory, `did:web` from
//! `https://<host>/.well-known/did.json`, with a bounded, expiring cache; and handles to DIDs
//! through a [`crate::identity::HandleResolver`], cached the same way.
//!
//! Every fetch is bounded (10 s, at most [`MAX_DOCUMENT_BYTES`], no redirects) and, unless the
//! resolver is built for development with [`DidResolver::allowing_private`], a `did:web` host
//! must resolve to public addresses only: anyone names a DID, and resolving it must not become
//! a way into the operator's network. At most [`MAX_CACHED`] documents are kept, each for
//! [`CACHE_TTL`] (a failure for [`FAILURE_TTL`], so a DID that does not resolve is not fetched
//! again on every call); a forced refresh re-fetches at most once per [`MIN_REFRESH`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::plc::{PlcClient, PlcClientError};
use crate::syntax::Did;

/// Largest DID document accepted.
pub const MAX_DOCUMENT_BYTES: u64 = 64 * 1024;
/// Documents the cache holds; the oldest go first.
pub const MAX_CACHED: usize = 10_000;
/// How long a resolved document is served from the cache.
pub const CACHE_TTL: Duration = Duration::from_secs(3600);
/// How long a failed resolution is remembered.
pub const FAILURE_TTL: Duration = Duration::from_secs(60);
/// A forced refresh of a document fetched more recently than this returns the cached one.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);

/// Why a DID did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DidError {
    /// There is no such DID.
    #[error("DID not found: {0}")]
    NotFound(String),
    /// The DID existed and was deactivated (a PLC tombstone).
    #[error("DID deactivated: {0}")]
    Deactivated(String),
    /// Its directory or host could not be reached, or refused.
    #[error("DID could not be resolved: {0}")]
    Unavailable(String),
    /// What came back is not this DID's document.
    #[error("DID document invalid: {0}")]
    Invalid(String),
    /// A DID method this node does not resolve.
    #[error("unsupported DID method: {0}")]
    Unsupported(String),
}

struct Entry<V> {
    at: Instant,
    value: V,
}

/// A bounded cache: at most `capacity` values by key, the oldest going first, each with its
/// age (callers decide what age is too old).
pub struct TtlCache<V> {
    capacity: usize,
    entries: HashMap<String, Entry<V>>,
    order: VecDeque<String>,
}

impl<V: Clone> TtlCache<V> {
    /// An empty cache of at most `capacity` values.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: HashMap::new(), order: VecDeque::new() }
    }

    /// Keeps `value` under `key` (its age starts now).
    pub fn put(&mut self, key: &str, value: V) {
        if self.entries.insert(key.to_string(), Entry { at: Instant::now(), value }).is_none() {
            self.order.push_back(key.to_string());
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
    }

    /// The value and its age.
    pub fn get(&self, key: &str) -> Option<(V, Duration)> {
        self.entries.get(key).map(|e| (e.value.clone(), e.at.elapsed()))
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &str) {
        if self.entries.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

/// Resolves DIDs (see the module documentation).
pub struct DidResolver {
    plc: PlcClient,
    agent: ureq::Agent,
    private: bool,
    cache: parking_lot::Mutex<TtlCache<Result<Value, DidError>>>,
    handles: parking_lot::Mutex<TtlCache<Option<Did>>>,
}

impl std::fmt::Debug for DidResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DidResolver").field("private", &self.private).finish_non_exhaustive()
    }
}

fn config() -> ureq::config::Config {
    crate::identity::fetch_config(Duration::from_secs(10))
}

impl DidResolver {
    /// A resolver asking the PLC directory at `plc_url` (`https://plc.directory` when `None`),
    /// fetching `did:web` documents from public addresses only.
    pub fn new(plc_url: Option<&str>) -> Self {
        Self {
            plc: PlcClient::new(plc_url.unwrap_or("https://plc.directory")),
            agent: ureq::Agent::with_parts(
                config(),
                ureq::unversioned::transport::DefaultConnector::new(),
                crate::identity::PublicOnly::default(),
            ),
            private: false,
            cache: parking_lot::Mutex::new(TtlCache::new(MAX_CACHED)),
            handles: parking_lot::Mutex::new(TtlCache::new(MAX_CACHED)),
        }
    }

    /// The same, for a development node: `did:web` hosts on loopback and private addresses are
    /// fetched too (over plain HTTP for `localhost`, `127.0.0.1` and `[::1]`).
    pub fn allowing_private(mut self) -> Self {
        self.agent = config().into();
        self.private = true;
        self
    }

    /// The DID's document, from the cache when it is fresh there.
    pub fn resolve(&self, did: &Did) -> Result<Value, DidError> {
        if let Some((doc, age)) = self.cache.lock().get(did.as_str()) {
            let ttl = if doc.is_ok() { CACHE_TTL } else { FAILURE_TTL };
            if age < ttl {
                return doc;
            }
        }
        self.fetch(did)
    }

    /// The DID's document fetched anew (unless it was fetched within [`MIN_REFRESH`]).
    pub fn refresh(&self, did: &Did) -> Result<Value, DidError> {
        if let Some((doc, age)) = self.cache.lock().get(did.as_str())
            && age < MIN_REFRESH
        {
            return doc;
        }
        self.fetch(did)
    }

    /// Drops the cached document (its DID just changed through this node).
    pub fn forget(&self, did: &Did) {
        self.cache.lock().remove(did.as_str());
    }

    /// The DID a handle names (DNS TXT, then HTTPS, through `resolver`), cached like documents
    /// (`refresh`: anew, at most once per [`MIN_REFRESH`]); `None` when it names none.
    pub fn handle(
        &self,
        resolver: &crate::identity::HandleResolver,
        handle: &crate::syntax::Handle,
        refresh: bool,
    ) -> Option<Did> {
        if let Some((did, age)) = self.handles.lock().get(handle.as_str()) {
            let ttl = match (refresh, did.is_some()) {
                (true, _) => MIN_REFRESH,
                (false, true) => CACHE_TTL,
                (false, false) => FAILURE_TTL,
            };
            if age < ttl {
                return did;
            }
        }
        let did = resolver.resolve(handle).ok();
        self.handles.lock().put(handle.as_str(), did.clone());
        did
    }

    /// The DID's document fetched now, whatever the cache holds (for an account's own checks,
    /// where a stale answer misleads; the cache is updated).
    pub fn resolve_now(&self, did: &Did) -> Result<Value, DidError> {
        self.fetch(did)
    }

    fn fetch(&self, did: &Did) -> Result<Value, DidError> {
        let doc = self.fetch_uncached(did).and_then(|doc| {
            if doc.get("id").and_then(Value::as_str) == Some(did.as_str()) {
                Ok(doc)
            } else {
                Err(DidError::Invalid(format!("the document is not {did}'s")))
            }
        });
        self.cache.lock().put(did.as_str(), doc.clone());
        doc
    }

    fn fetch_uncached(&self, did: &Did) -> Result<Value, DidError> {
        let s = did.as_str();
        if s.starts_with("did:plc:") {
            return self.plc.resolve(s).map_err(|e| match e {
                PlcClientError::Refused { status: 404, .. } => DidError::NotFound(s.to_string()),
                PlcClientError::Refused { status: 410, .. } => DidError::Deactivated(s.to_string()),
                other => DidError::Unavailable(other.to_string()),
            });
        }
        let Some(host) = s.strip_prefix("did:web:") else {
            return Err(DidError::Unsupported(s.to_string()));
        };
        if host.contains(':') {
            return Err(DidError::Unsupported(format!("{s}: did:web with a path")));
        }
        let host = host.replace("%3A", ":").replace("%3a", ":");
        let local =
            ["localhost", "127.0.0.1", "[::1]"].iter().any(|h| host == *h || host.starts_with(&format!("{h}:")));
        let scheme = if self.private && local { "http" } else { "https" };
        let url = format!("{scheme}://{host}/.well-known/did.json");
        let mut resp = self.agent.get(&url).call().map_err(|e| DidError::Unavailable(format!("{url}: {e}")))?;
        match resp.status().as_u16() {
            200 => {}
            404 | 410 => return Err(DidError::NotFound(s.to_string())),
            other => return Err(DidError::Unavailable(format!("{url} answered {other}"))),
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT_BYTES)
            .read_to_vec()
            .map_err(|e| DidError::Invalid(format!("{url}: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| DidError::Invalid(format!("{url}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Serves `body(port)` with `status` to every request on a loopback port; counts requests.
    fn server(status: u16, body: impl Fn(u16) -> String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = body(port);
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().take(100) {
                let Ok(mut s) = s else { continue };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let head =
                    format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(body.as_bytes());
            }
        });
        (port, hits)
    }

    fn web(port: u16) -> Did {
        Did::new(format!("did:web:127.0.0.1%3A{port}")).unwrap()
    }

    #[test]
    fn did_web_resolves_is_cached_and_refreshes_at_most_so_often() {
        let (port, hits) = server(200, |p| format!("{{\"id\":\"{}\"}}", web(p)));
        let r = DidResolver::new(None).allowing_private();
        let doc = r.resolve(&web(port)).unwrap();
        assert_eq!(doc["id"], web(port).as_str());
        r.resolve(&web(port)).unwrap();
        r.refresh(&web(port)).unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "served from the cache");
        // A document for another DID is refused.
        let (other, _) = server(200, |_| "{\"id\":\"did:web:elsewhere.test\"}".to_string());
        assert!(matches!(r.resolve(&web(other)), Err(DidError::Invalid(_))));
    }

    #[test]
    fn public_only_refuses_loopback_hosts_and_errors_are_typed() {
        let (port, hits) = server(404, |_| String::new());
        let did = web(port);
        let public = DidResolver::new(None);
        assert!(matches!(public.resolve(&did), Err(DidError::Unavailable(_))));
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "no request reached a loopback host");
        let dev = DidResolver::new(None).allowing_private();
        assert_eq!(dev.resolve(&did), Err(DidError::NotFound(did.to_string())));
        // The failure is remembered: no second request.
        assert!(dev.resolve(&did).is_err());
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(matches!(dev.resolve(&Did::new("did:key:zQ3sh").unwrap()), Err(DidError::Unsupported(_))));
    }

    #[test]
    fn an_oversized_document_is_refused() {
        let (port, _) = server(200, |_| format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_DOCUMENT_BYTES as usize)));
        let did = web(port);
        assert!(matches!(DidResolver::new(None).allowing_private().resolve(&did), Err(DidError::Invalid(_))));
    }
}
