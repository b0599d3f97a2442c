//! The local status socket (contract §5): one request line in, one JSON
//! line out; `subscribe` turns the connection into a stream of JSON lines
//! (contract §12, [`subscribe`]). Reads shared counters and the devices'
//! live views only; never blocks the data path.

pub mod client;
pub mod metrics;
pub mod protocol;
pub mod report;
pub mod scope;
pub mod status;
pub mod subscribe;

pub use status::DaemonState;

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Longest request line accepted; longer ones get an error reply.
pub const MAX_LINE: usize = 64 * 1024;
/// Concurrent connections served; more wait for a free slot.
const MAX_CONNECTIONS: usize = 256;

/// What one peer may hold (from `[status]`): a connection that sends no
/// complete request, or does not take its reply, for `idle` is closed; a
/// uid holding `per_uid` connections has further ones refused with an
/// error line. So a stuck or hostile client cannot lock a technician out.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: std::time::Duration,
    pub per_uid: usize,
}

impl Limits {
    pub fn from_config(c: &crate::config::StatusSection) -> Self {
        Limits {
            idle: std::time::Duration::from_secs_f64(c.idle_timeout_s),
            per_uid: c.max_connections_per_uid,
        }
    }
}

/// Connections held per peer uid (`None`: unknown peer, one shared bucket).
#[derive(Default)]
struct PerUid(std::sync::Mutex<std::collections::HashMap<Option<u32>, usize>>);

/// One connection's place in [`PerUid`]; released on drop.
struct UidSlot {
    table: Arc<PerUid>,
    uid: Option<u32>,
}

impl PerUid {
    fn take(table: &Arc<PerUid>, uid: Option<u32>, limit: usize) -> Result<UidSlot, usize> {
        let mut m = crate::sync::lock(&table.0);
        let n = m.entry(uid).or_insert(0);
        if *n >= limit {
            return Err(*n);
        }
        *n += 1;
        Ok(UidSlot {
            table: table.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut m = crate::sync::lock(&self.table.0);
        if let Some(n) = m.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("status socket {path}: another neuroedge is already answering there; stop it or set [status] socket to another path")]
    InUse { path: PathBuf },
    #[error("status socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bind the socket race-free: bind inside a fresh private folder (0700),
/// set the mode, then rename into place (which also replaces a stale file).
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    let io = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse {
            path: path.to_path_buf(),
        });
    }
    // Only ever replace a (stale) socket, never another kind of file.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; move it or set [status] socket to another path",
            )));
        }
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(io)?;
    let private = parent.join(format!(".neuroedge-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io)?;
    let tmp = private.join("s");
    let result = (|| {
        let l = std::os::unix::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let l = result.map_err(io)?;
    UnixListener::from_std(l).map_err(io)
}

/// Serve until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    state: Arc<DaemonState>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_uid = Arc::new(PerUid::default());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let uid = stream.peer_cred().ok().map(|c| c.uid());
                    let uid_slot = match PerUid::take(&per_uid, uid, limits.per_uid) {
                        Ok(s) => s,
                        Err(held) => {
                            refuse(&stream, uid, held);
                            continue;
                        }
                    };
                    let Ok(permit) = slots.clone().acquire_owned().await else { break };
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, state, limits).await {
                            tracing::debug!(error = %e, "status connection ended with an error");
                        }
                        drop((permit, uid_slot));
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "status socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Tell a peer over its uid's limit why, without waiting, and close.
fn refuse(stream: &UnixStream, uid: Option<u32>, held: usize) {
    let who = uid.map_or("this peer".to_string(), |u| format!("uid {u}"));
    tracing::warn!(
        uid,
        held,
        "status socket: connection refused (per-uid limit)"
    );
    let reply = protocol::error_reply(
        &format!("too many connections from {who} ({held} open; [status] max_connections_per_uid)"),
        "close idle connections to the status socket and try again",
    );
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = stream.try_write(&out);
}

/// Read one line of at most MAX_LINE bytes. Returns None at end of stream;
/// Some(Err(len)) when the line was too long (and has been skipped).
async fn read_line(
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Result<(), usize>>> {
    buf.clear();
    let mut skipped = 0usize;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && skipped == 0 {
                None
            } else if skipped > 0 {
                Some(Err(skipped))
            } else {
                Some(Ok(()))
            });
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if skipped == 0 && buf.len() + take <= MAX_LINE + 1 {
            buf.extend_from_slice(&chunk[..take]);
        } else {
            skipped += buf.len() + take;
            buf.clear();
        }
        r.consume(take);
        if done {
            return Ok(Some(if skipped > 0 { Err(skipped) } else { Ok(()) }));
        }
    }
}

async fn handle(
    stream: UnixStream,
    state: Arc<DaemonState>,
    limits: Limits,
) -> std::io::Result<()> {
    use tokio::time::timeout;
    let idle = || std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection closed");
    let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(8192, rd);
    let mut buf = Vec::with_capacity(256);
    loop {
        let Some(line) = timeout(limits.idle, read_line(&mut rd, &mut buf))
            .await
            .map_err(|_| idle())??
        else {
            return Ok(());
        };
        let reply = match line {
            Err(len) => protocol::error_reply(
                &format!("request too long ({len} bytes; the limit is {MAX_LINE})"),
                "send one short command per line, e.g. `status`",
            ),
            Ok(()) => match protocol::parse(&buf) {
                Ok(None) => continue,
                Ok(Some(protocol::Request::Subscribe { device, signal, hz })) => {
                    match subscribe::admit(&state, &device, &mut rd).await? {
                        subscribe::Admitted::Refused(reply) => reply,
                        subscribe::Admitted::Gone => return Ok(()),
                        subscribe::Admitted::View(slot, view) => {
                            return subscribe::stream(
                                &state, slot, &device, view, signal, hz, rd, wr,
                            )
                            .await;
                        }
                    }
                }
                Ok(Some(req)) => state.answer_async(&req, peer_uid).await,
                Err(e) => protocol::error_reply(&e.message, &e.hint),
            },
        };
        let mut out =
            serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec());
        out.push(b'\n');
        // A peer that does not take its reply is dropped, not buffered for.
        timeout(limits.idle, wr.write_all(&out))
            .await
            .map_err(|_| idle())??;
    }
}
