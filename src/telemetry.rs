//! Live per-device telemetry shared between a device's threads and the
//! control plane (status socket, metrics, health, `mark`): atomics for
//! numbers, small mutexes for rare text, and the [`DeviceRegistry`] the
//! supervisor publishes the running devices in.

use crate::batch::Marker;
use crate::sync::AtomicF64;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Connecting,
    Streaming,
    Stalled,
    Disconnected,
    Error,
    Disabled,
}

impl DeviceState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => DeviceState::Connecting,
            1 => DeviceState::Streaming,
            2 => DeviceState::Stalled,
            3 => DeviceState::Disconnected,
            4 => DeviceState::Error,
            _ => DeviceState::Disabled,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            DeviceState::Connecting => 0,
            DeviceState::Streaming => 1,
            DeviceState::Stalled => 2,
            DeviceState::Disconnected => 3,
            DeviceState::Error => 4,
            DeviceState::Disabled => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Connecting => "connecting",
            DeviceState::Streaming => "streaming",
            DeviceState::Stalled => "stalled",
            DeviceState::Disconnected => "disconnected",
            DeviceState::Error => "error",
            DeviceState::Disabled => "disabled",
        }
    }
}

/// The latest quality of one channel, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct QualitySnapshot {
    pub channel: String,
    pub state: crate::dsp::QualityStatus,
    #[serde(with = "float")]
    pub rms_uv: f64,
    #[serde(with = "float")]
    pub line_noise_ratio: f64,
}

#[derive(Debug, Clone, Default)]
pub struct FeatureSnapshot {
    pub quality: Vec<QualitySnapshot>,
    pub band_power: Vec<(String, Vec<f64>)>,
}

pub struct DeviceStats {
    pub id: String,
    pub driver: &'static str,
    state: AtomicU8,
    pub sample_rate: AtomicF64,
    pub channels: AtomicUsize,
    pub samples_total: AtomicU64,
    /// Samples lost inside neuroedge (ring overflow, journal refusal).
    pub dropped_samples: AtomicU64,
    /// Gap events (device-revealed or internal).
    pub gaps: AtomicU64,
    /// Unix time of the newest sample.
    pub last_sample_unix: AtomicF64,
    /// Monotonic seconds (daemon clock) when the newest sample was processed.
    pub last_sample_mono: AtomicF64,
    pub samples_per_s: AtomicF64,
    /// The rate the device really delivers, measured by the timestamp fit.
    pub effective_rate: AtomicF64,
    /// Monotonic seconds ([`crate::clock`]) of the processing thread's
    /// latest loop (NaN before it runs): the watchdog's liveness check.
    pub heartbeat: AtomicF64,
    /// Journal-wide index after the last processed sample (u64::MAX: none).
    next_sample: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub channel_names: Mutex<Vec<String>>,
    pub features: Mutex<FeatureSnapshot>,
    /// The live view of the device's current run (set when its pipeline
    /// starts; read by `subscribe`).
    view: Mutex<Option<Arc<crate::view::View>>>,
    /// LSL outlets: streams published, pushed and dropped per stream.
    pub outlets: Arc<crate::outlet::OutletCounters>,
}

impl DeviceStats {
    pub fn new(id: &str, driver: &'static str, enabled: bool) -> Self {
        DeviceStats {
            id: id.to_string(),
            driver,
            state: AtomicU8::new(
                if enabled {
                    DeviceState::Connecting
                } else {
                    DeviceState::Disabled
                }
                .to_u8(),
            ),
            sample_rate: AtomicF64::new(0.0),
            channels: AtomicUsize::new(0),
            samples_total: AtomicU64::new(0),
            dropped_samples: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            last_sample_unix: AtomicF64::new(0.0),
            last_sample_mono: AtomicF64::new(f64::NAN),
            samples_per_s: AtomicF64::new(0.0),
            effective_rate: AtomicF64::new(f64::NAN),
            heartbeat: AtomicF64::new(f64::NAN),
            next_sample: AtomicU64::new(u64::MAX),
            last_error: Mutex::new(None),
            channel_names: Mutex::new(Vec::new()),
            features: Mutex::new(FeatureSnapshot::default()),
            view: Mutex::new(None),
            outlets: Arc::default(),
        }
    }

    pub fn state(&self) -> DeviceState {
        DeviceState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Set the state; returns the previous one.
    pub fn set_state(&self, s: DeviceState) -> DeviceState {
        DeviceState::from_u8(self.state.swap(s.to_u8(), Ordering::Relaxed))
    }

    pub fn set_error(&self, e: Option<String>) {
        *crate::sync::lock(&self.last_error) = e;
    }

    pub fn set_next_sample(&self, n: u64) {
        self.next_sample.store(n, Ordering::Relaxed);
    }

    /// Where the next run of this device continues its sample index.
    pub fn next_sample(&self) -> Option<u64> {
        let n = self.next_sample.load(Ordering::Relaxed);
        (n != u64::MAX).then_some(n)
    }

    /// Publish the live view of a new pipeline (the runner, once per run).
    pub fn set_view(&self, v: Option<Arc<crate::view::View>>) {
        *crate::sync::lock(&self.view) = v;
    }

    /// The live view, once the device has reported its layout.
    pub fn view(&self) -> Option<Arc<crate::view::View>> {
        crate::sync::lock(&self.view).clone()
    }

    pub fn last_error(&self) -> Option<String> {
        crate::sync::lock(&self.last_error).clone()
    }
}

/// The running devices as the control plane sees them. The supervisor
/// publishes; the socket, metrics, health and `mark` read. Neither side
/// knows the other's types.
#[derive(Default)]
pub struct DeviceRegistry {
    devices: RwLock<Vec<Arc<DeviceStats>>>,
    /// Where `mark` sends a running device's markers.
    markers: RwLock<HashMap<String, crossbeam_channel::Sender<Marker>>>,
}

impl DeviceRegistry {
    /// Replace the published set (the supervisor, after a start, stop or
    /// reload).
    pub fn publish(
        &self,
        devices: Vec<Arc<DeviceStats>>,
        markers: HashMap<String, crossbeam_channel::Sender<Marker>>,
    ) {
        *crate::sync::write(&self.devices) = devices;
        *crate::sync::write(&self.markers) = markers;
    }

    /// Every device of the config, running or not, in file order.
    pub fn devices(&self) -> Vec<Arc<DeviceStats>> {
        crate::sync::read(&self.devices).clone()
    }

    /// The marker queue of a running device.
    pub fn markers(&self, id: &str) -> Option<crossbeam_channel::Sender<Marker>> {
        crate::sync::read(&self.markers).get(id).cloned()
    }
}

/// An f64 that is `null` on the wire when not finite (JSON has no NaN).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Float(#[serde(with = "float")] pub f64);

/// `#[serde(with = "float")]`: non-finite as `null`, `null` as NaN.
pub mod float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}
