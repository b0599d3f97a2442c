//! Injected I/O faults on the journal: the real daemon under `strace
//! --inject` (fsync failing with EIO, pwrite64 with ENOSPC and EIO, at an
//! early, a middle and a late call). The rules: a batch whose commit failed
//! is never reported committed and is retried; once the fault clears the
//! journal passes `integrity_check` and `journal verify`, and nothing a
//! reader saw committed before the fault is lost or changed.

use crate::util::{committed_envelopes, synthetic_device, Daemon, Env};
use neuroedge::crypto::{load_key_file, Keyring};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// SIGTERM to the daemon itself (strace's child), then wait for strace.
fn stop_traced(mut d: Daemon) -> i32 {
    let tracer = d.child.id();
    let children = std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"))
        .unwrap_or_default();
    let daemon: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the daemon under strace");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGTERM,
    );
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = d.child.try_wait() {
            return st.code().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not stopped 30 s after SIGTERM; log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Per (device): seq gapless from 0, sample indices contiguous.
fn assert_continuous(env: &Env) {
    let keys = Keyring::new(load_key_file(&env.key()).expect("key"));
    let mut rows: Vec<(String, u64, u64, u64)> = committed_envelopes(&env.journal())
        .values()
        .map(|e| {
            let (h, _) = neuroedge::batch::open(&keys, e).expect("every batch opens");
            (h.device_id, h.seq, h.first_sample, h.n_samples)
        })
        .collect();
    rows.sort();
    let mut next = (0u64, 0u64);
    for (_, seq, first, n) in &rows {
        assert_eq!((*seq, *first), next, "seq gapless, samples contiguous");
        next = (seq + 1, first + n);
    }
}

fn run_with_fault(syscall: &str, error: &str, when: &str) {
    let env = Env::new("[journal]\nbatch_seconds = 0.1\n");
    env.write("devices/a.toml", &synthetic_device("a", 8, 250.0, ""));
    let inject = format!("inject={syscall}:error={error}:when={when}");
    let d = env.spawn_wrapped(
        &[
            "strace",
            "-f",
            "-qq",
            "--seccomp-bpf",
            "-o",
            "/dev/null",
            "-e",
            &format!("trace={syscall}"),
            "-e",
            &inject,
        ],
        &[],
    );
    let what = format!("{syscall} {error} at call {when}");
    let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
    let start = Instant::now();
    let mut hit = false;
    let mut last: Option<Value> = None;
    // Until the fault has hit, cleared, and 20 more batches committed.
    let mut committed_at_recovery: Option<u64> = None;
    while start.elapsed() < Duration::from_secs(40) {
        seen.extend(committed_envelopes(&env.journal()));
        if let Some(s) = d.status() {
            let j = &s["journal"];
            hit |= j["write_errors"].as_u64() > Some(0);
            let n = j["committed_batches"].as_u64().unwrap_or(0);
            if hit && j["state"] == "ok" && committed_at_recovery.is_none() {
                committed_at_recovery = Some(n);
            }
            let done = committed_at_recovery.is_some_and(|c| n >= c + 20);
            last = Some(s);
            if done {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        hit && committed_at_recovery.is_some(),
        "{what}: the fault did not hit and clear; last status {last:?}\nlog:\n{}",
        d.log_text()
    );
    let log = d.log.clone();
    assert_eq!(stop_traced(d), 0, "{what}");
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(text.contains("journal write failed"), "{what}: {text}");
    assert!(
        !text.contains("journal_lost_commits") && !text.contains("missing after a failed sync"),
        "{what}: {text}"
    );

    let now = committed_envelopes(&env.journal());
    for (id, envelope) in &seen {
        assert_eq!(
            now.get(id),
            Some(envelope),
            "{what}: batch {id} lost or changed"
        );
    }
    let c = rusqlite::Connection::open(env.journal()).expect("open");
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok", "{what}");
    drop(c);
    let out = env.cmd(&[
        "journal",
        "verify",
        "--journal",
        env.journal().to_str().unwrap(),
        "--key",
        env.key().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{what}: verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_continuous(&env);
}

/// strace is there (CI installs it: missing there is a failure).
fn strace_available() -> bool {
    let ok = std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "strace is missing (CI installs it)"
    );
    ok
}

#[test]
fn fsync_eio_early_middle_late() {
    let _guard = crate::util::heavy();
    if !strace_available() {
        return;
    }
    // Opening a new journal takes the first few syncs (a failure there is
    // a clear start-up error); then one sync per commit, ten a second.
    for when in ["15", "40", "80..81"] {
        run_with_fault("fsync", "EIO", when);
    }
}

#[test]
fn pwrite_enospc_and_eio() {
    let _guard = crate::util::heavy();
    if !strace_available() {
        return;
    }
    // Each retry (backoff from 0.25 s) meets the next failing call.
    run_with_fault("pwrite64", "ENOSPC", "60..62");
    run_with_fault("pwrite64", "EIO", "200");
    run_with_fault("pwrite64", "EIO", "400..401");
}
