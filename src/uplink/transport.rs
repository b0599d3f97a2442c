//! HTTPS client (reqwest on rustls with the ring provider): endpoint
//! checks, TLS settings from `[uplink]`, the token, and one POST per batch
//! turned into a policy [`Outcome`]. Nothing here ever puts the token (or
//! URL credentials) into an error message.

use super::config::UplinkSection;
use super::policy::{parse_retry_after, Outcome, TransportKind};
use reqwest::Url;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Path appended to `endpoint` (contract §7).
pub const BATCHES_PATH: &str = "v1/neural-data/batches";

/// Check `endpoint` and build the batch URL (see [`checked_url`]).
pub fn batches_url(endpoint: &str) -> Result<Url, String> {
    let url = checked_url(endpoint)?;
    let mut base = url.to_string();
    if !base.ends_with('/') {
        base.push('/');
    }
    Url::parse(&base)
        .and_then(|b| b.join(BATCHES_PATH))
        .map_err(|err| format!("{:?}: {err}", endpoint.trim()))
}

/// Check an endpoint (the backend's or the object store's): `https://`
/// is required; `http://` is accepted only for a loopback host
/// (127.0.0.0/8, ::1, localhost), for a local relay or a test server. No
/// credentials, query or fragment in it.
pub fn checked_url(endpoint: &str) -> Result<Url, String> {
    let e = endpoint.trim();
    let url = Url::parse(e).map_err(|err| format!("{e:?} is not a URL ({err})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the endpoint must not carry credentials; put them in their file".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the endpoint must not have a query or fragment".into());
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{e:?} has no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "{e:?} is plain http; batches go over https (http is allowed only to 127.0.0.1, ::1 or localhost)"
            ))
        }
        other => return Err(format!("scheme {other:?} is not supported; use https://")),
    }
    Ok(url)
}

/// A secret (the bearer token, an S3 secret key); never printed.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    pub(super) fn new(s: String) -> Secret {
        Secret(s)
    }

    pub(super) fn expose(&self) -> &str {
        &self.0
    }

    /// Remove the secret from a text (an error message, a log line).
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() >= 4 {
            text.replace(&self.0, "[redacted]")
        } else {
            text.to_string()
        }
    }
}

fn read_file(what: &str, p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// Read and trim the token file.
pub fn load_token(p: &Path) -> Result<Secret, String> {
    let raw = read_file("token_file", p)?;
    let text = String::from_utf8(raw)
        .map_err(|_| format!("token_file {}: not UTF-8 text", p.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("token_file {}: empty", p.display()));
    }
    if t.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "token_file {}: the token must be one line without spaces",
            p.display()
        ));
    }
    Ok(Secret(t.to_string()))
}

/// A ready client for one endpoint.
pub struct Transport {
    client: reqwest::Client,
    url: Url,
    auth: reqwest::header::HeaderValue,
    token: Secret,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Build from `[uplink]`: every file is read and parsed here, so a bad
    /// token, CA or client certificate is one clear error (the uplink then
    /// reports `misconfigured` and tries again later).
    pub fn build(cfg: &UplinkSection) -> Result<Transport, String> {
        let endpoint = cfg
            .endpoint
            .as_deref()
            .ok_or_else(|| "no endpoint configured".to_string())?;
        let url = batches_url(endpoint)?;
        let token_file = cfg
            .token_file
            .as_deref()
            .ok_or_else(|| "no token_file configured".to_string())?;
        let token = load_token(token_file)?;
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.0))
            .map_err(|_| {
                format!(
                    "token_file {}: the token has characters not allowed in a header",
                    token_file.display()
                )
            })?;
        auth.set_sensitive(true);
        let client = http_client(cfg, url.scheme() == "https", &[&token])?;
        Ok(Transport {
            client,
            url,
            auth,
            token,
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// POST one envelope, byte for byte.
    pub async fn post(&self, batch_id: &str, body: Vec<u8>) -> Outcome {
        let sent = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/cbor")
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header("Idempotency-Key", batch_id)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                // Read the (small) answer so the connection can be reused;
                // a broken body after the status does not change the verdict.
                let _ = tokio::time::timeout(Duration::from_secs(5), resp.bytes()).await;
                Outcome::Http {
                    status,
                    retry_after,
                }
            }
            Err(e) => transport_failure(&e, &[&self.token]),
        }
    }
}

/// The HTTP client both sinks use: rustls (ring), the system roots or
/// `ca_file` alone, optional client certificate, no redirects, `timeout`.
pub(super) fn http_client(
    cfg: &UplinkSection,
    https_only: bool,
    secrets: &[&Secret],
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(cfg.timeout.0)
        .connect_timeout(cfg.timeout.0)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(cfg.max_in_flight.max(1) as usize)
        .user_agent(concat!("neuroedge/", env!("CARGO_PKG_VERSION")))
        .https_only(https_only);
    if let Some(ca) = &cfg.ca_file {
        let pem = read_file("ca_file", ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "ca_file {}: not a PEM certificate bundle ({e})",
                ca.display()
            )
        })?;
        if certs.is_empty() {
            return Err(format!(
                "ca_file {}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\")",
                ca.display()
            ));
        }
        // A private CA replaces the public roots: the backend is
        // pinned to it.
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read_file("client_key", key)?;
            pem.push(b'\n');
            pem.extend(read_file("client_cert", cert)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                format!(
                    "client_cert {} / client_key {}: not a PEM certificate and private key ({e})",
                    cert.display(),
                    key.display()
                )
            })?;
            b = b.identity(id);
        }
        (None, None) => {}
        _ => return Err("client_cert and client_key go together; set both or neither".into()),
    }
    b.build()
        .map_err(|e| format!("cannot set up TLS: {}", error_text(&e, secrets)))
}

/// A request that got no (complete) answer, as an outcome.
pub(super) fn transport_failure(e: &reqwest::Error, secrets: &[&Secret]) -> Outcome {
    Outcome::Transport {
        kind: if e.is_timeout() {
            TransportKind::Timeout
        } else if e.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Broken
        },
        message: error_text(e, secrets),
    }
}

/// The error and its causes, without the URL and without the secrets.
pub(super) fn error_text(e: &reqwest::Error, secrets: &[&Secret]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let head = match e.url() {
        Some(u) => e
            .to_string()
            .replace(&format!(" ({u})"), "")
            .replace(u.as_str(), "[endpoint]"),
        None => e.to_string(),
    };
    parts.push(head.replace("error sending request for url", "error sending request"));
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    let mut text = parts.join(": ");
    for s in secrets {
        text = s.redact(&text);
    }
    let mut text: String = text.chars().take(300).collect();
    if text.is_empty() {
        text = "unknown error".into();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_rules() {
        assert_eq!(
            batches_url("https://api.example.com").unwrap().as_str(),
            "https://api.example.com/v1/neural-data/batches"
        );
        assert_eq!(
            batches_url(" https://api.example.com/tenant/7/ ")
                .unwrap()
                .as_str(),
            "https://api.example.com/tenant/7/v1/neural-data/batches"
        );
        assert_eq!(
            batches_url("https://api.example.com:8443/x")
                .unwrap()
                .as_str(),
            "https://api.example.com:8443/x/v1/neural-data/batches"
        );
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:9",
            "http://[::1]:80",
            "http://127.3.2.1",
        ] {
            assert!(batches_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.example.com",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "https://user:pw@api.example.com",
            "https://api.example.com/?token=x",
            "https://api.example.com/#x",
            "api.example.com",
            "",
            "unix:/tmp/x",
        ] {
            assert!(batches_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_is_trimmed_checked_and_never_shown() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        std::fs::write(&p, "  s3cr3t-token-value\n\n").unwrap();
        let t = load_token(&p).unwrap();
        assert_eq!(t.0, "s3cr3t-token-value");
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert_eq!(
            t.redact("401 for Bearer s3cr3t-token-value!"),
            "401 for Bearer [redacted]!"
        );
        std::fs::write(&p, "\n").unwrap();
        assert!(load_token(&p).unwrap_err().contains("empty"));
        std::fs::write(&p, "two words").unwrap();
        assert!(load_token(&p).is_err());
        let e = load_token(&d.path().join("missing")).unwrap_err();
        assert!(e.contains("token_file") && e.contains("missing"), "{e}");
    }

    #[test]
    fn build_reports_file_problems_clearly() {
        let d = tempfile::tempdir().unwrap();
        let token = d.path().join("token");
        std::fs::write(&token, "abcdefgh").unwrap();
        let mut cfg = UplinkSection {
            enabled: true,
            endpoint: Some("https://127.0.0.1:1".into()),
            token_file: Some(token.clone()),
            ..Default::default()
        };
        let t = Transport::build(&cfg).unwrap();
        assert!(!format!("{t:?}").contains("abcdefgh"));
        cfg.ca_file = Some(d.path().join("nope.pem"));
        let e = Transport::build(&cfg).unwrap_err();
        assert!(e.contains("ca_file") && e.contains("nope.pem"), "{e}");
        std::fs::write(d.path().join("garbage.pem"), "hello").unwrap();
        cfg.ca_file = Some(d.path().join("garbage.pem"));
        let e = Transport::build(&cfg).unwrap_err();
        assert!(e.contains("ca_file"), "{e}");
        cfg.ca_file = None;
        cfg.client_cert = Some(d.path().join("garbage.pem"));
        let e = Transport::build(&cfg).unwrap_err();
        assert!(e.contains("client_key"), "{e}");
        cfg.client_key = Some(d.path().join("garbage.pem"));
        let e = Transport::build(&cfg).unwrap_err();
        assert!(e.contains("client_cert"), "{e}");
        assert!(!e.contains("abcdefgh"));
    }
}
