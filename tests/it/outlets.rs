//! The daemon's LSL outlets (contract §10) read by real pylsl inlets
//! (tests/peers/lsl_outlet_inlet.py), in the LSL tests' own network
//! namespace (multicast stays on loopback), checked against the journal:
//! metadata, filtered values bit for bit, timestamps = the journal's minus
//! one constant, band powers and quality equal to the batches' features, a
//! `mark` on `markers`, an inlet that keeps receiving across a daemon
//! restart, and a reload that changes `[lsl_outlet]` alone.

use crate::drivers_bflsl::{lsl_namespace, peer_available, NetNs, LSL_CFG};
use crate::util::{device, synthetic_device, Daemon, Env};
use serde_json::Value;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEV: &str = "eeg";
const RATE: f64 = 250.0;
const NAMES: [&str; 4] = ["Fz", "Cz", "Pz", "Oz"];
const STREAMS: &str = "filtered,band_power,quality,markers";

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_inlets(ns: &NetNs, log: &std::path::Path) -> Peer {
    start_inlets_with(ns, log, &format!("{DEV}:{STREAMS}"), &[])
}

/// The inlet peer on `device:stream,stream,...`.
fn start_inlets_with(ns: &NetNs, log: &std::path::Path, what: &str, extra: &[&str]) -> Peer {
    let (device, streams) = what.split_once(':').expect("device:streams");
    let [ip, netns, exec, ns_name] = ns.exec();
    Peer(
        Command::new(ip)
            .args([netns, exec, ns_name])
            .arg(crate::util::python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/lsl_outlet_inlet.py"
            ))
            .args(["--device", device, "--streams", streams])
            .args(extra)
            .arg("--log")
            .arg(log)
            .env("LSLAPICFG", LSL_CFG)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 peer"),
    )
}

fn read_log(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_ready(log: &std::path::Path, d: &Daemon) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if read_log(log).iter().any(|v| v["ready"] == true) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the pylsl inlets did not resolve the outlets: {:?}\nlog:\n{}",
        read_log(log),
        d.log_text()
    );
}

fn config() -> String {
    let names = NAMES.map(|n| format!("\"{n}\"")).join(", ");
    synthetic_device(
        DEV,
        NAMES.len(),
        RATE,
        &format!(
            "[channels]\nnames = [{names}]\n[filters]\nhighpass_hz = 1.0\nlowpass_hz = 40.0\n\
             [lsl_outlet]\nstreams = [\"filtered\", \"band_power\", \"quality\", \"markers\"]\n"
        ),
    )
}

fn meta<'a>(lines: &'a [Value], stream: &str) -> &'a Value {
    lines
        .iter()
        .map(|v| &v["meta"])
        .find(|m| m["stream"] == stream)
        .unwrap_or_else(|| panic!("no metadata for {stream}"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn check_metadata(lines: &[Value], bands: &[String]) {
    let f = meta(lines, "filtered");
    assert_eq!(f["name"], "eeg.filtered", "{f}");
    assert_eq!(f["type"], "EEG");
    assert_eq!(f["source_id"], "test-node/eeg/filtered");
    assert_eq!(f["channel_count"], 4);
    assert_eq!(f["nominal_srate"], RATE);
    assert_eq!(strs(&f["labels"]), NAMES);
    assert!(strs(&f["units"]).iter().all(|u| u == "microvolts"), "{f}");
    let b = meta(lines, "band_power");
    assert_eq!(
        (b["type"].as_str(), b["nominal_srate"].as_f64()),
        (Some("EEG-bandpower"), Some(2.0))
    );
    let want: Vec<String> = NAMES
        .iter()
        .flat_map(|n| bands.iter().map(move |b| format!("{n}:{b}")))
        .collect();
    assert_eq!(strs(&b["labels"]), want);
    let q = meta(lines, "quality");
    assert_eq!(
        (q["type"].as_str(), q["channel_count"].as_u64()),
        (Some("EEG-quality"), Some(4))
    );
    assert_eq!(q["nominal_srate"], 2.0);
    let m = meta(lines, "markers");
    assert_eq!(
        (m["type"].as_str(), m["nominal_srate"].as_f64()),
        (Some("Markers"), Some(0.0))
    );
    assert_eq!(m["source_id"], "test-node/eeg/markers");
}

/// Received samples of one numeric stream: (LSL stamp, float32 bits).
fn received(lines: &[Value], stream: &str) -> Vec<(f64, Vec<u32>)> {
    let mut out = Vec::new();
    for l in lines.iter().filter(|l| l["stream"] == stream) {
        let t = l["t"].as_array().unwrap();
        let b = l["bits"].as_array().unwrap();
        for (t, b) in t.iter().zip(b) {
            let bits = b
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32);
            out.push((t.as_f64().unwrap(), bits.collect()));
        }
    }
    out
}

/// The journal's samples of the device: (index, unix stamp, filtered bits).
fn journal_samples(env: &Env) -> Vec<(u64, f64, Vec<u32>)> {
    let mut out = Vec::new();
    for (_, b) in env.device_batches(DEV) {
        let ch = b.channels.len();
        for (k, t) in b.timestamps.iter().enumerate() {
            let bits = b.filtered[k * ch..(k + 1) * ch].iter().map(|v| v.to_bits());
            out.push((b.first_sample + k as u64, *t, bits.collect()));
        }
    }
    out
}

/// What the received filtered samples are in the journal.
struct Matched {
    /// (journal stamp - LSL stamp, samples) of each run of equal offsets
    /// (within 1 us): one per daemon run at most.
    runs: Vec<(f64, usize)>,
    /// The journal's unix stamps of the matched samples.
    stamps: Vec<f64>,
}

/// Match every received filtered sample to the journal sample with the
/// same bits (consecutive ones preferred); an offset that moves by more
/// than 1 us between consecutive samples fails.
fn match_filtered(got: &[(f64, Vec<u32>)], journal: &[(u64, f64, Vec<u32>)]) -> Matched {
    let mut by_bits: HashMap<&[u32], Vec<usize>> = HashMap::new();
    for (j, s) in journal.iter().enumerate() {
        by_bits.entry(&s.2).or_default().push(j);
    }
    let mut runs: Vec<(f64, usize)> = Vec::new();
    let mut stamps = Vec::new();
    let mut prev: Option<usize> = None;
    for (k, (tl, bits)) in got.iter().enumerate() {
        let next = prev
            .map(|p| p + 1)
            .filter(|&n| journal.get(n).is_some_and(|s| s.2 == *bits));
        let j = next.or_else(|| {
            let c = by_bits.get(bits.as_slice())?;
            c.iter().copied().find(|&j| prev.is_none_or(|p| j > p))
        });
        let j = j.unwrap_or_else(|| panic!("received sample {k} (t {tl}) is not in the journal"));
        let d = journal[j].1 - tl;
        match runs.last_mut() {
            // The same daemon run (consecutive, or after outlets were
            // re-created by a reload): the same constant.
            Some((off, n)) if (d - *off).abs() < 1e-6 => *n += 1,
            _ => {
                assert!(
                    next.is_none(),
                    "sample {k}: offset {d} jumped inside a run: {runs:?}"
                );
                runs.push((d, 1))
            }
        }
        prev = Some(j);
        stamps.push(journal[j].1);
    }
    Matched { runs, stamps }
}

/// Every received feature sample equals a journal feature record (values
/// as float32, stamp minus one of the runs' offsets within 1 us).
fn check_features(env: &Env, lines: &[Value], offsets: &[f64]) -> (usize, usize) {
    let records: Vec<neuroedge::batch::FeatureRecord> = env
        .device_batches(DEV)
        .into_iter()
        .flat_map(|(_, b)| b.features)
        .collect();
    let find = |tl: f64| {
        records
            .iter()
            .find(|r| offsets.iter().any(|o| (r.t - o - tl).abs() < 1e-6))
            .unwrap_or_else(|| panic!("no feature record at LSL time {tl}"))
    };
    let f32bits = |v: f64| (v as f32).to_bits();
    let bp = received(lines, "band_power");
    for (tl, bits) in &bp {
        let r = find(*tl);
        let want: Vec<u32> = (0..r.rms.len())
            .flat_map(|ch| r.band_power.iter().map(move |(_, p)| f32bits(p[ch])))
            .collect();
        assert_eq!(*bits, want, "band_power at {tl}");
    }
    let q = received(lines, "quality");
    for (tl, bits) in &q {
        let want: Vec<u32> = find(*tl).rms.iter().map(|v| f32bits(*v)).collect();
        assert_eq!(*bits, want, "quality at {tl}");
    }
    (bp.len(), q.len())
}

/// The markers received: (value, LSL stamp).
fn markers_of(lines: &[Value]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for l in lines.iter().filter(|l| l["stream"] == "markers") {
        for (t, v) in l["t"]
            .as_array()
            .unwrap()
            .iter()
            .zip(l["values"].as_array().unwrap())
        {
            out.push((v.as_str().unwrap().to_string(), t.as_f64().unwrap()));
        }
    }
    out
}

fn check_markers(env: &Env, lines: &[Value], offsets: &[f64], want: &[&str]) {
    let journal: Vec<neuroedge::batch::Marker> = env
        .device_batches(DEV)
        .into_iter()
        .flat_map(|(_, b)| b.markers)
        .collect();
    let got = markers_of(lines);
    for w in want {
        let (_, tl) = got
            .iter()
            .find(|(v, _)| v == w)
            .unwrap_or_else(|| panic!("marker {w} not received: {got:?}"));
        let m = journal
            .iter()
            .find(|m| m.value == *w)
            .expect("marker journaled");
        assert!(
            offsets.iter().any(|o| (m.t - o - tl).abs() < 1e-6),
            "marker {w}: journal {} LSL {tl} offsets {offsets:?}",
            m.t
        );
    }
}

fn wait_pushed(d: &Daemon, stream: &str, more_than: u64) {
    d.wait_report(Duration::from_secs(20), "outlet pushing", |r| {
        r.device(DEV)
            .and_then(|dev| dev.outlets.get(stream))
            .is_some_and(|o| o.pushed > more_than)
    });
}

fn mark(d: &Daemon, text: &str) {
    let r = d
        .request(&format!("mark {DEV} {text}"))
        .expect("mark reply");
    assert!(r.get("error").is_none(), "{r}");
}

#[test]
fn outlets_match_the_journal_and_survive_a_restart_and_a_reload() {
    if !peer_available("pylsl") {
        return;
    }
    let Some(ns) = lsl_namespace("outlets") else {
        return;
    };
    let env = Env::new("");
    env.write("devices/eeg.toml", &config());
    let log = env.path().join("inlets.jsonl");
    let restarted = record_across_restart(&env, &ns, &log);
    check_recording(&env, &log, restarted);
}

/// Run the daemon with inlets on its outlets, a mark, a reload of
/// `[lsl_outlet]`, a restart and another mark. Returns when it restarted
/// (unix).
fn record_across_restart(env: &Env, ns: &NetNs, log: &std::path::Path) -> f64 {
    let lsl_env = [("LSLAPICFG", LSL_CFG)];
    let d = env.spawn_wrapped(&ns.exec(), &lsl_env);
    d.wait_streaming(Duration::from_secs(20));
    let peer = start_inlets(ns, log);
    wait_ready(log, &d);
    std::thread::sleep(Duration::from_secs(1));
    mark(&d, "hello-outlet");
    std::thread::sleep(Duration::from_secs(6));
    let r = d.report().expect("status");
    let outlets = &device(&r, DEV).outlets;
    assert_eq!(
        outlets.keys().map(String::as_str).collect::<Vec<_>>(),
        ["band_power", "filtered", "markers", "quality"],
        "{outlets:?}"
    );
    assert!(outlets["filtered"].pushed >= 250 * 6, "{outlets:?}");
    assert_eq!(outlets["filtered"].dropped, 0, "{outlets:?}");
    assert_eq!(outlets["markers"].pushed, 1, "{outlets:?}");
    let metrics = reload_outlets(env, &d);
    assert!(
        metrics.contains("neuroedge_outlet_pushed_total{device=\"eeg\",stream=\"raw\"}"),
        "{metrics}"
    );

    // A restart: the same inlets keep receiving (same source ids).
    assert_eq!(d.terminate(), 0);
    let restarted = neuroedge::clock::wall_unix();
    let d = env.spawn_wrapped(&ns.exec(), &lsl_env);
    d.wait_streaming(Duration::from_secs(20));
    wait_pushed(&d, "filtered", 250 * 3);
    mark(&d, "after-restart");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(d.terminate(), 0);
    drop(peer);
    restarted
}

/// What the inlets received against the journal.
fn check_recording(env: &Env, log: &std::path::Path, restarted: f64) {
    let lines = read_log(log);
    let bands: Vec<String> = neuroedge::config::FeaturesSection::default()
        .bands
        .into_keys()
        .collect();
    check_metadata(&lines, &bands);
    let m = match_filtered(&received(&lines, "filtered"), &journal_samples(env));
    let runs = m.runs;
    eprintln!("outlets: (offset, samples) per constant offset: {runs:?}");
    // One constant per daemon run (both runs map unix to LSL time through
    // the same monotonic clock, so their constants may well coincide).
    assert!(!runs.is_empty() && runs.len() <= 2, "{runs:?}");
    let before = m.stamps.iter().filter(|t| **t < restarted).count();
    let after = m.stamps.len() - before;
    eprintln!("outlets: {before} samples received before the restart, {after} after");
    assert!(
        before >= 250 * 5 && after >= 250 * 2,
        "{before} samples before the restart, {after} after"
    );
    let clock = lines
        .iter()
        .find_map(|l| l["clock"]["unix_minus_lsl"].as_f64())
        .unwrap();
    // The daemon's timeline is the wall clock as it was at its start and
    // does not follow changes under 0.5 s (docs/timing.md; a VM's host
    // nudges its wall clock by tens of ms), so within 0.6 s.
    for (off, _) in &runs {
        assert!(
            (off - clock).abs() < 0.6,
            "offset {off} is not unix - LSL clock ({clock})"
        );
    }
    let offsets: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let (bp, q) = check_features(env, &lines, &offsets);
    assert!(bp >= 10 && q >= 10, "{bp} band_power, {q} quality samples");
    check_markers(env, &lines, &offsets, &["hello-outlet", "after-restart"]);
}

/// Add `raw` to `[lsl_outlet]` and reload: the outlets alone are
/// re-created (the device is not restarted: its sample count goes on).
/// Returns the metrics exposition after the reload.
fn reload_outlets(env: &Env, d: &Daemon) -> String {
    let before = device(&d.report().unwrap(), DEV).samples_total;
    env.write(
        "devices/eeg.toml",
        &config().replace("[\"filtered\"", "[\"raw\", \"filtered\""),
    );
    let reply = d.request("reload").expect("reload reply");
    assert_eq!(
        reply["devices"]["outlets_changed"],
        serde_json::json!([DEV]),
        "{reply}"
    );
    assert_eq!(
        reply["devices"]["changed"],
        serde_json::json!([]),
        "{reply}"
    );
    wait_pushed(d, "raw", 0);
    let r = d.report().unwrap();
    let dev = device(&r, DEV);
    assert!(
        dev.samples_total > before,
        "the device went on: {before} -> {}",
        dev.samples_total
    );
    assert!(dev.outlets.contains_key("raw"), "{:?}", dev.outlets);
    neuroedge::control::metrics::render(&r)
}

/// A consumer that stops pulling for 30 s (its inlets stay open) costs the
/// journal nothing: no gap, no dropped sample; afterwards it receives
/// fresh samples again.
#[test]
fn a_stuck_consumer_costs_the_journal_nothing() {
    let _guard = crate::util::heavy();
    if !peer_available("pylsl") {
        return;
    }
    let Some(ns) = lsl_namespace("outlets-stuck") else {
        return;
    };
    let env = Env::new("");
    env.write(
        "devices/eeg.toml",
        &synthetic_device(
            DEV,
            32,
            2000.0,
            "[lsl_outlet]\nstreams = [\"raw\", \"filtered\"]\n",
        ),
    );
    let log = env.path().join("inlets.jsonl");
    let d = env.spawn_wrapped(&ns.exec(), &[("LSLAPICFG", LSL_CFG)]);
    d.wait_streaming(Duration::from_secs(20));
    let _peer = start_inlets_with(
        &ns,
        &log,
        &format!("{DEV}:raw,filtered"),
        &["--pause-after", "2", "--pause-for", "30"],
    );
    wait_ready(&log, &d);
    let resumed = wait_resumed(&log);
    std::thread::sleep(Duration::from_secs(3));
    let r = d.report().expect("status");
    let dev = device(&r, DEV);
    eprintln!("outlets after a 30 s stuck consumer: {:?}", dev.outlets);
    assert_eq!((dev.dropped_samples, dev.gaps), (0, 0), "{dev:?}");
    assert!(
        dev.outlets["filtered"].pushed > 2000 * 30,
        "{:?}",
        dev.outlets
    );
    // Fresh samples after the pause: stamped (unix) after it ended. The
    // inlet first drains the 30 s its outlet buffered; on a busy machine
    // that takes a while, so wait for it (bounded).
    let newest = || {
        let lines = read_log(&log);
        let clock = lines
            .iter()
            .find_map(|l| l["clock"]["unix_minus_lsl"].as_f64())?;
        received(&lines, "filtered").last().map(|s| s.0 + clock)
    };
    let start = Instant::now();
    while newest().is_none_or(|t| t <= resumed) && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(250));
    }
    let last = newest();
    assert_eq!(d.terminate(), 0);
    assert_contiguous(&env);
    assert!(
        last.is_some_and(|t| t > resumed),
        "newest sample at {last:?}, resumed at {resumed}"
    );
}

/// The journal holds every sample of the device: no gap, indices
/// contiguous from 0.
fn assert_contiguous(env: &Env) {
    let mut next = 0;
    for (_, b) in env.device_batches(DEV) {
        assert!(b.gaps.is_empty(), "{:?}", b.gaps);
        assert_eq!(b.first_sample, next, "contiguous");
        next = b.end_sample();
    }
    assert!(next > 0, "no batch");
}

/// Wait until the peer pulls again after its pause; returns when (unix).
fn wait_resumed(log: &std::path::Path) -> f64 {
    let start = Instant::now();
    while !read_log(log).iter().any(|v| v["resumed"] == true) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the peer never resumed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    neuroedge::clock::wall_unix()
}

/// An LSL device (`lsl`, fed by a pylsl source peer; with a marker stream
/// when `markers`) publishing the outlet streams `streams`, streaming.
/// The fields drop in order: the source, the daemon, its folder, the
/// namespace.
struct LslWithOutlet {
    _source: crate::drivers_bflsl::Peer,
    d: Daemon,
    env: Env,
    ns: NetNs,
}

/// [`LslWithOutlet`], or `None` where the test cannot run (no pylsl, no
/// namespace).
fn lsl_with_outlet(tag: &str, markers: bool, streams: &str) -> Option<LslWithOutlet> {
    if !peer_available("pylsl") {
        return None;
    }
    let ns = lsl_namespace(&format!("outlets-{tag}"))?;
    let name = crate::drivers_bflsl::unique_stream_name(tag);
    let markers = if markers {
        format!("{name}-markers")
    } else {
        String::new()
    };
    let env = Env::new("");
    env.write(
        "devices/lsl.toml",
        &crate::drivers_bflsl::lsl_device(
            &name,
            &markers,
            &format!("[lsl_outlet]\nstreams = [{streams}]\n"),
        ),
    );
    let d = env.spawn_wrapped(&ns.exec(), &[("LSLAPICFG", LSL_CFG)]);
    let log = env.path().join("source.jsonl");
    let source = crate::drivers_bflsl::start_peer(&ns, &name, "src", &markers, 1, &log, &[]);
    d.wait_streaming(Duration::from_secs(30));
    Some(LslWithOutlet {
        _source: source,
        d,
        env,
        ns,
    })
}

/// An LSL device whose outlet nobody reads is pulled as if unwatched
/// (every 250 ms); once an inlet connects to the outlet, every 100 ms, so
/// the outlet keeps its latency bound.
#[test]
fn an_lsl_device_is_pulled_often_only_while_its_outlet_has_a_consumer() {
    let Some(run) = lsl_with_outlet("consumers", false, "\"filtered\"") else {
        return;
    };
    // (`run` keeps the source peer and the namespace to the end.)
    let LslWithOutlet {
        d, ref env, ref ns, ..
    } = run;
    // 250 Hz: 62.5 samples per 250-ms pull.
    let (alone, steps) = crate::drivers_bflsl::median_step(&d, "lsl");
    assert!((50..=75).contains(&alone), "no consumer: {steps:?}");
    let log = env.path().join("inlets.jsonl");
    let inlets = start_inlets_with(ns, &log, "lsl:filtered", &[]);
    wait_ready(&log, &d);
    std::thread::sleep(Duration::from_millis(500));
    // 25 samples per 100-ms pull.
    let (consumed, steps) = crate::drivers_bflsl::median_step(&d, "lsl");
    assert!((20..=30).contains(&consumed), "with a consumer: {steps:?}");
    // The inlet gone, the pulls slow down again.
    drop(inlets);
    std::thread::sleep(Duration::from_millis(1500));
    let (after, steps) = crate::drivers_bflsl::median_step(&d, "lsl");
    assert!((50..=75).contains(&after), "consumer gone: {steps:?}");
    assert_eq!(d.terminate(), 0);
}

/// Markers a device's LSL marker inlet receives (the LSL driver's
/// `markers`) go out on its `markers` outlet, as the journal has them.
#[test]
fn lsl_inlet_markers_go_out_on_the_markers_outlet() {
    let Some(run) = lsl_with_outlet("outlet", true, "\"markers\"") else {
        return;
    };
    // (`run` keeps the source peer and the namespace to the end.)
    let LslWithOutlet {
        d, ref env, ref ns, ..
    } = run;
    let log = env.path().join("inlets.jsonl");
    let _inlets = start_inlets_with(ns, &log, "lsl:markers", &[]);
    wait_ready(&log, &d);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(d.terminate(), 0);
    let got = markers_of(&read_log(&log));
    assert!(got.len() >= 5, "{got:?}");
    let journal: Vec<neuroedge::batch::Marker> = env
        .device_batches("lsl")
        .into_iter()
        .flat_map(|(_, b)| b.markers)
        .collect();
    let offset = journal
        .iter()
        .find(|m| m.value == got[0].0)
        .expect("journaled")
        .t
        - got[0].1;
    for (v, tl) in &got {
        assert!(v.starts_with("m1-"), "{v}");
        let m = journal.iter().find(|m| m.value == *v).expect("journaled");
        assert!(
            (m.t - offset - tl).abs() < 1e-6,
            "{v}: journal {} LSL {tl}",
            m.t
        );
    }
}
