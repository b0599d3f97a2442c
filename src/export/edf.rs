//! `--format edf|bdf`: one device as EDF+C (16-bit) or BDF+C (24-bit), the
//! formats of EDFbrowser, EEGLAB, MNE (`read_raw_edf/bdf`), pyedflib.
//!
//! Two passes, memory independent of the journal's size:
//!
//! 1. the device's batches are read once through the journal reader and
//!    laid on a continuous sample grid ([`super::timeline`]); the frames go
//!    to an unnamed spool file beside the output, while the per-channel
//!    ranges, the annotations (markers and padded gaps) and their sizes are
//!    gathered;
//! 2. the header is written with everything known (number of records,
//!    physical ranges, room for annotations), then the data records from
//!    the spool.
//!
//! - Data records of 1 s (samples per record = the rate). A rate that is not
//!   a whole number uses the shortest record of 1..=60 s holding a whole
//!   number of samples (e.g. 2 s at 127.5 Hz); a rate for which none does is
//!   refused (XDF keeps it exactly).
//! - Physical range: a device whose values are ADC counts times a documented
//!   scale (the OpenBCI Cyton: 4.5 V / 24 / (2^23 − 1) per count, ±187 500 µV)
//!   exported raw as BDF carries the counts themselves, digital ±8 388 607:
//!   values read back exactly. Otherwise each channel's range is the range
//!   of its exported values (pass 1), written with up to 8 characters and
//!   rounded outwards; digital ±32 767 (EDF) or ±8 388 607 (BDF); a value
//!   reads back within half a step, `(max − min) / 65 534` (EDF) or
//!   `/ 16 777 214` (BDF).
//! - Annotations (`EDF Annotations` signal): each record starts with its
//!   time-keeping TAL; markers as TALs with their text, gaps as
//!   `BAD_ACQ_SKIP <n> samples (<cause>)` with their duration; onsets
//!   relative to the header's start second, so the first record's TAL holds
//!   the sub-second start (EDF+ 2.2).
//! - Start date and time: the first exported sample, UTC (the header has no
//!   time zone); patient `X X X X` and recording
//!   `Startdate dd-MMM-yyyy X X X` unless given.

use super::output::OutFile;
use super::timeline::{Annotation, AnnotationKind, FrameSink, Timeline, TimelineBuilder};
use super::{io_at, DeviceInfo, ExportError, Progress, Request};
use crate::crypto::Keyring;
use crate::journal::Journal;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

/// Longest annotation text written into an EDF TAL (bytes, UTF-8); longer
/// markers are cut (the BIDS `_events.tsv` keeps them whole).
pub const MAX_TAL_TEXT: usize = 240;
/// Most bytes of annotations per data record before they spill into the
/// next records.
const MAX_ANNOT_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Edf,
    Bdf,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Edf => "edf",
            Flavour::Bdf => "bdf",
        }
    }

    fn bytes(self) -> usize {
        match self {
            Flavour::Edf => 2,
            Flavour::Bdf => 3,
        }
    }

    fn digital(self) -> (i32, i32) {
        match self {
            Flavour::Edf => (-32767, 32767),
            Flavour::Bdf => (-8_388_607, 8_388_607),
        }
    }

    /// The annotation signal's digital range (the whole integer range).
    fn annot_digital(self) -> (i32, i32) {
        match self {
            Flavour::Edf => (-32768, 32767),
            Flavour::Bdf => (-8_388_608, 8_388_607),
        }
    }
}

/// Header fields the user may give.
#[derive(Debug, Clone, Default)]
pub struct EdfOptions {
    /// EDF+ patient field (`code sex birthdate name`); default `X X X X`.
    pub patient: Option<String>,
    /// EDF+ recording field after `Startdate dd-MMM-yyyy`
    /// (`admincode technician equipment`); default `X X X`.
    pub recording: Option<String>,
}

/// Check a user-given header field: printable ASCII, short enough.
pub fn check_header_field(flag: &str, s: &str, max: usize) -> Result<(), ExportError> {
    if !s.bytes().all(|b| (32..127).contains(&b)) || s.len() > max {
        return Err(ExportError::Usage(format!(
            "{flag} must be printable ASCII of at most {max} characters (EDF+ header field; \
             use _ for spaces inside a subfield), got {s:?}"
        )));
    }
    Ok(())
}

/// One channel's scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub phys_min_text: String,
    pub phys_max_text: String,
    pub phys_min: f64,
    pub phys_max: f64,
    pub dig_min: i32,
    pub dig_max: i32,
    /// µV per count when the values are ADC counts (read back exactly).
    pub counts: Option<f64>,
}

impl Scaling {
    /// µV per digital step.
    pub fn step(&self) -> f64 {
        (self.phys_max - self.phys_min) / f64::from(self.dig_max - self.dig_min)
    }

    fn quantiser(&self) -> Quantiser {
        match self.counts {
            Some(uv) => Quantiser {
                inv: 1.0 / uv,
                sub: 0.0,
                add: 0.0,
                lo: self.dig_min,
                hi: self.dig_max,
            },
            None => Quantiser {
                inv: 1.0 / self.step(),
                sub: self.phys_min,
                add: f64::from(self.dig_min),
                lo: self.dig_min,
                hi: self.dig_max,
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Quantiser {
    inv: f64,
    sub: f64,
    add: f64,
    lo: i32,
    hi: i32,
}

impl Quantiser {
    #[inline]
    fn q(&self, v: f32) -> i32 {
        let d = ((f64::from(v) - self.sub) * self.inv + self.add).round();
        if d.is_nan() {
            return self.q(0.0);
        }
        (d as i64).clamp(i64::from(self.lo), i64::from(self.hi)) as i32
    }
}

/// A number in at most 8 characters, rounded outwards (down for a
/// minimum, up for a maximum), and the value the text stands for.
pub fn edf_number(x: f64, up: bool) -> Option<(String, f64)> {
    for dec in (0..=6usize).rev() {
        let m = 10f64.powi(dec as i32);
        let y = if up {
            (x * m).ceil() / m
        } else {
            (x * m).floor() / m
        };
        let mut s = format!("{y:.dec$}");
        if s.contains('.') {
            s = s.trim_end_matches('0').trim_end_matches('.').to_string();
        }
        if s == "-0" {
            s = "0".into();
        }
        if s.len() <= 8 {
            let v: f64 = s.parse().ok()?;
            return Some((s, v));
        }
    }
    None
}

/// The scaling of a channel whose exported values span `[min, max]`.
pub fn data_scaling(min: f32, max: f32, flavour: Flavour) -> Option<Scaling> {
    let (mut lo, mut hi) = (f64::from(min), f64::from(max));
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (-1.0, 1.0);
    }
    if hi - lo < 1e-3 {
        lo -= 1.0;
        hi += 1.0;
    }
    let (min_text, pmin) = edf_number(lo, false)?;
    let (max_text, pmax) = edf_number(hi, true)?;
    let (dmin, dmax) = flavour.digital();
    Some(Scaling {
        phys_min_text: min_text,
        phys_max_text: max_text,
        phys_min: pmin,
        phys_max: pmax,
        dig_min: dmin,
        dig_max: dmax,
        counts: None,
    })
}

/// The record length for `rate`: (seconds, samples per record).
pub fn record_length(rate: f64) -> Option<(u32, usize)> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    (1..=60u32).find_map(|d| {
        let n = rate * f64::from(d);
        let r = n.round();
        ((n - r).abs() <= 1e-9 * n.max(1.0) && r >= 1.0).then_some((d, r as usize))
    })
}

/// A TAL number: `+12.345` (at most 6 decimals).
fn tal_number(x: f64) -> String {
    let mut s = format!("{:.6}", x.max(0.0));
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("+{s}")
}

/// Annotation text without the TAL separators, cut to [`MAX_TAL_TEXT`].
fn tal_text(s: &str) -> String {
    let mut t: String = s
        .chars()
        .map(|c| {
            if matches!(c, '\x14' | '\x15' | '\0') {
                ' '
            } else {
                c
            }
        })
        .collect();
    if t.len() > MAX_TAL_TEXT {
        let mut cut = MAX_TAL_TEXT - 3;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
        t.push_str("...");
    }
    t
}

/// The spool: `[pos u64][frames u32][frames × channels f32]`, little-endian.
struct Spool {
    w: BufWriter<std::fs::File>,
    channels: usize,
    path: std::path::PathBuf,
}

impl FrameSink for Spool {
    fn frames(&mut self, pos: u64, values: &[f32]) -> std::io::Result<()> {
        let n = values.len() / self.channels.max(1);
        self.w.write_all(&pos.to_le_bytes())?;
        self.w.write_all(&(n as u32).to_le_bytes())?;
        for v in values {
            self.w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }
}

/// What an EDF/BDF export wrote.
#[derive(Debug, Clone)]
pub struct EdfResult {
    pub timeline: Timeline,
    pub flavour: Flavour,
    pub record_s: u32,
    pub samples_per_record: usize,
    pub records: u64,
    pub scaling: Vec<Scaling>,
    /// Annotations that did not fit their own record and went into a later one.
    pub spilled: usize,
}

impl EdfResult {
    /// Duration of the file (all records), seconds.
    pub fn duration_s(&self) -> f64 {
        self.records as f64 * f64::from(self.record_s)
    }
}

/// Export one device as EDF+C or BDF+C into `out`; the spool lives in
/// `spool_dir` (the output's folder) and disappears with the process.
#[allow(clippy::too_many_arguments)]
pub fn export_edf(
    j: &Journal,
    keys: &Keyring,
    req: &Request,
    device: &str,
    info: &DeviceInfo,
    flavour: Flavour,
    opts: &EdfOptions,
    out: &mut OutFile,
    progress: &mut Progress,
) -> Result<EdfResult, ExportError> {
    let spool_dir = match out.target().parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let file = tempfile::tempfile_in(&spool_dir).map_err(io_at(&spool_dir))?;
    let mut spool = Spool {
        w: BufWriter::with_capacity(1 << 20, file),
        channels: 0,
        path: spool_dir.join("(export spool)"),
    };
    let adc = if flavour == Flavour::Bdf {
        info.adc
    } else {
        None
    };
    let mut tb = TimelineBuilder::new(req, flavour.name(), device, adc, info.quality.railed_abs_uv);
    let mut done = 0u64;
    for item in j.read_batches(keys, req.selection(device)) {
        let item = item?;
        if spool.channels == 0 {
            if let crate::journal::ReadBatch::Opened { data, .. } = &item {
                spool.channels = data.channels.len();
            }
        }
        tb.push(item, &mut spool).map_err(|e| match e {
            ExportError::Io(source) => ExportError::Write {
                path: spool.path.clone(),
                source,
            },
            e => e,
        })?;
        done += 1;
        progress.tick(done);
    }
    let tl = tb.finish();
    if tl.summary.batches == 0 {
        return Err(ExportError::Empty(format!(
            "no batches of device {device:?} in {}",
            req.range_text()
        )));
    }
    let Some(layout) = tl.layout.clone() else {
        return Err(ExportError::Empty(format!(
            "device {device:?}: none of the {} selected batches could be opened, so there is no \
             channel layout to write (check --key / previous_key_files)",
            tl.summary.batches
        )));
    };
    let Some((record_s, spr)) = record_length(layout.rate) else {
        return Err(ExportError::Unsupported(format!(
            "device {device:?} samples at {} Hz: no data record of 1..=60 s holds a whole number \
             of samples, so {} cannot represent it; use --format xdf (every sample keeps its time)",
            layout.rate,
            flavour.name()
        )));
    };
    let ch = layout.channels.len();
    let scaling = channel_scaling(&tl, &layout, adc, flavour, device)?;
    let records = tl.positions.div_ceil(spr as u64).max(1);
    let mut tl = tl;
    let tail = records * spr as u64 - tl.positions;
    if tail > 0 {
        tl.annotations.push(Annotation {
            onset: tl.positions as f64,
            duration: tail,
            text: format!(
                "BAD_PADDING {tail} samples (after the last sample, to fill the last data record)"
            ),
            kind: AnnotationKind::Gap,
        });
    }
    let plan = TalPlan::new(&tl, layout.rate, spr, records, record_s);
    let annot_samples = plan.budget / flavour.bytes();

    // Header.
    let start = super::timefmt::utc(tl.t0.floor()).ok_or_else(|| {
        ExportError::Unsupported(format!("first sample time {} is not a date", tl.t0))
    })?;
    let header = build_header(
        flavour,
        &layout,
        &scaling,
        &tl,
        start,
        opts,
        records,
        record_s,
        spr,
        annot_samples,
        req.signal,
    );
    out.write_all(&header)?;

    write_records(spool, &scaling, (ch, spr), records, flavour, &plan, out)?;
    progress.finish();
    Ok(EdfResult {
        timeline: tl,
        flavour,
        record_s,
        samples_per_record: spr,
        records,
        scaling,
        spilled: plan.spilled,
    })
}

/// Pass 2: the data records from the spool, each with its annotations;
/// samples the recording lacks hold the channel's zero.
fn write_records(
    spool: Spool,
    scaling: &[Scaling],
    (ch, spr): (usize, usize),
    records: u64,
    flavour: Flavour,
    plan: &TalPlan,
    out: &mut OutFile,
) -> Result<(), ExportError> {
    let file = spool.w.into_inner().map_err(|e| e.into_error())?;
    let mut file = file;
    file.rewind()?;
    let mut rd = BufReader::with_capacity(1 << 20, file);
    let quant: Vec<Quantiser> = scaling.iter().map(Scaling::quantiser).collect();
    let pad: Vec<i32> = quant.iter().map(|q| q.q(0.0)).collect();
    let mut rec = vec![0i32; ch * spr];
    let fill = |rec: &mut [i32]| {
        for (c, p) in pad.iter().enumerate() {
            rec[c * spr..(c + 1) * spr].fill(*p);
        }
    };
    fill(&mut rec);
    let bytes = flavour.bytes();
    let mut outbuf: Vec<u8> = Vec::with_capacity(ch * spr * bytes + plan.budget);
    let mut next_tal = 0usize;
    let mut cur: u64 = 0;
    let mut write_record = |r: u64, rec: &[i32], outbuf: &mut Vec<u8>| -> std::io::Result<()> {
        outbuf.clear();
        for d in rec {
            let b = d.to_le_bytes();
            outbuf.extend_from_slice(&b[..bytes]);
        }
        plan.write_record(r, &mut next_tal, outbuf);
        out.write_all(outbuf)
    };
    let mut head = [0u8; 12];
    let mut frame_bytes: Vec<u8> = Vec::new();
    loop {
        match rd.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let pos = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        let n = u32::from_le_bytes(head[8..].try_into().unwrap_or_default()) as usize;
        frame_bytes.resize(n * ch * 4, 0);
        rd.read_exact(&mut frame_bytes)?;
        for (f, frame) in frame_bytes.chunks_exact(ch * 4).enumerate() {
            let p = pos + f as u64;
            let r = p / spr as u64;
            while r > cur {
                write_record(cur, &rec, &mut outbuf)?;
                fill(&mut rec);
                cur += 1;
            }
            let s = (p % spr as u64) as usize;
            for (c, v) in frame.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                rec[c * spr + s] = quant[c].q(v);
            }
        }
    }
    while cur < records {
        write_record(cur, &rec, &mut outbuf)?;
        fill(&mut rec);
        cur += 1;
    }
    Ok(())
}

/// Each channel's EDF/BDF scaling: the ADC's range for a BDF of counts,
/// else one fitted to the values' extent.
fn channel_scaling(
    tl: &Timeline,
    layout: &super::Layout,
    adc: Option<super::AdcScale>,
    flavour: Flavour,
    device: &str,
) -> Result<Vec<Scaling>, ExportError> {
    let mut scaling = Vec::with_capacity(layout.channels.len());
    for (c, st) in tl.stats.iter().enumerate() {
        let s = match adc {
            Some(a) if st.counts && st.n > 0 => {
                let full = f64::from(a.counts_max) * a.uv_per_count;
                let (max_text, pmax) =
                    edf_number((full * 1e6).round() / 1e6, true).unwrap_or(("1".into(), 1.0));
                Scaling {
                    phys_min_text: format!("-{max_text}"),
                    phys_max_text: max_text,
                    phys_min: -pmax,
                    phys_max: pmax,
                    dig_min: -a.counts_max,
                    dig_max: a.counts_max,
                    counts: Some(a.uv_per_count),
                }
            }
            _ => data_scaling(st.min, st.max, flavour).ok_or_else(|| {
                ExportError::Unsupported(format!(
                    "device {device:?} channel {}: values {}..{} µV do not fit an EDF header \
                     field (8 characters)",
                    layout.channels[c], st.min, st.max
                ))
            })?,
        };
        scaling.push(s);
    }
    Ok(scaling)
}

/// The annotations as EDF+ TALs, each assigned to a data record, and the
/// bytes of annotation signal every record carries.
struct TalPlan {
    /// Fraction of a second of the first sample's time (record onsets are
    /// relative to the whole second the header names).
    frac: f64,
    record_s: u32,
    /// (record, TAL bytes), in the timeline's order.
    tals: Vec<(u64, Vec<u8>)>,
    /// (record, index into `tals`), by record.
    assigned: Vec<(u64, usize)>,
    /// TALs moved to a later record for want of room.
    spilled: usize,
    /// Annotation bytes per record (a multiple of 6: EDF's 2, BDF's 3).
    budget: usize,
}

impl TalPlan {
    fn new(tl: &Timeline, rate: f64, spr: usize, records: u64, record_s: u32) -> Self {
        let frac = tl.t0 - tl.t0.floor();
        let tals: Vec<(u64, Vec<u8>)> = tl
            .annotations
            .iter()
            .map(|a| {
                let mut t = tal_number(frac + a.onset / rate).into_bytes();
                if a.duration > 0 {
                    t.push(0x15);
                    t.extend_from_slice(&tal_number(a.duration as f64 / rate).as_bytes()[1..]);
                }
                t.push(0x14);
                t.extend_from_slice(tal_text(&a.text).as_bytes());
                t.extend_from_slice(&[0x14, 0]);
                let r = ((a.onset / spr as f64).floor().max(0.0) as u64).min(records - 1);
                (r, t)
            })
            .collect();
        let keeping_max = tal_number(frac + (records * u64::from(record_s)) as f64).len() + 3;
        let mut need: std::collections::BTreeMap<u64, usize> = Default::default();
        for (r, t) in &tals {
            *need.entry(*r).or_default() += t.len();
        }
        let largest = tals.iter().map(|t| t.1.len()).max().unwrap_or(0);
        let busiest = need.values().copied().max().unwrap_or(0);
        let mut budget = (keeping_max + busiest.min(MAX_ANNOT_BYTES)).max(keeping_max + largest);
        let (assigned, spilled) = loop {
            budget = budget.div_ceil(6) * 6;
            if let Some(a) = assign(&tals, records, budget, keeping_max) {
                break a;
            }
            budget *= 2;
        };
        TalPlan {
            frac,
            record_s,
            tals,
            assigned,
            spilled,
            budget,
        }
    }

    /// Record `r`'s annotation signal: its time-keeping TAL, then the TALs
    /// assigned to it (from `next` on), zero-padded to the budget.
    fn write_record(&self, r: u64, next: &mut usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(
            format!(
                "{}\x14\x14\0",
                tal_number(self.frac + (r * u64::from(self.record_s)) as f64)
            )
            .as_bytes(),
        );
        while *next < self.assigned.len() && self.assigned[*next].0 == r {
            out.extend_from_slice(&self.tals[self.assigned[*next].1].1);
            *next += 1;
        }
        out.resize(start + self.budget, 0);
    }
}

/// Assign each TAL to a record: its own when it fits, else the next with
/// room. `None` when they do not fit before the last record ends.
fn assign(
    tals: &[(u64, Vec<u8>)],
    records: u64,
    budget: usize,
    keeping: usize,
) -> Option<(Vec<(u64, usize)>, usize)> {
    let mut order: Vec<usize> = (0..tals.len()).collect();
    order.sort_by_key(|&i| tals[i].0);
    let mut out = Vec::with_capacity(tals.len());
    let (mut r, mut used) = (0u64, keeping);
    let mut spilled = 0;
    for i in order {
        let (want, ref t) = tals[i];
        if want > r {
            r = want;
            used = keeping;
        }
        if used + t.len() > budget {
            r += 1;
            used = keeping;
            if t.len() + keeping > budget {
                return None;
            }
        }
        if r >= records {
            return None;
        }
        if r != want {
            spilled += 1;
        }
        used += t.len();
        out.push((r, i));
    }
    Some((out, spilled))
}

fn field(out: &mut Vec<u8>, s: &str, width: usize) {
    let mut b: Vec<u8> = s
        .bytes()
        .map(|c| if (32..127).contains(&c) { c } else { b'?' })
        .take(width)
        .collect();
    b.resize(width, b' ');
    out.extend_from_slice(&b);
}

/// Channel labels: the names, made printable, at most 16 characters and
/// unique.
pub fn labels(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let clean: String = n
            .chars()
            .map(|c| if (' '..='~').contains(&c) { c } else { '_' })
            .collect();
        let mut l: String = clean.trim().chars().take(16).collect();
        if l.is_empty() || out.contains(&l) {
            let suffix = format!("~{}", i + 1);
            l = clean.chars().take(16 - suffix.len()).collect::<String>() + &suffix;
        }
        out.push(l);
    }
    out
}

/// The EDF+ prefiltering text of a filtered export (`HP:1Hz LP:45Hz N:50Hz`).
pub fn prefiltering(f: &crate::batch::FilterDescription) -> String {
    let mut parts = Vec::new();
    if let Some(h) = f.highpass_hz {
        parts.push(format!("HP:{h}Hz"));
    }
    if let Some(l) = f.lowpass_hz {
        parts.push(format!("LP:{l}Hz"));
    }
    if let Some(n) = f.notch_hz {
        parts.push(format!("N:{n}Hz"));
    }
    parts.join(" ")
}

#[allow(clippy::too_many_arguments)]
fn build_header(
    flavour: Flavour,
    layout: &super::Layout,
    scaling: &[Scaling],
    tl: &Timeline,
    start: time::OffsetDateTime,
    opts: &EdfOptions,
    records: u64,
    record_s: u32,
    spr: usize,
    annot_samples: usize,
    signal: super::Signal,
) -> Vec<u8> {
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    let ns = layout.channels.len() + 1;
    let mut h = Vec::with_capacity(256 * (ns + 1));
    match flavour {
        Flavour::Edf => field(&mut h, "0", 8),
        Flavour::Bdf => {
            h.push(0xFF);
            field(&mut h, "BIOSEMI", 7);
        }
    }
    let (y, m, d) = (start.year(), u8::from(start.month()), start.day());
    field(&mut h, opts.patient.as_deref().unwrap_or("X X X X"), 80);
    let recording = format!(
        "Startdate {d:02}-{}-{y:04} {}",
        MONTHS[usize::from(m).saturating_sub(1) % 12],
        opts.recording.as_deref().unwrap_or("X X X")
    );
    field(&mut h, &recording, 80);
    let yy = if (1985..=2084).contains(&y) {
        format!("{:02}", y % 100)
    } else {
        "yy".to_string()
    };
    field(&mut h, &format!("{d:02}.{m:02}.{yy}"), 8);
    field(
        &mut h,
        &format!(
            "{:02}.{:02}.{:02}",
            start.hour(),
            start.minute(),
            start.second()
        ),
        8,
    );
    field(&mut h, &(256 * (ns + 1)).to_string(), 8);
    field(
        &mut h,
        match flavour {
            Flavour::Edf => "EDF+C",
            Flavour::Bdf => "BDF+C",
        },
        44,
    );
    field(&mut h, &records.to_string(), 8);
    field(&mut h, &record_s.to_string(), 8);
    field(&mut h, &ns.to_string(), 4);
    let labels = labels(&layout.channels);
    let units = if layout.units == "µV" {
        "uV"
    } else {
        &layout.units
    };
    let pre = if signal == super::Signal::Filtered {
        prefiltering(&tl.filter)
    } else {
        String::new()
    };
    let (amin, amax) = flavour.annot_digital();
    // Field by field, every signal (EDF's header is column-major).
    for l in &labels {
        field(&mut h, l, 16);
    }
    // BDF+ names its annotation signal "BDF Annotations" (edflib insists).
    field(
        &mut h,
        match flavour {
            Flavour::Edf => "EDF Annotations",
            Flavour::Bdf => "BDF Annotations",
        },
        16,
    );
    for _ in 0..ns {
        field(&mut h, "", 80);
    }
    for _ in &labels {
        field(&mut h, units, 8);
    }
    field(&mut h, "", 8);
    for s in scaling {
        field(&mut h, &s.phys_min_text, 8);
    }
    field(&mut h, "-1", 8);
    for s in scaling {
        field(&mut h, &s.phys_max_text, 8);
    }
    field(&mut h, "1", 8);
    for s in scaling {
        field(&mut h, &s.dig_min.to_string(), 8);
    }
    field(&mut h, &amin.to_string(), 8);
    for s in scaling {
        field(&mut h, &s.dig_max.to_string(), 8);
    }
    field(&mut h, &amax.to_string(), 8);
    for _ in &labels {
        field(&mut h, &pre, 80);
    }
    field(&mut h, "", 80);
    for _ in &labels {
        field(&mut h, &spr.to_string(), 8);
    }
    field(&mut h, &annot_samples.to_string(), 8);
    for _ in 0..ns {
        field(&mut h, "", 32);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_fit_eight_characters_rounded_outwards() {
        assert_eq!(edf_number(-187500.0, false).unwrap().0, "-187500");
        assert_eq!(edf_number(12.3456789, true).unwrap().0, "12.34568");
        assert_eq!(edf_number(-12.3456789, false).unwrap().0, "-12.3457");
        assert_eq!(edf_number(-0.0000001, true).unwrap().0, "0");
        assert_eq!(edf_number(123456.78, true).unwrap().0, "123456.8");
        assert!(edf_number(1e12, true).is_none());
        let s = data_scaling(-3.25, 7.5, Flavour::Edf).unwrap();
        assert_eq!((s.phys_min, s.phys_max), (-3.25, 7.5));
        // Every value within half a step after a round trip.
        let q = s.quantiser();
        for v in [-3.25f32, 0.0, 1.2345, 7.5] {
            let d = q.q(v);
            let back = s.phys_min + f64::from(d - s.dig_min) * s.step();
            assert!(
                (back - f64::from(v)).abs() <= s.step() / 2.0 + 1e-12,
                "{v} {back}"
            );
        }
    }

    #[test]
    fn cyton_counts_round_trip_exactly() {
        use crate::source::openbci_cyton::{to_uv, SCALE_UV};
        let s = Scaling {
            phys_min_text: "-187500".into(),
            phys_max_text: "187500".into(),
            phys_min: -187500.0,
            phys_max: 187500.0,
            dig_min: -8_388_607,
            dig_max: 8_388_607,
            counts: Some(SCALE_UV),
        };
        let q = s.quantiser();
        for c in [-8_388_607, -1_234_567, -1, 0, 1, 77, 8_388_607] {
            assert_eq!(q.q(to_uv(c)), c);
        }
    }

    #[test]
    fn record_lengths_hold_whole_samples() {
        assert_eq!(record_length(250.0), Some((1, 250)));
        assert_eq!(record_length(127.5), Some((2, 255)));
        assert_eq!(record_length(1000.0 / 3.0), Some((3, 1000)));
        assert_eq!(record_length(100.123456), None);
        assert_eq!(record_length(0.0), None);
    }

    #[test]
    fn tals_spill_into_the_next_record_with_room() {
        let t = |r: u64, n: usize| (r, vec![b'x'; n]);
        let tals = vec![t(0, 10), t(0, 10), t(0, 10), t(2, 5)];
        let (a, spilled) = assign(&tals, 3, 32, 10).unwrap();
        let recs: Vec<u64> = a.iter().map(|x| x.0).collect();
        assert_eq!(recs, vec![0, 0, 1, 2]);
        assert_eq!(spilled, 1);
        assert!(assign(&tals, 1, 32, 10).is_none());
    }

    #[test]
    fn labels_are_printable_short_and_unique() {
        let l = labels(&[
            "Fp1".into(),
            "a very long channel name".into(),
            "a very long channel name too".into(),
            "µ".into(),
        ]);
        assert_eq!(l[0], "Fp1");
        assert_eq!(l[1], "a very long chan");
        assert_eq!(l[2], "a very long ch~3");
        assert_eq!(l[3], "_");
        assert_eq!(tal_number(0.5), "+0.5");
        assert_eq!(tal_number(3.0), "+3");
    }
}
