//! Wiring: config -> key -> journal -> writer -> devices -> socket; then
//! signals, and an orderly shutdown (stop sources, drain rings, seal the
//! partial batches, close the journal).

use crate::config::Config;
use crate::control::{self, DaemonState};
use crate::crypto::{self, KeyError, Keyring};
use crate::device::{Command, Supervisor};
use crate::journal::{self, writer::WriterConfig, AuditEvent, Journal};
use crate::telemetry::DeviceRegistry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Socket(#[from] control::SocketError),
    #[error("{0}")]
    Other(String),
}

/// Load the current key (creating it if allowed) and previous keys.
pub fn load_keyring(cfg: &Config) -> Result<(Keyring, bool), KeyError> {
    let c = &cfg.daemon.crypto;
    let (current, created) = match crypto::load_key_file(&c.key_file) {
        Ok(k) => (k, false),
        Err(KeyError::Missing { .. }) if c.generate_if_missing => {
            (crypto::generate_key_file(&c.key_file)?, true)
        }
        Err(e) => return Err(e),
    };
    let mut ring = Keyring::new(current);
    for p in &c.previous_key_files {
        ring.add(crypto::load_key_file(p)?);
    }
    Ok((ring, created))
}

/// Every [`crate::malloc::TRIM_EVERY`], hand the heap's free pages back to
/// the kernel (on the blocking pool: it takes the allocator's locks).
async fn release_free_memory_periodically() {
    let mut every = tokio::time::interval(crate::malloc::TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let started = Instant::now();
        let released = tokio::task::spawn_blocking(crate::malloc::release_free_memory)
            .await
            .unwrap_or(false);
        tracing::debug!(
            released,
            took_us = started.elapsed().as_micros() as u64,
            "heap trimmed"
        );
    }
}

/// Prometheus /metrics and /health: bound before anything is served, so
/// a bad `[metrics] listen` stops the start (exit 1) with the reason.
fn bind_metrics(
    rt: &tokio::runtime::Runtime,
    listen: Option<&str>,
) -> Result<Option<tokio::net::TcpListener>, String> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let _in_runtime = rt.enter();
    let l = control::metrics::bind(listen)?;
    tokio::net::TcpListener::from_std(l)
        .map(Some)
        .map_err(|e| format!("[metrics] listen = {listen:?}: {e}"))
}

/// Channel-samples a second that the enabled devices' files declare in all
/// (drivers that learn their layout from the device count 0): what an
/// automatic journal page size follows.
fn declared_rate(cfg: &Config) -> f64 {
    cfg.enabled_devices()
        .filter_map(|d| d.declared_layout())
        .map(|(rate, channels)| rate * channels as f64)
        .sum()
}

/// Open the journal (a new file's pages following the devices' declared
/// rate) and start its writer; also what it knows of each device.
fn start_journal(
    cfg: &Config,
    keyring: Arc<Keyring>,
) -> Result<
    (
        journal::WriterHandle,
        HashMap<String, journal::DeviceCursor>,
    ),
    DaemonError,
> {
    let jcfg = &cfg.daemon.journal;
    let page_size = jcfg.page_size(declared_rate(cfg));
    let journal = Journal::open_with(&jcfg.path, jcfg.sync, page_size)?;
    let cursors = journal.cursors()?;
    tracing::info!(
        path = %jcfg.path.display(),
        devices_known = cursors.len(),
        page_kib = journal.page_size()? / 1024,
        "journal open and checked"
    );
    let writer = journal::spawn_writer(
        journal,
        keyring,
        WriterConfig {
            site_id: cfg.daemon.daemon.site_id.clone(),
            node_id: cfg.node_id.clone(),
            max_bytes: jcfg.max_bytes.0,
            when_full: jcfg.when_full,
            retain_uploaded: jcfg.retain_uploaded.0,
            max_queue_bytes: 64 * 1024 * 1024,
            compress: true,
            format: jcfg.format(),
        },
    )?;
    Ok((writer, cursors))
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> Result<(), DaemonError> {
    let epoch = Instant::now();
    // Before the daemon's threads exist (see crate::malloc).
    crate::malloc::tune();
    let (keyring, key_created) = load_keyring(&cfg)?;
    let keyring = Arc::new(keyring);
    let key_id = keyring.current().id().to_string();
    if key_created {
        tracing::warn!(key_file = %cfg.daemon.crypto.key_file.display(), key_id = %key_id, "generated a new batch key; back it up: batches cannot be read without it");
    }
    let jcfg = &cfg.daemon.journal;
    let (writer, cursors) = start_journal(&cfg, keyring.clone())?;
    let jtx = writer.sender();
    if key_created {
        jtx.audit(AuditEvent::new(
            "key_created",
            None,
            serde_json::json!({"key_id": key_id}),
        ));
    }
    jtx.audit(AuditEvent::new(
        "daemon_start",
        None,
        serde_json::json!({"version": VERSION, "pid": std::process::id(), "config": cfg.path.display().to_string(), "key_id": key_id}),
    ));

    let uplink_shared = Arc::new(if cfg.daemon.uplink.enabled {
        crate::uplink::UplinkShared::starting()
    } else {
        crate::uplink::UplinkShared::disabled()
    });
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded::<Command>();
    let registry = Arc::new(DeviceRegistry::default());
    let reload_tx = cmd_tx.clone();
    let state = Arc::new(DaemonState {
        version: VERSION,
        started: epoch,
        node_id: cfg.node_id.clone(),
        site_id: cfg.daemon.daemon.site_id.clone(),
        devices: registry.clone(),
        journal: jtx.shared().clone(),
        uplink: uplink_shared.clone(),
        reload: Some(Box::new(move |reply| {
            reload_tx.send(Command::Reload(Some(reply))).is_ok()
        })),
        control_uids: cfg.daemon.status.control_uids.clone(),
        subscribers: Default::default(),
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("neuroedge-io")
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Other(format!("cannot start the async runtime: {e}")))?;

    let metrics_listener = match bind_metrics(&rt, cfg.daemon.metrics.listen.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            writer.shutdown();
            return Err(DaemonError::Other(e));
        }
    };

    let socket_path = cfg.daemon.status.socket.clone();
    let mode = crate::config::parse_socket_mode(&cfg.daemon.status.socket_mode).unwrap_or(0o660);
    let listener = match rt.block_on(async { control::bind(&socket_path, mode) }) {
        Ok(l) => l,
        Err(e) => {
            writer.shutdown();
            return Err(e.into());
        }
    };

    let uplink = cfg.daemon.uplink.enabled.then(|| {
        crate::uplink::spawn(
            rt.handle(),
            cfg.daemon.uplink.clone(),
            jcfg.path.clone(),
            jtx.clone(),
            uplink_shared.clone(),
            crate::uplink::EngineOptions {
                keys: Some(keyring.clone()),
                ..Default::default()
            },
        )
    });

    let next_sample: HashMap<String, u64> = cursors
        .iter()
        .map(|(id, c)| (id.clone(), c.next_sample))
        .collect();
    let mut supervisor = Supervisor::new(&cfg, jtx.clone(), next_sample, registry);
    supervisor.start(&cfg.devices);
    let enabled = cfg.devices.iter().filter(|d| d.enabled).count();
    let supervisor = std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || supervisor.run(cmd_rx))
        .map_err(|e| DaemonError::Other(format!("cannot start the supervisor thread: {e}")))?;
    tracing::info!(socket = %socket_path.display(), devices = enabled, node_id = %cfg.node_id, "neuroedge {VERSION} running");

    let notify = Notifier::from_env();
    rt.block_on(serve_until_signal(
        state.clone(),
        listener,
        metrics_listener,
        control::Limits::from_config(&cfg.daemon.status),
        notify.clone(),
        jtx.clone(),
        cmd_tx.clone(),
    ));
    notify.send("STOPPING=1");

    tracing::info!("shutting down: stopping devices");
    let _ = cmd_tx.send(Command::Stop);
    let _ = supervisor.join();
    jtx.audit(AuditEvent::new(
        "daemon_stop",
        None,
        serde_json::json!({"uptime_s": epoch.elapsed().as_secs_f64()}),
    ));
    if let Some(u) = uplink {
        tracing::info!("devices stopped; stopping the uplink");
        rt.block_on(u.stop());
    }
    tracing::info!("devices stopped; closing the journal");
    writer.shutdown();
    let _ = std::fs::remove_file(&socket_path);
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    tracing::info!("neuroedge stopped cleanly");
    Ok(())
}

/// Serve the status socket (and /metrics) with the daemon's background
/// tasks (watchdog, wall-clock watch, heap trim) until SIGTERM/SIGINT,
/// then stop serving.
async fn serve_until_signal(
    state: Arc<DaemonState>,
    listener: tokio::net::UnixListener,
    metrics: Option<tokio::net::TcpListener>,
    limits: control::Limits,
    notify: Notifier,
    journal: crate::journal::JournalTx,
    commands: crossbeam_channel::Sender<Command>,
) {
    if let Some(l) = metrics {
        tokio::spawn(control::metrics::serve(l, state.clone()));
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(control::serve(listener, state.clone(), limits, async {
        let _ = stop_rx.await;
    }));
    // The journal is open and checked, the socket answers, devices are
    // starting: ready.
    let background = [
        tokio::spawn(notify.run(state)),
        tokio::spawn(watch_wall_clock(journal)),
        tokio::spawn(release_free_memory_periodically()),
    ];
    wait_for_shutdown_signal(&commands).await;
    for task in background {
        task.abort();
    }
    let _ = stop_tx.send(());
    let _ = server.await;
}

/// Notice wall-clock steps (NTP on a machine without RTC): log, audit,
/// and the batches being filled record them (see `crate::clock`).
async fn watch_wall_clock(journal: crate::journal::JournalTx) {
    let clock = crate::clock::global();
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        interval.tick().await;
        if let Some(step) = clock.check_wall(crate::clock::wall_unix()) {
            tracing::warn!(
                step_s = step.step_s,
                applied_s = step.applied_s,
                "wall clock stepped; timestamps stay monotonic (forward steps are followed, backward ones only recorded)"
            );
            journal.audit(AuditEvent::new(
                "clock_step",
                None,
                serde_json::json!({"t": step.t, "step_s": step.step_s, "applied_s": step.applied_s}),
            ));
        }
    }
}

/// Wait for SIGTERM/SIGINT; SIGHUP reloads the device files meanwhile.
async fn wait_for_shutdown_signal(commands: &crossbeam_channel::Sender<Command>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL only");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return; }
            _ = int.recv() => { tracing::info!("SIGINT received"); return; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading device files");
                let _ = commands.send(Command::Reload(None));
            }
        }
    }
}

/// systemd notifications (Type=notify): READY once running, STATUS= with
/// the devices and backlog, WATCHDOG=1 only while the pipeline turns.
/// Without NOTIFY_SOCKET every call is a no-op; sending never waits
/// (see `crate::notify`).
#[derive(Clone)]
struct Notifier {
    socket: Option<Arc<crate::notify::NotifySocket>>,
    /// The watchdog interval systemd set (WatchdogSec), if any.
    watchdog: Option<std::time::Duration>,
}

impl Notifier {
    fn from_env() -> Self {
        let socket = match crate::notify::NotifySocket::from_env() {
            None => None,
            Some(Ok(s)) => Some(Arc::new(s)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is set but cannot be connected; not notifying systemd");
                None
            }
        };
        // As sd_watchdog_enabled(3): WATCHDOG_USEC, and WATCHDOG_PID if
        // set must be ours (a variable inherited from a parent is not).
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|u| *u > 0);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = usec
            .filter(|_| socket.is_some() && for_us)
            .map(std::time::Duration::from_micros);
        Notifier { socket, watchdog }
    }

    fn send(&self, msg: &str) {
        if let Some(s) = &self.socket {
            s.send(msg);
        }
    }

    async fn run(self, state: Arc<DaemonState>) {
        if self.socket.is_none() {
            return;
        }
        self.send("READY=1");
        tracing::info!(
            watchdog_s = self.watchdog.map(|w| w.as_secs_f64()),
            "systemd notified: ready"
        );
        // Check (and ping) several times per interval. A thread silent for
        // half the interval (at most 10 s: the writer may legitimately
        // wait 5 s on a lock) means the pipeline is stuck, and systemd
        // should restart us. After a stall, pings resume only once the
        // pipeline has turned for that long again (no flapping).
        let tick = self
            .watchdog
            .map_or(std::time::Duration::from_secs(5), |w| {
                (w / 4).clamp(
                    std::time::Duration::from_millis(50),
                    std::time::Duration::from_secs(1),
                )
            });
        let max_age = self
            .watchdog
            .map_or(10.0, |w| (w.as_secs_f64() / 2.0).clamp(1.0, 10.0));
        let mut last_status = state.status_line();
        let mut withheld = false;
        let mut healthy_since: Option<Instant> = None;
        let mut interval = tokio::time::interval(tick);
        loop {
            interval.tick().await;
            let line = state.status_line();
            if line != last_status {
                self.send(&format!("STATUS={line}"));
                last_status = line;
            }
            if self.watchdog.is_none() {
                continue;
            }
            match state.pipeline_alive(max_age) {
                Ok(()) => {
                    let since = *healthy_since.get_or_insert_with(Instant::now);
                    if withheld {
                        if since.elapsed().as_secs_f64() < max_age {
                            continue;
                        }
                        tracing::info!("pipeline turning again: watchdog pings resumed");
                        withheld = false;
                    }
                    self.send("WATCHDOG=1");
                }
                Err(why) => {
                    healthy_since = None;
                    if !withheld {
                        tracing::error!(reason = %why, "pipeline stalled: withholding the systemd watchdog ping (systemd restarts neuroedge if this lasts)");
                        withheld = true;
                    }
                }
            }
        }
    }
}
