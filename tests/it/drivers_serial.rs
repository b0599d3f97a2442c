//! The serial drivers (`openbci-cyton`, `serial-ascii`) end to end: the real
//! daemon reads emulated devices behind pseudo-terminals
//! (tests/peers/cyton_emulator.py, tests/peers/ascii_emulator.py), and the
//! journal is checked value by value in Python (tests/peers/check_*.py).

use crate::util::{device, synthetic_device, Daemon, Env};
use neuroedge::control::report::DeviceState;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn peer_script(name: &str) -> String {
    format!("{}/tests/peers/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An emulated device: a Python process owning a pty behind `link`,
/// scripted through its stdin. Killed when dropped.
pub(crate) struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    pub(crate) link: PathBuf,
    log: PathBuf,
    stderr: PathBuf,
}

impl Peer {
    fn start(env: &Env, name: &str, script: &str, args: &[&str]) -> Peer {
        let link = env.path().join(format!("{name}.tty"));
        let log = env.path().join(format!("{name}.json"));
        let stderr = env.path().join(format!("{name}.stderr"));
        let child = Command::new(crate::util::python())
            .arg(peer_script(script))
            .arg("--link")
            .arg(&link)
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start the emulator (python3)");
        let mut p = Peer {
            stdin: None,
            child,
            link,
            log,
            stderr,
        };
        p.stdin = p.child.stdin.take();
        let start = Instant::now();
        while !p.link.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "emulator made no pty link; stderr:\n{}",
                std::fs::read_to_string(&p.stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    pub(crate) fn cyton(env: &Env, daisy: bool) -> Peer {
        let args: &[&str] = if daisy { &["--daisy"] } else { &[] };
        Peer::start(env, "cyton", "cyton_emulator.py", args)
    }

    pub(crate) fn send(&mut self, cmd: &str) {
        let s = self.stdin.as_mut().expect("emulator stdin");
        writeln!(s, "{cmd}").expect("write to the emulator");
        s.flush().expect("flush");
    }

    /// Stop the emulator and read its log.
    pub(crate) fn finish(mut self) -> Value {
        self.send("quit");
        drop(self.stdin.take());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|e| {
            panic!(
                "emulator log {}: {e}; stderr:\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            )
        });
        serde_json::from_str(&text).expect("emulator log is JSON")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn cyton_device(id: &str, port: &Path, daisy: bool) -> String {
    format!(
        "id = \"{id}\"\ndriver = \"openbci-cyton\"\nenabled = true\n[connection]\nport = \"{}\"\ndaisy = {daisy}\n",
        port.display()
    )
}

/// Run a checker script on the journal; returns its JSON summary.
fn check(env: &Env, script: &str, emulog: &Path, device: &str, d_log: &str) -> Value {
    let out = Command::new(crate::util::python())
        .arg(peer_script(script))
        .arg(env.journal())
        .arg(env.key())
        .arg(emulog)
        .args(["--device", device])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed: {stdout}\n{}\ndaemon log:\n{d_log}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("checker summary")
}

fn sleep_s(s: f64) {
    std::thread::sleep(Duration::from_secs_f64(s));
}

/// SIGTERM the daemon; returns its log (ANSI colours removed).
fn stop(d: Daemon) -> String {
    let path = d.log.clone();
    let code = d.terminate();
    let log = strip_ansi(&std::fs::read_to_string(path).unwrap_or_default());
    assert_eq!(code, 0, "clean exit; log:\n{log}");
    log
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ ... final byte in '@'..='~'.
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// (1) and (5): 8 channels, every value exact, every gap exact (including
/// a loss of 300 packets, more than the counter's 256), garbage skipped
/// without losing a packet; timestamp jitter measured.
#[test]
fn cyton_values_gaps_resync_and_jitter() {
    let _guard = crate::util::quiet();
    let env = Env::new("");
    let mut peer = Peer::cyton(&env, false);
    env.write(
        "devices/cyton.toml",
        &cyton_device("cyton", &peer.link, false),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(15));
    let s = d.report().expect("status");
    assert_eq!(device(&s, "cyton").channels, 8);
    assert_eq!(device(&s, "cyton").sample_rate, 250.0);
    // Let the timing fit settle, then script the faults.
    sleep_s(2.0);
    peer.send("drop 5");
    sleep_s(0.4);
    peer.send("garbage 200");
    sleep_s(0.3);
    peer.send("fake");
    sleep_s(0.3);
    peer.send("drop 300");
    sleep_s(1.6);
    peer.send("garbage 37");
    peer.send("fake");
    sleep_s(0.3);
    peer.send("drop 1");
    sleep_s(0.3);
    peer.send("garbage 3");
    peer.send("fake");
    sleep_s(1.2);
    let s = d.report().expect("status");
    let dev = device(&s, "cyton");
    assert_eq!(dev.state, DeviceState::Streaming, "{dev:?}");
    assert_eq!(dev.gaps, 3, "{dev:?}");
    assert_eq!(dev.dropped_samples, 0, "{dev:?}");
    let log = stop(d);
    let emulog = peer.log.clone();
    let emu = peer.finish();
    // The driver reset the board, chose 8 channels, streamed, and stopped
    // the stream when the daemon shut down.
    let cmds = emu["commands"].as_str().unwrap_or("");
    assert!(cmds.starts_with("svcb") && cmds.ends_with('s'), "{cmds}");
    assert!(
        log.contains("openbci-cyton: garbled bytes"),
        "skipped bytes are logged:\n{log}"
    );

    let sum = check(&env, "check_cyton.py", &emulog, "cyton", &log);
    let missing: Vec<u64> = sum["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g[1].as_u64().unwrap())
        .collect();
    assert_eq!(missing, vec![5, 300, 1], "{sum}");
    assert!(sum["samples"].as_u64().unwrap() > 250 * 5, "{sum}");
    let j = &sum["jitter"];
    let rel = j["std_rel"].as_f64().unwrap();
    println!(
        "cyton timestamp jitter: std of successive differences {:.3} us = {:.4} % of 1/fs ({} pairs; max |dt - 1/fs| {:.3} us); latency {}",
        j["std_diff_s"].as_f64().unwrap() * 1e6,
        rel * 100.0,
        j["pairs"],
        j["max_abs_dev_s"].as_f64().unwrap() * 1e6,
        sum["latency"]
    );
    assert!(rel < 0.05, "timestamp jitter {rel} of the period: {sum}");
}

/// (2): Cyton + Daisy: 16 channels at 125 Hz, values exact, a lost half
/// loses its frame and is counted as a gap.
#[test]
fn cyton_daisy_16_channels() {
    let env = Env::new("");
    let mut peer = Peer::cyton(&env, true);
    env.write(
        "devices/cyton.toml",
        &cyton_device("cyton16", &peer.link, true),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(15));
    let s = d.report().expect("status");
    let dev = device(&s, "cyton16");
    assert_eq!(dev.channels, 16, "{dev:?}");
    assert_eq!(dev.sample_rate, 125.0, "{dev:?}");
    sleep_s(1.5);
    // An odd number of packets: one frame loses only one half.
    peer.send("drop 3");
    sleep_s(0.5);
    peer.send("garbage 40");
    peer.send("drop 2");
    sleep_s(1.5);
    let log = stop(d);
    let emulog = peer.log.clone();
    let emu = peer.finish();
    assert!(
        emu["commands"].as_str().unwrap_or("").starts_with("svCb"),
        "{emu}"
    );
    let sum = check(&env, "check_cyton.py", &emulog, "cyton16", &log);
    assert_eq!(sum["daisy"], true);
    assert_eq!(
        sum["expected_gaps"].as_array().map(Vec::len),
        Some(2),
        "{sum}"
    );
    assert!(sum["samples"].as_u64().unwrap() > 125 * 3, "{sum}");
    println!("daisy: {}", sum["jitter"]);
}

/// (3): an unplugged dongle: `disconnected`, then back to `streaming` by
/// itself, while another device keeps its rate.
#[test]
fn cyton_unplug_and_replug_while_another_device_streams() {
    let env = Env::new("");
    let mut peer = Peer::cyton(&env, false);
    env.write(
        "devices/cyton.toml",
        &cyton_device("cyton", &peer.link, false),
    );
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 8, 250.0, ""),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(15));
    // samples_per_s is measured over whole seconds: let it settle.
    sleep_s(2.2);
    peer.send("unplug 3");
    let start = Instant::now();
    let mut states: Vec<String> = Vec::new();
    let mut last_synth = 0u64;
    let mut cyton_back = false;
    let mut reconnected_total = None;
    while start.elapsed() < Duration::from_secs(15) {
        let s = d.report().expect("status");
        let syn = device(&s, "synthetic");
        assert_eq!(syn.state, DeviceState::Streaming, "{syn:?}");
        let total = syn.samples_total;
        assert!(total >= last_synth, "samples_total went back: {syn:?}");
        last_synth = total;
        let rate = syn.samples_per_s;
        assert!(
            (rate - 250.0).abs() <= 0.04 * 250.0,
            "synthetic rate {rate} while the Cyton is away: {syn:?}"
        );
        assert_eq!(syn.gaps, 0, "{syn:?}");
        assert_eq!(syn.dropped_samples, 0, "{syn:?}");
        let cy = device(&s, "cyton");
        let st = cy.state.as_str().to_string();
        if states.last() != Some(&st) {
            states.push(st.clone());
        }
        if st == "disconnected" {
            assert!(
                cy.last_error.as_deref().is_some_and(|e| !e.is_empty()),
                "{cy:?}"
            );
        }
        let cy_total = cy.samples_total;
        if states.iter().any(|s| s == "disconnected") && st == "streaming" {
            match reconnected_total {
                None => reconnected_total = Some(cy_total),
                Some(t0) if cy_total > t0 + 100 => {
                    cyton_back = true;
                    break;
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cyton_back, "states {states:?}; log:\n{}", d.log_text());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "back after {:?}",
        start.elapsed()
    );
    assert!(last_synth > 0);
    let s = d.report().expect("status");
    // The time away is a gap in the Cyton's journal (estimated from time).
    assert!(device(&s, "cyton").gaps >= 1, "{s:?}");
    let log = stop(d);
    let emu = peer.finish();
    assert_eq!(emu["unplugs"].as_array().map(Vec::len), Some(1));
    assert!(log.contains("disconnected"), "{log}");
}

/// (4): ASCII lines: values exact, malformed lines skipped and counted in
/// the log, the daemon keeps running. Meanwhile a port that does not exist
/// and a board that does not answer leave their devices `connecting` with
/// a clear error.
#[test]
fn serial_ascii_values_and_malformed_lines() {
    let env = Env::new("");
    let mut peer = Peer::start(
        &env,
        "ascii",
        "ascii_emulator.py",
        &["--rate", "200", "--channels", "4", "--sep", ","],
    );
    env.write(
        "devices/ascii.toml",
        &format!(
            "id = \"ascii\"\ndriver = \"serial-ascii\"\nenabled = true\n[connection]\nport = \"{}\"\nsample_rate = 200.0\nchannels = 4\nseparator = \",\"\n",
            peer.link.display()
        ),
    );
    let missing = env.path().join("no-such-tty");
    env.write(
        "devices/missing.toml",
        &cyton_device("missing", &missing, false),
    );
    let mute = Peer::start(&env, "mute", "cyton_emulator.py", &["--mute"]);
    env.write(
        "devices/mute.toml",
        &cyton_device("mute", &mute.link, false),
    );
    let d = env.spawn();
    d.wait_report(Duration::from_secs(15), "ascii streaming", |s| {
        s.device("ascii")
            .is_some_and(|a| a.state == DeviceState::Streaming && a.samples_total > 0)
    });
    sleep_s(1.0);
    peer.send("malformed");
    sleep_s(1.0);
    peer.send("malformed");
    sleep_s(1.0);
    let s = d.report().expect("status");
    let a = device(&s, "ascii");
    assert_eq!(a.state, DeviceState::Streaming, "{a:?}");
    assert_eq!(a.channels, 4);
    let m = device(&s, "missing");
    assert_eq!(m.state, DeviceState::Connecting, "{m:?}");
    let err = m.last_error.as_deref().unwrap_or("");
    assert!(
        err.contains("cannot open serial port") && err.contains("no-such-tty"),
        "{err}"
    );
    // The mute board: no answer to the reset within 5 s.
    let s = d.wait_report(Duration::from_secs(10), "mute board reported", |s| {
        device(s, "mute")
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no answer"))
    });
    assert_eq!(device(&s, "mute").state, DeviceState::Connecting);
    assert_eq!(device(&s, "ascii").state, DeviceState::Streaming);
    let log = stop(d);
    drop(mute);
    let emulog = peer.log.clone();
    let emu = peer.finish();
    let sent = emu["malformed_sent"].as_u64().unwrap();
    assert_eq!(sent, 12);
    // The last report (on close) carries the running total.
    let total: Option<u64> = log
        .lines()
        .rev()
        .filter(|l| l.contains("serial-ascii: malformed lines skipped"))
        .filter_map(|l| {
            let at = l.find("malformed_total=")? + "malformed_total=".len();
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .next();
    assert_eq!(total, Some(sent), "log:\n{log}");
    let sum = check(&env, "check_ascii.py", &emulog, "ascii", &log);
    assert!(sum["samples"].as_u64().unwrap() > 200 * 2, "{sum}");
    println!("ascii: {}", sum["jitter"]);
}

/// Stall detection: a device that stays connected but goes silent turns
/// `stalled` within 2 s plus one chunk, `health` says degraded, the log
/// says so once; when it talks again it is `streaming`, with a gap
/// estimated from the silence and timestamps back on real time.
#[test]
fn serial_ascii_stall_detected_once_then_recovers_with_a_gap() {
    let env = Env::new("");
    let mut peer = Peer::start(
        &env,
        "ascii",
        "ascii_emulator.py",
        &["--rate", "200", "--channels", "2"],
    );
    env.write(
        "devices/ascii.toml",
        &format!(
            "id = \"ascii\"\ndriver = \"serial-ascii\"\nenabled = true\n[connection]\nport = \"{}\"\nsample_rate = 200.0\nchannels = 2\n",
            peer.link.display()
        ),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(15));
    sleep_s(2.0);
    let paused = Instant::now();
    peer.send("pause 5");
    let s = d.wait_report(Duration::from_secs(4), "ascii stalled", |s| {
        device(s, "ascii").state == DeviceState::Stalled
    });
    let took = paused.elapsed();
    // 2 s plus a chunk, plus the status poll and the 100 ms read cadence.
    assert!(took < Duration::from_millis(2800), "stalled after {took:?}");
    assert!(took >= Duration::from_secs(2), "stalled after {took:?}");
    let _ = s;
    let h = d.request("health").expect("health");
    assert_eq!(h["status"], "degraded", "{h}");
    sleep_s(1.5);
    let s = d.wait_report(Duration::from_secs(5), "ascii streaming again", |s| {
        device(s, "ascii").state == DeviceState::Streaming
    });
    let resumed_total = device(&s, "ascii").samples_total;
    sleep_s(2.0);
    let s = d.report().expect("status");
    assert!(device(&s, "ascii").samples_total > resumed_total);
    let h = d.request("health").expect("health");
    assert_eq!(h["status"], "ok", "{h}");
    let log = stop(d);
    let stalled_lines = log
        .lines()
        .filter(|l| l.contains("to=\"stalled\"") || l.contains("to=stalled"))
        .count();
    assert_eq!(stalled_lines, 1, "logged once:\n{log}");
    drop(peer);
    // The journal: one device gap of ~5 s x 200 Hz, and the first sample
    // after it stamped ~5 s after the last one before it.
    let out = Command::new(crate::util::python())
        .arg(format!(
            "{}/tests/dump_batches.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(env.journal())
        .arg(env.key())
        .output()
        .expect("dump_batches.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gaps: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|b| b["gaps"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let missing = gaps[0]["missing"].as_u64().unwrap_or(0);
    assert!(
        (900..=1100).contains(&missing),
        "a 5 s silence at 200 Hz is ~1000 samples, got {missing}"
    );
    assert_eq!(gaps[0]["cause"], "device");
}
