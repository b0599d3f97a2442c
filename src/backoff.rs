//! One exponential backoff for the whole daemon: a device runner
//! reconnecting, the journal writer retrying a failed commit, the uplink
//! retrying a batch. Pure arithmetic on an attempt count, so each caller
//! keeps only that count and the policy is unit-tested in one place.

use std::time::Duration;

/// Doubling from `initial` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max }
    }

    /// The ceiling for the `attempt`-th consecutive failure (1-based):
    /// `initial * 2^(attempt-1)`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let c = self.initial.saturating_mul(1u32 << exp);
        c.min(self.max).max(self.initial.min(self.max))
    }

    /// Delay before retrying after the `attempt`-th consecutive failure:
    /// uniform in `[initial, ceiling(attempt)]`, picked by `jitter` in
    /// [0, 1) (full jitter, floored at `initial` so a failing peer is never
    /// hammered). `jitter = 1.0` gives the plain doubling.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let lo = self.initial.min(self.max);
        let hi = self.ceiling(attempt);
        let j = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        lo + (hi - lo).mul_f64(j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_jitter_stays_in_range() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let c: Vec<u64> = (1..=9).map(|a| b.ceiling(a).as_millis() as u64).collect();
        assert_eq!(c, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(3, f64::NAN), Duration::from_millis(500));
        let mid = b.delay(3, 0.5);
        assert!(mid > Duration::from_millis(500) && mid < Duration::from_secs(2));
        // initial above max: max wins, never panics.
        let odd = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(odd.delay(4, 0.7), Duration::from_secs(1));
    }
}
