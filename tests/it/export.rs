//! `neuroedge journal export --format xdf|edf|bdf|bids` on a real journal
//! (an emulated OpenBCI Cyton with a dropped block of packets, a synthetic
//! device at another rate, markers, a kill -9 and a restart with a rotated
//! key), read back by the readers researchers use: pyxdf, pyedflib, MNE,
//! mne-bids and the BIDS validator (tests/peers/check_export.py compares
//! them with the journal read independently).

use crate::drivers_serial::{cyton_device, peer_script, Peer};
use crate::util::{synthetic_device, Env};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const CONFIG: &str =
    "[daemon]\nsite_id = \"test-lab\"\nnode_id = \"test-node\"\ndevices_dir = \"devices\"\n\
[journal]\nbatch_seconds = 0.5\n[status]\nsocket = \"var/run/ne.sock\"\n[log]\nlevel = \"info\"\n";

fn key_id(path: &Path) -> String {
    neuroedge::crypto::load_key_file(path)
        .expect("key")
        .id()
        .to_string()
}

/// Run check_export.py; returns its JSON summary.
fn check(env: &Env, args: &[&str]) -> Value {
    let out = Command::new(crate::util::python())
        .arg(peer_script("check_export.py"))
        .args(args)
        .arg("--journal")
        .arg(env.journal())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check_export {args:?} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("check_export {}: {stdout}", args[0]);
    serde_json::from_str(stdout.trim()).expect("summary JSON")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn exports_read_back_exactly_by_pyxdf_pyedflib_mne_and_the_bids_validator() {
    let _guard = crate::util::heavy();
    let env = Env::new("");
    env.write(
        "neuroedge.toml",
        &format!("{CONFIG}[crypto]\nkey_file = \"var/k1.key\"\ngenerate_if_missing = true\n"),
    );
    let mut cyton = Peer::cyton(&env, false);
    env.write(
        "devices/cyton.toml",
        &cyton_device("cyton", &cyton.link, false),
    );
    env.write(
        "devices/aux.toml",
        &synthetic_device(
            "aux",
            2,
            125.0,
            "[filters]\nhighpass_hz = 1.0\nlowpass_hz = 40.0\nnotch_hz = 50.0\n",
        ),
    );
    // First run (key 1): markers, a dropped block of Cyton packets, kill -9.
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(600));
    for (dev, text) in [("cyton", "eyes closed"), ("aux", "go, now")] {
        let r = d.request(&format!("mark {dev} {text}")).expect("mark");
        assert!(r.get("error").is_none(), "{r}");
    }
    cyton.send("drop 40");
    d.wait_for(Duration::from_secs(15), "6 batches", |s| {
        s["journal"]["committed_batches"].as_u64() >= Some(6)
    });
    d.kill9();
    // Down for a second (the timestamps show it; the indices do not).
    std::thread::sleep(Duration::from_secs(1));
    // Key rotation: a new current key, the old one kept for reading.
    let out = env.cmd(&[
        "keygen",
        "--out",
        env.path().join("var/k2.key").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.write(
        "neuroedge.toml",
        &format!(
            "{CONFIG}[crypto]\nkey_file = \"var/k2.key\"\nprevious_key_files = [\"var/k1.key\"]\n"
        ),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    let r = d.request("mark cyton eyes open").expect("mark");
    assert!(r.get("error").is_none(), "{r}");
    d.wait_for(Duration::from_secs(15), "5 batches", |s| {
        s["journal"]["committed_batches"].as_u64() >= Some(5)
    });
    assert_eq!(d.terminate(), 0);
    let emu = cyton.finish();
    assert!(
        emu["drops"].as_array().is_some_and(|a| !a.is_empty()),
        "{emu}"
    );

    let (k1, k2) = (env.path().join("var/k1.key"), env.path().join("var/k2.key"));
    let (k1s, k2s) = (k1.to_str().unwrap(), k2.to_str().unwrap());
    let cfg = env.config();
    let cfg = cfg.to_str().unwrap();
    let out_dir = env.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let path = |name: &str| out_dir.join(name).to_str().unwrap().to_string();
    let export = |args: &[&str]| {
        let mut all = vec!["journal", "--config", cfg, "export"];
        all.extend_from_slice(args);
        env.cmd(&all)
    };
    let keys = ["--key", k1s, "--key", k2s];

    // XDF: both devices, every value and timestamp exact.
    let xdf = path("all.xdf");
    let o = export(&["--format", "xdf", "--out", &xdf]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("4 streams"), "{}", stderr(&o));
    let s = check(&env, &[&["xdf", &xdf][..], &keys[..]].concat());
    assert!(s["devices"]["cyton"]["gaps"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["devices"]["cyton"]["markers"], 2);
    assert_eq!(s["devices"]["aux"]["markers"], 1);

    // BDF of the Cyton: its ADC counts, exact; the drop, the restart and
    // the markers annotated.
    let bdf = path("cyton.bdf");
    let o = export(&["--format", "bdf", "--device", "cyton", "--out", &bdf]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("ADC counts (exact)"), "{}", stderr(&o));
    let s = check(
        &env,
        &[
            &[
                "edf",
                &bdf,
                "--device",
                "cyton",
                "--exact",
                "--expect-restart",
            ][..],
            &keys[..],
        ]
        .concat(),
    );
    assert_eq!(s["markers"], 2, "{s}");
    assert!(s["padded"].as_u64() > Some(40), "{s}");

    // EDF of the other device, filtered: within half a step.
    let edf = path("aux.edf");
    let o = export(&[
        "--format",
        "edf",
        "--device",
        "aux",
        "--filtered",
        "--out",
        &edf,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = check(
        &env,
        &[
            &[
                "edf",
                &edf,
                "--device",
                "aux",
                "--filtered",
                "--expect-restart",
            ][..],
            &keys[..],
        ]
        .concat(),
    );
    assert!(s["worst_error_in_steps"].as_f64() <= Some(0.5), "{s}");

    // Only the new key: the first run's batches cannot be opened; they are
    // reported and exported as marked gaps, never skipped.
    let k1_id = key_id(&k1);
    let xdf2 = path("newkey.xdf");
    let o = export(&["--format", "xdf", "--key", k2s, "--out", &xdf2]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("could not be opened and is exported as a marked gap"),
        "{}",
        stderr(&o)
    );
    let s = check(
        &env,
        &[
            &["xdf", &xdf2][..],
            &keys[..],
            &["--missing-key-id", &k1_id][..],
        ]
        .concat(),
    );
    for dev in ["cyton", "aux"] {
        assert!(s["devices"][dev]["unreadable"].as_u64() >= Some(1), "{s}");
    }
    let bdf2 = path("newkey.bdf");
    let o = export(&[
        "--format", "bdf", "--device", "cyton", "--key", k2s, "--out", &bdf2,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    check(
        &env,
        &[
            &["edf", &bdf2, "--device", "cyton", "--exact"][..],
            &keys[..],
            &["--missing-key-id", &k1_id][..],
        ]
        .concat(),
    );

    // BIDS: a new dataset with both devices (BDF), validated and read by
    // mne-bids; a second run (filtered: EDF) and a second subject extend it.
    let root = path("bids");
    let o = export(&[
        "--format",
        "bids",
        "--subject",
        "01",
        "--task",
        "rest",
        "--out",
        &root,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("new dataset"), "{}", stderr(&o));
    check(
        &env,
        &[
            &["bids", &root, "--subject", "01", "--task", "rest"][..],
            &keys[..],
        ]
        .concat(),
    );
    let o = export(&[
        "--format",
        "bids",
        "--subject",
        "01",
        "--task",
        "rest",
        "--out",
        &root,
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "same recording again: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("already holds a recording"),
        "{}",
        stderr(&o)
    );
    let o = export(&[
        "--format",
        "bids",
        "--subject",
        "01",
        "--task",
        "rest",
        "--run",
        "2",
        "--filtered",
        "--out",
        &root,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("extended dataset"), "{}", stderr(&o));
    let o = export(&[
        "--format",
        "bids",
        "--subject",
        "02",
        "--task",
        "rest",
        "--device",
        "aux",
        "--out",
        &root,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    check(
        &env,
        &[
            &[
                "bids",
                &root,
                "--subject",
                "01",
                "--task",
                "rest",
                "--run",
                "2",
                "--filtered",
            ][..],
            &keys[..],
        ]
        .concat(),
    );
    let participants = std::fs::read_to_string(out_dir.join("bids/participants.tsv")).unwrap();
    assert_eq!(participants, "participant_id\nsub-01\nsub-02\n");
    let desc: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("bids/dataset_description.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(desc["DatasetType"], "raw");
    assert_eq!(desc["GeneratedBy"].as_array().map(Vec::len), Some(1));

    // Bad input: clear errors, nothing written.
    let before = std::fs::read_dir(&out_dir).unwrap().count();
    let o = export(&["--format", "xdf", "--out", &xdf]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("never overwrites"), "{}", stderr(&o));
    let o = export(&["--format", "edf", "--out", &path("x.edf")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("aux, cyton"),
        "lists the ids: {}",
        stderr(&o)
    );
    let o = export(&[
        "--format",
        "xdf",
        "--device",
        "nope",
        "--out",
        &path("x.xdf"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no batches of device \"nope\""),
        "{}",
        stderr(&o)
    );
    let o = export(&[
        "--format",
        "xdf",
        "--from-seq",
        "100000",
        "--out",
        &path("x.xdf"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no batches of"), "{}", stderr(&o));
    let o = export(&[
        "--format",
        "xdf",
        "--from",
        "2001-01-01T00:00:00Z",
        "--to",
        "2001-01-02T00:00:00Z",
        "--out",
        &path("x.xdf"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = export(&["--format", "bids", "--out", &path("x")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = export(&[
        "--format",
        "xdf",
        "--from",
        "yesterday",
        "--out",
        &path("x.xdf"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let after = std::fs::read_dir(&out_dir).unwrap().count();
    assert_eq!(before, after, "failed exports leave nothing");
    // A time range: the samples inside it only.
    let o = export(&[
        "--format",
        "csv",
        "--device",
        "aux",
        "--from",
        "0",
        "--to",
        "1",
        "--out",
        &path("x.csv"),
    ]);
    assert_eq!(o.status.code(), Some(1), "an empty range: {}", stderr(&o));
}

/// A full disk while exporting: a clear error, no partial file. Needs root
/// (a small tmpfs), as CI runs.
#[test]
fn export_to_a_full_disk_fails_cleanly() {
    let env = Env::new("[journal]\nbatch_seconds = 0.5");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("big", 32, 1000.0, ""),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    d.wait_for(Duration::from_secs(15), "4 batches", |s| {
        s["journal"]["committed_batches"].as_u64() >= Some(4)
    });
    assert_eq!(d.terminate(), 0);
    let disk = env.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&disk)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        mounted,
        "this test needs to mount a tmpfs (run as root, as CI does)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(disk.clone());
    let cfg = env.config();
    for (fmt, name) in [
        ("xdf", "r.xdf"),
        ("bdf", "r.bdf"),
        ("csv", "r.csv"),
        ("bids", "ds"),
    ] {
        let out = disk.join(name);
        let mut args = vec![
            "journal",
            "--config",
            cfg.to_str().unwrap(),
            "export",
            "--format",
            fmt,
            "--out",
            out.to_str().unwrap(),
        ];
        if fmt == "bids" {
            args.extend(["--subject", "01", "--task", "rest"]);
        }
        let o = env.cmd(&args);
        assert_eq!(o.status.code(), Some(1), "{fmt}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("No space left on device"),
            "{fmt}: {}",
            stderr(&o)
        );
        let left: Vec<_> = std::fs::read_dir(&disk)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{fmt}: partial output left: {left:?}");
    }
}
