//! `neuroedge journal salvage --out NEW`: copy what a damaged journal still
//! holds into a new one, and say exactly what was lost.
//!
//! The damaged file is only read. Rows are found by walking row ids with
//! keyset queries; where a query fails (a damaged b-tree page) the walk
//! skips ahead in growing steps until rows answer again, and the id range
//! it could not read is reported. Every batch found is opened with the
//! keys (AES-GCM authenticates it, and its header must agree with its
//! row): authentic batches are copied with their state, seq and envelope
//! byte for byte; altered ones are listed and left behind; batches sealed
//! with a key that was not given are copied unverified and listed. The
//! audit trail is copied the same way, then one `journal_salvage` record
//! says what happened. Each device's next seq and sample index continue
//! after the highest ever seen (the old `devices` table if it reads), so
//! seq numbers are never reused.

use super::reader::{header_mismatch, BatchRow};
use super::{insert_audit, AuditEvent, Journal, JournalError, SyncMode};
use crate::crypto::{Keyring, SealError};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a salvage found, copied and lost.
#[derive(Debug, Default, Serialize)]
pub struct SalvageReport {
    pub source: PathBuf,
    pub out: PathBuf,
    /// `PRAGMA quick_check` of the source (first line).
    pub source_check: String,
    pub batches_copied: u64,
    /// Copied, but sealed with a key that was not given: not verified.
    pub batches_unverified: Vec<LostBatch>,
    /// Failed authentication or disagreed with their row: not copied.
    pub batches_altered: Vec<LostBatch>,
    /// Rows found but unreadable (e.g. a damaged overflow page).
    pub batch_rows_unreadable: Vec<i64>,
    /// Row id ranges (inclusive) that could not be read at all.
    pub batch_id_ranges_lost: Vec<(i64, i64)>,
    pub audit_copied: u64,
    pub audit_id_ranges_lost: Vec<(i64, i64)>,
    pub devices: BTreeMap<String, DeviceSalvage>,
}

impl SalvageReport {
    /// Nothing was lost.
    pub fn complete(&self) -> bool {
        self.batches_altered.is_empty()
            && self.batch_rows_unreadable.is_empty()
            && self.batch_id_ranges_lost.is_empty()
            && self.audit_id_ranges_lost.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct LostBatch {
    pub row_id: i64,
    pub batch_id: String,
    pub device_id: String,
    pub seq: u64,
    pub reason: String,
}

/// Per device: what was copied and which seqs below `next_seq` the new
/// journal lacks (lost to the damage, or removed earlier by upload
/// retention or the quota: the audit trail tells which).
#[derive(Debug, Default, Serialize)]
pub struct DeviceSalvage {
    pub copied: u64,
    pub next_seq: u64,
    pub next_sample: u64,
    pub missing_seqs: Vec<(u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    #[error("{0} exists; salvage writes a new journal: give a path that does not exist")]
    OutExists(PathBuf),
    #[error("journal {path}: nothing can be read ({detail}); restore it from a backup")]
    Unreadable { path: PathBuf, detail: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

const BATCH_COLUMNS: &str = "batch_id, device_id, seq, first_sample, n_samples, t_start, t_end, \
     key_id, created_at, size, state, attempts, uploaded_at, last_error, envelope";

/// Salvage `source` into a new journal at `out`; `progress(done_rows)`.
pub fn salvage(
    source: &Path,
    out: &Path,
    keys: &Keyring,
    mut progress: impl FnMut(u64),
) -> Result<SalvageReport, SalvageError> {
    if out.exists() {
        return Err(SalvageError::OutExists(out.to_path_buf()));
    }
    let unreadable = |e: rusqlite::Error| SalvageError::Unreadable {
        path: source.to_path_buf(),
        detail: e.to_string(),
    };
    let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(unreadable)?;
    let source_check = src
        .query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
        .unwrap_or_else(|e| e.to_string());
    // The schema itself must read, or there is nothing to walk.
    src.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(unreadable)?;
    let mut report = SalvageReport {
        source: source.to_path_buf(),
        out: out.to_path_buf(),
        source_check,
        ..Default::default()
    };
    let dst = Journal::open(out, SyncMode::Full)?;
    copy_batches(&src, &dst, keys, &mut report, &mut progress)?;
    copy_audit(&src, &dst, &mut report)?;
    set_cursors(&src, &dst, &mut report)?;
    let summary = serde_json::json!({
        "source": source.display().to_string(),
        "source_check": report.source_check,
        "batches_copied": report.batches_copied,
        "batches_altered": report.batches_altered.len(),
        "batches_unverified": report.batches_unverified.len(),
        "batch_rows_unreadable": report.batch_rows_unreadable,
        "batch_id_ranges_lost": report.batch_id_ranges_lost,
        "audit_id_ranges_lost": report.audit_id_ranges_lost,
    });
    insert_audit(
        &dst.conn,
        &AuditEvent::new("journal_salvage", None, summary),
    )
    .map_err(super::sqlite_err(out))?;
    dst.checkpoint()?;
    Ok(report)
}

/// Walk a table's row ids in order, skipping damaged stretches. Calls
/// `each(id)` for every id found; returns the id ranges that could not
/// be read.
fn walk_ids(
    conn: &Connection,
    table: &str,
    mut each: impl FnMut(i64) -> Result<(), SalvageError>,
) -> Result<Vec<(i64, i64)>, SalvageError> {
    let sql = format!("SELECT id FROM {table} WHERE id > ?1 ORDER BY id LIMIT 1");
    let mut lost = Vec::new();
    let mut after = 0i64;
    loop {
        match conn
            .query_row(&sql, [after], |r| r.get::<_, i64>(0))
            .optional()
        {
            Ok(Some(id)) => {
                each(id)?;
                after = id;
            }
            Ok(None) => return Ok(lost),
            Err(_) => {
                // Skip ahead in growing steps until a query answers.
                let mut step = 1i64;
                let resumed = loop {
                    let probe = after.saturating_add(step);
                    if step > 1 << 40 {
                        break None;
                    }
                    match conn
                        .query_row(&sql, [probe], |r| r.get::<_, i64>(0))
                        .optional()
                    {
                        Ok(found) => break Some((probe, found)),
                        Err(_) => step *= 2,
                    }
                };
                match resumed {
                    Some((probe, Some(id))) => {
                        lost.push((after + 1, probe));
                        each(id)?;
                        after = id;
                    }
                    Some((probe, None)) => {
                        lost.push((after + 1, probe));
                        return Ok(lost);
                    }
                    None => {
                        lost.push((after + 1, i64::MAX));
                        return Ok(lost);
                    }
                }
            }
        }
    }
}

type Full = (BatchRow, f64, Option<f64>, Option<String>);

fn read_batch(conn: &Connection, id: i64) -> rusqlite::Result<Full> {
    conn.query_row(
        &format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1"),
        [id],
        |r| {
            let row = BatchRow {
                batch_id: r.get(0)?,
                device_id: r.get(1)?,
                seq: r.get::<_, i64>(2)? as u64,
                first_sample: r.get::<_, i64>(3)? as u64,
                n_samples: r.get::<_, i64>(4)? as u64,
                t_start: r.get(5)?,
                t_end: r.get(6)?,
                key_id: r.get(7)?,
                size: r.get::<_, i64>(9)? as u64,
                state: r.get(10)?,
                attempts: r.get::<_, i64>(11)? as u64,
                envelope: r.get(14)?,
            };
            Ok((row, r.get(8)?, r.get(12)?, r.get(13)?))
        },
    )
}

/// Is this batch authentic? `Ok(true)` verified, `Ok(false)` key not
/// given, `Err(reason)` altered.
fn authentic(keys: &Keyring, row: &BatchRow) -> Result<bool, String> {
    match crate::batch::authenticate(keys, &row.envelope) {
        Ok(header) => match header_mismatch(&header, row) {
            Some(field) => Err(format!("header disagrees with its row ({field})")),
            None => Ok(true),
        },
        Err(crate::batch::BatchError::Seal(SealError::UnknownKey(_))) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

fn copy_batches(
    src: &Connection,
    dst: &Journal,
    keys: &Keyring,
    report: &mut SalvageReport,
    progress: &mut impl FnMut(u64),
) -> Result<(), SalvageError> {
    let out = report.out.clone();
    let insert = format!(
        "INSERT INTO batches ({BATCH_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    );
    let mut done = 0u64;
    let lost = walk_ids(src, "batches", |id| {
        done += 1;
        if done % 1000 == 0 {
            progress(done);
        }
        let Ok((row, created_at, uploaded_at, last_error)) = read_batch(src, id) else {
            report.batch_rows_unreadable.push(id);
            return Ok(());
        };
        let lost = |reason: String| LostBatch {
            row_id: id,
            batch_id: row.batch_id.clone(),
            device_id: row.device_id.clone(),
            seq: row.seq,
            reason,
        };
        match authentic(keys, &row) {
            Err(reason) => {
                report.batches_altered.push(lost(reason));
                return Ok(());
            }
            Ok(false) => report
                .batches_unverified
                .push(lost(format!("key {} not given", row.key_id))),
            Ok(true) => {}
        }
        dst.conn
            .execute(
                &insert,
                params![
                    row.batch_id,
                    row.device_id,
                    row.seq as i64,
                    row.first_sample as i64,
                    row.n_samples as i64,
                    row.t_start,
                    row.t_end,
                    row.key_id,
                    created_at,
                    row.size as i64,
                    row.state,
                    row.attempts as i64,
                    uploaded_at,
                    last_error,
                    row.envelope
                ],
            )
            .map_err(super::sqlite_err(&out))?;
        report.batches_copied += 1;
        let d = report.devices.entry(row.device_id.clone()).or_default();
        d.copied += 1;
        d.next_seq = d.next_seq.max(row.seq + 1);
        d.next_sample = d.next_sample.max(row.first_sample + row.n_samples);
        Ok(())
    })?;
    report.batch_id_ranges_lost = lost;
    Ok(())
}

fn copy_audit(
    src: &Connection,
    dst: &Journal,
    report: &mut SalvageReport,
) -> Result<(), SalvageError> {
    let out = report.out.clone();
    let mut unreadable = Vec::new();
    let lost = walk_ids(src, "audit", |id| {
        let row = src.query_row(
            "SELECT at, event, device_id, detail FROM audit WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, f64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        );
        let Ok((at, event, device, detail)) = row else {
            unreadable.push((id, id));
            return Ok(());
        };
        dst.conn
            .execute(
                "INSERT INTO audit (id, at, event, device_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, at, event, device, detail],
            )
            .map_err(super::sqlite_err(&out))?;
        report.audit_copied += 1;
        Ok(())
    })?;
    report.audit_id_ranges_lost = unreadable.into_iter().chain(lost).collect();
    Ok(())
}

/// Next seq / sample per device: the highest of what was copied and what
/// the old `devices` table says (if it reads); then the missing seqs.
fn set_cursors(
    src: &Connection,
    dst: &Journal,
    report: &mut SalvageReport,
) -> Result<(), SalvageError> {
    let out = report.out.clone();
    let old: Vec<(String, i64, i64)> = src
        .prepare("SELECT device_id, next_seq, next_sample FROM devices")
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .unwrap_or_default();
    for (id, seq, sample) in old {
        let d = report.devices.entry(id).or_default();
        d.next_seq = d.next_seq.max(seq.max(0) as u64);
        d.next_sample = d.next_sample.max(sample.max(0) as u64);
    }
    for (id, d) in report.devices.iter_mut() {
        dst.conn
            .execute(
                "INSERT INTO devices (device_id, next_seq, next_sample) VALUES (?1, ?2, ?3)",
                params![id, d.next_seq as i64, d.next_sample as i64],
            )
            .map_err(super::sqlite_err(&out))?;
        let mut st = dst
            .conn
            .prepare("SELECT seq FROM batches WHERE device_id = ?1 ORDER BY seq")
            .map_err(super::sqlite_err(&out))?;
        let seqs: Vec<i64> = st
            .query_map([id], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(super::sqlite_err(&out))?;
        d.missing_seqs = missing(&seqs, d.next_seq);
    }
    Ok(())
}

/// Inclusive ranges of `0..next` absent from the sorted `have`.
fn missing(have: &[i64], next: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut expect = 0u64;
    for &s in have {
        let s = s.max(0) as u64;
        if s > expect {
            out.push((expect, s - 1));
        }
        expect = expect.max(s + 1);
    }
    if next > expect {
        out.push((expect, next - 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{seal, BatchData, SealParams};
    use crate::crypto::BatchKey;

    #[test]
    fn missing_ranges() {
        assert_eq!(missing(&[0, 1, 2], 3), vec![]);
        assert_eq!(missing(&[1, 2, 5], 7), vec![(0, 0), (3, 4), (6, 6)]);
        assert_eq!(missing(&[], 2), vec![(0, 1)]);
    }

    fn journal_with(path: &Path, key: &BatchKey, n: u64) {
        let j = Journal::open(path, SyncMode::Full).unwrap();
        for seq in 0..n {
            let b = BatchData {
                device_id: "dev".into(),
                sample_rate: 250.0,
                channels: (0..8).map(|c| format!("ch{c}")).collect(),
                units: "uV".into(),
                first_sample: seq * 250,
                timestamps: (0..250).map(|i| (seq * 250 + i) as f64 / 250.0).collect(),
                raw: (0..2000)
                    .map(|i| ((i * 7919 + seq) % 1000) as f32)
                    .collect(),
                filtered: (0..2000).map(|i| (i % 13) as f32).collect(),
                ..Default::default()
            };
            let params = SealParams {
                batch_id: format!("dev-{seq}"),
                site_id: "lab",
                node_id: "n",
                seq,
                created_at: 0.0,
                compress: true,
                format: crate::batch::BatchFormat::V2,
            };
            let (env, h) = seal(key, &params, &b).unwrap();
            j.insert_row_for_tests(&h, &env);
        }
        insert_audit(
            &j.conn,
            &AuditEvent::new("daemon_start", None, serde_json::json!({})),
        )
        .unwrap();
        j.checkpoint().unwrap();
    }

    /// Overwrite page `page` (1-based) of the file with garbage.
    fn damage_page(path: &Path, page: u64) {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start((page - 1) * 4096)).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap();
    }

    #[test]
    fn intact_journal_is_copied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let key = BatchKey::from_bytes(&[9; 32]);
        let src = dir.path().join("j.db");
        journal_with(&src, &key, 20);
        let keys = Keyring::new(key);
        let r = salvage(&src, &dir.path().join("new.db"), &keys, |_| {}).unwrap();
        assert!(r.complete(), "{r:?}");
        assert_eq!(r.batches_copied, 20);
        assert_eq!(r.audit_copied, 1);
        assert_eq!(r.devices["dev"].next_seq, 20);
        assert!(r.devices["dev"].missing_seqs.is_empty());
        let j = Journal::open(&dir.path().join("new.db"), SyncMode::Full).unwrap();
        assert_eq!(j.cursors().unwrap()["dev"].next_seq, 20);
        assert!(salvage(&src, &dir.path().join("new.db"), &keys, |_| {}).is_err());
    }

    #[test]
    fn altered_batches_are_reported_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let key = BatchKey::from_bytes(&[9; 32]);
        let src = dir.path().join("j.db");
        journal_with(&src, &key, 20);
        // Flip the envelope's last byte (AES-GCM's tag): authentication fails.
        Connection::open(&src)
            .unwrap()
            .execute(
                "UPDATE batches SET envelope = CAST(substr(envelope, 1, length(envelope) - 1) || x'00' AS BLOB) WHERE seq = 7",
                [],
            )
            .unwrap();
        let out = dir.path().join("new.db");
        let r = salvage(&src, &out, &Keyring::new(key), |_| {}).unwrap();
        assert!(!r.complete());
        assert_eq!(r.batches_copied, 19, "{r:?}");
        assert_eq!(r.batches_altered.len(), 1, "{r:?}");
        assert_eq!(r.batches_altered[0].seq, 7);
        assert_eq!(r.devices["dev"].missing_seqs, vec![(7, 7)]);
        // Seq 7 is never reused: the next batch is 20.
        let j = Journal::open(&out, SyncMode::Full).unwrap();
        assert_eq!(j.cursors().unwrap()["dev"].next_seq, 20);
    }

    #[test]
    fn a_damaged_page_loses_only_what_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let key = BatchKey::from_bytes(&[9; 32]);
        let src = dir.path().join("j.db");
        journal_with(&src, &key, 200);
        let pages = std::fs::metadata(&src).unwrap().len() / 4096;
        damage_page(&src, pages / 2);
        let out = dir.path().join("new.db");
        let r = salvage(&src, &out, &Keyring::new(key), |_| {}).unwrap();
        assert_ne!(r.source_check, "ok");
        assert!(!r.complete(), "{r:?}");
        // Lost rows: unreadable, in a skipped id range, or garbage that
        // fails authentication. Most survive.
        assert!(r.batches_copied < 200 && r.batches_copied >= 100, "{r:?}");
        let lost_seqs: u64 = r.devices["dev"]
            .missing_seqs
            .iter()
            .map(|(a, b)| b - a + 1)
            .sum();
        assert_eq!(r.batches_copied + lost_seqs, 200, "{r:?}");
        let j = Journal::open(&out, SyncMode::Full).unwrap();
        assert_eq!(j.cursors().unwrap()["dev"].next_seq, 200);
        let check: String = j
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn garbage_header_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let key = BatchKey::from_bytes(&[9; 32]);
        let src = dir.path().join("j.db");
        journal_with(&src, &key, 5);
        damage_page(&src, 1);
        let e = salvage(&src, &dir.path().join("new.db"), &Keyring::new(key), |_| {}).unwrap_err();
        assert!(matches!(e, SalvageError::Unreadable { .. }), "{e}");
        assert!(e.to_string().contains("backup"), "{e}");
    }
}
