//! Shared by the benches: realistic one-second batches.

use neuroedge::batch::BatchData;

/// One second of 8-channel 250 Hz data (a sine plus xorshift noise around a
/// DC offset), unfiltered, starting at sample `first`.
pub fn one_second_batch(device: &str, first: u64) -> BatchData {
    let (rate, ch) = (250usize, 8usize);
    let mut x = 12345u64 ^ first;
    let mut noise = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 1000) as f32 / 100.0
    };
    let raw: Vec<f32> = (0..rate * ch)
        .map(|i| 100.0 + ((i / ch) as f32 * 0.25).sin() * 20.0 + noise())
        .collect();
    BatchData {
        device_id: device.into(),
        sample_rate: rate as f64,
        channels: (1..=ch).map(|i| format!("ch{i}")).collect(),
        units: "uV".into(),
        first_sample: first,
        timestamps: (0..rate)
            .map(|i| 1.7e9 + (first as usize + i) as f64 / rate as f64)
            .collect(),
        filtered: raw.clone(),
        raw,
        ..Default::default()
    }
}
