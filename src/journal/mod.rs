//! The journal: the only code that touches SQLite.
//!
//! Invariants:
//! - a batch row, once committed, is only deleted after it was uploaded and
//!   its retention passed, or by quota eviction (`when_full`), which is
//!   counted, logged and written to the append-only audit table;
//! - `seq` is assigned at commit, per device, gapless from 0 over the
//!   device's life in this journal (the `devices` table remembers the next
//!   `seq` and sample index even when old rows are gone);
//! - WAL mode; one writer thread ([`writer`]); readers (CLI, uplink) use their
//!   own connections.

pub mod config;
mod evictions;
pub mod inspect;
mod page_cache;
pub mod reader;
pub mod refilter;
pub mod salvage;
pub mod writer;

pub use reader::{BatchRow, ReadBatch, RowKey, Selection, Unreadable};
pub use writer::{spawn_writer, JournalTx, UploadMark, WriterHandle};

use config::SyncMode;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// SQLite's page cache of the writing connection, in KiB (SQLite's
/// default is 2000). Appends touch the right edge of the b-trees and
/// eviction the left edge: a few dozen pages stay hot; a bigger cache only
/// holds pages of batches already written, which the soak saw filling for
/// the first quarter hour (heaptrack: +2.2 MiB of live heap between minute
/// 4 and minute 10, all SQLite page cache). At 1 MiB the idle default run's
/// anonymous memory still grew by 2 MiB over its first two minutes (until
/// the first WAL checkpoint); 64 pages hold the hot edges with room to
/// spare. A batch bigger than the cache spills its pages to the WAL
/// before the commit, which writes the same frames, only earlier.
const WRITER_CACHE_KIB: u32 = 256;
/// The page size of a journal created by [`Journal::open`] (SQLite's
/// default); `[journal] page_size_kib` chooses another for the daemon's.
const DEFAULT_PAGE_SIZE: u32 = config::SMALL_PAGE_KIB * 1024;
/// The page cache of a read-only connection (uplink paging, export, CLI):
/// each batch is read once, so only the b-trees' inner pages are worth
/// keeping.
const READER_CACHE_KIB: u32 = 256;

/// Current schema version (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE batches (
        id           INTEGER PRIMARY KEY,
        batch_id     TEXT    NOT NULL UNIQUE,
        device_id    TEXT    NOT NULL,
        seq          INTEGER NOT NULL,
        first_sample INTEGER NOT NULL,
        n_samples    INTEGER NOT NULL,
        t_start      REAL    NOT NULL,
        t_end        REAL    NOT NULL,
        key_id       TEXT    NOT NULL,
        created_at   REAL    NOT NULL,
        size         INTEGER NOT NULL,
        state        TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'uploaded', 'quarantined')),
        attempts     INTEGER NOT NULL DEFAULT 0,
        uploaded_at  REAL,
        last_error   TEXT,
        envelope     BLOB    NOT NULL,
        UNIQUE (device_id, seq)
    );
    CREATE INDEX batches_by_state ON batches (state, id);
    CREATE TABLE devices (
        device_id   TEXT PRIMARY KEY,
        next_seq    INTEGER NOT NULL,
        next_sample INTEGER NOT NULL
    );
    CREATE TABLE audit (
        id        INTEGER PRIMARY KEY,
        at        REAL NOT NULL,
        event     TEXT NOT NULL,
        device_id TEXT,
        detail    TEXT NOT NULL
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
];

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("journal {path}: cannot create its folder: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path} is corrupt ({detail}); nothing more is written to it. Next: `neuroedge journal salvage --journal {path} --out NEW.db` copies every readable batch into a new journal and lists what was lost; then point [journal] path at NEW.db (keep the damaged file)")]
    Corrupt { path: PathBuf, detail: String },
    #[error("journal {path} has schema version {found}, newer than this neuroedge ({supported}); upgrade neuroedge")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("journal {path} does not use WAL mode (got {mode:?}); is it on a filesystem without shared memory support?")]
    NotWal { path: PathBuf, mode: String },
}

/// Is this SQLite error a full disk or an I/O error (retry when space returns)?
pub fn is_storage_error(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DiskFull
                | SystemIoFailure
                | CannotOpen
                | DatabaseBusy
                | DatabaseLocked
                | ReadOnly
                | OutOfMemory
        )
    )
}

/// An audit record.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub at: f64,
    pub event: String,
    pub device_id: Option<String>,
    pub detail: serde_json::Value,
}

impl AuditEvent {
    pub fn new(event: &str, device_id: Option<&str>, detail: serde_json::Value) -> Self {
        AuditEvent {
            at: crate::clock::wall_unix(),
            event: event.to_string(),
            device_id: device_id.map(str::to_string),
            detail,
        }
    }
}

/// Whether commits succeed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalState {
    #[default]
    Ok,
    /// Writes are failing and being retried; batches wait in memory.
    Degraded,
}

/// The `state` column of a batch row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    Pending,
    Uploaded,
    Quarantined,
}

impl RowState {
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::Uploaded => "uploaded",
            RowState::Quarantined => "quarantined",
        }
    }

    /// From the column (a CHECK constraint allows only the three names).
    pub(crate) fn from_sql(s: &str) -> RowState {
        match s {
            "uploaded" => RowState::Uploaded,
            "quarantined" => RowState::Quarantined,
            _ => RowState::Pending,
        }
    }
}

/// Journal figures for `status` and `health`, kept current by the writer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalStatus {
    pub path: String,
    pub pending_batches: u64,
    pub pending_bytes: u64,
    /// Seconds since the oldest pending batch was created (null if none).
    pub oldest_pending_age_s: Option<f64>,
    #[serde(skip)]
    pub oldest_pending_created_at: Option<f64>,
    pub total_bytes: u64,
    pub max_bytes: u64,
    pub evicted_batches: u64,
    pub refused_batches: u64,
    /// Marked uploaded / quarantined since the daemon started.
    pub uploaded_batches: u64,
    pub quarantined_batches: u64,
    pub committed_batches: u64,
    /// Batches waiting in memory (queue to the writer and its retry queue).
    pub queued_batches: u64,
    pub state: JournalState,
    pub write_errors: u64,
    pub last_error: Option<String>,
}

/// Shared between the writer thread and readers of its status.
#[derive(Debug, Default)]
pub struct JournalShared {
    status: Mutex<JournalStatus>,
    /// Monotonic seconds ([`crate::clock`]) until which the writer is known
    /// to be alive: its latest turn, or while it waits idle, the end of its
    /// wait. The watchdog's liveness check.
    pub heartbeat: crate::sync::AtomicF64,
    /// Bytes of the batches sent to the writer and not yet taken from its
    /// channel (see [`writer::JournalTx::try_send_batch`]).
    pub(crate) channel_bytes: std::sync::atomic::AtomicU64,
    /// The writer thread has ended (or panicked): nothing will make room.
    pub(crate) writer_gone: std::sync::atomic::AtomicBool,
    /// Bytes the batch channel may hold, and the writer's queue as much
    /// again (see [`writer::QUEUE_SECONDS`]).
    pub(crate) queue_limit: std::sync::atomic::AtomicU64,
}

impl JournalShared {
    pub fn snapshot(&self) -> JournalStatus {
        let mut s = crate::sync::lock(&self.status).clone();
        s.oldest_pending_age_s = s
            .oldest_pending_created_at
            .map(|c| (crate::clock::wall_unix() - c).max(0.0));
        s
    }

    pub fn update(&self, f: impl FnOnce(&mut JournalStatus)) {
        f(&mut crate::sync::lock(&self.status));
    }
}

/// A batch waiting for upload.
#[derive(Debug, Clone)]
pub struct PendingBatch {
    /// Row id: commit order, for paging.
    pub id: i64,
    pub batch_id: String,
    pub device_id: String,
    pub seq: u64,
    /// The envelope, byte for byte as journaled (the upload body).
    pub envelope: Vec<u8>,
}

/// A page of pending batches (`Journal::pending_page`).
#[derive(Debug, Default)]
pub struct PendingPage {
    pub batches: Vec<PendingBatch>,
    /// The page stopped at its byte budget: more rows may follow even if
    /// it holds fewer than the rows asked for.
    pub cut: bool,
}

/// Where the next batch of a device continues.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceCursor {
    pub next_seq: u64,
    pub next_sample: u64,
}

/// An open journal database.
pub struct Journal {
    conn: Connection,
    path: PathBuf,
    /// The sync level it was opened for writing with (`None`: read-only).
    writable: Option<SyncMode>,
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |source| JournalError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Open (creating if needed, with SQLite's default page size) for
    /// writing: WAL, sync level, migrations, and a quick integrity check.
    pub fn open(path: &Path, sync: SyncMode) -> Result<Journal, JournalError> {
        Journal::open_with(path, sync, DEFAULT_PAGE_SIZE)
    }

    /// [`Journal::open`], a new file getting pages of `page_size` bytes (a
    /// power of two, 512 to 65 536); an existing one keeps its own.
    pub fn open_with(path: &Path, sync: SyncMode, page_size: u32) -> Result<Journal, JournalError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| JournalError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let e = sqlite_err(path);
        let conn = Connection::open(path).map_err(&e)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(&e)?;
        // Takes effect only while the file is empty (before WAL mode).
        conn.execute_batch(&format!("PRAGMA page_size = {page_size}"))
            .map_err(&e)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|err| classify(path, err))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::NotWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        let sync_pragma = match sync {
            SyncMode::Full => "PRAGMA synchronous = FULL",
            SyncMode::Normal => "PRAGMA synchronous = NORMAL",
        };
        conn.execute_batch(sync_pragma).map_err(&e)?;
        conn.execute_batch(&format!("PRAGMA cache_size = -{WRITER_CACHE_KIB}"))
            .map_err(&e)?;
        let mut j = Journal {
            conn,
            path: path.to_path_buf(),
            writable: Some(sync),
        };
        j.migrate()?;
        let check: String = j
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|err| classify(path, err))?;
        if check != "ok" {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                detail: check,
            });
        }
        Ok(j)
    }

    /// Open an existing journal read-only (CLI, while the daemon runs).
    pub fn open_readonly(path: &Path) -> Result<Journal, JournalError> {
        let e = sqlite_err(path);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(&e)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(&e)?;
        conn.execute_batch(&format!("PRAGMA cache_size = -{READER_CACHE_KIB}"))
            .map_err(&e)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|err| classify(path, err))?;
        if version > SCHEMA_VERSION {
            return Err(JournalError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Journal {
            conn,
            path: path.to_path_buf(),
            writable: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's SQLite page size, bytes.
    pub fn page_size(&self) -> Result<u32, JournalError> {
        self.conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sqlite_err(&self.path))
    }

    /// Close and open again for writing, with the start-up checks
    /// (`quick_check`). After a failed write or sync nothing the old
    /// connection holds in memory is trusted: SQLite rebuilds its view of
    /// the WAL from the file, as after a crash (the lesson PostgreSQL
    /// learned about fsync errors: do not retry on state the kernel may
    /// have dropped; recover from what is on disk).
    pub fn reopen(&mut self) -> Result<(), JournalError> {
        let Some(sync) = self.writable else {
            return Err(JournalError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("opened read-only; cannot reopen for writing"),
            });
        };
        *self = Journal::open(&self.path, sync)?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), JournalError> {
        let path = self.path.clone();
        let e = sqlite_err(&path);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|err| classify(&path, err))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(&e)?;
        if version > SCHEMA_VERSION {
            return Err(JournalError::TooNew {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(m).map_err(&e)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(&e)?;
        }
        tx.commit().map_err(&e)
    }

    /// Next seq and sample index of every device the journal has seen.
    pub fn cursors(&self) -> Result<HashMap<String, DeviceCursor>, JournalError> {
        let e = sqlite_err(&self.path);
        let mut st = self
            .conn
            .prepare("SELECT device_id, next_seq, next_sample FROM devices")
            .map_err(&e)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    DeviceCursor {
                        next_seq: r.get::<_, i64>(1)? as u64,
                        next_sample: r.get::<_, i64>(2)? as u64,
                    },
                ))
            })
            .map_err(&e)?;
        rows.collect::<Result<_, _>>().map_err(&e)
    }

    /// Append an audit record (outside any other transaction).
    pub fn audit(&self, ev: &AuditEvent) -> Result<(), JournalError> {
        insert_audit(&self.conn, ev).map_err(sqlite_err(&self.path))
    }

    /// Figures for `status`, computed from the tables.
    pub fn load_status(&self, max_bytes: u64) -> Result<JournalStatus, JournalError> {
        let e = sqlite_err(&self.path);
        let (pending_batches, pending_bytes): (i64, i64) = self
            .conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM batches WHERE state = 'pending'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(&e)?;
        let total: i64 = self
            .conn
            .query_row("SELECT COALESCE(SUM(size), 0) FROM batches", [], |r| {
                r.get(0)
            })
            .map_err(&e)?;
        let evicted: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE event = 'evicted'",
                [],
                |r| r.get(0),
            )
            .map_err(&e)?;
        Ok(JournalStatus {
            path: self.path.display().to_string(),
            pending_batches: pending_batches as u64,
            pending_bytes: pending_bytes as u64,
            oldest_pending_age_s: None,
            oldest_pending_created_at: self.oldest_pending_created_at()?,
            total_bytes: total as u64,
            max_bytes,
            evicted_batches: evicted as u64,
            state: JournalState::Ok,
            ..Default::default()
        })
    }

    /// Batches the backend refused for good (kept in the journal).
    pub fn quarantined_count(&self) -> Result<u64, JournalError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM batches WHERE state = 'quarantined'",
                [],
                |r| r.get(0),
            )
            .map_err(sqlite_err(&self.path))?;
        Ok(n.max(0) as u64)
    }

    pub fn oldest_pending_created_at(&self) -> Result<Option<f64>, JournalError> {
        // Asked after every commit: the statement is prepared once.
        self.conn
            .prepare_cached(
                "SELECT created_at FROM batches WHERE state = 'pending' ORDER BY id LIMIT 1",
            )
            .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
            .map_err(sqlite_err(&self.path))
    }

    /// Up to `limit` pending batches with row id > `after_id`, in commit
    /// order (which is `seq` order per device), and no more envelope
    /// bytes than `max_bytes` (the first row comes whatever its size; a row
    /// that would pass the budget is not read). Keyset paging keeps memory
    /// flat whatever the backlog.
    pub fn pending_page(
        &self,
        after_id: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<PendingPage, JournalError> {
        let e = sqlite_err(&self.path);
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, batch_id, device_id, seq, size, envelope FROM batches
                 WHERE state = 'pending' AND id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(&e)?;
        let mut rows = st.query(params![after_id, limit as i64]).map_err(&e)?;
        let mut page = PendingPage::default();
        let mut bytes = 0usize;
        while let Some(r) = rows.next().map_err(&e)? {
            let size = r.get::<_, i64>(4).map_err(&e)? as usize;
            if !page.batches.is_empty() && bytes + size > max_bytes {
                page.cut = true;
                break;
            }
            bytes += size;
            page.batches.push(PendingBatch {
                id: r.get(0).map_err(&e)?,
                batch_id: r.get(1).map_err(&e)?,
                device_id: r.get(2).map_err(&e)?,
                seq: r.get::<_, i64>(3).map_err(&e)? as u64,
                envelope: r.get(5).map_err(&e)?,
            });
        }
        Ok(page)
    }

    /// Checkpoint the WAL into the main file (clean shutdown).
    pub fn checkpoint(&self) -> Result<(), JournalError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(sqlite_err(&self.path))
    }
}

#[cfg(test)]
impl Journal {
    /// Insert a sealed batch's row as the writer would (reader tests).
    pub(crate) fn insert_row_for_tests(&self, h: &crate::batch::BatchHeader, envelope: &[u8]) {
        self.conn
            .execute(
                writer::INSERT_BATCH,
                params![
                    h.batch_id,
                    h.device_id,
                    h.seq as i64,
                    h.first_sample as i64,
                    h.n_samples as i64,
                    h.t_start,
                    h.t_end,
                    h.key_id,
                    h.created_at,
                    envelope.len() as i64,
                    envelope
                ],
            )
            .expect("insert row");
        self.conn
            .execute(
                "INSERT INTO devices (device_id, next_seq, next_sample) VALUES (?1, ?2, 0)
                 ON CONFLICT (device_id) DO UPDATE SET next_seq = excluded.next_seq",
                params![h.device_id, h.seq as i64 + 1],
            )
            .expect("insert device");
    }
}

fn classify(path: &Path, e: rusqlite::Error) -> JournalError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase) => {
            JournalError::Corrupt {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }
        }
        _ => JournalError::Sqlite {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

pub(crate) fn insert_audit(conn: &Connection, ev: &AuditEvent) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO audit (at, event, device_id, detail) VALUES (?1, ?2, ?3, ?4)",
        params![ev.at, ev.event, ev.device_id, ev.detail.to_string()],
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_journal_gets_the_page_size_asked_and_keeps_it() {
        let d = tempfile::tempdir().unwrap();
        let page = |j: &Journal| -> i64 { j.page_size().unwrap().into() };
        let p = d.path().join("big.db");
        let j = Journal::open_with(&p, SyncMode::Full, 65536).unwrap();
        assert_eq!(page(&j), 65536);
        j.audit(&AuditEvent::new("test", None, serde_json::json!({})))
            .unwrap();
        drop(j);
        // Reopened with another size (or the default): it keeps its own.
        let j = Journal::open(&p, SyncMode::Full).unwrap();
        assert_eq!(page(&j), 65536);
        let n: i64 = j
            .conn
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
            .unwrap();
        assert!(n >= 1);
        let j = Journal::open(&d.path().join("small.db"), SyncMode::Full).unwrap();
        assert_eq!(page(&j), i64::from(DEFAULT_PAGE_SIZE));
    }

    #[test]
    fn open_migrates_and_reopens() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j/journal.db");
        let j = Journal::open(&p, SyncMode::Full).unwrap();
        let v: i64 = j
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        j.audit(&AuditEvent::new("test", None, serde_json::json!({})))
            .unwrap();
        drop(j);
        let j = Journal::open(&p, SyncMode::Normal).unwrap();
        let n: i64 = j
            .conn
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert!(
            j.conn.execute("DELETE FROM audit", []).is_err(),
            "audit is append-only"
        );
        assert!(j.conn.execute("UPDATE audit SET event = 'x'", []).is_err());
    }

    #[test]
    fn refuses_newer_schema_and_garbage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.db");
        let j = Journal::open(&p, SyncMode::Full).unwrap();
        j.conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(j);
        assert!(matches!(
            Journal::open(&p, SyncMode::Full),
            Err(JournalError::TooNew { .. })
        ));
        let g = d.path().join("garbage.db");
        std::fs::write(&g, vec![0x55u8; 8192]).unwrap();
        let e = Journal::open(&g, SyncMode::Full).err().unwrap();
        assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
    }
}
