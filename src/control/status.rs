//! Answers to socket requests, built from the live counters.

use super::protocol::{error_reply, Request};
use crate::journal::JournalShared;
use crate::state::{DeviceState, DeviceStats};
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// A device is `stalled` when streaming but silent this long (plus one chunk).
pub const STALL_AFTER_S: f64 = 2.0;

/// Everything the socket reads.
pub struct DaemonState {
    pub version: &'static str,
    pub started: Instant,
    pub node_id: String,
    pub site_id: String,
    pub devices: RwLock<Vec<Arc<DeviceStats>>>,
    pub journal: Arc<JournalShared>,
    /// The uplink's live figures (state `disabled` when not enabled).
    pub uplink: Arc<crate::uplink::UplinkShared>,
}

impl DaemonState {
    /// Seconds since the daemon started (the clock of `last_sample_mono`).
    fn now_mono(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn device_state(&self, d: &DeviceStats) -> DeviceState {
        let s = d.state();
        if s == DeviceState::Streaming {
            let age = self.last_sample_age(d);
            let chunk = 1.0 / d.sample_rate.load().max(1.0);
            if age.is_none_or(|a| a > STALL_AFTER_S + chunk)
                && self.now_mono() > STALL_AFTER_S + chunk
            {
                return DeviceState::Stalled;
            }
        }
        s
    }

    fn last_sample_age(&self, d: &DeviceStats) -> Option<f64> {
        let m = d.last_sample_mono.load();
        (!m.is_nan()).then(|| (self.now_mono() - m).max(0.0))
    }

    pub fn device_json(&self, d: &DeviceStats) -> Value {
        use std::sync::atomic::Ordering::Relaxed;
        let names = d
            .channel_names
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default();
        let features = d.features.lock().map(|f| f.clone()).unwrap_or_default();
        let band_power: serde_json::Map<String, Value> = features
            .band_power
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "id": d.id,
            "driver": d.driver,
            "state": self.device_state(d).as_str(),
            "sample_rate": d.sample_rate.load(),
            "channels": d.channels.load(Relaxed),
            "channel_names": names,
            "samples_total": d.samples_total.load(Relaxed),
            "samples_per_s": (d.samples_per_s.load() * 100.0).round() / 100.0,
            "dropped_samples": d.dropped_samples.load(Relaxed),
            "gaps": d.gaps.load(Relaxed),
            "last_sample_age_s": self.last_sample_age(d),
            "last_sample_t": d.last_sample_unix.load(),
            "quality": features.quality,
            "band_power": band_power,
            "last_error": d.last_error(),
        })
    }

    fn devices_json(&self) -> Value {
        let devs = self.devices.read().map(|d| d.clone()).unwrap_or_default();
        Value::Array(devs.iter().map(|d| self.device_json(d)).collect())
    }

    fn journal_json(&self) -> Value {
        serde_json::to_value(self.journal.snapshot()).unwrap_or(Value::Null)
    }

    fn uplink_json(&self) -> Value {
        self.uplink.json()
    }

    pub fn status_json(&self) -> Value {
        json!({
            "version": self.version,
            "uptime_s": (self.now_mono() * 10.0).round() / 10.0,
            "node_id": self.node_id,
            "site_id": self.site_id,
            "devices": self.devices_json(),
            "journal": self.journal_json(),
            "uplink": self.uplink_json(),
        })
    }

    /// `ok` / `degraded` / `failing`, with one check per concern.
    pub fn health_json(&self) -> Value {
        let mut checks = serde_json::Map::new();
        let mut worst = 0u8;
        let mut put = |name: String, level: u8, detail: String| {
            worst = worst.max(level);
            let status = ["ok", "degraded", "failing"][level as usize];
            checks.insert(name, json!({"status": status, "detail": detail}));
        };
        let j = self.journal.snapshot();
        if j.state == "ok" {
            put(
                "journal".into(),
                0,
                format!("{} pending batches", j.pending_batches),
            );
        } else {
            put(
                "journal".into(),
                1,
                format!(
                    "writes failing, {} batches held in memory: {}",
                    j.queued_batches,
                    j.last_error.unwrap_or_default()
                ),
            );
        }
        let devs = self.devices.read().map(|d| d.clone()).unwrap_or_default();
        let enabled: Vec<_> = devs
            .iter()
            .filter(|d| d.state() != DeviceState::Disabled)
            .collect();
        let mut streaming = 0;
        for d in &enabled {
            let s = self.device_state(d);
            let (level, detail) = match s {
                DeviceState::Streaming => {
                    streaming += 1;
                    let quality = d
                        .features
                        .lock()
                        .map(|f| f.quality.clone())
                        .unwrap_or_default();
                    let dead = quality
                        .iter()
                        .filter(|q| q.state == "flat" || q.state == "railed")
                        .count();
                    if !quality.is_empty() && dead == quality.len() {
                        (1, format!("streaming, but all {dead} channels are flat or railed: check electrodes and cabling"))
                    } else {
                        (0, format!("{:.1} samples/s", d.samples_per_s.load()))
                    }
                }
                DeviceState::Connecting => (1, "connecting".to_string()),
                other => (
                    1,
                    format!("{}: {}", other.as_str(), d.last_error().unwrap_or_default()),
                ),
            };
            put(format!("device:{}", d.id), level, detail);
        }
        if !enabled.is_empty() && streaming == 0 && self.now_mono() > 10.0 {
            put(
                "recording".into(),
                2,
                "no enabled device is streaming".into(),
            );
        }
        let overall = ["ok", "degraded", "failing"][worst as usize];
        json!({"status": overall, "checks": checks})
    }

    pub fn answer(&self, req: &Request, _peer_uid: Option<u32>) -> Value {
        match req {
            Request::Status => self.status_json(),
            Request::Health => self.health_json(),
            Request::Devices => json!({"devices": self.devices_json()}),
            Request::Journal => self.journal_json(),
            Request::Uplink => self.uplink_json(),
            Request::Version => json!({"version": self.version}),
            Request::Flush => {
                if self.uplink.request_flush() {
                    json!({"ok": true, "uplink": self.uplink_json(), "journal": {"pending_batches": self.journal.snapshot().pending_batches}})
                } else {
                    error_reply(
                        "the uplink is disabled: nothing to flush",
                        "set [uplink] enabled = true with an endpoint and token_file",
                    )
                }
            }
            Request::Mark { .. } | Request::Reload => error_reply(
                "this command is not available in this version of neuroedge",
                "available: status, health, devices, journal, uplink, version",
            ),
        }
    }
}
