//! Every case of every `syntax/*.txt` vector file (lines are not trimmed; `#` lines are
//! comments; blank lines separate groups). Case counts are asserted per file.

#[path = "../../../tests/support/shared.rs"]
mod shared;

use std::str::FromStr;

use ues_repo::syntax::{
    AtIdentifier, AtUri, Datetime, Did, Handle, Language, Nsid, RecordKey, Tid, check_cid_string, check_uri,
};

const FILES: &[(&str, usize)] = &[
    ("atidentifier_syntax_invalid", 22),
    ("atidentifier_syntax_valid", 11),
    ("aturi_syntax_invalid", 72),
    ("aturi_syntax_valid", 23),
    ("cid_syntax_invalid", 10),
    ("cid_syntax_valid", 8),
    ("datetime_parse_invalid", 7),
    ("datetime_syntax_invalid", 45),
    ("datetime_syntax_valid", 35),
    ("did_syntax_invalid", 18),
    ("did_syntax_valid", 24),
    ("handle_syntax_invalid", 48),
    ("handle_syntax_valid", 71),
    ("language_parse_invalid", 4),
    ("language_syntax_invalid", 7),
    ("language_syntax_valid", 18),
    ("nsid_syntax_invalid", 27),
    ("nsid_syntax_valid", 25),
    ("recordkey_syntax_invalid", 11),
    ("recordkey_syntax_valid", 16),
    ("tid_syntax_invalid", 9),
    ("tid_syntax_valid", 4),
    ("uri_syntax_invalid", 12),
    ("uri_syntax_valid", 9),
];

fn accepts(kind: &str, s: &str) -> bool {
    match kind {
        "atidentifier" => AtIdentifier::from_str(s).is_ok(),
        "aturi" => AtUri::from_str(s).is_ok(),
        "cid" => check_cid_string(s).is_ok(),
        "datetime" => Datetime::new(s).is_ok(),
        "did" => Did::new(s).is_ok(),
        "handle" => Handle::new(s).is_ok(),
        "language" => Language::new(s).is_ok(),
        "nsid" => Nsid::new(s).is_ok(),
        "recordkey" => RecordKey::new(s).is_ok(),
        "tid" => Tid::new(s).is_ok(),
        "uri" => check_uri(s).is_ok(),
        other => panic!("no validator for {other}"),
    }
}

#[test]
fn every_syntax_vector() {
    let mut failures = Vec::new();
    for (file, expected) in FILES {
        let Some(path) = shared::shared(&format!("interop/atproto-interop-tests/syntax/{file}.txt")) else { return };
        let text = std::fs::read_to_string(path).unwrap();
        let cases: Vec<&str> = text.split('\n').filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
        assert_eq!(cases.len(), *expected, "{file}: case count");
        let kind = file.split('_').next().unwrap();
        let want_valid = file.ends_with("_valid");
        for case in cases {
            if accepts(kind, case) != want_valid {
                failures.push(format!("{file}: {:?}", case.chars().take(80).collect::<String>()));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
