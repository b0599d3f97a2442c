//! Link-time layout of the release daemon (x86-64 Linux with rust-lld).
//!
//! The kernel maps code 64 KiB at a time around each page a process
//! touches, and the ~2 MB of functions the daemon runs (start-up, the idle
//! pipeline, an LSL device) were spread over a 10.5 MB `.text`: 7 MB of it
//! resident. `link/x86_64-unknown-linux-gnu.order` lists those functions
//! (`scripts/symbol-order.sh` makes it from callgrind runs of the daemon);
//! the linker puts them first, together, and the idle default run's
//! resident code drops to ~3 MB (docs/performance.md). The file names
//! functions by their mangled symbols, which a different toolchain or
//! Cargo.lock renames (the build then warns that the file is stale), and
//! code changes rename some (ThinLTO's `.llvm.<hash>` locals; the
//! script's `--check` counts them). The link works either way; only the
//! memory figure suffers.
//!
//! Only for release builds of the `neuroedge` binary on
//! x86_64-unknown-linux-gnu with rustc >= 1.90's default linker (rust-lld):
//! GNU ld does not know `--symbol-ordering-file`. `NEUROEDGE_SYMBOL_ORDER=0`
//! turns it off.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const ORDER: &str = "link/x86_64-unknown-linux-gnu.order";

fn main() {
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-env-changed=NEUROEDGE_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let order = manifest.join(ORDER);
    let version = match applies(&order) {
        Ok(version) => version,
        Err(why) => {
            // Not an error: debug builds, other targets and linkers link as usual.
            if std::env::var("PROFILE").as_deref() == Ok("release") {
                println!("cargo:warning=function order not applied: {why}");
            }
            return;
        }
    };
    if let Some(stale) = stale(&order, &manifest.join("Cargo.lock"), &version) {
        println!(
            "cargo:warning={ORDER} was made for {stale}: many of its symbols will not be found, \
             so the daemon's idle memory is up to ~4 MB higher; regenerate it with scripts/symbol-order.sh"
        );
    }
    println!(
        "cargo:rustc-link-arg-bin=neuroedge=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // Symbols the file names that this build does not have (renamed,
    // inlined, removed) are expected; they are listed by the script's --check.
    println!("cargo:rustc-link-arg-bin=neuroedge=-Wl,--no-warn-symbol-ordering");
}

/// Why the order file cannot be given to this link, if it cannot; else
/// `rustc -vV`.
fn applies(order: &Path) -> Result<String, String> {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    if env("PROFILE") != "release" {
        return Err("not a release build".into());
    }
    if env("TARGET") != "x86_64-unknown-linux-gnu" {
        return Err(format!(
            "target {} (the file is for x86_64-unknown-linux-gnu)",
            env("TARGET")
        ));
    }
    if env("NEUROEDGE_SYMBOL_ORDER") == "0" {
        return Err("NEUROEDGE_SYMBOL_ORDER=0".into());
    }
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    if flags.split('\x1f').any(|f| f.contains("linker"))
        || !env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
    {
        return Err("a linker is chosen in RUSTFLAGS or the environment".into());
    }
    if !order.is_file() {
        return Err(format!("{} is missing", order.display()));
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = run(&rustc, &["-vV"])?;
    let release = field(&version, "release").unwrap_or_default();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (1, 90) {
        return Err(format!(
            "rustc {release} links with the system linker (rust-lld is the default from 1.90)"
        ));
    }
    let sysroot = run(&rustc, &["--print", "sysroot"])?;
    let lld =
        Path::new(sysroot.trim()).join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld");
    if !lld.exists() {
        return Err(format!(
            "this toolchain has no self-contained rust-lld ({})",
            lld.display()
        ));
    }
    Ok(version)
}

/// What the order file was made for, when that differs from this build:
/// its header records rustc's commit and Cargo.lock's SHA-256.
fn stale(order: &Path, lock: &Path, version: &str) -> Option<String> {
    let text = std::fs::read_to_string(order).ok()?;
    let header = |key: &str| {
        text.lines()
            .take_while(|l| l.starts_with('#'))
            .find_map(|l| {
                l.strip_prefix("# ")?
                    .strip_prefix(key)?
                    .strip_prefix(": ")
                    .map(str::trim)
            })
            .unwrap_or("")
            .to_string()
    };
    let commit = field(version, "commit-hash").unwrap_or_default();
    let lock_sha = std::fs::read(lock)
        .map(|b| hex(&Sha256::digest(b)))
        .unwrap_or_default();
    let (made_commit, made_lock) = (header("rustc commit"), header("Cargo.lock sha256"));
    if made_commit != commit {
        Some(format!("rustc {made_commit} (this is {commit})"))
    } else if made_lock != lock_sha {
        Some("another Cargo.lock".into())
    } else {
        None
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn field(version: &str, key: &str) -> Option<String> {
    version.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(": ")
            .map(|v| v.trim().to_string())
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
