//! `neuroedge bench`: can this machine keep up with my rig?
//!
//! Runs the real pipeline stages on a device's filters and features (or the
//! defaults below) over pre-generated synthetic data, then the real device
//! runner end to end with an unpaced synthetic source into a temporary
//! journal. Throughput is in channel-samples per second.

use crate::batch::{seal, BatchData, SealParams};
use crate::config::{
    parse_device, Connection, DeviceConfig, FeaturesSection, FiltersSection, QualitySection,
    SyntheticConnection, WhenFull,
};
use crate::crypto::{BatchKey, Keyring};
use crate::device::runner;
use crate::journal::{self, writer::WriterConfig, Journal};
use crate::pipeline::{FeatureStage, FilterStage};
use crate::stream::StreamInfo;
use crate::telemetry::DeviceStats;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    All,
    Dsp,
    Features,
    Seal,
    Journal,
}

pub struct BenchArgs<'a> {
    pub device: Option<&'a Path>,
    pub channels: Option<usize>,
    pub rate: Option<f64>,
    pub seconds: f64,
    pub stage: Stage,
    /// Raw samples to use instead of synthetic ones: little-endian f64,
    /// frame-major, `channels` per frame (for comparisons with other tools
    /// on identical data).
    pub input: Option<&'a Path>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub channels: usize,
    pub rate: f64,
    pub seconds: f64,
    pub filter: crate::batch::FilterDescription,
    pub filter_sections: usize,
    /// Channel-samples per second through the whole pipeline (null when
    /// only one stage was asked for).
    pub end_to_end_ch_samples_per_s: Option<f64>,
    /// How many times faster than real time the end-to-end run went.
    pub end_to_end_realtime_factor: Option<f64>,
    pub stages: BTreeMap<String, f64>,
    pub dropped_samples: u64,
    pub peak_rss_bytes: u64,
}

/// Timed passes of the in-memory stages; the best one counts.
const PASSES: usize = 5;

/// The filters used when no device file is given: the common EEG chain.
fn default_filters() -> FiltersSection {
    FiltersSection {
        highpass_hz: Some(1.0),
        lowpass_hz: Some(45.0),
        order: 4,
        notch_hz: None,
        ..FiltersSection::default()
    }
}

fn peak_rss_bytes() -> u64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| u.max_rss().max(0) as u64 * 1024)
        .unwrap_or(0)
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

/// Run the benchmark; errors are messages for the technician.
pub fn run(args: &BenchArgs) -> Result<BenchReport, String> {
    let (filters, features, quality, declared) = match args.device {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let d: DeviceConfig = parse_device(p, text).map_err(|probs| {
                probs
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            let layout = d.declared_layout();
            (d.filters, d.features, d.quality, layout)
        }
        None => (
            default_filters(),
            FeaturesSection::default(),
            QualitySection::default(),
            None,
        ),
    };
    let channels = args.channels.or(declared.map(|l| l.1)).unwrap_or(8);
    let rate = args.rate.or(declared.map(|l| l.0)).unwrap_or(250.0);
    if !((1..=1024).contains(&channels) && rate > 0.0 && rate <= 100_000.0) {
        return Err(format!(
            "--channels {channels} / --rate {rate} out of range (1-1024 channels, up to 100000 Hz)"
        ));
    }
    let seconds = args.seconds;
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err("--seconds must be between 0 and 3600".into());
    }
    let info = StreamInfo {
        sample_rate: rate,
        channels,
        channel_names: crate::source::default_names(channels),
        chunk_s: 0.0,
    };
    let synth = SyntheticConnection {
        sample_rate: rate,
        channels,
        seed: 1,
        pace: false,
    };
    let (frames, ts, raw) = match args.input {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let raw: Vec<f32> = bytes
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect();
            if raw.is_empty() || raw.len() % channels != 0 {
                return Err(format!(
                    "{}: {} values is not a whole number of {channels}-channel frames",
                    p.display(),
                    raw.len()
                ));
            }
            let frames = raw.len() / channels;
            progress(&format!(
                "read {frames} frames of {channels} channels from {}",
                p.display()
            ));
            let t0 = crate::clock::wall_unix();
            let ts = (0..frames).map(|n| t0 + n as f64 / rate).collect();
            (frames, ts, raw)
        }
        None => {
            let frames = ((seconds * rate).round() as usize).max(1);
            progress(&format!(
                "generating {seconds} s of {channels}-channel {rate} Hz synthetic data"
            ));
            let (ts, raw) =
                crate::source::synthetic::generate(&synth, frames, crate::clock::wall_unix());
            (frames, ts, raw)
        }
    };
    // Same block size as the runner's ring.
    let block = runner::block_frames(rate);
    let mut stages = BTreeMap::new();
    let want = |s: Stage| args.stage == Stage::All || args.stage == s;
    let ch_samples = (frames * channels) as f64;

    let filter = FilterStage::new(&filters, &info).map_err(|e| format!("filters: {e}"))?;
    let filter_desc = filter.description().clone();
    let filter_sections = filter.sections();
    let mut filtered = vec![0.0f32; raw.len()];
    if want(Stage::Dsp) || want(Stage::Features) || want(Stage::Seal) || want(Stage::Journal) {
        // Best of a few passes, each from a fresh filter state, as the
        // reference tools are timed (scripts/bench_dsp_compare.py).
        let mut best = f64::INFINITY;
        for _ in 0..PASSES {
            let mut f = FilterStage::new(&filters, &info).map_err(|e| format!("filters: {e}"))?;
            let t = Instant::now();
            for (i, o) in raw
                .chunks(block * channels)
                .zip(filtered.chunks_mut(block * channels))
            {
                f.process(i, o);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        if want(Stage::Dsp) {
            stages.insert("dsp".to_string(), ch_samples / best);
            progress(&format!(
                "dsp: {:.1} M ch-samples/s",
                ch_samples / best / 1e6
            ));
        }
    }
    if want(Stage::Features) {
        let stats = DeviceStats::new("bench", "synthetic", true);
        let mut best = f64::INFINITY;
        for _ in 0..PASSES {
            let mut fs = FeatureStage::new(&features, &quality, &filters, &info)
                .map_err(|e| format!("features: {e}"))?;
            let t = Instant::now();
            for ((r, f), t_) in raw
                .chunks(block * channels)
                .zip(filtered.chunks(block * channels))
                .zip(ts.chunks(block))
            {
                fs.push(r, f, t_, &stats);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        stages.insert("features".to_string(), ch_samples / best);
        progress(&format!(
            "features: {:.1} M ch-samples/s",
            ch_samples / best / 1e6
        ));
    }
    // One-second batches of the generated data.
    let batch_frames = (rate.round() as usize).max(1);
    let batches: Vec<BatchData> = (0..frames)
        .step_by(batch_frames)
        .map(|start| {
            let end = (start + batch_frames).min(frames);
            BatchData {
                device_id: "bench".into(),
                sample_rate: rate,
                channels: info.channel_names.clone(),
                units: "uV".into(),
                first_sample: start as u64,
                timestamps: ts[start..end].to_vec(),
                raw: raw[start * channels..end * channels].to_vec(),
                filtered: filtered[start * channels..end * channels].to_vec(),
                filter: filter_desc.clone(),
                ..Default::default()
            }
        })
        .collect();
    let key_bytes: [u8; 32] = rand::random();
    if want(Stage::Seal) {
        let key = BatchKey::from_bytes(&key_bytes);
        let t = Instant::now();
        for (i, b) in batches.iter().enumerate() {
            let p = SealParams {
                batch_id: uuid::Uuid::now_v7().to_string(),
                site_id: "bench",
                node_id: "bench",
                seq: i as u64,
                created_at: 0.0,
                compress: true,
            };
            seal(&key, &p, b).map_err(|e| format!("seal: {e}"))?;
        }
        let el = t.elapsed().as_secs_f64();
        stages.insert("seal".to_string(), ch_samples / el);
        progress(&format!(
            "seal: {:.1} M ch-samples/s",
            ch_samples / el / 1e6
        ));
    }
    let tmp = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let writer_cfg = WriterConfig {
        site_id: "bench".into(),
        node_id: "bench".into(),
        max_bytes: u64::MAX / 4,
        when_full: WhenFull::DropOldest,
        retain_uploaded: Duration::from_secs(3600),
        max_queue_bytes: 256 * 1024 * 1024,
        compress: true,
    };
    let open_writer = |name: &str| -> Result<journal::WriterHandle, String> {
        let j = Journal::open(&tmp.path().join(name), crate::config::SyncMode::Full)
            .map_err(|e| e.to_string())?;
        journal::spawn_writer(
            j,
            Arc::new(Keyring::new(BatchKey::from_bytes(&key_bytes))),
            writer_cfg.clone(),
        )
        .map_err(|e| e.to_string())
    };
    if want(Stage::Journal) {
        let w = open_writer("stage.db")?;
        let tx = w.sender();
        let n = batches.len() as u64;
        let t = Instant::now();
        for b in batches {
            let mut b = Some(b);
            while let Some(x) = b.take() {
                if !tx.try_send_batch(x.clone()) {
                    b = Some(x);
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        while tx.shared().snapshot().committed_batches < n {
            std::thread::sleep(Duration::from_millis(1));
        }
        let el = t.elapsed().as_secs_f64();
        w.shutdown();
        stages.insert("journal".to_string(), ch_samples / el);
        progress(&format!(
            "journal (seal + commit, sync full): {:.1} M ch-samples/s",
            ch_samples / el / 1e6
        ));
    }

    let mut end_to_end = None;
    let mut dropped = 0;
    if args.stage == Stage::All {
        progress(&format!(
            "end to end: the real runner for {seconds} s, unpaced"
        ));
        let w = open_writer("e2e.db")?;
        let tx = w.sender();
        let cfg = DeviceConfig {
            file: "bench".into(),
            id: "bench".into(),
            driver: crate::config::DriverKind::Synthetic,
            enabled: true,
            connection: Connection::Synthetic(synth.clone()),
            channels: Default::default(),
            filters: filters.clone(),
            features: features.clone(),
            quality: quality.clone(),
            buffer: crate::config::BufferSection { ring_seconds: 10.0 },
        };
        let start = Instant::now();
        let h = runner::spawn(
            cfg,
            runner::DeviceContext {
                journal: tx.clone(),
                batch_seconds: 1.0,
                first_sample: 0,
                timing: Default::default(),
            },
        )
        .map_err(|e| format!("cannot start the device thread: {e}"))?;
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let stats = h.stats.clone();
        h.join();
        // Everything the device produced must be committed before the clock stops.
        while tx.shared().snapshot().queued_batches > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        w.shutdown();
        let el = start.elapsed().as_secs_f64();
        use std::sync::atomic::Ordering::Relaxed;
        let samples = stats.samples_total.load(Relaxed);
        dropped = stats.dropped_samples.load(Relaxed);
        let rate_e2e = samples as f64 * channels as f64 / el;
        end_to_end = Some(rate_e2e);
        progress(&format!(
            "end to end: {:.1} M ch-samples/s, {dropped} dropped",
            rate_e2e / 1e6
        ));
    }
    Ok(BenchReport {
        channels,
        rate,
        seconds,
        filter: filter_desc,
        filter_sections,
        end_to_end_ch_samples_per_s: end_to_end,
        end_to_end_realtime_factor: end_to_end.map(|r| r / (channels as f64 * rate)),
        stages,
        dropped_samples: dropped,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Human-readable report.
pub fn render(r: &BenchReport) -> String {
    let need = r.channels as f64 * r.rate;
    let mut out = format!(
        "neuroedge bench: {} channels at {} Hz ({:.0} ch-samples/s in real time), {} filter sections\n",
        r.channels, r.rate, need, r.filter_sections
    );
    out += &format!(
        "{:<12} {:>16} {:>12}\n",
        "STAGE", "CH-SAMPLES/S", "x REALTIME"
    );
    for (name, v) in &r.stages {
        out += &format!("{:<12} {:>16.0} {:>12.1}\n", name, v, v / need);
    }
    if let Some(e) = r.end_to_end_ch_samples_per_s {
        out += &format!("{:<12} {:>16.0} {:>12.1}\n", "end-to-end", e, e / need);
    }
    out += &format!(
        "dropped samples: {}; peak memory: {:.1} MiB\n",
        r.dropped_samples,
        r.peak_rss_bytes as f64 / 1048576.0
    );
    out
}
