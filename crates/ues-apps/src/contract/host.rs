//! The host side of ABI `ues-1`: regions, the imported functions, the resource limiter, and how
//! a wasmi error becomes a [`ContractError`].

use std::collections::BTreeMap;
use std::fmt;

use wasmi::errors::{MemoryError, TableError};
use wasmi::{
    AsContextMut, Caller, Error, FuncType, Linker, Memory, ResourceLimiter, StoreLimits, TrapCode, TypedFunc, ValType,
};

use crate::contract::{ContractError, HOST_CALL_FUEL, Limits, State};

/// Bytes of a region struct in guest memory.
const REGION_BYTES: usize = 12;

/// Longest abort message kept, in bytes.
const MAX_ABORT_MESSAGE: usize = 256;

/// Longest debug message logged, in bytes.
const MAX_DEBUG_MESSAGE: usize = 1024;

/// A host function the guest may import: module, name, parameters (all `i32`), results.
pub(crate) struct Import {
    pub(crate) module: &'static str,
    pub(crate) name: &'static str,
    params: usize,
    results: usize,
}

impl Import {
    /// Whether `ty` is this import's signature.
    pub(crate) fn matches(&self, ty: &FuncType) -> bool {
        ty.params().len() == self.params
            && ty.results().len() == self.results
            && ty.params().iter().chain(ty.results()).all(|t| *t == ValType::I32)
    }
}

/// Everything the host offers; a module importing anything else is refused.
pub(crate) const IMPORTS: [Import; 6] = [
    Import { module: "ues", name: "db_read", params: 1, results: 1 },
    Import { module: "ues", name: "db_write", params: 2, results: 0 },
    Import { module: "ues", name: "db_remove", params: 1, results: 0 },
    Import { module: "ues", name: "debug", params: 1, results: 0 },
    Import { module: "ues", name: "abort", params: 1, results: 0 },
    Import { module: "env", name: "abort", params: 4, results: 0 },
];

/// Why the host stopped the guest; carried through wasmi as a host error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostTrap {
    /// A region outside memory, or with `length > capacity`, or too small for what is written.
    InvalidRegion,
    /// A write during `query`.
    ReadOnly,
    /// Host copying used the last fuel.
    OutOfFuel,
    /// A key, value or write bound.
    Limit(String),
    /// The guest's `allocate`, called by the host, called the host: refused, as it would let
    /// a guest nest host and guest frames on the native stack without bound.
    Reentrant,
    /// The guest called `abort`.
    Abort(String),
}

impl fmt::Display for HostTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostTrap::InvalidRegion => f.write_str("InvalidRegion"),
            HostTrap::ReadOnly => f.write_str("ReadOnly"),
            HostTrap::OutOfFuel => f.write_str("OutOfFuel"),
            HostTrap::Reentrant => f.write_str("Reentrant"),
            HostTrap::Limit(what) => write!(f, "limit: {what}"),
            HostTrap::Abort(msg) => write!(f, "abort: {msg}"),
        }
    }
}

impl wasmi::errors::HostError for HostTrap {}

/// wasmi's [`StoreLimits`], noting which bound refused a growth, since the trap wasmi raises
/// for a refused growth does not say which.
#[derive(Debug)]
pub(crate) struct Limiter {
    inner: StoreLimits,
    pub(crate) memory_hit: bool,
    pub(crate) table_hit: bool,
}

impl Limiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        let inner = wasmi::StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .table_elements(limits.table_elements)
            .instances(1)
            .memories(1)
            .tables(1)
            // A refused `memory.grow` returns -1 as the spec says, so a contract may fall back
            // to asking for less; one that fails after being refused reports the bound.
            .trap_on_grow_failure(false)
            .build();
        Self { inner, memory_hit: false, table_hit: false }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, wasmi_core::LimiterError> {
        let answer = self.inner.memory_growing(current, desired, maximum);
        self.memory_hit |= !matches!(answer, Ok(true));
        answer
    }

    fn memory_grow_failed(&mut self, error: &MemoryError) -> Result<(), wasmi_core::LimiterError> {
        self.memory_hit = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, wasmi_core::LimiterError> {
        let answer = self.inner.table_growing(current, desired, maximum);
        self.table_hit |= !matches!(answer, Ok(true));
        answer
    }

    fn table_grow_failed(&mut self, error: &TableError) -> Result<(), wasmi_core::LimiterError> {
        self.table_hit = true;
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The store's data for one call.
pub(crate) struct Host<'a> {
    state: &'a dyn State,
    limits: &'a Limits,
    read_only: bool,
    /// This call's writes over `state`; `None` removes.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    writes: usize,
    write_bytes: usize,
    pub(crate) limiter: Limiter,
    /// The guest's `memory` and `allocate`, set once instantiated.
    pub(crate) guest: Option<Guest>,
    /// Whether the host is inside a call to the guest's `allocate`.
    allocating: bool,
}

/// The guest exports the host uses.
#[derive(Clone, Copy)]
pub(crate) struct Guest {
    pub(crate) memory: Memory,
    pub(crate) allocate: TypedFunc<i32, i32>,
}

impl<'a> Host<'a> {
    pub(crate) fn new(state: &'a dyn State, limits: &'a Limits, read_only: bool) -> Self {
        Self {
            state,
            limits,
            read_only,
            overlay: BTreeMap::new(),
            writes: 0,
            write_bytes: 0,
            limiter: Limiter::new(limits),
            guest: None,
            allocating: false,
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        self.limits
    }

    /// The write set, sorted by key.
    pub(crate) fn into_writes(self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.overlay.into_iter().collect()
    }

    fn guest(&self) -> Guest {
        self.guest.expect("host functions run only after the guest is recorded")
    }

    fn count_write(&mut self, bytes: usize) -> Result<(), HostTrap> {
        if self.read_only {
            return Err(HostTrap::ReadOnly);
        }
        self.writes += 1;
        self.write_bytes += bytes;
        if self.writes > self.limits.max_writes {
            return Err(HostTrap::Limit(format!("more than {} writes", self.limits.max_writes)));
        }
        if self.write_bytes > self.limits.max_write_bytes {
            return Err(HostTrap::Limit(format!("more than {} bytes written", self.limits.max_write_bytes)));
        }
        Ok(())
    }
}

/// A linker with every import in [`IMPORTS`]; made per call, as the host borrows the state.
pub(crate) fn linker<'a>(engine: &wasmi::Engine) -> Linker<Host<'a>> {
    let mut linker = Linker::new(engine);
    linker
        .func_wrap("ues", "db_read", db_read)
        .and_then(|l| l.func_wrap("ues", "db_write", db_write))
        .and_then(|l| l.func_wrap("ues", "db_remove", db_remove))
        .and_then(|l| l.func_wrap("ues", "debug", debug))
        .and_then(|l| l.func_wrap("ues", "abort", abort))
        .and_then(|l| l.func_wrap("env", "abort", env_abort))
        .expect("the host's imports have distinct names");
    linker
}

/// A region as the guest described it, checked against memory.
#[derive(Debug, Clone, Copy)]
struct Region {
    offset: usize,
    capacity: usize,
    length: usize,
}

fn u32_at(memory: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(memory[at..at + 4].try_into().expect("four bytes"))
}

fn region(memory: &[u8], ptr: i32) -> Result<Region, HostTrap> {
    let ptr = ptr as u32 as usize;
    if ptr.checked_add(REGION_BYTES).is_none_or(|end| end > memory.len()) {
        return Err(HostTrap::InvalidRegion);
    }
    let region = Region {
        offset: u32_at(memory, ptr) as usize,
        capacity: u32_at(memory, ptr + 4) as usize,
        length: u32_at(memory, ptr + 8) as usize,
    };
    if region.offset + region.capacity > memory.len() || region.length > region.capacity {
        return Err(HostTrap::InvalidRegion);
    }
    Ok(region)
}

/// The bytes of the region at `ptr`, at most `max` of them (else `Limit` naming `what`).
pub(crate) fn read_region(memory: &[u8], ptr: i32, max: usize, what: &str) -> Result<Vec<u8>, HostTrap> {
    let region = region(memory, ptr)?;
    if region.length > max {
        return Err(HostTrap::Limit(format!("{what} of {} bytes, more than {max}", region.length)));
    }
    Ok(memory[region.offset..region.offset + region.length].to_vec())
}

/// Fills the region at `ptr` with `bytes` and sets its length.
pub(crate) fn write_region(memory: &mut [u8], ptr: i32, bytes: &[u8]) -> Result<(), HostTrap> {
    let region = region(memory, ptr)?;
    if bytes.len() > region.capacity {
        return Err(HostTrap::InvalidRegion);
    }
    memory[region.offset..region.offset + bytes.len()].copy_from_slice(bytes);
    let len = ptr as u32 as usize + 8;
    memory[len..len + 4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    Ok(())
}

/// Takes `amount` fuel from the store, or traps with `OutOfFuel` leaving none.
pub(crate) fn charge<T>(mut ctx: impl AsContextMut<Data = T>, amount: u64) -> Result<(), Error> {
    let mut ctx = ctx.as_context_mut();
    let fuel = ctx.get_fuel()?;
    match fuel.checked_sub(amount) {
        Some(left) => ctx.set_fuel(left),
        None => {
            ctx.set_fuel(0)?;
            Err(Error::host(HostTrap::OutOfFuel))
        }
    }
}

/// Copies `bytes` into a fresh region from the guest's `allocate`, charging for them; returns
/// the region pointer.
pub(crate) fn pass_to_guest<'a>(mut ctx: impl AsContextMut<Data = Host<'a>>, bytes: &[u8]) -> Result<i32, Error> {
    charge(&mut ctx, bytes.len() as u64)?;
    let guest = ctx.as_context().data().guest();
    let len = i32::try_from(bytes.len()).map_err(|_| Error::host(HostTrap::InvalidRegion))?;
    ctx.as_context_mut().data_mut().allocating = true;
    let ptr = guest.allocate.call(&mut ctx, len)?;
    ctx.as_context_mut().data_mut().allocating = false;
    write_region(guest.memory.data_mut(&mut ctx), ptr, bytes).map_err(Error::host)?;
    Ok(ptr)
}

/// What every host function does first: refuse re-entry from `allocate`, charge the call.
fn enter(caller: &mut Caller<'_, Host<'_>>) -> Result<(), Error> {
    if caller.data().allocating {
        return Err(Error::host(HostTrap::Reentrant));
    }
    charge(caller, HOST_CALL_FUEL)
}

fn db_read(mut caller: Caller<'_, Host<'_>>, key: i32) -> Result<i32, Error> {
    enter(&mut caller)?;
    let (memory, host) = caller.data().guest().memory.data_and_store_mut(&mut caller);
    let key = read_region(memory, key, host.limits.max_key, "key").map_err(Error::host)?;
    let value = match host.overlay.get(&key) {
        Some(value) => value.clone(),
        None => host.state.get(&key),
    };
    charge(&mut caller, key.len() as u64)?;
    match value {
        None => Ok(0),
        Some(value) => pass_to_guest(&mut caller, &value),
    }
}

fn db_write(mut caller: Caller<'_, Host<'_>>, key: i32, value: i32) -> Result<(), Error> {
    enter(&mut caller)?;
    let (memory, host) = caller.data().guest().memory.data_and_store_mut(&mut caller);
    let limits = host.limits;
    let entry = read_region(memory, key, limits.max_key, "key")
        .and_then(|key| Ok((key, read_region(memory, value, limits.max_value, "value")?)))
        .and_then(|(key, value)| {
            host.count_write(key.len() + value.len())?;
            Ok((key, value))
        })
        .map_err(Error::host)?;
    let copied = (entry.0.len() + entry.1.len()) as u64;
    host.overlay.insert(entry.0, Some(entry.1));
    charge(&mut caller, copied)
}

fn db_remove(mut caller: Caller<'_, Host<'_>>, key: i32) -> Result<(), Error> {
    enter(&mut caller)?;
    let (memory, host) = caller.data().guest().memory.data_and_store_mut(&mut caller);
    let key = read_region(memory, key, host.limits.max_key, "key")
        .and_then(|key| {
            host.count_write(key.len())?;
            Ok(key)
        })
        .map_err(Error::host)?;
    let copied = key.len() as u64;
    host.overlay.insert(key, None);
    charge(&mut caller, copied)
}

fn debug(mut caller: Caller<'_, Host<'_>>, msg: i32) -> Result<(), Error> {
    enter(&mut caller)?;
    let memory = caller.data().guest().memory.data(&caller);
    let region = region(memory, msg).map_err(Error::host)?;
    let shown = &memory[region.offset..region.offset + region.length.min(MAX_DEBUG_MESSAGE)];
    tracing::debug!(target: "ues::contract", message = %String::from_utf8_lossy(shown), "contract debug");
    charge(&mut caller, region.length as u64)
}

fn abort(mut caller: Caller<'_, Host<'_>>, msg: i32) -> Result<(), Error> {
    enter(&mut caller)?;
    let memory = caller.data().guest().memory.data(&caller);
    let region = region(memory, msg).map_err(Error::host)?;
    let shown = &memory[region.offset..region.offset + region.length.min(MAX_ABORT_MESSAGE)];
    Err(Error::host(HostTrap::Abort(String::from_utf8_lossy(shown).into_owned())))
}

/// AssemblyScript's `abort(message, file, line, column)`; the message is an AssemblyScript
/// string (UTF-16, its byte length in the four bytes before it), read if it is in memory.
fn env_abort(mut caller: Caller<'_, Host<'_>>, msg: i32, _file: i32, line: i32, column: i32) -> Result<(), Error> {
    enter(&mut caller)?;
    let memory = caller.data().guest().memory.data(&caller);
    let text = (msg as u32 as usize)
        .checked_sub(4)
        .filter(|at| at + 4 <= memory.len())
        .and_then(|at| {
            let len = (u32_at(memory, at) as usize).min(MAX_ABORT_MESSAGE * 2);
            memory.get(at + 4..at + 4 + len)
        })
        .map(|bytes| {
            let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            String::from_utf16_lossy(&units)
        })
        .unwrap_or_default();
    Err(Error::host(HostTrap::Abort(format!("{text} at {line}:{column}"))))
}

/// What a failed call reports, given wasmi's error and what the host saw.
pub(crate) fn classify(error: &Error, host: &Host<'_>) -> ContractError {
    // A refused growth is the likely cause of whatever failed after it (an `unreachable` on
    // -1, or a grow loop out of fuel), and a refused initial memory fails instantiation with
    // an error that does not say which bound it was.
    if host.limiter.memory_hit {
        return ContractError::MemoryLimit;
    }
    if host.limiter.table_hit {
        return ContractError::Limit(format!("table of more than {} elements", host.limits.table_elements));
    }
    if let Some(trap) = error.downcast_ref::<HostTrap>() {
        return match trap {
            HostTrap::OutOfFuel => ContractError::OutOfFuel,
            HostTrap::Limit(what) => ContractError::Limit(what.clone()),
            other => ContractError::Trapped(other.to_string()),
        };
    }
    match error.as_trap_code() {
        Some(TrapCode::OutOfFuel) => ContractError::OutOfFuel,
        Some(TrapCode::GrowthOperationLimited) => ContractError::MemoryLimit,
        Some(code) => ContractError::Trapped(format!("{code:?}")),
        None => ContractError::Trapped(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_with_region(offset: u32, capacity: u32, length: u32) -> Vec<u8> {
        let mut memory = vec![0u8; 64];
        memory[0..4].copy_from_slice(&offset.to_le_bytes());
        memory[4..8].copy_from_slice(&capacity.to_le_bytes());
        memory[8..12].copy_from_slice(&length.to_le_bytes());
        memory
    }

    #[test]
    fn regions_are_checked_against_memory() {
        let memory = memory_with_region(16, 8, 4);
        assert_eq!(read_region(&memory, 0, 100, "x").unwrap(), vec![0; 4]);
        assert_eq!(read_region(&memory, 60, 100, "x"), Err(HostTrap::InvalidRegion));
        assert_eq!(read_region(&memory, -1, 100, "x"), Err(HostTrap::InvalidRegion));
        assert!(matches!(read_region(&memory, 0, 3, "key"), Err(HostTrap::Limit(_))));
        let past_end = memory_with_region(60, 8, 0);
        assert_eq!(read_region(&past_end, 0, 100, "x"), Err(HostTrap::InvalidRegion));
        let overlong = memory_with_region(16, 4, 5);
        assert_eq!(read_region(&overlong, 0, 100, "x"), Err(HostTrap::InvalidRegion));
        let huge = memory_with_region(u32::MAX, u32::MAX, 0);
        assert_eq!(read_region(&huge, 0, 100, "x"), Err(HostTrap::InvalidRegion));
    }

    #[test]
    fn writing_sets_the_length_and_respects_capacity() {
        let mut memory = memory_with_region(16, 8, 0);
        write_region(&mut memory, 0, b"abc").unwrap();
        assert_eq!(read_region(&memory, 0, 100, "x").unwrap(), b"abc");
        assert_eq!(write_region(&mut memory, 0, b"123456789"), Err(HostTrap::InvalidRegion));
    }
}
