//! Handle resolution over HTTP against a local server (`/.well-known/atproto-did`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::OnceLock;

use ues_repo::identity::{HandleError, HandleResolver};
use ues_repo::syntax::{Did, Handle};

static BASE: OnceLock<String> = OnceLock::new();

/// Serves `/h/<handle>/.well-known/atproto-did`: alice.test -> a DID, bob.test -> not a DID,
/// big.test -> an endless body, anything else -> 404.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let handle =
                path.strip_prefix("/h/").and_then(|p| p.strip_suffix("/.well-known/atproto-did")).unwrap_or("");
            let big = "x".repeat(100_000);
            let (status, body) = match handle {
                "alice.test" => ("200 OK", "did:plc:ewvi7nxzyoun6zhxrhs64oiz\n"),
                "bob.test" => ("200 OK", "<html>not a did</html>"),
                "big.test" => ("200 OK", big.as_str()),
                _ => ("404 Not Found", "no"),
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    base
}

fn base_for(handle: &str) -> String {
    format!("{}/h/{handle}", BASE.get().unwrap())
}

#[test]
fn resolves_verifies_and_refuses() {
    BASE.set(serve()).unwrap();
    let resolver = HandleResolver::with_base(base_for);
    let alice = Handle::new("alice.test").unwrap();
    let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
    assert_eq!(resolver.resolve(&alice).unwrap(), did);
    resolver.verify(&alice, &did).unwrap();
    let other = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
    assert!(matches!(resolver.verify(&alice, &other), Err(HandleError::Mismatch { .. })));
    for h in ["bob.test", "big.test", "nobody.test"] {
        assert!(matches!(resolver.resolve(&Handle::new(h).unwrap()), Err(HandleError::Unresolved { .. })), "{h}");
    }
}
