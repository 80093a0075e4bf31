//! `portsentry.exec`: run a program without a shell, with a hard timeout, a clean
//! environment and bounded output, so a plugin can call `nft` or `sendmail` without being able
//! to hang its owner thread or fill its memory. The running is [`crate::respond::process`]'s;
//! this module turns the Lua request into a job and the result into what Lua sees.

use std::time::Duration;

use crate::respond::process::{self, Ending, Job};

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
    /// The arguments as run (with the `ip netns exec` prefix when there is one).
    pub argv: Vec<String>,
    /// Exit code when the program exited.
    pub status: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// It ran past its timeout and was killed.
    pub timed_out: bool,
    /// It could not be started (program not found, not executable, …).
    pub spawn_error: Option<String>,
    /// Not run at all: `--test-plugin --dry-run` only showed it.
    pub dry_run: bool,
    /// Under `--dry-run`, the standard input it would have been given (lossily decoded).
    pub stdin: Option<String>,
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

    /// The command as a shell would need it typed: each argument quoted when it has to be,
    /// so what `--test-plugin --dry-run` shows can be pasted into a shell.
    pub fn quoted(&self) -> String {
        shell_words::join(&self.argv)
    }

    /// Short human description: `exit 0`, `exit 1`, `killed by signal 9`, `timed out after 5s`.
    pub fn describe(&self) -> String {
        if self.dry_run {
            return "not run (dry run)".to_string();
        }
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

/// The full argument list a request runs: `ip netns exec NAME` first when a namespace is
/// given.
fn full_argv(req: &ExecRequest) -> Vec<String> {
    let mut argv = Vec::with_capacity(req.argv.len() + 4);
    if let Some(ns) = &req.netns {
        argv.extend(["ip", "netns", "exec", ns.as_str()].map(String::from));
    }
    argv.extend(req.argv.iter().cloned());
    argv
}

/// Runs the request to completion or timeout. Never panics and never waits longer than the
/// timeout plus a few milliseconds, whatever the program leaves behind.
pub fn run(req: &ExecRequest) -> ExecResult {
    let argv = full_argv(req);
    let finished = process::run(&Job {
        argv: &argv,
        stdin: req.stdin.as_deref(),
        timeout: req.timeout,
        output_cap: OUTPUT_CAP,
    });
    let (status, signal, timed_out, spawn_error) = match finished.ending {
        Ending::Exited(code) => (Some(code), None, false, None),
        Ending::Signaled(sig) => (None, Some(sig), false, None),
        Ending::TimedOut => (None, Some(9), true, None),
        Ending::Failed(why) => (None, None, false, Some(why)),
    };
    ExecResult {
        command: argv.join(" "),
        argv,
        status,
        signal,
        timed_out,
        spawn_error,
        dry_run: false,
        stdin: None,
        stdout: String::from_utf8_lossy(&finished.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&finished.stderr).into_owned(),
        elapsed: finished.elapsed,
    }
}

/// What `--test-plugin --dry-run` answers instead of running the request: a success with
/// no output, marked as not run, so the handler goes on as it would after a real success.
pub fn dry_run(req: &ExecRequest) -> ExecResult {
    let argv = full_argv(req);
    ExecResult {
        command: argv.join(" "),
        argv,
        status: Some(0),
        signal: None,
        timed_out: false,
        spawn_error: None,
        dry_run: true,
        stdin: req
            .stdin
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        stdout: String::new(),
        stderr: String::new(),
        elapsed: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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
            vars.contains(&format!("PATH={}", crate::respond::process::COMMAND_PATH).as_str()),
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
