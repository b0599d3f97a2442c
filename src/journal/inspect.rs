//! Read-only views of a journal for the `neuroedge journal` commands.

use super::reader::open_row;
use super::{Journal, JournalError, ReadBatch, RowKey, Selection};
use crate::crypto::Keyring;
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

/// Batches in (device, seq) order, optionally of one device / one state.
pub fn list(
    j: &Journal,
    device: Option<&str>,
    state: Option<&str>,
    limit: u64,
) -> Result<Vec<Row>, JournalError> {
    let sel = Selection {
        device: device.map(str::to_string),
        ..Selection::all()
    };
    let mut out = Vec::new();
    for r in j.rows(sel) {
        let r = r?;
        if out.len() as u64 >= limit {
            break;
        }
        if state.is_some_and(|s| s != r.state) {
            continue;
        }
        out.push(Row {
            batch_id: r.batch_id,
            device_id: r.device_id,
            seq: r.seq,
            first_sample: r.first_sample,
            n_samples: r.n_samples,
            t_start: r.t_start,
            t_end: r.t_end,
            state: r.state,
            size: r.size,
            attempts: r.attempts,
        });
    }
    Ok(out)
}

/// The envelope of one batch, by batch_id or by (device, seq).
pub fn envelope(j: &Journal, key: RowKey<'_>) -> Result<Option<Vec<u8>>, JournalError> {
    Ok(j.row(key)?.map(|r| r.envelope))
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
    let mut last: Option<(String, u64)> = None;
    for row in j.rows(Selection::all()) {
        let row = row?;
        report.batches_checked += 1;
        if let Some((d, s)) = &last {
            if *d == row.device_id && row.seq != s + 1 {
                report.problems.push(format!(
                    "device {}: seq jumps from {s} to {}",
                    row.device_id, row.seq
                ));
            }
        }
        last = Some((row.device_id.clone(), row.seq));
        match open_row(keys, row, None) {
            ReadBatch::Unreadable(u) => report.problems.push(format!(
                "batch {} ({} seq {}): {}",
                u.batch_id, u.device_id, u.seq, u.reason
            )),
            ReadBatch::Opened { .. } => report.batches_ok += 1,
        }
        if report.batches_checked % 1000 == 0 {
            progress(report.batches_checked, total as u64);
        }
    }
    progress(report.batches_checked, total as u64);
    Ok(report)
}
