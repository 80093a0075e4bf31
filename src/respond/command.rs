//! Running responder commands: macro substitution and a child process with a hard timeout.
//!
//! 1.2 ran `KILL_*` through `system()` inside the packet loop and read the status wrongly, so a
//! failed block was logged as a success. Here a command runs on the response thread, in its own
//! process group (a timeout kills the whole group, `&&` chains included), with a clean
//! environment, and its real exit status decides the outcome.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

use crate::respond::ResponseContext;

/// PATH given to responder commands: the environment is cleared so that nothing from the
/// daemon's start-up shell leaks into firewall commands.
pub const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most output kept from a command, for error messages.
const OUTPUT_LIMIT: usize = 4096;

/// Replaces `$TARGET$`, `$PORT$`, `$MODE$` (1.2 meanings) and `$PROTO$` (ours). The target is
/// always the IP literal (or `addr/len` for a network), never a resolved name, so no shell
/// metacharacter can come from it.
pub fn expand_macros(template: &str, ctx: &ResponseContext<'_>) -> String {
    let alert = ctx.alert;
    template
        .replace("$TARGET$", &ctx.target_text())
        .replace("$PORT$", &alert.hit.port.to_string())
        .replace("$MODE$", alert.hit.mode.as_str())
        .replace("$PROTO$", alert.hit.proto().lower())
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal (not by us).
    Signaled(i32),
    /// Still running at the deadline; its process group was killed.
    TimedOut(Duration),
    /// Could not be started at all.
    SpawnFailed(String),
}

/// A finished command: how it ended and what it printed (stdout and stderr, capped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReport {
    /// How it ended.
    pub status: CommandStatus,
    /// Combined output, at most a few KiB, lossily decoded.
    pub output: String,
}

impl CommandReport {
    /// Only a zero exit status is a success.
    pub fn success(&self) -> bool {
        self.status == CommandStatus::Exited(0)
    }

    /// One-line description of a failure for the log: status and the start of the output.
    pub fn failure_text(&self) -> String {
        let status = match &self.status {
            CommandStatus::Exited(code) => format!("exit status {code}"),
            CommandStatus::Signaled(sig) => format!("killed by signal {sig}"),
            CommandStatus::TimedOut(d) => {
                format!("timed out after {}", humantime::format_duration(*d))
            }
            CommandStatus::SpawnFailed(e) => format!("could not start: {e}"),
        };
        let out = self.output.trim();
        if out.is_empty() {
            status
        } else {
            let first: String = out.lines().next().unwrap_or("").chars().take(200).collect();
            format!("{status}: {first}")
        }
    }
}

/// Runs a shell command line (`/bin/sh -c`, as 1.2's `system()` did, so `&&` chains in
/// existing configs keep working).
pub fn run_shell(command_line: &str, timeout: Duration) -> CommandReport {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command_line);
    run(cmd, timeout)
}

/// Runs a prepared command: no stdin, cleared environment, own process group, output
/// captured, killed with its whole group when the timeout expires.
pub fn run(mut cmd: Command, timeout: Duration) -> CommandReport {
    cmd.env_clear()
        .env("PATH", COMMAND_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return CommandReport {
                status: CommandStatus::SpawnFailed(e.to_string()),
                output: String::new(),
            };
        }
    };
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(2);
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 1024];
            let mut pipe = pipe;
            // Read to the end so the child never blocks on a full pipe; keep only the start.
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            let _ = tx.send(kept);
        });
    }
    drop(tx);
    let pid = child.id() as libc::pid_t;
    let status = match child.wait_timeout(timeout) {
        Ok(Some(st)) => match (st.code(), st.signal()) {
            (Some(code), _) => CommandStatus::Exited(code),
            (None, Some(sig)) => CommandStatus::Signaled(sig),
            (None, None) => CommandStatus::Exited(-1),
        },
        Ok(None) => {
            // SAFETY: kill(2) on our own child's process group; no memory is involved.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            CommandStatus::TimedOut(timeout)
        }
        Err(e) => CommandStatus::SpawnFailed(format!("wait failed: {e}")),
    };
    // A grandchild that kept a pipe open must not hold the response thread: give the readers
    // a moment, then go on with what they have.
    let mut output = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    for _ in 0..2 {
        match rx.recv_deadline(deadline) {
            Ok(part) => output.extend(part),
            Err(_) => break,
        }
    }
    CommandReport {
        status,
        output: String::from_utf8_lossy(&output).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Alert, Hit, Mode, ProbeKind};

    fn alert() -> Alert {
        Alert {
            hit: Hit::now(
                "fd77::9".parse().unwrap(),
                31337,
                Mode::Sudp,
                ProbeKind::Udp,
            ),
            count: 1,
            already_blocked: false,
            actionable: true,
        }
    }

    #[test]
    fn macros_are_replaced_with_1_2_meanings() {
        let config = crate::config::build::defaults(std::path::Path::new("p.conf"));
        assert_eq!(
            expand_macros(
                "x $TARGET$ $PORT$ $MODE$ $PROTO$ $TARGET$",
                &ResponseContext::for_alert(&alert(), "fd77::9", &config)
            ),
            "x fd77::9 31337 sudp udp fd77::9"
        );
    }

    #[test]
    fn zero_exit_is_success_and_output_is_captured() {
        let r = run_shell("echo hello; echo oops >&2", Duration::from_secs(5));
        assert!(r.success(), "{r:?}");
        assert!(r.output.contains("hello") && r.output.contains("oops"));
    }

    #[test]
    fn nonzero_exit_is_a_failure_with_its_status() {
        let r = run_shell("echo bad >&2; exit 3", Duration::from_secs(5));
        assert_eq!(r.status, CommandStatus::Exited(3));
        assert_eq!(r.failure_text(), "exit status 3: bad");
    }

    #[test]
    fn missing_program_is_a_failure() {
        let r = run_shell("/nonexistent/route add x", Duration::from_secs(5));
        assert_eq!(r.status, CommandStatus::Exited(127));
        assert!(!r.success());
    }

    #[test]
    fn hanging_command_is_killed_with_its_children() {
        let start = std::time::Instant::now();
        let r = run_shell("sleep 30 && echo never", Duration::from_millis(300));
        assert_eq!(
            r.status,
            CommandStatus::TimedOut(Duration::from_millis(300))
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(r.failure_text().starts_with("timed out after 300ms"));
    }

    #[test]
    fn environment_is_cleared() {
        // SAFETY: test-only; no other thread of this test reads the variable.
        unsafe { std::env::set_var("PORTSENTRY_SECRET_TEST", "leak") };
        let r = run_shell("echo \"[$PORTSENTRY_SECRET_TEST]\"", Duration::from_secs(5));
        assert_eq!(r.output.trim(), "[]");
    }
}
