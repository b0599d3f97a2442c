//! Daemon and device config files: arbitrary text must give a config or
//! located problems, never a panic. The input is split at the first NUL:
//! the daemon file, then one device file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let (daemon, device) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let device_text = String::from_utf8_lossy(device).into_owned();
    let _ = neuroedge::config::parse_device(Path::new("devices/fuzz.toml"), device_text);
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("neuroedge.toml");
    if std::fs::write(&path, daemon).is_ok() {
        let _ = std::fs::create_dir_all(dir.path().join("devices"));
        let _ = std::fs::write(dir.path().join("devices/fuzz.toml"), device);
        let _ = neuroedge::config::load_with_env(&path, &[]);
    }
});
