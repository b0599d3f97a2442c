//! Answers to socket requests, built from the live counters.

use super::protocol::{error_reply, Request};
use super::report::{
    ClockReport, DeviceReport, Float, HealthLevel, HealthReport, StatusReport, SystemdReport,
    UplinkReport,
};
use crate::batch::Marker;
use crate::journal::{JournalShared, JournalState};
use crate::telemetry::{DeviceRegistry, DeviceState, DeviceStats};
use serde_json::{json, Value};

use std::sync::Arc;
use std::time::Instant;

/// Starts a reload whose answer goes to the given sender; false when it
/// cannot be asked (shutting down). The daemon wires it to the device
/// supervisor, which the control plane does not know.
pub type ReloadFn = Box<dyn Fn(tokio::sync::oneshot::Sender<Value>) -> bool + Send + Sync>;

/// Everything the socket reads.
pub struct DaemonState {
    pub version: &'static str,
    pub started: Instant,
    pub node_id: String,
    pub site_id: String,
    /// The devices, as the supervisor publishes them.
    pub devices: Arc<DeviceRegistry>,
    pub journal: Arc<JournalShared>,
    /// The uplink's live figures (state `disabled` when not enabled).
    pub uplink: Arc<crate::uplink::UplinkShared>,
    /// Asks for a reload; the answer goes to the sender (`None`: reload
    /// is not available, e.g. in tests).
    pub reload: Option<ReloadFn>,
    /// Uids allowed to change things besides root and the daemon's own.
    pub control_uids: Vec<u32>,
    /// The `subscribe` streams being served.
    pub subscribers: super::subscribe::SubscriberSlots,
}

/// How long `reload` waits for the supervisor before answering.
const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl DaemonState {
    /// Seconds since the daemon started.
    fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// One device's figures. The state is the runner's (the one stall
    /// rule lives in `crate::device::runner`).
    pub fn device_report(&self, d: &DeviceStats) -> DeviceReport {
        use std::sync::atomic::Ordering::Relaxed;
        let features = crate::sync::lock(&d.features).clone();
        let last = d.last_sample_mono.load();
        DeviceReport {
            id: d.id.clone(),
            driver: d.driver.to_string(),
            state: d.state(),
            sample_rate: d.sample_rate.load(),
            effective_rate: (d.effective_rate.load() * 1000.0).round() / 1000.0,
            channels: d.channels.load(Relaxed),
            channel_names: crate::sync::lock(&d.channel_names).clone(),
            samples_total: d.samples_total.load(Relaxed),
            samples_per_s: (d.samples_per_s.load() * 100.0).round() / 100.0,
            dropped_samples: d.dropped_samples.load(Relaxed),
            gaps: d.gaps.load(Relaxed),
            last_sample_age_s: (!last.is_nan())
                .then(|| (crate::clock::global().mono_now() - last).max(0.0)),
            last_sample_t: d.last_sample_unix.load(),
            quality: features.quality,
            band_power: features
                .band_power
                .into_iter()
                .map(|(band, v)| (band, v.into_iter().map(Float).collect()))
                .collect(),
            last_error: d.last_error(),
            outlets: d.outlets.report(),
        }
    }

    fn devices_report(&self) -> Vec<DeviceReport> {
        self.devices
            .devices()
            .iter()
            .map(|d| self.device_report(d))
            .collect()
    }

    fn uplink_report(&self) -> UplinkReport {
        let s = self.uplink.snapshot();
        UplinkReport {
            state: s.state,
            uploaded_batches: s.uploaded_batches,
            quarantined_batches: s.quarantined_batches,
            failed_attempts: s.failed_attempts,
            last_success_age_s: s
                .last_success
                .map(|t| (t.elapsed().as_secs_f64() * 10.0).round() / 10.0),
            last_error: s.last_error,
            in_flight: s.in_flight,
            buffered_batches: s.buffered_batches,
            endpoint: s.endpoint,
        }
    }

    /// The `status` reply (contract §5): built here and nowhere else.
    pub fn report(&self) -> StatusReport {
        let clock = crate::clock::global();
        StatusReport {
            version: self.version.to_string(),
            uptime_s: (self.uptime() * 10.0).round() / 10.0,
            node_id: self.node_id.clone(),
            site_id: self.site_id.clone(),
            devices: self.devices_report(),
            journal: self.journal.snapshot(),
            uplink: self.uplink_report(),
            clock: ClockReport {
                wall_offset_s: (clock.wall_offset() * 1000.0).round() / 1000.0,
                steps: clock.steps_from(0).0,
            },
            systemd: {
                let (notify_sent, notify_dropped) = crate::notify::counts();
                SystemdReport {
                    notify_sent,
                    notify_dropped,
                }
            },
        }
    }

    /// `ok` / `degraded` / `failing`, with one check per concern.
    pub fn health(&self) -> HealthReport {
        health_of(&self.report(), self.uptime())
    }

    /// May this peer change anything (`mark`, `flush`, `reload`)? Root,
    /// the daemon's own uid, or a uid in `[status] control_uids`.
    pub fn authorized(&self, peer_uid: Option<u32>) -> bool {
        let own = nix::unistd::geteuid().as_raw();
        peer_uid.is_some_and(|u| u == 0 || u == own || self.control_uids.contains(&u))
    }

    fn refused(&self, cmd: &str, peer_uid: Option<u32>) -> Value {
        let who = peer_uid.map_or("an unknown uid".to_string(), |u| format!("uid {u}"));
        tracing::warn!(command = cmd, peer = %who, "control command refused: peer not authorised");
        error_reply(
            &format!("permission denied: {who} may not `{cmd}` (allowed: root, the daemon's user, [status] control_uids)"),
            "run the command as root or as the daemon's user (e.g. sudo -u neuroedge), or add your uid to [status] control_uids",
        )
    }

    /// Answer a request; `reload` waits for the supervisor.
    pub async fn answer_async(&self, req: &Request, peer_uid: Option<u32>) -> Value {
        if let Request::Reload = req {
            if !self.authorized(peer_uid) {
                return self.refused("reload", peer_uid);
            }
            let Some(reload) = &self.reload else {
                return error_reply("reload is not available here", "restart neuroedge");
            };
            let (rtx, rrx) = tokio::sync::oneshot::channel();
            if !reload(rtx) {
                return error_reply("neuroedge is shutting down", "try again after it restarts");
            }
            return match tokio::time::timeout(RELOAD_TIMEOUT, rrx).await {
                Ok(Ok(v)) => v,
                _ => error_reply(
                    "reload did not finish in time",
                    "check the log (journalctl -u neuroedge); the reload continues in the background",
                ),
            };
        }
        self.answer(req, peer_uid)
    }

    pub fn answer(&self, req: &Request, peer_uid: Option<u32>) -> Value {
        match req {
            Request::Status => to_json(&self.report()),
            Request::Health => to_json(&self.health()),
            Request::Devices => json!({"devices": self.devices_report()}),
            Request::Journal => to_json(&self.journal.snapshot()),
            Request::Uplink => to_json(&self.uplink_report()),
            Request::Version => json!({"version": self.version}),
            Request::Flush => {
                if !self.authorized(peer_uid) {
                    return self.refused("flush", peer_uid);
                }
                if self.uplink.request_flush() {
                    json!({"ok": true, "uplink": self.uplink_report(), "journal": {"pending_batches": self.journal.snapshot().pending_batches}})
                } else {
                    error_reply(
                        "the uplink is disabled: nothing to flush",
                        "set [uplink] enabled = true with an endpoint and token_file",
                    )
                }
            }
            Request::Mark { device, text } => {
                if !self.authorized(peer_uid) {
                    return self.refused("mark", peer_uid);
                }
                self.mark(device, text)
            }
            Request::Reload => error_reply(
                "reload is answered asynchronously",
                "send it over the status socket",
            ),
            Request::Subscribe { .. } => error_reply(
                "subscribe is a stream",
                "send it over the status socket, which then carries its lines",
            ),
        }
    }

    fn mark(&self, device: &str, text: &str) -> Value {
        const MAX_MARK: usize = 1024;
        if text.len() > MAX_MARK {
            return error_reply(
                &format!(
                    "marker text too long ({} bytes; the limit is {MAX_MARK})",
                    text.len()
                ),
                "use a short label",
            );
        }
        let tx = self.devices.markers(device);
        let Some(tx) = tx else {
            let known: Vec<String> = self
                .devices
                .devices()
                .iter()
                .map(|s| s.id.clone())
                .collect();
            return error_reply(
                &format!("no running device {device:?}"),
                &format!("devices: {}", known.join(", ")),
            );
        };
        let t = crate::clock::global().now_unix();
        match tx.try_send(Marker {
            t,
            value: text.to_string(),
        }) {
            Ok(()) => {
                tracing::info!(device, text, "marker added");
                json!({"ok": true, "device": device, "t": t, "text": text})
            }
            Err(_) => error_reply(
                "the device's marker queue is full or the device is stopping",
                "try again in a moment",
            ),
        }
    }

    /// Are the pipeline's threads turning? (the journal writer and every
    /// device's processing thread looped within `max_age` seconds). The
    /// watchdog is only fed while this holds.
    pub fn pipeline_alive(&self, max_age: f64) -> Result<(), String> {
        let now = crate::clock::global().mono_now();
        let w = self.journal.heartbeat.load();
        if now - w > max_age {
            return Err(format!("journal writer silent for {:.1} s", now - w));
        }
        let devs = self.devices.devices();
        for d in devs {
            let h = d.heartbeat.load();
            if !h.is_nan() && d.state() != DeviceState::Disabled && now - h > max_age {
                return Err(format!(
                    "processing of device {} silent for {:.1} s",
                    d.id,
                    now - h
                ));
            }
        }
        Ok(())
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let devs = self.devices.devices();
        let enabled = devs
            .iter()
            .filter(|d| d.state() != DeviceState::Disabled)
            .count();
        let streaming = devs
            .iter()
            .filter(|d| d.state() == DeviceState::Streaming)
            .count();
        let j = self.journal.snapshot();
        format!(
            "{streaming}/{enabled} devices streaming; backlog {} batches ({}); uplink {}",
            j.pending_batches,
            bytesize::ByteSize(j.pending_bytes),
            self.uplink.snapshot().state.as_str()
        )
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v)
        .unwrap_or_else(|e| error_reply(&format!("internal: {e}"), "report a bug"))
}

/// The health rules, over a status report (pure, unit-tested):
/// - journal: degraded while writes fail;
/// - each enabled device: ok while streaming (degraded if every channel is
///   flat or railed), degraded otherwise;
/// - recording: failing when no enabled device streams 10 s after start.
pub fn health_of(r: &StatusReport, uptime_s: f64) -> HealthReport {
    use crate::dsp::QualityStatus;
    let mut h = HealthReport::new();
    let j = &r.journal;
    if j.state == JournalState::Ok {
        h.put(
            "journal",
            HealthLevel::Ok,
            format!("{} pending batches", j.pending_batches),
        );
    } else {
        h.put(
            "journal",
            HealthLevel::Degraded,
            format!(
                "writes failing, {} batches held in memory: {}",
                j.queued_batches,
                j.last_error.clone().unwrap_or_default()
            ),
        );
    }
    let enabled: Vec<&DeviceReport> = r
        .devices
        .iter()
        .filter(|d| d.state != DeviceState::Disabled)
        .collect();
    let mut streaming = 0;
    for d in &enabled {
        let (level, detail) = match d.state {
            DeviceState::Streaming => {
                streaming += 1;
                let dead = d
                    .quality
                    .iter()
                    .filter(|q| matches!(q.state, QualityStatus::Flat | QualityStatus::Railed))
                    .count();
                if !d.quality.is_empty() && dead == d.quality.len() {
                    (HealthLevel::Degraded, format!("streaming, but all {dead} channels are flat or railed: check electrodes and cabling"))
                } else {
                    (HealthLevel::Ok, format!("{:.1} samples/s", d.samples_per_s))
                }
            }
            DeviceState::Connecting => (HealthLevel::Degraded, "connecting".to_string()),
            other => (
                HealthLevel::Degraded,
                format!(
                    "{}: {}",
                    other.as_str(),
                    d.last_error.clone().unwrap_or_default()
                ),
            ),
        };
        h.put(format!("device:{}", d.id), level, detail);
    }
    if !enabled.is_empty() && streaming == 0 && uptime_s > 10.0 {
        h.put(
            "recording",
            HealthLevel::Failing,
            "no enabled device is streaming",
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::report::{ClockReport, QualityReport, UplinkState};
    use crate::dsp::QualityStatus;

    fn device(id: &str, state: DeviceState, quality: &[QualityStatus]) -> DeviceReport {
        DeviceReport {
            id: id.into(),
            driver: "synthetic".into(),
            state,
            sample_rate: 250.0,
            effective_rate: f64::NAN,
            channels: quality.len(),
            channel_names: vec![],
            samples_total: 1,
            samples_per_s: 250.0,
            dropped_samples: 0,
            gaps: 0,
            last_sample_age_s: Some(0.1),
            last_sample_t: 1.0,
            quality: quality
                .iter()
                .map(|s| QualityReport {
                    channel: "c".into(),
                    state: *s,
                    rms_uv: 1.0,
                    line_noise_ratio: 0.0,
                })
                .collect(),
            band_power: Default::default(),
            last_error: Some("why".into()),
            outlets: Default::default(),
        }
    }

    fn report(devices: Vec<DeviceReport>, journal: JournalState) -> StatusReport {
        StatusReport {
            version: "v".into(),
            uptime_s: 0.0,
            node_id: "n".into(),
            site_id: "s".into(),
            devices,
            journal: crate::journal::JournalStatus {
                state: journal,
                ..Default::default()
            },
            uplink: UplinkReport {
                state: UplinkState::Disabled,
                uploaded_batches: 0,
                quarantined_batches: 0,
                failed_attempts: 0,
                last_success_age_s: None,
                last_error: None,
                in_flight: 0,
                buffered_batches: 0,
                endpoint: None,
            },
            clock: ClockReport {
                wall_offset_s: 0.0,
                steps: vec![],
            },
            systemd: SystemdReport::default(),
        }
    }

    #[test]
    fn health_rules() {
        use QualityStatus::*;
        let ok = device("a", DeviceState::Streaming, &[Ok, Flat]);
        let h = health_of(&report(vec![ok.clone()], JournalState::Ok), 60.0);
        assert_eq!(h.status, HealthLevel::Ok);
        assert_eq!(h.checks["device:a"].status, HealthLevel::Ok);
        // Every channel flat or railed: degraded, with the reason.
        let dead = device("a", DeviceState::Streaming, &[Flat, Railed]);
        let h = health_of(&report(vec![dead], JournalState::Ok), 60.0);
        assert_eq!(h.status, HealthLevel::Degraded);
        assert!(h.checks["device:a"].detail.contains("electrodes"));
        // A failing journal: degraded.
        let h = health_of(&report(vec![ok.clone()], JournalState::Degraded), 60.0);
        assert_eq!(h.checks["journal"].status, HealthLevel::Degraded);
        // Nothing streaming: failing after 10 s, only degraded before.
        let lost = device("a", DeviceState::Disconnected, &[]);
        let h = health_of(&report(vec![lost.clone()], JournalState::Ok), 5.0);
        assert_eq!(h.status, HealthLevel::Degraded);
        assert!(h.checks["device:a"].detail.contains("disconnected: why"));
        let h = health_of(&report(vec![lost], JournalState::Ok), 11.0);
        assert_eq!(h.status, HealthLevel::Failing);
        assert!(h.checks.contains_key("recording"));
        // A disabled device does not count.
        let off = device("b", DeviceState::Disabled, &[]);
        let h = health_of(&report(vec![ok, off], JournalState::Ok), 60.0);
        assert_eq!(h.status, HealthLevel::Ok);
        assert!(!h.checks.contains_key("device:b"));
    }
}
