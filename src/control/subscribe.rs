//! `subscribe DEVICE [raw|filtered] [hz N]` (contract §12): a device's
//! min/max envelope as JSON lines, for `neuroedge scope` and any client.
//!
//! Replies: one header line
//!
//! ```text
//! {"device":"eeg-1","signal":"filtered","channels":8,"channel_names":[...],
//!  "sample_rate":250.0,"units":"uV","decimation":10,"hz":30}
//! ```
//!
//! then one line per frame of the view: `decimation` consecutive samples
//! (fewer when a gap ends a frame early), per channel their minimum and
//! maximum (so a one-sample spike still shows), `t` the unix time of the
//! last sample covered, `i` the index of the first (journal-wide, as a
//! batch's `first_sample`) and `n` how many:
//!
//! ```text
//! {"t":1718000000.512,"i":12340,"n":10,"min":[...],"max":[...]}
//! ```
//!
//! Frames follow each other without loss or overlap; when samples between
//! two frames are not shown, the later frame says how many (`skipped`) and
//! why (`cause`: `gap`, the recording itself lacks them; `lag`, this client
//! fell more than the view buffer behind). At most `hz` lines go out in
//! any second. The stream ends with an `{"end": ...}` line when the
//! device's run ends (device stopped or reloaded, daemon stopping).
//!
//! The lines come from the device's [`View`] (see [`crate::view`]), which
//! the processing stage fills without waiting; this side only reads it.
//! Subscriptions to the same view, signal and `hz` share one *feed* (a
//! task that builds and serializes each frame once and writes it to every
//! member): the cost of N clients is one JSON line per frame and, per
//! wake-up, one socket write per client. A feed wakes when the processing
//! stage has published new bins (see [`Pacer`]), not at `hz`. A client
//! joining a running feed gets its header and then the feed's next frame.
//! Each client has a bounded send buffer and is written to without
//! waiting: a client that does not keep up (more than a second of lines
//! waiting beyond the socket's own buffer) is disconnected.

use crate::telemetry::DeviceState;
use crate::view::{BinMeta, Publish, Read, Signal, View};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::protocol::error_reply;
use super::DaemonState;

/// Subscriptions served at once (the socket's other commands keep the
/// remaining connection slots).
pub const MAX_SUBSCRIBERS: usize = 64;
/// The kernel's send buffer of a subscribed connection: small, so that a
/// client that stops reading is noticed in seconds, not minutes.
const SOCKET_SNDBUF: usize = 32 * 1024;
/// How often the stream checks that its device still runs this view.
const RECHECK: Duration = Duration::from_secs(1);

/// Counts the subscriptions being served, and holds their feeds.
#[derive(Default)]
pub struct SubscriberSlots {
    n: AtomicUsize,
    feeds: Feeds,
}

impl SubscriberSlots {
    fn take(&self) -> Option<SlotGuard<'_>> {
        let mut n = self.n.load(Ordering::Relaxed);
        loop {
            if n >= MAX_SUBSCRIBERS {
                return None;
            }
            match self
                .n
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(SlotGuard(&self.n)),
                Err(now) => n = now,
            }
        }
    }

    /// Subscriptions being served now.
    pub fn active(&self) -> usize {
        self.n.load(Ordering::Relaxed)
    }
}

/// A subscriber slot, given back when dropped.
pub struct SlotGuard<'a>(&'a AtomicUsize);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Samples per frame for a view at `hz` lines per second: a whole number
/// of the view's bins, as few as keep the frame rate at or below `hz`.
pub fn decimation(view: &View, hz: u32) -> usize {
    let bin = view.bin_samples.max(1);
    let rate = view.sample_rate;
    if !(rate.is_finite() && rate > 0.0) {
        return bin;
    }
    let bins_per_s = rate / bin as f64;
    let k = (bins_per_s / hz.max(1) as f64).ceil().max(1.0) as usize;
    k * bin
}

/// The header line of a subscription, as sent and as clients read it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeaderLine {
    pub device: String,
    pub signal: Signal,
    pub channels: usize,
    pub channel_names: Vec<String>,
    pub sample_rate: f64,
    pub units: String,
    /// Samples per frame (fewer when a gap ends a frame early).
    pub decimation: usize,
    /// At most this many lines per second.
    pub hz: u32,
}

/// A frame line as clients read it (sent by [`write_frame`]).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct FrameLine {
    /// Unix time of the last sample covered.
    pub t: f64,
    /// Sample index of the first sample covered.
    pub i: u64,
    /// Samples covered.
    pub n: u64,
    /// Per channel; `None` where the samples were not numbers.
    pub min: Vec<Option<f32>>,
    pub max: Vec<Option<f32>>,
    #[serde(default)]
    pub skipped: u64,
    #[serde(default)]
    pub cause: Option<String>,
}

/// The header line of a subscription.
pub fn header(view: &View, signal: Signal, hz: u32, decimation: usize) -> HeaderLine {
    HeaderLine {
        device: view.device_id.clone(),
        signal,
        channels: view.channels,
        channel_names: view.channel_names.clone(),
        sample_rate: view.sample_rate,
        units: view.units.clone(),
        decimation,
        hz,
    }
}

/// Why samples between two frames are not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The recording lacks them (a device, overflow or journal gap).
    Gap,
    /// This client fell behind the view buffer.
    Lag,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Gap => "gap",
            Skip::Lag => "lag",
        }
    }
}

/// A finished frame (its values are the builder's [`FrameBuilder::min`]
/// and [`FrameBuilder::max`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameMeta {
    pub first: u64,
    pub len: u64,
    pub t: f64,
    /// Samples between the previous frame and this one not shown.
    pub skipped: u64,
    pub cause: Option<Skip>,
}

/// Folds the view's bins into frames of `decimation` samples for one
/// client. Allocates only in [`FrameBuilder::new`].
pub struct FrameBuilder {
    view: Arc<View>,
    signal: Signal,
    decimation: u64,
    /// Next bin to read.
    cursor: u64,
    /// A bin already read that starts the next frame (after a gap).
    held: Option<BinMeta>,
    first: u64,
    len: u64,
    t: f64,
    min: Vec<f32>,
    max: Vec<f32>,
    bin_min: Vec<f32>,
    bin_max: Vec<f32>,
    /// End (exclusive sample index) of the previous frame sent.
    prev_end: Option<u64>,
    lagged: bool,
}

impl FrameBuilder {
    /// Start at the next bin the view publishes.
    pub fn new(view: Arc<View>, signal: Signal, decimation: usize) -> Self {
        let ch = view.channels;
        FrameBuilder {
            cursor: view.head(signal),
            view,
            signal,
            decimation: decimation.max(1) as u64,
            held: None,
            first: 0,
            len: 0,
            t: 0.0,
            min: vec![0.0; ch],
            max: vec![0.0; ch],
            bin_min: vec![0.0; ch],
            bin_max: vec![0.0; ch],
            prev_end: None,
            lagged: false,
        }
    }

    pub fn min(&self) -> &[f32] {
        &self.min
    }

    pub fn max(&self) -> &[f32] {
        &self.max
    }

    /// The next complete frame, if the view has published its samples.
    pub fn next_frame(&mut self) -> Option<FrameMeta> {
        loop {
            let bin = match self.held.take() {
                Some(b) => b,
                None => match self.view.read(
                    self.signal,
                    self.cursor,
                    &mut self.bin_min,
                    &mut self.bin_max,
                ) {
                    Read::NotYet => return None,
                    Read::Lost => {
                        // Fell behind: what was folded so far is incomplete;
                        // continue live from the newest bin.
                        self.len = 0;
                        self.lagged = true;
                        let bins = self
                            .decimation
                            .div_ceil(self.view.bin_samples.max(1) as u64);
                        self.cursor = self.view.head(self.signal).saturating_sub(bins);
                        continue;
                    }
                    Read::Bin(b) => {
                        self.cursor += 1;
                        b
                    }
                },
            };
            if self.len > 0 && bin.first != self.first + self.len {
                // A gap ends this frame; the bin starts the next one.
                self.held = Some(bin);
                return Some(self.finish());
            }
            if self.len == 0 {
                self.first = bin.first;
                self.min.copy_from_slice(&self.bin_min);
                self.max.copy_from_slice(&self.bin_max);
            } else {
                for (m, b) in self.min.iter_mut().zip(&self.bin_min) {
                    *m = m.min(*b);
                }
                for (m, b) in self.max.iter_mut().zip(&self.bin_max) {
                    *m = m.max(*b);
                }
            }
            self.len += u64::from(bin.len);
            self.t = bin.t;
            if self.len >= self.decimation {
                return Some(self.finish());
            }
        }
    }

    fn finish(&mut self) -> FrameMeta {
        let skipped = self
            .prev_end
            .map_or(0, |end| self.first.saturating_sub(end));
        let cause = if self.lagged {
            Some(Skip::Lag)
        } else if skipped > 0 {
            Some(Skip::Gap)
        } else {
            None
        };
        let meta = FrameMeta {
            first: self.first,
            len: self.len,
            t: self.t,
            skipped,
            cause,
        };
        self.prev_end = Some(self.first + self.len);
        self.lagged = false;
        self.len = 0;
        meta
    }

    /// Has the view's writer ended and every bin been read?
    pub fn exhausted(&self) -> bool {
        self.held.is_none() && self.view.is_closed() && self.cursor >= self.view.head(self.signal)
    }
}

/// Append one frame line (JSON, newline-terminated) to `out`.
pub fn write_frame(out: &mut Vec<u8>, m: &FrameMeta, min: &[f32], max: &[f32]) {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        t: f64,
        i: u64,
        n: u64,
        // serde_json writes non-finite floats (a bin of NaN samples) as null.
        min: &'a [f32],
        max: &'a [f32],
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cause: Option<&'static str>,
    }
    let line = Line {
        t: m.t,
        i: m.first,
        n: m.len,
        min,
        max,
        skipped: m.cause.map(|_| m.skipped),
        cause: m.cause.map(Skip::as_str),
    };
    // Writing into a Vec cannot fail, and these types always serialize.
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

/// At most `hz` lines in any one-second window.
pub struct RateCap {
    hz: usize,
    sent: VecDeque<Instant>,
}

impl RateCap {
    pub fn new(hz: u32) -> Self {
        let hz = hz.max(1) as usize;
        RateCap {
            hz,
            sent: VecDeque::with_capacity(hz),
        }
    }

    /// May a line go out at `now`?
    pub fn ready(&self, now: Instant) -> bool {
        self.sent.len() < self.hz
            || self
                .sent
                .front()
                .is_some_and(|&oldest| now.duration_since(oldest) >= Duration::from_secs(1))
    }

    /// A line went out at `now`.
    pub fn record(&mut self, now: Instant) {
        if self.sent.len() == self.hz {
            self.sent.pop_front();
        }
        self.sent.push_back(now);
    }

    /// [`RateCap::ready`], then [`RateCap::record`] when yes.
    pub fn admit(&mut self, now: Instant) -> bool {
        let ok = self.ready(now);
        if ok {
            self.record(now);
        }
        ok
    }
}

/// When a feed wakes next. The processing stage publishes a view's bins
/// a block at a time (every 100 ms for the synthetic device, as the ring
/// fills for others), so a feed that ticked at `hz` would mostly find
/// nothing new. It wakes just after the next publish it expects (the
/// latest plus the writer's own interval between publishes), and every
/// `1/hz` while that moment has passed with nothing new or while the rate
/// cap holds frames back. It never sleeps longer than [`MAX_SLEEP`].
pub struct Pacer {
    tick: Duration,
}

/// How long after its expected moment a publish is looked for.
const PUBLISH_SLACK: Duration = Duration::from_millis(3);
/// The longest a feed sleeps, whatever the device's pace.
const MAX_SLEEP: Duration = Duration::from_millis(250);

impl Pacer {
    pub fn new(hz: u32) -> Self {
        Pacer {
            tick: Duration::from_secs_f64(1.0 / f64::from(hz.max(1))),
        }
    }

    /// The wake-up after one at `now`; `publish` is the view's latest,
    /// `capped` says frames wait for the rate cap.
    pub fn next(&self, now: Instant, publish: Option<Publish>, capped: bool) -> Instant {
        let soonest = now + self.tick;
        match publish {
            Some(Publish {
                at,
                interval: Some(interval),
            }) if !capped => (at + interval + PUBLISH_SLACK)
                .min(now + MAX_SLEEP)
                .max(soonest),
            _ => soonest,
        }
    }
}

/// A client's send buffer: written without waiting, bounded in lines.
struct Outbox {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    written: usize,
    /// Lengths of the lines in `buf` not completely written, oldest first.
    lines: VecDeque<usize>,
    /// Bytes of the front line already written.
    front_written: usize,
    max_lines: usize,
}

enum Flush {
    Ok,
    /// The client does not keep up: too many lines wait.
    TooSlow,
    Gone(std::io::Error),
}

impl Outbox {
    fn new(max_lines: usize) -> Self {
        Outbox {
            buf: Vec::with_capacity(16 * 1024),
            written: 0,
            lines: VecDeque::with_capacity(max_lines + 1),
            front_written: 0,
            max_lines,
        }
    }

    /// Append the bytes pushed to `buf` since `start` as one line.
    fn committed(&mut self, start: usize) {
        let len = self.buf.len() - start;
        if len > 0 {
            self.lines.push_back(len);
        }
    }

    fn waiting(&self) -> usize {
        self.lines.len()
    }

    /// Write what the socket takes now; never waits.
    fn flush(&mut self, mut wr: &StdUnixStream) -> Flush {
        while self.written < self.buf.len() {
            match wr.write(&self.buf[self.written..]) {
                Ok(0) => {
                    return Flush::Gone(std::io::ErrorKind::WriteZero.into());
                }
                Ok(mut n) => {
                    self.written += n;
                    while let Some(&front) = self.lines.front() {
                        let rest = front - self.front_written;
                        if n >= rest {
                            n -= rest;
                            self.front_written = 0;
                            self.lines.pop_front();
                        } else {
                            self.front_written += n;
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Flush::Gone(e),
            }
        }
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
        } else if self.written > 64 * 1024 {
            self.buf.drain(..self.written);
            self.written = 0;
        }
        if self.waiting() > self.max_lines {
            Flush::TooSlow
        } else {
            Flush::Ok
        }
    }
}

/// What a subscription request found before streaming.
pub enum Admitted<'a> {
    /// Refused (unknown device, too many subscribers, ...): the reply to
    /// send; the connection stays usable.
    Refused(Value),
    /// The client left while the device was still connecting.
    Gone,
    /// Stream this view; the slot is held until the stream ends.
    View(SlotGuard<'a>, Arc<View>),
}

/// Take a subscriber slot and find the device's view (waiting while it
/// connects).
pub async fn admit<'a>(
    state: &'a DaemonState,
    device: &str,
    rd: &mut BufReader<OwnedReadHalf>,
) -> std::io::Result<Admitted<'a>> {
    let Some(slot) = state.subscribers.take() else {
        return Ok(Admitted::Refused(error_reply(
            &format!("too many subscribers ({MAX_SUBSCRIBERS} at most)"),
            "close another `neuroedge scope` or subscriber and try again",
        )));
    };
    Ok(match wait_for_view(state, device, rd).await? {
        Ok(Some(v)) => Admitted::View(slot, v),
        Ok(None) => Admitted::Gone,
        Err(refusal) => Admitted::Refused(refusal),
    })
}

/// The subscriptions of one view, signal and rate share a feed: one task
/// that builds each frame once, serializes it once and writes it to every
/// member's socket. Twenty `scope`s on a device cost one wake-up per
/// publish and one JSON line per frame, plus a write per client per
/// wake-up, not twenty of each.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FeedKey {
    /// The view's address: the feed holds the view, so it cannot be reused
    /// by another view while the feed runs.
    view: usize,
    signal: Signal,
    hz: u32,
}

/// The running feeds, by key; a new subscriber joins through the sender.
type Feeds = Mutex<HashMap<FeedKey, mpsc::UnboundedSender<Member>>>;

/// One subscriber as its feed holds it.
struct Member {
    /// The connection, out of tokio's reactor: the feed writes without
    /// waiting and never needs to learn when it is writable again (as a
    /// registered socket, each client reading its line woke the runtime).
    wr: StdUnixStream,
    out: Outbox,
    /// No frame sent to it yet (its first frame never reports a skip).
    fresh: bool,
    /// Dropped when the feed lets the member go: the connection ends.
    _held: oneshot::Sender<()>,
}

/// Stream `view` to this connection until the client closes, does not
/// keep up, or the device's run ends.
#[allow(clippy::too_many_arguments)]
pub async fn stream(
    state: &Arc<DaemonState>,
    _slot: SlotGuard<'_>,
    device: &str,
    view: Arc<View>,
    signal: Signal,
    hz: u32,
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
) -> std::io::Result<()> {
    // Bytes the client sent after its request are ignored, as all it
    // sends while streaming.
    let conn = rd
        .into_inner()
        .reunite(wr)
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .into_std()?;
    set_send_buffer(&conn);
    let dec = decimation(&view, hz);
    let mut out = Outbox::new(hz as usize);
    let start = out.buf.len();
    if serde_json::to_writer(&mut out.buf, &header(&view, signal, hz, dec)).is_ok() {
        out.buf.push(b'\n');
    }
    out.committed(start);
    let (held, released) = oneshot::channel();
    let member = Member {
        wr: conn,
        out,
        fresh: true,
        _held: held,
    };
    join(state, device, view, signal, hz, dec, member);
    // Until the feed lets go: the stream ended, the client closed (its
    // next write fails) or did not keep up. What the client sends
    // meanwhile is not read.
    let _ = released.await;
    Ok(())
}

/// Hand `member` to the feed of its key, starting the feed if none runs.
fn join(
    state: &Arc<DaemonState>,
    device: &str,
    view: Arc<View>,
    signal: Signal,
    hz: u32,
    dec: usize,
    member: Member,
) {
    let key = FeedKey {
        view: Arc::as_ptr(&view) as usize,
        signal,
        hz,
    };
    let mut feeds = crate::sync::lock(&state.subscribers.feeds);
    let member = match feeds.get(&key) {
        Some(tx) => match tx.send(member) {
            Ok(()) => return,
            Err(mpsc::error::SendError(m)) => m,
        },
        None => member,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // The receiver is alive: this cannot fail.
    let _ = tx.send(member);
    feeds.insert(key, tx);
    let feed = Feed {
        state: state.clone(),
        key,
        device: device.to_string(),
        frames: FrameBuilder::new(view.clone(), signal, dec),
        subscription: view.subscribe(signal),
        view,
        members: Vec::new(),
        line: Vec::with_capacity(4096),
    };
    tokio::spawn(feed.run(rx));
}

struct Feed {
    state: Arc<DaemonState>,
    key: FeedKey,
    device: String,
    view: Arc<View>,
    frames: FrameBuilder,
    /// Keeps the processing stage folding this signal while the feed runs.
    subscription: crate::view::Subscription,
    members: Vec<Member>,
    /// The current frame's line.
    line: Vec<u8>,
}

impl Feed {
    async fn run(mut self, mut joiners: mpsc::UnboundedReceiver<Member>) {
        let hz = self.key.hz;
        let mut cap = RateCap::new(hz);
        let pacer = Pacer::new(hz);
        let mut wake = Instant::now();
        let mut checked = Instant::now();
        let end = loop {
            self.flush_all();
            if self.members.is_empty() && self.close_if_idle(&mut joiners) {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
                m = joiners.recv() => {
                    // The map holds a sender while the feed runs.
                    if let Some(m) = m {
                        self.members.push(m);
                    }
                    continue;
                }
            }
            let now = Instant::now();
            let mut capped = false;
            loop {
                if !cap.ready(now) {
                    capped = true;
                    break;
                }
                let Some(m) = self.frames.next_frame() else {
                    break;
                };
                cap.record(now);
                self.send_frame(&m);
            }
            wake = pacer.next(now, self.view.last_publish(self.key.signal), capped);
            if self.frames.exhausted() {
                break "the device's run ended (device stopped, reloaded or neuroedge stopping)";
            }
            if now.duration_since(checked) >= RECHECK {
                checked = now;
                // A client that closed is found by its next write, or here
                // while no frames come.
                self.members.retain(|m| !closed(&m.wr));
                if !runs_view(&self.state, &self.device, &self.view) {
                    break "the device was restarted or removed";
                }
            }
        };
        // Nobody joins any more; those who did meanwhile get the end too.
        {
            let mut feeds = crate::sync::lock(&self.state.subscribers.feeds);
            feeds.remove(&self.key);
            joiners.close();
        }
        while let Ok(m) = joiners.try_recv() {
            self.members.push(m);
        }
        let mut line = Vec::new();
        if serde_json::to_writer(&mut line, &json!({"end": end, "hint": "subscribe again"})).is_ok()
        {
            line.push(b'\n');
        }
        for m in &mut self.members {
            let start = m.out.buf.len();
            m.out.buf.extend_from_slice(&line);
            m.out.committed(start);
            // A last try; the client is not waited for.
            let _ = m.out.flush(&m.wr);
        }
        drop(self.subscription);
    }

    /// With no member left: stop, unless someone is joining. Decided
    /// under the map's lock, which joiners hold while they send.
    fn close_if_idle(&mut self, joiners: &mut mpsc::UnboundedReceiver<Member>) -> bool {
        let mut feeds = crate::sync::lock(&self.state.subscribers.feeds);
        match joiners.try_recv() {
            Ok(m) => {
                self.members.push(m);
                false
            }
            Err(_) => {
                feeds.remove(&self.key);
                true
            }
        }
    }

    /// Serialize the frame once and queue it for every member.
    fn send_frame(&mut self, m: &FrameMeta) {
        self.line.clear();
        write_frame(&mut self.line, m, self.frames.min(), self.frames.max());
        let mut first_line: Option<Vec<u8>> = None;
        for member in &mut self.members {
            let start = member.out.buf.len();
            if member.fresh && m.cause.is_some() {
                // A skip is news only to those who saw the frame before.
                let plain = first_line.get_or_insert_with(|| {
                    let mut l = Vec::new();
                    let meta = FrameMeta {
                        skipped: 0,
                        cause: None,
                        ..*m
                    };
                    write_frame(&mut l, &meta, self.frames.min(), self.frames.max());
                    l
                });
                member.out.buf.extend_from_slice(plain);
            } else {
                member.out.buf.extend_from_slice(&self.line);
            }
            member.fresh = false;
            member.out.committed(start);
        }
    }

    /// Write what each socket takes; let go of members that closed, broke
    /// or do not keep up.
    fn flush_all(&mut self) {
        let (view, signal) = (&self.view, self.key.signal);
        self.members
            .retain_mut(|m| matches!(flush_or_report(&mut m.out, &m.wr, view, signal), Flush::Ok));
    }
}

/// Has the client closed its side? Reads (and drops) what it sent; never
/// waits.
fn closed(mut conn: &StdUnixStream) -> bool {
    use std::io::Read as _;
    let mut sink = [0u8; 512];
    match conn.read(&mut sink) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
    }
}

fn flush_or_report(out: &mut Outbox, wr: &StdUnixStream, view: &View, signal: Signal) -> Flush {
    let r = out.flush(wr);
    match &r {
        Flush::Ok => {}
        Flush::TooSlow => tracing::info!(
            device = %view.device_id,
            signal = signal.as_str(),
            waiting_lines = out.waiting(),
            "subscriber does not keep up: disconnected"
        ),
        Flush::Gone(e) => {
            tracing::debug!(device = %view.device_id, error = %e, "subscriber went away")
        }
    }
    r
}

/// Is `view` still the live view of `device`?
fn runs_view(state: &DaemonState, device: &str, view: &Arc<View>) -> bool {
    state
        .devices
        .devices()
        .iter()
        .find(|d| d.id == device)
        .and_then(|d| d.view())
        .is_some_and(|v| Arc::ptr_eq(&v, view))
}

/// The device's view; waits while the device is still connecting (its
/// layout is not known yet). `Ok(None)`: the client left meanwhile.
async fn wait_for_view(
    state: &DaemonState,
    device: &str,
    rd: &mut BufReader<OwnedReadHalf>,
) -> std::io::Result<Result<Option<Arc<View>>, Value>> {
    loop {
        let devices = state.devices.devices();
        let Some(d) = devices.iter().find(|d| d.id == device) else {
            let known: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
            return Ok(Err(error_reply(
                &format!("no device {device:?}"),
                &format!("devices: {}", known.join(", ")),
            )));
        };
        if let Some(v) = d.view().filter(|v| !v.is_closed()) {
            return Ok(Ok(Some(v)));
        }
        match d.state() {
            DeviceState::Disabled => {
                return Ok(Err(error_reply(
                    &format!("device {device:?} is disabled"),
                    "set enabled = true in its device file, then `neuroedge reload`",
                )))
            }
            DeviceState::Error => {
                return Ok(Err(error_reply(
                    &format!(
                        "device {device:?} is in error: {}",
                        d.last_error().unwrap_or_default()
                    ),
                    "fix the device (see `neuroedge status`), then `neuroedge reload`",
                )))
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            r = rd.fill_buf() => match r {
                Ok([]) | Err(_) => return Ok(Ok(None)),
                Ok(b) => { let n = b.len(); rd.consume(n); }
            }
        }
    }
}

/// A small kernel send buffer, so a stalled client is noticed soon.
fn set_send_buffer(stream: &StdUnixStream) {
    if let Err(e) =
        nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::SndBuf, &SOCKET_SNDBUF)
    {
        tracing::debug!(error = %e, "cannot shrink a subscriber's send buffer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::ViewWriter;

    fn view(rate: f64, channels: usize) -> (Arc<View>, ViewWriter) {
        let names: Vec<String> = (0..channels).map(|i| format!("c{i}")).collect();
        let v = View::new("d", rate, &names, "uV");
        let w = ViewWriter::new(v.clone());
        (v, w)
    }

    /// Push frames `first..first+n`: channel 0 = index, channel 1 = -index.
    fn push(w: &mut ViewWriter, first: u64, n: usize) {
        let mut d = Vec::new();
        let mut t = Vec::new();
        for i in first..first + n as u64 {
            d.extend([i as f32, -(i as f32)]);
            t.push(i as f64);
        }
        w.push(first, &d, &d, &t);
    }

    #[test]
    fn decimation_keeps_the_frame_rate_at_or_below_hz() {
        for (rate, hz, want) in [
            (250.0, 30, 10),
            (250.0, 60, 6),
            (250.0, 1, 250),
            (30_000.0, 30, 1000),
            (30_000.0, 60, 500),
            (30_000.0, 7, 4500),
            (100.0, 30, 4),
            (10.0, 30, 1),
        ] {
            let (v, _) = view(rate, 1);
            let d = decimation(&v, hz);
            assert_eq!(d, want, "{rate} Hz at {hz}");
            assert_eq!(d % v.bin_samples, 0);
            assert!(rate / d as f64 <= hz as f64 + 1e-9);
        }
    }

    #[test]
    fn frames_tile_the_samples_and_name_what_they_skip() {
        // 1000 Hz: bins of 8; 30 lines/s: frames of 5 bins = 40 samples.
        let (v, mut w) = view(1000.0, 2);
        let _sub = v.subscribe(Signal::Raw);
        let mut fb = FrameBuilder::new(v.clone(), Signal::Raw, decimation(&v, 30));
        assert_eq!(fb.decimation, 40);
        push(&mut w, 0, 100);
        let f = fb.next_frame().unwrap();
        assert_eq!(
            (f.first, f.len, f.t, f.skipped, f.cause),
            (0, 40, 39.0, 0, None)
        );
        assert_eq!((fb.min()[0], fb.max()[0]), (0.0, 39.0));
        assert_eq!((fb.min()[1], fb.max()[1]), (-39.0, 0.0));
        let f = fb.next_frame().unwrap();
        assert_eq!((f.first, f.len), (40, 40));
        assert_eq!(fb.next_frame(), None, "80..96 published, not a whole frame");
        // A gap of 50: the frame in progress ends at it (with the open bin
        // 96..100), the next says what is missing.
        push(&mut w, 150, 100);
        let f = fb.next_frame().unwrap();
        assert_eq!((f.first, f.len, f.skipped), (80, 20, 0));
        assert_eq!((fb.min()[0], fb.max()[0]), (80.0, 99.0));
        let f = fb.next_frame().unwrap();
        assert_eq!(
            (f.first, f.len, f.skipped, f.cause),
            (150, 40, 50, Some(Skip::Gap))
        );
        let f = fb.next_frame().unwrap();
        assert_eq!((f.first, f.skipped, f.cause), (190, 0, None));
        // Falling a whole ring behind: the next frame says so.
        let slots = v.slots();
        push(&mut w, 250, slots * 8 + 200);
        let f = fb.next_frame().unwrap();
        assert_eq!(f.cause, Some(Skip::Lag));
        assert!(f.first > 250 && f.skipped == f.first - 230, "{f:?}");
        drop(w);
        while fb.next_frame().is_some() {}
        assert!(fb.exhausted());
    }

    #[test]
    fn frame_lines_are_json_with_null_for_non_finite() {
        let mut out = Vec::new();
        let m = FrameMeta {
            first: 5,
            len: 2,
            t: 1.5,
            skipped: 3,
            cause: Some(Skip::Gap),
        };
        write_frame(&mut out, &m, &[1.25, f32::NAN], &[2.5, f32::INFINITY]);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"t": 1.5, "i": 5, "n": 2, "min": [1.25, null], "max": [2.5, null], "skipped": 3, "cause": "gap"})
        );
        let typed: FrameLine = serde_json::from_slice(&out).unwrap();
        assert_eq!((typed.min[1], typed.skipped), (None, 3));
        out.clear();
        write_frame(&mut out, &FrameMeta { cause: None, ..m }, &[0.1], &[0.2]);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("skipped").is_none());
        // f32 printed shortest: parses back to the same f32.
        assert_eq!(v["min"][0].as_f64().unwrap() as f32, 0.1f32);
    }

    #[test]
    fn rate_cap_allows_hz_lines_in_any_second() {
        let mut cap = RateCap::new(3);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(cap.admit(at(0)));
        assert!(cap.admit(at(10)));
        assert!(cap.admit(at(20)));
        assert!(!cap.admit(at(999)));
        assert!(cap.admit(at(1000)));
        assert!(!cap.admit(at(1005)));
        assert!(cap.admit(at(1010)));
    }

    #[test]
    fn a_feed_wakes_just_after_the_publish_it_expects() {
        let pacer = Pacer::new(30);
        let tick = Duration::from_secs_f64(1.0 / 30.0);
        let t0 = Instant::now();
        let every = |ms: u64| Publish {
            at: t0,
            interval: Some(Duration::from_millis(ms)),
        };
        // Before any publish, or before the pace is known: every 1/hz.
        let now = t0 + Duration::from_millis(5);
        assert_eq!(pacer.next(now, None, false), now + tick);
        let unknown = Publish {
            at: t0,
            interval: None,
        };
        assert_eq!(pacer.next(now, Some(unknown), false), now + tick);
        // Blocks every 100 ms: once, just after the next one.
        assert_eq!(
            pacer.next(now, Some(every(100)), false),
            t0 + Duration::from_millis(100) + PUBLISH_SLACK
        );
        // Frames held back by the rate cap: 1/hz, whatever the pace.
        assert_eq!(pacer.next(now, Some(every(100)), true), now + tick);
        // The next block is late: look again every 1/hz.
        let late = t0 + Duration::from_millis(104);
        assert_eq!(pacer.next(late, Some(every(100)), false), late + tick);
        // Faster than hz: 1/hz.
        assert_eq!(pacer.next(now, Some(every(5)), false), now + tick);
        // A device that published once a minute: looked at 4 times a second.
        assert_eq!(pacer.next(now, Some(every(60_000)), false), now + MAX_SLEEP);
    }

    #[test]
    fn a_client_that_stops_reading_is_dropped_not_waited_for() {
        let (awr, b) = StdUnixStream::pair().unwrap();
        awr.set_nonblocking(true).unwrap();
        set_send_buffer(&awr);
        let mut out = Outbox::new(30);
        let line = vec![b'x'; 300];
        let started = Instant::now();
        let mut dropped = false;
        for _ in 0..10_000 {
            let s = out.buf.len();
            out.buf.extend_from_slice(&line);
            out.buf.push(b'\n');
            out.committed(s);
            match out.flush(&awr) {
                Flush::Ok => {}
                Flush::TooSlow => {
                    dropped = true;
                    break;
                }
                Flush::Gone(e) => panic!("{e}"),
            }
        }
        assert!(dropped, "never noticed the stalled client");
        assert!(started.elapsed() < Duration::from_secs(1), "it waited");
        assert_eq!(out.waiting(), 31);
        drop(b);
    }
}
