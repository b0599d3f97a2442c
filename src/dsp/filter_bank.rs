//! Multi-channel cascaded-biquad filter (SciPy `sosfilt` semantics).
//!
//! Layout is structure-of-arrays (per section: `z1` for all channels, then
//! `z2` for all channels). Samples are processed in chunks of
//! [`CHUNK_FRAMES`] frames converted into a frame-major f64 scratch buffer
//! that stays in L1 while every section is applied to it (sections outer,
//! channels inner). Channels are independent, so the inner loop runs across
//! them and auto-vectorises; the time recursion is the loop around it.
//!
//! CPU dispatch at run time: the whole chunk loop (conversions and every
//! section) is compiled several times by `multiversion` (its `simd` target
//! set: on x86-64 AVX-512, AVX2+FMA, SSE4.x; on aarch64 NEON, ...) and the
//! best version for the CPU is picked on the first call, so a binary built
//! for baseline x86-64 runs the wide vectors of the machine it runs on.
//! Rust never contracts `a * b + c` into a fused multiply-add, so every
//! version computes bit-identical results (SciPy-exact, see
//! `reference_tests.rs`); FMA only widens what the vector units may do.

use super::filter_design::{design_sos, sosfilt_zi, FilterSpec, Sos};
use super::DspError;
use multiversion::multiversion;

/// Frames per inner chunk: 64 frames × 32 ch × 8 B = 16 KiB (fits L1).
pub const CHUNK_FRAMES: usize = 64;

/// Numerator shapes with exact shortcuts. Butterworth sections are
/// `g * [1, 2, 1]`, `g * [1, -2, 1]` or `g * [1, 0, -1]` (zeros at ±1, gain
/// `g` only in the first section). Because `2g*x == (g*x) + (g*x)` and
/// `1*x == x` exactly in IEEE arithmetic, these forms give bit-identical
/// results to the generic recursion with 2–4 fewer FP operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Generic,
    Plus2,
    Minus2,
    ZeroMinus1,
}

/// Normalised section coefficients `b0, b1, b2, a1, a2` (`a0 == 1`).
#[derive(Debug, Clone, Copy)]
struct Coef {
    b0: f64,
    b1: f64,
    b2: f64,
    a1: f64,
    a2: f64,
    form: Form,
}

impl Coef {
    fn new(s: &Sos) -> Self {
        let (b0, b1, b2) = (s[0], s[1], s[2]);
        let form = if b1 == 2.0 * b0 && b2 == b0 {
            Form::Plus2
        } else if b1 == -2.0 * b0 && b2 == b0 {
            Form::Minus2
        } else if b1 == 0.0 && b2 == -b0 {
            Form::ZeroMinus1
        } else {
            Form::Generic
        };
        Coef {
            b0,
            b1,
            b2,
            a1: s[4],
            a2: s[5],
            form,
        }
    }
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
        let coef = norm.iter().map(Coef::new).collect();
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
        if input.is_empty() {
            return Ok(());
        }
        if !self.primed {
            self.prime(|ch| f64::from(input[ch]));
        }
        filter_f32(
            &self.coef,
            &mut self.state,
            c,
            input,
            output,
            &mut self.scratch,
        );
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
        if output.is_empty() {
            return Ok(());
        }
        if !self.primed {
            self.prime(|ch| output[ch]);
        }
        filter_f64(&self.coef, &mut self.state, self.channels, output);
        Ok(())
    }

    /// Seed every section's state with `sosfilt_zi * x[0]` per channel.
    fn prime(&mut self, first: impl Fn(usize) -> f64) {
        let c = self.channels;
        for (s, zi) in self.zi.iter().enumerate() {
            let base = s * 2 * c;
            let (z1, z2) = self.state[base..base + 2 * c].split_at_mut(c);
            for (ch, (z1, z2)) in z1.iter_mut().zip(z2.iter_mut()).enumerate() {
                let x = first(ch);
                *z1 = zi[0] * x;
                *z2 = zi[1] * x;
            }
        }
        self.primed = true;
    }
}

/// Filter f32 frames through every section, [`CHUNK_FRAMES`] at a time in
/// the f64 `scratch` (one rounding to f32 at the end). Compiled per SIMD
/// target and dispatched at run time (see the module documentation).
#[multiversion(targets = "simd")]
fn filter_f32(
    coef: &[Coef],
    state: &mut [f64],
    c: usize,
    input: &[f32],
    output: &mut [f32],
    scratch: &mut [f64],
) {
    let step = CHUNK_FRAMES * c;
    for (inp, out) in input.chunks(step).zip(output.chunks_mut(step)) {
        let work = &mut scratch[..inp.len()];
        for (w, &x) in work.iter_mut().zip(inp) {
            *w = f64::from(x);
        }
        run_sections(coef, state, c, work);
        for (o, &w) in out.iter_mut().zip(work.iter()) {
            *o = w as f32;
        }
    }
}

/// Filter f64 frames in place through every section (dispatched as
/// [`filter_f32`]).
#[multiversion(targets = "simd")]
fn filter_f64(coef: &[Coef], state: &mut [f64], c: usize, data: &mut [f64]) {
    for work in data.chunks_mut(CHUNK_FRAMES * c) {
        run_sections(coef, state, c, work);
    }
}

/// Every section over one frame-major chunk (inlined into each dispatched
/// version, so it is compiled for that version's CPU features).
#[inline(always)]
fn run_sections(coef: &[Coef], state: &mut [f64], c: usize, work: &mut [f64]) {
    for (k, st) in coef.iter().zip(state.chunks_exact_mut(2 * c)) {
        let (z1, z2) = st.split_at_mut(c);
        run_section(*k, z1, z2, work, c);
    }
}

const GENERIC: u8 = 0;
const PLUS2: u8 = 1;
const MINUS2: u8 = 2;
const ZERO_MINUS1: u8 = 3;

/// Dispatch once per section (not per sample) to a monomorphised kernel.
#[inline(always)]
fn run_section(k: Coef, z1: &mut [f64], z2: &mut [f64], work: &mut [f64], c: usize) {
    let unit = k.b0 == 1.0;
    match (k.form, unit) {
        (Form::Generic, _) => kernel::<GENERIC, false>(k, z1, z2, work, c),
        (Form::Plus2, true) => kernel::<PLUS2, true>(k, z1, z2, work, c),
        (Form::Plus2, false) => kernel::<PLUS2, false>(k, z1, z2, work, c),
        (Form::Minus2, true) => kernel::<MINUS2, true>(k, z1, z2, work, c),
        (Form::Minus2, false) => kernel::<MINUS2, false>(k, z1, z2, work, c),
        (Form::ZeroMinus1, true) => kernel::<ZERO_MINUS1, true>(k, z1, z2, work, c),
        (Form::ZeroMinus1, false) => kernel::<ZERO_MINUS1, false>(k, z1, z2, work, c),
    }
}

/// One biquad in direct form II transposed (SciPy `sosfilt` arithmetic:
/// `y = b0*x + z1; z1 = b1*x - a1*y + z2; z2 = b2*x - a2*y`) over a
/// frame-major chunk. The inner loop runs across channels, which are
/// independent, so it auto-vectorises (32 channels keep 16+ recursions in
/// flight, hiding FP latency); the time recursion is the loop around it.
/// `FORM`/`UNIT` select exact algebraic shortcuts (see [`Form`]).
#[inline(always)]
fn kernel<const FORM: u8, const UNIT: bool>(
    k: Coef,
    z1: &mut [f64],
    z2: &mut [f64],
    work: &mut [f64],
    c: usize,
) {
    let z1 = &mut z1[..c];
    let z2 = &mut z2[..c];
    for row in work.chunks_exact_mut(c) {
        for ((x, s1), s2) in row.iter_mut().zip(z1.iter_mut()).zip(z2.iter_mut()) {
            let xin = *x;
            if FORM == GENERIC {
                let y = k.b0 * xin + *s1;
                *s1 = k.b1 * xin - k.a1 * y + *s2;
                *s2 = k.b2 * xin - k.a2 * y;
                *x = y;
                continue;
            }
            let u = if UNIT { xin } else { k.b0 * xin };
            let y = u + *s1;
            if FORM == PLUS2 {
                *s1 = ((u + u) - k.a1 * y) + *s2;
                *s2 = u - k.a2 * y;
            } else if FORM == MINUS2 {
                // (-2u - a1*y) + z2 == z2 - (2u + a1*y) exactly.
                *s1 = *s2 - ((u + u) + k.a1 * y);
                *s2 = u - k.a2 * y;
            } else {
                // (0*x - a1*y) + z2 == z2 - a1*y; (-u - a2*y) == -(u + a2*y).
                *s1 = *s2 - k.a1 * y;
                *s2 = -(u + k.a2 * y);
            }
            *x = y;
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

    /// Plain scalar DF2T, the literal `sosfilt` recursion.
    fn reference_df2t(sos: &[Sos], zi: &[[f64; 2]], x: &[f64]) -> Vec<f64> {
        let mut st: Vec<[f64; 2]> = zi.iter().map(|z| [z[0] * x[0], z[1] * x[0]]).collect();
        x.iter()
            .map(|&v| {
                let mut cur = v;
                for (s, z) in sos.iter().zip(st.iter_mut()) {
                    let y = s[0] * cur + z[0];
                    z[0] = s[1] * cur - s[4] * y + z[1];
                    z[1] = s[2] * cur - s[5] * y;
                    cur = y;
                }
                cur
            })
            .collect()
    }

    #[test]
    fn shortcut_forms_are_bit_identical_to_generic_recursion() {
        let specs = [
            bp_spec(),
            FilterSpec {
                order: 3,
                ..bp_spec()
            },
            FilterSpec {
                highpass_hz: Some(0.5),
                order: 5,
                ..FilterSpec::default()
            },
            FilterSpec {
                lowpass_hz: Some(30.0),
                order: 8,
                ..FilterSpec::default()
            },
        ];
        let ch = 3;
        let x: Vec<f64> = signal(700, ch).iter().map(|&v| f64::from(v)).collect();
        let mut seen = [false; 4];
        for spec in &specs {
            let mut bank = FilterBank::new(spec, 250.0, ch).expect("bank");
            for k in &bank.coef {
                seen[k.form as usize] = true;
            }
            let mut y = vec![0.0; x.len()];
            bank.process_f64(&x, &mut y).expect("process");
            for c in 0..ch {
                let xc: Vec<f64> = x.iter().skip(c).step_by(ch).copied().collect();
                let want = reference_df2t(bank.sos(), &bank.zi, &xc);
                let got: Vec<f64> = y.iter().skip(c).step_by(ch).copied().collect();
                assert_eq!(got, want, "{spec:?} ch {c}");
            }
        }
        assert_eq!(seen, [true; 4], "every form exercised");
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
