//! HTTPS from certificate files: HTTP/2 and HTTP/1.1 by ALPN (curl as the client, trusting the
//! certificate), plain HTTP on `http_listen` redirected to HTTPS, a renewed certificate served
//! without a restart, a broken one refused while the previous one stays, and a client that
//! opens a connection and never says hello is cut off while the node keeps answering others.

#[path = "support/node.rs"]
mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A self-signed certificate for `localhost` (an ECDSA P-256 key), written as `cert.pem` and
/// `key.pem` into `dir` (replacing them atomically); returns its serial number.
fn certificate(dir: &Path, cn: &str) -> String {
    let tmp = dir.join("new");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}"), "-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(tmp.join("key.pem"))
        .arg("-out")
        .arg(tmp.join("cert.pem"))
        .output()
        .expect("openssl runs (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(tmp.join("key.pem"), dir.join("key.pem")).unwrap();
    std::fs::rename(tmp.join("cert.pem"), dir.join("cert.pem")).unwrap();
    serial_of_file(&dir.join("cert.pem"))
}

fn serial_of_file(cert: &Path) -> String {
    let out = Command::new("openssl").args(["x509", "-noout", "-serial", "-in"]).arg(cert).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The serial number of the certificate the node presents.
fn served_serial(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `curl` against the node: (exit success, `%{http_version} %{http_code} %{redirect_url}`).
fn curl(args: &[&str], port: u16, cert: &Path) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10", "-w", "%{http_version} %{http_code} %{redirect_url}"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1"), "--cacert"])
        .arg(cert)
        .args(args)
        .output()
        .expect("curl runs (scripts/setup.sh installs it)");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn https_serves_http2_redirects_plain_http_and_reloads_its_certificate() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("node");
    let certs = root.path().join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&certs).unwrap();
    let first = certificate(&certs, "first");
    let (port, plain) = (support::free_port(), support::free_port());
    std::fs::write(
        dir.join("node.toml"),
        format!(
            "[http]\ntls_cert = \"{}\"\ntls_key = \"{}\"\nhttp_listen = \"127.0.0.1:{plain}\"\nheader_timeout_secs = 2\n",
            certs.join("cert.pem").display(),
            certs.join("key.pem").display()
        ),
    )
    .unwrap();
    let mut node = support::spawn(&dir, port, "/ip4/127.0.0.1/tcp/0", &dir.join("node.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = format!("https://localhost:{port}/xrpc/_health");
    let ca = certs.join("cert.pem");
    while !curl(&[&health], port, &ca).0 {
        assert!(Instant::now() < deadline, "the node never answered over HTTPS");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ca_first = root.path().join("first.pem");
    std::fs::copy(&ca, &ca_first).unwrap();

    assert_eq!(curl(&["--http2", &health], port, &ca_first), (true, "2 200".to_string()), "HTTP/2 by ALPN");
    assert_eq!(curl(&["--http1.1", &health], port, &ca_first), (true, "1.1 200".to_string()), "HTTP/1.1 too");
    let (ok, _) = curl(&[&format!("http://localhost:{port}/xrpc/_health")], port, &ca_first);
    assert!(!ok, "plain HTTP on the TLS port gets no answer");
    let (_, redirect) = curl(&[&format!("http://localhost:{plain}/xrpc/_health?x=1")], plain, &ca_first);
    assert_eq!(redirect, format!("1.1 308 https://localhost:{port}/xrpc/_health?x=1"));
    assert_eq!(served_serial(port), first);
    // The plain listener refuses a Host that is not a host name, answers an unknown ACME
    // token with 404, and keeps answering.
    for (request, status) in [
        ("GET / HTTP/1.1\r\nHost: evil.example/<script>\r\nConnection: close\r\n\r\n", "400"),
        ("GET /.well-known/acme-challenge/nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", "404"),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", "400"),
    ] {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", plain)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{request:?}: {answer}");
    }
    assert_eq!(curl(&["--http2", &health], port, &ca_first), (true, "2 200".to_string()));

    // The operator's commands reach the node serving HTTPS through its loopback admin
    // address (in the data directory), which answers the admin methods and nothing else.
    let out = Command::new(env!("CARGO_BIN_EXE_ues")).args(["status", "--data-dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "ues status with TLS on: {}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let served = status["certificates"].as_array().unwrap();
    assert_eq!(served.len(), 1, "{status}");
    assert_eq!(served[0]["name"], "localhost");
    assert!((0..=2).contains(&served[0]["daysLeft"].as_i64().unwrap()), "a 2-day certificate: {status}");
    assert!(served[0]["expires"].as_str().unwrap().ends_with('Z'));
    let admin = std::fs::read_to_string(dir.join("admin.addr")).unwrap();
    assert!(admin.starts_with("127.0.0.1:"), "{admin}");
    for (path, status) in [("/xrpc/com.atproto.server.describeServer", 404), ("/xrpc/dev.ues.admin.getStatus", 401)] {
        let res = support::agent().get(format!("http://{}{path}", admin.trim())).call().unwrap();
        assert_eq!(res.status().as_u16(), status, "{path} on the admin address");
    }

    // A renewed certificate is served without a restart.
    let second = certificate(&certs, "second");
    assert_ne!(second, first);
    let ca_second = root.path().join("second.pem");
    std::fs::copy(&ca, &ca_second).unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let _ = served_serial(port); // the handshake that notices the change
    assert_eq!(served_serial(port), second, "the renewed certificate is served");
    // A broken one is refused and the renewed one stays.
    std::fs::write(certs.join("cert.pem"), b"-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let _ = served_serial(port);
    assert_eq!(served_serial(port), second, "a certificate that does not load is not served");
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap();
    assert!(log.contains("TLS certificate reloaded") && log.contains("does not load"), "the log says both");

    // A client that connects and never says hello is cut off after the header timeout (2 s),
    // and the node answers others meanwhile.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    assert_eq!(curl(&["--http2", &health], port, &ca_second).1, "2 200");
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "the silent connection is closed, not answered");
    assert!(waited < Duration::from_secs(12), "closed after the handshake timeout, not left open ({waited:?})");

    let _ = node.kill();
    let _ = node.wait();
}
