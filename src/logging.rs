//! tracing setup: text (reads well under journald) or JSON, to stderr.
//!
//! Colours only on a terminal (never in journald or a log file, and not
//! with `NO_COLOR`); under journald (`JOURNAL_STREAM` set by systemd) no
//! timestamp of ours, since journald stamps every line itself.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match (format, under_journald) {
        (LogFormat::Text, true) => builder.with_target(false).without_time().try_init(),
        (LogFormat::Text, false) => builder.with_target(false).try_init(),
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
    };
}
