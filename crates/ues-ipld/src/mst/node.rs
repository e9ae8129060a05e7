//! The MST node's wire form: `{e: [{k, p, t, v}], l}` in canonical DAG-CBOR, keys prefix-compressed.

use cid::Cid;
use sha2::{Digest, Sha256};

use crate::dagcbor::{self, Reader};
use crate::{DAG_CBOR, MstError, cid_sha256};

/// Key depth: leading zero bits of SHA-256(key), counted in 2-bit chunks (fanout 4).
pub fn key_height(key: &[u8]) -> u8 {
    let hash = Sha256::digest(key);
    let mut zeros = 0u32;
    for byte in hash {
        zeros += byte.leading_zeros();
        if byte != 0 {
            break;
        }
    }
    (zeros / 2) as u8
}

/// Bytes `a` and `b` share at the front.
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A decoded node: full keys, values, and child links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireNode {
    /// Link to the subtree left of every entry.
    pub left: Option<Cid>,
    /// (key, value, right subtree) in key order.
    pub entries: Vec<(Vec<u8>, Cid, Option<Cid>)>,
}

fn check_tree_link(cid: &Cid) -> Result<(), MstError> {
    if cid.version() != cid::Version::V1 || cid.codec() != DAG_CBOR || cid.hash().code() != 0x12 {
        return Err(MstError::BadNodeLink(*cid));
    }
    Ok(())
}

/// Encodes a node. `entries` yields (key, value, right) in key order.
pub fn encode<'a>(
    left: Option<&Cid>,
    entries: impl ExactSizeIterator<Item = (&'a [u8], &'a Cid, Option<&'a Cid>)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + entries.len() * 80);
    out.push(0xa2); // map(2)
    dagcbor::write_str(&mut out, "e");
    dagcbor::write_head(&mut out, 4, entries.len() as u64);
    let mut prev: &[u8] = &[];
    for (key, value, right) in entries {
        let p = common_prefix_len(prev, key);
        out.push(0xa4); // map(4): k, p, t, v
        out.extend_from_slice(&[0x61, b'k']);
        dagcbor::write_bytes(&mut out, &key[p..]);
        out.extend_from_slice(&[0x61, b'p']);
        dagcbor::write_head(&mut out, 0, p as u64);
        out.extend_from_slice(&[0x61, b't']);
        match right {
            Some(c) => dagcbor::write_link(&mut out, c),
            None => out.push(0xf6),
        }
        out.extend_from_slice(&[0x61, b'v']);
        dagcbor::write_link(&mut out, value);
        prev = key;
    }
    dagcbor::write_str(&mut out, "l");
    match left {
        Some(c) => dagcbor::write_link(&mut out, c),
        None => out.push(0xf6),
    }
    out
}

fn expect_key(r: &mut Reader<'_>, want: &'static str) -> Result<(), MstError> {
    let k = r.str()?;
    if k != want {
        return Err(MstError::Malformed(format!("expected field {want:?}, found {k:?}")));
    }
    Ok(())
}

fn opt_link(r: &mut Reader<'_>) -> Result<Option<Cid>, MstError> {
    if r.null()? {
        return Ok(None);
    }
    let c = r.link()?;
    check_tree_link(&c)?;
    Ok(Some(c))
}

/// Decodes and checks a node: strict DAG-CBOR, exactly the node's fields, keys strictly
/// ascending, prefix lengths within the previous key, child links in the blessed CID form,
/// at most `max_entries` entries.
pub fn decode(bytes: &[u8], max_entries: usize) -> Result<WireNode, MstError> {
    let mut r = Reader::new(bytes);
    if r.map_len()? != 2 {
        return Err(MstError::Malformed("a node has exactly the fields e and l".into()));
    }
    expect_key(&mut r, "e")?;
    let n = r.list_len()? as usize;
    if n > max_entries {
        return Err(MstError::TooManyEntries { entries: n, max: max_entries });
    }
    let mut entries: Vec<(Vec<u8>, Cid, Option<Cid>)> = Vec::with_capacity(n);
    for _ in 0..n {
        if r.map_len()? != 4 {
            return Err(MstError::Malformed("an entry has exactly the fields k, p, t, v".into()));
        }
        expect_key(&mut r, "k")?;
        let suffix = r.bytes()?;
        expect_key(&mut r, "p")?;
        let p = r.uint()? as usize;
        expect_key(&mut r, "t")?;
        let right = opt_link(&mut r)?;
        expect_key(&mut r, "v")?;
        let value = r.link()?;
        let prev = entries.last().map(|e| e.0.as_slice()).unwrap_or(&[]);
        if p > prev.len() {
            return Err(MstError::Malformed(format!("prefix length {p} exceeds the previous key")));
        }
        let mut key = Vec::with_capacity(p + suffix.len());
        key.extend_from_slice(&prev[..p]);
        key.extend_from_slice(suffix);
        if key.is_empty() {
            return Err(MstError::Malformed("empty key".into()));
        }
        if let Some((last, _, _)) = entries.last() {
            if *last >= key {
                return Err(MstError::UnsortedKeys(String::from_utf8_lossy(&key).into_owned()));
            }
            // Canonical compression: p is exactly the shared prefix, never shorter.
            if common_prefix_len(last, &key) != p {
                return Err(MstError::Malformed("prefix length is not the shared prefix".into()));
            }
        } else if p != 0 {
            return Err(MstError::Malformed("first entry must have prefix length 0".into()));
        }
        entries.push((key, value, right));
    }
    expect_key(&mut r, "l")?;
    let left = opt_link(&mut r)?;
    r.finish()?;
    Ok(WireNode { left, entries })
}

/// The CID of an encoded node.
pub fn node_cid(bytes: &[u8]) -> Cid {
    cid_sha256(DAG_CBOR, bytes)
}
