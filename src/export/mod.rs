//! Recordings out of the journal (contract §9): one module per format, each
//! consuming decoded batches from the journal-reader API
//! ([`crate::journal::reader`]); no exporter touches SQL.
//!
//! - [`csv`]: one device's samples as CSV;
//! - [`xdf`]: every selected device in one XDF 1.0 file (pyxdf, EEGLAB, MNE);
//! - [`edf`]: one device as EDF+C (16-bit) or BDF+C (24-bit), laid on a
//!   continuous timeline by [`timeline`];
//! - [`bids`]: an EEG-BIDS dataset (BDF/EDF recordings and their sidecars).
//!
//! Every exporter writes to a temporary name beside its output and renames
//! it into place only when it succeeded ([`output`]); a failed export
//! (including a full disk) leaves nothing behind.

pub mod bids;
pub mod csv;
pub mod edf;
pub mod output;
pub mod timefmt;
pub mod timeline;
pub mod xdf;

use crate::batch::{BatchData, BatchHeader, Gap, GapCause};
use crate::journal::{Journal, JournalError, ReadBatch, Selection, Unreadable};
use serde::Serialize;
use std::ops::RangeInclusive;
use std::path::PathBuf;

/// Which of a batch's signals to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Raw,
    Filtered,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Raw => "raw",
            Signal::Filtered => "filtered",
        }
    }

    /// This signal's values in a batch (frame-major).
    pub fn values(self, b: &BatchData) -> &[f32] {
        match self {
            Signal::Raw => &b.raw,
            Signal::Filtered => &b.filtered,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "device {device}: from seq {seq} on it has {found}, before {expected}; {what}. \
         Export the parts separately:\n  {hint}"
    )]
    Layout {
        device: String,
        seq: u64,
        found: String,
        expected: String,
        what: &'static str,
        hint: String,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    /// Something the user asked for cannot be done (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The selection holds nothing to export.
    #[error("{0}")]
    Empty(String),
    /// The data cannot be represented in the format (exit 1).
    #[error("{0}")]
    Unsupported(String),
}

impl ExportError {
    /// Exit code of the command line: 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExportError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Attach a path to an I/O error.
pub(crate) fn io_at(path: &std::path::Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    }
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

impl From<&Unreadable> for Skipped {
    fn from(u: &Unreadable) -> Self {
        Skipped {
            device: u.device_id.clone(),
            seq: u.seq,
            first_sample: u.first_sample,
            n_samples: u.n_samples,
            reason: u.reason.clone(),
        }
    }
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
    /// Other things the user should know (split streams, padding, ...).
    pub notes: Vec<String>,
}

impl ExportSummary {
    pub fn new(device: &str) -> Self {
        ExportSummary {
            device: device.to_string(),
            ..Default::default()
        }
    }

    /// Count a batch as read (opened or not).
    pub fn saw_batch(&mut self, seq: u64) {
        self.batches += 1;
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
    }

    pub fn saw_unreadable(&mut self, u: &Unreadable) {
        self.saw_batch(u.seq);
        self.gaps += 1;
        self.missing_samples += u.n_samples;
        self.unreadable.push(u.into());
    }

    /// Count an opened batch's samples, gaps and markers.
    pub fn saw_opened(&mut self, seq: u64, b: &BatchData) {
        self.saw_batch(seq);
        self.samples += b.n_samples() as u64;
        self.markers += b.markers.len() as u64;
        let real = b.gaps.iter().filter(|g| g.missing > 0);
        self.gaps += real.clone().count() as u64;
        self.missing_samples += real.map(|g| g.missing).sum::<u64>();
    }
}

/// What to export, as the command line resolved it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The devices, in the order given (at least one).
    pub devices: Vec<String>,
    pub seqs: RangeInclusive<u64>,
    /// Unix-seconds range (inclusive).
    pub time: Option<(f64, f64)>,
    pub signal: Signal,
}

impl Request {
    /// The journal selection of one device.
    pub fn selection(&self, device: &str) -> Selection {
        Selection {
            device: Some(device.to_string()),
            seqs: self.seqs.clone(),
            time: self.time,
            with_filtered: self.signal == Signal::Filtered,
        }
    }

    /// How the range was given, for messages.
    pub fn range_text(&self) -> String {
        let (a, b) = (*self.seqs.start(), *self.seqs.end());
        let mut parts = Vec::new();
        if a != 0 || b != u64::MAX {
            let end = if b == u64::MAX {
                "newest".to_string()
            } else {
                b.to_string()
            };
            parts.push(format!("seq {a}..={end}"));
        }
        if let Some((f, t)) = self.time {
            parts.push(format!("time {f}..={t} (unix s)"));
        }
        if parts.is_empty() {
            "the journal".to_string()
        } else {
            parts.join(", ")
        }
    }

    /// The command that exports one part of a device (layout changes).
    fn part_hint(&self, format: &str, device: &str, from: Option<u64>, to: Option<u64>) -> String {
        let mut s = format!("neuroedge journal export --format {format} --device {device}");
        if let Some(f) = from.or(Some(*self.seqs.start()).filter(|&a| a != 0)) {
            s += &format!(" --from-seq {f}");
        }
        if let Some(t) = to.or(Some(*self.seqs.end()).filter(|&b| b != u64::MAX)) {
            s += &format!(" --to-seq {t}");
        }
        if self.signal == Signal::Filtered {
            s += " --filtered";
        }
        s + " --out PART"
    }

    /// The error for a device whose layout changes at `seq`, for formats
    /// that hold one layout per file.
    pub fn layout_error(
        &self,
        format: &str,
        device: &str,
        seq: u64,
        found: &Layout,
        expected: &Layout,
    ) -> ExportError {
        ExportError::Layout {
            device: device.to_string(),
            seq,
            found: found.to_string(),
            expected: expected.to_string(),
            what: "a file of this format holds one channel layout and rate",
            hint: format!(
                "{}\n  {}",
                self.part_hint(format, device, None, Some(seq.saturating_sub(1))),
                self.part_hint(format, device, Some(seq), None)
            ),
        }
    }
}

/// The channel layout and rate of a batch: what one stream or file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub channels: Vec<String>,
    pub rate: f64,
    pub units: String,
}

impl Layout {
    pub fn of(header: &BatchHeader, b: &BatchData) -> Layout {
        Layout {
            channels: b.channels.clone(),
            rate: header.sample_rate,
            units: b.units.clone(),
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} channels ({}) at {} Hz",
            self.channels.len(),
            self.channels.join(", "),
            self.rate
        )
    }
}

/// What the exporters know about a device beyond its batches (from its
/// device file, when `--config` names one).
#[derive(Debug, Clone, Default)]
pub struct DeviceInfo {
    /// The driver name (`openbci-cyton`, ...), when the device file is known.
    pub driver: Option<String>,
    /// The samples are ADC counts times a documented scale (µV per count),
    /// over a documented range (±µV): the OpenBCI Cyton at gain 24.
    pub adc: Option<AdcScale>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// Channel quality thresholds (the device file's `[quality]`).
    pub quality: crate::dsp::QualityThresholds,
}

/// A device whose values are integer ADC counts times `uv_per_count`, with
/// full scale ±`counts_max` counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdcScale {
    pub uv_per_count: f64,
    pub counts_max: i32,
}

impl DeviceInfo {
    /// What a device file says about its device.
    pub fn from_config(d: &crate::config::DeviceConfig) -> DeviceInfo {
        use crate::config::{Connection, DriverKind};
        let q = &d.quality;
        let quality = crate::dsp::QualityThresholds {
            flat_ptp_uv: q.flat_ptp_uv,
            railed_abs_uv: q.railed_abs_uv,
            railed_min_fraction: q.railed_min_fraction,
            noisy_rms_uv: q.noisy_rms_uv,
            noisy_line_ratio: q.noisy_line_ratio,
        };
        let (adc, manufacturer, model) = match (&d.driver, &d.connection) {
            (DriverKind::OpenbciCyton, Connection::OpenbciCyton(c)) => (
                Some(AdcScale {
                    uv_per_count: crate::source::openbci_cyton::SCALE_UV,
                    counts_max: 8_388_607,
                }),
                Some("OpenBCI".to_string()),
                Some(if c.daisy { "Cyton + Daisy" } else { "Cyton" }.to_string()),
            ),
            _ => (None, None, None),
        };
        DeviceInfo {
            driver: Some(d.driver.name().to_string()),
            adc,
            manufacturer,
            model,
            quality,
        }
    }
}

/// Device information by id.
pub type DeviceInfos = std::collections::HashMap<String, DeviceInfo>;

/// Check that every requested device is in the journal; the error names the
/// ones it has.
pub fn check_devices(j: &Journal, devices: &[String]) -> Result<(), ExportError> {
    let known = j.device_ids()?;
    for d in devices {
        if !known.contains(d) {
            return Err(ExportError::Empty(format!(
                "no batches of device {d:?} in the journal (it has: {}; see `neuroedge journal stats`)",
                if known.is_empty() {
                    "no devices".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    Ok(())
}

/// Where a gap lands in time: the estimated time of its first missing
/// sample, from the first sample after it.
pub fn gap_onset(b: &BatchData, g: &Gap, t_after: f64) -> f64 {
    if b.sample_rate > 0.0 {
        t_after - g.missing as f64 / b.sample_rate
    } else {
        t_after
    }
}

/// The text of a gap marker: `BAD_ACQ_SKIP <n> samples (<cause>)`, the
/// MNE convention for a bad span (every format uses the same words).
pub fn gap_text(missing: u64, cause: &str) -> String {
    format!("BAD_ACQ_SKIP {missing} samples ({cause})")
}

pub fn gap_cause_text(c: GapCause) -> &'static str {
    match c {
        GapCause::Device => "lost by the device",
        GapCause::Overflow => "ring overflow",
        GapCause::Journal => "journal could not take the batch",
    }
}

pub fn unreadable_text(u: &Unreadable) -> String {
    gap_text(
        u.n_samples,
        &format!("batch seq {} unreadable: {}", u.seq, u.reason),
    )
}

/// Progress on stderr, only when it is a terminal: `label done/total`,
/// redrawn at most a few times a second.
pub struct Progress {
    enabled: bool,
    label: String,
    total: u64,
    last: std::time::Instant,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Progress {
        use std::io::IsTerminal;
        Progress {
            enabled: std::io::stderr().is_terminal(),
            label: label.to_string(),
            total,
            last: std::time::Instant::now(),
        }
    }

    /// A progress that never prints (tests, benches).
    pub fn silent() -> Progress {
        Progress {
            enabled: false,
            label: String::new(),
            total: 0,
            last: std::time::Instant::now(),
        }
    }

    pub fn set_label(&mut self, label: &str) {
        self.label = label.to_string();
    }

    pub fn tick(&mut self, done: u64) {
        if self.enabled && self.last.elapsed() >= std::time::Duration::from_millis(200) {
            self.last = std::time::Instant::now();
            eprint!("\r{}: {done}/{} batches", self.label, self.total);
        }
    }

    pub fn finish(&mut self) {
        if self.enabled {
            eprint!("\r\x1b[K");
        }
    }
}

/// Read a device's batches through the reader, for exporters that go one
/// device at a time.
pub fn batches<'j>(
    j: &'j Journal,
    keys: &'j crate::crypto::Keyring,
    req: &Request,
    device: &str,
) -> impl Iterator<Item = Result<ReadBatch, JournalError>> + 'j {
    j.read_batches(keys, req.selection(device))
}
