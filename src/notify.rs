//! systemd notifications (`sd_notify(3)`) that never block the daemon.
//!
//! The notify socket is a datagram socket that systemd (or whoever set
//! `NOTIFY_SOCKET`) reads. When it is not being read its queue fills (10
//! datagrams by default) and a blocking `send` waits forever: the daemon
//! would hang in its status task and never see SIGTERM. So the socket here
//! is non-blocking: a datagram that does not fit is dropped and counted
//! (`status` → `systemd.dropped`, metric
//! `neuroedge_systemd_notify_dropped_total`). The `sd-notify` crate sends
//! blocking and offers no other mode, hence these few lines.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static SENT: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Notifications sent and dropped (queue full, socket gone) since start.
pub fn counts() -> (u64, u64) {
    (SENT.load(Relaxed), DROPPED.load(Relaxed))
}

/// A connected, non-blocking notify socket.
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
}

impl NotifySocket {
    /// The socket named by `NOTIFY_SOCKET`, if set.
    pub fn from_env() -> Option<io::Result<Self>> {
        std::env::var_os("NOTIFY_SOCKET").map(|p| Self::connect(&p))
    }

    /// Connect to `path`; a leading `@` names an abstract socket (Linux).
    pub fn connect(path: &std::ffi::OsStr) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let sock = UnixDatagram::unbound()?;
        match path.as_bytes() {
            [b'@', name @ ..] => connect_abstract(&sock, name)?,
            _ => sock.connect(path)?,
        }
        sock.set_nonblocking(true)?;
        Ok(NotifySocket { sock })
    }

    /// Send one notification (`READY=1`, `WATCHDOG=1`, `STATUS=…`) without
    /// waiting. Returns whether it was sent; a failure is counted, never
    /// waited on.
    pub fn send(&self, msg: &str) -> bool {
        match self.sock.send(msg.as_bytes()) {
            Ok(_) => {
                SENT.fetch_add(1, Relaxed);
                true
            }
            Err(e) => {
                let n = DROPPED.fetch_add(1, Relaxed);
                // Log the first and then every 100th: a reader that went
                // away would otherwise fill the log.
                if n % 100 == 0 {
                    tracing::warn!(error = %e, dropped = n + 1, "systemd notification not sent (socket full or gone); not waiting for it");
                }
                false
            }
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn connect_abstract(sock: &UnixDatagram, name: &[u8]) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.connect_addr(&addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn connect_abstract(_: &UnixDatagram, _: &[u8]) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract notify sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn a_reader_that_never_reads_costs_drops_not_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let reader = UnixDatagram::bind(&path).unwrap();
        let n = NotifySocket::connect(path.as_os_str()).unwrap();
        let (_, dropped0) = counts();
        let start = std::time::Instant::now();
        let sent = (0..500).filter(|_| n.send("WATCHDOG=1")).count();
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        assert!((1..500).contains(&sent), "sent {sent} of 500");
        assert!(counts().1 - dropped0 >= (500 - sent) as u64);
        // What was queued arrives intact.
        let mut buf = [0u8; 64];
        let len = reader.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn abstract_names_and_missing_sockets() {
        let name = format!("neuroedge-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let reader = UnixDatagram::bind_addr(&addr).unwrap();
        let n = NotifySocket::connect(OsStr::new(&format!("@{name}"))).unwrap();
        assert!(n.send("READY=1"));
        let mut buf = [0u8; 16];
        let len = reader.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        assert!(NotifySocket::connect(OsStr::new("/nonexistent/notify.sock")).is_err());
    }
}
