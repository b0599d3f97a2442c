//! The `neuroedge` command line. Exit codes: 0 ok, 1 runtime failure,
//! 2 usage or config error.

use clap::{Args, Parser, Subcommand};
use neuroedge::config::{self, Config};
use neuroedge::control::client;
use neuroedge::crypto;
use neuroedge::daemon;
use neuroedge::journal::{inspect, Journal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[path = "cli/export.rs"]
mod export_cmd;
#[path = "cli/salvage.rs"]
mod salvage_cmd;
use export_cmd::ExportArgs;

#[derive(Parser)]
#[command(
    name = "neuroedge",
    version,
    about = "EEG acquisition daemon: devices -> DSP -> sealed journal -> uplink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// Daemon config file [default: $NEUROEDGE_CONFIG, then /etc/neuroedge/neuroedge.toml]
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (systemd runs this).
    Run(ConfigArg),
    /// Show the running daemon's status.
    Status {
        /// Status socket [default: the config's status.socket]
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
        /// Print the raw JSON reply.
        #[arg(long)]
        json: bool,
        /// Redraw every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Add an event marker to a device's recording (lands in the batch
    /// covering this moment).
    Mark {
        /// Device id (as in its device file)
        device: String,
        /// Marker text, e.g. "eyes closed"
        text: Vec<String>,
        /// Status socket [default: the config's status.socket]
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The technician's live view: traces, quality, band powers, journal
    /// and uplink of each device, in the terminal.
    Scope {
        /// Status socket [default: the config's status.socket]
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Device to show first [default: the first in the config]
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Re-read the device files and apply changes (same as SIGHUP).
    Reload {
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Upload the journal backlog now instead of waiting for the backoff.
    Flush {
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the daemon config and every device file; exit 0 or 2.
    CheckConfig(ConfigArg),
    /// Write a new 256-bit batch key (mode 0600).
    Keygen {
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Inspect the journal.
    Journal {
        #[command(flatten)]
        config: ConfigArg,
        /// Journal file [default: the config's journal.path]
        #[arg(long, value_name = "PATH", global = true)]
        journal: Option<PathBuf>,
        /// Key file(s) to open batches [default: the config's keys]
        #[arg(long = "key", value_name = "PATH", global = true)]
        keys: Vec<PathBuf>,
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Measure whether this machine keeps up with a rig: the real pipeline
    /// stages on synthetic data, then end to end into a temporary journal.
    Bench {
        /// Device file whose filters and features to use [default: 4th-order 1-45 Hz band-pass, default features]
        #[arg(long, value_name = "FILE")]
        device: Option<PathBuf>,
        #[arg(long)]
        channels: Option<usize>,
        #[arg(long, value_name = "HZ")]
        rate: Option<f64>,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, value_enum, default_value = "all")]
        stage: neuroedge::bench::Stage,
        /// Use these raw samples (little-endian f64, frame-major) instead of synthetic data
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Store the filtered signal too, as `[journal] store = ["raw", "filtered"]` [default: raw only, as the default journal]
        #[arg(long)]
        store_filtered: bool,
        /// SQLite page size of the bench's journals, KiB, as `[journal] page_size_kib` (1 to 64, a power of two) [default: as the daemon chooses for this rate: 64 from a million channel-samples a second, else 4]
        #[arg(long, value_name = "KIB", value_parser = page_kib)]
        journal_page_kib: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Counts, sizes and per-device seq ranges.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Integrity check, open every batch, check seq continuity.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// List batches (oldest first).
    List {
        #[arg(long)]
        device: Option<String>,
        /// pending | uploaded | quarantined
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[arg(long)]
        json: bool,
    },
    /// Export recordings: CSV, XDF, EDF+/BDF+ or a BIDS dataset (see docs/export.md).
    Export(Box<ExportArgs>),
    /// Copy every readable, authentic batch and the audit trail of a
    /// damaged journal into a new one, and report exactly what was lost.
    Salvage {
        /// The new journal (must not exist)
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Decrypt one batch and print it as JSON.
    Decrypt {
        #[arg(long, conflicts_with_all = ["device", "seq"])]
        batch_id: Option<String>,
        #[arg(long, requires = "seq")]
        device: Option<String>,
        #[arg(long, requires = "device")]
        seq: Option<u64>,
    },
}

/// An error with its exit code.
struct Fail(u8, String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(1, e.to_string())
    }
}

/// `--journal-page-kib`: a SQLite page size in KiB.
fn page_kib(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("{s:?} is not a SQLite page size"))
        .and_then(neuroedge::journal::config::check_page_kib)
        .map_err(|e| format!("{e}: use 1, 2, 4, 8, 16, 32 or 64"))
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail(2, msg.into())
}

fn load_config(arg: &ConfigArg) -> Result<Config, Fail> {
    let path = config::resolve_config_path(arg.config.as_deref());
    config::load(&path).map_err(|e| usage(format!("config error:\n{e}")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("neuroedge: {msg}");
            ExitCode::from(code)
        }
    }
}

fn dispatch(cmd: Command) -> Result<(), Fail> {
    match cmd {
        Command::Version => {
            println!("neuroedge {}", daemon::VERSION);
            Ok(())
        }
        Command::Run(c) => {
            let cfg = load_config(&c)?;
            neuroedge::logging::init(&cfg.daemon.log.level, cfg.daemon.log.format);
            daemon::run(cfg).map_err(|e| {
                tracing::error!(error = %e, "neuroedge cannot run");
                Fail(1, e.to_string())
            })
        }
        Command::CheckConfig(c) => check_config(&c),
        Command::Keygen { out } => {
            let k = crypto::generate_key_file(&out).map_err(|e| usage(e.to_string()))?;
            println!("wrote {} (key_id {}); keep a backup: batches sealed with it cannot be read without it", out.display(), k.id());
            Ok(())
        }
        Command::Bench {
            device,
            channels,
            rate,
            seconds,
            stage,
            input,
            store_filtered,
            journal_page_kib,
            json,
        } => {
            let r = neuroedge::bench::run(&neuroedge::bench::BenchArgs {
                device: device.as_deref(),
                channels,
                rate,
                seconds,
                stage,
                input: input.as_deref(),
                store_filtered,
                journal_page_kib,
            })
            .map_err(usage)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print!("{}", neuroedge::bench::render(&r));
            }
            Ok(())
        }
        Command::Status {
            socket,
            config,
            json,
            watch,
        } => status(socket, &config, json, watch),
        Command::Scope {
            socket,
            device,
            config,
        } => {
            let socket = socket_path(socket, &config)?;
            neuroedge::control::scope::run(socket, device).map_err(|e| match e {
                neuroedge::control::scope::ScopeError::NotATerminal => usage(e.to_string()),
                other => Fail(1, other.to_string()),
            })
        }
        Command::Mark {
            device,
            text,
            socket,
            config,
        } => {
            let text = text.join(" ");
            if text.trim().is_empty() {
                return Err(usage("mark needs a text: neuroedge mark DEVICE TEXT"));
            }
            let req = serde_json::json!({"cmd": "mark", "device": device, "text": text});
            control_command(socket, &config, &req.to_string(), |r| {
                format!(
                    "marker added to {} at {:.3}",
                    r.get("device").and_then(|v| v.as_str()).unwrap_or("?"),
                    r.get("t").and_then(|v| v.as_f64()).unwrap_or(0.0)
                )
            })
        }
        Command::Reload { socket, config } => {
            control_command(socket, &config, "reload", reload_summary)
        }
        Command::Flush { socket, config } => control_command(socket, &config, "flush", |r| {
            format!(
                "upload requested; {} batches pending",
                r["journal"]["pending_batches"].as_u64().unwrap_or(0)
            )
        }),
        Command::Journal {
            config,
            journal,
            keys,
            command,
        } => {
            // Warnings (e.g. a filtered signal reproduced only
            // approximately) reach the user on stderr.
            neuroedge::logging::init("warn", neuroedge::config::LogFormat::Text);
            journal_cmd(&config, journal, keys, command)
        }
    }
}

/// `check-config`: the config and device files parse and validate, and
/// the key is usable.
fn check_config(c: &ConfigArg) -> Result<(), Fail> {
    let cfg = load_config(c)?;
    println!("{}: ok", cfg.path.display());
    for d in &cfg.devices {
        let state = if d.enabled { "enabled" } else { "disabled" };
        println!(
            "  {} ({}, {state}): {}",
            d.id,
            d.driver.name(),
            d.file.display()
        );
    }
    if let Err(e) = daemon::load_keyring(&cfg) {
        if !matches!(e, crypto::KeyError::Missing { .. } if cfg.daemon.crypto.generate_if_missing) {
            return Err(usage(format!("config error:\n{e}")));
        }
    }
    Ok(())
}

/// What `reload` changed, from the daemon's reply.
fn reload_summary(r: &serde_json::Value) -> String {
    let d = &r["devices"];
    let list = |k: &str| {
        d.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "reloaded: added {}; removed {}; changed {}; unchanged {}",
        list("added"),
        list("removed"),
        list("changed"),
        list("unchanged")
    );
    for n in reply_strings(r, "restart_needed") {
        out += &format!("\nnote: {n}");
    }
    out
}

/// The strings of a reply's array `key` (none when absent; a non-string
/// entry reads as empty).
fn reply_strings<'a>(reply: &'a serde_json::Value, key: &str) -> impl Iterator<Item = &'a str> {
    reply
        .get(key)
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or(""))
}

fn socket_path(socket: Option<PathBuf>, config: &ConfigArg) -> Result<PathBuf, Fail> {
    Ok(match socket {
        Some(s) => s,
        None => {
            load_config(config)
                .map_err(|Fail(c, m)| Fail(c, format!("{m}\n(or pass --socket PATH)")))?
                .daemon
                .status
                .socket
        }
    })
}

fn status(
    socket: Option<PathBuf>,
    config: &ConfigArg,
    json: bool,
    watch: bool,
) -> Result<(), Fail> {
    let socket = socket_path(socket, config)?;
    let once = || -> Result<String, Fail> {
        Ok(if json {
            format!("{}\n", client::request(&socket, "status")?)
        } else {
            client::render(&client::status(&socket)?, client::terminal_width())
        })
    };
    if !watch {
        print!("{}", once()?);
        return Ok(());
    }
    // --watch: redraw every second; a daemon that restarts meanwhile is
    // shown as unreachable, not a reason to quit.
    loop {
        let text = once().unwrap_or_else(|Fail(_, e)| format!("{e}\n"));
        println!("\x1b[2J\x1b[H{text}(refreshing every second; Ctrl-C to quit)");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Send a command that changes something; print `ok` or the refusal.
fn control_command(
    socket: Option<PathBuf>,
    config: &ConfigArg,
    line: &str,
    ok: impl Fn(&serde_json::Value) -> String,
) -> Result<(), Fail> {
    let socket = socket_path(socket, config)?;
    let reply = client::request(&socket, line)?;
    if let Some(e) = reply.get("error").and_then(|v| v.as_str()) {
        let mut m = e.to_string();
        for p in reply_strings(&reply, "problems") {
            m += &format!("\n  {p}");
        }
        if let Some(h) = reply.get("hint").and_then(|v| v.as_str()) {
            m += &format!("\nhint: {h}");
        }
        return Err(Fail(1, m));
    }
    println!("{}", ok(&reply));
    Ok(())
}

fn open_keyring(cfg: Option<&Config>, keys: &[PathBuf]) -> Result<crypto::Keyring, Fail> {
    let mut files: Vec<PathBuf> = keys.to_vec();
    if files.is_empty() {
        let Some(cfg) = cfg else {
            return Err(usage("no key: pass --key FILE or --config"));
        };
        files.push(cfg.daemon.crypto.key_file.clone());
        files.extend(cfg.daemon.crypto.previous_key_files.iter().cloned());
    }
    let mut ring: Option<crypto::Keyring> = None;
    for f in files {
        let k = crypto::load_key_file(&f).map_err(|e| usage(e.to_string()))?;
        match ring.as_mut() {
            None => ring = Some(crypto::Keyring::new(k)),
            Some(r) => r.add(k),
        }
    }
    ring.ok_or_else(|| usage("no key file given"))
}

/// `journal verify`: SQLite's integrity check and every batch opened.
fn verify_cmd(j: &Journal, keys: &crypto::Keyring, json: bool) -> Result<(), Fail> {
    let report = inspect::verify(j, keys, |done, total| {
        if !json && total >= 1000 {
            eprintln!("verified {done}/{total} batches");
        }
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("integrity_check: {}", report.integrity);
        println!(
            "batches: {} checked, {} ok",
            report.batches_checked, report.batches_ok
        );
        for p in &report.problems {
            println!("problem: {p}");
        }
    }
    if report.ok() {
        Ok(())
    } else {
        Err(Fail(
            1,
            format!(
                "journal verification found {} problem(s)",
                report.problems.len() + usize::from(report.integrity != "ok")
            ),
        ))
    }
}

/// `journal decrypt`: one batch, opened, as JSON.
fn decrypt_cmd(
    j: &Journal,
    keys: &crypto::Keyring,
    batch_id: Option<&str>,
    device: Option<&str>,
    seq: Option<u64>,
) -> Result<(), Fail> {
    use neuroedge::journal::RowKey;
    let key = match (batch_id, device, seq) {
        (Some(id), _, _) => RowKey::BatchId(id),
        (None, Some(d), Some(s)) => RowKey::DeviceSeq(d, s),
        _ => return Err(usage("give --batch-id ID, or --device DEV --seq N")),
    };
    let env = inspect::envelope(j, key)?
        .ok_or_else(|| Fail(1, "no such batch in the journal".to_string()))?;
    let (h, b) = neuroedge::batch::open(keys, &env)?;
    let ch = b.channels.len().max(1);
    let frames = |v: &[f32]| v.chunks(ch).map(|c| c.to_vec()).collect::<Vec<_>>();
    let out = serde_json::json!({
        "header": h,
        "channels": b.channels,
        "units": b.units,
        "timestamps": b.timestamps,
        "raw": frames(&b.raw),
        // null when the journal does not store it (`[journal] store`;
        // `journal export --filtered` reproduces it from raw).
        "filtered": (b.filtered.len() == b.raw.len()).then(|| frames(&b.filtered)),
        "filter": b.filter,
        "features": b.features.iter().map(|f| serde_json::json!({
            "t": f.t,
            "band_power": f.band_power.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "rms": f.rms,
        })).collect::<Vec<_>>(),
        "markers": b.markers,
        "gaps": b.gaps,
    });
    println!("{out}");
    Ok(())
}

fn journal_cmd(
    config: &ConfigArg,
    journal: Option<PathBuf>,
    keys: Vec<PathBuf>,
    cmd: JournalCommand,
) -> Result<(), Fail> {
    let needs_cfg = journal.is_none()
        || (keys.is_empty()
            && matches!(
                cmd,
                JournalCommand::Verify { .. }
                    | JournalCommand::Decrypt { .. }
                    | JournalCommand::Export(..)
                    | JournalCommand::Salvage { .. }
            ));
    // An export also reads the device files when --config is given (a
    // Cyton's documented range, its manufacturer).
    let wants_cfg = matches!(cmd, JournalCommand::Export(..)) && config.config.is_some();
    let cfg = if needs_cfg || wants_cfg {
        Some(load_config(config)?)
    } else {
        None
    };
    let path = journal.unwrap_or_else(|| {
        cfg.as_ref()
            .map(|c| c.daemon.journal.path.clone())
            .unwrap_or_default()
    });
    if !Path::new(&path).exists() {
        return Err(Fail(
            1,
            format!(
                "journal {} does not exist (has the daemon run yet?)",
                path.display()
            ),
        ));
    }
    if let JournalCommand::Salvage { out, json } = &cmd {
        // The damaged journal may not even open: salvage reads it itself.
        let keys = open_keyring(cfg.as_ref(), &keys)?;
        return match salvage_cmd::run(&path, out, &keys, *json) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Fail(
                3,
                "some batches or audit records were lost (listed above)".into(),
            )),
            Err(e) => Err(Fail(1, e)),
        };
    }
    let j = Journal::open_readonly(&path)?;
    match cmd {
        JournalCommand::Stats { json } => {
            let s = inspect::stats(&j)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("journal {} (schema v{})", s.path, s.schema_version);
                println!(
                    "  {} batches, {} bytes sealed, file {} bytes; {} pending, {} uploaded, {} quarantined; {} evicted; {} audit records",
                    s.batches, s.batch_bytes, s.file_bytes, s.pending_batches, s.uploaded_batches, s.quarantined_batches, s.evicted_batches, s.audit_records
                );
                for d in &s.devices {
                    println!(
                        "  {}: {} batches, seq {}..{} (next {}), {} samples, {} pending",
                        d.device_id,
                        d.batches,
                        d.first_seq.map_or("-".into(), |v| v.to_string()),
                        d.last_seq.map_or("-".into(), |v| v.to_string()),
                        d.next_seq,
                        d.samples,
                        d.pending
                    );
                }
            }
            Ok(())
        }
        JournalCommand::List {
            device,
            state,
            limit,
            json,
        } => {
            let rows = inspect::list(&j, device.as_deref(), state.as_deref(), limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<38} {:<16} {:>8} {:>12} {:>7} {:>18} {:<11} {:>8}",
                    "BATCH_ID", "DEVICE", "SEQ", "FIRST", "SAMPLES", "T_START", "STATE", "BYTES"
                );
                for r in rows {
                    println!(
                        "{:<38} {:<16} {:>8} {:>12} {:>7} {:>18.3} {:<11} {:>8}",
                        r.batch_id,
                        r.device_id,
                        r.seq,
                        r.first_sample,
                        r.n_samples,
                        r.t_start,
                        r.state,
                        r.size
                    );
                }
            }
            Ok(())
        }
        JournalCommand::Verify { json } => {
            verify_cmd(&j, &open_keyring(cfg.as_ref(), &keys)?, json)
        }
        JournalCommand::Export(args) => export_cmd::export(&j, cfg.as_ref(), &keys, *args),
        JournalCommand::Salvage { .. } => unreachable!("handled before the journal is opened"),
        JournalCommand::Decrypt {
            batch_id,
            device,
            seq,
        } => {
            if batch_id.is_none() && device.is_none() {
                return Err(usage("give --batch-id ID, or --device DEV --seq N"));
            }
            let keys = open_keyring(cfg.as_ref(), &keys)?;
            decrypt_cmd(&j, &keys, batch_id.as_deref(), device.as_deref(), seq)
        }
    }
}
