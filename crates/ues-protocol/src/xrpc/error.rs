//! XRPC errors: `{"error": Name, "message": ...}` with the reference PDS's names and statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use ues_sync::repo::accounts::AccountError;
use ues_sync::repo::repo::RepoError;

/// An error an XRPC call returns to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XrpcError {
    /// HTTP status.
    pub status: StatusCode,
    /// The error name clients match on (`InvalidRequest`, `ExpiredToken`, ...).
    pub error: String,
    /// Human-readable detail (never internals).
    pub message: String,
    /// The request conflicts with what exists (a taken handle or email, a record that exists).
    /// XRPC answers it as its status and name say (the reference PDS's 400s); REST as 409.
    pub conflict: bool,
}

impl XrpcError {
    /// An error with an explicit status and name.
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self { status, error: error.to_string(), message: message.into(), conflict: false }
    }

    /// A conflict with what exists: 400 with a specific name over XRPC, 409 over REST.
    pub fn conflict(error: &str, message: impl Into<String>) -> Self {
        Self { conflict: true, ..Self::bad(error, message) }
    }

    /// 400 InvalidRequest.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }

    /// 400 with a specific name.
    pub fn bad(error: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, message)
    }

    /// 401 AuthenticationRequired.
    pub fn auth_required(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AuthenticationRequired", message)
    }

    /// 500; the detail is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "Internal Server Error")
    }
}

impl IntoResponse for XrpcError {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            tracing::info!(status = self.status.as_u16(), error = %self.error, message = %self.message, "xrpc error");
        }
        (self.status, Json(json!({ "error": self.error, "message": self.message }))).into_response()
    }
}

impl From<RepoError> for XrpcError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::InvalidSwap(m) => XrpcError::bad("InvalidSwap", m),
            RepoError::RecordExists(p) => XrpcError::conflict("InvalidRequest", format!("Record already exists: {p}")),
            RepoError::RecordNotFound(p) => XrpcError::bad("RecordNotFound", format!("Could not locate record: {p}")),
            RepoError::InvalidRecord { path, reason } => XrpcError::invalid(format!("Invalid record {path}: {reason}")),
            other => XrpcError::internal(other),
        }
    }
}

impl From<AccountError> for XrpcError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::NotFound(d) => XrpcError::bad("RepoNotFound", format!("Could not find repo: {d}")),
            AccountError::Taken(m) => XrpcError::conflict("HandleNotAvailable", format!("Handle already taken: {m}")),
            AccountError::BlobNotFound(c) => XrpcError::bad("BlobNotFound", format!("Could not find blob: {c}")),
            AccountError::Repo(r) => (*r).into(),
            other => XrpcError::internal(other),
        }
    }
}
