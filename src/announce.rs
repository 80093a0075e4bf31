//! The announcing thread, between the filters and the block manager: writes the 1.2
//! detection lines of every alert (with reverse DNS when asked), tells the Lua `alert`
//! handlers, and asks the block manager to block when the config says to act. It never
//! waits for a responder: a hanging command delays neither detection nor the log lines of
//! the alerts that follow it.

use std::sync::Arc;
use std::time::Duration;

use crate::block::manager::{BlockRequest, BlockRequester};
use crate::config::{BlockLevel, Config};
use crate::event::Candidate;
use crate::event_log::{Event, EventSink};
use crate::generation::Generation;
use crate::log_lines;
use crate::respond::ResponseContext;
use crate::respond::lua::LuaPlugins;
use crate::respond::resolve::{Resolver, system_lookup};

/// Longest wait for a reverse-DNS answer before the IP is logged instead.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);

/// What becomes of an alert that crossed the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Its source is blocked already: 1.2's "already blocked" line, nothing more.
    AlreadyBlocked,
    /// Below the forgeable trigger: logged (within the budget), not acted on.
    NotActionable,
    /// `BLOCK_TCP`/`BLOCK_UDP` says log only.
    LogOnly,
    /// Ask the block manager.
    Block,
}

/// The rule the announcing thread follows, as a function of the alert and the config, so
/// that a replay of a capture decides as the daemon does.
pub fn decide(alert: &Candidate, config: &Config) -> Decision {
    if alert.already_blocked {
        Decision::AlreadyBlocked
    } else if !alert.actionable {
        Decision::NotActionable
    } else if config.block_level(alert.hit.proto()) == BlockLevel::LogOnly {
        Decision::LogOnly
    } else {
        Decision::Block
    }
}

/// What the announcing thread holds: the config in force, the Lua plugins built from it,
/// the resolver, and the way to the block manager.
pub struct Announcer {
    generation: Generation,
    lua: LuaPlugins,
    resolver: Resolver,
    blocks: BlockRequester,
    events: EventSink,
}

impl Announcer {
    /// An announcer for the first generation and the plugins built from it.
    pub fn new(generation: Generation, lua: LuaPlugins, blocks: BlockRequester) -> Announcer {
        Announcer {
            generation,
            lua,
            resolver: Resolver::new(system_lookup, RESOLVE_WAIT),
            blocks,
            events: EventSink::off(),
        }
    }

    /// Also writes an `alert` event of every alert it handles (`EVENT_LOG`); those below the
    /// trigger reach it only within the log budget, as their syslog lines do.
    pub fn with_events(mut self, events: EventSink) -> Announcer {
        self.events = events;
        self
    }

    /// Follows a reload: the new generation and the plugins built from it (the previous
    /// plugins stop once the block manager lets go of them too).
    pub fn reconfigure(&mut self, generation: Generation, lua: LuaPlugins) {
        self.generation = generation;
        self.lua = lua;
    }

    /// Handles one alert from the filters.
    pub fn handle(&mut self, alert: &Candidate) {
        let config = Arc::clone(&self.generation.config);
        let ip = alert.hit.src;
        let resolved = if config.resolve_host {
            self.resolver.name(ip)
        } else {
            ip.to_string()
        };
        log::info!("{}", log_lines::detection(alert, &resolved));
        if self.events.enabled() {
            self.events.send(Event::alert(alert, &resolved));
        }
        if alert.hit.ip_options {
            log::info!("{}", log_lines::ip_options(alert, &resolved));
        }
        // Below the forgeable trigger an alert is logged (within the budget) but neither
        // acted on nor handed to the plugins, whose "alert" event means one that may block.
        if alert.actionable {
            self.lua
                .on_alert(&ResponseContext::for_alert(alert, &resolved, &config));
        }
        match decide(alert, &config) {
            Decision::AlreadyBlocked => {
                log::info!("{}", log_lines::already_blocked(alert, &resolved));
                return;
            }
            Decision::NotActionable => return,
            Decision::LogOnly => {
                log::info!("{}", log_lines::ignoring_response(alert.hit.proto()));
                return;
            }
            Decision::Block => {}
        }
        let request = BlockRequest {
            alert: alert.clone(),
            resolved,
        };
        if !self.blocks.request(request) {
            log::warn!(
                "{}",
                log_lines::block_dropped(&ip.to_string(), "too many hosts waiting to be blocked")
            );
        }
    }
}
