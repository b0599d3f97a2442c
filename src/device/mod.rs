//! The device layer: wires a driver (`crate::source`) to its lock-free
//! ring and processing stage (`crate::pipeline`), and keeps the set of
//! running devices.
//!
//! - [`runner`]: one device: the acquisition thread (open, read, reconnect
//!   with [`crate::backoff::Backoff`], the stall rule) and the processing
//!   thread it feeds;
//! - [`supervisor`]: the running set and live reload (a diff of device
//!   files by id), published to the control plane through
//!   [`crate::telemetry::DeviceRegistry`].

pub mod runner;
pub mod supervisor;

pub use runner::{DeviceContext, DeviceHandle};
pub use supervisor::{Command, Supervisor};
