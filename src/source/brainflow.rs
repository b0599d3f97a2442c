//! The BrainFlow driver: any board BrainFlow supports, through its C
//! library `libBoardController` (loaded at run time by
//! [`super::brainflow_ffi`], which holds all the unsafe code).
//!
//! - Library: `library` from the device file, else `$NEUROEDGE_BRAINFLOW_LIB`,
//!   else `lib/libBoardController.so` next to the `brainflow` Python package
//!   that `python3` imports. (The PyPI wheel ships x86-64 Linux libraries
//!   only: on ARM, build BrainFlow from source and set `library`.)
//! - Layout: channel rows, sample rate, names, timestamp / marker /
//!   package-number rows come from BrainFlow's board description.
//! - Timestamps: BrainFlow stamps each sample with the host's wall-clock
//!   time of reception; those become receive times on the monotonic
//!   timeline and go through the dejitter fit like any clockless device.
//! - Gaps: a package-number row that counts +1 per sample and wraps is
//!   used to reveal lost samples (whole wraps estimated from time).
//! - Markers: non-zero values in the marker row become batch markers.

use super::brainflow_ffi::{self, BfError, BoardController, Session};
use super::{default_names, Sink, Source, SourceError, StreamInfo};
use super::{BuildContext, DriverConfig};
use crate::validate::Findings;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// Boxed: the params are large and rarely read.
    #[serde(default)]
    pub params: Box<BrainflowParams>,
}

impl DriverConfig for BrainflowConnection {
    const NAME: &'static str = "brainflow";

    fn validate(&self, out: &mut Findings) {
        // BrainFlow's streaming (-2) and playback (-3) boards carry another
        // board's data and need to know which.
        if matches!(self.board_id, -2 | -3) && matches!(self.params.master_board, None | Some(-100))
        {
            out.bad(
                "board_id",
                format!(
                    "board_id {} (BrainFlow's streaming / playback board) needs params.master_board",
                    self.board_id
                ),
                "set master_board in [connection.params] to the board id whose data it carries",
            );
        }
    }

    fn resolve_paths(&mut self, dir: &Path) {
        if let Some(lib) = self.library.as_mut() {
            if lib.is_relative() {
                *lib = dir.join(&*lib);
            }
        }
    }

    fn build(&self, _ctx: &BuildContext<'_>) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(Brainflow::new(self.clone())))
    }
}

/// Pause between polls of BrainFlow's ring when it has been emptied.
const POLL: Duration = Duration::from_millis(20);
/// Samples taken from BrainFlow's ring per read at most.
const MAX_CHUNK: usize = 4096;
/// BrainFlow's ring: this many seconds of samples (at least 45000 samples).
const RING_SECONDS: f64 = 120.0;
/// Environment variable naming the library (after `library` in the file).
pub const LIB_ENV: &str = "NEUROEDGE_BRAINFLOW_LIB";
/// BrainFlow's `BoardIds::STREAMING_BOARD` and `PLAYBACK_FILE_BOARD`: their
/// data has the layout of `params.master_board`.
const STREAMING_BOARD: i32 = -2;
const PLAYBACK_FILE_BOARD: i32 = -3;
/// BrainFlow's `NO_BOARD` (the default `master_board`).
const NO_BOARD: i32 = -100;
/// A package counter is trusted after this many +1 steps and a clean wrap.
const COUNTER_TRUST_STEPS: u32 = 32;

/// What the board description says about the default preset's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardLayout {
    pub name: String,
    pub sample_rate: f64,
    pub num_rows: usize,
    /// Rows holding the EEG (else ExG) channels, in order.
    pub channel_rows: Vec<usize>,
    pub channel_names: Vec<String>,
    pub timestamp_row: Option<usize>,
    pub marker_row: Option<usize>,
    pub package_row: Option<usize>,
}

/// Parse BrainFlow's board description JSON (`get_board_descr`).
pub fn parse_board_descr(json: &str) -> Result<BoardLayout, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("unreadable board description: {e}"))?;
    let num_rows = v["num_rows"]
        .as_u64()
        .filter(|n| *n > 0)
        .ok_or("board description has no num_rows")? as usize;
    let sample_rate = v["sampling_rate"]
        .as_f64()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or("board description has no sampling_rate")?;
    let rows_of = |key: &str| -> Result<Vec<usize>, String> {
        match v.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|r| r as usize)
                        .filter(|r| *r < num_rows)
                        .ok_or_else(|| format!("board description: bad row {x} in {key}"))
                })
                .collect(),
            Some(x) => Err(format!("board description: {key} is not a list ({x})")),
        }
    };
    let row_of = |key: &str| -> Result<Option<usize>, String> {
        match v.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(|r| r as usize)
                .filter(|r| *r < num_rows)
                .map(Some)
                .ok_or_else(|| format!("board description: bad row {x} for {key}")),
        }
    };
    let mut channel_rows = rows_of("eeg_channels")?;
    let mut from_eeg = true;
    if channel_rows.is_empty() {
        // Boards without EEG rows (EMG/ECG devices): their ExG rows.
        from_eeg = false;
        for key in ["emg_channels", "ecg_channels", "eog_channels"] {
            for r in rows_of(key)? {
                if !channel_rows.contains(&r) {
                    channel_rows.push(r);
                }
            }
        }
        channel_rows.sort_unstable();
    }
    if channel_rows.is_empty() {
        return Err("the board description lists no EEG or ExG channels".into());
    }
    let names: Vec<String> = v["eeg_names"]
        .as_str()
        .map(|s| s.split(',').map(|n| n.trim().to_string()).collect())
        .unwrap_or_default();
    let channel_names =
        if from_eeg && names.len() == channel_rows.len() && names.iter().all(|n| !n.is_empty()) {
            names
        } else {
            default_names(channel_rows.len())
        };
    Ok(BoardLayout {
        name: v["name"].as_str().unwrap_or("").to_string(),
        sample_rate,
        num_rows,
        channel_rows,
        channel_names,
        timestamp_row: row_of("timestamp_channel")?,
        marker_row: row_of("marker_channel")?,
        package_row: row_of("package_num_channel")?,
    })
}

/// BrainFlow's input params as the JSON its C API wants: every key
/// present (BrainFlow rejects a JSON missing any of them), unset ones at
/// BrainFlow's own defaults.
pub fn params_json(p: &BrainflowParams) -> String {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    serde_json::json!({
        "serial_port": s(&p.serial_port),
        "mac_address": s(&p.mac_address),
        "ip_address": s(&p.ip_address),
        "ip_address_aux": s(&p.ip_address_aux),
        "ip_address_anc": s(&p.ip_address_anc),
        "ip_port": p.ip_port.unwrap_or(0),
        "ip_port_aux": p.ip_port_aux.unwrap_or(0),
        "ip_port_anc": p.ip_port_anc.unwrap_or(0),
        "ip_protocol": p.ip_protocol.unwrap_or(0),
        "other_info": s(&p.other_info),
        "timeout": p.timeout.unwrap_or(0),
        "serial_number": s(&p.serial_number),
        "file": s(&p.file),
        "file_aux": s(&p.file_aux),
        "file_anc": s(&p.file_anc),
        "master_board": p.master_board.unwrap_or(NO_BOARD),
    })
    .to_string()
}

/// Whether retrying can help after BrainFlow returned `code`.
pub fn is_retryable(code: i32) -> bool {
    !matches!(
        code,
        // Bad buffer size, bad arguments, unknown board, missing board
        // tables: only a configuration change (or another library) helps.
        9 | 13 | 14 | 19 | 20
    )
}

/// A BrainFlow failure as a driver error: the code, its name and a hint.
pub fn source_error(e: &BfError, board_id: i32) -> SourceError {
    let hint = match e.code {
        1 => "the port is already open (another program or device file uses it)",
        2 | 3 => "check params.serial_port (or the address) and that the board is plugged in and the user may open it (group dialout)",
        4..=7 | 18 => "the board does not answer: check power, dongle and distance",
        8 => "a stream was already running; it will be restarted",
        9 => "invalid buffer size",
        10..=12 => "BrainFlow's stream thread stopped",
        13 => "BrainFlow rejected the params: check [connection.params] in the device file",
        14 => "this BrainFlow library does not support that board_id: check board_id or use a newer BrainFlow",
        15 => "the session is gone",
        16 => "another device file (or process) uses the same board_id and params",
        17 => "see BrainFlow's log for details",
        _ => "",
    };
    let m = if hint.is_empty() {
        format!("{e} (board_id {board_id})")
    } else {
        format!("{e} (board_id {board_id}): {hint}")
    };
    if is_retryable(e.code) {
        SourceError::Unavailable(m)
    } else {
        SourceError::Fatal(m)
    }
}

/// How to get the library, for error messages.
const INSTALL_HINT: &str = "install BrainFlow's Python package (`pip install brainflow`, \
     as the user that runs neuroedge, so that `python3 -c 'import brainflow'` works), \
     or set `library` in [connection] (or NEUROEDGE_BRAINFLOW_LIB) to the path of \
     libBoardController.so; on ARM (Raspberry Pi) the PyPI wheel has no library for \
     the CPU: build BrainFlow from source and point `library` at its \
     installed lib/libBoardController.so";

/// The library to load: `library` from the file, else `$NEUROEDGE_BRAINFLOW_LIB`,
/// else next to the `brainflow` Python package.
pub fn locate_library(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(LIB_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import brainflow, os; print(os.path.dirname(brainflow.__file__))",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3 to find BrainFlow ({e})"))?;
    if !out.status.success() {
        return Err("the brainflow Python package is not installed for python3".into());
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&dir).join("lib").join("libBoardController.so");
    if lib.is_file() {
        Ok(lib)
    } else {
        Err(format!(
            "the brainflow Python package in {dir} has no lib/libBoardController.so \
             (wheels for this CPU do not ship one)"
        ))
    }
}

/// A wrapping per-sample counter (BrainFlow's package-number row), used to
/// reveal lost samples. Only a counter seen to step +1 per sample and to
/// wrap cleanly to 0 is believed; its modulus is learned from the wrap.
#[derive(Debug, Clone, Default)]
pub struct PackageCounter {
    last: Option<u64>,
    max_seen: u64,
    run: u32,
    modulus: Option<u64>,
    trusted: bool,
}

impl PackageCounter {
    /// The modulus once learned (and the counter trusted).
    pub fn modulus(&self) -> Option<u64> {
        if self.trusted {
            self.modulus
        } else {
            None
        }
    }

    /// Forget the previous value (a new connection).
    pub fn restart(&mut self) {
        self.last = None;
        self.run = 0;
    }

    /// The next sample's counter value; returns how many samples the
    /// counter shows lost before it (0 unless trusted).
    pub fn observe(&mut self, value: f64) -> u64 {
        if !value.is_finite() || value < 0.0 || value > u32::MAX as f64 {
            self.last = None;
            self.run = 0;
            self.trusted = false;
            return 0;
        }
        let v = value.round() as u64;
        let prev = self.last.replace(v);
        self.max_seen = self.max_seen.max(v);
        if let Some(m) = self.modulus {
            if v >= m {
                // Larger than the learned modulus: not what we thought.
                self.modulus = None;
                self.trusted = false;
                self.run = 0;
                return 0;
            }
        }
        let Some(prev) = prev else { return 0 };
        if v == prev + 1 {
            self.run = self.run.saturating_add(1);
            return 0;
        }
        if v == 0 && prev > 0 && prev == self.max_seen && self.run >= COUNTER_TRUST_STEPS {
            // A clean wrap after a run of +1 steps: modulus = prev + 1.
            if self.modulus.is_none() {
                self.modulus = Some(prev + 1);
            }
            if self.modulus == Some(prev + 1) {
                self.trusted = true;
                self.run = self.run.saturating_add(1);
                return 0;
            }
        }
        match (self.trusted, self.modulus) {
            (true, Some(m)) => {
                // Both below `m` (checked above as each arrived).
                let step = (v + m).saturating_sub(prev) % m;
                if step == 0 {
                    // Repeated values: not a per-sample counter.
                    self.trusted = false;
                    self.run = 0;
                    0
                } else {
                    step - 1
                }
            }
            _ => {
                self.run = 0;
                0
            }
        }
    }
}

pub struct Brainflow {
    cfg: BrainflowConnection,
    ctl: Option<Arc<BoardController>>,
    session: Option<Session>,
    layout: Option<BoardLayout>,
    buf: Vec<f64>,
    frame: Vec<f32>,
    counter: PackageCounter,
}

impl Brainflow {
    pub fn new(cfg: BrainflowConnection) -> Self {
        Brainflow {
            cfg,
            ctl: None,
            session: None,
            layout: None,
            buf: Vec::new(),
            frame: Vec::new(),
            counter: PackageCounter::default(),
        }
    }

    fn controller(&mut self) -> Result<Arc<BoardController>, SourceError> {
        if let Some(c) = &self.ctl {
            return Ok(c.clone());
        }
        let path = locate_library(self.cfg.library.as_deref()).map_err(|e| {
            SourceError::Fatal(format!("BrainFlow library not found: {e}; {INSTALL_HINT}"))
        })?;
        let ctl = brainflow_ffi::load(&path).map_err(|e| {
            SourceError::Fatal(format!("BrainFlow library unusable: {e}; {INSTALL_HINT}"))
        })?;
        // BrainFlow logs to stderr on its own; keep only its warnings and
        // errors (our own messages say what failed).
        if let Err(e) = ctl.set_log_level(brainflow_ffi::LOG_LEVEL_WARN) {
            tracing::debug!("{e}");
        }
        tracing::info!(
            library = %ctl.path().display(),
            version = ctl.version().unwrap_or_default(),
            "BrainFlow library loaded"
        );
        self.ctl = Some(ctl.clone());
        Ok(ctl)
    }

    /// The board whose row layout the data has.
    fn layout_board(&self) -> Result<i32, SourceError> {
        let id = self.cfg.board_id;
        if id == STREAMING_BOARD || id == PLAYBACK_FILE_BOARD {
            match self.cfg.params.master_board {
                Some(m) if m != NO_BOARD => Ok(m),
                _ => Err(SourceError::Fatal(format!(
                    "BrainFlow board_id {id} (streaming / playback board) needs \
                     params.master_board = the board id whose data it carries"
                ))),
            }
        } else {
            Ok(id)
        }
    }
}

impl Source for Brainflow {
    fn open(&mut self) -> Result<StreamInfo, SourceError> {
        self.close();
        let ctl = self.controller()?;
        let board_id = self.cfg.board_id;
        let layout_board = self.layout_board()?;
        let descr = ctl
            .board_descr(layout_board, brainflow_ffi::DEFAULT_PRESET)
            .map_err(|e| {
                if e.code == 14 {
                    SourceError::Fatal(format!(
                        "BrainFlow does not know board_id {layout_board} ({e}); see \
                         BrainFlow's list of supported boards for the id of your board"
                    ))
                } else {
                    source_error(&e, board_id)
                }
            })?;
        let layout = parse_board_descr(&descr)
            .map_err(|e| SourceError::Fatal(format!("BrainFlow board_id {layout_board}: {e}")))?;
        let json = params_json(&self.cfg.params);
        let mut session = Session::prepare(ctl, board_id, &json, layout_board)
            .map_err(|e| source_error(&e, board_id))?;
        if session.rows() != layout.num_rows {
            return Err(SourceError::Fatal(format!(
                "BrainFlow board_id {layout_board}: description says {} rows, the library {}",
                layout.num_rows,
                session.rows()
            )));
        }
        let ring = ((RING_SECONDS * layout.sample_rate) as usize).max(45_000);
        session
            .start_stream(ring)
            .map_err(|e| source_error(&e, board_id))?;
        tracing::info!(
            board_id,
            board = %layout.name,
            rate = layout.sample_rate,
            channels = layout.channel_rows.len(),
            "BrainFlow session started"
        );
        let info = StreamInfo {
            sample_rate: layout.sample_rate,
            channels: layout.channel_rows.len(),
            channel_names: layout.channel_names.clone(),
            chunk_s: 0.1,
        };
        self.frame = vec![0.0; layout.channel_rows.len()];
        self.buf = Vec::with_capacity(layout.num_rows * 256);
        self.counter.restart();
        self.layout = Some(layout);
        self.session = Some(session);
        Ok(info)
    }

    fn read(&mut self, sink: &mut Sink<'_>) -> Result<(), SourceError> {
        let (Some(session), Some(layout)) = (self.session.as_ref(), self.layout.as_ref()) else {
            return Err(SourceError::Unavailable("read before open".into()));
        };
        let board_id = self.cfg.board_id;
        let n = session.read_into(MAX_CHUNK, &mut self.buf).map_err(|e| {
            match source_error(&e, board_id) {
                SourceError::Unavailable(m) => SourceError::Disconnected(m),
                other => other,
            }
        })?;
        if n == 0 {
            std::thread::sleep(POLL);
            return Ok(());
        }
        // BrainFlow's stamps are wall-clock receive times: measure the
        // wall clock against the timeline once per read.
        let mono_now = sink.mono_now();
        let wall_offset = crate::clock::wall_unix() - mono_now;
        let buf = &self.buf;
        for i in 0..n {
            let at = |row: usize| buf[row * n + i];
            // A stamp from a stepped clock is held within the last minute
            // (so that neighbours in one read stay in order); garbage: now.
            let received = layout
                .timestamp_row
                .map(|r| at(r) - wall_offset)
                .filter(|t| t.is_finite())
                .map_or(mono_now, |t| t.clamp(mono_now - 60.0, mono_now + 0.5));
            if let Some(r) = layout.package_row {
                let lost = self.counter.observe(at(r));
                if lost > 0 {
                    let m = self.counter.modulus().unwrap_or(0);
                    let missing = sink.missing_with_wraps(received, lost, m);
                    sink.skip(missing);
                }
            }
            for (v, &r) in self.frame.iter_mut().zip(&layout.channel_rows) {
                *v = at(r) as f32;
            }
            sink.push_received(received, &self.frame);
            if let Some(r) = layout.marker_row {
                let m = at(r);
                if m != 0.0 && m.is_finite() {
                    let t = sink.timing.last_mono();
                    sink.marker(t, m.to_string());
                }
            }
        }
        if n < MAX_CHUNK {
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    fn close(&mut self) {
        if let Some(mut s) = self.session.take() {
            if let Err(e) = s.release() {
                tracing::debug!("closing BrainFlow session: {e}");
            }
        }
    }
}

impl Drop for Brainflow {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNTHETIC: &str = r#"{"accel_channels": [17, 18, 19], "battery_channel": 29,
        "ecg_channels": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        "eeg_channels": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        "eeg_names": "Fz,C3,Cz,C4,Pz,PO7,Oz,PO8,F5,F7,F3,F1,F2,F4,F6,F8",
        "marker_channel": 31, "name": "Synthetic", "num_rows": 32,
        "package_num_channel": 0, "sampling_rate": 250, "timestamp_channel": 30}"#;

    #[test]
    fn parses_the_synthetic_board_description() {
        let l = parse_board_descr(SYNTHETIC).unwrap();
        assert_eq!(l.name, "Synthetic");
        assert_eq!(l.sample_rate, 250.0);
        assert_eq!(l.num_rows, 32);
        assert_eq!(l.channel_rows, (1..=16).collect::<Vec<_>>());
        assert_eq!(l.channel_names[0], "Fz");
        assert_eq!(l.channel_names[15], "F8");
        assert_eq!(l.timestamp_row, Some(30));
        assert_eq!(l.marker_row, Some(31));
        assert_eq!(l.package_row, Some(0));
    }

    #[test]
    fn description_without_names_or_eeg_rows() {
        let l = parse_board_descr(
            r#"{"num_rows": 6, "sampling_rate": 500, "emg_channels": [3, 1],
                "ecg_channels": [1], "timestamp_channel": 5}"#,
        )
        .unwrap();
        assert_eq!(l.channel_rows, vec![1, 3]);
        assert_eq!(l.channel_names, vec!["ch1", "ch2"]);
        assert_eq!(l.marker_row, None);
        assert_eq!(l.package_row, None);
        // Names that do not match the channel count are ignored.
        let l = parse_board_descr(
            r#"{"num_rows": 4, "sampling_rate": 250, "eeg_channels": [1, 2], "eeg_names": "A"}"#,
        )
        .unwrap();
        assert_eq!(l.channel_names, vec!["ch1", "ch2"]);
    }

    #[test]
    fn bad_descriptions_are_errors() {
        for (json, what) in [
            ("not json", "unreadable"),
            (r#"{"sampling_rate": 250, "eeg_channels": [1]}"#, "num_rows"),
            (r#"{"num_rows": 4, "eeg_channels": [1]}"#, "sampling_rate"),
            (r#"{"num_rows": 4, "sampling_rate": 250}"#, "no EEG"),
            (
                r#"{"num_rows": 4, "sampling_rate": 250, "eeg_channels": [4]}"#,
                "bad row",
            ),
            (
                r#"{"num_rows": 4, "sampling_rate": 250, "eeg_channels": [1], "marker_channel": 9}"#,
                "marker_channel",
            ),
        ] {
            let e = parse_board_descr(json).unwrap_err();
            assert!(e.contains(what), "{json}: {e}");
        }
    }

    #[test]
    fn params_json_has_every_key_brainflow_reads() {
        let p = BrainflowParams {
            serial_port: Some("/dev/ttyUSB0".into()),
            timeout: Some(15),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&params_json(&p)).unwrap();
        for k in [
            "serial_port",
            "mac_address",
            "ip_address",
            "ip_address_aux",
            "ip_address_anc",
            "ip_port",
            "ip_port_aux",
            "ip_port_anc",
            "ip_protocol",
            "other_info",
            "timeout",
            "serial_number",
            "file",
            "file_aux",
            "file_anc",
            "master_board",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        assert_eq!(v["serial_port"], "/dev/ttyUSB0");
        assert_eq!(v["timeout"], 15);
        assert_eq!(v["ip_port"], 0);
        assert_eq!(v["mac_address"], "");
        assert_eq!(v["master_board"], -100);
    }

    #[test]
    fn error_codes_map_to_retry_or_fatal_with_names() {
        let e = |code| BfError {
            code,
            call: "prepare_session",
        };
        match source_error(&e(2), 0) {
            SourceError::Unavailable(m) => {
                assert!(m.contains("error 2 UNABLE_TO_OPEN_PORT_ERROR"), "{m}");
                assert!(m.contains("serial_port"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            source_error(&e(7), 0),
            SourceError::Unavailable(_)
        ));
        match source_error(&e(14), 999) {
            SourceError::Fatal(m) => {
                assert!(m.contains("14 UNSUPPORTED_BOARD_ERROR"), "{m}");
                assert!(m.contains("board_id 999"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(source_error(&e(13), 0), SourceError::Fatal(_)));
        assert!(matches!(
            source_error(&e(17), 0),
            SourceError::Unavailable(_)
        ));
    }

    #[test]
    fn configured_library_wins() {
        let p = Path::new("/opt/brainflow/lib/libBoardController.so");
        assert_eq!(locate_library(Some(p)).unwrap(), p);
    }

    fn feed(c: &mut PackageCounter, values: impl IntoIterator<Item = u64>) -> Vec<u64> {
        values
            .into_iter()
            .map(|v| c.observe(v as f64))
            .filter(|&l| l > 0)
            .collect()
    }

    #[test]
    fn package_counter_learns_the_wrap_then_reveals_losses() {
        let mut c = PackageCounter::default();
        // 0..=255 twice: no losses, modulus 256 learned at the first wrap.
        assert!(feed(&mut c, (0..512).map(|i| i % 256)).is_empty());
        assert_eq!(c.modulus(), Some(256));
        // 5 lost inside a cycle.
        assert_eq!(feed(&mut c, [0, 1, 2, 8, 9]), vec![5]);
        // 3 lost across the wrap: 254 -> 2 skips 255, 0, 1.
        assert_eq!(feed(&mut c, (10..=254).chain([2, 3])), vec![3]);
    }

    #[test]
    fn package_counter_ignores_what_is_not_a_sample_counter() {
        // Before a clean wrap nothing is believed.
        let mut c = PackageCounter::default();
        assert!(feed(&mut c, [0, 1, 2, 10, 11, 40]).is_empty());
        assert_eq!(c.modulus(), None);
        // Two samples per package (repeated values): never trusted.
        let mut c = PackageCounter::default();
        let pairs = (0..1024).map(|i| (i / 2) % 256);
        assert!(feed(&mut c, pairs).is_empty());
        assert_eq!(c.modulus(), None);
        // A trusted counter that starts repeating loses its trust.
        let mut c = PackageCounter::default();
        feed(&mut c, (0..300).map(|i| i % 256));
        assert_eq!(c.modulus(), Some(256));
        assert!(feed(&mut c, [44, 44, 45, 47]).is_empty());
        assert_eq!(c.modulus(), None);
        // Garbage resets.
        assert_eq!(c.observe(f64::NAN), 0);
        assert_eq!(c.observe(-1.0), 0);
    }

    #[test]
    fn package_counter_survives_out_of_range_values_after_a_reconnect() {
        let mut c = PackageCounter::default();
        feed(&mut c, (0..600).map(|i| i % 256));
        assert_eq!(c.modulus(), Some(256));
        c.restart();
        // A first value beyond the modulus, then small ones: no panic, no
        // invented loss.
        assert!(feed(&mut c, [1000, 3, 4, 5]).is_empty());
    }
}
