//! neuroedge: an acquisition daemon for EEG / brain-computer-interface
//! hardware. Devices -> lock-free ring -> DSP -> sealed SQLite journal ->
//! HTTPS uplink, with a local status socket.
// `deny`, not `forbid`: src/source/brainflow_ffi.rs (BrainFlow's C library) is
// the one module allowed unsafe code, each block with a SAFETY comment.
#![deny(unsafe_code)]

pub mod backoff;
pub mod batch;
pub mod bench;
pub mod clock;
pub mod config;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod dsp;
pub mod export;
pub mod journal;
pub mod logging;
pub mod pipeline;
pub mod ring;
pub mod source;
pub mod state;
pub mod supervisor;
pub mod sync;
pub mod uplink;
