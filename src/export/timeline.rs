//! One device's batches laid on a continuous sample grid, for the formats
//! without per-sample timestamps (EDF+C, BDF+C, and BIDS through them).
//!
//! The rule (docs/export.md):
//!
//! - the first exported sample is position 0, at unix time `t0`;
//! - within a run, positions follow the sample index (docs/batch-format.md:
//!   gaps consume indices), so a gap of `m` samples leaves `m` padded
//!   positions, annotated `BAD_ACQ_SKIP m samples (cause)`;
//! - between two batches the timestamps may show more time than the
//!   indices (a daemon restart or a kill -9: indices continue, time does
//!   not): when the difference is 0.25 s or more (net of wall-clock steps
//!   the batches record) it is padded too, `round(excess × rate)` samples,
//!   annotated as a time without samples;
//! - a batch that could not be opened pads its `n_samples` and is annotated
//!   with its seq and the reason;
//! - a single hole of more than [`MAX_HOLE_S`] is refused (EDF+C would pad
//!   all of it): export the parts.
//!
//! Markers are placed at their time relative to the last sample stamped at
//! or before them (to the microsecond). The frames go to a spool (position,
//! frames) so that the file can be written in a second pass with ranges
//! and annotation space known; memory holds one batch plus the annotation
//! list.

use super::{
    gap_cause_text, gap_text, unreadable_text, AdcScale, ExportError, ExportSummary, Layout,
    Request, Signal,
};
use crate::batch::FilterDescription;
use crate::journal::{ReadBatch, Unreadable};

/// Holes longer than this are refused rather than padded (seconds).
pub const MAX_HOLE_S: f64 = 3600.0;
/// Time beyond what the indices account for, from which a hole is padded.
pub const TIME_HOLE_MIN_S: f64 = 0.25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationKind {
    Marker,
    /// Padded positions (a gap, an unreadable batch, a time without samples).
    Gap,
}

/// An annotation on the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// Position in samples (fractional for markers).
    pub onset: f64,
    /// Length in samples (0 for markers).
    pub duration: u64,
    pub text: String,
    pub kind: AnnotationKind,
}

/// Per-channel statistics of the exported signal and the raw one.
#[derive(Debug, Clone)]
pub struct ChannelStats {
    /// Range of the exported signal.
    pub min: f32,
    pub max: f32,
    /// Every exported value is an ADC count times the device's scale.
    pub counts: bool,
    /// Values at the ADC's negative rail (-2^23 counts), one count beyond
    /// the symmetric range a BDF header can state exactly.
    pub rail_counts: u64,
    /// Range of the raw signal (quality).
    pub raw_min: f32,
    pub raw_max: f32,
    /// Raw samples at or beyond the railed threshold.
    pub railed: u64,
    pub n: u64,
    /// Sum and number of the feature windows' RMS (filtered signal).
    pub rms_sum: f64,
    pub rms_n: u64,
}

impl Default for ChannelStats {
    fn default() -> Self {
        ChannelStats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            counts: true,
            rail_counts: 0,
            raw_min: f32::INFINITY,
            raw_max: f32::NEG_INFINITY,
            railed: 0,
            n: 0,
            rms_sum: 0.0,
            rms_n: 0,
        }
    }
}

/// Where frames go: `(position of the first frame, frames frame-major)`.
pub trait FrameSink {
    fn frames(&mut self, pos: u64, values: &[f32]) -> std::io::Result<()>;
}

/// What the first pass learned.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub layout: Option<Layout>,
    /// Unix time of position 0.
    pub t0: f64,
    /// Positions in all (samples and padding).
    pub positions: u64,
    pub annotations: Vec<Annotation>,
    pub stats: Vec<ChannelStats>,
    pub filter: FilterDescription,
    pub site_id: String,
    pub node_id: String,
    pub summary: ExportSummary,
    /// Padded positions (before the tail of the last record).
    pub padded: u64,
}

impl Timeline {
    pub fn rate(&self) -> f64 {
        self.layout.as_ref().map_or(0.0, |l| l.rate)
    }
}

/// Builds a [`Timeline`] batch by batch.
pub struct TimelineBuilder<'r> {
    req: &'r Request,
    format: &'static str,
    device: String,
    adc: Option<AdcScale>,
    railed_abs_uv: f64,
    tl: Timeline,
    /// Index and position of the last frame, time of the last sample.
    last: Option<(u64, u64, f64)>,
    /// Wall-clock steps recorded after the last sample (seconds applied).
    pending_steps: f64,
    run: Vec<f32>,
}

impl<'r> TimelineBuilder<'r> {
    pub fn new(
        req: &'r Request,
        format: &'static str,
        device: &str,
        adc: Option<AdcScale>,
        railed_abs_uv: f64,
    ) -> Self {
        TimelineBuilder {
            req,
            format,
            device: device.to_string(),
            adc: if req.signal == Signal::Raw { adc } else { None },
            railed_abs_uv,
            tl: Timeline {
                summary: ExportSummary::new(device),
                ..Default::default()
            },
            last: None,
            pending_steps: 0.0,
            run: Vec::new(),
        }
    }

    /// Position of the next frame whose index is `index` and first time
    /// `t`, padding the hole before it (annotated).
    fn place(
        &mut self,
        index: u64,
        t: f64,
        rate: f64,
        leading: &[(u64, String)],
        seq: u64,
    ) -> Result<u64, ExportError> {
        let Some((last_index, last_pos, last_t)) = self.last else {
            self.tl.t0 = t;
            return Ok(0);
        };
        let step = index.saturating_sub(last_index).max(1);
        let mut extra = 0u64;
        if rate > 0.0 {
            let excess = (t - last_t - self.pending_steps) - step as f64 / rate;
            if excess >= TIME_HOLE_MIN_S {
                extra = (excess * rate).round() as u64;
            }
            let hole_s = (step - 1 + extra) as f64 / rate;
            if hole_s > MAX_HOLE_S {
                return Err(ExportError::Unsupported(format!(
                    "device {}: no samples for {:.0} s before seq {seq} (the daemon or the device \
                     was off); EDF+C is continuous and would pad all of it. Export the parts \
                     separately (--to-seq {} and --from-seq {seq}, format {}), or use --format xdf, \
                     which keeps every sample's time",
                    self.device,
                    hole_s,
                    seq.saturating_sub(1),
                    self.format
                )));
            }
        }
        self.pending_steps = 0.0;
        let mut pos = last_pos + 1;
        let lead: u64 = leading.iter().map(|l| l.0).sum();
        let unexplained = (step - 1).saturating_sub(lead);
        if unexplained > 0 {
            self.gap(
                pos,
                unexplained,
                "index jump: samples not in the journal".into(),
            );
            pos += unexplained;
        }
        if extra > 0 {
            self.gap(
                pos,
                extra,
                format!(
                    "no samples for {:.3} s: daemon restart or device away",
                    extra as f64 / rate
                ),
            );
            pos += extra;
        }
        for (missing, cause) in leading {
            if *missing > 0 {
                self.gap(pos, *missing, cause.clone());
                pos += missing;
            }
        }
        Ok(pos)
    }

    fn gap(&mut self, pos: u64, n: u64, cause: String) {
        self.tl.padded += n;
        self.tl.annotations.push(Annotation {
            onset: pos as f64,
            duration: n,
            text: gap_text(n, &cause),
            kind: AnnotationKind::Gap,
        });
    }

    fn unreadable(&mut self, u: &Unreadable) -> Result<(), ExportError> {
        self.tl.summary.saw_unreadable(u);
        let rate = self.tl.rate();
        let pos = self.place(u.first_sample, u.t_start, rate, &[], u.seq)?;
        if u.n_samples == 0 {
            return Ok(());
        }
        self.tl.padded += u.n_samples;
        self.tl.annotations.push(Annotation {
            onset: pos as f64,
            duration: u.n_samples,
            text: unreadable_text(u),
            kind: AnnotationKind::Gap,
        });
        let end = pos + u.n_samples - 1;
        self.last = Some((u.first_sample + u.n_samples - 1, end, u.t_end));
        self.tl.positions = end + 1;
        Ok(())
    }

    /// The first batch with samples sets the export's layout (and its
    /// filter, site and node); a later one must match it.
    fn adopt_layout(
        &mut self,
        header: &crate::batch::BatchHeader,
        b: &crate::batch::BatchData,
        layout: &Layout,
    ) -> Result<(), ExportError> {
        match &self.tl.layout {
            None => {
                self.tl.stats = vec![ChannelStats::default(); layout.channels.len()];
                self.tl.filter = b.filter.clone();
                self.tl.site_id = header.site_id.clone();
                self.tl.node_id = header.node_id.clone();
                self.tl.layout = Some(layout.clone());
            }
            Some(l) if l != layout => {
                return Err(self.req.layout_error(
                    self.format,
                    &self.device,
                    header.seq,
                    layout,
                    l,
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Take one batch as read; frames go to `sink`.
    pub fn push(&mut self, item: ReadBatch, sink: &mut dyn FrameSink) -> Result<(), ExportError> {
        let (header, b) = match item {
            ReadBatch::Unreadable(u) => return self.unreadable(&u),
            ReadBatch::Opened { header, data } => (header, data),
        };
        self.tl.summary.saw_opened(header.seq, &b);
        let n = b.n_samples();
        let layout = Layout::of(&header, &b);
        if n > 0 {
            self.adopt_layout(&header, &b, &layout)?;
        }
        let rate = layout.rate;
        let steps_before: f64 = b
            .clock_steps
            .iter()
            .filter(|c| b.timestamps.first().is_none_or(|&t0| c.t <= t0))
            .map(|c| c.applied_s)
            .sum();
        if n == 0 {
            // Markers of a batch trimmed to no samples: after the last sample.
            let at = self.last.map_or(0, |l| l.1 + 1) as f64;
            for m in &b.markers {
                self.marker(at, m.value.clone());
            }
            return Ok(());
        }
        self.pending_steps += steps_before;
        let idx = b.sample_indices();
        let leading: Vec<(u64, String)> = b
            .gaps
            .iter()
            .filter(|g| g.before_sample == b.first_sample && g.missing > 0)
            .map(|g| (g.missing, gap_cause_text(g.cause).to_string()))
            .collect();
        let first = self.last.is_none();
        let pos0 = self.place(idx[0], b.timestamps[0], rate, &leading, header.seq)?;
        if first && !leading.is_empty() {
            self.tl.summary.notes.push(format!(
                "device {}: the gap before the first exported sample is not padded",
                self.device
            ));
        }
        // Inner gaps (the indices jump over them).
        for g in b
            .gaps
            .iter()
            .filter(|g| g.before_sample > b.first_sample && g.missing > 0)
        {
            let at = pos0 + (g.before_sample - g.missing - idx[0]);
            self.gap(at, g.missing, gap_cause_text(g.cause).to_string());
        }
        let pos_of = |k: usize| pos0 + (idx[k] - idx[0]);
        // Markers.
        for m in &b.markers {
            let k = b.timestamps.partition_point(|&t| t <= m.t);
            let onset = if k == 0 {
                pos0 as f64 - (b.timestamps[0] - m.t) * rate
            } else {
                let p = pos_of(k - 1) as f64;
                let room = if k < n {
                    (pos_of(k) - pos_of(k - 1)) as f64
                } else {
                    1.0
                };
                p + ((m.t - b.timestamps[k - 1]) * rate).min(room)
            };
            self.marker(onset.max(0.0), m.value.clone());
        }
        // Statistics.
        let ch = layout.channels.len().max(1);
        let values = self.req.signal.values(&b);
        for (c, st) in self.tl.stats.iter_mut().enumerate() {
            let (mut lo, mut hi) = (st.min, st.max);
            let (mut rlo, mut rhi) = (st.raw_min, st.raw_max);
            for (v, r) in values[c..]
                .iter()
                .step_by(ch)
                .zip(b.raw[c..].iter().step_by(ch))
            {
                lo = lo.min(*v);
                hi = hi.max(*v);
                rlo = rlo.min(*r);
                rhi = rhi.max(*r);
                if f64::from(r.abs()) >= self.railed_abs_uv {
                    st.railed += 1;
                }
            }
            if let (Some(adc), true) = (self.adc, st.counts) {
                let mut rail = 0;
                st.counts = values[c..].iter().step_by(ch).all(|&v| {
                    let x = f64::from(v) / adc.uv_per_count;
                    let r = x.round();
                    if r == -f64::from(adc.counts_max) - 1.0 {
                        rail += 1;
                    }
                    // A count when the device's own conversion of the
                    // nearest count gives this very f32.
                    (r * adc.uv_per_count) as f32 == v && r.abs() <= f64::from(adc.counts_max) + 1.0
                });
                st.rail_counts += rail;
            }
            st.min = lo;
            st.max = hi;
            st.raw_min = rlo;
            st.raw_max = rhi;
            st.n += n as u64;
        }
        for f in &b.features {
            for (st, r) in self.tl.stats.iter_mut().zip(&f.rms) {
                if r.is_finite() {
                    st.rms_sum += r;
                    st.rms_n += 1;
                }
            }
        }
        // Frames, in runs of consecutive positions.
        let mut k = 0;
        while k < n {
            let mut e = k + 1;
            while e < n && idx[e] == idx[e - 1] + 1 {
                e += 1;
            }
            self.run.clear();
            self.run.extend_from_slice(&values[k * ch..e * ch]);
            sink.frames(pos_of(k), &self.run)?;
            k = e;
        }
        let last_pos = pos_of(n - 1);
        self.last = Some((idx[n - 1], last_pos, b.timestamps[n - 1]));
        self.tl.positions = last_pos + 1;
        self.pending_steps = b
            .clock_steps
            .iter()
            .filter(|c| c.t > b.timestamps[n - 1])
            .map(|c| c.applied_s)
            .sum();
        Ok(())
    }

    fn marker(&mut self, onset: f64, text: String) {
        self.tl.annotations.push(Annotation {
            onset,
            duration: 0,
            text,
            kind: AnnotationKind::Marker,
        });
    }

    /// The timeline, annotations in onset order.
    pub fn finish(mut self) -> Timeline {
        self.tl.annotations.sort_by(|a, b| {
            a.onset
                .partial_cmp(&b.onset)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        self.tl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchData, BatchHeader, Gap, GapCause, Marker};

    struct Rec(Vec<(u64, Vec<f32>)>);
    impl FrameSink for Rec {
        fn frames(&mut self, pos: u64, values: &[f32]) -> std::io::Result<()> {
            self.0.push((pos, values.to_vec()));
            Ok(())
        }
    }

    fn opened(seq: u64, first: u64, n: usize, t0: f64, gaps: Vec<Gap>) -> ReadBatch {
        let b = BatchData {
            device_id: "d".into(),
            sample_rate: 10.0,
            channels: vec!["a".into()],
            units: "uV".into(),
            first_sample: first,
            timestamps: (0..n).map(|i| t0 + i as f64 / 10.0).collect(),
            raw: (0..n).map(|i| (first + i as u64) as f32).collect(),
            filtered: vec![0.0; n],
            gaps,
            ..Default::default()
        };
        let header = BatchHeader {
            format: crate::batch::FORMAT_V2.into(),
            batch_id: format!("b{seq}"),
            site_id: "s".into(),
            node_id: "n".into(),
            device_id: "d".into(),
            seq,
            first_sample: first,
            n_samples: n as u64,
            n_channels: 1,
            sample_rate: 10.0,
            t_start: t0,
            t_end: t0 + (n - 1) as f64 / 10.0,
            key_id: "k".into(),
            cipher: "AES-256-GCM".into(),
            compression: "zstd".into(),
            created_at: 0.0,
        };
        ReadBatch::Opened { header, data: b }
    }

    fn req() -> Request {
        Request {
            devices: vec!["d".into()],
            seqs: 0..=u64::MAX,
            time: None,
            signal: Signal::Raw,
        }
    }

    #[test]
    fn gaps_restarts_and_unreadable_batches_are_padded_and_annotated() {
        let r = req();
        let mut tb = TimelineBuilder::new(&r, "edf", "d", None, 1e9);
        let mut sink = Rec(Vec::new());
        // 0..10 at t=100; then a leading device gap of 3 (indices 10..12).
        tb.push(opened(0, 0, 10, 100.0, vec![]), &mut sink).unwrap();
        let lead = Gap {
            before_sample: 13,
            missing: 3,
            cause: GapCause::Device,
        };
        tb.push(opened(1, 13, 5, 101.3, vec![lead]), &mut sink)
            .unwrap();
        // Restart: indices continue at 18 but 2 s pass (20 samples' time
        // beyond the one step).
        tb.push(opened(2, 18, 5, 101.7 + 2.1, vec![]), &mut sink)
            .unwrap();
        // An unreadable batch of 5, then one more.
        tb.push(
            ReadBatch::Unreadable(Unreadable {
                batch_id: "x".into(),
                device_id: "d".into(),
                seq: 3,
                first_sample: 23,
                n_samples: 5,
                t_start: 104.3,
                t_end: 104.7,
                key_id: "k".into(),
                reason: "no key".into(),
            }),
            &mut sink,
        )
        .unwrap();
        let mut last = opened(4, 28, 2, 104.8, vec![]);
        if let ReadBatch::Opened { data, .. } = &mut last {
            data.markers.push(Marker {
                t: 104.85,
                value: "go".into(),
            });
        }
        tb.push(last, &mut sink).unwrap();
        let tl = tb.finish();
        let pos: Vec<u64> = sink.0.iter().map(|s| s.0).collect();
        // 0; 10 + 3 padded = 13; 18 + 20 time padding = 38; unreadable
        // 43..48; 48.
        assert_eq!(pos, vec![0, 13, 38, 48]);
        assert_eq!(tl.positions, 50);
        let gaps: Vec<(f64, u64)> = tl
            .annotations
            .iter()
            .filter(|a| a.kind == AnnotationKind::Gap)
            .map(|a| (a.onset, a.duration))
            .collect();
        assert_eq!(gaps, vec![(10.0, 3), (18.0, 20), (43.0, 5)]);
        assert_eq!(tl.padded, 28);
        let m = tl
            .annotations
            .iter()
            .find(|a| a.kind == AnnotationKind::Marker)
            .unwrap();
        assert!((m.onset - 48.5).abs() < 1e-9, "{}", m.onset);
        assert!(tl.annotations[2]
            .text
            .starts_with("BAD_ACQ_SKIP 5 samples (batch seq 3"));
        assert_eq!(tl.stats[0].min, 0.0);
        assert_eq!(tl.stats[0].max, 29.0);
    }

    #[test]
    fn a_changed_layout_is_refused_with_the_seq_and_the_commands() {
        let r = req();
        let mut tb = TimelineBuilder::new(&r, "edf", "d", None, 1e9);
        let mut sink = Rec(Vec::new());
        tb.push(opened(0, 0, 10, 100.0, vec![]), &mut sink).unwrap();
        let mut b = opened(1, 10, 10, 101.0, vec![]);
        if let ReadBatch::Opened { header, .. } = &mut b {
            header.sample_rate = 20.0;
        }
        let e = tb.push(b, &mut sink).unwrap_err().to_string();
        assert!(e.contains("from seq 1 on"), "{e}");
        assert!(e.contains("--to-seq 0"), "{e}");
        assert!(e.contains("--from-seq 1"), "{e}");
    }

    #[test]
    fn an_hour_long_hole_is_refused() {
        let r = req();
        let mut tb = TimelineBuilder::new(&r, "bdf", "d", None, 1e9);
        let mut sink = Rec(Vec::new());
        tb.push(opened(0, 0, 10, 100.0, vec![]), &mut sink).unwrap();
        let e = tb
            .push(opened(1, 10, 10, 100.0 + 4000.0, vec![]), &mut sink)
            .unwrap_err();
        assert!(e.to_string().contains("--format xdf"), "{e}");
    }
}
