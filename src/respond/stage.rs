//! The response stage: runs on its own thread, after the filters. For each alert it logs the
//! 1.2 detection lines, then — unless the host is already blocked or the config says log
//! only — runs the responder chain, records the block and writes the history line.
//!
//! Slow work (reverse DNS, commands, Lua) happens here so that sensors and filters never
//! wait on it.

use std::sync::Arc;
use std::time::Duration;

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

/// Owns what the response thread needs: the config in force, the blocked set it shares with
/// the filters, and the history file.
pub struct ResponseStage {
    generation: Generation,
    registry: SharedRegistry,
    history: History,
    resolver: Resolver,
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
    /// A stage for the first generation.
    pub fn new(generation: Generation, registry: SharedRegistry, history: History) -> Self {
        ResponseStage {
            generation,
            registry,
            history,
            resolver: Resolver::new(system_lookup, RESOLVE_WAIT),
        }
    }

    /// Follows a reload; the blocked set is kept, and so is the history file unless the
    /// reload names another `HISTORY_FILE` (the daemon opened that one before accepting the
    /// reload, so this open is not expected to fail; if it does, the old file stays).
    pub fn reconfigure(&mut self, generation: Generation) {
        let wanted = &generation.config.history_file;
        if wanted != self.history.path() {
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
        self.generation = generation;
    }

    fn config(&self) -> Arc<Config> {
        Arc::clone(&self.generation.config)
    }

    /// Handles one alert from the filters.
    pub fn handle(&mut self, alert: &Alert) {
        let config = self.config();
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
        let ctx = ResponseContext {
            alert,
            resolved: &resolved,
            config: &config,
        };
        self.generation.notify_alert(&ctx);
        if alert.already_blocked {
            log::info!("{}", report::already_blocked(alert, &resolved));
            return;
        }
        let proto = alert.hit.proto();
        let level = config.block_level(proto);
        if level == BlockLevel::LogOnly {
            log::info!("{}", report::ignoring_response(proto));
            return;
        }
        // Commands and Lua may take seconds: the lines logged so far go out first.
        crate::logging::flush();
        let chain = responder_chain(&config, level, self.generation.lua_responders());
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
        if let Err(e) = registry.confirm(record, &resolved) {
            log::error!(
                "adminalert: ERROR: cannot write blocked file {}: {e}",
                config.blocked_file.display()
            );
        }
        drop(registry);
        let line = history_line(alert.hit.time, &resolved, ip, alert.hit.port, proto);
        if let Err(e) = self.history.append(&line) {
            log::error!(
                "adminalert: ERROR: cannot write history file {}: {e}",
                self.history.path().display()
            );
        }
    }
}
