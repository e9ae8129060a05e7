//! Devices' published keys: `uploadKeys` (a client device's Matrix device keys, one-time keys
//! and fallback key, every signature checked before anything is stored), `queryKeys` and
//! `claimKeys` for the accounts held here.

use serde_json::{Map, Value, json};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{Connection, OptionalExtension, Transaction, params};
use vodozemac::Ed25519PublicKey;

use super::canonical;
use super::device::{Device, MEGOLM, OLM, SIGNED_CURVE, parse_curve};
use super::{ChatError, Sealer, now_ms};

/// Client devices an account may have.
pub(crate) const MAX_DEVICES: i64 = 50;
/// One-time keys stored per device, and taken per upload.
pub(crate) const MAX_OTKS: usize = 100;
/// Longest device id or key id.
const MAX_ID: usize = 64;

/// Whether `id` may name a device or a key: 1 to 64 of letters, digits and `+/=._-`.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'.' | b'_' | b'-'))
}

/// A device's published identity keys: (curve25519, ed25519).
pub(crate) fn device_identity(
    conn: &Connection,
    did: &str,
    device_id: &str,
) -> Result<Option<(String, String)>, ChatError> {
    Ok(conn
        .prepare_cached(
            "SELECT curve25519, ed25519 FROM chat_device WHERE did = ?1 AND device_id = ?2 AND device_keys IS NOT NULL",
        )?
        .query_row([did, device_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Checks a Matrix device_keys object for `did`'s device `device_id`: its fields, its keys, and
/// its signature by its own Ed25519 key. Returns (curve25519, ed25519).
pub(crate) fn check_device_keys(keys: &Value, did: &str, device_id: &str) -> Result<(String, String), ChatError> {
    let object = keys.as_object().ok_or_else(|| ChatError::invalid("deviceKeys must be an object".into()))?;
    if object.get("user_id").and_then(Value::as_str) != Some(did) {
        return Err(ChatError::invalid(format!("deviceKeys.user_id must be {did}")));
    }
    if object.get("device_id").and_then(Value::as_str) != Some(device_id) {
        return Err(ChatError::invalid(format!("deviceKeys.device_id must be {device_id}")));
    }
    let algorithms: Vec<&str> =
        object.get("algorithms").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    if !algorithms.contains(&OLM) || !algorithms.contains(&MEGOLM) {
        return Err(ChatError::invalid(format!("deviceKeys.algorithms must name {OLM} and {MEGOLM}")));
    }
    let listed = object.get("keys").and_then(Value::as_object);
    let key = |name: String| {
        listed
            .and_then(|k| k.get(&name))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ChatError::invalid(format!("deviceKeys.keys must hold {name}")))
    };
    let curve = key(format!("curve25519:{device_id}"))?;
    let ed = key(format!("ed25519:{device_id}"))?;
    parse_curve(&curve)?;
    let signing = parse_ed(&ed)?;
    canonical::verify(object, did, &format!("ed25519:{device_id}"), &signing)
        .map_err(|e| ChatError::refused(400, "InvalidSignature", format!("deviceKeys: {e}")))?;
    Ok((curve, ed))
}

/// An Ed25519 key from its unpadded base64.
pub(crate) fn parse_ed(b64: &str) -> Result<Ed25519PublicKey, ChatError> {
    Ed25519PublicKey::from_base64(b64).map_err(|_| ChatError::invalid(format!("{b64:?} is not an Ed25519 key")))
}

/// Checks a signed key object (`{key, signatures}`, `fallback: true` for a fallback key) under
/// its name `signed_curve25519:<id>`; returns the key id part.
pub(crate) fn check_signed_key(
    name: &str,
    object: &Value,
    did: &str,
    device_id: &str,
    signing: &Ed25519PublicKey,
    fallback: bool,
) -> Result<(), ChatError> {
    let id = name
        .strip_prefix(SIGNED_CURVE)
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(|| ChatError::invalid(format!("key name {name:?} must be {SIGNED_CURVE}:<key id>")))?;
    if !valid_id(id) {
        return Err(ChatError::invalid(format!("key id {id:?} is not a valid id")));
    }
    let o = object.as_object().ok_or_else(|| ChatError::invalid(format!("key {name} must be an object")))?;
    parse_curve(o.get("key").and_then(Value::as_str).unwrap_or_default())?;
    if fallback && o.get("fallback") != Some(&Value::Bool(true)) {
        return Err(ChatError::invalid(format!("fallback key {name} must say \"fallback\": true")));
    }
    canonical::verify(o, did, &format!("ed25519:{device_id}"), signing)
        .map_err(|e| ChatError::refused(400, "InvalidSignature", format!("key {name}: {e}")))
}

/// Stores what a client device uploads (`uploadKeys`) for `did`, whose built-in device is
/// `built_in`: all of it, or nothing.
pub(crate) fn upload(tx: &Transaction<'_>, did: &str, built_in: &str, body: &Value) -> Result<Value, ChatError> {
    let device_id = body.get("deviceId").and_then(Value::as_str).unwrap_or_default();
    if !valid_id(device_id) {
        return Err(ChatError::invalid("deviceId must be 1 to 64 letters, digits or +/=._-".into()));
    }
    if device_id == built_in {
        return Err(ChatError::invalid(format!("{device_id} is the node's built-in device")));
    }
    let held = device_identity(tx, did, device_id)?;
    let ed = match (body.get("deviceKeys").filter(|v| !v.is_null()), &held) {
        (Some(keys), held) => {
            let (curve, ed) = check_device_keys(keys, did, device_id)?;
            match held {
                Some((c, e)) if (c, e) != (&curve, &ed) => {
                    return Err(ChatError::invalid(format!(
                        "device {device_id} has other keys: a device's keys never change (use a new device id)"
                    )));
                }
                Some(_) => {}
                None => {
                    let devices: i64 = tx
                        .prepare_cached("SELECT count(*) FROM chat_device WHERE did = ?1 AND built_in = 0")?
                        .query_row([did], |r| r.get(0))?;
                    if devices >= MAX_DEVICES {
                        return Err(ChatError::refused(
                            409,
                            "TooManyDevices",
                            format!("an account has at most {MAX_DEVICES} devices"),
                        ));
                    }
                    tx.prepare_cached(
                        "INSERT INTO chat_device (did, device_id, built_in, device_keys, curve25519, ed25519, created_at)
                         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![did, device_id, keys.to_string(), curve, ed, now_ms()])?;
                }
            }
            ed
        }
        (None, Some((_, ed))) => ed.clone(),
        (None, None) => {
            return Err(ChatError::refused(400, "DeviceNotFound", format!("upload deviceKeys for {device_id} first")));
        }
    };
    let signing = parse_ed(&ed)?;
    let empty = Map::new();
    let object = |field: &str| match body.get(field) {
        None | Some(Value::Null) => Ok(&empty),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(ChatError::invalid(format!("{field} must be an object"))),
    };
    let otks = object("oneTimeKeys")?;
    let fallbacks = object("fallbackKeys")?;
    if otks.len() > MAX_OTKS {
        return Err(ChatError::refused(400, "TooManyKeys", format!("at most {MAX_OTKS} one-time keys per upload")));
    }
    if fallbacks.len() > 1 {
        return Err(ChatError::invalid("at most one fallback key".into()));
    }
    let mut fresh = 0usize;
    for (name, key) in otks {
        check_signed_key(name, key, did, device_id, &signing, false)?;
        let stored: Option<String> = tx
            .prepare_cached(
                "SELECT key FROM chat_otk WHERE did = ?1 AND device_id = ?2 AND fallback = 0 AND key_id = ?3",
            )?
            .query_row([did, device_id, name], |r| r.get(0))
            .optional()?;
        match stored {
            Some(s) if serde_json::from_str::<Value>(&s).ok().as_ref() != Some(key) => {
                return Err(ChatError::invalid(format!("key {name} was uploaded before with another value")));
            }
            Some(_) => {}
            None => fresh += 1,
        }
    }
    let count = |tx: &Transaction<'_>| -> Result<i64, ChatError> {
        Ok(tx
            .prepare_cached("SELECT count(*) FROM chat_otk WHERE did = ?1 AND device_id = ?2 AND fallback = 0")?
            .query_row([did, device_id], |r| r.get(0))?)
    };
    if count(tx)? as usize + fresh > MAX_OTKS {
        return Err(ChatError::refused(
            400,
            "TooManyKeys",
            format!("a device holds at most {MAX_OTKS} published one-time keys"),
        ));
    }
    for (name, key) in fallbacks {
        check_signed_key(name, key, did, device_id, &signing, true)?;
    }
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO chat_otk (did, device_id, key_id, key, fallback) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (name, key) in otks {
        insert.execute(params![did, device_id, name, key.to_string(), 0])?;
    }
    for (name, key) in fallbacks {
        tx.prepare_cached("DELETE FROM chat_otk WHERE did = ?1 AND device_id = ?2 AND fallback = 1")?
            .execute([did, device_id])?;
        insert.execute(params![did, device_id, name, key.to_string(), 1])?;
    }
    Ok(json!({ "oneTimeKeyCounts": { SIGNED_CURVE: count(tx)? } }))
}

/// The published devices of `did` (`queryKeys`).
pub(crate) fn query(conn: &Connection, did: &str) -> Result<Value, ChatError> {
    let mut stmt = conn.prepare_cached(
        "SELECT device_id, device_keys, built_in FROM chat_device
         WHERE did = ?1 AND device_keys IS NOT NULL ORDER BY built_in DESC, device_id",
    )?;
    let devices: Vec<Value> = stmt
        .query_map([did], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?)))?
        .map(|row| {
            let (id, keys, built_in) = row?;
            let keys: Value = serde_json::from_str(&keys)
                .map_err(|e| ChatError::Corrupt(format!("device keys of {did} {id}: {e}")))?;
            Ok(json!({ "deviceId": id, "deviceKeys": keys, "builtIn": built_in }))
        })
        .collect::<Result<_, ChatError>>()?;
    Ok(json!({ "devices": devices }))
}

/// Hands out one key of `did`'s device `device_id` (`claimKeys`): a one-time key (then gone),
/// else its fallback key. A built-in device publishes more when it runs low.
pub(crate) fn claim(tx: &Transaction<'_>, sealer: &Sealer, did: &str, device_id: &str) -> Result<Value, ChatError> {
    let built_in: Option<bool> = tx
        .prepare_cached(
            "SELECT built_in FROM chat_device WHERE did = ?1 AND device_id = ?2 AND device_keys IS NOT NULL",
        )?
        .query_row([did, device_id], |r| r.get(0))
        .optional()?;
    let Some(built_in) = built_in else {
        return Err(ChatError::refused(400, "DeviceNotFound", format!("{did} has no device {device_id}")));
    };
    let pick = |fallback: bool| -> Result<Option<(String, String)>, ChatError> {
        Ok(tx
            .prepare_cached(
                "SELECT key_id, key FROM chat_otk WHERE did = ?1 AND device_id = ?2 AND fallback = ?3 ORDER BY key_id LIMIT 1",
            )?
            .query_row(params![did, device_id, fallback], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    };
    let (key_id, key, fallback) = match pick(false)? {
        Some((id, key)) => {
            tx.prepare_cached(
                "DELETE FROM chat_otk WHERE did = ?1 AND device_id = ?2 AND fallback = 0 AND key_id = ?3",
            )?
            .execute([did, device_id, &id])?;
            (id, key, false)
        }
        None => match pick(true)? {
            Some((id, key)) => (id, key, true),
            None => {
                return Err(ChatError::refused(
                    400,
                    "NoKeysAvailable",
                    format!("device {device_id} has no one-time or fallback key left"),
                ));
            }
        },
    };
    if built_in && let Some(mut device) = Device::load(tx, did)? {
        device.replenish(tx, sealer)?;
    }
    let key: Value = serde_json::from_str(&key).map_err(|e| ChatError::Corrupt(format!("key {key_id}: {e}")))?;
    let mut out = json!({ "deviceId": device_id, "keyId": key_id, "key": key });
    if fallback {
        out["fallback"] = Value::Bool(true);
    }
    Ok(out)
}
