//! The raw window's line-noise power and total power (what the quality's
//! `line_noise_ratio` needs), kept as sums per half window while the
//! frames arrive, so that no raw window is stored. For the default shape
//! only: the Welch segment is the whole window (`nperseg == window`, one
//! segment) and the step is half of it; other shapes read a raw ring.
//!
//! The window is two halves, A (older) then B, of `n / 2` frames each.
//! - The plain DFT of the window is its halves' DFTs, each summed from its
//!   own start: `X[k] = X_A[k] + (−1)^k X_B[k]` (`e^{−iπk}`). A half is in
//!   two windows, first as B and then as A, and its sums serve both.
//! - With Welch's periodic Hann window `h[j] = 1/2 − cos(2πj/n)/2`, the
//!   windowed DFT is three taps of the plain one:
//!   `Y[k] = X[k]/2 − X[k−1]/4 − X[k+1]/4`, with `X[−k] = X[n−k] =
//!   conj X[k]`. The constant detrend changes only `X[0]`, to 0.
//! - The total is Parseval's, as on the ring path: the windowed, detrended
//!   segment's energy `Σ (x − m)² h² = Q − 2mL + m² Σh²` with `Q = Σ x² h²`
//!   and `L = Σ x h²`, kept per half for both of its positions.
//!
//! Precision: every sum is of `x − p`, `p` the half's first sample (its
//! pivot), so a raw offset (tens of mV in raw EEG) never enters a sum and
//! no difference of large sums is taken; a window moves B's sums to A's
//! pivot (`δ = p_B − p_A`, times sums of the weights). Equal to the ring
//! path up to rounding (`tests::half_sums_match_the_window`).

use super::features::{dft_angle, Twiddles, DFT_BLOCK};
use multiversion::multiversion;

/// At most this many plain DFT bins are summed per frame; more, and the
/// ring path is cheaper (the default 50 Hz ± 2 Hz at 1 Hz bins needs 8).
const MAX_PLAIN: usize = 12;

/// One windowed bin the quality needs: `Y = Σ weight · X(tap)`.
#[derive(Debug, Clone, Copy)]
struct Needed {
    /// Density scale of the bin (`Welch::bin_scale`).
    scale: f64,
    /// Counted in the line-noise power.
    line: bool,
    /// Outside the total's band: subtracted from the Parseval total.
    left_out: bool,
    /// Up to three taps: index into `bins` and whether conjugated; `None`
    /// for `X[0]` (0 after the detrend).
    taps: [(f64, Option<(usize, bool)>); 3],
}

/// One half window's sums, per channel (`re`/`im` per plain bin, then
/// channel).
#[derive(Debug, Clone)]
struct Half {
    pivot: Vec<f64>,
    re: Vec<f64>,
    im: Vec<f64>,
    /// `Σ x² h²` and `Σ x h²` with `h` as in the first half of a window
    /// (`a`) and in the second (`b`), and `Σ x` (all of `x − pivot`).
    qa: Vec<f64>,
    la: Vec<f64>,
    qb: Vec<f64>,
    lb: Vec<f64>,
    s: Vec<f64>,
}

impl Half {
    fn new(channels: usize, bins: usize) -> Self {
        let v = || vec![0.0; channels];
        Half {
            pivot: v(),
            re: vec![0.0; channels * bins],
            im: vec![0.0; channels * bins],
            qa: v(),
            la: v(),
            qb: v(),
            lb: v(),
            s: v(),
        }
    }

    /// Start summing a half whose first frame is `frame`.
    fn start(&mut self, frame: &[f32]) {
        for (p, &x) in self.pivot.iter_mut().zip(frame) {
            *p = f64::from(x);
        }
        for v in [
            &mut self.re,
            &mut self.im,
            &mut self.qa,
            &mut self.la,
            &mut self.qb,
            &mut self.lb,
            &mut self.s,
        ] {
            v.fill(0.0);
        }
    }
}

/// The sums of the last two whole halves and of the one being filled.
pub(super) struct HalfSums {
    channels: usize,
    n: usize,
    half: usize,
    /// Frames of the current half so far.
    at: usize,
    /// Plain DFT bins summed, each in `1..=n/2`.
    bins: Vec<usize>,
    needed: Vec<Needed>,
    /// The bins' twiddles over a half.
    twiddles: Twiddles,
    /// `h²` over a window's first half and over its second.
    wa: Vec<f64>,
    wb: Vec<f64>,
    sum_wb: f64,
    /// `Σ h²` over the window.
    h2: f64,
    /// `Σ_{j < n/2} e^{−iθj}` per bin (moves a half's sums to another
    /// pivot).
    g_re: Vec<f64>,
    g_im: Vec<f64>,
    /// Welch's density scale `1 / (fs Σh²)`.
    scale: f64,
    /// The current block's partial sums (per bin, then channel).
    part_re: Vec<f64>,
    part_im: Vec<f64>,
    /// `x − pivot` of the frames being added ([`GROUP`] of them).
    x: Vec<f64>,
    cur: Half,
    newer: Half,
    older: Half,
}

impl HalfSums {
    /// For a window of `n` frames (even) with the Welch window `hann`
    /// (periodic Hann, `n` long) and scale `1 / (fs Σh²)`; `line` and
    /// `kept` are the line-noise bins and the total's bins (`[first,
    /// end)`), `bin_scale` a bin's density scale. `None` when more than
    /// [`MAX_PLAIN`] plain bins would be needed.
    pub(super) fn new(
        channels: usize,
        hann: &[f64],
        scale: f64,
        line: (usize, usize),
        kept: (usize, usize),
        bin_scale: impl Fn(usize) -> f64,
    ) -> Option<Self> {
        let n = hann.len();
        if n < 4 || n % 2 != 0 {
            return None;
        }
        let (half, last) = (n / 2, n / 2);
        let is_line = |k: usize| (line.0..line.1).contains(&k);
        let wanted: Vec<usize> = (0..=last)
            .filter(|&k| is_line(k) || !(kept.0..kept.1).contains(&k))
            .collect();
        if wanted.len() > MAX_PLAIN {
            return None;
        }
        // X(j) for any integer j as a plain bin in 1..=n/2 (conjugated or
        // not), or None for X(0).
        let fold = |j: isize| -> Option<(usize, bool)> {
            let j = j.rem_euclid(n as isize) as usize;
            match j {
                0 => None,
                j if j <= last => Some((j, false)),
                j => Some((n - j, true)),
            }
        };
        let mut bins: Vec<usize> = Vec::new();
        let mut needed = Vec::with_capacity(wanted.len());
        for &k in &wanted {
            let mut taps = [(0.0, None); 3];
            for (t, (w, d)) in taps.iter_mut().zip([(0.5, 0), (-0.25, -1), (-0.25, 1)]) {
                let tap = fold(k as isize + d).map(|(bin, conj)| {
                    let i = bins.iter().position(|&b| b == bin).unwrap_or_else(|| {
                        bins.push(bin);
                        bins.len() - 1
                    });
                    (i, conj)
                });
                *t = (w, tap);
            }
            needed.push(Needed {
                scale: bin_scale(k),
                line: is_line(k),
                left_out: !(kept.0..kept.1).contains(&k),
                taps,
            });
        }
        if bins.len() > MAX_PLAIN {
            return None;
        }
        let mut s = HalfSums {
            channels,
            n,
            half,
            at: 0,
            twiddles: Twiddles::new(n, &bins, half),
            wa: hann[..half].iter().map(|h| h * h).collect(),
            wb: hann[half..].iter().map(|h| h * h).collect(),
            sum_wb: hann[half..].iter().map(|h| h * h).sum(),
            h2: hann.iter().map(|h| h * h).sum(),
            g_re: Vec::with_capacity(bins.len()),
            g_im: Vec::with_capacity(bins.len()),
            scale,
            part_re: vec![0.0; channels * bins.len()],
            part_im: vec![0.0; channels * bins.len()],
            x: vec![0.0; GROUP * channels],
            cur: Half::new(channels, bins.len()),
            newer: Half::new(channels, bins.len()),
            older: Half::new(channels, bins.len()),
            needed,
            bins,
        };
        for &k in &s.bins {
            let (gr, gi) = (0..half).fold((0.0, 0.0), |(re, im), j| {
                let a = dft_angle(n, k, j);
                (re + a.cos(), im - a.sin())
            });
            s.g_re.push(gr);
            s.g_im.push(gi);
        }
        Some(s)
    }

    /// Start over (after a stream gap): the next window is two new halves.
    pub(super) fn reset(&mut self) {
        self.at = 0;
        self.part_re.fill(0.0);
        self.part_im.fill(0.0);
    }

    /// Add frame-major `raw` frames (`channels` per frame). The caller's
    /// windows end on half boundaries.
    pub(super) fn add(&mut self, raw: &[f32]) {
        let c = self.channels;
        let mut frames = raw;
        while !frames.is_empty() {
            if self.at == 0 {
                self.cur.start(&frames[..c]);
            }
            // Up to the end of the block or the half, whichever is first.
            let block_end = (self.at / DFT_BLOCK + 1) * DFT_BLOCK;
            let len = (frames.len() / c).min(block_end.min(self.half) - self.at);
            let (now, rest) = frames.split_at(len * c);
            let nb = self.bins.len();
            let r0 = self.at % DFT_BLOCK;
            sum_frames(
                now,
                Kernel {
                    pivot: &self.cur.pivot,
                    x: &mut self.x,
                    wa: &self.wa[self.at..self.at + len],
                    wb: &self.wb[self.at..self.at + len],
                    cos: &self.twiddles.cos,
                    sin: &self.twiddles.sin,
                    r0,
                    part_re: &mut self.part_re[..nb * c],
                    part_im: &mut self.part_im[..nb * c],
                    qa: &mut self.cur.qa,
                    la: &mut self.cur.la,
                    qb: &mut self.cur.qb,
                    lb: &mut self.cur.lb,
                    s: &mut self.cur.s,
                },
            );
            self.at += len;
            frames = rest;
            if self.at % DFT_BLOCK == 0 || self.at == self.half {
                self.fold_block((self.at - 1) / DFT_BLOCK);
            }
            if self.at == self.half {
                // The current half is whole: it becomes the newer one.
                std::mem::swap(&mut self.older, &mut self.newer);
                std::mem::swap(&mut self.newer, &mut self.cur);
                self.at = 0;
            }
        }
    }

    /// Add the current block's partial sums (block `jb` of the half) to
    /// the half's bins: `Σ_r x e^{−iθ(jB + r)} = e^{−iθjB} Σ_r x e^{−iθr}`.
    fn fold_block(&mut self, jb: usize) {
        let c = self.channels;
        for b in 0..self.bins.len() {
            let r = b * c..(b + 1) * c;
            let (pre, pim) = (&mut self.part_re[r.clone()], &mut self.part_im[r.clone()]);
            let (re, im) = (&mut self.cur.re[r.clone()], &mut self.cur.im[r]);
            for i in 0..c {
                let (dr, di) = self.twiddles.rotate(b, jb, pre[i], pim[i]);
                re[i] += dr;
                im[i] += di;
            }
            pre.fill(0.0);
            pim.fill(0.0);
        }
    }

    /// Channel `ch`'s line-noise power and total power over the window
    /// of the last two whole halves (the sums of the one-sided PSD over
    /// the line bins and over the total's bins).
    pub(super) fn line_and_total(&self, ch: usize) -> (f64, f64) {
        let c = self.channels;
        let (a, b) = (&self.older, &self.newer);
        let d = b.pivot[ch] - a.pivot[ch];
        let mut xr = [0.0; MAX_PLAIN];
        let mut xi = [0.0; MAX_PLAIN];
        for (i, &k) in self.bins.iter().enumerate() {
            let at = i * c + ch;
            let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
            xr[i] = a.re[at] + sign * (b.re[at] + d * self.g_re[i]);
            xi[i] = a.im[at] + sign * (b.im[at] + d * self.g_im[i]);
        }
        let (mut line, mut left_out) = (0.0, 0.0);
        for nd in &self.needed {
            let (mut yr, mut yi) = (0.0, 0.0);
            for &(w, tap) in &nd.taps {
                if let Some((i, conj)) = tap {
                    yr += w * xr[i];
                    yi += w * if conj { -xi[i] } else { xi[i] };
                }
            }
            let p = (yr * yr + yi * yi) * nd.scale;
            if nd.line {
                line += p;
            }
            if nd.left_out {
                left_out += p;
            }
        }
        // B's sums moved to A's pivot, then the window's detrended energy.
        let qb = b.qb[ch] + 2.0 * d * b.lb[ch] + d * d * self.sum_wb;
        let lb = b.lb[ch] + d * self.sum_wb;
        let (q, l) = (a.qa[ch] + qb, a.la[ch] + lb);
        let m = (a.s[ch] + b.s[ch] + d * self.half as f64) / self.n as f64;
        let energy = q - 2.0 * m * l + m * m * self.h2;
        (line, self.scale * self.n as f64 * energy - left_out)
    }
}

/// Frames added to each sum at once by [`sum_frames`]: a sum is loaded
/// and stored once per group rather than once per frame.
const GROUP: usize = 4;

/// What [`sum_frames`] adds into.
struct Kernel<'a> {
    pivot: &'a [f64],
    x: &'a mut [f64],
    /// `h²` at each frame's position, first-half and second-half.
    wa: &'a [f64],
    wb: &'a [f64],
    cos: &'a [f64],
    sin: &'a [f64],
    /// The first frame's position in its block.
    r0: usize,
    part_re: &'a mut [f64],
    part_im: &'a mut [f64],
    qa: &'a mut [f64],
    la: &'a mut [f64],
    qb: &'a mut [f64],
    lb: &'a mut [f64],
    s: &'a mut [f64],
}

/// Frames of one block into the half's sums, [`GROUP`] frames at a time
/// along the channels (a vector of channels per operation); compiled per
/// SIMD target and dispatched at run time.
#[multiversion(targets = "simd")]
fn sum_frames<'a>(frames: &[f32], k: Kernel<'a>) {
    let c = k.pivot.len();
    let Kernel {
        pivot,
        x,
        wa,
        wb,
        cos,
        sin,
        r0,
        part_re,
        part_im,
        qa,
        la,
        qb,
        lb,
        s,
    } = k;
    let (qa, la, qb, lb, s) = (
        &mut qa[..c],
        &mut la[..c],
        &mut qb[..c],
        &mut lb[..c],
        &mut s[..c],
    );
    let pivot = &pivot[..c];
    let n = frames.len() / c;
    let mut t = 0;
    while t < n {
        let g = (n - t).min(GROUP);
        let x = &mut x[..g * c];
        for (xu, f) in x.chunks_exact_mut(c).zip(frames[t * c..].chunks_exact(c)) {
            for ((v, &y), &p) in xu.iter_mut().zip(f).zip(pivot) {
                *v = f64::from(y) - p;
            }
        }
        let r = r0 + t;
        if g == GROUP {
            let (x0, rest) = x.split_at(c);
            let (x1, rest) = rest.split_at(c);
            let (x2, x3) = rest.split_at(c);
            let (x0, x1, x2, x3) = (&x0[..c], &x1[..c], &x2[..c], &x3[..c]);
            let ha = [wa[t], wa[t + 1], wa[t + 2], wa[t + 3]];
            let hb = [wb[t], wb[t + 1], wb[t + 2], wb[t + 3]];
            for i in 0..c {
                let v = [x0[i], x1[i], x2[i], x3[i]];
                let q = [v[0] * v[0], v[1] * v[1], v[2] * v[2], v[3] * v[3]];
                qa[i] += q[0] * ha[0] + q[1] * ha[1] + q[2] * ha[2] + q[3] * ha[3];
                la[i] += v[0] * ha[0] + v[1] * ha[1] + v[2] * ha[2] + v[3] * ha[3];
                qb[i] += q[0] * hb[0] + q[1] * hb[1] + q[2] * hb[2] + q[3] * hb[3];
                lb[i] += v[0] * hb[0] + v[1] * hb[1] + v[2] * hb[2] + v[3] * hb[3];
                s[i] += v[0] + v[1] + v[2] + v[3];
            }
            for (b, (re, im)) in part_re
                .chunks_exact_mut(c)
                .zip(part_im.chunks_exact_mut(c))
                .enumerate()
            {
                let at = b * DFT_BLOCK + r;
                let cv = [cos[at], cos[at + 1], cos[at + 2], cos[at + 3]];
                let sv = [sin[at], sin[at + 1], sin[at + 2], sin[at + 3]];
                let (re, im) = (&mut re[..c], &mut im[..c]);
                for i in 0..c {
                    re[i] += x0[i] * cv[0] + x1[i] * cv[1] + x2[i] * cv[2] + x3[i] * cv[3];
                    im[i] += x0[i] * sv[0] + x1[i] * sv[1] + x2[i] * sv[2] + x3[i] * sv[3];
                }
            }
        } else {
            for (u, xu) in x.chunks_exact(c).enumerate() {
                let (ha, hb) = (wa[t + u], wb[t + u]);
                for i in 0..c {
                    let v = xu[i];
                    let q = v * v;
                    qa[i] += q * ha;
                    la[i] += v * ha;
                    qb[i] += q * hb;
                    lb[i] += v * hb;
                    s[i] += v;
                }
                for (b, (re, im)) in part_re
                    .chunks_exact_mut(c)
                    .zip(part_im.chunks_exact_mut(c))
                    .enumerate()
                {
                    let (cv, sv) = (cos[b * DFT_BLOCK + r + u], sin[b * DFT_BLOCK + r + u]);
                    let (re, im) = (&mut re[..c], &mut im[..c]);
                    for i in 0..c {
                        re[i] += xu[i] * cv;
                        im[i] += xu[i] * sv;
                    }
                }
            }
        }
        t += g;
    }
}
