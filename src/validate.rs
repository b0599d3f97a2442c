//! Semantic checks of config sections, reported by dotted key.
//!
//! Each component validates its own section (drivers their
//! `[connection]`, the uplink its `[uplink]`, ...) into [`Findings`]; the
//! config loader (`crate::config`) turns each finding into a located
//! problem (file, key, line:column) for the technician. Components never
//! depend on the loader.

/// One problem with a setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Dotted key, e.g. `connection.port`.
    pub key: String,
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

/// Problems found in one section; keys are prefixed with the section's.
#[derive(Debug, Default)]
pub struct Findings {
    prefix: String,
    items: Vec<Finding>,
}

impl Findings {
    /// Findings whose keys are relative to `prefix` (e.g. "connection";
    /// "" for top-level keys).
    pub fn new(prefix: &str) -> Self {
        Findings {
            prefix: prefix.to_string(),
            items: Vec::new(),
        }
    }

    /// Report `key` (relative to the prefix; "" for the section itself).
    pub fn bad(&mut self, key: &str, message: impl Into<String>, hint: impl Into<String>) {
        let key = match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{key}", self.prefix),
        };
        self.items.push(Finding {
            key,
            message: message.into(),
            hint: hint.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn into_vec(self) -> Vec<Finding> {
        self.items
    }

    /// A sample rate in Hz within the daemon's limits.
    pub fn check_rate(&mut self, key: &str, rate: f64) {
        if !(rate.is_finite() && rate > 0.0 && rate <= MAX_SAMPLE_RATE) {
            self.bad(
                key,
                format!("sample rate {rate} is out of range"),
                format!("use a rate in Hz between 0 and {MAX_SAMPLE_RATE}"),
            );
        }
    }

    /// A channel count within the daemon's limits.
    pub fn check_channels(&mut self, key: &str, n: usize) {
        if !(1..=MAX_CHANNELS).contains(&n) {
            self.bad(
                key,
                format!("{n} channels is out of range"),
                format!("use 1 to {MAX_CHANNELS} channels"),
            );
        }
    }
}

/// The most channels one device may have (ring and DSP are sized by it).
pub const MAX_CHANNELS: usize = 1024;
/// The highest sample rate one device may have, in Hz.
pub const MAX_SAMPLE_RATE: f64 = 100_000.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_limits_checked() {
        let mut f = Findings::new("connection");
        f.bad("port", "empty", "set it");
        f.bad("", "no selector", "set one");
        f.check_rate("sample_rate", 0.0);
        f.check_rate("sample_rate", 250.0);
        f.check_channels("channels", 1025);
        let v = f.into_vec();
        let keys: Vec<&str> = v.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "connection.port",
                "connection",
                "connection.sample_rate",
                "connection.channels"
            ]
        );
        let mut top = Findings::new("");
        top.bad("id", "bad", "fix");
        assert_eq!(top.into_vec()[0].key, "id");
    }
}
