//! Device files: one TOML file per device instance.

use super::problem::{ConfigError, Problem, SourceText};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which driver reads the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DriverKind {
    #[serde(rename = "synthetic")]
    Synthetic,
    #[serde(rename = "openbci-cyton")]
    OpenbciCyton,
    #[serde(rename = "serial-ascii")]
    SerialAscii,
    #[serde(rename = "brainflow")]
    Brainflow,
    #[serde(rename = "lsl")]
    Lsl,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Synthetic => "synthetic",
            DriverKind::OpenbciCyton => "openbci-cyton",
            DriverKind::SerialAscii => "serial-ascii",
            DriverKind::Brainflow => "brainflow",
            DriverKind::Lsl => "lsl",
        }
    }
}

/// `[connection]` of the synthetic driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConnection {
    /// Samples per second per channel (default 250).
    pub sample_rate: f64,
    /// Number of channels (default 8).
    pub channels: usize,
    /// Seed of the noise generator; equal seeds give equal signals.
    pub seed: u64,
    /// true: real time; false: as fast as the pipeline takes it.
    pub pace: bool,
}

impl Default for SyntheticConnection {
    fn default() -> Self {
        SyntheticConnection {
            sample_rate: 250.0,
            channels: 8,
            seed: 1,
            pace: true,
        }
    }
}

fn default_baud() -> u32 {
    115_200
}

fn default_separator() -> String {
    ",".into()
}

/// `[connection]` of the OpenBCI Cyton driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CytonConnection {
    /// Serial port of the USB dongle, e.g. "/dev/ttyUSB0".
    pub port: String,
    /// Daisy module attached: 16 channels at half rate.
    #[serde(default)]
    pub daisy: bool,
    #[serde(default = "default_baud")]
    pub baud: u32,
}

/// `[connection]` of the ASCII serial driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialAsciiConnection {
    pub port: String,
    #[serde(default = "default_baud")]
    pub baud: u32,
    pub sample_rate: f64,
    pub channels: usize,
    #[serde(default = "default_separator")]
    pub separator: String,
}

/// BrainFlow input parameters (`BrainFlowInputParams`), all optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrainflowParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address_aux: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address_anc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_port_aux: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_port_anc: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_protocol: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_aux: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_anc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_board: Option<i32>,
}

/// `[connection]` of the BrainFlow driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrainflowConnection {
    /// BrainFlow board id; -1 is BrainFlow's synthetic board.
    pub board_id: i32,
    /// Path to libBoardController.so; default: next to the `brainflow` Python package.
    #[serde(default)]
    pub library: Option<PathBuf>,
    #[serde(default)]
    pub params: BrainflowParams,
}

fn default_resolve_timeout() -> f64 {
    5.0
}

/// `[connection]` of the LSL driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LslConnection {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "type")]
    pub stream_type: Option<String>,
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default = "default_resolve_timeout")]
    pub resolve_timeout_s: f64,
    /// Name of an LSL string stream whose samples become batch markers.
    #[serde(default)]
    pub markers: Option<String>,
}

/// The typed `[connection]` table, per driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    Synthetic(SyntheticConnection),
    OpenbciCyton(CytonConnection),
    SerialAscii(SerialAsciiConnection),
    Brainflow(Box<BrainflowConnection>),
    Lsl(LslConnection),
}

/// `[channels]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsSection {
    /// Channel names; overrides what the device states.
    pub names: Option<Vec<String>>,
    pub units: String,
}

impl Default for ChannelsSection {
    fn default() -> Self {
        ChannelsSection {
            names: None,
            units: "uV".into(),
        }
    }
}

/// `[filters]`: see the contract's filter semantics. All optional.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FiltersSection {
    pub highpass_hz: Option<f64>,
    pub lowpass_hz: Option<f64>,
    pub order: u32,
    pub notch_hz: Option<f64>,
    pub notch_harmonics: u32,
    pub notch_q: f64,
}

impl Default for FiltersSection {
    fn default() -> Self {
        FiltersSection {
            highpass_hz: None,
            lowpass_hz: None,
            order: 4,
            notch_hz: None,
            notch_harmonics: 1,
            notch_q: 30.0,
        }
    }
}

/// `[features]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesSection {
    pub window_s: f64,
    pub step_s: f64,
    /// Band name -> [lo, hi) in Hz.
    pub bands: BTreeMap<String, [f64; 2]>,
}

impl Default for FeaturesSection {
    fn default() -> Self {
        let bands = [
            ("delta", [1.0, 4.0]),
            ("theta", [4.0, 8.0]),
            ("alpha", [8.0, 13.0]),
            ("beta", [13.0, 30.0]),
            ("gamma", [30.0, 45.0]),
        ]
        .into_iter()
        .map(|(n, b)| (n.to_string(), b))
        .collect();
        FeaturesSection {
            window_s: 1.0,
            step_s: 0.5,
            bands,
        }
    }
}

/// `[quality]`: per-channel signal quality thresholds (all optional).
/// A channel is `railed` when at least `railed_min_fraction` of the raw
/// window is at or beyond `railed_abs_uv`; `flat` when the raw window's
/// peak-to-peak is below `flat_ptp_uv`; `noisy` when the filtered RMS
/// exceeds `noisy_rms_uv` or more than `noisy_line_ratio` of the raw power
/// lies within ±2 Hz of the mains line (`notch_hz`, else 50 Hz).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualitySection {
    pub flat_ptp_uv: f64,
    pub railed_abs_uv: f64,
    pub railed_min_fraction: f64,
    pub noisy_rms_uv: f64,
    pub noisy_line_ratio: f64,
}

impl Default for QualitySection {
    fn default() -> Self {
        let t = crate::dsp::QualityThresholds::default();
        QualitySection {
            flat_ptp_uv: t.flat_ptp_uv,
            railed_abs_uv: t.railed_abs_uv,
            railed_min_fraction: t.railed_min_fraction,
            noisy_rms_uv: t.noisy_rms_uv,
            noisy_line_ratio: t.noisy_line_ratio,
        }
    }
}

/// `[buffer]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferSection {
    /// Seconds of samples the lock-free ring holds before the oldest are dropped.
    pub ring_seconds: f64,
}

impl Default for BufferSection {
    fn default() -> Self {
        BufferSection { ring_seconds: 10.0 }
    }
}

/// A device file, parsed for a driver whose connection type is `C`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile<C> {
    id: String,
    driver: DriverKind,
    #[serde(default)]
    enabled: bool,
    connection: Option<C>,
    #[serde(default)]
    channels: ChannelsSection,
    #[serde(default)]
    filters: FiltersSection,
    #[serde(default)]
    features: FeaturesSection,
    #[serde(default)]
    quality: QualitySection,
    #[serde(default)]
    buffer: BufferSection,
}

/// First pass: only the driver, to pick the connection type.
#[derive(Deserialize)]
struct DriverOnly {
    driver: DriverKind,
}

/// One device, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    pub file: PathBuf,
    pub id: String,
    pub driver: DriverKind,
    pub enabled: bool,
    pub connection: Connection,
    pub channels: ChannelsSection,
    pub filters: FiltersSection,
    pub features: FeaturesSection,
    pub quality: QualitySection,
    pub buffer: BufferSection,
}

impl DeviceConfig {
    /// Sample rate and channel count when the config states them (the
    /// BrainFlow and LSL drivers learn them from the device).
    pub fn declared_layout(&self) -> Option<(f64, usize)> {
        match &self.connection {
            Connection::Synthetic(c) => Some((c.sample_rate, c.channels)),
            Connection::SerialAscii(c) => Some((c.sample_rate, c.channels)),
            Connection::OpenbciCyton(c) => Some(if c.daisy { (125.0, 16) } else { (250.0, 8) }),
            Connection::Brainflow(_) | Connection::Lsl(_) => None,
        }
    }
}

/// Parse the whole file with the driver's connection type, so that errors in
/// `[connection]` carry line:column too. `default` is `None` for drivers
/// whose connection has required keys.
fn parse_as<C: serde::de::DeserializeOwned>(
    src: &SourceText,
    wrap: fn(C) -> Connection,
    default: Option<fn() -> C>,
) -> Result<DeviceFile<Connection>, Problem> {
    let f: DeviceFile<C> = toml::from_str(&src.text).map_err(|e| src.problem_from_toml(&e))?;
    let connection = match (f.connection, default) {
        (Some(c), _) => wrap(c),
        (None, Some(d)) => wrap(d()),
        (None, None) => {
            return Err(src.problem_at_key(
                "connection",
                format!("driver {:?} needs a [connection] table", f.driver.name()),
                Some("see the matching profile in devices/ for the keys it takes"),
            ))
        }
    };
    Ok(DeviceFile {
        id: f.id,
        driver: f.driver,
        enabled: f.enabled,
        connection: Some(connection),
        channels: f.channels,
        filters: f.filters,
        features: f.features,
        quality: f.quality,
        buffer: f.buffer,
    })
}

/// Parse and validate one device file.
pub fn parse_device(path: &Path, text: String) -> Result<DeviceConfig, Vec<Problem>> {
    let src = SourceText::new(path, text);
    let head: DriverOnly =
        toml::from_str(&src.text).map_err(|e| vec![src.problem_from_toml(&e)])?;
    let parsed = match head.driver {
        DriverKind::Synthetic => parse_as(
            &src,
            Connection::Synthetic,
            Some(SyntheticConnection::default),
        ),
        DriverKind::OpenbciCyton => parse_as(&src, Connection::OpenbciCyton, None),
        DriverKind::SerialAscii => parse_as(&src, Connection::SerialAscii, None),
        DriverKind::Brainflow => parse_as(&src, |c| Connection::Brainflow(Box::new(c)), None),
        DriverKind::Lsl => parse_as(&src, Connection::Lsl, None),
    };
    let mut f = parsed.map_err(|p| vec![p])?;
    // A relative BrainFlow library path is relative to the device file.
    if let Some(Connection::Brainflow(c)) = f.connection.as_mut() {
        if let (Some(lib), Some(dir)) = (c.library.as_mut(), path.parent()) {
            if lib.is_relative() {
                *lib = dir.join(&*lib);
            }
        }
    }
    let dev = DeviceConfig {
        file: path.to_path_buf(),
        id: f.id,
        driver: f.driver,
        enabled: f.enabled,
        connection: f
            .connection
            .unwrap_or(Connection::Synthetic(SyntheticConnection::default())),
        channels: f.channels,
        filters: f.filters,
        features: f.features,
        quality: f.quality,
        buffer: f.buffer,
    };
    let problems = validate_device(&dev, &src);
    if problems.is_empty() {
        Ok(dev)
    } else {
        Err(problems)
    }
}

fn validate_device(d: &DeviceConfig, src: &SourceText) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad =
        |key: &str, msg: String, hint: &str| out.push(src.problem_at_key(key, msg, Some(hint)));
    if d.id.is_empty()
        || d.id.len() > 64
        || !d
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bad(
            "id",
            format!("{:?} is not a valid device id", d.id),
            "use 1-64 letters, digits, '-', '_' or '.'",
        );
    }
    let check_rate = |rate: f64, key: &str, bad: &mut dyn FnMut(&str, String, &str)| {
        if !(rate.is_finite() && rate > 0.0 && rate <= 100_000.0) {
            bad(
                key,
                format!("sample rate {rate} is out of range"),
                "use a rate in Hz between 0 and 100000",
            );
        }
    };
    let check_channels = |n: usize, key: &str, bad: &mut dyn FnMut(&str, String, &str)| {
        if !(1..=1024).contains(&n) {
            bad(
                key,
                format!("{n} channels is out of range"),
                "use 1 to 1024 channels",
            );
        }
    };
    let check_port = |port: &str, bad: &mut dyn FnMut(&str, String, &str)| {
        if port.trim().is_empty() {
            bad(
                "connection.port",
                "serial port is empty".into(),
                "set port = \"/dev/ttyUSB0\" (or the device's path)",
            );
        }
    };
    match &d.connection {
        Connection::Synthetic(c) => {
            check_rate(c.sample_rate, "connection.sample_rate", &mut bad);
            check_channels(c.channels, "connection.channels", &mut bad);
        }
        Connection::OpenbciCyton(c) => {
            check_port(&c.port, &mut bad);
            if c.baud == 0 {
                bad(
                    "connection.baud",
                    "baud must be positive".into(),
                    "the Cyton uses 115200",
                );
            }
        }
        Connection::SerialAscii(c) => {
            check_port(&c.port, &mut bad);
            check_rate(c.sample_rate, "connection.sample_rate", &mut bad);
            check_channels(c.channels, "connection.channels", &mut bad);
            if c.baud == 0 {
                bad(
                    "connection.baud",
                    "baud must be positive".into(),
                    "e.g. 115200",
                );
            }
            if c.separator.is_empty() {
                bad(
                    "connection.separator",
                    "separator is empty".into(),
                    "e.g. \",\" or \" \"",
                );
            }
        }
        Connection::Brainflow(c) => {
            // BrainFlow's streaming (-2) and playback (-3) boards carry
            // another board's data and need to know which.
            if matches!(c.board_id, -2 | -3) && matches!(c.params.master_board, None | Some(-100)) {
                bad(
                    "connection.board_id",
                    format!(
                        "board_id {} (BrainFlow's streaming / playback board) needs params.master_board",
                        c.board_id
                    ),
                    "set master_board in [connection.params] to the board id whose data it carries",
                );
            }
        }
        Connection::Lsl(c) => {
            if c.name.is_none() && c.stream_type.is_none() && c.source_id.is_none() {
                bad(
                    "connection",
                    "no stream selector".into(),
                    "set at least one of name, type, source_id",
                );
            }
            if !(c.resolve_timeout_s > 0.0 && c.resolve_timeout_s <= 3600.0) {
                bad(
                    "connection.resolve_timeout_s",
                    format!("{} is out of range", c.resolve_timeout_s),
                    "use a number of seconds above 0 and at most 3600 (default 5.0)",
                );
            }
        }
    }
    if let (Some(names), Some((_, n))) = (&d.channels.names, d.declared_layout()) {
        if names.len() != n {
            bad(
                "channels.names",
                format!("{} names for {n} channels", names.len()),
                "give one name per channel, or remove the key",
            );
        }
    }
    let f = &d.filters;
    if !(1..=8).contains(&f.order) {
        bad(
            "filters.order",
            format!("order {} is out of range", f.order),
            "use 1 to 8",
        );
    }
    let nyquist = d.declared_layout().map(|(r, _)| r / 2.0);
    for (key, v) in [
        ("filters.highpass_hz", f.highpass_hz),
        ("filters.lowpass_hz", f.lowpass_hz),
        ("filters.notch_hz", f.notch_hz),
    ] {
        if let Some(v) = v {
            if !(v.is_finite() && v > 0.0) {
                bad(
                    key,
                    format!("{v} Hz must be positive"),
                    "remove the key to disable this filter",
                );
            } else if let Some(ny) = nyquist {
                if v >= ny {
                    bad(
                        key,
                        format!("{v} Hz is at or above the Nyquist frequency ({ny} Hz)"),
                        "use a frequency below half the sample rate",
                    );
                }
            }
        }
    }
    if let (Some(hp), Some(lp)) = (f.highpass_hz, f.lowpass_hz) {
        if hp >= lp {
            bad(
                "filters.highpass_hz",
                format!("highpass {hp} Hz is not below lowpass {lp} Hz"),
                "a band-pass needs highpass_hz < lowpass_hz",
            );
        }
    }
    if !(f.notch_q.is_finite() && f.notch_q > 0.0) {
        bad(
            "filters.notch_q",
            format!("Q {} must be positive", f.notch_q),
            "default is 30",
        );
    }
    if f.notch_harmonics == 0 || f.notch_harmonics > 20 {
        bad(
            "filters.notch_harmonics",
            format!("{} is out of range", f.notch_harmonics),
            "use 1 to 20",
        );
    }
    let ft = &d.features;
    if !(ft.window_s.is_finite() && ft.window_s > 0.0 && ft.window_s <= 60.0) {
        bad(
            "features.window_s",
            format!("{} s is out of range", ft.window_s),
            "use up to 60 s (default 1.0)",
        );
    }
    if !(ft.step_s.is_finite() && ft.step_s > 0.0 && ft.step_s <= 60.0) {
        bad(
            "features.step_s",
            format!("{} s is out of range", ft.step_s),
            "use up to 60 s (default 0.5)",
        );
    }
    for (name, [lo, hi]) in &ft.bands {
        if !(lo.is_finite() && hi.is_finite() && *lo >= 0.0 && lo < hi) {
            bad(
                &format!("features.bands.{name}"),
                format!("band [{lo}, {hi}] is not a range"),
                "write [lo, hi] with 0 <= lo < hi",
            );
        }
    }
    let q = &d.quality;
    for (key, v) in [
        ("quality.flat_ptp_uv", q.flat_ptp_uv),
        ("quality.railed_abs_uv", q.railed_abs_uv),
        ("quality.noisy_rms_uv", q.noisy_rms_uv),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bad(
                key,
                format!("{v} must be positive"),
                "remove the key to use the default",
            );
        }
    }
    for (key, v) in [
        ("quality.railed_min_fraction", q.railed_min_fraction),
        ("quality.noisy_line_ratio", q.noisy_line_ratio),
    ] {
        if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
            bad(
                key,
                format!("{v} is not a fraction"),
                "use a value between 0 and 1",
            );
        }
    }
    let rs = d.buffer.ring_seconds;
    if !(rs.is_finite() && (0.1..=600.0).contains(&rs)) {
        bad(
            "buffer.ring_seconds",
            format!("{rs} s is out of range"),
            "use 0.1 to 600 s (default 10)",
        );
    }
    out
}

/// Load every `*.toml` in a folder; ids must be unique.
pub fn load_devices_dir(dir: &Path) -> Result<Vec<DeviceConfig>, ConfigError> {
    let dir_problem = |message: String| {
        ConfigError::single(Problem {
            source: dir.display().to_string(),
            key: None,
            line_col: None,
            message,
            hint: Some("set [daemon] devices_dir to the folder of device files".into()),
        })
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| dir_problem(format!("cannot read devices folder: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut problems = Vec::new();
    let mut devices: Vec<DeviceConfig> = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Err(e) => problems.push(Problem {
                source: f.display().to_string(),
                key: None,
                line_col: None,
                message: format!("cannot read device file: {e}"),
                hint: None,
            }),
            Ok(text) => match parse_device(&f, text) {
                Ok(d) => {
                    if let Some(other) = devices.iter().find(|o| o.id == d.id) {
                        let src =
                            SourceText::new(&f, std::fs::read_to_string(&f).unwrap_or_default());
                        problems.push(src.problem_at_key(
                            "id",
                            format!(
                                "device id {:?} is also used by {}",
                                d.id,
                                other.file.display()
                            ),
                            Some("every device needs its own id"),
                        ));
                    } else {
                        devices.push(d);
                    }
                }
                Err(mut p) => problems.append(&mut p),
            },
        }
    }
    if problems.is_empty() {
        Ok(devices)
    } else {
        Err(ConfigError { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DeviceConfig, Vec<Problem>> {
        parse_device(Path::new("dev.toml"), text.to_string())
    }

    #[test]
    fn synthetic_defaults() {
        let d = parse("id = \"s\"\ndriver = \"synthetic\"\nenabled = true\n").unwrap();
        assert_eq!(
            d.connection,
            Connection::Synthetic(SyntheticConnection::default())
        );
        assert_eq!(d.features.bands.len(), 5);
        assert_eq!(d.buffer.ring_seconds, 10.0);
    }

    #[test]
    fn missing_port_is_named() {
        let e = parse("id = \"c\"\ndriver = \"openbci-cyton\"\n[connection]\ndaisy = true\n")
            .unwrap_err();
        assert!(e[0].message.contains("missing field `port`"), "{}", e[0]);
        assert_eq!(e[0].key.as_deref(), Some("connection.port"));
        assert!(e[0].line_col.is_some());
        let e = parse("id = \"c\"\ndriver = \"openbci-cyton\"\n").unwrap_err();
        assert_eq!(e[0].key.as_deref(), Some("connection"));
    }

    #[test]
    fn brainflow_connection_is_checked() {
        let e =
            parse("id = \"b\"\ndriver = \"brainflow\"\n[connection]\nboard_id = -2\n").unwrap_err();
        assert_eq!(e[0].key.as_deref(), Some("connection.board_id"));
        assert!(e[0].message.contains("master_board"), "{}", e[0]);
        let e = parse(
            "id = \"b\"\ndriver = \"brainflow\"\n[connection]\nboard_id = -1\n\
             [connection.params]\nserial_prot = \"/dev/ttyUSB0\"\n",
        )
        .unwrap_err();
        assert_eq!(e[0].key.as_deref(), Some("connection.params.serial_prot"));
        let d = parse_device(
            Path::new("/etc/neuroedge/devices/bf.toml"),
            "id = \"b\"\ndriver = \"brainflow\"\n[connection]\nboard_id = -3\n\
             library = \"lib/libBoardController.so\"\n[connection.params]\nmaster_board = 0\n"
                .into(),
        )
        .unwrap();
        let Connection::Brainflow(c) = d.connection else {
            panic!("{:?}", d.connection)
        };
        assert_eq!(
            c.library.as_deref(),
            Some(Path::new(
                "/etc/neuroedge/devices/lib/libBoardController.so"
            ))
        );
    }

    #[test]
    fn unknown_connection_key_is_located() {
        let e = parse("id = \"s\"\ndriver = \"synthetic\"\n[connection]\nsample_rat = 250\n")
            .unwrap_err();
        assert_eq!(e[0].key.as_deref(), Some("connection.sample_rat"));
        assert_eq!(e[0].line_col, Some((4, 1)));
    }

    #[test]
    fn unknown_driver() {
        let e = parse("id = \"s\"\ndriver = \"magic\"\n").unwrap_err();
        assert_eq!(e[0].key.as_deref(), Some("driver"));
        assert!(e[0].message.contains("unknown variant"));
    }

    #[test]
    fn filter_validation() {
        let e = parse(
            "id = \"s\"\ndriver = \"synthetic\"\n[filters]\nhighpass_hz = 40.0\nlowpass_hz = 200.0\norder = 9\n",
        )
        .unwrap_err();
        let keys: Vec<_> = e.iter().filter_map(|p| p.key.clone()).collect();
        assert!(keys.contains(&"filters.order".into()));
        assert!(keys.contains(&"filters.lowpass_hz".into()), "{keys:?}");
    }

    #[test]
    fn duplicate_ids() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.toml"),
            "id = \"x\"\ndriver = \"synthetic\"\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("b.toml"),
            "id = \"x\"\ndriver = \"synthetic\"\n",
        )
        .unwrap();
        let e = load_devices_dir(d.path()).unwrap_err();
        assert!(e.problems[0].message.contains("also used by"));
    }
}
