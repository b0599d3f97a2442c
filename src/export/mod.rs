//! Recordings out of the journal (contract §9): one module per format, each
//! consuming decoded batches from the journal-reader API
//! ([`crate::journal::reader`]); no exporter touches SQL.
//!
//! - [`csv`]: one device's samples as CSV.

pub mod csv;

use crate::journal::JournalError;
use serde::Serialize;

/// Which of a batch's signals to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Raw,
    Filtered,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "device {device}: seq {seq} has {found} channels, the export so far {expected}; \
         export the parts separately with --from-seq / --to-seq"
    )]
    Layout {
        device: String,
        seq: u64,
        found: usize,
        expected: usize,
    },
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
}

/// A batch the export could not open, written as a marked gap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub device: String,
    pub seq: u64,
    pub first_sample: u64,
    pub n_samples: u64,
    pub reason: String,
}

/// What an export of one device wrote.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct ExportSummary {
    pub device: String,
    pub batches: u64,
    pub samples: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Gaps the batches record (the sample index jumps over them).
    pub gaps: u64,
    pub missing_samples: u64,
    pub markers: u64,
    /// Batches that could not be opened (wrong key, altered): exported as
    /// marked gaps, listed here.
    pub unreadable: Vec<Skipped>,
}
