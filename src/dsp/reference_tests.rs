//! Cross-checks against SciPy reference data produced by
//! `tests/make_dsp_reference.py` (stored at `tests/data/dsp_reference.json`
//! relative to `CARGO_MANIFEST_DIR`, so the module works unchanged in any
//! crate that ships that file).
//!
//! Tolerances:
//! * SOS: `|ours - scipy| <= 1e-12 * scale`, where `scale` is the max |coef|
//!   of the same numerator (b0..b2) or denominator (a0..a2) row part. Plain
//!   relative error is meaningless for coefficients that are (near) zero
//!   (e.g. `b1 = 0` of a band-pass section), and the first section's
//!   numerator carries the tiny overall gain, hence per-part scaling.
//! * f64 filter output: max abs error < 1e-9 (µV).
//! * f32 filter output: max abs error < 1e-4 µV vs SciPy's f64 output (our
//!   f32 path sees f32-rounded inputs, so this includes input rounding).
//! * Band power / RMS: relative error < 1e-6; line-noise ratio abs < 1e-9.

use super::*;
use serde_json::Value;
use std::sync::OnceLock;

fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dsp_reference.json");
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {path}: {e} (run tests/make_dsp_reference.py)"));
        serde_json::from_str(&text).expect("reference JSON parses")
    })
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(num).collect()
}

fn opt(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn spec_of(v: &Value) -> FilterSpec {
    FilterSpec {
        highpass_hz: opt(&v["highpass_hz"]),
        lowpass_hz: opt(&v["lowpass_hz"]),
        order: v["order"].as_u64().expect("order") as u32,
        notch_hz: opt(&v["notch_hz"]),
        notch_harmonics: v["notch_harmonics"].as_u64().expect("harmonics") as u32,
        notch_q: num(&v["notch_q"]),
    }
}

fn cases(key: &str) -> &'static [Value] {
    reference()[key].as_array().expect("case list")
}

/// Uneven batch sizes (in frames) to exercise state carry-over.
const CHUNKS: [usize; 9] = [1, 7, 250, 333, 64, 65, 2, 1000, 13];

fn for_each_chunk(n_frames: usize, mut f: impl FnMut(usize, usize)) {
    let (mut start, mut i) = (0, 0);
    while start < n_frames {
        let len = CHUNKS[i % CHUNKS.len()].min(n_frames - start);
        f(start, start + len);
        start += len;
        i += 1;
    }
}

#[test]
fn sos_matches_scipy() {
    let mut worst = (0.0f64, String::new());
    let all = cases("sos_cases");
    assert!(all.len() > 500);
    for case in all {
        let fs = num(&case["fs"]);
        let spec = spec_of(&case["spec"]);
        let ours = design_sos(&spec, fs).expect("valid spec");
        let want: Vec<Vec<f64>> = case["sos"]
            .as_array()
            .expect("sos")
            .iter()
            .map(nums)
            .collect();
        assert_eq!(ours.len(), want.len(), "section count for {spec:?} fs={fs}");
        for (si, (o, w)) in ours.iter().zip(&want).enumerate() {
            for part in [0..3, 3..6] {
                let scale = w[part.clone()].iter().fold(0.0f64, |m, x| m.max(x.abs()));
                for i in part {
                    let err = (o[i] - w[i]).abs() / scale;
                    if err > worst.0 {
                        worst = (err, format!("{spec:?} fs={fs} section {si} coef {i}"));
                    }
                    assert!(
                        err < 1e-12,
                        "{spec:?} fs={fs} section {si} coef {i}: {} vs {} (rel {err:e})",
                        o[i],
                        w[i]
                    );
                }
            }
        }
    }
    eprintln!("worst SOS scaled error {:e} at {}", worst.0, worst.1);
}

#[test]
fn filter_f64_matches_scipy_across_uneven_batches() {
    for case in cases("filter_cases") {
        let name = case["name"].as_str().unwrap_or("?");
        let fs = num(&case["fs"]);
        let ch = case["channels"].as_u64().expect("channels") as usize;
        let x = nums(&case["input"]);
        let want = nums(&case["output"]);
        let mut bank = FilterBank::new(&spec_of(&case["spec"]), fs, ch).expect("bank");
        let mut y = vec![0.0; x.len()];
        for_each_chunk(x.len() / ch, |a, b| {
            bank.process_f64(&x[a * ch..b * ch], &mut y[a * ch..b * ch])
                .expect("process_f64");
        });
        let err = y
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("{name}: f64 max abs err {err:e}");
        assert!(err < 1e-9, "{name}: f64 max abs err {err:e}");
    }
}

#[test]
fn filter_f32_matches_scipy_across_uneven_batches() {
    for case in cases("filter_cases") {
        let name = case["name"].as_str().unwrap_or("?");
        let fs = num(&case["fs"]);
        let ch = case["channels"].as_u64().expect("channels") as usize;
        let x: Vec<f32> = nums(&case["input"]).iter().map(|&v| v as f32).collect();
        let want = nums(&case["output"]);
        let mut bank = FilterBank::new(&spec_of(&case["spec"]), fs, ch).expect("bank");
        let mut y = vec![0.0f32; x.len()];
        for_each_chunk(x.len() / ch, |a, b| {
            bank.process(&x[a * ch..b * ch], &mut y[a * ch..b * ch])
                .expect("process");
        });
        let err = y
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (&a, b)| m.max((f64::from(a) - b).abs()));
        eprintln!("{name}: f32 max abs err {err:e} uV");
        assert!(err < 1e-4, "{name}: f32 max abs err {err:e}");
    }
}

/// One captured emission: (t, band_power, rms, line_noise_ratio).
type Emission = (f64, Vec<f64>, Vec<f64>, Vec<f64>);

fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn features_match_scipy_welch() {
    let t0 = num(&reference()["meta"]["t0"]);
    let filters = cases("filter_cases");
    for case in cases("feature_cases") {
        let name = case["name"].as_str().unwrap_or("?");
        let src = filters
            .iter()
            .find(|c| c["name"] == case["source"])
            .expect("source case");
        let fs = num(&case["fs"]);
        let ch = src["channels"].as_u64().expect("channels") as usize;
        let raw: Vec<f32> = nums(&src["input"]).iter().map(|&v| v as f32).collect();
        let filt: Vec<f32> = nums(&src["output"]).iter().map(|&v| v as f32).collect();
        let n = raw.len() / ch;
        let ts: Vec<f64> = (0..n).map(|i| t0 + i as f64 / fs).collect();
        let bands: Vec<Band> = case["bands"]
            .as_array()
            .expect("bands")
            .iter()
            .map(|b| Band::new(b[0].as_str().expect("name"), num(&b[1]), num(&b[2])))
            .collect();
        let cfg = FeatureConfig {
            window_s: num(&case["window_s"]),
            step_s: num(&case["step_s"]),
            bands,
            line_hz: num(&case["line_hz"]),
            thresholds: QualityThresholds::default(),
            unfiltered: false,
        };
        let mut fx = FeatureExtractor::new(fs, ch, &cfg).expect("extractor");
        let mut got: Vec<Emission> = Vec::new();
        let mut sink = |f: &FeatureFrame<'_>| {
            got.push((
                f.t,
                f.band_power.to_vec(),
                f.rms.to_vec(),
                f.quality.iter().map(|q| q.line_noise_ratio).collect(),
            ));
        };
        for_each_chunk(n, |a, b| {
            fx.push(
                &raw[a * ch..b * ch],
                &filt[a * ch..b * ch],
                &ts[a..b],
                &mut sink,
            )
            .expect("push");
        });
        let want = case["emissions"].as_array().expect("emissions");
        assert_eq!(got.len(), want.len(), "{name}: emission count");
        let mut worst = 0.0f64;
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.0, num(&w["t"]), "{name}: timestamp");
            for (a, b) in g.1.iter().zip(&nums(&w["band_power"])) {
                worst = worst.max(rel_err(*a, *b));
            }
            for (a, b) in g.2.iter().zip(&nums(&w["rms"])) {
                worst = worst.max(rel_err(*a, *b));
            }
            for (a, b) in g.3.iter().zip(&nums(&w["line_noise_ratio"])) {
                assert!((a - b).abs() < 1e-9, "{name}: line ratio {a} vs {b}");
            }
        }
        eprintln!("{name}: {} emissions, worst rel err {worst:e}", got.len());
        assert!(worst < 1e-6, "{name}: worst rel err {worst:e}");
    }
}
