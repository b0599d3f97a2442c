//! End-to-end tests: the real `neuroedge` binary on temp folders.

use crate::util::{committed_envelopes, synthetic_device, Env};
use neuroedge::crypto::{load_key_file, Keyring};
use neuroedge::journal::Journal;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Open every batch in a journal with the Rust decoder; returns (device, seq, first_sample, n) per batch.
fn journal_batches(env: &Env) -> Vec<(String, u64, u64, u64)> {
    journal_batches_at(env, &env.journal())
}

fn journal_batches_at(env: &Env, journal: &std::path::Path) -> Vec<(String, u64, u64, u64)> {
    let keys = Keyring::new(load_key_file(&env.key()).expect("key"));
    let conn = rusqlite::Connection::open(journal).expect("open journal");
    let mut st = conn
        .prepare("SELECT envelope FROM batches ORDER BY device_id, seq")
        .expect("prepare");
    let envs: Vec<Vec<u8>> = st
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    envs.iter()
        .map(|e| {
            let (h, b) = neuroedge::batch::open(&keys, e).expect("every envelope opens");
            assert_eq!(b.timestamps.len() as u64, h.n_samples);
            (h.device_id, h.seq, h.first_sample, h.n_samples)
        })
        .collect()
}

fn assert_seq_gapless(batches: &[(String, u64, u64, u64)]) {
    let mut last: std::collections::HashMap<&str, (u64, u64)> = Default::default();
    for (d, seq, first, n) in batches {
        if let Some((ps, pend)) = last.get(d.as_str()) {
            assert_eq!(*seq, ps + 1, "seq gapless for {d}");
            assert_eq!(*first, *pend, "samples contiguous for {d}");
        } else {
            assert_eq!(*seq, 0, "seq starts at 0 for {d}");
        }
        last.insert(d, (*seq, first + n));
    }
}

#[test]
fn streams_status_and_shuts_down_with_every_sample_journaled() {
    let env = Env::new("");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 8, 250.0, ""),
    );
    let d = env.spawn();
    let took = d.wait_streaming(Duration::from_secs(5));
    assert!(took < Duration::from_secs(2), "streaming after {took:?}");
    std::thread::sleep(Duration::from_millis(3200));
    let s = d.status().expect("status");
    let dev = &s["devices"][0];
    assert_eq!(dev["state"], "streaming");
    assert_eq!(dev["channels"], 8);
    assert_eq!(dev["sample_rate"], 250.0);
    let reported = dev["samples_total"].as_u64().unwrap();
    assert!(reported > 700, "{reported} samples after ~3 s");
    assert_eq!(s["node_id"], "test-node");
    assert_eq!(s["site_id"], "test-lab");
    for k in [
        "pending_batches",
        "pending_bytes",
        "total_bytes",
        "max_bytes",
        "evicted_batches",
        "path",
    ] {
        assert!(s["journal"].get(k).is_some(), "journal.{k} in status");
    }
    assert_eq!(s["uplink"]["state"], "disabled");
    let h = d.request("health").unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(d.terminate(), 0, "clean exit on SIGTERM");
    assert!(!env.socket().exists(), "socket removed on exit");

    let batches = journal_batches(&env);
    assert_seq_gapless(&batches);
    let journaled: u64 = batches.iter().map(|b| b.3).sum();
    assert!(
        journaled as f64 >= 0.99 * reported as f64,
        "journal has {journaled} of {reported} samples"
    );

    // The same journal read by Python's cbor2 / zstandard / cryptography,
    // with every raw sample checked against an independent generator.
    let out = std::process::Command::new(crate::util::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/decode_batches.py"
        ))
        .arg(env.journal())
        .arg(env.key())
        .args(["--seed", "1", "--rate", "250"])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python decode failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("python summary");
    assert_eq!(summary["samples"].as_u64(), Some(journaled));
    assert_eq!(summary["batches"].as_u64(), Some(batches.len() as u64));

    // The CLI agrees.
    let v = env.cmd(&[
        "journal",
        "--config",
        env.config().to_str().unwrap(),
        "verify",
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let audit: Vec<String> = rusqlite::Connection::open(env.journal())
        .unwrap()
        .prepare("SELECT event FROM audit ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for e in [
        "key_created",
        "daemon_start",
        "device_state",
        "daemon_stop",
        "journal_closed",
    ] {
        assert!(audit.iter().any(|a| a == e), "audit has {e}: {audit:?}");
    }
}

#[test]
fn kill9_then_restart_keeps_committed_batches_and_continues_seq() {
    let env = Env::new("[journal]\nbatch_seconds = 0.5");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 8, 250.0, ""),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    d.wait_for(Duration::from_secs(10), "4 committed batches", |s| {
        s["journal"]["committed_batches"].as_u64() >= Some(4)
    });
    d.kill9();
    let before = journal_batches(&env);
    assert!(before.len() >= 4);
    let conn = rusqlite::Connection::open(env.journal()).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);

    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    d.wait_for(Duration::from_secs(10), "2 more batches", |s| {
        s["journal"]["committed_batches"].as_u64() >= Some(2)
    });
    assert_eq!(d.terminate(), 0);
    let after = journal_batches(&env);
    assert!(after.len() >= before.len() + 2);
    // Every batch committed before the kill is still there, unchanged in position.
    assert_eq!(&after[..before.len()], &before[..]);
    // seq continues without a gap; sample indices continue after the old end.
    let seqs: Vec<u64> = after.iter().map(|b| b.1).collect();
    assert_eq!(seqs, (0..after.len() as u64).collect::<Vec<_>>());
    let last_before = before.last().unwrap();
    let first_after = &after[before.len()];
    assert_eq!(
        first_after.2,
        last_before.2 + last_before.3,
        "sample index continues"
    );
}

/// kill -9 at random moments (including start-up), again and again, with
/// a fast and a slow device and 0.25 s batches: every batch a reader saw
/// committed before a kill is there afterwards byte for byte, the journal
/// passes `integrity_check` every time, seq is gapless and sample indices
/// contiguous. 30 rounds here; `NEUROEDGE_KILL_LOOP=200` for more
/// (`NEUROEDGE_KILL_SEED` replays a run's moments).
#[test]
fn kill9_loop_never_loses_a_batch_a_reader_saw_committed() {
    let _guard = crate::util::heavy();
    let rounds: usize = std::env::var("NEUROEDGE_KILL_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut rng: u64 = std::env::var("NEUROEDGE_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        });
    eprintln!("kill -9 loop: {rounds} rounds, NEUROEDGE_KILL_SEED={rng}");
    let env = Env::new("[journal]\nbatch_seconds = 0.25");
    env.write(
        "devices/fast.toml",
        &synthetic_device("fast", 32, 2000.0, ""),
    );
    env.write("devices/slow.toml", &synthetic_device("slow", 8, 250.0, ""));
    let mut seen: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for round in 0..rounds {
        // xorshift64: a kill moment between 0.1 and 2.1 s after spawn.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let at = Duration::from_millis(100 + rng % 2000);
        let d = env.spawn();
        std::thread::sleep(at);
        let before = committed_envelopes(&env.journal());
        d.kill9();
        let after = committed_envelopes(&env.journal());
        for (id, envelope) in before {
            seen.insert(id, envelope);
        }
        for (id, envelope) in &seen {
            assert_eq!(
                after.get(id),
                Some(envelope),
                "round {round} (killed {at:?} after spawn): batch {id} changed or vanished"
            );
        }
        if env.journal().exists() {
            let conn = rusqlite::Connection::open(env.journal()).expect("open");
            let check: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .expect("integrity_check");
            assert_eq!(check, "ok", "round {round}");
        }
    }
    let batches = journal_batches(&env);
    assert_seq_gapless(&batches);
    for dev in ["fast", "slow"] {
        assert!(
            batches.iter().filter(|b| b.0 == dev).count() >= rounds / 3,
            "{dev}: too few batches for {rounds} rounds: {}",
            batches.len()
        );
    }
    eprintln!(
        "kill -9 loop: {} batches, {} seen before a kill",
        batches.len(),
        seen.len()
    );
}

/// A damaged page in the journal: the daemon refuses to start and names
/// the next step; `journal salvage` copies what reads into a new journal,
/// lists what was lost, and the daemon continues on it without reusing a
/// seq.
#[test]
fn corrupt_journal_refused_then_salvaged_and_continued() {
    let _guard = crate::util::heavy();
    let env = Env::new("[journal]\nbatch_seconds = 0.25");
    env.write("devices/a.toml", &synthetic_device("a", 32, 1000.0, ""));
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(10));
    d.wait_for(Duration::from_secs(20), "40 committed batches", |s| {
        s["journal"]["committed_batches"].as_u64() >= Some(40)
    });
    assert_eq!(d.terminate(), 0);
    let before = journal_batches(&env);
    let journal = env.journal();
    // Garbage over a page in the middle of the file.
    {
        use std::io::{Seek, SeekFrom, Write};
        let len = std::fs::metadata(&journal).unwrap().len();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&journal)
            .unwrap();
        f.seek(SeekFrom::Start((len / 4096 / 2) * 4096)).unwrap();
        f.write_all(&[0x5A; 4096]).unwrap();
    }
    let mut d = env.spawn();
    let start = Instant::now();
    let code = loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still running on a corrupt journal"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = d.log_text();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("corrupt") && log.contains("journal salvage"),
        "{log}"
    );

    let out_path = env.path().join("salvaged.db");
    let out = env.cmd(&[
        "journal",
        "salvage",
        "--journal",
        journal.to_str().unwrap(),
        "--key",
        env.key().to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let copied = report["batches_copied"].as_u64().unwrap();
    let complete = out.status.code() == Some(0);
    assert!(matches!(out.status.code(), Some(0) | Some(3)), "{report}");
    assert!(copied >= before.len() as u64 / 2, "{report}");
    if !complete {
        assert!(
            copied < before.len() as u64,
            "losses reported but all copied: {report}"
        );
    }
    // Refuses to overwrite.
    let again = env.cmd(&[
        "journal",
        "salvage",
        "--journal",
        journal.to_str().unwrap(),
        "--key",
        env.key().to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));

    // The daemon continues on the salvaged journal.
    std::fs::rename(&journal, env.path().join("damaged.db")).unwrap();
    let _ = std::fs::remove_file(journal.with_extension("db-wal"));
    let _ = std::fs::remove_file(journal.with_extension("db-shm"));
    std::fs::rename(&out_path, &journal).unwrap();
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(10));
    d.wait_for(Duration::from_secs(20), "2 new batches", |s| {
        s["journal"]["committed_batches"].as_u64() >= Some(2)
    });
    assert_eq!(d.terminate(), 0);
    let after = journal_batches(&env);
    let old_max = before.iter().map(|b| b.1).max().unwrap();
    let new: Vec<_> = after.iter().filter(|b| b.1 > old_max).collect();
    assert!(new.len() >= 2, "new batches continue after seq {old_max}");
    assert_eq!(new[0].1, old_max + 1, "seq continues, never reused");
    assert_eq!(after.len() as u64, copied + new.len() as u64);
    let conn = rusqlite::Connection::open(&journal).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let salvage_audits = env.audit("journal_salvage");
    assert_eq!(salvage_audits.len(), 1);
}

#[test]
fn broken_configs_exit_2_naming_file_and_key() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (config extra, device text, expected file, expected key)
        (
            "[journal]\nmax_bites = \"1GiB\"",
            "",
            "neuroedge.toml",
            "journal.max_bites",
        ),
        (
            "[journal]\nbatch_seconds = \"one\"",
            "",
            "neuroedge.toml",
            "journal.batch_seconds",
        ),
        (
            "",
            "id = \"c\"\ndriver = \"openbci-cyton\"\n[connection]\ndaisy = true\n",
            "cyton.toml",
            "connection.port",
        ),
        (
            "",
            "id = \"s2\"\ndriver = \"synthetic\"\n[connection]\nchannels = \"eight\"\n",
            "cyton.toml",
            "connection.channels",
        ),
    ];
    for (cfg, dev, file, key) in cases {
        let env = Env::new(cfg);
        env.write(
            "devices/synthetic.toml",
            &synthetic_device("synthetic", 8, 250.0, ""),
        );
        if !dev.is_empty() {
            env.write("devices/cyton.toml", dev);
        }
        for sub in ["check-config", "run"] {
            let out = env.cmd(&[sub, "--config", env.config().to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{sub}: {err}");
            assert!(err.contains(file), "{sub}: names the file {file}: {err}");
            assert!(
                err.contains(&format!("`{key}`")),
                "{sub}: names the key {key}: {err}"
            );
            assert!(
                err.lines().any(|l| l.contains(file) && l.contains(':')),
                "line:column given: {err}"
            );
        }
    }
    // A missing config file is a usage error too.
    let env = Env::new("");
    let out = env.cmd(&["check-config", "--config", "/nonexistent/neuroedge.toml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn group_readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 8, 250.0, ""),
    );
    let out = env.cmd(&["keygen", "--out", env.key().to_str().unwrap()]);
    assert!(out.status.success());
    std::fs::set_permissions(env.key(), std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = env.cmd(&["run", "--config", env.config().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    let out = env.cmd(&["keygen", "--out", env.key().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "keygen never overwrites");
}

#[test]
fn socket_survives_concurrent_clients_garbage_and_malformed_requests() {
    let _guard = crate::util::heavy();
    use std::io::{BufRead, BufReader, Write};
    let env = Env::new("");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 8, 250.0, ""),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));

    // 100 concurrent clients, all answered.
    let sock = env.socket();
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let req = if i % 2 == 0 {
                    "status\n"
                } else {
                    "{\"cmd\": \"health\"}\n"
                };
                s.write_all(req.as_bytes()).unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).expect("reply");
                let v: Value = serde_json::from_str(&line).expect("json reply");
                assert!(v.get("error").is_none(), "{v}");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }

    // A 1 MiB garbage line gets an error and the connection stays usable.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let garbage: Vec<u8> = (0..1024 * 1024)
        .map(|i| (i * 7 % 251) as u8)
        .filter(|b| *b != b'\n')
        .collect();
    s.write_all(&garbage).unwrap();
    s.write_all(b"\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert!(v["error"].as_str().unwrap().contains("too long"), "{v}");
    for (req, bad) in [
        ("bogus\n", true),
        ("{\"cmd\": \n", true),
        ("{\"nocmd\": 1}\n", true),
        ("\u{00ff}\u{00fe}\n", true),
        ("journal\n", false),
    ] {
        s.write_all(req.as_bytes()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v.get("error").is_some(), bad, "{req:?} -> {v}");
        if bad {
            assert!(v["hint"].is_string());
        }
    }
    // Non-UTF-8 bytes.
    s.write_all(&[0xff, 0xfe, 0xfd, b'\n']).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("error"));
    // The daemon still streams.
    let st = d.status().unwrap();
    assert_eq!(st["devices"][0]["state"], "streaming");
    // The status CLI prints a readable summary and raw JSON.
    let out = env.cmd(&["status", "--socket", sock.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("synthetic") && text.contains("streaming"),
        "{text}"
    );
    let out = env.cmd(&[
        "status",
        "--config",
        env.config().to_str().unwrap(),
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(v["devices"][0]["id"], "synthetic");
    assert_eq!(d.terminate(), 0);
}

/// 300 connections from one uid that never finish a request cannot lock
/// out a technician (per-uid limit, then the idle timeout closes them); a
/// peer that never reads its replies is dropped, not buffered for.
#[test]
fn idle_hostile_and_non_reading_clients_cannot_lock_out_status() {
    let _guard = crate::util::heavy();
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to connect as another uid (CI runs as root)");
        return;
    }
    let env = Env::new(
        "[status]\nsocket_mode = \"0666\"\nidle_timeout_s = 3.0\nmax_connections_per_uid = 16\n",
    );
    env.write("devices/a.toml", &synthetic_device("a", 2, 250.0, ""));
    use std::os::unix::fs::PermissionsExt;
    let open = |dir: &std::path::Path| {
        let _ = std::fs::create_dir_all(dir);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    open(env.path());
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(10));
    open(d.socket.parent().expect("socket dir"));

    // `nobody` opens 300 connections that never send a newline.
    let py = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a system python3 that uid 65534 can run");
    let mut abuser = std::process::Command::new(py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/socket_abuse.py"
        ))
        .arg(&d.socket)
        .args(["300", "15"])
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the abuser as nobody");
    let mut lines = BufReader::new(abuser.stdout.take().expect("stdout")).lines();
    let mut next = || -> Value {
        let l = lines.next().expect("a line from the abuser").expect("read");
        serde_json::from_str(&l).expect("json")
    };
    let held = next();
    assert_eq!(held["open"], 16, "{held}");
    assert_eq!(held["refused"], 284, "{held}");

    // The technician (another uid) is answered at once.
    let t0 = Instant::now();
    let out = env.cmd(&["status", "--json", "--socket", d.socket.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // The idle timeout closes the 16 held connections.
    let closed = next();
    assert_eq!(closed["closed"], 16, "{closed}");
    assert_eq!(closed["still_open"], 0, "{closed}");
    assert!(closed["seconds"].as_f64() < Some(6.0), "{closed}");
    assert!(abuser.wait().expect("abuser exits").success());

    // A peer that sends 20 000 requests and reads nothing: the daemon
    // writes what the socket holds, then drops the connection.
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let flood = "status\n".repeat(20_000);
    let _ = s.write_all(flood.as_bytes());
    std::thread::sleep(Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    // Closed: end of stream, or a reset (it closed with our requests unread).
    match s.read_to_end(&mut got) {
        Ok(_) => {
            let replies = got.iter().filter(|b| **b == b'\n').count();
            assert!(replies < 20_000, "{replies} replies: not dropped");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // Still serving, still streaming.
    let st = d.status().expect("status after the abuse");
    assert_eq!(st["devices"][0]["state"], "streaming");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn stale_socket_is_replaced_and_second_daemon_refused() {
    let env = Env::new("");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 4, 250.0, ""),
    );
    std::fs::create_dir_all(env.socket().parent().unwrap()).unwrap();
    // A stale socket file left by a crash.
    drop(std::os::unix::net::UnixListener::bind(env.socket()).unwrap());
    assert!(env.socket().exists());
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "socket_mode applied");
    // A second daemon on the same socket refuses to start and leaves the first alone.
    let out = env.cmd(&["run", "--config", env.config().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.status().unwrap()["devices"][0]["state"], "streaming");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn quota_evicts_oldest_counted_and_audited() {
    // 64 channels x 2 kHz: about 0.5-1 MB per sealed second; quota 2 MiB.
    let env = Env::new("[journal]\nmax_bytes = \"2MiB\"\nwhen_full = \"drop_oldest\"");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("big", 64, 2000.0, ""),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    let s = d.wait_for(Duration::from_secs(30), "evictions", |s| {
        s["journal"]["evicted_batches"].as_u64() >= Some(2)
    });
    assert!(s["journal"]["total_bytes"].as_u64() <= Some(2 * 1024 * 1024));
    let log_path = d.log.clone();
    assert_eq!(d.terminate(), 0);
    let batches = journal_batches(&env);
    // Remaining rows are the newest; seq is contiguous above the evicted ones.
    let seqs: Vec<u64> = batches.iter().map(|b| b.1).collect();
    assert!(seqs[0] > 0, "oldest evicted");
    assert_eq!(
        seqs,
        (seqs[0]..seqs[0] + seqs.len() as u64).collect::<Vec<_>>()
    );
    let conn = rusqlite::Connection::open(env.journal()).unwrap();
    let evicted: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE event = 'evicted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(evicted as u64, seqs[0], "every evicted batch audited");
    // The log names the first eviction and sums up the rest (at shutdown,
    // as the run is shorter than the summary's minute), one line each.
    let log = std::fs::read_to_string(log_path).unwrap();
    let lines = |what: &str| log.lines().filter(|l| l.contains(what)).collect::<Vec<_>>();
    assert_eq!(lines("UNSENT batch evicted for space").len(), 1, "{log}");
    let summary = lines("more UNSENT batches evicted for space");
    assert_eq!(summary.len(), 1, "{log}");
    assert!(
        summary[0].contains(&format!("batches={}", evicted - 1)),
        "{}",
        summary[0]
    );
}

/// A new journal's pages follow the rate the device files declare (64 KiB
/// from a million channel-samples a second, else 4 KiB); a page size set
/// in the config holds, and a fast rig on small pages gets one hint in the
/// log. An existing journal keeps its pages whatever the config says.
#[test]
fn journal_pages_follow_the_declared_rate_unless_set() {
    let page_size = |env: &Env| -> i64 {
        rusqlite::Connection::open(env.journal())
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    const HINT: &str = "to a journal of small pages";
    // (config extra, channels, rate, page size, hint lines)
    let cases: &[(&str, usize, f64, i64, usize)] = &[
        ("", 8, 250.0, 4096, 0),
        ("", 64, 16000.0, 65536, 0),
        ("[journal]\npage_size_kib = 4", 64, 16000.0, 4096, 1),
        ("[journal]\npage_size_kib = 16", 8, 250.0, 16384, 0),
    ];
    for &(extra, channels, rate, want, hints) in cases {
        let env = Env::new(extra);
        env.write(
            "devices/synthetic.toml",
            &synthetic_device("rig", channels, rate, ""),
        );
        let d = env.spawn();
        d.wait_streaming(Duration::from_secs(5));
        d.wait_for(Duration::from_secs(20), "two batches", |s| {
            s["journal"]["committed_batches"].as_u64() >= Some(2)
        });
        let log_path = d.log.clone();
        assert_eq!(d.terminate(), 0);
        let case = format!("{extra:?}, {channels} x {rate} Hz");
        assert_eq!(page_size(&env), want, "{case}");
        let log = std::fs::read_to_string(log_path).unwrap();
        let opened = log
            .lines()
            .find(|l| l.contains("journal open and checked"))
            .unwrap_or_else(|| panic!("{case}: {log}"));
        assert!(
            opened.contains(&format!("page_kib={}", want / 1024)),
            "{case}: {opened}"
        );
        assert_eq!(
            log.lines().filter(|l| l.contains(HINT)).count(),
            hints,
            "{case}: {log}"
        );
        if want == 65536 {
            // The device slows down and the config asks for small pages:
            // the journal keeps its 64 KiB pages.
            let config = std::fs::read_to_string(env.path().join("neuroedge.toml")).unwrap();
            env.write(
                "neuroedge.toml",
                &format!("{config}[journal]\npage_size_kib = 4\n"),
            );
            env.write(
                "devices/synthetic.toml",
                &synthetic_device("rig", 8, 250.0, ""),
            );
            let d = env.spawn();
            d.wait_streaming(Duration::from_secs(5));
            assert_eq!(d.terminate(), 0);
            assert_eq!(page_size(&env), 65536, "{case}, reopened");
        }
    }
}

/// A real full disk: the journal on a small tmpfs. Needs root (CI runs as root).
#[test]
fn full_disk_degrades_then_recovers_without_losing_batches() {
    let env = Env::new("[journal]\npath = \"disk/journal.db\"\nbatch_seconds = 0.5");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("big", 64, 2000.0, ""),
    );
    let disk = env.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3M", "tmpfs"])
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
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(disk.clone());

    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    let s = d.wait_for(
        Duration::from_secs(30),
        "journal degraded (disk full)",
        |s| s["journal"]["state"] == "degraded",
    );
    assert!(s["journal"]["last_error"].as_str().is_some());
    let h = d.request("health").unwrap();
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["checks"]["journal"]["status"], "degraded");
    assert_eq!(
        s["devices"][0]["state"], "streaming",
        "acquisition unaffected"
    );
    std::thread::sleep(Duration::from_secs(2));
    // Space returns.
    let ok = std::process::Command::new("mount")
        .args(["-o", "remount,size=256M"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(ok.success());
    let start = Instant::now();
    d.wait_for(Duration::from_secs(40), "journal recovered", |s| {
        s["journal"]["state"] == "ok" && s["journal"]["queued_batches"].as_u64() <= Some(2)
    });
    let recovered_in = start.elapsed();
    let h = d.request("health").unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    let s = d.status().unwrap();
    let reported = s["devices"][0]["samples_total"].as_u64().unwrap();
    let dropped = s["devices"][0]["dropped_samples"].as_u64().unwrap();
    assert_eq!(d.terminate(), 0);
    let journal = disk.join("journal.db");
    let batches = journal_batches_at(&env, &journal);
    assert_seq_gapless(&batches);
    let journaled: u64 = batches.iter().map(|b| b.3).sum();
    assert_eq!(dropped, 0, "batches were held in memory, not dropped");
    assert!(
        journaled as f64 >= 0.99 * reported as f64,
        "{journaled} of {reported} (recovered in {recovered_in:?})"
    );
    let conn = rusqlite::Connection::open(&journal).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE event = 'journal_recovered'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(n >= 1);
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn journal_cli_lists_decrypts_and_stats() {
    let env = Env::new("[journal]\nbatch_seconds = 0.5");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 3, 100.0, ""),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    d.wait_for(Duration::from_secs(10), "2 batches", |s| {
        s["journal"]["committed_batches"].as_u64() >= Some(2)
    });
    assert_eq!(d.terminate(), 0);
    let cfg = env.config();
    let cfg = cfg.to_str().unwrap();
    let out = env.cmd(&["journal", "--config", cfg, "list", "--json"]);
    assert!(out.status.success());
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = rows[0]["batch_id"].as_str().unwrap().to_string();
    let out = env.cmd(&["journal", "--config", cfg, "decrypt", "--batch-id", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["header"]["seq"], 0);
    assert_eq!(b["raw"].as_array().unwrap().len(), 50);
    assert_eq!(b["raw"][0].as_array().unwrap().len(), 3);
    let out = env.cmd(&[
        "journal",
        "--config",
        cfg,
        "decrypt",
        "--device",
        "synthetic",
        "--seq",
        "1",
    ]);
    assert!(out.status.success());
    let out = env.cmd(&["journal", "--config", cfg, "stats", "--json"]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["devices"][0]["first_seq"], 0);
    // A wrong key is reported, not a crash.
    let other = env.path().join("other.key");
    env.cmd(&["keygen", "--out", other.to_str().unwrap()]);
    let out = env.cmd(&[
        "journal",
        "--config",
        cfg,
        "--key",
        other.to_str().unwrap(),
        "verify",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no key with id"));
}

#[test]
fn env_override_and_journal_opened_by_library() {
    // NEUROEDGE_<SECTION>_<KEY> overrides the file (here: the site id).
    let env = Env::new("");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 2, 250.0, ""),
    );
    let out = std::process::Command::new(crate::util::BIN)
        .args(["check-config", "--config"])
        .arg(env.config())
        .env("NEUROEDGE_JOURNAL_BATCH_SECONDS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch_seconds"));
    let j = Journal::open(&env.journal(), neuroedge::config::SyncMode::Full).unwrap();
    assert!(j.cursors().unwrap().is_empty());
    let _ = Instant::now();
}

#[test]
fn filtered_samples_and_features_equal_scipy_end_to_end() {
    // The journal stores the filtered signal (what is checked against SciPy).
    let env = Env::new("[journal]\nbatch_seconds = 0.4\nstore = [\"raw\", \"filtered\"]");
    // Odd channel count, band-pass + notch with a harmonic, batches of 0.4 s
    // so filter state and feature windows cross batch boundaries.
    env.write(
        "devices/synthetic.toml",
        &synthetic_device(
            "filtered",
            5,
            250.0,
            "[filters]\nhighpass_hz = 1.0\nlowpass_hz = 45.0\norder = 4\nnotch_hz = 50.0\nnotch_harmonics = 2\n",
        ),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    let s = d.wait_for(
        Duration::from_secs(15),
        "band power and quality in status",
        |s| {
            s["devices"][0]["band_power"]["alpha"]
                .as_array()
                .is_some_and(|a| a.len() == 5)
                && s["devices"][0]["quality"]
                    .as_array()
                    .is_some_and(|q| q.len() == 5)
                && s["journal"]["committed_batches"].as_u64() >= Some(8)
        },
    );
    let q = &s["devices"][0]["quality"][0];
    assert!(
        q["state"].is_string() && q["rms_uv"].is_number() && q["line_noise_ratio"].is_number(),
        "{q}"
    );
    assert_eq!(d.terminate(), 0);
    let out = std::process::Command::new(crate::util::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/check_filtered.py"
        ))
        .arg(env.journal())
        .arg(env.key())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scipy check failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let r = &v["devices"]["filtered"];
    assert_eq!(r["sections"], 6, "4 band-pass sections + 2 notches");
    assert!(r["feature_windows"].as_u64() >= Some(4), "{r}");
}

#[test]
fn journal_export_writes_every_sample_as_csv() {
    let env = Env::new("[journal]\nbatch_seconds = 0.5");
    env.write(
        "devices/synthetic.toml",
        &synthetic_device("synthetic", 3, 100.0, ""),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(700));
    let reply = d
        .request("mark synthetic eyes, closed")
        .expect("mark reply");
    assert!(reply.get("error").is_none(), "{reply}");
    d.wait_for(Duration::from_secs(10), "3 batches", |s| {
        s["journal"]["committed_batches"].as_u64() >= Some(3)
    });
    assert_eq!(d.terminate(), 0);
    let cfg = env.config();
    let cfg = cfg.to_str().expect("utf-8");
    let csv = env.path().join("export.csv");
    let csv_s = csv.to_str().expect("utf-8");
    let export = |args: &[&str]| {
        let mut all = vec!["journal", "--config", cfg, "export"];
        all.extend_from_slice(args);
        env.cmd(&all)
    };
    let out = export(&["--device", "synthetic", "--out", csv_s]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("exported") && stderr.contains("1 markers"),
        "{stderr}"
    );

    // Every journaled sample, in order, values exact, the marker on a row.
    let batches = env.device_batches("synthetic");
    let text = std::fs::read_to_string(&csv).expect("csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("sample,t_unix,ch1,ch2,ch3,marker"));
    let mut rows = lines.map(|l| l.to_string());
    let mut index = 0u64;
    let mut marked = 0;
    for (_, b) in &batches {
        for (k, frame) in b.raw.chunks(3).enumerate() {
            let row = rows.next().expect("a row per sample");
            let (fields, marker) = match row.split_once(",\"") {
                Some((f, m)) => (f.to_string(), m.trim_end_matches('"').to_string()),
                None => {
                    let (f, m) = row.rsplit_once(',').expect("marker column");
                    (f.to_string(), m.to_string())
                }
            };
            let f: Vec<&str> = fields.split(',').collect();
            assert_eq!(f[0].parse::<u64>().ok(), Some(index), "{row}");
            let t: f64 = f[1].parse().expect("t");
            assert!((t - b.timestamps[k]).abs() < 1e-6, "{row}");
            for (c, v) in frame.iter().enumerate() {
                assert_eq!(f[2 + c].parse::<f32>().ok(), Some(*v), "{row}");
            }
            if !marker.is_empty() {
                assert_eq!(marker, "eyes, closed");
                marked += 1;
            }
            index += 1;
        }
    }
    assert!(rows.next().is_none(), "no extra rows");
    assert_eq!(marked, 1);

    // Never overwrites (a usage error, contract §9); an unknown device is
    // a clear error.
    let out = export(&["--device", "synthetic", "--out", csv_s]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwrites"));
    let out = export(&["--device", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no batches of device \"nope\""));
    // The filtered signal on request.
    let out = export(&["--device", "synthetic", "--filtered", "--to-seq", "0"]);
    assert!(out.status.success());
    let first = &batches[0].1;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1 + first.n_samples());
    let row1: Vec<&str> = text.lines().nth(1).expect("row").split(',').collect();
    assert_eq!(row1[2].parse::<f32>().ok(), Some(first.filtered[0]));
}
