//! `neuroedge scope`: the technician's live view in a terminal (contract
//! §12). Per device a scrolling min/max trace per channel from the
//! socket's `subscribe` stream, each channel's quality, RMS, line-noise
//! ratio and band-power bars from the typed status report (polled about
//! once a second), with rate, drops, gaps, journal and uplink lines.
//!
//! - [`app`]: the state and what each key does (pure, unit-tested);
//! - [`render`]: drawing into a ratatui buffer (unit-tested on
//!   `TestBackend`);
//! - [`link`]: the socket threads.
//!
//! The terminal is restored on every way out: `q`, Ctrl-C, SIGTERM /
//! SIGHUP / SIGINT, an error, and a panic (the hook restores before the
//! message is printed). A daemon that goes away is shown as
//! "reconnecting" and retried.

pub mod app;
pub mod link;
pub mod render;

use app::{Action, App};
use crossterm::event::{self, Event};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use link::{Links, Msg};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

/// Redraws per second at most.
const FPS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("neuroedge scope needs a terminal (standard output is not one); for a script use `neuroedge status --json` or `subscribe` on the status socket")]
    NotATerminal,
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// Put the terminal back as the shell expects it. Idempotent; safe to
/// call from a panic hook.
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Raw mode and the alternate screen while alive.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<TerminalGuard> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        terminal::enable_raw_mode()?;
        let guard = TerminalGuard;
        crossterm::execute!(
            std::io::stdout(),
            EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Run the scope until `q` (or a signal).
pub fn run(socket: PathBuf, device: Option<String>) -> Result<(), ScopeError> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(ScopeError::NotATerminal);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let links = Links::start(socket.clone())?;
    let result = {
        let _guard = TerminalGuard::enter()?;
        let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
        let mut app = App::new(&socket.display().to_string(), device);
        ui_loop(&mut term, &mut app, &links, &stop)
    };
    links.stop();
    result
}

/// What the terminal has for us.
enum Input {
    Nothing,
    /// Keys (or a resize) to read.
    Ready,
    /// The terminal went away (SSH dropped, tmux killed, window closed).
    HungUp,
}

/// Wait up to `wait` for the terminal. crossterm's own wait spins forever
/// on a terminal that has hung up (its read loop retries an end of file
/// and EIO without end: an orphaned scope burned half a core), so the
/// terminal is polled here first and crossterm only reads what is there.
fn wait_for_input(wait: Duration) -> std::io::Result<Input> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        // crossterm reads /dev/tty then: its own wait is all there is.
        return Ok(if event::poll(wait)? {
            Input::Ready
        } else {
            Input::Nothing
        });
    }
    let ms = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, ms) {
        Ok(0) => Ok(Input::Nothing),
        Ok(_) => {
            let got = fds[0].revents().unwrap_or(PollFlags::empty());
            if got.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
                Ok(Input::HungUp)
            } else {
                Ok(Input::Ready)
            }
        }
        Err(nix::errno::Errno::EINTR) => Ok(Input::Nothing),
        Err(e) => Err(e.into()),
    }
}

fn ui_loop(
    term: &mut Terminal<CrosstermBackend<std::io::Stdout>>,
    app: &mut App,
    links: &Links,
    stop: &AtomicBool,
) -> Result<(), ScopeError> {
    let frame = Duration::from_millis(1000 / FPS);
    let mut dirty = true;
    let mut last_draw = Instant::now() - frame;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(m) = links.rx.try_recv() {
            dirty = true;
            let actions = match m {
                Msg::Status(r) => app.on_status(*r),
                Msg::Header(h) => {
                    app.on_header(h);
                    Vec::new()
                }
                Msg::Frame(f) => {
                    app.on_frame(&f);
                    Vec::new()
                }
                Msg::ViewNote(n) => {
                    app.on_view_note(n);
                    Vec::new()
                }
                Msg::Marked(r) => {
                    app.on_marked(r);
                    Vec::new()
                }
            };
            for a in actions {
                links.act(a);
            }
        }
        if dirty && last_draw.elapsed() >= frame {
            term.draw(|f| {
                let area = f.area();
                render::draw(app, area, f.buffer_mut());
            })?;
            dirty = false;
            last_draw = Instant::now();
        }
        let wait = frame
            .saturating_sub(last_draw.elapsed())
            .max(Duration::from_millis(5));
        match wait_for_input(wait)? {
            Input::Nothing => {}
            Input::HungUp => return Ok(()),
            Input::Ready => {
                while event::poll(Duration::ZERO)? {
                    match event::read()? {
                        Event::Key(k) => {
                            dirty = true;
                            for a in app.on_key(k) {
                                if a == Action::Quit {
                                    return Ok(());
                                }
                                links.act(a);
                            }
                        }
                        Event::Resize(..) => dirty = true,
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(())
}
