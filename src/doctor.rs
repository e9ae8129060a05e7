//! `ues doctor`: checks a node's configuration and surroundings before it is exposed, and says
//! what to fix. Every check is bounded (5 s per network call) and reads only; none changes
//! anything.

use std::net::{TcpListener, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Config;

/// Free space under which the data directory's file system is reported (1 GiB).
const MIN_FREE_BYTES: u64 = 1 << 30;

/// One finding.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    /// What to do when it is not ok.
    fix: String,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check { name, ok: true, detail: detail.into(), fix: String::new() }
    }

    fn fix(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check { name, ok: false, detail: detail.into(), fix: fix.into() }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// Runs every check; returns the report and whether all passed.
pub(crate) fn run(cfg: &Config) -> (Value, bool) {
    let mut checks = Vec::new();
    data_dir(cfg, &mut checks);
    disk(cfg, &mut checks);
    let running = local_node(cfg, &mut checks);
    public_url(cfg, running.as_deref(), &mut checks);
    handles(cfg, &mut checks);
    plc(cfg, &mut checks);
    objects(cfg, &mut checks);
    let healthy = checks.iter().all(|c| c.ok);
    let report = json!({
        "ok": healthy,
        "checks": checks.iter().map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail, "fix": (!c.ok).then_some(&c.fix)})).collect::<Vec<_>>(),
    });
    (report, healthy)
}

/// The report as a person reads it: one line per check, what to fix under each failing one.
pub(crate) fn print(report: &Value) {
    for c in report["checks"].as_array().into_iter().flatten() {
        let mark = if c["ok"] == true { "ok " } else { "FIX" };
        println!("{mark} {:<12} {}", c["check"].as_str().unwrap_or(""), c["detail"].as_str().unwrap_or(""));
        if let Some(fix) = c["fix"].as_str() {
            println!("    -> {fix}");
        }
    }
}

fn data_dir(cfg: &Config, out: &mut Vec<Check>) {
    let dir = &cfg.data_dir;
    let Ok(meta) = std::fs::metadata(dir) else {
        out.push(Check::fix(
            "data dir",
            format!("{} does not exist", dir.display()),
            format!("ues init --data-dir {}", dir.display()),
        ));
        return;
    };
    let me = rustix::process::getuid().as_raw();
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 || meta.uid() != me {
        out.push(Check::fix(
            "data dir",
            format!("{} has mode {mode:o}, owner uid {}", dir.display(), meta.uid()),
            format!("chown the directory to the node's user and chmod 700 {}", dir.display()),
        ));
    } else {
        out.push(Check::ok("data dir", format!("{} (mode 700)", dir.display())));
    }
    let mut open = Vec::new();
    for name in [crate::identity::KEY_FILE, crate::identity::NODE_KEY_FILE, "jwt.secret", "admin.password", "node.toml"]
    {
        let path = dir.join(name);
        if let Ok(m) = std::fs::metadata(&path)
            && (m.permissions().mode() & 0o077 != 0 || m.uid() != me)
        {
            open.push(format!("{} (mode {:o})", path.display(), m.permissions().mode() & 0o777));
        }
    }
    if open.is_empty() {
        out.push(Check::ok("key files", "keys and secrets readable by their owner only"));
    } else {
        out.push(Check::fix(
            "key files",
            format!("readable by others: {}", open.join(", ")),
            "chmod 600 each of them (anyone who reads them can sign as the node's accounts)",
        ));
    }
}

fn disk(cfg: &Config, out: &mut Vec<Check>) {
    let path = if cfg.data_dir.exists() { cfg.data_dir.as_path() } else { Path::new(".") };
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())) else { return };
    match rustix::fs::statvfs(c.as_c_str()) {
        Ok(fs) => {
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            let gib = free as f64 / f64::from(1u32 << 30);
            if free < MIN_FREE_BYTES {
                out.push(Check::fix(
                    "disk",
                    format!("{gib:.2} GiB free"),
                    "free space or move the data directory: the node stops taking writes on a full disk",
                ));
            } else {
                out.push(Check::ok("disk", format!("{gib:.1} GiB free")));
            }
        }
        Err(e) => out.push(Check::fix(
            "disk",
            format!("cannot read free space: {e}"),
            "check the data directory's file system",
        )),
    }
}

/// Whether the node answers on `[http] listen` (its version when it does); else whether the
/// address can be bound.
fn local_node(cfg: &Config, out: &mut Vec<Check>) -> Option<String> {
    let addr = cfg.http.listen;
    let url = format!("http://{addr}/xrpc/_health");
    if let Ok(mut res) = agent().get(&url).call()
        && res.status() == 200
        && let Ok(v) = res.body_mut().read_json::<Value>()
        && let Some(version) = v["version"].as_str()
    {
        out.push(Check::ok("listen", format!("a node (version {version}) answers on {addr}")));
        return Some(version.to_string());
    }
    match TcpListener::bind(addr) {
        Ok(_) => out.push(Check::ok("listen", format!("{addr} is free for the node (not running now)"))),
        Err(e) => out.push(Check::fix(
            "listen",
            format!("{addr} cannot be bound: {e}"),
            "stop what holds the port, or set [http] listen to another address",
        )),
    }
    None
}

fn public_url(cfg: &Config, running: Option<&str>, out: &mut Vec<Check>) {
    let url = cfg.xrpc.public_url.trim_end_matches('/');
    if url.is_empty() {
        out.push(Check::fix(
            "public url",
            "[xrpc] public_url is not set: the node calls itself http://<listen address>",
            "set [xrpc] public_url to the https:// address clients and relays reach the node at",
        ));
        return;
    }
    if !url.starts_with("https://") {
        out.push(Check::fix(
            "tls",
            format!("{url} is not HTTPS"),
            "serve the node over HTTPS (a TLS proxy in front, or the node's own TLS): AT Protocol clients and relays expect it",
        ));
    }
    let Some(version) = running else {
        out.push(Check::fix(
            "public url",
            format!("not checked: the node is not running on {}", cfg.http.listen),
            "start the node (ues run) and run ues doctor again",
        ));
        return;
    };
    let host = url.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
    let want_did = format!("did:web:{}", host.replace(':', "%3A"));
    let res = agent().get(format!("{url}/xrpc/com.atproto.server.describeServer")).call();
    match res {
        Ok(mut r) if r.status() == 200 => {
            let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
            if v["did"] == want_did.as_str() {
                out.push(Check::ok("public url", format!("{url} reaches this node ({want_did}, version {version})")));
            } else {
                out.push(Check::fix(
                    "public url",
                    format!("{url} answers as {} where this node is {want_did}", v["did"]),
                    "point the public URL (DNS, proxy) at this node",
                ));
            }
        }
        Ok(r) => out.push(Check::fix(
            "public url",
            format!("{url} answered HTTP {}", r.status()),
            "point the public URL (DNS, proxy) at this node",
        )),
        Err(e) => out.push(Check::fix(
            "public url",
            format!("{url} unreachable: {e}"),
            "check DNS for the host, the firewall, and the TLS certificate",
        )),
    }
}

fn handles(cfg: &Config, out: &mut Vec<Check>) {
    for domain in &cfg.xrpc.user_domains {
        let domain = domain.trim_start_matches('.');
        if domain == "test" {
            out.push(Check::ok("handles", "*.test handles are local to this node (development)"));
            continue;
        }
        let probe = format!("ues-doctor-check.{domain}:443");
        match probe.to_socket_addrs().map(|mut a| a.next().is_some()) {
            Ok(true) => out.push(Check::ok("handles", format!("*.{domain} resolves (wildcard DNS)"))),
            _ => out.push(Check::fix(
                "handles",
                format!("*.{domain} does not resolve"),
                format!("add a wildcard DNS record *.{domain} pointing at this node, so handles under it resolve"),
            )),
        }
    }
}

/// The object store of `[storage.s3]`, when one is named: it answers a listing, and takes and
/// gives up a probe object (so uploads will be accepted).
fn objects(cfg: &Config, out: &mut Vec<Check>) {
    use ues_storage::Objects;
    let s3 = &cfg.storage.s3;
    if s3.bucket.is_empty() {
        out.push(Check::ok("objects", "no object store: blobs are kept in the data directory"));
        return;
    }
    let fix =
        "check [storage.s3] endpoint, bucket, region and credentials, and that the key may list, write and delete";
    let store = match s3.client_config().and_then(|mut c| {
        c.timeout = Duration::from_secs(5);
        Ok(ues_storage::S3Objects::connect(&c)?)
    }) {
        Ok(s) => s,
        Err(e) => return out.push(Check::fix("objects", format!("{e:#}"), fix)),
    };
    const PROBE: &str = "staging/doctor-probe";
    let answer = store
        .list("blobs/", 1)
        .and_then(|_| store.put(PROBE, b"ues doctor".to_vec()))
        .and_then(|()| store.delete(PROBE));
    match answer {
        Ok(()) => out.push(Check::ok("objects", format!("{} lists, takes and deletes objects", store.describe()))),
        Err(e) => out.push(Check::fix("objects", format!("{}: {e}", store.describe()), fix)),
    }
}

fn plc(cfg: &Config, out: &mut Vec<Check>) {
    let url = cfg.xrpc.plc_url.trim_end_matches('/');
    if url.is_empty() {
        out.push(Check::ok("plc", "no PLC directory configured: DIDs stay local to this node"));
        return;
    }
    match agent().get(format!("{url}/_health")).call() {
        Ok(r) if r.status().is_success() => out.push(Check::ok("plc", format!("{url} answers"))),
        Ok(r) => out.push(Check::fix("plc", format!("{url} answered HTTP {}", r.status()), "check [xrpc] plc_url")),
        Err(e) => {
            out.push(Check::fix("plc", format!("{url} unreachable: {e}"), "check [xrpc] plc_url and the network"))
        }
    }
}
