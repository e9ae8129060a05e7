//! The operator's commands against the running node (`ues account ...`, `ues export-repo`,
//! `ues import-repo`, `ues request-crawl`, and the admin calls of the other commands), as the
//! reference PDS's `pdsadmin` and `goat` do them, over the node's admin API: HTTP Basic as
//! `admin` with `[xrpc] admin_password` or `<data_dir>/admin.password`, at `[http] listen` (or
//! the loopback admin address a node serving HTTPS writes into its data directory).

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::NodeArgs;

/// `ues account ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AccountCommand {
    /// Create an account (with an invite code made for it when the node requires one); prints
    /// its DID, handle and password (generated unless given).
    Create {
        /// Its handle, under one of the node's user domains.
        handle: String,
        /// Its email.
        #[arg(long)]
        email: Option<String>,
        /// Its password (generated when absent).
        #[arg(long)]
        password: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Every account (or those whose email starts with `--email`), by DID (JSON).
    List {
        /// An email prefix.
        #[arg(long)]
        email: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// One account: DID, handle, email, status (JSON). Takes a DID or a handle.
    Info {
        /// A DID or a handle.
        account: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Take an account down: its repository is served no more, its sessions end.
    Takedown {
        /// A DID or a handle.
        account: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Lift a takedown.
    Untakedown {
        /// A DID or a handle.
        account: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Delete an account for good (its repository, blobs, credentials).
    Delete {
        /// A DID or a handle.
        account: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Give an account a new password (generated; printed), ending its sessions.
    ResetPassword {
        /// A DID or a handle.
        account: String,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// The running node as the operator reaches it.
pub(crate) struct NodeClient {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl NodeClient {
    pub(crate) fn new(args: &NodeArgs) -> anyhow::Result<Self> {
        use base64::Engine;
        let cfg = args.resolve()?;
        let password = if cfg.xrpc.admin_password.is_empty() {
            let path = cfg.data_dir.join("admin.password");
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {} (is --data-dir the node's?)", path.display()))?
                .trim()
                .to_string()
        } else {
            cfg.xrpc.admin_password.clone()
        };
        let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}")));
        // A node serving HTTPS names its loopback admin address in the data directory.
        let addr = match std::fs::read_to_string(cfg.data_dir.join(crate::ADMIN_ADDR_FILE)) {
            Ok(a) => a.trim().to_string(),
            Err(_) => cfg.http.listen.to_string(),
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(3600)))
            .timeout_recv_response(Some(std::time::Duration::from_secs(120)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self { base: format!("http://{addr}"), auth, agent })
    }

    /// Calls an XRPC method with the operator's credentials; a POST when there is a body.
    pub(crate) fn call(&self, method: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/xrpc/{method}", self.base);
        let res = match body {
            Some(b) => self.agent.post(&url).header("authorization", &self.auth).send_json(b),
            None => self.agent.get(&url).header("authorization", &self.auth).call(),
        };
        Self::answer(method, res.with_context(|| format!("calling {url} (is the node running?)"))?)
    }

    fn answer(method: &str, mut res: ureq::http::Response<ureq::Body>) -> anyhow::Result<Value> {
        let status = res.status();
        let value: Value = res.body_mut().read_json().unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("{method}: HTTP {status}: {value}");
        }
        Ok(value)
    }

    /// The DID of an account named by DID or handle.
    fn did(&self, account: &str) -> anyhow::Result<String> {
        if account.starts_with("did:") {
            return Ok(account.to_string());
        }
        let v = self.call(&format!("com.atproto.identity.resolveHandle?handle={}", enc(account)), None)?;
        v["did"].as_str().map(str::to_string).with_context(|| format!("no account {account}"))
    }
}

/// Percent-encodes a query value (every byte outside the unreserved set).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A password for an account the operator makes or resets: 24 base32 characters (120 bits).
fn new_password() -> String {
    use rand::RngCore;
    let mut raw = [0u8; 15];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    data_encoding::BASE32_NOPAD.encode(&raw).to_ascii_lowercase()
}

/// Runs `ues account ...`.
pub(crate) fn account(cmd: AccountCommand) -> anyhow::Result<Value> {
    match cmd {
        AccountCommand::Create { handle, email, password, node } => {
            let client = NodeClient::new(&node)?;
            let described = client.call("com.atproto.server.describeServer", None)?;
            let mut body = json!({ "handle": handle });
            if described["inviteCodeRequired"] == true {
                let code = client.call("com.atproto.server.createInviteCode", Some(json!({ "useCount": 1 })))?;
                body["inviteCode"] = code["code"].clone();
            }
            let password = password.unwrap_or_else(new_password);
            body["password"] = json!(password);
            if let Some(e) = email {
                body["email"] = json!(e);
            }
            let made = client.call("com.atproto.server.createAccount", Some(body))?;
            Ok(json!({ "did": made["did"], "handle": made["handle"], "password": password }))
        }
        AccountCommand::List { email, node } => {
            let client = NodeClient::new(&node)?;
            let mut accounts = Vec::new();
            let mut cursor: Option<String> = None;
            // Bounded: a million accounts at 100 a page.
            for _ in 0..10_000 {
                let mut q = "com.atproto.admin.searchAccounts?limit=100".to_string();
                if let Some(e) = &email {
                    q.push_str(&format!("&email={}", enc(e)));
                }
                if let Some(c) = &cursor {
                    q.push_str(&format!("&cursor={}", enc(c)));
                }
                let page = client.call(&q, None)?;
                accounts.extend(page["accounts"].as_array().cloned().unwrap_or_default());
                match page["cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            Ok(json!({ "accounts": accounts }))
        }
        AccountCommand::Info { account, node } => {
            let client = NodeClient::new(&node)?;
            let did = client.did(&account)?;
            let mut info = client.call(&format!("com.atproto.admin.getAccountInfo?did={}", enc(&did)), None)?;
            let status = client.call(&format!("com.atproto.sync.getRepoStatus?did={}", enc(&did)), None)?;
            info["active"] = status["active"].clone();
            if let Some(s) = status.get("status") {
                info["status"] = s.clone();
            }
            Ok(info)
        }
        AccountCommand::Takedown { account, node } => takedown(&account, &node, true),
        AccountCommand::Untakedown { account, node } => takedown(&account, &node, false),
        AccountCommand::Delete { account, node } => {
            let client = NodeClient::new(&node)?;
            let did = client.did(&account)?;
            client.call("com.atproto.admin.deleteAccount", Some(json!({ "did": did })))?;
            Ok(json!({ "did": did, "deleted": true }))
        }
        AccountCommand::ResetPassword { account, node } => {
            let client = NodeClient::new(&node)?;
            let did = client.did(&account)?;
            let password = new_password();
            client
                .call("com.atproto.admin.updateAccountPassword", Some(json!({ "did": did, "password": password })))?;
            Ok(json!({ "did": did, "password": password }))
        }
    }
}

/// Takes an account down (`applied`) or lifts the takedown.
fn takedown(account: &str, node: &NodeArgs, applied: bool) -> anyhow::Result<Value> {
    let client = NodeClient::new(node)?;
    let did = client.did(account)?;
    let mut takedown = json!({ "applied": applied });
    if applied {
        takedown["ref"] = json!(format!("ues-cli-{}", unix_now()));
    }
    client.call(
        "com.atproto.admin.updateSubjectStatus",
        Some(json!({ "subject": { "$type": "com.atproto.admin.defs#repoRef", "did": did }, "takedown": takedown })),
    )
}

/// Seconds since the epoch (the takedown's reference).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn bar(total: Option<u64>, msg: &str) -> indicatif::ProgressBar {
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}")
                .expect("a valid template"),
        ),
    };
    bar.set_message(msg.to_string());
    bar
}

/// `ues export-repo DID FILE`: the account's repository as a CAR file, streamed to disk.
pub(crate) fn export_repo(account: &str, file: &Path, node: &NodeArgs) -> anyhow::Result<Value> {
    let client = NodeClient::new(node)?;
    let did = client.did(account)?;
    anyhow::ensure!(!file.exists(), "{} exists; not overwriting it", file.display());
    let url = format!("{}/xrpc/com.atproto.sync.getRepo?did={}", client.base, enc(&did));
    let mut res = client
        .agent
        .get(&url)
        .header("authorization", &client.auth)
        .call()
        .with_context(|| format!("calling {url} (is the node running?)"))?;
    if !res.status().is_success() {
        return NodeClient::answer("com.atproto.sync.getRepo", res);
    }
    let tmp = file.with_extension("car.part");
    let mut out = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let progress = bar(None, &format!("exporting {did}"));
    let mut reader = res.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = reader.read(&mut buf).context("reading the repository")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        bytes += n as u64;
        progress.set_position(bytes);
    }
    out.sync_all()?;
    std::fs::rename(&tmp, file)?;
    progress.finish_and_clear();
    Ok(json!({ "did": did, "file": file, "bytes": bytes }))
}

/// `ues import-repo FILE`: replaces the repository of the account the CAR belongs to (its
/// commit names it) with the CAR, which must be signed by the account's key on this node.
pub(crate) fn import_repo(file: &Path, node: &NodeArgs) -> anyhow::Result<Value> {
    let client = NodeClient::new(node)?;
    let did = car_did(file)?;
    let size = std::fs::metadata(file)?.len();
    let progress = bar(Some(size), &format!("importing {did}"));
    let reader = progress.wrap_read(std::fs::File::open(file)?);
    let url = format!("{}/xrpc/dev.ues.admin.importRepo?did={}", client.base, enc(&did));
    let res = client
        .agent
        .post(&url)
        .header("authorization", &client.auth)
        .header("content-type", "application/vnd.ipld.car")
        .send(ureq::SendBody::from_owned_reader(reader))
        .with_context(|| format!("calling {url} (is the node running?)"))?;
    progress.finish_and_clear();
    NodeClient::answer("dev.ues.admin.importRepo", res)
}

/// The DID a repository CAR's commit names.
fn car_did(file: &Path) -> anyhow::Result<String> {
    let f = std::io::BufReader::new(std::fs::File::open(file).with_context(|| format!("{}", file.display()))?);
    let mut car = ues_ipld::car::CarReader::new(f).context("not a CAR file")?;
    let root = *car.roots().first().context("the CAR has no root")?;
    for block in &mut car {
        let (cid, bytes) = block.context("reading the CAR")?;
        if cid == root {
            let commit = ues_repo::commit::Commit::decode(&bytes).context("the root is not a repository commit")?;
            return Ok(commit.did.to_string());
        }
    }
    anyhow::bail!("the CAR does not hold its root block")
}

/// `ues request-crawl RELAY`: the node asks the relay to crawl it.
pub(crate) fn request_crawl(relay: &str, node: &NodeArgs) -> anyhow::Result<Value> {
    NodeClient::new(node)?.call("dev.ues.admin.requestCrawl", Some(json!({ "relay": relay })))
}
