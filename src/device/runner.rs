//! Runs one device: the acquisition thread (driver -> ring) with reconnect
//! and backoff, and the processing thread it feeds. This is the one place
//! where connection failures are retried; drivers just report them.

use crate::backoff::Backoff;
use crate::batch::Marker;
use crate::config::DeviceConfig;
use crate::journal::{AuditEvent, JournalTx};
use crate::outlet::{Layout, OutletLink, OutletSection, Outlets};
use crate::pipeline::{FeatureStage, FilterStage, Processing};
use crate::ring;
use crate::source::{BuildContext, Sink, Source, SourceError, StreamInfo, Timing};
use crate::telemetry::{DeviceState, DeviceStats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The runner's rules in time: reconnecting and the one stall rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunnerTiming {
    /// Reopening a device that failed to open or went away.
    pub reopen: Backoff,
    /// A connected device silent this long (plus one of its chunks) is
    /// `stalled` (the only place a device is called stalled).
    pub stall_after: Duration,
    /// A stalled device is closed and reopened after this long more (a
    /// wedged dongle or a silently dead inlet often comes back that way).
    pub reopen_stalled_after: Duration,
}

impl Default for RunnerTiming {
    fn default() -> Self {
        RunnerTiming {
            reopen: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            stall_after: Duration::from_secs(2),
            reopen_stalled_after: Duration::from_secs(10),
        }
    }
}

/// A running device.
pub struct DeviceHandle {
    pub stats: Arc<DeviceStats>,
    pub markers: crossbeam_channel::Sender<Marker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The device's LSL outlets (their own thread; re-created on a reload
    /// that changes `[lsl_outlet]` only).
    outlets: Outlets,
}

impl DeviceHandle {
    /// Ask the device to stop (returns at once).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Wait until the driver is closed and the processing thread has sent
    /// its last batch; then the outlets leave the network.
    pub fn join(mut self) {
        self.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.outlets.stop();
    }

    /// Publish `section`'s streams instead of the current ones: the outlet
    /// thread is re-created; acquisition, processing and the journal go on.
    pub fn set_outlets(&mut self, section: &OutletSection) {
        self.outlets.configure(section);
    }
}

/// What a device needs from the daemon.
#[derive(Clone)]
pub struct DeviceContext {
    pub journal: JournalTx,
    pub batch_seconds: f64,
    /// Whether batches carry the filtered signal (`[journal] store`).
    pub store_filtered: bool,
    /// Journal-wide index of this run's first sample.
    pub first_sample: u64,
    pub timing: RunnerTiming,
    /// The node's id (in the LSL outlets' source ids).
    pub node_id: String,
}

/// Start a device: its driver is built from its `[connection]`.
pub fn spawn(cfg: DeviceConfig, ctx: DeviceContext) -> std::io::Result<DeviceHandle> {
    spawn_with(cfg, ctx, None)
}

/// Start a device with a given driver instead of the one its config names
/// (tests drive the runner's rules with a scripted source).
pub fn spawn_with(
    cfg: DeviceConfig,
    ctx: DeviceContext,
    source: Option<Box<dyn Source>>,
) -> std::io::Result<DeviceHandle> {
    let stats = Arc::new(DeviceStats::new(&cfg.id, cfg.driver.name(), true));
    let (marker_tx, marker_rx) = crossbeam_channel::bounded(1024);
    let stop = Arc::new(AtomicBool::new(false));
    let (mut outlets, link) = Outlets::new(&cfg.id, stats.outlets.clone());
    outlets.configure(&cfg.lsl_outlet);
    let thread = {
        let stats = stats.clone();
        let stop = stop.clone();
        let ends = Ends {
            markers_tx: marker_tx.clone(),
            markers_rx: marker_rx,
            outlets: link,
        };
        std::thread::Builder::new()
            .name(format!("acq-{}", cfg.id))
            .spawn(move || acquisition(cfg, ctx, source, stats, stop, ends))?
    };
    Ok(DeviceHandle {
        stats,
        markers: marker_tx,
        stop,
        thread: Some(thread),
        outlets,
    })
}

/// Sleep up to `d`, waking early when asked to stop.
fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

fn set_state(stats: &DeviceStats, journal: &JournalTx, s: DeviceState, why: Option<&str>) {
    let prev = stats.set_state(s);
    if prev != s {
        match s {
            DeviceState::Error | DeviceState::Disconnected => {
                tracing::warn!(device = %stats.id, from = prev.as_str(), to = s.as_str(), reason = why.unwrap_or(""), "device state changed")
            }
            _ => {
                tracing::info!(device = %stats.id, from = prev.as_str(), to = s.as_str(), "device state changed")
            }
        }
        journal.audit(AuditEvent::new(
            "device_state",
            Some(&stats.id),
            serde_json::json!({"from": prev.as_str(), "to": s.as_str(), "reason": why}),
        ));
    }
}

/// Frames per ring block: ~100 ms. Batches are a second long, so latency
/// does not suffer, and the filter runs on runs of frames long enough to
/// amortise its per-call work.
pub fn block_frames(rate: f64) -> usize {
    ((rate / 10.0).round() as usize).clamp(1, 8192)
}

struct Pipe {
    producer: ring::Producer,
    info: StreamInfo,
    processing: JoinHandle<()>,
    /// The run's live view (the acquisition thread reads its subscriber
    /// counts without the lock the status report takes).
    view: Arc<crate::view::View>,
}

/// The acquisition thread's ends of the device's queues.
struct Ends {
    markers_tx: crossbeam_channel::Sender<Marker>,
    markers_rx: crossbeam_channel::Receiver<Marker>,
    outlets: OutletLink,
}

/// What the outlets need to describe the device's streams.
fn outlet_layout(cfg: &DeviceConfig, ctx: &DeviceContext, info: &StreamInfo) -> Layout {
    Layout {
        node_id: ctx.node_id.clone(),
        device_id: cfg.id.clone(),
        sample_rate: info.sample_rate,
        channel_names: info.channel_names.clone(),
        units: cfg.channels.units.clone(),
        bands: cfg.features.bands.keys().cloned().collect(),
        step_s: cfg.features.step_s,
    }
}

fn start_pipe(
    cfg: &DeviceConfig,
    ctx: &DeviceContext,
    stats: &Arc<DeviceStats>,
    info: StreamInfo,
    markers: crossbeam_channel::Receiver<Marker>,
    outlets: &OutletLink,
) -> Result<Pipe, String> {
    let mut info = info;
    if let Some(names) = &cfg.channels.names {
        if names.len() == info.channels {
            info.channel_names = names.clone();
        }
    }
    let rate = info.sample_rate;
    let capacity = (cfg.buffer.ring_seconds * rate).ceil() as usize;
    let block_frames = block_frames(rate);
    let (producer, consumer, ring_stats) = ring::ring(info.channels, capacity, block_frames);
    let _ = ring_stats;
    stats.sample_rate.store(rate);
    stats.channels.store(info.channels, Ordering::Relaxed);
    crate::sync::lock(&stats.channel_names).clone_from(&info.channel_names);
    let view = crate::view::View::new(&cfg.id, rate, &info.channel_names, &cfg.channels.units);
    stats.set_view(Some(view.clone()));
    let filters = FilterStage::new(&cfg.filters, &info)
        .map_err(|e| format!("filter settings in {}: {e}", cfg.file.display()))?;
    let processing = Processing {
        device_id: cfg.id.clone(),
        info: info.clone(),
        units: cfg.channels.units.clone(),
        batch_frames: crate::pipeline::batch_frames(
            ctx.batch_seconds,
            rate,
            info.channels,
            ctx.store_filtered,
        ),
        store_filtered: ctx.store_filtered,
        index_offset: ctx.first_sample,
        features: FeatureStage::new(&cfg.features, &cfg.quality, &filters, &info)
            .map_err(|e| format!("feature settings in {}: {e}", cfg.file.display()))?,
        filters,
        journal: ctx.journal.clone(),
        backpressure: cfg.connection.can_wait(),
        markers,
        stats: stats.clone(),
        view: crate::view::ViewWriter::new(view.clone()),
        outlets: outlets.feed(outlet_layout(cfg, ctx, &info)),
    };
    let processing = std::thread::Builder::new()
        .name(format!("dsp-{}", cfg.id))
        .spawn(move || processing.run(consumer))
        .map_err(|e| format!("cannot start processing thread: {e}"))?;
    Ok(Pipe {
        producer,
        info,
        processing,
        view,
    })
}

fn acquisition(
    cfg: DeviceConfig,
    ctx: DeviceContext,
    given: Option<Box<dyn Source>>,
    stats: Arc<DeviceStats>,
    stop: Arc<AtomicBool>,
    ends: Ends,
) {
    let Ends {
        markers_tx: marker_tx,
        markers_rx,
        outlets,
    } = ends;
    let journal = ctx.journal.clone();
    let built = match given {
        Some(s) => Ok(s),
        None => cfg.connection.build(&BuildContext {
            device_id: &cfg.id,
            stop: &stop,
        }),
    };
    let t = ctx.timing;
    let mut source: Box<dyn Source> = match built {
        Ok(s) => s,
        Err(e) => {
            stats.set_error(Some(e.to_string()));
            set_state(&stats, &journal, DeviceState::Error, Some(&e.to_string()));
            return;
        }
    };
    let mut markers_rx = Some(markers_rx);
    let mut pipe: Option<Pipe> = None;
    let clock = crate::clock::global();
    let mut timing: Option<Timing> = None;
    let mut opened_before = false;
    let mut failed_opens = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let info = match source.open() {
            Ok(info) => info,
            Err(SourceError::Fatal(m)) => {
                stats.set_error(Some(m.clone()));
                set_state(&stats, &journal, DeviceState::Error, Some(&m));
                break;
            }
            Err(e) => {
                let m = e.to_string();
                stats.set_error(Some(m.clone()));
                // Never connected yet: still `connecting` (e.g. an LSL
                // stream not yet on the network); lost later: `disconnected`.
                let s = if opened_before {
                    DeviceState::Disconnected
                } else {
                    DeviceState::Connecting
                };
                set_state(&stats, &journal, s, Some(&m));
                failed_opens += 1;
                sleep_unless_stopped(&stop, t.reopen.delay(failed_opens, 1.0));
                continue;
            }
        };
        if let Some(p) = &pipe {
            if p.info.channels != info.channels || p.info.sample_rate != info.sample_rate {
                let m = format!(
                    "device now reports {} channels at {} Hz (was {} at {} Hz); restart neuroedge to accept the new layout",
                    info.channels, info.sample_rate, p.info.channels, p.info.sample_rate
                );
                source.close();
                stats.set_error(Some(m.clone()));
                set_state(&stats, &journal, DeviceState::Error, Some(&m));
                break;
            }
        } else {
            let Some(rx) = markers_rx.take() else { break };
            match start_pipe(&cfg, &ctx, &stats, info, rx, &outlets) {
                Ok(p) => pipe = Some(p),
                Err(m) => {
                    source.close();
                    stats.set_error(Some(m.clone()));
                    set_state(&stats, &journal, DeviceState::Error, Some(&m));
                    break;
                }
            }
        }
        let Some(p) = pipe.as_mut() else { break };
        let timing = timing.get_or_insert_with(|| Timing::new(p.info.sample_rate));
        if opened_before {
            // Samples the device took while we were not connected are
            // lost: estimate them from time.
            timing.restart();
            let down = clock.mono_now() - timing.last_mono();
            let missing = (down * p.info.sample_rate).round() - 1.0;
            if missing.is_finite() && missing >= 1.0 {
                p.producer.skip(missing as u64);
            }
        }
        opened_before = true;
        set_state(&stats, &journal, DeviceState::Streaming, None);
        stats.set_error(None);
        failed_opens = 0;
        let stall_after = t.stall_after + Duration::from_secs_f64(p.info.chunk_s.clamp(0.0, 10.0));
        let mut sink = Sink {
            frames: &mut p.producer,
            markers: &marker_tx,
            timing,
            clock,
            outlets: &stats.outlets,
            view: Some(&p.view),
        };
        let reopen = read_until_lost(
            source.as_mut(),
            &mut sink,
            &stats,
            &journal,
            &stop,
            stall_after,
            t.reopen_stalled_after,
        );
        source.drain(&mut sink);
        sink.frames.flush();
        source.close();
        if stats.state() == DeviceState::Error {
            break;
        }
        if !reopen {
            // A device that opens and fails at once must not spin.
            sleep_unless_stopped(&stop, t.reopen.initial);
        }
    }
    // Closing the producer lets the processing thread drain and send the
    // partial batch.
    if let Some(p) = pipe {
        drop(p.producer);
        let _ = p.processing.join();
    }
    if stop.load(Ordering::Relaxed) && stats.state() != DeviceState::Error {
        stats.set_state(DeviceState::Disconnected);
    }
}

/// Read from an open source until it fails, the daemon stops or it stays
/// silent too long: `Stalled` after `stall_after` without samples, and
/// true (close and reopen it) after `reopen_after` more.
fn read_until_lost(
    source: &mut dyn Source,
    sink: &mut Sink<'_>,
    stats: &DeviceStats,
    journal: &JournalTx,
    stop: &AtomicBool,
    stall_after: Duration,
    reopen_after: Duration,
) -> bool {
    let mut last_progress = Instant::now();
    let mut next_index = sink.frames.next_index();
    while !stop.load(Ordering::Relaxed) {
        let r = source.read(sink);
        sink.frames.flush();
        if let Err(e) = r {
            let m = e.to_string();
            stats.set_error(Some(m.clone()));
            let fatal = matches!(e, SourceError::Fatal(_));
            set_state(
                stats,
                journal,
                if fatal {
                    DeviceState::Error
                } else {
                    DeviceState::Disconnected
                },
                Some(&m),
            );
            return false;
        }
        let now = Instant::now();
        if sink.frames.next_index() != next_index {
            next_index = sink.frames.next_index();
            last_progress = now;
            stats.effective_rate.store(sink.timing.effective_rate());
            if stats.state() == DeviceState::Stalled {
                set_state(stats, journal, DeviceState::Streaming, None);
                stats.set_error(None);
            }
        } else {
            let silent = now.duration_since(last_progress);
            if silent >= stall_after && stats.state() == DeviceState::Streaming {
                let m = format!("connected but no samples for {:.1} s", silent.as_secs_f64());
                stats.set_error(Some(m.clone()));
                set_state(stats, journal, DeviceState::Stalled, Some(&m));
            }
            if silent >= stall_after + reopen_after {
                tracing::warn!(device = %stats.id, "stalled device: closing and reopening it");
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::writer::TestJournal;
    use std::sync::Mutex;

    const RATE: f64 = 200.0;

    /// What the scripted source does on each call.
    #[derive(Clone)]
    enum Step {
        /// `open` fails this way.
        OpenFails(fn(String) -> SourceError),
        /// `open` succeeds; then `read` delivers frames for this long, then
        /// is silent for `silent` (returning with nothing), then fails with
        /// `then` (or keeps delivering when `None`).
        Stream {
            for_ms: u64,
            silent_ms: u64,
            then: Option<fn(String) -> SourceError>,
        },
    }

    struct Scripted {
        steps: Vec<Step>,
        at: usize,
        opened: Option<Instant>,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Scripted {
        fn step(&self) -> Step {
            self.steps[self.at.min(self.steps.len() - 1)].clone()
        }
    }

    impl Source for Scripted {
        fn open(&mut self) -> Result<StreamInfo, SourceError> {
            self.log.lock().unwrap().push("open".into());
            let step = self.step();
            self.at += 1;
            match step {
                Step::OpenFails(e) => Err(e("no device".into())),
                Step::Stream { .. } => {
                    self.opened = Some(Instant::now());
                    Ok(StreamInfo {
                        sample_rate: RATE,
                        channels: 1,
                        channel_names: vec!["c".into()],
                        chunk_s: 0.0,
                    })
                }
            }
        }

        fn read(&mut self, sink: &mut Sink<'_>) -> Result<(), SourceError> {
            let Step::Stream {
                for_ms,
                silent_ms,
                then,
            } = self.steps[(self.at - 1).min(self.steps.len() - 1)].clone()
            else {
                return Ok(());
            };
            let since = self.opened.map_or(0, |t| t.elapsed().as_millis() as u64);
            std::thread::sleep(Duration::from_millis(10));
            if since < for_ms || then.is_none() && silent_ms == 0 {
                let now = sink.mono_now();
                for _ in 0..2 {
                    sink.push_received(now, &[1.0]);
                }
                Ok(())
            } else if since < for_ms + silent_ms {
                Ok(())
            } else {
                match then {
                    Some(e) => Err(e("gone".into())),
                    None => {
                        let now = sink.mono_now();
                        sink.push_received(now, &[1.0]);
                        Ok(())
                    }
                }
            }
        }

        fn close(&mut self) {
            self.log.lock().unwrap().push("close".into());
        }
    }

    fn run(steps: Vec<Step>) -> (DeviceHandle, TestJournal, Arc<Mutex<Vec<String>>>) {
        let cfg = crate::config::parse_device(
            std::path::Path::new("fake.toml"),
            "id = \"fake\"\ndriver = \"synthetic\"\nenabled = true\n".into(),
        )
        .unwrap();
        let (journal, rx) = JournalTx::for_tests(64);
        let log = Arc::new(Mutex::new(Vec::new()));
        let ctx = DeviceContext {
            journal,
            batch_seconds: 0.1,
            store_filtered: true,
            first_sample: 0,
            node_id: "test-node".into(),
            timing: RunnerTiming {
                reopen: Backoff::new(Duration::from_millis(20), Duration::from_millis(80)),
                stall_after: Duration::from_millis(300),
                reopen_stalled_after: Duration::from_millis(300),
            },
        };
        let source = Scripted {
            steps,
            at: 0,
            opened: None,
            log: log.clone(),
        };
        let h = spawn_with(cfg, ctx, Some(Box::new(source))).unwrap();
        (h, rx, log)
    }

    /// The device_state transitions audited so far, as "from>to".
    fn transitions(rx: &TestJournal) -> Vec<String> {
        rx.audits
            .try_iter()
            .filter(|a| a.event == "device_state")
            .map(|a| {
                format!(
                    "{}>{}",
                    a.detail["from"].as_str().unwrap(),
                    a.detail["to"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn wait(what: &str, within_ms: u64, mut cond: impl FnMut() -> bool) {
        let t = Instant::now();
        while !cond() {
            assert!(
                t.elapsed() < Duration::from_millis(within_ms),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn failed_opens_are_retried_with_backoff_then_streaming() {
        let unavailable: fn(String) -> SourceError = SourceError::Unavailable;
        let (h, rx, log) = run(vec![
            Step::OpenFails(unavailable),
            Step::OpenFails(unavailable),
            Step::Stream {
                for_ms: 10_000,
                silent_ms: 0,
                then: None,
            },
        ]);
        let t = Instant::now();
        wait("streaming", 3000, || {
            h.stats.state() == DeviceState::Streaming
        });
        // Backoff 20 ms then 40 ms before the third open.
        assert!(
            t.elapsed() >= Duration::from_millis(55),
            "{:?}",
            t.elapsed()
        );
        let stats = h.stats.clone();
        wait("samples", 3000, || {
            stats.samples_total.load(Ordering::Relaxed) > 0
        });
        h.join();
        assert_eq!(log.lock().unwrap()[..3], ["open", "open", "open"]);
        // Never connected yet: `connecting`, not `disconnected`.
        assert_eq!(transitions(&rx), ["connecting>streaming"]);
        assert!(stats.last_error().is_none());
    }

    #[test]
    fn a_silent_device_is_stalled_once_then_reopened_with_a_gap() {
        let (h, rx, log) = run(vec![
            Step::Stream {
                for_ms: 200,
                silent_ms: 10_000,
                then: None,
            },
            Step::Stream {
                for_ms: 10_000,
                silent_ms: 0,
                then: None,
            },
        ]);
        wait("streaming", 3000, || {
            h.stats.state() == DeviceState::Streaming
        });
        let t = Instant::now();
        wait("stalled", 3000, || h.stats.state() == DeviceState::Stalled);
        // Silent from ~200 ms; stalled after 300 ms of silence.
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        wait("reopened", 3000, || {
            log.lock().unwrap().iter().filter(|l| *l == "open").count() == 2
        });
        wait("streaming again", 3000, || {
            h.stats.state() == DeviceState::Streaming
        });
        let stats = h.stats.clone();
        let gaps_before = stats.gaps.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        h.join();
        assert_eq!(
            transitions(&rx),
            [
                "connecting>streaming",
                "streaming>stalled",
                "stalled>streaming"
            ],
            "stalled exactly once"
        );
        // The time away became a device gap (estimated from time).
        let batches: Vec<_> = rx.batches.try_iter().collect();
        let device_gaps: u64 = batches
            .iter()
            .flat_map(|b| &b.gaps)
            .filter(|g| g.cause == crate::batch::GapCause::Device)
            .map(|g| g.missing)
            .sum();
        assert!(
            device_gaps as f64 >= 0.5 * RATE,
            "at least ~0.6 s of samples missing, got {device_gaps} (gaps counted {gaps_before})"
        );
        let l = log.lock().unwrap();
        assert_eq!(l.iter().filter(|x| *x == "close").count(), 2, "{l:?}");
    }

    #[test]
    fn a_lost_device_is_disconnected_and_a_fatal_error_stops_retrying() {
        let (h, rx, log) = run(vec![
            Step::Stream {
                for_ms: 100,
                silent_ms: 0,
                then: Some(SourceError::Disconnected),
            },
            Step::OpenFails(SourceError::Fatal),
        ]);
        wait("error", 3000, || h.stats.state() == DeviceState::Error);
        std::thread::sleep(Duration::from_millis(200));
        let stats = h.stats.clone();
        h.join();
        assert_eq!(
            transitions(&rx),
            [
                "connecting>streaming",
                "streaming>disconnected",
                "disconnected>error"
            ]
        );
        assert_eq!(stats.last_error().as_deref(), Some("no device"));
        let opens = log.lock().unwrap().iter().filter(|l| *l == "open").count();
        assert_eq!(opens, 2, "no retry after a fatal error");
    }
}
