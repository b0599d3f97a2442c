//! The journal writer thread: owns the SQLite connection, seals batches
//! (seq is assigned here, at commit, so it stays gapless), enforces the
//! quota, and survives a full disk.
//!
//! Failure model: a commit that fails (SQLITE_FULL, SQLITE_IOERR, ...) is
//! rolled back as a whole; its batches stay in memory, unsealed, in a bounded
//! queue, and the commit is retried with backoff until it succeeds. While
//! retrying, `health` reports the journal `degraded`. When the queue is full
//! the writer stops taking batches, and the processing threads drop new ones
//! as counted gaps rather than block.

use super::config::{WhenFull, LARGE_PAGE_KIB, LARGE_PAGE_RATE};
use super::evictions::{self, Deleted, EvictionLog};
use super::page_cache::{PageCache, RELEASE_EVERY_BYTES};
use super::{
    insert_audit, AuditEvent, DeviceCursor, Journal, JournalShared, JournalState, RowState,
};
use crate::backoff::Backoff;
use crate::batch::{seal_with, BatchData, Compressor, Gap, GapCause, SealParams};
use crate::crypto::Keyring;
use crossbeam_channel::{Receiver, Sender};
use rusqlite::{params, OptionalExtension};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Batches per transaction: group commit when a backlog has built up.
const MAX_PER_TX: usize = 64;
/// Queue between processing threads and the writer.
const CHANNEL_BATCHES: usize = 64;
/// Seconds of the devices' samples the batch channel holds, and the
/// writer's queue as much again: how long the disk may stall before a
/// batch is refused (a journal gap). 1 024 ch × 30 kHz (123 MB/s of raw
/// samples): 184 MB each, ~3 s in all; small rigs stay at the configured
/// floor (64 MiB in the daemon). The memory is used only while a stall
/// lasts.
pub const QUEUE_SECONDS: f64 = 1.5;
/// At most this many bytes each, whatever the rigs' rates.
pub const QUEUE_CAP: u64 = 256 << 20;
/// Retrying a failed commit.
const RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
/// Upload verdicts that may wait for the writer's next transaction; when
/// full, the uplink keeps them and retries (a bounded channel allocates
/// and touches all of its slots up front: 4096 was 256 KiB of every run's
/// memory; the writer takes them all at least every `IDLE_WAIT`).
const MARKS_QUEUED: usize = 1024;
/// Audit records that may wait for the writer: state changes of devices,
/// the uplink and the daemon, which their back-offs keep to a few a
/// second even while the writer retries a failing disk (at most 15 s).
/// A full queue loses the record and says so in the log. (4096 slots were
/// 384 KiB resident in every run, idle or not.)
const AUDITS_QUEUED: usize = 1024;
/// How long the writer sleeps at most when nothing arrives. A batch, an
/// audit record, an upload mark or the shutdown wakes it at once. Its
/// heartbeat (the systemd watchdog's liveness check) reads "alive until
/// the wait ends" while it waits, and "now" once it works: a writer stuck
/// in a commit still goes silent. (It woke every 200 ms to stamp the
/// heartbeat and look for records and marks: five wake-ups a second, each
/// costing more than its work.)
const IDLE_WAIT: Duration = Duration::from_secs(5);
const MAINTENANCE_EVERY: Duration = Duration::from_secs(30);
/// A transaction longer than this is logged (a warning with where the
/// time went): while it lasts, batches wait in memory, and a stall longer
/// than the queue's [`QUEUE_SECONDS`] drops them.
const SLOW_TRANSACTION: Duration = Duration::from_secs(1);
/// How long shutdown keeps retrying a failing commit before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub site_id: String,
    pub node_id: String,
    pub max_bytes: u64,
    pub when_full: WhenFull,
    pub retain_uploaded: Duration,
    /// Bound of the in-memory queue of unsealed batches (bytes), and of
    /// the channel into it: at least this, more for rigs whose
    /// [`QUEUE_SECONDS`] of samples need more (at most [`QUEUE_CAP`]).
    pub max_queue_bytes: u64,
    pub compress: bool,
    /// The batch format sealed (`[journal] batch_format`).
    pub format: crate::batch::BatchFormat,
}

/// The uplink's verdict on one batch, applied by the writer thread (the
/// only SQLite writer), so counters and rows stay consistent.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadMark {
    /// The backend acknowledged the batch (2xx): kept `retain_uploaded`, then deleted.
    Uploaded { batch_id: String },
    /// The backend refused the batch for good: kept, counted, audited, never sent again.
    Quarantined { batch_id: String, reason: String },
    /// A failed attempt that will be retried: counts attempts, keeps the error.
    Attempt { batch_id: String, error: String },
}

/// Sending side, cloned into every device.
#[derive(Clone)]
pub struct JournalTx {
    /// Bounded in bytes as well as in count (`JournalShared::queue_limit`,
    /// beyond one batch, which an empty channel always takes): a
    /// high-density batch holds up to 16 MiB of samples
    /// (`pipeline::MAX_BATCH_SAMPLE_BYTES`), so a count alone would let a
    /// stalled disk pin a gigabyte.
    batches: Sender<BatchData>,
    audits: Sender<AuditEvent>,
    marks: Sender<UploadMark>,
    shared: Arc<JournalShared>,
    commits: watch::Receiver<u64>,
}

impl JournalTx {
    /// Queue a batch without waiting; false when the queue is full (or
    /// the writer is gone) and the batch was not taken.
    pub fn try_send_batch(&self, b: BatchData) -> bool {
        let n = batch_bytes(&b);
        if !self.reserve(n) {
            return false;
        }
        let taken = self.batches.try_send(b).is_ok();
        if !taken {
            self.release(n);
        }
        taken
    }

    /// Queue a batch, waiting for room. Only for sources that can wait
    /// (the unpaced synthetic source); real devices use `try_send_batch`.
    pub fn send_batch_blocking(&self, b: BatchData) -> bool {
        let n = batch_bytes(&b);
        while !self.reserve(n) {
            if self.shared.writer_gone.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let taken = self.batches.send(b).is_ok();
        if !taken {
            self.release(n);
        }
        taken
    }

    /// Count `n` bytes into the channel if they fit its byte budget (an
    /// empty channel takes any batch).
    fn reserve(&self, n: u64) -> bool {
        let held = &self.shared.channel_bytes;
        let before = held.fetch_add(n, Ordering::AcqRel);
        let limit = self.shared.queue_limit.load(Ordering::Acquire);
        if before > 0 && before.saturating_add(n) > limit {
            held.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self, n: u64) {
        self.shared.channel_bytes.fetch_sub(n, Ordering::AcqRel);
    }

    /// Record the uplink's verdict on a batch; applied by the writer in its
    /// next transaction. False if the queue is full (retry later).
    pub fn mark_upload(&self, m: UploadMark) -> bool {
        self.marks.try_send(m).is_ok()
    }

    /// Queue an audit record; never waits (a full audit queue is logged).
    pub fn audit(&self, ev: AuditEvent) {
        if self.audits.try_send(ev).is_err() {
            tracing::warn!("audit queue full: an audit record was not written");
        }
    }

    pub fn shared(&self) -> &Arc<JournalShared> {
        &self.shared
    }

    /// The number of batches committed since the writer started, changing
    /// with every commit: the delivery engine waits on it instead of
    /// polling.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }
}

#[cfg(test)]
impl JournalTx {
    /// A sender whose batches land in the returned receiver instead of a
    /// journal (unit tests of the processing stage); `capacity` bounds the
    /// batch queue as the real one is bounded.
    pub(crate) fn for_tests(capacity: usize) -> (JournalTx, TestJournal) {
        let (btx, brx) = crossbeam_channel::bounded(capacity);
        let (atx, arx) = crossbeam_channel::bounded(AUDITS_QUEUED);
        let (mtx, mrx) = crossbeam_channel::bounded(16);
        let (_, commits) = watch::channel(0);
        let shared = Arc::new(JournalShared::default());
        shared.queue_limit.store(u64::MAX, Ordering::Release);
        let tx = JournalTx {
            batches: btx,
            audits: atx,
            marks: mtx,
            shared,
            commits,
        };
        (
            tx,
            TestJournal {
                batches: brx,
                audits: arx,
                _marks: mrx,
            },
        )
    }
}

/// The receiving ends of [`JournalTx::for_tests`].
#[cfg(test)]
pub(crate) struct TestJournal {
    pub batches: Receiver<BatchData>,
    pub audits: Receiver<AuditEvent>,
    _marks: Receiver<UploadMark>,
}

/// The running writer.
pub struct WriterHandle {
    tx: JournalTx,
    stop: Arc<AtomicBool>,
    /// Wakes the waiting writer to see `stop`.
    wake: Sender<()>,
    thread: JoinHandle<()>,
}

impl WriterHandle {
    pub fn sender(&self) -> JournalTx {
        self.tx.clone()
    }

    /// Commit everything queued, write the closing audit record, checkpoint
    /// and close. Call after every device has stopped.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.try_send(());
        let _ = self.thread.join();
    }
}

/// Start the writer thread on an open journal.
pub fn spawn_writer(
    journal: Journal,
    keyring: Arc<Keyring>,
    cfg: WriterConfig,
) -> Result<WriterHandle, super::JournalError> {
    let cursors = journal.cursors()?;
    let mut status = journal.load_status(cfg.max_bytes)?;
    let shared = Arc::new(JournalShared::default());
    shared
        .queue_limit
        .store(cfg.max_queue_bytes, Ordering::Release);
    status.state = JournalState::Ok;
    let total_bytes = status.total_bytes;
    let pending = (status.pending_batches, status.pending_bytes);
    shared.update(|s| *s = status);
    let (btx, brx) = crossbeam_channel::bounded(CHANNEL_BATCHES);
    let (atx, arx) = crossbeam_channel::bounded(AUDITS_QUEUED);
    let (mtx, mrx) = crossbeam_channel::bounded(MARKS_QUEUED);
    let (commits_tx, commits_rx) = watch::channel(0u64);
    let tx = JournalTx {
        batches: btx,
        audits: atx,
        marks: mtx,
        shared: shared.clone(),
        commits: commits_rx,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    let mut w = Writer {
        wake: wake_rx,
        page_cache: PageCache::for_journal(journal.path(), cfg.max_bytes),
        rates: HashMap::new(),
        small_pages: journal
            .page_size()
            .ok()
            .filter(|&p| p < LARGE_PAGE_KIB * 1024),
        compressor: Compressor::new(),
        evictions: EvictionLog::default(),
        unreleased: 0,
        journal,
        keyring,
        cfg,
        cursors,
        queue: VecDeque::new(),
        queue_bytes: 0,
        audits: Vec::new(),
        carry_gaps: HashMap::new(),
        total_bytes,
        pending,
        shared,
        commits: commits_tx,
        failing: None,
        reopen: false,
        uncertain: None,
        brx,
        arx,
        mrx,
        marks: Vec::new(),
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || w.run())
        .map_err(|source| super::JournalError::Io {
            path: std::path::PathBuf::from("journal writer thread"),
            source,
        })?;
    Ok(WriterHandle {
        tx,
        stop,
        wake: wake_tx,
        thread,
    })
}

/// Approximate memory held by an unsealed batch.
fn batch_bytes(b: &BatchData) -> u64 {
    (b.timestamps.len() * 8 + b.raw.len() * 4 + b.filtered.len() * 4 + 256) as u64
}

/// A commit that keeps failing: retried with [`RETRY`] until it succeeds.
struct Failing {
    retry_at: Instant,
    /// Consecutive failed attempts.
    attempts: u32,
    since: Instant,
}

/// What happened to one queued batch in a transaction.
enum Outcome {
    Committed,
    Refused,
}

/// A row deleted to make room.
struct Evicted {
    batch_id: String,
    device_id: String,
    seq: i64,
    n_samples: i64,
    size: i64,
    state: RowState,
}

/// Upload verdicts applied in a transaction.
#[derive(Debug, Default, Clone, Copy)]
struct MarkTally {
    uploaded: u64,
    quarantined: u64,
    /// Bytes of the rows that left `pending`.
    bytes: u64,
}

/// Everything one transaction did, applied to memory only once it
/// committed (a failed commit leaves memory as it was).
#[derive(Default)]
struct Tally {
    /// Cursors of the devices whose batches were committed.
    cursors: HashMap<String, DeviceCursor>,
    /// Bytes of all rows after the transaction (the quota's measure).
    total: u64,
    /// One per queued batch taken, in queue order.
    outcomes: Vec<Outcome>,
    evicted: Vec<Evicted>,
    /// Batches committed: (count, bytes).
    added: (u64, u64),
    marks: MarkTally,
    /// Audit rows this transaction writes itself.
    audits: Vec<AuditEvent>,
    /// How many of the writer's queued audit records and upload marks
    /// the transaction took (more may arrive before a retry).
    audits_taken: usize,
    marks_taken: usize,
}

struct Writer {
    journal: Journal,
    keyring: Arc<Keyring>,
    cfg: WriterConfig,
    cursors: HashMap<String, DeviceCursor>,
    queue: VecDeque<BatchData>,
    queue_bytes: u64,
    audits: Vec<AuditEvent>,
    /// Gap to prepend to a device's next batch after one was refused.
    carry_gaps: HashMap<String, Gap>,
    total_bytes: u64,
    /// (count, bytes) of pending rows.
    pending: (u64, u64),
    shared: Arc<JournalShared>,
    /// Batches committed since the daemon started, for the delivery engine.
    commits: watch::Sender<u64>,
    failing: Option<Failing>,
    /// A write or sync failed: reopen (and recheck) before the next try.
    reopen: bool,
    /// A transaction whose COMMIT failed: on disk or not, to be decided.
    uncertain: Option<Tally>,
    brx: Receiver<BatchData>,
    arx: Receiver<AuditEvent>,
    mrx: Receiver<UploadMark>,
    /// The handle's shutdown.
    wake: Receiver<()>,
    /// Upload verdicts waiting for the next commit.
    marks: Vec<UploadMark>,
    stop: Arc<AtomicBool>,
    /// The journal file's pages in the OS page cache (handed back only
    /// when the quota could not stay cached anyway), and the bytes
    /// committed since they were last handed back.
    page_cache: Option<PageCache>,
    unreleased: u64,
    /// Bytes and channel-samples per second of each device, from its
    /// latest batch.
    rates: HashMap<String, (f64, f64)>,
    /// The journal's page size, while nobody has been told yet that the
    /// devices' rate would suit larger pages (see [`Writer::follow_rate`]).
    small_pages: Option<u32>,
    /// zstd's context, kept for every batch sealed.
    compressor: Compressor,
    /// Evictions not logged yet.
    evictions: EvictionLog,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.writer_gone.store(true, Ordering::Release);
    }
}

impl Writer {
    fn run(&mut self) {
        let mut last_maintenance = Instant::now();
        let mut stopping_since: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if stopping && stopping_since.is_none() {
                stopping_since = Some(Instant::now());
            }
            self.receive(stopping);
            while let Ok(ev) = self.arx.try_recv() {
                self.audits.push(ev);
            }
            while let Ok(m) = self.mrx.try_recv() {
                self.marks.push(m);
            }
            let may_try = self
                .failing
                .as_ref()
                .is_none_or(|f| Instant::now() >= f.retry_at);
            if may_try
                && !(self.queue.is_empty() && self.audits.is_empty() && self.marks.is_empty())
            {
                self.commit_all();
            }
            if last_maintenance.elapsed() >= MAINTENANCE_EVERY && self.failing.is_none() {
                self.maintenance();
                last_maintenance = Instant::now();
            }
            self.publish_queue_len();
            self.shared
                .heartbeat
                .store(crate::clock::global().mono_now());
            if let Some(since) = stopping_since {
                let drained = self.queue.is_empty() && self.brx.is_empty();
                if drained || since.elapsed() > SHUTDOWN_GRACE {
                    if !drained {
                        tracing::error!(
                            batches = self.queue.len() + self.brx.len(),
                            "journal still failing at shutdown: these batches were never committed and are lost"
                        );
                    }
                    break;
                }
            }
        }
        self.close();
    }

    /// Take batches from the channel: wait when idle, never beyond the
    /// memory bound (except at shutdown, when nothing new arrives).
    fn receive(&mut self, stopping: bool) {
        let room =
            |w: &Writer| stopping || w.queue_bytes < w.shared.queue_limit.load(Ordering::Acquire);
        let wait = match &self.failing {
            Some(f) => f
                .retry_at
                .saturating_duration_since(Instant::now())
                .min(IDLE_WAIT),
            None if self.queue.is_empty() && !stopping => IDLE_WAIT,
            None => Duration::ZERO,
        };
        if !wait.is_zero() {
            self.wait_for_any(wait, room(self));
        }
        while room(self) {
            match self.brx.try_recv() {
                Ok(b) => self.enqueue(b),
                Err(_) => break,
            }
        }
    }

    /// Wait at most `wait` for the first of: a batch (only with `room`),
    /// an audit record, an upload mark, the shutdown; and take it.
    fn wait_for_any(&mut self, wait: Duration, room: bool) {
        let clock = crate::clock::global();
        self.shared
            .heartbeat
            .store(clock.mono_now() + wait.as_secs_f64());
        let mut sel = crossbeam_channel::Select::new();
        let batches = room.then(|| sel.recv(&self.brx));
        let audits = sel.recv(&self.arx);
        let marks = sel.recv(&self.mrx);
        sel.recv(&self.wake);
        let (mut batch, mut audit, mut mark, mut closed) = (None, None, None, false);
        if let Ok(op) = sel.select_timeout(wait) {
            let i = op.index();
            closed = if Some(i) == batches {
                op.recv(&self.brx).map(|b| batch = Some(b)).is_err()
            } else if i == audits {
                op.recv(&self.arx).map(|ev| audit = Some(ev)).is_err()
            } else if i == marks {
                op.recv(&self.mrx).map(|m| mark = Some(m)).is_err()
            } else {
                op.recv(&self.wake).is_err()
            };
        }
        drop(sel);
        self.shared.heartbeat.store(clock.mono_now());
        if let Some(b) = batch {
            self.enqueue(b);
        }
        self.audits.extend(audit);
        self.marks.extend(mark);
        if closed {
            // Every sender is gone (the daemon is ending): nothing more
            // comes, so wait rather than spin.
            std::thread::sleep(wait);
        }
    }

    fn enqueue(&mut self, mut b: BatchData) {
        self.shared
            .channel_bytes
            .fetch_sub(batch_bytes(&b), Ordering::AcqRel);
        if let Some(g) = self.carry_gaps.remove(&b.device_id) {
            b.carry_gap(g);
        }
        self.queue_bytes += batch_bytes(&b);
        self.follow_rate(&b);
        self.queue.push_back(b);
    }

    /// The queue's bound from the devices' byte rates: [`QUEUE_SECONDS`]
    /// of their samples, at least `max_queue_bytes`, at most
    /// [`QUEUE_CAP`] (each for the channel and the queue). Once, when the
    /// devices turn out to produce more than [`LARGE_PAGE_RATE`] on a
    /// journal of small pages (their files did not declare it, or
    /// `page_size_kib` is set), the log says what larger pages would save.
    fn follow_rate(&mut self, b: &BatchData) {
        let secs = b.n_samples() as f64 / b.sample_rate;
        if !(secs.is_finite() && secs > 0.0) {
            return;
        }
        let rate = (
            batch_bytes(b) as f64 / secs,
            b.sample_rate * b.channels.len() as f64,
        );
        match self.rates.get_mut(&b.device_id) {
            Some(r) if *r == rate => return,
            Some(r) => *r = rate,
            None => {
                self.rates.insert(b.device_id.clone(), rate);
            }
        }
        let want = (self.rates.values().map(|r| r.0).sum::<f64>() * QUEUE_SECONDS) as u64;
        let floor = self.cfg.max_queue_bytes;
        let limit = want.clamp(floor, QUEUE_CAP.max(floor));
        self.shared.queue_limit.store(limit, Ordering::Release);
        let ch_rate: f64 = self.rates.values().map(|r| r.1).sum();
        if let Some(page) = self.small_pages {
            if ch_rate >= LARGE_PAGE_RATE {
                self.small_pages = None;
                tracing::info!(
                    ch_samples_per_s = ch_rate,
                    page_kib = page / 1024,
                    "the devices write over a million channel-samples a second to a journal of small pages; a journal created with [journal] page_size_kib = 64 writes them with fewer, larger pages (at 1024 ch x 30 kHz its thread took 13 % less CPU; docs/configuration.md); this file keeps its pages"
                );
            }
        }
    }

    fn publish_queue_len(&self) {
        let q = (self.queue.len() + self.brx.len()) as u64;
        self.shared.update(|s| s.queued_batches = q);
    }

    /// Commit until the queue is empty or a commit fails (then retry
    /// later with backoff; the batches stay queued, unsealed).
    fn commit_all(&mut self) {
        if self.reopen {
            if let Err(e) = self.reopen_and_recheck() {
                let msg = e.to_string();
                tracing::warn!(error = %msg, "journal cannot be reopened yet; batches kept in memory");
                self.retry_later(msg);
                return;
            }
        }
        loop {
            match self.try_commit() {
                Ok(()) => {
                    if let Some(f) = self.failing.take() {
                        tracing::info!(
                            after_s = f.since.elapsed().as_secs(),
                            "journal writes recovered"
                        );
                        self.audits.push(AuditEvent::new(
                            "journal_recovered",
                            None,
                            serde_json::json!({"failing_for_s": f.since.elapsed().as_secs_f64()}),
                        ));
                        self.shared.update(|s| s.state = JournalState::Ok);
                    }
                    if self.queue.is_empty() && self.audits.is_empty() && self.marks.is_empty() {
                        return;
                    }
                }
                Err(e) => {
                    self.commit_failed(e);
                    return;
                }
            }
        }
    }

    /// Reopen after a failed write, then compare each device's cursor on
    /// disk with what this writer believes committed. A commit that was
    /// reported but is not on disk is reported loudly and audited; the
    /// cursors in memory stay ahead so that no seq is ever reused.
    fn reopen_and_recheck(&mut self) -> Result<(), super::JournalError> {
        self.journal.reopen()?;
        self.reopen = false;
        let on_disk = self.journal.cursors()?;
        if let Some(t) = self.uncertain.take() {
            // All or nothing: the transaction landed if every device it
            // advanced is where it would have left it.
            let landed =
                !t.cursors.is_empty() && t.cursors.iter().all(|(d, c)| on_disk.get(d) == Some(c));
            if landed {
                tracing::warn!(batches = t.added.0, "the commit that reported a failure is on disk after all: counted as committed, not written twice");
                self.after_commit(t);
            }
        }
        let mut lost = Vec::new();
        for (device, mem) in &self.cursors {
            let disk = on_disk.get(device).copied().unwrap_or_default();
            if disk.next_seq < mem.next_seq {
                lost.push(serde_json::json!({
                    "device": device, "from_seq": disk.next_seq, "to_seq": mem.next_seq - 1,
                }));
            }
        }
        if lost.is_empty() {
            tracing::info!(
                "journal reopened and rechecked after a failed write: every commit is on disk"
            );
        } else {
            tracing::error!(lost = %serde_json::Value::from(lost.clone()), "batches reported committed are missing after a failed sync; their seqs are not reused");
            self.audits.push(AuditEvent::new(
                "journal_lost_commits",
                None,
                serde_json::json!({ "lost": lost }),
            ));
        }
        Ok(())
    }

    fn commit_failed(&mut self, e: rusqlite::Error) {
        self.reopen = true;
        self.retry_later(e.to_string());
    }

    fn retry_later(&mut self, msg: String) {
        let now = Instant::now();
        let (attempts, since) = match self.failing.take() {
            None => {
                tracing::warn!(error = %msg, queued = self.queue.len(), "journal write failed; batches kept in memory, retried after reopening the journal");
                (1, now)
            }
            Some(f) => {
                tracing::debug!(error = %msg, "journal write still failing");
                (f.attempts + 1, f.since)
            }
        };
        self.failing = Some(Failing {
            retry_at: now + RETRY.delay(attempts, 1.0),
            attempts,
            since,
        });
        self.shared.update(|s| {
            s.state = JournalState::Degraded;
            s.write_errors += 1;
            s.last_error = Some(msg);
        });
    }

    /// One transaction: pending audit records, upload verdicts, then up to
    /// MAX_PER_TX batches (sealed here: seq is assigned at commit and
    /// authenticated in the header, so sealing belongs inside the
    /// transaction). Memory changes only after the commit succeeded.
    fn try_commit(&mut self) -> rusqlite::Result<()> {
        let n = self.queue.len().min(MAX_PER_TX);
        let now = crate::clock::wall_unix();
        let mut t = Tally {
            total: self.total_bytes,
            audits_taken: self.audits.len(),
            marks_taken: self.marks.len(),
            ..Default::default()
        };
        let tx = self
            .journal
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for ev in &self.audits {
            insert_audit(&tx, ev)?;
        }
        apply_marks(&tx, &self.marks, now, &mut t)?;
        let mut sealer = Sealer {
            key: self.keyring.current(),
            cfg: &self.cfg,
            now,
            compressor: &mut self.compressor,
        };
        let started = Instant::now();
        for b in self.queue.iter().take(n) {
            commit_batch(&tx, &mut sealer, b, &self.cursors, &mut t)?;
        }
        audit_evictions(&mut t);
        for ev in &t.audits {
            insert_audit(&tx, ev)?;
        }
        let written = started.elapsed();
        if let Err(e) = tx.commit() {
            // The commit itself failed (e.g. its sync): it may or may not
            // be on disk. Decided after reopening (`reopen_and_recheck`).
            self.uncertain = Some(t);
            return Err(e);
        }
        let took = started.elapsed();
        if took > SLOW_TRANSACTION {
            tracing::warn!(
                seconds = took.as_secs_f64(),
                sealing_and_writing_s = written.as_secs_f64(),
                commit_s = (took - written).as_secs_f64(),
                batches = n,
                evicted = t.evicted.len(),
                queued_bytes = self.queue_bytes,
                "slow journal transaction (the commit is its sync and any WAL checkpoint); batches wait in memory meanwhile"
            );
        }
        self.after_commit(t);
        Ok(())
    }

    /// The transaction committed: bring memory, counters and status up to
    /// date. Cannot fail.
    fn after_commit(&mut self, t: Tally) {
        self.audits.drain(..t.audits_taken.min(self.audits.len()));
        self.marks.drain(..t.marks_taken.min(self.marks.len()));
        self.cursors.extend(t.cursors);
        self.total_bytes = t.total;
        let deleted = t.evicted.iter().map(|e| Deleted {
            device_id: &e.device_id,
            seq: e.seq,
            n_samples: e.n_samples,
            uploaded: e.state == RowState::Uploaded,
        });
        for line in self.evictions.record(deleted, Instant::now()) {
            evictions::log(&line);
        }
        let evicted_pending = pending_evicted(&t.evicted);
        let evicted_unsent = t
            .evicted
            .iter()
            .filter(|e| e.state != RowState::Uploaded)
            .count() as u64;
        let refused = self.release_queue(&t.outcomes);
        let done = t.marks;
        let left = evicted_pending.0 + done.uploaded + done.quarantined;
        self.pending.0 = (self.pending.0 + t.added.0).saturating_sub(left);
        self.pending.1 =
            (self.pending.1 + t.added.1).saturating_sub(evicted_pending.1 + done.bytes);
        let oldest = if left > 0 || t.added.0 > 0 {
            self.journal.oldest_pending_created_at().ok().flatten()
        } else {
            self.shared.snapshot().oldest_pending_created_at
        };
        let (pending, total_bytes, committed) = (self.pending, self.total_bytes, t.added.0);
        let mut committed_total = 0;
        self.shared.update(|s| {
            s.pending_batches = pending.0;
            s.pending_bytes = pending.1;
            s.total_bytes = total_bytes;
            s.oldest_pending_created_at = oldest;
            s.evicted_batches += evicted_unsent;
            s.refused_batches += refused;
            s.committed_batches += committed;
            s.uploaded_batches += done.uploaded;
            s.quarantined_batches += done.quarantined;
            committed_total = s.committed_batches;
        });
        if committed > 0 {
            self.commits.send_replace(committed_total);
        }
        self.unreleased += t.added.1;
        if let Some(pc) = self
            .page_cache
            .as_mut()
            .filter(|_| self.unreleased >= RELEASE_EVERY_BYTES)
        {
            self.unreleased = 0;
            if let Err(e) = pc.release() {
                tracing::debug!(error = %e, "could not hand the journal's cached pages back to the kernel");
            }
        }
    }

    /// Take the transaction's batches off the queue; a refused one becomes
    /// a journal gap carried into its device's next batch. Returns how many
    /// were refused.
    fn release_queue(&mut self, outcomes: &[Outcome]) -> u64 {
        let mut refused = 0;
        for o in outcomes {
            let Some(b) = self.queue.pop_front() else {
                break;
            };
            self.queue_bytes = self.queue_bytes.saturating_sub(batch_bytes(&b));
            if let Outcome::Refused = o {
                refused += 1;
                tracing::error!(device = %b.device_id, samples = b.n_samples(), "journal full: new batch refused (when_full = drop_newest)");
                let gap = Gap::covering(&b, GapCause::Journal);
                match self.queue.iter_mut().find(|n| n.device_id == b.device_id) {
                    Some(next) => next.carry_gap(gap),
                    None => {
                        self.carry_gaps.insert(b.device_id.clone(), gap);
                    }
                }
            }
        }
        refused
    }

    /// Delete uploaded batches whose retention has passed.
    fn maintenance(&mut self) {
        let cutoff = crate::clock::wall_unix() - self.cfg.retain_uploaded.as_secs_f64();
        let r: rusqlite::Result<Vec<i64>> = (|| {
            let mut st = self.journal.conn.prepare(
                "DELETE FROM batches WHERE state = 'uploaded' AND uploaded_at < ?1 RETURNING size",
            )?;
            let rows = st.query_map([cutoff], |r| r.get(0))?;
            rows.collect()
        })();
        match r {
            Ok(sizes) if !sizes.is_empty() => {
                let freed: i64 = sizes.iter().sum();
                self.total_bytes = self.total_bytes.saturating_sub(freed as u64);
                let t = self.total_bytes;
                self.shared.update(|s| s.total_bytes = t);
                tracing::info!(
                    batches = sizes.len(),
                    bytes = freed,
                    "deleted uploaded batches past retain_uploaded"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention cleanup failed; will retry"),
        }
    }

    fn close(&mut self) {
        if let Some(line) = self.evictions.finish(Instant::now()) {
            evictions::log(&line);
        }
        let ev = AuditEvent::new(
            "journal_closed",
            None,
            serde_json::json!({"committed_total_bytes": self.total_bytes}),
        );
        self.audits.push(ev);
        while let Ok(ev) = self.arx.try_recv() {
            self.audits.push(ev);
        }
        for ev in std::mem::take(&mut self.audits) {
            if let Err(e) = self.journal.audit(&ev) {
                tracing::warn!(error = %e, event = %ev.event, "could not write audit record at shutdown");
            }
        }
        if let Err(e) = self.journal.checkpoint() {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed (the WAL is replayed on next open)");
        }
    }
}

/// Delete one batch to make room: the oldest uploaded one, else (with
/// drop_oldest) the oldest unsent one.
fn evict_one(
    tx: &rusqlite::Transaction<'_>,
    when_full: WhenFull,
) -> rusqlite::Result<Option<Evicted>> {
    let pick = |sql: &str| {
        tx.query_row(sql, [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                Evicted {
                    batch_id: r.get(1)?,
                    device_id: r.get(2)?,
                    seq: r.get(3)?,
                    n_samples: r.get(4)?,
                    size: r.get(5)?,
                    state: RowState::from_sql(&r.get::<_, String>(6)?),
                },
            ))
        })
        .optional()
    };
    const COLS: &str = "id, batch_id, device_id, seq, n_samples, size, state";
    let mut victim = pick(&format!(
        "SELECT {COLS} FROM batches WHERE state = 'uploaded' ORDER BY id LIMIT 1"
    ))?;
    if victim.is_none() && when_full == WhenFull::DropOldest {
        victim = pick(&format!(
            "SELECT {COLS} FROM batches WHERE state <> 'uploaded' ORDER BY id LIMIT 1"
        ))?;
    }
    match victim {
        Some((id, ev)) => {
            tx.execute("DELETE FROM batches WHERE id = ?1", [id])?;
            Ok(Some(ev))
        }
        None => Ok(None),
    }
}

/// Sealing settings of one transaction.
struct Sealer<'a> {
    key: &'a crate::crypto::BatchKey,
    cfg: &'a WriterConfig,
    now: f64,
    compressor: &'a mut Compressor,
}

/// Apply the uplink's verdicts (a verdict on a row no longer pending, e.g.
/// evicted meanwhile or a repeat, changes nothing).
fn apply_marks(
    tx: &rusqlite::Transaction<'_>,
    marks: &[UploadMark],
    now: f64,
    t: &mut Tally,
) -> rusqlite::Result<()> {
    for m in marks {
        match m {
            UploadMark::Uploaded { batch_id } => {
                let size: Option<i64> = tx
                    .query_row(
                        "UPDATE batches SET state = 'uploaded', uploaded_at = ?2, attempts = attempts + 1, last_error = NULL
                         WHERE batch_id = ?1 AND state = 'pending' RETURNING size",
                        params![batch_id, now],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(s) = size {
                    t.marks.uploaded += 1;
                    t.marks.bytes += s as u64;
                }
            }
            UploadMark::Quarantined { batch_id, reason } => {
                let row: Option<(i64, String, i64)> = tx
                    .query_row(
                        "UPDATE batches SET state = 'quarantined', attempts = attempts + 1, last_error = ?2
                         WHERE batch_id = ?1 AND state = 'pending' RETURNING size, device_id, seq",
                        params![batch_id, reason],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                if let Some((s, device, seq)) = row {
                    t.marks.quarantined += 1;
                    t.marks.bytes += s as u64;
                    t.audits.push(AuditEvent::new(
                        "quarantined",
                        Some(&device),
                        serde_json::json!({"batch_id": batch_id, "seq": seq, "reason": reason}),
                    ));
                }
            }
            UploadMark::Attempt { batch_id, error } => {
                tx.execute(
                    "UPDATE batches SET attempts = attempts + 1, last_error = ?2 WHERE batch_id = ?1",
                    params![batch_id, error],
                )?;
            }
        }
    }
    Ok(())
}

/// A committed batch's row.
pub(crate) const INSERT_BATCH: &str = "INSERT INTO batches (batch_id, device_id, seq, first_sample, n_samples, t_start, t_end, key_id, created_at, size, envelope)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// The device's cursor after a committed batch.
const UPSERT_CURSOR: &str = "INSERT INTO devices (device_id, next_seq, next_sample) VALUES (?1, ?2, ?3)
     ON CONFLICT (device_id) DO UPDATE SET next_seq = excluded.next_seq, next_sample = excluded.next_sample";

/// Seal one batch with the device's next seq, make room under the quota
/// (`when_full`), insert it and advance the device's cursor. A batch that
/// cannot be sealed or does not fit is refused (audited), not an error.
fn commit_batch(
    tx: &rusqlite::Transaction<'_>,
    sealer: &mut Sealer<'_>,
    b: &BatchData,
    known: &HashMap<String, DeviceCursor>,
    t: &mut Tally,
) -> rusqlite::Result<()> {
    let cur = *t
        .cursors
        .entry(b.device_id.clone())
        .or_insert_with(|| known.get(&b.device_id).copied().unwrap_or_default());
    let params_ = SealParams {
        batch_id: uuid::Uuid::now_v7().to_string(),
        site_id: &sealer.cfg.site_id,
        node_id: &sealer.cfg.node_id,
        seq: cur.next_seq,
        created_at: sealer.now,
        compress: sealer.cfg.compress,
        format: sealer.cfg.format,
    };
    let (env, header) = match seal_with(sealer.compressor, sealer.key, &params_, b) {
        Ok(x) => x,
        Err(e) => {
            // Only an impossible size makes sealing fail; refuse the batch
            // loudly rather than retry forever.
            tracing::error!(device = %b.device_id, error = %e, "cannot seal batch; it is dropped");
            t.audits.push(AuditEvent::new(
                "refused",
                Some(&b.device_id),
                serde_json::json!({"reason": e.to_string(), "n_samples": b.n_samples()}),
            ));
            t.outcomes.push(Outcome::Refused);
            return Ok(());
        }
    };
    let size = env.len() as u64;
    let max = sealer.cfg.max_bytes;
    while t.total + size > max {
        match evict_one(tx, sealer.cfg.when_full)? {
            Some(ev) => {
                t.total -= ev.size as u64;
                t.evicted.push(ev);
            }
            None => break,
        }
    }
    if t.total + size > max {
        t.audits.push(AuditEvent::new(
            "refused",
            Some(&b.device_id),
            serde_json::json!({"reason": "journal full (when_full = drop_newest)", "first_sample": b.first_sample, "n_samples": b.n_samples()}),
        ));
        t.outcomes.push(Outcome::Refused);
        return Ok(());
    }
    // The two statements of every batch are prepared once (the
    // connection's statement cache), not parsed per batch.
    tx.prepare_cached(INSERT_BATCH)?.execute(params![
        header.batch_id,
        header.device_id,
        header.seq as i64,
        header.first_sample as i64,
        header.n_samples as i64,
        header.t_start,
        header.t_end,
        header.key_id,
        header.created_at,
        size as i64,
        env
    ])?;
    let next = DeviceCursor {
        next_seq: cur.next_seq + 1,
        next_sample: b.end_sample(),
    };
    tx.prepare_cached(UPSERT_CURSOR)?.execute(params![
        b.device_id,
        next.next_seq as i64,
        next.next_sample as i64
    ])?;
    t.cursors.insert(b.device_id.clone(), next);
    t.total += size;
    t.added.0 += 1;
    t.added.1 += size;
    t.outcomes.push(Outcome::Committed);
    Ok(())
}

/// An audit row per evicted batch.
fn audit_evictions(t: &mut Tally) {
    for e in &t.evicted {
        t.audits.push(AuditEvent::new(
            "evicted",
            Some(&e.device_id),
            serde_json::json!({"batch_id": e.batch_id, "seq": e.seq, "n_samples": e.n_samples, "state": e.state.as_str(), "bytes": e.size, "reason": "journal.max_bytes"}),
        ));
    }
}

/// The (count, bytes) of evicted rows that were still pending.
fn pending_evicted(evicted: &[Evicted]) -> (u64, u64) {
    evicted
        .iter()
        .filter(|e| e.state == RowState::Pending)
        .fold((0, 0), |(n, b), e| (n + 1, b + e.size as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::BatchKey;
    use crate::journal::config::SyncMode;

    fn batch(device: &str, first: u64, n: usize) -> BatchData {
        BatchData {
            device_id: device.into(),
            sample_rate: 100.0,
            channels: vec!["a".into(), "b".into()],
            units: "uV".into(),
            first_sample: first,
            timestamps: (0..n)
                .map(|i| (first as usize + i) as f64 / 100.0)
                .collect(),
            raw: (0..n * 2).map(|i| i as f32).collect(),
            filtered: (0..n * 2).map(|i| i as f32).collect(),
            ..Default::default()
        }
    }

    fn start(path: &std::path::Path, max_bytes: u64, when_full: WhenFull) -> WriterHandle {
        let j = Journal::open(path, SyncMode::Normal).unwrap();
        spawn_writer(
            j,
            Arc::new(Keyring::new(BatchKey::from_bytes(&[1u8; 32]))),
            WriterConfig {
                site_id: "lab".into(),
                node_id: "n".into(),
                max_bytes,
                when_full,
                retain_uploaded: Duration::from_secs(3600),
                max_queue_bytes: 1 << 26,
                compress: false,
                format: crate::batch::BatchFormat::V2,
            },
        )
        .unwrap()
    }

    /// A writer on `j` (1 GiB quota) whose queue's floor is `max_queue_bytes`.
    fn start_queue(j: Journal, max_queue_bytes: u64) -> WriterHandle {
        spawn_writer(
            j,
            Arc::new(Keyring::new(BatchKey::from_bytes(&[1u8; 32]))),
            WriterConfig {
                site_id: "lab".into(),
                node_id: "n".into(),
                max_bytes: 1 << 30,
                when_full: WhenFull::DropOldest,
                retain_uploaded: Duration::from_secs(3600),
                max_queue_bytes,
                compress: false,
                format: crate::batch::BatchFormat::V2,
            },
        )
        .unwrap()
    }

    fn wait(tx: &JournalTx, cond: impl Fn(&super::super::JournalStatus) -> bool) {
        let t = Instant::now();
        while !cond(&tx.shared().snapshot()) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "timeout: {:?}",
                tx.shared().snapshot()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_idle_writer_is_alive_until_its_wait_ends_and_a_batch_or_the_shutdown_wakes_it() {
        let d = tempfile::tempdir().unwrap();
        let w = start(&d.path().join("j.db"), 1 << 30, WhenFull::DropOldest);
        let tx = w.sender();
        let clock = crate::clock::global();
        // Idle: the heartbeat reads the end of its wait, ahead of now.
        let t = Instant::now();
        while tx.shared().heartbeat.load() <= clock.mono_now() {
            assert!(t.elapsed() < Duration::from_secs(10), "never idle");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A batch wakes it at once, not when the wait ends.
        let t = Instant::now();
        assert!(tx.send_batch_blocking(batch("dev", 0, 100)));
        wait(&tx, |s| s.committed_batches == 1);
        assert!(t.elapsed() < IDLE_WAIT / 2, "{:?}", t.elapsed());
        // So does the shutdown (it has just started a new wait).
        let t = Instant::now();
        w.shutdown();
        assert!(t.elapsed() < IDLE_WAIT / 2, "{:?}", t.elapsed());
    }

    #[test]
    fn committed_pages_leave_the_page_cache_every_16_mib_when_the_quota_could_not_stay_cached() {
        let d = tempfile::tempdir().unwrap();
        let memory = crate::journal::page_cache::memory_bytes().unwrap();
        let (size, cached) = fill_and_measure(&d.path().join("big.db"), memory / 2 + 1);
        // Released after every 16 MiB or more: what is cached came after
        // the last release, or was still in the WAL then (and the
        // b-trees' pages read since): 16–28 MiB in runs here.
        assert!(cached < size / 3, "{cached} of {size} bytes still cached");
        // A quota that fits in half the memory: the pages stay (deleting
        // a batch reads them).
        let (size, cached) = fill_and_measure(&d.path().join("small.db"), memory / 2);
        assert!(cached > size / 2, "{cached} of {size} bytes cached");
    }

    /// 120 MiB of batches into a new journal with quota `max_bytes`: its
    /// file's size and the bytes of it in the page cache.
    fn fill_and_measure(p: &std::path::Path, max_bytes: u64) -> (u64, u64) {
        let w = start(p, max_bytes, WhenFull::DropOldest);
        let tx = w.sender();
        // 40 batches of 3 MiB each (raw, filtered and timestamps, not
        // compressed here): 120 MiB.
        for i in 0..40u64 {
            assert!(tx.send_batch_blocking(batch("dev", i * 131_072, 131_072)));
        }
        wait(&tx, |s| s.committed_batches == 40);
        let size = std::fs::metadata(p).unwrap().len();
        let cached = crate::journal::page_cache::tests::cached(p);
        w.shutdown();
        assert!(size > 100 << 20, "{size}");
        (size, cached)
    }

    #[test]
    fn the_batch_channel_is_bounded_in_bytes_while_the_disk_stalls() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.db");
        let j = Journal::open(&p, SyncMode::Normal).unwrap();
        let one = batch_bytes(&batch("a", 0, 100));
        let w = start_queue(j, 3 * one);
        let tx = w.sender();
        // Another process holds the write lock: commits wait.
        let other = rusqlite::Connection::open(&p).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let accepted = (0..60)
            .filter(|i| tx.try_send_batch(batch("a", i * 100, 100)))
            .count() as u64;
        // Far fewer than the channel's 64 slots: the writer's queue (3
        // batches' bytes, plus the one that crossed the line) and the
        // channel's byte budget (as much again).
        assert!(accepted <= 8, "{accepted} batches held in memory");
        assert!(accepted >= 3);
        std::thread::sleep(Duration::from_millis(100));
        other.execute_batch("ROLLBACK").unwrap();
        wait(&tx, |s| s.committed_batches == accepted);
        assert!(tx.try_send_batch(batch("a", 10_000, 100)));
        wait(&tx, |s| s.committed_batches == accepted + 1);
        assert_eq!(tx.shared().channel_bytes.load(Ordering::Acquire), 0);
        w.shutdown();
    }

    #[test]
    fn a_faster_rig_gets_queue_seconds_of_samples_while_the_disk_stalls() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.db");
        let j = Journal::open(&p, SyncMode::Normal).unwrap();
        let fast = |first: u64| BatchData {
            sample_rate: 800.0,
            ..batch("f", first, 100)
        };
        let one = batch_bytes(&fast(0));
        let w = start_queue(j, 3 * one);
        let tx = w.sender();
        let limit = || tx.shared().queue_limit.load(Ordering::Acquire);
        assert_eq!(limit(), 3 * one);
        let other = rusqlite::Connection::open(&p).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        // 100 samples at 800 Hz: 1.5 s of them are 12 batches.
        assert!(tx.try_send_batch(fast(0)));
        let t = Instant::now();
        while limit() == 3 * one {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(limit(), (12 * one as usize) as u64);
        let accepted = 1 + (1..60).filter(|i| tx.try_send_batch(fast(i * 100))).count() as u64;
        // The channel's 12 batches' bytes (and the one that crossed the
        // line), and what the writer took into its queue before its
        // commit began to wait (at most as much again); the floor alone
        // (3 batches) held at most 8.
        assert!((12..=27).contains(&accepted), "{accepted} batches held");
        other.execute_batch("ROLLBACK").unwrap();
        wait(&tx, |s| s.committed_batches == accepted);
        w.shutdown();
    }

    #[test]
    fn seq_per_device_continues_after_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.db");
        let w = start(&p, 1 << 30, WhenFull::DropOldest);
        let tx = w.sender();
        for i in 0..3 {
            assert!(tx.try_send_batch(batch("a", i * 10, 10)));
            assert!(tx.try_send_batch(batch("b", i * 10, 10)));
        }
        wait(&tx, |s| s.committed_batches == 6);
        w.shutdown();
        let w = start(&p, 1 << 30, WhenFull::DropOldest);
        let tx = w.sender();
        assert!(tx.try_send_batch(batch("a", 30, 10)));
        wait(&tx, |s| s.committed_batches == 1);
        w.shutdown();
        let j = Journal::open_readonly(&p).unwrap();
        let c = j.cursors().unwrap();
        assert_eq!(
            c["a"],
            DeviceCursor {
                next_seq: 4,
                next_sample: 40
            }
        );
        assert_eq!(c["b"].next_seq, 3);
    }

    #[test]
    fn upload_marks_update_rows_and_counters() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.db");
        let w = start(&p, 1 << 30, WhenFull::DropOldest);
        let tx = w.sender();
        for i in 0..3 {
            assert!(tx.try_send_batch(batch("a", i * 10, 10)));
        }
        wait(&tx, |s| s.committed_batches == 3 && s.pending_batches == 3);
        let reader = Journal::open_readonly(&p).unwrap();
        let page = reader.pending_page(0, 2, usize::MAX).unwrap();
        assert!(!page.cut);
        let page = page.batches;
        assert_eq!(page.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![0, 1]);
        let rest = reader.pending_page(page[1].id, 10, usize::MAX).unwrap();
        assert_eq!(rest.batches.len(), 1);
        // A byte budget: the first row always, no row past the budget.
        let size = page[0].envelope.len();
        let one = reader.pending_page(0, 10, 1).unwrap();
        assert_eq!((one.batches.len(), one.cut), (1, true));
        let two = reader.pending_page(0, 10, 2 * size + size / 2).unwrap();
        assert!(two.batches.len() <= 2 && two.cut);
        assert!(two.batches.iter().map(|b| b.envelope.len()).sum::<usize>() <= 2 * size + size / 2);
        assert!(tx.mark_upload(UploadMark::Attempt {
            batch_id: page[0].batch_id.clone(),
            error: "503".into()
        }));
        assert!(tx.mark_upload(UploadMark::Uploaded {
            batch_id: page[0].batch_id.clone()
        }));
        assert!(
            tx.mark_upload(UploadMark::Uploaded {
                batch_id: page[0].batch_id.clone()
            }),
            "a repeat is harmless"
        );
        assert!(tx.mark_upload(UploadMark::Quarantined {
            batch_id: page[1].batch_id.clone(),
            reason: "413".into()
        }));
        wait(&tx, |s| {
            s.uploaded_batches == 1 && s.quarantined_batches == 1
        });
        let s = tx.shared().snapshot();
        assert_eq!(s.pending_batches, 1);
        assert_eq!(
            reader
                .pending_page(0, 10, usize::MAX)
                .unwrap()
                .batches
                .len(),
            1
        );
        w.shutdown();
        let (state, attempts): (String, i64) = reader
            .conn
            .query_row(
                "SELECT state, attempts FROM batches WHERE seq = 0",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((state.as_str(), attempts), ("uploaded", 2));
        let q: i64 = reader
            .conn
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE event = 'quarantined'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(q, 1);
    }

    #[test]
    fn drop_newest_refuses_and_reports_a_journal_gap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.db");
        // Each uncompressed batch of 4000 frames x 2 ch is ~64 KiB sealed.
        let w = start(&p, 1024 * 1024, WhenFull::DropNewest);
        let tx = w.sender();
        let mut first = 0;
        for _ in 0..40 {
            while !tx.try_send_batch(batch("a", first, 4000)) {
                std::thread::sleep(Duration::from_millis(1));
            }
            first += 4000;
        }
        wait(&tx, |s| s.committed_batches + s.refused_batches == 40);
        let s = tx.shared().snapshot();
        assert!(
            s.refused_batches > 0 && s.total_bytes <= 1024 * 1024,
            "{s:?}"
        );
        assert_eq!(
            s.evicted_batches, 0,
            "drop_newest never evicts pending batches"
        );
        w.shutdown();
        let j = Journal::open_readonly(&p).unwrap();
        let refused: i64 = j
            .conn
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE event = 'refused'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(refused as u64, s.refused_batches);
        // seq stays gapless; the kept batches are the oldest.
        let seqs: Vec<i64> = j
            .conn
            .prepare("SELECT seq FROM batches ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>());
    }
}
