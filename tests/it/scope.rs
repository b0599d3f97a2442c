//! The live view (contract §12): `subscribe` read by a Python client and
//! checked against the journal, and `neuroedge scope` driven under tmux.

use crate::util::{device, python, synthetic_device, Env, BIN};
use neuroedge::dsp::QualityStatus;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/scope_client.py");
const FILTERS: &str =
    "[filters]\nhighpass_hz = 1.0\nlowpass_hz = 45.0\norder = 4\nnotch_hz = 50.0\n";

fn peer(args: &[&str]) -> std::process::Child {
    Command::new(python())
        .arg(PEER)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 scope_client.py")
}

fn finished(c: std::process::Child) -> Output {
    let out = c.wait_with_output().expect("peer output");
    assert!(
        out.status.success(),
        "scope_client.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Send one line on an open connection and read one JSON reply.
fn ask(r: &mut BufReader<UnixStream>, line: &str) -> Value {
    r.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .expect("send");
    let mut s = String::new();
    r.read_line(&mut s).expect("reply");
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
}

#[test]
fn subscribe_frames_equal_the_journal_and_a_stalled_client_is_dropped() {
    let env = Env::new("");
    env.write(
        "devices/eeg.toml",
        &synthetic_device("eeg", 8, 250.0, FILTERS),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(15));
    let sock = d.socket.to_str().expect("utf-8 socket path").to_string();

    // Bad requests: a clear error, and the connection stays usable.
    let mut c = BufReader::new(UnixStream::connect(&d.socket).expect("connect"));
    c.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let e = ask(&mut c, "subscribe nosuch");
    assert!(e["error"].as_str().unwrap().contains("nosuch"), "{e}");
    assert!(e["hint"].as_str().unwrap().contains("eeg"), "{e}");
    let e = ask(&mut c, "subscribe eeg hz 0");
    assert!(e["hint"].as_str().unwrap().contains("1..=60"), "{e}");
    let e = ask(&mut c, "subscribe eeg sideways");
    assert!(e["error"].as_str().unwrap().contains("sideways"), "{e}");
    assert_eq!(ask(&mut c, "version")["version"], env!("CARGO_PKG_VERSION"));

    // A client that never reads, and two that keep up, at once.
    let dir = env.path();
    let filtered = dir.join("filtered.json");
    let raw = dir.join("raw.json");
    let staller = peer(&["stall", &sock, "subscribe eeg filtered hz 60", "14"]);
    let fast = peer(&[
        "collect",
        &sock,
        filtered.to_str().unwrap(),
        "subscribe eeg filtered hz 30",
        "8",
    ]);
    let slow = peer(&[
        "collect",
        &sock,
        raw.to_str().unwrap(),
        "{\"cmd\": \"subscribe\", \"device\": \"eeg\", \"signal\": \"raw\", \"hz\": 5}",
        "8",
    ]);
    // A second client of the same view and rate joins the running feed
    // and leaves before the first: it gets its own header, frames that
    // tile the samples from its start, and the first client notices
    // nothing.
    std::thread::sleep(Duration::from_secs(2));
    let filtered_late = dir.join("filtered-late.json");
    let late = peer(&[
        "collect",
        &sock,
        filtered_late.to_str().unwrap(),
        "subscribe eeg filtered hz 30",
        "4",
    ]);
    finished(late);
    finished(fast);
    finished(slow);
    let stalled: Value = serde_json::from_slice(&finished(staller).stdout).expect("stall summary");
    assert_eq!(
        stalled["closed_by_daemon"], true,
        "a client that stops reading is disconnected: {stalled}"
    );
    assert!(
        stalled["bytes_received"].as_u64().unwrap() < 1 << 20,
        "what waited for it is bounded: {stalled}"
    );
    assert!(
        d.log_text().contains("subscriber does not keep up"),
        "{}",
        d.log_text()
    );
    // Nothing was lost on the way to the journal meanwhile.
    let r = d.report().expect("status");
    let eeg = device(&r, "eeg");
    assert_eq!((eeg.dropped_samples, eeg.gaps), (0, 0), "{eeg:?}");
    drop(c);
    assert_eq!(d.terminate(), 0);

    let out = Command::new(python())
        .arg(PEER)
        .args(["compare"])
        .arg(env.journal())
        .arg(env.key())
        .args(["eeg", "filtered"])
        .arg(&filtered)
        .arg(&filtered_late)
        .output()
        .expect("compare");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: Value = serde_json::from_slice(&out.stdout).expect("compare summary");
    let out = Command::new(python())
        .arg(PEER)
        .args(["compare"])
        .arg(env.journal())
        .arg(env.key())
        .args(["eeg", "raw"])
        .arg(&raw)
        .output()
        .expect("compare");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("compare summary");
    assert_eq!(f["journal_first"], 0);
    let late = &f["files"][1];
    assert_eq!(late["header"]["decimation"], 10, "{late}");
    assert!(late["frames"].as_u64().unwrap() > 50, "{late}");
    for k in ["not_tiled", "skipped", "t_mismatches", "outside_journal"] {
        assert_eq!(late[k], 0, "{k}: {late}");
    }
    assert_eq!(late["mismatches"].as_array().unwrap().len(), 0, "{late}");
    // Both clients of one feed saw the same frames where they overlap.
    let frames = |p: &Path| -> Vec<Value> {
        let v: Value = serde_json::from_slice(&std::fs::read(p).expect("frames")).expect("json");
        v["frames"].as_array().expect("frames").clone()
    };
    let early: std::collections::HashMap<u64, Value> = frames(&filtered)
        .into_iter()
        .map(|f| (f["i"].as_u64().unwrap(), f))
        .collect();
    let late_frames = frames(&filtered_late);
    let shared = late_frames
        .iter()
        .filter(|f| {
            early
                .get(&f["i"].as_u64().unwrap())
                .is_some_and(|e| e["n"] == f["n"] && e["min"] == f["min"] && e["max"] == f["max"])
        })
        .count();
    assert_eq!(
        shared,
        late_frames.len(),
        "the late client's frames are the first's"
    );

    for (res, signal, decimation, hz) in [
        (&f["files"][0], "filtered", 10, 30.0),
        (&r["files"][0], "raw", 50, 5.0),
    ] {
        let h = &res["header"];
        assert_eq!(h["device"], "eeg");
        assert_eq!(h["signal"], signal);
        assert_eq!(h["channels"], 8);
        assert_eq!(h["sample_rate"], 250.0);
        assert_eq!(h["units"], "uV");
        assert_eq!(h["decimation"], decimation, "{h}");
        assert_eq!(h["channel_names"][7], "ch8");
        let frames = res["frames"].as_u64().unwrap();
        // 8 s at 250 / decimation frames per second.
        let expect = 8.0 * 250.0 / decimation as f64;
        assert!(
            frames as f64 > 0.7 * expect,
            "{signal}: {frames} frames in 8 s: {res}"
        );
        assert_eq!(res["checked"], frames, "{res}");
        assert_eq!(
            res["mismatches"].as_array().unwrap().len(),
            0,
            "{signal}: min/max differ from the journal's samples: {res}"
        );
        assert_eq!(res["not_tiled"], 0, "frames tile the samples: {res}");
        assert_eq!(res["skipped"], 0, "{res}");
        assert_eq!(res["n_other_than_decimation"], 0, "{res}");
        assert_eq!(res["t_mismatches"], 0, "t = last sample's time: {res}");
        assert_eq!(res["outside_journal"], 0, "{res}");
        // The cap: at most hz lines a second (received times bunch a
        // little, so over 2 s windows with one line of slack each side).
        let per_s = res["lines_per_s"].as_f64().unwrap();
        assert!(per_s <= hz * 1.05, "{signal}: {per_s} lines/s at hz {hz}");
        let most = res["max_lines_in_2s"].as_u64().unwrap();
        assert!(
            most as f64 <= 2.0 * hz + 2.0,
            "{signal}: {most} lines in 2 s"
        );
    }
}

/// A tmux server of the test's own, with one session of a given size.
struct Tmux {
    server: String,
}

impl Tmux {
    fn start(cols: u16, rows: u16, dir: &Path) -> Option<Tmux> {
        let server = format!("ne-scope-{}-{}", std::process::id(), rand::random::<u32>());
        let ok = Command::new("tmux")
            .args([
                "-L",
                &server,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "t",
            ])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .args(["-c", dir.to_str()?])
            .arg("sh")
            .env("TERM", "xterm-256color")
            .env("PS1", "$ ")
            .status()
            .ok()?
            .success();
        ok.then_some(Tmux { server })
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.server])
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "t"];
        a.extend_from_slice(keys);
        self.tmux(&a);
    }

    /// Type text literally.
    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "t"])
    }

    /// The screen with colours (SGR escapes).
    fn screen_colours(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-e", "-t", "t"])
    }

    fn var(&self, name: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", "t", &format!("#{{{name}}}")])
            .trim()
            .to_string()
    }

    fn wait(&self, within: Duration, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if cond(&s) {
                return s;
            }
            if start.elapsed() > within {
                panic!("timed out waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// After the scope quit: back on the shell's screen, cursor shown,
    /// line discipline cooked and echoing.
    fn assert_clean_terminal(&self, exit_marker: &str) {
        self.wait(Duration::from_secs(10), "the scope to exit", |s| {
            s.contains(exit_marker)
        });
        assert_eq!(self.var("alternate_on"), "0", "left the alternate screen");
        assert_eq!(self.var("cursor_flag"), "1", "cursor visible");
        self.type_text("stty -a | tr ' ' '\\n' | grep -x -e '-\\?icanon' -e '-\\?echo' | tr '\\n' ' '; echo :STTY");
        self.keys(&["Enter"]);
        let s = self.wait(Duration::from_secs(5), "stty", |s| {
            s.lines()
                .any(|l| l.ends_with(":STTY") && !l.contains("grep"))
        });
        let line = s
            .lines()
            .find(|l| l.ends_with(":STTY") && !l.contains("grep"))
            .unwrap_or_default()
            .to_string();
        assert!(
            line.contains("icanon") && !line.contains("-icanon") && !line.contains("-echo"),
            "terminal left in raw mode: {line}"
        );
        // A clean slate for the next run (sh does not clear on Ctrl-L).
        self.keys(&["-R"]);
        self.tmux(&["clear-history", "-t", "t"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.server, "kill-server"])
            .status();
    }
}

/// Remove SGR escapes, tracking the background colour (40..=47; 0 for any
/// other) in force at each character: (text, background per char).
fn sgr(line: &str) -> (String, Vec<Option<u8>>) {
    let (mut text, mut bgs) = (String::new(), Vec::new());
    let mut bg: Option<u8> = None;
    let mut rest = line;
    while let Some(esc) = rest.find("\x1b[") {
        for ch in rest[..esc].chars() {
            text.push(ch);
            bgs.push(bg);
        }
        let after = &rest[esc + 2..];
        let Some(end) = after.find(|c: char| c.is_ascii_alphabetic()) else {
            break;
        };
        if after.as_bytes()[end] == b'm' {
            let codes: Vec<u16> = after[..end]
                .split(';')
                .map(|p| p.parse().unwrap_or(0))
                .collect();
            let mut k = 0;
            while k < codes.len() {
                match codes[k] {
                    0 | 49 => bg = None,
                    c @ 40..=47 => bg = Some(c as u8),
                    // 256-colour background (crossterm writes the basic
                    // colours so, and tmux keeps it): 0..=7 as 40..=47.
                    48 if codes.get(k + 1) == Some(&5) => {
                        let n = codes.get(k + 2).copied().unwrap_or(0);
                        bg = (n < 8).then_some(40 + n as u8).or(Some(0));
                        k += 2;
                    }
                    48 if codes.get(k + 1) == Some(&2) => {
                        bg = Some(0);
                        k += 4;
                    }
                    38 if codes.get(k + 1) == Some(&5) => k += 2,
                    38 if codes.get(k + 1) == Some(&2) => k += 4,
                    _ => {}
                }
                k += 1;
            }
        }
        rest = &after[end + 1..];
    }
    for ch in rest.chars() {
        text.push(ch);
        bgs.push(bg);
    }
    (text, bgs)
}

/// (quality letter, its background) of every channel row on a screen
/// captured with colours.
fn quality_cells(screen: &str) -> Vec<(char, Option<u8>)> {
    screen
        .lines()
        .map(sgr)
        .filter(|(t, _)| !channel_rows(t).is_empty())
        .map(|(t, bg)| {
            (
                t.chars().nth(10).unwrap_or(' '),
                bg.get(10).copied().flatten(),
            )
        })
        .collect()
}

/// Screen rows (of the channel area) that start with a channel name.
fn channel_rows(screen: &str) -> Vec<String> {
    screen
        .lines()
        .filter(|l| l.starts_with("ch") && l.as_bytes().get(2).is_some_and(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

fn start_scope(t: &Tmux, socket: &Path, marker: &str) {
    t.type_text(&format!(
        "{BIN} scope --socket {}; echo {marker}=$?",
        socket.display()
    ));
    t.keys(&["Enter"]);
}

fn has_trace(row: &str) -> bool {
    row.chars()
        .any(|ch| ('\u{2801}'..='\u{28ff}').contains(&ch))
}

fn title_shows(s: &str, id: &str) -> bool {
    s.lines().next().is_some_and(|l| l.contains(id))
}

#[test]
fn scope_under_tmux_shows_switches_pauses_marks_and_restores_the_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is not installed (scripts/install-test-deps.sh installs it)");
    }
    let env = Env::new("[status]\nsocket_mode = \"0666\"\n");
    env.write(
        "devices/alpha.toml",
        &synthetic_device("alpha-eeg", 8, 250.0, FILTERS),
    );
    // Every channel of the second device reads as noisy (yellow).
    env.write(
        "devices/beta.toml",
        &synthetic_device("beta-eeg", 4, 250.0, "[quality]\nnoisy_rms_uv = 0.001\n"),
    );
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(15));
    // Quality is known after the first feature window.
    let r = d.wait_report(Duration::from_secs(10), "quality", |r| {
        r.devices.iter().all(|d| !d.quality.is_empty())
    });
    let t = Tmux::start(120, 40, env.path()).expect("tmux session");
    start_scope(&t, &d.socket, "EXIT1");

    // The first device, one row per channel, each with its quality letter.
    // (The rows come with the header; the traces with the first frames.)
    let s = t.wait(Duration::from_secs(15), "alpha-eeg's 8 channels", |s| {
        title_shows(s, "alpha-eeg (1/2)")
            && channel_rows(s).len() == 8
            && channel_rows(s).iter().all(|r| has_trace(r))
    });
    assert!(s.contains("streaming") && s.contains("filtered"), "{s}");
    assert!(
        s.contains("journal ") && s.contains("uplink disabled"),
        "{s}"
    );
    for (c, row) in channel_rows(&s).iter().enumerate() {
        assert!(row.starts_with(&format!("ch{} ", c + 1)), "{row}");
        // A trace in braille right of the text.
        assert!(
            row.chars()
                .any(|ch| ('\u{2801}'..='\u{28ff}').contains(&ch)),
            "no trace in {row:?}\n{s}"
        );
    }
    // Each quality letter on its colour: o green, f blue, r red, n yellow.
    let letters = quality_cells(&t.screen_colours());
    assert_eq!(letters.len(), 8, "{letters:?}");
    for (letter, bg) in &letters {
        let want = match letter {
            'o' => 42,
            'f' => 44,
            'r' => 41,
            'n' => 43,
            _ => 0,
        };
        assert_eq!(*bg, Some(want), "letter {letter} on colour {bg:?}");
    }
    assert!(
        letters.iter().any(|(l, _)| *l == 'o'),
        "the synthetic device's channels read ok: {letters:?}\nstatus: {:?}",
        device(&r, "alpha-eeg").quality
    );

    // Tab: the second device, its 4 channels, all noisy on yellow.
    t.keys(&["Tab"]);
    let s = t.wait(Duration::from_secs(10), "beta-eeg", |s| {
        title_shows(s, "beta-eeg (2/2)") && channel_rows(s).len() == 4
    });
    for row in channel_rows(&s) {
        assert_eq!(row.chars().nth(10), Some('n'), "{row}");
    }
    let letters = quality_cells(&t.screen_colours());
    assert_eq!(letters, vec![('n', Some(43)); 4], "noisy on yellow");
    assert_eq!(
        device(&r, "beta-eeg").quality[0].state,
        QualityStatus::Noisy
    );

    // Space: paused; the traces stand still; space again: they move.
    t.keys(&["Space"]);
    t.wait(Duration::from_secs(5), "PAUSED", |s| s.contains("PAUSED"));
    std::thread::sleep(Duration::from_millis(300));
    let traces = |s: &str| -> Vec<String> {
        channel_rows(s)
            .iter()
            .map(|r| r.chars().skip(41).collect())
            .collect()
    };
    let a = traces(&t.screen());
    std::thread::sleep(Duration::from_millis(1500));
    let b = traces(&t.screen());
    assert_eq!(a, b, "paused traces do not move");
    t.keys(&["Space"]);
    t.wait(Duration::from_secs(5), "moving again", |s| {
        !s.contains("PAUSED") && traces(s) != a
    });

    // m: a marker typed in the prompt reaches the journal.
    t.keys(&["m"]);
    t.wait(Duration::from_secs(5), "the mark prompt", |s| {
        s.contains("mark text:")
    });
    t.type_text("electrodes checked");
    t.keys(&["Enter"]);
    t.wait(Duration::from_secs(10), "the mark's confirmation", |s| {
        s.contains("marker \"electrodes checked\" added to beta-eeg")
    });

    // q: the shell's screen comes back intact.
    t.keys(&["q"]);
    t.assert_clean_terminal("EXIT1=0");

    // The daemon goes away: "reconnecting"; it comes back: the view too.
    start_scope(&t, &d.socket, "EXIT2");
    t.wait(Duration::from_secs(15), "scope again", |s| {
        title_shows(s, "alpha-eeg (1/2)") && channel_rows(s).len() == 8
    });
    assert_eq!(d.terminate(), 0);
    t.wait(Duration::from_secs(10), "reconnecting", |s| {
        s.contains("reconnecting to")
    });
    let d2 = env.spawn();
    d2.wait_streaming(Duration::from_secs(15));
    t.wait(Duration::from_secs(15), "the view after the restart", |s| {
        title_shows(s, "alpha-eeg (1/2)")
            && !s.contains("reconnecting")
            && channel_rows(s)
                .iter()
                .any(|r| r.chars().any(|ch| ('\u{2801}'..='\u{28ff}').contains(&ch)))
    });
    assert_eq!(d2.terminate(), 0);
    t.wait(Duration::from_secs(10), "reconnecting", |s| {
        s.contains("reconnecting to")
    });
    t.keys(&["q"]);
    t.assert_clean_terminal("EXIT2=0");

    // A peer without control rights: the refusal is on the screen.
    if nix::unistd::geteuid().is_root() {
        let d3 = env.spawn();
        d3.wait_streaming(Duration::from_secs(15));
        use std::os::unix::fs::PermissionsExt;
        for dir in [
            env.path().to_path_buf(),
            env.path().join("var"),
            env.path().join("var/run"),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        t.type_text(&format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups {BIN} scope --socket {}; echo EXIT3=$?",
            d3.socket.display()
        ));
        t.keys(&["Enter"]);
        t.wait(Duration::from_secs(15), "scope as nobody", |s| {
            title_shows(s, "alpha-eeg (1/2)")
        });
        t.keys(&["m"]);
        t.type_text("not allowed");
        t.keys(&["Enter"]);
        let s = t.wait(Duration::from_secs(10), "the refusal", |s| {
            s.contains("mark refused: permission denied")
        });
        assert!(s.contains("65534"), "{s}");
        t.keys(&["q"]);
        t.assert_clean_terminal("EXIT3=0");
        assert_eq!(d3.terminate(), 0);
    } else {
        eprintln!("not root: the refused-mark half of this test needs root to switch uid");
    }

    // The terminal goes away under a running scope (SSH dropped, tmux
    // killed): the scope exits instead of spinning on the dead terminal.
    let d4 = env.spawn();
    d4.wait_streaming(Duration::from_secs(15));
    t.type_text(&format!(
        "exec {BIN} scope --socket {}",
        d4.socket.display()
    ));
    t.keys(&["Enter"]);
    t.wait(Duration::from_secs(15), "scope before the hangup", |s| {
        title_shows(s, "alpha-eeg (1/2)")
    });
    let pid: i32 = t.var("pane_pid").parse().expect("pane pid");
    drop(t);
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| {
            st.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let still = !gone(pid);
    if still {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        !still,
        "scope {pid} kept running after its terminal hung up"
    );
    assert_eq!(d4.terminate(), 0);

    // The marker is in the journal, once.
    let marks: Vec<String> = env
        .device_batches("beta-eeg")
        .iter()
        .flat_map(|(_, b)| b.markers.iter().map(|m| m.value.clone()))
        .collect();
    assert_eq!(marks, ["electrodes checked"], "{marks:?}");
}
