//! Tests of the sandbox: the example contracts, hostile modules, and a model of the write set.

mod examples;
mod hostile;
mod model;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::contract::{ContractError, Entry, Outcome, Sandbox};

/// A contract's committed state in tests.
pub(super) type Kv = BTreeMap<Vec<u8>, Vec<u8>>;

/// The guest runtime the tests' modules share (`runtime.wat`, spliced into each).
pub(super) const RUNTIME: &str = include_str!("runtime.wat");

pub(super) fn wasm(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|e| panic!("invalid WAT: {e}"))
}

pub(super) fn code_key(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The repository's `contracts/`: `<repo>/contracts` from a crate two levels down, or the
/// crate's own `contracts/` when it is the root.
pub(super) fn contracts_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [manifest.join("../../contracts"), manifest.join("contracts")]
        .into_iter()
        .find(|dir| dir.join("allowlist.wat").is_file())
        .expect("a contracts/ directory with allowlist.wat")
}

pub(super) fn env_at(time: u64) -> Value {
    json!({ "time": time, "contract": "test" })
}

pub(super) fn sent_by(sender: &str) -> Value {
    json!({ "sender": sender })
}

/// A contract with its state, committing the writes of each successful call.
pub(super) struct Deployed<'s> {
    sandbox: &'s Sandbox,
    bytes: Vec<u8>,
    key: [u8; 32],
    pub(super) state: Kv,
}

impl<'s> Deployed<'s> {
    pub(super) fn new(sandbox: &'s Sandbox, bytes: Vec<u8>) -> Self {
        sandbox.check(&bytes).unwrap_or_else(|e| panic!("the contract is admitted: {e}"));
        let key = code_key(&bytes);
        Self { sandbox, bytes, key, state: Kv::new() }
    }

    /// One call, committing nothing.
    pub(super) fn call(
        &self,
        entry: Entry,
        env: &Value,
        info: Option<&Value>,
        msg: &Value,
    ) -> Result<Outcome, ContractError> {
        self.sandbox.call(self.key, &self.bytes, entry, env, info, msg, &self.state)
    }

    /// One call, committing its writes if it succeeds; its reply.
    pub(super) fn run(
        &mut self,
        entry: Entry,
        env: &Value,
        info: Option<&Value>,
        msg: &Value,
    ) -> Result<Value, ContractError> {
        let outcome = self.call(entry, env, info, msg)?;
        for (key, value) in outcome.writes {
            match value {
                Some(value) => self.state.insert(key, value),
                None => self.state.remove(&key),
            };
        }
        Ok(outcome.data)
    }

    pub(super) fn query(&self, msg: &Value) -> Result<Value, ContractError> {
        self.call(Entry::Query, &env_at(0), None, msg).map(|outcome| outcome.data)
    }
}
