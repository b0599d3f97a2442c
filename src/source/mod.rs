//! Device drivers. A driver only turns device bytes into frames
//! `(timestamp, [f32; channels])`, markers and gap reports; it knows nothing
//! of filters, disks or networks. Reconnects with backoff live in
//! [`runner`], not in the drivers.

pub mod runner;
pub mod synthetic;

use crate::batch::Marker;
use crate::config::{Connection, DeviceConfig};
use crate::ring::Producer;

/// What a device told us about its stream once connected.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub sample_rate: f64,
    pub channels: usize,
    pub channel_names: Vec<String>,
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

/// Where a driver's output goes: frames into the ring, markers aside.
pub struct Sink<'a> {
    pub frames: &'a mut Producer,
    pub markers: &'a crossbeam_channel::Sender<Marker>,
}

/// One device driver.
pub trait Source: Send {
    /// Connect (blocking) and describe the stream.
    fn open(&mut self) -> Result<StreamInfo, SourceError>;
    /// Deliver what is available, blocking at most about one chunk
    /// (tens of milliseconds) so that stop requests are seen promptly.
    fn read(&mut self, sink: &mut Sink<'_>) -> Result<(), SourceError>;
    /// Stop streaming and release the device.
    fn close(&mut self);
}

/// Build the driver for a device file.
pub fn build(cfg: &DeviceConfig) -> Result<Box<dyn Source>, SourceError> {
    match &cfg.connection {
        Connection::Synthetic(c) => Ok(Box::new(synthetic::Synthetic::new(c.clone()))),
        _ => Err(SourceError::Fatal(format!(
            "driver {:?} is not available in this build of neuroedge; disable {} or use the synthetic driver",
            cfg.driver.name(),
            cfg.file.display()
        ))),
    }
}

/// Default channel names: "ch1", "ch2", ...
pub fn default_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("ch{i}")).collect()
}
