//! Hybrid logical clocks (Kulkarni, Demirbas et al., "Logical Physical Clocks", 2014).
//!
//! A timestamp is a wall-clock millisecond plus a logical counter. Timestamps a clock issues
//! only grow, stay within one tick of the physical clock when clocks are synchronised, and
//! respect causality: a timestamp issued after receiving one is greater than it. A remote
//! timestamp further in the future than the configured maximum drift is refused, not adopted,
//! so one peer with a broken clock cannot drag every replica's clock forward.

use std::fmt;

use parking_lot::Mutex;

/// A hybrid logical timestamp, ordered by (wall milliseconds, logical counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch (at most 2^48 - 1: year 10889).
    pub wall_ms: u64,
    /// Events within the same millisecond.
    pub logical: u16,
}

impl Timestamp {
    /// Largest wall clock a timestamp can carry.
    pub const MAX_WALL_MS: u64 = (1 << 48) - 1;

    /// The 64-bit form (`wall_ms << 16 | logical`), ordered like the timestamps.
    pub fn to_u64(self) -> u64 {
        (self.wall_ms << 16) | u64::from(self.logical)
    }

    /// From the 64-bit form.
    pub fn from_u64(v: u64) -> Self {
        Self { wall_ms: v >> 16, logical: (v & 0xffff) as u16 }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.logical)
    }
}

/// Why a clock refused to move.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// A remote timestamp is further ahead of the local clock than the allowed drift.
    #[error("timestamp {remote} is {ahead_ms} ms ahead of the local clock (allowed: {max_drift_ms} ms)")]
    TooFarAhead {
        /// The refused timestamp.
        remote: Timestamp,
        /// How far ahead of the physical clock it is.
        ahead_ms: u64,
        /// The configured maximum drift.
        max_drift_ms: u64,
    },
    /// The logical counter would overflow (65,536 events in one millisecond) or the wall clock
    /// passed [`Timestamp::MAX_WALL_MS`].
    #[error("clock exhausted at {0}")]
    Exhausted(Timestamp),
}

/// A hybrid logical clock over a physical clock (milliseconds since the Unix epoch).
pub struct Hlc {
    last: Mutex<Timestamp>,
    max_drift_ms: u64,
    physical: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hlc").field("last", &*self.last.lock()).field("max_drift_ms", &self.max_drift_ms).finish()
    }
}

/// The system clock in milliseconds since the Unix epoch.
pub fn system_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Hlc {
    /// A clock over the system clock refusing remote timestamps more than `max_drift_ms` ahead.
    pub fn new(max_drift_ms: u64) -> Self {
        Self::with_physical(max_drift_ms, system_ms)
    }

    /// A clock over any physical clock (tests drive one by hand).
    pub fn with_physical(max_drift_ms: u64, physical: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self { last: Mutex::new(Timestamp::default()), max_drift_ms, physical: Box::new(physical) }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        *self.last.lock()
    }

    /// A timestamp for a local event (or a message about to be sent): greater than every one
    /// this clock issued or observed before.
    pub fn now(&self) -> Result<Timestamp, ClockError> {
        let pt = (self.physical)();
        let mut last = self.last.lock();
        let next = if pt > last.wall_ms { Timestamp { wall_ms: pt, logical: 0 } } else { bump(*last)? };
        check_wall(next)?;
        *last = next;
        Ok(next)
    }

    /// Whether a remote timestamp is acceptable (not beyond the maximum drift), without
    /// moving the clock.
    pub fn check(&self, remote: Timestamp) -> Result<(), ClockError> {
        let pt = (self.physical)();
        if remote.wall_ms > pt.saturating_add(self.max_drift_ms) {
            return Err(ClockError::TooFarAhead {
                remote,
                ahead_ms: remote.wall_ms - pt,
                max_drift_ms: self.max_drift_ms,
            });
        }
        Ok(())
    }

    /// Observes a remote timestamp (a received operation) and returns a local timestamp greater
    /// than both it and everything before. Refused, with the clock unchanged, when the remote
    /// one is more than the maximum drift ahead of the physical clock.
    pub fn observe(&self, remote: Timestamp) -> Result<Timestamp, ClockError> {
        self.check(remote)?;
        let pt = (self.physical)();
        let mut last = self.last.lock();
        let wall = pt.max(last.wall_ms).max(remote.wall_ms);
        let next = if wall == last.wall_ms && wall == remote.wall_ms {
            bump(Timestamp { wall_ms: wall, logical: last.logical.max(remote.logical) })?
        } else if wall == last.wall_ms {
            bump(*last)?
        } else if wall == remote.wall_ms {
            bump(remote)?
        } else {
            Timestamp { wall_ms: wall, logical: 0 }
        };
        check_wall(next)?;
        *last = next;
        Ok(next)
    }
}

fn bump(t: Timestamp) -> Result<Timestamp, ClockError> {
    match t.logical.checked_add(1) {
        Some(logical) => Ok(Timestamp { wall_ms: t.wall_ms, logical }),
        None => Err(ClockError::Exhausted(t)),
    }
}

fn check_wall(t: Timestamp) -> Result<(), ClockError> {
    if t.wall_ms > Timestamp::MAX_WALL_MS { Err(ClockError::Exhausted(t)) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use proptest::prelude::*;

    use super::*;

    fn manual(start: u64) -> (Hlc, Arc<AtomicU64>) {
        let t = Arc::new(AtomicU64::new(start));
        let t2 = t.clone();
        (Hlc::with_physical(1_000, move || t2.load(Ordering::SeqCst)), t)
    }

    #[test]
    fn follows_the_physical_clock_and_counts_within_a_millisecond() {
        let (c, t) = manual(5_000);
        assert_eq!(c.now().unwrap(), Timestamp { wall_ms: 5_000, logical: 0 });
        assert_eq!(c.now().unwrap(), Timestamp { wall_ms: 5_000, logical: 1 });
        t.store(4_000, Ordering::SeqCst); // the clock steps back
        assert_eq!(c.now().unwrap(), Timestamp { wall_ms: 5_000, logical: 2 }, "never goes back");
        t.store(6_000, Ordering::SeqCst);
        assert_eq!(c.now().unwrap(), Timestamp { wall_ms: 6_000, logical: 0 });
    }

    #[test]
    fn refuses_timestamps_beyond_the_drift_and_stays_put() {
        let (c, _) = manual(10_000);
        let before = c.now().unwrap();
        let far = Timestamp { wall_ms: 11_001, logical: 0 };
        assert!(matches!(c.observe(far), Err(ClockError::TooFarAhead { ahead_ms: 1_001, .. })));
        assert_eq!(c.last(), before, "a refused timestamp is not adopted");
        let near = Timestamp { wall_ms: 11_000, logical: 7 };
        assert_eq!(c.observe(near).unwrap(), Timestamp { wall_ms: 11_000, logical: 8 });
    }

    #[test]
    fn the_logical_counter_is_bounded() {
        let (c, _) = manual(1);
        c.observe(Timestamp { wall_ms: 1, logical: u16::MAX - 1 }).unwrap();
        assert!(matches!(c.now(), Err(ClockError::Exhausted(_))));
    }

    proptest! {
        /// Whatever the physical clock does and whatever is received (within the drift),
        /// every timestamp issued is greater than everything issued or observed before it.
        #[test]
        fn timestamps_only_grow_and_respect_causality(
            steps in proptest::collection::vec((0u64..3_000, any::<bool>(), 0u64..2_000, 0u16..100), 1..200)
        ) {
            let (c, t) = manual(1_000_000);
            let mut high = Timestamp::default();
            for (phys_delta, receive, remote_off, remote_l) in steps {
                // The physical clock wanders up to 1.5 s either way.
                t.store(1_000_000 + phys_delta - 1_500, Ordering::SeqCst);
                let issued = if receive {
                    let remote = Timestamp { wall_ms: t.load(Ordering::SeqCst) + remote_off / 2, logical: remote_l };
                    let got = c.observe(remote).unwrap();
                    prop_assert!(got > remote);
                    got
                } else {
                    c.now().unwrap()
                };
                prop_assert!(issued > high, "{issued} after {high}");
                high = issued;
            }
        }

        #[test]
        fn the_u64_form_round_trips_and_keeps_the_order(a in 0u64..Timestamp::MAX_WALL_MS, al: u16, b in 0u64..Timestamp::MAX_WALL_MS, bl: u16) {
            let (x, y) = (Timestamp { wall_ms: a, logical: al }, Timestamp { wall_ms: b, logical: bl });
            prop_assert_eq!(Timestamp::from_u64(x.to_u64()), x);
            prop_assert_eq!(x.cmp(&y), x.to_u64().cmp(&y.to_u64()));
        }
    }
}
