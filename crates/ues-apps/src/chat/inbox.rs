//! Devices' inboxes: envelopes sent to a device wait here (sealed) until the device
//! acknowledges them. Bounded per device; the same envelope sent twice is stored once.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ues_protocol::node::sequencer::iso_from_millis;
use ues_protocol::sync::repo::ipld::storage::rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::device::{MEGOLM, OLM};
use super::keys::valid_id;
use super::{ChatConfig, ChatError, Sealer, now_ms};

/// Largest envelope (its JSON), as Matrix bounds an event.
pub(crate) const MAX_ENVELOPE: usize = 64 * 1024;
/// How long an acknowledged envelope's digest is kept (longer than a sender retries).
const ACKED_KEPT_MS: i64 = 4 * 24 * 3600 * 1000;

/// New inbox items, by account and device (for live sockets).
pub(crate) type NewItems = Vec<(String, String, Value)>;

/// An inbox row: id, sender, sender device, sealed envelope, digest, received at.
type Row = (i64, String, String, Vec<u8>, Vec<u8>, i64);

/// One envelope for one device, checked.
pub(crate) struct Envelope {
    pub(crate) did: String,
    pub(crate) device_id: String,
    pub(crate) sender_device: String,
    pub(crate) bytes: Vec<u8>,
}

/// Checks an envelope (Matrix `m.room.encrypted` content: Olm or Megolm) and its size; returns
/// its JSON bytes.
pub(crate) fn check_envelope(envelope: &Value) -> Result<Vec<u8>, ChatError> {
    let bytes = serde_json::to_vec(envelope).expect("a JSON value serialises");
    if bytes.len() > MAX_ENVELOPE {
        return Err(ChatError::refused(
            413,
            "EnvelopeTooLarge",
            format!("an envelope is at most {MAX_ENVELOPE} bytes ({} given)", bytes.len()),
        ));
    }
    let str_of = |k: &str| envelope.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let need = |k: &str| str_of(k).ok_or_else(|| ChatError::invalid(format!("the envelope has no {k}")));
    match str_of("algorithm") {
        Some(OLM) => {
            need("sender_key")?;
            let ciphertext =
                envelope.get("ciphertext").and_then(Value::as_object).filter(|c| !c.is_empty()).ok_or_else(|| {
                    ChatError::invalid("an Olm envelope's ciphertext maps recipient keys to messages".into())
                })?;
            for (key, m) in ciphertext {
                let ok = matches!(m.get("type").and_then(Value::as_u64), Some(0 | 1))
                    && m.get("body").and_then(Value::as_str).is_some_and(|b| !b.is_empty());
                if !ok {
                    return Err(ChatError::invalid(format!("the Olm message for {key} needs type 0 or 1 and a body")));
                }
            }
        }
        Some(MEGOLM) => {
            need("sender_key")?;
            need("session_id")?;
            need("ciphertext")?;
        }
        _ => return Err(ChatError::invalid(format!("the envelope's algorithm must be {OLM} or {MEGOLM}"))),
    }
    Ok(bytes)
}

/// The sealing context of an inbox envelope.
fn parts<'a>(did: &'a str, device_id: &'a str, digest: &'a str) -> [&'a str; 3] {
    [did, device_id, digest]
}

/// Stores envelopes from `sender` for devices of accounts held here: all of them, or none
/// (an unknown device or a full inbox refuses the whole call). Returns how many were delivered
/// (an envelope already delivered counts, and is not stored again) and the new items, by device.
pub(crate) fn deliver(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    cfg: &ChatConfig,
    sender: &str,
    envelopes: &[Envelope],
) -> Result<(usize, NewItems), ChatError> {
    let now = now_ms();
    let mut adding: std::collections::BTreeMap<(&str, &str), (i64, i64)> = Default::default();
    for e in envelopes {
        if !valid_id(&e.sender_device) {
            return Err(ChatError::invalid("senderDevice must be 1 to 64 letters, digits or +/=._-".into()));
        }
        let n = adding.entry((&e.did, &e.device_id)).or_default();
        n.0 += 1;
        n.1 += e.bytes.len() as i64;
    }
    for ((did, device_id), (items, bytes)) in &adding {
        let known = tx
            .prepare_cached("SELECT 1 FROM chat_device WHERE did = ?1 AND device_id = ?2 AND device_keys IS NOT NULL")?
            .query_row([did, device_id], |_| Ok(()))
            .optional()?;
        if known.is_none() {
            return Err(ChatError::refused(400, "DeviceNotFound", format!("{did} has no device {device_id}")));
        }
        let (held, held_bytes): (i64, i64) = tx
            .prepare_cached(
                "SELECT count(*), coalesce(sum(size), 0) FROM chat_inbox WHERE did = ?1 AND device_id = ?2 AND acked_at IS NULL",
            )?
            .query_row([did, device_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if held + items > cfg.max_inbox_items || held_bytes + bytes > cfg.max_inbox_bytes {
            tracing::info!(app = super::NAME, %did, device = device_id, held, sender, "an inbox is full: envelopes refused");
            return Err(ChatError::refused(
                429,
                "InboxFull",
                format!("the inbox of {did} {device_id} is full ({held} envelopes waiting)"),
            ));
        }
    }
    let mut delivered = 0;
    let mut new = Vec::new();
    for e in envelopes {
        let digest = Sha256::digest(&e.bytes);
        let hex_digest = data_encoding::HEXLOWER.encode(&digest);
        let sealed = sealer.seal("inbox", &parts(&e.did, &e.device_id, &hex_digest), &e.bytes);
        let inserted = tx
            .prepare_cached(
                "INSERT INTO chat_inbox (did, device_id, sender, sender_device, envelope, digest, size, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (did, device_id, digest) DO NOTHING",
            )?
            .execute(params![
                e.did,
                e.device_id,
                sender,
                e.sender_device,
                sealed,
                &digest[..],
                e.bytes.len() as i64,
                now
            ])?;
        delivered += 1;
        if inserted == 1 {
            let envelope: Value = serde_json::from_slice(&e.bytes).expect("checked JSON");
            let item = json!({
                "id": tx.last_insert_rowid().to_string(),
                "sender": sender,
                "senderDevice": e.sender_device,
                "envelope": envelope,
                "receivedAt": iso_from_millis(now),
            });
            new.push((e.did.clone(), e.device_id.clone(), item));
        }
    }
    Ok((delivered, new))
}

/// Whether `did` has the device `device_id` here (with published keys).
pub(crate) fn has_device(conn: &Connection, did: &str, device_id: &str) -> Result<bool, ChatError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM chat_device WHERE did = ?1 AND device_id = ?2 AND device_keys IS NOT NULL")?
        .query_row([did, device_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Envelopes waiting for `did`'s device `device_id`, oldest first, after `cursor` (an item id).
pub(crate) fn list(
    conn: &Connection,
    sealer: &Sealer,
    did: &str,
    device_id: &str,
    cursor: i64,
    limit: i64,
) -> Result<Value, ChatError> {
    if !has_device(conn, did, device_id)? {
        return Err(ChatError::refused(400, "DeviceNotFound", format!("you have no device {device_id}")));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, sender, sender_device, envelope, digest, received_at FROM chat_inbox
         WHERE did = ?1 AND device_id = ?2 AND acked_at IS NULL AND id > ?3 ORDER BY id LIMIT ?4",
    )?;
    let rows: Vec<Row> = stmt
        .query_map(params![did, device_id, cursor, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut items = Vec::with_capacity(rows.len());
    let mut last = None;
    for (id, sender, sender_device, sealed, digest, at) in rows {
        let hex_digest = data_encoding::HEXLOWER.encode(&digest);
        let bytes = sealer.open("inbox", &parts(did, device_id, &hex_digest), &sealed)?;
        let envelope: Value =
            serde_json::from_slice(&bytes).map_err(|e| ChatError::Corrupt(format!("inbox item {id}: {e}")))?;
        items.push(json!({
            "id": id.to_string(),
            "sender": sender,
            "senderDevice": sender_device,
            "envelope": envelope,
            "receivedAt": iso_from_millis(at),
        }));
        last = Some(id);
    }
    let mut out = json!({ "items": items });
    if let Some(last) = last.filter(|_| out["items"].as_array().is_some_and(|a| a.len() as i64 == limit)) {
        out["cursor"] = Value::String(last.to_string());
    }
    Ok(out)
}

/// Acknowledges `did`'s device's envelopes up to and including `up_to`: they are no longer
/// listed, and only their digests are kept (for a while) to recognise them if sent again.
pub(crate) fn ack(tx: &Transaction<'_>, did: &str, device_id: &str, up_to: i64) -> Result<usize, ChatError> {
    if !has_device(tx, did, device_id)? {
        return Err(ChatError::refused(400, "DeviceNotFound", format!("you have no device {device_id}")));
    }
    let now = now_ms();
    let removed = tx
        .prepare_cached(
            "UPDATE chat_inbox SET acked_at = ?4, envelope = x'' WHERE did = ?1 AND device_id = ?2 AND id <= ?3 AND acked_at IS NULL",
        )?
        .execute(params![did, device_id, up_to, now])?;
    tx.prepare_cached(
        "DELETE FROM chat_inbox WHERE id IN (SELECT id FROM chat_inbox WHERE acked_at < ?1 ORDER BY acked_at LIMIT 1000)",
    )?
    .execute([now - ACKED_KEPT_MS])?;
    Ok(removed)
}
