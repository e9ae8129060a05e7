//! The ledger of one asset class as a pure state machine: its state is a set of entries
//! (key → value bytes), an operation reads some and changes some, and a refused operation
//! changes none. The node keeps the entries in SQLite, a replay keeps them in memory; both
//! run the same [`step`] and agree on the [`LtHash`] of the entries.
//!
//! Semantics are those people know from Ethereum's token standards: ERC-20 (a fungible class;
//! `approve` sets an allowance a spender's transfers use up), ERC-721 (unique tokens, each
//! with one owner and one approved spender, cleared when it moves), ERC-1155 (a class of many
//! token ids, each fungible or unique), and operators approved for all of an owner's tokens.
//! Only the class's issuer mints. The maximum supply caps a fungible class's total, the number
//! of tokens of a class of unique tokens, and each token id's supply in a multi-token class;
//! a burn frees its room.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use ues_protocol::sync::repo::ipld::{dagcbor, json as ipld_json};
use ues_protocol::sync::repo::syntax::Did;

use super::amount;
use super::hash::LtHash;

/// A class's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One fungible token (ERC-20).
    Fungible,
    /// Unique tokens (ERC-721).
    NonFungible,
    /// Many token ids, each fungible or unique (ERC-1155).
    Multi,
    /// A contract instance's state (its own ledger of write sets).
    Contract,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "fungible" => Some(Self::Fungible),
            "nonFungible" => Some(Self::NonFungible),
            "multi" => Some(Self::Multi),
            _ => None,
        }
    }
}

/// A royalty: who receives it and how many basis points of each sale's price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Royalty {
    /// The receiver's DID.
    pub receiver: String,
    /// Basis points (at most 10,000).
    pub bps: u16,
}

/// What a class record says (its issuer is the account whose repository holds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// The issuing account.
    pub issuer: String,
    /// Its kind.
    pub kind: Kind,
    /// Decimal places for display (0 to 18).
    pub decimals: u8,
    /// The cap on supply, if any.
    pub max_supply: Option<u128>,
    /// Its royalty, if any.
    pub royalty: Option<Royalty>,
    /// The contract instance whose `on_transfer` hook transfers go through.
    pub contract: Option<String>,
}

impl Class {
    /// The class a record (as JSON) declares, checked.
    pub fn from_record(issuer: &str, r: &Value) -> Result<Self, LedgerError> {
        if r["$type"] == "dev.ues.contract.instance" {
            return Ok(Self {
                issuer: issuer.to_string(),
                kind: Kind::Contract,
                decimals: 0,
                max_supply: None,
                royalty: None,
                contract: None,
            });
        }
        let kind = r["kind"].as_str().and_then(Kind::parse).ok_or_else(|| invalid_class("kind is not a known kind"))?;
        let decimals = match r.get("decimals") {
            None => 0,
            Some(d) => d.as_u64().filter(|d| *d <= 18).ok_or_else(|| invalid_class("decimals is 0 to 18"))? as u8,
        };
        if kind != Kind::Fungible && decimals != 0 {
            return Err(invalid_class("only a fungible class has decimals"));
        }
        let max_supply = r["maxSupply"]
            .as_str()
            .map(amount::parse)
            .transpose()
            .map_err(|e| invalid_class(&format!("maxSupply: {e}")))?;
        let royalty = match r.get("royalty") {
            None | Some(Value::Null) => None,
            Some(ro) => {
                let receiver = ro["receiver"].as_str().filter(|d| Did::new(*d).is_ok());
                let bps = ro["basisPoints"].as_u64().filter(|b| *b <= 10_000);
                match (receiver, bps) {
                    (Some(receiver), Some(bps)) => Some(Royalty { receiver: receiver.to_string(), bps: bps as u16 }),
                    _ => return Err(invalid_class("royalty needs a receiver DID and 0 to 10,000 basisPoints")),
                }
            }
        };
        let contract = match r.get("contract") {
            None | Some(Value::Null) => None,
            Some(c) => {
                let c = c.as_str().filter(|c| c.starts_with(&format!("at://{issuer}/dev.ues.contract.instance/")));
                Some(c.ok_or_else(|| invalid_class("contract is a contract instance of the issuer's own"))?.to_string())
            }
        };
        if contract.is_some() && kind != Kind::Fungible && kind != Kind::NonFungible && kind != Kind::Multi {
            return Err(invalid_class("only a token class names a contract"));
        }
        Ok(Self { issuer: issuer.to_string(), kind, decimals, max_supply, royalty, contract })
    }
}

/// Why an operation was refused or a ledger could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Refused: the error name the caller gets, and why.
    #[error("{message}")]
    Refused {
        /// `InsufficientBalance`, `NotAuthorized`, ...
        name: &'static str,
        /// Why.
        message: String,
    },
    /// The entries could not be read.
    #[error("ledger storage: {0}")]
    Store(String),
}

fn refused(name: &'static str, message: impl Into<String>) -> LedgerError {
    LedgerError::Refused { name, message: message.into() }
}

fn invalid(message: impl Into<String>) -> LedgerError {
    refused("InvalidRequest", message)
}

fn invalid_class(message: &str) -> LedgerError {
    refused("InvalidClass", message)
}

/// A ledger operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// New tokens to `to` (the issuer only).
    Mint {
        /// The receiver.
        to: String,
        /// The token id (none for a fungible class).
        token: Option<String>,
        /// How many.
        amount: u128,
        /// The token's metadata (DAG-CBOR), set when it is first minted.
        metadata: Option<Vec<u8>>,
        /// A multi-token class's token id that is unique (one token).
        unique: bool,
    },
    /// Tokens from `from` to `to`, by their holder, an operator or an approved spender.
    Transfer {
        /// The holder.
        from: String,
        /// The receiver.
        to: String,
        /// The token id (none for a fungible class).
        token: Option<String>,
        /// How many.
        amount: u128,
        /// A fee the class's contract charged: to whom and how much, paid by `from` on top.
        fee: Option<(String, u128)>,
    },
    /// A contract call's effect on its instance's state: the keys written (a value) or removed.
    Contract {
        /// `instantiate`, `execute` or `onTransfer`.
        call: String,
        /// Who called.
        sender: String,
        /// The message (JSON text).
        msg: String,
        /// The write set.
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        /// The fuel the call used.
        fuel: u64,
    },
    /// Tokens destroyed.
    Burn {
        /// The holder.
        from: String,
        /// The token id (none for a fungible class).
        token: Option<String>,
        /// How many.
        amount: u128,
    },
    /// An allowance (fungible), a token's approved spender (unique), or an operator (`all`).
    Approve {
        /// The holder approving.
        owner: String,
        /// Who may spend.
        spender: String,
        /// The unique token approved.
        token: Option<String>,
        /// The allowance set (fungible), `0` to clear.
        amount: Option<u128>,
        /// Operator for all of the owner's tokens (`true`) or no longer (`false`).
        all: Option<bool>,
    },
    /// Tokens offered for sale: moved from the seller into the listing's escrow.
    List {
        /// The listing's id (the sequence number of this transaction).
        listing: String,
        /// The holder selling.
        seller: String,
        /// The token id (none for a fungible class).
        token: Option<String>,
        /// How many.
        amount: u128,
        /// The fungible class the price is paid in.
        price_ledger: String,
        /// The price.
        price: u128,
    },
    /// A listing withdrawn by its seller: the tokens go back.
    Delist {
        /// The listing.
        listing: String,
    },
    /// A listing sold: its tokens go to the buyer; `payment` is the payment's transaction.
    Sale {
        /// The listing.
        listing: String,
        /// The buyer.
        buyer: String,
        /// The AT-URI of the `#pay` transaction on the price's ledger, in the same commit.
        payment: String,
    },
    /// A sale's price paid by the buyer: the royalty to its receiver, the rest to the seller.
    Pay {
        /// The buyer.
        from: String,
        /// The seller.
        to: String,
        /// The price.
        amount: u128,
        /// The royalty's receiver and amount (part of the price).
        royalty: Option<(String, u128)>,
        /// The AT-URI of the `#sale` transaction it pays for.
        sale: String,
    },
}

/// An open listing (the value of its entry, DAG-CBOR of these fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The holder selling.
    pub seller: String,
    /// The token id (`""`: a fungible class's).
    pub token: String,
    /// How many.
    pub amount: u128,
    /// The fungible class the price is paid in.
    pub price_ledger: String,
    /// The price.
    pub price: u128,
}

impl Listing {
    fn to_json(&self) -> Value {
        json!({
            "seller": self.seller, "tokenId": self.token, "amount": self.amount.to_string(),
            "priceLedger": self.price_ledger, "price": self.price.to_string(),
        })
    }

    /// Its entry's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let ipld = ipld_json::from_json(&self.to_json()).expect("plain strings encode");
        dagcbor::encode(&ipld)
    }

    /// From its entry's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerError> {
        let v = dagcbor::decode_atproto(bytes)
            .map(|i| ipld_json::to_json(&i))
            .map_err(|e| LedgerError::Store(e.to_string()))?;
        let text = |k: &str| {
            v[k].as_str().map(str::to_string).ok_or_else(|| LedgerError::Store(format!("a listing has no {k}")))
        };
        let number = |k: &str| text(k).and_then(|t| amount::parse(&t).map_err(LedgerError::Store));
        Ok(Self {
            seller: text("seller")?,
            token: text("tokenId")?,
            amount: number("amount")?,
            price_ledger: text("priceLedger")?,
            price: number("price")?,
        })
    }

    /// Its JSON form for readers (`getListings`).
    pub fn view(&self) -> Value {
        let mut v = self.to_json();
        if self.token.is_empty() {
            v.as_object_mut().map(|m| m.remove("tokenId"));
        }
        v
    }
}

/// The escrow holder of a listing's tokens.
pub fn escrow(listing: &str) -> String {
    format!("listing:{listing}")
}

/// The record type of each operation (the `$type` of a tx record's `op`).
pub const OP_TYPES: &[&str] = &[
    "dev.ues.asset.tx#mint",
    "dev.ues.asset.tx#transfer",
    "dev.ues.asset.tx#burn",
    "dev.ues.asset.tx#approve",
    "dev.ues.asset.tx#list",
    "dev.ues.asset.tx#delist",
    "dev.ues.asset.tx#sale",
    "dev.ues.asset.tx#pay",
];

/// Longest token id.
pub const MAX_TOKEN_ID: usize = 128;

fn token_id(v: &Value) -> Result<Option<String>, LedgerError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s)
            if !s.is_empty()
                && s.len() <= MAX_TOKEN_ID
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:~".contains(&b)) =>
        {
            Ok(Some(s.clone()))
        }
        _ => Err(invalid(format!("tokenId is 1 to {MAX_TOKEN_ID} of A-Z a-z 0-9 . - _ : ~"))),
    }
}

fn did(v: &Value, name: &str) -> Result<String, LedgerError> {
    v.as_str()
        .filter(|d| Did::new(*d).is_ok())
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("{name} is not a DID")))
}

fn listing_id(v: &Value) -> Result<String, LedgerError> {
    v.as_str()
        .filter(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .ok_or_else(|| invalid("listingId is a listing's number"))
}

fn at_uri(v: &Value, name: &str) -> Result<String, LedgerError> {
    v.as_str()
        .filter(|s| s.starts_with("at://") && s.len() <= 512)
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("{name} is not an AT-URI")))
}

fn amount_of(v: &Value) -> Result<Option<u128>, LedgerError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => amount::parse(s).map(Some).map_err(|e| refused("InvalidAmount", e)),
        _ => Err(refused("InvalidAmount", "amounts are decimal strings")),
    }
}

impl Op {
    /// The operation a tx record's `op` (as JSON) names.
    pub fn from_json(op: &Value) -> Result<Self, LedgerError> {
        let amount = amount_of(&op["amount"])?;
        let token = token_id(&op["tokenId"])?;
        Ok(match op["$type"].as_str().unwrap_or_default() {
            "dev.ues.asset.tx#mint" => {
                let metadata = match op.get("metadata") {
                    None | Some(Value::Null) => None,
                    Some(m) => {
                        let ipld = ipld_json::from_json(m).map_err(|e| invalid(format!("metadata: {e}")))?;
                        Some(dagcbor::encode(&ipld))
                    }
                };
                Op::Mint {
                    to: did(&op["to"], "to")?,
                    token,
                    amount: amount.unwrap_or(1),
                    metadata,
                    unique: op["unique"].as_bool().unwrap_or(false),
                }
            }
            "dev.ues.asset.tx#transfer" => Op::Transfer {
                from: did(&op["from"], "from")?,
                to: did(&op["to"], "to")?,
                token,
                amount: amount.unwrap_or(1),
                fee: match op.get("fee") {
                    None | Some(Value::Null) => None,
                    Some(f) => Some((
                        did(&f["to"], "fee.to")?,
                        amount_of(&f["amount"])?.ok_or_else(|| refused("InvalidAmount", "fee.amount is required"))?,
                    )),
                },
            },
            "dev.ues.asset.tx#contract" => {
                let call = op["call"].as_str().unwrap_or_default();
                if !matches!(call, "instantiate" | "execute" | "onTransfer") {
                    return Err(invalid(format!("{call:?} is not a contract call")));
                }
                let bytes = |v: &Value| -> Result<Vec<u8>, LedgerError> {
                    v["$bytes"]
                        .as_str()
                        .and_then(ipld_json::decode_base64)
                        .ok_or_else(|| invalid("a write's key or value is not bytes"))
                };
                let mut writes = Vec::new();
                for w in op["writes"].as_array().into_iter().flatten() {
                    let value = match w.get("value") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(bytes(v)?),
                    };
                    writes.push((bytes(&w["key"])?, value));
                }
                Op::Contract {
                    call: call.to_string(),
                    sender: did(&op["sender"], "sender")?,
                    msg: op["msg"].as_str().unwrap_or_default().to_string(),
                    writes,
                    fuel: op["fuelUsed"].as_u64().unwrap_or(0),
                }
            }
            "dev.ues.asset.tx#burn" => Op::Burn { from: did(&op["from"], "from")?, token, amount: amount.unwrap_or(1) },
            "dev.ues.asset.tx#approve" => Op::Approve {
                owner: did(&op["owner"], "owner")?,
                spender: did(&op["spender"], "spender")?,
                token,
                amount,
                all: op["all"].as_bool(),
            },
            "dev.ues.asset.tx#list" => Op::List {
                listing: listing_id(&op["listingId"])?,
                seller: did(&op["seller"], "seller")?,
                token,
                amount: amount.unwrap_or(1),
                price_ledger: at_uri(&op["priceLedger"], "priceLedger")?,
                price: amount_of(&op["price"])?.ok_or_else(|| refused("InvalidAmount", "price is required"))?,
            },
            "dev.ues.asset.tx#delist" => Op::Delist { listing: listing_id(&op["listingId"])? },
            "dev.ues.asset.tx#sale" => Op::Sale {
                listing: listing_id(&op["listingId"])?,
                buyer: did(&op["buyer"], "buyer")?,
                payment: at_uri(&op["payment"], "payment")?,
            },
            "dev.ues.asset.tx#pay" => Op::Pay {
                from: did(&op["from"], "from")?,
                to: did(&op["to"], "to")?,
                amount: amount.ok_or_else(|| refused("InvalidAmount", "amount is required"))?,
                royalty: match op.get("royalty") {
                    None | Some(Value::Null) => None,
                    Some(r) => Some((
                        did(&r["receiver"], "royalty.receiver")?,
                        amount_of(&r["amount"])?
                            .ok_or_else(|| refused("InvalidAmount", "royalty.amount is required"))?,
                    )),
                },
                sale: at_uri(&op["sale"], "sale")?,
            },
            other => return Err(invalid(format!("{other:?} is not a ledger operation"))),
        })
    }

    /// Its JSON form in a tx record.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let put = |m: &mut Map<String, Value>, k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        let token = |m: &mut Map<String, Value>, t: &Option<String>| {
            if let Some(t) = t {
                m.insert("tokenId".into(), Value::String(t.clone()));
            }
        };
        match self {
            Op::Mint { to, token: t, amount, metadata, unique } => {
                put(&mut m, "$type", json!("dev.ues.asset.tx#mint"));
                put(&mut m, "to", json!(to));
                put(&mut m, "amount", json!(amount.to_string()));
                token(&mut m, t);
                if let Some(md) = metadata.as_ref().and_then(|b| dagcbor::decode_atproto(b).ok()) {
                    put(&mut m, "metadata", ipld_json::to_json(&md));
                }
                if *unique {
                    put(&mut m, "unique", json!(true));
                }
            }
            Op::Transfer { from, to, token: t, amount, fee } => {
                put(&mut m, "$type", json!("dev.ues.asset.tx#transfer"));
                put(&mut m, "from", json!(from));
                put(&mut m, "to", json!(to));
                put(&mut m, "amount", json!(amount.to_string()));
                token(&mut m, t);
                if let Some((to, f)) = fee {
                    put(&mut m, "fee", json!({ "to": to, "amount": f.to_string() }));
                }
            }
            Op::Contract { call, sender, msg, writes, fuel } => {
                let b64 = |b: &[u8]| json!({ "$bytes": data_encoding::BASE64_NOPAD.encode(b) });
                put(&mut m, "$type", json!("dev.ues.asset.tx#contract"));
                put(&mut m, "call", json!(call));
                put(&mut m, "sender", json!(sender));
                put(&mut m, "msg", json!(msg));
                let w: Vec<Value> = writes
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => json!({ "key": b64(k), "value": b64(v) }),
                        None => json!({ "key": b64(k) }),
                    })
                    .collect();
                put(&mut m, "writes", Value::Array(w));
                put(&mut m, "fuelUsed", json!(fuel));
            }
            Op::Burn { from, token: t, amount } => {
                put(&mut m, "$type", json!("dev.ues.asset.tx#burn"));
                put(&mut m, "from", json!(from));
                put(&mut m, "amount", json!(amount.to_string()));
                token(&mut m, t);
            }
            Op::Approve { owner, spender, token: t, amount, all } => {
                put(&mut m, "$type", json!("dev.ues.asset.tx#approve"));
                put(&mut m, "owner", json!(owner));
                put(&mut m, "spender", json!(spender));
                token(&mut m, t);
                if let Some(a) = amount {
                    put(&mut m, "amount", json!(a.to_string()));
                }
                if let Some(a) = all {
                    put(&mut m, "all", json!(a));
                }
            }
            Op::List { listing, seller, token: t, amount, price_ledger, price } => {
                put(&mut m, "$type", json!("dev.ues.asset.tx#list"));
                put(&mut m, "listingId", json!(listing));
                put(&mut m, "seller", json!(seller));
                put(&mut m, "amount", json!(amount.to_string()));
                token(&mut m, t);
                put(&mut m, "priceLedger", json!(price_ledger));
                put(&mut m, "price", json!(price.to_string()));
            }
            Op::Delist { listing } => {
                put(&mut m, "$type", json!("dev.ues.asset.tx#delist"));
                put(&mut m, "listingId", json!(listing));
            }
            Op::Sale { listing, buyer, payment } => {
                put(&mut m, "$type", json!("dev.ues.asset.tx#sale"));
                put(&mut m, "listingId", json!(listing));
                put(&mut m, "buyer", json!(buyer));
                put(&mut m, "payment", json!(payment));
            }
            Op::Pay { from, to, amount, royalty, sale } => {
                put(&mut m, "$type", json!("dev.ues.asset.tx#pay"));
                put(&mut m, "from", json!(from));
                put(&mut m, "to", json!(to));
                put(&mut m, "amount", json!(amount.to_string()));
                if let Some((receiver, r)) = royalty {
                    put(&mut m, "royalty", json!({ "receiver": receiver, "amount": r.to_string() }));
                }
                put(&mut m, "sale", json!(sale));
            }
        }
        Value::Object(m)
    }
}

/// The entries a step reads.
pub trait Entries {
    /// The value of `key`, if it is in the state.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError>;
}

/// One entry changed: its key, value before and after (`None`: not in the state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The key.
    pub key: Vec<u8>,
    /// Before.
    pub old: Option<Vec<u8>>,
    /// After.
    pub new: Option<Vec<u8>>,
}

/// Applies deltas to a hash.
pub fn rehash(hash: &mut LtHash, deltas: &[Delta]) {
    for d in deltas {
        if let Some(old) = &d.old {
            hash.remove(&d.key, old);
        }
        if let Some(new) = &d.new {
            hash.add(&d.key, new);
        }
    }
}

/// An entry's value before a step and after it (`None`: not in the state).
type Change = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Changes an operation makes, over the entries it reads.
struct Draft<'a> {
    base: &'a dyn Entries,
    changes: BTreeMap<Vec<u8>, Change>,
}

impl Draft<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        match self.changes.get(key) {
            Some((_, new)) => Ok(new.clone()),
            None => self.base.get(key),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), LedgerError> {
        if let Some(c) = self.changes.get_mut(&key) {
            c.1 = value;
            return Ok(());
        }
        let old = self.base.get(&key)?;
        self.changes.insert(key, (old, value));
        Ok(())
    }

    fn number(&self, key: &[u8]) -> Result<u128, LedgerError> {
        Ok(match self.get(key)? {
            None => 0,
            Some(v) => {
                u128::from_be_bytes(v.try_into().map_err(|_| LedgerError::Store("an amount is not 16 bytes".into()))?)
            }
        })
    }

    /// Sets a number (zero takes the entry away).
    fn set_number(&mut self, key: Vec<u8>, n: u128) -> Result<(), LedgerError> {
        self.put(key, (n != 0).then(|| n.to_be_bytes().to_vec()))
    }

    fn text(&self, key: &[u8]) -> Result<Option<String>, LedgerError> {
        Ok(self.get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn deltas(self) -> Vec<Delta> {
        self.changes
            .into_iter()
            .filter(|(_, (old, new))| old != new)
            .map(|(key, (old, new))| Delta { key, old, new })
            .collect()
    }
}

/// Entry keys: a letter, then NUL-separated parts (DIDs and token ids hold no NUL).
pub mod key {
    fn make(tag: u8, parts: &[&str]) -> Vec<u8> {
        let mut k = vec![tag];
        for p in parts {
            k.push(0);
            k.extend_from_slice(p.as_bytes());
        }
        k
    }

    /// A holder's balance of a token (`""`: a fungible class's one token).
    pub fn balance(holder: &str, token: &str) -> Vec<u8> {
        make(b'b', &[holder, token])
    }

    /// A token's supply (`""`: the class's total, or its number of unique tokens).
    pub fn supply(token: &str) -> Vec<u8> {
        make(b's', &[token])
    }

    /// A token id that exists: a flag byte (1: unique) and its metadata (DAG-CBOR).
    pub fn token(token: &str) -> Vec<u8> {
        make(b't', &[token])
    }

    /// A unique token's owner.
    pub fn owner(token: &str) -> Vec<u8> {
        make(b'w', &[token])
    }

    /// A fungible allowance.
    pub fn allowance(owner: &str, spender: &str) -> Vec<u8> {
        make(b'a', &[owner, spender])
    }

    /// A unique token's approved spender.
    pub fn approved(token: &str) -> Vec<u8> {
        make(b'p', &[token])
    }

    /// An operator of an owner.
    pub fn operator(owner: &str, operator: &str) -> Vec<u8> {
        make(b'o', &[owner, operator])
    }

    /// A key of a contract instance's own state.
    pub fn contract(k: &[u8]) -> Vec<u8> {
        let mut out = b"c\0".to_vec();
        out.extend_from_slice(k);
        out
    }

    /// An open listing.
    pub fn listing(id: &str) -> Vec<u8> {
        make(b'l', &[id])
    }

    /// The parts of a balance key (holder, token).
    pub fn parse_balance(k: &[u8]) -> Option<(String, String)> {
        let rest = k.strip_prefix(b"b\0")?;
        let i = rest.iter().position(|b| *b == 0)?;
        Some((String::from_utf8(rest[..i].to_vec()).ok()?, String::from_utf8(rest[i + 1..].to_vec()).ok()?))
    }
}

/// The token an operation names, checked against the class's kind: `""` for a fungible
/// class's, the id otherwise.
fn token_for(class: &Class, token: &Option<String>) -> Result<String, LedgerError> {
    match (class.kind, token) {
        (Kind::Fungible, None) => Ok(String::new()),
        (Kind::Fungible, Some(_)) => Err(invalid("a fungible class has no token ids")),
        (Kind::Contract, _) => Err(invalid("a contract's ledger holds no tokens")),
        (_, Some(t)) => Ok(t.clone()),
        (_, None) => Err(invalid("tokenId is required for this class")),
    }
}

/// Whether the token exists and is unique; `None` if it does not exist.
fn unique(d: &Draft<'_>, token: &str) -> Result<Option<bool>, LedgerError> {
    Ok(d.get(&key::token(token))?.map(|v| v.first() == Some(&1)))
}

fn add(a: u128, b: u128) -> Result<u128, LedgerError> {
    a.checked_add(b).ok_or_else(|| refused("Overflow", "the amount overflows"))
}

/// May `actor` move `amount` of `token` held by `from`? Uses up an allowance when that is what
/// allows it.
fn authorize(
    d: &mut Draft<'_>,
    class: &Class,
    actor: &str,
    from: &str,
    token: &str,
    amount: u128,
) -> Result<(), LedgerError> {
    if actor == from || d.get(&key::operator(from, actor))?.is_some() {
        return Ok(());
    }
    if class.kind == Kind::Fungible {
        let k = key::allowance(from, actor);
        let allowed = d.number(&k)?;
        if allowed < amount {
            return Err(refused(
                "InsufficientAllowance",
                format!("{actor} may spend {allowed} of {from}'s tokens, not {amount}"),
            ));
        }
        return d.set_number(k, allowed - amount);
    }
    if unique(d, token)? == Some(true) && d.text(&key::approved(token))?.as_deref() == Some(actor) {
        return Ok(());
    }
    Err(refused("NotAuthorized", format!("{actor} may not move {from}'s tokens")))
}

/// Takes `amount` of `token` from `from` (and a unique token's owner and approval with it).
fn debit(d: &mut Draft<'_>, from: &str, token: &str, amount: u128) -> Result<(), LedgerError> {
    if amount == 0 {
        return Err(refused("InvalidAmount", "the amount is zero"));
    }
    let k = key::balance(from, token);
    let held = d.number(&k)?;
    if held < amount {
        return Err(refused("InsufficientBalance", format!("{from} holds {held}, not {amount}")));
    }
    d.set_number(k, held - amount)?;
    if unique(d, token)? == Some(true) {
        d.put(key::owner(token), None)?;
        d.put(key::approved(token), None)?;
    }
    Ok(())
}

fn credit(d: &mut Draft<'_>, to: &str, token: &str, amount: u128) -> Result<(), LedgerError> {
    let k = key::balance(to, token);
    let held = d.number(&k)?;
    d.set_number(k, add(held, amount)?)?;
    if unique(d, token)? == Some(true) {
        d.put(key::owner(token), Some(to.as_bytes().to_vec()))?;
    }
    Ok(())
}

/// An open listing's terms.
fn open_listing(d: &Draft<'_>, listing: &str) -> Result<Listing, LedgerError> {
    let bytes = d
        .get(&key::listing(listing))?
        .ok_or_else(|| refused("ListingClosed", format!("listing {listing} is not open")))?;
    Listing::decode(&bytes)
}

/// Applies `op`, done by `actor`, to the entries: the changes it makes, or why it is refused
/// (and then nothing changes).
pub fn step(class: &Class, actor: &str, op: &Op, base: &dyn Entries) -> Result<Vec<Delta>, LedgerError> {
    let mut d = Draft { base, changes: BTreeMap::new() };
    match op {
        Op::Mint { to, token, amount, metadata, unique: one } => {
            if actor != class.issuer {
                return Err(refused("NotAuthorized", "only the class's issuer mints"));
            }
            let t = token_for(class, token)?;
            if *amount == 0 {
                return Err(refused("InvalidAmount", "the amount is zero"));
            }
            let is_unique = match class.kind {
                Kind::Fungible => {
                    if metadata.is_some() || *one {
                        return Err(invalid("a fungible class's mint has no metadata"));
                    }
                    false
                }
                Kind::NonFungible => true,
                Kind::Multi => *one,
                Kind::Contract => return Err(invalid("a contract's ledger holds no tokens")),
            };
            match unique(&d, &t)? {
                Some(true) => return Err(refused("TokenExists", format!("token {t} exists"))),
                Some(false) if metadata.is_some() || is_unique => {
                    return Err(invalid(format!("token {t} exists: its metadata and kind are set")));
                }
                Some(false) => {}
                None if class.kind == Kind::Fungible => {}
                None => {
                    let mut v = vec![u8::from(is_unique)];
                    v.extend_from_slice(metadata.as_deref().unwrap_or_default());
                    d.put(key::token(&t), Some(v))?;
                }
            }
            if is_unique && *amount != 1 {
                return Err(refused("InvalidAmount", "a unique token is minted once, amount 1"));
            }
            // The cap: a fungible class's total, a class of unique tokens' count, a multi
            // class's supply of each id.
            let capped = if class.kind == Kind::NonFungible { String::new() } else { t.clone() };
            let supply = add(d.number(&key::supply(&capped))?, *amount)?;
            if let Some(max) = class.max_supply
                && supply > max
            {
                return Err(refused("MaxSupplyExceeded", format!("the supply would be {supply}, past {max}")));
            }
            d.set_number(key::supply(&capped), supply)?;
            if capped != t {
                d.set_number(key::supply(&t), *amount)?;
            }
            credit(&mut d, to, &t, *amount)?;
        }
        Op::Transfer { from, to, token, amount, fee } => {
            let t = token_for(class, token)?;
            if class.kind != Kind::Fungible && unique(&d, &t)?.is_none() {
                return Err(refused("TokenNotFound", format!("no token {t}")));
            }
            authorize(&mut d, class, actor, from, &t, *amount)?;
            debit(&mut d, from, &t, *amount)?;
            credit(&mut d, to, &t, *amount)?;
            if let Some((fee_to, f)) = fee
                && *f > 0
            {
                if class.kind != Kind::Fungible {
                    return Err(refused("TransferRefused", "a fee is charged in a fungible class only"));
                }
                debit(&mut d, from, "", *f)?;
                credit(&mut d, fee_to, "", *f)?;
            }
        }
        Op::Contract { sender, writes, .. } => {
            if class.kind != Kind::Contract {
                return Err(invalid("only a contract's ledger takes its write sets"));
            }
            if actor != sender {
                return Err(refused("NotAuthorized", "a contract call's sender is who made it"));
            }
            for (k, v) in writes {
                d.put(key::contract(k), v.clone())?;
            }
        }
        Op::Burn { from, token, amount } => {
            let t = token_for(class, token)?;
            let is_unique = match unique(&d, &t)? {
                None if class.kind != Kind::Fungible => return Err(refused("TokenNotFound", format!("no token {t}"))),
                u => u == Some(true),
            };
            authorize(&mut d, class, actor, from, &t, *amount)?;
            debit(&mut d, from, &t, *amount)?;
            let capped = if class.kind == Kind::NonFungible { String::new() } else { t.clone() };
            let supply = d.number(&key::supply(&capped))?;
            d.set_number(key::supply(&capped), supply.saturating_sub(*amount))?;
            if capped != t {
                let s = d.number(&key::supply(&t))?;
                d.set_number(key::supply(&t), s.saturating_sub(*amount))?;
            }
            if is_unique {
                d.put(key::token(&t), None)?;
            }
        }
        Op::Approve { owner, spender, token, amount, all } => {
            if actor != owner {
                return Err(refused("NotAuthorized", "only the holder approves"));
            }
            if class.kind == Kind::Contract {
                return Err(invalid("a contract's ledger holds no tokens"));
            }
            if owner == spender {
                return Err(invalid("an account does not approve itself"));
            }
            match (all, token, amount) {
                (Some(all), None, None) => {
                    d.put(key::operator(owner, spender), all.then(|| vec![1]))?;
                }
                (None, None, Some(a)) if class.kind == Kind::Fungible => {
                    d.set_number(key::allowance(owner, spender), *a)?;
                }
                (None, Some(t), None | Some(0)) if class.kind != Kind::Fungible => {
                    if unique(&d, t)? != Some(true) {
                        return Err(invalid(format!("token {t} is not a unique token")));
                    }
                    if d.text(&key::owner(t))?.as_deref() != Some(owner.as_str()) {
                        return Err(refused("NotAuthorized", format!("{owner} does not hold token {t}")));
                    }
                    let clear = amount == &Some(0);
                    d.put(key::approved(t), (!clear).then(|| spender.as_bytes().to_vec()))?;
                }
                _ => {
                    return Err(invalid(
                        "approve takes all (an operator), amount (a fungible allowance) or tokenId (a unique token)",
                    ));
                }
            }
        }
        Op::List { listing, seller, token, amount, price_ledger, price } => {
            let t = token_for(class, token)?;
            if class.kind != Kind::Fungible && unique(&d, &t)?.is_none() {
                return Err(refused("TokenNotFound", format!("no token {t}")));
            }
            if d.get(&key::listing(listing))?.is_some() {
                return Err(invalid(format!("listing {listing} exists")));
            }
            authorize(&mut d, class, actor, seller, &t, *amount)?;
            debit(&mut d, seller, &t, *amount)?;
            credit(&mut d, &escrow(listing), &t, *amount)?;
            let l = Listing {
                seller: seller.clone(),
                token: t,
                amount: *amount,
                price_ledger: price_ledger.clone(),
                price: *price,
            };
            d.put(key::listing(listing), Some(l.encode()))?;
        }
        Op::Delist { listing } => {
            let l = open_listing(&d, listing)?;
            if actor != l.seller {
                return Err(refused("NotAuthorized", "only the seller withdraws a listing"));
            }
            debit(&mut d, &escrow(listing), &l.token, l.amount)?;
            credit(&mut d, &l.seller, &l.token, l.amount)?;
            d.put(key::listing(listing), None)?;
        }
        Op::Sale { listing, buyer, .. } => {
            let l = open_listing(&d, listing)?;
            if actor != buyer {
                return Err(refused("NotAuthorized", "the buyer buys"));
            }
            if buyer == &l.seller {
                return Err(invalid("a seller does not buy its own listing"));
            }
            debit(&mut d, &escrow(listing), &l.token, l.amount)?;
            credit(&mut d, buyer, &l.token, l.amount)?;
            d.put(key::listing(listing), None)?;
        }
        Op::Pay { from, to, amount, royalty, .. } => {
            if actor != from {
                return Err(refused("NotAuthorized", "the buyer pays"));
            }
            if class.kind != Kind::Fungible {
                return Err(invalid("prices are paid in a fungible class"));
            }
            let cut = royalty.as_ref().map_or(0, |r| r.1);
            let rest = amount
                .checked_sub(cut)
                .ok_or_else(|| refused("InvalidAmount", "the royalty is more than the price"))?;
            debit(&mut d, from, "", *amount)?;
            if let Some((receiver, r)) = royalty
                && *r > 0
            {
                credit(&mut d, receiver, "", *r)?;
            }
            if rest > 0 {
                credit(&mut d, to, "", rest)?;
            }
        }
    }
    Ok(d.deltas())
}

/// A ledger held in memory (replays, tests, benchmarks).
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// The entries.
    pub entries: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Their hash.
    pub hash: LtHash,
}

impl Entries for Memory {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.entries.get(key).cloned())
    }
}

impl Memory {
    /// Applies `op`; the state hash after it.
    pub fn apply(&mut self, class: &Class, actor: &str, op: &Op) -> Result<String, LedgerError> {
        let deltas = step(class, actor, op, self)?;
        rehash(&mut self.hash, &deltas);
        for d in deltas {
            match d.new {
                Some(v) => self.entries.insert(d.key, v),
                None => self.entries.remove(&d.key),
            };
        }
        Ok(self.hash.digest())
    }

    /// A holder's balance of a token (`""`: a fungible class's).
    pub fn balance(&self, holder: &str, token: &str) -> u128 {
        self.entries
            .get(&key::balance(holder, token))
            .and_then(|v| v.clone().try_into().ok())
            .map_or(0, u128::from_be_bytes)
    }

    /// An open listing.
    pub fn listing(&self, id: &str) -> Option<Listing> {
        self.entries.get(&key::listing(id)).and_then(|b| Listing::decode(b).ok())
    }

    /// A token's supply (`""`: the class's total).
    pub fn supply(&self, token: &str) -> u128 {
        self.entries.get(&key::supply(token)).and_then(|v| v.clone().try_into().ok()).map_or(0, u128::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ISSUER: &str = "did:plc:issuer";
    const PEOPLE: [&str; 4] = ["did:plc:issuer", "did:plc:alice", "did:plc:bob", "did:plc:carol"];

    fn class(kind: Kind, max: Option<u128>) -> Class {
        Class { issuer: ISSUER.into(), kind, decimals: 0, max_supply: max, royalty: None, contract: None }
    }

    #[test]
    fn erc20_allowances_are_set_and_used_up() {
        let c = class(Kind::Fungible, Some(1_000));
        let mut m = Memory::default();
        m.apply(
            &c,
            ISSUER,
            &Op::Mint { to: PEOPLE[1].into(), token: None, amount: 600, metadata: None, unique: false },
        )
        .unwrap();
        let over = Op::Mint { to: PEOPLE[1].into(), token: None, amount: 401, metadata: None, unique: false };
        assert!(matches!(m.apply(&c, ISSUER, &over), Err(LedgerError::Refused { name: "MaxSupplyExceeded", .. })));
        let by_bob = Op::Transfer { from: PEOPLE[1].into(), to: PEOPLE[2].into(), token: None, amount: 50, fee: None };
        assert!(matches!(
            m.apply(&c, PEOPLE[2], &by_bob),
            Err(LedgerError::Refused { name: "InsufficientAllowance", .. })
        ));
        let approve = Op::Approve {
            owner: PEOPLE[1].into(),
            spender: PEOPLE[2].into(),
            token: None,
            amount: Some(70),
            all: None,
        };
        m.apply(&c, PEOPLE[1], &approve).unwrap();
        m.apply(&c, PEOPLE[2], &by_bob).unwrap();
        assert!(matches!(
            m.apply(&c, PEOPLE[2], &by_bob),
            Err(LedgerError::Refused { name: "InsufficientAllowance", .. })
        ));
        assert_eq!((m.balance(PEOPLE[1], ""), m.balance(PEOPLE[2], ""), m.supply("")), (550, 50, 600));
        let minted_by_alice = Op::Mint { to: PEOPLE[1].into(), token: None, amount: 1, metadata: None, unique: false };
        assert!(matches!(
            m.apply(&c, PEOPLE[1], &minted_by_alice),
            Err(LedgerError::Refused { name: "NotAuthorized", .. })
        ));
    }

    #[test]
    fn erc721_approval_is_cleared_when_the_token_moves() {
        let c = class(Kind::NonFungible, Some(2));
        let mut m = Memory::default();
        let mint = |t: &str| Op::Mint {
            to: PEOPLE[1].into(),
            token: Some(t.into()),
            amount: 1,
            metadata: None,
            unique: false,
        };
        m.apply(&c, ISSUER, &mint("a")).unwrap();
        assert!(matches!(m.apply(&c, ISSUER, &mint("a")), Err(LedgerError::Refused { name: "TokenExists", .. })));
        m.apply(&c, ISSUER, &mint("b")).unwrap();
        assert!(matches!(m.apply(&c, ISSUER, &mint("c")), Err(LedgerError::Refused { name: "MaxSupplyExceeded", .. })));
        let approve = Op::Approve {
            owner: PEOPLE[1].into(),
            spender: PEOPLE[2].into(),
            token: Some("a".into()),
            amount: None,
            all: None,
        };
        m.apply(&c, PEOPLE[1], &approve).unwrap();
        let to_carol = Op::Transfer {
            from: PEOPLE[1].into(),
            to: PEOPLE[3].into(),
            token: Some("a".into()),
            amount: 1,
            fee: None,
        };
        m.apply(&c, PEOPLE[2], &to_carol).unwrap();
        let back = Op::Transfer {
            from: PEOPLE[3].into(),
            to: PEOPLE[2].into(),
            token: Some("a".into()),
            amount: 1,
            fee: None,
        };
        assert!(matches!(m.apply(&c, PEOPLE[2], &back), Err(LedgerError::Refused { name: "NotAuthorized", .. })));
        m.apply(&c, PEOPLE[3], &Op::Burn { from: PEOPLE[3].into(), token: Some("a".into()), amount: 1 }).unwrap();
        assert_eq!(m.supply(""), 1);
        m.apply(&c, ISSUER, &mint("c")).unwrap();
    }

    /// A random operation among few people, token ids and amounts (so that many are refused).
    fn any_op() -> impl Strategy<Value = (usize, Op)> {
        let person = 0..PEOPLE.len();
        let token = prop_oneof![Just(None), Just(Some("x".to_string())), Just(Some("y".to_string()))];
        let amount = prop_oneof![0u128..5, Just(u128::MAX)];
        (person.clone(), person.clone(), person, token, amount, any::<bool>(), 0u8..8).prop_map(
            |(actor, a, b, token, amount, flag, kind)| {
                let (a, b) = (PEOPLE[a].to_string(), PEOPLE[b].to_string());
                let listing = if flag { "1" } else { "2" }.to_string();
                let op = match kind {
                    0 => Op::Mint { to: a, token, amount, metadata: None, unique: flag },
                    1 => Op::Transfer {
                        from: a,
                        to: b,
                        token,
                        amount,
                        fee: flag.then(|| (PEOPLE[3].to_string(), amount / 2)),
                    },
                    2 => Op::Burn { from: a, token, amount },
                    4 => Op::List { listing, seller: a, token, amount, price_ledger: "at://p".into(), price: 7 },
                    5 => Op::Delist { listing },
                    6 => Op::Sale { listing, buyer: a, payment: "at://p".into() },
                    7 => Op::Pay {
                        from: a,
                        to: b,
                        amount,
                        royalty: flag.then(|| (PEOPLE[3].to_string(), amount / 3)),
                        sale: "at://s".into(),
                    },
                    _ if flag => {
                        Op::Approve { owner: a, spender: b, token: None, amount: None, all: Some(amount % 2 == 0) }
                    }
                    _ => Op::Approve {
                        owner: a,
                        spender: b,
                        token: token.clone(),
                        amount: token.is_none().then_some(amount),
                        all: None,
                    },
                };
                (actor, op)
            },
        )
    }

    fn check_conservation(m: &Memory, minted: &BTreeMap<String, u128>) -> Result<(), TestCaseError> {
        let mut held: BTreeMap<String, u128> = BTreeMap::new();
        for (k, v) in &m.entries {
            if let Some((_, token)) = key::parse_balance(k) {
                let n = u128::from_be_bytes(v.clone().try_into().unwrap());
                prop_assert!(n > 0, "a zero balance is kept");
                *held.entry(token).or_default() += n;
            }
        }
        let minted: BTreeMap<String, u128> =
            minted.iter().filter(|(_, n)| **n > 0).map(|(t, n)| (t.clone(), *n)).collect();
        prop_assert_eq!(held, minted);
        Ok(())
    }

    proptest! {
        /// Supply is conserved (what is held is what was minted less what was burned), no
        /// balance goes negative or wraps, a refused operation changes nothing, and a replay of
        /// the accepted operations reaches the same state hash.
        #[test]
        fn supply_is_conserved_and_refusals_change_nothing(
            kind in prop_oneof![Just(Kind::Fungible), Just(Kind::NonFungible), Just(Kind::Multi)],
            max in prop_oneof![Just(None), (1u128..20).prop_map(Some)],
            ops in proptest::collection::vec(any_op(), 1..60),
        ) {
            let c = class(kind, max);
            let mut m = Memory::default();
            let mut minted: BTreeMap<String, u128> = BTreeMap::new();
            let mut accepted = Vec::new();
            for (actor, op) in &ops {
                let before = (m.entries.clone(), m.hash.clone());
                match m.apply(&c, PEOPLE[*actor], op) {
                    Ok(hash) => {
                        prop_assert_eq!(&hash, &m.hash.digest());
                        match op {
                            Op::Mint { token, amount, .. } => *minted.entry(token.clone().unwrap_or_default()).or_default() += amount,
                            Op::Burn { token, amount, .. } => *minted.entry(token.clone().unwrap_or_default()).or_default() -= amount,
                            _ => {}
                        }
                        accepted.push((*actor, op.clone(), hash));
                    }
                    Err(LedgerError::Refused { .. }) => {
                        prop_assert_eq!(&before.0, &m.entries);
                        prop_assert_eq!(&before.1, &m.hash);
                    }
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
                check_conservation(&m, &minted)?;
            }
            // A replay from the operations' record form reaches every same hash.
            let mut replay = Memory::default();
            for (actor, op, hash) in accepted {
                let again = Op::from_json(&op.to_json()).unwrap();
                prop_assert_eq!(&again, &op);
                prop_assert_eq!(replay.apply(&c, PEOPLE[actor], &again).unwrap(), hash);
            }
            prop_assert_eq!(replay.hash.digest(), m.hash.digest());
        }
    }
}

/// Arbitrary input from the network (a record from the event log, a method's body) through the
/// parser and the state machine: typed errors, never a panic.
#[cfg(test)]
mod hostile {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z0-9:.~_-]{0,40}".prop_map(Value::String),
            prop_oneof![
                Just("did:plc:a"),
                Just("did:web:b.example"),
                Just("340282366920938463463374607431768211455"),
                Just("at://did:plc:a/x/y")
            ]
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("to".to_string()),
                        Just("from".to_string()),
                        Just("amount".to_string()),
                        Just("tokenId".to_string()),
                        Just("writes".to_string()),
                        Just("fee".to_string()),
                        Just("royalty".to_string()),
                        Just("metadata".to_string()),
                        "[a-z$]{1,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_operations_are_refused_or_applied_never_a_panic(
            mut op in any_json(),
            kind in 0usize..OP_TYPES.len() + 1,
            class in prop_oneof![Just(Kind::Fungible), Just(Kind::NonFungible), Just(Kind::Multi), Just(Kind::Contract)],
        ) {
            if let (Some(m), Some(t)) = (op.as_object_mut(), OP_TYPES.get(kind)) {
                m.insert("$type".into(), json!(t));
            }
            let class = Class { issuer: "did:plc:a".into(), kind: class, decimals: 0, max_supply: Some(10), royalty: None, contract: None };
            if let Ok(parsed) = Op::from_json(&op) {
                let mut state = Memory::default();
                let before = state.hash.digest();
                if state.apply(&class, "did:plc:a", &parsed).is_err() {
                    prop_assert_eq!(state.hash.digest(), before);
                }
            }
            let _ = Class::from_record("did:plc:a", &op);
        }
    }
}
