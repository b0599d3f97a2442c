//! The journal-reader API: every consumer of journaled batches (the
//! exporters, `journal list/decrypt/verify`, the delivery engine) reads
//! through here and never issues SQL of its own.
//!
//! - [`Journal::rows`]: the stored rows (header columns and the envelope
//!   bytes, unopened) of one device or of all, in seq order, selected by
//!   seq or time range. Paged by key (64 rows a page), so memory does not
//!   grow with the journal, and safe beside a running daemon (WAL readers
//!   see committed rows only).
//! - [`Journal::read_batches`]: the same rows, opened with a [`Keyring`]
//!   (every configured key: old keys stay usable after a rotation). A row
//!   that does not open (no key for its `key_id`, authentication failed,
//!   malformed envelope) is yielded as [`ReadBatch::Unreadable`] with what
//!   the row itself says (seq, sample range, time span) and the reason,
//!   never skipped and never an error that stops the reading.
//! - With a time range, opened batches are trimmed to the samples inside it
//!   ([`crate::batch::BatchData::trim_to_time`]).
//! - With `with_filtered`, batches that do not store the filtered signal get
//!   it reproduced from raw ([`super::refilter`]; a batch it cannot be
//!   reproduced for is unreadable, with the reason).

use super::refilter::Refilter;
use super::{sqlite_err, Journal, JournalError};
use crate::batch::{self, BatchData, BatchHeader};
use crate::crypto::Keyring;
use rusqlite::params;
use std::collections::VecDeque;
use std::ops::RangeInclusive;

/// Rows per page.
const PAGE: usize = 64;

/// Which batches to read.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// One device, or every device (ordered by device id, then seq).
    pub device: Option<String>,
    /// Seq range (inclusive); `0..=u64::MAX` for all.
    pub seqs: RangeInclusive<u64>,
    /// Unix-seconds range (inclusive): batches overlapping it, trimmed to it.
    pub time: Option<(f64, f64)>,
    /// Fill in `filtered` where a batch does not store it, by running the
    /// batch's filter chain over raw ([`super::refilter`]).
    pub with_filtered: bool,
}

impl Selection {
    /// Every batch of `device`.
    pub fn device(device: &str) -> Selection {
        Selection {
            device: Some(device.to_string()),
            seqs: 0..=u64::MAX,
            time: None,
            with_filtered: false,
        }
    }

    /// Every batch of every device.
    pub fn all() -> Selection {
        Selection {
            device: None,
            seqs: 0..=u64::MAX,
            time: None,
            with_filtered: false,
        }
    }
}

/// A stored row: what the journal knows without opening the envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    pub batch_id: String,
    pub device_id: String,
    pub seq: u64,
    pub first_sample: u64,
    pub n_samples: u64,
    pub t_start: f64,
    pub t_end: f64,
    pub key_id: String,
    /// `pending`, `uploaded` or `quarantined`.
    pub state: String,
    pub size: u64,
    pub attempts: u64,
    /// The envelope, byte for byte as journaled.
    pub envelope: Vec<u8>,
}

/// A batch that could not be opened: what its row says, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub batch_id: String,
    pub device_id: String,
    pub seq: u64,
    pub first_sample: u64,
    pub n_samples: u64,
    pub t_start: f64,
    pub t_end: f64,
    pub key_id: String,
    pub reason: String,
}

impl Unreadable {
    fn of(row: &BatchRow, reason: String) -> Unreadable {
        Unreadable {
            batch_id: row.batch_id.clone(),
            device_id: row.device_id.clone(),
            seq: row.seq,
            first_sample: row.first_sample,
            n_samples: row.n_samples,
            t_start: row.t_start,
            t_end: row.t_end,
            key_id: row.key_id.clone(),
            reason,
        }
    }
}

/// One batch as read.
// Streamed one at a time (never stored in bulk): boxing would only add an
// allocation per batch.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ReadBatch {
    Opened {
        header: BatchHeader,
        data: BatchData,
    },
    Unreadable(Unreadable),
}

impl ReadBatch {
    pub fn seq(&self) -> u64 {
        match self {
            ReadBatch::Opened { header, .. } => header.seq,
            ReadBatch::Unreadable(u) => u.seq,
        }
    }

    pub fn device_id(&self) -> &str {
        match self {
            ReadBatch::Opened { header, .. } => &header.device_id,
            ReadBatch::Unreadable(u) => &u.device_id,
        }
    }
}

/// Rows in (device, seq) order, a page at a time.
pub struct Rows<'j> {
    journal: &'j Journal,
    sel: Selection,
    /// Resume after this (device, seq).
    after: Option<(String, u64)>,
    page: VecDeque<BatchRow>,
    done: bool,
}

impl Rows<'_> {
    fn fill(&mut self) -> Result<(), JournalError> {
        let e = sqlite_err(&self.journal.path);
        let (from_seq, to_seq) = (
            i64::try_from(*self.sel.seqs.start()).unwrap_or(i64::MAX),
            i64::try_from(*self.sel.seqs.end()).unwrap_or(i64::MAX),
        );
        let (t_from, t_to) = self.sel.time.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        let (after_dev, after_seq) = match &self.after {
            Some((d, s)) => (Some(d.as_str()), i64::try_from(*s).unwrap_or(i64::MAX)),
            None => (None, -1),
        };
        let mut st = self
            .journal
            .conn
            .prepare_cached(
                "SELECT batch_id, device_id, seq, first_sample, n_samples, t_start, t_end, key_id,
                        state, size, attempts, envelope
                 FROM batches
                 WHERE (?1 IS NULL OR device_id = ?1)
                   AND seq BETWEEN ?2 AND ?3
                   AND t_end >= ?4 AND t_start <= ?5
                   AND (?6 IS NULL OR device_id > ?6 OR (device_id = ?6 AND seq > ?7))
                 ORDER BY device_id, seq LIMIT ?8",
            )
            .map_err(&e)?;
        let rows = st
            .query_map(
                params![
                    self.sel.device,
                    from_seq,
                    to_seq,
                    t_from,
                    t_to,
                    after_dev,
                    after_seq,
                    PAGE as i64
                ],
                |r| {
                    Ok(BatchRow {
                        batch_id: r.get(0)?,
                        device_id: r.get(1)?,
                        seq: r.get::<_, i64>(2)? as u64,
                        first_sample: r.get::<_, i64>(3)? as u64,
                        n_samples: r.get::<_, i64>(4)? as u64,
                        t_start: r.get(5)?,
                        t_end: r.get(6)?,
                        key_id: r.get(7)?,
                        state: r.get(8)?,
                        size: r.get::<_, i64>(9)? as u64,
                        attempts: r.get::<_, i64>(10)? as u64,
                        envelope: r.get(11)?,
                    })
                },
            )
            .map_err(&e)?;
        for r in rows {
            self.page.push_back(r.map_err(&e)?);
        }
        if self.page.len() < PAGE {
            self.done = true;
        }
        if let Some(last) = self.page.back() {
            self.after = Some((last.device_id.clone(), last.seq));
        }
        Ok(())
    }
}

impl Iterator for Rows<'_> {
    type Item = Result<BatchRow, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
        self.page.pop_front().map(Ok)
    }
}

/// Opened batches in (device, seq) order.
pub struct Batches<'j> {
    rows: Rows<'j>,
    keys: &'j Keyring,
    refilter: Refilter,
}

impl Iterator for Batches<'_> {
    type Item = Result<ReadBatch, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = match self.rows.next()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let time = self.rows.sel.time;
        if !self.rows.sel.with_filtered {
            return Some(Ok(open_row(self.keys, row, time)));
        }
        // Filter the whole batch, then trim it to the time range.
        let unread = Unreadable::of(&row, String::new());
        let mut read = open_row(self.keys, row, None);
        if let ReadBatch::Opened { header, data } = &mut read {
            let journal = self.rows.journal;
            if let Err(reason) = self.refilter.fill(journal, self.keys, header, data) {
                return Some(Ok(ReadBatch::Unreadable(Unreadable { reason, ..unread })));
            }
            if let Some((from, to)) = time {
                data.trim_to_time(from, to);
            }
        }
        Some(Ok(read))
    }
}

/// Open one row; a row that does not open, or whose header disagrees with
/// its row, becomes [`ReadBatch::Unreadable`].
pub fn open_row(keys: &Keyring, row: BatchRow, time: Option<(f64, f64)>) -> ReadBatch {
    let unreadable =
        |row: BatchRow, reason: String| ReadBatch::Unreadable(Unreadable::of(&row, reason));
    match batch::open(keys, &row.envelope) {
        Err(e) => unreadable(row, e.to_string()),
        Ok((header, mut data)) => {
            if let Some(m) = header_mismatch(&header, &row) {
                return unreadable(row, format!("header disagrees with its row ({m})"));
            }
            // `filtered` may be left out (v2, `[journal] store = ["raw"]`).
            if data.raw.len() != data.timestamps.len() * data.channels.len()
                || !(data.filtered.len() == data.raw.len() || data.filtered.is_empty())
                || data.timestamps.len() as u64 != header.n_samples
            {
                return unreadable(row, "sample arrays have the wrong shape".into());
            }
            if let Some((from, to)) = time {
                data.trim_to_time(from, to);
            }
            ReadBatch::Opened { header, data }
        }
    }
}

/// The first header field that disagrees with the row, if any.
pub fn header_mismatch(h: &BatchHeader, row: &BatchRow) -> Option<&'static str> {
    if h.batch_id != row.batch_id {
        Some("batch_id")
    } else if h.device_id != row.device_id {
        Some("device_id")
    } else if h.seq != row.seq {
        Some("seq")
    } else if h.first_sample != row.first_sample {
        Some("first_sample")
    } else if h.n_samples != row.n_samples {
        Some("n_samples")
    } else if batch::BatchFormat::from_name(&h.format).is_none() {
        Some("format")
    } else {
        None
    }
}

impl Journal {
    /// Stored rows, unopened, in (device, seq) order.
    pub fn rows(&self, sel: Selection) -> Rows<'_> {
        Rows {
            journal: self,
            sel,
            after: None,
            page: VecDeque::new(),
            done: false,
        }
    }

    /// Batches opened with `keys`, in (device, seq) order; see the module
    /// header for unreadable rows and time ranges.
    pub fn read_batches<'j>(&'j self, keys: &'j Keyring, sel: Selection) -> Batches<'j> {
        Batches {
            rows: self.rows(sel),
            keys,
            refilter: Refilter::default(),
        }
    }

    /// The first batch of `device` before `before_seq` whose first sample
    /// is at or after `sample`: (seq, first_sample). Where a filter run's
    /// warm-up starts ([`super::refilter`]).
    pub fn first_batch_from_sample(
        &self,
        device: &str,
        sample: u64,
        before_seq: u64,
    ) -> Result<Option<(u64, u64)>, JournalError> {
        use rusqlite::OptionalExtension;
        let e = sqlite_err(&self.path);
        self.conn
            .prepare_cached(
                "SELECT seq, first_sample FROM batches
                 WHERE device_id = ?1 AND first_sample >= ?2 AND seq < ?3
                 ORDER BY seq LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row(
                    params![
                        device,
                        i64::try_from(sample).unwrap_or(i64::MAX),
                        i64::try_from(before_seq).unwrap_or(i64::MAX)
                    ],
                    |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
                )
                .optional()
            })
            .map_err(&e)
    }

    /// How many rows `sel` selects (for progress reports).
    pub fn count_rows(&self, sel: &Selection) -> Result<u64, JournalError> {
        let e = sqlite_err(&self.path);
        let (t_from, t_to) = sel.time.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM batches
                 WHERE (?1 IS NULL OR device_id = ?1) AND seq BETWEEN ?2 AND ?3
                   AND t_end >= ?4 AND t_start <= ?5",
                params![
                    sel.device,
                    i64::try_from(*sel.seqs.start()).unwrap_or(i64::MAX),
                    i64::try_from(*sel.seqs.end()).unwrap_or(i64::MAX),
                    t_from,
                    t_to
                ],
                |r| r.get(0),
            )
            .map_err(&e)?;
        Ok(n as u64)
    }

    /// Ids of every device the journal has seen (batches kept or not), sorted.
    pub fn device_ids(&self) -> Result<Vec<String>, JournalError> {
        let e = sqlite_err(&self.path);
        let mut st = self
            .conn
            .prepare("SELECT device_id FROM devices ORDER BY device_id")
            .map_err(&e)?;
        let ids = st.query_map([], |r| r.get(0)).map_err(&e)?;
        ids.collect::<Result<_, _>>().map_err(&e)
    }

    /// The row of one batch, by batch_id or by (device, seq).
    pub fn row(&self, key: RowKey<'_>) -> Result<Option<BatchRow>, JournalError> {
        let sel = match key {
            RowKey::BatchId(id) => {
                use rusqlite::OptionalExtension;
                let e = sqlite_err(&self.path);
                let found: Option<(String, i64)> = self
                    .conn
                    .query_row(
                        "SELECT device_id, seq FROM batches WHERE batch_id = ?1",
                        [id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(&e)?;
                let Some((device, seq)) = found else {
                    return Ok(None);
                };
                Selection {
                    device: Some(device),
                    seqs: seq as u64..=seq as u64,
                    time: None,
                    with_filtered: false,
                }
            }
            RowKey::DeviceSeq(device, seq) => Selection {
                device: Some(device.to_string()),
                seqs: seq..=seq,
                time: None,
                with_filtered: false,
            },
        };
        self.rows(sel).next().transpose()
    }
}

/// How to name one batch.
#[derive(Debug, Clone, Copy)]
pub enum RowKey<'a> {
    BatchId(&'a str),
    DeviceSeq(&'a str, u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{seal, Gap, GapCause, Marker, SealParams};
    use crate::crypto::BatchKey;
    use crate::journal::config::SyncMode;

    fn batch(device: &str, first: u64, n: usize, t0: f64) -> BatchData {
        BatchData {
            device_id: device.into(),
            sample_rate: 100.0,
            channels: vec!["a".into(), "b".into()],
            units: "uV".into(),
            first_sample: first,
            timestamps: (0..n).map(|i| t0 + i as f64 / 100.0).collect(),
            raw: (0..n * 2).map(|i| i as f32).collect(),
            filtered: (0..n * 2).map(|i| -(i as f32)).collect(),
            ..Default::default()
        }
    }

    /// A journal with rows written directly (the writer's own tests cover
    /// the writer; here only the reading matters).
    fn journal_with(rows: &[(&BatchKey, BatchData, u64)]) -> (tempfile::TempDir, Journal) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.db");
        let j = Journal::open(&p, SyncMode::Normal).unwrap();
        for (key, b, seq) in rows {
            let (env, h) = seal(
                key,
                &SealParams {
                    batch_id: format!("{}-{seq}", b.device_id),
                    site_id: "lab",
                    node_id: "n",
                    seq: *seq,
                    created_at: 0.0,
                    compress: true,
                    format: crate::batch::BatchFormat::V2,
                },
                b,
            )
            .unwrap();
            j.insert_row_for_tests(&h, &env);
        }
        (d, j)
    }

    #[test]
    fn pages_in_device_then_seq_order_and_reports_unreadable_rows() {
        let k1 = BatchKey::from_bytes(&[1; 32]);
        let k2 = BatchKey::from_bytes(&[2; 32]);
        let mut rows = Vec::new();
        for s in 0..150u64 {
            let key = if s == 70 { &k2 } else { &k1 };
            rows.push((key, batch("b", s * 10, 10, s as f64 * 0.1), s));
        }
        rows.push((&k1, batch("a", 0, 10, 0.0), 0));
        let (_d, j) = journal_with(&rows);
        let keys = Keyring::new(BatchKey::from_bytes(&[1; 32]));
        let all: Vec<ReadBatch> = j
            .read_batches(&keys, Selection::all())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(all.len(), 151);
        assert_eq!(all[0].device_id(), "a");
        let seqs: Vec<u64> = all[1..].iter().map(ReadBatch::seq).collect();
        assert_eq!(seqs, (0..150).collect::<Vec<_>>());
        let ReadBatch::Unreadable(u) = &all[71] else {
            panic!("seq 70 was sealed with another key")
        };
        assert_eq!((u.seq, u.first_sample, u.n_samples), (70, 700, 10));
        assert!(u.reason.contains("no key with id"), "{}", u.reason);
        // With both keys everything opens.
        let mut both = Keyring::new(BatchKey::from_bytes(&[1; 32]));
        both.add(BatchKey::from_bytes(&[2; 32]));
        let n_open = j
            .read_batches(&both, Selection::device("b"))
            .filter(|r| matches!(r, Ok(ReadBatch::Opened { .. })))
            .count();
        assert_eq!(n_open, 150);
        // Seq range, and one row by key.
        let mut sel = Selection::device("b");
        sel.seqs = 10..=12;
        let some: Vec<u64> = j.rows(sel).map(|r| r.unwrap().seq).collect();
        assert_eq!(some, vec![10, 11, 12]);
        let r = j.row(RowKey::BatchId("b-3")).unwrap().unwrap();
        assert_eq!((r.device_id.as_str(), r.seq), ("b", 3));
        assert!(j.row(RowKey::DeviceSeq("a", 5)).unwrap().is_none());
        assert_eq!(j.device_ids().unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn time_range_selects_overlapping_batches_and_trims_them() {
        let k = BatchKey::from_bytes(&[1; 32]);
        let mut b1 = batch("d", 0, 10, 0.0); // 0.00 .. 0.09
        b1.markers.push(Marker {
            t: 0.015,
            value: "early".into(),
        });
        let mut b2 = batch("d", 13, 10, 0.13); // after a 3-sample gap
        b2.gaps.push(Gap {
            before_sample: 13,
            missing: 3,
            cause: GapCause::Device,
        });
        b2.markers.push(Marker {
            t: 0.2,
            value: "late".into(),
        });
        let (_d, j) = journal_with(&[(&k, b1, 0), (&k, b2, 1)]);
        let keys = Keyring::new(BatchKey::from_bytes(&[1; 32]));
        let mut sel = Selection::device("d");
        sel.time = Some((0.05, 0.155));
        let got: Vec<ReadBatch> = j
            .read_batches(&keys, sel)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 2);
        let ReadBatch::Opened { data: a, .. } = &got[0] else {
            panic!()
        };
        assert_eq!(a.first_sample, 5);
        assert_eq!(a.timestamps.len(), 5);
        assert_eq!(a.raw[0], 10.0);
        assert!(a.markers.is_empty(), "marker before the range dropped");
        let ReadBatch::Opened { data: b, .. } = &got[1] else {
            panic!()
        };
        assert_eq!(b.first_sample, 13);
        assert_eq!(b.timestamps.len(), 3, "0.13, 0.14, 0.15");
        assert_eq!(
            b.gaps.len(),
            1,
            "the gap right before the kept samples stays"
        );
        assert!(b.markers.is_empty());
    }
}
