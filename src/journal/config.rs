//! `[journal]`: the local SQLite store of sealed batches; its settings
//! live beside the journal (the config loader only composes them).

use crate::units::{ByteCount, HumanDuration};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// SQLite durability level for each commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// fsync on every commit: survives power loss (default).
    Full,
    /// fsync at WAL checkpoints: survives a crash of the daemon, may lose the
    /// last commits on power loss; less disk wear on SD cards.
    Normal,
}

/// What the journal does when `max_bytes` would be exceeded and no uploaded
/// batch is left to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Delete the oldest pending batches to make room: recording continues,
    /// old unsent data is lost (counted, logged, audited).
    DropOldest,
    /// Refuse new batches: the backlog is kept, new data is lost (counted,
    /// logged, audited, and reported as gaps).
    DropNewest,
}

/// `[journal]`: the local SQLite store of sealed batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    /// The SQLite file (relative to the config file's folder); default
    /// `var/journal.db`.
    pub path: PathBuf,
    /// Quota for the sealed batches ("2GiB"); see `when_full`.
    pub max_bytes: ByteCount,
    /// Seconds of samples per batch (0.1 to 60; default 1.0).
    pub batch_seconds: f64,
    /// fsync on every commit (`full`, default) or at checkpoints (`normal`).
    pub sync: SyncMode,
    /// What the quota does when no uploaded batch is left to delete.
    pub when_full: WhenFull,
    /// How long uploaded batches are kept before deletion ("24h").
    pub retain_uploaded: HumanDuration,
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            path: "var/journal.db".into(),
            max_bytes: ByteCount(2 * 1024 * 1024 * 1024),
            batch_seconds: 1.0,
            sync: SyncMode::Full,
            when_full: WhenFull::DropOldest,
            retain_uploaded: HumanDuration(Duration::from_secs(24 * 3600)),
        }
    }
}
