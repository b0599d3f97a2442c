//! `--format bids`: an EEG-BIDS dataset (BIDS 1.10, EEG extension).
//!
//! `--out` is the dataset root. It holds `dataset_description.json`
//! (`Name`, `BIDSVersion`, `DatasetType: raw`, `GeneratedBy: neuroedge`),
//! `participants.tsv` + `.json`, a short `README` when there is none, and
//! per recording `sub-<S>/[ses-<S>/]eeg/`:
//!
//! - the recording: BDF (raw, 24-bit; a Cyton's counts exact) or EDF when
//!   `--filtered` ([`super::edf`]);
//! - `_eeg.json`: TaskName, SamplingFrequency, channel counts,
//!   PowerLineFrequency (the device's notch setting, else `n/a`),
//!   SoftwareFilters (the filter chain when `--filtered`, else `n/a`),
//!   RecordingDuration (the file's), RecordingType `continuous`,
//!   EEGReference `n/a` (the journal does not know it);
//! - `_channels.tsv`: name, type `EEG`, units, status (`bad` when the raw
//!   signal was flat or railed over the recording, or its filtered RMS
//!   noisy on average, with the reason in status_description);
//! - `_events.tsv` (+ `.json`): markers (trial_type = the marker text) and
//!   padded gaps (trial_type `BAD_ACQ_SKIP` / `BAD_PADDING`, value = the
//!   full description) with onset, duration and sample.
//!
//! Several devices in one export become one recording each, told apart by
//! `acq-<device id>` (letters and digits only). An existing dataset is
//! extended: participants.tsv gains the subject's row, dataset_description
//! keeps what it has and gains `GeneratedBy: neuroedge` if missing; a
//! recording of the same subject/session/task/run is refused. Every new
//! file is written under a temporary name and renamed at the end; on
//! failure the files and folders this export created are removed.

use super::edf::{export_edf, labels, EdfOptions, EdfResult, Flavour};
use super::output::{CreatedDirs, OutFile};
use super::timeline::AnnotationKind;
use super::{io_at, DeviceInfo, DeviceInfos, ExportError, Progress, Request, Signal};
use crate::crypto::Keyring;
use crate::journal::Journal;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const BIDS_VERSION: &str = "1.10.0";

/// The BIDS entities of an export.
#[derive(Debug, Clone, Default)]
pub struct BidsOptions {
    pub subject: String,
    pub session: Option<String>,
    pub task: String,
    pub run: Option<u32>,
    pub edf: EdfOptions,
}

/// A BIDS label: letters and digits only.
pub fn check_label(flag: &str, s: &str) -> Result<(), ExportError> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ExportError::Usage(format!(
            "{flag} {s:?}: a BIDS label has letters and digits only (e.g. 01, rest, pre)"
        )));
    }
    Ok(())
}

/// A device id as an `acq` label.
fn acq_label(device: &str) -> String {
    device
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// One recording written.
#[derive(Debug, Clone)]
pub struct BidsRecording {
    pub device: String,
    pub path: PathBuf,
    pub result: EdfResult,
    pub bad_channels: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct BidsSummary {
    pub root: PathBuf,
    pub new_dataset: bool,
    pub recordings: Vec<BidsRecording>,
}

/// Entities of a file name (`sub-01_ses-a_task-rest_run-1_eeg.bdf`).
fn entities(name: &str) -> Vec<(String, String)> {
    let stem = name.split('.').next().unwrap_or("");
    stem.split('_')
        .filter_map(|p| p.split_once('-'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tsv_clean(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if t.trim().is_empty() {
        "n/a".into()
    } else {
        t
    }
}

/// Export `req`'s devices into the BIDS dataset at `root`.
pub fn export_bids(
    j: &Journal,
    keys: &Keyring,
    req: &Request,
    infos: &DeviceInfos,
    root: &Path,
    opts: &BidsOptions,
    progress: &mut Progress,
) -> Result<BidsSummary, ExportError> {
    check_label("--subject", &opts.subject)?;
    check_label("--task", &opts.task)?;
    if let Some(s) = &opts.session {
        check_label("--session", s)?;
    }
    let description = root.join("dataset_description.json");
    let new_dataset = check_dataset_root(root, &description)?;
    // Entities and paths.
    let sub = format!("sub-{}", opts.subject);
    let mut eeg_dir = root.join(&sub);
    let mut base = sub.clone();
    if let Some(s) = &opts.session {
        eeg_dir = eeg_dir.join(format!("ses-{s}"));
        base += &format!("_ses-{s}");
    }
    eeg_dir = eeg_dir.join("eeg");
    base += &format!("_task-{}", opts.task);
    refuse_existing_recording(root, &eeg_dir, opts)?;
    // Declared first: dropped last, after the temporary files.
    let mut dirs = CreatedDirs::default();
    dirs.create(&eeg_dir)?;
    let mut files: Vec<OutFile> = Vec::new();
    let mut recordings = Vec::new();
    let flavour = if req.signal == Signal::Filtered {
        Flavour::Edf
    } else {
        Flavour::Bdf
    };
    let multi = req.devices.len() > 1;
    let mut site = String::new();
    for device in &req.devices {
        let mut name = base.clone();
        if multi {
            let acq = acq_label(device);
            if acq.is_empty() {
                return Err(ExportError::Usage(format!(
                    "device id {device:?} has no letters or digits to name its BIDS acq entity"
                )));
            }
            name += &format!("_acq-{acq}");
        }
        if let Some(r) = opts.run {
            name += &format!("_run-{r}");
        }
        let rec_path = eeg_dir.join(format!("{name}_eeg.{}", flavour.name()));
        let info = infos.get(device).cloned().unwrap_or_default();
        let mut rec = OutFile::create(&rec_path)?;
        progress.set_label(&format!("{device} -> {}", rec_path.display()));
        let result = export_edf(
            j, keys, req, device, &info, flavour, &opts.edf, &mut rec, progress,
        )?;
        files.push(rec);
        if site.is_empty() {
            site = result.timeline.site_id.clone();
        }
        let (channels_tsv, bad) = channels_tsv(&result, &info);
        let mut f = OutFile::create(&eeg_dir.join(format!("{name}_channels.tsv")))?;
        f.write_all(channels_tsv.as_bytes())?;
        files.push(f);
        let mut f = OutFile::create(&eeg_dir.join(format!("{name}_eeg.json")))?;
        let sidecar = eeg_json(&result, &info, &opts.task, req.signal);
        f.write_all(pretty(&sidecar).as_bytes())?;
        files.push(f);
        let mut f = OutFile::create(&eeg_dir.join(format!("{name}_events.tsv")))?;
        f.write_all(events_tsv(&result).as_bytes())?;
        files.push(f);
        let mut f = OutFile::create(&eeg_dir.join(format!("{name}_events.json")))?;
        f.write_all(pretty(&events_json()).as_bytes())?;
        files.push(f);
        recordings.push(BidsRecording {
            device: device.clone(),
            path: rec_path,
            result,
            bad_channels: bad,
        });
    }
    let participants = root.join("participants.tsv");
    let mut shared = dataset_files(root, &description, &participants, &site, &sub, &mut files)?;
    // Commit: new files first (never over anything), then the shared ones.
    let mut committed: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for f in files.drain(..).chain(shared.drain(..)) {
            let p = f.target().to_path_buf();
            f.commit()?;
            committed.push(p);
        }
        Ok::<(), ExportError>(())
    })();
    if let Err(e) = result {
        for p in &committed {
            if p != &description && p != &participants {
                let _ = std::fs::remove_file(p);
            }
        }
        return Err(e);
    }
    dirs.keep();
    Ok(BidsSummary {
        root: root.to_path_buf(),
        new_dataset,
        recordings,
    })
}

/// A dataset root is a new folder, an empty one or an existing BIDS
/// dataset; whether it is new.
fn check_dataset_root(root: &Path, description: &Path) -> Result<bool, ExportError> {
    let new_dataset = !root.exists();
    if !new_dataset {
        if !root.is_dir() {
            return Err(ExportError::Usage(format!(
                "{} exists and is not a folder; --out of --format bids is a dataset root",
                root.display()
            )));
        }
        let empty = std::fs::read_dir(root)
            .map_err(io_at(root))?
            .next()
            .is_none();
        if !empty && !description.exists() {
            return Err(ExportError::Usage(format!(
                "{} exists and is not a BIDS dataset (no dataset_description.json); give a new \
                 folder or an existing dataset's root",
                root.display()
            )));
        }
    }
    Ok(new_dataset)
}

/// Refuse to add a recording of a subject/session/task/run that `eeg_dir`
/// already holds.
fn refuse_existing_recording(
    root: &Path,
    eeg_dir: &Path,
    opts: &BidsOptions,
) -> Result<(), ExportError> {
    if let Ok(rd) = std::fs::read_dir(eeg_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ents = entities(&name);
            let get = |k: &str| ents.iter().find(|e| e.0 == k).map(|e| e.1.clone());
            let run_matches = match (get("run"), opts.run) {
                (None, None) => true,
                (Some(r), Some(n)) => r.parse::<u32>().ok() == Some(n),
                _ => false,
            };
            if get("sub").as_deref() == Some(opts.subject.as_str())
                && get("ses") == opts.session
                && get("task").as_deref() == Some(opts.task.as_str())
                && run_matches
            {
                return Err(ExportError::Usage(format!(
                    "{} already holds a recording of subject {}{}, task {}{} ({name}); give another \
                     --run (or --session), or another dataset",
                    root.display(),
                    opts.subject,
                    opts.session
                        .as_ref()
                        .map(|s| format!(", session {s}"))
                        .unwrap_or_default(),
                    opts.task,
                    opts.run.map(|r| format!(", run {r}")).unwrap_or_default(),
                )));
            }
        }
    }
    Ok(())
}

/// The dataset's shared files: dataset_description.json and
/// participants.tsv updated (returned, to be committed last, replacing
/// the old ones), participants.json and a README when missing (added to
/// `files`, the new files).
fn dataset_files(
    root: &Path,
    description: &Path,
    participants: &Path,
    site: &str,
    sub: &str,
    files: &mut Vec<OutFile>,
) -> Result<Vec<OutFile>, ExportError> {
    let mut shared: Vec<OutFile> = Vec::new();
    let desc_old: Option<Value> = match std::fs::read_to_string(description) {
        Ok(t) => Some(serde_json::from_str(&t).map_err(|e| {
            ExportError::Usage(format!(
                "{}: not valid JSON ({e}); fix it before adding to the dataset",
                description.display()
            ))
        })?),
        Err(_) => None,
    };
    let desc_new = dataset_description(desc_old.as_ref(), site);
    if desc_old.as_ref() != Some(&desc_new) {
        let mut f = OutFile::replacing(description)?;
        f.write_all(pretty(&desc_new).as_bytes())?;
        shared.push(f);
    }
    let old = std::fs::read_to_string(participants).ok();
    if let Some(text) = participants_tsv(old.as_deref(), sub) {
        let mut f = OutFile::replacing(participants)?;
        f.write_all(text.as_bytes())?;
        shared.push(f);
    }
    let pjson = root.join("participants.json");
    if !pjson.exists() {
        let mut f = OutFile::create(&pjson)?;
        let v = json!({"participant_id": {"Description": "Unique participant label"}});
        f.write_all(pretty(&v).as_bytes())?;
        files.push(f);
    }
    let readme = root.join("README");
    let has_readme = ["README", "README.md", "README.rst", "README.txt"]
        .iter()
        .any(|n| root.join(n).exists());
    if !has_readme {
        let mut f = OutFile::create(&readme)?;
        f.write_all(
            format!(
                "EEG recordings exported by neuroedge {} from its journal.\n\n\
                 Gaps in the recordings are padded and marked with BAD_ACQ_SKIP events;\n\
                 see each recording's _events.tsv.\n",
                crate::daemon::VERSION
            )
            .as_bytes(),
        )?;
        files.push(f);
    }
    Ok(shared)
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

fn dataset_description(old: Option<&Value>, site: &str) -> Value {
    let mut d = match old {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    d.entry("Name").or_insert_with(|| {
        json!(if site.is_empty() {
            "neuroedge recordings".to_string()
        } else {
            format!("neuroedge recordings ({site})")
        })
    });
    d.entry("BIDSVersion")
        .or_insert_with(|| json!(BIDS_VERSION));
    d.entry("DatasetType").or_insert_with(|| json!("raw"));
    let gen = d.entry("GeneratedBy").or_insert_with(|| json!([]));
    if let Value::Array(a) = gen {
        if !a.iter().any(|g| g.get("Name") == Some(&json!("neuroedge"))) {
            a.push(json!({
                "Name": "neuroedge",
                "Version": crate::daemon::VERSION,
                "Description": "EEG acquisition daemon; recordings exported from its sealed journal"
            }));
        }
    }
    Value::Object(d)
}

/// participants.tsv with `sub` added; `None` when it is there already.
fn participants_tsv(old: Option<&str>, sub: &str) -> Option<String> {
    let Some(old) = old.filter(|t| !t.trim().is_empty()) else {
        return Some(format!("participant_id\n{sub}\n"));
    };
    let mut lines = old.lines();
    let header = lines.next().unwrap_or("participant_id");
    let cols = header.split('\t').count();
    if lines.any(|l| l.split('\t').next() == Some(sub)) {
        return None;
    }
    let mut out = old.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(sub);
    for _ in 1..cols {
        out.push_str("\tn/a");
    }
    out.push('\n');
    Some(out)
}

/// Quality verdicts: (status, description) per channel.
fn channel_status(result: &EdfResult, info: &DeviceInfo) -> Vec<(bool, String)> {
    let q = &info.quality;
    result
        .timeline
        .stats
        .iter()
        .map(|st| {
            if st.n == 0 {
                return (true, "n/a".into());
            }
            let ptp = f64::from(st.raw_max) - f64::from(st.raw_min);
            let railed_needed = ((q.railed_min_fraction * st.n as f64).ceil() as u64).max(1);
            if st.railed >= railed_needed {
                return (
                    false,
                    format!(
                        "railed: {} of {} raw samples at or beyond {} uV",
                        st.railed, st.n, q.railed_abs_uv
                    ),
                );
            }
            if ptp < q.flat_ptp_uv {
                return (
                    false,
                    format!(
                        "flat: raw peak-to-peak {ptp} uV over the recording (below {} uV)",
                        q.flat_ptp_uv
                    ),
                );
            }
            if st.rms_n > 0 {
                let rms = st.rms_sum / st.rms_n as f64;
                if rms > q.noisy_rms_uv {
                    return (
                        false,
                        format!(
                            "noisy: mean filtered RMS {rms:.1} uV over {} windows (above {} uV)",
                            st.rms_n, q.noisy_rms_uv
                        ),
                    );
                }
            }
            (true, "n/a".into())
        })
        .collect()
}

fn channels_tsv(result: &EdfResult, info: &DeviceInfo) -> (String, Vec<(String, String)>) {
    let layout = result
        .timeline
        .layout
        .clone()
        .unwrap_or_else(|| super::Layout {
            channels: Vec::new(),
            rate: 0.0,
            units: "uV".into(),
        });
    let names = labels(&layout.channels);
    let units = if layout.units == "µV" {
        "uV".to_string()
    } else {
        layout.units.clone()
    };
    let f = &result.timeline.filter;
    let filtered = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_else(|| "n/a".into());
    let mut out = String::from(
        "name\ttype\tunits\tlow_cutoff\thigh_cutoff\tnotch\tstatus\tstatus_description\n",
    );
    let mut bad = Vec::new();
    let status = channel_status(result, info);
    for (n, (good, why)) in names.iter().zip(status) {
        let (lo, hi, notch) = if result.flavour == Flavour::Edf && !f.is_identity() {
            (
                filtered(f.highpass_hz),
                filtered(f.lowpass_hz),
                filtered(f.notch_hz),
            )
        } else {
            ("n/a".into(), "n/a".into(), "n/a".into())
        };
        if !good {
            bad.push((n.clone(), why.clone()));
        }
        out += &format!(
            "{}\tEEG\t{}\t{lo}\t{hi}\t{notch}\t{}\t{}\n",
            tsv_clean(n),
            tsv_clean(&units),
            if good { "good" } else { "bad" },
            tsv_clean(&why)
        );
    }
    (out, bad)
}

fn eeg_json(result: &EdfResult, info: &DeviceInfo, task: &str, signal: Signal) -> Value {
    let tl = &result.timeline;
    let f = &tl.filter;
    let ch = tl.layout.as_ref().map_or(0, |l| l.channels.len());
    let software_filters = if signal == Signal::Filtered && !f.is_identity() {
        let mut m = serde_json::Map::new();
        if f.highpass_hz.is_some() || f.lowpass_hz.is_some() {
            m.insert(
                "Butterworth".into(),
                json!({
                    "HighpassHz": f.highpass_hz,
                    "LowpassHz": f.lowpass_hz,
                    "Order": f.order,
                    "Design": "scipy butter(..., output='sos'), causal sosfilt, state carried across batches"
                }),
            );
        }
        if let Some(n) = f.notch_hz {
            m.insert(
                "Notch".into(),
                json!({"FrequencyHz": n, "Harmonics": f.notch_harmonics, "Design": "scipy iirnotch"}),
            );
        }
        Value::Object(m)
    } else {
        json!("n/a")
    };
    let mut v = json!({
        "TaskName": task,
        "SamplingFrequency": tl.rate(),
        "EEGChannelCount": ch,
        "EOGChannelCount": 0,
        "ECGChannelCount": 0,
        "EMGChannelCount": 0,
        "MiscChannelCount": 0,
        "TriggerChannelCount": 0,
        "PowerLineFrequency": f.notch_hz.map_or(json!("n/a"), |n| json!(n)),
        "SoftwareFilters": software_filters,
        "RecordingDuration": result.duration_s(),
        "RecordingType": "continuous",
        "EEGReference": "n/a",
        "SoftwareVersions": format!("neuroedge {}", crate::daemon::VERSION),
    });
    if let Some(m) = &info.manufacturer {
        v["Manufacturer"] = json!(m);
    }
    if let Some(m) = &info.model {
        v["ManufacturersModelName"] = json!(m);
    }
    v
}

fn events_tsv(result: &EdfResult) -> String {
    let rate = result.timeline.rate();
    let mut out = String::from("onset\tduration\tsample\ttrial_type\tvalue\n");
    for a in &result.timeline.annotations {
        let onset = a.onset / rate;
        let duration = a.duration as f64 / rate;
        let (trial, value) = match a.kind {
            AnnotationKind::Marker => (tsv_clean(&a.text), "n/a".to_string()),
            AnnotationKind::Gap => (
                a.text
                    .split(' ')
                    .next()
                    .unwrap_or("BAD_ACQ_SKIP")
                    .to_string(),
                tsv_clean(&a.text),
            ),
        };
        out += &format!(
            "{onset:.6}\t{duration:.6}\t{}\t{trial}\t{value}\n",
            a.onset.round() as u64
        );
    }
    out
}

fn events_json() -> Value {
    json!({
        "onset": {"Description": "Onset of the event from the first sample of the recording", "Units": "s"},
        "duration": {"Description": "Duration of the event (0 for markers; the padded span for gaps)", "Units": "s"},
        "sample": {"Description": "Onset in samples from the first sample of the recording"},
        "trial_type": {"Description": "The marker text, or BAD_ACQ_SKIP for samples the device, neuroedge or the journal lost (padded in the recording), BAD_PADDING for the padding after the last sample"},
        "value": {"Description": "For BAD_* events: how many samples and why"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participants_gain_a_row_once() {
        assert_eq!(
            participants_tsv(None, "sub-01").as_deref(),
            Some("participant_id\nsub-01\n")
        );
        let old = "participant_id\tage\nsub-01\t30\n";
        assert_eq!(
            participants_tsv(Some(old), "sub-02").as_deref(),
            Some("participant_id\tage\nsub-01\t30\nsub-02\tn/a\n")
        );
        assert_eq!(participants_tsv(Some(old), "sub-01"), None);
    }

    #[test]
    fn dataset_description_is_extended_not_clobbered() {
        let old = json!({"Name": "My study", "BIDSVersion": "1.8.0", "Authors": ["A"]});
        let d = dataset_description(Some(&old), "lab");
        assert_eq!(d["Name"], "My study");
        assert_eq!(d["BIDSVersion"], "1.8.0");
        assert_eq!(d["Authors"], json!(["A"]));
        assert_eq!(d["DatasetType"], "raw");
        assert_eq!(d["GeneratedBy"][0]["Name"], "neuroedge");
        assert_eq!(dataset_description(Some(&d), "lab"), d, "idempotent");
    }

    #[test]
    fn railed_flat_and_noisy_channels_are_bad() {
        use super::super::timeline::{ChannelStats, Timeline};
        let st = |lo: f32, hi: f32, railed: u64, rms: f64| ChannelStats {
            raw_min: lo,
            raw_max: hi,
            railed,
            n: 1000,
            rms_sum: rms * 10.0,
            rms_n: 10,
            ..Default::default()
        };
        let r = EdfResult {
            timeline: Timeline {
                stats: vec![
                    st(-50.0, 50.0, 0, 10.0),
                    st(180_000.0, 187_500.0, 900, 10.0),
                    st(3.0, 3.1, 0, 0.0),
                    st(-500.0, 500.0, 0, 250.0),
                    st(-50.0, 50.0, 10, 10.0),
                ],
                ..Default::default()
            },
            flavour: Flavour::Bdf,
            record_s: 1,
            samples_per_record: 250,
            records: 4,
            scaling: Vec::new(),
            spilled: 0,
        };
        let s = channel_status(&r, &DeviceInfo::default());
        let good: Vec<bool> = s.iter().map(|x| x.0).collect();
        assert_eq!(good, [true, false, false, false, true], "{s:?}");
        assert!(s[1].1.starts_with("railed"));
        assert!(s[2].1.starts_with("flat"));
        assert!(s[3].1.starts_with("noisy"));
    }

    #[test]
    fn labels_and_entities() {
        assert!(check_label("--subject", "01").is_ok());
        assert!(check_label("--subject", "0-1").is_err());
        assert_eq!(acq_label("cyton-1"), "cyton1");
        let e = entities("sub-01_ses-a_task-rest_run-2_eeg.bdf");
        assert_eq!(e[3], ("run".to_string(), "2".to_string()));
    }
}
