;; vesting: a linear vesting schedule with a cliff, used as a lockup hook on a token, ABI ues-1.
;;
;; Integers are u64, given as JSON numbers or decimal strings, answered as decimal strings; times
;; are unix seconds. The beneficiary holds the whole grant up front; what has vested (and not yet
;; left) is what may leave. "released" counts what has left, through release or a transfer.
;;
;; vested(T) = 0                                   if T < start + cliff
;;           = total                               if T >= start + duration
;;           = floor(total * (T - start) / duration) otherwise
;;
;; Messages:
;;   instantiate  msg {"beneficiary": did, "total": n, "start": t, "cliff": secs, "duration": secs}
;;                (0 < duration < 2^32, cliff <= duration, start + duration < 2^64; cliff counts from
;;                start) -> {"ok": {}}
;;   query        {"vested": {"time": T}} -> {"ok": {"vested": "<n>"}}
;;   execute      env {"time": now}, msg {"release": {}} -> {"ok": {"released": "<n>"}}: n, the
;;                amount newly releasable (vested(now) - released), is recorded as released
;;   on_transfer  env {"time": now}, msg {"from": did, "to": did, "amount": n}
;;                from the beneficiary: allowed while amount <= vested(now) - released, which
;;                then grows released by amount; otherwise
;;                {"ok": {"allow": false, "reason": "amount exceeds the vested balance"}}.
;;                From anyone else: {"ok": {"allow": true}}.
;;
;; State: "b" -> the beneficiary's DID; "t", "s", "c", "d", "r" -> total, start, cliff, duration,
;; released, each 8 bytes little-endian.
(module
  (import "ues" "db_read" (func $db_read (param i32) (result i32)))
  (import "ues" "db_write" (func $db_write (param i32 i32)))

  (memory (export "memory") 1)

  ;; 96..116: scratch for number formatting; 128..4096: constants; 4096..: the bump heap.
  (data (i32.const 128) "beneficiary") ;; 11
  (data (i32.const 144) "total") ;; 5
  (data (i32.const 160) "start") ;; 5
  (data (i32.const 176) "cliff") ;; 5
  (data (i32.const 192) "duration") ;; 8
  (data (i32.const 208) "vested") ;; 6
  (data (i32.const 224) "time") ;; 4
  (data (i32.const 240) "release") ;; 7
  (data (i32.const 256) "from") ;; 4
  (data (i32.const 272) "amount") ;; 6
  (data (i32.const 288) "b") ;; 1
  (data (i32.const 304) "t") ;; 1
  (data (i32.const 320) "s") ;; 1
  (data (i32.const 336) "c") ;; 1
  (data (i32.const 352) "d") ;; 1
  (data (i32.const 368) "r") ;; 1
  (data (i32.const 384) "{\"ok\":{}}") ;; 9
  (data (i32.const 400) "{\"error\":\"beneficiary, total, start, cliff and duration are required\"}") ;; 70
  (data (i32.const 480) "{\"error\":\"need 0 < duration < 2^32, cliff <= duration and start + duration < 2^64\"}") ;; 83
  (data (i32.const 576) "{\"error\":\"not instantiated\"}") ;; 28
  (data (i32.const 608) "{\"error\":\"unknown message\"}") ;; 27
  (data (i32.const 640) "{\"ok\":{\"vested\":\"") ;; 17
  (data (i32.const 672) "\"}}") ;; 3
  (data (i32.const 688) "{\"ok\":{\"released\":\"") ;; 19
  (data (i32.const 720) "{\"ok\":{\"allow\":true}}") ;; 21
  (data (i32.const 752) "{\"ok\":{\"allow\":false,\"reason\":\"amount exceeds the vested balance\"}}") ;; 67
  (data (i32.const 832) "{\"error\":\"env.time is required\"}") ;; 32
  (data (i32.const 864) "{\"error\":\"msg.from and msg.amount are required\"}") ;; 48

  (global $heap (mut i32) (i32.const 4096))
  ;; The reply being written: [$out, $cur).
  (global $out (mut i32) (i32.const 0))
  (global $cur (mut i32) (i32.const 0))

  ;; ---- memory and regions ----

  ;; Grows memory to hold bytes up to $end; traps when it cannot.
  (func $room (param $end i32)
    (local $have i32)
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                                      (i32.const 16)))
              (i32.const -1))
          (then unreachable)))))

  ;; $n bytes from the bump heap, 8-aligned.
  (func $alloc (param $n i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (local.get $n) (i32.const 0x40000000)) (then unreachable))
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (call $room (i32.add (local.get $p) (local.get $n)))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))

  ;; A region over the $len bytes at $ptr.
  (func $region (param $ptr i32) (param $len i32) (result i32)
    (local $r i32)
    (local.set $r (call $alloc (i32.const 12)))
    (i32.store (local.get $r) (local.get $ptr))
    (i32.store offset=4 (local.get $r) (local.get $len))
    (i32.store offset=8 (local.get $r) (local.get $len))
    (local.get $r))

  (func (export "allocate") (param $n i32) (result i32)
    (local $r i32)
    (local.set $r (call $region (call $alloc (local.get $n)) (local.get $n)))
    (i32.store offset=8 (local.get $r) (i32.const 0))
    (local.get $r))

  ;; Nothing is freed: the instance lives for one call.
  (func (export "deallocate") (param i32))

  (func (export "ues_abi_1"))

  (func $rptr (param $r i32) (result i32) (i32.load (local.get $r)))
  (func $rlen (param $r i32) (result i32) (i32.load offset=8 (local.get $r)))
  (func $rend (param $r i32) (result i32) (i32.add (call $rptr (local.get $r)) (call $rlen (local.get $r))))

  ;; Whether the $n bytes at $a and $b are equal.
  (func $eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ
      (loop $next
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; A region over $prefix followed by the $slen bytes at $s.
  (func $key (param $prefix i32) (param $plen i32) (param $s i32) (param $slen i32) (result i32)
    (local $p i32)
    (local.set $p (call $alloc (i32.add (local.get $plen) (local.get $slen))))
    (memory.copy (local.get $p) (local.get $prefix) (local.get $plen))
    (memory.copy (i32.add (local.get $p) (local.get $plen)) (local.get $s) (local.get $slen))
    (call $region (local.get $p) (i32.add (local.get $plen) (local.get $slen))))

  ;; ---- reading JSON (the host hands in valid, compact JSON) ----

  ;; The byte at $p, or 0 at or past $end.
  (func $byte (param $p i32) (param $end i32) (result i32)
    (if (result i32) (i32.lt_u (local.get $p) (local.get $end))
      (then (i32.load8_u (local.get $p)))
      (else (i32.const 0))))

  ;; Past any whitespace at $p.
  (func $ws (param $p i32) (param $end i32) (result i32)
    (local $c i32)
    (block $done
      (loop $next
        (local.set $c (call $byte (local.get $p) (local.get $end)))
        (br_if $done
          (i32.eqz (i32.or (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
                           (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13))))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $p))

  ;; Past the string whose opening quote is at $p.
  (func $skip_string (param $p i32) (param $end i32) (result i32)
    (local $c i32)
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br_if $done (i32.eq (local.get $c) (i32.const 34)))
        (if (i32.eq (local.get $c) (i32.const 92))
          (then (local.set $p (i32.add (local.get $p) (i32.const 1)))))
        (br $next)))
    (local.get $p))

  ;; Past the value starting at $p.
  (func $skip_value (param $p i32) (param $end i32) (result i32)
    (local $c i32)
    (local $depth i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        (if (i32.eq (local.get $c) (i32.const 34))
          (then
            (local.set $p (call $skip_string (local.get $p) (local.get $end)))
            (br_if $done (i32.eqz (local.get $depth)))
            (br $next)))
        (if (i32.or (i32.eq (local.get $c) (i32.const 123)) (i32.eq (local.get $c) (i32.const 91)))
          (then
            (local.set $depth (i32.add (local.get $depth) (i32.const 1)))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br $next)))
        (if (i32.or (i32.eq (local.get $c) (i32.const 125)) (i32.eq (local.get $c) (i32.const 93)))
          (then
            ;; at depth 0 this closes the container around a scalar
            (br_if $done (i32.eqz (local.get $depth)))
            (local.set $depth (i32.sub (local.get $depth) (i32.const 1)))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br_if $done (i32.eqz (local.get $depth)))
            (br $next)))
        (br_if $done (i32.and (i32.eqz (local.get $depth)) (i32.eq (local.get $c) (i32.const 44))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $p))

  ;; Where the value of field $key ($klen bytes) of the object at $p starts, or 0.
  (func $field (param $p i32) (param $end i32) (param $key i32) (param $klen i32) (result i32)
    (local $k i32)
    (local $kend i32)
    (local.set $p (call $ws (local.get $p) (local.get $end)))
    (if (i32.ne (call $byte (local.get $p) (local.get $end)) (i32.const 123)) (then (return (i32.const 0))))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (loop $next
      (local.set $p (call $ws (local.get $p) (local.get $end)))
      (if (i32.ne (call $byte (local.get $p) (local.get $end)) (i32.const 34)) (then (return (i32.const 0))))
      (local.set $k (i32.add (local.get $p) (i32.const 1)))
      (local.set $p (call $skip_string (local.get $p) (local.get $end)))
      (local.set $kend (i32.sub (local.get $p) (i32.const 1)))
      (local.set $p (call $ws (local.get $p) (local.get $end)))
      (if (i32.ne (call $byte (local.get $p) (local.get $end)) (i32.const 58)) (then (return (i32.const 0))))
      (local.set $p (call $ws (i32.add (local.get $p) (i32.const 1)) (local.get $end)))
      (if (i32.eq (i32.sub (local.get $kend) (local.get $k)) (local.get $klen))
        (then
          (if (call $eq (local.get $k) (local.get $key) (local.get $klen))
            (then (return (local.get $p))))))
      (local.set $p (call $ws (call $skip_value (local.get $p) (local.get $end)) (local.get $end)))
      (if (i32.ne (call $byte (local.get $p) (local.get $end)) (i32.const 44)) (then (return (i32.const 0))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $next))
    (i32.const 0))

  ;; The contents of the string at $p (escapes kept) as (start, length); length -1 if none.
  (func $string (param $p i32) (param $end i32) (result i32 i32)
    (local $q i32)
    (if (i32.ne (call $byte (local.get $p) (local.get $end)) (i32.const 34))
      (then (return (i32.const 0) (i32.const -1))))
    (local.set $q (call $skip_string (local.get $p) (local.get $end)))
    (if (i32.ne (i32.load8_u (i32.sub (local.get $q) (i32.const 1))) (i32.const 34))
      (then (return (i32.const 0) (i32.const -1))))
    (i32.add (local.get $p) (i32.const 1))
    (i32.sub (i32.sub (local.get $q) (local.get $p)) (i32.const 2)))

  ;; The string field $key of the object in region $r, as (start, length); length -1 if none.
  (func $string_field (param $r i32) (param $key i32) (param $klen i32) (result i32 i32)
    (call $string
      (call $field (call $rptr (local.get $r)) (call $rend (local.get $r)) (local.get $key) (local.get $klen))
      (call $rend (local.get $r))))

  ;; ---- writing the reply ----

  (func $begin
    (global.set $out (global.get $heap))
    (global.set $cur (global.get $heap)))

  (func $emit (param $p i32) (param $n i32)
    (call $room (i32.add (global.get $cur) (local.get $n)))
    (memory.copy (global.get $cur) (local.get $p) (local.get $n))
    (global.set $cur (i32.add (global.get $cur) (local.get $n)))
    (global.set $heap (global.get $cur)))

  (func $emit_u64 (param $v i64)
    (local $p i32)
    (local.set $p (i32.const 116))
    (loop $next
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p) (i64.add (i64.rem_u (local.get $v) (i64.const 10)) (i64.const 48)))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $next (i64.ne (local.get $v) (i64.const 0))))
    (call $emit (local.get $p) (i32.sub (i32.const 116) (local.get $p))))

  (func $finish (result i32)
    (call $region (global.get $out) (i32.sub (global.get $cur) (global.get $out))))

  ;; The unsigned integer at $p, a JSON number or a decimal string, as (value, ok).
  (func $u64 (param $p i32) (param $end i32) (result i64 i32)
    (local $v i64)
    (local $d i64)
    (local $quoted i32)
    (local $digits i32)
    (local $c i32)
    (if (i32.eq (call $byte (local.get $p) (local.get $end)) (i32.const 34))
      (then
        (local.set $quoted (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))))
    (block $done
      (loop $next
        (local.set $c (call $byte (local.get $p) (local.get $end)))
        (br_if $done (i32.gt_u (i32.sub (local.get $c) (i32.const 48)) (i32.const 9)))
        (local.set $d (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48))))
        ;; v * 10 + d must stay below 2^64
        (if (i64.gt_u (local.get $v) (i64.div_u (i64.sub (i64.const -1) (local.get $d)) (i64.const 10)))
          (then (return (i64.const 0) (i32.const 0))))
        (local.set $v (i64.add (i64.mul (local.get $v) (i64.const 10)) (local.get $d)))
        (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (if (i32.eqz (local.get $digits)) (then (return (i64.const 0) (i32.const 0))))
    (local.set $c (call $byte (local.get $p) (local.get $end)))
    ;; a string ends at its quote; a number must not go on as a fraction or an exponent
    (if (local.get $quoted)
      (then (return (local.get $v) (i32.eq (local.get $c) (i32.const 34)))))
    (local.get $v)
    (i32.eqz (i32.or (i32.eq (local.get $c) (i32.const 46))
                     (i32.or (i32.eq (local.get $c) (i32.const 101)) (i32.eq (local.get $c) (i32.const 69))))))

  ;; The integer field $key of the object in region $r, as (value, ok).
  (func $u64_field (param $r i32) (param $key i32) (param $klen i32) (result i64 i32)
    (local $p i32)
    (local.set $p (call $field (call $rptr (local.get $r)) (call $rend (local.get $r)) (local.get $key) (local.get $klen)))
    (if (i32.eqz (local.get $p)) (then (return (i64.const 0) (i32.const 0))))
    (call $u64 (local.get $p) (call $rend (local.get $r))))

  ;; ---- the contract ----

  ;; State key $key (one byte) := $v, 8 bytes little-endian.
  (func $put (param $key i32) (param $v i64)
    (local $p i32)
    (local.set $p (call $alloc (i32.const 8)))
    (i64.store (local.get $p) (local.get $v))
    (call $db_write (call $region (local.get $key) (i32.const 1)) (call $region (local.get $p) (i32.const 8))))

  ;; State key $key (one byte) as a u64; 0 if absent.
  (func $get (param $key i32) (result i64)
    (local $r i32)
    (local.set $r (call $db_read (call $region (local.get $key) (i32.const 1))))
    (if (i32.eqz (local.get $r)) (then (return (i64.const 0))))
    (i64.load (call $rptr (local.get $r))))

  ;; The beneficiary's DID as a region, or 0 before instantiate.
  (func $beneficiary (result i32)
    (call $db_read (call $region (i32.const 288) (i32.const 1))))

  (func $vested (param $now i64) (result i64)
    (local $start i64)
    (local $d i64)
    (local $total i64)
    (local $e i64)
    (local.set $start (call $get (i32.const 320)))
    (local.set $d (call $get (i32.const 352)))
    (local.set $total (call $get (i32.const 304)))
    (if (i64.lt_u (local.get $now) (i64.add (local.get $start) (call $get (i32.const 336))))
      (then (return (i64.const 0))))
    (if (i64.ge_u (local.get $now) (i64.add (local.get $start) (local.get $d)))
      (then (return (local.get $total))))
    (local.set $e (i64.sub (local.get $now) (local.get $start)))
    ;; total * e / d without overflow: with total = q * d + r, it is q * e + r * e / d, and
    ;; r, e < d < 2^32
    (i64.add
      (i64.mul (i64.div_u (local.get $total) (local.get $d)) (local.get $e))
      (i64.div_u (i64.mul (i64.rem_u (local.get $total) (local.get $d)) (local.get $e)) (local.get $d))))

  (func (export "instantiate") (param $env i32) (param $info i32) (param $msg i32) (result i32)
    (local $s i32)
    (local $n i32)
    (local $ok i32)
    (local $k i32)
    (local $total i64)
    (local $start i64)
    (local $cliff i64)
    (local $d i64)
    (call $string_field (local.get $msg) (i32.const 128) (i32.const 11))
    (local.set $n)
    (local.set $s)
    (local.set $ok (i32.ge_s (local.get $n) (i32.const 0)))
    (call $u64_field (local.get $msg) (i32.const 144) (i32.const 5))
    (local.set $k)
    (local.set $total)
    (local.set $ok (i32.and (local.get $ok) (local.get $k)))
    (call $u64_field (local.get $msg) (i32.const 160) (i32.const 5))
    (local.set $k)
    (local.set $start)
    (local.set $ok (i32.and (local.get $ok) (local.get $k)))
    (call $u64_field (local.get $msg) (i32.const 176) (i32.const 5))
    (local.set $k)
    (local.set $cliff)
    (local.set $ok (i32.and (local.get $ok) (local.get $k)))
    (call $u64_field (local.get $msg) (i32.const 192) (i32.const 8))
    (local.set $k)
    (local.set $d)
    (local.set $ok (i32.and (local.get $ok) (local.get $k)))
    (if (i32.eqz (local.get $ok)) (then (return (call $region (i32.const 400) (i32.const 70)))))
    (if (i32.or
          (i32.or (i64.eqz (local.get $d)) (i64.gt_u (local.get $d) (i64.const 0xffffffff)))
          (i32.or (i64.gt_u (local.get $cliff) (local.get $d))
                  (i64.gt_u (local.get $start) (i64.sub (i64.const -1) (local.get $d)))))
      (then (return (call $region (i32.const 480) (i32.const 83)))))
    (call $db_write (call $region (i32.const 288) (i32.const 1)) (call $region (local.get $s) (local.get $n)))
    (call $put (i32.const 304) (local.get $total))
    (call $put (i32.const 320) (local.get $start))
    (call $put (i32.const 336) (local.get $cliff))
    (call $put (i32.const 352) (local.get $d))
    (call $put (i32.const 368) (i64.const 0))
    (call $region (i32.const 384) (i32.const 9)))

  (func (export "query") (param $env i32) (param $msg i32) (result i32)
    (local $p i32)
    (local $end i32)
    (local $k i32)
    (local $t i64)
    (local.set $end (call $rend (local.get $msg)))
    ;; {"vested": {"time": T}}
    (local.set $p (call $field (call $rptr (local.get $msg)) (local.get $end) (i32.const 208) (i32.const 6)))
    (if (i32.eqz (local.get $p)) (then (return (call $region (i32.const 608) (i32.const 27)))))
    (local.set $p (call $field (local.get $p) (local.get $end) (i32.const 224) (i32.const 4)))
    (if (i32.eqz (local.get $p)) (then (return (call $region (i32.const 608) (i32.const 27)))))
    (call $u64 (local.get $p) (local.get $end))
    (local.set $k)
    (local.set $t)
    (if (i32.eqz (local.get $k)) (then (return (call $region (i32.const 608) (i32.const 27)))))
    (if (i32.eqz (call $beneficiary)) (then (return (call $region (i32.const 576) (i32.const 28)))))
    (local.set $t (call $vested (local.get $t)))
    (call $begin)
    (call $emit (i32.const 640) (i32.const 17))
    (call $emit_u64 (local.get $t))
    (call $emit (i32.const 672) (i32.const 3))
    (call $finish))

  (func (export "execute") (param $env i32) (param $info i32) (param $msg i32) (result i32)
    (local $k i32)
    (local $now i64)
    (local $v i64)
    (local $released i64)
    ;; {"release": {}}
    (if (i32.eqz (call $field (call $rptr (local.get $msg)) (call $rend (local.get $msg)) (i32.const 240) (i32.const 7)))
      (then (return (call $region (i32.const 608) (i32.const 27)))))
    (call $u64_field (local.get $env) (i32.const 224) (i32.const 4))
    (local.set $k)
    (local.set $now)
    (if (i32.eqz (local.get $k)) (then (return (call $region (i32.const 832) (i32.const 32)))))
    (if (i32.eqz (call $beneficiary)) (then (return (call $region (i32.const 576) (i32.const 28)))))
    (local.set $v (call $vested (local.get $now)))
    (local.set $released (call $get (i32.const 368)))
    ;; a clock behind the last release has nothing new to release
    (if (i64.lt_u (local.get $v) (local.get $released)) (then (local.set $v (local.get $released))))
    (call $put (i32.const 368) (local.get $v))
    (call $begin)
    (call $emit (i32.const 688) (i32.const 19))
    (call $emit_u64 (i64.sub (local.get $v) (local.get $released)))
    (call $emit (i32.const 672) (i32.const 3))
    (call $finish))

  (func (export "on_transfer") (param $env i32) (param $info i32) (param $msg i32) (result i32)
    (local $s i32)
    (local $n i32)
    (local $k i32)
    (local $b i32)
    (local $amount i64)
    (local $now i64)
    (local $v i64)
    (local $released i64)
    (call $string_field (local.get $msg) (i32.const 256) (i32.const 4))
    (local.set $n)
    (local.set $s)
    (call $u64_field (local.get $msg) (i32.const 272) (i32.const 6))
    (local.set $k)
    (local.set $amount)
    (if (i32.or (i32.lt_s (local.get $n) (i32.const 0)) (i32.eqz (local.get $k)))
      (then (return (call $region (i32.const 864) (i32.const 48)))))
    (local.set $b (call $beneficiary))
    (if (i32.eqz (local.get $b)) (then (return (call $region (i32.const 576) (i32.const 28)))))
    ;; only the beneficiary's transfers are bounded
    (if (i32.ne (call $rlen (local.get $b)) (local.get $n))
      (then (return (call $region (i32.const 720) (i32.const 21)))))
    (if (i32.eqz (call $eq (call $rptr (local.get $b)) (local.get $s) (local.get $n)))
      (then (return (call $region (i32.const 720) (i32.const 21)))))
    (call $u64_field (local.get $env) (i32.const 224) (i32.const 4))
    (local.set $k)
    (local.set $now)
    (if (i32.eqz (local.get $k)) (then (return (call $region (i32.const 832) (i32.const 32)))))
    (local.set $v (call $vested (local.get $now)))
    (local.set $released (call $get (i32.const 368)))
    (if (i64.lt_u (local.get $v) (local.get $released)) (then (local.set $v (local.get $released))))
    (if (i64.gt_u (local.get $amount) (i64.sub (local.get $v) (local.get $released)))
      (then (return (call $region (i32.const 752) (i32.const 67)))))
    (call $put (i32.const 368) (i64.add (local.get $released) (local.get $amount)))
    (call $region (i32.const 720) (i32.const 21)))
)
