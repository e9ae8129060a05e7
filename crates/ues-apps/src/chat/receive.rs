//! What an account's built-in device does with the envelopes in its inbox: decrypts each one
//! (Olm, or Megolm with a room key that came over Olm), checks who it is from and for as Matrix
//! requires, and keeps the conversation changes and messages it carries. One envelope per
//! transaction, acknowledged in it: an envelope that does not decrypt or does not check is
//! dropped (logged) and changes no session; a replayed one is refused (Olm: its message key is
//! spent; Megolm: its index was read before).

use serde_json::Value;
use ues_protocol::sync::repo::ipld::storage::rusqlite::{Connection, OptionalExtension, Transaction, params};
use vodozemac::megolm::{InboundGroupSession, InboundGroupSessionPickle, MegolmMessage, SessionConfig, SessionKey};
use vodozemac::olm::OlmMessage;
use zeroize::Zeroizing;

use super::convo::{self, CONVO, Convo, LEAVE, MESSAGE, ROOM_KEY};
use super::device::{Device, MEGOLM, OLM};
use super::{ChatError, Sealer};

/// Inbound Megolm sessions one device keeps at most (the oldest go first).
const MAX_INBOUND: i64 = 10_000;

/// Why an envelope was dropped.
type Dropped = String;

/// Accounts whose built-in device has envelopes waiting (at most `limit`).
pub(crate) fn pending(conn: &Connection, limit: i64) -> Result<Vec<(String, String)>, ChatError> {
    Ok(conn
        .prepare_cached(
            "SELECT DISTINCT i.did, i.device_id FROM chat_inbox i JOIN chat_device d
               ON d.did = i.did AND d.device_id = i.device_id AND d.built_in = 1
             WHERE i.acked_at IS NULL LIMIT ?1",
        )?
        .query_map([limit], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Reads the oldest envelope waiting for `did`'s built-in device, keeps what it carries and
/// acknowledges it. `None` when there was none.
pub(crate) fn next(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    did: &str,
    device_id: &str,
) -> Result<Option<bool>, ChatError> {
    let page = super::inbox::list(tx, sealer, did, device_id, 0, 1)?;
    let Some(item) = page["items"].as_array().and_then(|a| a.first()).cloned() else { return Ok(None) };
    let id: i64 = item["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or_default();
    let Some(mut me) = Device::load(tx, did)? else { return Ok(None) };
    let sender = item["sender"].as_str().unwrap_or_default();
    let sender_device = item["senderDevice"].as_str().unwrap_or_default();
    let outcome = match item["envelope"]["algorithm"].as_str() {
        Some(OLM) => olm(tx, sealer, &mut me, sender, sender_device, &item["envelope"]),
        Some(MEGOLM) => megolm(tx, sealer, &me, sender, sender_device, &item["envelope"]),
        _ => Err("an unknown algorithm".to_string()),
    };
    super::inbox::ack(tx, did, device_id, id)?;
    match outcome {
        Ok(()) => Ok(Some(true)),
        Err(why) => {
            tracing::info!(app = super::NAME, %did, item = id, %sender, reason = %why, "an envelope was dropped");
            Ok(Some(false))
        }
    }
}

/// The device id and Ed25519 key of `sender`'s device whose Curve25519 key is `curve`, as
/// published here or as fetched from the sender's node.
pub(crate) fn sender_ed25519(
    conn: &Connection,
    sender: &str,
    curve: &str,
) -> Result<Option<(String, String)>, ChatError> {
    let here = conn
        .prepare_cached(
            "SELECT device_id, ed25519 FROM chat_device WHERE did = ?1 AND curve25519 = ?2 AND device_keys IS NOT NULL",
        )?
        .query_row([sender, curve], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if here.is_some() {
        return Ok(here);
    }
    Ok(conn
        .prepare_cached("SELECT device_id, ed25519 FROM chat_remote_device WHERE did = ?1 AND curve25519 = ?2")?
        .query_row([sender, curve], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// The sender and sending key of the oldest envelope waiting for a device (to fetch the
/// sender's devices from its node first, outside the transaction that reads it).
pub(crate) fn peek(
    conn: &Connection,
    sealer: &Sealer,
    did: &str,
    device_id: &str,
) -> Result<Option<(String, String)>, ChatError> {
    let page = super::inbox::list(conn, sealer, did, device_id, 0, 1)?;
    Ok(page["items"].as_array().and_then(|a| a.first()).map(|item| {
        (
            item["sender"].as_str().unwrap_or_default().to_string(),
            item["envelope"]["sender_key"].as_str().unwrap_or_default().to_string(),
        )
    }))
}

fn olm(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    me: &mut Device,
    sender: &str,
    sender_device: &str,
    envelope: &Value,
) -> Result<(), Dropped> {
    let (my_curve, my_ed) = me.identity();
    let their_curve = envelope["sender_key"].as_str().unwrap_or_default();
    let Some(m) = envelope["ciphertext"].get(&my_curve) else {
        return Err("no ciphertext for this device".into());
    };
    let message: OlmMessage = serde_json::from_value(m.clone()).map_err(|e| format!("not an Olm message: {e}"))?;
    let (device, ed) = sender_ed25519(tx, sender, their_curve)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the sending key is no device of {sender}"))?;
    if !sender_device.is_empty() && device != sender_device {
        return Err(format!("the sending key is device {device}, not {sender_device}"));
    }
    let plain = me.decrypt(tx, sealer, their_curve, &message).map_err(|e| e.to_string())?;
    let plain = Zeroizing::new(plain);
    let p: Value = serde_json::from_slice(&plain).map_err(|_| "the plaintext is not JSON".to_string())?;
    // Matrix's checks on an Olm plaintext: who it is from, and for.
    if p["sender"].as_str() != Some(sender) {
        return Err("the plaintext names another sender".into());
    }
    if p["recipient"].as_str() != Some(me.did.as_str()) || p["recipient_keys"]["ed25519"].as_str() != Some(&my_ed) {
        return Err("the plaintext is for another device".into());
    }
    if p["keys"]["ed25519"].as_str() != Some(ed.as_str()) {
        return Err("the plaintext's signing key is not the sending device's".into());
    }
    let content = &p["content"];
    let convo_id = content["convoId"].as_str().or_else(|| content["room_id"].as_str()).unwrap_or_default();
    match p["type"].as_str() {
        Some(MESSAGE) => {
            let text = content["text"].as_str().ok_or("a message without text")?;
            keep_message(tx, sealer, me, convo_id, sender, &device, text)
        }
        Some(CONVO) => membership(tx, me, sender, content),
        Some(LEAVE) => {
            let Some(mut c) = Convo::load(tx, &me.did, convo_id).map_err(|e| e.to_string())? else {
                return Err("a leave from an unknown conversation".into());
            };
            if c.members.iter().any(|m| m == sender) {
                c.members.retain(|m| m != sender);
                c.store(tx, &me.did).map_err(|e| e.to_string())?;
                convo::drop_outbound(tx, &me.did, convo_id).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Some(ROOM_KEY) => room_key(tx, sealer, me, sender, their_curve, content),
        other => Err(format!("an Olm plaintext of type {other:?}")),
    }
}

fn keep_message(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    me: &Device,
    convo_id: &str,
    sender: &str,
    device: &str,
    text: &str,
) -> Result<(), Dropped> {
    let Some(c) = Convo::load(tx, &me.did, convo_id).map_err(|e| e.to_string())? else {
        return Err(format!("a message for unknown conversation {convo_id:?}"));
    };
    if c.left || !c.members.iter().any(|m| m == sender) {
        return Err("a message from outside the conversation".into());
    }
    convo::store_message(tx, sealer, &me.did, convo_id, sender, device, text).map_err(|e| e.to_string())?;
    Ok(())
}

/// A conversation's membership from its creator: a new conversation, or a higher epoch.
fn membership(tx: &Transaction<'_>, me: &Device, sender: &str, content: &Value) -> Result<(), Dropped> {
    let id = content["convoId"].as_str().ok_or("a membership without convoId")?;
    let epoch = content["epoch"].as_i64().ok_or("a membership without epoch")?;
    let members: Vec<String> = content["members"]
        .as_array()
        .ok_or("a membership without members")?
        .iter()
        .filter_map(|m| m.as_str().map(str::to_string))
        .take(convo::MAX_MEMBERS)
        .collect();
    let held = Convo::load(tx, &me.did, id).map_err(|e| e.to_string())?;
    let mut c = match held {
        Some(c) if c.creator != sender => return Err("a membership from someone not its creator".into()),
        Some(c) if epoch <= c.epoch => return Ok(()),
        Some(c) => c,
        None if content["creator"].as_str() != Some(sender) => {
            return Err("a new conversation not from its creator".into());
        }
        None if !members.contains(&me.did) => return Ok(()),
        None => Convo {
            id: id.to_string(),
            creator: sender.to_string(),
            name: None,
            members: Vec::new(),
            epoch: 0,
            left: false,
        },
    };
    let shrank = c.members.iter().any(|m| !members.contains(m));
    c.name = content["name"].as_str().map(|n| n.chars().take(64).collect());
    c.left = !members.contains(&me.did);
    c.members = members;
    c.epoch = epoch;
    c.store(tx, &me.did).map_err(|e| e.to_string())?;
    if shrank {
        convo::drop_outbound(tx, &me.did, id).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A Megolm session's key, from a member of its conversation, over Olm.
fn room_key(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    me: &Device,
    sender: &str,
    sender_key: &str,
    content: &Value,
) -> Result<(), Dropped> {
    if content["algorithm"].as_str() != Some(MEGOLM) {
        return Err("a room key of another algorithm".into());
    }
    let convo_id = content["room_id"].as_str().ok_or("a room key without room_id")?;
    let Some(c) = Convo::load(tx, &me.did, convo_id).map_err(|e| e.to_string())? else {
        return Err("a room key for an unknown conversation".into());
    };
    if c.left || !c.members.iter().any(|m| m == sender) {
        return Err("a room key from outside the conversation".into());
    }
    let key = SessionKey::from_base64(content["session_key"].as_str().unwrap_or_default())
        .map_err(|e| format!("not a Megolm session key: {e}"))?;
    let session = InboundGroupSession::new(&key, SessionConfig::version_1());
    let id = session.session_id();
    if content["session_id"].as_str() != Some(id.as_str()) {
        return Err("the room key's session id is not its key's".into());
    }
    let held: Option<String> = tx
        .prepare_cached("SELECT sender FROM chat_megolm_in WHERE did = ?1 AND session_id = ?2")
        .and_then(|mut s| s.query_row([&me.did, &id], |r| r.get(0)).optional())
        .map_err(|e| e.to_string())?;
    if held.is_some() {
        // Keep the session first received (its lower index stays readable).
        return Ok(());
    }
    let pickle = Zeroizing::new(serde_json::to_vec(&session.pickle()).expect("a pickle serialises"));
    let sealed = sealer.seal("megolm_in", &[&me.did, &id], &pickle);
    let run = || -> Result<(), ChatError> {
        tx.prepare_cached(
            "INSERT INTO chat_megolm_in (did, session_id, convo_id, sender, sender_key, pickle) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![me.did, id, convo_id, sender, sender_key, sealed])?;
        tx.prepare_cached(
            "DELETE FROM chat_megolm_in WHERE did = ?1 AND rowid NOT IN
               (SELECT rowid FROM chat_megolm_in WHERE did = ?1 ORDER BY rowid DESC LIMIT ?2)",
        )?
        .execute(params![me.did, MAX_INBOUND])?;
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

fn megolm(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    me: &Device,
    sender: &str,
    sender_device: &str,
    envelope: &Value,
) -> Result<(), Dropped> {
    let id = envelope["session_id"].as_str().unwrap_or_default();
    let row: Option<(String, String, String, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT convo_id, sender, sender_key, pickle FROM chat_megolm_in WHERE did = ?1 AND session_id = ?2",
        )
        .and_then(|mut s| s.query_row([&me.did, id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).optional())
        .map_err(|e| e.to_string())?;
    let Some((convo_id, session_sender, sender_key, sealed)) = row else {
        return Err(format!("no room key for Megolm session {id:?}"));
    };
    if session_sender != sender {
        return Err("the Megolm session is another sender's".into());
    }
    let bytes = sealer.open("megolm_in", &[&me.did, id], &sealed).map_err(|e| e.to_string())?;
    let pickle: InboundGroupSessionPickle =
        serde_json::from_slice(&bytes).map_err(|e| format!("Megolm session {id} does not read: {e}"))?;
    let mut session = InboundGroupSession::from_pickle(pickle);
    let message = MegolmMessage::from_base64(envelope["ciphertext"].as_str().unwrap_or_default())
        .map_err(|e| format!("not a Megolm message: {e}"))?;
    let decrypted = session.decrypt(&message).map_err(|e| format!("Megolm decryption failed: {e}"))?;
    let seen = tx
        .prepare_cached("INSERT OR IGNORE INTO chat_megolm_seen (did, session_id, idx) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![me.did, id, decrypted.message_index]))
        .map_err(|e| e.to_string())?;
    if seen == 0 {
        return Err(format!("Megolm index {} of {id} was read before (a replay)", decrypted.message_index));
    }
    let plain = Zeroizing::new(decrypted.plaintext);
    let p: Value = serde_json::from_slice(&plain).map_err(|_| "the plaintext is not JSON".to_string())?;
    if p["room_id"].as_str() != Some(convo_id.as_str()) || p["content"]["convoId"].as_str() != Some(convo_id.as_str()) {
        return Err("the Megolm message names another conversation".into());
    }
    if p["type"].as_str() != Some(MESSAGE) {
        return Err(format!("a Megolm plaintext of type {:?}", p["type"]));
    }
    let device = sender_ed25519(tx, sender, &sender_key)
        .map_err(|e| e.to_string())?
        .map_or_else(|| sender_device.to_string(), |(d, _)| d);
    let text = p["content"]["text"].as_str().ok_or("a message without text")?;
    keep_message(tx, sealer, me, &convo_id, sender, &device, text)
}
