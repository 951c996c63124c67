//! Mapping between monotonic time (`Instant`, which drives every timer) and
//! wall-clock unix seconds (which tickets and credential proofs carry).
//!
//! This crate never reads a clock. The I/O layer samples `Instant::now()` and
//! `SystemTime::now()` once, builds a [`Timebase`], and from then on passes
//! only `Instant`s; tests pass a simulated `Instant` and any unix time they like.

use std::time::{Duration, Instant};

/// A pairing of one `Instant` with the unix time (seconds) at that instant.
///
/// ```
/// use std::time::{Duration, Instant};
/// use cloudproxy_proto::Timebase;
///
/// let t0 = Instant::now();
/// let tb = Timebase::new(t0, 1_700_000_000);
/// assert_eq!(tb.unix_at(t0 + Duration::from_secs(90)), 1_700_000_090);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timebase {
    instant: Instant,
    unix_secs: u64,
}

impl Timebase {
    /// Pairs `instant` with `unix_secs`.
    #[must_use]
    pub fn new(instant: Instant, unix_secs: u64) -> Self {
        Self { instant, unix_secs }
    }

    /// Unix seconds at `now` (whole seconds, rounded down).
    #[must_use]
    pub fn unix_at(&self, now: Instant) -> u64 {
        if now >= self.instant {
            self.unix_secs
                .saturating_add((now - self.instant).as_secs())
        } else {
            let back = self.instant - now;
            self.unix_secs
                .saturating_sub(back.as_secs() + u64::from(back.subsec_nanos() > 0))
        }
    }

    /// The `Instant` at which unix time reaches `unix_secs` (clamped to the
    /// timebase's instant for times before it).
    #[must_use]
    pub fn instant_at(&self, unix_secs: u64) -> Instant {
        let ahead = unix_secs.saturating_sub(self.unix_secs);
        self.instant
            .checked_add(Duration::from_secs(ahead))
            .unwrap_or(self.instant + Duration::from_secs(u64::from(u32::MAX)))
    }
}
