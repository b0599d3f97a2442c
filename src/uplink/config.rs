//! `[uplink]`: where committed batches are delivered, and how; validated
//! here, beside the component (the config loader only composes it).

use crate::units::{ByteCount, HumanDuration};
use crate::validate::Findings;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Where batches go: the backend's HTTPS contract (§7) or an
/// S3-compatible bucket (§11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    #[default]
    Https,
    S3,
}

/// `[uplink.s3]` (contract §11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Section {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    pub region: String,
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// `https://endpoint/bucket/key` (true: MinIO, Ceph, Garage, moto) or
    /// `https://bucket.endpoint/key` (false: AWS's preferred style).
    pub path_style: bool,
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            endpoint: None,
            bucket: None,
            region: "us-east-1".into(),
            prefix: "neuroedge".into(),
            credentials_file: None,
            path_style: true,
        }
    }
}

impl S3Section {
    fn validate(&self, out: &mut Findings) {
        match self.endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
            None => out.bad(
                "s3.endpoint",
                "sink = \"s3\" but [uplink.s3] has no endpoint",
                "set endpoint = \"https://s3.example.org\" (or your provider's regional endpoint)",
            ),
            Some(e) => {
                if let Err(msg) = super::transport::checked_url(e) {
                    out.bad(
                        "s3.endpoint",
                        msg,
                        "write e.g. endpoint = \"https://s3.example.org\"",
                    );
                }
            }
        }
        match self.bucket.as_deref() {
            None => out.bad(
                "s3.bucket",
                "sink = \"s3\" but [uplink.s3] has no bucket",
                "set bucket = \"eeg-archive\"",
            ),
            Some(b) => {
                if let Err(msg) = super::s3::check_bucket_name(b) {
                    out.bad(
                        "s3.bucket",
                        msg,
                        "S3 bucket names: 3-63 of a-z, 0-9, '.', '-'",
                    );
                }
            }
        }
        if self.region.trim().is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            out.bad(
                "s3.region",
                "is not a region name",
                "e.g. region = \"us-east-1\"",
            );
        }
        if let Err(msg) = super::s3::check_prefix(&self.prefix) {
            out.bad(
                "s3.prefix",
                msg,
                "e.g. prefix = \"neuroedge\" (or \"\" for none)",
            );
        }
        if self.credentials_file.is_none() {
            out.bad(
                "s3.credentials_file",
                "sink = \"s3\" but [uplink.s3] has no credentials_file",
                "set credentials_file = \"/etc/neuroedge/s3.credentials\" (two lines: access key id, secret key; mode 0600)",
            );
        }
    }
}

/// `[uplink]`: delivery of committed batches, to the backend (HTTPS) or
/// to object storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkSection {
    pub enabled: bool,
    pub sink: SinkKind,
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
    pub s3: S3Section,
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
            sink: SinkKind::Https,
            s3: S3Section::default(),
        }
    }
}

impl UplinkSection {
    /// Semantic checks (keys relative to `[uplink]`).
    pub fn validate(&self, out: &mut Findings) {
        if self.enabled && self.sink == SinkKind::S3 {
            self.s3.validate(out);
        }
        if self.enabled && self.sink == SinkKind::Https {
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
        }
        if self.enabled && self.client_cert.is_some() != self.client_key.is_some() {
            out.bad(
                "client_cert",
                "client_cert and client_key go together",
                "set both (PEM files) for mutual TLS, or neither",
            );
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
