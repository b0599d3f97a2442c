//! `neuroedge status`: ask the socket, print a summary or the raw JSON.

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

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

fn human_bytes(b: f64) -> String {
    bytesize::ByteSize(b.max(0.0) as u64).to_string_as(true)
}

/// Per-channel quality in one short line: a letter per channel (`o` ok,
/// `f` flat, `r` railed, `n` noisy), then the channels needing attention.
pub fn compact_quality(q: &[Value]) -> String {
    let mut letters = String::new();
    let mut bad = Vec::new();
    for (i, c) in q.iter().enumerate() {
        let st = c.get("state").and_then(Value::as_str).unwrap_or("?");
        let l = match st {
            "ok" => 'o',
            "flat" => 'f',
            "railed" => 'r',
            "noisy" => 'n',
            _ => '?',
        };
        if i > 0 && i % 8 == 0 {
            letters.push(' ');
        }
        letters.push(l);
        if st != "ok" {
            let name = c.get("channel").and_then(Value::as_str).unwrap_or("?");
            bad.push(format!("{name} {st}"));
        }
    }
    if bad.is_empty() {
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
    }
}

/// A technician-readable summary of a `status` reply.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let s = |k: &str| {
        status
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    out += &format!(
        "neuroedge {} on node {} (site {}), up {:.0} s\n\n",
        s("version"),
        s("node_id"),
        s("site_id"),
        num(status, "uptime_s")
    );
    let devices = status
        .get("devices")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    // Wide enough for the longest device id, so columns stay aligned.
    let w = devices
        .iter()
        .filter_map(|d| d.get("id").and_then(Value::as_str))
        .map(|id| id.chars().count())
        .max()
        .unwrap_or(0)
        .max(16);
    out += &format!(
        "{:<w$} {:<14} {:<12} {:>8} {:>10} {:>12} {:>8} {:>6} {:>9}\n",
        "DEVICE", "DRIVER", "STATE", "RATE", "SAMPLES/S", "SAMPLES", "DROPPED", "GAPS", "LAST"
    );
    for d in devices {
        let t = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let age = d
            .get("last_sample_age_s")
            .and_then(Value::as_f64)
            .map_or("-".into(), |a| format!("{a:.2}s"));
        let rate = match num(d, "sample_rate") {
            r if r > 0.0 => format!("{r:.0}Hz"),
            _ => "-".into(),
        };
        out += &format!(
            "{:<w$} {:<14} {:<12} {:>8} {:>10.1} {:>12} {:>8} {:>6} {:>9}\n",
            t("id"),
            t("driver"),
            t("state"),
            rate,
            num(d, "samples_per_s"),
            num(d, "samples_total") as u64,
            num(d, "dropped_samples") as u64,
            num(d, "gaps") as u64,
            age
        );
        if let Some(q) = d
            .get("quality")
            .and_then(Value::as_array)
            .filter(|q| !q.is_empty())
        {
            out += &format!("    quality  {}\n", compact_quality(q));
        }
        if let Some(r) = d.get("effective_rate").and_then(Value::as_f64) {
            let nominal = num(d, "sample_rate");
            if nominal > 0.0 {
                out += &format!(
                    "    measured rate {r:.3} Hz ({:+.0} ppm)\n",
                    (r / nominal - 1.0) * 1e6
                );
            }
        }
        if let Some(e) = d.get("last_error").and_then(Value::as_str) {
            out += &format!("    last error: {e}\n");
        }
    }
    if let Some(j) = status.get("journal") {
        let oldest = j
            .get("oldest_pending_age_s")
            .and_then(Value::as_f64)
            .map_or("-".into(), |a| format!("{a:.0} s"));
        out += &format!(
            "\njournal  {} pending ({}), oldest {}; {} of {} used; {} evicted; {}\n",
            num(j, "pending_batches") as u64,
            human_bytes(num(j, "pending_bytes")),
            oldest,
            human_bytes(num(j, "total_bytes")),
            human_bytes(num(j, "max_bytes")),
            num(j, "evicted_batches") as u64,
            j.get("state").and_then(Value::as_str).unwrap_or("?"),
        );
        if let Some(e) = j.get("last_error").and_then(Value::as_str) {
            if j.get("state").and_then(Value::as_str) != Some("ok") {
                out += &format!("    last error: {e}\n");
            }
        }
    }
    if let Some(u) = status.get("uplink") {
        out += &format!(
            "uplink   {}; {} uploaded, {} quarantined\n",
            u.get("state").and_then(Value::as_str).unwrap_or("?"),
            num(u, "uploaded_batches") as u64,
            num(u, "quarantined_batches") as u64
        );
        if let Some(e) = u.get("last_error").and_then(Value::as_str) {
            out += &format!("    last error: {e}\n");
        }
    }
    if let Some(c) = status.get("clock") {
        let steps = c.get("steps").and_then(Value::as_array).map_or(0, Vec::len);
        let off = num(c, "wall_offset_s");
        if steps > 0 || off.abs() > 1.0 {
            out += &format!(
                "clock    {steps} wall-clock step(s) seen; wall clock - timestamps = {off:+.1} s\n"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quality_line_is_compact() {
        let q: Vec<Value> = (1..=10)
            .map(|i| json!({"channel": format!("ch{i}"), "state": if i == 3 { "flat" } else { "ok" }}))
            .collect();
        let line = compact_quality(&q);
        assert!(line.starts_with("oofooooo oo  ch3 flat"), "{line}");
        let all_ok: Vec<Value> = (1..=4)
            .map(|i| json!({"channel": format!("c{i}"), "state": "ok"}))
            .collect();
        assert_eq!(compact_quality(&all_ok), "oooo  all ok");
    }

    #[test]
    fn render_survives_missing_fields() {
        let text = render(&json!({"devices": [{"id": "x"}], "journal": {}, "uplink": {}}));
        assert!(text.contains("x"));
    }

    #[test]
    fn columns_stay_aligned_with_long_ids() {
        let text = render(&json!({"devices": [
            {"id": "brainflow-synthetic-board", "driver": "brainflow", "state": "disabled"},
            {"id": "eeg", "driver": "synthetic", "state": "streaming", "sample_rate": 250.0},
        ]}));
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
