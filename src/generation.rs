//! A config generation: everything read from files (config, ignore list) that a reload
//! replaces as a whole. Plain data: nothing in it runs. The stages that need running things
//! build them from it (the Lua plugins: [`crate::respond::lua::LuaPlugins::for_generation`],
//! built by the daemon's reloader for the announcer and the block manager). Built off the
//! detection path, then swapped in; if any part fails to build, the old generation stays
//! in force.

use std::path::Path;
use std::sync::Arc;

use crate::config::ignore::IgnoreList;
use crate::config::{Config, ConfigErrors, ConfigWarning};

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
    /// Reads and validates every file a generation is made of. This is the one place that
    /// reads file-derived state (config, ignore list): the daemon calls it off the detection
    /// path at start and on every reload, and swaps the result in only when it (and the
    /// plugins built from it) succeed. Anything that can fail belongs here, as a
    /// [`ConfigErrors`] naming file and line, so that a bad file refuses the reload instead
    /// of half-applying it. It must not touch running state (sockets, the blocked set): a
    /// refused generation is simply dropped. The files it reads are the ones
    /// [`crate::config::watch::WatchSet::for_config`] watches; a new kind of source file
    /// should be added there too.
    pub fn load(number: u64, config_path: &Path) -> Result<Loaded, ConfigErrors> {
        let config = crate::config::load(config_path)?;
        let ignore = IgnoreList::load(&config.ignore_file)?;
        let mut warnings = config.warnings.clone();
        warnings.extend(ignore.warnings().iter().cloned());
        Ok((Generation::from_parts(number, config, ignore), warnings))
    }

    /// A generation made from a config and an ignore list already built (tests, benches,
    /// and a reload that takes one file anew and keeps the other).
    pub fn from_parts(number: u64, config: Config, ignore: IgnoreList) -> Generation {
        Generation {
            number,
            config: Arc::new(config),
            ignore: Arc::new(ignore),
        }
    }
}
