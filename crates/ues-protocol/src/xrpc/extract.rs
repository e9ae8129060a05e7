//! Body and query extractors whose rejections are XRPC errors (JSON `{"error", "message"}`),
//! not axum's plain-text ones: 413 `PayloadTooLarge` over the body limit, 400 otherwise.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::XrpcError;

/// A JSON request body.
pub(crate) struct XJson<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for XJson<T> {
    type Rejection = XrpcError;

    async fn from_request(req: Request, state: &S) -> Result<Self, XrpcError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(XJson(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> XrpcError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return XrpcError::new(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", "request entity too large");
    }
    XrpcError::invalid(format!("Invalid request body: {}", e.body_text()))
}

/// Query parameters.
pub(crate) struct XQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for XQuery<T> {
    type Rejection = XrpcError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, XrpcError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(XQuery(v)),
            Err(e) => Err(query_rejection(e)),
        }
    }
}

fn query_rejection(e: QueryRejection) -> XrpcError {
    XrpcError::invalid(format!("Invalid query parameters: {}", e.body_text()))
}
