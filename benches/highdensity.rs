//! The stages issue 14 touched, on one second of a 384-channel 30 kHz
//! recording (synthetic: the daemon's own generator), each as a rate with
//! a reference measured in the same run:
//! - `filter`, `features` and `synthetic_generate` (the synthetic device's
//!   generator, which feeds the daemon's high-density runs) beside
//!   `widen_f32_to_f64` (one pass over the same samples: what touching the
//!   data costs at all);
//! - `seal_v2_raw` (the default journal's format, a context made for the
//!   batch) and `seal_v2_raw_kept` (a context kept from batch to batch, as
//!   the journal writer seals) beside `seal_v1_raw_filtered` (what the
//!   journal did before) and `zstd3_plain_raw` (compressing the raw bytes
//!   the old way, without sealing).
//!
//! Read the ratios, not the absolute times: `cargo bench --bench highdensity`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use neuroedge::batch::{seal, seal_with, BatchData, BatchFormat, Compressor, SealParams};
use neuroedge::crypto::BatchKey;
use neuroedge::dsp::features::{FeatureConfig, FeatureExtractor};
use neuroedge::dsp::filter_bank::FilterBank;
use neuroedge::dsp::filter_design::FilterSpec;
use neuroedge::source::synthetic::{generate, SyntheticConnection};
use std::time::Duration;

const CH: usize = 384;
const RATE: f64 = 30_000.0;
/// Ring blocks of 100 ms, as the runner uses.
const BLOCK: usize = 3000;

fn spec() -> FilterSpec {
    FilterSpec {
        highpass_hz: Some(300.0),
        lowpass_hz: Some(6000.0),
        order: 4,
        notch_hz: None,
        notch_harmonics: 1,
        notch_q: 30.0,
    }
}

fn bench(c: &mut Criterion) {
    let cfg = SyntheticConnection {
        sample_rate: RATE,
        channels: CH,
        seed: 1,
        pace: false,
    };
    let frames = RATE as usize;
    let (ts, raw) = generate(&cfg, frames, 1.7e9);
    let mut bank = FilterBank::new(&spec(), RATE, CH).expect("filter");
    let mut filtered = vec![0.0f32; raw.len()];
    bank.process(&raw, &mut filtered).expect("filter");

    let mut g = c.benchmark_group("highdensity_384ch_30khz_1s");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements((frames * CH) as u64));

    g.bench_function("widen_f32_to_f64", |b| {
        let mut out = vec![0.0f64; BLOCK * CH];
        b.iter(|| {
            for block in raw.chunks(BLOCK * CH) {
                for (o, &x) in out.iter_mut().zip(block) {
                    *o = f64::from(x);
                }
                black_box(&out);
            }
        })
    });
    g.bench_function("filter", |b| {
        let mut out = vec![0.0f32; BLOCK * CH];
        b.iter(|| {
            for block in raw.chunks(BLOCK * CH) {
                bank.process(block, &mut out[..block.len()])
                    .expect("filter");
                black_box(&out);
            }
        })
    });
    g.bench_function("synthetic_generate", |b| {
        b.iter(|| black_box(generate(&cfg, frames, 1.7e9).1.len()))
    });
    let mut fx = FeatureExtractor::new(RATE, CH, &FeatureConfig::default()).expect("features");
    g.bench_function("features", |b| {
        b.iter(|| {
            let blocks = raw
                .chunks(BLOCK * CH)
                .zip(filtered.chunks(BLOCK * CH))
                .zip(ts.chunks(BLOCK));
            for ((r, f), t) in blocks {
                let n = fx.push(r, f, t, &mut |x| {
                    black_box(x.band_power);
                });
                black_box(n.expect("shapes"));
            }
        })
    });

    let key = BatchKey::from_bytes(&[9u8; 32]);
    let batch = BatchData {
        device_id: "rig".into(),
        sample_rate: RATE,
        channels: (1..=CH).map(|i| format!("ch{i}")).collect(),
        units: "uV".into(),
        timestamps: ts.clone(),
        raw: raw.clone(),
        ..Default::default()
    };
    let both = BatchData {
        filtered: filtered.clone(),
        ..batch.clone()
    };
    let params = |format| SealParams {
        batch_id: "x".into(),
        site_id: "lab",
        node_id: "node",
        seq: 0,
        created_at: 0.0,
        compress: true,
        format,
    };
    g.bench_function("seal_v2_raw", |b| {
        b.iter(|| black_box(seal(&key, &params(BatchFormat::V2), &batch).map(|e| e.0.len())))
    });
    let mut z = Compressor::new();
    g.bench_function("seal_v2_raw_kept", |b| {
        b.iter(|| {
            black_box(seal_with(&mut z, &key, &params(BatchFormat::V2), &batch).map(|e| e.0.len()))
        })
    });
    g.bench_function("seal_v1_raw_filtered", |b| {
        b.iter(|| black_box(seal(&key, &params(BatchFormat::V1), &both).map(|e| e.0.len())))
    });
    let plain: Vec<u8> = raw.iter().flat_map(|x| x.to_le_bytes()).collect();
    g.bench_function("zstd3_plain_raw", |b| {
        b.iter(|| black_box(zstd::bulk::compress(&plain, 3).map(|z| z.len())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
