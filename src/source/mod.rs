//! Device drivers. A driver only turns device bytes into frames
//! `(timestamp, [f32; channels])`, markers and gap reports; it knows nothing
//! of filters, disks, networks or sockets. Reconnects with backoff, stall
//! detection and the processing stage live in [`crate::device`].
//!
//! Each driver is one file holding its `[connection]` config struct (with
//! [`DriverConfig`]: name, defaults, `validate()`, `build()`) beside the
//! driver itself; [`drivers!`] below is the registry — adding a driver is
//! its file plus one line there.

pub mod brainflow;
pub mod brainflow_ffi;
pub mod lsl;
pub mod openbci_cyton;
pub mod serial;
pub mod serial_ascii;
pub mod synthetic;
pub mod timing;
pub mod usb_serial;

use crate::batch::Marker;
use crate::clock::Clock;
use crate::outlet::OutletCounters;
use crate::ring::Producer;
pub use crate::stream::StreamInfo;
use crate::validate::Findings;
use crate::view::{Signal, View};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
pub use timing::Timing;

/// A driver's `[connection]` table: parsed (serde, unknown keys refused),
/// checked, and turned into the driver.
pub trait DriverConfig:
    Sized + Clone + PartialEq + std::fmt::Debug + serde::de::DeserializeOwned
{
    /// The driver's name in device files (`driver = "..."`).
    const NAME: &'static str;

    /// The connection when the file has no `[connection]` table; `None`
    /// when the table is required.
    fn default_connection() -> Option<Self> {
        None
    }

    /// Semantic checks, keys relative to `[connection]`.
    fn validate(&self, out: &mut Findings);

    /// Sample rate and channel count when the config states them (drivers
    /// that learn them from the device say `None`).
    fn declared_layout(&self) -> Option<(f64, usize)> {
        None
    }

    /// Make relative paths relative to `dir`, the device file's folder.
    fn resolve_paths(&mut self, _dir: &Path) {}

    /// Whether the source can wait for the pipeline (only a source that
    /// produces data on demand, such as the unpaced synthetic one); a real
    /// device cannot, and its batches are dropped as counted gaps instead.
    fn can_wait(&self) -> bool {
        false
    }

    /// The driver, ready to `open()`.
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Source>, SourceError>;
}

/// What building a driver may need besides its config.
pub struct BuildContext<'a> {
    pub device_id: &'a str,
    /// The runner's stop request, for drivers whose set-up takes long.
    pub stop: &'a Arc<AtomicBool>,
}

/// Something that handles any driver's connection type (the config loader
/// parses device files with it, so that errors inside `[connection]` carry
/// line:column too).
pub trait ConnectionVisitor {
    type Output;
    fn visit<C: DriverConfig>(self, wrap: fn(C) -> Connection) -> Self::Output;
}

/// The registry: one line per driver, `Variant => module::ConnectionType`.
macro_rules! drivers {
    ($($variant:ident => $conn:ty),* $(,)?) => {
        /// Which driver reads a device (`driver = "..."` in its file).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum DriverKind {
            $($variant),*
        }

        /// A device's typed `[connection]` table.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Connection {
            $($variant($conn)),*
        }

        impl DriverKind {
            /// Every driver's name, as written in device files.
            pub const NAMES: &'static [&'static str] = &[$(<$conn as DriverConfig>::NAME),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(DriverKind::$variant => <$conn as DriverConfig>::NAME),*
                }
            }

            pub fn from_name(name: &str) -> Option<Self> {
                $(if name == <$conn as DriverConfig>::NAME {
                    return Some(DriverKind::$variant);
                })*
                None
            }

            /// Let `v` handle this driver's connection type.
            pub fn visit<V: ConnectionVisitor>(self, v: V) -> V::Output {
                match self {
                    $(DriverKind::$variant => v.visit::<$conn>(Connection::$variant)),*
                }
            }
        }

        impl Connection {
            pub fn kind(&self) -> DriverKind {
                match self {
                    $(Connection::$variant(_) => DriverKind::$variant),*
                }
            }

            pub fn validate(&self, out: &mut Findings) {
                match self {
                    $(Connection::$variant(c) => c.validate(out)),*
                }
            }

            pub fn declared_layout(&self) -> Option<(f64, usize)> {
                match self {
                    $(Connection::$variant(c) => c.declared_layout()),*
                }
            }

            pub fn resolve_paths(&mut self, dir: &Path) {
                match self {
                    $(Connection::$variant(c) => c.resolve_paths(dir)),*
                }
            }

            pub fn can_wait(&self) -> bool {
                match self {
                    $(Connection::$variant(c) => c.can_wait()),*
                }
            }

            /// The driver for this connection.
            pub fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Source>, SourceError> {
                match self {
                    $(Connection::$variant(c) => c.build(ctx)),*
                }
            }
        }
    };
}

drivers! {
    Synthetic => synthetic::SyntheticConnection,
    OpenbciCyton => openbci_cyton::CytonConnection,
    SerialAscii => serial_ascii::SerialAsciiConnection,
    Brainflow => brainflow::BrainflowConnection,
    Lsl => lsl::LslConnection,
}

impl<'de> serde::Deserialize<'de> for DriverKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DriverKind::from_name(&s)
            .ok_or_else(|| serde::de::Error::unknown_variant(&s, DriverKind::NAMES))
    }
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
    /// The device's LSL outlets and live view (read: who watches it live).
    pub outlets: &'a OutletCounters,
    pub view: Option<&'a View>,
}

impl Sink<'_> {
    /// Whether something takes the device's samples live: an inlet is
    /// connected to one of the device's LSL outlets, or a socket subscriber
    /// reads the raw or filtered view (a driver that batches its reads
    /// keeps them short then). Atomics only: nothing here waits.
    pub fn watched_live(&self) -> bool {
        self.outlets.consumed() != 0
            || self
                .view
                .is_some_and(|v| v.subscribers(Signal::Raw) + v.subscribers(Signal::Filtered) > 0)
    }

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
    /// stop requests and stalls are seen promptly (an LSL device nobody
    /// watches live: 250 ms). Returning with nothing
    /// delivered is fine; the runner notices a device that stays silent.
    fn read(&mut self, sink: &mut Sink<'_>) -> Result<(), SourceError>;
    /// Deliver whatever the driver still holds back (called once before
    /// [`Source::close`] when the device stops).
    fn drain(&mut self, _sink: &mut Sink<'_>) {}
    /// Stop streaming and release the device.
    fn close(&mut self);
}

/// Default channel names: "ch1", "ch2", ...
pub fn default_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("ch{i}")).collect()
}
