"""An independent end-to-end encrypted chat client for UES's dev.ues.chat.* methods, built on libolm
(Debian's python3-olm) rather than vodozemac, so a Rust test can check the node's chat app against
another implementation of Matrix's Olm/Megolm wire formats. Run it with the system Python:

    /usr/bin/python3 olm_client.py STATE_FILE COMMAND [ARGS...]
    /usr/bin/python3 olm_client.py --selftest

Commands (each prints exactly one JSON line; exit 0, or a {"error": ...} line and exit 1):
  init BASE ACCESS_JWT DID DEVICE_ID [N_OTK]
      make a libolm account, upload signed device keys, N_OTK (default 5) signed one-time keys and
      a signed fallback key -> {deviceId, curve25519, ed25519, oneTimeKeyCounts}
  receive
      fetch the whole inbox, decrypt and check every item, ack up to the last item ->
      {messages: [{id, type, content, sender, senderDevice, algorithm, index?}], refused: [{id, reason}]}
  send_olm DID DEVICE_ID CONVO_ID TEXT
      Olm-encrypt a dev.ues.chat.message to one device -> {delivered, queued, type}
  send_megolm CONVO_ID TEXT DID:DEVICE_ID [DID:DEVICE_ID ...]
      share the convo's Megolm room key (over Olm) with devices that lack it, then send the
      Megolm-encrypted message to every listed device -> {sessionId, index, delivered, queued,
      keyShared: the devices given the room key this time}
  keys
      our identity keys and how many keys are not yet published

STATE_FILE is JSON: the node's URL, the access JWT, our DID and device id, and the pickled (fixed
passphrase: this is a test client) libolm account, Olm sessions per peer curve25519 key, inbound
Megolm sessions (with their room, sender and the message indices already seen) and outbound
Megolm sessions per convo.

--selftest runs the same commands against an in-memory stand-in for the node (no HTTP): two and
three accounts sign and verify device keys, exchange Olm pre-key and normal messages (one-time and
fallback keys), share a Megolm room key, and the checks refuse a replay, a wrong room, a wrong
recipient, a forged sender key and bad signatures. It prints {"ok": true} or the failure."""

import json
import os
import sys
import tempfile
import traceback
import urllib.error
import urllib.parse
import urllib.request

import olm

PASSPHRASE = "ues-olm-test-client"
OLM = "m.olm.v1.curve25519-aes-sha2"
MEGOLM = "m.megolm.v1.aes-sha2"
CHAT = "dev.ues.chat.message"
ROOM_KEY = "m.room_key"


class Fail(Exception):
    """Ends the command: main prints the dict as the error line."""

    def __init__(self, error, message=None, **extra):
        super().__init__(f"{error}: {message}" if message else error)
        self.out = {"error": error}
        if message is not None:
            self.out["message"] = message
        self.out.update(extra)


class Refuse(Exception):
    """Refuses one inbox item; the message is the reason."""


# ---------------------------------------------------------------------------------------------
# Canonical JSON and signatures


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signable(obj):
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def sign_json(account, did, device_id, obj):
    """Returns a copy of obj with our ed25519 signature added under signatures[did]."""
    sig = account.sign(canonical_json(signable(obj)).decode("utf-8"))
    out = dict(obj)
    sigs = {u: dict(s) for u, s in obj.get("signatures", {}).items()}
    sigs.setdefault(did, {})[f"ed25519:{device_id}"] = sig
    out["signatures"] = sigs
    return out


def verify_json(obj, did, device_id, ed25519_key):
    """Raises Refuse unless obj carries a good signature by ed25519_key as did's device_id."""
    try:
        sig = obj["signatures"][did][f"ed25519:{device_id}"]
    except (KeyError, TypeError):
        raise Refuse(f"bad signature: no signature by {did} ed25519:{device_id}")
    if not isinstance(sig, str):
        raise Refuse("bad signature: not a string")
    try:
        olm.ed25519_verify(ed25519_key, canonical_json(signable(obj)), sig)
    except (olm.OlmVerifyError, ValueError, TypeError) as e:
        raise Refuse(f"bad signature: {e}")


def verify_device_keys(device_keys, did, device_id):
    """Checks a device_keys object names did/device_id and is self-signed; -> (curve25519, ed25519)."""
    if not isinstance(device_keys, dict):
        raise Refuse("bad device keys: not an object")
    if device_keys.get("user_id") != did:
        raise Refuse(f"bad device keys: user_id {device_keys.get('user_id')!r} is not {did}")
    if device_keys.get("device_id") != device_id:
        raise Refuse(f"bad device keys: device_id {device_keys.get('device_id')!r} is not {device_id}")
    keys = device_keys.get("keys") or {}
    curve = keys.get(f"curve25519:{device_id}")
    ed = keys.get(f"ed25519:{device_id}")
    if not isinstance(curve, str) or not isinstance(ed, str):
        raise Refuse("bad device keys: missing curve25519 or ed25519 key")
    verify_json(device_keys, did, device_id, ed)
    return curve, ed


# ---------------------------------------------------------------------------------------------
# Envelopes and plaintexts (pure: no state, no HTTP)


def olm_plaintext(type_, content, sender, sender_device, sender_ed, recipient, recipient_ed):
    return {
        "type": type_,
        "content": content,
        "sender": sender,
        "recipient": recipient,
        "recipient_keys": {"ed25519": recipient_ed},
        "keys": {"ed25519": sender_ed},
        "sender_device": sender_device,
    }


def olm_envelope(sender_curve, recipient_curve, message):
    return {
        "algorithm": OLM,
        "sender_key": sender_curve,
        "ciphertext": {recipient_curve: {"type": message.message_type, "body": message.ciphertext}},
    }


def olm_message(envelope, our_curve):
    """The olm message for our_curve in an Olm envelope -> (sender_key, message)."""
    sender_key = envelope.get("sender_key")
    if not isinstance(sender_key, str):
        raise Refuse("malformed: no sender_key")
    ct = (envelope.get("ciphertext") or {}).get(our_curve)
    if not isinstance(ct, dict):
        raise Refuse("not for us: no ciphertext for our curve25519 key")
    body, kind = ct.get("body"), ct.get("type")
    if not isinstance(body, str) or not body:
        raise Refuse("malformed: no ciphertext body")
    if kind == 0:
        return sender_key, olm.OlmPreKeyMessage(body)
    if kind == 1:
        return sender_key, olm.OlmMessage(body)
    raise Refuse(f"malformed: olm message type {kind!r}")


def megolm_plaintext(type_, content, room_id):
    return {"type": type_, "content": content, "room_id": room_id}


def megolm_envelope(sender_curve, sender_device, session_id, ciphertext):
    return {
        "algorithm": MEGOLM,
        "sender_key": sender_curve,
        "session_id": session_id,
        "device_id": sender_device,
        "ciphertext": ciphertext,
    }


def chat_content(convo_id, text):
    return {"convoId": convo_id, "text": text}


def room_key_content(room_id, session_id, session_key):
    return {"algorithm": MEGOLM, "room_id": room_id, "session_id": session_id, "session_key": session_key}


# ---------------------------------------------------------------------------------------------
# Talking to the node


class Http:
    def __init__(self, base, jwt):
        self.base = base.rstrip("/")
        self.jwt = jwt

    def call(self, nsid, params=None, body=None):
        url = f"{self.base}/xrpc/{nsid}"
        headers = {"Authorization": f"Bearer {self.jwt}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)
            except ValueError:
                err = {}
            if not isinstance(err, dict):
                err = {}
            raise Fail(
                err.get("error") or f"HTTP {e.code}",
                err.get("message") or raw.decode("utf-8", "replace")[:500],
                status=e.code,
                method=nsid,
            )
        except urllib.error.URLError as e:
            raise Fail("ConnectionError", str(e.reason), method=nsid)
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise Fail("BadResponse", raw.decode("utf-8", "replace")[:500], method=nsid)


# ---------------------------------------------------------------------------------------------
# The client


def write_state(path, state):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".olm_state.")
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class Client:
    def __init__(self, path, transport=None):
        self.path = path
        try:
            with open(path) as f:
                self.st = json.load(f)
        except FileNotFoundError:
            raise Fail("NoState", f"{path} does not exist: run init first")
        self.account = olm.Account.from_pickle(self.st["account"].encode(), PASSPHRASE)
        self.node = transport or Http(self.st["base"], self.st["jwt"])
        self.did = self.st["did"]
        self.device_id = self.st["deviceId"]
        ids = self.account.identity_keys
        self.curve, self.ed = ids["curve25519"], ids["ed25519"]
        self.device_cache = {}

    def save(self):
        self.st["account"] = self.account.pickle(PASSPHRASE).decode()
        write_state(self.path, self.st)

    # --- keys -----------------------------------------------------------------------------

    def signed_one_time_keys(self):
        out = {}
        for key_id, key in self.account.one_time_keys.get("curve25519", {}).items():
            out[f"signed_curve25519:{key_id}"] = sign_json(self.account, self.did, self.device_id, {"key": key})
        return out

    def signed_fallback_keys(self):
        out = {}
        for key_id, key in self.account.fallback_key.get("curve25519", {}).items():
            obj = {"key": key, "fallback": True}
            out[f"signed_curve25519:{key_id}"] = sign_json(self.account, self.did, self.device_id, obj)
        return out

    def device_keys(self):
        return sign_json(
            self.account,
            self.did,
            self.device_id,
            {
                "user_id": self.did,
                "device_id": self.device_id,
                "algorithms": [OLM, MEGOLM],
                "keys": {f"curve25519:{self.device_id}": self.curve, f"ed25519:{self.device_id}": self.ed},
            },
        )

    def upload(self):
        resp = self.node.call(
            "dev.ues.chat.uploadKeys",
            body={
                "deviceId": self.device_id,
                "deviceKeys": self.device_keys(),
                "oneTimeKeys": self.signed_one_time_keys(),
                "fallbackKeys": self.signed_fallback_keys(),
            },
        )
        self.account.mark_keys_as_published()
        self.save()
        return resp

    # --- devices ----------------------------------------------------------------------------

    def devices(self, did):
        if did not in self.device_cache:
            resp = self.node.call("dev.ues.chat.queryKeys", params={"did": did})
            self.device_cache[did] = resp.get("devices") or []
        return self.device_cache[did]

    def device(self, did, device_id=None, curve=None):
        """A verified device of did, by id (or else by curve25519 key) -> (device_id, curve, ed)."""
        found = None
        for d in self.devices(did):
            if device_id is not None and d.get("deviceId") == device_id:
                found = d
                break
        if found is None and curve is not None:
            for d in self.devices(did):
                keys = (d.get("deviceKeys") or {}).get("keys") or {}
                if keys.get(f"curve25519:{d.get('deviceId')}") == curve:
                    found = d
                    break
        if found is None:
            raise Refuse(f"unknown device: {did} {device_id or curve}")
        dev_id = found.get("deviceId")
        c, e = verify_device_keys(found.get("deviceKeys"), did, dev_id)
        return dev_id, c, e

    # --- Olm ------------------------------------------------------------------------------

    def sessions(self, curve):
        return self.st.setdefault("sessions", {}).setdefault(curve, [])

    def keep_session(self, curve, session):
        """Stores session as the most recently used one with curve."""
        sid = session.id
        kept = [s for s in self.sessions(curve) if s["id"] != sid]
        self.st["sessions"][curve] = [{"id": sid, "pickle": session.pickle(PASSPHRASE).decode()}] + kept

    def outbound_session(self, did, device_id, curve, ed):
        existing = self.sessions(curve)
        if existing:
            return olm.Session.from_pickle(existing[0]["pickle"].encode(), PASSPHRASE)
        resp = self.node.call("dev.ues.chat.claimKeys", body={"did": did, "deviceId": device_id})
        key = resp.get("key")
        if not isinstance(key, dict) or not isinstance(key.get("key"), str):
            raise Refuse(f"claimKeys gave no key for {did} {device_id}")
        verify_json(key, did, device_id, ed)
        return olm.OutboundSession(self.account, curve, key["key"])

    def olm_encrypt(self, did, device_id, type_, content):
        """Encrypts to one verified device -> (envelope, olm message type)."""
        _, curve, ed = self.device(did, device_id)
        session = self.outbound_session(did, device_id, curve, ed)
        plain = olm_plaintext(type_, content, self.did, self.device_id, self.ed, did, ed)
        msg = session.encrypt(canonical_json(plain).decode("utf-8"))
        self.keep_session(curve, session)
        self.save()
        return olm_envelope(self.curve, curve, msg), msg.message_type

    def send_olm(self, did, device_id, type_, content):
        try:
            envelope, kind = self.olm_encrypt(did, device_id, type_, content)
        except Refuse as e:
            raise Fail("Refused", str(e))
        resp = self.node.call(
            "dev.ues.chat.sendToDevice",
            body={"messages": [{"did": did, "deviceId": device_id, "envelope": envelope, "senderDevice": self.device_id}]},
        )
        return resp, kind

    def olm_decrypt(self, sender_key, message):
        """Decrypts with a stored session, or a new inbound one for a pre-key message -> str."""
        for stored in self.sessions(sender_key):
            session = olm.Session.from_pickle(stored["pickle"].encode(), PASSPHRASE)
            if isinstance(message, olm.OlmPreKeyMessage):
                if not session.matches(message, sender_key):
                    continue
                try:
                    plain = session.decrypt(message, "strict")
                except (olm.OlmSessionError, UnicodeDecodeError) as e:
                    raise Refuse(f"olm decrypt failed (matching session): {e}")
            else:
                try:
                    plain = session.decrypt(message, "strict")
                except (olm.OlmSessionError, UnicodeDecodeError):
                    continue
            self.keep_session(sender_key, session)
            return plain
        if not isinstance(message, olm.OlmPreKeyMessage):
            raise Refuse("olm decrypt failed: no session for a normal message")
        try:
            session = olm.InboundSession(self.account, message, sender_key)
            plain = session.decrypt(message, "strict")
        except (olm.OlmSessionError, UnicodeDecodeError) as e:
            raise Refuse(f"olm decrypt failed (new inbound session): {e}")
        try:
            self.account.remove_one_time_keys(session)
        except olm.OlmAccountError:
            pass  # a fallback key: libolm keeps it
        self.keep_session(sender_key, session)
        return plain

    def receive_olm(self, item, envelope):
        sender_key, message = olm_message(envelope, self.curve)
        plain = self.olm_decrypt(sender_key, message)
        self.save()  # the ratchet moved, whatever the checks below say
        try:
            p = json.loads(plain)
        except ValueError:
            raise Refuse("malformed: olm plaintext is not JSON")
        if not isinstance(p, dict):
            raise Refuse("malformed: olm plaintext is not an object")
        sender = item.get("sender")
        if p.get("sender") != sender:
            raise Refuse(f"sender mismatch: plaintext says {p.get('sender')!r}, inbox says {sender!r}")
        if p.get("recipient") != self.did:
            raise Refuse(f"recipient mismatch: {p.get('recipient')!r}")
        if (p.get("recipient_keys") or {}).get("ed25519") != self.ed:
            raise Refuse("recipient key mismatch: recipient_keys.ed25519 is not ours")
        sender_device = item.get("senderDevice")
        if sender_device and p.get("sender_device") and p.get("sender_device") != sender_device:
            raise Refuse(f"sender device mismatch: plaintext says {p.get('sender_device')!r}")
        dev_id, dev_curve, dev_ed = self.device(sender, sender_device or p.get("sender_device"), sender_key)
        if dev_curve != sender_key:
            raise Refuse(f"sender key mismatch: envelope sender_key is not {sender} {dev_id}'s curve25519")
        if (p.get("keys") or {}).get("ed25519") != dev_ed:
            raise Refuse(f"sender ed25519 mismatch: keys.ed25519 is not {sender} {dev_id}'s")
        out = {
            "id": item.get("id"),
            "type": p.get("type"),
            "content": p.get("content"),
            "sender": sender,
            "senderDevice": sender_device or dev_id,
            "algorithm": OLM,
            "olmType": message.message_type,
        }
        if p.get("type") == ROOM_KEY:
            out["content"] = self.import_room_key(p.get("content"), sender, dev_id, sender_key, dev_ed)
        return out

    # --- Megolm ---------------------------------------------------------------------------

    def import_room_key(self, content, sender, sender_device, sender_key, sender_ed):
        if not isinstance(content, dict) or content.get("algorithm") != MEGOLM:
            raise Refuse("bad room key: algorithm is not m.megolm.v1.aes-sha2")
        room_id, session_id, session_key = content.get("room_id"), content.get("session_id"), content.get("session_key")
        if not all(isinstance(x, str) and x for x in (room_id, session_id, session_key)):
            raise Refuse("bad room key: missing room_id, session_id or session_key")
        try:
            session = olm.InboundGroupSession(session_key)
        except olm.OlmGroupSessionError as e:
            raise Refuse(f"bad room key: {e}")
        if session.id != session_id:
            raise Refuse("bad room key: session_key is not for session_id")
        groups = self.st.setdefault("inbound_group", {})
        old = groups.get(session_id)
        if old is not None:
            if old["room_id"] != room_id or old["sender_key"] != sender_key or old["sender"] != sender:
                raise Refuse("room key conflict: session_id already known for another room or sender")
            if old["first_known_index"] <= session.first_known_index:
                return {k: v for k, v in content.items() if k != "session_key"}
        groups[session_id] = {
            "pickle": session.pickle(PASSPHRASE).decode(),
            "room_id": room_id,
            "sender": sender,
            "sender_device": sender_device,
            "sender_key": sender_key,
            "sender_ed25519": sender_ed,
            "first_known_index": session.first_known_index,
            "seen": old["seen"] if old else [],
        }
        self.save()
        return {k: v for k, v in content.items() if k != "session_key"}

    def receive_megolm(self, item, envelope):
        session_id, ciphertext = envelope.get("session_id"), envelope.get("ciphertext")
        if not isinstance(session_id, str) or not isinstance(ciphertext, str):
            raise Refuse("malformed: megolm envelope without session_id or ciphertext")
        g = self.st.get("inbound_group", {}).get(session_id)
        if g is None:
            raise Refuse(f"unknown megolm session {session_id}")
        if envelope.get("sender_key") != g["sender_key"]:
            raise Refuse("sender key mismatch: megolm sender_key is not the room key's sender's")
        if item.get("sender") != g["sender"]:
            raise Refuse(f"sender mismatch: the room key came from {g['sender']}")
        session = olm.InboundGroupSession.from_pickle(g["pickle"].encode(), PASSPHRASE)
        try:
            plain, index = session.decrypt(ciphertext, "strict")
        except (olm.OlmGroupSessionError, UnicodeDecodeError) as e:
            raise Refuse(f"megolm decrypt failed: {e}")
        if index in g["seen"]:
            raise Refuse(f"replay: megolm session {session_id} index {index} seen before")
        g["seen"].append(index)
        self.save()
        try:
            p = json.loads(plain)
        except ValueError:
            raise Refuse("malformed: megolm plaintext is not JSON")
        if not isinstance(p, dict):
            raise Refuse("malformed: megolm plaintext is not an object")
        if p.get("room_id") != g["room_id"]:
            raise Refuse(f"room mismatch: plaintext room_id {p.get('room_id')!r}, room key named {g['room_id']!r}")
        return {
            "id": item.get("id"),
            "type": p.get("type"),
            "content": p.get("content"),
            "sender": item.get("sender"),
            "senderDevice": item.get("senderDevice") or g["sender_device"],
            "algorithm": MEGOLM,
            "index": index,
            "sessionId": session_id,
        }

    def outbound_group(self, convo_id):
        groups = self.st.setdefault("outbound_group", {})
        g = groups.get(convo_id)
        if g is not None:
            return olm.OutboundGroupSession.from_pickle(g["pickle"].encode(), PASSPHRASE), g
        session = olm.OutboundGroupSession()
        g = groups[convo_id] = {"pickle": session.pickle(PASSPHRASE).decode(), "sharedWith": []}
        # Our own copy, as Matrix clients keep one: we can read what we sent.
        inbound = olm.InboundGroupSession(session.session_key)
        self.st.setdefault("inbound_group", {})[session.id] = {
            "pickle": inbound.pickle(PASSPHRASE).decode(),
            "room_id": convo_id,
            "sender": self.did,
            "sender_device": self.device_id,
            "sender_key": self.curve,
            "sender_ed25519": self.ed,
            "first_known_index": inbound.first_known_index,
            "seen": [],
        }
        self.save()
        return session, g


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_init(path, args, transport=None):
    if len(args) not in (4, 5):
        raise Fail("Usage", "init BASE ACCESS_JWT DID DEVICE_ID [N_OTK]")
    base, jwt, did, device_id = args[:4]
    n = int(args[4]) if len(args) == 5 else 5
    account = olm.Account()
    if n > 0:
        account.generate_one_time_keys(n)
    account.generate_fallback_key()
    write_state(
        path,
        {
            "base": base,
            "jwt": jwt,
            "did": did,
            "deviceId": device_id,
            "account": account.pickle(PASSPHRASE).decode(),
            "sessions": {},
            "inbound_group": {},
            "outbound_group": {},
        },
    )
    c = Client(path, transport)
    resp = c.upload()
    return {
        "deviceId": device_id,
        "curve25519": c.curve,
        "ed25519": c.ed,
        "oneTimeKeyCounts": resp.get("oneTimeKeyCounts"),
    }


def cmd_keys(path, args, transport=None):
    c = Client(path, transport)
    return {
        "did": c.did,
        "deviceId": c.device_id,
        "curve25519": c.curve,
        "ed25519": c.ed,
        "unpublishedOneTimeKeys": len(c.account.one_time_keys.get("curve25519", {})),
        "unpublishedFallbackKeys": len(c.account.fallback_key.get("curve25519", {})),
        "olmSessions": sum(len(v) for v in c.st.get("sessions", {}).values()),
    }


def cmd_receive(path, args, transport=None):
    c = Client(path, transport)
    items, cursor = [], None
    while True:
        resp = c.node.call("dev.ues.chat.getInbox", params={"deviceId": c.device_id, "cursor": cursor})
        page = resp.get("items") or []
        items.extend(page)
        nxt = resp.get("cursor")
        if not page or not nxt or nxt == cursor:
            break
        cursor = nxt
    messages, refused = [], []
    for item in items:
        try:
            envelope = item.get("envelope")
            if isinstance(envelope, str):
                envelope = json.loads(envelope)
            if not isinstance(envelope, dict):
                raise Refuse("malformed: envelope is not an object")
            alg = envelope.get("algorithm")
            if alg == OLM:
                messages.append(c.receive_olm(item, envelope))
            elif alg == MEGOLM:
                messages.append(c.receive_megolm(item, envelope))
            else:
                raise Refuse(f"unknown algorithm {alg!r}")
        except Refuse as e:
            refused.append({"id": item.get("id"), "reason": str(e)})
        except Fail as e:  # the node failed us on a look-up (queryKeys) for this item
            refused.append({"id": item.get("id"), "reason": f"lookup failed: {e}"})
        except (olm.OlmSessionError, olm.OlmGroupSessionError, olm.OlmAccountError, ValueError, TypeError) as e:
            refused.append({"id": item.get("id"), "reason": f"error: {type(e).__name__}: {e}"})
    c.save()
    if items:
        c.node.call("dev.ues.chat.ackInbox", body={"deviceId": c.device_id, "upTo": items[-1].get("id")})
    return {"messages": messages, "refused": refused}


def cmd_send_olm(path, args, transport=None):
    if len(args) != 4:
        raise Fail("Usage", "send_olm DID DEVICE_ID CONVO_ID TEXT")
    did, device_id, convo_id, text = args
    c = Client(path, transport)
    resp, kind = c.send_olm(did, device_id, CHAT, chat_content(convo_id, text))
    return {"delivered": resp.get("delivered"), "queued": resp.get("queued"), "type": kind}


def parse_target(s):
    did, sep, device_id = s.rpartition(":")
    if not sep or not did or not device_id:
        raise Fail("Usage", f"target {s!r} is not DID:DEVICE_ID")
    return did, device_id


def cmd_send_megolm(path, args, transport=None):
    if len(args) < 3:
        raise Fail("Usage", "send_megolm CONVO_ID TEXT DID:DEVICE_ID [DID:DEVICE_ID ...]")
    convo_id, text = args[:2]
    targets = [parse_target(a) for a in args[2:]]
    c = Client(path, transport)
    session, g = c.outbound_group(convo_id)
    shared = []
    for did, device_id in targets:
        try:
            _, curve, _ = c.device(did, device_id)
        except Refuse as e:
            raise Fail("Refused", str(e))
        if [did, device_id, curve] in g["sharedWith"]:
            continue
        c.send_olm(did, device_id, ROOM_KEY, room_key_content(convo_id, session.id, session.session_key))
        g["sharedWith"].append([did, device_id, curve])
        shared.append(f"{did}:{device_id}")
        c.save()
    index = session.message_index
    ct = session.encrypt(canonical_json(megolm_plaintext(CHAT, chat_content(convo_id, text), convo_id)).decode("utf-8"))
    g["pickle"] = session.pickle(PASSPHRASE).decode()
    c.save()
    envelope = megolm_envelope(c.curve, c.device_id, session.id, ct)
    resp = c.node.call(
        "dev.ues.chat.sendToDevice",
        body={
            "messages": [
                {"did": did, "deviceId": device_id, "envelope": envelope, "senderDevice": c.device_id}
                for did, device_id in targets
            ]
        },
    )
    return {
        "sessionId": session.id,
        "index": index,
        "delivered": resp.get("delivered"),
        "queued": resp.get("queued"),
        "keyShared": shared,
    }


COMMANDS = {
    "init": cmd_init,
    "keys": cmd_keys,
    "receive": cmd_receive,
    "send_olm": cmd_send_olm,
    "send_megolm": cmd_send_megolm,
}


def run(argv, transport=None):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise Fail("Usage", "olm_client.py STATE_FILE {" + "|".join(COMMANDS) + "} [ARGS...] | --selftest")
    return COMMANDS[argv[1]](argv[0], argv[2:], transport)


# ---------------------------------------------------------------------------------------------
# Self-test: the commands above against an in-memory node


class FakeNode:
    """Just enough of dev.ues.chat.* to run the commands without HTTP."""

    def __init__(self, page=2):
        self.devices = {}  # did -> device id -> device_keys
        self.otks = {}  # (did, device) -> {name: key object}
        self.fallback = {}  # (did, device) -> (name, key object)
        self.inbox = {}  # (did, device) -> [item]
        self.next_id = 1
        self.page = page

    def as_user(self, did):
        node = self

        class Transport:
            def call(self, nsid, params=None, body=None):
                return node.call(did, nsid, params, body)

        return Transport()

    def deliver(self, sender, sender_device, did, device_id, envelope):
        item = {"id": self.next_id, "sender": sender, "senderDevice": sender_device, "envelope": envelope, "receivedAt": "now"}
        self.next_id += 1
        self.inbox.setdefault((did, device_id), []).append(item)
        return item

    def call(self, me, nsid, params, body):
        method = nsid.rsplit(".", 1)[1]
        if method == "uploadKeys":
            dev = body["deviceId"]
            self.devices.setdefault(me, {})[dev] = body["deviceKeys"]
            self.otks.setdefault((me, dev), {}).update(body["oneTimeKeys"])
            for name, key in body["fallbackKeys"].items():
                self.fallback[(me, dev)] = (name, key)
            return {"oneTimeKeyCounts": {"signed_curve25519": len(self.otks[(me, dev)])}}
        if method == "queryKeys":
            return {"devices": [{"deviceId": d, "deviceKeys": k} for d, k in self.devices.get(params["did"], {}).items()]}
        if method == "claimKeys":
            k = (body["did"], body["deviceId"])
            if self.otks.get(k):
                name = sorted(self.otks[k])[0]
                key = self.otks[k].pop(name)
            else:
                name, key = self.fallback[k]
            return {"deviceId": body["deviceId"], "keyId": name, "key": key}
        if method == "sendToDevice":
            for m in body["messages"]:
                self.deliver(me, m["senderDevice"], m["did"], m["deviceId"], json.loads(json.dumps(m["envelope"])))
            return {"delivered": len(body["messages"]), "queued": 0}
        if method == "getInbox":
            items = self.inbox.get((me, params["deviceId"]), [])
            after = int(params.get("cursor") or 0)
            page = [i for i in items if i["id"] > after][: self.page]
            return {"items": page, "cursor": str(page[-1]["id"]) if page else None}
        if method == "ackInbox":
            k = (me, body["deviceId"])
            self.inbox[k] = [i for i in self.inbox.get(k, []) if i["id"] > body["upTo"]]
            return {}
        raise Fail("MethodNotImplemented", nsid)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def selftest():
    # Canonical JSON (Matrix spec examples) and signing with libolm.
    check(canonical_json({"b": "2", "a": "1"}) == b'{"a":"1","b":"2"}', "canonical key order")
    check(canonical_json({"a": "\u65e5\u672c\u8a9e"}) == '{"a":"\u65e5\u672c\u8a9e"}'.encode(), "canonical utf-8")
    check(
        canonical_json({"auth": {"success": True, "mxid": "@john.doe:example.com", "profile": {"display_name": "John Doe", "three_pids": [{"medium": "email", "address": "john.doe@example.org"}]}}})
        == b'{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"}]},"success":true}}',
        "canonical nesting",
    )
    acct = olm.Account()
    ed = acct.identity_keys["ed25519"]
    signed = sign_json(acct, "did:plc:x", "D", {"z": "\u00e9", "unsigned": {"age": 1}})
    verify_json(signed, "did:plc:x", "D", ed)
    for bad in ({**signed, "z": "e"}, {**signed, "signatures": {"did:plc:x": {"ed25519:D": "A" * 86}}}):
        try:
            verify_json(bad, "did:plc:x", "D", ed)
            raise AssertionError("tampered signature accepted")
        except Refuse:
            pass

    node = FakeNode()
    alice, bob, carol = "did:plc:alice", "did:plc:bob", "did:web:carol.test%3A8080"
    tmp = tempfile.mkdtemp(prefix="olm_selftest.")
    A, B, C = (os.path.join(tmp, n + ".json") for n in ("a", "b", "c"))

    def do(path, did, *args):
        return run([path, *args], node.as_user(did))

    a = do(A, alice, "init", "http://x", "jwt", alice, "ADEV")
    b = do(B, bob, "init", "http://x", "jwt", bob, "BDEV", "3")
    c = do(C, carol, "init", "http://x", "jwt", carol, "CDEV", "0")
    check(a["oneTimeKeyCounts"] == {"signed_curve25519": 5} and b["oneTimeKeyCounts"] == {"signed_curve25519": 3}, a)
    check(verify_device_keys(node.devices[bob]["BDEV"], bob, "BDEV") == (b["curve25519"], b["ed25519"]), "bob's device keys")
    for name, key in list(node.otks[(bob, "BDEV")].items()) + [node.fallback[(carol, "CDEV")]]:
        check(name.startswith("signed_curve25519:"), name)
        verify_json(key, *((bob, "BDEV", b["ed25519"]) if key.get("fallback") is None else (carol, "CDEV", c["ed25519"])))
    check(node.fallback[(carol, "CDEV")][1]["fallback"] is True, "fallback flag")
    k = do(B, bob, "keys")
    check(k["unpublishedOneTimeKeys"] == 0 and k["unpublishedFallbackKeys"] == 0, k)

    # Olm: two pre-key messages before a reply, then normal messages both ways.
    check(do(A, alice, "send_olm", bob, "BDEV", "c1", "hi bob")["type"] == 0, "first olm type")
    check(do(A, alice, "send_olm", bob, "BDEV", "c1", "hi again \u2603")["type"] == 0, "second olm type")
    check(len(node.otks[(bob, "BDEV")]) == 2, "one otk claimed")
    prekey = json.loads(json.dumps(node.inbox[(bob, "BDEV")][0]))
    r = do(B, bob, "receive")
    check(r["refused"] == [], r)
    check([m["content"]["text"] for m in r["messages"]] == ["hi bob", "hi again \u2603"], r)
    m = r["messages"][0]
    check(m["type"] == CHAT and m["sender"] == alice and m["senderDevice"] == "ADEV" and m["algorithm"] == OLM, m)
    check(m["content"]["convoId"] == "c1", m)
    check(node.inbox[(bob, "BDEV")] == [], "acked")
    check(do(B, bob, "keys")["olmSessions"] == 1, "one session at bob")
    check(do(B, bob, "send_olm", alice, "ADEV", "c1", "hi alice")["type"] == 1, "reply is a normal message")
    r = do(A, alice, "receive")
    check(r["refused"] == [] and r["messages"][0]["content"]["text"] == "hi alice", r)
    check(do(A, alice, "send_olm", bob, "BDEV", "c1", "now normal")["type"] == 1, "after reply")
    r = do(B, bob, "receive")
    check(r["refused"] == [] and r["messages"][0]["content"]["text"] == "now normal", r)

    # A replayed pre-key message matches the session, and its keys are gone.
    node.deliver(alice, "ADEV", bob, "BDEV", prekey["envelope"])
    r = do(B, bob, "receive")
    check(r["messages"] == [] and "olm decrypt failed" in r["refused"][0]["reason"], r)

    # A fallback key (carol published no one-time keys).
    check(do(A, alice, "send_olm", carol, "CDEV", "c2", "to carol")["type"] == 0, "fallback olm")
    r = do(C, carol, "receive")
    check(r["refused"] == [] and r["messages"][0]["content"]["text"] == "to carol", r)
    check(do(C, carol, "send_olm", alice, "ADEV", "c2", "from carol")["type"] == 1, "carol replies")
    r = do(A, alice, "receive")
    check(r["refused"] == [] and r["messages"][0]["sender"] == carol, r)

    # Megolm: the room key goes over Olm once, then messages carry increasing indices.
    s1 = do(A, alice, "send_megolm", "convo1", "group one", f"{bob}:BDEV", f"{carol}:CDEV")
    check(s1["index"] == 0 and s1["delivered"] == 2 and len(s1["keyShared"]) == 2, s1)
    s2 = do(A, alice, "send_megolm", "convo1", "group two", f"{bob}:BDEV")
    check(s2["index"] == 1 and s2["sessionId"] == s1["sessionId"] and s2["keyShared"] == [], s2)
    replay = json.loads(json.dumps(node.inbox[(bob, "BDEV")][-1]))
    r = do(B, bob, "receive")
    check(r["refused"] == [], r)
    types = [(m["type"], m["algorithm"], m.get("index")) for m in r["messages"]]
    check(types == [(ROOM_KEY, OLM, None), (CHAT, MEGOLM, 0), (CHAT, MEGOLM, 1)], types)
    rk = r["messages"][0]["content"]
    check("session_key" not in rk and rk["room_id"] == "convo1" and rk["session_id"] == s1["sessionId"], rk)
    check([m["content"]["text"] for m in r["messages"][1:]] == ["group one", "group two"], r)
    r = do(C, carol, "receive")
    check([m["content"]["text"] for m in r["messages"] if m["type"] == CHAT] == ["group one"], r)

    # Replay of index 1 is refused.
    node.deliver(alice, "ADEV", bob, "BDEV", replay["envelope"])
    r = do(B, bob, "receive")
    check(r["messages"] == [] and r["refused"][0]["reason"].startswith("replay"), r)

    # A Megolm message whose plaintext names another room is refused.
    ac = Client(A, node.as_user(alice))
    session, _ = ac.outbound_group("convo1")
    ct = session.encrypt(canonical_json(megolm_plaintext(CHAT, chat_content("convo1", "x"), "elsewhere")).decode())
    ac.st["outbound_group"]["convo1"]["pickle"] = session.pickle(PASSPHRASE).decode()
    ac.save()
    node.deliver(alice, "ADEV", bob, "BDEV", megolm_envelope(ac.curve, "ADEV", session.id, ct))
    # ... and so is the same session claimed by another sender.
    node.deliver(carol, "CDEV", bob, "BDEV", megolm_envelope(ac.curve, "ADEV", session.id, ct))
    r = do(B, bob, "receive")
    reasons = [x["reason"] for x in r["refused"]]
    check(r["messages"] == [] and reasons[0].startswith("room mismatch") and reasons[1].startswith("sender mismatch"), r)

    # Olm plaintexts with a wrong recipient, or claiming another sender's ed25519 key, are refused.
    ac = Client(A, node.as_user(alice))
    bc = Client(B, node.as_user(bob))
    for field, value, reason in (
        ("recipient", carol, "recipient mismatch"),
        ("recipient_keys", {"ed25519": c["ed25519"]}, "recipient key mismatch"),
        ("keys", {"ed25519": c["ed25519"]}, "sender ed25519 mismatch"),
        ("sender", carol, "sender mismatch"),
    ):
        session = olm.Session.from_pickle(ac.sessions(b["curve25519"])[0]["pickle"].encode(), PASSPHRASE)
        plain = olm_plaintext(CHAT, chat_content("c1", "forged"), alice, "ADEV", ac.ed, bob, b["ed25519"])
        plain[field] = value
        msg = session.encrypt(canonical_json(plain).decode())
        ac.keep_session(b["curve25519"], session)
        ac.save()
        node.deliver(alice, "ADEV", bob, "BDEV", olm_envelope(ac.curve, b["curve25519"], msg))
        r = do(B, bob, "receive")
        check(r["messages"] == [] and r["refused"][0]["reason"].startswith(reason), (field, r))
    # An envelope whose sender_key is not the sending device's key (carol's session, alice's name).
    cc = Client(C, node.as_user(carol))
    session = olm.Session.from_pickle(cc.sessions(a["curve25519"])[0]["pickle"].encode(), PASSPHRASE)
    plain = olm_plaintext(CHAT, chat_content("c2", "forged"), alice, "ADEV", a["ed25519"], alice, a["ed25519"])
    msg = session.encrypt(canonical_json(plain).decode())
    cc.keep_session(a["curve25519"], session)
    cc.save()
    node.deliver(alice, "ADEV", alice, "ADEV", olm_envelope(cc.curve, a["curve25519"], msg))
    r = do(A, alice, "receive")
    check(r["messages"] == [] and r["refused"][0]["reason"].startswith("sender key mismatch"), r)
    # Not for our key at all.
    node.deliver(alice, "ADEV", bob, "BDEV", {"algorithm": OLM, "sender_key": a["curve25519"], "ciphertext": {"other": {"type": 0, "body": "AAAA"}}})
    r = do(B, bob, "receive")
    check(r["refused"][0]["reason"].startswith("not for us"), r)
    check(bc.curve == b["curve25519"], "state reload keeps the account")

    # Sending refuses a device whose self-signature is bad, and a one-time key with a bad signature.
    dk = node.devices[carol]["CDEV"]
    node.devices[carol]["CDEV"] = {**dk, "algorithms": [OLM]}
    try:
        do(B, bob, "send_olm", carol, "CDEV", "c3", "x")
        raise AssertionError("bad device signature accepted")
    except Fail as e:
        check("bad signature" in e.out.get("message", ""), e.out)
    node.devices[carol]["CDEV"] = dk
    name, fb = node.fallback[(carol, "CDEV")]
    node.fallback[(carol, "CDEV")] = (name, {**fb, "key": a["curve25519"]})
    try:
        do(B, bob, "send_olm", carol, "CDEV", "c3", "x")
        raise AssertionError("bad one-time key signature accepted")
    except Fail as e:
        check("bad signature" in e.out.get("message", ""), e.out)
    node.fallback[(carol, "CDEV")] = (name, fb)
    check(do(B, bob, "send_olm", carol, "CDEV", "c3", "x")["type"] == 0, "good again")
    check(do(C, carol, "receive")["messages"][0]["sender"] == bob, "carol hears bob")

    for p in (A, B, C):
        os.remove(p)
    os.rmdir(tmp)
    return {"ok": True}


def main(argv):
    try:
        if argv[1:2] == ["--selftest"]:
            out = selftest()
        else:
            out = run(argv[1:])
    except Fail as e:
        print(json.dumps(e.out))
        return 1
    except Exception as e:  # report, then fail
        print(json.dumps({"error": type(e).__name__, "message": str(e), "trace": traceback.format_exc()}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
