//! Sliding-window Welch band powers, RMS and per-channel signal quality.
//!
//! Matches `scipy.signal.welch(x, fs, nperseg=min(win, round(fs)))` with its
//! defaults (periodic Hann, 50 % overlap, constant detrend, density scaling,
//! one-sided, mean averaging). All buffers, the FFT plan and the Hann window
//! are prepared in [`FeatureExtractor::new`]; `push` never allocates.

use super::DspError;
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
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            window_s: 1.0,
            step_s: 0.5,
            bands: Band::defaults(),
            line_hz: 50.0,
            thresholds: QualityThresholds::default(),
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

    /// PSD of the window `w` into `self.psd[..upto]` (the bins past
    /// `upto` are left stale: callers that need fewer bins skip their
    /// accumulation). `sum` is the window's sum, which gives the mean of
    /// a segment that is the whole window without another pass.
    fn compute(&mut self, w: Parts<'_>, sum: f64, upto: usize) {
        let upto = upto.min(self.psd.len());
        self.psd[..upto].fill(0.0);
        let n = self.nperseg;
        let whole = self.nseg == 1 && w[0].len() + w[1].len() == n;
        for seg in 0..self.nseg {
            let s = sub(w, seg * self.hop, seg * self.hop + n);
            let total = if whole { sum } else { lane_moments(s).0 };
            let mean = total / n as f64;
            // Detrended and windowed straight from the ring (no copy).
            let (b0, b1) = self.buf.split_at_mut(s[0].len());
            let (h0, h1) = self.hann.split_at(s[0].len());
            for ((b, &v), &h) in b0.iter_mut().zip(s[0]).zip(h0) {
                *b = (f64::from(v) - mean) * h;
            }
            for ((b, &v), &h) in b1.iter_mut().zip(s[1]).zip(h1) {
                *b = (f64::from(v) - mean) * h;
            }
            // Lengths are fixed at construction, so this cannot fail.
            let _ =
                self.fft
                    .process_with_scratch(&mut self.buf, &mut self.spectrum, &mut self.scratch);
            for (p, b) in self.psd[..upto].iter_mut().zip(&self.spectrum) {
                *p += b.norm_sqr();
            }
        }
        let k = self.scale / self.nseg as f64;
        let last = self.psd.len() - 1;
        for (i, p) in self.psd[..upto].iter_mut().enumerate() {
            // One-sided: double all but DC and (for even n) Nyquist.
            let double = i > 0 && (i < last || n % 2 == 1);
            *p *= if double { 2.0 * k } else { k };
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
        Ok(FeatureExtractor {
            channels,
            win,
            step,
            bands: config.bands.clone(),
            thresholds: t,
            raw_ring: vec![0.0; channels * win],
            filt_ring: vec![0.0; channels * win],
            pos: 0,
            filled: 0,
            since_emit: 0,
            welch,
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
        let frames = raw.chunks_exact(c).zip(filtered.chunks_exact(c));
        for ((r, f), &t) in frames.zip(timestamps) {
            let pos = self.pos;
            for ch in 0..c {
                self.raw_ring[ch * self.win + pos] = r[ch];
                self.filt_ring[ch * self.win + pos] = f[ch];
            }
            self.pos = if pos + 1 == self.win { 0 } else { pos + 1 };
            self.filled = (self.filled + 1).min(self.win);
            self.since_emit += 1;
            if self.since_emit >= self.step && self.filled == self.win {
                self.since_emit = 0;
                self.compute();
                emit(&FeatureFrame {
                    t,
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

    /// Features for the current full window (all channels).
    fn compute(&mut self) {
        let c = self.channels;
        let th = self.thresholds;
        let upto_filt = self.band_bins.iter().map(|b| b.1).max().unwrap_or(0);
        let upto_raw = self.total_bins.1.max(self.line_bins.1);
        for ch in 0..c {
            // Filtered: band powers + RMS.
            let w = Self::window(&self.filt_ring, self.win, self.pos, ch);
            let (sum, ss) = lane_moments(w);
            let rms = (ss / self.win as f64).sqrt();
            self.rms[ch] = rms;
            self.welch.compute(w, sum, upto_filt);
            for (bi, &range) in self.band_bins.iter().enumerate() {
                self.band_power[bi * c + ch] =
                    Self::sum_bins(&self.welch.psd, range) * self.bin_width;
            }

            // Raw: flat / railed / line noise.
            let w = Self::window(&self.raw_ring, self.win, self.pos, ch);
            let (lo, hi, railed, sum) = lane_extent(w, th.railed_abs_uv);
            self.welch.compute(w, sum, upto_raw);
            let total = Self::sum_bins(&self.welch.psd, self.total_bins);
            let line = Self::sum_bins(&self.welch.psd, self.line_bins);
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
