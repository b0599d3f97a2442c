//! `neuroedge journal export --format csv`: one device's batches as CSV, for analysis
//! tools that do not read CBOR envelopes.
//!
//! One row per sample: `sample` (index since the device's first sample:
//! a jump is a gap), `t_unix` (seconds, µs resolution), one column per
//! channel (raw or filtered µV, printed in the shortest form that reads
//! back to the same f32) and `marker` (markers of the batch, on the first
//! sample at or after their time; several joined by " | "). Batches are
//! read one at a time, in seq order, so memory does not grow with the
//! journal.

use super::{ExportError, ExportSummary, Layout, Progress, Request, Signal};
use crate::batch;
use crate::crypto::Keyring;
use crate::journal::{Journal, ReadBatch};
use std::io::Write;

/// A CSV field: quoted when it holds a separator, a quote or a line break.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// Write `device`'s batches that `req` selects to `out` as CSV. A batch
/// that does not open is a gap in the indices, marked on the next sample's
/// marker column and listed in the summary.
pub fn export_csv(
    j: &Journal,
    keys: &Keyring,
    req: &Request,
    device: &str,
    out: &mut dyn Write,
    progress: &mut Progress,
) -> Result<ExportSummary, ExportError> {
    let signal = req.signal;
    let mut summary = ExportSummary::new(device);
    let mut layout: Option<Layout> = None;
    let mut line = String::new();
    // Unreadable batches waiting to be marked on the next written sample.
    let mut pending_notes: Vec<String> = Vec::new();
    for item in j.read_batches(keys, req.selection(device)) {
        let (header, mut b) = match item? {
            ReadBatch::Unreadable(u) => {
                summary.saw_unreadable(&u);
                pending_notes.push(format!(
                    "BAD_ACQ_SKIP {} samples (batch seq {} unreadable: {})",
                    u.n_samples, u.seq, u.reason
                ));
                continue;
            }
            ReadBatch::Opened { header, data } => (header, data),
        };
        let seq = header.seq;
        progress.tick(summary.batches + 1);
        if b.timestamps.is_empty() {
            summary.saw_batch(seq);
            continue;
        }
        let this = Layout::of(&header, &b);
        match &layout {
            None => {
                write!(out, "sample,t_unix")?;
                for name in &b.channels {
                    write!(out, ",{}", csv_field(name))?;
                }
                writeln!(out, ",marker")?;
                layout = Some(this);
            }
            Some(expected) if *expected != this => {
                return Err(req.layout_error("csv", device, seq, &this, expected));
            }
            Some(_) => {}
        }
        // Notes of unreadable batches go first on this batch's first sample
        // (they are not markers of the recording: not counted as such).
        let notes = pending_notes.len() as u64;
        let t = b.timestamps[0];
        for (k, note) in pending_notes.drain(..).enumerate() {
            b.markers.insert(k, batch::Marker { t, value: note });
        }
        write_batch(&b, signal, out, &mut line, &mut summary)?;
        summary.markers -= notes;
        summary.saw_batch(seq);
    }
    out.flush()?;
    progress.finish();
    if summary.batches == 0 {
        return Err(ExportError::Empty(format!(
            "no batches of device {device:?} in {}",
            req.range_text()
        )));
    }
    Ok(summary)
}

fn write_batch(
    b: &batch::BatchData,
    signal: Signal,
    out: &mut dyn Write,
    line: &mut String,
    summary: &mut ExportSummary,
) -> Result<(), ExportError> {
    use std::fmt::Write as _;
    let ch = b.channels.len().max(1);
    let values = match signal {
        Signal::Raw => &b.raw,
        Signal::Filtered => &b.filtered,
    };
    // Markers on the first sample at or after their time (the last sample
    // for one after the batch's last stamp).
    let mut marks: Vec<(usize, &str)> = b
        .markers
        .iter()
        .map(|m| {
            let at = b.timestamps.partition_point(|&t| t < m.t);
            (
                at.min(b.timestamps.len().saturating_sub(1)),
                m.value.as_str(),
            )
        })
        .collect();
    marks.sort_by_key(|m| m.0);
    summary.markers += marks.len() as u64;
    let mut marks = marks.into_iter().peekable();
    summary.gaps += b.gaps.iter().filter(|g| g.missing > 0).count() as u64;
    summary.missing_samples += b.gaps.iter().map(|g| g.missing).sum::<u64>();
    // A gap {before_sample: i, missing: m}: indices i-m .. i-1 have no
    // sample and the next sample is i (batch-format.md).
    let indices = b.sample_indices();
    for (i, ((t, frame), index)) in b
        .timestamps
        .iter()
        .zip(values.chunks(ch))
        .zip(indices)
        .enumerate()
    {
        line.clear();
        let _ = write!(line, "{index},{t:.6}");
        for v in frame {
            let _ = write!(line, ",{v}");
        }
        line.push(',');
        let marker_col = line.len();
        let mut first = true;
        while let Some((_, text)) = marks.next_if(|m| m.0 == i) {
            if !first {
                line.push_str(" | ");
            }
            first = false;
            line.push_str(text);
        }
        if !first {
            // Quote the marker column if it needs it.
            let quoted = csv_field(&line[marker_col..]).into_owned();
            line.truncate(marker_col);
            line.push_str(&quoted);
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
        summary.samples += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::batch::{BatchData, Gap, GapCause, Marker};

    fn rows(b: &BatchData, signal: Signal) -> (Vec<String>, ExportSummary) {
        let mut out = Vec::new();
        let mut summary = ExportSummary::default();
        write_batch(b, signal, &mut out, &mut String::new(), &mut summary).unwrap();
        let text = String::from_utf8(out).unwrap();
        (text.lines().map(str::to_string).collect(), summary)
    }

    #[test]
    fn indices_skip_gaps_and_markers_sit_on_their_sample() {
        // first_sample 10 after a leading gap of 2 (already behind it); an
        // inner gap {before 15, missing 3}: indices 12, 13, 14 have no
        // sample, the third frame is 15.
        let b = BatchData {
            channels: vec!["a".into(), "b".into()],
            first_sample: 10,
            timestamps: vec![1.0, 1.004, 1.008, 1.020, 1.024],
            raw: vec![0.5, -1.25, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            filtered: vec![0.0; 10],
            gaps: vec![
                Gap {
                    before_sample: 10,
                    missing: 2,
                    cause: GapCause::Device,
                },
                Gap {
                    before_sample: 15,
                    missing: 3,
                    cause: GapCause::Device,
                },
            ],
            markers: vec![
                Marker {
                    t: 1.003,
                    value: "eyes, closed".into(),
                },
                Marker {
                    t: 1.004,
                    value: "x".into(),
                },
                Marker {
                    t: 9.0,
                    value: "late".into(),
                },
            ],
            ..Default::default()
        };
        let (lines, summary) = rows(&b, Signal::Raw);
        let index: Vec<&str> = lines.iter().map(|l| l.split(',').next().unwrap()).collect();
        assert_eq!(index, ["10", "11", "15", "16", "17"]);
        assert_eq!(lines[0], "10,1.000000,0.5,-1.25,");
        assert_eq!(lines[1], "11,1.004000,1,2,\"eyes, closed | x\"");
        assert_eq!(lines[4], "17,1.024000,7,8,late");
        assert_eq!(summary.gaps, 2);
        assert_eq!(summary.missing_samples, 5);
        assert_eq!(summary.markers, 3);
        assert_eq!(summary.samples, 5);
        let (lines, _) = rows(&b, Signal::Filtered);
        assert!(lines[0].starts_with("10,1.000000,0,0,"));
    }

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("Fz"), "Fz");
        assert_eq!(csv_field("eyes, closed"), "\"eyes, closed\"");
        assert_eq!(csv_field("say \"go\""), "\"say \"\"go\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
