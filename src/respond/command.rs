//! Running responder commands: macro substitution, and a shell command line run through the
//! one process runner ([`super::process`]).
//!
//! 1.2 ran `KILL_*` through `system()` inside the packet loop and read the status wrongly, so a
//! failed block was logged as a success. Here a command runs in its own process group (a
//! timeout kills the whole group, `&&` chains included), with a clean environment, and its
//! real exit status decides the outcome.

use std::time::Duration;

use super::process::{self, Ending, Job};
use crate::respond::ResponseContext;

/// Most output kept from a command per stream, for error messages.
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
/// existing configs keep working). The output is standard error then standard output, so a
/// failure's first line is its error message.
pub fn run_shell(command_line: &str, timeout: Duration) -> CommandReport {
    let argv = [
        "/bin/sh".to_string(),
        "-c".to_string(),
        command_line.to_string(),
    ];
    let finished = process::run(&Job {
        argv: &argv,
        stdin: None,
        timeout,
        output_cap: OUTPUT_LIMIT,
    });
    let status = match finished.ending {
        Ending::Exited(code) => CommandStatus::Exited(code),
        Ending::Signaled(sig) => CommandStatus::Signaled(sig),
        Ending::TimedOut => CommandStatus::TimedOut(timeout),
        Ending::Failed(why) => CommandStatus::SpawnFailed(why),
    };
    let mut output = finished.stderr;
    output.extend_from_slice(&finished.stdout);
    CommandReport {
        status,
        output: String::from_utf8_lossy(&output).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Candidate, Hit, Mode, ProbeKind};

    fn alert() -> Candidate {
        Candidate {
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

    #[test]
    fn a_background_child_holding_the_output_does_not_hold_the_command() {
        let start = std::time::Instant::now();
        let r = run_shell(
            "echo before; sleep 300 & echo after; echo warn >&2",
            Duration::from_secs(10),
        );
        assert!(r.success(), "{r:?}");
        assert_eq!(r.output, "warn\nbefore\nafter\n");
        assert!(start.elapsed() < Duration::from_secs(3), "{r:?}");
    }
}
