//! Answers to socket requests, built from the live counters.

use super::protocol::{error_reply, Request};
use crate::batch::Marker;
use crate::journal::JournalShared;
use crate::state::{DeviceState, DeviceStats};
use serde_json::{json, Value};
use std::collections::HashMap;
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
    /// Where `mark` sends a device's markers (running devices only).
    pub markers: RwLock<HashMap<String, crossbeam_channel::Sender<Marker>>>,
    /// The supervisor thread (reload).
    pub commands: Option<crossbeam_channel::Sender<crate::supervisor::Command>>,
    /// Uids allowed to change things besides root and the daemon's own.
    pub control_uids: Vec<u32>,
}

/// How long `reload` waits for the supervisor before answering.
const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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
            "effective_rate": (d.effective_rate.load() * 1000.0).round() / 1000.0,
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
        let clock = crate::clock::global();
        json!({
            "version": self.version,
            "uptime_s": (self.now_mono() * 10.0).round() / 10.0,
            "node_id": self.node_id,
            "site_id": self.site_id,
            "devices": self.devices_json(),
            "journal": self.journal_json(),
            "uplink": self.uplink_json(),
            "clock": {
                "wall_offset_s": (clock.wall_offset() * 1000.0).round() / 1000.0,
                "steps": clock.steps_from(0).0,
            },
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
        if j.state == crate::journal::JournalState::Ok {
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
            let Some(tx) = &self.commands else {
                return error_reply("reload is not available here", "restart neuroedge");
            };
            let (rtx, rrx) = tokio::sync::oneshot::channel();
            if tx
                .send(crate::supervisor::Command::Reload(Some(rtx)))
                .is_err()
            {
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
            Request::Status => self.status_json(),
            Request::Health => self.health_json(),
            Request::Devices => json!({"devices": self.devices_json()}),
            Request::Journal => self.journal_json(),
            Request::Uplink => self.uplink_json(),
            Request::Version => json!({"version": self.version}),
            Request::Flush => {
                if !self.authorized(peer_uid) {
                    return self.refused("flush", peer_uid);
                }
                if self.uplink.request_flush() {
                    json!({"ok": true, "uplink": self.uplink_json(), "journal": {"pending_batches": self.journal.snapshot().pending_batches}})
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
        let tx = self
            .markers
            .read()
            .ok()
            .and_then(|m| m.get(device).cloned());
        let Some(tx) = tx else {
            let known: Vec<String> = self
                .devices
                .read()
                .map(|d| d.iter().map(|s| s.id.clone()).collect())
                .unwrap_or_default();
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
        let devs = self.devices.read().map(|d| d.clone()).unwrap_or_default();
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
        let devs = self.devices.read().map(|d| d.clone()).unwrap_or_default();
        let enabled = devs
            .iter()
            .filter(|d| d.state() != DeviceState::Disabled)
            .count();
        let streaming = devs
            .iter()
            .filter(|d| self.device_state(d) == DeviceState::Streaming)
            .count();
        let j = self.journal.snapshot();
        let up = self.uplink.json();
        format!(
            "{streaming}/{enabled} devices streaming; backlog {} batches ({}); uplink {}",
            j.pending_batches,
            bytesize::ByteSize(j.pending_bytes),
            up.get("state").and_then(Value::as_str).unwrap_or("?")
        )
    }
}
