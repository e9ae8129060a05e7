//! Emailed tokens: one per account and purpose, in the reference's form (`ABCDE-FGHIJ`, ten
//! base32 characters, 50 bits), single-use and expiring. Only a SHA-256 of each is stored, so a
//! copy of the database holds no usable token, and a presented token is compared with the
//! stored digest in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use ues_sync::repo::ipld::storage::rusqlite::{OptionalExtension, params};
use ues_sync::repo::ipld::storage::{Error, Migration, Sqlite};
use ues_sync::repo::syntax::Did;

use super::NodeError;

/// The token table.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        id: "protocol/0011_email_tokens",
        sql: "CREATE TABLE email_token (
            did TEXT NOT NULL,
            purpose TEXT NOT NULL,
            digest BLOB NOT NULL,
            requested_at INTEGER NOT NULL,
            PRIMARY KEY (did, purpose)
        );
        CREATE INDEX email_token_digest ON email_token (purpose, digest);",
    },
    Migration {
        id: "protocol/0012_email_confirmed",
        sql: "ALTER TABLE credential ADD COLUMN email_confirmed_at TEXT;",
    },
    Migration {
        id: "protocol/0015_email_auth_factor",
        sql: "ALTER TABLE credential ADD COLUMN email_auth_factor INTEGER NOT NULL DEFAULT 0;",
    },
];

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Confirming the account's email.
    ConfirmEmail,
    /// Changing a confirmed email.
    UpdateEmail,
    /// Setting a new password without the old one.
    ResetPassword,
    /// Deleting the account.
    DeleteAccount,
    /// Having the node sign a PLC operation.
    PlcOperation,
    /// Completing a sign-in (two-factor sign-in by email).
    SignIn,
}

impl Purpose {
    /// The mail that carries the token.
    pub fn template(self) -> super::mail::Template {
        use super::mail::Template;
        match self {
            Self::ConfirmEmail => Template::ConfirmEmail,
            Self::UpdateEmail => Template::UpdateEmail,
            Self::ResetPassword => Template::ResetPassword,
            Self::DeleteAccount => Template::DeleteAccount,
            Self::PlcOperation => Template::PlcOperation,
            Self::SignIn => Template::SignIn,
        }
    }

    /// Its name in the table (its mail's template name).
    fn as_str(self) -> &'static str {
        self.template().name()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().to_ascii_uppercase().as_bytes()).into()
}

/// A new token for `did` and `purpose`, replacing any earlier one.
pub fn create(db: &Sqlite, did: &Did, purpose: Purpose) -> Result<String, NodeError> {
    let token = {
        use rand::RngCore;
        let mut raw = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let s = data_encoding::BASE32_NOPAD.encode(&raw);
        format!("{}-{}", &s[0..5], &s[5..10])
    };
    let now = super::auth::now_secs() as i64;
    db.write(|tx| {
        tx.execute(
            "INSERT INTO email_token (did, purpose, digest, requested_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (did, purpose) DO UPDATE SET digest = excluded.digest, requested_at = excluded.requested_at",
            params![did.as_str(), purpose.as_str(), digest(&token).as_slice(), now],
        )?;
        Ok::<_, Error>(())
    })
    .map_err(NodeError::internal)?;
    Ok(token)
}

fn invalid() -> NodeError {
    NodeError::bad("InvalidToken", "Token is invalid")
}

fn expired() -> NodeError {
    NodeError::bad("ExpiredToken", "Token is expired")
}

fn fresh(requested_at: i64, ttl: std::time::Duration) -> bool {
    let now = super::auth::now_secs() as i64;
    now.saturating_sub(requested_at) < ttl.as_secs() as i64
}

/// Spends `did`'s token for `purpose`: `InvalidToken` when it is not the one sent,
/// `ExpiredToken` past `ttl`. A good token is deleted, so it works once.
pub fn spend(db: &Sqlite, did: &Did, purpose: Purpose, token: &str, ttl: std::time::Duration) -> Result<(), NodeError> {
    let given = digest(token);
    db.write(|tx| {
        let row: Option<(Vec<u8>, i64)> = tx
            .query_row(
                "SELECT digest, requested_at FROM email_token WHERE did = ?1 AND purpose = ?2",
                params![did.as_str(), purpose.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((stored, at)) = row else { return Ok(Err(invalid())) };
        if !bool::from(stored.as_slice().ct_eq(given.as_slice())) {
            return Ok(Err(invalid()));
        }
        if !fresh(at, ttl) {
            return Ok(Err(expired()));
        }
        tx.execute("DELETE FROM email_token WHERE did = ?1 AND purpose = ?2", params![did.as_str(), purpose.as_str()])?;
        Ok::<_, Error>(Ok(()))
    })
    .map_err(NodeError::internal)?
}

/// Spends a token for `purpose` whose account is not named (a password reset): the account it
/// was sent to. Looked up by its digest, which tells a timing observer nothing of the token.
pub fn spend_any(db: &Sqlite, purpose: Purpose, token: &str, ttl: std::time::Duration) -> Result<Did, NodeError> {
    let given = digest(token);
    db.write(|tx| {
        let row: Option<(String, i64)> = tx
            .query_row(
                "SELECT did, requested_at FROM email_token WHERE purpose = ?1 AND digest = ?2",
                params![purpose.as_str(), given.as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((did, at)) = row else { return Ok(Err(invalid())) };
        if !fresh(at, ttl) {
            return Ok(Err(expired()));
        }
        tx.execute("DELETE FROM email_token WHERE did = ?1 AND purpose = ?2", params![did, purpose.as_str()])?;
        Ok::<_, Error>(Did::new(did).map_err(NodeError::internal))
    })
    .map_err(NodeError::internal)?
}

/// Forgets every token of an account (it is being deleted).
pub fn forget(db: &Sqlite, did: &Did) -> Result<(), NodeError> {
    db.write(|tx| {
        tx.execute("DELETE FROM email_token WHERE did = ?1", [did.as_str()])?;
        Ok::<_, Error>(())
    })
    .map_err(NodeError::internal)
}

/// When the account's email was confirmed, if it was.
pub fn email_confirmed_at(db: &Sqlite, did: &Did) -> Result<Option<String>, NodeError> {
    db.read(|c| {
        c.query_row("SELECT email_confirmed_at FROM credential WHERE did = ?1", [did.as_str()], |r| r.get(0))
            .optional()
            .map(Option::flatten)
    })
    .map_err(NodeError::internal)
}

/// Marks the account's email confirmed now.
pub fn confirm_email(db: &Sqlite, did: &Did) -> Result<(), NodeError> {
    let now = super::firehose_time();
    db.write(|tx| {
        tx.execute("UPDATE credential SET email_confirmed_at = ?2 WHERE did = ?1", params![did.as_str(), now])?;
        Ok::<_, Error>(())
    })
    .map_err(NodeError::internal)
}

/// Whether signing in to `did` with its password also takes a code mailed to its address.
pub fn email_auth_factor(db: &Sqlite, did: &Did) -> Result<bool, NodeError> {
    db.read(|c| {
        c.query_row("SELECT email_auth_factor FROM credential WHERE did = ?1", [did.as_str()], |r| r.get::<_, i64>(0))
            .optional()
    })
    .map(|v| v.unwrap_or(0) != 0)
    .map_err(NodeError::internal)
}

/// Turns two-factor sign-in by email on or off for `did`.
pub fn set_email_auth_factor(db: &Sqlite, did: &Did, on: bool) -> Result<(), NodeError> {
    db.write(|tx| {
        tx.execute(
            "UPDATE credential SET email_auth_factor = ?2 WHERE did = ?1",
            params![did.as_str(), i64::from(on)],
        )?;
        Ok::<_, Error>(())
    })
    .map_err(NodeError::internal)
}

impl super::Node {
    /// Emails `did` a new token for `purpose` (at most as often as the mailer allows).
    pub(crate) fn send_token(&self, did: &Did, purpose: Purpose) -> Result<(), NodeError> {
        let mailer = self.mailer()?;
        let to = super::credentials::email(self.accounts.db(), did)
            .map_err(NodeError::internal)?
            .ok_or_else(|| NodeError::invalid("account does not have an email address"))?;
        let account = self.accounts.get(did)?.ok_or_else(|| NodeError::invalid("account not found"))?;
        let host = self.host_name();
        let vars = [("handle", account.handle.as_str()), ("email", to.as_str()), ("host", host.as_str())];
        mailer.send_token(&to, purpose.template(), &vars, || create(self.accounts.db(), did, purpose))
    }

    /// [`Node::authenticate`], then the account's second factor when it has one: a sign-in
    /// with the account password (app passwords are their own factor) takes the code mailed
    /// to the account's address. Without `code` a new one is mailed and the answer is 401
    /// `AuthFactorTokenRequired`.
    pub(crate) fn authenticate_fully(
        &self,
        identifier: &str,
        password: &str,
        code: Option<&str>,
    ) -> Result<(ues_sync::repo::accounts::Account, super::auth::Credential), NodeError> {
        let (account, cred) = self.authenticate(identifier, password)?;
        if cred != super::auth::Credential::Full || !email_auth_factor(self.accounts.db(), &account.did)? {
            return Ok((account, cred));
        }
        match code.map(str::trim).filter(|c| !c.is_empty()) {
            Some(code) => {
                let ttl = self.mailer()?.token_ttl();
                spend(self.accounts.db(), &account.did, Purpose::SignIn, code, ttl)?;
                Ok((account, cred))
            }
            None => {
                self.send_token(&account.did, Purpose::SignIn)?;
                tracing::info!(did = %account.did, "sign-in code mailed");
                Err(NodeError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "AuthFactorTokenRequired",
                    "A sign in code has been sent to your email address",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(dir.path().join("t.sqlite"), &Default::default()).unwrap();
        db.migrate(super::super::credentials::MIGRATIONS).unwrap();
        db.migrate(MIGRATIONS).unwrap();
        (dir, db)
    }

    const TTL: std::time::Duration = std::time::Duration::from_secs(900);

    #[test]
    fn a_token_works_once_for_its_account_and_purpose() {
        let (_dir, db) = db();
        let alice = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        let bob = Did::new("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
        let t = create(&db, &alice, Purpose::ConfirmEmail).unwrap();
        assert_eq!(t.len(), 11);
        assert!(t.chars().all(|c| c == '-' || c.is_ascii_uppercase() || ('2'..='7').contains(&c)), "{t}");
        assert_eq!(spend(&db, &bob, Purpose::ConfirmEmail, &t, TTL).unwrap_err().error, "InvalidToken");
        assert_eq!(spend(&db, &alice, Purpose::UpdateEmail, &t, TTL).unwrap_err().error, "InvalidToken");
        assert_eq!(spend(&db, &alice, Purpose::ConfirmEmail, "AAAAA-AAAAA", TTL).unwrap_err().error, "InvalidToken");
        // Case and surrounding space do not matter, as in the reference.
        spend(&db, &alice, Purpose::ConfirmEmail, &format!(" {} ", t.to_lowercase()), TTL).unwrap();
        assert_eq!(spend(&db, &alice, Purpose::ConfirmEmail, &t, TTL).unwrap_err().error, "InvalidToken");
    }

    #[test]
    fn a_newer_token_replaces_the_older_and_expired_ones_are_refused() {
        let (_dir, db) = db();
        let alice = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        let old = create(&db, &alice, Purpose::ResetPassword).unwrap();
        let new = create(&db, &alice, Purpose::ResetPassword).unwrap();
        assert_eq!(spend_any(&db, Purpose::ResetPassword, &old, TTL).unwrap_err().error, "InvalidToken");
        assert_eq!(
            spend_any(&db, Purpose::ResetPassword, &new, std::time::Duration::ZERO).unwrap_err().error,
            "ExpiredToken"
        );
        assert_eq!(spend_any(&db, Purpose::ResetPassword, &new, TTL).unwrap(), alice);
        assert!(spend_any(&db, Purpose::ResetPassword, &new, TTL).is_err());
    }
}
