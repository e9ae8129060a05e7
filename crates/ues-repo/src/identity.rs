//! DID documents: the ones this node publishes for its accounts, and reading the parts AT
//! Protocol needs (signing key, PDS endpoint, handle) out of any document.

use serde_json::{Value, json};

use crate::crypto::{CryptoError, PublicKey};
use crate::syntax::{Did, Handle};

/// What AT Protocol reads from a DID document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtprotoIdentity {
    /// The DID.
    pub did: Did,
    /// The handle the document claims (to be confirmed by resolving the handle).
    pub handle: Option<Handle>,
    /// The repository signing key (`#atproto`).
    pub signing_key: Option<PublicKey>,
    /// The PDS endpoint (`#atproto_pds`).
    pub pds_endpoint: Option<String>,
}

/// Builds the DID document of an account hosted here.
pub fn did_document(did: &Did, handle: &Handle, signing_key: &PublicKey, pds_endpoint: &str) -> Value {
    json!({
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1"
        ],
        "id": did.as_str(),
        "alsoKnownAs": [format!("at://{handle}")],
        "verificationMethod": [{
            "id": format!("{did}#atproto"),
            "type": "Multikey",
            "controller": did.as_str(),
            "publicKeyMultibase": signing_key.multikey(),
        }],
        "service": [{
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": pds_endpoint,
        }]
    })
}

fn matches_fragment(id: Option<&str>, did: &str, fragment: &str) -> bool {
    id.is_some_and(|id| id == fragment || id.strip_prefix(did) == Some(fragment))
}

/// Reads the AT Protocol parts of a DID document. Unknown or malformed entries are ignored;
/// a document for another DID is refused.
pub fn parse_did_document(doc: &Value, expected: &Did) -> Result<AtprotoIdentity, CryptoError> {
    if doc.get("id").and_then(Value::as_str) != Some(expected.as_str()) {
        return Err(CryptoError::BadKey(format!("document is not for {expected}")));
    }
    let handle = doc
        .get("alsoKnownAs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|aka| aka.strip_prefix("at://").and_then(|h| Handle::new(h).ok()));
    let signing_key = doc
        .get("verificationMethod")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|vm| matches_fragment(vm.get("id").and_then(Value::as_str), expected.as_str(), "#atproto"))
        .and_then(|vm| {
            let mb = vm.get("publicKeyMultibase")?.as_str()?;
            match vm.get("type").and_then(Value::as_str) {
                Some("Multikey") => PublicKey::from_multikey(mb).ok(),
                Some("EcdsaSecp256k1VerificationKey2019") => {
                    PublicKey::from_legacy_multibase(crate::crypto::KeyType::K256, mb).ok()
                }
                Some("EcdsaSecp256r1VerificationKey2019") => {
                    PublicKey::from_legacy_multibase(crate::crypto::KeyType::P256, mb).ok()
                }
                _ => None,
            }
        });
    let pds_endpoint = doc
        .get("service")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|s| {
            matches_fragment(s.get("id").and_then(Value::as_str), expected.as_str(), "#atproto_pds")
                && s.get("type").and_then(Value::as_str) == Some("AtprotoPersonalDataServer")
        })
        .and_then(|s| s.get("serviceEndpoint")?.as_str().map(str::to_string));
    Ok(AtprotoIdentity { did: expected.clone(), handle, signing_key, pds_endpoint })
}

/// The `did:web` DID of a hostname (a port is percent-encoded, as the method requires).
pub fn did_web(host: &str) -> Result<Did, crate::syntax::SyntaxError> {
    Did::new(format!("did:web:{}", host.replace(':', "%3A")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    /// The resolver of `ues run` refuses to connect to a non-public address: nothing reaches
    /// the listener, and the error says why.
    #[test]
    fn handle_lookups_never_reach_a_private_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/.well-known/atproto-did", listener.local_addr().unwrap());
        let err = HandleResolver::default().agent.get(&url).call().unwrap_err().to_string();
        assert!(err.contains("not a public address"), "{err}");
        assert!(listener.accept().is_err(), "a connection reached the private address");
    }
    use crate::crypto::{KeyType, Keypair};

    #[test]
    fn build_then_parse() {
        let key = Keypair::generate(KeyType::K256).public();
        let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
        let handle = Handle::new("alice.test").unwrap();
        let doc = did_document(&did, &handle, &key, "http://127.0.0.1:2583");
        let id = parse_did_document(&doc, &did).unwrap();
        assert_eq!(id.handle, Some(handle));
        assert_eq!(id.signing_key, Some(key));
        assert_eq!(id.pds_endpoint.as_deref(), Some("http://127.0.0.1:2583"));
        assert!(parse_did_document(&doc, &Did::new("did:plc:other").unwrap()).is_err());
        assert_eq!(did_web("localhost:2583").unwrap().as_str(), "did:web:localhost%3A2583");
    }
}

/// Why a handle did not resolve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// Nothing answered, or the answer was not a DID.
    #[error("handle {handle} did not resolve: {reason}")]
    Unresolved {
        /// The handle.
        handle: String,
        /// Why.
        reason: String,
    },
    /// The handle resolves to another DID than the one claiming it.
    #[error("handle {handle} resolves to {found}, not {expected}")]
    Mismatch {
        /// The handle.
        handle: String,
        /// The DID it resolved to.
        found: String,
        /// The DID that claimed it.
        expected: String,
    },
}

/// Resolves handles the two ways the handle specification allows: a DNS TXT record
/// `_atproto.<handle>` holding `did=<DID>` (asked first, when a DNS server is configured or
/// found in `/etc/resolv.conf`), then `https://<handle>/.well-known/atproto-did`.
///
/// Every step is bounded: one UDP exchange of at most 4 KiB with a 3-second timeout (a
/// truncated answer counts as no answer), an HTTP body of at most 4 KiB with a 5-second timeout,
/// no redirects.
#[derive(Clone)]
pub struct HandleResolver {
    agent: ureq::Agent,
    /// `https://{handle}` unless overridden (tests point it at a local server).
    base_for: fn(&str) -> String,
    /// The DNS server asked for `_atproto` TXT records; `None` skips DNS.
    dns: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for HandleResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleResolver").field("dns", &self.dns).finish_non_exhaustive()
    }
}

fn https_base(handle: &str) -> String {
    format!("https://{handle}")
}

impl Default for HandleResolver {
    /// `https://<handle>` on public addresses only, and the system's DNS server.
    fn default() -> Self {
        let mut r = Self::with_base(https_base).with_dns(system_nameserver());
        r.agent = ureq::Agent::with_parts(
            resolver_config(),
            ureq::unversioned::transport::DefaultConnector::new(),
            PublicOnly::default(),
        );
        r
    }
}

/// An HTTP agent that connects to public addresses only (see [`is_public`]), checked on the
/// very addresses it connects to: for URLs that come from documents anyone may publish (DID
/// documents' service endpoints).
pub fn public_only_agent(config: ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(config, ureq::unversioned::transport::DefaultConnector::new(), PublicOnly::default())
}

fn resolver_config() -> ureq::config::Config {
    fetch_config(std::time::Duration::from_secs(5))
}

/// What the node's fetches of others' documents take: `timeout` in all, no redirects, every
/// status answered (the caller decides what it means).
pub fn fetch_config(timeout: std::time::Duration) -> ureq::config::Config {
    ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).max_redirects(0).build()
}

/// Resolves the host names of handle lookups and refuses any that leads to an address that is
/// not public (loopback, private, link-local, unique-local, ...): anyone chooses their handle,
/// and `https://<handle>` must not become a way into the operator's own network. The check is
/// on the very addresses the connection then uses, so a name cannot change in between.
#[derive(Debug, Default)]
pub(crate) struct PublicOnly(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for PublicOnly {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.0.resolve(uri, config, timeout)?;
        if let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
            let host = uri.host().unwrap_or("");
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{host} resolves to {}, which is not a public address", a.ip()),
            )));
        }
        Ok(addrs)
    }
}

/// Whether an address is reachable on the public internet. Hand-written: the standard library's
/// `is_global` is not stable, and the ranges are few (RFC 6890 and its successors).
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240) // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b)) // NAT64 (leads to IPv4, possibly private)
        }
    }
}

/// The first `nameserver` of `/etc/resolv.conf`, on port 53.
pub fn system_nameserver() -> Option<std::net::SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines().find_map(|l| {
        let ip = l.trim().strip_prefix("nameserver")?.trim();
        ip.parse::<std::net::IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, 53))
    })
}

/// How long one DNS exchange may take.
const DNS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl HandleResolver {
    /// A resolver that fetches from `base_for(handle)` + `/.well-known/atproto-did`, without DNS.
    pub fn with_base(base_for: fn(&str) -> String) -> Self {
        Self { agent: resolver_config().into(), base_for, dns: None }
    }

    /// Asks `server` for `_atproto` TXT records first (`None`: HTTPS only).
    pub fn with_dns(mut self, server: Option<std::net::SocketAddr>) -> Self {
        self.dns = server;
        self
    }

    /// The DID a handle names: DNS first, then HTTPS.
    pub fn resolve(&self, handle: &Handle) -> Result<Did, HandleError> {
        let unresolved = |reason: String| HandleError::Unresolved { handle: handle.to_string(), reason };
        let dns_reason = match self.dns {
            Some(server) => match self.resolve_dns(server, handle) {
                Ok(Some(did)) => return Ok(did),
                Ok(None) => "no _atproto TXT record".to_string(),
                Err(e) => e,
            },
            None => "DNS not configured".to_string(),
        };
        self.resolve_https(handle).map_err(|e| unresolved(format!("DNS: {dns_reason}; HTTPS: {e}")))
    }

    /// The DID in `_atproto.<handle>` TXT records: `Ok(None)` when there is none, an error when
    /// the server cannot be asked or the records name different DIDs.
    pub fn resolve_dns(&self, server: std::net::SocketAddr, handle: &Handle) -> Result<Option<Did>, String> {
        let texts = query_txt(server, &format!("_atproto.{}.", handle.as_str())).map_err(|e| e.to_string())?;
        let mut dids: Vec<&str> = texts.iter().filter_map(|t| t.strip_prefix("did=")).collect();
        dids.sort_unstable();
        dids.dedup();
        match dids.as_slice() {
            [] => Ok(None),
            [one] => Did::new(*one).map(Some).map_err(|e| format!("TXT record: {e}")),
            _ => Err(format!("TXT records name {} different DIDs", dids.len())),
        }
    }

    fn resolve_https(&self, handle: &Handle) -> Result<Did, String> {
        let url = format!("{}/.well-known/atproto-did", (self.base_for)(handle.as_str()));
        let mut resp = self.agent.get(&url).call().map_err(|e| e.to_string())?;
        if resp.status().as_u16() != 200 {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        // A DID is at most 2 KiB; anything longer is not an answer.
        let body = resp.body_mut().with_config().limit(4096).read_to_string().map_err(|e| e.to_string())?;
        Did::new(body.trim()).map_err(|e| e.to_string())
    }

    /// Checks that `handle` resolves to `did` (bidirectional verification's second half).
    pub fn verify(&self, handle: &Handle, did: &Did) -> Result<(), HandleError> {
        let found = self.resolve(handle)?;
        if &found != did {
            return Err(HandleError::Mismatch {
                handle: handle.to_string(),
                found: found.to_string(),
                expected: did.to_string(),
            });
        }
        Ok(())
    }
}

/// One recursive TXT query over UDP: the strings of every TXT answer (each record's strings
/// joined, as the handle specification reads them).
fn query_txt(server: std::net::SocketAddr, name: &str) -> std::io::Result<Vec<String>> {
    use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let local: std::net::SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = std::net::UdpSocket::bind(local)?;
    sock.connect(server)?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).map_err(|e| invalid(e.to_string()))?, RecordType::TXT));
    sock.send(&query.to_vec().map_err(|e| invalid(e.to_string()))?)?;
    let deadline = std::time::Instant::now() + DNS_TIMEOUT;
    let mut buf = [0u8; 4096];
    // Stray datagrams (another id, not a response) are skipped, a bounded number of times.
    for _ in 0..16 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        let n = sock.recv(&mut buf)?;
        let Ok(answer) = Message::from_vec(&buf[..n]) else { continue };
        if answer.metadata.id != query.metadata.id || answer.metadata.message_type != MessageType::Response {
            continue;
        }
        if answer.metadata.truncation {
            return Err(invalid("truncated answer".into()));
        }
        if answer.metadata.response_code != ResponseCode::NoError
            && answer.metadata.response_code != ResponseCode::NXDomain
        {
            return Err(invalid(format!("DNS error {}", answer.metadata.response_code)));
        }
        return Ok(answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.txt_data.iter().map(|p| String::from_utf8_lossy(p)).collect::<String>()),
                _ => None,
            })
            .collect());
    }
    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no DNS answer"))
}
