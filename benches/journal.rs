//! Seal + journal: one-second 8-channel 250 Hz batches sealed (zstd +
//! AES-256-GCM) and committed by the real writer thread, in batches/s.
//! References in the same run: sealing alone, and a bare SQLite insert of
//! blobs of the same size (sync = full) without neuroedge.

mod common;
use common::one_second_batch;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use neuroedge::batch::{seal, BatchData, SealParams};
use neuroedge::config::{SyncMode, WhenFull};
use neuroedge::crypto::{BatchKey, Keyring};
use neuroedge::journal::{self, writer::WriterConfig, Journal};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(1));
    let key = BatchKey::from_bytes(&[9u8; 32]);
    let batch = one_second_batch("bench", 0);
    g.bench_function("seal_1s_8ch_250hz", |b| {
        b.iter(|| {
            let p = SealParams {
                batch_id: "x".into(),
                site_id: "lab",
                node_id: "node",
                seq: 1,
                created_at: 0.0,
                compress: true,
                format: neuroedge::batch::BatchFormat::V2,
            };
            black_box(seal(&key, &p, &batch).map(|x| x.0.len()).unwrap_or(0))
        })
    });
    let sealed_len = {
        let p = SealParams {
            batch_id: "x".into(),
            site_id: "lab",
            node_id: "node",
            seq: 1,
            created_at: 0.0,
            compress: true,
            format: neuroedge::batch::BatchFormat::V2,
        };
        seal(&key, &p, &batch).map(|x| x.0.len()).unwrap_or(1)
    };

    for sync in [SyncMode::Full, SyncMode::Normal] {
        let name = format!(
            "seal_and_commit_{}",
            if sync == SyncMode::Full {
                "sync_full"
            } else {
                "sync_normal"
            }
        );
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let dir = tempfile::tempdir().expect("tempdir");
                let j = Journal::open(&dir.path().join("j.db"), sync).expect("journal");
                let w = journal::spawn_writer(
                    j,
                    Arc::new(Keyring::new(BatchKey::from_bytes(&[9u8; 32]))),
                    WriterConfig {
                        site_id: "lab".into(),
                        node_id: "node".into(),
                        max_bytes: u64::MAX / 2,
                        when_full: WhenFull::DropOldest,
                        retain_uploaded: Duration::from_secs(3600),
                        max_queue_bytes: u64::MAX / 2,
                        compress: true,
                        format: neuroedge::batch::BatchFormat::V2,
                    },
                )
                .expect("writer");
                let tx = w.sender();
                let batches: Vec<BatchData> = (0..iters)
                    .map(|i| one_second_batch("bench", i * 250))
                    .collect();
                let start = Instant::now();
                for b in batches {
                    // The writer's queue is bounded: wait for room.
                    while !tx.try_send_batch(b.clone()) {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                while tx.shared().snapshot().committed_batches < iters {
                    std::thread::sleep(Duration::from_micros(200));
                }
                let el = start.elapsed();
                w.shutdown();
                el
            })
        });
    }

    g.bench_function("reference_bare_sqlite_insert_sync_full", |b| {
        b.iter_custom(|iters| {
            let dir = tempfile::tempdir().expect("tempdir");
            let conn = rusqlite::Connection::open(dir.path().join("ref.db")).expect("db");
            conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
                .expect("schema");
            let blob = vec![7u8; sealed_len];
            let start = Instant::now();
            for _ in 0..iters {
                conn.execute("INSERT INTO t (b) VALUES (?1)", [&blob]).expect("insert");
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
