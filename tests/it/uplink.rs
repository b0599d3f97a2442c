//! The HTTPS uplink end to end: the real daemon against a real HTTPS
//! backend (tests/it/uplink_server.rs) with a CA made in the test, and faults
//! injected by the server.

use crate::uplink_server::{make_pki, Action, Pki, ReqInfo, TestServer};
use crate::util::{synthetic_device, Env};
use neuroedge::crypto::{load_key_file, Keyring};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const TOKEN: &str = "tok-3f9a7c1e5b2d4a6f8e0c";

/// An Env with the uplink pointed at `server`, its CA in `ca.pem`, the token
/// in `token`, and the given extra config.
fn uplink_env(pki: &Pki, server: &TestServer, extra: &str) -> Env {
    let env = Env::new(&format!(
        "[uplink]\nenabled = true\nendpoint = \"{}\"\ntoken_file = \"token\"\nca_file = \"ca.pem\"\n\
         timeout = \"1s\"\nmax_in_flight = 4\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n{extra}",
        server.endpoint()
    ));
    env.write("token", &format!("{TOKEN}\n"));
    env.write("ca.pem", &pki.ca_pem);
    env
}

fn wait_journal_row(env: &Env, device: &str, seq: u64, within: Duration) -> String {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok(c) = rusqlite::Connection::open_with_flags(
            env.journal(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) {
            if let Ok(id) = c.query_row(
                "SELECT batch_id FROM batches WHERE device_id = ?1 AND seq = ?2",
                rusqlite::params![device, seq as i64],
                |r| r.get::<_, String>(0),
            ) {
                return id;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no batch {device}/{seq} in the journal within {within:?}");
}

struct Row {
    batch_id: String,
    device: String,
    seq: u64,
    n_samples: u64,
    first_sample: u64,
    state: String,
    attempts: i64,
    envelope: Vec<u8>,
}

fn journal_rows(env: &Env) -> Vec<Row> {
    let c = rusqlite::Connection::open_with_flags(
        env.journal(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("journal");
    let mut st = c
        .prepare("SELECT batch_id, device_id, seq, n_samples, first_sample, state, attempts, envelope FROM batches ORDER BY device_id, seq")
        .expect("prepare");
    st.query_map([], |r| {
        Ok(Row {
            batch_id: r.get(0)?,
            device: r.get(1)?,
            seq: r.get::<_, i64>(2)? as u64,
            n_samples: r.get::<_, i64>(3)? as u64,
            first_sample: r.get::<_, i64>(4)? as u64,
            state: r.get(5)?,
            attempts: r.get(6)?,
            envelope: r.get(7)?,
        })
    })
    .expect("query")
    .map(|r| r.expect("row"))
    .collect()
}

/// The rows left pending are only each device's newest ones (sealed after
/// the last upload or at shutdown), and every finished row's seq is below them.
fn assert_only_tail_pending(rows: &[Row], max_tail: usize) {
    let mut by_dev: HashMap<&str, Vec<&Row>> = HashMap::new();
    for r in rows {
        by_dev.entry(&r.device).or_default().push(r);
    }
    for (dev, rs) in by_dev {
        let pending: Vec<u64> = rs
            .iter()
            .filter(|r| r.state == "pending")
            .map(|r| r.seq)
            .collect();
        let max_done = rs
            .iter()
            .filter(|r| r.state != "pending")
            .map(|r| r.seq)
            .max();
        assert!(
            pending.len() <= max_tail,
            "{dev}: {} batches still pending: {pending:?}",
            pending.len()
        );
        if let (Some(first_pending), Some(done)) = (pending.first(), max_done) {
            assert!(
                *first_pending > done,
                "{dev}: pending seq {first_pending} older than uploaded {done}"
            );
        }
    }
}

fn no_secret(s: &Value) {
    let text = s.to_string();
    assert!(
        !text.contains(TOKEN),
        "the token leaked into status: {text}"
    );
}

#[test]
fn faults_then_every_batch_acknowledged_exactly_once() {
    let pki = make_pki();
    let mut server = TestServer::new(&pki, TOKEN, false);
    let env = uplink_env(&pki, &server, "[journal]\nbatch_seconds = 0.25\n");
    env.write("devices/a.toml", &synthetic_device("a", 4, 250.0, ""));
    env.write("devices/b.toml", &synthetic_device("b", 4, 250.0, ""));

    // 1. The backend is down when the daemon starts.
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    let s = d.wait_for(Duration::from_secs(5), "uplink offline", |s| {
        s["uplink"]["state"] == "offline" && s["uplink"]["failed_attempts"].as_u64() > Some(0)
    });
    no_secret(&s);
    let err = s["uplink"]["last_error"].as_str().unwrap_or("").to_string();
    assert!(err.starts_with("connect"), "{err}");

    // 2. Faults, scripted by request number; one batch of `b` is refused (413).
    let bad = wait_journal_row(&env, "b", 3, Duration::from_secs(5));
    let hit: Arc<Mutex<HashMap<&'static str, (String, u64)>>> = Default::default();
    let auth_down = Arc::new(AtomicBool::new(false));
    {
        let (hit, auth_down, bad) = (hit.clone(), auth_down.clone(), bad.clone());
        let count = std::sync::atomic::AtomicU64::new(0);
        server.set_policy(move |r: &ReqInfo| {
            if auth_down.load(Ordering::SeqCst) {
                return Action::Status(401, vec![]);
            }
            if r.batch_id == bad {
                return Action::Status(413, vec![]);
            }
            // Faults on the 1st, 3rd, ... request for other batches.
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let (name, action) = match n {
                1 => (
                    "503",
                    Action::Status(503, vec![("Retry-After".into(), "1".into())]),
                ),
                3 => (
                    "429",
                    Action::Status(
                        429,
                        vec![(
                            "Retry-After".into(),
                            httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2)),
                        )],
                    ),
                ),
                5 => ("reset", Action::ResetMidBody),
                7 => ("slow", Action::Slow(Duration::from_millis(1600))),
                9 => ("lost", Action::StoreThenDrop),
                11 => ("409", Action::Status(409, vec![])),
                _ => return Action::Normal,
            };
            hit.lock().unwrap().insert(name, (r.batch_id.clone(), r.n));
            action
        });
    }
    server.start();
    d.wait_for(Duration::from_secs(15), "faults played", |_| {
        hit.lock().unwrap().len() == 6
    });
    d.wait_for(Duration::from_secs(10), "bad batch quarantined", |s| {
        s["uplink"]["quarantined_batches"] == 1
    });

    // 3. A period of 401.
    auth_down.store(true, Ordering::SeqCst);
    let s = d.wait_for(Duration::from_secs(5), "auth_failed", |s| {
        s["uplink"]["state"] == "auth_failed"
            && s["uplink"]["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("401")
    });
    no_secret(&s);
    std::thread::sleep(Duration::from_millis(1500));
    auth_down.store(false, Ordering::SeqCst);

    // 4. Everything drains; nothing is acknowledged twice.
    let s = d.wait_for(Duration::from_secs(15), "caught up", |s| {
        let st = s["uplink"]["state"].as_str().unwrap_or("");
        (st == "idle" || st == "uploading")
            && s["journal"]["pending_batches"].as_u64() <= Some(3)
            && s["uplink"]["uploaded_batches"] == s["journal"]["uploaded_batches"]
    });
    assert_eq!(s["uplink"]["quarantined_batches"], 1, "{s}");
    assert_eq!(s["journal"]["quarantined_batches"], 1, "{s}");
    assert!(s["uplink"]["last_success_age_s"].as_f64().is_some());
    assert_eq!(d.terminate(), 0);

    let rows = journal_rows(&env);
    let key = Keyring::new(load_key_file(&env.key()).expect("key"));
    let hit = hit.lock().unwrap().clone();
    server.stop();
    let st = server.state.lock().unwrap();
    assert!(st.violations.is_empty(), "{:?}", st.violations);

    // The journal: all uploaded but the quarantined batch and the newest tail.
    let quarantined: Vec<&Row> = rows.iter().filter(|r| r.state == "quarantined").collect();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].batch_id, bad, "the 413 batch is kept");
    assert!(!st.stored.contains_key(&bad));
    assert_only_tail_pending(&rows, 4);
    let uploaded: Vec<&Row> = rows.iter().filter(|r| r.state == "uploaded").collect();
    assert!(uploaded.len() > 30, "{} uploaded", uploaded.len());
    let ids: HashSet<&str> = rows.iter().map(|r| r.batch_id.as_str()).collect();
    for r in &uploaded {
        // Byte for byte, and it opens with the key.
        let body = st.stored.get(&r.batch_id).expect("server holds it");
        assert_eq!(body, &r.envelope, "{} not byte for byte", r.batch_id);
        let (h, data) = neuroedge::batch::open(&key, body).expect("decrypts");
        assert_eq!(h.batch_id, r.batch_id);
        assert_eq!(data.timestamps.len() as u64, r.n_samples);
        // Acknowledged on time exactly once, and never sent after that.
        assert_eq!(st.acks.get(&r.batch_id), Some(&1), "{}", r.batch_id);
    }
    for k in st.stored.keys() {
        assert!(ids.contains(k.as_str()), "server holds unknown {k}");
    }
    let mut acked_at: HashMap<&str, usize> = HashMap::new();
    for (i, e) in st.events.iter().enumerate() {
        if e.action == "Normal" && e.status.is_some() {
            acked_at.insert(&e.batch_id, i);
        } else if let Some(j) = acked_at.get(e.batch_id.as_str()) {
            panic!(
                "{} sent again (event {i}) after its ack (event {j})",
                e.batch_id
            );
        }
    }
    for (i, e) in st.events.iter().enumerate() {
        if let Some(j) = acked_at.get(e.batch_id.as_str()) {
            assert!(i <= *j, "{} sent after ack", e.batch_id);
        }
    }
    // Per-device order of first deliveries.
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (dev, seq, _) in &st.first_stores {
        if let Some(p) = last.get(dev.as_str()) {
            assert!(seq > p, "{dev}: seq {seq} delivered after {p}");
        }
        last.insert(dev, *seq);
    }
    // Every fault hit a batch that was then retried and acknowledged.
    for f in ["503", "429", "reset", "slow", "lost", "409"] {
        let (id, n) = &hit[f];
        let fault = st
            .events
            .iter()
            .find(|e| e.n == *n)
            .unwrap_or_else(|| panic!("{f}: request {n} not recorded"));
        assert_eq!(&fault.batch_id, id);
        let row = rows
            .iter()
            .find(|r| &r.batch_id == id)
            .expect("fault batch in journal");
        assert_eq!(row.state, "uploaded", "{f}: {id}");
        assert!(
            row.attempts >= 2,
            "{f}: attempts {} (retry counted)",
            row.attempts
        );
        let retry = st
            .events
            .iter()
            .find(|e| &e.batch_id == id && e.n > *n)
            .unwrap_or_else(|| panic!("{f}: no retry of {id}"));
        let gap = retry.at - fault.at;
        if f == "503" || f == "429" {
            assert!(
                gap >= Duration::from_millis(900),
                "{f}: Retry-After not honoured: retried after {gap:?}"
            );
        }
        if f == "lost" || f == "slow" {
            // The server stored it on the first try: the answer that
            // finally reached the client is a replay.
            let later: Vec<Option<u16>> = st
                .events
                .iter()
                .filter(|e| &e.batch_id == id && e.n > *n && e.status.is_some_and(|c| c < 300))
                .map(|e| e.status)
                .collect();
            assert_eq!(later, vec![Some(200)], "{f}: the retry is a replay");
        }
    }
    // Audited state changes.
    let states: Vec<String> = env
        .audit("uplink_state")
        .iter()
        .map(|v| v["to"].as_str().unwrap_or("").to_string())
        .collect();
    for want in ["offline", "backoff", "auth_failed"] {
        assert!(
            states.iter().any(|s| s == want),
            "{want} not audited: {states:?}"
        );
    }
    let q = env.audit("quarantined");
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["batch_id"], bad.as_str());
    assert!(q[0]["reason"].as_str().unwrap_or("").contains("413"));
}

#[test]
fn network_cut_then_restored_drains_backlog_without_missing_samples() {
    let pki = make_pki();
    let mut server = TestServer::new(&pki, TOKEN, false);
    let env = uplink_env(&pki, &server, "[journal]\nbatch_seconds = 0.5\n");
    env.write("devices/eeg.toml", &synthetic_device("eeg", 4, 250.0, ""));
    server.start();
    let d = env.spawn();
    d.wait_for(Duration::from_secs(8), "first uploads", |s| {
        s["uplink"]["uploaded_batches"].as_u64() >= Some(2)
    });
    // The cut: listener closed and open connections dropped.
    server.stop();
    d.wait_for(Duration::from_secs(5), "offline", |s| {
        s["uplink"]["state"] == "offline"
    });
    let s = d.wait_for(Duration::from_secs(10), "a backlog", |s| {
        s["journal"]["pending_batches"].as_u64() >= Some(8)
    });
    assert_eq!(s["uplink"]["state"], "offline");
    server.start();
    let r = d.request("flush").expect("flush reply");
    assert_eq!(r["ok"], true, "{r}");
    let t = Instant::now();
    d.wait_for(Duration::from_secs(10), "backlog drained", |s| {
        s["journal"]["pending_batches"] == 0
    });
    let drained_in = t.elapsed();
    assert!(
        drained_in < Duration::from_secs(5),
        "drained in {drained_in:?}"
    );
    let s = d.status().expect("status");
    assert!(
        s["uplink"]["last_success_age_s"].as_f64() < Some(5.0),
        "{s}"
    );
    assert_eq!(d.terminate(), 0);

    let rows = journal_rows(&env);
    assert_only_tail_pending(&rows, 2);
    let key = Keyring::new(load_key_file(&env.key()).expect("key"));
    let st = server.state.lock().unwrap();
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    // The uploaded prefix is gapless, and the server has every sample of it.
    let uploaded: Vec<&Row> = rows.iter().filter(|r| r.state == "uploaded").collect();
    let mut next = (0u64, 0u64);
    for r in &uploaded {
        assert_eq!((r.seq, r.first_sample), next, "gapless");
        next = (r.seq + 1, r.first_sample + r.n_samples);
    }
    let journal_samples: u64 = uploaded.iter().map(|r| r.n_samples).sum();
    let mut server_samples = 0u64;
    for (id, body) in &st.stored {
        let (h, data) = neuroedge::batch::open(&key, body).expect("decrypts");
        assert_eq!(&h.batch_id, id);
        assert_eq!(data.timestamps.len() as u64, h.n_samples);
        if uploaded.iter().any(|r| &r.batch_id == id) {
            server_samples += h.n_samples;
        }
    }
    assert_eq!(server_samples, journal_samples, "no sample missing");
    assert!(uploaded.len() >= 10, "{} batches uploaded", uploaded.len());
}

#[test]
fn bad_token_file_then_wrong_endpoint_pause_without_dropping() {
    let pki = make_pki();
    let mut server = TestServer::new(&pki, TOKEN, false);
    server.start();
    let env = uplink_env(&pki, &server, "[journal]\nbatch_seconds = 0.25\n");
    std::fs::remove_file(env.path().join("token")).expect("rm token");
    env.write("devices/eeg.toml", &synthetic_device("eeg", 4, 250.0, ""));
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(5));
    let s = d.wait_for(Duration::from_secs(5), "misconfigured", |s| {
        s["uplink"]["state"] == "misconfigured"
    });
    let err = s["uplink"]["last_error"].as_str().unwrap_or("");
    assert!(err.contains("token_file"), "{err}");
    // Recording goes on.
    d.wait_for(Duration::from_secs(5), "batches kept", |s| {
        s["journal"]["pending_batches"].as_u64() >= Some(4)
    });
    // The token appears; flush retries at once (backoff_max is 1 s, so
    // give the flush a head start by checking quickly).
    env.write("token", TOKEN);
    assert_eq!(d.request("flush").expect("flush")["ok"], true);
    d.wait_for(Duration::from_secs(5), "uploads", |s| {
        s["uplink"]["uploaded_batches"].as_u64() >= Some(4)
    });

    // A wrong endpoint path (404): misconfigured, nothing quarantined.
    server.set_policy(|_| Action::Status(404, vec![]));
    let s = d.wait_for(Duration::from_secs(5), "misconfigured (404)", |s| {
        s["uplink"]["state"] == "misconfigured"
    });
    assert!(s["uplink"]["last_error"]
        .as_str()
        .unwrap_or("")
        .contains("404"));
    std::thread::sleep(Duration::from_millis(1500));
    server.set_policy(|_| Action::Normal);
    let s = d.wait_for(Duration::from_secs(8), "recovered", |s| {
        let st = s["uplink"]["state"].as_str().unwrap_or("");
        (st == "idle" || st == "uploading") && s["journal"]["pending_batches"].as_u64() <= Some(2)
    });
    assert_eq!(s["uplink"]["quarantined_batches"], 0);
    assert_eq!(s["journal"]["quarantined_batches"], 0);
    assert_eq!(d.terminate(), 0);
    let rows = journal_rows(&env);
    assert!(rows.iter().all(|r| r.state != "quarantined"));
    assert_only_tail_pending(&rows, 3);
    let states: Vec<String> = env
        .audit("uplink_state")
        .iter()
        .map(|v| v["to"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        states.iter().filter(|s| *s == "misconfigured").count() >= 2,
        "{states:?}"
    );
}

#[test]
fn mutual_tls_and_bytes_per_second_cap() {
    let pki = make_pki();
    let mut server = TestServer::new(&pki, TOKEN, true);
    let env = uplink_env(
        &pki,
        &server,
        "[journal]\nbatch_seconds = 0.25\n[uplink]\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"\nmax_bytes_per_sec = 12000\n",
    );
    env.write("client.pem", &pki.client_cert_pem);
    env.write("client.key", &pki.client_key_pem);
    env.write("devices/eeg.toml", &synthetic_device("eeg", 4, 250.0, ""));
    // Build a backlog first, so the cap (not the device) limits the rate.
    let d = env.spawn();
    d.wait_for(Duration::from_secs(10), "backlog", |s| {
        s["journal"]["pending_bytes"].as_u64() >= Some(60_000)
    });
    server.start();
    d.request("flush");
    d.wait_for(Duration::from_secs(5), "first upload over mTLS", |s| {
        s["uplink"]["uploaded_batches"].as_u64() >= Some(1)
    });
    let b0 = server.with_state(|s| s.bytes);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let b1 = server.with_state(|s| s.bytes);
    let rate = (b1 - b0) as f64 / t0.elapsed().as_secs_f64();
    assert!(rate > 3_000.0, "uploads flow: {rate:.0} B/s");
    // 1 s of burst spread over the window, plus one body of debt.
    assert!(rate < 12_000.0 * 1.6, "cap exceeded: {rate:.0} B/s");
    let s = d.status().expect("status");
    assert!(
        s["journal"]["pending_batches"].as_u64() > Some(0),
        "cap keeps a backlog"
    );
    assert_eq!(d.terminate(), 0);
    server.stop();
    assert!(server.with_state(|s| s.violations.is_empty()));

    // Without the client certificate the server refuses the handshake.
    let env2 = uplink_env(&pki, &server, "[journal]\nbatch_seconds = 0.25\n");
    env2.write("devices/eeg.toml", &synthetic_device("eeg", 4, 250.0, ""));
    server.start();
    let d2 = env2.spawn();
    let s = d2.wait_for(Duration::from_secs(8), "refused without client cert", |s| {
        s["uplink"]["failed_attempts"].as_u64() >= Some(1)
    });
    assert_eq!(s["uplink"]["uploaded_batches"], 0, "{s}");
    no_secret(&s);
    let _ = d2.terminate();
}

#[test]
fn check_config_refuses_unsafe_uplink_settings() {
    let check = |extra: &str, want: &str| {
        let env = Env::new(extra);
        env.write("devices/eeg.toml", &synthetic_device("eeg", 4, 250.0, ""));
        let out = env.cmd(&["check-config", "--config", env.config().to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
        assert!(err.contains(want), "{extra}: wanted {want:?} in {err}");
    };
    check(
        "[uplink]\nenabled = true\nendpoint = \"http://ingest.example.org\"\ntoken_file = \"t\"\n",
        "plain http",
    );
    check(
        "[uplink]\nenabled = true\nendpoint = \"https://ingest.example.org\"\n",
        "token_file",
    );
    check(
        "[uplink]\nenabled = true\nendpoint = \"https://u:p@ingest.example.org\"\ntoken_file = \"t\"\n",
        "credentials",
    );
    check(
        "[uplink]\nenabled = true\nendpoint = \"https://ingest.example.org\"\ntoken_file = \"t\"\nclient_cert = \"c.pem\"\n",
        "client_key",
    );
    // http to loopback is accepted.
    let env = Env::new(
        "[uplink]\nenabled = true\nendpoint = \"http://127.0.0.1:8080\"\ntoken_file = \"t\"\n",
    );
    env.write("devices/eeg.toml", &synthetic_device("eeg", 4, 250.0, ""));
    let out = env.cmd(&["check-config", "--config", env.config().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A batch altered in the journal (one byte of its envelope) is
/// quarantined, never sent; the batches after it are uploaded in order.
#[test]
fn altered_batch_is_quarantined_never_uploaded() {
    let pki = make_pki();
    let mut server = TestServer::new(&pki, TOKEN, false);
    let env = uplink_env(&pki, &server, "[journal]\nbatch_seconds = 0.5\n");
    env.write("devices/eeg.toml", &synthetic_device("eeg", 4, 250.0, ""));
    // The backend is down: a backlog builds.
    let d = env.spawn();
    d.wait_for(Duration::from_secs(15), "a backlog of 6", |s| {
        s["journal"]["pending_batches"].as_u64() >= Some(6)
    });
    assert_eq!(d.terminate(), 0);
    let altered_id = wait_journal_row(&env, "eeg", 2, Duration::from_secs(1));
    {
        let c = rusqlite::Connection::open(env.journal()).expect("open");
        let mut envelope: Vec<u8> = c
            .query_row(
                "SELECT envelope FROM batches WHERE batch_id = ?1",
                [&altered_id],
                |r| r.get(0),
            )
            .expect("envelope");
        let middle = envelope.len() / 2;
        envelope[middle] ^= 1;
        let n = c
            .execute(
                "UPDATE batches SET envelope = ?1 WHERE batch_id = ?2",
                rusqlite::params![envelope, altered_id],
            )
            .expect("alter");
        assert_eq!(n, 1);
    }
    // `journal verify` reports it.
    let out = env.cmd(&[
        "journal",
        "verify",
        "--journal",
        env.journal().to_str().unwrap(),
        "--key",
        env.key().to_str().unwrap(),
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert!(v.to_string().contains(&altered_id), "{v}");

    server.start();
    let d = env.spawn();
    let s = d.wait_for(Duration::from_secs(20), "quarantined, the rest sent", |s| {
        s["uplink"]["quarantined_batches"].as_u64() >= Some(1)
            && s["uplink"]["uploaded_batches"].as_u64() >= Some(5)
    });
    assert_eq!(s["uplink"]["quarantined_batches"], 1, "{s}");
    let log = d.log_text();
    assert!(
        log.contains("quarantined") && log.contains("altered in the journal"),
        "{log}"
    );
    assert_eq!(d.terminate(), 0);
    let rows = journal_rows(&env);
    let row = |seq: u64| rows.iter().find(|r| r.seq == seq).expect("row");
    assert_eq!(row(2).state, "quarantined");
    for seq in [0, 1, 3, 4, 5] {
        assert_eq!(row(seq).state, "uploaded", "seq {seq}");
    }
    let st = server.state.lock().unwrap();
    assert!(
        !st.stored.contains_key(&altered_id),
        "the altered batch reached the backend"
    );
    assert!(st.violations.is_empty(), "{:?}", st.violations);
}
