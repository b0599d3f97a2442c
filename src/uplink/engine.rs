//! The uplink task.
//!
//! Reading: keyset pages (`Journal::pending_page`) through a read-only
//! connection, into small per-device queues with bounds on count and bytes,
//! so memory stays flat whatever the backlog. A device whose queue is full
//! (or whose tail was shed to make room for other devices while it is in
//! backoff) is marked `overflow`; its rows are skipped and re-read later
//! from the lowest skipped row id (`rescan_from`).
//!
//! Order: at most one request in flight per device, so a device's batch
//! N+1 is sent only after N was acknowledged or quarantined; different
//! devices go in parallel, up to `max_in_flight` requests.
//!
//! No double sends: verdicts reach the journal asynchronously (through the
//! writer thread), so a finished batch may still read as pending. Each
//! device remembers the last finished `seq`, and rows at or below it (or
//! already queued) are skipped. A batch is sent again only as a retry of
//! the same `Idempotency-Key`.

use super::config::UplinkSection;
use super::policy::{self, Backoff, Halt, Outcome, UplinkState, Verdict};
use super::ratelimit::TokenBucket;
use super::sink::{self, Deliver};
use super::UplinkShared;
use crate::journal::{AuditEvent, Journal, JournalTx, PendingBatch, UploadMark};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Internal bounds (not configuration).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Rows per journal page.
    pub page_size: usize,
    /// Batches and bytes held in memory per device.
    pub device_batches: usize,
    pub device_bytes: usize,
    /// Batches and bytes held in memory in all.
    pub total_batches: usize,
    pub total_bytes: usize,
    /// Look for new batches this often when caught up (and whenever the
    /// writer's commit counter moved).
    pub poll: Duration,
    /// At shutdown, how long requests in flight may finish.
    pub stop_grace: Duration,
    /// The batch keys: every envelope is authenticated (AES-GCM) before it
    /// is sent, and an altered one is quarantined, never uploaded. The
    /// daemon always gives them; `None` only in benches of the engine.
    pub keys: Option<Arc<crate::crypto::Keyring>>,
    /// Deliver here instead of the sink `[uplink]` configures (the
    /// engine's model test).
    pub sink: Option<Arc<dyn Deliver>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            page_size: 32,
            device_batches: 128,
            device_bytes: 4 << 20,
            total_batches: 1024,
            total_bytes: 16 << 20,
            poll: Duration::from_millis(200),
            stop_grace: Duration::from_secs(2),
            keys: None,
            sink: None,
        }
    }
}

/// The running uplink.
pub struct UplinkHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    shared: Arc<UplinkShared>,
}

impl UplinkHandle {
    pub fn shared(&self) -> &Arc<UplinkShared> {
        &self.shared
    }

    /// Stop: requests in flight get `stop_grace` to finish (their verdicts
    /// are queued to the writer); then the task ends. Call before the
    /// writer shuts down.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(10), &mut task)
            .await
            .is_err()
        {
            tracing::warn!("uplink did not stop in time; aborted");
            task.abort();
        }
    }
}

/// Start the uplink on `rt`. The journal must exist (the writer opened it).
pub fn spawn(
    rt: &tokio::runtime::Handle,
    cfg: UplinkSection,
    journal_path: PathBuf,
    jtx: JournalTx,
    shared: Arc<UplinkShared>,
    opts: EngineOptions,
) -> UplinkHandle {
    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = Engine::new(cfg, journal_path, jtx, shared.clone(), opts);
    let task = rt.spawn(engine.run(stop_rx));
    UplinkHandle {
        stop: stop_tx,
        task,
        shared,
    }
}

/// Does this envelope authenticate with the keys (AES-GCM: any changed
/// byte fails) and name the batch and device it was read as? Returns the
/// header (the sink may need it: the object key). Off the runtime's
/// threads: a high-density batch takes milliseconds. Without keys (engine
/// benches) the header is only read.
async fn authenticate(
    keys: Option<Arc<crate::crypto::Keyring>>,
    device: String,
    batch_id: String,
    envelope: Vec<u8>,
) -> Result<(crate::batch::BatchHeader, Vec<u8>), Outcome> {
    let check = tokio::task::spawn_blocking(move || {
        let h = match &keys {
            Some(keys) => crate::batch::authenticate(keys, &envelope),
            None => crate::batch::read_header(&envelope).map(|p| p.header),
        }
        .map_err(|e| e.to_string())?;
        if h.batch_id != batch_id || h.device_id != device {
            return Err(format!(
                "its header names batch {} of {}",
                h.batch_id, h.device_id
            ));
        }
        Ok((h, envelope))
    });
    match check.await {
        Ok(Ok(checked)) => Ok(checked),
        Ok(Err(reason)) => Err(Outcome::Altered { reason }),
        // Not a verdict on the batch: try again later.
        Err(e) => Err(Outcome::Transport {
            kind: policy::TransportKind::Broken,
            message: format!("authentication task failed: {e}"),
        }),
    }
}

#[derive(Default)]
struct Dev {
    queue: VecDeque<PendingBatch>,
    queue_bytes: usize,
    /// Highest seq acknowledged or quarantined in this run.
    done_seq: Option<u64>,
    in_flight: bool,
    retry_at: Option<Instant>,
    /// Consecutive failures of the head batch.
    attempts: u32,
    /// The head batch is waiting for a retry.
    failing: bool,
    /// Rows of this device were skipped (queue full or shed).
    overflow: bool,
}

impl Dev {
    fn last_known_seq(&self) -> Option<u64> {
        match (self.queue.back().map(|b| b.seq), self.done_seq) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

enum Accept {
    Queued,
    /// The device's queue is full: read again later.
    Skipped,
    /// Already queued or finished.
    Known,
}

struct Finished {
    device: String,
    batch_id: String,
    outcome: Outcome,
}

struct Engine {
    cfg: UplinkSection,
    opts: EngineOptions,
    backoff: Backoff,
    journal_path: PathBuf,
    reader: Option<Arc<Mutex<Journal>>>,
    jtx: JournalTx,
    shared: Arc<UplinkShared>,
    transport: Option<Arc<dyn Deliver>>,
    devices: HashMap<String, Dev>,
    order: Vec<String>,
    rr: usize,
    cursor: i64,
    rescan_from: Option<i64>,
    at_end: bool,
    /// A whole page was skipped (full queues): stop reading for now.
    stalled: bool,
    last_committed: u64,
    /// The writer's commit counter: a change means new rows to read.
    commits: watch::Receiver<u64>,
    commits_closed: bool,
    next_poll: Instant,
    buffered: usize,
    buffered_bytes: usize,
    tasks: JoinSet<Finished>,
    task_devices: HashMap<tokio::task::Id, (String, String)>,
    halt: Option<Halt>,
    halt_until: Instant,
    /// The halt came from building the client (not from an answer).
    halt_from_build: bool,
    /// Rebuild the client (re-read token and certificates) when the pause ends.
    rebuild_due: bool,
    last_failure_offline: bool,
    bucket: Option<TokenBucket>,
    rate_wake: Option<Instant>,
    marks: VecDeque<UploadMark>,
    rng: rand::rngs::StdRng,
    state: UplinkState,
    // Figures for the status.
    uploaded: u64,
    quarantined: u64,
    failed: u64,
    last_success: Option<std::time::Instant>,
    last_error: Option<String>,
}

async fn read_page(
    reader: Arc<Mutex<Journal>>,
    after: i64,
    limit: usize,
) -> Result<Vec<PendingBatch>, String> {
    tokio::task::spawn_blocking(move || {
        let j = crate::sync::lock(&reader);
        j.pending_page(after, limit).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("journal read task failed: {e}"))?
}

async fn open_reader(path: PathBuf) -> Result<(Journal, u64), String> {
    tokio::task::spawn_blocking(move || {
        let j = Journal::open_readonly(&path).map_err(|e| e.to_string())?;
        let q = j.quarantined_count().map_err(|e| e.to_string())?;
        Ok((j, q))
    })
    .await
    .map_err(|e| format!("journal open task failed: {e}"))?
}

impl Engine {
    fn new(
        cfg: UplinkSection,
        journal_path: PathBuf,
        jtx: JournalTx,
        shared: Arc<UplinkShared>,
        opts: EngineOptions,
    ) -> Engine {
        let now = Instant::now();
        let commits = jtx.commits();
        let bucket = cfg
            .max_bytes_per_sec
            .map(|b| TokenBucket::new(b.0, now.into_std()));
        Engine {
            backoff: Backoff {
                initial: cfg.backoff_initial.0,
                max: cfg.backoff_max.0,
            },
            cfg,
            opts,
            journal_path,
            reader: None,
            jtx,
            shared,
            transport: None,
            devices: HashMap::new(),
            order: Vec::new(),
            rr: 0,
            cursor: 0,
            rescan_from: None,
            at_end: false,
            stalled: false,
            last_committed: 0,
            commits,
            commits_closed: false,
            next_poll: now,
            buffered: 0,
            buffered_bytes: 0,
            tasks: JoinSet::new(),
            task_devices: HashMap::new(),
            halt: None,
            halt_until: now,
            halt_from_build: false,
            rebuild_due: false,
            last_failure_offline: false,
            bucket,
            rate_wake: None,
            marks: VecDeque::new(),
            rng: rand::rngs::StdRng::from_entropy(),
            state: UplinkState::Idle,
            uploaded: 0,
            quarantined: 0,
            failed: 0,
            last_success: None,
            last_error: None,
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let endpoint = sink::describe(&self.cfg);
        self.shared.update(|s| s.endpoint = endpoint);
        self.build_transport(Instant::now());
        loop {
            if *stop.borrow() {
                break;
            }
            let now = Instant::now();
            self.send_marks();
            if self.reader.is_none() {
                self.open_reader(now).await;
            }
            if self.halt.is_some() && now >= self.halt_until {
                self.end_of_pause(now);
            }
            // Start what is ready before reading more, so journal reads
            // overlap requests in flight.
            self.dispatch(now);
            self.refill(now).await;
            self.dispatch(Instant::now());
            self.publish();
            let wake = self.next_wake(Instant::now());
            tokio::select! {
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() { break; }
                }
                Some(r) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_joined(r);
                }
                _ = self.shared.flushed() => self.on_flush(),
                // A commit while caught up: read the new rows now.
                // (A closed channel — the writer is gone — falls back to polling.)
                r = self.commits.changed(), if self.at_end && !self.commits_closed => {
                    self.commits_closed = r.is_err();
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.finish().await;
    }

    fn build_transport(&mut self, now: Instant) {
        let built = match &self.opts.sink {
            Some(s) => Ok(s.clone()),
            None => sink::connect(&self.cfg),
        };
        match built {
            Ok(t) => {
                tracing::info!(target = %t.target(), "uplink ready");
                self.transport = Some(t);
                if self.halt_from_build {
                    self.halt = None;
                    self.halt_from_build = false;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in_s = self.backoff.max.as_secs_f64(), "uplink misconfigured; recording continues, batches stay in the journal");
                self.transport = None;
                self.halt = Some(Halt::Misconfigured);
                self.halt_from_build = true;
                self.rebuild_due = true;
                self.halt_until = now + self.backoff.max;
                self.last_error = Some(e);
            }
        }
    }

    async fn open_reader(&mut self, now: Instant) {
        if now < self.next_poll && self.last_error.is_some() {
            return;
        }
        match open_reader(self.journal_path.clone()).await {
            Ok((j, q)) => {
                self.reader = Some(Arc::new(Mutex::new(j)));
                self.quarantined = q;
            }
            Err(e) => {
                tracing::warn!(error = %e, "uplink cannot read the journal; will retry");
                self.last_error = Some(format!("cannot read the journal: {e}"));
                self.next_poll = now + self.opts.poll.max(Duration::from_secs(1));
            }
        }
    }

    /// A pause (auth_failed / misconfigured) is over: re-read the token and
    /// certificates (they may have been fixed), then let requests probe;
    /// the state stays until an answer says otherwise.
    fn end_of_pause(&mut self, now: Instant) {
        if self.rebuild_due {
            self.rebuild_due = false;
            self.build_transport(now);
        }
    }

    fn paused(&self, now: Instant) -> bool {
        self.transport.is_none() || (self.halt.is_some() && now < self.halt_until)
    }

    async fn refill(&mut self, now: Instant) {
        let Some(reader) = self.reader.clone() else {
            return;
        };
        // A device whose rows were skipped has room again: re-read from
        // the first skipped row (rows already known are skipped by seq).
        if let Some(r) = self.rescan_from {
            let (half_n, half_b) = (self.opts.device_batches / 2, self.opts.device_bytes / 2);
            if self.devices.values().any(|d| {
                d.overflow && !d.failing && d.queue.len() <= half_n && d.queue_bytes <= half_b
            }) {
                self.cursor = self.cursor.min(r);
                self.rescan_from = None;
                for d in self.devices.values_mut() {
                    d.overflow = false;
                }
                self.at_end = false;
                self.stalled = false;
            }
        }
        if self.stalled {
            // The rows ahead belong to devices whose queues are full. If one
            // of them is draining, wait for it (then rescan); if all of them
            // wait for a retry, move on at the poll rate, skipping their
            // rows, so other devices' new batches are still found.
            if self.devices.values().any(|d| d.overflow && !d.failing) || now < self.next_poll {
                return;
            }
            self.stalled = false;
        }
        let committed = *self.commits.borrow_and_update();
        if self.at_end {
            if committed == self.last_committed && now < self.next_poll {
                return;
            }
            self.at_end = false;
        }
        let mut pages = 0;
        while !self.at_end && !self.stalled && pages < 8 {
            if self.buffered >= self.opts.total_batches
                || self.buffered_bytes >= self.opts.total_bytes
            {
                self.shed();
                if self.buffered >= self.opts.total_batches
                    || self.buffered_bytes >= self.opts.total_bytes
                {
                    return;
                }
            }
            let page = match read_page(reader.clone(), self.cursor, self.opts.page_size).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "uplink: reading the journal failed; will retry");
                    self.last_error = Some(format!("cannot read the journal: {e}"));
                    self.at_end = true;
                    self.next_poll = now + self.opts.poll;
                    return;
                }
            };
            pages += 1;
            let n = page.len();
            let (mut accepted, mut skipped) = (0usize, 0usize);
            for b in page {
                self.cursor = self.cursor.max(b.id);
                match self.accept(b) {
                    Accept::Queued => accepted += 1,
                    Accept::Skipped => skipped += 1,
                    Accept::Known => {}
                }
            }
            if n < self.opts.page_size {
                self.at_end = true;
                self.last_committed = committed;
                self.next_poll = now + self.opts.poll;
            } else if accepted == 0 && skipped > 0 {
                self.stalled = true;
                self.next_poll = now + self.opts.poll;
            }
        }
    }

    fn accept(&mut self, b: PendingBatch) -> Accept {
        if !self.devices.contains_key(&b.device_id) {
            self.order.push(b.device_id.clone());
        }
        let d = self.devices.entry(b.device_id.clone()).or_default();
        if d.last_known_seq().is_some_and(|s| b.seq <= s) {
            return Accept::Known; // queued already, or finished (the mark is on its way)
        }
        // Full, for this device or for all of them: skip the row and
        // re-read it once there is room (a page is read whole, so the
        // bounds are checked row by row, not only before the read).
        if d.overflow
            || d.queue.len() >= self.opts.device_batches
            || d.queue_bytes >= self.opts.device_bytes
            || self.buffered >= self.opts.total_batches
            || self.buffered_bytes >= self.opts.total_bytes
        {
            d.overflow = true;
            let from = b.id - 1;
            self.rescan_from = Some(self.rescan_from.map_or(from, |r| r.min(from)));
            return Accept::Skipped;
        }
        let size = b.envelope.len();
        d.queue_bytes += size;
        d.queue.push_back(b);
        self.buffered += 1;
        self.buffered_bytes += size;
        Accept::Queued
    }

    /// Memory is full: drop the buffered tails of devices waiting for a
    /// retry (they are re-read later), so the other devices keep flowing.
    fn shed(&mut self) {
        for d in self.devices.values_mut() {
            if !d.failing || d.queue.len() < 2 {
                continue;
            }
            let first_dropped = d.queue[1].id;
            while d.queue.len() > 1 {
                if let Some(b) = d.queue.pop_back() {
                    d.queue_bytes -= b.envelope.len();
                    self.buffered -= 1;
                    self.buffered_bytes -= b.envelope.len();
                }
            }
            d.overflow = true;
            let from = first_dropped - 1;
            self.rescan_from = Some(self.rescan_from.map_or(from, |r| r.min(from)));
        }
    }

    fn dispatch(&mut self, now: Instant) {
        self.rate_wake = None;
        if self.paused(now) {
            return;
        }
        let Some(transport) = self.transport.clone() else {
            return;
        };
        let n = self.order.len();
        for i in 0..n {
            if self.tasks.len() >= self.cfg.max_in_flight.max(1) as usize {
                break;
            }
            let idx = (self.rr + i) % n;
            let name = &self.order[idx];
            let Some(d) = self.devices.get_mut(name) else {
                continue;
            };
            if d.in_flight || d.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            let Some(head) = d.queue.front() else {
                continue;
            };
            if let Some(bucket) = &mut self.bucket {
                let w = bucket.take(head.envelope.len() as u64, now.into_std());
                if !w.is_zero() {
                    self.rate_wake = Some(now + w);
                    break;
                }
            }
            d.in_flight = true;
            let (device, batch_id, body) =
                (name.clone(), head.batch_id.clone(), head.envelope.clone());
            let t = transport.clone();
            let bid = batch_id.clone();
            let dev = device.clone();
            let keys = self.opts.keys.clone();
            let h = self.tasks.spawn(async move {
                let outcome = match authenticate(keys, dev.clone(), bid.clone(), body).await {
                    Ok((header, body)) => t.deliver(&header, body).await,
                    Err(not_sent) => not_sent,
                };
                Finished {
                    device: dev,
                    batch_id: bid,
                    outcome,
                }
            });
            self.task_devices.insert(h.id(), (device, batch_id));
            self.rr = (idx + 1) % n;
        }
    }

    fn on_joined(&mut self, r: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        match r {
            Ok((id, f)) => {
                self.task_devices.remove(&id);
                self.on_finished(f);
            }
            Err(e) => {
                // Cannot happen short of a bug: treat as a broken attempt.
                if let Some((device, batch_id)) = self.task_devices.remove(&e.id()) {
                    tracing::error!(device = %device, error = %e, "upload task failed");
                    self.on_finished(Finished {
                        device,
                        batch_id,
                        outcome: Outcome::Transport {
                            kind: policy::TransportKind::Broken,
                            message: "upload task failed".into(),
                        },
                    });
                }
            }
        }
    }

    fn on_finished(&mut self, f: Finished) {
        let now = Instant::now();
        let jitter: f64 = self.rng.gen();
        let Some(d) = self.devices.get_mut(&f.device) else {
            return;
        };
        d.in_flight = false;
        let Some(head) = d.queue.front() else {
            return;
        };
        if head.batch_id != f.batch_id {
            return;
        }
        let seq = head.seq;
        let verdict = policy::decide(&f.outcome, &self.backoff, d.attempts + 1, jitter);
        let mark;
        match verdict {
            Verdict::Ack | Verdict::Quarantine { .. } => {
                if let Some(b) = d.queue.pop_front() {
                    d.queue_bytes -= b.envelope.len();
                    self.buffered -= 1;
                    self.buffered_bytes -= b.envelope.len();
                }
                d.done_seq = Some(d.done_seq.map_or(seq, |s| s.max(seq)));
                d.attempts = 0;
                d.retry_at = None;
                d.failing = false;
                if !self.halt_from_build {
                    self.halt = None;
                }
                if let Verdict::Quarantine { reason } = verdict {
                    tracing::error!(device = %f.device, seq, batch_id = %f.batch_id, reason = %reason, "batch quarantined: kept in the journal, never sent again");
                    self.quarantined += 1;
                    self.last_error = Some(format!(
                        "batch {} ({} seq {seq}) quarantined: {reason}",
                        f.batch_id, f.device
                    ));
                    mark = Some(UploadMark::Quarantined {
                        batch_id: f.batch_id,
                        reason,
                    });
                } else {
                    self.uploaded += 1;
                    self.last_success = Some(std::time::Instant::now());
                    if !self.devices.values().any(|d| d.failing) {
                        self.last_error = None;
                    }
                    mark = Some(UploadMark::Uploaded {
                        batch_id: f.batch_id,
                    });
                }
            }
            Verdict::Retry {
                delay,
                offline,
                error,
            } => {
                d.attempts += 1;
                d.retry_at = Some(now + delay);
                d.failing = true;
                tracing::debug!(device = %f.device, seq, attempt = d.attempts, retry_in_ms = delay.as_millis() as u64, error = %error, "upload attempt failed");
                if !offline && !self.halt_from_build {
                    self.halt = None;
                }
                self.last_failure_offline = offline;
                self.failed += 1;
                self.last_error = Some(error.clone());
                mark = Some(UploadMark::Attempt {
                    batch_id: f.batch_id,
                    error,
                });
            }
            Verdict::AuthFailed { delay, error } | Verdict::Misconfigured { delay, error } => {
                let h = if policy::classify(&f.outcome) == policy::Class::AuthFailed {
                    Halt::AuthFailed
                } else {
                    Halt::Misconfigured
                };
                if self.halt != Some(h) || now >= self.halt_until {
                    tracing::error!(error = %error, pause_s = delay.as_secs_f64(), "uploads paused; nothing is dropped");
                }
                self.halt = Some(h);
                self.halt_from_build = false;
                self.rebuild_due = true;
                self.halt_until = now + delay;
                self.failed += 1;
                self.last_error = Some(error.clone());
                mark = Some(UploadMark::Attempt {
                    batch_id: f.batch_id,
                    error,
                });
            }
        }
        if let Some(m) = mark {
            self.mark(m);
        }
    }

    fn mark(&mut self, m: UploadMark) {
        if !self.marks.is_empty() || !self.jtx.mark_upload(m.clone()) {
            self.marks.push_back(m);
        }
    }

    fn send_marks(&mut self) {
        while let Some(m) = self.marks.front() {
            if !self.jtx.mark_upload(m.clone()) {
                break;
            }
            self.marks.pop_front();
        }
    }

    fn on_flush(&mut self) {
        let now = Instant::now();
        tracing::info!("flush: retrying every waiting batch now");
        for d in self.devices.values_mut() {
            d.retry_at = None;
        }
        if self.halt.is_some() {
            self.halt_until = now;
        }
        self.next_poll = now;
        self.at_end = false;
        self.stalled = false;
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + Duration::from_secs(1);
        let mut at = |t: Instant| {
            if t < wake {
                wake = t;
            }
        };
        if !self.marks.is_empty() {
            at(now + Duration::from_millis(20));
        }
        if self.at_end || self.stalled {
            at(self.next_poll.max(now + Duration::from_millis(5)));
        } else if self.buffered < self.opts.total_batches / 2 {
            at(now);
        }
        if self.halt.is_some() {
            at(self.halt_until);
        }
        if let Some(t) = self.rate_wake {
            at(t);
        }
        if !self.paused(now) {
            for d in self.devices.values() {
                if let (Some(t), false, false) = (d.retry_at, d.in_flight, d.queue.is_empty()) {
                    at(t);
                }
            }
        }
        wake
    }

    fn publish(&mut self) {
        let now = Instant::now();
        let failing = self
            .devices
            .values()
            .filter(|d| d.failing && !d.queue.is_empty())
            .count();
        let ready = !self.paused(now)
            && self.devices.values().any(|d| {
                !d.in_flight && !d.queue.is_empty() && d.retry_at.is_none_or(|t| t <= now)
            });
        let state = policy::derive_state(
            self.halt,
            failing,
            self.last_failure_offline,
            self.tasks.len(),
            ready,
        );
        if state != self.state {
            let (from, to) = (self.state, state);
            self.state = state;
            if from.is_normal() && to.is_normal() {
                tracing::debug!(from = from.as_str(), to = to.as_str(), "uplink state");
            } else {
                let err = if to.is_normal() {
                    None
                } else {
                    self.last_error.clone()
                };
                if to.is_normal() {
                    tracing::info!(from = from.as_str(), to = to.as_str(), "uplink state");
                } else {
                    tracing::warn!(
                        from = from.as_str(),
                        to = to.as_str(),
                        error = err.as_deref().unwrap_or(""),
                        "uplink state"
                    );
                }
                self.jtx.audit(AuditEvent::new(
                    "uplink_state",
                    None,
                    json!({"from": from.as_str(), "to": to.as_str(), "error": err,
                           "uploaded_batches": self.uploaded, "failed_attempts": self.failed}),
                ));
            }
        }
        let (uploaded, quarantined, failed) = (self.uploaded, self.quarantined, self.failed);
        let (last_success, last_error) = (self.last_success, self.last_error.clone());
        let (in_flight, buffered) = (self.tasks.len(), self.buffered);
        self.shared.update(|s| {
            s.state = state;
            s.uploaded_batches = uploaded;
            s.quarantined_batches = quarantined;
            s.failed_attempts = failed;
            s.last_success = last_success;
            s.last_error = last_error;
            s.in_flight = in_flight;
            s.buffered_batches = buffered;
        });
    }

    async fn finish(&mut self) {
        let deadline = Instant::now() + self.opts.stop_grace;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(r)) => self.on_joined(r),
                Ok(None) => break,
                Err(_) => {
                    tracing::info!(
                        in_flight = self.tasks.len(),
                        "uplink stopping: requests still in flight abandoned (sent again under the same Idempotency-Key next time)"
                    );
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        self.send_marks();
        if !self.marks.is_empty() {
            tracing::warn!(
                marks = self.marks.len(),
                "uplink stopping: some verdicts could not be queued to the journal; those batches will be sent again (same Idempotency-Key)"
            );
        }
        self.publish();
        tracing::info!(
            uploaded = self.uploaded,
            failed_attempts = self.failed,
            "uplink stopped"
        );
    }
}
