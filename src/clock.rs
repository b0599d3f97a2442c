//! Time for sample timestamps: the monotonic clock mapped to unix time.
//!
//! Timestamps come from `Instant` (monotonic), anchored once to the wall
//! clock, so a wall-clock step (NTP on a Raspberry Pi without RTC) never
//! makes timestamps jump backwards within a run.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    mono0: Instant,
    unix0: f64,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            mono0: Instant::now(),
            unix0: wall_unix(),
        }
    }

    /// Unix seconds, advancing with the monotonic clock.
    pub fn now_unix(&self) -> f64 {
        self.unix0 + self.mono0.elapsed().as_secs_f64()
    }

    /// Unix seconds of a monotonic instant.
    pub fn unix_at(&self, at: Instant) -> f64 {
        self.unix0 + at.saturating_duration_since(self.mono0).as_secs_f64()
            - self.mono0.saturating_duration_since(at).as_secs_f64()
    }
}

/// The wall clock in unix seconds (0 if before 1970).
pub fn wall_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_close_to_wall() {
        let c = Clock::new();
        let a = c.now_unix();
        let b = c.now_unix();
        assert!(b >= a);
        assert!((a - wall_unix()).abs() < 1.0);
        let now = Instant::now();
        assert!((c.unix_at(now) - c.now_unix()).abs() < 0.1);
    }
}
