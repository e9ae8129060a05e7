//! Strict, canonical DAG-CBOR.
//!
//! The encoder writes the canonical form: shortest integer and length heads, map keys ordered by
//! length then bytes, floats as 64-bit, links as tag 42 over `0x00 ++ cid`. The decoder accepts
//! only that form and refuses everything else with a typed [`CborError`]: unsorted or duplicate
//! keys, indefinite lengths, non-minimal heads, tags other than 42, non-string keys, trailing
//! bytes, nesting deeper than the configured bound, and (by default) floats.

use std::collections::BTreeMap;

use cid::Cid;

use crate::Ipld;

/// Why bytes are not strict DAG-CBOR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CborError {
    /// Input ended inside a value.
    #[error("unexpected end of input at byte {0}")]
    Eof(usize),
    /// Bytes follow the top-level value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// An integer or length was not written in its shortest form.
    #[error("non-minimal integer or length encoding at byte {0}")]
    NonMinimal(usize),
    /// Indefinite-length strings, lists or maps are not DAG-CBOR.
    #[error("indefinite length at byte {0}")]
    Indefinite(usize),
    /// Map keys out of canonical order.
    #[error("map keys out of canonical order at byte {0}")]
    UnsortedKeys(usize),
    /// The same key twice in a map.
    #[error("duplicate map key {0:?}")]
    DuplicateKey(String),
    /// A map key that is not a string.
    #[error("map key is not a string at byte {0}")]
    NonStringKey(usize),
    /// A tag other than 42.
    #[error("tag {0} is not allowed (only 42)")]
    ForbiddenTag(u64),
    /// A tag-42 payload that is not `0x00 ++ binary CID`.
    #[error("malformed link: {0}")]
    BadLink(String),
    /// A float where AT Protocol data forbids them, or one not written as 64-bit.
    #[error("float not allowed at byte {0}")]
    Float(usize),
    /// A simple value other than false, true, null (undefined included).
    #[error("simple value {0} is not allowed")]
    ForbiddenSimple(u8),
    /// A string that is not UTF-8.
    #[error("invalid UTF-8 at byte {0}")]
    Utf8(usize),
    /// Nesting deeper than [`DecodeOptions::max_depth`].
    #[error("nesting deeper than {0}")]
    TooDeep(usize),
    /// A length that cannot fit in the remaining input.
    #[error("length {0} exceeds the input")]
    TooLong(u64),
    /// An integer outside the range CBOR can carry.
    #[error("integer out of range")]
    IntegerRange,
    /// A value of the wrong kind for the structure being decoded.
    #[error("unexpected {found} where {expected} was expected")]
    Unexpected {
        /// What the structure needed.
        expected: &'static str,
        /// What the input held.
        found: &'static str,
    },
}

/// Deepest nesting of lists and maps in AT Protocol data: what the decoder accepts by default,
/// and so what every other way in (JSON input, records written) must refuse beyond, or a value
/// would be stored that can never be read back.
pub const MAX_DEPTH: usize = 64;

/// Decoder settings.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Deepest nesting of lists and maps accepted.
    pub max_depth: usize,
    /// Accept 64-bit floats (plain IPLD); AT Protocol data forbids them.
    pub allow_floats: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { max_depth: MAX_DEPTH, allow_floats: false }
    }
}

/// Encodes a value in canonical DAG-CBOR.
pub fn encode(value: &Ipld) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(value, &mut out);
    out
}

/// Appends a CBOR head (major type and argument) in its shortest form.
pub fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// Appends a text string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    write_head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends a byte string.
pub fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends a link: tag 42 over `0x00 ++ cid bytes`.
pub fn write_link(out: &mut Vec<u8>, cid: &Cid) {
    out.extend_from_slice(&[0xd8, 42]);
    let bytes = cid.to_bytes();
    write_head(out, 2, bytes.len() as u64 + 1);
    out.push(0);
    out.extend_from_slice(&bytes);
}

/// Canonical DAG-CBOR key order: shorter first, then bytewise.
pub fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

fn encode_into(value: &Ipld, out: &mut Vec<u8>) {
    match value {
        Ipld::Null => out.push(0xf6),
        Ipld::Bool(false) => out.push(0xf4),
        Ipld::Bool(true) => out.push(0xf5),
        Ipld::Integer(i) => {
            if *i >= 0 {
                write_head(out, 0, *i as u64);
            } else {
                write_head(out, 1, (-1 - *i) as u64);
            }
        }
        Ipld::Float(f) => {
            out.push(0xfb);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Ipld::String(s) => write_str(out, s),
        Ipld::Bytes(b) => write_bytes(out, b),
        Ipld::List(items) => {
            write_head(out, 4, items.len() as u64);
            for item in items {
                encode_into(item, out);
            }
        }
        Ipld::Map(map) => {
            write_head(out, 5, map.len() as u64);
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| key_order(a.0, b.0));
            for (k, v) in entries {
                write_str(out, k);
                encode_into(v, out);
            }
        }
        Ipld::Link(cid) => write_link(out, cid),
    }
}

/// Decodes exactly one strict DAG-CBOR value filling all of `bytes`.
pub fn decode(bytes: &[u8], opts: &DecodeOptions) -> Result<Ipld, CborError> {
    let mut r = Reader::new(bytes);
    let v = r.value(opts, 0)?;
    r.finish()?;
    Ok(v)
}

/// Decodes with the default options (AT Protocol data: no floats, depth 64).
pub fn decode_atproto(bytes: &[u8]) -> Result<Ipld, CborError> {
    decode(bytes, &DecodeOptions::default())
}

/// A strict, zero-copy CBOR reader, also used by hand-written decoders of fixed structures
/// (MST nodes, commits) so that they share the same checks.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn kind_name(major: u8) -> &'static str {
    ["unsigned integer", "negative integer", "bytes", "string", "list", "map", "tag", "simple/float"][major as usize]
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far (where the next item starts).
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Fails unless the whole input was consumed.
    pub fn finish(&self) -> Result<(), CborError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(CborError::TrailingBytes(n)),
        }
    }

    fn byte(&mut self) -> Result<u8, CborError> {
        let b = *self.buf.get(self.pos).ok_or(CborError::Eof(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CborError> {
        let rest = (self.buf.len() - self.pos) as u64;
        if n > rest {
            return Err(CborError::TooLong(n));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// Peeks the major type of the next item.
    pub fn peek_major(&self) -> Result<u8, CborError> {
        self.buf.get(self.pos).map(|b| b >> 5).ok_or(CborError::Eof(self.pos))
    }

    /// Reads a head, enforcing the shortest form. Returns (major, additional-info, argument).
    fn head(&mut self) -> Result<(u8, u8, u64), CborError> {
        let at = self.pos;
        let b = self.byte()?;
        let (major, info) = (b >> 5, b & 0x1f);
        let arg = match info {
            0..=23 => info as u64,
            24 => {
                let v = self.byte()? as u64;
                // Simple values (major 7) below 32 must not use the one-byte extension either.
                if v < 24 {
                    return Err(CborError::NonMinimal(at));
                }
                v
            }
            25 => {
                let v = u16::from_be_bytes(self.take(2)?.try_into().expect("2")) as u64;
                if major != 7 && v <= u8::MAX as u64 {
                    return Err(CborError::NonMinimal(at));
                }
                v
            }
            26 => {
                let v = u32::from_be_bytes(self.take(4)?.try_into().expect("4")) as u64;
                if major != 7 && v <= u16::MAX as u64 {
                    return Err(CborError::NonMinimal(at));
                }
                v
            }
            27 => {
                let v = u64::from_be_bytes(self.take(8)?.try_into().expect("8"));
                if major != 7 && v <= u32::MAX as u64 {
                    return Err(CborError::NonMinimal(at));
                }
                v
            }
            31 => return Err(CborError::Indefinite(at)),
            _ => return Err(CborError::NonMinimal(at)), // 28..30 are reserved
        };
        Ok((major, info, arg))
    }

    fn expect_major(&mut self, want: u8, expected: &'static str) -> Result<u64, CborError> {
        let at = self.pos;
        let (major, _, arg) = self.head()?;
        if major != want {
            self.pos = at;
            return Err(CborError::Unexpected { expected, found: kind_name(major) });
        }
        Ok(arg)
    }

    /// Reads a map head; returns its entry count.
    pub fn map_len(&mut self) -> Result<u64, CborError> {
        self.expect_major(5, "map")
    }

    /// Reads a list head; returns its length.
    pub fn list_len(&mut self) -> Result<u64, CborError> {
        self.expect_major(4, "list")
    }

    /// Reads a text string.
    pub fn str(&mut self) -> Result<&'a str, CborError> {
        let n = self.expect_major(3, "string")?;
        let at = self.pos;
        std::str::from_utf8(self.take(n)?).map_err(|_| CborError::Utf8(at))
    }

    /// Reads a byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], CborError> {
        let n = self.expect_major(2, "bytes")?;
        self.take(n)
    }

    /// Reads an unsigned integer.
    pub fn uint(&mut self) -> Result<u64, CborError> {
        self.expect_major(0, "unsigned integer")
    }

    /// Reads null, returning true, or leaves the input untouched and returns false.
    pub fn null(&mut self) -> Result<bool, CborError> {
        if self.buf.get(self.pos) == Some(&0xf6) {
            self.pos += 1;
            return Ok(true);
        }
        if self.pos >= self.buf.len() {
            return Err(CborError::Eof(self.pos));
        }
        Ok(false)
    }

    /// Reads a link (tag 42).
    pub fn link(&mut self) -> Result<Cid, CborError> {
        let tag = self.expect_major(6, "link")?;
        if tag != 42 {
            return Err(CborError::ForbiddenTag(tag));
        }
        self.link_payload()
    }

    fn link_payload(&mut self) -> Result<Cid, CborError> {
        let raw = self.bytes()?;
        let Some((&0, cid_bytes)) = raw.split_first() else {
            return Err(CborError::BadLink("missing 0x00 multibase prefix".into()));
        };
        let cid = Cid::try_from(cid_bytes).map_err(|e| CborError::BadLink(e.to_string()))?;
        // Byte equality, not just length: it also refuses overlong or overflowing varints.
        if cid.to_bytes() != cid_bytes {
            return Err(CborError::BadLink("CID bytes are not in canonical form".into()));
        }
        Ok(cid)
    }

    /// Reads a map key (a string), checking it sorts strictly after `prev`.
    pub fn key(&mut self, prev: Option<&str>) -> Result<&'a str, CborError> {
        let at = self.pos;
        if self.peek_major()? != 3 {
            return Err(CborError::NonStringKey(at));
        }
        let k = self.str()?;
        if let Some(p) = prev {
            match key_order(p, k) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Err(CborError::DuplicateKey(k.to_string())),
                std::cmp::Ordering::Greater => return Err(CborError::UnsortedKeys(at)),
            }
        }
        Ok(k)
    }

    /// Reads any value.
    pub fn value(&mut self, opts: &DecodeOptions, depth: usize) -> Result<Ipld, CborError> {
        if depth > opts.max_depth {
            return Err(CborError::TooDeep(opts.max_depth));
        }
        let at = self.pos;
        let (major, info, arg) = self.head()?;
        Ok(match major {
            0 => Ipld::Integer(arg as i128),
            1 => Ipld::Integer(-1 - arg as i128),
            2 => Ipld::Bytes(self.take(arg)?.to_vec()),
            3 => {
                let s = self.take(arg)?;
                Ipld::String(std::str::from_utf8(s).map_err(|_| CborError::Utf8(at))?.to_string())
            }
            4 => {
                // Each item takes at least one byte: bound the allocation by the input left.
                let mut items = Vec::with_capacity(arg.min((self.buf.len() - self.pos) as u64) as usize);
                for _ in 0..arg {
                    items.push(self.value(opts, depth + 1)?);
                }
                Ipld::List(items)
            }
            5 => {
                let mut map = BTreeMap::new();
                let mut prev: Option<&str> = None;
                for _ in 0..arg {
                    let k = self.key(prev)?;
                    let v = self.value(opts, depth + 1)?;
                    map.insert(k.to_string(), v);
                    prev = Some(k);
                }
                Ipld::Map(map)
            }
            6 => {
                if arg != 42 {
                    return Err(CborError::ForbiddenTag(arg));
                }
                Ipld::Link(self.link_payload()?)
            }
            _ => match (info, arg) {
                (20, _) => Ipld::Bool(false),
                (21, _) => Ipld::Bool(true),
                (22, _) => Ipld::Null,
                (27, bits) if opts.allow_floats => {
                    let f = f64::from_bits(bits);
                    if !f.is_finite() {
                        return Err(CborError::Float(at));
                    }
                    Ipld::Float(f)
                }
                (25..=27, _) => return Err(CborError::Float(at)),
                (_, v) => return Err(CborError::ForbiddenSimple(v as u8)),
            },
        })
    }

    /// Skips one value (with the same strictness), returning its bytes.
    pub fn skip(&mut self, opts: &DecodeOptions) -> Result<&'a [u8], CborError> {
        let start = self.pos;
        self.value(opts, 0)?;
        Ok(&self.buf[start..self.pos])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(bytes: &[u8]) -> Result<Ipld, CborError> {
        decode_atproto(bytes)
    }

    #[test]
    fn refuses_non_canonical_forms() {
        assert!(matches!(strict(&[0x18, 0x05]), Err(CborError::NonMinimal(0))));
        assert!(matches!(strict(&[0x19, 0x00, 0x10]), Err(CborError::NonMinimal(0))));
        assert!(matches!(strict(&[0x9f, 0xff]), Err(CborError::Indefinite(0))));
        assert!(matches!(strict(&[0x01, 0x02]), Err(CborError::TrailingBytes(1))));
        // {"b": 1, "a": 2}: unsorted
        assert!(matches!(strict(&[0xa2, 0x61, b'b', 1, 0x61, b'a', 2]), Err(CborError::UnsortedKeys(_))));
        // {"a": 1, "a": 2}: duplicate
        assert!(matches!(strict(&[0xa2, 0x61, b'a', 1, 0x61, b'a', 2]), Err(CborError::DuplicateKey(_))));
        // {1: 1}: non-string key
        assert!(matches!(strict(&[0xa1, 0x01, 0x01]), Err(CborError::NonStringKey(_))));
        // tag 1 (epoch time)
        assert!(matches!(strict(&[0xc1, 0x01]), Err(CborError::ForbiddenTag(1))));
        // a 64-bit float
        let mut f = vec![0xfb];
        f.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        assert!(matches!(strict(&f), Err(CborError::Float(0))));
        let opts = DecodeOptions { allow_floats: true, ..Default::default() };
        assert_eq!(decode(&f, &opts).unwrap(), Ipld::Float(1.5));
        // undefined
        assert!(matches!(strict(&[0xf7]), Err(CborError::ForbiddenSimple(23))));
        // a huge declared length
        assert!(matches!(strict(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), Err(CborError::TooLong(_))));
    }

    #[test]
    fn a_link_with_an_overflowing_varint_is_refused() {
        // Found by the fuzzer: a 10-byte multihash-code varint whose high bits overflow u64.
        let bytes = [
            0xd8, 0x2a, 0x56, 0x00, 0x01, 0x6e, 0x9a, 0x9a, 0x92, 0x97, 0xff, 0xff, 0xfb, 0x96, 0x80, 0x05, 0x08, 0x00,
            0xff, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00,
        ];
        assert!(matches!(strict(&bytes), Err(CborError::BadLink(_))));
    }

    #[test]
    fn depth_is_bounded_without_recursion_blowup() {
        let bytes = vec![0x81u8; 100_000]; // a list in a list in a list ...
        assert!(matches!(strict(&bytes), Err(CborError::TooDeep(64))));
    }

    #[test]
    fn map_keys_are_written_length_first() {
        let mut m = BTreeMap::new();
        m.insert("bb".to_string(), Ipld::Integer(1));
        m.insert("a".to_string(), Ipld::Integer(2));
        m.insert("c".to_string(), Ipld::Integer(3));
        let bytes = encode(&Ipld::Map(m.clone()));
        assert_eq!(bytes, [0xa3, 0x61, b'a', 2, 0x61, b'c', 3, 0x62, b'b', b'b', 1]);
        assert_eq!(strict(&bytes).unwrap(), Ipld::Map(m));
    }

    #[test]
    fn integers_round_trip_at_every_boundary() {
        for i in [
            0i128,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as i128,
            u32::MAX as i128 + 1,
            u64::MAX as i128,
            -1,
            -24,
            -25,
            -256,
            -257,
            -(u64::MAX as i128) - 1,
        ] {
            let v = Ipld::Integer(i);
            assert_eq!(strict(&encode(&v)).unwrap(), v, "{i}");
        }
    }
}
