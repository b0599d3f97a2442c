//! The status report of contract §5, typed. Built in one place
//! ([`crate::control::DaemonState::report`]), serialized on the status
//! socket, and read back as these types by `neuroedge status`, `/metrics`,
//! health and the tests: a renamed field is a compile error, not a silently
//! missing column.
//!
//! Numbers that may be unknown (a rate before the first fit, the RMS of an
//! empty window) are `NaN` in memory and `null` on the wire.

use crate::clock::ClockStep;
use crate::journal::JournalStatus;
pub use crate::telemetry::{float, DeviceState, Float, QualitySnapshot as QualityReport};
pub use crate::uplink::UplinkState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub uptime_s: f64,
    pub node_id: String,
    pub site_id: String,
    pub devices: Vec<DeviceReport>,
    pub journal: JournalStatus,
    pub uplink: UplinkReport,
    pub clock: ClockReport,
    /// systemd notifications (absent from older daemons' replies).
    #[serde(default)]
    pub systemd: SystemdReport,
}

impl StatusReport {
    pub fn device(&self, id: &str) -> Option<&DeviceReport> {
        self.devices.iter().find(|d| d.id == id)
    }
}

/// One device in `status` (and `devices`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    pub id: String,
    pub driver: String,
    pub state: DeviceState,
    #[serde(with = "float")]
    pub sample_rate: f64,
    /// The rate the timestamp fit measures (null before the first fit).
    #[serde(with = "float")]
    pub effective_rate: f64,
    pub channels: usize,
    pub channel_names: Vec<String>,
    pub samples_total: u64,
    #[serde(with = "float")]
    pub samples_per_s: f64,
    pub dropped_samples: u64,
    pub gaps: u64,
    /// Seconds since the newest sample was processed (null before any).
    pub last_sample_age_s: Option<f64>,
    /// Unix time of the newest sample (0 before any).
    #[serde(with = "float")]
    pub last_sample_t: f64,
    pub quality: Vec<QualityReport>,
    /// Band name → power per channel (latest feature window).
    pub band_power: BTreeMap<String, Vec<Float>>,
    pub last_error: Option<String>,
    /// LSL outlets by stream (`[lsl_outlet]`; empty when none).
    #[serde(default)]
    pub outlets: BTreeMap<String, OutletReport>,
}

/// One LSL outlet of a device: samples pushed, and samples dropped before
/// the outlet (its queue full, liblsl missing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutletReport {
    pub pushed: u64,
    pub dropped: u64,
}

/// The `uplink` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkReport {
    pub state: UplinkState,
    pub uploaded_batches: u64,
    pub quarantined_batches: u64,
    pub failed_attempts: u64,
    pub last_success_age_s: Option<f64>,
    pub last_error: Option<String>,
    pub in_flight: usize,
    pub buffered_batches: usize,
    pub endpoint: Option<String>,
}

/// Wall-clock steps seen (see docs/timing.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockReport {
    pub wall_offset_s: f64,
    pub steps: Vec<ClockStep>,
}

/// systemd notifications sent and dropped (`NOTIFY_SOCKET` not read:
/// dropped, never waited on).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemdReport {
    pub notify_sent: u64,
    pub notify_dropped: u64,
}

/// `ok` < `degraded` < `failing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthLevel {
    Ok,
    Degraded,
    Failing,
}

/// One concern of `health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub status: HealthLevel,
    pub detail: String,
}

/// The `health` reply: the worst check decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub status: HealthLevel,
    pub checks: BTreeMap<String, HealthCheck>,
}

impl HealthReport {
    pub fn new() -> Self {
        HealthReport {
            status: HealthLevel::Ok,
            checks: BTreeMap::new(),
        }
    }

    pub fn put(&mut self, name: impl Into<String>, status: HealthLevel, detail: impl Into<String>) {
        self.status = self.status.max(status);
        self.checks.insert(
            name.into(),
            HealthCheck {
                status,
                detail: detail.into(),
            },
        );
    }
}

impl Default for HealthReport {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_numbers_travel_as_null_and_states_as_the_contracts_names() {
        let d = DeviceReport {
            id: "eeg".into(),
            driver: "synthetic".into(),
            state: DeviceState::Streaming,
            sample_rate: 250.0,
            effective_rate: f64::NAN,
            channels: 1,
            channel_names: vec!["Fz".into()],
            samples_total: 10,
            samples_per_s: 250.0,
            dropped_samples: 0,
            gaps: 0,
            last_sample_age_s: None,
            last_sample_t: 0.0,
            quality: vec![QualityReport {
                channel: "Fz".into(),
                state: crate::dsp::QualityStatus::Railed,
                rms_uv: f64::NAN,
                line_noise_ratio: 0.1,
            }],
            band_power: [("alpha".to_string(), vec![Float(f64::INFINITY)])].into(),
            last_error: None,
            outlets: [(
                "filtered".to_string(),
                OutletReport {
                    pushed: 5,
                    dropped: 1,
                },
            )]
            .into(),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["state"], "streaming");
        assert_eq!(v["outlets"]["filtered"]["pushed"], 5);
        assert_eq!(v["outlets"]["filtered"]["dropped"], 1);
        assert!(v["effective_rate"].is_null());
        assert_eq!(v["quality"][0]["state"], "railed");
        assert!(v["quality"][0]["rms_uv"].is_null());
        assert!(v["band_power"]["alpha"][0].is_null());
        let back: DeviceReport = serde_json::from_value(v).unwrap();
        assert!(back.effective_rate.is_nan() && back.quality[0].rms_uv.is_nan());
        assert_eq!(back.state, DeviceState::Streaming);
        let mut h = HealthReport::new();
        h.put("a", HealthLevel::Degraded, "x");
        h.put("b", HealthLevel::Ok, "y");
        assert_eq!(h.status, HealthLevel::Degraded);
        assert_eq!(serde_json::to_value(&h).unwrap()["status"], "degraded");
    }
}
