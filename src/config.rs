//! `node.toml`, deserialised once into a typed [`Config`]. Nothing below `main` reads files or
//! environment variables for configuration: it gets these structs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use ues_storage::{Durability, RocksConfig, SqliteConfig, StorageConfig, Synchronous};

/// The commented default configuration, embedded in the binary and written by `ues init`.
pub(crate) const DEFAULT_TOML: &str = include_str!("../node.toml");

/// The node's whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// Where the databases and the identity key live.
    pub(crate) data_dir: PathBuf,
    /// The HTTP server.
    pub(crate) http: HttpConfig,
    /// The XRPC server.
    pub(crate) xrpc: XrpcSection,
    /// The peer-to-peer service.
    pub(crate) p2p: P2pSection,
    /// The WebSocket event server.
    pub(crate) ws: WsSection,
    /// The REST API.
    pub(crate) api: ApiSection,
    /// Storage tuning.
    pub(crate) storage: StorageSection,
    /// The node key that seals account keys at rest.
    pub(crate) keys: KeysSection,
    /// Logging.
    pub(crate) log: LogConfig,
    /// The applications the node hosts.
    pub(crate) apps: AppsSection,
    /// Outgoing mail.
    pub(crate) email: EmailSection,
    /// The OAuth authorization server.
    pub(crate) oauth: OauthSection,
    /// The feed application.
    pub(crate) feed: FeedSection,
    /// The chat application.
    pub(crate) chat: ChatSection,
    /// The asset registry.
    pub(crate) asset: AssetSection,
    /// Live views.
    pub(crate) lens: LensSection,
}

/// `[lens]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LensSection {
    /// Stored rows one view may hold (its inputs, groups and output).
    pub(crate) max_view_rows: i64,
    /// Views one account may have.
    pub(crate) max_views_per_account: usize,
}

impl Default for LensSection {
    fn default() -> Self {
        let l = ues_apps::lens::LensConfig::default();
        Self { max_view_rows: l.max_view_rows, max_views_per_account: l.max_views_per_account }
    }
}

/// `[asset]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AssetSection {
    /// The largest repository fetched from another node to replay a ledger, MiB.
    pub(crate) max_remote_repo_mib: u64,
    /// Fuel one contract call may burn.
    pub(crate) contract_fuel: u64,
    /// The largest contract module, KiB.
    pub(crate) max_module_kib: usize,
}

impl Default for AssetSection {
    fn default() -> Self {
        let a = ues_apps::asset::AssetConfig::default();
        Self {
            max_remote_repo_mib: a.max_remote_repo_bytes >> 20,
            contract_fuel: a.contract_fuel,
            max_module_kib: a.max_module_bytes >> 10,
        }
    }
}

/// `[chat]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ChatSection {
    /// Envelopes waiting for one device at most.
    pub(crate) max_inbox_items: i64,
    /// Their bytes at most, MiB.
    pub(crate) max_inbox_mib: i64,
    /// Envelopes one account sends a minute.
    pub(crate) sends_per_minute: u32,
    /// Keys one account claims a minute.
    pub(crate) claims_per_minute: u32,
    /// Messages a group's outbound session encrypts before a new one replaces it.
    pub(crate) rotation_msgs: i64,
    /// Days a group's outbound session lives at most.
    pub(crate) rotation_days: u64,
}

impl Default for ChatSection {
    fn default() -> Self {
        let c = ues_apps::chat::ChatConfig::default();
        Self {
            max_inbox_items: c.max_inbox_items,
            max_inbox_mib: c.max_inbox_bytes >> 20,
            sends_per_minute: c.sends_per_minute,
            claims_per_minute: c.claims_per_minute,
            rotation_msgs: c.rotation_msgs,
            rotation_days: c.rotation_period.as_secs() / 86_400,
        }
    }
}

/// `[feed]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FeedSection {
    /// Who answers the Bluesky read methods when the feed application runs.
    pub(crate) mode: FeedMode,
    /// Accounts hosted elsewhere that accounts here follow, followed at most.
    pub(crate) max_remote_accounts: usize,
    /// Largest repository fetched from another PDS, MiB.
    pub(crate) max_repo_mib: u64,
    /// Largest message taken from another PDS's event stream, KiB.
    pub(crate) max_frame_kib: usize,
    /// Hours an account no longer followed stays indexed.
    pub(crate) unfollow_grace_hours: u64,
    /// A relay (`https://...`) whose event stream carries the followed accounts' commits ("":
    /// each account's own PDS).
    pub(crate) relay: String,
}

impl Default for FeedSection {
    fn default() -> Self {
        Self {
            mode: FeedMode::Auto,
            max_remote_accounts: 5000,
            max_repo_mib: 64,
            max_frame_kib: 5120,
            unfollow_grace_hours: 24,
            relay: String::new(),
        }
    }
}

/// Who answers the Bluesky read methods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FeedMode {
    /// This node, unless `[xrpc] appview_url` names an AppView.
    #[default]
    Auto,
    /// This node, even with an AppView configured.
    Local,
    /// The AppView of `[xrpc] appview_url` (which must be set).
    Remote,
}

impl Config {
    /// How the built-in applications are set up.
    pub(crate) fn apps_config(&self) -> anyhow::Result<ues_apps::AppsConfig> {
        let has_appview = !self.xrpc.appview_url.is_empty();
        let serve = match self.feed.mode {
            FeedMode::Auto => !has_appview,
            FeedMode::Local => true,
            FeedMode::Remote if has_appview => false,
            FeedMode::Remote => anyhow::bail!("[feed] mode = \"remote\" needs [xrpc] appview_url"),
        };
        let f = &self.feed;
        Ok(ues_apps::AppsConfig {
            feed: ues_apps::feed::FeedConfig {
                serve,
                max_remote_accounts: f.max_remote_accounts,
                max_repo_bytes: f.max_repo_mib.saturating_mul(1 << 20),
                max_frame_bytes: f.max_frame_kib.saturating_mul(1 << 10).max(1 << 10),
                unfollow_grace: std::time::Duration::from_secs(f.unfollow_grace_hours.saturating_mul(3600)),
                relay: (!f.relay.is_empty()).then(|| f.relay.trim_end_matches('/').to_string()),
            },
            chat: ues_apps::chat::ChatConfig {
                max_inbox_items: self.chat.max_inbox_items.max(1),
                max_inbox_bytes: self.chat.max_inbox_mib.max(1).saturating_mul(1 << 20),
                sends_per_minute: self.chat.sends_per_minute.max(1),
                claims_per_minute: self.chat.claims_per_minute.max(1),
                rotation_msgs: self.chat.rotation_msgs.max(1),
                rotation_period: std::time::Duration::from_secs(self.chat.rotation_days.max(1).saturating_mul(86_400)),
            },
            asset: ues_apps::asset::AssetConfig {
                max_remote_repo_bytes: self.asset.max_remote_repo_mib.max(1).saturating_mul(1 << 20),
                contract_fuel: self.asset.contract_fuel.max(1),
                max_module_bytes: self.asset.max_module_kib.max(1).saturating_mul(1 << 10),
            },
            lens: ues_apps::lens::LensConfig {
                max_view_rows: self.lens.max_view_rows.max(1),
                max_views_per_account: self.lens.max_views_per_account.max(1),
            },
        })
    }
}

/// `[oauth]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct OauthSection {
    /// Fetch client metadata and keys from `http:` URLs and loopback or private addresses too
    /// (tests and closed networks; never on a public node).
    pub(crate) private_client_addresses: bool,
}

/// `[email]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct EmailSection {
    /// SMTP server URL ("" = the outbox file only).
    pub(crate) smtp_url: String,
    /// The sender ("" = noreply@ the public host).
    pub(crate) from: String,
    /// Template files overriding the built-in ones ("" = none).
    pub(crate) templates_dir: PathBuf,
    /// Seconds an emailed token stays good.
    pub(crate) token_ttl_secs: u64,
    /// Seconds to wait on the mail server.
    pub(crate) timeout_secs: u64,
}

impl Default for EmailSection {
    fn default() -> Self {
        Self {
            smtp_url: String::new(),
            from: String::new(),
            templates_dir: PathBuf::new(),
            token_ttl_secs: 900,
            timeout_secs: 30,
        }
    }
}

/// `[apps]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AppsSection {
    /// The built-in applications to run, by name.
    pub(crate) enabled: Vec<String>,
}

impl Default for AppsSection {
    fn default() -> Self {
        Self {
            enabled: vec![
                "dev.ues.stats".to_string(),
                "dev.ues.feed".to_string(),
                "dev.ues.chat".to_string(),
                "dev.ues.asset".to_string(),
                "dev.ues.credential".to_string(),
                "dev.ues.lens".to_string(),
            ],
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            http: HttpConfig::default(),
            xrpc: XrpcSection::default(),
            p2p: P2pSection::default(),
            ws: WsSection::default(),
            api: ApiSection::default(),
            storage: StorageSection::default(),
            keys: KeysSection::default(),
            log: LogConfig::default(),
            apps: AppsSection::default(),
            email: EmailSection::default(),
            oauth: OauthSection::default(),
            feed: FeedSection::default(),
            chat: ChatSection::default(),
            asset: AssetSection::default(),
            lens: LensSection::default(),
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HttpConfig {
    /// Listen address.
    pub(crate) listen: SocketAddr,
    /// Serve `/metrics` and `/stats` without the operator's credentials.
    pub(crate) public_metrics: bool,
    /// Seconds a client has to send a request header (also: how long an idle keep-alive
    /// connection stays open).
    pub(crate) header_timeout_secs: u64,
    /// Seconds a response may wait on a client that reads none of it.
    pub(crate) write_timeout_secs: u64,
    /// Open connections at once.
    pub(crate) max_connections: usize,
    /// Open connections at once from one client address (0: no per-address cap).
    pub(crate) max_connections_per_ip: usize,
    /// PEM certificate chain: `listen` speaks HTTPS (HTTP/2 and HTTP/1.1) when set, with `tls_key`.
    pub(crate) tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub(crate) tls_key: PathBuf,
    /// A plain-HTTP address that redirects to HTTPS ("": none).
    pub(crate) http_listen: String,
    /// ACME directory URL to obtain certificates from ("": none).
    pub(crate) acme_directory: String,
    /// Contact address for the ACME account.
    pub(crate) acme_email: String,
    /// Names to hold certificates for from the start.
    pub(crate) acme_domains: Vec<String>,
    /// A PEM root to trust for the ACME server's own HTTPS.
    pub(crate) acme_ca_file: PathBuf,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2583)),
            public_metrics: false,
            header_timeout_secs: 20,
            write_timeout_secs: 60,
            max_connections: 16_384,
            max_connections_per_ip: 1024,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            http_listen: String::new(),
            acme_directory: String::new(),
            acme_email: String::new(),
            acme_domains: Vec::new(),
            acme_ca_file: PathBuf::new(),
        }
    }
}

impl HttpConfig {
    /// The HTTP server's bounds.
    /// The HTTPS certificate files, when configured (both or neither).
    pub(crate) fn tls(&self) -> anyhow::Result<Option<std::sync::Arc<ues_protocol::http::TlsFiles>>> {
        match (self.tls_cert.as_os_str().is_empty(), self.tls_key.as_os_str().is_empty()) {
            (true, true) => Ok(None),
            (false, false) => ues_protocol::http::TlsFiles::open(&self.tls_cert, &self.tls_key)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("[http] tls_cert/tls_key: {e}")),
            _ => anyhow::bail!("[http] tls_cert and tls_key go together: set both, or neither"),
        }
    }

    pub(crate) fn to_limits(&self) -> ues_protocol::http::ServeLimits {
        ues_protocol::http::ServeLimits {
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs.max(1)),
            write_timeout: std::time::Duration::from_secs(self.write_timeout_secs.max(1)),
            max_connections: self.max_connections.max(1),
            max_connections_per_ip: if self.max_connections_per_ip == 0 {
                usize::MAX
            } else {
                self.max_connections_per_ip
            },
            ..ues_protocol::http::ServeLimits::default()
        }
    }
}

/// `[xrpc]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct XrpcSection {
    /// Public URL; empty: derived from the listen address.
    pub(crate) public_url: String,
    /// Handle suffixes for new accounts.
    pub(crate) user_domains: Vec<String>,
    /// PLC directory URL; empty: none.
    pub(crate) plc_url: String,
    /// DNS server for `_atproto` TXT handle lookups: "" = the system's (/etc/resolv.conf),
    /// "off" = HTTPS only, or "IP:PORT".
    pub(crate) handle_dns: String,
    /// Password of the `admin` user for com.atproto.admin.* ("" = generated into
    /// `<data_dir>/admin.password`).
    pub(crate) admin_password: String,
    /// AppView for app.bsky.* methods the node does not serve ("" = none: they answer 501).
    pub(crate) appview_url: String,
    /// The AppView's service DID ("" = did:web of appview_url's host).
    pub(crate) appview_did: String,
    /// Where moderation reports go ("" = kept here for the operator).
    pub(crate) report_service_url: String,
    /// The report service's DID ("" = did:web of report_service_url's host).
    pub(crate) report_service_did: String,
    /// Relays to ask to crawl this node (base URLs).
    pub(crate) relays: Vec<String>,
    /// Hours of firehose events kept for replay.
    pub(crate) firehose_backfill_hours: u64,
    /// Extra Lexicon files to load on top of the built-in ones (empty: none).
    pub(crate) lexicons_dir: PathBuf,
    /// Largest request body in MiB.
    pub(crate) max_body_mib: usize,
    /// Largest blob in MiB.
    pub(crate) max_blob_mib: usize,
    /// MiB of blobs one account may hold.
    pub(crate) blob_quota_mib: u64,
    /// Seconds an unreferenced blob is kept.
    pub(crate) blob_grace_secs: u64,
    /// Accounts are made only with an invite code.
    pub(crate) invite_required: bool,
    /// Rate limits.
    pub(crate) rate_limits: RateLimitSection,
}

/// `[xrpc.rate_limits]`: budgets per window (0 turns one limit off).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RateLimitSection {
    /// All of them.
    pub(crate) enabled: bool,
    /// Calls per client address per 5 minutes.
    pub(crate) calls_per_ip_5min: u32,
    /// createSession per identifier and address per 5 minutes.
    pub(crate) logins_per_identifier_5min: u32,
    /// The same per day.
    pub(crate) logins_per_identifier_day: u32,
    /// createAccount per address per 5 minutes.
    pub(crate) accounts_per_ip_5min: u32,
    /// uploadBlob per account per day.
    pub(crate) blob_uploads_per_account_day: u32,
    /// Emailed tokens tried per address per 5 minutes.
    pub(crate) token_attempts_per_ip_5min: u32,
    /// Mails asked for per address per hour.
    pub(crate) mail_requests_per_ip_hour: u32,
    /// Record write points per account per hour.
    pub(crate) write_points_per_account_hour: u32,
    /// The same per day.
    pub(crate) write_points_per_account_day: u32,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        let d = ues_protocol::node::RateLimits::default();
        Self {
            enabled: true,
            calls_per_ip_5min: d.per_ip.points,
            logins_per_identifier_5min: d.create_session.points,
            logins_per_identifier_day: d.create_session_daily.points,
            accounts_per_ip_5min: d.create_account.points,
            blob_uploads_per_account_day: d.upload_blob.points,
            token_attempts_per_ip_5min: d.token_attempts.points,
            mail_requests_per_ip_hour: d.mail_requests.points,
            write_points_per_account_hour: d.write_points_hourly.points,
            write_points_per_account_day: d.write_points_daily.points,
        }
    }
}

impl RateLimitSection {
    /// The XRPC server's limits, `None` when they are off.
    pub(crate) fn to_limits(&self) -> Option<ues_protocol::node::RateLimits> {
        use ues_protocol::node::Rate;
        self.enabled.then(|| ues_protocol::node::RateLimits {
            per_ip: Rate::new(self.calls_per_ip_5min, 300),
            create_session: Rate::new(self.logins_per_identifier_5min, 300),
            create_session_daily: Rate::new(self.logins_per_identifier_day, 86_400),
            create_account: Rate::new(self.accounts_per_ip_5min, 300),
            upload_blob: Rate::new(self.blob_uploads_per_account_day, 86_400),
            token_attempts: Rate::new(self.token_attempts_per_ip_5min, 300),
            mail_requests: Rate::new(self.mail_requests_per_ip_hour, 3600),
            write_points_hourly: Rate::new(self.write_points_per_account_hour, 3600),
            write_points_daily: Rate::new(self.write_points_per_account_day, 86_400),
        })
    }
}

impl Default for XrpcSection {
    fn default() -> Self {
        Self {
            public_url: String::new(),
            user_domains: vec![".test".into()],
            plc_url: String::new(),
            handle_dns: String::new(),
            admin_password: String::new(),
            appview_url: String::new(),
            appview_did: String::new(),
            report_service_url: String::new(),
            report_service_did: String::new(),
            relays: Vec::new(),
            firehose_backfill_hours: 72,
            lexicons_dir: PathBuf::new(),
            max_body_mib: 16,
            max_blob_mib: 100,
            blob_quota_mib: 10 * 1024,
            blob_grace_secs: 3600,
            invite_required: false,
            rate_limits: RateLimitSection::default(),
        }
    }
}

/// `[ws]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WsSection {
    /// Connected clients at once.
    pub(crate) max_clients: usize,
    /// Largest client message, KiB.
    pub(crate) max_message_kib: usize,
    /// Messages queued per client before it is closed as too slow.
    pub(crate) queue: usize,
    /// Messages a client may send per second.
    pub(crate) max_messages_per_sec: u32,
    /// Seconds between server pings.
    pub(crate) heartbeat_secs: u64,
    /// Seconds of silence before a client is closed.
    pub(crate) timeout_secs: u64,
}

impl Default for WsSection {
    fn default() -> Self {
        let d = ues_protocol::gateway::WsConfig::default();
        Self {
            max_clients: d.max_clients,
            max_message_kib: d.max_message_bytes >> 10,
            queue: d.queue,
            max_messages_per_sec: d.max_messages_per_sec,
            heartbeat_secs: d.heartbeat.as_secs(),
            timeout_secs: d.timeout.as_secs(),
        }
    }
}

impl WsSection {
    /// The gateway's limits.
    pub(crate) fn to_config(&self) -> ues_protocol::gateway::WsConfig {
        ues_protocol::gateway::WsConfig {
            max_clients: self.max_clients.max(1),
            max_message_bytes: (self.max_message_kib << 10).max(1024),
            queue: self.queue.max(16),
            max_messages_per_sec: self.max_messages_per_sec.max(1),
            heartbeat: std::time::Duration::from_secs(self.heartbeat_secs.max(1)),
            timeout: std::time::Duration::from_secs(self.timeout_secs.max(2)),
            ..ues_protocol::gateway::WsConfig::default()
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ApiSection {
    /// Requests per second one client IP may make (0: no limit).
    pub(crate) rate_per_ip: u32,
    /// Its burst.
    pub(crate) burst_per_ip: u32,
    /// Requests per second one bearer token may make (0: no limit).
    pub(crate) rate_per_token: u32,
    /// Its burst.
    pub(crate) burst_per_token: u32,
}

impl Default for ApiSection {
    fn default() -> Self {
        let d = ues_protocol::rest::ApiConfig::default();
        let (rate_per_ip, burst_per_ip) = d.per_ip.unwrap_or_default();
        let (rate_per_token, burst_per_token) = d.per_token.unwrap_or_default();
        Self { rate_per_ip, burst_per_ip, rate_per_token, burst_per_token }
    }
}

impl ApiSection {
    /// The REST API's limits.
    pub(crate) fn to_config(&self) -> ues_protocol::rest::ApiConfig {
        let rate = |r: u32, b: u32| (r > 0).then_some((r, b.max(r)));
        ues_protocol::rest::ApiConfig {
            per_ip: rate(self.rate_per_ip, self.burst_per_ip),
            per_token: rate(self.rate_per_token, self.burst_per_token),
        }
    }
}

/// `[p2p]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct P2pSection {
    /// Run the peer-to-peer service.
    pub(crate) enabled: bool,
    /// Listen multiaddrs.
    pub(crate) listen: Vec<String>,
    /// Peers dialled at start and when lost.
    pub(crate) bootstrap: Vec<String>,
    /// Peer ids allowed to sync (empty: any).
    pub(crate) allow_peers: Vec<String>,
    /// Seconds between reconciliations with each connected peer.
    pub(crate) sync_interval_secs: u64,
    /// Established connections in total.
    pub(crate) max_connections: u32,
    /// Established connections per peer.
    pub(crate) max_connections_per_peer: u32,
    /// Requests per peer per second before a ban.
    pub(crate) max_requests_per_sec: u32,
    /// Local-network discovery.
    pub(crate) mdns: bool,
    /// Relay for other peers.
    pub(crate) relay_server: bool,
    /// Relays to listen through.
    pub(crate) relays: Vec<String>,
    /// Accounts to replicate from peers.
    pub(crate) replicate: Vec<ReplicateSection>,
    /// Bytes per second of blobs copied from other devices, at most.
    pub(crate) blob_bytes_per_sec: u64,
    /// Seconds an acknowledged tombstone is kept before it is collected.
    pub(crate) tombstone_grace_secs: u64,
}

/// `[[p2p.replicate]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplicateSection {
    /// The account's DID.
    pub(crate) did: String,
    /// The peer id to fetch it from.
    pub(crate) from: String,
    /// Where that peer listens ("" = find it through the DHT, mDNS or known addresses).
    #[serde(default)]
    pub(crate) addr: String,
}

impl Default for P2pSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: vec!["/ip4/0.0.0.0/tcp/4001".into(), "/ip4/0.0.0.0/udp/4001/quic-v1".into()],
            bootstrap: Vec::new(),
            allow_peers: Vec::new(),
            sync_interval_secs: 30,
            max_connections: 256,
            max_connections_per_peer: 2,
            max_requests_per_sec: 200,
            mdns: true,
            relay_server: false,
            relays: Vec::new(),
            replicate: Vec::new(),
            blob_bytes_per_sec: 32 << 20,
            tombstone_grace_secs: 60,
        }
    }
}

impl P2pSection {
    /// The protocol layer's settings (addresses and peer ids parsed).
    pub(crate) fn to_config(&self) -> anyhow::Result<ues_protocol::p2p::node::P2pConfig> {
        let addrs = |v: &[String], what: &str| {
            v.iter()
                .map(|a| a.parse().map_err(|e| anyhow::anyhow!("[p2p] {what} {a:?}: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        Ok(ues_protocol::p2p::node::P2pConfig {
            listen: addrs(&self.listen, "listen")?,
            bootstrap: addrs(&self.bootstrap, "bootstrap")?,
            allow_peers: self
                .allow_peers
                .iter()
                .map(|p| p.parse().map_err(|e| anyhow::anyhow!("[p2p] allow_peers {p:?}: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?,
            sync_interval: std::time::Duration::from_secs(self.sync_interval_secs.max(1)),
            max_connections: self.max_connections.max(1),
            max_connections_per_peer: self.max_connections_per_peer.max(1),
            max_requests_per_sec: self.max_requests_per_sec.max(1),
            mdns: self.mdns,
            relay_server: self.relay_server,
            relays: addrs(&self.relays, "relays")?,
            blob_bytes_per_sec: self.blob_bytes_per_sec.max(1),
            tombstone_grace: std::time::Duration::from_secs(self.tombstone_grace_secs),
            replicate: self
                .replicate
                .iter()
                .map(|r| {
                    Ok(ues_protocol::p2p::node::ReplicateFrom {
                        did: ues_protocol::p2p::node::parse_did(&r.did)
                            .map_err(|e| anyhow::anyhow!("[[p2p.replicate]] did {:?}: {e}", r.did))?,
                        from: r
                            .from
                            .parse()
                            .map_err(|e| anyhow::anyhow!("[[p2p.replicate]] from {:?}: {e}", r.from))?,
                        addr: (!r.addr.is_empty())
                            .then(|| r.addr.parse())
                            .transpose()
                            .map_err(|e| anyhow::anyhow!("[[p2p.replicate]] addr {:?}: {e}", r.addr))?,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            sync: ues_protocol::p2p::node::NODE_SYNC,
        })
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StorageSection {
    /// "process" or "fsync".
    pub(crate) durability: DurabilitySetting,
    /// Verify blocks on read.
    pub(crate) verify_reads: bool,
    /// RocksDB block cache in MiB.
    pub(crate) block_cache_mib: usize,
    /// Cache of whole repository blocks in front of RocksDB, in MiB (0: none).
    pub(crate) hot_blocks_mib: usize,
    /// SQLite synchronous level.
    pub(crate) sqlite_synchronous: SyncSetting,
    /// The SQLite writer's page cache in MiB, for each database it has (0: SQLite's default).
    pub(crate) sqlite_cache_mib: u64,
    /// Where new blobs go.
    pub(crate) blobs: BlobsSetting,
    /// The object store for blobs.
    pub(crate) s3: S3Section,
}

/// Where new blobs go, as spelled in `node.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BlobsSetting {
    /// Chunks in the data directory.
    Disk,
    /// The object store of `[storage.s3]`.
    S3,
}

/// `[storage.s3]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct S3Section {
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    pub(crate) region: String,
    pub(crate) path_style: bool,
    pub(crate) credentials_file: PathBuf,
    pub(crate) timeout_secs: u64,
}

impl Default for S3Section {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            bucket: String::new(),
            region: "us-east-1".into(),
            path_style: true,
            credentials_file: PathBuf::new(),
            timeout_secs: 60,
        }
    }
}

impl S3Section {
    /// The client settings, with credentials from the file or the environment.
    pub(crate) fn client_config(&self) -> anyhow::Result<ues_storage::S3Config> {
        let (access_key_id, secret_access_key) = if self.credentials_file.as_os_str().is_empty() {
            match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
                (Ok(id), Ok(secret)) if !id.is_empty() => (id, secret),
                _ => anyhow::bail!(
                    "[storage.s3] has no credentials: set credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ),
            }
        } else {
            let path = &self.credentials_file;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("[storage.s3] credentials_file {}", path.display()))?;
            aws_credentials(&text).with_context(|| {
                format!(
                    "[storage.s3] credentials_file {}: no aws_access_key_id and aws_secret_access_key",
                    path.display()
                )
            })?
        };
        Ok(ues_storage::S3Config {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            access_key_id,
            secret_access_key,
            timeout: std::time::Duration::from_secs(self.timeout_secs.max(1)),
        })
    }
}

/// The key pair of an AWS credentials file: the `[default]` profile's, else the first given
/// (keys before any section count as `[default]`'s).
fn aws_credentials(text: &str) -> Option<(String, String)> {
    let mut profiles: Vec<(String, Option<String>, Option<String>)> = vec![("default".into(), None, None)];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';'])) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            profiles.push((name.trim().to_string(), None, None));
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        let p = profiles.last_mut().expect("one at least");
        match k.trim() {
            "aws_access_key_id" => p.1 = Some(v.trim().to_string()),
            "aws_secret_access_key" => p.2 = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let complete = |p: &(String, Option<String>, Option<String>)| Some((p.1.clone()?, p.2.clone()?));
    profiles.iter().filter(|p| p.0 == "default").find_map(complete).or_else(|| profiles.iter().find_map(complete))
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            durability: DurabilitySetting::Fsync,
            verify_reads: true,
            block_cache_mib: 256,
            hot_blocks_mib: 128,
            sqlite_synchronous: SyncSetting::Auto,
            sqlite_cache_mib: 64,
            blobs: BlobsSetting::Disk,
            s3: S3Section::default(),
        }
    }
}

/// Durability of writes, as spelled in `node.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DurabilitySetting {
    /// Survives kill -9.
    Process,
    /// Survives power loss.
    Fsync,
}

/// SQLite `synchronous`, as spelled in `node.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SyncSetting {
    /// What `durability` needs: FULL for fsync, NORMAL for process.
    Auto,
    /// OFF
    Off,
    /// NORMAL
    Normal,
    /// FULL
    Full,
}

/// `[keys]`: where the node key that seals account keys at rest comes from. All empty: 32
/// random bytes in `<data_dir>/node.key`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct KeysSection {
    /// A passphrase the node key is derived from (Argon2id); empty: none.
    pub(crate) passphrase: String,
    /// A file whose first line is that passphrase; empty: none.
    pub(crate) passphrase_file: PathBuf,
    /// The node key file, when not `<data_dir>/node.key`; empty: that one.
    pub(crate) key_file: PathBuf,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// tracing env-filter directive.
    pub(crate) filter: String,
    /// `text` (for people) or `json` (one object per line, for log shippers).
    pub(crate) format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Text, coloured only when standard error is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { filter: "info".into(), format: LogFormat::Text }
    }
}

impl Config {
    /// Parses a `node.toml` text.
    pub(crate) fn from_toml(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// Reads and parses a `node.toml` file.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The object store blobs are kept in, and where new blobs go: none when `[storage.s3]`
    /// names no bucket (an error when `blobs = "s3"` asks for it).
    pub(crate) fn blob_objects(
        &self,
    ) -> anyhow::Result<Option<(std::sync::Arc<ues_storage::S3Objects>, ues_storage::BlobPlace)>> {
        let s = &self.storage;
        if s.s3.bucket.is_empty() {
            anyhow::ensure!(s.blobs == BlobsSetting::Disk, "[storage] blobs = \"s3\" needs [storage.s3] bucket");
            return Ok(None);
        }
        let objects = ues_storage::S3Objects::connect(&s.s3.client_config()?)?;
        let place = match s.blobs {
            BlobsSetting::Disk => ues_storage::BlobPlace::Disk,
            BlobsSetting::S3 => ues_storage::BlobPlace::Objects,
        };
        Ok(Some((std::sync::Arc::new(objects), place)))
    }

    /// The storage layer's settings.
    pub(crate) fn storage_config(&self) -> StorageConfig {
        let s = &self.storage;
        StorageConfig {
            rocks: RocksConfig {
                durability: match s.durability {
                    DurabilitySetting::Process => Durability::Process,
                    DurabilitySetting::Fsync => Durability::Fsync,
                },
                verify_reads: s.verify_reads,
                block_cache_bytes: s.block_cache_mib << 20,
                ..RocksConfig::default()
            },
            sqlite: SqliteConfig {
                synchronous: match s.sqlite_synchronous {
                    SyncSetting::Auto => match s.durability {
                        DurabilitySetting::Fsync => Synchronous::Full,
                        DurabilitySetting::Process => Synchronous::Normal,
                    },
                    SyncSetting::Off => Synchronous::Off,
                    SyncSetting::Normal => Synchronous::Normal,
                    SyncSetting::Full => Synchronous::Full,
                },
                writer_cache_bytes: s.sqlite_cache_mib.saturating_mul(1 << 20),
                ..SqliteConfig::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_credentials_files_are_read_as_aws_writes_them() {
        let file = "# comment\n[other]\naws_access_key_id = O\naws_secret_access_key = o\n\n[default]\naws_access_key_id=AK\naws_secret_access_key = SK\n";
        assert_eq!(aws_credentials(file), Some(("AK".into(), "SK".into())));
        assert_eq!(
            aws_credentials("[p]\naws_access_key_id = A\naws_secret_access_key = B"),
            Some(("A".into(), "B".into()))
        );
        assert_eq!(aws_credentials("aws_access_key_id = A"), None);
        let cfg = Config::from_toml("[storage]\nblobs = \"s3\"").unwrap();
        assert!(cfg.blob_objects().unwrap_err().to_string().contains("bucket"));
        assert!(Config::from_toml("[storage.s3]\nbucket = \"b\"\nsecret = 1").is_err(), "unknown keys are refused");
    }

    #[test]
    fn the_shipped_node_toml_is_exactly_the_defaults() {
        assert_eq!(Config::from_toml(DEFAULT_TOML).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_means_defaults_and_unknown_keys_are_refused() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        let err = Config::from_toml("[http]\nlisten_on = \"x\"").unwrap_err();
        assert!(format!("{err:#}").contains("listen_on"), "{err:#}");
        let cfg = Config::from_toml("").unwrap().storage_config();
        assert_eq!((cfg.rocks.durability, cfg.sqlite.synchronous), (Durability::Fsync, Synchronous::Full));
        let cfg = Config::from_toml("[storage]\ndurability = \"process\"").unwrap().storage_config();
        assert_eq!((cfg.rocks.durability, cfg.sqlite.synchronous), (Durability::Process, Synchronous::Normal));
        let cfg = Config::from_toml("[storage]\nsqlite_synchronous = \"normal\"").unwrap().storage_config();
        assert_eq!((cfg.rocks.durability, cfg.sqlite.synchronous), (Durability::Fsync, Synchronous::Normal));
    }

    #[test]
    fn keys_section_parses() {
        let cfg = Config::from_toml("[keys]\npassphrase_file = \"/run/secrets/ues\"").unwrap();
        assert_eq!(cfg.keys.passphrase_file, PathBuf::from("/run/secrets/ues"));
        assert!(cfg.keys.passphrase.is_empty() && cfg.keys.key_file.as_os_str().is_empty());
        assert!(Config::from_toml("[keys]\nsecret = \"x\"").is_err());
    }

    #[test]
    fn rate_limits_turn_off_whole_or_one_by_one() {
        assert!(Config::default().xrpc.rate_limits.to_limits().is_some());
        let off = Config::from_toml("[xrpc.rate_limits]\nenabled = false").unwrap();
        assert!(off.xrpc.rate_limits.to_limits().is_none());
        let one = Config::from_toml("[xrpc.rate_limits]\ncalls_per_ip_5min = 0").unwrap();
        assert_eq!(one.xrpc.rate_limits.to_limits().unwrap().per_ip.points, 0);
        let http = Config::from_toml("[http]\nmax_connections_per_ip = 0").unwrap().http.to_limits();
        assert_eq!(http.max_connections_per_ip, usize::MAX);
    }

    #[test]
    fn p2p_replication_policy_parses_and_bad_addresses_are_named() {
        let text = r#"
[p2p]
listen = ["/ip4/127.0.0.1/tcp/4001"]
allow_peers = ["12D3KooWGxVzT3bMKRFLEhwtMinGfPwNHwmooNxLpAwxRTpph65j"]
[[p2p.replicate]]
did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
from = "12D3KooWGxVzT3bMKRFLEhwtMinGfPwNHwmooNxLpAwxRTpph65j"
"#;
        let p = Config::from_toml(text).unwrap().p2p.to_config().unwrap();
        assert_eq!(p.replicate.len(), 1);
        assert!(p.replicate[0].addr.is_none());
        assert_eq!(p.allow_peers.len(), 1);
        let bad = Config::from_toml("[p2p]\nlisten = [\"tcp:4001\"]").unwrap().p2p.to_config().unwrap_err();
        assert!(format!("{bad:#}").contains("listen"), "{bad:#}");
    }
}
