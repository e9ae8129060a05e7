//! The Lexicon engine: loads Lexicon documents, checks them, and validates records and XRPC
//! parameters/bodies against them, naming the failing path.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use ues_ipld::Ipld;
use ues_ipld::json::BlobRef;
use unicode_segmentation::UnicodeSegmentation;

use crate::syntax::{self, AtIdentifier, AtUri, Datetime, Did, Handle, Language, Nsid, RecordKey, Tid};

/// A Lexicon document or a definition in it is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lexicon {id}: {reason}")]
pub struct LexiconError {
    /// The document's id (or what it claimed to be).
    pub id: String,
    /// What is wrong.
    pub reason: String,
}

/// Data does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    /// Where, as `$.field[0].inner`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The outcome of validating a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationStatus {
    /// Validated against a known schema.
    Valid,
    /// No schema is known for the collection; only the data model was checked.
    Unknown,
}

impl ValidationStatus {
    /// As XRPC responses spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationStatus::Valid => "valid",
            ValidationStatus::Unknown => "unknown",
        }
    }
}

/// An object schema.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectDef {
    /// Properties.
    #[serde(default)]
    pub properties: BTreeMap<String, Field>,
    /// Required property names.
    #[serde(default)]
    pub required: Vec<String>,
    /// Properties that may be null.
    #[serde(default)]
    pub nullable: Vec<String>,
}

/// A field schema (everything that can appear inside an object, an array or a body).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Field {
    /// null
    Null,
    /// boolean
    Boolean {
        /// Required value.
        #[serde(rename = "const")]
        konst: Option<bool>,
    },
    /// integer
    #[serde(rename_all = "camelCase")]
    Integer {
        /// Lowest value.
        minimum: Option<i64>,
        /// Highest value.
        maximum: Option<i64>,
        /// Allowed values.
        #[serde(rename = "enum")]
        allowed: Option<Vec<i64>>,
        /// Required value.
        #[serde(rename = "const")]
        konst: Option<i64>,
    },
    /// string
    #[serde(rename_all = "camelCase")]
    String {
        /// A named format (`did`, `handle`, `datetime`, ...).
        format: Option<String>,
        /// Minimum UTF-8 bytes.
        min_length: Option<usize>,
        /// Maximum UTF-8 bytes.
        max_length: Option<usize>,
        /// Minimum grapheme clusters.
        min_graphemes: Option<usize>,
        /// Maximum grapheme clusters.
        max_graphemes: Option<usize>,
        /// Allowed values (closed).
        #[serde(rename = "enum")]
        allowed: Option<Vec<String>>,
        /// Required value.
        #[serde(rename = "const")]
        konst: Option<String>,
        /// Suggested values (open: anything else is allowed too).
        known_values: Option<Vec<String>>,
    },
    /// bytes
    #[serde(rename_all = "camelCase")]
    Bytes {
        /// Minimum length.
        min_length: Option<usize>,
        /// Maximum length.
        max_length: Option<usize>,
    },
    /// cid-link
    CidLink,
    /// blob
    #[serde(rename_all = "camelCase")]
    Blob {
        /// Accepted MIME patterns (`image/*`).
        accept: Option<Vec<String>>,
        /// Largest size in bytes.
        max_size: Option<u64>,
    },
    /// array
    #[serde(rename_all = "camelCase")]
    Array {
        /// Element schema.
        items: Box<Field>,
        /// Minimum elements.
        min_length: Option<usize>,
        /// Maximum elements.
        max_length: Option<usize>,
    },
    /// object
    Object(ObjectDef),
    /// XRPC parameters (an object of primitives and arrays of primitives).
    Params(ObjectDef),
    /// A named constant, referenced by `nsid#name` strings.
    Token,
    /// A reference to another definition.
    Ref {
        /// `nsid`, `nsid#name` or `#name`.
        #[serde(rename = "ref")]
        target: String,
    },
    /// One of several object types, told apart by `$type`.
    Union {
        /// The member definitions.
        refs: Vec<String>,
        /// Whether only the listed types are allowed.
        #[serde(default)]
        closed: bool,
    },
    /// Any object.
    Unknown,
}

/// An XRPC body (`input`, `output`) or subscription message.
#[derive(Debug, Clone, Deserialize)]
pub struct Body {
    /// MIME type (`application/json`, `*/*`, ...).
    pub encoding: Option<String>,
    /// Schema of a JSON body.
    pub schema: Option<Field>,
}

/// A top-level definition.
#[derive(Debug, Clone)]
pub enum Def {
    /// A record type (only as `main`).
    Record {
        /// Record-key type: `tid`, `nsid`, `any`, `record-key`, `literal:<value>`.
        key: String,
        /// The record's schema.
        record: ObjectDef,
    },
    /// An XRPC query.
    Query {
        /// Parameters.
        parameters: Option<ObjectDef>,
        /// Output.
        output: Option<Body>,
    },
    /// An XRPC procedure.
    Procedure {
        /// Parameters.
        parameters: Option<ObjectDef>,
        /// Input.
        input: Option<Body>,
        /// Output.
        output: Option<Body>,
    },
    /// An event-stream subscription.
    Subscription {
        /// Parameters.
        parameters: Option<ObjectDef>,
        /// Message schema.
        message: Option<Body>,
    },
    /// A permission set (OAuth scopes), kept as JSON.
    PermissionSet(Value),
    /// Any field type defined at the top level (object, token, string, ...).
    Field(Field),
}

#[derive(Deserialize)]
struct Doc {
    lexicon: i64,
    id: String,
    defs: BTreeMap<String, Value>,
}

fn parse_def(id: &str, name: &str, v: &Value) -> Result<Def, LexiconError> {
    let err = |reason: String| LexiconError { id: id.to_string(), reason: format!("#{name}: {reason}") };
    let ty = v.get("type").and_then(Value::as_str).ok_or_else(|| err("no type".into()))?;
    let primary = matches!(ty, "record" | "query" | "procedure" | "subscription" | "permission-set");
    if primary && name != "main" {
        return Err(err(format!("a {ty} must be the main definition")));
    }
    let params = |v: &Value| -> Result<Option<ObjectDef>, LexiconError> {
        match v.get("parameters") {
            None => Ok(None),
            Some(p) => match serde_json::from_value::<Field>(p.clone()) {
                Ok(Field::Params(o)) => Ok(Some(o)),
                Ok(_) => Err(err("parameters must be of type params".into())),
                Err(e) => Err(err(e.to_string())),
            },
        }
    };
    let body = |v: &Value, key: &str| -> Result<Option<Body>, LexiconError> {
        v.get(key).map(|b| serde_json::from_value(b.clone()).map_err(|e| err(format!("{key}: {e}")))).transpose()
    };
    Ok(match ty {
        "record" => {
            let key = v.get("key").and_then(Value::as_str).unwrap_or("any").to_string();
            let record = v.get("record").ok_or_else(|| err("record without a record schema".into()))?;
            match serde_json::from_value::<Field>(record.clone()) {
                Ok(Field::Object(o)) => Def::Record { key, record: o },
                Ok(_) => return Err(err("a record's schema must be an object".into())),
                Err(e) => return Err(err(format!("record: {e}"))),
            }
        }
        "query" => Def::Query { parameters: params(v)?, output: body(v, "output")? },
        "procedure" => Def::Procedure { parameters: params(v)?, input: body(v, "input")?, output: body(v, "output")? },
        "subscription" => Def::Subscription { parameters: params(v)?, message: body(v, "message")? },
        "permission-set" => Def::PermissionSet(v.clone()),
        "ref" | "union" | "unknown" | "params" | "permission" => {
            return Err(err(format!("a {ty} cannot be a top-level definition")));
        }
        _ => Def::Field(serde_json::from_value(v.clone()).map_err(|e| err(e.to_string()))?),
    })
}

/// A set of loaded Lexicon documents.
#[derive(Debug, Default, Clone)]
pub struct Lexicons {
    docs: HashMap<String, HashMap<String, Def>>,
    indexes: BTreeMap<String, Vec<IndexSpec>>,
    merges: BTreeMap<String, MergeKind>,
}

/// How replicas merge concurrent writes to records of a collection (a UES extension: `"merge"`
/// in the record definition; absent means `"lww"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeKind {
    /// A register: the latest write wins (HLC order), deletes are tombstones.
    #[default]
    Lww,
    /// A counter: writes add signed deltas, which sum.
    Counter,
    /// A set of strings: writes add or remove elements; each element's latest action wins.
    Set,
}

/// A secondary index a record Lexicon declares (a UES extension: `"indexes"` in the record
/// definition, `[{"name": "subject", "path": "subject.uri"}]`). The collection indexer keeps,
/// for every record, the string, integer or boolean values found at `path` (arrays on the way
/// are walked, so one record can have several values), and answers "which records have this
/// value": likes of a post, followers of an account, replies in a thread.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IndexSpec {
    /// Name, unique within the collection (`[a-zA-Z][a-zA-Z0-9]*`, at most 64 characters).
    pub name: String,
    /// Dotted path into the record (`subject.uri`, `reply.root.uri`, `tags`).
    pub path: String,
}

impl IndexSpec {
    /// The scalar values of `record` at this index's path, as SQLite values.
    pub fn values(&self, record: &Ipld) -> Vec<IndexValue> {
        let mut out = Vec::new();
        let parts: Vec<&str> = self.path.split('.').collect();
        collect_at(record, &parts, &mut out);
        out.truncate(MAX_INDEX_VALUES);
        out
    }
}

/// At most this many values per record and index (bounds what one record can add).
pub const MAX_INDEX_VALUES: usize = 64;

/// A value kept by an [`IndexSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexValue {
    /// A string (at most 1 KiB is indexed; longer values are skipped).
    Text(String),
    /// An integer (or a boolean, as 0/1).
    Integer(i64),
}

fn collect_at(v: &Ipld, path: &[&str], out: &mut Vec<IndexValue>) {
    if out.len() >= MAX_INDEX_VALUES {
        return;
    }
    match (v, path.split_first()) {
        (Ipld::List(items), _) => items.iter().for_each(|i| collect_at(i, path, out)),
        (Ipld::Map(m), Some((first, rest))) => {
            if let Some(inner) = m.get(*first) {
                collect_at(inner, rest, out);
            }
        }
        (Ipld::String(s), None) if s.len() <= 1024 => out.push(IndexValue::Text(s.clone())),
        (Ipld::Integer(n), None) => {
            if let Ok(n) = i64::try_from(*n) {
                out.push(IndexValue::Integer(n));
            }
        }
        (Ipld::Bool(b), None) => out.push(IndexValue::Integer(i64::from(*b))),
        _ => {}
    }
}

fn parse_indexes(id: &str, def: &Value) -> Result<Vec<IndexSpec>, LexiconError> {
    let Some(raw) = def.get("indexes") else { return Ok(vec![]) };
    let err = |reason: String| LexiconError { id: id.to_string(), reason: format!("#main.indexes: {reason}") };
    let specs: Vec<IndexSpec> = serde_json::from_value(raw.clone()).map_err(|e| err(e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    for s in &specs {
        let ok_name = s.name.len() <= 64
            && s.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.name.chars().all(|c| c.is_ascii_alphanumeric());
        if !ok_name || !seen.insert(s.name.as_str()) {
            return Err(err(format!("bad or repeated index name {:?}", s.name)));
        }
        if s.path.is_empty() || s.path.split('.').any(str::is_empty) || s.path.len() > 256 {
            return Err(err(format!("bad path {:?}", s.path)));
        }
    }
    Ok(specs)
}

fn parse_merge(id: &str, def: &Value) -> Result<MergeKind, LexiconError> {
    match def.get("merge").map(|v| v.as_str()) {
        None | Some(Some("lww")) => Ok(MergeKind::Lww),
        Some(Some("counter")) => Ok(MergeKind::Counter),
        Some(Some("set")) => Ok(MergeKind::Set),
        Some(other) => Err(LexiconError {
            id: id.to_string(),
            reason: format!("#main.merge: {other:?} is not \"lww\", \"counter\" or \"set\""),
        }),
    }
}

/// Nesting bound for validation (data is already bounded by the CBOR decoder; refs can loop).
const MAX_DEPTH: usize = 64;

impl Lexicons {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses, checks and adds one document; returns its id.
    pub fn add(&mut self, doc: &Value) -> Result<String, LexiconError> {
        let claimed = doc.get("id").map(|v| v.to_string()).unwrap_or_default();
        let d: Doc = serde_json::from_value(doc.clone())
            .map_err(|e| LexiconError { id: claimed.clone(), reason: e.to_string() })?;
        if d.lexicon != 1 {
            return Err(LexiconError { id: d.id, reason: format!("lexicon version {} (only 1)", d.lexicon) });
        }
        Nsid::new(&d.id).map_err(|e| LexiconError { id: d.id.clone(), reason: e.to_string() })?;
        let mut defs = HashMap::new();
        for (name, v) in &d.defs {
            defs.insert(name.clone(), parse_def(&d.id, name, v)?);
        }
        let (indexes, merge) = match (d.defs.get("main"), defs.get("main")) {
            (Some(raw), Some(Def::Record { .. })) => (parse_indexes(&d.id, raw)?, parse_merge(&d.id, raw)?),
            _ => (vec![], MergeKind::Lww),
        };
        if merge == MergeKind::Lww {
            self.merges.remove(&d.id);
        } else {
            self.merges.insert(d.id.clone(), merge);
        }
        self.docs.insert(d.id.clone(), defs);
        if indexes.is_empty() {
            self.indexes.remove(&d.id);
        } else {
            self.indexes.insert(d.id.clone(), indexes);
        }
        Ok(d.id)
    }

    /// Loads every `*.json` under `dir` (recursively). Returns how many documents loaded.
    pub fn load_dir(&mut self, dir: &Path) -> Result<usize, LexiconError> {
        let mut n = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d)
                .map_err(|e| LexiconError { id: d.display().to_string(), reason: e.to_string() })?;
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "json") {
                    let text = std::fs::read_to_string(&p)
                        .map_err(|e| LexiconError { id: p.display().to_string(), reason: e.to_string() })?;
                    let v: Value = serde_json::from_str(&text)
                        .map_err(|e| LexiconError { id: p.display().to_string(), reason: e.to_string() })?;
                    self.add(&v)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// How a collection's records merge across replicas (`"merge"` in its record definition).
    pub fn merge_kind(&self, collection: &str) -> MergeKind {
        self.merges.get(collection).copied().unwrap_or_default()
    }

    /// The secondary indexes record Lexicons declare, by collection.
    pub fn indexes(&self) -> &BTreeMap<String, Vec<IndexSpec>> {
        &self.indexes
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether no document is loaded.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// A definition by `nsid` or `nsid#name`.
    pub fn get(&self, reference: &str) -> Option<&Def> {
        let (id, name) = reference.split_once('#').unwrap_or((reference, "main"));
        self.docs.get(id)?.get(name)
    }

    /// Validates a record for `collection`/`rkey`. Collections without a schema give
    /// [`ValidationStatus::Unknown`].
    pub fn validate_record(
        &self,
        collection: &str,
        rkey: &str,
        record: &Ipld,
    ) -> Result<ValidationStatus, ValidationError> {
        let Some(def) = self.get(collection) else { return Ok(ValidationStatus::Unknown) };
        let Def::Record { key, record: schema } = def else {
            return Err(ValidationError { path: "$".into(), message: format!("{collection} is not a record type") });
        };
        check_rkey(key, rkey)?;
        match record.get("$type").and_then(Ipld::as_str) {
            Some(t) if t == collection => {}
            Some(t) => {
                return Err(ValidationError {
                    path: "$.$type".into(),
                    message: format!("must be {collection}, not {t}"),
                });
            }
            None => return Err(ValidationError { path: "$.$type".into(), message: "is required".into() }),
        }
        let v = Validator { lex: self, doc: collection };
        v.object(schema, record, "$", 0)?;
        Ok(ValidationStatus::Valid)
    }

    /// Validates a value against a definition (`nsid#name`), e.g. an XRPC body schema.
    pub fn validate_value(&self, reference: &str, value: &Ipld) -> Result<(), ValidationError> {
        let doc = reference.split('#').next().unwrap_or(reference);
        Validator { lex: self, doc }.reference(reference, value, "$", 0)
    }

    /// Validates an XRPC call's query parameters (as they came, name/value pairs, repeated names
    /// for arrays) against the method's `params`: required names present, values of the declared
    /// type (integers and booleans parsed from their text form), formats and limits. Names the
    /// schema does not declare are ignored, as they are by the reference server. Methods without
    /// a schema here pass.
    pub fn validate_params(&self, method: &str, pairs: &[(String, String)]) -> Result<(), ValidationError> {
        let params = match self.get(method) {
            Some(Def::Query { parameters, .. })
            | Some(Def::Procedure { parameters, .. })
            | Some(Def::Subscription { parameters, .. }) => parameters.as_ref(),
            _ => None,
        };
        let Some(params) = params else { return Ok(()) };
        let v = Validator { lex: self, doc: method };
        for (name, schema) in &params.properties {
            let values: Vec<&str> = pairs.iter().filter(|(k, _)| k == name).map(|(_, x)| x.as_str()).collect();
            if values.is_empty() {
                if params.required.contains(name) {
                    return fail(name, "is a required parameter");
                }
                continue;
            }
            let value = match schema {
                Field::Array { items, .. } => {
                    Ipld::List(values.iter().map(|x| param_value(items, x, name)).collect::<Result<_, _>>()?)
                }
                _ if values.len() > 1 => return fail(name, "must be given once"),
                _ => param_value(schema, values[0], name)?,
            };
            v.field(schema, &value, name, 0)?;
        }
        Ok(())
    }

    /// Validates a body against an XRPC method's input or output schema (`which` is "input"
    /// or "output").
    pub fn validate_body(&self, method: &str, which: &str, value: &Ipld) -> Result<(), ValidationError> {
        let body = match (self.get(method), which) {
            (Some(Def::Procedure { input, .. }), "input") => input.as_ref(),
            (Some(Def::Procedure { output, .. }), "output") | (Some(Def::Query { output, .. }), "output") => {
                output.as_ref()
            }
            _ => None,
        };
        match body.and_then(|b| b.schema.as_ref()) {
            Some(schema) => Validator { lex: self, doc: method }.field(schema, value, "$", 0),
            None => Ok(()),
        }
    }
}

/// A query parameter's text as the data-model value its schema describes.
fn param_value(schema: &Field, text: &str, name: &str) -> Result<Ipld, ValidationError> {
    match schema {
        Field::Integer { .. } => text
            .parse::<i64>()
            .map(|n| Ipld::Integer(n.into()))
            .map_err(|_| ValidationError { path: name.into(), message: format!("must be an integer, not {text:?}") }),
        Field::Boolean { .. } => match text {
            "true" => Ok(Ipld::Bool(true)),
            "false" => Ok(Ipld::Bool(false)),
            _ => fail(name, format!("must be true or false, not {text:?}")),
        },
        _ => Ok(Ipld::String(text.to_string())),
    }
}

fn check_rkey(key: &str, rkey: &str) -> Result<(), ValidationError> {
    let bad = |m: String| Err(ValidationError { path: "rkey".into(), message: m });
    match key {
        "tid" if Tid::new(rkey).is_err() => bad(format!("{rkey:?} is not a TID")),
        "nsid" if Nsid::new(rkey).is_err() => bad(format!("{rkey:?} is not an NSID")),
        k if k.starts_with("literal:") && &k[8..] != rkey => bad(format!("must be {:?}", &k[8..])),
        _ if RecordKey::new(rkey).is_err() => bad(format!("{rkey:?} is not a record key")),
        _ => Ok(()),
    }
}

struct Validator<'a> {
    lex: &'a Lexicons,
    /// The document relative `#name` references resolve in.
    doc: &'a str,
}

fn fail<T>(path: &str, message: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError { path: path.to_string(), message: message.into() })
}

fn mime_matches(pattern: &str, mime: &str) -> bool {
    pattern == "*/*" || pattern == mime || pattern.strip_suffix("/*").is_some_and(|p| mime.split('/').next() == Some(p))
}

fn check_format(format: &str, s: &str) -> Result<(), syntax::SyntaxError> {
    match format {
        "did" => Did::new(s).map(drop),
        "handle" => Handle::new(s).map(drop),
        "at-identifier" => s.parse::<AtIdentifier>().map(drop),
        "nsid" => Nsid::new(s).map(drop),
        "at-uri" => s.parse::<AtUri>().map(drop),
        "cid" => syntax::check_cid_string(s),
        "datetime" => Datetime::new(s).map(drop),
        "language" => Language::new(s).map(drop),
        "uri" => syntax::check_uri(s),
        "tid" => Tid::new(s).map(drop),
        "record-key" => RecordKey::new(s).map(drop),
        _ => Ok(()), // unknown formats are not enforced (forward compatibility)
    }
}

impl Validator<'_> {
    fn full_ref(&self, r: &str) -> String {
        if let Some(local) = r.strip_prefix('#') { format!("{}#{local}", self.doc) } else { r.to_string() }
    }

    fn reference(&self, r: &str, value: &Ipld, path: &str, depth: usize) -> Result<(), ValidationError> {
        if depth > MAX_DEPTH {
            return fail(path, "schema references nest too deeply");
        }
        let full = self.full_ref(r);
        let doc = full.split('#').next().unwrap_or(&full);
        let def = self
            .lex
            .get(&full)
            .ok_or_else(|| ValidationError { path: path.into(), message: format!("unknown schema {full}") })?;
        let inner = Validator { lex: self.lex, doc };
        match def {
            Def::Field(Field::Token) => match value {
                Ipld::String(s) if *s == full || s.strip_suffix("#main") == Some(&full) => Ok(()),
                _ => fail(path, format!("must be the token {full}")),
            },
            Def::Field(f) => inner.field(f, value, path, depth + 1),
            Def::Record { record, .. } => inner.object(record, value, path, depth + 1),
            _ => fail(path, format!("{full} cannot describe data")),
        }
    }

    fn object(&self, o: &ObjectDef, value: &Ipld, path: &str, depth: usize) -> Result<(), ValidationError> {
        let Ipld::Map(m) = value else { return fail(path, format!("must be an object, not {}", value.kind_name())) };
        for req in &o.required {
            if !m.contains_key(req) {
                return fail(&format!("{path}.{req}"), "is required");
            }
        }
        for (name, schema) in &o.properties {
            let Some(v) = m.get(name) else { continue };
            let p = format!("{path}.{name}");
            if matches!(v, Ipld::Null) {
                if o.nullable.contains(name) || matches!(schema, Field::Null) {
                    continue;
                }
                return fail(&p, "must not be null");
            }
            self.field(schema, v, &p, depth + 1)?;
        }
        Ok(())
    }

    fn field(&self, f: &Field, value: &Ipld, path: &str, depth: usize) -> Result<(), ValidationError> {
        if depth > MAX_DEPTH {
            return fail(path, "nested too deeply");
        }
        match f {
            Field::Null => match value {
                Ipld::Null => Ok(()),
                v => fail(path, format!("must be null, not {}", v.kind_name())),
            },
            Field::Boolean { konst } => match value {
                Ipld::Bool(b) if konst.is_none_or(|k| k == *b) => Ok(()),
                Ipld::Bool(_) => fail(path, format!("must be {}", konst.unwrap_or_default())),
                v => fail(path, format!("must be a boolean, not {}", v.kind_name())),
            },
            Field::Integer { minimum, maximum, allowed, konst } => {
                let Ipld::Integer(n) = value else {
                    return fail(path, format!("must be an integer, not {}", value.kind_name()));
                };
                let n = *n;
                if konst.is_some_and(|k| k as i128 != n) {
                    return fail(path, format!("must be {}", konst.unwrap_or_default()));
                }
                if allowed.as_ref().is_some_and(|a| !a.iter().any(|x| *x as i128 == n)) {
                    return fail(path, format!("must be one of {:?}", allowed.as_deref().unwrap_or_default()));
                }
                if minimum.is_some_and(|m| n < m as i128) || maximum.is_some_and(|m| n > m as i128) {
                    return fail(
                        path,
                        format!("must be in {}..={}", minimum.unwrap_or(i64::MIN), maximum.unwrap_or(i64::MAX)),
                    );
                }
                Ok(())
            }
            Field::String { format, min_length, max_length, min_graphemes, max_graphemes, allowed, konst, .. } => {
                let Ipld::String(s) = value else {
                    return fail(path, format!("must be a string, not {}", value.kind_name()));
                };
                if konst.as_ref().is_some_and(|k| k != s) {
                    return fail(path, format!("must be {:?}", konst.as_deref().unwrap_or_default()));
                }
                if allowed.as_ref().is_some_and(|a| !a.contains(s)) {
                    return fail(path, format!("must be one of {:?}", allowed.as_deref().unwrap_or_default()));
                }
                if min_length.is_some_and(|m| s.len() < m) || max_length.is_some_and(|m| s.len() > m) {
                    return fail(
                        path,
                        format!("length {} bytes is outside {:?}..{:?}", s.len(), min_length, max_length),
                    );
                }
                if min_graphemes.is_some() || max_graphemes.is_some() {
                    let g = s.graphemes(true).count();
                    if min_graphemes.is_some_and(|m| g < m) || max_graphemes.is_some_and(|m| g > m) {
                        return fail(path, format!("{g} graphemes is outside {min_graphemes:?}..{max_graphemes:?}"));
                    }
                }
                if let Some(fmt) = format {
                    check_format(fmt, s).map_err(|e| ValidationError {
                        path: path.into(),
                        message: format!("must be a valid {fmt}: {}", e.reason),
                    })?;
                }
                Ok(())
            }
            Field::Bytes { min_length, max_length } => {
                let Ipld::Bytes(b) = value else {
                    return fail(path, format!("must be bytes, not {}", value.kind_name()));
                };
                if min_length.is_some_and(|m| b.len() < m) || max_length.is_some_and(|m| b.len() > m) {
                    return fail(path, format!("{} bytes is outside {min_length:?}..{max_length:?}", b.len()));
                }
                Ok(())
            }
            Field::CidLink => match value {
                Ipld::Link(_) => Ok(()),
                v => fail(path, format!("must be a cid-link, not {}", v.kind_name())),
            },
            Field::Blob { accept, max_size } => {
                let blob = BlobRef::from_ipld(value)
                    .ok_or_else(|| ValidationError { path: path.into(), message: "must be a blob".into() })?;
                if let (Some(max), Some(size)) = (max_size, blob.size)
                    && size > *max
                {
                    return fail(path, format!("blob of {size} bytes exceeds {max}"));
                }
                if let Some(acc) = accept
                    && !acc.iter().any(|p| mime_matches(p, &blob.mime_type))
                {
                    return fail(path, format!("MIME type {} is not one of {acc:?}", blob.mime_type));
                }
                Ok(())
            }
            Field::Array { items, min_length, max_length } => {
                let Ipld::List(list) = value else {
                    return fail(path, format!("must be an array, not {}", value.kind_name()));
                };
                if min_length.is_some_and(|m| list.len() < m) || max_length.is_some_and(|m| list.len() > m) {
                    return fail(path, format!("{} elements is outside {min_length:?}..{max_length:?}", list.len()));
                }
                for (i, item) in list.iter().enumerate() {
                    self.field(items, item, &format!("{path}[{i}]"), depth + 1)?;
                }
                Ok(())
            }
            Field::Object(o) | Field::Params(o) => self.object(o, value, path, depth),
            Field::Token => fail(path, "a token is not a value type"),
            Field::Ref { target } => self.reference(target, value, path, depth + 1),
            Field::Union { refs, closed } => {
                let Ipld::Map(m) = value else {
                    return fail(path, format!("must be an object, not {}", value.kind_name()));
                };
                let Some(t) = m.get("$type").and_then(Ipld::as_str) else {
                    return fail(path, "a union member needs $type");
                };
                let t_full = t.strip_suffix("#main").unwrap_or(t);
                let member =
                    refs.iter().map(|r| self.full_ref(r)).find(|r| r.strip_suffix("#main").unwrap_or(r) == t_full);
                match member {
                    Some(r) => self.reference(&r, value, path, depth + 1),
                    None if *closed => fail(path, format!("$type {t} is not one of {refs:?}")),
                    None => Ok(()), // open union: other types are allowed
                }
            }
            Field::Unknown => match value {
                Ipld::Map(m) if m.get("$type").and_then(Ipld::as_str) == Some("blob") => {
                    fail(path, "must be an object, not a blob")
                }
                Ipld::Map(_) => Ok(()),
                v => fail(path, format!("must be an object, not {}", v.kind_name())),
            },
        }
    }
}
