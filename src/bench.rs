//! `neuroedge bench`: can this machine keep up with my rig?
//!
//! Runs the real pipeline stages on a device's filters and features (or the
//! defaults below) over pre-generated synthetic data, then the real device
//! runner end to end with an unpaced synthetic source into a temporary
//! journal. Throughput is in channel-samples per second.

use crate::batch::{seal_with, BatchData, Compressor, SealParams};
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
    /// Seal the filtered signal too (`[journal] store = ["raw", "filtered"]`);
    /// the default journal stores raw only.
    pub store_filtered: bool,
    /// The journals' SQLite page size, KiB (`[journal] page_size_kib`);
    /// `None`: what the daemon chooses for a device of this rate.
    pub journal_page_kib: Option<u32>,
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
    /// Sealed envelope bytes per channel-sample (the seal stage's batches:
    /// what the journal stores per channel-sample).
    pub sealed_bytes_per_ch_sample: Option<f64>,
    /// Whether the batches carried the filtered signal.
    pub store_filtered: bool,
    /// The journals' page size, KiB.
    pub journal_page_kib: u32,
}

/// Timed passes of the in-memory stages; the best one counts.
const PASSES: usize = 5;
/// Channel-samples of synthetic input the stage benchmarks hold (96 MB,
/// and as much again filtered).
const STAGE_CH_SAMPLES: usize = 24 << 20;

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

/// The device settings a bench run uses.
struct Settings {
    filters: FiltersSection,
    features: FeaturesSection,
    quality: QualitySection,
    /// The end-to-end run's ring: the device file's, else
    /// [`BENCH_RING_SECONDS`].
    ring_seconds: f64,
    info: StreamInfo,
}

/// The end-to-end run's ring when no device file is given. The unpaced
/// source waits for room, so the ring's size changes no throughput, only
/// how much memory a backlog takes; 2 s is what high-density rigs are
/// configured with (docs/performance.md).
const BENCH_RING_SECONDS: f64 = 2.0;

/// The device file's settings (or the defaults), and the layout: flags,
/// else the file's, else 8 × 250 Hz.
fn settings(args: &BenchArgs) -> Result<Settings, String> {
    let (filters, features, quality, ring_seconds, declared) = match args.device {
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
            (
                d.filters,
                d.features,
                d.quality,
                d.buffer.ring_seconds,
                layout,
            )
        }
        None => (
            default_filters(),
            FeaturesSection::default(),
            QualitySection::default(),
            BENCH_RING_SECONDS,
            None,
        ),
    };
    let channels = args.channels.or(declared.map(|l| l.1)).unwrap_or(8);
    let rate = args.rate.or(declared.map(|l| l.0)).unwrap_or(250.0);
    let mut check = crate::validate::Findings::new("");
    check.check_channels("--channels", channels);
    check.check_rate("--rate", rate);
    if let Some(f) = check.into_vec().first() {
        return Err(format!("{} {}: {}", f.key, f.message, f.hint));
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err("--seconds must be between 0 and 3600".into());
    }
    Ok(Settings {
        filters,
        features,
        quality,
        ring_seconds,
        info: StreamInfo {
            sample_rate: rate,
            channels,
            channel_names: crate::source::default_names(channels),
            chunk_s: 0.0,
        },
    })
}

/// The bench's input: timestamps and frame-major raw samples.
struct Input {
    frames: usize,
    ts: Vec<f64>,
    raw: Vec<f32>,
}

fn synthetic(info: &StreamInfo) -> SyntheticConnection {
    SyntheticConnection {
        sample_rate: info.sample_rate,
        channels: info.channels,
        seed: 1,
        pace: false,
    }
}

/// `--input` (little-endian f64, frame-major) or synthetic data.
fn input(args: &BenchArgs, info: &StreamInfo) -> Result<Input, String> {
    let (channels, rate) = (info.channels, info.sample_rate);
    match args.input {
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
            Ok(Input { frames, ts, raw })
        }
        None => {
            // The stages time passes over data held in memory: at most
            // STAGE_CH_SAMPLES of it (but at least 1.5 s, two feature
            // windows), so a high-density bench stays within the memory
            // the daemon itself would use. End to end runs `seconds`.
            let cap = (STAGE_CH_SAMPLES / channels).max((1.5 * rate) as usize);
            let frames = ((args.seconds * rate).round() as usize).clamp(1, cap);
            progress(&format!(
                "generating {:.1} s of {channels}-channel {rate} Hz synthetic data",
                frames as f64 / rate
            ));
            let (ts, raw) = crate::source::synthetic::generate(
                &synthetic(info),
                frames,
                crate::clock::wall_unix(),
            );
            Ok(Input { frames, ts, raw })
        }
    }
}

/// The filter chain over the input in ring-sized blocks: the best of a few
/// passes, each from a fresh filter state, as the reference tools are timed
/// (scripts/bench_dsp_compare.py). Returns the seconds and the output.
fn bench_dsp(s: &Settings, inp: &Input, block: usize) -> Result<(f64, Vec<f32>), String> {
    let ch = s.info.channels;
    let mut filtered = vec![0.0f32; inp.raw.len()];
    let mut best = f64::INFINITY;
    for _ in 0..PASSES {
        let mut f = FilterStage::new(&s.filters, &s.info).map_err(|e| format!("filters: {e}"))?;
        let t = Instant::now();
        for (i, o) in inp
            .raw
            .chunks(block * ch)
            .zip(filtered.chunks_mut(block * ch))
        {
            f.process(i, o);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((best, filtered))
}

/// Welch features and quality over the input: the best of a few passes.
fn bench_features(
    s: &Settings,
    inp: &Input,
    filtered: &[f32],
    block: usize,
) -> Result<f64, String> {
    let ch = s.info.channels;
    let stats = DeviceStats::new("bench", "synthetic", true);
    let mut best = f64::INFINITY;
    let filters = FilterStage::new(&s.filters, &s.info).map_err(|e| format!("filters: {e}"))?;
    for _ in 0..PASSES {
        let mut fs = FeatureStage::new(&s.features, &s.quality, &filters, &s.info)
            .map_err(|e| format!("features: {e}"))?;
        let t = Instant::now();
        for ((r, f), t_) in inp
            .raw
            .chunks(block * ch)
            .zip(filtered.chunks(block * ch))
            .zip(inp.ts.chunks(block))
        {
            fs.push(r, f, t_, &stats);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// The daemon's batches of the input (one second, or fewer frames at high
/// density: [`crate::pipeline::batch_frames`]), built one at a time (so the
/// input is not held twice).
fn batches<'a>(
    s: &'a Settings,
    inp: &'a Input,
    filtered: Option<&'a [f32]>,
    filter: &'a crate::batch::FilterDescription,
) -> impl Iterator<Item = BatchData> + 'a {
    let (ch, rate) = (s.info.channels, s.info.sample_rate);
    let batch_frames = crate::pipeline::batch_frames(1.0, rate, ch, filtered.is_some());
    (0..inp.frames).step_by(batch_frames).map(move |start| {
        let end = (start + batch_frames).min(inp.frames);
        BatchData {
            device_id: "bench".into(),
            sample_rate: rate,
            channels: s.info.channel_names.clone(),
            units: "uV".into(),
            first_sample: start as u64,
            timestamps: inp.ts[start..end].to_vec(),
            raw: inp.raw[start * ch..end * ch].to_vec(),
            filtered: filtered.map_or_else(Vec::new, |f| f[start * ch..end * ch].to_vec()),
            filter: filter.clone(),
            ..Default::default()
        }
    })
}

/// Sealing alone (encode, zstd, AES-GCM): seconds and envelope bytes.
fn bench_seal(
    key: &BatchKey,
    batches: impl Iterator<Item = BatchData>,
) -> Result<(f64, u64), String> {
    let (mut spent, mut bytes) = (0.0, 0);
    // One context for all, as the journal writer keeps.
    let mut z = Compressor::new();
    for (i, b) in batches.enumerate() {
        let p = SealParams {
            batch_id: uuid::Uuid::now_v7().to_string(),
            site_id: "bench",
            node_id: "bench",
            seq: i as u64,
            created_at: 0.0,
            compress: true,
            format: crate::batch::BatchFormat::V2,
        };
        let t = Instant::now();
        let (env, _) = seal_with(&mut z, key, &p, &b).map_err(|e| format!("seal: {e}"))?;
        spent += t.elapsed().as_secs_f64();
        bytes += env.len() as u64;
    }
    Ok((spent, bytes))
}

/// A journal writer on a temporary file (sync full, as the default config;
/// pages of `page_kib`).
fn open_writer(
    dir: &Path,
    name: &str,
    key: &BatchKey,
    page_kib: u32,
) -> Result<journal::WriterHandle, String> {
    let j = Journal::open_with(
        &dir.join(name),
        crate::config::SyncMode::Full,
        page_kib * 1024,
    )
    .map_err(|e| e.to_string())?;
    journal::spawn_writer(
        j,
        Arc::new(Keyring::new(key.clone())),
        WriterConfig {
            site_id: "bench".into(),
            node_id: "bench".into(),
            max_bytes: u64::MAX / 4,
            when_full: WhenFull::DropOldest,
            retain_uploaded: Duration::from_secs(3600),
            max_queue_bytes: 64 * 1024 * 1024,
            compress: true,
            format: crate::batch::BatchFormat::V2,
        },
    )
    .map_err(|e| e.to_string())
}

/// The journal writer (seal + commit): seconds until every batch committed.
fn bench_journal(
    dir: &Path,
    key: &BatchKey,
    page_kib: u32,
    batches: impl Iterator<Item = BatchData>,
) -> Result<f64, String> {
    let w = open_writer(dir, "stage.db", key, page_kib)?;
    let tx = w.sender();
    let t = Instant::now();
    let mut n = 0u64;
    for b in batches {
        n += 1;
        // Waits while the writer's queue is full (as a source that can
        // wait does); false only when the writer is gone.
        if !tx.send_batch_blocking(b) {
            return Err("the journal writer stopped".into());
        }
    }
    while tx.shared().snapshot().committed_batches < n {
        std::thread::sleep(Duration::from_millis(1));
    }
    let el = t.elapsed().as_secs_f64();
    w.shutdown();
    Ok(el)
}

/// The real runner with an unpaced synthetic source for `seconds`:
/// (ch-samples/s, dropped samples).
fn bench_end_to_end(
    s: &Settings,
    dir: &Path,
    key: &BatchKey,
    args: &BenchArgs,
    page_kib: u32,
) -> Result<(f64, u64), String> {
    let seconds = args.seconds;
    progress(&format!(
        "end to end: the real runner for {seconds} s, unpaced"
    ));
    let w = open_writer(dir, "e2e.db", key, page_kib)?;
    let tx = w.sender();
    let cfg = DeviceConfig {
        file: "bench".into(),
        id: "bench".into(),
        driver: crate::config::DriverKind::Synthetic,
        enabled: true,
        connection: Connection::Synthetic(synthetic(&s.info)),
        channels: Default::default(),
        filters: s.filters.clone(),
        features: s.features.clone(),
        quality: s.quality.clone(),
        buffer: crate::config::BufferSection {
            ring_seconds: s.ring_seconds,
        },
        lsl_outlet: Default::default(),
    };
    let start = Instant::now();
    let h = runner::spawn(
        cfg,
        runner::DeviceContext {
            journal: tx.clone(),
            batch_seconds: 1.0,
            store_filtered: args.store_filtered,
            first_sample: 0,
            timing: Default::default(),
            node_id: "bench".into(),
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
    Ok((
        samples as f64 * s.info.channels as f64 / el,
        stats.dropped_samples.load(Relaxed),
    ))
}

/// Run the benchmark; errors are messages for the technician.
pub fn run(args: &BenchArgs) -> Result<BenchReport, String> {
    crate::malloc::tune();
    let s = settings(args)?;
    let inp = input(args, &s.info)?;
    let (channels, rate) = (s.info.channels, s.info.sample_rate);
    // Same block size as the runner's ring.
    let block = runner::block_frames(rate);
    let mut stages = BTreeMap::new();
    let want = |st: Stage| args.stage == Stage::All || args.stage == st;
    let ch_samples = (inp.frames * channels) as f64;
    let mut record = |name: &str, what: &str, seconds: f64| {
        progress(&format!(
            "{what}: {:.1} M ch-samples/s",
            ch_samples / seconds / 1e6
        ));
        stages.insert(name.to_string(), ch_samples / seconds);
    };
    let filter = FilterStage::new(&s.filters, &s.info).map_err(|e| format!("filters: {e}"))?;
    let (filter_desc, filter_sections) = (filter.description().clone(), filter.sections());
    let (dsp_s, filtered) = bench_dsp(&s, &inp, block)?;
    if want(Stage::Dsp) {
        record("dsp", "dsp", dsp_s);
    }
    if want(Stage::Features) {
        record(
            "features",
            "features",
            bench_features(&s, &inp, &filtered, block)?,
        );
    }
    let key = BatchKey::random();
    // Batches carry the filtered signal only when the journal stores it;
    // otherwise it is not held any longer (as in the daemon).
    let filtered = if args.store_filtered {
        filtered
    } else {
        Vec::new()
    };
    crate::malloc::release_free_memory();
    let stored = args.store_filtered.then_some(filtered.as_slice());
    let mut sealed_bytes = None;
    if want(Stage::Seal) {
        let (spent, bytes) = bench_seal(&key, batches(&s, &inp, stored, &filter_desc))?;
        record("seal", "seal", spent);
        sealed_bytes = Some(bytes as f64 / ch_samples);
    }
    let tmp = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let page_kib = args
        .journal_page_kib
        .unwrap_or_else(|| crate::journal::config::auto_page_kib(channels as f64 * rate));
    if want(Stage::Journal) {
        let spent = bench_journal(
            tmp.path(),
            &key,
            page_kib,
            batches(&s, &inp, stored, &filter_desc),
        )?;
        record("journal", "journal (seal + commit, sync full)", spent);
    }
    drop((inp, filtered));
    // As the daemon does (arena limit at start, free pages returned every
    // minute): the end-to-end run's memory is then its own, not what the
    // stage benchmarks left in the allocator.
    crate::malloc::release_free_memory();
    progress(&format!(
        "peak memory of the stages: {:.0} MiB",
        peak_rss_bytes() as f64 / 1048576.0
    ));
    let (end_to_end, dropped) = if args.stage == Stage::All {
        let (r, dropped) = bench_end_to_end(&s, tmp.path(), &key, args, page_kib)?;
        progress(&format!(
            "end to end: {:.1} M ch-samples/s, {dropped} dropped",
            r / 1e6
        ));
        (Some(r), dropped)
    } else {
        (None, 0)
    };
    Ok(BenchReport {
        channels,
        rate,
        seconds: args.seconds,
        filter: filter_desc,
        filter_sections,
        end_to_end_ch_samples_per_s: end_to_end,
        end_to_end_realtime_factor: end_to_end.map(|r| r / (channels as f64 * rate)),
        stages,
        dropped_samples: dropped,
        peak_rss_bytes: peak_rss_bytes(),
        sealed_bytes_per_ch_sample: sealed_bytes,
        store_filtered: args.store_filtered,
        journal_page_kib: page_kib,
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
        "dropped samples: {}; peak memory: {:.1} MiB; journal pages: {} KiB\n",
        r.dropped_samples,
        r.peak_rss_bytes as f64 / 1048576.0,
        r.journal_page_kib
    );
    if let Some(b) = r.sealed_bytes_per_ch_sample {
        let what = if r.store_filtered {
            "raw + filtered"
        } else {
            "raw"
        };
        out += &format!("stored: {b:.2} bytes per channel-sample ({what})\n");
    }
    out
}
