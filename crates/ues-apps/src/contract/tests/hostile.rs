//! Modules that try to break out of their bounds, each stopped with a typed error.

use serde_json::{Value, json};

use super::{Deployed, Kv, code_key, env_at, wasm};
use crate::contract::{ContractError, Entry, Limits, Outcome, Sandbox};

/// A minimal `ues-1` guest with `pages` of memory: a bump allocator, `$region(ptr, len)`,
/// `$ok` (a region holding `{"ok":null}`), "key" at 32 and "value" at 48; then `body`.
fn guest_with_memory(pages: u32, body: &str) -> Vec<u8> {
    guest_importing(pages, "", body)
}

/// [`guest_with_memory`] with more imports.
fn guest_importing(pages: u32, imports: &str, body: &str) -> Vec<u8> {
    wasm(&format!(
        r#"(module
  (import "ues" "db_read" (func $db_read (param i32) (result i32)))
  (import "ues" "db_write" (func $db_write (param i32 i32)))
  (import "ues" "db_remove" (func $db_remove (param i32)))
  {imports}
  (memory (export "memory") {pages})
{runtime}
  (data (i32.const 32) "key")
  (data (i32.const 48) "value")
  (func $ok (result i32) (call $region (i32.const 16) (i32.const 11)))
  (func $key (result i32) (call $region (i32.const 32) (i32.const 3)))
  (func $value (result i32) (call $region (i32.const 48) (i32.const 5)))
  {body}
)"#,
        runtime = super::RUNTIME,
    ))
}

fn guest(body: &str) -> Vec<u8> {
    guest_with_memory(2, body)
}

/// An `execute` with `body` as its code (which must leave a region pointer).
fn execute(body: &str) -> Vec<u8> {
    guest(&format!(
        r#"(func (export "execute") (param $env i32) (param $info i32) (param $msg i32) (result i32) {body})"#
    ))
}

fn run_with(limits: Limits, bytes: &[u8], entry: Entry, state: &Kv) -> Result<Outcome, ContractError> {
    let sandbox = Sandbox::new(limits);
    sandbox.call(code_key(bytes), bytes, entry, &env_at(1), Some(&json!({ "sender": "did:plc:x" })), &json!({}), state)
}

fn run(bytes: &[u8]) -> Result<Outcome, ContractError> {
    run_with(Limits::default(), bytes, Entry::Execute, &Kv::new())
}

fn check(bytes: &[u8]) -> Result<(), ContractError> {
    Sandbox::new(Limits::default()).check(bytes).map(|_| ())
}

fn trapped(reason: &str) -> Result<Outcome, ContractError> {
    Err(ContractError::Trapped(reason.into()))
}

#[test]
fn the_minimal_guest_is_admitted_and_runs() {
    let bytes = execute("(call $ok)");
    let info = Sandbox::new(Limits::default()).check(&bytes).unwrap();
    assert_eq!(info.imports, ["ues.db_read", "ues.db_write", "ues.db_remove"]);
    assert!(info.exports.iter().any(|e| e == "execute"));
    assert_eq!(info.size, bytes.len());
    let outcome = run(&bytes).unwrap();
    assert_eq!(outcome.data, Value::Null);
    assert!(outcome.writes.is_empty());
    assert!(outcome.fuel_used > 0);
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    assert_eq!(run(&execute("(loop $l (br $l)) (call $ok)")), Err(ContractError::OutOfFuel));
    let limits = Limits { fuel: 1_000, ..Limits::default() };
    let busy = execute(
        "(local $i i32) (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.const 10000)))) (call $ok)",
    );
    assert_eq!(run_with(limits, &busy, Entry::Execute, &Kv::new()), Err(ContractError::OutOfFuel));
    assert!(run(&busy).is_ok(), "the same loop fits the default fuel");
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    // ignores the -1 of a refused grow and keeps asking
    let greedy = execute("(loop $l (drop (memory.grow (i32.const 1))) (br $l)) (call $ok)");
    assert_eq!(run(&greedy), Err(ContractError::MemoryLimit));
    // gives up on the -1, as allocators do
    let careful = execute(
        "(loop $l (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable)) (br $l)) (call $ok)",
    );
    assert_eq!(run(&careful), Err(ContractError::MemoryLimit));
    // up to the limit is fine: 16 MiB is 256 pages, 2 are there
    let fits = execute(
        "(drop (memory.grow (i32.const 254))) (if (i32.ne (memory.size) (i32.const 256)) (then unreachable)) (call $ok)",
    );
    assert!(run(&fits).is_ok());
}

#[test]
fn a_huge_initial_memory_hits_the_memory_limit() {
    let bytes = guest_with_memory(300, r#"(func (export "execute") (param i32 i32 i32) (result i32) (call $ok))"#);
    assert_eq!(check(&bytes), Ok(()), "the bound is the store's, applied when instantiated");
    assert_eq!(run(&bytes), Err(ContractError::MemoryLimit));
}

#[test]
fn a_huge_table_hits_a_limit() {
    let bytes = guest(r#"(table 20000 funcref) (func (export "execute") (param i32 i32 i32) (result i32) (call $ok))"#);
    assert!(matches!(run(&bytes), Err(ContractError::Limit(what)) if what.contains("table")));
}

#[test]
fn a_trap_after_a_write_commits_nothing() {
    let contract = guest(
        r#"(func (export "execute") (param i32 i32 i32) (result i32)
             (call $db_write (call $key) (call $region (i32.const 64) (i32.const 8)))
             unreachable)
           (func (export "query") (param i32 i32) (result i32) (call $db_read (call $key)))
           (data (i32.const 64) "{\"ok\":2}")"#,
    );
    let sandbox = Sandbox::new(Limits::default());
    let mut deployed = Deployed::new(&sandbox, contract);
    deployed.state.insert(b"key".to_vec(), br#"{"ok":1}"#.to_vec());
    let before = deployed.state.clone();
    assert_eq!(
        deployed.run(Entry::Execute, &env_at(1), None, &json!({})),
        Err(ContractError::Trapped("UnreachableCodeReached".into()))
    );
    assert_eq!(deployed.state, before);
    assert_eq!(deployed.query(&json!({})), Ok(json!(1)));
}

#[test]
fn imports_the_host_does_not_offer_are_refused() {
    for (import, name) in [
        (
            r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            "wasi_snapshot_preview1.fd_write",
        ),
        (r#"(import "ues" "clock" (func (result i64)))"#, "ues.clock"),
        (r#"(import "ues" "db_read" (func (param i64) (result i32)))"#, "ues.db_read"),
        (r#"(import "env" "abort" (func (param i32)))"#, "env.abort"),
        (r#"(import "env" "table" (table 1 funcref))"#, "env.table"),
        (r#"(import "env" "g" (global i32))"#, "env.g"),
    ] {
        let bytes = wasm(&format!(
            r#"(module {import} (memory (export "memory") 1)
                 (func (export "allocate") (param i32) (result i32) (i32.const 0))
                 (func (export "deallocate") (param i32)) (func (export "ues_abi_1")))"#
        ));
        assert_eq!(check(&bytes), Err(ContractError::UnsupportedImport(name.into())), "{import}");
    }
    let imported_memory = wasm(
        r#"(module (import "env" "memory" (memory 1)) (export "memory" (memory 0))
             (func (export "allocate") (param i32) (result i32) (i32.const 0))
             (func (export "deallocate") (param i32)) (func (export "ues_abi_1")))"#,
    );
    assert_eq!(check(&imported_memory), Err(ContractError::UnsupportedImport("env.memory".into())));
}

#[test]
fn floats_are_refused() {
    for float in [
        r#"(func (export "f") (param f32))"#,
        r#"(func (export "f") (result i32) (i32.trunc_f64_s (f64.const 1.5)))"#,
        r#"(global f64 (f64.const 0))"#,
        r#"(func (export "f") (local f32))"#,
        r#"(func (export "f") (param i32) (result i32) (i32.reinterpret_f32 (f32.convert_i32_s (local.get 0))))"#,
    ] {
        assert!(matches!(check(&guest(float)), Err(ContractError::InvalidModule(_))), "{float}");
    }
}

#[test]
fn a_start_function_is_refused() {
    let bytes = guest(r#"(func $init) (start $init)"#);
    assert_eq!(check(&bytes), Err(ContractError::InvalidModule("start function not allowed".into())));
    assert!(matches!(run(&bytes), Err(ContractError::InvalidModule(_))));
}

#[test]
fn required_exports_and_entry_signatures_are_checked() {
    let no_marker = wasm(
        r#"(module (memory (export "memory") 1)
             (func (export "allocate") (param i32) (result i32) (i32.const 0)) (func (export "deallocate") (param i32)))"#,
    );
    assert_eq!(check(&no_marker), Err(ContractError::MissingExport("ues_abi_1 () -> ()".into())));
    let no_memory = wasm(
        r#"(module (memory 1) (func (export "allocate") (param i32) (result i32) (i32.const 0))
             (func (export "deallocate") (param i32)) (func (export "ues_abi_1")))"#,
    );
    assert_eq!(check(&no_memory), Err(ContractError::MissingExport("memory".into())));
    let bad_allocate = wasm(
        r#"(module (memory (export "memory") 1) (func (export "allocate") (param i64) (result i32) (i32.const 0))
             (func (export "deallocate") (param i32)) (func (export "ues_abi_1")))"#,
    );
    assert!(matches!(check(&bad_allocate), Err(ContractError::MissingExport(name)) if name.starts_with("allocate")));
    let bad_query = guest(r#"(func (export "query") (param i32 i32 i32) (result i32) (call $ok))"#);
    assert_eq!(check(&bad_query), Err(ContractError::InvalidModule("export query must be (i32, i32) -> (i32)".into())));
    assert!(matches!(check(b"\0asm\x01\0\0\0garbage"), Err(ContractError::InvalidModule(_))));
    assert!(matches!(check(b"not wasm"), Err(ContractError::InvalidModule(_))));
}

#[test]
fn a_missing_entry_point_is_reported() {
    let bytes = execute("(call $ok)");
    assert_eq!(
        run_with(Limits::default(), &bytes, Entry::Query, &Kv::new()),
        Err(ContractError::NoEntry("query".into()))
    );
    assert_eq!(
        run_with(Limits::default(), &bytes, Entry::OnTransfer, &Kv::new()),
        Err(ContractError::NoEntry("on_transfer".into()))
    );
}

#[test]
fn module_size_and_code_hash_are_checked() {
    let bytes = execute("(call $ok)");
    let small = Sandbox::new(Limits { max_module_bytes: 100, ..Limits::default() });
    assert_eq!(small.check(&bytes), Err(ContractError::ModuleTooLarge { size: bytes.len(), max: 100 }));
    let sandbox = Sandbox::new(Limits::default());
    let wrong = sandbox.call([7; 32], &bytes, Entry::Execute, &json!({}), None, &json!({}), &Kv::new());
    assert!(matches!(wrong, Err(ContractError::InvalidModule(why)) if why.contains("hash")));
}

#[test]
fn bad_regions_trap() {
    // a key region pointer past the end of memory
    assert_eq!(run(&execute("(drop (call $db_read (i32.const 0xfffffff0))) (call $ok)")), trapped("InvalidRegion"));
    // a region reaching past the end of memory
    assert_eq!(
        run(&execute("(call $db_write (call $region (i32.const 100000) (i32.const 50000)) (call $value)) (call $ok)")),
        trapped("InvalidRegion")
    );
    // length beyond capacity
    assert_eq!(
        run(&execute(
            "(local $r i32) (local.set $r (call $key)) (i32.store offset=8 (local.get $r) (i32.const 4)) (call $db_remove (local.get $r)) (call $ok)"
        )),
        trapped("InvalidRegion")
    );
    // the reply pointer itself
    assert_eq!(run(&execute("(i32.const -4)")), trapped("InvalidRegion"));
    // an allocate that hands out too little room for the arguments
    let stingy = wasm(
        r#"(module (memory (export "memory") 1)
             (func (export "allocate") (param i32) (result i32)
               (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 1)) (i32.const 0))
             (func (export "deallocate") (param i32)) (func (export "ues_abi_1"))
             (func (export "execute") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
    );
    assert_eq!(run(&stingy), trapped("InvalidRegion"));
}

#[test]
fn deep_recursion_stops_typed() {
    let bytes = guest(
        r#"(func $down (param $n i32) (result i32) (i32.add (call $down (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
           (func (export "execute") (param i32 i32 i32) (result i32) (drop (call $down (i32.const 0))) (call $ok))"#,
    );
    assert_eq!(run(&bytes), trapped("StackOverflow"));
}

#[test]
fn key_and_value_bounds_are_limits() {
    // a 70 000-byte key from offset 0 (memory is 128 KiB)
    let long_key = execute("(call $db_write (call $region (i32.const 0) (i32.const 70000)) (call $value)) (call $ok)");
    assert!(matches!(run(&long_key), Err(ContractError::Limit(what)) if what.starts_with("key")));
    let long_read = execute("(drop (call $db_read (call $region (i32.const 0) (i32.const 70000)))) (call $ok)");
    assert!(matches!(run(&long_read), Err(ContractError::Limit(what)) if what.starts_with("key")));
    let small = Limits { max_value: 4, ..Limits::default() };
    let five = execute("(call $db_write (call $key) (call $value)) (call $ok)");
    assert!(
        matches!(run_with(small, &five, Entry::Execute, &Kv::new()), Err(ContractError::Limit(what)) if what.starts_with("value"))
    );
    assert!(run(&five).is_ok());
}

#[test]
fn too_many_writes_is_a_limit() {
    let writes = |n: u32| {
        execute(&format!(
            "(local $i i32) (loop $l (call $db_write (call $key) (call $value)) (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.const {n})))) (call $ok)"
        ))
    };
    assert!(run(&writes(1000)).is_ok());
    assert!(matches!(run(&writes(1001)), Err(ContractError::Limit(what)) if what.contains("writes")));
    // 8 bytes a write: 40 fit 320 bytes, 41 do not
    let bytes = Limits { max_write_bytes: 320, ..Limits::default() };
    assert!(run_with(bytes.clone(), &writes(40), Entry::Execute, &Kv::new()).is_ok());
    assert!(
        matches!(run_with(bytes, &writes(41), Entry::Execute, &Kv::new()), Err(ContractError::Limit(what)) if what.contains("bytes"))
    );
}

#[test]
fn replies_must_be_ok_or_error_json() {
    let reply = |text: &str| {
        let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
        guest(&format!(
            r#"(data (i32.const 256) "{escaped}")
               (func (export "execute") (param i32 i32 i32) (result i32) (call $region (i32.const 256) (i32.const {})))"#,
            text.len()
        ))
    };
    assert!(matches!(run(&reply("not json")), Err(ContractError::InvalidResult(_))));
    assert!(matches!(run(&reply(r#"{"ok":1,"also":2}"#)), Err(ContractError::InvalidResult(_))));
    assert!(matches!(run(&reply(r#"{"result":1}"#)), Err(ContractError::InvalidResult(_))));
    assert!(matches!(run(&reply(r#"[1]"#)), Err(ContractError::InvalidResult(_))));
    assert_eq!(run(&reply(r#"{"error":"nope"}"#)), Err(ContractError::Refused("nope".into())));
    assert_eq!(run(&reply(r#"{"error":{"code":3}}"#)), Err(ContractError::Refused(r#"{"code":3}"#.into())));
    assert_eq!(run(&reply(r#"{"ok":{"a":[1,2]}}"#)).unwrap().data, json!({ "a": [1, 2] }));
    let small = Limits { max_result_bytes: 10, ..Limits::default() };
    let long = reply(r#"{"ok":"0123456789"}"#);
    assert!(matches!(run_with(small, &long, Entry::Execute, &Kv::new()), Err(ContractError::InvalidResult(_))));
}

#[test]
fn writes_in_a_query_trap_read_only() {
    let bytes = guest(
        r#"(func (export "query") (param i32 i32) (result i32) (call $db_write (call $key) (call $value)) (call $ok))
           (func (export "execute") (param i32 i32 i32) (result i32) (call $db_remove (call $key)) (call $ok))"#,
    );
    assert_eq!(run_with(Limits::default(), &bytes, Entry::Query, &Kv::new()), trapped("ReadOnly"));
    let remove =
        guest(r#"(func (export "query") (param i32 i32) (result i32) (call $db_remove (call $key)) (call $ok))"#);
    assert_eq!(run_with(Limits::default(), &remove, Entry::Query, &Kv::new()), trapped("ReadOnly"));
    assert_eq!(run(&bytes).unwrap().writes, vec![(b"key".to_vec(), None)]);
}

#[test]
fn abort_traps_with_its_message() {
    let bytes = guest_importing(
        2,
        r#"(import "ues" "abort" (func $abort (param i32)))"#,
        r#"(func (export "execute") (param i32 i32 i32) (result i32) (call $abort (call $value)) (call $ok))"#,
    );
    assert_eq!(run(&bytes), trapped("abort: value"));
    // AssemblyScript's abort: a UTF-16 message whose byte length is in the 4 bytes before it
    let script = guest_importing(
        2,
        r#"(import "env" "abort" (func $abort (param i32 i32 i32 i32)))"#,
        r#"(data (i32.const 200) "\04\00\00\00h\00i\00")
           (func (export "execute") (param i32 i32 i32) (result i32)
             (call $abort (i32.const 204) (i32.const 0) (i32.const 7) (i32.const 9)) (call $ok))"#,
    );
    assert_eq!(run(&script), trapped("abort: hi at 7:9"));
}

#[test]
fn inputs_are_bounded_and_charged() {
    let sandbox = Sandbox::new(Limits { max_msg_bytes: 1000, ..Limits::default() });
    let bytes = execute("(call $ok)");
    let call = |msg: &Value| sandbox.call(code_key(&bytes), &bytes, Entry::Execute, &json!({}), None, msg, &Kv::new());
    let short = call(&json!("x")).unwrap();
    let long = call(&json!("x".repeat(900))).unwrap();
    assert_eq!(long.fuel_used - short.fuel_used, 899, "a fuel per byte copied in");
    assert!(matches!(call(&json!("x".repeat(1000))), Err(ContractError::Limit(what)) if what.starts_with("msg")));
}

#[test]
fn reads_are_charged_per_byte() {
    let bytes = execute("(drop (call $db_read (call $key))) (call $ok)");
    let with_value = |len: usize| {
        let state = Kv::from([(b"key".to_vec(), vec![b'v'; len])]);
        run_with(Limits::default(), &bytes, Entry::Execute, &state).unwrap().fuel_used
    };
    assert!(with_value(1000) >= with_value(0) + 1000);
}

#[test]
fn the_same_call_gives_the_same_outcome() {
    let bytes = execute(
        "(call $db_write (call $key) (call $value)) (drop (call $db_read (call $key))) (drop (call $db_read (call $value))) (call $ok)",
    );
    let state = Kv::from([(b"value".to_vec(), b"x".to_vec())]);
    let sandbox = Sandbox::new(Limits::default());
    let call = |sandbox: &Sandbox| {
        sandbox.call(code_key(&bytes), &bytes, Entry::Execute, &env_at(9), None, &json!({ "b": 1, "a": [2] }), &state)
    };
    let first = call(&sandbox).unwrap();
    assert_eq!(call(&sandbox).unwrap(), first, "cached module");
    assert_eq!(call(&Sandbox::new(Limits::default())).unwrap(), first, "fresh sandbox");
    assert_eq!(first.writes, vec![(b"key".to_vec(), Some(b"value".to_vec()))]);
}

#[test]
fn the_module_cache_is_bounded() {
    let sandbox = Sandbox::new(Limits { max_cached_modules: 2, ..Limits::default() });
    for n in 0..4 {
        let bytes = execute(&format!("(drop (i32.const {n})) (call $ok)"));
        sandbox.call(code_key(&bytes), &bytes, Entry::Execute, &json!({}), None, &json!({}), &Kv::new()).unwrap();
        assert!(sandbox.cached() <= 2);
    }
    assert_eq!(sandbox.cached(), 2);
}

#[test]
fn the_sandbox_is_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Sandbox>();
    let sandbox = Sandbox::new(Limits::default());
    let bytes = execute("(call $db_write (call $key) (call $value)) (call $ok)");
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    sandbox
                        .call(code_key(&bytes), &bytes, Entry::Execute, &json!({}), None, &json!({}), &Kv::new())
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn error_names_are_the_variant_names() {
    assert_eq!(ContractError::OutOfFuel.name(), "OutOfFuel");
    assert_eq!(ContractError::ModuleTooLarge { size: 2, max: 1 }.name(), "ModuleTooLarge");
    assert_eq!(ContractError::Trapped("InvalidRegion".into()).name(), "Trapped");
    assert_eq!(ContractError::Refused("x".into()).to_string(), "refused: x");
}

#[test]
fn allocate_may_not_reenter_the_host() {
    // `allocate` reads a key, whose value the host passes back through `allocate`, and so on:
    // without a guard, host and guest frames nest on the native stack until fuel runs out.
    let bytes = wasm(
        r#"(module
  (import "ues" "db_read" (func $db_read (param i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 32) "key")
  (func $alloc (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func $region (param $ptr i32) (param $len i32) (param $length i32) (result i32)
    (local $r i32)
    (local.set $r (call $alloc (i32.const 12)))
    (i32.store (local.get $r) (local.get $ptr))
    (i32.store offset=4 (local.get $r) (local.get $len))
    (i32.store offset=8 (local.get $r) (local.get $length))
    (local.get $r))
  (func (export "allocate") (param $n i32) (result i32)
    (drop (call $db_read (call $region (i32.const 32) (i32.const 3) (i32.const 3))))
    (call $region (call $alloc (local.get $n)) (local.get $n) (i32.const 0)))
  (func (export "deallocate") (param i32))
  (func (export "ues_abi_1"))
  (func (export "execute") (param i32 i32 i32) (result i32) (i32.const 0))
)"#,
    );
    let state = Kv::from([(b"key".to_vec(), b"v".to_vec())]);
    assert_eq!(run_with(Limits::default(), &bytes, Entry::Execute, &state), trapped("Reentrant"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Arbitrary bytes, and the allowlist module with one byte changed, as uploads: refused with
    /// a typed error, or admitted and run within bounds; never a panic.
    #[test]
    fn arbitrary_and_mutated_modules_never_panic(
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        at in proptest::prelude::any::<usize>(),
        byte in proptest::prelude::any::<u8>(),
    ) {
        let sandbox = Sandbox::new(Limits { fuel: 200_000, ..Limits::default() });
        let _ = sandbox.check(&noise);
        let mut bytes = wasm(&std::fs::read_to_string(super::contracts_dir().join("allowlist.wat")).unwrap());
        let i = at % bytes.len();
        bytes[i] = byte;
        if sandbox.check(&bytes).is_ok() {
            let msg = json!({"from": "did:plc:a", "to": "did:plc:b", "amount": "1"});
            let _ = sandbox.call(code_key(&bytes), &bytes, Entry::OnTransfer, &env_at(1), None, &msg, &Kv::new());
        }
    }
}
