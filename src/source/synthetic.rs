//! The built-in synthetic EEG source (contract §4): per channel a 10 Hz alpha
//! sine (amplitude per channel), 50 Hz line noise, pink-ish noise and a DC
//! offset. Deterministic given `seed`: the value of channel `c` at sample `n`
//! depends only on (seed, c, n). `tests/decode_batches.py` re-implements it.

use super::{default_names, Sink, Source, SourceError, StreamInfo};
use super::{BuildContext, DriverConfig};
use crate::validate::Findings;
use serde::Deserialize;
use std::f64::consts::TAU;
use std::time::{Duration, Instant};

/// `[connection]` of the synthetic driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConnection {
    /// Samples per second per channel (default 250).
    pub sample_rate: f64,
    /// Number of channels (default 8).
    pub channels: usize,
    /// Seed of the noise generator; equal seeds give equal signals.
    pub seed: u64,
    /// true: real time; false: as fast as the pipeline takes it.
    pub pace: bool,
}

impl Default for SyntheticConnection {
    fn default() -> Self {
        SyntheticConnection {
            sample_rate: 250.0,
            channels: 8,
            seed: 1,
            pace: true,
        }
    }
}

impl DriverConfig for SyntheticConnection {
    const NAME: &'static str = "synthetic";

    fn default_connection() -> Option<Self> {
        Some(SyntheticConnection::default())
    }

    fn validate(&self, out: &mut Findings) {
        out.check_rate("sample_rate", self.sample_rate);
        out.check_channels("channels", self.channels);
    }

    fn declared_layout(&self) -> Option<(f64, usize)> {
        Some((self.sample_rate, self.channels))
    }

    fn can_wait(&self) -> bool {
        !self.pace
    }

    fn build(&self, _ctx: &BuildContext<'_>) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(Synthetic::new(self.clone())))
    }
}

/// How often a paced source wakes up to emit the frames that became due:
/// 10 times a second, one ring block (`runner::block_frames`: 100 ms) per
/// wake-up, so blocks are published full. Each wake-up also wakes the
/// processing thread, and on a VM a wake-up costs tens of microseconds:
/// an idle default run measured ~0.75 % of a core at 10 ms, ~0.5 % at
/// 25 ms, ~0.2 % here. The live view (`neuroedge scope`) of a synthetic
/// device therefore moves in 100-ms steps; real drivers publish what
/// their device sent as soon as they read it.
const TICK: Duration = Duration::from_millis(100);
/// Frames per read when unpaced.
const UNPACED_CHUNK: usize = 256;

/// What every channel of a frame shares: the 10 Hz and 50 Hz sines at `t`.
#[derive(Clone, Copy)]
struct FrameClock {
    sin10: f64,
    cos10: f64,
    sin50: f64,
}

impl FrameClock {
    #[inline]
    fn at(t: f64) -> FrameClock {
        let (sin10, cos10) = (TAU * 10.0 * t).sin_cos();
        FrameClock {
            sin10,
            cos10,
            sin50: (TAU * 50.0 * t).sin(),
        }
    }
}

/// splitmix64: a tiny, well-known generator, easy to re-implement elsewhere.
#[inline(always)]
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every channel's generator state, a vector per field: a frame's channels
/// are computed side by side in SIMD lanes ([`fill_frame`]). Each channel
/// gets the same operations in the same order as one computed alone, so
/// the values are the same to the bit (tests/decode_batches.py checks
/// them against its own implementation). Laid out a channel at a time, the
/// acquisition thread of a paced 1024-channel 30 kHz source took 0.19
/// core; side by side 0.10.
struct Gens {
    rng: Vec<u64>,
    pink0: Vec<f64>,
    pink1: Vec<f64>,
    pink2: Vec<f64>,
    alpha_amp: Vec<f64>,
    /// cos and sin of each channel's alpha phase (the 10 Hz sine is
    /// expanded as sin(a + p) = sin a cos p + cos a sin p, so a frame needs
    /// one sin_cos for all its channels instead of one sin per channel).
    alpha_cos: Vec<f64>,
    alpha_sin: Vec<f64>,
    dc: Vec<f64>,
}

impl Gens {
    fn new(seed: u64, channels: usize) -> Self {
        let per = |f: &dyn Fn(f64) -> f64| (0..channels).map(|c| f(c as f64)).collect();
        Gens {
            rng: (0..channels as u64)
                .map(|c| seed ^ ((c + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)))
                .collect(),
            pink0: vec![0.0; channels],
            pink1: vec![0.0; channels],
            pink2: vec![0.0; channels],
            alpha_amp: per(&|c| 20.0 + 5.0 * c),
            alpha_cos: per(&|c| (0.3 * c).cos()),
            alpha_sin: per(&|c| (0.3 * c).sin()),
            dc: per(&|c| 50.0 + 25.0 * c),
        }
    }

    /// The next frame (µV) at `f` (time since the source started) into `out`.
    fn frame(&mut self, f: &FrameClock, out: &mut [f32]) {
        fill_frame(
            &mut self.rng,
            [&mut self.pink0, &mut self.pink1, &mut self.pink2],
            [&self.alpha_amp, &self.alpha_cos, &self.alpha_sin, &self.dc],
            f,
            out,
        );
    }
}

/// Channel `c` of a frame: `dc + alpha_amp sin(2π 10 t + 0.3 c) + 8 sin(2π
/// 50 t) + 3 pink`, the pink noise from white noise in [-1, 1) through Paul
/// Kellett's economy filter.
#[multiversion::multiversion(targets = "simd")]
fn fill_frame(
    rng: &mut [u64],
    [p0, p1, p2]: [&mut [f64]; 3],
    [amp, acos, asin, dc]: [&[f64]; 4],
    f: &FrameClock,
    out: &mut [f32],
) {
    let n = out.len();
    let (rng, p0, p1, p2) = (&mut rng[..n], &mut p0[..n], &mut p1[..n], &mut p2[..n]);
    let (amp, acos, asin, dc) = (&amp[..n], &acos[..n], &asin[..n], &dc[..n]);
    for c in 0..n {
        let w = (splitmix64(&mut rng[c]) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        p0[c] = 0.99765 * p0[c] + w * 0.0990460;
        p1[c] = 0.96300 * p1[c] + w * 0.2965164;
        p2[c] = 0.57000 * p2[c] + w * 1.0526913;
        let pink = p0[c] + p1[c] + p2[c] + w * 0.1848;
        let v =
            dc[c] + amp[c] * (f.sin10 * acos[c] + f.cos10 * asin[c]) + 8.0 * f.sin50 + 3.0 * pink;
        out[c] = v as f32;
    }
}

pub struct Synthetic {
    cfg: SyntheticConnection,
    gens: Gens,
    frame: Vec<f32>,
    /// Samples generated since the source started.
    n: u64,
    /// Unix time of sample 0 and the monotonic instant it maps to.
    /// Monotonic time of sample 0.
    t0_mono: f64,
    started: Option<Instant>,
}

impl Synthetic {
    pub fn new(cfg: SyntheticConnection) -> Self {
        let gens = Gens::new(cfg.seed, cfg.channels);
        let frame = vec![0.0; cfg.channels];
        Synthetic {
            cfg,
            gens,
            frame,
            n: 0,
            t0_mono: f64::NAN,
            started: None,
        }
    }

    #[inline]
    fn emit(&mut self, sink: &mut Sink<'_>) {
        let t = self.n as f64 / self.cfg.sample_rate;
        self.gens.frame(&FrameClock::at(t), &mut self.frame);
        sink.push_stamped(self.t0_mono + t, &self.frame);
        self.n += 1;
    }
}

/// Generate `frames` frames of the synthetic signal up front (for `bench`):
/// timestamps from `t0_unix`, frame-major samples.
pub fn generate(cfg: &SyntheticConnection, frames: usize, t0_unix: f64) -> (Vec<f64>, Vec<f32>) {
    let mut gens = Gens::new(cfg.seed, cfg.channels);
    let mut ts = Vec::with_capacity(frames);
    let mut data = vec![0.0f32; frames * cfg.channels];
    for (n, frame) in data.chunks_exact_mut(cfg.channels).enumerate() {
        let t = n as f64 / cfg.sample_rate;
        ts.push(t0_unix + t);
        gens.frame(&FrameClock::at(t), frame);
    }
    (ts, data)
}

impl Source for Synthetic {
    fn open(&mut self) -> Result<StreamInfo, SourceError> {
        if self.started.is_none() {
            let now = Instant::now();
            self.started = Some(now);
            self.t0_mono = crate::clock::global().mono_of(now);
        }
        Ok(StreamInfo {
            sample_rate: self.cfg.sample_rate,
            channels: self.cfg.channels,
            channel_names: default_names(self.cfg.channels),
            chunk_s: TICK.as_secs_f64(),
        })
    }

    fn read(&mut self, sink: &mut Sink<'_>) -> Result<(), SourceError> {
        let Some(start) = self.started else {
            return Err(SourceError::Unavailable("read before open".into()));
        };
        if !self.cfg.pace {
            // As fast as the pipeline takes it: wait for room instead of
            // letting the ring drop frames (there is no real device to lose).
            if sink.frames.nearly_full() {
                std::thread::sleep(Duration::from_micros(200));
                return Ok(());
            }
            for _ in 0..UNPACED_CHUNK {
                if sink.frames.nearly_full() {
                    break;
                }
                self.emit(sink);
            }
            return Ok(());
        }
        // Sleep first: the runner publishes what a read emitted as it
        // returns, so frames go out as they fall due (a block's publish
        // time is when its frames arrived: the rate is measured by it).
        std::thread::sleep(TICK);
        let due = (start.elapsed().as_secs_f64() * self.cfg.sample_rate).floor() as u64;
        while self.n < due {
            self.emit(sink);
        }
        Ok(())
    }

    fn close(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One channel alone, written as the formula reads: the reference
    /// [`Gens`] must match to the bit.
    #[derive(Clone)]
    struct ChannelGen {
        rng: u64,
        pink: [f64; 3],
        alpha_amp: f64,
        alpha_cos: f64,
        alpha_sin: f64,
        dc: f64,
    }

    impl ChannelGen {
        fn new(seed: u64, c: usize) -> Self {
            ChannelGen {
                rng: seed ^ ((c as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)),
                pink: [0.0; 3],
                alpha_amp: 20.0 + 5.0 * c as f64,
                alpha_cos: (0.3 * c as f64).cos(),
                alpha_sin: (0.3 * c as f64).sin(),
                dc: 50.0 + 25.0 * c as f64,
            }
        }

        fn next(&mut self, f: &FrameClock) -> f64 {
            let w = (splitmix64(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            self.pink[0] = 0.99765 * self.pink[0] + w * 0.0990460;
            self.pink[1] = 0.96300 * self.pink[1] + w * 0.2965164;
            self.pink[2] = 0.57000 * self.pink[2] + w * 1.0526913;
            let pink = self.pink[0] + self.pink[1] + self.pink[2] + w * 0.1848;
            self.dc
                + self.alpha_amp * (f.sin10 * self.alpha_cos + f.cos10 * self.alpha_sin)
                + 8.0 * f.sin50
                + 3.0 * pink
        }
    }

    #[test]
    fn frames_are_the_channels_computed_one_at_a_time_to_the_bit() {
        for channels in [1usize, 3, 8, 17, 64, 1024] {
            let cfg = SyntheticConnection {
                sample_rate: 30_000.0,
                channels,
                seed: 5,
                pace: false,
            };
            let frames = 300;
            let (_, data) = generate(&cfg, frames, 0.0);
            let mut one: Vec<ChannelGen> = (0..channels).map(|c| ChannelGen::new(5, c)).collect();
            for n in 0..frames {
                let clock = FrameClock::at(n as f64 / 30_000.0);
                for (c, g) in one.iter_mut().enumerate() {
                    let want = g.next(&clock) as f32;
                    let got = data[n * channels + c];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{channels} ch: frame {n} ch {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_paced_read_returns_with_the_frames_due_at_its_end() {
        // The runner publishes a read's frames as it returns: they must be
        // the frames due then, not those due a tick earlier (a block's
        // publish time is when its frames arrived; the rate is measured
        // by it).
        let mut s = Synthetic::new(SyntheticConnection {
            sample_rate: 250.0,
            channels: 2,
            seed: 1,
            pace: true,
        });
        s.open().expect("open");
        let (mut producer, _consumer, _) = crate::ring::ring(2, 1000, 25);
        let (markers, _rx) = crossbeam_channel::unbounded();
        let mut timing = crate::source::Timing::new(250.0);
        let mut sink = Sink {
            frames: &mut producer,
            markers: &markers,
            timing: &mut timing,
            clock: crate::clock::global(),
            outlets: &Default::default(),
            view: None,
        };
        for _ in 0..3 {
            s.read(&mut sink).expect("read");
            let out = sink.frames.next_index();
            let due = (s.started.expect("open").elapsed().as_secs_f64() * 250.0) as u64;
            // A tick is 25 frames: less than half of one behind.
            assert!(
                out <= due && due - out < 13,
                "{out} frames out at the read's end, {due} due"
            );
        }
    }

    #[test]
    fn deterministic_per_seed() {
        let mut a = ChannelGen::new(7, 3);
        let mut b = ChannelGen::new(7, 3);
        let mut c = ChannelGen::new(8, 3);
        let at = |n: usize| FrameClock::at(n as f64 / 250.0);
        let va: Vec<f64> = (0..100).map(|n| a.next(&at(n))).collect();
        let vb: Vec<f64> = (0..100).map(|n| b.next(&at(n))).collect();
        let vc: Vec<f64> = (0..100).map(|n| c.next(&at(n))).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        let mean = va.iter().sum::<f64>() / 100.0;
        assert!(
            (mean - 125.0).abs() < 20.0,
            "DC offset of channel 3 ≈ 125 µV, got {mean}"
        );
    }

    #[test]
    fn the_shared_frame_clock_is_the_documented_formula() {
        // tests/decode_batches.py regenerates the signal with the direct
        // formula; the expanded sine must agree far below f32 resolution.
        for c in [0usize, 5, 383] {
            let mut g = ChannelGen::new(1, c);
            let mut direct = g.clone();
            for n in (0..3_000_000).step_by(997) {
                let t = n as f64 / 30_000.0;
                let got = g.next(&FrameClock::at(t));
                let pink_etc = direct.next(&FrameClock {
                    sin10: 0.0,
                    cos10: 0.0,
                    sin50: 0.0,
                }) - direct.dc;
                let want = direct.dc
                    + direct.alpha_amp * (TAU * 10.0 * t + 0.3 * c as f64).sin()
                    + 8.0 * (TAU * 50.0 * t).sin()
                    + pink_etc;
                assert!((got - want).abs() < 1e-9, "ch {c} t {t}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn splitmix_reference_value() {
        // First output of splitmix64 seeded with 0 (widely published).
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
    }
}
