//! Runs one device: the acquisition thread (driver -> ring) with reconnect
//! and backoff, and the processing thread it feeds. This is the one place
//! where connection failures are retried; drivers just report them.

use super::{Sink, Source, SourceError, StreamInfo};
use crate::batch::Marker;
use crate::config::DeviceConfig;
use crate::journal::{AuditEvent, JournalTx};
use crate::pipeline::{FeatureStage, FilterStage, Processing};
use crate::ring;
use crate::state::{DeviceState, DeviceStats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A running device.
pub struct DeviceHandle {
    pub stats: Arc<DeviceStats>,
    pub markers: crossbeam_channel::Sender<Marker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceHandle {
    /// Ask the device to stop (returns at once).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Wait until the driver is closed and the processing thread has sent
    /// its last batch.
    pub fn join(mut self) {
        self.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a device needs from the daemon.
#[derive(Clone)]
pub struct DeviceContext {
    pub journal: JournalTx,
    pub batch_seconds: f64,
    /// Journal-wide index of this run's first sample.
    pub first_sample: u64,
    pub epoch: Instant,
}

pub fn spawn(cfg: DeviceConfig, ctx: DeviceContext) -> std::io::Result<DeviceHandle> {
    let stats = Arc::new(DeviceStats::new(&cfg.id, cfg.driver.name(), true));
    let (marker_tx, marker_rx) = crossbeam_channel::bounded(1024);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stats = stats.clone();
        let stop = stop.clone();
        let driver_markers = marker_tx.clone();
        std::thread::Builder::new()
            .name(format!("acq-{}", cfg.id))
            .spawn(move || acquisition(cfg, ctx, stats, stop, driver_markers, marker_rx))?
    };
    Ok(DeviceHandle {
        stats,
        markers: marker_tx,
        stop,
        thread: Some(thread),
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
}

fn start_pipe(
    cfg: &DeviceConfig,
    ctx: &DeviceContext,
    stats: &Arc<DeviceStats>,
    info: StreamInfo,
    markers: crossbeam_channel::Receiver<Marker>,
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
    if let Ok(mut n) = stats.channel_names.lock() {
        n.clone_from(&info.channel_names);
    }
    let processing = Processing {
        device_id: cfg.id.clone(),
        info: info.clone(),
        units: cfg.channels.units.clone(),
        batch_frames: ((ctx.batch_seconds * rate).round() as usize).max(1),
        index_offset: ctx.first_sample,
        filters: FilterStage::new(&cfg.filters, &info)
            .map_err(|e| format!("filter settings in {}: {e}", cfg.file.display()))?,
        features: FeatureStage::new(&cfg.features, &cfg.quality, &cfg.filters, &info)
            .map_err(|e| format!("feature settings in {}: {e}", cfg.file.display()))?,
        journal: ctx.journal.clone(),
        backpressure: matches!(&cfg.connection, crate::config::Connection::Synthetic(s) if !s.pace),
        markers,
        stats: stats.clone(),
        epoch: ctx.epoch,
    };
    let processing = std::thread::Builder::new()
        .name(format!("dsp-{}", cfg.id))
        .spawn(move || processing.run(consumer))
        .map_err(|e| format!("cannot start processing thread: {e}"))?;
    Ok(Pipe {
        producer,
        info,
        processing,
    })
}

fn acquisition(
    cfg: DeviceConfig,
    ctx: DeviceContext,
    stats: Arc<DeviceStats>,
    stop: Arc<AtomicBool>,
    marker_tx: crossbeam_channel::Sender<Marker>,
    markers_rx: crossbeam_channel::Receiver<Marker>,
) {
    let journal = ctx.journal.clone();
    let mut source: Box<dyn Source> = match super::build(&cfg) {
        Ok(s) => s,
        Err(e) => {
            stats.set_error(Some(e.to_string()));
            set_state(&stats, &journal, DeviceState::Error, Some(&e.to_string()));
            return;
        }
    };
    let mut markers_rx = Some(markers_rx);
    let mut pipe: Option<Pipe> = None;
    let mut backoff = BACKOFF_INITIAL;
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
                set_state(&stats, &journal, DeviceState::Disconnected, Some(&m));
                sleep_unless_stopped(&stop, backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
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
            match start_pipe(&cfg, &ctx, &stats, info, rx) {
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
        set_state(&stats, &journal, DeviceState::Streaming, None);
        stats.set_error(None);
        backoff = BACKOFF_INITIAL;
        let mut sink = Sink {
            frames: &mut p.producer,
            markers: &marker_tx,
        };
        while !stop.load(Ordering::Relaxed) {
            let r = source.read(&mut sink);
            sink.frames.flush();
            if let Err(e) = r {
                let m = e.to_string();
                stats.set_error(Some(m.clone()));
                let fatal = matches!(e, SourceError::Fatal(_));
                set_state(
                    &stats,
                    &journal,
                    if fatal {
                        DeviceState::Error
                    } else {
                        DeviceState::Disconnected
                    },
                    Some(&m),
                );
                break;
            }
        }
        source.close();
        if stats.state() == DeviceState::Error {
            break;
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
