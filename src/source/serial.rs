//! What the serial drivers (`openbci-cyton`, `serial-ascii`) share: opening
//! a port 8N1 with messages a technician can act on, one bounded read, and
//! telling an unplugged adapter from a quiet one.

use super::{usb_serial, SourceError};
use serialport::{ClearBuffer, DataBits, FlowControl, Parity, SerialPort, StopBits};
use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

/// Where sysfs is mounted (USB ids of serial adapters, see [`usb_serial`]).
pub const SYS: &str = "/sys";

/// Open `path` at `baud`, 8N1 without flow control, reads returning after
/// `timeout` at the latest; input queued before we listened is dropped
/// (it would get wrong receive times).
pub fn open_8n1(
    path: &str,
    baud: u32,
    timeout: Duration,
) -> Result<Box<dyn SerialPort>, SourceError> {
    let port = serialport::new(path, baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .timeout(timeout)
        .open()
        .map_err(|e| SourceError::Unavailable(open_error(path, &e)))?;
    let _ = port.clear(ClearBuffer::Input);
    Ok(port)
}

/// A technician's message for a port that would not open.
pub fn open_error(path: &str, e: &serialport::Error) -> String {
    // Which USB adapters are there (sysfs), for a port that is not.
    let present = || usb_serial::present_hint(Path::new(SYS));
    let hint = match e.kind {
        serialport::ErrorKind::NoDevice => {
            format!("is the device plugged in? {}", present())
        }
        serialport::ErrorKind::Io(ErrorKind::NotFound) => {
            format!("no such device: is it plugged in, and is the path right? {}", present())
        }
        serialport::ErrorKind::Io(ErrorKind::PermissionDenied) => {
            "permission denied: add the daemon's user to the dialout group (usermod -aG dialout USER)".into()
        }
        _ if e.description.contains("busy") || e.description.contains("Resource") => {
            "another program (OpenBCI GUI, a terminal) may hold the port; close it".into()
        }
        _ => "check the port path and that no other program uses it".into(),
    };
    format!("cannot open serial port {path}: {e} ({hint})")
}

/// One read into `buf`: the bytes read, 0 when the port's timeout passed
/// with nothing. End of file or a read error means the adapter is gone
/// (`device` names it in the message, e.g. "OpenBCI Cyton"; formatted only
/// then, so the read loop allocates nothing).
pub fn read_some(
    port: &mut dyn SerialPort,
    buf: &mut [u8],
    device: &str,
    path: &str,
) -> Result<usize, SourceError> {
    match port.read(buf) {
        Ok(0) => Err(SourceError::Disconnected(format!(
            "{device} on {path}: the serial port reported end of file (unplugged?)"
        ))),
        Ok(n) => Ok(n),
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => Ok(0),
        Err(e) => Err(SourceError::Disconnected(format!(
            "{device} on {path}: read failed: {e} (unplugged?)"
        ))),
    }
}

/// After a read span that brought nothing: a port whose device node has
/// vanished was unplugged (a pty or some USB adapters just go quiet).
pub fn ensure_present(got: usize, device: &str, path: &str) -> Result<(), SourceError> {
    if got == 0 && !std::path::Path::new(path).exists() {
        return Err(SourceError::Disconnected(format!(
            "{device}: serial port {path} is gone (unplugged?)"
        )));
    }
    Ok(())
}

/// A serial port setting must name a device.
pub fn check_port(out: &mut crate::validate::Findings, port: &str) {
    if port.trim().is_empty() {
        out.bad(
            "port",
            "serial port is empty",
            "set port = \"/dev/ttyUSB0\" (or the device's path)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_port_is_unavailable_with_a_hint() {
        match open_8n1(
            "/dev/neuroedge-no-such-port",
            115_200,
            Duration::from_millis(10),
        ) {
            Err(SourceError::Unavailable(m)) => {
                assert!(m.contains("/dev/neuroedge-no-such-port"), "{m}");
                assert!(m.contains("plugged in"), "{m}");
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("opened a port that does not exist"),
        }
    }

    #[test]
    fn vanished_port_after_silence_is_disconnected() {
        assert!(ensure_present(0, "x", "/dev/null").is_ok());
        assert!(ensure_present(10, "x", "/dev/neuroedge-gone").is_ok());
        match ensure_present(0, "ASCII device", "/dev/neuroedge-gone") {
            Err(SourceError::Disconnected(m)) => assert!(m.contains("is gone"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
