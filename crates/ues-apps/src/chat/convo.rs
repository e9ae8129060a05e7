//! Conversations of the built-in device: what it sends (Olm to each device of a two-member
//! conversation, Megolm to a group with its room key sent over Olm to each member device) and
//! the membership it keeps. Membership changes travel as Olm messages from the creator
//! (`dev.ues.chat.convo`) and from a member who leaves (`dev.ues.chat.leave`). A group's
//! outbound session is replaced when a member leaves or is removed, after
//! [`ChatConfig::rotation_msgs`] messages and after [`ChatConfig::rotation_period`], and its
//! key only ever goes to the members of its epoch.

use std::collections::{HashMap, HashSet};

use rand::RngCore;
use serde_json::{Value, json};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{Connection, OptionalExtension, Transaction, params};
use vodozemac::megolm::{GroupSession, GroupSessionPickle, SessionConfig};
use zeroize::Zeroizing;

use super::device::{Device, MEGOLM, OLM};
use super::inbox::{self, Envelope};
use super::{ChatConfig, ChatError, Sealer, canonical, keys, now_ms, remote};

/// A chat message's plaintext type.
pub(crate) const MESSAGE: &str = "dev.ues.chat.message";
/// A conversation's membership, from its creator.
pub(crate) const CONVO: &str = "dev.ues.chat.convo";
/// A member leaving.
pub(crate) const LEAVE: &str = "dev.ues.chat.leave";
/// A Megolm session's key, sent over Olm.
pub(crate) const ROOM_KEY: &str = "m.room_key";

/// Members in one conversation at most.
pub(crate) const MAX_MEMBERS: usize = 256;
/// Conversations one account is in at most.
pub(crate) const MAX_CONVOS: i64 = 1000;
/// Longest message text, bytes.
pub(crate) const MAX_TEXT: usize = 16 * 1024;

/// A conversation row: creator, name, members, epoch, left at.
type ConvoRow = (String, Option<String>, String, i64, Option<i64>);

/// A conversation as an account's built-in device knows it.
#[derive(Debug, Clone)]
pub(crate) struct Convo {
    pub(crate) id: String,
    pub(crate) creator: String,
    pub(crate) name: Option<String>,
    pub(crate) members: Vec<String>,
    pub(crate) epoch: i64,
    pub(crate) left: bool,
}

impl Convo {
    pub(crate) fn load(conn: &Connection, did: &str, id: &str) -> Result<Option<Convo>, ChatError> {
        let row: Option<ConvoRow> = conn
            .prepare_cached(
                "SELECT creator, name, members, epoch, left_at FROM chat_convo WHERE did = ?1 AND convo_id = ?2",
            )?
            .query_row([did, id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .optional()?;
        let Some((creator, name, members, epoch, left)) = row else { return Ok(None) };
        let members =
            serde_json::from_str(&members).map_err(|e| ChatError::Corrupt(format!("members of {id}: {e}")))?;
        Ok(Some(Convo { id: id.to_string(), creator, name, members, epoch, left: left.is_some() }))
    }

    /// The conversation `id` of `did`, if `did` is still in it.
    pub(crate) fn member(conn: &Connection, did: &str, id: &str) -> Result<Convo, ChatError> {
        match Self::load(conn, did, id)? {
            Some(c) if !c.left => Ok(c),
            _ => Err(ChatError::refused(400, "ConvoNotFound", format!("you are in no conversation {id}"))),
        }
    }

    pub(crate) fn store(&self, tx: &Transaction<'_>, did: &str) -> Result<(), ChatError> {
        let members = serde_json::to_string(&self.members).expect("strings serialise");
        tx.prepare_cached(
            "INSERT INTO chat_convo (did, convo_id, creator, name, members, epoch, left_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (did, convo_id) DO UPDATE SET name = excluded.name, members = excluded.members,
                epoch = excluded.epoch, left_at = excluded.left_at, updated_at = excluded.updated_at",
        )?
        .execute(params![
            did,
            self.id,
            self.creator,
            self.name,
            members,
            self.epoch,
            self.left.then(now_ms),
            now_ms()
        ])?;
        Ok(())
    }

    fn control(&self) -> Value {
        json!({ "convoId": self.id, "creator": self.creator, "name": self.name, "members": self.members, "epoch": self.epoch })
    }

    pub(crate) fn view(&self) -> Value {
        let mut v = json!({ "convoId": self.id, "members": self.members, "creator": self.creator });
        if let Some(n) = &self.name {
            v["name"] = Value::String(n.clone());
        }
        v
    }
}

/// A device messages are encrypted to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) did: String,
    pub(crate) device_id: String,
    pub(crate) curve: String,
    pub(crate) ed: String,
    /// Held on another node (its keys as fetched from there).
    pub(crate) remote: bool,
}

impl Target {
    fn label(&self) -> String {
        format!("{} {} {}", self.did, self.device_id, self.curve)
    }
}

/// Every device with published keys of `members` (held here, else as fetched from their
/// node), but `me` itself.
pub(crate) fn targets(
    conn: &Connection,
    me: &Device,
    members: &[String],
    elsewhere: &HashSet<String>,
) -> Result<Vec<Target>, ChatError> {
    let mut out = Vec::new();
    let mut local = conn.prepare_cached(
        "SELECT device_id, curve25519, ed25519 FROM chat_device WHERE did = ?1 AND device_keys IS NOT NULL ORDER BY device_id",
    )?;
    let mut remote = conn.prepare_cached(
        "SELECT device_id, curve25519, ed25519 FROM chat_remote_device WHERE did = ?1 ORDER BY device_id",
    )?;
    for did in members {
        let row = |remote: bool| {
            move |r: &ues_protocol::sync::repo::ipld::storage::rusqlite::Row<'_>| {
                Ok(Target { did: did.clone(), device_id: r.get(0)?, curve: r.get(1)?, ed: r.get(2)?, remote })
            }
        };
        let found: Vec<Target> = if elsewhere.contains(did) {
            remote.query_map([did], row(true))?.collect::<Result<_, _>>()?
        } else {
            local.query_map([did], row(false))?.collect::<Result<_, _>>()?
        };
        out.extend(found.into_iter().filter(|t| !(t.did == me.did && t.device_id == me.device_id)));
    }
    Ok(out)
}

/// Makes the built-in device (on this node) of each of `members` that has none yet, so that
/// the conversation reaches accounts that never used the chat before.
fn ensure_built_ins(out: &Outgoing<'_>, me: &Device, members: &[String]) -> Result<(), ChatError> {
    let (tx, sealer) = (out.tx, out.sealer);
    for did in members.iter().filter(|m| !out.elsewhere.contains(*m)) {
        let has: Option<i64> = tx
            .prepare_cached("SELECT 1 FROM chat_olm_account WHERE did = ?1")?
            .query_row([did], |r| r.get(0))
            .optional()?;
        if has.is_none() {
            Device::ensure(tx, sealer, did, &me.device_id)?;
        }
    }
    Ok(())
}

/// What the built-in device sends in one transaction: the envelopes, delivered at the end
/// together, and the new inbox items for live sockets.
pub(crate) struct Outgoing<'a> {
    tx: &'a Transaction<'a>,
    sealer: &'a Sealer,
    cfg: &'a ChatConfig,
    envelopes: Vec<Envelope>,
    /// For devices held elsewhere: queued for their node.
    remote: Vec<Envelope>,
    /// One-time keys claimed from other nodes before the transaction, by device identity key.
    claimed: HashMap<String, String>,
    /// The accounts of the conversation held on other nodes.
    elsewhere: HashSet<String>,
}

impl<'a> Outgoing<'a> {
    pub(crate) fn new(tx: &'a Transaction<'a>, sealer: &'a Sealer, cfg: &'a ChatConfig) -> Self {
        Self {
            tx,
            sealer,
            cfg,
            envelopes: Vec::new(),
            remote: Vec::new(),
            claimed: HashMap::new(),
            elsewhere: HashSet::new(),
        }
    }

    /// The accounts held on other nodes, and keys claimed from there (outside the transaction)
    /// for their devices, by identity key.
    pub(crate) fn with_elsewhere(mut self, elsewhere: HashSet<String>, claimed: HashMap<String, String>) -> Self {
        self.elsewhere = elsewhere;
        self.claimed = claimed;
        self
    }

    /// Olm-encrypts a plaintext of `kind` with `content` from `me` to `to` (claiming one of its
    /// keys when there is no session yet). A device with no key left is skipped (logged).
    pub(crate) fn olm(&mut self, me: &mut Device, to: &Target, kind: &str, content: Value) -> Result<bool, ChatError> {
        let (my_curve, my_ed) = me.identity();
        let plaintext = json!({
            "type": kind,
            "content": content,
            "sender": me.did,
            "sender_device": me.device_id,
            "recipient": to.did,
            "recipient_keys": { "ed25519": to.ed },
            "keys": { "ed25519": my_ed },
        });
        let otk = if Device::has_session(self.tx, &me.did, &to.curve)? {
            None
        } else if to.remote {
            match self.claimed.remove(&to.curve) {
                Some(k) => Some(k),
                None => {
                    tracing::info!(app = super::NAME, to = %to.did, device = %to.device_id, "no key of a device elsewhere was claimed: skipped");
                    return Ok(false);
                }
            }
        } else {
            match keys::claim(self.tx, self.sealer, &to.did, &to.device_id) {
                Ok(k) => k["key"]["key"].as_str().map(str::to_string),
                Err(ChatError::Refused { message, .. }) => {
                    tracing::info!(app = super::NAME, to = %to.did, device = %to.device_id, %message, "no session can be started with a device: skipped");
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        };
        let bytes = Zeroizing::new(canonical::canonical(&plaintext)?);
        let message = me.encrypt(self.tx, self.sealer, &to.curve, otk.as_deref(), &bytes)?;
        let envelope = json!({
            "algorithm": OLM,
            "sender_key": my_curve,
            "ciphertext": { to.curve.clone(): serde_json::to_value(&message).expect("an Olm message serialises") },
        });
        self.push(me, to, &envelope)?;
        Ok(true)
    }

    fn push(&mut self, me: &Device, to: &Target, envelope: &Value) -> Result<(), ChatError> {
        let e = Envelope {
            did: to.did.clone(),
            device_id: to.device_id.clone(),
            sender_device: me.device_id.clone(),
            bytes: inbox::check_envelope(envelope)?,
        };
        if to.remote {
            self.remote.push(e)
        } else {
            self.envelopes.push(e)
        }
        Ok(())
    }

    /// Delivers what was made to devices here and queues what goes elsewhere, in the same
    /// transaction as the ratchet states that made it. Returns the new inbox items here and
    /// whether anything was queued.
    pub(crate) fn finish(self, me: &Device) -> Result<(inbox::NewItems, bool), ChatError> {
        remote::queue(self.tx, self.sealer, &me.did, &self.remote)?;
        let queued = !self.remote.is_empty();
        if self.envelopes.is_empty() {
            return Ok((Vec::new(), queued));
        }
        Ok((inbox::deliver(self.tx, self.sealer, self.cfg, &me.did, &self.envelopes)?.1, queued))
    }
}

/// A new conversation of `me`'s account with `members` (`createConvo`).
pub(crate) fn create(
    out: &mut Outgoing<'_>,
    me: &mut Device,
    members: &[String],
    name: Option<String>,
) -> Result<Convo, ChatError> {
    let mut all = vec![me.did.clone()];
    for m in members {
        if !all.contains(m) {
            all.push(m.clone());
        }
    }
    if all.len() > MAX_MEMBERS {
        return Err(ChatError::refused(
            400,
            "TooManyMembers",
            format!("a conversation has at most {MAX_MEMBERS} members"),
        ));
    }
    let held: i64 = out
        .tx
        .prepare_cached("SELECT count(*) FROM chat_convo WHERE did = ?1 AND left_at IS NULL")?
        .query_row([&me.did], |r| r.get(0))?;
    if held >= MAX_CONVOS {
        return Err(ChatError::refused(
            409,
            "TooManyConvos",
            format!("an account is in at most {MAX_CONVOS} conversations"),
        ));
    }
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    let convo = Convo {
        id: data_encoding::BASE32_NOPAD.encode(&id).to_lowercase(),
        creator: me.did.clone(),
        name,
        members: all,
        epoch: 1,
        left: false,
    };
    convo.store(out.tx, &me.did)?;
    ensure_built_ins(out, me, &convo.members)?;
    announce(out, me, &convo, &[])?;
    Ok(convo)
}

/// Tells every device of the members (and of `also`, members just removed) the membership.
fn announce(out: &mut Outgoing<'_>, me: &mut Device, convo: &Convo, also: &[String]) -> Result<(), ChatError> {
    let mut to = convo.members.clone();
    to.extend(also.iter().cloned());
    for t in targets(out.tx, me, &to, &out.elsewhere)? {
        out.olm(me, &t, CONVO, convo.control())?;
    }
    Ok(())
}

/// Sends `text` to the conversation (`sendMessage`); returns the stored message's id.
pub(crate) fn send(out: &mut Outgoing<'_>, me: &mut Device, convo_id: &str, text: &str) -> Result<i64, ChatError> {
    if text.len() > MAX_TEXT {
        return Err(ChatError::refused(400, "MessageTooLong", format!("a message is at most {MAX_TEXT} bytes")));
    }
    let convo = Convo::member(out.tx, &me.did, convo_id)?;
    let content = json!({ "convoId": convo.id, "text": text });
    let to = targets(out.tx, me, &convo.members, &out.elsewhere)?;
    if convo.members.len() <= 2 {
        for t in &to {
            out.olm(me, t, MESSAGE, content.clone())?;
        }
    } else {
        megolm(out, me, &convo, &to, content)?;
    }
    store_message(out.tx, out.sealer, &me.did, &convo.id, &me.did, &me.device_id, text)
}

/// Encrypts one group message with the conversation's outbound Megolm session (a new one when
/// due), sharing its key over Olm with member devices that lack it.
fn megolm(
    out: &mut Outgoing<'_>,
    me: &mut Device,
    convo: &Convo,
    to: &[Target],
    content: Value,
) -> Result<(), ChatError> {
    let row: Option<(Vec<u8>, String, i64, i64, i64, String)> = out
        .tx
        .prepare_cached(
            "SELECT pickle, session_id, epoch, messages, created_at, shared_with FROM chat_megolm_out WHERE did = ?1 AND convo_id = ?2",
        )?
        .query_row([&me.did, &convo.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .optional()?;
    let due = |epoch: i64, messages: i64, created: i64| {
        epoch != convo.epoch
            || messages >= out.cfg.rotation_msgs
            || now_ms() - created >= out.cfg.rotation_period.as_millis() as i64
    };
    let (mut session, mut messages, created, mut shared): (GroupSession, i64, i64, Vec<String>) = match row {
        Some((sealed, id, epoch, messages, created, shared)) if !due(epoch, messages, created) => {
            let bytes = out.sealer.open("megolm_out", &[&me.did, &convo.id, &id], &sealed)?;
            let pickle: GroupSessionPickle =
                serde_json::from_slice(&bytes).map_err(|e| ChatError::Corrupt(format!("Megolm session {id}: {e}")))?;
            let shared = serde_json::from_str(&shared).map_err(|e| ChatError::Corrupt(format!("{id} shared: {e}")))?;
            (GroupSession::from_pickle(pickle), messages, created, shared)
        }
        _ => (GroupSession::new(SessionConfig::version_1()), 0, now_ms(), Vec::new()),
    };
    let session_id = session.session_id();
    for t in to {
        if shared.contains(&t.label()) {
            continue;
        }
        let key = json!({
            "algorithm": MEGOLM,
            "room_id": convo.id,
            "session_id": session_id,
            "session_key": session.session_key().to_base64(),
        });
        if out.olm(me, t, ROOM_KEY, key)? {
            shared.push(t.label());
        }
    }
    let plaintext = json!({ "type": MESSAGE, "content": content, "room_id": convo.id });
    let bytes = Zeroizing::new(canonical::canonical(&plaintext)?);
    let ciphertext = session.encrypt(&*bytes);
    messages += 1;
    let pickle = Zeroizing::new(serde_json::to_vec(&session.pickle()).expect("a pickle serialises"));
    let sealed = out.sealer.seal("megolm_out", &[&me.did, &convo.id, &session_id], &pickle);
    out.tx
        .prepare_cached(
            "INSERT OR REPLACE INTO chat_megolm_out (did, convo_id, session_id, pickle, epoch, messages, created_at, shared_with)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            me.did,
            convo.id,
            session_id,
            sealed,
            convo.epoch,
            messages,
            created,
            serde_json::to_string(&shared).expect("strings serialise")
        ])?;
    let envelope = json!({
        "algorithm": MEGOLM,
        "sender_key": me.identity().0,
        "device_id": me.device_id,
        "session_id": session_id,
        "ciphertext": ciphertext.to_base64(),
    });
    for t in to {
        if shared.contains(&t.label()) {
            out.push(me, t, &envelope)?;
        }
    }
    Ok(())
}

/// Stores a message the built-in device sent or read (its text sealed); returns its id.
pub(crate) fn store_message(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    did: &str,
    convo_id: &str,
    sender: &str,
    sender_device: &str,
    text: &str,
) -> Result<i64, ChatError> {
    let now = now_ms();
    tx.prepare_cached(
        "INSERT INTO chat_message (did, convo_id, sender, sender_device, body, sent_at) VALUES (?1, ?2, ?3, ?4, x'', ?5)",
    )?
    .execute(params![did, convo_id, sender, sender_device, now])?;
    let id = tx.last_insert_rowid();
    let sealed = sealer.seal("message", &[did, convo_id, &id.to_string()], text.as_bytes());
    tx.prepare_cached("UPDATE chat_message SET body = ?2 WHERE id = ?1")?.execute(params![id, sealed])?;
    tx.prepare_cached("UPDATE chat_convo SET updated_at = ?3 WHERE did = ?1 AND convo_id = ?2")?
        .execute(params![did, convo_id, now])?;
    Ok(id)
}

/// Changes the members (`addMember`, `removeMember`: the creator only).
pub(crate) fn change_members(
    out: &mut Outgoing<'_>,
    me: &mut Device,
    convo_id: &str,
    did: &str,
    add: bool,
) -> Result<Convo, ChatError> {
    let mut convo = Convo::member(out.tx, &me.did, convo_id)?;
    if convo.creator != me.did {
        return Err(ChatError::refused(
            403,
            "NotConvoCreator",
            "only the conversation's creator changes its members".into(),
        ));
    }
    let removed = if add {
        if convo.members.iter().any(|m| m == did) {
            return Ok(convo);
        }
        if convo.members.len() >= MAX_MEMBERS {
            return Err(ChatError::refused(
                400,
                "TooManyMembers",
                format!("a conversation has at most {MAX_MEMBERS} members"),
            ));
        }
        convo.members.push(did.to_string());
        ensure_built_ins(out, me, &convo.members)?;
        Vec::new()
    } else {
        if did == me.did || !convo.members.iter().any(|m| m == did) {
            return Err(ChatError::invalid(format!("{did} is not a member you can remove (leave instead)")));
        }
        convo.members.retain(|m| m != did);
        drop_outbound(out.tx, &me.did, &convo.id)?;
        vec![did.to_string()]
    };
    convo.epoch += 1;
    convo.store(out.tx, &me.did)?;
    announce(out, me, &convo, &removed)?;
    Ok(convo)
}

/// Leaves a conversation (`leaveConvo`): the others are told and rotate their sessions.
pub(crate) fn leave(out: &mut Outgoing<'_>, me: &mut Device, convo_id: &str) -> Result<(), ChatError> {
    let mut convo = Convo::member(out.tx, &me.did, convo_id)?;
    convo.members.retain(|m| m != &me.did);
    for t in targets(out.tx, me, &convo.members, &out.elsewhere)? {
        out.olm(me, &t, LEAVE, json!({ "convoId": convo.id }))?;
    }
    convo.left = true;
    convo.store(out.tx, &me.did)?;
    drop_outbound(out.tx, &me.did, &convo.id)
}

/// Forgets the outbound group session of a conversation: the next message starts a new one.
pub(crate) fn drop_outbound(tx: &Transaction<'_>, did: &str, convo_id: &str) -> Result<(), ChatError> {
    tx.prepare_cached("DELETE FROM chat_megolm_out WHERE did = ?1 AND convo_id = ?2")?.execute([did, convo_id])?;
    Ok(())
}

/// `did`'s conversations, most recently active first, past the first `skip` (the cursor).
pub(crate) fn list(conn: &Connection, did: &str, skip: i64, limit: i64) -> Result<Value, ChatError> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT convo_id FROM chat_convo WHERE did = ?1 AND left_at IS NULL
             ORDER BY updated_at DESC, convo_id LIMIT ?2 OFFSET ?3",
        )?
        .query_map(params![did, limit, skip], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let full = ids.len() as i64 == limit;
    let mut convos = Vec::new();
    for id in ids {
        if let Some(c) = Convo::load(conn, did, &id)? {
            convos.push(c.view());
        }
    }
    let mut v = json!({ "convos": convos });
    if full {
        v["cursor"] = Value::String((skip + limit).to_string());
    }
    Ok(v)
}

/// Messages of a conversation `did` is in, newest first, older than `cursor` (a message id).
pub(crate) fn messages(
    conn: &Connection,
    sealer: &Sealer,
    did: &str,
    convo_id: &str,
    cursor: Option<i64>,
    limit: i64,
) -> Result<Value, ChatError> {
    Convo::member(conn, did, convo_id)?;
    let rows: Vec<(i64, String, String, Vec<u8>, i64)> = conn
        .prepare_cached(
            "SELECT id, sender, sender_device, body, sent_at FROM chat_message
             WHERE did = ?1 AND convo_id = ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4",
        )?
        .query_map(params![did, convo_id, cursor.unwrap_or(i64::MAX), limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let full = rows.len() as i64 == limit;
    let last = rows.last().map(|r| r.0);
    let mut out = Vec::with_capacity(rows.len());
    for (id, sender, sender_device, sealed, at) in rows {
        let text = sealer.open("message", &[did, convo_id, &id.to_string()], &sealed)?;
        out.push(json!({
            "id": id.to_string(),
            "sender": sender,
            "senderDevice": sender_device,
            "text": String::from_utf8_lossy(&text),
            "sentAt": ues_protocol::node::sequencer::iso_from_millis(at),
        }));
    }
    let mut v = json!({ "messages": out });
    if let Some(last) = last.filter(|_| full) {
        v["cursor"] = Value::String(last.to_string());
    }
    Ok(v)
}
