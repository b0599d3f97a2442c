//! A real HTTPS backend for the uplink tests and bench: rustls (tokio-rustls,
//! ring) with a CA made here (rcgen), HTTP/1.1 keep-alive parsed with
//! httparse, and scripted fault injection per request. It stores bodies by
//! Idempotency-Key and answers a replay with 200, like the backend of
//! contract §7.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio_rustls::rustls;

/// A CA, a server certificate for 127.0.0.1 / localhost signed by it, and
/// a client certificate (for mTLS) signed by it.
pub struct Pki {
    pub ca_pem: String,
    pub server_cert_der: Vec<u8>,
    pub server_key_der: Vec<u8>,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

pub fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "neuroedge test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let srv_key = KeyPair::generate().expect("server key");
    let mut srv = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    srv.distinguished_name.push(DnType::CommonName, "localhost");
    let srv_cert = srv
        .signed_by(&srv_key, &ca_cert, &ca_key)
        .expect("server cert");
    let cl_key = KeyPair::generate().expect("client key");
    let mut cl = CertificateParams::new(Vec::<String>::new()).expect("client params");
    cl.distinguished_name.push(DnType::CommonName, "node-1");
    let cl_cert = cl
        .signed_by(&cl_key, &ca_cert, &ca_key)
        .expect("client cert");
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert_der: srv_cert.der().to_vec(),
        server_key_der: srv_key.serialize_der(),
        client_cert_pem: cl_cert.pem(),
        client_key_pem: cl_key.serialize_pem(),
    }
}

/// What the server does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Store; 201 for a new key, 200 for a replay.
    Normal,
    /// Answer this status with these headers; store nothing.
    Status(u16, Vec<(String, String)>),
    /// Read half of the body, then close the connection without an answer.
    ResetMidBody,
    /// Store, wait this long, then answer (late: past the client's timeout).
    Slow(Duration),
    /// Store, then close the connection without an answer (a lost response).
    StoreThenDrop,
}

/// What the policy sees (after the headers, before the body).
#[derive(Debug, Clone)]
pub struct ReqInfo {
    /// 1-based count of requests since the server was created.
    pub n: u64,
    pub batch_id: String,
    /// The server already holds this key.
    #[allow(dead_code)] // for policies and for Debug output of failing checks
    pub replay: bool,
}

pub type Policy = Arc<dyn Fn(&ReqInfo) -> Action + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Event {
    pub n: u64,
    pub at: Instant,
    pub batch_id: String,
    #[allow(dead_code)] // shown in Debug output of failing checks
    pub device: Option<String>,
    #[allow(dead_code)] // shown in Debug output of failing checks
    pub seq: Option<u64>,
    pub action: String,
    /// The status written, if any.
    pub status: Option<u16>,
}

#[derive(Default)]
pub struct ServerState {
    /// Bodies by Idempotency-Key.
    pub stored: HashMap<String, Vec<u8>>,
    /// (device, seq, batch_id) in the order first stored.
    pub first_stores: Vec<(String, u64, String)>,
    pub events: Vec<Event>,
    /// 2xx answers written on time (not `Slow`), per key.
    pub acks: HashMap<String, u32>,
    /// Protocol problems seen (wrong header, path, body...).
    pub violations: Vec<String>,
    pub requests: u64,
    pub bytes: u64,
    /// Keep bodies (off in the bench: only count).
    pub keep_bodies: bool,
}

pub struct TestServer {
    rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ServerState>>,
    policy: Arc<Mutex<Policy>>,
    tls: Arc<rustls::ServerConfig>,
    token: String,
    alive: Option<watch::Sender<bool>>,
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

impl TestServer {
    /// A server on a free port of 127.0.0.1, not yet listening. With
    /// `client_ca`, a client certificate signed by the CA is required.
    pub fn new(pki: &Pki, token: &str, require_client_cert: bool) -> TestServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = if require_client_cert {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let ca = rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes())
                .expect("ca pem");
            roots.add(ca).expect("add ca");
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        let tls = builder
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(
                    pki.server_cert_der.clone(),
                )],
                rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server_key_der.clone().into()),
            )
            .expect("server tls");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        TestServer {
            rt,
            addr: free_port(),
            state: Arc::new(Mutex::new(ServerState {
                keep_bodies: true,
                ..Default::default()
            })),
            policy: Arc::new(Mutex::new(Arc::new(|_: &ReqInfo| Action::Normal))),
            tls: Arc::new(tls),
            token: token.to_string(),
            alive: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn set_policy(&self, p: impl Fn(&ReqInfo) -> Action + Send + Sync + 'static) {
        *self.policy.lock().expect("policy") = Arc::new(p);
    }

    /// Listen (again) on `addr`.
    pub fn start(&mut self) {
        if self.alive.is_some() {
            return;
        }
        let (tx, rx) = watch::channel(true);
        let addr = self.addr;
        let listener = self.rt.block_on(async move {
            let mut tries = 0;
            loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => return l,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("cannot listen on {addr}: {e}"),
                }
            }
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let ctx = Ctx {
            state: self.state.clone(),
            policy: self.policy.clone(),
            token: self.token.clone(),
        };
        self.rt.spawn(async move {
            let mut alive = rx.clone();
            loop {
                tokio::select! {
                    _ = alive.wait_for(|v| !*v) => return,
                    a = listener.accept() => {
                        let Ok((tcp, _)) = a else { continue };
                        let _ = tcp.set_nodelay(true);
                        let acceptor = acceptor.clone();
                        let ctx = ctx.clone();
                        let mut alive = rx.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = alive.wait_for(|v| !*v) => {}
                                _ = async {
                                    if let Ok(tls) = acceptor.accept(tcp).await {
                                        serve_conn(tls, ctx).await;
                                    }
                                } => {}
                            }
                        });
                    }
                }
            }
        });
        self.alive = Some(tx);
    }

    /// Stop listening and cut every open connection (a network cut).
    pub fn stop(&mut self) {
        if let Some(tx) = self.alive.take() {
            let _ = tx.send(false);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn with_state<R>(&self, f: impl FnOnce(&mut ServerState) -> R) -> R {
        f(&mut self.state.lock().expect("state"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
struct Ctx {
    state: Arc<Mutex<ServerState>>,
    policy: Arc<Mutex<Policy>>,
    token: String,
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn serve_conn<S>(stream: S, ctx: Ctx)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    loop {
        // Headers.
        let mut head: Vec<u8> = Vec::new();
        loop {
            let mut line = Vec::new();
            match rd.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.extend_from_slice(&line);
            if head.ends_with(b"\r\n\r\n") {
                break;
            }
            if head.len() > 64 * 1024 {
                return;
            }
        }
        let mut hdrs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hdrs);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            return;
        }
        let method = req.method.unwrap_or("").to_string();
        let path = req.path.unwrap_or("").to_string();
        let get = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_string())
        };
        let (ctype, auth, key, clen) = (
            get("content-type"),
            get("authorization"),
            get("idempotency-key").unwrap_or_default(),
            get("content-length").and_then(|v| v.parse::<usize>().ok()),
        );
        let mut problems = Vec::new();
        if method != "POST" || path != "/v1/neural-data/batches" {
            problems.push(format!("request line {method} {path}"));
        }
        if ctype.as_deref() != Some("application/cbor") {
            problems.push(format!("content-type {ctype:?}"));
        }
        if auth.as_deref() != Some(&format!("Bearer {}", ctx.token)) {
            problems.push("authorization header is not the token".to_string());
        }
        let Some(clen) = clen else {
            ctx.state
                .lock()
                .expect("state")
                .violations
                .push("no content-length".into());
            return;
        };
        let (n, replay) = {
            let mut s = ctx.state.lock().expect("state");
            s.requests += 1;
            (
                s.requests,
                s.stored.contains_key(&key) || s.acks.contains_key(&key),
            )
        };
        let policy = ctx.policy.lock().expect("policy").clone();
        let action = policy(&ReqInfo {
            n,
            batch_id: key.clone(),
            replay,
        });
        let record =
            |s: &mut ServerState, dev: Option<String>, seq: Option<u64>, status: Option<u16>| {
                s.events.push(Event {
                    n,
                    at: Instant::now(),
                    batch_id: key.clone(),
                    device: dev,
                    seq,
                    action: format!("{action:?}"),
                    status,
                });
            };
        if action == Action::ResetMidBody {
            let mut half = vec![0u8; clen / 2];
            let _ = rd.read_exact(&mut half).await;
            record(&mut ctx.state.lock().expect("state"), None, None, None);
            return; // dropping the stream: no close_notify, no answer
        }
        let mut body = vec![0u8; clen];
        if rd.read_exact(&mut body).await.is_err() {
            return;
        }
        let parsed = neuroedge::batch::read_header(&body).ok().map(|p| p.header);
        let (dev, seq) = match &parsed {
            Some(h) => {
                if h.batch_id != key {
                    problems.push(format!("Idempotency-Key {key} != batch_id {}", h.batch_id));
                }
                (Some(h.device_id.clone()), Some(h.seq))
            }
            None => {
                problems.push(format!("body of {key} is not an envelope"));
                (None, None)
            }
        };
        let store = |s: &mut ServerState| {
            s.bytes += body.len() as u64;
            if !s.stored.contains_key(&key) {
                if let (Some(d), Some(q)) = (&dev, seq) {
                    s.first_stores.push((d.clone(), q, key.clone()));
                }
                let b = if s.keep_bodies {
                    body.clone()
                } else {
                    Vec::new()
                };
                s.stored.insert(key.clone(), b);
                true
            } else {
                false
            }
        };
        let (status, extra): (Option<u16>, Vec<(String, String)>) = {
            let mut s = ctx.state.lock().expect("state");
            s.violations.extend(problems.iter().cloned());
            let r = match &action {
                Action::Normal | Action::Slow(_) => {
                    let new = store(&mut s);
                    (Some(if new { 201 } else { 200 }), vec![])
                }
                Action::Status(code, h) => (Some(*code), h.clone()),
                Action::StoreThenDrop => {
                    store(&mut s);
                    (None, vec![])
                }
                Action::ResetMidBody => (None, vec![]),
            };
            if matches!(action, Action::Normal) && r.0.is_some_and(|c| (200..300).contains(&c)) {
                *s.acks.entry(key.clone()).or_default() += 1;
            }
            record(&mut s, dev.clone(), seq, r.0);
            r
        };
        let Some(code) = status else {
            return; // lost response
        };
        if let Action::Slow(d) = action {
            tokio::time::sleep(d).await;
        }
        let mut resp = format!(
            "HTTP/1.1 {code} {}\r\ncontent-type: application/json\r\n",
            reason(code)
        );
        for (k, v) in &extra {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = format!("{{\"batch_id\":\"{key}\"}}");
        resp.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        if wr.write_all(resp.as_bytes()).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
}
