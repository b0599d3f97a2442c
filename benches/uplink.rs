//! Uplink drain rate: a backlog of one-second 8-channel 250 Hz batches
//! (sealed and committed by the real writer) drained by the real uplink
//! engine to a local HTTPS server (tests/uplink_server: rustls, ring),
//! with the verdicts applied by the real writer.
//!
//! Reference in the same run: the same envelopes POSTed by a bare reqwest
//! client (same TLS, same server, same concurrency) without neuroedge's
//! paging, ordering, policy or journal marks.
//!
//! `cargo bench --bench uplink` first prints a one-shot drain of a 10 000
//! batch backlog (1 device; then 4 devices with max_in_flight = 4), with
//! batches/s, MB/s and CPU (utime+stime of the client-side threads from
//! /proc/self/task, so the in-process server is not counted), then runs
//! criterion on a 1 000 batch backlog. Under `cargo test` only the
//! criterion part runs, once.
//!
//! S3 (issue 13): after each HTTPS one-shot the same backlog is drained
//! with the S3 sink to moto's S3 server (`python3 -m moto.server` on a
//! loopback port), then the same envelopes are stored by boto3
//! `put_object` from as many threads as the engine has requests in flight
//! (tests/peers/s3_put_reference.py), against the same server in the same
//! run. Skipped with a message when moto or boto3 is missing.
//!
//! Knobs: `NEUROEDGE_BENCH_BACKLOG=N` (batches, default 10 000),
//! `NEUROEDGE_BENCH_DEVICES=1|4` (only that one-shot case, for profiling),
//! `NEUROEDGE_BENCH_NO_S3=1`.

mod common;
use common::one_second_batch;

#[path = "../tests/it/uplink_server.rs"]
#[allow(dead_code)] // the bench uses the server, not its fault scripting
mod uplink_server;

use criterion::{Criterion, Throughput};
use neuroedge::config::{ByteCount, HumanDuration, SyncMode, UplinkSection, WhenFull};
use neuroedge::crypto::{BatchKey, Keyring};
use neuroedge::journal::{self, writer::WriterConfig, Journal};
use neuroedge::uplink::config::{S3Section, SinkKind};
use neuroedge::uplink::{self, EngineOptions, UplinkShared};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uplink_server::{make_pki, TestServer};

const TOKEN: &str = "bench-token-0123456789";
const CLIENT_THREADS: &str = "uplink-bench";

fn writer_on(path: &Path) -> journal::WriterHandle {
    let j = Journal::open(path, SyncMode::Normal).expect("journal");
    journal::spawn_writer(
        j,
        Arc::new(Keyring::new(BatchKey::from_bytes(&[9u8; 32]))),
        WriterConfig {
            site_id: "lab".into(),
            node_id: "node".into(),
            max_bytes: u64::MAX / 2,
            when_full: WhenFull::DropOldest,
            retain_uploaded: Duration::from_secs(3600),
            max_queue_bytes: u64::MAX / 2,
            compress: true,
            format: neuroedge::batch::BatchFormat::V2,
        },
    )
    .expect("writer")
}

/// A journal with `n` pending batches spread round-robin over `devices`.
struct Backlog {
    _dir: tempfile::TempDir,
    path: PathBuf,
    n: u64,
    bytes: u64,
}

fn make_backlog(n: u64, devices: usize) -> Backlog {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backlog.db");
    let w = writer_on(&path);
    let tx = w.sender();
    for i in 0..n {
        let dev = format!("dev{}", i as usize % devices);
        let first = (i / devices as u64) * 250;
        let mut b = one_second_batch(&dev, first);
        loop {
            match tx.try_send_batch(b) {
                true => break,
                false => {
                    std::thread::sleep(Duration::from_micros(200));
                    b = one_second_batch(&dev, first);
                }
            }
        }
    }
    while tx.shared().snapshot().committed_batches < n {
        std::thread::sleep(Duration::from_millis(2));
    }
    let bytes = tx.shared().snapshot().pending_bytes;
    w.shutdown();
    Backlog {
        _dir: dir,
        path,
        n,
        bytes,
    }
}

/// CPU seconds (utime + stime) of this process's threads whose name
/// starts with one of `prefixes` (all threads if empty).
fn cpu_seconds(prefixes: &[&str]) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[l + 1..r];
        if !prefixes.is_empty() && !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let f: Vec<&str> = stat[r + 2..].split(' ').collect();
        // After the name: state is field 3, utime 14, stime 15 (1-based).
        let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        total += ut + st;
    }
    total as f64 / tick
}

struct Bench {
    server: TestServer,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let pki = make_pki();
        let mut server = TestServer::new(&pki, TOKEN, false);
        server.with_state(|s| s.keep_bodies = false);
        server.start();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).expect("ca");
        std::fs::write(dir.path().join("token"), TOKEN).expect("token");
        Bench { server, dir }
    }

    fn reset_server(&self) {
        self.server.with_state(|s| {
            s.stored.clear();
            s.first_stores.clear();
            s.events.clear();
            s.acks.clear();
        });
    }

    fn uplink_cfg(&self, max_in_flight: u32) -> UplinkSection {
        UplinkSection {
            enabled: true,
            endpoint: Some(self.server.endpoint()),
            token_file: Some(self.dir.path().join("token")),
            ca_file: Some(self.dir.path().join("ca.pem")),
            timeout: HumanDuration(Duration::from_secs(30)),
            max_in_flight,
            max_bytes_per_sec: None::<ByteCount>,
            backoff_initial: HumanDuration(Duration::from_millis(100)),
            backoff_max: HumanDuration(Duration::from_secs(1)),
            ..Default::default()
        }
    }
}

struct Run {
    secs: f64,
    /// Until the writer applied every verdict.
    secs_marked: f64,
    cpu_client: f64,
}

/// Drain a copy of `backlog` with the uplink engine to the HTTPS server.
fn drain(bench: &Bench, backlog: &Backlog, max_in_flight: u32) -> Run {
    bench.reset_server();
    let r = drain_to(bench.uplink_cfg(max_in_flight), backlog);
    assert_eq!(
        bench.server.with_state(|s| s.stored.len()) as u64,
        backlog.n,
        "server holds every batch"
    );
    r
}

/// Drain a copy of `backlog` with the uplink engine, `cfg` naming the sink.
fn drain_to(cfg: UplinkSection, backlog: &Backlog) -> Run {
    let work = tempfile::tempdir().expect("tempdir");
    let path = work.path().join("j.db");
    std::fs::copy(&backlog.path, &path).expect("copy journal");
    let w = writer_on(&path);
    let jtx = w.sender();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    let shared = Arc::new(UplinkShared::starting());
    let cpu0 = cpu_seconds(&[CLIENT_THREADS, "journal"]);
    let t0 = Instant::now();
    let h = uplink::spawn(
        rt.handle(),
        cfg,
        path.clone(),
        jtx.clone(),
        shared.clone(),
        EngineOptions::default(),
    );
    while shared.snapshot().uploaded_batches < backlog.n {
        std::thread::sleep(Duration::from_micros(500));
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "drain stuck: {:?}",
            shared.snapshot()
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    while jtx.shared().snapshot().uploaded_batches < backlog.n {
        std::thread::sleep(Duration::from_micros(500));
    }
    let secs_marked = t0.elapsed().as_secs_f64();
    let cpu_client = cpu_seconds(&[CLIENT_THREADS, "journal"]) - cpu0;
    rt.block_on(h.stop());
    w.shutdown();
    rt.shutdown_timeout(Duration::from_secs(1));
    Run {
        secs,
        secs_marked,
        cpu_client,
    }
}

/// The same envelopes POSTed by a bare reqwest client, `concurrency` at a time.
fn reference(bench: &Bench, backlog: &Backlog, concurrency: usize) -> Run {
    bench.reset_server();
    let conn = rusqlite::Connection::open(&backlog.path).expect("journal");
    let bodies: Vec<(String, Vec<u8>)> = conn
        .prepare("SELECT batch_id, envelope FROM batches ORDER BY id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    let bodies = Arc::new(bodies);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = std::fs::read(bench.dir.path().join("ca.pem")).expect("ca");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
        .build()
        .expect("client");
    let url = format!("{}/v1/neural-data/batches", bench.server.endpoint());
    let cpu0 = cpu_seconds(&[CLIENT_THREADS]);
    let t0 = Instant::now();
    rt.block_on(async {
        let next = Arc::new(AtomicUsize::new(0));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (client, url, bodies, next) =
                (client.clone(), url.clone(), bodies.clone(), next.clone());
            set.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, body)) = bodies.get(i) else {
                        return;
                    };
                    let r = client
                        .post(&url)
                        .header("Content-Type", "application/cbor")
                        .header("Authorization", format!("Bearer {TOKEN}"))
                        .header("Idempotency-Key", id)
                        .body(body.clone())
                        .send()
                        .await
                        .expect("post");
                    assert!(r.status().is_success());
                    let _ = r.bytes().await;
                }
            });
        }
        while set.join_next().await.is_some() {}
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu_client = cpu_seconds(&[CLIENT_THREADS]) - cpu0;
    rt.shutdown_timeout(Duration::from_secs(1));
    assert_eq!(
        bench.server.with_state(|s| s.stored.len()) as u64,
        backlog.n
    );
    Run {
        secs,
        secs_marked: secs,
        cpu_client,
    }
}

fn report(label: &str, backlog: &Backlog, r: &Run, reference: &Run) {
    let n = backlog.n as f64;
    let mb = backlog.bytes as f64 / 1e6;
    println!(
        "{label}: {} batches ({mb:.1} MB) in {:.2} s (verdicts in the journal after {:.2} s): {:.0} batches/s, {:.2} MB/s, client CPU {:.2} s = {:.0}% of one core",
        backlog.n,
        r.secs,
        r.secs_marked,
        n / r.secs,
        mb / r.secs,
        r.cpu_client,
        100.0 * r.cpu_client / r.secs
    );
    println!(
        "{label}: reference bare reqwest: {:.2} s: {:.0} batches/s, {:.2} MB/s, client CPU {:.2} s = {:.0}% of one core; neuroedge / reference throughput = {:.2}, CPU per batch ratio = {:.2}",
        reference.secs,
        n / reference.secs,
        mb / reference.secs,
        reference.cpu_client,
        100.0 * reference.cpu_client / reference.secs,
        reference.secs / r.secs,
        (r.cpu_client / n) / (reference.cpu_client / n).max(1e-9)
    );
}

/// Rounds of the HTTPS one-shot (the median is reported).
const ROUNDS: usize = 5;

fn oneshot(bench: &Bench, n: u64) {
    let only: Option<usize> = std::env::var("NEUROEDGE_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok());
    for (devices, in_flight) in [(1usize, 1u32), (4, 4)] {
        if only.is_some_and(|o| o != devices) {
            continue;
        }
        let t = Instant::now();
        let backlog = make_backlog(n, devices);
        println!(
            "backlog of {n} batches over {devices} device(s) ({:.1} MB) sealed and journaled in {:.1} s",
            backlog.bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        // Runs of a second or two are at the mercy of a shared machine:
        // ROUNDS pairs, each neuroedge then the reference, and the median
        // ratio (the pair with the median ratio is printed).
        let label = format!("drain {devices} device(s), max_in_flight {in_flight}");
        let mut pairs: Vec<(Run, Run)> = (0..ROUNDS)
            .map(|_| {
                let r = drain(bench, &backlog, in_flight);
                (r, reference(bench, &backlog, in_flight as usize))
            })
            .collect();
        let ratio = |p: &(Run, Run)| p.1.secs / p.0.secs;
        let all: Vec<String> = pairs.iter().map(|p| format!("{:.2}", ratio(p))).collect();
        pairs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
        let (r, reference) = &pairs[pairs.len() / 2];
        println!(
            "{label}: throughput ratios of {ROUNDS} rounds: {}",
            all.join(", ")
        );
        report(&label, &backlog, r, reference);
        if std::env::var_os("NEUROEDGE_BENCH_NO_S3").is_none() {
            s3_oneshot(bench, &backlog, in_flight);
        }
    }
}

/// moto's S3 server on a loopback port, stopped on drop.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("NEUROEDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn peer(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// Start moto's server and make `bucket`; None (with the reason printed)
/// when `moto[server]` or boto3 is missing.
fn moto_with_bucket(bucket: &str) -> Option<Moto> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()?;
    let child = std::process::Command::new(python())
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let moto = Moto { child, port };
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            println!("s3 drain: moto's server did not start (pip install 'moto[server]'); skipped");
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = std::process::Command::new(python())
        .arg(peer("s3_reader.py"))
        .args(["--endpoint", &format!("http://127.0.0.1:{port}")])
        .args(["--bucket", bucket, "mkbucket"])
        .output()
        .ok()?;
    if !out.status.success() {
        println!(
            "s3 drain: could not make the bucket: {}; skipped",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(moto)
}

/// Issue 13's S3 benchmark: drain the backlog to moto's S3 server with the
/// S3 sink, then store the same envelopes with boto3 `put_object` from as
/// many threads as the engine has requests in flight (the reference, run by
/// tests/peers/s3_put_reference.py), against the same server in the same run.
fn s3_oneshot(bench: &Bench, backlog: &Backlog, max_in_flight: u32) {
    let Some(moto) = moto_with_bucket("bench") else {
        return;
    };
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let creds = bench.dir.path().join("s3.credentials");
    std::fs::write(&creds, "testing\ntesting\n").expect("credentials");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600))
            .expect("chmod credentials");
    }
    let cfg = UplinkSection {
        sink: SinkKind::S3,
        s3: S3Section {
            endpoint: Some(endpoint.clone()),
            bucket: Some("bench".into()),
            prefix: "neuroedge".into(),
            credentials_file: Some(creds),
            ..Default::default()
        },
        ..bench.uplink_cfg(max_in_flight)
    };
    let r = drain_to(cfg, backlog);
    let out = std::process::Command::new(python())
        .arg(peer("s3_put_reference.py"))
        .args(["--endpoint", &endpoint, "--bucket", "bench"])
        .arg("--journal")
        .arg(&backlog.path)
        .args(["--concurrency", &max_in_flight.to_string()])
        .args(["--count-prefix", "neuroedge/"])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = match serde_json::from_str(text.trim()) {
        Ok(v) if out.status.success() => v,
        _ => {
            println!(
                "s3 drain: the boto3 reference failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
    };
    let counted = v["counted"].as_u64().unwrap_or(0);
    assert_eq!(
        counted, backlog.n,
        "the bucket holds every batch neuroedge sent"
    );
    let ref_secs = v["secs"].as_f64().unwrap_or(f64::NAN);
    let n = backlog.n as f64;
    let mb = backlog.bytes as f64 / 1e6;
    println!(
        "s3 drain, max_in_flight {max_in_flight}: neuroedge {} objects ({mb:.1} MB) in {:.2} s: {:.0} objects/s, {:.2} MB/s, client CPU {:.0}% of one core",
        backlog.n,
        r.secs,
        n / r.secs,
        mb / r.secs,
        100.0 * r.cpu_client / r.secs
    );
    println!(
        "s3 drain, max_in_flight {max_in_flight}: reference boto3 put_object ({max_in_flight} threads): {ref_secs:.2} s: {:.0} objects/s; neuroedge / boto3 throughput = {:.2}",
        n / ref_secs,
        ref_secs / r.secs
    );
}

fn main() {
    let bench = Bench::new();
    let benching = std::env::args().any(|a| a == "--bench");
    if benching {
        let n = std::env::var("NEUROEDGE_BENCH_BACKLOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        oneshot(&bench, n);
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    let backlog = make_backlog(1000, 1);
    let mut g = c.benchmark_group("uplink");
    g.throughput(Throughput::Elements(backlog.n));
    g.bench_function("drain_1000_batches_1_device", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| Duration::from_secs_f64(drain(&bench, &backlog, 1).secs))
                .sum()
        })
    });
    g.bench_function("reference_bare_reqwest_1000_posts", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| Duration::from_secs_f64(reference(&bench, &backlog, 1).secs))
                .sum()
        })
    });
    g.finish();
    c.final_summary();
}
