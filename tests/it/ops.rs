//! Operations: the Prometheus endpoint of the real daemon, read by the
//! reference parser (Python `prometheus_client`).

use crate::util::{synthetic_device, Env};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One HTTP/1.1 request; returns (status code, lower-case head, body).
fn http_get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: ops-test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read reply");
    let raw = String::from_utf8(raw).expect("UTF-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let head = head.to_ascii_lowercase();
    assert!(
        !head.contains("transfer-encoding: chunked"),
        "expected a plain body: {head}"
    );
    (code, head, body.to_string())
}

/// Parse an exposition with prometheus_client; returns
/// {family: {"type": ..., "samples": [[name, labels, value], ...]}}.
fn parse_with_prometheus_client(text: &str) -> Value {
    const SCRIPT: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = {"type": fam.type, "samples": [
        [s.name, s.labels, None if math.isnan(s.value) else s.value] for s in fam.samples]}
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(crate::util::python())
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics (scripts/install-test-deps.sh installs it): {}\n--- exposition:\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

/// Every sample of every family, flattened: (sample name, labels, value).
fn samples(parsed: &Value) -> Vec<(String, Value, f64)> {
    parsed
        .as_object()
        .unwrap()
        .values()
        .flat_map(|f| f["samples"].as_array().cloned().unwrap_or_default())
        .map(|s| {
            (
                s[0].as_str().unwrap().to_string(),
                s[1].clone(),
                s[2].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

#[test]
fn metrics_endpoint_serves_parsable_exposition_and_health() {
    let port = free_port();
    let env = Env::new(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    env.write("devices/syn.toml", &synthetic_device("syn-1", 4, 250.0, ""));
    env.write(
        "devices/off.toml",
        "id = \"off-1\"\ndriver = \"synthetic\"\nenabled = false\n",
    );
    let d = env.spawn();
    d.wait_for(Duration::from_secs(20), "syn-1 streaming", |s| {
        s["devices"].as_array().is_some_and(|devs| {
            devs.iter().any(|d| {
                d["id"] == "syn-1"
                    && d["state"] == "streaming"
                    && d["samples_total"].as_u64() > Some(0)
            })
        })
    });
    // Let the rate and a batch or two come in.
    std::thread::sleep(Duration::from_millis(1500));

    let (code, head, body) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let parsed = parse_with_prometheus_client(&body);
    let all = samples(&parsed);
    let names: std::collections::BTreeSet<&str> = all.iter().map(|s| s.0.as_str()).collect();
    for name in [
        "neuroedge_device_samples_total",
        "neuroedge_device_dropped_samples_total",
        "neuroedge_device_gaps_total",
        "neuroedge_device_sample_rate_hz",
        "neuroedge_device_samples_per_second",
        "neuroedge_device_last_sample_age_seconds",
        "neuroedge_device_state",
        "neuroedge_journal_pending_batches",
        "neuroedge_journal_pending_bytes",
        "neuroedge_journal_total_bytes",
        "neuroedge_journal_max_bytes",
        "neuroedge_journal_evicted_batches_total",
        "neuroedge_uplink_uploaded_batches_total",
        "neuroedge_uplink_quarantined_batches_total",
        "neuroedge_uplink_failed_attempts_total",
        "neuroedge_uplink_state",
        "neuroedge_up",
        "neuroedge_uptime_seconds",
        "neuroedge_build_info",
    ] {
        assert!(names.contains(name), "{name} missing from:\n{body}");
    }
    // Families declared even without a sample (nothing uploaded; the uplink
    // is off), and typed as declared.
    for fam in [
        "neuroedge_journal_oldest_pending_age_seconds",
        "neuroedge_uplink_last_success_age_seconds",
        "neuroedge_clock_wall_offset_seconds",
    ] {
        assert!(parsed.get(fam).is_some(), "{fam} not declared:\n{body}");
    }
    // prometheus_client names a counter's family without `_total`.
    assert_eq!(parsed["neuroedge_device_samples"]["type"], "counter");
    assert_eq!(parsed["neuroedge_clock_steps"]["type"], "counter");
    assert_eq!(parsed["neuroedge_journal_pending_batches"]["type"], "gauge");

    let get = |name: &str, label: &str, value: &str| {
        all.iter()
            .find(|s| s.0 == name && s.1[label] == value)
            .map(|s| s.2)
    };
    let total = get("neuroedge_device_samples_total", "device", "syn-1").expect("syn-1 samples");
    assert!(total > 0.0, "{body}");
    assert_eq!(
        all.iter()
            .find(|s| s.0 == "neuroedge_device_samples_total" && s.1["device"] == "syn-1")
            .unwrap()
            .1["driver"],
        "synthetic"
    );
    assert_eq!(
        get("neuroedge_device_sample_rate_hz", "device", "syn-1"),
        Some(250.0)
    );
    let on: Vec<_> = all
        .iter()
        .filter(|s| s.0 == "neuroedge_device_state" && s.1["device"] == "syn-1" && s.2 == 1.0)
        .map(|s| s.1["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(on, ["streaming"], "{body}");
    assert_eq!(
        all.iter()
            .filter(|s| s.0 == "neuroedge_device_state" && s.1["device"] == "off-1")
            .count(),
        6
    );
    assert_eq!(
        get("neuroedge_uplink_state", "state", "disabled"),
        Some(1.0)
    );
    assert_eq!(
        get("neuroedge_build_info", "version", env!("CARGO_PKG_VERSION")),
        Some(1.0)
    );
    // The disabled device never sampled: no age for it.
    assert_eq!(
        get(
            "neuroedge_device_last_sample_age_seconds",
            "device",
            "off-1"
        ),
        None
    );

    let (code, head, body) = http_get(port, "/health");
    assert_eq!(code, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let h: Value = serde_json::from_str(&body).expect("health JSON");
    assert!(h["status"].is_string() && h["checks"].is_object(), "{h}");
    // The same checks as the socket's `health` (details move on).
    let socket = d.request("health").expect("socket health");
    let keys = |v: &Value| {
        v["checks"]
            .as_object()
            .map(|c| c.keys().cloned().collect::<Vec<_>>())
    };
    assert_eq!(keys(&h), keys(&socket), "{h} vs {socket}");
    assert!(
        keys(&h).unwrap().contains(&"device:syn-1".to_string()),
        "{h}"
    );

    assert_eq!(http_get(port, "/").0, 404);
    assert_eq!(http_get(port, "/metrics/extra").0, 404);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn metrics_port_in_use_is_a_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let env = Env::new(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    env.write("devices/syn.toml", &synthetic_device("syn-1", 2, 250.0, ""));
    let out = env.cmd(&["run", "--config", env.config().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[metrics] listen") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
    drop(taken);
}
