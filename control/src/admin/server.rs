//! The admin thread: a current-thread tokio runtime serving the unix socket (one JSON request per line)
//! and, when asked, Prometheus metrics over HTTP. Answers are built on the runtime's blocking pool, so a
//! slow answer (a trace waiting for frames) holds up no other client. Every client is bounded: a request
//! line of at most [`MAX_LINE`] bytes, an idle connection closed after [`IDLE`], an answer a client does
//! not read within [`WRITE_WITHIN`] dropped with its connection, at most [`MAX_CLIENTS`] at once. None of
//! it can reach a worker: the workers only ever see commands on their channels.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tokio::time::timeout;

use super::proto::{Request, Response};
use super::NodeView;

/// Longest request line.
pub const MAX_LINE: usize = 64 * 1024;
/// A connection with no request for this long is closed.
pub const IDLE: Duration = Duration::from_secs(30);
/// A client must take its answer within this.
pub const WRITE_WITHIN: Duration = Duration::from_secs(5);
/// Connections served at once (each further one gets an error line and is closed).
pub const MAX_CLIENTS: usize = 32;
/// Longest HTTP request head for the metrics.
const MAX_HTTP_HEAD: usize = 8 * 1024;

/// Where to serve.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// The unix socket (`None`: no admin socket).
    pub admin: Option<PathBuf>,
    /// The Prometheus endpoint (`None`: no metrics).
    pub metrics: Option<SocketAddr>,
}

/// Why the admin API could not be served: a sentence naming the socket or the port.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for metrics on {0}: {1}")]
    MetricsListen(SocketAddr, std::io::Error),
    #[error("metrics listener: {0}")]
    MetricsListener(std::io::Error),
    #[error("cannot start the admin runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start the admin thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot create {}: {error}", .path.display())]
    CreateDir { path: std::path::PathBuf, error: std::io::Error },
    #[error("{} exists and is not a socket; remove it or choose another --admin", .0.display())]
    NotASocket(PathBuf),
    #[error("another calxdp answers on {}; stop it or choose another --admin path", .0.display())]
    Taken(PathBuf),
    #[error("cannot remove the stale socket {}: {error}", .path.display())]
    RemoveStale { path: std::path::PathBuf, error: std::io::Error },
    #[error("cannot listen on {}: {error}", .path.display())]
    Listen { path: std::path::PathBuf, error: std::io::Error },
    #[error("cannot restrict {}: {error}", .path.display())]
    Restrict { path: std::path::PathBuf, error: std::io::Error },
    #[error("cannot move the socket to {}: {error}", .path.display())]
    Move { path: std::path::PathBuf, error: std::io::Error },
    #[error("admin socket: {0}")]
    Socket(std::io::Error),
}

/// The running admin thread; stopping it (or dropping it) closes the listeners and removes the socket.
#[derive(Debug)]
pub struct AdminServer {
    pub socket: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds the socket and the metrics port here (errors are sentences naming them), then serves on a
    /// thread of its own.
    pub fn start(opts: &ServeOptions, view: Arc<NodeView>) -> Result<AdminServer, ServeError> {
        let unix = match &opts.admin {
            Some(path) => Some(bind_socket(path)?),
            None => None,
        };
        let tcp = match opts.metrics {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(|e| ServeError::MetricsListen(addr, e))?;
                l.set_nonblocking(true).map_err(ServeError::MetricsListener)?;
                Some(l)
            }
            None => None,
        };
        let metrics = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(4)
            .thread_name("calxdp-admin-answer")
            .build()
            .map_err(ServeError::Runtime)?;
        let thread = std::thread::Builder::new()
            .name("calxdp-admin".into())
            .spawn(move || runtime.block_on(serve(unix, tcp, view, stopped)))
            .map_err(ServeError::Thread)?;
        Ok(AdminServer { socket: opts.admin.clone(), metrics, stop: Some(stop), thread: Some(thread) })
    }

    /// Closes the listeners, waits for the thread and removes the socket file.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = self.socket.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Removes the admin sockets in calxdp's own directory that no node answers on (left by nodes that were
/// killed, typically in network namespaces that no longer exist): the directory stays as small as the number
/// of running nodes. A node's socket is moved into place already listening, so a socket that refuses a
/// connection is dead, never one about to answer.
fn sweep_dead_sockets(dir: &Path) {
    if dir != Path::new(super::DEFAULT_SOCKET).parent().unwrap_or(Path::new("/run/calxdp")) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        let is_socket = e.file_type().is_ok_and(|t| t.is_socket());
        if is_socket && name.starts_with("admin") && name.ends_with(".sock") {
            if let Err(err) = std::os::unix::net::UnixStream::connect(&path) {
                if err.kind() == std::io::ErrorKind::ConnectionRefused {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

/// Binds the admin socket, readable and writable by root only (it can flush conntrack). A socket file
/// left by a node that died is replaced; one a running node answers on is not.
fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, ServeError> {
    let at = |p: &Path| p.to_path_buf();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ServeError::CreateDir { path: at(dir), error: e })?;
        sweep_dead_sockets(dir);
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServeError::NotASocket(at(path)));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::Taken(at(path)));
        }
        std::fs::remove_file(path).map_err(|e| ServeError::RemoveStale { path: at(path), error: e })?;
    }
    // Bound in a directory only root can enter, made root-only, then moved into place: there is no moment
    // at which another user could connect.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let private = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| ServeError::CreateDir { path: at(&private), error: e })?;
    let staged = private.join("admin.sock");
    let bound = std::os::unix::net::UnixListener::bind(&staged)
        .map_err(|e| ServeError::Listen { path: at(path), error: e })
        .and_then(|l| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| ServeError::Restrict { path: at(path), error: e })?;
            std::fs::rename(&staged, path).map_err(|e| ServeError::Move { path: at(path), error: e })?;
            Ok(l)
        });
    let _ = std::fs::remove_dir_all(&private);
    let l = bound?;
    l.set_nonblocking(true).map_err(ServeError::Socket)?;
    Ok(l)
}

async fn serve(
    unix: Option<std::os::unix::net::UnixListener>,
    tcp: Option<std::net::TcpListener>,
    view: Arc<NodeView>,
    stopped: oneshot::Receiver<()>,
) {
    let unix = unix.and_then(|l| tokio::net::UnixListener::from_std(l).ok());
    let tcp = tcp.and_then(|l| tokio::net::TcpListener::from_std(l).ok());
    let clients = Arc::new(AtomicUsize::new(0));
    let admin = async {
        let Some(l) = unix else { return std::future::pending().await };
        loop {
            let Ok((stream, _)) = l.accept().await else { continue };
            let (view, clients) = (view.clone(), clients.clone());
            tokio::spawn(async move {
                let _slot = Slot::take(&clients);
                if _slot.is_none() {
                    let mut stream = stream;
                    let line = reply_line(&Response::Error(format!("too many clients (at most {MAX_CLIENTS})")));
                    let _ = timeout(WRITE_WITHIN, stream.write_all(&line)).await;
                    return;
                }
                connection(stream, view).await;
            });
        }
    };
    let metrics = async {
        let Some(l) = tcp else { return std::future::pending().await };
        loop {
            let Ok((stream, _)) = l.accept().await else { continue };
            let (view, clients) = (view.clone(), clients.clone());
            tokio::spawn(async move {
                if let Some(_slot) = Slot::take(&clients) {
                    scrape(stream, view).await;
                }
            });
        }
    };
    tokio::select! {
        _ = stopped => {}
        _ = admin => {}
        _ = metrics => {}
    }
}

/// A connection's place among the [`MAX_CLIENTS`]; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(clients: &Arc<AtomicUsize>) -> Option<Slot> {
        let n = clients.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(clients.clone());
        (n < MAX_CLIENTS).then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn reply_line(r: &Response) -> Vec<u8> {
    let mut v = serde_json::to_vec(r).unwrap_or_else(|_| br#"{"error":"internal: cannot encode"}"#.to_vec());
    v.push(b'\n');
    v
}

/// One client: requests answered in order until it hangs up, idles, sends a line too long, or does not
/// take its answer.
async fn connection(stream: tokio::net::UnixStream, view: Arc<NodeView>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = Vec::new();
        let read = timeout(IDLE, (&mut r).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
        if line.len() > MAX_LINE {
            let e = Response::Error(format!("request longer than {MAX_LINE} bytes; closing"));
            let _ = timeout(WRITE_WITHIN, w.write_all(&reply_line(&e))).await;
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(text) {
            Err(e) => Response::Error(format!("bad request: {e}")),
            Ok(req) => {
                let view = view.clone();
                match tokio::task::spawn_blocking(move || super::answer::answer(&view, req)).await {
                    Ok(r) => r,
                    Err(_) => Response::Error("internal: the answer failed".into()),
                }
            }
        };
        match timeout(WRITE_WITHIN, w.write_all(&reply_line(&reply))).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// One Prometheus scrape: `GET /metrics` answered with the text format; anything else 404 or 400.
async fn scrape(mut stream: tokio::net::TcpStream, view: Arc<NodeView>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let got = timeout(WRITE_WITHIN, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.len() > MAX_HTTP_HEAD {
                return false;
            }
        }
        true
    })
    .await;
    let first = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default()).to_string();
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let response = if got != Ok(true) {
        http(400, "text/plain", "bad request\n".into())
    } else if method == "GET" && (target == "/metrics" || target.starts_with("/metrics?")) {
        let view = view.clone();
        match tokio::task::spawn_blocking(move || super::metrics::render(&view)).await {
            Ok(body) => http(200, "text/plain; version=0.0.4; charset=utf-8", body),
            Err(_) => http(500, "text/plain", "internal error\n".into()),
        }
    } else {
        http(404, "text/plain", "calxdp serves /metrics only\n".into())
    };
    let _ = timeout(WRITE_WITHIN, stream.write_all(&response)).await;
    let _ = stream.shutdown().await;
}

fn http(code: u16, ctype: &str, body: String) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}
