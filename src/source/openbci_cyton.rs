//! OpenBCI Cyton (and Cyton + Daisy) over its USB radio dongle.
//!
//! Protocol facts relied on (OpenBCI "Cyton Data Format" and "Cyton Board
//! SDK" documentation):
//!
//! - The dongle is an FTDI serial port, 115200 baud, 8N1.
//! - `v` soft-resets the board; it answers with a few lines of text (board
//!   name, ADS1299 / LIS3DH ids, firmware version; a line naming the Daisy
//!   ADS1299 when one is attached) ending in `$$$`. `b` starts streaming,
//!   `s` stops it (neither is confirmed).
//! - `C` selects 16 channels and answers `16$$$`, `daisy attached16$$$` or
//!   `no daisy to attach!8$$$`; `c` selects 8 channels and answers
//!   `daisy removed$$$` only when a Daisy was in use (nothing otherwise). On
//!   reset the board uses a Daisy it finds, so 8-channel mode sends `c`.
//! - A packet is 33 bytes: 0xA0, a sample counter (u8, wrapping), 8
//!   channels of 24-bit two's complement big-endian counts, 6 aux bytes, and
//!   a footer 0xC0..=0xC6 (0xC0 accelerometer, 0xC1..0xC6 raw aux / time
//!   stamps; the EEG bytes are the same in every variant).
//! - Scale: 4.5 V / gain / (2^23 - 1) per count; the firmware's default gain
//!   is 24.
//! - With a Daisy, packets still come at 250 per second and alternate: the
//!   Cyton's own ADS1299 (channels 1-8) on odd sample numbers, the Daisy's
//!   (channels 9-16) on even ones, each the average of the chip's two latest
//!   samples; the very first packet (number 0) is invalid. We pair an odd
//!   packet `2k+1` with the even packet `2k+2` that follows it into one
//!   16-channel frame at 125 Hz (so the pair (255, 0) straddles the counter
//!   wrap), which is how BrainFlow pairs them too. A frame missing either
//!   half is lost as a whole and counted in the gap before the next frame;
//!   frame counters wrap every 128 frames.
//!
//! The decoder resynchronises after garbage: it scans for 0xA0 and accepts
//! a candidate when byte 33 is a footer and either its counter continues the
//! stream (the previous packet's + 1) or the byte after it is the next
//! packet's 0xA0 (such a candidate waits for that byte: after a counter jump
//! the packet is believed one byte later). Skipped bytes are counted and
//! reported at most once a second; nothing here is fatal.

use super::{default_names, serial, Sink, Source, SourceError, StreamInfo};
use super::{BuildContext, DriverConfig};
use crate::validate::Findings;
use serde::Deserialize;
use serialport::{ClearBuffer, SerialPort};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

fn default_baud() -> u32 {
    115_200
}

/// `[connection]` of the OpenBCI Cyton driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CytonConnection {
    /// Serial port of the USB dongle, e.g. "/dev/ttyUSB0".
    pub port: String,
    /// Daisy module attached: 16 channels at half rate.
    #[serde(default)]
    pub daisy: bool,
    #[serde(default = "default_baud")]
    pub baud: u32,
}

/// Rate and channels: 250 Hz × 8, or 125 Hz × 16 with the Daisy module.
pub const fn layout(daisy: bool) -> (f64, usize) {
    if daisy {
        (125.0, 16)
    } else {
        (250.0, 8)
    }
}

impl DriverConfig for CytonConnection {
    const NAME: &'static str = "openbci-cyton";

    fn validate(&self, out: &mut Findings) {
        super::serial::check_port(out, &self.port);
        if self.baud == 0 {
            out.bad("baud", "baud must be positive", "the Cyton uses 115200");
        }
    }

    fn declared_layout(&self) -> Option<(f64, usize)> {
        Some(layout(self.daisy))
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(Cyton::new(ctx.device_id, self.clone())))
    }
}

/// Bytes per packet.
pub const PACKET_LEN: usize = 33;
const HEADER: u8 = 0xA0;
/// µV per count at the default gain 24: 4.5 V / 24 / (2^23 - 1), in µV.
pub const SCALE_UV: f64 = 4.5 / 24.0 / 8_388_607.0 * 1e6;

/// The serial read timeout: short, so `read` returns promptly.
const PORT_TIMEOUT: Duration = Duration::from_millis(50);
/// A `read` call collects about this long before returning, so that each
/// ring block carries a useful run of frames.
const READ_SPAN: Duration = Duration::from_millis(40);
/// How the driver names the device in messages.
const DEVICE: &str = "OpenBCI Cyton";
/// How long the board may take to answer the soft reset.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the answer to `C` / `c`.
const MODE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for `daisy removed$$$` after `c` when the banner named
/// no Daisy (the board then says nothing).
const MODE_QUIET: Duration = Duration::from_millis(300);
/// Skipped bytes are reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Serial read buffer.
const BUF_LEN: usize = 4096;

#[inline]
fn is_footer(b: u8) -> bool {
    (0xC0..=0xC6).contains(&b)
}

/// A 24-bit two's complement big-endian value.
#[inline]
pub fn counts24(b: &[u8]) -> i32 {
    let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
    ((v << 8) as i32) >> 8
}

/// Counts to µV, rounded once to f32.
#[inline]
pub fn to_uv(counts: i32) -> f32 {
    (f64::from(counts) * SCALE_UV) as f32
}

/// Where decoded frames go: the [`Sink`] in the daemon, a recorder in the
/// unit tests (public for the decode benchmark).
pub trait FrameOut {
    fn push(&mut self, received: f64, values: &[f32]);
    fn missing(&self, received: f64, counted: u64, modulus: u64) -> u64;
    fn skip(&mut self, missing: u64);
}

impl FrameOut for Sink<'_> {
    #[inline]
    fn push(&mut self, received: f64, values: &[f32]) {
        self.push_received(received, values);
    }
    fn missing(&self, received: f64, counted: u64, modulus: u64) -> u64 {
        self.missing_with_wraps(received, counted, modulus)
    }
    fn skip(&mut self, missing: u64) {
        Sink::skip(self, missing);
    }
}

/// Byte stream -> frames. Allocates only in [`Decoder::new`].
pub struct Decoder {
    daisy: bool,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// `end` before the latest read: packets ending at or before it were
    /// completed by the read before.
    old_end: usize,
    /// Monotonic times of the latest and the previous non-empty read.
    read_t: f64,
    prev_read_t: f64,
    last_packet: Option<u8>,
    /// Counter of the last frame delivered (packet counter; Daisy: frame
    /// counter 0..128).
    last_frame: Option<u8>,
    /// Daisy: the frame counter whose board half (channels 1-8) is in
    /// `frame[..8]`, waiting for its Daisy half.
    pending: Option<u8>,
    frame: [f32; 16],
    skipped_bytes: u64,
    bad_candidates: u64,
    lost_halves: u64,
    reported: (u64, u64, u64),
    last_report: Option<Instant>,
}

impl Decoder {
    pub fn new(daisy: bool) -> Self {
        Decoder {
            daisy,
            buf: vec![0u8; BUF_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            old_end: 0,
            read_t: f64::NAN,
            prev_read_t: f64::NAN,
            last_packet: None,
            last_frame: None,
            pending: None,
            frame: [0.0; 16],
            skipped_bytes: 0,
            bad_candidates: 0,
            lost_halves: 0,
            reported: (0, 0, 0),
            last_report: None,
        }
    }

    /// A new connection: forget the stream position, keep the counters.
    fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.old_end = 0;
        self.last_packet = None;
        self.last_frame = None;
        self.pending = None;
    }

    fn channels(&self) -> usize {
        if self.daisy {
            16
        } else {
            8
        }
    }

    /// Free space to read into (unconsumed bytes moved to the front).
    pub fn space(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Decoder::space`] at monotonic time `t`.
    pub fn received(&mut self, n: usize, t: f64) {
        self.old_end = self.end;
        self.end += n;
        self.prev_read_t = self.read_t;
        self.read_t = t;
    }

    #[inline]
    fn skip_bytes(&mut self, n: usize) {
        self.start += n;
        self.skipped_bytes += n as u64;
    }

    /// Decode every packet the buffer holds.
    pub fn decode(&mut self, out: &mut impl FrameOut) {
        loop {
            let avail = &self.buf[self.start..self.end];
            if avail.is_empty() {
                return;
            }
            if avail[0] != HEADER {
                let n = avail
                    .iter()
                    .position(|&b| b == HEADER)
                    .unwrap_or(avail.len());
                self.skip_bytes(n);
                continue;
            }
            if avail.len() < PACKET_LEN {
                return;
            }
            if !is_footer(avail[PACKET_LEN - 1]) {
                self.bad_candidates += 1;
                self.skip_bytes(1);
                continue;
            }
            let continues = Some(avail[1]) == self.last_packet.map(|c| c.wrapping_add(1));
            if !continues {
                // Not plainly the next packet (a loss, or a header-like byte
                // in garbage): believe it only if the next one starts right
                // after it.
                match avail.get(PACKET_LEN) {
                    None => return,
                    Some(&HEADER) => {}
                    Some(_) => {
                        self.bad_candidates += 1;
                        self.skip_bytes(1);
                        continue;
                    }
                }
            }
            let end = self.start + PACKET_LEN;
            let t = if end <= self.old_end {
                self.prev_read_t
            } else {
                self.read_t
            };
            let mut packet = [0u8; PACKET_LEN];
            packet.copy_from_slice(&self.buf[self.start..end]);
            self.start = end;
            self.last_packet = Some(packet[1]);
            self.packet(&packet, t, out);
        }
    }

    #[inline]
    fn read_channels(packet: &[u8; PACKET_LEN], into: &mut [f32]) {
        for (c, v) in into.iter_mut().enumerate() {
            *v = to_uv(counts24(&packet[2 + 3 * c..5 + 3 * c]));
        }
    }

    #[inline]
    fn packet(&mut self, packet: &[u8; PACKET_LEN], t: f64, out: &mut impl FrameOut) {
        let counter = packet[1];
        if !self.daisy {
            Self::read_channels(packet, &mut self.frame[..8]);
            self.deliver(counter, 256, t, out);
            return;
        }
        if counter % 2 == 1 {
            // Channels 1-8 of frame (counter - 1) / 2.
            if self.pending.is_some() {
                self.lost_halves += 1;
            }
            Self::read_channels(packet, &mut self.frame[..8]);
            self.pending = Some((counter - 1) / 2);
        } else {
            // Channels 9-16 of frame (counter - 2) / 2 (counter 0 closes
            // frame 127).
            let k = counter.wrapping_sub(2) / 2;
            match self.pending.take() {
                Some(p) if p == k => {
                    Self::read_channels(packet, &mut self.frame[8..]);
                    self.deliver(k, 128, t, out);
                }
                Some(_) => self.lost_halves += 2,
                // The first packet of a stream (number 0) is invalid by
                // design; later, a Daisy half whose board half was lost.
                None if self.last_frame.is_some() => self.lost_halves += 1,
                None => {}
            }
        }
    }

    /// Frame `counter` (wrapping at `modulus`) is complete in `self.frame`.
    #[inline]
    fn deliver(&mut self, counter: u8, modulus: u64, t: f64, out: &mut impl FrameOut) {
        if let Some(last) = self.last_frame {
            let counted = (u64::from(counter) + modulus - u64::from(last) - 1) % modulus;
            if counted > 0 {
                // 0 when time shows the count was a garbled counter.
                let missing = out.missing(t, counted, modulus);
                if missing > 0 {
                    out.skip(missing);
                }
            }
        }
        self.last_frame = Some(counter);
        let n = self.channels();
        out.push(t, &self.frame[..n]);
    }

    /// Log what was skipped since the last report, at most once a second.
    fn report(&mut self, device: &str) {
        let now = (self.skipped_bytes, self.bad_candidates, self.lost_halves);
        if now == self.reported || self.last_report.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return;
        }
        tracing::warn!(
            device,
            skipped_bytes = now.0 - self.reported.0,
            rejected_headers = now.1 - self.reported.1,
            lost_daisy_halves = now.2 - self.reported.2,
            skipped_bytes_total = now.0,
            "openbci-cyton: garbled bytes in the stream skipped (resynchronised on the next valid packet)"
        );
        self.reported = now;
        self.last_report = Some(Instant::now());
    }
}

/// The `openbci-cyton` driver.
pub struct Cyton {
    id: String,
    cfg: CytonConnection,
    port: Option<Box<dyn SerialPort>>,
    dec: Decoder,
}

impl Cyton {
    pub fn new(id: &str, cfg: CytonConnection) -> Self {
        let dec = Decoder::new(cfg.daisy);
        Cyton {
            id: id.to_string(),
            cfg,
            port: None,
            dec,
        }
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> SourceError {
        SourceError::Unavailable(format!("OpenBCI Cyton on {}: {what}: {e}", self.cfg.port))
    }

    /// Open the port and bring the board to streaming.
    fn connect(&mut self) -> Result<Box<dyn SerialPort>, SourceError> {
        let path = &self.cfg.port;
        let mut port = serial::open_8n1(path, self.cfg.baud, PORT_TIMEOUT)?;
        // Stop a stream left running by an earlier session, drop its bytes.
        send(&mut port, b's').map_err(|e| self.unavailable("cannot write", e))?;
        std::thread::sleep(Duration::from_millis(100));
        let _ = port.clear(ClearBuffer::Input);
        send(&mut port, b'v').map_err(|e| self.unavailable("cannot write", e))?;
        let banner = match read_until_ready(&mut port, RESET_TIMEOUT)
            .map_err(|e| self.unavailable("read failed during reset", e))?
        {
            Some(b) => b,
            None => {
                // Is this port the dongle at all? (USB ids from sysfs.)
                let which = super::usb_serial::dongle_hint(
                    std::path::Path::new(serial::SYS),
                    std::path::Path::new(path),
                )
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
                return Err(SourceError::Unavailable(format!(
                    "OpenBCI Cyton on {path}: no answer to the soft reset 'v' within {} s{which}; \
                     is the board switched on (PC position), the dongle switch on GPIO_6, \
                     and are board and dongle on the same radio channel?",
                    RESET_TIMEOUT.as_secs()
                )));
            }
        };
        let banner_daisy = banner.contains("Daisy");
        tracing::info!(device = %self.id, port = %path, firmware = %banner_line(&banner, "Firmware"), daisy_found = banner_daisy, "openbci-cyton: board answered the reset");
        if self.cfg.daisy {
            send(&mut port, b'C').map_err(|e| self.unavailable("cannot write", e))?;
            let reply = read_until_ready(&mut port, MODE_TIMEOUT)
                .map_err(|e| self.unavailable("read failed", e))?;
            match reply {
                Some(r) if r.to_ascii_lowercase().contains("no daisy") => {
                    return Err(SourceError::Unavailable(format!(
                        "OpenBCI Cyton on {path}: the device file sets daisy = true but the board reports no Daisy module \
                         (\"{}\"); seat the Daisy board or set daisy = false",
                        r.trim()
                    )))
                }
                Some(_) => {}
                None => {
                    return Err(SourceError::Unavailable(format!(
                        "OpenBCI Cyton on {path}: no answer to 'C' (16 channels) within {} s",
                        MODE_TIMEOUT.as_secs()
                    )))
                }
            }
        } else {
            // A board that found a Daisy on reset streams 16 channels
            // unless told otherwise; without one, `c` is not answered.
            send(&mut port, b'c').map_err(|e| self.unavailable("cannot write", e))?;
            let wait = if banner_daisy {
                MODE_TIMEOUT
            } else {
                MODE_QUIET
            };
            read_until_ready(&mut port, wait).map_err(|e| self.unavailable("read failed", e))?;
        }
        let _ = port.clear(ClearBuffer::Input);
        send(&mut port, b'b').map_err(|e| self.unavailable("cannot write", e))?;
        Ok(port)
    }
}

fn send(port: &mut Box<dyn SerialPort>, byte: u8) -> std::io::Result<()> {
    port.write_all(&[byte])?;
    port.flush()
}

/// Read text until the board's `$$$`; None on timeout. Allocation is fine
/// here (connecting, not streaming).
fn read_until_ready(
    port: &mut Box<dyn SerialPort>,
    within: Duration,
) -> std::io::Result<Option<String>> {
    let deadline = Instant::now() + within;
    let mut text: Vec<u8> = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while Instant::now() < deadline {
        match port.read(&mut chunk) {
            Ok(0) => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "end of file")),
            Ok(n) => {
                text.extend_from_slice(&chunk[..n]);
                if let Some(at) = text.windows(3).position(|w| w == b"$$$") {
                    text.truncate(at);
                    return Ok(Some(String::from_utf8_lossy(&text).into_owned()));
                }
                if text.len() > 16 * 1024 {
                    // Binary noise, not a banner: keep looking at the tail.
                    text.drain(..text.len() - 1024);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The value of the banner line starting with `key` ("" if none).
fn banner_line<'a>(banner: &'a str, key: &str) -> &'a str {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim_start_matches(':').trim())
        .unwrap_or("")
}

impl Source for Cyton {
    fn open(&mut self) -> Result<StreamInfo, SourceError> {
        self.close();
        let port = self.connect()?;
        self.port = Some(port);
        self.dec.reset();
        let (sample_rate, channels) = if self.cfg.daisy {
            (125.0, 16)
        } else {
            (250.0, 8)
        };
        Ok(StreamInfo {
            sample_rate,
            channels,
            channel_names: default_names(channels),
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
            let n = serial::read_some(port.as_mut(), self.dec.space(), DEVICE, &self.cfg.port)?;
            if n > 0 {
                got += n;
                self.dec.received(n, sink.mono_now());
                self.dec.decode(sink);
            }
            if started.elapsed() >= READ_SPAN {
                break;
            }
        }
        serial::ensure_present(got, DEVICE, &self.cfg.port)?;
        self.dec.report(&self.id);
        Ok(())
    }

    fn close(&mut self) {
        if let Some(mut port) = self.port.take() {
            // Best effort: the port may already be gone.
            let _ = send(&mut port, b's');
        }
        self.dec.report(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Timing;

    /// Records frames and gaps; wraps estimated by a real [`Timing`], as
    /// the [`Sink`] does.
    struct Recorder {
        timing: Timing,
        next: u64,
        frames: Vec<(u64, f64, Vec<f32>)>,
        gaps: Vec<(u64, u64)>,
    }

    impl Recorder {
        fn new(rate: f64) -> Self {
            Recorder {
                timing: Timing::new(rate),
                next: 0,
                frames: Vec::new(),
                gaps: Vec::new(),
            }
        }
    }

    impl FrameOut for Recorder {
        fn push(&mut self, received: f64, values: &[f32]) {
            self.timing.stamp_received(self.next, received);
            self.frames.push((self.next, received, values.to_vec()));
            self.next += 1;
        }
        fn missing(&self, received: f64, counted: u64, modulus: u64) -> u64 {
            self.timing
                .missing_with_wraps(self.next, received, counted, modulus)
        }
        fn skip(&mut self, missing: u64) {
            self.gaps.push((self.next, missing));
            self.next += missing;
        }
    }

    fn value(n: u64, c: usize) -> i32 {
        // Spread over the whole 24-bit range, negative values included.
        let h = (n.wrapping_mul(0x9E37_79B9) ^ (c as u64 + 1).wrapping_mul(0x85EB_CA77)) as u32;
        ((h << 8) as i32) >> 8
    }

    fn packet(counter: u8, values: &[i32; 8], footer: u8) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[0] = HEADER;
        p[1] = counter;
        for (c, v) in values.iter().enumerate() {
            let b = v.to_be_bytes();
            p[2 + 3 * c..5 + 3 * c].copy_from_slice(&b[1..]);
        }
        p[32] = footer;
        p
    }

    fn values8(n: u64, base: usize) -> [i32; 8] {
        std::array::from_fn(|c| value(n, base + c))
    }

    /// Feed `bytes` in reads of `chunk` bytes, arriving at 250 packets/s.
    fn feed(dec: &mut Decoder, out: &mut Recorder, bytes: &[u8], chunk: usize, t0: f64) {
        let mut at = 0usize;
        while at < bytes.len() {
            let space = dec.space();
            let n = chunk.min(space.len()).min(bytes.len() - at);
            space[..n].copy_from_slice(&bytes[at..at + n]);
            at += n;
            dec.received(n, t0 + at as f64 / PACKET_LEN as f64 * 0.004);
            dec.decode(out);
        }
    }

    #[test]
    fn counts_and_scale() {
        assert_eq!(counts24(&[0x7F, 0xFF, 0xFF]), 8_388_607);
        assert_eq!(counts24(&[0x80, 0x00, 0x00]), -8_388_608);
        assert_eq!(counts24(&[0xFF, 0xFF, 0xFF]), -1);
        assert_eq!(counts24(&[0x00, 0x00, 0x01]), 1);
        // Full scale is 4.5 V / 24 = 187500 µV.
        assert_eq!(to_uv(8_388_607), 187_500.0);
        assert!((SCALE_UV - 0.022_351_744).abs() < 1e-9);
        // One rounding, from the f64 product.
        let c = -1_234_567;
        assert_eq!(to_uv(c), (c as f64 * SCALE_UV) as f32);
    }

    #[test]
    fn decodes_packets_split_anywhere_and_counts_gaps_across_wrap() {
        let mut stream = Vec::new();
        // Packets 250..=259 with counters wrapping 255 -> 0, then 3 lost
        // (260..=262), then 263..=270.
        let mut sent = Vec::new();
        for n in (250u64..260).chain(263..271) {
            stream.extend_from_slice(&packet(n as u8, &values8(n, 0), 0xC0 + (n % 7) as u8));
            sent.push(n);
        }
        for chunk in [1, 7, 33, 40, 1000] {
            let mut dec = Decoder::new(false);
            let mut out = Recorder::new(250.0);
            feed(&mut dec, &mut out, &stream, chunk, 10.0);
            // Resync rule: the very last packet waits for a following header
            // only when it does not plainly continue the stream.
            assert_eq!(out.frames.len(), sent.len(), "chunk {chunk}");
            assert_eq!(out.gaps, vec![(10, 3)], "chunk {chunk}");
            for ((idx, _, v), n) in out.frames.iter().zip(&sent) {
                assert_eq!(*idx, n - 250);
                let want: Vec<f32> = values8(*n, 0).iter().map(|&c| to_uv(c)).collect();
                assert_eq!(v, &want);
            }
            assert_eq!(dec.skipped_bytes, 0);
        }
    }

    #[test]
    fn resyncs_after_garbage_without_losing_a_valid_packet() {
        let mut stream = Vec::new();
        let mut expect = Vec::new();
        let mut rng = 0x1234_5678u64;
        let mut noise = |n: usize, stream: &mut Vec<u8>| {
            for _ in 0..n {
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                stream.push((rng >> 33) as u8);
            }
        };
        for n in 0..200u64 {
            // (The first packet must not be followed by garbage: nothing
            // vouches for it then.)
            match (n + 1) % 5 {
                1 => noise(17 + n as usize % 50, &mut stream),
                // A truncated packet: header and counter, then the next one.
                2 => stream.extend_from_slice(&[HEADER, 0x55, 1, 2, 3]),
                // A header whose byte 33 is a footer but not followed by a
                // header (and whose counter does not continue the stream).
                3 => {
                    let mut fake = packet((n as u8).wrapping_add(100), &values8(999, 0), 0xC0);
                    fake[5] = HEADER;
                    stream.extend_from_slice(&fake[..PACKET_LEN]);
                    stream.push(0x11);
                }
                // Noise on both sides of some packets (their counters
                // continue the stream, so they need no following header).
                4 => noise(9, &mut stream),
                _ => {}
            }
            stream.extend_from_slice(&packet(n as u8, &values8(n, 0), 0xC0));
            expect.push(n);
        }
        // One more so the last real packet after garbage is confirmed.
        stream.extend_from_slice(&packet(200, &values8(200, 0), 0xC0));
        expect.push(200);
        for chunk in [1, 5, 64, 4096] {
            let mut dec = Decoder::new(false);
            let mut out = Recorder::new(250.0);
            feed(&mut dec, &mut out, &stream, chunk, 1.0);
            let got: Vec<u64> = out.frames.iter().map(|f| f.0).collect();
            assert_eq!(got, expect, "chunk {chunk}");
            assert!(out.gaps.is_empty(), "chunk {chunk}: {:?}", out.gaps);
            assert!(dec.skipped_bytes > 0 && dec.bad_candidates > 0);
            for (idx, _, v) in &out.frames {
                assert_eq!(v[3], to_uv(value(*idx, 3)));
            }
        }
    }

    #[test]
    fn receive_time_is_the_read_that_completed_the_packet() {
        let mut dec = Decoder::new(false);
        let mut out = Recorder::new(250.0);
        let p0 = packet(0, &values8(0, 0), 0xC0);
        let p1 = packet(1, &values8(1, 0), 0xC0);
        // Read 1 completes packet 0 (out of sync: waits for the next header).
        let s = dec.space();
        s[..PACKET_LEN].copy_from_slice(&p0);
        dec.received(PACKET_LEN, 1.0);
        dec.decode(&mut out);
        assert!(out.frames.is_empty());
        // Read 2 brings packet 1: packet 0 is stamped with read 1's time.
        let s = dec.space();
        s[..PACKET_LEN].copy_from_slice(&p1);
        dec.received(PACKET_LEN, 2.0);
        dec.decode(&mut out);
        assert_eq!(out.frames.len(), 2);
        assert_eq!(out.frames[0].1, 1.0);
        assert_eq!(out.frames[1].1, 2.0);
    }

    #[test]
    fn a_corrupted_counter_that_time_contradicts_is_not_a_gap() {
        let mut dec = Decoder::new(false);
        let mut out = Recorder::new(250.0);
        // Packets 0..500 on time, but packet 300's counter byte is
        // garbled to 300 + 120 (mod 256): no real loss, as time shows.
        let stream: Vec<u8> = (0..500u64)
            .flat_map(|n| {
                let c = if n == 300 { (n + 120) as u8 } else { n as u8 };
                packet(c, &values8(n, 0), 0xC0)
            })
            .collect();
        feed(&mut dec, &mut out, &stream, 33, 1.0);
        assert!(out.gaps.is_empty(), "{:?}", out.gaps);
        assert_eq!(out.frames.len(), 500);
    }

    #[test]
    fn large_loss_adds_whole_wraps_from_time() {
        let mut dec = Decoder::new(false);
        let mut out = Recorder::new(250.0);
        // 2 s of packets at 250 Hz, then 300 lost, then 1 s more.
        let mut t = 5.0;
        fn send(n: u64, dec: &mut Decoder, out: &mut Recorder, t: f64) {
            let p = packet(n as u8, &values8(n, 0), 0xC0);
            let s = dec.space();
            s[..PACKET_LEN].copy_from_slice(&p);
            dec.received(PACKET_LEN, t);
            dec.decode(out);
        }
        for n in 0..500u64 {
            send(n, &mut dec, &mut out, t);
            t += 0.004;
        }
        t += 300.0 * 0.004;
        for n in 800..1050u64 {
            send(n, &mut dec, &mut out, t);
            t += 0.004;
        }
        assert_eq!(out.gaps, vec![(500, 300)]);
        assert_eq!(out.frames.last().map(|f| f.0), Some(1049));
    }

    fn daisy_stream(packets: impl Iterator<Item = u64>) -> Vec<u8> {
        // Packet p: 0 invalid; odd 2k+1: frame k channels 1-8; even 2k+2:
        // frame k channels 9-16.
        let mut s = Vec::new();
        for p in packets {
            let v = if p == 0 {
                [0; 8]
            } else if p % 2 == 1 {
                values8((p - 1) / 2, 0)
            } else {
                values8((p - 2) / 2, 8)
            };
            s.extend_from_slice(&packet(p as u8, &v, 0xC0));
        }
        s
    }

    #[test]
    fn daisy_pairs_odd_and_even_packets_into_16_channel_frames() {
        // Packets 0..600 (frames 0..299, the counter wraps twice), with
        // packets 301, 302 (frame 150 both halves), 401 (frame 200's board
        // half) and 504 (frame 251's Daisy half) lost.
        let lost = [301u64, 302, 401, 504];
        let stream = daisy_stream((0..601).filter(|p| !lost.contains(p)));
        for chunk in [3, 33, 500] {
            let mut dec = Decoder::new(true);
            let mut out = Recorder::new(125.0);
            feed(&mut dec, &mut out, &stream, chunk, 2.0);
            let got: Vec<u64> = out.frames.iter().map(|f| f.0).collect();
            let want: Vec<u64> = (0..300).filter(|k| ![150, 200, 251].contains(k)).collect();
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(out.gaps, vec![(150, 1), (200, 1), (251, 1)]);
            for (k, _, v) in &out.frames {
                assert_eq!(v.len(), 16);
                for (c, x) in v.iter().enumerate() {
                    assert_eq!(*x, to_uv(value(*k, c)), "frame {k} ch {c}");
                }
            }
            assert_eq!(dec.lost_halves, 2);
        }
    }

    #[test]
    fn daisy_gap_counts_frames_modulo_128() {
        // 40 whole frames lost (packets 101..=180): frame counter 49 -> 90.
        // The radio loses them, so time moves on meanwhile.
        let mut dec = Decoder::new(true);
        let mut out = Recorder::new(125.0);
        feed(&mut dec, &mut out, &daisy_stream(0..101), 33, 0.0);
        feed(
            &mut dec,
            &mut out,
            &daisy_stream(181..301),
            33,
            181.0 * 0.004,
        );
        assert_eq!(out.gaps, vec![(50, 40)]);
        assert_eq!(out.frames.len(), 150 - 40);
    }

    #[test]
    fn banner_parsing() {
        let b = "OpenBCI V3 8-16 channel\nOn Board ADS1299 Device ID: 0x3E\nFirmware: v3.1.2\n";
        assert_eq!(banner_line(b, "Firmware"), "v3.1.2");
        assert_eq!(banner_line(b, "Nope"), "");
    }
}
