//! Watches the files a generation is built from and asks for a reload when one of them
//! changes: the config file, the ignore file and `portsentry.ignore.static` beside it, and the
//! `*.lua` files of the plugin and Lua library directories.
//!
//! Lua directories are watched with their module subdirectories (a few levels deep).
//!
//! The watcher never reloads by itself: it sends the same request a SIGHUP sends, so there is
//! one reload path. It watches *directories*, non-recursively, and filters events by path,
//! because editors save by writing a temp file and renaming it over the old one (the old
//! inode, and any watch on it, goes away; the new file arrives as a create or a rename in the
//! directory). Events are debounced on a quiet period, so a file written in several pieces
//! is read once it is complete, and a burst of saves is one reload. A watched directory that
//! is removed and created again is noticed by a periodic re-arm, which compares each
//! directory's inode with the one watched.
//!
//! Reads do not count: opening a file raises inotify events too, and the reload itself reads
//! every watched file, so only writes, creations, removals, renames and attribute changes
//! start the quiet-period timer.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select_biased, unbounded};
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::Config;
use crate::config::ignore::static_path;

/// How long the watched files must stay untouched before a reload is asked for: long enough
/// that a file written in pieces 100 ms apart is read whole, short enough that a save is in
/// force well within half a second.
pub const QUIET_PERIOD: Duration = Duration::from_millis(200);
/// A file that keeps changing still gets reloaded after this long.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// How often lost watches (a directory removed and created again) are looked for.
pub const REARM_INTERVAL: Duration = Duration::from_secs(1);
/// Subdirectory levels of a Lua directory that are watched (`a/b/c.lua` is two).
const MAX_LUA_DEPTH: usize = 3;
/// Lua directories watched at most, all levels and both Lua directories together.
const MAX_LUA_DIRS: usize = 64;

/// What a generation was built from: files, and directories whose `*.lua` files (also in
/// module subdirectories) count.
/// Paths are made absolute when added, so that a later change of working directory or a
/// relative `-c` path cannot change what is watched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSet {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl WatchSet {
    /// The files and directories a config names: itself, `IGNORE_FILE` and its static part,
    /// `PLUGIN_DIR` and `LUA_PATH_DIR`.
    pub fn for_config(config: &Config) -> WatchSet {
        WatchSet::from_paths(
            &config.path,
            &config.ignore_file,
            &config.plugin_dir,
            &config.lua_lib_dir,
        )
    }

    /// Best effort for a config file that may not load: the paths its text names (first
    /// occurrence of a key, as the loader reads it), defaults for the others. Used after a
    /// refused reload, so that the file whose fix will make the next reload succeed (say, a
    /// new `IGNORE_FILE` with a bad line) is watched as well.
    pub fn from_config_text(config_path: &Path) -> WatchSet {
        let defaults = super::build::defaults(config_path);
        let raw = super::read::read_regular(config_path, super::read::TEXT_CAP, "config")
            .map(|bytes| super::parse::parse_collect(config_path, &bytes).0)
            .ok();
        let value = |key: &str, default: &Path| -> PathBuf {
            raw.as_ref()
                .and_then(|r| r.entries.iter().find(|e| e.key == key))
                .filter(|e| !e.value.trim().is_empty())
                .map(|e| PathBuf::from(&e.value))
                .unwrap_or_else(|| default.to_path_buf())
        };
        WatchSet::from_paths(
            config_path,
            &value("IGNORE_FILE", &defaults.ignore_file),
            &value("PLUGIN_DIR", &defaults.plugin_dir),
            &value("LUA_PATH_DIR", &defaults.lua_lib_dir),
        )
    }

    fn from_paths(config: &Path, ignore: &Path, plugins: &Path, lua_lib: &Path) -> WatchSet {
        let mut set = WatchSet::default();
        set.add_file(config);
        set.add_file(ignore);
        set.add_file(&static_path(ignore));
        set.add_dir(plugins);
        set.add_dir(lua_lib);
        set
    }

    /// Adds a file whose every change matters.
    pub fn add_file(&mut self, path: &Path) {
        self.files.insert(absolute(path));
    }

    /// Adds a directory whose `*.lua` files matter.
    pub fn add_dir(&mut self, path: &Path) {
        self.dirs.insert(absolute(path));
    }

    /// Everything in either set.
    pub fn union(mut self, other: WatchSet) -> WatchSet {
        self.files.extend(other.files);
        self.dirs.extend(other.dirs);
        self
    }

    /// The watched files, absolute.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(PathBuf::as_path)
    }

    /// The watched directories, absolute.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(PathBuf::as_path)
    }
}

/// `path` made absolute against the working directory, without touching the file system.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A directory's identity: a watch follows the inode, so a directory removed and created
/// again under the same name needs a new watch.
type DirId = (u64, u64);

fn dir_id(path: &Path) -> Option<DirId> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// A [`WatchSet`] resolved against the file system as it is now: which directories to watch
/// (canonical, so that event paths can be compared) and which event paths matter.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Directories to watch, with the identity they had when planned.
    dirs: BTreeMap<PathBuf, DirId>,
    /// Event paths that matter whatever happened to them.
    files: BTreeSet<PathBuf>,
    /// Directories whose `*.lua` entries matter.
    lua_dirs: BTreeSet<PathBuf>,
}

impl Plan {
    fn of(set: &WatchSet) -> Plan {
        let mut plan = Plan::default();
        for file in &set.files {
            plan.add_file(file);
            // A symlinked config (config management, /etc/alternatives) is edited at its
            // target: watch there too.
            if std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink())
                && let Ok(target) = std::fs::canonicalize(file)
            {
                plan.add_file(&target);
            }
        }
        for dir in &set.dirs {
            // The directory's own creation, removal or renaming, seen from its parent.
            plan.add_file(dir);
            if let Ok(canonical) = std::fs::canonicalize(dir) {
                plan.add_lua_tree(canonical, 0);
            }
        }
        plan
    }

    /// Watches a Lua directory and its subdirectories (`require "portsentry.addr"` reads
    /// `portsentry/addr.lua`), each non-recursively, within bounds so that a plugin dir
    /// pointed at `/` by mistake cannot exhaust the inotify watches.
    fn add_lua_tree(&mut self, dir: PathBuf, depth: usize) {
        let Some(id) = dir_id(&dir) else { return };
        if self.lua_dirs.len() >= MAX_LUA_DIRS || !self.lua_dirs.insert(dir.clone()) {
            return;
        }
        self.dirs.insert(dir.clone(), id);
        if depth >= MAX_LUA_DEPTH {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut subdirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        subdirs.sort();
        for sub in subdirs {
            self.add_lua_tree(sub, depth + 1);
        }
    }

    /// Watches the file's directory and names the file as events will.
    fn add_file(&mut self, file: &Path) {
        let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
            return;
        };
        match std::fs::canonicalize(parent) {
            Ok(dir) => {
                if let Some(id) = dir_id(&dir) {
                    self.files.insert(dir.join(name));
                    self.dirs.insert(dir, id);
                }
            }
            // The directory is not there (yet): the periodic re-arm will find it.
            Err(_) => {
                self.files.insert(file.to_path_buf());
            }
        }
    }

    /// Whether an event may change what a reload would read.
    fn matters(&self, event: &Event) -> bool {
        if event.need_rescan() {
            // The kernel queue overflowed: anything may have changed.
            return true;
        }
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return false,
            _ => {}
        }
        event.paths.iter().any(|p| {
            self.files.contains(p)
                || self.dirs.contains_key(p)
                || (p.parent().is_some_and(|d| self.lua_dirs.contains(d))
                    && match p.extension() {
                        Some(e) => e == "lua",
                        // A module subdirectory coming, going or renamed.
                        None => matches!(
                            event.kind,
                            EventKind::Create(CreateKind::Folder)
                                | EventKind::Remove(RemoveKind::Folder)
                                | EventKind::Modify(ModifyKind::Name(_))
                        ),
                    })
        })
    }
}

/// Trailing-edge debounce: due once nothing happened for `quiet`, or `max` after the first
/// event of a burst that never pauses.
#[derive(Debug, Clone)]
struct Debounce {
    quiet: Duration,
    max: Duration,
    burst: Option<(Instant, Instant)>,
}

impl Debounce {
    fn new(quiet: Duration, max: Duration) -> Debounce {
        Debounce {
            quiet,
            max,
            burst: None,
        }
    }

    fn touch(&mut self, now: Instant) {
        self.burst = Some(match self.burst {
            Some((first, _)) => (first, now),
            None => (now, now),
        });
    }

    fn deadline(&self) -> Option<Instant> {
        self.burst
            .map(|(first, last)| (last + self.quiet).min(first + self.max))
    }

    /// True once when the burst is over; the next event starts a new one.
    fn take_due(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(deadline) if now >= deadline => {
                self.burst = None;
                true
            }
            _ => false,
        }
    }
}

/// Timing of a watcher; the defaults are the daemon's, tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct WatchTiming {
    /// See [`QUIET_PERIOD`].
    pub quiet: Duration,
    /// See [`MAX_DELAY`].
    pub max_delay: Duration,
    /// See [`REARM_INTERVAL`].
    pub rearm: Duration,
}

impl Default for WatchTiming {
    fn default() -> Self {
        WatchTiming {
            quiet: QUIET_PERIOD,
            max_delay: MAX_DELAY,
            rearm: REARM_INTERVAL,
        }
    }
}

enum Control {
    Follow(WatchSet),
    Stop,
}

/// The running watcher thread. Dropping it stops the thread.
pub struct ConfigWatcher {
    control: Sender<Control>,
    thread: Option<JoinHandle<()>>,
}

impl ConfigWatcher {
    /// Starts watching `set`; each change sends `message` on `requests`. Fails only when
    /// the kernel refuses an inotify instance (limit reached): the daemon then runs on with
    /// SIGHUP as the only way to reload.
    pub fn start<M>(
        set: WatchSet,
        requests: Sender<M>,
        message: M,
        timing: WatchTiming,
    ) -> Result<ConfigWatcher, notify::Error>
    where
        M: Clone + Send + 'static,
    {
        let (events_tx, events) = unbounded();
        let watcher = notify::recommended_watcher(events_tx)?;
        let (control, control_rx) = unbounded();
        let mut state = WatchState {
            set,
            watcher,
            events,
            armed: BTreeMap::new(),
            plan: Plan::default(),
            debounce: Debounce::new(timing.quiet, timing.max_delay),
            rearm_every: timing.rearm,
        };
        state.rearm(false);
        let thread = std::thread::Builder::new()
            .name("config watch".into())
            .spawn(move || state.run(&control_rx, &requests, &message))
            .map_err(notify::Error::io)?;
        Ok(ConfigWatcher {
            control,
            thread: Some(thread),
        })
    }

    /// Watches `set` from now on (after a reload that named other files).
    pub fn follow(&self, set: WatchSet) {
        let _ = self.control.send(Control::Follow(set));
    }

    /// Stops the thread and its watches.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct WatchState {
    set: WatchSet,
    watcher: RecommendedWatcher,
    events: Receiver<notify::Result<Event>>,
    /// Directories watched now, with the identity they had when the watch was added.
    armed: BTreeMap<PathBuf, DirId>,
    plan: Plan,
    debounce: Debounce,
    rearm_every: Duration,
}

impl WatchState {
    fn run<M: Clone>(&mut self, control: &Receiver<Control>, requests: &Sender<M>, message: &M) {
        let mut next_rearm = Instant::now() + self.rearm_every;
        loop {
            let wake = self
                .debounce
                .deadline()
                .map_or(next_rearm, |d| d.min(next_rearm));
            let timeout = wake.saturating_duration_since(Instant::now());
            let events = self.events.clone();
            select_biased! {
                recv(control) -> msg => match msg {
                    Ok(Control::Follow(set)) => {
                        if set != self.set {
                            log::debug!("config watch: following {set:?}");
                            self.set = set;
                            // The reload that named these files has just read them.
                            self.rearm(false);
                        }
                    }
                    Ok(Control::Stop) | Err(_) => return,
                },
                recv(events) -> event => match event {
                    Ok(Ok(event)) => {
                        if self.plan.matters(&event) {
                            log::debug!("config watch: {:?} {:?}", event.kind, event.paths);
                            self.debounce.touch(Instant::now());
                        }
                    }
                    Ok(Err(e)) => log::debug!("config watch: {e}"),
                    Err(_) => self.restart(),
                },
                default(timeout) => {}
            }
            let now = Instant::now();
            if now >= next_rearm {
                self.rearm(true);
                next_rearm = now + self.rearm_every;
            }
            if self.debounce.take_due(now) {
                // A directory that came back since the last look needs its watch first, so
                // that the next save in it is seen.
                self.rearm(false);
                if requests.send(message.clone()).is_err() {
                    return;
                }
            }
        }
    }

    /// The notify thread is gone (it panicked): start a new one and watch everything again.
    fn restart(&mut self) {
        let (events_tx, events) = unbounded();
        match notify::recommended_watcher(events_tx) {
            Ok(watcher) => {
                log::warn!("{}", crate::log_lines::config_watcher_restarted());
                self.watcher = watcher;
                self.events = events;
                self.armed.clear();
                self.rearm(true);
            }
            Err(e) => {
                log::error!("{}", crate::log_lines::config_watcher_lost(e));
                // Nothing will arrive on the dead channel; keep serving control messages.
                self.events = crossbeam_channel::never();
            }
        }
    }

    /// Makes the watches match the plan for the set as the file system is now. With
    /// `touch`, any difference (a directory came back, went away, was replaced) counts as a
    /// change, since files in it may have changed while nothing watched them.
    fn rearm(&mut self, touch: bool) {
        let plan = Plan::of(&self.set);
        let mut changed = false;
        let stale: Vec<PathBuf> = self
            .armed
            .iter()
            .filter(|(dir, id)| plan.dirs.get(*dir) != Some(id))
            .map(|(dir, _)| dir.clone())
            .collect();
        for dir in stale {
            // The watch may already be gone with the directory: nothing to undo then.
            let _ = self.watcher.unwatch(&dir);
            self.armed.remove(&dir);
            changed = true;
        }
        for (dir, id) in &plan.dirs {
            if self.armed.contains_key(dir) {
                continue;
            }
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.armed.insert(dir.clone(), *id);
                    changed = true;
                }
                Err(e) => log::debug!("config watch: cannot watch {}: {e}", dir.display()),
            }
        }
        self.plan = plan;
        if changed && touch {
            log::debug!(
                "config watch: watched directories changed: {:?}",
                self.armed
            );
            self.debounce.touch(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::RecvTimeoutError;

    const FAST: WatchTiming = WatchTiming {
        quiet: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        rearm: Duration::from_millis(200),
    };

    struct Fixture {
        dir: tempfile::TempDir,
        requests: Receiver<u32>,
        watcher: ConfigWatcher,
    }

    impl Fixture {
        /// A config, ignore file and plugin dir in a temp dir, watched.
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let root = std::fs::canonicalize(dir.path()).unwrap();
            std::fs::write(root.join("portsentry.conf"), "TCP_PORTS=\"1\"\n").unwrap();
            std::fs::write(root.join("portsentry.ignore"), "10.0.0.1\n").unwrap();
            std::fs::create_dir(root.join("plugins")).unwrap();
            let set = WatchSet::from_paths(
                &root.join("portsentry.conf"),
                &root.join("portsentry.ignore"),
                &root.join("plugins"),
                &root.join("lua"),
            );
            let (tx, requests) = unbounded();
            let watcher = ConfigWatcher::start(set, tx, 7u32, FAST).unwrap();
            Fixture {
                dir,
                requests,
                watcher,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            std::fs::canonicalize(self.dir.path()).unwrap().join(name)
        }

        /// Waits for one reload request; panics if none comes.
        fn expect_request(&self, what: &str) {
            match self.requests.recv_timeout(Duration::from_secs(3)) {
                Ok(7) => {}
                other => panic!("no reload request after {what}: {other:?}"),
            }
        }

        /// Asserts that nothing is requested within `ms`.
        fn expect_quiet(&self, ms: u64, what: &str) {
            match self.requests.recv_timeout(Duration::from_millis(ms)) {
                Err(RecvTimeoutError::Timeout) => {}
                other => panic!("unexpected reload request after {what}: {other:?}"),
            }
        }
    }

    #[test]
    fn debounce_waits_for_quiet_and_caps_a_burst_that_never_pauses() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debounce::new(ms(200), ms(1000));
        assert!(!d.take_due(t0));
        d.touch(t0);
        d.touch(t0 + ms(100));
        assert!(!d.take_due(t0 + ms(250)), "last event 150 ms ago");
        assert!(d.take_due(t0 + ms(300)));
        assert!(!d.take_due(t0 + ms(400)), "fires once");
        let t1 = t0 + ms(2000);
        for i in 0..20 {
            d.touch(t1 + ms(i * 100));
        }
        assert!(d.take_due(t1 + ms(1000)), "capped at the max delay");
    }

    #[test]
    fn write_in_place_asks_for_one_reload() {
        let f = Fixture::new();
        std::fs::write(f.path("portsentry.conf"), "TCP_PORTS=\"1,2\"\n").unwrap();
        f.expect_request("a write in place");
        f.expect_quiet(400, "one write");
    }

    #[test]
    fn save_by_rename_is_seen() {
        let f = Fixture::new();
        let tmp = f.path(".portsentry.conf.swp");
        std::fs::write(&tmp, "TCP_PORTS=\"3\"\n").unwrap();
        std::fs::rename(&tmp, f.path("portsentry.conf")).unwrap();
        f.expect_request("a save by rename");
        // The old file's inode is gone; a second rename-save is still seen.
        std::fs::write(&tmp, "TCP_PORTS=\"4\"\n").unwrap();
        std::fs::rename(&tmp, f.path("portsentry.conf")).unwrap();
        f.expect_request("a second save by rename");
    }

    #[test]
    fn a_file_written_in_pieces_is_one_reload_after_the_last_piece() {
        let f = Fixture::new();
        let start = Instant::now();
        let mut file = std::fs::File::create(f.path("portsentry.conf")).unwrap();
        std::io::Write::write_all(&mut file, b"TCP_PO").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        std::io::Write::write_all(&mut file, b"RTS=\"5\"\n").unwrap();
        drop(file);
        f.expect_request("a write in two pieces");
        assert!(start.elapsed() >= Duration::from_millis(150));
        f.expect_quiet(300, "one burst");
    }

    #[test]
    fn reading_and_unrelated_files_do_not_count() {
        let f = Fixture::new();
        let _ = std::fs::read(f.path("portsentry.conf")).unwrap();
        let _ = std::fs::read(f.path("portsentry.ignore")).unwrap();
        std::fs::write(f.path("portsentry.history"), "x\n").unwrap();
        std::fs::write(f.path("portsentry.conf~"), "x\n").unwrap();
        std::fs::write(f.path("plugins/README"), "x\n").unwrap();
        f.expect_quiet(400, "reads and unrelated writes");
        // Control, same watcher: a real edit beside them is seen (a deaf watcher fails here).
        std::fs::write(f.path("portsentry.ignore"), "10.0.0.2\n").unwrap();
        f.expect_request("an edit of the ignore file");
    }

    #[test]
    fn ignore_static_file_and_plugins_are_watched() {
        let f = Fixture::new();
        std::fs::write(f.path("portsentry.ignore.static"), "10.9.9.9\n").unwrap();
        f.expect_request("a new portsentry.ignore.static");
        std::fs::write(f.path("plugins/block.lua"), "-- x\n").unwrap();
        f.expect_request("a new plugin");
        std::fs::remove_file(f.path("portsentry.ignore")).unwrap();
        f.expect_request("a removed ignore file");
    }

    #[test]
    fn a_directory_removed_and_created_again_is_watched_again() {
        let f = Fixture::new();
        std::fs::remove_dir_all(f.path("plugins")).unwrap();
        f.expect_request("a removed plugin dir");
        std::fs::create_dir(f.path("plugins")).unwrap();
        f.expect_request("a plugin dir created again");
        std::fs::write(f.path("plugins/block.lua"), "-- x\n").unwrap();
        f.expect_request("a plugin in the new dir");
    }

    #[test]
    fn config_directory_removed_and_created_again_is_watched_again() {
        let dir = tempfile::tempdir().unwrap();
        let etc = std::fs::canonicalize(dir.path()).unwrap().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("portsentry.conf"), "TCP_PORTS=\"1\"\n").unwrap();
        let mut set = WatchSet::default();
        set.add_file(&etc.join("portsentry.conf"));
        let (tx, requests) = unbounded();
        let _watcher = ConfigWatcher::start(set, tx, 1u8, FAST).unwrap();
        std::fs::remove_dir_all(&etc).unwrap();
        assert_eq!(requests.recv_timeout(Duration::from_secs(3)), Ok(1));
        // Its parent is not watched: the periodic re-arm finds the new directory.
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("portsentry.conf"), "TCP_PORTS=\"2\"\n").unwrap();
        assert_eq!(requests.recv_timeout(Duration::from_secs(3)), Ok(1));
        while requests.recv_timeout(Duration::from_millis(500)).is_ok() {}
        std::fs::write(etc.join("portsentry.conf"), "TCP_PORTS=\"3\"\n").unwrap();
        assert_eq!(
            requests.recv_timeout(Duration::from_secs(3)),
            Ok(1),
            "a write in the new directory is seen"
        );
    }

    #[test]
    fn missing_lua_library_dir_is_picked_up_when_created() {
        let f = Fixture::new();
        std::fs::create_dir(f.path("lua")).unwrap();
        f.expect_request("the Lua library dir created");
        std::fs::write(f.path("lua/util.lua"), "return {}\n").unwrap();
        f.expect_request("a Lua library file");
    }

    #[test]
    fn lua_module_subdirectories_are_watched() {
        let f = Fixture::new();
        std::fs::create_dir(f.path("lua")).unwrap();
        f.expect_request("the Lua library dir created");
        std::fs::create_dir(f.path("lua/portsentry")).unwrap();
        f.expect_request("a module subdirectory created");
        std::fs::write(f.path("lua/portsentry/addr.lua"), "return {}\n").unwrap();
        f.expect_request("a module in a subdirectory");
        std::fs::write(f.path("lua/portsentry/notes.txt"), "x\n").unwrap();
        f.expect_quiet(400, "a non-Lua file in a subdirectory");
    }

    #[test]
    fn follow_watches_the_new_ignore_file() {
        let f = Fixture::new();
        std::fs::create_dir(f.path("other")).unwrap();
        f.expect_quiet(300, "an unrelated directory");
        let mut set = WatchSet::default();
        set.add_file(&f.path("portsentry.conf"));
        set.add_file(&f.path("other/portsentry.ignore"));
        f.watcher.follow(set);
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(f.path("other/portsentry.ignore"), "10.1.1.1\n").unwrap();
        f.expect_request("the new ignore file");
        std::fs::write(f.path("portsentry.ignore"), "10.1.1.2\n").unwrap();
        f.expect_quiet(400, "the old ignore file");
    }

    #[test]
    fn symlinked_config_is_watched_at_its_target() {
        let f = Fixture::new();
        std::fs::create_dir(f.path("real")).unwrap();
        std::fs::write(f.path("real/portsentry.conf"), "TCP_PORTS=\"1\"\n").unwrap();
        let link = f.path("linked.conf");
        std::os::unix::fs::symlink(f.path("real/portsentry.conf"), &link).unwrap();
        let mut set = WatchSet::default();
        set.add_file(&link);
        f.watcher.follow(set);
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(f.path("real/portsentry.conf"), "TCP_PORTS=\"2\"\n").unwrap();
        f.expect_request("a write to the symlink's target");
    }

    #[test]
    fn set_from_config_text_follows_its_keys_even_when_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("portsentry.conf");
        std::fs::write(
            &conf,
            "TCP_PORTS=\"x\"\nIGNORE_FILE=\"/srv/ps/ignore\"\nIGNORE_FILE=\"/second\"\n\
             PLUGIN_DIR=\"/srv/ps/plugins\"\n",
        )
        .unwrap();
        let set = WatchSet::from_config_text(&conf);
        let files: Vec<&Path> = set.files().collect();
        assert!(files.contains(&conf.as_path()));
        assert!(files.contains(&Path::new("/srv/ps/ignore")));
        assert!(files.contains(&Path::new("/srv/ps/portsentry.ignore.static")));
        assert!(
            !files.contains(&Path::new("/second")),
            "first occurrence wins"
        );
        let dirs: Vec<&Path> = set.dirs().collect();
        assert_eq!(
            dirs,
            vec![
                Path::new("/srv/ps/plugins"),
                Path::new("/usr/share/portsentry/lua")
            ]
        );
    }

    #[test]
    fn set_for_config_names_every_source_file() {
        let mut c = super::super::build::defaults(Path::new("/etc/portsentry/portsentry.conf"));
        c.ignore_file = PathBuf::from("/var/ps/ignore");
        let set = WatchSet::for_config(&c);
        let files: Vec<&Path> = set.files().collect();
        assert_eq!(
            files,
            vec![
                Path::new("/etc/portsentry/portsentry.conf"),
                Path::new("/var/ps/ignore"),
                Path::new("/var/ps/portsentry.ignore.static"),
            ]
        );
        assert_eq!(set.dirs().count(), 2);
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        let mut set = WatchSet::default();
        set.add_file(Path::new("portsentry.conf"));
        let f = set.files().next().unwrap();
        assert!(f.is_absolute());
        assert!(f.ends_with("portsentry.conf"));
    }
}
