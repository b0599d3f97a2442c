//! The set of running devices, and live reload of the device files.
//!
//! One thread owns every device handle. A reload (SIGHUP or the socket's
//! `reload`) reloads the whole config; if any file is invalid nothing
//! changes and the problems are reported. Otherwise devices are compared by
//! id: removed ones are stopped (their partial batch is sealed), added ones
//! started, changed ones restarted; the others are not touched. Daemon
//! settings (`neuroedge.toml` sections) need a restart; a reload says so.

use super::runner::{self, DeviceContext, DeviceHandle};
use crate::batch::Marker;
use crate::config::{Config, DeviceConfig};
use crate::journal::{AuditEvent, JournalTx};
use crate::telemetry::{DeviceRegistry, DeviceStats};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// What a reload changes, by device id (each list in file order).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same id, different settings: restarted (its sample index continues).
    pub changed: Vec<String>,
    /// Same id, only `[lsl_outlet]` differs: its outlets are re-created,
    /// the device itself goes on.
    pub outlets_changed: Vec<String>,
    /// Not touched at all.
    pub unchanged: Vec<String>,
}

/// Compare the running device files with the new ones, by id.
pub fn plan(old: &[DeviceConfig], new: &[DeviceConfig]) -> ReloadPlan {
    let mut p = ReloadPlan::default();
    for d in new {
        match old.iter().find(|o| o.id == d.id) {
            Some(o) if o == d => p.unchanged.push(d.id.clone()),
            Some(o) if o.differs_only_in_outlets(d) && o.enabled => {
                p.outlets_changed.push(d.id.clone())
            }
            Some(_) => p.changed.push(d.id.clone()),
            None => p.added.push(d.id.clone()),
        }
    }
    p.removed = old
        .iter()
        .filter(|o| !new.iter().any(|d| d.id == o.id))
        .map(|o| o.id.clone())
        .collect();
    p
}

/// What the supervisor thread is asked to do.
pub enum Command {
    /// Reload the config; the answer goes to `reply` when given.
    Reload(Option<tokio::sync::oneshot::Sender<Value>>),
    /// Stop every device and return.
    Stop,
}

struct Running {
    cfg: DeviceConfig,
    handle: Option<DeviceHandle>,
    stats: Arc<DeviceStats>,
}

pub struct Supervisor {
    config_path: PathBuf,
    daemon: crate::config::DaemonConfig,
    journal: JournalTx,
    batch_seconds: f64,
    store_filtered: bool,
    /// Next journal-wide sample index per device id (continues across
    /// restarts of a device within the run and across runs).
    next_sample: HashMap<String, u64>,
    devices: Vec<Running>,
    /// Where the running set is shown to the control plane.
    registry: Arc<DeviceRegistry>,
    /// In the LSL outlets' source ids.
    node_id: String,
}

impl Supervisor {
    pub fn new(
        cfg: &Config,
        journal: JournalTx,
        next_sample: HashMap<String, u64>,
        registry: Arc<DeviceRegistry>,
    ) -> Self {
        Supervisor {
            config_path: cfg.path.clone(),
            daemon: cfg.daemon.clone(),
            journal,
            batch_seconds: cfg.daemon.journal.batch_seconds,
            store_filtered: cfg.daemon.journal.stores_filtered(),
            next_sample,
            devices: Vec::new(),
            registry,
            node_id: cfg.node_id.clone(),
        }
    }

    /// Start the devices of the initial config.
    pub fn start(&mut self, devices: &[DeviceConfig]) {
        for d in devices {
            let r = self.launch(d.clone());
            self.devices.push(r);
        }
        self.publish();
    }

    /// Serve commands until told to stop; then stop every device.
    pub fn run(mut self, commands: crossbeam_channel::Receiver<Command>) {
        while let Ok(cmd) = commands.recv() {
            match cmd {
                Command::Reload(reply) => {
                    let answer = self.reload();
                    if let Some(r) = reply {
                        let _ = r.send(answer);
                    }
                }
                Command::Stop => break,
            }
        }
        self.stop_all();
    }

    fn launch(&mut self, cfg: DeviceConfig) -> Running {
        if !cfg.enabled {
            return Running {
                stats: Arc::new(DeviceStats::new(&cfg.id, cfg.driver.name(), false)),
                cfg,
                handle: None,
            };
        }
        let ctx = DeviceContext {
            journal: self.journal.clone(),
            batch_seconds: self.batch_seconds,
            store_filtered: self.store_filtered,
            first_sample: self.next_sample.get(&cfg.id).copied().unwrap_or(0),
            timing: Default::default(),
            node_id: self.node_id.clone(),
        };
        match runner::spawn(cfg.clone(), ctx) {
            Ok(h) => {
                tracing::info!(device = %cfg.id, driver = cfg.driver.name(), file = %cfg.file.display(), "device started");
                Running {
                    stats: h.stats.clone(),
                    cfg,
                    handle: Some(h),
                }
            }
            Err(e) => {
                tracing::error!(device = %cfg.id, error = %e, "cannot start device thread");
                let stats = Arc::new(DeviceStats::new(&cfg.id, cfg.driver.name(), true));
                stats.set_state(crate::telemetry::DeviceState::Error);
                stats.set_error(Some(format!("cannot start device thread: {e}")));
                Running {
                    stats,
                    cfg,
                    handle: None,
                }
            }
        }
    }

    /// Stop a device and remember where its sample index ended.
    fn stop(&mut self, r: Running) {
        if let Some(h) = r.handle {
            h.join();
            let next = r.stats.next_sample();
            if let Some(n) = next {
                self.next_sample.insert(r.cfg.id.clone(), n);
            }
            tracing::info!(device = %r.cfg.id, "device stopped");
        }
    }

    fn stop_all(&mut self) {
        for r in &self.devices {
            if let Some(h) = &r.handle {
                h.request_stop();
            }
        }
        let all = std::mem::take(&mut self.devices);
        for r in all {
            self.stop(r);
        }
        self.publish();
    }

    /// Show the current device list to the socket, metrics and `mark`.
    fn publish(&self) {
        let markers: HashMap<String, crossbeam_channel::Sender<Marker>> = self
            .devices
            .iter()
            .filter_map(|r| Some((r.cfg.id.clone(), r.handle.as_ref()?.markers.clone())))
            .collect();
        self.registry.publish(
            self.devices.iter().map(|r| r.stats.clone()).collect(),
            markers,
        );
    }

    /// A device whose `[lsl_outlet]` alone changed: new outlets, same run.
    fn reconfigure_outlets(mut r: Running, new: &DeviceConfig) -> Running {
        if let Some(h) = r.handle.as_mut() {
            h.set_outlets(&new.lsl_outlet);
            tracing::info!(device = %new.id, streams = ?new.lsl_outlet.streams, "LSL outlets re-created");
        }
        r.cfg = new.clone();
        r
    }

    fn reload(&mut self) -> Value {
        tracing::info!(config = %self.config_path.display(), "reloading the configuration");
        let new = match crate::config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                let problems: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
                tracing::error!(
                    problems = problems.len(),
                    "reload refused: the new configuration is invalid; the running one stays\n{}",
                    problems.join("\n")
                );
                self.journal.audit(AuditEvent::new(
                    "reload_refused",
                    None,
                    json!({"problems": problems}),
                ));
                return json!({
                    "error": "reload refused: the new configuration is invalid; the running configuration is unchanged",
                    "problems": problems,
                    "hint": "fix the files named above (neuroedge check-config shows the same), then reload again",
                });
            }
        };
        let mut restart_needed = Vec::new();
        if serde_json::to_value(&new.daemon).ok() != serde_json::to_value(&self.daemon).ok() {
            restart_needed.push(
                "daemon settings in neuroedge.toml changed: restart neuroedge to apply them"
                    .to_string(),
            );
        }
        let old_cfgs: Vec<DeviceConfig> = self.devices.iter().map(|r| r.cfg.clone()).collect();
        let plan = plan(&old_cfgs, &new.devices);
        let mut old: HashMap<String, Running> = std::mem::take(&mut self.devices)
            .into_iter()
            .map(|r| (r.cfg.id.clone(), r))
            .collect();
        // Stop what goes away or changes first (all asked at once, then
        // joined), then start what is new or changed.
        let to_stop: Vec<Running> = plan
            .removed
            .iter()
            .chain(&plan.changed)
            .filter_map(|id| old.remove(id))
            .collect();
        for r in &to_stop {
            if let Some(h) = &r.handle {
                h.request_stop();
            }
        }
        for r in to_stop {
            self.stop(r);
        }
        for d in &new.devices {
            let r = match old.remove(&d.id) {
                Some(r) if plan.outlets_changed.contains(&d.id) => Self::reconfigure_outlets(r, d),
                Some(r) => r,
                None => self.launch(d.clone()),
            };
            self.devices.push(r);
        }
        self.publish();
        let summary = json!({
            "added": plan.added, "removed": plan.removed, "changed": plan.changed,
            "outlets_changed": plan.outlets_changed, "unchanged": plan.unchanged,
        });
        tracing::info!(added = ?summary["added"], removed = ?summary["removed"], changed = ?summary["changed"], "configuration reloaded");
        for r in &restart_needed {
            tracing::warn!("{r}");
        }
        self.journal
            .audit(AuditEvent::new("reload", None, summary.clone()));
        json!({"ok": true, "devices": summary, "restart_needed": restart_needed})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, channels: usize) -> DeviceConfig {
        crate::config::parse_device(
            std::path::Path::new(&format!("{id}.toml")),
            format!("id = \"{id}\"\ndriver = \"synthetic\"\nenabled = true\n[connection]\nchannels = {channels}\n"),
        )
        .unwrap()
    }

    #[test]
    fn reload_plan_by_id() {
        let old = vec![dev("a", 4), dev("b", 2), dev("c", 8)];
        let new = vec![dev("c", 8), dev("a", 3), dev("d", 1)];
        let p = plan(&old, &new);
        assert_eq!(p.added, ["d"]);
        assert_eq!(p.removed, ["b"]);
        assert_eq!(p.changed, ["a"], "3 channels instead of 4");
        assert_eq!(p.unchanged, ["c"], "reordering files changes nothing");
        assert_eq!(plan(&new, &new).unchanged, ["c", "a", "d"]);
        // Disabling a device is a change (it stops).
        let mut off = dev("c", 8);
        off.enabled = false;
        assert_eq!(plan(&old, &[off]).changed, ["c"]);
        // Only [lsl_outlet] differs: the outlets are re-created, the
        // device is not restarted.
        let mut out = dev("c", 8);
        out.lsl_outlet.streams = vec!["filtered".into()];
        let p = plan(&old, &[out.clone()]);
        assert_eq!(
            (p.outlets_changed, p.changed),
            (vec!["c".to_string()], vec![])
        );
        // Outlets and anything else: a restart.
        out.channels.units = "mV".into();
        assert_eq!(plan(&old, &[out]).changed, ["c"]);
    }
}
