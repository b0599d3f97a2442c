//! Prometheus endpoint (`[metrics] listen`): `GET /metrics` in the text
//! exposition format 0.0.4 and `GET /health` (the socket's `health` reply).
//!
//! Every figure comes from the same typed report the status socket answers
//! (`DaemonState::report` / `health`), read field by field (no string
//! keys), so `neuroedge status` and a scrape never disagree. Building it only reads atomics and takes the short
//! locks the socket takes too: a scrape never waits on the data path.

use super::report::{DeviceReport, HealthLevel, StatusReport, UplinkReport};
use super::DaemonState;
use crate::journal::JournalStatus;
use crate::telemetry::DeviceState;
use crate::uplink::UplinkState;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// The exposition format's media type.
pub const CONTENT_TYPE_METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Concurrent connections served; more wait for a free slot.
const MAX_CONNECTIONS: usize = 64;
/// A client gets this long to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const DEVICE_STATES: [DeviceState; 6] = [
    DeviceState::Connecting,
    DeviceState::Streaming,
    DeviceState::Stalled,
    DeviceState::Disconnected,
    DeviceState::Error,
    DeviceState::Disabled,
];

const UPLINK_STATES: [UplinkState; 7] = [
    UplinkState::Disabled,
    UplinkState::Idle,
    UplinkState::Uploading,
    UplinkState::Backoff,
    UplinkState::Offline,
    UplinkState::AuthFailed,
    UplinkState::Misconfigured,
];

/// Bind `[metrics] listen` (a blocking std listener, set non-blocking so it
/// can be handed to tokio).
pub fn bind(listen: &str) -> Result<std::net::TcpListener, String> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        format!("[metrics] listen = {listen:?} is not an address: write e.g. \"127.0.0.1:9273\"")
    })?;
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "another program uses this port: pick another one in [metrics] listen"
            }
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges: use a port such as 9273"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "this machine has no such address: use 127.0.0.1 or one of its own addresses"
            }
            _ => "fix [metrics] listen, or remove it to turn the endpoint off",
        };
        format!("[metrics] listen = {listen:?}: cannot listen: {e} ({hint})")
    })?;
    l.set_nonblocking(true)
        .map_err(|e| format!("[metrics] listen = {listen:?}: {e}"))?;
    Ok(l)
}

/// Serve HTTP/1.1 on `listener` for as long as the runtime runs.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<DaemonState>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "metrics endpoint: http://{addr}/metrics and /health");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let reply = respond(&state, req.method(), req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// The reply to one request. HEAD gets GET's headers; hyper leaves out the
/// body.
fn respond(state: &DaemonState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD are served\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => reply(StatusCode::OK, CONTENT_TYPE_METRICS, exposition(state)),
        "/health" => {
            let health = state.health();
            let code = if health.status == HealthLevel::Failing {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            let mut body = serde_json::to_string(&health).unwrap_or_default();
            body.push('\n');
            reply(code, "application/json", body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics or /health\n".into(),
        ),
    }
}

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Text exposition writer: one family (HELP, TYPE, samples) at a time, as
/// the format requires.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; a value that is absent or not finite is left out.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Option<Figure>) {
        let Some(v) = value.and_then(format_value) else {
            return;
        };
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_into(&mut self.out, val);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&v);
        self.out.push('\n');
    }
}

/// Label values escape `\`, `"` and line feed (exposition format 0.0.4).
fn escape_label_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample's value: counters stay exact integers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Figure {
    Int(u64),
    Real(f64),
}

impl From<u64> for Figure {
    fn from(v: u64) -> Self {
        Figure::Int(v)
    }
}

impl From<usize> for Figure {
    fn from(v: usize) -> Self {
        Figure::Int(v as u64)
    }
}

impl From<f64> for Figure {
    fn from(v: f64) -> Self {
        Figure::Real(v)
    }
}

fn format_value(v: Figure) -> Option<String> {
    let f = match v {
        Figure::Int(u) => return Some(u.to_string()),
        Figure::Real(f) => f,
    };
    if !f.is_finite() {
        None
    } else if f == 0.0 {
        // Also -0.0, which would print as "-0".
        Some("0".into())
    } else if !(1e-6..1e15).contains(&f.abs()) {
        Some(format!("{f:e}"))
    } else {
        Some(format!("{f}"))
    }
}

type DeviceFigure = fn(&DeviceReport) -> Option<Figure>;
type JournalFigure = fn(&JournalStatus) -> Option<Figure>;
type UplinkFigure = fn(&UplinkReport) -> Option<Figure>;

/// Per-device families: (name, type, help, the figure).
const DEVICE_FAMILIES: [(&str, &str, &str, DeviceFigure); 7] = [
    (
        "neuroedge_device_samples_total",
        "counter",
        "Samples received from the device since the daemon started.",
        |d| Some(d.samples_total.into()),
    ),
    (
        "neuroedge_device_dropped_samples_total",
        "counter",
        "Samples lost inside neuroedge (ring overflow, journal refusal).",
        |d| Some(d.dropped_samples.into()),
    ),
    (
        "neuroedge_device_gaps_total",
        "counter",
        "Gap events: losses the device revealed or neuroedge counted.",
        |d| Some(d.gaps.into()),
    ),
    (
        "neuroedge_device_sample_rate_hz",
        "gauge",
        "Nominal sample rate of the device.",
        |d| Some(d.sample_rate.into()),
    ),
    (
        "neuroedge_device_channels",
        "gauge",
        "Channels the device delivers.",
        |d| Some(d.channels.into()),
    ),
    (
        "neuroedge_device_samples_per_second",
        "gauge",
        "Measured rate of samples arriving.",
        |d| Some(d.samples_per_s.into()),
    ),
    (
        "neuroedge_device_last_sample_age_seconds",
        "gauge",
        "Seconds since the newest sample was processed (absent before the first).",
        |d| d.last_sample_age_s.map(Figure::Real),
    ),
];

const JOURNAL_FAMILIES: [(&str, &str, &str, JournalFigure); 6] = [
    (
        "neuroedge_journal_pending_batches",
        "gauge",
        "Sealed batches in the journal not yet uploaded.",
        |j| Some(j.pending_batches.into()),
    ),
    (
        "neuroedge_journal_pending_bytes",
        "gauge",
        "Bytes of the batches not yet uploaded.",
        |j| Some(j.pending_bytes.into()),
    ),
    (
        "neuroedge_journal_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest batch not yet uploaded (absent when none is pending).",
        |j| j.oldest_pending_age_s.map(Figure::Real),
    ),
    (
        "neuroedge_journal_total_bytes",
        "gauge",
        "Bytes of all batches stored in the journal.",
        |j| Some(j.total_bytes.into()),
    ),
    (
        "neuroedge_journal_max_bytes",
        "gauge",
        "The journal quota ([journal] max_bytes).",
        |j| Some(j.max_bytes.into()),
    ),
    (
        "neuroedge_journal_evicted_batches_total",
        "counter",
        "Batches given up under [journal] when_full since the daemon started.",
        |j| Some(j.evicted_batches.into()),
    ),
];

const UPLINK_FAMILIES: [(&str, &str, &str, UplinkFigure); 4] = [
    (
        "neuroedge_uplink_uploaded_batches_total",
        "counter",
        "Batches the backend acknowledged since the daemon started.",
        |u| Some(u.uploaded_batches.into()),
    ),
    (
        "neuroedge_uplink_quarantined_batches_total",
        "counter",
        "Batches the backend refused (kept in the journal) since the daemon started.",
        |u| Some(u.quarantined_batches.into()),
    ),
    (
        "neuroedge_uplink_failed_attempts_total",
        "counter",
        "Upload attempts that failed and will be retried.",
        |u| Some(u.failed_attempts.into()),
    ),
    (
        "neuroedge_uplink_last_success_age_seconds",
        "gauge",
        "Seconds since the last acknowledged upload (absent before the first).",
        |u| u.last_success_age_s.map(Figure::Real),
    ),
];

/// `neuroedge_outlet_{pushed,dropped}_total{device,stream}`: one sample per
/// LSL outlet of each device.
fn outlet_families(e: &mut Exposition, devices: &[DeviceReport]) {
    type OutletFigure = fn(&crate::control::report::OutletReport) -> u64;
    let families: [(&str, &str, OutletFigure); 2] = [
        (
            "neuroedge_outlet_pushed_total",
            "Samples pushed on the device's LSL outlet since the daemon started.",
            |o| o.pushed,
        ),
        (
            "neuroedge_outlet_dropped_total",
            "Samples not pushed on the LSL outlet (its queue full, liblsl missing); the journal keeps them.",
            |o| o.dropped,
        ),
    ];
    for (name, help, figure) in families {
        e.family(name, "counter", help);
        for d in devices {
            for (stream, o) in &d.outlets {
                e.sample(
                    name,
                    &[("device", &d.id), ("stream", stream)],
                    Some(figure(o).into()),
                );
            }
        }
    }
}

/// The whole `/metrics` body, from the typed status report.
pub fn exposition(state: &DaemonState) -> String {
    render(&state.report())
}

/// The exposition of a status report.
pub fn render(status: &StatusReport) -> String {
    let mut e = Exposition {
        out: String::with_capacity(8192),
    };
    for (name, kind, help, figure) in DEVICE_FAMILIES {
        e.family(name, kind, help);
        for d in &status.devices {
            e.sample(name, &[("device", &d.id), ("driver", &d.driver)], figure(d));
        }
    }
    e.family(
        "neuroedge_device_state",
        "gauge",
        "1 for the device's current state, 0 for the others.",
    );
    for d in &status.devices {
        for s in DEVICE_STATES {
            e.sample(
                "neuroedge_device_state",
                &[("device", &d.id), ("state", s.as_str())],
                Some(u64::from(s == d.state).into()),
            );
        }
    }
    outlet_families(&mut e, &status.devices);
    for (name, kind, help, figure) in JOURNAL_FAMILIES {
        e.family(name, kind, help);
        e.sample(name, &[], figure(&status.journal));
    }
    for (name, kind, help, figure) in UPLINK_FAMILIES {
        e.family(name, kind, help);
        e.sample(name, &[], figure(&status.uplink));
    }
    e.family(
        "neuroedge_uplink_state",
        "gauge",
        "1 for the uplink's current state, 0 for the others.",
    );
    for s in UPLINK_STATES {
        e.sample(
            "neuroedge_uplink_state",
            &[("state", s.as_str())],
            Some(u64::from(s == status.uplink.state).into()),
        );
    }
    e.family(
        "neuroedge_clock_steps_total",
        "counter",
        "Wall-clock steps (e.g. NTP on a machine without RTC) seen since the daemon started.",
    );
    e.sample(
        "neuroedge_clock_steps_total",
        &[],
        Some(status.clock.steps.len().into()),
    );
    e.family(
        "neuroedge_clock_wall_offset_seconds",
        "gauge",
        "Wall clock minus the timeline of the timestamps: about 0, negative while a backward step is not applied.",
    );
    e.sample(
        "neuroedge_clock_wall_offset_seconds",
        &[],
        Some(status.clock.wall_offset_s.into()),
    );
    e.family(
        "neuroedge_systemd_notify_dropped_total",
        "counter",
        "systemd notifications dropped because NOTIFY_SOCKET was full or gone (never waited on).",
    );
    e.sample(
        "neuroedge_systemd_notify_dropped_total",
        &[],
        Some(status.systemd.notify_dropped.into()),
    );
    e.family("neuroedge_up", "gauge", "1 while the daemon answers.");
    e.sample("neuroedge_up", &[], Some(1u64.into()));
    e.family(
        "neuroedge_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    e.sample(
        "neuroedge_uptime_seconds",
        &[],
        Some(status.uptime_s.into()),
    );
    e.family(
        "neuroedge_build_info",
        "gauge",
        "Always 1; the label carries the neuroedge version.",
    );
    e.sample(
        "neuroedge_build_info",
        &[("version", &status.version)],
        Some(1u64.into()),
    );
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalShared;
    use crate::telemetry::DeviceStats;
    use crate::uplink::UplinkShared;
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Instant;

    const ODD_ID: &str = "eeg \"lab\" \\ 1";

    fn state() -> Arc<DaemonState> {
        let d = Arc::new(DeviceStats::new(ODD_ID, "synthetic", true));
        d.set_state(DeviceState::Streaming);
        d.sample_rate.store(250.0);
        d.channels.store(8, Relaxed);
        d.samples_total.store(12_345, Relaxed);
        d.dropped_samples.store(2, Relaxed);
        d.samples_per_s.store(250.0);
        d.last_sample_mono.store(0.0);
        {
            use crate::outlet::StreamKind;
            d.outlets
                .set_enabled(StreamKind::Filtered.bit() | StreamKind::Markers.bit());
            d.outlets.add_pushed(StreamKind::Filtered, 500);
            d.outlets.add_dropped(StreamKind::Filtered, 7);
        }
        let off = Arc::new(DeviceStats::new("off", "lsl", false));
        let journal = Arc::new(JournalShared::default());
        journal.update(|j| {
            j.pending_batches = 3;
            j.max_bytes = 1 << 31;
            j.state = crate::journal::JournalState::Ok;
        });
        Arc::new(DaemonState {
            version: "9.9.9",
            started: Instant::now(),
            node_id: "n".into(),
            site_id: "s".into(),
            devices: {
                let r = crate::telemetry::DeviceRegistry::default();
                r.publish(vec![d, off], Default::default());
                Arc::new(r)
            },
            journal,
            uplink: Arc::new(UplinkShared::disabled()),
            reload: None,
            control_uids: Vec::new(),
            subscribers: Default::default(),
        })
    }

    /// A sample line: name, labels, value. Panics on anything the 0.0.4
    /// text format does not allow.
    fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
        fn is_name(s: &str) -> bool {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        }
        let name_end = line.find(['{', ' ']).expect("name ends");
        let name = &line[..name_end];
        assert!(is_name(name), "bad metric name in {line:?}");
        let mut labels = BTreeMap::new();
        let mut chars = line[name_end..].chars().peekable();
        if chars.peek() == Some(&'{') {
            chars.next();
            loop {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                assert!(is_name(&key), "bad label name {key:?} in {line:?}");
                assert_eq!(chars.next(), Some('"'), "label value quoted in {line:?}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("closing quote") {
                        '\\' => match chars.next().expect("escape") {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => panic!("bad escape \\{other} in {line:?}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw newline in {line:?}"),
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(key, value).is_none(), "label twice: {line:?}");
                match chars.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("unexpected {other:?} after a label in {line:?}"),
                }
            }
        }
        assert_eq!(chars.next(), Some(' '), "space before the value: {line:?}");
        let value: String = chars.collect();
        assert!(!value.contains(' '), "no timestamp expected in {line:?}");
        let v: f64 = value.parse().expect("value is a float");
        assert!(v.is_finite(), "non-finite sample in {line:?}");
        (name.to_string(), labels, v)
    }

    #[test]
    fn exposition_is_well_formed_and_escapes_labels() {
        let text = exposition(&state());
        assert!(text.ends_with('\n'));
        let mut declared: Vec<String> = Vec::new();
        let mut samples = Vec::new();
        let mut last_family = String::new();
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("# HELP ") {
                let name = h.split(' ').next().unwrap().to_string();
                assert!(!declared.contains(&name), "family {name} declared twice");
                declared.push(name.clone());
                last_family = name;
            } else if let Some(t) = line.strip_prefix("# TYPE ") {
                let mut it = t.split(' ');
                assert_eq!(it.next(), Some(last_family.as_str()), "TYPE after HELP");
                let kind = it.next().unwrap();
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert_eq!(it.next(), None);
            } else {
                let s = parse_sample(line);
                assert_eq!(s.0, last_family, "sample under its own family: {line}");
                samples.push(s);
            }
        }
        let find = |name: &str, device: &str| {
            samples
                .iter()
                .find(|(n, l, _)| n == name && l.get("device").map(String::as_str) == Some(device))
                .map(|s| s.2)
        };
        // The id with `"` and `\` round-trips through the escaping.
        assert_eq!(
            find("neuroedge_device_samples_total", ODD_ID),
            Some(12_345.0)
        );
        assert!(text.contains(r#"device="eeg \"lab\" \\ 1",driver="synthetic""#));
        assert_eq!(
            find("neuroedge_device_dropped_samples_total", ODD_ID),
            Some(2.0)
        );
        assert_eq!(find("neuroedge_device_sample_rate_hz", ODD_ID), Some(250.0));
        // The disabled device never had a sample: its age is left out.
        assert!(find("neuroedge_device_last_sample_age_seconds", ODD_ID).is_some());
        assert!(find("neuroedge_device_last_sample_age_seconds", "off").is_none());
        // Six states per device, exactly one of them 1.
        for dev in [ODD_ID, "off"] {
            let states: Vec<_> = samples
                .iter()
                .filter(|(n, l, _)| {
                    n == "neuroedge_device_state" && l["device"] == dev && l.len() == 2
                })
                .collect();
            assert_eq!(states.len(), 6, "{dev}");
            assert_eq!(states.iter().filter(|s| s.2 == 1.0).count(), 1);
        }
        let on = |name: &str, state: &str| {
            samples.iter().any(|(n, l, v)| {
                n == name && l.get("state").map(String::as_str) == Some(state) && *v == 1.0
            })
        };
        let outlet = |name: &str, stream: &str| {
            samples
                .iter()
                .find(|(n, l, _)| {
                    n == name
                        && l.get("device").map(String::as_str) == Some(ODD_ID)
                        && l.get("stream").map(String::as_str) == Some(stream)
                })
                .map(|s| s.2)
        };
        assert_eq!(
            outlet("neuroedge_outlet_pushed_total", "filtered"),
            Some(500.0)
        );
        assert_eq!(
            outlet("neuroedge_outlet_dropped_total", "filtered"),
            Some(7.0)
        );
        assert_eq!(
            outlet("neuroedge_outlet_pushed_total", "markers"),
            Some(0.0)
        );
        assert_eq!(
            outlet("neuroedge_outlet_pushed_total", "raw"),
            None,
            "not published"
        );
        assert!(on("neuroedge_device_state", "streaming"));
        assert!(on("neuroedge_device_state", "disabled"));
        assert!(on("neuroedge_uplink_state", "disabled"));
        let single = |name: &str| {
            samples
                .iter()
                .find(|(n, l, _)| n == name && l.is_empty())
                .map(|s| s.2)
        };
        assert_eq!(single("neuroedge_journal_pending_batches"), Some(3.0));
        assert_eq!(
            single("neuroedge_journal_max_bytes"),
            Some((1u64 << 31) as f64)
        );
        assert_eq!(single("neuroedge_journal_oldest_pending_age_seconds"), None);
        assert_eq!(single("neuroedge_uplink_last_success_age_seconds"), None);
        assert_eq!(single("neuroedge_up"), Some(1.0));
        assert!(samples
            .iter()
            .any(|(n, l, _)| n == "neuroedge_build_info" && l["version"] == "9.9.9"));
        // Every family is declared even when it has no sample.
        for f in [
            "neuroedge_journal_oldest_pending_age_seconds",
            "neuroedge_uplink_last_success_age_seconds",
            "neuroedge_uptime_seconds",
            "neuroedge_clock_steps_total",
            "neuroedge_clock_wall_offset_seconds",
        ] {
            assert!(declared.iter().any(|d| d == f), "{f}");
        }
    }

    #[test]
    fn values_and_escapes() {
        let mut s = String::new();
        escape_label_into(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
        assert_eq!(format_value(Figure::Real(f64::NAN)), None);
        assert_eq!(format_value(Figure::Real(2.5)).as_deref(), Some("2.5"));
        assert_eq!(
            format_value(u64::MAX.into()).as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(format_value(1e20.into()).as_deref(), Some("1e20"));
        assert_eq!(format_value((-3.0).into()).as_deref(), Some("-3"));
        assert_eq!(format_value((-0.0).into()).as_deref(), Some("0"));
    }

    #[test]
    fn bind_errors_name_the_key() {
        let e = bind("nonsense").unwrap_err();
        assert!(
            e.contains("[metrics] listen") && e.contains("nonsense"),
            "{e}"
        );
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = bind(&addr).unwrap_err();
        assert!(e.contains("[metrics] listen") && e.contains(&addr), "{e}");
    }

    fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_ascii_lowercase(), body.to_string())
    }

    #[test]
    fn serves_metrics_health_and_refuses_the_rest() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let l = bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let state = state();
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            serve(l, state).await
        });
        let (code, head, body) = http(addr, "GET", "/metrics");
        assert_eq!(code, 200);
        assert!(head.contains("content-type: text/plain; version=0.0.4"));
        assert!(body.contains("neuroedge_device_samples_total{"));
        let (code, head, body) = http(addr, "HEAD", "/metrics");
        assert_eq!(code, 200);
        assert!(head.contains("version=0.0.4"));
        assert!(body.is_empty(), "HEAD has no body: {body:?}");
        let (code, _, body) = http(addr, "GET", "/health?x=1");
        // Both devices: the enabled one streams, so at most degraded.
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["status"].is_string() && v["checks"].is_object());
        assert_eq!(http(addr, "GET", "/").0, 404);
        assert_eq!(http(addr, "GET", "/metricsx").0, 404);
        let (code, head, _) = http(addr, "POST", "/metrics");
        assert_eq!(code, 405);
        assert!(head.contains("allow: get, head"));
        // A garbled request does not stop the server.
        {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let _ = s.write_all(b"\x00\x01garbage\r\n\r\n");
        }
        assert_eq!(http(addr, "GET", "/metrics").0, 200);
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}
