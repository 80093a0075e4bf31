//! `KILL_ROUTE` and `KILL_RUN_CMD`: shell commands with macros, run with a timeout.
//!
//! Each records how its block is undone, decided when the block is made: the `UNKILL_ROUTE` /
//! `UNKILL_RUN_CMD` of the config in force, expanded with the same values, so that a later
//! edit of the config cannot change what an expiry runs.

use std::time::Duration;

use super::command::{expand_macros, run_shell};
use super::{Action, Outcome, Responder, ResponseContext, Undo};
use crate::config::unkill::{NO_UNKILL_RUN_CMD, no_unkill_route_why};
use crate::config::{Config, Template};
use crate::log_lines;

/// What iproute2 answers when the route to add is already there (exit 2): after a crash
/// between the route and the record, or a restart re-applying a block, that is success.
const ALREADY_PRESENT: &str = "File exists";

/// A responder that runs one configured shell command per block. The two 1.2 keys differ
/// in their name, the success line they log and where their undo comes from.
pub struct ShellResponder {
    name: &'static str,
    template: String,
    timeout: Duration,
    success_line: fn(String, &str) -> String,
    /// The undo template in the config, or why there is none.
    undo: fn(&Config) -> Result<&Template, &'static str>,
    /// Whether a failure saying the thing already exists counts as done.
    tolerate_existing: bool,
}

impl ShellResponder {
    /// `KILL_ROUTE`: a dropped or unreachable route, undone by `UNKILL_ROUTE`.
    pub fn route(template: &str, timeout: Duration) -> ShellResponder {
        ShellResponder {
            name: "route",
            template: template.to_string(),
            timeout,
            success_line: log_lines::blocked_via_route,
            undo: |c| {
                c.unkill_route
                    .as_ref()
                    .ok_or_else(|| no_unkill_route_why(c))
            },
            tolerate_existing: true,
        }
    }

    /// `KILL_RUN_CMD`: any command (firewall rule, notification…), undone by
    /// `UNKILL_RUN_CMD`.
    pub fn run_cmd(template: &str, timeout: Duration) -> ShellResponder {
        ShellResponder {
            name: "run_cmd",
            template: template.to_string(),
            timeout,
            success_line: log_lines::external_command_run,
            undo: |c| c.unkill_run_cmd.as_ref().ok_or(NO_UNKILL_RUN_CMD),
            tolerate_existing: false,
        }
    }

    /// How this block is undone, with the macros of this block.
    fn undo(&self, ctx: &ResponseContext<'_>) -> Undo {
        match (self.undo)(ctx.config) {
            Ok(t) => Undo::Command {
                command: expand_macros(&t.text, ctx),
            },
            Err(why) => Undo::Impossible { why: why.into() },
        }
    }
}

impl ShellResponder {
    /// The block is in force through `command` (or what stands for it: the in-process
    /// route of [`super::route`]), found `already_present` or not: the 1.2 success line, and
    /// the action recorded with its undo.
    pub(super) fn done(
        &self,
        ctx: &ResponseContext<'_>,
        command: String,
        already_present: bool,
    ) -> Outcome {
        log::info!("{}", (self.success_line)(ctx.target_text(), &command));
        let detail = if already_present {
            format!("{command} (already present)")
        } else {
            command
        };
        Outcome::Done(Action {
            responder: self.name(),
            detail,
            undo: self.undo(ctx),
        })
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
            self.done(ctx, command, false)
        } else if self.tolerate_existing
            && matches!(result.status, super::command::CommandStatus::Exited(_))
            && result.output.contains(ALREADY_PRESENT)
        {
            self.done(ctx, command, true)
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
                undo: impossible(
                    "no UNKILL_ROUTE and KILL_ROUTE is not a form whose undo is known"
                ),
            })
        );
    }

    /// The undo `r` records for a probe from 10.77.1.2 to port 79 under the config `text`.
    fn undo_under(r: &mut ShellResponder, text: &str) -> Undo {
        let raw = crate::config::parse(std::path::Path::new("p.conf"), text).unwrap();
        let config = crate::config::build(&raw).unwrap();
        let alert = crate::event::Candidate {
            hit: crate::event::Hit::now(
                "10.77.1.2".parse().unwrap(),
                79,
                Mode::Atcp,
                ProbeKind::Syn,
            ),
            count: 1,
            already_blocked: false,
            actionable: true,
        };
        match r.respond(&ResponseContext::for_alert(&alert, "10.77.1.2", &config)) {
            Outcome::Done(a) => a.undo,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn command(text: &str) -> Undo {
        Undo::Command {
            command: text.into(),
        }
    }

    fn impossible(why: &str) -> Undo {
        Undo::Impossible { why: why.into() }
    }

    #[test]
    fn route_records_the_unkill_route_expanded_for_this_block() {
        let mut r = ShellResponder::route("true add $TARGET$", Duration::from_secs(5));
        assert_eq!(
            undo_under(&mut r, "UNKILL_ROUTE=\"true del $TARGET$ $PORT$ $MODE$\"\n"),
            command("true del 10.77.1.2 79 atcp")
        );
    }

    #[test]
    fn route_records_the_derived_unkill_route() {
        // The KILL_ROUTE text of the config derives the undo; the responder runs `true`.
        let kill = "KILL_ROUTE=\"ip route add unreachable $TARGET$\"\n";
        let mut r = ShellResponder::route("true $TARGET$", Duration::from_secs(5));
        assert_eq!(
            undo_under(&mut r, kill),
            command("ip route del unreachable 10.77.1.2")
        );
        assert_eq!(
            undo_under(&mut r, &format!("{kill}UNKILL_ROUTE=\"\"\n")),
            impossible("UNKILL_ROUTE is empty")
        );
    }

    #[test]
    fn run_cmd_records_unkill_run_cmd_or_why_not() {
        let mut r = ShellResponder::run_cmd("true $TARGET$", Duration::from_secs(5));
        assert_eq!(undo_under(&mut r, ""), impossible("no UNKILL_RUN_CMD"));
        assert_eq!(
            undo_under(&mut r, "UNKILL_RUN_CMD=\"unpage $TARGET$\"\n"),
            command("unpage 10.77.1.2")
        );
    }

    #[test]
    fn route_already_present_counts_as_done() {
        let o = outcome("echo 'RTNETLINK answers: File exists' >&2; exit 2");
        match o {
            Outcome::Done(a) => assert_eq!(
                a.detail,
                "echo 'RTNETLINK answers: File exists' >&2; exit 2 (already present)"
            ),
            other => panic!("expected Done, got {other:?}"),
        }
        // Only the route responder: a command saying so still failed.
        let mut r = ShellResponder::run_cmd("echo File exists; exit 1", Duration::from_secs(5));
        let o = respond_once(&mut r, "10.77.1.2", 79, Mode::Atcp, ProbeKind::Syn);
        assert!(matches!(o, Outcome::Failed(_)), "{o:?}");
    }

    #[test]
    fn failing_command_is_reported_as_failed_with_status() {
        match outcome("echo no route >&2; exit 7") {
            Outcome::Failed(why) => assert!(why.contains("exit status 7: no route"), "{why}"),
            other => panic!("expected failure, got {other:?}"),
        }
    }
}
