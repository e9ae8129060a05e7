//! Contracts: metered, deterministic WebAssembly run on [wasmi], one entry point per call.
//!
//! A contract is a Wasm module with a key-value state of its own. [`Sandbox::check`] admits a
//! module at upload; [`Sandbox::call`] runs one entry point in a fresh store and instance, with
//! fuel, memory, table and I/O bounds from [`Limits`], and returns the reply and the writes for
//! the caller to commit, or an error and nothing to commit.
//!
//! Determinism: floats are refused at validation (no float types or instructions), the host
//! offers no clock, randomness or I/O, modules are compiled eagerly (no fuel charged for lazy
//! translation), and the JSON the host hands in is canonical (object keys sorted). The same
//! module, inputs and state give the same [`Outcome`], `fuel_used` included, as long as the
//! wasmi version (whose per-operator fuel costs count) stays pinned.
//!
//! # ABI `ues-1`
//!
//! **Region**: a guest pointer to 12 bytes, little-endian `{offset: u32, capacity: u32,
//! length: u32}`, describing bytes at `offset`. Before each use the host checks that the 12 bytes,
//! and `offset + capacity`, lie inside memory and that `length <= capacity`; otherwise the call
//! traps with `InvalidRegion`.
//!
//! **Exports** the guest must have: `memory`; `allocate(size: i32) -> i32` returning a region
//! of at least `size` bytes capacity; `deallocate(region: i32)`; `ues_abi_1()` (a marker).
//! Entry points, each optional (absent: [`ContractError::NoEntry`]), take region pointers to
//! JSON the host wrote into memory it got from `allocate`, and return a region pointer:
//! `instantiate(env, info, msg)`, `execute(env, info, msg)`, `query(env, msg)`,
//! `on_transfer(env, info, msg)`. The returned region holds `{"ok": <value>}` or
//! `{"error": "<reason>"}` (→ [`ContractError::Refused`]); anything else, or more than
//! [`Limits::max_result_bytes`], is [`ContractError::InvalidResult`]. No start function.
//!
//! **Imports** the host offers, and nothing else (anything else is refused at upload):
//! - `ues.db_read(key: region) -> i32`: 0 if absent, else a region the host got from `allocate`
//!   and filled with the value. Reads see this call's own writes.
//! - `ues.db_write(key: region, value: region)`, `ues.db_remove(key: region)`: trap with
//!   `ReadOnly` in `query`. Keys up to [`Limits::max_key`], values up to [`Limits::max_value`],
//!   at most [`Limits::max_writes`] calls and [`Limits::max_write_bytes`] of keys and values per
//!   call ([`ContractError::Limit`]).
//! - `ues.debug(msg: region)`: a debug log line, otherwise ignored.
//! - `ues.abort(msg: region)`: trap with the message.
//! - `env.abort(msg, file, line, column: i32)`: AssemblyScript's abort; traps.
//!
//! Every host function charges [`HOST_CALL_FUEL`] plus one fuel per byte it copies, as does the
//! host's copying of arguments and result. `allocate`, while the host is calling it, may not call
//! the host (trap `Reentrant`).
//!
//! **Bounds**: [`Limits::fuel`] per call, host copying included ([`ContractError::OutOfFuel`]);
//! memory up to [`Limits::memory_bytes`]: a refused `memory.grow` returns -1, and a call that
//! fails after one, or whose initial memory is too large, is [`ContractError::MemoryLimit`];
//! a guest call stack 1024 deep (`Trapped("StackOverflow")`); wasmi's strict module limits
//! (functions, globals, tables, data segments, parameters). The module cache is keyed by the
//! code's SHA-256, checked whenever `bytes` are compiled.
//!
//! `env` and `info` are the caller's (by convention `env = {"time": <unix seconds>, ...}` and
//! `info = {"sender": "<did>", ...}`); `query` gets no `info`, and a missing one is `null`.

mod error;
mod host;
mod sandbox;

#[cfg(test)]
mod tests;

pub use error::ContractError;
pub use sandbox::Sandbox;

/// Fuel a host function charges per call, on top of one per byte it copies.
pub const HOST_CALL_FUEL: u64 = 100;

/// The bounds of one contract: module size, and per call fuel, memory and I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest module accepted, in bytes (512 KiB).
    pub max_module_bytes: usize,
    /// Fuel per call (10 million).
    pub fuel: u64,
    /// Largest linear memory, in bytes (16 MiB), initial size included.
    pub memory_bytes: usize,
    /// Largest table, in elements (10 000).
    pub table_elements: usize,
    /// Longest state key, in bytes (64 KiB).
    pub max_key: usize,
    /// Longest state value, in bytes (128 KiB).
    pub max_value: usize,
    /// Most `db_write` and `db_remove` calls per call (1000).
    pub max_writes: usize,
    /// Most key and value bytes passed to `db_write` and `db_remove` per call (256 KiB).
    pub max_write_bytes: usize,
    /// Longest reply JSON, in bytes (64 KiB).
    pub max_result_bytes: usize,
    /// Longest `env`, `info` or `msg` JSON, in bytes (64 KiB).
    pub max_msg_bytes: usize,
    /// Compiled modules kept (64).
    pub max_cached_modules: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_module_bytes: 512 * 1024,
            fuel: 10_000_000,
            memory_bytes: 16 * 1024 * 1024,
            table_elements: 10_000,
            max_key: 64 * 1024,
            max_value: 128 * 1024,
            max_writes: 1000,
            max_write_bytes: 256 * 1024,
            max_result_bytes: 64 * 1024,
            max_msg_bytes: 64 * 1024,
            max_cached_modules: 64,
        }
    }
}

/// What [`Sandbox::check`] found in an admitted module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Its imports, as `module.name`.
    pub imports: Vec<String>,
    /// Its exports' names.
    pub exports: Vec<String>,
    /// Its size in bytes.
    pub size: usize,
}

/// An entry point of a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    /// `instantiate(env, info, msg)`: once, when the contract is created.
    Instantiate,
    /// `execute(env, info, msg)`: a state-changing call.
    Execute,
    /// `query(env, msg)`: a read-only call; writes trap.
    Query,
    /// `on_transfer(env, info, msg)`: a token transfer hook.
    OnTransfer,
}

impl Entry {
    /// The export's name.
    pub fn export(self) -> &'static str {
        match self {
            Entry::Instantiate => "instantiate",
            Entry::Execute => "execute",
            Entry::Query => "query",
            Entry::OnTransfer => "on_transfer",
        }
    }

    /// Whether the entry takes `info` (all but `query`).
    pub fn takes_info(self) -> bool {
        !matches!(self, Entry::Query)
    }

    const ALL: [Entry; 4] = [Entry::Instantiate, Entry::Execute, Entry::Query, Entry::OnTransfer];
}

/// A contract's committed key-value state, read during a call.
pub trait State {
    /// The value at `key`, if any.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
}

impl State for std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        std::collections::BTreeMap::get(self, key).cloned()
    }
}

/// The result of a successful call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply's `ok` value.
    pub data: serde_json::Value,
    /// The final write set, sorted by key; `None` removes the key.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Fuel the call used, the host's copying included.
    pub fuel_used: u64,
}
