//! The outlet thread of a device: owns its liblsl stream infos and outlets
//! (made and destroyed on this thread only), takes chunks and markers off
//! the bounded queue, restamps them on LSL's clock and pushes them.
//!
//! [`Outlets`] (held by the device's handle) starts it for the streams of
//! `[lsl_outlet]`, and on a reload that changes only that section stops it
//! and starts a new one for the new streams: the device, its ring and its
//! journal batches go on untouched. [`OutletLink`] is what the device's
//! pipeline gets: it publishes the layout and makes the [`OutletFeed`].

use super::feed::{recycle, Chunk, Msg, OutletFeed, POOL, QUEUE};
use super::{max_buffered, spec, Layout, OutletCounters, OutletSection, StreamKind, StreamSpec};
use crate::lsl_ffi::{Lsl, Outlet, StreamInfo};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often an idle outlet thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);
/// How often the outlet thread asks liblsl whether its outlets have
/// consumers ([`OutletCounters::consumed`]).
pub(super) const CONSUMERS_EVERY: Duration = Duration::from_millis(100);

type LayoutSlot = Arc<Mutex<Option<Arc<Layout>>>>;

/// The pipeline's end of a device's outlets.
#[derive(Clone)]
pub struct OutletLink {
    tx: Sender<Msg>,
    free: Receiver<Chunk>,
    layout: LayoutSlot,
    counters: Arc<OutletCounters>,
}

impl OutletLink {
    /// Publish the layout of a (re)opened device and get the feed its
    /// processing stage pushes into.
    pub fn feed(&self, layout: Layout) -> OutletFeed {
        *crate::sync::lock(&self.layout) = Some(Arc::new(layout));
        OutletFeed::new(self.tx.clone(), self.free.clone(), self.counters.clone())
    }
}

struct Worker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A device's outlets: at most one outlet thread, for the streams of its
/// `[lsl_outlet]`.
pub struct Outlets {
    device_id: String,
    rx: Receiver<Msg>,
    free: Sender<Chunk>,
    layout: LayoutSlot,
    counters: Arc<OutletCounters>,
    worker: Option<Worker>,
}

impl Outlets {
    /// The outlets of `device_id` (none running yet) and the link for its
    /// pipeline.
    pub fn new(device_id: &str, counters: Arc<OutletCounters>) -> (Outlets, OutletLink) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (free_tx, free_rx) = crossbeam_channel::bounded(POOL);
        let layout: LayoutSlot = Arc::default();
        let link = OutletLink {
            tx,
            free: free_rx,
            layout: layout.clone(),
            counters: counters.clone(),
        };
        let outlets = Outlets {
            device_id: device_id.to_string(),
            rx,
            free: free_tx,
            layout,
            counters,
            worker: None,
        };
        (outlets, link)
    }

    /// (Re)start the outlet thread for `section`'s streams (none: no
    /// thread). The previous outlets leave the network first.
    pub fn configure(&mut self, section: &OutletSection) {
        self.stop();
        let kinds = section.kinds();
        if kinds.is_empty() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = WorkerCtx {
            mask: section.mask(),
            kinds,
            rx: self.rx.clone(),
            free: self.free.clone(),
            layout: self.layout.clone(),
            counters: self.counters.clone(),
            stop: stop.clone(),
        };
        match std::thread::Builder::new()
            .name(format!("lsl-out-{}", self.device_id))
            .spawn(move || ctx.run())
        {
            Ok(thread) => self.worker = Some(Worker { stop, thread }),
            Err(e) => {
                tracing::error!(device = %self.device_id, error = %e, "cannot start the LSL outlet thread: outlets dropped")
            }
        }
    }

    /// Stop the outlet thread (its outlets are destroyed on it).
    pub fn stop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop.store(true, Ordering::Relaxed);
            let _ = w.thread.join();
        }
        self.counters.set_enabled(0);
        self.counters.set_consumed(0);
    }
}

impl Drop for Outlets {
    fn drop(&mut self) {
        self.stop();
    }
}

struct WorkerCtx {
    /// The streams, as published to the processing stage once liblsl is
    /// loaded (loading it may take a second: nothing queues up meanwhile).
    mask: u8,
    kinds: Vec<StreamKind>,
    rx: Receiver<Msg>,
    free: Sender<Chunk>,
    layout: LayoutSlot,
    counters: Arc<OutletCounters>,
    stop: Arc<AtomicBool>,
}

/// The outlets made for one layout.
struct Live {
    layout: Arc<Layout>,
    outlets: Vec<(StreamKind, Outlet)>,
    offset: f64,
}

impl WorkerCtx {
    fn run(self) {
        let lsl = match Lsl::load() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(error = %e, hint = crate::lsl_ffi::INSTALL_HINT, "LSL outlets: liblsl not found; their samples are dropped");
                None
            }
        };
        // From now on the processing stage copies the streams (without
        // liblsl they are counted as dropped).
        self.counters.set_enabled(self.mask);
        let mut live: Option<Live> = None;
        let mut asked = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            match self.rx.recv_timeout(POLL) {
                Ok(msg) => {
                    if let Some(lsl) = &lsl {
                        self.refresh(lsl, &mut live);
                    }
                    self.handle(live.as_ref(), msg);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
            }
            if asked.elapsed() >= CONSUMERS_EVERY {
                asked = Instant::now();
                self.counters.set_consumed(consumed(live.as_ref()));
            }
        }
        // Left in the queue when the outlets stop: never pushed.
        for msg in self.rx.try_iter() {
            self.drop_msg(msg);
        }
        drop(live);
    }

    /// Make the outlets when the device's layout is new or changed.
    fn refresh(&self, lsl: &Arc<Lsl>, live: &mut Option<Live>) {
        let Some(layout) = crate::sync::lock(&self.layout).clone() else {
            return;
        };
        if live.as_ref().is_some_and(|l| *l.layout == *layout) {
            return;
        }
        *live = None;
        let offset = super::lsl_offset(lsl);
        let outlets = self
            .kinds
            .iter()
            .filter_map(|&k| match make_outlet(lsl, &spec(&layout, k)) {
                Ok(o) => Some((k, o)),
                Err(e) => {
                    tracing::error!(device = %layout.device_id, stream = k.as_str(), error = %e, "cannot create the LSL outlet");
                    None
                }
            })
            .collect();
        tracing::info!(device = %layout.device_id, streams = ?self.kinds, "LSL outlets created");
        *live = Some(Live {
            layout,
            outlets,
            offset,
        });
    }

    fn handle(&self, live: Option<&Live>, msg: Msg) {
        let kind = match &msg {
            Msg::Chunk(c) => c.kind,
            Msg::Marker(_) => Some(StreamKind::Markers),
        };
        let outlet = live.and_then(|l| {
            let o = l.outlets.iter().find(|(k, _)| Some(*k) == kind)?;
            Some((&o.1, l.offset))
        });
        let Some((outlet, offset)) = outlet else {
            return self.drop_msg(msg);
        };
        match msg {
            Msg::Chunk(mut c) => {
                let kind = c.kind.unwrap_or(StreamKind::Raw);
                for t in &mut c.stamps {
                    *t -= offset;
                }
                self.count(kind, c.samples(), outlet.push_chunk_f32(&c.data, &c.stamps));
                recycle(&self.free, c);
            }
            Msg::Marker(m) => {
                let r = outlet.push_str(&[m.value.as_str()], m.t - offset);
                self.count(StreamKind::Markers, 1, r);
            }
        }
    }

    fn count(&self, kind: StreamKind, n: u64, r: Result<(), crate::lsl_ffi::LslError>) {
        match r {
            Ok(()) => self.counters.add_pushed(kind, n),
            Err(e) => {
                self.counters.add_dropped(kind, n);
                tracing::debug!(stream = kind.as_str(), error = %e, "LSL push failed");
            }
        }
    }

    fn drop_msg(&self, msg: Msg) {
        match msg {
            Msg::Chunk(c) => {
                if let Some(k) = c.kind {
                    self.counters.add_dropped(k, c.samples());
                }
                recycle(&self.free, c);
            }
            Msg::Marker(_) => self.counters.add_dropped(StreamKind::Markers, 1),
        }
    }
}

/// A stream info with its channel metadata, and its outlet.
/// The streams of `live` that have at least one inlet connected, as a
/// mask of [`StreamKind::bit`].
fn consumed(live: Option<&Live>) -> u8 {
    live.map_or(0, |l| {
        l.outlets
            .iter()
            .filter(|(_, o)| o.have_consumers())
            .fold(0, |m, (k, _)| m | k.bit())
    })
}

fn make_outlet(lsl: &Arc<Lsl>, s: &StreamSpec) -> Result<Outlet, crate::lsl_ffi::LslError> {
    let mut info = StreamInfo::new(
        lsl,
        &s.name,
        s.stream_type,
        s.channels.len(),
        s.rate,
        s.format,
        &s.source_id,
    )?;
    {
        let mut desc = info.desc();
        let mut chans = desc.append_child("channels");
        for c in &s.channels {
            let mut ch = chans.append_child("channel");
            ch.append_child_value("label", &c.label);
            if !c.unit.is_empty() {
                ch.append_child_value("unit", &c.unit);
            }
            ch.append_child_value("type", &c.kind);
        }
        desc.append_child("acquisition")
            .append_child_value("manufacturer", "neuroedge")
            .append_child_value("model", s.kind.as_str());
    }
    Outlet::new(&info, 0, max_buffered(s))
}
