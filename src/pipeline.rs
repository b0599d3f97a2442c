//! The processing stage of one device: ring -> filter chain -> features ->
//! batcher -> journal queue. Runs on its own thread; never touches disk or
//! network, never blocks on the journal (a full queue drops the batch and
//! reports the loss as a gap in the next one).

use crate::batch::{BatchData, FeatureRecord, FilterDescription, Gap, GapCause, Marker};
use crate::config::{FeaturesSection, FiltersSection, QualitySection};
use crate::dsp::{
    Band, DspError, FeatureConfig, FeatureExtractor, FeatureFrame, FilterBank, FilterSpec,
    QualityThresholds,
};
use crate::journal::JournalTx;
use crate::outlet::{OutletFeed, StreamKind};
use crate::ring::{Block, Consumer};
use crate::stream::StreamInfo;
use crate::telemetry::{DeviceStats, QualitySnapshot};
use crate::view::ViewWriter;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the processing thread sleeps at most when the ring is empty
/// (the producer wakes it at the end of each read that brought frames):
/// how often its heartbeat, markers and rate are updated on a silent
/// device.
const IDLE: Duration = Duration::from_millis(250);

/// The shortest span `samples_per_s` is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// `samples_per_s`: the samples published between two of the ring's
/// publish times at least [`RATE_WINDOW`] apart, over that span. Both
/// ends are moments blocks were published, so a window holds whole blocks
/// and the time they took: a block published late moves the rate by its
/// lateness (10 ms in a 1-s window: 1 %), not by a whole block (measured
/// between the processing thread's turns, one late 100-ms block at a
/// window's edge moved it by 10 %: a CI failure). A device that goes
/// silent for a window reads lower, then 0.
struct RateMeter {
    /// Publish time of the block that opened the window (none before the
    /// first block: its samples arrived in an unknown span).
    since: Option<Instant>,
    /// Samples published after `since`, up to `last`.
    samples: u64,
    /// The latest publish time (or the silent window's end).
    last: Instant,
}

impl RateMeter {
    fn new(now: Instant) -> Self {
        RateMeter {
            since: None,
            samples: 0,
            last: now,
        }
    }

    /// A block of `len` frames published at `published` was taken.
    fn block(&mut self, published: Instant, len: usize) {
        if self.since.is_none() {
            self.since = Some(published);
        } else {
            self.samples += len as u64;
        }
        self.last = self.last.max(published);
    }

    /// The rate, when a window ends at this turn.
    fn update(&mut self, now: Instant) -> Option<f64> {
        let since = self.since?;
        let end = if self.last.saturating_duration_since(since) >= RATE_WINDOW {
            self.last
        } else if now.saturating_duration_since(self.last) >= RATE_WINDOW {
            // Nothing published for a window: the rate falls.
            self.last = now;
            now
        } else {
            return None;
        };
        let rate = self.samples as f64 / end.saturating_duration_since(since).as_secs_f64();
        self.since = Some(end);
        self.samples = 0;
        Some(rate)
    }
}

/// The device's filter chain (contract §4): Butterworth SOS then notches,
/// f64 state per channel carried for the device's whole run.
pub struct FilterStage {
    bank: FilterBank,
    description: FilterDescription,
}

impl FilterStage {
    pub fn new(cfg: &FiltersSection, info: &StreamInfo) -> Result<Self, DspError> {
        let spec = FilterSpec {
            highpass_hz: cfg.highpass_hz,
            lowpass_hz: cfg.lowpass_hz,
            order: cfg.order,
            notch_hz: cfg.notch_hz,
            notch_harmonics: cfg.notch_harmonics,
            notch_q: cfg.notch_q,
        };
        let bank = FilterBank::new(&spec, info.sample_rate, info.channels)?;
        let butter = cfg.highpass_hz.is_some() || cfg.lowpass_hz.is_some();
        let description = FilterDescription {
            highpass_hz: cfg.highpass_hz,
            lowpass_hz: cfg.lowpass_hz,
            order: butter.then_some(cfg.order),
            notch_hz: cfg.notch_hz,
            notch_harmonics: cfg.notch_hz.map(|_| cfg.notch_harmonics),
            notch_q: cfg.notch_hz.map(|_| cfg.notch_q),
            run_start: None,
        };
        Ok(FilterStage { bank, description })
    }

    /// Filter frame-major `raw` into `out` (same length). Allocates nothing.
    #[inline]
    pub fn process(&mut self, raw: &[f32], out: &mut [f32]) {
        // Shapes are fixed by the ring, so this cannot fail; stay total anyway.
        if self.bank.process(raw, out).is_err() {
            out.copy_from_slice(raw);
        }
    }

    pub fn description(&self) -> &FilterDescription {
        &self.description
    }

    /// Note the sample index the chain's run starts at (its first sample),
    /// once; batches carry it so the filtered signal can be reproduced.
    fn start_run_at(&mut self, index: u64) {
        self.description.run_start.get_or_insert(index);
    }

    /// Number of second-order sections in the chain.
    pub fn sections(&self) -> usize {
        self.bank.sos().len()
    }

    /// No section at all: the filtered samples are the raw ones, and
    /// [`Self::process`] is a copy that the processing thread skips.
    pub fn is_identity(&self) -> bool {
        self.sections() == 0
    }
}

/// Welch band powers, RMS and quality every `step_s`, per contract §4.
pub struct FeatureStage {
    extractor: FeatureExtractor,
    band_names: Vec<String>,
    channel_names: Vec<String>,
    /// Emitted records not yet placed in a batch (their window end is
    /// after the current batch's last sample, or the batch is still open).
    pending: Vec<FeatureRecord>,
}

impl FeatureStage {
    pub fn new(
        cfg: &FeaturesSection,
        quality: &QualitySection,
        filters: &FilterStage,
        info: &StreamInfo,
    ) -> Result<Self, DspError> {
        let bands: Vec<Band> = cfg
            .bands
            .iter()
            .map(|(name, [lo, hi])| Band::new(name, *lo, *hi))
            .collect();
        let config = FeatureConfig {
            window_s: cfg.window_s,
            step_s: cfg.step_s,
            bands,
            line_hz: filters.description().notch_hz.unwrap_or(50.0),
            thresholds: QualityThresholds {
                flat_ptp_uv: quality.flat_ptp_uv,
                railed_abs_uv: quality.railed_abs_uv,
                railed_min_fraction: quality.railed_min_fraction,
                noisy_rms_uv: quality.noisy_rms_uv,
                noisy_line_ratio: quality.noisy_line_ratio,
            },
            unfiltered: filters.is_identity(),
        };
        let extractor = FeatureExtractor::new(info.sample_rate, info.channels, &config)?;
        Ok(FeatureStage {
            band_names: cfg.bands.keys().cloned().collect(),
            channel_names: info.channel_names.clone(),
            extractor,
            pending: Vec::new(),
        })
    }

    /// Feed one block; emissions are queued for the batch and published
    /// to the status snapshot (twice a second by default, not per sample).
    pub fn push(&mut self, raw: &[f32], filtered: &[f32], ts: &[f64], stats: &DeviceStats) {
        let (names, channels, pending) = (&self.band_names, &self.channel_names, &mut self.pending);
        let r = self
            .extractor
            .push(raw, filtered, ts, &mut |f: &FeatureFrame<'_>| {
                let band_power: Vec<(String, Vec<f64>)> = names
                    .iter()
                    .enumerate()
                    .map(|(b, n)| {
                        (
                            n.clone(),
                            f.band_power[b * f.channels..(b + 1) * f.channels].to_vec(),
                        )
                    })
                    .collect();
                // Never wait for a status reader: skip this update if one
                // holds the lock (the next comes half a second later).
                if let Some(mut snap) = crate::sync::try_lock(&stats.features) {
                    snap.quality = f
                        .quality
                        .iter()
                        .zip(channels)
                        .map(|(q, name)| QualitySnapshot {
                            channel: name.clone(),
                            state: q.status,
                            rms_uv: q.rms_uv,
                            line_noise_ratio: q.line_noise_ratio,
                        })
                        .collect();
                    snap.band_power.clone_from(&band_power);
                }
                pending.push(FeatureRecord {
                    t: f.t,
                    band_power,
                    rms: f.rms.to_vec(),
                });
            });
        if let Err(e) = r {
            tracing::warn!(device = %stats.id, error = %e, "feature extraction skipped a block");
        }
    }

    /// Records whose window ends at or before `t_end`.
    fn take_until(&mut self, t_end: f64) -> Vec<FeatureRecord> {
        let split = self.pending.partition_point(|r| r.t <= t_end);
        self.pending.drain(..split).collect()
    }
}

/// A batch closes at `[journal] batch_seconds` or when its samples fill
/// this many bytes, whichever comes first. At high density a 1-s batch is
/// tens of MB (384 ch x 30 kHz: 46 MB raw), and every such buffer, with
/// SQLite's copies of the sealed batch, was fresh memory from the kernel
/// each second (page faults and unmapping were a third of the journal
/// thread's time and a tenth of the processing thread's); buffers below
/// glibc's mmap ceiling (32 MiB) are mostly reused instead. Measured at
/// 1024 ch x 30 kHz: 1.55-1.69 -> 1.24 cores, RSS 720-990 -> 454 MiB
/// (docs/performance.md). Small rigs never reach it (8 ch x 250 Hz: 8 KB
/// a second).
pub const MAX_BATCH_SAMPLE_BYTES: usize = 16 << 20;

/// Frames per batch: `batch_seconds` of samples, fewer when they would
/// exceed [`MAX_BATCH_SAMPLE_BYTES`] (raw, plus filtered when stored).
pub fn batch_frames(batch_seconds: f64, rate: f64, channels: usize, store_filtered: bool) -> usize {
    let by_time = (batch_seconds * rate).round() as usize;
    let frame_bytes = channels.max(1) * 4 * if store_filtered { 2 } else { 1 };
    by_time.min(MAX_BATCH_SAMPLE_BYTES / frame_bytes).max(1)
}

/// Everything the processing thread needs.
pub struct Processing {
    pub device_id: String,
    pub info: StreamInfo,
    pub units: String,
    pub batch_frames: usize,
    /// Whether batches carry the filtered signal (`[journal] store`); the
    /// filter runs either way (outlets, features, live view).
    pub store_filtered: bool,
    /// Sample index (journal-wide) of ring index 0.
    pub index_offset: u64,
    pub filters: FilterStage,
    pub features: FeatureStage,
    pub journal: JournalTx,
    /// Wait for the journal instead of dropping: only for a source that can
    /// itself wait (unpaced synthetic), so backpressure reaches the source.
    pub backpressure: bool,
    pub markers: crossbeam_channel::Receiver<Marker>,
    pub stats: Arc<DeviceStats>,
    /// The live view for socket subscribers (folds nothing while nobody
    /// subscribed; never waits).
    pub view: ViewWriter,
    /// The device's LSL outlets (copies what they publish; never waits).
    pub outlets: OutletFeed,
}

struct Batcher {
    current: BatchData,
    /// Gap to prepend to the next batch after a dropped one.
    carry_gap: Option<Gap>,
    /// Markers waiting for the batch whose time span reaches them.
    markers: Vec<Marker>,
    /// Clock steps already put into a batch.
    clock_steps_seen: u64,
}

impl Processing {
    fn new_batch(&self) -> BatchData {
        let ch = self.info.channels;
        BatchData {
            device_id: self.device_id.clone(),
            sample_rate: self.info.sample_rate,
            channels: self.info.channel_names.clone(),
            units: self.units.clone(),
            first_sample: 0,
            timestamps: Vec::with_capacity(self.batch_frames),
            raw: Vec::with_capacity(self.batch_frames * ch),
            filtered: Vec::with_capacity(if self.store_filtered {
                self.batch_frames * ch
            } else {
                0
            }),
            filter: self.filters.description().clone(),
            features: Vec::new(),
            markers: Vec::new(),
            gaps: Vec::new(),
            clock_steps: Vec::new(),
        }
    }

    /// Run until the producer is gone and the ring is drained; the partial
    /// batch is sent last.
    pub fn run(mut self, mut ring: Consumer) {
        let ch = self.info.channels;
        let mut filtered = vec![0.0f32; 0];
        let mut batcher = Batcher {
            current: self.new_batch(),
            carry_gap: None,
            markers: Vec::new(),
            clock_steps_seen: 0,
        };
        // Ring index 0 is this run's first sample: anything missing before
        // the first block read (dropped while the stage was starting) is a
        // gap like any other.
        let mut expected = self.index_offset;
        let mut rate = RateMeter::new(Instant::now());
        loop {
            match ring.pop() {
                Some(block) => {
                    // Markers queued so far first: one sent just before
                    // this block's samples belongs in the batch they close.
                    self.take_markers(&mut batcher);
                    if !self.filters.is_identity() && filtered.len() < block.samples().len() {
                        // Grows once to the block size, then never again.
                        filtered.resize(block.samples().len(), 0.0);
                    }
                    self.handle_block(&block, &mut filtered, &mut batcher, &mut expected, ch);
                    rate.block(block.published, block.len());
                    ring.recycle(block);
                }
                None if ring.is_finished() => break,
                None => ring.wait(IDLE),
            }
            self.take_markers(&mut batcher);
            self.stats
                .heartbeat
                .store(crate::clock::global().mono_now());
            if let Some(r) = rate.update(Instant::now()) {
                self.stats.samples_per_s.store(r);
            }
        }
        self.take_markers(&mut batcher);
        if !batcher.current.timestamps.is_empty() {
            let mut b = std::mem::take(&mut batcher.current);
            // The run ends: every marker still waiting goes into the last batch.
            b.markers.append(&mut batcher.markers);
            self.send(b, &mut batcher);
        }
        if !batcher.markers.is_empty() {
            // Markers after the last sample: they still must not be lost.
            tracing::warn!(device = %self.device_id, markers = batcher.markers.len(), "markers after the last sample of the run were not journaled (no batch to carry them)");
        }
    }

    /// Markers from `mark`, the driver (LSL marker inlet, BrainFlow) go
    /// into the batches and out on the `markers` outlet.
    fn take_markers(&mut self, batcher: &mut Batcher) {
        while let Ok(m) = self.markers.try_recv() {
            self.outlets.marker(&m);
            batcher.markers.push(m);
        }
    }

    fn handle_block(
        &mut self,
        block: &Block,
        filtered: &mut [f32],
        batcher: &mut Batcher,
        expected: &mut u64,
        ch: usize,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let first = block.first_index + self.index_offset;
        let exp = *expected;
        if first > exp {
            let jump = first - exp;
            let device = block.device_gap_before.min(jump);
            let overflow = jump - device;
            if overflow > 0 {
                self.stats.dropped_samples.fetch_add(overflow, Relaxed);
                batcher.current.gaps.push(Gap {
                    before_sample: first,
                    missing: overflow,
                    cause: GapCause::Overflow,
                });
                self.stats.gaps.fetch_add(1, Relaxed);
            }
            if device > 0 {
                batcher.current.gaps.push(Gap {
                    before_sample: first,
                    missing: device,
                    cause: GapCause::Device,
                });
                self.stats.gaps.fetch_add(1, Relaxed);
            }
        }
        let n = block.len();
        self.filters.start_run_at(first);
        *expected = first + n as u64;
        self.stats.set_next_sample(first + n as u64);
        let raw = block.samples();
        let out: &[f32] = if self.filters.is_identity() {
            raw
        } else {
            let out = &mut filtered[..raw.len()];
            self.filters.process(raw, out);
            out
        };
        let ts = block.timestamps();
        self.view.push(first, raw, out, ts);
        self.outlets.samples(StreamKind::Raw, raw, ts);
        self.outlets.samples(StreamKind::Filtered, out, ts);
        let emitted = self.features.pending.len();
        self.features.push(raw, out, ts, &self.stats);
        for rec in &self.features.pending[emitted..] {
            self.outlets.features(rec);
        }
        let mut k = 0;
        while k < n {
            let b = &mut batcher.current;
            if b.timestamps.is_empty() {
                b.first_sample = first + k as u64;
                b.filter.run_start = self.filters.description().run_start;
            }
            let take = (self.batch_frames - b.timestamps.len()).min(n - k);
            b.timestamps.extend_from_slice(&ts[k..k + take]);
            b.raw.extend_from_slice(&raw[k * ch..(k + take) * ch]);
            if self.store_filtered {
                b.filtered.extend_from_slice(&out[k * ch..(k + take) * ch]);
            }
            k += take;
            if b.timestamps.len() >= self.batch_frames {
                let next = self.new_batch();
                let full = std::mem::replace(&mut batcher.current, next);
                self.send(full, batcher);
            }
        }
        self.stats.samples_total.fetch_add(n as u64, Relaxed);
        if let Some(t) = ts.last() {
            self.stats.last_sample_unix.store(*t);
            self.stats
                .last_sample_mono
                .store(crate::clock::global().mono_now());
        }
    }

    /// Hand a finished batch to the journal, never waiting. A refused batch
    /// becomes a gap at the start of the next one.
    fn send(&mut self, mut b: BatchData, batcher: &mut Batcher) {
        use std::sync::atomic::Ordering::Relaxed;
        let t_end = b.timestamps.last().copied().unwrap_or(f64::NEG_INFINITY);
        b.features = self.features.take_until(t_end);
        // Markers go into the batch covering their time (one from before
        // the batch, e.g. arriving late, goes into the first batch sent).
        if !batcher.markers.is_empty() {
            let (now, later): (Vec<Marker>, Vec<Marker>) = std::mem::take(&mut batcher.markers)
                .into_iter()
                .partition(|m| m.t <= t_end);
            b.markers.extend(now);
            batcher.markers = later;
        }
        let clock = crate::clock::global();
        if clock.step_count() > batcher.clock_steps_seen {
            let (steps, seen) = clock.steps_from(batcher.clock_steps_seen);
            b.clock_steps = steps;
            batcher.clock_steps_seen = seen;
        }
        if let Some(g) = batcher.carry_gap.take() {
            b.carry_gap(g);
        }
        let n = b.n_samples() as u64;
        let gap = Gap::covering(&b, GapCause::Journal);
        let taken = if self.backpressure {
            self.journal.send_batch_blocking(b)
        } else {
            self.journal.try_send_batch(b)
        };
        if !taken {
            self.stats.dropped_samples.fetch_add(n, Relaxed);
            self.stats.gaps.fetch_add(1, Relaxed);
            batcher.carry_gap = Some(gap);
            tracing::warn!(device = %self.device_id, samples = n, "journal queue full: batch dropped, recorded as a gap");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FeaturesSection, FiltersSection, QualitySection};
    use crate::journal::JournalTx;
    use crate::ring;

    const CH: usize = 2;
    const RATE: f64 = 100.0;

    /// A processing stage on a ring of `capacity` frames in blocks of 10,
    /// batches of 25 frames, journal queue of `queue` batches.
    type Stage = (
        ring::Producer,
        std::thread::JoinHandle<()>,
        crate::journal::writer::TestJournal,
        crossbeam_channel::Sender<Marker>,
        Arc<DeviceStats>,
    );

    /// Feeds a meter 25-frame blocks every 100 ms (250 Hz), publish times
    /// `late` later where given; the processing thread turns `turn_delay`
    /// after each publish and at idle timeouts between. Returns the rates.
    fn rates(blocks: usize, late: &[(usize, u64)], turn_delay: u64) -> Vec<f64> {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut meter = RateMeter::new(at(0));
        let mut out = Vec::new();
        for k in 0..blocks {
            let extra = late.iter().find(|(i, _)| *i == k).map_or(0, |l| l.1);
            let published = 100 * k as u64 + 7 + extra;
            // An idle turn before the block, then the turn that takes it.
            out.extend(meter.update(at(published.saturating_sub(50))));
            meter.block(at(published), 25);
            out.extend(meter.update(at(published + turn_delay)));
        }
        out
    }

    #[test]
    fn the_rate_counts_whole_blocks_over_their_publish_times() {
        let steady = rates(60, &[], 1);
        assert_eq!(steady.len(), 5, "{steady:?}");
        assert!(
            steady.iter().all(|r| (r - 250.0).abs() < 1e-6),
            "{steady:?}"
        );
        // A late turn (the processing thread busy) changes nothing.
        let slow = rates(60, &[], 180);
        assert!(slow.iter().all(|r| (r - 250.0).abs() < 1e-6), "{slow:?}");
        // A block 30 ms late at a window's edge (block 10 ends the first
        // window): its lateness, not a block, moves the first window; the
        // second, 0.97 s at block 20, runs on to block 21.
        let late = rates(60, &[(10, 30)], 1);
        assert_eq!(late.len(), 5, "{late:?}");
        assert!((late[0] - 250.0 / 1.03).abs() < 0.01, "{late:?}");
        assert!((late[1] - 275.0 / 1.07).abs() < 0.01, "{late:?}");
        assert!(
            late[2..].iter().all(|r| (r - 250.0).abs() < 1e-6),
            "{late:?}"
        );
    }

    #[test]
    fn a_silent_device_reads_lower_then_zero() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut meter = RateMeter::new(at(0));
        // Nothing ever published: no rate at all.
        assert_eq!(meter.update(at(5000)), None);
        for k in 0..=10u64 {
            meter.block(at(100 * k), 25);
        }
        assert_eq!(meter.update(at(1000)), Some(250.0));
        // Silent from 1.0 s: nothing until a window has passed without a
        // block, then 0, and 0 again a window later.
        assert_eq!(meter.update(at(1900)), None);
        assert_eq!(meter.update(at(2000)), Some(0.0));
        assert_eq!(meter.update(at(2500)), None);
        assert_eq!(meter.update(at(3000)), Some(0.0));
        // Back: the first block counts over the silence since the last window.
        meter.block(at(3500), 25);
        meter.block(at(4000), 25);
        assert_eq!(meter.update(at(4000)), Some(50.0));
    }

    #[test]
    fn batches_last_batch_seconds_unless_their_samples_exceed_the_byte_cap() {
        // Small rigs: batch_seconds decides.
        assert_eq!(batch_frames(1.0, 250.0, 8, false), 250);
        assert_eq!(batch_frames(2.5, 250.0, 8, true), 625);
        // 384 ch x 30 kHz: 46 MB a second, capped at 16 MiB of samples.
        let f = batch_frames(1.0, 30_000.0, 384, false);
        assert_eq!(f, MAX_BATCH_SAMPLE_BYTES / (384 * 4));
        assert!(
            f * 384 * 4 <= MAX_BATCH_SAMPLE_BYTES && (f + 1) * 384 * 4 > MAX_BATCH_SAMPLE_BYTES
        );
        // Stored filtered samples count too.
        assert_eq!(batch_frames(1.0, 30_000.0, 384, true), f / 2);
        // Never empty, whatever the frame size.
        assert_eq!(batch_frames(1.0, 30_000.0, 4 << 20, true), 1);
        assert_eq!(batch_frames(0.0001, 100.0, 8, false), 1);
    }

    fn stage(capacity: usize, queue: usize) -> Stage {
        stage_after(capacity, queue, |_| {})
    }

    /// As [`stage`], calling `before` on the producer before the stage's
    /// thread starts reading.
    fn stage_after(
        capacity: usize,
        queue: usize,
        before: impl FnOnce(&mut ring::Producer),
    ) -> Stage {
        stage_with(capacity, queue, before, OutletFeed::disabled())
    }

    /// As [`stage_after`], publishing on `outlets`.
    fn stage_with(
        capacity: usize,
        queue: usize,
        before: impl FnOnce(&mut ring::Producer),
        outlets: OutletFeed,
    ) -> Stage {
        let info = StreamInfo {
            sample_rate: RATE,
            channels: CH,
            channel_names: vec!["a".into(), "b".into()],
            chunk_s: 0.0,
        };
        let (mut producer, consumer, _) = ring::ring(CH, capacity, 10);
        before(&mut producer);
        let (journal, rx) = JournalTx::for_tests(queue);
        let (mtx, mrx) = crossbeam_channel::bounded(16);
        let stats = Arc::new(DeviceStats::new("d", "synthetic", true));
        let filters = FilterStage::new(&FiltersSection::default(), &info).unwrap();
        let p = Processing {
            device_id: "d".into(),
            info: info.clone(),
            units: "uV".into(),
            batch_frames: 25,
            store_filtered: true,
            index_offset: 1000,
            features: FeatureStage::new(
                &FeaturesSection::default(),
                &QualitySection::default(),
                &filters,
                &info,
            )
            .unwrap(),
            filters,
            journal,
            backpressure: false,
            markers: mrx,
            stats: stats.clone(),
            view: ViewWriter::new(crate::view::View::new("d", RATE, &info.channel_names, "uV")),
            outlets,
        };
        let h = std::thread::spawn(move || p.run(consumer));
        (producer, h, rx, mtx, stats)
    }

    fn push(p: &mut ring::Producer, n: usize) {
        for _ in 0..n {
            let i = p.next_index();
            p.push(i as f64 / RATE, &[i as f32, -(i as f32)]);
        }
        p.flush();
    }

    fn collect(rx: &crate::journal::writer::TestJournal) -> Vec<BatchData> {
        rx.batches.try_iter().collect()
    }

    #[test]
    fn batches_split_by_count_with_contiguous_indices_and_a_partial_last() {
        let (mut p, h, rx, _m, stats) = stage(1000, 64);
        push(&mut p, 60);
        drop(p);
        h.join().unwrap();
        let b = collect(&rx);
        let sizes: Vec<usize> = b.iter().map(BatchData::n_samples).collect();
        assert_eq!(sizes, [25, 25, 10], "the partial batch is sent at the end");
        let firsts: Vec<u64> = b.iter().map(|b| b.first_sample).collect();
        assert_eq!(
            firsts,
            [1000, 1025, 1050],
            "indices continue from index_offset"
        );
        assert!(b.iter().all(|b| b.gaps.is_empty()));
        assert_eq!(b[1].raw[0], 25.0);
        assert_eq!(b[1].raw[1], -25.0);
        assert_eq!(b[1].filtered, b[1].raw, "no filter: filtered equals raw");
        assert_eq!(
            stats
                .samples_total
                .load(std::sync::atomic::Ordering::Relaxed),
            60
        );
        assert_eq!(stats.next_sample(), Some(1060));
    }

    #[test]
    fn device_and_overflow_gaps_are_told_apart() {
        // A device gap of 7 after 20 frames: indices 20..27 are missing.
        let (mut p, h, rx, _m, stats) = stage(1000, 64);
        push(&mut p, 20);
        p.skip(7);
        push(&mut p, 30);
        drop(p);
        h.join().unwrap();
        let b = collect(&rx);
        let gaps: Vec<&Gap> = b.iter().flat_map(|b| &b.gaps).collect();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(
            (gaps[0].before_sample, gaps[0].missing, gaps[0].cause),
            (1027, 7, GapCause::Device)
        );
        assert_eq!(
            stats
                .dropped_samples
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        let total: usize = b.iter().map(BatchData::n_samples).sum();
        assert_eq!(total, 50);
        let last = b.last().unwrap();
        assert_eq!(last.end_sample(), 1057, "indices count the missing ones");

        // A ring of 40 frames filled with 100 before the stage reads: the
        // oldest are dropped and reported as one overflow gap.
        let (p, h, rx, _m, stats) = stage_after(40, 64, |p| push(p, 100));
        drop(p);
        h.join().unwrap();
        let b = collect(&rx);
        let kept: usize = b.iter().map(BatchData::n_samples).sum();
        let dropped = stats
            .dropped_samples
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            kept < 100 && dropped == 100 - kept as u64,
            "{kept} kept, {dropped} dropped"
        );
        let gaps: Vec<&Gap> = b.iter().flat_map(|b| &b.gaps).collect();
        assert!(
            gaps.iter().all(|g| g.cause == GapCause::Overflow),
            "{gaps:?}"
        );
        assert_eq!(gaps.iter().map(|g| g.missing).sum::<u64>(), dropped);
        assert_eq!(b.last().unwrap().end_sample(), 1100);
    }

    #[test]
    fn a_full_journal_queue_drops_the_batch_as_a_gap_carried_into_the_next() {
        // Queue of one batch, nobody reading: the second batch is refused.
        let (mut p, h, rx, _m, stats) = stage(1000, 1);
        push(&mut p, 50);
        // Let the stage send both full batches before anyone reads.
        while stats
            .samples_total
            .load(std::sync::atomic::Ordering::Relaxed)
            < 50
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let first = rx.batches.recv().unwrap();
        push(&mut p, 25);
        drop(p);
        let mut rest = Vec::new();
        while let Ok(b) = rx.batches.recv() {
            rest.push(b);
        }
        h.join().unwrap();
        assert_eq!(first.first_sample, 1000);
        assert_eq!(rest.len(), 1, "batch 1025..1050 was refused");
        let next = &rest[0];
        assert_eq!(next.first_sample, 1050);
        assert_eq!(
            next.gaps,
            vec![Gap {
                before_sample: 1050,
                missing: 25,
                cause: GapCause::Journal
            }]
        );
        assert_eq!(
            next.start_sample(),
            first.end_sample(),
            "spans stay contiguous"
        );
        assert_eq!(
            stats
                .dropped_samples
                .load(std::sync::atomic::Ordering::Relaxed),
            25
        );
    }

    #[test]
    fn markers_go_into_the_batch_that_covers_them() {
        let (mut p, h, rx, m, stats) = stage(1000, 64);
        // Batch 0 covers t 10.00..10.24, batch 1 10.25..10.49 (index 1000 = t 10.0).
        m.send(Marker {
            t: 10.10,
            value: "in0".into(),
        })
        .unwrap();
        m.send(Marker {
            t: 10.245,
            value: "between".into(),
        })
        .unwrap();
        m.send(Marker {
            t: 10.30,
            value: "in1".into(),
        })
        .unwrap();
        m.send(Marker {
            t: 99.0,
            value: "after the end".into(),
        })
        .unwrap();
        push_from(&mut p, 1000, 60);
        drop(p);
        h.join().unwrap();
        let b = collect(&rx);
        let names = |b: &BatchData| {
            b.markers
                .iter()
                .map(|m| m.value.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&b[0]), ["in0"]);
        assert_eq!(names(&b[1]), ["between", "in1"]);
        assert_eq!(
            names(&b[2]),
            ["after the end"],
            "the run's last batch takes the rest"
        );
        let _ = stats;
    }

    #[test]
    fn outlets_get_the_batches_filtered_samples_features_and_markers() {
        use crate::outlet::{Msg, OutletCounters};
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let (_free_tx, free_rx) = crossbeam_channel::bounded(8);
        let counters = Arc::new(OutletCounters::default());
        counters.set_enabled(
            StreamKind::Filtered.bit() | StreamKind::Quality.bit() | StreamKind::Markers.bit(),
        );
        let feed = OutletFeed::new(tx, free_rx, counters.clone());
        let (mut p, h, jrx, m, _stats) = stage_with(1000, 64, |_| {}, feed);
        m.send(Marker {
            t: 10.2,
            value: "stim".into(),
        })
        .unwrap();
        push_from(&mut p, 1000, 250);
        drop(p);
        h.join().unwrap();
        let batches = collect(&jrx);
        let (mut filtered, mut stamps, mut quality, mut markers) = (vec![], vec![], vec![], vec![]);
        for msg in rx.try_iter() {
            match msg {
                Msg::Chunk(c) if c.kind == Some(StreamKind::Filtered) => {
                    filtered.extend(c.data);
                    stamps.extend(c.stamps);
                }
                Msg::Chunk(c) => quality.push((c.kind, c.stamps, c.data)),
                Msg::Marker(m) => markers.push(m),
            }
        }
        let journal_filtered: Vec<f32> = batches.iter().flat_map(|b| b.filtered.clone()).collect();
        let journal_stamps: Vec<f64> = batches.iter().flat_map(|b| b.timestamps.clone()).collect();
        assert_eq!(filtered, journal_filtered, "the same samples, bit for bit");
        assert_eq!(stamps, journal_stamps);
        let features: Vec<&FeatureRecord> = batches.iter().flat_map(|b| &b.features).collect();
        assert_eq!(
            quality.len(),
            features.len(),
            "one quality sample per feature record"
        );
        assert!(!features.is_empty());
        for ((kind, t, rms), f) in quality.iter().zip(features) {
            assert_eq!(*kind, Some(StreamKind::Quality));
            assert_eq!(t.as_slice(), [f.t]);
            let want: Vec<f32> = f.rms.iter().map(|v| *v as f32).collect();
            assert_eq!(*rms, want);
        }
        assert_eq!(markers.len(), 1);
        assert_eq!(markers[0].value, "stim");
        assert_eq!(counters.dropped(StreamKind::Filtered), 0);
    }

    fn push_from(p: &mut ring::Producer, offset: u64, n: usize) {
        for _ in 0..n {
            let i = p.next_index() + offset;
            p.push(i as f64 / RATE, &[0.0, 0.0]);
        }
        p.flush();
    }
}
