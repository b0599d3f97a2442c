//! The processing stage's side of a device's outlets: copy what is
//! published into a pooled buffer and `try_send` it. Never waits; once the
//! pool holds [`POOL`] buffers nothing is allocated any more (a buffer
//! grows once to the largest block); a full queue or an empty pool drops
//! the chunk and counts its samples as `dropped`.

use super::{OutletCounters, StreamKind};
use crate::batch::{FeatureRecord, Marker};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::Arc;

/// Messages queued between the processing stage and the outlet thread.
pub const QUEUE: usize = 64;

/// Buffers in circulation at most (the queue, plus one being pushed, plus
/// one being filled).
pub const POOL: usize = QUEUE + 2;

/// Bytes of sample data the pool may hold (at 30 kHz x 384 channels a
/// block is 4.6 MB: 14 buffers, not 66). At least [`MIN_POOL`] buffers.
pub const POOL_BYTES: usize = 64 << 20;

pub const MIN_POOL: usize = 4;

/// Samples of one stream, frame-major, stamped in unix seconds.
#[derive(Debug, Default)]
pub struct Chunk {
    pub kind: Option<StreamKind>,
    pub data: Vec<f32>,
    pub stamps: Vec<f64>,
}

impl Chunk {
    pub fn samples(&self) -> u64 {
        self.stamps.len() as u64
    }
}

/// What the outlet thread receives.
#[derive(Debug)]
pub enum Msg {
    Chunk(Chunk),
    Marker(Marker),
}

/// The processing stage's handle on its device's outlet queue.
pub struct OutletFeed {
    tx: Sender<Msg>,
    /// Emptied buffers coming back from the outlet thread.
    free: Receiver<Chunk>,
    /// Buffers this feed has allocated.
    allocated: usize,
    /// Buffers it may allocate: [`POOL`], fewer for large blocks.
    limit: usize,
    /// A buffer whose chunk the queue refused, kept for the next one.
    spare: Option<Chunk>,
    counters: Arc<OutletCounters>,
}

impl OutletFeed {
    pub fn new(tx: Sender<Msg>, free: Receiver<Chunk>, counters: Arc<OutletCounters>) -> Self {
        OutletFeed {
            tx,
            free,
            allocated: 0,
            limit: POOL,
            spare: None,
            counters,
        }
    }

    /// A feed publishing nothing (tests of the processing stage).
    pub fn disabled() -> Self {
        let (tx, _) = crossbeam_channel::bounded(1);
        let (_, free) = crossbeam_channel::bounded(1);
        Self::new(tx, free, Arc::new(OutletCounters::default()))
    }

    fn counters(&self) -> &OutletCounters {
        &self.counters
    }

    pub fn wants(&self, k: StreamKind) -> bool {
        self.counters().wants(k)
    }

    /// An empty buffer: a recycled one, else a new one while the pool is
    /// not full; `None` when every buffer is in the queue. `values`: how
    /// many floats it is for (bounds the pool in bytes).
    fn buffer(&mut self, values: usize) -> Option<Chunk> {
        let fit = (POOL_BYTES / (values * 4).max(1)).clamp(MIN_POOL, POOL);
        self.limit = self.limit.min(fit);
        if let Some(c) = self.spare.take() {
            return Some(c);
        }
        if let Ok(c) = self.free.try_recv() {
            return Some(c);
        }
        if self.allocated < self.limit {
            self.allocated += 1;
            return Some(Chunk::default());
        }
        None
    }

    /// Queue `samples` stamped `stamps` (unix) for stream `kind`, if it is
    /// published: one copy into a pooled buffer, never a wait.
    pub fn samples(&mut self, kind: StreamKind, samples: &[f32], stamps: &[f64]) {
        if !self.wants(kind) || stamps.is_empty() {
            return;
        }
        self.send_with(kind, samples.len(), stamps.len() as u64, |c| {
            c.data.extend_from_slice(samples);
            c.stamps.extend_from_slice(stamps);
        });
    }

    /// Queue a feature record: `band_power` (channel-major, one value per
    /// (channel, band)) and `quality` (RMS per channel).
    pub fn features(&mut self, rec: &FeatureRecord) {
        if self.wants(StreamKind::BandPower) {
            let channels = rec.rms.len();
            let values = channels * rec.band_power.len();
            self.send_with(StreamKind::BandPower, values, 1, |c| {
                for ch in 0..channels {
                    for (_, powers) in &rec.band_power {
                        c.data
                            .push(powers.get(ch).copied().unwrap_or(f64::NAN) as f32);
                    }
                }
                c.stamps.push(rec.t);
            });
        }
        if self.wants(StreamKind::Quality) {
            self.send_with(StreamKind::Quality, rec.rms.len(), 1, |c| {
                c.data.extend(rec.rms.iter().map(|&r| r as f32));
                c.stamps.push(rec.t);
            });
        }
    }

    /// Queue a marker (a copy: the batch keeps the original).
    pub fn marker(&mut self, m: &Marker) {
        if !self.wants(StreamKind::Markers) {
            return;
        }
        if let Err(e) = self.tx.try_send(Msg::Marker(m.clone())) {
            self.counters().add_dropped(StreamKind::Markers, 1);
            drop(e);
        }
    }

    fn send_with(
        &mut self,
        kind: StreamKind,
        values: usize,
        n: u64,
        fill: impl FnOnce(&mut Chunk),
    ) {
        let Some(mut c) = self.buffer(values) else {
            self.counters().add_dropped(kind, n);
            return;
        };
        c.kind = Some(kind);
        c.data.clear();
        c.stamps.clear();
        fill(&mut c);
        match self.tx.try_send(Msg::Chunk(c)) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Chunk(c)))
            | Err(TrySendError::Disconnected(Msg::Chunk(c))) => {
                self.counters().add_dropped(kind, n);
                // Keep the buffer for the next block.
                self.spare = Some(c);
            }
            Err(_) => self.counters().add_dropped(kind, n),
        }
    }
}

/// Give an emptied buffer back to the feed (the outlet thread, after a
/// push); a full pool frees it instead.
pub fn recycle(free: &Sender<Chunk>, c: Chunk) {
    let _ = free.try_send(c);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        mask: u8,
    ) -> (
        OutletFeed,
        Receiver<Msg>,
        Sender<Chunk>,
        Arc<OutletCounters>,
    ) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (ftx, frx) = crossbeam_channel::bounded(POOL);
        let c = Arc::new(OutletCounters::default());
        c.set_enabled(mask);
        (OutletFeed::new(tx, frx, c.clone()), rx, ftx, c)
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_waits() {
        let (mut f, rx, _free, c) = feed(StreamKind::Filtered.bit());
        let data = [1.0f32, 2.0, 3.0, 4.0];
        let ts = [10.0, 10.004];
        for _ in 0..QUEUE + 10 {
            f.samples(StreamKind::Filtered, &data, &ts);
        }
        f.samples(StreamKind::Raw, &data, &ts);
        assert_eq!(rx.len(), QUEUE);
        assert_eq!(
            c.dropped(StreamKind::Filtered),
            20,
            "10 chunks of 2 samples"
        );
        assert_eq!(c.dropped(StreamKind::Raw), 0, "raw is not published at all");
        let Ok(Msg::Chunk(first)) = rx.try_recv() else {
            panic!("a chunk")
        };
        assert_eq!(first.kind, Some(StreamKind::Filtered));
        assert_eq!(
            (first.data.as_slice(), first.stamps.as_slice()),
            (&data[..], &ts[..])
        );
    }

    #[test]
    fn large_blocks_get_a_smaller_pool() {
        let (mut f, rx, _free, c) = feed(StreamKind::Raw.bit());
        // 3000 frames x 384 channels (30 kHz, 100 ms): 4.6 MB a block.
        let block = vec![0.5f32; 3000 * 384];
        let ts = vec![1.0; 3000];
        for _ in 0..20 {
            f.samples(StreamKind::Raw, &block, &ts);
        }
        assert_eq!(rx.len(), 14, "64 MiB / 4.6 MB");
        assert_eq!(c.dropped(StreamKind::Raw), 6 * 3000);
    }

    #[test]
    fn buffers_are_recycled_not_reallocated() {
        let (mut f, rx, free, c) = feed(StreamKind::Raw.bit());
        for i in 0..1000 {
            f.samples(StreamKind::Raw, &[i as f32], &[i as f64]);
            let Ok(Msg::Chunk(chunk)) = rx.try_recv() else {
                panic!("chunk {i}")
            };
            assert_eq!(chunk.data, [i as f32]);
            recycle(&free, chunk);
        }
        assert_eq!(f.allocated, 1, "one buffer went round 1000 times");
        assert_eq!(c.dropped(StreamKind::Raw), 0);
    }

    #[test]
    fn features_go_out_channel_major_and_markers_as_copies() {
        let mask =
            StreamKind::BandPower.bit() | StreamKind::Quality.bit() | StreamKind::Markers.bit();
        let (mut f, rx, _free, _c) = feed(mask);
        f.features(&FeatureRecord {
            t: 5.0,
            band_power: vec![
                ("alpha".into(), vec![1.0, 2.0]),
                ("beta".into(), vec![3.0, 4.0]),
            ],
            rms: vec![7.0, 8.0],
        });
        f.marker(&Marker {
            t: 5.1,
            value: "go".into(),
        });
        let msgs: Vec<Msg> = rx.try_iter().collect();
        let Msg::Chunk(bp) = &msgs[0] else { panic!() };
        assert_eq!(bp.kind, Some(StreamKind::BandPower));
        assert_eq!(
            bp.data,
            [1.0, 3.0, 2.0, 4.0],
            "Fz:alpha Fz:beta Cz:alpha Cz:beta"
        );
        assert_eq!(bp.stamps, [5.0]);
        let Msg::Chunk(q) = &msgs[1] else { panic!() };
        assert_eq!(
            (q.kind, q.data.as_slice()),
            (Some(StreamKind::Quality), &[7.0f32, 8.0][..])
        );
        let Msg::Marker(m) = &msgs[2] else { panic!() };
        assert_eq!((m.t, m.value.as_str()), (5.1, "go"));
    }
}
