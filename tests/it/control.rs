//! Operations through the real binary: systemd notifications and the
//! watchdog, live reload, and who may change things on the socket.

use crate::util::{device, python, synthetic_device, Env, BIN};
use neuroedge::control::report::DeviceState;
use serde_json::Value;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

fn dump_batches(env: &Env) -> Vec<Value> {
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/dump_batches.py"
        ))
        .arg(env.journal())
        .arg(env.key())
        .output()
        .expect("run dump_batches.py");
    assert!(
        out.status.success(),
        "dump_batches.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Messages received on the notify socket, with their arrival time.
fn drain(sock: &UnixDatagram, into: &mut Vec<(Instant, String)>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        into.push((
            Instant::now(),
            String::from_utf8_lossy(&buf[..n]).to_string(),
        ));
    }
}

#[test]
fn notify_ready_then_watchdog_which_stops_while_the_journal_is_stuck() {
    let env = Env::new("");
    env.write("devices/a.toml", &synthetic_device("a", 4, 250.0, ""));
    let sock_path = env.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let d = env.spawn_with_env(&[
        ("NOTIFY_SOCKET", sock_path.to_str().expect("utf-8 path")),
        ("WATCHDOG_USEC", "2000000"),
    ]);
    let mut msgs = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15)
        && !msgs
            .iter()
            .any(|(_, m): &(Instant, String)| m.contains("READY=1"))
    {
        drain(&sock, &mut msgs);
    }
    assert!(
        msgs.iter().any(|(_, m)| m.contains("READY=1")),
        "no READY=1 in {msgs:?}; log:\n{}",
        d.log_text()
    );
    // READY comes only once the journal is open: the file exists by now.
    assert!(env.journal().exists());
    d.wait_streaming(Duration::from_secs(5));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        drain(&sock, &mut msgs);
    }
    let pings = |msgs: &[(Instant, String)], from: Instant, to: Instant| {
        msgs.iter()
            .filter(|(t, m)| *t >= from && *t < to && m.contains("WATCHDOG=1"))
            .count()
    };
    let healthy = pings(&msgs, t0, Instant::now());
    assert!(
        healthy >= 3,
        "expected a ping each second while healthy, got {healthy}: {msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|(_, m)| m.contains("STATUS=") && m.contains("1/1 devices streaming")),
        "{msgs:?}"
    );

    // Another process takes the journal's write lock: the writer cannot
    // commit and blocks in SQLite's busy wait — the pipeline is stuck.
    let locker = Command::new(python())
        .arg("-c")
        .arg(
            "import sqlite3,sys,time\n\
             db=sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             db.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             time.sleep(float(sys.argv[2]))\n\
             db.execute('COMMIT')\n",
        )
        .arg(env.journal())
        .arg("8")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start locker");
    let locked_at = Instant::now();
    let mut locker = locker;
    let stall_from = locked_at + Duration::from_secs(3);
    let stall_to = locked_at + Duration::from_secs(7);
    while locked_at.elapsed() < Duration::from_secs(14) {
        drain(&sock, &mut msgs);
    }
    let _ = locker.wait();
    let during = pings(&msgs, stall_from, stall_to);
    assert_eq!(
        during,
        0,
        "watchdog pinged while the journal was stuck; log:\n{}",
        d.log_text()
    );
    let after = pings(&msgs, locked_at + Duration::from_secs(10), Instant::now());
    assert!(
        after >= 2,
        "watchdog did not resume after the lock was released ({after}); log:\n{}",
        d.log_text()
    );
    assert!(d.log_text().contains("withholding the systemd watchdog"));
    // Nothing was lost meanwhile: the writer caught up.
    assert_eq!(d.terminate(), 0);
    let batches = dump_batches(&env);
    let mut end = 0u64;
    for b in &batches {
        assert_eq!(b["first_sample"].as_u64(), Some(end), "{b}");
        assert!(b["gaps"].as_array().is_some_and(|g| g.is_empty()), "{b}");
        end += b["n_samples"].as_u64().unwrap_or(0);
    }
    assert!(end > 250 * 15, "{end} samples");
}

/// Sample `id`'s count every 20 ms while `during` runs; return the longest
/// time the count stood still.
fn longest_pause(d: &crate::util::Daemon, id: &str, during: impl FnOnce()) -> Duration {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let socket = d.socket.clone();
    let id = id.to_string();
    let stop2 = stop.clone();
    let watcher = std::thread::spawn(move || {
        let mut last = (Instant::now(), 0u64);
        let mut worst = Duration::ZERO;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(r) = neuroedge::control::client::status(&socket) {
                if let Some(n) = r.device(&id).map(|d| d.samples_total) {
                    let now = Instant::now();
                    if n != last.1 {
                        worst = worst.max(now - last.0);
                        last = (now, n);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        worst.max(last.0.elapsed())
    });
    during();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().expect("watcher")
}

#[test]
fn reload_adds_removes_and_refuses_broken_edits() {
    let env = Env::new("");
    env.write("devices/a.toml", &synthetic_device("a", 4, 250.0, ""));
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(10));

    // Add b with the socket's reload: streaming within 2 s; a never pauses
    // (blocks of 100 ms reach the status every 0.1 s; allow scheduling).
    env.write("devices/b.toml", &synthetic_device("b", 2, 500.0, ""));
    let mut reply = Value::Null;
    let pause = longest_pause(&d, "a", || {
        reply = d.request("reload").expect("reply");
    });
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["devices"]["added"], serde_json::json!(["b"]));
    assert_eq!(reply["devices"]["unchanged"], serde_json::json!(["a"]));
    let t = Instant::now();
    let added_at = t;
    d.wait_report(Duration::from_secs(2), "b streaming", |s| {
        s.device("b")
            .is_some_and(|b| b.state == DeviceState::Streaming && b.samples_total > 0)
    });
    assert!(added_at.elapsed() <= Duration::from_secs(2));
    assert!(pause < Duration::from_millis(600), "a paused {pause:?}");

    // A broken edit of b: refused, reported, the old b keeps running.
    env.write("devices/b.toml", "id = \"b\"\ndriver = \"synthetic\"\nenabled = true\n[connection]\nsample_rate = \"fast\"\n");
    let reply = d.request("reload").expect("reply");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{reply}"
    );
    let problems = reply["problems"].to_string();
    assert!(
        problems.contains("b.toml") && problems.contains("sample_rate"),
        "{problems}"
    );
    let b_before = device(&d.report().expect("status"), "b").samples_total;
    std::thread::sleep(Duration::from_millis(500));
    let s = d.report().expect("status");
    assert_eq!(device(&s, "b").state, DeviceState::Streaming);
    assert!(device(&s, "b").samples_total > b_before);
    // The CLI says the same, exit 1.
    let out = Command::new(BIN)
        .args(["reload", "--socket"])
        .arg(&d.socket)
        .output()
        .expect("cli");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sample_rate"));

    // Remove b by SIGHUP: a's count never pauses; b disappears.
    std::fs::remove_file(env.path().join("devices/b.toml")).expect("rm b");
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    let pause = longest_pause(&d, "a", || {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    });
    assert!(pause < Duration::from_millis(600), "a paused {pause:?}");
    d.wait_report(Duration::from_secs(3), "b removed", |s| {
        s.device("b").is_none()
    });
    // Change a (4 -> 3 channels): restarted, its sample index continues.
    env.write("devices/a.toml", &synthetic_device("a", 3, 250.0, ""));
    let reply = d.request("reload").expect("reply");
    assert_eq!(
        reply["devices"]["changed"],
        serde_json::json!(["a"]),
        "{reply}"
    );
    d.wait_report(Duration::from_secs(3), "a with 3 channels", |s| {
        s.device("a")
            .is_some_and(|a| a.channels == 3 && a.samples_total > 0)
    });
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(d.terminate(), 0);
    // Every device's sample index is contiguous across the restarts.
    let mut ends = std::collections::HashMap::new();
    for b in dump_batches(&env) {
        let id = b["device_id"].as_str().unwrap_or("").to_string();
        let end = ends.entry(id).or_insert(0u64);
        assert_eq!(b["first_sample"].as_u64(), Some(*end), "{b}");
        *end += b["n_samples"].as_u64().unwrap_or(0);
    }
    assert!(ends.contains_key("a") && ends.contains_key("b"));
    let audit = Command::new("sqlite3")
        .arg(env.journal())
        .arg("SELECT count(*) FROM audit WHERE event IN ('reload','reload_refused')")
        .output();
    if let Ok(o) = audit {
        if o.status.success() {
            // add, refused (socket), refused (CLI), remove, change.
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "5");
        }
    }
}

#[test]
fn mark_only_from_authorised_peers_and_lands_in_the_next_batch() {
    // Socket open to everyone, so an unprivileged peer reaches the daemon
    // and its uid (SO_PEERCRED) decides.
    let env = Env::new("[status]\nsocket_mode = \"0666\"\n");
    env.write("devices/a.toml", &synthetic_device("a", 2, 250.0, ""));
    use std::os::unix::fs::PermissionsExt;
    for dir in [env.path().to_path_buf(), env.path().join("var")] {
        let _ = std::fs::create_dir_all(&dir);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(10));
    let run_dir = d.socket.parent().expect("socket dir").to_path_buf();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let is_root = nix::unistd::geteuid().is_root();
    if is_root {
        // `nobody` asks: refused clearly, exit 1, nothing journaled.
        use std::os::unix::process::CommandExt;
        let out = Command::new(BIN)
            .args(["mark", "a", "from-nobody", "--socket"])
            .arg(&d.socket)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run as nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("permission denied") && err.contains("65534"),
            "{err}"
        );
        for cmd in ["flush", "reload"] {
            let out = Command::new(BIN)
                .args([cmd, "--socket"])
                .arg(&d.socket)
                .uid(65534)
                .gid(65534)
                .output()
                .expect("run as nobody");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("permission denied"),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Reading stays open to everyone who can reach the socket.
        let out = Command::new(BIN)
            .args(["status", "--json", "--socket"])
            .arg(&d.socket)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("status as nobody");
        assert!(out.status.success());
    } else {
        eprintln!("not root: the unauthorised-peer half of this test needs root to switch uid");
    }
    // The daemon's own uid may: through the CLI.
    let before = Instant::now();
    let out = Command::new(BIN)
        .args(["mark", "a", "eyes", "closed", "--socket"])
        .arg(&d.socket)
        .output()
        .expect("mark");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = d
        .request(r#"{"cmd": "mark", "device": "nope", "text": "x"}"#)
        .expect("reply");
    assert!(
        reply["error"].as_str().is_some_and(|e| e.contains("nope")),
        "{reply}"
    );
    let _ = before;
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.terminate(), 0);
    let batches = dump_batches(&env);
    let with: Vec<&Value> = batches
        .iter()
        .filter(|b| b["markers"].as_array().is_some_and(|m| !m.is_empty()))
        .collect();
    assert_eq!(with.len(), 1, "{batches:?}");
    let b = with[0];
    let m = &b["markers"][0];
    assert_eq!(m["value"], "eyes closed");
    assert!(!batches
        .iter()
        .any(|b| b["markers"].to_string().contains("from-nobody")));
    // The marker's time falls inside the batch that carries it (or just
    // before its first sample: the batch being filled when it came).
    let t = m["t"].as_f64().expect("t");
    let (t0, t1) = (
        b["t_start"].as_f64().expect("t_start"),
        b["t_end"].as_f64().expect("t_end"),
    );
    assert!(t <= t1 + 1e-6, "marker {t} after batch end {t1}");
    assert!(t >= t0 - 1.0, "marker {t} long before batch start {t0}");
}

/// A notify socket that nobody reads (its queue holds 10 datagrams) must
/// not hang the daemon: notifications are dropped and counted, SIGTERM
/// still stops it cleanly and promptly.
#[test]
fn sigterm_stops_promptly_when_the_notify_socket_is_never_read() {
    let env = Env::new("");
    env.write("devices/a.toml", &synthetic_device("a", 4, 250.0, ""));
    let sock_path = env.path().join("notify.sock");
    let _never_read = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let d = env.spawn_with_env(&[
        ("NOTIFY_SOCKET", sock_path.to_str().expect("utf-8 path")),
        ("WATCHDOG_USEC", "1000000"),
    ]);
    d.wait_streaming(Duration::from_secs(10));
    // Four pings a second: the queue is full after ~3 s; wait for drops.
    let report = d.wait_report(Duration::from_secs(20), "dropped notifications", |r| {
        r.systemd.notify_dropped >= 8
    });
    assert!(
        report.systemd.notify_sent >= 1 && report.systemd.notify_sent <= 12,
        "{:?}",
        report.systemd
    );
    let status = d
        .request(r#"{"cmd":"status"}"#)
        .expect("the socket still answers");
    assert!(status["systemd"]["notify_dropped"].as_u64() >= Some(8));
    let t0 = Instant::now();
    let log = d.log.clone();
    let code = d.terminate();
    let took = t0.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "{text}");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    assert!(text.contains("neuroedge stopped cleanly"), "{text}");
}
