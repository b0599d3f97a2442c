//! What a device told us about its stream once connected: shared by the
//! drivers (which report it) and the stages downstream (which are sized by
//! it), so that neither needs the other.

/// A connected device's stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub sample_rate: f64,
    pub channels: usize,
    pub channel_names: Vec<String>,
    /// How long the device normally goes between deliveries (seconds):
    /// stall detection allows this on top of its 2 s.
    pub chunk_s: f64,
}
