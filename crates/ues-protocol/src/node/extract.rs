//! Body and query extractors whose rejections are XRPC errors (JSON `{"error", "message"}`),
//! not axum's plain-text ones: 413 `PayloadTooLarge` over the body limit, 400 otherwise.
//!
//! Validation is driven by the lexicons: [`validate_params`] (a middleware) checks every
//! `/xrpc/<nsid>` call's query parameters against the method's `params`, and [`XJson`] checks a
//! procedure's JSON body against its `input` schema before the handler sees it.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;
use ues_sync::repo::ipld::json::body_from_json;
use ues_sync::repo::lexicon::{Def, ValidationError};

use super::{Node, NodeError};

/// A JSON request body, validated against the method's lexicon input schema when there is one.
pub struct XJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Node>> for XJson<T> {
    type Rejection = NodeError;

    async fn from_request(req: Request, state: &Arc<Node>) -> Result<Self, NodeError> {
        let method = req.uri().path().strip_prefix("/xrpc/").map(str::to_owned);
        let value = match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(e) => return Err(json_rejection(e)),
        };
        if let Some(method) = method.filter(|m| has_input_schema(state, m)) {
            let ipld = body_from_json(&value).map_err(|e| NodeError::invalid(format!("Invalid request body: {e}")))?;
            state.lexicons.validate_body(&method, "input", &ipld).map_err(|e| invalid("Input", e))?;
        }
        serde_json::from_value(value).map(XJson).map_err(|e| NodeError::invalid(format!("Invalid request body: {e}")))
    }
}

/// Checks a JSON body against the input schema of the XRPC method `method` (for REST routes
/// that mirror a method: the same refusals as the XRPC call).
pub fn check_input(node: &Node, method: &str, value: &Value) -> Result<(), NodeError> {
    if has_input_schema(node, method) {
        let ipld = body_from_json(value).map_err(|e| NodeError::invalid(format!("Invalid request body: {e}")))?;
        node.lexicons.validate_body(method, "input", &ipld).map_err(|e| invalid("Input", e))?;
    }
    Ok(())
}

/// Checks query parameters against the XRPC method `method`'s parameters (for REST routes that
/// mirror a method).
pub fn check_params(node: &Node, method: &str, pairs: &[(String, String)]) -> Result<(), NodeError> {
    node.lexicons.validate_params(method, pairs).map_err(|e| invalid("Params", e))
}

fn has_input_schema(state: &Node, method: &str) -> bool {
    matches!(state.lexicons.get(method), Some(Def::Procedure { input: Some(b), .. }) if b.schema.is_some())
}

/// `Input/repo must be ...` / `Params/limit must be ...`: the failing path, then the reason.
fn invalid(what: &str, e: ValidationError) -> NodeError {
    let path = e.path.strip_prefix("$.").or_else(|| e.path.strip_prefix('$')).unwrap_or(&e.path);
    let at = if path.is_empty() { String::new() } else { format!("/{path}") };
    NodeError::invalid(format!("{what}{at} {}", e.message))
}

fn json_rejection(e: JsonRejection) -> NodeError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return NodeError::new(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", "request entity too large");
    }
    NodeError::invalid(format!("Invalid request body: {}", e.body_text()))
}

/// Query parameters.
pub(crate) struct XQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for XQuery<T> {
    type Rejection = NodeError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, NodeError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(XQuery(v)),
            Err(e) => Err(query_rejection(e)),
        }
    }
}

fn query_rejection(e: QueryRejection) -> NodeError {
    NodeError::invalid(format!("Invalid query parameters: {}", e.body_text()))
}

/// Middleware: refuses an XRPC call whose query parameters do not match the method's lexicon
/// (missing required ones, wrong types, bad formats, out-of-range limits) with 400
/// `InvalidRequest` naming the parameter, before any handler runs.
pub(crate) async fn validate_params(State(state): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if let Some(method) = req.uri().path().strip_prefix("/xrpc/") {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Err(e) = state.lexicons.validate_params(method, &pairs) {
            return invalid("Params", e).into_response();
        }
    }
    next.run(req).await
}
