//! The retry policy of contract §7, as pure functions: no I/O, no clock, no
//! randomness of its own (time and the jitter fraction are passed in), so
//! every branch is unit-tested.

use std::time::{Duration, SystemTime};

/// Longest `Retry-After` honoured (a server asking for more is retried
/// after this, or after `backoff_max` if that is longer).
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// What one upload attempt came back with.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not sent: the envelope in the journal does not authenticate with
    /// the keys (altered on disk) or disagrees with its row.
    Altered { reason: String },
    /// The server answered with this status; `retry_after` is the parsed
    /// `Retry-After` header, if any.
    Http {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// An object store answered a PUT with an error (S3 error document):
    /// classified by its `code` first, then by `status` (contract §11).
    Store {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No answer: connect / TLS / timeout / reset. `message` is already
    /// free of secrets.
    Transport {
        kind: TransportKind,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// TCP connect or TLS handshake failed (server down, certificate refused).
    Connect,
    /// No (complete) answer within `timeout`.
    Timeout,
    /// The connection broke before a complete response (reset, EOF).
    Broken,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Connect => "connect",
            TransportKind::Timeout => "timeout",
            TransportKind::Broken => "connection broken",
        }
    }
}

/// The class of an outcome (contract §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 200, 201, 202: the batch is acknowledged.
    Ack,
    /// 409, 408, 429, 5xx, transport errors: retry this batch later.
    /// `offline` when no HTTP answer came at all.
    Retry { offline: bool },
    /// 401, 403: everything pauses with the long backoff.
    AuthFailed,
    /// 404, 405 (and 3xx, 1xx, other 2xx: the endpoint is not a batch
    /// endpoint): everything pauses with the long backoff.
    Misconfigured,
    /// Other 4xx: the backend refuses this batch for good.
    Quarantine,
}

pub fn classify(o: &Outcome) -> Class {
    match o {
        Outcome::Altered { .. } => Class::Quarantine,
        Outcome::Transport { .. } => Class::Retry { offline: true },
        Outcome::Http { status, .. } => match *status {
            200..=202 => Class::Ack,
            401 | 403 => Class::AuthFailed,
            404 | 405 => Class::Misconfigured,
            408 | 409 | 429 => Class::Retry { offline: false },
            500..=599 => Class::Retry { offline: false },
            400..=499 => Class::Quarantine,
            // 1xx, 203-299, 3xx (redirects are not followed: a moved
            // endpoint must be fixed in the config) and nonsense codes.
            _ => Class::Misconfigured,
        },
        Outcome::Store { status, code, .. } => classify_store(*status, code),
    }
}

/// S3 error codes (AWS's list; MinIO, Ceph and moto use the same names).
/// Only errors that are about the object itself quarantine a batch; an
/// unknown 4xx pauses (misconfigured) rather than quarantine: with object
/// storage a 400 is far more often a wrong region or bucket setting than a
/// bad batch, and a pause loses nothing.
fn classify_store(status: u16, code: &str) -> Class {
    match code {
        "SlowDown"
        | "ServiceUnavailable"
        | "InternalError"
        | "RequestTimeout"
        | "OperationAborted"
        | "RequestTimeTooSkewed"
        | "Busy"
        | "ServerBusy" => Class::Retry { offline: false },
        "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "InvalidToken"
        | "TokenRefreshRequired"
        | "AccountProblem" => Class::AuthFailed,
        "NoSuchBucket"
        | "PermanentRedirect"
        | "AuthorizationHeaderMalformed"
        | "InvalidBucketName"
        | "IllegalLocationConstraintException"
        | "InvalidRequest"
        | "MethodNotAllowed"
        | "NotImplemented" => Class::Misconfigured,
        "EntityTooLarge" | "BadDigest" | "InvalidDigest" | "MetadataTooLarge"
        | "KeyTooLongError" | "InvalidObjectName" => Class::Quarantine,
        _ => match status {
            200..=299 => Class::Ack,
            401 | 403 => Class::AuthFailed,
            408 | 409 | 429 | 500..=599 => Class::Retry { offline: false },
            _ => Class::Misconfigured,
        },
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Ack,
    /// Retry this batch (only this device waits) after `delay`.
    Retry {
        delay: Duration,
        offline: bool,
        error: String,
    },
    /// Pause every upload for `delay` (= backoff_max).
    AuthFailed {
        delay: Duration,
        error: String,
    },
    Misconfigured {
        delay: Duration,
        error: String,
    },
    Quarantine {
        reason: String,
    },
}

pub use crate::backoff::Backoff;

/// `Retry-After`: delay-seconds or an HTTP date (IMF-fixdate, RFC 850,
/// asctime); a date in the past means "now". None if unparsable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Huge numbers saturate rather than fail.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The decision for an attempt: `attempt` is the batch's consecutive
/// failures including this one (1 for the first failure), `jitter` in [0, 1).
pub fn decide(o: &Outcome, backoff: &Backoff, attempt: u32, jitter: f64) -> Verdict {
    let describe = || match o {
        Outcome::Http { status, .. } => format!("HTTP {status}"),
        Outcome::Store {
            status,
            code,
            message,
            ..
        } => {
            if message.is_empty() {
                format!("S3 {status} {code}")
            } else {
                format!("S3 {status} {code}: {message}")
            }
        }
        Outcome::Transport { kind, message } => format!("{}: {message}", kind.as_str()),
        Outcome::Altered { reason } => {
            format!("altered in the journal, not sent ({reason}); see `neuroedge journal verify`")
        }
    };
    match classify(o) {
        Class::Ack => Verdict::Ack,
        Class::Retry { offline } => {
            let mut delay = backoff.delay(attempt, jitter);
            if let Outcome::Http {
                retry_after: Some(ra),
                ..
            }
            | Outcome::Store {
                retry_after: Some(ra),
                ..
            } = o
            {
                // Never sooner than the server asked (bounded).
                delay = delay.max((*ra).min(RETRY_AFTER_CAP.max(backoff.max)));
            }
            Verdict::Retry {
                delay,
                offline,
                error: describe(),
            }
        }
        Class::AuthFailed => Verdict::AuthFailed {
            delay: backoff.max,
            error: if matches!(o, Outcome::Store { .. }) {
                format!(
                    "{}: the store refused the credentials (check [uplink.s3] credentials_file and the key's policy)",
                    describe()
                )
            } else {
                format!(
                    "{}: the backend refused the token (check token_file)",
                    describe()
                )
            },
        },
        Class::Misconfigured => Verdict::Misconfigured {
            delay: backoff.max,
            error: if matches!(o, Outcome::Store { .. }) {
                format!(
                    "{}: the store does not take objects there (check [uplink.s3] endpoint, bucket, region, path_style)",
                    describe()
                )
            } else {
                format!(
                    "{}: the endpoint does not accept batches (check [uplink] endpoint)",
                    describe()
                )
            },
        },
        Class::Quarantine => Verdict::Quarantine { reason: describe() },
    }
}

/// The uplink's state in `status` (contract §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkState {
    Disabled,
    Idle,
    Uploading,
    Backoff,
    Offline,
    AuthFailed,
    Misconfigured,
}

impl UplinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            UplinkState::Disabled => "disabled",
            UplinkState::Idle => "idle",
            UplinkState::Uploading => "uploading",
            UplinkState::Backoff => "backoff",
            UplinkState::Offline => "offline",
            UplinkState::AuthFailed => "auth_failed",
            UplinkState::Misconfigured => "misconfigured",
        }
    }

    /// Idle and uploading alternate with every batch in normal operation;
    /// only changes into or out of the other states are audited.
    pub fn is_normal(self) -> bool {
        matches!(self, UplinkState::Idle | UplinkState::Uploading)
    }
}

/// A global condition that stops every upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    AuthFailed,
    Misconfigured,
}

/// The state shown, from the engine's facts (precedence: a halt, then
/// failing devices, then work).
pub fn derive_state(
    halt: Option<Halt>,
    failing_devices: usize,
    last_failure_offline: bool,
    in_flight: usize,
    ready: bool,
) -> UplinkState {
    match halt {
        Some(Halt::AuthFailed) => UplinkState::AuthFailed,
        Some(Halt::Misconfigured) => UplinkState::Misconfigured,
        None if failing_devices > 0 && last_failure_offline => UplinkState::Offline,
        None if failing_devices > 0 => UplinkState::Backoff,
        None if in_flight > 0 || ready => UplinkState::Uploading,
        None => UplinkState::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn altered_batches_are_quarantined_not_retried() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let o = Outcome::Altered {
            reason: "authentication failed".into(),
        };
        match decide(&o, &b, 1, 0.5) {
            Verdict::Quarantine { reason } => {
                assert!(reason.contains("altered") && reason.contains("authentication failed"))
            }
            v => panic!("{v:?}"),
        }
    }

    fn http(status: u16) -> Outcome {
        Outcome::Http {
            status,
            retry_after: None,
        }
    }

    const B: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };

    fn store(status: u16, code: &str) -> Outcome {
        Outcome::Store {
            status,
            code: code.into(),
            message: "m".into(),
            retry_after: None,
        }
    }

    #[test]
    fn s3_answers_per_contract_11() {
        assert_eq!(classify(&store(403, "AccessDenied")), Class::AuthFailed);
        assert_eq!(
            classify(&store(403, "SignatureDoesNotMatch")),
            Class::AuthFailed
        );
        assert_eq!(classify(&store(404, "NoSuchBucket")), Class::Misconfigured);
        assert_eq!(
            classify(&store(301, "PermanentRedirect")),
            Class::Misconfigured
        );
        assert_eq!(
            classify(&store(400, "AuthorizationHeaderMalformed")),
            Class::Misconfigured
        );
        assert_eq!(
            classify(&store(503, "SlowDown")),
            Class::Retry { offline: false }
        );
        assert_eq!(
            classify(&store(400, "RequestTimeout")),
            Class::Retry { offline: false }
        );
        assert_eq!(classify(&store(500, "")), Class::Retry { offline: false });
        assert_eq!(classify(&store(400, "EntityTooLarge")), Class::Quarantine);
        // An unknown 4xx pauses, never quarantines.
        assert_eq!(classify(&store(400, "SomethingNew")), Class::Misconfigured);
        assert_eq!(classify(&store(418, "")), Class::Misconfigured);
        match decide(&store(403, "InvalidAccessKeyId"), &B, 1, 0.5) {
            Verdict::AuthFailed { error, .. } => {
                assert!(
                    error.contains("S3 403 InvalidAccessKeyId")
                        && error.contains("credentials_file"),
                    "{error}"
                )
            }
            v => panic!("{v:?}"),
        }
        let slow = Outcome::Store {
            status: 503,
            code: "SlowDown".into(),
            message: String::new(),
            retry_after: Some(Duration::from_secs(7)),
        };
        match decide(&slow, &B, 1, 0.0) {
            Verdict::Retry { delay, error, .. } => {
                assert!(delay >= Duration::from_secs(7));
                assert_eq!(error, "S3 503 SlowDown");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn every_status_class_of_the_contract() {
        for s in [200, 201, 202] {
            assert_eq!(classify(&http(s)), Class::Ack, "{s}");
            assert_eq!(decide(&http(s), &B, 1, 0.5), Verdict::Ack);
        }
        for s in [408, 409, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify(&http(s)), Class::Retry { offline: false }, "{s}");
        }
        for s in [401, 403] {
            assert_eq!(classify(&http(s)), Class::AuthFailed, "{s}");
        }
        for s in [404, 405] {
            assert_eq!(classify(&http(s)), Class::Misconfigured, "{s}");
        }
        for s in [400, 402, 406, 410, 411, 413, 415, 422, 451, 499] {
            assert_eq!(classify(&http(s)), Class::Quarantine, "{s}");
            match decide(&http(s), &B, 1, 0.0) {
                Verdict::Quarantine { reason } => assert_eq!(reason, format!("HTTP {s}")),
                v => panic!("{s}: {v:?}"),
            }
        }
        // Not a batch endpoint: never acknowledged, never quarantined.
        for s in [100, 204, 206, 301, 302, 304, 307, 308, 600, 999] {
            assert_eq!(classify(&http(s)), Class::Misconfigured, "{s}");
        }
        for kind in [
            TransportKind::Connect,
            TransportKind::Timeout,
            TransportKind::Broken,
        ] {
            let o = Outcome::Transport {
                kind,
                message: "x".into(),
            };
            assert_eq!(classify(&o), Class::Retry { offline: true });
            match decide(&o, &B, 1, 0.0) {
                Verdict::Retry { offline, error, .. } => {
                    assert!(offline);
                    assert!(error.starts_with(kind.as_str()), "{error}");
                }
                v => panic!("{v:?}"),
            }
        }
    }

    #[test]
    fn auth_failed_and_misconfigured_pause_for_backoff_max() {
        for (s, want_auth) in [(401, true), (403, true), (404, false), (405, false)] {
            for attempt in [1, 5, 50] {
                match (decide(&http(s), &B, attempt, 0.0), want_auth) {
                    (Verdict::AuthFailed { delay, error }, true) => {
                        assert_eq!(delay, B.max);
                        assert!(error.contains(&s.to_string()), "{error}");
                    }
                    (Verdict::Misconfigured { delay, .. }, false) => assert_eq!(delay, B.max),
                    (v, _) => panic!("{s}: {v:?}"),
                }
            }
        }
    }

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        assert_eq!(B.ceiling(1), Duration::from_millis(100));
        assert_eq!(B.ceiling(2), Duration::from_millis(200));
        assert_eq!(B.ceiling(4), Duration::from_millis(800));
        assert_eq!(B.ceiling(8), Duration::from_millis(10_000));
        assert_eq!(B.ceiling(u32::MAX), B.max, "no overflow");
        assert_eq!(B.ceiling(0), B.initial);
        // Jitter spans [initial, ceiling].
        assert_eq!(B.delay(4, 0.0), Duration::from_millis(100));
        assert_eq!(B.delay(4, 0.5), Duration::from_millis(450));
        assert_eq!(B.delay(4, 1.0), Duration::from_millis(800));
        assert_eq!(B.delay(4, f64::NAN), Duration::from_millis(100));
        assert_eq!(B.delay(4, 7.0), Duration::from_millis(800), "clamped");
        for attempt in 1..100 {
            for j in [0.0, 0.1, 0.33, 0.999] {
                let d = B.delay(attempt, j);
                assert!(d >= B.initial && d <= B.max, "{attempt} {j} {d:?}");
            }
        }
        // initial > max (refused by config validation) still stays <= max.
        let odd = Backoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(1),
        };
        assert_eq!(odd.delay(3, 0.9), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_retries() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ds: Vec<Duration> = (0..200).map(|_| B.delay(6, rng.gen::<f64>())).collect();
        let min = ds.iter().min().copied().unwrap_or_default();
        let max = ds.iter().max().copied().unwrap_or_default();
        assert!(min >= B.initial && max <= B.ceiling(6));
        assert!(
            max - min > Duration::from_millis(2000),
            "spread {min:?}..{max:?}"
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60)),
            "RFC 850"
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:10 2015", now),
            Some(Duration::from_secs(10)),
            "asctime"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "past date: now"
        );
        for bad in ["", "-5", "1.5", "soon", "Wed, 99 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_and_bounded() {
        let o = |ra: u64, status: u16| Outcome::Http {
            status,
            retry_after: Some(Duration::from_secs(ra)),
        };
        for s in [429, 503, 409, 408] {
            match decide(&o(3, s), &B, 1, 0.0) {
                Verdict::Retry { delay, offline, .. } => {
                    assert_eq!(delay, Duration::from_secs(3), "{s}");
                    assert!(!offline);
                }
                v => panic!("{v:?}"),
            }
        }
        // A shorter Retry-After than the backoff: the backoff wins.
        match decide(&o(0, 503), &B, 7, 1.0) {
            Verdict::Retry { delay, .. } => assert_eq!(delay, B.ceiling(7)),
            v => panic!("{v:?}"),
        }
        // Absurd values are capped.
        match decide(&o(10_000_000, 503), &B, 1, 0.0) {
            Verdict::Retry { delay, .. } => assert_eq!(delay, RETRY_AFTER_CAP),
            v => panic!("{v:?}"),
        }
        // Retry-After on a 413 does not turn it into a retry.
        assert!(matches!(
            decide(&o(1, 413), &B, 1, 0.0),
            Verdict::Quarantine { .. }
        ));
    }

    #[test]
    fn state_precedence() {
        use UplinkState::*;
        assert_eq!(derive_state(None, 0, false, 0, false), Idle);
        assert_eq!(derive_state(None, 0, false, 2, false), Uploading);
        assert_eq!(derive_state(None, 0, false, 0, true), Uploading);
        assert_eq!(derive_state(None, 1, false, 3, true), Backoff);
        assert_eq!(derive_state(None, 1, true, 3, true), Offline);
        assert_eq!(
            derive_state(Some(Halt::AuthFailed), 1, true, 1, true),
            AuthFailed
        );
        assert_eq!(
            derive_state(Some(Halt::Misconfigured), 0, false, 0, false),
            Misconfigured
        );
        assert!(Idle.is_normal() && Uploading.is_normal());
        for s in [Backoff, Offline, AuthFailed, Misconfigured, Disabled] {
            assert!(!s.is_normal());
        }
    }
}
