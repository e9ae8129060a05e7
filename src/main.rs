//! `ues`: the Universal Entity Streams node.
//!
//! This binary is the composition root: it parses the command line and `node.toml` into a typed
//! [`config::Config`], opens storage, and wires the layers together.

mod backup;
mod bench;
mod bench_asset;
mod bench_chat;
mod bench_feed;
mod bench_lens;
mod blobs;
mod config;
mod doctor;
mod identity;
mod lexicons;
mod operator;
mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// mimalloc instead of glibc malloc: small, short-lived allocations (CBOR, JSON, MST nodes,
/// frames) are most of the node's allocations; measured in docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's options, set before its first arena exists: the loader runs `.init_array`
/// entries before `main` and before any Rust allocation. Arenas are committed as they are used
/// (committed up front, transparent huge pages made whole 2 MiB regions resident) and freed
/// memory goes back to the system at once (after a delay it stayed resident at idle). Idle RSS
/// with one account: 107 MB before, measured by `scripts/rss.sh` (docs/benchmarks.md).
/// The project's only unsafe code: an `.init_array` entry and two foreign calls, none of which
/// touches memory of ours.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
static MIMALLOC_OPTIONS: extern "C" fn() = mimalloc_options;

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
extern "C" fn mimalloc_options() {
    // Positions in mimalloc v2's `mi_option_t` (include/mimalloc.h), which libmimalloc-sys
    // builds by default and does not name.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain stores into mimalloc's option table; no allocation, no other state.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

/// Universal Entity Streams: a personal data server, a P2P node and an application host.
#[derive(Debug, Parser)]
#[command(name = "ues", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data directory: a commented node.toml and the node's Ed25519 identity key.
    Init(NodeArgs),
    /// Run the node (initialising the data directory first if it is missing or empty).
    Run(NodeArgs),
    /// Inspect and verify CAR files.
    #[command(subcommand)]
    Car(CarCommand),
    /// Merkle Search Tree tools.
    #[command(subcommand)]
    Mst(MstCommand),
    /// Lexicon tools.
    #[command(subcommand)]
    Lexicon(LexiconCommand),
    /// End-to-end benchmarks against a running node.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Peers of a node: its id, connections, devices (the commands other than `id` talk to the
    /// running node's admin API).
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Replicate an account from a peer that hosts it (this node must be an authorized device
    /// of the account: `ues peer authorize DID PEER` on that peer first).
    Replicate {
        /// The account's DID.
        did: String,
        /// The peer id to fetch it from.
        #[arg(long)]
        from: String,
        /// Where that peer listens (a multiaddr), when this node is not connected to it.
        #[arg(long)]
        addr: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Take a consistent backup of the running node (databases, replica, keys, configuration)
    /// into a new directory on its machine, while it serves writes.
    Backup {
        /// Where the backup goes (must not exist yet).
        dir: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// The running node at one look: version, uptime, accounts, firehose position, peers,
    /// storage sizes and free disk (JSON).
    Status(NodeArgs),
    /// Check a node's configuration and surroundings before exposing it (data directory and key
    /// modes, free disk, the listen address, public URL reachable and answering as this node,
    /// HTTPS, wildcard DNS for handles, the PLC directory) and say what to fix. Exits 1 when
    /// something needs fixing.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Blobs of the node's accounts.
    #[command(subcommand)]
    Blobs(BlobsCommand),
    /// Invite codes of the running node (for `[xrpc] invite_required`).
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Accounts of the running node: create, list, info, takedown, untakedown, delete,
    /// reset-password.
    #[command(subcommand)]
    Account(operator::AccountCommand),
    /// Write an account's repository (a DID or handle) to a CAR file, with a progress bar.
    ExportRepo {
        /// A DID or a handle.
        account: String,
        /// The CAR file to write (must not exist).
        file: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Replace the repository of the account a CAR belongs to with it (the CAR must be signed
    /// by the account's key on this node: an export of it), with a progress bar.
    ImportRepo {
        /// The CAR file.
        file: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Ask a relay (its base URL) to crawl this node now.
    RequestCrawl {
        /// The relay, e.g. https://bsky.network.
        relay: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Make a new data directory of a backup and check every repository in it.
    Restore {
        /// The backup (`ues backup DIR`).
        dir: PathBuf,
        /// The new data directory (must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum InviteCommand {
    /// Make invite codes (JSON: the codes per account).
    Create {
        /// Accounts each code admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How many codes.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Make them for these accounts to hand out (DIDs); none: the operator's.
        #[arg(long = "for", value_name = "DID")]
        for_accounts: Vec<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Every code with its uses, newest first (JSON).
    List(NodeArgs),
    /// Disable codes, or every code of accounts.
    Disable {
        /// The codes.
        codes: Vec<String>,
        /// Disable every code of these accounts (DIDs) too.
        #[arg(long = "account", value_name = "DID")]
        accounts: Vec<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
}

#[derive(Debug, Subcommand)]
enum BlobsCommand {
    /// Move every blob to the disk or to the object store of `[storage.s3]`, each copy read
    /// back and checked against its CID before the old one goes, with a progress bar. Run it
    /// with the node stopped; run again, a move cut off goes on from where it stopped. Set
    /// `[storage] blobs` to the same place so that new blobs go there too.
    Migrate {
        /// Where the blobs go.
        #[arg(long, value_enum)]
        to: MigrateTo,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// Where `ues blobs migrate` moves blobs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MigrateTo {
    /// The object store of `[storage.s3]`.
    S3,
    /// Chunks in the data directory.
    Disk,
}

#[derive(Debug, Subcommand)]
enum PeerCommand {
    /// Print the node's libp2p peer id (derived from the Ed25519 identity key in the data
    /// directory, so it is stable across restarts).
    Id(NodeArgs),
    /// The running node's peer id, listen addresses and connected peers (JSON).
    List(NodeArgs),
    /// Connect the running node to a peer (a multiaddr).
    Connect {
        /// Where the peer listens, e.g. /ip4/192.0.2.7/tcp/4001/p2p/12D3KooW...
        addr: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Authorize another node (by peer id) as a device of an account hosted here, so it can
    /// replicate and write to the account.
    Authorize {
        /// The account's DID.
        did: String,
        /// The other node's peer id (`ues peer id` there).
        peer: String,
        /// Revoke instead.
        #[arg(long)]
        revoke: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// The running node's replicated accounts: roots, devices, entries (JSON).
    Status(NodeArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// createRecord throughput and latency over HTTP/1.1 keep-alive connections (JSON result).
    Create {
        /// The node's address.
        #[arg(long, default_value = "127.0.0.1:2583")]
        addr: SocketAddr,
        /// How many records.
        #[arg(long, default_value_t = 3000)]
        records: usize,
        /// Concurrent connections (writers to the same repository).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// The feed application at scale: a node of its own loaded with accounts, posts, likes,
    /// a viewer following many accounts and a long thread; the feed's indexing rate from the
    /// event log, then getTimeline and getPostThread latency over HTTP (JSON result).
    Feed {
        /// Accounts.
        #[arg(long, default_value_t = 10_000)]
        accounts: usize,
        /// Posts, spread evenly over the accounts.
        #[arg(long, default_value_t = 1_000_000)]
        posts: usize,
        /// Accounts the viewer follows.
        #[arg(long, default_value_t = 1000)]
        follows: usize,
        /// Likes each account makes.
        #[arg(long, default_value_t = 10)]
        likes_per_account: usize,
        /// Replies in the measured thread.
        #[arg(long, default_value_t = 500)]
        replies: usize,
        /// Concurrent connections while loading.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Calls measured per method.
        #[arg(long, default_value_t = 1000)]
        calls: usize,
        /// Keep the node's data here (an empty or new directory) instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// End-to-end encrypted messages between two running nodes that resolve each other's DIDs:
    /// send latency and the rate the second node has them decrypted (JSON result;
    /// `scripts/chat-bench.sh` sets up both nodes and a DID directory).
    Chat {
        /// The first node's address (the sender's).
        #[arg(long)]
        a: SocketAddr,
        /// The second node's address (the recipient's).
        #[arg(long)]
        b: SocketAddr,
        /// Messages sent.
        #[arg(long, default_value_t = 1000)]
        messages: usize,
    },
    /// Asset ledger transfers on a running node, without a contract and with an `on_transfer`
    /// hook (`--hook`, a module), by one writer and by several: per second, p50, p99 (JSON
    /// result; `scripts/asset-bench.sh` starts a node and compiles the fee hook).
    Asset {
        /// The node's address.
        #[arg(long, default_value = "127.0.0.1:2583")]
        addr: SocketAddr,
        /// Transfers per run.
        #[arg(long, default_value_t = 2000)]
        transfers: usize,
        /// Concurrent writers in the second run.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// A contract module (.wasm) instantiated as the hooked class's `on_transfer` hook.
        #[arg(long)]
        hook: Option<PathBuf>,
        /// The hook's instantiate message (JSON).
        #[arg(long, default_value = "{}")]
        hook_msg: String,
    },
    /// Live-view maintenance on the node's engine: a grouped join of `rows` groups is built,
    /// then single likes come and go (JSON result: build rate, each change's time, against
    /// recomputing the view).
    Lens {
        /// Posts (each liked once): the view's rows.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Changes measured.
        #[arg(long, default_value_t = 20_000)]
        changes: usize,
        /// Changes per transaction (the event consumer applies a batch per transaction).
        #[arg(long, default_value_t = 100)]
        per_tx: usize,
        /// The writer's SQLite page cache, MiB (the node's default: `[storage] sqlite_cache_mib`;
        /// 0: SQLite's own default, 2 MiB).
        #[arg(long, default_value_t = 64)]
        cache_mib: u64,
        /// Where the database file goes (removed after).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// The delay from a commit to the difference it makes arriving on a `/ws` view
    /// subscription, against a running node (JSON result).
    LensWs {
        /// The node's HTTP address.
        #[arg(long, default_value = "127.0.0.1:2583")]
        addr: SocketAddr,
        /// Writes measured.
        #[arg(long, default_value_t = 200)]
        writes: usize,
    },
    /// `verifyLedger`'s replay of a ledger of many transactions, built in memory as the node
    /// writes them (JSON result: build and replay time, per transaction, peak memory).
    Ledger {
        /// Transactions in the ledger.
        #[arg(long, default_value_t = 1_000_000)]
        txs: usize,
        /// Transaction records per commit while building it.
        #[arg(long, default_value_t = 1000)]
        per_commit: usize,
    },
    /// WebSocket fan-out: clients subscribed to one repository of a running node while it
    /// takes writes at a fixed rate; delivery latency, missing events, node RSS (JSON result).
    Ws {
        /// The node's address.
        #[arg(long, default_value = "127.0.0.1:2583")]
        addr: SocketAddr,
        /// WebSocket clients.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Writes per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Seconds of writing.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent writer connections.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Subscribe with `batch: true` (events ready together arrive in one message).
        #[arg(long)]
        batch: bool,
        /// The node's admin password, to read its memory use from `/stats` (the operator's).
        #[arg(long, env = "UES_ADMIN_PASSWORD")]
        admin_password: Option<String>,
    },
    /// Two nodes over TCP on 127.0.0.1: connection setup, a new replica catching up on a log,
    /// one new operation synced (JSON result).
    P2p {
        /// Operations the new replica catches up on.
        #[arg(long, default_value_t = 100_000)]
        ops: usize,
    },
    /// Replica reconciliation in memory: two replicas of a generated log of signed operations,
    /// four scenarios (identical; 100 recent and 100 scattered differences; 1,000 authors with
    /// nothing new); round trips, bytes each way, CPU, and whether the MST roots converge.
    Sync {
        /// Operations in the log.
        #[arg(long, default_value_t = 1_000_000)]
        ops: usize,
        /// Simulated round-trip time, milliseconds (added to the elapsed time reported).
        #[arg(long, default_value_t = 50.0)]
        rtt_ms: f64,
        /// Print one JSON object per line (default: the same objects, pretty-printed).
        #[arg(long)]
        json: bool,
        /// Run only the scenarios whose names contain this.
        #[arg(long)]
        only: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LexiconCommand {
    /// Refuse incompatible changes between two versions of a Lexicon document (exit 1 and a
    /// JSON list of the incompatibilities); accept compatible ones.
    Check {
        /// The published version.
        old: PathBuf,
        /// The proposed version.
        new: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CarCommand {
    /// Print a CAR's roots, block count and size (JSON).
    Inspect {
        /// The CAR file.
        file: PathBuf,
    },
    /// Check every block against its CID and, when the root is a commit or an MST node, that the
    /// tree is well formed and every record is present (JSON report; exit 1 on failure).
    Verify {
        /// The CAR file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum MstCommand {
    /// Diff the trees of two CARs (each rooted at a commit or an MST node), as JSON.
    Diff {
        /// The older tree.
        a: PathBuf,
        /// The newer tree.
        b: PathBuf,
    },
}

/// Options shared by the commands that work on a node's data directory.
#[derive(Debug, Args)]
struct NodeArgs {
    /// node.toml to read (default: <data-dir>/node.toml when present, else built-in defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir` in the config).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address (overrides `[http] listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// libp2p listen address (repeatable; overrides `[p2p] listen`).
    #[arg(long, value_name = "MULTIADDR")]
    p2p_listen: Vec<String>,
    /// A peer to dial at start and whenever the connection is lost (repeatable; added to
    /// `[p2p] bootstrap`).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Do not look for peers on the local network (overrides `[p2p] mdns`).
    #[arg(long)]
    no_mdns: bool,
}

impl NodeArgs {
    /// Flags over file over defaults.
    fn resolve(&self) -> anyhow::Result<Config> {
        let data_dir_hint = self.data_dir.clone().unwrap_or_else(|| Config::default().data_dir);
        let in_data_dir = data_dir_hint.join("node.toml");
        let mut cfg = match &self.config {
            Some(path) => Config::load(path)?,
            None if in_data_dir.is_file() => Config::load(&in_data_dir)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            cfg.data_dir = dir.clone();
        }
        if let Some(listen) = self.listen {
            cfg.http.listen = listen;
        }
        if !self.p2p_listen.is_empty() {
            cfg.p2p.listen = self.p2p_listen.clone();
        }
        cfg.p2p.bootstrap.extend(self.bootstrap.iter().cloned());
        if self.no_mdns {
            cfg.p2p.mdns = false;
        }
        Ok(cfg)
    }
}

/// Threads for store work (RocksDB, SQLite, signing, blob pieces) beside the async workers.
/// Tokio's default (512) lets a burst of clients raise as many threads, each with its stack;
/// past this many, blocking work queues for a thread instead. It leaves room beside the
/// repository exports (16 at once) for every other call, and for 8 concurrent writers to group.
const BLOCKING_THREADS: usize = 32;

fn main() {
    // A failing command says why in one line (the chain of causes), not with a backtrace.
    if let Err(e) = command(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(args) => {
            owner_only_umask();
            let cfg = args.resolve()?;
            init_logging(&cfg);
            init(&cfg.data_dir)?;
            println!("initialised {}", cfg.data_dir.display());
            Ok(())
        }
        Command::Car(CarCommand::Inspect { file }) => print_json(tools::car_inspect(&file)?),
        Command::Car(CarCommand::Verify { file }) => print_json(tools::car_verify(&file)?),
        Command::Mst(MstCommand::Diff { a, b }) => print_json(tools::mst_diff(&a, &b)?),
        Command::Lexicon(LexiconCommand::Check { old, new }) => {
            let (report, compatible) = tools::lexicon_check(&old, &new)?;
            print_json(report)?;
            if !compatible {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Peer(PeerCommand::Id(args)) => {
            let cfg = args.resolve()?;
            let key = identity::load(&cfg.data_dir)?;
            println!("{}", ues_protocol::p2p::keypair(key.to_bytes()).public().to_peer_id());
            Ok(())
        }
        Command::Peer(PeerCommand::List(args)) => print_json(admin_call(&args, "dev.ues.admin.listPeers", None)?),
        Command::Peer(PeerCommand::Status(args)) => {
            print_json(admin_call(&args, "dev.ues.admin.getReplication", None)?)
        }
        Command::Peer(PeerCommand::Connect { addr, node }) => {
            print_json(admin_call(&node, "dev.ues.admin.connectPeer", Some(serde_json::json!({ "addr": addr })))?)
        }
        Command::Peer(PeerCommand::Authorize { did, peer, revoke, node }) => print_json(admin_call(
            &node,
            "dev.ues.admin.authorizeDevice",
            Some(serde_json::json!({ "did": did, "peerId": peer, "revoke": revoke })),
        )?),
        Command::Backup { dir, node } => {
            let dir = std::path::absolute(&dir).with_context(|| format!("{}", dir.display()))?;
            print_json(admin_call(&node, "dev.ues.admin.backup", Some(serde_json::json!({ "dir": dir })))?)
        }
        Command::Invite(InviteCommand::Create { uses, count, for_accounts, node }) => print_json(admin_call(
            &node,
            "com.atproto.server.createInviteCodes",
            Some(serde_json::json!({ "useCount": uses, "codeCount": count, "forAccounts": for_accounts })),
        )?),
        Command::Account(cmd) => print_json(operator::account(cmd)?),
        Command::ExportRepo { account, file, node } => print_json(operator::export_repo(&account, &file, &node)?),
        Command::ImportRepo { file, node } => print_json(operator::import_repo(&file, &node)?),
        Command::RequestCrawl { relay, node } => print_json(operator::request_crawl(&relay, &node)?),
        Command::Invite(InviteCommand::List(node)) => {
            print_json(admin_call(&node, "com.atproto.admin.getInviteCodes?limit=500", None)?)
        }
        Command::Invite(InviteCommand::Disable { codes, accounts, node }) => {
            anyhow::ensure!(!codes.is_empty() || !accounts.is_empty(), "name codes, or accounts with --account");
            print_json(admin_call(
                &node,
                "com.atproto.admin.disableInviteCodes",
                Some(serde_json::json!({ "codes": codes, "accounts": accounts })),
            )?)
        }
        Command::Blobs(BlobsCommand::Migrate { to, node }) => {
            let cfg = node.resolve()?;
            init_logging(&cfg);
            let to = match to {
                MigrateTo::S3 => ues_storage::BlobPlace::Objects,
                MigrateTo::Disk => ues_storage::BlobPlace::Disk,
            };
            print_json(blobs::migrate(&cfg, to)?)
        }
        Command::Restore { dir, data_dir } => print_json(backup::restore(&dir, &data_dir)?),
        Command::Status(args) => print_json(admin_call(&args, "dev.ues.admin.getStatus", None)?),
        Command::Doctor { json, node } => {
            let (report, healthy) = doctor::run(&node.resolve()?);
            if json {
                print_json(report)?;
            } else {
                doctor::print(&report);
            }
            if !healthy {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Replicate { did, from, addr, node } => print_json(admin_call(
            &node,
            "dev.ues.admin.replicate",
            Some(serde_json::json!({ "did": did, "from": from, "addr": addr })),
        )?),
        Command::Bench(BenchCommand::P2p { ops }) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            print_json(rt.block_on(bench::p2p(ops))?)
        }
        Command::Bench(BenchCommand::Sync { ops, rtt_ms, json, only }) => {
            bench::sync(ops, rtt_ms, only.as_deref(), |v| {
                if json {
                    println!("{}", bench::ordered_line(&v))
                } else {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
                }
            });
            Ok(())
        }
        Command::Bench(BenchCommand::Ws { addr, clients, rate, seconds, writers, batch, admin_password }) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let shape = bench::WsShape { clients, rate, seconds, writers, batch };
            print_json(rt.block_on(bench::ws(addr, shape, admin_password.as_deref()))?)
        }
        Command::Bench(BenchCommand::Feed {
            accounts,
            posts,
            follows,
            likes_per_account,
            replies,
            connections,
            calls,
            dir,
        }) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let shape =
                bench_feed::FeedShape { accounts, posts, follows, likes_per_account, replies, connections, calls, dir };
            print_json(rt.block_on(bench_feed::feed(shape))?)
        }
        Command::Bench(BenchCommand::Asset { addr, transfers, writers, hook, hook_msg }) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let msg: serde_json::Value = serde_json::from_str(&hook_msg)?;
            print_json(rt.block_on(bench_asset::asset(addr, transfers, writers.max(1), hook, msg))?)
        }
        Command::Bench(BenchCommand::Lens { rows, changes, per_tx, cache_mib, dir }) => {
            print_json(bench_lens::lens(rows.max(1), changes.max(1), per_tx.max(1), cache_mib, &dir)?)
        }
        Command::Bench(BenchCommand::LensWs { addr, writes }) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            print_json(rt.block_on(bench_lens::lens_ws(addr, writes.max(1)))?)
        }
        Command::Bench(BenchCommand::Ledger { txs, per_commit }) => {
            print_json(bench_asset::ledger(txs.max(1), per_commit.max(1))?)
        }
        Command::Bench(BenchCommand::Chat { a, b, messages }) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            print_json(rt.block_on(bench_chat::chat(a, b, messages))?)
        }
        Command::Bench(BenchCommand::Create { addr, records, concurrency }) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            print_json(rt.block_on(bench::create(addr, records, concurrency))?)
        }
        Command::Run(args) => {
            owner_only_umask();
            let cfg = args.resolve()?;
            init_logging(&cfg);
            tokio::runtime::Builder::new_multi_thread()
                .max_blocking_threads(BLOCKING_THREADS)
                .enable_all()
                .build()?
                .block_on(run(cfg))
        }
    }
}

/// Calls an admin method of the running node (see [`operator::NodeClient`]); a POST when
/// there is a body.
fn admin_call(args: &NodeArgs, method: &str, body: Option<serde_json::Value>) -> anyhow::Result<serde_json::Value> {
    operator::NodeClient::new(args)?.call(method, body)
}

fn print_json(value: serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn init_logging(cfg: &Config) {
    // RUST_LOG wins over the config file, as every Rust operator expects.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.filter));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    match cfg.log.format {
        config::LogFormat::Json => fmt.json().init(),
        // Colour codes only where a person reads them, not in log files.
        config::LogFormat::Text => fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
}

/// Files the node creates (databases, keys, logs RocksDB writes) are readable by their owner
/// only, whatever the caller's umask: the data directory holds every account's keys. Storage
/// also sets explicit modes; this covers files RocksDB creates, which takes no mode.
fn owner_only_umask() {
    use rustix::fs::Mode;
    rustix::process::umask(Mode::from_raw_mode(0o077));
}

/// Whether `dir` holds an initialised node.
fn is_initialised(dir: &Path) -> bool {
    identity::key_path(dir).is_file()
}

/// Writes node.toml (unless one is there) and a fresh identity key into `dir`.
fn init(dir: &Path) -> anyhow::Result<()> {
    if is_initialised(dir) {
        anyhow::bail!("{} is already initialised (it holds {})", dir.display(), identity::KEY_FILE);
    }
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let toml_path = dir.join("node.toml");
        if !toml_path.exists() {
            // Mode 0600: the file may come to hold the admin password or the keys' passphrase.
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&toml_path)?;
            std::io::Write::write_all(&mut file, config::DEFAULT_TOML.as_bytes())?;
        }
    }
    let key = identity::generate(dir)?;
    write_service_unit(dir)?;
    tracing::info!(dir = %dir.display(), node_key = %hex::encode(key.verifying_key().as_bytes()), "node initialised");
    Ok(())
}

/// The systemd unit of `contrib/ues.service`, filled in for this binary, this data directory
/// and the user running `ues init` (its owner), written as `<dir>/ues.service` unless present.
fn write_service_unit(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("ues.service");
    if path.exists() {
        return Ok(());
    }
    let bin = std::env::current_exe().and_then(std::fs::canonicalize).context("locating the ues binary")?;
    let data_dir = std::fs::canonicalize(dir)?;
    let (user, group) = account_names(rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
    let unit = include_str!("../contrib/ues.service")
        .replace("@BIN@", &bin.to_string_lossy())
        .replace("@DATA_DIR@", &data_dir.to_string_lossy())
        .replace("@USER@", &user)
        .replace("@GROUP@", &group);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    std::io::Write::write_all(&mut file, unit.as_bytes())?;
    Ok(())
}

/// The names of a user and group id (from `/etc/passwd` and `/etc/group`; the numbers when
/// they are not listed there).
fn account_names(uid: u32, gid: u32) -> (String, String) {
    let lookup = |file: &str, id: u32| {
        std::fs::read_to_string(file).ok().and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == id).then(|| name.to_string())
            })
        })
    };
    (
        lookup("/etc/passwd", uid).unwrap_or_else(|| uid.to_string()),
        lookup("/etc/group", gid).unwrap_or_else(|| gid.to_string()),
    )
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    if !is_initialised(&cfg.data_dir) {
        init(&cfg.data_dir)?;
    }
    let apps =
        ues_apps::select(&cfg.apps.enabled, &cfg.apps_config()?).map_err(|e| anyhow::anyhow!("[apps] enabled: {e}"))?;
    // Applications with a database of their own have it attached to the node's.
    let mut storage_cfg = cfg.storage_config();
    storage_cfg.sqlite.attached = apps.iter().filter_map(|a| a.database()).map(|d| d.attached()).collect();
    let storage = Arc::new(
        ues_storage::Storage::open(&cfg.data_dir, &storage_cfg)
            .with_context(|| format!("opening storage in {}", cfg.data_dir.display()))?,
    );
    let key = identity::load(&cfg.data_dir)?;
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        node_key = %hex::encode(key.verifying_key().as_bytes()),
        peer_id = %ues_protocol::p2p::keypair(key.to_bytes()).public().to_peer_id(),
        "storage open"
    );

    raise_open_files();
    let info = Arc::new(ues_protocol::http::NodeInfo::now());
    let xrpc = Arc::new(xrpc_state(&cfg, &storage, &ues_apps::Host::lexicons(&apps))?);
    let host =
        ues_apps::Host::new(xrpc.clone(), apps).map_err(|e| anyhow::anyhow!("starting the applications: {e}"))?;
    match cfg.xrpc.rate_limits.to_limits() {
        Some(limits) => xrpc.set_rate_limits(&limits),
        None => tracing::warn!("XRPC rate limits are off ([xrpc.rate_limits] enabled = false)"),
    }
    let (stop_p2p, p2p_stopped) = tokio::sync::watch::channel(false);
    let (p2p, replica_store) = if cfg.p2p.enabled {
        let (task, store) = start_p2p(&cfg, &key, &xrpc, p2p_stopped)?;
        (Some(task), Some(store))
    } else {
        (None, None)
    };
    let _ = xrpc.storage_ops.set(Arc::new(backup::NodeBackup {
        storage: storage.clone(),
        replica: replica_store,
        data_dir: cfg.data_dir.clone(),
    }));
    // The background tasks run until the server has stopped.
    let tasks = ues_protocol::node::start_tasks(&xrpc);
    let consumers = host.start();
    let registry = host.registry().map_err(|e| anyhow::anyhow!("the applications' topics: {e}"))?;
    let app = ues_protocol::http::router(info)
        .merge(ues_protocol::xrpc::router_with(xrpc.clone(), host.xrpc()))
        .merge(ues_protocol::gateway::router_with(xrpc.clone(), cfg.ws.to_config(), registry))
        .merge(ues_protocol::rest::router_with(xrpc.clone(), cfg.api.to_config(), host.openapi()))
        .merge(ues_protocol::oauth::router(xrpc.clone()))
        .layer(axum::middleware::from_fn(ues_protocol::node::limits::without_internal_headers));
    let listener =
        tokio::net::TcpListener::bind(cfg.http.listen).await.with_context(|| format!("binding {}", cfg.http.listen))?;
    let tls = cfg.http.tls()?;
    let acme = acme_client(&cfg, &xrpc)?;
    let (files, obtained) = (tls.clone(), acme.clone());
    let _ = xrpc.certificates.set(Arc::new(move || {
        let mut held: Vec<(String, std::time::SystemTime)> = obtained.as_ref().map(|a| a.held()).unwrap_or_default();
        if let Some((names, expires)) = files.as_ref().and_then(|f| f.certificate()) {
            held.extend(names.into_iter().map(|n| (n, expires)));
        }
        held
    }));
    let https = tls.is_some() || acme.is_some();
    tracing::info!(addr = %listener.local_addr()?, version = env!("CARGO_PKG_VERSION"), tls = https, "ues listening");
    let redirect = match cfg.http.http_listen.as_str() {
        "" => None,
        _ if !https => {
            anyhow::bail!("[http] http_listen redirects to HTTPS: it needs tls_cert and tls_key, or acme_directory")
        }
        addr => {
            let plain = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding [http] http_listen {addr}"))?;
            tracing::info!(addr = %plain.local_addr()?, "plain HTTP redirects to HTTPS");
            let router = ues_protocol::http::redirect_router(listener.local_addr()?.port(), acme.clone());
            Some(tokio::spawn(ues_protocol::http::serve(plain, router, cfg.http.to_limits(), std::future::pending())))
        }
    };
    let admin = admin_listener(&cfg, https, &app).await?;
    let renewals = acme.clone().map(|a| tokio::spawn(a.run()));
    let limits = ues_protocol::http::ServeLimits { tls, acme, ..cfg.http.to_limits() };
    let closing = xrpc.clone();
    // Client addresses reach handlers as ConnectInfo (the per-address rate limits).
    ues_protocol::http::serve(listener, app, limits, async move {
        shutdown_signal().await;
        // Long-lived streams would hold the graceful shutdown open: close them with a frame.
        closing.firehose.close_all();
    })
    .await?;
    if let Some(task) = redirect {
        task.abort();
    }
    if let Some(task) = admin {
        task.abort();
        let _ = std::fs::remove_file(cfg.data_dir.join(ADMIN_ADDR_FILE));
    }
    if let Some(task) = renewals {
        task.abort();
    }
    // Upgraded WebSocket connections outlive the server's own graceful shutdown: give the
    // streams a moment to deliver their close frames.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while xrpc.open_streams() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(consumers);
    tasks.stop();
    let _ = stop_p2p.send(true);
    if let Some(task) = p2p {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    drop(xrpc);
    tracing::info!("http server stopped; closing storage");
    drop(storage);
    tracing::info!("ues stopped");
    Ok(())
}

/// Where a node serving HTTPS answers the operator's commands on this machine: a file in the
/// data directory naming a loopback address.
pub(crate) const ADMIN_ADDR_FILE: &str = "admin.addr";

/// With HTTPS on, the admin methods (`ues status`, `backup`, `peer ...`) are also served as
/// plain HTTP on a loopback port of the system's choosing, written to `<data_dir>/admin.addr`
/// (owner-only) for the commands to find: the certificate names the public host, not the
/// loopback address the commands reach. Only `dev.ues.admin.*` and the health check answer
/// there; the operator's password is asked as on the public port.
async fn admin_listener(
    cfg: &Config,
    https: bool,
    app: &axum::Router,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let file = cfg.data_dir.join(ADMIN_ADDR_FILE);
    if !https {
        let _ = std::fs::remove_file(&file);
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    // One left by a node that did not stop cleanly names a port nobody serves now.
    let _ = std::fs::remove_file(&file);
    identity::write_private(&file, addr.to_string().as_bytes())?;
    tracing::info!(%addr, "admin methods for the operator's commands on loopback");
    let router = app.clone().layer(axum::middleware::from_fn(
        |req: axum::extract::Request, next: axum::middleware::Next| async move {
            let path = req.uri().path();
            if path.starts_with("/xrpc/dev.ues.admin.") || path == "/xrpc/_health" {
                next.run(req).await
            } else {
                axum::response::IntoResponse::into_response(axum::http::StatusCode::NOT_FOUND)
            }
        },
    ));
    Ok(Some(tokio::spawn(ues_protocol::http::serve(listener, router, cfg.http.to_limits(), std::future::pending()))))
}

/// The ACME client `[http] acme_directory` asks for: certificates for `acme_domains`, and on
/// demand for the handles of accounts hosted here under `[xrpc] user_domains`.
fn acme_client(
    cfg: &Config,
    xrpc: &Arc<ues_protocol::node::Node>,
) -> anyhow::Result<Option<Arc<ues_protocol::acme::Acme>>> {
    let h = &cfg.http;
    if h.acme_directory.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        !h.http_listen.is_empty(),
        "[http] acme_directory needs http_listen: the ACME server checks each name over plain HTTP"
    );
    let node = xrpc.clone();
    let domains = cfg.xrpc.user_domains.clone();
    let on_demand = Arc::new(move |name: &str| {
        domains.iter().any(|d| name.ends_with(d.as_str()) && name.len() > d.len())
            && ues_repo::syntax::Handle::new(name).is_ok_and(|h| node.accounts.by_handle(&h).ok().flatten().is_some())
    });
    let acme = ues_protocol::acme::Acme::new(ues_protocol::acme::AcmeConfig {
        directory: h.acme_directory.clone(),
        email: h.acme_email.clone(),
        domains: h.acme_domains.clone(),
        ca_file: (!h.acme_ca_file.as_os_str().is_empty()).then(|| h.acme_ca_file.clone()),
        dir: cfg.data_dir.join("tls"),
        on_demand: Some(on_demand),
    })
    .map_err(|e| anyhow::anyhow!("[http] acme: {e}"))?;
    Ok(Some(acme))
}

/// The running swarm task.
type P2pTask = tokio::task::JoinHandle<Result<(), String>>;

/// Opens the replica (its own RocksDB under `<data_dir>/replica`), attaches it to the XRPC
/// state and starts the swarm.
fn start_p2p(
    cfg: &Config,
    key: &ed25519_dalek::SigningKey,
    xrpc: &Arc<ues_protocol::node::Node>,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(P2pTask, Arc<ues_storage::RocksStore>)> {
    use ues_protocol::p2p::node;
    let pcfg = cfg.p2p.to_config()?;
    let store = ues_storage::RocksStore::open(cfg.data_dir.join("replica"), &cfg.storage_config().rocks)
        .context("opening the replica store")?;
    let blocks: Arc<dyn ues_repo::ipld::storage::Blockstore> = Arc::new(store.blockstore());
    let (rep, rx) = node::Replication::open(blocks, key.clone(), &xrpc.accounts, xrpc.kv.clone(), pcfg.sync)
        .map_err(|e| anyhow::anyhow!("opening the replica: {e}"))?;
    let keypair = ues_protocol::p2p::keypair(key.to_bytes());
    let _ = xrpc.peer_id.set(keypair.public().to_peer_id());
    let _ = xrpc.replication.set(rep.clone() as Arc<dyn ues_protocol::node::peers::PeerService>);
    let task = tokio::spawn(node::run(keypair, xrpc.clone(), rep, rx, pcfg, stopped));
    Ok((task, store))
}

/// Composes the node from the opened storage, the configuration and the applications' lexicons.
fn xrpc_state(
    cfg: &Config,
    storage: &ues_storage::Storage,
    app_lexicons: &[serde_json::Value],
) -> anyhow::Result<ues_protocol::node::Node> {
    use ues_repo::ipld::storage::{Blockstore, Kv};
    let blocks: Arc<dyn Blockstore> = match cfg.storage.hot_blocks_mib {
        0 => Arc::new(storage.rocks.blockstore()),
        mib => Arc::new(ues_repo::ipld::storage::CachedBlockstore::new(storage.rocks.blockstore(), mib << 20)),
    };
    let kv: Arc<dyn Kv> = Arc::new(storage.rocks.kv());
    let seal = identity::seal_key(&cfg.data_dir, &cfg.keys)?;
    let accounts = ues_repo::accounts::Accounts::open_with(blocks, kv.clone(), storage.sqlite.clone(), 0, seal)
        .map_err(|e| match e {
            ues_repo::accounts::AccountError::Seal(_) => anyhow::anyhow!(
                "{e}: the node key that seals account keys ([keys] in node.toml, or {}) is not the one this data directory's keys were sealed under",
                identity::NODE_KEY_FILE
            ),
            e => e.into(),
        })?;
    let mut lexicons = ues_repo::lexicon::Lexicons::new();
    for doc in app_lexicons {
        lexicons.add(doc)?;
    }
    for text in lexicons::EMBEDDED {
        lexicons.add(&serde_json::from_str(text)?)?;
    }
    if !cfg.xrpc.lexicons_dir.as_os_str().is_empty() && cfg.xrpc.lexicons_dir.is_dir() {
        let n = lexicons.load_dir(&cfg.xrpc.lexicons_dir)?;
        tracing::info!(n, dir = %cfg.xrpc.lexicons_dir.display(), "lexicons loaded");
    }
    let public_url = if cfg.xrpc.public_url.is_empty() {
        format!("http://{}", cfg.http.listen)
    } else {
        cfg.xrpc.public_url.clone()
    };
    let host = public_url.split("://").nth(1).unwrap_or("localhost").trim_end_matches('/').to_string();
    let xcfg = ues_protocol::node::NodeConfig {
        service_did: format!("did:web:{}", host.replace(':', "%3A")),
        public_url,
        user_domains: cfg.xrpc.user_domains.clone(),
        jwt_secret: identity::jwt_secret(&cfg.data_dir)?,
        plc_url: (!cfg.xrpc.plc_url.is_empty()).then(|| cfg.xrpc.plc_url.clone()),
        max_body_bytes: cfg.xrpc.max_body_mib << 20,
        max_blob_bytes: (cfg.xrpc.max_blob_mib as u64) << 20,
        blob_quota_bytes: cfg.xrpc.blob_quota_mib << 20,
        blob_grace: std::time::Duration::from_secs(cfg.xrpc.blob_grace_secs),
        handle_resolver: handle_resolver(&cfg.xrpc.handle_dns)?,
        appview: (!cfg.xrpc.appview_url.is_empty()).then(|| ues_protocol::node::AppView {
            url: cfg.xrpc.appview_url.clone(),
            did: if cfg.xrpc.appview_did.is_empty() {
                let host = cfg.xrpc.appview_url.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
                format!("did:web:{}", host.replace(':', "%3A"))
            } else {
                cfg.xrpc.appview_did.clone()
            },
        }),
        report_service: (!cfg.xrpc.report_service_url.is_empty()).then(|| ues_protocol::node::AppView {
            url: cfg.xrpc.report_service_url.clone(),
            did: if cfg.xrpc.report_service_did.is_empty() {
                let host =
                    cfg.xrpc.report_service_url.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
                format!("did:web:{}", host.replace(':', "%3A"))
            } else {
                cfg.xrpc.report_service_did.clone()
            },
        }),
        relays: cfg.xrpc.relays.clone(),
        firehose_backfill: std::time::Duration::from_secs(cfg.xrpc.firehose_backfill_hours * 3600),
        public_metrics: cfg.http.public_metrics,
        oauth_private_clients: cfg.oauth.private_client_addresses,
        admin_password: Some(if cfg.xrpc.admin_password.is_empty() {
            identity::admin_password(&cfg.data_dir)?
        } else {
            cfg.xrpc.admin_password.clone()
        }),
    };
    let node =
        ues_protocol::node::Node::new(accounts, lexicons, kv, xcfg).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    node.migrate(ues_protocol::xrpc::MIGRATIONS).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    node.invite_required.store(cfg.xrpc.invite_required, std::sync::atomic::Ordering::Relaxed);
    let mailer = mailer(cfg, &node)?;
    tracing::info!(to = %mailer.describe(), "mail");
    let _ = node.mailer.set(std::sync::Arc::new(mailer));
    Ok(match cfg.blob_objects()? {
        Some((objects, place)) => {
            node.with_blob_objects(objects, place).map_err(|e| anyhow::anyhow!("{}", e.message))?
        }
        None => node,
    })
}

/// The node's mailer from `[email]`: SMTP when configured, else the outbox file in the data
/// directory.
fn mailer(cfg: &config::Config, node: &ues_protocol::node::Node) -> anyhow::Result<ues_protocol::node::mail::Mailer> {
    let e = &cfg.email;
    let from = if e.from.is_empty() {
        let host = node.host_name();
        format!("noreply@{}", if host.is_empty() { "localhost" } else { host.as_str() })
    } else {
        e.from.clone()
    };
    ues_protocol::node::mail::Mailer::new(ues_protocol::node::mail::MailConfig {
        smtp_url: (!e.smtp_url.is_empty()).then(|| e.smtp_url.clone()),
        from,
        templates: (!e.templates_dir.as_os_str().is_empty()).then(|| e.templates_dir.clone()),
        outbox: cfg.data_dir.join("outbox").join("mail.jsonl"),
        token_ttl: std::time::Duration::from_secs(e.token_ttl_secs),
        timeout: std::time::Duration::from_secs(e.timeout_secs.max(1)),
    })
    .map_err(anyhow::Error::msg)
}

/// The handle resolver `[xrpc] handle_dns` asks for.
fn handle_resolver(dns: &str) -> anyhow::Result<ues_repo::identity::HandleResolver> {
    use ues_repo::identity::HandleResolver;
    Ok(match dns {
        "" => HandleResolver::default(),
        "off" => HandleResolver::default().with_dns(None),
        addr => HandleResolver::default().with_dns(Some(
            addr.parse()
                .map_err(|e| anyhow::anyhow!("[xrpc] handle_dns {addr:?}: {e} (want IP:PORT, \"\" or \"off\")"))?,
        )),
    })
}

/// Raises the open-file soft limit to the hard limit, as servers do: every connection is a
/// descriptor, and the usual soft limit (1024) is far below `[http] max_connections`.
fn raise_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    if current.current == current.maximum {
        return;
    }
    let raised = Rlimit { current: current.maximum, maximum: current.maximum };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(from = ?current.current, to = ?current.maximum, "open-file limit raised"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
    }
}
