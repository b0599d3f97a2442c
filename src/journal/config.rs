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

/// A signal the journal can keep in each batch (`[journal] store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredSignal {
    /// The device's samples as acquired: always stored.
    Raw,
    /// The filter chain's output: reproducible exactly from `raw` (see
    /// `crate::journal::refilter`), so optional; storing it roughly doubles
    /// the journal's size.
    Filtered,
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
    /// The signals kept in each batch: `["raw"]` (default) or
    /// `["raw", "filtered"]`. Exports reproduce the filtered signal from
    /// raw when it is not stored.
    pub store: Vec<StoredSignal>,
    /// Batch format written: 2 (default: byte-shuffled samples, filtered
    /// optional) or 1 (for a backend that reads v1 only; needs
    /// `store = ["raw", "filtered"]`). docs/batch-format.md.
    pub batch_format: u8,
    /// SQLite page size, KiB, of a journal file this creates (1, 2, 4, 8,
    /// 16, 32 or 64). Unset (default): 64 when the enabled devices' files
    /// declare a million channel-samples a second or more in all
    /// ([`LARGE_PAGE_RATE`]), else 4. An existing journal keeps the size it
    /// was made with. Large pages suit high-density rigs (1024 ch × 30 kHz:
    /// the journal stage 55–66 → 70–100 M channel-samples/s):
    /// fewer, larger pages per sealed batch. Small rigs keep 4: each commit
    /// rewrites whole pages, so 64 KiB pages made an 8-channel journal grow
    /// ten times as fast (docs/performance.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_size_kib: Option<u32>,
}

/// Channel-samples a second (all enabled devices) from which a journal
/// created without `page_size_kib` gets 64 KiB pages: a one-second batch is
/// then ~2 MB sealed, so a commit's last, partly filled page costs a few
/// per cent at most.
pub const LARGE_PAGE_RATE: f64 = 1e6;
/// The page size, KiB, of such a journal (SQLite's largest).
pub const LARGE_PAGE_KIB: u32 = 64;
/// The page size, KiB, of any other journal (SQLite's default).
pub const SMALL_PAGE_KIB: u32 = 4;

/// `kib` when it is a SQLite page size (a power of two up to
/// [`LARGE_PAGE_KIB`]), else what is wrong with it. The config's
/// `page_size_kib` and `neuroedge bench --journal-page-kib` share it.
pub fn check_page_kib(kib: u32) -> Result<u32, String> {
    if kib.is_power_of_two() && kib <= LARGE_PAGE_KIB {
        Ok(kib)
    } else {
        Err(format!("{kib} is not a SQLite page size"))
    }
}

/// The page size, KiB, of a journal created without `page_size_kib` for
/// devices producing `ch_samples_per_s` in all.
pub fn auto_page_kib(ch_samples_per_s: f64) -> u32 {
    if ch_samples_per_s >= LARGE_PAGE_RATE {
        LARGE_PAGE_KIB
    } else {
        SMALL_PAGE_KIB
    }
}

impl JournalSection {
    /// Whether batches carry the filtered signal.
    pub fn stores_filtered(&self) -> bool {
        self.store.contains(&StoredSignal::Filtered)
    }

    /// The batch format to write (validated to be 1 or 2 at load).
    pub fn format(&self) -> crate::batch::BatchFormat {
        if self.batch_format == 1 {
            crate::batch::BatchFormat::V1
        } else {
            crate::batch::BatchFormat::V2
        }
    }

    /// The page size, bytes, of a journal this creates for devices that
    /// declare `ch_samples_per_s` in all: `page_size_kib`, or
    /// [`auto_page_kib`] when unset.
    pub fn page_size(&self, ch_samples_per_s: f64) -> u32 {
        self.page_size_kib
            .unwrap_or_else(|| auto_page_kib(ch_samples_per_s))
            * 1024
    }

    /// Problems with `store`, `batch_format` and `page_size_kib`: (key,
    /// what, hint).
    pub fn format_problems(&self) -> Vec<(&'static str, String, &'static str)> {
        let mut out = Vec::new();
        if !self.store.contains(&StoredSignal::Raw) {
            out.push((
                "journal.store",
                format!("{:?} leaves out \"raw\"", self.store),
                "raw is the recording: use [\"raw\"] or [\"raw\", \"filtered\"]",
            ));
        }
        match self.batch_format {
            2 => {}
            1 if !self.stores_filtered() => out.push((
                "journal.batch_format",
                "batch format 1 always carries the filtered signal".into(),
                "set store = [\"raw\", \"filtered\"] with batch_format = 1, or use batch_format = 2",
            )),
            1 => {}
            n => out.push((
                "journal.batch_format",
                format!("{n} is not a batch format"),
                "use 2 (default) or 1 (for a backend that reads v1 only)",
            )),
        }
        if let Some(Err(what)) = self.page_size_kib.map(check_page_kib) {
            out.push((
                "journal.page_size_kib",
                what,
                "use 1, 2, 4, 8, 16, 32 or 64, or leave it out (4, or 64 for rigs of a million channel-samples a second)",
            ));
        }
        out
    }
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
            store: vec![StoredSignal::Raw],
            batch_format: 2,
            page_size_kib: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_sqlites() {
        for kib in [1, 2, 4, 8, 16, 32, 64] {
            let s = JournalSection {
                page_size_kib: Some(kib),
                ..Default::default()
            };
            assert!(s.format_problems().is_empty(), "{kib}");
            // Set, it holds whatever the devices' rate.
            assert_eq!(s.page_size(0.0), kib * 1024);
            assert_eq!(s.page_size(1e9), kib * 1024);
        }
        for kib in [0, 3, 128] {
            let s = JournalSection {
                page_size_kib: Some(kib),
                ..Default::default()
            };
            let p = s.format_problems();
            assert_eq!(p.len(), 1, "{kib}");
            assert_eq!(p[0].0, "journal.page_size_kib");
        }
    }

    #[test]
    fn an_unset_page_size_follows_the_declared_rate() {
        let s = JournalSection::default();
        assert!(s.format_problems().is_empty());
        // Nothing declared (e.g. LSL devices only), the idle default
        // (8 × 250 Hz) and 64 ch × 2 kHz: small pages.
        for rate in [0.0, 2000.0, 128_000.0, 999_999.0] {
            assert_eq!(s.page_size(rate), 4096, "{rate}");
        }
        // 32 ch × 31.25 kHz, 384 and 1024 ch × 30 kHz: large pages.
        for rate in [1e6, 384.0 * 30e3, 1024.0 * 30e3] {
            assert_eq!(s.page_size(rate), 65536, "{rate}");
        }
    }

    #[test]
    fn store_and_batch_format_are_checked_together() {
        let ok = JournalSection::default();
        assert!(ok.format_problems().is_empty());
        assert!(!ok.stores_filtered());
        assert_eq!(ok.format(), crate::batch::BatchFormat::V2);
        let both = JournalSection {
            store: vec![StoredSignal::Raw, StoredSignal::Filtered],
            batch_format: 1,
            ..Default::default()
        };
        assert!(both.format_problems().is_empty());
        assert_eq!(both.format(), crate::batch::BatchFormat::V1);
        let keys =
            |s: JournalSection| -> Vec<&str> { s.format_problems().iter().map(|p| p.0).collect() };
        let v1_raw_only = JournalSection {
            batch_format: 1,
            ..Default::default()
        };
        assert_eq!(keys(v1_raw_only), ["journal.batch_format"]);
        let no_raw = JournalSection {
            store: vec![StoredSignal::Filtered],
            batch_format: 3,
            ..Default::default()
        };
        assert_eq!(keys(no_raw), ["journal.store", "journal.batch_format"]);
    }
}
