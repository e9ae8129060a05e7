//! Tombstones and their collection.
//!
//! A delete stays in the log after its record is gone (a tombstone): it beats any operation on
//! the path ordered before it, which a replica that has not seen the delete may still hold and
//! send. It can go once no replica holds such an operation any more:
//!
//! - Each device says which tombstones it holds (and which it collected lately) in an
//!   **acknowledgement**: an operation of its own on the reserved path
//!   `dev.ues.sync.ack/<device key, hex>`. It travels like any operation; only a device's
//!   latest is kept; it is never a record of the account (the repository does not see it). A
//!   device writes one when it holds a tombstone of another device that its latest does not
//!   name ([`Replica::write_ack`]).
//! - A device that holds a delete never holds what it beats (it is collected on arrival). So
//!   once every device authorized before the delete has named it (the one that wrote it need
//!   not), no device holds an operation it beats, and none will again: a device gets one only
//!   from a device that holds it. What was already on its way when the last of them named it
//!   arrives within the transport's timeout: a tombstone goes only a grace period after it
//!   came here and after the acknowledgements that name it. Revoked devices no longer sync.
//! - A collected tombstone leaves the log and its entry block is deleted. Sent again by a
//!   replica that has not collected it yet, it is not stored again while this replica runs
//!   (its dot is known); after a restart it may be, and goes again the same way.
//!
//! Acknowledgement records: `{"$type": "dev.ues.sync.ack", "devices": [hex keys], "held": [[i,
//! seq]], "collected": [[i, seq]]}`, where `i` indexes `devices`: at most [`MAX_ACK_DOTS`]
//! dots in each list.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use ues_repo::ipld::storage::Cid;
use ues_repo::ipld::{Ipld, dagcbor};
use ues_repo::syntax::{Did, Nsid, RecordKey};

use super::{LogKey, Refused, Replica, ReplicaError, Signed, entry_cid_from_id};
use crate::Change;
use crate::entry::{EntryError, Op, OpKind, position};
use crate::hlc::Timestamp;
use crate::vv::DeviceId;

/// The collection of acknowledgements.
pub const ACK_COLLECTION: &str = "dev.ues.sync.ack";
/// Tombstones an acknowledgement names at most in each of its lists.
const MAX_ACK_DOTS: usize = 4_096;
/// Devices an acknowledgement names at most.
const MAX_ACK_DEVICES: usize = 1_024;

/// An operation's dot: its device and sequence number.
type Dot = (DeviceId, u64);

/// One account's tombstones and acknowledgements.
#[derive(Debug, Default)]
pub(crate) struct Tombstones {
    /// Tombstones held: path → the delete's dot, and when it became a tombstone here.
    held: BTreeMap<String, (Dot, Instant)>,
    by_dot: HashMap<Dot, String>,
    /// Devices that named each held tombstone, as their acknowledgements arrived.
    named: HashMap<Dot, HashSet<DeviceId>>,
    /// Each device's latest acknowledgement.
    latest: HashMap<DeviceId, Ack>,
    /// Tombstones this replica collected lately, named in its next acknowledgements.
    collected: VecDeque<Dot>,
}

#[derive(Debug)]
struct Ack {
    /// The sequence number of the operation that carries it.
    seq: u64,
    /// The tombstones it names (held or collected).
    dots: HashSet<Dot>,
    /// When it arrived here.
    at: Instant,
}

impl Tombstones {
    /// The first operation on `path` is a delete with this dot.
    pub(crate) fn held(&mut self, path: &str, dot: Dot) {
        if self.held.get(path).is_some_and(|(d, _)| *d == dot) {
            return;
        }
        self.not_held(path);
        self.held.insert(path.to_string(), (dot, Instant::now()));
        self.by_dot.insert(dot, path.to_string());
    }

    /// No delete on `path` any more.
    pub(crate) fn not_held(&mut self, path: &str) {
        if let Some((dot, _)) = self.held.remove(path) {
            self.by_dot.remove(&dot);
            self.named.remove(&dot);
        }
    }
}

pub(crate) fn is_ack_path(path: &str) -> bool {
    path.strip_prefix(ACK_COLLECTION).is_some_and(|rest| rest.starts_with('/'))
}

fn ack_record(held: &[Dot], collected: &[Dot]) -> Ipld {
    let mut devices: Vec<DeviceId> = held.iter().chain(collected).map(|(d, _)| *d).collect();
    devices.sort_unstable();
    devices.dedup();
    let index: HashMap<DeviceId, usize> = devices.iter().enumerate().map(|(i, d)| (*d, i)).collect();
    let list = |dots: &[Dot]| {
        Ipld::List(
            dots.iter()
                .map(|(d, s)| Ipld::List(vec![Ipld::Integer(index[d] as i128), Ipld::Integer(i128::from(*s))]))
                .collect(),
        )
    };
    Ipld::Map(BTreeMap::from([
        ("$type".to_string(), Ipld::String(ACK_COLLECTION.into())),
        ("devices".to_string(), Ipld::List(devices.iter().map(|d| Ipld::String(hex::encode(d))).collect())),
        ("held".to_string(), list(held)),
        ("collected".to_string(), list(collected)),
    ]))
}

/// The dots an acknowledgement names (held and collected), or `None` if it is not one.
fn parse_ack(bytes: &[u8]) -> Option<HashSet<Dot>> {
    let Ipld::Map(m) = dagcbor::decode_atproto(bytes).ok()? else { return None };
    if m.get("$type").and_then(Ipld::as_str) != Some(ACK_COLLECTION) {
        return None;
    }
    let Some(Ipld::List(devices)) = m.get("devices") else { return None };
    if devices.len() > MAX_ACK_DEVICES {
        return None;
    }
    let devices: Vec<DeviceId> =
        devices.iter().map(|d| hex::decode(d.as_str()?).ok()?.try_into().ok()).collect::<Option<Vec<DeviceId>>>()?;
    let mut dots = HashSet::new();
    for list in ["held", "collected"] {
        let Some(Ipld::List(items)) = m.get(list) else { return None };
        if items.len() > MAX_ACK_DOTS {
            return None;
        }
        for item in items {
            let Ipld::List(pair) = item else { return None };
            let [Ipld::Integer(i), Ipld::Integer(seq)] = pair.as_slice() else { return None };
            let device = *devices.get(usize::try_from(*i).ok()?)?;
            dots.insert((device, u64::try_from(*seq).ok()?));
        }
    }
    Some(dots)
}

/// An acknowledgement must be its own device's, a put, and (when its record comes with it)
/// well formed.
pub(crate) fn check_ack_op(op: &Op, block: Option<&(Cid, Vec<u8>)>) -> Result<(), Refused> {
    if op.collection.as_str() != ACK_COLLECTION {
        return Ok(());
    }
    let malformed = |why: &str| Refused::Entry(EntryError::Shape(format!("acknowledgement: {why}")));
    if op.rkey.as_str() != hex::encode(op.device) {
        return Err(malformed("for another device"));
    }
    let OpKind::Put(cid) = &op.kind else { return Err(malformed("not a put")) };
    if let Some((c, data)) = block
        && c == cid
        && parse_ack(data).is_none()
    {
        return Err(malformed("a record that is not one"));
    }
    Ok(())
}

impl Replica {
    /// Takes in the latest acknowledgement on an acknowledgement path.
    pub(super) fn read_ack(&mut self, idx: u32, path: &str) {
        let acct = &self.accounts[idx as usize];
        let Some(latest) = acct.targets.get(path).and_then(|ops| ops.last()).cloned() else { return };
        let OpKind::Put(cid) = latest.kind else { return };
        let device = latest.order.1;
        if acct.tombs.latest.get(&device).is_some_and(|a| a.seq >= latest.seq) {
            return;
        }
        let Some(dots) = self.blocks.get(&cid).ok().flatten().and_then(|b| parse_ack(&b)) else {
            tracing::debug!(path, "an acknowledgement that does not read");
            return;
        };
        let tombs = &mut self.accounts[idx as usize].tombs;
        for dot in &dots {
            if tombs.by_dot.contains_key(dot) {
                tombs.named.entry(*dot).or_default().insert(device);
            }
        }
        tombs.latest.insert(device, Ack { seq: latest.seq, dots, at: Instant::now() });
    }

    /// Writes this device's acknowledgement of `did` when it holds a tombstone of another
    /// device that its latest acknowledgement does not name; returns it, to travel like any
    /// operation.
    pub fn write_ack(&mut self, did: &Did) -> Result<Option<Signed>, ReplicaError> {
        let Some(idx) = self.did_lookup(did) else { return Ok(None) };
        let Some(own) = self.device_id() else { return Ok(None) };
        if !self.is_authorized(did, &own) {
            return Ok(None);
        }
        let tombs = &self.accounts[idx as usize].tombs;
        let named = tombs.latest.get(&own).map(|a| &a.dots);
        let held: Vec<Dot> =
            tombs.held.values().map(|(dot, _)| *dot).filter(|(d, _)| *d != own).take(MAX_ACK_DOTS).collect();
        if held.iter().all(|dot| named.is_some_and(|n| n.contains(dot))) {
            return Ok(None);
        }
        let collected: Vec<Dot> = tombs.collected.iter().copied().collect();
        let nsid = Nsid::new(ACK_COLLECTION).expect("a valid NSID");
        let rkey = RecordKey::new(hex::encode(own)).expect("hex is a valid record key");
        self.write(did, nsid, rkey, Change::Put(ack_record(&held, &collected))).map(Some)
    }

    /// Whether the tombstone on `path` can go (see the module's documentation).
    fn stable(&self, idx: u32, path: &str, own: Option<DeviceId>, grace: Duration) -> bool {
        let acct = &self.accounts[idx as usize];
        let Some((dot, since)) = acct.tombs.held.get(path) else { return false };
        let Some(first) = acct.targets.get(path).and_then(|ops| ops.first()) else { return false };
        if first.kind != OpKind::Delete || (first.order.1, first.seq) != *dot || since.elapsed() < grace {
            return false;
        }
        let at = Timestamp::from_u64(first.order.0);
        let now = self.next_time();
        acct.devices.iter().all(|(x, state)| {
            if Some(*x) == own || *x == dot.0 || state.authorized.is_none_or(|a| a >= at) || !state.valid_at(now) {
                return true;
            }
            let Some(ack) = acct.tombs.latest.get(x) else { return false };
            let named = ack.dots.contains(dot) || acct.tombs.named.get(dot).is_some_and(|n| n.contains(x));
            named && ack.at.elapsed() >= grace
        })
    }

    /// Collects the account's tombstones that every device has named, once `grace` has passed
    /// since they came and since the acknowledgements that name them did (the time for what
    /// was on its way to arrive); returns how many went.
    pub fn collect_tombstones(&mut self, did: &Did, grace: Duration) -> usize {
        let Some(idx) = self.did_lookup(did) else { return 0 };
        let own = self.device_id();
        let doomed: Vec<String> = self.accounts[idx as usize]
            .tombs
            .held
            .keys()
            .filter(|p| self.stable(idx, p, own, grace))
            .cloned()
            .collect();
        for path in &doomed {
            let acct = &mut self.accounts[idx as usize];
            let Some(ops) = acct.targets.get_mut(path) else { continue };
            let d = ops.remove(0);
            if ops.is_empty() {
                acct.targets.remove(path);
            }
            acct.tombs.not_held(path);
            if acct.tombs.collected.len() == MAX_ACK_DOTS {
                acct.tombs.collected.pop_front();
            }
            acct.tombs.collected.push_back((d.order.1, d.seq));
            let id = d.order.2;
            self.log.remove(&LogKey { pos: position(Timestamp::from_u64(d.order.0), &id), id });
            let _ = self.blocks.delete(&entry_cid_from_id(&id));
            self.collected_tombstones += 1;
        }
        doomed.len()
    }

    /// Tombstones the account holds.
    pub fn tombstones(&self, did: &Did) -> usize {
        self.did_lookup(did).map_or(0, |i| self.accounts[i as usize].tombs.held.len())
    }

    /// Tombstones collected since the replica opened.
    pub fn collected_tombstones(&self) -> u64 {
        self.collected_tombstones
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use ed25519_dalek::SigningKey;
    use ues_repo::ipld::storage::MemoryBlockstore;

    use super::*;
    use crate::hlc::Hlc;
    use crate::replica::tests::{World, world};

    struct Clock(Arc<AtomicU64>);

    impl Clock {
        fn hlc(&self) -> Hlc {
            let now = self.0.clone();
            Hlc::with_physical(60_000, move || now.load(Ordering::SeqCst))
        }

        fn tick(&self) {
            self.0.fetch_add(5, Ordering::SeqCst);
        }
    }

    fn replica(w: &World, dev: u8, clock: &Clock) -> Replica {
        let store = Arc::new(MemoryBlockstore::new());
        Replica::open(store, w.keys.clone(), clock.hlc(), Some(SigningKey::from_bytes(&[dev; 32]))).unwrap()
    }

    fn note(text: &str) -> Change {
        Change::Put(Ipld::Map(BTreeMap::from([
            ("$type".to_string(), Ipld::String("dev.ues.test.note".into())),
            ("text".to_string(), Ipld::String(text.into())),
        ])))
    }

    fn write(r: &mut Replica, w: &World, rkey: &str, change: Change, clock: &Clock) -> Signed {
        clock.tick();
        r.write(&w.did, Nsid::new("dev.ues.test.note").unwrap(), RecordKey::new(rkey).unwrap(), change).unwrap()
    }

    fn deliver(to: &mut Replica, entries: &[Signed]) -> crate::ApplyReport {
        let r = to.apply(entries.to_vec());
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        r
    }

    /// Three devices. A tombstone goes only once every other device has named it in an
    /// acknowledgement and the grace period has passed; sent again by a replica that still
    /// holds it, it is not stored again; once all three have collected, their logs and roots
    /// are equal and the deleted records stay deleted.
    #[test]
    fn a_tombstone_goes_once_every_device_has_named_it() {
        let w = world();
        let clock = Clock(Arc::new(AtomicU64::new(crate::hlc::system_ms())));
        let (mut a, mut b, mut c) = (replica(&w, 1, &clock), replica(&w, 2, &clock), replica(&w, 3, &clock));
        let mut auths = Vec::new();
        for dev in [1u8, 2, 3] {
            let d = SigningKey::from_bytes(&[dev; 32]).verifying_key().to_bytes();
            auths.push(a.authorize(&w.account, &w.did, d, false).unwrap());
        }
        deliver(&mut b, &auths);
        deliver(&mut c, &auths);

        // C writes q and keeps it to itself; A writes and deletes p, and deletes q.
        write(&mut c, &w, "q", note("c's q"), &clock);
        let a_ops = vec![
            write(&mut a, &w, "p", note("p"), &clock),
            write(&mut a, &w, "p", Change::Delete, &clock),
            write(&mut a, &w, "q", Change::Delete, &clock),
        ];
        assert_eq!(a.tombstones(&w.did), 2);
        assert!(a.write_ack(&w.did).unwrap().is_none(), "a device does not acknowledge its own deletes");
        deliver(&mut b, &a_ops);
        let ack_b = b.write_ack(&w.did).unwrap().expect("B names A's tombstones");
        assert!(b.write_ack(&w.did).unwrap().is_none(), "nothing new to name");
        assert!(b.records(&w.did).unwrap().is_empty(), "an acknowledgement is no record");
        deliver(&mut a, std::slice::from_ref(&ack_b));
        assert_eq!(a.collect_tombstones(&w.did, Duration::ZERO), 0, "C has not named them");

        // C gets the deletes (the one of q beats C's own q) and names them.
        let r = deliver(&mut c, &a_ops);
        assert_eq!(r.collected, 0);
        assert!(c.records(&w.did).unwrap().is_empty(), "C's q is beaten");
        let ack_c = c.write_ack(&w.did).unwrap().expect("C names them");
        deliver(&mut a, std::slice::from_ref(&ack_c));
        assert_eq!(a.collect_tombstones(&w.did, Duration::from_secs(3_600)), 0, "not before the grace period");
        let before = a.len();
        assert_eq!(a.collect_tombstones(&w.did, Duration::ZERO), 2);
        assert_eq!((a.tombstones(&w.did), a.collected_tombstones()), (0, 2));
        assert_eq!(a.len(), before - 2, "the log shrank");

        // B still holds them and sends them again: not stored again.
        let r = deliver(&mut a, &a_ops);
        assert_eq!((r.applied, a.tombstones(&w.did)), (0, 0), "{r:?}");

        // B and C collect too once each holds the other's acknowledgement; then all agree.
        deliver(&mut b, std::slice::from_ref(&ack_c));
        deliver(&mut c, std::slice::from_ref(&ack_b));
        assert_eq!(b.collect_tombstones(&w.did, Duration::ZERO), 2);
        assert_eq!(c.collect_tombstones(&w.did, Duration::ZERO), 2);
        for r in [&mut b, &mut c] {
            assert_eq!(r.len(), a.len());
            assert_eq!(r.root(&w.did).unwrap(), a.root(&w.did).unwrap());
            assert!(r.records(&w.did).unwrap().is_empty());
        }
        // A's next acknowledgement (for a new tombstone of B's) names what it collected.
        let b_ops = vec![write(&mut b, &w, "r", note("r"), &clock), write(&mut b, &w, "r", Change::Delete, &clock)];
        deliver(&mut a, &b_ops);
        let ack_a = a.write_ack(&w.did).unwrap().expect("A names B's tombstone");
        let Some((_, record)) = &ack_a.block else { panic!("an acknowledgement carries its record") };
        assert_eq!(parse_ack(record).unwrap().len(), 3, "one held, two collected");
    }

    /// An acknowledgement is its own device's and well formed, or it is refused.
    #[test]
    fn forged_acknowledgements_are_refused() {
        let w = world();
        let clock = Clock(Arc::new(AtomicU64::new(crate::hlc::system_ms())));
        let mut a = replica(&w, 1, &clock);
        let key = SigningKey::from_bytes(&[2; 32]);
        let dev = key.verifying_key().to_bytes();
        let auth = a.authorize(&w.account, &w.did, dev, false).unwrap();
        deliver(&mut a, &[auth]);
        let nsid = Nsid::new(ACK_COLLECTION).unwrap();
        let sign = |seq: u64, rkey: String, record: Ipld| {
            clock.tick();
            let bytes = dagcbor::encode(&record);
            let cid = ues_repo::ipld::cid_sha256(crate::entry::DAG_CBOR, &bytes);
            let now = Timestamp { wall_ms: clock.0.load(Ordering::SeqCst), logical: 0 };
            let op =
                Op::sign(&key, w.did.clone(), seq, now, nsid.clone(), RecordKey::new(rkey).unwrap(), OpKind::Put(cid));
            Signed { bytes: crate::Entry::Op(op).encode(), block: Some((cid, bytes)) }
        };
        let good = ack_record(&[], &[]);
        let bad = Ipld::Map(BTreeMap::from([("$type".to_string(), Ipld::String(ACK_COLLECTION.into()))]));
        let out_of_range = Ipld::Map(BTreeMap::from([
            ("$type".to_string(), Ipld::String(ACK_COLLECTION.into())),
            ("devices".to_string(), Ipld::List(vec![])),
            ("held".to_string(), Ipld::List(vec![Ipld::List(vec![Ipld::Integer(0), Ipld::Integer(1)])])),
            ("collected".to_string(), Ipld::List(vec![])),
        ]));
        for (s, what) in [
            (sign(1, hex::encode([9u8; 32]), good.clone()), "another device's"),
            (sign(1, hex::encode(dev), bad), "malformed"),
            (sign(1, hex::encode(dev), out_of_range), "naming a device it does not list"),
        ] {
            let r = a.apply(vec![s]);
            assert_eq!(r.refused.len(), 1, "{what} acknowledgement refused: {r:?}");
        }
        let r = a.apply(vec![sign(1, hex::encode(dev), good)]);
        assert_eq!(r.applied, 1, "{r:?}");
    }
}
