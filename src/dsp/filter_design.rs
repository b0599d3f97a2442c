//! Butterworth + notch design reproducing SciPy's numerics.
//!
//! The external contract is "same SOS as `scipy.signal.butter(...,
//! output='sos')` followed by `iirnotch` sections", so this module follows
//! SciPy's zpk pipeline step by step (`buttap` → `lp2{lp,hp,bp}_zpk` →
//! `bilinear_zpk` → `zpk2sos(pairing='nearest')`) using the same operation
//! order, NumPy's complex division (Smith's method) and glibc's `csqrt`
//! branch structure, so coefficients agree to ~1e-15 relative.
//! Design runs once at construction; nothing here is on the hot path.

use super::DspError;
use std::f64::consts::PI;

/// One second-order section `[b0, b1, b2, a0, a1, a2]` (SciPy layout).
pub type Sos = [f64; 6];

/// Filter configuration (the daemon's `[dsp]` contract).
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSpec {
    /// High-pass edge in Hz (`None` = no high-pass).
    pub highpass_hz: Option<f64>,
    /// Low-pass edge in Hz (`None` = no low-pass).
    pub lowpass_hz: Option<f64>,
    /// Butterworth order, `1..=8`.
    pub order: u32,
    /// Line-noise notch fundamental in Hz (`None` = no notch).
    pub notch_hz: Option<f64>,
    /// Number of notch harmonics (k = 1..=n, those below Nyquist only).
    pub notch_harmonics: u32,
    /// Notch quality factor.
    pub notch_q: f64,
}

impl Default for FilterSpec {
    /// No filtering, order 4, one notch harmonic, Q = 30 (contract defaults).
    fn default() -> Self {
        FilterSpec {
            highpass_hz: None,
            lowpass_hz: None,
            order: 4,
            notch_hz: None,
            notch_harmonics: 1,
            notch_q: 30.0,
        }
    }
}

/// Minimal complex number; we need NumPy's exact operation order, so a
/// local type is clearer than pulling `num-complex` semantics in.
#[derive(Debug, Clone, Copy, PartialEq)]
struct C {
    re: f64,
    im: f64,
}

impl C {
    const fn new(re: f64, im: f64) -> Self {
        C { re, im }
    }
    const fn real(re: f64) -> Self {
        C { re, im: 0.0 }
    }
    fn add(self, o: C) -> C {
        C::new(self.re + o.re, self.im + o.im)
    }
    fn sub(self, o: C) -> C {
        C::new(self.re - o.re, self.im - o.im)
    }
    fn mul(self, o: C) -> C {
        C::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
    fn neg(self) -> C {
        C::new(-self.re, -self.im)
    }
    fn conj(self) -> C {
        C::new(self.re, -self.im)
    }
    fn abs(self) -> f64 {
        self.re.hypot(self.im)
    }
    fn is_real(self) -> bool {
        self.im == 0.0
    }
    /// NumPy's complex division (Smith's algorithm, as in `loops.c.src`).
    fn div(self, o: C) -> C {
        let (ar, ai, br, bi) = (self.re, self.im, o.re, o.im);
        if br.abs() >= bi.abs() {
            if br == 0.0 && bi == 0.0 {
                return C::new(ar / br.abs(), ai / br.abs());
            }
            let rat = bi / br;
            let scl = 1.0 / (br + bi * rat);
            C::new((ar + ai * rat) * scl, (ai - ar * rat) * scl)
        } else {
            let rat = br / bi;
            let scl = 1.0 / (bi + br * rat);
            C::new((ar * rat + ai) * scl, (ai * rat - ar) * scl)
        }
    }
    /// Principal square root following glibc `csqrt` (used by NumPy) for
    /// finite, normally-scaled inputs.
    fn sqrt(self) -> C {
        let (re, im) = (self.re, self.im);
        if im == 0.0 {
            if re < 0.0 {
                return C::new(0.0, (-re).sqrt().copysign(im));
            }
            return C::new(re.sqrt().abs(), 0.0f64.copysign(im));
        }
        if re == 0.0 {
            let r = (0.5 * im.abs()).sqrt();
            return C::new(r, r.copysign(im));
        }
        let d = re.hypot(im);
        let (r, s) = if re > 0.0 {
            let r = (0.5 * (d + re)).sqrt();
            (r, 0.5 * (im / r))
        } else {
            let s = (0.5 * (d - re)).sqrt();
            ((0.5 * (im / s)).abs(), s)
        };
        C::new(r, s.copysign(im))
    }
}

/// Running zpk triple; poles/zeros kept as complex like SciPy.
struct Zpk {
    z: Vec<C>,
    p: Vec<C>,
    k: f64,
}

/// `scipy.signal.buttap`: poles `-exp(1j*pi*m/(2N))`, m = -N+1, -N+3, ..., N-1.
fn buttap(n: u32) -> Zpk {
    let nf = f64::from(n);
    let mut p = Vec::with_capacity(n as usize);
    let mut m = -nf + 1.0;
    while m < nf {
        let theta = PI * m / (2.0 * nf);
        p.push(C::new(-theta.cos(), -theta.sin()));
        m += 2.0;
    }
    Zpk {
        z: Vec::new(),
        p,
        k: 1.0,
    }
}

fn prod(v: &[C]) -> C {
    v.iter().fold(C::real(1.0), |acc, &x| acc.mul(x))
}

/// `lp2lp_zpk`: scale radially by `wo`.
fn lp2lp(zpk: Zpk, wo: f64) -> Zpk {
    let degree = zpk.p.len() - zpk.z.len();
    let w = C::real(wo);
    Zpk {
        z: zpk.z.iter().map(|&z| w.mul(z)).collect(),
        p: zpk.p.iter().map(|&p| w.mul(p)).collect(),
        k: zpk.k * wo.powf(degree as f64),
    }
}

/// `lp2hp_zpk`: invert about the unit circle, zeros at infinity → origin.
fn lp2hp(zpk: Zpk, wo: f64) -> Zpk {
    let degree = zpk.p.len() - zpk.z.len();
    let w = C::real(wo);
    let mut z: Vec<C> = zpk.z.iter().map(|&z| w.div(z)).collect();
    z.extend(std::iter::repeat_n(C::real(0.0), degree));
    let negz: Vec<C> = zpk.z.iter().map(|z| z.neg()).collect();
    let negp: Vec<C> = zpk.p.iter().map(|p| p.neg()).collect();
    let k = zpk.k * prod(&negz).div(prod(&negp)).re;
    Zpk {
        z,
        p: zpk.p.iter().map(|&p| w.div(p)).collect(),
        k,
    }
}

/// `lp2bp_zpk`: shift baseband poles/zeros to ±wo with bandwidth `bw`.
fn lp2bp(zpk: Zpk, wo: f64, bw: f64) -> Zpk {
    let degree = zpk.p.len() - zpk.z.len();
    let wo2 = C::real(wo * wo);
    let half = |v: &[C]| -> Vec<C> {
        v.iter()
            .map(|&x| x.mul(C::real(bw)).div(C::real(2.0)))
            .collect()
    };
    let shift = |v: &[C]| -> Vec<C> {
        let mut out: Vec<C> = v.iter().map(|&x| x.add(x.mul(x).sub(wo2).sqrt())).collect();
        out.extend(v.iter().map(|&x| x.sub(x.mul(x).sub(wo2).sqrt())));
        out
    };
    let z_lp = half(&zpk.z);
    let p_lp = half(&zpk.p);
    let mut z = shift(&z_lp);
    z.extend(std::iter::repeat_n(C::real(0.0), degree));
    Zpk {
        z,
        p: shift(&p_lp),
        k: zpk.k * bw.powf(degree as f64),
    }
}

/// `bilinear_zpk` with SciPy's `fs` argument (always 2.0 from `iirfilter`).
fn bilinear(zpk: Zpk, fs: f64) -> Zpk {
    let degree = zpk.p.len() - zpk.z.len();
    let fs2 = C::real(2.0 * fs);
    let mut z: Vec<C> = zpk.z.iter().map(|&z| fs2.add(z).div(fs2.sub(z))).collect();
    let p: Vec<C> = zpk.p.iter().map(|&p| fs2.add(p).div(fs2.sub(p))).collect();
    z.extend(std::iter::repeat_n(C::real(-1.0), degree));
    let dz: Vec<C> = zpk.z.iter().map(|&z| fs2.sub(z)).collect();
    let dp: Vec<C> = zpk.p.iter().map(|&p| fs2.sub(p)).collect();
    let k = zpk.k * prod(&dz).div(prod(&dp)).re;
    Zpk { z, p, k }
}

/// Stable sort by (real, |imag|), mirroring `np.lexsort((abs(z.imag), z.real))`.
fn lexsort_real_absimag(v: &mut [C]) {
    v.sort_by(|a, b| {
        a.re.total_cmp(&b.re)
            .then_with(|| a.im.abs().total_cmp(&b.im.abs()))
    });
}

/// `_cplxreal` followed by `np.concatenate((zc, zr))`: conjugate pairs are
/// collapsed to their positive-imaginary member (averaged), real values get
/// an exact `0.0` imaginary part so later `np.isreal` checks behave alike.
fn cplxreal_concat(mut z: Vec<C>) -> Result<Vec<C>, DspError> {
    let tol = 100.0 * f64::EPSILON;
    lexsort_real_absimag(&mut z);
    let mut zr = Vec::new();
    let mut zp = Vec::new();
    let mut zn = Vec::new();
    for &x in &z {
        if x.im.abs() <= tol * x.abs() {
            zr.push(C::real(x.re));
        } else if x.im > 0.0 {
            zp.push(x);
        } else {
            zn.push(x);
        }
    }
    if zp.len() != zn.len() {
        return Err(DspError::Design("complex value with no matching conjugate"));
    }
    // Runs of (approximately) equal real part are re-sorted by |imag|.
    let n = zp.len();
    let mut i = 0;
    while i + 1 < n {
        if zp[i + 1].re - zp[i].re <= tol * zp[i].abs() {
            let start = i;
            while i + 1 < n && zp[i + 1].re - zp[i].re <= tol * zp[i].abs() {
                i += 1;
            }
            let stop = i + 1;
            zp[start..stop].sort_by(|a, b| a.im.abs().total_cmp(&b.im.abs()));
            zn[start..stop].sort_by(|a, b| a.im.abs().total_cmp(&b.im.abs()));
        }
        i += 1;
    }
    let mut out = Vec::with_capacity(n + zr.len());
    for (a, b) in zp.iter().zip(zn.iter()) {
        if a.sub(b.conj()).abs() > tol * b.abs() {
            return Err(DspError::Design("complex value with no matching conjugate"));
        }
        out.push(a.add(b.conj()).div(C::real(2.0)));
    }
    out.extend(zr);
    Ok(out)
}

/// `np.argmin(np.abs(1 - np.abs(p)))` — first index on ties.
fn idx_worst(p: &[C], candidates: impl Iterator<Item = usize>) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for i in candidates {
        let d = (1.0 - p[i].abs()).abs();
        match best {
            Some((_, bd)) if d >= bd => {}
            _ => best = Some((i, d)),
        }
    }
    best.map(|(i, _)| i)
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    Real,
    Complex,
    Any,
}

/// `_nearest_real_complex_idx`: closest element of `fro` to `to` of a kind
/// (stable on ties, as NumPy's small-array argsort is).
fn nearest_idx(fro: &[C], to: C, which: Which) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &x) in fro.iter().enumerate() {
        let ok = match which {
            Which::Any => true,
            Which::Real => x.is_real(),
            Which::Complex => !x.is_real(),
        };
        if !ok {
            continue;
        }
        let d = x.sub(to).abs();
        match best {
            Some((_, bd)) if d >= bd => {}
            _ => best = Some((i, d)),
        }
    }
    best.map(|(i, _)| i)
}

/// Real monic polynomial coefficients for up to two roots, as `np.poly`
/// followed by taking the real part (roots are real or a conjugate pair).
fn poly(roots: &[C]) -> Vec<f64> {
    let mut a: Vec<C> = vec![C::real(1.0)];
    for &r in roots {
        let v = [C::real(1.0), r.neg()];
        let mut out = vec![C::real(0.0); a.len() + 1];
        for (i, &ai) in a.iter().enumerate() {
            for (j, &vj) in v.iter().enumerate() {
                out[i + j] = out[i + j].add(ai.mul(vj));
            }
        }
        a = out;
    }
    a.iter().map(|c| c.re).collect()
}

/// `_single_zpksos(z, p, 1)`: right-aligned numerator/denominator.
fn single_zpksos(z: &[C], p: &[C]) -> Sos {
    let mut sos = [0.0; 6];
    let b = poly(z);
    let a = poly(p);
    sos[3 - b.len()..3].copy_from_slice(&b);
    sos[6 - a.len()..6].copy_from_slice(&a);
    sos
}

/// Remove and return the element chosen by `pick` (like `np.delete`).
fn take(v: &mut Vec<C>, pick: impl FnOnce(&[C]) -> Option<usize>) -> Result<C, DspError> {
    match pick(v) {
        Some(i) if i < v.len() => Ok(v.remove(i)),
        _ => Err(DspError::Design("pole/zero pairing ran out of candidates")),
    }
}

/// `zpk2sos(z, p, k, pairing='nearest')` for a digital system.
fn zpk2sos(zpk: Zpk) -> Result<Vec<Sos>, DspError> {
    let Zpk { mut z, mut p, k } = zpk;
    if z.is_empty() && p.is_empty() {
        return Ok(vec![[k, 0.0, 0.0, 1.0, 0.0, 0.0]]);
    }
    while p.len() < z.len() {
        p.push(C::real(0.0));
    }
    while z.len() < p.len() {
        z.push(C::real(0.0));
    }
    let n_sections = p.len().div_ceil(2);
    if p.len() % 2 == 1 {
        p.push(C::real(0.0));
        z.push(C::real(0.0));
    }
    let mut z = cplxreal_concat(z)?;
    let mut p = cplxreal_concat(p)?;
    let mut sos = vec![[0.0; 6]; n_sections];
    let zero = C::real(0.0);
    for si in (0..n_sections).rev() {
        let p1 = take(&mut p, |v| idx_worst(v, 0..v.len()))?;
        let n_real_p = p.iter().filter(|x| x.is_real()).count();
        if p1.is_real() && n_real_p == 0 {
            // Last remaining real pole: first-order section padded with origin.
            let z1 = take(&mut z, |v| nearest_idx(v, p1, Which::Real))?;
            sos[si] = single_zpksos(&[z1, zero], &[p1, zero]);
        } else if p.len() + 1 == z.len()
            && !p1.is_real()
            && n_real_p == 1
            && z.iter().filter(|x| x.is_real()).count() == 1
        {
            // Must keep the lone real zero for the lone real pole.
            let z1 = take(&mut z, |v| nearest_idx(v, p1, Which::Complex))?;
            sos[si] = single_zpksos(&[z1, z1.conj()], &[p1, p1.conj()]);
        } else {
            let p2 = if p1.is_real() {
                take(&mut p, |v| {
                    idx_worst(v, (0..v.len()).filter(|&i| v[i].is_real()))
                })?
            } else {
                p1.conj()
            };
            if z.is_empty() {
                sos[si] = single_zpksos(&[], &[p1, p2]);
            } else {
                let z1 = take(&mut z, |v| nearest_idx(v, p1, Which::Any))?;
                if !z1.is_real() {
                    sos[si] = single_zpksos(&[z1, z1.conj()], &[p1, p2]);
                } else if !z.is_empty() {
                    let z2 = take(&mut z, |v| nearest_idx(v, p1, Which::Real))?;
                    sos[si] = single_zpksos(&[z1, z2], &[p1, p2]);
                } else {
                    sos[si] = single_zpksos(&[z1], &[p1, p2]);
                }
            }
        }
    }
    if let Some(first) = sos.first_mut() {
        for c in first.iter_mut().take(3) {
            *c *= k;
        }
    }
    Ok(sos)
}

enum Kind {
    Low(f64),
    High(f64),
    Band(f64, f64),
}

/// `scipy.signal.butter(order, Wn, btype, fs=fs, output='sos')`.
fn butter_sos(order: u32, kind: Kind, fs: f64) -> Result<Vec<Sos>, DspError> {
    let nyq = fs / 2.0;
    // iirfilter: Wn / (fs/2), then pre-warp with its internal fs = 2.
    let warp = |f: f64| 2.0 * 2.0 * (PI * (f / nyq) / 2.0).tan();
    let proto = buttap(order);
    let analog = match kind {
        Kind::Low(f) => lp2lp(proto, warp(f)),
        Kind::High(f) => lp2hp(proto, warp(f)),
        Kind::Band(lo, hi) => {
            let (w0, w1) = (warp(lo), warp(hi));
            lp2bp(proto, (w0 * w1).sqrt(), w1 - w0)
        }
    };
    zpk2sos(bilinear(analog, 2.0))
}

/// `scipy.signal.iirnotch(w0, Q, fs)` as one SOS row (`a0` is already 1).
fn iirnotch_sos(f0: f64, q: f64, fs: f64) -> Sos {
    let w0 = 2.0 * f0 / fs;
    let bw = w0 / q * PI;
    let w0 = w0 * PI;
    let beta = (bw / 2.0).tan();
    let gain = 1.0 / (1.0 + beta);
    let c = w0.cos();
    [
        gain,
        gain * (-2.0 * c),
        gain,
        1.0,
        -2.0 * gain * c,
        2.0 * gain - 1.0,
    ]
}

fn check_freq(what: &'static str, value: f64, fs: f64) -> Result<(), DspError> {
    let nyquist = fs / 2.0;
    // Same two checks as iirfilter: 0 < f/(fs/2) < 1.
    let w = value / nyquist;
    if !value.is_finite() || value <= 0.0 || w <= 0.0 || w >= 1.0 {
        return Err(DspError::InvalidFrequency {
            what,
            value,
            nyquist,
        });
    }
    Ok(())
}

/// Validate `spec` for sample rate `fs` without designing anything.
pub fn validate_spec(spec: &FilterSpec, fs: f64) -> Result<(), DspError> {
    if !fs.is_finite() || fs <= 0.0 {
        return Err(DspError::InvalidSampleRate(fs));
    }
    if !(1..=8).contains(&spec.order) {
        return Err(DspError::InvalidOrder(spec.order));
    }
    if !spec.notch_q.is_finite() || spec.notch_q <= 0.0 {
        return Err(DspError::InvalidNotchQ(spec.notch_q));
    }
    if let Some(hp) = spec.highpass_hz {
        check_freq("highpass_hz", hp, fs)?;
    }
    if let Some(lp) = spec.lowpass_hz {
        check_freq("lowpass_hz", lp, fs)?;
    }
    if let (Some(hp), Some(lp)) = (spec.highpass_hz, spec.lowpass_hz) {
        if hp >= lp {
            return Err(DspError::InvertedBand {
                highpass_hz: hp,
                lowpass_hz: lp,
            });
        }
    }
    if let Some(n) = spec.notch_hz {
        check_freq("notch_hz", n, fs)?;
        if spec.notch_harmonics == 0 {
            return Err(DspError::InvalidNotchHarmonics(spec.notch_harmonics));
        }
    }
    Ok(())
}

/// Design the full cascade: Butterworth sections first (band-pass if both
/// edges given), then one `iirnotch` section per harmonic `k*notch_hz`
/// below Nyquist. Empty result means "no filtering" (identity).
pub fn design_sos(spec: &FilterSpec, fs: f64) -> Result<Vec<Sos>, DspError> {
    validate_spec(spec, fs)?;
    let kind = match (spec.highpass_hz, spec.lowpass_hz) {
        (Some(hp), Some(lp)) => Some(Kind::Band(hp, lp)),
        (Some(hp), None) => Some(Kind::High(hp)),
        (None, Some(lp)) => Some(Kind::Low(lp)),
        (None, None) => None,
    };
    let mut sos = match kind {
        Some(kind) => butter_sos(spec.order, kind, fs)?,
        None => Vec::new(),
    };
    if let Some(f0) = spec.notch_hz {
        for k in 1..=spec.notch_harmonics {
            let f = f64::from(k) * f0;
            if f >= fs / 2.0 {
                break;
            }
            sos.push(iirnotch_sos(f, spec.notch_q, fs));
        }
    }
    Ok(sos)
}

/// `scipy.signal.sosfilt_zi`: per-section DF2T state giving the steady-state
/// response to a unit step, so `zi * x[0]` starts without a transient.
///
/// Rows must already be normalised (`a0 == 1`) as produced by [`design_sos`].
pub fn sosfilt_zi(sos: &[Sos]) -> Vec<[f64; 2]> {
    let mut scale = 1.0;
    sos.iter()
        .map(|s| {
            let (b0, b1, b2) = (s[0] / s[3], s[1] / s[3], s[2] / s[3]);
            let (a1, a2) = (s[4] / s[3], s[5] / s[3]);
            // lfilter_zi: solve (I - A^T) zi = b[1:] - a[1:]*b0, i.e.
            // [[1+a1, -1], [a2, 1]] zi = B.
            let bb0 = b1 - a1 * b0;
            let bb1 = b2 - a2 * b0;
            let z0 = (bb0 + bb1) / (1.0 + a1 + a2);
            let z1 = bb1 - a2 * z0;
            let zi = [scale * z0, scale * z1];
            scale *= (s[0] + s[1] + s[2]) / (s[3] + s[4] + s[5]);
            zi
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn butter_lowpass_order2_matches_known_scipy() {
        // scipy.signal.butter(2, 10, fs=100, output='sos')
        let sos = design_sos(
            &FilterSpec {
                lowpass_hz: Some(10.0),
                order: 2,
                ..FilterSpec::default()
            },
            100.0,
        )
        .expect("valid spec");
        let want = [
            0.0674552738890719,
            0.1349105477781438,
            0.0674552738890719,
            1.0,
            -1.1429805025399011,
            0.41280159809618877,
        ];
        assert_eq!(sos.len(), 1);
        for (a, b) in sos[0].iter().zip(want.iter()) {
            assert!((a - b).abs() <= 1e-14 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
