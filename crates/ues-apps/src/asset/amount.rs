//! Amounts: unsigned 128-bit integers in base units, written as decimal strings (AT Protocol
//! integers stop at 2^63 and JavaScript's exact ones at 2^53, token supplies do not), and the
//! royalty a sale pays.

/// The longest decimal an amount may be written with (2^128 - 1 has 39 digits).
pub const MAX_DIGITS: usize = 39;

/// Parses a decimal amount: digits only, no sign, no leading zero but for `0` itself.
pub fn parse(s: &str) -> Result<u128, String> {
    if s.is_empty() || s.len() > MAX_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not an amount (a decimal integer of at most {MAX_DIGITS} digits)"));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(format!("{s:?} has a leading zero"));
    }
    s.parse::<u128>().map_err(|_| format!("{s} is past the largest amount (2^128 - 1)"))
}

/// The royalty on a sale at `price` with `bps` basis points (at most 10,000): the floor of
/// price × bps / 10,000, exact for every price (no overflow), so the remainder goes to the
/// seller, as ERC-2981's integer division does.
pub fn royalty(price: u128, bps: u16) -> u128 {
    let bps = u128::from(bps.min(10_000));
    (price / 10_000) * bps + (price % 10_000) * bps / 10_000
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn amounts_parse_strictly() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("340282366920938463463374607431768211455"), Ok(u128::MAX));
        for bad in ["", "-1", "+1", "01", "1.5", "1e3", " 1", "340282366920938463463374607431768211456"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn royalties_round_down_to_the_seller() {
        assert_eq!(royalty(999, 250), 24);
        assert_eq!(royalty(10_001, 333), 333);
        assert_eq!(royalty(1, 9_999), 0);
        assert_eq!(royalty(12_345, 10_000), 12_345);
        assert_eq!(royalty(u128::MAX, 10_000), u128::MAX);
        assert_eq!(royalty(u128::MAX, 0), 0);
    }

    proptest! {
        #[test]
        fn royalty_is_the_exact_floor(price in any::<u64>(), bps in 0u16..=10_000) {
            let exact = u128::from(price) * u128::from(bps) / 10_000;
            prop_assert_eq!(royalty(u128::from(price), bps), exact);
        }

        #[test]
        fn amounts_round_trip(n in any::<u128>()) {
            prop_assert_eq!(parse(&n.to_string()), Ok(n));
        }
    }
}
