//! The uplink task: reads committed batches from the journal into the
//! backlog (`backlog.rs`: order, memory bounds, skipped rows), hands them
//! to the sink (`Deliver`: HTTPS or S3) up to `max_in_flight` at a time,
//! applies the policy's verdict to each answer (`policy.rs`) and sends the
//! verdicts to the journal writer.
//!
//! New commits arrive on the writer's watch channel; while caught up the
//! engine sleeps until one does (or the poll interval passes, in case the
//! writer is gone). Pauses (an auth_failed or misconfigured answer, or no
//! client could be built) are one `Pause` value.
//!
//! No double sends: a batch is sent again only as a retry of the same
//! `Idempotency-Key` (the backlog remembers what finished before the
//! journal's mark arrives).

use super::backlog::{Backlog, Limits};
use super::config::UplinkSection;
use super::policy::{self, Backoff, Halt, Outcome, UplinkState, Verdict};
use super::ratelimit::TokenBucket;
use super::sink::{self, Deliver};
use super::UplinkShared;
use crate::journal::{AuditEvent, Journal, JournalTx, PendingPage, UploadMark};
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

/// Envelopes up to this size are authenticated on the runtime's thread
/// (AES-GCM over 64 KiB takes tens of microseconds: less than handing the
/// work to the blocking pool and back, which sat in every request's path);
/// larger ones (high-density batches, milliseconds) go to the blocking pool.
const INLINE_AUTH_BYTES: usize = 64 * 1024;

/// Does this envelope authenticate with the keys (AES-GCM: any changed
/// byte fails) and name the batch and device it was read as? Returns the
/// header (the sink may need it: the object key). Without keys (engine
/// benches) the header is only read.
async fn authenticate(
    keys: Option<Arc<crate::crypto::Keyring>>,
    device: String,
    batch_id: String,
    envelope: Vec<u8>,
) -> Result<(crate::batch::BatchHeader, Vec<u8>), Outcome> {
    let inline = envelope.len() <= INLINE_AUTH_BYTES;
    let check = move || {
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
    };
    let checked = if inline {
        Ok(check())
    } else {
        tokio::task::spawn_blocking(check).await
    };
    match checked {
        Ok(Ok(checked)) => Ok(checked),
        Ok(Err(reason)) => Err(Outcome::Altered { reason }),
        // Not a verdict on the batch: try again later.
        Err(e) => Err(Outcome::Transport {
            kind: policy::TransportKind::Broken,
            message: format!("authentication task failed: {e}"),
        }),
    }
}

struct Finished {
    device: String,
    batch_id: String,
    outcome: Outcome,
}

/// Whether requests may go.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pause {
    /// They may.
    Running,
    /// An answer said auth_failed or misconfigured: no request before
    /// `until`; then the client is rebuilt (the token or certificates may
    /// have been fixed) and requests probe. The halt is shown until an
    /// answer says otherwise.
    Answered {
        halt: Halt,
        until: Instant,
        rebuilt: bool,
    },
    /// No client could be built (configuration, token, certificates):
    /// build it again at `until`.
    NoClient { until: Instant },
}

impl Pause {
    /// The halt `status` shows.
    fn halt(&self) -> Option<Halt> {
        match self {
            Pause::Running => None,
            Pause::Answered { halt, .. } => Some(*halt),
            Pause::NoClient { .. } => Some(Halt::Misconfigured),
        }
    }

    /// When the pause ends, if it is still ahead.
    fn ends(&self, now: Instant) -> Option<Instant> {
        match *self {
            Pause::Running => None,
            Pause::Answered { until, .. } | Pause::NoClient { until } => {
                (until > now).then_some(until)
            }
        }
    }

    /// An answer that is not a halt (a store, or a refusal that is not
    /// about the connection) ends a halt an answer began.
    fn answered(&mut self) {
        if matches!(self, Pause::Answered { .. }) {
            *self = Pause::Running;
        }
    }
}

struct Engine {
    cfg: UplinkSection,
    opts: EngineOptions,
    backoff: Backoff,
    journal_path: PathBuf,
    reader: Option<Arc<Mutex<Journal>>>,
    /// Open the journal again (after a failure) not before this.
    reopen_at: Instant,
    jtx: JournalTx,
    shared: Arc<UplinkShared>,
    transport: Option<Arc<dyn Deliver>>,
    pause: Pause,
    backlog: Backlog,
    /// The writer's commit counter: a change means new rows to read.
    commits: watch::Receiver<u64>,
    commits_closed: bool,
    tasks: JoinSet<Finished>,
    task_devices: HashMap<tokio::task::Id, (String, String)>,
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
    rows: usize,
    bytes: usize,
) -> Result<PendingPage, String> {
    tokio::task::spawn_blocking(move || {
        let j = crate::sync::lock(&reader);
        j.pending_page(after, rows, bytes)
            .map_err(|e| e.to_string())
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
        let limits = Limits {
            page_size: opts.page_size,
            device_batches: opts.device_batches,
            device_bytes: opts.device_bytes,
            total_batches: opts.total_batches,
            total_bytes: opts.total_bytes,
        };
        Engine {
            backoff: Backoff {
                initial: cfg.backoff_initial.0,
                max: cfg.backoff_max.0,
            },
            cfg,
            opts,
            journal_path,
            reader: None,
            reopen_at: now,
            jtx,
            shared,
            transport: None,
            pause: Pause::Running,
            backlog: Backlog::new(limits, now),
            commits,
            commits_closed: false,
            tasks: JoinSet::new(),
            task_devices: HashMap::new(),
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
            self.end_of_pause(now);
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
                r = self.commits.changed(), if self.backlog.at_end() && !self.commits_closed => {
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
                if matches!(self.pause, Pause::NoClient { .. }) {
                    self.pause = Pause::Running;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in_s = self.backoff.max.as_secs_f64(), "uplink misconfigured; recording continues, batches stay in the journal");
                self.transport = None;
                self.pause = Pause::NoClient {
                    until: now + self.backoff.max,
                };
                self.last_error = Some(e);
            }
        }
    }

    async fn open_reader(&mut self, now: Instant) {
        if now < self.reopen_at {
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
                self.reopen_at = now + self.opts.poll.max(Duration::from_secs(1));
            }
        }
    }

    /// A pause is over: build the client again (the token, certificates
    /// or configuration may have been fixed), then let requests probe; a
    /// halt an answer began stays shown until an answer says otherwise.
    fn end_of_pause(&mut self, now: Instant) {
        match self.pause {
            Pause::Answered {
                halt,
                until,
                rebuilt: false,
            } if now >= until => {
                self.pause = Pause::Answered {
                    halt,
                    until,
                    rebuilt: true,
                };
                self.build_transport(now);
            }
            Pause::NoClient { until } if now >= until => self.build_transport(now),
            _ => {}
        }
    }

    fn paused(&self, now: Instant) -> bool {
        self.transport.is_none() || self.pause.ends(now).is_some()
    }

    async fn refill(&mut self, now: Instant) {
        let Some(reader) = self.reader.clone() else {
            return;
        };
        let committed = *self.commits.borrow_and_update();
        let mut pages = 0;
        while pages < 8 && self.backlog.want_read(now, committed) {
            let (after, budget) = (self.backlog.cursor(), self.backlog.page_budget());
            match read_page(reader.clone(), after, budget.rows, budget.bytes).await {
                Ok(page) => {
                    self.backlog
                        .take_page(page, budget.rows, now, committed, self.opts.poll)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "uplink: reading the journal failed; will retry");
                    self.last_error = Some(format!("cannot read the journal: {e}"));
                    self.backlog.read_failed(now + self.opts.poll);
                    return;
                }
            }
            pages += 1;
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
        while self.tasks.len() < self.cfg.max_in_flight.max(1) as usize {
            let Some((idx, size)) = self.backlog.next_ready(now) else {
                break;
            };
            if let Some(bucket) = &mut self.bucket {
                let w = bucket.take(size as u64, now.into_std());
                if !w.is_zero() {
                    self.rate_wake = Some(now + w);
                    break;
                }
            }
            let Some(s) = self.backlog.start(idx) else {
                break;
            };
            let t = transport.clone();
            let (dev, bid) = (s.device.clone(), s.batch_id.clone());
            let keys = self.opts.keys.clone();
            let h = self.tasks.spawn(async move {
                let outcome = match authenticate(keys, dev.clone(), bid.clone(), s.envelope).await {
                    Ok((header, body)) => t.deliver(&header, body).await,
                    Err(not_sent) => not_sent,
                };
                Finished {
                    device: dev,
                    batch_id: bid,
                    outcome,
                }
            });
            self.task_devices.insert(h.id(), (s.device, s.batch_id));
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
        let Some((seq, attempts)) = self.backlog.finish_head(&f.device, &f.batch_id) else {
            return; // not the head any more: nothing to apply
        };
        let verdict = policy::decide(&f.outcome, &self.backoff, attempts + 1, jitter);
        let mark = match verdict {
            Verdict::Ack | Verdict::Quarantine { .. } => {
                self.backlog.done(&f.device);
                self.pause.answered();
                if let Verdict::Quarantine { reason } = verdict {
                    tracing::error!(device = %f.device, seq, batch_id = %f.batch_id, reason = %reason, "batch quarantined: kept in the journal, never sent again");
                    self.quarantined += 1;
                    self.last_error = Some(format!(
                        "batch {} ({} seq {seq}) quarantined: {reason}",
                        f.batch_id, f.device
                    ));
                    UploadMark::Quarantined {
                        batch_id: f.batch_id,
                        reason,
                    }
                } else {
                    self.uploaded += 1;
                    self.last_success = Some(std::time::Instant::now());
                    if self.backlog.failing() == 0 {
                        self.last_error = None;
                    }
                    UploadMark::Uploaded {
                        batch_id: f.batch_id,
                    }
                }
            }
            Verdict::Retry {
                delay,
                offline,
                error,
            } => {
                let attempt = self.backlog.retry(&f.device, now + delay);
                tracing::debug!(device = %f.device, seq, attempt, retry_in_ms = delay.as_millis() as u64, error = %error, "upload attempt failed");
                if !offline {
                    self.pause.answered();
                }
                self.last_failure_offline = offline;
                self.failed += 1;
                self.last_error = Some(error.clone());
                UploadMark::Attempt {
                    batch_id: f.batch_id,
                    error,
                }
            }
            Verdict::AuthFailed { delay, error } | Verdict::Misconfigured { delay, error } => {
                let halt = if policy::classify(&f.outcome) == policy::Class::AuthFailed {
                    Halt::AuthFailed
                } else {
                    Halt::Misconfigured
                };
                if self.pause.halt() != Some(halt) || self.pause.ends(now).is_none() {
                    tracing::error!(error = %error, pause_s = delay.as_secs_f64(), "uploads paused; nothing is dropped");
                }
                self.pause = Pause::Answered {
                    halt,
                    until: now + delay,
                    rebuilt: false,
                };
                self.failed += 1;
                self.last_error = Some(error.clone());
                UploadMark::Attempt {
                    batch_id: f.batch_id,
                    error,
                }
            }
        };
        self.mark(mark);
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
        self.backlog.flush(now);
        match &mut self.pause {
            Pause::Answered { until, .. } | Pause::NoClient { until } => *until = now,
            Pause::Running => {}
        }
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + Duration::from_secs(1);
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t.filter(|t| *t < wake) {
                wake = t;
            }
        };
        if !self.marks.is_empty() {
            at(Some(now + Duration::from_millis(20)));
        }
        at(self.backlog.read_wake(now));
        at(self.pause.ends(now));
        at(self.rate_wake);
        if !self.paused(now) {
            at(self.backlog.retry_wake());
        }
        wake
    }

    fn publish(&mut self) {
        let now = Instant::now();
        let failing = self.backlog.failing();
        let ready = !self.paused(now) && self.backlog.any_ready(now);
        let state = policy::derive_state(
            self.pause.halt(),
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
        let (in_flight, buffered) = (self.tasks.len(), self.backlog.buffered());
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
