//! Tests against other implementations: npm `canonicalize` (JCS), Digital Bazaar's VC verifier
//! (`tests/js/vc_verify.mjs`), and the W3C vc-di-eddsa test vectors.
//!
//! Each needs something outside the crate (Node and the repository's `tests/js` packages, or a
//! directory of vectors) and says `SKIPPED:` loudly without it; under `CI=true` a missing Node
//! setup fails instead. `UES_REPO` points at the repository root when the crate is built
//! elsewhere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The repository root: `UES_REPO`, else two levels above this crate (`crates/ues-apps`).
fn repo() -> PathBuf {
    match std::env::var_os("UES_REPO") {
        Some(repo) => PathBuf::from(repo),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}

/// `<repo>/tests/js` when Node and `packages` in its `node_modules` are there; otherwise `None`
/// after saying why (or a panic under CI).
fn node_dir(test: &str, packages: &[&str]) -> Option<PathBuf> {
    let dir = repo().join("tests/js");
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let missing: Vec<_> = packages.iter().filter(|p| !dir.join("node_modules").join(p).is_dir()).collect();
    if node && missing.is_empty() {
        return Some(dir);
    }
    let why = if node {
        format!("{missing:?} not installed in {} (scripts/setup.sh installs them)", dir.display())
    } else {
        "node is not on PATH".to_owned()
    };
    if in_ci() {
        panic!("CI=true but {test} cannot run: {why}");
    }
    eprintln!("SKIPPED: {test}: {why}; set UES_REPO to the repository root if it is elsewhere");
    None
}

/// Runs `node <args>` in `dir` with `input` on stdin, and returns its stdout.
fn node(dir: &Path, args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("node")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting node");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "node {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

// ---- JCS against npm `canonicalize` ----

/// Characters whose UTF-16 and code point orders differ, controls, escapes and the rest.
fn random_string(rng: &mut StdRng) -> String {
    let len = rng.gen_range(0..6);
    (0..len)
        .map(|_| match rng.gen_range(0..8) {
            0 => char::from_u32(rng.gen_range(0x10000..0x110000)).unwrap(), // a surrogate pair
            1 => char::from_u32(rng.gen_range(0xe000..0x10000)).unwrap(),   // above the surrogates
            2 => char::from_u32(rng.gen_range(0..0x20)).unwrap(),           // controls
            3 => ['"', '\\', '/', '\u{7f}', '\u{2028}', '\u{feff}'][rng.gen_range(0..6)],
            4 => char::from_u32(rng.gen_range(0x80..0x800)).unwrap(),
            _ => char::from(rng.gen_range(b'a'..=b'e')),
        })
        .collect()
}

/// A number as JSON text, spelt in the ways writers spell them.
fn random_number(rng: &mut StdRng) -> String {
    match rng.gen_range(0..8) {
        0 => rng.gen_range(-1_000_000i64..1_000_000).to_string(),
        1 => rng.r#gen::<u64>().to_string(),
        2 => rng.r#gen::<i64>().to_string(),
        3 => {
            let f = f64::from_bits(rng.r#gen());
            if f.is_finite() { serde_json::to_string(&f).unwrap() } else { "0.5".into() }
        }
        4 => format!("{}e{}", rng.gen_range(1..10), rng.gen_range(-12i32..30)), // around 1e21 and 1e-7
        5 => format!(
            "{}{}.{:0width$}E{}{}",
            if rng.r#gen() { "-" } else { "" },
            rng.gen_range(0..1000),
            rng.gen_range(0..100_000_000u64),
            if rng.r#gen() { "+" } else { "-" },
            rng.gen_range(0..300), // no overflow to Infinity, which neither side accepts
            width = rng.gen_range(1..20)
        ),
        6 => format!("0.{:017}", rng.gen_range(0..100_000_000_000_000_000u64)),
        _ => format!("{}{}", rng.gen_range(1..10), "0".repeat(rng.gen_range(15..25))),
    }
}

fn random_json(rng: &mut StdRng, depth: u32, out: &mut String) {
    let kind = if depth >= 4 { rng.gen_range(0..4) } else { rng.gen_range(0..6) };
    match kind {
        0 => out.push_str(["null", "true", "false"][rng.gen_range(0..3)]),
        1 => out.push_str(&random_number(rng)),
        2 | 3 => out.push_str(&Value::from(random_string(rng)).to_string()),
        4 => {
            out.push('[');
            for i in 0..rng.gen_range(0..5) {
                if i > 0 {
                    out.push(',');
                }
                random_json(rng, depth + 1, out);
            }
            out.push(']');
        }
        _ => {
            out.push('{');
            let mut names = std::collections::BTreeSet::new();
            for _ in 0..rng.gen_range(0..7) {
                names.insert(random_string(rng));
            }
            for (i, name) in names.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(" , ");
                }
                out.push_str(&Value::from(name).to_string());
                out.push(':');
                random_json(rng, depth + 1, out);
            }
            out.push('}');
        }
    }
}

#[test]
fn jcs_matches_npm_canonicalize() {
    let Some(dir) = node_dir("jcs_matches_npm_canonicalize", &["canonicalize"]) else { return };
    let mut rng = StdRng::seed_from_u64(8785);
    let mut texts: Vec<String> = (0..400)
        .map(|_| {
            let mut text = String::new();
            random_json(&mut rng, 0, &mut text);
            text
        })
        .collect();
    // The RFC's own corners.
    texts.extend(
        [
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
            r#"[333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001, -0, 1e21, 1e-7, 9007199254740993]"#,
        ]
        .map(String::from),
    );
    let script = "import canonicalize from 'canonicalize';\
        const chunks = []; process.stdin.on('data', c => chunks.push(c)).on('end', () => {\
          const texts = JSON.parse(Buffer.concat(chunks).toString('utf8'));\
          process.stdout.write(JSON.stringify(texts.map(t => canonicalize(JSON.parse(t)))));\
        });";
    let out = node(&dir, &["--input-type=module", "-e", script], &serde_json::to_vec(&texts).unwrap());
    let theirs: Vec<String> = serde_json::from_str(&out).unwrap();
    assert_eq!(theirs.len(), texts.len());
    for (text, theirs) in texts.iter().zip(&theirs) {
        let ours = canonical(&parse_bounded(text.as_bytes(), MAX_CREDENTIAL_BYTES, MAX_DEPTH).unwrap()).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), *theirs, "input: {text}");
    }
}

// ---- Digital Bazaar's verifier ----

const LIST_URL: &str = "https://node.example/xrpc/dev.ues.credential.getStatusList?list=3";
const CREATED: &str = "2025-01-02T03:04:05Z";

struct Oracle {
    dir: PathBuf,
}

#[derive(Debug, PartialEq)]
struct Verdict {
    verified: bool,
    revoked: Option<bool>,
    error: Option<String>,
}

impl Oracle {
    fn ask(&self, credential: &Value, lists: &[(&str, &Value)]) -> Verdict {
        let lists: serde_json::Map<String, Value> = lists.iter().map(|(u, l)| (u.to_string(), (*l).clone())).collect();
        let request = json!({"credential": credential, "statusLists": lists});
        let out = node(&self.dir, &["vc_verify.mjs"], &serde_json::to_vec(&request).unwrap());
        let answer: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        Verdict {
            verified: answer["verified"].as_bool().unwrap(),
            revoked: answer["revoked"].as_bool(),
            error: answer["error"].as_str().map(str::to_owned),
        }
    }
}

fn signed_list(key: &SigningKey, list: &StatusList) -> Value {
    let did = DidKey::from(key.verifying_key()).did();
    sign(&status_list_credential(LIST_URL, &did, "2025-01-01T00:00:00Z", list).unwrap(), key, CREATED).unwrap()
}

#[test]
fn digital_bazaar_verifies_what_we_sign() {
    let Some(dir) = node_dir(
        "digital_bazaar_verifies_what_we_sign",
        &[
            "@digitalbazaar/vc",
            "@digitalbazaar/data-integrity",
            "@digitalbazaar/eddsa-jcs-2022-cryptosuite",
            "@digitalbazaar/security-document-loader",
            "@digitalbazaar/vc-bitstring-status-list",
        ],
    ) else {
        return;
    };
    assert!(dir.join("vc_verify.mjs").is_file(), "{} is missing", dir.join("vc_verify.mjs").display());
    let oracle = Oracle { dir };
    let mut rng = StdRng::seed_from_u64(2022);
    let key = SigningKey::generate(&mut rng);
    let issuer = DidKey::from(key.verifying_key());
    let mut list = StatusList::new();
    let index = list.random_free_index(&mut rng, |_| false).unwrap();

    let types = ["ExampleMembershipCredential".to_owned()];
    let credential = build_credential(CredentialDraft {
        issuer: &issuer,
        account: "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        id: "urn:uuid:3978344f-8596-4c3a-a978-8fcaba3903c5",
        types: &types,
        subject: json!({"id": "did:plc:z72i7hdynmk6r22z27h6tvur", "name": "Ana Ñandú 😀", "level": 3}),
        valid_from: "2025-01-01T00:00:00Z",
        valid_until: Some("2099-01-01T00:00:00Z"),
        status: Some(status_entry(LIST_URL, index)),
    })
    .unwrap();
    let signed = sign(&credential, &key, CREATED).unwrap();
    assert!(verify_credential(&signed).is_ok());

    // Valid, and not revoked.
    let clear = signed_list(&key, &list);
    let verdict = oracle.ask(&signed, &[(LIST_URL, &clear)]);
    assert_eq!(verdict, Verdict { verified: true, revoked: Some(false), error: None });

    // Revoked.
    list.set(index, true).unwrap();
    let revoked = signed_list(&key, &list);
    let verdict = oracle.ask(&signed, &[(LIST_URL, &revoked)]);
    assert_eq!(verdict, Verdict { verified: true, revoked: Some(true), error: None });

    // A changed claim.
    let mut tampered = signed.clone();
    tampered["credentialSubject"]["level"] = json!(4);
    let verdict = oracle.ask(&tampered, &[(LIST_URL, &clear)]);
    assert!(!verdict.verified, "{verdict:?}");
    assert!(verify(&tampered).is_err());

    // A changed proof option.
    let mut tampered = signed.clone();
    tampered["proof"]["created"] = json!("2025-01-02T03:04:06Z");
    assert!(!oracle.ask(&tampered, &[(LIST_URL, &clear)]).verified);

    // A status list signed by someone else: the issuers differ.
    let stranger = SigningKey::generate(&mut rng);
    let verdict = oracle.ask(&signed, &[(LIST_URL, &signed_list(&stranger, &list))]);
    assert!(!verdict.verified, "{verdict:?}");

    // A status list whose own proof was tampered with.
    let mut forged = clear.clone();
    forged["credentialSubject"]["encodedList"] = json!(list.encode());
    let verdict = oracle.ask(&signed, &[(LIST_URL, &forged)]);
    assert!(!verdict.verified, "{verdict:?}");

    // Without status: verified, revocation unknown.
    let mut plain = credential.clone();
    plain.as_object_mut().unwrap().remove("credentialStatus");
    let verdict = oracle.ask(&sign(&plain, &key, CREATED).unwrap(), &[]);
    assert_eq!(verdict, Verdict { verified: true, revoked: None, error: None });
}

// ---- W3C vc-di-eddsa test vectors ----

/// The W3C vc-di-eddsa `TestVectors` directory: `UES_VC_VECTORS`, else the shared interop
/// material beside the repository (`../shared/interop/vc-di-eddsa/TestVectors`, W3C Software and
/// Document License). No package on a registry ships them, so their absence is a loud skip even
/// under CI; an explicit `UES_VC_VECTORS` that is incomplete fails.
fn vectors() -> Option<PathBuf> {
    let explicit = std::env::var_os("UES_VC_VECTORS").map(PathBuf::from);
    let dir = explicit.clone().unwrap_or_else(|| repo().join("../shared/interop/vc-di-eddsa/TestVectors"));
    let complete =
        ["keyPair.json", "unsigned.json", "eddsa-jcs-2022/signedJCS.json"].iter().all(|f| dir.join(f).is_file());
    if complete {
        return Some(dir);
    }
    if explicit.is_some() {
        panic!("UES_VC_VECTORS={} does not hold the vc-di-eddsa TestVectors", dir.display());
    }
    eprintln!(
        "SKIPPED: w3c_eddsa_jcs_2022_vectors: no vectors at {} (set UES_VC_VECTORS to a copy of the \
         W3C vc-di-eddsa TestVectors directory)",
        dir.display()
    );
    None
}

#[test]
fn w3c_eddsa_jcs_2022_vectors() {
    let Some(dir) = vectors() else { return };
    let text = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap().trim_end().to_owned();
    let json = |name: &str| -> Value { serde_json::from_str(&text(name)).unwrap() };
    let hex = |bytes: &[u8]| data_encoding::HEXLOWER.encode(bytes);

    // The key pair: Multikey secret (ed25519-priv, varint 0x1300 = 0x80 0x26) and public.
    let pair = json("keyPair.json");
    let secret = bs58::decode(&pair["privateKeyMultibase"].as_str().unwrap()[1..]).into_vec().unwrap();
    assert_eq!(secret[..2], [0x80, 0x26]);
    let key = SigningKey::from_bytes(&secret[2..].try_into().unwrap());
    assert_eq!(DidKey::from(key.verifying_key()).multibase(), pair["publicKeyMultibase"]);

    let unsigned = json("unsigned.json");
    let options = json("eddsa-jcs-2022/proofConfigJCS.json");
    let canon_doc = canonical(&unsigned).unwrap();
    let canon_proof = canonical(&options).unwrap();
    assert_eq!(String::from_utf8(canon_doc.clone()).unwrap(), text("eddsa-jcs-2022/canonDocJCS.txt"));
    assert_eq!(String::from_utf8(canon_proof.clone()).unwrap(), text("eddsa-jcs-2022/proofCanonJCS.txt"));
    let (doc_hash, proof_hash) = (Sha256::digest(&canon_doc), Sha256::digest(&canon_proof));
    assert_eq!(hex(&doc_hash), text("eddsa-jcs-2022/docHashJCS.txt"));
    assert_eq!(hex(&proof_hash), text("eddsa-jcs-2022/proofHashJCS.txt"));
    assert_eq!(format!("{}{}", hex(&proof_hash), hex(&doc_hash)), text("eddsa-jcs-2022/combinedHashJCS.txt"));

    let ours = sign(&unsigned, &key, options["created"].as_str().unwrap()).unwrap();
    let proof_value = ours["proof"]["proofValue"].as_str().unwrap();
    assert_eq!(proof_value, text("eddsa-jcs-2022/sigBTC58JCS.txt"));
    assert_eq!(hex(&bs58::decode(&proof_value[1..]).into_vec().unwrap()), text("eddsa-jcs-2022/sigHexJCS.txt"));
    let signed = json("eddsa-jcs-2022/signedJCS.json");
    assert_eq!(ours, signed);
    let verified = verify(&signed).unwrap();
    assert_eq!(verified.verification_method, options["verificationMethod"]);
}
