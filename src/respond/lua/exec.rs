//! `portsentry.exec`: run a program without a shell, with a hard timeout, a clean
//! environment and bounded output, so a plugin can call `nft` or `sendmail` without being able
//! to hang its owner thread or fill its memory.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

/// Directories searched for a program named without a slash. Fixed, so a plugin behaves the
/// same whatever environment the daemon was started from.
pub const SEARCH_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Output kept per stream; the rest is read and thrown away so the child never blocks on a
/// full pipe.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// What to run. Built from the Lua table by the API layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments, never interpreted by a shell.
    pub argv: Vec<String>,
    /// Bytes written to the child's standard input (then closed); none means `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Hard limit; the child's whole process group is killed when it passes.
    pub timeout: Duration,
    /// Run inside this named network namespace (`ip netns exec NAME …`).
    pub netns: Option<String>,
}

/// How the program ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecResult {
    /// The command as run, for logs and block records (argv joined with spaces).
    pub command: String,
    /// Exit code when the program exited.
    pub status: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// It ran past its timeout and was killed.
    pub timed_out: bool,
    /// It could not be started (program not found, not executable, …).
    pub spawn_error: Option<String>,
    /// Standard output, at most [`OUTPUT_CAP`] bytes, lossily decoded.
    pub stdout: String,
    /// Standard error, at most [`OUTPUT_CAP`] bytes, lossily decoded.
    pub stderr: String,
    /// Wall-clock time the program ran.
    pub elapsed: Duration,
}

impl ExecResult {
    /// True when the program exited with status 0.
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }

    /// Short human description: `exit 0`, `exit 1`, `killed by signal 9`, `timed out after 5s`.
    pub fn describe(&self) -> String {
        if let Some(e) = &self.spawn_error {
            return format!("not started: {e}");
        }
        if self.timed_out {
            return format!(
                "timed out after {}",
                humantime::format_duration(round_ms(self.elapsed))
            );
        }
        match (self.status, self.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "ended without status".to_string(),
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// Checks a namespace name the way `ip netns` stores it: one path component under
/// `/run/netns`, no option-looking prefix.
pub fn valid_netns(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Resolves a program name against [`SEARCH_PATH`] (names with a slash are used as given).
fn resolve_program(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("empty program name".to_string());
    }
    if name.contains('/') {
        return Ok(name.to_string());
    }
    for dir in SEARCH_PATH.split(':') {
        let candidate = std::path::Path::new(dir).join(name);
        if candidate.is_file() {
            return Ok(candidate.to_string_lossy().into_owned());
        }
    }
    Err(format!("{name}: not found in {SEARCH_PATH}"))
}

/// Reads a stream to its end, keeping at most `cap` bytes.
fn drain(mut r: impl Read, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    kept
}

/// Runs the request to completion or timeout. Never panics and never waits longer than the
/// timeout plus a short grace for the output pipes.
pub fn run(req: &ExecRequest) -> ExecResult {
    let mut argv = Vec::with_capacity(req.argv.len() + 4);
    if let Some(ns) = &req.netns {
        argv.extend(["ip", "netns", "exec", ns.as_str()].map(String::from));
    }
    argv.extend(req.argv.iter().cloned());
    let command = argv.join(" ");
    let started = Instant::now();
    let failed = |e: String| ExecResult {
        command: command.clone(),
        status: None,
        signal: None,
        timed_out: false,
        spawn_error: Some(e),
        stdout: String::new(),
        stderr: String::new(),
        elapsed: started.elapsed(),
    };
    let Some(first) = argv.first() else {
        return failed("empty argument list".to_string());
    };
    let program = match resolve_program(first) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let mut cmd = Command::new(&program);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", SEARCH_PATH)
        .env("LC_ALL", "C")
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("{program}: {e}")),
    };
    let pid = child.id();

    let writer = match (child.stdin.take(), req.stdin.clone()) {
        (Some(mut pipe), Some(bytes)) => Some(thread::spawn(move || {
            // A child that exits without reading gives EPIPE: not our failure to report.
            let _ = pipe.write_all(&bytes);
        })),
        _ => None,
    };
    let (out_tx, out_rx) = crossbeam_channel::bounded::<Vec<u8>>(1);
    let (err_tx, err_rx) = crossbeam_channel::bounded::<Vec<u8>>(1);
    if let Some(out) = child.stdout.take() {
        thread::spawn(move || {
            let _ = out_tx.send(drain(out, OUTPUT_CAP));
        });
    }
    if let Some(err) = child.stderr.take() {
        thread::spawn(move || {
            let _ = err_tx.send(drain(err, OUTPUT_CAP));
        });
    }

    let (status, timed_out) = match child.wait_timeout(req.timeout) {
        Ok(Some(status)) => (Some(status), false),
        Ok(None) | Err(_) => {
            kill_group(pid);
            let _ = child.kill();
            (child.wait().ok(), true)
        }
    };
    let elapsed = started.elapsed();
    // Grandchildren may keep the pipes open; do not wait for them beyond a short grace.
    let grace = Duration::from_millis(200);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    if let Some(w) = writer
        && w.is_finished()
    {
        let _ = w.join();
    }
    ExecResult {
        command,
        status: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        signal: status.and_then(|s| s.signal()),
        timed_out,
        spawn_error: None,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed,
    }
}

/// Kills the child's process group (it was made leader of its own group at spawn).
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: None,
            timeout: Duration::from_secs(5),
            netns: None,
        }
    }

    #[test]
    fn exit_status_and_output_are_reported() {
        let r = run(&req(&["sh", "-c", "echo out; echo err >&2; exit 3"]));
        assert_eq!(r.status, Some(3));
        assert_eq!(r.stdout, "out\n");
        assert_eq!(r.stderr, "err\n");
        assert!(!r.ok());
        assert_eq!(r.describe(), "exit 3");
    }

    #[test]
    fn arguments_are_not_interpreted_by_a_shell() {
        let r = run(&req(&["echo", "$HOME", ";", "id"]));
        assert_eq!(r.stdout, "$HOME ; id\n");
        assert!(r.ok());
    }

    #[test]
    fn environment_is_cleared() {
        // SAFETY-free check: the parent has HOME set in any test runner; the child must not.
        let r = run(&req(&["env"]));
        assert!(r.ok());
        let vars: Vec<&str> = r.stdout.lines().collect();
        assert!(
            vars.contains(&format!("PATH={SEARCH_PATH}").as_str()),
            "{vars:?}"
        );
        assert!(!vars.iter().any(|v| v.starts_with("HOME=")), "{vars:?}");
    }

    #[test]
    fn stdin_is_fed_to_the_program() {
        let mut r = req(&["cat"]);
        r.stdin = Some(b"hello\nworld\n".to_vec());
        let res = run(&r);
        assert_eq!(res.stdout, "hello\nworld\n");
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let mut r = req(&["sh", "-c", "sleep 30 & sleep 30; echo never"]);
        r.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let res = run(&r);
        assert!(res.timed_out);
        assert!(res.describe().starts_with("timed out after"));
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(res.stdout, "");
    }

    #[test]
    fn missing_program_is_a_spawn_error_not_a_panic() {
        let res = run(&req(&["no-such-program-portsentry"]));
        assert!(res.spawn_error.is_some());
        assert!(res.describe().starts_with("not started"));
        let res = run(&req(&[]));
        assert!(res.spawn_error.is_some());
    }

    #[test]
    fn output_is_capped() {
        let r = run(&req(&["head", "-c", "200000", "/dev/zero"]));
        assert!(r.ok());
        assert_eq!(r.stdout.len(), OUTPUT_CAP);
    }

    #[test]
    fn netns_prefixes_ip_netns_exec() {
        let mut r = req(&["true"]);
        r.netns = Some("ps-does-not-exist-xyz".into());
        let res = run(&r);
        assert_eq!(res.command, "ip netns exec ps-does-not-exist-xyz true");
        assert!(!res.ok());
    }

    #[test]
    fn netns_names_are_checked() {
        assert!(valid_netns("ps-lua-1"));
        assert!(!valid_netns("../etc"));
        assert!(!valid_netns("-n"));
        assert!(!valid_netns(""));
        assert!(!valid_netns("a b"));
    }
}
