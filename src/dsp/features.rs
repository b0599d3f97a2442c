//! Sliding-window Welch band powers, RMS and per-channel signal quality.
//!
//! Matches `scipy.signal.welch(x, fs, nperseg=min(win, round(fs)))` with its
//! defaults (periodic Hann, 50 % overlap, constant detrend, density scaling,
//! one-sided, mean averaging). All buffers, the FFT plan and the Hann window
//! are prepared in [`FeatureExtractor::new`]; `push` never allocates.
//!
//! The filtered window is kept in a channel-major ring for its FFT. The raw
//! side needs only a few numbers per window (extremes, railed count, and
//! the line-noise and total power): they are kept per block as the frames
//! arrive, and for the default shape (one Welch segment, a step of half
//! the window) the powers too ([`super::half_sums`]), so that no raw
//! window is stored; other shapes read a raw ring.

use super::half_sums::HalfSums;
use super::DspError;
use multiversion::multiversion;
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use std::f64::consts::PI;
use std::sync::Arc;

/// A named frequency band `[lo_hz, hi_hz)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    /// Label used downstream (e.g. `"alpha"`).
    pub name: String,
    /// Inclusive lower edge in Hz.
    pub lo_hz: f64,
    /// Exclusive upper edge in Hz.
    pub hi_hz: f64,
}

impl Band {
    /// Convenience constructor.
    pub fn new(name: &str, lo_hz: f64, hi_hz: f64) -> Self {
        Band {
            name: name.to_string(),
            lo_hz,
            hi_hz,
        }
    }

    /// Contract defaults: delta 1–4, theta 4–8, alpha 8–13, beta 13–30,
    /// gamma 30–45 Hz.
    pub fn defaults() -> Vec<Band> {
        vec![
            Band::new("delta", 1.0, 4.0),
            Band::new("theta", 4.0, 8.0),
            Band::new("alpha", 8.0, 13.0),
            Band::new("beta", 13.0, 30.0),
            Band::new("gamma", 30.0, 45.0),
        ]
    }
}

/// Per-channel quality thresholds (all amplitudes in µV).
///
/// Classification precedence is `railed` > `flat` > `noisy` > `ok`: a
/// railed channel is also "flat" at the rail, so the more specific
/// diagnosis wins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityThresholds {
    /// `flat` when the RAW window's peak-to-peak is below this (default
    /// 0.5 µV: below the ADS1299's ~1 µVpp input noise, so only a dead /
    /// powered-down / constant channel qualifies).
    pub flat_ptp_uv: f64,
    /// A RAW sample with `|x| >= railed_abs_uv` counts as saturated
    /// (default 180 000 µV; the ADS1299 rail at gain 24 is ±187 500 µV).
    pub railed_abs_uv: f64,
    /// `railed` when at least this fraction of the window's samples are
    /// saturated (default 0.05, so a single pop does not flag the channel;
    /// at least one saturated sample is always required).
    pub railed_min_fraction: f64,
    /// `noisy` when the FILTERED window RMS exceeds this (default 100 µV;
    /// scalp EEG after a 1–45 Hz band-pass is typically 5–50 µV RMS).
    pub noisy_rms_uv: f64,
    /// `noisy` when `line_noise_ratio` exceeds this (default 0.5: more than
    /// half the 1 Hz..Nyquist raw power sits within ±2 Hz of the mains line).
    pub noisy_line_ratio: f64,
}

impl Default for QualityThresholds {
    fn default() -> Self {
        QualityThresholds {
            flat_ptp_uv: 0.5,
            railed_abs_uv: 180_000.0,
            railed_min_fraction: 0.05,
            noisy_rms_uv: 100.0,
            noisy_line_ratio: 0.5,
        }
    }
}

/// Channel verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityStatus {
    /// Usable signal.
    Ok,
    /// No variation (dead / shorted / disabled channel).
    Flat,
    /// Input at the ADC rail (electrode off, saturated amplifier).
    Railed,
    /// Excessive amplitude or mains pick-up.
    Noisy,
}

impl QualityStatus {
    /// Lower-case wire name (`ok | flat | railed | noisy`).
    pub fn as_str(self) -> &'static str {
        match self {
            QualityStatus::Ok => "ok",
            QualityStatus::Flat => "flat",
            QualityStatus::Railed => "railed",
            QualityStatus::Noisy => "noisy",
        }
    }
}

/// Quality of one channel over the current window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelQuality {
    /// Verdict.
    pub status: QualityStatus,
    /// RMS of the filtered window (µV).
    pub rms_uv: f64,
    /// Raw PSD power within ±2 Hz of the line frequency divided by raw
    /// power in `1 Hz ..= fs/2` (0 when the latter is 0).
    pub line_noise_ratio: f64,
}

/// Extractor configuration (contract defaults via `Default`).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureConfig {
    /// Analysis window length (default 1.0 s).
    pub window_s: f64,
    /// Emission period (default 0.5 s).
    pub step_s: f64,
    /// Ordered band list (default [`Band::defaults`]).
    pub bands: Vec<Band>,
    /// Mains frequency used for `line_noise_ratio`: the configured
    /// `notch_hz`, or 50 Hz (default).
    pub line_hz: f64,
    /// Quality thresholds.
    pub thresholds: QualityThresholds,
    /// The filtered samples are the raw ones (no filter configured): one
    /// spectrum per channel then serves the bands and the quality's line
    /// noise, and no raw window or half-window sums are kept (default
    /// false; `push` is then to be given the same samples twice).
    pub unfiltered: bool,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            window_s: 1.0,
            step_s: 0.5,
            bands: Band::defaults(),
            line_hz: 50.0,
            thresholds: QualityThresholds::default(),
            unfiltered: false,
        }
    }
}

/// One emission, borrowed from the extractor's buffers (valid only inside
/// the callback; copy out what you keep).
#[derive(Debug, Clone, Copy)]
pub struct FeatureFrame<'a> {
    /// Timestamp of the last sample in the window.
    pub t: f64,
    /// Band powers (µV²), band-major: `band_power[b * channels + ch]`.
    pub band_power: &'a [f64],
    /// Filtered-window RMS per channel (µV).
    pub rms: &'a [f64],
    /// Quality per channel.
    pub quality: &'a [ChannelQuality],
    /// Channel count (row stride of `band_power`).
    pub channels: usize,
}

impl FeatureFrame<'_> {
    /// Power of band index `band` on channel `ch` (None if out of range).
    pub fn power(&self, band: usize, ch: usize) -> Option<f64> {
        if ch >= self.channels {
            return None;
        }
        self.band_power.get(band * self.channels + ch).copied()
    }
}

/// Upper bound on window/step lengths in samples (2^24, ~19 h at 250 Hz):
/// rejects absurd configs instead of attempting a huge allocation.
const MAX_SAMPLES: f64 = 16_777_216.0;

/// Python-style `round` (ties to even), as the contract's `round(x)`.
fn round_samples(x: f64) -> f64 {
    x.round_ties_even()
}

/// Accumulators of the reductions below: independent chains, so a
/// 30 000-point window is summed at the adder's throughput rather than its
/// latency (a single f64 chain was a third of the feature stage at 30 kHz).
/// The summation order differs from a left-to-right sum by rounding only,
/// as NumPy's pairwise sum does.
const LANES: usize = 8;

/// A channel's window, oldest first: (up to) two slices of its ring.
type Parts<'a> = [&'a [f32]; 2];

/// Samples `[a, b)` of the window `w`.
fn sub(w: Parts<'_>, a: usize, b: usize) -> Parts<'_> {
    let n0 = w[0].len();
    [
        &w[0][a.min(n0)..b.min(n0)],
        &w[1][a.saturating_sub(n0)..b.saturating_sub(n0)],
    ]
}

/// Sum and sum of squares of `w` (widened to f64, exactly), in [`LANES`]
/// interleaved chains: one pass for the RMS and the Welch mean.
#[inline]
fn lane_moments(w: Parts<'_>) -> (f64, f64) {
    let mut s = [0.0f64; LANES];
    let mut q = [0.0f64; LANES];
    let (mut st, mut qt) = (0.0, 0.0);
    for part in w {
        let chunks = part.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                let x = f64::from(c[i]);
                s[i] += x;
                q[i] += x * x;
            }
        }
        for &x in rest {
            let x = f64::from(x);
            st += x;
            qt += x * x;
        }
    }
    for i in 0..LANES {
        st += s[i];
        qt += q[i];
    }
    (st, qt)
}

/// Minimum, maximum, how many values have `|x| >= rail`, and the sum, in
/// [`LANES`] interleaved chains. NaN never wins a comparison (as
/// `f64::min`/`max` ignore it).
#[inline]
fn lane_extent(w: Parts<'_>, rail: f64) -> (f64, f64, usize, f64) {
    let mut lo = [f64::INFINITY; LANES];
    let mut hi = [f64::NEG_INFINITY; LANES];
    let mut railed = [0usize; LANES];
    let mut sum = [0.0f64; LANES];
    let (mut l, mut h, mut r, mut st) = (f64::INFINITY, f64::NEG_INFINITY, 0, 0.0);
    for part in w {
        let chunks = part.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                let x = f64::from(c[i]);
                lo[i] = if x < lo[i] { x } else { lo[i] };
                hi[i] = if x > hi[i] { x } else { hi[i] };
                railed[i] += usize::from(x.abs() >= rail);
                sum[i] += x;
            }
        }
        for &x in rest {
            let x = f64::from(x);
            l = l.min(x);
            h = h.max(x);
            r += usize::from(x.abs() >= rail);
            st += x;
        }
    }
    for i in 0..LANES {
        l = l.min(lo[i]);
        h = h.max(hi[i]);
        r += railed[i];
        st += sum[i];
    }
    (l, h, r, st)
}

/// Welch PSD machinery for one fixed window length.
struct Welch {
    nperseg: usize,
    hop: usize,
    nseg: usize,
    hann: Vec<f64>,
    /// `1 / (fs * sum(w^2))` (density scaling).
    scale: f64,
    /// A real-input FFT: half the work of a complex one of the same length.
    fft: Arc<dyn RealToComplex<f64>>,
    buf: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    /// One-sided PSD, `nperseg/2 + 1` bins.
    psd: Vec<f64>,
}

impl Welch {
    fn new(win: usize, nperseg: usize, fs: f64) -> Self {
        let noverlap = nperseg / 2;
        let hop = nperseg - noverlap;
        let nseg = (win - noverlap) / hop;
        // get_window('hann', N): general_cosine(N+1, [.5, .5]) truncated,
        // with fac = linspace(-pi, pi, N+1).
        let step = 2.0 * PI / nperseg as f64;
        let hann: Vec<f64> = (0..nperseg)
            .map(|i| 0.5 + 0.5 * (-PI + i as f64 * step).cos())
            .collect();
        let wss: f64 = hann.iter().map(|w| w * w).sum();
        let fft = RealFftPlanner::new().plan_fft_forward(nperseg);
        let scratch = fft.make_scratch_vec();
        let spectrum = fft.make_output_vec();
        Welch {
            nperseg,
            hop,
            nseg,
            hann,
            scale: 1.0 / (fs * wss),
            fft,
            buf: vec![0.0; nperseg],
            spectrum,
            scratch,
            psd: vec![0.0; nperseg / 2 + 1],
        }
    }

    /// Segment `seg` of the window `w`, detrended and windowed, into
    /// `self.buf` (straight from the ring: no copy). `sum` is the window's
    /// sum, which gives the mean of a segment that is the whole window
    /// without another pass.
    fn fill_segment(&mut self, w: Parts<'_>, seg: usize, sum: f64) {
        let n = self.nperseg;
        let whole = self.nseg == 1 && w[0].len() + w[1].len() == n;
        let s = sub(w, seg * self.hop, seg * self.hop + n);
        let total = if whole { sum } else { lane_moments(s).0 };
        let mean = total / n as f64;
        let (b0, b1) = self.buf.split_at_mut(s[0].len());
        let (h0, h1) = self.hann.split_at(s[0].len());
        for ((b, &v), &h) in b0.iter_mut().zip(s[0]).zip(h0) {
            *b = (f64::from(v) - mean) * h;
        }
        for ((b, &v), &h) in b1.iter_mut().zip(s[1]).zip(h1) {
            *b = (f64::from(v) - mean) * h;
        }
    }

    /// The density scale of one-sided bin `i` (all but DC and, for even
    /// n, Nyquist count twice), averaged over the segments.
    fn bin_scale(&self, i: usize) -> f64 {
        let k = self.scale / self.nseg as f64;
        let last = self.psd.len() - 1;
        let double = i > 0 && (i < last || self.nperseg % 2 == 1);
        if double {
            2.0 * k
        } else {
            k
        }
    }

    /// PSD of the window `w` into `self.psd[..upto]` (the bins past
    /// `upto` are left stale: callers that need fewer bins skip their
    /// accumulation).
    ///
    /// With `energy`, returns `Σ x²` of the windowed, detrended segments
    /// (Parseval: all one-sided bins sum to `scale / nseg * n` times it);
    /// 0 otherwise.
    fn compute(&mut self, w: Parts<'_>, sum: f64, upto: usize, energy: bool) -> f64 {
        let upto = upto.min(self.psd.len());
        self.psd[..upto].fill(0.0);
        let mut e = 0.0;
        for seg in 0..self.nseg {
            self.fill_segment(w, seg, sum);
            if energy {
                e += sum_squares(&self.buf);
            }
            // Lengths are fixed at construction, so this cannot fail.
            let _ =
                self.fft
                    .process_with_scratch(&mut self.buf, &mut self.spectrum, &mut self.scratch);
            for (p, b) in self.psd[..upto].iter_mut().zip(&self.spectrum) {
                *p += b.norm_sqr();
            }
        }
        for i in 0..upto {
            self.psd[i] *= self.bin_scale(i);
        }
        e
    }

    /// The raw window's line-noise power and total power (the sums of
    /// `psd` over `d.line` and over `d.kept`), without a spectrum: the
    /// total by Parseval (all one-sided bins sum to `scale * n * Σ x²` of
    /// the windowed segment) less the few bins it leaves out, and those
    /// and the line bins as direct DFT sums. Equal to the FFT's sums up to
    /// rounding (`tests::direct_line_power_matches_the_spectrum`).
    fn line_and_total(&mut self, w: Parts<'_>, sum: f64, d: &mut DirectBins) -> (f64, f64) {
        d.power.fill(0.0);
        let mut energy = 0.0;
        for seg in 0..self.nseg {
            self.fill_segment(w, seg, sum);
            energy += d.accumulate(&self.buf);
        }
        let k = self.scale / self.nseg as f64;
        let mut line = 0.0;
        let mut left_out = 0.0;
        for (j, &bin) in d.bins.iter().enumerate() {
            let p = d.power[j] * self.bin_scale(bin);
            if j < d.line_count {
                line += p;
            }
            if !(d.kept.0..d.kept.1).contains(&bin) {
                left_out += p;
            }
        }
        let total = k * self.nperseg as f64 * energy - left_out;
        (line, total)
    }
}

/// Length of the blocks of the direct DFT ([`DirectBins`]): its table of
/// twiddles is `bins × DFT_BLOCK` long, and stays in L1.
pub(super) const DFT_BLOCK: usize = 128;

/// The twiddles of a DFT of length `n` summed directly in blocks of
/// [`DFT_BLOCK`] ([`DirectBins`], [`super::half_sums`]): per bin `k`,
/// `cos(θr)` and `sin(θr)` for `r < DFT_BLOCK`, and `cos(θjB)` and
/// `sin(θjB)` for each block `j` of the samples summed, `θ = 2πk/n`.
pub(super) struct Twiddles {
    pub(super) cos: Vec<f64>,
    pub(super) sin: Vec<f64>,
    block_cos: Vec<f64>,
    block_sin: Vec<f64>,
    blocks: usize,
}

impl Twiddles {
    /// For the bins `bins` of a length-`n` DFT over `len` samples.
    pub(super) fn new(n: usize, bins: &[usize], len: usize) -> Self {
        let blocks = len.div_ceil(DFT_BLOCK);
        let mut t = Twiddles {
            cos: Vec::with_capacity(bins.len() * DFT_BLOCK),
            sin: Vec::with_capacity(bins.len() * DFT_BLOCK),
            block_cos: Vec::with_capacity(bins.len() * blocks),
            block_sin: Vec::with_capacity(bins.len() * blocks),
            blocks,
        };
        for &k in bins {
            for r in 0..DFT_BLOCK {
                t.cos.push(dft_angle(n, k, r).cos());
                t.sin.push(dft_angle(n, k, r).sin());
            }
            for j in 0..blocks {
                t.block_cos.push(dft_angle(n, k, j * DFT_BLOCK).cos());
                t.block_sin.push(dft_angle(n, k, j * DFT_BLOCK).sin());
            }
        }
        t
    }

    /// Bin `b`'s twiddles within a block.
    pub(super) fn row(&self, b: usize) -> (&[f64], &[f64]) {
        let r = b * DFT_BLOCK..(b + 1) * DFT_BLOCK;
        (&self.cos[r.clone()], &self.sin[r])
    }

    /// Bin `b`'s block `j` partial sum `a − ib = Σ_r x e^{−iθr}` as its
    /// share of `X[k]`: times `e^{−iθjB} = c − is`, `(re, im)`.
    #[inline]
    pub(super) fn rotate(&self, b: usize, j: usize, a: f64, s: f64) -> (f64, f64) {
        let i = b * self.blocks + j;
        let (c, si) = (self.block_cos[i], self.block_sin[i]);
        (a * c - s * si, -(a * si + s * c))
    }
}

/// `2π (k·m mod n) / n`: the angle of `k·m` reduced modulo `n` first, so
/// that it stays exact for any length.
pub(super) fn dft_angle(n: usize, k: usize, m: usize) -> f64 {
    let r = (k as u128 * m as u128 % n as u128) as f64;
    2.0 * PI * r / n as f64
}

/// At most this many bins are summed directly; more, and the FFT is
/// cheaper.
const MAX_DIRECT_BINS: usize = 8;

/// The few DFT bins the raw window's quality needs (the line-noise bins,
/// and the bins the total leaves out: DC, normally), summed directly in
/// blocks of [`DFT_BLOCK`]: `X[k] = Σ_j e^{-iθjB} Σ_r x[jB + r] e^{-iθr}`
/// with `θ = 2πk/n`. About 2 multiply-adds per sample and bin, where the
/// FFT of the whole segment costs some 30 operations per sample.
struct DirectBins {
    /// The line bins first (`line_count` of them), then the left-out ones.
    bins: Vec<usize>,
    line_count: usize,
    /// Bins counted in the total, `[first, end)`.
    kept: (usize, usize),
    twiddles: Twiddles,
    /// `|X[k]|²` per bin, summed over the segments.
    power: Vec<f64>,
}

impl DirectBins {
    /// `None` when more than [`MAX_DIRECT_BINS`] bins would be needed.
    fn new(n: usize, line: (usize, usize), kept: (usize, usize)) -> Option<Self> {
        let last = n / 2;
        // (A line bin outside the total's band is summed once, as a line
        // bin, and left out of the total below.)
        let left_out =
            (0..=last).filter(|k| !(kept.0..kept.1).contains(k) && !(line.0..line.1).contains(k));
        let bins: Vec<usize> = (line.0..line.1).chain(left_out).collect();
        if bins.len() > MAX_DIRECT_BINS {
            return None;
        }
        Some(DirectBins {
            line_count: line.1 - line.0,
            kept,
            twiddles: Twiddles::new(n, &bins, n),
            power: vec![0.0; bins.len()],
            bins,
        })
    }

    /// Add `|X[k]|²` of the windowed segment `x` to `power`; returns
    /// `Σ x²`.
    fn accumulate(&mut self, x: &[f64]) -> f64 {
        let nb = self.bins.len();
        for b in 0..nb {
            let (cos, sin) = self.twiddles.row(b);
            let (mut re, mut im) = (0.0, 0.0);
            for (j, blk) in x.chunks(DFT_BLOCK).enumerate() {
                let (a, s) = dot2(blk, cos, sin);
                let (dr, di) = self.twiddles.rotate(b, j, a, s);
                re += dr;
                im += di;
            }
            self.power[b] += re * re + im * im;
        }
        sum_squares(x)
    }
}

/// `(Σ x·c, Σ x·s)` over `x` (`c` and `s` at least as long), in
/// [`LANES`] chains; compiled per SIMD target and dispatched at run time.
#[multiversion(targets = "simd")]
fn dot2(x: &[f64], c: &[f64], s: &[f64]) -> (f64, f64) {
    let (c, s) = (&c[..x.len()], &s[..x.len()]);
    let mut a = [0.0f64; LANES];
    let mut b = [0.0f64; LANES];
    let xs = x.chunks_exact(LANES);
    let (mut at, mut bt) = (0.0, 0.0);
    for ((&v, &cv), &sv) in xs
        .remainder()
        .iter()
        .zip(c.chunks_exact(LANES).remainder())
        .zip(s.chunks_exact(LANES).remainder())
    {
        at += v * cv;
        bt += v * sv;
    }
    for ((xv, cv), sv) in xs.zip(c.chunks_exact(LANES)).zip(s.chunks_exact(LANES)) {
        for i in 0..LANES {
            a[i] += xv[i] * cv[i];
            b[i] += xv[i] * sv[i];
        }
    }
    for i in 0..LANES {
        at += a[i];
        bt += b[i];
    }
    (at, bt)
}

/// `Σ x²` in [`LANES`] chains.
fn sum_squares(x: &[f64]) -> f64 {
    let mut q = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let mut t: f64 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for i in 0..LANES {
            q[i] += c[i] * c[i];
        }
    }
    for v in q {
        t += v;
    }
    t
}

/// At most this many blocks per window are kept by [`BlockMoments`]; a
/// window and step whose greatest common divisor is smaller (say 1.0 s
/// and 0.33 s) reduce the whole window at each emission instead.
const MAX_BLOCKS: usize = 64;

/// The window reductions the features need (the filtered signal's sum
/// and sum of squares; the raw signal's minimum, maximum, railed count and
/// sum), kept per block of `gcd(window, step)` frames as the frames
/// arrive, while they are in cache. Every window is whole blocks (the
/// first ends at frame `max(window, step)` after a reset, the next ones a
/// step apart), so an emission adds up `window / block` partials per
/// channel instead of reading both windows from memory once more.
/// Slot-major arrays (`blocks × channels`), so a frame's update runs
/// along the channels.
struct BlockMoments {
    channels: usize,
    /// Frames per block, and blocks per window.
    block: usize,
    blocks: usize,
    /// The slot being filled, and its frames so far.
    at: usize,
    filled: usize,
    rail: f64,
    filt_sum: Vec<f64>,
    filt_sq: Vec<f64>,
    raw_min: Vec<f64>,
    raw_max: Vec<f64>,
    /// Counts, as f64 so that the update stays in vector registers.
    raw_railed: Vec<f64>,
    raw_sum: Vec<f64>,
}

/// One slot's partials (each `channels` long).
struct Slot<'a> {
    filt_sum: &'a mut [f64],
    filt_sq: &'a mut [f64],
    raw_min: &'a mut [f64],
    raw_max: &'a mut [f64],
    raw_railed: &'a mut [f64],
    raw_sum: &'a mut [f64],
}

/// The window's reductions of one channel, from [`BlockMoments::window`]
/// or the rings.
struct Moments {
    filt_sum: f64,
    filt_sq: f64,
    raw_min: f64,
    raw_max: f64,
    raw_railed: usize,
    raw_sum: f64,
}

impl BlockMoments {
    /// `None` when a window would need more than [`MAX_BLOCKS`] blocks.
    fn new(channels: usize, win: usize, step: usize, rail: f64) -> Option<Self> {
        let (mut a, mut b) = (win, step);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        let blocks = win / a;
        if blocks > MAX_BLOCKS {
            return None;
        }
        let len = blocks * channels;
        Some(BlockMoments {
            channels,
            block: a,
            blocks,
            at: 0,
            filled: 0,
            rail,
            filt_sum: vec![0.0; len],
            filt_sq: vec![0.0; len],
            raw_min: vec![0.0; len],
            raw_max: vec![0.0; len],
            raw_railed: vec![0.0; len],
            raw_sum: vec![0.0; len],
        })
    }

    fn reset(&mut self) {
        self.at = 0;
        self.filled = 0;
    }

    /// Frames that still fit in the current block.
    fn room(&self) -> usize {
        self.block - self.filled
    }

    /// Add frames (at most [`Self::room`]) to the current block.
    fn add(&mut self, raw: &[f32], filt: &[f32]) {
        let c = self.channels;
        let r = self.at * c..(self.at + 1) * c;
        let slot = Slot {
            filt_sum: &mut self.filt_sum[r.clone()],
            filt_sq: &mut self.filt_sq[r.clone()],
            raw_min: &mut self.raw_min[r.clone()],
            raw_max: &mut self.raw_max[r.clone()],
            raw_railed: &mut self.raw_railed[r.clone()],
            raw_sum: &mut self.raw_sum[r],
        };
        if self.filled == 0 {
            slot.filt_sum.fill(0.0);
            slot.filt_sq.fill(0.0);
            slot.raw_min.fill(f64::INFINITY);
            slot.raw_max.fill(f64::NEG_INFINITY);
            slot.raw_railed.fill(0.0);
            slot.raw_sum.fill(0.0);
        }
        accumulate(raw, filt, self.rail, slot);
        self.filled += raw.len() / c;
        if self.filled == self.block {
            self.filled = 0;
            self.at = if self.at + 1 == self.blocks {
                0
            } else {
                self.at + 1
            };
        }
    }

    /// Channel `ch`'s reductions over the last `blocks` whole blocks.
    fn window(&self, ch: usize) -> Moments {
        let mut m = Moments {
            filt_sum: 0.0,
            filt_sq: 0.0,
            raw_min: f64::INFINITY,
            raw_max: f64::NEG_INFINITY,
            raw_railed: 0,
            raw_sum: 0.0,
        };
        let mut railed = 0.0;
        for i in (0..self.blocks).map(|b| b * self.channels + ch) {
            m.filt_sum += self.filt_sum[i];
            m.filt_sq += self.filt_sq[i];
            m.raw_min = m.raw_min.min(self.raw_min[i]);
            m.raw_max = m.raw_max.max(self.raw_max[i]);
            railed += self.raw_railed[i];
            m.raw_sum += self.raw_sum[i];
        }
        // Counts below 2^53 are exact in f64.
        m.raw_railed = railed as usize;
        m
    }
}

/// Frames of `raw` and `filt` (frame-major, `slot`'s channel count per
/// frame) into `slot`'s partials, channel by channel along each frame (a
/// vector of channels at a time); compiled per SIMD target and dispatched
/// at run time. NaN never wins a comparison, as in [`lane_extent`].
#[multiversion(targets = "simd")]
fn accumulate<'a>(raw: &[f32], filt: &[f32], rail: f64, slot: Slot<'a>) {
    let c = slot.filt_sum.len();
    let Slot {
        filt_sum,
        filt_sq,
        raw_min,
        raw_max,
        raw_railed,
        raw_sum,
    } = slot;
    let (raw_min, raw_max, raw_railed, raw_sum) = (
        &mut raw_min[..c],
        &mut raw_max[..c],
        &mut raw_railed[..c],
        &mut raw_sum[..c],
    );
    let filt_sq = &mut filt_sq[..c];
    for f in filt.chunks_exact(c) {
        for ((s, q), &x) in filt_sum.iter_mut().zip(filt_sq.iter_mut()).zip(f) {
            let x = f64::from(x);
            *s += x;
            *q += x * x;
        }
    }
    for r in raw.chunks_exact(c) {
        let r = &r[..c];
        for i in 0..c {
            let x = f64::from(r[i]);
            raw_min[i] = if x < raw_min[i] { x } else { raw_min[i] };
            raw_max[i] = if x > raw_max[i] { x } else { raw_max[i] };
            raw_railed[i] += if x.abs() >= rail { 1.0 } else { 0.0 };
            raw_sum[i] += x;
        }
    }
}

/// Frames per transposed tile of [`FeatureExtractor::push`]: 4 was the
/// fastest of 2, 4, 8, 16 and 64 at 384 ch × 30 kHz (the `features`
/// bench: 54 M ch-samples/s untiled, 58 M with 4, 51 M with 16), and the
/// same as untiled at 64 ch.
const TILE: usize = 4;

/// Frame-major `frames` (`c` per frame) into the channel-major `ring`
/// (`win` per channel) at column `pos`, a channel at a time.
#[inline]
fn transpose(frames: &[f32], c: usize, ring: &mut [f32], win: usize, pos: usize) {
    let n = frames.len() / c;
    for (ch, row) in ring.chunks_exact_mut(win).enumerate().take(c) {
        for (t, out) in row[pos..pos + n].iter_mut().enumerate() {
            *out = frames[t * c + ch];
        }
    }
}

/// Streaming feature extractor over interleaved frames.
pub struct FeatureExtractor {
    channels: usize,
    win: usize,
    step: usize,
    bands: Vec<Band>,
    thresholds: QualityThresholds,
    /// Channel-major circular histories (`channels * win`).
    /// (f32, as the samples arrive: the features read them in place,
    /// widened to f64 exactly, and it halves the memory: 92 MB at 384 ch
    /// × 30 kHz.)
    raw_ring: Vec<f32>,
    filt_ring: Vec<f32>,
    pos: usize,
    filled: usize,
    since_emit: usize,
    welch: Welch,
    /// The raw side's line and total power without an FFT (`None` when
    /// the bands need more bins than that is cheap for).
    direct: Option<DirectBins>,
    /// The raw side's line and total power kept per half window as the
    /// frames arrive, for the default shape (one Welch segment, a step of
    /// half the window): then `raw_ring` is empty.
    halves: Option<HalfSums>,
    /// The window reductions kept as frames arrive (`None` when the
    /// window and step share no block length worth keeping).
    moments: Option<BlockMoments>,
    /// Raw is filtered ([`FeatureConfig::unfiltered`]): the filtered
    /// window's spectrum is the raw one's too, and `raw_ring` is empty.
    unfiltered: bool,
    bin_width: f64,
    band_bins: Vec<(usize, usize)>,
    line_bins: (usize, usize),
    total_bins: (usize, usize),
    band_power: Vec<f64>,
    rms: Vec<f64>,
    quality: Vec<ChannelQuality>,
}

impl std::fmt::Debug for FeatureExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureExtractor")
            .field("channels", &self.channels)
            .field("win", &self.win)
            .field("step", &self.step)
            .field("nperseg", &self.welch.nperseg)
            .field("bands", &self.bands)
            .finish_non_exhaustive()
    }
}

/// Index range `[first, end)` of bins whose frequency satisfies `keep`
/// (frequencies are increasing, so the set is contiguous).
fn bin_range(freqs: &[f64], keep: impl Fn(f64) -> bool) -> (usize, usize) {
    let first = freqs.iter().position(|&f| keep(f));
    match first {
        Some(a) => {
            let len = freqs[a..].iter().take_while(|&&f| keep(f)).count();
            (a, a + len)
        }
        None => (0, 0),
    }
}

impl FeatureExtractor {
    /// Validate the configuration and allocate every buffer up front.
    pub fn new(fs: f64, channels: usize, config: &FeatureConfig) -> Result<Self, DspError> {
        Self::build(fs, channels, config, true)
    }

    /// [`Self::new`]; `halves` allows the half-window sums (tests compare
    /// them with the raw ring).
    fn build(
        fs: f64,
        channels: usize,
        config: &FeatureConfig,
        halves: bool,
    ) -> Result<Self, DspError> {
        if !fs.is_finite() || fs <= 0.0 {
            return Err(DspError::InvalidSampleRate(fs));
        }
        if channels == 0 {
            return Err(DspError::ZeroChannels);
        }
        let win_f = round_samples(config.window_s * fs);
        if !config.window_s.is_finite() || !(2.0..=MAX_SAMPLES).contains(&win_f) {
            return Err(DspError::InvalidDuration {
                what: "window_s",
                value: config.window_s,
            });
        }
        let step_f = round_samples(config.step_s * fs);
        if !config.step_s.is_finite() || !(1.0..=MAX_SAMPLES).contains(&step_f) {
            return Err(DspError::InvalidDuration {
                what: "step_s",
                value: config.step_s,
            });
        }
        let win = win_f as usize;
        let step = step_f as usize;
        let nperseg = win.min(round_samples(fs) as usize);
        if nperseg < 2 {
            return Err(DspError::InvalidSampleRate(fs));
        }
        let nyq = fs / 2.0;
        for b in &config.bands {
            let ok = b.lo_hz.is_finite()
                && b.hi_hz.is_finite()
                && b.lo_hz >= 0.0
                && b.lo_hz < b.hi_hz
                && b.lo_hz < nyq;
            if !ok {
                return Err(DspError::InvalidBand {
                    name: b.name.clone(),
                    lo: b.lo_hz,
                    hi: b.hi_hz,
                });
            }
        }
        if !config.line_hz.is_finite() || config.line_hz <= 0.0 {
            return Err(DspError::InvalidFrequency {
                what: "line_hz",
                value: config.line_hz,
                nyquist: nyq,
            });
        }
        let t = config.thresholds;
        for (what, v) in [
            ("flat_ptp_uv", t.flat_ptp_uv),
            ("railed_abs_uv", t.railed_abs_uv),
            ("noisy_rms_uv", t.noisy_rms_uv),
            ("noisy_line_ratio", t.noisy_line_ratio),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(DspError::InvalidThreshold { what, value: v });
            }
        }
        if !(0.0..=1.0).contains(&t.railed_min_fraction) {
            return Err(DspError::InvalidThreshold {
                what: "railed_min_fraction",
                value: t.railed_min_fraction,
            });
        }

        let welch = Welch::new(win, nperseg, fs);
        // np.fft.rfftfreq(n, 1/fs): k * (1 / (n * (1/fs))).
        let val = 1.0 / (nperseg as f64 * (1.0 / fs));
        let freqs: Vec<f64> = (0..welch.psd.len()).map(|k| k as f64 * val).collect();
        let band_bins = config
            .bands
            .iter()
            .map(|b| bin_range(&freqs, |f| b.lo_hz <= f && f < b.hi_hz))
            .collect();
        let line = config.line_hz;
        let line_bins = bin_range(&freqs, |f| line - 2.0 <= f && f <= line + 2.0);
        let total_bins = bin_range(&freqs, |f| (1.0..=nyq).contains(&f));
        let quality = ChannelQuality {
            status: QualityStatus::Ok,
            rms_uv: 0.0,
            line_noise_ratio: 0.0,
        };
        let unfiltered = config.unfiltered;
        let direct = if unfiltered {
            None
        } else {
            DirectBins::new(nperseg, line_bins, total_bins)
        };
        let moments = BlockMoments::new(channels, win, step, t.railed_abs_uv);
        let halves =
            (halves && !unfiltered && nperseg == win && win == 2 * step && moments.is_some())
                .then(|| {
                    HalfSums::new(
                        channels,
                        &welch.hann,
                        welch.scale,
                        line_bins,
                        total_bins,
                        |k| welch.bin_scale(k),
                    )
                })
                .flatten();
        let raw_len = if halves.is_some() || unfiltered {
            0
        } else {
            channels * win
        };
        Ok(FeatureExtractor {
            channels,
            win,
            step,
            bands: config.bands.clone(),
            thresholds: t,
            raw_ring: vec![0.0; raw_len],
            filt_ring: vec![0.0; channels * win],
            pos: 0,
            filled: 0,
            since_emit: 0,
            welch,
            direct,
            halves,
            moments,
            unfiltered,
            bin_width: fs / nperseg as f64,
            band_bins,
            line_bins,
            total_bins,
            band_power: vec![0.0; config.bands.len() * channels],
            rms: vec![0.0; channels],
            quality: vec![quality; channels],
        })
    }

    /// Configured bands, in `band_power` order.
    pub fn bands(&self) -> &[Band] {
        &self.bands
    }

    /// Window length in samples (`round(window_s * fs)`).
    pub fn window_samples(&self) -> usize {
        self.win
    }

    /// Step in samples (`round(step_s * fs)`).
    pub fn step_samples(&self) -> usize {
        self.step
    }

    /// Welch segment length (`min(window, round(fs))`).
    pub fn nperseg(&self) -> usize {
        self.welch.nperseg
    }

    /// Channel count.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Drop history (e.g. after a stream gap); the next emission needs a
    /// full new window.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.filled = 0;
        self.since_emit = 0;
        if let Some(m) = &mut self.moments {
            m.reset();
        }
        if let Some(h) = &mut self.halves {
            h.reset();
        }
    }

    /// Feed frame-major `raw` and `filtered` samples (µV, `n × channels`)
    /// with one timestamp per frame. `emit` is called each time `step` new
    /// frames have arrived and a full window is available (so first after
    /// `max(window, step)` frames). Returns the number of emissions.
    pub fn push(
        &mut self,
        raw: &[f32],
        filtered: &[f32],
        timestamps: &[f64],
        emit: &mut impl FnMut(&FeatureFrame<'_>),
    ) -> Result<usize, DspError> {
        let c = self.channels;
        let expected = timestamps.len().saturating_mul(c);
        if raw.len() != expected {
            return Err(DspError::LengthMismatch {
                what: "raw (timestamps.len() * channels)",
                expected,
                actual: raw.len(),
            });
        }
        if filtered.len() != expected {
            return Err(DspError::LengthMismatch {
                what: "filtered (timestamps.len() * channels)",
                expected,
                actual: filtered.len(),
            });
        }
        let mut emitted = 0;
        let mut done = 0;
        while done < timestamps.len() {
            // Up to the next emission (a window is complete and a step has
            // passed) and the end of the current block, whichever is first.
            let to_emit = self
                .step
                .saturating_sub(self.since_emit)
                .max(self.win - self.filled)
                .max(1);
            let mut len = (timestamps.len() - done).min(to_emit);
            if let Some(m) = &self.moments {
                len = len.min(m.room());
            }
            let r = &raw[done * c..(done + len) * c];
            let f = &filtered[done * c..(done + len) * c];
            // Tiles of TILE frames up to the ring's end, transposed a
            // channel at a time: each channel's row gets a run of
            // contiguous samples, not one sample a frame (a frame's
            // channels are a row apart each).
            let mut at = 0;
            while at < len {
                let n = (len - at).min(TILE).min(self.win - self.pos);
                let span = at * c..(at + n) * c;
                if !self.raw_ring.is_empty() {
                    transpose(&r[span.clone()], c, &mut self.raw_ring, self.win, self.pos);
                }
                transpose(&f[span], c, &mut self.filt_ring, self.win, self.pos);
                self.pos = (self.pos + n) % self.win;
                at += n;
            }
            if let Some(m) = &mut self.moments {
                m.add(r, f);
            }
            if let Some(h) = &mut self.halves {
                h.add(r);
            }
            done += len;
            self.filled = (self.filled + len).min(self.win);
            self.since_emit += len;
            if self.since_emit >= self.step && self.filled == self.win {
                self.since_emit = 0;
                self.compute();
                emit(&FeatureFrame {
                    t: timestamps[done - 1],
                    band_power: &self.band_power,
                    rms: &self.rms,
                    quality: &self.quality,
                    channels: c,
                });
                emitted += 1;
            }
        }
        Ok(emitted)
    }

    /// Channel `ch`'s window in `ring`, oldest first.
    fn window(ring: &[f32], win: usize, pos: usize, ch: usize) -> Parts<'_> {
        let r = &ring[ch * win..(ch + 1) * win];
        [&r[pos..], &r[..pos]]
    }

    fn sum_bins(psd: &[f64], (a, b): (usize, usize)) -> f64 {
        psd[a..b].iter().sum()
    }

    /// Channel `ch`'s window reductions: from the blocks kept as the
    /// frames arrived, or read from the rings.
    fn moments(&self, ch: usize) -> Moments {
        if let Some(m) = &self.moments {
            debug_assert_eq!(m.filled, 0, "a window is whole blocks");
            return m.window(ch);
        }
        let filt = Self::window(&self.filt_ring, self.win, self.pos, ch);
        let (filt_sum, filt_sq) = lane_moments(filt);
        let raw = Self::window(self.raw_ring(), self.win, self.pos, ch);
        let (raw_min, raw_max, raw_railed, raw_sum) =
            lane_extent(raw, self.thresholds.railed_abs_uv);
        Moments {
            filt_sum,
            filt_sq,
            raw_min,
            raw_max,
            raw_railed,
            raw_sum,
        }
    }

    /// The raw samples' ring: the filtered one when they are the same.
    fn raw_ring(&self) -> &[f32] {
        if self.unfiltered {
            &self.filt_ring
        } else {
            &self.raw_ring
        }
    }

    /// Features for the current full window (all channels).
    fn compute(&mut self) {
        let c = self.channels;
        let th = self.thresholds;
        let upto_filt = self.band_bins.iter().map(|b| b.1).max().unwrap_or(0);
        let upto_raw = self.total_bins.1.max(self.line_bins.1);
        // Unfiltered, the one spectrum also gives the raw side's line
        // bins, and the total by Parseval less the bins it leaves out
        // (below 1 Hz; above Nyquist only if a bin's frequency rounds
        // past it).
        let len = self.welch.psd.len();
        let upto = if self.unfiltered {
            let above = if self.total_bins.1 < len { len } else { 0 };
            upto_filt
                .max(self.line_bins.1)
                .max(self.total_bins.0)
                .max(above)
        } else {
            upto_filt
        };
        for ch in 0..c {
            // Filtered: band powers + RMS.
            let m = self.moments(ch);
            let w = Self::window(&self.filt_ring, self.win, self.pos, ch);
            let (sum, ss) = (m.filt_sum, m.filt_sq);
            let rms = (ss / self.win as f64).sqrt();
            self.rms[ch] = rms;
            let energy = self.welch.compute(w, sum, upto, self.unfiltered);
            for (bi, &range) in self.band_bins.iter().enumerate() {
                self.band_power[bi * c + ch] =
                    Self::sum_bins(&self.welch.psd, range) * self.bin_width;
            }

            // Raw: flat / railed / line noise.
            let (lo, hi, railed, sum) = (m.raw_min, m.raw_max, m.raw_railed, m.raw_sum);
            let w = || Self::window(&self.raw_ring, self.win, self.pos, ch);
            let (line, total) = match (&self.halves, &mut self.direct) {
                _ if self.unfiltered => {
                    let psd = &self.welch.psd;
                    let k = self.welch.scale / self.welch.nseg as f64;
                    let left_out = Self::sum_bins(psd, (0, self.total_bins.0))
                        + Self::sum_bins(psd, (self.total_bins.1.max(self.total_bins.0), len));
                    let (a, b) = self.total_bins;
                    let total = if a < b {
                        k * self.welch.nperseg as f64 * energy - left_out
                    } else {
                        0.0
                    };
                    (Self::sum_bins(psd, self.line_bins), total)
                }
                (Some(h), _) => h.line_and_total(ch),
                (None, Some(d)) => self.welch.line_and_total(w(), sum, d),
                (None, None) => {
                    self.welch.compute(w(), sum, upto_raw, false);
                    let psd = &self.welch.psd;
                    (
                        Self::sum_bins(psd, self.line_bins),
                        Self::sum_bins(psd, self.total_bins),
                    )
                }
            };
            let ratio = if total > 0.0 { line / total } else { 0.0 };
            let railed_frac = railed as f64 / self.win as f64;
            let status = if railed > 0 && railed_frac >= th.railed_min_fraction {
                QualityStatus::Railed
            } else if hi - lo < th.flat_ptp_uv {
                QualityStatus::Flat
            } else if rms > th.noisy_rms_uv || ratio > th.noisy_line_ratio {
                QualityStatus::Noisy
            } else {
                QualityStatus::Ok
            };
            self.quality[ch] = ChannelQuality {
                status,
                rms_uv: rms,
                line_noise_ratio: ratio,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: f64 = 250.0;

    fn extractor(ch: usize) -> FeatureExtractor {
        FeatureExtractor::new(FS, ch, &FeatureConfig::default()).expect("extractor")
    }

    /// Run `n` frames of per-channel generators through a default extractor
    /// (raw == filtered unless `filt` is given) and return the last frame's
    /// quality plus the number of emissions.
    fn run(
        n: usize,
        gens: &[&dyn Fn(usize) -> f32],
        filt: Option<&dyn Fn(usize, usize) -> f32>,
    ) -> (Vec<ChannelQuality>, usize) {
        let ch = gens.len();
        let mut fx = extractor(ch);
        let mut raw = Vec::with_capacity(n * ch);
        let mut fil = Vec::with_capacity(n * ch);
        for i in 0..n {
            for (c, g) in gens.iter().enumerate() {
                raw.push(g(i));
                fil.push(filt.map_or(g(i), |f| f(c, i)));
            }
        }
        let ts: Vec<f64> = (0..n).map(|i| i as f64 / FS).collect();
        let mut last = Vec::new();
        let count = fx
            .push(&raw, &fil, &ts, &mut |f: &FeatureFrame<'_>| {
                last = f.quality.to_vec();
            })
            .expect("push");
        (last, count)
    }

    fn sine(f: f64, amp: f64) -> impl Fn(usize) -> f32 {
        move |i| (amp * (2.0 * PI * f * i as f64 / FS).sin()) as f32
    }

    #[test]
    fn lane_reductions_match_plain_ones() {
        for n in [0usize, 1, 7, 8, 9, 30_001] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 - 500.0 + 0.25 * (i % 3) as f32)
                .collect();
            let wide: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
            let plain_sum: f64 = wide.iter().sum();
            let plain: f64 = wide.iter().map(|x| x * x).sum();
            let plo = wide.iter().copied().fold(f64::INFINITY, f64::min);
            let phi = wide.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let pr = wide.iter().filter(|x| x.abs() >= 400.0).count();
            // Whole, and split into a ring's two parts anywhere.
            for cut in [0, n / 3, n] {
                let w = [&xs[..cut], &xs[cut..]];
                let (sum, ss) = lane_moments(w);
                assert!((plain - ss).abs() <= 1e-12 * plain.abs().max(1.0), "{n}");
                assert!((plain_sum - sum).abs() <= 1e-9, "{n}: {sum} vs {plain_sum}");
                let (lo, hi, r, s2) = lane_extent(w, 400.0);
                assert_eq!((lo, hi, r), (plo, phi, pr), "{n}");
                assert!((plain_sum - s2).abs() <= 1e-9, "{n}");
                assert_eq!(
                    sub(w, 2.min(n), n).iter().map(|p| p.len()).sum::<usize>(),
                    n - 2.min(n)
                );
            }
        }
        // NaN is ignored, as f64::min/max ignore it.
        let mut xs = [1.0f32; 20];
        xs[3] = f32::NAN;
        xs[17] = -2.0;
        let (lo, hi, r, _) = lane_extent([&xs[..5], &xs[5..]], 1.0);
        assert_eq!((lo, hi, r), (-2.0, 1.0, 19));
    }

    /// `n` frames of a 3-channel rig at `fs` and their stamps: mains at
    /// `line_hz` plus alpha and a little noise; alpha on an offset of
    /// -31 mV with a drift (as raw EEG has); noise alone.
    fn mains_rig(fs: f64, line_hz: f64, n: usize) -> (Vec<f32>, Vec<f64>) {
        let mut x = Vec::with_capacity(n * 3);
        for i in 0..n {
            let t = i as f64 / fs;
            // (A cosine: at Nyquist, a sine's samples are all near 0.)
            let mains = 40.0 * (2.0 * PI * line_hz * t + 0.1).cos();
            let alpha = 20.0 * (2.0 * PI * 10.0 * t + 0.3).sin();
            let noise = ((i * 7919) % 997) as f64 / 997.0 - 0.5;
            x.push((mains + alpha + noise) as f32);
            x.push((-31_000.0 + 900.0 * t + alpha + noise) as f32);
            x.push((5.0 * noise) as f32);
        }
        (x, (0..n).map(|i| i as f64 / fs).collect())
    }

    /// Push the 3-channel rig `x` (stamps `ts`) in uneven blocks (1, 7,
    /// 130, 33 and 301 frames, in turn: across DFT blocks and ring ends),
    /// resetting at frame `gap` (a stream gap) if given.
    fn push_unevenly(
        fx: &mut FeatureExtractor,
        x: &[f32],
        ts: &[f64],
        gap: Option<usize>,
        mut each: impl FnMut(&FeatureFrame<'_>),
    ) {
        let n = ts.len();
        let (mut at, mut k) = (0, 0);
        while at < n {
            let len = [1, 7, 130, 33, 301][k % 5].min(n - at);
            if gap.is_some_and(|g| (at..at + len).contains(&g)) {
                fx.reset();
            }
            let r = at * 3..(at + len) * 3;
            fx.push(&x[r.clone()], &x[r], &ts[at..at + len], &mut each)
                .expect("push");
            at += len;
            k += 1;
        }
    }

    /// The raw side's line and total power summed directly equal the
    /// FFT's sums, for one segment and several, even and odd lengths,
    /// a rate whose first bin falls below 1 Hz, a line band reaching 0 Hz
    /// (its bins outside the total's band are left out once), and a large
    /// offset with a drift (as raw EEG has).
    #[test]
    fn direct_line_power_matches_the_spectrum() {
        let cases: [(f64, f64, f64); 7] = [
            (250.0, 1.0, 50.0),
            (250.0, 1.0, 2.0),
            (2000.0, 1.0, 60.0),
            (255.0, 1.0, 50.0),
            (250.0, 2.5, 50.0),
            (249.6, 1.0, 50.0),
            (30_000.0, 1.0, 50.0),
        ];
        for (fs, window_s, line_hz) in cases {
            let config = FeatureConfig {
                window_s,
                line_hz,
                ..FeatureConfig::default()
            };
            let mut direct = FeatureExtractor::build(fs, 3, &config, false).expect("extractor");
            assert!(direct.direct.is_some(), "{fs} Hz takes the direct path");
            let mut fft = FeatureExtractor::build(fs, 3, &config, false).expect("extractor");
            fft.direct = None;
            let n = (fs * window_s * 2.2) as usize;
            let (x, ts) = mains_rig(fs, line_hz, n);
            let collect = |fx: &mut FeatureExtractor| {
                let mut got = Vec::new();
                fx.push(&x, &x, &ts, &mut |f: &FeatureFrame<'_>| {
                    got.extend(f.quality.iter().map(|q| q.line_noise_ratio));
                })
                .expect("push");
                got
            };
            let (a, b) = (collect(&mut direct), collect(&mut fft));
            assert!(!a.is_empty() && a.len() == b.len(), "{fs}");
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!((p - q).abs() < 1e-12, "{fs} Hz, {i}: {p} vs {q}");
            }
            // The mains channel is mostly line noise, the others are not
            // (a line band reaching 0 Hz takes in the drift).
            assert!(a[0] > 0.5 && a[2] < 0.2, "{fs}: {a:?}");
            assert!(line_hz < 10.0 || a[1] < 0.01, "{fs}: {a:?}");
        }
        // Wide line bands fall back to the FFT.
        assert!(DirectBins::new(250, (40, 60), (1, 126)).is_none());
    }

    /// The raw side's line and total power kept per half window (the
    /// default shape: one Welch segment, a step of half the window) give
    /// the raw ring's line-noise ratios up to rounding: integer and
    /// fractional rates (a first bin below 1 Hz), the mains line at
    /// Nyquist, a line band reaching 0 Hz, a raw offset of -31 mV with a
    /// drift, uneven pushes across DFT blocks, and a stream gap mid-half.
    #[test]
    fn half_sums_match_the_window() {
        let cases: [(f64, f64); 6] = [
            (250.0, 50.0),
            (2000.0, 60.0),
            (249.6, 50.0),
            (100.0, 50.0),
            (250.0, 2.0),
            (30_000.0, 50.0),
        ];
        for (fs, line_hz) in cases {
            let config = FeatureConfig {
                line_hz,
                ..FeatureConfig::default()
            };
            let mut halves = FeatureExtractor::build(fs, 3, &config, true).expect("extractor");
            assert!(
                halves.halves.is_some() && halves.raw_ring.is_empty(),
                "{fs}"
            );
            let mut ring = FeatureExtractor::build(fs, 3, &config, false).expect("extractor");
            assert!(ring.halves.is_none(), "{fs}");
            let n = (fs * 4.3) as usize;
            let (x, ts) = mains_rig(fs, line_hz, n);
            let gap = (fs * 2.1) as usize;
            let collect = |fx: &mut FeatureExtractor| {
                let mut got = Vec::new();
                push_unevenly(fx, &x, &ts, Some(gap), |f| {
                    got.extend(f.quality.iter().map(|q| (q.line_noise_ratio, q.status)));
                });
                got
            };
            let (a, b) = (collect(&mut halves), collect(&mut ring));
            assert!(
                a.len() >= 6 && a.len() == b.len(),
                "{fs}: {} vs {}",
                a.len(),
                b.len()
            );
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!((p.0 - q.0).abs() < 1e-10, "{fs} Hz, {i}: {p:?} vs {q:?}");
                assert_eq!(p.1, q.1, "{fs} Hz, {i}");
            }
            // The mains channel is mostly line noise, the others are not
            // (a line band reaching 0 Hz takes in the drift).
            assert!(a[0].0 > 0.5 && a[2].0 < 0.2, "{fs}: {a:?}");
            assert!(line_hz < 10.0 || a[1].0 < 0.01, "{fs}: {a:?}");
        }
    }

    /// Unfiltered (raw is filtered), one spectrum per channel gives what
    /// the two sides give apart: band powers, RMS, line-noise ratios and
    /// statuses equal the raw ring's, with no raw ring or half sums kept:
    /// the default shape, a step that keeps no block moments, a window of
    /// several Welch segments (odd length), a first bin below 1 Hz, mains
    /// at Nyquist, a line band reaching 0 Hz, and a rate with no bin in
    /// the total's band.
    #[test]
    fn unfiltered_matches_the_raw_ring() {
        let cases: [(f64, f64, f64, f64); 7] = [
            (250.0, 50.0, 1.0, 0.5),
            (2000.0, 60.0, 1.0, 0.33),
            (249.6, 50.0, 1.0, 0.5),
            (251.0, 50.0, 2.6, 0.5),
            (100.0, 50.0, 1.0, 0.5),
            (250.0, 2.0, 1.0, 0.5),
            (1.5, 0.7, 4.0, 2.0),
        ];
        for (fs, line_hz, window_s, step_s) in cases {
            let config = FeatureConfig {
                line_hz,
                window_s,
                step_s,
                bands: if fs > 2.0 {
                    Band::defaults()
                } else {
                    vec![Band::new("slow", 0.1, 0.6)]
                },
                ..FeatureConfig::default()
            };
            let one = FeatureConfig {
                unfiltered: true,
                ..config.clone()
            };
            let mut one = FeatureExtractor::new(fs, 3, &one).expect("extractor");
            assert!(
                one.halves.is_none() && one.direct.is_none() && one.raw_ring.is_empty(),
                "{fs}"
            );
            let mut ring = FeatureExtractor::build(fs, 3, &config, false).expect("extractor");
            let n = (fs * 4.0 * window_s) as usize;
            let (x, ts) = mains_rig(fs, line_hz, n);
            let collect = |fx: &mut FeatureExtractor| {
                let mut got = Vec::new();
                push_unevenly(fx, &x, &ts, None, |f| {
                    got.push((f.band_power.to_vec(), f.rms.to_vec(), f.quality.to_vec()));
                });
                got
            };
            let (a, b) = (collect(&mut one), collect(&mut ring));
            assert!(
                a.len() >= 3 && a.len() == b.len(),
                "{fs}: {} vs {}",
                a.len(),
                b.len()
            );
            let close = |p: f64, q: f64, tol: f64| (p - q).abs() <= tol * q.abs().max(1e-12);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                for (u, v) in p.0.iter().zip(&q.0) {
                    assert!(close(*u, *v, 1e-12), "{fs} Hz, {i}: bands {u} vs {v}");
                }
                assert_eq!(p.1, q.1, "{fs} Hz, {i}: rms");
                for (u, v) in p.2.iter().zip(&q.2) {
                    assert!(
                        (u.line_noise_ratio - v.line_noise_ratio).abs() < 1e-10,
                        "{fs} Hz, {i}: {u:?} vs {v:?}"
                    );
                    assert_eq!(u.status, v.status, "{fs} Hz, {i}");
                }
            }
            let last = &a[a.len() - 1].2;
            if fs > 2.0 {
                assert!(last[0].line_noise_ratio > 0.5, "{fs}: {last:?}");
            } else {
                assert!(
                    last.iter().all(|q| q.line_noise_ratio == 0.0),
                    "{fs}: {last:?}"
                );
            }
        }
    }

    /// A channel's features do not depend on the channels beside it: a
    /// rig of 37 channels (more than a SIMD vector's lanes or a tile's
    /// rows divide evenly) gives, channel by channel, exactly what
    /// one-channel extractors give, across uneven pushes that wrap the
    /// rings, with the window reductions kept per block or read from the
    /// window.
    #[test]
    fn each_channel_of_a_wide_rig_matches_it_alone() {
        let (fs, c, n) = (250.0, 37, 1400);
        for step_s in [0.5, 0.33] {
            let config = FeatureConfig {
                step_s,
                ..FeatureConfig::default()
            };
            let signal = |ch: usize, i: usize| {
                let t = i as f64 / fs;
                let f = 3.0 + ch as f64 * 1.1;
                (20.0 * (2.0 * PI * f * t).sin() + (ch * 7 + i % 11) as f64 * 0.3) as f32
            };
            let raw: Vec<f32> = (0..n)
                .flat_map(|i| (0..c).map(move |ch| signal(ch, i)))
                .collect();
            let filt: Vec<f32> = raw.iter().map(|x| x * 0.5 - 2.0).collect();
            let ts: Vec<f64> = (0..n).map(|i| i as f64 / fs).collect();
            let cuts = [0, 37, 300, 301, 777, 1000, n];
            let run = |fx: &mut FeatureExtractor, raw: &[f32], filt: &[f32], k: usize| {
                let mut got = Vec::new();
                for w in cuts.windows(2) {
                    let (a, b) = (w[0] * k, w[1] * k);
                    fx.push(&raw[a..b], &filt[a..b], &ts[w[0]..w[1]], &mut |x| {
                        got.push((
                            x.t,
                            x.band_power.to_vec(),
                            x.rms.to_vec(),
                            x.quality.to_vec(),
                        ));
                    })
                    .expect("push");
                }
                got
            };
            let mut wide = FeatureExtractor::new(fs, c, &config).expect("extractor");
            assert_eq!(wide.moments.is_some(), step_s == 0.5);
            let all = run(&mut wide, &raw, &filt, c);
            assert_eq!(
                all.len(),
                (n - 250) / wide.step_samples() + 1,
                "step {step_s}"
            );
            for ch in 0..c {
                let one =
                    |v: &[f32]| -> Vec<f32> { v.iter().skip(ch).step_by(c).copied().collect() };
                let mut alone = FeatureExtractor::new(fs, 1, &config).expect("extractor");
                let got = run(&mut alone, &one(&raw), &one(&filt), 1);
                assert_eq!(got.len(), all.len());
                for (g, w) in got.iter().zip(&all) {
                    assert_eq!(g.0, w.0);
                    assert_eq!(g.2[0], w.2[ch], "rms of channel {ch}");
                    for b in 0..config.bands.len() {
                        assert_eq!(g.1[b], w.1[b * c + ch], "band {b}, channel {ch}");
                    }
                    assert_eq!(g.3[0], w.3[ch], "quality of channel {ch}");
                }
            }
        }
    }

    /// The reductions kept per block as frames arrive give the features
    /// that reducing the whole window at each emission gives: windows and
    /// steps that divide each other or not, a step longer than the window,
    /// pushes of any length, a reset midway, NaN and railed samples.
    #[test]
    fn block_moments_match_the_whole_window() {
        let fs = 250.0;
        for (window_s, step_s) in [(1.0, 0.5), (1.0, 0.3), (1.0, 1.0), (0.4, 1.0), (2.0, 0.2)] {
            let config = FeatureConfig {
                window_s,
                step_s,
                ..FeatureConfig::default()
            };
            // (The raw ring on both sides: `half_sums_match_the_window`
            // compares the half-window sums with it.)
            let mut blocks = FeatureExtractor::build(fs, 3, &config, false).expect("extractor");
            assert!(blocks.moments.is_some(), "{window_s}/{step_s}");
            let mut whole = FeatureExtractor::build(fs, 3, &config, false).expect("extractor");
            whole.moments = None;
            let n = 1500;
            let mut raw = Vec::with_capacity(n * 3);
            for i in 0..n {
                let t = i as f64 / fs;
                raw.push((30.0 * (2.0 * PI * 10.0 * t).sin()) as f32);
                raw.push(if i % 97 < 40 { 200_000.0 } else { -3.0 } as f32);
                raw.push(if i == 400 {
                    f32::NAN
                } else {
                    (i % 13) as f32 * 0.01
                });
            }
            let filt: Vec<f32> = raw.iter().map(|x| x * 0.5 + 1.0).collect();
            let ts: Vec<f64> = (0..n).map(|i| i as f64 / fs).collect();
            let collect = |fx: &mut FeatureExtractor, cut: &[usize]| {
                let mut got = Vec::new();
                let mut from = 0;
                for &to in cut.iter().chain([n].iter()) {
                    if from == 700 {
                        fx.reset();
                    }
                    let (r, f) = (&raw[from * 3..to * 3], &filt[from * 3..to * 3]);
                    fx.push(r, f, &ts[from..to], &mut |x: &FeatureFrame<'_>| {
                        got.push(x.t);
                        got.extend(x.rms);
                        got.extend(x.band_power);
                        for q in x.quality {
                            got.push(q.status as u8 as f64);
                            got.push(q.line_noise_ratio);
                        }
                    })
                    .expect("push");
                    from = to;
                }
                got
            };
            let a = collect(&mut blocks, &[1, 2, 63, 200, 333, 700, 701, 1111]);
            let b = collect(&mut whole, &[700]);
            assert!(a.len() > 20 && a.len() == b.len(), "{window_s}/{step_s}");
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                let same = p.to_bits() == q.to_bits()
                    || (p - q).abs() <= 1e-9 * q.abs().max(1.0)
                    || (p.is_nan() && q.is_nan());
                assert!(same, "{window_s}/{step_s} [{i}]: {p} vs {q}");
            }
        }
        // A window and step with no common block worth keeping.
        let odd = FeatureConfig {
            window_s: 1.0,
            step_s: 0.308,
            ..FeatureConfig::default()
        };
        let fx = FeatureExtractor::new(250.0, 1, &odd).expect("extractor");
        assert!(fx.moments.is_none());
    }

    #[test]
    fn emission_schedule() {
        // window 250, step 125: emits at frames 250, 375, 500, ...
        let g = sine(10.0, 10.0);
        assert_eq!(run(249, &[&g], None).1, 0);
        assert_eq!(run(250, &[&g], None).1, 1);
        assert_eq!(run(374, &[&g], None).1, 1);
        assert_eq!(run(375, &[&g], None).1, 2);
        assert_eq!(run(1000, &[&g], None).1, 7);
    }

    #[test]
    fn timestamp_is_last_sample_of_window() {
        let mut fx = extractor(1);
        let x = vec![1.0f32; 400];
        let ts: Vec<f64> = (0..400).map(|i| 5.0 + i as f64).collect();
        let mut got = Vec::new();
        fx.push(&x, &x, &ts, &mut |f: &FeatureFrame<'_>| got.push(f.t))
            .expect("push");
        assert_eq!(got, vec![5.0 + 249.0, 5.0 + 374.0]);
    }

    #[test]
    fn quality_classification() {
        let ok = sine(10.0, 20.0);
        let flat = |_i: usize| 12.25f32;
        let railed = |i: usize| if i % 2 == 0 { 187_500.0 } else { -187_500.0 };
        let loud = sine(10.0, 400.0);
        let mains = |i: usize| sine(50.0, 40.0)(i) + sine(10.0, 5.0)(i);
        let (q, n) = run(500, &[&ok, &flat, &railed, &loud, &mains], None);
        assert!(n > 0);
        let status: Vec<&str> = q.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(status, ["ok", "flat", "railed", "noisy", "noisy"]);
        // 20 uV amplitude sine: rms = 20/sqrt(2).
        assert!(
            (q[0].rms_uv - 20.0 / 2f64.sqrt()).abs() < 0.05,
            "{}",
            q[0].rms_uv
        );
        assert!(q[0].line_noise_ratio < 0.01);
        assert!(q[4].line_noise_ratio > 0.9, "{}", q[4].line_noise_ratio);
        assert_eq!(q[1].line_noise_ratio, 0.0);
    }

    #[test]
    fn quality_uses_raw_for_line_noise_and_filtered_for_rms() {
        // Raw has strong mains; the "filtered" stream (notched) does not.
        let raw = |i: usize| sine(50.0, 40.0)(i) + sine(10.0, 5.0)(i);
        let filt = |_c: usize, i: usize| sine(10.0, 5.0)(i);
        let (q, _) = run(500, &[&raw], Some(&filt));
        assert_eq!(q[0].status, QualityStatus::Noisy);
        assert!((q[0].rms_uv - 5.0 / 2f64.sqrt()).abs() < 0.05);
        // A single rail pop is not "railed" (needs >= 5 % of the window).
        let pop = |i: usize| {
            if i == 400 {
                190_000.0
            } else {
                sine(10.0, 20.0)(i)
            }
        };
        let smooth = |_c: usize, i: usize| sine(10.0, 20.0)(i);
        let (q, _) = run(500, &[&pop], Some(&smooth));
        assert_eq!(q[0].status, QualityStatus::Ok);
    }

    #[test]
    fn band_power_of_pure_sine_lands_in_its_band() {
        let g = sine(10.0, 10.0);
        let mut fx = extractor(1);
        let x: Vec<f32> = (0..500).map(&g).collect();
        let ts = vec![0.0; 500];
        let mut bp = Vec::new();
        fx.push(&x, &x, &ts, &mut |f: &FeatureFrame<'_>| {
            bp = f.band_power.to_vec();
        })
        .expect("push");
        // alpha (8-13 Hz) holds (almost) all of the 50 uV^2 sine power.
        assert!((bp[2] - 50.0).abs() < 1.0, "{bp:?}");
        assert!(bp[0] < 0.5 && bp[4] < 0.5, "{bp:?}");
    }

    #[test]
    fn config_and_shape_errors() {
        let cfg = FeatureConfig::default();
        assert!(matches!(
            FeatureExtractor::new(0.0, 1, &cfg),
            Err(DspError::InvalidSampleRate(_))
        ));
        assert!(matches!(
            FeatureExtractor::new(FS, 0, &cfg),
            Err(DspError::ZeroChannels)
        ));
        let bad = |c: FeatureConfig| FeatureExtractor::new(FS, 2, &c).err();
        assert!(matches!(
            bad(FeatureConfig {
                window_s: 0.0,
                ..cfg.clone()
            }),
            Some(DspError::InvalidDuration {
                what: "window_s",
                ..
            })
        ));
        assert!(matches!(
            bad(FeatureConfig {
                step_s: f64::NAN,
                ..cfg.clone()
            }),
            Some(DspError::InvalidDuration { what: "step_s", .. })
        ));
        assert!(matches!(
            bad(FeatureConfig {
                bands: vec![Band::new("x", 8.0, 4.0)],
                ..cfg.clone()
            }),
            Some(DspError::InvalidBand { .. })
        ));
        assert!(matches!(
            bad(FeatureConfig {
                line_hz: -50.0,
                ..cfg.clone()
            }),
            Some(DspError::InvalidFrequency { .. })
        ));
        let th = QualityThresholds {
            railed_min_fraction: 2.0,
            ..QualityThresholds::default()
        };
        assert!(matches!(
            bad(FeatureConfig {
                thresholds: th,
                ..cfg.clone()
            }),
            Some(DspError::InvalidThreshold { .. })
        ));
        let mut fx = extractor(2);
        let mut sink = |_: &FeatureFrame<'_>| {};
        assert!(fx.push(&[0.0; 4], &[0.0; 4], &[0.0], &mut sink).is_err());
        assert!(fx.push(&[0.0; 2], &[0.0; 4], &[0.0], &mut sink).is_err());
        assert_eq!(fx.push(&[0.0; 2], &[0.0; 2], &[0.0], &mut sink), Ok(0));
    }
}
