//! Batch format (contract §6): a CBOR envelope around a header (JSON,
//! authenticated) and an AES-256-GCM ciphertext of a zstd-compressed CBOR
//! plaintext. The journal stores the envelope; the uplink sends it unchanged.
//!
//! Two versions, named by the header's `format` (docs/batch-format.md):
//! - v1: `raw` and `filtered` as plain f32 little-endian arrays, both always.
//! - v2 (written by default): the sample arrays byte-shuffled (all first
//!   bytes of the f32 values, then all second bytes, ...) so zstd finds the
//!   slowly changing sign/exponent bytes together; `filtered` only when the
//!   journal stores it (`[journal] store`), with what reproducing it from
//!   `raw` needs in the `filter` map (`notch_q`, `run_start`).
//!
//! Both are read; v1 is still written on request (`[journal] batch_format`).

pub use crate::clock::ClockStep;
use crate::crypto::{BatchKey, Keyring, SealError};
use ciborium::Value;
use serde::{Deserialize, Serialize};
use std::io::Write;

pub const FORMAT_V1: &str = "neuroedge.batch.v1";
pub const FORMAT_V2: &str = "neuroedge.batch.v2";
pub const CIPHER: &str = "AES-256-GCM";
/// zstd level: on byte-shuffled samples level 1 compresses as well as 3
/// (2.37 vs 2.37 bytes per value at 384 ch x 30 kHz) and 1.6x faster.
const ZSTD_LEVEL: i32 = 1;
/// zstd's window at `ZSTD_LEVEL` for inputs over 256 KiB: 512 KiB.
const ZSTD_DEFAULT_WINDOW_LOG: u32 = 19;
/// zstd's smallest window (`ZSTD_WINDOWLOG_MIN`).
const ZSTD_MIN_WINDOW_LOG: u32 = 10;

/// The window for a plaintext of about `bytes`: the power of two that
/// holds it all, at most zstd's default. When the plaintext was streamed
/// in, zstd buffered a whole window and sized its block buffers from it;
/// at the default an 8-channel batch of ~20 KB made zstd allocate 1.4 MB
/// for every batch (heaptrack of the idle default run). A smaller window
/// changes nothing for an input that fits in it, any zstd decoder reads
/// it, and the frame tells decoders how much to allocate.
fn zstd_window_log(bytes: usize) -> u32 {
    let log = usize::BITS - bytes.max(1).saturating_sub(1).leading_zeros();
    log.clamp(ZSTD_MIN_WINDOW_LOG, ZSTD_DEFAULT_WINDOW_LOG)
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("envelope is not valid CBOR: {0}")]
    Cbor(String),
    #[error("envelope field {0:?} is missing or has the wrong type")]
    Field(&'static str),
    #[error("unsupported envelope version {0}")]
    Version(i128),
    #[error("header is not valid JSON: {0}")]
    Header(#[from] serde_json::Error),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
    #[error("unknown compression {0:?}")]
    Compression(String),
    #[error("unknown batch format {0:?} (this build reads {FORMAT_V1} and {FORMAT_V2})")]
    Format(String),
}

/// The authenticated header (JSON), contract §6.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchHeader {
    pub format: String,
    pub batch_id: String,
    pub site_id: String,
    pub node_id: String,
    pub device_id: String,
    pub seq: u64,
    pub first_sample: u64,
    pub n_samples: u64,
    pub n_channels: u32,
    pub sample_rate: f64,
    pub t_start: f64,
    pub t_end: f64,
    pub key_id: String,
    pub cipher: String,
    pub compression: String,
    pub created_at: f64,
}

/// Samples the device (or neuroedge) revealed as missing just before a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// Index of the first sample after the gap.
    pub before_sample: u64,
    /// Number of missing samples (they consume sample indices).
    pub missing: u64,
    /// Who lost them.
    pub cause: GapCause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapCause {
    /// The device revealed the loss (sample counter jump, timestamp hole).
    Device,
    /// The ring was full: the processing thread fell behind.
    Overflow,
    /// The journal could not take the batch (full disk, quota with drop_newest).
    Journal,
}

impl Gap {
    /// The loss a dropped batch leaves: every index its span covered
    /// (including gaps it was already carrying), to be carried into the
    /// device's next batch with [`BatchData::carry_gap`].
    pub fn covering(dropped: &BatchData, cause: GapCause) -> Gap {
        let (start, end) = (dropped.start_sample(), dropped.end_sample());
        Gap {
            before_sample: end,
            missing: end - start,
            cause,
        }
    }
}

impl GapCause {
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::Device => "device",
            GapCause::Overflow => "overflow",
            GapCause::Journal => "journal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub t: f64,
    pub value: String,
}

/// One feature window (filled by the DSP stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureRecord {
    pub t: f64,
    /// Band name -> power per channel.
    pub band_power: Vec<(String, Vec<f64>)>,
    pub rms: Vec<f64>,
}

/// Which batch format to write (`[journal] batch_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchFormat {
    /// Plain sample arrays, `filtered` always: for backends that read v1 only.
    V1,
    /// Byte-shuffled sample arrays, `filtered` optional (default).
    #[default]
    V2,
}

impl BatchFormat {
    pub fn name(self) -> &'static str {
        match self {
            BatchFormat::V1 => FORMAT_V1,
            BatchFormat::V2 => FORMAT_V2,
        }
    }

    /// The version a header's `format` names, if it is one this build reads.
    pub fn from_name(format: &str) -> Option<BatchFormat> {
        match format {
            FORMAT_V1 => Some(BatchFormat::V1),
            FORMAT_V2 => Some(BatchFormat::V2),
            _ => None,
        }
    }
}

/// The filter chain a batch's `filtered` field went through.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FilterDescription {
    pub highpass_hz: Option<f64>,
    pub lowpass_hz: Option<f64>,
    pub order: Option<u32>,
    pub notch_hz: Option<f64>,
    pub notch_harmonics: Option<u32>,
    /// The notch's quality factor (v2; `None` in v1 batches and without a notch).
    pub notch_q: Option<f64>,
    /// Sample index where this run of the chain started (v2): the chain
    /// filtered every sample of the device from there on, in order, so
    /// `filtered` is reproduced exactly by running it over `raw` from that
    /// sample (see `crate::journal::refilter`).
    pub run_start: Option<u64>,
}

impl FilterDescription {
    /// No filter at all: `filtered` equals `raw`.
    pub fn is_identity(&self) -> bool {
        self.highpass_hz.is_none() && self.lowpass_hz.is_none() && self.notch_hz.is_none()
    }
}

/// A batch before sealing (and after opening).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchData {
    pub device_id: String,
    pub sample_rate: f64,
    pub channels: Vec<String>,
    pub units: String,
    pub first_sample: u64,
    pub timestamps: Vec<f64>,
    /// n_samples x n_channels, frame-major.
    pub raw: Vec<f32>,
    /// Same shape as `raw`, or empty: a v2 batch of a journal that does not
    /// store the filtered signal (reproduce it with `crate::journal::refilter`).
    pub filtered: Vec<f32>,
    pub filter: FilterDescription,
    pub features: Vec<FeatureRecord>,
    pub markers: Vec<Marker>,
    pub gaps: Vec<Gap>,
    /// Wall-clock steps noticed while this batch was being filled
    /// (see `crate::clock`).
    pub clock_steps: Vec<ClockStep>,
}

impl BatchData {
    pub fn n_samples(&self) -> usize {
        self.timestamps.len()
    }

    pub fn n_channels(&self) -> usize {
        self.channels.len()
    }

    /// Sample index where this batch's span begins: `first_sample` minus
    /// the samples of gaps right before it (gaps consume indices).
    pub fn start_sample(&self) -> u64 {
        let lead: u64 = self
            .gaps
            .iter()
            .filter(|g| g.before_sample == self.first_sample)
            .map(|g| g.missing)
            .sum();
        self.first_sample.saturating_sub(lead)
    }

    /// One past the sample index of the last sample (gaps consume indices).
    pub fn end_sample(&self) -> u64 {
        self.first_sample
            + self.n_samples() as u64
            + self
                .gaps
                .iter()
                .filter(|g| g.before_sample > self.first_sample)
                .map(|g| g.missing)
                .sum::<u64>()
    }
}

impl BatchData {
    /// Put a loss carried from a dropped batch in front of this batch's
    /// first sample (the one place batches inherit gaps: the processing
    /// stage for a full journal queue, the writer for a refused batch).
    pub fn carry_gap(&mut self, g: Gap) {
        self.gaps.insert(
            0,
            Gap {
                before_sample: self.first_sample,
                ..g
            },
        );
    }

    /// The sample index of every frame (gaps consume indices; see
    /// docs/batch-format.md): frame `k` of a batch without inner gaps has
    /// index `first_sample + k`.
    pub fn sample_indices(&self) -> Vec<u64> {
        let mut inner: Vec<&Gap> = self
            .gaps
            .iter()
            .filter(|g| g.before_sample > self.first_sample)
            .collect();
        inner.sort_by_key(|g| g.before_sample);
        let mut inner = inner.into_iter().peekable();
        let mut index = self.first_sample;
        let mut out = Vec::with_capacity(self.n_samples());
        for _ in 0..self.n_samples() {
            while let Some(g) =
                inner.next_if(|g| g.before_sample.saturating_sub(g.missing) <= index)
            {
                index = index.max(g.before_sample);
            }
            out.push(index);
            index += 1;
        }
        out
    }

    /// Keep only the samples stamped within `[from, to]` (unix seconds),
    /// with the gaps, markers, features and clock steps that fall among
    /// them. A gap right before the first kept sample stays (it is what
    /// separates it from the sample before).
    pub fn trim_to_time(&mut self, from: f64, to: f64) {
        let k0 = self.timestamps.partition_point(|&t| t < from);
        let k1 = self.timestamps.partition_point(|&t| t <= to).max(k0);
        let in_range = |t: f64| t >= from && t <= to;
        self.markers.retain(|m| in_range(m.t));
        self.features.retain(|f| in_range(f.t));
        self.clock_steps.retain(|c| in_range(c.t));
        if k0 == 0 && k1 == self.n_samples() {
            return;
        }
        let ch = self.channels.len();
        if k1 == k0 {
            self.timestamps.clear();
            self.raw.clear();
            self.filtered.clear();
            self.gaps.clear();
            return;
        }
        let idx = self.sample_indices();
        let (first, last) = (idx[k0], idx[k1 - 1]);
        self.gaps
            .retain(|g| g.before_sample >= first && g.before_sample <= last);
        self.first_sample = first;
        self.timestamps.truncate(k1);
        self.timestamps.drain(..k0);
        for v in [&mut self.raw, &mut self.filtered] {
            v.truncate(k1 * ch);
            v.drain(..k0 * ch);
        }
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// The head of a CBOR item: major type and argument (RFC 8949 §3).
fn cbor_head(w: &mut impl Write, major: u8, n: u64) -> std::io::Result<()> {
    let m = major << 5;
    match n {
        0..=23 => w.write_all(&[m | n as u8]),
        24..=0xFF => w.write_all(&[m | 24, n as u8]),
        0x100..=0xFFFF => {
            w.write_all(&[m | 25])?;
            w.write_all(&(n as u16).to_be_bytes())
        }
        0x1_0000..=0xFFFF_FFFF => {
            w.write_all(&[m | 26])?;
            w.write_all(&(n as u32).to_be_bytes())
        }
        _ => {
            w.write_all(&[m | 27])?;
            w.write_all(&n.to_be_bytes())
        }
    }
}

/// The plaintext's writer: a buffer kept from batch to batch, overwritten
/// from the start and grown only past what it held before, so that its
/// bytes are zeroed once rather than for every batch.
type PlainWriter<'a> = std::io::Cursor<&'a mut Vec<u8>>;

/// Write `v` as one CBOR byte string of f32 little-endian values, plain
/// (v1) or byte-shuffled (v2: byte `j` of value `i` at `j * n + i`),
/// straight into the buffer: no copy of the batch's samples beyond this
/// one.
fn write_samples(w: &mut PlainWriter, v: &[f32], format: BatchFormat) -> std::io::Result<()> {
    cbor_head(w, 2, v.len() as u64 * 4)?;
    let start = w.position() as usize;
    let end = start + v.len() * 4;
    let buf = w.get_mut();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    let dst = &mut buf[start..end];
    match format {
        BatchFormat::V1 => {
            for (d, x) in dst.chunks_exact_mut(4).zip(v) {
                d.copy_from_slice(&x.to_le_bytes());
            }
        }
        BatchFormat::V2 => {
            let (p0, rest) = dst.split_at_mut(v.len());
            let (p1, rest) = rest.split_at_mut(v.len());
            let (p2, p3) = rest.split_at_mut(v.len());
            shuffle_f32([p0, p1, p2, p3], v);
        }
    }
    w.set_position(end as u64);
    Ok(())
}

/// Byte `j` of each of `v`'s little-endian values into `planes[j]`, in
/// one pass (four passes, one per byte, each extracting a byte per value,
/// were 2.9 % of all samples of `neuroedge bench` at 1024 ch; this one
/// and zeroing the buffer for it each ~1 %).
#[multiversion::multiversion(targets = "simd")]
fn shuffle_f32([p0, p1, p2, p3]: [&mut [u8]; 4], v: &[f32]) {
    let n = v.len();
    let (p0, p1, p2, p3) = (&mut p0[..n], &mut p1[..n], &mut p2[..n], &mut p3[..n]);
    for i in 0..n {
        let b = v[i].to_bits();
        p0[i] = b as u8;
        p1[i] = (b >> 8) as u8;
        p2[i] = (b >> 16) as u8;
        p3[i] = (b >> 24) as u8;
    }
}

/// The inverse of the v2 shuffle of [`write_samples`]; `None` when the length is not a
/// multiple of 4.
fn unshuffle_f32(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.len() % 4 != 0 {
        return None;
    }
    let n = bytes.len() / 4;
    let (b0, rest) = bytes.split_at(n);
    let (b1, rest) = rest.split_at(n);
    let (b2, b3) = rest.split_at(n);
    Some(
        (0..n)
            .map(|i| f32::from_le_bytes([b0[i], b1[i], b2[i], b3[i]]))
            .collect(),
    )
}

fn f64_bytes(v: &[f64]) -> Value {
    let mut out = Vec::with_capacity(v.len() * 8);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Value::Bytes(out)
}

fn opt_f64(v: Option<f64>) -> Value {
    v.map_or(Value::Null, Value::Float)
}

fn opt_u32(v: Option<u32>) -> Value {
    v.map_or(Value::Null, |x| Value::Integer(x.into()))
}

/// Encode the plaintext CBOR map of contract §6 in `format`. v2 writes
/// `filtered` only when the batch carries it; v1 always writes it ([`seal`]
/// refuses a v1 batch without it).
pub fn encode_plaintext(b: &BatchData, format: BatchFormat) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext_estimate(b));
    // Writing into a Vec cannot fail.
    let _ = write_plaintext(&mut PlainWriter::new(&mut out), b, format);
    out
}

/// About the size of `b`'s plaintext: its samples, their stamps (8 bytes
/// each) and room for the features, markers and framing. Reserved ahead,
/// so that a large batch's buffer is not grown (and copied) as it fills.
fn plaintext_estimate(b: &BatchData) -> usize {
    (b.raw.len() + b.filtered.len()) * 4 + b.n_samples() * 8 + 16 * 1024
}

/// [`encode_plaintext`] appended to `w` (the sealer keeps one buffer for it).
fn write_plaintext(w: &mut PlainWriter, b: &BatchData, format: BatchFormat) -> std::io::Result<()> {
    let f = &b.filter;
    let mut filter = vec![
        (text("highpass_hz"), opt_f64(f.highpass_hz)),
        (text("lowpass_hz"), opt_f64(f.lowpass_hz)),
        (text("order"), opt_u32(f.order)),
        (text("notch_hz"), opt_f64(f.notch_hz)),
        (text("notch_harmonics"), opt_u32(f.notch_harmonics)),
        (text("design"), text("butterworth-sos")),
    ];
    if format == BatchFormat::V2 {
        filter.push((text("notch_q"), opt_f64(f.notch_q)));
        filter.push((
            text("run_start"),
            f.run_start
                .map_or(Value::Null, |x| Value::Integer(x.into())),
        ));
    }
    let filter = Value::Map(filter);
    let features = b
        .features
        .iter()
        .map(|r| {
            Value::Map(vec![
                (text("t"), Value::Float(r.t)),
                (
                    text("band_power"),
                    Value::Map(
                        r.band_power
                            .iter()
                            .map(|(n, v)| {
                                (
                                    text(n),
                                    Value::Array(v.iter().map(|x| Value::Float(*x)).collect()),
                                )
                            })
                            .collect(),
                    ),
                ),
                (
                    text("rms"),
                    Value::Array(r.rms.iter().map(|x| Value::Float(*x)).collect()),
                ),
            ])
        })
        .collect();
    let markers = b
        .markers
        .iter()
        .map(|m| {
            Value::Map(vec![
                (text("t"), Value::Float(m.t)),
                (text("value"), text(&m.value)),
            ])
        })
        .collect();
    let gaps = b
        .gaps
        .iter()
        .map(|g| {
            Value::Map(vec![
                (
                    text("before_sample"),
                    Value::Integer(g.before_sample.into()),
                ),
                (text("missing"), Value::Integer(g.missing.into())),
                (text("cause"), text(g.cause.as_str())),
            ])
        })
        .collect();
    let clock_steps = b
        .clock_steps
        .iter()
        .map(|c| {
            Value::Map(vec![
                (text("t"), Value::Float(c.t)),
                (text("step_s"), Value::Float(c.step_s)),
                (text("applied_s"), Value::Float(c.applied_s)),
            ])
        })
        .collect();
    let with_filtered = format == BatchFormat::V1 || b.filtered.len() == b.raw.len();
    let small = [
        (
            "channels",
            Value::Array(b.channels.iter().map(|c| text(c)).collect()),
        ),
        ("units", text(&b.units)),
        ("timestamps", f64_bytes(&b.timestamps)),
        ("filter", filter),
        ("features", Value::Array(features)),
        ("markers", Value::Array(markers)),
        ("gaps", Value::Array(gaps)),
        ("clock_steps", Value::Array(clock_steps)),
    ];
    // The map: the small entries, then the sample arrays, streamed.
    let cbor = |e: ciborium::ser::Error<std::io::Error>| match e {
        ciborium::ser::Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    };
    cbor_head(w, 5, (small.len() + 1 + usize::from(with_filtered)) as u64)?;
    for (k, v) in &small {
        ciborium::into_writer(&text(k), &mut *w).map_err(cbor)?;
        ciborium::into_writer(v, &mut *w).map_err(cbor)?;
    }
    ciborium::into_writer(&text("raw"), &mut *w).map_err(cbor)?;
    write_samples(w, &b.raw, format)?;
    if with_filtered {
        ciborium::into_writer(&text("filtered"), &mut *w).map_err(cbor)?;
        write_samples(w, &b.filtered, format)?;
    }
    Ok(())
}

/// Everything needed to seal a batch besides its data.
pub struct SealParams<'a> {
    pub batch_id: String,
    pub site_id: &'a str,
    pub node_id: &'a str,
    pub seq: u64,
    pub created_at: f64,
    pub compress: bool,
    pub format: BatchFormat,
}

/// The envelope map up to the ciphertext's bytes: `{"v": 1, "header":
/// h, "nonce": n, "ciphertext": <head of a byte string of body_len>`.
fn envelope_head(
    out: &mut Vec<u8>,
    header: &[u8],
    nonce: &[u8; 12],
    body_len: usize,
) -> std::io::Result<()> {
    cbor_head(out, 5, 4)?;
    for (k, v) in [
        ("v", None),
        ("header", Some(header)),
        ("nonce", Some(&nonce[..])),
    ] {
        cbor_head(out, 3, k.len() as u64)?;
        out.write_all(k.as_bytes())?;
        match v {
            None => cbor_head(out, 0, 1)?,
            Some(bytes) => {
                cbor_head(out, 2, bytes.len() as u64)?;
                out.write_all(bytes)?;
            }
        }
    }
    cbor_head(out, 3, "ciphertext".len() as u64)?;
    out.write_all(b"ciphertext")?;
    cbor_head(out, 2, body_len as u64)
}

/// Length of [`envelope_head`] for a header of `header_len` bytes and a
/// ciphertext of about `body_guess` bytes.
fn envelope_head_len(header_len: usize, body_guess: usize) -> usize {
    let mut v = Vec::new();
    let _ = envelope_head(&mut v, &vec![0; header_len], &[0; 12], body_guess);
    v.len()
}

/// What sealing keeps from one batch to the next: zstd's compression
/// context and the buffer the plaintext is written into. A context made
/// for each batch allocated zstd's tables and cleared them every time
/// (callgrind, journal thread of the daemon at 8 ch × 250 Hz:
/// `ZSTD_resetCCtx_internal` 16 % of its instructions); a kept one is
/// reset for each frame without that. The plaintext is compressed in one
/// call, whole: streamed in, it passed through zstd's circular window
/// buffer, and once that wrapped (every 512 KiB) zstd ran its slower
/// "external dictionary" match finder for the rest of the batch (perf at
/// 1024 ch × 30 kHz: 4.4 % of all samples there against 1.5 % in the
/// plain one), after copying every byte into that buffer. The kept
/// buffer is as large as the largest plaintext so far (16 MiB at high
/// density, a few KiB at 8 ch × 250 Hz); zstd no longer keeps a window
/// buffer of its own.
pub struct Compressor {
    cctx: zstd::zstd_safe::CCtx<'static>,
    plain: Vec<u8>,
}

impl Compressor {
    /// A fresh context (allocates on first use).
    pub fn new() -> Self {
        Compressor {
            cctx: zstd::zstd_safe::CCtx::create(),
            plain: Vec::new(),
        }
    }
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

/// Seal a batch: returns the envelope bytes and the header written into it.
/// [`seal_with`] a context of its own (for one-off batches).
pub fn seal(
    key: &BatchKey,
    p: &SealParams,
    b: &BatchData,
) -> Result<(Vec<u8>, BatchHeader), BatchError> {
    seal_with(&mut Compressor::new(), key, p, b)
}

/// [`seal`] with `z` compressing (when `p.compress`): the journal writer
/// keeps one for all its batches.
pub fn seal_with(
    z: &mut Compressor,
    key: &BatchKey,
    p: &SealParams,
    b: &BatchData,
) -> Result<(Vec<u8>, BatchHeader), BatchError> {
    if p.format == BatchFormat::V1 && b.filtered.len() != b.raw.len() {
        return Err(BatchError::Field("filtered (batch format v1 needs it)"));
    }
    let compression = if p.compress { "zstd" } else { "none" };
    let header = BatchHeader {
        format: p.format.name().into(),
        batch_id: p.batch_id.clone(),
        site_id: p.site_id.into(),
        node_id: p.node_id.into(),
        device_id: b.device_id.clone(),
        seq: p.seq,
        first_sample: b.first_sample,
        n_samples: b.n_samples() as u64,
        n_channels: b.n_channels() as u32,
        sample_rate: b.sample_rate,
        t_start: b.timestamps.first().copied().unwrap_or(0.0),
        t_end: b.timestamps.last().copied().unwrap_or(0.0),
        key_id: key.id().to_string(),
        cipher: CIPHER.into(),
        compression: compression.into(),
        created_at: p.created_at,
    };
    let header_bytes = serde_json::to_vec(&header)?;
    // One buffer holds the envelope: room for the envelope map's head,
    // then the compressed plaintext right behind it, encrypted in place,
    // the head written into the room. A batch's samples are held once
    // more (the plaintext, in a buffer kept for the next batch) and never
    // copied after compression.
    let plain_bytes = (b.raw.len() + b.filtered.len()) * 4;
    let room = envelope_head_len(header_bytes.len(), plain_bytes / 2);
    let mut out = Vec::new();
    if p.compress {
        compress_into(z, &mut out, room, b, p.format)?;
    } else {
        let plain = encode_plaintext(b, p.format);
        out.reserve_exact(room + plain.len() + TAG_ROOM);
        out.resize(room, 0);
        out.extend_from_slice(&plain);
    }
    let nonce = key.seal_in_place_from(&header_bytes, &mut out, room)?;
    let mut head = Vec::with_capacity(room + 8);
    let _ = envelope_head(&mut head, &header_bytes, &nonce, out.len() - room);
    if head.len() <= room {
        let at = room - head.len();
        out[at..room].copy_from_slice(&head);
        if at > 0 {
            // The ciphertext's length head came out shorter than guessed
            // (a batch much smaller than its plaintext predicted).
            out.drain(..at);
        }
    } else {
        // Longer than guessed: make room (one copy; only for bodies far
        // larger than their plaintext, which zstd does not produce).
        out.splice(..room, head);
    }
    Ok((out, header))
}

/// Room left after a body for the cipher's tag.
const TAG_ROOM: usize = 64;

/// Write `b`'s plaintext into `z`'s buffer and compress it into `out`
/// after `room` bytes, as one zstd frame that states its size.
fn compress_into(
    z: &mut Compressor,
    out: &mut Vec<u8>,
    room: usize,
    b: &BatchData,
    format: BatchFormat,
) -> Result<(), BatchError> {
    let zerr = |code: usize| {
        BatchError::Zstd(std::io::Error::other(zstd::zstd_safe::get_error_name(code)))
    };
    z.plain
        .reserve(plaintext_estimate(b).saturating_sub(z.plain.len()));
    let mut w = PlainWriter::new(&mut z.plain);
    // Writing into a Vec cannot fail.
    let _ = write_plaintext(&mut w, b, format);
    let len = w.position() as usize;
    let plain = &z.plain[..len];
    use zstd::zstd_safe::CParameter;
    z.cctx
        .set_parameter(CParameter::CompressionLevel(ZSTD_LEVEL))
        .map_err(zerr)?;
    z.cctx
        .set_parameter(CParameter::WindowLog(zstd_window_log(plain.len())))
        .map_err(zerr)?;
    // Capacity for the worst case (zstd's bound; the tag): the buffer
    // never grows, so it is never copied; pages zstd does not fill are
    // never touched (growing from an estimate was a quarter of the journal
    // thread's page faults at 384 ch x 30 kHz).
    let bound = zstd::zstd_safe::compress_bound(plain.len());
    out.reserve_exact(room + bound + TAG_ROOM);
    out.resize(room, 0);
    let mut dst = std::io::Cursor::new(&mut *out);
    dst.set_position(room as u64);
    z.cctx.compress2(&mut dst, plain).map_err(zerr)?;
    Ok(())
}

fn map_get<'a>(m: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// The parts of an envelope, before decryption.
pub struct EnvelopeParts {
    pub header: BatchHeader,
    /// The header exactly as stored (the associated data).
    pub header_bytes: Vec<u8>,
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
}

/// Read the header of an envelope without decrypting.
pub fn read_header(envelope: &[u8]) -> Result<EnvelopeParts, BatchError> {
    let v: Value = ciborium::from_reader(envelope).map_err(|e| BatchError::Cbor(e.to_string()))?;
    let m = v.as_map().ok_or(BatchError::Field("envelope map"))?;
    let ver = map_get(m, "v")
        .and_then(Value::as_integer)
        .ok_or(BatchError::Field("v"))?;
    let ver = i128::from(ver);
    if ver != 1 {
        return Err(BatchError::Version(ver));
    }
    let header_bytes = map_get(m, "header")
        .and_then(Value::as_bytes)
        .ok_or(BatchError::Field("header"))?
        .clone();
    let nonce: [u8; 12] = map_get(m, "nonce")
        .and_then(Value::as_bytes)
        .and_then(|b| b.as_slice().try_into().ok())
        .ok_or(BatchError::Field("nonce"))?;
    let ct = map_get(m, "ciphertext")
        .and_then(Value::as_bytes)
        .ok_or(BatchError::Field("ciphertext"))?
        .clone();
    let header: BatchHeader = serde_json::from_slice(&header_bytes)?;
    Ok(EnvelopeParts {
        header,
        header_bytes,
        nonce,
        ciphertext: ct,
    })
}

/// Authenticate an envelope (AES-GCM over header and body) without
/// decompressing or decoding it: the check before an upload.
pub fn authenticate(keys: &Keyring, envelope: &[u8]) -> Result<BatchHeader, BatchError> {
    let parts = read_header(envelope)?;
    let key = keys.get(&parts.header.key_id)?;
    key.open(&parts.nonce, &parts.header_bytes, &parts.ciphertext)?;
    Ok(parts.header)
}

/// Open an envelope with the key its header names; returns header and data.
pub fn open(keys: &Keyring, envelope: &[u8]) -> Result<(BatchHeader, BatchData), BatchError> {
    let EnvelopeParts {
        header,
        header_bytes,
        nonce,
        ciphertext,
    } = read_header(envelope)?;
    let key = keys.get(&header.key_id)?;
    let body = key.open(&nonce, &header_bytes, &ciphertext)?;
    let plain = match header.compression.as_str() {
        "zstd" => zstd::stream::decode_all(body.as_slice()).map_err(BatchError::Zstd)?,
        "none" => body,
        other => return Err(BatchError::Compression(other.into())),
    };
    let data = decode_plaintext(&plain, &header)?;
    Ok((header, data))
}

fn as_f64(v: &Value) -> Option<f64> {
    v.as_float()
        .or_else(|| v.as_integer().map(|i| i128::from(i) as f64))
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_integer().and_then(|i| u64::try_from(i).ok())
}

/// Decode the plaintext CBOR map.
pub fn decode_plaintext(plain: &[u8], header: &BatchHeader) -> Result<BatchData, BatchError> {
    let v: Value = ciborium::from_reader(plain).map_err(|e| BatchError::Cbor(e.to_string()))?;
    let m = v.as_map().ok_or(BatchError::Field("plaintext map"))?;
    let bytes = |k: &'static str| {
        map_get(m, k)
            .and_then(Value::as_bytes)
            .ok_or(BatchError::Field(k))
    };
    let format = BatchFormat::from_name(&header.format)
        .ok_or_else(|| BatchError::Format(header.format.clone()))?;
    let f32s = |k: &'static str, b: &Vec<u8>| match format {
        BatchFormat::V1 => Ok(b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect::<Vec<_>>()),
        BatchFormat::V2 => unshuffle_f32(b).ok_or(BatchError::Field(k)),
    };
    let channels = map_get(m, "channels")
        .and_then(Value::as_array)
        .ok_or(BatchError::Field("channels"))?
        .iter()
        .map(|c| {
            c.as_text()
                .map(str::to_string)
                .ok_or(BatchError::Field("channels"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let timestamps = bytes("timestamps")?
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let arr = |k: &'static str| {
        map_get(m, k)
            .and_then(Value::as_array)
            .ok_or(BatchError::Field(k))
    };
    let gaps = arr("gaps")?
        .iter()
        .map(|g| {
            let g = g.as_map().ok_or(BatchError::Field("gaps"))?;
            let cause = match map_get(g, "cause").and_then(Value::as_text) {
                Some("overflow") => GapCause::Overflow,
                Some("journal") => GapCause::Journal,
                _ => GapCause::Device,
            };
            Ok(Gap {
                before_sample: map_get(g, "before_sample")
                    .and_then(as_u64)
                    .ok_or(BatchError::Field("gaps"))?,
                missing: map_get(g, "missing")
                    .and_then(as_u64)
                    .ok_or(BatchError::Field("gaps"))?,
                cause,
            })
        })
        .collect::<Result<Vec<_>, BatchError>>()?;
    let markers = arr("markers")?
        .iter()
        .map(|mk| {
            let mk = mk.as_map().ok_or(BatchError::Field("markers"))?;
            Ok(Marker {
                t: map_get(mk, "t")
                    .and_then(as_f64)
                    .ok_or(BatchError::Field("markers"))?,
                value: map_get(mk, "value")
                    .and_then(Value::as_text)
                    .unwrap_or_default()
                    .to_string(),
            })
        })
        .collect::<Result<Vec<_>, BatchError>>()?;
    // Absent in batches written before clock steps were recorded.
    let clock_steps = map_get(m, "clock_steps")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    let c = c.as_map()?;
                    Some(ClockStep {
                        t: map_get(c, "t").and_then(as_f64)?,
                        step_s: map_get(c, "step_s").and_then(as_f64)?,
                        applied_s: map_get(c, "applied_s").and_then(as_f64).unwrap_or(0.0),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let floats = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().filter_map(as_f64).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let features = arr("features")?
        .iter()
        .map(|r| {
            let r = r.as_map().ok_or(BatchError::Field("features"))?;
            let band_power = map_get(r, "band_power")
                .and_then(Value::as_map)
                .map(|bp| {
                    bp.iter()
                        .filter_map(|(k, v)| Some((k.as_text()?.to_string(), floats(v))))
                        .collect()
                })
                .unwrap_or_default();
            Ok(FeatureRecord {
                t: map_get(r, "t")
                    .and_then(as_f64)
                    .ok_or(BatchError::Field("features"))?,
                band_power,
                rms: map_get(r, "rms").map(floats).unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, BatchError>>()?;
    let fm = map_get(m, "filter").and_then(Value::as_map);
    let fget = |k: &str| fm.and_then(|f| map_get(f, k));
    let filter = FilterDescription {
        highpass_hz: fget("highpass_hz").and_then(as_f64),
        lowpass_hz: fget("lowpass_hz").and_then(as_f64),
        order: fget("order").and_then(as_u64).map(|x| x as u32),
        notch_hz: fget("notch_hz").and_then(as_f64),
        notch_harmonics: fget("notch_harmonics").and_then(as_u64).map(|x| x as u32),
        notch_q: fget("notch_q").and_then(as_f64),
        run_start: fget("run_start").and_then(as_u64),
    };
    let filtered = match (format, map_get(m, "filtered")) {
        // v2 leaves it out when the journal does not store it.
        (BatchFormat::V2, None) => Vec::new(),
        _ => f32s("filtered", bytes("filtered")?)?,
    };
    Ok(BatchData {
        device_id: header.device_id.clone(),
        sample_rate: header.sample_rate,
        channels,
        units: map_get(m, "units")
            .and_then(Value::as_text)
            .unwrap_or("uV")
            .to_string(),
        first_sample: header.first_sample,
        timestamps,
        raw: f32s("raw", bytes("raw")?)?,
        filtered,
        filter,
        features,
        markers,
        gaps,
        clock_steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zstd_window_holds_the_plaintext_up_to_the_default() {
        let w = zstd_window_log;
        assert_eq!(w(0), 10);
        assert_eq!(w(1024), 10);
        assert_eq!(w(1025), 11);
        assert_eq!(w(20_000), 15);
        assert_eq!(w(1 << 19), 19);
        assert_eq!(w(16 << 20), 19);
        assert_eq!(w(usize::MAX), 19);
    }

    pub fn sample_batch() -> BatchData {
        BatchData {
            device_id: "dev".into(),
            sample_rate: 250.0,
            channels: vec!["C3".into(), "C4".into()],
            units: "uV".into(),
            first_sample: 500,
            timestamps: vec![10.0, 10.004, 10.008],
            raw: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            filtered: vec![1.5, 2.5, 3.5, 4.5, 5.5, 6.5],
            filter: FilterDescription::default(),
            features: vec![FeatureRecord {
                t: 10.008,
                band_power: vec![("alpha".into(), vec![1.0, 2.0])],
                rms: vec![0.5, 0.25],
            }],
            markers: vec![Marker {
                t: 10.004,
                value: "stimulus".into(),
            }],
            clock_steps: vec![ClockStep {
                t: 1_700_000_000.5,
                step_s: 3600.0,
                applied_s: 3600.0,
            }],
            gaps: vec![Gap {
                before_sample: 500,
                missing: 3,
                cause: GapCause::Device,
            }],
        }
    }

    #[test]
    fn a_kept_compressor_seals_batches_of_any_size_in_turn() {
        // Small, larger than zstd's default window (a bigger context), then
        // small again: each opens to what was sealed.
        let key = BatchKey::from_bytes(&[5u8; 32]);
        let ring = Keyring::new(BatchKey::from_bytes(&[5u8; 32]));
        let big = {
            let mut b = sample_batch();
            let n = 40_000;
            b.timestamps = (0..n).map(|i| 10.0 + i as f64 / 250.0).collect();
            let wave = |i: usize| ((i * 7919) % 1000) as f32 * 0.37 - (i % 13) as f32;
            b.raw = (0..2 * n).map(wave).collect();
            b.filtered = (0..2 * n).map(|i| wave(i + 5) * 0.5).collect();
            b
        };
        let mut z = Compressor::new();
        for (seq, b) in [sample_batch(), big, sample_batch()].iter().enumerate() {
            let p = SealParams {
                batch_id: format!("id-{seq}"),
                site_id: "lab",
                node_id: "pi",
                seq: seq as u64,
                created_at: 11.0,
                compress: true,
                format: BatchFormat::V2,
            };
            let (env, h) = seal_with(&mut z, &key, &p, b).unwrap();
            assert_eq!(h.compression, "zstd");
            let (h2, b2) = open(&ring, &env).unwrap();
            assert_eq!(h, h2);
            assert_eq!(*b, b2, "batch {seq}");
        }
    }

    #[test]
    fn envelopes_are_exact_whatever_the_ciphertext_length_head() {
        // The envelope's head is written into room reserved before the
        // ciphertext, sized from a guess of the body's length: right
        // (most batches), too long (a body much smaller than its samples:
        // constant signal) and too short (no compression, tiny batch).
        let key = BatchKey::from_bytes(&[9u8; 32]);
        let keys = Keyring::new(key.clone());
        let mut constant = sample_batch();
        constant.timestamps = (0..20_000).map(|i| i as f64).collect();
        constant.raw = vec![0.0; 40_000];
        constant.filtered = vec![0.0; 40_000];
        let mut noisy = constant.clone();
        let mut x = 1u32;
        for v in noisy.raw.iter_mut().chain(noisy.filtered.iter_mut()) {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *v = f32::from_bits((x >> 9) | 0x3f80_0000);
        }
        let mut empty = sample_batch();
        empty.timestamps.clear();
        empty.raw.clear();
        empty.filtered.clear();
        for (b, compress) in [
            (&constant, true),
            (&noisy, true),
            (&empty, false),
            (&sample_batch(), false),
            (&sample_batch(), true),
        ] {
            for format in [BatchFormat::V1, BatchFormat::V2] {
                let p = SealParams {
                    batch_id: "b".into(),
                    site_id: "s",
                    node_id: "n",
                    seq: 1,
                    created_at: 0.0,
                    compress,
                    format,
                };
                let (env, header) = seal(&key, &p, b).expect("seal");
                // A well-formed CBOR map from its first byte to its last.
                let v: ciborium::Value = ciborium::from_reader(&env[..]).expect("cbor");
                let mut re = Vec::new();
                ciborium::into_writer(&v, &mut re).unwrap();
                assert_eq!(re, env, "{compress} {format:?}");
                let (h, back) = open(&keys, &env).expect("open");
                assert_eq!(h, header);
                assert_eq!(back.raw, b.raw);
                assert_eq!(back.timestamps, b.timestamps);
            }
        }
    }

    #[test]
    fn seal_open_roundtrip() {
        let key = BatchKey::from_bytes(&[3u8; 32]);
        let ring = Keyring::new(BatchKey::from_bytes(&[3u8; 32]));
        for format in [BatchFormat::V1, BatchFormat::V2] {
            for compress in [true, false] {
                let p = SealParams {
                    batch_id: "id-1".into(),
                    site_id: "lab",
                    node_id: "pi",
                    seq: 4,
                    created_at: 11.0,
                    compress,
                    format,
                };
                let mut b = sample_batch();
                if format == BatchFormat::V2 {
                    b.filter.notch_q = Some(30.0);
                    b.filter.run_start = Some(17);
                }
                let (env, h) = seal(&key, &p, &b).unwrap();
                assert_eq!(h.n_samples, 3);
                assert_eq!(h.t_end, 10.008);
                assert_eq!(h.format, format.name());
                let (h2, b2) = open(&ring, &env).unwrap();
                assert_eq!(h, h2);
                assert_eq!(b, b2);
            }
        }
    }

    /// Sealing parameters of a compressed v2 batch, sequence 0.
    fn v2_params(batch_id: &str) -> SealParams<'static> {
        SealParams {
            batch_id: batch_id.into(),
            site_id: "lab",
            node_id: "pi",
            seq: 0,
            created_at: 0.0,
            compress: true,
            format: BatchFormat::V2,
        }
    }

    #[test]
    fn a_kept_compressor_seals_each_batch_alone_larger_or_smaller() {
        let key = BatchKey::from_bytes(&[3u8; 32]);
        let ring = Keyring::new(BatchKey::from_bytes(&[3u8; 32]));
        let p = v2_params("id");
        let sized = |n: usize| {
            let mut b = sample_batch();
            b.timestamps = (0..n).map(|i| i as f64).collect();
            b.raw = (0..2 * n).map(|i| i as f32 * 0.5).collect();
            b.filtered = (0..2 * n).map(|i| -(i as f32)).collect();
            b
        };
        let mut z = Compressor::new();
        for n in [5000, 3, 0, 7000, 4999] {
            let b = sized(n);
            let (env, _) = seal_with(&mut z, &key, &p, &b).unwrap();
            assert_eq!(open(&ring, &env).unwrap().1, b, "{n} samples");
        }
    }

    #[test]
    fn cbor_heads_match_ciborium() {
        for n in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            1 << 32,
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            cbor_head(&mut ours, 0, n).unwrap();
            let mut theirs = Vec::new();
            ciborium::into_writer(&Value::Integer(n.into()), &mut theirs).unwrap();
            assert_eq!(ours, theirs, "{n}");
        }
        // A batch whose arrays need 4-byte lengths round-trips, both formats.
        let key = BatchKey::from_bytes(&[3u8; 32]);
        let ring = Keyring::new(BatchKey::from_bytes(&[3u8; 32]));
        let n = 20_000;
        let b = BatchData {
            timestamps: (0..n).map(|i| i as f64).collect(),
            raw: (0..2 * n).map(|i| (i as f32).sin() * 100.0).collect(),
            filtered: (0..2 * n).map(|i| (i as f32).cos()).collect(),
            ..sample_batch()
        };
        for format in [BatchFormat::V1, BatchFormat::V2] {
            let p = SealParams {
                batch_id: "big".into(),
                site_id: "lab",
                node_id: "pi",
                seq: 0,
                created_at: 0.0,
                compress: true,
                format,
            };
            let (env, _) = seal(&key, &p, &b).unwrap();
            assert_eq!(open(&ring, &env).unwrap().1, b);
        }
    }

    #[test]
    fn v2_shuffles_samples_and_may_leave_filtered_out() {
        let key = BatchKey::from_bytes(&[3u8; 32]);
        let ring = Keyring::new(BatchKey::from_bytes(&[3u8; 32]));
        let b = BatchData {
            filtered: Vec::new(),
            ..sample_batch()
        };
        let p = |format| SealParams {
            batch_id: "id".into(),
            site_id: "lab",
            node_id: "pi",
            seq: 0,
            created_at: 0.0,
            compress: false,
            format,
        };
        let (env, _) = seal(&key, &p(BatchFormat::V2), &b).unwrap();
        let (_, got) = open(&ring, &env).unwrap();
        assert_eq!(got, b, "no filtered in, none out");
        // The plaintext: raw's bytes grouped by position in the f32.
        let plain = encode_plaintext(&b, BatchFormat::V2);
        let v: Value = ciborium::from_reader(plain.as_slice()).unwrap();
        let m = v.as_map().unwrap();
        assert!(map_get(m, "filtered").is_none());
        let raw = map_get(m, "raw").and_then(Value::as_bytes).unwrap();
        let plain: Vec<u8> = b.raw.iter().flat_map(|x| x.to_le_bytes()).collect();
        let n = b.raw.len();
        for (i, byte) in plain.iter().enumerate() {
            assert_eq!(raw[(i % 4) * n + i / 4], *byte);
        }
        assert_eq!(unshuffle_f32(raw).unwrap(), b.raw);
        assert!(unshuffle_f32(&raw[1..]).is_none());
        // v1 cannot leave it out.
        assert!(seal(&key, &p(BatchFormat::V1), &b).is_err());
        // A format this build does not know is a clear error.
        let h = BatchHeader {
            format: "neuroedge.batch.v9".into(),
            ..open(&ring, &env).unwrap().0
        };
        let e = decode_plaintext(&encode_plaintext(&b, BatchFormat::V2), &h).unwrap_err();
        assert!(e.to_string().contains("neuroedge.batch.v9"), "{e}");
    }

    #[test]
    fn the_shuffle_puts_byte_j_of_value_i_at_j_n_plus_i_at_any_length() {
        for n in [0usize, 1, 7, 31, 33, 64, 1001] {
            let v: Vec<f32> = (0..n)
                .map(|i| f32::from_bits((i as u32).wrapping_mul(0x9E37_79B9) ^ 0x8040_2010))
                .collect();
            // Over a buffer that held more before: what it held is
            // overwritten, and the position says where the string ends.
            let mut out = vec![0xAA; 3 * n + 10];
            let mut w = PlainWriter::new(&mut out);
            write_samples(&mut w, &v, BatchFormat::V2).unwrap();
            let end = w.position() as usize;
            out.truncate(end);
            let Value::Bytes(got) = ciborium::from_reader(out.as_slice()).unwrap() else {
                panic!("not a byte string")
            };
            assert_eq!(got.len(), 4 * n);
            for (i, x) in v.iter().enumerate() {
                for (j, byte) in x.to_le_bytes().into_iter().enumerate() {
                    assert_eq!(got[j * n + i], byte, "n {n} value {i} byte {j}");
                }
            }
            assert_eq!(
                unshuffle_f32(&got)
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>(),
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn tampered_header_fails() {
        let key = BatchKey::from_bytes(&[3u8; 32]);
        let ring = Keyring::new(BatchKey::from_bytes(&[3u8; 32]));
        let p = v2_params("x");
        let (env, _) = seal(&key, &p, &sample_batch()).unwrap();
        let mut bad = env.clone();
        // Flip a byte inside the header JSON ("seq":0 -> "seq":1).
        let pos = bad.windows(7).position(|w| w == b"\"seq\":0").unwrap();
        bad[pos + 6] = b'1';
        assert!(matches!(
            open(&ring, &bad),
            Err(BatchError::Seal(SealError::Auth))
        ));
        assert!(open(&ring, b"garbage").is_err());
        let other = Keyring::new(BatchKey::from_bytes(&[4u8; 32]));
        assert!(matches!(
            open(&other, &env),
            Err(BatchError::Seal(SealError::UnknownKey(_)))
        ));
    }
}
