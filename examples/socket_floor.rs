//! The least a live-view feed can cost the kernel: what
//! `scripts/bench_scope.py` compares the daemon's subscriber cost with.
//!
//! Listens on a unix socket, accepts CLIENTS connections, then every
//! PERIOD_MS writes BYTES bytes (newline-terminated lines of `x`) to each
//! client with one non-blocking `write` per client, until killed. It reads
//! nothing, formats nothing and allocates nothing after the start: its CPU
//! is the write system calls and the wake-ups of the readers.
//!
//!     cargo build --release --example socket_floor
//!     target/release/examples/socket_floor SOCKET CLIENTS PERIOD_MS BYTES
use std::io::Write as _;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, clients, period_ms, bytes] = args.as_slice() else {
        eprintln!("usage: socket_floor SOCKET CLIENTS PERIOD_MS BYTES");
        return ExitCode::from(2);
    };
    let (Ok(clients), Ok(period_ms), Ok(bytes)) = (
        clients.parse::<usize>(),
        period_ms.parse::<u64>(),
        bytes.parse::<usize>(),
    ) else {
        eprintln!("socket_floor: CLIENTS, PERIOD_MS and BYTES are whole numbers");
        return ExitCode::from(2);
    };
    let _ = std::fs::remove_file(socket);
    let listener = match UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("socket_floor: cannot listen on {socket}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut conns = Vec::with_capacity(clients);
    while conns.len() < clients {
        match listener.accept() {
            Ok((c, _)) if c.set_nonblocking(true).is_ok() => conns.push(c),
            Ok(_) => {}
            Err(e) => {
                eprintln!("socket_floor: accept: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Lines of about 200 bytes, like the feed's frames at 8 channels.
    let mut payload = vec![b'x'; bytes.max(1)];
    for i in (199..payload.len()).step_by(200) {
        payload[i] = b'\n';
    }
    if let Some(last) = payload.last_mut() {
        *last = b'\n';
    }
    let period = Duration::from_millis(period_ms.max(1));
    let mut next = Instant::now();
    loop {
        next += period;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        // A reader that went away or fell behind is skipped, not waited for.
        conns.retain_mut(|c| match c.write(&payload) {
            Ok(n) => n > 0,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        });
        if conns.is_empty() {
            return ExitCode::SUCCESS;
        }
    }
}
