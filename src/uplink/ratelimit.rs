//! `max_bytes_per_sec`: a token bucket (one second of burst) that may go
//! into debt by one body, so a batch larger than the burst still goes out
//! and the long-run rate stays at the cap. Pure: time is passed in.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` bytes per second (at least 1), starting full.
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        let rate = rate.max(1) as f64;
        TokenBucket {
            rate,
            capacity: rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Take `bytes` if the bucket is not in debt: returns zero (taken) or
    /// how long to wait before asking again (nothing taken).
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 {
            self.tokens -= bytes as f64;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((-self.tokens / self.rate).max(0.001))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_rate_is_capped() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10_000, t0);
        let mut now = t0;
        let mut sent = 0u64;
        // A sender that asks as often as it is allowed, 3 KB at a time, for 20 s.
        while now < t0 + Duration::from_secs(20) {
            let w = b.take(3_000, now);
            if w.is_zero() {
                sent += 3_000;
            } else {
                now += w;
            }
        }
        // 1 s of burst + 20 s at 10 kB/s + at most one body of debt.
        assert!(sent <= 10_000 + 200_000 + 3_000, "{sent}");
        assert!(sent >= 200_000, "{sent}");
    }

    #[test]
    fn a_body_larger_than_the_burst_still_goes_then_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, t0);
        assert_eq!(b.take(5_000, t0), Duration::ZERO);
        let w = b.take(10, t0);
        assert!(
            w >= Duration::from_millis(3_990) && w <= Duration::from_millis(4_010),
            "{w:?}"
        );
        assert!(!b.take(10, t0 + Duration::from_secs(3)).is_zero());
        assert!(b.take(10, t0 + Duration::from_secs(4)).is_zero());
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut b = TokenBucket::new(100, t0);
        assert!(b.take(100, t0).is_zero());
        let w = b.take(1, t0 - Duration::from_secs(1));
        assert!(w.is_zero(), "not in debt yet: exactly at zero tokens");
        assert!(!b.take(1, t0 - Duration::from_secs(2)).is_zero());
    }
}
