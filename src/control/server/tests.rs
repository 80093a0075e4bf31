use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::SystemTime;

use crossbeam_channel::Receiver;

use super::*;
use crate::control::client::{self, ClientError};
use crate::control::protocol::{Counters, StatusReport};

/// A stand-in for the daemon's main loop: answers `status` with a fixed report and echoes
/// the name of anything else in an error; ends when the server is gone.
fn fake_daemon(calls: Receiver<ControlCall>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for call in calls {
            let response = match &call.request {
                Request::Status => Response::Status(report()),
                other => Response::error(format!("fake daemon got {}", other.name())),
            };
            call.answer(response);
        }
    })
}

fn report() -> StatusReport {
    StatusReport {
        version: "test".into(),
        modes: vec!["atcp".into()],
        started: SystemTime::UNIX_EPOCH,
        uptime_secs: 5,
        generation: 2,
        last_reload: None,
        counters: Counters::default(),
        fleet: Vec::new(),
        storage: Vec::new(),
    }
}

/// A server on a fresh socket in a world-traversable temp dir, with a fake daemon.
fn serving() -> (tempfile::TempDir, PathBuf, ControlServer) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("run/portsentry.sock");
    let (tx, rx) = crossbeam_channel::unbounded();
    let server = ControlServer::start(&path, tx).unwrap();
    fake_daemon(rx);
    (dir, path, server)
}

fn status(path: &Path) -> Result<Response, ClientError> {
    client::call(path, &Request::Status, Duration::from_secs(5))
}

fn is_status(r: &Response) -> bool {
    matches!(r, Response::Status(s) if s.generation == 2)
}

/// Sends raw bytes and reads the one-line answer.
fn exchange(path: &Path, bytes: &[u8]) -> Response {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(bytes).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn error_text(r: &Response) -> &str {
    match r {
        Response::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn status_is_answered_by_the_daemon() {
    let (_dir, path, _server) = serving();
    assert!(is_status(&status(&path).unwrap()));
    // Another request kind reaches the daemon too.
    let r = client::call(&path, &Request::List, Duration::from_secs(5)).unwrap();
    assert_eq!(error_text(&r), "fake daemon got list");
}

#[test]
fn socket_is_root_only_in_a_visible_directory() {
    let (_dir, path, _server) = serving();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o755);
}

#[test]
fn malformed_json_is_answered_with_what_was_expected() {
    let (_dir, path, _server) = serving();
    let msg = error_text(&exchange(&path, b"{\"request\": \"status\"\n")).to_string();
    assert!(msg.starts_with("malformed request: "), "{msg}");
    assert!(msg.contains("{\"request\":\"status\"}"), "{msg}");
    let msg = error_text(&exchange(&path, b"{\"request\":\"explode\"}\n")).to_string();
    assert!(
        msg.contains("unknown variant `explode`, expected one of"),
        "{msg}"
    );
    // A request without a newline is read up to the end of the stream.
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"{\"request\":\"status\"}").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(is_status(&serde_json::from_str(&line).unwrap()));
}

#[test]
fn oversized_request_is_refused_and_the_next_client_is_served() {
    let (_dir, path, _server) = serving();
    let huge = Request::Block {
        targets: vec!["10.0.0.1".into()],
        duration: None,
        reason: "x".repeat(20 * 1024 * 1024),
    };
    let r = client::call(&path, &huge, Duration::from_secs(10)).unwrap();
    assert_eq!(error_text(&r), "request too large (max 16 MiB)");
    assert!(is_status(&status(&path).unwrap()));
}

#[test]
fn silent_client_does_not_hold_up_another() {
    let (_dir, path, _server) = serving();
    let silent = UnixStream::connect(&path).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    assert!(is_status(&status(&path).unwrap()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The silent one is still connected; in time it is told why it is dropped.
    let mut line = String::new();
    BufReader::new(&silent).read_line(&mut line).unwrap();
    let r: Response = serde_json::from_str(&line).unwrap();
    assert_eq!(error_text(&r), "the request did not arrive within 5s");
}

#[test]
fn ninth_concurrent_client_is_told_busy() {
    let (_dir, path, _server) = serving();
    let held: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let r = status(&path).unwrap();
    assert_eq!(error_text(&r), "busy: too many control clients");
    // Once they are gone, clients are served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = status(&path).unwrap();
        if is_status(&r) {
            break;
        }
        assert!(Instant::now() < deadline, "still busy: {r:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_daemon_that_drops_the_call_is_reported_as_shutting_down() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sock");
    let (tx, rx) = crossbeam_channel::unbounded::<ControlCall>();
    let _server = ControlServer::start(&path, tx).unwrap();
    std::thread::spawn(move || {
        for call in rx {
            drop(call);
        }
    });
    let r = status(&path).unwrap();
    assert_eq!(error_text(&r), "the daemon is shutting down");
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (tx, rx) = crossbeam_channel::unbounded();
    let _server = ControlServer::start(&path, tx).unwrap();
    fake_daemon(rx);
    assert!(is_status(&status(&path).unwrap()));
}

#[test]
fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sock");
    std::fs::write(&path, "keep me").unwrap();
    let (tx, _rx) = crossbeam_channel::unbounded();
    let err = ControlServer::start(&path, tx).err().unwrap();
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

#[test]
fn a_live_server_on_the_same_path_refuses_a_second_start() {
    let (_dir, path, _server) = serving();
    let (tx, _rx) = crossbeam_channel::unbounded();
    let err = ControlServer::start(&path, tx).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "another portsentry is already running on {}",
            path.display()
        )
    );
    // The first one is untouched.
    assert!(is_status(&status(&path).unwrap()));
}

#[test]
fn stop_and_drop_remove_the_socket_file() {
    let (_dir, path, server) = serving();
    server.stop();
    assert!(!path.exists());
    assert!(matches!(status(&path), Err(ClientError::NotRunning(_))));

    let (tx, _rx) = crossbeam_channel::unbounded();
    let server = ControlServer::start(&path, tx).unwrap();
    assert!(path.exists());
    drop(server);
    assert!(!path.exists());
}

#[test]
fn only_root_and_the_daemons_own_user_are_allowed() {
    assert!(peer_allowed(0, 0));
    assert!(peer_allowed(0, 1000));
    assert!(peer_allowed(1000, 1000));
    assert!(!peer_allowed(65534, 0));
    assert!(!peer_allowed(65534, 1000));
}

/// Connects as `nobody` from another process; prints `EACCES` and exits 3 when the
/// connect itself is refused, else prints the answer line. (Only a process can change its
/// uid, hence python rather than a thread of this test.)
fn connect_as_nobody(path: &Path) -> Option<std::process::Output> {
    let python = Path::new("/usr/bin/python3");
    if !nix::unistd::geteuid().is_root() || !python.exists() {
        eprintln!("skipped: needs root and /usr/bin/python3");
        return None;
    }
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        try:\n    s.connect(sys.argv[1])\n\
        except PermissionError:\n    print('EACCES'); sys.exit(3)\n\
        # The server may refuse before reading: its answer is there even if sending fails.\n\
        try:\n    s.sendall(b'{\"request\":\"status\"}\\n')\n\
        except OSError:\n    pass\n\
        print(s.makefile().readline())\n";
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(python)
        .args(["-c", script])
        .arg(path)
        .output();
    match out {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("skipped: runuser: {e}");
            None
        }
    }
}

#[test]
fn nobody_cannot_connect_to_the_root_only_socket() {
    let (_dir, path, _server) = serving();
    let Some(out) = connect_as_nobody(&path) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "EACCES");
}

#[test]
fn nobody_is_refused_by_peer_credentials_even_if_the_mode_is_loosened() {
    let (_dir, path, _server) = serving();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let Some(out) = connect_as_nobody(&path) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Response = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(error_text(&r), "permission denied");
}
