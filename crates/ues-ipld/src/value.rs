use std::collections::BTreeMap;

use cid::Cid;

/// A value of the IPLD data model, as DAG-CBOR carries it.
///
/// Maps hold string keys; [`BTreeMap`] orders them bytewise, and the encoder writes them in
/// DAG-CBOR's canonical order (length first, then bytes).
#[derive(Debug, Clone, PartialEq)]
pub enum Ipld {
    /// null
    Null,
    /// true / false
    Bool(bool),
    /// An integer in CBOR's range (-2^64 .. 2^64-1).
    Integer(i128),
    /// A 64-bit float (refused in AT Protocol data by the default decoder).
    Float(f64),
    /// A UTF-8 string.
    String(String),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Ipld>),
    /// A map with string keys.
    Map(BTreeMap<String, Ipld>),
    /// A link (CBOR tag 42).
    Link(Cid),
}

impl Ipld {
    /// How deeply lists and maps nest in this value: 0 for a scalar or an empty container, as the
    /// DAG-CBOR decoder counts (it refuses values deeper than [`crate::dagcbor::MAX_DEPTH`]).
    /// Iterative, so a hostile depth cannot overflow the stack.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 0usize)];
        while let Some((v, d)) = stack.pop() {
            deepest = deepest.max(d);
            match v {
                Ipld::List(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
                Ipld::Map(m) => stack.extend(m.values().map(|i| (i, d + 1))),
                _ => {}
            }
        }
        deepest
    }

    /// The map's value under `key`, if this is a map and the key is present.
    pub fn get(&self, key: &str) -> Option<&Ipld> {
        match self {
            Ipld::Map(m) => m.get(key),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Ipld::String(s) => Some(s),
            _ => None,
        }
    }

    /// The kind's name with an article, for error messages (`"a string"`, `"an object"`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Ipld::Null => "null",
            Ipld::Bool(_) => "a boolean",
            Ipld::Integer(_) => "an integer",
            Ipld::Float(_) => "a float",
            Ipld::String(_) => "a string",
            Ipld::Bytes(_) => "bytes",
            Ipld::List(_) => "a list",
            Ipld::Map(_) => "an object",
            Ipld::Link(_) => "a link",
        }
    }

    /// The link, if this is one.
    pub fn as_link(&self) -> Option<&Cid> {
        match self {
            Ipld::Link(c) => Some(c),
            _ => None,
        }
    }
}
