//! The lock-free ring between a device's acquisition thread and its
//! processing thread.
//!
//! Frames travel in fixed-capacity blocks. Blocks are allocated once, in
//! [`ring`], and then circulate: pool -> producer -> queue -> consumer -> pool.
//! The producer takes blocks that have circulated before it takes a fresh
//! one, so while the consumer keeps up only a few blocks are ever written
//! and the rest of the ring's memory is never touched (its pages are not
//! resident): a 2-s ring at 384 ch × 30 kHz reserves 184 MB and uses a
//! few MB of it until a backlog needs more.
//! The queue is crossbeam's `ArrayQueue`, whose `force_push` replaces the
//! oldest element when full: a full ring drops the *oldest* unread frames,
//! and the producer counts them. Nothing on the producer side locks or
//! allocates.
//!
//! An idle consumer sleeps in [`Consumer::wait`] (parked, with a timeout)
//! and the producer wakes it at the end of each read ([`Producer::flush`])
//! that published a block, or at once when [`WAKE_AT`] blocks wait: an
//! `unpark`, which never waits, and only when the consumer said it is
//! waiting. So a quiet device costs a few wake-ups a second, not a poll
//! every few milliseconds; and a read whose frames fill a block or two and
//! start the next wakes it once, not once per block (at 8 ch × 250 Hz from
//! LSL, 18 wake-ups a second for 10 reads when each block woke it).

use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Blocks waiting that wake the consumer before the read ends: a long read
/// (a backlog) overlaps with its processing, while a read of up to three
/// blocks (an LSL pull every 250 ms: two and a half 100-ms blocks) wakes
/// it once.
const WAKE_AT: usize = 4;

/// A run of consecutive frames (frame-major samples).
pub struct Block {
    /// Sample index of the first frame.
    pub first_index: u64,
    /// Samples the device revealed as missing just before `first_index`.
    pub device_gap_before: u64,
    /// When the producer published it: when its frames had all arrived
    /// (the rate in the status report is measured between these).
    pub published: Instant,
    /// Frames the block holds when full.
    frames: usize,
    channels: usize,
    /// Filled up to the block's length; the capacity is allocated once and
    /// never grows. Not zeroed: a page of a block that has not been written
    /// yet is not resident (glibc's `calloc` clears memory the heap used
    /// before, which made a 10-s ring resident at once).
    timestamps: Vec<f64>,
    data: Vec<f32>,
}

impl Block {
    fn new(channels: usize, frames: usize) -> Box<Block> {
        Box::new(Block {
            first_index: 0,
            device_gap_before: 0,
            published: Instant::now(),
            frames,
            channels,
            timestamps: Vec::with_capacity(frames),
            data: Vec::with_capacity(frames * channels),
        })
    }

    /// Empty it for reuse (its memory stays).
    fn clear(&mut self) {
        self.timestamps.clear();
        self.data.clear();
    }

    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn timestamps(&self) -> &[f64] {
        &self.timestamps
    }

    /// Frame-major samples, `len * channels` values.
    pub fn samples(&self) -> &[f32] {
        &self.data
    }

    fn is_full(&self) -> bool {
        self.timestamps.len() >= self.frames
    }
}

struct Shared {
    queue: ArrayQueue<Box<Block>>,
    /// Blocks that have been used and given back.
    pool: ArrayQueue<Box<Block>>,
    /// Blocks never used yet (their pages untouched): taken only when
    /// `pool` is empty.
    fresh: ArrayQueue<Box<Block>>,
    blocks: usize,
    dropped: AtomicU64,
    closed: AtomicBool,
    /// The consumer is parked (or about to park) in [`Consumer::wait`].
    waiting: AtomicBool,
    /// The consumer's thread, set by its first `wait`.
    consumer: OnceLock<Thread>,
}

impl Shared {
    /// Wake a waiting consumer (never waits itself).
    fn wake(&self) {
        if self.waiting.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.consumer.get() {
                t.unpark();
            }
        }
    }
}

/// Producer side, owned by the acquisition thread.
pub struct Producer {
    shared: Arc<Shared>,
    current: Option<Box<Block>>,
    next_index: u64,
    pending_gap: u64,
    channels: usize,
    /// A block was published since the consumer was last woken.
    unwoken: bool,
}

/// Consumer side, owned by the processing thread.
pub struct Consumer {
    shared: Arc<Shared>,
}

/// Counters readable from anywhere.
#[derive(Clone)]
pub struct RingStats {
    shared: Arc<Shared>,
}

impl RingStats {
    /// Frames dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Blocks written at least once so far (the ring's high-water mark),
    /// and the blocks it has.
    pub fn blocks_used(&self) -> (usize, usize) {
        let sh = &self.shared;
        (sh.blocks - sh.fresh.len(), sh.blocks)
    }
}

/// Create a ring holding at least `capacity_frames` frames of `channels`
/// channels, in blocks of `block_frames` frames.
pub fn ring(
    channels: usize,
    capacity_frames: usize,
    block_frames: usize,
) -> (Producer, Consumer, RingStats) {
    let channels = channels.max(1);
    let block_frames = block_frames.max(1);
    // Blocks may be published part-full (a driver flushes what it has), so
    // keep twice the blocks a full-block ring would need.
    let blocks = (capacity_frames.div_ceil(block_frames) * 2).max(2);
    // + one block held by each side.
    let total = blocks + 2;
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(blocks),
        pool: ArrayQueue::new(total),
        fresh: ArrayQueue::new(total),
        blocks: total,
        dropped: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        waiting: AtomicBool::new(false),
        consumer: OnceLock::new(),
    });
    for _ in 0..total {
        // Exactly this capacity, so pushes succeed.
        let _ = shared.fresh.push(Block::new(channels, block_frames));
    }
    let stats = RingStats {
        shared: shared.clone(),
    };
    (
        Producer {
            shared: shared.clone(),
            current: None,
            next_index: 0,
            pending_gap: 0,
            channels,
            unwoken: false,
        },
        Consumer { shared },
        stats,
    )
}

impl Producer {
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The queue is (almost) full: the next publish may drop old frames.
    pub fn nearly_full(&self) -> bool {
        self.shared.queue.len() + 2 >= self.shared.queue.capacity()
    }

    /// Index the next frame will get.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Append one frame. `values` must have `channels` entries (extra are
    /// ignored, missing are zero).
    #[inline]
    pub fn push(&mut self, timestamp: f64, values: &[f32]) {
        if self.current.is_none() {
            match self.shared.pool.pop().or_else(|| self.shared.fresh.pop()) {
                Some(mut b) => {
                    b.first_index = self.next_index;
                    b.device_gap_before = std::mem::take(&mut self.pending_gap);
                    b.clear();
                    self.current = Some(b);
                }
                None => {
                    // Cannot happen while the block invariant holds; never
                    // allocate here, count the frame as dropped instead.
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    self.next_index += 1;
                    return;
                }
            }
        }
        if let Some(b) = self.current.as_mut() {
            // Within the capacity allocated up front: no allocation.
            b.timestamps.push(timestamp);
            let n = values.len().min(self.channels);
            b.data.extend_from_slice(&values[..n]);
            b.data.resize(b.timestamps.len() * self.channels, 0.0);
            self.next_index += 1;
            if b.is_full() {
                self.publish();
            }
        }
    }

    /// The device revealed `missing` samples lost before the next frame.
    pub fn skip(&mut self, missing: u64) {
        if missing == 0 {
            return;
        }
        self.publish();
        // Saturating: a garbage count must not wrap the sample index.
        self.pending_gap = self.pending_gap.saturating_add(missing);
        self.next_index = self.next_index.saturating_add(missing);
    }

    /// Publish the frames pushed so far and wake the consumer (call at the
    /// end of each read).
    pub fn flush(&mut self) {
        self.publish();
        if std::mem::take(&mut self.unwoken) {
            self.shared.wake();
        }
    }

    fn publish(&mut self) {
        let Some(mut b) = self.current.take() else {
            return;
        };
        if b.is_empty() {
            let _ = self.shared.pool.push(b);
            return;
        }
        b.published = Instant::now();
        if let Some(mut old) = self.shared.queue.force_push(b) {
            self.shared
                .dropped
                .fetch_add(old.len() as u64, Ordering::Relaxed);
            old.clear();
            let _ = self.shared.pool.push(old);
        }
        self.unwoken = true;
        if self.shared.queue.len() >= WAKE_AT {
            // A long read: the consumer starts while it goes on.
            self.unwoken = false;
            self.shared.wake();
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.publish();
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake();
    }
}

impl Consumer {
    /// Take the oldest published block, if any.
    pub fn pop(&mut self) -> Option<Box<Block>> {
        self.shared.queue.pop()
    }

    /// Give a block back to the pool once processed.
    pub fn recycle(&mut self, mut b: Box<Block>) {
        b.clear();
        let _ = self.shared.pool.push(b);
    }

    /// The producer is gone and everything it published has been taken.
    pub fn is_finished(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) && self.shared.queue.is_empty()
    }

    /// Sleep until the producer publishes a block or closes, or `timeout`
    /// passes (whichever is first; a spurious early return is harmless).
    /// Call it from the consuming thread only.
    pub fn wait(&mut self, timeout: Duration) {
        let sh = &self.shared;
        sh.consumer.get_or_init(std::thread::current);
        sh.waiting.store(true, Ordering::SeqCst);
        // Published (or closed) between the caller's pop and the flag: do
        // not sleep. Otherwise the producer sees the flag and unparks; an
        // unpark that comes before the park makes the park return at once.
        if sh.queue.is_empty() && !sh.closed.load(Ordering::SeqCst) {
            std::thread::park_timeout(timeout);
        }
        sh.waiting.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_arrive_in_order_with_indices() {
        let (mut p, mut c, stats) = ring(2, 100, 4);
        for i in 0..10 {
            p.push(i as f64, &[i as f32, -(i as f32)]);
        }
        p.flush();
        let mut got = Vec::new();
        while let Some(b) = c.pop() {
            for (k, t) in b.timestamps().iter().enumerate() {
                assert_eq!(b.first_index + k as u64, *t as u64);
                assert_eq!(b.samples()[k * 2], *t as f32);
                got.push(*t);
            }
            c.recycle(b);
        }
        assert_eq!(got.len(), 10);
        assert_eq!(stats.dropped(), 0);
    }

    #[test]
    fn short_frames_are_zero_filled_long_ones_cut_and_reused_blocks_hold_only_their_frames() {
        let (mut p, mut c, _) = ring(3, 4, 2); // blocks of 2 frames
        let mut frames = Vec::new();
        for round in 0..6 {
            let t = round as f64;
            p.push(t, &[1.0 + t as f32]); // short: two zeros
            p.push(t + 0.5, &[2.0, 3.0, 4.0, 99.0]); // long: cut to 3
            p.flush();
            let b = c.pop().expect("a block per round");
            assert_eq!(b.len(), 2);
            assert_eq!(b.timestamps(), [t, t + 0.5]);
            assert_eq!(b.samples(), [1.0 + t as f32, 0.0, 0.0, 2.0, 3.0, 4.0]);
            frames.push(b.first_index);
            // Recycled and taken again for the next round: no frame of
            // this one may show through.
            c.recycle(b);
        }
        assert_eq!(frames, [0, 2, 4, 6, 8, 10]);
        // A part-full block after full ones holds just its frame.
        p.push(7.0, &[5.0, 6.0, 7.0]);
        p.flush();
        let b = c.pop().unwrap();
        assert_eq!((b.len(), b.samples()), (1, &[5.0, 6.0, 7.0][..]));
    }

    #[test]
    fn full_ring_drops_oldest_and_counts() {
        let (mut p, mut c, stats) = ring(1, 8, 4); // 4 blocks of 4 frames
        for i in 0..100 {
            p.push(i as f64, &[i as f32]);
        }
        p.flush();
        let mut first = None;
        let mut n = 0;
        while let Some(b) = c.pop() {
            first.get_or_insert(b.first_index);
            n += b.len();
            c.recycle(b);
        }
        assert_eq!(n as u64 + stats.dropped(), 100);
        // The newest frames survived.
        assert_eq!(first, Some(100 - n as u64));
    }

    #[test]
    fn a_consumer_that_keeps_up_leaves_most_blocks_untouched() {
        let (mut p, mut c, stats) = ring(2, 1000, 10); // 200 + 2 blocks
        assert_eq!(stats.blocks_used(), (0, 202));
        for i in 0..5000 {
            p.push(i as f64, &[i as f32, 0.0]);
            if i % 7 == 6 {
                p.flush(); // part-full blocks, as drivers publish them
            }
            while let Some(b) = c.pop() {
                c.recycle(b);
            }
        }
        let (used, _) = stats.blocks_used();
        assert!(used <= 3, "{used} blocks written");
        // A backlog takes fresh blocks, and then they circulate too.
        for i in 0..500 {
            p.push(i as f64, &[0.0, 0.0]);
        }
        let (backlog, _) = stats.blocks_used();
        assert!(
            (50..=used + 50).contains(&backlog),
            "{backlog} blocks written"
        );
        assert_eq!(stats.dropped(), 0);
    }

    #[test]
    fn skip_marks_device_gap() {
        let (mut p, mut c, _) = ring(1, 16, 4);
        p.push(0.0, &[0.0]);
        p.skip(5);
        p.push(6.0, &[6.0]);
        p.flush();
        let a = c.pop().unwrap();
        assert_eq!((a.first_index, a.len(), a.device_gap_before), (0, 1, 0));
        let b = c.pop().unwrap();
        assert_eq!((b.first_index, b.device_gap_before), (6, 5));
    }

    #[test]
    fn threads_lose_nothing_when_consumer_keeps_up() {
        let (mut p, mut c, stats) = ring(4, 100_000, 32);
        let h = std::thread::spawn(move || {
            for i in 0..50_000u64 {
                p.push(i as f64, &[i as f32; 4]);
            }
        });
        let mut expect = 0u64;
        loop {
            match c.pop() {
                Some(b) => {
                    assert_eq!(b.first_index, expect);
                    expect += b.len() as u64;
                    c.recycle(b);
                }
                None if c.is_finished() => break,
                None => c.wait(Duration::from_secs(60)),
            }
        }
        h.join().unwrap();
        assert_eq!(expect + stats.dropped(), 50_000);
        assert_eq!(stats.dropped(), 0);
    }

    #[test]
    fn a_block_carries_the_time_it_was_published_not_started() {
        let (mut p, mut c, _) = ring(1, 1000, 10);
        p.push(0.0, &[0.0]);
        std::thread::sleep(Duration::from_millis(30));
        let before = Instant::now();
        p.push(1.0, &[0.0]);
        p.flush();
        let after = Instant::now();
        let b = c.pop().expect("a block");
        assert!(b.published >= before && b.published <= after);
        c.recycle(b);
        // A recycled block gets the new time.
        std::thread::sleep(Duration::from_millis(5));
        p.push(2.0, &[0.0]);
        p.flush();
        assert!(c.pop().expect("a block").published > after);
    }

    #[test]
    fn a_read_wakes_the_consumer_at_its_end_or_when_four_blocks_wait() {
        let (mut p, mut c, _) = ring(1, 1000, 10);
        let waiting = |c: &Consumer| c.shared.waiting.load(Ordering::SeqCst);
        // (The flag a waiting consumer sets; a wake clears it.)
        c.shared.waiting.store(true, Ordering::SeqCst);
        // A read fills three blocks and starts the next: one wake, at its end.
        for i in 0..35 {
            p.push(i as f64, &[0.0]);
        }
        assert!(waiting(&c), "woken before the read's end");
        p.flush();
        assert!(!waiting(&c), "not woken at the read's end");
        let mut got = 0;
        while let Some(b) = c.pop() {
            got += b.len();
            c.recycle(b);
        }
        assert_eq!(got, 35);
        // A long read: woken as soon as four blocks wait.
        c.shared.waiting.store(true, Ordering::SeqCst);
        for i in 0..39 {
            p.push(i as f64, &[0.0]);
        }
        assert!(waiting(&c), "woken with three blocks waiting");
        p.push(39.0, &[0.0]);
        assert!(!waiting(&c), "four blocks waiting and not woken");
        // A read that published nothing wakes nobody.
        c.shared.waiting.store(true, Ordering::SeqCst);
        p.flush();
        assert!(waiting(&c));
    }

    #[test]
    fn a_waiting_consumer_is_woken_by_a_block_and_by_the_close() {
        let (mut p, mut c, _) = ring(2, 100, 10);
        let long = Duration::from_secs(60);
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            p.push(0.0, &[1.0, 2.0]);
            p.flush();
            std::thread::sleep(Duration::from_millis(50));
            drop(p);
        });
        let t = std::time::Instant::now();
        while c.pop().is_none() {
            c.wait(long);
        }
        while !c.is_finished() {
            c.wait(long);
        }
        h.join().unwrap();
        // Woken each time, not by the 60 s timeout.
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        // Nothing pending: a wait returns by its timeout.
        let (_p, mut c, _) = ring(2, 100, 10);
        let t = std::time::Instant::now();
        c.wait(Duration::from_millis(20));
        assert!(t.elapsed() >= Duration::from_millis(20));
    }
}
