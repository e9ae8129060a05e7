//! Invite codes: with `[xrpc] invite_required`, an account is created only with a code that
//! has a use left. Codes are made by the operator (for anyone, or for an account to hand out),
//! listed, and disabled; an account can be barred from receiving new codes. The tables are the
//! node core's, and every SQL statement on them is here.
//!
//! A use is reserved before the account is made and confirmed once it exists (or released if
//! making it fails): two sign-ups racing for a code's last use cannot both have it.

use serde_json::{Value, json};
use ues_sync::repo::ipld::storage::rusqlite::{OptionalExtension, params};
use ues_sync::repo::ipld::storage::{Migration, Sqlite};

use super::NodeError;

type DbError = ues_sync::repo::ipld::storage::Error;

/// The invite tables.
pub const MIGRATIONS: &[Migration] = &[Migration {
    id: "protocol/0010_invite_codes",
    sql: "CREATE TABLE invite_code (
            code TEXT PRIMARY KEY,
            available INTEGER NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            for_account TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX invite_code_for ON invite_code (for_account);
        CREATE TABLE invite_code_use (
            code TEXT NOT NULL,
            used_by TEXT NOT NULL,
            used_at INTEGER NOT NULL,
            PRIMARY KEY (code, used_by)
        );
        CREATE TABLE invite_barred (did TEXT PRIMARY KEY, note TEXT);",
}];

/// Most uses one code may carry, and most codes made by one call.
pub const MAX_USES: i64 = 10_000;
/// Most codes made by one call.
pub const MAX_CODES: usize = 1_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A use of a code held for an account being made.
#[derive(Debug)]
pub struct Reservation {
    code: String,
    holder: String,
}

/// A new code in the reference's form: the host name with dashes, then two groups of five
/// base32 characters (`pds-example-com-abcde-fghij`).
fn new_code(host: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::thread_rng();
    let mut group = || (0..5).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect::<String>();
    let (a, b) = (group(), group());
    let prefix: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    format!("{prefix}-{a}-{b}")
}

/// Makes `count` codes of `uses` uses for each of `accounts` (`"admin"` when none is named);
/// returns the codes per account.
pub fn create(
    db: &Sqlite,
    host: &str,
    count: usize,
    uses: i64,
    accounts: &[String],
    created_by: &str,
) -> Result<Vec<(String, Vec<String>)>, NodeError> {
    if !(1..=MAX_USES).contains(&uses) {
        return Err(NodeError::invalid(format!("useCount must be 1 to {MAX_USES}")));
    }
    let owners: Vec<String> = if accounts.is_empty() { vec!["admin".into()] } else { accounts.to_vec() };
    if count == 0 || count.saturating_mul(owners.len()) > MAX_CODES {
        return Err(NodeError::invalid(format!("between 1 and {MAX_CODES} codes a call")));
    }
    for owner in accounts {
        if barred(db, owner)? {
            return Err(NodeError::invalid(format!("{owner} is barred from receiving invite codes")));
        }
    }
    let made: Vec<(String, Vec<String>)> =
        owners.into_iter().map(|owner| (owner, (0..count).map(|_| new_code(host)).collect())).collect();
    db.write(|tx| {
        let mut put = tx.prepare_cached(
            "INSERT INTO invite_code (code, available, for_account, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (owner, codes) in &made {
            for code in codes {
                put.execute(params![code, uses, owner, created_by, now_ms()])?;
            }
        }
        Ok::<_, DbError>(())
    })
    .map_err(NodeError::internal)?;
    Ok(made)
}

/// Holds one use of `code` for an account about to be made: refused with `InvalidInviteCode`
/// when the code is unknown, disabled or used up.
pub fn reserve(db: &Sqlite, code: &str) -> Result<Reservation, NodeError> {
    let holder = format!("pending:{}", new_code("x"));
    let held = db
        .write(|tx| {
            let row: Option<(i64, bool)> = tx
                .query_row("SELECT available, disabled FROM invite_code WHERE code = ?1", [code], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let Some((available, false)) = row else { return Ok(false) };
            let used: i64 =
                tx.query_row("SELECT count(*) FROM invite_code_use WHERE code = ?1", [code], |r| r.get(0))?;
            if used >= available {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO invite_code_use (code, used_by, used_at) VALUES (?1, ?2, ?3)",
                params![code, holder, now_ms()],
            )?;
            Ok::<_, DbError>(true)
        })
        .map_err(NodeError::internal)?;
    if !held {
        return Err(NodeError::bad("InvalidInviteCode", "Provided invite code not available"));
    }
    Ok(Reservation { code: code.to_string(), holder })
}

/// The account was made: the use is its.
pub fn confirm(db: &Sqlite, r: Reservation, did: &str) -> Result<(), NodeError> {
    db.write(|tx| {
        tx.execute(
            "UPDATE invite_code_use SET used_by = ?3 WHERE code = ?1 AND used_by = ?2",
            params![r.code, r.holder, did],
        )
        .map_err(DbError::from)
    })
    .map(drop)
    .map_err(NodeError::internal)
}

/// The account was not made: the use is free again.
pub fn release(db: &Sqlite, r: Reservation) {
    let res = db.write(|tx| {
        tx.execute("DELETE FROM invite_code_use WHERE code = ?1 AND used_by = ?2", params![r.code, r.holder])
            .map_err(DbError::from)
    });
    if let Err(e) = res {
        tracing::warn!(code = %r.code, error = %e, "an invite use held for a failed sign-up was not released");
    }
}

/// Codes as `com.atproto.server.defs#inviteCode`: those of `account`, or all (newest first, or
/// most used first with `by_usage`), after `cursor` (an offset), at most `limit`.
pub fn list(
    db: &Sqlite,
    account: Option<&str>,
    include_used: bool,
    by_usage: bool,
    cursor: usize,
    limit: usize,
) -> Result<Vec<Value>, NodeError> {
    db.read(|c| {
        let order = if by_usage { "uses DESC, c.created_at DESC" } else { "c.created_at DESC, c.code" };
        let sql = format!(
            "SELECT c.code, c.available, c.disabled, c.for_account, c.created_by, c.created_at,
                    (SELECT count(*) FROM invite_code_use u WHERE u.code = c.code) AS uses
             FROM invite_code c WHERE (?1 IS NULL OR c.for_account = ?1)
             ORDER BY {order} LIMIT ?2 OFFSET ?3"
        );
        let mut st = c.prepare(&sql)?;
        let rows = st.query_map(params![account, limit as i64, cursor as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        let mut uses_of = c.prepare_cached(
            "SELECT used_by, used_at FROM invite_code_use WHERE code = ?1 AND used_by NOT LIKE 'pending:%' ORDER BY used_at",
        )?;
        for row in rows {
            let (code, available, disabled, for_account, created_by, created_at, used) = row?;
            if !include_used && used >= available {
                continue;
            }
            let uses: Vec<Value> = uses_of
                .query_map([&code], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .map(|u| u.map(|(by, at)| json!({"usedBy": by, "usedAt": super::sequencer::iso_from_millis(at)})))
                .collect::<Result<_, _>>()?;
            out.push(json!({
                "code": code, "available": available, "disabled": disabled, "forAccount": for_account,
                "createdBy": created_by, "createdAt": super::sequencer::iso_from_millis(created_at), "uses": uses,
            }));
        }
        Ok::<_, DbError>(out)
    })
    .map_err(NodeError::internal)
}

/// Disables `codes`, and every code of `accounts`.
pub fn disable(db: &Sqlite, codes: &[String], accounts: &[String]) -> Result<(), NodeError> {
    db.write(|tx| {
        for code in codes {
            tx.execute("UPDATE invite_code SET disabled = 1 WHERE code = ?1", [code])?;
        }
        for account in accounts {
            tx.execute("UPDATE invite_code SET disabled = 1 WHERE for_account = ?1", [account])?;
        }
        Ok::<_, DbError>(())
    })
    .map_err(NodeError::internal)
}

/// Bars `did` from receiving new codes (`barred`), or lifts the bar.
pub fn bar(db: &Sqlite, did: &str, barred: bool, note: Option<&str>) -> Result<(), NodeError> {
    db.write(|tx| {
        match barred {
            true => tx.execute(
                "INSERT INTO invite_barred (did, note) VALUES (?1, ?2) ON CONFLICT (did) DO UPDATE SET note = ?2",
                params![did, note],
            ),
            false => tx.execute("DELETE FROM invite_barred WHERE did = ?1", [did]),
        }
        .map_err(DbError::from)
    })
    .map(drop)
    .map_err(NodeError::internal)
}

/// Whether `did` is barred from receiving new codes.
pub fn barred(db: &Sqlite, did: &str) -> Result<bool, NodeError> {
    db.read(|c| c.query_row("SELECT EXISTS(SELECT 1 FROM invite_barred WHERE did = ?1)", [did], |r| r.get(0)))
        .map_err(NodeError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A code's last use is held by one sign-up at a time: another is refused while it is
    /// held, admitted once it is released, and refused again once it is confirmed.
    #[test]
    fn the_last_use_goes_to_one_sign_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(dir.path().join("i.sqlite"), &Default::default()).unwrap();
        db.migrate(MIGRATIONS).unwrap();
        let made = create(&db, "pds.example", 1, 1, &[], "admin").unwrap();
        let code = &made[0].1[0];
        assert!(code.starts_with("pds-example-"), "{code}");
        let first = reserve(&db, code).unwrap();
        assert!(reserve(&db, code).is_err(), "held by the first");
        release(&db, first);
        let second = reserve(&db, code).unwrap();
        confirm(&db, second, "did:plc:abc").unwrap();
        assert!(reserve(&db, code).is_err(), "used up");
        let listed = list(&db, None, true, false, 0, 10).unwrap();
        assert_eq!(listed[0]["uses"], json!([{"usedBy": "did:plc:abc", "usedAt": listed[0]["uses"][0]["usedAt"]}]));
        assert!(list(&db, None, false, false, 0, 10).unwrap().is_empty(), "used codes left out when asked");
        assert!(create(&db, "pds.example", 1, 0, &[], "admin").is_err());
        assert!(create(&db, "pds.example", MAX_CODES + 1, 1, &[], "admin").is_err());
    }
}
