//! The object-storage sink (contract §11): one object per batch, the
//! envelope byte for byte, under a key made from the batch's authenticated
//! header. Requests are signed with AWS Signature V4 by `rusty-s3` (a
//! sans-I/O signer: no HTTP stack of its own, no aws-lc-rs or OpenSSL) and
//! sent with the same rustls client as the HTTPS sink.
//!
//! Idempotency: the key is a function of the batch alone, and a batch's
//! bytes never change, so a PUT repeated after a lost reply writes the same
//! bytes under the same key. A batch is acknowledged only on a 2xx.

use super::config::{S3Section, UplinkSection};
use super::policy::{parse_retry_after, Outcome};
use super::sink::{Deliver, Delivery};
use super::transport::{checked_url, http_client, transport_failure, Secret};
use crate::batch::BatchHeader;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Object name suffix.
pub const OBJECT_SUFFIX: &str = ".nebatch";

/// How long a signed request stays valid (a request is signed just before
/// it is sent; retries are signed anew).
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Longest error document read from the store.
const ERROR_BODY_MAX: usize = 64 * 1024;

/// S3 bucket naming rules (the strict, DNS-compatible ones, which every
/// store accepts): 3-63 characters of `a-z 0-9 . -`, starting and ending
/// with a letter or digit, no `..`, not an IPv4 address.
pub fn check_bucket_name(b: &str) -> Result<(), String> {
    let ok_chars = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&b.len())
        || !ok_chars
        || !edge(b.bytes().next())
        || !edge(b.bytes().last())
        || b.contains("..")
        || b.parse::<std::net::Ipv4Addr>().is_ok()
    {
        return Err(format!("{b:?} is not a valid bucket name"));
    }
    Ok(())
}

/// The key prefix: empty, or segments separated by single `/`, without a
/// leading or trailing `/`, printable, at most 256 bytes.
pub fn check_prefix(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Ok(());
    }
    if p.starts_with('/') || p.ends_with('/') || p.contains("//") {
        return Err(format!(
            "{p:?}: no leading or trailing '/', no empty segment"
        ));
    }
    if p.len() > 256 || p.chars().any(|c| c.is_control()) {
        return Err(format!("{p:?}: at most 256 bytes, no control characters"));
    }
    Ok(())
}

/// `<prefix>/<site_id>/<node_id>/<device_id>/<YYYY>/<MM>/<DD>/<seq, 12
/// digits>-<batch_id>.nebatch`, the date that of `t_start` in UTC.
pub fn object_key(prefix: &str, h: &BatchHeader) -> Result<String, String> {
    if !h.t_start.is_finite() {
        return Err(format!("t_start {} is not a time", h.t_start));
    }
    let t = time::OffsetDateTime::from_unix_timestamp(h.t_start.floor() as i64)
        .map_err(|e| format!("t_start {}: {e}", h.t_start))?;
    for (what, v) in [
        ("site_id", &h.site_id),
        ("node_id", &h.node_id),
        ("device_id", &h.device_id),
        ("batch_id", &h.batch_id),
    ] {
        if v.is_empty() || v.contains('/') || v == "." || v == ".." {
            return Err(format!("{what} {v:?} cannot be a key segment"));
        }
    }
    let mut key = String::with_capacity(prefix.len() + 128);
    if !prefix.is_empty() {
        key.push_str(prefix);
        key.push('/');
    }
    key.push_str(&format!(
        "{}/{}/{}/{:04}/{:02}/{:02}/{:012}-{}{OBJECT_SUFFIX}",
        h.site_id,
        h.node_id,
        h.device_id,
        t.year(),
        u8::from(t.month()),
        t.day(),
        h.seq,
        h.batch_id
    ));
    Ok(key)
}

/// The object's user metadata (sent as `x-amz-meta-<name>`).
pub fn object_metadata(h: &BatchHeader) -> [(&'static str, String); 6] {
    [
        ("x-amz-meta-neuroedge-seq", h.seq.to_string()),
        (
            "x-amz-meta-neuroedge-first-sample",
            h.first_sample.to_string(),
        ),
        ("x-amz-meta-neuroedge-n-samples", h.n_samples.to_string()),
        ("x-amz-meta-neuroedge-t-start", format!("{:.6}", h.t_start)),
        ("x-amz-meta-neuroedge-t-end", format!("{:.6}", h.t_end)),
        ("x-amz-meta-neuroedge-key-id", h.key_id.clone()),
    ]
}

/// Read the credentials file: two lines (access key id, secret key), and
/// no access for group or others (refused otherwise, like ssh does with a
/// private key). The contents never appear in an error.
pub fn load_credentials(p: &Path) -> Result<(Secret, Secret), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(p).map_err(|e| format!("credentials_file {}: {e}", p.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "credentials_file {}: mode {mode:04o} lets group or others read it; run `chmod 600 {}`",
            p.display(),
            p.display()
        ));
    }
    let raw = std::fs::read(p).map_err(|e| format!("credentials_file {}: {e}", p.display()))?;
    let text = String::from_utf8(raw)
        .map_err(|_| format!("credentials_file {}: not UTF-8 text", p.display()))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let bad = |l: &&str| l.chars().any(|c| c.is_control() || c == ' ');
    if lines.len() != 2 || lines.iter().any(bad) {
        return Err(format!(
            "credentials_file {}: expected two lines, the access key id then the secret key, without spaces",
            p.display()
        ));
    }
    Ok((Secret::new(lines[0].into()), Secret::new(lines[1].into())))
}

/// `s3://bucket/prefix at endpoint`, for `status` and the log.
pub fn describe(s: &S3Section) -> String {
    let bucket = s.bucket.as_deref().unwrap_or("?");
    let endpoint = s.endpoint.as_deref().unwrap_or("?").trim();
    if s.prefix.is_empty() {
        format!("s3://{bucket} at {endpoint}")
    } else {
        format!("s3://{bucket}/{} at {endpoint}", s.prefix)
    }
}

/// The ready sink.
pub struct S3Sink {
    client: reqwest::Client,
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    access_key: Secret,
    secret_key: Secret,
    target: String,
}

impl std::fmt::Debug for S3Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Sink")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl S3Sink {
    /// Build from `[uplink]` / `[uplink.s3]`: every file is read here, so
    /// a bad credentials file or CA is one clear error (the uplink then
    /// reports `misconfigured` and tries again later).
    pub fn build(cfg: &UplinkSection) -> Result<S3Sink, String> {
        let s3 = &cfg.s3;
        let endpoint = s3
            .endpoint
            .as_deref()
            .ok_or_else(|| "[uplink.s3] has no endpoint".to_string())?;
        let url = checked_url(endpoint)?;
        let name = s3
            .bucket
            .clone()
            .ok_or_else(|| "[uplink.s3] has no bucket".to_string())?;
        check_bucket_name(&name)?;
        check_prefix(&s3.prefix)?;
        let style = if s3.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let https = url.scheme() == "https";
        let bucket = Bucket::new(url, style, name, s3.region.clone())
            .map_err(|e| format!("[uplink.s3] endpoint {endpoint:?}: {e}"))?;
        let file = s3
            .credentials_file
            .as_deref()
            .ok_or_else(|| "[uplink.s3] has no credentials_file".to_string())?;
        let (access_key, secret_key) = load_credentials(file)?;
        let credentials = Credentials::new(access_key.expose(), secret_key.expose());
        let client = http_client(cfg, https, &[&access_key, &secret_key])?;
        Ok(S3Sink {
            client,
            bucket,
            credentials,
            prefix: s3.prefix.clone(),
            access_key,
            secret_key,
            target: describe(s3),
        })
    }

    /// PUT one envelope under its key.
    pub async fn put(&self, header: &BatchHeader, envelope: Vec<u8>) -> Outcome {
        let key = match object_key(&self.prefix, header) {
            Ok(k) => k,
            Err(e) => {
                return Outcome::Store {
                    status: 0,
                    code: "InvalidObjectName".into(),
                    message: e,
                    retry_after: None,
                }
            }
        };
        let meta = object_metadata(header);
        let mut action = self.bucket.put_object(Some(&self.credentials), &key);
        action
            .headers_mut()
            .insert("content-type", "application/cbor");
        for (k, v) in &meta {
            action.headers_mut().insert(*k, v.as_str());
        }
        let url = action.sign(SIGNATURE_LIFETIME);
        let mut req = self
            .client
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "application/cbor");
        for (k, v) in &meta {
            req = req.header(*k, v.as_str());
        }
        let secrets = [&self.access_key, &self.secret_key];
        let resp = match req.body(envelope).send().await {
            Ok(r) => r,
            Err(e) => return transport_failure(&e, &secrets),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        if (200..300).contains(&status) {
            // Read the (empty) answer so the connection can be reused.
            let _ = tokio::time::timeout(Duration::from_secs(5), resp.bytes()).await;
            return Outcome::Http {
                status,
                retry_after: None,
            };
        }
        let body = read_capped(resp).await;
        let (code, message) = parse_error(&body);
        let mut message: String = message.chars().take(200).collect();
        for s in secrets {
            message = s.redact(&message);
        }
        Outcome::Store {
            status,
            code,
            message,
            retry_after,
        }
    }
}

impl Deliver for S3Sink {
    fn target(&self) -> String {
        self.target.clone()
    }

    fn deliver<'a>(&'a self, header: &'a BatchHeader, envelope: Vec<u8>) -> Delivery<'a> {
        Box::pin(self.put(header, envelope))
    }
}

/// Up to [`ERROR_BODY_MAX`] bytes of an error answer (a broken or slow
/// body gives what arrived).
async fn read_capped(mut resp: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while out.len() < ERROR_BODY_MAX {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => out.extend_from_slice(&c),
            _ => break,
        }
    }
    out.truncate(ERROR_BODY_MAX);
    out
}

/// `<Error><Code>..</Code><Message>..</Message>..</Error>` → (code,
/// message); empty strings when the answer is not an S3 error document
/// (a proxy's page, an empty body). Only these two leaf elements are read,
/// so a small scan is enough; entities in the message are left as sent.
pub fn parse_error(body: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(body);
    let leaf = |tag: &str| -> String {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        text.find(&open)
            .and_then(|i| {
                let rest = &text[i + open.len()..];
                rest.find(&close).map(|j| rest[..j].trim().to_string())
            })
            .unwrap_or_default()
    };
    if !text.contains("<Error") {
        return (String::new(), String::new());
    }
    (leaf("Code"), leaf("Message"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn header() -> BatchHeader {
        BatchHeader {
            format: "neuroedge.batch.v1".into(),
            batch_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            site_id: "lab-3".into(),
            node_id: "pi-7".into(),
            device_id: "cyton-1".into(),
            seq: 42,
            first_sample: 10_500,
            n_samples: 250,
            n_channels: 8,
            sample_rate: 250.0,
            // 2026-12-02T23:59:59.5Z
            t_start: 1_796_255_999.5,
            t_end: 1_796_256_000.496,
            key_id: "0123456789abcdef".into(),
            cipher: "AES-256-GCM".into(),
            compression: "zstd".into(),
            created_at: 1_796_256_001.0,
        }
    }

    #[test]
    fn key_layout_and_metadata() {
        let h = header();
        assert_eq!(
            object_key("neuroedge", &h).unwrap(),
            "neuroedge/lab-3/pi-7/cyton-1/2026/12/02/000000000042-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b.nebatch"
        );
        assert_eq!(
            object_key("fleet/eu", &h).unwrap(),
            "fleet/eu/lab-3/pi-7/cyton-1/2026/12/02/000000000042-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b.nebatch"
        );
        assert!(object_key("", &h).unwrap().starts_with("lab-3/pi-7/"));
        // The date is t_start's, in UTC, even half a second before midnight.
        let mut h2 = h.clone();
        h2.t_start = 1_796_256_000.0;
        assert!(object_key("p", &h2).unwrap().contains("/2026/12/03/"));
        h2.device_id = "a/b".into();
        assert!(object_key("p", &h2).is_err());
        h2.device_id = "x".into();
        h2.t_start = f64::NAN;
        assert!(object_key("p", &h2).is_err());
        let m = object_metadata(&h);
        assert_eq!(m[0], ("x-amz-meta-neuroedge-seq", "42".to_string()));
        assert_eq!(m[1].1, "10500");
        assert_eq!(m[2].1, "250");
        assert_eq!(m[3].1, "1796255999.500000");
        assert_eq!(m[5].1, "0123456789abcdef");
    }

    #[test]
    fn names_and_prefixes() {
        for ok in ["eeg-archive", "abc", "a.b-c.d1", &"a".repeat(63)] {
            assert!(check_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Eeg",
            "-abc",
            "abc-",
            "a..b",
            "a_b",
            "192.168.1.1",
            &"a".repeat(64),
        ] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
        for ok in ["", "neuroedge", "a/b/c"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["/a", "a/", "a//b", "a\nb"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_file_rules() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s3.credentials");
        std::fs::write(&p, "AKIAEXAMPLE\nsecret/Key+value\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_credentials(&p).unwrap_err();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("secret/Key"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (a, s) = load_credentials(&p).unwrap();
        assert_eq!(
            (a.expose(), s.expose()),
            ("AKIAEXAMPLE", "secret/Key+value")
        );
        assert!(!format!("{s:?}").contains("secret/Key"));
        std::fs::write(&p, "only-one-line\n").unwrap();
        let e = load_credentials(&p).unwrap_err();
        assert!(e.contains("two lines") && !e.contains("only-one"), "{e}");
        std::fs::write(&p, "a b\nc\n").unwrap();
        assert!(load_credentials(&p).is_err());
        assert!(load_credentials(&d.path().join("missing"))
            .unwrap_err()
            .contains("missing"));
    }

    #[test]
    fn error_documents() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>x</BucketName></Error>"#;
        assert_eq!(
            parse_error(body),
            (
                "NoSuchBucket".to_string(),
                "The specified bucket does not exist".to_string()
            )
        );
        assert_eq!(parse_error(b""), (String::new(), String::new()));
        assert_eq!(
            parse_error(b"<html>503 Service Unavailable</html>"),
            (String::new(), String::new())
        );
        assert_eq!(
            parse_error(b"<Error><Code>SlowDown</Code>"),
            ("SlowDown".to_string(), String::new())
        );
    }

    #[test]
    fn build_checks_files_and_names() {
        let d = tempfile::tempdir().unwrap();
        let creds = d.path().join("c");
        std::fs::write(&creds, "AKIAEXAMPLE\nverysecretvalue\n").unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut cfg = UplinkSection {
            enabled: true,
            sink: super::super::config::SinkKind::S3,
            s3: S3Section {
                endpoint: Some("http://127.0.0.1:9".into()),
                bucket: Some("eeg-archive".into()),
                credentials_file: Some(creds.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = S3Sink::build(&cfg).unwrap();
        assert_eq!(
            s.target(),
            "s3://eeg-archive/neuroedge at http://127.0.0.1:9"
        );
        assert!(!format!("{s:?}").contains("verysecret"));
        cfg.s3.endpoint = Some("http://s3.example.org".into());
        assert!(S3Sink::build(&cfg).unwrap_err().contains("plain http"));
        cfg.s3.endpoint = Some("https://s3.example.org".into());
        cfg.s3.path_style = false;
        let s = S3Sink::build(&cfg).unwrap();
        assert_eq!(
            s.bucket.base_url().as_str(),
            "https://eeg-archive.s3.example.org/"
        );
        cfg.s3.path_style = true;
        let s = S3Sink::build(&cfg).unwrap();
        assert_eq!(
            s.bucket.base_url().as_str(),
            "https://s3.example.org/eeg-archive/"
        );
        cfg.s3.bucket = Some("Bad_Bucket".into());
        assert!(S3Sink::build(&cfg).is_err());
    }

    #[tokio::test]
    async fn transport_errors_never_show_the_secrets() {
        let d = tempfile::tempdir().unwrap();
        let creds = d.path().join("c");
        std::fs::write(&creds, "AKIAEXAMPLEKEYID\nverysecretvalue\n").unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = UplinkSection {
            enabled: true,
            sink: super::super::config::SinkKind::S3,
            timeout: crate::units::HumanDuration(Duration::from_secs(2)),
            s3: S3Section {
                endpoint: Some(format!("http://127.0.0.1:{port}")),
                bucket: Some("eeg-archive".into()),
                credentials_file: Some(creds),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = S3Sink::build(&cfg).unwrap();
        let o = s.put(&header(), vec![1, 2, 3]).await;
        let Outcome::Transport { message, .. } = &o else {
            panic!("{o:?}")
        };
        assert!(
            !message.contains("AKIAEXAMPLEKEYID") && !message.contains("verysecret"),
            "{message}"
        );
        assert!(!message.contains("X-Amz-Signature"), "{message}");
    }
}
