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
        Generation::with_plugins(number, config, ignore, policy)
    }

    /// The last step of a load: the config's Lua plugins, then the generation.
    fn with_plugins(
        number: u64,
        config: Config,
        ignore: IgnoreList,
        policy: PluginPolicy,
    ) -> Result<Loaded, ConfigErrors> {
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

/// What a reload built: the next generation, its warnings, and the files refused on the way
/// (their previous content stays in force while the others apply).
#[derive(Debug)]
pub struct Reloaded {
    /// The generation to swap in.
    pub generation: Generation,
    /// Warnings of the files that applied.
    pub warnings: Vec<ConfigWarning>,
    /// Errors of the files refused; empty when every file applied.
    pub refused: Vec<ConfigError>,
    /// The files whose new content applied despite `refused` (for the log).
    pub applied: Vec<PathBuf>,
}

impl Reloaded {
    fn refusing(mut self, errors: Vec<ConfigError>) -> Reloaded {
        self.refused = errors;
        self
    }
}

impl Generation {
    /// A reload that takes each file on its own merits. portsentry.conf (with its plugins)
    /// and the ignore file are judged apart: a valid ignore edit applies on top of the last
    /// good config while the config stays refused (the ignore list is the admin's emergency
    /// brake), and a valid config applies with the last good ignore list while the ignore
    /// file stays refused (when it still names the same file). `Err` when nothing new can
    /// apply: every error found, and the generation in force stays.
    pub fn reload_from(
        previous: &Generation,
        number: u64,
        config_path: &Path,
    ) -> Result<Reloaded, ConfigErrors> {
        let config = crate::config::load(config_path);
        let ignore_file = match &config {
            Ok(c) => c.ignore_file.clone(),
            Err(_) => previous.config.ignore_file.clone(),
        };
        let ignore = IgnoreList::load(&ignore_file);
        let refuse = |mut first: ConfigErrors, then: ConfigErrors| {
            first.0.extend(then.0);
            first
        };
        match (config, ignore) {
            (Ok(config), Ok(ignore)) => {
                match Generation::with_plugins(
                    number,
                    config,
                    ignore.clone(),
                    PluginPolicy::RefuseBroken,
                ) {
                    Ok((generation, warnings)) => Ok(Reloaded {
                        generation,
                        warnings,
                        refused: Vec::new(),
                        applied: Vec::new(),
                    }),
                    // A plugin that does not load refuses the config side; the ignore file
                    // is judged alone.
                    Err(plugin_errors) => {
                        Generation::ignore_alone(previous, number, &ignore_file, ignore)
                            .map(|r| r.refusing(plugin_errors.0.clone()))
                            .ok_or(plugin_errors)
                    }
                }
            }
            // A new config (same ignore file) applies with the last good ignore list; an
            // unchanged one has nothing new to apply.
            (Ok(config), Err(ignore_errors))
                if config.ignore_file == previous.config.ignore_file
                    && config != *previous.config =>
            {
                let applied = vec![config.path.clone()];
                let kept = IgnoreList::clone(&previous.ignore);
                let (generation, warnings) =
                    Generation::with_plugins(number, config, kept, PluginPolicy::RefuseBroken)
                        .map_err(|plugin_errors| refuse(ignore_errors.clone(), plugin_errors))?;
                Ok(Reloaded {
                    generation,
                    warnings,
                    refused: ignore_errors.0,
                    applied,
                })
            }
            (Ok(_), Err(ignore_errors)) => Err(ignore_errors),
            (Err(config_errors), Ok(ignore)) => {
                Generation::ignore_alone(previous, number, &ignore_file, ignore)
                    .map(|r| r.refusing(config_errors.0.clone()))
                    .ok_or(config_errors)
            }
            (Err(config_errors), Err(ignore_errors)) => Err(refuse(config_errors, ignore_errors)),
        }
    }

    /// The previous generation with a new ignore list, when the list is new and read from
    /// the file the previous generation names.
    fn ignore_alone(
        previous: &Generation,
        number: u64,
        file: &Path,
        ignore: IgnoreList,
    ) -> Option<Reloaded> {
        if file != previous.config.ignore_file || ignore == *previous.ignore {
            return None;
        }
        Some(Reloaded {
            warnings: ignore.warnings().to_vec(),
            applied: vec![file.to_path_buf()],
            generation: Generation {
                number,
                config: Arc::clone(&previous.config),
                ignore: Arc::new(ignore),
                lua: previous.lua.clone(),
            },
            refused: Vec::new(),
        })
    }

    /// `--check-config`: every file checked, every error and warning at once. The config's
    /// errors do not hide the ignore file's (the file the config names when its text says,
    /// else the default) or the plugins'.
    pub fn check(config_path: &Path) -> Checked {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let config = crate::config::load(config_path)
            .map_err(|e| errors.extend(e.0))
            .ok();
        let ignore_file = match &config {
            Some(c) => c.ignore_file.clone(),
            None => crate::config::preflight::key_value(config_path, "IGNORE_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::config::build::defaults(config_path).ignore_file),
        };
        match IgnoreList::load(&ignore_file) {
            Ok(list) => warnings.extend(list.warnings().iter().cloned()),
            Err(e) => errors.extend(e.0),
        }
        let Some(config) = config else {
            return Checked {
                config: None,
                lua: None,
                errors,
                warnings,
            };
        };
        warnings.extend(config.warnings.iter().cloned());
        let as_error = |e: &LuaError| {
            let (file, line) = lua_error_location(e, &config);
            ConfigError {
                file,
                line,
                message: e.to_string(),
            }
        };
        let lua = match LuaPlugins::load_lenient(&config) {
            Ok((lua, plugin_errors)) => {
                errors.extend(plugin_errors.iter().map(as_error));
                Some(lua)
            }
            Err(e) => {
                errors.push(as_error(&e));
                None
            }
        };
        Checked {
            config: Some(config),
            lua,
            errors,
            warnings,
        }
    }
}

/// What [`Generation::check`] found.
pub struct Checked {
    /// The config, when it built (for the checks that need it).
    pub config: Option<Config>,
    /// The plugins that loaded, when the config built.
    pub lua: Option<LuaPlugins>,
    /// Every error of every file.
    pub errors: Vec<ConfigError>,
    /// Every warning.
    pub warnings: Vec<ConfigWarning>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// A config directory: portsentry.conf naming portsentry.ignore beside it.
    struct Files(tempfile::TempDir);

    impl Files {
        fn new() -> Files {
            let f = Files(tempfile::tempdir().unwrap());
            f.config("TCP_PORTS=\"1\"\n");
            f.ignore("10.0.0.1\n");
            f
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.path().join(name)
        }
        fn config(&self, extra: &str) {
            std::fs::write(
                self.path("portsentry.conf"),
                format!(
                    "{extra}IGNORE_FILE=\"{}\"\nADVANCED_PORTS_TCP=\"1024\"\n\
                     ADVANCED_PORTS_UDP=\"1024\"\n",
                    self.path("portsentry.ignore").display()
                ),
            )
            .unwrap();
        }
        fn ignore(&self, text: &str) {
            std::fs::write(self.path("portsentry.ignore"), text).unwrap();
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_valid_ignore_edit_applies_while_the_config_stays_refused() {
        let f = Files::new();
        let conf = f.path("portsentry.conf");
        let (first, _) = Generation::load(1, &conf).unwrap();
        f.config("TCP_PORTS=\"1,x\"\n");
        // Only the config changed, and it is broken: nothing applies.
        let errs = Generation::reload_from(&first, 2, &conf).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].file, conf);
        // Then a valid ignore edit: it applies on top of the last good config.
        f.ignore("10.0.0.1\n10.0.0.9\n");
        let r = Generation::reload_from(&first, 2, &conf).unwrap();
        assert!(r.generation.ignore.contains(ip("10.0.0.9")));
        assert!(Arc::ptr_eq(&r.generation.config, &first.config));
        assert_eq!(r.generation.number, 2);
        assert_eq!(r.refused.len(), 1);
        assert_eq!(r.refused[0].file, conf);
        assert_eq!(r.applied, vec![f.path("portsentry.ignore")]);
    }

    #[test]
    fn a_valid_ignore_edit_applies_while_a_plugin_no_longer_loads() {
        let f = Files::new();
        let plugins = f.path("plugins");
        std::fs::create_dir(&plugins).unwrap();
        let plugin = plugins.join("p.lua");
        std::fs::write(&plugin, "portsentry.on('block', function(ev) end)\n").unwrap();
        f.config(&format!(
            "TCP_PORTS=\"1\"\nPLUGIN_DIR=\"{}\"\nLUA_PATH_DIR=\"{}/lua\"\n\
             LUA_RESPONDERS=\"p\"\n",
            plugins.display(),
            env!("CARGO_MANIFEST_DIR")
        ));
        let conf = f.path("portsentry.conf");
        let (first, _) = Generation::load(1, &conf).unwrap();
        std::fs::write(&plugin, "portsentry.on('block', function(\n").unwrap();
        assert!(Generation::reload_from(&first, 2, &conf).is_err());
        f.ignore("10.0.0.1\n10.0.0.9\n");
        let r = Generation::reload_from(&first, 2, &conf).unwrap();
        assert!(r.generation.ignore.contains(ip("10.0.0.9")));
        assert!(Arc::ptr_eq(&r.generation.config, &first.config));
        assert_eq!(r.refused[0].file, plugin);
        assert_eq!(r.applied, vec![f.path("portsentry.ignore")]);
    }

    #[test]
    fn a_valid_config_edit_applies_while_the_ignore_file_stays_refused() {
        let f = Files::new();
        let conf = f.path("portsentry.conf");
        let (first, _) = Generation::load(1, &conf).unwrap();
        f.ignore("10.0.0.1\nnot-an-address\n");
        f.config("TCP_PORTS=\"2\"\n");
        let r = Generation::reload_from(&first, 2, &conf).unwrap();
        assert_eq!(r.generation.config.tcp_ports, vec![2]);
        assert!(r.generation.ignore.contains(ip("10.0.0.1")));
        assert_eq!(r.refused[0].file, f.path("portsentry.ignore"));
        assert_eq!(r.refused[0].line, 2);
        assert_eq!(r.applied, vec![conf.clone()]);
        // The ignore file still broken and the config unchanged from the one in force:
        // nothing new, the reload is refused.
        let second = r.generation;
        let errs = Generation::reload_from(&second, 3, &conf).unwrap_err().0;
        assert_eq!(errs[0].file, f.path("portsentry.ignore"));
        // Both valid: everything applies, nothing refused.
        f.ignore("10.0.0.2\n");
        let r = Generation::reload_from(&first, 3, &conf).unwrap();
        assert!(r.refused.is_empty());
        assert!(r.generation.ignore.contains(ip("10.0.0.2")));
    }

    #[test]
    fn a_plugin_source_that_is_a_fifo_is_refused_at_once() {
        let f = Files::new();
        let plugins = f.path("plugins");
        std::fs::create_dir(&plugins).unwrap();
        nix::unistd::mkfifo(&plugins.join("p.lua"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        f.config(&format!(
            "TCP_PORTS=\"1\"\nPLUGIN_DIR=\"{}\"\nLUA_PATH_DIR=\"{}/lua\"\n\
             LUA_RESPONDERS=\"p\"\n",
            plugins.display(),
            env!("CARGO_MANIFEST_DIR")
        ));
        let conf = f.path("portsentry.conf");
        let c = crate::config::read::tests::within_5s(move || Generation::check(&conf).errors);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].to_string().contains("p.lua"), "{}", c[0]);
        assert!(c[0].to_string().contains("not a regular file"), "{}", c[0]);
    }

    #[test]
    fn check_reports_config_and_ignore_errors_together() {
        let f = Files::new();
        f.config("TCP_PORTS=\"1,x\"\n");
        f.ignore("bogus\n");
        let c = Generation::check(&f.path("portsentry.conf"));
        let files: Vec<&Path> = c.errors.iter().map(|e| e.file.as_path()).collect();
        assert_eq!(
            files,
            vec![
                f.path("portsentry.conf").as_path(),
                f.path("portsentry.ignore").as_path()
            ]
        );
        assert!(c.config.is_none());
        // Positive control: valid files, no error.
        f.config("TCP_PORTS=\"1\"\n");
        f.ignore("10.0.0.1\n");
        let c = Generation::check(&f.path("portsentry.conf"));
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert!(c.config.is_some());
    }
}
