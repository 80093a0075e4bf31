//! The client side of the control socket: one request, one answer, and errors worded for
//! the operator in one line (the CLI prints them as they are).

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::protocol::{LineError, Request, Response, read_line};

/// Largest answer read: a `list` of a million blocks fits, a runaway peer does not fill
/// the memory.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024 * 1024;

/// Why a call got no answer; each message is one line naming the socket and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody listening on it.
    #[error("portsentry is not running (no control socket at {})", .0.display())]
    NotRunning(PathBuf),
    /// The socket (or its directory) is root's.
    #[error(
        "permission denied on {}: the control socket is root's; run as root",
        .0.display()
    )]
    PermissionDenied(PathBuf),
    /// The daemon took longer than the request's timeout.
    #[error("portsentry did not answer within {}s on {}", .after.as_secs(), .path.display())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// How long we waited.
        after: Duration,
    },
    /// Something answered, but not with a response this client understands (a different
    /// version, or not portsentry at all).
    #[error("malformed answer on {}: {detail}", .path.display())]
    Malformed {
        /// The socket.
        path: PathBuf,
        /// What was wrong with it.
        detail: String,
    },
    /// Any other I/O failure on the socket.
    #[error("control socket {}: {source}", .path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Sends `request` to the daemon at `socket` and waits at most `timeout` in total for the
/// answer. A [`Response::Error`] is an answer, not a `ClientError`.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(socket).map_err(|e| connect_error(socket, e))?;
    let io_err = |source: io::Error| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut line = serde_json::to_vec(request).map_err(|e| io_err(io::Error::other(e)))?;
    line.push(b'\n');
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    if let Err(e) = stream.write_all(&line) {
        match e.kind() {
            // The server refused early (too large, busy, not allowed) and closed: its
            // answer is waiting to be read.
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {}
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                return Err(timed_out(socket, timeout));
            }
            _ => return Err(io_err(e)),
        }
    }
    let answer = read_answer(&stream, socket, deadline, timeout)?;
    serde_json::from_slice(&answer).map_err(|e| ClientError::Malformed {
        path: socket.to_path_buf(),
        detail: format!("{e}"),
    })
}

/// Maps a failed connect to the message an operator can act on.
fn connect_error(socket: &Path, e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(socket.to_path_buf())
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(socket.to_path_buf()),
        _ => ClientError::Io {
            path: socket.to_path_buf(),
            source: e,
        },
    }
}

fn timed_out(socket: &Path, after: Duration) -> ClientError {
    ClientError::Timeout {
        path: socket.to_path_buf(),
        after,
    }
}

/// Reads the answer line before the deadline.
fn read_answer(
    stream: &UnixStream,
    socket: &Path,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let malformed = |detail: String| ClientError::Malformed {
        path: socket.to_path_buf(),
        detail,
    };
    match read_line(stream, deadline, MAX_RESPONSE_BYTES) {
        Ok(answer) if answer.is_empty() => {
            Err(malformed("the connection closed without an answer".into()))
        }
        Ok(answer) => Ok(answer),
        Err(LineError::TimedOut) => Err(timed_out(socket, timeout)),
        Err(LineError::TooLarge) => Err(malformed(format!(
            "answer larger than {} MiB",
            MAX_RESPONSE_BYTES / (1024 * 1024)
        ))),
        Err(LineError::Io(source)) => Err(ClientError::Io {
            path: socket.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn missing_socket_and_refused_connect_say_not_running() {
        let p = Path::new("/run/portsentry/portsentry.sock");
        for errno in [libc::ENOENT, libc::ECONNREFUSED] {
            assert_eq!(
                connect_error(p, raw(errno)).to_string(),
                "portsentry is not running (no control socket at /run/portsentry/portsentry.sock)"
            );
        }
    }

    #[test]
    fn eacces_says_run_as_root() {
        let p = Path::new("/run/portsentry/portsentry.sock");
        assert_eq!(
            connect_error(p, raw(libc::EACCES)).to_string(),
            "permission denied on /run/portsentry/portsentry.sock: the control socket is \
             root's; run as root"
        );
    }

    #[test]
    fn other_errors_name_the_socket_on_one_line() {
        let p = Path::new("/x.sock");
        let msg = connect_error(p, raw(libc::ENOTDIR)).to_string();
        assert!(msg.starts_with("control socket /x.sock: "), "{msg}");
        assert!(!msg.contains('\n'));
        let t = timed_out(p, Duration::from_secs(35)).to_string();
        assert_eq!(t, "portsentry did not answer within 35s on /x.sock");
    }

    #[test]
    fn calling_a_missing_socket_says_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.sock");
        let err = call(&p, &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::NotRunning(_)), "{err}");
    }
}
