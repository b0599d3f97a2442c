//! How batches deleted for space reach the log. Each is counted in
//! `status` and has an audit row (see the writer); the log names the first
//! of an episode in full and then sums up the rest once a minute, so that
//! a full quota at a high-density rig (seven 16-MiB batches a second) does
//! not write seven ERROR lines a second to journald. An episode ends at
//! the first minute without an eviction; the next eviction is named in
//! full again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How often an episode's evictions are summed up.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// One batch deleted to make room.
#[derive(Debug, Clone, Copy)]
pub struct Deleted<'a> {
    pub device_id: &'a str,
    pub seq: i64,
    pub n_samples: i64,
    /// It had been uploaded (and was kept by `retain_uploaded`); otherwise
    /// it was unsent, and its samples exist nowhere else.
    pub uploaded: bool,
}

/// A line for the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// The first deletion of an episode.
    First {
        device_id: String,
        seq: i64,
        samples: i64,
        uploaded: bool,
    },
    /// The deletions since the last line.
    Summary(Summary),
}

/// Deletions summed up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub unsent_batches: u64,
    pub unsent_samples: u64,
    pub uploaded_batches: u64,
    /// The devices whose batches were deleted.
    pub devices: BTreeSet<String>,
    /// Over how long.
    pub seconds: f64,
}

impl Summary {
    fn is_empty(&self) -> bool {
        self.unsent_batches == 0 && self.uploaded_batches == 0
    }
}

/// The episode in progress.
#[derive(Debug)]
pub struct EvictionLog {
    every: Duration,
    /// Since when deletions are being summed up (`None`: no episode).
    since: Option<Instant>,
    acc: Summary,
}

impl Default for EvictionLog {
    fn default() -> Self {
        Self::new(SUMMARY_EVERY)
    }
}

impl EvictionLog {
    pub fn new(every: Duration) -> Self {
        EvictionLog {
            every,
            since: None,
            acc: Summary::default(),
        }
    }

    /// Note a transaction's deletions (possibly none) at `now`; returns
    /// the lines to log.
    pub fn record<'a>(
        &mut self,
        deleted: impl IntoIterator<Item = Deleted<'a>>,
        now: Instant,
    ) -> Vec<Line> {
        let mut lines = Vec::new();
        if let Some(since) = self.since {
            if now.duration_since(since) >= self.every {
                if self.acc.is_empty() {
                    self.since = None;
                } else {
                    lines.extend(self.summary(now));
                    self.since = Some(now);
                }
            }
        }
        for d in deleted {
            if self.since.is_none() {
                self.since = Some(now);
                lines.push(Line::First {
                    device_id: d.device_id.to_string(),
                    seq: d.seq,
                    samples: d.n_samples,
                    uploaded: d.uploaded,
                });
                continue;
            }
            if d.uploaded {
                self.acc.uploaded_batches += 1;
            } else {
                self.acc.unsent_batches += 1;
                self.acc.unsent_samples += d.n_samples.max(0) as u64;
            }
            if !self.acc.devices.contains(d.device_id) {
                self.acc.devices.insert(d.device_id.to_string());
            }
        }
        lines
    }

    /// What is left to sum up (at shutdown).
    pub fn finish(&mut self, now: Instant) -> Option<Line> {
        let line = self.summary(now);
        self.since = None;
        line
    }

    fn summary(&mut self, now: Instant) -> Option<Line> {
        if self.acc.is_empty() {
            return None;
        }
        let mut s = std::mem::take(&mut self.acc);
        s.seconds = self
            .since
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        Some(Line::Summary(s))
    }
}

/// Log `line` (an unsent batch lost is an ERROR: data loss).
pub fn log(line: &Line) {
    match line {
        Line::First {
            device_id,
            seq,
            uploaded: true,
            ..
        } => {
            tracing::info!(device = %device_id, seq, "uploaded batch deleted for space (more are summed up once a minute)")
        }
        Line::First {
            device_id,
            seq,
            samples,
            uploaded: false,
        } => tracing::error!(
            device = %device_id,
            seq,
            samples,
            "UNSENT batch evicted for space (when_full = drop_oldest; more are summed up once a minute)"
        ),
        Line::Summary(s) => {
            let devices = s.devices.iter().cloned().collect::<Vec<_>>().join(",");
            if s.unsent_batches > 0 {
                tracing::error!(
                    batches = s.unsent_batches,
                    samples = s.unsent_samples,
                    uploaded_deleted = s.uploaded_batches,
                    devices,
                    seconds = s.seconds,
                    "more UNSENT batches evicted for space (when_full = drop_oldest)"
                )
            } else {
                tracing::info!(
                    batches = s.uploaded_batches,
                    devices,
                    seconds = s.seconds,
                    "more uploaded batches deleted for space"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsent(device_id: &str, seq: i64) -> Deleted<'_> {
        Deleted {
            device_id,
            seq,
            n_samples: 100,
            uploaded: false,
        }
    }

    #[test]
    fn the_first_is_named_then_the_rest_summed_up_each_period_until_a_quiet_one() {
        let mut log = EvictionLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let lines = log.record([unsent("a", 1), unsent("a", 2)], t0);
        assert_eq!(
            lines,
            vec![Line::First {
                device_id: "a".into(),
                seq: 1,
                samples: 100,
                uploaded: false
            }]
        );
        assert!(log.record([unsent("b", 7)], t0 + s(30)).is_empty());
        let uploaded = Deleted {
            uploaded: true,
            ..unsent("a", 3)
        };
        assert!(log.record([uploaded], t0 + s(59)).is_empty());
        // A minute on: the three since the first, summed up.
        let lines = log.record([], t0 + s(61));
        let Line::Summary(sum) = &lines[0] else {
            panic!("{lines:?}")
        };
        assert_eq!(lines.len(), 1);
        assert_eq!((sum.unsent_batches, sum.unsent_samples), (2, 200));
        assert_eq!(sum.uploaded_batches, 1);
        assert_eq!(sum.devices.iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(sum.seconds, 61.0);
        // A minute without any ends the episode; the next is named again.
        assert!(log.record([], t0 + s(100)).is_empty());
        assert!(log.record([], t0 + s(122)).is_empty());
        let lines = log.record([unsent("c", 9)], t0 + s(130));
        assert!(
            matches!(&lines[..], [Line::First { seq: 9, .. }]),
            "{lines:?}"
        );
    }

    #[test]
    fn what_is_left_is_summed_up_at_the_end() {
        let mut log = EvictionLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.finish(t0), None);
        log.record([unsent("a", 1)], t0);
        assert_eq!(log.finish(t0), None, "the first was named already");
        log.record([unsent("a", 2), unsent("a", 3)], t0);
        let Some(Line::Summary(sum)) = log.finish(t0 + Duration::from_secs(5)) else {
            panic!()
        };
        assert_eq!(sum.unsent_batches, 1);
        assert_eq!(log.finish(t0), None);
    }
}
