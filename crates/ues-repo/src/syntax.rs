//! Validated newtypes for the protocol's identifier strings. Each parses once, at the edge;
//! inside the node no bare `String` stands for one of them.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// Why a string is not a valid identifier of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct SyntaxError {
    /// Which identifier kind.
    pub kind: &'static str,
    /// What is wrong (never echoes more than 64 characters of the input).
    pub reason: String,
}

fn err(kind: &'static str, reason: impl Into<String>) -> SyntaxError {
    SyntaxError { kind, reason: reason.into() }
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("static pattern")
}

macro_rules! string_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps.
            pub fn new(s: impl Into<String>) -> Result<Self, SyntaxError> {
                let s = s.into();
                $check(&s)?;
                Ok(Self(s))
            }

            /// The string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = SyntaxError;
            fn from_str(s: &str) -> Result<Self, SyntaxError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

static DID_RE: LazyLock<Regex> = LazyLock::new(|| re(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$"));

fn check_did(s: &str) -> Result<(), SyntaxError> {
    if s.len() > 2048 {
        return Err(err("DID", "longer than 2048 characters"));
    }
    if !DID_RE.is_match(s) {
        return Err(err("DID", "not did:<lowercase method>:<identifier>"));
    }
    Ok(())
}

string_type!(
    /// A DID (`did:plc:...`, `did:web:...`).
    Did, "DID", check_did
);

impl Did {
    /// The method (`plc`, `web`, `key`).
    pub fn method(&self) -> &str {
        self.0[4..].split(':').next().unwrap_or("")
    }
}

static HANDLE_RE: LazyLock<Regex> =
    LazyLock::new(|| re(r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"));

fn check_handle(s: &str) -> Result<(), SyntaxError> {
    if s.len() > 253 {
        return Err(err("handle", "longer than 253 characters"));
    }
    if !HANDLE_RE.is_match(s) {
        return Err(err("handle", "not a domain name with a letter-initial top-level label"));
    }
    Ok(())
}

string_type!(
    /// A handle (a DNS name), compared case-insensitively: [`Handle::normalized`].
    Handle, "handle", check_handle
);

impl Handle {
    /// The lowercase form handles are stored and compared in.
    pub fn normalized(&self) -> Handle {
        Handle(self.0.to_ascii_lowercase())
    }
}

static NSID_RE: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+(\.[a-zA-Z]([a-zA-Z0-9]{0,62})?)$",
    )
});

fn check_nsid(s: &str) -> Result<(), SyntaxError> {
    if s.len() > 317 {
        return Err(err("NSID", "longer than 317 characters"));
    }
    if !NSID_RE.is_match(s) {
        return Err(err("NSID", "not a reversed domain followed by a name"));
    }
    Ok(())
}

string_type!(
    /// A namespaced identifier (`app.bsky.feed.post`).
    Nsid, "NSID", check_nsid
);

impl Nsid {
    /// The last segment (`post`).
    pub fn name(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or("")
    }

    /// Everything before the name (`app.bsky.feed`).
    pub fn authority(&self) -> &str {
        self.0.rsplit_once('.').map_or("", |(a, _)| a)
    }
}

static RKEY_RE: LazyLock<Regex> = LazyLock::new(|| re(r"^[a-zA-Z0-9_~.:-]{1,512}$"));

fn check_rkey(s: &str) -> Result<(), SyntaxError> {
    if s == "." || s == ".." {
        return Err(err("record key", "'.' and '..' are reserved"));
    }
    if !RKEY_RE.is_match(s) {
        return Err(err("record key", "1-512 characters of A-Z a-z 0-9 _ ~ . : -"));
    }
    Ok(())
}

string_type!(
    /// A record key.
    RecordKey, "record key", check_rkey
);

static TID_RE: LazyLock<Regex> = LazyLock::new(|| re(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$"));

fn check_tid(s: &str) -> Result<(), SyntaxError> {
    if !TID_RE.is_match(s) {
        return Err(err("TID", "not 13 characters of base32-sortable"));
    }
    Ok(())
}

string_type!(
    /// A timestamp identifier: 53 bits of microseconds and 10 bits of clock id, base32-sortable.
    Tid, "TID", check_tid
);

const B32_SORTABLE: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

impl Tid {
    /// The TID of a microsecond timestamp and a clock id (0..1024).
    pub fn from_parts(micros: u64, clock_id: u16) -> Tid {
        let v = ((micros & ((1 << 53) - 1)) << 10) | (clock_id as u64 & 0x3ff);
        let s: String = (0..13).rev().map(|i| B32_SORTABLE[((v >> (i * 5)) & 31) as usize] as char).collect();
        Tid(s)
    }

    /// The 64-bit value.
    pub fn value(&self) -> u64 {
        self.0
            .bytes()
            .fold(0u64, |acc, c| (acc << 5) | B32_SORTABLE.iter().position(|&b| b == c).expect("validated") as u64)
    }

    /// Microseconds since the Unix epoch.
    pub fn micros(&self) -> u64 {
        self.value() >> 10
    }
}

/// Generates TIDs that strictly increase, even when the wall clock steps back.
#[derive(Debug)]
pub struct TidGenerator {
    clock_id: u16,
    last: std::sync::Mutex<u64>,
}

impl TidGenerator {
    /// A generator with a clock id (0..1024) that tells this writer apart from others.
    pub fn new(clock_id: u16) -> Self {
        Self { clock_id: clock_id & 0x3ff, last: std::sync::Mutex::new(0) }
    }

    /// The next TID for the current time.
    pub fn next(&self) -> Tid {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        self.next_at(now)
    }

    /// The next TID at `micros` (or just after the last one, if the clock went back).
    pub fn next_at(&self, micros: u64) -> Tid {
        let mut last = self.last.lock().expect("not poisoned");
        let t = micros.max(*last + 1);
        *last = t;
        Tid::from_parts(t, self.clock_id)
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

static DATETIME_RE: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^([0-9]{4})-([01][0-9])-([0-3][0-9])T([0-2][0-9]):([0-6][0-9]):([0-6][0-9])(\.[0-9]{1,20})?(Z|([+-])([0-2][0-9]):([0-5][0-9]))$",
    )
});

fn check_datetime(s: &str) -> Result<(), SyntaxError> {
    let k = "datetime";
    if s.len() > 64 {
        return Err(err(k, "longer than 64 characters"));
    }
    let c = DATETIME_RE.captures(s).ok_or_else(|| err(k, "not an RFC 3339 datetime with a timezone"))?;
    let num = |i: usize| c.get(i).map_or(0, |m| m.as_str().parse::<i64>().expect("digits"));
    let (y, mo, d, h, mi, sec) = (num(1), num(2) as u32, num(3) as u32, num(4), num(5), num(6));
    if s.ends_with("-00:00") {
        return Err(err(k, "-00:00 is not an allowed offset"));
    }
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59 {
        return Err(err(k, "no such date or time"));
    }
    if c.get(9).is_some() {
        let offset = num(10) * 60 + num(11);
        let sign = if &c[9] == "+" { 1 } else { -1 };
        // A positive offset on the first day of year 0 would put the instant before year 0.
        let minutes_into_year0 = if y == 0 { Some(((d as i64 - 1) * 24 + h) * 60 + mi) } else { None };
        if minutes_into_year0.is_some_and(|m| mo == 1 && m - sign * offset < 0) {
            return Err(err(k, "normalizes to a time before year 0"));
        }
    }
    Ok(())
}

string_type!(
    /// A datetime as AT Protocol writes it: RFC 3339 with a timezone.
    Datetime, "datetime", check_datetime
);

impl Datetime {
    /// The instant as Unix milliseconds (fractions beyond milliseconds truncated; the offset
    /// applied). `None` only if it does not fit an `i64`, which valid datetimes always do.
    pub fn unix_millis(&self) -> Option<i64> {
        let c = DATETIME_RE.captures(self.as_str())?;
        let num = |i: usize| c.get(i).map_or(Some(0), |m| m.as_str().parse::<i64>().ok());
        let days = days_from_civil(num(1)?, num(2)?, num(3)?);
        let secs = ((days * 24 + num(4)?) * 60 + num(5)?) * 60 + num(6)?;
        let frac = c.get(7).map_or("", |m| &m.as_str()[1..]);
        let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
        let offset_min = match c.get(9).map(|m| m.as_str()) {
            Some("+") => num(10)? * 60 + num(11)?,
            Some(_) => -(num(10)? * 60 + num(11)?),
            None => 0,
        };
        secs.checked_mul(1000)?.checked_add(ms)?.checked_sub(offset_min * 60_000)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const GRANDFATHERED: &[&str] = &[
    "en-gb-oed",
    "sgn-be-fr",
    "sgn-be-nl",
    "sgn-ch-de",
    "art-lojban",
    "cel-gaulish",
    "no-bok",
    "no-nyn",
    "zh-guoyu",
    "zh-hakka",
    "zh-min",
    "zh-min-nan",
    "zh-xiang",
];

fn check_language(s: &str) -> Result<(), SyntaxError> {
    let k = "language";
    let bad = |r: &str| Err(err(k, r));
    if s.is_empty() || s.len() > 128 {
        return bad("empty or too long");
    }
    if GRANDFATHERED.contains(&s.to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    let parts: Vec<&str> = s.split('-').collect();
    if parts.iter().any(|p| p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return bad("subtags are 1-8 letters or digits");
    }
    let alpha = |p: &str| p.bytes().all(|b| b.is_ascii_alphabetic());
    let digit = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let private_use = |rest: &[&str]| !rest.is_empty();
    let first = parts[0];
    if first.eq_ignore_ascii_case("x") {
        return if private_use(&parts[1..]) { Ok(()) } else { bad("empty private use") };
    }
    if first == "i" {
        return if parts.len() >= 2 { Ok(()) } else { bad("'i' alone") };
    }
    if !(2..=3).contains(&first.len()) || !first.bytes().all(|b| b.is_ascii_lowercase()) {
        return bad("the language subtag is 2-3 lowercase letters");
    }
    let mut i = 1;
    // extlang: up to three 3-letter subtags
    let mut extlangs = 0;
    while i < parts.len() && extlangs < 3 && parts[i].len() == 3 && alpha(parts[i]) {
        i += 1;
        extlangs += 1;
    }
    if i < parts.len() && parts[i].len() == 4 && alpha(parts[i]) {
        i += 1; // script
    }
    if i < parts.len() && ((parts[i].len() == 2 && alpha(parts[i])) || (parts[i].len() == 3 && digit(parts[i]))) {
        i += 1; // region
    }
    let mut variants = std::collections::HashSet::new();
    while i < parts.len() {
        let p = parts[i];
        let is_variant = (5..=8).contains(&p.len()) || (p.len() == 4 && p.as_bytes()[0].is_ascii_digit());
        if !is_variant {
            break;
        }
        if !variants.insert(p.to_ascii_lowercase()) {
            return bad("repeated variant");
        }
        i += 1;
    }
    let mut singletons = std::collections::HashSet::new();
    while i < parts.len() && parts[i].len() == 1 && !parts[i].eq_ignore_ascii_case("x") {
        if !singletons.insert(parts[i].to_ascii_lowercase()) {
            return bad("repeated extension");
        }
        i += 1;
        let start = i;
        while i < parts.len() && (2..=8).contains(&parts[i].len()) {
            i += 1;
        }
        if i == start {
            return bad("empty extension");
        }
    }
    if i < parts.len() && parts[i].eq_ignore_ascii_case("x") {
        return if private_use(&parts[i + 1..]) { Ok(()) } else { bad("empty private use") };
    }
    if i != parts.len() {
        return bad("malformed BCP-47 tag");
    }
    Ok(())
}

string_type!(
    /// A BCP-47 language tag.
    Language, "language", check_language
);

/// A DID or a handle, as XRPC parameters accept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AtIdentifier {
    /// A DID.
    Did(Did),
    /// A handle.
    Handle(Handle),
}

impl std::str::FromStr for AtIdentifier {
    type Err = SyntaxError;
    fn from_str(s: &str) -> Result<Self, SyntaxError> {
        if s.starts_with("did:") {
            Did::new(s).map(AtIdentifier::Did)
        } else {
            Handle::new(s).map(AtIdentifier::Handle).map_err(|_| err("at-identifier", "neither a DID nor a handle"))
        }
    }
}

impl fmt::Display for AtIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AtIdentifier::Did(d) => d.fmt(f),
            AtIdentifier::Handle(h) => h.fmt(f),
        }
    }
}

static FRAGMENT_RE: LazyLock<Regex> = LazyLock::new(|| re(r"^/[a-zA-Z0-9._~:@!$&')(*+,;=%\[\]/-]*$"));

/// An AT-URI: `at://<did or handle>[/<collection>[/<rkey>]][#<fragment>]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AtUri {
    /// The repository.
    pub authority: AtIdentifier,
    /// The collection.
    pub collection: Option<Nsid>,
    /// The record key.
    pub rkey: Option<RecordKey>,
    /// The fragment, without `#`.
    pub fragment: Option<String>,
}

impl std::str::FromStr for AtUri {
    type Err = SyntaxError;
    fn from_str(s: &str) -> Result<Self, SyntaxError> {
        let k = "AT-URI";
        if s.len() > 8192 {
            return Err(err(k, "longer than 8 KiB"));
        }
        let rest = s.strip_prefix("at://").ok_or_else(|| err(k, "does not start with at://"))?;
        let (path, fragment) = match rest.split_once('#') {
            Some((p, f)) => {
                if !FRAGMENT_RE.is_match(f) {
                    return Err(err(k, "bad fragment"));
                }
                (p, Some(f.to_string()))
            }
            None => (rest, None),
        };
        if path.contains('?') {
            return Err(err(k, "query parts are not allowed"));
        }
        let segs: Vec<&str> = path.split('/').collect();
        if segs.len() > 3 || segs.iter().any(|x| x.is_empty()) {
            return Err(err(k, "at most authority/collection/rkey, no empty segments"));
        }
        let authority = segs[0].parse::<AtIdentifier>().map_err(|e| err(k, e.reason))?;
        let collection = segs.get(1).map(|c| Nsid::new(*c)).transpose().map_err(|e| err(k, e.reason))?;
        let rkey = segs.get(2).map(|r| RecordKey::new(*r)).transpose().map_err(|e| err(k, e.reason))?;
        Ok(AtUri { authority, collection, rkey, fragment })
    }
}

impl fmt::Display for AtUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at://{}", self.authority)?;
        if let Some(c) = &self.collection {
            write!(f, "/{c}")?;
        }
        if let Some(r) = &self.rkey {
            write!(f, "/{r}")?;
        }
        if let Some(fr) = &self.fragment {
            write!(f, "#{fr}")?;
        }
        Ok(())
    }
}

static CID_STRING_RE: LazyLock<Regex> = LazyLock::new(|| re(r"^[a-zA-Z0-9+=]{8,256}$"));

/// Checks the syntax of a CID string (any multibase; CIDv0 `Qm...` is refused).
pub fn check_cid_string(s: &str) -> Result<(), SyntaxError> {
    if !CID_STRING_RE.is_match(s) || s.starts_with("Qmb") {
        return Err(err("CID", "not a CIDv1 string"));
    }
    Ok(())
}

static URI_RE: LazyLock<Regex> = LazyLock::new(|| re(r"^[a-zA-Z][a-zA-Z0-9+.-]*:(//)?[^\s/][^\s]*$"));

/// Checks the syntax of a generic URI (scheme, then something without whitespace).
pub fn check_uri(s: &str) -> Result<(), SyntaxError> {
    if s.len() > 8192 || !URI_RE.is_match(s) {
        return Err(err("URI", "not scheme:rest without whitespace, at most 8 KiB"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_to_unix_millis() {
        let ms = |s: &str| Datetime::new(s).unwrap().unix_millis().unwrap();
        assert_eq!(ms("1970-01-01T00:00:00Z"), 0);
        assert_eq!(ms("2026-11-24T12:00:00.123Z"), 1_795_521_600_123);
        assert_eq!(ms("2026-11-24T13:00:00.123456+01:00"), 1_795_521_600_123);
        assert_eq!(ms("2026-11-24T11:30:00.1-00:30"), 1_795_521_600_100);
        assert_eq!(ms("1969-12-31T23:59:59.999Z"), -1);
    }

    #[test]
    fn tids_round_trip_and_stay_monotonic_when_the_clock_steps_back() {
        let t = Tid::from_parts(1_700_000_000_000_000, 7);
        assert_eq!((t.micros(), t.value() & 0x3ff), (1_700_000_000_000_000, 7));
        Tid::new(t.as_str()).unwrap();
        let g = TidGenerator::new(3);
        let a = g.next_at(1_000_000);
        let b = g.next_at(500_000); // the clock went back
        let c = g.next_at(500_000);
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn at_uri_parts() {
        let u: AtUri = "at://did:plc:abc/app.bsky.feed.post/3k2a#/x".parse().unwrap();
        assert_eq!(u.collection.as_ref().unwrap().name(), "post");
        assert_eq!(u.to_string(), "at://did:plc:abc/app.bsky.feed.post/3k2a#/x");
    }
}
