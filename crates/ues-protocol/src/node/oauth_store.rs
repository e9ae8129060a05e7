//! What the OAuth authorization server keeps: pushed authorization requests and codes (in
//! memory: minutes long, bounded) and sessions (SQLite: an account, a client, the DPoP key the
//! tokens are bound to, the granted scope, and the digest of the current refresh token and of
//! the one it replaced, so a refresh token used twice ends the session).

use sha2::{Digest, Sha256};
use ues_sync::repo::ipld::storage::rusqlite::{OptionalExtension, params};
use ues_sync::repo::ipld::storage::{Error, Migration, Sqlite};

use super::NodeError;

/// The session table.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        id: "protocol/0013_oauth_sessions",
        sql: "CREATE TABLE oauth_session (
        id TEXT PRIMARY KEY,
        did TEXT NOT NULL,
        client_id TEXT NOT NULL,
        jkt TEXT NOT NULL,
        scope TEXT NOT NULL,
        refresh_digest BLOB NOT NULL UNIQUE,
        previous_digest BLOB,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX oauth_session_did ON oauth_session (did);
    CREATE INDEX oauth_session_previous ON oauth_session (previous_digest);",
    },
    Migration {
        id: "protocol/0014_oauth_client_auth",
        sql: "ALTER TABLE oauth_session ADD COLUMN client_auth TEXT NOT NULL DEFAULT 'none';",
    },
];

/// Pushed authorization requests and codes held at once (each kind).
pub const MAX_PENDING: usize = 10_000;
/// How long a pushed request waits for the user.
pub const REQUEST_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// How long a code waits for the client.
pub const CODE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// An authorization request as the client pushed it (PAR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedRequest {
    /// The client.
    pub client_id: String,
    /// Where the user goes back to.
    pub redirect_uri: String,
    /// The scopes asked for.
    pub scope: String,
    /// The client's state, returned as it came.
    pub state: Option<String>,
    /// PKCE: base64url SHA-256 of the verifier.
    pub code_challenge: String,
    /// The DPoP key the session will be bound to.
    pub jkt: String,
    /// A handle or DID the client suggests signing in as.
    pub login_hint: Option<String>,
    /// How the answer goes back: `query`, `fragment` or `form_post`.
    pub response_mode: String,
    /// `prompt=none`: the client asks for an answer without any page.
    pub no_prompt: bool,
}

/// A code the user's consent produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The request it answers.
    pub request: PushedRequest,
    /// The account that consented.
    pub did: String,
}

/// A session as the token endpoint sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OauthSession {
    /// Its id (in access tokens as `sid`).
    pub id: String,
    /// The account.
    pub did: String,
    /// The client.
    pub client_id: String,
    /// The DPoP key thumbprint tokens are bound to.
    pub jkt: String,
    /// The granted scope.
    pub scope: String,
    /// When it ends (Unix seconds).
    pub expires_at: i64,
    /// How the client authenticated: `none` (a public client), or `private_key_jwt:<kid>` (a
    /// confidential one, bound to that key: a refresh must come with an assertion it signed).
    pub client_auth: String,
}

/// A random token (32 bytes, base64url).
pub fn random_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn row(
    r: &ues_sync::repo::ipld::storage::rusqlite::Row<'_>,
) -> ues_sync::repo::ipld::storage::rusqlite::Result<OauthSession> {
    Ok(OauthSession {
        id: r.get(0)?,
        did: r.get(1)?,
        client_id: r.get(2)?,
        jkt: r.get(3)?,
        scope: r.get(4)?,
        expires_at: r.get(5)?,
        client_auth: r.get(6)?,
    })
}

/// Starts a session with its first refresh token.
pub fn create(db: &Sqlite, s: &OauthSession, refresh: &str) -> Result<(), NodeError> {
    let now = super::auth::now_secs() as i64;
    db.write(|tx| {
        tx.execute(
            "INSERT INTO oauth_session
             (id, did, client_id, jkt, scope, refresh_digest, created_at, expires_at, client_auth)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![s.id, s.did, s.client_id, s.jkt, s.scope, digest(refresh), now, s.expires_at, s.client_auth],
        )?;
        Ok::<_, Error>(())
    })
    .map_err(NodeError::internal)
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// The session's current token: replaced by `next`.
    Rotated(OauthSession),
    /// The session's current token, but the caller's check refused the request: nothing
    /// changed.
    Refused(OauthSession),
    /// A token already replaced: used twice, so the session is ended now.
    Reused(String),
    /// No live session has it.
    Unknown,
}

/// Replaces the session's refresh token `presented` with `next` if `accept` takes the session,
/// or ends the session when `presented` was already replaced.
pub fn rotate(
    db: &Sqlite,
    presented: &str,
    next: &str,
    accept: impl Fn(&OauthSession) -> bool,
) -> Result<Refresh, NodeError> {
    let (old, now) = (digest(presented), super::auth::now_secs() as i64);
    db.write(|tx| {
        let current = tx
            .query_row(
                "SELECT id, did, client_id, jkt, scope, expires_at, client_auth FROM oauth_session
                 WHERE refresh_digest = ?1 AND revoked = 0 AND expires_at > ?2",
                params![old, now],
                row,
            )
            .optional()?;
        if let Some(s) = current {
            if !accept(&s) {
                return Ok(Refresh::Refused(s));
            }
            tx.execute(
                "UPDATE oauth_session SET refresh_digest = ?2, previous_digest = ?3 WHERE id = ?1",
                params![s.id, digest(next), old],
            )?;
            return Ok(Refresh::Rotated(s));
        }
        let reused: Option<String> = tx
            .query_row("SELECT id FROM oauth_session WHERE previous_digest = ?1 AND revoked = 0", [&old], |r| r.get(0))
            .optional()?;
        if let Some(id) = reused {
            tx.execute("UPDATE oauth_session SET revoked = 1 WHERE id = ?1", [&id])?;
            return Ok(Refresh::Reused(id));
        }
        Ok::<_, Error>(Refresh::Unknown)
    })
    .map_err(NodeError::internal)
}

/// Ends the session a refresh token belongs to (current or replaced); whether there was one.
pub fn revoke_by_token(db: &Sqlite, token: &str) -> Result<bool, NodeError> {
    let d = digest(token);
    db.write(|tx| {
        let n = tx.execute(
            "UPDATE oauth_session SET revoked = 1 WHERE (refresh_digest = ?1 OR previous_digest = ?1) AND revoked = 0",
            [&d],
        )?;
        Ok::<_, Error>(n > 0)
    })
    .map_err(NodeError::internal)
}

/// Ends a session by id, if it is the account's.
pub fn revoke(db: &Sqlite, did: &str, id: &str) -> Result<bool, NodeError> {
    db.write(|tx| {
        let n = tx.execute("UPDATE oauth_session SET revoked = 1 WHERE id = ?1 AND did = ?2", params![id, did])?;
        Ok::<_, Error>(n > 0)
    })
    .map_err(NodeError::internal)
}

/// Whether a session is live.
pub fn is_live(db: &Sqlite, id: &str) -> Result<bool, NodeError> {
    let now = super::auth::now_secs() as i64;
    db.read(|c| {
        c.query_row(
            "SELECT EXISTS(SELECT 1 FROM oauth_session WHERE id = ?1 AND revoked = 0 AND expires_at > ?2)",
            params![id, now],
            |r| r.get(0),
        )
    })
    .map_err(NodeError::internal)
}

/// The account's live sessions, newest first.
pub fn sessions_of(db: &Sqlite, did: &str) -> Result<Vec<OauthSession>, NodeError> {
    let now = super::auth::now_secs() as i64;
    db.read(|c| {
        let mut s = c.prepare_cached(
            "SELECT id, did, client_id, jkt, scope, expires_at, client_auth FROM oauth_session
             WHERE did = ?1 AND revoked = 0 AND expires_at > ?2 ORDER BY created_at DESC LIMIT 500",
        )?;
        let rows = s.query_map(params![did, now], row)?;
        rows.collect::<Result<Vec<_>, _>>()
    })
    .map_err(NodeError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(dir.path().join("o.sqlite"), &Default::default()).unwrap();
        db.migrate(MIGRATIONS).unwrap();
        (dir, db)
    }

    fn session(id: &str) -> OauthSession {
        OauthSession {
            id: id.into(),
            did: "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into(),
            client_id: "http://localhost".into(),
            jkt: "thumb".into(),
            scope: "atproto transition:generic".into(),
            expires_at: super::super::auth::now_secs() as i64 + 3600,
            client_auth: "none".into(),
        }
    }

    #[test]
    fn refresh_tokens_rotate_and_a_reused_one_ends_the_session() {
        let (_d, db) = db();
        create(&db, &session("s1"), "r1").unwrap();
        assert_eq!(rotate(&db, "r1", "r2", |_| true).unwrap(), Refresh::Rotated(session("s1")));
        assert_eq!(rotate(&db, "r2", "r3", |_| true).unwrap(), Refresh::Rotated(session("s1")));
        assert!(is_live(&db, "s1").unwrap());
        // A refused request changes nothing: r3 stays the current token.
        assert_eq!(rotate(&db, "r3", "no", |_| false).unwrap(), Refresh::Refused(session("s1")));
        // r2 was replaced by r3: presenting it again is theft or a bug, and ends the session.
        assert_eq!(rotate(&db, "r2", "x", |_| true).unwrap(), Refresh::Reused("s1".into()));
        assert!(!is_live(&db, "s1").unwrap());
        assert_eq!(rotate(&db, "r3", "r4", |_| true).unwrap(), Refresh::Unknown);
        assert_eq!(rotate(&db, "never", "r5", |_| true).unwrap(), Refresh::Unknown);
    }

    #[test]
    fn sessions_are_listed_and_revoked_by_their_account_only() {
        let (_d, db) = db();
        create(&db, &session("s1"), "r1").unwrap();
        create(&db, &session("s2"), "q1").unwrap();
        assert_eq!(sessions_of(&db, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap().len(), 2);
        assert!(!revoke(&db, "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", "s1").unwrap());
        assert!(revoke(&db, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "s1").unwrap());
        assert!(revoke_by_token(&db, "q1").unwrap());
        assert!(sessions_of(&db, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap().is_empty());
    }
}
