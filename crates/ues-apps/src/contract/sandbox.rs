//! The sandbox: one engine, a bounded cache of compiled modules, and the call sequence.

use std::collections::HashMap;

use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use wasmi::{CompilationMode, Config, EnforcedLimits, Engine, ExternType, Module, Store, TypedFunc, ValType};

use crate::contract::host::{self, Guest, Host, IMPORTS};
use crate::contract::{ContractError, Entry, Limits, ModuleInfo, Outcome, State};

/// Deepest guest call stack; deeper traps with `StackOverflow`.
const MAX_RECURSION_DEPTH: usize = 1024;

/// Runs contracts: compiles and checks modules, keeps the compiled ones, and runs calls.
///
/// `Send + Sync`: calls run concurrently, each in its own store.
pub struct Sandbox {
    engine: Engine,
    limits: Limits,
    cache: Mutex<Cache>,
}

/// Compiled modules by code hash, least recently used dropped first.
struct Cache {
    modules: HashMap<[u8; 32], (Module, u64)>,
    clock: u64,
}

impl Cache {
    fn get(&mut self, key: &[u8; 32]) -> Option<Module> {
        self.clock += 1;
        let clock = self.clock;
        self.modules.get_mut(key).map(|(module, used)| {
            *used = clock;
            module.clone()
        })
    }

    fn insert(&mut self, key: [u8; 32], module: Module, max: usize) {
        if max == 0 {
            return;
        }
        self.clock += 1;
        while self.modules.len() >= max && !self.modules.contains_key(&key) {
            let oldest = *self.modules.iter().min_by_key(|(_, (_, used))| *used).expect("the cache is not empty").0;
            self.modules.remove(&oldest);
        }
        self.modules.insert(key, (module, self.clock));
    }
}

impl Sandbox {
    /// A sandbox enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        let mut config = Config::default();
        config
            .consume_fuel(true)
            .floats(false)
            .wasm_saturating_float_to_int(false)
            .wasm_multi_memory(false)
            .wasm_reference_types(false)
            .wasm_tail_call(false)
            .wasm_custom_page_sizes(false)
            .wasm_wide_arithmetic(false)
            .allow_start_fn(false)
            // Lazy translation charges fuel on a function's first call, which would make the
            // fuel used depend on what the cache holds.
            .compilation_mode(CompilationMode::Eager)
            .enforced_limits(EnforcedLimits::strict())
            .set_max_recursion_depth(MAX_RECURSION_DEPTH)
            .ignore_custom_sections(true);
        Self { engine: Engine::new(&config), limits, cache: Mutex::new(Cache { modules: HashMap::new(), clock: 0 }) }
    }

    /// The bounds this sandbox enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The upload check: size, valid Wasm without floats or a start function, imports only
    /// from the host's set, the required exports with their types. An admitted module is kept
    /// compiled, under its SHA-256.
    pub fn check(&self, bytes: &[u8]) -> Result<ModuleInfo, ContractError> {
        let (module, info) = self.compile(bytes)?;
        self.cache.lock().insert(Sha256::digest(bytes).into(), module, self.limits.max_cached_modules);
        Ok(info)
    }

    /// Runs `entry` of the module `bytes` (whose SHA-256 is `key`) over `state`, in a fresh
    /// store and instance with the sandbox's limits. Writes go to an overlay returned in the
    /// [`Outcome`]; on any error the caller gets only the error and commits nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn call(
        &self,
        key: [u8; 32],
        bytes: &[u8],
        entry: Entry,
        env: &Value,
        info: Option<&Value>,
        msg: &Value,
        state: &dyn State,
    ) -> Result<Outcome, ContractError> {
        let module = self.module(key, bytes)?;
        let mut args = vec![self.argument(env, "env")?];
        if entry.takes_info() {
            args.push(self.argument(info.unwrap_or(&Value::Null), "info")?);
        }
        args.push(self.argument(msg, "msg")?);

        let mut store = Store::new(&self.engine, Host::new(state, &self.limits, entry == Entry::Query));
        store.limiter(limiter);
        store.set_fuel(self.limits.fuel).expect("fuel is enabled");
        let reply = run(&mut store, &module, entry, &args);
        let fuel_used = self.limits.fuel - store.get_fuel().expect("fuel is enabled");
        let reply = reply.map_err(|error| match error {
            Failure::Wasm(error) => host::classify(&error, store.data()),
            Failure::Contract(error) => error,
        })?;
        let data = parse_reply(&reply)?;
        Ok(Outcome { data, writes: store.into_data().into_writes(), fuel_used })
    }

    /// How many compiled modules are kept.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache.lock().modules.len()
    }

    /// The compiled module for `key`, compiling and checking `bytes` on a miss.
    fn module(&self, key: [u8; 32], bytes: &[u8]) -> Result<Module, ContractError> {
        if let Some(module) = self.cache.lock().get(&key) {
            return Ok(module);
        }
        if <[u8; 32]>::from(Sha256::digest(bytes)) != key {
            return Err(ContractError::InvalidModule("the code does not match its hash".into()));
        }
        // Compiled outside the lock: two callers may both compile, and one result stays.
        let (module, _) = self.compile(bytes)?;
        self.cache.lock().insert(key, module.clone(), self.limits.max_cached_modules);
        Ok(module)
    }

    fn compile(&self, bytes: &[u8]) -> Result<(Module, ModuleInfo), ContractError> {
        if bytes.len() > self.limits.max_module_bytes {
            return Err(ContractError::ModuleTooLarge { size: bytes.len(), max: self.limits.max_module_bytes });
        }
        refuse_start(bytes)?;
        let module = Module::new(&self.engine, bytes).map_err(|e| ContractError::InvalidModule(e.to_string()))?;

        let mut imports = Vec::new();
        for import in module.imports() {
            let name = format!("{}.{}", import.module(), import.name());
            let offered = match import.ty() {
                ExternType::Func(ty) => {
                    IMPORTS.iter().any(|i| i.module == import.module() && i.name == import.name() && i.matches(ty))
                }
                _ => false,
            };
            if !offered {
                return Err(ContractError::UnsupportedImport(name));
            }
            imports.push(name);
        }

        let func = |name: &str, params: usize, results: usize| match module.get_export(name) {
            Some(ExternType::Func(ty)) => {
                ty.params().len() == params
                    && ty.results().len() == results
                    && ty.params().iter().chain(ty.results()).all(|t| *t == ValType::I32)
            }
            _ => false,
        };
        if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
            return Err(ContractError::MissingExport("memory".into()));
        }
        for (name, params, results) in [("allocate", 1, 1), ("deallocate", 1, 0), ("ues_abi_1", 0, 0)] {
            if !func(name, params, results) {
                return Err(ContractError::MissingExport(format!("{name} {}", signature(params, results))));
            }
        }
        for entry in Entry::ALL {
            let params = if entry.takes_info() { 3 } else { 2 };
            if module.get_export(entry.export()).is_some() && !func(entry.export(), params, 1) {
                return Err(ContractError::InvalidModule(format!(
                    "export {} must be {}",
                    entry.export(),
                    signature(params, 1)
                )));
            }
        }
        let exports = module.exports().map(|e| e.name().to_owned()).collect();
        Ok((module, ModuleInfo { imports, exports, size: bytes.len() }))
    }

    /// `value` as canonical JSON, within [`Limits::max_msg_bytes`].
    fn argument(&self, value: &Value, what: &str) -> Result<Vec<u8>, ContractError> {
        let mut out = Vec::new();
        canonical_json(value, &mut out);
        if out.len() > self.limits.max_msg_bytes {
            return Err(ContractError::Limit(format!(
                "{what} of {} bytes, more than {}",
                out.len(),
                self.limits.max_msg_bytes
            )));
        }
        Ok(out)
    }
}

/// Why `run` stopped: in wasmi (classified with what the host saw), or a contract error.
enum Failure {
    Wasm(wasmi::Error),
    Contract(ContractError),
}

impl From<wasmi::Error> for Failure {
    fn from(error: wasmi::Error) -> Self {
        Failure::Wasm(error)
    }
}

/// Instantiates, passes the arguments, calls the entry and copies out the reply's bytes.
fn run(store: &mut Store<Host<'_>>, module: &Module, entry: Entry, args: &[Vec<u8>]) -> Result<Vec<u8>, Failure> {
    let linker = host::linker(store.engine());
    let instance = linker.instantiate_and_start(&mut *store, module)?;
    let memory = instance.get_memory(&*store, "memory").expect("checked at compile");
    let allocate = instance.get_typed_func::<i32, i32>(&*store, "allocate").expect("checked at compile");
    store.data_mut().guest = Some(Guest { memory, allocate });

    let export = entry.export();
    let no_entry = |_| Failure::Contract(ContractError::NoEntry(export.into()));
    let reply = if entry.takes_info() {
        let func: TypedFunc<(i32, i32, i32), i32> = instance.get_typed_func(&*store, export).map_err(no_entry)?;
        let ptrs = pass_all(store, args)?;
        func.call(&mut *store, (ptrs[0], ptrs[1], ptrs[2]))?
    } else {
        let func: TypedFunc<(i32, i32), i32> = instance.get_typed_func(&*store, export).map_err(no_entry)?;
        let ptrs = pass_all(store, args)?;
        func.call(&mut *store, (ptrs[0], ptrs[1]))?
    };
    let max = store.data().limits().max_result_bytes;
    let bytes = host::read_region(memory.data(&*store), reply, max, "reply").map_err(|trap| match trap {
        host::HostTrap::Limit(what) => Failure::Contract(ContractError::InvalidResult(what)),
        other => Failure::Wasm(wasmi::Error::host(other)),
    })?;
    host::charge(&mut *store, bytes.len() as u64)?;
    Ok(bytes)
}

fn pass_all(store: &mut Store<Host<'_>>, args: &[Vec<u8>]) -> Result<Vec<i32>, wasmi::Error> {
    args.iter().map(|arg| host::pass_to_guest(&mut *store, arg)).collect()
}

/// The `ok` value of a reply, or why the reply is refused or invalid.
fn parse_reply(bytes: &[u8]) -> Result<Value, ContractError> {
    let reply: Value = serde_json::from_slice(bytes).map_err(|e| ContractError::InvalidResult(e.to_string()))?;
    let Value::Object(mut fields) = reply else {
        return Err(ContractError::InvalidResult("not an object".into()));
    };
    if fields.len() != 1 {
        return Err(ContractError::InvalidResult("not {\"ok\": ...} or {\"error\": ...}".into()));
    }
    if let Some(ok) = fields.remove("ok") {
        return Ok(ok);
    }
    match fields.remove("error") {
        Some(Value::String(reason)) => Err(ContractError::Refused(reason)),
        Some(other) => Err(ContractError::Refused(other.to_string())),
        None => Err(ContractError::InvalidResult("not {\"ok\": ...} or {\"error\": ...}".into())),
    }
}

fn limiter<'a, 'b>(host: &'a mut Host<'b>) -> &'a mut dyn wasmi::ResourceLimiter {
    &mut host.limiter
}

/// Refuses a start section, before wasmi would with a less precise error.
fn refuse_start(bytes: &[u8]) -> Result<(), ContractError> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| ContractError::InvalidModule(e.to_string()))? {
            wasmparser::Payload::StartSection { .. } => {
                return Err(ContractError::InvalidModule("start function not allowed".into()));
            }
            // The start section comes before the code; nothing after it matters here.
            wasmparser::Payload::CodeSectionStart { .. } | wasmparser::Payload::DataSection(_) => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

fn signature(params: usize, results: usize) -> String {
    let list = |n: usize| vec!["i32"; n].join(", ");
    format!("({}) -> ({})", list(params), list(results))
}

/// Writes `value` as JSON with object keys sorted, whatever order the map keeps.
fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("writing to a Vec succeeds");
                out.push(b':');
                canonical_json(&fields[key], out);
            }
            out.push(b'}');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec succeeds"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::canonical_json;

    #[test]
    fn arguments_are_canonical_json() {
        let mut fields = serde_json::Map::new();
        fields.insert("z".into(), json!([1, { "b": "\u{e9}\"", "a": null }]));
        fields.insert("a".into(), json!(-7));
        let mut out = Vec::new();
        canonical_json(&serde_json::Value::Object(fields), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":-7,"z":[1,{"a":null,"b":"é\""}]}"#);
    }
}
