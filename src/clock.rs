//! Time for sample timestamps: the monotonic clock mapped to unix time.
//!
//! Everything is measured on the monotonic clock (`Instant`) and mapped to
//! unix seconds through one process-wide offset. A Raspberry Pi has no
//! real-time clock: its wall clock can jump by hours when NTP syncs after
//! boot. [`Clock::check_wall`] (called by the daemon twice a second)
//! notices such a step and records it ([`ClockStep`]). Timestamps follow a
//! forward step at once (they jump forward with it, still monotonic); a
//! backward step is recorded but not applied, so timestamps never go back
//! within a run (the wall clock then stays behind the timeline until the
//! next forward step or restart; `status` shows the difference). Batches
//! carry the steps recorded during them; the audit log has one
//! `clock_step` event per step.

use crate::sync::AtomicF64;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock changes smaller than this are ordinary NTP slewing or timer
/// noise, not steps.
pub const STEP_THRESHOLD_S: f64 = 0.5;

/// A wall-clock step seen while running.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct ClockStep {
    /// When it was noticed, on neuroedge's timeline after the step was
    /// handled (unix seconds).
    pub t: f64,
    /// How far the wall clock jumped (seconds; negative = backwards).
    pub step_s: f64,
    /// How much of it timestamps followed: a forward step, less any
    /// earlier backward step it cancels; 0 for a backward step.
    pub applied_s: f64,
}

struct Steps {
    list: Vec<ClockStep>,
    /// How far the wall clock is behind the timeline because of
    /// unapplied backward steps (<= 0).
    behind: f64,
}

pub struct Clock {
    mono0: Instant,
    /// Unix seconds at `mono0` on neuroedge's timeline.
    offset: AtomicF64,
    steps: Mutex<Steps>,
    step_count: AtomicU64,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The process-wide clock.
pub fn global() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(Clock::new)
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            mono0: Instant::now(),
            offset: AtomicF64::new(wall_unix()),
            steps: Mutex::new(Steps {
                list: Vec::new(),
                behind: 0.0,
            }),
            step_count: AtomicU64::new(0),
        }
    }

    /// Seconds on the monotonic timeline (since this clock was made).
    pub fn mono_now(&self) -> f64 {
        self.mono_of(Instant::now())
    }

    /// Monotonic seconds of an instant (negative if before the clock).
    pub fn mono_of(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.mono0).as_secs_f64()
            - self.mono0.saturating_duration_since(at).as_secs_f64()
    }

    /// Unix seconds of a point on the monotonic timeline.
    pub fn unix_of_mono(&self, mono: f64) -> f64 {
        self.offset.load() + mono
    }

    /// Unix seconds, advancing with the monotonic clock.
    pub fn now_unix(&self) -> f64 {
        self.unix_of_mono(self.mono_now())
    }

    /// Unix seconds of a monotonic instant.
    pub fn unix_at(&self, at: Instant) -> f64 {
        self.unix_of_mono(self.mono_of(at))
    }

    /// Wall clock minus neuroedge's timeline (seconds): about 0 normally,
    /// negative while a backward step is unapplied.
    pub fn wall_offset(&self) -> f64 {
        wall_unix() - self.now_unix()
    }

    /// Compare the wall clock (`wall`, unix seconds read just now) with the
    /// timeline; record and return a step if it moved by more than
    /// [`STEP_THRESHOLD_S`] since the last check.
    pub fn check_wall(&self, wall: f64) -> Option<ClockStep> {
        let mono = self.mono_now();
        let mut steps = crate::sync::lock(&self.steps);
        let discrepancy = wall - self.unix_of_mono(mono);
        let step = discrepancy - steps.behind;
        if step.abs() < STEP_THRESHOLD_S {
            return None;
        }
        // Timestamps follow as far as the wall clock is now ahead of them;
        // whatever leaves the wall clock behind is only recorded.
        let applied_s = discrepancy.max(0.0);
        if applied_s > 0.0 {
            self.offset.store(self.offset.load() + applied_s);
        }
        steps.behind = discrepancy.min(0.0);
        let s = ClockStep {
            t: self.unix_of_mono(mono),
            step_s: step,
            applied_s,
        };
        steps.list.push(s);
        self.step_count.fetch_add(1, Ordering::Release);
        Some(s)
    }

    /// Number of steps recorded so far (cheap; for the batcher's check).
    pub fn step_count(&self) -> u64 {
        self.step_count.load(Ordering::Acquire)
    }

    /// Steps number `from..` (0-based), and the count they end at.
    pub fn steps_from(&self, from: u64) -> (Vec<ClockStep>, u64) {
        let s = crate::sync::lock(&self.steps);
        (
            s.list.iter().skip(from as usize).copied().collect(),
            s.list.len() as u64,
        )
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
        assert!(c.wall_offset().abs() < 0.1);
    }

    #[test]
    fn forward_steps_applied_backward_steps_recorded_only() {
        let c = Clock::new();
        assert_eq!(c.check_wall(wall_unix()), None);
        let before = c.now_unix();
        // NTP sets the clock 2 hours ahead: timestamps follow.
        let s = c.check_wall(wall_unix() + 7200.0).expect("step seen");
        assert!((s.step_s - 7200.0).abs() < 0.1, "{s:?}");
        assert!((s.applied_s - 7200.0).abs() < 0.1, "{s:?}");
        assert!(c.now_unix() - before > 7199.0);
        assert_eq!(c.check_wall(wall_unix() + 7200.0), None);
        // Then 1 hour back: recorded, not applied, the timeline goes on.
        let t0 = c.now_unix();
        let s = c.check_wall(wall_unix() + 3600.0).expect("step seen");
        assert!(
            (s.step_s + 3600.0).abs() < 0.1 && s.applied_s == 0.0,
            "{s:?}"
        );
        assert!(c.now_unix() >= t0);
        // A known backward offset is not reported twice.
        assert_eq!(c.check_wall(wall_unix() + 3600.0), None);
        // The wall clock comes forward 1.5 h: the first hour only cancels
        // the unapplied step, the last half hour is applied.
        let t1 = c.now_unix();
        let s = c
            .check_wall(wall_unix() + 3600.0 + 5400.0)
            .expect("step seen");
        assert!((s.step_s - 5400.0).abs() < 0.1, "{s:?}");
        assert!((s.applied_s - 1800.0).abs() < 0.1, "{s:?}");
        assert!((c.now_unix() - t1 - 1800.0).abs() < 0.1);
        let (steps, n) = c.steps_from(1);
        assert_eq!((steps.len(), n, c.step_count()), (2, 3, 3));
    }
}
