//! AT Protocol JSON <-> IPLD: `{"$link": cid}` is a link, `{"$bytes": base64}` is bytes, blob
//! objects are maps with a link under `ref`; floats are refused (an integer written as `1.0` is
//! an integer), `$type` must be a non-empty string wherever it appears.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use cid::Cid;
use serde_json::{Map, Number, Value};

use crate::Ipld;
// The decoder's bound: a value nested deeper could be written but never read back.
use crate::dagcbor::MAX_DEPTH;

/// Why JSON is not valid AT Protocol data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The top level of a record must be an object.
    #[error("the top level is not an object")]
    NotAnObject,
    /// A non-integer number.
    #[error("{path}: floats are not allowed")]
    Float {
        /// Where.
        path: String,
    },
    /// An integer outside the signed 64-bit range.
    #[error("{path}: integer out of range")]
    IntegerRange {
        /// Where.
        path: String,
    },
    /// A malformed `$link`, `$bytes`, `$type` or blob object.
    #[error("{path}: {reason}")]
    Invalid {
        /// Where.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(path: &str, reason: impl Into<String>) -> JsonError {
    JsonError::Invalid { path: path.to_string(), reason: reason.into() }
}

/// Converts a record (a JSON object) to IPLD, validating the AT Protocol data model.
pub fn record_from_json(value: &Value) -> Result<Ipld, JsonError> {
    if !value.is_object() {
        return Err(JsonError::NotAnObject);
    }
    from_json(value)
}

/// Converts any JSON value to IPLD, validating the AT Protocol data model.
pub fn from_json(value: &Value) -> Result<Ipld, JsonError> {
    convert(value, "$", 0, MAX_DEPTH)
}

/// Levels a request body may wrap around the records it carries (`applyWrites`: body, `writes`,
/// the write, `value`).
pub const BODY_ENVELOPE: usize = 4;

/// Converts a request body to IPLD: as [`from_json`], with room for the envelope around the
/// records inside (each record is held to [`MAX_DEPTH`] on its own when it is written).
pub fn body_from_json(value: &Value) -> Result<Ipld, JsonError> {
    convert(value, "$", 0, MAX_DEPTH + BODY_ENVELOPE)
}

fn convert(value: &Value, path: &str, depth: usize, max: usize) -> Result<Ipld, JsonError> {
    if depth > max {
        return Err(invalid(path, "nested too deeply"));
    }
    Ok(match value {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(*b),
        Value::Number(n) => Ipld::Integer(integer(n, path)?),
        Value::String(s) => Ipld::String(s.clone()),
        Value::Array(items) => Ipld::List(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| convert(v, &format!("{path}[{i}]"), depth + 1, max))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => object(map, path, depth, max)?,
    })
}

fn integer(n: &Number, path: &str) -> Result<i128, JsonError> {
    if let Some(i) = n.as_i64() {
        return Ok(i as i128);
    }
    if n.as_u64().is_some() {
        return Err(JsonError::IntegerRange { path: path.to_string() });
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => Ok(f as i128),
        Some(f) if f.fract() == 0.0 && f.is_finite() => Err(JsonError::IntegerRange { path: path.to_string() }),
        _ => Err(JsonError::Float { path: path.to_string() }),
    }
}

fn object(map: &Map<String, Value>, path: &str, depth: usize, max: usize) -> Result<Ipld, JsonError> {
    if let Some(link) = map.get("$link") {
        if map.len() != 1 {
            return Err(invalid(path, "$link object with extra fields"));
        }
        let s = link.as_str().ok_or_else(|| invalid(path, "$link is not a string"))?;
        let cid = Cid::try_from(s).map_err(|e| invalid(path, format!("$link is not a CID: {e}")))?;
        return Ok(Ipld::Link(cid));
    }
    if let Some(bytes) = map.get("$bytes") {
        if map.len() != 1 {
            return Err(invalid(path, "$bytes object with extra fields"));
        }
        let s = bytes.as_str().ok_or_else(|| invalid(path, "$bytes is not a string"))?;
        let decoded = decode_base64(s).ok_or_else(|| invalid(path, "$bytes is not base64"))?;
        return Ok(Ipld::Bytes(decoded));
    }
    let mut out = BTreeMap::new();
    for (k, v) in map {
        out.insert(k.clone(), convert(v, &format!("{path}.{k}"), depth + 1, max)?);
    }
    if let Some(t) = map.get("$type") {
        match t.as_str() {
            Some("") => return Err(invalid(path, "$type is empty")),
            Some("blob") => check_blob(&out, path)?,
            Some(_) => {}
            None => return Err(invalid(path, "$type is not a string")),
        }
    }
    Ok(Ipld::Map(out))
}

fn check_blob(m: &BTreeMap<String, Ipld>, path: &str) -> Result<(), JsonError> {
    if !matches!(m.get("ref"), Some(Ipld::Link(_))) {
        return Err(invalid(path, "blob without a ref link"));
    }
    if !matches!(m.get("mimeType"), Some(Ipld::String(_))) {
        return Err(invalid(path, "blob without a mimeType string"));
    }
    match m.get("size") {
        Some(Ipld::Integer(n)) if *n >= 0 => Ok(()),
        _ => Err(invalid(path, "blob without an integer size")),
    }
}

/// Converts IPLD to AT Protocol JSON (links as `$link`, bytes as unpadded base64 `$bytes`).
pub fn to_json(value: &Ipld) -> Value {
    match value {
        Ipld::Null => Value::Null,
        Ipld::Bool(b) => Value::Bool(*b),
        Ipld::Integer(i) => match i64::try_from(*i) {
            Ok(n) => Value::from(n),
            Err(_) => Value::from(*i as u64),
        },
        Ipld::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Ipld::String(s) => Value::String(s.clone()),
        Ipld::Bytes(b) => {
            let mut m = Map::new();
            m.insert("$bytes".into(), Value::String(STANDARD_NO_PAD.encode(b)));
            Value::Object(m)
        }
        Ipld::List(items) => Value::Array(items.iter().map(to_json).collect()),
        Ipld::Map(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Ipld::Link(cid) => {
            let mut m = Map::new();
            m.insert("$link".into(), Value::String(cid.to_string()));
            Value::Object(m)
        }
    }
}

/// Lenient base64 for `$bytes`: standard alphabet, padding optional, trailing bits ignored (as
/// the reference implementation accepts).
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Decodes base64 as AT Protocol writes it (standard alphabet, padding optional).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    LENIENT.decode(s).ok()
}

/// A reference to a blob from a record, in either form AT Protocol has used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// The blob's CID (raw codec, sha2-256 for blobs written today).
    pub cid: Cid,
    /// The declared MIME type.
    pub mime_type: String,
    /// The declared size; `None` in the legacy form, which did not carry it.
    pub size: Option<u64>,
}

impl BlobRef {
    /// Reads `{"$type": "blob", "ref": link, "mimeType", "size"}` or the legacy
    /// `{"cid": "<cid string>", "mimeType"}`; `None` for anything else.
    pub fn from_ipld(value: &Ipld) -> Option<Self> {
        let Ipld::Map(m) = value else { return None };
        let mime_type = m.get("mimeType")?.as_str()?.to_string();
        if m.get("$type").and_then(Ipld::as_str) == Some("blob") {
            let cid = *m.get("ref")?.as_link()?;
            let size = match m.get("size")? {
                Ipld::Integer(n) => u64::try_from(*n).ok()?,
                _ => return None,
            };
            return Some(Self { cid, mime_type, size: Some(size) });
        }
        if m.len() == 2 {
            let cid = Cid::try_from(m.get("cid")?.as_str()?).ok()?;
            return Some(Self { cid, mime_type, size: None });
        }
        None
    }

    /// The current (typed) form.
    pub fn to_ipld(&self) -> Ipld {
        Ipld::Map(
            [
                ("$type".to_string(), Ipld::String("blob".into())),
                ("ref".to_string(), Ipld::Link(self.cid)),
                ("mimeType".to_string(), Ipld::String(self.mime_type.clone())),
                ("size".to_string(), Ipld::Integer(self.size.unwrap_or(0) as i128)),
            ]
            .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"a": {"a": ... 1}}` with `levels` objects.
    fn nested(levels: usize) -> Value {
        let mut v = Value::from(1);
        for _ in 0..levels {
            v = serde_json::json!({ "a": v });
        }
        v
    }

    #[test]
    fn json_accepts_exactly_what_dag_cbor_reads_back() {
        // The deepest value the decoder reads: MAX_DEPTH containers, the innermost value at
        // depth MAX_DEPTH.
        let deepest = from_json(&nested(MAX_DEPTH)).unwrap();
        assert_eq!(deepest.depth(), MAX_DEPTH);
        let bytes = crate::dagcbor::encode(&deepest);
        assert_eq!(crate::dagcbor::decode_atproto(&bytes).unwrap(), deepest);
        // One more level is refused on the way in, as the decoder would refuse it on the way out.
        assert!(matches!(from_json(&nested(MAX_DEPTH + 1)), Err(JsonError::Invalid { .. })));
        let mut deeper = deepest;
        deeper = Ipld::Map(BTreeMap::from([("a".to_string(), deeper)]));
        assert!(crate::dagcbor::decode_atproto(&crate::dagcbor::encode(&deeper)).is_err());
    }

    #[test]
    fn blob_refs_in_both_forms() {
        let cid = "bafkreiccldh766hwcnuxnf2wh6jgzepf2nlu2lvcllt63eww5p6chi4ity";
        let typed = from_json(&serde_json::json!({
            "$type": "blob", "ref": {"$link": cid}, "mimeType": "image/png", "size": 42
        }))
        .unwrap();
        let b = BlobRef::from_ipld(&typed).unwrap();
        assert_eq!((b.cid.to_string().as_str(), b.size), (cid, Some(42)));
        assert_eq!(b.to_ipld(), typed);
        let legacy = from_json(&serde_json::json!({"cid": cid, "mimeType": "image/png"})).unwrap();
        let l = BlobRef::from_ipld(&legacy).unwrap();
        assert_eq!((l.cid, l.size, l.mime_type.as_str()), (b.cid, None, "image/png"));
        assert!(BlobRef::from_ipld(&from_json(&serde_json::json!({"cid": 1, "mimeType": "x"})).unwrap()).is_none());
    }
}
