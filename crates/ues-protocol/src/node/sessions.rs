//! Accounts and their sessions as typed operations every face calls: creating an account,
//! logging in (account password or app password), refreshing, describing and ending a session.
//! Each runs store work: call it from [`super::blocking`]. A face renders the [`Session`] its
//! own way (XRPC's `createSession` output, REST's session object).

use serde_json::{Value, json};
use ues_sync::repo::accounts::Account;
use ues_sync::repo::crypto::{KeyType, Keypair, PublicKey};
use ues_sync::repo::identity::did_document;
use ues_sync::repo::plc::{Genesis, PlcClient};
use ues_sync::repo::syntax::{Did, Handle};

use super::auth::{
    self, Claims, Credential, REFRESH_GRACE_SECS, access_token, find_app_password, issue, looks_like_app_password,
    refresh_claims,
};
use super::{Node, NodeError, credentials};

/// An account to create.
#[derive(Debug, Clone, Default)]
pub struct NewAccount {
    /// Under one of the node's user domains.
    pub handle: String,
    /// Its email, if given (unique on the node).
    pub email: Option<String>,
    /// Its password (at least 8 characters); `None`: an account that logs in no other way
    /// than its devices.
    pub password: Option<String>,
    /// A did:key the user keeps, listed as the DID's most authoritative rotation key.
    pub recovery_key: Option<String>,
    /// An invite code (needed when the node requires one).
    pub invite_code: Option<String>,
}

/// An account's session: who, its DID document, and its tokens (empty when a session is only
/// described).
#[derive(Debug, Clone)]
pub struct Session {
    /// The account.
    pub account: Account,
    /// Its email, if it has one.
    pub email: Option<String>,
    /// Whether its email is confirmed.
    pub email_confirmed: bool,
    /// Whether signing in with its password also takes a code mailed to it.
    pub email_auth_factor: bool,
    /// Its DID document.
    pub did_doc: Value,
    /// The access token (2 hours).
    pub access: String,
    /// The refresh token (90 days, single use).
    pub refresh: String,
}

impl Session {
    /// Whether the account is active (not deactivated, suspended or taken down).
    pub fn active(&self) -> bool {
        self.account.status == "active"
    }
}

impl Node {
    /// The account's DID document (its current signing key, handle and this node as its PDS).
    pub fn did_doc(&self, account: &Account) -> Result<Value, NodeError> {
        let key = self.accounts.signing_key(&account.did)?;
        Ok(did_document(&account.did, &account.handle, &key.public(), &self.cfg.public_url))
    }

    fn session(&self, account: Account, access: String, refresh: String) -> Result<Session, NodeError> {
        let email = credentials::email(self.accounts.db(), &account.did).map_err(NodeError::internal)?;
        let email_confirmed = super::tokens::email_confirmed_at(self.accounts.db(), &account.did)?.is_some();
        let email_auth_factor = super::tokens::email_auth_factor(self.accounts.db(), &account.did)?;
        let did_doc = self.did_doc(&account)?;
        Ok(Session { account, email, email_confirmed, email_auth_factor, did_doc, access, refresh })
    }

    /// Creates an account: its DID (did:plc, controlled by this node's rotation key and the
    /// user's recovery key), repository, credentials, and its tokens.
    pub fn create_account(&self, req: NewAccount) -> Result<Session, NodeError> {
        let handle = self.check_new_account(&req)?;
        self.with_invite(req, |req| self.make_account(req, handle))
    }

    /// Creates the account of an existing DID moving here from another server (whose
    /// service-auth token the caller has checked): deactivated until the user activates it,
    /// once its repository, blobs and DID document are here; signed with the key
    /// `reserveSigningKey` held for the DID, or a new one. Nothing is sent to the PLC directory:
    /// the user's old server signs that operation.
    pub fn create_moving_account(&self, req: NewAccount, did: Did) -> Result<Session, NodeError> {
        if let Some(account) = self.accounts.get(&did)? {
            return self.welcome_back(account, req);
        }
        let handle = self.check_new_account(&req)?;
        self.with_invite(req, |req| {
            let key = self.take_reserved_key(did.as_str()).unwrap_or_else(|| Keypair::generate(KeyType::K256));
            let password_hash = req.password.as_deref().map(auth::hash_password);
            let (account, _, _) = self.accounts.create_with_key(did.clone(), handle, key)?;
            self.accounts.set_status(&did, "deactivated")?;
            self.firehose.notify();
            credentials::insert(self.accounts.db(), &did, req.email.as_deref(), password_hash.as_deref())
                .map_err(|e| NodeError::bad("InvalidRequest", format!("Could not store credentials: {e}")))?;
            tracing::info!(%did, handle = %account.handle, "account moving here created (deactivated until activated)");
            let (access, refresh) = issue(self, &did, &Credential::Full)?;
            let account = self.accounts.get(&did)?.unwrap_or(account);
            self.session(account, access, refresh)
        })
    }

    /// An account that moved away (deactivated here) coming back: it keeps its signing key
    /// and its data until `importRepo` replaces them; the request's handle and password become
    /// its own. An active account here is not taken twice.
    fn welcome_back(&self, account: Account, req: NewAccount) -> Result<Session, NodeError> {
        let did = account.did.clone();
        if account.status != "deactivated" {
            return Err(NodeError::conflict("AlreadyExists", format!("An account with {did} is already active here")));
        }
        let handle = Handle::new(&req.handle).map_err(|e| NodeError::bad("InvalidHandle", e.to_string()))?.normalized();
        if handle != account.handle {
            if !self.cfg.user_domains.iter().any(|d| handle.as_str().ends_with(d.as_str())) {
                return Err(NodeError::bad("UnsupportedDomain", "Not a supported handle domain"));
            }
            self.accounts.update_handle(&did, &handle).map_err(|e| match e {
                ues_sync::repo::accounts::AccountError::Taken(_) => {
                    NodeError::conflict("HandleNotAvailable", "Handle already taken")
                }
                e => e.into(),
            })?;
        }
        if let Some(p) = &req.password {
            if p.len() < 8 {
                return Err(NodeError::bad("InvalidPassword", "Password must be at least 8 characters"));
            }
            credentials::set_password_hash(self.accounts.db(), &did, &auth::hash_password(p))
                .map_err(NodeError::internal)?;
        }
        if let Some(email) = &req.email
            && !credentials::set_email(self.accounts.db(), &did, email).map_err(NodeError::internal)?
        {
            return Err(NodeError::conflict("InvalidRequest", "Email already taken"));
        }
        tracing::info!(%did, "account that moved away is coming back (deactivated until activated)");
        let (access, refresh) = issue(self, &did, &Credential::Full)?;
        let account = self.accounts.get(&did)?.unwrap_or(account);
        self.session(account, access, refresh)
    }

    /// The checks every new account passes: its handle (under a user domain, free), email
    /// (free), password and recovery key. Returns the normalized handle.
    fn check_new_account(&self, req: &NewAccount) -> Result<Handle, NodeError> {
        let handle = Handle::new(&req.handle).map_err(|e| NodeError::bad("InvalidHandle", e.to_string()))?.normalized();
        if !self.cfg.user_domains.iter().any(|d| handle.as_str().ends_with(d.as_str())) {
            return Err(NodeError::bad(
                "UnsupportedDomain",
                format!("Not a supported handle domain: {}", self.cfg.user_domains.join(", ")),
            ));
        }
        if self.accounts.by_handle(&handle)?.is_some() {
            return Err(NodeError::conflict("HandleNotAvailable", "Handle already taken"));
        }
        if let Some(email) = &req.email {
            // Checked before the account exists, so a taken email leaves nothing half made.
            let taken = credentials::did_by_email(self.accounts.db(), email).map_err(NodeError::internal)?.is_some();
            if taken {
                return Err(NodeError::conflict("InvalidRequest", "Email already taken"));
            }
        }
        if let Some(p) = &req.password
            && p.len() < 8
        {
            return Err(NodeError::bad("InvalidPassword", "Password must be at least 8 characters"));
        }
        if let Some(k) = &req.recovery_key
            && PublicKey::from_did_key(k).is_err()
        {
            return Err(NodeError::invalid("recoveryKey must be a did:key (secp256k1 or P-256)"));
        }
        Ok(handle)
    }

    /// Runs `make` holding one use of the request's invite code when the node requires one:
    /// confirmed if the account was made, released if not.
    fn with_invite(
        &self,
        req: NewAccount,
        make: impl FnOnce(NewAccount) -> Result<Session, NodeError>,
    ) -> Result<Session, NodeError> {
        if !self.invite_required.load(std::sync::atomic::Ordering::Relaxed) {
            return make(req);
        }
        let code = req.invite_code.as_deref().unwrap_or_default();
        if code.is_empty() {
            return Err(NodeError::bad("InvalidInviteCode", "An invite code is required on this server"));
        }
        let held = super::invites::reserve(self.accounts.db(), code)?;
        match make(req) {
            Ok(s) => {
                super::invites::confirm(self.accounts.db(), held, s.account.did.as_str())?;
                Ok(s)
            }
            Err(e) => {
                super::invites::release(self.accounts.db(), held);
                Err(e)
            }
        }
    }

    /// Makes an account whose request has been checked.
    fn make_account(&self, req: NewAccount, handle: Handle) -> Result<Session, NodeError> {
        let key = Keypair::generate(KeyType::K256);
        // The node's rotation key, not the signing key, controls the DID: the signing key goes
        // to every device of the account; the rotation key never leaves this node. A user's
        // recovery key comes first, outranking the node's (as the reference PDS lists them).
        let rotation = self.accounts.plc_rotation_key();
        let rotation_keys = req.recovery_key.iter().cloned().chain([rotation.public().did_key()]).collect();
        let genesis = Genesis {
            rotation_keys,
            signing_key: key.public().did_key(),
            handle: handle.to_string(),
            pds_endpoint: self.cfg.public_url.clone(),
        };
        let (op, did) = genesis.sign(rotation).map_err(NodeError::internal)?;
        if let Some(url) = &self.cfg.plc_url {
            PlcClient::new(url).submit(&did, &op).map_err(|e| NodeError::bad("UnresolvableDid", e.to_string()))?;
        }
        let did = Did::new(did).map_err(NodeError::internal)?;
        let password_hash = req.password.as_deref().map(auth::hash_password);
        let (account, _, _) = self.accounts.create_with_key(did.clone(), handle, key)?;
        self.firehose.notify();
        credentials::insert(self.accounts.db(), &did, req.email.as_deref(), password_hash.as_deref())
            .map_err(|e| NodeError::bad("InvalidRequest", format!("Could not store credentials: {e}")))?;
        self.kv.put(format!("plc/{did}").as_bytes(), op.to_string().as_bytes(), None).map_err(NodeError::internal)?;
        let (access, refresh) = issue(self, &did, &Credential::Full)?;
        self.session(account, access, refresh)
    }

    /// Opens a session for `identifier` (handle, DID or email) with the account password or
    /// one of its app passwords; a wrong one is `AuthenticationRequired`, told apart from an
    /// unknown account by nothing.
    pub fn login(&self, identifier: &str, password: &str, code: Option<&str>) -> Result<Session, NodeError> {
        let (account, cred) = self.authenticate_fully(identifier, password, code)?;
        let (access, refresh) = issue(self, &account.did, &cred)?;
        self.session(account, access, refresh)
    }

    /// The account `identifier` names and the credential `password` is for it (the account
    /// password or one of its app passwords), without opening a session; a taken-down account
    /// is refused.
    pub(crate) fn authenticate(&self, identifier: &str, password: &str) -> Result<(Account, Credential), NodeError> {
        let denied = || NodeError::auth_required("Invalid identifier or password");
        let ident = identifier.trim().to_ascii_lowercase();
        let account = if ident.starts_with("did:") {
            Did::new(&ident).ok().and_then(|d| self.accounts.get(&d).transpose())
        } else if ident.contains('@') {
            let did = credentials::did_by_email(self.accounts.db(), &ident).map_err(NodeError::internal)?;
            did.and_then(|d| Did::new(d).ok()).and_then(|d| self.accounts.get(&d).transpose())
        } else {
            Handle::new(&ident).ok().and_then(|h| self.accounts.by_handle(&h).transpose())
        };
        let account = account.transpose()?.ok_or_else(denied)?;
        let hash = credentials::password_hash(self.accounts.db(), &account.did).map_err(NodeError::internal)?;
        // An app password (recognised by its form: one indexed lookup, no slow hash), or else
        // the account password: at most one Argon2 check per attempt, however many app
        // passwords the account has.
        let app =
            if looks_like_app_password(password) { find_app_password(self, &account.did, password)? } else { None };
        let cred = match app {
            Some(c) => c,
            None if hash.is_some_and(|h| auth::check_password(password, &h)) => Credential::Full,
            None => {
                tracing::warn!(did = %account.did, "wrong password");
                return Err(denied());
            }
        };
        if account.status == "takendown" {
            return Err(NodeError::bad("AccountTakedown", "Account has been taken down"));
        }
        Ok((account, cred))
    }

    /// Trades a refresh token for a fresh pair (the old one is used up; within a grace period
    /// it yields the same successor, for clients that race).
    pub fn refresh_session(&self, refresh_token: &str) -> Result<Session, NodeError> {
        let claims = refresh_claims(self, refresh_token)?;
        let jti = claims.jti.clone().unwrap_or_default();
        let key = format!("refresh/{jti}");
        let entry = self.kv.get(key.as_bytes()).map_err(NodeError::internal)?;
        let Some(entry) = entry else {
            return Err(NodeError::token("ExpiredToken", "Token has been revoked"));
        };
        let entry: Value = serde_json::from_slice(&entry).map_err(NodeError::internal)?;
        let did = Did::new(claims.sub.clone()).map_err(NodeError::internal)?;
        let account = self.accounts.get(&did)?.ok_or_else(|| NodeError::token("InvalidToken", "Account not found"))?;
        let app = entry.get("app").and_then(Value::as_str).map(str::to_string);
        let cred = match &app {
            None => Credential::Full,
            Some(name) => {
                // The app password must still exist; its privileges are read afresh.
                let privileged = credentials::app_password_privileged(self.accounts.db(), &did, name)
                    .map_err(NodeError::internal)?;
                let Some(privileged) = privileged else {
                    return Err(NodeError::token("ExpiredToken", "The app password was revoked"));
                };
                Credential::App { name: name.clone(), privileged }
            }
        };
        // A token used within the grace period yields the same successor (clients race).
        if let Some(next) = entry.get("next").and_then(Value::as_str) {
            return self.session(account, access_token(self, &did, &cred)?, next.to_string());
        }
        let (access, refresh) = issue(self, &did, &cred)?;
        let successor = json!({ "did": did.as_str(), "app": app, "next": refresh }).to_string();
        self.kv
            .put(key.as_bytes(), successor.as_bytes(), Some(std::time::Duration::from_secs(REFRESH_GRACE_SECS)))
            .map_err(NodeError::internal)?;
        self.session(account, access, refresh)
    }

    /// The session an access token stands for, without tokens.
    pub fn describe_session(&self, claims: &Claims) -> Result<Session, NodeError> {
        let did = Did::new(claims.sub.clone()).map_err(NodeError::internal)?;
        let account = self.accounts.get(&did)?.ok_or_else(|| NodeError::token("InvalidToken", "Account not found"))?;
        self.session(account, String::new(), String::new())
    }

    /// Ends the session a refresh token belongs to.
    pub fn logout(&self, refresh_token: &str) -> Result<(), NodeError> {
        let claims = refresh_claims(self, refresh_token)?;
        let jti = claims.jti.unwrap_or_default();
        self.kv.delete(format!("refresh/{jti}").as_bytes()).map_err(NodeError::internal)
    }
}
