//! The export's time arguments (`--from`/`--to`: RFC 3339 or unix
//! seconds): a finite time or a clear error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use neuroedge::export::timefmt::parse_time_arg;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(t) = parse_time_arg(&s) {
        assert!(t.is_finite());
    }
});
