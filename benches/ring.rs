//! Ring throughput: frames through the lock-free ring (producer and consumer
//! on two threads), in channel-samples per second, against a reference
//! measured in the same run: a plain memcpy of the same data.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use neuroedge::ring;

const FRAMES: usize = 100_000;

fn two_threads(channels: usize) {
    let (mut p, mut c, _) = ring::ring(channels, 16_384, 64);
    let frame = vec![1.5f32; channels];
    let consumer = std::thread::spawn(move || {
        let mut n = 0usize;
        let mut sum = 0.0f32;
        loop {
            match c.pop() {
                Some(b) => {
                    n += b.len();
                    sum += b.samples()[0];
                    c.recycle(b);
                }
                None if c.is_finished() => break,
                None => std::hint::spin_loop(),
            }
        }
        black_box(sum);
        n
    });
    for i in 0..FRAMES {
        // Back off instead of overwriting: the bench measures transfer, not loss.
        while p.nearly_full() {
            std::hint::spin_loop();
        }
        p.push(i as f64, &frame);
    }
    drop(p);
    let n = consumer.join().unwrap_or(0);
    assert_eq!(n, FRAMES);
}

fn memcpy_reference(channels: usize, dst: &mut Vec<f32>) {
    let frame = vec![1.5f32; channels];
    dst.clear();
    for _ in 0..FRAMES {
        dst.extend_from_slice(black_box(&frame));
    }
    black_box(dst.len());
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.sample_size(20);
    for channels in [8usize, 64] {
        g.throughput(Throughput::Elements((FRAMES * channels) as u64));
        g.bench_with_input(
            BenchmarkId::new("spsc_two_threads", channels),
            &channels,
            |b, &ch| b.iter(|| two_threads(ch)),
        );
        let mut dst = Vec::with_capacity(FRAMES * channels);
        g.bench_with_input(
            BenchmarkId::new("reference_memcpy", channels),
            &channels,
            |b, &ch| b.iter(|| memcpy_reference(ch, &mut dst)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
