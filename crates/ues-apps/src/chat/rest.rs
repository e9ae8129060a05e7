//! The chat over REST (`/api/v1/chat/...`): each route mirrors one XRPC method, takes the
//! same input (checked against the method's lexicon), runs the same handler and answers the
//! same JSON; the OpenAPI operations are made from the same lexicons.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use serde_json::{Map, Value, json};
use ues_protocol::node::extract::{check_input, check_params};
use ues_protocol::node::{Node, NodeError};

use super::{Answer, Chat};

/// The chat's lexicons, for the OpenAPI document.
const LEXICONS: &[&str] = &[
    include_str!("../../../../lexicons/dev/ues/chat/uploadKeys.json"),
    include_str!("../../../../lexicons/dev/ues/chat/queryKeys.json"),
    include_str!("../../../../lexicons/dev/ues/chat/claimKeys.json"),
    include_str!("../../../../lexicons/dev/ues/chat/sendToDevice.json"),
    include_str!("../../../../lexicons/dev/ues/chat/getInbox.json"),
    include_str!("../../../../lexicons/dev/ues/chat/ackInbox.json"),
    include_str!("../../../../lexicons/dev/ues/chat/createConvo.json"),
    include_str!("../../../../lexicons/dev/ues/chat/listConvos.json"),
    include_str!("../../../../lexicons/dev/ues/chat/sendMessage.json"),
    include_str!("../../../../lexicons/dev/ues/chat/getMessages.json"),
    include_str!("../../../../lexicons/dev/ues/chat/addMember.json"),
    include_str!("../../../../lexicons/dev/ues/chat/removeMember.json"),
    include_str!("../../../../lexicons/dev/ues/chat/leaveConvo.json"),
];

/// (HTTP method, path, XRPC method, the input fields the path carries).
const ROUTES: &[(&str, &str, &str, &[&str])] = &[
    ("post", "/api/v1/chat/keys", "dev.ues.chat.uploadKeys", &[]),
    ("get", "/api/v1/chat/keys/{did}", "dev.ues.chat.queryKeys", &["did"]),
    ("post", "/api/v1/chat/keys/{did}/{deviceId}/claim", "dev.ues.chat.claimKeys", &["did", "deviceId"]),
    ("post", "/api/v1/chat/to-device", "dev.ues.chat.sendToDevice", &[]),
    ("get", "/api/v1/chat/inbox/{deviceId}", "dev.ues.chat.getInbox", &["deviceId"]),
    ("post", "/api/v1/chat/inbox/{deviceId}/ack", "dev.ues.chat.ackInbox", &["deviceId"]),
    ("post", "/api/v1/chat/convos", "dev.ues.chat.createConvo", &[]),
    ("get", "/api/v1/chat/convos", "dev.ues.chat.listConvos", &[]),
    ("post", "/api/v1/chat/convos/{convoId}/messages", "dev.ues.chat.sendMessage", &["convoId"]),
    ("get", "/api/v1/chat/convos/{convoId}/messages", "dev.ues.chat.getMessages", &["convoId"]),
    ("post", "/api/v1/chat/convos/{convoId}/members", "dev.ues.chat.addMember", &["convoId"]),
    ("delete", "/api/v1/chat/convos/{convoId}/members/{did}", "dev.ues.chat.removeMember", &["convoId", "did"]),
    ("post", "/api/v1/chat/convos/{convoId}/leave", "dev.ues.chat.leaveConvo", &["convoId"]),
];

type Params = Vec<(String, String)>;

/// A query's parameters with those the path carries.
fn with_path(mut p: Params, path: Vec<(String, String)>) -> Params {
    p.retain(|(k, _)| !path.iter().any(|(n, _)| n == k));
    p.extend(path);
    p
}

/// A procedure's input with the fields the path carries.
fn body_with_path(body: Value, path: Vec<(String, String)>) -> Result<Value, NodeError> {
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

async fn query(
    app: Arc<Chat>,
    node: Arc<Node>,
    headers: HeaderMap,
    nsid: &'static str,
    p: Params,
    path: Vec<(String, String)>,
) -> Answer {
    // Who asks comes first (401 before any 400), as on every REST route.
    super::caller(&node, &headers, nsid)?;
    let p = with_path(p, path);
    check_params(&node, nsid, &p)?;
    match nsid {
        "dev.ues.chat.queryKeys" => super::query_keys(app, headers, p).await,
        "dev.ues.chat.getInbox" => super::get_inbox(app, headers, p).await,
        "dev.ues.chat.listConvos" => super::list_convos(app, headers, p).await,
        _ => super::get_messages(app, headers, p).await,
    }
}

async fn procedure(
    app: Arc<Chat>,
    node: Arc<Node>,
    headers: HeaderMap,
    nsid: &'static str,
    body: Value,
    path: Vec<(String, String)>,
) -> Answer {
    super::caller(&node, &headers, nsid)?;
    let body = body_with_path(body, path)?;
    check_input(&node, nsid, &body)?;
    match nsid {
        "dev.ues.chat.uploadKeys" => super::upload_keys(app, headers, body).await,
        "dev.ues.chat.claimKeys" => super::claim_keys(app, headers, body).await,
        "dev.ues.chat.sendToDevice" => super::send_to_device(app, headers, body).await,
        "dev.ues.chat.ackInbox" => super::ack_inbox(app, headers, body).await,
        "dev.ues.chat.createConvo" => super::create_convo(app, headers, body).await,
        "dev.ues.chat.sendMessage" => super::send_message(app, headers, body).await,
        "dev.ues.chat.addMember" => super::add_member(app, headers, body).await,
        "dev.ues.chat.removeMember" => super::remove_member(app, headers, body).await,
        _ => super::leave_convo(app, headers, body).await,
    }
}

/// The REST routes.
pub(super) fn routes(app: Arc<Chat>, node: Arc<Node>) -> Router {
    let mut router = Router::new();
    for &(method, path, nsid, _) in ROUTES {
        let app = app.clone();
        router = match method {
            "get" => router.route(
                path,
                get(
                    move |State(node): State<Arc<Node>>,
                          headers: HeaderMap,
                          Path(at): Path<Vec<(String, String)>>,
                          Query(p): Query<Params>| { query(app, node, headers, nsid, p, at) },
                ),
            ),
            "delete" => router.route(
                path,
                delete(
                    move |State(node): State<Arc<Node>>, headers: HeaderMap, Path(at): Path<Vec<(String, String)>>| {
                        procedure(app, node, headers, nsid, Value::Null, at)
                    },
                ),
            ),
            _ => router.route(
                path,
                post(
                    move |State(node): State<Arc<Node>>,
                          headers: HeaderMap,
                          Path(at): Path<Vec<(String, String)>>,
                          body: axum::body::Bytes| async move {
                        let body = if body.is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_slice(&body)
                                .map_err(|e| NodeError::invalid(format!("Invalid request body: {e}")))?
                        };
                        procedure(app, node, headers, nsid, body, at).await
                    },
                ),
            ),
        };
    }
    router.with_state(node)
}

/// A lexicon schema as JSON Schema (objects, strings, integers, booleans, arrays, references
/// inside the same document; `unknown` is any JSON object).
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
            for k in ["maxLength", "minLength", "minimum", "maximum", "default", "description"] {
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

/// The OpenAPI `paths` of the chat's REST routes, from its lexicons.
pub(super) fn openapi() -> Value {
    let docs: Vec<Value> =
        LEXICONS.iter().map(|d| serde_json::from_str(d).expect("the lexicons are valid JSON")).collect();
    let mut paths = Map::new();
    for &(method, path, nsid, in_path) in ROUTES {
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
            "tags": ["chat"],
            "operationId": nsid.rsplit('.').next().unwrap_or(nsid),
            "summary": main["description"],
            "description": format!("The REST form of XRPC `{nsid}`."),
            "parameters": parameters,
            "security": [{ "bearer": [] }],
            "responses": {
                "200": { "description": "OK", "content": { "application/json": { "schema": schema(&main["output"]["schema"], &defs) } } },
                "400": { "description": "Refused: the body names the error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiError" } } } },
                "401": { "description": "Not signed in", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiError" } } } },
            },
        });
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
