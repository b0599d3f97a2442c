//! Live outlets on Lab Streaming Layer (contract §10): a device's raw and
//! filtered signal, band powers, quality and markers, published while it
//! records.
//!
//! - [`config`]: `[lsl_outlet] streams = [...]` and its validation;
//! - [`feed`]: the processing stage's side: copies a block into a pooled
//!   buffer and `try_send`s it on a bounded queue (never waits, allocates
//!   nothing once the pool is warm; a full queue drops and counts);
//! - [`thread`]: one outlet thread per device with streams, owning the
//!   liblsl objects ([`crate::lsl_ffi`]), and the [`thread::Outlets`]
//!   handle that re-creates them on a reload.
//!
//! Metadata ([`spec`]) is plain data, built without liblsl: stream name
//! `<device>.<stream>`, source_id `<node>/<device>/<stream>` (stable across
//! restarts and reloads, so inlets recover), channel labels, units and
//! types as in the XDF export. Timestamps are the journal's (unix) minus
//! one constant per daemon ([`lsl_offset`]).

pub mod config;
pub mod feed;
pub mod thread;

pub use config::{OutletSection, StreamKind};
pub use feed::{Chunk, Msg, OutletFeed};
pub use thread::{OutletLink, Outlets};

use crate::lsl_ffi::ChannelFormat;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::OnceLock;

/// Per-stream counters of one device (in its [`crate::telemetry::DeviceStats`]):
/// samples pushed on the outlet and samples dropped before it (full queue,
/// no liblsl). The enabled mask is also what the processing stage reads to
/// know which streams to copy; the consumed mask, whether anyone takes
/// them (what decides how often an LSL device is pulled).
#[derive(Debug, Default)]
pub struct OutletCounters {
    enabled: AtomicU8,
    consumed: AtomicU8,
    pushed: [AtomicU64; 5],
    dropped: [AtomicU64; 5],
}

impl OutletCounters {
    /// The streams currently published, as a mask of [`StreamKind::bit`].
    pub fn enabled(&self) -> u8 {
        self.enabled.load(Relaxed)
    }

    pub fn set_enabled(&self, mask: u8) {
        self.enabled.store(mask, Relaxed);
    }

    /// The published streams with at least one inlet connected, as a mask
    /// of [`StreamKind::bit`] (kept by the outlet thread, within 100 ms of
    /// a change).
    pub fn consumed(&self) -> u8 {
        self.consumed.load(Relaxed)
    }

    pub fn set_consumed(&self, mask: u8) {
        self.consumed.store(mask, Relaxed);
    }

    pub fn wants(&self, k: StreamKind) -> bool {
        self.enabled() & k.bit() != 0
    }

    pub fn add_pushed(&self, k: StreamKind, n: u64) {
        self.pushed[k.index()].fetch_add(n, Relaxed);
    }

    pub fn add_dropped(&self, k: StreamKind, n: u64) {
        self.dropped[k.index()].fetch_add(n, Relaxed);
    }

    pub fn pushed(&self, k: StreamKind) -> u64 {
        self.pushed[k.index()].load(Relaxed)
    }

    pub fn dropped(&self, k: StreamKind) -> u64 {
        self.dropped[k.index()].load(Relaxed)
    }

    /// `{stream: {pushed, dropped}}` for the enabled streams.
    pub fn report(&self) -> BTreeMap<String, crate::control::report::OutletReport> {
        StreamKind::ALL
            .into_iter()
            .filter(|k| self.wants(*k))
            .map(|k| {
                let r = crate::control::report::OutletReport {
                    pushed: self.pushed(k),
                    dropped: self.dropped(k),
                };
                (k.as_str().to_string(), r)
            })
            .collect()
    }
}

/// What the outlets of a device need to describe its streams (known once
/// its driver has opened).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub node_id: String,
    pub device_id: String,
    pub sample_rate: f64,
    pub channel_names: Vec<String>,
    /// The device's `[channels] units` (e.g. `uV`).
    pub units: String,
    /// Band names in the order of the batches' features.
    pub bands: Vec<String>,
    /// Seconds between feature records.
    pub step_s: f64,
}

/// One channel's `desc/channels/channel`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMeta {
    pub label: String,
    pub unit: String,
    pub kind: String,
}

/// Everything an outlet's stream info says.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    pub kind: StreamKind,
    pub name: String,
    pub stream_type: &'static str,
    /// 0 = irregular.
    pub rate: f64,
    pub format: ChannelFormat,
    pub source_id: String,
    pub channels: Vec<ChannelMeta>,
}

fn channel(label: String, unit: &str, kind: &str) -> ChannelMeta {
    ChannelMeta {
        label,
        unit: unit.to_string(),
        kind: kind.to_string(),
    }
}

/// The stream description of `kind` for a device (contract §10).
pub fn spec(layout: &Layout, kind: StreamKind) -> StreamSpec {
    let unit = crate::export::xdf::unit_name(&layout.units);
    let names = &layout.channel_names;
    let feature_rate = 1.0 / layout.step_s;
    let (stream_type, rate, format, channels) = match kind {
        StreamKind::Raw | StreamKind::Filtered => (
            "EEG",
            layout.sample_rate,
            ChannelFormat::Float32,
            names
                .iter()
                .map(|n| channel(n.clone(), unit, "EEG"))
                .collect(),
        ),
        StreamKind::BandPower => {
            let power_unit = format!("{unit}^2");
            let chans = names
                .iter()
                .flat_map(|n| layout.bands.iter().map(move |b| format!("{n}:{b}")))
                .map(|label| channel(label, &power_unit, "bandpower"))
                .collect();
            ("EEG-bandpower", feature_rate, ChannelFormat::Float32, chans)
        }
        StreamKind::Quality => (
            "EEG-quality",
            feature_rate,
            ChannelFormat::Float32,
            names
                .iter()
                .map(|n| channel(n.clone(), unit, "rms"))
                .collect(),
        ),
        StreamKind::Markers => (
            "Markers",
            0.0,
            ChannelFormat::String,
            vec![channel("marker".into(), "", "Marker")],
        ),
    };
    StreamSpec {
        kind,
        name: format!("{}.{}", layout.device_id, kind.as_str()),
        stream_type,
        rate,
        format,
        source_id: format!("{}/{}/{}", layout.node_id, layout.device_id, kind.as_str()),
        channels,
    }
}

/// Seconds to add to an LSL timestamp to get the journal's unix time: one
/// constant for the daemon's life, measured the first time it is asked
/// (`unix_now - lsl_local_clock()`, the LSL reading taken on both sides of
/// the unix one). Outlets stamp `unix - offset`.
pub fn lsl_offset(lsl: &crate::lsl_ffi::Lsl) -> f64 {
    static OFFSET: OnceLock<f64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let a = lsl.local_clock();
        let u = crate::clock::global().now_unix();
        let b = lsl.local_clock();
        let offset = u - (a + b) / 2.0;
        tracing::info!(
            offset_s = offset,
            "LSL outlets: unix time = LSL time + offset"
        );
        offset
    })
}

/// Liblsl buffers this many bytes per consumer at most (a consumer that
/// stops pulling loses the oldest beyond it, never the journal's samples).
const CONSUMER_BUFFER_BYTES: f64 = 64.0 * 1024.0 * 1024.0;

/// Seconds of data an outlet buffers for a slow consumer: 30 s, less
/// when that would exceed [`CONSUMER_BUFFER_BYTES`], at least 1 s.
/// Irregular (markers): liblsl counts hundreds of samples; 30 = 3000.
pub fn max_buffered(spec: &StreamSpec) -> i32 {
    if spec.rate <= 0.0 {
        return 30;
    }
    let per_s = spec.rate * spec.channels.len() as f64 * 4.0;
    (CONSUMER_BUFFER_BYTES / per_s).clamp(1.0, 30.0) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            node_id: "node-1".into(),
            device_id: "cap".into(),
            sample_rate: 250.0,
            channel_names: vec!["Fz".into(), "Cz".into()],
            units: "uV".into(),
            bands: vec!["alpha".into(), "beta".into(), "theta".into()],
            step_s: 0.5,
        }
    }

    #[test]
    fn signal_streams_carry_the_devices_rate_and_xdf_metadata() {
        for k in [StreamKind::Raw, StreamKind::Filtered] {
            let s = spec(&layout(), k);
            assert_eq!(s.name, format!("cap.{}", k.as_str()));
            assert_eq!(s.source_id, format!("node-1/cap/{}", k.as_str()));
            assert_eq!((s.stream_type, s.rate), ("EEG", 250.0));
            assert_eq!(s.format, ChannelFormat::Float32);
            let labels: Vec<&str> = s.channels.iter().map(|c| c.label.as_str()).collect();
            assert_eq!(labels, ["Fz", "Cz"]);
            assert!(s
                .channels
                .iter()
                .all(|c| c.unit == "microvolts" && c.kind == "EEG"));
        }
    }

    #[test]
    fn band_power_has_a_channel_per_channel_and_band_at_the_feature_rate() {
        let s = spec(&layout(), StreamKind::BandPower);
        assert_eq!(
            (s.name.as_str(), s.stream_type),
            ("cap.band_power", "EEG-bandpower")
        );
        assert_eq!(s.rate, 2.0, "1 / step_s, not the device's rate");
        let labels: Vec<&str> = s.channels.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(
            labels,
            ["Fz:alpha", "Fz:beta", "Fz:theta", "Cz:alpha", "Cz:beta", "Cz:theta"]
        );
        assert_eq!(s.channels[0].unit, "microvolts^2");
        let q = spec(&layout(), StreamKind::Quality);
        assert_eq!(
            (q.stream_type, q.rate, q.channels.len()),
            ("EEG-quality", 2.0, 2)
        );
        let m = spec(&layout(), StreamKind::Markers);
        assert_eq!((m.stream_type, m.rate), ("Markers", 0.0));
        assert_eq!(m.format, ChannelFormat::String);
        assert_eq!(m.channels.len(), 1);
        assert_eq!(m.source_id, "node-1/cap/markers");
    }

    #[test]
    fn consumer_buffers_are_bounded_in_bytes() {
        let mut l = layout();
        assert_eq!(max_buffered(&spec(&l, StreamKind::Filtered)), 30);
        l.sample_rate = 30_000.0;
        l.channel_names = (0..384).map(|i| format!("c{i}")).collect();
        assert_eq!(max_buffered(&spec(&l, StreamKind::Raw)), 1);
        assert_eq!(max_buffered(&spec(&l, StreamKind::Markers)), 30);
    }

    #[test]
    fn counters_report_enabled_streams_only() {
        let c = OutletCounters::default();
        c.set_enabled(StreamKind::Filtered.bit() | StreamKind::Markers.bit());
        c.add_pushed(StreamKind::Filtered, 25);
        c.add_dropped(StreamKind::Filtered, 5);
        c.add_pushed(StreamKind::Markers, 1);
        let r = c.report();
        assert_eq!(r.keys().collect::<Vec<_>>(), ["filtered", "markers"]);
        assert_eq!((r["filtered"].pushed, r["filtered"].dropped), (25, 5));
        assert!(!c.wants(StreamKind::Raw));
    }
}
