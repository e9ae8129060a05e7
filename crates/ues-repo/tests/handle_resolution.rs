//! Handle resolution against local servers: DNS TXT (`_atproto.<handle>`) and HTTP
//! (`/.well-known/atproto-did`).

#[path = "../../../tests/support/dns.rs"]
mod dns;

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
    BASE.get_or_init(serve);
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

/// The zone of the DNS tests: `dns.test` names a DID (next to an unrelated TXT record),
/// `split.test` names it in two strings of one record, `conflict.test` names two DIDs,
/// `junk.test` holds a non-DID; other names have no record.
fn zone(name: &str) -> Vec<Vec<&'static str>> {
    match name {
        "_atproto.dns.test." => vec![vec!["did=did:plc:ewvi7nxzyoun6zhxrhs64oiz"], vec!["v=spf1 -all"]],
        "_atproto.split.test." => vec![vec!["did=did:plc:ewvi7nx", "zyoun6zhxrhs64oiz"]],
        "_atproto.conflict.test." => {
            vec![vec!["did=did:plc:ewvi7nxzyoun6zhxrhs64oiz"], vec!["did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"]]
        }
        "_atproto.junk.test." => vec![vec!["did=not a did"]],
        _ => vec![],
    }
}

#[test]
fn dns_txt_first_then_https() {
    let base = BASE.get_or_init(serve);
    assert!(!base.is_empty());
    let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
    let resolver = HandleResolver::with_base(base_for).with_dns(Some(dns::txt_server(zone)));
    let h = |s: &str| Handle::new(s).unwrap();
    assert_eq!(resolver.resolve(&h("dns.test")).unwrap(), did, "TXT record, other TXT records ignored");
    assert_eq!(resolver.resolve(&h("split.test")).unwrap(), did, "one record in two strings");
    assert_eq!(resolver.resolve(&h("alice.test")).unwrap(), did, "no TXT record: HTTPS answers");
    for bad in ["conflict.test", "junk.test", "nobody.test"] {
        let err = resolver.resolve(&h(bad)).unwrap_err();
        assert!(matches!(err, HandleError::Unresolved { .. }), "{bad}: {err}");
    }
    let err = resolver.resolve(&h("conflict.test")).unwrap_err().to_string();
    assert!(err.contains("2 different DIDs"), "{err}");
    // A DNS server that is not there: the refusal is immediate and HTTPS still answers.
    let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let resolver = HandleResolver::with_base(base_for).with_dns(Some(gone));
    assert_eq!(resolver.resolve(&h("alice.test")).unwrap(), did);
}
