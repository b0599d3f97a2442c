//! The live view of one device: min/max envelopes the processing stage
//! publishes for the status socket's subscribers (`subscribe`, `neuroedge
//! scope`).
//!
//! The processing stage folds the samples of each signal (raw, filtered)
//! into *bins* of `bin_samples` consecutive samples, per channel the
//! minimum and the maximum, and publishes each bin into a ring of slots
//! allocated once when the device's pipeline starts. A bin ends early at a
//! gap, so every bin covers consecutive sample indices; bins are numbered
//! gaplessly, so a reader that finds a bin number overwritten knows it
//! fell behind.
//!
//! Nothing here waits: the writer stores into the slots with relaxed
//! atomics under a per-slot sequence stamp (a seqlock); a reader copies a
//! slot and keeps it only if the stamp did not move meanwhile. The writer
//! never learns whether anyone read. While a signal has no subscriber
//! (one relaxed load per block), the processing stage skips it entirely.

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which samples a view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// As the device delivered them.
    Raw,
    /// The output of the device's filter chain (what the journal's
    /// `filtered` holds).
    Filtered,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Raw => "raw",
            Signal::Filtered => "filtered",
        }
    }

    pub fn parse(s: &str) -> Option<Signal> {
        match s {
            "raw" => Some(Signal::Raw),
            "filtered" => Some(Signal::Filtered),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Signal::Raw => 0,
            Signal::Filtered => 1,
        }
    }
}

/// Bins per second aimed at: enough for any view rate up to 60 lines per
/// second to be a whole number of bins, few enough that a 30 kHz device
/// publishes a few hundred small bins a second, not 30 000.
const BINS_PER_S: f64 = 120.0;
/// Seconds of bins the ring holds: a reader may be this late and lose
/// nothing.
const RING_SECONDS: f64 = 2.0;

/// Publishes closer together than this count as one for
/// [`View::last_publish`]'s interval.
const MIN_PUBLISH_INTERVAL_NS: u64 = 1_000_000;

/// Samples per bin at `rate` Hz: 1 up to 240 Hz, then `rate / 120`.
pub fn bin_samples(rate: f64) -> usize {
    if !(rate.is_finite() && rate > 0.0) {
        return 1;
    }
    ((rate / BINS_PER_S).floor() as usize).max(1)
}

/// One bin as a reader gets it (the values go to the caller's buffers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BinMeta {
    /// Sample index (journal-wide, as batches' `first_sample`) of the
    /// first sample covered.
    pub first: u64,
    /// Consecutive samples covered.
    pub len: u32,
    /// Unix time of the last sample covered.
    pub t: f64,
}

/// What [`View::read`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Read {
    Bin(BinMeta),
    /// Not published yet.
    NotYet,
    /// Overwritten before it was read: the reader fell behind.
    Lost,
}

/// See [`View::last_publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub at: Instant,
    pub interval: Option<Duration>,
}

/// The slots of one signal.
struct Envelopes {
    subscribers: AtomicUsize,
    /// Bins published so far: bin `b` lives in slot `b % slots`.
    head: AtomicU64,
    /// Per slot: `2 (b + 1)` once bin `b` is complete, odd while written.
    stamp: Box<[AtomicU64]>,
    first: Box<[AtomicU64]>,
    len: Box<[AtomicU32]>,
    /// f64 bits.
    t: Box<[AtomicU64]>,
    /// Per slot `2 * channels` f32 bits: the minima, then the maxima.
    values: Box<[AtomicU32]>,
    /// When bins were last published: nanoseconds since the view's
    /// `born`, plus one (0: never). Readers time their wake-ups by it.
    published_ns: AtomicU64,
    /// Nanoseconds between the last two publishes of a subscribed stretch
    /// (0: not known yet).
    interval_ns: AtomicU64,
}

impl Envelopes {
    fn new(slots: usize, channels: usize) -> Self {
        let atomics64 = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Envelopes {
            subscribers: AtomicUsize::new(0),
            head: AtomicU64::new(0),
            stamp: atomics64(slots),
            first: atomics64(slots),
            len: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            t: atomics64(slots),
            values: (0..slots * 2 * channels)
                .map(|_| AtomicU32::new(0))
                .collect(),
            published_ns: AtomicU64::new(0),
            interval_ns: AtomicU64::new(0),
        }
    }
}

/// The view buffer of one device run, shared by its processing stage
/// (the one writer, through [`ViewWriter`]) and the socket's subscribers.
pub struct View {
    pub device_id: String,
    pub channels: usize,
    pub sample_rate: f64,
    pub channel_names: Vec<String>,
    pub units: String,
    /// Samples per bin (a bin ends early at a gap).
    pub bin_samples: usize,
    slots: usize,
    signals: [Envelopes; 2],
    /// The processing stage has ended: no more bins will come.
    closed: AtomicBool,
    /// The origin of [`View::published_at`].
    born: Instant,
}

impl View {
    pub fn new(
        device_id: &str,
        sample_rate: f64,
        channel_names: &[String],
        units: &str,
    ) -> Arc<View> {
        let channels = channel_names.len();
        let bin = bin_samples(sample_rate);
        let bins_per_s = if sample_rate.is_finite() && sample_rate > 0.0 {
            sample_rate / bin as f64
        } else {
            BINS_PER_S
        };
        let slots = ((bins_per_s * RING_SECONDS).ceil() as usize)
            .next_power_of_two()
            .clamp(64, 1024);
        Arc::new(View {
            device_id: device_id.to_string(),
            channels,
            sample_rate,
            channel_names: channel_names.to_vec(),
            units: units.to_string(),
            bin_samples: bin,
            slots,
            signals: [
                Envelopes::new(slots, channels),
                Envelopes::new(slots, channels),
            ],
            closed: AtomicBool::new(false),
            born: Instant::now(),
        })
    }

    fn env(&self, s: Signal) -> &Envelopes {
        &self.signals[s.index()]
    }

    /// Bins the ring holds.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Start reading `signal`: the processing stage folds it from its next
    /// block on, until the returned guard is dropped.
    pub fn subscribe(self: &Arc<Self>, signal: Signal) -> Subscription {
        self.env(signal).subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            view: self.clone(),
            signal,
        }
    }

    pub fn subscribers(&self, signal: Signal) -> usize {
        self.env(signal).subscribers.load(Ordering::Relaxed)
    }

    /// Number of the next bin to be published.
    pub fn head(&self, signal: Signal) -> u64 {
        self.env(signal).head.load(Ordering::Acquire)
    }

    /// When the processing stage last published bins of `signal`, and
    /// how long before that it had published the previous ones (`None`:
    /// not yet). Readers time their wake-ups by it instead of polling.
    pub fn last_publish(&self, signal: Signal) -> Option<Publish> {
        let e = self.env(signal);
        let interval = e.interval_ns.load(Ordering::Relaxed);
        match e.published_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Publish {
                at: self.born + Duration::from_nanos(ns - 1),
                interval: (interval > 0).then(|| Duration::from_nanos(interval)),
            }),
        }
    }

    /// Has the processing stage ended (device stopped or removed)?
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Copy bin `bin` of `signal` into `min` and `max` (`channels` each).
    /// Never waits; `Lost` when the writer overwrote it (before or while
    /// it was copied).
    pub fn read(&self, signal: Signal, bin: u64, min: &mut [f32], max: &mut [f32]) -> Read {
        let e = self.env(signal);
        if bin >= e.head.load(Ordering::Acquire) {
            return Read::NotYet;
        }
        let slot = (bin % self.slots as u64) as usize;
        let want = 2 * (bin + 1);
        let s1 = e.stamp[slot].load(Ordering::Acquire);
        if s1 != want {
            // Published bins only move forward: another stamp is a later bin.
            return Read::Lost;
        }
        let meta = BinMeta {
            first: e.first[slot].load(Ordering::Relaxed),
            len: e.len[slot].load(Ordering::Relaxed),
            t: f64::from_bits(e.t[slot].load(Ordering::Relaxed)),
        };
        let ch = self.channels;
        let base = slot * 2 * ch;
        let vals = &e.values[base..base + 2 * ch];
        for (dst, src) in min.iter_mut().zip(&vals[..ch]) {
            *dst = f32::from_bits(src.load(Ordering::Relaxed));
        }
        for (dst, src) in max.iter_mut().zip(&vals[ch..]) {
            *dst = f32::from_bits(src.load(Ordering::Relaxed));
        }
        fence(Ordering::Acquire);
        if e.stamp[slot].load(Ordering::Relaxed) != s1 {
            return Read::Lost;
        }
        Read::Bin(meta)
    }
}

/// A subscriber's claim on a signal; dropping it releases the claim.
pub struct Subscription {
    view: Arc<View>,
    signal: Signal,
}

impl Subscription {
    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    pub fn signal(&self) -> Signal {
        self.signal
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.view
            .env(self.signal)
            .subscribers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A bin being folded.
struct Acc {
    active: bool,
    first: u64,
    len: usize,
    t: f64,
    min: Box<[f32]>,
    max: Box<[f32]>,
}

impl Acc {
    fn new(channels: usize) -> Self {
        Acc {
            active: false,
            first: 0,
            len: 0,
            t: 0.0,
            min: vec![f32::INFINITY; channels].into_boxed_slice(),
            max: vec![f32::NEG_INFINITY; channels].into_boxed_slice(),
        }
    }

    fn reset(&mut self, first: u64) {
        self.first = first;
        self.len = 0;
        self.min.fill(f32::INFINITY);
        self.max.fill(f32::NEG_INFINITY);
    }
}

/// The processing stage's side of a [`View`]: folds blocks into bins and
/// publishes them. Allocates nothing after [`ViewWriter::new`].
pub struct ViewWriter {
    view: Arc<View>,
    acc: [Acc; 2],
}

impl ViewWriter {
    pub fn new(view: Arc<View>) -> Self {
        let ch = view.channels;
        ViewWriter {
            acc: [Acc::new(ch), Acc::new(ch)],
            view,
        }
    }

    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    /// Fold one block (`first` = sample index of its first frame; frames
    /// consecutive; frame-major `raw` and `filtered`). Costs one relaxed
    /// load per signal when nobody subscribed.
    #[inline]
    pub fn push(&mut self, first: u64, raw: &[f32], filtered: &[f32], ts: &[f64]) {
        for (signal, data) in [(Signal::Raw, raw), (Signal::Filtered, filtered)] {
            if self.view.subscribers(signal) == 0 {
                self.acc[signal.index()].active = false;
                continue;
            }
            self.fold(signal, first, data, ts);
        }
    }

    fn fold(&mut self, signal: Signal, first: u64, data: &[f32], ts: &[f64]) {
        let ch = self.view.channels;
        let n = ts.len();
        if ch == 0 || data.len() != n * ch {
            return;
        }
        let bin = self.view.bin_samples;
        let view = &self.view;
        let head = view.head(signal);
        let acc = &mut self.acc[signal.index()];
        // A stretch of publishes begins: the time since the last one says
        // nothing of the device's pace.
        let resumed = !acc.active;
        if !acc.active {
            acc.active = true;
            acc.reset(first);
        } else if acc.first + acc.len as u64 != first {
            // A gap: the bin so far ends here, the next starts after it.
            if acc.len > 0 {
                publish(view, signal, acc);
            }
            acc.reset(first);
        }
        let mut k = 0;
        while k < n {
            let take = (bin - acc.len).min(n - k);
            for row in data[k * ch..(k + take) * ch].chunks_exact(ch) {
                for ((lo, hi), &v) in acc.min.iter_mut().zip(acc.max.iter_mut()).zip(row) {
                    *lo = lo.min(v);
                    *hi = hi.max(v);
                }
            }
            acc.len += take;
            k += take;
            acc.t = ts[k - 1];
            if acc.len >= bin {
                publish(view, signal, acc);
                acc.reset(first + k as u64);
            }
        }
        if view.head(signal) != head {
            let e = view.env(signal);
            let now = view.born.elapsed().as_nanos().min(u128::from(u64::MAX - 1)) as u64 + 1;
            let prev = e.published_ns.load(Ordering::Relaxed);
            // Two blocks processed back to back (a ring's wrap splits one)
            // are one publish as far as a reader's pace goes.
            if !resumed && prev != 0 && now.saturating_sub(prev) >= MIN_PUBLISH_INTERVAL_NS {
                e.interval_ns
                    .store(now.saturating_sub(prev), Ordering::Relaxed);
            }
            e.published_ns.store(now, Ordering::Relaxed);
        }
    }

    /// The device run has ended: readers stop waiting for more bins.
    pub fn close(&self) {
        self.view.closed.store(true, Ordering::Release);
    }
}

impl Drop for ViewWriter {
    fn drop(&mut self) {
        self.close();
    }
}

fn publish(view: &View, signal: Signal, acc: &Acc) {
    let e = view.env(signal);
    let b = e.head.load(Ordering::Relaxed);
    let slot = (b % view.slots as u64) as usize;
    e.stamp[slot].store(2 * b + 1, Ordering::Relaxed);
    fence(Ordering::Release);
    e.first[slot].store(acc.first, Ordering::Relaxed);
    e.len[slot].store(acc.len as u32, Ordering::Relaxed);
    e.t[slot].store(acc.t.to_bits(), Ordering::Relaxed);
    let ch = view.channels;
    let base = slot * 2 * ch;
    let vals = &e.values[base..base + 2 * ch];
    for (dst, v) in vals[..ch].iter().zip(acc.min.iter()) {
        dst.store(v.to_bits(), Ordering::Relaxed);
    }
    for (dst, v) in vals[ch..].iter().zip(acc.max.iter()) {
        dst.store(v.to_bits(), Ordering::Relaxed);
    }
    e.stamp[slot].store(2 * b + 2, Ordering::Release);
    e.head.store(b + 1, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    /// Frames `first..first+n` of 2 channels: channel 0 = index, channel 1 = -index.
    fn block(first: u64, n: usize) -> (Vec<f32>, Vec<f64>) {
        let mut d = Vec::new();
        let mut t = Vec::new();
        for i in first..first + n as u64 {
            d.push(i as f32);
            d.push(-(i as f32));
            t.push(i as f64 / 1000.0);
        }
        (d, t)
    }

    fn read_all(v: &View, s: Signal, from: u64) -> Vec<(BinMeta, Vec<f32>, Vec<f32>)> {
        let mut out = Vec::new();
        let (mut lo, mut hi) = (vec![0.0; v.channels], vec![0.0; v.channels]);
        for b in from..v.head(s) {
            match v.read(s, b, &mut lo, &mut hi) {
                Read::Bin(m) => out.push((m, lo.clone(), hi.clone())),
                other => panic!("bin {b}: {other:?}"),
            }
        }
        out
    }

    #[test]
    fn bin_sizes_follow_the_rate() {
        assert_eq!(bin_samples(250.0), 2);
        assert_eq!(bin_samples(100.0), 1);
        assert_eq!(bin_samples(30_000.0), 250);
        assert_eq!(bin_samples(f64::NAN), 1);
        let v = View::new("d", 30_000.0, &names(384), "uV");
        assert_eq!(v.slots(), 256, "2 s of 120 bins/s, a power of two");
        let v = View::new("d", 10.0, &names(1), "uV");
        assert_eq!(v.slots(), 64);
    }

    #[test]
    fn nothing_is_folded_without_a_subscriber() {
        let v = View::new("d", 1000.0, &names(2), "uV");
        let mut w = ViewWriter::new(v.clone());
        let (d, t) = block(0, 100);
        w.push(0, &d, &d, &t);
        assert_eq!(v.head(Signal::Raw), 0);
        assert_eq!(v.head(Signal::Filtered), 0);
    }

    #[test]
    fn bins_cover_consecutive_samples_and_end_at_gaps() {
        // 1000 Hz: 8 samples per bin.
        let v = View::new("d", 1000.0, &names(2), "uV");
        assert_eq!(v.bin_samples, 8);
        let mut w = ViewWriter::new(v.clone());
        let sub = v.subscribe(Signal::Filtered);
        // Blocks of 5 and 7 (bins straddle blocks), then a gap of 10.
        let (d, t) = block(100, 5);
        w.push(100, &d, &d, &t);
        let (d, t) = block(105, 7);
        w.push(105, &d, &d, &t);
        let (d, t) = block(122, 20);
        w.push(122, &d, &d, &t);
        let bins = read_all(&v, Signal::Filtered, 0);
        let spans: Vec<(u64, u32)> = bins.iter().map(|(m, _, _)| (m.first, m.len)).collect();
        // 100..108 full; 108..112 cut by the gap; 122..130, 130..138; 138..142 still open.
        assert_eq!(spans, [(100, 8), (108, 4), (122, 8), (130, 8)]);
        let (m, lo, hi) = &bins[1];
        assert_eq!((lo[0], hi[0]), (108.0, 111.0));
        assert_eq!((lo[1], hi[1]), (-111.0, -108.0));
        assert_eq!(m.t, 0.111, "t of the last sample covered");
        assert_eq!(v.head(Signal::Raw), 0, "raw has no subscriber");
        drop(sub);
        assert_eq!(v.subscribers(Signal::Filtered), 0);
        let (d, t) = block(142, 20);
        w.push(142, &d, &d, &t);
        assert_eq!(
            v.head(Signal::Filtered),
            4,
            "stopped with the last subscriber"
        );
    }

    #[test]
    fn publishes_are_timed_for_readers_pacing() {
        let v = View::new("d", 1000.0, &names(2), "uV");
        let mut w = ViewWriter::new(v.clone());
        let sub = v.subscribe(Signal::Filtered);
        assert_eq!(v.last_publish(Signal::Filtered), None);
        let before = Instant::now();
        let (d, t) = block(0, 16);
        w.push(0, &d, &d, &t);
        let first = v.last_publish(Signal::Filtered).expect("published");
        assert!(first.at >= before && first.at <= Instant::now());
        assert_eq!(first.interval, None, "one publish has no interval");
        std::thread::sleep(Duration::from_millis(20));
        let (d, t) = block(16, 16);
        w.push(16, &d, &d, &t);
        let second = v.last_publish(Signal::Filtered).unwrap();
        let gap = second.at - first.at;
        assert!(gap >= Duration::from_millis(20));
        assert_eq!(second.interval, Some(gap));
        // A block right after (a ring's wrap) moves the time, not the pace.
        let (d, t) = block(32, 16);
        w.push(32, &d, &d, &t);
        let third = v.last_publish(Signal::Filtered).unwrap();
        assert!(third.at >= second.at);
        assert_eq!(third.interval, Some(gap));
        // A block that completes no bin publishes nothing.
        let (d, t) = block(48, 3);
        w.push(48, &d, &d, &t);
        assert_eq!(v.last_publish(Signal::Filtered), Some(third));
        // Nobody subscribed for a while: the pause is not the device's pace.
        drop(sub);
        let (d, t) = block(51, 16);
        w.push(51, &d, &d, &t);
        std::thread::sleep(Duration::from_millis(30));
        let _sub = v.subscribe(Signal::Filtered);
        let (d, t) = block(67, 16);
        w.push(67, &d, &d, &t);
        let resumed = v.last_publish(Signal::Filtered).unwrap();
        assert!(resumed.at - third.at >= Duration::from_millis(30));
        assert_eq!(resumed.interval, Some(gap));
        assert_eq!(v.last_publish(Signal::Raw), None, "raw never subscribed");
    }

    #[test]
    fn a_reader_that_falls_behind_is_told() {
        let v = View::new("d", 100.0, &names(2), "uV");
        let mut w = ViewWriter::new(v.clone());
        let _sub = v.subscribe(Signal::Raw);
        let slots = v.slots() as u64;
        let (d, t) = block(0, slots as usize + 10);
        w.push(0, &d, &d, &t);
        let (mut lo, mut hi) = (vec![0.0; 2], vec![0.0; 2]);
        assert_eq!(v.read(Signal::Raw, 0, &mut lo, &mut hi), Read::Lost);
        assert_eq!(v.read(Signal::Raw, 9, &mut lo, &mut hi), Read::Lost);
        assert!(matches!(
            v.read(Signal::Raw, 10, &mut lo, &mut hi),
            Read::Bin(BinMeta {
                first: 10,
                len: 1,
                ..
            })
        ));
        assert_eq!(
            v.read(Signal::Raw, slots + 10, &mut lo, &mut hi),
            Read::NotYet
        );
        drop(w);
        assert!(v.is_closed());
    }

    #[test]
    fn concurrent_readers_never_see_a_torn_bin() {
        // Every bin of channel 0 holds (first, first + len - 1) and channel
        // 1 the negation: a copy mixing two bins breaks that.
        let v = View::new("d", 100.0, &names(2), "uV");
        let sub = v.subscribe(Signal::Raw);
        let writer = {
            let v = v.clone();
            std::thread::spawn(move || {
                let mut w = ViewWriter::new(v);
                let mut first = 0u64;
                for _ in 0..20_000 {
                    let (d, t) = block(first, 3);
                    w.push(first, &d, &d, &t);
                    first += 3;
                }
            })
        };
        let (mut lo, mut hi) = (vec![0.0; 2], vec![0.0; 2]);
        let mut seen = 0;
        let mut next = 0;
        while !v.is_closed() || next < v.head(Signal::Raw) {
            match v.read(Signal::Raw, next, &mut lo, &mut hi) {
                Read::Bin(m) => {
                    assert_eq!(lo[0], m.first as f32);
                    assert_eq!(hi[0], (m.first + m.len as u64 - 1) as f32);
                    assert_eq!((lo[1], hi[1]), (-hi[0], -lo[0]));
                    seen += 1;
                    next += 1;
                }
                // Overtaken: go on from the oldest bin the ring may still
                // hold (after the writer ends, those are all readable).
                Read::Lost => next = v.head(Signal::Raw).saturating_sub(v.slots() as u64 - 1),
                Read::NotYet => std::thread::yield_now(),
            }
        }
        writer.join().unwrap();
        drop(sub);
        assert!(seen > 0);
    }
}
