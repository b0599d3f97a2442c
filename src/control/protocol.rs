//! Requests on the status socket: a bare word with arguments, or a JSON
//! object `{"cmd": ...}`.

use crate::view::Signal;
use serde_json::{json, Value};

/// Lines per second a subscription sends by default, and its bounds.
pub const SUBSCRIBE_HZ_DEFAULT: u32 = 30;
pub const SUBSCRIBE_HZ_MAX: u32 = 60;

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Status,
    Health,
    Devices,
    Journal,
    Uplink,
    Version,
    Mark {
        device: String,
        text: String,
    },
    Flush,
    Reload,
    /// Stream the device's min/max envelope (read-only; the connection
    /// carries JSON lines until the client closes).
    Subscribe {
        device: String,
        signal: Signal,
        hz: u32,
    },
}

#[derive(Debug, PartialEq)]
pub struct ParseError {
    pub message: String,
    pub hint: String,
}

const COMMANDS: &str = "status, health, devices, journal, uplink, version, mark DEVICE TEXT, flush, reload, subscribe DEVICE [raw|filtered] [hz N]";

const SUBSCRIBE_USAGE: &str = "subscribe DEVICE [raw|filtered] [hz N] (N in 1..=60, default 30), or {\"cmd\": \"subscribe\", \"device\": \"...\", \"signal\": \"filtered\", \"hz\": 30}";

fn subscribe_error(message: impl Into<String>) -> ParseError {
    ParseError {
        message: message.into(),
        hint: SUBSCRIBE_USAGE.into(),
    }
}

fn subscribe_hz(hz: i64) -> Result<u32, ParseError> {
    if (1..=SUBSCRIBE_HZ_MAX as i64).contains(&hz) {
        Ok(hz as u32)
    } else {
        Err(subscribe_error(format!(
            "subscribe: hz {hz} is out of range (1..={SUBSCRIBE_HZ_MAX})"
        )))
    }
}

/// `subscribe DEVICE [raw|filtered] [hz N]`: the words after the device,
/// in any order.
fn subscribe_words(device: Option<String>, rest: Option<&str>) -> Result<Request, ParseError> {
    let device = device
        .filter(|d| !d.is_empty())
        .ok_or_else(|| subscribe_error("subscribe needs a device"))?;
    let mut signal = Signal::Filtered;
    let mut hz = SUBSCRIBE_HZ_DEFAULT;
    let mut words = rest.unwrap_or_default().split_whitespace();
    while let Some(w) = words.next() {
        if let Some(s) = Signal::parse(w) {
            signal = s;
        } else if w == "hz" {
            let n = words
                .next()
                .ok_or_else(|| subscribe_error("subscribe: `hz` needs a number"))?;
            let n: i64 = n.parse().map_err(|_| {
                subscribe_error(format!("subscribe: hz {n:?} is not a whole number"))
            })?;
            hz = subscribe_hz(n)?;
        } else {
            let shown: String = w.chars().take(40).collect();
            return Err(subscribe_error(format!(
                "subscribe: unknown word {shown:?}"
            )));
        }
    }
    Ok(Request::Subscribe { device, signal, hz })
}

fn subscribe_json(v: &Value) -> Result<Request, ParseError> {
    let device = v
        .get("device")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| subscribe_error("subscribe needs a \"device\" string"))?;
    let signal = match v.get("signal") {
        None | Some(Value::Null) => Signal::Filtered,
        Some(s) => s.as_str().and_then(Signal::parse).ok_or_else(|| {
            subscribe_error(format!(
                "subscribe: signal {s} is not \"raw\" or \"filtered\""
            ))
        })?,
    };
    let hz =
        match v.get("hz") {
            None | Some(Value::Null) => SUBSCRIBE_HZ_DEFAULT,
            Some(h) => subscribe_hz(h.as_i64().ok_or_else(|| {
                subscribe_error(format!("subscribe: hz {h} is not a whole number"))
            })?)?,
        };
    Ok(Request::Subscribe {
        device: device.to_string(),
        signal,
        hz,
    })
}

fn bad(message: impl Into<String>) -> ParseError {
    ParseError {
        message: message.into(),
        hint: format!("commands: {COMMANDS}; or JSON like {{\"cmd\": \"status\"}}"),
    }
}

fn command(cmd: &str, device: Option<String>, text: Option<String>) -> Result<Request, ParseError> {
    Ok(match cmd {
        "status" => Request::Status,
        "health" => Request::Health,
        "devices" => Request::Devices,
        "journal" => Request::Journal,
        "uplink" => Request::Uplink,
        "version" => Request::Version,
        "flush" => Request::Flush,
        "reload" => Request::Reload,
        "mark" => match (device, text) {
            (Some(device), Some(text)) if !device.is_empty() && !text.is_empty() => Request::Mark { device, text },
            _ => {
                return Err(ParseError {
                    message: "mark needs a device and a text".into(),
                    hint: "mark DEVICE TEXT, or {\"cmd\": \"mark\", \"device\": \"...\", \"text\": \"...\"}".into(),
                })
            }
        },
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(bad(format!("unknown command {shown:?}")));
        }
    })
}

/// Parse one line (without its newline). `Ok(None)` for a blank line.
pub fn parse(line: &[u8]) -> Result<Option<Request>, ParseError> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(bad("request is not UTF-8 text"));
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.starts_with('{') {
        let v: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON request: {e}")))?;
        let cmd = v
            .get("cmd")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("JSON request without a \"cmd\" string"))?;
        if cmd == "subscribe" {
            return subscribe_json(&v).map(Some);
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        return command(cmd, s("device"), s("text")).map(Some);
    }
    let mut parts = text.splitn(3, char::is_whitespace);
    let cmd = parts.next().unwrap_or_default();
    let device = parts.next().map(str::to_string);
    let rest = parts.next().map(|t| t.trim().to_string());
    if cmd == "subscribe" {
        return subscribe_words(device, rest.as_deref()).map(Some);
    }
    command(cmd, device, rest).map(Some)
}

pub fn error_reply(message: &str, hint: &str) -> Value {
    json!({"error": message, "hint": hint})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_json() {
        assert_eq!(parse(b"status").unwrap(), Some(Request::Status));
        assert_eq!(parse(b"  health \r").unwrap(), Some(Request::Health));
        assert_eq!(
            parse(b"{\"cmd\": \"journal\"}").unwrap(),
            Some(Request::Journal)
        );
        assert_eq!(
            parse(b"mark eeg-1 eyes closed").unwrap(),
            Some(Request::Mark {
                device: "eeg-1".into(),
                text: "eyes closed".into()
            })
        );
        assert_eq!(parse(b"").unwrap(), None);
    }

    #[test]
    fn malformed() {
        assert!(parse(b"statu").is_err());
        assert!(parse(b"{\"cmd\": 3}").is_err());
        assert!(parse(b"{not json").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
        assert!(parse(b"mark onlydevice").is_err());
    }

    #[test]
    fn subscribe_words_and_json() {
        let sub = |device: &str, signal, hz| {
            Some(Request::Subscribe {
                device: device.into(),
                signal,
                hz,
            })
        };
        assert_eq!(
            parse(b"subscribe eeg-1").unwrap(),
            sub("eeg-1", Signal::Filtered, 30)
        );
        assert_eq!(
            parse(b"subscribe eeg-1 raw hz 5").unwrap(),
            sub("eeg-1", Signal::Raw, 5)
        );
        assert_eq!(
            parse(b"subscribe eeg-1 hz 60 filtered").unwrap(),
            sub("eeg-1", Signal::Filtered, 60)
        );
        assert_eq!(
            parse(br#"{"cmd": "subscribe", "device": "d", "signal": "raw", "hz": 12}"#).unwrap(),
            sub("d", Signal::Raw, 12)
        );
        for bad in [
            &b"subscribe"[..],
            b"subscribe d hz",
            b"subscribe d hz 0",
            b"subscribe d hz 61",
            b"subscribe d hz 2.5",
            b"subscribe d loud",
            br#"{"cmd": "subscribe"}"#,
            br#"{"cmd": "subscribe", "device": "d", "hz": 1000}"#,
            br#"{"cmd": "subscribe", "device": "d", "signal": "both"}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.hint.contains("subscribe DEVICE"), "{e:?}");
        }
    }
}
