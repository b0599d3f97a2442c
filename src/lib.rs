//! neuroedge: an acquisition daemon for EEG / brain-computer-interface
//! hardware.
//!
//! # Flow
//!
//! Data moves one way; stages own their state and share only queues,
//! watch channels and atomic counters:
//!
//! ```text
//! device ─(acquisition thread `acq-<id>`)─► ring ─► processing thread `dsp-<id>`
//!   filter chain ─ features/quality ─ batcher
//!     ├─► outlet queue ─► LSL outlet thread `lsl-out-<id>` (owns the liblsl outlets)
//!     └─► journal queue ─► journal writer thread `journal` (owns SQLite)
//!                            └─(commit watch)─► uplink engine (tokio task) ─► HTTPS
//! telemetry atomics + journal/uplink status ─► typed status report ─► socket, /metrics, health, CLI
//! journal reader (read-only connections) ─► export, `journal` commands, uplink paging
//! ```
//!
//! # Threads and who owns what
//!
//! - Per device, the **acquisition thread** ([`device::runner`]) owns the
//!   driver ([`source`]) and the ring's producer; it opens, reads,
//!   reconnects with [`backoff::Backoff`] and decides the device's state
//!   (the one stall rule). It never touches disk, network or sockets.
//! - Per device, the **processing thread** ([`pipeline`]) owns the filter
//!   and feature state and the open batch. It allocates nothing per sample.
//! - Per device with `[lsl_outlet]`, the **outlet thread** ([`outlet`])
//!   owns the liblsl stream infos and outlets; it takes pooled buffers off
//!   its queue, restamps them on LSL's clock and pushes them.
//! - The **journal writer thread** ([`journal::writer`]) owns the SQLite
//!   connection that writes: it seals (seq is assigned at commit), enforces
//!   the quota and applies the uplink's verdicts.
//! - The **supervisor thread** ([`device::supervisor`]) owns the device
//!   handles and applies reloads; it publishes the running set in a
//!   [`telemetry::DeviceRegistry`].
//! - A two-worker **tokio runtime** runs the status socket and metrics
//!   ([`control`]), the uplink engine ([`uplink`]), the systemd notifier and
//!   the wall-clock watch ([`daemon`]).
//!
//! # What happens when a queue is full
//!
//! | queue | bound | when full |
//! | --- | --- | --- |
//! | ring (acquisition → processing) | `[buffer] ring_seconds` of frames | the **oldest** frames are dropped, counted (`dropped_samples`) and become an `overflow` gap |
//! | marker queue (socket/driver → processing) | 1024 markers | the new marker is dropped with a warning; `mark` answers with an error |
//! | LSL outlet queue (processing → outlet thread) | 64 blocks, features or markers (pooled buffers, ≤ 64 MiB) | the new one is dropped and counted (`outlets.<stream>.dropped`); never waited on; the journal keeps everything |
//! | journal queue (processing → writer) | 64 batches | the batch is dropped, counted, and carried as a `journal` gap into the device's next batch (never waits; only the unpaced synthetic source waits instead) |
//! | writer's unsealed queue (a failing disk) | 64 MiB | the writer stops taking batches: the journal queue fills (above) |
//! | quota (`[journal] max_bytes`) | bytes on disk | `when_full`: evict the oldest (uploaded first), or refuse the new batch; counted, logged, audited |
//! | audit queue | 4096 records | the record is lost with a warning |
//! | upload verdicts (uplink → writer) | 65 536 | the engine keeps them and retries |
//! | uplink backlog in memory | 128 batches / 4 MiB per device, 1024 / 16 MiB in all | rows are left in the journal and read again later |
//! | status socket / metrics connections | 256 / 64 | new connections wait for a slot |
//! | systemd notify socket | the reader's queue (10 datagrams by default) | the notification is dropped and counted (`systemd.notify_dropped`); never waited on |
//!
//! A committed batch is never lost: it leaves the journal only after its
//! upload was acknowledged and `retain_uploaded` passed, or by quota
//! eviction (audited). See `../docs/` for each stage.
// `deny`, not `forbid`: the vendor C APIs loaded at run time are the only
// modules allowed unsafe code, one per API, each block with a SAFETY comment:
// src/source/brainflow_ffi.rs (BrainFlow), src/lsl_ffi.rs (liblsl) and
// src/malloc.rs (glibc's allocator tuning).
#![deny(unsafe_code)]

pub mod backoff;
pub mod batch;
pub mod bench;
pub mod clock;
pub mod config;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod device;
pub mod dsp;
pub mod export;
pub mod journal;
pub mod logging;
pub mod lsl_ffi;
pub mod malloc;
pub mod notify;
pub mod outlet;
pub mod pipeline;
pub mod ring;
pub mod source;
pub mod stream;
pub mod sync;
pub mod telemetry;
pub mod units;
pub mod uplink;
pub mod validate;
pub mod view;
