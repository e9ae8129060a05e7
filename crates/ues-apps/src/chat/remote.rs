//! Accounts held on other nodes: their devices' keys fetched from their own node (found from the
//! DID document's `#atproto_pds`) and checked here (every device's self-signature, every
//! one-time key's signature) before they are used; envelopes for them queued in an outbox
//! (written in the transaction that made them) and delivered by a task, with service-auth tokens
//! signed by the sender's repository key for the recipient's DID, retried with backoff. The
//! receiving node stores an envelope once by its digest, so a retry never delivers twice.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use ues_protocol::node::Node;
use ues_protocol::sync::repo::ipld::storage::rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::inbox::Envelope;
use super::keys::{check_device_keys, check_signed_key, parse_ed};
use super::{Chat, ChatError, NAME, Sealer, now_ms};

/// How long fetched device keys are used before they are fetched again.
const DEVICES_FRESH_MS: i64 = 60_000;
/// Devices taken from one remote account at most.
const MAX_REMOTE_DEVICES: usize = 64;
/// How long an envelope is retried before it is given up.
const GIVE_UP_MS: i64 = 72 * 3600 * 1000;
/// Longest wait between tries.
const MAX_BACKOFF_MS: i64 = 3600 * 1000;
/// Envelopes sent to one account in one call at most.
const BATCH: i64 = 100;

fn bad(message: String) -> ChatError {
    ChatError::refused(502, "UpstreamFailure", message)
}

/// Calls `lxm` on `did`'s node as `sender` (a service-auth token for `did`): status and JSON.
fn call(
    node: &Node,
    sender: &str,
    did: &str,
    lxm: &str,
    query: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), ChatError> {
    Ok(crate::peer::call(node, Some(sender), did, lxm, query, body)?)
}

/// Fetches `did`'s devices from its node (as `sender` asks), keeps those whose keys check, and
/// remembers them; returns the `queryKeys` answer.
pub(crate) fn fetch_devices(app: &Chat, sender: &str, did: &str) -> Result<Value, ChatError> {
    let node = app.node();
    let (status, v) = call(node, sender, did, "dev.ues.chat.queryKeys", &format!("?did={did}"), None)?;
    if status != 200 {
        let name = v["error"].as_str().unwrap_or("UpstreamFailure").to_string();
        return Err(if name == "AccountNotFound" {
            ChatError::refused(400, "AccountNotFound", format!("{did} is not held by its PDS"))
        } else {
            bad(format!("queryKeys for {did} answered {status} {name}"))
        });
    }
    let mut kept = Vec::new();
    for d in v["devices"].as_array().into_iter().flatten().take(MAX_REMOTE_DEVICES) {
        let id = d["deviceId"].as_str().unwrap_or_default();
        match check_device_keys(&d["deviceKeys"], did, id) {
            Ok((curve, ed)) => kept.push((id.to_string(), d["deviceKeys"].clone(), curve, ed, d["builtIn"] == true)),
            Err(e) => {
                tracing::info!(app = NAME, %did, device = id, error = %e, "a remote device's keys do not check: left out")
            }
        }
    }
    app.node().accounts.db().write(|tx| {
        tx.execute("DELETE FROM chat_remote_device WHERE did = ?1", [did])?;
        let mut put = tx.prepare_cached(
            "INSERT INTO chat_remote_device (did, device_id, device_keys, curve25519, ed25519, built_in, fetched_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (id, keys, curve, ed, built_in) in &kept {
            put.execute(params![did, id, keys.to_string(), curve, ed, built_in, now_ms()])?;
        }
        Ok::<_, ChatError>(())
    })?;
    let devices: Vec<Value> = kept
        .into_iter()
        .map(|(id, keys, _, _, built_in)| json!({ "deviceId": id, "deviceKeys": keys, "builtIn": built_in }))
        .collect();
    Ok(json!({ "devices": devices }))
}

/// `did`'s devices as last fetched, fetched again when older than a minute.
pub(crate) fn devices(app: &Chat, sender: &str, did: &str) -> Result<(), ChatError> {
    let fetched: Option<i64> = app.node().accounts.db().read(|c| {
        c.prepare_cached("SELECT max(fetched_at) FROM chat_remote_device WHERE did = ?1")?
            .query_row([did], |r| r.get(0))
            .optional()
            .map(Option::flatten)
    })?;
    if fetched.is_some_and(|at| now_ms() - at < DEVICES_FRESH_MS) {
        return Ok(());
    }
    fetch_devices(app, sender, did).map(|_| ())
}

/// The Ed25519 key of a remote device, as last fetched.
pub(crate) fn device_ed25519(conn: &Connection, did: &str, device_id: &str) -> Result<Option<String>, ChatError> {
    Ok(conn
        .prepare_cached("SELECT ed25519 FROM chat_remote_device WHERE did = ?1 AND device_id = ?2")?
        .query_row([did, device_id], |r| r.get(0))
        .optional()?)
}

/// Claims a key of a remote device from its node (as `sender`), checking its signature with the
/// device's key as fetched before.
pub(crate) fn claim(app: &Chat, sender: &str, did: &str, device_id: &str) -> Result<Value, ChatError> {
    devices(app, sender, did)?;
    let ed = app
        .node()
        .accounts
        .db()
        .read(|c| device_ed25519(c, did, device_id))?
        .ok_or_else(|| ChatError::refused(400, "DeviceNotFound", format!("{did} has no device {device_id}")))?;
    let body = json!({ "did": did, "deviceId": device_id });
    let (status, v) = call(app.node(), sender, did, "dev.ues.chat.claimKeys", "", Some(&body))?;
    if status != 200 {
        let name = v["error"].as_str().unwrap_or("UpstreamFailure");
        return Err(match name {
            "DeviceNotFound" | "NoKeysAvailable" => ChatError::refused(
                400,
                if name == "DeviceNotFound" { "DeviceNotFound" } else { "NoKeysAvailable" },
                format!("{did} {device_id}: {name}"),
            ),
            _ => bad(format!("claimKeys for {did} answered {status} {name}")),
        });
    }
    let key_id = v["keyId"].as_str().unwrap_or_default();
    let fallback = v["fallback"] == true;
    check_signed_key(key_id, &v["key"], did, device_id, &parse_ed(&ed)?, fallback)?;
    Ok(v)
}

/// Queues envelopes for accounts held elsewhere, in the transaction that made them.
pub(crate) fn queue(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    sender: &str,
    envelopes: &[Envelope],
) -> Result<(), ChatError> {
    let now = now_ms();
    let mut put = tx.prepare_cached(
        "INSERT INTO chat_outbox (sender, did, device_id, sender_device, envelope, created_at, next_try_at)
         VALUES (?1, ?2, ?3, ?4, x'', ?5, ?5)",
    )?;
    for e in envelopes {
        put.execute(params![sender, e.did, e.device_id, e.sender_device, now])?;
        let id = tx.last_insert_rowid();
        let sealed = sealer.seal("outbox", &[sender, &e.did, &id.to_string()], &e.bytes);
        tx.prepare_cached("UPDATE chat_outbox SET envelope = ?2 WHERE id = ?1")?.execute(params![id, sealed])?;
    }
    Ok(())
}

/// Envelopes one account has waiting to go out.
pub(crate) fn queued(conn: &Connection, sender: &str) -> Result<i64, ChatError> {
    Ok(conn.prepare_cached("SELECT count(*) FROM chat_outbox WHERE sender = ?1")?.query_row([sender], |r| r.get(0))?)
}

/// One round of delivery: every (sender, recipient) pair with envelopes due, a call each.
/// Returns how many envelopes were delivered.
pub(crate) fn deliver_due(app: &Chat) -> Result<usize, ChatError> {
    let node = app.node();
    let sealer = app.sealer();
    let now = now_ms();
    let pairs: Vec<(String, String)> = node.accounts.db().read(|c| {
        c.prepare_cached("SELECT DISTINCT sender, did FROM chat_outbox WHERE next_try_at <= ?1 LIMIT 100")?
            .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()
    })?;
    let mut delivered = 0;
    for (sender, did) in pairs {
        type Row = (i64, String, String, Vec<u8>, i64, i64);
        let rows: Vec<Row> = node.accounts.db().read(|c| {
            c.prepare_cached(
                "SELECT id, device_id, sender_device, envelope, attempts, created_at FROM chat_outbox
                 WHERE sender = ?1 AND did = ?2 AND next_try_at <= ?3 ORDER BY id LIMIT ?4",
            )?
            .query_map(params![sender, did, now, BATCH], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect::<Result<Vec<_>, _>>()
        })?;
        let mut messages = Vec::with_capacity(rows.len());
        let mut rows_sent = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, device, sender_device, sealed, _, _) = &row;
            let opened = sealer
                .open("outbox", &[&sender, &did, &id.to_string()], sealed)
                .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| ChatError::Corrupt(e.to_string())));
            match opened {
                Ok(envelope) => {
                    messages.push(
                        json!({ "did": did, "deviceId": device, "senderDevice": sender_device, "envelope": envelope }),
                    );
                    rows_sent.push(row);
                }
                // A row that does not open (altered, or moved) is dropped: it must not hold up the rest.
                Err(e) => {
                    tracing::warn!(app = NAME, %sender, to = %did, row = id, error = %e, "an outbox envelope does not open: dropped");
                    node.accounts.db().write(|tx| {
                        tx.execute("DELETE FROM chat_outbox WHERE id = ?1", [id]).map_err(ChatError::from)
                    })?;
                }
            }
        }
        let rows = rows_sent;
        if rows.is_empty() {
            continue;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let outcome =
            call(node, &sender, &did, "dev.ues.chat.sendToDevice", "", Some(&json!({ "messages": messages })));
        let (give_up, why) = match &outcome {
            Ok((200, _)) => (true, None),
            // Refused for good: the account or device is not there, or the envelope is refused.
            Ok((status, v)) if *status == 400 || *status == 413 => (true, Some(format!("{status} {}", v["error"]))),
            Ok((status, v)) => (false, Some(format!("{status} {}", v["error"]))),
            Err(e) => (false, Some(e.to_string())),
        };
        node.accounts.db().write(|tx| {
            for (id, _, _, _, attempts, created) in &rows {
                if give_up || now - created > GIVE_UP_MS {
                    tx.prepare_cached("DELETE FROM chat_outbox WHERE id = ?1")?.execute([id])?;
                } else {
                    let wait = (1000i64 << (*attempts).min(22)).min(MAX_BACKOFF_MS);
                    tx.prepare_cached(
                        "UPDATE chat_outbox SET attempts = attempts + 1, next_try_at = ?2 WHERE id = ?1",
                    )?
                    .execute(params![id, now + wait])?;
                }
            }
            Ok::<_, ChatError>(())
        })?;
        match why {
            None => delivered += ids.len(),
            Some(why) => {
                tracing::info!(app = NAME, %sender, to = %did, envelopes = ids.len(), gave_up = give_up, reason = %why, "envelopes not delivered")
            }
        }
    }
    Ok(delivered)
}

/// The outbox task: delivers what is due, woken when envelopes are queued, else every second.
pub(crate) async fn run(app: Arc<Chat>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), app.outbox_poke.notified()).await;
        let worker = app.clone();
        match tokio::task::spawn_blocking(move || deliver_due(&worker)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(app = NAME, error = %e, "the chat outbox could not be delivered"),
            Err(e) => tracing::warn!(app = NAME, error = %e, "the chat outbox task stopped"),
        }
    }
}
