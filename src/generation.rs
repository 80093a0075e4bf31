//! A config generation: everything built from files (config, ignore list, Lua plugins) that a
//! reload replaces as a whole. Built off the detection path, then swapped in; if any part
//! fails to build, the old generation stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, ConfigError, ConfigErrors, ConfigWarning};
use crate::filter::ignore::IgnoreList;
use crate::respond::lua::{LuaError, LuaPlugins};
use crate::respond::{Responder, ResponseContext};

/// One consistent set of file-derived settings; the number goes up with every reload.
#[derive(Debug, Clone)]
pub struct Generation {
    /// 1 for the config read at start, +1 for every successful reload.
    pub number: u64,
    /// The typed portsentry.conf.
    pub config: Arc<Config>,
    /// The parsed ignore file(s).
    pub ignore: Arc<IgnoreList>,
    /// The Lua plugins of `LUA_RESPONDERS`, each on its own thread; dropping the last
    /// generation that holds them lets them finish their queue and stop.
    pub lua: LuaPlugins,
}

/// What building a generation found: the generation, plus warnings to log.
pub type Loaded = (Generation, Vec<ConfigWarning>);

/// How a plugin that fails to load is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginPolicy {
    /// At start: log it and run without it (the other responders keep working).
    SkipBroken,
    /// On reload: refuse the whole generation, so the previous plugin code keeps running.
    RefuseBroken,
}

fn lua_error_location(e: &LuaError, config: &Config) -> (PathBuf, usize) {
    match e {
        LuaError::Plugin { file, line, .. } => (file.clone(), line.unwrap_or(0)),
        LuaError::Setting { .. } => (config.path.clone(), 0),
    }
}

impl Generation {
    /// Reads and validates every file a generation is made of; a broken plugin refuses the
    /// generation (the reload rule). This is the one place that builds file-derived state
    /// (config, ignore list, Lua plugins): the daemon calls it off the detection path at
    /// start and on every reload, and swaps the result in only when it returns `Ok`.
    /// Anything that can fail belongs here, as a [`ConfigErrors`] naming file and line, so
    /// that a bad file refuses the reload instead of half-applying it. It must not touch
    /// running state (sockets, the blocked set): a refused generation is simply dropped. The
    /// files it reads are the ones [`crate::config::watch::WatchSet::for_config`] watches; a
    /// new kind of source file should be added there too.
    pub fn load(number: u64, config_path: &Path) -> Result<Loaded, ConfigErrors> {
        Generation::load_with(number, config_path, PluginPolicy::RefuseBroken)
    }

    /// As [`Generation::load`], choosing what a plugin that fails to load does.
    pub fn load_with(
        number: u64,
        config_path: &Path,
        policy: PluginPolicy,
    ) -> Result<Loaded, ConfigErrors> {
        let config = crate::config::load(config_path)?;
        let ignore = IgnoreList::load(&config.ignore_file)?;
        let mut warnings = config.warnings.clone();
        warnings.extend(ignore.warnings().iter().cloned());
        let as_error = |e: &LuaError| {
            let (file, line) = lua_error_location(e, &config);
            ConfigError {
                file,
                line,
                message: e.to_string(),
            }
        };
        let (lua, plugin_errors) =
            LuaPlugins::load_lenient(&config).map_err(|e| ConfigErrors(vec![as_error(&e)]))?;
        if !plugin_errors.is_empty() {
            if policy == PluginPolicy::RefuseBroken {
                return Err(ConfigErrors(plugin_errors.iter().map(as_error).collect()));
            }
            warnings.extend(plugin_errors.iter().map(|e| {
                let (file, line) = lua_error_location(e, &config);
                ConfigWarning {
                    file,
                    line,
                    message: format!("plugin not loaded, running without it: {e}"),
                }
            }));
        }
        Ok((
            Generation {
                number,
                config: Arc::new(config),
                ignore: Arc::new(ignore),
                lua,
            },
            warnings,
        ))
    }

    /// A generation made in code from a config and an ignore list, with the config's Lua
    /// plugins (none unless `LUA_RESPONDERS` names some): for tests and benches.
    pub fn from_parts(number: u64, config: Config, ignore: IgnoreList) -> Generation {
        let lua = LuaPlugins::load_lenient(&config)
            .map(|(lua, _)| lua)
            .unwrap_or_else(|_| LuaPlugins::none());
        Generation {
            number,
            config: Arc::new(config),
            ignore: Arc::new(ignore),
            lua,
        }
    }

    /// Tells the Lua `on("alert")` handlers about an alert; never waits for them.
    pub fn notify_alert(&self, ctx: &ResponseContext<'_>) {
        self.lua.on_alert(ctx);
    }

    /// The Lua responders of this generation, in `LUA_RESPONDERS` order.
    pub fn lua_responders(&self) -> Vec<Box<dyn Responder>> {
        self.lua.responders()
    }
}
