//! A wall-clock step under the real daemon (a Raspberry Pi's clock jumping
//! when NTP first syncs): the daemon runs under libfaketime (Debian's
//! `faketime` package), whose offset file the test rewrites mid-run. The
//! monotonic clock is left alone, as the kernel would.

use crate::util::{synthetic_device, Env};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const RATE: f64 = 250.0;

/// libfaketime's thread-safe build, if installed.
fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")])
        .find(|p| p.is_file())
}

#[test]
fn wall_clock_steps_keep_timestamps_monotonic_and_are_recorded() {
    let Some(lib) = libfaketime() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "libfaketime is missing in CI: scripts/install-test-deps.sh should install `faketime`"
        );
        eprintln!("SKIPPED: libfaketime (Debian package faketime) is not installed");
        return;
    };
    let env = Env::new("");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 4, RATE, ""),
    );
    let rc = env.path().join("faketime.rc");
    std::fs::write(&rc, "+0\n").expect("faketime rc");
    let lib = lib.to_string_lossy().into_owned();
    let rc_s = rc.to_string_lossy().into_owned();
    let d = env.spawn_with_env(&[
        ("LD_PRELOAD", &lib),
        ("FAKETIME_TIMESTAMP_FILE", &rc_s),
        // Re-read the offset file every second, not every call.
        ("FAKETIME_CACHE_DURATION", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    d.wait_streaming(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    // NTP syncs: the wall clock jumps one hour ahead...
    std::fs::write(&rc, "+3600\n").expect("step forward");
    d.wait_for(Duration::from_secs(10), "forward step noticed", |_| {
        env.audit("clock_step").len() == 1
    });
    std::thread::sleep(Duration::from_secs(2));
    // ...then is corrected 10 s back.
    std::fs::write(&rc, "+3590\n").expect("step back");
    d.wait_for(Duration::from_secs(10), "backward step noticed", |_| {
        env.audit("clock_step").len() == 2
    });
    std::thread::sleep(Duration::from_secs(2));
    let s = d.status().expect("status");
    let dev = &s["devices"][0];
    assert_eq!(dev["state"], "streaming", "{dev}");
    assert_eq!(dev["gaps"], 0, "a wall-clock step is not a gap: {dev}");
    assert_eq!(d.terminate(), 0);

    // The audit log: one event per step, forward applied, backward only recorded.
    let steps = env.audit("clock_step");
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    assert!((f(&steps[0], "step_s") - 3600.0).abs() < 1.0, "{steps:?}");
    assert!(
        (f(&steps[0], "applied_s") - 3600.0).abs() < 1.0,
        "{steps:?}"
    );
    assert!((f(&steps[1], "step_s") + 10.0).abs() < 1.0, "{steps:?}");
    assert_eq!(f(&steps[1], "applied_s"), 0.0, "{steps:?}");

    // The batches: timestamps strictly increasing, one forward jump of an
    // hour and otherwise 1/fs apart; each step carried by a batch.
    let mut ts = Vec::new();
    let mut batch_steps = Vec::new();
    for (_, b) in env.device_batches("synthetic") {
        ts.extend_from_slice(&b.timestamps);
        batch_steps.extend(b.clock_steps.iter().copied());
    }
    assert_eq!(batch_steps.len(), 2, "{batch_steps:?}");
    assert!((batch_steps[0].step_s - 3600.0).abs() < 1.0);
    assert!((batch_steps[1].step_s + 10.0).abs() < 1.0);
    assert_eq!(batch_steps[1].applied_s, 0.0);
    let dts: Vec<f64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(dts.iter().all(|d| *d > 0.0), "timestamps never go back");
    let jumps: Vec<f64> = dts
        .iter()
        .copied()
        .filter(|d| (d - 1.0 / RATE).abs() > 0.05)
        .collect();
    assert_eq!(jumps.len(), 1, "exactly one jump: {jumps:?}");
    assert!((jumps[0] - 3600.0).abs() < 1.0, "{jumps:?}");
    eprintln!(
        "clock steps: {} samples; steps {:?}; the one timestamp jump {:.3} s",
        ts.len(),
        batch_steps,
        jumps[0]
    );
}
