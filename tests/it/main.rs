//! The integration tests, in one binary (one link instead of seven): each
//! module runs the real `neuroedge` binary on temp folders, against real
//! peers where a device or a backend is involved.
//!
//! - [`daemon`]: streaming, shutdown, kill -9, configs, socket abuse, quota,
//!   full disk, journal CLI and export;
//! - [`control`]: systemd notifications and watchdog, live reload, who may
//!   change things;
//! - [`uplink`]: the HTTPS uplink against a real HTTPS backend with faults;
//! - [`ops`]: the Prometheus endpoint read by the reference parser;
//! - [`clock_steps`]: a stepped wall clock under libfaketime;
//! - [`drivers_serial`]: Cyton and ASCII serial devices behind ptys;
//! - [`drivers_bflsl`]: BrainFlow's real library and real LSL outlets;
//! - [`outlets`]: the daemon's own LSL outlets read by pylsl inlets;
//! - [`export`]: XDF, EDF+/BDF+ and BIDS exports read back by pyxdf,
//!   pyedflib, MNE, mne-bids and the BIDS validator.
//! - [`faults`]: the journal under injected I/O faults (`strace --inject`);
//! - [`upgrade`]: a journal of an earlier release opens and grows.
//! - [`scope`]: `subscribe` read by a Python client against the journal,
//!   and `neuroedge scope` driven under tmux.

mod uplink_server;
mod util;

mod clock_steps;
mod control;
mod daemon;
mod drivers_bflsl;
mod drivers_serial;
mod export;
mod faults;
mod ops;
mod outlets;
mod s3;
mod scope;
mod upgrade;
mod uplink;
