// fee-hook: a transfer hook that charges a fee, ABI ues-1, in AssemblyScript.
//
// Build (integers only: no f32/f64 may reach the module, the sandbox refuses floats):
//   asc index.ts --runtime stub --noAssert --optimize -o fee-hook.wasm
// The runtime stays unused: memory comes from `alloc` below, strings are static data.
//
// Messages (integers are u64, JSON numbers or decimal strings; DIDs are kept as they appear in
// the JSON):
//   instantiate  msg {"bps": n, "to": did} with n <= 10000 -> {"ok": {}}
//   on_transfer  msg {"from": did, "to": did, "amount": n, "tokenId"?: id}
//                -> {"ok": {"allow": true, "fee": {"amount": "<fee>", "to": "<receiver>"}}}
//                with fee = floor(amount * bps / 10000)
//   query        {"config": {}} -> {"ok": {"bps": "<n>", "to": "<receiver>"}}
//
// State: "bps" -> n, 8 bytes little-endian; "to" -> the receiver's DID.

@external("ues", "db_read")
declare function db_read(key: u32): u32;

@external("ues", "db_write")
declare function db_write(key: u32, value: u32): void;

const BPS_DENOMINATOR: u64 = 10000;

// ---- memory and regions ----

// The bump heap's top; 0 until the first allocation. Allocating lazily keeps the module free of
// a start function (the sandbox refuses one), which AssemblyScript's own runtime would need.
let top: usize = 0;

// `n` bytes, 8-aligned; never freed.
function alloc(n: usize): usize {
  if (top == 0) top = (__heap_base + 7) & ~7;
  const p = top;
  const end = p + n;
  if (n > 0x40000000) unreachable();
  const have = <usize>memory.size() << 16;
  if (end > have) {
    if (memory.grow(<i32>((end - have + 0xffff) >> 16)) < 0) unreachable();
  }
  top = (end + 7) & ~7;
  return p;
}

// A region over `len` bytes at `ptr`.
function region(ptr: usize, len: u32): u32 {
  const r = alloc(12);
  store<u32>(r, <u32>ptr, 0);
  store<u32>(r, len, 4);
  store<u32>(r, len, 8);
  return <u32>r;
}

function regionPtr(r: u32): usize {
  return <usize>load<u32>(r, 0);
}

function regionLen(r: u32): u32 {
  return load<u32>(r, 8);
}

export function allocate(size: u32): u32 {
  const r = region(alloc(<usize>size), size);
  store<u32>(r, 0, 8);
  return r;
}

// Nothing is freed: the instance lives for one call.
export function deallocate(r: u32): void {}

export function ues_abi_1(): void {}

// An ASCII string's bytes in a fresh region.
function bytes(s: string): u32 {
  const n = <u32>s.length;
  const p = alloc(<usize>n);
  for (let i: u32 = 0; i < n; i++) store<u8>(p + <usize>i, <u8>s.charCodeAt(i));
  return region(p, n);
}

// ---- reading JSON (the host hands in valid, compact JSON) ----

function byteAt(p: usize, end: usize): u32 {
  return p < end ? <u32>load<u8>(p) : 0;
}

function skipWs(p: usize, end: usize): usize {
  while (true) {
    const c = byteAt(p, end);
    if (c != 32 && c != 9 && c != 10 && c != 13) return p;
    p++;
  }
  return p;
}

// Past the string whose opening quote is at `p`.
function skipString(p: usize, end: usize): usize {
  p++;
  while (p < end) {
    const c = <u32>load<u8>(p);
    p++;
    if (c == 34) break;
    if (c == 92) p++;
  }
  return p;
}

// Past the value starting at `p`.
function skipValue(p: usize, end: usize): usize {
  let depth: u32 = 0;
  while (p < end) {
    const c = <u32>load<u8>(p);
    if (c == 34) {
      p = skipString(p, end);
      if (depth == 0) break;
      continue;
    }
    if (c == 123 || c == 91) {
      depth++;
    } else if (c == 125 || c == 93) {
      if (depth == 0) break;
      depth--;
      if (depth == 0) return p + 1;
    } else if (c == 44 && depth == 0) {
      break;
    }
    p++;
  }
  return p;
}

// Whether the bytes [p, p + n) spell the ASCII string `s`.
function spells(p: usize, n: usize, s: string): bool {
  if (n != <usize>s.length) return false;
  for (let i: usize = 0; i < n; i++) {
    if (<u32>load<u8>(p + i) != <u32>s.charCodeAt(<i32>i)) return false;
  }
  return true;
}

// Where the value of field `key` of the object at `p` starts, or 0.
function field(p: usize, end: usize, key: string): usize {
  p = skipWs(p, end);
  if (byteAt(p, end) != 123) return 0;
  p++;
  while (true) {
    p = skipWs(p, end);
    if (byteAt(p, end) != 34) return 0;
    const k = p + 1;
    p = skipString(p, end);
    const kend = p - 1;
    p = skipWs(p, end);
    if (byteAt(p, end) != 58) return 0;
    p = skipWs(p + 1, end);
    if (spells(k, kend - k, key)) return p;
    p = skipWs(skipValue(p, end), end);
    if (byteAt(p, end) != 44) return 0;
    p++;
  }
  return 0;
}

// The string at `p` (escapes kept): its start, with its length in `found`; false if none.
let foundLen: u32 = 0;
function stringAt(p: usize, end: usize): usize {
  if (p == 0 || byteAt(p, end) != 34) return 0;
  const q = skipString(p, end);
  if (q > end || load<u8>(q - 1) != 34 || q < p + 2) return 0;
  foundLen = <u32>(q - p - 2);
  return p + 1;
}

// The unsigned integer at `p`, a JSON number or a decimal string; `parsed` says whether it was.
let parsed: bool = false;
function u64At(p: usize, end: usize): u64 {
  parsed = false;
  if (p == 0) return 0;
  const quoted = byteAt(p, end) == 34;
  if (quoted) p++;
  let v: u64 = 0;
  let digits: u32 = 0;
  while (true) {
    const c = byteAt(p, end);
    if (c < 48 || c > 57) break;
    const d = <u64>(c - 48);
    if (v > (U64.MAX_VALUE - d) / 10) return 0;
    v = v * 10 + d;
    digits++;
    p++;
  }
  const c = byteAt(p, end);
  parsed = digits > 0 && (quoted ? c == 34 : c != 46 && c != 101 && c != 69);
  return v;
}

// ---- writing the reply ----

// The reply under construction: at most `cap` bytes at `out`.
let out: usize = 0;
let len: u32 = 0;

function begin(cap: u32): void {
  out = alloc(<usize>cap);
  len = 0;
}

function emit(s: string): void {
  const n = <u32>s.length;
  for (let i: u32 = 0; i < n; i++) store<u8>(out + <usize>(len + i), <u8>s.charCodeAt(i));
  len += n;
}

function emitBytes(p: usize, n: u32): void {
  memory.copy(out + <usize>len, p, <usize>n);
  len += n;
}

function emitU64(v: u64): void {
  const digits = alloc(20);
  let i: u32 = 20;
  do {
    i--;
    store<u8>(digits + <usize>i, <u8>(48 + v % 10));
    v /= 10;
  } while (v != 0);
  emitBytes(digits + <usize>i, 20 - i);
}

function finish(): u32 {
  return region(out, len);
}

function reply(json: string): u32 {
  return bytes(json);
}

// ---- the contract ----

function readU64(key: string): u64 {
  const r = db_read(bytes(key));
  if (r == 0) return 0;
  return load<u64>(regionPtr(r));
}

export function instantiate(env: u32, info: u32, msg: u32): u32 {
  const start = regionPtr(msg);
  const end = start + <usize>regionLen(msg);
  const bps = u64At(field(start, end, "bps"), end);
  if (!parsed || bps > BPS_DENOMINATOR) return reply('{"error":"bps must be an integer from 0 to 10000"}');
  const to = stringAt(field(start, end, "to"), end);
  if (to == 0) return reply('{"error":"to must be a DID"}');
  const v = alloc(8);
  store<u64>(v, bps);
  db_write(bytes("bps"), region(v, 8));
  db_write(bytes("to"), region(to, foundLen));
  return reply('{"ok":{}}');
}

export function on_transfer(env: u32, info: u32, msg: u32): u32 {
  const start = regionPtr(msg);
  const end = start + <usize>regionLen(msg);
  const amount = u64At(field(start, end, "amount"), end);
  if (!parsed) return reply('{"error":"amount must be an unsigned integer"}');
  const receiver = db_read(bytes("to"));
  if (receiver == 0) return reply('{"error":"not instantiated"}');
  const bps = readU64("bps");
  // floor(amount * bps / 10000) without overflow: bps <= 10000
  const fee = (amount / BPS_DENOMINATOR) * bps + ((amount % BPS_DENOMINATOR) * bps) / BPS_DENOMINATOR;
  begin(128 + regionLen(receiver));
  emit('{"ok":{"allow":true,"fee":{"amount":"');
  emitU64(fee);
  emit('","to":"');
  emitBytes(regionPtr(receiver), regionLen(receiver));
  emit('"}}}');
  return finish();
}

export function query(env: u32, msg: u32): u32 {
  const start = regionPtr(msg);
  const end = start + <usize>regionLen(msg);
  if (field(start, end, "config") == 0) return reply('{"error":"unknown message"}');
  const receiver = db_read(bytes("to"));
  if (receiver == 0) return reply('{"error":"not instantiated"}');
  const bps = readU64("bps");
  begin(128 + regionLen(receiver));
  emit('{"ok":{"bps":"');
  emitU64(bps);
  emit('","to":"');
  emitBytes(regionPtr(receiver), regionLen(receiver));
  emit('"}}');
  return finish();
}
