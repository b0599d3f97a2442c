//! Serial decoding on the acquisition thread: OpenBCI Cyton packets and
//! ASCII lines turned into stamped frames in the ring, in channel-samples
//! per second. Reference measured in the same run: the same frames, already
//! decoded, pushed through the same sink (dejitter fit + ring), so the
//! ratio shows what decoding itself costs on top of delivering a frame.
//!
//! Input: 10 s of an 8-channel 250 Hz stream, handed over in 512-byte
//! reads with receive times as a serial port would give them.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use neuroedge::batch::Marker;
use neuroedge::clock;
use neuroedge::ring;
use neuroedge::source::openbci_cyton::{Decoder, PACKET_LEN, SCALE_UV};
use neuroedge::source::serial_ascii::LineDecoder;
use neuroedge::source::{Sink, Timing};

const RATE: f64 = 250.0;
const CHANNELS: usize = 8;
const FRAMES: usize = 2500;
const READ: usize = 512;

fn cyton_stream() -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::with_capacity(FRAMES * PACKET_LEN);
    let mut values = Vec::with_capacity(FRAMES * CHANNELS);
    for n in 0..FRAMES {
        bytes.push(0xA0);
        bytes.push((n % 256) as u8);
        for ch in 0..CHANNELS {
            let counts = ((n * 7919 + ch * 104_729) % 16_000_000) as i32 - 8_000_000;
            let u = counts as u32;
            bytes.extend_from_slice(&[(u >> 16) as u8, (u >> 8) as u8, u as u8]);
            values.push((f64::from(counts) * SCALE_UV) as f32);
        }
        bytes.extend_from_slice(&[0; 6]);
        bytes.push(0xC0);
    }
    (bytes, values)
}

fn ascii_stream() -> Vec<u8> {
    let mut text = String::new();
    for n in 0..FRAMES {
        for ch in 0..CHANNELS {
            let v = ((n * 31 + ch * 17) % 20_000) as f32 / 100.0 - 100.0;
            if ch > 0 {
                text.push(',');
            }
            text.push_str(&format!("{v}"));
        }
        text.push('\n');
    }
    text.into_bytes()
}

/// A sink over a fresh ring; `each` gets it and the ring's consumer,
/// drained after every read as the processing thread would.
fn with_sink(mut run: impl FnMut(&mut Sink<'_>, &mut ring::Consumer)) {
    let (mut producer, mut consumer, _) = ring::ring(CHANNELS, 4096, 25);
    let (markers, _rx) = crossbeam_channel::bounded::<Marker>(16);
    let mut timing = Timing::new(RATE);
    let mut sink = Sink {
        frames: &mut producer,
        markers: &markers,
        timing: &mut timing,
        clock: clock::global(),
        outlets: &Default::default(),
        view: None,
    };
    run(&mut sink, &mut consumer);
}

fn drain(sink: &mut Sink<'_>, consumer: &mut ring::Consumer) -> usize {
    sink.frames.flush();
    let mut n = 0;
    while let Some(b) = consumer.pop() {
        n += b.len();
        consumer.recycle(b);
    }
    n
}

/// Receive time of the read ending at byte `end` of a stream of
/// `frame_bytes`-byte frames.
fn read_time(end: usize, frame_bytes: f64) -> f64 {
    1000.0 + end as f64 / frame_bytes / RATE
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements((FRAMES * CHANNELS) as u64));
    g.sample_size(30);

    let (cyton, cyton_values) = cyton_stream();
    g.bench_function("cyton_packets_to_ring", |b| {
        b.iter(|| {
            let mut frames = 0;
            with_sink(|sink, consumer| {
                let mut dec = Decoder::new(false);
                for (i, chunk) in cyton.chunks(READ).enumerate() {
                    let space = dec.space();
                    space[..chunk.len()].copy_from_slice(chunk);
                    let end = i * READ + chunk.len();
                    dec.received(chunk.len(), read_time(end, PACKET_LEN as f64));
                    dec.decode(sink);
                    frames += drain(sink, consumer);
                }
            });
            assert_eq!(frames, FRAMES);
            black_box(frames)
        })
    });

    let ascii = ascii_stream();
    let line_bytes = ascii.len() as f64 / FRAMES as f64;
    g.bench_function("ascii_lines_to_ring", |b| {
        b.iter(|| {
            let mut frames = 0;
            with_sink(|sink, consumer| {
                let mut dec = LineDecoder::new(CHANNELS, ",");
                // The decoder drops the first partial line after a
                // (re)connect: start with a line end, as after a real one.
                dec.feed(b"\n", read_time(0, line_bytes), &mut |t, v| {
                    sink.push_received(t, v)
                });
                for (i, chunk) in ascii.chunks(READ).enumerate() {
                    let t = read_time(i * READ + chunk.len(), line_bytes);
                    dec.feed(chunk, t, &mut |t, v| sink.push_received(t, v));
                    frames += drain(sink, consumer);
                }
            });
            assert_eq!(frames, FRAMES);
            black_box(frames)
        })
    });

    // Reference: the decoded frames pushed through the same sink, with the
    // receive times of the Cyton run's reads.
    g.bench_function("reference_decoded_frames_to_ring", |b| {
        b.iter(|| {
            let mut frames = 0;
            with_sink(|sink, consumer| {
                let per_read = READ / PACKET_LEN;
                for (i, chunk) in cyton_values.chunks(per_read * CHANNELS).enumerate() {
                    let end = (i * per_read + chunk.len() / CHANNELS) * PACKET_LEN;
                    let t = read_time(end, PACKET_LEN as f64);
                    for frame in chunk.chunks_exact(CHANNELS) {
                        sink.push_received(t, frame);
                    }
                    frames += drain(sink, consumer);
                }
            });
            assert_eq!(frames, FRAMES);
            black_box(frames)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
