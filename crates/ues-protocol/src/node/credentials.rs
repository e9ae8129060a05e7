//! Credentials: each account's email and password hash, and its app passwords. These are the
//! node's own tables (beside ues-repo's accounts and records), and every SQL statement on them
//! is here; the faces call these typed functions.

use ues_sync::repo::ipld::storage::rusqlite::{OptionalExtension, params};
use ues_sync::repo::ipld::storage::{Error, Migration, Sqlite};
use ues_sync::repo::syntax::Did;

/// The credential tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        id: "protocol/0001_credentials",
        sql: "CREATE TABLE credential (
            did TEXT PRIMARY KEY,
            email TEXT UNIQUE COLLATE NOCASE,
            password_hash TEXT
        );",
    },
    Migration {
        id: "protocol/0004_app_passwords",
        sql: "CREATE TABLE app_password (
            did TEXT NOT NULL,
            name TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            privileged INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            PRIMARY KEY (did, name)
        );",
    },
];

/// An app password as listed (never its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPassword {
    /// Its name, unique per account.
    pub name: String,
    /// When it was made (AT Protocol datetime).
    pub created_at: String,
    /// Whether it reaches chat.
    pub privileged: bool,
}

/// An account's email and password hash (either may be absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountCredentials {
    /// The email.
    pub email: Option<String>,
    /// The password hash (Argon2id).
    pub password_hash: Option<String>,
}

/// The account's email and password hash, when it has a credential row.
pub fn get(db: &Sqlite, did: &Did) -> Result<Option<AccountCredentials>, Error> {
    db.read(|c| {
        c.query_row("SELECT email, password_hash FROM credential WHERE did = ?1", [did.as_str()], |r| {
            Ok(AccountCredentials { email: r.get(0)?, password_hash: r.get(1)? })
        })
        .optional()
        .map_err(Error::from)
    })
}

/// The account's email.
pub fn email(db: &Sqlite, did: &Did) -> Result<Option<String>, Error> {
    Ok(get(db, did)?.and_then(|c| c.email))
}

/// The account's password hash.
pub fn password_hash(db: &Sqlite, did: &Did) -> Result<Option<String>, Error> {
    Ok(get(db, did)?.and_then(|c| c.password_hash))
}

/// The account an email belongs to (emails compare without case).
pub fn did_by_email(db: &Sqlite, email: &str) -> Result<Option<String>, Error> {
    db.read(|c| {
        c.query_row("SELECT did FROM credential WHERE email = ?1", [email], |r| r.get(0))
            .optional()
            .map_err(Error::from)
    })
}

/// Accounts whose email starts with `prefix` (without case), by DID after `after`.
pub fn dids_by_email_prefix(
    db: &Sqlite,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, Error> {
    let escaped = prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    db.read(|c| {
        let mut s = c.prepare_cached(
            "SELECT did FROM credential WHERE email LIKE ?1 ESCAPE '\\' AND (?2 IS NULL OR did > ?2) ORDER BY did LIMIT ?3",
        )?;
        let rows = s.query_map(params![format!("{escaped}%"), after, limit as i64], |r| r.get(0))?;
        rows.collect::<Result<Vec<String>, _>>().map_err(Error::from)
    })
}

/// Stores a new account's credentials.
pub fn insert(db: &Sqlite, did: &Did, email: Option<&str>, password_hash: Option<&str>) -> Result<(), Error> {
    db.write(|tx| {
        tx.execute(
            "INSERT INTO credential (did, email, password_hash) VALUES (?1, ?2, ?3)",
            params![did.as_str(), email, password_hash],
        )?;
        Ok(())
    })
}

/// Stores an account's credentials as another node handed them over (replacing any).
pub fn replace(db: &Sqlite, did: &Did, email: Option<&str>, password_hash: Option<&str>) -> Result<(), Error> {
    db.write(|tx| {
        tx.execute(
            "INSERT OR REPLACE INTO credential (did, email, password_hash) VALUES (?1, ?2, ?3)",
            params![did.as_str(), email, password_hash],
        )?;
        Ok(())
    })
}

/// Sets the account's password hash.
pub fn set_password_hash(db: &Sqlite, did: &Did, hash: &str) -> Result<(), Error> {
    db.write(|tx| {
        tx.execute(
            "INSERT INTO credential (did, password_hash) VALUES (?1, ?2)
             ON CONFLICT (did) DO UPDATE SET password_hash = excluded.password_hash",
            params![did.as_str(), hash],
        )?;
        Ok(())
    })
}

/// Sets the account's email, unless another account has it: returns whether it was set. A
/// new address is unconfirmed.
pub fn set_email(db: &Sqlite, did: &Did, email: &str) -> Result<bool, Error> {
    db.write(|tx| {
        let taken: Option<String> = tx
            .query_row("SELECT did FROM credential WHERE email = ?1 AND did != ?2", params![email, did.as_str()], |r| {
                r.get(0)
            })
            .optional()?;
        if taken.is_some() {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO credential (did, email) VALUES (?1, ?2)
             ON CONFLICT (did) DO UPDATE SET email = excluded.email,
               email_confirmed_at = CASE WHEN email = excluded.email THEN email_confirmed_at END",
            params![did.as_str(), email],
        )?;
        Ok(true)
    })
}

/// Whether an app password of this name exists, and if so whether it is privileged.
pub fn app_password_privileged(db: &Sqlite, did: &Did, name: &str) -> Result<Option<bool>, Error> {
    db.read(|c| {
        c.query_row("SELECT privileged FROM app_password WHERE did = ?1 AND name = ?2", [did.as_str(), name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(Error::from)
    })
}

/// The app password stored with this digest: its name and whether it is privileged.
pub fn app_password_by_digest(db: &Sqlite, did: &Did, digest: &str) -> Result<Option<(String, bool)>, Error> {
    db.read(|c| {
        c.query_row(
            "SELECT name, privileged FROM app_password WHERE did = ?1 AND password_hash = ?2",
            [did.as_str(), digest],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(Error::from)
    })
}

/// App passwords stored by earlier versions with Argon2 hashes: name, hash, privileged.
pub fn argon2_app_passwords(db: &Sqlite, did: &Did) -> Result<Vec<(String, String, bool)>, Error> {
    db.read(|c| {
        let mut q = c.prepare_cached(
            "SELECT name, password_hash, privileged FROM app_password WHERE did = ?1 AND password_hash LIKE '$argon2%'",
        )?;
        let rows = q.query_map([did.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Error::from)
    })
}

/// Replaces an app password's stored hash (an Argon2 hash by its digest, once it matched).
pub fn set_app_password_hash(db: &Sqlite, did: &Did, name: &str, hash: &str) -> Result<(), Error> {
    db.write(|tx| {
        tx.execute(
            "UPDATE app_password SET password_hash = ?3 WHERE did = ?1 AND name = ?2",
            params![did.as_str(), name, hash],
        )?;
        Ok(())
    })
}

/// Adds an app password; an error when one of this name exists.
pub fn add_app_password(db: &Sqlite, did: &Did, password: &AppPassword, hash: &str) -> Result<(), Error> {
    db.write(|tx| {
        tx.execute(
            "INSERT INTO app_password (did, name, password_hash, privileged, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![did.as_str(), password.name, hash, password.privileged, password.created_at],
        )?;
        Ok(())
    })
}

/// The account's app passwords, oldest first.
pub fn app_passwords(db: &Sqlite, did: &Did) -> Result<Vec<AppPassword>, Error> {
    db.read(|c| {
        let mut q = c.prepare_cached(
            "SELECT name, created_at, privileged FROM app_password WHERE did = ?1 ORDER BY created_at",
        )?;
        let rows = q.query_map([did.as_str()], |r| {
            Ok(AppPassword { name: r.get(0)?, created_at: r.get(1)?, privileged: r.get(2)? })
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Error::from)
    })
}

/// Removes an app password (nothing when there is none of that name).
pub fn revoke_app_password(db: &Sqlite, did: &Did, name: &str) -> Result<(), Error> {
    db.write(|tx| {
        tx.execute("DELETE FROM app_password WHERE did = ?1 AND name = ?2", params![did.as_str(), name])?;
        Ok(())
    })
}

/// Forgets an account's email, password and app passwords (the account is being deleted).
pub fn forget(db: &Sqlite, did: &Did) -> Result<(), Error> {
    db.write(|tx| {
        tx.execute("DELETE FROM credential WHERE did = ?1", [did.as_str()])?;
        tx.execute("DELETE FROM app_password WHERE did = ?1", [did.as_str()])?;
        Ok(())
    })
}
