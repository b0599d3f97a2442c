//! Read-only views of a journal for the `neuroedge journal` commands.

use super::{Journal, JournalError};
use crate::batch::{self, BatchHeader};
use crate::crypto::Keyring;
use rusqlite::params;
use serde::Serialize;

fn err(j: &Journal) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |source| JournalError::Sqlite {
        path: j.path.clone(),
        source,
    }
}

#[derive(Debug, Serialize)]
pub struct DeviceStats {
    pub device_id: String,
    pub batches: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub next_seq: u64,
    pub samples: u64,
    pub pending: u64,
    pub uploaded: u64,
    pub quarantined: u64,
    pub t_first: Option<f64>,
    pub t_last: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub path: String,
    pub schema_version: i64,
    pub file_bytes: u64,
    pub batches: u64,
    pub batch_bytes: u64,
    pub pending_batches: u64,
    pub uploaded_batches: u64,
    pub quarantined_batches: u64,
    pub audit_records: u64,
    pub evicted_batches: u64,
    pub devices: Vec<DeviceStats>,
}

pub fn stats(j: &Journal) -> Result<Stats, JournalError> {
    let e = err(j);
    let c = &j.conn;
    let one = |sql: &str| {
        c.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
    };
    let mut st = c
        .prepare(
            "SELECT d.device_id, d.next_seq,
                    COUNT(b.id), MIN(b.seq), MAX(b.seq), COALESCE(SUM(b.n_samples), 0),
                    COALESCE(SUM(b.state = 'pending'), 0), COALESCE(SUM(b.state = 'uploaded'), 0),
                    COALESCE(SUM(b.state = 'quarantined'), 0), MIN(b.t_start), MAX(b.t_end)
             FROM devices d LEFT JOIN batches b ON b.device_id = d.device_id
             GROUP BY d.device_id ORDER BY d.device_id",
        )
        .map_err(&e)?;
    let devices = st
        .query_map([], |r| {
            Ok(DeviceStats {
                device_id: r.get(0)?,
                next_seq: r.get::<_, i64>(1)? as u64,
                batches: r.get::<_, i64>(2)? as u64,
                first_seq: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                last_seq: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                samples: r.get::<_, i64>(5)? as u64,
                pending: r.get::<_, i64>(6)? as u64,
                uploaded: r.get::<_, i64>(7)? as u64,
                quarantined: r.get::<_, i64>(8)? as u64,
                t_first: r.get(9)?,
                t_last: r.get(10)?,
            })
        })
        .map_err(&e)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(&e)?;
    let page_count = one("PRAGMA page_count").map_err(&e)?;
    let page_size = one("PRAGMA page_size").map_err(&e)?;
    Ok(Stats {
        path: j.path.display().to_string(),
        schema_version: one("PRAGMA user_version").map_err(&e)? as i64,
        file_bytes: page_count * page_size,
        batches: one("SELECT COUNT(*) FROM batches").map_err(&e)?,
        batch_bytes: one("SELECT COALESCE(SUM(size), 0) FROM batches").map_err(&e)?,
        pending_batches: one("SELECT COUNT(*) FROM batches WHERE state = 'pending'").map_err(&e)?,
        uploaded_batches: one("SELECT COUNT(*) FROM batches WHERE state = 'uploaded'")
            .map_err(&e)?,
        quarantined_batches: one("SELECT COUNT(*) FROM batches WHERE state = 'quarantined'")
            .map_err(&e)?,
        audit_records: one("SELECT COUNT(*) FROM audit").map_err(&e)?,
        evicted_batches: one("SELECT COUNT(*) FROM audit WHERE event = 'evicted'").map_err(&e)?,
        devices,
    })
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub batch_id: String,
    pub device_id: String,
    pub seq: u64,
    pub first_sample: u64,
    pub n_samples: u64,
    pub t_start: f64,
    pub t_end: f64,
    pub state: String,
    pub size: u64,
    pub attempts: u64,
}

/// Batches in journal order, optionally of one device / one state.
pub fn list(
    j: &Journal,
    device: Option<&str>,
    state: Option<&str>,
    limit: u64,
) -> Result<Vec<Row>, JournalError> {
    let e = err(j);
    let mut st = j
        .conn
        .prepare(
            "SELECT batch_id, device_id, seq, first_sample, n_samples, t_start, t_end, state, size, attempts
             FROM batches WHERE (?1 IS NULL OR device_id = ?1) AND (?2 IS NULL OR state = ?2)
             ORDER BY id LIMIT ?3",
        )
        .map_err(&e)?;
    let rows = st
        .query_map(params![device, state, limit as i64], |r| {
            Ok(Row {
                batch_id: r.get(0)?,
                device_id: r.get(1)?,
                seq: r.get::<_, i64>(2)? as u64,
                first_sample: r.get::<_, i64>(3)? as u64,
                n_samples: r.get::<_, i64>(4)? as u64,
                t_start: r.get(5)?,
                t_end: r.get(6)?,
                state: r.get(7)?,
                size: r.get::<_, i64>(8)? as u64,
                attempts: r.get::<_, i64>(9)? as u64,
            })
        })
        .map_err(&e)?;
    rows.collect::<Result<_, _>>().map_err(&e)
}

/// The envelope of one batch, by batch_id or by (device, seq).
pub fn envelope(
    j: &Journal,
    batch_id: Option<&str>,
    device: Option<&str>,
    seq: Option<u64>,
) -> Result<Option<Vec<u8>>, JournalError> {
    use rusqlite::OptionalExtension;
    let e = err(j);
    j.conn
        .query_row(
            "SELECT envelope FROM batches WHERE (?1 IS NOT NULL AND batch_id = ?1) OR (?1 IS NULL AND device_id = ?2 AND seq = ?3)",
            params![batch_id, device, seq.map(|s| s as i64)],
            |r| r.get(0),
        )
        .optional()
        .map_err(&e)
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub integrity: String,
    pub batches_checked: u64,
    pub batches_ok: u64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.integrity == "ok" && self.problems.is_empty()
    }
}

/// Full check: SQLite integrity, every envelope opens and matches its row,
/// and seq is gapless per device above the oldest row kept.
pub fn verify(
    j: &Journal,
    keys: &Keyring,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, JournalError> {
    let e = err(j);
    let mut report = VerifyReport {
        integrity: j
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(&e)?,
        ..Default::default()
    };
    let total: i64 = j
        .conn
        .query_row("SELECT COUNT(*) FROM batches", [], |r| r.get(0))
        .map_err(&e)?;
    let mut st = j
        .conn
        .prepare("SELECT batch_id, device_id, seq, first_sample, n_samples, key_id, envelope FROM batches ORDER BY device_id, seq")
        .map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    let mut last: Option<(String, u64)> = None;
    while let Some(r) = rows.next().map_err(&e)? {
        let batch_id: String = r.get(0).map_err(&e)?;
        let device: String = r.get(1).map_err(&e)?;
        let seq = r.get::<_, i64>(2).map_err(&e)? as u64;
        let first_sample = r.get::<_, i64>(3).map_err(&e)? as u64;
        let n_samples = r.get::<_, i64>(4).map_err(&e)? as u64;
        let env: Vec<u8> = r.get(6).map_err(&e)?;
        report.batches_checked += 1;
        if let Some((d, s)) = &last {
            if *d == device && seq != s + 1 {
                report
                    .problems
                    .push(format!("device {device}: seq jumps from {s} to {seq}"));
            }
        }
        last = Some((device.clone(), seq));
        match batch::open(keys, &env) {
            Err(err) => report
                .problems
                .push(format!("batch {batch_id} ({device} seq {seq}): {err}")),
            Ok((h, data)) => {
                let mismatch = check_header(&h, &batch_id, &device, seq, first_sample, n_samples);
                let shape = data.raw.len() == data.timestamps.len() * data.channels.len()
                    && data.filtered.len() == data.raw.len()
                    && data.timestamps.len() as u64 == h.n_samples;
                if let Some(m) = mismatch {
                    report.problems.push(format!(
                        "batch {batch_id}: header disagrees with its row ({m})"
                    ));
                } else if !shape {
                    report.problems.push(format!(
                        "batch {batch_id}: sample arrays have the wrong shape"
                    ));
                } else {
                    report.batches_ok += 1;
                }
            }
        }
        if report.batches_checked % 1000 == 0 {
            progress(report.batches_checked, total as u64);
        }
    }
    progress(report.batches_checked, total as u64);
    Ok(report)
}

fn check_header(
    h: &BatchHeader,
    batch_id: &str,
    device: &str,
    seq: u64,
    first_sample: u64,
    n: u64,
) -> Option<&'static str> {
    if h.batch_id != batch_id {
        Some("batch_id")
    } else if h.device_id != device {
        Some("device_id")
    } else if h.seq != seq {
        Some("seq")
    } else if h.first_sample != first_sample {
        Some("first_sample")
    } else if h.n_samples != n {
        Some("n_samples")
    } else if h.format != batch::FORMAT {
        Some("format")
    } else {
        None
    }
}
