//! `KILL_ROUTE` and `KILL_RUN_CMD`: shell commands with macros, run with a timeout.

use std::time::Duration;

use super::command::{expand_macros, run_shell};
use super::{Action, Outcome, Responder, ResponseContext};
use crate::report;

/// A responder that runs one configured shell command per block. The two 1.2 keys differ
/// only in their name and in the success line they log.
pub struct ShellResponder {
    name: &'static str,
    template: String,
    timeout: Duration,
    success_line: fn(String, &str) -> String,
}

impl ShellResponder {
    /// `KILL_ROUTE`: a dropped or unreachable route.
    pub fn route(template: &str, timeout: Duration) -> ShellResponder {
        ShellResponder {
            name: "route",
            template: template.to_string(),
            timeout,
            success_line: report::blocked_via_route,
        }
    }

    /// `KILL_RUN_CMD`: any command (firewall rule, notification…).
    pub fn run_cmd(template: &str, timeout: Duration) -> ShellResponder {
        ShellResponder {
            name: "run_cmd",
            template: template.to_string(),
            timeout,
            success_line: report::external_command_run,
        }
    }
}

impl Responder for ShellResponder {
    fn name(&self) -> String {
        self.name.to_string()
    }

    fn respond(&mut self, ctx: &ResponseContext<'_>) -> Outcome {
        let command = expand_macros(&self.template, ctx);
        let result = run_shell(&command, self.timeout);
        if result.success() {
            log::info!("{}", (self.success_line)(ctx.target_text(), &command));
            Outcome::Done(Action {
                responder: self.name(),
                detail: command,
                undo: Default::default(),
            })
        } else {
            Outcome::Failed(format!("command \"{command}\": {}", result.failure_text()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Mode, ProbeKind};
    use crate::respond::respond_once;

    fn outcome(template: &str) -> Outcome {
        let mut r = ShellResponder::route(template, Duration::from_secs(5));
        respond_once(&mut r, "10.77.1.2", 79, Mode::Atcp, ProbeKind::Syn)
    }

    #[test]
    fn success_records_the_command_run() {
        assert_eq!(
            outcome("true $TARGET$ $PORT$ $MODE$"),
            Outcome::Done(Action {
                responder: "route".into(),
                detail: "true 10.77.1.2 79 atcp".into(),
                undo: Default::default(),
            })
        );
    }

    #[test]
    fn failing_command_is_reported_as_failed_with_status() {
        match outcome("echo no route >&2; exit 7") {
            Outcome::Failed(why) => assert!(why.contains("exit status 7: no route"), "{why}"),
            other => panic!("expected failure, got {other:?}"),
        }
    }
}
