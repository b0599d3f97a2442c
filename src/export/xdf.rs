//! `--format xdf`: every selected device in one XDF 1.0 file (the format of
//! LabRecorder, read by pyxdf, EEGLAB, MNE via pyxdf, SigViewer).
//!
//! Layout (XDF 1.0 specification, sccn/xdf wiki): the magic `XDF:`, then
//! chunks `[NumLengthBytes][Length][Tag u16][Content]` where Length counts
//! the tag and the content:
//!
//! - FileHeader (1): `<info><version>1.0</version>...`;
//! - per device a float32 stream (name = device id, type `EEG`,
//!   `desc/channels/channel/{label,unit,type}`, `desc/acquisition`,
//!   `desc/neuroedge` with site/node/device ids and the signal, `desc/filter`
//!   with `--filtered`) and a string stream `<id>-markers` (type
//!   `Markers`), each announced by a StreamHeader (2) when the device's
//!   first batch comes;
//! - one ClockOffset (4) per stream, value 0: the timestamps are already
//!   unix seconds on one clock (pyxdf's clock synchronisation then adds
//!   exactly 0, and it warns when a stream has none);
//! - Samples (3): one chunk per batch, every sample with its explicit f64
//!   timestamp, bit for bit the journal's; marker chunks carry the batch's
//!   markers and, as `BAD_ACQ_SKIP <n> samples (...)` markers, its gaps and
//!   the batches that could not be opened;
//! - Boundary (5) chunks every 10 s of recording, so that a reader can
//!   resynchronise in a damaged file;
//! - StreamFooter (6) per stream at the end: first/last timestamp,
//!   sample_count, the clock offset and the gap list.
//!
//! Devices are interleaved in time order: each device is read by its own
//! iterator over the journal reader and the batch that starts earliest is
//! written next, so memory holds one batch per device whatever the
//! journal's size (plus the gap lists of the footers).
//!
//! A device whose channel layout or rate changes within the selection is
//! split: from the changing batch on, its samples go to a new stream named
//! `<id>.seq<N>` (N = the first seq of the part).

use super::{
    gap_cause_text, gap_onset, gap_text, unreadable_text, DeviceInfos, ExportError, ExportSummary,
    Layout, Progress, Request, Signal,
};
use crate::batch::{BatchData, BatchHeader, FilterDescription};
use crate::crypto::Keyring;
use crate::journal::{Journal, ReadBatch};
use std::fmt::Write as _;
use std::io::Write;

const TAG_FILE_HEADER: u16 = 1;
const TAG_STREAM_HEADER: u16 = 2;
const TAG_SAMPLES: u16 = 3;
const TAG_CLOCK_OFFSET: u16 = 4;
const TAG_BOUNDARY: u16 = 5;
const TAG_STREAM_FOOTER: u16 = 6;

/// The Boundary chunk's content (XDF 1.0 specification).
pub const BOUNDARY_UUID: [u8; 16] = [
    0x43, 0xA5, 0x46, 0xDC, 0xCB, 0xF5, 0x41, 0x0F, 0xB3, 0x0E, 0xD5, 0x46, 0x73, 0x83, 0xCB, 0xE4,
];

/// Seconds of recording between Boundary chunks (LabRecorder's habit).
const BOUNDARY_EVERY_S: f64 = 10.0;

/// XML text with the five special characters escaped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Append `[NumBytes][value]`: XDF's variable-length integer.
fn put_varlen(buf: &mut Vec<u8>, v: u64) {
    if v <= u8::MAX as u64 {
        buf.push(1);
        buf.push(v as u8);
    } else if v <= u32::MAX as u64 {
        buf.push(4);
        buf.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        buf.push(8);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// Writes chunks, counting bytes.
struct Chunks<'w> {
    w: &'w mut dyn Write,
    head: Vec<u8>,
}

impl Chunks<'_> {
    fn chunk(&mut self, tag: u16, content: &[u8]) -> std::io::Result<()> {
        self.head.clear();
        put_varlen(&mut self.head, content.len() as u64 + 2);
        self.head.extend_from_slice(&tag.to_le_bytes());
        self.w.write_all(&self.head)?;
        self.w.write_all(content)
    }
}

/// A gap as listed in a stream footer.
#[derive(Debug, Clone)]
struct FooterGap {
    /// Index of the first sample after the gap (`before_sample`).
    before_sample: u64,
    missing: u64,
    cause: String,
    /// Estimated time of the first missing sample (unix s).
    t: f64,
}

/// One stream's running totals, for its footer.
#[derive(Debug)]
struct StreamStats {
    id: u32,
    first: Option<f64>,
    last: f64,
    count: u64,
    clock_time: f64,
    gaps: Vec<FooterGap>,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
}

impl StreamStats {
    fn new(id: u32, clock_time: f64) -> StreamStats {
        StreamStats {
            id,
            first: None,
            last: 0.0,
            count: 0,
            clock_time,
            gaps: Vec::new(),
            first_seq: None,
            last_seq: None,
        }
    }

    fn saw(&mut self, stamps: &[f64]) {
        if let (Some(&a), Some(&b)) = (stamps.first(), stamps.last()) {
            self.first.get_or_insert(a);
            self.last = b;
            self.count += stamps.len() as u64;
        }
    }

    fn seq(&mut self, seq: u64) {
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
    }

    fn footer_xml(&self) -> String {
        let mut x = String::from("<?xml version=\"1.0\"?><info>");
        let _ = write!(
            x,
            "<first_timestamp>{}</first_timestamp><last_timestamp>{}</last_timestamp>\
             <sample_count>{}</sample_count>\
             <clock_offsets><offset><time>{}</time><value>0</value></offset></clock_offsets>",
            self.first.unwrap_or(self.clock_time),
            if self.count > 0 {
                self.last
            } else {
                self.clock_time
            },
            self.count,
            self.clock_time
        );
        x.push_str("<gaps>");
        for g in &self.gaps {
            let _ = write!(
                x,
                "<gap><before_sample>{}</before_sample><missing>{}</missing><t>{}</t><cause>{}</cause></gap>",
                g.before_sample,
                g.missing,
                g.t,
                esc(&g.cause)
            );
        }
        x.push_str("</gaps>");
        if let (Some(a), Some(b)) = (self.first_seq, self.last_seq) {
            let _ = write!(
                x,
                "<neuroedge><first_seq>{a}</first_seq><last_seq>{b}</last_seq></neuroedge>"
            );
        }
        x.push_str("</info>");
        x
    }
}

/// The EEG stream a device currently writes to.
struct EegPart {
    layout: Layout,
    stats: StreamStats,
}

/// One device being merged.
struct DeviceRun<'j> {
    id: String,
    iter: Box<dyn Iterator<Item = Result<ReadBatch, crate::journal::JournalError>> + 'j>,
    next: Option<ReadBatch>,
    part: Option<EegPart>,
    done_parts: Vec<StreamStats>,
    markers: Option<StreamStats>,
    /// Gaps seen before the first EEG stream exists.
    early_gaps: Vec<FooterGap>,
    summary: ExportSummary,
}

impl DeviceRun<'_> {
    fn advance(&mut self) -> Result<(), ExportError> {
        self.next = self.iter.next().transpose()?;
        Ok(())
    }

    /// Time the pending batch starts (it is written in this order).
    fn next_time(&self) -> Option<f64> {
        self.next.as_ref().map(|b| match b {
            ReadBatch::Opened { header, data } => {
                data.timestamps.first().copied().unwrap_or(header.t_start)
            }
            ReadBatch::Unreadable(u) => u.t_start,
        })
    }
}

/// The unit name XDF (and the LSL outlets) write for a device's `units`.
pub(crate) fn unit_name(units: &str) -> &str {
    match units {
        "uV" | "µV" => "microvolts",
        "mV" => "millivolts",
        "V" => "volts",
        other => other,
    }
}

fn filter_xml(f: &FilterDescription) -> String {
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let optu = |v: Option<u32>| v.map(|x| x.to_string()).unwrap_or_default();
    format!(
        "<filter><design>butterworth-sos</design><highpass_hz>{}</highpass_hz><lowpass_hz>{}</lowpass_hz>\
         <order>{}</order><notch_hz>{}</notch_hz><notch_harmonics>{}</notch_harmonics>\
         <causal>true</causal></filter>",
        opt(f.highpass_hz),
        opt(f.lowpass_hz),
        optu(f.order),
        opt(f.notch_hz),
        optu(f.notch_harmonics)
    )
}

/// The StreamHeader XML of a device's EEG stream.
fn eeg_header_xml(
    name: &str,
    header: &BatchHeader,
    b: &BatchData,
    signal: Signal,
    info: Option<&super::DeviceInfo>,
) -> String {
    let mut x = String::from("<?xml version=\"1.0\"?><info>");
    let _ = write!(
        x,
        "<name>{}</name><type>EEG</type><channel_count>{}</channel_count>\
         <nominal_srate>{}</nominal_srate><channel_format>float32</channel_format>\
         <source_id>{}</source_id><created_at>{}</created_at><hostname>{}</hostname><desc><channels>",
        esc(name),
        b.channels.len(),
        header.sample_rate,
        esc(&format!("{}/{}", header.node_id, header.device_id)),
        b.timestamps.first().copied().unwrap_or(header.t_start),
        esc(&header.node_id),
    );
    let unit = esc(unit_name(&b.units));
    for c in &b.channels {
        let _ = write!(
            x,
            "<channel><label>{}</label><unit>{unit}</unit><type>EEG</type></channel>",
            esc(c)
        );
    }
    x.push_str("</channels><acquisition>");
    if let Some(i) = info {
        if let Some(m) = &i.manufacturer {
            let _ = write!(x, "<manufacturer>{}</manufacturer>", esc(m));
        }
        if let Some(m) = &i.model {
            let _ = write!(x, "<model>{}</model>", esc(m));
        }
        if let Some(d) = &i.driver {
            let _ = write!(x, "<driver>{}</driver>", esc(d));
        }
    }
    let _ = write!(
        x,
        "<software>neuroedge</software><software_version>{}</software_version></acquisition>",
        crate::daemon::VERSION
    );
    let _ = write!(
        x,
        "<neuroedge><site_id>{}</site_id><node_id>{}</node_id><device_id>{}</device_id>\
         <signal>{}</signal><units>{}</units><first_seq>{}</first_seq></neuroedge>",
        esc(&header.site_id),
        esc(&header.node_id),
        esc(&header.device_id),
        signal.as_str(),
        esc(&b.units),
        header.seq
    );
    if signal == Signal::Filtered {
        x.push_str(&filter_xml(&b.filter));
    }
    x.push_str("</desc></info>");
    x
}

fn marker_header_xml(device: &str, node: Option<&str>, t: f64) -> String {
    let node = node.unwrap_or("");
    format!(
        "<?xml version=\"1.0\"?><info><name>{}</name><type>Markers</type><channel_count>1</channel_count>\
         <nominal_srate>0</nominal_srate><channel_format>string</channel_format>\
         <source_id>{}</source_id><created_at>{t}</created_at><hostname>{}</hostname>\
         <desc><channels><channel><label>marker</label><type>Marker</type></channel></channels>\
         <neuroedge><device_id>{}</device_id></neuroedge></desc></info>",
        esc(&format!("{device}-markers")),
        esc(&format!("{node}/{device}/markers")),
        esc(node),
        esc(device),
    )
}

/// Totals of an XDF export.
#[derive(Debug, Default)]
pub struct XdfSummary {
    pub devices: Vec<ExportSummary>,
    pub streams: u32,
}

/// Write the devices of `req` to `out` as XDF.
pub fn export_xdf(
    j: &Journal,
    keys: &Keyring,
    req: &Request,
    infos: &DeviceInfos,
    out: &mut dyn Write,
    progress: &mut Progress,
) -> Result<XdfSummary, ExportError> {
    let mut ch = Chunks {
        w: out,
        head: Vec::with_capacity(16),
    };
    ch.w.write_all(b"XDF:")?;
    let file_header = format!(
        "<?xml version=\"1.0\"?><info><version>1.0</version><writer>neuroedge {}</writer>\
         <datetime>{}</datetime></info>",
        crate::daemon::VERSION,
        super::timefmt::rfc3339_now()
    );
    ch.chunk(TAG_FILE_HEADER, file_header.as_bytes())?;

    let mut runs: Vec<DeviceRun<'_>> = Vec::new();
    for d in &req.devices {
        let mut r = DeviceRun {
            id: d.clone(),
            iter: Box::new(j.read_batches(keys, req.selection(d))),
            next: None,
            part: None,
            done_parts: Vec::new(),
            markers: None,
            early_gaps: Vec::new(),
            summary: ExportSummary::new(d),
        };
        r.advance()?;
        runs.push(r);
    }
    let mut next_id: u32 = 1;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut last_boundary = f64::NEG_INFINITY;
    let mut done: u64 = 0;
    // The device whose pending batch starts first, until none has one.
    let earliest = |runs: &[DeviceRun<'_>]| {
        (0..runs.len())
            .filter(|&i| runs[i].next.is_some())
            .min_by(|&a, &b| {
                let (ta, tb) = (runs[a].next_time(), runs[b].next_time());
                ta.partial_cmp(&tb).unwrap_or(std::cmp::Ordering::Equal)
            })
    };
    while let Some(k) = earliest(&runs) {
        let run = &mut runs[k];
        let Some(item) = run.next.take() else {
            break;
        };
        let t_now = run.next_time_of(&item);
        if t_now - last_boundary >= BOUNDARY_EVERY_S {
            ch.chunk(TAG_BOUNDARY, &BOUNDARY_UUID)?;
            last_boundary = t_now;
        }
        write_batch(
            &mut ch,
            run,
            item,
            req.signal,
            infos,
            &mut next_id,
            &mut buf,
        )?;
        run.advance()?;
        done += 1;
        progress.tick(done);
    }
    // Footers.
    let mut streams = 0;
    for run in &mut runs {
        if let Some(p) = run.part.take() {
            run.done_parts.push(p.stats);
        }
        let mut all: Vec<&StreamStats> = run.done_parts.iter().collect();
        if let Some(m) = &run.markers {
            all.push(m);
        }
        for s in all {
            let xml = s.footer_xml();
            buf.clear();
            buf.extend_from_slice(&s.id.to_le_bytes());
            buf.extend_from_slice(xml.as_bytes());
            ch.chunk(TAG_STREAM_FOOTER, &buf)?;
            streams += 1;
        }
    }
    ch.w.flush()?;
    progress.finish();
    let devices: Vec<ExportSummary> = runs.into_iter().map(|r| r.summary).collect();
    if devices.iter().all(|s| s.batches == 0) {
        return Err(ExportError::Empty(format!(
            "no batches of {} in {}",
            req.devices.join(", "),
            req.range_text()
        )));
    }
    Ok(XdfSummary { devices, streams })
}

impl DeviceRun<'_> {
    fn next_time_of(&self, b: &ReadBatch) -> f64 {
        match b {
            ReadBatch::Opened { header, data } => {
                data.timestamps.first().copied().unwrap_or(header.t_start)
            }
            ReadBatch::Unreadable(u) => u.t_start,
        }
    }

    /// The marker stream, announced at the device's first batch.
    fn marker_stream(
        &mut self,
        ch: &mut Chunks<'_>,
        next_id: &mut u32,
        node: Option<&str>,
        t: f64,
    ) -> std::io::Result<u32> {
        if let Some(m) = &self.markers {
            return Ok(m.id);
        }
        let id = *next_id;
        *next_id += 1;
        let xml = marker_header_xml(&self.id, node, t);
        let mut c = id.to_le_bytes().to_vec();
        c.extend_from_slice(xml.as_bytes());
        ch.chunk(TAG_STREAM_HEADER, &c)?;
        clock_offset(ch, id, t)?;
        self.markers = Some(StreamStats::new(id, t));
        Ok(id)
    }
}

fn clock_offset(ch: &mut Chunks<'_>, id: u32, t: f64) -> std::io::Result<()> {
    let mut c = [0u8; 20];
    c[..4].copy_from_slice(&id.to_le_bytes());
    c[4..12].copy_from_slice(&t.to_le_bytes());
    c[12..].copy_from_slice(&0.0f64.to_le_bytes());
    ch.chunk(TAG_CLOCK_OFFSET, &c)
}

/// Write one marker chunk: `(t, text)` in time order.
fn write_markers(
    ch: &mut Chunks<'_>,
    buf: &mut Vec<u8>,
    id: u32,
    marks: &mut [(f64, String)],
    stats: &mut StreamStats,
) -> std::io::Result<()> {
    if marks.is_empty() {
        return Ok(());
    }
    marks.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    buf.clear();
    buf.extend_from_slice(&id.to_le_bytes());
    put_varlen(buf, marks.len() as u64);
    for (t, text) in marks.iter() {
        buf.push(8);
        buf.extend_from_slice(&t.to_le_bytes());
        put_varlen(buf, text.len() as u64);
        buf.extend_from_slice(text.as_bytes());
        stats.first.get_or_insert(*t);
        stats.last = *t;
        stats.count += 1;
    }
    ch.chunk(TAG_SAMPLES, buf)
}

fn write_batch(
    ch: &mut Chunks<'_>,
    run: &mut DeviceRun<'_>,
    item: ReadBatch,
    signal: Signal,
    infos: &DeviceInfos,
    next_id: &mut u32,
    buf: &mut Vec<u8>,
) -> Result<(), ExportError> {
    match item {
        ReadBatch::Unreadable(u) => {
            run.summary.saw_unreadable(&u);
            let mid = run.marker_stream(ch, next_id, None, u.t_start)?;
            let gap = FooterGap {
                before_sample: u.first_sample + u.n_samples,
                missing: u.n_samples,
                cause: format!("batch seq {} unreadable: {}", u.seq, u.reason),
                t: u.t_start,
            };
            match &mut run.part {
                Some(p) => p.stats.gaps.push(gap),
                None => run.early_gaps.push(gap),
            }
            let mut marks = vec![(u.t_start, unreadable_text(&u))];
            if let Some(m) = run.markers.as_mut() {
                m.seq(u.seq);
                write_markers(ch, buf, mid, &mut marks, m)?;
            }
        }
        ReadBatch::Opened { header, data } => {
            run.summary.saw_opened(header.seq, &data);
            let t0 = data.timestamps.first().copied().unwrap_or(header.t_start);
            let mid = run.marker_stream(ch, next_id, Some(&header.node_id), t0)?;
            if let Some(m) = run.markers.as_mut() {
                m.seq(header.seq);
            }
            let n = data.n_samples();
            if n > 0 {
                let layout = Layout::of(&header, &data);
                let changed = run.part.as_ref().is_some_and(|p| p.layout != layout);
                if run.part.is_none() || changed {
                    let name = if changed || !run.done_parts.is_empty() {
                        format!("{}.seq{}", run.id, header.seq)
                    } else {
                        run.id.clone()
                    };
                    if let Some(old) = run.part.take() {
                        run.summary.notes.push(format!(
                            "device {}: from seq {} on it has {} (before: {}); written as a second \
                             stream named {name:?}",
                            run.id, header.seq, layout, old.layout
                        ));
                        run.done_parts.push(old.stats);
                    }
                    let id = *next_id;
                    *next_id += 1;
                    let xml =
                        eeg_header_xml(&name, &header, &data, signal, infos.get(run.id.as_str()));
                    buf.clear();
                    buf.extend_from_slice(&id.to_le_bytes());
                    buf.extend_from_slice(xml.as_bytes());
                    ch.chunk(TAG_STREAM_HEADER, buf)?;
                    clock_offset(ch, id, t0)?;
                    let mut stats = StreamStats::new(id, t0);
                    stats.gaps.append(&mut run.early_gaps);
                    run.part = Some(EegPart { layout, stats });
                }
            }
            let mut marks: Vec<(f64, String)> = data
                .markers
                .iter()
                .map(|m| (m.t, m.value.clone()))
                .collect();
            if let Some(p) = run.part.as_mut() {
                let idx = data.sample_indices();
                for g in data.gaps.iter().filter(|g| g.missing > 0) {
                    // The first sample after the gap is in this batch.
                    let k = idx.partition_point(|&i| i < g.before_sample);
                    let t_after = data.timestamps.get(k).copied().unwrap_or(t0);
                    let t = gap_onset(&data, g, t_after);
                    let cause = gap_cause_text(g.cause);
                    p.stats.gaps.push(FooterGap {
                        before_sample: g.before_sample,
                        missing: g.missing,
                        cause: cause.to_string(),
                        t,
                    });
                    marks.push((t, gap_text(g.missing, cause)));
                }
                if n > 0 {
                    p.stats.seq(header.seq);
                    let values = signal.values(&data);
                    let chn = data.channels.len();
                    buf.clear();
                    buf.extend_from_slice(&p.stats.id.to_le_bytes());
                    put_varlen(buf, n as u64);
                    buf.reserve(n * (9 + 4 * chn));
                    for (t, frame) in data.timestamps.iter().zip(values.chunks_exact(chn.max(1))) {
                        buf.push(8);
                        buf.extend_from_slice(&t.to_le_bytes());
                        for v in frame {
                            buf.extend_from_slice(&v.to_le_bytes());
                        }
                    }
                    ch.chunk(TAG_SAMPLES, buf)?;
                    p.stats.saw(&data.timestamps);
                }
            }
            if let Some(m) = run.markers.as_mut() {
                write_markers(ch, buf, mid, &mut marks, m)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varlen_ints_use_1_4_or_8_bytes() {
        let mut b = Vec::new();
        put_varlen(&mut b, 7);
        put_varlen(&mut b, 300);
        put_varlen(&mut b, 1 << 40);
        assert_eq!(b[..2], [1, 7]);
        assert_eq!(b[2..7], [4, 44, 1, 0, 0]);
        assert_eq!(b[7], 8);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 1 << 40);
    }

    #[test]
    fn xml_text_is_escaped() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(esc("x\u{1}y"), "x y");
    }

    #[test]
    fn chunk_length_counts_tag_and_content() {
        let mut out = Vec::new();
        let mut c = Chunks {
            w: &mut out,
            head: Vec::new(),
        };
        c.chunk(TAG_BOUNDARY, &BOUNDARY_UUID).unwrap();
        assert_eq!(out[..4], [1, 18, 5, 0]);
        assert_eq!(out[4..], BOUNDARY_UUID);
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use crate::batch::{seal, BatchData, SealParams};
    use crate::config::SyncMode;
    use crate::crypto::BatchKey;

    fn batch(ch: usize, first: u64, t0: f64) -> BatchData {
        BatchData {
            device_id: "d".into(),
            sample_rate: 10.0,
            channels: (0..ch).map(|c| format!("c{c}")).collect(),
            units: "uV".into(),
            first_sample: first,
            timestamps: (0..10).map(|i| t0 + f64::from(i) / 10.0).collect(),
            raw: vec![1.5; 10 * ch],
            filtered: vec![0.0; 10 * ch],
            ..Default::default()
        }
    }

    /// (tag, stream id, XML or content) of every chunk.
    fn chunks(b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        assert_eq!(&b[..4], b"XDF:");
        let mut i = 4;
        let mut out = Vec::new();
        while i < b.len() {
            let nb = b[i] as usize;
            let len = match nb {
                1 => b[i + 1] as usize,
                4 => u32::from_le_bytes(b[i + 1..i + 5].try_into().unwrap()) as usize,
                _ => u64::from_le_bytes(b[i + 1..i + 9].try_into().unwrap()) as usize,
            };
            i += 1 + nb;
            let tag = u16::from_le_bytes([b[i], b[i + 1]]);
            out.push((tag, b[i + 2..i + len].to_vec()));
            i += len;
        }
        out
    }

    #[test]
    fn a_changed_layout_starts_a_second_stream_and_all_get_footers() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(&d.path().join("j.db"), SyncMode::Normal).unwrap();
        let key = BatchKey::from_bytes(&[3; 32]);
        for (seq, b) in [(0, batch(2, 0, 100.0)), (1, batch(3, 10, 101.0))] {
            let p = SealParams {
                batch_id: format!("b{seq}"),
                site_id: "s",
                node_id: "n",
                seq,
                created_at: 0.0,
                compress: true,
                format: crate::batch::BatchFormat::V2,
            };
            let (env, h) = seal(&key, &p, &b).unwrap();
            j.insert_row_for_tests(&h, &env);
        }
        let keys = Keyring::new(BatchKey::from_bytes(&[3; 32]));
        let req = Request {
            devices: vec!["d".into()],
            seqs: 0..=u64::MAX,
            time: None,
            signal: Signal::Raw,
        };
        let mut out = Vec::new();
        let s = export_xdf(
            &j,
            &keys,
            &req,
            &DeviceInfos::new(),
            &mut out,
            &mut Progress::silent(),
        )
        .unwrap();
        assert_eq!(s.streams, 3, "markers, d, d.seq1");
        assert!(s.devices[0].notes[0].contains("from seq 1 on"));
        let c = chunks(&out);
        let headers: Vec<String> = c
            .iter()
            .filter(|x| x.0 == TAG_STREAM_HEADER)
            .map(|x| String::from_utf8_lossy(&x.1[4..]).into_owned())
            .collect();
        assert!(headers[1].contains("<name>d</name>") && headers[1].contains("<channel_count>2<"));
        assert!(
            headers[2].contains("<name>d.seq1</name>") && headers[2].contains("<channel_count>3<")
        );
        assert_eq!(c.iter().filter(|x| x.0 == TAG_STREAM_FOOTER).count(), 3);
        assert_eq!(c.iter().filter(|x| x.0 == TAG_CLOCK_OFFSET).count(), 3);
        assert_eq!(c.iter().filter(|x| x.0 == TAG_SAMPLES).count(), 2);
        assert_eq!(c[1].0, TAG_BOUNDARY);
    }
}
