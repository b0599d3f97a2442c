//! The backend's answer as the uplink sees it: a status code and a
//! `Retry-After` value, classified into a verdict with a bounded delay.
#![no_main]
use libfuzzer_sys::fuzz_target;
use neuroedge::uplink::policy::{decide, parse_retry_after, Backoff, Outcome, Verdict};
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let attempt = u32::from(data[2]);
    let value = String::from_utf8_lossy(&data[3..]);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let retry_after = parse_retry_after(&value, now);
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(300),
    };
    let v = decide(
        &Outcome::Http {
            status,
            retry_after,
        },
        &backoff,
        attempt,
        0.5,
    );
    if let Verdict::Retry { delay, .. } = v {
        // Never longer than the cap the policy documents (1 h).
        assert!(delay <= Duration::from_secs(3600), "{delay:?}");
    }
});
