//! Device drivers. A driver only turns device bytes into frames
//! `(timestamp, [f32; channels])`, markers and gap reports; it knows nothing
//! of filters, disks or networks. Reconnects with backoff live in
//! [`runner`], not in the drivers.

pub mod brainflow;
pub mod brainflow_ffi;
pub mod lsl;
pub mod openbci_cyton;
pub mod runner;
pub mod serial;
pub mod serial_ascii;
pub mod synthetic;
pub mod timing;

use crate::batch::Marker;
use crate::clock::Clock;
use crate::config::{Connection, DeviceConfig};
use crate::ring::Producer;
pub use timing::Timing;

/// What a device told us about its stream once connected.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub sample_rate: f64,
    pub channels: usize,
    pub channel_names: Vec<String>,
    /// How long the device normally goes between deliveries (seconds):
    /// stall detection allows this on top of its 2 s.
    pub chunk_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device could not be reached (retry later).
    #[error("{0}")]
    Unavailable(String),
    /// The device was there and went away mid-stream (retry later).
    #[error("{0}")]
    Disconnected(String),
    /// Retrying will not help until the configuration changes.
    #[error("{0}")]
    Fatal(String),
}

/// Where a driver's output goes: frames into the ring (stamped by the
/// device's [`Timing`]), markers aside. All times a driver hands in are
/// seconds on the monotonic timeline ([`Sink::mono_now`],
/// [`Sink::mono_of`]); the sink maps them to unix seconds.
pub struct Sink<'a> {
    pub frames: &'a mut Producer,
    pub markers: &'a crossbeam_channel::Sender<Marker>,
    pub timing: &'a mut Timing,
    pub clock: &'a Clock,
}

impl Sink<'_> {
    /// Now, on the monotonic timeline.
    pub fn mono_now(&self) -> f64 {
        self.clock.mono_now()
    }

    /// An instant on the monotonic timeline.
    pub fn mono_of(&self, at: std::time::Instant) -> f64 {
        self.clock.mono_of(at)
    }

    /// A frame from a device without a clock, received at `received`
    /// (monotonic seconds; frames of one read may share it): stamped by
    /// the dejitter fit.
    /// A frame arriving far later than the fit expects (the device was
    /// silent for over a second) follows a gap estimated from time, and
    /// the fit starts afresh.
    #[inline]
    pub fn push_received(&mut self, received: f64, values: &[f32]) {
        let mut n = self.frames.next_index();
        let silent = self.timing.unexplained_gap(n, received);
        if silent > 0 {
            self.frames.skip(silent);
            self.timing.restart();
            n = self.frames.next_index();
        }
        let t = self.timing.stamp_received(n, received);
        self.frames.push(self.clock.unix_of_mono(t), values);
    }

    /// A frame stamped by the device's own clock, already mapped to the
    /// monotonic timeline (LSL). Kept monotonic.
    #[inline]
    pub fn push_stamped(&mut self, device_t: f64, values: &[f32]) {
        let n = self.frames.next_index();
        let t = self.timing.stamp_device(n, device_t);
        self.frames.push(self.clock.unix_of_mono(t), values);
    }

    /// The device revealed `missing` samples lost before the next frame.
    pub fn skip(&mut self, missing: u64) {
        self.frames.skip(missing);
    }

    /// For a wrapping sample counter (`modulus` values, e.g. the Cyton's
    /// 256): the samples lost before a frame received at `received` whose
    /// counter shows `counted` lost, including whole wraps estimated from
    /// time. Pass the result to [`Sink::skip`].
    pub fn missing_with_wraps(&self, received: f64, counted: u64, modulus: u64) -> u64 {
        self.timing
            .missing_with_wraps(self.frames.next_index(), received, counted, modulus)
    }

    /// An event marker at monotonic time `t` (lands in the batch covering
    /// that time). Dropped with a warning if the processing thread is far
    /// behind (the queue holds 1024).
    pub fn marker(&mut self, t: f64, value: String) {
        let m = Marker {
            t: self.clock.unix_of_mono(t),
            value,
        };
        if self.markers.try_send(m).is_err() {
            tracing::warn!("marker queue full: marker dropped");
        }
    }

    /// The ring is (almost) full: a source that can wait should.
    pub fn nearly_full(&self) -> bool {
        self.frames.nearly_full()
    }
}

/// One device driver.
pub trait Source: Send {
    /// Connect (blocking) and describe the stream.
    fn open(&mut self) -> Result<StreamInfo, SourceError>;
    /// Deliver what is available, blocking at most about 100 ms so that
    /// stop requests and stalls are seen promptly. Returning with nothing
    /// delivered is fine; the runner notices a device that stays silent.
    fn read(&mut self, sink: &mut Sink<'_>) -> Result<(), SourceError>;
    /// Deliver whatever the driver still holds back (called once before
    /// [`Source::close`] when the device stops).
    fn drain(&mut self, _sink: &mut Sink<'_>) {}
    /// Stop streaming and release the device.
    fn close(&mut self);
}

/// Build the driver for a device file. `stop` is the runner's stop
/// request, for drivers whose connection set-up takes long.
pub fn build(
    cfg: &DeviceConfig,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<Box<dyn Source>, SourceError> {
    match &cfg.connection {
        Connection::Synthetic(c) => Ok(Box::new(synthetic::Synthetic::new(c.clone()))),
        Connection::Brainflow(c) => Ok(Box::new(brainflow::Brainflow::new((**c).clone()))),
        Connection::Lsl(c) => Ok(Box::new(lsl::Lsl::new(c.clone(), stop.clone()))),
        Connection::OpenbciCyton(c) => Ok(Box::new(openbci_cyton::Cyton::new(&cfg.id, c.clone()))),
        Connection::SerialAscii(c) => {
            Ok(Box::new(serial_ascii::SerialAscii::new(&cfg.id, c.clone())))
        }
    }
}

/// Default channel names: "ch1", "ch2", ...
pub fn default_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("ch{i}")).collect()
}
