//! Wiring: config -> key -> journal -> writer -> devices -> socket; then
//! signals, and an orderly shutdown (stop sources, drain rings, seal the
//! partial batches, close the journal).

use crate::config::Config;
use crate::control::{self, DaemonState};
use crate::crypto::{self, KeyError, Keyring};
use crate::journal::{self, writer::WriterConfig, AuditEvent, Journal};
use crate::source::runner::{self, DeviceContext};
use crate::state::DeviceStats;
use std::sync::{Arc, RwLock};
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

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> Result<(), DaemonError> {
    let epoch = Instant::now();
    let (keyring, key_created) = load_keyring(&cfg)?;
    let key_id = keyring.current().id().to_string();
    if key_created {
        tracing::warn!(key_file = %cfg.daemon.crypto.key_file.display(), key_id = %key_id, "generated a new batch key; back it up: batches cannot be read without it");
    }
    let jcfg = &cfg.daemon.journal;
    let journal = Journal::open(&jcfg.path, jcfg.sync)?;
    let cursors = journal.cursors()?;
    tracing::info!(path = %jcfg.path.display(), devices_known = cursors.len(), "journal open and checked");
    let writer = journal::spawn_writer(
        journal,
        Arc::new(keyring),
        WriterConfig {
            site_id: cfg.daemon.daemon.site_id.clone(),
            node_id: cfg.node_id.clone(),
            max_bytes: jcfg.max_bytes.0,
            when_full: jcfg.when_full,
            retain_uploaded: jcfg.retain_uploaded.0,
            max_queue_bytes: 64 * 1024 * 1024,
            compress: true,
        },
    )?;
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
    let state = Arc::new(DaemonState {
        version: VERSION,
        started: epoch,
        node_id: cfg.node_id.clone(),
        site_id: cfg.daemon.daemon.site_id.clone(),
        devices: RwLock::new(Vec::new()),
        journal: jtx.shared().clone(),
        uplink: uplink_shared.clone(),
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("neuroedge-io")
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Other(format!("cannot start the async runtime: {e}")))?;

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
            crate::uplink::EngineOptions::default(),
        )
    });

    let mut handles = Vec::new();
    let mut stats: Vec<Arc<DeviceStats>> = Vec::new();
    for dev in &cfg.devices {
        if !dev.enabled {
            stats.push(Arc::new(DeviceStats::new(
                &dev.id,
                dev.driver.name(),
                false,
            )));
            continue;
        }
        let ctx = DeviceContext {
            journal: jtx.clone(),
            batch_seconds: jcfg.batch_seconds,
            first_sample: cursors.get(&dev.id).map_or(0, |c| c.next_sample),
            epoch,
        };
        match runner::spawn(dev.clone(), ctx) {
            Ok(h) => {
                tracing::info!(device = %dev.id, driver = dev.driver.name(), file = %dev.file.display(), "device started");
                stats.push(h.stats.clone());
                handles.push(h);
            }
            Err(e) => tracing::error!(device = %dev.id, error = %e, "cannot start device thread"),
        }
    }
    if let Ok(mut d) = state.devices.write() {
        *d = stats;
    }
    tracing::info!(socket = %socket_path.display(), devices = handles.len(), node_id = %cfg.node_id, "neuroedge {VERSION} running");

    let serve_state = state.clone();
    rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(control::serve(listener, serve_state, async {
            let _ = stop_rx.await;
        }));
        wait_for_shutdown_signal().await;
        let _ = stop_tx.send(());
        let _ = server.await;
    });

    tracing::info!("shutting down: stopping devices");
    for h in &handles {
        h.request_stop();
    }
    for h in handles {
        h.join();
    }
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

async fn wait_for_shutdown_signal() {
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
            _ = hup.recv() => tracing::warn!("SIGHUP received: live reload is not available in this version; restart to apply device changes"),
        }
    }
}
