//! Line-oriented ASCII devices on a serial port (Arduino-style boards, lab
//! amplifiers with a text output): one line (`\n` or `\r\n`) is one frame
//! of `channels` numbers separated by `separator` (whitespace around the
//! numbers is allowed; a whitespace separator matches any run of blanks;
//! one trailing separator is tolerated). Values are taken as µV.
//!
//! Malformed lines (wrong count, not numbers, not finite, not UTF-8, longer
//! than [`MAX_LINE`] bytes) are skipped and counted, with a warning at most
//! every 5 s carrying the running total; never fatal. The partial line
//! caught mid-way when the port opens is discarded. Frames are stamped by
//! the dejitter fit from the time of the read that completed the line.

use super::{default_names, serial, Sink, Source, SourceError, StreamInfo};
use super::{BuildContext, DriverConfig};
use crate::validate::Findings;
use serde::Deserialize;
use serialport::SerialPort;
use std::time::{Duration, Instant};

fn default_baud() -> u32 {
    115_200
}

fn default_separator() -> String {
    ",".into()
}

/// `[connection]` of the ASCII serial driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialAsciiConnection {
    pub port: String,
    #[serde(default = "default_baud")]
    pub baud: u32,
    pub sample_rate: f64,
    pub channels: usize,
    #[serde(default = "default_separator")]
    pub separator: String,
}

impl DriverConfig for SerialAsciiConnection {
    const NAME: &'static str = "serial-ascii";

    fn validate(&self, out: &mut Findings) {
        super::serial::check_port(out, &self.port);
        out.check_rate("sample_rate", self.sample_rate);
        out.check_channels("channels", self.channels);
        if self.baud == 0 {
            out.bad("baud", "baud must be positive", "e.g. 115200");
        }
        if self.separator.is_empty() {
            out.bad("separator", "separator is empty", "e.g. \",\" or \" \"");
        }
    }

    fn declared_layout(&self) -> Option<(f64, usize)> {
        Some((self.sample_rate, self.channels))
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(SerialAscii::new(ctx.device_id, self.clone())))
    }
}

/// Lines longer than this (bytes, without the line end) are malformed.
pub const MAX_LINE: usize = 4096;
const PORT_TIMEOUT: Duration = Duration::from_millis(50);
/// A `read` call collects about this long before returning.
const READ_SPAN: Duration = Duration::from_millis(40);
/// How the driver names the device in messages.
const DEVICE: &str = "ASCII serial device";
/// Malformed lines are reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(5);
const READ_BUF: usize = 4096;

/// Why a line was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    TooLong,
    NotUtf8,
    NotANumber,
    WrongCount,
}

impl Malformed {
    fn as_str(self) -> &'static str {
        match self {
            Malformed::TooLong => "line longer than 4096 bytes",
            Malformed::NotUtf8 => "not UTF-8",
            Malformed::NotANumber => "a field is not a finite number",
            Malformed::WrongCount => "wrong number of values",
        }
    }
}

/// How fields are separated.
enum Separator {
    /// Any run of ASCII whitespace.
    Whitespace,
    Text(String),
}

/// Bytes -> frames of numbers. Allocates only in [`LineDecoder::new`].
pub struct LineDecoder {
    sep: Separator,
    values: Box<[f32]>,
    line: Box<[u8]>,
    len: usize,
    /// The current line overflowed [`MAX_LINE`]: skip to its end.
    overlong: bool,
    /// A line end has been seen since open (the first partial line is
    /// discarded).
    synced: bool,
    malformed_total: u64,
    reported_total: u64,
    last_reason: Option<Malformed>,
    last_report: Option<Instant>,
}

impl LineDecoder {
    pub fn new(channels: usize, separator: &str) -> Self {
        let sep = if separator.trim().is_empty() {
            Separator::Whitespace
        } else {
            Separator::Text(separator.to_string())
        };
        LineDecoder {
            sep,
            values: vec![0.0; channels].into_boxed_slice(),
            line: vec![0u8; MAX_LINE].into_boxed_slice(),
            len: 0,
            overlong: false,
            synced: false,
            malformed_total: 0,
            reported_total: 0,
            last_reason: None,
            last_report: None,
        }
    }

    /// A new connection: the next line starts mid-way.
    fn reset(&mut self) {
        self.len = 0;
        self.overlong = false;
        self.synced = false;
    }

    /// Feed bytes read at monotonic time `t`; complete valid lines go to
    /// `push`.
    pub fn feed(&mut self, mut bytes: &[u8], t: f64, push: &mut impl FnMut(f64, &[f32])) {
        while !bytes.is_empty() {
            let (part, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], true),
                None => (bytes, false),
            };
            bytes = &bytes[part.len() + usize::from(ended)..];
            if !self.overlong {
                if self.len + part.len() > MAX_LINE {
                    self.overlong = true;
                } else {
                    self.line[self.len..self.len + part.len()].copy_from_slice(part);
                    self.len += part.len();
                }
            }
            if !ended {
                continue;
            }
            if self.synced {
                let r = if self.overlong {
                    Err(Malformed::TooLong)
                } else {
                    self.parse()
                };
                match r {
                    Ok(true) => push(t, &self.values),
                    Ok(false) => {}
                    Err(why) => {
                        self.malformed_total += 1;
                        self.last_reason = Some(why);
                    }
                }
            }
            self.synced = true;
            self.len = 0;
            self.overlong = false;
        }
    }

    /// Parse the buffered line into `values`: Ok(true) a frame, Ok(false)
    /// a blank line (ignored).
    fn parse(&mut self) -> Result<bool, Malformed> {
        let mut line = &self.line[..self.len];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        let text = std::str::from_utf8(line).map_err(|_| Malformed::NotUtf8)?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(false);
        }
        let n = self.values.len();
        let mut count = 0usize;
        let mut store = |field: &str, last: bool| -> Result<(), Malformed> {
            let field = field.trim();
            if field.is_empty() && last && count == n {
                // One trailing separator ("1,2,3,").
                return Ok(());
            }
            let v: f32 = field.parse().map_err(|_| Malformed::NotANumber)?;
            if !v.is_finite() {
                return Err(Malformed::NotANumber);
            }
            if count == n {
                return Err(Malformed::WrongCount);
            }
            self.values[count] = v;
            count += 1;
            Ok(())
        };
        match &self.sep {
            Separator::Whitespace => {
                for f in text.split_ascii_whitespace() {
                    store(f, false)?;
                }
            }
            Separator::Text(s) => {
                let mut fields = text.split(s.as_str()).peekable();
                while let Some(f) = fields.next() {
                    store(f, fields.peek().is_none())?;
                }
            }
        }
        if count != n {
            return Err(Malformed::WrongCount);
        }
        Ok(true)
    }

    /// Log the malformed lines since the last report, at most every 5 s
    /// (`force`: now, e.g. on close).
    fn report(&mut self, device: &str, port: &str, force: bool) {
        if self.malformed_total == self.reported_total
            || (!force && self.last_report.is_some_and(|t| t.elapsed() < REPORT_EVERY))
        {
            return;
        }
        tracing::warn!(
            device,
            port,
            skipped = self.malformed_total - self.reported_total,
            malformed_total = self.malformed_total,
            last_reason = self.last_reason.map_or("", Malformed::as_str),
            "serial-ascii: malformed lines skipped"
        );
        self.reported_total = self.malformed_total;
        self.last_report = Some(Instant::now());
    }
}

/// The `serial-ascii` driver.
pub struct SerialAscii {
    id: String,
    cfg: SerialAsciiConnection,
    port: Option<Box<dyn SerialPort>>,
    dec: LineDecoder,
    buf: Box<[u8]>,
}

impl SerialAscii {
    pub fn new(id: &str, cfg: SerialAsciiConnection) -> Self {
        let dec = LineDecoder::new(cfg.channels, &cfg.separator);
        SerialAscii {
            id: id.to_string(),
            cfg,
            port: None,
            dec,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
        }
    }
}

impl Source for SerialAscii {
    fn open(&mut self) -> Result<StreamInfo, SourceError> {
        self.close();
        let port = serial::open_8n1(&self.cfg.port, self.cfg.baud, PORT_TIMEOUT)?;
        self.port = Some(port);
        self.dec.reset();
        Ok(StreamInfo {
            sample_rate: self.cfg.sample_rate,
            channels: self.cfg.channels,
            channel_names: default_names(self.cfg.channels),
            chunk_s: (READ_SPAN + PORT_TIMEOUT).as_secs_f64(),
        })
    }

    fn read(&mut self, sink: &mut Sink<'_>) -> Result<(), SourceError> {
        let Some(port) = self.port.as_mut() else {
            return Err(SourceError::Unavailable("read before open".into()));
        };
        let started = Instant::now();
        let mut got = 0usize;
        loop {
            let n = serial::read_some(port.as_mut(), &mut self.buf, DEVICE, &self.cfg.port)?;
            if n > 0 {
                got += n;
                let t = sink.mono_now();
                self.dec
                    .feed(&self.buf[..n], t, &mut |t, v| sink.push_received(t, v));
            }
            if started.elapsed() >= READ_SPAN {
                break;
            }
        }
        serial::ensure_present(got, DEVICE, &self.cfg.port)?;
        self.dec.report(&self.id, &self.cfg.port, false);
        Ok(())
    }

    fn close(&mut self) {
        self.port = None;
        self.dec.report(&self.id, &self.cfg.port, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dec: &mut LineDecoder, input: &[u8], chunk: usize) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        for part in input.chunks(chunk) {
            dec.feed(part, 0.0, &mut |_, v: &[f32]| out.push(v.to_vec()));
        }
        out
    }

    #[test]
    fn parses_lines_and_skips_malformed_ones() {
        let mut input = b"5,6,7\n1,2,3\r\n -1.5 , 2e3,+0.25\n\n  \r\n4,5,6,\n".to_vec();
        input.extend_from_slice(b"1,2\n1,2,3,4\nx,2,3\nnan,1,2\n1,,3\n\xff\xfe,1,2\n");
        input.extend(std::iter::repeat_n(b'7', MAX_LINE + 10));
        input.extend_from_slice(b"\n7,8,9\n10,11");
        for chunk in [1, 3, 100, 10_000] {
            let mut dec = LineDecoder::new(3, ",");
            let got = run(&mut dec, &input, chunk);
            assert_eq!(
                got,
                vec![
                    vec![1.0, 2.0, 3.0],
                    vec![-1.5, 2000.0, 0.25],
                    vec![4.0, 5.0, 6.0],
                    vec![7.0, 8.0, 9.0],
                ],
                "chunk {chunk}"
            );
            // The first line ("5,6,7") may be partial: discarded.
            assert_eq!(dec.malformed_total, 7, "chunk {chunk}");
            assert_eq!(dec.last_reason, Some(Malformed::TooLong));
        }
    }

    #[test]
    fn whitespace_separator_and_exact_f32_parse() {
        let mut dec = LineDecoder::new(2, " ");
        let got = run(
            &mut dec,
            b"junk\n0.1   -3.4028235e38\n\t16777217 1e-45 \n",
            7,
        );
        // Rust's parse rounds the decimal once, to nearest f32.
        assert_eq!(got, vec![vec![0.1f32, f32::MIN], vec![16_777_216.0, 1e-45]]);
        assert_eq!(dec.malformed_total, 0);
    }

    #[test]
    fn multi_char_separator_and_reset() {
        let mut dec = LineDecoder::new(2, "; ");
        let got = run(&mut dec, b"\n1; 2\n3;4\n", 4);
        assert_eq!(got, vec![vec![1.0, 2.0]]);
        assert_eq!(dec.malformed_total, 1);
        dec.reset();
        // After a reconnect the first partial line is discarded again.
        let got = run(&mut dec, b"9; 9\n5; 6\n", 4);
        assert_eq!(got, vec![vec![5.0, 6.0]]);
    }
}
