//! `neuroedge status`: ask the socket, print a summary or the raw JSON.

use super::report::{DeviceReport, QualityReport, StatusReport};
use crate::dsp::QualityStatus;
use crate::journal::JournalState;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is the daemon running? `systemctl status neuroedge`, or pass --socket)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("status socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the daemon sent a reply that is not JSON: {0}")]
    Reply(String),
}

/// Send one request line and read one JSON reply.
pub fn request(socket: &Path, line: &str) -> Result<Value, ClientError> {
    let path = socket.display().to_string();
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.write_all(format!("{}\n", line.trim_end()).as_bytes())
        .map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(io)?;
    serde_json::from_str(&reply).map_err(|e| {
        ClientError::Reply(format!(
            "{e}: {:?}",
            reply.chars().take(200).collect::<String>()
        ))
    })
}

/// Ask for `status` and read the typed report.
pub fn status(socket: &Path) -> Result<StatusReport, ClientError> {
    let v = request(socket, "status")?;
    serde_json::from_value(v).map_err(|e| {
        ClientError::Reply(format!(
            "the status reply does not match this neuroedge's report ({e}); are the daemon and this command the same version?"
        ))
    })
}

fn human_bytes(b: u64) -> String {
    bytesize::ByteSize(b).to_string_as(true)
}

fn letter(q: QualityStatus) -> char {
    match q {
        QualityStatus::Ok => 'o',
        QualityStatus::Flat => 'f',
        QualityStatus::Railed => 'r',
        QualityStatus::Noisy => 'n',
    }
}

/// Per-channel quality in one line of at most `width` characters: a letter
/// per channel (`o` ok, `f` flat, `r` railed, `n` noisy) and the channels
/// needing attention; when the letters do not fit (a 384-channel rig), a
/// count per state and the channels that are not ok, by number:
/// `384 ch: 380 ok, 3 flat, 1 railed (ch 17, 211, 212 flat; ch 300 railed)`.
pub fn compact_quality(q: &[QualityReport], width: usize) -> String {
    let mut letters = String::new();
    let mut bad = Vec::new();
    for (i, c) in q.iter().enumerate() {
        if i > 0 && i % 8 == 0 {
            letters.push(' ');
        }
        letters.push(letter(c.state));
        if c.state != QualityStatus::Ok {
            bad.push(format!("{} {}", c.channel, c.state.as_str()));
        }
    }
    let line = if bad.is_empty() {
        format!("{letters}  all ok")
    } else {
        let shown: Vec<String> = bad.iter().take(6).cloned().collect();
        let more = if bad.len() > 6 {
            format!(" (+{} more)", bad.len() - 6)
        } else {
            String::new()
        };
        format!(
            "{letters}  {}{more}  [o ok f flat r railed n noisy]",
            shown.join(", ")
        )
    };
    if line.chars().count() <= width {
        return line;
    }
    summarise_quality(q, width)
}

/// `N ch: a ok, b flat, ... (ch i, j flat; ch k railed)`, channel numbers
/// 1-based, the list cut with "…" to fit `width`.
fn summarise_quality(q: &[QualityReport], width: usize) -> String {
    let states = [
        QualityStatus::Ok,
        QualityStatus::Flat,
        QualityStatus::Railed,
        QualityStatus::Noisy,
    ];
    let counts: Vec<String> = states
        .iter()
        .filter_map(|s| {
            let n = q.iter().filter(|c| c.state == *s).count();
            (n > 0).then(|| format!("{n} {}", s.as_str()))
        })
        .collect();
    let mut out = format!("{} ch: {}", q.len(), counts.join(", "));
    let lists: Vec<String> = states[1..]
        .iter()
        .filter_map(|s| {
            let chans: Vec<String> = q
                .iter()
                .enumerate()
                .filter(|(_, c)| c.state == *s)
                .map(|(i, _)| (i + 1).to_string())
                .collect();
            (!chans.is_empty()).then(|| format!("ch {} {}", chans.join(", "), s.as_str()))
        })
        .collect();
    if !lists.is_empty() {
        let detail = format!(" ({})", lists.join("; "));
        if out.chars().count() + detail.chars().count() <= width {
            out += &detail;
        } else {
            let room = width.saturating_sub(out.chars().count() + 3);
            let cut: String = detail.chars().take(room).collect();
            out += &cut;
            out += "…)";
        }
    }
    out
}

/// A technician-readable summary of a `status` report, `width` columns wide.
/// `    lsl outlets  filtered 1250 pushed, markers 2 pushed 1 dropped`, or
/// nothing for a device without outlets.
fn outlets_line(d: &DeviceReport) -> String {
    if d.outlets.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = d
        .outlets
        .iter()
        .map(|(s, o)| match o.dropped {
            0 => format!("{s} {} pushed", o.pushed),
            n => format!("{s} {} pushed {n} dropped", o.pushed),
        })
        .collect();
    format!("    lsl outlets  {}\n", parts.join(", "))
}

pub fn render(status: &StatusReport, width: usize) -> String {
    let mut out = String::new();
    out += &format!(
        "neuroedge {} on node {} (site {}), up {:.0} s\n\n",
        status.version, status.node_id, status.site_id, status.uptime_s
    );
    // Wide enough for the longest device id, so columns stay aligned.
    let w = status
        .devices
        .iter()
        .map(|d| d.id.chars().count())
        .max()
        .unwrap_or(0)
        .max(16);
    out += &format!(
        "{:<w$} {:<14} {:<12} {:>8} {:>10} {:>12} {:>8} {:>6} {:>9}\n",
        "DEVICE", "DRIVER", "STATE", "RATE", "SAMPLES/S", "SAMPLES", "DROPPED", "GAPS", "LAST"
    );
    for d in &status.devices {
        let age = d
            .last_sample_age_s
            .map_or("-".into(), |a| format!("{a:.2}s"));
        let rate = if d.sample_rate > 0.0 {
            format!("{:.0}Hz", d.sample_rate)
        } else {
            "-".into()
        };
        let per_s = if d.samples_per_s.is_finite() {
            d.samples_per_s
        } else {
            0.0
        };
        out += &format!(
            "{:<w$} {:<14} {:<12} {:>8} {:>10.1} {:>12} {:>8} {:>6} {:>9}\n",
            d.id,
            d.driver,
            d.state.as_str(),
            rate,
            per_s,
            d.samples_total,
            d.dropped_samples,
            d.gaps,
            age
        );
        if !d.quality.is_empty() {
            let prefix = "    quality  ";
            out += &format!(
                "{prefix}{}\n",
                compact_quality(&d.quality, width.saturating_sub(prefix.len()).max(40))
            );
        }
        if d.effective_rate.is_finite() && d.sample_rate > 0.0 {
            out += &format!(
                "    measured rate {:.3} Hz ({:+.0} ppm)\n",
                d.effective_rate,
                (d.effective_rate / d.sample_rate - 1.0) * 1e6
            );
        }
        out += &outlets_line(d);
        if let Some(e) = &d.last_error {
            out += &format!("    last error: {e}\n");
        }
    }
    let j = &status.journal;
    let oldest = j
        .oldest_pending_age_s
        .map_or("-".into(), |a| format!("{a:.0} s"));
    let state = match j.state {
        JournalState::Ok => "ok",
        JournalState::Degraded => "degraded",
    };
    out += &format!(
        "\njournal  {} pending ({}), oldest {}; {} of {} used; {} evicted; {state}\n",
        j.pending_batches,
        human_bytes(j.pending_bytes),
        oldest,
        human_bytes(j.total_bytes),
        human_bytes(j.max_bytes),
        j.evicted_batches,
    );
    if let (Some(e), JournalState::Degraded) = (&j.last_error, j.state) {
        out += &format!("    last error: {e}\n");
    }
    let u = &status.uplink;
    out += &format!(
        "uplink   {}; {} uploaded, {} quarantined\n",
        u.state.as_str(),
        u.uploaded_batches,
        u.quarantined_batches
    );
    if let Some(e) = &u.last_error {
        out += &format!("    last error: {e}\n");
    }
    let steps = status.clock.steps.len();
    let off = status.clock.wall_offset_s;
    if steps > 0 || off.abs() > 1.0 {
        out += &format!(
            "clock    {steps} wall-clock step(s) seen; wall clock - timestamps = {off:+.1} s\n"
        );
    }
    out
}

/// The terminal's width (`COLUMNS`, else the tty's, else 100).
pub fn terminal_width() -> usize {
    if let Some(c) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|c| *c >= 20)
    {
        return c;
    }
    crossterm::terminal::size()
        .ok()
        .map(|(w, _)| w as usize)
        .filter(|w| *w >= 20)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::report::{ClockReport, UplinkReport, UplinkState};
    use crate::telemetry::DeviceState;

    fn q(states: &[QualityStatus]) -> Vec<QualityReport> {
        states
            .iter()
            .enumerate()
            .map(|(i, s)| QualityReport {
                channel: format!("ch{}", i + 1),
                state: *s,
                rms_uv: 1.0,
                line_noise_ratio: 0.0,
            })
            .collect()
    }

    fn device(id: &str, state: DeviceState, rate: f64) -> DeviceReport {
        DeviceReport {
            id: id.into(),
            driver: "synthetic".into(),
            state,
            sample_rate: rate,
            effective_rate: f64::NAN,
            channels: 0,
            channel_names: vec![],
            samples_total: 0,
            samples_per_s: f64::NAN,
            dropped_samples: 0,
            gaps: 0,
            last_sample_age_s: None,
            last_sample_t: 0.0,
            quality: vec![],
            band_power: Default::default(),
            last_error: None,
            outlets: Default::default(),
        }
    }

    fn report(devices: Vec<DeviceReport>) -> StatusReport {
        StatusReport {
            version: "1".into(),
            uptime_s: 1.0,
            node_id: "n".into(),
            site_id: "s".into(),
            devices,
            journal: Default::default(),
            uplink: UplinkReport {
                state: UplinkState::Disabled,
                uploaded_batches: 0,
                quarantined_batches: 0,
                failed_attempts: 0,
                last_success_age_s: None,
                last_error: None,
                in_flight: 0,
                buffered_batches: 0,
                endpoint: None,
            },
            clock: ClockReport {
                wall_offset_s: 0.0,
                steps: vec![],
            },
            systemd: Default::default(),
        }
    }

    #[test]
    fn quality_line_is_compact() {
        use QualityStatus::*;
        let mut s = vec![Ok; 10];
        s[2] = Flat;
        let line = compact_quality(&q(&s), 100);
        assert!(line.starts_with("oofooooo oo  ch3 flat"), "{line}");
        assert_eq!(compact_quality(&q(&[Ok; 4]), 100), "oooo  all ok");
    }

    #[test]
    fn many_channels_are_summarised_to_fit_the_width() {
        use QualityStatus::*;
        let mut s = vec![Ok; 384];
        for i in [16, 210, 211] {
            s[i] = Flat;
        }
        s[299] = Railed;
        let line = compact_quality(&q(&s), 100);
        assert_eq!(
            line,
            "384 ch: 380 ok, 3 flat, 1 railed (ch 17, 211, 212 flat; ch 300 railed)"
        );
        let mut noisy = vec![Noisy; 384];
        noisy[0] = Ok;
        let line = compact_quality(&q(&noisy), 60);
        assert!(line.chars().count() <= 60, "{line}");
        assert!(
            line.starts_with("384 ch: 1 ok, 383 noisy (ch 2, 3"),
            "{line}"
        );
        assert!(line.ends_with("…)"), "{line}");
    }

    #[test]
    fn outlets_are_listed_under_their_device() {
        let mut d = device("eeg", DeviceState::Streaming, 250.0);
        let none = render(&report(vec![d.clone()]), 100);
        assert!(!none.contains("lsl outlets"), "{none}");
        d.outlets.insert(
            "filtered".into(),
            crate::control::report::OutletReport {
                pushed: 1250,
                dropped: 0,
            },
        );
        d.outlets.insert(
            "markers".into(),
            crate::control::report::OutletReport {
                pushed: 2,
                dropped: 1,
            },
        );
        let text = render(&report(vec![d]), 100);
        assert!(
            text.contains("    lsl outlets  filtered 1250 pushed, markers 2 pushed 1 dropped\n"),
            "{text}"
        );
    }

    #[test]
    fn columns_stay_aligned_with_long_ids() {
        let text = render(
            &report(vec![
                device("brainflow-synthetic-board", DeviceState::Disabled, 0.0),
                device("eeg", DeviceState::Streaming, 250.0),
            ]),
            100,
        );
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("DEVICE") || l.starts_with("brainflow") || l.starts_with("eeg")
            })
            .collect();
        assert_eq!(rows.len(), 3, "{text}");
        let driver_col = |l: &str| {
            l.find(|c: char| c.is_whitespace())
                .map(|i| i + l[i..].len() - l[i..].trim_start().len())
        };
        let col = driver_col(rows[0]);
        assert!(rows.iter().all(|r| driver_col(r) == col), "{text}");
        assert!(rows[1].contains(" - "), "no rate shows as -: {text}");
        assert!(rows[2].contains("250Hz"), "{text}");
    }
}
