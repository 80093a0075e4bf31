//! The response stage, after the filters, on two threads of its own:
//!
//! - the *report* thread logs the 1.2 detection lines of every alert (with reverse DNS when
//!   asked), hands it to the Lua `alert` handlers and decides whether a block is needed;
//! - the *block* thread runs the responder chain for the hosts to block, records the block
//!   and writes the history line.
//!
//! So a slow or hanging command delays neither the sensors and filters nor the log lines of
//! the alerts that follow it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::hosts_deny::HostsDenyResponder;
use super::resolve::{Resolver, system_lookup};
use super::shell::ShellResponder;
use super::{Outcome, Responder, ResponseContext};
use crate::config::{BlockLevel, Config};
use crate::event::Alert;
use crate::filter::blocked::{self, BlockRecord, SharedRegistry};
use crate::generation::Generation;
use crate::history::{History, history_line};
use crate::report;

/// Owns what the report thread needs: the config in force, the blocked set it shares with
/// the filters (to give back a host it cannot hand on), and the way to the block thread.
pub struct ResponseStage {
    generation: Generation,
    registry: SharedRegistry,
    resolver: Resolver,
    blocks: Option<Sender<BlockMsg>>,
    block_thread: Option<JoinHandle<()>>,
}

/// Hosts waiting for the block thread at most; beyond that a block is given up (and the host
/// released, so a later probe can try again) rather than holding the report thread.
const BLOCK_QUEUE: usize = 4096;

/// What the block thread receives, in order.
enum BlockMsg {
    /// A host to block.
    Block(BlockJob),
    /// A reload: follow its `HISTORY_FILE` from the next block on.
    Follow(Generation),
}

/// One host to block, with the generation in force when it was decided.
struct BlockJob {
    alert: Alert,
    resolved: String,
    generation: Generation,
}

/// The block thread's state: the blocked set and the history file.
struct Blocker {
    registry: SharedRegistry,
    history: History,
}

/// The responders for one block level, in 1.2's order: hosts.deny, route, command — the
/// command first with `KILL_RUN_CMD_FIRST` — and the Lua ones before or after the built-ins.
pub fn responder_chain(
    config: &Config,
    level: BlockLevel,
    lua: Vec<Box<dyn Responder>>,
) -> Vec<Box<dyn Responder>> {
    let timeout = config.kill_cmd_timeout;
    let run_cmd = config
        .kill_run_cmd
        .as_ref()
        .map(|t| Box::new(ShellResponder::run_cmd(&t.text, timeout)) as Box<dyn Responder>);
    let mut builtins: Vec<Box<dyn Responder>> = Vec::new();
    match level {
        BlockLevel::LogOnly => return Vec::new(),
        BlockLevel::RunCmdOnly => builtins.extend(run_cmd),
        BlockLevel::All => {
            let hosts_deny = config.kill_hosts_deny.as_ref().map(|t| {
                Box::new(HostsDenyResponder::new(
                    &t.text,
                    config.hosts_deny_file.clone(),
                )) as Box<dyn Responder>
            });
            let route = config
                .kill_route
                .as_ref()
                .map(|t| Box::new(ShellResponder::route(&t.text, timeout)) as Box<dyn Responder>);
            if config.kill_run_cmd_first {
                builtins.extend(run_cmd);
                builtins.extend(hosts_deny);
                builtins.extend(route);
            } else {
                builtins.extend(hosts_deny);
                builtins.extend(route);
                builtins.extend(run_cmd);
            }
        }
    }
    if config.lua_responders_first {
        lua.into_iter().chain(builtins).collect()
    } else {
        builtins.into_iter().chain(lua).collect()
    }
}

/// Longest wait for a reverse-DNS answer before the IP is logged instead.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);

impl ResponseStage {
    /// A stage for the first generation; starts the block thread.
    pub fn new(generation: Generation, registry: SharedRegistry, history: History) -> Self {
        let (tx, rx) = bounded::<BlockMsg>(BLOCK_QUEUE);
        let mut blocker = Blocker {
            registry: Arc::clone(&registry),
            history,
        };
        let block_thread = std::thread::Builder::new()
            .name("block".into())
            .spawn(move || blocker.run(rx));
        let (blocks, block_thread) = match block_thread {
            Ok(handle) => (Some(tx), Some(handle)),
            Err(e) => {
                log::error!("adminalert: ERROR: cannot start the block thread ({e}); not blocking");
                (None, None)
            }
        };
        ResponseStage {
            generation,
            registry,
            resolver: Resolver::new(system_lookup, RESOLVE_WAIT),
            blocks,
            block_thread,
        }
    }

    /// Follows a reload; the blocked set and the history are kept, and the block thread
    /// moves to a changed `HISTORY_FILE` after the blocks it already holds.
    pub fn reconfigure(&mut self, generation: Generation) {
        if let Some(tx) = &self.blocks {
            // Blocking send: rare, and the history file must not be missed.
            let _ = tx.send(BlockMsg::Follow(generation.clone()));
        }
        self.generation = generation;
    }

    /// Handles one alert from the filters.
    pub fn handle(&mut self, alert: &Alert) {
        let config = Arc::clone(&self.generation.config);
        let ip = alert.hit.src;
        let resolved = if config.resolve_host {
            self.resolver.name(ip)
        } else {
            ip.to_string()
        };
        log::info!("{}", report::detection(alert, &resolved));
        if alert.hit.ip_options {
            log::info!("{}", report::ip_options(alert, &resolved));
        }
        let ctx = ResponseContext::for_alert(alert, &resolved, &config);
        self.generation.notify_alert(&ctx);
        if alert.already_blocked {
            log::info!("{}", report::already_blocked(alert, &resolved));
            return;
        }
        let proto = alert.hit.proto();
        if config.block_level(proto) == BlockLevel::LogOnly {
            log::info!("{}", report::ignoring_response(proto));
            return;
        }
        let job = BlockJob {
            alert: alert.clone(),
            resolved,
            generation: self.generation.clone(),
        };
        let sent = match &self.blocks {
            Some(tx) => match tx.try_send(BlockMsg::Block(job)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if !sent {
            blocked::lock(&self.registry).release(ip);
            log::warn!(
                "{}",
                report::responder_failed(ip, "block", "too many hosts waiting to be blocked")
            );
        }
    }
}

impl Drop for ResponseStage {
    /// Lets the block thread finish the hosts it holds, so that a stop never leaves a block
    /// half done or its history line unwritten.
    fn drop(&mut self) {
        self.blocks = None;
        if let Some(handle) = self.block_thread.take() {
            let _ = handle.join();
        }
    }
}

impl Blocker {
    fn run(&mut self, messages: Receiver<BlockMsg>) {
        for msg in messages {
            match msg {
                BlockMsg::Block(job) => self.block(&job),
                BlockMsg::Follow(generation) => self.follow_history_file(&generation.config),
            }
            crate::logging::flush();
        }
    }

    /// A reload may name another `HISTORY_FILE` (the daemon opened it before accepting the
    /// reload, so this is not expected to fail; if it does, the old file stays).
    fn follow_history_file(&mut self, config: &Config) {
        let wanted = &config.history_file;
        if wanted == self.history.path() {
            return;
        }
        match History::open(wanted) {
            Ok(history) => {
                log::info!(
                    "adminalert: history file is now {} (was {})",
                    wanted.display(),
                    self.history.path().display()
                );
                self.history = history;
            }
            Err(e) => log::error!(
                "adminalert: ERROR: cannot open history file {e}; still writing {}",
                self.history.path().display()
            ),
        }
    }

    /// Runs the responder chain for one host; records the block when a responder did it,
    /// gives the host back otherwise.
    fn block(&mut self, job: &BlockJob) {
        let config = &job.generation.config;
        let alert = &job.alert;
        let ip = alert.hit.src;
        let proto = alert.hit.proto();
        let ctx = ResponseContext::for_alert(alert, &job.resolved, config);
        let level = config.block_level(proto);
        let chain = responder_chain(config, level, job.generation.lua_responders());
        let mut actions = Vec::new();
        let mut vetoed = false;
        for mut responder in chain {
            match responder.respond(&ctx) {
                Outcome::Done(action) => {
                    if action.responder.starts_with("lua:") {
                        log::info!(
                            "{}",
                            report::blocked_via_plugin(ip, &action.responder, &action.detail)
                        );
                    }
                    actions.push(action);
                }
                Outcome::Skipped(why) => {
                    log::debug!("{} skipped for {ip}: {why}", responder.name());
                }
                Outcome::Failed(why) => {
                    log::warn!("{}", report::responder_failed(ip, &responder.name(), &why));
                }
                Outcome::Veto(why) => {
                    log::info!("{}", report::vetoed(ip, &responder.name(), &why));
                    vetoed = true;
                    break;
                }
            }
        }
        let mut registry = blocked::lock(&self.registry);
        if actions.is_empty() {
            registry.release(ip);
            if !vetoed {
                log::warn!("{}", report::could_not_block(ip));
            }
            return;
        }
        let record = BlockRecord::from_alert(alert, actions);
        if let Err(e) = registry.confirm(record, &job.resolved) {
            log::error!(
                "adminalert: ERROR: cannot write blocked file {}: {e}",
                config.blocked_file.display()
            );
        }
        drop(registry);
        let line = history_line(alert.hit.time, &job.resolved, ip, alert.hit.port, proto);
        if let Err(e) = self.history.append(&line) {
            log::error!(
                "adminalert: ERROR: cannot write history file {}: {e}",
                self.history.path().display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Template;
    use crate::event::{Hit, Mode, ProbeKind};
    use crate::filter::blocked::BlockRegistry;
    use std::time::Instant;

    #[test]
    fn slow_command_does_not_hold_the_report_thread_and_stop_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::build::defaults(&dir.path().join("p.conf"));
        config.block_tcp = BlockLevel::RunCmdOnly;
        config.kill_run_cmd = Some(Template {
            text: "sleep 1".into(),
            line: 1,
        });
        config.history_file = dir.path().join("history");
        config.blocked_file = dir.path().join("blocked");
        let registry = BlockRegistry::open(&config.blocked_file)
            .unwrap()
            .into_shared();
        let history = History::open(&config.history_file).unwrap();
        let generation = Generation::from_parts(1, config, Default::default());
        let mut stage = ResponseStage::new(generation, Arc::clone(&registry), history);
        let hosts = ["10.77.1.2", "fd77:1::2"];
        let start = Instant::now();
        for host in hosts {
            let ip = host.parse().unwrap();
            assert!(blocked::lock(&registry).reserve(ip), "as the filter does");
            stage.handle(&Alert {
                hit: Hit::now(ip, 79, Mode::Tcp, ProbeKind::Connect),
                count: 1,
                already_blocked: false,
            });
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "the report thread does not wait for commands: {:?}",
            start.elapsed()
        );
        drop(stage);
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "stop waits for both blocks"
        );
        let history = std::fs::read_to_string(dir.path().join("history")).unwrap();
        assert_eq!(history.lines().count(), 2, "{history}");
        for host in hosts {
            assert!(history.contains(&format!("/{host} Port: 79 TCP Blocked")));
            assert!(blocked::lock(&registry).is_blocked(host.parse().unwrap()));
        }
    }
}
