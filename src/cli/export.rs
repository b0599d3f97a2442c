//! `neuroedge journal export`: the command line's side of `src/export/`:
//! the arguments and their checks, which devices, and what is said on
//! stderr about the result. The formats themselves live in the library.

use crate::{open_keyring, usage, Fail};
use clap::Args;
use neuroedge::config::Config;
use neuroedge::export::{
    self as ex, bids, edf, output::OutFile, timefmt, DeviceInfo, Progress, Request, Signal,
};
use neuroedge::journal::Journal;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExportFormat {
    Csv,
    Xdf,
    Edf,
    Bdf,
    Bids,
}

impl ExportFormat {
    fn name(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Xdf => "xdf",
            ExportFormat::Edf => "edf",
            ExportFormat::Bdf => "bdf",
            ExportFormat::Bids => "bids",
        }
    }
}

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: ExportFormat,
    /// Device id; repeatable [default: every device for xdf and bids; for
    /// csv, edf and bdf the journal's only device]
    #[arg(long = "device", value_name = "ID")]
    devices: Vec<String>,
    /// First seq to export (default: the oldest kept).
    #[arg(long, value_name = "N", conflicts_with_all = ["from", "to"])]
    from_seq: Option<u64>,
    /// Last seq to export (default: the newest).
    #[arg(long, value_name = "N", conflicts_with_all = ["from", "to"])]
    to_seq: Option<u64>,
    /// Export samples from this time on: RFC 3339 (2026-03-01T10:00:00Z) or unix seconds.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Export samples up to this time: RFC 3339 or unix seconds.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Export the filtered signal instead of the raw one.
    #[arg(long)]
    filtered: bool,
    /// Output file (the dataset root for bids); csv without it writes to
    /// standard output. Never overwritten.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// BIDS subject label (bids only; letters and digits).
    #[arg(long, value_name = "LABEL")]
    subject: Option<String>,
    /// BIDS session label (bids only).
    #[arg(long, value_name = "LABEL")]
    session: Option<String>,
    /// BIDS task label (bids only).
    #[arg(long, value_name = "LABEL")]
    task: Option<String>,
    /// BIDS run index (bids only).
    #[arg(long, value_name = "N")]
    run: Option<u32>,
    /// EDF+ patient field, "code sex birthdate name" [default: X X X X] (edf, bdf, bids).
    #[arg(long, value_name = "TEXT")]
    patient: Option<String>,
    /// EDF+ recording field after the start date, "admincode technician equipment" [default: X X X].
    #[arg(long, value_name = "TEXT")]
    recording: Option<String>,
}

/// An export error with its exit code (2 usage, 1 runtime).
fn xf(e: ex::ExportError) -> Fail {
    Fail(e.exit_code(), e.to_string())
}

/// `journal export`: check the arguments, pick the devices, write the
/// format, say what was written.
pub(crate) fn export(
    j: &Journal,
    cfg: Option<&Config>,
    key_files: &[PathBuf],
    a: ExportArgs,
) -> Result<(), Fail> {
    let fmt = a.format;
    check_flags(&a)?;
    let (seqs, time) = range(&a)?;
    // Never overwrite (bids extends a dataset instead).
    if let (Some(out), true) = (&a.out, fmt != ExportFormat::Bids) {
        ex::output::refuse_existing(out).map_err(xf)?;
    }
    let keys = open_keyring(cfg, key_files)?;
    let devices = choose_devices(j, &a)?;
    ex::check_devices(j, &devices).map_err(xf)?;
    let infos: ex::DeviceInfos = cfg
        .map(|c| {
            c.devices
                .iter()
                .map(|d| (d.id.clone(), DeviceInfo::from_config(d)))
                .collect()
        })
        .unwrap_or_default();
    let req = Request {
        devices: devices.clone(),
        seqs,
        time,
        signal: if a.filtered {
            Signal::Filtered
        } else {
            Signal::Raw
        },
    };
    let total: u64 = devices
        .iter()
        .map(|d| j.count_rows(&req.selection(d)).unwrap_or(0))
        .sum();
    let shown = a
        .out
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "standard output".into());
    let mut progress = Progress::new(&format!("exporting to {shown}"), total);
    let edf_opts = edf::EdfOptions {
        patient: a.patient.clone(),
        recording: a.recording.clone(),
    };
    let out = a.out.as_deref();
    match fmt {
        ExportFormat::Csv => {
            let device = &devices[0];
            let summary = match out {
                Some(path) => {
                    let mut f = OutFile::create(path).map_err(xf)?;
                    let s = ex::csv::export_csv(j, &keys, &req, device, &mut f, &mut progress)
                        .map_err(xf)?;
                    f.commit().map_err(xf)?;
                    s
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::new(stdout.lock());
                    ex::csv::export_csv(j, &keys, &req, device, &mut w, &mut Progress::silent())
                        .map_err(xf)?
                }
            };
            print_summary(&summary, &shown);
        }
        ExportFormat::Xdf => {
            let path = required_out(out)?;
            let mut f = OutFile::create(path).map_err(xf)?;
            let s =
                ex::xdf::export_xdf(j, &keys, &req, &infos, &mut f, &mut progress).map_err(xf)?;
            f.commit().map_err(xf)?;
            for d in &s.devices {
                print_summary(d, &shown);
            }
            eprintln!("{} streams in {}", s.streams, path.display());
        }
        ExportFormat::Edf | ExportFormat::Bdf => {
            let path = required_out(out)?;
            let flavour = if fmt == ExportFormat::Edf {
                edf::Flavour::Edf
            } else {
                edf::Flavour::Bdf
            };
            let device = &devices[0];
            let info = infos.get(device).cloned().unwrap_or_default();
            let mut f = OutFile::create(path).map_err(xf)?;
            let r = edf::export_edf(
                j,
                &keys,
                &req,
                device,
                &info,
                flavour,
                &edf_opts,
                &mut f,
                &mut progress,
            )?;
            f.commit().map_err(xf)?;
            print_summary(&r.timeline.summary, &shown);
            describe_edf(&r);
        }
        ExportFormat::Bids => {
            let root = required_out(out)?;
            let opts = bids::BidsOptions {
                subject: a.subject.clone().unwrap_or_default(),
                session: a.session.clone(),
                task: a.task.clone().unwrap_or_default(),
                run: a.run,
                edf: edf_opts,
            };
            let s = bids::export_bids(j, &keys, &req, &infos, root, &opts, &mut progress)
                .map_err(xf)?;
            for r in &s.recordings {
                print_summary(&r.result.timeline.summary, &shown);
                describe_edf(&r.result);
                eprintln!("  -> {}", r.path.display());
                for (ch, why) in &r.bad_channels {
                    eprintln!("  channel {ch} marked bad: {why}");
                }
            }
            eprintln!(
                "{} dataset {}",
                if s.new_dataset { "new" } else { "extended" },
                s.root.display()
            );
        }
    }
    Ok(())
}

fn required_out(out: Option<&Path>) -> Result<&Path, Fail> {
    out.ok_or_else(|| usage("--out is required"))
}

/// Flags that belong to another format, and what a format needs.
fn check_flags(a: &ExportArgs) -> Result<(), Fail> {
    let fmt = a.format;
    let bids_flags =
        a.subject.is_some() || a.session.is_some() || a.task.is_some() || a.run.is_some();
    if fmt != ExportFormat::Bids && bids_flags {
        return Err(usage(
            "--subject, --session, --task and --run are for --format bids",
        ));
    }
    if matches!(fmt, ExportFormat::Csv | ExportFormat::Xdf)
        && (a.patient.is_some() || a.recording.is_some())
    {
        return Err(usage(
            "--patient and --recording are for --format edf, bdf and bids",
        ));
    }
    if fmt == ExportFormat::Bids && (a.subject.is_none() || a.task.is_none()) {
        return Err(usage(
            "--format bids needs --subject S and --task T (and optionally --session, --run)",
        ));
    }
    if fmt != ExportFormat::Csv && a.out.is_none() {
        return Err(usage(format!("--format {} needs --out PATH", fmt.name())));
    }
    if let Some(p) = &a.patient {
        edf::check_header_field("--patient", p, 80).map_err(xf)?;
    }
    if let Some(r) = &a.recording {
        edf::check_header_field("--recording", r, 58).map_err(xf)?;
    }
    Ok(())
}

/// The seq range and the time range (unix seconds) asked for.
type Range = (std::ops::RangeInclusive<u64>, Option<(f64, f64)>);

fn range(a: &ExportArgs) -> Result<Range, Fail> {
    let (from_seq, to_seq) = (a.from_seq.unwrap_or(0), a.to_seq.unwrap_or(u64::MAX));
    if to_seq < from_seq {
        return Err(usage("--to-seq is before --from-seq"));
    }
    let parse = |flag: &str, v: &Option<String>, dflt: f64| -> Result<f64, Fail> {
        v.as_deref()
            .map(|s| timefmt::parse_time_arg(s).map_err(|e| usage(format!("{flag}: {e}"))))
            .unwrap_or(Ok(dflt))
    };
    let time = match (&a.from, &a.to) {
        (None, None) => None,
        (f, t) => {
            let from = parse("--from", f, f64::NEG_INFINITY)?;
            let to = parse("--to", t, f64::INFINITY)?;
            if to < from {
                return Err(usage("--to is before --from"));
            }
            Some((from, to))
        }
    };
    Ok((from_seq..=to_seq, time))
}

/// The devices to export: those given, else every device (xdf, bids) or
/// the journal's only one; one-device formats refuse several.
fn choose_devices(j: &Journal, a: &ExportArgs) -> Result<Vec<String>, Fail> {
    let fmt = a.format;
    let known = j.device_ids()?;
    let devices = if a.devices.is_empty() {
        match fmt {
            ExportFormat::Xdf | ExportFormat::Bids => known.clone(),
            _ if known.len() == 1 => known.clone(),
            _ => {
                return Err(usage(format!(
                    "--format {} exports one device: pass --device ID (the journal has: {})",
                    fmt.name(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )))
            }
        }
    } else {
        let mut d = a.devices.clone();
        d.dedup();
        d
    };
    if devices.is_empty() {
        return Err(Fail(1, "the journal has no batches yet".into()));
    }
    if devices.len() > 1
        && matches!(
            fmt,
            ExportFormat::Csv | ExportFormat::Edf | ExportFormat::Bdf
        )
    {
        return Err(usage(format!(
            "--format {} exports one device at a time; you gave {} (use --format xdf or bids for several)",
            fmt.name(),
            devices.join(", ")
        )));
    }
    Ok(devices)
}

/// One device's summary line, and what could not be opened.
fn print_summary(s: &ex::ExportSummary, shown: &str) {
    eprintln!(
        "exported {} samples of {} from {} batches (seq {}..={}); {} gaps ({} samples missing), {} markers -> {shown}",
        s.samples,
        s.device,
        s.batches,
        s.first_seq.unwrap_or(0),
        s.last_seq.unwrap_or(0),
        s.gaps,
        s.missing_samples,
        s.markers,
    );
    for u in &s.unreadable {
        eprintln!(
            "warning: batch seq {} of {} ({} samples) could not be opened and is exported as a marked gap: {}",
            u.seq, u.device, u.n_samples, u.reason
        );
    }
    for n in &s.notes {
        eprintln!("note: {n}");
    }
}

/// An EDF/BDF file's records, start, padding and how exact its values are.
fn describe_edf(r: &edf::EdfResult) {
    let exact = r.scaling.iter().all(|s| s.counts.is_some());
    let worst = r.scaling.iter().map(|s| s.step()).fold(0.0, f64::max);
    eprintln!(
        "{} records of {} s ({} samples each), start {} UTC; {} padded samples; {}",
        r.records,
        r.record_s,
        r.samples_per_record,
        timefmt::rfc3339(r.timeline.t0),
        r.timeline.padded,
        if exact {
            "values are the device's ADC counts (exact)".to_string()
        } else {
            format!("quantised: largest step {worst:.6} uV (values within half a step)")
        }
    );
    let rail: u64 = r
        .scaling
        .iter()
        .zip(&r.timeline.stats)
        .filter(|(s, _)| s.counts.is_some())
        .map(|(_, st)| st.rail_counts)
        .sum();
    if rail > 0 {
        eprintln!(
            "note: {rail} samples at the ADC's negative rail (-8388608 counts) are written as -8388607 \
             (the symmetric range a BDF header states exactly); every other value is exact"
        );
    }
    if r.spilled > 0 {
        eprintln!(
            "note: {} annotations did not fit their data record and are stored in a later one (their onsets are exact)",
            r.spilled
        );
    }
}
