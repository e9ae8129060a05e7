//! The built-in device of an account: the node's own Olm account for it (vodozemac), its
//! published keys, and its Olm sessions with other devices. Every change to its state is
//! written inside the caller's transaction, sealed, before anything made with it leaves: a
//! ciphertext is never made from a ratchet state that could be lost and used again, and a
//! message that does not decrypt leaves every stored session as it was (the transaction rolls
//! back, and vodozemac itself changes a session only once a message's MAC checked).

use data_encoding::BASE32_NOPAD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{Connection, OptionalExtension, Transaction, params};
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};
use vodozemac::{Curve25519PublicKey, KeyId};
use zeroize::Zeroizing;

use super::canonical;
use super::{ChatError, Sealer, now_ms};

/// The Olm algorithm's name in Matrix's formats.
pub(crate) const OLM: &str = "m.olm.v1.curve25519-aes-sha2";
/// The Megolm algorithm's name.
pub(crate) const MEGOLM: &str = "m.megolm.v1.aes-sha2";
/// The one-time key algorithm (signed Curve25519 keys).
pub(crate) const SIGNED_CURVE: &str = "signed_curve25519";

/// One-time keys a built-in device keeps published.
pub(crate) const TARGET_OTKS: i64 = 50;
/// Below this many, it publishes more.
const LOW_OTKS: i64 = 25;
/// Olm sessions kept with one other device (the least recently used go first).
const SESSIONS_PER_PEER: i64 = 4;

/// The built-in device's id on this node: the same for every account here, different on every
/// node (a replica of the account on another node has a built-in device of its own there).
pub fn built_in_id(node_did: &str) -> String {
    let digest = Sha256::digest(node_did.as_bytes());
    format!("UES{}", &BASE32_NOPAD.encode(&digest)[..10])
}

/// An account's built-in device. Its Olm account (the sealed pickle) is opened only when an
/// operation needs it (a new session, signing, publishing keys): a message on an existing
/// session needs only the session.
pub(crate) struct Device {
    pub(crate) did: String,
    pub(crate) device_id: String,
    curve: String,
    ed: String,
    account: Option<Account>,
}

impl Device {
    /// The built-in device of `did`, if it has one yet.
    pub(crate) fn load(conn: &Connection, did: &str) -> Result<Option<Device>, ChatError> {
        let row: Option<(String, String, String)> = conn
            .prepare_cached(
                "SELECT a.device_id, d.curve25519, d.ed25519 FROM chat_olm_account a
                 JOIN chat_device d ON d.did = a.did AND d.device_id = a.device_id WHERE a.did = ?1",
            )?
            .query_row([did], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        Ok(row.map(|(device_id, curve, ed)| Device { did: did.to_string(), device_id, curve, ed, account: None }))
    }

    /// Its Olm account, opened from the sealed pickle the first time it is needed.
    fn account(&mut self, conn: &Connection, sealer: &Sealer) -> Result<&mut Account, ChatError> {
        if self.account.is_none() {
            let sealed: Vec<u8> = conn
                .prepare_cached("SELECT pickle FROM chat_olm_account WHERE did = ?1")?
                .query_row([&self.did], |r| r.get(0))?;
            let bytes = sealer.open("olm_account", &[&self.did, &self.device_id], &sealed)?;
            let pickle: AccountPickle = serde_json::from_slice(&bytes)
                .map_err(|e| ChatError::Corrupt(format!("Olm account of {}: {e}", self.did)))?;
            self.account = Some(Account::from_pickle(pickle));
        }
        Ok(self.account.as_mut().expect("opened above"))
    }

    /// Writes the account's state (sealed), if it was opened.
    pub(crate) fn store(&self, tx: &Transaction<'_>, sealer: &Sealer) -> Result<(), ChatError> {
        let Some(account) = &self.account else { return Ok(()) };
        let bytes = Zeroizing::new(serde_json::to_vec(&account.pickle()).expect("a pickle serialises"));
        let sealed = sealer.seal("olm_account", &[&self.did, &self.device_id], &bytes);
        tx.prepare_cached(
            "INSERT INTO chat_olm_account (did, device_id, pickle) VALUES (?1, ?2, ?3)
             ON CONFLICT (did) DO UPDATE SET pickle = excluded.pickle",
        )?
        .execute(params![self.did, self.device_id, sealed])?;
        Ok(())
    }

    /// The built-in device of `did`, made (and its keys published) if it has none yet.
    pub(crate) fn ensure(
        tx: &Transaction<'_>,
        sealer: &Sealer,
        did: &str,
        device_id: &str,
    ) -> Result<Device, ChatError> {
        if let Some(d) = Self::load(tx, did)? {
            return Ok(d);
        }
        let account = Account::new();
        let keys = account.identity_keys();
        let mut device = Device {
            did: did.to_string(),
            device_id: device_id.to_string(),
            curve: keys.curve25519.to_base64(),
            ed: keys.ed25519.to_base64(),
            account: Some(account),
        };
        let keys = device.device_keys()?;
        tx.prepare_cached(
            "INSERT INTO chat_device (did, device_id, built_in, device_keys, curve25519, ed25519, created_at)
             VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6)
             ON CONFLICT (did, device_id) DO UPDATE SET built_in = 1, device_keys = excluded.device_keys,
                curve25519 = excluded.curve25519, ed25519 = excluded.ed25519",
        )?
        .execute(params![did, device_id, keys.to_string(), device.curve, device.ed, now_ms()])?;
        // Keys a client may have published under this id before are not this device's.
        tx.prepare_cached("DELETE FROM chat_otk WHERE did = ?1 AND device_id = ?2")?.execute([did, device_id])?;
        device.account(tx, sealer)?.generate_fallback_key();
        device.replenish(tx, sealer)?;
        tracing::info!(app = super::NAME, %did, device = device_id, "built-in chat device made");
        Ok(device)
    }

    /// Its identity keys, base64: (curve25519, ed25519).
    pub(crate) fn identity(&self) -> (String, String) {
        (self.curve.clone(), self.ed.clone())
    }

    /// Its signed Matrix device_keys object (the account opened).
    fn device_keys(&self) -> Result<Value, ChatError> {
        let account = self.account.as_ref().ok_or_else(|| ChatError::Corrupt("the Olm account is not open".into()))?;
        let (curve, ed) = self.identity();
        let dev = &self.device_id;
        let mut keys = json!({
            "user_id": self.did,
            "device_id": dev,
            "algorithms": [OLM, MEGOLM],
            "keys": { format!("curve25519:{dev}"): curve, format!("ed25519:{dev}"): ed },
        })
        .as_object()
        .cloned()
        .expect("an object");
        canonical::sign(&mut keys, &self.did, &format!("ed25519:{dev}"), |m| account.sign(m))?;
        Ok(Value::Object(keys))
    }

    /// A signed key object for one of its Curve25519 keys.
    fn signed_key(&self, account: &Account, key: &Curve25519PublicKey, fallback: bool) -> Result<Value, ChatError> {
        let mut object = Map::new();
        object.insert("key".into(), Value::String(key.to_base64()));
        if fallback {
            object.insert("fallback".into(), Value::Bool(true));
        }
        canonical::sign(&mut object, &self.did, &format!("ed25519:{}", self.device_id), |m| account.sign(m))?;
        Ok(Value::Object(object))
    }

    /// Publishes the keys the account made and has not published (one-time keys up to
    /// [`TARGET_OTKS`] once fewer than half are left, and a new fallback key), then stores it.
    pub(crate) fn replenish(&mut self, tx: &Transaction<'_>, sealer: &Sealer) -> Result<(), ChatError> {
        let published: i64 = tx
            .prepare_cached("SELECT count(*) FROM chat_otk WHERE did = ?1 AND device_id = ?2 AND fallback = 0")?
            .query_row([&self.did, &self.device_id], |r| r.get(0))?;
        let account = self.account(tx, sealer)?;
        if published < LOW_OTKS {
            account.generate_one_time_keys((TARGET_OTKS - published) as usize);
        }
        let fresh: Vec<(KeyId, Curve25519PublicKey)> = account.one_time_keys().into_iter().collect();
        let fallback: Vec<(KeyId, Curve25519PublicKey)> = account.fallback_key().into_iter().collect();
        if fresh.is_empty() && fallback.is_empty() {
            return self.store(tx, sealer);
        }
        let account = self.account.as_ref().expect("opened above");
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO chat_otk (did, device_id, key_id, key, fallback) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (id, key) in &fresh {
            let name = format!("{SIGNED_CURVE}:{}", id.to_base64());
            insert.execute(params![
                self.did,
                self.device_id,
                name,
                self.signed_key(account, key, false)?.to_string(),
                0
            ])?;
        }
        if let Some((id, key)) = fallback.first() {
            tx.prepare_cached("DELETE FROM chat_otk WHERE did = ?1 AND device_id = ?2 AND fallback = 1")?
                .execute([&self.did, &self.device_id])?;
            let name = format!("{SIGNED_CURVE}:{}", id.to_base64());
            insert.execute(params![
                self.did,
                self.device_id,
                name,
                self.signed_key(account, key, true)?.to_string(),
                1
            ])?;
        }
        drop(insert);
        self.account(tx, sealer)?.mark_keys_as_published();
        self.store(tx, sealer)
    }

    /// Whether it has an Olm session with the device whose identity key is `peer`.
    pub(crate) fn has_session(conn: &Connection, did: &str, peer: &str) -> Result<bool, ChatError> {
        Ok(conn
            .prepare_cached("SELECT 1 FROM chat_olm_session WHERE did = ?1 AND peer_key = ?2 LIMIT 1")?
            .query_row([did, peer], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Its sessions with `peer`, most recently used first.
    fn sessions(&self, conn: &Connection, sealer: &Sealer, peer: &str) -> Result<Vec<Session>, ChatError> {
        let mut stmt = conn.prepare_cached(
            "SELECT session_id, pickle FROM chat_olm_session WHERE did = ?1 AND peer_key = ?2 ORDER BY used_at DESC",
        )?;
        let rows: Vec<(String, Vec<u8>)> =
            stmt.query_map([&self.did, peer], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, sealed)| {
                let bytes = sealer.open("olm_session", &[&self.did, &id], &sealed)?;
                let pickle: SessionPickle = serde_json::from_slice(&bytes)
                    .map_err(|e| ChatError::Corrupt(format!("Olm session {id} of {}: {e}", self.did)))?;
                Ok(Session::from_pickle(pickle))
            })
            .collect()
    }

    /// Writes a session's state (sealed) and keeps at most [`SESSIONS_PER_PEER`] with its peer.
    fn store_session(
        &self,
        tx: &Transaction<'_>,
        sealer: &Sealer,
        peer: &str,
        session: &Session,
    ) -> Result<(), ChatError> {
        let id = session.session_id();
        let bytes = Zeroizing::new(serde_json::to_vec(&session.pickle()).expect("a pickle serialises"));
        let sealed = sealer.seal("olm_session", &[&self.did, &id], &bytes);
        // Strictly increasing per store, so the session just used sorts first.
        let used: i64 = tx
            .prepare_cached("SELECT coalesce(max(used_at), 0) FROM chat_olm_session WHERE did = ?1")?
            .query_row([&self.did], |r| r.get(0))?;
        tx.prepare_cached(
            "INSERT INTO chat_olm_session (did, session_id, peer_key, pickle, used_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (did, session_id) DO UPDATE SET pickle = excluded.pickle, used_at = excluded.used_at",
        )?
        .execute(params![self.did, id, peer, sealed, used.max(now_ms()) + 1])?;
        tx.prepare_cached(
            "DELETE FROM chat_olm_session WHERE did = ?1 AND peer_key = ?2 AND session_id NOT IN
               (SELECT session_id FROM chat_olm_session WHERE did = ?1 AND peer_key = ?2 ORDER BY used_at DESC LIMIT ?3)",
        )?
        .execute(params![self.did, peer, SESSIONS_PER_PEER])?;
        Ok(())
    }

    /// Encrypts `plaintext` for the device whose identity key is `peer`: with its most recently
    /// used session, else a new one from `one_time_key` (claimed by the caller).
    pub(crate) fn encrypt(
        &mut self,
        tx: &Transaction<'_>,
        sealer: &Sealer,
        peer: &str,
        one_time_key: Option<&str>,
        plaintext: &[u8],
    ) -> Result<OlmMessage, ChatError> {
        let mut session = match self.sessions(tx, sealer, peer)?.into_iter().next() {
            Some(s) => s,
            None => {
                let their = parse_curve(peer)?;
                let otk = parse_curve(one_time_key.ok_or_else(|| ChatError::NoSession(peer.to_string()))?)?;
                self.account(tx, sealer)?
                    .create_outbound_session(SessionConfig::version_1(), their, otk)
                    .map_err(|e| ChatError::refused_crypto(format!("no session could be made: {e}")))?
            }
        };
        let message =
            session.encrypt(plaintext).map_err(|e| ChatError::refused_crypto(format!("Olm encryption failed: {e}")))?;
        self.store_session(tx, sealer, peer, &session)?;
        Ok(message)
    }

    /// Decrypts an Olm message from the device whose identity key is `peer`. A pre-key message
    /// goes to the session it names, else makes a new inbound session (spending the one-time
    /// key it used); a normal message only to an existing session. What fails changes nothing.
    pub(crate) fn decrypt(
        &mut self,
        tx: &Transaction<'_>,
        sealer: &Sealer,
        peer: &str,
        message: &OlmMessage,
    ) -> Result<Vec<u8>, ChatError> {
        let sessions = self.sessions(tx, sealer, peer)?;
        if let OlmMessage::PreKey(pre) = message {
            let named = pre.session_id();
            if let Some(mut s) = sessions.into_iter().find(|s| s.session_id() == named) {
                let plain =
                    s.decrypt(message).map_err(|e| ChatError::refused_crypto(format!("Olm decryption failed: {e}")))?;
                self.store_session(tx, sealer, peer, &s)?;
                return Ok(plain);
            }
            let their = parse_curve(peer)?;
            let made = self
                .account(tx, sealer)?
                .create_inbound_session(SessionConfig::version_1(), their, pre)
                .map_err(|e| ChatError::refused_crypto(format!("no inbound session: {e}")))?;
            self.store_session(tx, sealer, peer, &made.session)?;
            self.replenish(tx, sealer)?;
            return Ok(made.plaintext);
        }
        for mut s in sessions {
            if let Ok(plain) = s.decrypt(message) {
                self.store_session(tx, sealer, peer, &s)?;
                return Ok(plain);
            }
        }
        Err(ChatError::refused_crypto("no session with this device decrypts the message".into()))
    }
}

/// A Curve25519 key from its unpadded base64.
pub(crate) fn parse_curve(b64: &str) -> Result<Curve25519PublicKey, ChatError> {
    Curve25519PublicKey::from_base64(b64).map_err(|_| ChatError::invalid(format!("{b64:?} is not a Curve25519 key")))
}

#[cfg(test)]
mod tests {
    use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, Connection};
    use ues_protocol::sync::repo::seal::SealKey;

    use super::*;

    pub(crate) fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        for m in super::super::schema::MIGRATIONS {
            c.execute_batch(m.sql).unwrap();
        }
        c
    }

    fn sealer() -> Sealer {
        Sealer(SealKey::generate().derive(b"test"))
    }

    fn with<T>(c: &mut Connection, f: impl FnOnce(&Transaction<'_>) -> Result<T, ChatError>) -> Result<T, ChatError> {
        let tx = c.transaction().unwrap();
        let out = f(&tx)?;
        tx.commit().unwrap();
        Ok(out)
    }

    fn claim(c: &mut Connection, s: &Sealer, did: &str, dev: &str) -> String {
        let got = with(c, |tx| super::super::keys::claim(tx, s, did, dev)).unwrap();
        got["key"]["key"].as_str().unwrap().to_string()
    }

    fn table_bytes(c: &Connection, table: &str) -> Vec<Vec<u8>> {
        let mut stmt = c.prepare(&format!("SELECT pickle FROM {table} ORDER BY 1")).unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn two_built_in_devices_talk_olm_and_what_fails_changes_nothing() {
        let (mut c, s) = (db(), sealer());
        let (alice, bob) = ("did:plc:alice", "did:plc:bob");
        let (a_curve, b_curve) = with(&mut c, |tx| {
            let a = Device::ensure(tx, &s, alice, "UESA")?;
            let b = Device::ensure(tx, &s, bob, "UESB")?;
            Ok((a.identity().0, b.identity().0))
        })
        .unwrap();
        // Both published their signed keys.
        let published: i64 = c.query_row("SELECT count(*) FROM chat_otk WHERE did = ?1", [bob], |r| r.get(0)).unwrap();
        assert_eq!(published, TARGET_OTKS + 1, "one-time keys and a fallback key");

        let otk = claim(&mut c, &s, bob, "UESB");
        let first = with(&mut c, |tx| {
            let mut a = Device::load(tx, alice)?.unwrap();
            a.encrypt(tx, &s, &b_curve, Some(&otk), b"hello bob")
        })
        .unwrap();
        assert!(matches!(first, OlmMessage::PreKey(_)));
        let second = with(&mut c, |tx| {
            let mut a = Device::load(tx, alice)?.unwrap();
            a.encrypt(tx, &s, &b_curve, None, b"second, sent before any answer")
        })
        .unwrap();

        // Bob reads the second before the first (out of order), then the first.
        let got = with(&mut c, |tx| Device::load(tx, bob)?.unwrap().decrypt(tx, &s, &a_curve, &second)).unwrap();
        assert_eq!(got, b"second, sent before any answer");
        let got = with(&mut c, |tx| Device::load(tx, bob)?.unwrap().decrypt(tx, &s, &a_curve, &first)).unwrap();
        assert_eq!(got, b"hello bob");

        // A replay is refused, and a tampered message changes no stored state.
        let before = (table_bytes(&c, "chat_olm_session"), table_bytes(&c, "chat_olm_account"));
        let replay = with(&mut c, |tx| Device::load(tx, bob)?.unwrap().decrypt(tx, &s, &a_curve, &first));
        assert!(matches!(replay, Err(ChatError::Refused { name: "DecryptionFailed", .. })), "{replay:?}");
        let (kind, mut body) = second.to_parts();
        let last = body.len() - 1;
        body[last] ^= 1;
        let tampered = OlmMessage::from_parts(kind, &body).unwrap();
        let bad = with(&mut c, |tx| Device::load(tx, bob)?.unwrap().decrypt(tx, &s, &a_curve, &tampered));
        assert!(bad.is_err());
        assert_eq!((table_bytes(&c, "chat_olm_session"), table_bytes(&c, "chat_olm_account")), before);

        // Bob answers on the same session: a normal message Alice reads.
        let answer =
            with(&mut c, |tx| Device::load(tx, bob)?.unwrap().encrypt(tx, &s, &a_curve, None, b"hi alice")).unwrap();
        assert!(matches!(answer, OlmMessage::Normal(_)));
        let got = with(&mut c, |tx| Device::load(tx, alice)?.unwrap().decrypt(tx, &s, &b_curve, &answer)).unwrap();
        assert_eq!(got, b"hi alice");

        // Nothing secret or sent is in the database in the clear.
        let dump: Vec<u8> = {
            let mut out = Vec::new();
            for t in ["chat_olm_session", "chat_olm_account"] {
                for b in table_bytes(&c, t) {
                    out.extend(b);
                }
            }
            out
        };
        for needle in [&b"hello bob"[..], b"hi alice", b"ed25519", b"pickle"] {
            assert!(
                !dump.windows(needle.len()).any(|w| w == needle),
                "{:?} in the clear",
                String::from_utf8_lossy(needle)
            );
        }
        // A sealed row does not open as another row.
        let (id, sealed): (String, Vec<u8>) = c
            .query_row("SELECT session_id, pickle FROM chat_olm_session LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert!(
            s.open("olm_session", &[alice, &id], &sealed).is_ok()
                || s.open("olm_session", &[bob, &id], &sealed).is_ok()
        );
        assert!(s.open("olm_session", &["did:plc:mallory", &id], &sealed).is_err());
        assert!(sealer().open("olm_session", &[alice, &id], &sealed).is_err(), "another node key");
    }

    #[test]
    fn one_time_keys_go_once_then_the_fallback_and_the_device_publishes_more() {
        let (mut c, s) = (db(), sealer());
        with(&mut c, |tx| Device::ensure(tx, &s, "did:plc:bob", "UESB").map(|_| ())).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(TARGET_OTKS * 2) {
            assert!(seen.insert(claim(&mut c, &s, "did:plc:bob", "UESB")), "a one-time key handed out twice");
        }
        // It never ran dry: it published more each time it fell below half.
        let left: i64 = c.query_row("SELECT count(*) FROM chat_otk WHERE fallback = 0", [], |r| r.get(0)).unwrap();
        assert!(left >= LOW_OTKS, "{left}");
        let none = with(&mut c, |tx| super::super::keys::claim(tx, &s, "did:plc:bob", "NOPE"));
        assert!(matches!(none, Err(ChatError::Refused { status: 400, name: "DeviceNotFound", .. })));
    }
}
