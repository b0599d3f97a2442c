//! Export throughput per format (XDF, BDF, EDF, CSV) in channel-samples per
//! second, against the bare read-and-open of the same batches through the
//! journal reader (decryption, decompression, decoding), measured in the
//! same run on the same journal: 10 minutes of 8 channels at 250 Hz built
//! with the real journal writer, a marker a minute.
//!
//! After criterion's figures the bench prints the ratios (median of 5
//! runs each). With `NEUROEDGE_BENCH_24H=1` it also builds a 24 h journal
//! (8 ch x 250 Hz) and runs the real binary on it, exporting 1 h and 24 h as
//! XDF and BDF, and reports each process's peak RSS (VmHWM).

mod common;
use common::one_second_batch;

use criterion::{criterion_group, Criterion, Throughput};
use neuroedge::batch::Marker;
use neuroedge::config::WhenFull;
use neuroedge::crypto::{BatchKey, Keyring};
use neuroedge::export::{
    csv, edf, output::OutFile, xdf, DeviceInfo, DeviceInfos, Progress, Request, Signal,
};
use neuroedge::journal::{self, writer::WriterConfig, Journal, ReadBatch, Selection};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CH_SAMPLES_PER_BATCH: u64 = 8 * 250;

/// A journal of `seconds` one-second batches of device "bench", written by
/// the real writer thread; returns (folder, journal path, keyring).
fn build(seconds: u64) -> (tempfile::TempDir, PathBuf, Keyring) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().join("journal.db");
    let key = BatchKey::from_bytes(&[7u8; 32]);
    std::fs::write(dir.path().join("bench.key"), base64_key(&[7u8; 32]) + "\n").expect("key file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("bench.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("key mode");
    let j = Journal::open(&path, neuroedge::config::SyncMode::Normal).expect("journal");
    let w = journal::spawn_writer(
        j,
        Arc::new(Keyring::new(key)),
        WriterConfig {
            site_id: "lab".into(),
            node_id: "node".into(),
            max_bytes: u64::MAX / 4,
            when_full: WhenFull::DropOldest,
            retain_uploaded: Duration::from_secs(86_400),
            max_queue_bytes: 64 << 20,
            compress: true,
            format: neuroedge::batch::BatchFormat::V2,
        },
    )
    .expect("writer");
    let tx = w.sender();
    for s in 0..seconds {
        let mut b = one_second_batch("bench", s * 250);
        if s % 60 == 30 {
            b.markers.push(Marker {
                t: b.timestamps[100],
                value: format!("minute {}", s / 60),
            });
        }
        assert!(tx.send_batch_blocking(b));
    }
    drop(tx);
    w.shutdown();
    (dir, path, Keyring::new(BatchKey::from_bytes(&[7u8; 32])))
}

fn base64_key(k: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn request() -> Request {
    Request {
        devices: vec!["bench".into()],
        seqs: 0..=u64::MAX,
        time: None,
        signal: Signal::Raw,
    }
}

type Run = fn(&Journal, &Keyring, &Path) -> u64;

/// The reference: every batch read and opened, nothing written.
fn read_open(j: &Journal, keys: &Keyring, _: &Path) -> u64 {
    let mut n = 0u64;
    for b in j.read_batches(keys, Selection::device("bench")) {
        if let Ok(ReadBatch::Opened { data, .. }) = b {
            n += (data.n_samples() * data.n_channels()) as u64;
        }
    }
    n
}

fn out_file(dir: &Path, name: &str) -> OutFile {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    OutFile::create(&p).expect("out file")
}

fn run_xdf(j: &Journal, keys: &Keyring, dir: &Path) -> u64 {
    let mut f = out_file(dir, "b.xdf");
    let s = xdf::export_xdf(
        j,
        keys,
        &request(),
        &DeviceInfos::new(),
        &mut f,
        &mut Progress::silent(),
    )
    .expect("xdf");
    s.devices[0].samples * 8
}

fn run_edf(j: &Journal, keys: &Keyring, dir: &Path, flavour: edf::Flavour) -> u64 {
    let mut f = out_file(dir, "b.edf");
    let r = edf::export_edf(
        j,
        keys,
        &request(),
        "bench",
        &DeviceInfo::default(),
        flavour,
        &edf::EdfOptions::default(),
        &mut f,
        &mut Progress::silent(),
    )
    .expect("edf");
    r.timeline.summary.samples * 8
}

fn run_bdf(j: &Journal, keys: &Keyring, dir: &Path) -> u64 {
    run_edf(j, keys, dir, edf::Flavour::Bdf)
}

fn run_edf16(j: &Journal, keys: &Keyring, dir: &Path) -> u64 {
    run_edf(j, keys, dir, edf::Flavour::Edf)
}

fn run_csv(j: &Journal, keys: &Keyring, dir: &Path) -> u64 {
    let mut f = out_file(dir, "b.csv");
    let s = csv::export_csv(
        j,
        keys,
        &request(),
        "bench",
        &mut f,
        &mut Progress::silent(),
    )
    .expect("csv");
    s.samples * 8
}

const RUNS: [(&str, Run); 5] = [
    ("read_open", read_open),
    ("xdf", run_xdf),
    ("bdf", run_bdf),
    ("edf", run_edf16),
    ("csv", run_csv),
];

fn bench(c: &mut Criterion) {
    // `cargo test --all-targets` runs this once as a test (no `--bench`):
    // a small journal, no ratios, no 24 h run.
    let benching = std::env::args().any(|a| a == "--bench");
    let seconds = if benching { 600 } else { 30 };
    let (dir, path, keys) = build(seconds);
    let j = Journal::open_readonly(&path).expect("journal");
    let mut g = c.benchmark_group("export_10min_8ch_250hz");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(seconds * CH_SAMPLES_PER_BATCH));
    for (name, f) in RUNS {
        g.bench_function(name, |b| b.iter(|| f(&j, &keys, dir.path())));
    }
    g.finish();

    if !benching {
        return;
    }
    // Ratios, measured here in one run.
    let median = |f: Run| {
        let mut t: Vec<f64> = (0..5)
            .map(|_| {
                let s = Instant::now();
                let n = f(&j, &keys, dir.path());
                assert_eq!(n, seconds * CH_SAMPLES_PER_BATCH);
                s.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[2]
    };
    let reference = median(read_open);
    let total = (seconds * CH_SAMPLES_PER_BATCH) as f64;
    println!("\nexport throughput, 10 min of 8 ch x 250 Hz (median of 5):");
    println!("{:<10} {:>16} {:>10}", "FORMAT", "CH-SAMPLES/S", "VS READ");
    for (name, f) in RUNS {
        let t = if name == "read_open" {
            reference
        } else {
            median(f)
        };
        println!("{name:<10} {:>16.0} {:>10.2}", total / t, reference / t);
    }

    if std::env::var_os("NEUROEDGE_BENCH_24H").is_some() {
        peak_memory();
    }
}

/// Peak RSS of the real binary exporting 1 h and 24 h of 8 ch x 250 Hz.
fn peak_memory() {
    let t = Instant::now();
    let (dir, path, _) = build(86_400);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "\n24 h journal built in {:.0} s ({:.0} MiB); peak RSS of `neuroedge journal export`:",
        t.elapsed().as_secs_f64(),
        size as f64 / 1048576.0
    );
    for fmt in ["xdf", "bdf"] {
        for (label, to) in [("1 h", Some("3599")), ("24 h", None)] {
            let out = dir.path().join(format!("x.{fmt}"));
            let _ = std::fs::remove_file(&out);
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_neuroedge"));
            cmd.arg("journal")
                .arg("--journal")
                .arg(&path)
                .arg("--key")
                .arg(dir.path().join("bench.key"))
                .args(["export", "--format", fmt, "--out"])
                .arg(&out)
                .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr"));
            if let Some(to) = to {
                cmd.args(["--to-seq", to]);
            }
            let start = Instant::now();
            let mut child = cmd.spawn().expect("neuroedge");
            let status_path = format!("/proc/{}/status", child.id());
            let mut hwm_kib = 0u64;
            loop {
                if let Ok(s) = std::fs::read_to_string(&status_path) {
                    for l in s.lines() {
                        if let Some(v) = l.strip_prefix("VmHWM:") {
                            let kib: u64 =
                                v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                            hwm_kib = hwm_kib.max(kib);
                        }
                    }
                }
                if let Ok(Some(st)) = child.try_wait() {
                    assert!(
                        st.success(),
                        "export {fmt} {label} failed: {}",
                        std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            println!(
                "  {fmt} {label:>4}: peak RSS {:.1} MiB, {:.1} s, file {:.0} MiB",
                hwm_kib as f64 / 1024.0,
                start.elapsed().as_secs_f64(),
                bytes as f64 / 1048576.0
            );
            let _ = std::fs::remove_file(&out);
        }
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
