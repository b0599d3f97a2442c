//! The BrainFlow and LSL drivers end to end: the real daemon, BrainFlow's
//! real library (its synthetic board) and a real LSL outlet (pylsl peer).
//! Each test is skipped, saying so, when its Python package is missing.

use crate::util::{synthetic_device, Env};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn python_has(module: &str) -> bool {
    Command::new(crate::util::python())
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether a test needing `module` may run. Outside CI a missing package
/// skips the test (saying so); in CI (`CI` set, as `.ci/run` runs) it is a
/// failure, so a broken install step cannot pass as a skipped test.
pub(crate) fn peer_available(module: &str) -> bool {
    if python_has(module) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the Python package {module} is missing in CI: scripts/install-test-deps.sh should install it"
    );
    eprintln!("SKIPPED: the Python package {module} is not installed");
    false
}

fn device<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["id"] == id))
        .unwrap_or(&Value::Null)
}

/// Every batch of one device: (timestamps, channels, gaps' missing total, markers).
struct Decoded {
    timestamps: Vec<f64>,
    channels: Vec<String>,
    gap_samples: u64,
    batches: usize,
}

fn decode(env: &Env, id: &str) -> Decoded {
    let batches = env.device_batches(id);
    let mut d = Decoded {
        timestamps: Vec::new(),
        channels: Vec::new(),
        gap_samples: 0,
        batches: batches.len(),
    };
    for (_, b) in batches {
        d.timestamps.extend_from_slice(&b.timestamps);
        d.gap_samples += b.gaps.iter().map(|g| g.missing).sum::<u64>();
        d.channels = b.channels;
    }
    d
}

fn std_dev(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn brainflow_synthetic_board_streams_and_bad_setups_are_errors() {
    if !peer_available("brainflow") {
        return;
    }
    let env = Env::new("");
    env.write(
        "devices/bf.toml",
        "id = \"bf\"\ndriver = \"brainflow\"\nenabled = true\n[connection]\nboard_id = -1\n",
    );
    env.write(
        "devices/bf-nolib.toml",
        "id = \"bf-nolib\"\ndriver = \"brainflow\"\nenabled = true\n[connection]\nboard_id = -1\n\
         library = \"/nonexistent/brainflow/libBoardController.so\"\n",
    );
    env.write(
        "devices/bf-badboard.toml",
        "id = \"bf-badboard\"\ndriver = \"brainflow\"\nenabled = true\n[connection]\nboard_id = 9999\n",
    );
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 4, 250.0, ""),
    );
    let d = env.spawn();
    let s = d.wait_for(
        Duration::from_secs(30),
        "bf streaming, bad ones in error",
        |s| {
            device(s, "bf")["state"] == "streaming"
                && device(s, "bf")["samples_total"].as_u64() > Some(0)
                && device(s, "synthetic")["state"] == "streaming"
                && device(s, "bf-nolib")["state"] == "error"
                && device(s, "bf-badboard")["state"] == "error"
        },
    );
    let nolib = device(&s, "bf-nolib")["last_error"].as_str().unwrap_or("");
    assert!(
        nolib.contains("/nonexistent/brainflow/libBoardController.so")
            && nolib.contains("pip install brainflow"),
        "{nolib}"
    );
    let bad = device(&s, "bf-badboard")["last_error"]
        .as_str()
        .unwrap_or("");
    assert!(
        bad.contains("9999") && bad.contains("14 UNSUPPORTED_BOARD_ERROR"),
        "{bad}"
    );
    let bf = device(&s, "bf");
    assert_eq!(bf["channels"], 16, "synthetic board: 16 EEG channels");
    assert_eq!(bf["sample_rate"], 250.0);
    std::thread::sleep(Duration::from_secs(8));
    let s = d.status().expect("status");
    let bf = device(&s, "bf");
    assert_eq!(bf["state"], "streaming", "{bf}");
    assert_eq!(bf["gaps"], 0, "{bf}");
    assert_eq!(bf["dropped_samples"], 0, "{bf}");
    assert_eq!(device(&s, "synthetic")["state"], "streaming");
    assert_eq!(d.terminate(), 0);

    let bf = decode(&env, "bf");
    assert_eq!(bf.channels.len(), 16);
    assert_eq!(
        bf.channels[0], "Fz",
        "names from BrainFlow's board description"
    );
    assert_eq!(bf.gap_samples, 0, "no gaps revealed by the package counter");
    let ts = &bf.timestamps;
    assert!(ts.len() > 250 * 8, "{} samples", ts.len());
    let dts: Vec<f64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(dts.iter().all(|d| *d > 0.0), "timestamps increase");
    let rate = (ts.len() - 1) as f64 / (ts[ts.len() - 1] - ts[0]);
    // Jitter: successive timestamp differences against 1/fs, over the whole
    // run and after the fit's first 2 s.
    let jitter_all = std_dev(&dts);
    let settled = &dts[dts.len().min(500)..];
    let jitter = std_dev(settled);
    let worst = settled
        .iter()
        .map(|d| (d - 1.0 / 250.0).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "brainflow synthetic board: {} samples in {} batches, rate {rate:.3} Hz, \
         std(dt) {:.2} us (whole run {:.2} us), max |dt - 1/fs| {:.2} us",
        ts.len(),
        bf.batches,
        jitter * 1e6,
        jitter_all * 1e6,
        worst * 1e6
    );
    assert!((rate - 250.0).abs() < 2.5, "rate {rate}");
    // Pulled as each burst arrives (not paced): a few µs at most; paced
    // pulls made this 30–50 µs.
    assert!(jitter < 10e-6, "timestamp jitter {jitter} s");
    // Unix time of the last sample is close to when it was taken.
    let now = neuroedge::clock::wall_unix();
    assert!((now - ts[ts.len() - 1]).abs() < 5.0);
}

/// liblsl's configuration for every LSL party of the tests (one multicast
/// group, TTL 0).
pub(crate) const LSL_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/lsl_api.cfg");

/// A network namespace of the test's own, with nothing but loopback (and
/// multicast routed to it): the daemon's liblsl and the pylsl peers find
/// each other there, and nothing LSL sends (its resolver multicasts) can
/// reach a real network. Needs root (CI runs as root).
pub(crate) struct NetNs(String);

impl NetNs {
    /// A namespace named after this process and `tag` (tests run in
    /// parallel threads).
    fn new(tag: &str) -> Result<NetNs, String> {
        let name = format!("neuroedge-{tag}-{}", std::process::id());
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let _ = run(&["netns", "del", &name]);
        run(&["netns", "add", &name])?;
        let ns = NetNs(name);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", "lo", "multicast", "on"][..],
            &["route", "add", "224.0.0.0/4", "dev", "lo"][..],
        ] {
            let mut full = vec!["netns", "exec", &ns.0, "ip"];
            full.extend_from_slice(args);
            run(&full)?;
        }
        Ok(ns)
    }

    /// The command prefix that runs a program inside the namespace.
    pub(crate) fn exec(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.0]
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The namespace for an LSL test, or None (saying why) when it cannot be
/// made outside CI; in CI that is a failure.
pub(crate) fn lsl_namespace(tag: &str) -> Option<NetNs> {
    match NetNs::new(tag) {
        Ok(ns) => Some(ns),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot make a network namespace for the LSL test in CI: {e}"
            );
            eprintln!("SKIPPED: the LSL test needs its own network namespace (run as root): {e}");
            None
        }
    }
}

/// Run tests/peers/check_lsl.py on device `lsl` of the journal against the
/// peer's log; it must pass. Returns its JSON summary.
fn check_lsl(env: &Env, log: &std::path::Path, extra: &[&str]) -> Value {
    let out = Command::new(crate::util::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/check_lsl.py"
        ))
        .arg(env.journal())
        .arg(env.key())
        .args(["--device", "lsl"])
        .arg("--log")
        .arg(log)
        .args(extra)
        .output()
        .expect("python3 check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("check_lsl: {stdout}");
    assert!(
        out.status.success(),
        "check_lsl failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("summary")
}

pub(crate) struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start_peer(
    ns: &NetNs,
    name: &str,
    source_id: &str,
    markers: &str,
    run: u32,
    log: &std::path::Path,
    extra: &[&str],
) -> Peer {
    let [ip, netns, exec, ns_name] = ns.exec();
    Peer(
        Command::new(ip)
            .args([netns, exec, ns_name])
            .arg(crate::util::python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/lsl_outlet.py"
            ))
            .args([
                "--name",
                name,
                "--source-id",
                source_id,
                "--markers",
                markers,
            ])
            .args([
                "--run",
                &run.to_string(),
                "--channels",
                "8",
                "--rate",
                "250",
            ])
            .args(extra)
            .arg("--log")
            .arg(log)
            .env("LSLAPICFG", LSL_CFG)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 peer"),
    )
}

/// A stream name no other test run shares (`neuroedge-TAG-PID-N`: tests of
/// parallel runs can see each other's outlets only through their names).
pub(crate) fn unique_stream_name(tag: &str) -> String {
    format!(
        "neuroedge-{tag}-{}-{}",
        std::process::id(),
        neuroedge::clock::wall_unix().to_bits() % 1_000_000
    )
}

/// The device file of an LSL device `lsl` reading stream `name`, with the
/// marker stream `markers` unless empty, then `extra` lines.
pub(crate) fn lsl_device(name: &str, markers: &str, extra: &str) -> String {
    let markers = if markers.is_empty() {
        String::new()
    } else {
        format!("markers = \"{markers}\"\n")
    };
    format!(
        "id = \"lsl\"\ndriver = \"lsl\"\nenabled = true\n[connection]\nname = \"{name}\"\n\
         resolve_timeout_s = 1.0\n{markers}{extra}"
    )
}

/// A daemon whose one device `lsl` reads a fresh pylsl outlet (started
/// with `start_peer`'s `extra` arguments), both in a network namespace of
/// their own, once it streams. Fields drop in order: the peer and the
/// daemon before the namespace.
struct LslRun {
    _peer: Peer,
    d: crate::util::Daemon,
    /// The peer's log (`check_lsl.py` reads it).
    log: std::path::PathBuf,
    env: Env,
    _ns: NetNs,
}

/// [`LslRun`], or `None` where the test cannot run (no pylsl, no namespace).
fn lsl_streaming(tag: &str, extra: &[&str]) -> Option<LslRun> {
    if !peer_available("pylsl") {
        return None;
    }
    let ns = lsl_namespace(&format!("lsl-{tag}"))?;
    let name = unique_stream_name(tag);
    let env = Env::new("");
    env.write("devices/lsl.toml", &lsl_device(&name, "", ""));
    let log = env.path().join("peer.jsonl");
    let d = env.spawn_wrapped(&ns.exec(), &[("LSLAPICFG", LSL_CFG)]);
    let peer = start_peer(&ns, &name, "", "", 1, &log, extra);
    d.wait_for(Duration::from_secs(20), "lsl streaming", |s| {
        device(s, "lsl")["state"] == "streaming"
            && device(s, "lsl")["samples_total"].as_u64() > Some(0)
    });
    Some(LslRun {
        _peer: peer,
        d,
        log,
        env,
        _ns: ns,
    })
}

#[test]
fn lsl_stream_bit_exact_with_markers_and_outlet_restarts() {
    if !peer_available("pylsl") {
        return;
    }
    let name = unique_stream_name("test");
    let source_id = format!("src-{name}");
    let markers = format!("{name}-markers");
    let env = Env::new("");
    env.write(
        "devices/lsl.toml",
        &lsl_device(&name, &markers, "type = \"EEG\"\n"),
    );
    // A stream without a nominal rate is refused (Fatal: `error`).
    let irregular = format!("{name}-irregular");
    env.write(
        "devices/lsl-irregular.toml",
        &format!(
            "id = \"lsl-irregular\"\ndriver = \"lsl\"\nenabled = true\n[connection]\n\
             name = \"{irregular}\"\nresolve_timeout_s = 1.0\n"
        ),
    );
    let log = env.path().join("peer.jsonl");
    let Some(ns) = lsl_namespace("lsl") else {
        return;
    };
    let d = env.spawn_wrapped(&ns.exec(), &[("LSLAPICFG", LSL_CFG)]);
    // No outlet yet: connecting, saying what it looks for.
    let s = d.wait_for(Duration::from_secs(10), "lsl connecting", |s| {
        device(s, "lsl")["state"] == "connecting"
    });
    // Still connecting once a resolve has timed out, saying what it looks
    // for (the first resolve takes resolve_timeout_s, longer under load).
    let s2 = d.wait_for(Duration::from_secs(15), "lsl says what it looks for", |s| {
        device(s, "lsl")["last_error"]
            .as_str()
            .is_some_and(|w| w.contains("no LSL stream matching"))
    });
    assert_eq!(device(&s2, "lsl")["state"], "connecting", "{s}");
    let why = device(&s2, "lsl")["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(why.contains(&name), "{why:?}");

    // The outlet appears: streaming, layout from the stream info.
    let peer = start_peer(
        &ns,
        &name,
        &source_id,
        &markers,
        1,
        &log,
        &["--irregular-name", &irregular],
    );
    let s = d.wait_for(Duration::from_secs(20), "lsl streaming", |s| {
        device(s, "lsl")["state"] == "streaming"
            && device(s, "lsl")["samples_total"].as_u64() > Some(0)
    });
    let dev = device(&s, "lsl");
    assert_eq!(dev["channels"], 8);
    let s = d.wait_for(Duration::from_secs(15), "irregular stream refused", |s| {
        device(s, "lsl-irregular")["state"] == "error"
    });
    let why = device(&s, "lsl-irregular")["last_error"]
        .as_str()
        .unwrap_or("");
    assert!(why.contains("irregular sampling rate"), "{why}");
    assert_eq!(dev["sample_rate"], 250.0);
    let window1_from = neuroedge::clock::wall_unix() + 2.0;
    std::thread::sleep(Duration::from_secs(6));
    let window1_to = neuroedge::clock::wall_unix() - 0.5;

    // The outlet dies: the device leaves `streaming` by itself.
    drop(peer);
    let killed = Instant::now();
    let s = d.wait_for(Duration::from_secs(15), "lsl leaves streaming", |s| {
        let st = &device(s, "lsl")["state"];
        *st == "disconnected" || *st == "stalled"
    });
    eprintln!(
        "lsl: outlet killed -> {} after {:.1} s ({})",
        device(&s, "lsl")["state"],
        killed.elapsed().as_secs_f64(),
        device(&s, "lsl")["last_error"]
    );
    std::thread::sleep(Duration::from_secs(2));

    // It comes back: streaming again without help.
    let _peer = start_peer(&ns, &name, &source_id, &markers, 2, &log, &[]);
    let back = Instant::now();
    d.wait_for(Duration::from_secs(30), "lsl streaming again", |s| {
        device(s, "lsl")["state"] == "streaming"
    });
    eprintln!(
        "lsl: streaming again {:.1} s after the outlet restarted",
        back.elapsed().as_secs_f64()
    );
    let window2_from = neuroedge::clock::wall_unix() + 2.0;
    std::thread::sleep(Duration::from_secs(5));
    let window2_to = neuroedge::clock::wall_unix() - 0.5;
    assert_eq!(d.terminate(), 0);

    let summary = check_lsl(
        &env,
        &log,
        &[
            "--labels",
            "C1,C2,C3,C4,C5,C6,C7,C8",
            "--require-markers",
            &format!("{window1_from}:{window1_to}"),
            "--require-markers",
            &format!("{window2_from}:{window2_to}"),
        ],
    );
    assert_eq!(summary["mismatched"], 0);
    assert_eq!(summary["runs"], serde_json::json!([1, 2]));
    assert!(summary["samples"].as_u64() > Some(250 * 9), "{summary}");
    // A marker every 0.37 s: the two windows (about 6 s) hold over 10.
    assert!(
        summary["markers_required"].as_u64() >= Some(10),
        "{summary}"
    );
}

#[test]
fn lsl_samples_sent_before_the_stop_are_recorded() {
    // With a marker stream, a read returns between pulls (when a chunk held
    // for markers falls due): a stop seen then must still take what waits
    // in liblsl's buffer.
    if !peer_available("pylsl") {
        return;
    }
    let name = unique_stream_name("stop");
    let markers = format!("{name}-markers");
    let env = Env::new("");
    env.write("devices/lsl.toml", &lsl_device(&name, &markers, ""));
    let log = env.path().join("peer.jsonl");
    let Some(ns) = lsl_namespace("lslstop") else {
        return;
    };
    let d = env.spawn_wrapped(&ns.exec(), &[("LSLAPICFG", LSL_CFG)]);
    // The peer starts pushing once the daemon's inlet is there, pushes for
    // 3 s, then stops pushing and keeps its outlets open.
    let _peer = start_peer(
        &ns,
        &name,
        &format!("src-{name}"),
        &markers,
        1,
        &log,
        &["--seconds", "3", "--hold"],
    );
    let until = Instant::now() + Duration::from_secs(60);
    let last = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let last = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v["last_sample"].as_u64());
        if let Some(n) = last {
            break n;
        }
        assert!(Instant::now() < until, "the peer never finished pushing");
        std::thread::sleep(Duration::from_millis(2));
    };
    // Stop at once: the last samples are in flight or in liblsl's buffer.
    assert_eq!(d.terminate(), 0);
    let summary = check_lsl(&env, &log, &[]);
    assert_eq!(summary["mismatched"], 0);
    assert_eq!(
        summary["last_sample"]["1"], last,
        "the peer pushed up to sample {last}: {summary}"
    );
}

#[test]
fn lsl_outlet_with_unusable_stamps_is_stamped_by_arrival() {
    // An outlet that stamps its samples with unix time instead of its LSL
    // clock: the stamps are years away from this host's LSL clock, so they
    // are placed on it by arrival, keeping their spacing; values still
    // bit-exact.
    let Some(run) = lsl_streaming("unix", &["--unix-stamps"]) else {
        return;
    };
    // (Every field bound: the peer and the namespace live to the end.)
    let LslRun {
        _peer,
        d,
        log,
        env,
        _ns,
    } = run;
    std::thread::sleep(Duration::from_secs(6));
    let s = d.status().expect("status");
    assert_eq!(device(&s, "lsl")["gaps"], 0, "{s}");
    let log_text = d.log_text();
    assert_eq!(d.terminate(), 0);
    assert!(
        log_text.contains("stamped on another clock"),
        "the bad stamps are reported: {log_text}"
    );

    let got = decode(&env, "lsl");
    let dts: Vec<f64> = got.timestamps.windows(2).map(|w| w[1] - w[0]).collect();
    let not_after: Vec<(usize, f64)> = dts
        .iter()
        .enumerate()
        .filter(|(_, d)| **d <= 0.0)
        .map(|(i, d)| (i, *d))
        .take(10)
        .collect();
    assert!(
        not_after.is_empty(),
        "timestamps increase; (index, dt) of the first that do not: {not_after:?} of {}",
        dts.len()
    );
    let settled = &dts[dts.len().min(500)..];
    let jitter = std_dev(settled);
    eprintln!(
        "lsl with unix stamps: {} samples, std(dt) after 2 s {:.2} us",
        got.timestamps.len(),
        jitter * 1e6
    );
    // Pulled as each burst arrives (not paced): a few µs at most; paced
    // pulls made this 30–50 µs.
    assert!(jitter < 10e-6, "timestamp jitter {jitter} s");
    // Values bit-exact, and arrival stamps within 50 ms of the instants
    // the peer meant.
    check_lsl(&env, &log, &["--tolerance-ms", "50"]);
}

/// tests/peers/brainflow_playback_file.py's value of EEG row `r` at sample `n`.
fn playback_value(n: u64, r: u64) -> f32 {
    if r == 1 {
        return n as f32 / 4.0;
    }
    (((n * 37 + r * 101) % 8192) as f64 / 64.0 - 64.0) as f32
}

#[test]
fn brainflow_playback_values_and_gaps_arrive_exactly() {
    // BrainFlow's playback board (-3) replays a file written by BrainFlow's
    // own writer, in the synthetic board's layout, through the real
    // library: every value and the lost block (package counter and time)
    // are known.
    if !peer_available("brainflow") {
        return;
    }
    let env = Env::new("");
    let file = env.path().join("recording.csv");
    let status = Command::new(crate::util::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/brainflow_playback_file.py"
        ))
        .arg(&file)
        .status()
        .expect("python3");
    assert!(status.success(), "writing the playback file");
    env.write(
        "devices/bf.toml",
        &format!(
            "id = \"bf\"\ndriver = \"brainflow\"\nenabled = true\n[connection]\nboard_id = -3\n\
             [connection.params]\nfile = \"{}\"\nmaster_board = -1\n",
            file.display()
        ),
    );
    let d = env.spawn();
    // 1400 samples: 5.6 s of data plus the 0.4 s lost block.
    d.wait_for(Duration::from_secs(30), "the whole file played", |s| {
        device(s, "bf")["samples_total"].as_u64() >= Some(1400)
    });
    assert_eq!(d.terminate(), 0);

    let batches = env.device_batches("bf");
    let mut n_seen = Vec::new();
    let mut gaps = Vec::new();
    for (_, b) in &batches {
        assert_eq!(b.channels.len(), 16);
        for frame in b.raw.chunks(16) {
            let n = (frame[0] * 4.0) as u64;
            for (c, v) in frame.iter().enumerate() {
                assert_eq!(
                    *v,
                    playback_value(n, c as u64 + 1),
                    "sample {n} channel {c}"
                );
            }
            n_seen.push(n);
        }
        gaps.extend(b.gaps.iter().map(|g| (g.before_sample, g.missing)));
    }
    let want: Vec<u64> = (0..600).chain(700..1500).collect();
    assert_eq!(n_seen, want, "every sample once, in order");
    assert_eq!(
        gaps,
        vec![(700, 100)],
        "the lost block, from the package counter"
    );
}

#[test]
fn lsl_without_liblsl_is_an_error_naming_the_fix_while_others_stream() {
    // liblsl is loaded at run time: NEUROEDGE_LSL_LIB pointing nowhere
    // stands for a machine without it. The LSL device is in `error` with
    // the fix; the synthetic device streams regardless. (Nothing LSL is
    // loaded, so no network namespace is needed.)
    let env = Env::new("");
    env.write(
        "devices/lsl.toml",
        "id = \"lsl\"\ndriver = \"lsl\"\nenabled = true\n[connection]\nname = \"nowhere\"\n\
         resolve_timeout_s = 1.0\n",
    );
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 4, 250.0, ""),
    );
    let missing = "/nonexistent/neuroedge-test/liblsl.so";
    let d = env.spawn_with_env(&[("NEUROEDGE_LSL_LIB", missing)]);
    let s = d.wait_for(
        Duration::from_secs(20),
        "lsl in error, synthetic streaming",
        |s| {
            device(s, "lsl")["state"] == "error"
                && device(s, "synthetic")["state"] == "streaming"
                && device(s, "synthetic")["samples_total"].as_u64() > Some(250)
        },
    );
    let why = device(&s, "lsl")["last_error"].as_str().unwrap_or("");
    assert!(
        why.contains(missing)
            && why.contains("does not exist")
            && why.contains("pip install pylsl")
            && why.contains("NEUROEDGE_LSL_LIB"),
        "{why}"
    );
    // Still so a while later: the synthetic device keeps going, the LSL
    // device stays in error (not retried in a loop).
    std::thread::sleep(Duration::from_secs(3));
    let s = d.status().expect("status");
    assert_eq!(device(&s, "lsl")["state"], "error", "{s}");
    assert_eq!(device(&s, "synthetic")["state"], "streaming", "{s}");
    assert_eq!(device(&s, "synthetic")["dropped_samples"], 0, "{s}");
    assert_eq!(d.terminate(), 0);
    assert!(!env.device_batches("synthetic").is_empty());
}

/// The steps device `dev`'s samples_total moves by (a read's frames
/// arrive together), polled every 5 ms for 3 s: the median step, and the
/// steps.
pub(crate) fn median_step(d: &crate::util::Daemon, dev: &str) -> (u64, Vec<u64>) {
    let until = Instant::now() + Duration::from_secs(3);
    let mut last = None;
    let mut steps = Vec::new();
    while Instant::now() < until {
        let s = d.status().expect("status");
        let n = device(&s, dev)["samples_total"]
            .as_u64()
            .expect("samples_total");
        if let Some(l) = last {
            if n > l {
                steps.push(n - l);
            }
        }
        last = Some(n);
        std::thread::sleep(Duration::from_millis(5));
    }
    steps.sort_unstable();
    assert!(steps.len() >= 5, "{steps:?}");
    (steps[steps.len() / 2], steps)
}

/// An LSL device nobody watches is pulled every 250 ms (the journal and
/// the features do not need more); while a socket subscriber reads it,
/// every 100 ms, as the live outputs' latency bound asks.
#[test]
fn lsl_is_pulled_more_often_while_a_subscriber_watches() {
    let Some(run) = lsl_streaming("cadence", &[]) else {
        return;
    };
    // (`run` keeps the peer and the namespace to the end.)
    let LslRun { d, .. } = run;
    // 250 Hz: 62.5 samples per 250-ms pull.
    let (unwatched, steps) = median_step(&d, "lsl");
    assert!((50..=75).contains(&unwatched), "unwatched: {steps:?}");
    let mut sub = std::io::BufReader::new(
        std::os::unix::net::UnixStream::connect(&d.socket).expect("connect"),
    );
    std::io::Write::write_all(sub.get_mut(), b"subscribe lsl raw hz 10\n").expect("send");
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut sub, &mut reply).expect("reply");
    assert!(reply.contains("\"sample_rate\""), "a header: {reply}");
    // Read the frames as they come (a subscriber that stalls is dropped).
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut sub, &mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    // 25 samples per 100-ms pull.
    let (watched, steps) = median_step(&d, "lsl");
    assert!((20..=30).contains(&watched), "watched: {steps:?}");
    assert_eq!(d.terminate(), 0);
    let _ = reader.join();
}
