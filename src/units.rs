//! Human-friendly config values (shared by every section): sizes ("2GiB") and durations ("24h", "500ms").

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// A byte count written as `"2GiB"`, `"512MB"` or a plain integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteCount(pub u64);

impl<'de> Deserialize<'de> for ByteCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteCount(n)),
            Raw::Text(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| ByteCount(b.as_u64()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "invalid size {s:?} ({e}); write e.g. \"2GiB\", \"500MB\" or a number of bytes"
                    ))
                }),
        }
    }
}

impl Serialize for ByteCount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &bytesize::ByteSize(self.0)
                .to_string_as(true)
                .replace(' ', ""),
        )
    }
}

/// A duration written as `"24h"`, `"1m 30s"`, `"250ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write e.g. \"30s\", \"5m\", \"24h\""
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        size: ByteCount,
        after: HumanDuration,
    }

    #[test]
    fn parses_sizes_and_durations() {
        let t: T = toml::from_str("size = \"2GiB\"\nafter = \"24h\"").unwrap();
        assert_eq!(t.size.0, 2 * 1024 * 1024 * 1024);
        assert_eq!(t.after.0, Duration::from_secs(86400));
        let t: T = toml::from_str("size = 4096\nafter = \"250ms\"").unwrap();
        assert_eq!(t.size.0, 4096);
        assert_eq!(t.after.0, Duration::from_millis(250));
        assert!(toml::from_str::<T>("size = \"lots\"\nafter = \"1s\"").is_err());
        assert!(toml::from_str::<T>("size = 1\nafter = \"soon\"").is_err());
    }
}
