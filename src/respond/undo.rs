//! Taking a block back: what the block manager's workers run, action by action (in reverse
//! order of the record), when a block expires or is lifted by hand.
//!
//! Every undo is idempotent: a route, rule, line or set element that is already gone counts
//! as undone, so an undo interrupted by a crash can simply be run again after the restart.

use std::path::Path;
use std::time::Duration;

use super::command::{CommandStatus, run_shell};
use super::hosts_deny::{Removal, remove_line, remove_lines};
use super::lua::LuaPlugins;
use super::nftables::NftHandle;
use super::{Action, ResponseContext, Undo, route};

pub use super::UnblockReason;

/// How undoing one action ended; the texts are for the manager's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UndoOutcome {
    /// Undone, or found already gone; the text says what was done.
    Done(String),
    /// Tried and failed (exit status, timeout, I/O error, plugin gone): the action is still
    /// in force and the manager may retry.
    Failed(String),
    /// The action was recorded as impossible to undo; the text says why.
    Impossible(String),
}

/// What the tools print when the thing to remove is not there (any more): `ip route del`
/// (`No such process`), `nft delete element` (`No such file or directory`), `ip` on a
/// vanished interface (`Cannot find device`), `iptables -D` (`Bad rule (does a matching rule
/// exist in that chain?)`, or no such chain at all).
const ALREADY_GONE: &[&str] = &[
    "No such process",
    "No such file or directory",
    "Cannot find device",
    "does a matching rule exist",
    "No chain/target/match by that name",
];

/// Undoes one recorded action of the block `ctx` describes.
///
/// - `Undo::Command`: runs the recorded command line through `/bin/sh` with `timeout`
///   (`KILL_CMD_TIMEOUT`); a failure saying the thing is already gone counts as done.
/// - `Undo::RemoveLine`: takes every copy of the line out of the file, atomically; a missing
///   line or file counts as done.
/// - `Undo::Lua`: calls that plugin's `unblock` handlers in `lua` (the plugins of the
///   generation in force) with `ctx` and `reason`, within the plugin's budget.
/// - `Undo::Nftables`: deletes the target from its set of the recorded table, through
///   `nft` (the shared backend, or a socket of its own for another table); a host, set or
///   table already gone counts as done.
/// - `Undo::Impossible`: nothing is run.
///
/// `ctx` is read for Lua plugins and for the nftables target; commands and lines were fixed
/// when the block was made.
pub fn undo_action(
    action: &Action,
    ctx: &ResponseContext<'_>,
    reason: UnblockReason,
    lua: &LuaPlugins,
    nft: &NftHandle,
    timeout: Duration,
) -> UndoOutcome {
    match &action.undo {
        Undo::Impossible { why } => UndoOutcome::Impossible(why.clone()),
        Undo::Command { command } => undo_command(command, timeout),
        Undo::RemoveLine { file, line } => removal_outcome(file, line, remove_line(file, line)),
        Undo::Lua { plugin } => match lua.unblock(plugin, ctx, reason) {
            Ok(detail) => UndoOutcome::Done(detail),
            Err(why) => UndoOutcome::Failed(why),
        },
        Undo::Nftables { table } => match nft.delete_target(table, ctx.target) {
            Ok(set) => UndoOutcome::Done(format!(
                "{} is out of set inet {table} {set}",
                ctx.target_text()
            )),
            Err(e) => UndoOutcome::Failed(e.to_string()),
        },
    }
}

/// Runs an undo command; "not there" answers are success. A route deletion of a form
/// [`route`] knows is done over rtnetlink instead, with the same outcome.
fn undo_command(command: &str, timeout: Duration) -> UndoOutcome {
    if let Some(request) = route::parse_undo(command) {
        let answer = route::batch(route::Op::Del, &[request]).pop();
        return route_deleted(command, answer);
    }
    let result = run_shell(command, timeout);
    if result.success() {
        return UndoOutcome::Done(format!("command \"{command}\""));
    }
    // 126/127: the shell could not run the program at all, whatever else was printed.
    let gone = matches!(result.status, CommandStatus::Exited(code) if code != 126 && code != 127)
        && ALREADY_GONE.iter().any(|m| result.output.contains(m));
    if gone {
        UndoOutcome::Done(format!(
            "command \"{command}\": already gone ({})",
            result.failure_text()
        ))
    } else {
        UndoOutcome::Failed(format!("command \"{command}\": {}", result.failure_text()))
    }
}

/// What taking `line` out of `file` came to.
fn removal_outcome(file: &Path, line: &str, removal: std::io::Result<Removal>) -> UndoOutcome {
    match removal {
        Ok(Removal::Removed(n)) => UndoOutcome::Done(format!(
            "removed \"{line}\" from {}{}",
            file.display(),
            if n > 1 {
                format!(" ({n} copies)")
            } else {
                String::new()
            }
        )),
        Ok(Removal::NotPresent) => UndoOutcome::Done(format!(
            "\"{line}\" was not in {} (already gone)",
            file.display()
        )),
        Ok(Removal::NoFile) => {
            UndoOutcome::Done(format!("{} does not exist (already gone)", file.display()))
        }
        Err(e) => UndoOutcome::Failed(format!(
            "cannot remove \"{line}\" from {}: {e}",
            file.display()
        )),
    }
}

/// Where an action is (block, action) and the text it is about (a line, a command).
type At<'a> = (usize, usize, &'a str);

/// The actions of many blocks that are undone better together: hosts.deny lines (one
/// rewrite per file, [`remove_lines`]) and routes of a form [`route`] knows (one netlink
/// exchange). Returns, per block and per action, the outcome of those it did, `None` for
/// the others (the caller runs them with [`undo_action`]). Each outcome is what
/// [`undo_action`] would have said.
pub fn undo_batched<'a>(
    blocks: impl Iterator<Item = &'a Vec<Action>>,
) -> Vec<Vec<Option<UndoOutcome>>> {
    let mut done: Vec<Vec<Option<UndoOutcome>>> = Vec::new();
    // (block, action) of each line, by file; and of each route.
    let mut lines: Vec<(&'a Path, Vec<At<'a>>)> = Vec::new();
    let mut routes: Vec<(usize, usize, &'a str, (route::Form, ipnet::IpNet))> = Vec::new();
    for (b, actions) in blocks.enumerate() {
        done.push(actions.iter().map(|_| None).collect());
        for (a, action) in actions.iter().enumerate() {
            match &action.undo {
                Undo::RemoveLine { file, line } => {
                    match lines.iter_mut().find(|(f, _)| *f == file.as_path()) {
                        Some((_, of_file)) => of_file.push((b, a, line)),
                        None => lines.push((file, vec![(b, a, line)])),
                    }
                }
                Undo::Command { command } => {
                    if let Some(request) = route::parse_undo(command) {
                        routes.push((b, a, command, request));
                    }
                }
                _ => {}
            }
        }
    }
    for (file, of_file) in lines {
        let texts: Vec<&str> = of_file.iter().map(|(_, _, l)| *l).collect();
        match remove_lines(file, &texts) {
            Ok(removals) => {
                for ((b, a, line), removal) in of_file.into_iter().zip(removals) {
                    done[b][a] = Some(removal_outcome(file, line, Ok(removal)));
                }
            }
            Err(e) => {
                for (b, a, line) in of_file {
                    let e = std::io::Error::new(e.kind(), e.to_string());
                    done[b][a] = Some(removal_outcome(file, line, Err(e)));
                }
            }
        }
    }
    let requests: Vec<(route::Form, ipnet::IpNet)> = routes.iter().map(|r| r.3).collect();
    let answers = route::batch(route::Op::Del, &requests);
    for ((b, a, command, _), answer) in routes.into_iter().zip(answers) {
        done[b][a] = Some(route_deleted(command, Some(answer)));
    }
    done
}

/// The outcome of an undo command done over rtnetlink: the kernel's answer read as the
/// command's would be (`ESRCH`, "No such process": already gone).
pub(super) fn route_deleted(command: &str, answer: Option<std::io::Result<()>>) -> UndoOutcome {
    match answer {
        Some(Ok(())) => UndoOutcome::Done(format!("command \"{command}\" (over rtnetlink)")),
        Some(Err(e)) if e.raw_os_error() == Some(libc::ESRCH) => UndoOutcome::Done(format!(
            "command \"{command}\" (over rtnetlink): already gone ({e})"
        )),
        Some(Err(e)) => UndoOutcome::Failed(format!("command \"{command}\" (over rtnetlink): {e}")),
        None => UndoOutcome::Failed(format!("command \"{command}\" (over rtnetlink): no answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Candidate, Hit, Mode, ProbeKind};

    fn undo(undo: Undo) -> UndoOutcome {
        undo_within(undo, Duration::from_secs(5))
    }

    fn undo_within(undo: Undo, timeout: Duration) -> UndoOutcome {
        let config = crate::config::build::defaults(std::path::Path::new("p.conf"));
        let alert = Candidate {
            hit: Hit::now(
                "10.77.1.2".parse().unwrap(),
                79,
                Mode::Tcp,
                ProbeKind::Connect,
            ),
            count: 1,
            already_blocked: false,
            actionable: true,
        };
        let ctx = ResponseContext::for_alert(&alert, "10.77.1.2", &config);
        let action = Action {
            responder: "test".into(),
            detail: String::new(),
            undo,
        };
        undo_action(
            &action,
            &ctx,
            UnblockReason::Expired,
            &LuaPlugins::none(),
            &NftHandle::closed(),
            timeout,
        )
    }

    fn command(text: &str) -> UndoOutcome {
        undo(Undo::Command {
            command: text.into(),
        })
    }

    #[test]
    fn command_success_is_done() {
        assert_eq!(
            command("true"),
            UndoOutcome::Done("command \"true\"".into())
        );
    }

    #[test]
    fn command_saying_it_is_already_gone_is_done() {
        for said in [
            "RTNETLINK answers: No such process",
            "Error: Could not process rule: No such file or directory",
            "Cannot find device \"eth9\"",
            "iptables: Bad rule (does a matching rule exist in that chain?).",
            "iptables: No chain/target/match by that name.",
        ] {
            match command(&format!("echo '{said}' >&2; exit 2")) {
                UndoOutcome::Done(t) => assert!(t.contains("already gone"), "{t}"),
                other => panic!("{said}: {other:?}"),
            }
        }
    }

    #[test]
    fn command_failing_otherwise_is_failed_with_its_status() {
        match command("echo 'Operation not permitted' >&2; exit 2") {
            UndoOutcome::Failed(t) => {
                assert!(t.ends_with("exit status 2: Operation not permitted"), "{t}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn command_that_could_not_run_is_failed_even_if_it_printed_gone() {
        let o = command("echo 'No such file or directory' >&2; exit 127");
        assert!(matches!(o, UndoOutcome::Failed(_)), "{o:?}");
        let o = command("/nonexistent/ip route del unreachable 10.77.1.2");
        assert!(
            matches!(o, UndoOutcome::Failed(ref t) if t.contains("exit status 127")),
            "{o:?}"
        );
    }

    #[test]
    fn command_timing_out_is_failed_even_if_it_printed_gone() {
        let o = undo_within(
            Undo::Command {
                command: "echo 'No such process'; sleep 10".into(),
            },
            Duration::from_millis(200),
        );
        assert!(
            matches!(o, UndoOutcome::Failed(ref t) if t.contains("timed out")),
            "{o:?}"
        );
    }

    #[test]
    fn remove_line_is_done_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        std::fs::write(&file, "sshd: 10.0.0.1\nALL: 10.77.1.2 : DENY\n").unwrap();
        let remove = || {
            undo(Undo::RemoveLine {
                file: file.clone(),
                line: "ALL: 10.77.1.2 : DENY".into(),
            })
        };
        assert_eq!(
            remove(),
            UndoOutcome::Done(format!(
                "removed \"ALL: 10.77.1.2 : DENY\" from {}",
                file.display()
            ))
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "sshd: 10.0.0.1\n");
        assert!(matches!(remove(), UndoOutcome::Done(t) if t.ends_with("(already gone)")));
        std::fs::remove_file(&file).unwrap();
        assert!(
            matches!(remove(), UndoOutcome::Done(t) if t.ends_with("does not exist (already gone)"))
        );
    }

    #[test]
    fn remove_line_in_an_unreadable_place_is_failed() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_file = dir.path().join("dir");
        std::fs::create_dir(&not_a_file).unwrap();
        let o = undo(Undo::RemoveLine {
            file: not_a_file,
            line: "ALL: x".into(),
        });
        assert!(
            matches!(o, UndoOutcome::Failed(ref t) if t.starts_with("cannot remove")),
            "{o:?}"
        );
    }

    #[test]
    fn impossible_is_reported_with_its_reason() {
        assert_eq!(
            undo(Undo::Impossible {
                why: "no UNKILL_RUN_CMD".into()
            }),
            UndoOutcome::Impossible("no UNKILL_RUN_CMD".into())
        );
    }

    #[test]
    fn lua_undo_of_a_plugin_no_longer_loaded_fails_clearly() {
        match undo(Undo::Lua {
            plugin: "nftables".into(),
        }) {
            UndoOutcome::Failed(t) => assert_eq!(
                t,
                "lua:nftables: the plugin is not loaded (no longer in LUA_RESPONDERS?), \
                 so its unblock handler cannot run"
            ),
            other => panic!("{other:?}"),
        }
    }
}
