//! The [`Deliver`] trait: one batch in, one [`Outcome`] out. The engine
//! (paging, order, backoff, verdicts) is the same for every sink; a sink
//! only knows how to put one envelope somewhere and what the answer meant.
//!
//! - [`Transport`]: the backend's HTTPS contract (§7);
//! - [`S3Sink`]: S3-compatible object storage (§11).

use super::config::{SinkKind, UplinkSection};
use super::policy::Outcome;
use super::s3::S3Sink;
use super::transport::Transport;
use crate::batch::BatchHeader;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One delivery in progress.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// A place batches are delivered to.
pub trait Deliver: std::fmt::Debug + Send + Sync + 'static {
    /// Where batches go, for `status` and the log (no secrets).
    fn target(&self) -> String;

    /// Deliver one envelope, byte for byte; `header` is its authenticated
    /// header. The outcome is classified by [`super::policy::classify`].
    fn deliver<'a>(&'a self, header: &'a BatchHeader, envelope: Vec<u8>) -> Delivery<'a>;
}

impl Deliver for Transport {
    fn target(&self) -> String {
        self.url().to_string()
    }

    fn deliver<'a>(&'a self, header: &'a BatchHeader, envelope: Vec<u8>) -> Delivery<'a> {
        Box::pin(self.post(&header.batch_id, envelope))
    }
}

/// Build the configured sink, reading its files (token, credentials,
/// certificates) now.
pub fn connect(cfg: &UplinkSection) -> Result<Arc<dyn Deliver>, String> {
    Ok(match cfg.sink {
        SinkKind::Https => Arc::new(Transport::build(cfg)?),
        SinkKind::S3 => Arc::new(S3Sink::build(cfg)?),
    })
}

/// Where the configured sink delivers, before it is built.
pub fn describe(cfg: &UplinkSection) -> Option<String> {
    match cfg.sink {
        SinkKind::Https => cfg.endpoint.clone(),
        SinkKind::S3 => Some(super::s3::describe(&cfg.s3)),
    }
}
