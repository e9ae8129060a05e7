//! Certificates from an ACME server (Let's Encrypt, or any RFC 8555 server) over HTTP-01,
//! through `instant-acme`: for the node's configured names at start (and renewed when within
//! [`RENEW_BEFORE`] of expiry), and on demand, at a TLS handshake, for a name the node's
//! `on_demand` check accepts (a handle of an account hosted here), rate-limited.
//!
//! The account's credentials and each certificate with its key are kept in `<data_dir>/tls`
//! (owner-only files). The HTTP-01 answers are served by the plain-HTTP listener
//! ([`crate::http::redirect_router`]) from [`Acme::challenge`].

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate is renewed when it expires within this long.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// On-demand certificates issued per hour at most.
pub const ON_DEMAND_PER_HOUR: usize = 20;
/// How long an issuance may take (the handshake that waits for an on-demand one fails past it).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a name may get a certificate on demand.
pub type OnDemand = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// `[http] acme_*` settings.
#[derive(Clone)]
pub struct AcmeConfig {
    /// The ACME directory URL.
    pub directory: String,
    /// Contact address given to the ACME server ("": none).
    pub email: String,
    /// Names to hold certificates for from the start.
    pub domains: Vec<String>,
    /// A PEM root to trust for the ACME server's own HTTPS (a private ACME server).
    pub ca_file: Option<PathBuf>,
    /// Where the account and certificates are kept.
    pub dir: PathBuf,
    /// Whether a name outside `domains` may get a certificate when a client asks for it.
    pub on_demand: Option<OnDemand>,
}

impl std::fmt::Debug for AcmeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeConfig")
            .field("directory", &self.directory)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

/// A certificate the node holds for a name.
struct Held {
    config: Arc<rustls::ServerConfig>,
    not_after: SystemTime,
}

/// The node's ACME client and the certificates it obtained.
pub struct Acme {
    cfg: AcmeConfig,
    account: tokio::sync::OnceCell<Account>,
    /// HTTP-01 tokens → key authorizations.
    challenges: Mutex<HashMap<String, String>>,
    certs: Mutex<HashMap<String, Held>>,
    /// One issuance at a time.
    issuing: tokio::sync::Mutex<()>,
    /// When on-demand certificates were issued (the last hour's).
    on_demand_times: Mutex<VecDeque<Instant>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// A TLS server configuration of a PEM chain and key, with HTTP/2 and HTTP/1.1 by ALPN.
pub(crate) fn server_config(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// When the first certificate of a PEM chain expires.
fn not_after(chain_pem: &[u8]) -> Result<SystemTime, String> {
    certificate_names(chain_pem).map(|(_, t)| t)
}

/// The DNS names the first certificate of a PEM chain is for (its subject alternative names,
/// else its common name), and when it expires.
pub fn certificate_names(chain_pem: &[u8]) -> Result<(Vec<String>, SystemTime), String> {
    let first = CertificateDer::pem_slice_iter(chain_pem).next().ok_or("no certificate")?.map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&first).map_err(|e| e.to_string())?;
    let secs = cert.validity().not_after.timestamp();
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(cert.subject().iter_common_name().filter_map(|c| c.as_str().ok()).map(str::to_string));
    }
    Ok((names, SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)))
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

impl Acme {
    /// The client for `cfg` (nothing is asked of the ACME server yet); certificates already in
    /// `cfg.dir` are loaded.
    pub fn new(cfg: AcmeConfig) -> Result<Arc<Self>, String> {
        use std::os::unix::fs::DirBuilderExt;
        // The ACME client's HTTPS builds its TLS configuration from the process's provider
        // (both of rustls' providers are linked in, so none is chosen on its own).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.dir)
            .map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
        let acme = Arc::new(Self {
            cfg,
            account: tokio::sync::OnceCell::new(),
            challenges: Mutex::default(),
            certs: Mutex::default(),
            issuing: tokio::sync::Mutex::default(),
            on_demand_times: Mutex::default(),
        });
        for entry in std::fs::read_dir(&acme.cfg.dir).map_err(|e| e.to_string())?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(domain) = name.strip_suffix(".crt")
                && let Err(e) = acme.load(domain)
            {
                tracing::warn!(domain, error = %e, "a stored certificate does not load");
            }
        }
        Ok(acme)
    }

    fn load(&self, domain: &str) -> Result<(), String> {
        let chain = std::fs::read(self.cfg.dir.join(format!("{domain}.crt"))).map_err(|e| e.to_string())?;
        let key = std::fs::read(self.cfg.dir.join(format!("{domain}.key"))).map_err(|e| e.to_string())?;
        let held = Held { config: server_config(&chain, &key)?, not_after: not_after(&chain)? };
        self.certs.lock().insert(domain.to_string(), held);
        Ok(())
    }

    /// The key authorization for an HTTP-01 token this node is answering now.
    pub fn challenge(&self, token: &str) -> Option<String> {
        self.challenges.lock().get(token).cloned()
    }

    /// The TLS configuration for `name`, if the node holds a certificate for it.
    pub fn config_for(&self, name: &str) -> Option<Arc<rustls::ServerConfig>> {
        self.certs.lock().get(name).map(|h| h.config.clone())
    }

    /// Every name the node holds a certificate for, with its expiry.
    pub fn held(&self) -> Vec<(String, SystemTime)> {
        self.certs.lock().iter().map(|(name, h)| (name.clone(), h.not_after)).collect()
    }

    /// When the certificate for `name` expires, if the node holds one.
    pub fn expiry(&self, name: &str) -> Option<SystemTime> {
        self.certs.lock().get(name).map(|h| h.not_after)
    }

    /// The configuration for a handshake naming `name`: a held certificate; else, for a
    /// configured name or one `on_demand` accepts (within the hourly bound), one issued now
    /// (the handshake waits for it). `None`: no certificate for this name.
    pub async fn config_for_handshake(&self, name: &str) -> Option<Arc<rustls::ServerConfig>> {
        if let Some(c) = self.config_for(name) {
            return Some(c);
        }
        if !valid_name(name) {
            return None;
        }
        let configured = self.cfg.domains.iter().any(|d| d == name);
        if !configured {
            let allowed = self.cfg.on_demand.as_ref().is_some_and(|f| f(name));
            if !allowed {
                // Debug, not info: any client may name anything, as often as it likes.
                tracing::debug!(name, "no certificate for a name that is not this node's");
                return None;
            }
            let mut times = self.on_demand_times.lock();
            while times.front().is_some_and(|t| t.elapsed() > Duration::from_secs(3600)) {
                times.pop_front();
            }
            if times.len() >= ON_DEMAND_PER_HOUR {
                tracing::warn!(name, "on-demand certificate refused: {ON_DEMAND_PER_HOUR} issued this hour");
                return None;
            }
            times.push_back(Instant::now());
        }
        match tokio::time::timeout(ISSUE_TIMEOUT, self.ensure(name)).await {
            Ok(Ok(())) => self.config_for(name),
            Ok(Err(e)) => {
                tracing::warn!(name, error = %e, "certificate not issued");
                None
            }
            Err(_) => {
                tracing::warn!(name, "certificate issuance timed out");
                None
            }
        }
    }

    /// Makes sure the node holds a certificate for `name` that is not about to expire,
    /// issuing one if not.
    pub async fn ensure(&self, name: &str) -> Result<(), String> {
        let fresh = |acme: &Self| acme.expiry(name).is_some_and(|t| t > SystemTime::now() + RENEW_BEFORE);
        if fresh(self) {
            return Ok(());
        }
        let _one = self.issuing.lock().await;
        if fresh(self) {
            return Ok(());
        }
        self.issue(name).await
    }

    async fn account(&self) -> Result<&Account, String> {
        self.account
            .get_or_try_init(|| async {
                let builder = || match &self.cfg.ca_file {
                    Some(ca) => Account::builder_with_root(ca),
                    None => Account::builder(),
                };
                let path = self.cfg.dir.join("acme-account.json");
                if let Ok(text) = std::fs::read(&path)
                    && let Ok(creds) = serde_json::from_slice::<AccountCredentials>(&text)
                {
                    return builder()
                        .map_err(|e| e.to_string())?
                        .from_credentials(creds)
                        .await
                        .map_err(|e| e.to_string());
                }
                let contact = format!("mailto:{}", self.cfg.email);
                let contacts: Vec<&str> = if self.cfg.email.is_empty() { Vec::new() } else { vec![contact.as_str()] };
                let (account, creds) = builder()
                    .map_err(|e| e.to_string())?
                    .create(
                        &NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false },
                        self.cfg.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| format!("creating the ACME account: {e}"))?;
                let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
                write_private(&path, &json).map_err(|e| e.to_string())?;
                tracing::info!(directory = %self.cfg.directory, "ACME account created");
                Ok(account)
            })
            .await
    }

    async fn issue(&self, name: &str) -> Result<(), String> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(name.to_string())];
        let mut order = account.new_order(&NewOrder::new(&ids)).await.map_err(|e| e.to_string())?;
        let mut tokens = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| e.to_string())?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut challenge =
                authz.challenge(ChallengeType::Http01).ok_or("the ACME server offers no HTTP-01 challenge")?;
            let token = challenge.token.clone();
            self.challenges.lock().insert(token.clone(), challenge.key_authorization().as_str().to_string());
            tokens.push(token);
            challenge.set_ready().await.map_err(|e| e.to_string())?;
        }
        let retries = RetryPolicy::default().timeout(ISSUE_TIMEOUT);
        let status = order.poll_ready(&retries).await;
        for t in &tokens {
            self.challenges.lock().remove(t);
        }
        let status = status.map_err(|e| e.to_string())?;
        if status != OrderStatus::Ready {
            return Err(format!("the order for {name} is {status:?}"));
        }
        let key_pem = order.finalize().await.map_err(|e| e.to_string())?;
        let chain_pem = order.poll_certificate(&retries).await.map_err(|e| e.to_string())?;
        write_private(&self.cfg.dir.join(format!("{name}.key")), key_pem.as_bytes()).map_err(|e| e.to_string())?;
        write_private(&self.cfg.dir.join(format!("{name}.crt")), chain_pem.as_bytes()).map_err(|e| e.to_string())?;
        self.load(name)?;
        tracing::info!(name, "certificate issued");
        Ok(())
    }

    /// Holds certificates for the configured names: at once, then every 12 hours (renewing
    /// those within [`RENEW_BEFORE`] of expiry, on-demand ones included); failures are logged
    /// and retried a minute later.
    pub async fn run(self: Arc<Self>) {
        loop {
            let mut names: Vec<String> = self.cfg.domains.clone();
            names.extend(self.certs.lock().keys().cloned());
            names.sort();
            names.dedup();
            let mut failed = false;
            for name in names {
                if let Err(e) = self.ensure(&name).await {
                    tracing::warn!(name, error = %e, "certificate not obtained");
                    failed = true;
                }
            }
            tokio::time::sleep(if failed { Duration::from_secs(60) } else { Duration::from_secs(12 * 3600) }).await;
        }
    }
}
