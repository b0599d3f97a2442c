//! `[lsl_outlet]` of a device file (contract §10): which of the device's
//! streams are published on Lab Streaming Layer.

use crate::validate::Findings;
use serde::{Deserialize, Serialize};

/// One publishable stream of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Raw,
    Filtered,
    BandPower,
    Quality,
    Markers,
}

impl StreamKind {
    /// Every kind, in the order of the contract.
    pub const ALL: [StreamKind; 5] = [
        StreamKind::Raw,
        StreamKind::Filtered,
        StreamKind::BandPower,
        StreamKind::Quality,
        StreamKind::Markers,
    ];

    /// The name in `streams = [...]`, stream names and status.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Raw => "raw",
            StreamKind::Filtered => "filtered",
            StreamKind::BandPower => "band_power",
            StreamKind::Quality => "quality",
            StreamKind::Markers => "markers",
        }
    }

    pub fn parse(name: &str) -> Option<StreamKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Position in [`StreamKind::ALL`] (index of counters and bit masks).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn bit(self) -> u8 {
        1 << self.index()
    }
}

/// `[lsl_outlet]`: `streams = ["filtered", "band_power", ...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutletSection {
    /// Names as written; [`OutletSection::kinds`] once validated.
    pub streams: Vec<String>,
}

impl OutletSection {
    /// Unknown names and duplicates are errors.
    pub fn validate(&self, out: &mut Findings) {
        let names: Vec<&str> = StreamKind::ALL.iter().map(|k| k.as_str()).collect();
        for (i, s) in self.streams.iter().enumerate() {
            if StreamKind::parse(s).is_none() {
                out.bad(
                    "streams",
                    format!("{s:?} is not a stream neuroedge can publish"),
                    format!("use any of {}", names.join(", ")),
                );
            } else if self.streams[..i].contains(s) {
                out.bad(
                    "streams",
                    format!("{s:?} is listed twice"),
                    "name each stream once",
                );
            }
        }
    }

    /// The streams to publish, in the order written (names that do not
    /// parse are skipped: validation refused them already).
    pub fn kinds(&self) -> Vec<StreamKind> {
        let mut v: Vec<StreamKind> = Vec::new();
        for k in self.streams.iter().filter_map(|s| StreamKind::parse(s)) {
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    }

    /// The streams as a bit mask of [`StreamKind::bit`].
    pub fn mask(&self) -> u8 {
        self.kinds().iter().fold(0, |m, k| m | k.bit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(streams: &[&str]) -> Vec<crate::validate::Finding> {
        let s = OutletSection {
            streams: streams.iter().map(|s| s.to_string()).collect(),
        };
        let mut f = Findings::new("lsl_outlet");
        s.validate(&mut f);
        f.into_vec()
    }

    #[test]
    fn known_names_pass_unknown_and_duplicates_are_refused() {
        assert!(findings(&["raw", "filtered", "band_power", "quality", "markers"]).is_empty());
        assert!(findings(&[]).is_empty());
        let f = findings(&["filtered", "bandpower"]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].key, "lsl_outlet.streams");
        assert!(f[0].message.contains("\"bandpower\""), "{f:?}");
        assert!(f[0].hint.contains("band_power"), "{f:?}");
        let f = findings(&["quality", "markers", "quality"]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].message.contains("listed twice"), "{f:?}");
    }

    #[test]
    fn kinds_and_mask() {
        let s = OutletSection {
            streams: vec!["markers".into(), "raw".into()],
        };
        assert_eq!(s.kinds(), [StreamKind::Markers, StreamKind::Raw]);
        assert_eq!(s.mask(), 0b10001);
        for k in StreamKind::ALL {
            assert_eq!(StreamKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(StreamKind::parse("EEG"), None);
    }
}
