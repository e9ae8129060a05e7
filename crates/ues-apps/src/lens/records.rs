//! Records read and written through schema lenses ([`super::schema`]).
//!
//! A lens is declared with `dev.ues.lens.createSchemaLens`: the two lexicon documents (the
//! source, which the records are stored under, and the target, which an app speaks) and the
//! operations between them; it is checked against both and stored as the caller's
//! `dev.ues.lens.schema` record (key: the target's NSID). `dev.ues.lens.getRecord` and
//! `listRecords` with `schema` (the lens's URI) answer source records in the target's shape;
//! `dev.ues.lens.putRecord` takes a target-shaped record and writes it back in the source's
//! shape, keeping what the target cannot say from the record it replaces (and only if that
//! record is still the one read: a concurrent write is refused, never overwritten).

use std::sync::Arc;

use axum::Json;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use ues_protocol::node::records::RecordWrite;
use ues_protocol::node::{Node, NodeError, blocking};
use ues_protocol::sync::repo::syntax::Nsid;

use super::schema::{self, SchemaLens};
use crate::mirror::{Answer, param};

/// The collection of schema lenses.
pub(super) const SCHEMA: &str = "dev.ues.lens.schema";

/// A lens and the NSIDs it maps between.
struct Loaded {
    lens: SchemaLens,
    source: String,
    target: String,
}

fn lens_error(e: schema::LensError) -> NodeError {
    NodeError::bad("InvalidSchemaLens", e.to_string())
}

fn doc_id(doc: &Value, which: &str) -> Result<String, NodeError> {
    doc.get("id")
        .and_then(Value::as_str)
        .filter(|id| Nsid::new(*id).is_ok())
        .map(str::to_string)
        .ok_or_else(|| NodeError::bad("InvalidSchemaLens", format!("{which}: a lexicon document with an NSID id")))
}

/// The lens a `schema` parameter names (`at://did/dev.ues.lens.schema/<target nsid>`).
fn load(node: &Node, uri: &str) -> Result<Loaded, NodeError> {
    let (did, rkey) = uri
        .strip_prefix("at://")
        .and_then(|r| r.split_once('/'))
        .and_then(|(did, rest)| rest.strip_prefix(&format!("{SCHEMA}/")).map(|k| (did, k)))
        .ok_or_else(|| NodeError::invalid(format!("schema is a {SCHEMA} record's at:// URI")))?;
    let found = node.get_record(did, SCHEMA, rkey, None).map_err(|e| {
        if e.error == "RecordNotFound" {
            NodeError::not_found("SchemaLensNotFound", format!("no schema lens {uri}"))
        } else {
            e
        }
    })?;
    let v = found.value;
    let lens = schema::parse(&v["lens"]).map_err(lens_error)?;
    Ok(Loaded { lens, source: doc_id(&v["source"], "source")?, target: doc_id(&v["target"], "target")? })
}

fn strip_type(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("$type");
    }
    v
}

fn with_type(mut v: Value, t: &str) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.insert("$type".into(), Value::String(t.to_string()));
    }
    v
}

impl Loaded {
    fn read(&self, record: Value) -> Result<Value, NodeError> {
        let out = self.lens.get(&strip_type(record)).map_err(|e| NodeError::bad("LensFailed", e.to_string()))?;
        Ok(with_type(out, &self.target))
    }
}

/// `dev.ues.lens.createSchemaLens`.
pub(super) async fn create(node: Arc<Node>, headers: HeaderMap, body: Value) -> Answer {
    let claims = node.access(&headers)?;
    blocking(move || {
        let (source, target) = (&body["source"], &body["target"]);
        let (sid, tid) = (doc_id(source, "source")?, doc_id(target, "target")?);
        if sid == tid {
            return Err(NodeError::bad("InvalidSchemaLens", "the source and the target are the same lexicon"));
        }
        let lens_json = json!({ "ops": body.get("ops").cloned().unwrap_or(Value::Null) });
        let lens = schema::parse(&lens_json).map_err(lens_error)?;
        lens.check(source, target).map_err(lens_error)?;
        let record = json!({
            "$type": SCHEMA,
            "source": source,
            "target": target,
            "lens": lens_json,
            "createdAt": ues_protocol::node::sequencer::iso_from_millis(super::now_ms()),
        });
        let w = node.put_record(
            &claims,
            None,
            RecordWrite {
                repo: claims.sub.clone(),
                collection: SCHEMA.into(),
                rkey: Some(tid.clone()),
                record,
                validate: Some(true),
                swap_record: None,
                swap_commit: None,
            },
        )?;
        Ok(Json(json!({ "uri": w.uri, "cid": w.cid, "source": sid, "target": tid })))
    })
    .await
}

/// `dev.ues.lens.getRecord`.
pub(super) async fn get_record(node: Arc<Node>, p: Vec<(String, String)>) -> Answer {
    blocking(move || {
        let need = |k: &str| param(&p, k).ok_or_else(|| NodeError::invalid(format!("{k} is required")));
        let lens = load(&node, need("schema")?)?;
        let found = node.get_record(need("repo")?, &lens.source, need("rkey")?, None)?;
        let value = lens.read(found.value)?;
        Ok(Json(json!({ "uri": found.uri, "cid": found.cid, "value": value })))
    })
    .await
}

/// `dev.ues.lens.listRecords`.
pub(super) async fn list_records(node: Arc<Node>, p: Vec<(String, String)>) -> Answer {
    blocking(move || {
        let need = |k: &str| param(&p, k).ok_or_else(|| NodeError::invalid(format!("{k} is required")));
        let lens = load(&node, need("schema")?)?;
        let limit = match param(&p, "limit") {
            None => 50,
            Some(l) => l.parse().map_err(|_| NodeError::invalid("limit must be an integer from 1 to 100"))?,
        };
        let page = node.list_records(need("repo")?, &lens.source, limit, param(&p, "cursor"), false)?;
        let mut records = Vec::new();
        for r in page.records {
            records.push(json!({ "uri": r.uri, "cid": r.cid, "value": lens.read(r.value)? }));
        }
        let mut out = json!({ "records": records });
        if let Some(c) = page.cursor {
            out["cursor"] = Value::String(c);
        }
        Ok(Json(out))
    })
    .await
}

/// `dev.ues.lens.putRecord`.
pub(super) async fn put_record(node: Arc<Node>, headers: HeaderMap, body: Value) -> Answer {
    let claims = node.access(&headers)?;
    blocking(move || {
        let need = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| NodeError::invalid(format!("{k} is required")))
        };
        let lens = load(&node, &need("schema")?)?;
        let (repo, rkey) = (need("repo")?, need("rkey")?);
        let target = body
            .get("record")
            .filter(|r| r.is_object())
            .cloned()
            .ok_or_else(|| NodeError::invalid("record is required"))?;
        // The record it replaces: what the target cannot say is kept from it.
        let original = match node.get_record(&repo, &lens.source, &rkey, None) {
            Ok(r) => Some(r),
            Err(e) if e.error == "RecordNotFound" => None,
            Err(e) => return Err(e),
        };
        let source = lens
            .lens
            .put(&strip_type(target), original.as_ref().map(|o| strip_type(o.value.clone())).as_ref())
            .map_err(|e| NodeError::bad("LensFailed", e.to_string()))?;
        let swap = match &original {
            Some(o) => Some(Some(o.cid.parse().map_err(NodeError::internal)?)),
            None => Some(None),
        };
        let w = node.put_record(
            &claims,
            None,
            RecordWrite {
                repo,
                collection: lens.source.clone(),
                rkey: Some(rkey),
                record: with_type(source, &lens.source),
                validate: None,
                swap_record: swap,
                swap_commit: None,
            },
        )?;
        Ok(Json(json!({ "uri": w.uri, "cid": w.cid })))
    })
    .await
}
