//! The wire format of blob copies between the devices of an account (`/ues/blob/1`): a device
//! asks another for a piece of a blob its records reference, and the other answers with the
//! piece, not-found, or a refusal. Both decoders are bounded and total: any bytes give a value
//! or an error.

use serde_json::{Value, json};
use ues_repo::ipld::storage::Cid;
use ues_repo::syntax::Did;

/// The most bytes of blob one answer carries.
pub const MAX_PIECE: usize = 512 * 1024;
/// The largest request read.
pub const MAX_REQUEST: usize = 1_024;

/// A request for `len` bytes of blob `cid` of account `did` from `offset` (0 bytes: only its
/// size and MIME type). JSON: `{"did", "cid", "offset", "len"}`, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceRequest {
    /// The account.
    pub did: Did,
    /// The blob.
    pub cid: Cid,
    /// Where the piece starts.
    pub offset: u64,
    /// How many bytes are asked for (the answer carries at most [`MAX_PIECE`]).
    pub len: u32,
}

impl PieceRequest {
    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        json!({"did": self.did.as_str(), "cid": self.cid.to_string(), "offset": self.offset, "len": self.len})
            .to_string()
            .into_bytes()
    }

    /// Reads a request: at most [`MAX_REQUEST`] bytes, the four fields and no other.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() > MAX_REQUEST {
            return Err(format!("a piece request over {MAX_REQUEST} bytes"));
        }
        let v: Value = serde_json::from_slice(b).map_err(|_| "a piece request that is not JSON")?;
        let m = v.as_object().ok_or("a piece request that is not an object")?;
        if m.len() != 4 {
            return Err("a piece request with other fields".into());
        }
        let s = |k: &str| m.get(k).and_then(Value::as_str).ok_or_else(|| format!("no {k}"));
        let n = |k: &str| m.get(k).and_then(Value::as_u64).ok_or_else(|| format!("no {k}"));
        Ok(PieceRequest {
            did: Did::new(s("did")?).map_err(|e| e.to_string())?,
            cid: s("cid")?.parse().map_err(|_| "a malformed CID")?,
            offset: n("offset")?,
            len: u32::try_from(n("len")?).map_err(|_| "a length over 32 bits")?,
        })
    }
}

/// An answer: a status byte, then for a piece the blob's size (u64, big-endian), its MIME type
/// (one length byte, then the bytes) and the piece's bytes; for a refusal its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Bytes of the blob.
    Piece {
        /// The whole blob's size.
        size: u64,
        /// Its MIME type.
        mime: String,
        /// The piece.
        data: Vec<u8>,
    },
    /// The account holds no such blob on the answering device.
    NotFound,
    /// Refused, for this reason.
    Refused(String),
}

impl Answer {
    /// The answer's bytes (a MIME type is cut at 255 bytes).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Answer::Piece { size, mime, data } => {
                let mime = &mime.as_bytes()[..mime.len().min(255)];
                let mut out = Vec::with_capacity(10 + mime.len() + data.len());
                out.push(0);
                out.extend_from_slice(&size.to_be_bytes());
                out.push(mime.len() as u8);
                out.extend_from_slice(mime);
                out.extend_from_slice(data);
                out
            }
            Answer::NotFound => vec![1],
            Answer::Refused(why) => [&[2u8][..], why.as_bytes()].concat(),
        }
    }

    /// Reads an answer: a piece of at most [`MAX_PIECE`] bytes with a MIME type of printable
    /// ASCII, not-found, or a refusal (its reason cut to at most 500 bytes of UTF-8).
    pub fn decode(b: &[u8]) -> Result<Answer, String> {
        match b.split_first() {
            Some((0, rest)) => {
                let size = u64::from_be_bytes(rest.get(..8).ok_or("truncated")?.try_into().expect("8 bytes"));
                let (&n, rest) = rest[8..].split_first().ok_or("truncated")?;
                let mime = rest.get(..n as usize).ok_or("truncated")?;
                let mime = std::str::from_utf8(mime).map_err(|_| "a MIME type that is not UTF-8")?;
                if !mime.contains('/') || !mime.bytes().all(|c| c.is_ascii_graphic()) {
                    return Err(format!("not a MIME type: {mime:?}"));
                }
                let data = &rest[n as usize..];
                if data.len() > MAX_PIECE {
                    return Err(format!("a piece of {} bytes, over {MAX_PIECE}", data.len()));
                }
                Ok(Answer::Piece { size, mime: mime.to_string(), data: data.to_vec() })
            }
            Some((1, [])) => Ok(Answer::NotFound),
            Some((2, why)) => {
                let mut why = String::from_utf8_lossy(&why[..why.len().min(500)]).into_owned();
                let mut cut = why.len().min(500);
                while !why.is_char_boundary(cut) {
                    cut -= 1;
                }
                why.truncate(cut);
                Ok(Answer::Refused(why))
            }
            _ => Err("an unknown answer".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_requests_round_trip_and_malformed_ones_are_errors() {
        for a in [
            Answer::Piece { size: 9, mime: "image/png".into(), data: vec![1, 2, 3] },
            Answer::Piece { size: 0, mime: "application/octet-stream".into(), data: vec![] },
            Answer::NotFound,
            Answer::Refused("NotAuthorized".into()),
        ] {
            assert_eq!(Answer::decode(&a.encode()).unwrap(), a);
        }
        for bad in [&[][..], &[0, 1, 2], &[0, 0, 0, 0, 0, 0, 0, 0, 9, 200, b'a'], &[1, 0], &[7]] {
            assert!(Answer::decode(bad).is_err(), "{bad:?}");
        }
        let mut spaced = Answer::Piece { size: 1, mime: "x/y".into(), data: vec![0] }.encode();
        spaced[11] = b' ';
        assert!(Answer::decode(&spaced).is_err(), "a MIME type with a space");
        let big = Answer::Piece { size: 1 << 40, mime: "x/y".into(), data: vec![0; MAX_PIECE + 1] }.encode();
        assert!(Answer::decode(&big).is_err(), "a piece over the bound");

        let req = PieceRequest {
            did: Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap(),
            cid: "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy".parse().unwrap(),
            offset: 524_288,
            len: 524_288,
        };
        assert_eq!(PieceRequest::decode(&req.encode()).unwrap(), req);
        for bad in [
            &b"{not json"[..],
            br#"{"did":"did:plc:x","cid":"b","offset":0}"#,
            br#"{"did":"did:plc:ewvi7nxzyoun6zhxrhs64oiz","cid":"nope","offset":0,"len":1}"#,
            br#"{"did":"did:plc:ewvi7nxzyoun6zhxrhs64oiz","cid":"bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy","offset":0,"len":5000000000}"#,
        ] {
            assert!(PieceRequest::decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(PieceRequest::decode(&vec![b' '; MAX_REQUEST + 1]).is_err());
    }
}
