//! Version vectors whose actors are devices (a handful per person, so vectors stay small):
//! for each device, how many of its operations a replica has seen.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A device id: the device's Ed25519 public key (32 bytes).
pub type DeviceId = [u8; 32];

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Both saw exactly the same operations.
    Equal,
    /// The first saw a strict subset of what the second saw.
    Before,
    /// The first saw a strict superset.
    After,
    /// Each saw something the other did not.
    Concurrent,
}

/// For each device, the count of its operations seen (absent = 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(BTreeMap<DeviceId, u64>);

impl VersionVector {
    /// The empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Operations seen from `device`.
    pub fn get(&self, device: &DeviceId) -> u64 {
        self.0.get(device).copied().unwrap_or(0)
    }

    /// Counts one more operation of `device` and returns its sequence number (its dot).
    pub fn increment(&mut self, device: DeviceId) -> u64 {
        let n = self.0.entry(device).or_insert(0);
        *n += 1;
        *n
    }

    /// Sets the count of `device` (0 removes it).
    pub fn set(&mut self, device: DeviceId, n: u64) {
        if n == 0 {
            self.0.remove(&device);
        } else {
            self.0.insert(device, n);
        }
    }

    /// Whether the operation `seq` of `device` is covered.
    pub fn contains(&self, device: &DeviceId, seq: u64) -> bool {
        seq <= self.get(device)
    }

    /// Pointwise maximum: what a replica has seen after receiving what `other` saw.
    pub fn merge(&mut self, other: &VersionVector) {
        for (d, n) in &other.0 {
            let mine = self.0.entry(*d).or_insert(0);
            *mine = (*mine).max(*n);
        }
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let (mut less, mut greater) = (false, false);
        for d in self.0.keys().chain(other.0.keys()) {
            match self.get(d).cmp(&other.get(d)) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// The devices and counts, in device order.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, &u64)> {
        self.0.iter().filter(|(_, n)| **n > 0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn vv(entries: &[(u8, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (d, n) in entries {
            for _ in 0..*n {
                v.increment([*d; 32]);
            }
        }
        v
    }

    #[test]
    fn compare_cases() {
        let a = vv(&[(1, 2), (2, 1)]);
        assert_eq!(a.compare(&a.clone()), Causality::Equal);
        assert_eq!(vv(&[(1, 1)]).compare(&a), Causality::Before);
        assert_eq!(a.compare(&vv(&[(1, 1)])), Causality::After);
        assert_eq!(vv(&[(1, 3)]).compare(&a), Causality::Concurrent);
        assert!(a.contains(&[1; 32], 2) && !a.contains(&[1; 32], 3) && !a.contains(&[9; 32], 1));
    }

    fn arb() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u8..5, 0u64..5), 0..6).prop_map(|e| vv(&e))
    }

    proptest! {
        #[test]
        fn merge_is_a_join(a in arb(), b in arb(), c in arb()) {
            let m = |x: &VersionVector, y: &VersionVector| { let mut z = x.clone(); z.merge(y); z };
            prop_assert_eq!(m(&a, &b).compare(&m(&b, &a)), Causality::Equal, "commutative");
            prop_assert_eq!(m(&m(&a, &b), &c).compare(&m(&a, &m(&b, &c))), Causality::Equal, "associative");
            prop_assert_eq!(m(&a, &a).compare(&a), Causality::Equal, "idempotent");
            let ab = m(&a, &b);
            prop_assert!(matches!(a.compare(&ab), Causality::Before | Causality::Equal), "an upper bound");
            // compare agrees with merge: a <= b exactly when merging b into a changes nothing beyond b.
            let le = matches!(a.compare(&b), Causality::Before | Causality::Equal);
            prop_assert_eq!(le, m(&a, &b).compare(&b) == Causality::Equal);
        }
    }
}
