//! REST mirrors of applications' XRPC methods: each route takes the same input as its method
//! (a query's parameters, or a procedure's body, with the fields the path carries), checked
//! against the method's lexicon, runs the same handler and answers the same JSON; the OpenAPI
//! operations are made from the same lexicons.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use ues_protocol::node::extract::{check_input, check_params};
use ues_protocol::node::{Node, NodeError};

/// A query's parameters.
pub(crate) type Params = Vec<(String, String)>;

/// What a handler answers.
pub(crate) type Answer = Result<Json<Value>, NodeError>;

/// (HTTP method, path, XRPC method, the input fields the path carries).
pub(crate) type Route = (&'static str, &'static str, &'static str, &'static [&'static str]);

/// A method's input: a query's parameters or a procedure's body.
pub(crate) enum Input {
    /// A query's.
    Params(Params),
    /// A procedure's.
    Body(Value),
}

/// An application whose methods have REST mirrors.
pub(crate) trait Mirrored: Send + Sync + 'static {
    /// Runs method `nsid` on its (checked) input.
    fn dispatch(self: Arc<Self>, headers: HeaderMap, nsid: &'static str, input: Input) -> BoxFuture<'static, Answer>;

    /// Whether `nsid` is answered without a signed-in caller.
    fn public(&self, nsid: &str) -> bool {
        let _ = nsid;
        false
    }
}

/// A query parameter's value.
pub(crate) fn param<'a>(p: &'a [(String, String)], name: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A query's parameters with those the path carries.
fn with_path(mut p: Params, path: Params) -> Params {
    p.retain(|(k, _)| !path.iter().any(|(n, _)| n == k));
    p.extend(path);
    p
}

/// A procedure's input with the fields the path carries.
fn body_with_path(body: Value, path: Params) -> Result<Value, NodeError> {
    let mut body = match body {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        _ => return Err(NodeError::invalid("the body must be a JSON object")),
    };
    for (k, v) in path {
        body.insert(k, Value::String(v));
    }
    Ok(Value::Object(body))
}

async fn run<A: Mirrored>(
    app: Arc<A>,
    node: Arc<Node>,
    headers: HeaderMap,
    nsid: &'static str,
    input: Input,
    path: Params,
) -> Answer {
    // Who asks comes first (401 before any 400), as on every REST route.
    if !app.public(nsid) {
        crate::peer::caller(&node, &headers, nsid)?;
    }
    let input = match input {
        Input::Params(p) => {
            let p = with_path(p, path);
            check_params(&node, nsid, &p)?;
            Input::Params(p)
        }
        Input::Body(b) => {
            let b = body_with_path(b, path)?;
            check_input(&node, nsid, &b)?;
            Input::Body(b)
        }
    };
    app.dispatch(headers, nsid, input).await
}

/// The REST routes of `table`.
pub(crate) fn routes<A: Mirrored>(app: Arc<A>, node: Arc<Node>, table: &'static [Route]) -> Router {
    let mut router = Router::new();
    for &(method, path, nsid, _) in table {
        let app = app.clone();
        router = match method {
            "get" => router.route(
                path,
                get(
                    move |State(node): State<Arc<Node>>,
                          headers: HeaderMap,
                          Path(at): Path<Params>,
                          Query(p): Query<Params>| {
                        run(app, node, headers, nsid, Input::Params(p), at)
                    },
                ),
            ),
            "delete" => router.route(
                path,
                delete(move |State(node): State<Arc<Node>>, headers: HeaderMap, Path(at): Path<Params>| {
                    run(app, node, headers, nsid, Input::Body(Value::Null), at)
                }),
            ),
            _ => router.route(
                path,
                post(
                    move |State(node): State<Arc<Node>>,
                          headers: HeaderMap,
                          Path(at): Path<Params>,
                          body: axum::body::Bytes| async move {
                        let body = if body.is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_slice(&body)
                                .map_err(|e| NodeError::invalid(format!("Invalid request body: {e}")))?
                        };
                        run(app, node, headers, nsid, Input::Body(body), at).await
                    },
                ),
            ),
        };
    }
    router.with_state(node)
}

/// A lexicon schema as JSON Schema (objects, strings, integers, booleans, arrays, references
/// inside the same document, unions of them; `unknown` is any JSON object).
fn schema(s: &Value, defs: &Map<String, Value>) -> Value {
    match s["type"].as_str() {
        Some("object") => {
            let mut props = Map::new();
            for (k, v) in s["properties"].as_object().into_iter().flatten() {
                props.insert(k.clone(), schema(v, defs));
            }
            let mut o = json!({ "type": "object", "properties": props });
            if let Some(r) = s.get("required") {
                o["required"] = r.clone();
            }
            o
        }
        Some("ref") => {
            let name = s["ref"].as_str().unwrap_or_default().trim_start_matches('#');
            defs.get(name).map_or_else(|| json!({}), |d| schema(d, defs))
        }
        Some("union") => {
            let any: Vec<Value> = s["refs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .filter_map(|r| r.strip_prefix('#'))
                .filter_map(|r| defs.get(r))
                .map(|d| schema(d, defs))
                .collect();
            if any.is_empty() { json!({ "type": "object" }) } else { json!({ "anyOf": any }) }
        }
        Some("array") => {
            let mut o = json!({ "type": "array", "items": schema(&s["items"], defs) });
            if let Some(n) = s.get("maxLength") {
                o["maxItems"] = n.clone();
            }
            if let Some(n) = s.get("minLength") {
                o["minItems"] = n.clone();
            }
            o
        }
        Some(t @ ("string" | "integer" | "boolean")) => {
            let mut o = json!({ "type": t });
            for k in ["maxLength", "minLength", "minimum", "maximum", "default", "description", "enum"] {
                if let Some(v) = s.get(k) {
                    o[k] = v.clone();
                }
            }
            if let Some(f) = s["format"].as_str() {
                o["format"] = Value::String(if f == "datetime" { "date-time".into() } else { f.into() });
            }
            o
        }
        Some("unknown") => json!({ "type": "object" }),
        _ => json!({}),
    }
}

/// The OpenAPI `paths` of `table`'s routes, from `lexicons` (the methods' documents), tagged
/// `tag`; `public` says which methods need no signed-in caller.
pub(crate) fn openapi(lexicons: &[&str], table: &[Route], tag: &str, public: impl Fn(&str) -> bool) -> Value {
    let docs: Vec<Value> =
        lexicons.iter().map(|d| serde_json::from_str(d).expect("the lexicons are valid JSON")).collect();
    let mut paths = Map::new();
    for &(method, path, nsid, in_path) in table {
        let Some(doc) = docs.iter().find(|d| d["id"] == nsid) else { continue };
        let defs = doc["defs"].as_object().cloned().unwrap_or_default();
        let main = &defs["main"];
        let mut parameters: Vec<Value> = in_path
            .iter()
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        for (name, p) in main["parameters"]["properties"].as_object().into_iter().flatten() {
            if in_path.contains(&name.as_str()) {
                continue;
            }
            let required = main["parameters"]["required"].as_array().is_some_and(|r| r.iter().any(|x| x == name));
            parameters.push(json!({ "name": name, "in": "query", "required": required, "schema": schema(p, &defs) }));
        }
        let mut op = json!({
            "tags": [tag],
            "operationId": nsid.rsplit('.').next().unwrap_or(nsid),
            "summary": main["description"],
            "description": format!("The REST form of XRPC `{nsid}`."),
            "parameters": parameters,
            "responses": {
                "200": { "description": "OK", "content": { "application/json": { "schema": schema(&main["output"]["schema"], &defs) } } },
                "400": { "description": "Refused: the body names the error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiError" } } } },
            },
        });
        if !public(nsid) {
            op["security"] = json!([{ "bearer": [] }]);
            op["responses"]["401"] = json!({ "description": "Not signed in", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiError" } } } });
        }
        if method == "post" {
            let mut body = schema(&main["input"]["schema"], &defs);
            if let Some(props) = body["properties"].as_object_mut() {
                for p in in_path {
                    props.remove(*p);
                }
            }
            if let Some(req) = body["required"].as_array_mut() {
                req.retain(|r| !in_path.iter().any(|p| r == p));
            }
            op["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": body } } });
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method] = op;
    }
    Value::Object(paths)
}
