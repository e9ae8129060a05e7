//! The node's one error type. Every operation fails with a [`NodeError`]: what kind of failure
//! it is ([`Kind`], which each face maps to its own statuses), the name clients match on
//! (`InvalidRequest`, `RecordNotFound`, ...; the reference PDS's names), the status XRPC
//! answers it with (the reference PDS's), and a message for people (never internals).
//! Rendered as a response it is XRPC's `{"error": Name, "message": ...}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use ues_sync::repo::accounts::AccountError;
use ues_sync::repo::repo::RepoError;

/// What kind of failure an error is: the part of it a face decides its answer by. XRPC keeps
/// the reference PDS's statuses (many of these are its 400s); REST answers by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or breaks a rule (a lexicon, a limit).
    Invalid,
    /// No credentials, or credentials that are bad, expired or revoked.
    Unauthenticated,
    /// Credentials that do not reach what was asked.
    Forbidden,
    /// What was named is not here (or not readable: taken down, suspended, deactivated).
    NotFound,
    /// The request conflicts with what exists (a taken handle or email, a record that exists).
    Conflict,
    /// A precondition failed: the state changed since the client last saw it (a swap).
    Stale,
    /// Larger than allowed.
    TooLarge,
    /// Over a rate limit.
    RateLimited,
    /// The method or service is not available on this node.
    Unavailable,
    /// A failure of the node itself (logged, never described to the client).
    Internal,
}

impl Kind {
    /// The kind an explicit status implies.
    fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            401 => Kind::Unauthenticated,
            403 => Kind::Forbidden,
            404 => Kind::NotFound,
            409 => Kind::Conflict,
            412 => Kind::Stale,
            413 => Kind::TooLarge,
            429 => Kind::RateLimited,
            501..=504 => Kind::Unavailable,
            500.. => Kind::Internal,
            _ => Kind::Invalid,
        }
    }
}

/// An error an operation returns to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeError {
    /// What kind of failure it is.
    pub kind: Kind,
    /// The status XRPC answers with (the reference PDS's).
    pub status: StatusCode,
    /// The error name clients match on (`InvalidRequest`, `ExpiredToken`, ...).
    pub error: String,
    /// Human-readable detail (never internals).
    pub message: String,
}

impl NodeError {
    /// An error with an explicit status and name; its kind follows from the status.
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self { kind: Kind::of(status), status, error: error.to_string(), message: message.into() }
    }

    /// An error of a given kind answered over XRPC as 400 with a specific name (the reference
    /// PDS answers most failures so).
    pub fn kind(kind: Kind, error: &str, message: impl Into<String>) -> Self {
        Self { kind, ..Self::bad(error, message) }
    }

    /// A conflict with what exists: 400 with a specific name over XRPC, 409 over REST.
    pub fn conflict(error: &str, message: impl Into<String>) -> Self {
        Self::kind(Kind::Conflict, error, message)
    }

    /// Something named that is not here: 400 with a specific name over XRPC, 404 over REST.
    pub fn not_found(error: &str, message: impl Into<String>) -> Self {
        Self::kind(Kind::NotFound, error, message)
    }

    /// A token that is expired, revoked or of the wrong scope: 400 with a specific name over
    /// XRPC (what clients take as the signal to refresh), 401 over REST.
    pub fn token(error: &str, message: impl Into<String>) -> Self {
        Self::kind(Kind::Unauthenticated, error, message)
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

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            tracing::info!(status = self.status.as_u16(), error = %self.error, message = %self.message, "request refused");
        }
        (self.status, Json(json!({ "error": self.error, "message": self.message }))).into_response()
    }
}

impl From<RepoError> for NodeError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::InvalidSwap(m) => NodeError::kind(Kind::Stale, "InvalidSwap", m),
            RepoError::RecordExists(p) => NodeError::conflict("InvalidRequest", format!("Record already exists: {p}")),
            RepoError::RecordNotFound(p) => {
                NodeError::not_found("RecordNotFound", format!("Could not locate record: {p}"))
            }
            RepoError::InvalidRecord { path, reason } => NodeError::invalid(format!("Invalid record {path}: {reason}")),
            other => NodeError::internal(other),
        }
    }
}

impl From<AccountError> for NodeError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::NotFound(d) => NodeError::not_found("RepoNotFound", format!("Could not find repo: {d}")),
            AccountError::Taken(m) => NodeError::conflict("HandleNotAvailable", format!("Handle already taken: {m}")),
            AccountError::BlobNotFound(c) => NodeError::not_found("BlobNotFound", format!("Could not find blob: {c}")),
            AccountError::Repo(r) => (*r).into(),
            other => NodeError::internal(other),
        }
    }
}
