//! Drawing the scope into a ratatui buffer: a few status lines, then one
//! block of rows per channel (name, quality, RMS, line-noise ratio,
//! band-power bars, scale, and the min/max trace in braille dots), then
//! the prompt or last message and the keys.

use super::app::{App, Link, Scale};
use crate::control::report::DeviceReport;
use crate::dsp::QualityStatus;
use crate::telemetry::DeviceState;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

/// Lines above the channels and below them.
const TOP: u16 = 4;
const BOTTOM: u16 = 2;
/// Width of the text columns left of a trace (wide and narrow layouts).
const LEFT_WIDE: u16 = 41;
const LEFT_NARROW: u16 = 22;
/// Bands in frequency order; others follow alphabetically.
const BAND_ORDER: [&str; 5] = ["delta", "theta", "alpha", "beta", "gamma"];
const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

pub fn quality_letter(q: Option<QualityStatus>) -> char {
    match q {
        Some(QualityStatus::Ok) => 'o',
        Some(QualityStatus::Flat) => 'f',
        Some(QualityStatus::Railed) => 'r',
        Some(QualityStatus::Noisy) => 'n',
        None => '?',
    }
}

pub fn quality_color(q: Option<QualityStatus>) -> Color {
    match q {
        Some(QualityStatus::Ok) => Color::Green,
        Some(QualityStatus::Flat) => Color::Blue,
        Some(QualityStatus::Railed) => Color::Red,
        Some(QualityStatus::Noisy) => Color::Yellow,
        None => Color::DarkGray,
    }
}

fn state_color(s: DeviceState) -> Color {
    match s {
        DeviceState::Streaming => Color::Green,
        DeviceState::Connecting | DeviceState::Stalled => Color::Yellow,
        DeviceState::Disabled => Color::DarkGray,
        DeviceState::Disconnected | DeviceState::Error => Color::Red,
    }
}

fn unit_label(u: &str) -> &str {
    if u == "uV" {
        "µV"
    } else {
        u
    }
}

/// `±48µV`, `±1.5µV`, `±2000µV`.
pub fn format_scale(half: f32, unit: &str) -> String {
    let u = unit_label(unit);
    if !half.is_finite() {
        return "-".into();
    }
    if half >= 10.0 {
        format!("±{half:.0}{u}")
    } else if half >= 1.0 {
        format!("±{half:.1}{u}")
    } else {
        format!("±{half:.2}{u}")
    }
}

fn bytes(b: u64) -> String {
    bytesize::ByteSize(b).to_string_as(true)
}

/// Rows each channel gets and how many channels fit, for a terminal of
/// `height` rows showing `channels`.
pub fn rows_per_channel(height: u16, channels: usize) -> (u16, usize) {
    let avail = height.saturating_sub(TOP + BOTTOM).max(1);
    let per = (avail as usize)
        .checked_div(channels)
        .map_or(1, |p| p.clamp(1, 4) as u16);
    (per, (avail / per).max(1) as usize)
}

/// Draw the whole screen into `buf` (the terminal's area).
pub fn draw(app: &mut App, area: Rect, buf: &mut Buffer) {
    if area.width < 20 || area.height < TOP + BOTTOM + 1 {
        buf.set_string(area.x, area.y, "terminal too small", Style::default());
        return;
    }
    let channels = app.channels();
    let (per, fit) = rows_per_channel(area.height, channels);
    app.per_page = fit;
    if app.first_channel >= channels {
        app.first_channel = 0;
    }
    let shown: &App = app;
    let dev = shown
        .device
        .as_ref()
        .and_then(|d| shown.report.as_ref().and_then(|r| r.device(d)));
    let line = |buf: &mut Buffer, row: u16, l: Line<'_>| {
        buf.set_line(area.x, area.y + row, &l, area.width);
    };
    line(buf, 0, title_line(shown, dev));
    if let Some(l) = rate_line(shown, dev) {
        line(buf, 1, l);
    }
    if let Some(l) = journal_line(shown) {
        line(buf, 2, l);
    }
    let max_auto = draw_channels(shown, dev, area, (per, fit), buf);
    draw_footer(shown, area, buf);
    app.auto_scale_seen = max_auto;
}

const DIM: Style = Style::new().fg(Color::DarkGray);
const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);

/// Line 0: the device, where it stands, the view.
fn title_line<'a>(app: &'a App, dev: Option<&'a DeviceReport>) -> Line<'a> {
    let bold = BOLD;
    let ids = app.device_ids();
    let mut title = vec![Span::styled("neuroedge scope  ", bold)];
    match (&app.link, &app.device) {
        (Link::Reconnecting(e), _) => {
            title.push(Span::styled(
                format!("reconnecting to {} ... ({e})", app.socket),
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
            ));
        }
        (Link::Connecting, _) => {
            title.push(Span::styled(
                format!("connecting to {} ...", app.socket),
                Style::default().fg(Color::Yellow),
            ));
        }
        (Link::Up, None) => title.push(Span::styled(
            "no devices in this daemon's config",
            Style::default().fg(Color::Yellow),
        )),
        (Link::Up, Some(id)) => {
            let pos = ids.iter().position(|i| i == id).map_or(0, |p| p + 1);
            title.push(Span::styled(
                id.clone(),
                bold.fg(Color::Cyan).add_modifier(Modifier::REVERSED),
            ));
            title.push(Span::raw(format!(" ({pos}/{})  ", ids.len())));
            if let Some(d) = dev {
                title.push(Span::raw(format!("{}  ", d.driver)));
                title.push(Span::styled(
                    d.state.as_str(),
                    Style::default().fg(state_color(d.state)),
                ));
                title.push(Span::raw(format!(
                    "  {:.0} Hz  {} ch  ",
                    d.sample_rate, d.channels
                )));
            }
            title.push(Span::styled(app.signal.as_str(), bold));
        }
    }
    if app.paused {
        title.push(Span::raw("  "));
        title.push(Span::styled(
            " PAUSED ",
            Style::default()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    Line::from(title)
}

/// Line 1: rate, drops, gaps, freshness, scale.
fn rate_line<'a>(app: &'a App, dev: Option<&'a DeviceReport>) -> Option<Line<'a>> {
    let dim = DIM;
    let scale_text = match app.scale {
        Scale::Auto => "auto".to_string(),
        Scale::Fixed(s) => format_scale(
            s,
            app.view.as_ref().map_or("uV", |v| v.header.units.as_str()),
        ),
    };
    if let Some(d) = dev {
        let age = d
            .last_sample_age_s
            .map_or("-".into(), |a| format!("{a:.1} s"));
        let mut spans = vec![
            Span::raw(format!("rate {:.1}/s  ", d.samples_per_s)),
            Span::styled(
                format!("dropped {}", d.dropped_samples),
                if d.dropped_samples > 0 {
                    Style::default().fg(Color::Yellow)
                } else {
                    Style::default()
                },
            ),
            Span::raw("  "),
            Span::styled(
                format!("gaps {}", d.gaps),
                if d.gaps > 0 {
                    Style::default().fg(Color::Yellow)
                } else {
                    Style::default()
                },
            ),
            Span::raw(format!("  last sample {age} ago  scale {scale_text}")),
        ];
        if let Some(v) = &app.view {
            spans.push(Span::styled(
                format!(
                    "  view 1:{} ({:.0} frames/s)",
                    v.header.decimation,
                    v.header.sample_rate / v.header.decimation.max(1) as f64
                ),
                dim,
            ));
            if v.skips > 0 {
                spans.push(Span::styled(
                    format!("  {} breaks", v.skips),
                    Style::default().fg(Color::Yellow),
                ));
            }
        }
        if let Some(e) = &d.last_error {
            spans.push(Span::styled(
                format!("  error: {e}"),
                Style::default().fg(Color::Red),
            ));
        }
        Some(Line::from(spans))
    } else {
        None
    }
}

/// Line 2: journal and uplink.
fn journal_line(app: &App) -> Option<Line<'_>> {
    let r = app.report.as_ref()?;
    let j = &r.journal;
    let oldest = j
        .oldest_pending_age_s
        .map_or("-".into(), |a| format!("{a:.0} s"));
    let u = &r.uplink;
    let up_style = match u.state.as_str() {
        "idle" | "uploading" | "disabled" => Style::default(),
        _ => Style::default().fg(Color::Yellow),
    };
    Some(Line::from(vec![
        Span::raw(format!(
            "journal {} pending ({}), oldest {oldest}; {} of {}; {} evicted   ",
            j.pending_batches,
            bytes(j.pending_bytes),
            bytes(j.total_bytes),
            bytes(j.max_bytes),
            j.evicted_batches
        )),
        Span::styled(
            format!(
                "uplink {}; {} uploaded",
                u.state.as_str(),
                u.uploaded_batches
            ),
            up_style,
        ),
    ]))
}

/// One row group per channel of the page: name, quality, (wide: RMS, line
/// noise, band bars), scale and trace; or why there is no view yet.
/// Returns the largest auto-scale half-range seen.
fn draw_channels(
    app: &App,
    dev: Option<&DeviceReport>,
    area: Rect,
    (per, fit): (u16, usize),
    buf: &mut Buffer,
) -> f32 {
    let (w, dim) = (area.width, DIM);
    let channels = app.channels();
    let line = |buf: &mut Buffer, row: u16, l: Line<'_>| {
        buf.set_line(area.x, area.y + row, &l, w);
    };
    let wide = w >= 70;
    let left = if wide { LEFT_WIDE } else { LEFT_NARROW };
    let trace_w = w.saturating_sub(left);
    let mut max_auto = 0.0f32;
    if let Some(v) = &app.view {
        let span_s = (2 * trace_w as usize).min(super::app::HISTORY) as f64
            * v.header.decimation as f64
            / v.header.sample_rate.max(1e-9);
        let heading = if wide {
            format!(
                "{:<8} {:^3} {:>6} {:>5} dtabg {:>8} trace, last {span_s:.1} s",
                "CHANNEL",
                "Q",
                unit_label(&v.header.units).to_string() + "rms",
                "LINE",
                "SCALE"
            )
        } else {
            format!(
                "{:<8} {:^3} {:>8} last {span_s:.1} s",
                "CHANNEL", "Q", "SCALE"
            )
        };
        line(buf, 3, Line::styled(heading, dim));
        let bands = band_names(dev.map(|d| d.band_power.keys()));
        for (k, c) in (app.first_channel..channels).take(fit).enumerate() {
            let y = area.y + TOP + k as u16 * per;
            let q = dev.and_then(|d| d.quality.get(c));
            let state = q.map(|q| q.state);
            let color = quality_color(state);
            let name = v
                .header
                .channel_names
                .get(c)
                .cloned()
                .unwrap_or_else(|| format!("{}", c + 1));
            let (center, half_auto) = channel_range(&v.traces, c, 2 * trace_w as usize);
            max_auto = max_auto.max(half_auto);
            let half = match app.scale {
                Scale::Auto => half_auto,
                Scale::Fixed(s) => s,
            };
            let mut spans = vec![
                Span::raw(format!("{:<8.8} ", name)),
                Span::styled(
                    format!(" {} ", quality_letter(state)),
                    Style::default()
                        .fg(Color::Black)
                        .bg(color)
                        .add_modifier(Modifier::BOLD),
                ),
                Span::raw(" "),
            ];
            if wide {
                let rms = q
                    .map(|q| q.rms_uv)
                    .filter(|r| r.is_finite())
                    .map_or("     -".into(), |r| format!("{r:>6.1}"));
                let ln = q
                    .map(|q| q.line_noise_ratio)
                    .filter(|r| r.is_finite())
                    .map_or("    -".into(), |r| format!("{r:>5.2}"));
                spans.push(Span::raw(format!("{rms} {ln} ")));
                spans.push(Span::styled(
                    band_bars(dev, &bands, c),
                    Style::default().fg(Color::Magenta),
                ));
                spans.push(Span::raw(" "));
            }
            spans.push(Span::styled(
                format!("{:>8} ", format_scale(half, &v.header.units)),
                dim,
            ));
            buf.set_line(area.x, y, &Line::from(spans), left);
            draw_trace(
                buf,
                Rect::new(area.x + left, y, trace_w, per),
                &v.traces,
                c,
                center,
                half,
                color,
            );
        }
    } else {
        let note = app.view_note.clone().unwrap_or_else(|| match &app.device {
            Some(d) => format!("waiting for {d}'s {} view ...", app.signal.as_str()),
            None => String::new(),
        });
        line(
            buf,
            TOP,
            Line::styled(note, Style::default().fg(Color::Yellow)),
        );
    }
    max_auto
}

/// The prompt, or the last message, or why the view is missing; the keys.
fn draw_footer(app: &App, area: Rect, buf: &mut Buffer) {
    let (bold, dim) = (BOLD, DIM);
    let line = |buf: &mut Buffer, row: u16, l: Line<'_>| {
        buf.set_line(area.x, area.y + row, &l, area.width);
    };
    let msg_row = area.height - 2;
    if let Some(p) = &app.prompt {
        line(
            buf,
            msg_row,
            Line::from(vec![
                Span::styled("mark text: ", bold.fg(Color::Yellow)),
                Span::raw(format!("{p}_")),
                Span::styled("   (Enter sends, Esc cancels)", dim),
            ]),
        );
    } else if let Some(m) = &app.message {
        let style = if m.error {
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::default().fg(Color::Green)
        };
        line(buf, msg_row, Line::styled(m.text.clone(), style));
    } else if let (Some(note), Some(_)) = (&app.view_note, &app.view) {
        line(
            buf,
            msg_row,
            Line::styled(note.clone(), Style::default().fg(Color::Yellow)),
        );
    }
    let (page, pages) = app.page();
    line(
        buf,
        area.height - 1,
        Line::styled(
            format!(
                "Tab/←/→ device  ↑/↓ page {page}/{pages}  +/- scale (a auto)  space pause  m mark  f raw/filtered  q quit   Q: o ok f flat r railed n noisy"
            ),
            dim,
        ),
    );
}

/// The device's bands in frequency order.
fn band_names<'a>(keys: Option<impl Iterator<Item = &'a String>>) -> Vec<String> {
    let Some(keys) = keys else {
        return Vec::new();
    };
    let mut names: Vec<String> = keys.cloned().collect();
    names.sort_by_key(|n| {
        (
            BAND_ORDER
                .iter()
                .position(|b| b == n)
                .unwrap_or(BAND_ORDER.len()),
            n.clone(),
        )
    });
    names
}

/// One bar per band (at most 5): the band's share of the channel's power.
fn band_bars(
    dev: Option<&crate::control::report::DeviceReport>,
    bands: &[String],
    c: usize,
) -> String {
    let Some(d) = dev else {
        return "     ".into();
    };
    let powers: Vec<f64> = bands
        .iter()
        .take(5)
        .map(|b| {
            d.band_power
                .get(b)
                .and_then(|v| v.get(c))
                .map(|f| f.0)
                .filter(|p| p.is_finite() && *p >= 0.0)
                .unwrap_or(0.0)
        })
        .collect();
    let total: f64 = powers.iter().sum();
    let mut s: String = powers
        .iter()
        .map(|p| {
            if total > 0.0 {
                BARS[((p / total) * 8.0).round().clamp(0.0, 8.0) as usize]
            } else {
                ' '
            }
        })
        .collect();
    while s.chars().count() < 5 {
        s.push(' ');
    }
    s
}

/// Centre and auto half-range of channel `c` over its newest `frames`.
pub fn channel_range(t: &super::app::Traces, c: usize, frames: usize) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for back in 0..frames.min(t.len()) {
        if let Some((a, b)) = t.get(back, c) {
            if a.is_finite() {
                lo = lo.min(a);
            }
            if b.is_finite() {
                hi = hi.max(b);
            }
        }
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    let center = (lo + hi) / 2.0;
    // A flat channel still gets a readable scale (1 unit).
    let half = ((hi - lo) / 2.0 * 1.05).max(1.0);
    (center, half)
}

/// Braille trace: two frames per cell column (newest at the right), four
/// dots per row; each frame a vertical line from its min to its max.
fn draw_trace(
    buf: &mut Buffer,
    area: Rect,
    t: &super::app::Traces,
    c: usize,
    center: f32,
    half: f32,
    color: Color,
) {
    if area.width == 0 || area.height == 0 {
        return;
    }
    const LEFT: [u8; 4] = [0x01, 0x02, 0x04, 0x40];
    const RIGHT: [u8; 4] = [0x08, 0x10, 0x20, 0x80];
    let (w, h) = (area.width as usize, area.height as usize);
    let dots = 4 * h;
    let mut cells = vec![0u8; w * h];
    let cols = 2 * w;
    let to_dot = |v: f32| -> usize {
        let r = ((center + half - v) / (2.0 * half) * (dots as f32 - 1.0)).round();
        r.clamp(0.0, dots as f32 - 1.0) as usize
    };
    for j in 0..cols {
        let back = cols - 1 - j;
        let Some((lo, hi)) = t.get(back, c) else {
            continue;
        };
        if !(lo.is_finite() && hi.is_finite()) {
            continue;
        }
        let (top, bottom) = (to_dot(hi), to_dot(lo));
        let side = if j % 2 == 0 { &LEFT } else { &RIGHT };
        for r in top..=bottom {
            cells[(r / 4) * w + j / 2] |= side[r % 4];
        }
    }
    let style = Style::default().fg(color);
    for row in 0..h {
        for col in 0..w {
            let bits = cells[row * w + col];
            let ch = char::from_u32(0x2800 + u32::from(bits)).unwrap_or(' ');
            if let Some(cell) = buf.cell_mut((area.x + col as u16, area.y + row as u16)) {
                cell.set_char(if bits == 0 { ' ' } else { ch });
                cell.set_style(style);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::app::tests::{device, frame, header, report};
    use super::super::app::{Action, App};
    use super::*;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use QualityStatus::*;

    fn screen(app: &mut App, w: u16, h: u16) -> (Vec<String>, Buffer) {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| {
            let area = f.area();
            draw(app, area, f.buffer_mut())
        })
        .unwrap();
        let buf = term.backend().buffer().clone();
        let lines = (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf.cell((x, y)).unwrap().symbol().to_string())
                    .collect::<String>()
            })
            .collect();
        (lines, buf)
    }

    fn streaming_app(channels: usize) -> App {
        let q: Vec<QualityStatus> = (0..channels)
            .map(|i| [Ok, Flat, Railed, Noisy][i % 4])
            .collect();
        let mut app = App::new("/run/neuroedge/status.sock", None);
        app.on_status(Result::Ok(report(vec![
            device("eeg-1", &q),
            device("eeg-2", &q),
        ])));
        app.on_header(header("eeg-1", channels));
        for k in 0..400 {
            let x = (k as f32 / 10.0).sin() * 40.0;
            app.on_frame(&frame(k as f64, x - 5.0, x + 5.0, channels));
        }
        app
    }

    #[test]
    fn every_channel_has_a_row_with_its_quality_in_colour() {
        let mut app = streaming_app(8);
        let (lines, buf) = screen(&mut app, 120, 30);
        let text = lines.join("\n");
        assert!(lines[0].contains("eeg-1 (1/2)"), "{text}");
        assert!(lines[0].contains("streaming") && lines[0].contains("filtered"));
        assert!(lines[1].contains("dropped 3") && lines[1].contains("gaps 1"));
        assert!(lines[2].contains("journal 4 pending") && lines[2].contains("uplink disabled"));
        // 24 rows for 8 channels: 3 rows each; each name once, at its row.
        for c in 0..8 {
            let y = (TOP + 3 * c as u16) as usize;
            assert!(lines[y].starts_with(&format!("ch{}", c + 1)), "{text}");
            let letter = ['o', 'f', 'r', 'n'][c % 4];
            assert_eq!(lines[y].chars().nth(10), Some(letter), "{}", lines[y]);
            let cell = buf.cell((10, y as u16)).unwrap();
            assert_eq!(
                cell.bg,
                [Color::Green, Color::Blue, Color::Red, Color::Yellow][c % 4]
            );
            // rms and line-noise ratio from the report.
            assert!(lines[y].contains(&format!("{:.1}", 10.0 + c as f64)));
            assert!(lines[y].contains("0.02"));
            // A trace was drawn right of the text columns.
            let trace: String = lines[y..y + 3]
                .iter()
                .map(|l| l.chars().skip(LEFT_WIDE as usize).collect::<String>())
                .collect();
            assert!(trace
                .chars()
                .any(|ch| ('\u{2801}'..='\u{28ff}').contains(&ch)));
        }
        assert!(lines[3].contains("trace, last"));
        assert!(lines[29].contains("q quit"));
        // Auto scale: ±(sin amplitude 40 + 5) * 1.05 around 0.
        assert!(
            lines[TOP as usize].contains("±47µV"),
            "{}",
            lines[TOP as usize]
        );
    }

    #[test]
    fn channels_are_paged_when_they_do_not_fit() {
        let mut app = streaming_app(384);
        let (lines, _) = screen(&mut app, 100, 30);
        assert_eq!(app.per_page, 24);
        assert!(lines[29].contains("page 1/16"), "{}", lines[29]);
        assert!(lines[TOP as usize].starts_with("ch1 "));
        assert!(lines[(TOP + 23) as usize].starts_with("ch24 "));
        app.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        let (lines, _) = screen(&mut app, 100, 30);
        assert!(lines[TOP as usize].starts_with("ch25 "));
        assert!(lines[29].contains("page 2/16"));
    }

    #[test]
    fn pause_prompt_refusal_and_reconnecting_are_shown() {
        let mut app = streaming_app(2);
        app.on_key(KeyEvent::new(KeyCode::Char(' '), KeyModifiers::NONE));
        let (before, _) = screen(&mut app, 100, 20);
        assert!(before[0].contains("PAUSED"));
        app.on_frame(&frame(1e3, -500.0, 500.0, 2));
        let (after, _) = screen(&mut app, 100, 20);
        assert_eq!(before, after, "a paused trace does not move");
        app.on_key(KeyEvent::new(KeyCode::Char('m'), KeyModifiers::NONE));
        app.on_key(KeyEvent::new(KeyCode::Char('x'), KeyModifiers::NONE));
        let (lines, _) = screen(&mut app, 100, 20);
        assert!(lines[18].starts_with("mark text: x_"), "{}", lines[18]);
        let a = app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert!(matches!(&a[..], [Action::Mark { .. }]));
        app.on_marked(Err(
            "mark refused: permission denied: uid 1000 may not `mark`".into(),
        ));
        let (lines, buf) = screen(&mut app, 100, 20);
        assert!(lines[18].contains("permission denied"));
        assert_eq!(buf.cell((0, 18)).unwrap().fg, Color::Red);
        app.on_status(Err("connection refused".into()));
        let (lines, _) = screen(&mut app, 100, 20);
        assert!(lines[0].contains("reconnecting to /run/neuroedge/status.sock"));
    }

    #[test]
    fn narrow_terminals_keep_name_quality_and_trace() {
        let mut app = streaming_app(4);
        let (lines, _) = screen(&mut app, 50, 12);
        assert!(lines[TOP as usize].starts_with("ch1"));
        assert_eq!(lines[TOP as usize].chars().nth(10), Some('o'));
        let (lines, _) = screen(&mut app, 10, 3);
        assert!(lines[0].starts_with("terminal"));
    }

    #[test]
    fn scales_are_readable() {
        assert_eq!(format_scale(47.3, "uV"), "±47µV");
        assert_eq!(format_scale(1.5, "uV"), "±1.5µV");
        assert_eq!(format_scale(0.25, "mV"), "±0.25mV");
    }
}
