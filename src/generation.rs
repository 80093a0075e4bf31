//! A config generation: everything built from files (config, ignore list, plugins) that a
//! reload replaces as a whole. Built off the detection path, then swapped in; if any part
//! fails to build, the old generation stays in force.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors, ConfigWarning};
use crate::filter::ignore::IgnoreList;
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
}

/// What building a generation found: the generation, plus warnings to log.
pub type Loaded = (Generation, Vec<ConfigWarning>);

impl Generation {
    /// Reads and validates every file a generation is made of.
    pub fn load(number: u64, config_path: &Path) -> Result<Loaded, ConfigErrors> {
        let config = crate::config::load(config_path)?;
        let ignore = IgnoreList::load(&config.ignore_file)?;
        let mut warnings = config.warnings.clone();
        warnings.extend(ignore.warnings().iter().cloned());
        Ok((
            Generation {
                number,
                config: Arc::new(config),
                ignore: Arc::new(ignore),
            },
            warnings,
        ))
    }

    /// Tells the alert observers (Lua `on("alert")` handlers) about an alert.
    pub fn notify_alert(&self, _ctx: &ResponseContext<'_>) {}

    /// The Lua responders of this generation, in `LUA_RESPONDERS` order.
    pub fn lua_responders(&self) -> Vec<Box<dyn Responder>> {
        Vec::new()
    }
}
