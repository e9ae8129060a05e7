//! The methods that work by emailed token: confirming and changing the account's email,
//! resetting a forgotten password, deleting the account, and the operator's
//! `admin.sendEmail`. Tokens are single-use and expire ([`crate::node::tokens`]); mail goes
//! through the node's [`crate::node::mail::Mailer`].

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use ues_sync::repo::syntax::Did;

use crate::node::auth::{check_password, full_session, hash_password, require_full, revoke_sessions};
use crate::node::extract::XJson;
use crate::node::mail::Template;
use crate::node::tokens::{self, Purpose};
use crate::node::{Node, NodeError, blocking, credentials};

/// Longest password taken (the reference's limit on new passwords).
const MAX_PASSWORD: usize = 256;

/// Longest `admin.sendEmail` content.
const MAX_NOTICE: usize = 10_000;

/// The account's email, or the reference's refusal when it has none.
fn email_of(st: &Node, did: &Did) -> Result<String, NodeError> {
    credentials::email(st.accounts.db(), did)
        .map_err(NodeError::internal)?
        .ok_or_else(|| NodeError::invalid("account does not have an email address"))
}

fn token_ttl(st: &Node) -> Result<std::time::Duration, NodeError> {
    Ok(st.mailer()?.token_ttl())
}

/// An address as the node takes it: one `@`, no spaces, at most 254 bytes, and one `lettre`
/// can send to.
pub(crate) fn valid_email(email: &str) -> Result<String, NodeError> {
    let e = email.trim().to_ascii_lowercase();
    if e.len() > 254 || e.parse::<lettre::Address>().is_err() {
        return Err(NodeError::invalid("This email address is not supported, please use a different email."));
    }
    Ok(e)
}

pub(crate) async fn request_email_confirmation(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<StatusCode, NodeError> {
    let claims = st.access(&headers)?;
    blocking(move || {
        let did = Did::new(claims.sub).map_err(NodeError::internal)?;
        st.send_token(&did, Purpose::ConfirmEmail)?;
        Ok(StatusCode::OK)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfirmEmail {
    email: String,
    token: String,
}

pub(crate) async fn confirm_email(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<ConfirmEmail>,
) -> Result<StatusCode, NodeError> {
    let claims = st.access(&headers)?;
    blocking(move || {
        let did = Did::new(claims.sub).map_err(NodeError::internal)?;
        let current = email_of(&st, &did)?;
        if !current.eq_ignore_ascii_case(b.email.trim()) {
            return Err(NodeError::bad("InvalidEmail", "invalid email"));
        }
        tokens::spend(st.accounts.db(), &did, Purpose::ConfirmEmail, &b.token, token_ttl(&st)?)?;
        tokens::confirm_email(st.accounts.db(), &did)?;
        tracing::info!(%did, "email confirmed");
        Ok(StatusCode::OK)
    })
    .await
}

pub(crate) async fn request_email_update(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<Value>, NodeError> {
    let did = full_session(&st, &headers)?;
    blocking(move || {
        email_of(&st, &did)?;
        // An unconfirmed address may be changed without a token: nobody proved it theirs.
        let required = tokens::email_confirmed_at(st.accounts.db(), &did)?.is_some();
        if required {
            st.send_token(&did, Purpose::UpdateEmail)?;
        }
        Ok(Json(json!({ "tokenRequired": required })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct UpdateEmail {
    email: String,
    /// Two-factor sign-in by email: a code mailed to the (confirmed) address on every sign-in
    /// with the account password.
    #[serde(default)]
    email_auth_factor: Option<bool>,
    token: Option<String>,
}

pub(crate) async fn update_email(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<UpdateEmail>,
) -> Result<StatusCode, NodeError> {
    let did = full_session(&st, &headers)?;
    let email = valid_email(&b.email)?;
    blocking(move || {
        if tokens::email_confirmed_at(st.accounts.db(), &did)?.is_some() {
            let token =
                b.token.as_deref().ok_or_else(|| NodeError::bad("TokenRequired", "confirmation token required"))?;
            tokens::spend(st.accounts.db(), &did, Purpose::UpdateEmail, token, token_ttl(&st)?)?;
        }
        let current = email_of(&st, &did)?;
        if b.email_auth_factor == Some(true)
            && (current != email || tokens::email_confirmed_at(st.accounts.db(), &did)?.is_none())
        {
            // Codes go to an address the account has proved it reads, never to a new one.
            return Err(NodeError::invalid("Confirm your email address before turning on sign-in codes."));
        }
        if current != email {
            if !credentials::set_email(st.accounts.db(), &did, &email).map_err(NodeError::internal)? {
                return Err(NodeError::invalid("This email address is already in use, please use a different email."));
            }
            tracing::info!(%did, "email changed");
            // A new address is not confirmed yet: sign-in codes stop until it is and they are
            // asked for again (a mistyped address must not lock the account out).
            if tokens::email_auth_factor(st.accounts.db(), &did)? && b.email_auth_factor.is_none() {
                tokens::set_email_auth_factor(st.accounts.db(), &did, false)?;
            }
        }
        if let Some(on) = b.email_auth_factor {
            tokens::set_email_auth_factor(st.accounts.db(), &did, on)?;
            tracing::info!(%did, on, "two-factor sign-in by email set");
        }
        Ok(StatusCode::OK)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestPasswordReset {
    email: String,
}

/// Mails a reset token to the account with this email. Answers the same whether or not one
/// has it, so the method tells nobody which addresses have accounts here.
pub(crate) async fn request_password_reset(
    State(st): State<Arc<Node>>,
    XJson(b): XJson<RequestPasswordReset>,
) -> Result<StatusCode, NodeError> {
    st.mailer()?;
    blocking(move || {
        let email = b.email.trim().to_ascii_lowercase();
        let did = credentials::did_by_email(st.accounts.db(), &email).map_err(NodeError::internal)?;
        match did.map(Did::new).transpose().map_err(NodeError::internal)? {
            Some(did) => st.send_token(&did, Purpose::ResetPassword)?,
            None => tracing::info!("password reset asked for an address no account has"),
        }
        Ok(StatusCode::OK)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetPassword {
    token: String,
    password: String,
}

/// Sets a new password with an emailed token; every session and refresh token of the account
/// ends.
pub(crate) async fn reset_password(
    State(st): State<Arc<Node>>,
    XJson(b): XJson<ResetPassword>,
) -> Result<StatusCode, NodeError> {
    if b.password.len() > MAX_PASSWORD {
        return Err(NodeError::invalid("Invalid password length."));
    }
    if b.password.len() < 8 {
        return Err(NodeError::bad("InvalidPassword", "Password must be at least 8 characters"));
    }
    blocking(move || {
        let did = tokens::spend_any(st.accounts.db(), Purpose::ResetPassword, &b.token, token_ttl(&st)?)?;
        credentials::set_password_hash(st.accounts.db(), &did, &hash_password(&b.password))
            .map_err(NodeError::internal)?;
        revoke_sessions(&st, &did)?;
        tracing::info!(%did, "password reset by emailed token; sessions ended");
        Ok(StatusCode::OK)
    })
    .await
}

pub(crate) async fn request_account_delete(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<StatusCode, NodeError> {
    let claims = st.access(&headers)?;
    require_full(&claims)?;
    blocking(move || {
        let did = Did::new(claims.sub).map_err(NodeError::internal)?;
        st.send_token(&did, Purpose::DeleteAccount)?;
        Ok(StatusCode::OK)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteAccount {
    did: String,
    password: String,
    token: String,
}

/// Deletes the account with its password and an emailed token (both, as the reference asks).
pub(crate) async fn delete_account(
    State(st): State<Arc<Node>>,
    XJson(b): XJson<DeleteAccount>,
) -> Result<StatusCode, NodeError> {
    if b.password.len() > MAX_PASSWORD {
        return Err(NodeError::auth_required("Password too long. Consider resetting your password."));
    }
    blocking(move || {
        let did = Did::new(&b.did).map_err(|e| NodeError::invalid(e.to_string()))?;
        st.accounts.get(&did)?.ok_or_else(|| NodeError::invalid("account not found"))?;
        let hash = credentials::password_hash(st.accounts.db(), &did).map_err(NodeError::internal)?;
        if !hash.is_some_and(|h| check_password(&b.password, &h)) {
            tracing::warn!(%did, "account deletion with a wrong password");
            return Err(NodeError::auth_required("Invalid did or password"));
        }
        tokens::spend(st.accounts.db(), &did, Purpose::DeleteAccount, &b.token, token_ttl(&st)?)?;
        super::admin::remove_account(&st, &did)?;
        tracing::info!(%did, "account deleted by its holder");
        Ok(StatusCode::OK)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SendEmail {
    recipient_did: String,
    content: String,
    subject: Option<String>,
    sender_did: String,
    comment: Option<String>,
}

/// `admin.sendEmail`: the operator writes to an account holder (plain text, the `notice`
/// template).
pub(crate) async fn send_email(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<SendEmail>,
) -> Result<Json<Value>, NodeError> {
    st.operator(&headers)?;
    if b.content.len() > MAX_NOTICE {
        return Err(NodeError::invalid(format!("content is longer than {MAX_NOTICE} bytes")));
    }
    blocking(move || {
        let did = Did::new(&b.recipient_did).map_err(|e| NodeError::invalid(e.to_string()))?;
        st.accounts.get(&did)?.ok_or_else(|| NodeError::invalid("Recipient not found"))?;
        let to = email_of(&st, &did)?;
        // One line: a subject cannot add headers or end the head of the template.
        let subject: String = b
            .subject
            .as_deref()
            .unwrap_or("Message from your PDS")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect();
        st.mailer()?.send(&to, Template::Notice, &[("subject", &subject), ("content", &b.content)])?;
        tracing::info!(recipient = %did, sender = %b.sender_did, comment = b.comment.as_deref().unwrap_or(""), "operator's email sent");
        Ok(Json(json!({ "sent": true })))
    })
    .await
}
