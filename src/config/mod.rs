//! Daemon and device configuration: typed, validated before anything starts.
//!
//! Every section is a struct with `deny_unknown_fields` and documented
//! defaults; relative paths are resolved against the config file's folder;
//! `NEUROEDGE_<SECTION>_<KEY>` environment variables override the file.

mod device;
mod problem;

pub use crate::journal::config::{JournalSection, SyncMode, WhenFull};
pub use crate::units::{ByteCount, HumanDuration};
pub use crate::uplink::config::UplinkSection;
pub use device::*;
pub use problem::{ConfigError, Problem, SourceText};

use crate::validate::Findings;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where `--config` points when neither the flag nor `$NEUROEDGE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/neuroedge/neuroedge.toml";

/// The whole daemon config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    pub daemon: DaemonSection,
    pub journal: JournalSection,
    pub crypto: CryptoSection,
    pub uplink: UplinkSection,
    pub status: StatusSection,
    pub metrics: MetricsSection,
    pub log: LogSection,
}

/// `[daemon]`: who this node is and where its device files live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    /// Site (lab) identifier written into every batch header.
    pub site_id: String,
    /// Node identifier; default: the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Folder of device files (`*.toml`), relative to the config file.
    pub devices_dir: PathBuf,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            site_id: "default-site".into(),
            node_id: None,
            devices_dir: "devices".into(),
        }
    }
}

/// `[crypto]`: the batch key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoSection {
    /// The current batch key (one line of base64, mode 0600).
    pub key_file: PathBuf,
    /// Create `key_file` at start if it does not exist (default false).
    pub generate_if_missing: bool,
    /// Older keys kept for reading batches sealed before a rotation.
    pub previous_key_files: Vec<PathBuf>,
}

impl Default for CryptoSection {
    fn default() -> Self {
        CryptoSection {
            key_file: "var/batch.key".into(),
            generate_if_missing: false,
            previous_key_files: Vec::new(),
        }
    }
}

/// `[status]`: the local Unix status socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusSection {
    /// The Unix socket `neuroedge status` and friends talk to.
    pub socket: PathBuf,
    /// Octal permission bits of the socket file, as a string ("0660").
    pub socket_mode: String,
    /// Extra uids allowed to run `mark`, `flush`, `reload`.
    pub control_uids: Vec<u32>,
    /// A connection that sends no complete request, or does not read its
    /// reply, for this many seconds is closed (`subscribe` streams are
    /// exempt while they are read).
    pub idle_timeout_s: f64,
    /// Connections one uid may hold at once; more are refused with an
    /// error line, so one stuck client cannot lock out a technician.
    pub max_connections_per_uid: usize,
}

impl Default for StatusSection {
    fn default() -> Self {
        StatusSection {
            socket: "var/run/neuroedge.sock".into(),
            socket_mode: "0660".into(),
            control_uids: Vec::new(),
            idle_timeout_s: 30.0,
            max_connections_per_uid: 128,
        }
    }
}

/// `[metrics]`: optional Prometheus endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address of the Prometheus `/metrics` and `/health` endpoint, e.g.
    /// "127.0.0.1:9273"; absent: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// error | warn | info | debug | trace, or a tracing filter directive.
    pub level: String,
    /// `text` (default) or `json` lines.
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// A loaded, validated configuration: the daemon file plus every device file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file this came from.
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    /// `daemon.node_id` or the host name.
    pub node_id: String,
    /// Absolute `devices_dir`.
    pub devices_dir: PathBuf,
    /// Every device file, enabled or not, sorted by file name.
    pub devices: Vec<DeviceConfig>,
}

impl Config {
    pub fn enabled_devices(&self) -> impl Iterator<Item = &DeviceConfig> {
        self.devices.iter().filter(|d| d.enabled)
    }
}

/// Resolve the config path: flag, then `$NEUROEDGE_CONFIG`, then the default.
pub fn resolve_config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("NEUROEDGE_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Load the daemon config and all device files, applying environment
/// overrides from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_with_env(path, &env)
}

/// Like [`load`], with an explicit environment (for tests).
pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(Problem {
            source: path.display().to_string(),
            key: None,
            line_col: None,
            message: format!("cannot read config file: {e}"),
            hint: Some("pass --config PATH or set NEUROEDGE_CONFIG".into()),
        })
    })?;
    let src = SourceText::new(path, text);
    // First pass straight from the text, so errors carry line:column.
    let from_file: DaemonConfig = match toml::from_str(&src.text) {
        Ok(c) => c,
        Err(e) => return Err(ConfigError::single(src.problem_from_toml(&e))),
    };
    let mut daemon = match apply_env_overrides(&src.text, env) {
        Ok(None) => from_file,
        Ok(Some(c)) => c,
        Err(p) => return Err(ConfigError::single(p)),
    };
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let base = std::fs::canonicalize(&base).unwrap_or(base);
    resolve_paths(&mut daemon, &base);
    validate_daemon(&daemon, &src, &mut problems);

    let node_id = match &daemon.daemon.node_id {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown-node".into()),
    };
    let devices_dir = daemon.daemon.devices_dir.clone();
    let devices = match load_devices_dir(&devices_dir) {
        Ok(d) => d,
        Err(mut e) => {
            problems.append(&mut e.problems);
            Vec::new()
        }
    };
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    Ok(Config {
        path: path.to_path_buf(),
        daemon,
        node_id,
        devices_dir,
        devices,
    })
}

/// Join and remove `.` / `..` lexically, so messages show clean paths.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn resolve_paths(c: &mut DaemonConfig, base: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = normalize(&base.join(&*p));
        }
    };
    fix(&mut c.daemon.devices_dir);
    fix(&mut c.journal.path);
    fix(&mut c.crypto.key_file);
    c.crypto.previous_key_files.iter_mut().for_each(fix);
    fix(&mut c.status.socket);
    for p in [
        &mut c.uplink.token_file,
        &mut c.uplink.ca_file,
        &mut c.uplink.s3.credentials_file,
        &mut c.uplink.client_cert,
        &mut c.uplink.client_key,
    ]
    .into_iter()
    .flatten()
    {
        fix(p);
    }
}

const SECTIONS: [&str; 7] = [
    "daemon", "journal", "crypto", "uplink", "status", "metrics", "log",
];

/// `NEUROEDGE_*` variables that are not config overrides: the config path,
/// the vendor libraries loaded at run time, the tests' Python.
const NOT_OVERRIDES: [&str; 4] = [
    "NEUROEDGE_CONFIG",
    crate::source::brainflow::LIB_ENV,
    crate::lsl_ffi::LIB_ENV,
    "NEUROEDGE_TEST_PYTHON",
];

/// Apply `NEUROEDGE_<SECTION>_<KEY>` variables. Returns `Ok(None)` when none
/// is set. String-typed keys take the value verbatim; others parse it as a
/// TOML value (`true`, `4`, `[1000, 1001]`).
fn apply_env_overrides(
    text: &str,
    env: &[(String, String)],
) -> Result<Option<DaemonConfig>, Problem> {
    let overrides: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("NEUROEDGE_") && !NOT_OVERRIDES.contains(&k.as_str()))
        .collect();
    if overrides.is_empty() {
        return Ok(None);
    }
    let env_problem = |var: &str, key: Option<String>, message: String| Problem {
        source: format!("environment variable {var}"),
        key,
        line_col: None,
        message,
        hint: Some(
            "variables are NEUROEDGE_<SECTION>_<KEY>, e.g. NEUROEDGE_UPLINK_ENDPOINT".into(),
        ),
    };
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| env_problem("(file)", None, e.to_string()))?;
    let defaults = toml::Table::try_from(DaemonConfig::default())
        .map_err(|e| env_problem("(defaults)", None, e.to_string()))?;
    let mut names = Vec::new();
    for (var, raw) in overrides {
        let rest = &var["NEUROEDGE_".len()..];
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = lower.split_once('_') else {
            return Err(env_problem(
                var,
                None,
                "not of the form NEUROEDGE_<SECTION>_<KEY>".into(),
            ));
        };
        if !SECTIONS.contains(&section) {
            return Err(env_problem(
                var,
                None,
                format!(
                    "unknown section `{section}` (sections: {})",
                    SECTIONS.join(", ")
                ),
            ));
        }
        // A sub-table of the section (`[uplink.s3]`): NEUROEDGE_UPLINK_S3_BUCKET.
        let sub = key.split_once('_').filter(|(t, _)| {
            defaults
                .get(section)
                .and_then(|s| s.get(*t))
                .is_some_and(toml::Value::is_table)
        });
        let (section_path, key) = match sub {
            Some((t, k)) => (vec![section, t], k),
            None => (vec![section], key),
        };
        let mut default = defaults.get(section);
        for t in &section_path[1..] {
            default = default.and_then(|s| s.get(*t));
        }
        let default = default.and_then(|s| s.get(key));
        let value = match default {
            Some(toml::Value::String(_)) | None => toml::Value::String(raw.clone()),
            Some(_) => {
                let parsed: Result<toml::Table, _> = toml::from_str(&format!("v = {raw}"));
                match parsed.ok().and_then(|mut t| t.remove("v")) {
                    Some(v) => v,
                    None => toml::Value::String(raw.clone()),
                }
            }
        };
        let mut entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        for t in &section_path[1..] {
            entry = match entry {
                toml::Value::Table(tab) => tab
                    .entry(t.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new())),
                _ => break,
            };
        }
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_string(), value);
            }
            _ => {
                return Err(env_problem(
                    var,
                    Some(section.into()),
                    "section is not a table".into(),
                ))
            }
        }
        names.push(var.clone());
    }
    DaemonConfig::deserialize(toml::Value::Table(table))
        .map(Some)
        .map_err(|e| Problem {
            source: format!("environment variable(s) {}", names.join(", ")),
            key: None,
            line_col: None,
            message: e.message().trim().to_string(),
            hint: Some("fix or unset the variable; variables override the config file".into()),
        })
}

fn validate_daemon(c: &DaemonConfig, src: &SourceText, out: &mut Vec<Problem>) {
    let mut bad =
        |key: &str, msg: String, hint: &str| out.push(src.problem_at_key(key, msg, Some(hint)));
    if c.daemon.site_id.trim().is_empty() {
        bad(
            "daemon.site_id",
            "must not be empty".into(),
            "name your lab or site, e.g. \"lab-3\"",
        );
    }
    if let Some(n) = &c.daemon.node_id {
        if n.trim().is_empty() {
            bad(
                "daemon.node_id",
                "must not be empty".into(),
                "remove the key to use the host name",
            );
        }
    }
    let bs = c.journal.batch_seconds;
    if !(0.1..=60.0).contains(&bs) || !bs.is_finite() {
        bad(
            "journal.batch_seconds",
            format!("{bs} is out of range"),
            "use 0.1 to 60 seconds (default 1.0)",
        );
    }
    for (key, what, hint) in c.journal.format_problems() {
        bad(key, what, hint);
    }
    if c.journal.max_bytes.0 < 1024 * 1024 {
        bad(
            "journal.max_bytes",
            format!("{} bytes is too small", c.journal.max_bytes.0),
            "use at least \"1MiB\" (default \"2GiB\")",
        );
    }
    if parse_socket_mode(&c.status.socket_mode).is_none() {
        bad(
            "status.socket_mode",
            format!("{:?} is not an octal permission", c.status.socket_mode),
            "write it as a string of octal digits, e.g. \"0660\"",
        );
    }
    if !(0.1..=3600.0).contains(&c.status.idle_timeout_s) {
        bad(
            "status.idle_timeout_s",
            format!("{} is out of range", c.status.idle_timeout_s),
            "use 0.1 to 3600 seconds (default 30)",
        );
    }
    if !(1..=256).contains(&c.status.max_connections_per_uid) {
        bad(
            "status.max_connections_per_uid",
            format!("{} is out of range", c.status.max_connections_per_uid),
            "use 1 to 256 (default 128, half of the 256 connections the socket serves)",
        );
    }
    let mut uplink = Findings::new("uplink");
    c.uplink.validate(&mut uplink);
    for f in uplink.into_vec() {
        bad(&f.key, f.message, &f.hint);
    }
    if let Some(l) = &c.metrics.listen {
        if l.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "metrics.listen",
                format!("{l:?} is not an address"),
                "write e.g. \"127.0.0.1:9273\"",
            );
        }
    }
    if tracing_subscriber::EnvFilter::try_new(&c.log.level).is_err() {
        bad(
            "log.level",
            format!("{:?} is not a log level", c.log.level),
            "use error, warn, info, debug or trace",
        );
    }
}

/// Parse an octal mode string such as "0660".
pub fn parse_socket_mode(s: &str) -> Option<u32> {
    let t = s.trim();
    if t.is_empty() || t.len() > 4 {
        return None;
    }
    u32::from_str_radix(t, 8).ok().filter(|m| *m <= 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    const SYNTH: &str = "id = \"synth\"\ndriver = \"synthetic\"\nenabled = true\n";

    #[test]
    fn defaults_and_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let cfg = write(d.path(), "neuroedge.toml", "[daemon]\nsite_id = \"lab\"\n");
        write(d.path(), "devices/synthetic.toml", SYNTH);
        let c = load_with_env(&cfg, &[]).unwrap();
        assert_eq!(c.daemon.daemon.site_id, "lab");
        let base = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(c.daemon.journal.path, base.join("var/journal.db"));
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.daemon.journal.batch_seconds, 1.0);
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let d = tempfile::tempdir().unwrap();
        let cfg = write(
            d.path(),
            "neuroedge.toml",
            "[journal]\nbatch_seconds = 1.0\nmax_bites = \"1GiB\"\n",
        );
        write(d.path(), "devices/synthetic.toml", SYNTH);
        let e = load_with_env(&cfg, &[]).unwrap_err();
        let p = &e.problems[0];
        assert!(p.source.ends_with("neuroedge.toml"));
        assert_eq!(p.key.as_deref(), Some("journal.max_bites"));
        assert_eq!(p.line_col, Some((3, 1)));
        assert!(p.message.contains("unknown field"), "{}", p.message);
    }

    #[test]
    fn wrong_type_is_located() {
        let d = tempfile::tempdir().unwrap();
        let cfg = write(
            d.path(),
            "neuroedge.toml",
            "[journal]\nbatch_seconds = \"one\"\n",
        );
        write(d.path(), "devices/synthetic.toml", SYNTH);
        let e = load_with_env(&cfg, &[]).unwrap_err();
        assert_eq!(e.problems[0].key.as_deref(), Some("journal.batch_seconds"));
        assert_eq!(e.problems[0].line_col.map(|l| l.0), Some(2));
    }

    #[test]
    fn env_overrides_file() {
        let d = tempfile::tempdir().unwrap();
        let cfg = write(
            d.path(),
            "neuroedge.toml",
            "[uplink]\nendpoint = \"https://a\"\n",
        );
        write(d.path(), "devices/synthetic.toml", SYNTH);
        let env = vec![
            (
                "NEUROEDGE_UPLINK_ENDPOINT".to_string(),
                "https://b".to_string(),
            ),
            (
                "NEUROEDGE_JOURNAL_BATCH_SECONDS".to_string(),
                "2.5".to_string(),
            ),
            ("NEUROEDGE_DAEMON_NODE_ID".to_string(), "123".to_string()),
            ("NEUROEDGE_UPLINK_SINK".to_string(), "s3".to_string()),
            (
                "NEUROEDGE_UPLINK_S3_BUCKET".to_string(),
                "eeg-archive".to_string(),
            ),
            (
                "NEUROEDGE_UPLINK_S3_PATH_STYLE".to_string(),
                "false".to_string(),
            ),
            ("NEUROEDGE_CONFIG".to_string(), "ignored".to_string()),
            ("NEUROEDGE_LSL_LIB".to_string(), "/x/liblsl.so".to_string()),
            (
                "NEUROEDGE_BRAINFLOW_LIB".to_string(),
                "/x/libBoardController.so".to_string(),
            ),
        ];
        let c = load_with_env(&cfg, &env).unwrap();
        assert_eq!(c.daemon.uplink.endpoint.as_deref(), Some("https://b"));
        assert_eq!(c.daemon.journal.batch_seconds, 2.5);
        assert_eq!(c.node_id, "123");
        assert_eq!(c.daemon.uplink.sink, crate::uplink::config::SinkKind::S3);
        assert_eq!(c.daemon.uplink.s3.bucket.as_deref(), Some("eeg-archive"));
        assert!(!c.daemon.uplink.s3.path_style);
        assert_eq!(c.daemon.uplink.s3.region, "us-east-1");
        let bad = vec![(
            "NEUROEDGE_JOURNAL_BATCH_SECONDS".to_string(),
            "x".to_string(),
        )];
        let e = load_with_env(&cfg, &bad).unwrap_err();
        assert!(e.problems[0]
            .source
            .contains("NEUROEDGE_JOURNAL_BATCH_SECONDS"));
        let bad = vec![("NEUROEDGE_NOPE_X".to_string(), "1".to_string())];
        assert!(load_with_env(&cfg, &bad).is_err());
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let d = tempfile::tempdir().unwrap();
        let cfg = write(
            d.path(),
            "neuroedge.toml",
            "[journal]\nbatch_seconds = 0.0\n[status]\nsocket_mode = \"rw\"\n",
        );
        write(d.path(), "devices/synthetic.toml", SYNTH);
        let e = load_with_env(&cfg, &[]).unwrap_err();
        let keys: Vec<_> = e.problems.iter().filter_map(|p| p.key.clone()).collect();
        assert!(keys.contains(&"journal.batch_seconds".to_string()));
        assert!(keys.contains(&"status.socket_mode".to_string()));
    }

    #[test]
    fn socket_mode_parse() {
        assert_eq!(parse_socket_mode("0660"), Some(0o660));
        assert_eq!(parse_socket_mode("600"), Some(0o600));
        assert_eq!(parse_socket_mode("0999"), None);
        assert_eq!(parse_socket_mode("77777"), None);
    }
}
