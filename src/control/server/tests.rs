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
    let r = client::call(&path, &every_block(), Duration::from_secs(5)).unwrap();
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
/// uid, hence python rather than a thread of this test.) Not being root, or lacking python3
/// or runuser, fails the test as the end-to-end tests do: it must not pass without running.
fn connect_as_nobody(path: &Path) -> std::process::Output {
    let python = Path::new("/usr/bin/python3");
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (to connect as nobody); run the suite as root"
    );
    assert!(python.exists(), "this test needs /usr/bin/python3");
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        try:\n    s.connect(sys.argv[1])\n\
        except PermissionError:\n    print('EACCES'); sys.exit(3)\n\
        # The server may refuse before reading: its answer is there even if sending fails.\n\
        try:\n    s.sendall(b'{\"request\":\"status\"}\\n')\n\
        except OSError:\n    pass\n\
        print(s.makefile().readline())\n";
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(python)
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run runuser (util-linux): {e}"))
}

#[test]
fn nobody_cannot_connect_to_the_root_only_socket() {
    let (_dir, path, _server) = serving();
    let out = connect_as_nobody(&path);
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
    let out = connect_as_nobody(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Response = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(error_text(&r), "permission denied");
}

/// A stand-in daemon holding blocks of several origins: answers `list` with them and
/// `unblock` by lifting one (an error for a target it does not hold); records the unblocks.
fn daemon_with_blocks(calls: Receiver<ControlCall>) -> Arc<std::sync::Mutex<Vec<String>>> {
    use crate::block::{Origin, target_text};
    use crate::control::select::test_block as record;
    let lifted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&lifted);
    std::thread::spawn(move || {
        let mut blocks = vec![
            record("10.0.0.0/24", Origin::Manual, ""),
            record("10.0.1.7", Origin::Scan, ""),
            record("10.0.1.8", Origin::Scan, ""),
            record("192.0.2.9", Origin::Fleet, "cscli manual"),
        ];
        for call in calls {
            let response = match &call.request {
                Request::List { targets, origin } => {
                    assert!(
                        targets.is_empty() && origin.is_none(),
                        "filtered by the server"
                    );
                    Response::List {
                        blocks: blocks.clone(),
                        fleet: None,
                    }
                }
                Request::Unblock { target, .. } => {
                    let before = blocks.len();
                    blocks.retain(|b| target_text(&b.target) != *target);
                    if blocks.len() < before {
                        log.lock().unwrap().push(target.clone());
                        Response::Unblocked {
                            target: target.clone(),
                            detail: vec![format!("route: ip route del {target}")],
                        }
                    } else {
                        Response::error(format!("{target} is not blocked"))
                    }
                }
                other => Response::error(format!("fake daemon got {}", other.name())),
            };
            call.answer(response);
        }
    });
    lifted
}

fn serving_blocks() -> (
    tempfile::TempDir,
    PathBuf,
    ControlServer,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portsentry.sock");
    let (tx, rx) = crossbeam_channel::unbounded();
    let server = ControlServer::start(&path, tx).unwrap();
    let lifted = daemon_with_blocks(rx);
    (dir, path, server, lifted)
}

fn listed(path: &Path, targets: &[&str], origin: Option<&str>) -> Vec<String> {
    let request = Request::List {
        targets: targets.iter().map(|t| t.to_string()).collect(),
        origin: origin.map(str::to_string),
    };
    match client::call(path, &request, Duration::from_secs(5)).unwrap() {
        Response::List { blocks, .. } => blocks
            .iter()
            .map(|b| crate::block::target_text(&b.target))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_server_filters_the_daemons_list_by_address_and_origin() {
    let (_dir, path, _server, _) = serving_blocks();
    assert_eq!(listed(&path, &[], None).len(), 4);
    assert_eq!(listed(&path, &["10.0.0.77"], None), ["10.0.0.0/24"]);
    assert_eq!(
        listed(&path, &["10.0.0.0/16"], Some("scan")),
        ["10.0.1.7", "10.0.1.8"]
    );
    assert_eq!(listed(&path, &[], Some("fleet")), ["192.0.2.9"]);
    let bad = Request::List {
        targets: vec![],
        origin: Some("everyone".into()),
    };
    let r = client::call(&path, &bad, Duration::from_secs(5)).unwrap();
    assert!(error_text(&r).contains("is not an origin"), "{r:?}");
}

fn unblock_many(path: &Path, targets: &[&str], all: bool, origin: Option<&str>) -> Response {
    let request = Request::UnblockMany {
        targets: targets.iter().map(|t| t.to_string()).collect(),
        all,
        origin: origin.map(str::to_string),
        covering: false,
    };
    client::call(path, &request, Duration::from_secs(5)).unwrap()
}

#[test]
fn unblock_of_several_targets_lifts_each_and_reports_each() {
    let (_dir, path, _server, lifted) = serving_blocks();
    let Response::UnblockedMany { results } = unblock_many(
        &path,
        &["10.0.1.7", "10.9.9.9", "10.0.0.5/24", "10.0.1.7"],
        false,
        None,
    ) else {
        panic!("not unblocked_many");
    };
    let outcome: Vec<(&str, bool)> = results.iter().map(|r| (r.target.as_str(), r.ok)).collect();
    assert_eq!(
        outcome,
        [
            ("10.0.1.7", true),
            ("10.9.9.9", false),
            ("10.0.0.0/24", true)
        ],
        "in order, canonical, each once"
    );
    assert_eq!(results[1].detail, ["10.9.9.9 is not blocked"]);
    assert_eq!(results[0].detail, ["route: ip route del 10.0.1.7"]);
    assert_eq!(*lifted.lock().unwrap(), ["10.0.1.7", "10.0.0.0/24"]);
}

#[test]
fn unblock_all_of_one_origin_leaves_the_others() {
    let (_dir, path, _server, lifted) = serving_blocks();
    let Response::UnblockedMany { results } = unblock_many(&path, &[], true, Some("scan")) else {
        panic!("not unblocked_many");
    };
    assert!(results.iter().all(|r| r.ok), "{results:?}");
    assert_eq!(*lifted.lock().unwrap(), ["10.0.1.7", "10.0.1.8"]);
    assert_eq!(listed(&path, &[], None), ["10.0.0.0/24", "192.0.2.9"]);
    // Then everything else.
    let Response::UnblockedMany { results } = unblock_many(&path, &[], true, None) else {
        panic!("not unblocked_many");
    };
    assert_eq!(results.len(), 2);
    assert!(listed(&path, &[], None).is_empty());
    // Nothing left: an empty answer, not an error.
    assert_eq!(
        unblock_many(&path, &[], true, None),
        Response::UnblockedMany { results: vec![] }
    );
}

#[test]
fn unblock_many_refuses_a_request_that_names_nothing_or_mixes_forms() {
    let (_dir, path, _server, lifted) = serving_blocks();
    for (targets, all, origin, why) in [
        (&[][..], false, None, "no target"),
        (&["10.0.1.7"][..], true, None, "not both"),
        (
            &["10.0.1.7"][..],
            false,
            Some("scan"),
            "origin goes with all",
        ),
        (&["10.0.1.x"][..], false, None, "not an IP address"),
    ] {
        let r = unblock_many(&path, targets, all, origin);
        assert!(error_text(&r).contains(why), "{r:?}");
    }
    let covering_all = Request::UnblockMany {
        targets: vec![],
        all: true,
        origin: None,
        covering: true,
    };
    let r = client::call(&path, &covering_all, Duration::from_secs(5)).unwrap();
    assert!(
        error_text(&r).contains("covering goes with targets"),
        "{r:?}"
    );
    assert!(lifted.lock().unwrap().is_empty(), "nothing lifted");
}
