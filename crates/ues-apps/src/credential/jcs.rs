//! RFC 8785 JSON Canonicalization Scheme, and the bounded parser untrusted JSON goes through.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::CredentialError;

/// The largest credential accepted (bytes of JSON).
pub const MAX_CREDENTIAL_BYTES: usize = 64 * 1024;

/// The deepest nesting of arrays and objects accepted (the top-level value is depth 1).
pub const MAX_DEPTH: usize = 32;

/// The RFC 8785 canonical form of `value`: object members sorted by the UTF-16 code units of
/// their names, numbers printed as ECMAScript does, no whitespace.
pub fn canonical(value: &Value) -> Result<Vec<u8>, CredentialError> {
    serde_json_canonicalizer::to_vec(value).map_err(|e| CredentialError::Json(e.to_string()))
}

/// Parses untrusted JSON: refuses more than `max_bytes`, nesting deeper than `max_depth`
/// (checked by a flat scan before the parser recurses), duplicate object member names (which
/// parsers disagree on, so a signature could cover a value another reader never sees) and lone
/// surrogates.
pub fn parse_bounded(bytes: &[u8], max_bytes: usize, max_depth: usize) -> Result<Value, CredentialError> {
    if bytes.len() > max_bytes {
        return Err(CredentialError::TooLarge { len: bytes.len(), max: max_bytes });
    }
    if nesting_depth(bytes) > max_depth {
        return Err(CredentialError::TooDeep { max: max_depth });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut deserializer).map_err(|e| CredentialError::Json(e.to_string()))?;
    deserializer.end().map_err(|e| CredentialError::Json(e.to_string()))?;
    Ok(value)
}

/// The deepest nesting of `[` and `{` outside strings. Malformed input gives some number; the
/// parser refuses it afterwards.
fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A `serde_json::Value` that refuses duplicate member names.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(StrictValue)?;
            if members.contains_key(&name) {
                return Err(de::Error::custom(format_args!("duplicate member name {name:?}")));
            }
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn jcs(text: &str) -> String {
        String::from_utf8(canonical(&parse_bounded(text.as_bytes(), MAX_CREDENTIAL_BYTES, MAX_DEPTH).unwrap()).unwrap())
            .unwrap()
    }

    #[test]
    fn sorts_members_by_utf16_code_units() {
        // U+1F600 is a surrogate pair (0xD83D 0xDE00), below U+FB33 in UTF-16 though above it as
        // a code point: UTF-8 byte order would put it last.
        let text = r#"{"\ufb33":1,"\ud83d\ude00":2,"\u20ac":3,"\u00f6":4,"\u0080":5,"1":6,"\r":7,"":8}"#;
        assert_eq!(jcs(text), "{\"\":8,\"\\r\":7,\"1\":6,\"\u{80}\":5,\"ö\":4,\"€\":3,\"😀\":2,\"דּ\":1}");
    }

    #[test]
    fn prints_numbers_as_ecmascript() {
        let cases = [
            ("0", "0"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("1.0", "1"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("1e-7", "1e-7"),
            ("0.000001", "0.000001"),
            ("333333333.33333329", "333333333.3333333"),
            ("4.50", "4.5"),
            ("2e-3", "0.002"),
            ("9007199254740993", "9007199254740992"),
            ("18446744073709551616", "18446744073709552000"),
            ("-1.7976931348623157e308", "-1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
        ];
        for (input, want) in cases {
            assert_eq!(jcs(input), want, "{input}");
        }
    }

    #[test]
    fn escapes_as_rfc8785() {
        assert_eq!(jcs(r#""\u0001\b\t\n\f\r\"\\\/\u007f\u00e9""#), "\"\\u0001\\b\\t\\n\\f\\r\\\"\\\\/\u{7f}é\"");
        assert_eq!(jcs(r#"{ "b" : [ true , null ] , "a" : { } }"#), r#"{"a":{},"b":[true,null]}"#);
    }

    #[test]
    fn refuses_what_is_not_i_json() {
        for bad in [r#"{"a":1,"a":2}"#, r#"[{"x":{"a":1,"a":1}}]"#, r#""\ud800""#, "1e400", "[1,]", "{} {}", "nul"] {
            let err = parse_bounded(bad.as_bytes(), MAX_CREDENTIAL_BYTES, MAX_DEPTH).unwrap_err();
            assert!(matches!(err, CredentialError::Json(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn bounds_size_and_depth() {
        let big = format!("\"{}\"", "a".repeat(MAX_CREDENTIAL_BYTES));
        assert!(matches!(
            parse_bounded(big.as_bytes(), MAX_CREDENTIAL_BYTES, MAX_DEPTH),
            Err(CredentialError::TooLarge { .. })
        ));
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_bounded(nest(MAX_DEPTH).as_bytes(), MAX_CREDENTIAL_BYTES, MAX_DEPTH).is_ok());
        assert!(matches!(
            parse_bounded(nest(MAX_DEPTH + 1).as_bytes(), MAX_CREDENTIAL_BYTES, MAX_DEPTH),
            Err(CredentialError::TooDeep { max: MAX_DEPTH })
        ));
        // Far past serde_json's own recursion limit: refused by the scan, not the parser.
        let deep = "[".repeat(60_000);
        assert!(matches!(
            parse_bounded(deep.as_bytes(), MAX_CREDENTIAL_BYTES, MAX_DEPTH),
            Err(CredentialError::TooDeep { .. })
        ));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(MAX_DEPTH + 1), "}".repeat(MAX_DEPTH + 1));
        assert!(matches!(
            parse_bounded(objects.as_bytes(), MAX_CREDENTIAL_BYTES, MAX_DEPTH),
            Err(CredentialError::TooDeep { .. })
        ));
        // Brackets inside strings, escaped quotes included, are not nesting.
        let in_strings = format!(r#"["{}\"{}"]"#, "[".repeat(100), "{".repeat(100));
        assert!(parse_bounded(in_strings.as_bytes(), MAX_CREDENTIAL_BYTES, 1).is_ok());
    }

    /// A JSON value with objects as ordered member lists, to write the same value with its
    /// members in different orders.
    #[derive(Debug, Clone)]
    enum Tree {
        Leaf(Value),
        List(Vec<Tree>),
        Object(Vec<(String, Tree)>),
    }

    impl Tree {
        fn write(&self, reverse: bool, out: &mut String) {
            match self {
                Self::Leaf(v) => out.push_str(&v.to_string()),
                Self::List(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        item.write(reverse, out);
                    }
                    out.push(']');
                }
                Self::Object(members) => {
                    out.push_str("{ ");
                    let mut members: Vec<_> = members.iter().collect();
                    if reverse {
                        members.reverse();
                    }
                    for (i, (name, value)) in members.into_iter().enumerate() {
                        if i > 0 {
                            out.push_str(" ,\n");
                        }
                        out.push_str(&Value::from(name.as_str()).to_string());
                        out.push(':');
                        value.write(reverse, out);
                    }
                    out.push('}');
                }
            }
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
            (-1_000_000i64..1_000_000, 0u32..8).prop_map(|(m, e)| json!(m as f64 / 10f64.powi(e as i32))),
            any::<String>().prop_map(Value::from),
            "[a-c\\u{e9}\\u{20ac}\\u{1f600}\\u{ff}\n\"\\\\]{0,6}".prop_map(Value::from),
        ]
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let name = prop_oneof!["[a-d]{0,3}", "[\\u{80}-\\u{10ffff}]{1,2}", any::<String>()];
        leaf().prop_map(Tree::Leaf).prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Tree::List),
                prop::collection::btree_map(name.clone(), inner, 0..6)
                    .prop_map(|members| Tree::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_form_is_idempotent_and_ignores_member_order(tree in tree()) {
            let (mut forward, mut backward) = (String::new(), String::new());
            tree.write(false, &mut forward);
            tree.write(true, &mut backward);
            let once = jcs(&forward);
            prop_assert_eq!(&once, &jcs(&backward));
            prop_assert_eq!(&once, &jcs(&once));
            // And it is the same value, numbers being IEEE doubles as in ECMAScript.
            fn doubles(v: Value) -> Value {
                match v {
                    Value::Number(n) => serde_json::Number::from_f64(n.as_f64().unwrap()).map_or(Value::Null, Value::Number),
                    Value::Array(a) => Value::Array(a.into_iter().map(doubles).collect()),
                    Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, doubles(v))).collect()),
                    other => other,
                }
            }
            let parse = |s: &str| doubles(serde_json::from_str::<Value>(s).unwrap());
            prop_assert_eq!(parse(&once), parse(&forward));
        }

        #[test]
        fn depth_scan_agrees_with_the_parser(tree in tree()) {
            let mut text = String::new();
            tree.write(false, &mut text);
            fn depth(v: &Value) -> usize {
                match v {
                    Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                    Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
                    _ => 0,
                }
            }
            let value: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(nesting_depth(text.as_bytes()), depth(&value));
        }
    }
}
