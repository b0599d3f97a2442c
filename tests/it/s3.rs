//! The S3 sink end to end (contract §11, issue 13): the real daemon against
//! moto's S3 server, reached through a fault proxy
//! (tests/peers/s3_fault_proxy.py); the bucket is then read back by the
//! backend's reader (tests/peers/s3_reader.py, boto3).

use crate::util::{committed_envelopes, heavy, python, synthetic_device, Env};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, within: Duration) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < within, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn moto(port: u16, dir: &Path) -> Proc {
    let log = std::fs::File::create(dir.join("moto.log")).unwrap();
    let c = Command::new(python())
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("moto server (pip install 'moto[server]')");
    let p = Proc(c);
    wait_port(port, Duration::from_secs(30));
    p
}

fn proxy(port: u16, upstream: u16, mode_file: &Path, dir: &Path) -> Proc {
    let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
    let c = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/s3_fault_proxy.py"
        ))
        .args([
            "--listen",
            &port.to_string(),
            "--upstream",
            &upstream.to_string(),
        ])
        .arg("--mode-file")
        .arg(mode_file)
        .stdout(log)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let p = Proc(c);
    wait_port(port, Duration::from_secs(20));
    p
}

fn reader(endpoint: &str, bucket: &str, key: Option<&Path>, cmd: &str) -> (bool, String) {
    let mut c = Command::new(python());
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/s3_reader.py"
    ))
    .args([
        "--endpoint",
        endpoint,
        "--bucket",
        bucket,
        "--prefix",
        "fleet/lab",
    ]);
    if let Some(k) = key {
        c.arg("--key").arg(k);
    }
    let out = c.arg(cmd).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn s3_faults_then_every_batch_in_the_bucket_exactly_once() {
    let _g = heavy();
    let moto_port = free_port();
    let proxy_port = free_port();
    let env = Env::new(&format!(
        "[journal]\nbatch_seconds = 0.25\n\
         [uplink]\nenabled = true\nsink = \"s3\"\ntimeout = \"2s\"\nmax_in_flight = 4\n\
         backoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n\
         [uplink.s3]\nendpoint = \"http://127.0.0.1:{proxy_port}\"\nbucket = \"eeg-archive\"\n\
         region = \"us-east-1\"\nprefix = \"fleet/lab\"\ncredentials_file = \"s3.credentials\"\npath_style = true\n"
    ));
    env.write("devices/eeg.toml", &synthetic_device("eeg", 8, 250.0, ""));
    env.write("devices/aux.toml", &synthetic_device("aux", 2, 250.0, ""));
    let creds = env.path().join("s3.credentials");
    env.write(
        "s3.credentials",
        "AKIDNEUROEDGETEST\nwJalrXUtnFEMIsecretKEY0123\n",
    );
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mode = env.path().join("proxy.mode");
    let set = |m: &str| std::fs::write(&mode, m).unwrap();
    set("pass");
    let _moto = moto(moto_port, env.path());
    let moto_url = format!("http://127.0.0.1:{moto_port}");

    // Server down at start: offline, batches wait in the journal.
    let d = env.spawn();
    let s = d.wait_for(Duration::from_secs(10), "offline", |s| {
        s["uplink"]["state"] == "offline"
    });
    assert!(s["uplink"]["endpoint"]
        .as_str()
        .is_some_and(|e| e.starts_with("s3://eeg-archive/fleet/lab")));
    let _proxy = proxy(proxy_port, moto_port, &mode, env.path());

    // The bucket does not exist yet: misconfigured, nothing quarantined.
    let s = d.wait_for(Duration::from_secs(10), "misconfigured", |s| {
        s["uplink"]["state"] == "misconfigured"
    });
    let err = s["uplink"]["last_error"].as_str().unwrap_or("").to_string();
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert_eq!(s["uplink"]["quarantined_batches"], 0);
    let (ok, out) = reader(&moto_url, "eeg-archive", None, "mkbucket");
    assert!(ok, "{out}");
    assert_eq!(d.request("flush").unwrap()["ok"], true);
    d.wait_for(Duration::from_secs(10), "uploads", |s| {
        s["uplink"]["uploaded_batches"].as_u64() >= Some(6)
    });

    // 503 SlowDown: backoff, and the error names the code.
    set("slowdown");
    let s = d.wait_for(Duration::from_secs(10), "backoff", |s| {
        s["uplink"]["state"] == "backoff"
    });
    assert!(s["uplink"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("SlowDown")));
    // Reset mid-body, then lost replies after the store kept the object.
    set("reset");
    std::thread::sleep(Duration::from_secs(2));
    set("lost");
    std::thread::sleep(Duration::from_secs(2));
    // Bad credentials: auth_failed, nothing dropped.
    set("deny");
    let s = d.wait_for(Duration::from_secs(10), "auth_failed", |s| {
        s["uplink"]["state"] == "auth_failed"
    });
    let text = s.to_string();
    assert!(!text.contains("wJalrXUtnFEMIsecretKEY0123") && !text.contains("AKIDNEUROEDGETEST"));
    assert!(s["uplink"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("InvalidAccessKeyId")));
    set("pass");
    assert_eq!(d.request("flush").unwrap()["ok"], true);
    d.wait_for(Duration::from_secs(20), "backlog drained", |s| {
        let st = s["uplink"]["state"].as_str().unwrap_or("");
        (st == "idle" || st == "uploading") && s["journal"]["pending_batches"].as_u64() <= Some(2)
    });
    assert_eq!(d.terminate(), 0);
    let log = std::fs::read_to_string(env.path().join("proxy.log")).unwrap();
    for m in ["\"reset\"", "\"lost\"", "\"deny\"", "\"slowdown\""] {
        assert!(log.contains(m), "the proxy never injected {m}");
    }

    // The bucket, read by the backend's reader: every uploaded batch is
    // there under its key, byte for byte, decodable; nothing else is.
    let (ok, out) = reader(&moto_url, "eeg-archive", Some(&env.key()), "read");
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let objects = v["objects"].as_object().unwrap();
    let journal = committed_envelopes(&env.journal());
    let db = rusqlite::Connection::open(env.journal()).unwrap();
    let mut stmt = db.prepare("SELECT batch_id, state FROM batches").unwrap();
    let rows: Vec<(String, bool, bool)> = stmt
        .query_map([], |r| {
            let state: String = r.get(1)?;
            Ok((r.get(0)?, state == "uploaded", state == "quarantined"))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(rows.iter().all(|r| !r.2), "something was quarantined");
    let mut by_id = std::collections::HashMap::new();
    for (_k, o) in objects {
        assert!(
            by_id
                .insert(o["batch_id"].as_str().unwrap().to_string(), o.clone())
                .is_none(),
            "a batch under two keys"
        );
    }
    let mut uploaded = 0;
    for (bid, acked, _) in &rows {
        let env_bytes = &journal[bid];
        match by_id.get(bid) {
            Some(o) => {
                let sha = format!("{:x}", Sha256::digest(env_bytes));
                assert_eq!(o["sha256"], sha.as_str(), "batch {bid}: bytes differ");
            }
            None => assert!(
                !acked,
                "batch {bid} acknowledged but not in the bucket ({} objects: {:?})",
                objects.len(),
                objects.keys().take(3).collect::<Vec<_>>()
            ),
        }
        uploaded += usize::from(*acked);
    }
    assert!(uploaded >= 20, "only {uploaded} batches uploaded");
    assert_eq!(
        by_id.len(),
        by_id.keys().filter(|b| journal.contains_key(*b)).count(),
        "an object the journal does not hold"
    );
}
