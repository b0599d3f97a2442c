//! Requests on the status socket: a bare word with arguments, or a JSON
//! object `{"cmd": ...}`.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Status,
    Health,
    Devices,
    Journal,
    Uplink,
    Version,
    Mark { device: String, text: String },
    Flush,
    Reload,
}

#[derive(Debug, PartialEq)]
pub struct ParseError {
    pub message: String,
    pub hint: String,
}

const COMMANDS: &str =
    "status, health, devices, journal, uplink, version, mark DEVICE TEXT, flush, reload";

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
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        return command(cmd, s("device"), s("text")).map(Some);
    }
    let mut parts = text.splitn(3, char::is_whitespace);
    let cmd = parts.next().unwrap_or_default();
    let device = parts.next().map(str::to_string);
    let rest = parts.next().map(|t| t.trim().to_string());
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
}
