//! The scope's threads on the status socket: one polls `status` about once
//! a second, one holds the subscription (and resubscribes when told to, or
//! when the daemon went away and came back), and a short-lived one per
//! `mark`. They talk to the UI loop through a bounded channel only.

use super::app::Action;
use crate::control::client;
use crate::control::report::StatusReport;
use crate::control::subscribe::{FrameLine, HeaderLine};
use crate::view::Signal;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Lines per second the scope asks for (its frame rate).
pub const VIEW_HZ: u32 = 30;
const STATUS_EVERY: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_secs(1);

/// What the threads tell the UI.
pub enum Msg {
    Status(Box<Result<StatusReport, String>>),
    Header(HeaderLine),
    Frame(FrameLine),
    /// The subscription was refused, ended or lost (it is retried).
    ViewNote(String),
    Marked(Result<String, String>),
}

enum SubCmd {
    Subscribe { device: String, signal: Signal },
}

pub struct Links {
    socket: PathBuf,
    pub rx: Receiver<Msg>,
    tx: Sender<Msg>,
    sub: Sender<SubCmd>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Links {
    pub fn start(socket: PathBuf) -> std::io::Result<Links> {
        let (tx, rx) = crossbeam_channel::bounded(4096);
        let (sub, sub_rx) = crossbeam_channel::bounded(16);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (socket, tx, stop) = (socket.clone(), tx.clone(), stop.clone());
            std::thread::Builder::new()
                .name("scope-status".into())
                .spawn(move || poll_status(&socket, &tx, &stop))?
        };
        let subscriber = {
            let (socket, tx, stop) = (socket.clone(), tx.clone(), stop.clone());
            std::thread::Builder::new()
                .name("scope-view".into())
                .spawn(move || subscription(&socket, &tx, &sub_rx, &stop))?
        };
        Ok(Links {
            socket,
            rx,
            tx,
            sub,
            stop,
            threads: vec![poller, subscriber],
        })
    }

    /// Carry out what the UI asked for (not `Quit`).
    pub fn act(&self, a: Action) {
        match a {
            Action::Subscribe { device, signal } => {
                let _ = self.sub.try_send(SubCmd::Subscribe { device, signal });
            }
            Action::Mark { device, text } => {
                let (socket, tx) = (self.socket.clone(), self.tx.clone());
                let _ = std::thread::Builder::new()
                    .name("scope-mark".into())
                    .spawn(move || {
                        let _ = tx.send(Msg::Marked(mark(&socket, &device, &text)));
                    });
            }
            Action::Quit => {}
        }
    }

    /// Ask the threads to end and wait for them (each notices within
    /// ~200 ms).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = std::time::Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = std::time::Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

fn poll_status(socket: &std::path::Path, tx: &Sender<Msg>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let r = client::status(socket).map_err(|e| e.to_string());
        if tx.send(Msg::Status(Box::new(r))).is_err() {
            return;
        }
        sleep_unless(stop, STATUS_EVERY);
    }
}

/// `mark DEVICE TEXT`: the daemon's answer as a line for the UI.
fn mark(socket: &std::path::Path, device: &str, text: &str) -> Result<String, String> {
    let req = serde_json::json!({"cmd": "mark", "device": device, "text": text});
    let reply = client::request(socket, &req.to_string()).map_err(|e| e.to_string())?;
    if let Some(e) = reply.get("error").and_then(Value::as_str) {
        let hint = reply
            .get("hint")
            .and_then(Value::as_str)
            .map(|h| format!(" (hint: {h})"))
            .unwrap_or_default();
        return Err(format!("mark refused: {e}{hint}"));
    }
    Ok(format!(
        "marker {text:?} added to {device} at {:.3}",
        reply.get("t").and_then(Value::as_f64).unwrap_or(0.0)
    ))
}

/// Hold the wanted subscription until told otherwise or stopped.
fn subscription(
    socket: &std::path::Path,
    tx: &Sender<Msg>,
    cmds: &Receiver<SubCmd>,
    stop: &AtomicBool,
) {
    let mut want: Option<(String, Signal)> = None;
    while !stop.load(Ordering::Relaxed) {
        // The newest command wins.
        while let Ok(SubCmd::Subscribe { device, signal }) = cmds.try_recv() {
            want = Some((device, signal));
        }
        let Some((device, signal)) = want.clone() else {
            match cmds.recv_timeout(Duration::from_millis(200)) {
                Ok(SubCmd::Subscribe { device, signal }) => want = Some((device, signal)),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                Err(_) => {}
            }
            continue;
        };
        match stream(socket, &device, signal, tx, cmds, stop) {
            Ended::Replaced(d, s) => want = Some((d, s)),
            Ended::Stopped => return,
            Ended::Retry(note) => {
                if tx.send(Msg::ViewNote(note)).is_err() {
                    return;
                }
                // Wait before retrying, but follow a new choice at once.
                match cmds.recv_timeout(RETRY) {
                    Ok(SubCmd::Subscribe { device, signal }) => want = Some((device, signal)),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    Err(_) => {}
                }
            }
        }
    }
}

enum Ended {
    Replaced(String, Signal),
    Stopped,
    Retry(String),
}

fn stream(
    socket: &std::path::Path,
    device: &str,
    signal: Signal,
    tx: &Sender<Msg>,
    cmds: &Receiver<SubCmd>,
    stop: &AtomicBool,
) -> Ended {
    let s = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return Ended::Retry(format!("cannot connect to {}: {e}", socket.display())),
    };
    if let Err(e) = s.set_read_timeout(Some(Duration::from_millis(200))) {
        return Ended::Retry(e.to_string());
    }
    let req = format!("subscribe {device} {} hz {VIEW_HZ}\n", signal.as_str());
    if let Err(e) = (&s).write_all(req.as_bytes()) {
        return Ended::Retry(e.to_string());
    }
    let mut r = BufReader::with_capacity(64 * 1024, &s);
    let mut line = Vec::with_capacity(16 * 1024);
    let mut header_seen = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ended::Stopped;
        }
        if let Ok(SubCmd::Subscribe { device, signal }) = cmds.try_recv() {
            return Ended::Replaced(device, signal);
        }
        match r.read_until(b'\n', &mut line) {
            Ok(0) => return Ended::Retry("the daemon closed the view; resubscribing".into()),
            Ok(_) if line.ends_with(b"\n") => {}
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                // Partial data stays in `line`.
                continue;
            }
            Err(e) => return Ended::Retry(format!("view connection lost: {e}")),
        }
        let msg = if header_seen {
            match serde_json::from_slice::<FrameLine>(&line) {
                Ok(f) => Some(Msg::Frame(f)),
                Err(_) => end_or_error(&line).map(Msg::ViewNote),
            }
        } else {
            match serde_json::from_slice::<HeaderLine>(&line) {
                Ok(h) => {
                    header_seen = true;
                    Some(Msg::Header(h))
                }
                Err(_) => {
                    let note = end_or_error(&line)
                        .unwrap_or_else(|| "the daemon sent an unreadable view header".into());
                    line.clear();
                    return Ended::Retry(note);
                }
            }
        };
        line.clear();
        match msg {
            Some(Msg::ViewNote(n)) => return Ended::Retry(n),
            Some(m) => match tx.try_send(m) {
                // The UI is behind: skip a frame rather than wait.
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return Ended::Stopped,
            },
            None => {}
        }
    }
}

/// The text of an `{"error", "hint"}` or `{"end"}` line.
fn end_or_error(line: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(line).ok()?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        let hint = v.get("hint").and_then(Value::as_str).unwrap_or("");
        return Some(format!("{e} ({hint})"));
    }
    v.get("end")
        .and_then(Value::as_str)
        .map(|e| format!("view ended: {e}; resubscribing"))
}
