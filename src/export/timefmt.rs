//! Times on the export's command line and in file headers (UTC).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Parse `--from` / `--to`: RFC 3339 (`2026-03-01T10:00:00Z`,
/// `2026-03-01T11:00:00+01:00`) or unix seconds (`1772359200.5`).
pub fn parse_time_arg(s: &str) -> Result<f64, String> {
    let t = s.trim();
    if let Ok(v) = t.parse::<f64>() {
        if v.is_finite() {
            return Ok(v);
        }
    }
    match OffsetDateTime::parse(t, &Rfc3339) {
        Ok(dt) => Ok(dt.unix_timestamp_nanos() as f64 / 1e9),
        Err(e) => Err(format!(
            "{s:?} is neither RFC 3339 (e.g. 2026-03-01T10:00:00Z) nor unix seconds: {e}"
        )),
    }
}

/// Now, as RFC 3339 UTC.
pub fn rfc3339_now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A unix time as RFC 3339 UTC (microseconds).
pub fn rfc3339(t: f64) -> String {
    let us = (t * 1e6).round();
    (us.is_finite())
        .then(|| OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).ok())
        .flatten()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{t} (unix s)"))
}

/// The UTC date-time of a unix time.
pub fn utc(t: f64) -> Option<OffsetDateTime> {
    if !t.is_finite() {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos((t * 1e9) as i128).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_unix_seconds() {
        assert_eq!(parse_time_arg("1700000000.25"), Ok(1_700_000_000.25));
        assert_eq!(parse_time_arg("2023-11-14T22:13:20Z"), Ok(1_700_000_000.0));
        assert_eq!(
            parse_time_arg("2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000.5)
        );
        let e = parse_time_arg("yesterday").unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
        assert_eq!(rfc3339(1_700_000_000.25), "2023-11-14T22:13:20.25Z");
    }
}
