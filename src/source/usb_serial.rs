//! USB identity of serial ports, read from sysfs (no libudev): which
//! `/dev/tty*` is a USB adapter, and its vendor / product ids and strings.
//!
//! Linux exposes every tty at `/sys/class/tty/<name>`; a tty backed by
//! hardware has a `device` link into `/sys/devices/...`. For a USB adapter
//! that link points at the USB interface (`ttyACM*`: `.../1-1/1-1:1.0`) or
//! at the usb-serial port below it (`ttyUSB*`: `.../1-1/1-1:1.0/ttyUSB0`);
//! the USB device directory above (`.../1-1`) holds `idVendor`,
//! `idProduct` (4 hex digits each), and optionally `manufacturer`,
//! `product` and `serial`. Virtual ttys (consoles, ptys) have no `device`.
//!
//! Used for messages a technician can act on (which adapters are plugged
//! in, which one is an OpenBCI dongle); nothing here is on a data path.

use std::path::{Path, PathBuf};

/// The OpenBCI Cyton's USB radio dongle: an FTDI FT231X.
pub const OPENBCI_DONGLE: (u16, u16) = (0x0403, 0x6015);

/// How many directories above the `device` link the USB device may be.
const MAX_UP: usize = 4;

/// A serial port backed by a USB device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbSerial {
    /// The tty's name, e.g. `ttyUSB0`.
    pub tty: String,
    pub vid: u16,
    pub pid: u16,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
}

impl UsbSerial {
    /// The device node, `/dev/<tty>`.
    pub fn dev_path(&self) -> PathBuf {
        Path::new("/dev").join(&self.tty)
    }

    pub fn is_openbci_dongle(&self) -> bool {
        (self.vid, self.pid) == OPENBCI_DONGLE
    }

    /// `/dev/ttyUSB0 (0403:6015 FTDI FT231X USB UART)`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} ({:04x}:{:04x}",
            self.dev_path().display(),
            self.vid,
            self.pid
        );
        for part in [&self.manufacturer, &self.product].into_iter().flatten() {
            s.push(' ');
            s.push_str(part);
        }
        if self.is_openbci_dongle() {
            s.push_str(", an OpenBCI dongle");
        }
        s.push(')');
        s
    }
}

fn read_trimmed(dir: &Path, file: &str) -> Option<String> {
    let s = std::fs::read_to_string(dir.join(file)).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn read_hex_u16(dir: &Path, file: &str) -> Option<u16> {
    u16::from_str_radix(&read_trimmed(dir, file)?, 16).ok()
}

/// The USB identity of tty `name` under the sysfs mounted at `sys`
/// (normally `/sys`); `None` for a tty that is not a USB device (or when
/// sysfs is unreadable).
pub fn usb_of(sys: &Path, name: &str) -> Option<UsbSerial> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let mut dir = std::fs::canonicalize(sys.join("class/tty").join(name).join("device")).ok()?;
    for _ in 0..=MAX_UP {
        if let (Some(vid), Some(pid)) = (
            read_hex_u16(&dir, "idVendor"),
            read_hex_u16(&dir, "idProduct"),
        ) {
            return Some(UsbSerial {
                tty: name.to_string(),
                vid,
                pid,
                manufacturer: read_trimmed(&dir, "manufacturer"),
                product: read_trimmed(&dir, "product"),
                serial: read_trimmed(&dir, "serial"),
            });
        }
        if !dir.pop() {
            break;
        }
    }
    None
}

/// Every USB serial port under the sysfs at `sys`, sorted by tty name.
pub fn list(sys: &Path) -> Vec<UsbSerial> {
    let Ok(entries) = std::fs::read_dir(sys.join("class/tty")) else {
        return Vec::new();
    };
    let mut out: Vec<UsbSerial> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| usb_of(sys, &e.file_name().to_string_lossy()))
        .collect();
    out.sort_by(|a, b| a.tty.cmp(&b.tty));
    out
}

/// The tty name behind a port path (`/dev/ttyUSB0`, or a link such as
/// `/dev/serial/by-id/usb-FTDI_...-if00-port0` to it).
pub fn tty_name(port: &Path) -> Option<String> {
    let real = std::fs::canonicalize(port).unwrap_or_else(|_| port.to_path_buf());
    Some(real.file_name()?.to_string_lossy().into_owned())
}

/// A sentence listing the USB serial adapters plugged in (for an error
/// about a port that would not open), from the sysfs at `sys`.
pub fn present_hint(sys: &Path) -> String {
    let found = list(sys);
    if found.is_empty() {
        return "no USB serial adapter is plugged in".into();
    }
    let list: Vec<String> = found.iter().map(UsbSerial::describe).collect();
    format!("USB serial adapters plugged in: {}", list.join(", "))
}

/// For a Cyton that did not answer on `port`: whether `port` is an OpenBCI
/// dongle, and where the dongles are (`None` when `port` is one, or when
/// nothing useful can be said, e.g. a pty).
pub fn dongle_hint(sys: &Path, port: &Path) -> Option<String> {
    let this = tty_name(port).and_then(|n| usb_of(sys, &n));
    if this.as_ref().is_some_and(UsbSerial::is_openbci_dongle) {
        return None;
    }
    let (vid, pid) = OPENBCI_DONGLE;
    let dongles: Vec<String> = list(sys)
        .iter()
        .filter(|u| u.is_openbci_dongle())
        .map(|u| u.dev_path().display().to_string())
        .collect();
    let elsewhere = match dongles.as_slice() {
        [] => String::new(),
        [one] => format!("; an OpenBCI dongle is at {one}"),
        many => format!("; OpenBCI dongles are at {}", many.join(", ")),
    };
    match this {
        Some(u) => Some(format!(
            "{} is {}, not an OpenBCI dongle ({vid:04x}:{pid:04x}){elsewhere}",
            port.display(),
            u.describe()
        )),
        None if !elsewhere.is_empty() => Some(elsewhere[2..].to_string()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A sysfs-like tree: a USB FTDI adapter (ttyUSB0, usb-serial layout),
    /// a USB CDC-ACM device (ttyACM0), a platform UART (ttyS0) and a
    /// virtual console (tty1).
    fn fake_sys() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let usb_dev = r.join("devices/pci0000:00/0000:00:14.0/usb1/1-2");
        let ftdi_if = usb_dev.join("1-2:1.0");
        let ftdi_port = ftdi_if.join("ttyUSB0");
        fs::create_dir_all(ftdi_port.join("tty/ttyUSB0")).unwrap();
        fs::write(usb_dev.join("idVendor"), "0403\n").unwrap();
        fs::write(usb_dev.join("idProduct"), "6015\n").unwrap();
        fs::write(usb_dev.join("manufacturer"), "FTDI\n").unwrap();
        fs::write(usb_dev.join("product"), "FT231X USB UART\n").unwrap();
        fs::write(usb_dev.join("serial"), "DM00ABCD\n").unwrap();
        // The interface has ids of its own kind, not idVendor.
        fs::write(ftdi_if.join("bInterfaceClass"), "ff\n").unwrap();

        let acm_dev = r.join("devices/pci0000:00/0000:00:14.0/usb1/1-3");
        let acm_if = acm_dev.join("1-3:1.0");
        fs::create_dir_all(acm_if.join("tty/ttyACM0")).unwrap();
        fs::write(acm_dev.join("idVendor"), "2341\n").unwrap();
        fs::write(acm_dev.join("idProduct"), "0043\n").unwrap();

        let uart = r.join("devices/platform/serial8250/tty/ttyS0");
        fs::create_dir_all(&uart).unwrap();

        let class = r.join("class/tty");
        for name in ["ttyUSB0", "ttyACM0", "ttyS0", "tty1"] {
            fs::create_dir_all(class.join(name)).unwrap();
        }
        symlink(&ftdi_port, class.join("ttyUSB0/device")).unwrap();
        symlink(&acm_if, class.join("ttyACM0/device")).unwrap();
        symlink(
            r.join("devices/platform/serial8250"),
            class.join("ttyS0/device"),
        )
        .unwrap();
        t
    }

    #[test]
    fn usb_ids_of_both_usb_layouts() {
        let sys = fake_sys();
        let ftdi = usb_of(sys.path(), "ttyUSB0").expect("ttyUSB0 is USB");
        assert_eq!((ftdi.vid, ftdi.pid), (0x0403, 0x6015));
        assert_eq!(ftdi.manufacturer.as_deref(), Some("FTDI"));
        assert_eq!(ftdi.product.as_deref(), Some("FT231X USB UART"));
        assert_eq!(ftdi.serial.as_deref(), Some("DM00ABCD"));
        assert!(ftdi.is_openbci_dongle());
        assert_eq!(
            ftdi.describe(),
            "/dev/ttyUSB0 (0403:6015 FTDI FT231X USB UART, an OpenBCI dongle)"
        );
        let acm = usb_of(sys.path(), "ttyACM0").expect("ttyACM0 is USB");
        assert_eq!((acm.vid, acm.pid), (0x2341, 0x0043));
        assert_eq!(acm.product, None);
        assert!(!acm.is_openbci_dongle());
        assert_eq!(acm.describe(), "/dev/ttyACM0 (2341:0043)");
    }

    #[test]
    fn non_usb_and_odd_names_are_none() {
        let sys = fake_sys();
        assert_eq!(usb_of(sys.path(), "ttyS0"), None, "platform UART");
        assert_eq!(usb_of(sys.path(), "tty1"), None, "no device link");
        assert_eq!(usb_of(sys.path(), "ttyUSB9"), None, "absent");
        assert_eq!(usb_of(sys.path(), "../ttyUSB0"), None);
        assert_eq!(usb_of(sys.path(), ""), None);
        assert_eq!(usb_of(Path::new("/nonexistent-sys"), "ttyUSB0"), None);
    }

    #[test]
    fn garbled_ids_are_not_believed() {
        let sys = fake_sys();
        let dev = sys.path().join("devices/pci0000:00/0000:00:14.0/usb1/1-3");
        fs::write(dev.join("idVendor"), "zz41\n").unwrap();
        assert_eq!(usb_of(sys.path(), "ttyACM0"), None);
    }

    #[test]
    fn list_and_hint() {
        let sys = fake_sys();
        let l = list(sys.path());
        let names: Vec<&str> = l.iter().map(|u| u.tty.as_str()).collect();
        assert_eq!(names, ["ttyACM0", "ttyUSB0"]);
        let hint = present_hint(sys.path());
        assert_eq!(
            hint,
            "USB serial adapters plugged in: /dev/ttyACM0 (2341:0043), \
             /dev/ttyUSB0 (0403:6015 FTDI FT231X USB UART, an OpenBCI dongle)"
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            present_hint(empty.path()),
            "no USB serial adapter is plugged in"
        );
    }

    #[test]
    fn dongle_hint_names_the_right_port() {
        let sys = fake_sys();
        assert_eq!(dongle_hint(sys.path(), Path::new("/dev/ttyUSB0")), None);
        assert_eq!(
            dongle_hint(sys.path(), Path::new("/dev/ttyACM0")).as_deref(),
            Some(
                "/dev/ttyACM0 is /dev/ttyACM0 (2341:0043), not an OpenBCI dongle (0403:6015); \
                 an OpenBCI dongle is at /dev/ttyUSB0"
            )
        );
        assert_eq!(
            dongle_hint(sys.path(), Path::new("/dev/pts/7")).as_deref(),
            Some("an OpenBCI dongle is at /dev/ttyUSB0")
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(dongle_hint(empty.path(), Path::new("/dev/pts/7")), None);
    }

    #[test]
    fn tty_name_follows_links() {
        let t = tempfile::tempdir().unwrap();
        let node = t.path().join("ttyUSB3");
        fs::write(&node, "").unwrap();
        let link = t
            .path()
            .join("usb-FTDI_FT231X_USB_UART_DM00ABCD-if00-port0");
        symlink(&node, &link).unwrap();
        assert_eq!(tty_name(&link).as_deref(), Some("ttyUSB3"));
        assert_eq!(
            tty_name(Path::new("/dev/ttyUSB7")).as_deref(),
            Some("ttyUSB7")
        );
    }
}
