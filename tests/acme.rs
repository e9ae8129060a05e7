//! Certificates from a real ACME server: Let's Encrypt's test server Pebble (Debian package
//! `pebble`, with `pebble-challtestsrv` answering its DNS queries with 127.0.0.1) issues the
//! node's certificate over HTTP-01 at start; an HTTPS client trusting Pebble's root reaches
//! `/xrpc/_health` over HTTP/2; the handle of an account hosted here gets a certificate when a
//! client first asks for it; a name that belongs to no account gets none.

#[path = "support/node.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A test CA and, signed by it, a certificate for Pebble's own HTTPS (localhost, 127.0.0.1).
fn pebble_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=ues test ca", "-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
        dir,
    );
    openssl(
        &[&["req"][..], &ec, &["-subj", "/CN=localhost", "-keyout", "pebble.key", "-out", "pebble.csr"]].concat(),
        dir,
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "pebble.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "pebble.pem",
        ],
        dir,
    );
}

/// `curl` to the node by name: (success, `%{http_version} %{http_code}`).
fn curl(name: &str, port: u16, root: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "90", "-w", "%{http_version} %{http_code}", "--http2"])
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1"), "--cacert"])
        .arg(root)
        .args(extra)
        .arg(format!("https://{name}:{port}/xrpc/_health"))
        .output()
        .expect("curl runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn pebble_issues_the_nodes_certificates_over_http01() {
    if Command::new("pebble").arg("-h").stderr(Stdio::null()).output().is_err() {
        assert!(std::env::var("CI").is_err(), "CI must install pebble (scripts/setup.sh)");
        eprintln!("SKIPPED: pebble is not installed (scripts/setup.sh installs it)");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let certs = root.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    pebble_certificates(&certs);
    let (acme_port, mgmt_port, dns_port) = (support::free_port(), support::free_port(), support::free_port());
    let (https_port, http_port) = (support::free_port(), support::free_port());
    let _dns = Killed(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", &format!("127.0.0.1:{dns_port}")])
            .args([
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{}", support::free_port()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
        "certificate": certs.join("pebble.pem"), "privateKey": certs.join("pebble.key"),
        "httpPort": http_port, "tlsPort": support::free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": false}});
    std::fs::write(certs.join("pebble.json"), config.to_string()).unwrap();
    let pebble_log = std::fs::File::create(root.path().join("pebble.log")).unwrap();
    let _pebble = Killed(
        Command::new("pebble")
            .arg("-config")
            .arg(certs.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(pebble_log.try_clone().unwrap())
            .stderr(pebble_log)
            .spawn()
            .unwrap(),
    );

    // Pebble answers before the node starts (it asks for its certificate at once).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--cacert"])
            .arg(certs.join("ca.pem"))
            .arg(format!("https://127.0.0.1:{acme_port}/dir"))
            .status()
            .is_ok_and(|s| s.success());
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "Pebble never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = root.path().join("node");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("node.toml"),
        format!(
            "[http]\nhttp_listen = \"127.0.0.1:{http_port}\"\nacme_directory = \"https://127.0.0.1:{acme_port}/dir\"\n\
             acme_ca_file = \"{}\"\nacme_domains = [\"node.ues.test\"]\n[xrpc]\nuser_domains = [\".ues.test\"]\n\
             [xrpc.rate_limits]\nenabled = false\n",
            certs.join("ca.pem").display()
        ),
    )
    .unwrap();
    let mut node = support::spawn(&dir, https_port, "/ip4/127.0.0.1/tcp/0", &dir.join("node.log"));
    let log = || std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !log().contains("certificate issued") {
        if Instant::now() > deadline {
            let _ = node.kill();
            panic!(
                "no certificate within 90 s:\n{}\n{}",
                log(),
                std::fs::read_to_string(root.path().join("pebble.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(dir.join("tls/node.ues.test.crt").exists());

    // Pebble's root (made at its start) is what a client trusts.
    let pebble_root = root.path().join("pebble-root.pem");
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(certs.join("ca.pem"))
        .arg("-o")
        .arg(&pebble_root)
        .arg(format!("https://127.0.0.1:{mgmt_port}/roots/0"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        curl("node.ues.test", https_port, &pebble_root, &[]),
        (true, "2 200".to_string()),
        "HTTP/2 with Pebble's certificate"
    );

    // A handle of an account hosted here gets its certificate when a client first asks.
    let created = Command::new("curl")
        .args(["-s", "--resolve", &format!("node.ues.test:{https_port}:127.0.0.1"), "--cacert"])
        .arg(&pebble_root)
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"handle":"alice.ues.test","password":"a long password","email":"alice@example.com"}"#,
        ])
        .arg(format!("https://node.ues.test:{https_port}/xrpc/com.atproto.server.createAccount"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&created.stdout).contains("did:plc:"),
        "{}",
        String::from_utf8_lossy(&created.stdout)
    );
    assert_eq!(
        curl("alice.ues.test", https_port, &pebble_root, &[]),
        (true, "2 200".to_string()),
        "on-demand certificate"
    );
    assert!(dir.join("tls/alice.ues.test.crt").exists());

    // A name that belongs to no account gets none, however many a client tries; no order is
    // placed for any of them, and the node keeps answering.
    let orders_before =
        std::fs::read_to_string(root.path().join("pebble.log")).unwrap_or_default().matches("POST /order-plz").count();
    assert!(orders_before >= 2, "Pebble's log counts the two orders placed ({orders_before})");
    for i in 0..20 {
        let (ok, _) = curl(&format!("nobody{i}.ues.test"), https_port, &pebble_root, &[]);
        assert!(!ok, "no certificate, no handshake");
    }
    let names: Vec<String> = std::fs::read_dir(dir.join("tls"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with("nobody")), "{names:?}");
    let orders_after =
        std::fs::read_to_string(root.path().join("pebble.log")).unwrap_or_default().matches("POST /order-plz").count();
    assert_eq!(orders_after, orders_before, "no order for names that are not this node's");
    assert_eq!(curl("node.ues.test", https_port, &pebble_root, &[]), (true, "2 200".to_string()));
    let _ = node.kill();
    let _ = node.wait();
}
