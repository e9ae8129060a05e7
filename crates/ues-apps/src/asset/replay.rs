//! Replaying a ledger from its issuer's repository: the class record and the transaction
//! records, in key order, checked in sequence (operation, record key, state hash) on a fresh
//! in-memory state. The repository is this node's, or another node's fetched as a CAR and
//! checked end to end first (every block against its CID, the commit's signature against the
//! issuer's DID document), so what is replayed is what the issuer signed.

use std::io::Read;

use serde_json::{Value, json};
use ues_protocol::node::{Node, NodeError};
use ues_protocol::sync::repo::ipld::storage::{Blockstore, MemoryBlockstore};
use ues_protocol::sync::repo::ipld::{dagcbor, json as ipld_json};
use ues_protocol::sync::repo::repo::{Repo, import_car};
use ues_protocol::sync::repo::syntax::{Nsid, RecordKey};

use super::ledger::{Class, Memory, Op};
use super::store::{TX, tx_rkey};

/// Records read per page of the tree.
const PAGE: usize = 1000;

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The last transaction that checked.
    pub seq: i64,
    /// The state hash after it.
    pub state_hash: String,
    /// The first that did not: (seq, its record's URI, why).
    pub first_bad: Option<(i64, String, String)>,
    /// The repository commit replayed.
    pub commit: String,
}

impl Report {
    /// Its JSON form (`verifyLedger`'s answer).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "ok": self.first_bad.is_none(),
            "seq": self.seq,
            "stateHash": self.state_hash,
            "commit": self.commit,
        });
        if let Some((seq, uri, reason)) = &self.first_bad {
            v["firstBad"] = json!({ "seq": seq, "uri": uri, "reason": reason });
        }
        v
    }
}

fn record_json<B: Blockstore>(repo: &Repo<B>, cid: &ues_protocol::sync::repo::ipld::storage::Cid) -> Option<Value> {
    let bytes = repo.store().get(cid).ok()??;
    dagcbor::decode_atproto(&bytes).ok().map(|i| ipld_json::to_json(&i))
}

/// The other half of a sale: a `#sale` names its `#pay` on the price's ledger (the listing's
/// price from the buyer to the seller, the class's royalty rounded down to its receiver), and the
/// `#pay` names the `#sale`; both are in the same repository.
fn counterpart<B: Blockstore>(repo: &Repo<B>, class: &Class, state: &Memory, uri: &str, op: &Op) -> Result<(), String> {
    let other = |u: &str| -> Result<Value, String> {
        let rkey = u
            .strip_prefix(&format!("at://{}/{TX}/", repo.commit().did))
            .ok_or_else(|| format!("{u} is not a transaction of this repository"))?;
        let nsid = Nsid::new(TX).map_err(|e| e.to_string())?;
        let key = RecordKey::new(rkey).map_err(|e| e.to_string())?;
        let (_, v) =
            repo.get_record(&nsid, &key).map_err(|e| e.to_string())?.ok_or_else(|| format!("{u} is missing"))?;
        Ok(ipld_json::to_json(&v))
    };
    match op {
        Op::Sale { listing, buyer, payment } => {
            let Some(l) = state.listing(listing) else { return Ok(()) };
            let pay = other(payment)?;
            let expected_cut =
                class.royalty.as_ref().map(|r| (r.receiver.clone(), super::amount::royalty(l.price, r.bps)));
            let paid = Op::from_json(&pay["op"]).map_err(|e| format!("its payment: {e}"))?;
            let ok = matches!(&paid, Op::Pay { from, to, amount, royalty, sale }
                if from == buyer && to == &l.seller && *amount == l.price && sale == uri
                    && royalty.clone().filter(|r| r.1 > 0) == expected_cut.filter(|r| r.1 > 0))
                && pay["ledger"].as_str() == Some(l.price_ledger.as_str());
            if !ok {
                return Err(format!("its payment {payment} does not pay the listing's price and royalty"));
            }
        }
        Op::Pay { sale, .. } => {
            let s = other(sale)?;
            if !matches!(Op::from_json(&s["op"]), Ok(Op::Sale { payment, .. }) if payment == uri) {
                return Err(format!("the sale {sale} it pays for does not name it"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replays the ledger of record `class_rkey` in `collection` (a class's or a contract
/// instance's) of `did`'s repository.
pub fn replay<B: Blockstore>(
    repo: &Repo<B>,
    did: &str,
    collection: &str,
    class_rkey: &str,
) -> Result<Option<Report>, NodeError> {
    let class_nsid = Nsid::new(collection).map_err(NodeError::internal)?;
    let tx_nsid = Nsid::new(TX).map_err(NodeError::internal)?;
    let rkey = RecordKey::new(class_rkey).map_err(|e| NodeError::invalid(e.to_string()))?;
    let Some((_, class)) = repo.get_record(&class_nsid, &rkey).map_err(NodeError::internal)? else { return Ok(None) };
    let uri = format!("at://{did}/{collection}/{class_rkey}");
    let mut state = Memory::default();
    let mut report =
        Report { seq: 0, state_hash: state.hash.digest(), first_bad: None, commit: repo.head().to_string() };
    let class = match Class::from_record(did, &ipld_json::to_json(&class)) {
        Ok(c) => c,
        Err(e) => {
            report.first_bad = Some((0, uri, format!("the class record does not check: {e}")));
            return Ok(Some(report));
        }
    };
    let prefix = format!("{class_rkey}-");
    let mut cursor = RecordKey::new(&prefix).map_err(NodeError::internal)?;
    'pages: loop {
        let page = repo.list_records(&tx_nsid, Some(&cursor), PAGE).map_err(NodeError::internal)?;
        let done = page.len() < PAGE;
        for (key, cid) in &page {
            if !key.starts_with(&prefix) {
                break 'pages;
            }
            let seq = report.seq + 1;
            let tx_uri = format!("at://{did}/{TX}/{key}");
            let mut check = || -> Result<String, String> {
                if key != &tx_rkey(class_rkey, seq) {
                    return Err(format!("transaction {seq} is missing: the next record is {key}"));
                }
                let r = record_json(repo, cid).ok_or("the record does not decode")?;
                if r["seq"].as_i64() != Some(seq) || r["ledger"].as_str() != Some(uri.as_str()) {
                    return Err(format!("the record says ledger {} seq {}", r["ledger"], r["seq"]));
                }
                let op = Op::from_json(&r["op"]).map_err(|e| e.to_string())?;
                counterpart(repo, &class, &state, &tx_uri, &op)?;
                let hash = state
                    .apply(&class, r["actor"].as_str().unwrap_or_default(), &op)
                    .map_err(|e| format!("the operation is refused: {e}"))?;
                if r["stateHash"].as_str() != Some(hash.as_str()) {
                    return Err(format!("it says state hash {}, the replay gives {hash}", r["stateHash"]));
                }
                Ok(hash)
            };
            match check() {
                Ok(hash) => {
                    report.seq = seq;
                    report.state_hash = hash;
                }
                Err(reason) => {
                    report.first_bad = Some((seq, tx_uri, reason));
                    break 'pages;
                }
            }
            cursor = RecordKey::new(key).map_err(NodeError::internal)?;
        }
        if done || page.is_empty() {
            break;
        }
    }
    Ok(Some(report))
}

/// Fetches `did`'s repository from its node as a CAR (at most `max_bytes`), checks it against
/// the DID document's signing key, and replays ledger `class_rkey` from it.
pub fn replay_remote(
    node: &Node,
    did: &str,
    collection: &str,
    class_rkey: &str,
    max_bytes: u64,
) -> Result<Option<Report>, NodeError> {
    let (parsed, id) = crate::peer::identity(node, did)?;
    let key = id.signing_key.ok_or_else(|| NodeError::bad("AccountNotFound", format!("{did} names no signing key")))?;
    let pds = crate::peer::pds_of(node, did)?;
    let url = format!("{pds}/xrpc/com.atproto.sync.getRepo?did={did}");
    let res =
        node.service_agent().get(&url).call().map_err(|e| crate::peer::upstream(format!("getRepo at {pds}: {e}")))?;
    if res.status().as_u16() != 200 {
        return Err(crate::peer::upstream(format!("getRepo at {pds} answered {}", res.status())));
    }
    let mut car = Vec::new();
    res.into_body()
        .as_reader()
        .take(max_bytes + 1)
        .read_to_end(&mut car)
        .map_err(|e| crate::peer::upstream(format!("getRepo at {pds}: {e}")))?;
    if car.len() as u64 > max_bytes {
        tracing::info!(app = super::NAME, %did, max_bytes, "a repository to replay is past the bound");
        return Err(NodeError::bad("RepoTooLarge", format!("{did}'s repository is larger than {max_bytes} bytes")));
    }
    let repo = import_car(MemoryBlockstore::new(), car.as_slice(), &parsed, &key)
        .map_err(|e| crate::peer::upstream(format!("{did}'s repository does not check: {e}")))?;
    replay(&repo, did, collection, class_rkey)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;
    use ues_protocol::sync::repo::crypto::{KeyType, Keypair};
    use ues_protocol::sync::repo::ipld::json::record_from_json;
    use ues_protocol::sync::repo::repo::Write;
    use ues_protocol::sync::repo::syntax::{Did, TidGenerator};

    use super::*;
    use crate::asset::ledger::Class;
    use crate::asset::store::{CLASS, ledger_uri};

    const PEOPLE: [&str; 4] = ["did:web:issuer.example", "did:web:a.example", "did:web:b.example", "did:web:c.example"];

    /// A repository holding a ledger of the accepted operations among `ops` (in commits of
    /// `batch`), the state hash after each, with transaction `bad` (if any) written with a
    /// wrong state hash; the repository, its key and class key, and the expected last hash.
    fn build(
        ops: &[(usize, usize, u8, u128)],
        batch: usize,
        bad: Option<usize>,
    ) -> (Repo<MemoryBlockstore>, Keypair, String, i64, String) {
        let key = Keypair::generate(KeyType::K256);
        let did = Did::new(PEOPLE[0]).unwrap();
        let tids = TidGenerator::new(1);
        let (mut repo, _) = Repo::create(MemoryBlockstore::new(), did.clone(), &key, tids.next()).unwrap();
        let class_rkey = tids.next().to_string();
        let class_json =
            json!({"$type": CLASS, "kind": "fungible", "name": "T", "createdAt": "2026-12-06T00:00:00.000Z"});
        let class = Class::from_record(PEOPLE[0], &class_json).unwrap();
        let mut writes = vec![Write::Create {
            collection: Nsid::new(CLASS).unwrap(),
            rkey: RecordKey::new(&class_rkey).unwrap(),
            record: record_from_json(&class_json).unwrap(),
        }];
        let mut state = Memory::default();
        let mut seq = 0i64;
        let mut last = state.hash.digest();
        for (a, b, kind, amount) in ops {
            let (actor, op) = match kind {
                0 => (
                    PEOPLE[0],
                    Op::Mint { to: PEOPLE[*b].into(), token: None, amount: *amount, metadata: None, unique: false },
                ),
                1 => (
                    PEOPLE[*a],
                    Op::Transfer {
                        from: PEOPLE[*a].into(),
                        to: PEOPLE[*b].into(),
                        token: None,
                        amount: *amount,
                        fee: None,
                    },
                ),
                _ => (PEOPLE[*a], Op::Burn { from: PEOPLE[*a].into(), token: None, amount: *amount }),
            };
            let Ok(hash) = state.apply(&class, actor, &op) else { continue };
            seq += 1;
            let written = if bad == Some(seq as usize) { "0".repeat(64) } else { hash.clone() };
            last = hash;
            let record = json!({
                "$type": TX, "ledger": ledger_uri(PEOPLE[0], &class_rkey), "seq": seq, "actor": actor,
                "op": op.to_json(), "stateHash": written, "createdAt": "2026-12-06T00:00:00.000Z",
            });
            writes.push(Write::Create {
                collection: Nsid::new(TX).unwrap(),
                rkey: RecordKey::new(tx_rkey(&class_rkey, seq)).unwrap(),
                record: record_from_json(&record).unwrap(),
            });
            if writes.len() >= batch {
                repo.apply_writes(&writes, &key, tids.next(), None).unwrap();
                writes.clear();
            }
        }
        if !writes.is_empty() {
            repo.apply_writes(&writes, &key, tids.next(), None).unwrap();
        }
        (repo, key, class_rkey, seq, last)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// A ledger exported as a CAR and imported on another store (checked against the
        /// issuer's key) replays to the same state hash; one wrong transaction is found.
        #[test]
        fn an_exported_ledger_replays_to_the_same_hash_elsewhere(
            ops in proptest::collection::vec((0usize..4, 0usize..4, 0u8..3, 1u128..40), 1..60),
            batch in 1usize..20,
            bad in proptest::option::of(1usize..30),
        ) {
            let (repo, key, rkey, seq, last) = build(&ops, batch, None);
            let car = repo.export_car(Vec::new()).unwrap();
            let did = Did::new(PEOPLE[0]).unwrap();
            let elsewhere = import_car(MemoryBlockstore::new(), car.as_slice(), &did, &key.public()).unwrap();
            let report = replay(&elsewhere, PEOPLE[0], CLASS, &rkey).unwrap().unwrap();
            prop_assert_eq!(report.first_bad, None);
            prop_assert_eq!((report.seq, report.state_hash), (seq, last));

            if let Some(bad) = bad.filter(|b| (*b as i64) <= seq) {
                let (repo, _, rkey, _, _) = build(&ops, batch, Some(bad));
                let report = replay(&repo, PEOPLE[0], CLASS, &rkey).unwrap().unwrap();
                prop_assert_eq!(report.first_bad.map(|b| b.0), Some(bad as i64));
                prop_assert_eq!(report.seq, bad as i64 - 1);
            }
        }
    }
}
