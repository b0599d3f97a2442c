//! Sample timestamps for a device.
//!
//! Devices without a clock of their own (Cyton, ASCII serial, BrainFlow's
//! host-side stamps) only tell us when their bytes arrived, which jitters
//! with USB latency and scheduling. [`Dejitter`] fits an exponentially
//! forgetting least-squares line of receive time on sample index; the
//! stamped time of sample `n` is the line at `n`. The line's slope is the
//! device's true sample period (its crystal drifts from the nominal rate;
//! the effective rate appears in `status`), its intercept the mean
//! latency-corrected start. Everything is on the monotonic timeline
//! ([`crate::clock`]) and mapped to unix seconds when stamped.

/// Forgetting half-life of the fit, in seconds of samples: long enough to
/// average latency jitter away, short enough to track crystal drift with
/// temperature.
pub const HALF_LIFE_S: f64 = 30.0;
/// The prior on the slope (the nominal period) weighs as much as this many
/// seconds of perfectly timed samples, so the first seconds are smooth.
const PRIOR_S: f64 = 2.0;
/// A fitted rate further than this from the nominal one is not believed.
const MAX_RATE_ERROR: f64 = 0.05;
/// A sample this late (seconds; and 20 periods) means the device was
/// silent and samples are missing: more than transport jitter or a
/// scheduling hiccup, and more than a tty buffer holds at EEG data rates.
const LATE_GAP_S: f64 = 1.0;
/// A counted loss shorter than this (seconds) is within delivery jitter:
/// time can neither confirm nor refute it.
const MIN_CHECKABLE_LOSS_S: f64 = 0.25;
/// Recentre the sums when the index has moved this far from the reference
/// (keeps the f64 sums well conditioned over months).
const RECENTRE_AFTER: f64 = 1.0e6;

/// Online regression of receive time (monotonic seconds) on sample index.
#[derive(Debug, Clone)]
pub struct Dejitter {
    /// The device's stated period: the fit never strays further than
    /// [`MAX_RATE_ERROR`] from it, however often it restarts.
    configured_period: f64,
    /// The prior's period: the configured one at first, the fitted one
    /// after a restart.
    nominal_period: f64,
    lambda: f64,
    prior: f64,
    n_ref: u64,
    t_ref: f64,
    sw: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
    count: u64,
}

impl Dejitter {
    pub fn new(nominal_rate: f64) -> Self {
        let rate = if nominal_rate.is_finite() && nominal_rate > 0.0 {
            nominal_rate
        } else {
            1.0
        };
        let half_life_samples = (HALF_LIFE_S * rate).max(8.0);
        // Centred sum of squares of `PRIOR_S` seconds of evenly spaced
        // indices: N^3 / 12.
        let n = (PRIOR_S * rate).max(2.0);
        Dejitter {
            configured_period: 1.0 / rate,
            nominal_period: 1.0 / rate,
            lambda: 0.5f64.powf(1.0 / half_life_samples),
            prior: n * n * n / 12.0,
            n_ref: 0,
            t_ref: 0.0,
            sw: 0.0,
            sx: 0.0,
            sy: 0.0,
            sxx: 0.0,
            sxy: 0.0,
            count: 0,
        }
    }

    /// Forget everything but the period (after a reconnect the latency and
    /// the start are new; the crystal is the same).
    pub fn restart(&mut self) {
        let period = self.period();
        self.sw = 0.0;
        self.sx = 0.0;
        self.sy = 0.0;
        self.sxx = 0.0;
        self.sxy = 0.0;
        self.count = 0;
        self.nominal_period = self.bounded(period);
    }

    /// `period` limited to [`MAX_RATE_ERROR`] around the configured one.
    fn bounded(&self, period: f64) -> f64 {
        if !period.is_finite() {
            return self.configured_period;
        }
        period.clamp(
            self.configured_period * (1.0 - MAX_RATE_ERROR),
            self.configured_period * (1.0 + MAX_RATE_ERROR),
        )
    }

    /// Observations since the start or the last restart.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Add sample `n`, received at monotonic time `t`.
    #[inline]
    pub fn observe(&mut self, n: u64, t: f64) {
        // One bad time would poison the sums for good.
        if !t.is_finite() {
            return;
        }
        if self.count == 0 {
            self.n_ref = n;
            self.t_ref = t;
        }
        let x = n as f64 - self.n_ref as f64;
        let y = t - self.t_ref;
        let l = self.lambda;
        self.sw = l * self.sw + 1.0;
        self.sx = l * self.sx + x;
        self.sy = l * self.sy + y;
        self.sxx = l * self.sxx + x * x;
        self.sxy = l * self.sxy + x * y;
        self.count += 1;
        if x.abs() > RECENTRE_AFTER {
            self.recentre();
        }
    }

    /// Move the reference to the weighted mean (exact transformation of
    /// the sums).
    fn recentre(&mut self) {
        let d = (self.sx / self.sw).round();
        let e = self.sy / self.sw;
        let (sw, sx, sy) = (self.sw, self.sx, self.sy);
        self.sxx = self.sxx - 2.0 * d * sx + d * d * sw;
        self.sxy = self.sxy - d * sy - e * sx + d * e * sw;
        self.sx = sx - d * sw;
        self.sy = sy - e * sw;
        self.n_ref = (self.n_ref as f64 + d) as u64;
        self.t_ref += e;
    }

    /// The fitted sample period (seconds).
    pub fn period(&self) -> f64 {
        if self.sw <= 0.0 {
            return self.nominal_period;
        }
        let mx = self.sx / self.sw;
        let cxx = (self.sxx - mx * self.sx).max(0.0);
        let cxy = self.sxy - mx * self.sy;
        let slope = (cxy + self.prior * self.nominal_period) / (cxx + self.prior);
        self.bounded(slope)
    }

    /// The fitted monotonic time of sample `n` (None before any sample).
    pub fn predict(&self, n: u64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let mx = self.sx / self.sw;
        let my = self.sy / self.sw;
        let x = n as f64 - self.n_ref as f64;
        Some(self.t_ref + my + self.period() * (x - mx))
    }
}

/// Per-device timestamping: the fit plus monotonicity across reconnects.
#[derive(Debug, Clone)]
pub struct Timing {
    fit: Dejitter,
    /// Monotonic time of the last stamped sample.
    last_mono: f64,
}

impl Timing {
    pub fn new(nominal_rate: f64) -> Self {
        Timing {
            fit: Dejitter::new(nominal_rate),
            last_mono: f64::NEG_INFINITY,
        }
    }

    /// A new connection: new latency, new start.
    pub fn restart(&mut self) {
        self.fit.restart();
    }

    /// Monotonic time of the last stamped sample (-inf before any).
    pub fn last_mono(&self) -> f64 {
        self.last_mono
    }

    /// The effective sample rate (Hz) the fit measures.
    pub fn effective_rate(&self) -> f64 {
        1.0 / self.fit.period()
    }

    pub fn period(&self) -> f64 {
        self.fit.period()
    }

    /// Stamp sample `n` received at monotonic `received`: the fitted time,
    /// never earlier than the previous sample's.
    #[inline]
    pub fn stamp_received(&mut self, n: u64, received: f64) -> f64 {
        self.fit.observe(n, received);
        let t = self.fit.predict(n).unwrap_or(received);
        self.monotonic(t)
    }

    /// Stamp sample `n` with a device clock's time (already on the
    /// monotonic timeline); the fit only measures the rate.
    #[inline]
    pub fn stamp_device(&mut self, n: u64, device_t: f64) -> f64 {
        self.fit.observe(n, device_t);
        self.monotonic(device_t)
    }

    #[inline]
    fn monotonic(&mut self, t: f64) -> f64 {
        // A refit may move the line back a little: never stamp a sample
        // before its predecessor (nor at a time that is not a number).
        let t = if t > self.last_mono && t.is_finite() {
            t
        } else {
            self.last_mono
        };
        self.last_mono = t;
        t
    }

    /// A clockless device whose sample `n` arrives far later than the fit
    /// expects (more than 1 s and 20 periods) went silent without saying
    /// so: a paused or stalled device, or bytes lost in transit. Returns
    /// the samples its silence stands for (0 when on time).
    pub fn unexplained_gap(&self, n: u64, received: f64) -> u64 {
        if self.fit.count() < 2 {
            return 0;
        }
        let Some(expected) = self.fit.predict(n) else {
            return 0;
        };
        let period = self.fit.period();
        let late = received - expected;
        if late > LATE_GAP_S.max(20.0 * period) {
            (late / period).round() as u64
        } else {
            0
        }
    }

    /// Samples lost before sample `next` arriving at `received`, given that
    /// a wrapping counter (`modulus` values) shows `counted` lost: adds the
    /// whole wraps the counter cannot show, estimated from time. A count
    /// that time contradicts — the frame arrives about when it would have
    /// with nothing lost, and the count stands for more than
    /// [`MIN_CHECKABLE_LOSS_S`] — is a corrupted counter, not a loss: 0.
    pub fn missing_with_wraps(&self, next: u64, received: f64, counted: u64, modulus: u64) -> u64 {
        if modulus == 0 || self.fit.count() < 2 {
            return counted;
        }
        let Some(expected) = self.fit.predict(next.saturating_add(counted)) else {
            return counted;
        };
        let period = self.fit.period();
        let wrap_s = modulus as f64 * period;
        let late = received - expected;
        let counted_s = counted as f64 * period;
        if counted_s > MIN_CHECKABLE_LOSS_S && late < -0.5 * counted_s {
            return 0;
        }
        if late < 0.5 * wrap_s {
            return counted;
        }
        counted + modulus * (late / wrap_s).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random latency (0..max seconds), bursty like USB.
    fn latency(i: u64, max: f64) -> f64 {
        let mut s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        s ^= s >> 31;
        s = s.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        s ^= s >> 27;
        (s >> 11) as f64 / (1u64 << 53) as f64 * max
    }

    fn std(v: &[f64]) -> f64 {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
    }

    #[test]
    fn a_counter_jump_that_time_contradicts_is_not_a_loss() {
        let mut t = Timing::new(250.0);
        for n in 0..1000u64 {
            t.stamp_received(n, n as f64 / 250.0);
        }
        // Sample 1000 arrives on time but its counter claims 100 lost: a
        // corrupted counter.
        assert_eq!(t.missing_with_wraps(1000, 1000.0 / 250.0, 100, 256), 0);
        // Really lost: it arrives 100 periods later.
        assert_eq!(t.missing_with_wraps(1000, 1100.0 / 250.0, 100, 256), 100);
        // A short loss cannot be checked against time: believed.
        assert_eq!(t.missing_with_wraps(1000, 1000.0 / 250.0, 5, 256), 5);
        // Whole wraps are still added from time.
        assert_eq!(
            t.missing_with_wraps(1000, (1000.0 + 3.0 + 512.0) / 250.0, 3, 256),
            515
        );
    }

    #[test]
    fn restarts_never_move_the_rate_past_its_bound_and_nan_is_ignored() {
        // A device whose receive times claim 20 % too slow, reconnecting
        // again and again: the fit stays within 5 % of the stated rate.
        let mut t = Timing::new(250.0);
        let mut n = 0u64;
        for _ in 0..20 {
            t.restart();
            for _ in 0..500 {
                t.stamp_received(n, n as f64 * 1.2 / 250.0);
                n += 1;
            }
        }
        let rate = t.effective_rate();
        assert!((rate - 250.0 / 1.05).abs() < 1e-6, "{rate}");
        // A NaN receive time: the sample gets the fitted time, the fit is
        // untouched.
        let before = t.last_mono();
        let stamped = t.stamp_received(n, f64::NAN);
        assert!(stamped.is_finite() && stamped > before, "{stamped}");
        assert_eq!(t.effective_rate(), rate);
        assert!(t.stamp_received(n + 1, n as f64 * 1.2 / 250.0) > stamped);
    }

    #[test]
    fn smooths_latency_and_tracks_drift() {
        // A 250 Hz device whose crystal runs 100 ppm fast, delivered in
        // chunks of 10 samples with up to 8 ms of latency.
        let true_rate = 250.0 * 1.0001;
        let mut t = Timing::new(250.0);
        let mut stamps = Vec::new();
        let mut received = Vec::new();
        for n in 0..250 * 120u64 {
            let chunk_end = (n / 10) * 10 + 9;
            let recv = 5.0 + chunk_end as f64 / true_rate + latency(n / 10, 0.008);
            received.push(recv);
            stamps.push(t.stamp_received(n, recv));
        }
        let raw: Vec<f64> = received.windows(2).map(|w| w[1] - w[0]).collect();
        let diffs: Vec<f64> = stamps.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(diffs.iter().all(|d| *d >= 0.0));
        // Raw receive-time differences vary by ~ms; after the fit (past
        // warm-up) by a few microseconds, against a 4 ms period.
        let jitter = std(&diffs[250 * 60..]);
        let raw_jitter = std(&raw[250 * 60..]);
        assert!(jitter < 1e-5, "jitter {jitter}");
        assert!(jitter < raw_jitter / 100.0, "{jitter} vs raw {raw_jitter}");
        assert!(
            (t.effective_rate() - true_rate).abs() < 0.01,
            "{}",
            t.effective_rate()
        );
        // Stamps lag the true times by about the mean latency + chunking.
        let n = stamps.len() - 1;
        let truth = 5.0 + n as f64 / true_rate;
        assert!(
            (stamps[n] - truth).abs() < 0.05,
            "{} vs {}",
            stamps[n],
            truth
        );
    }

    #[test]
    fn wraps_estimated_from_time() {
        let mut t = Timing::new(250.0);
        for n in 0..1000u64 {
            t.stamp_received(n, n as f64 / 250.0 + 0.002);
        }
        // Next sample expected at index 1000; 3 lost by the counter alone.
        let at = |lost: u64| (1000 + lost) as f64 / 250.0 + 0.003;
        assert_eq!(t.missing_with_wraps(1000, at(3), 3, 256), 3);
        // 3 + 256 lost: the counter shows 3, time shows one more wrap.
        assert_eq!(t.missing_with_wraps(1000, at(259), 3, 256), 259);
        assert_eq!(
            t.missing_with_wraps(1000, at(3 + 512 * 2), 3, 256),
            3 + 1024
        );
        // Ordinary latency (100 ms late) is not a wrap.
        assert_eq!(t.missing_with_wraps(1000, at(3) + 0.1, 3, 256), 3);
    }

    #[test]
    fn silence_becomes_a_gap_and_a_new_start() {
        let mut t = Timing::new(200.0);
        for n in 0..1000u64 {
            t.stamp_received(n, n as f64 / 200.0 + 0.003);
        }
        // On time, and a 300 ms hiccup: no gap.
        assert_eq!(t.unexplained_gap(1000, 1000.0 / 200.0 + 0.003), 0);
        assert_eq!(t.unexplained_gap(1000, 1000.0 / 200.0 + 0.3), 0);
        // Silent for 3 s: 600 samples' worth.
        assert_eq!(t.unexplained_gap(1000, 1000.0 / 200.0 + 0.003 + 3.0), 600);
    }

    #[test]
    fn recentring_keeps_the_fit() {
        let mut t = Timing::new(1000.0);
        let mut last = 0.0;
        for n in 0..3_000_000u64 {
            last = t.stamp_received(n, n as f64 / 1000.0 + latency(n, 0.001));
        }
        assert!((last - 2_999_999.0 / 1000.0).abs() < 0.002, "{last}");
        assert!((t.effective_rate() - 1000.0).abs() < 0.01);
    }

    #[test]
    fn restart_keeps_period_and_stays_monotonic() {
        let mut t = Timing::new(250.0);
        for n in 0..500u64 {
            t.stamp_received(n, n as f64 / 250.0);
        }
        let before = t.last_mono();
        t.restart();
        // The device comes back with its receive times slightly earlier
        // than the last stamp (clock noise): stamps must not go back.
        let s = t.stamp_received(600, before - 0.01);
        assert!(s >= before);
        assert!((t.effective_rate() - 250.0).abs() < 0.01);
    }
}
