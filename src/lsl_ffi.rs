//! liblsl (Lab Streaming Layer), loaded at run time: the crate's one
//! module of unsafe code for LSL, shared by the inlet driver
//! ([`crate::source::lsl`]) and LSL outlets. Everything else uses the safe
//! API below.
//!
//! Where the library comes from ([`Lsl::load`]): `$NEUROEDGE_LSL_LIB` when
//! set; else the `liblsl.so*` bundled in the `pylsl` Python package that
//! `python3` would import (`pylsl/lib/`); else the system's `liblsl.so.2` /
//! `liblsl.so` (the dynamic loader's search path). Nothing LSL is needed to
//! build neuroedge, and a missing library only stops LSL devices, with a
//! message naming the fix ([`INSTALL_HINT`]).
//!
//! Signatures (liblsl 1.14+ C API, `include/lsl/*.h`; `int32_t` = `i32`,
//! `unsigned long` = `c_ulong`, the enums are 4 bytes):
//!
//! ```text
//! double lsl_local_clock();
//! int32_t lsl_library_version();
//! const char *lsl_library_info(void);
//! const char *lsl_last_error(void);                                   // 1.14+, optional here
//! void lsl_destroy_string(char *s);
//! lsl_streaminfo lsl_create_streaminfo(const char *name, const char *type, int32_t channel_count,
//!     double nominal_srate, lsl_channel_format_t channel_format, const char *source_id);
//! void lsl_destroy_streaminfo(lsl_streaminfo info);
//! const char *lsl_get_name / lsl_get_type / lsl_get_source_id / lsl_get_uid
//!     / lsl_get_session_id / lsl_get_hostname (lsl_streaminfo info);
//! int32_t lsl_get_channel_count(lsl_streaminfo info);
//! double lsl_get_nominal_srate(lsl_streaminfo info);
//! lsl_channel_format_t lsl_get_channel_format(lsl_streaminfo info);
//! double lsl_get_created_at(lsl_streaminfo info);
//! lsl_xml_ptr lsl_get_desc(lsl_streaminfo info);
//! char *lsl_get_xml(lsl_streaminfo info);                              // free with lsl_destroy_string
//! lsl_xml_ptr lsl_child(lsl_xml_ptr e, const char *name);
//! lsl_xml_ptr lsl_first_child(lsl_xml_ptr e);
//! lsl_xml_ptr lsl_next_sibling(lsl_xml_ptr e);
//! lsl_xml_ptr lsl_next_sibling_n(lsl_xml_ptr e, const char *name);
//! int32_t lsl_empty(lsl_xml_ptr e);
//! const char *lsl_name(lsl_xml_ptr e);
//! const char *lsl_child_value(lsl_xml_ptr e);
//! const char *lsl_child_value_n(lsl_xml_ptr e, const char *name);
//! lsl_xml_ptr lsl_append_child(lsl_xml_ptr e, const char *name);
//! lsl_xml_ptr lsl_append_child_value(lsl_xml_ptr e, const char *name, const char *value);
//! int32_t lsl_resolve_bypred(lsl_streaminfo *buffer, uint32_t buffer_elements, const char *pred,
//!     int32_t minimum, double timeout);
//! lsl_continuous_resolver lsl_create_continuous_resolver_bypred(const char *pred, double forget_after);
//! int32_t lsl_resolver_results(lsl_continuous_resolver res, lsl_streaminfo *buffer, uint32_t buffer_elements);
//! void lsl_destroy_continuous_resolver(lsl_continuous_resolver res);
//! lsl_inlet lsl_create_inlet(lsl_streaminfo info, int32_t max_buflen, int32_t max_chunklen, int32_t recover);
//! void lsl_destroy_inlet(lsl_inlet in);
//! lsl_streaminfo lsl_get_fullinfo(lsl_inlet in, double timeout, int32_t *ec);
//! void lsl_open_stream(lsl_inlet in, double timeout, int32_t *ec);
//! double lsl_time_correction(lsl_inlet in, double timeout, int32_t *ec);
//! unsigned long lsl_pull_chunk_f(lsl_inlet in, float *data_buffer, double *timestamp_buffer,
//!     unsigned long data_buffer_elements, unsigned long timestamp_buffer_elements, double timeout, int32_t *ec);
//! unsigned long lsl_pull_chunk_str(lsl_inlet in, char **data_buffer, double *timestamp_buffer,
//!     unsigned long data_buffer_elements, unsigned long timestamp_buffer_elements, double timeout, int32_t *ec);
//! uint32_t lsl_samples_available(lsl_inlet in);
//! lsl_outlet lsl_create_outlet(lsl_streaminfo info, int32_t chunk_size, int32_t max_buffered);
//! void lsl_destroy_outlet(lsl_outlet out);
//! int32_t lsl_push_chunk_ftn(lsl_outlet out, const float *data, unsigned long data_elements,
//!     const double *timestamps);
//! int32_t lsl_push_sample_strt(lsl_outlet out, const char **data, double timestamp);
//! int32_t lsl_have_consumers(lsl_outlet out);
//! int32_t lsl_wait_for_consumers(lsl_outlet out, double timeout);
//! ```
//!
//! Ownership (from liblsl's headers and `src/lsl_*_c.cpp`): stream infos
//! returned by the resolvers and `lsl_get_fullinfo` belong to the caller;
//! strings from the `lsl_get_*` / XML getters point into their info object
//! (copied out here at once); `lsl_get_xml` and each string written by
//! `lsl_pull_chunk_str` are `malloc`ed for the caller (freed with
//! `lsl_destroy_string`); `lsl_create_inlet` / `lsl_create_outlet` copy the
//! info they are given. A chunked pull with a timeout returns when the
//! buffer is full or the timeout has passed (liblsl ≥ 1.14 waits on a
//! condition variable, not in a sleep loop). Errors come back as `NULL`
//! handles or in `*ec` (`lsl_error_code_t`: -1 timeout, -2 lost, -3
//! argument, -4 internal), with `lsl_last_error` explaining the last one.
//!
//! The library is kept loaded for the life of the process once loaded:
//! liblsl runs its own threads (resolvers, time and data receivers).

#![allow(unsafe_code)]

use std::ffi::{c_char, c_double, c_float, c_int, c_ulong, c_void, CStr, CString};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Environment variable naming the library to load.
pub const LIB_ENV: &str = "NEUROEDGE_LSL_LIB";

/// How to get liblsl, for error messages.
pub const INSTALL_HINT: &str = "install pylsl, which bundles liblsl (`pip install pylsl`, as the \
     user that runs neuroedge, so that `python3 -c 'import pylsl'` works), or a system liblsl \
     (liblsl.so.2 on the loader's path, e.g. the .deb from github.com/sccn/liblsl/releases), \
     or set NEUROEDGE_LSL_LIB to the path of liblsl.so";

/// The names tried on the loader's search path, in order.
const SYSTEM_NAMES: [&str; 2] = ["liblsl.so.2", "liblsl.so"];

/// Streams a resolve returns at most.
const MAX_RESOLVED: usize = 64;

/// A string returned by liblsl longer than this is cut (guards a corrupt
/// pointer from turning into a huge copy; real names and XML are far shorter).
const MAX_STR: usize = 1 << 20;

// ---------------------------------------------------------------- errors

/// A failed liblsl call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LslError {
    /// The operation timed out (`lsl_timeout_error`).
    Timeout(String),
    /// The stream's source is gone (`lsl_lost_error`).
    Lost(String),
    /// liblsl rejected an argument (`lsl_argument_error`), e.g. a bad query.
    Argument(String),
    /// Anything else (`lsl_internal_error`, a NULL handle, ...).
    Internal(String),
}

impl std::fmt::Display for LslError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LslError::Timeout(m) => write!(f, "timed out ({m})"),
            LslError::Lost(m) => write!(f, "stream lost ({m})"),
            LslError::Argument(m) => write!(f, "bad argument ({m})"),
            LslError::Internal(m) => write!(f, "liblsl error ({m})"),
        }
    }
}

impl std::error::Error for LslError {}

/// Sample value types (`lsl_channel_format_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelFormat {
    Float32,
    Double64,
    String,
    Int32,
    Int16,
    Int8,
    Int64,
    Undefined,
}

impl ChannelFormat {
    fn from_raw(v: c_int) -> Self {
        match v {
            1 => ChannelFormat::Float32,
            2 => ChannelFormat::Double64,
            3 => ChannelFormat::String,
            4 => ChannelFormat::Int32,
            5 => ChannelFormat::Int16,
            6 => ChannelFormat::Int8,
            7 => ChannelFormat::Int64,
            _ => ChannelFormat::Undefined,
        }
    }

    fn raw(self) -> c_int {
        match self {
            ChannelFormat::Float32 => 1,
            ChannelFormat::Double64 => 2,
            ChannelFormat::String => 3,
            ChannelFormat::Int32 => 4,
            ChannelFormat::Int16 => 5,
            ChannelFormat::Int8 => 6,
            ChannelFormat::Int64 => 7,
            ChannelFormat::Undefined => 0,
        }
    }

    /// Whether samples of this format are numbers.
    pub fn is_numeric(self) -> bool {
        !matches!(self, ChannelFormat::String | ChannelFormat::Undefined)
    }
}

impl std::fmt::Display for ChannelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChannelFormat::Float32 => "float32",
            ChannelFormat::Double64 => "double64",
            ChannelFormat::String => "string",
            ChannelFormat::Int32 => "int32",
            ChannelFormat::Int16 => "int16",
            ChannelFormat::Int8 => "int8",
            ChannelFormat::Int64 => "int64",
            ChannelFormat::Undefined => "undefined",
        })
    }
}

// ------------------------------------------------------------ raw types

#[repr(C)]
struct RawInfo(c_void);
#[repr(C)]
struct RawXml(c_void);
#[repr(C)]
struct RawInlet(c_void);
#[repr(C)]
struct RawOutlet(c_void);
#[repr(C)]
struct RawResolver(c_void);

type InfoPtr = *mut RawInfo;
type XmlPtr = *mut RawXml;

type FnClock = unsafe extern "C" fn() -> c_double;
type FnI32 = unsafe extern "C" fn() -> i32;
type FnStr = unsafe extern "C" fn() -> *const c_char;
type FnDestroyString = unsafe extern "C" fn(*mut c_char);
type FnCreateInfo = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    i32,
    c_double,
    c_int,
    *const c_char,
) -> InfoPtr;
type FnInfoDestroy = unsafe extern "C" fn(InfoPtr);
type FnInfoStr = unsafe extern "C" fn(InfoPtr) -> *const c_char;
type FnInfoI32 = unsafe extern "C" fn(InfoPtr) -> i32;
type FnInfoF64 = unsafe extern "C" fn(InfoPtr) -> c_double;
type FnInfoFormat = unsafe extern "C" fn(InfoPtr) -> c_int;
type FnInfoDesc = unsafe extern "C" fn(InfoPtr) -> XmlPtr;
type FnInfoXml = unsafe extern "C" fn(InfoPtr) -> *mut c_char;
type FnXmlNamed = unsafe extern "C" fn(XmlPtr, *const c_char) -> XmlPtr;
type FnXmlNav = unsafe extern "C" fn(XmlPtr) -> XmlPtr;
type FnXmlI32 = unsafe extern "C" fn(XmlPtr) -> i32;
type FnXmlStr = unsafe extern "C" fn(XmlPtr) -> *const c_char;
type FnXmlStrNamed = unsafe extern "C" fn(XmlPtr, *const c_char) -> *const c_char;
type FnXmlAppendValue = unsafe extern "C" fn(XmlPtr, *const c_char, *const c_char) -> XmlPtr;
type FnResolveBypred = unsafe extern "C" fn(*mut InfoPtr, u32, *const c_char, i32, c_double) -> i32;
type FnCreateResolver = unsafe extern "C" fn(*const c_char, c_double) -> *mut RawResolver;
type FnResolverResults = unsafe extern "C" fn(*mut RawResolver, *mut InfoPtr, u32) -> i32;
type FnResolverDestroy = unsafe extern "C" fn(*mut RawResolver);
type FnCreateInlet = unsafe extern "C" fn(InfoPtr, i32, i32, i32) -> *mut RawInlet;
type FnInletDestroy = unsafe extern "C" fn(*mut RawInlet);
type FnFullInfo = unsafe extern "C" fn(*mut RawInlet, c_double, *mut i32) -> InfoPtr;
type FnOpenStream = unsafe extern "C" fn(*mut RawInlet, c_double, *mut i32);
type FnTimeCorrection = unsafe extern "C" fn(*mut RawInlet, c_double, *mut i32) -> c_double;
type FnPullChunkF = unsafe extern "C" fn(
    *mut RawInlet,
    *mut c_float,
    *mut c_double,
    c_ulong,
    c_ulong,
    c_double,
    *mut i32,
) -> c_ulong;
type FnPullChunkStr = unsafe extern "C" fn(
    *mut RawInlet,
    *mut *mut c_char,
    *mut c_double,
    c_ulong,
    c_ulong,
    c_double,
    *mut i32,
) -> c_ulong;
type FnSamplesAvailable = unsafe extern "C" fn(*mut RawInlet) -> u32;
type FnCreateOutlet = unsafe extern "C" fn(InfoPtr, i32, i32) -> *mut RawOutlet;
type FnOutletDestroy = unsafe extern "C" fn(*mut RawOutlet);
type FnPushChunkFtn =
    unsafe extern "C" fn(*mut RawOutlet, *const c_float, c_ulong, *const c_double) -> i32;
type FnPushSampleStrt = unsafe extern "C" fn(*mut RawOutlet, *const *const c_char, c_double) -> i32;
type FnHaveConsumers = unsafe extern "C" fn(*mut RawOutlet) -> i32;
type FnWaitConsumers = unsafe extern "C" fn(*mut RawOutlet, c_double) -> i32;

/// The entry points, copied out of the library (valid while `_lib` lives,
/// which is as long as this struct, which is kept for the process's life).
struct Fns {
    local_clock: FnClock,
    library_version: FnI32,
    library_info: Option<FnStr>,
    last_error: Option<FnStr>,
    destroy_string: FnDestroyString,
    create_streaminfo: FnCreateInfo,
    destroy_streaminfo: FnInfoDestroy,
    get_name: FnInfoStr,
    get_type: FnInfoStr,
    get_source_id: FnInfoStr,
    get_uid: FnInfoStr,
    get_session_id: FnInfoStr,
    get_hostname: FnInfoStr,
    get_channel_count: FnInfoI32,
    get_nominal_srate: FnInfoF64,
    get_channel_format: FnInfoFormat,
    get_created_at: FnInfoF64,
    get_desc: FnInfoDesc,
    get_xml: FnInfoXml,
    child: FnXmlNamed,
    first_child: FnXmlNav,
    next_sibling: FnXmlNav,
    next_sibling_n: FnXmlNamed,
    empty: FnXmlI32,
    name: FnXmlStr,
    child_value: FnXmlStr,
    child_value_n: FnXmlStrNamed,
    append_child: FnXmlNamed,
    append_child_value: FnXmlAppendValue,
    resolve_bypred: FnResolveBypred,
    create_resolver_bypred: FnCreateResolver,
    resolver_results: FnResolverResults,
    destroy_resolver: FnResolverDestroy,
    create_inlet: FnCreateInlet,
    destroy_inlet: FnInletDestroy,
    get_fullinfo: FnFullInfo,
    open_stream: FnOpenStream,
    time_correction: FnTimeCorrection,
    pull_chunk_f: FnPullChunkF,
    pull_chunk_str: FnPullChunkStr,
    samples_available: FnSamplesAvailable,
    create_outlet: FnCreateOutlet,
    destroy_outlet: FnOutletDestroy,
    push_chunk_ftn: FnPushChunkFtn,
    push_sample_strt: FnPushSampleStrt,
    have_consumers: FnHaveConsumers,
    wait_for_consumers: FnWaitConsumers,
}

/// A loaded liblsl.
pub struct Lsl {
    path: PathBuf,
    fns: Fns,
    _lib: libloading::Library,
}

impl std::fmt::Debug for Lsl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lsl").field("path", &self.path).finish()
    }
}

/// Copy a NUL-terminated string liblsl returned (NULL: empty).
fn copy_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: liblsl returns NUL-terminated strings that stay valid while
    // the object they belong to lives; callers hold that object for the
    // duration of this call. The copy stops at the terminator.
    let s = unsafe { CStr::from_ptr(p) };
    let b = s.to_bytes();
    String::from_utf8_lossy(&b[..b.len().min(MAX_STR)]).into_owned()
}

/// A Rust string for liblsl: interior NULs are an argument error.
fn cstring(what: &str, s: &str) -> Result<CString, LslError> {
    CString::new(s).map_err(|_| LslError::Argument(format!("{what} contains a NUL byte")))
}

impl Lsl {
    /// Load liblsl (once per process; a failure is retried on the next
    /// call, so installing pylsl later helps without a restart). The error
    /// says what was tried and ends with [`INSTALL_HINT`].
    pub fn load() -> Result<Arc<Lsl>, String> {
        static LOADED: Mutex<Option<Arc<Lsl>>> = Mutex::new(None);
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = loaded.as_ref() {
            return Ok(l.clone());
        }
        let l = Arc::new(Self::locate_and_load()?);
        tracing::info!(
            library = %l.path.display(),
            version = l.library_version(),
            "liblsl loaded"
        );
        *loaded = Some(l.clone());
        Ok(l)
    }

    fn locate_and_load() -> Result<Lsl, String> {
        if let Some(p) = std::env::var_os(LIB_ENV).filter(|v| !v.is_empty()) {
            let p = PathBuf::from(p);
            return Self::load_from(&p).map_err(|e| {
                format!(
                    "liblsl not loaded: {LIB_ENV}={}: {e}; {INSTALL_HINT}",
                    p.display()
                )
            });
        }
        let mut tried = Vec::new();
        match pylsl_library() {
            Ok(p) => match Self::load_from(&p) {
                Ok(l) => return Ok(l),
                Err(e) => tried.push(format!("pylsl's {}: {e}", p.display())),
            },
            Err(e) => tried.push(e),
        }
        for name in SYSTEM_NAMES {
            match Self::load_from(Path::new(name)) {
                Ok(l) => return Ok(l),
                Err(e) => tried.push(e),
            }
        }
        Err(format!(
            "liblsl not found (tried: {}); {INSTALL_HINT}",
            tried.join("; ")
        ))
    }

    /// Load the liblsl at `path` (a path, or a bare file name looked up on
    /// the loader's search path). Not cached: [`Lsl::load`] is the usual way.
    pub fn load_from(path: &Path) -> Result<Lsl, String> {
        let bare = path.components().count() == 1;
        if !bare && !path.is_file() {
            return Err(format!("{} does not exist", path.display()));
        }
        // SAFETY: loading a shared library runs its initialisers. The path
        // is liblsl (named by NEUROEDGE_LSL_LIB, bundled in pylsl, or the
        // system's); its initialisers only set up liblsl's static state
        // (configuration, logging).
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
            // SAFETY: each `T` used below is the exact C signature of the
            // named liblsl function (see the module documentation); the
            // copied pointer is only used while `lib` is loaded, which is
            // for the rest of the process (see `Lsl::load`) or the life of
            // the `Lsl` that owns `lib`.
            unsafe { lib.get::<T>(name.as_bytes()) }
                .map(|s| *s)
                .map_err(|e| format!("not a usable liblsl (missing {name}: {e})"))
        }
        let fns = Fns {
            local_clock: sym(&lib, "lsl_local_clock")?,
            library_version: sym(&lib, "lsl_library_version")?,
            library_info: sym(&lib, "lsl_library_info").ok(),
            last_error: sym(&lib, "lsl_last_error").ok(),
            destroy_string: sym(&lib, "lsl_destroy_string")?,
            create_streaminfo: sym(&lib, "lsl_create_streaminfo")?,
            destroy_streaminfo: sym(&lib, "lsl_destroy_streaminfo")?,
            get_name: sym(&lib, "lsl_get_name")?,
            get_type: sym(&lib, "lsl_get_type")?,
            get_source_id: sym(&lib, "lsl_get_source_id")?,
            get_uid: sym(&lib, "lsl_get_uid")?,
            get_session_id: sym(&lib, "lsl_get_session_id")?,
            get_hostname: sym(&lib, "lsl_get_hostname")?,
            get_channel_count: sym(&lib, "lsl_get_channel_count")?,
            get_nominal_srate: sym(&lib, "lsl_get_nominal_srate")?,
            get_channel_format: sym(&lib, "lsl_get_channel_format")?,
            get_created_at: sym(&lib, "lsl_get_created_at")?,
            get_desc: sym(&lib, "lsl_get_desc")?,
            get_xml: sym(&lib, "lsl_get_xml")?,
            child: sym(&lib, "lsl_child")?,
            first_child: sym(&lib, "lsl_first_child")?,
            next_sibling: sym(&lib, "lsl_next_sibling")?,
            next_sibling_n: sym(&lib, "lsl_next_sibling_n")?,
            empty: sym(&lib, "lsl_empty")?,
            name: sym(&lib, "lsl_name")?,
            child_value: sym(&lib, "lsl_child_value")?,
            child_value_n: sym(&lib, "lsl_child_value_n")?,
            append_child: sym(&lib, "lsl_append_child")?,
            append_child_value: sym(&lib, "lsl_append_child_value")?,
            resolve_bypred: sym(&lib, "lsl_resolve_bypred")?,
            create_resolver_bypred: sym(&lib, "lsl_create_continuous_resolver_bypred")?,
            resolver_results: sym(&lib, "lsl_resolver_results")?,
            destroy_resolver: sym(&lib, "lsl_destroy_continuous_resolver")?,
            create_inlet: sym(&lib, "lsl_create_inlet")?,
            destroy_inlet: sym(&lib, "lsl_destroy_inlet")?,
            get_fullinfo: sym(&lib, "lsl_get_fullinfo")?,
            open_stream: sym(&lib, "lsl_open_stream")?,
            time_correction: sym(&lib, "lsl_time_correction")?,
            pull_chunk_f: sym(&lib, "lsl_pull_chunk_f")?,
            pull_chunk_str: sym(&lib, "lsl_pull_chunk_str")?,
            samples_available: sym(&lib, "lsl_samples_available")?,
            create_outlet: sym(&lib, "lsl_create_outlet")?,
            destroy_outlet: sym(&lib, "lsl_destroy_outlet")?,
            push_chunk_ftn: sym(&lib, "lsl_push_chunk_ftn")?,
            push_sample_strt: sym(&lib, "lsl_push_sample_strt")?,
            have_consumers: sym(&lib, "lsl_have_consumers")?,
            wait_for_consumers: sym(&lib, "lsl_wait_for_consumers")?,
        };
        Ok(Lsl {
            path: path.to_path_buf(),
            fns,
            _lib: lib,
        })
    }

    /// Where the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// LSL's clock (seconds; the system's monotonic clock on Linux).
    pub fn local_clock(&self) -> f64 {
        // SAFETY: no arguments; reads a clock.
        unsafe { (self.fns.local_clock)() }
    }

    /// The library's version, major * 100 + minor (e.g. 118 for 1.18).
    pub fn library_version(&self) -> i32 {
        // SAFETY: no arguments; returns a constant.
        unsafe { (self.fns.library_version)() }
    }

    /// The library's build description (git revision, build options).
    pub fn library_info(&self) -> String {
        match self.fns.library_info {
            // SAFETY: returns a pointer to a static NUL-terminated string.
            Some(f) => copy_str(unsafe { f() }),
            None => String::new(),
        }
    }

    /// liblsl's explanation of the last failed call, if it gives one.
    fn last_error(&self) -> String {
        match self.fns.last_error {
            // SAFETY: returns a pointer to a thread-local NUL-terminated
            // buffer, copied at once.
            Some(f) => copy_str(unsafe { f() }),
            None => String::new(),
        }
    }

    /// An error from a `lsl_error_code_t` (0 = none) for call `what`.
    fn ec_error(&self, what: &str, ec: i32) -> Result<(), LslError> {
        let m = || {
            let last = self.last_error();
            if last.is_empty() {
                what.to_string()
            } else {
                format!("{what}: {last}")
            }
        };
        match ec {
            0 => Ok(()),
            -1 => Err(LslError::Timeout(what.to_string())),
            -2 => Err(LslError::Lost(what.to_string())),
            -3 => Err(LslError::Argument(m())),
            _ => Err(LslError::Internal(m())),
        }
    }

    fn null_error(&self, what: &str) -> LslError {
        let last = self.last_error();
        LslError::Internal(if last.is_empty() {
            format!("{what} failed")
        } else {
            format!("{what} failed: {last}")
        })
    }

    /// Streams matching the XPath predicate `pred` (e.g. `name='EEG'`):
    /// waits until `minimum` are found or `timeout` seconds pass.
    pub fn resolve(
        self: &Arc<Self>,
        pred: &str,
        minimum: usize,
        timeout: f64,
    ) -> Result<Vec<StreamInfo>, LslError> {
        let cpred = cstring("stream query", pred)?;
        let mut buf: [InfoPtr; MAX_RESOLVED] = [std::ptr::null_mut(); MAX_RESOLVED];
        let min = i32::try_from(minimum.min(MAX_RESOLVED)).unwrap_or(1);
        // SAFETY: `buf` holds MAX_RESOLVED info pointers and liblsl writes
        // at most `buffer_elements` of them; `cpred` is NUL-terminated and
        // outlives the call. The returned infos belong to us.
        let n = unsafe {
            (self.fns.resolve_bypred)(
                buf.as_mut_ptr(),
                MAX_RESOLVED as u32,
                cpred.as_ptr(),
                min,
                timeout,
            )
        };
        if n < 0 {
            return Err(self
                .ec_error(&format!("resolving {pred}"), n)
                .err()
                .unwrap_or_else(|| self.null_error("resolve")));
        }
        let n = (n as usize).min(MAX_RESOLVED);
        Ok(buf[..n]
            .iter()
            .filter_map(|&p| StreamInfo::own(self, p))
            .collect())
    }

    /// A resolver that keeps looking for streams matching `pred` in the
    /// background (streams unseen for `forget_after` seconds drop out).
    pub fn continuous_resolver(
        self: &Arc<Self>,
        pred: &str,
        forget_after: f64,
    ) -> Result<ContinuousResolver, LslError> {
        let cpred = cstring("stream query", pred)?;
        // SAFETY: `cpred` is NUL-terminated and outlives the call; liblsl
        // copies it. A NULL result is an error.
        let p = unsafe { (self.fns.create_resolver_bypred)(cpred.as_ptr(), forget_after) };
        NonNull::new(p)
            .map(|ptr| ContinuousResolver {
                lsl: self.clone(),
                ptr,
            })
            .ok_or_else(|| self.null_error(&format!("continuous resolver for {pred}")))
    }
}

/// Where pylsl's bundled liblsl is: asks `python3` where the `pylsl`
/// package is (without importing it, which would itself load liblsl), then
/// takes `lib/liblsl.so` (or the first `lib/liblsl.so*`).
pub fn pylsl_library() -> Result<PathBuf, String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('pylsl'); \
             print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3 to find pylsl ({e})"))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || dir.is_empty() {
        return Err("the pylsl Python package is not installed for python3".into());
    }
    bundled_library(Path::new(&dir))
}

/// The liblsl bundled in a pylsl package folder: `lib/liblsl.so`, else the
/// first `lib/liblsl.so*` by name.
pub fn bundled_library(pylsl_dir: &Path) -> Result<PathBuf, String> {
    let lib = pylsl_dir.join("lib");
    let plain = lib.join("liblsl.so");
    if plain.is_file() {
        return Ok(plain);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("liblsl.so"))
                        && p.is_file()
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        format!(
            "the pylsl package in {} bundles no lib/liblsl.so (wheels for this CPU may not ship one)",
            pylsl_dir.display()
        )
    })
}

// ------------------------------------------------------------ stream info

/// An LSL stream description (`lsl_streaminfo`), owned.
pub struct StreamInfo {
    lsl: Arc<Lsl>,
    ptr: NonNull<RawInfo>,
}

// SAFETY: a liblsl stream info is a heap object with no thread affinity;
// `StreamInfo` owns it exclusively and every call takes `&self` / `&mut self`,
// so moving it to another thread is sound.
unsafe impl Send for StreamInfo {}

impl std::fmt::Debug for StreamInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamInfo")
            .field("name", &self.name())
            .field("type", &self.stream_type())
            .field("source_id", &self.source_id())
            .finish()
    }
}

impl Drop for StreamInfo {
    fn drop(&mut self) {
        // SAFETY: we own the info (created or handed over to us) and drop
        // it once; no XML element borrowed from it outlives `self`.
        unsafe { (self.lsl.fns.destroy_streaminfo)(self.ptr.as_ptr()) }
    }
}

impl StreamInfo {
    /// Take ownership of an info liblsl handed us (NULL: none).
    fn own(lsl: &Arc<Lsl>, p: InfoPtr) -> Option<StreamInfo> {
        NonNull::new(p).map(|ptr| StreamInfo {
            lsl: lsl.clone(),
            ptr,
        })
    }

    /// A new stream description. `rate` 0 = irregular.
    pub fn new(
        lsl: &Arc<Lsl>,
        name: &str,
        stream_type: &str,
        channels: usize,
        rate: f64,
        format: ChannelFormat,
        source_id: &str,
    ) -> Result<StreamInfo, LslError> {
        let n = cstring("stream name", name)?;
        let t = cstring("stream type", stream_type)?;
        let s = cstring("source_id", source_id)?;
        let ch = i32::try_from(channels)
            .map_err(|_| LslError::Argument(format!("{channels} channels")))?;
        // SAFETY: the three strings are NUL-terminated and outlive the
        // call (liblsl copies them); the rest are plain values. NULL on
        // failure.
        let p = unsafe {
            (lsl.fns.create_streaminfo)(n.as_ptr(), t.as_ptr(), ch, rate, format.raw(), s.as_ptr())
        };
        Self::own(lsl, p).ok_or_else(|| lsl.null_error("lsl_create_streaminfo"))
    }

    fn get_str(&self, f: FnInfoStr) -> String {
        // SAFETY: `f` is one of liblsl's `const char *lsl_get_*(lsl_streaminfo)`;
        // the info is alive for the call and the string copied at once.
        copy_str(unsafe { f(self.ptr.as_ptr()) })
    }

    pub fn name(&self) -> String {
        self.get_str(self.lsl.fns.get_name)
    }
    pub fn stream_type(&self) -> String {
        self.get_str(self.lsl.fns.get_type)
    }
    pub fn source_id(&self) -> String {
        self.get_str(self.lsl.fns.get_source_id)
    }
    pub fn uid(&self) -> String {
        self.get_str(self.lsl.fns.get_uid)
    }
    pub fn session_id(&self) -> String {
        self.get_str(self.lsl.fns.get_session_id)
    }
    pub fn hostname(&self) -> String {
        self.get_str(self.lsl.fns.get_hostname)
    }

    pub fn channel_count(&self) -> i32 {
        // SAFETY: the info is alive; returns a plain value.
        unsafe { (self.lsl.fns.get_channel_count)(self.ptr.as_ptr()) }
    }

    pub fn nominal_srate(&self) -> f64 {
        // SAFETY: the info is alive; returns a plain value.
        unsafe { (self.lsl.fns.get_nominal_srate)(self.ptr.as_ptr()) }
    }

    pub fn channel_format(&self) -> ChannelFormat {
        // SAFETY: the info is alive; returns the 4-byte enum's value.
        ChannelFormat::from_raw(unsafe { (self.lsl.fns.get_channel_format)(self.ptr.as_ptr()) })
    }

    /// When the outlet was created, on its host's LSL clock.
    pub fn created_at(&self) -> f64 {
        // SAFETY: the info is alive; returns a plain value.
        unsafe { (self.lsl.fns.get_created_at)(self.ptr.as_ptr()) }
    }

    /// The whole description as liblsl's XML.
    pub fn to_xml(&self) -> String {
        // SAFETY: the info is alive; the result is malloc'ed for us (NULL
        // on failure), copied, then freed with lsl_destroy_string once.
        unsafe {
            let p = (self.lsl.fns.get_xml)(self.ptr.as_ptr());
            let s = copy_str(p);
            if !p.is_null() {
                (self.lsl.fns.destroy_string)(p);
            }
            s
        }
    }

    /// The `<desc>` element, for reading and writing metadata (channel
    /// labels and units under `desc/channels/channel`, ...).
    pub fn desc(&mut self) -> XmlElement<'_> {
        // SAFETY: the info is alive; the element pointer stays valid as
        // long as the info, which the returned borrow ties it to.
        let p = unsafe { (self.lsl.fns.get_desc)(self.ptr.as_ptr()) };
        XmlElement {
            lsl: &self.lsl,
            ptr: p,
            _info: PhantomData,
        }
    }

    /// Channel labels from `desc/channels/channel/label`, if the stream
    /// gives exactly `n` of them (none empty).
    pub fn channel_labels(&mut self, n: usize) -> Option<Vec<String>> {
        let mut names = Vec::new();
        let mut ch = self.desc().child("channels").child("channel");
        while !ch.is_empty() && names.len() <= n {
            names.push(ch.child_value_named("label").trim().to_string());
            ch = ch.next_sibling_named("channel");
        }
        (names.len() == n && names.iter().all(|s| !s.is_empty())).then_some(names)
    }
}

/// An element of a stream info's XML description, borrowed from it.
/// liblsl's navigation never fails: a missing element is an "empty" one
/// (and operations on it do nothing).
pub struct XmlElement<'a> {
    lsl: &'a Lsl,
    ptr: XmlPtr,
    _info: PhantomData<&'a mut StreamInfo>,
}

impl<'a> XmlElement<'a> {
    fn wrap(&self, ptr: XmlPtr) -> XmlElement<'a> {
        XmlElement {
            lsl: self.lsl,
            ptr,
            _info: PhantomData,
        }
    }

    fn named(&self, f: FnXmlNamed, name: &str) -> XmlElement<'a> {
        let Ok(c) = CString::new(name) else {
            return self.wrap(std::ptr::null_mut());
        };
        if self.ptr.is_null() {
            return self.wrap(std::ptr::null_mut());
        }
        // SAFETY: `self.ptr` is a live element of the borrowed info (not
        // NULL), `c` is NUL-terminated and outlives the call; liblsl
        // returns another element of the same document (or its empty one).
        self.wrap(unsafe { f(self.ptr, c.as_ptr()) })
    }

    fn nav(&self, f: FnXmlNav) -> XmlElement<'a> {
        if self.ptr.is_null() {
            return self.wrap(std::ptr::null_mut());
        }
        // SAFETY: `self.ptr` is a live element of the borrowed info.
        self.wrap(unsafe { f(self.ptr) })
    }

    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> XmlElement<'a> {
        self.named(self.lsl.fns.child, name)
    }

    pub fn first_child(&self) -> XmlElement<'a> {
        self.nav(self.lsl.fns.first_child)
    }

    pub fn next_sibling(&self) -> XmlElement<'a> {
        self.nav(self.lsl.fns.next_sibling)
    }

    /// The next sibling element called `name`.
    pub fn next_sibling_named(&self, name: &str) -> XmlElement<'a> {
        self.named(self.lsl.fns.next_sibling_n, name)
    }

    /// Whether this is the empty element (what navigation to a missing
    /// element yields).
    pub fn is_empty(&self) -> bool {
        if self.ptr.is_null() {
            return true;
        }
        // SAFETY: `self.ptr` is a live element of the borrowed info.
        unsafe { (self.lsl.fns.empty)(self.ptr) != 0 }
    }

    /// The element's name.
    pub fn name(&self) -> String {
        if self.ptr.is_null() {
            return String::new();
        }
        // SAFETY: `self.ptr` is live; the string belongs to the document
        // and is copied at once.
        copy_str(unsafe { (self.lsl.fns.name)(self.ptr) })
    }

    /// The text inside this element (`<label>C3</label>` → `C3`).
    pub fn child_value(&self) -> String {
        if self.ptr.is_null() {
            return String::new();
        }
        // SAFETY: as for `name`.
        copy_str(unsafe { (self.lsl.fns.child_value)(self.ptr) })
    }

    /// The text inside the child element called `name`.
    pub fn child_value_named(&self, name: &str) -> String {
        let Ok(c) = CString::new(name) else {
            return String::new();
        };
        if self.ptr.is_null() {
            return String::new();
        }
        // SAFETY: `self.ptr` is live, `c` is NUL-terminated and outlives
        // the call; the result belongs to the document, copied at once.
        copy_str(unsafe { (self.lsl.fns.child_value_n)(self.ptr, c.as_ptr()) })
    }

    /// Append a child element called `name`; returns it.
    pub fn append_child(&mut self, name: &str) -> XmlElement<'a> {
        self.named(self.lsl.fns.append_child, name)
    }

    /// Append `<name>value</name>`; returns this element (for chaining).
    pub fn append_child_value(&mut self, name: &str, value: &str) -> XmlElement<'a> {
        let (Ok(n), Ok(v)) = (CString::new(name), CString::new(value)) else {
            return self.wrap(self.ptr);
        };
        if self.ptr.is_null() {
            return self.wrap(self.ptr);
        }
        // SAFETY: `self.ptr` is live; both strings are NUL-terminated and
        // outlive the call (liblsl copies them); it returns `self.ptr`.
        self.wrap(unsafe { (self.lsl.fns.append_child_value)(self.ptr, n.as_ptr(), v.as_ptr()) })
    }
}

// --------------------------------------------------------------- resolver

/// A background resolver (`lsl_continuous_resolver`).
pub struct ContinuousResolver {
    lsl: Arc<Lsl>,
    ptr: NonNull<RawResolver>,
}

// SAFETY: the resolver is a heap object with its own internal locking and
// no thread affinity; we own it exclusively.
unsafe impl Send for ContinuousResolver {}

impl ContinuousResolver {
    /// The streams seen so far.
    pub fn results(&self) -> Vec<StreamInfo> {
        let mut buf: [InfoPtr; MAX_RESOLVED] = [std::ptr::null_mut(); MAX_RESOLVED];
        // SAFETY: the resolver is alive; `buf` holds MAX_RESOLVED pointers
        // and liblsl writes at most that many; the infos are ours.
        let n = unsafe {
            (self.lsl.fns.resolver_results)(
                self.ptr.as_ptr(),
                buf.as_mut_ptr(),
                MAX_RESOLVED as u32,
            )
        };
        let n = usize::try_from(n).unwrap_or(0).min(MAX_RESOLVED);
        buf[..n]
            .iter()
            .filter_map(|&p| StreamInfo::own(&self.lsl, p))
            .collect()
    }
}

impl Drop for ContinuousResolver {
    fn drop(&mut self) {
        // SAFETY: we own the resolver and destroy it once.
        unsafe { (self.lsl.fns.destroy_resolver)(self.ptr.as_ptr()) }
    }
}

// ------------------------------------------------------------------ inlet

/// A stream inlet (`lsl_inlet`).
pub struct Inlet {
    lsl: Arc<Lsl>,
    ptr: NonNull<RawInlet>,
    channels: usize,
    /// String pull buffers, reused.
    str_ptrs: Vec<*mut c_char>,
    str_stamps: Vec<f64>,
}

// SAFETY: a liblsl inlet has no thread affinity (its receiver threads are
// liblsl's own); `Inlet` owns it exclusively and pulls take `&mut self`,
// so it is used from one thread at a time. The raw pointers in
// `str_ptrs` are NULL between calls.
unsafe impl Send for Inlet {}

impl Drop for Inlet {
    fn drop(&mut self) {
        // SAFETY: we own the inlet and destroy it once (it disconnects).
        unsafe { (self.lsl.fns.destroy_inlet)(self.ptr.as_ptr()) }
    }
}

impl Inlet {
    /// An inlet for the stream `info` describes, buffering up to
    /// `max_buflen_s` seconds (for irregular streams: hundreds of
    /// samples), `max_chunklen` samples per transfer (0 = the sender's
    /// choice), with liblsl's recovery (re-resolve a restarted outlet of
    /// the same source_id) when `recover`.
    pub fn new(
        info: &StreamInfo,
        max_buflen_s: i32,
        max_chunklen: i32,
        recover: bool,
    ) -> Result<Inlet, LslError> {
        let lsl = &info.lsl;
        let channels = usize::try_from(info.channel_count())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                LslError::Argument(format!("stream has {} channels", info.channel_count()))
            })?;
        // SAFETY: the info is alive for the call (liblsl copies it).
        let p = unsafe {
            (lsl.fns.create_inlet)(
                info.ptr.as_ptr(),
                max_buflen_s,
                max_chunklen,
                i32::from(recover),
            )
        };
        let ptr = NonNull::new(p).ok_or_else(|| lsl.null_error("lsl_create_inlet"))?;
        Ok(Inlet {
            lsl: lsl.clone(),
            ptr,
            channels,
            str_ptrs: Vec::new(),
            str_stamps: Vec::new(),
        })
    }

    /// Channels per sample.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The stream's full description (with `desc`), from the outlet.
    pub fn info(&self, timeout: f64) -> Result<StreamInfo, LslError> {
        let mut ec: i32 = 0;
        // SAFETY: the inlet is alive; `ec` is a valid out-pointer. The
        // returned info (NULL on error) is ours.
        let p = unsafe { (self.lsl.fns.get_fullinfo)(self.ptr.as_ptr(), timeout, &mut ec) };
        self.lsl.ec_error("lsl_get_fullinfo", ec)?;
        StreamInfo::own(&self.lsl, p).ok_or_else(|| self.lsl.null_error("lsl_get_fullinfo"))
    }

    /// Subscribe now (samples pushed from now on are queued).
    pub fn open_stream(&self, timeout: f64) -> Result<(), LslError> {
        let mut ec: i32 = 0;
        // SAFETY: the inlet is alive; `ec` is a valid out-pointer.
        unsafe { (self.lsl.fns.open_stream)(self.ptr.as_ptr(), timeout, &mut ec) };
        self.lsl.ec_error("lsl_open_stream", ec)
    }

    /// Add this to the outlet's stamps to have them on our LSL clock
    /// (the first call measures, waiting up to `timeout`; later calls
    /// return liblsl's background estimate at once).
    pub fn time_correction(&self, timeout: f64) -> Result<f64, LslError> {
        let mut ec: i32 = 0;
        // SAFETY: the inlet is alive; `ec` is a valid out-pointer.
        let c = unsafe { (self.lsl.fns.time_correction)(self.ptr.as_ptr(), timeout, &mut ec) };
        self.lsl.ec_error("lsl_time_correction", ec)?;
        Ok(c)
    }

    /// Samples waiting for pickup (or 1/0 when liblsl cannot count).
    pub fn samples_available(&self) -> usize {
        // SAFETY: the inlet is alive.
        unsafe { (self.lsl.fns.samples_available)(self.ptr.as_ptr()) as usize }
    }

    /// Pull up to `stamps.len()` samples (frame-major into `data`, which
    /// must hold `stamps.len() * channels` values), waiting until the
    /// buffers are full or `timeout` seconds have passed (0: only what is
    /// there). Returns the number of samples written. Allocates nothing.
    pub fn pull_chunk_f32(
        &mut self,
        data: &mut [f32],
        stamps: &mut [f64],
        timeout: f64,
    ) -> Result<usize, LslError> {
        let samples = stamps.len().min(data.len() / self.channels);
        if samples == 0 {
            return Ok(0);
        }
        let elements = samples * self.channels;
        let mut ec: i32 = 0;
        // SAFETY: the inlet is alive; `data` holds at least `elements`
        // floats and `stamps` at least `samples` doubles, which is what we
        // tell liblsl (`elements` is a multiple of the channel count, as
        // it requires); `ec` is a valid out-pointer.
        let written = unsafe {
            (self.lsl.fns.pull_chunk_f)(
                self.ptr.as_ptr(),
                data.as_mut_ptr(),
                stamps.as_mut_ptr(),
                elements as c_ulong,
                samples as c_ulong,
                timeout,
                &mut ec,
            )
        };
        self.lsl.ec_error("lsl_pull_chunk_f", ec)?;
        Ok((written as usize).min(elements) / self.channels)
    }

    /// Pull up to `max_samples` samples of a string stream, waiting as
    /// [`Inlet::pull_chunk_f32`] does: `(stamp, channel values)` each.
    pub fn pull_chunk_str(
        &mut self,
        max_samples: usize,
        timeout: f64,
    ) -> Result<Vec<(f64, Vec<String>)>, LslError> {
        let elements = max_samples * self.channels;
        if elements == 0 {
            return Ok(Vec::new());
        }
        self.str_ptrs.clear();
        self.str_ptrs.resize(elements, std::ptr::null_mut());
        self.str_stamps.clear();
        self.str_stamps.resize(max_samples, 0.0);
        let mut ec: i32 = 0;
        // SAFETY: the inlet is alive; `str_ptrs` holds `elements` pointers
        // (all NULL) and `str_stamps` `max_samples` doubles, as we tell
        // liblsl; `ec` is a valid out-pointer. liblsl sets pointers to
        // strings malloc'ed for us (liblsl 1.14+ fills every element, older
        // ones only those written); every non-NULL one is freed below.
        let written = unsafe {
            (self.lsl.fns.pull_chunk_str)(
                self.ptr.as_ptr(),
                self.str_ptrs.as_mut_ptr(),
                self.str_stamps.as_mut_ptr(),
                elements as c_ulong,
                max_samples as c_ulong,
                timeout,
                &mut ec,
            )
        };
        let written = (written as usize).min(elements);
        let mut out = Vec::with_capacity(written / self.channels);
        for (i, frame) in self.str_ptrs[..written - written % self.channels]
            .chunks_exact(self.channels)
            .enumerate()
        {
            out.push((
                self.str_stamps[i],
                frame.iter().map(|&p| copy_str(p)).collect(),
            ));
        }
        for p in self.str_ptrs.iter_mut() {
            if !p.is_null() {
                // SAFETY: a string liblsl malloc'ed for us, freed once
                // (the slot is cleared right after).
                unsafe { (self.lsl.fns.destroy_string)(*p) };
                *p = std::ptr::null_mut();
            }
        }
        self.lsl.ec_error("lsl_pull_chunk_str", ec)?;
        Ok(out)
    }
}

// ----------------------------------------------------------------- outlet

/// A stream outlet (`lsl_outlet`): makes a stream visible on the network.
pub struct Outlet {
    lsl: Arc<Lsl>,
    ptr: NonNull<RawOutlet>,
    channels: usize,
    format: ChannelFormat,
}

// SAFETY: liblsl's outlet has no thread affinity and its push functions
// are thread-safe; `Outlet` owns it exclusively.
unsafe impl Send for Outlet {}

impl Drop for Outlet {
    fn drop(&mut self) {
        // SAFETY: we own the outlet and destroy it once (it leaves the
        // network).
        unsafe { (self.lsl.fns.destroy_outlet)(self.ptr.as_ptr()) }
    }
}

impl Outlet {
    /// An outlet for `info`, sending in chunks of `chunk_size` samples (0 =
    /// as pushed) and buffering up to `max_buffered` seconds for slow
    /// consumers (older samples are dropped by liblsl beyond that).
    pub fn new(info: &StreamInfo, chunk_size: i32, max_buffered: i32) -> Result<Outlet, LslError> {
        let lsl = &info.lsl;
        let channels = usize::try_from(info.channel_count())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                LslError::Argument(format!("stream has {} channels", info.channel_count()))
            })?;
        let format = info.channel_format();
        // SAFETY: the info is alive for the call (liblsl copies it).
        let p = unsafe { (lsl.fns.create_outlet)(info.ptr.as_ptr(), chunk_size, max_buffered) };
        let ptr = NonNull::new(p).ok_or_else(|| lsl.null_error("lsl_create_outlet"))?;
        Ok(Outlet {
            lsl: lsl.clone(),
            ptr,
            channels,
            format,
        })
    }

    /// Push `stamps.len()` samples (frame-major `data`, exactly
    /// `stamps.len() * channels` values), each with its own stamp on the
    /// LSL clock. Numeric outlets only.
    pub fn push_chunk_f32(&self, data: &[f32], stamps: &[f64]) -> Result<(), LslError> {
        if !self.format.is_numeric() {
            return Err(LslError::Argument(format!(
                "push_chunk_f32 on a {} outlet",
                self.format
            )));
        }
        if data.len() != stamps.len() * self.channels {
            return Err(LslError::Argument(format!(
                "{} values for {} samples of {} channels",
                data.len(),
                stamps.len(),
                self.channels
            )));
        }
        if stamps.is_empty() {
            return Ok(());
        }
        // SAFETY: the outlet is alive; `data` holds exactly `data.len()`
        // floats = samples * channels, and `stamps` one double per sample,
        // which is what liblsl reads.
        let r = unsafe {
            (self.lsl.fns.push_chunk_ftn)(
                self.ptr.as_ptr(),
                data.as_ptr(),
                data.len() as c_ulong,
                stamps.as_ptr(),
            )
        };
        self.lsl.ec_error("lsl_push_chunk_ftn", r)
    }

    /// Push one sample of a string outlet (one value per channel).
    pub fn push_str(&self, values: &[&str], stamp: f64) -> Result<(), LslError> {
        if self.format != ChannelFormat::String {
            return Err(LslError::Argument(format!(
                "push_str on a {} outlet",
                self.format
            )));
        }
        if values.len() != self.channels {
            return Err(LslError::Argument(format!(
                "{} values for {} channels",
                values.len(),
                self.channels
            )));
        }
        let owned: Vec<CString> = values
            .iter()
            .map(|v| cstring("string sample", v))
            .collect::<Result<_, _>>()?;
        let ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        // SAFETY: the outlet is alive; `ptrs` holds one NUL-terminated
        // string per channel, all alive (in `owned`) for the call; liblsl
        // copies them.
        let r = unsafe { (self.lsl.fns.push_sample_strt)(self.ptr.as_ptr(), ptrs.as_ptr(), stamp) };
        self.lsl.ec_error("lsl_push_sample_strt", r)
    }

    /// Whether any inlet is connected.
    pub fn have_consumers(&self) -> bool {
        // SAFETY: the outlet is alive.
        unsafe { (self.lsl.fns.have_consumers)(self.ptr.as_ptr()) != 0 }
    }

    /// Wait up to `timeout` seconds for an inlet to connect.
    pub fn wait_for_consumers(&self, timeout: f64) -> bool {
        // SAFETY: the outlet is alive.
        unsafe { (self.lsl.fns.wait_for_consumers)(self.ptr.as_ptr(), timeout) != 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_a_sentence() {
        let e = Lsl::load_from(Path::new("/nonexistent/liblsl.so")).unwrap_err();
        assert!(e.contains("/nonexistent/liblsl.so does not exist"), "{e}");
        let e = Lsl::load_from(Path::new("libneuroedge-no-such-lsl.so.9")).unwrap_err();
        assert!(
            e.contains("cannot load libneuroedge-no-such-lsl.so.9"),
            "{e}"
        );
    }

    #[test]
    fn a_library_without_lsl_symbols_is_refused() {
        // libc is loadable but is no liblsl.
        let e = Lsl::load_from(Path::new("libc.so.6")).unwrap_err();
        assert!(
            e.contains("not a usable liblsl (missing lsl_local_clock"),
            "{e}"
        );
    }

    #[test]
    fn bundled_library_in_a_pylsl_folder() {
        let t = tempfile::tempdir().unwrap();
        let lib = t.path().join("lib");
        std::fs::create_dir(&lib).unwrap();
        let e = bundled_library(t.path()).unwrap_err();
        assert!(e.contains("bundles no lib/liblsl.so"), "{e}");
        std::fs::write(lib.join("liblsl.so.1.16.2"), b"").unwrap();
        assert_eq!(
            bundled_library(t.path()).unwrap(),
            lib.join("liblsl.so.1.16.2")
        );
        std::fs::write(lib.join("liblsl.so"), b"").unwrap();
        assert_eq!(bundled_library(t.path()).unwrap(), lib.join("liblsl.so"));
    }

    #[test]
    fn formats_round_trip() {
        for f in [
            ChannelFormat::Float32,
            ChannelFormat::Double64,
            ChannelFormat::String,
            ChannelFormat::Int32,
            ChannelFormat::Int16,
            ChannelFormat::Int8,
            ChannelFormat::Int64,
            ChannelFormat::Undefined,
        ] {
            assert_eq!(ChannelFormat::from_raw(f.raw()), f);
        }
        assert_eq!(ChannelFormat::from_raw(99), ChannelFormat::Undefined);
        assert!(!ChannelFormat::String.is_numeric());
        assert!(ChannelFormat::Int16.is_numeric());
    }

    /// liblsl itself, when this machine has it (pylsl or a system one;
    /// CI installs pylsl): clock, version, and a stream description with
    /// channel metadata written and read back. Nothing here touches the
    /// network (outlets and resolves run in the LSL tests' own network
    /// namespace, tests/it/drivers_bflsl.rs). Skipped (saying so) without it.
    #[test]
    fn stream_info_and_channel_metadata() {
        let lsl = match Lsl::load() {
            Ok(l) => l,
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "liblsl missing in CI: {e}"
                );
                eprintln!("SKIPPED: {e}");
                return;
            }
        };
        assert!(lsl.library_version() >= 114, "{}", lsl.library_version());
        let t0 = lsl.local_clock();
        assert!(t0 > 0.0 && lsl.local_clock() >= t0);

        let mut info = StreamInfo::new(
            &lsl,
            "cap-1.filtered",
            "EEG",
            3,
            250.0,
            ChannelFormat::Float32,
            "node/cap-1/filtered",
        )
        .expect("stream info");
        assert_eq!(info.name(), "cap-1.filtered");
        assert_eq!(info.stream_type(), "EEG");
        assert_eq!(info.source_id(), "node/cap-1/filtered");
        assert_eq!(info.channel_count(), 3);
        assert_eq!(info.nominal_srate(), 250.0);
        assert_eq!(info.channel_format(), ChannelFormat::Float32);
        assert_eq!(info.channel_labels(3), None, "no labels yet");
        {
            let mut chans = info.desc().append_child("channels");
            for label in ["Fz", "C3", "C<4>&"] {
                chans
                    .append_child("channel")
                    .append_child_value("label", label)
                    .append_child_value("unit", "microvolts")
                    .append_child_value("type", "EEG");
            }
        }
        assert_eq!(
            info.channel_labels(3),
            Some(vec!["Fz".to_string(), "C3".into(), "C<4>&".into()])
        );
        assert_eq!(info.channel_labels(2), None, "count must match");
        let first = info.desc().child("channels").child("channel");
        assert_eq!(first.name(), "channel");
        assert_eq!(first.child_value_named("unit"), "microvolts");
        assert_eq!(first.child("type").child_value(), "EEG");
        assert!(first
            .next_sibling()
            .next_sibling()
            .child("nothing")
            .is_empty());
        let xml = info.to_xml();
        assert!(xml.contains("<label>C&lt;4&gt;&amp;</label>"), "{xml}");
        assert!(xml.contains("<name>cap-1.filtered</name>"), "{xml}");

        let bad = StreamInfo::new(&lsl, "a\0b", "EEG", 1, 1.0, ChannelFormat::Float32, "");
        assert!(matches!(bad, Err(LslError::Argument(_))), "{bad:?}");
    }
}
