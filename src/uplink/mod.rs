//! The uplink (contract §7, §11): pending batches are read from the
//! journal through the uplink's own read-only connection, delivered byte
//! for byte to the configured sink (the backend over HTTPS, or an
//! S3-compatible bucket), and the verdicts go back to the journal writer
//! as [`UploadMark`]s.
//!
//! - [`policy`]: the pure retry policy (status classes, backoff with
//!   jitter, `Retry-After`, the state shown in `status`);
//! - [`ratelimit`]: the `max_bytes_per_sec` token bucket;
//! - [`sink`]: the [`sink::Deliver`] trait (one batch in, one outcome out)
//!   and the choice of sink;
//! - [`transport`]: the HTTPS sink: the rustls client, endpoint rules, token;
//! - [`s3`]: the object-storage sink: key layout, metadata, SigV4
//!   (`rusty-s3`), credentials file, S3 error codes;
//! - [`engine`]: the task: keyset paging, per-device order, in-flight
//!   requests, verdicts, state changes, `flush`.
//!
//! See docs/uplink.md.
//!
//! [`UploadMark`]: crate::journal::UploadMark

mod backlog;
pub mod config;
pub mod engine;
#[cfg(test)]
mod model;
pub mod policy;
pub mod ratelimit;
pub mod s3;
pub mod sink;
pub mod transport;

pub use engine::{spawn, EngineOptions, UplinkHandle};
pub use policy::UplinkState;

use std::sync::Mutex;
use std::time::Instant;

/// The uplink's figures for `status`, kept current by the engine.
#[derive(Debug, Clone)]
pub struct UplinkStatus {
    pub state: UplinkState,
    /// Acknowledged (2xx) since the daemon started.
    pub uploaded_batches: u64,
    /// Quarantined batches held in the journal (earlier runs included).
    pub quarantined_batches: u64,
    /// Attempts that did not end in an acknowledgement or a quarantine.
    pub failed_attempts: u64,
    pub last_success: Option<Instant>,
    /// The latest problem, free of secrets; cleared by the next success.
    pub last_error: Option<String>,
    pub in_flight: usize,
    /// Batches read from the journal and waiting in memory.
    pub buffered_batches: usize,
    pub endpoint: Option<String>,
}

/// Shared between the engine, the status socket and `flush`.
#[derive(Debug)]
pub struct UplinkShared {
    status: Mutex<UplinkStatus>,
    flush: tokio::sync::Notify,
}

impl UplinkShared {
    fn with_state(state: UplinkState) -> UplinkShared {
        UplinkShared {
            status: Mutex::new(UplinkStatus {
                state,
                uploaded_batches: 0,
                quarantined_batches: 0,
                failed_attempts: 0,
                last_success: None,
                last_error: None,
                in_flight: 0,
                buffered_batches: 0,
                endpoint: None,
            }),
            flush: tokio::sync::Notify::new(),
        }
    }

    /// `[uplink] enabled = false`.
    pub fn disabled() -> UplinkShared {
        UplinkShared::with_state(UplinkState::Disabled)
    }

    /// Before the engine's first report.
    pub fn starting() -> UplinkShared {
        UplinkShared::with_state(UplinkState::Idle)
    }

    pub fn snapshot(&self) -> UplinkStatus {
        crate::sync::lock(&self.status).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut UplinkStatus)) {
        f(&mut crate::sync::lock(&self.status))
    }

    pub fn is_enabled(&self) -> bool {
        self.snapshot().state != UplinkState::Disabled
    }

    /// `flush`: try every waiting batch now, skipping the current backoff
    /// or pause. False when the uplink is disabled.
    pub fn request_flush(&self) -> bool {
        if !self.is_enabled() {
            return false;
        }
        self.flush.notify_one();
        true
    }

    pub(crate) async fn flushed(&self) {
        self.flush.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_cannot_flush() {
        let s = UplinkShared::disabled();
        assert_eq!(s.snapshot().state, UplinkState::Disabled);
        assert!(!s.request_flush());
        let s = UplinkShared::starting();
        assert!(s.request_flush());
    }
}
