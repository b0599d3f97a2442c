//! `[uplink]`: where committed batches are delivered, and how; validated
//! here, beside the component (the config loader only composes it).

use crate::units::{ByteCount, HumanDuration};
use crate::validate::Findings;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[uplink]`: HTTPS upload to the cloud backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkSection {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    pub timeout: HumanDuration,
    pub max_in_flight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<ByteCount>,
    pub backoff_initial: HumanDuration,
    pub backoff_max: HumanDuration,
}

impl Default for UplinkSection {
    fn default() -> Self {
        UplinkSection {
            enabled: false,
            endpoint: None,
            token_file: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            timeout: HumanDuration(Duration::from_secs(30)),
            max_in_flight: 4,
            max_bytes_per_sec: None,
            backoff_initial: HumanDuration(Duration::from_secs(1)),
            backoff_max: HumanDuration(Duration::from_secs(300)),
        }
    }
}

impl UplinkSection {
    /// Semantic checks (keys relative to `[uplink]`).
    pub fn validate(&self, out: &mut Findings) {
        if self.enabled {
            match self.endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
                None => out.bad(
                    "endpoint",
                    "uplink is enabled but has no endpoint",
                    "set endpoint = \"https://...\" or enabled = false",
                ),
                Some(e) => {
                    if let Err(msg) = super::transport::batches_url(e) {
                        out.bad(
                            "endpoint",
                            msg,
                            "write e.g. endpoint = \"https://ingest.example.org\"",
                        );
                    }
                }
            }
            if self.token_file.is_none() {
                out.bad(
                    "token_file",
                    "uplink is enabled but has no token_file",
                    "set token_file = \"/etc/neuroedge/uplink.token\" (one line: the bearer token)",
                );
            }
            if self.client_cert.is_some() != self.client_key.is_some() {
                out.bad(
                    "client_cert",
                    "client_cert and client_key go together",
                    "set both (PEM files) for mutual TLS, or neither",
                );
            }
        }
        if self.max_in_flight == 0 {
            out.bad("max_in_flight", "must be at least 1", "default is 4");
        }
        if self.backoff_initial.0 > self.backoff_max.0 {
            out.bad(
                "backoff_initial",
                "is larger than backoff_max",
                "backoff_initial <= backoff_max",
            );
        }
    }
}
