//! Helpers: a temp folder with a config and device files, the real binary
//! started on it, and a socket client.

use neuroedge::control::report::{DeviceReport, DeviceState, StatusReport};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_neuroedge");

pub struct Env {
    pub dir: tempfile::TempDir,
}

/// Tests that measure timing (jitter) take this exclusively; tests that
/// load both cores for a while (many daemon starts, fault injection,
/// high-rate devices, heavy Python readers) share it. So a timing figure is
/// not a measure of what else the test binary happened to run.
static QUIET: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// For a timing-sensitive test: no heavy test runs meanwhile.
pub fn quiet() -> std::sync::RwLockWriteGuard<'static, ()> {
    QUIET.write().unwrap_or_else(|e| e.into_inner())
}

/// For a heavy test: never beside a timing-sensitive one.
pub fn heavy() -> std::sync::RwLockReadGuard<'static, ()> {
    QUIET.read().unwrap_or_else(|e| e.into_inner())
}

/// Batch id → envelope of every batch a read-only reader sees committed
/// in `journal` now (empty before the journal or its schema exists).
pub fn committed_envelopes(journal: &Path) -> std::collections::HashMap<String, Vec<u8>> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let Ok(conn) = rusqlite::Connection::open_with_flags(journal, flags) else {
        return Default::default();
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let Ok(mut st) = conn.prepare("SELECT batch_id, envelope FROM batches") else {
        return Default::default();
    };
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

pub fn synthetic_device(id: &str, channels: usize, rate: f64, extra: &str) -> String {
    format!(
        "id = \"{id}\"\ndriver = \"synthetic\"\nenabled = true\n[connection]\nsample_rate = {rate:?}\nchannels = {channels}\nseed = 1\n{extra}"
    )
}

impl Env {
    /// A config with its journal at `journal` (relative to the folder) and
    /// the given extra daemon-config text.
    pub fn new(extra_config: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Env { dir };
        std::fs::create_dir_all(e.path().join("devices")).expect("devices dir");
        let base = String::from(
            "[daemon]\nsite_id = \"test-lab\"\nnode_id = \"test-node\"\ndevices_dir = \"devices\"\n\
             [crypto]\nkey_file = \"var/batch.key\"\ngenerate_if_missing = true\n\
             [status]\nsocket = \"var/run/ne.sock\"\n[log]\nlevel = \"info\"\n"
        );
        e.write("neuroedge.toml", &merge(&base, extra_config));
        e
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }

    pub fn config(&self) -> PathBuf {
        self.path().join("neuroedge.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("var/run/ne.sock")
    }

    pub fn journal(&self) -> PathBuf {
        self.path().join("var/journal.db")
    }

    pub fn key(&self) -> PathBuf {
        self.path().join("var/batch.key")
    }

    /// Every journaled batch of `device`, in seq order, opened with the
    /// Rust decoder and the test's key.
    pub fn device_batches(
        &self,
        device: &str,
    ) -> Vec<(neuroedge::batch::BatchHeader, neuroedge::batch::BatchData)> {
        use neuroedge::journal::reader::{ReadBatch, Selection};
        let keys = neuroedge::crypto::Keyring::new(
            neuroedge::crypto::load_key_file(&self.key()).expect("key"),
        );
        let j = neuroedge::journal::Journal::open_readonly(&self.journal()).expect("journal");
        // The filtered signal as stored or, by default, reproduced from raw.
        let sel = Selection {
            with_filtered: true,
            ..Selection::device(device)
        };
        j.read_batches(&keys, sel)
            .map(|r| match r.expect("journal read") {
                ReadBatch::Opened { header, data } => (header, data),
                ReadBatch::Unreadable(u) => panic!("batch {} does not open: {}", u.seq, u.reason),
            })
            .collect()
    }

    /// The `detail` of every audit event named `event`, oldest first.
    pub fn audit(&self, event: &str) -> Vec<Value> {
        let c = rusqlite::Connection::open_with_flags(
            self.journal(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("journal");
        let mut st = c
            .prepare("SELECT detail FROM audit WHERE event = ?1 ORDER BY id")
            .expect("prepare");
        st.query_map([event], |r| r.get::<_, String>(0))
            .expect("query")
            .map(|r| serde_json::from_str(&r.expect("row")).expect("json"))
            .collect()
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env_remove("NEUROEDGE_CONFIG")
            .output()
            .expect("run neuroedge")
    }

    pub fn spawn(&self) -> Daemon {
        self.spawn_with_env(&[])
    }

    /// Start the daemon with extra environment variables.
    pub fn spawn_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        self.spawn_wrapped(&[], env)
    }

    /// Start the daemon through `wrapper` (a command that execs the rest
    /// of its arguments, e.g. `ip netns exec NS`), with extra environment
    /// variables.
    pub fn spawn_wrapped(&self, wrapper: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = self.path().join(format!("daemon-{}.log", rand_suffix()));
        let f = std::fs::File::create(&log).expect("log file");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["run", "--config"])
            .arg(self.config())
            .env_remove("NEUROEDGE_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn daemon");
        Daemon {
            child,
            socket: self.socket(),
            log,
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Append sections of `extra` into `base`: same-named sections are merged
/// by appending keys after the header.
fn merge(base: &str, extra: &str) -> String {
    let mut out = base.to_string();
    let mut current: Option<String> = None;
    for line in extra.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            current = Some(t.to_string());
            if !out.contains(t) {
                out.push_str(&format!("{t}\n"));
            }
        } else if !t.is_empty() {
            match &current {
                Some(h) => {
                    let pos = out
                        .find(h.as_str())
                        .map(|p| p + h.len() + 1)
                        .unwrap_or(out.len());
                    out.insert_str(pos, &format!("{t}\n"));
                }
                None => out.insert_str(0, &format!("{t}\n")),
            }
        }
    }
    out
}

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn request(&self, line: &str) -> Option<Value> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut r = String::new();
        BufReader::new(&s).read_line(&mut r).ok()?;
        serde_json::from_str(&r).ok()
    }

    /// The raw `status` reply (for checks of the wire format itself).
    pub fn status(&self) -> Option<Value> {
        self.request("status")
    }

    /// The `status` reply as the typed report the CLI and metrics read; a
    /// reply that does not fit the type fails the test.
    pub fn report(&self) -> Option<StatusReport> {
        let v = self.status()?;
        Some(
            serde_json::from_value(v.clone())
                .unwrap_or_else(|e| panic!("status reply does not fit StatusReport: {e}\n{v}")),
        )
    }

    /// Wait until `cond` holds for the typed status report.
    pub fn wait_report(
        &self,
        within: Duration,
        what: &str,
        mut cond: impl FnMut(&StatusReport) -> bool,
    ) -> StatusReport {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(r) = self.report() {
                if cond(&r) {
                    return r;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}; last status {:?}\nlog:\n{}",
            self.status(),
            self.log_text()
        );
    }

    /// Wait until every device is streaming; returns the time it took.
    pub fn wait_streaming(&self, within: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(r) = self.report() {
                if !r.devices.is_empty()
                    && r.devices
                        .iter()
                        .all(|d| d.state == DeviceState::Streaming && d.samples_total > 0)
                {
                    return start.elapsed();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "devices not streaming within {within:?}; log:\n{}",
            self.log_text()
        );
    }

    pub fn wait_for(
        &self,
        within: Duration,
        what: &str,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(s) = self.status() {
                if cond(&s) {
                    return s;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}; last status {:?}\nlog:\n{}",
            self.status(),
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(mut self) -> i32 {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code().unwrap_or(-1);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!(
                    "daemon did not stop within 30 s after SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device of a status report (fails the test when absent).
pub fn device<'a>(r: &'a StatusReport, id: &str) -> &'a DeviceReport {
    r.device(id)
        .unwrap_or_else(|| panic!("device {id} in status: {r:?}"))
}

/// Python with the decode test's packages, if present.
pub fn python() -> String {
    std::env::var("NEUROEDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}
