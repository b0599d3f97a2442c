//! The Lab Streaming Layer driver: one LSL stream (selected by any
//! combination of name / type / source_id) becomes the device, and
//! optionally a string stream's samples become batch markers.
//!
//! liblsl is loaded at run time ([`crate::lsl_ffi`]: `$NEUROEDGE_LSL_LIB`,
//! else pylsl's bundled liblsl, else the system's); without it the device
//! is in `error` with a message naming the fix, and the other devices run.
//! liblsl's resolve and set-up calls block for seconds, so they run on a
//! thread of their own per connection, which hands the open inlet over.
//! The driver then pulls on the acquisition thread: it waits on liblsl's
//! condition variable for at most 100 ms for the first sample, takes what
//! is there in one chunked pull, and maps the stamps to the local LSL clock
//! with `time_correction`. (A pull thread of its own handed each chunk to
//! the acquisition thread, a wake-up each time: recording an 8 ch x 250 Hz
//! stream cost ~0.035 % of a core more, of ~0.8 % in all.) The driver maps LSL's local clock
//! to neuroedge's monotonic timeline (both are the system's monotonic
//! clock; the offset is measured on every read).
//!
//! An outlet that goes away: liblsl's recovery hides it (pulls just return
//! nothing), so the driver checks, after 1 s without data, whether the
//! stream is still on the network; if not, the device is `disconnected`
//! and the runner reconnects (re-resolves) with backoff. A stream that is
//! there but silent is `stalled` (runner) until data resumes.

use super::{default_names, Sink, Source, SourceError, StreamInfo};
use super::{BuildContext, DriverConfig};
use crate::lsl_ffi::{self, Inlet, LslError};
use crate::validate::{self, Findings};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn default_resolve_timeout() -> f64 {
    5.0
}

/// `[connection]` of the LSL driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LslConnection {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "type")]
    pub stream_type: Option<String>,
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default = "default_resolve_timeout")]
    pub resolve_timeout_s: f64,
    /// Name of an LSL string stream whose samples become batch markers.
    #[serde(default)]
    pub markers: Option<String>,
}

impl DriverConfig for LslConnection {
    const NAME: &'static str = "lsl";

    fn validate(&self, out: &mut Findings) {
        if self.name.is_none() && self.stream_type.is_none() && self.source_id.is_none() {
            out.bad(
                "",
                "no stream selector",
                "set at least one of name, type, source_id",
            );
        }
        if !(self.resolve_timeout_s > 0.0 && self.resolve_timeout_s <= 3600.0) {
            out.bad(
                "resolve_timeout_s",
                format!("{} is out of range", self.resolve_timeout_s),
                "use a number of seconds above 0 and at most 3600 (default 5.0)",
            );
        }
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(Lsl::new(self.clone(), ctx.stop.clone())))
    }
}

/// The longest a pull blocks.
const PULL_TIMEOUT: f64 = 0.1;
/// Once data flows, the driver pulls at most this often: what arrives
/// meanwhile waits in liblsl's buffer and comes in one chunk. An outlet
/// pushing every 10 ms would otherwise wake the acquisition and the
/// processing threads 100 times a second each (recording an 8 ch x 250 Hz
/// stream cost ~1.2 % of a core, ~0.4 % pulled this way).
/// One ring block: the live outputs' latency bound (issue 12) allows it.
/// Only for stamps on LSL's clock: a stream stamped on another clock is
/// placed by arrival times, which must stay tight, so it is pulled as each
/// burst arrives.
const PULL_EVERY: Duration = Duration::from_millis(100);
/// How often while nothing takes the device's samples live (no inlet on
/// its LSL outlets, no socket subscriber: [`Sink::watched_live`]): the journal
/// takes a batch a second and the features come every `step_s`, so pulling
/// less often costs nobody a wait, and it cuts the acquisition and
/// processing threads' wake-ups by half or more (LabRecorder: 500 ms). A
/// subscriber that comes waits at most this long for its first samples.
const PULL_UNWATCHED: Duration = Duration::from_millis(250);
/// A pull takes up to a second of samples (at least 32), but at most this
/// many values: a backlog (the set-up's first moments) comes in one chunk,
/// so the arrival time of its newest sample is a true arrival time.
const MAX_PULL_VALUES: usize = 1 << 20;
/// Marker samples pulled per call at most.
const MARKER_CHUNK: usize = 32;
/// Each resolve attempt waits this long (so a stop request is seen).
const RESOLVE_STEP: f64 = 0.5;
/// Without data this long, check whether the outlet is still there (well
/// before the runner's 2 s stall limit, so a vanished outlet shows as
/// `disconnected`; a silent one that is still there becomes `stalled`).
const SILENCE_CHECK: Duration = Duration::from_secs(1);
/// Waits for the stream's full info, the first clock offset and the
/// subscription.
const SETUP_TIMEOUT: f64 = 2.0;
/// Data is held this long before going to the ring so that markers pulled
/// from the other inlet at about the same time reach the batcher first.
const MARKER_HOLD: Duration = Duration::from_millis(60);
/// A stamp step beyond 1.5 periods plus this is a gap in the stream.
const GAP_SLACK_S: f64 = 0.1;
/// The most channel-samples per second accepted from a stream's info (the
/// rate and channel count are bounded like a device file's,
/// [`validate::MAX_SAMPLE_RATE`] and [`validate::MAX_CHANNELS`]): the ring
/// is sized from them, so a stray stream with a silly rate must not make
/// the daemon allocate gigabytes.
const MAX_CH_SAMPLES_PER_S: f64 = 5_000_000.0;
/// A corrected stamp further than this from the local clock is not
/// believed (the inlet buffers at most [`INLET_BUFFER_S`]): the sample is
/// stamped with its receive time instead.
const MAX_STAMP_OFFSET_S: f64 = 2.0 * INLET_BUFFER_S as f64;
/// Bad stamps are reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Chunk buffers kept for reuse.
const SPARE_CHUNKS: usize = 32;
/// liblsl inlet buffer, seconds.
const INLET_BUFFER_S: i32 = 60;

/// A string as an XPath 1.0 literal (XPath has no escapes: a value with
/// both quote kinds becomes a `concat()`).
pub fn xpath_literal(s: &str) -> String {
    if !s.contains('\'') {
        format!("'{s}'")
    } else if !s.contains('"') {
        format!("\"{s}\"")
    } else {
        let mut parts = Vec::new();
        for (i, seg) in s.split('\'').enumerate() {
            if i > 0 {
                parts.push("\"'\"".to_string());
            }
            if !seg.is_empty() {
                parts.push(format!("'{seg}'"));
            }
        }
        format!("concat({})", parts.join(","))
    }
}

/// The LSL predicate selecting a stream: `name='X' and type='EEG' ...`.
pub fn predicate(name: Option<&str>, stream_type: Option<&str>, source_id: Option<&str>) -> String {
    [
        ("name", name),
        ("type", stream_type),
        ("source_id", source_id),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k}={}", xpath_literal(v))))
    .collect::<Vec<_>>()
    .join(" and ")
}

struct Opened {
    rate: f64,
    channels: usize,
    names: Vec<String>,
    describe: String,
}

/// What the connecting thread hands over: the stream it opened, or why not.
type Connecting = Result<(Opened, Box<Puller>), SourceError>;

/// A chunk's buffers (values, stamps), kept once pushed so that the next
/// pulls reuse them instead of allocating per chunk.
type Spare = (Vec<f32>, Vec<f64>);

/// The thread that resolves the stream and opens an inlet on it (liblsl's
/// resolve and set-up calls block for seconds; `open` waits for it in
/// short steps so that a stop request is seen).
struct Connector {
    stop: Arc<AtomicBool>,
    rx: Receiver<Connecting>,
    thread: Option<JoinHandle<()>>,
}

impl Connector {
    fn finish(self) {
        let Connector { stop, rx, thread } = self;
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A pulled chunk waiting to be pushed.
struct Chunk {
    arrived: Instant,
    values: Vec<f32>,
    stamps: Vec<f64>,
}

/// An open data inlet and what pulling from it needs. It is pulled on the
/// acquisition thread: a pull waits on liblsl's condition variable for at
/// most [`PULL_TIMEOUT`].
struct Puller {
    lib: Arc<lsl_ffi::Lsl>,
    inlet: Inlet,
    /// The sender's clock offset (`time_correction`).
    correction: f64,
    uid: String,
    describe: String,
    channels: usize,
    markers: Option<MarkerInlet>,
    /// The pull buffers, allocated once: pulled samples are copied from
    /// them into the chunk pushed (only what was pulled).
    values: Vec<f32>,
    stamps: Vec<f64>,
    placer: Stamps,
    last_data: Instant,
    last_check: Instant,
    /// Stamps on LSL's clock are pulled at most every [`PULL_EVERY`] (or
    /// [`PULL_UNWATCHED`]): the next pull not before this.
    next_pull: Instant,
}

impl Puller {
    /// Wait for the first sample (at most `timeout` s), then take what is
    /// already there in one chunked pull, into the pull buffers with the
    /// stamps on the local LSL clock ([`Self::pulled`]); the next pull
    /// `every` later. Returns the frames pulled.
    fn pull(&mut self, timeout: f64, every: Duration) -> Result<usize, SourceError> {
        let turn = Instant::now();
        let ch = self.channels;
        let inlet = &mut self.inlet;
        let (pv, ps) = (&mut self.values, &mut self.stamps);
        let pulled = inlet
            .pull_chunk_f32(&mut pv[..ch], &mut ps[..1], timeout)
            .and_then(|first| {
                if first == 0 {
                    return Ok(0);
                }
                inlet
                    .pull_chunk_f32(&mut pv[ch..], &mut ps[1..], 0.0)
                    .map(|rest| first + rest)
            })
            .map_err(|e| SourceError::Disconnected(format!("LSL stream {}: {e}", self.describe)))?;
        if pulled == 0 {
            return Ok(0);
        }
        if let Ok(c) = self.inlet.time_correction(0.0) {
            self.correction = c;
        }
        let now = self.lib.local_clock();
        let own_clock = self.placer.place(
            &mut self.stamps[..pulled],
            self.correction,
            now,
            &self.describe,
        );
        self.last_data = Instant::now();
        // What arrives until the next pull waits in liblsl's buffer, unless
        // the stamps are on another clock (their arrival times place them,
        // so they are pulled as each burst arrives).
        if own_clock {
            self.next_pull = turn + every;
        }
        Ok(pulled)
    }

    /// The `n` frames of the last pull and their stamps.
    fn pulled(&self, n: usize) -> (&[f32], &[f64]) {
        (&self.values[..n * self.channels], &self.stamps[..n])
    }

    /// Pull the marker inlet (if any) and send what it has to the sink,
    /// on the sink's clock.
    fn push_markers(&mut self, sink: &mut Sink<'_>) {
        if let Some(m) = self.markers.as_mut() {
            let ms = m.poll(self.correction);
            if !ms.is_empty() {
                let offset = self.lib.local_clock() - sink.mono_now();
                for (t, v) in ms {
                    sink.marker(t - offset, v);
                }
            }
        }
    }

    /// liblsl's recovery keeps an inlet of a vanished outlet waiting
    /// silently: after [`SILENCE_CHECK`] without data, ask the network
    /// whether the stream is still there.
    fn check_silence(&mut self) -> Result<(), SourceError> {
        if self.last_data.elapsed() < SILENCE_CHECK || self.last_check.elapsed() < SILENCE_CHECK {
            return Ok(());
        }
        self.last_check = Instant::now();
        let q = format!("uid={}", xpath_literal(&self.uid));
        match self.lib.resolve(&q, 1, RESOLVE_STEP) {
            Ok(found) if found.is_empty() => Err(SourceError::Disconnected(format!(
                "LSL stream {} vanished (no data for {:.1} s and no longer on the network)",
                self.describe,
                self.last_data.elapsed().as_secs_f64()
            ))),
            _ => Ok(()),
        }
    }
}

pub struct Lsl {
    cfg: LslConnection,
    /// liblsl, once loaded (at the first open).
    lib: Option<Arc<lsl_ffi::Lsl>>,
    /// The runner's stop request, watched while a connection is set up.
    stop: Arc<AtomicBool>,
    puller: Option<Box<Puller>>,
    describe: String,
    channels: usize,
    period: f64,
    /// Data waiting out [`MARKER_HOLD`].
    pending: VecDeque<Chunk>,
    /// Buffers of pushed chunks, for the next pulls.
    spares: Vec<Spare>,
    /// Local LSL time of the last sample pushed (this connection).
    last_stamp: Option<f64>,
}

impl Lsl {
    pub fn new(cfg: LslConnection, stop: Arc<AtomicBool>) -> Self {
        Lsl {
            cfg,
            lib: None,
            stop,
            puller: None,
            describe: String::new(),
            channels: 0,
            period: 0.0,
            pending: VecDeque::new(),
            spares: Vec::new(),
            last_stamp: None,
        }
    }

    fn push_due(&mut self, sink: &mut Sink<'_>, all: bool) {
        let Some(lib) = self.lib.as_ref() else {
            return;
        };
        // LSL's local clock and the timeline are both the monotonic clock:
        // one offset per read.
        let offset = lib.local_clock() - sink.mono_now();
        while let Some(chunk) = self.pending.front() {
            if !all && chunk.arrived.elapsed() < MARKER_HOLD {
                break;
            }
            let Some(Chunk {
                mut values,
                mut stamps,
                ..
            }) = self.pending.pop_front()
            else {
                break;
            };
            self.push_frames(sink, &values, &stamps, offset);
            if self.spares.len() < SPARE_CHUNKS {
                values.clear();
                stamps.clear();
                self.spares.push((values, stamps));
            }
        }
    }

    /// Push frame-major `values` stamped `stamps` (local LSL clock, which
    /// is `offset` ahead of the sink's) to the sink, with the samples
    /// their stamps show lost before them.
    fn push_frames(&mut self, sink: &mut Sink<'_>, values: &[f32], stamps: &[f64], offset: f64) {
        for (frame, &t) in values.chunks_exact(self.channels).zip(stamps) {
            if let Some(prev) = self.last_stamp {
                let dt = t - prev;
                if dt > 1.5 * self.period + GAP_SLACK_S {
                    let missing = (dt / self.period).round() - 1.0;
                    if missing >= 1.0 {
                        sink.skip(missing as u64);
                    }
                }
            }
            self.last_stamp = Some(t);
            sink.push_stamped(t - offset, frame);
        }
    }

    /// Hold pulled frames back (for markers, [`MARKER_HOLD`]) in a chunk
    /// of their own.
    fn hold(&mut self, values: &[f32], stamps: &[f64]) {
        let (mut v, mut t) = self.spares.pop().unwrap_or_else(|| {
            (
                Vec::with_capacity(64 * self.channels),
                Vec::with_capacity(64),
            )
        });
        v.extend_from_slice(values);
        t.extend_from_slice(stamps);
        self.pending.push_back(Chunk {
            arrived: Instant::now(),
            values: v,
            stamps: t,
        });
    }

    /// One turn of [`Source::read`] on the open puller `p`.
    fn read_from(&mut self, p: &mut Puller, sink: &mut Sink<'_>) -> Result<(), SourceError> {
        // Without a marker stream nothing needs holding back.
        let all = self.cfg.markers.is_none();
        let start = Instant::now();
        let every = if sink.watched_live() {
            PULL_EVERY
        } else {
            PULL_UNWATCHED
        };
        // A read returns within about a pull's period.
        let deadline = start + every;
        // A held chunk falling due bounds every wait.
        let due = self.pending.front().map(|c| c.arrived + MARKER_HOLD);
        if start < p.next_pull {
            let until = due.map_or(p.next_pull, |d| d.min(p.next_pull));
            std::thread::sleep(until.min(deadline).saturating_duration_since(start));
            if Instant::now() < p.next_pull {
                self.push_due(sink, all);
                return Ok(());
            }
        }
        let limit = due.map_or(deadline, |d| d.min(deadline));
        let timeout = limit
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
            .min(PULL_TIMEOUT);
        let n = match p.pull(timeout, every) {
            Ok(n) => n,
            Err(e) => {
                self.push_due(sink, true);
                return Err(e);
            }
        };
        if n > 0 {
            let (values, stamps) = p.pulled(n);
            match self.lib.as_ref() {
                // Nothing held, nothing to hold for: straight from the
                // pull buffers to the ring.
                Some(lib) if all && self.pending.is_empty() => {
                    let offset = lib.local_clock() - sink.mono_now();
                    self.push_frames(sink, values, stamps, offset);
                }
                _ => self.hold(values, stamps),
            }
        }
        p.push_markers(sink);
        self.push_due(sink, all);
        if let Err(e) = p.check_silence() {
            self.push_due(sink, true);
            return Err(e);
        }
        Ok(())
    }
}

impl Source for Lsl {
    fn open(&mut self) -> Result<StreamInfo, SourceError> {
        self.close();
        let lib = match &self.lib {
            Some(l) => l.clone(),
            None => {
                // Missing: only a change on the machine (pylsl installed,
                // NEUROEDGE_LSL_LIB set) helps, so `error`, not retried.
                let l = lsl_ffi::Lsl::load().map_err(SourceError::Fatal)?;
                self.lib = Some(l.clone());
                l
            }
        };
        let pred = predicate(
            self.cfg.name.as_deref(),
            self.cfg.stream_type.as_deref(),
            self.cfg.source_id.as_deref(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let thread = {
            let cfg = self.cfg.clone();
            let stop = stop.clone();
            let pred = pred.clone();
            std::thread::Builder::new()
                .name("lsl-connect".into())
                .spawn(move || {
                    let _ = tx.send(connect_stream(lib, cfg, pred, &stop));
                })
                .map_err(|e| SourceError::Unavailable(format!("cannot start LSL thread: {e}")))?
        };
        let c = Connector {
            stop,
            rx,
            thread: Some(thread),
        };
        // Wait for the connecting thread in short steps so that a stop
        // request (shutdown, reload) is seen at once.
        let wait = Duration::from_secs_f64(self.cfg.resolve_timeout_s + 4.0 * SETUP_TIMEOUT);
        let until = Instant::now() + wait;
        let connected = loop {
            if self.stop.load(Ordering::Relaxed) {
                break Err(SourceError::Unavailable("stopping".into()));
            }
            match c.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => break r,
                Err(RecvTimeoutError::Timeout) if Instant::now() < until => {}
                Err(_) => {
                    break Err(SourceError::Unavailable(format!(
                        "no LSL stream matching {pred} (no answer)"
                    )))
                }
            }
        };
        c.finish();
        let (o, puller) = connected?;
        tracing::info!(stream = %o.describe, rate = o.rate, channels = o.channels, "LSL inlet open");
        self.describe = o.describe;
        self.channels = o.channels;
        self.period = 1.0 / o.rate;
        self.pending.clear();
        self.last_stamp = None;
        self.puller = Some(puller);
        Ok(StreamInfo {
            sample_rate: o.rate,
            channels: o.channels,
            channel_names: o.names,
            chunk_s: PULL_UNWATCHED.as_secs_f64() + MARKER_HOLD.as_secs_f64(),
        })
    }

    fn read(&mut self, sink: &mut Sink<'_>) -> Result<(), SourceError> {
        let Some(mut p) = self.puller.take() else {
            return Err(SourceError::Unavailable("read before open".into()));
        };
        let r = self.read_from(&mut p, sink);
        self.puller = Some(p);
        r
    }

    fn drain(&mut self, sink: &mut Sink<'_>) {
        // What the outlet sent since the last pull waits in liblsl's
        // buffer (a read returns between pulls when a chunk held for
        // markers falls due): take it, and the markers, one last time.
        if let Some(mut p) = self.puller.take() {
            match p.pull(0.0, PULL_EVERY) {
                Ok(n) if n > 0 => {
                    let (values, stamps) = p.pulled(n);
                    self.hold(values, stamps);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "LSL: no last pull at stop"),
            }
            p.push_markers(sink);
            self.puller = Some(p);
        }
        // Data held back for markers: deliver it rather than lose it.
        self.push_due(sink, true);
    }

    fn close(&mut self) {
        self.puller = None;
        self.pending.clear();
    }
}

impl Drop for Lsl {
    fn drop(&mut self) {
        self.close();
    }
}

fn lsl_err(what: &str, e: LslError) -> String {
    format!("LSL {what}: {e}")
}

/// The marker inlet: resolved in the background, never blocking the data.
struct MarkerInlet {
    lib: Arc<lsl_ffi::Lsl>,
    pred: String,
    /// The data stream's host: a marker stream on the same host shares its
    /// clock, so the data inlet's offset serves until this one has its own.
    data_host: String,
    /// Markers pulled before this inlet's clock offset is known (another
    /// host's clock may be hours away): (remote time, text).
    held: Vec<(f64, String)>,
    same_host: bool,
    resolver: Option<lsl_ffi::ContinuousResolver>,
    inlet: Option<Inlet>,
    /// Whether the inlet has been pulled from (which opens its stream).
    pulled: bool,
    correction: Option<f64>,
    next_try: Instant,
}

impl MarkerInlet {
    fn new(lib: Arc<lsl_ffi::Lsl>, name: &str, data_host: String) -> Self {
        MarkerInlet {
            lib,
            pred: format!("name={} and channel_format='string'", xpath_literal(name)),
            data_host,
            held: Vec::new(),
            same_host: false,
            resolver: None,
            inlet: None,
            pulled: false,
            correction: None,
            next_try: Instant::now(),
        }
    }

    /// Markers available now, stamped on the local LSL clock (`fallback`
    /// is the data inlet's clock offset, used until this inlet has its own).
    fn poll(&mut self, fallback: f64) -> Vec<(f64, String)> {
        let mut out = Vec::new();
        if self.inlet.is_none() {
            if Instant::now() < self.next_try {
                return out;
            }
            if self.resolver.is_none() {
                match self.lib.continuous_resolver(&self.pred, 5.0) {
                    Ok(r) => self.resolver = Some(r),
                    Err(e) => {
                        tracing::warn!("LSL marker resolver for {}: {e}", self.pred);
                        self.next_try = Instant::now() + Duration::from_secs(5);
                        return out;
                    }
                }
            }
            let found = self
                .resolver
                .as_ref()
                .and_then(|r| r.results().into_iter().next());
            let Some(info) = found else {
                self.next_try = Instant::now() + Duration::from_millis(500);
                return out;
            };
            match Inlet::new(&info, INLET_BUFFER_S, 0, true) {
                Ok(inlet) => {
                    self.same_host = info.hostname() == self.data_host;
                    // Starts the clock-offset measurement in the background.
                    self.correction = inlet.time_correction(0.0).ok();
                    tracing::info!(stream = %self.pred, "LSL marker inlet open");
                    self.inlet = Some(inlet);
                    self.pulled = false;
                    self.resolver = None;
                }
                Err(e) => {
                    tracing::warn!("LSL marker inlet for {}: {e}", self.pred);
                    self.next_try = Instant::now() + Duration::from_secs(2);
                    return out;
                }
            }
        }
        let Some(inlet) = self.inlet.as_mut() else {
            return out;
        };
        // An empty pull of strings still allocates in liblsl: once a pull
        // has opened the stream (the first one does), ask first.
        let mut failed = None;
        while !self.pulled || inlet.samples_available() > 0 {
            self.pulled = true;
            match inlet.pull_chunk_str(MARKER_CHUNK, 0.0) {
                Ok(samples) if !samples.is_empty() => {
                    if let Ok(c) = inlet.time_correction(0.0) {
                        self.correction = Some(c);
                    }
                    let full = samples.len() == MARKER_CHUNK;
                    self.held
                        .extend(samples.into_iter().map(|(ts, v)| (ts, v.join(","))));
                    if !full {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            tracing::warn!("LSL marker stream {}: {e}; resolving it again", self.pred);
            self.inlet = None;
            self.correction = None;
            self.next_try = Instant::now() + Duration::from_secs(1);
        }
        let correction = match self.correction {
            Some(c) => Some(c),
            None if self.same_host => Some(fallback),
            None => None,
        };
        if let Some(c) = correction {
            out.extend(self.held.drain(..).map(|(t, v)| (t + c, v)));
        } else if self.held.len() > 1024 {
            tracing::warn!(
                "LSL marker stream {}: no clock offset yet; oldest markers dropped",
                self.pred
            );
            self.held.drain(..self.held.len() - 1024);
        }
        out
    }
}

/// The first stream matching `pred`, resolved in short steps so that a stop
/// request is seen (`Ok(None)`: stopped).
fn resolve_first(
    lib: &Arc<lsl_ffi::Lsl>,
    pred: &str,
    timeout_s: f64,
    stop: &AtomicBool,
) -> Result<Option<lsl_ffi::StreamInfo>, SourceError> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout_s);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        match lib.resolve(pred, 1, left.clamp(0.05, RESOLVE_STEP)) {
            Ok(found) => {
                let n = found.len();
                if let Some(first) = found.into_iter().next() {
                    if n > 1 {
                        tracing::warn!(
                            "{n} LSL streams match {pred}; using the first (set source_id to choose)"
                        );
                    }
                    return Ok(Some(first));
                }
            }
            Err(LslError::Argument(_)) => {
                return Err(SourceError::Fatal(format!(
                    "LSL rejects the stream query {pred}: check name / type / source_id"
                )))
            }
            Err(e) => return Err(SourceError::Unavailable(lsl_err("resolve", e))),
        }
        if Instant::now() >= deadline {
            return Err(SourceError::Unavailable(format!(
                "no LSL stream matching {pred} found within {timeout_s} s"
            )));
        }
    }
}

/// A stream checked against what neuroedge takes, subscribed to, with its
/// clock offset measured.
struct Connected {
    inlet: Inlet,
    opened: Opened,
    /// The sender's clock offset (`time_correction`).
    correction: f64,
}

/// Check the stream's layout, open an inlet on it and measure its clock.
fn connect(info: &mut lsl_ffi::StreamInfo) -> Result<Connected, SourceError> {
    let describe = format!(
        "{:?} (type {:?}, source_id {:?}, host {})",
        info.name(),
        info.stream_type(),
        info.source_id(),
        info.hostname()
    );
    let rate = info.nominal_srate();
    if !(rate.is_finite() && rate > 0.0) {
        return Err(SourceError::Fatal(format!(
            "LSL stream {describe} has an irregular sampling rate; neuroedge needs a \
             regularly sampled (EEG) stream with a nominal rate"
        )));
    }
    if rate > validate::MAX_SAMPLE_RATE {
        return Err(SourceError::Fatal(format!(
            "LSL stream {describe} states {rate} Hz; neuroedge takes at most {} Hz",
            validate::MAX_SAMPLE_RATE
        )));
    }
    let format = info.channel_format();
    if !format.is_numeric() {
        return Err(SourceError::Fatal(format!(
            "LSL stream {describe} carries {format} samples, not numbers"
        )));
    }
    let channels = match usize::try_from(info.channel_count()) {
        Ok(n) if (1..=validate::MAX_CHANNELS).contains(&n) => n,
        _ => {
            return Err(SourceError::Fatal(format!(
                "LSL stream {describe} has {} channels (1 to {} supported)",
                info.channel_count(),
                validate::MAX_CHANNELS
            )))
        }
    };
    if rate * channels as f64 > MAX_CH_SAMPLES_PER_S {
        return Err(SourceError::Fatal(format!(
            "LSL stream {describe}: {channels} channels at {rate} Hz is more than the \
             {MAX_CH_SAMPLES_PER_S} channel-samples per second neuroedge takes"
        )));
    }
    let inlet = Inlet::new(info, INLET_BUFFER_S, 0, true)
        .map_err(|e| SourceError::Unavailable(lsl_err("inlet", e)))?;
    let names = match inlet.info(SETUP_TIMEOUT) {
        Ok(mut full) => full.channel_labels(channels),
        Err(_) => info.channel_labels(channels),
    }
    .unwrap_or_else(|| default_names(channels));
    inlet
        .open_stream(SETUP_TIMEOUT)
        .map_err(|e| SourceError::Unavailable(lsl_err(&format!("subscribing to {describe}"), e)))?;
    let correction = inlet.time_correction(SETUP_TIMEOUT).map_err(|e| {
        SourceError::Unavailable(lsl_err(&format!("clock offset of {describe}"), e))
    })?;
    Ok(Connected {
        inlet,
        opened: Opened {
            rate,
            channels,
            names,
            describe,
        },
        correction,
    })
}

/// Puts a chunk's stamps on this host's LSL clock.
struct Stamps {
    /// Our LSL clock minus a foreign clock's stamps, the least seen (see
    /// [`Stamps::place`]).
    foreign_offset: f64,
    /// The offset placing chunks now: moves toward `foreign_offset`
    /// without putting a chunk's first sample at or before the previous
    /// chunk's last.
    applied: f64,
    /// The previous chunk's last foreign stamp.
    last_foreign: Option<f64>,
    bad: u64,
    reported_bad: u64,
    last_report: Instant,
}

impl Stamps {
    fn new() -> Self {
        Stamps {
            foreign_offset: f64::INFINITY,
            applied: f64::INFINITY,
            last_foreign: None,
            bad: 0,
            reported_bad: 0,
            last_report: Instant::now() - REPORT_EVERY,
        }
    }

    /// Stamps on the sender's LSL clock get its offset (`correction`);
    /// whether all of them were (else the chunk was placed by arrival).
    fn place(&mut self, stamps: &mut [f64], correction: f64, now: f64, describe: &str) -> bool {
        let on_lsl_clock = |t: f64| (t + correction - now).abs() <= MAX_STAMP_OFFSET_S;
        let own_clock = stamps.iter().all(|&t| on_lsl_clock(t));
        if own_clock {
            for t in stamps.iter_mut() {
                *t += correction;
            }
        } else {
            // An outlet stamping on another clock (unix time, its own
            // counter): keep the spacing of its stamps, placed on ours
            // by the earliest arrival seen (offset + least latency).
            let mut chunk_offset = f64::INFINITY;
            for &t in stamps.iter().filter(|t| t.is_finite()) {
                chunk_offset = chunk_offset.min(now - t);
            }
            let off = self.foreign_offset.min(chunk_offset);
            if off.is_finite() {
                self.foreign_offset = off;
            }
            // A lower latency found moves the placement earlier: by at
            // most half the gap the sender put between the previous chunk
            // and this one per chunk, so that no sample lands at or before
            // one already placed (the rest follows with the next chunks).
            let foreign = |t: &f64| t.is_finite() && !on_lsl_clock(*t);
            let first = stamps.iter().copied().find(foreign);
            self.applied = match (first, self.last_foreign) {
                _ if !self.applied.is_finite() => self.foreign_offset,
                (Some(f), Some(prev)) if f > prev => {
                    self.foreign_offset.max(self.applied - (f - prev) / 2.0)
                }
                _ => self.applied,
            };
            if let Some(last) = stamps.iter().copied().rev().find(foreign) {
                self.last_foreign = Some(last);
            }
            for t in stamps.iter_mut() {
                *t = if on_lsl_clock(*t) {
                    *t + correction
                } else if t.is_finite() && self.applied.is_finite() {
                    self.bad += 1;
                    *t + self.applied
                } else {
                    self.bad += 1;
                    now
                };
            }
        }
        if self.bad > self.reported_bad && self.last_report.elapsed() >= REPORT_EVERY {
            tracing::warn!(
                "LSL stream {describe}: {} samples stamped on another clock than LSL's \
                 (not within {MAX_STAMP_OFFSET_S} s of this host's); their spacing is kept, \
                 placed by arrival",
                self.bad - self.reported_bad
            );
            self.reported_bad = self.bad;
            self.last_report = Instant::now();
        }
        own_clock
    }
}

/// Resolve the stream, open an inlet on it and measure its clock (on the
/// connecting thread): what the driver pulls from afterwards.
fn connect_stream(
    lib: Arc<lsl_ffi::Lsl>,
    cfg: LslConnection,
    pred: String,
    stop: &AtomicBool,
) -> Connecting {
    let mut info = match resolve_first(&lib, &pred, cfg.resolve_timeout_s, stop)? {
        Some(info) => info,
        None => return Err(SourceError::Unavailable("stopping".into())),
    };
    let Connected {
        inlet,
        opened,
        correction,
    } = connect(&mut info)?;
    let (rate, channels) = (opened.rate, opened.channels);
    let uid = info.uid();
    let host = info.hostname();
    let markers = cfg
        .markers
        .as_deref()
        .map(|name| MarkerInlet::new(lib.clone(), name, host.clone()));
    let chunk = (rate.ceil() as usize).clamp(32, (MAX_PULL_VALUES / channels).max(1));
    let now = Instant::now();
    let puller = Puller {
        lib,
        inlet,
        correction,
        uid,
        describe: opened.describe.clone(),
        channels,
        markers,
        values: vec![0.0f32; chunk * channels],
        stamps: vec![0.0f64; chunk],
        placer: Stamps::new(),
        last_data: now,
        last_check: now,
        next_pull: now,
    };
    Ok((opened, Box::new(puller)))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_on_the_lsl_clock_get_the_senders_offset() {
        let mut placer = Stamps::new();
        let mut stamps = vec![100.0, 100.004, 100.008];
        assert!(placer.place(&mut stamps, 0.5, 100.6, "s"));
        for (t, want) in stamps.iter().zip([100.5, 100.504, 100.508]) {
            assert!((t - want).abs() < 1e-9, "{stamps:?}");
        }
        assert_eq!(placer.bad, 0);
    }

    #[test]
    fn stamps_on_another_clock_keep_their_spacing_placed_by_earliest_arrival() {
        let mut placer = Stamps::new();
        let unix = 1.7e9;
        // The first chunk's newest sample arrives at 500.034 s (its
        // latency unknown: placed as if it had none); the next one comes
        // 2 ms faster, which moves the placement; a slower one does not.
        let mut a = vec![unix, unix + 0.004];
        assert!(!placer.place(&mut a, 0.0, 500.034, "s"));
        assert!((a[0] - 500.030).abs() < 1e-6 && (a[1] - 500.034).abs() < 1e-6);
        let mut b = vec![unix + 0.008, unix + 0.012];
        assert!(!placer.place(&mut b, 0.0, 500.040, "s"));
        assert!((b[1] - 500.040).abs() < 1e-6, "{b:?}");
        assert!((b[1] - b[0] - 0.004).abs() < 1e-6);
        let mut c = vec![unix + 0.016];
        placer.place(&mut c, 0.0, 500.060, "s");
        assert!((c[0] - 500.044).abs() < 1e-6, "{c:?}");
        // A stamp that is not a number gets its arrival time.
        let mut d = vec![f64::NAN];
        placer.place(&mut d, 0.0, 501.0, "s");
        assert_eq!(d, vec![501.0]);
        assert_eq!(placer.bad, 6);
    }

    #[test]
    fn a_faster_arrival_never_places_a_sample_before_one_already_placed() {
        // 250 Hz stamped on unix time; the first chunk arrives 30 ms late,
        // the following ones with next to no latency: the placement moves
        // 30 ms earlier, but over several chunks, each placed after the
        // last (a sudden move put a chunk's first samples before the
        // previous chunk's last).
        let mut placer = Stamps::new();
        let unix = 1.7e9;
        let dt = 0.004;
        let mut placed = Vec::new();
        for k in 0..40u32 {
            let first = unix + f64::from(k) * 3.0 * dt;
            let mut chunk: Vec<f64> = (0..3).map(|i| first + f64::from(i) * dt).collect();
            let sent = first + 2.0 * dt;
            let latency = if k == 0 { 0.030 } else { 0.0001 };
            placer.place(&mut chunk, 0.0, 100.0 + (sent - unix) + latency, "s");
            placed.extend(chunk);
        }
        for (i, w) in placed.windows(2).enumerate() {
            // (Stamps near 1.7e9 s carry ~0.2 µs of rounding.)
            assert!(w[1] - w[0] >= dt / 2.0 - 1e-6, "sample {i}: {w:?}");
        }
        // Settled on the least latency (0.1 ms), the spacing kept exactly.
        let last = placed[placed.len() - 1];
        assert!(
            (last - (100.0 + 39.0 * 3.0 * dt + 2.0 * dt + 0.0001)).abs() < 1e-6,
            "{last}"
        );
        let tail = &placed[placed.len() - 30..];
        for w in tail.windows(2) {
            assert!((w[1] - w[0] - dt).abs() < 1e-6, "{tail:?}");
        }
    }

    #[test]
    fn predicate_joins_the_given_keys() {
        assert_eq!(predicate(Some("EEG-1"), None, None), "name='EEG-1'");
        assert_eq!(
            predicate(Some("Cap"), Some("EEG"), Some("amp-42")),
            "name='Cap' and type='EEG' and source_id='amp-42'"
        );
        assert_eq!(predicate(None, Some("EEG"), None), "type='EEG'");
        assert_eq!(predicate(None, None, None), "");
    }

    #[test]
    fn literals_are_quoted_for_xpath() {
        assert_eq!(xpath_literal("plain"), "'plain'");
        assert_eq!(xpath_literal("O'Brien"), "\"O'Brien\"");
        assert_eq!(xpath_literal("say \"hi\""), "'say \"hi\"'");
        assert_eq!(xpath_literal("a'b\"c"), "concat('a',\"'\",'b\"c')");
        assert_eq!(xpath_literal("'x\""), "concat(\"'\",'x\"')");
        assert_eq!(
            predicate(Some("it's"), Some("\"EEG\""), None),
            "name=\"it's\" and type='\"EEG\"'"
        );
    }
}
