//! Email through a real SMTP server on loopback (aiosmtpd, started by the test): every flow by
//! emailed token (confirming and changing the email, resetting the password, deleting the
//! account, signing a PLC operation, the operator's notice), with wrong, reused and expired
//! tokens refused; on a node with no SMTP server, the same mail in the outbox file, good for
//! finishing the flow; and guessing tokens or flooding mail requests from one address cut off
//! by the rate limits.

#[path = "support/plc.rs"]
mod plc;
#[path = "support/shared.rs"]
mod shared;
#[path = "support/node.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::xrpc_post as call;
use support::{Running, agent, create_account, free_port, start_with};

/// Seconds a token stays good on the test nodes: long enough for each step, short enough to
/// wait out.
const TTL_SECS: u64 = 4;

/// aiosmtpd on a loopback port, writing what it takes to a file; killed when dropped.
struct Smtp {
    child: Child,
    port: u16,
    file: PathBuf,
}

/// Whether an SMTP server answers on `port` with its `220` greeting (within 2 s).
fn greets(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"220")
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    fn start(dir: &Path) -> Option<Self> {
        let python = shared::python_sdk()?;
        let has = Command::new(&python).args(["-c", "import aiosmtpd"]).status().unwrap().success();
        if !has {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true but aiosmtpd is not installed in {}: scripts/setup.sh installs it", python.display());
            }
            eprintln!("\n!!!!!!!! SKIPPED: aiosmtpd is not installed (run scripts/setup.sh) !!!!!!!!\n");
            return None;
        }
        let file = dir.join("smtp.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/smtp_sink.py");
        // A free port can be taken by a parallel test's node before the sink binds it (the sink
        // then exits), and a bare TCP connect can reach that node: the sink counts as up once
        // it greets in SMTP, and one that exited is started again on another port.
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new(&python)
                .arg(&script)
                .arg(port.to_string())
                .arg(&file)
                .arg("600")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let up = loop {
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                assert!(Instant::now() < deadline, "the SMTP server never greeted");
                if greets(port) {
                    break true;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                return Some(Self { child, port, file });
            }
        }
        panic!("the SMTP server exited five times at start");
    }

    fn mails(&self) -> Vec<Value> {
        lines(&self.file)
    }

    /// Waits (at most 20 s) for the `n`th mail and returns it.
    fn nth(&self, n: usize) -> Value {
        wait_line(&self.file, n)
    }
}

fn lines(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn wait_line(file: &Path, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(m) = lines(file).get(n - 1) {
            return m.clone();
        }
        assert!(Instant::now() < deadline, "mail {n} never arrived in {}", file.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `XXXXX-XXXXX` token in a mail body.
fn token_in(body: &str) -> String {
    body.split_whitespace()
        .find(|w| {
            w.len() == 11
                && w.as_bytes()[5] == b'-'
                && w.bytes().enumerate().all(|(i, b)| i == 5 || b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        })
        .unwrap_or_else(|| panic!("no token in {body:?}"))
        .to_string()
}

fn get(node: &Running, method: &str, token: &str) -> (u16, Value) {
    let mut res = agent()
        .get(format!("{}/xrpc/{method}", node.base))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let status = res.status().as_u16();
    (status, res.body_mut().read_json().unwrap_or(Value::Null))
}

#[track_caller]
fn refused(r: (u16, Value), error: &str) {
    assert_eq!((r.0, r.1["error"].as_str().unwrap_or("")), (400, error), "{}", r.1);
}

fn login(node: &Running, id: &str, password: &str) -> (u16, Value) {
    call(node, "com.atproto.server.createSession", None, json!({"identifier": id, "password": password}))
}

fn config(smtp: Option<u16>) -> String {
    let email = match smtp {
        Some(port) => format!("smtp_url = \"smtp://127.0.0.1:{port}\"\nfrom = \"UES <noreply@pds.test>\"\n"),
        None => String::new(),
    };
    format!("[xrpc.rate_limits]\nenabled = false\n[email]\n{email}token_ttl_secs = {TTL_SECS}\ntimeout_secs = 10\n")
}

#[test]
fn every_emailed_token_flow_over_smtp() {
    let root = tempfile::tempdir().unwrap();
    let Some(smtp) = Smtp::start(root.path()) else { return };
    let node = start_with(&root.path().join("node"), &config(Some(smtp.port)));
    let mut sent = 0;

    // Confirming the email.
    let (alice, token) = create_account(&node.base, "alice.test");
    assert_eq!(get(&node, "com.atproto.server.getSession", &token).1["emailConfirmed"], false);
    assert_eq!(call(&node, "com.atproto.server.requestEmailConfirmation", Some(&token), json!({})).0, 200);
    sent += 1;
    let mail = smtp.nth(sent);
    assert_eq!(mail["to"], json!(["alice.test@example.com"]));
    assert_eq!(mail["from"], "noreply@pds.test");
    assert!(mail["body"].as_str().unwrap().contains("alice.test"), "{mail}");
    let code = token_in(mail["body"].as_str().unwrap());
    let confirm = |email: &str, t: &str| {
        call(&node, "com.atproto.server.confirmEmail", Some(&token), json!({"email": email, "token": t}))
    };
    refused(confirm("alice.test@example.com", "AAAAA-BBBBB"), "InvalidToken");
    refused(confirm("someone@example.com", &code), "InvalidEmail");
    assert_eq!(confirm("Alice.Test@example.com", &code.to_lowercase()).0, 200);
    refused(confirm("alice.test@example.com", &code), "InvalidToken");
    assert_eq!(get(&node, "com.atproto.server.getSession", &token).1["emailConfirmed"], true);

    // Changing a confirmed email takes a token sent to the old address.
    let (s, v) = call(&node, "com.atproto.server.requestEmailUpdate", Some(&token), json!({}));
    assert_eq!((s, &v["tokenRequired"]), (200, &json!(true)), "{v}");
    sent += 1;
    let code = token_in(smtp.nth(sent)["body"].as_str().unwrap());
    assert_eq!(smtp.nth(sent)["to"], json!(["alice.test@example.com"]));
    let update = |t: Option<&str>| {
        let mut b = json!({"email": "alice@new.example.com"});
        if let Some(t) = t {
            b["token"] = json!(t);
        }
        call(&node, "com.atproto.server.updateEmail", Some(&token), b)
    };
    refused(update(None), "TokenRequired");
    refused(update(Some("AAAAA-BBBBB")), "InvalidToken");
    assert_eq!(update(Some(&code)).0, 200);
    let session = get(&node, "com.atproto.server.getSession", &token).1;
    assert_eq!((&session["email"], &session["emailConfirmed"]), (&json!("alice@new.example.com"), &json!(false)));
    // Unconfirmed now: the next change needs no token, as in the reference.
    let (_, v) = call(&node, "com.atproto.server.requestEmailUpdate", Some(&token), json!({}));
    assert_eq!(v["tokenRequired"], false);
    refused(
        call(&node, "com.atproto.server.updateEmail", Some(&token), json!({"email": "not an address"})),
        "InvalidRequest",
    );

    // A password reset: any address gets the same answer; only an account's gets mail.
    let (bob, bob_token) = create_account(&node.base, "bob.test");
    let reset_request =
        |email: &str| call(&node, "com.atproto.server.requestPasswordReset", None, json!({"email": email}));
    assert_eq!(reset_request("nobody@example.com").0, 200);
    assert_eq!(reset_request("BOB.test@example.com").0, 200);
    sent += 1;
    let mail = smtp.nth(sent);
    assert_eq!(mail["to"], json!(["bob.test@example.com"]), "the unknown address got nothing");
    let code = token_in(mail["body"].as_str().unwrap());
    let reset =
        |t: &str, p: &str| call(&node, "com.atproto.server.resetPassword", None, json!({"token": t, "password": p}));
    refused(reset("AAAAA-BBBBB", "a new long password"), "InvalidToken");
    refused(reset(&code, "short"), "InvalidPassword");
    assert_eq!(reset(&code, "a new long password").0, 200);
    refused(reset(&code, "another long password"), "InvalidToken");
    assert_eq!(login(&node, "bob.test", "a long password").0, 401, "the old password is gone");
    assert_eq!(login(&node, "bob.test", "a new long password").0, 200);
    assert_ne!(get(&node, "com.atproto.server.getSession", &bob_token).0, 200, "sessions before the reset ended");

    // An expired token is refused, and a fresh one still works.
    assert_eq!(reset_request("bob.test@example.com").0, 200);
    sent += 1;
    let stale = token_in(smtp.nth(sent)["body"].as_str().unwrap());
    std::thread::sleep(Duration::from_secs(TTL_SECS + 1));
    refused(reset(&stale, "a third long password"), "ExpiredToken");

    // Deleting the account takes its password and a token; a token of one account deletes no
    // other.
    let (carol, carol_token) = create_account(&node.base, "carol.test");
    assert_eq!(call(&node, "com.atproto.server.requestAccountDelete", Some(&carol_token), json!({})).0, 200);
    sent += 1;
    let code = token_in(smtp.nth(sent)["body"].as_str().unwrap());
    let delete = |did: &str, p: &str, t: &str| {
        call(&node, "com.atproto.server.deleteAccount", None, json!({"did": did, "password": p, "token": t}))
    };
    assert_eq!(delete(&carol, "wrong password", &code).0, 401);
    refused(delete(&carol, "a long password", "AAAAA-BBBBB"), "InvalidToken");
    refused(delete(&alice, "a long password", &code), "InvalidToken");
    refused(
        call(
            &node,
            "com.atproto.server.deleteAccount",
            None,
            json!({"did": carol, "password": "x", "token": code, "extra": 1}),
        ),
        "InvalidRequest",
    );
    assert_eq!(delete(&carol, "a long password", &code).0, 200);
    assert_eq!(login(&node, "carol.test", "a long password").0, 401);
    let (s, v) = {
        let mut r =
            agent().get(format!("{}/xrpc/com.atproto.repo.describeRepo?repo={carol}", node.base)).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_json::<Value>().unwrap_or(Value::Null))
    };
    assert_ne!(s, 200, "the deleted repository is gone: {v}");
    assert_eq!(login(&node, "alice.test", "a long password").0, 200, "the others stay");

    // The operator's notice.
    let (s, _) = call(
        &node,
        "com.atproto.admin.sendEmail",
        None,
        json!({"recipientDid": bob, "content": "Hello", "senderDid": "did:web:pds.test"}),
    );
    assert_eq!(s, 401, "only the operator");
    let mut res = agent()
        .post(format!("{}/xrpc/com.atproto.admin.sendEmail", node.base))
        .header("Authorization", &node.operator_auth())
        .send_json(json!({"recipientDid": bob, "content": "Maintenance at noon", "subject": "Notice\r\nBcc: x@evil.test", "senderDid": "did:web:pds.test"}))
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.body_mut().read_json::<Value>().unwrap()["sent"], true);
    sent += 1;
    let mail = smtp.nth(sent);
    assert_eq!(mail["to"], json!(["bob.test@example.com"]), "no header smuggled in through the subject");
    assert_eq!(mail["subject"], "Notice  Bcc: x@evil.test");
    assert!(mail["body"].as_str().unwrap().contains("Maintenance at noon"));
    assert_eq!(smtp.mails().len(), sent, "no mail beyond these");
}

#[test]
fn without_smtp_the_outbox_holds_each_mail_and_its_token() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), &config(None));
    create_account(&node.base, "dave.test");
    let (s, _) =
        call(&node, "com.atproto.server.requestPasswordReset", None, json!({"email": "dave.test@example.com"}));
    assert_eq!(s, 200);
    let outbox = node.dir.join("outbox/mail.jsonl");
    let line = wait_line(&outbox, 1);
    assert_eq!((&line["to"], &line["template"]), (&json!("dave.test@example.com"), &json!("reset_password")));
    let token = line["token"].as_str().unwrap().to_string();
    assert!(line["body"].as_str().unwrap().contains(&token));
    let (s, v) = call(
        &node,
        "com.atproto.server.resetPassword",
        None,
        json!({"token": token, "password": "a new long password"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(login(&node, "dave.test", "a new long password").0, 200);
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap();
    assert!(log.contains("mail kept in the outbox"), "the mail is logged");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&outbox).unwrap().permissions().mode() & 0o077, 0);
}

#[test]
fn a_mail_server_that_is_down_fails_the_request_and_the_node_answers() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), &config(Some(free_port())));
    let (_, token) = create_account(&node.base, "erin.test");
    let (s, v) = call(&node, "com.atproto.server.requestEmailConfirmation", Some(&token), json!({}));
    assert_eq!((s, v["error"].as_str()), (502, Some("MailNotSent")), "{v}");
    assert_eq!(get(&node, "com.atproto.server.getSession", &token).0, 200, "the node still answers");
}

#[test]
fn guessing_tokens_and_flooding_mail_requests_are_cut_off_and_others_are_served() {
    let root = tempfile::tempdir().unwrap();
    // The default rate limits, with the outbox instead of a mail server.
    let node = start_with(&root.path().join("node"), &format!("[email]\ntoken_ttl_secs = {TTL_SECS}\n"));
    create_account(&node.base, "frank.test");
    let outbox = node.dir.join("outbox/mail.jsonl");

    // 60 guessed reset tokens from one address: refused as invalid, then 429 with Retry-After
    // before the 51st; nothing changed.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..60 {
        let mut res = agent()
            .post(format!("{}/xrpc/com.atproto.server.resetPassword", node.base))
            .send_json(json!({"token": format!("AAAAA-{:05}", i), "password": "an attacker's password"}))
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            let v: Value = res.body_mut().read_json().unwrap();
            assert_eq!(v["error"], "RateLimitExceeded");
        }
    }
    assert!(statuses[..50].iter().all(|s| *s == 400), "{statuses:?}");
    assert!(statuses[50..].iter().all(|s| *s == 429), "{statuses:?}");
    assert!(retry_after.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
    assert_eq!(login(&node, "frank.test", "a long password").0, 200, "the password is untouched");

    // 20 reset requests for the account from one address: 15 taken, the rest 429; at most 5
    // mails reach its address within the hour.
    let mut taken = 0;
    for _ in 0..20 {
        let (s, _) =
            call(&node, "com.atproto.server.requestPasswordReset", None, json!({"email": "frank.test@example.com"}));
        assert!(s == 200 || s == 429, "{s}");
        if s == 200 {
            taken += 1;
        }
    }
    assert!(taken <= 15, "{taken} requests taken");
    let mails = lines(&outbox);
    assert!(!mails.is_empty() && mails.len() <= 5, "{} mails", mails.len());
    // The node still answers everyone else.
    let res = agent().get(format!("{}/xrpc/com.atproto.server.describeServer", node.base)).call().unwrap();
    assert_eq!(res.status(), 200);
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap();
    assert!(log.contains("rate limit reached: emailed tokens tried per address"), "logged");
}

#[test]
fn plc_operation_tokens_over_smtp() {
    let Some(js) = shared::node_tests() else { return };
    let root = tempfile::tempdir().unwrap();
    let Some(smtp) = Smtp::start(root.path()) else { return };
    let directory = plc::start_directory(&js);
    let config = format!("[xrpc]\nplc_url = \"{}\"\n{}", directory.url, config(Some(smtp.port)));
    let node = start_with(&root.path().join("node"), &config);
    let (_, token) = create_account(&node.base, "gina.test");
    let sign = |t: &str| {
        call(
            &node,
            "com.atproto.identity.signPlcOperation",
            Some(&token),
            json!({"token": t, "alsoKnownAs": ["at://gina.test"]}),
        )
    };
    assert_eq!(call(&node, "com.atproto.identity.requestPlcOperationSignature", Some(&token), json!({})).0, 200);
    let mail = smtp.nth(1);
    assert_eq!(mail["to"], json!(["gina.test@example.com"]));
    let code = token_in(mail["body"].as_str().unwrap());
    refused(sign("AAAAA-BBBBB"), "InvalidToken");
    let (s, v) = sign(&code);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["operation"]["type"], "plc_operation");
    assert!(v["operation"]["sig"].is_string() && v["operation"]["prev"].is_string(), "{v}");
    refused(sign(&code), "InvalidToken");
    // Expired.
    assert_eq!(call(&node, "com.atproto.identity.requestPlcOperationSignature", Some(&token), json!({})).0, 200);
    let stale = token_in(smtp.nth(2)["body"].as_str().unwrap());
    std::thread::sleep(Duration::from_secs(TTL_SECS + 1));
    refused(sign(&stale), "ExpiredToken");
}
