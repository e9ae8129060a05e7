//! Invite codes over XRPC: the operator makes, lists and disables them
//! (`server.createInviteCode(s)`, `admin.getInviteCodes`, `admin.disableInviteCodes`,
//! `admin.disable/enableAccountInvites`); an account lists those made for it
//! (`server.getAccountInviteCodes`). The rules and tables are `node::invites`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::node::extract::{XJson, XQuery};
use crate::node::{Node, NodeError, blocking, invites};

type Res = Result<Json<Value>, NodeError>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateInviteCode {
    use_count: i64,
    for_account: Option<String>,
}

/// `server.createInviteCode` (the operator's).
pub(crate) async fn create_invite_code(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<CreateInviteCode>,
) -> Res {
    st.operator(&headers)?;
    blocking(move || {
        let owners: Vec<String> = b.for_account.into_iter().collect();
        let made = invites::create(st.accounts.db(), &st.host_name(), 1, b.use_count, &owners, "admin")?;
        Ok(Json(json!({ "code": made[0].1[0] })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateInviteCodes {
    code_count: Option<usize>,
    use_count: i64,
    #[serde(default)]
    for_accounts: Vec<String>,
}

/// `server.createInviteCodes` (the operator's).
pub(crate) async fn create_invite_codes(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<CreateInviteCodes>,
) -> Res {
    st.operator(&headers)?;
    blocking(move || {
        let count = b.code_count.unwrap_or(1);
        let made = invites::create(st.accounts.db(), &st.host_name(), count, b.use_count, &b.for_accounts, "admin")?;
        let codes: Vec<Value> =
            made.into_iter().map(|(account, codes)| json!({"account": account, "codes": codes})).collect();
        Ok(Json(json!({ "codes": codes })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AccountCodes {
    include_used: Option<bool>,
}

/// `server.getAccountInviteCodes`: the codes made for the caller's account (none are earned
/// here: an operator makes them).
pub(crate) async fn get_account_invite_codes(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XQuery(q): XQuery<AccountCodes>,
) -> Res {
    let claims = st.access(&headers)?;
    blocking(move || {
        let codes = invites::list(
            st.accounts.db(),
            Some(&claims.sub),
            q.include_used.unwrap_or(true),
            false,
            0,
            invites::MAX_CODES,
        )?;
        Ok(Json(json!({ "codes": codes })))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct GetInviteCodes {
    sort: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `admin.getInviteCodes`: every code, newest (`recent`) or most used (`usage`) first.
pub(crate) async fn get_invite_codes(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XQuery(q): XQuery<GetInviteCodes>,
) -> Res {
    st.operator(&headers)?;
    let by_usage = match q.sort.as_deref().unwrap_or("recent") {
        "recent" => false,
        "usage" => true,
        other => return Err(NodeError::invalid(format!("sort must be recent or usage, not {other}"))),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let from: usize = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c.parse().map_err(|_| NodeError::invalid("bad cursor"))?,
    };
    blocking(move || {
        let codes = invites::list(st.accounts.db(), None, true, by_usage, from, limit)?;
        let mut out = json!({ "codes": codes });
        if codes_len(&out) == limit {
            out["cursor"] = json!((from + limit).to_string());
        }
        Ok(Json(out))
    })
    .await
}

fn codes_len(v: &Value) -> usize {
    v["codes"].as_array().map_or(0, Vec::len)
}

#[derive(Deserialize)]
pub(crate) struct DisableCodes {
    #[serde(default)]
    codes: Vec<String>,
    #[serde(default)]
    accounts: Vec<String>,
}

/// `admin.disableInviteCodes`: the codes named, and every code of the accounts named.
pub(crate) async fn disable_invite_codes(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<DisableCodes>,
) -> Res {
    st.operator(&headers)?;
    if b.codes.len() + b.accounts.len() > invites::MAX_CODES {
        return Err(NodeError::invalid(format!("at most {} codes and accounts a call", invites::MAX_CODES)));
    }
    blocking(move || {
        invites::disable(st.accounts.db(), &b.codes, &b.accounts)?;
        Ok(Json(json!({})))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct AccountInvites {
    account: String,
    note: Option<String>,
}

/// `admin.disableAccountInvites`: the account receives no new codes (those it has stay).
pub(crate) async fn disable_account_invites(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<AccountInvites>,
) -> Res {
    set_account_invites(st, headers, b, true).await
}

/// `admin.enableAccountInvites`.
pub(crate) async fn enable_account_invites(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<AccountInvites>,
) -> Res {
    set_account_invites(st, headers, b, false).await
}

async fn set_account_invites(st: Arc<Node>, headers: HeaderMap, b: AccountInvites, barred: bool) -> Res {
    st.operator(&headers)?;
    blocking(move || {
        invites::bar(st.accounts.db(), &b.account, barred, b.note.as_deref())?;
        Ok(Json(json!({})))
    })
    .await
}
