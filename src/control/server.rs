//! The control socket server: accepts clients on a unix socket, checks who they are, reads
//! one request each and hands it to the daemon as a [`ControlCall`]; it never holds daemon
//! state itself.
//!
//! Every client has its own thread and its own deadlines, so a slow or hostile client (the
//! socket is root's, but a bug in a script is enough) can never hold the others up nor the
//! daemon: at most [`MAX_CLIENTS`] at once, [`READ_TIMEOUT`] for the whole request,
//! [`MAX_REQUEST_BYTES`] for its size.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, SendTimeoutError, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::protocol::{
    ControlCall, LineError, MAX_REQUEST_BYTES, Request, Response, UnblockResult, read_line,
};
use super::select::Selection;

/// Clients served at once; the next one is told it is busy and closed.
pub const MAX_CLIENTS: usize = 8;

/// Time a client has to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Time the answer may take to be written to a client that stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the accept loop waits after a failed poll or accept (out of descriptors and
/// the like) before it tries again.
const RETRY_WAIT: Duration = Duration::from_millis(100);

/// The running server; dropping it (or [`ControlServer::stop`]) stops accepting and removes
/// the socket file.
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket we bound, so that stop removes only our own file.
    identity: (u64, u64),
    /// Dropped to stop the accept thread: its end of the pair turns readable (end of file),
    /// which wakes its poll. An idle daemon's accept thread sleeps until a client or this,
    /// instead of waking ten times a second to look at a flag.
    stop: Option<UnixStream>,
    accept: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds the socket at `path` (root-only, mode 0600) and starts the accept thread;
    /// requests go to `calls`. A stale socket left by a crash is replaced; a socket another
    /// daemon still answers on is an error.
    pub fn start(path: &Path, calls: Sender<ControlCall>) -> io::Result<ControlServer> {
        prepare_parent(path)?;
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                already_running(path)
            } else {
                io::Error::new(
                    e.kind(),
                    format!("cannot bind control socket {}: {e}", path.display()),
                )
            }
        })?;
        // Whatever fails from here on, the file we just created goes again.
        launch(listener, path, calls).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting and removes the socket file. Clients already being served finish on
    /// their own deadlines (their requests fail once the daemon stops answering).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        drop(self.stop.take());
        if accept.join().is_err() {
            log::warn!("control socket: the accept thread panicked");
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("control socket: cannot remove {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Restricts the freshly bound socket and starts its accept thread.
fn launch(
    listener: UnixListener,
    path: &Path,
    calls: Sender<ControlCall>,
) -> io::Result<ControlServer> {
    let meta = std::fs::metadata(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let (stop, stopped) = UnixStream::pair()?;
    let accept = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || accept_loop(listener, calls, stopped))?;
    Ok(ControlServer {
        path: path.to_path_buf(),
        identity: (meta.dev(), meta.ino()),
        stop: Some(stop),
        accept: Some(accept),
    })
}

fn already_running(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "another portsentry is already running on {}",
            path.display()
        ),
    )
}

/// Creates the socket's directory (0755, so that the path is visible; the socket itself is
/// what is closed) when it does not exist yet.
fn prepare_parent(path: &Path) -> io::Result<()> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if parent.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", parent.display()))
        })?;
    // The umask may have taken bits away.
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
}

/// Removes what a crashed daemon left behind, and nothing else: only a socket, and only
/// when nobody answers on it.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(already_running(path)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot tell whether {} is in use: {e}", path.display()),
        )),
    }
}

/// Decrements the client count when a client thread ends (or was never started).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts clients until `stopped` turns readable (the server dropped its end).
fn accept_loop(listener: UnixListener, calls: Sender<ControlCall>, stopped: UnixStream) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stopped.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                log::warn!("control socket: poll failed: {e}");
                std::thread::sleep(RETRY_WAIT);
                continue;
            }
        }
        if fds[1].any().unwrap_or(true) {
            return;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                log::warn!("control socket: accept failed: {e}");
                std::thread::sleep(RETRY_WAIT);
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= MAX_CLIENTS {
            // A short write timeout: the accept thread must not wait on this client.
            let _ = stream.set_nonblocking(false);
            let busy = Response::error("busy: too many control clients");
            let _ = send(&stream, &busy, Duration::from_millis(200));
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(Arc::clone(&active));
        let calls = calls.clone();
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                let _slot = slot;
                serve(stream, &calls);
            });
        if let Err(e) = spawned {
            log::warn!("control socket: cannot start a client thread: {e}");
        }
    }
}

/// One client, start to end: who, what, ask the daemon, answer.
fn serve(stream: UnixStream, calls: &Sender<ControlCall>) {
    let response = handle(&stream, calls).unwrap_or_else(Response::error);
    if let Err(e) = send(&stream, &response, WRITE_TIMEOUT) {
        log::debug!("control socket: cannot answer a client: {e}");
    }
}

/// `Err`: the message of the [`Response::Error`] the client gets.
fn handle(stream: &UnixStream, calls: &Sender<ControlCall>) -> Result<Response, String> {
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("control socket: {e}"))?;
    check_peer(stream)?;
    let line = read_request(stream)?;
    let request: Request = serde_json::from_slice(&line).map_err(|e| {
        format!(
            "malformed request: {e}; expected one JSON object on one line, such as \
             {{\"request\":\"status\"}}"
        )
    })?;
    let deadline = Instant::now() + request.answer_timeout();
    match request {
        Request::List { targets, origin } => list(calls, &targets, origin.as_deref()),
        Request::UnblockMany {
            targets,
            all,
            origin,
            covering,
        } => {
            let targets = unblock_targets(calls, targets, all, origin.as_deref(), covering)?;
            Ok(unblock_each(calls, targets, covering, deadline))
        }
        request => ask_daemon(calls, request),
    }
}

/// `list` with its filters: the daemon's whole list, filtered here.
fn list(
    calls: &Sender<ControlCall>,
    targets: &[String],
    origin: Option<&str>,
) -> Result<Response, String> {
    let selection = Selection::new(targets, origin)?;
    // The fleet's counts go with an unfiltered list and with `--origin fleet[:SOURCE]`.
    let with_fleet =
        targets.is_empty() && origin.is_none_or(|o| o == "fleet" || o.starts_with("fleet:"));
    Ok(match ask_daemon(calls, every_block())? {
        Response::List { blocks, fleet } => Response::List {
            blocks: selection.apply(blocks),
            fleet: fleet.filter(|_| with_fleet),
        },
        other => other,
    })
}

fn every_block() -> Request {
    Request::List {
        targets: Vec::new(),
        origin: None,
    }
}

/// The targets of `unblock ADDR…` (canonical, each once) or `unblock --all [--origin O]`
/// (the blocks in force, from the daemon's list); `Err` for a request that names nothing or
/// mixes the two forms.
fn unblock_targets(
    calls: &Sender<ControlCall>,
    targets: Vec<String>,
    all: bool,
    origin: Option<&str>,
    covering: bool,
) -> Result<Vec<String>, String> {
    match (all, targets.is_empty()) {
        (true, _) if covering => Err("unblock: covering goes with targets, not with all".into()),
        (true, true) => {
            let selection = Selection::new(&[], origin)?;
            match ask_daemon(calls, every_block())? {
                Response::List { blocks, .. } => Ok(selection
                    .apply(blocks)
                    .iter()
                    .map(|b| crate::block::target_text(&b.target))
                    .collect()),
                Response::Error { message } => Err(message),
                other => Err(format!("unexpected answer \"{}\" to list", other.name())),
            }
        }
        (true, false) => Err("unblock: either targets or all, not both".into()),
        (false, true) => Err("unblock: no target (name addresses, or all)".into()),
        (false, false) if origin.is_some() => {
            Err("unblock: origin goes with all, not with targets".into())
        }
        (false, false) => {
            let mut seen = std::collections::HashSet::new();
            let mut canonical = Vec::with_capacity(targets.len());
            for t in &targets {
                let t = crate::block::target_text(&crate::block::parse_target(t)?);
                if seen.insert(t.clone()) {
                    canonical.push(t);
                }
            }
            Ok(canonical)
        }
    }
}

/// One [`Request::Unblock`] per target, all handed to the daemon before any answer is
/// awaited (the block manager undoes them side by side), the answers gathered in order by
/// `deadline`.
fn unblock_each(
    calls: &Sender<ControlCall>,
    targets: Vec<String>,
    covering: bool,
    deadline: Instant,
) -> Response {
    let mut pending = Vec::with_capacity(targets.len());
    for target in targets {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let call = ControlCall {
            request: Request::Unblock {
                target: target.clone(),
                covering,
            },
            reply,
        };
        let sent = calls.send_deadline(call, deadline).map_err(|e| match e {
            SendTimeoutError::Timeout(_) => not_in_time(),
            SendTimeoutError::Disconnected(_) => shutting_down(),
        });
        pending.push((target, sent.map(|()| answer)));
    }
    let results = pending
        .into_iter()
        .map(|(target, answer)| {
            let answer = answer.and_then(|a| {
                a.recv_deadline(deadline).map_err(|e| match e {
                    RecvTimeoutError::Timeout => not_in_time(),
                    RecvTimeoutError::Disconnected => shutting_down(),
                })
            });
            match answer {
                Ok(Response::Unblocked { target, detail }) => UnblockResult {
                    target,
                    ok: true,
                    detail,
                },
                Ok(Response::Error { message }) => failed(target, message),
                Ok(other) => failed(target, format!("unexpected answer \"{}\"", other.name())),
                Err(message) => failed(target, message),
            }
        })
        .collect();
    Response::UnblockedMany { results }
}

fn failed(target: String, message: String) -> UnblockResult {
    UnblockResult {
        target,
        ok: false,
        detail: vec![message],
    }
}

/// Only root and the daemon's own user may steer it; the 0600 mode says the same, this
/// holds even if someone loosens the mode.
fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let creds = getsockopt(stream, PeerCredentials)
        .map_err(|e| format!("cannot identify the client: {e}"))?;
    let uid = creds.uid();
    if peer_allowed(uid, nix::unistd::geteuid().as_raw()) {
        Ok(())
    } else {
        log::warn!(
            "control socket: refused a client with uid {uid} (pid {})",
            creds.pid()
        );
        Err("permission denied".into())
    }
}

fn peer_allowed(peer_uid: u32, own_euid: u32) -> bool {
    peer_uid == 0 || peer_uid == own_euid
}

/// Reads the request line within [`READ_TIMEOUT`] in total and [`MAX_REQUEST_BYTES`].
fn read_request(stream: &UnixStream) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + READ_TIMEOUT;
    match read_line(stream, deadline, MAX_REQUEST_BYTES) {
        Ok(line) if line.is_empty() => Err("empty request".into()),
        Ok(line) => Ok(line),
        Err(LineError::TimedOut) => Err(read_timed_out()),
        Err(LineError::TooLarge) => Err(too_large()),
        Err(LineError::Io(e)) => Err(format!("cannot read the request: {e}")),
    }
}

fn read_timed_out() -> String {
    format!(
        "the request did not arrive within {}s",
        READ_TIMEOUT.as_secs()
    )
}

fn too_large() -> String {
    format!(
        "request too large (max {} MiB)",
        MAX_REQUEST_BYTES / (1024 * 1024)
    )
}

/// Hands the request to the daemon and waits for its answer, never forever.
fn ask_daemon(calls: &Sender<ControlCall>, request: Request) -> Result<Response, String> {
    let timeout = request.answer_timeout();
    let deadline = Instant::now() + timeout;
    let (reply, answer) = crossbeam_channel::bounded(1);
    let call = ControlCall { request, reply };
    calls.send_timeout(call, timeout).map_err(|e| match e {
        SendTimeoutError::Timeout(_) => not_in_time(),
        SendTimeoutError::Disconnected(_) => shutting_down(),
    })?;
    answer
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|e| match e {
            RecvTimeoutError::Timeout => not_in_time(),
            RecvTimeoutError::Disconnected => shutting_down(),
        })
}

fn not_in_time() -> String {
    "the daemon did not answer in time".into()
}

fn shutting_down() -> String {
    "the daemon is shutting down".into()
}

fn send(mut stream: &UnixStream, response: &Response, timeout: Duration) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&line)?;
    stream.flush()?;
    // Tell the client the answer is complete even if it keeps the connection open.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests;
