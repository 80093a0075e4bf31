//! A config generation: everything read from files (config, ignore list) that a reload
//! replaces as a whole. Plain data: nothing in it runs. The stages that need running things
//! build them from it (the Lua plugins: [`crate::respond::lua::LuaPlugins::for_generation`],
//! built by the daemon's reloader for the announcer and the block manager). Built off the
//! detection path, then swapped in; if any part fails to build, the old generation stays
//! in force. A reload judges each file on its own merits ([`Generation::reload_from`]): the
//! ignore list is the admin's emergency brake, so a valid edit of it applies even while a
//! bad edit of portsentry.conf is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::ignore::IgnoreList;
use crate::config::{Config, ConfigError, ConfigErrors, ConfigWarning};

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

/// What a stage builds from a generation's config (the Lua plugins), with its warnings; an
/// error refuses the config side of a reload. Generic so that this module stays plain data.
pub type Built<P> = Result<(P, Vec<ConfigWarning>), ConfigErrors>;

impl Generation {
    /// Reads and validates every file a generation is made of. This is the one place that
    /// reads file-derived state (config, ignore list): the daemon calls it off the detection
    /// path at start and on every reload, and swaps the result in only when it (and the
    /// plugins built from it) succeed. Anything that can fail belongs here, as a
    /// [`ConfigErrors`] naming file and line, so that a bad file refuses the reload instead
    /// of half-applying it. It must not touch running state (sockets, the blocked set): a
    /// refused generation is simply dropped. The files it reads are the ones
    /// [`crate::config::watcher::WatchSet::for_config`] watches; a new kind of source file
    /// should be added there too.
    pub fn load(number: u64, config_path: &Path) -> Result<Loaded, ConfigErrors> {
        let config = crate::config::load(config_path)?;
        let ignore = IgnoreList::load(&config.ignore_file)?;
        Ok(Generation::assemble(number, config, ignore))
    }

    /// A generation and the warnings its files carry.
    fn assemble(number: u64, config: Config, ignore: IgnoreList) -> Loaded {
        let mut warnings = config.warnings.clone();
        warnings.extend(ignore.warnings().iter().cloned());
        (Generation::from_parts(number, config, ignore), warnings)
    }

    /// A generation and what `build` makes from its config: the config side of a reload.
    fn assemble_built<P>(
        number: u64,
        config: Config,
        ignore: IgnoreList,
        build: &mut impl FnMut(&Generation) -> Built<P>,
    ) -> Result<(Generation, P, Vec<ConfigWarning>), ConfigErrors> {
        let (generation, mut warnings) = Generation::assemble(number, config, ignore);
        let (built, more) = build(&generation)?;
        warnings.extend(more);
        Ok((generation, built, warnings))
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

/// What a reload built: the next generation, what was built from its config, its warnings,
/// and the files refused on the way (their previous content stays in force while the others
/// apply).
#[derive(Debug)]
pub struct Reloaded<P> {
    /// The generation to swap in.
    pub generation: Generation,
    /// What `build` made from the new config; `None` when the config in force was kept
    /// (only the ignore list is new), so the running plugins stay.
    pub built: Option<P>,
    /// Warnings of the files that applied.
    pub warnings: Vec<ConfigWarning>,
    /// Errors of the files refused; empty when everything applied.
    pub refused: Vec<ConfigError>,
    /// Files that applied while others were refused (empty when nothing was refused).
    pub applied: Vec<PathBuf>,
}

impl<P> Reloaded<P> {
    fn refusing(mut self, errors: Vec<ConfigError>) -> Reloaded<P> {
        self.refused = errors;
        self
    }
}

impl Generation {
    /// Reads the files again for a reload and judges each on its own merits: a valid ignore
    /// edit applies on top of the config in force when portsentry.conf (or a plugin `build`
    /// loads from it) is refused, and a valid config edit applies with the ignore list in
    /// force when the ignore file is refused. `Err` when nothing new can apply.
    pub fn reload_from<P>(
        previous: &Generation,
        number: u64,
        config_path: &Path,
        mut build: impl FnMut(&Generation) -> Built<P>,
    ) -> Result<Reloaded<P>, ConfigErrors> {
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
                match Generation::assemble_built(number, config, ignore.clone(), &mut build) {
                    Ok((generation, built, warnings)) => Ok(Reloaded {
                        generation,
                        built: Some(built),
                        warnings,
                        refused: Vec::new(),
                        applied: Vec::new(),
                    }),
                    // What the config builds (a plugin that does not load) refuses the config
                    // side; the ignore file is judged alone.
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
                let (generation, built, warnings) =
                    Generation::assemble_built(number, config, kept, &mut build)
                        .map_err(|plugin_errors| refuse(ignore_errors.clone(), plugin_errors))?;
                Ok(Reloaded {
                    generation,
                    built: Some(built),
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

    /// The ignore list applied on its own over the config in force, when it is the same
    /// file and its content changed (otherwise there is nothing new to apply).
    fn ignore_alone<P>(
        previous: &Generation,
        number: u64,
        file: &Path,
        ignore: IgnoreList,
    ) -> Option<Reloaded<P>> {
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
            },
            built: None,
            refused: Vec::new(),
        })
    }

    /// `--check-config`: every file's errors and warnings in one run. When the config cannot
    /// be read, the ignore file its text names (or the default) is still checked; when it
    /// can, `build` (the plugins) runs on it as far as it was read (defaults where a value
    /// was refused), even if the ignore file is broken.
    pub fn check<P>(config_path: &Path, build: impl FnOnce(&Generation) -> Built<P>) -> Checked<P> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        // The config as far as it could be read, so that one bad value does not hide what
        // the rest of it (plugins, ports, output files) would make fail.
        let (config, config_errors) = crate::config::build::load_collect(config_path);
        errors.extend(config_errors);
        let ignore_file = match &config {
            Some(c) => c.ignore_file.clone(),
            None => crate::config::preflight::key_value(config_path, "IGNORE_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::config::build::defaults(config_path).ignore_file),
        };
        let ignore = match IgnoreList::load(&ignore_file) {
            Ok(list) => {
                warnings.extend(list.warnings().iter().cloned());
                list
            }
            Err(e) => {
                errors.extend(e.0);
                IgnoreList::default()
            }
        };
        let Some(config) = config else {
            return Checked {
                generation: None,
                built: None,
                errors,
                warnings,
            };
        };
        warnings.extend(config.warnings.iter().cloned());
        let generation = Generation::from_parts(1, config, ignore);
        let built = match build(&generation) {
            Ok((built, more)) => {
                warnings.extend(more);
                Some(built)
            }
            Err(e) => {
                errors.extend(e.0);
                None
            }
        };
        Checked {
            generation: Some(generation),
            built,
            errors,
            warnings,
        }
    }
}

/// What `--check-config` found in every file.
pub struct Checked<P> {
    /// The generation, when portsentry.conf could be read: its values as far as they were
    /// valid (defaults for the refused ones), its ignore list empty when the ignore file did
    /// not load.
    pub generation: Option<Generation>,
    /// What `build` made of it (the plugins), when it succeeded.
    pub built: Option<P>,
    /// Every error of every file.
    pub errors: Vec<ConfigError>,
    /// Every warning of every file.
    pub warnings: Vec<ConfigWarning>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::respond::lua::LuaPlugins;
    use std::net::IpAddr;

    /// The plugins a reload or a check builds, as the daemon builds them.
    fn build_plugins(g: &Generation) -> Built<LuaPlugins> {
        LuaPlugins::for_generation(g)
    }

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
        /// A config whose `LUA_RESPONDERS` names plugin `p` in `plugins/`; the path of
        /// `p.lua`, for the test to fill.
        fn plugin_p(&self) -> PathBuf {
            let plugins = self.path("plugins");
            std::fs::create_dir(&plugins).unwrap();
            self.config(&format!(
                "TCP_PORTS=\"1\"\nPLUGIN_DIR=\"{}\"\nLUA_PATH_DIR=\"{}/lua\"\n\
                 LUA_RESPONDERS=\"p\"\n",
                plugins.display(),
                env!("CARGO_MANIFEST_DIR")
            ));
            plugins.join("p.lua")
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
        let errs = Generation::reload_from(&first, 2, &conf, build_plugins)
            .unwrap_err()
            .0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].file, conf);
        // Then a valid ignore edit: it applies on top of the last good config.
        f.ignore("10.0.0.1\n10.0.0.9\n");
        let r = Generation::reload_from(&first, 2, &conf, build_plugins).unwrap();
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
        let plugin = f.plugin_p();
        std::fs::write(&plugin, "portsentry.on('block', function(ev) end)\n").unwrap();
        let conf = f.path("portsentry.conf");
        let (first, _) = Generation::load(1, &conf).unwrap();
        std::fs::write(&plugin, "portsentry.on('block', function(\n").unwrap();
        assert!(Generation::reload_from(&first, 2, &conf, build_plugins).is_err());
        f.ignore("10.0.0.1\n10.0.0.9\n");
        let r = Generation::reload_from(&first, 2, &conf, build_plugins).unwrap();
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
        let r = Generation::reload_from(&first, 2, &conf, build_plugins).unwrap();
        assert_eq!(r.generation.config.tcp_ports, vec![2]);
        assert!(r.generation.ignore.contains(ip("10.0.0.1")));
        assert_eq!(r.refused[0].file, f.path("portsentry.ignore"));
        assert_eq!(r.refused[0].line, 2);
        assert_eq!(r.applied, vec![conf.clone()]);
        // The ignore file still broken and the config unchanged from the one in force:
        // nothing new, the reload is refused.
        let second = r.generation;
        let errs = Generation::reload_from(&second, 3, &conf, build_plugins)
            .unwrap_err()
            .0;
        assert_eq!(errs[0].file, f.path("portsentry.ignore"));
        // Both valid: everything applies, nothing refused.
        f.ignore("10.0.0.2\n");
        let r = Generation::reload_from(&first, 3, &conf, build_plugins).unwrap();
        assert!(r.refused.is_empty());
        assert!(r.generation.ignore.contains(ip("10.0.0.2")));
    }

    #[test]
    fn a_plugin_source_that_is_a_fifo_is_refused_at_once() {
        let f = Files::new();
        nix::unistd::mkfifo(&f.plugin_p(), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let conf = f.path("portsentry.conf");
        let c = crate::config::read::tests::within_5s(move || {
            Generation::check(&conf, build_plugins).errors
        });
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].to_string().contains("p.lua"), "{}", c[0]);
        assert!(c[0].to_string().contains("not a regular file"), "{}", c[0]);
    }

    #[test]
    fn a_bad_value_does_not_hide_a_missing_plugin() {
        let f = Files::new();
        f.config("KILL_CMD_TIMEOUT=\"1ns\"\nLUA_RESPONDERS=\"nope\"\n");
        let c = Generation::check(&f.path("portsentry.conf"), build_plugins);
        let text: Vec<String> = c.errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].contains("KILL_CMD_TIMEOUT"), "{text:?}");
        assert!(text[1].contains("nope"), "{text:?}");
    }

    #[test]
    fn check_reports_config_and_ignore_errors_together() {
        let f = Files::new();
        f.config("TCP_PORTS=\"1,x\"\n");
        f.ignore("bogus\n");
        let c = Generation::check(&f.path("portsentry.conf"), build_plugins);
        let files: Vec<&Path> = c.errors.iter().map(|e| e.file.as_path()).collect();
        assert_eq!(
            files,
            vec![
                f.path("portsentry.conf").as_path(),
                f.path("portsentry.ignore").as_path()
            ]
        );
        // The config as far as it was read still comes back, for the checks after it.
        assert!(c.generation.is_some());
        // Positive control: valid files, no error.
        f.config("TCP_PORTS=\"1\"\n");
        f.ignore("10.0.0.1\n");
        let c = Generation::check(&f.path("portsentry.conf"), build_plugins);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert!(c.generation.is_some());
    }
}
