//! BrainFlow's C library (`libBoardController`), loaded at run time.
//!
//! All of neuroedge's `unsafe` code for BrainFlow lives here; the rest of
//! the driver ([`super::brainflow`]) uses the safe API below. BrainFlow's
//! C API identifies a session by `(board_id, JSON of input params)`; every
//! call returns an exit code (0 = OK, see [`exit_code_name`]).
//!
//! Signatures (BrainFlow 5.x, `board_controller.h` / `board_info_getter.h`;
//! the ones used here have been stable since 5.0):
//!
//! ```text
//! int prepare_session (int board_id, const char *json_params);
//! int start_stream (int buffer_size, const char *streamer_params, int board_id, const char *json_params);
//! int stop_stream (int board_id, const char *json_params);
//! int release_session (int board_id, const char *json_params);
//! int get_board_data_count (int preset, int *result, int board_id, const char *json_params);
//! int get_board_data (int data_count, int preset, double *data_buf, int board_id, const char *json_params);
//! int get_board_descr (int board_id, int preset, char *board_descr, int *len, int max_len);
//! int get_num_rows (int board_id, int preset, int *num_rows);
//! int set_log_level_board_controller (int log_level);
//! int get_version_board_controller (char *version, int *len, int max_len);
//! ```
//!
//! `get_board_data` writes `num_rows x data_count` doubles, row-major (all
//! samples of row 0, then of row 1, ...), where `num_rows` is
//! `get_num_rows` of the board (of `master_board` for the streaming and
//! playback boards).
//!
//! Loaded libraries are kept for the life of the process: BrainFlow runs
//! its own threads and global objects, and unloading it while any of them
//! lives would crash the daemon.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// BrainFlow's `DEFAULT_PRESET`.
pub const DEFAULT_PRESET: i32 = 0;
/// BrainFlow's `LogLevels::LEVEL_WARN`.
pub const LOG_LEVEL_WARN: i32 = 3;
/// BrainFlow's `LogLevels::LEVEL_OFF`.
pub const LOG_LEVEL_OFF: i32 = 6;

/// Room for a board description. BrainFlow before 5.x copies the JSON
/// without a bound (`strcpy`); the largest descriptions are a few KiB, so
/// 64 KiB leaves a wide margin.
const DESCR_BUF: usize = 64 * 1024;
/// Rows above this are not a real board (guards the buffer arithmetic).
const MAX_ROWS: usize = 4096;

/// A BrainFlow exit code other than `STATUS_OK`, with what was being done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfError {
    pub code: i32,
    pub call: &'static str,
}

impl std::fmt::Display for BfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BrainFlow {} failed with error {} {}",
            self.call,
            self.code,
            exit_code_name(self.code)
        )
    }
}

/// The name of a BrainFlow exit code (`BrainFlowExitCodes` in
/// `brainflow_constants.h`).
pub fn exit_code_name(code: i32) -> &'static str {
    match code {
        0 => "STATUS_OK",
        1 => "PORT_ALREADY_OPEN_ERROR",
        2 => "UNABLE_TO_OPEN_PORT_ERROR",
        3 => "SET_PORT_ERROR",
        4 => "BOARD_WRITE_ERROR",
        5 => "INCOMMING_MSG_ERROR",
        6 => "INITIAL_MSG_ERROR",
        7 => "BOARD_NOT_READY_ERROR",
        8 => "STREAM_ALREADY_RUN_ERROR",
        9 => "INVALID_BUFFER_SIZE_ERROR",
        10 => "STREAM_THREAD_ERROR",
        11 => "STREAM_THREAD_IS_NOT_RUNNING",
        12 => "EMPTY_BUFFER_ERROR",
        13 => "INVALID_ARGUMENTS_ERROR",
        14 => "UNSUPPORTED_BOARD_ERROR",
        15 => "BOARD_NOT_CREATED_ERROR",
        16 => "ANOTHER_BOARD_IS_CREATED_ERROR",
        17 => "GENERAL_ERROR",
        18 => "SYNC_TIMEOUT_ERROR",
        19 => "JSON_NOT_FOUND_ERROR",
        20 => "NO_SUCH_DATA_IN_JSON_ERROR",
        21 => "CLASSIFIER_IS_NOT_PREPARED_ERROR",
        22 => "ANOTHER_CLASSIFIER_IS_PREPARED_ERROR",
        23 => "UNSUPPORTED_CLASSIFIER_AND_METRIC_COMBINATION_ERROR",
        _ => "UNKNOWN_ERROR",
    }
}

fn check(code: c_int, call: &'static str) -> Result<(), BfError> {
    if code == 0 {
        Ok(())
    } else {
        Err(BfError { code, call })
    }
}

type PrepareSession = unsafe extern "C" fn(c_int, *const c_char) -> c_int;
type StartStream = unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char) -> c_int;
type SessionCall = unsafe extern "C" fn(c_int, *const c_char) -> c_int;
type GetBoardDataCount = unsafe extern "C" fn(c_int, *mut c_int, c_int, *const c_char) -> c_int;
type GetBoardData = unsafe extern "C" fn(c_int, c_int, *mut f64, c_int, *const c_char) -> c_int;
type GetBoardDescr = unsafe extern "C" fn(c_int, c_int, *mut c_char, *mut c_int, c_int) -> c_int;
type GetNumRows = unsafe extern "C" fn(c_int, c_int, *mut c_int) -> c_int;
type SetLogLevel = unsafe extern "C" fn(c_int) -> c_int;
type GetVersion = unsafe extern "C" fn(*mut c_char, *mut c_int, c_int) -> c_int;

/// The entry points, copied out of the library (valid while `_lib` lives,
/// which is as long as this struct, which the cache keeps forever).
struct Fns {
    prepare_session: PrepareSession,
    start_stream: StartStream,
    stop_stream: SessionCall,
    release_session: SessionCall,
    get_board_data_count: GetBoardDataCount,
    get_board_data: GetBoardData,
    get_board_descr: GetBoardDescr,
    get_num_rows: GetNumRows,
    set_log_level: SetLogLevel,
    get_version: Option<GetVersion>,
}

/// A loaded `libBoardController`.
pub struct BoardController {
    path: PathBuf,
    fns: Fns,
    _lib: libloading::Library,
}

impl std::fmt::Debug for BoardController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoardController")
            .field("path", &self.path)
            .finish()
    }
}

/// Load (once per path, kept for the life of the process) a BrainFlow
/// board-controller library. The error is a readable sentence.
pub fn load(path: &Path) -> Result<Arc<BoardController>, String> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<BoardController>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.get(path) {
        return Ok(c.clone());
    }
    if !path.is_file() {
        return Err(format!("{} does not exist", path.display()));
    }
    // SAFETY: loading a shared library runs its initialisers. The path is
    // the BrainFlow board controller named by the configuration (or found
    // next to the installed `brainflow` Python package); its initialisers
    // only set up BrainFlow's logger and board tables.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    let fns = {
        fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
            // SAFETY: each `T` used below is the exact C signature of the
            // named BrainFlow 5.x function (see the module documentation);
            // the copied function pointer is only used while `lib` is
            // loaded, which is for the rest of the process.
            unsafe { lib.get::<T>(name.as_bytes()) }
                .map(|s| *s)
                .map_err(|e| format!("not a BrainFlow 5 board controller (missing {name}: {e})"))
        }
        Fns {
            prepare_session: sym(&lib, "prepare_session")?,
            start_stream: sym(&lib, "start_stream")?,
            stop_stream: sym(&lib, "stop_stream")?,
            release_session: sym(&lib, "release_session")?,
            get_board_data_count: sym(&lib, "get_board_data_count")?,
            get_board_data: sym(&lib, "get_board_data")?,
            get_board_descr: sym(&lib, "get_board_descr")?,
            get_num_rows: sym(&lib, "get_num_rows")?,
            set_log_level: sym(&lib, "set_log_level_board_controller")?,
            get_version: sym(&lib, "get_version_board_controller").ok(),
        }
    };
    let c = Arc::new(BoardController {
        path: path.to_path_buf(),
        fns,
        _lib: lib,
    });
    cache.insert(path.to_path_buf(), c.clone());
    Ok(c)
}

impl BoardController {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Set BrainFlow's own (stderr) log level, 0 = trace .. 6 = off.
    pub fn set_log_level(&self, level: i32) -> Result<(), BfError> {
        // SAFETY: takes an int by value; BrainFlow clamps it to 0..=6.
        let r = unsafe { (self.fns.set_log_level)(level) };
        check(r, "set_log_level_board_controller")
    }

    /// The library's version string, if it tells.
    pub fn version(&self) -> Option<String> {
        let f = self.fns.get_version?;
        let mut buf = vec![0u8; 256];
        let mut len: c_int = 0;
        // SAFETY: `buf` holds 256 bytes and BrainFlow writes at most
        // `max_len` (255, leaving a terminator) of them; `len` is a valid
        // out-pointer.
        let r = unsafe { f(buf.as_mut_ptr().cast(), &mut len, 255) };
        if r != 0 {
            return None;
        }
        let len = usize::try_from(len).ok()?.min(255);
        Some(String::from_utf8_lossy(&buf[..len]).trim().to_string())
    }

    /// The board description (JSON) of `board_id` for `preset`.
    pub fn board_descr(&self, board_id: i32, preset: i32) -> Result<String, BfError> {
        let mut buf = vec![0u8; DESCR_BUF];
        let mut len: c_int = 0;
        let max = (DESCR_BUF - 1) as c_int;
        // SAFETY: `buf` holds DESCR_BUF bytes, zeroed; BrainFlow 5.x writes
        // at most `max_len` bytes plus a terminator, older versions copy the
        // JSON unbounded but it is far shorter than DESCR_BUF (see above).
        // `len` is a valid out-pointer.
        let r = unsafe {
            (self.fns.get_board_descr)(board_id, preset, buf.as_mut_ptr().cast(), &mut len, max)
        };
        check(r, "get_board_descr")?;
        let len = usize::try_from(len).unwrap_or(0).min(DESCR_BUF - 1);
        Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
    }

    /// Rows per sample of `board_id` (what `get_board_data` writes per sample).
    pub fn num_rows(&self, board_id: i32, preset: i32) -> Result<usize, BfError> {
        let mut rows: c_int = 0;
        // SAFETY: `rows` is a valid out-pointer for one int.
        let r = unsafe { (self.fns.get_num_rows)(board_id, preset, &mut rows) };
        check(r, "get_num_rows")?;
        match usize::try_from(rows) {
            Ok(n) if (1..=MAX_ROWS).contains(&n) => Ok(n),
            _ => Err(BfError {
                code: 17,
                call: "get_num_rows (implausible row count)",
            }),
        }
    }
}

/// A prepared BrainFlow session: `prepare_session` on creation,
/// `release_session` on [`Session::release`] or drop.
#[derive(Debug)]
pub struct Session {
    ctl: Arc<BoardController>,
    board_id: i32,
    params: CString,
    rows: usize,
    streaming: bool,
    prepared: bool,
}

impl Session {
    /// Prepare a session of `board_id` with BrainFlow input params
    /// `params_json` (all of BrainFlow's keys present). `layout_board` is
    /// the board whose row layout the data has (`board_id` itself, or the
    /// master board of the streaming / playback boards).
    pub fn prepare(
        ctl: Arc<BoardController>,
        board_id: i32,
        params_json: &str,
        layout_board: i32,
    ) -> Result<Session, BfError> {
        let params = CString::new(params_json).map_err(|_| BfError {
            code: 13,
            call: "prepare_session (params contain a NUL byte)",
        })?;
        let rows = ctl.num_rows(layout_board, DEFAULT_PRESET)?;
        // SAFETY: `params` is a NUL-terminated string that outlives the
        // call; BrainFlow copies what it needs. The call may block while
        // the board connects (it runs on the device's acquisition thread).
        let r = unsafe { (ctl.fns.prepare_session)(board_id, params.as_ptr()) };
        check(r, "prepare_session")?;
        Ok(Session {
            ctl,
            board_id,
            params,
            rows,
            streaming: false,
            prepared: true,
        })
    }

    /// Rows per sample in [`Session::read_into`]'s output.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Start streaming into BrainFlow's ring of `buffer_size` samples, no
    /// extra streamer.
    pub fn start_stream(&mut self, buffer_size: usize) -> Result<(), BfError> {
        let size = c_int::try_from(buffer_size).unwrap_or(c_int::MAX);
        let streamer = c"";
        // SAFETY: both strings are NUL-terminated and outlive the call.
        let r = unsafe {
            (self.ctl.fns.start_stream)(
                size,
                streamer.as_ptr(),
                self.board_id,
                self.params.as_ptr(),
            )
        };
        check(r, "start_stream")?;
        self.streaming = true;
        Ok(())
    }

    /// Samples waiting in BrainFlow's ring.
    pub fn data_count(&self) -> Result<usize, BfError> {
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid out-pointer; `params` is NUL-terminated.
        let r = unsafe {
            (self.ctl.fns.get_board_data_count)(
                DEFAULT_PRESET,
                &mut n,
                self.board_id,
                self.params.as_ptr(),
            )
        };
        check(r, "get_board_data_count")?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Take up to `max` samples out of BrainFlow's ring into `buf`
    /// (resized to `rows x n`, row-major: row `r` of sample `i` is
    /// `buf[r * n + i]`). Returns `n`.
    pub fn read_into(&self, max: usize, buf: &mut Vec<f64>) -> Result<usize, BfError> {
        let n = self
            .data_count()?
            .min(max)
            .min(c_int::MAX as usize / self.rows);
        if n == 0 {
            buf.clear();
            return Ok(0);
        }
        buf.clear();
        buf.resize(self.rows * n, f64::NAN);
        // SAFETY: `buf` holds `rows * n` doubles, exactly what BrainFlow
        // writes for `n` samples (`rows` came from `get_num_rows` of the
        // board whose layout the session has). Only this session reads
        // from the ring, so its count can only have grown since
        // `data_count` and BrainFlow returns exactly `n` samples, making
        // the row stride `n`.
        let r = unsafe {
            (self.ctl.fns.get_board_data)(
                n as c_int,
                DEFAULT_PRESET,
                buf.as_mut_ptr(),
                self.board_id,
                self.params.as_ptr(),
            )
        };
        check(r, "get_board_data")?;
        Ok(n)
    }

    /// Stop streaming (the session stays prepared).
    pub fn stop_stream(&mut self) -> Result<(), BfError> {
        if !self.streaming {
            return Ok(());
        }
        self.streaming = false;
        // SAFETY: `params` is NUL-terminated and outlives the call.
        let r = unsafe { (self.ctl.fns.stop_stream)(self.board_id, self.params.as_ptr()) };
        check(r, "stop_stream")
    }

    /// Stop streaming and release the board.
    pub fn release(&mut self) -> Result<(), BfError> {
        let stopped = self.stop_stream();
        if !self.prepared {
            return stopped;
        }
        self.prepared = false;
        // SAFETY: `params` is NUL-terminated and outlives the call.
        let r = unsafe { (self.ctl.fns.release_session)(self.board_id, self.params.as_ptr()) };
        check(r, "release_session").and(stopped)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::debug!("releasing BrainFlow session: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_named_as_in_brainflow_constants() {
        assert_eq!(exit_code_name(0), "STATUS_OK");
        assert_eq!(exit_code_name(2), "UNABLE_TO_OPEN_PORT_ERROR");
        assert_eq!(exit_code_name(7), "BOARD_NOT_READY_ERROR");
        assert_eq!(exit_code_name(13), "INVALID_ARGUMENTS_ERROR");
        assert_eq!(exit_code_name(14), "UNSUPPORTED_BOARD_ERROR");
        assert_eq!(exit_code_name(17), "GENERAL_ERROR");
        assert_eq!(exit_code_name(18), "SYNC_TIMEOUT_ERROR");
        assert_eq!(exit_code_name(99), "UNKNOWN_ERROR");
        let e = BfError {
            code: 14,
            call: "prepare_session",
        };
        assert_eq!(
            e.to_string(),
            "BrainFlow prepare_session failed with error 14 UNSUPPORTED_BOARD_ERROR"
        );
    }

    #[test]
    fn missing_library_is_a_sentence() {
        let e = load(Path::new("/nonexistent/libBoardController.so")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}
