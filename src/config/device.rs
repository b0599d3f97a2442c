//! Device files: one TOML file per device instance.

use super::problem::{ConfigError, Problem, SourceText};
pub use crate::outlet::config::{OutletSection, StreamKind};
use crate::source::{ConnectionVisitor, DriverConfig};
use crate::validate::Findings;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::source::brainflow::{BrainflowConnection, BrainflowParams};
pub use crate::source::lsl::LslConnection;
pub use crate::source::openbci_cyton::CytonConnection;
pub use crate::source::serial_ascii::SerialAsciiConnection;
pub use crate::source::synthetic::SyntheticConnection;
pub use crate::source::{Connection, DriverKind};

/// `[channels]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsSection {
    /// Channel names; overrides what the device states.
    pub names: Option<Vec<String>>,
    /// Units of the values (default "uV").
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
    /// High-pass corner in Hz (with `lowpass_hz`: one band-pass).
    pub highpass_hz: Option<f64>,
    /// Low-pass corner in Hz.
    pub lowpass_hz: Option<f64>,
    /// Butterworth order, 1 to 8 (default 4).
    pub order: u32,
    /// Mains frequency to notch out (50 or 60 Hz), and its quality's line.
    pub notch_hz: Option<f64>,
    /// Notches at k × `notch_hz` for k = 1..=this, below Nyquist (default 1).
    pub notch_harmonics: u32,
    /// Quality factor of each notch (default 30).
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
    /// Welch window length in seconds (default 1.0).
    pub window_s: f64,
    /// A feature record every this many seconds (default 0.5).
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
    /// Raw peak-to-peak below this is `flat` (µV).
    pub flat_ptp_uv: f64,
    /// Raw samples at or beyond ± this count towards `railed` (µV).
    pub railed_abs_uv: f64,
    /// The fraction of the window that must be railed.
    pub railed_min_fraction: f64,
    /// Filtered RMS above this is `noisy` (µV).
    pub noisy_rms_uv: f64,
    /// A mains share of the raw power above this is `noisy`.
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
    #[serde(default)]
    lsl_outlet: OutletSection,
}

/// First pass: only the driver, to pick the connection type.
#[derive(Deserialize)]
struct DriverOnly {
    driver: DriverKind,
}

/// One device, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// The device file this came from.
    pub file: PathBuf,
    /// Unique id (1-64 of letters, digits, `-_.`); in every batch.
    pub id: String,
    pub driver: DriverKind,
    /// Only enabled devices run (a technician enables one by editing its file).
    pub enabled: bool,
    /// The driver's `[connection]` (each driver's struct documents its keys).
    pub connection: Connection,
    pub channels: ChannelsSection,
    pub filters: FiltersSection,
    pub features: FeaturesSection,
    pub quality: QualitySection,
    pub buffer: BufferSection,
    /// `[lsl_outlet]`: the streams published on LSL (contract §10).
    pub lsl_outlet: OutletSection,
}

impl DeviceConfig {
    /// Whether `other` differs from this config in `[lsl_outlet]` only (a
    /// reload then re-creates the device's outlets without restarting it).
    pub fn differs_only_in_outlets(&self, other: &DeviceConfig) -> bool {
        self.lsl_outlet != other.lsl_outlet
            && DeviceConfig {
                lsl_outlet: other.lsl_outlet.clone(),
                ..self.clone()
            } == *other
    }

    /// Sample rate and channel count when the config states them (the
    /// BrainFlow and LSL drivers learn them from the device).
    pub fn declared_layout(&self) -> Option<(f64, usize)> {
        self.connection.declared_layout()
    }
}

/// Parse the whole file with the driver's connection type, so that errors in
/// `[connection]` carry line:column too. `default` is `None` for drivers
/// whose connection has required keys.
fn parse_as<C: serde::de::DeserializeOwned>(
    src: &SourceText,
    wrap: fn(C) -> Connection,
    default: fn() -> Option<C>,
) -> Result<DeviceFile<Connection>, Problem> {
    let f: DeviceFile<C> = toml::from_str(&src.text).map_err(|e| src.problem_from_toml(&e))?;
    let connection = match f.connection.or_else(default) {
        Some(c) => wrap(c),
        None => {
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
        lsl_outlet: f.lsl_outlet,
    })
}

/// Parses a device file with the connection type of its driver.
struct ParseWith<'a>(&'a SourceText);

impl ConnectionVisitor for ParseWith<'_> {
    type Output = Result<DeviceFile<Connection>, Problem>;

    fn visit<C: DriverConfig>(self, wrap: fn(C) -> Connection) -> Self::Output {
        parse_as(self.0, wrap, C::default_connection)
    }
}

/// Parse and validate one device file.
pub fn parse_device(path: &Path, text: String) -> Result<DeviceConfig, Vec<Problem>> {
    let src = SourceText::new(path, text);
    let head: DriverOnly =
        toml::from_str(&src.text).map_err(|e| vec![src.problem_from_toml(&e)])?;
    let mut f = head.driver.visit(ParseWith(&src)).map_err(|p| vec![p])?;
    let Some(mut connection) = f.connection.take() else {
        return Err(vec![src.problem_at_key(
            "connection",
            "missing [connection] table".to_string(),
            None,
        )]);
    };
    // Relative paths in [connection] are relative to the device file.
    if let Some(dir) = path.parent() {
        connection.resolve_paths(dir);
    }
    let dev = DeviceConfig {
        file: path.to_path_buf(),
        id: f.id,
        driver: f.driver,
        enabled: f.enabled,
        connection,
        channels: f.channels,
        filters: f.filters,
        features: f.features,
        quality: f.quality,
        buffer: f.buffer,
        lsl_outlet: f.lsl_outlet,
    };
    let problems = validate_device(&dev, &src);
    if problems.is_empty() {
        Ok(dev)
    } else {
        Err(problems)
    }
}

/// Every semantic check of a device file: the id, the driver's
/// `[connection]`, then each section's own `validate()`.
fn validate_device(d: &DeviceConfig, src: &SourceText) -> Vec<Problem> {
    let mut top = Findings::new("");
    if d.id.is_empty()
        || d.id.len() > 64
        || !d
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        top.bad(
            "id",
            format!("{:?} is not a valid device id", d.id),
            "use 1-64 letters, digits, '-', '_' or '.'",
        );
    }
    let mut connection = Findings::new("connection");
    d.connection.validate(&mut connection);
    let layout = d.declared_layout();
    let mut channels = Findings::new("channels");
    d.channels.validate(layout.map(|(_, n)| n), &mut channels);
    let mut filters = Findings::new("filters");
    d.filters
        .validate(layout.map(|(r, _)| r / 2.0), &mut filters);
    let mut features = Findings::new("features");
    d.features.validate(&mut features);
    let mut quality = Findings::new("quality");
    d.quality.validate(&mut quality);
    let mut buffer = Findings::new("buffer");
    d.buffer.validate(&mut buffer);
    let mut outlet = Findings::new("lsl_outlet");
    d.lsl_outlet.validate(&mut outlet);
    [
        top, connection, channels, filters, features, quality, buffer, outlet,
    ]
    .into_iter()
    .flat_map(Findings::into_vec)
    .map(|f| src.problem_at_key(&f.key, f.message, Some(&f.hint)))
    .collect()
}

impl ChannelsSection {
    /// `channels` is the count the config declares, if it does.
    pub fn validate(&self, channels: Option<usize>, out: &mut Findings) {
        if let (Some(names), Some(n)) = (&self.names, channels) {
            if names.len() != n {
                out.bad(
                    "names",
                    format!("{} names for {n} channels", names.len()),
                    "give one name per channel, or remove the key",
                );
            }
        }
    }
}

impl FiltersSection {
    /// `nyquist` is half the declared sample rate, if the config states it.
    pub fn validate(&self, nyquist: Option<f64>, out: &mut Findings) {
        if !(1..=8).contains(&self.order) {
            out.bad(
                "order",
                format!("order {} is out of range", self.order),
                "use 1 to 8",
            );
        }
        for (key, v) in [
            ("highpass_hz", self.highpass_hz),
            ("lowpass_hz", self.lowpass_hz),
            ("notch_hz", self.notch_hz),
        ] {
            let Some(v) = v else { continue };
            if !(v.is_finite() && v > 0.0) {
                out.bad(
                    key,
                    format!("{v} Hz must be positive"),
                    "remove the key to disable this filter",
                );
            } else if let Some(ny) = nyquist.filter(|ny| v >= *ny) {
                out.bad(
                    key,
                    format!("{v} Hz is at or above the Nyquist frequency ({ny} Hz)"),
                    "use a frequency below half the sample rate",
                );
            }
        }
        if let (Some(hp), Some(lp)) = (self.highpass_hz, self.lowpass_hz) {
            if hp >= lp {
                out.bad(
                    "highpass_hz",
                    format!("highpass {hp} Hz is not below lowpass {lp} Hz"),
                    "a band-pass needs highpass_hz < lowpass_hz",
                );
            }
        }
        if !(self.notch_q.is_finite() && self.notch_q > 0.0) {
            out.bad(
                "notch_q",
                format!("Q {} must be positive", self.notch_q),
                "default is 30",
            );
        }
        if self.notch_harmonics == 0 || self.notch_harmonics > 20 {
            out.bad(
                "notch_harmonics",
                format!("{} is out of range", self.notch_harmonics),
                "use 1 to 20",
            );
        }
    }
}

impl FeaturesSection {
    pub fn validate(&self, out: &mut Findings) {
        if !(self.window_s.is_finite() && self.window_s > 0.0 && self.window_s <= 60.0) {
            out.bad(
                "window_s",
                format!("{} s is out of range", self.window_s),
                "use up to 60 s (default 1.0)",
            );
        }
        if !(self.step_s.is_finite() && self.step_s > 0.0 && self.step_s <= 60.0) {
            out.bad(
                "step_s",
                format!("{} s is out of range", self.step_s),
                "use up to 60 s (default 0.5)",
            );
        }
        for (name, [lo, hi]) in &self.bands {
            if !(lo.is_finite() && hi.is_finite() && *lo >= 0.0 && lo < hi) {
                out.bad(
                    &format!("bands.{name}"),
                    format!("band [{lo}, {hi}] is not a range"),
                    "write [lo, hi] with 0 <= lo < hi",
                );
            }
        }
    }
}

impl QualitySection {
    pub fn validate(&self, out: &mut Findings) {
        for (key, v) in [
            ("flat_ptp_uv", self.flat_ptp_uv),
            ("railed_abs_uv", self.railed_abs_uv),
            ("noisy_rms_uv", self.noisy_rms_uv),
        ] {
            if !(v.is_finite() && v > 0.0) {
                out.bad(
                    key,
                    format!("{v} must be positive"),
                    "remove the key to use the default",
                );
            }
        }
        for (key, v) in [
            ("railed_min_fraction", self.railed_min_fraction),
            ("noisy_line_ratio", self.noisy_line_ratio),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                out.bad(
                    key,
                    format!("{v} is not a fraction"),
                    "use a value between 0 and 1",
                );
            }
        }
    }
}

impl BufferSection {
    pub fn validate(&self, out: &mut Findings) {
        let rs = self.ring_seconds;
        if !(rs.is_finite() && (0.1..=600.0).contains(&rs)) {
            out.bad(
                "ring_seconds",
                format!("{rs} s is out of range"),
                "use 0.1 to 600 s (default 10)",
            );
        }
    }
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
    fn lsl_outlet_streams_are_checked_and_located() {
        let base = "id = \"s\"\ndriver = \"synthetic\"\nenabled = true\n[lsl_outlet]\n";
        let d = parse(&format!("{base}streams = [\"filtered\", \"markers\"]\n")).unwrap();
        assert_eq!(
            d.lsl_outlet.kinds(),
            [StreamKind::Filtered, StreamKind::Markers]
        );
        let e = parse(&format!(
            "{base}streams = [\"filtered\", \"alpha\", \"filtered\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e
            .iter()
            .all(|p| p.key.as_deref() == Some("lsl_outlet.streams")));
        assert!(e.iter().all(|p| p.line_col.is_some()), "{e:?}");
        assert!(
            e[0].message.contains("\"alpha\" is not a stream"),
            "{}",
            e[0]
        );
        assert!(e[1].message.contains("listed twice"), "{}", e[1]);
        let e = parse(&format!("{base}stream = [\"raw\"]\n")).unwrap_err();
        assert!(e[0].message.contains("unknown field `stream`"), "{}", e[0]);
        // Only [lsl_outlet] differs: a reload re-creates the outlets alone.
        let mut other = d.clone();
        other.lsl_outlet.streams.push("raw".into());
        assert!(d.differs_only_in_outlets(&other));
        other.enabled = false;
        assert!(!d.differs_only_in_outlets(&other));
        assert!(!d.differs_only_in_outlets(&d));
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
