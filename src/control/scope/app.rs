//! The scope's state: what is shown, and what each key does. Pure (no
//! terminal, no socket): keys and daemon messages go in, [`Action`]s for
//! the socket threads come out, and [`super::render`] draws it.

use crate::control::report::StatusReport;
use crate::control::subscribe::{FrameLine, HeaderLine};
use crate::view::Signal;
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// Frames of history kept per channel (more than any terminal is wide).
pub const HISTORY: usize = 1024;

/// What the main loop must do after a key or a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// (Re)subscribe to this device and signal.
    Subscribe {
        device: String,
        signal: Signal,
    },
    /// Send `mark DEVICE TEXT`.
    Mark {
        device: String,
        text: String,
    },
    Quit,
}

/// The µV range of the traces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Each channel fitted to what its trace shows.
    Auto,
    /// Every channel ± this many units around its own centre.
    Fixed(f32),
}

/// One-line feedback at the bottom (a mark's result, a refusal, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub text: String,
    pub error: bool,
}

/// Min/max history of every channel: a ring of frames, newest last.
pub struct Traces {
    channels: usize,
    len: usize,
    /// Slot of the oldest frame.
    start: usize,
    lo: Vec<f32>,
    hi: Vec<f32>,
}

impl Traces {
    pub fn new(channels: usize) -> Self {
        Traces {
            channels,
            len: 0,
            start: 0,
            lo: vec![f32::NAN; HISTORY * channels],
            hi: vec![f32::NAN; HISTORY * channels],
        }
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn next_slot(&mut self) -> usize {
        if self.len < HISTORY {
            self.len += 1;
            (self.start + self.len - 1) % HISTORY
        } else {
            let s = self.start;
            self.start = (self.start + 1) % HISTORY;
            s
        }
    }

    /// Append a frame (missing values are NaN: nothing drawn).
    pub fn push(&mut self, min: &[Option<f32>], max: &[Option<f32>]) {
        let slot = self.next_slot();
        let ch = self.channels;
        for c in 0..ch {
            self.lo[slot * ch + c] = min.get(c).copied().flatten().unwrap_or(f32::NAN);
            self.hi[slot * ch + c] = max.get(c).copied().flatten().unwrap_or(f32::NAN);
        }
    }

    /// Append an empty column: a visible break where samples are missing.
    pub fn push_break(&mut self) {
        let slot = self.next_slot();
        let ch = self.channels;
        self.lo[slot * ch..(slot + 1) * ch].fill(f32::NAN);
        self.hi[slot * ch..(slot + 1) * ch].fill(f32::NAN);
    }

    /// Channel `c`'s (min, max) `back` frames before the newest.
    pub fn get(&self, back: usize, c: usize) -> Option<(f32, f32)> {
        if back >= self.len || c >= self.channels {
            return None;
        }
        let slot = (self.start + self.len - 1 - back) % HISTORY;
        Some((
            self.lo[slot * self.channels + c],
            self.hi[slot * self.channels + c],
        ))
    }
}

/// The subscription being shown.
pub struct ViewState {
    pub header: HeaderLine,
    pub traces: Traces,
    /// Unix time of the newest frame.
    pub t: f64,
    /// Frames that said samples were skipped (`gap` or `lag`).
    pub skips: u64,
}

/// Where the socket stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    Connecting,
    Up,
    /// The daemon went away (or never answered): retrying.
    Reconnecting(String),
}

pub struct App {
    pub socket: String,
    pub link: Link,
    pub report: Option<StatusReport>,
    /// The selected device's id.
    pub device: Option<String>,
    pub signal: Signal,
    /// First channel shown.
    pub first_channel: usize,
    pub scale: Scale,
    pub paused: bool,
    pub view: Option<ViewState>,
    /// Why there is no view (the daemon's refusal or end line).
    pub view_note: Option<String>,
    /// The mark prompt's text while it is open.
    pub prompt: Option<String>,
    pub message: Option<Message>,
    /// Channels that fit on one page at the last draw.
    pub per_page: usize,
    /// The largest auto scale on the page at the last draw (a start for
    /// the first `+`/`-`).
    pub auto_scale_seen: f32,
}

/// 1-2-5 steps for fixed scales.
fn scale_steps() -> impl Iterator<Item = f32> {
    (-2..7).flat_map(|e| [1.0f32, 2.0, 5.0].map(|m| m * 10f32.powi(e)))
}

impl App {
    pub fn new(socket: &str, device: Option<String>) -> Self {
        App {
            socket: socket.to_string(),
            link: Link::Connecting,
            report: None,
            device,
            signal: Signal::Filtered,
            first_channel: 0,
            scale: Scale::Auto,
            paused: false,
            view: None,
            view_note: None,
            prompt: None,
            message: None,
            per_page: 1,
            auto_scale_seen: 0.0,
        }
    }

    /// Device ids in the daemon's order.
    pub fn device_ids(&self) -> Vec<String> {
        self.report
            .as_ref()
            .map(|r| r.devices.iter().map(|d| d.id.clone()).collect())
            .unwrap_or_default()
    }

    fn subscribe_action(&self) -> Option<Action> {
        self.device.as_ref().map(|d| Action::Subscribe {
            device: d.clone(),
            signal: self.signal,
        })
    }

    /// A new status report (or the failure to get one).
    pub fn on_status(&mut self, r: Result<StatusReport, String>) -> Vec<Action> {
        match r {
            Ok(report) => {
                let was_up = self.link == Link::Up;
                self.link = Link::Up;
                let ids: Vec<String> = report.devices.iter().map(|d| d.id.clone()).collect();
                self.report = Some(report);
                let known = self.device.as_ref().is_some_and(|d| ids.contains(d));
                if self.device.is_none() || (!known && !ids.is_empty() && self.view.is_none()) {
                    // The first device (or the named one vanished).
                    let first = ids.first().cloned();
                    if first != self.device {
                        if let (Some(asked), Some(shown)) = (&self.device, &first) {
                            self.message = Some(Message {
                                text: format!(
                                    "no device {asked:?} in this daemon (devices: {}); showing {shown}",
                                    ids.join(", ")
                                ),
                                error: true,
                            });
                        }
                        self.device = first;
                        self.reset_view();
                        return self.subscribe_action().into_iter().collect();
                    }
                }
                if !was_up {
                    return self.subscribe_action().into_iter().collect();
                }
                Vec::new()
            }
            Err(e) => {
                self.link = Link::Reconnecting(e);
                Vec::new()
            }
        }
    }

    fn reset_view(&mut self) {
        self.view = None;
        self.view_note = None;
        self.first_channel = 0;
    }

    pub fn on_header(&mut self, h: HeaderLine) {
        if Some(&h.device) != self.device.as_ref() || h.signal != self.signal {
            return; // from a subscription already replaced
        }
        let same_layout = self
            .view
            .as_ref()
            .is_some_and(|v| v.header.channels == h.channels);
        if same_layout {
            if let Some(v) = self.view.as_mut() {
                // Resubscribed to the same device: keep the history, mark the break.
                v.traces.push_break();
                v.header = h;
            }
        } else {
            self.view = Some(ViewState {
                traces: Traces::new(h.channels),
                header: h,
                t: 0.0,
                skips: 0,
            });
        }
        self.view_note = None;
        if self.first_channel >= self.channels() {
            self.first_channel = 0;
        }
    }

    pub fn on_frame(&mut self, f: &FrameLine) {
        if self.paused {
            return;
        }
        let Some(v) = self.view.as_mut() else { return };
        if f.cause.is_some() {
            v.skips += 1;
            v.traces.push_break();
        }
        v.traces.push(&f.min, &f.max);
        v.t = f.t;
    }

    /// The subscription ended or was refused (the link resubscribes).
    pub fn on_view_note(&mut self, note: String) {
        self.view_note = Some(note);
    }

    pub fn on_marked(&mut self, r: Result<String, String>) {
        self.message = Some(match r {
            Ok(text) => Message { text, error: false },
            Err(text) => Message { text, error: true },
        });
    }

    pub fn channels(&self) -> usize {
        self.view.as_ref().map_or(0, |v| v.header.channels)
    }

    /// Page `k` of `n` (1-based) at the last draw.
    pub fn page(&self) -> (usize, usize) {
        let per = self.per_page.max(1);
        let n = self.channels().div_ceil(per).max(1);
        ((self.first_channel / per + 1).min(n), n)
    }

    fn switch_device(&mut self, step: isize) -> Vec<Action> {
        let ids = self.device_ids();
        if ids.is_empty() {
            return Vec::new();
        }
        let at = self
            .device
            .as_ref()
            .and_then(|d| ids.iter().position(|i| i == d))
            .unwrap_or(0) as isize;
        let next = (at + step).rem_euclid(ids.len() as isize) as usize;
        if self.device.as_deref() == Some(ids[next].as_str()) {
            return Vec::new();
        }
        self.device = Some(ids[next].clone());
        self.reset_view();
        self.subscribe_action().into_iter().collect()
    }

    fn zoom(&mut self, zoom_in: bool) {
        let current = match self.scale {
            Scale::Fixed(s) => s,
            Scale::Auto => self.auto_scale_seen.max(1.0),
        };
        let steps: Vec<f32> = scale_steps().collect();
        let next = if zoom_in {
            steps.iter().rev().find(|s| **s < current * 0.99).copied()
        } else {
            steps.iter().find(|s| **s > current * 1.01).copied()
        };
        if let Some(s) = next {
            self.scale = Scale::Fixed(s);
        }
    }

    /// Handle a key; returns what the main loop must do.
    pub fn on_key(&mut self, k: KeyEvent) -> Vec<Action> {
        if k.kind == KeyEventKind::Release {
            return Vec::new();
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c') | KeyCode::Char('d')) {
            return vec![Action::Quit];
        }
        if let Some(text) = self.prompt.as_mut() {
            match k.code {
                KeyCode::Enter => {
                    let text = text.trim().to_string();
                    self.prompt = None;
                    return match (&self.device, text.is_empty()) {
                        (Some(d), false) => {
                            self.message = Some(Message {
                                text: format!("sending marker {text:?} ..."),
                                error: false,
                            });
                            vec![Action::Mark {
                                device: d.clone(),
                                text,
                            }]
                        }
                        _ => Vec::new(),
                    };
                }
                KeyCode::Esc => self.prompt = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if !ctrl && text.len() < 200 => text.push(c),
                _ => {}
            }
            return Vec::new();
        }
        match k.code {
            KeyCode::Char('q') | KeyCode::Char('Q') => return vec![Action::Quit],
            KeyCode::Tab | KeyCode::Right => return self.switch_device(1),
            KeyCode::BackTab | KeyCode::Left => return self.switch_device(-1),
            KeyCode::Down | KeyCode::PageDown => {
                let per = self.per_page.max(1);
                if self.first_channel + per < self.channels() {
                    self.first_channel += per;
                }
            }
            KeyCode::Up | KeyCode::PageUp => {
                self.first_channel = self.first_channel.saturating_sub(self.per_page.max(1));
            }
            KeyCode::Char('+') | KeyCode::Char('=') => self.zoom(true),
            KeyCode::Char('-') | KeyCode::Char('_') => self.zoom(false),
            KeyCode::Char('a') => self.scale = Scale::Auto,
            KeyCode::Char(' ') => {
                self.paused = !self.paused;
                if !self.paused {
                    if let Some(v) = self.view.as_mut() {
                        v.traces.push_break();
                    }
                }
            }
            KeyCode::Char('f') => {
                self.signal = match self.signal {
                    Signal::Raw => Signal::Filtered,
                    Signal::Filtered => Signal::Raw,
                };
                self.view = None;
                self.view_note = None;
                return self.subscribe_action().into_iter().collect();
            }
            KeyCode::Char('m') => {
                if self.device.is_some() {
                    self.prompt = Some(String::new());
                    self.message = None;
                } else {
                    self.message = Some(Message {
                        text: "no device to mark".into(),
                        error: true,
                    });
                }
            }
            _ => {}
        }
        Vec::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::report::{ClockReport, DeviceReport, QualityReport, UplinkReport};
    use crate::dsp::QualityStatus;
    use crate::telemetry::DeviceState;

    pub fn device(id: &str, quality: &[QualityStatus]) -> DeviceReport {
        DeviceReport {
            id: id.into(),
            driver: "synthetic".into(),
            state: DeviceState::Streaming,
            sample_rate: 250.0,
            effective_rate: f64::NAN,
            channels: quality.len(),
            channel_names: (0..quality.len()).map(|i| format!("ch{}", i + 1)).collect(),
            samples_total: 1000,
            samples_per_s: 250.0,
            dropped_samples: 3,
            gaps: 1,
            last_sample_age_s: Some(0.05),
            last_sample_t: 1.0,
            quality: quality
                .iter()
                .enumerate()
                .map(|(i, s)| QualityReport {
                    channel: format!("ch{}", i + 1),
                    state: *s,
                    rms_uv: 10.0 + i as f64,
                    line_noise_ratio: 0.02,
                })
                .collect(),
            band_power: ["delta", "theta", "alpha", "beta", "gamma"]
                .iter()
                .enumerate()
                .map(|(b, n)| {
                    (
                        n.to_string(),
                        vec![crate::telemetry::Float((b + 1) as f64); quality.len()],
                    )
                })
                .collect(),
            last_error: None,
            outlets: Default::default(),
        }
    }

    pub fn report(devices: Vec<DeviceReport>) -> StatusReport {
        StatusReport {
            version: "0.1.0".into(),
            uptime_s: 12.0,
            node_id: "node".into(),
            site_id: "site".into(),
            devices,
            journal: crate::journal::JournalStatus {
                path: "/var/lib/neuroedge/journal.db".into(),
                pending_batches: 4,
                pending_bytes: 4096,
                max_bytes: 1 << 30,
                ..Default::default()
            },
            uplink: UplinkReport {
                state: crate::uplink::UplinkState::Disabled,
                uploaded_batches: 0,
                quarantined_batches: 0,
                failed_attempts: 0,
                last_success_age_s: None,
                last_error: None,
                in_flight: 0,
                buffered_batches: 0,
                endpoint: None,
            },
            clock: ClockReport {
                wall_offset_s: 0.0,
                steps: vec![],
            },
            systemd: Default::default(),
        }
    }

    pub fn header(device: &str, channels: usize) -> HeaderLine {
        HeaderLine {
            device: device.into(),
            signal: Signal::Filtered,
            channels,
            channel_names: (0..channels).map(|i| format!("ch{}", i + 1)).collect(),
            sample_rate: 250.0,
            units: "uV".into(),
            decimation: 10,
            hz: 30,
        }
    }

    pub fn frame(t: f64, lo: f32, hi: f32, channels: usize) -> FrameLine {
        FrameLine {
            t,
            i: 0,
            n: 10,
            min: vec![Some(lo); channels],
            max: vec![Some(hi); channels],
            skipped: 0,
            cause: None,
        }
    }

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn the_first_report_picks_the_first_device_and_subscribes() {
        const OK: QualityStatus = QualityStatus::Ok;
        let mut app = App::new("/s", None);
        let a = app.on_status(Ok(report(vec![device("a", &[OK]), device("b", &[OK])])));
        assert_eq!(
            a,
            [Action::Subscribe {
                device: "a".into(),
                signal: Signal::Filtered
            }]
        );
        // The daemon goes away and comes back: subscribe again.
        assert!(app.on_status(Err("gone".into())).is_empty());
        assert_eq!(app.link, Link::Reconnecting("gone".into()));
        let a = app.on_status(Ok(report(vec![device("a", &[OK])])));
        assert_eq!(a.len(), 1);
        // A named device is kept.
        let mut app = App::new("/s", Some("b".into()));
        let a = app.on_status(Ok(report(vec![device("a", &[OK]), device("b", &[OK])])));
        assert_eq!(
            a,
            [Action::Subscribe {
                device: "b".into(),
                signal: Signal::Filtered
            }]
        );
    }

    #[test]
    fn keys_switch_devices_pages_signal_pause_and_scale() {
        const OK: QualityStatus = QualityStatus::Ok;
        let mut app = App::new("/s", None);
        app.on_status(Ok(report(vec![device("a", &[OK]), device("b", &[OK])])));
        app.on_header(header("a", 20));
        app.per_page = 8;
        assert_eq!(app.page(), (1, 3));
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Down));
        assert_eq!((app.first_channel, app.page()), (16, (3, 3)));
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.first_channel, 16, "no page past the last");
        app.on_key(key(KeyCode::Up));
        assert_eq!(app.first_channel, 8);
        // Tab: next device, resubscribe, view cleared.
        let a = app.on_key(key(KeyCode::Tab));
        assert_eq!(
            a,
            [Action::Subscribe {
                device: "b".into(),
                signal: Signal::Filtered
            }]
        );
        assert!(app.view.is_none() && app.first_channel == 0);
        // A late header of the old device is ignored.
        app.on_header(header("a", 20));
        assert!(app.view.is_none());
        app.on_key(key(KeyCode::Left));
        assert_eq!(app.device.as_deref(), Some("a"));
        // f: raw.
        let a = app.on_key(key(KeyCode::Char('f')));
        assert_eq!(
            a,
            [Action::Subscribe {
                device: "a".into(),
                signal: Signal::Raw
            }]
        );
        // Pause: frames are not added.
        let mut h = header("a", 2);
        h.signal = Signal::Raw;
        app.on_header(h);
        app.on_frame(&frame(1.0, -1.0, 1.0, 2));
        app.on_key(key(KeyCode::Char(' ')));
        assert!(app.paused);
        app.on_frame(&frame(2.0, -1.0, 1.0, 2));
        assert_eq!(app.view.as_ref().unwrap().traces.len(), 1);
        app.on_key(key(KeyCode::Char(' ')));
        app.on_frame(&frame(3.0, -1.0, 1.0, 2));
        assert_eq!(
            app.view.as_ref().unwrap().traces.len(),
            3,
            "a break, then the frame"
        );
        // Scale: from auto to the 1-2-5 steps.
        app.auto_scale_seen = 37.0;
        app.on_key(key(KeyCode::Char('+')));
        assert_eq!(app.scale, Scale::Fixed(20.0));
        app.on_key(key(KeyCode::Char('-')));
        app.on_key(key(KeyCode::Char('-')));
        assert_eq!(app.scale, Scale::Fixed(100.0));
        app.on_key(key(KeyCode::Char('a')));
        assert_eq!(app.scale, Scale::Auto);
        assert_eq!(app.on_key(key(KeyCode::Char('q'))), [Action::Quit]);
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            [Action::Quit]
        );
    }

    #[test]
    fn the_mark_prompt_takes_text_and_sends_it() {
        const OK: QualityStatus = QualityStatus::Ok;
        let mut app = App::new("/s", None);
        app.on_status(Ok(report(vec![device("a", &[OK])])));
        app.on_key(key(KeyCode::Char('m')));
        assert_eq!(app.prompt.as_deref(), Some(""));
        for c in "eyes  closedx".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        app.on_key(key(KeyCode::Backspace));
        // Keys that mean something else are text inside the prompt.
        assert!(app.on_key(key(KeyCode::Char('q'))).is_empty());
        app.on_key(key(KeyCode::Backspace));
        let a = app.on_key(key(KeyCode::Enter));
        assert_eq!(
            a,
            [Action::Mark {
                device: "a".into(),
                text: "eyes  closed".into()
            }]
        );
        assert!(app.prompt.is_none());
        app.on_marked(Err("permission denied".into()));
        assert!(app.message.as_ref().unwrap().error);
        // Esc cancels; an empty text sends nothing.
        app.on_key(key(KeyCode::Char('m')));
        app.on_key(key(KeyCode::Char('x')));
        assert!(app.on_key(key(KeyCode::Esc)).is_empty());
        assert!(app.prompt.is_none());
        app.on_key(key(KeyCode::Char('m')));
        assert!(app.on_key(key(KeyCode::Enter)).is_empty());
    }

    #[test]
    fn traces_keep_the_newest_frames() {
        let mut t = Traces::new(2);
        for i in 0..HISTORY + 5 {
            let v = i as f32;
            t.push(&[Some(v), None], &[Some(v + 1.0), None]);
        }
        assert_eq!(t.len(), HISTORY);
        assert_eq!(
            t.get(0, 0),
            Some(((HISTORY + 4) as f32, (HISTORY + 5) as f32))
        );
        assert_eq!(t.get(HISTORY - 1, 0), Some((5.0, 6.0)));
        assert!(t.get(0, 1).unwrap().0.is_nan());
        assert_eq!(t.get(HISTORY, 0), None);
        t.push_break();
        assert!(t.get(0, 0).unwrap().0.is_nan());
    }
}
