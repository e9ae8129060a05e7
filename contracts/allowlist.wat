;; allowlist: a transfer allowlist for a token, ABI ues-1.
;;
;; Messages (JSON; DIDs are compared byte for byte, as they appear in the JSON):
;;   instantiate  info {"sender": admin}, msg {"allowed": ["did:...", ...]}
;;                -> {"ok": {"allowed": <count>}}; the sender becomes the admin
;;   execute      info {"sender": admin}, msg {"allow": "did:..."} or {"deny": "did:..."}
;;                -> {"ok": {}}; anyone else: {"error": "only the admin may change the allowlist"}
;;   on_transfer  msg {"from": did, "to": did, "amount": n, "tokenId"?: id}
;;                -> {"ok": {"allow": true}} if "to" is allowed, else
;;                   {"ok": {"allow": false, "reason": "recipient is not on the allowlist"}}
;;   query        {"allowed": "did:..."} -> {"ok": {"allowed": true|false}}
;;                {"admin": {}}          -> {"ok": {"admin": "did:..."}}
;;
;; State: "admin" -> the admin's DID; "a:<did>" -> "1" for each allowed DID.
(module
  (import "ues" "db_read" (func $db_read (param i32) (result i32)))
  (import "ues" "db_write" (func $db_write (param i32 i32)))
  (import "ues" "db_remove" (func $db_remove (param i32)))

  (memory (export "memory") 1)

  ;; 96..116: scratch for number formatting; 128..4096: constants; 4096..: the bump heap.
  (data (i32.const 128) "admin") ;; 5
  (data (i32.const 256) "a:") ;; 2
  (data (i32.const 384) "1") ;; 1
  (data (i32.const 512) "sender") ;; 6
  (data (i32.const 640) "allowed") ;; 7
  (data (i32.const 768) "allow") ;; 5
  (data (i32.const 896) "deny") ;; 4
  (data (i32.const 1024) "to") ;; 2
  (data (i32.const 1152) "{\"ok\":{\"allow\":true}}") ;; 21
  (data (i32.const 1280) "{\"ok\":{\"allow\":false,\"reason\":\"recipient is not on the allowlist\"}}") ;; 67
  (data (i32.const 1408) "{\"ok\":{}}") ;; 9
  (data (i32.const 1536) "{\"error\":\"info.sender must be a string\"}") ;; 40
  (data (i32.const 1664) "{\"error\":\"msg.allowed must be an array of strings\"}") ;; 51
  (data (i32.const 1792) "{\"error\":\"only the admin may change the allowlist\"}") ;; 51
  (data (i32.const 1920) "{\"error\":\"unknown message\"}") ;; 27
  (data (i32.const 2048) "{\"error\":\"msg.to must be a string\"}") ;; 35
  (data (i32.const 2176) "{\"ok\":{\"allowed\":true}}") ;; 23
  (data (i32.const 2304) "{\"ok\":{\"allowed\":false}}") ;; 24
  (data (i32.const 2432) "{\"ok\":{\"allowed\":") ;; 17
  (data (i32.const 2560) "}}") ;; 2
  (data (i32.const 2688) "{\"ok\":{\"admin\":\"") ;; 16
  (data (i32.const 2816) "\"}}") ;; 3
  (data (i32.const 2944) "{\"error\":\"not instantiated\"}") ;; 28
  (data (i32.const 3072) "{\"error\":\"the value to allow or deny must be a string\"}") ;; 55

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

  ;; ---- the contract ----

  ;; "a:<did>" := "1"
  (func $allow (param $s i32) (param $n i32)
    (call $db_write
      (call $key (i32.const 256) (i32.const 2) (local.get $s) (local.get $n))
      (call $region (i32.const 384) (i32.const 1))))

  ;; Whether "a:<did>" is set.
  (func $allowed (param $s i32) (param $n i32) (result i32)
    (i32.ne (call $db_read (call $key (i32.const 256) (i32.const 2) (local.get $s) (local.get $n))) (i32.const 0)))

  (func (export "instantiate") (param $env i32) (param $info i32) (param $msg i32) (result i32)
    (local $s i32)
    (local $n i32)
    (local $p i32)
    (local $end i32)
    (local $count i64)
    (call $string_field (local.get $info) (i32.const 512) (i32.const 6))
    (local.set $n)
    (local.set $s)
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (call $region (i32.const 1536) (i32.const 40)))))
    (call $db_write (call $region (i32.const 128) (i32.const 5)) (call $region (local.get $s) (local.get $n)))
    (local.set $end (call $rend (local.get $msg)))
    (local.set $p (call $field (call $rptr (local.get $msg)) (local.get $end) (i32.const 640) (i32.const 7)))
    (if (i32.ne (call $byte (local.get $p) (local.get $end)) (i32.const 91))
      (then (return (call $region (i32.const 1664) (i32.const 51)))))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (block $done
      (loop $next
        (local.set $p (call $ws (local.get $p) (local.get $end)))
        (br_if $done (i32.eq (call $byte (local.get $p) (local.get $end)) (i32.const 93)))
        (call $string (local.get $p) (local.get $end))
        (local.set $n)
        (local.set $s)
        (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (call $region (i32.const 1664) (i32.const 51)))))
        (call $allow (local.get $s) (local.get $n))
        (local.set $count (i64.add (local.get $count) (i64.const 1)))
        (local.set $p (call $ws (call $skip_string (local.get $p) (local.get $end)) (local.get $end)))
        (if (i32.eq (call $byte (local.get $p) (local.get $end)) (i32.const 44))
          (then (local.set $p (i32.add (local.get $p) (i32.const 1)))))
        (br $next)))
    (call $begin)
    (call $emit (i32.const 2432) (i32.const 17))
    (call $emit_u64 (local.get $count))
    (call $emit (i32.const 2560) (i32.const 2))
    (call $finish))

  (func (export "execute") (param $env i32) (param $info i32) (param $msg i32) (result i32)
    (local $s i32)
    (local $n i32)
    (local $admin i32)
    (local $end i32)
    (local $p i32)
    (call $string_field (local.get $info) (i32.const 512) (i32.const 6))
    (local.set $n)
    (local.set $s)
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (call $region (i32.const 1536) (i32.const 40)))))
    (local.set $admin (call $db_read (call $region (i32.const 128) (i32.const 5))))
    (if (i32.eqz (local.get $admin)) (then (return (call $region (i32.const 2944) (i32.const 28)))))
    (if (i32.ne (call $rlen (local.get $admin)) (local.get $n))
      (then (return (call $region (i32.const 1792) (i32.const 51)))))
    (if (i32.eqz (call $eq (call $rptr (local.get $admin)) (local.get $s) (local.get $n)))
      (then (return (call $region (i32.const 1792) (i32.const 51)))))
    (local.set $end (call $rend (local.get $msg)))
    ;; {"allow": did}
    (local.set $p (call $field (call $rptr (local.get $msg)) (local.get $end) (i32.const 768) (i32.const 5)))
    (if (local.get $p)
      (then
        (call $string (local.get $p) (local.get $end))
        (local.set $n)
        (local.set $s)
        (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (call $region (i32.const 3072) (i32.const 55)))))
        (call $allow (local.get $s) (local.get $n))
        (return (call $region (i32.const 1408) (i32.const 9)))))
    ;; {"deny": did}
    (local.set $p (call $field (call $rptr (local.get $msg)) (local.get $end) (i32.const 896) (i32.const 4)))
    (if (local.get $p)
      (then
        (call $string (local.get $p) (local.get $end))
        (local.set $n)
        (local.set $s)
        (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (call $region (i32.const 3072) (i32.const 55)))))
        (call $db_remove (call $key (i32.const 256) (i32.const 2) (local.get $s) (local.get $n)))
        (return (call $region (i32.const 1408) (i32.const 9)))))
    (call $region (i32.const 1920) (i32.const 27)))

  (func (export "on_transfer") (param $env i32) (param $info i32) (param $msg i32) (result i32)
    (local $s i32)
    (local $n i32)
    (call $string_field (local.get $msg) (i32.const 1024) (i32.const 2))
    (local.set $n)
    (local.set $s)
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (call $region (i32.const 2048) (i32.const 35)))))
    (if (call $allowed (local.get $s) (local.get $n))
      (then (return (call $region (i32.const 1152) (i32.const 21)))))
    (call $region (i32.const 1280) (i32.const 67)))

  (func (export "query") (param $env i32) (param $msg i32) (result i32)
    (local $s i32)
    (local $n i32)
    (local $admin i32)
    ;; {"allowed": did}
    (if (call $field (call $rptr (local.get $msg)) (call $rend (local.get $msg)) (i32.const 640) (i32.const 7))
      (then
        (call $string_field (local.get $msg) (i32.const 640) (i32.const 7))
        (local.set $n)
        (local.set $s)
        (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (call $region (i32.const 1920) (i32.const 27)))))
        (if (call $allowed (local.get $s) (local.get $n))
          (then (return (call $region (i32.const 2176) (i32.const 23)))))
        (return (call $region (i32.const 2304) (i32.const 24)))))
    ;; {"admin": {}}
    (if (call $field (call $rptr (local.get $msg)) (call $rend (local.get $msg)) (i32.const 128) (i32.const 5))
      (then
        (local.set $admin (call $db_read (call $region (i32.const 128) (i32.const 5))))
        (if (i32.eqz (local.get $admin)) (then (return (call $region (i32.const 2944) (i32.const 28)))))
        (call $begin)
        (call $emit (i32.const 2688) (i32.const 16))
        (call $emit (call $rptr (local.get $admin)) (call $rlen (local.get $admin)))
        (call $emit (i32.const 2816) (i32.const 3))
        (return (call $finish))))
    (call $region (i32.const 1920) (i32.const 27)))
)
