//! Multi-channel cascaded-biquad filter (SciPy `sosfilt` semantics).
//!
//! Layout is structure-of-arrays (per section: `z1` for all channels, then
//! `z2` for all channels). Samples are processed in chunks of
//! [`CHUNK_FRAMES`] frames converted into a frame-major f64 scratch buffer
//! that stays in L1 while every section is applied to it (sections outer,
//! channels inner). Channels are independent, so the inner loop runs across
//! them and auto-vectorises; the time recursion is the loop around it.

use super::filter_design::{design_sos, sosfilt_zi, FilterSpec, Sos};
use super::DspError;

/// Frames per inner chunk: 64 frames × 32 ch × 8 B = 16 KiB (fits L1).
pub const CHUNK_FRAMES: usize = 64;

/// Normalised section coefficients `b0, b1, b2, a1, a2` (`a0 == 1`).
#[derive(Debug, Clone, Copy)]
struct Coef {
    b0: f64,
    b1: f64,
    b2: f64,
    a1: f64,
    a2: f64,
}

/// Streaming SOS filter for `channels` interleaved channels with state
/// carried across calls (batches) for the lifetime of the bank.
#[derive(Debug, Clone)]
pub struct FilterBank {
    channels: usize,
    sos: Vec<Sos>,
    coef: Vec<Coef>,
    /// `sosfilt_zi` per section, scaled by each channel's first sample.
    zi: Vec<[f64; 2]>,
    /// Per section: `[z1; channels]` then `[z2; channels]`.
    state: Vec<f64>,
    /// Frame-major f64 chunk (`CHUNK_FRAMES * channels`).
    scratch: Vec<f64>,
    /// False until the first frame has seeded the steady-state.
    primed: bool,
}

impl FilterBank {
    /// Design the cascade for `spec` at `fs` and allocate all buffers.
    pub fn new(spec: &FilterSpec, fs: f64, channels: usize) -> Result<Self, DspError> {
        let sos = design_sos(spec, fs)?;
        Self::from_sos(&sos, channels)
    }

    /// Build from explicit SOS rows (`[b0,b1,b2,a0,a1,a2]`); rows are
    /// normalised by `a0`. An empty slice gives an identity filter.
    pub fn from_sos(sos: &[Sos], channels: usize) -> Result<Self, DspError> {
        if channels == 0 {
            return Err(DspError::ZeroChannels);
        }
        let mut norm = Vec::with_capacity(sos.len());
        for (i, s) in sos.iter().enumerate() {
            if s.iter().any(|c| !c.is_finite()) || s[3] == 0.0 {
                return Err(DspError::InvalidSos { section: i });
            }
            let a0 = s[3];
            norm.push([s[0] / a0, s[1] / a0, s[2] / a0, 1.0, s[4] / a0, s[5] / a0]);
        }
        let coef = norm
            .iter()
            .map(|s| Coef {
                b0: s[0],
                b1: s[1],
                b2: s[2],
                a1: s[4],
                a2: s[5],
            })
            .collect();
        let zi = sosfilt_zi(&norm);
        Ok(FilterBank {
            channels,
            state: vec![0.0; norm.len() * 2 * channels],
            scratch: vec![0.0; CHUNK_FRAMES * channels],
            sos: norm,
            coef,
            zi,
            primed: false,
        })
    }

    /// Number of interleaved channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The (normalised) SOS cascade in processing order.
    pub fn sos(&self) -> &[Sos] {
        &self.sos
    }

    /// True when no section is configured (output == input).
    pub fn is_identity(&self) -> bool {
        self.sos.is_empty()
    }

    /// Forget all history; the next frame re-seeds the steady state.
    pub fn reset(&mut self) {
        self.state.fill(0.0);
        self.primed = false;
    }

    fn check_shape(&self, input: usize, output: usize) -> Result<(), DspError> {
        if input % self.channels != 0 {
            return Err(DspError::LengthMismatch {
                what: "input (must be a multiple of channels)",
                expected: (input / self.channels + 1) * self.channels,
                actual: input,
            });
        }
        if output != input {
            return Err(DspError::LengthMismatch {
                what: "output (must equal input length)",
                expected: input,
                actual: output,
            });
        }
        Ok(())
    }

    /// Filter interleaved f32 frames (`n_frames × channels`); the f64 result
    /// is rounded once to f32. No allocation.
    pub fn process(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), DspError> {
        self.check_shape(input.len(), output.len())?;
        if self.sos.is_empty() {
            output.copy_from_slice(input);
            return Ok(());
        }
        let c = self.channels;
        let step = CHUNK_FRAMES * c;
        for (inp, out) in input.chunks(step).zip(output.chunks_mut(step)) {
            let mut buf = std::mem::take(&mut self.scratch);
            let work = &mut buf[..inp.len()];
            for (w, &x) in work.iter_mut().zip(inp) {
                *w = f64::from(x);
            }
            self.run_chunk(work);
            for (o, &w) in out.iter_mut().zip(work.iter()) {
                *o = w as f32;
            }
            self.scratch = buf;
        }
        Ok(())
    }

    /// Filter interleaved f64 frames; same state as [`Self::process`], used
    /// to check the f64 path against SciPy to 1e-9.
    pub fn process_f64(&mut self, input: &[f64], output: &mut [f64]) -> Result<(), DspError> {
        self.check_shape(input.len(), output.len())?;
        output.copy_from_slice(input);
        if self.sos.is_empty() {
            return Ok(());
        }
        for chunk in output.chunks_mut(CHUNK_FRAMES * self.channels) {
            self.run_chunk(chunk);
        }
        Ok(())
    }

    /// Apply all sections in place to a frame-major f64 chunk.
    fn run_chunk(&mut self, work: &mut [f64]) {
        let c = self.channels;
        if work.is_empty() {
            return;
        }
        if !self.primed {
            self.prime(&work[..c.min(work.len())]);
        }
        for (coef, st) in self.coef.iter().zip(self.state.chunks_exact_mut(2 * c)) {
            let (z1, z2) = st.split_at_mut(c);
            run_section(*coef, z1, z2, work, c);
        }
    }

    /// Seed every section's state with `sosfilt_zi * x[0]` per channel.
    fn prime(&mut self, first: &[f64]) {
        let c = self.channels;
        for (s, zi) in self.zi.iter().enumerate() {
            let base = s * 2 * c;
            let (z1, z2) = self.state[base..base + 2 * c].split_at_mut(c);
            for ((z1, z2), &x) in z1.iter_mut().zip(z2.iter_mut()).zip(first) {
                *z1 = zi[0] * x;
                *z2 = zi[1] * x;
            }
        }
        self.primed = true;
    }
}

/// Channels per register block: 8 f64 = 4 SSE2 / 2 AVX2 / 1 AVX-512
/// vectors, enough independent recursions to hide FP latency while the
/// block's `z1`/`z2` stay in registers for the whole chunk.
const LANES: usize = 8;

/// One biquad (direct form II transposed, exactly `sosfilt`'s arithmetic)
/// over a frame-major chunk. Channels are independent, so they are processed
/// in blocks of [`LANES`] whose state lives in local arrays across all rows;
/// leftover channels (`channels % LANES`) use the same math lane by lane.
#[inline]
fn run_section(k: Coef, z1: &mut [f64], z2: &mut [f64], work: &mut [f64], c: usize) {
    let blocks = c / LANES;
    for b in 0..blocks {
        let off = b * LANES;
        let mut s1 = [0.0; LANES];
        let mut s2 = [0.0; LANES];
        s1.copy_from_slice(&z1[off..off + LANES]);
        s2.copy_from_slice(&z2[off..off + LANES]);
        for row in work.chunks_exact_mut(c) {
            if let Ok(xs) = <&mut [f64; LANES]>::try_from(&mut row[off..off + LANES]) {
                for i in 0..LANES {
                    let x = xs[i];
                    let y = k.b0 * x + s1[i];
                    s1[i] = k.b1 * x - k.a1 * y + s2[i];
                    s2[i] = k.b2 * x - k.a2 * y;
                    xs[i] = y;
                }
            }
        }
        z1[off..off + LANES].copy_from_slice(&s1);
        z2[off..off + LANES].copy_from_slice(&s2);
    }
    let rest = blocks * LANES;
    if rest < c {
        let (z1, z2) = (&mut z1[rest..c], &mut z2[rest..c]);
        for row in work.chunks_exact_mut(c) {
            for ((x, s1), s2) in row[rest..].iter_mut().zip(z1.iter_mut()).zip(z2.iter_mut()) {
                let xin = *x;
                let y = k.b0 * xin + *s1;
                *s1 = k.b1 * xin - k.a1 * y + *s2;
                *s2 = k.b2 * xin - k.a2 * y;
                *x = y;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp_spec() -> FilterSpec {
        FilterSpec {
            highpass_hz: Some(1.0),
            lowpass_hz: Some(45.0),
            notch_hz: Some(50.0),
            ..FilterSpec::default()
        }
    }

    fn signal(n: usize, ch: usize) -> Vec<f32> {
        (0..n * ch)
            .map(|i| {
                let (t, c) = ((i / ch) as f32 / 250.0, (i % ch) as f32);
                100.0
                    + c
                    + 20.0 * (2.0 * std::f32::consts::PI * 10.0 * t).sin()
                    + 5.0 * (2.0 * std::f32::consts::PI * 50.0 * t + c).sin()
            })
            .collect()
    }

    fn err(spec: FilterSpec, fs: f64) -> DspError {
        match FilterBank::new(&spec, fs, 2) {
            Err(e) => e,
            Ok(_) => panic!("expected error for {spec:?} at fs={fs}"),
        }
    }

    #[test]
    fn validation_errors() {
        let d = FilterSpec::default();
        let hp = |v| FilterSpec {
            highpass_hz: Some(v),
            ..FilterSpec::default()
        };
        let lp = |v| FilterSpec {
            lowpass_hz: Some(v),
            ..FilterSpec::default()
        };
        assert!(matches!(
            err(d.clone(), 0.0),
            DspError::InvalidSampleRate(_)
        ));
        assert!(matches!(
            err(d.clone(), f64::NAN),
            DspError::InvalidSampleRate(_)
        ));
        for bad in [0.0, -1.0, 125.0, 200.0, f64::NAN, f64::INFINITY] {
            let e = err(hp(bad), 250.0);
            assert!(
                matches!(
                    e,
                    DspError::InvalidFrequency {
                        what: "highpass_hz",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
            let e = err(lp(bad), 250.0);
            assert!(matches!(
                e,
                DspError::InvalidFrequency {
                    what: "lowpass_hz",
                    ..
                }
            ));
        }
        let inverted = FilterSpec {
            highpass_hz: Some(40.0),
            lowpass_hz: Some(40.0),
            ..FilterSpec::default()
        };
        assert!(matches!(
            err(inverted, 250.0),
            DspError::InvertedBand { .. }
        ));
        for order in [0, 9, 100] {
            let e = err(FilterSpec { order, ..lp(30.0) }, 250.0);
            assert_eq!(e, DspError::InvalidOrder(order));
            assert!(e.to_string().contains("1..=8"));
        }
        for q in [0.0, -3.0, f64::NAN] {
            let e = err(
                FilterSpec {
                    notch_q: q,
                    notch_hz: Some(50.0),
                    ..FilterSpec::default()
                },
                250.0,
            );
            assert!(matches!(e, DspError::InvalidNotchQ(_)));
        }
        let e = err(
            FilterSpec {
                notch_hz: Some(150.0),
                ..FilterSpec::default()
            },
            250.0,
        );
        assert!(matches!(
            e,
            DspError::InvalidFrequency {
                what: "notch_hz",
                ..
            }
        ));
        let e = err(
            FilterSpec {
                notch_hz: Some(50.0),
                notch_harmonics: 0,
                ..FilterSpec::default()
            },
            250.0,
        );
        assert_eq!(e, DspError::InvalidNotchHarmonics(0));
        assert_eq!(
            FilterBank::new(&bp_spec(), 250.0, 0).err(),
            Some(DspError::ZeroChannels)
        );
    }

    #[test]
    fn shape_errors_are_reported_not_panicked() {
        let mut bank = FilterBank::new(&bp_spec(), 250.0, 3).expect("bank");
        let mut out = vec![0.0f32; 7];
        let e = bank.process(&[0.0; 7], &mut out);
        assert!(matches!(e, Err(DspError::LengthMismatch { .. })));
        let mut out = vec![0.0f32; 5];
        let e = bank.process(&[0.0; 6], &mut out);
        assert!(matches!(e, Err(DspError::LengthMismatch { .. })));
        let mut out = vec![0.0f64; 3];
        assert!(bank.process_f64(&[0.0; 6], &mut out).is_err());
        // Empty input is fine and does not prime the state.
        bank.process(&[], &mut []).expect("empty ok");
        let bad = [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]];
        assert_eq!(
            FilterBank::from_sos(&bad, 1).err(),
            Some(DspError::InvalidSos { section: 0 })
        );
    }

    #[test]
    fn notch_harmonics_stop_at_nyquist() {
        let spec = FilterSpec {
            notch_hz: Some(50.0),
            notch_harmonics: 10,
            ..FilterSpec::default()
        };
        // 50, 100 < 125; 150 >= 125 is skipped.
        assert_eq!(
            FilterBank::new(&spec, 250.0, 1).expect("bank").sos().len(),
            2
        );
        let spec = FilterSpec {
            order: 3,
            ..bp_spec()
        };
        assert_eq!(
            FilterBank::new(&spec, 250.0, 1).expect("bank").sos().len(),
            4
        );
    }

    #[test]
    fn no_filter_is_identity() {
        for ch in [1, 3, 32] {
            let mut bank = FilterBank::new(&FilterSpec::default(), 250.0, ch).expect("bank");
            assert!(bank.is_identity());
            let x = signal(300, ch);
            let mut y = vec![0.0f32; x.len()];
            bank.process(&x, &mut y).expect("process");
            assert_eq!(x, y);
            let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let mut yd = vec![0.0; xd.len()];
            bank.process_f64(&xd, &mut yd).expect("process_f64");
            assert_eq!(xd, yd);
        }
    }

    #[test]
    fn state_carries_across_calls() {
        for ch in [1, 3, 5, 32] {
            let x = signal(1000, ch);
            let mut whole = FilterBank::new(&bp_spec(), 250.0, ch).expect("bank");
            let mut y_whole = vec![0.0f32; x.len()];
            whole.process(&x, &mut y_whole).expect("process");

            let mut split = FilterBank::new(&bp_spec(), 250.0, ch).expect("bank");
            let mut y_split = vec![0.0f32; x.len()];
            let mut start = 0;
            for (i, len) in [1usize, 63, 64, 65, 250, 7].iter().cycle().enumerate() {
                if start >= 1000 || i > 1000 {
                    break;
                }
                let end = (start + len).min(1000);
                split
                    .process(&x[start * ch..end * ch], &mut y_split[start * ch..end * ch])
                    .expect("process");
                start = end;
            }
            assert_eq!(y_whole, y_split, "ch={ch}");

            // A fresh bank (no carried state) on the second half differs.
            let mut fresh = FilterBank::new(&bp_spec(), 250.0, ch).expect("bank");
            let mut y_fresh = vec![0.0f32; 500 * ch];
            fresh
                .process(&x[500 * ch..], &mut y_fresh)
                .expect("process");
            assert_ne!(&y_whole[500 * ch..], &y_fresh[..]);

            // reset() restores the fresh-start behaviour.
            whole.reset();
            let mut y_again = vec![0.0f32; x.len()];
            whole.process(&x, &mut y_again).expect("process");
            assert_eq!(y_whole, y_again);
        }
    }

    #[test]
    fn steady_state_start_has_no_dc_transient() {
        // Constant input through a low-pass: zi * x[0] means output == input.
        let spec = FilterSpec {
            lowpass_hz: Some(30.0),
            ..FilterSpec::default()
        };
        let mut bank = FilterBank::new(&spec, 250.0, 3).expect("bank");
        let x: Vec<f64> = (0..300).map(|i| [1000.0, -50.0, 3.0][i % 3]).collect();
        let mut y = vec![0.0; x.len()];
        bank.process_f64(&x, &mut y).expect("process");
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-9 * a.abs(), "{a} vs {b}");
        }
    }
}
